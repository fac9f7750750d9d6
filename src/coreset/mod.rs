//! Memory-bank subsampling (coreset selection), docs/algorithm.md §4.
//!
//! PatchCore keeps only a representative subset of the memory bank: a *coreset* chosen so that
//! every bank row lies close to some kept row. This module offers
//!
//! * [`Sampler::Greedy`] (default): random-start greedy k-center (farthest-first traversal) on a
//!   seeded dense random projection of the bank. The random first element **is** part of the
//!   coreset.
//! * [`Sampler::ApproximateGreedy`]: the original implementation's approximate greedy sampler
//!   (several random starts whose mean distance caps the initial key; the starts are not
//!   emitted).
//! * [`Sampler::Random`]: uniform subsampling without replacement.
//! * [`Sampler::None`]: keep the whole bank.
//!
//! # Distances and ties
//! Selection uses the Euclidean distance `Δ(x, y) = sqrt(Σ_j (x_j − y_j)²)`, evaluated in `f32`
//! in the difference form (exactly `0` for identical rows) with fused multiply-adds and a fixed
//! summation order, so the chosen indices do not depend on the number of threads or on the
//! machine. The farthest row is
//! found with `argmax`; ties go to the **lowest** row index. A row that has been emitted is never
//! emitted again, even when every remaining row coincides with an emitted one.
//!
//! # Reproducibility
//! Everything random comes from one `u64` seed ([`CoresetConfig::seed`]):
//! the projection matrix is drawn from `ChaCha8Rng::seed_from_u64(seed)` (stream 0), the sampler's
//! draws (greedy first element, approximate-greedy starts, random subset) from
//! `ChaCha8Rng::seed_from_u64(seed)` switched to stream 1 with `set_stream(1)`. The greedy first
//! element is `rng.random_range(0..N)` on that stream; the starts and the random subset are
//! `rand::seq::index::sample(&mut rng, N, amount)` in the order it returns them.
//!
//! # Example
//! ```
//! use ndarray::Array2;
//! use patchcore::coreset::{select, CoresetConfig, CoresetSize};
//!
//! let bank = Array2::from_shape_fn((100, 8), |(i, j)| ((i * 7 + j * 3) % 11) as f32);
//! let cfg = CoresetConfig { size: CoresetSize::Ratio(0.1), ..CoresetConfig::default() };
//! let idx = select(bank.view(), &cfg).unwrap();
//! assert_eq!(idx.len(), 10);
//! ```

mod blocked;
mod greedy;
mod pass;
mod projected;
mod projection;
mod topk;

#[cfg(test)]
mod accel_tests;

pub use greedy::{approximate_greedy_from, greedy_from};
pub use projected::{projects, select_from_projected, select_projected, ProjectedBank};
pub use projection::{
    project, Projector, BLOCK_ROWS as PROJECTION_BLOCK_ROWS,
    SPLIT_TOLERANCE as PROJECTION_SPLIT_TOLERANCE,
};

use ndarray::{Array2, ArrayView2, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::kernels::distance;
use crate::{Error, Result};
use projected::projected_bank;

/// Most centres one full pass of the greedy traversal folds in; the traversal's
/// centre–centre table holds up to `k × GREEDY_CENTRES_PER_PASS` distances for a coreset of
/// `k` rows (memory estimates use it).
pub const GREEDY_CENTRES_PER_PASS: usize = topk::CAP + 1;

/// How the coreset is chosen from the memory bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sampler {
    /// Random-start greedy k-center (farthest-first) on the projected bank. The first element is
    /// drawn uniformly from the seeded RNG and is emitted as the first coreset row.
    #[default]
    Greedy,
    /// The original implementation's approximate greedy sampler: `min(starts, N)` distinct start
    /// rows drawn from the seeded RNG; the initial key of every row is its mean distance to the
    /// starts (the starts themselves are not emitted); then farthest-first.
    ApproximateGreedy {
        /// Number of random start rows (the original uses 10). Must be at least 1.
        starts: usize,
    },
    /// Uniform random subset without replacement (seeded).
    Random,
    /// No subsampling: every row, in bank order. [`CoresetConfig::size`] is ignored.
    None,
}

