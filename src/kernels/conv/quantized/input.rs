//! How an int8 convolution's input is quantised: its range (calibrated, or the image's own),
//! the range its last input was quantised with, and the quantiser of an f32 input whose
//! calibrated range widens to the input's maximum (see the parent module's documentation).

use std::sync::atomic::{AtomicU32, Ordering};

use super::{grow, QuantizedConv};
use crate::kernels::int8::{quantize_max, scale_for};
use crate::kernels::wide::Wide;

/// The range a convolution's last input was quantised with, as the bits of an `f32` (NaN
/// before the first): whether it exceeded the calibrated range is a hint that the next input
/// will too, so that the convolution before it writes f32 at once instead of bytes that would
/// be thrown away ([`QuantizedConv::exceeded_last`]). It only ever changes which path computes
/// a result, never the result (every path gives the same bits), so it may race between
/// threads; a clone starts afresh.
#[derive(Debug)]
pub(super) struct LastRange(AtomicU32);

impl Default for LastRange {
    fn default() -> Self {
        LastRange(AtomicU32::new(f32::NAN.to_bits()))
    }
}

impl Clone for LastRange {
    fn clone(&self) -> Self {
        LastRange::default()
    }
}

/// How a convolution's input is quantised (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum InputRange {
    /// `[0, max(m, max x)]`, zero point 0: `m` is the calibrated maximum.
    Calibrated(f32),
    /// `[min(0, min x), max(0, max x)]` with a zero point: signed inputs.
    PerImage,
}

impl QuantizedConv {
    /// Whether the last input that this convolution quantised itself (an f32 input) exceeded
    /// its calibrated range, so that it was widened. The convolution before it then writes its
    /// output in f32 rather than as bytes for it: bytes for a range that the input exceeds are
    /// not valid, and the output would be computed a second time. On WRN-50-2 with the
    /// backbone bench's calibration (16 noise images) four of 50 outputs exceed their range on
    /// the test image, and computing them twice took 10 % of an int8 pass. Images that
    /// resemble each other (an inspection line) tend to exceed the same ranges; an input that
    /// does not exceed any more clears the hint when it is quantised. Results never depend on
    /// it.
    pub(crate) fn exceeded_last(&self) -> bool {
        match (self.input, self.last_range()) {
            (InputRange::Calibrated(m), Some(range)) => range > m,
            _ => false,
        }
    }

    /// The range `[0, r]` that the last input of this convolution was quantised with: its
    /// calibrated range, or the input's maximum where that was larger (see the module
    /// documentation); `None` before the first input, for a clone, and for a convolution that
    /// quantises each input with its own range ([`QuantizedConv::per_image`]).
    pub(crate) fn last_range(&self) -> Option<f32> {
        let r = f32::from_bits(self.last.0.load(Ordering::Relaxed));
        (!r.is_nan()).then_some(r)
    }

    /// Notes that an input of calibrated range `limit` was quantised with `range` (`limit`, or
    /// wider: see [`QuantizedConv::last_range`]).
    pub(super) fn note_range(&self, range: f32, limit: f32) {
        debug_assert!(range >= limit);
        // Stored only when it changed: one cache line that other threads read.
        if self.last.0.load(Ordering::Relaxed) != range.to_bits() {
            self.last.0.store(range.to_bits(), Ordering::Relaxed);
        }
    }

    /// The calibrated input maximum `m`, or `None` for a convolution that quantises each input
    /// with its own range ([`QuantizedConv::per_image`]).
    pub fn input_max(&self) -> Option<f32> {
        match self.input {
            InputRange::Calibrated(m) => Some(m),
            InputRange::PerImage => None,
        }
    }
}

/// Quantises `x` into `buf[..x.len()]` (grown if short) with the calibrated range `limit`,
/// widened to `x`'s maximum when that is larger (quantised a second time then); returns the
/// range used.
pub(super) fn quantize_input(
    x: &[f32],
    limit: f32,
    buf: &mut Vec<u8>,
    rayon: bool,
    wide: Wide,
) -> f32 {
    let n = x.len();
    grow(buf, n);
    let xq = &mut buf[..n];
    let quant = |xq: &mut [u8], scale: f32| -> f32 {
        if rayon && crate::kernels::par::splits(n) {
            let chunk = |_: &mut (), i: usize, d: &mut [u8]| {
                quantize_max(wide, &x[i << 14..][..d.len()], scale, d)
            };
            crate::kernels::par::chunks_mut(xq, 1 << 14, || (), chunk, 0.0, f32::max)
        } else {
            quantize_max(wide, x, scale, xq)
        }
    };
    let seen = quant(xq, scale_for(limit));
    let range = limit.max(seen);
    if seen > limit {
        quant(xq, scale_for(range));
    }
    range
}
