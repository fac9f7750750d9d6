//! Seeded dense random projection of the memory bank (docs/algorithm.md §4, ORIG).
//!
//! The projection is computed in fixed blocks of [`BLOCK_ROWS`] rows (one matrix product per
//! block), so that a bank projected whole and the same bank projected block by block as its rows
//! arrive (the memory-budgeted fit) run exactly the same products and give the same bits.

use ndarray::{Array2, ArrayView2};
use rand::distr::{Distribution, Uniform};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::kernels::gemm::matmul;
use crate::{Error, Result};

/// Rows per matrix product of the projection (bank rows are projected in consecutive blocks of
/// this many rows, the last one shorter).
pub const BLOCK_ROWS: usize = 4096;

/// How far (relative to the row's norm) the projection of a row may move when it is projected
/// in another block of rows: the matrix-product kernels sum in an order that depends on the
/// block's shape, so the bits differ, by rounding only.
pub const SPLIT_TOLERANCE: f32 = 1e-5;

/// The projection matrix of [`project`], ready to project rows.
#[derive(Debug, Clone)]
pub struct Projector {
    /// `Wᵀ`, `d × dim`, row-major.
    wt: Vec<f32>,
    d: usize,
    dim: usize,
}

impl Projector {
    /// The matrix `W ∈ R^{dim × d}` drawn from `seed` as [`project`] documents.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] when `dim == 0`; [`Error::InvalidInput`] when `d == 0`.
    pub fn new(d: usize, dim: usize, seed: u64) -> Result<Projector> {
        if dim == 0 {
            return Err(Error::param(
                "coreset projection_dim",
                "a projection needs at least 1 output dimension (0 means: do not project)",
            ));
        }
        if d == 0 {
            return Err(Error::input(
                "the memory bank has rows of length 0: there is nothing to project",
            ));
        }
        let bound = 1.0 / (d as f32).sqrt();
        let uniform = Uniform::new(-bound, bound)
            .map_err(|e| Error::input(format!("projection bound {bound} is unusable: {e}")))?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let w: Vec<f32> = (0..dim * d).map(|_| uniform.sample(&mut rng)).collect();
        // `Wᵀ` (`D × dim`) laid out explicitly: the GEMM packs a row-major right operand faster
        // than a transposed view.
        let mut wt = vec![0.0f32; d * dim];
        for (r, row) in w.chunks_exact(d).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                wt[c * dim + r] = v;
            }
        }
        Ok(Projector { wt, d, dim })
    }

    /// Input row length.
    pub fn input_dim(&self) -> usize {
        self.d
    }

    /// Output row length.
    pub fn output_dim(&self) -> usize {
        self.dim
    }

    /// Projects `rows` (row-major, a multiple of the input length) with **one** matrix
    /// product, appending the result to `out`. [`project`] calls this on consecutive blocks of
    /// [`BLOCK_ROWS`] rows; a caller that wants the same bits must do the same.
    pub fn project_block(&self, rows: &[f32], out: &mut Vec<f32>) {
        let n = rows.len() / self.d;
        let start = out.len();
        out.resize(start + n * self.dim, 0.0);
        matmul(
            n,
            self.dim,
            self.d,
            &rows[..n * self.d],
            &self.wt,
            &mut out[start..],
            false,
        );
    }
}

