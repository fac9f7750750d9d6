//! bf16 screening with a rigorous error bound, followed by an exact rerank (AVX512-BF16 CPUs).
//!
//! # Method
//! With `μ` the bank's column mean (f64), every bank row `b` and query `a` is centred in f64,
//! `c = x − μ`, and rounded to bf16, `ĉ` (round to nearest even; values that would be bf16
//! subnormals are flushed to ±0 here, so the hardware's denormals-are-zero never changes an
//! input). Per row we keep `n = ‖ĉ‖²`, `‖ĉ‖` and `ε ≥ ‖(x − μ) − ĉ‖`.
//!
//! **Centring.** `c̃ = fl₆₄(x − μ)` differs from the exact `x − μ` by at most `2⁻⁵³|x − μ|`
//! per element, so `‖(x − μ) − ĉ‖ ≤ ‖c̃ − ĉ‖ + 2⁻⁵²‖c̃‖`; `ε` stores that sum, computed in
//! f64 (relative rounding error ≤ 1024·2⁻⁵³ for the norms) and inflated by `1 + 10⁻¹²`.
//! Since `‖a − b‖ = ‖(a − μ) − (b − μ)‖` exactly, the triangle inequality gives
//! `|‖a − b‖ − ‖â − b̂‖| ≤ ε_a + ε_b`.
//!
//! **Products.** `vdpbf16ps` adds the two exact bf16 products of each pair into the f32
//! accumulator with round-to-nearest-even and flush-to-zero (Intel SDM: two additions per
//! pair). Over `K` elements (`K` = padded width) that is at most `K` rounded additions in a
//! recursive sum, hence (Higham, Thm 3.1, plus one absolute error below 2⁻¹²⁶ per flushed
//! operation, at most 2 per element)
//! `|S − â·b̂| ≤ γ_K Σ|âᵢb̂ᵢ| + 2K·2⁻¹²⁶ ≤ γ_K‖â‖‖b̂‖ + 2K·2⁻¹²⁶`, `γ_K = Ku/(1 − Ku)`,
//! `u = 2⁻²⁴` (Cauchy–Schwarz for the last step). Because the exact internal order of the
//! pair sum on a given CPU is not documented, both terms are doubled:
//! `E = 2γ_K(1 + 10⁻⁹)‖â‖‖b̂‖ + 4K·2⁻¹²⁶`. No partial sum can overflow: screening is only
//! used while `max‖â‖·max‖b̂‖ ≤ 2¹⁰⁰`.
//!
//! **Interval.** `D = ‖â‖² + ‖b̂‖² − 2S` (f64) satisfies `|D − ‖â − b̂‖²| ≤ δ` with
//! `δ = 2E + 10⁻¹²(‖â‖² + ‖b̂‖² + 2|S|)` (the last term covers the f64 rounding of the norms
//! and of `D`). Hence the true distance lies in `[L, U]` with
//! `L = √max(0, D − δ)·(1 − 10⁻¹²) − ε_a − ε_b` and `U = √(D + δ)·(1 + 10⁻¹²) + ε_a + ε_b`
//! (the factors absorb the f64 rounding of the square roots and sums).
//!
//! **Selection.** Per query, `τ` is the k-th smallest `U` seen so far; a row is kept as a
//! candidate when `L ≤ τ` (τ only decreases, candidates are filtered again with the final τ).
//! The `k` rows defining the final τ have true distances ≤ τ, so every row whose true distance
//! is at most the true k-th distance has `L ≤ τ`: the exact k nearest (with all exact ties)
//! are among the candidates. Their distances are then computed directly from the original f32
//! rows (`Σ (a − b)²`, as the f32 path's final recompute) and the k smallest are kept, ties to
//! the lower index. A query with more than `cap` candidates (duplicated or equidistant rows)
//! goes to the f32 GEMM path instead.
//!
//! A cheap f32 prefilter ([`prefilter_reference`], vectorised in the kernel) runs on every
//! product first; it is looser than the f64 test above by a relative margin of 10⁻⁶ (about 17
//! times the f32 rounding error of its few operations), so it never drops a candidate; only
//! rows passing it get the exact f64 test.

use half::bf16;
use rayon::prelude::*;

