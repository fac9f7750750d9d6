//! The bf16 product on AMX tiles ([`amx::Bf16`]): the activations packed into pairs of
//! 16-column panels (rounded to bf16 on the way), or taken already packed
//! ([`AmxInput::Panels`]: handed on by a previous product or written by a direct
//! convolution); the output through an epilogue, and, with a [`HandOn`], also as the bf16
//! panels of a following product, or only as the channels-last image of a following direct
//! convolution ([`gemm_amx_to_image`]).

use super::pack::pack_b_panel;
use super::{to_bf16, Bf16Input, Bf16Isa, PackedBf16Weights, RowMap};
use crate::kernels::aligned::{aligned, aligned_mut};
use crate::kernels::amx::direct::{DirectValues, Grid};
use crate::kernels::amx::{self, HandOn, Handoff};
use crate::kernels::gemm::{Parallelism, PAR_THRESHOLD};
use crate::kernels::wide::Wide;

/// The activations of a bf16 product on AMX.
#[derive(Clone, Copy)]
pub(crate) enum AmxInput<'a, T> {
    /// The `k × n` matrix (row-major), rounded to bf16 while it is packed.
    Matrix(&'a [T]),
    /// The same values already rounded and packed for this product's weights:
    /// [`amx::packed_words`]`(chunks, n)` words of bf16 pairs ([`amx_kw`] words per column).
    Panels(&'a [u32]),
}

/// The AMX op and `w`'s AMX layout, when products with `w` run on AMX with `isa`.
fn amx_kernel(w: &PackedBf16Weights, isa: Bf16Isa) -> Option<(amx::Bf16, &amx::AmxWeights)> {
    match (isa, amx::Bf16::detect(), w.amx.as_ref()) {
        (Bf16Isa::Amx, Some(op), Some(aw)) => Some((op, aw)),
        _ => None,
    }
}

/// The words of `k` per column of the panels ([`AmxInput::Panels`], [`HandOn::kw`]) that a
/// product with `w` reads, when it runs on AMX with `isa`.
pub(crate) fn amx_kw(w: &PackedBf16Weights, isa: Bf16Isa) -> Option<usize> {
    amx_kernel(w, isa).map(|(_, aw)| aw.chunks() * amx::WORDS)
}

/// `c = w · input` on AMX tiles, `map` on every finished segment of `c` ([`RowMap::map_from`]),
/// and with `hand_on` the finished values also as the panels of a following product. Tasks
/// are blocks of 32 rows of `c`; the result does not depend on the split. Returns `None`
/// when products with `w` do not run on AMX with `isa` (nothing was computed), else whether
/// the output was handed on.
///
/// # Panics
/// If `c` is not `m × n`, or `input` does not have the length of its form.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_amx<T: Bf16Input, H: Handoff<f32>>(
    w: &PackedBf16Weights,
    input: AmxInput<'_, T>,
    n: usize,
    c: &mut [f32],
    scratch: &mut Vec<u16>,
    par: Parallelism,
    isa: Bf16Isa,
    map: &impl RowMap,
    hand_on: Option<HandOn<'_, H>>,
) -> Option<bool> {
    let (op, aw) = amx_kernel(w, isa)?;
    let k = w.k;
    assert_eq!(c.len(), w.m * n, "gemm_bf16: c must be m × n");
    let words = amx::packed_words(aw.chunks(), n);
    let parallel = par == Parallelism::Rayon && c.len() * k >= PAR_THRESHOLD;
    let emit = CopyThen(map);
    let handed = match input {
        AmxInput::Matrix(b) => {
            let packed = pack(aw, b, k, n, scratch, parallel);
            amx::product_or_handoff(op, aw, packed, n, c, parallel, &emit, hand_on)
        }
        AmxInput::Panels(panels) => {
            assert_eq!(
                panels.len(),
                words,
                "gemm_bf16: prepacked panels of the wrong length"
            );
            amx::product_or_handoff(op, aw, panels, n, c, parallel, &emit, hand_on)
        }
    };
    Some(handed)
}

/// [`gemm_amx`] whose output `y` is bf16 bits, each finished segment written by `emit`, and
/// handed on as the same bits to the panels of a following product ([`SameBits`]; `kw`
/// words of `k` per column). Returns `None` when products with `w` do not run on AMX with
/// `isa` (nothing was computed), else `Some(true)`.
///
/// # Panics
/// As [`gemm_amx`], and if `panels` does not have the length of `kw` and `n`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_amx_bits<T: Bf16Input>(
    w: &PackedBf16Weights,
    input: AmxInput<'_, T>,
    n: usize,
    y: &mut [u16],
    scratch: &mut Vec<u16>,
    par: Parallelism,
    isa: Bf16Isa,
    emit: &impl amx::Emit<f32, u16>,
    (panels, kw): (&mut [u32], usize),
) -> Option<bool> {
    let (op, aw) = amx_kernel(w, isa)?;
    let k = w.k;
    assert_eq!(y.len(), w.m * n, "gemm_bf16: y must be m × n");
    let parallel = par == Parallelism::Rayon && y.len() * k >= PAR_THRESHOLD;
    let hand_on = Some(HandOn {
        handoff: &SameBits,
        panels,
        kw,
    });
    Some(match input {
        AmxInput::Matrix(b) => {
            let packed = pack(aw, b, k, n, scratch, parallel);
            amx::product_or_handoff(op, aw, packed, n, y, parallel, emit, hand_on)
        }
        AmxInput::Panels(panels) => {
            let words = amx::packed_words(aw.chunks(), n);
            assert_eq!(
                panels.len(),
                words,
                "gemm_bf16: prepacked panels of the wrong length"
            );
            amx::product_or_handoff(op, aw, panels, n, y, parallel, emit, hand_on)
        }
    })
}