impl Sampler {
    /// The original implementation's approximate greedy sampler with its 10 starts.
    pub const APPROXIMATE_GREEDY_DEFAULT: Sampler = Sampler::ApproximateGreedy { starts: 10 };
}

/// How many rows the coreset keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CoresetSize {
    /// A fraction `f ∈ (0, 1]` of the bank: `k = trunc(N·f)` computed in `f64` (Python
    /// `int(N * f)`), but at least 1 row for a non-empty bank. `1.0` keeps every row.
    Ratio(f64),
    /// An exact number of rows, `1 ≤ k ≤ N`.
    Count(usize),
}

impl Default for CoresetSize {
    /// `Ratio(0.1)`, the paper's 10 % coreset.
    fn default() -> Self {
        CoresetSize::Ratio(0.1)
    }
}

/// Configuration of the coreset selection.
#[derive(Debug, Clone, PartialEq)]
pub struct CoresetConfig {
    /// The selection algorithm.
    pub sampler: Sampler,
    /// How many rows to keep.
    pub size: CoresetSize,
    /// Dimension of the random projection the greedy samplers work on (default 128). `0`, or a
    /// value equal to the bank's row length, means no projection.
    pub projection_dim: usize,
    /// Seed of every random draw (projection matrix and sampler).
    pub seed: u64,
}

impl Default for CoresetConfig {
    fn default() -> Self {
        CoresetConfig {
            sampler: Sampler::default(),
            size: CoresetSize::default(),
            projection_dim: 128,
            seed: 0,
        }
    }
}

impl CoresetConfig {
    /// Checks the parameters that do not depend on the bank.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a ratio outside `(0, 1]` (or NaN), a count of 0, or an
    /// approximate greedy sampler with 0 starts.
    pub fn validate(&self) -> Result<()> {
        match self.size {
            CoresetSize::Ratio(f) => {
                // Written so that NaN fails too.
                if !(f > 0.0 && f <= 1.0) {
                    return Err(Error::param(
                        "coreset ratio",
                        format!("must lie in (0, 1] (1.0 keeps every row), got {f}"),
                    ));
                }
            }
            CoresetSize::Count(0) => {
                return Err(Error::param(
                    "coreset count",
                    "must be at least 1 (use Sampler::None to keep every row)",
                ));
            }
            CoresetSize::Count(_) => {}
        }
        if let Sampler::ApproximateGreedy { starts: 0 } = self.sampler {
            return Err(Error::param(
                "coreset starts",
                "the approximate greedy sampler needs at least 1 start (the original uses 10)",
            ));
        }
        Ok(())
    }
}

/// Number of rows a coreset of `size` keeps from a bank of `n` rows.
///
/// `Ratio(f)` gives `trunc(n·f)` computed in `f64`, exactly Python's `int(n * f)`
/// (e.g. `int(163856 · 0.1) = 16385`, `int(100 · 0.29) = 28`); when that truncates to 0 on a
/// non-empty bank the result is 1, so a coreset is never empty. `Count(k)` gives `k`.
///
/// # Errors
/// [`Error::InvalidInput`] when `n == 0`; [`Error::InvalidParameter`] for an invalid ratio, a
/// count of 0, or a count larger than `n`.
pub fn coreset_size(n: usize, size: CoresetSize) -> Result<usize> {
    if n == 0 {
        return Err(Error::input(
            "the memory bank is empty: there is nothing to subsample",
        ));
    }
    CoresetConfig {
        size,
        ..CoresetConfig::default()
    }
    .validate()?;
    match size {
        CoresetSize::Ratio(f) => {
            let k = (n as f64 * f).trunc() as usize;
            Ok(k.clamp(1, n))
        }
        CoresetSize::Count(k) if k > n => Err(Error::param(
            "coreset count",
            format!("asks for {k} rows but the memory bank has only {n}"),
        )),
        CoresetSize::Count(k) => Ok(k),
    }
}

/// The sampler's RNG: the seed's ChaCha8 stream 1 (stream 0 draws the projection).
fn sampler_rng(seed: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(1);
    rng
}

