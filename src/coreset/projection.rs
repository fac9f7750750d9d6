//! Seeded dense random projection of the memory bank (docs/algorithm.md §4, ORIG).

use ndarray::{Array2, ArrayView2};
use rand::distr::{Distribution, Uniform};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::kernels::gemm::matmul;
use crate::{Error, Result};

/// Projects every row of `bank` (`N × D`) to `dim` dimensions: `z = bank · Wᵀ` with a dense
/// matrix `W ∈ R^{dim × D}` whose entries are drawn independently from `U(−1/√D, 1/√D)` (the
/// initialisation of a bias-free `torch.nn.Linear(D, dim)`, as in the original implementation).
///
/// `W` is drawn row after row (row `r` of `W` holds the `D` weights of output `r`) from
/// `ChaCha8Rng::seed_from_u64(seed)`. The same seed always gives the same matrix.
///
/// # Errors
/// [`Error::InvalidParameter`] when `dim == 0`; [`Error::InvalidInput`] when the bank has rows of
/// length 0.
pub fn project(bank: ArrayView2<f32>, dim: usize, seed: u64) -> Result<Array2<f32>> {
    let (n, d) = bank.dim();
    if dim == 0 {
        return Err(Error::param(
            "coreset projection_dim",
            "a projection needs at least 1 output dimension (0 means: do not project)",
        ));
    }
    if d == 0 {
        return Err(Error::input(format!(
            "the memory bank has {n} rows of length 0: there is nothing to project"
        )));
    }
    let bound = 1.0 / (d as f32).sqrt();
    let uniform = Uniform::new(-bound, bound)
        .map_err(|e| Error::input(format!("projection bound {bound} is unusable: {e}")))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w: Vec<f32> = (0..dim * d).map(|_| uniform.sample(&mut rng)).collect();

    let bank = bank.as_standard_layout();
    let src = bank
        .as_slice()
        .ok_or_else(|| Error::input("the memory bank could not be laid out contiguously"))?;
    // One product for the whole bank: the matrix-product kernel does its own blocking and
    // spreads the rows over the rayon pool.
    let len = n.checked_mul(dim).ok_or_else(|| {
        Error::input(format!(
            "the projection of {n} rows to {dim} dimensions does not fit in memory"
        ))
    })?;
    // `Wᵀ` (`D × dim`) laid out explicitly: the GEMM packs a row-major right operand faster
    // than a transposed view.
    let mut wt = vec![0.0f32; d * dim];
    for (r, row) in w.chunks_exact(d).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            wt[c * dim + r] = v;
        }
    }
    let mut z = vec![0.0f32; len];
    matmul(n, dim, d, src, &wt, &mut z, false);
    Array2::from_shape_vec((n, dim), z)
        .map_err(|e| Error::input(format!("projected bank has an inconsistent shape: {e}")))
}
