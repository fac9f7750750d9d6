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

use crate::kernels::aligned::LineBuf;
#[cfg(test)]
use crate::kernels::screen::to_bf16;
use crate::kernels::screen::{
    round_row, BankLayout, PanelMeta, RowMeta, ScreenKernel, PANEL, QGROUP,
};

mod bound;
mod search;
#[cfg(test)]
mod tests;

/// Largest query chunk per task.
const MAX_CHUNK: usize = 256;

/// The bank's screening data: centred bf16 rows packed in panels for the kernel, with their
/// norms.
#[derive(Debug, Clone)]
pub(super) struct Screen {
    /// The kernel that computes the products (`None`: the portable loop, tests only).
    kernel: Option<ScreenKernel>,
    /// How `packed` is laid out.
    layout: BankLayout,
    /// Column mean of the bank.
    mu: Vec<f64>,
    /// Row width.
    d: usize,
    /// Pair steps per row, `⌈d / 2⌉`.
    k2: usize,
    /// Bank rows.
    n: usize,
    /// The bank's centred bf16 bit patterns in `layout`.
    packed: LineBuf<u16>,
    /// Per bank row (padded to whole panels of [`PANEL`] rows with zeros).
    meta: Vec<RowMeta>,
    /// f32 copies of `meta`, per panel.
    panel_meta: Vec<PanelMeta>,
    /// Largest `‖b̂‖`.
    max_norm: f64,
    coef: BoundCoef,
}

impl Screen {
    /// Screening data of the contiguous `n × d` f32 bank for the fastest kernel of this CPU,
    /// or `None` if the CPU lacks AVX512-BF16 or the width is too large for the bound.
    pub(super) fn build(bank: &[f32], n: usize, d: usize) -> Option<Self> {
        let kernel = ScreenKernel::detect()?;
        if n == 0 || d == 0 || bank.len() != n * d {
            return None;
        }
        Self::build_for(bank, n, d, Some(kernel), kernel.layout(d))
    }

    /// As [`Screen::build`] with the kernel and layout given: `kernel: None` runs the
    /// portable loop, which reads any layout (tests).
    pub(super) fn build_for(
        bank: &[f32],
        n: usize,
        d: usize,
        kernel: Option<ScreenKernel>,
        layout: BankLayout,
    ) -> Option<Self> {
        debug_assert!(kernel.is_none_or(|k| k.layout(d) == layout));
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
        assert!(layout.words >= k2 && PANEL.is_multiple_of(layout.rows));
        let panels = n.div_ceil(PANEL);
        // Both layouts have whole panels of `PANEL` rows' worth of bit patterns.
        let group = PANEL / layout.rows;
        let group_len = layout.panel_len() * group;
        // From a cache line: the AMX kernel loads its tiles straight from it.
        let mut packed = LineBuf::zeroed(layout.panels_for(n).div_ceil(group) * group_len);
        let mut meta = vec![RowMeta::default(); panels * PANEL];
        packed
            .par_chunks_mut(group_len)
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
                            dst[layout.index(l, e)] = h;
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
            kernel,
            layout,
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

    /// Name of the kernel computing the products (`portable` for the test-only loop).
    pub(super) fn kernel_name(&self) -> &'static str {
        self.kernel.map_or("portable", ScreenKernel::name)
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
