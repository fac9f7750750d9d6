//! The bf16 convolution: weights rounded to bf16 once (half the memory of f32), inputs
//! rounded to bf16 as they are packed, products accumulated in f32
//! ([`crate::kernels::bf16::gemm_bf16`]), then bias, residual and ReLU in f32.
//!
//! `y[c, p] = act(Σ_j bf16(W[c, j])·bf16(X[j, p]) + bias[c] (+ residual[c, p]))` with `X` the
//! im2col matrix of the input (zero padding) and the sum in the order of the bf16 kernels.
//! Every convolution shape goes through im2col + GEMM: the Winograd transforms of the f32
//! path would add their own roundings to values that are already rounded to 8 bits.

mod amx_direct;

use super::im2col::Window;
use super::Conv2d;
use crate::error::{Error, Result};

use std::sync::OnceLock;

use super::quantized::{QInput, QOutput, Residual};
use crate::kernels::amx;
use crate::kernels::amx::direct::{self, DirectBf16, DirectWeights, Grid, NARROW};
use crate::kernels::amx::HandOn;
use crate::kernels::bf16::{
    amx_kw, gemm_amx, gemm_amx_bits, gemm_amx_to_image, gemm_bf16_rows, to_bf16, AmxInput,
    Bf16Bits, Bf16Isa, PackedBf16Weights,
};
use crate::kernels::gemm::Parallelism;

/// A convolution with bf16 weights and inputs and f32 sums (see the module documentation).
#[derive(Debug, Clone)]
pub struct Bf16Conv {
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
    /// The weights for the packed kernels: made on first use from `direct` when that exists
    /// (on AMX CPUs those convolutions never use them unless another kernel is asked for).
    weights: OnceLock<PackedBf16Weights>,
    /// The weights for the direct AMX path ([`direct`]), when this CPU has AMX-BF16 and the
    /// convolution is an odd window wider than 1 with "same" padding, at stride 1 or 2, on
    /// 32·n input channels, or on at most 3 (an image, read as a narrow grid: up to 7×7).
    direct: Option<DirectWeights>,
    bias: Vec<f32>,
}

/// Reusable buffers of [`Bf16Conv::forward_image`] (grown, never shrunk).
#[derive(Debug, Default, Clone)]
pub struct Bf16Scratch {
    x: Vec<u16>,
    cols: Vec<u16>,
    pack: Vec<u16>,
    /// The f32 pixels that a strided 1×1 convolution reads.
    strided: Vec<f32>,
}

impl Bf16Scratch {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        (self.x.capacity() + self.cols.capacity() + self.pack.capacity()) * 2
            + self.strided.capacity() * 4
    }
}

impl Bf16Conv {
    /// Rounds the weights of `conv` to bf16.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the weights are not loaded (stashed) or a weight or bias is
    /// not finite.
    pub fn new(conv: &Conv2d) -> Result<Bf16Conv> {
        let k = conv.cin * conv.kh * conv.kw;
        let weight = conv.weight();
        if weight.len() != conv.cout * k {
            return Err(Error::input(
                "bf16 convolution: the weights are not loaded (stashed?)",
            ));
        }
        if weight.iter().chain(conv.bias()).any(|v| !v.is_finite()) {
            return Err(Error::input(
                "bf16 convolution: a weight or bias is not finite",
            ));
        }
        let window = Grid::takes_window(conv.kh, conv.kw, conv.stride, conv.pad);
        let narrow = conv.cin < NARROW;
        let direct = match (window, amx::Bf16::detect()) {
            (true, Some(_)) => {
                let bits: Vec<u16> = weight.iter().map(|&v| to_bf16(v)).collect();
                match narrow {
                    // An image (a stem): read as a narrow grid of four channels, the added ones
                    // with zero weights (see `amx::direct::Grid`); up to 7×7.
                    true => DirectWeights::new_narrow_bf16(&bits, conv.cout, conv.cin, conv.kh),
                    false => DirectWeights::new_bf16(&bits, conv.cout, conv.cin, conv.kh),
                }
            }
            _ => None,
        };
        let weights = match (&direct, narrow) {
            (Some(_), false) => OnceLock::new(),
            _ => OnceLock::from(PackedBf16Weights::new(weight, conv.cout, k)),
        };
        Ok(Bf16Conv {
            weights,
            direct,
            cout: conv.cout,
            cin: conv.cin,
            kh: conv.kh,
            kw: conv.kw,
            stride: conv.stride,
            pad: conv.pad,
            bias: conv.bias().to_vec(),
        })
    }

