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
//! **Signed inputs** (such as a stem's, the normalised image: [`QuantizedConv::per_image`]) are
//! quantised with a zero point instead, from their own range, so they need no calibration:
//! - `lo = min(0, min_p x)`, `hi = max(0, max_p x)`, step `s_x = (hi − lo) / 255`, zero point
//!   `z = round(−lo · (255 / (hi − lo)))` and `q_x = clamp(round(x · (255 / (hi − lo)) + z), 0,
//!   255)` (an empty range quantises everything to `z = 0`);
//! - the padding is `q_x = z`, which stands for 0 exactly, and the epilogue subtracts the exact
//!   `i32` offset `z · Σ_j q_w[c, j]`: `y[c, p] = act(f32(Σ_j q_w[c, j]·q_x[j, p] − z·Σ_j
//!   q_w[c, j]) · (s_x·s_w[c]) + bias[c] (+ residual[c, p]))`, the convolution of `q_w·s_w` and
//!   `(q_x − z)·s_x`;
//! - with AMX, a window of "same" padding on at most four input channels (a ResNet stem:
//!   3 channels, 7×7, stride 2) reads the quantised image as a narrow channels-last grid: each
//!   pixel padded to four bytes, 16 pixels to a tile row, so the window's columns are words of
//!   `k` and each of its rows is one tile product (`amx::direct::Grid`). No im2col matrix is
//!   written; the sums are the same, and the stem's max-pool can be fused in
//!   (`per_image.rs`). ResNet-18 int8 backbone 2.56 → 2.13 ms, then 2.24 → 2.07 ms with the
//!   fused max-pool (BENCHMARKS.md, eleventh session).
//!
//! **Chained activations.** Between two int8 convolutions of a block's main path the
//! activation need not exist in f32: [`QuantizedConv::forward`] can write its output as the
//! bytes the next convolution would make of it (`q = clamp(round(y · (255 / m')), 0, 255)`
//! with the next input's calibrated maximum `m'`, in the epilogue, while the sums are in
//! cache) and read its input in that form. A quarter of the bytes are written and read, and
//! the next convolution has nothing left to quantise. The epilogue notes whether a value
//! exceeded `m'`; if one did, the bytes are not used and the output is computed again in
//! f32, so that the next convolution widens its range as above. Either way the result is
//! bit-identical to the f32 chain.
//!
//! `round` rounds half to even (`f32::round_ties_even`: one instruction on x86-64 with SSE4.1
//! and on AArch64, where `f32::round` is a library call that took 12 % of a forward pass). Apart from the one rounding of the i32
//! sum to f32 and of the scaled value, the result is the f32 convolution of the
//! fake-quantised weights `q_w·s_w` and inputs `q_x·s_x`, which is how the tests check it.

use std::sync::OnceLock;

mod direct;
mod epilogue;
mod forms;
mod input;
mod per_image;

use per_image::PerImageOut;

use forms::Plain;
pub(crate) use forms::{QInput, QOutput, Residual};
use input::{quantize_input, InputRange, LastRange};

