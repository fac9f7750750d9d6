//! The bf16 convolution: weights rounded to bf16 once (half the memory of f32), inputs
//! rounded to bf16 as they are packed, products accumulated in f32
//! ([`crate::kernels::bf16::gemm_bf16`]), then bias, residual and ReLU in f32.
//!
//! `y[c, p] = act(Σ_j bf16(W[c, j])·bf16(X[j, p]) + bias[c] (+ residual[c, p]))` with `X` the
//! im2col matrix of the input (zero padding) and the sum in the order of the bf16 kernels.
//! Every convolution shape goes through im2col + GEMM: the Winograd transforms of the f32
//! path would add their own roundings to values that are already rounded to 8 bits.

use super::epilogue::{epilogue_row, epilogue_segment};
use super::im2col::Window;
use super::{Conv2d, PAR_ELEMS};
use crate::error::{Error, Result};
use rayon::prelude::*;

use std::sync::OnceLock;

use super::quantized::{QInput, QOutput};
use crate::kernels::aligned::{aligned, aligned_mut};
use crate::kernels::amx;
use crate::kernels::amx::direct::{self, ChannelsLast, DirectBf16, DirectWeights, Grid};
use crate::kernels::amx::HandOn;
use crate::kernels::bf16::{
    amx_kw, gemm_amx, gemm_amx_to_image, gemm_bf16_rows, to_bf16, AmxInput, Bf16Bits, Bf16Isa,
    PackedBf16Weights, RowMap,
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
    /// 32·n input channels.
    direct: Option<DirectWeights>,
    bias: Vec<f32>,
}

/// Reusable buffers of [`Bf16Conv::forward_image`] (grown, never shrunk).
#[derive(Debug, Default, Clone)]
pub struct Bf16Scratch {
    x: Vec<u16>,
    cols: Vec<u16>,
    pack: Vec<u16>,
}

