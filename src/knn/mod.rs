//! Exact k-nearest-neighbour search of patch features against a memory bank.
//!
//! [`BruteForce`] computes squared Euclidean distances with the GEMM identity
//! `‖a − b‖² = ‖a‖² − 2·a·b + ‖b‖²` (clamped at 0), the same arithmetic as faiss
//! `IndexFlatL2`, with every inner product going through
//! [`crate::kernels::gemm::matmul_bt`]. The work is cut into fixed-size blocks of queries and of
//! bank rows so the scratch memory stays bounded for any bank size; each block product runs on
//! the current rayon pool, followed by a parallel top-k scan split over groups of queries. Block sizes never depend on the number of threads, so the
//! result is the same for every pool size.
//!
//! The bank can be stored in f16 ([`BankPrecision::F16`], half the memory): blocks of rows are
//! then converted to f32 scratch for the products, and the result is the exact f32 search of
//! the f16-rounded bank.
//!
//! On CPUs with AVX512-BF16 an f32 bank is searched by default through a bf16 *screening* pass
//! with a rigorous error bound followed by an exact rerank of the few candidates (same results
//! up to ties; see [`BruteForce::with_screening`]). Its products run on AMX tiles where the CPU
//! has AMX-BF16 (Xeon Sapphire Rapids and later: 4–8× faster than the f32 GEMM path), else on
//! `vdpbf16ps` (about twice the f32 throughput).
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

use half::f16;
use ndarray::{Array2, ArrayView2, CowArray, Ix1};
use rayon::prelude::*;

use crate::{Error, Result};

mod bank;
mod screen;
mod search;

use bank::{row_norms_checked, Storage};
pub use bank::{BankPrecision, BruteForce};
use screen::Screen;
pub(crate) use search::squared_distance;
use search::{search_chunk, BankRows, Scratch, QUERY_BLOCK};

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

    /// Indexed row `index` as f32 (borrowed, or converted from a reduced-precision store), or
    /// `None` if out of range.
    fn row(&self, index: usize) -> Option<CowArray<'_, f32, Ix1>>;
}

impl NearestNeighbours for BruteForce {
    fn k_nearest(&self, queries: ArrayView2<f32>, k: usize) -> Result<Neighbours> {
        let n = self.len();
        let d = self.dim();
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
        let bank = self.rows()?;

        let mut distances = vec![0.0f32; nq * k];
        let mut indices = vec![0usize; nq * k];
        // Reuse the index's scratch when free (a poisoned lock only means a panic elsewhere
        // left it; its content is overwritten anyway).
        let mut guard = match self.scratch.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        let mut own = Scratch::default();
        let scratch: &mut Scratch = match guard.as_deref_mut() {
            Some(s) => s,
            None => &mut own,
        };
        let max_q = q_norms.iter().fold(0.0f64, |m, &v| m.max(f64::from(v)));
        match (&self.screen, bank) {
            (Some(screen), BankRows::F32(b)) if nq > 0 && screen.usable_for(max_q) => {
                let cap = screen::default_cap(k);
                self.search_screened(
                    screen,
                    b,
                    q,
                    &q_norms,
                    k,
                    cap,
                    &mut distances,
                    &mut indices,
                    scratch,
                );
            }
            _ => search_exact(
                q,
                &q_norms,
                bank,
                &self.norms,
                d,
                k,
                &mut distances,
                &mut indices,
                scratch,
            ),
        }
        let distances = Array2::from_shape_vec((nq, k), distances)
            .map_err(|e| Error::input(format!("internal shape error: {e}")))?;
        let indices = Array2::from_shape_vec((nq, k), indices)
            .map_err(|e| Error::input(format!("internal shape error: {e}")))?;
        Ok(Neighbours { distances, indices })
    }

    fn len(&self) -> usize {
        self.norms.len()
    }

    fn dim(&self) -> usize {
        match &self.bank {
            Storage::F32(b) => b.ncols(),
            Storage::F16(b) => b.ncols(),
        }
    }

    fn row(&self, index: usize) -> Option<CowArray<'_, f32, Ix1>> {
        if index >= self.len() {
            return None;
        }
        Some(match &self.bank {
            Storage::F32(b) => CowArray::from(b.row(index)),
            Storage::F16(b) => CowArray::from(b.row(index).mapv(f16::to_f32)),
        })
    }
}

impl BruteForce {
    /// Screened search (see [`screen`]); queries with too many candidates are searched by
    /// the f32 path afterwards.
    #[allow(clippy::too_many_arguments)]
    fn search_screened(
        &self,
        screen: &Screen,
        bank: &[f32],
        q: &[f32],
        q_norms: &[f32],
        k: usize,
        cap: usize,
        distances: &mut [f32],
        indices: &mut [usize],
        scratch: &mut Scratch,
    ) {
        let d = self.dim();
        let nq = q_norms.len();
        let chunk = Screen::chunk_rows(nq);
        let chunks = nq.div_ceil(chunk);
        if scratch.screen.len() < chunks {
            scratch.screen.resize_with(chunks, Default::default);
        }
        if scratch.fallback.len() < chunks {
            scratch.fallback.resize_with(chunks, Vec::new);
        }
        q.par_chunks(chunk * d)
            .zip(distances.par_chunks_mut(chunk * k))
            .zip(indices.par_chunks_mut(chunk * k))
            .zip(scratch.screen.par_iter_mut())
            .zip(scratch.fallback.par_iter_mut())
            .for_each(|((((qc, dc), ic), st), fb)| {
                fb.clear();
                screen::search_chunk(screen, bank, qc, k, cap, dc, ic, st, fb);
            });
        let fallback: Vec<usize> = scratch.fallback[..chunks]
            .iter()
            .enumerate()
            .flat_map(|(c, fb)| fb.iter().map(move |&i| c * chunk + i))
            .collect();
        if fallback.is_empty() {
            return;
        }
        if fallback.len() == nq {
            // Every query fell back (e.g. a bank of identical rows): no gather needed.
            search_exact(
                q,
                q_norms,
                BankRows::F32(bank),
                &self.norms,
                d,
                k,
                distances,
                indices,
                scratch,
            );
            return;
        }
        let mut fq = Vec::with_capacity(fallback.len() * d);
        let mut fqn = Vec::with_capacity(fallback.len());
        for &i in &fallback {
            fq.extend_from_slice(&q[i * d..(i + 1) * d]);
            fqn.push(q_norms[i]);
        }
        let mut fd = vec![0.0f32; fallback.len() * k];
        let mut fi = vec![0usize; fallback.len() * k];
        search_exact(
            &fq,
            &fqn,
            BankRows::F32(bank),
            &self.norms,
            d,
            k,
            &mut fd,
            &mut fi,
            scratch,
        );
        for (t, &i) in fallback.iter().enumerate() {
            distances[i * k..(i + 1) * k].copy_from_slice(&fd[t * k..(t + 1) * k]);
            indices[i * k..(i + 1) * k].copy_from_slice(&fi[t * k..(t + 1) * k]);
        }
    }
}

/// The f32 GEMM search of all queries `q` (`q_norms.len()` rows), one query block at a time.
#[allow(clippy::too_many_arguments)]
fn search_exact(
    q: &[f32],
    q_norms: &[f32],
    bank: BankRows<'_>,
    bank_norms: &[f32],
    d: usize,
    k: usize,
    distances: &mut [f32],
    indices: &mut [usize],
    scratch: &mut Scratch,
) {
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
            q_chunk, qn_chunk, bank, bank_norms, d, k, dist_out, idx_out, scratch,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::search::insert_sorted;
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
