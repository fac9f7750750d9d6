//! Integer matrix products for the int8 backbone: `c = A · B` with signed 8-bit weights `A`,
//! unsigned 8-bit activations `B` and exact 32-bit sums.
//!
//! The result is an exact integer (no intermediate saturation: see [`MAX_DEPTH`]), so every
//! kernel and every thread count give the same bits. Kernels (one file each):
//!
//! - [`Int8Isa::Portable`] (`portable.rs`): plain loops, every CPU;
//! - [`Int8Isa::Avx512Vnni`] (`avx512_vnni.rs`): `vpdpbusd` on 512-bit registers (64
//!   multiply-adds per instruction, four times the f32 FMA rate);
//! - [`Int8Isa::AvxVnni`] (`avx_vnni.rs`): `vpdpbusd` on 256-bit registers, for CPUs with
//!   AVX-VNNI but no AVX-512 (Alder Lake and later client and Atom-class cores);
//! - [`Int8Isa::NeonI8mm`] and [`Int8Isa::NeonDotprod`] (`neon_dot.rs`): aarch64 `usdot`
//!   and `sdot` by element (16 multiply-adds per instruction);
//! - [`Int8Isa::Amx`] (`kernels/amx.rs`, shared with the bf16 kernels): `tdpbsud` on AMX tile
//!   registers (16,384 multiply-adds per instruction), with its own weight layout (see that
//!   file).
//!
//! Layouts. Weights are packed once ([`PackedWeights::new`]) in panels of [`MR`] rows: for every
//! group of four consecutive `k`, the four `i8` of each of the panel's rows as one 32-bit word
//! (`k` is padded to a multiple of four with zeros, `m` to a multiple of [`MR`] with zero rows).
//! The activations are packed on every call into panels of [`NR`] columns: for every group of
//! four `k`, the four `u8` of each column as one 32-bit word. One `vpdpbusd` then multiplies 16
//! columns by one broadcast weight word and adds the four products to each column's sum.

mod avx512_vnni;
mod avx_vnni;
#[cfg(target_arch = "aarch64")]
mod neon_dot;
mod pack;
mod portable;
mod prepacked;
mod quantize;
#[cfg(test)]
mod tests;
mod weights;

use crate::kernels::aligned::{aligned, aligned_mut};
use crate::kernels::amx::{self, HandOn};
use crate::kernels::gemm::Parallelism;
use crate::kernels::wide::Wide;

use pack::{pack_b, pack_b_shifted};
pub(crate) use pack::{ShiftedPlanes, MAX_SIZE};
use prepacked::into_amx_panels;
pub(crate) use prepacked::{
    amx_k4, gemm_u8i8_prepacked_emit, gemm_u8i8_prepacked_to_image, pack_panels_quantizing,
};
pub use quantize::quantize_u8;
pub(crate) use quantize::{max_or_zero, quantize_max, scale_for, ZeroPoint};
#[cfg(test)]
use weights::amx_weights;
pub use weights::PackedWeights;

/// Rows of a weight panel (and of the micro-kernel's tile).
pub const MR: usize = 8;
/// Columns of an activation panel (and of the micro-kernel's tile): three 16-lane registers.
pub const NR: usize = 48;

/// Largest depth `k` for which the `i32` sums cannot overflow: `255 · 128 · k < 2³¹`.
pub const MAX_DEPTH: usize = (i32::MAX as usize) / (255 * 128);

/// Instruction set of the int8 kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Int8Isa {
    /// Plain Rust, every CPU.
    Portable,
    /// AVX-512 with VNNI (`vpdpbusd` on zmm registers).
    Avx512Vnni,
    /// AMX-INT8 tiles (`tdpbsud`; Intel Sapphire Rapids and later, Linux 5.16+).
    Amx,
    /// AVX-VNNI (`vpdpbusd` on ymm registers; AVX2 CPUs without AVX-512).
    AvxVnni,
    /// aarch64 `usdot` (FEAT_I8MM: Neoverse V1/N2, Cortex-A710 and later).
    NeonI8mm,
    /// aarch64 `sdot` (FEAT_DotProd: Cortex-A76/A78/A55 and later, Neoverse N1).
    NeonDotprod,
}