use super::search::{insert_sorted, squared_distance};

#[cfg(target_arch = "x86_64")]
mod kernel;
#[cfg(test)]
mod tests;

/// Bank rows per micro-kernel panel (two 16-lane vectors).
pub(super) const PANEL: usize = 32;
/// Queries per micro-kernel tile.
pub(super) const QGROUP: usize = 8;
/// Bank rows per cache block (256 rows × 1024 dims × 2 bytes = 512 KiB, fits L2).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const BANK_BLOCK: usize = 256;
/// Largest query chunk per task.
const MAX_CHUNK: usize = 256;
/// Relative slack of the f32 prefilter.
const PREFILTER_SLACK: f64 = 1e-6;
/// Largest `max‖â‖·max‖b̂‖` for which the f32 accumulation cannot overflow.
const MAX_NORM_PRODUCT: f64 = 1.2676506002282294e30; // 2^100

/// Norms and rounding error of one centred, bf16-rounded row.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct RowMeta {
    /// `‖ĉ‖²`.
    pub sq: f64,
    /// `‖ĉ‖`.
    pub norm: f64,
    /// Upper bound of `‖(x − μ) − ĉ‖`.
    pub eps: f64,
}

/// f32 copies of the bank rows' [`RowMeta`] of one panel, for the vectorised prefilter.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) struct PanelMeta {
    pub sq: [f32; PANEL],
    pub norm: [f32; PANEL],
    pub eps: [f32; PANEL],
}

/// Coefficients of the product error bound `E = rel·‖â‖‖b̂‖ + abs`.
#[derive(Debug, Clone, Copy)]
pub(super) struct BoundCoef {
    pub rel: f64,
    pub abs: f64,
}

impl BoundCoef {
    /// Bound for `k_elems` accumulated elements (`None` if `k_elems·u ≥ 1/2`).
    pub(super) fn new(k_elems: usize) -> Option<Self> {
        let u = 2f64.powi(-24);
        let ku = k_elems as f64 * u;
        if ku >= 0.5 {
            return None;
        }
        let gamma = ku / (1.0 - ku);
        Some(Self {
            rel: 2.0 * gamma * (1.0 + 1e-9),
            abs: 4.0 * k_elems as f64 * 2f64.powi(-126),
        })
    }

    /// `[L, U]` enclosing the true distance `‖a − b‖` (not squared) from the screening product
    /// `s` of the two rows (see the module documentation).
    #[inline]
    pub(super) fn interval(&self, s: f32, a: &RowMeta, b: &RowMeta) -> (f64, f64) {
        let s = f64::from(s);
        let e = self.rel * a.norm * b.norm + self.abs;
        let d = a.sq + b.sq - 2.0 * s;
        let delta = 2.0 * e + 1e-12 * (a.sq + b.sq + 2.0 * s.abs());
        let eps = a.eps + b.eps;
        let lo = (d - delta).max(0.0).sqrt() * (1.0 - 1e-12) - eps;
        let hi = (d + delta).max(0.0).sqrt() * (1.0 + 1e-12) + eps;
        (lo, hi)
    }

    /// `(c1, c2)` of the f32 prefilter margin `c1·(‖â‖ + ‖b̂‖)² + c2`.
    fn prefilter_coefs(&self) -> (f32, f32) {
        (
            (self.rel + 4e-12 + PREFILTER_SLACK) as f32,
            (4.0 * self.abs + 1e-30) as f32,
        )
    }
}

/// Scalar form of the prefilter: `true` when `[L, U]` of the pair may satisfy `L ≤ τ`.
///
/// `L ≤ τ` implies `D − δ ≤ (τ + ε_a + ε_b)²(1 + 3·10⁻¹²)`, and `δ ≤ (rel + 4·10⁻¹²)(‖â‖ +
/// ‖b̂‖)² + 4·abs` (as `2‖â‖‖b̂‖ ≤ (‖â‖ + ‖b̂‖)²` and `|S| ≤ (1 + γ)‖â‖‖b̂‖ + abs`). The test
/// below is that inequality with `τ + ε_a` inflated by `1 + 10⁻⁶` and `10⁻⁶(‖â‖ + ‖b̂‖)²`
/// added, which exceeds the f32 rounding of `D` (≤ 3u(‖â‖² + ‖b̂‖² + 2|S|)) and of the
/// right-hand side.
pub(super) fn prefilter_reference(
    s: f32,
    a: &RowMeta,
    b: &RowMeta,
    tau: f64,
    coef: &BoundCoef,
) -> bool {
    let (c1, c2) = coef.prefilter_coefs();
    let t1 = ((tau + a.eps) * (1.0 + PREFILTER_SLACK)) as f32;
    let d = (a.sq as f32 + b.sq as f32) + -2.0 * s;
    let t = t1 + b.eps as f32;
    let m = a.norm as f32 + b.norm as f32;
    d <= t * t + (m * m * c1 + c2)
}

