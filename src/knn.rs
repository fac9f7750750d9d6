//! Exact k-nearest-neighbour search of patch features against a memory bank.
//!
//! [`BruteForce`] computes squared Euclidean distances with the GEMM identity
//! `‖a − b‖² = ‖a‖² − 2·a·b + ‖b‖²` (clamped at 0), the same arithmetic as faiss
//! `IndexFlatL2`, with every inner product going through
//! [`crate::kernels::gemm::matmul_bt`]. The work is cut into fixed-size blocks of queries and of
//! bank rows so the scratch memory stays bounded for any bank size, and query blocks run in
//! parallel on the current rayon pool. Block sizes never depend on the number of threads, so the
//! result is the same for every pool size.
//!
//! After selection, the distances of the `k` winners are recomputed directly as `Σ (a − b)²`,
//! which removes the cancellation error of the GEMM identity for near-identical rows (a query
//! equal to a bank row gets exactly 0). Only the choice between candidates whose distances agree
//! to within that rounding error can differ from an exact-arithmetic search.
//!
//! ```
//! use ndarray::array;
//! use patchcore::knn::{BruteForce, NearestNeighbours};
//!
//! let bank = BruteForce::new(array![[0.0f32, 0.0], [3.0, 4.0], [1.0, 1.0]])?;
//! let nn = bank.k_nearest(array![[3.0f32, 4.0]].view(), 2)?;
//! assert_eq!(nn.indices.row(0).to_vec(), vec![1, 2]);
//! assert_eq!(nn.distances[[0, 0]], 0.0);
//! assert_eq!(nn.distances[[0, 1]], 13.0); // squared L2
//! # Ok::<(), patchcore::Error>(())
//! ```

use ndarray::{Array2, ArrayView1, ArrayView2, Axis};
use rayon::prelude::*;

use crate::kernels::gemm::matmul_bt;
use crate::{Error, Result};

/// Queries per matrix product (fixed: results never depend on the thread count).
const QUERY_BLOCK: usize = 2048;
/// Bank rows per matrix product. `QUERY_BLOCK × BANK_BLOCK × 4` bytes = 16 MiB of distance
/// scratch, whatever the bank size.
const BANK_BLOCK: usize = 2048;

/// The `k` nearest bank rows of every query.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    /// SQUARED Euclidean distances, `[n_queries, k]`, ascending along each row.
    pub distances: Array2<f32>,
    /// Bank row indices matching `distances`, `[n_queries, k]`; ties go to the lower index.
    pub indices: Array2<usize>,
}

impl Neighbours {
    /// Number of queries.
    pub fn n_queries(&self) -> usize {
        self.distances.nrows()
    }

    /// Number of neighbours per query.
    pub fn k(&self) -> usize {
        self.distances.ncols()
    }
}

/// A searchable set of feature rows (linfa-style nearest-neighbour index).
pub trait NearestNeighbours {
    /// The `k` nearest indexed rows of each row of `queries`, with squared L2 distances.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `k` is 0 or larger than [`len`](Self::len);
    /// [`Error::InvalidInput`] if the query width differs from [`dim`](Self::dim) or a query
    /// holds NaN or an infinite value.
    fn k_nearest(&self, queries: ArrayView2<f32>, k: usize) -> Result<Neighbours>;

    /// Number of indexed rows.
    fn len(&self) -> usize;

    /// Width of every indexed row.
    fn dim(&self) -> usize;

    /// Whether the index holds no rows (never true for [`BruteForce`]).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Indexed row `index`, or `None` if out of range.
    fn row(&self, index: usize) -> Option<ArrayView1<'_, f32>>;
}

/// Exact search over a dense memory bank through GEMM.
#[derive(Debug, Clone)]
pub struct BruteForce {
    bank: Array2<f32>,
    norms: Vec<f32>,
}

impl BruteForce {
    /// Index `bank` (`[n_rows, dim]`). Row norms are computed once here.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the bank has no rows, zero width, or holds a non-finite value.
    pub fn new(bank: Array2<f32>) -> Result<Self> {
        if bank.nrows() == 0 || bank.ncols() == 0 {
            return Err(Error::input(format!(
                "memory bank must have at least one row and one column, got shape {:?}",
                bank.shape()
            )));
        }
        let bank = if bank.is_standard_layout() {
            bank
        } else {
            bank.as_standard_layout().into_owned()
        };
        let norms = row_norms_checked(bank.view(), "memory bank")?;
        Ok(Self { bank, norms })
    }

    /// Index a copy of `bank`. See [`BruteForce::new`].
    ///
    /// # Errors
    /// As [`BruteForce::new`].
    pub fn from_view(bank: ArrayView2<f32>) -> Result<Self> {
        Self::new(bank.to_owned())
    }

