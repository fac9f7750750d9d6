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
//! The product error bound and the interval `[L, U]` it gives are derived in [`bound`]; the
//! candidate selection and the exact rerank in [`search`].

use rayon::prelude::*;

use bound::{BoundCoef, MAX_NORM_PRODUCT, PREFILTER_SLACK};
pub(super) use search::{default_cap, search_chunk, ChunkState};

mod bound;
#[cfg(target_arch = "x86_64")]
mod kernel;
mod search;
#[cfg(test)]
mod tests;

/// Bank rows per micro-kernel panel (two 16-lane vectors).
pub(super) const PANEL: usize = 32;
/// Queries per micro-kernel tile.
pub(super) const QGROUP: usize = 8;
/// Largest query chunk per task.
const MAX_CHUNK: usize = 256;

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
        if crate::kernels::cpu::features().avx512f {
            // SAFETY: avx512f was detected on this CPU.
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
        let cpu = crate::kernels::cpu::features();
        cpu.avx512f && cpu.avx512bf16
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