/// Chooses the coreset rows of `bank` (`N × D`, one memory-bank row per embedding).
///
/// Returns the chosen row indices into `bank`, in selection order (for the greedy samplers the
/// order of the farthest-first traversal, so the first `j` indices are the coreset of size `j`).
/// The greedy samplers run on the projection of the bank (see [`project`]); the indices refer to
/// the original rows.
///
/// # Errors
/// [`Error::InvalidParameter`] for an invalid configuration (see [`CoresetConfig::validate`],
/// [`coreset_size`]); [`Error::InvalidInput`] for an empty bank, rows of length 0, or
/// non-finite values (in the bank or in its projection).
pub fn select(bank: ArrayView2<f32>, cfg: &CoresetConfig) -> Result<Vec<usize>> {
    select_with_progress(bank, cfg, |_, _| {})
}

/// [`select`] with a progress report: `progress(selected, total)` is called from the calling
/// thread as the selection advances — for the greedy samplers after every full pass over the
/// bank (a few dozen calls for a 1 % coreset), for the others once at the end — and the last
/// call has `selected == total`. The result is the same as [`select`]'s.
///
/// # Errors
/// As [`select`] (no call is made when the configuration or the bank is rejected).
pub fn select_with_progress(
    bank: ArrayView2<f32>,
    cfg: &CoresetConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<usize>> {
    cfg.validate()?;
    let (n, d) = bank.dim();
    if n == 0 {
        return Err(Error::input(
            "the memory bank is empty: there is nothing to subsample",
        ));
    }
    if d == 0 {
        return Err(Error::input(format!(
            "the memory bank has {n} rows of length 0"
        )));
    }
    if let Sampler::None = cfg.sampler {
        progress(n, n);
        return Ok((0..n).collect());
    }
    let k = coreset_size(n, cfg.size)?;
    if let Some(pos) = first_non_finite(bank) {
        return Err(Error::input(format!(
            "the memory bank holds a non-finite value at row {}, column {}",
            pos / d,
            pos % d
        )));
    }
    let z = match cfg.sampler {
        Sampler::Greedy | Sampler::ApproximateGreedy { .. } => Some(projected_bank(bank, cfg)?),
        Sampler::None | Sampler::Random => None,
    };
    let sel = select_from_projected(z.as_ref(), n, k, cfg, &mut progress)?;
    Ok(sel.indices)
}

/// A chosen coreset and how well it covers the bank.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Chosen row indices, in selection order (as [`select`] returns them).
    pub indices: Vec<usize>,
    /// For the greedy samplers, the coverage radius where the traversal stopped: the largest
    /// key left among the rows not chosen (the key of the row it would choose next), measured
    /// in the space the traversal works in (the projection, see [`CoresetConfig::projection_dim`]).
    /// For [`Sampler::Greedy`] this is the largest distance from a bank row to its nearest
    /// chosen row; for [`Sampler::ApproximateGreedy`] keys start at the mean distance to the
    /// starts, so it can be smaller. `0` when every row is kept; `None` for
    /// [`Sampler::Random`] and [`Sampler::None`].
    pub radius: Option<f32>,
}