    /// The indexed bank, `[n_rows, dim]`.
    pub fn bank(&self) -> ArrayView2<'_, f32> {
        self.bank.view()
    }

    /// Give the bank back.
    pub fn into_bank(self) -> Array2<f32> {
        self.bank
    }

    /// Squared L2 norm of every bank row.
    pub fn row_norms(&self) -> &[f32] {
        &self.norms
    }
}

impl NearestNeighbours for BruteForce {
    fn k_nearest(&self, queries: ArrayView2<f32>, k: usize) -> Result<Neighbours> {
        let n = self.bank.nrows();
        let d = self.bank.ncols();
        if k == 0 {
            return Err(Error::param("k", "must be at least 1"));
        }
        if k > n {
            return Err(Error::param(
                "k",
                format!("asked for {k} nearest neighbours but the memory bank has only {n} rows"),
            ));
        }
        if queries.ncols() != d {
            return Err(Error::input(format!(
                "query rows have {} features but the memory bank has {d}",
                queries.ncols()
            )));
        }
        let q_norms = row_norms_checked(queries, "query")?;
        let nq = queries.nrows();
        let queries = queries.as_standard_layout();
        let q = queries
            .as_slice()
            .ok_or_else(|| Error::input("query array is not contiguous"))?;
        let bank = self
            .bank
            .as_slice()
            .ok_or_else(|| Error::input("memory bank is not contiguous"))?;

        let mut distances = vec![0.0f32; nq * k];
        let mut indices = vec![0usize; nq * k];
        let mut dots = Vec::new();
        for ((q_chunk, qn_chunk), (dist_out, idx_out)) in q
            .chunks(QUERY_BLOCK * d)
            .zip(q_norms.chunks(QUERY_BLOCK))
            .zip(
                distances
                    .chunks_mut(QUERY_BLOCK * k)
                    .zip(indices.chunks_mut(QUERY_BLOCK * k)),
            )
        {
            search_chunk(
                q_chunk,
                qn_chunk,
                bank,
                &self.norms,
                d,
                k,
                dist_out,
                idx_out,
                &mut dots,
            );
        }
        let distances = Array2::from_shape_vec((nq, k), distances)
            .map_err(|e| Error::input(format!("internal shape error: {e}")))?;
        let indices = Array2::from_shape_vec((nq, k), indices)
            .map_err(|e| Error::input(format!("internal shape error: {e}")))?;
        Ok(Neighbours { distances, indices })
    }

    fn len(&self) -> usize {
        self.bank.nrows()
    }

    fn dim(&self) -> usize {
        self.bank.ncols()
    }

    fn row(&self, index: usize) -> Option<ArrayView1<'_, f32>> {
        (index < self.bank.nrows()).then(|| self.bank.index_axis(Axis(0), index))
    }
}

/// Top-k search of `m` contiguous queries against the whole bank, one bank block at a time:
/// one (internally parallel) matrix product of all the chunk's queries with the block, then a
/// parallel scan of its rows into each query's top-k.
#[allow(clippy::too_many_arguments)]
fn search_chunk(
    q: &[f32],
    qn: &[f32],
    bank: &[f32],
    bank_norms: &[f32],
    d: usize,
    k: usize,
    dist_out: &mut [f32],
    idx_out: &mut [usize],
    dots: &mut Vec<f32>,
) {
    let n = bank_norms.len();
    let m = qn.len();
    dist_out.fill(f32::INFINITY);
    idx_out.fill(usize::MAX);
    let bb = BANK_BLOCK.min(n);
    dots.resize(m * bb, 0.0);
    let mut b0 = 0;
    while b0 < n {
        let nb = bb.min(n - b0);
        let dots = &mut dots[..m * nb];
        matmul_bt(m, nb, d, q, &bank[b0 * d..(b0 + nb) * d], dots, false);
        let bn = &bank_norms[b0..b0 + nb];
        dots.par_chunks(nb)
            .zip(dist_out.par_chunks_mut(k))
            .zip(idx_out.par_chunks_mut(k))
            .zip(qn.par_iter())
            .for_each(|(((row, top_d), top_i), &qi)| {
                for (j, (&dot, &nj)) in row.iter().zip(bn).enumerate() {
                    let dist = (qi - 2.0 * dot + nj).max(0.0);
                    // Strict `<`: later (higher) bank indices never displace equal distances.
                    if dist < top_d[k - 1] {
                        insert_sorted(top_d, top_i, dist, b0 + j);
                    }
                }
            });
        b0 += nb;
    }
    // Exact refinement of the winners' distances, then re-sort (ties → lower index).
    q.par_chunks(d)
        .zip(dist_out.par_chunks_mut(k))
        .zip(idx_out.par_chunks_mut(k))
        .for_each(|((qi, top_d), top_i)| {
            for (dist, &j) in top_d.iter_mut().zip(top_i.iter()) {
                *dist = squared_distance(qi, &bank[j * d..(j + 1) * d]);
            }
            // Insertion sort by (distance, index): k is small and nothing is allocated.
            for t in 1..top_d.len() {
                let mut u = t;
                while u > 0 && (top_d[u - 1], top_i[u - 1]) > (top_d[u], top_i[u]) {
                    top_d.swap(u - 1, u);
                    top_i.swap(u - 1, u);
                    u -= 1;
                }
            }
        });
}

