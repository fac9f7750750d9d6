//! The activation quantiser of the int8 convolution and the input range it needs.

use crate::kernels::wide::Wide;

/// `clamp(round(x·scale), 0, 255)` with ties to even (NaN gives 0): the activation
/// quantiser of the int8 convolution. Adding `1.5·2²³` leaves no fraction bits (the addition
/// rounds to nearest even) and puts the integer in the low mantissa bits, so the byte is read
/// off the bits: plain vector additions and masks, where `round_ties_even` is a library call
/// per value on baseline x86-64 (no SSE4.1) and a saturating `as u8` is several instructions.
#[inline(always)]
pub fn quantize_u8(x: f32, scale: f32) -> u8 {
    const SHIFT: f32 = 12_582_912.0;
    (((x * scale).clamp(0.0, 255.0) + SHIFT).to_bits() & 0xFF) as u8
}

/// The largest value of `x`, at least 0 (`max(0, x_0, x_1, …)` with NaN ignored, as
/// `f32::max` does): the range of a convolution input. Folded in 16 independent lanes, which
/// the compiler vectorises (a single running `f32::max` is a scalar dependency chain: 7 % of
/// an int8 pass). The maximum is exact, so the lanes give the value of the sequential fold.
pub(crate) fn max_or_zero(x: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    let tail = chunks.remainder().iter().fold(0.0f32, |m, &v| m.max(v));
    acc.iter().fold(tail, |m, &v| m.max(v))
}

/// Quantises `x` into `out` (`out[i] = quantize_u8(x[i], scale)`) and returns
/// [`max_or_zero`]`(x)`, in one pass (the lanes of [`max_or_zero`]), in the copy of the loop
/// `wide` names (the same bytes and maximum in both: every step is element-wise or exact).
/// The slices must have the same length.
pub(crate) fn quantize_max(wide: Wide, x: &[f32], scale: f32, out: &mut [u8]) -> f32 {
    match wide {
        Wide::Baseline => quantize_max_body(x, scale, out),
        #[cfg(target_arch = "x86_64")]
        Wide::Avx512(_) => {
            // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected;
            // the body is safe code (bounds-checked slices).
            unsafe { quantize_max_avx512(x, scale, out) }
        }
    }
}

/// [`quantize_max_body`] compiled with AVX-512.
///
/// # Safety
/// The CPU must run AVX512F and AVX512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_max_avx512(x: &[f32], scale: f32, out: &mut [u8]) -> f32 {
    quantize_max_body(x, scale, out)
}

/// The loop of [`quantize_max`].
#[inline(always)]
fn quantize_max_body(x: &[f32], scale: f32, out: &mut [u8]) -> f32 {
    const L: usize = 16;
    assert_eq!(x.len(), out.len(), "quantize_max: lengths differ");
    let mut acc = [0.0f32; L];
    let mut xs = x.chunks_exact(L);
    let mut os = out.chunks_exact_mut(L);
    for (xc, oc) in (&mut xs).zip(&mut os) {
        for l in 0..L {
            oc[l] = quantize_u8(xc[l], scale);
            acc[l] = acc[l].max(xc[l]);
        }
    }
    let mut tail = 0.0f32;
    for (o, &v) in os.into_remainder().iter_mut().zip(xs.remainder()) {
        *o = quantize_u8(v, scale);
        tail = tail.max(v);
    }
    acc.iter().fold(tail, |m, &v| m.max(v))
}

/// The scale [`quantize_u8`] uses for inputs in `[0, range]`: `255 / range`, 0 for a range
/// of 0.
pub(crate) fn scale_for(range: f32) -> f32 {
    if range > 0.0 {
        255.0 / range
    } else {
        0.0
    }
}

/// The quantiser of a signed input (the stem's normalised image): the range `[lo, hi]` of
/// this input, widened to contain 0, in 256 steps, with the integer zero point `z` standing
/// for the value 0 (so that zero padding is exact).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ZeroPoint {
    /// `255 / (hi − lo)`, 0 for an empty range.
    pub(crate) scale: f32,
    /// The step `(hi − lo) / 255` that dequantises.
    pub(crate) step: f32,
    /// `z = round(−lo · scale)`.
    pub(crate) zero: u8,
}