/// The handoff of a product whose output is already bf16 bits ([`gemm_amx_bits`]): the
/// same bits.
pub(crate) struct SameBits;

impl Handoff<u16> for SameBits {
    type Elem = u16;

    #[inline(always)]
    fn values(&self, row: &[u16], bits: &mut [u16]) {
        bits.copy_from_slice(row);
    }
}

/// `w · input` on AMX tiles written as the padded channels-last image of `grid` (`w`'s rows
/// are its channels, `input`'s columns its pixels) by `values`, for a following direct
/// convolution ([`amx::product_to_image`]). Returns `None` when products with `w` do not run
/// on AMX with `isa` (nothing was computed), else whether the image is valid.
///
/// # Panics
/// If `w` does not have `grid.cin` rows, a multiple of 32, or `input` or `image` does not
/// have the length of its form.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_amx_to_image<T: Bf16Input, V: DirectValues<f32, Elem = u16>>(
    w: &PackedBf16Weights,
    input: AmxInput<'_, T>,
    grid: Grid,
    image: &mut [u16],
    scratch: &mut Vec<u16>,
    par: Parallelism,
    isa: Bf16Isa,
    values: &V,
) -> Option<bool> {
    let (op, aw) = amx_kernel(w, isa)?;
    assert_eq!(
        w.m, grid.cin,
        "gemm_bf16: weights for {} rows, image of {}",
        w.m, grid.cin
    );
    let (k, n) = (w.k, grid.h * grid.w);
    let parallel = par == Parallelism::Rayon && w.m * n * k >= PAR_THRESHOLD;
    let valid = match input {
        AmxInput::Matrix(b) => {
            assert_eq!(b.len(), k * n, "gemm_bf16: b must be k × n");
            let packed = pack(aw, b, k, n, scratch, parallel);
            amx::product_to_image(op, aw, packed, grid, parallel, values, image)
        }
        AmxInput::Panels(panels) => {
            let words = amx::packed_words(aw.chunks(), n);
            assert_eq!(
                panels.len(),
                words,
                "gemm_bf16: prepacked panels of the wrong length"
            );
            amx::product_to_image(op, aw, panels, grid, parallel, values, image)
        }
    };
    Some(valid)
}

/// `b` (`k × n`) rounded to bf16 and packed for `aw` into `scratch`: pairs of 16-column
/// panels of `aw`'s chunks, from a cache line, as every tile row then is.
fn pack<'s, T: Bf16Input>(
    aw: &amx::AmxWeights,
    b: &[T],
    k: usize,
    n: usize,
    scratch: &'s mut Vec<u16>,
    parallel: bool,
) -> &'s [u16] {
    // Two u16 per 32-bit word of the tiles.
    let len = 2 * amx::packed_words(aw.chunks(), n);
    let packed = aligned_mut(scratch, len);
    let panel_len = 2 * 16 * aw.chunks() * amx::WORDS;
    let wide = Wide::detect(true);
    let pack = |(p, dst): (usize, &mut [u16])| pack_b_panel(wide, b, k, n, p * 16, 16, dst);
    if parallel {
        crate::kernels::par::for_each_chunk(packed, panel_len, |p, dst| pack((p, dst)));
    } else {
        packed.chunks_mut(panel_len).enumerate().for_each(pack);
    }
    aligned(scratch, len)
}

/// The epilogue of [`gemm_amx`]: [`RowMap::map_from`] (with a type whose methods are
/// `#[inline(always)]`, it compiles into the AVX-512 copy of the AMX loop; as a closure it
/// stayed a call to 128-bit code).
struct CopyThen<'a, M>(&'a M);

impl<M: RowMap> amx::Emit<f32, f32> for CopyThen<'_, M> {
    #[inline(always)]
    fn emit(&self, row: usize, c0: usize, sums: &[f32], o: &mut [f32]) {
        self.0.map_from(row, c0, sums, o);
    }
}

/// The handoff of a bf16 product's output to a following bf16 product: each finished f32
/// value rounded to bf16 ([`to_bf16`]), the bits that product would pack of it.
pub(crate) struct Bf16Bits;

impl Handoff<f32> for Bf16Bits {
    type Elem = u16;

    #[inline(always)]
    fn values(&self, row: &[f32], bits: &mut [u16]) {
        for (b, &y) in bits.iter_mut().zip(row) {
            *b = to_bf16(y);
        }
    }
}
