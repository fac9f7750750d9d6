//! The kNN screen's kernels: the bf16 rounding of centred rows, and the bf16 products of bank
//! panels with query groups with their vectorised prefilter.
//!
//! The method, its error bound and the search that uses these live in `knn::screen`; this
//! module holds the data layout the kernels read and the kernels, portable version first:
//! [`round_row`] (a plain loop, also compiled for AVX-512), [`dot_reference`] (a bit-exact
//! model of the `vdpbf16ps` sums: what the portable screening loop computes), and in
//! `avx512_bf16.rs` the panel product and the prefilter, reached through the [`Bf16Screen`]
//! token.

#[cfg(target_arch = "x86_64")]
mod avx512_bf16;

/// Bank rows per micro-kernel panel (two 16-lane vectors).
pub(crate) const PANEL: usize = 32;
/// Queries per micro-kernel tile.
pub(crate) const QGROUP: usize = 8;

/// Layout of the bank's bf16 bit patterns: panels of `rows` bank rows, each `words` pair-steps
/// of `rows` rows × 2 bf16 (element `e` of panel row `l` at `((e / 2)·rows + l)·2 + e % 2`),
/// zero-padded in both directions.
///
/// The AVX512-BF16 kernel reads panels of [`PANEL`] rows and `⌈d / 2⌉` words; the AMX tiles
/// read panels of 16 rows (an even number of them) with the words padded to whole tiles of 16,
/// which is exactly the activation layout of `kernels::amx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BankLayout {
    /// Rows per panel.
    pub rows: usize,
    /// Pair-steps per panel (at least `⌈d / 2⌉`).
    pub words: usize,
    /// Panels are allocated in multiples of this many.
    pub panel_multiple: usize,
}

impl BankLayout {
    /// The AVX512-BF16 kernel's layout for rows of `d` elements.
    pub(crate) fn panels(d: usize) -> BankLayout {
        BankLayout {
            rows: PANEL,
            words: d.div_ceil(2),
            panel_multiple: 1,
        }
    }

    /// The AMX layout for rows of `d` elements (pairs of 16-row panels, whole tiles of words).
    pub(crate) fn amx(d: usize) -> BankLayout {
        BankLayout {
            rows: 16,
            words: d.div_ceil(2).div_ceil(super::amx::WORDS) * super::amx::WORDS,
            panel_multiple: 2,
        }
    }

    /// Bit patterns per panel.
    pub(crate) fn panel_len(&self) -> usize {
        self.words * self.rows * 2
    }

    /// Panels allocated for `n` rows.
    pub(crate) fn panels_for(&self, n: usize) -> usize {
        n.div_ceil(self.rows * self.panel_multiple) * self.panel_multiple
    }

    /// Position of element `e` of bank row `r`.
    #[inline]
    pub(crate) fn index(&self, r: usize, e: usize) -> usize {
        let (p, l) = (r / self.rows, r % self.rows);
        p * self.panel_len() + ((e / 2) * self.rows + l) * 2 + e % 2
    }
}

/// Which kernel computes the screening products.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) enum ScreenKernel {
    /// AMX tiles (`tdpbf16ps`), with the AVX-512 prefilter.
    Amx(Bf16Screen, super::amx::Bf16),
    /// `vdpbf16ps` on AVX-512 registers.
    Avx512(Bf16Screen),
}

impl ScreenKernel {
    /// The fastest kernel this CPU runs, if any.
    pub(crate) fn detect() -> Option<ScreenKernel> {
        let tok = Bf16Screen::detect()?;
        Some(match super::amx::Bf16::detect() {
            Some(op) => ScreenKernel::Amx(tok, op),
            None => ScreenKernel::Avx512(tok),
        })
    }

    /// The bank layout the kernel reads, for rows of `d` elements.
    pub(crate) fn layout(self, d: usize) -> BankLayout {
        match self {
            ScreenKernel::Amx(..) => BankLayout::amx(d),
            ScreenKernel::Avx512(_) => BankLayout::panels(d),
        }
    }

    /// Short name for reports (`amx-bf16`, `avx512-bf16`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            ScreenKernel::Amx(..) => "amx-bf16",
            ScreenKernel::Avx512(_) => "avx512-bf16",
        }
    }
}

/// Proof that the CPU runs the AVX512-BF16 screening kernels: a value exists only when
/// [`Bf16Screen::detect`] found AVX512F and AVX512-BF16.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Bf16Screen(());

