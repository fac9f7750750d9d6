//! Patch scores and image scores from nearest-neighbour distances.
//!
//! * Patch score: mean of the distances to the `k` nearest memory-bank rows, either Euclidean
//!   (the paper, anomalib) or squared L2 (the original implementation, faiss semantics).
//! * Image score: the maximum patch score, optionally re-weighted as in Eq. 7 of the paper
//!   (see [`image_score`]).
//!
//! ```
//! use ndarray::array;
//! use patchcore::knn::{BruteForce, NearestNeighbours};
//! use patchcore::scoring::{image_score, patch_scores, Distance, ScoringConfig};
//!
//! let bank = BruteForce::new(array![[0.0f32, 0.0], [1.0, 0.0]])?;
//! let queries = array![[0.0f32, 0.0], [3.0, 4.0]];
//! let cfg = ScoringConfig::default();
//! let nn = bank.k_nearest(queries.view(), cfg.k)?;
//! let scores = patch_scores(&nn, Distance::Euclidean);
//! let image = image_score(&scores, queries.view(), &bank, &cfg)?;
//! assert_eq!(image.patch, 1);
//! assert!((image.score - 20f32.sqrt()).abs() < 1e-6);
//! # Ok::<(), patchcore::Error>(())
//! ```

use ndarray::ArrayView2;

use crate::knn::{squared_distance, NearestNeighbours, Neighbours};
use crate::{Error, Result};

/// How a nearest-neighbour distance becomes a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Distance {
    /// Euclidean distance `‖a − b‖` (the paper; anomalib). Default.
    #[default]
    Euclidean,
    /// Squared Euclidean distance `‖a − b‖²` (the original implementation via faiss).
    SquaredL2,
}

impl Distance {
    /// Convert a squared L2 distance (as stored in [`Neighbours`]) to this distance.
    #[inline]
    pub fn from_squared(self, squared: f32) -> f32 {
        match self {
            Distance::Euclidean => squared.max(0.0).sqrt(),
            Distance::SquaredL2 => squared,
        }
    }
}

/// Scoring parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoringConfig {
    /// Number of nearest bank rows averaged into a patch score (default 1).
    pub k: usize,
    /// `b` of the paper's re-weighting (Eq. 7): number of bank neighbours of `m*` (itself
    /// included). 1 (default) = plain maximum, no re-weighting; anomalib uses 9.
    pub reweight_neighbours: usize,
    /// Distance used for patch scores (default Euclidean).
    pub distance: Distance,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        Self {
            k: 1,
            reweight_neighbours: 1,
            distance: Distance::Euclidean,
        }
    }
}

impl ScoringConfig {
    /// Check the parameters.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `k` or `reweight_neighbours` is 0.
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 {
            return Err(Error::param(
                "k",
                "number of nearest neighbours per patch must be at least 1",
            ));
        }
        if self.reweight_neighbours == 0 {
            return Err(Error::param(
                "reweight_neighbours",
                "must be at least 1 (1 = plain maximum, no re-weighting)",
            ));
        }
        Ok(())
    }
}

/// Patch scores: the mean of each query's `k` nearest distances, in `distance` units
/// (Euclidean = mean of the square roots of the squared distances).
pub fn patch_scores(nn: &Neighbours, distance: Distance) -> Vec<f32> {
    let k = nn.k();
    if k == 0 {
        return vec![0.0; nn.n_queries()];
    }
    nn.distances
        .rows()
        .into_iter()
        .map(|row| {
            let sum: f32 = row.iter().map(|&d| distance.from_squared(d)).sum();
            sum / k as f32
        })
        .collect()
}

/// An image-level anomaly score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageScore {
    /// The score: `weight · patch_scores[patch]`.
    pub score: f32,
    /// Index of the highest-scoring patch `q*` (ties → lowest index).
    pub patch: usize,
    /// Re-weighting factor `w` of Eq. 7 (1 for a plain maximum).
    pub weight: f32,
}