/// bf16 bit pattern of the finite f32 `x`, rounded to nearest even, with results that would
/// be bf16 subnormals flushed to ±0 (exactly what `vdpbf16ps` then reads).
#[inline(always)]
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let r = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    if r & 0x7f80 == 0 {
        r & 0x8000
    } else {
        r
    }
}

/// Rounds `c` to bf16 (nearest even, after rounding to f32), flushing bf16 subnormals to ±0.
#[cfg(test)]
pub(super) fn to_bf16(c: f64) -> u16 {
    bf16_bits(c as f32)
}

/// Centres `x` by `mu`, rounds it to bf16 into `out` and returns its [`RowMeta`]. Eight
/// fixed accumulation lanes: the result does not depend on how the loop is vectorised.
#[inline(always)]
fn round_row_lanes(x: &[f32], mu: &[f64], out: &mut [u16]) -> RowMeta {
    const L: usize = 8;
    let (mut sq, mut err, mut cn) = ([0.0f64; L], [0.0f64; L], [0.0f64; L]);
    let mut one = |l: usize, v: f32, m: f64, o: &mut u16| {
        let c = f64::from(v) - m;
        let h = bf16_bits(c as f32);
        *o = h;
        let hv = f64::from(f32::from_bits(u32::from(h) << 16));
        sq[l] += hv * hv;
        err[l] += (c - hv) * (c - hv);
        cn[l] += c * c;
    };
    let n = x.len().min(mu.len()).min(out.len());
    let body = n - n % L;
    for ((xs, ms), os) in x[..body]
        .chunks_exact(L)
        .zip(mu[..body].chunks_exact(L))
        .zip(out[..body].chunks_exact_mut(L))
    {
        for l in 0..L {
            one(l, xs[l], ms[l], &mut os[l]);
        }
    }
    for e in body..n {
        one(e - body, x[e], mu[e], &mut out[e]);
    }
    let total = |a: [f64; L]| a.iter().sum::<f64>();
    let (sq, err, cn) = (total(sq), total(err), total(cn));
    RowMeta {
        sq,
        norm: sq.sqrt(),
        eps: (err.sqrt() + cn.sqrt() * 2f64.powi(-52)) * (1.0 + 1e-12),
    }
}

/// [`round_row_lanes`] compiled for AVX-512 (same results, vectorised).
///
/// # Safety
/// The CPU must support `avx512f`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn round_row_avx512(x: &[f32], mu: &[f64], out: &mut [u16]) -> RowMeta {
    round_row_lanes(x, mu, out)
}

/// Centres `x` by `mu`, rounds it to bf16 into `out` (contiguous) and returns its
/// [`RowMeta`] (see the module documentation for `ε`).
pub(super) fn round_row(x: &[f32], mu: &[f64], out: &mut [u16]) -> RowMeta {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: avx512f was just detected on this CPU.
            return unsafe { round_row_avx512(x, mu, out) };
        }
    }
    round_row_lanes(x, mu, out)
}

/// The bank's screening data: centred bf16 rows packed in panels, with their norms.
#[derive(Debug, Clone)]
pub(super) struct Screen {
    /// Column mean of the bank.
    mu: Vec<f64>,
    /// Row width.
    d: usize,
    /// Pair steps per row, `⌈d / 2⌉`.
    k2: usize,
    /// Bank rows.
    n: usize,
    /// `⌈n / 32⌉` panels of `k2 × 32 × 2` bf16 bit patterns.
    packed: Vec<u16>,
    /// Per bank row (padded to whole panels with zeros).
    meta: Vec<RowMeta>,
    /// f32 copies of `meta`, per panel.
    panel_meta: Vec<PanelMeta>,
    /// Largest `‖b̂‖`.
    max_norm: f64,
    coef: BoundCoef,
}