impl Int8Isa {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Int8Isa {
        if amx::Int8::detect().is_some() {
            Int8Isa::Amx
        } else if avx512_vnni::Vnni512::detect().is_some() {
            Int8Isa::Avx512Vnni
        } else if avx_vnni::VnniYmm::detect().is_some() {
            Int8Isa::AvxVnni
        } else if Int8Isa::NeonI8mm.is_available() {
            Int8Isa::NeonI8mm
        } else if Int8Isa::NeonDotprod.is_available() {
            Int8Isa::NeonDotprod
        } else {
            Int8Isa::Portable
        }
    }

    /// Whether this CPU runs the kernel ([`Int8Isa::Portable`] always).
    pub fn is_available(self) -> bool {
        match self {
            Int8Isa::Portable => true,
            Int8Isa::Avx512Vnni => avx512_vnni::Vnni512::detect().is_some(),
            Int8Isa::Amx => amx::Int8::detect().is_some(),
            Int8Isa::AvxVnni => avx_vnni::VnniYmm::detect().is_some(),
            #[cfg(target_arch = "aarch64")]
            Int8Isa::NeonI8mm => neon_dot::NeonDot::detect_i8mm().is_some(),
            #[cfg(target_arch = "aarch64")]
            Int8Isa::NeonDotprod => neon_dot::NeonDot::detect_dotprod().is_some(),
            #[cfg(not(target_arch = "aarch64"))]
            Int8Isa::NeonI8mm | Int8Isa::NeonDotprod => false,
        }
    }

    /// Name, e.g. `"avx512-vnni"`.
    pub fn name(self) -> &'static str {
        match self {
            Int8Isa::Portable => "portable",
            Int8Isa::Avx512Vnni => "avx512-vnni",
            Int8Isa::Amx => "amx",
            Int8Isa::AvxVnni => "avx-vnni",
            Int8Isa::NeonI8mm => "neon-i8mm",
            Int8Isa::NeonDotprod => "neon-dotprod",
        }
    }

    /// Every kernel this CPU runs, portable first.
    pub fn all_available() -> Vec<Int8Isa> {
        [
            Int8Isa::Portable,
            Int8Isa::AvxVnni,
            Int8Isa::Avx512Vnni,
            Int8Isa::Amx,
            Int8Isa::NeonDotprod,
            Int8Isa::NeonI8mm,
        ]
        .into_iter()
        .filter(|i| i.is_available())
        .collect()
    }
}

/// `c = A · B`: `A` the packed `m × k` weights, `b` the row-major `k × n` activations (row
/// stride `n`), `c` the row-major `m × n` result (row stride `n`, overwritten). The sums are
/// exact, so the result is the same for every `isa` and thread count. An `isa` this CPU does
/// not run falls back to [`Int8Isa::Portable`]. `scratch` holds the packed activations; it
/// grows when too short and is reused as is otherwise.
///
/// # Panics
/// If `b.len() != k·n` or `c.len() != m·n`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_u8i8(
    w: &PackedWeights,
    b: &[u8],
    n: usize,
    c: &mut [i32],
    scratch: &mut Vec<u32>,
    par: Parallelism,
    isa: Int8Isa,
) {
    gemm_u8i8_map(w, b, n, c, scratch, par, isa, |_, _, sums, out| {
        out.copy_from_slice(sums)
    });
}

/// [`gemm_u8i8`] with the result passed through `map` instead of stored: for every row `r`
/// of `c` and every column range `j0..j0 + len` that a kernel finishes,
/// `map(r, j0, &sums, &mut out[r·n + j0..][..len])` with the exact sums of `A · B` at those
/// cells. Every cell of `out` is handed to `map` exactly once; calls for different rows may
/// run on different threads at once. This is how a convolution dequantises, adds its bias
/// and residual and applies its activation while the sums are still in cache, instead of
/// writing and re-reading an `i32` matrix.
///
/// # Panics
/// If `b.len() != k·n` or `out.len() != m·n`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_u8i8_map<T, F>(
    w: &PackedWeights,
    b: &[u8],
    n: usize,
    out: &mut [T],
    scratch: &mut Vec<u32>,
    par: Parallelism,
    isa: Int8Isa,
    map: F,
) where
    T: Send,
    F: Fn(usize, usize, &[i32], &mut [T]) + Sync,
{
    gemm_u8i8_emit(w, b, n, out, scratch, par, isa, map, amx::no_hand_on());
}

