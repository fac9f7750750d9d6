//! Products whose activations are already packed for the AMX kernel (by a previous
//! product's hand-on, a direct convolution, or [`pack_panels_quantizing`]), and that packing
//! of an f32 input on its own.

use super::pack::pack_b;
use super::{amx_kernel, runs_parallel, scale_for, Int8Isa, PackedWeights};
use crate::kernels::amx::{self, HandOn};
use crate::kernels::gemm::Parallelism;
use crate::kernels::int8::quantize_u8;
use crate::kernels::wide::Wide;

/// The product of `w` with activations already packed for the AMX kernel (by a previous
/// product's [`HandOn`]): `panels` holds `n` columns in [`amx::packed_words`]`(chunks, n)`
/// words for `w`'s AMX chunks.
///
/// With `hand_on`, the output is also written as the packed activations of a following
/// product ([`HandOn`]); returns whether it was (always, when asked).
///
/// # Panics
/// If the CPU does not run the AMX kernel, `isa` is not [`Int8Isa::Amx`], the weights have no
/// AMX layout, or `panels` does not have that length.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_u8i8_prepacked_emit<T, F, H>(
    w: &PackedWeights,
    panels: &[u32],
    n: usize,
    out: &mut [T],
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
    let Some((kernel, aw)) = amx_kernel(w, isa) else {
        panic!("gemm_u8i8: prepacked activations need the AMX kernel");
    };
    assert_eq!(out.len(), w.m * n, "gemm_u8i8: c must be m × n");
    assert_eq!(
        panels.len(),
        amx::packed_words(aw.chunks(), n),
        "gemm_u8i8: prepacked activations of the wrong length"
    );
    let parallel = runs_parallel(par, w.m, n, w.k);
    amx::product_or_handoff(kernel, aw, panels, n, out, parallel, &map, hand_on)
}

/// The product of `w` with activations already packed for the AMX kernel (as
/// [`gemm_u8i8_prepacked_emit`] reads them) written as the padded channels-last image of
/// `grid` by `values` ([`amx::product_to_image`]); `None` when products with `w` do not run
/// on AMX with `isa` (nothing was computed), else whether the image is valid.
///
/// # Panics
/// As [`amx::product_to_image`], or if `panels` has the wrong length.
pub(crate) fn gemm_u8i8_prepacked_to_image<V: amx::direct::DirectValues<i32, Elem = u8>>(
    w: &PackedWeights,
    panels: &[u32],
    grid: amx::direct::Grid,
    image: &mut [u8],
    par: Parallelism,
    isa: Int8Isa,
    values: &V,
) -> Option<bool> {
    let (kernel, aw) = amx_kernel(w, isa)?;
    let n = grid.h * grid.w;
    assert_eq!(
        panels.len(),
        amx::packed_words(aw.chunks(), n),
        "gemm_u8i8: prepacked activations of the wrong length"
    );
    let parallel = runs_parallel(par, w.m, n, w.k);
    Some(amx::product_to_image(
        kernel, aw, panels, grid, parallel, values, image,
    ))
}

/// `x` (`k × n`, f32) quantised with the calibrated range `limit` (`quantize_u8(v,
/// scale_for(limit))`) and packed into `panels` as a product with `w` on AMX reads its
/// activations ([`gemm_u8i8_prepacked_emit`]: [`amx::packed_words`] of `w`'s chunks and `n`,
/// the words past the columns zero): the bytes [`gemm_quantizing_widened`](super::gemm_quantizing_widened) packs when no
/// value exceeds `limit`. Returns the input's maximum `max(0, x…)` (the panels hold bytes of
/// `limit` only when it is at most `limit`), or `None` (nothing written) when products with
/// `w` do not run on AMX with `isa`.
///
/// # Panics
/// If `x.len() != k·n` or `panels` has the wrong length.
pub(crate) fn pack_panels_quantizing(
    w: &PackedWeights,
    x: &[f32],
    limit: f32,
    n: usize,
    panels: &mut [u32],
    par: Parallelism,
    isa: Int8Isa,
) -> Option<f32> {
    let (_, aw) = amx_kernel(w, isa)?;
    assert_eq!(x.len(), w.k * n, "pack_panels: x must be k × n");
    assert_eq!(
        panels.len(),
        amx::packed_words(aw.chunks(), n),
        "pack_panels: panels of the wrong length"
    );
    let scale = scale_for(limit);
    let wide = Wide::detect(true);
    Some(into_amx_panels(aw, n, panels, |body, k4| {
        pack_b(
            wide,
            x,
            |v| quantize_u8(v, scale),
            |v| v,
            w.k,
            k4,
            n,
            16,
            body,
            par,
        )
    }))
}

/// `pack(body, k4)` into the first words of `panels` (the `n.div_ceil(16)` panels of `k4`
/// words of `k` per column that a product with `aw` reads: [`pack_b`] with 16 columns to a
/// panel), the rest (the zero panel that completes the last pair) zeroed; returns what `pack`
/// returns. `panels` holds [`amx::packed_words`]`(aw.chunks(), n)` words.
pub(super) fn into_amx_panels<R>(
    aw: &amx::AmxWeights,
    n: usize,
    panels: &mut [u32],
    pack: impl FnOnce(&mut [u32], usize) -> R,
) -> R {
    let k4 = aw.chunks() * amx::WORDS;
    let (body, tail) = panels.split_at_mut(n.div_ceil(16) * k4 * 16);
    let r = pack(body, k4);
    tail.fill(0);
    r
}

/// The AMX words of `k` per column ([`HandOn::kw`]) of a product with `w`, when it runs on
/// AMX with `isa`.
pub(crate) fn amx_k4(w: &PackedWeights, isa: Int8Isa) -> Option<usize> {
    amx_kernel(w, isa).map(|(_, aw)| aw.chunks() * amx::WORDS)
}