impl Screen {
    /// Screening data of the contiguous `n × d` f32 bank, or `None` if the CPU lacks
    /// AVX512-BF16 or the width is too large for the bound.
    pub(super) fn build(bank: &[f32], n: usize, d: usize) -> Option<Self> {
        if !available() || n == 0 || d == 0 || bank.len() != n * d {
            return None;
        }
        Self::build_unchecked(bank, n, d)
    }

    /// As [`Screen::build`] without the CPU check (the data is also usable by the scalar
    /// reference in tests).
    pub(super) fn build_unchecked(bank: &[f32], n: usize, d: usize) -> Option<Self> {
        let k2 = d.div_ceil(2);
        let coef = BoundCoef::new(2 * k2)?;
        // Column sums of fixed 256-row blocks, added in block order (thread-independent).
        let partial: Vec<Vec<f64>> = bank
            .par_chunks(256 * d)
            .map(|blk| {
                let mut acc = vec![0.0f64; d];
                for row in blk.chunks_exact(d) {
                    for (m, &v) in acc.iter_mut().zip(row) {
                        *m += f64::from(v);
                    }
                }
                acc
            })
            .collect();
        let mut mu = vec![0.0f64; d];
        for acc in &partial {
            for (m, &a) in mu.iter_mut().zip(acc) {
                *m += a;
            }
        }
        for m in &mut mu {
            *m /= n as f64;
        }
        let panels = n.div_ceil(PANEL);
        let mut packed = vec![0u16; panels * k2 * 2 * PANEL];
        let mut meta = vec![RowMeta::default(); panels * PANEL];
        packed
            .par_chunks_mut(k2 * 2 * PANEL)
            .zip(meta.par_chunks_mut(PANEL))
            .enumerate()
            .for_each_init(
                || vec![0u16; d],
                |row, (p, (dst, pm))| {
                    for (l, m) in pm.iter_mut().enumerate() {
                        let r = p * PANEL + l;
                        if r >= n {
                            break;
                        }
                        *m = round_row(&bank[r * d..(r + 1) * d], &mu, row);
                        for (e, &h) in row.iter().enumerate() {
                            dst[((e / 2) * PANEL + l) * 2 + e % 2] = h;
                        }
                    }
                },
            );
        let up = |v: f64| (v * (1.0 + PREFILTER_SLACK)) as f32;
        let panel_meta = meta
            .chunks_exact(PANEL)
            .map(|pm| PanelMeta {
                sq: std::array::from_fn(|l| pm[l].sq as f32),
                norm: std::array::from_fn(|l| up(pm[l].norm)),
                eps: std::array::from_fn(|l| up(pm[l].eps)),
            })
            .collect();
        let max_norm = meta.iter().fold(0.0f64, |m, r| m.max(r.norm));
        Some(Self {
            mu,
            d,
            k2,
            n,
            packed,
            meta,
            panel_meta,
            max_norm,
            coef,
        })
    }

    /// Extra bytes held by the screening data.
    pub(super) fn bytes(&self) -> usize {
        self.packed.len() * 2
            + self.meta.len() * std::mem::size_of::<RowMeta>()
            + self.panel_meta.len() * std::mem::size_of::<PanelMeta>()
            + self.mu.len() * 8
    }

    /// Whether screening is safe for queries whose squared f32 norms are at most
    /// `max_query_sq` (keeps every f32 partial sum far from overflow).
    pub(super) fn usable_for(&self, max_query_sq: f64) -> bool {
        let mu_norm = self.mu.iter().map(|m| m * m).sum::<f64>().sqrt();
        // ‖â‖ ≤ (‖a‖ + ‖μ‖)(1 + 2⁻⁸) + tiny.
        let qa = (max_query_sq.sqrt() + mu_norm) * 1.01 + 1.0;
        qa * self.max_norm <= MAX_NORM_PRODUCT
    }