/// [`gemm_u8i8_map`] with any [`amx::Emit`] as the epilogue (a type whose `emit` is
/// `#[inline(always)]` runs in the AVX-512 copy of the AMX loop).
///
/// With `hand_on`, on AMX, the output is also written as the packed activations of a
/// following product ([`HandOn`]); returns whether it was.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_u8i8_emit<T, F, H>(
    w: &PackedWeights,
    b: &[u8],
    n: usize,
    out: &mut [T],
    scratch: &mut Vec<u32>,
    par: Parallelism,
    isa: Int8Isa,
    map: F,
    hand_on: Option<HandOn<'_, H>>,
) -> bool
where
    T: Send,
    F: amx::Emit<i32, T>,
    H: amx::Handoff<T>,
{
    let k = w.k;
    assert_eq!(b.len(), k * n, "gemm_u8i8: b must be k × n");
    let pack = |wide, buf: &mut [u32], k4, nr| {
        pack_b(wide, b, |v| v, |_| 0.0, k, k4, n, nr, buf, par);
        map
    };
    gemm_impl(w, n, out, scratch, par, isa, pack, hand_on)
}

/// The AMX kernel and `w`'s AMX layout, when products with `w` run on AMX with `isa`.
fn amx_kernel(w: &PackedWeights, isa: Int8Isa) -> Option<(amx::Int8, &amx::AmxWeights)> {
    match (isa, amx::Int8::detect(), w.amx.as_ref()) {
        (Int8Isa::Amx, Some(kernel), Some(aw)) => Some((kernel, aw)),
        _ => None,
    }
}

/// Whether an `m × n × k` product is spread over the rayon pool under `par`.
fn runs_parallel(par: Parallelism, m: usize, n: usize, k: usize) -> bool {
    let work = m.saturating_mul(n).saturating_mul(k);
    par == Parallelism::Rayon && work >= crate::kernels::gemm::PAR_THRESHOLD
}

/// [`gemm_u8i8_emit`] of the im2col matrix of `x` (a stride-1 "same" window), packed straight
/// from the input planes: the same result, without writing and re-reading the matrix, which
/// is `size²` times as large as the input.
///
/// # Panics
/// If `x`'s im2col matrix is not `w.k` deep or `out.len() != m·n`.
pub(crate) fn gemm_u8i8_shifted_emit<T, F>(
    w: &PackedWeights,
    x: ShiftedPlanes<'_>,
    out: &mut [T],
    scratch: &mut Vec<u32>,
    par: Parallelism,
    isa: Int8Isa,
    map: F,
) where
    T: Send,
    F: amx::Emit<i32, T>,
{
    assert_eq!(
        x.k(),
        w.k,
        "gemm_u8i8: the window's depth must be the weights' k"
    );
    let pack = |wide, buf: &mut [u32], k4, nr| {
        pack_b_shifted(wide, x, k4, nr, buf, par);
        map
    };
    gemm_impl(w, x.n(), out, scratch, par, isa, pack, amx::no_hand_on());
}

/// [`gemm_u8i8_map`] with `f32` activations quantised while they are packed: the byte of
/// `x` is [`quantize_u8`]`(x, scale)`, the same as quantising `x` into a `u8` matrix first,
/// without writing and re-reading that matrix.
///
/// # Panics
/// If `x.len() != k·n` or `out.len() != m·n`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_quantizing_map<T, F>(
    w: &PackedWeights,
    x: &[f32],
    scale: f32,
    n: usize,
    out: &mut [T],
    scratch: &mut Vec<u32>,
    par: Parallelism,
    isa: Int8Isa,
    map: F,
) where
    T: Send,
    F: Fn(usize, usize, &[i32], &mut [T]) + Sync,
{
    let k = w.k;
    assert_eq!(x.len(), k * n, "gemm_u8i8: b must be k × n");
    let pack = |wide, buf: &mut [u32], k4, nr| {
        pack_b(
            wide,
            x,
            |v| quantize_u8(v, scale),
            |_| 0.0,
            k,
            k4,
            n,
            nr,
            buf,
            par,
        );
        map
    };
    gemm_impl(w, n, out, scratch, par, isa, pack, amx::no_hand_on());
}

