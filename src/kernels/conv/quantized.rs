//! The int8 convolution: symmetric per-output-channel `i8` weights, `u8` activations with one
//! calibrated scale per convolution input, exact `i32` products, dequantised in the epilogue.
//!
//! For a convolution with folded weights `W[c, j]` (row `c` of the `cout × (cin·kh·kw)` matrix)
//! and an input whose calibrated maximum is `m`:
//!
//! - weight step `s_w[c] = max_j |W[c, j]| / 127` and `q_w[c, j] = round(W[c, j] · (127 /
//!   max_j |W[c, j]|))`, in `[−127, 127]` (a row of zeros has step 0 and stays 0);
//! - input range `r = max(m, max_p x)`: the calibrated maximum, widened to the largest value of
//!   this input when that is larger (an anomalous part is exactly what lies outside the
//!   training images' range, and clipping it would lower its anomaly score: measured, a
//!   defect's image score fell by 40 % with clipping); for inputs within the calibrated range
//!   this is plain static quantisation;
//! - input step `s_x = r / 255` and `q_x = clamp(round(x · (255 / r)), 0, 255)` (zero point 0:
//!   every convolution input of a ResNet after the stem is the output of a ReLU, so it is ≥ 0;
//!   negative values saturate at 0; `r = 0` quantises everything to 0);
//! - `y[c, p] = act(f32(Σ_j q_w[c, j]·q_x[j, p]) · (s_x·s_w[c]) + bias[c] (+ residual[c, p]))`,
//!   where the sum is exact in `i32` (the kernels of [`crate::kernels::int8`]), `s_x·s_w[c]`
//!   is one f32 product, and the padding is `q_x = 0`.
//!
//! **Signed inputs** (the stem, whose input is the normalised image: [`QuantizedConv::per_image`])
//! are quantised with a zero point instead, from their own range, so they need no calibration:
//! - `lo = min(0, min_p x)`, `hi = max(0, max_p x)`, step `s_x = (hi − lo) / 255`, zero point
//!   `z = round(−lo · (255 / (hi − lo)))` and `q_x = clamp(round(x · (255 / (hi − lo)) + z), 0,
//!   255)` (an empty range quantises everything to `z = 0`);
//! - the padding is `q_x = z`, which stands for 0 exactly, and the epilogue subtracts the exact
//!   `i32` offset `z · Σ_j q_w[c, j]`: `y[c, p] = act(f32(Σ_j q_w[c, j]·q_x[j, p] − z·Σ_j
//!   q_w[c, j]) · (s_x·s_w[c]) + bias[c] (+ residual[c, p]))`, the convolution of `q_w·s_w` and
//!   `(q_x − z)·s_x`.
//!
//! `round` rounds half to even (`f32::round_ties_even`: one instruction on x86-64 with SSE4.1
//! and on AArch64, where `f32::round` is a library call that took 12 % of a forward pass). Apart from the one rounding of the i32
//! sum to f32 and of the scaled value, the result is the f32 convolution of the
//! fake-quantised weights `q_w·s_w` and inputs `q_x·s_x`, which is how the tests check it.

use rayon::prelude::*;

use super::im2col::Window;
use super::{Conv2d, PAR_ELEMS};
use crate::error::{Error, Result};
use crate::kernels::amx::Emit;
use crate::kernels::gemm::Parallelism;
use crate::kernels::int8::{
    gemm_quantizing_widened, gemm_u8i8_emit, gemm_u8i8_shifted_emit, quantize_max, scale_for,
    Int8Isa, PackedWeights, ShiftedPlanes, ZeroPoint, MAX_DEPTH, MAX_SIZE,
};
use crate::kernels::wide::Wide;

/// A convolution with int8 weights and u8 inputs (see the module documentation for the
/// formulas).
#[derive(Debug, Clone)]
pub struct QuantizedConv {
    /// Output channels.
    pub cout: usize,
    /// Input channels.
    pub cin: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
    weights: PackedWeights,
    /// `s_w[c]`.
    w_step: Vec<f32>,
    bias: Vec<f32>,
    input: InputRange,
    /// `Σ_j q_w[c, j]` (for the zero point of [`InputRange::PerImage`]).
    row_sums: Vec<i32>,
}