    /// Number of query rows per task for `nq` queries: about a quarter of them (each task
    /// streams the whole bf16 bank once, so fewer, larger tasks read less memory; 784 × 16,384
    /// on 2 cores: 8 tasks 68 ms, 4 tasks 64 ms, 2 tasks 62 ms), a multiple of [`QGROUP`], at
    /// most 256, and independent of the thread count.
    pub(super) fn chunk_rows(nq: usize) -> usize {
        nq.div_ceil(4)
            .next_multiple_of(QGROUP)
            .clamp(QGROUP, MAX_CHUNK)
    }
}

/// Whether this CPU runs the screening kernel.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Candidate buffer size per query.
pub(super) fn default_cap(k: usize) -> usize {
    (8 * k).max(64)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Status {
    /// Padding slot of the last query group.
    #[default]
    Pad,
    /// Being screened.
    Active,
    /// Too many candidates: searched by the f32 path.
    Fallback,
}

/// Scratch of one query chunk, reused between searches.
#[derive(Debug, Default)]
pub(super) struct ChunkState {
    /// Packed bf16 query pairs, `[groups][k2][QGROUP]`.
    qpack: Vec<u32>,
    meta: Vec<RowMeta>,
    status: Vec<Status>,
    /// Ascending k smallest upper bounds per query.
    top_u: Vec<f64>,
    cand_idx: Vec<u32>,
    cand_lo: Vec<f64>,
    cand_n: Vec<usize>,
    /// One query's bf16 bits (padded to an even width).
    row: Vec<u16>,
}

impl ChunkState {
    /// Per-query view of query `i` (local index) into the chunk state.
    fn query(&mut self, i: usize, k: usize, cap: usize) -> QueryState<'_> {
        QueryState {
            top_u: &mut self.top_u[i * k..(i + 1) * k],
            idx: &mut self.cand_idx[i * cap..(i + 1) * cap],
            lo: &mut self.cand_lo[i * cap..(i + 1) * cap],
            n: &mut self.cand_n[i],
            status: &mut self.status[i],
        }
    }
}

/// Per-query screening state borrowed from a [`ChunkState`].
struct QueryState<'a> {
    top_u: &'a mut [f64],
    idx: &'a mut [u32],
    lo: &'a mut [f64],
    n: &'a mut usize,
    status: &'a mut Status,
}

impl QueryState<'_> {
    /// Feeds bank row `r` (metadata `b`) with screening product `s` against this query
    /// (metadata `a`); `false` when the candidate buffer overflowed, and the query is then
    /// marked for the f32 fallback.
    #[inline]
    fn offer(&mut self, coef: &BoundCoef, s: f32, a: &RowMeta, b: &RowMeta, r: usize) -> bool {
        let (lo, hi) = coef.interval(s, a, b);
        if self.consider(lo, hi, r as u32) {
            return true;
        }
        *self.status = Status::Fallback;
        false
    }

    /// Feeds the pair interval `[lo, hi]` of bank row `row`; `false` when the candidate buffer
    /// overflowed (the query must fall back).
    #[inline]
    fn consider(&mut self, lo: f64, hi: f64, row: u32) -> bool {
        let k = self.top_u.len();
        if lo > self.top_u[k - 1] {
            return true;
        }
        if hi < self.top_u[k - 1] {
            let mut p = k - 1;
            while p > 0 && hi < self.top_u[p - 1] {
                self.top_u[p] = self.top_u[p - 1];
                p -= 1;
            }
            self.top_u[p] = hi;
        }
        let tau = self.top_u[k - 1];
        let cap = self.idx.len();
        if *self.n == cap {
            let mut w = 0;
            for r in 0..cap {
                if self.lo[r] <= tau {
                    self.lo[w] = self.lo[r];
                    self.idx[w] = self.idx[r];
                    w += 1;
                }
            }
            *self.n = w;
            if w == cap {
                return false;
            }
        }
        self.lo[*self.n] = lo;
        self.idx[*self.n] = row;
        *self.n += 1;
        true
    }
}

