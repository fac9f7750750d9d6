//! Area under the per-region-overlap (PRO) curve.

use super::{check_masks_maps, sort_keys, sort_tagged_desc, Score};
use crate::segmentation::{connected_components, Connectivity};
use crate::{Error, Result};
use ndarray::ArrayView2;

/// How the PRO curve is sampled (see [`aupro`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuproVariant {
    /// The MVTec AD reference procedure (the one the AUPRO numbers in the literature come
    /// from): thresholds are the sorted normal-pixel scores at positions
    /// `floor(linspace(0, n−1, num_thresholds))`; at position `p` with threshold `t`,
    /// `FPR = 1 − (p+1)/n` and a region pixel counts as detected iff `score > t`; the point
    /// `(1, 1)` closes the curve. **Default**, because published PRO values (and the
    /// PatchCore paper's) are measured this way.
    #[default]
    MvtecReference,
    /// The exact step curve: every distinct score is a threshold, a pixel is positive iff
    /// `score >= t`, `FPR(t)` is the exact fraction of normal pixels at or above `t`; the
    /// curve starts at `(0, 0)`. Independent of any sampling and of ties among normal
    /// pixels, but gives lower values than the reference on coarse data (the reference
    /// interpolates linearly between samples, this variant follows the steps).
    ExactStep,
}

/// Configuration of [`aupro`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AuproConfig {
    /// Integrate the PRO curve over `FPR ∈ [0, fpr_limit]` and divide by `fpr_limit`
    /// (default 0.3, as in the MVTec AD benchmark). Must lie in `(0, 1]`.
    pub fpr_limit: f64,
    /// [`AuproVariant::MvtecReference`] only: number of thresholds sampled from the sorted
    /// normal scores. `None` (default) uses every normal pixel (`num_thresholds = n`), which
    /// is the sampling limit of the reference. Must be ≥ 2 when given. Ignored by
    /// [`AuproVariant::ExactStep`].
    pub num_thresholds: Option<usize>,
    /// How the curve is sampled.
    pub variant: AuproVariant,
}

impl Default for AuproConfig {
    fn default() -> Self {
        AuproConfig {
            fpr_limit: 0.3,
            num_thresholds: None,
            variant: AuproVariant::MvtecReference,
        }
    }
}