/// [`gemm_quantizing_map`] for activations whose range is `max(limit, max_or_zero(x))`: the
/// calibrated limit, widened to the input's own maximum when that is larger. The input is
/// quantised with the scale of `limit` while its maximum is found in the same pass, and
/// quantised again only when the maximum exceeds `limit`; `map_for(range)` then gives the
/// epilogue. The result is that of [`gemm_quantizing_map`] with
/// `scale = scale_for(range)` and `map_for(range)`, bit for bit, without a separate pass over
/// `x` for its maximum.
///
/// With `hand_on`, as [`gemm_u8i8_emit`].
///
/// # Panics
/// If `x.len() != k·n` or `out.len() != m·n`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_quantizing_widened<T, F, H>(
    w: &PackedWeights,
    x: &[f32],
    limit: f32,
    n: usize,
    out: &mut [T],
    scratch: &mut Vec<u32>,
    par: Parallelism,
    isa: Int8Isa,
    map_for: impl FnOnce(f32) -> F,
    hand_on: Option<HandOn<'_, H>>,
) -> bool
where
    T: Send,
    F: amx::Emit<i32, T>,
    H: amx::Handoff<T>,
{
    let k = w.k;
    assert_eq!(x.len(), k * n, "gemm_u8i8: b must be k × n");
    let pack = |wide, buf: &mut [u32], k4, nr| {
        let scale = scale_for(limit);
        let seen = pack_b(
            wide,
            x,
            |v| quantize_u8(v, scale),
            |v| v,
            k,
            k4,
            n,
            nr,
            buf,
            par,
        );
        let range = limit.max(seen);
        if seen > limit {
            let scale = scale_for(range);
            pack_b(
                wide,
                x,
                |v| quantize_u8(v, scale),
                |_| 0.0,
                k,
                k4,
                n,
                nr,
                buf,
                par,
            );
        }
        map_for(range)
    };
    gemm_impl(w, n, out, scratch, par, isa, pack, hand_on)
}

/// The body of [`gemm_u8i8_map`], [`gemm_quantizing_map`] and [`gemm_quantizing_widened`]:
/// `pack(wide, buf, k4, nr)` packs the activations into `buf` (`n.div_ceil(nr)` panels of
/// `k4·nr` words, see [`pack_b`]) and returns the epilogue. Returns whether `hand_on` was
/// written (only by the AMX kernel).
#[allow(clippy::too_many_arguments)]
fn gemm_impl<T, F, H>(
    w: &PackedWeights,
    n: usize,
    out: &mut [T],
    scratch: &mut Vec<u32>,
    par: Parallelism,
    isa: Int8Isa,
    pack: impl FnOnce(Wide, &mut [u32], usize, usize) -> F,
    hand_on: Option<HandOn<'_, H>>,
) -> bool
where
    T: Send,
    F: amx::Emit<i32, T>,
    H: amx::Handoff<T>,
{
    let (m, k) = (w.m, w.k);
    assert_eq!(out.len(), m * n, "gemm_u8i8: c must be m × n");
    if m == 0 || n == 0 {
        return false;
    }
    // The packing loop with AVX-512 for the x86 kernels that need it anyway.
    let wide = Wide::detect(matches!(isa, Int8Isa::Amx | Int8Isa::Avx512Vnni));
    if k == 0 {
        let map = pack(wide, &mut [], 0, NR);
        let zeros = vec![0i32; n];
        for (r, o) in out.chunks_exact_mut(n).enumerate() {
            map.emit(r, 0, &zeros, o);
        }
        return false;
    }
    let parallel = runs_parallel(par, m, n, k);
    if let Some((kernel, aw)) = amx_kernel(w, isa) {
        // Panels of 16 columns (one tile each), an even number of them.
        let words = amx::packed_words(aw.chunks(), n);
        // From a cache line, as every tile row then is.
        let buf = aligned_mut(scratch, words);
        let map = into_amx_panels(aw, n, buf, |body, k4| pack(wide, body, k4, 16));
        let packed: &[u32] = aligned(scratch, words);
        return amx::product_or_handoff(kernel, aw, packed, n, out, parallel, &map, hand_on);
    }
    let k4 = k.div_ceil(4);
    let words = n.div_ceil(NR) * k4 * NR;
    let map = pack(wide, aligned_mut(scratch, words), k4, NR);
    let packed: &[u32] = aligned(scratch, words);
    let panel = RowPanel {
        kernel: TileKernel::new(isa),
        w,
        packed,
        k4,
        n,
        map: &map,
    };
    // One task = one panel of MR rows of c (all columns): disjoint output slices, so the
    // result does not depend on how tasks are spread over threads.
    let rows_task = |p: usize, o: &mut [T]| match wide {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected.
        Wide::Avx512(_) => unsafe { panel.run_avx512(p, o) },
        Wide::Baseline => panel.run(p, o),
    };
    for_row_blocks(out, MR * n, parallel, rows_task);
    false
}

