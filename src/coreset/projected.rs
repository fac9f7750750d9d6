//! The bank as the greedy samplers see it (the projection of every row, or the rows), held
//! blocked, and the selection from it alone: what the memory-budgeted fit keeps of the bank.

use ndarray::{ArrayView2, CowArray, Ix2};
use rand::Rng;
use rayon::prelude::*;

use super::blocked::{self, Blocked};
use super::{greedy, project, sampler_rng, CoresetConfig, Sampler, Selection};
use crate::{Error, Result};

/// Whether the greedy samplers of `cfg` project rows of length `d` (else they work on the rows).
pub fn projects(cfg: &CoresetConfig, d: usize) -> bool {
    cfg.projection_dim != 0 && cfg.projection_dim != d
}

/// The coreset of a bank of `n` rows from its projection alone (the memory-budgeted fit keeps
/// nothing else): `z` is the bank as the greedy samplers see it — the output of [`project`]
/// when [`projects`] holds, else the bank itself — and may be `None` for [`Sampler::Random`]
/// and [`Sampler::None`], which need only `n`. `k` is [`coreset_size`](super::coreset_size). Gives exactly the
/// selection [`select_with_radius`](super::select_with_radius) gives on the bank. `z` must be finite.
///
/// # Errors
/// [`Error::InvalidInput`] when a greedy sampler gets no `z` or one of other than `n` rows.
pub fn select_projected(
    z: Option<ArrayView2<f32>>,
    n: usize,
    k: usize,
    cfg: &CoresetConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Selection> {
    let bank = match z {
        Some(z) => {
            let z = z.as_standard_layout();
            Some(ProjectedBank {
                z: Blocked::from_rows(&greedy::rows_of(&z, "greedy coreset")?),
            })
        }
        None => None,
    };
    select_from_projected(bank.as_ref(), n, k, cfg, progress)
}

/// The bank as the greedy samplers see it (the projection of every row, or the rows when no
/// projection applies), held in the layout the traversal reads: rows transposed in blocks of
/// 16. This is all a greedy selection needs; a memory-budgeted fit builds it row by row as
/// the rows are projected and holds nothing else of the bank (see
/// [`select_from_projected`]).
///
/// ```
/// use patchcore::coreset::{select_from_projected, select_projected, CoresetConfig, ProjectedBank};
/// use ndarray::Array2;
///
/// let z = Array2::from_shape_fn((50, 4), |(i, j)| ((i * 5 + j * 3) % 7) as f32);
/// let mut bank = ProjectedBank::with_capacity(50, 4).unwrap();
/// for rows in z.as_slice().unwrap().chunks(4 * 9) {
///     bank.push_rows(rows).unwrap();
/// }
/// let cfg = CoresetConfig::default();
/// let a = select_from_projected(Some(&bank), 50, 5, &cfg, &mut |_, _| {}).unwrap();
/// let b = select_projected(Some(z.view()), 50, 5, &cfg, &mut |_, _| {}).unwrap();
/// assert_eq!(a, b);
/// ```
pub struct ProjectedBank {
    z: Blocked,
}

impl ProjectedBank {
    /// An empty bank for `rows` rows of `dim` values, its memory ([`ProjectedBank::bytes`])
    /// reserved at once.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for `dim = 0`; [`Error::LimitExceeded`] when the memory
    /// cannot be allocated.
    pub fn with_capacity(rows: usize, dim: usize) -> Result<ProjectedBank> {
        if dim == 0 {
            return Err(Error::param("projection_dim", "rows of length 0"));
        }
        let z = Blocked::try_with_capacity(rows, dim).ok_or_else(|| Error::LimitExceeded {
            reason: format!(
                "the projected bank of {rows} rows × {dim} values ({} bytes) cannot be \
                     allocated",
                Self::bytes(rows, dim)
            ),
        })?;
        Ok(ProjectedBank { z })
    }

    /// Bytes a bank of `rows` rows of `dim` values holds (rows padded to a multiple of 16).
    pub fn bytes(rows: usize, dim: usize) -> u64 {
        rows.div_ceil(blocked::R) as u64 * blocked::R as u64 * dim as u64 * 4
    }

    /// Appends rows (row-major, whole rows of [`ProjectedBank::dim`] values).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a length that is not whole rows or a non-finite value.
    pub fn push_rows(&mut self, rows: &[f32]) -> Result<()> {
        let d = self.z.d;
        if !rows.len().is_multiple_of(d) {
            return Err(Error::input(format!(
                "projected bank: {} values are not whole rows of {d}",
                rows.len()
            )));
        }
        if let Some(p) = rows.iter().position(|v| !v.is_finite()) {
            return Err(Error::input(format!(
                "the random projection of the memory bank holds a non-finite value at row {} \
                 (the bank values are too large)",
                self.z.n + p / d
            )));
        }
        self.z.push_rows(rows);
        Ok(())
    }

    /// Rows pushed so far.
    pub fn len(&self) -> usize {
        self.z.n
    }

    /// Whether no row was pushed.
    pub fn is_empty(&self) -> bool {
        self.z.n == 0
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.z.d
    }
}

/// [`select_projected`] from a [`ProjectedBank`]: the same selection, bit for bit.
///
/// # Errors
/// As [`select_projected`].
pub fn select_from_projected(
    z: Option<&ProjectedBank>,
    n: usize,
    k: usize,
    cfg: &CoresetConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Selection> {
    let mut rng = sampler_rng(cfg.seed);
    let need_z = || -> Result<&Blocked> {
        match z {
            Some(z) if z.z.n == n => Ok(&z.z),
            _ => Err(Error::input(format!(
                "the greedy coreset needs the projection of all {n} bank rows"
            ))),
        }
    };
    match cfg.sampler {
        Sampler::None | Sampler::Random => {
            let idx = match cfg.sampler {
                Sampler::None => (0..n).collect(),
                _ => rand::seq::index::sample(&mut rng, n, k).into_vec(),
            };
            progress(idx.len(), idx.len());
            Ok(Selection {
                indices: idx,
                radius: None,
            })
        }
        Sampler::Greedy => {
            let first = rng.random_range(0..n);
            let (indices, r) = greedy::greedy_with_radius(need_z()?, first, k, None, progress)?;
            Ok(Selection {
                indices,
                radius: Some(r),
            })
        }
        Sampler::ApproximateGreedy { starts } => {
            let starts = rand::seq::index::sample(&mut rng, n, starts.min(n)).into_vec();
            let (indices, r) =
                greedy::greedy_with_radius(need_z()?, 0, k, Some(&starts), progress)?;
            Ok(Selection {
                indices,
                radius: Some(r),
            })
        }
    }
}

/// The bank the greedy samplers work on, blocked.
///
/// The row-major projection is kept beside the blocked one (the in-memory fit held both
/// before), which spares the passes' row-by-row path copying rows out of their blocks.
pub(super) fn projected_bank(bank: ArrayView2<f32>, cfg: &CoresetConfig) -> Result<ProjectedBank> {
    let z = projected(bank, cfg)?;
    let (n, d) = z.dim();
    let rows = greedy::rows_of(&z, "greedy coreset")?;
    if z.is_view() {
        // The bank itself (no projection): never copied a second time.
        return Ok(ProjectedBank {
            z: Blocked::from_rows(&rows),
        });
    }
    let data = z.into_owned().into_raw_vec_and_offset().0;
    Ok(ProjectedBank {
        z: Blocked::from_owned_rows(data, n, d),
    })
}

/// The bank the greedy samplers work on: borrowed when no projection applies.
fn projected<'a>(bank: ArrayView2<'a, f32>, cfg: &CoresetConfig) -> Result<CowArray<'a, f32, Ix2>> {
    let d = bank.ncols();
    if !projects(cfg, d) {
        return Ok(CowArray::from(bank));
    }
    let z = project(bank, cfg.projection_dim, cfg.seed)?;
    // The projection is contiguous (row-major, as `project` builds it): checked in parallel.
    let non_finite = match z.as_slice() {
        Some(s) => s
            .par_chunks(1 << 16)
            .any(|c| !c.iter().fold(true, |ok, v| ok & v.is_finite())),
        None => z.iter().any(|v| !v.is_finite()),
    };
    if non_finite {
        return Err(Error::input(
            "the random projection of the memory bank overflows f32: the bank values are too large",
        ));
    }
    Ok(CowArray::from(z))
}