/// Normalised area under the PRO curve (Bergmann et al., MVTec AD) up to
/// [`AuproConfig::fpr_limit`].
///
/// Every ground-truth mask is split into **8-connected** regions. For a threshold `t`, the
/// false-positive rate is the fraction of all normal pixels (all images, including defect-free
/// ones) flagged anomalous, and the PRO is the *mean over all regions* of the fraction of the
/// region's pixels flagged anomalous — so small defects weigh as much as large ones. The area
/// under PRO(FPR) from 0 to `fpr_limit` (trapezoids, linearly interpolated at the limit) is
/// divided by `fpr_limit`, giving a value in `[0, 1]`.
///
/// See [`AuproVariant`] for the two ways the curve is sampled; the default reproduces the
/// MVTec reference code.
///
/// Cost: `O(n log n)` for `n` pixels — one sort of the normal scores, one sort of the region
/// scores and a single sweep (no pass over the pixels per threshold).
///
/// # Errors
/// [`Error::InvalidInput`] for a count or shape mismatch, no pixels, NaN scores, no defect
/// pixel at all, or no normal pixel at all; [`Error::InvalidParameter`] for `fpr_limit`
/// outside `(0, 1]` or `num_thresholds < 2`.
///
/// # Example
/// ```
/// use ndarray::array;
/// use patchcore::metrics::{aupro, AuproConfig};
/// let gt = array![[true, true, false, false, false], [false, false, false, false, true]];
/// let s = array![[0.9_f32, 0.3, 0.1, 0.2, 0.4], [0.5, 0.7, 0.05, 0.15, 0.6]];
/// let v = aupro(&[gt.view()], &[s.view()], &AuproConfig::default()).unwrap();
/// assert!((v - 0.631548).abs() < 1e-6);
/// ```
pub fn aupro<S: Score>(
    masks: &[ArrayView2<'_, bool>],
    maps: &[ArrayView2<'_, S>],
    cfg: &AuproConfig,
) -> Result<f64> {
    if !(cfg.fpr_limit > 0.0 && cfg.fpr_limit <= 1.0) {
        return Err(Error::param(
            "fpr_limit",
            format!("must lie in (0, 1], got {}", cfg.fpr_limit),
        ));
    }
    if let Some(t) = cfg.num_thresholds {
        if t < 2 {
            return Err(Error::param(
                "num_thresholds",
                format!("must be at least 2, got {t}"),
            ));
        }
    }
    let total = check_masks_maps(masks, maps)?;
    let n_defect: usize = masks.iter().map(|m| m.iter().filter(|&&b| b).count()).sum();
    let mut normal: Vec<S::Key> = Vec::with_capacity(total - n_defect);
    // (score, global region index) for every defect pixel.
    let mut defect: Vec<(S::Key, u32)> = Vec::with_capacity(n_defect);
    let mut region_sizes: Vec<usize> = Vec::new();
    for (i, (m, a)) in masks.iter().zip(maps).enumerate() {
        if a.iter().any(|s| s.is_nan()) {
            return Err(Error::input(format!("anomaly map {i} contains NaN scores")));
        }
        if !m.iter().any(|&b| b) {
            normal.extend(a.iter().map(|s| s.key()));
            continue;
        }
        let cc = connected_components(m.view(), Connectivity::Eight);
        let base = region_sizes.len();
        region_sizes.extend(cc.regions.iter().map(|r| r.area));
        if region_sizes.len() > u32::MAX as usize {
            return Err(Error::LimitExceeded {
                reason: "more than 2^32 ground-truth regions".into(),
            });
        }
        for (&lab, &s) in cc.labels.iter().zip(a.iter()) {
            if lab == 0 {
                normal.push(s.key());
            } else {
                defect.push((s.key(), (base + lab as usize - 1) as u32));
            }
        }
    }
    if defect.is_empty() {
        return Err(Error::input(
            "AUPRO needs at least one defect pixel; every ground-truth mask is empty",
        ));
    }
    if normal.is_empty() {
        return Err(Error::input(
            "AUPRO needs at least one normal pixel; every ground-truth mask is full",
        ));
    }
    sort_keys(&mut normal);
    sort_tagged_desc(&mut defect);
    let inv_size: Vec<f64> = region_sizes.iter().map(|&s| 1.0 / s as f64).collect();
    let n_regions = region_sizes.len() as f64;
    let n = normal.len();
    let mut pro = ProSum::new(&defect, &inv_size);
    let limit = cfg.fpr_limit;

    match cfg.variant {
        AuproVariant::MvtecReference => {
            let t_count = cfg.num_thresholds.unwrap_or(n).max(2);
            // numpy: linspace(0, n-1, T) = i * ((n-1)/(T-1)), last element exactly n-1,
            // then truncated to int. Walked from the last (highest threshold) down.
            let step = (n - 1) as f64 / (t_count - 1) as f64;
            let position = |i: usize| -> usize {
                if i == t_count - 1 {
                    n - 1
                } else {
                    ((i as f64 * step) as usize).min(n - 1)
                }
            };
            let point = |p: usize, pro: &mut ProSum<'_, S::Key>| -> (f64, f64) {
                let t = normal[p];
                pro.advance_while(|k| k > t);
                (1.0 - (p + 1) as f64 / n as f64, pro.value() / n_regions)
            };
            let mut integ = Trapezoid::new(point(n - 1, &mut pro), limit);
            for i in (0..t_count - 1).rev() {
                if integ.done() {
                    break;
                }
                let p = point(position(i), &mut pro);
                integ.push(p);
            }
            integ.push((1.0, 1.0));
            Ok(integ.finish())
        }
        AuproVariant::ExactStep => {
            let mut integ = Trapezoid::new((0.0, 0.0), limit);
            // `j` = number of normal pixels below the current threshold.
            let mut j = n;
            while !integ.done() {
                // Next distinct threshold: the larger of the two remaining maxima.
                let next_normal = (j > 0).then(|| normal[j - 1]);
                let next_defect = pro.peek_key();
                let k = match (next_normal, next_defect) {
                    (Some(a), Some(b)) => a.max(b),
                    (Some(a), None) => a,
                    (None, Some(b)) => b,
                    (None, None) => break,
                };
                while j > 0 && normal[j - 1] == k {
                    j -= 1;
                }
                pro.advance_while(|d| d >= k);
                integ.push(((n - j) as f64 / n as f64, pro.value() / n_regions));
            }
            Ok(integ.finish())
        }
    }
}

/// Running Σ over passed defect pixels of 1/|region| (Neumaier-compensated), i.e. the sum
/// over regions of the detected fraction.
struct ProSum<'a, K> {
    defect: &'a [(K, u32)],
    inv_size: &'a [f64],
    next: usize,
    sum: f64,
    comp: f64,
}

impl<'a, K: Ord + Copy> ProSum<'a, K> {
    fn new(defect: &'a [(K, u32)], inv_size: &'a [f64]) -> Self {
        ProSum {
            defect,
            inv_size,
            next: 0,
            sum: 0.0,
            comp: 0.0,
        }
    }

    fn peek_key(&self) -> Option<K> {
        self.defect.get(self.next).map(|d| d.0)
    }

    /// Consumes defect pixels (descending scores) while `keep(key)` holds.
    fn advance_while(&mut self, keep: impl Fn(K) -> bool) {
        while let Some(&(s, r)) = self.defect.get(self.next) {
            if !keep(s) {
                break;
            }
            let x = self.inv_size[r as usize];
            let t = self.sum + x;
            if self.sum.abs() >= x.abs() {
                self.comp += (self.sum - t) + x;
            } else {
                self.comp += (x - t) + self.sum;
            }
            self.sum = t;
            self.next += 1;
        }
    }

    fn value(&self) -> f64 {
        self.sum + self.comp
    }
}

/// Streaming trapezoid rule over points with non-decreasing x, stopping at `limit` with
/// linear interpolation there (MVTec reference `trapezoid(..., x_max)` semantics).
struct Trapezoid {
    prev: (f64, f64),
    limit: f64,
    area: f64,
    done: bool,
}

impl Trapezoid {
    fn new(first: (f64, f64), limit: f64) -> Self {
        Trapezoid {
            prev: first,
            limit,
            area: 0.0,
            done: first.0 >= limit,
        }
    }

    fn done(&self) -> bool {
        self.done
    }

    fn push(&mut self, (x, y): (f64, f64)) {
        if self.done {
            return;
        }
        let (px, py) = self.prev;
        if x <= self.limit {
            self.area += 0.5 * (y + py) * (x - px);
            self.prev = (x, y);
        } else {
            let yl = py + (y - py) * (self.limit - px) / (x - px);
            self.area += 0.5 * (yl + py) * (self.limit - px);
            self.done = true;
        }
    }

    fn finish(&self) -> f64 {
        self.area / self.limit
    }
}
