//! The screened search of one query chunk: the screening loop (AVX-512 kernel or portable
//! model) and the exact rerank of the candidates.
//!
//! **Selection.** Per query, `τ` is the k-th smallest `U` seen so far; a row is kept as a
//! candidate when `L ≤ τ` (τ only decreases, candidates are filtered again with the final τ).
//! The `k` rows defining the final τ have true distances ≤ τ, so every row whose true distance
//! is at most the true k-th distance has `L ≤ τ`: the exact k nearest (with all exact ties)
//! are among the candidates. Their distances are then computed directly from the original f32
//! rows (`Σ (a − b)²`, as the f32 path's final recompute) and the k smallest are kept, ties to
//! the lower index. A query with more than `cap` candidates (duplicated or equidistant rows)
//! goes to the f32 GEMM path instead.

#[cfg(target_arch = "x86_64")]
use super::bound::PREFILTER_SLACK;
use super::bound::{prefilter_reference, BoundCoef};
#[cfg(target_arch = "x86_64")]
use super::PANEL;
use super::{round_row, RowMeta, Screen, QGROUP};
#[cfg(target_arch = "x86_64")]
use crate::kernels::amx::{self, BlockSink, COLS, ROWS};
use crate::kernels::amx::{AmxWeights, SumsBuf};
use crate::kernels::screen::dot_reference;
#[cfg(target_arch = "x86_64")]
use crate::kernels::screen::{Bf16Screen, QueryScalars, ScreenKernel};
use crate::knn::search::{insert_sorted, squared_distance};

/// Bank rows per cache block (256 rows × 1024 dims × 2 bytes = 512 KiB, fits L2).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const BANK_BLOCK: usize = 256;

/// Candidate buffer size per query.
pub(in crate::knn) fn default_cap(k: usize) -> usize {
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
pub(in crate::knn) struct ChunkState {
    /// Packed bf16 query pairs, `[groups][k2][QGROUP]`.
    qpack: Vec<u32>,
    meta: Vec<RowMeta>,
    status: Vec<Status>,
    /// Ascending k smallest upper bounds per query.
    pub(super) top_u: Vec<f64>,
    cand_idx: Vec<u32>,
    pub(super) cand_lo: Vec<f64>,
    pub(super) cand_n: Vec<usize>,
    /// One query's bf16 bits (padded to an even width).
    row: Vec<u16>,
    /// The queries as AMX tiles (AMX kernel only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    amx_q: AmxWeights,
    /// The AMX kernel's sums (made on first use).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    sums: Option<SumsBuf<f32>>,
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
pub(in crate::knn) fn search_chunk(
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

/// The screening loop of one chunk, on the screen's kernel.
fn screen_chunk(screen: &Screen, k: usize, cap: usize, groups: usize, st: &mut ChunkState) {
    #[cfg(target_arch = "x86_64")]
    match screen.kernel {
        Some(ScreenKernel::Avx512(tok)) => {
            // SAFETY: the token proves that the CPU has avx512f and avx512bf16.
            unsafe { screen_chunk_avx512(tok, screen, k, cap, groups, st) };
            return;
        }
        Some(ScreenKernel::Amx(tok, op)) => {
            let mut q = std::mem::take(&mut st.amx_q);
            let k2 = screen.k2;
            let qpack = &st.qpack;
            q.refill(groups * QGROUP, k2, |i, w| {
                qpack[((i / QGROUP) * k2 + w) * QGROUP + i % QGROUP]
            });
            let mut sums = st.sums.take().unwrap_or_else(SumsBuf::new);
            // SAFETY: the token proves that the CPU has avx512f and avx512bf16.
            unsafe { screen_chunk_amx(tok, op, screen, &q, k, cap, &mut sums, st) };
            st.sums = Some(sums);
            st.amx_q = q;
            return;
        }
        None => {}
    }
    screen_chunk_scalar(screen, k, cap, groups, st);
}

/// Where the AMX products of a query block and a pair of bank panels go: the prefilter and
/// the candidate lists, as in [`screen_chunk_avx512`].
#[cfg(target_arch = "x86_64")]
struct AmxSink<'a> {
    filter: Filter,
    screen: &'a Screen,
    st: &'a mut ChunkState,
}

#[cfg(target_arch = "x86_64")]
impl BlockSink<f32> for AmxSink<'_> {
    #[inline(always)]
    fn block(&mut self, block: usize, col0: usize, sums: &[[f32; COLS]; ROWS]) {
        const { assert!(COLS == PANEL) };
        for (j, s) in sums.iter().enumerate() {
            let i = block * ROWS + j;
            if i >= self.st.status.len() {
                break;
            }
            self.filter.offer_panel(self.screen, self.st, i, col0, s);
        }
    }
}

/// The prefilter and the candidate lists, shared by the AVX-512 and AMX loops.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Filter {
    tok: Bf16Screen,
    c1: f32,
    c2: f32,
    k: usize,
    cap: usize,
}