/// [`select_with_progress`] that also returns the coverage radius ([`Selection::radius`]).
///
/// # Errors
/// As [`select`].
pub fn select_with_radius(
    bank: ArrayView2<f32>,
    cfg: &CoresetConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<Selection> {
    cfg.validate()?;
    let (n, d) = bank.dim();
    if n == 0 || d == 0 {
        // The messages of `select`.
        select(bank, cfg)?;
    }
    if let Sampler::None = cfg.sampler {
        progress(n, n);
        return Ok(Selection {
            indices: (0..n).collect(),
            radius: None,
        });
    }
    let k = coreset_size(n, cfg.size)?;
    if let Some(pos) = first_non_finite(bank) {
        return Err(Error::input(format!(
            "the memory bank holds a non-finite value at row {}, column {}",
            pos / d,
            pos % d
        )));
    }
    let z = match cfg.sampler {
        Sampler::Greedy | Sampler::ApproximateGreedy { .. } => Some(projected_bank(bank, cfg)?),
        Sampler::None | Sampler::Random => None,
    };
    select_from_projected(z.as_ref(), n, k, cfg, &mut progress)
}

/// Row-major position of the first non-finite value of `bank`, if any.
fn first_non_finite(bank: ArrayView2<f32>) -> Option<usize> {
    const CHUNK: usize = 1 << 16;
    match bank.as_slice() {
        Some(s) => {
            // Whole chunks are checked branch-free and in parallel; the first bad chunk is then
            // searched for its first bad value.
            let c = s
                .par_chunks(CHUNK)
                .position_first(|c| !c.iter().fold(true, |ok, v| ok & v.is_finite()))?;
            let start = c * CHUNK;
            s[start..]
                .iter()
                .position(|v| !v.is_finite())
                .map(|p| start + p)
        }
        None => bank.iter().position(|v| !v.is_finite()),
    }
}

/// Chooses the coreset like [`select`] and returns its rows (copies of the chosen bank rows, in
/// selection order).
///
/// # Errors
/// As [`select`].
pub fn subsample(bank: ArrayView2<f32>, cfg: &CoresetConfig) -> Result<Array2<f32>> {
    let idx = select(bank, cfg)?;
    Ok(bank.select(Axis(0), &idx))
}

/// The coreset's Euclidean distance `Δ(x, y)` (fixed summation order, see the module
/// documentation); `x` and `y` have the same length.
pub fn distance(x: &[f32], y: &[f32]) -> f32 {
    distance::sq_dist(x, y).sqrt()
}

/// For every row of `rows` (row-major, `d` values each), [`distance`](distance()) to the
/// nearest row of `centres` (also `d` values each); `+∞` when there are no centres.
pub fn nearest_distances(rows: &[f32], centres: &[f32], d: usize) -> Vec<f32> {
    if d == 0 {
        return Vec::new();
    }
    rows.par_chunks(d)
        .map(|x| {
            centres
                .chunks_exact(d)
                .map(|c| distance::sq_dist(x, c))
                .fold(f32::INFINITY, f32::min)
                .sqrt()
        })
        .collect()
}

#[cfg(test)]
mod radius_tests {
    use super::*;

    /// The radius is the largest distance from a row to its nearest chosen row, computed
    /// naively in f64 on the projection.
    #[test]
    fn radius_is_the_largest_distance_to_the_nearest_centre() {
        let bank = Array2::from_shape_fn((300, 40), |(i, j)| {
            (((i * 37 + j * 11) % 23) as f32 * 0.3).sin() + (i % 7) as f32
        });
        for sampler in [Sampler::Greedy, Sampler::APPROXIMATE_GREEDY_DEFAULT] {
            let cfg = CoresetConfig {
                sampler,
                size: CoresetSize::Count(25),
                projection_dim: 8,
                seed: 4,
            };
            let sel = select_with_radius(bank.view(), &cfg, |_, _| {}).unwrap();
            assert_eq!(sel.indices, select(bank.view(), &cfg).unwrap());
            let z = project(bank.view(), 8, 4).unwrap();
            let naive = (0..300)
                .map(|i| {
                    sel.indices
                        .iter()
                        .map(|&c| {
                            (0..8)
                                .map(|j| (z[[i, j]] as f64 - z[[c, j]] as f64).powi(2))
                                .sum::<f64>()
                                .sqrt()
                        })
                        .fold(f64::INFINITY, f64::min)
                })
                .fold(0.0f64, f64::max);
            let r = sel.radius.unwrap() as f64;
            if sampler == Sampler::Greedy {
                assert!((r - naive).abs() <= 1e-5 * naive, "{r} vs {naive}");
            } else {
                // Keys start at the mean distance to the starts: never above the true radius.
                assert!(r <= naive * (1.0 + 1e-5) && r > 0.0, "{r} vs {naive}");
            }
        }
        let all = CoresetConfig {
            size: CoresetSize::Ratio(1.0),
            ..CoresetConfig::default()
        };
        assert_eq!(
            select_with_radius(bank.view(), &all, |_, _| {})
                .unwrap()
                .radius,
            Some(0.0)
        );
    }
}
