//! Evaluation metrics: AUROC, F1-max, AUPRO, and decision thresholds.
//!
//! Every metric works on the **raw** anomaly scores (no sigmoid, no normalisation) and
//! accumulates in `f64`, so scores that differ only in their last bits are never merged into
//! artificial ties. Scores may be `f32` or `f64` (anything implementing [`Score`]).
//!
//! | function | what it measures |
//! |---|---|
//! | [`auroc`] | area under the ROC curve (Mann-Whitney U with half credit for ties) |
//! | [`pixel_auroc`] | [`auroc`] over every pixel of every image ("full pixel AUROC") |
//! | [`f1_max`] | best F1 over all thresholds, and the threshold that achieves it |
//! | [`aupro`] | area under the per-region-overlap curve up to a false-positive-rate limit |
//! | [`threshold_from_normal`] | a decision threshold from defect-free scores only |
//!
//! Degenerate input (empty, length mismatch, NaN scores, only one class, no ground-truth
//! region) is rejected with [`Error::InvalidInput`] — a metric
//! never returns NaN.
//!
//! Running time is `O(n log n)` (one sort per class) and memory is one copy of the scores, so
//! tens of millions of pixels are fine.

mod aupro;
mod auroc;
mod confusion;
mod f1;
mod threshold;

pub use aupro::{aupro, AuproConfig, AuproVariant};
pub use auroc::{auroc, pixel_auroc};
pub use confusion::Confusion;
pub use f1::{f1_max, F1Max};
pub use threshold::{is_anomalous, threshold_from_normal, Decision, NormalThreshold};

use crate::{Error, Result};
use rayon::slice::ParallelSliceMut;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A floating-point score type the metrics accept: `f32` or `f64`.
///
/// This trait is sealed; it only exists so that every metric takes either precision without
/// copying the scores into a wider type first.
pub trait Score: Copy + Send + Sync + PartialOrd + sealed::Sealed + 'static {
    /// An integer key whose order is the numeric order of the score (`-0.0` and `+0.0` map to
    /// the same key). Undefined for NaN — callers reject NaN first.
    type Key: Ord + Copy + Send + Sync;
    /// The ordering key of this score.
    fn key(self) -> Self::Key;
    /// The score with ordering key `k` (inverse of [`Score::key`]; `-0.0` comes back as `+0.0`).
    fn from_key(k: Self::Key) -> Self;
    /// `true` for NaN.
    fn is_nan(self) -> bool;
    /// The score as `f64` (exact).
    fn to_f64(self) -> f64;
}

impl Score for f32 {
    type Key = u32;
    #[inline]
    fn key(self) -> u32 {
        // `+ 0.0` turns -0.0 into +0.0; then the usual sign-flip trick gives an unsigned key
        // whose order is the IEEE total order.
        let b = (self + 0.0).to_bits();
        if b >> 31 == 1 {
            !b
        } else {
            b | 0x8000_0000
        }
    }
    #[inline]
    fn from_key(k: u32) -> f32 {
        if k >> 31 == 1 {
            f32::from_bits(k & 0x7fff_ffff)
        } else {
            f32::from_bits(!k)
        }
    }
    #[inline]
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    #[inline]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Score for f64 {
    type Key = u64;
    #[inline]
    fn key(self) -> u64 {
        let b = (self + 0.0).to_bits();
        if b >> 63 == 1 {
            !b
        } else {
            b | 0x8000_0000_0000_0000
        }
    }
    #[inline]
    fn from_key(k: u64) -> f64 {
        if k >> 63 == 1 {
            f64::from_bits(k & 0x7fff_ffff_ffff_ffff)
        } else {
            f64::from_bits(!k)
        }
    }
    #[inline]
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
}

/// Fails with a clear message when `scores` holds a NaN (`what` names the input).
pub(crate) fn check_no_nan<S: Score>(scores: &[S], what: &str) -> Result<()> {
    if let Some(i) = scores.iter().position(|s| s.is_nan()) {
        return Err(Error::input(format!(
            "{what}: score at index {i} is NaN; metrics need comparable scores"
        )));
    }
    Ok(())
}

/// Above this many elements sorting runs on the rayon pool.
const PAR_SORT_MIN: usize = 1 << 16;

/// Sorts ordering keys ascending (plain integer sort; on the rayon pool when large).
pub(crate) fn sort_keys<K: Ord + Send>(v: &mut [K]) {
    if v.len() >= PAR_SORT_MIN {
        v.par_sort_unstable();
    } else {
        v.sort_unstable();
    }
}

/// Sorts `(key, tag)` pairs descending by key (ties in any order).
pub(crate) fn sort_tagged_desc<K: Ord + Copy + Send>(v: &mut [(K, u32)]) {
    if v.len() >= PAR_SORT_MIN {
        v.par_sort_unstable_by_key(|p| std::cmp::Reverse(p.0));
    } else {
        v.sort_unstable_by_key(|p| std::cmp::Reverse(p.0));
    }
}

/// Splits `scores` into the ordering keys of the (positive, negative) samples, validating
/// lengths and NaN.
#[allow(clippy::type_complexity)]
pub(crate) fn split_by_label<S: Score>(
    labels: &[bool],
    scores: &[S],
) -> Result<(Vec<S::Key>, Vec<S::Key>)> {
    if labels.len() != scores.len() {
        return Err(Error::input(format!(
            "labels has {} entries but scores has {}; they must pair up one to one",
            labels.len(),
            scores.len()
        )));
    }
    if scores.is_empty() {
        return Err(Error::input("no scores given (empty input)"));
    }
    check_no_nan(scores, "scores")?;
    let n_pos = labels.iter().filter(|&&l| l).count();
    let mut pos = Vec::with_capacity(n_pos);
    let mut neg = Vec::with_capacity(labels.len() - n_pos);
    for (&l, &s) in labels.iter().zip(scores) {
        if l {
            pos.push(s.key());
        } else {
            neg.push(s.key());
        }
    }
    Ok((pos, neg))
}

/// Checks that masks and maps pair up image by image with equal shapes; returns the total
/// pixel count.
pub(crate) fn check_masks_maps<S>(
    masks: &[ndarray::ArrayView2<'_, bool>],
    maps: &[ndarray::ArrayView2<'_, S>],
) -> Result<usize> {
    if masks.len() != maps.len() {
        return Err(Error::input(format!(
            "{} ground-truth masks but {} anomaly maps; they must pair up one to one",
            masks.len(),
            maps.len()
        )));
    }
    if masks.is_empty() {
        return Err(Error::input("no images given (empty input)"));
    }
    let mut total = 0usize;
    for (i, (m, a)) in masks.iter().zip(maps).enumerate() {
        if m.dim() != a.dim() {
            return Err(Error::input(format!(
                "image {i}: ground-truth mask is {:?} but anomaly map is {:?}; \
                 resize the mask to the map first",
                m.dim(),
                a.dim()
            )));
        }
        total += m.len();
    }
    if total == 0 {
        return Err(Error::input("all images are empty (0 pixels)"));
    }
    Ok(total)
}
