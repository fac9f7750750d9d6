//! Decision thresholds and the anomalous / normal decision.

use super::check_no_nan;
use crate::{Error, Result};

/// How to derive a decision threshold from the scores of **defect-free** samples only (for
/// users who have no defective examples to tune on). With labelled defects, prefer the
/// F1-optimal threshold from [`f1_max`](super::f1_max).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NormalThreshold {
    /// The largest normal score: no normal sample of the calibration set is flagged. Sensitive
    /// to a single outlier in the calibration set.
    Max,
    /// The `q`-quantile (`0 ≤ q ≤ 1`) of the normal scores, linearly interpolated between
    /// order statistics (numpy's default `linear` method). About a fraction `1 − q` of normal
    /// samples will be flagged; e.g. `Quantile(0.99)` accepts a 1 % false-alarm rate.
    Quantile(f64),
    /// `mean + k·std` of the normal scores (population standard deviation, `ddof = 0`); `k`
    /// must be finite. `k = 3` is a common choice for roughly Gaussian scores.
    MeanPlusStd(f64),
}

/// A decision threshold computed from defect-free scores by `rule` (see [`NormalThreshold`]).
///
/// Statistics are computed in `f64`; the result is rounded to the nearest `f32`.
///
/// # Errors
/// [`Error::InvalidInput`] when `scores` is empty or holds a non-finite value;
/// [`Error::InvalidParameter`] for a quantile outside `[0, 1]` or a non-finite `k`.
///
/// # Example
/// ```
/// use patchcore::metrics::{threshold_from_normal, NormalThreshold};
/// let s = [1.0_f32, 2.0, 3.0, 4.0, 5.0];
/// assert_eq!(threshold_from_normal(&s, NormalThreshold::Max).unwrap(), 5.0);
/// assert_eq!(threshold_from_normal(&s, NormalThreshold::Quantile(0.5)).unwrap(), 3.0);
/// ```
pub fn threshold_from_normal(scores: &[f32], rule: NormalThreshold) -> Result<f32> {
    if scores.is_empty() {
        return Err(Error::input(
            "no normal scores given; a threshold needs at least one defect-free sample",
        ));
    }
    check_no_nan(scores, "normal scores")?;
    if let Some(i) = scores.iter().position(|s| s.is_infinite()) {
        return Err(Error::input(format!(
            "normal score at index {i} is infinite"
        )));
    }
    let t = match rule {
        NormalThreshold::Max => return Ok(scores.iter().copied().fold(f32::MIN, f32::max)),
        NormalThreshold::Quantile(q) => {
            if !(0.0..=1.0).contains(&q) {
                return Err(Error::param(
                    "quantile",
                    format!("must lie in [0, 1], got {q}"),
                ));
            }
            let mut v = scores.to_vec();
            v.sort_unstable_by(f32::total_cmp);
            let h = q * (v.len() - 1) as f64;
            let lo = (h.floor() as usize).min(v.len() - 1);
            let hi = (lo + 1).min(v.len() - 1);
            let frac = h - lo as f64;
            let (a, b) = (f64::from(v[lo]), f64::from(v[hi]));
            if frac == 0.0 {
                a
            } else {
                a + frac * (b - a)
            }
        }
        NormalThreshold::MeanPlusStd(k) => {
            if !k.is_finite() {
                return Err(Error::param(
                    "k",
                    format!("the std multiplier must be finite, got {k}"),
                ));
            }
            let n = scores.len() as f64;
            let mean = scores.iter().map(|&s| f64::from(s)).sum::<f64>() / n;
            let var = scores
                .iter()
                .map(|&s| (f64::from(s) - mean).powi(2))
                .sum::<f64>()
                / n;
            mean + k * var.sqrt()
        }
    };
    let t32 = t as f32;
    if !t32.is_finite() {
        return Err(Error::input(format!(
            "the threshold {t} does not fit in f32; scores are too large"
        )));
    }
    Ok(t32)
}

/// `true` iff `score` is anomalous under `threshold`: `score >= threshold`.
///
/// A NaN score counts as anomalous (fail-safe: a broken measurement must not pass
/// inspection). Whatever the decision, report the raw score alongside it — see [`Decision`].
#[inline]
pub fn is_anomalous(score: f32, threshold: f32) -> bool {
    score >= threshold || score.is_nan()
}

/// A thresholded decision that keeps the raw score (always report the score, not only the
/// verdict: it tells how close a sample was to the threshold).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// The raw anomaly score.
    pub score: f32,
    /// The threshold it was compared with.
    pub threshold: f32,
    /// [`is_anomalous`]`(score, threshold)`.
    pub anomalous: bool,
}

impl Decision {
    /// Decides `score` against `threshold` (anomalous iff `score >= threshold`, or NaN).
    pub fn new(score: f32, threshold: f32) -> Self {
        Decision {
            score,
            threshold,
            anomalous: is_anomalous(score, threshold),
        }
    }
}