/// Screened search of one chunk of `q.len() / d` queries: writes the k nearest of every
/// query into `dist_out`/`idx_out` (sorted, ties → lower index) and returns in `fallback`
/// (local indices) the queries that must be searched by the f32 path instead.
#[allow(clippy::too_many_arguments)]
pub(super) fn search_chunk(
    screen: &Screen,
    bank: &[f32],
    q: &[f32],
    k: usize,
    cap: usize,
    dist_out: &mut [f32],
    idx_out: &mut [usize],
    st: &mut ChunkState,
    fallback: &mut Vec<usize>,
) {
    let d = screen.d;
    let k2 = screen.k2;
    let cq = q.len() / d;
    let groups = cq.div_ceil(QGROUP);
    let slots = groups * QGROUP;
    st.qpack.clear();
    st.qpack.resize(groups * k2 * QGROUP, 0);
    st.meta.clear();
    st.meta.resize(slots, RowMeta::default());
    st.status.clear();
    st.status.resize(slots, Status::Pad);
    st.top_u.clear();
    st.top_u.resize(slots * k, f64::INFINITY);
    st.cand_idx.resize(slots * cap, 0);
    st.cand_lo.resize(slots * cap, 0.0);
    st.cand_n.clear();
    st.cand_n.resize(slots, 0);
    st.row.resize(2 * k2, 0);
    for (i, qi) in q.chunks_exact(d).enumerate() {
        let (g, j) = (i / QGROUP, i % QGROUP);
        let base = g * k2 * QGROUP + j;
        st.row.fill(0);
        st.meta[i] = round_row(qi, &screen.mu, &mut st.row);
        for (t, pair) in st.row.chunks_exact(2).enumerate() {
            st.qpack[base + t * QGROUP] = u32::from(pair[0]) | (u32::from(pair[1]) << 16);
        }
        st.status[i] = Status::Active;
    }
    screen_chunk(screen, k, cap, groups, st);
    // Rerank the candidates of every screened query.
    for (i, qi) in q.chunks_exact(d).enumerate() {
        if st.status[i] != Status::Active {
            fallback.push(i);
            continue;
        }
        let tau = st.top_u[i * k + k - 1];
        let (td, ti) = (
            &mut dist_out[i * k..(i + 1) * k],
            &mut idx_out[i * k..(i + 1) * k],
        );
        td.fill(f32::INFINITY);
        ti.fill(usize::MAX);
        let nc = st.cand_n[i];
        for (&j, &lo) in st.cand_idx[i * cap..i * cap + nc]
            .iter()
            .zip(&st.cand_lo[i * cap..i * cap + nc])
        {
            if lo <= tau {
                let j = j as usize;
                let dist = squared_distance(qi, &bank[j * d..(j + 1) * d]);
                // Candidates come in increasing row order: strict `<` keeps ties lower.
                if dist < td[k - 1] {
                    insert_sorted(td, ti, dist, j);
                }
            }
        }
        if ti[k - 1] == usize::MAX {
            // Cannot happen by the bound; kept as a safety net.
            fallback.push(i);
        }
    }
}