#[cfg(target_arch = "x86_64")]
impl Filter {
    /// Prefilters the products `s` of query `i` (local) with the [`PANEL`] bank rows from `r0`
    /// and offers the rows that pass to the query's candidates; `false` when the query has
    /// just overflowed them (it is then marked for the f32 path). Inactive queries are left
    /// alone.
    #[inline(always)]
    fn offer_panel(
        self,
        screen: &Screen,
        st: &mut ChunkState,
        i: usize,
        r0: usize,
        s: &[f32; PANEL],
    ) -> bool {
        if st.status[i] != Status::Active {
            return true;
        }
        let (k, cap) = (self.k, self.cap);
        let rows = (screen.n - r0).min(PANEL);
        let valid = if rows == PANEL {
            u32::MAX
        } else {
            (1u32 << rows) - 1
        };
        let qm = st.meta[i];
        let tau = st.top_u[i * k + k - 1];
        let qs = QueryScalars {
            na: qm.sq as f32,
            an: qm.norm as f32,
            t1: ((tau + qm.eps) * (1.0 + PREFILTER_SLACK)) as f32,
        };
        let pm = &screen.panel_meta[r0 / PANEL];
        let mut mask = self.tok.prefilter_mask(s, pm, qs, self.c1, self.c2) & valid;
        if mask == 0 {
            return true;
        }
        let mut qstate = st.query(i, k, cap);
        while mask != 0 {
            let l = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let r = r0 + l;
            if !qstate.offer(&screen.coef, s[l], &qm, &screen.meta[r], r) {
                return false;
            }
        }
        true
    }
}

/// The AMX screening loop: every query block of `q` against every pair of bank panels, in
/// the order of [`amx::blocks`] (groups of 256 bank rows outermost, as the AVX-512 loop's
/// bank blocks), compiled with the prefilter's features so that the sink inlines.
///
/// # Safety
/// The CPU must have avx512f and avx512bf16 (as `tok` proves).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn screen_chunk_amx(
    tok: Bf16Screen,
    op: amx::Bf16,
    screen: &Screen,
    q: &AmxWeights,
    k: usize,
    cap: usize,
    sums: &mut SumsBuf<f32>,
    st: &mut ChunkState,
) {
    let (c1, c2) = screen.coef.prefilter_coefs();
    let qblocks = st.status.len().div_ceil(ROWS);
    let mut sink = AmxSink {
        filter: Filter {
            tok,
            c1,
            c2,
            k,
            cap,
        },
        screen,
        st,
    };
    amx::blocks(op, q, 0..qblocks, &screen.packed, sums, &mut sink);
}

/// The screening loop compiled with the kernels' features, so that they inline.
///
/// # Safety
/// The CPU must have avx512f and avx512bf16 (as `tok` proves).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn screen_chunk_avx512(
    tok: Bf16Screen,
    screen: &Screen,
    k: usize,
    cap: usize,
    groups: usize,
    st: &mut ChunkState,
) {
    let k2 = screen.k2;
    let n = screen.n;
    let panels = n.div_ceil(PANEL);
    let panel_len = k2 * 2 * PANEL;
    let (c1, c2) = screen.coef.prefilter_coefs();
    let filter = Filter {
        tok,
        c1,
        c2,
        k,
        cap,
    };
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
                tok.dots_panel(panel, qg, k2, &mut dots);
                for (j, s) in dots.iter().enumerate() {
                    if !filter.offer_panel(screen, st, gs + j, p * PANEL, s) {
                        active -= 1;
                    }
                }
            }
        }
        p0 = p1;
    }
}

/// Portable screening loop (CPUs without AVX512-BF16; used by tests only, since
/// [`Screen::build`] refuses such CPUs).
fn screen_chunk_scalar(screen: &Screen, k: usize, cap: usize, groups: usize, st: &mut ChunkState) {
    let k2 = screen.k2;
    let layout = screen.layout;
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
            for (e, v) in b.iter_mut().enumerate() {
                *v = screen.packed[layout.index(r, e)];
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