/// How a convolution's input is quantised (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
enum InputRange {
    /// `[0, max(m, max x)]`, zero point 0: `m` is the calibrated maximum.
    Calibrated(f32),
    /// `[min(0, min x), max(0, max x)]` with a zero point: signed inputs.
    PerImage,
}

/// Reusable buffers of [`QuantizedConv::forward_image`] (grown, never shrunk).
#[derive(Debug, Default, Clone)]
pub struct QuantScratch {
    x: Vec<u8>,
    cols: Vec<u8>,
    pack: Vec<u32>,
    dequant: Vec<f32>,
    offset: Vec<i32>,
}

impl QuantScratch {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.x.capacity()
            + self.cols.capacity()
            + self.pack.capacity() * 4
            + self.dequant.capacity() * 4
            + self.offset.capacity() * 4
    }
}

/// The i8 weights of one row and its step (see the module documentation).
fn quantize_row(row: &[f32], out: &mut [i8]) -> f32 {
    let amax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 {
        out.fill(0);
        return 0.0;
    }
    let inv = 127.0 / amax;
    for (o, &v) in out.iter_mut().zip(row) {
        *o = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    amax / 127.0
}

impl QuantizedConv {
    /// Quantises `conv` for inputs calibrated to the maximum `input_max`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `input_max` is negative, NaN or infinite, if a weight or bias
    /// is not finite, or if `cin·kh·kw` exceeds [`MAX_DEPTH`].
    pub fn new(conv: &Conv2d, input_max: f32) -> Result<QuantizedConv> {
        if !(input_max.is_finite() && input_max >= 0.0) {
            return Err(Error::input(format!(
                "int8 convolution: the calibrated input maximum must be finite and ≥ 0, got \
                 {input_max}"
            )));
        }
        Self::with_input(conv, InputRange::Calibrated(input_max))
    }

    /// Quantises `conv` for signed inputs, each quantised with its own range and a zero point
    /// (see the module documentation): the stem, whose input is the normalised image. Needs
    /// no calibration.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if a weight or bias is not finite, or if `cin·kh·kw` exceeds
    /// [`MAX_DEPTH`].
    pub fn per_image(conv: &Conv2d) -> Result<QuantizedConv> {
        Self::with_input(conv, InputRange::PerImage)
    }

    fn with_input(conv: &Conv2d, input: InputRange) -> Result<QuantizedConv> {
        let k = conv.cin * conv.kh * conv.kw;
        if k > MAX_DEPTH {
            return Err(Error::input(format!(
                "int8 convolution: depth cin·kh·kw = {k} exceeds the int8 kernels' limit of \
                 {MAX_DEPTH}"
            )));
        }
        let weight = conv.weight();
        if weight.len() != conv.cout * k {
            return Err(Error::input(
                "int8 convolution: the weights are not loaded (stashed?)",
            ));
        }
        if weight.iter().chain(conv.bias()).any(|v| !v.is_finite()) {
            return Err(Error::input(
                "int8 convolution: a weight or bias is not finite",
            ));
        }
        let mut q = vec![0i8; weight.len()];
        let mut w_step = Vec::with_capacity(conv.cout);
        for (row, out) in weight.chunks_exact(k).zip(q.chunks_exact_mut(k)) {
            w_step.push(quantize_row(row, out));
        }
        // |Σ| ≤ 127·MAX_DEPTH, far inside i32.
        let row_sums = q
            .chunks_exact(k)
            .map(|r| r.iter().map(|&v| i32::from(v)).sum())
            .collect();
        Ok(QuantizedConv {
            cout: conv.cout,
            cin: conv.cin,
            kh: conv.kh,
            kw: conv.kw,
            stride: conv.stride,
            pad: conv.pad,
            weights: PackedWeights::new(&q, conv.cout, k),
            w_step,
            bias: conv.bias().to_vec(),
            input,
            row_sums,
        })
    }

    /// The calibrated input maximum `m`, or `None` for a convolution that quantises each input
    /// with its own range ([`QuantizedConv::per_image`]).
    pub fn input_max(&self) -> Option<f32> {
        match self.input {
            InputRange::Calibrated(m) => Some(m),
            InputRange::PerImage => None,
        }
    }

    /// Bytes of the packed weights, scales and bias.
    pub fn bytes(&self) -> usize {
        self.weights.bytes() + (self.w_step.len() + self.bias.len() + self.row_sums.len()) * 4
    }

    /// Output size for an `h × w` input (as [`Conv2d::out_hw`]).
    ///
    /// # Panics
    /// If the padded input is smaller than the kernel.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        self.window().out_hw(h, w, "QuantizedConv")
    }

    fn window(&self) -> Window {
        Window {
            kh: self.kh,
            kw: self.kw,
            stride: self.stride,
            pad: self.pad,
        }
    }

    /// One image: `input` is `[cin, h, w]`, `out` is `[cout, oh, ow]`; computes
    /// `out = act(conv(input) + bias (+ residual))` in int8 (see the module documentation).
    /// The result does not depend on `par` or on the number of threads.
    ///
    /// # Panics
    /// If a slice length does not match the shapes.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_image(
        &self,
        input: &[f32],
        h: usize,
        w: usize,
        out: &mut [f32],
        residual: Option<&[f32]>,
        relu: bool,
        scratch: &mut QuantScratch,
        par: Parallelism,
        isa: Int8Isa,
    ) {
        let (oh, ow) = self.out_hw(h, w);
        let p = oh * ow;
        let taps = self.kh * self.kw;
        let k = self.cin * taps;
        assert_eq!(input.len(), self.cin * h * w, "QuantizedConv: input length");
        assert_eq!(out.len(), self.cout * p, "QuantizedConv: output length");
        if let Some(r) = residual {
            assert_eq!(r.len(), out.len(), "QuantizedConv: residual length");
        }
        let rayon = par == Parallelism::Rayon;
        let (w_step, bias) = (&self.w_step[..], &self.bias[..]);
        let epilogue_for = |dequant, range: f32| {
            epilogue::<false>(dequant, w_step, range / 255.0, bias, residual, relu, p)
        };

        // The range is the calibrated maximum, widened to this input's maximum: the input is
        // quantised with the calibrated range while its maximum is found, and again only when
        // the maximum is larger.
        let limit = match self.input {
            InputRange::Calibrated(m) => m,
            InputRange::PerImage => {
                let zp = ZeroPoint::of(input);
                grow(&mut scratch.x, input.len());
                let xq = &mut scratch.x[..input.len()];
                if rayon && input.len() >= PAR_ELEMS {
                    xq.par_chunks_mut(1 << 14)
                        .zip(input.par_chunks(1 << 14))
                        .for_each(|(d, s)| zp.quantize(s, d));
                } else {
                    zp.quantize(input, xq);
                }
                grow(&mut scratch.cols, k * p);
                let cols = &mut scratch.cols[..k * p];
                self.window()
                    .im2col_padded(&scratch.x[..input.len()], h, w, cols, par, zp.zero);
                let offset = &mut scratch.offset;
                offset.clear();
                let z = i32::from(zp.zero);
                offset.extend(self.row_sums.iter().map(|&r| z * r));
                let mut emit = epilogue::<true>(
                    &mut scratch.dequant,
                    w_step,
                    zp.step,
                    bias,
                    residual,
                    relu,
                    p,
                );
                emit.offset = offset;
                gemm_u8i8_emit(
                    &self.weights,
                    &scratch.cols[..k * p],
                    p,
                    out,
                    &mut scratch.pack,
                    par,
                    isa,
                    emit,
                );
                return;
            }
        };
        // The quantising loops run 512 bits wide where the CPU has AVX-512 (same bytes).
        let wide = Wide::detect(true);

        // A plain 1×1 convolution's input is its matrix of activations: quantised while it is
        // packed, without a byte copy.
        let direct = self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0;
        if direct {
            let dequant = &mut scratch.dequant;
            gemm_quantizing_widened(
                &self.weights,
                input,
                limit,
                p,
                out,
                &mut scratch.pack,
                par,
                isa,
                |range| epilogue_for(dequant, range),
            );
            return;
        }

        // A stride-1 window that keeps the size (3×3 pad 1): the input quantised into planes
        // with zero margins, packed straight from them (no im2col matrix).
        let same = self.stride == 1 && self.kh == self.kw && self.kh == 2 * self.pad + 1;
        if same && self.kh <= MAX_SIZE {
            let (cin, hw, pad) = (self.cin, h * w, self.pad);
            let len = ShiftedPlanes::len(cin, h, w, pad);
            let margin = ShiftedPlanes::margin(w, pad);
            grow(&mut scratch.x, len);
            let quant = |xq: &mut [u8], scale: f32| -> f32 {
                let (head, rest) = xq.split_at_mut(margin);
                let (planes, tail) = rest.split_at_mut(cin * (hw + margin));
                head.fill(0);
                tail.fill(0);
                let plane = |(d, s): (&mut [u8], &[f32])| {
                    let (body, after) = d.split_at_mut(hw);
                    after.fill(0);
                    quantize_max(wide, s, scale, body)
                };
                if rayon && input.len() >= PAR_ELEMS {
                    planes
                        .par_chunks_mut(hw + margin)
                        .zip(input.par_chunks(hw))
                        .with_min_len((1 << 14) / hw.max(1))
                        .map(plane)
                        .reduce(|| 0.0, f32::max)
                } else {
                    planes
                        .chunks_mut(hw + margin)
                        .zip(input.chunks(hw))
                        .map(plane)
                        .fold(0.0, f32::max)
                }
            };
            let xq = &mut scratch.x[..len];
            let seen = quant(xq, scale_for(limit));
            let range = limit.max(seen);
            if seen > limit {
                quant(xq, scale_for(range));
            }
            // (Always `Some`: the size and the length were checked above.)
            if let Some(planes) = ShiftedPlanes::new(&scratch.x[..len], cin, h, w, pad) {
                gemm_u8i8_shifted_emit(
                    &self.weights,
                    planes,
                    out,
                    &mut scratch.pack,
                    par,
                    isa,
                    epilogue_for(&mut scratch.dequant, range),
                );
                return;
            }
        }

        // Otherwise quantise the input, then its u8 im2col matrix.
        grow(&mut scratch.x, input.len());
        let xq = &mut scratch.x[..input.len()];
        let quant = |xq: &mut [u8], scale: f32| -> f32 {
            if rayon && input.len() >= PAR_ELEMS {
                xq.par_chunks_mut(1 << 14)
                    .zip(input.par_chunks(1 << 14))
                    .map(|(d, s)| quantize_max(wide, s, scale, d))
                    .reduce(|| 0.0, f32::max)
            } else {
                quantize_max(wide, input, scale, xq)
            }
        };
        let seen = quant(xq, scale_for(limit));
        let range = limit.max(seen);
        if seen > limit {
            quant(xq, scale_for(range));
        }
        grow(&mut scratch.cols, k * p);
        self.window().im2col(
            &scratch.x[..input.len()],
            h,
            w,
            &mut scratch.cols[..k * p],
            par,
        );
        gemm_u8i8_emit(
            &self.weights,
            &scratch.cols[..k * p],
            p,
            out,
            &mut scratch.pack,
            par,
            isa,
            epilogue_for(&mut scratch.dequant, range),
        );
    }
}