    /// Bytes of the packed weights and the bias.
    pub fn bytes(&self) -> usize {
        self.weights.get().map_or(0, PackedBf16Weights::bytes)
            + self.direct.as_ref().map_or(0, DirectWeights::bytes)
            + self.bias.len() * 4
    }

    /// Output size for an `h × w` input (as [`Conv2d::out_hw`]).
    ///
    /// # Panics
    /// If the padded input is smaller than the kernel.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        self.window().out_hw(h, w, "Bf16Conv")
    }

    /// The weights for the packed kernels (see [`Bf16Conv::weights`]).
    fn packed(&self) -> &PackedBf16Weights {
        self.weights.get_or_init(|| {
            let k = self.cin * self.kh * self.kw;
            match &self.direct {
                // bf16 values read back exactly; rounding them again changes nothing.
                Some(d) => PackedBf16Weights::new(&d.matrix_bf16(), self.cout, k),
                // (Never reached: without direct weights the cell is filled at construction.)
                None => PackedBf16Weights::new(&[], 0, 0),
            }
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

    /// A 1×1 convolution at stride 1 without padding: its input is its matrix of activations.
    fn plain_1x1(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// Whether, with `isa`, this convolution can read the AMX panels that `first` reads
    /// ([`Self::panels_kw`]), subsampled at its stride ([`amx::subsample_panels`]): a 1×1
    /// convolution without padding on the same input channels with the same words of `k` per
    /// column (the bf16 bits of an input do not depend on the convolution). A ResNet block's
    /// downsample and its first convolution, which read the block's input.
    pub(crate) fn reads_panels_of(&self, first: &Bf16Conv, isa: Bf16Isa) -> bool {
        let pointwise = self.kh == 1 && self.kw == 1 && self.pad == 0;
        pointwise
            && self.cin == first.cin
            && first.panels_kw(isa).is_some()
            && amx_kw(self.packed(), isa) == first.panels_kw(isa)
    }

    /// Whether this convolution reads its input as AMX panels ([`QInput::Panels`]) with
    /// `isa`, and with how many words of `k` per column: a plain 1×1 convolution on the AMX
    /// kernel.
    pub(crate) fn panels_kw(&self, isa: Bf16Isa) -> Option<usize> {
        self.plain_1x1()
            .then(|| amx_kw(self.packed(), isa))
            .flatten()
    }

    /// [`Bf16Conv::forward_image`] with the input and output in the forms of a chained
    /// network ([`QInput`], [`QOutput`]; the `limit`s are not used: bf16 values have no
    /// range). The values are those of [`Bf16Conv::forward_image`], bit for bit. Inputs:
    /// - `F32`;
    /// - `Panels`, for a plain 1×1 convolution on AMX ([`Bf16Conv::panels_kw`]), or a strided
    ///   one, of the pixels it reads ([`Bf16Conv::reads_panels_of`]);
    /// - `Image`, for a direct convolution on AMX ([`Bf16Conv::direct_grid`]).
    ///
    /// Outputs, and what it returns:
    /// - `F32`: the f32 output; `true`.
    /// - `F32Panels`: the f32 output, and, from a plain 1×1 convolution on AMX, the same values
    ///   rounded to bf16 and packed for a following one (`k4` words of `k` per column: its
    ///   [`Bf16Conv::panels_kw`]); whether the panels were written.
    /// - `Panels`: only the panels, from a direct convolution on AMX
    ///   ([`Bf16Conv::direct_panels`]) without a residual; whether they were written
    ///   (`false`: nothing was computed).
    /// - `Image`: only the following direct convolution's channels-last image, from a plain
    ///   1×1 convolution on AMX without a residual; whether it was written (`false`: nothing
    ///   was computed).
    ///
    /// # Panics
    /// If a slice length does not match the shapes, panels or an image are given to a
    /// convolution that does not read them, or an int8 form ([`QInput::Quantized`],
    /// [`QOutput::Quantized`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        (input, out): (QInput<'_>, QOutput<'_>),
        h: usize,
        w: usize,
        residual: Option<Residual<'_>>,
        relu: bool,
        scratch: &mut Bf16Scratch,
        par: Parallelism,
        isa: Bf16Isa,
    ) -> bool {
        let (oh, ow) = self.out_hw(h, w);
        let p = oh * ow;
        if let Some(r) = residual {
            assert_eq!(r.len(), self.cout * p, "Bf16Conv: residual length");
        }
        let finish = Finish {
            bias: &self.bias,
            residual,
            relu,
            p,
        };
        // Rounded to bf16 as the following convolution rounds the f32 output.
        let rounded = DirectBf16 {
            bias: &self.bias,
            relu,
        };
        let (y, hand_on) = match out {
            QOutput::Quantized { .. } | QOutput::Bytes { .. } | QOutput::ImageU8 { .. } => {
                panic!("Bf16Conv: a quantised output")
            }
            QOutput::Bf16 { y, panels, k4 } => {
                assert_eq!(y.len(), self.cout * p, "Bf16Conv: output length");
                let pointwise = matches!(input, QInput::Panels(_)) || self.plain_1x1();
                if !pointwise || matches!(input, QInput::ImageBf16(_)) {
                    return false;
                }
                let x = self.amx_input(input, h, w);
                let emit = Rounded(&finish);
                let pack = &mut scratch.pack;
                let ran =
                    gemm_amx_bits(self.packed(), x, p, y, pack, par, isa, &emit, (panels, k4));
                return ran.unwrap_or_else(|| self.not_on_amx(x));
            }
            QOutput::Panels { panels, k4, .. } => {
                if residual.is_some() || self.direct.is_none() {
                    return false;
                }
                let Some((op, dw, x, parallel)) = self.direct_input(input, h, w, scratch, par, isa)
                else {
                    return false;
                };
                return direct::conv_panels(op, dw, x, parallel, &rounded, panels, k4);
            }
            QOutput::ImageBf16 { image, grid } => {
                if residual.is_some() {
                    return false;
                }
                if self.direct.is_some() {
                    let Some((op, dw, x, parallel)) =
                        self.direct_input(input, h, w, scratch, par, isa)
                    else {
                        return false;
                    };
                    return direct::conv_image(op, dw, x, parallel, &rounded, image, grid);
                }
                if !self.plain_1x1() {
                    return false;
                }
                let packed = self.packed();
                let x = self.amx_input(input, h, w);
                let pack = &mut scratch.pack;
                let ran = gemm_amx_to_image(packed, x, grid, image, pack, par, isa, &rounded);
                return ran.unwrap_or_else(|| self.not_on_amx(x));
            }
            QOutput::F32(y) => (y, None),
            QOutput::F32Panels { y, panels, k4, .. } => (
                y,
                Some(HandOn {
                    handoff: &Bf16Bits,
                    panels,
                    kw: k4,
                }),
            ),
        };
        assert_eq!(y.len(), self.cout * p, "Bf16Conv: output length");
        // Without panels to write, an f32 output is all there is to do.
        let done = hand_on.is_none();
        match input {
            QInput::F32(_) | QInput::ImageBf16(_) if self.direct.is_some() => {
                if let Some((op, dw, x, parallel)) =
                    self.direct_input(input, h, w, scratch, par, isa)
                {
                    direct::conv(op, dw, x, y, parallel, &finish);
                    return done;
                }
            }
            QInput::F32(_) if !self.plain_1x1() || done => {}
            QInput::F32(_) | QInput::Panels(_) => {
                let x = self.amx_input(input, h, w);
                let pack = &mut scratch.pack;
                let ran = gemm_amx(self.packed(), x, p, y, pack, par, isa, &finish, hand_on);
                match ran {
                    Some(handed) => return done || handed,
                    None => self.not_on_amx(x),
                };
            }
            QInput::ImageBf16(_) | QInput::Quantized(_) | QInput::ImageU8(_) => {
                panic!("Bf16Conv: an image or bytes for a convolution that does not read them")
            }
        }
        let QInput::F32(x) = input else {
            unreachable!("every other input returned above")
        };
        // (The block keeps its output as bits only on AMX: off it, a residual of another
        // form is made f32 here.)
        let widened: Vec<f32>;
        let residual = match residual {
            None => None,
            Some(Residual::F32(r)) => Some(r),
            Some(other) => {
                widened = (0..other.len()).map(|i| other.value(i)).collect();
                Some(&widened[..])
            }
        };
        self.forward_image(x, h, w, y, residual, relu, scratch, par, isa);
        done
    }

    /// The input of a plain 1×1 convolution's AMX product.
    ///
    /// # Panics
    /// If it is not f32 of the right length or panels.
    fn amx_input<'a>(&self, input: QInput<'a>, h: usize, w: usize) -> AmxInput<'a, f32> {
        match input {
            QInput::F32(x) => {
                assert_eq!(x.len(), self.cin * h * w, "Bf16Conv: input length");
                AmxInput::Matrix(x)
            }
            QInput::Panels(panels) => AmxInput::Panels(panels),
            QInput::ImageBf16(_) | QInput::Quantized(_) | QInput::ImageU8(_) => {
                panic!("Bf16Conv: an image or bytes for a 1×1 convolution")
            }
        }
    }

    /// What a chained form that the AMX product could not compute leaves: nothing for an f32
    /// input (`false`: not written; the caller computes it in another form); panels must be
    /// read by AMX.
    ///
    /// # Panics
    /// For panels.
    fn not_on_amx(&self, x: AmxInput<'_, f32>) -> bool {
        match x {
            AmxInput::Matrix(_) => false,
            AmxInput::Panels(_) => panic!("Bf16Conv: panels for a convolution not on AMX"),
        }
    }

    /// One image: `input` is `[cin, h, w]`, `out` is `[cout, oh, ow]`; computes
    /// `out = act(conv(input) + bias (+ residual))` in bf16 with f32 sums. The result does not
    /// depend on `par` or on the number of threads.
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
        scratch: &mut Bf16Scratch,
        par: Parallelism,
        isa: Bf16Isa,
    ) {
        let (oh, ow) = self.out_hw(h, w);
        let p = oh * ow;
        let taps = self.kh * self.kw;
        let k = self.cin * taps;
        assert_eq!(input.len(), self.cin * h * w, "Bf16Conv: input length");
        assert_eq!(out.len(), self.cout * p, "Bf16Conv: output length");
        if let Some(r) = residual {
            assert_eq!(r.len(), out.len(), "Bf16Conv: residual length");
        }
        // Bias, residual and ReLU on each finished segment of sums, while it is in cache.
        let finish = Finish {
            bias: &self.bias,
            residual: residual.map(Residual::F32),
            relu,
            p,
        };
        let direct = self.direct_input(QInput::F32(input), h, w, scratch, par, isa);
        if let Some((op, dw, x, parallel)) = direct {
            direct::conv(op, dw, x, out, parallel, &finish);
            return;
        }
        if self.kh == 1 && self.kw == 1 && self.pad == 0 && self.stride > 1 {
            // A strided 1×1 convolution (a downsample) reads every `stride`-th pixel: those
            // taken in f32 (a quarter of the input at stride 2), then rounded while packed, as
            // a plain 1×1 one's input; not the whole input rounded first (the same bf16
            // values; ResNet-18 bf16 backbone 2.62 → 2.52 ms).
            let n = self.cin * p;
            if scratch.strided.len() < n {
                scratch.strided.resize(n, 0.0);
            }
            let x = &mut scratch.strided[..n];
            self.window().im2col(input, h, w, x, par);
            let pack = &mut scratch.pack;
            gemm_bf16_rows(self.packed(), x, p, out, pack, par, isa, &finish);
        } else if self.plain_1x1() {
            // The input is the matrix of activations: rounded while it is packed.
            gemm_bf16_rows(
                self.packed(),
                input,
                p,
                out,
                &mut scratch.pack,
                par,
                isa,
                &finish,
            );
        } else {
            // Round the input to bf16 once, then build the im2col matrix of bf16 values (half
            // the bytes of an f32 one; the same values, since the padding is 0 either way).
            grow(&mut scratch.x, input.len());
            let x = &mut scratch.x[..input.len()];
            let round = |d: &mut [u16], s: &[f32]| {
                for (d, &v) in d.iter_mut().zip(s) {
                    *d = to_bf16(v);
                }
            };
            if par == Parallelism::Rayon && crate::kernels::par::splits(input.len()) {
                crate::kernels::par::for_each_chunk(x, 4096, |i, d| {
                    round(d, &input[i * 4096..][..d.len()])
                });
            } else {
                round(x, input);
            }
            grow(&mut scratch.cols, k * p);
            self.window().im2col(
                &scratch.x[..input.len()],
                h,
                w,
                &mut scratch.cols[..k * p],
                par,
            );
            let cols = &scratch.cols[..k * p];
            gemm_bf16_rows(
                self.packed(),
                cols,
                p,
                out,
                &mut scratch.pack,
                par,
                isa,
                &finish,
            );
        }
    }
}

/// Grows `buf` to at least `n` elements (contents unspecified; callers overwrite them).
fn grow(buf: &mut Vec<u16>, n: usize) {
    if buf.len() < n {
        buf.resize(n, 0);
    }
}

mod finish;
use finish::{Finish, Rounded};

#[cfg(test)]
mod tests;
