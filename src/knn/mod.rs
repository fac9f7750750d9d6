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
//! with a rigorous error bound followed by an exact rerank of the few candidates (about twice
//! the product throughput of f32, same results up to ties; see
//! [`BruteForce::with_screening`]).
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

use std::sync::Mutex;

use half::f16;
use half::slice::HalfFloatSliceExt;
use ndarray::{Array2, ArrayView2, CowArray, Ix1, Ix2};
use rayon::prelude::*;

use crate::{Error, Result};

mod screen;
mod search;

use screen::Screen;
pub(crate) use search::squared_distance;
use search::{search_chunk, squared_norm, BankRows, Scratch, QUERY_BLOCK};

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

/// How a [`BruteForce`] index stores its memory bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BankPrecision {
    /// Single precision (4 bytes per value): exact search of the bank as given.
    #[default]
    F32,
    /// Half precision (2 bytes per value, half the memory). Values are rounded to the nearest
    /// f16 when the index is built; the search is then the exact f32 search of the rounded
    /// bank. Values beyond ±65504 do not fit and are refused.
    F16,
}

impl BankPrecision {
    /// Bytes per stored bank value.
    pub fn bytes(self) -> usize {
        match self {
            BankPrecision::F32 => 4,
            BankPrecision::F16 => 2,
        }
    }
}

#[derive(Debug, Clone)]
enum Storage {
    F32(Array2<f32>),
    F16(Array2<f16>),
}

/// Exact search over a dense memory bank through GEMM.
///
/// The index keeps the scratch memory of its last search (at most
/// `min(queries, 2048) × min(rows, 2048)` f32 products, plus one 2048-row f32 block for an
/// f16 bank; with screening, the queries in bf16 and up to `max(64, 8k)` candidates per
/// query) to reuse it; searches may run concurrently (each extra one uses its own).
///
/// On CPUs with AVX512-BF16, f32 banks also keep a bf16 copy for screening (see
/// [`BruteForce::with_screening`]).
#[derive(Debug)]
pub struct BruteForce {
    bank: Storage,
    norms: Vec<f32>,
    /// bf16 screening data (f32 banks on AVX512-BF16 CPUs, unless switched off).
    screen: Option<Screen>,
    /// Scratch of the last search, reused by the next one (saves allocating and faulting in
    /// up to 16 MiB per call); a search running while another holds it uses its own.
    scratch: Mutex<Scratch>,
}

impl Clone for BruteForce {
    fn clone(&self) -> Self {
        Self {
            bank: self.bank.clone(),
            norms: self.norms.clone(),
            screen: self.screen.clone(),
            scratch: Mutex::default(),
        }
    }
}

impl BruteForce {
    /// Index `bank` (`[n_rows, dim]`) in f32. Row norms are computed once here, and on CPUs
    /// with AVX512-BF16 the bf16 screening data (see [`BruteForce::with_screening`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the bank has no rows, zero width, or holds a non-finite value.
    pub fn new(bank: Array2<f32>) -> Result<Self> {
        check_shape(bank.dim())?;
        let bank = if bank.is_standard_layout() {
            bank
        } else {
            bank.as_standard_layout().into_owned()
        };
        let norms = row_norms_checked(bank.view(), "memory bank")?;
        let screen = bank
            .as_slice()
            .and_then(|b| Screen::build(b, bank.nrows(), bank.ncols()));
        Ok(Self {
            bank: Storage::F32(bank),
            norms,
            screen,
            scratch: Mutex::default(),
        })
    }

    /// Index `bank` stored with `precision` ([`BankPrecision::F16`] rounds every value to the
    /// nearest f16).
    ///
    /// # Errors
    /// As [`BruteForce::new`]; with [`BankPrecision::F16`] also [`Error::InvalidInput`] if a
    /// value is beyond the f16 range (±65504).
    pub fn with_precision(bank: Array2<f32>, precision: BankPrecision) -> Result<Self> {
        match precision {
            BankPrecision::F32 => Self::new(bank),
            BankPrecision::F16 => {
                check_shape(bank.dim())?;
                // Non-finite input is reported as such before any rounding.
                row_norms_checked(bank.view(), "memory bank")?;
                Self::from_f16(bank.mapv(f16::from_f32))
            }
        }
    }

    /// Index a bank already stored in f16 (e.g. read from a model file).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the bank has no rows, zero width, or holds a non-finite value
    /// (an f32 value too large for f16 becomes infinite when rounded).
    pub fn from_f16(bank: Array2<f16>) -> Result<Self> {
        check_shape(bank.dim())?;
        let bank = if bank.is_standard_layout() {
            bank
        } else {
            bank.as_standard_layout().into_owned()
        };
        let d = bank.ncols();
        let mut buf = vec![0.0f32; d];
        let mut norms = Vec::with_capacity(bank.nrows());
        for (i, row) in bank.rows().into_iter().enumerate() {
            for (b, &v) in buf.iter_mut().zip(row.iter()) {
                *b = v.to_f32();
            }
            norms.push(check_norm(
                squared_norm(&buf),
                "memory bank",
                i,
                " (f16 holds ±65504 at most)",
            )?);
        }
        Ok(Self {
            bank: Storage::F16(bank),
            norms,
            screen: None,
            scratch: Mutex::default(),
        })
    }

    /// Index a copy of `bank`. See [`BruteForce::new`].
    ///
    /// # Errors
    /// As [`BruteForce::new`].
    pub fn from_view(bank: ArrayView2<f32>) -> Result<Self> {
        Self::new(bank.to_owned())
    }