/// The epilogue of a call whose input step is `x_step` (see the module documentation): the
/// exact sums dequantised (`dequant[c] = s_x·s_w[c]`, written here), plus bias (and residual),
/// then ReLU if asked, as each tile of sums is finished, while it is in cache. Without a zero
/// point (`ZP = false`); set [`Dequant::offset`] and use `ZP = true` for one.
fn epilogue<'a, const ZP: bool>(
    dequant: &'a mut Vec<f32>,
    w_step: &[f32],
    x_step: f32,
    bias: &'a [f32],
    residual: Option<&'a [f32]>,
    relu: bool,
    p: usize,
) -> Dequant<'a, ZP> {
    dequant.clear();
    dequant.extend(w_step.iter().map(|&s| x_step * s));
    Dequant {
        dequant,
        offset: &[],
        bias,
        residual,
        relu,
        p,
    }
}

/// The epilogue of [`epilogue`]. A type rather than a closure so that its loop inlines into
/// (and vectorises with) the AVX-512 copy of the AMX driver's loop. With `ZP`, the sums of
/// row `c` are first reduced by `offset[c]` (exactly, in `i32`); without, there is no
/// subtraction in the loop.
struct Dequant<'a, const ZP: bool> {
    dequant: &'a [f32],
    /// `z·Σ_j q_w[c, j]` per output channel (read only with `ZP`).
    offset: &'a [i32],
    bias: &'a [f32],
    residual: Option<&'a [f32]>,
    relu: bool,
    p: usize,
}