/// One task of a product on a tile kernel: weight panel `p` against every packed activation
/// panel, each finished tile through the epilogue `map`.
struct RowPanel<'a, F> {
    kernel: TileKernel,
    w: &'a PackedWeights,
    packed: &'a [u32],
    k4: usize,
    n: usize,
    map: &'a F,
}

impl<F> RowPanel<'_, F> {
    /// The rows `o` (`MR` or, for the last panel, fewer rows of `n`) of weight panel `p`.
    #[inline(always)]
    fn run<T>(&self, p: usize, o: &mut [T])
    where
        F: amx::Emit<i32, T>,
    {
        let (k4, n) = (self.k4, self.n);
        let a = self.w.panel(p);
        let rows = o.len() / n;
        for (q, bp) in self.packed.chunks_exact(k4 * NR).enumerate() {
            let c0 = q * NR;
            let cols = NR.min(n - c0);
            let mut tile = [[0i32; NR]; MR];
            self.kernel.tile(self.w, p, a, bp, k4, cols, &mut tile);
            for (r, t) in tile.iter().enumerate().take(rows) {
                self.map
                    .emit(p * MR + r, c0, &t[..cols], &mut o[r * n + c0..][..cols]);
            }
        }
    }

    /// [`Self::run`] compiled with AVX-512, so that an epilogue whose `emit` is
    /// `#[inline(always)]` is too (the baseline copy vectorises it to 128 bits only).
    ///
    /// # Safety
    /// The CPU must run AVX512F and AVX512BW.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn run_avx512<T>(&self, p: usize, o: &mut [T])
    where
        F: amx::Emit<i32, T>,
    {
        self.run(p, o)
    }
}

/// The tile kernel of an [`Int8Isa`] (other than AMX, which has its own driver), each with the
/// proof that this CPU runs it.
#[derive(Clone, Copy)]
enum TileKernel {
    Portable,
    Zmm(avx512_vnni::Vnni512),
    Ymm(avx_vnni::VnniYmm),
    #[cfg(target_arch = "aarch64")]
    Neon(neon_dot::NeonDot),
}

impl TileKernel {
    /// The kernel of `isa`, or the portable one when this CPU does not run it.
    fn new(isa: Int8Isa) -> TileKernel {
        let kernel = match isa {
            Int8Isa::Avx512Vnni => avx512_vnni::Vnni512::detect().map(TileKernel::Zmm),
            Int8Isa::AvxVnni => avx_vnni::VnniYmm::detect().map(TileKernel::Ymm),
            #[cfg(target_arch = "aarch64")]
            Int8Isa::NeonI8mm => neon_dot::NeonDot::detect_i8mm().map(TileKernel::Neon),
            #[cfg(target_arch = "aarch64")]
            Int8Isa::NeonDotprod => neon_dot::NeonDot::detect_dotprod().map(TileKernel::Neon),
            _ => None,
        };
        kernel.unwrap_or(TileKernel::Portable)
    }

    /// The [`MR`] × [`NR`] sums of weight panel `p` (words `a`) and the activation panel `b`,
    /// of which the first `cols` columns are used (a kernel may leave the others as they are).
    #[allow(clippy::too_many_arguments)]
    fn tile(
        self,
        w: &PackedWeights,
        p: usize,
        a: &[i32],
        b: &[u32],
        k4: usize,
        cols: usize,
        tile: &mut [[i32; NR]; MR],
    ) {
        match self {
            TileKernel::Portable => portable::tile(a, b, k4, tile),
            TileKernel::Zmm(v) => v.tile(a, b, k4, cols, tile),
            TileKernel::Ymm(v) => v.tile(a, b, k4, tile),
            #[cfg(target_arch = "aarch64")]
            TileKernel::Neon(v) => v.tile(a, &w.row_sums[p * MR..(p + 1) * MR], b, k4, tile),
        }
        let _ = (w, p);
    }
}

/// Runs `task(i, chunk)` on the consecutive chunks of `len` elements of `out`, in parallel
/// when `parallel`.
fn for_row_blocks<T: Send>(
    out: &mut [T],
    len: usize,
    parallel: bool,
    task: impl Fn(usize, &mut [T]) + Sync,
) {
    if parallel {
        crate::kernels::par::for_each_chunk(out, len, task);
    } else {
        for (i, o) in out.chunks_mut(len).enumerate() {
            task(i, o);
        }
    }
}