impl Bf16Scratch {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        (self.x.capacity() + self.cols.capacity() + self.pack.capacity()) * 2
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
        let direct = match (window, amx::Bf16::detect()) {
            (true, Some(_)) => {
                let bits: Vec<u16> = weight.iter().map(|&v| to_bf16(v)).collect();
                DirectWeights::new_bf16(&bits, conv.cout, conv.cin, conv.kh)
            }
            _ => None,
        };
        let weights = match direct {
            Some(_) => OnceLock::new(),
            None => OnceLock::from(PackedBf16Weights::new(weight, conv.cout, k)),
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

    /// The direct AMX path's weights, op and grid for an `h × w` input, when `isa` is AMX and
    /// this convolution has one.
    fn direct_path(
        &self,
        isa: Bf16Isa,
        h: usize,
        w: usize,
    ) -> Option<(&DirectWeights, amx::Bf16, Grid)> {
        let grid = Grid {
            cin: self.cin,
            h,
            w,
            size: self.kh,
            stride: self.stride,
        };
        match (isa, &self.direct, amx::Bf16::detect()) {
            (Bf16Isa::Amx, Some(dw), Some(op)) if grid.supported::<u16>() => Some((dw, op, grid)),
            _ => None,
        }
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

    /// Whether this convolution reads its input as AMX panels ([`QInput::Panels`]) with
    /// `isa`, and with how many words of `k` per column: a plain 1×1 convolution on the AMX
    /// kernel.
    pub(crate) fn panels_kw(&self, isa: Bf16Isa) -> Option<usize> {
        self.plain_1x1()
            .then(|| amx_kw(self.packed(), isa))
            .flatten()
    }

    /// Whether this convolution writes its output for an `h × w` input as AMX panels
    /// ([`QOutput::Panels`]) with `isa`: a direct convolution on AMX.
    pub(crate) fn direct_panels(&self, isa: Bf16Isa, h: usize, w: usize) -> bool {
        self.direct_path(isa, h, w).is_some()
    }

    /// The grid of the direct AMX path for an `h × w` input, when this convolution takes it
    /// with `isa`: the image that a previous convolution writes for it ([`QOutput::ImageBf16`]).
    pub(crate) fn direct_grid(&self, isa: Bf16Isa, h: usize, w: usize) -> Option<Grid> {
        self.direct_path(isa, h, w).map(|(_, _, grid)| grid)
    }

    /// The direct AMX path's op, weights and input, when this convolution takes it with
    /// `isa` for an `h × w` input: an f32 input rounded to bf16 into a padded channels-last
    /// copy (on a cache line, as every tile row then is), or the image a previous convolution
    /// wrote for it; and whether to spread the work over the rayon pool.
    ///
    /// # Panics
    /// If the input is an image of the wrong length, or an image or panels for a convolution
    /// that does not take the direct path.
    fn direct_input<'a>(
        &'a self,
        input: QInput<'a>,
        h: usize,
        w: usize,
        scratch: &'a mut Bf16Scratch,
        par: Parallelism,
        isa: Bf16Isa,
    ) -> Option<(amx::Bf16, &'a DirectWeights, ChannelsLast<'a, u16>, bool)> {
        let Some((dw, op, grid)) = self.direct_path(isa, h, w) else {
            assert!(
                matches!(input, QInput::F32(_)),
                "Bf16Conv: an image or panels for a convolution without the direct path"
            );
            return None;
        };
        let rayon = par == Parallelism::Rayon;
        let x = match input {
            QInput::F32(x) => {
                assert_eq!(x.len(), self.cin * h * w, "Bf16Conv: input length");
                // (`cin` is a multiple of 32, so every pixel's channels start on a line too.)
                let xs = aligned_mut(&mut scratch.x, grid.len());
                direct::fill_channels_last_bf16(x, grid, xs, rayon);
                aligned(&scratch.x, grid.len())
            }
            QInput::ImageBf16(image) => image,
            QInput::Panels(_) | QInput::Quantized(_) | QInput::ImageU8(_) => {
                panic!("Bf16Conv: panels or bytes for a direct convolution")
            }
        };
        let x = ChannelsLast::new(x, grid);
        assert!(x.is_some(), "Bf16Conv: an image of the wrong length");
        let (oh, ow) = self.out_hw(h, w);
        let work = self.cout * oh * ow * self.cin * self.kh * self.kw;
        let parallel = rayon && work >= crate::kernels::gemm::PAR_THRESHOLD;
        x.map(|x| (op, dw, x, parallel))
    }

    /// [`Bf16Conv::forward_image`] with the input and output in the forms of a chained
    /// network ([`QInput`], [`QOutput`]; the `limit`s are not used: bf16 values have no
    /// range). The values are those of [`Bf16Conv::forward_image`], bit for bit. Inputs:
    /// - `F32`;
    /// - `Panels`, for a plain 1×1 convolution on AMX ([`Bf16Conv::panels_kw`]);
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
        residual: Option<&[f32]>,
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
            QOutput::Quantized { .. } | QOutput::ImageU8 { .. } => {
                panic!("Bf16Conv: a quantised output")
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
            residual,
            relu,
            p,
        };
        let direct = self.direct_input(QInput::F32(input), h, w, scratch, par, isa);
        if let Some((op, dw, x, parallel)) = direct {
            direct::conv(op, dw, x, out, parallel, &finish);
            return;
        }
        if self.plain_1x1() {
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
            if par == Parallelism::Rayon && input.len() >= PAR_ELEMS {
                x.par_chunks_mut(4096)
                    .zip(input.par_chunks(4096))
                    .for_each(|(d, s)| round(d, s));
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

/// Bias, residual and ReLU on a finished segment of one output channel: a type with
/// `#[inline(always)]` methods, so that it compiles into the AVX-512 copies of the AMX loops
/// (as a closure it was a call to 128-bit code, and the sums were copied out before it: 7 %
/// of a bf16 prediction).
struct Finish<'a> {
    bias: &'a [f32],
    residual: Option<&'a [f32]>,
    relu: bool,
    /// Output pixels per channel.
    p: usize,
}

impl RowMap for Finish<'_> {
    #[inline(always)]
    fn map(&self, c: usize, j0: usize, o: &mut [f32]) {
        let r = self.residual.map(|r| &r[c * self.p + j0..][..o.len()]);
        epilogue_segment(o, self.bias[c], r, self.relu);
    }

    /// In one pass from the sums, without copying them out first.
    #[inline(always)]
    fn map_from(&self, c: usize, j0: usize, sums: &[f32], o: &mut [f32]) {
        let r = self.residual.map(|r| &r[c * self.p + j0..][..o.len()]);
        epilogue_row(o, sums, self.bias[c], r, self.relu);
    }
}

impl amx::Emit<f32, f32> for Finish<'_> {
    #[inline(always)]
    fn emit(&self, c: usize, j0: usize, sums: &[f32], o: &mut [f32]) {
        self.map_from(c, j0, sums, o);
    }

    #[inline(always)]
    fn prefetch(&self, c: usize, j0: usize, len: usize) {
        if let Some(r) = self.residual {
            amx::prefetch_read(&r[c * self.p + j0..][..len]);
        }
    }
}

/// Grows `buf` to at least `n` elements (contents unspecified; callers overwrite them).
fn grow(buf: &mut Vec<u16>, n: usize) {
    if buf.len() < n {
        buf.resize(n, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::amx::packed_words;

    fn stream(mut s: u32) -> impl FnMut() -> f32 {
        move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32
        }
    }

    fn conv(
        cout: usize,
        cin: usize,
        size: usize,
        stride: usize,
        rnd: &mut impl FnMut() -> f32,
    ) -> Conv2d {
        let weight: Vec<f32> = (0..cout * cin * size * size).map(|_| rnd() - 0.5).collect();
        let bias: Vec<f32> = (0..cout).map(|_| rnd() - 0.3).collect();
        Conv2d::new(cout, cin, size, size, stride, size / 2, weight, bias)
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    /// Checks the panels against their documented layout, computed here: `kw` words of `k`
    /// per column, in panels of 16 columns (pairs of panels), `k` even in the low half; the
    /// bits of `y[k][j]` (`k < m`) rounded to bf16, zero for the `k` up to the next multiple
    /// of 32 and for the columns past `n`.
    fn check_layout(panels: &[u32], y: &[f32], m: usize, n: usize, kw: usize) {
        assert_eq!(panels.len(), packed_words(kw / 16, n));
        for j in 0..n.next_multiple_of(32) {
            for k in 0..m.next_multiple_of(32) {
                let word = panels[((j / 16) * kw + k / 2) * 16 + j % 16];
                let got = if k % 2 == 0 {
                    word as u16
                } else {
                    (word >> 16) as u16
                };
                let want = if j < n && k < m {
                    to_bf16(y[k * n + j])
                } else {
                    0
                };
                assert_eq!(got, want, "column {j} of {n}, k {k} of {m}");
            }
        }
    }

    /// A 1×1 convolution on AMX that also packs its output for the next 1×1 convolution
    /// ([`QOutput::F32Panels`]): its f32 output is the plain one, bit for bit, the panels hold
    /// that output rounded to bf16 in the layout the next one reads, and the next one gives
    /// from them exactly what it gives from the f32 output. Odd pixel counts, channels that
    /// fill part of a row block or of a tile's 32 `k`, with and without a residual, 1 and 2
    /// threads.
    #[test]
    fn handed_on_panels_are_the_rounded_f32_output() {
        if !Bf16Isa::Amx.is_available() {
            return;
        }
        let isa = Bf16Isa::Amx;
        let mut rnd = stream(0x0BF1_6A11);
        for (cin, mid, cout, h, w) in [
            (64, 64, 32, 7, 7),
            (32, 20, 9, 5, 13),
            (128, 96, 40, 14, 14),
            (16, 256, 33, 1, 1),
            (64, 40, 64, 3, 40),
        ] {
            let p = h * w;
            let first = Bf16Conv::new(&conv(mid, cin, 1, 1, &mut rnd)).unwrap();
            let second = Bf16Conv::new(&conv(cout, mid, 1, 1, &mut rnd)).unwrap();
            let kw = second.panels_kw(isa).expect("a 1×1 on AMX takes panels");
            assert_eq!(kw, mid.div_ceil(32) * 16);
            let x: Vec<f32> = (0..cin * p).map(|_| rnd() - 0.4).collect();
            let residual: Vec<f32> = (0..mid * p).map(|_| rnd() * 0.6 - 0.3).collect();
            for par in [Parallelism::Sequential, Parallelism::Rayon] {
                for res in [None, Some(&residual[..])] {
                    let mut s = Bf16Scratch::default();
                    let mut want = vec![f32::NAN; mid * p];
                    first.forward_image(&x, h, w, &mut want, res, true, &mut s, par, isa);
                    let mut want_out = vec![f32::NAN; cout * p];
                    second.forward_image(&want, h, w, &mut want_out, None, false, &mut s, par, isa);
                    // Garbage in the panels beforehand: every word must be written.
                    let mut panels = vec![0xDEAD_BEEFu32; packed_words(kw / 16, p)];
                    let mut y = vec![f32::NAN; mid * p];
                    let out = QOutput::F32Panels {
                        y: &mut y,
                        panels: &mut panels,
                        limit: f32::INFINITY,
                        k4: kw,
                    };
                    let io = (QInput::F32(&x), out);
                    assert!(first.forward(io, h, w, res, true, &mut s, par, isa));
                    assert_eq!(bits(&y), bits(&want), "{cin} {mid} {h}×{w}");
                    check_layout(&panels, &want, mid, p, kw);
                    let mut got = vec![f32::NAN; cout * p];
                    let io = (QInput::Panels(&panels), QOutput::F32(&mut got));
                    assert!(second.forward(io, h, w, None, false, &mut s, par, isa));
                    assert_eq!(bits(&got), bits(&want_out), "{cin} {mid} {cout} {h}×{w}");
                }
            }
        }
    }

    /// A direct convolution on AMX written as the panels of the next 1×1 convolution
    /// ([`QOutput::Panels`]): the panels hold its plain f32 output rounded to bf16, and the next
    /// one gives from them exactly what it gives from that output. Output channels that fill
    /// part of a pair, strides 1 and 2, 3×3 and 5×5, with and without ReLU, 1 and 2 threads;
    /// with a residual it declines.
    #[test]
    fn direct_panels_are_the_rounded_f32_output() {
        if !Bf16Isa::Amx.is_available() {
            return;
        }
        let isa = Bf16Isa::Amx;
        let mut rnd = stream(0x5EED_0D1C);
        for (cin, mid, cout, size, stride, h, w) in [
            (64, 64, 32, 3, 1, 7, 7),
            (32, 40, 9, 3, 2, 9, 13),
            (64, 96, 64, 3, 1, 14, 14),
            (32, 32, 16, 5, 1, 6, 11),
        ] {
            let first = Bf16Conv::new(&conv(mid, cin, size, stride, &mut rnd)).unwrap();
            let second = Bf16Conv::new(&conv(cout, mid, 1, 1, &mut rnd)).unwrap();
            let (oh, ow) = first.out_hw(h, w);
            let p = oh * ow;
            assert!(first.direct_panels(isa, h, w), "{cin} {size}×{size}");
            let kw = second.panels_kw(isa).unwrap();
            let x: Vec<f32> = (0..cin * h * w).map(|_| rnd() - 0.4).collect();
            for (par, relu) in [
                (Parallelism::Sequential, true),
                (Parallelism::Rayon, true),
                (Parallelism::Rayon, false),
            ] {
                let mut s = Bf16Scratch::default();
                let mut want = vec![f32::NAN; mid * p];
                first.forward_image(&x, h, w, &mut want, None, relu, &mut s, par, isa);
                let mut want_out = vec![f32::NAN; cout * p];
                second.forward_image(&want, oh, ow, &mut want_out, None, false, &mut s, par, isa);
                let mut panels = vec![0xDEAD_BEEFu32; packed_words(kw / 16, p)];
                let out = QOutput::Panels {
                    panels: &mut panels,
                    limit: f32::INFINITY,
                    k4: kw,
                };
                assert!(first.forward((QInput::F32(&x), out), h, w, None, relu, &mut s, par, isa));
                check_layout(&panels, &want, mid, p, kw);
                let mut got = vec![f32::NAN; cout * p];
                let io = (QInput::Panels(&panels), QOutput::F32(&mut got));
                assert!(second.forward(io, oh, ow, None, false, &mut s, par, isa));
                assert_eq!(bits(&got), bits(&want_out), "{cin} {mid} {size} {stride}");
                // A residual is not part of the panels' values: declined, nothing written.
                let residual = vec![0.0f32; mid * p];
                let before = panels.clone();
                let out = QOutput::Panels {
                    panels: &mut panels,
                    limit: f32::INFINITY,
                    k4: kw,
                };
                let io = (QInput::F32(&x), out);
                assert!(!first.forward(io, h, w, Some(&residual), relu, &mut s, par, isa));
                assert_eq!(panels, before);
            }
        }
    }

    /// A plain 1×1 convolution on AMX written as the channels-last image of a following
    /// direct convolution ([`QOutput::ImageBf16`]): the image is its plain f32 output rounded to
    /// bf16 at the pixels, by the definition of the layout, and zero in the padding (garbage
    /// beforehand); the direct convolution reading it ([`QInput::ImageBf16`]) gives exactly what it
    /// gives from that output, to f32 and to panels. From f32 and from panels handed on by a
    /// previous 1×1; one to three row blocks of channels, strides 1 and 2, 3×3 and 5×5,
    /// pixel counts that end inside a pair of panels, 1 and 2 threads (the largest shape runs
    /// in parallel); with a residual it declines and writes nothing.
    #[test]
    fn image_output_is_the_rounded_f32_output() {
        if !Bf16Isa::Amx.is_available() {
            return;
        }
        let isa = Bf16Isa::Amx;
        let mut rnd = stream(0x1A6E_0FF5);
        for (cin, mid, cout, size, stride, h, w) in [
            (64, 64, 32, 3, 1, 7, 7),
            (48, 32, 40, 3, 2, 5, 13),
            (128, 96, 64, 3, 1, 28, 28),
            (32, 64, 32, 5, 1, 6, 11),
            (64, 32, 32, 3, 1, 1, 1),
        ] {
            let p = h * w;
            let zeroth = Bf16Conv::new(&conv(cin, 32, 1, 1, &mut rnd)).unwrap();
            let first = Bf16Conv::new(&conv(mid, cin, 1, 1, &mut rnd)).unwrap();
            let second = Bf16Conv::new(&conv(cout, mid, size, stride, &mut rnd)).unwrap();
            let grid = second.direct_grid(isa, h, w).expect("a direct convolution");
            let (oh, ow) = second.out_hw(h, w);
            let x0: Vec<f32> = (0..32 * p).map(|_| rnd() - 0.4).collect();
            for par in [Parallelism::Sequential, Parallelism::Rayon] {
                let mut s = Bf16Scratch::default();
                // The first convolution's input in f32 and as panels.
                let mut x = vec![f32::NAN; cin * p];
                let kw = first.panels_kw(isa).unwrap();
                let mut panels = vec![0u32; packed_words(kw / 16, p)];
                let out = QOutput::F32Panels {
                    y: &mut x,
                    panels: &mut panels,
                    limit: f32::INFINITY,
                    k4: kw,
                };
                assert!(zeroth.forward(
                    (QInput::F32(&x0), out),
                    h,
                    w,
                    None,
                    true,
                    &mut s,
                    par,
                    isa
                ));
                let mut want = vec![f32::NAN; mid * p];
                first.forward_image(&x, h, w, &mut want, None, true, &mut s, par, isa);
                let (pad, wp) = ((size - 1) / 2, grid.wp());
                let mut want_image = vec![0u16; grid.len()];
                for c in 0..mid {
                    for j in 0..p {
                        let at = ((j / w + pad) * wp + j % w + pad) * mid + c;
                        want_image[at] = to_bf16(want[c * p + j]);
                    }
                }
                let mut want_out = vec![f32::NAN; cout * oh * ow];
                second.forward_image(&want, h, w, &mut want_out, None, true, &mut s, par, isa);
                for input in [QInput::F32(&x), QInput::Panels(&panels)] {
                    let mut image = vec![0xA5A5u16; grid.len()];
                    let out = QOutput::ImageBf16 {
                        image: &mut image,
                        grid,
                    };
                    assert!(first.forward((input, out), h, w, None, true, &mut s, par, isa));
                    assert!(image == want_image, "{cin} {mid} {size} {stride} {h}×{w}");
                    let mut got = vec![f32::NAN; cout * oh * ow];
                    let io = (QInput::ImageBf16(&image), QOutput::F32(&mut got));
                    assert!(second.forward(io, h, w, None, true, &mut s, par, isa));
                    assert_eq!(bits(&got), bits(&want_out), "{cin} {mid} {size} {stride}");
                    // A residual is not part of the image's values: declined, nothing written.
                    let residual = vec![0.0f32; mid * p];
                    let out = QOutput::ImageBf16 {
                        image: &mut image,
                        grid,
                    };
                    let io = (input, out);
                    assert!(!first.forward(io, h, w, Some(&residual), true, &mut s, par, isa));
                    assert!(image == want_image);
                }
            }
        }
    }

    /// The image of `y` (`[c, h·w]`) for `grid`, by the definition of the layout: pixel
    /// `(y, x)`'s channels at `((y + pad)·wp + x + pad)·c`, rounded to bf16; zero elsewhere.
    fn image_of(y: &[f32], grid: Grid) -> Vec<u16> {
        let (c, p) = (grid.cin, grid.h * grid.w);
        let (pad, wp) = ((grid.size - 1) / 2, grid.wp());
        let mut image = vec![0u16; grid.len()];
        for ch in 0..c {
            for j in 0..p {
                let at = ((j / grid.w + pad) * wp + j % grid.w + pad) * c + ch;
                image[at] = to_bf16(y[ch * p + j]);
            }
        }
        image
    }

    /// A direct convolution on AMX written as the channels-last image of a following direct
    /// convolution (ResNet-18's basic blocks): the image is its plain f32 output rounded to
    /// bf16 at the pixels and zero in the padding (garbage beforehand), by the definition of
    /// the layout, from an f32 input and from an image of it; the next convolution gives from
    /// it exactly what it gives from the f32 output. Strides 1 and 2, 3×3 and 5×5, one to
    /// three pairs of channels, 1 and 2 threads; with a residual it declines.
    #[test]
    fn direct_image_output_is_the_rounded_f32_output() {
        if !Bf16Isa::Amx.is_available() {
            return;
        }
        let isa = Bf16Isa::Amx;
        let mut rnd = stream(0xD12E_C71A);
        for (cin, mid, cout, size, stride, h, w) in [
            (64, 64, 32, 3, 1, 7, 7),
            (32, 96, 64, 3, 2, 13, 9),
            (64, 32, 32, 5, 1, 6, 11),
            (64, 64, 64, 3, 1, 28, 28),
        ] {
            let first = Bf16Conv::new(&conv(mid, cin, size, stride, &mut rnd)).unwrap();
            let second = Bf16Conv::new(&conv(cout, mid, 3, 1, &mut rnd)).unwrap();
            let (oh, ow) = first.out_hw(h, w);
            let grid = second
                .direct_grid(isa, oh, ow)
                .expect("a direct convolution");
            let x: Vec<f32> = (0..cin * h * w).map(|_| rnd() - 0.4).collect();
            let x_image = image_of(&x, first.direct_grid(isa, h, w).unwrap());
            for par in [Parallelism::Sequential, Parallelism::Rayon] {
                let mut s = Bf16Scratch::default();
                let mut want = vec![f32::NAN; mid * oh * ow];
                first.forward_image(&x, h, w, &mut want, None, true, &mut s, par, isa);
                let want_image = image_of(&want, grid);
                let mut want_out = vec![f32::NAN; cout * oh * ow];
                second.forward_image(&want, oh, ow, &mut want_out, None, true, &mut s, par, isa);
                for input in [QInput::F32(&x), QInput::ImageBf16(&x_image)] {
                    let mut image = vec![0xA5A5u16; grid.len()];
                    let out = QOutput::ImageBf16 {
                        image: &mut image,
                        grid,
                    };
                    assert!(first.forward((input, out), h, w, None, true, &mut s, par, isa));
                    assert!(image == want_image, "{cin} {mid} {size} {stride} {h}×{w}");
                    let mut got = vec![f32::NAN; cout * oh * ow];
                    let io = (QInput::ImageBf16(&image), QOutput::F32(&mut got));
                    assert!(second.forward(io, oh, ow, None, true, &mut s, par, isa));
                    assert_eq!(bits(&got), bits(&want_out), "{cin} {mid} {size} {stride}");
                }
                let residual = vec![0.0f32; mid * oh * ow];
                let mut image = vec![0xA5A5u16; grid.len()];
                let out = QOutput::ImageBf16 {
                    image: &mut image,
                    grid,
                };
                let io = (QInput::F32(&x), out);
                assert!(!first.forward(io, h, w, Some(&residual), true, &mut s, par, isa));
                assert!(image.iter().all(|&v| v == 0xA5A5));
            }
        }
    }
}