impl<const ZP: bool> Emit<i32, f32> for Dequant<'_, ZP> {
    #[inline(always)]
    fn emit(&self, c: usize, j0: usize, sums: &[i32], o: &mut [f32]) {
        let (s, b, relu) = (self.dequant[c], self.bias[c], self.relu);
        // `a − off = Σ_j q_w[c, j]·(q_x − z)` is at most 255·127·MAX_DEPTH in size, like `a`
        // and `off`: no overflow.
        let off = if ZP { self.offset[c] } else { 0 };
        match self.residual {
            Some(r) => {
                let r = &r[c * self.p + j0..][..o.len()];
                for ((o, &a), &r) in o.iter_mut().zip(sums).zip(r) {
                    let v = (a - off) as f32 * s + b + r;
                    *o = if relu { v.max(0.0) } else { v };
                }
            }
            None => {
                for (o, &a) in o.iter_mut().zip(sums) {
                    let v = (a - off) as f32 * s + b;
                    *o = if relu { v.max(0.0) } else { v };
                }
            }
        }
    }
}

/// Grows `buf` to at least `n` elements (contents unspecified; callers overwrite them).
fn grow<T: Copy + Default>(buf: &mut Vec<T>, n: usize) {
    if buf.len() < n {
        buf.resize(n, T::default());
    }
}