/// Image score from the patch scores of ONE image.
///
/// `patch_scores` are the image's patch scores (from [`patch_scores`]), `queries` the image's
/// patch features (same order, `[n_patches, dim]`) and `bank` the memory bank they were scored
/// against.
///
/// With `cfg.reweight_neighbours == 1` the score is the plain maximum (original
/// implementation); `queries` and `bank` are then only shape-checked. With `b > 1` it is the
/// paper's Eq. 7 as anomalib computes it:
/// 1. `q*` = the patch with the largest patch score (with `k = 1` the largest 1-NN distance),
///    `s*` its patch score, `m*` its nearest bank row;
/// 2. `N_b` = the `b' = min(b, bank rows)` nearest bank rows of `m*`, `m*` first;
/// 3. `d_j = ‖q* − bank[N_b[j]]‖` (Euclidean, whatever `cfg.distance`);
/// 4. `w = 1 − softmax(d)_0` (max-subtracted), score `= w · s*`.
///
/// If the bank has a single row (`b' = 1`), the plain maximum is returned.
///
/// # Errors
/// [`Error::InvalidParameter`] for an invalid `cfg`; [`Error::InvalidInput`] if
/// `patch_scores` is empty, holds NaN, or its length differs from the number of query rows,
/// or if `queries` do not fit the bank.
pub fn image_score<N: NearestNeighbours + ?Sized>(
    patch_scores: &[f32],
    queries: ArrayView2<f32>,
    bank: &N,
    cfg: &ScoringConfig,
) -> Result<ImageScore> {
    cfg.validate()?;
    if patch_scores.is_empty() {
        return Err(Error::input("an image needs at least one patch score"));
    }
    if patch_scores.len() != queries.nrows() {
        return Err(Error::input(format!(
            "{} patch scores but {} query rows for the image",
            patch_scores.len(),
            queries.nrows()
        )));
    }
    if queries.ncols() != bank.dim() {
        return Err(Error::input(format!(
            "query rows have {} features but the memory bank has {}",
            queries.ncols(),
            bank.dim()
        )));
    }
    let (patch, s_star) = argmax(patch_scores)?;
    let b = cfg.reweight_neighbours.min(bank.len());
    if b <= 1 {
        return Ok(ImageScore {
            score: s_star,
            patch,
            weight: 1.0,
        });
    }

    let q_star = queries.slice(ndarray::s![patch..patch + 1, ..]);
    let m_star = bank.k_nearest(q_star, 1)?.indices[[0, 0]];
    let m_row = bank
        .row(m_star)
        .ok_or_else(|| Error::input(format!("bank row {m_star} out of range")))?;
    let m_row2 = m_row.insert_axis(ndarray::Axis(0));
    let nb = bank.k_nearest(m_row2.view(), b)?;
    // N_b with m* first (a duplicate of m* may precede it on distance ties; the distances to
    // q* are then equal, so this only fixes the order).
    let mut members = Vec::with_capacity(b);
    members.push(m_star);
    members.extend(nb.indices.row(0).iter().copied().filter(|&j| j != m_star));
    members.truncate(b);

    let q_vec = q_star.row(0).to_vec();
    let mut dists = Vec::with_capacity(b);
    for &j in &members {
        let row = bank
            .row(j)
            .ok_or_else(|| Error::input(format!("bank row {j} out of range")))?;
        let row = row.as_standard_layout();
        let row = row
            .as_slice()
            .ok_or_else(|| Error::input("bank row is not contiguous"))?;
        dists.push(squared_distance(&q_vec, row).sqrt());
    }
    let weight = reweight(&dists);
    Ok(ImageScore {
        score: weight * s_star,
        patch,
        weight,
    })
}

/// `1 − softmax(d)_0`, computed with the maximum subtracted (in f64).
///
/// `d` must be non-empty; with one element the result is 0.
pub fn reweight(d: &[f32]) -> f32 {
    let Some(&first) = d.first() else {
        return 0.0;
    };
    let max = d
        .iter()
        .fold(f64::NEG_INFINITY, |a, &v| a.max(f64::from(v)));
    let denom: f64 = d.iter().map(|&v| (f64::from(v) - max).exp()).sum();
    let p0 = (f64::from(first) - max).exp() / denom;
    (1.0 - p0) as f32
}

/// Index and value of the maximum (first one on ties); NaN → error.
fn argmax(v: &[f32]) -> Result<(usize, f32)> {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &x) in v.iter().enumerate() {
        if x.is_nan() {
            return Err(Error::input(format!("patch score {i} is NaN")));
        }
        if x > best.1 || i == 0 {
            best = (i, x);
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reweight_vector_8() {
        // docs/algorithm.md §10 vector 8: d = [1, 2, 3], s* = 1 → w = s = 0.909969.
        assert!((reweight(&[1.0, 2.0, 3.0]) - 0.909_969).abs() < 1e-6);
        assert_eq!(reweight(&[2.5]), 0.0);
    }

    #[test]
    fn argmax_first_on_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]).unwrap(), (1, 3.0));
        assert!(argmax(&[1.0, f32::NAN]).is_err());
    }
}