/// The screening loop of one chunk: bank blocks × query groups × panels.
fn screen_chunk(screen: &Screen, k: usize, cap: usize, groups: usize, st: &mut ChunkState) {
    #[cfg(target_arch = "x86_64")]
    {
        if available() {
            // SAFETY: `available()` checked avx512f and avx512bf16 on this CPU.
            unsafe { screen_chunk_avx512(screen, k, cap, groups, st) };
            return;
        }
    }
    screen_chunk_scalar(screen, k, cap, groups, st);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn screen_chunk_avx512(
    screen: &Screen,
    k: usize,
    cap: usize,
    groups: usize,
    st: &mut ChunkState,
) {
    use kernel::{dots_panel, prefilter_mask, QueryScalars};
    let k2 = screen.k2;
    let n = screen.n;
    let panels = n.div_ceil(PANEL);
    let panel_len = k2 * 2 * PANEL;
    let (c1, c2) = screen.coef.prefilter_coefs();
    let mut dots = [[0.0f32; PANEL]; QGROUP];
    let mut active = st.status.iter().filter(|&&s| s == Status::Active).count();
    let block_panels = BANK_BLOCK / PANEL;
    let mut p0 = 0;
    while p0 < panels && active > 0 {
        let p1 = (p0 + block_panels).min(panels);
        for g in 0..groups {
            let gs = g * QGROUP;
            if st.status[gs..gs + QGROUP]
                .iter()
                .all(|&s| s != Status::Active)
            {
                continue;
            }
            for p in p0..p1 {
                let panel = &screen.packed[p * panel_len..(p + 1) * panel_len];
                // (Sliced per panel: the borrow must end before `st.query` below.)
                let qg = &st.qpack[g * k2 * QGROUP..(g + 1) * k2 * QGROUP];
                // SAFETY: the caller guarantees avx512f + avx512bf16 (this function's
                // target features); the slices have the lengths `dots_panel` asserts.
                unsafe { dots_panel(panel, qg, k2, &mut dots) };
                let pm = &screen.panel_meta[p];
                let rows = (n - p * PANEL).min(PANEL);
                let valid = if rows == PANEL {
                    u32::MAX
                } else {
                    (1u32 << rows) - 1
                };
                for (j, s) in dots.iter().enumerate() {
                    let i = gs + j;
                    if st.status[i] != Status::Active {
                        continue;
                    }
                    let qm = st.meta[i];
                    let tau = st.top_u[i * k + k - 1];
                    let qs = QueryScalars {
                        na: qm.sq as f32,
                        an: qm.norm as f32,
                        t1: ((tau + qm.eps) * (1.0 + PREFILTER_SLACK)) as f32,
                    };
                    // SAFETY: avx512f is enabled on this function (checked by the caller).
                    let mut mask = unsafe { prefilter_mask(s, pm, qs, c1, c2) } & valid;
                    if mask == 0 {
                        continue;
                    }
                    let mut qstate = st.query(i, k, cap);
                    while mask != 0 {
                        let l = mask.trailing_zeros() as usize;
                        mask &= mask - 1;
                        let r = p * PANEL + l;
                        if !qstate.offer(&screen.coef, s[l], &qm, &screen.meta[r], r) {
                            active -= 1;
                            break;
                        }
                    }
                }
            }
        }
        p0 = p1;
    }
}

/// Bit-exact software model of `vdpbf16ps` accumulation for one output (products exact in
/// f32, two f32 additions per pair: odd element first, as in the Intel SDM pseudocode).
pub(super) fn dot_reference(a: &[u16], b: &[u16]) -> f32 {
    let f = |h: u16| bf16::from_bits(h).to_f32();
    let mut acc = 0.0f32;
    for (pa, pb) in a.chunks(2).zip(b.chunks(2)) {
        if pa.len() == 2 {
            acc += f(pa[1]) * f(pb[1]);
        }
        acc += f(pa[0]) * f(pb[0]);
    }
    acc
}

/// Portable screening loop (CPUs without AVX512-BF16; used by tests only, since
/// [`Screen::build`] refuses such CPUs).
fn screen_chunk_scalar(screen: &Screen, k: usize, cap: usize, groups: usize, st: &mut ChunkState) {
    let k2 = screen.k2;
    let panel_len = k2 * 2 * PANEL;
    let mut a = vec![0u16; 2 * k2];
    let mut b = vec![0u16; 2 * k2];
    for i in 0..groups * QGROUP {
        if st.status[i] != Status::Active {
            continue;
        }
        let (g, j) = (i / QGROUP, i % QGROUP);
        for t in 0..k2 {
            let v = st.qpack[(g * k2 + t) * QGROUP + j];
            a[2 * t] = v as u16;
            a[2 * t + 1] = (v >> 16) as u16;
        }
        let qm = st.meta[i];
        let mut qstate = st.query(i, k, cap);
        for r in 0..screen.n {
            let (p, l) = (r / PANEL, r % PANEL);
            let panel = &screen.packed[p * panel_len..(p + 1) * panel_len];
            for t in 0..k2 {
                b[2 * t] = panel[(t * PANEL + l) * 2];
                b[2 * t + 1] = panel[(t * PANEL + l) * 2 + 1];
            }
            let s = dot_reference(&a, &b);
            let tau = qstate.top_u[k - 1];
            if !prefilter_reference(s, &qm, &screen.meta[r], tau, &screen.coef) {
                continue;
            }
            if !qstate.offer(&screen.coef, s, &qm, &screen.meta[r], r) {
                break;
            }
        }
    }
}