#[cfg(test)]
mod tests {
    use crate::kernels::int8::quantize_u8;

    /// The bit-level rounding equals `f32::round_ties_even` on every f32 in [0.25, 255] and
    /// on a stride of the values below (the values the input quantiser rounds), ties
    /// included; NaN gives 0 like `as u8`; values outside the range saturate.
    #[test]
    fn byte_rounding_is_round_ties_even() {
        // Every f32 in [0.25, 255] (where the results 0..=255 and every tie lie: 84 M values),
        // and every 1009th bit pattern below 0.25 (all of which round to 0). Every f32 in
        // [0, 255] would be 1.1 G values, 13× the time, mostly below 0.25.
        let check = |bits: u32| {
            let y = f32::from_bits(bits);
            assert_eq!(quantize_u8(y, 1.0), y.round_ties_even() as u8, "{y}");
        };
        (0..0.25f32.to_bits()).step_by(1009).for_each(check);
        (0.25f32.to_bits()..=255f32.to_bits()).for_each(check);
        assert_eq!(quantize_u8(f32::NAN, 1.0), 0);
        assert_eq!(quantize_u8(-3.0, 1.0), 0);
        assert_eq!(quantize_u8(300.0, 1.0), 255);
        assert_eq!(quantize_u8(2.5, 2.0), 5);
    }
}