impl ZeroPoint {
    /// The quantiser of `x`: `lo = min(0, min x)`, `hi = max(0, max x)` (NaN ignored, as
    /// `f32::min`/`f32::max` do). A range that is empty or not finite quantises everything to
    /// the zero point (the value 0).
    pub(crate) fn of(x: &[f32]) -> ZeroPoint {
        Self::of_with(Wide::detect(true), x)
    }

    /// [`ZeroPoint::of`] with the loop of `wide` (the same range with either: minima and
    /// maxima are exact). It runs on one thread before the stem: with AVX-512 its share of
    /// the int8 stem at 224² (one thread) fell from 7.5 % to 3.8 % (the baseline loop runs
    /// 128 bits wide).
    pub(crate) fn of_with(wide: Wide, x: &[f32]) -> ZeroPoint {
        let (lo, hi) = match wide {
            Wide::Baseline => min_max(x),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected.
            Wide::Avx512(_) => unsafe { min_max_avx512(x) },
        };
        let width = hi - lo;
        if !(width > 0.0 && width.is_finite()) {
            return ZeroPoint {
                scale: 0.0,
                step: 0.0,
                zero: 0,
            };
        }
        let scale = 255.0 / width;
        ZeroPoint {
            scale,
            step: width / 255.0,
            zero: quantize_u8(-lo, scale),
        }
    }

    /// `out[i] = clamp(round(x[i] · scale + z), 0, 255)` with ties to even (NaN gives 0).
    /// The slices must have the same length.
    pub(crate) fn quantize(self, x: &[f32], out: &mut [u8]) {
        assert_eq!(x.len(), out.len(), "ZeroPoint::quantize: lengths differ");
        let (s, z) = (self.scale, f32::from(self.zero));
        for (o, &v) in out.iter_mut().zip(x) {
            *o = quantize_u8(v * s + z, 1.0);
        }
    }
}

/// `(min(0, min x), max(0, max x))` with NaN ignored (as `f32::min`/`f32::max`), folded in
/// 16 independent lanes that the compiler vectorises (exact, so any order gives the same).
/// The lanes compare (`v < lo`: false for NaN, so a NaN is skipped), which is one `minps` /
/// `maxps`; `f32::min` there was not vectorised with AVX-512 enabled (spilled scalars).
#[inline(always)]
fn min_max(x: &[f32]) -> (f32, f32) {
    const L: usize = 16;
    let (mut lo, mut hi) = ([0.0f32; L], [0.0f32; L]);
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for l in 0..L {
            lo[l] = if c[l] < lo[l] { c[l] } else { lo[l] };
            hi[l] = if c[l] > hi[l] { c[l] } else { hi[l] };
        }
    }
    let (mut l0, mut h0) = (0.0f32, 0.0f32);
    for &v in chunks.remainder() {
        l0 = l0.min(v);
        h0 = h0.max(v);
    }
    (
        lo.iter().fold(l0, |m, &v| m.min(v)),
        hi.iter().fold(h0, |m, &v| m.max(v)),
    )
}

/// [`min_max`] with AVX-512 registers of 16 lanes (`vminps v, lo` keeps `lo` when `v` is
/// NaN, as the compare of [`min_max`] does; the compiler's own vectorisation of that loop
/// with AVX-512 enabled ran through mask registers and was slower than the baseline).
///
/// # Safety
/// The CPU must run AVX512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn min_max_avx512(x: &[f32]) -> (f32, f32) {
    use std::arch::x86_64::*;
    let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        // SAFETY: `c` holds 16 f32; an unaligned load.
        let v = unsafe { _mm512_loadu_ps(c.as_ptr()) };
        lo = _mm512_min_ps(v, lo);
        hi = _mm512_max_ps(v, hi);
    }
    let (mut l, mut h) = ([0.0f32; 16], [0.0f32; 16]);
    // SAFETY: 16 f32 stored into each array; unaligned stores.
    unsafe {
        _mm512_storeu_ps(l.as_mut_ptr(), lo);
        _mm512_storeu_ps(h.as_mut_ptr(), hi);
    }
    let (mut l0, mut h0) = (0.0f32, 0.0f32);
    for &v in chunks.remainder() {
        l0 = if v < l0 { v } else { l0 };
        h0 = if v > h0 { v } else { h0 };
    }
    (
        l.iter().fold(l0, |m, &v| m.min(v)),
        h.iter().fold(h0, |m, &v| m.max(v)),
    )
}