    /// Switch the bf16 screening pass on (the default where available) or off.
    ///
    /// With screening, every query is first compared with a bf16 copy of the centred bank
    /// (`vdpbf16ps`, twice the f32 product throughput) under a proven error bound, which
    /// leaves a handful of candidates per query; their distances are then computed exactly
    /// from the f32 rows. The k nearest in exact arithmetic are always among the candidates,
    /// so the result is that of the f32 path up to ties within f32 rounding (it is in fact
    /// closer to exact: every candidate's distance is computed directly). Queries with too
    /// many candidates (e.g. many duplicated or equidistant rows) go through the f32 path.
    ///
    /// Screening needs an f32 bank and a CPU with AVX512-F and AVX512-BF16; otherwise (or
    /// when switched off) the search is the f32 GEMM path. It costs `n_rows × dim × 2` bytes
    /// (plus about 50 bytes per row), see [`BruteForce::screening_bytes`]; switching it off
    /// frees them.
    pub fn with_screening(mut self, on: bool) -> Self {
        if !on {
            self.screen = None;
        } else if self.screen.is_none() {
            if let Storage::F32(b) = &self.bank {
                self.screen = b
                    .as_slice()
                    .and_then(|s| Screen::build(s, b.nrows(), b.ncols()));
            }
        }
        self
    }

    /// Whether searches use the bf16 screening pass (see [`BruteForce::with_screening`]).
    pub fn screening(&self) -> bool {
        self.screen.is_some()
    }

    /// Bytes held by the bf16 screening data (0 when screening is off).
    pub fn screening_bytes(&self) -> usize {
        self.screen.as_ref().map_or(0, Screen::bytes)
    }

    /// How the bank is stored.
    pub fn precision(&self) -> BankPrecision {
        match self.bank {
            Storage::F32(_) => BankPrecision::F32,
            Storage::F16(_) => BankPrecision::F16,
        }
    }

    /// The indexed bank as f32, `[n_rows, dim]`: borrowed when stored in f32, converted (a new
    /// array) when stored in f16.
    pub fn bank(&self) -> CowArray<'_, f32, Ix2> {
        match &self.bank {
            Storage::F32(b) => CowArray::from(b.view()),
            Storage::F16(b) => CowArray::from(f16_to_f32(b)),
        }
    }

    /// The bank as stored, if stored in f32.
    pub fn bank_f32(&self) -> Option<ArrayView2<'_, f32>> {
        match &self.bank {
            Storage::F32(b) => Some(b.view()),
            Storage::F16(_) => None,
        }
    }

    /// The bank as stored, if stored in f16.
    pub fn bank_f16(&self) -> Option<ArrayView2<'_, f16>> {
        match &self.bank {
            Storage::F16(b) => Some(b.view()),
            Storage::F32(_) => None,
        }
    }

    /// Give the bank back as f32 (converted when stored in f16).
    pub fn into_bank(self) -> Array2<f32> {
        match self.bank {
            Storage::F32(b) => b,
            Storage::F16(b) => f16_to_f32(&b),
        }
    }

    /// Squared L2 norm of every bank row (of the stored, possibly f16-rounded, values).
    pub fn row_norms(&self) -> &[f32] {
        &self.norms
    }

    /// Bytes held by the stored bank values.
    pub fn bank_bytes(&self) -> usize {
        self.len() * self.dim() * self.precision().bytes()
    }

    fn rows(&self) -> Result<BankRows<'_>> {
        let bad = || Error::input("memory bank is not contiguous");
        Ok(match &self.bank {
            Storage::F32(b) => BankRows::F32(b.as_slice().ok_or_else(bad)?),
            Storage::F16(b) => BankRows::F16(b.as_slice().ok_or_else(bad)?),
        })
    }
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

fn check_shape((rows, cols): (usize, usize)) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Err(Error::input(format!(
            "memory bank must have at least one row and one column, got shape [{rows}, {cols}]"
        )));
    }
    Ok(())
}

/// Standard-layout f32 copy of an f16 array.
fn f16_to_f32(b: &Array2<f16>) -> Array2<f32> {
    let b = b.as_standard_layout();
    match b.as_slice() {
        Some(s) => {
            let mut out = vec![0.0f32; s.len()];
            s.convert_to_f32_slice(&mut out);
            Array2::from_shape_vec(b.dim(), out).unwrap_or_else(|_| b.mapv(f16::to_f32))
        }
        None => b.mapv(f16::to_f32),
    }
}

/// Largest accepted squared row norm: keeps `‖a‖² + 2|a·b| + ‖b‖²` finite in f32.
const MAX_SQUARED_NORM: f64 = (f32::MAX / 8.0) as f64;

/// Checks one f64 squared row norm; errors name the row.
fn check_norm(s: f64, what: &str, i: usize, hint: &str) -> Result<f32> {
    // f64 cannot overflow on squares of finite f32 values, so NaN/inf here means the row
    // itself holds a NaN or an infinity.
    if !s.is_finite() {
        return Err(Error::input(format!(
            "{what} row {i} holds a NaN or infinite value{hint}"
        )));
    }
    if s > MAX_SQUARED_NORM {
        return Err(Error::input(format!(
            "{what} row {i} has squared norm {s:e}, above the supported {MAX_SQUARED_NORM:e}"
        )));
    }
    Ok(s as f32)
}

/// Squared norm of every row; errors name the first row that is non-finite or too large.
fn row_norms_checked(rows: ArrayView2<f32>, what: &str) -> Result<Vec<f32>> {
    // Norms in parallel, checks in row order (the error names the first bad row).
    let norms: Vec<f64> = (0..rows.nrows())
        .into_par_iter()
        .map(|i| rows.row(i))
        .map(|row| match row.as_slice() {
            Some(s) => squared_norm(s),
            None => squared_norm(&row.to_vec()),
        })
        .collect();
    norms
        .into_iter()
        .enumerate()
        .map(|(i, s)| check_norm(s, what, i, ""))
        .collect()
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