/// Projects every row of `bank` (`N × D`) to `dim` dimensions: `z = bank · Wᵀ` with a dense
/// matrix `W ∈ R^{dim × D}` whose entries are drawn independently from `U(−1/√D, 1/√D)` (the
/// initialisation of a bias-free `torch.nn.Linear(D, dim)`, as in the original implementation).
///
/// `W` is drawn row after row (row `r` of `W` holds the `D` weights of output `r`) from
/// `ChaCha8Rng::seed_from_u64(seed)`. The same seed always gives the same matrix. The rows are
/// projected in consecutive blocks of [`BLOCK_ROWS`] (see [`Projector::project_block`]).
///
/// # Errors
/// [`Error::InvalidParameter`] when `dim == 0`; [`Error::InvalidInput`] when the bank has rows of
/// length 0.
pub fn project(bank: ArrayView2<f32>, dim: usize, seed: u64) -> Result<Array2<f32>> {
    let (n, d) = bank.dim();
    if d == 0 {
        return Err(Error::input(format!(
            "the memory bank has {n} rows of length 0: there is nothing to project"
        )));
    }
    let p = Projector::new(d, dim, seed)?;
    let bank = bank.as_standard_layout();
    let src = bank
        .as_slice()
        .ok_or_else(|| Error::input("the memory bank could not be laid out contiguously"))?;
    let len = n.checked_mul(dim).ok_or_else(|| {
        Error::input(format!(
            "the projection of {n} rows to {dim} dimensions does not fit in memory"
        ))
    })?;
    let mut z = Vec::with_capacity(len);
    for block in src.chunks(BLOCK_ROWS * d) {
        p.project_block(block, &mut z);
    }
    Array2::from_shape_vec((n, dim), z)
        .map_err(|e| Error::input(format!("projected bank has an inconsistent shape: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive `bank · Wᵀ` in f64 for a few rows, against the blocked products.
    #[test]
    fn projection_matches_naive_product() {
        let (n, d, dim) = (37, 50, 8);
        let bank = Array2::from_shape_fn((n, d), |(i, j)| ((i * 31 + j * 7) % 13) as f32 - 6.0);
        let z = project(bank.view(), dim, 9).unwrap();
        let p = Projector::new(d, dim, 9).unwrap();
        for i in 0..n {
            for c in 0..dim {
                let want: f64 = (0..d)
                    .map(|j| bank[[i, j]] as f64 * p.wt[j * dim + c] as f64)
                    .sum();
                assert!((z[[i, c]] as f64 - want).abs() < 1e-4, "{i},{c}");
            }
        }
    }

    /// The matrix product is *not* row-independent at the bit level (small blocks take other
    /// kernels), but splits differ by rounding only: at most [`SPLIT_TOLERANCE`] relative to
    /// the row's norm. The incremental update relies on this bound.
    #[test]
    fn projection_splits_differ_by_rounding_only() {
        let (n, d, dim) = (3 * 784 + 5, 1536, 128);
        let bank = Array2::from_shape_fn((n, d), |(i, j)| {
            (((i * 2654435761 + j * 40503) % 1000) as f32) / 250.0 - 2.0
        });
        let whole = project(bank.view(), dim, 3).unwrap();
        let p = Projector::new(d, dim, 3).unwrap();
        let src = bank.as_slice().unwrap();
        for split in [1usize, 7, 784, 1000, 2 * 784] {
            let mut z = Vec::new();
            for c in src.chunks(split * d) {
                p.project_block(c, &mut z);
            }
            for (i, (a, b)) in z.chunks(dim).zip(whole.rows()).enumerate() {
                let norm: f32 = b.iter().map(|v| v * v).sum::<f32>().sqrt();
                let diff: f32 = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y) * (x - y))
                    .sum::<f32>()
                    .sqrt();
                assert!(
                    diff <= SPLIT_TOLERANCE * norm,
                    "split {split} row {i}: {diff} vs {norm}"
                );
            }
        }
    }

    /// Rows projected block by block as they arrive (the budgeted fit) give the bits of the
    /// whole-bank projection when the blocks are those of [`project`].
    #[test]
    fn arriving_rows_in_fixed_blocks_give_the_same_bits() {
        let (n, d, dim) = (2 * BLOCK_ROWS + 300, 24, 8);
        let bank = Array2::from_shape_fn((n, d), |(i, j)| ((i * 7 + j * 13) % 29) as f32 * 0.1);
        let whole = project(bank.view(), dim, 5).unwrap();
        let p = Projector::new(d, dim, 5).unwrap();
        let mut z = Vec::new();
        let mut pending: Vec<f32> = Vec::new();
        // Rows arrive 784 at a time (one image), blocks are flushed at BLOCK_ROWS rows.
        for c in bank.as_slice().unwrap().chunks(784 * d) {
            pending.extend_from_slice(c);
            while pending.len() >= BLOCK_ROWS * d {
                p.project_block(&pending[..BLOCK_ROWS * d], &mut z);
                pending.drain(..BLOCK_ROWS * d);
            }
        }
        p.project_block(&pending, &mut z);
        assert_eq!(z.len(), whole.len());
        assert!(z
            .iter()
            .zip(whole.iter())
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