/// Per-query scalars of the prefilter (see `knn::screen::bound::prefilter_reference` for the
/// meaning).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct QueryScalars {
    /// `‖â‖²` as f32.
    pub na: f32,
    /// `‖â‖` as f32.
    pub an: f32,
    /// `(τ + ε_a)·(1 + 1e-6)` as f32 (infinite while τ is).
    pub t1: f32,
}

impl Bf16Screen {
    /// The token if this CPU runs the screening kernels.
    pub(crate) fn detect() -> Option<Bf16Screen> {
        #[cfg(target_arch = "x86_64")]
        {
            let cpu = super::cpu::features();
            if cpu.avx512f && cpu.avx512bf16 {
                return Some(Bf16Screen(()));
            }
        }
        None
    }

    /// Screening products of one panel of [`PANEL`] bank rows with one group of [`QGROUP`]
    /// queries: `out[j][l] = Σ_t â_j[2t]·b̂_l[2t] + â_j[2t+1]·b̂_l[2t+1]`, accumulated in f32
    /// by `vdpbf16ps` in increasing `t` ([`dot_reference`] models the sums bit for bit).
    ///
    /// `panel` holds `k2` pair-steps of 32 rows × 2 bf16 (`panel[(t·32 + l)·2 + h]`), `q`
    /// holds `k2` steps of 8 queries × 1 pair packed in a `u32` (`q[t·8 + j]`, low half = even
    /// element). Panics if either is shorter.
    ///
    /// Inlines into callers compiled with `avx512f,avx512bf16`.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) fn dots_panel(
        self,
        panel: &[u16],
        q: &[u32],
        k2: usize,
        out: &mut [[f32; PANEL]; QGROUP],
    ) {
        // SAFETY: `self` exists, so the CPU has AVX512F and AVX512-BF16 (`detect`).
        unsafe { avx512_bf16::dots_panel(panel, q, k2, out) }
    }

    /// Bit `l` set when bank row `l` of the panel may be a candidate of the query: the
    /// vectorised form of `knn::screen::bound::prefilter_reference`, on the products `s` of
    /// [`Bf16Screen::dots_panel`].
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) fn prefilter_mask(
        self,
        s: &[f32; PANEL],
        m: &PanelMeta,
        qs: QueryScalars,
        c1: f32,
        c2: f32,
    ) -> u32 {
        // SAFETY: `self` exists, so the CPU has AVX512F (`detect`).
        unsafe { avx512_bf16::prefilter_mask(s, m, qs, c1, c2) }
    }
}

/// Bit-exact software model of `vdpbf16ps` accumulation for one output (products exact in
/// f32, two f32 additions per pair: odd element first, as in the Intel SDM pseudocode).
pub(crate) fn dot_reference(a: &[u16], b: &[u16]) -> f32 {
    let f = |h: u16| half::bf16::from_bits(h).to_f32();
    let mut acc = 0.0f32;
    for (pa, pb) in a.chunks(2).zip(b.chunks(2)) {
        if pa.len() == 2 {
            acc += f(pa[1]) * f(pb[1]);
        }
        acc += f(pa[0]) * f(pb[0]);
    }
    acc
}

/// Norms and rounding error of one centred, bf16-rounded row.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct RowMeta {
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
pub(crate) struct PanelMeta {
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
pub(crate) fn to_bf16(c: f64) -> u16 {
    bf16_bits(c as f32)
}

/// Centres `x` by `mu`, rounds it to bf16 into `out` and returns its [`RowMeta`]. Eight
/// fixed accumulation lanes: the result does not depend on how the loop is vectorised.
#[inline(always)]
pub(super) fn round_row_lanes(x: &[f32], mu: &[f64], out: &mut [u16]) -> RowMeta {
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

/// Centres `x` by `mu`, rounds it to bf16 into `out` (contiguous) and returns its
/// [`RowMeta`] (see `knn::screen` for the meaning of `ε`).
pub(crate) fn round_row(x: &[f32], mu: &[f64], out: &mut [u16]) -> RowMeta {
    #[cfg(target_arch = "x86_64")]
    {
        if super::cpu::features().avx512f {
            // SAFETY: avx512f was detected on this CPU.
            return unsafe { avx512_bf16::round_row(x, mu, out) };
        }
    }
    round_row_lanes(x, mu, out)
}
