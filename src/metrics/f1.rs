//! Best F1 score over all thresholds.

use super::{sort_keys, split_by_label, Score};
use crate::{Error, Result};

/// The best F1 score over all thresholds and where it is reached (see [`f1_max`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct F1Max {
    /// The maximal F1 score, `2·P·R / (P + R)` (0 when `P + R = 0`).
    pub f1: f64,
    /// The threshold achieving it: a sample is predicted anomalous iff `score >= threshold`.
    /// Always one of the input scores.
    pub threshold: f64,
    /// Precision at that threshold.
    pub precision: f64,
    /// Recall at that threshold.
    pub recall: f64,
}

/// The maximal F1 score over every threshold `t` among the distinct scores, predicting
/// "anomalous" iff `score >= t`, and the threshold achieving it.
///
/// F1 is compared exactly (as integer fractions `2·TP / (TP + FP + P)`), and among thresholds
/// with exactly the same F1 the **lowest** one is returned — the same pick as taking the first
/// maximum over ascending thresholds, which is what the PatchCore reference code does with
/// scikit-learn's precision-recall curve.
///
/// # Errors
/// [`Error::InvalidInput`] when the lengths differ, the input is empty, a score is NaN, or no
/// label is positive (F1 is then 0 for every threshold and no threshold is meaningful). A set
/// without negatives is allowed (F1 = 1 at the lowest score).
///
/// # Example
/// ```
/// let y = [false, false, true, true, true];
/// let s = [0.1_f32, 0.6, 0.4, 0.7, 0.9];
/// let best = patchcore::metrics::f1_max(&y, &s).unwrap();
/// assert!((best.f1 - 6.0 / 7.0).abs() < 1e-12);
/// assert_eq!(best.threshold, 0.4_f32 as f64);
/// ```
pub fn f1_max<S: Score>(labels: &[bool], scores: &[S]) -> Result<F1Max> {
    let (mut pos, mut neg) = split_by_label(labels, scores)?;
    if pos.is_empty() {
        return Err(Error::input(
            "F1 needs at least one positive (anomalous) label; all labels are negative",
        ));
    }
    sort_keys(&mut pos);
    sort_keys(&mut neg);
    let n_pos = pos.len() as u128;
    // Sweep thresholds from the highest score down. `i`, `j` = number of positives /
    // negatives not yet at or above the threshold (indices into the ascending vectors).
    let (mut i, mut j) = (pos.len(), neg.len());
    // Best as the fraction num/den = 2TP / (TP + FP + P), plus tp/fp for P and R.
    let mut best: Option<(u128, u128, u128, u128, S::Key)> = None;
    while i > 0 || j > 0 {
        // Next threshold: the larger of the two remaining maxima.
        let t = match (i > 0, j > 0) {
            (true, true) => pos[i - 1].max(neg[j - 1]),
            (true, false) => pos[i - 1],
            _ => neg[j - 1],
        };
        let k = t;
        while i > 0 && pos[i - 1] == k {
            i -= 1;
        }
        while j > 0 && neg[j - 1] == k {
            j -= 1;
        }
        let tp = (pos.len() - i) as u128;
        let fp = (neg.len() - j) as u128;
        let num = 2 * tp;
        let den = tp + fp + n_pos;
        // `>=`: a later (lower) threshold with the same F1 replaces the earlier one.
        let better = match best {
            None => true,
            Some((bn, bd, ..)) => num * bd >= bn * den,
        };
        if better {
            best = Some((num, den, tp, fp, t));
        }
    }
    let (num, den, tp, fp, t) = best.ok_or_else(|| Error::input("no thresholds (empty input)"))?;
    let f1 = if num == 0 {
        0.0
    } else {
        num as f64 / den as f64
    };
    let precision = if tp + fp == 0 {
        0.0
    } else {
        tp as f64 / (tp + fp) as f64
    };
    Ok(F1Max {
        f1,
        threshold: S::from_key(t).to_f64(),
        precision,
        recall: tp as f64 / n_pos as f64,
    })
}
