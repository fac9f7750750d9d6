//! Area under the ROC curve.

use super::{check_masks_maps, sort_keys, split_by_label, Score};
use crate::{Error, Result};
use ndarray::ArrayView2;

/// Area under the ROC curve of `scores` against binary `labels` (`true` = anomalous).
///
/// Computed as the Mann-Whitney statistic
/// `(#{s_pos > s_neg} + ½·#{s_pos = s_neg}) / (P·N)` — identical to the trapezoidal area
/// under the ROC curve with tied scores grouped (scikit-learn's `roc_auc_score`). Higher
/// scores must mean "more anomalous". The pair counts are exact integers; only the final
/// division is rounded, so the result is exact to `f64` precision for any input size.
///
/// Cost: one copy of the scores and one `O(n log n)` sort per class.
///
/// # Errors
/// [`Error::InvalidInput`] when the lengths differ, the input is empty, a score is NaN, or
/// only one class is present (AUROC is undefined then). Infinite scores are allowed.
///
/// # Example
/// ```
/// let y = [false, false, true, true];
/// let s = [0.1_f32, 0.4, 0.35, 0.8];
/// assert_eq!(patchcore::metrics::auroc(&y, &s).unwrap(), 0.75);
/// ```
pub fn auroc<S: Score>(labels: &[bool], scores: &[S]) -> Result<f64> {
    let (pos, neg) = split_by_label(labels, scores)?;
    auroc_split(pos, neg)
}

/// Pixel-level AUROC over **all** pixels of all images ("full pixel AUROC", as reported by the
/// PatchCore paper and the reference implementation): mask pixels are positives, every other
/// pixel (including all pixels of defect-free images) is a negative.
///
/// `masks[i]` and `maps[i]` must have the same shape; images may differ in size.
///
/// # Errors
/// [`Error::InvalidInput`] for a count or shape mismatch, no pixels, NaN scores, or when the
/// masks are all empty or all full.
pub fn pixel_auroc<S: Score>(
    masks: &[ArrayView2<'_, bool>],
    maps: &[ArrayView2<'_, S>],
) -> Result<f64> {
    let total = check_masks_maps(masks, maps)?;
    let n_pos: usize = masks.iter().map(|m| m.iter().filter(|&&b| b).count()).sum();
    let mut pos = Vec::with_capacity(n_pos);
    let mut neg = Vec::with_capacity(total - n_pos);
    for (i, (m, a)) in masks.iter().zip(maps).enumerate() {
        for (&l, &s) in m.iter().zip(a.iter()) {
            if s.is_nan() {
                return Err(Error::input(format!("anomaly map {i} contains NaN scores")));
            }
            if l {
                pos.push(s.key());
            } else {
                neg.push(s.key());
            }
        }
    }
    auroc_split(pos, neg)
}

/// AUROC from the ordering keys of the positive and negative scores (sorted in place).
fn auroc_split<K: Ord + Copy + Send>(mut pos: Vec<K>, mut neg: Vec<K>) -> Result<f64> {
    if pos.is_empty() || neg.is_empty() {
        return Err(Error::input(format!(
            "AUROC needs both classes, got {} positive and {} negative samples",
            pos.len(),
            neg.len()
        )));
    }
    sort_keys(&mut pos);
    sort_keys(&mut neg);
    // Twice the Mann-Whitney U, as an exact integer: each (pos, neg) pair with pos > neg
    // counts 2, each tie counts 1.
    let mut twice_u: u128 = 0;
    let mut j = 0usize; // negatives with key < current group key
    let mut i = 0usize;
    while i < pos.len() {
        let k = pos[i];
        let mut g = i + 1;
        while g < pos.len() && pos[g] == k {
            g += 1;
        }
        let n_group = (g - i) as u128;
        while j < neg.len() && neg[j] < k {
            j += 1;
        }
        let mut e = j;
        while e < neg.len() && neg[e] == k {
            e += 1;
        }
        twice_u += n_group * (2 * j as u128 + (e - j) as u128);
        i = g;
    }
    let pairs = pos.len() as f64 * neg.len() as f64;
    Ok(twice_u as f64 / (2.0 * pairs))
}