/// Insert `(dist, idx)` into the ascending arrays, dropping the last element; equal distances
/// keep their existing (lower-index) entries first.
#[inline]
fn insert_sorted(top_d: &mut [f32], top_i: &mut [usize], dist: f32, idx: usize) {
    let mut p = top_d.len() - 1;
    while p > 0 && dist < top_d[p - 1] {
        top_d[p] = top_d[p - 1];
        top_i[p] = top_i[p - 1];
        p -= 1;
    }
    top_d[p] = dist;
    top_i[p] = idx;
}

/// Largest accepted squared row norm: keeps `‖a‖² + 2|a·b| + ‖b‖²` finite in f32.
const MAX_SQUARED_NORM: f64 = (f32::MAX / 8.0) as f64;

/// Squared norm of every row; errors name the first row that is non-finite or too large.
fn row_norms_checked(rows: ArrayView2<f32>, what: &str) -> Result<Vec<f32>> {
    let mut norms = Vec::with_capacity(rows.nrows());
    for (i, row) in rows.rows().into_iter().enumerate() {
        let s = match row.as_slice() {
            Some(s) => squared_norm(s),
            None => row
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>(),
        };
        // f64 cannot overflow on squares of finite f32 values, so NaN/inf here means the row
        // itself holds a NaN or an infinity.
        if !s.is_finite() {
            return Err(Error::input(format!(
                "{what} row {i} holds a NaN or infinite value"
            )));
        }
        if s > MAX_SQUARED_NORM {
            return Err(Error::input(format!(
                "{what} row {i} has squared norm {s:e}, above the supported {MAX_SQUARED_NORM:e}"
            )));
        }
        norms.push(s as f32);
    }
    Ok(norms)
}

/// `Σ v²`, accumulated in f64 for an accurate norm.
fn squared_norm(v: &[f32]) -> f64 {
    let mut acc = [0.0f64; 4];
    let mut chunks = v.chunks_exact(4);
    for c in &mut chunks {
        for t in 0..4 {
            acc[t] += f64::from(c[t]) * f64::from(c[t]);
        }
    }
    let mut s = acc[0] + acc[1] + acc[2] + acc[3];
    for &x in chunks.remainder() {
        s += f64::from(x) * f64::from(x);
    }
    s
}

/// `Σ (a − b)²`, computed directly (no cancellation), accumulated in f64.
pub(crate) fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f64; 4];
    let mut ca = a.chunks_exact(4);
    let mut cb = b.chunks_exact(4);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for t in 0..4 {
            let diff = f64::from(x[t]) - f64::from(y[t]);
            acc[t] += diff * diff;
        }
    }
    let mut s = acc[0] + acc[1] + acc[2] + acc[3];
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        let diff = f64::from(x) - f64::from(y);
        s += diff * diff;
    }
    s as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn insert_keeps_order_and_ties() {
        let mut d = [f32::INFINITY; 3];
        let mut i = [usize::MAX; 3];
        for (idx, dist) in [5.0, 1.0, 3.0, 1.0, 0.5, 3.0].into_iter().enumerate() {
            if dist < d[2] {
                insert_sorted(&mut d, &mut i, dist, idx);
            }
        }
        assert_eq!(d, [0.5, 1.0, 1.0]);
        assert_eq!(i, [4, 1, 3]);
    }

    #[test]
    fn exact_zero_for_identical_rows() {
        let bank = BruteForce::new(array![[1000.0f32, 1e-3, 7.0], [1.0, 2.0, 3.0]]).unwrap();
        let nn = bank
            .k_nearest(array![[1000.0f32, 1e-3, 7.0]].view(), 1)
            .unwrap();
        assert_eq!(nn.indices[[0, 0]], 0);
        assert_eq!(nn.distances[[0, 0]], 0.0);
    }
}