use super::im2col::Window;
use super::Conv2d;
use crate::error::{Error, Result};
use crate::kernels::amx::direct::{DirectWeights, Grid, NARROW};
use crate::kernels::amx::{self, no_hand_on, Emit, HandOn, Handoff};
use crate::kernels::gemm::Parallelism;
use crate::kernels::int8::{
    amx_k4, gemm_quantizing_widened, gemm_u8i8_emit, gemm_u8i8_prepacked_emit,
    gemm_u8i8_shifted_emit, pack_panels_quantizing, quantize_max, scale_for, Int8Isa,
    PackedWeights, ShiftedPlanes, MAX_DEPTH, MAX_SIZE,
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
    /// The weights for the packed kernels: made on first use from [`QuantizedConv::direct`]
    /// when that exists (on AMX CPUs those convolutions never use them unless another kernel
    /// is asked for), so that the weights are held once.
    weights: OnceLock<PackedWeights>,
    /// `s_w[c]`.
    w_step: Vec<f32>,
    bias: Vec<f32>,
    input: InputRange,
    /// `Σ_j q_w[c, j]` (for the zero point of [`InputRange::PerImage`]).
    row_sums: Vec<i32>,
    /// The weights for the direct AMX path ([`direct`]), when this CPU has AMX-INT8 and the
    /// convolution is an odd window wider than 1 with "same" padding, at stride 1 or 2, on 64·n
    /// input channels.
    direct: Option<DirectWeights>,
    /// The range the last input was quantised with ([`QuantizedConv::last_range`], and
    /// [`QuantizedConv::exceeded_last`] when it is wider than the calibrated one).
    last: LastRange,
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
    /// (see the module documentation), such as a stem's, whose input is the normalised image.
    /// Needs no calibration.
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
        let window = Grid::takes_window(conv.kh, conv.kw, conv.stride, conv.pad);
        let direct = match (window, amx::Int8::detect(), input) {
            // (Not a narrow grid: the images that a previous convolution writes for this one
            // hold whole tile rows of channels.)
            (true, Some(_), InputRange::Calibrated(_)) if conv.cin != NARROW => {
                DirectWeights::new(&q, conv.cout, conv.cin, conv.kh)
            }
            // A stem: its image is made a narrow grid of four channels, the added ones with
            // zero weights (see `amx::direct::Grid`).
            (true, Some(_), InputRange::PerImage) if conv.cin <= NARROW => {
                DirectWeights::new_narrow(&q, conv.cout, conv.cin, conv.kh)
            }
            _ => None,
        };
        let weights = match (&direct, input) {
            (Some(_), InputRange::Calibrated(_)) => OnceLock::new(),
            _ => OnceLock::from(PackedWeights::new(&q, conv.cout, k)),
        };
        Ok(QuantizedConv {
            direct,
            cout: conv.cout,
            cin: conv.cin,
            kh: conv.kh,
            kw: conv.kw,
            stride: conv.stride,
            pad: conv.pad,
            weights,
            w_step,
            bias: conv.bias().to_vec(),
            input,
            row_sums,
            last: LastRange::default(),
        })
    }

    /// Whether this convolution reads its input as AMX panels ([`QInput::Panels`]) with
    /// `isa`, and with how many words of `k` per column: a plain 1×1 convolution with a
    /// calibrated range, on the AMX kernel.
    pub(crate) fn panels_k4(&self, isa: Int8Isa) -> Option<usize> {
        let calibrated = matches!(self.input, InputRange::Calibrated(_));
        (self.plain_1x1() && calibrated)
            .then(|| amx_k4(self.packed(), isa))
            .flatten()
    }

    /// An f32 input (`[cin, h, w]`) quantised with the calibrated range and packed into
    /// `panels` as [`QInput::Panels`] for this convolution (a plain 1×1 one on AMX,
    /// [`Self::panels_k4`]): the bytes its f32 path packs. Returns whether the panels are
    /// valid (packed, and no value exceeded the range; otherwise they are not used and the
    /// input is read as f32, where the range widens).
    ///
    /// # Panics
    /// If a length does not match.
    pub(crate) fn pack_panels(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        panels: &mut [u32],
        par: Parallelism,
        isa: Int8Isa,
    ) -> bool {
        let Some(limit) = self.input_max() else {
            return false;
        };
        if !self.plain_1x1() {
            return false;
        }
        let seen = pack_panels_quantizing(self.packed(), x, limit, h * w, panels, par, isa);
        seen.is_some_and(|seen| seen <= limit)
    }

    /// Whether, with `isa`, this convolution can read the AMX panels that `first` reads
    /// ([`Self::panels_k4`]), subsampled at its stride ([`amx::subsample_panels`]): a 1×1
    /// convolution without padding on the same input channels, with the same calibrated range
    /// (so the same bytes) and words of `k` per column. A ResNet block's downsample and its
    /// first convolution, which read the block's input.
    pub(crate) fn reads_panels_of(&self, first: &QuantizedConv, isa: Int8Isa) -> bool {
        let range = self.input_max();
        self.pointwise()
            && self.cin == first.cin
            && range.is_some()
            && range == first.input_max()
            && first.panels_k4(isa).is_some()
            && amx_k4(self.packed(), isa) == first.panels_k4(isa)
    }

    /// A 1×1 convolution without padding, at any stride.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.pad == 0
    }

    /// A 1×1 convolution at stride 1 without padding: its input is its matrix of activations.
    fn plain_1x1(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// Bytes of the packed weights, scales and bias.
    pub fn bytes(&self) -> usize {
        self.weights.get().map_or(0, PackedWeights::bytes)
            + self.direct.as_ref().map_or(0, DirectWeights::bytes)
            + (self.w_step.len() + self.bias.len() + self.row_sums.len()) * 4
    }

    /// Output size for an `h × w` input (as [`Conv2d::out_hw`]).
    ///
    /// # Panics
    /// If the padded input is smaller than the kernel.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        self.window().out_hw(h, w, "QuantizedConv")
    }

    /// The weights for the packed kernels (see [`QuantizedConv::weights`]).
    fn packed(&self) -> &PackedWeights {
        self.weights.get_or_init(|| match &self.direct {
            Some(d) => {
                let k = self.cin * self.kh * self.kw;
                PackedWeights::new(&d.matrix(), self.cout, k)
            }
            // (Never reached: without direct weights the cell is filled at construction.)
            None => PackedWeights::new(&[], 0, 0),
        })
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
        let io = (QInput::F32(input), QOutput::F32(out));
        let residual = residual.map(Residual::F32);
        self.forward(io, h, w, residual, relu, scratch, par, isa);
    }

    /// The product of an input quantised with the calibrated range `limit` (widened to an f32
    /// input's maximum); `make(range)` gives the epilogue of the range used. Returns whether
    /// `hand_on` was written (only by a plain 1×1 convolution on AMX).
    ///
    /// # Panics
    /// If the input is [`QInput::Panels`] and this convolution does not take them
    /// ([`QuantizedConv::panels_k4`]).
    #[allow(clippy::too_many_arguments)]
    fn forward_calibrated<T: Send, E: Emit<i32, T>, H: Handoff<T>>(
        &self,
        input: QInput<'_>,
        limit: f32,
        h: usize,
        w: usize,
        out: &mut [T],
        bufs: Bufs<'_>,
        par: Parallelism,
        isa: Int8Isa,
        make: impl FnOnce(f32) -> E,
        hand_on: Option<HandOn<'_, H>>,
    ) -> bool {
        let (oh, ow) = self.out_hw(h, w);
        let p = oh * ow;
        let k = self.cin * self.kh * self.kw;
        let rayon = par == Parallelism::Rayon;
        let make = |range: f32| {
            self.note_range(range, limit);
            make(range)
        };
        // The quantising loops run 512 bits wide where the CPU has AVX-512 (same bytes).
        let wide = Wide::detect(true);
        let Bufs {
            x: xbuf,
            cols,
            pack,
        } = bufs;

        // A plain 1×1 convolution's input is its matrix of activations: quantised while it is
        // packed, without a byte copy (or packed as it is when already quantised, or not at
        // all when the previous convolution packed it).
        // Panels of a 1×1 convolution's input hold the pixels it reads: all of them at stride
        // 1, every `stride`-th one otherwise (see `reads_panels_of`).
        if let (true, QInput::Panels(panels)) = (self.pointwise(), input) {
            let map = make(limit);
            return gemm_u8i8_prepacked_emit(self.packed(), panels, p, out, par, isa, map, hand_on);
        }
        if self.plain_1x1() {
            let w = self.packed();
            return match input {
                QInput::F32(x) => {
                    gemm_quantizing_widened(w, x, limit, p, out, pack, par, isa, make, hand_on)
                }
                QInput::Quantized(q) => {
                    gemm_u8i8_emit(w, q, p, out, pack, par, isa, make(limit), hand_on)
                }
                QInput::Panels(_) => unreachable!("read above"),
                QInput::ImageBf16(_) => unreachable!("refused by `forward`"),
                QInput::ImageU8(_) => panic!("QuantizedConv: an image for a 1×1 convolution"),
            };
        }

        // With AMX, an odd window with "same" padding (3×3 pad 1), at stride 1 or 2, on 64·n
        // channels reads its input channels-last, without packing it (see `amx::direct`).
        if let Some(d) = self.direct_input(input, limit, h, w, isa, (xbuf, cols), par) {
            amx::direct::conv(d.op, d.weights, d.x, out, d.parallel, &make(d.range));
            return false;
        }
        let input = match input {
            QInput::F32(x) => Plain::F32(x),
            QInput::Quantized(q) => Plain::Quantized(q),
            QInput::Panels(_) => {
                panic!("QuantizedConv: AMX panels for a convolution that is not 1×1")
            }
            QInput::ImageBf16(_) => unreachable!("refused by `forward`"),
            QInput::ImageU8(_) => panic!("QuantizedConv: an image for a convolution not direct"),
        };

        // A stride-1 window that keeps the size (3×3 pad 1): the input quantised (or copied)
        // into planes with zero margins, packed straight from them (no im2col matrix).
        let same = self.stride == 1 && self.kh == self.kw && self.kh == 2 * self.pad + 1;
        if same && self.kh <= MAX_SIZE {
            let (cin, hw, pad) = (self.cin, h * w, self.pad);
            let len = ShiftedPlanes::len(cin, h, w, pad);
            let margin = ShiftedPlanes::margin(w, pad);
            grow(xbuf, len);
            // Writes the planes with `plane(dst, src)` (which returns the maximum it saw),
            // zeroes the margins; returns the largest maximum.
            let fill = |xq: &mut [u8], plane: &(dyn Fn(&mut [u8], usize) -> f32 + Sync)| -> f32 {
                let (head, rest) = xq.split_at_mut(margin);
                let (planes, tail) = rest.split_at_mut(cin * (hw + margin));
                head.fill(0);
                tail.fill(0);
                let one = |(c, d): (usize, &mut [u8])| {
                    let (body, after) = d.split_at_mut(hw);
                    after.fill(0);
                    plane(body, c)
                };
                if rayon && crate::kernels::par::splits(cin * hw) {
                    // Planes of at least 16 K bytes to a task.
                    let per = ((1 << 14) / hw.max(1)).max(1);
                    let task = |_: &mut (), t: usize, ds: &mut [u8]| {
                        ds.chunks_mut(hw + margin)
                            .enumerate()
                            .map(|(i, d)| one((per * t + i, d)))
                            .fold(0.0, f32::max)
                    };
                    let len = per * (hw + margin);
                    crate::kernels::par::chunks_mut(planes, len, || (), task, 0.0, f32::max)
                } else {
                    planes
                        .chunks_mut(hw + margin)
                        .enumerate()
                        .map(one)
                        .fold(0.0, f32::max)
                }
            };
            let xq = &mut xbuf[..len];
            let range = match input {
                Plain::F32(x) => {
                    let quant = |scale: f32| {
                        move |d: &mut [u8], c: usize| {
                            quantize_max(wide, &x[c * hw..][..hw], scale, d)
                        }
                    };
                    let seen = fill(xq, &quant(scale_for(limit)));
                    let range = limit.max(seen);
                    if seen > limit {
                        fill(xq, &quant(scale_for(range)));
                    }
                    range
                }
                Plain::Quantized(q) => {
                    fill(xq, &|d: &mut [u8], c: usize| {
                        d.copy_from_slice(&q[c * hw..][..hw]);
                        0.0
                    });
                    limit
                }
            };
            // (Always `Some`: the size and the length were checked above.)
            if let Some(planes) = ShiftedPlanes::new(&xbuf[..len], cin, h, w, pad) {
                gemm_u8i8_shifted_emit(self.packed(), planes, out, pack, par, isa, make(range));
                return false;
            }
        }

        // Otherwise quantise the input (unless it is), then its u8 im2col matrix.
        let n_in = self.cin * h * w;
        let (src, range): (&[u8], f32) = match input {
            Plain::F32(x) => {
                let range = quantize_input(x, limit, xbuf, rayon, wide);
                (&xbuf[..n_in], range)
            }
            Plain::Quantized(q) => (q, limit),
        };
        grow(cols, k * p);
        self.window().im2col(src, h, w, &mut cols[..k * p], par);
        gemm_u8i8_emit(
            self.packed(),
            &cols[..k * p],
            p,
            out,
            pack,
            par,
            isa,
            make(range),
            no_hand_on(),
        );
        false
    }
}

/// The byte buffers of one call.
struct Bufs<'a> {
    x: &'a mut Vec<u8>,
    cols: &'a mut Vec<u8>,
    pack: &'a mut Vec<u32>,
}

/// `f` as a `FnOnce` (a closure bound to a name is otherwise inferred `FnMut`, and one that
/// hands out a captured `&mut` cannot be).
fn once<A, R>(f: impl FnOnce(A) -> R) -> impl FnOnce(A) -> R {
    f
}

/// Grows `buf` to at least `n` elements (contents unspecified; callers overwrite them).
fn grow<T: Copy + Default>(buf: &mut Vec<T>, n: usize) {
    if buf.len() < n {
        buf.resize(n, T::default());
    }
}

#[cfg(test)]
mod handoff_tests;
#[cfg(test)]
mod tests;
