//! 2-D convolution (BatchNorm folded into the weights) computed as im2col + GEMM, or with
//! Winograd-style fast algorithms for 3×3 pad-1 convolutions of stride 1 and 2.
//!
//! A [`Conv2d`] keeps its weights as the `cout × (cin·kh·kw)` matrix `W` (PyTorch's
//! `[cout, cin, kh, kw]` layout read row-major is exactly that matrix). For one image
//! `x[cin, h, w]` the output `y[cout, oh·ow]` is `W · X` where `X[(ci,ky,kx), (oy,ox)]` is the
//! im2col matrix of `x`:
//!
//! - 1×1 stride-1 unpadded convolutions use the input itself as `X` (no copy);
//! - every other shape (including 1×1 stride 2, which is then a plain subsampling) writes `X`
//!   into a caller-provided scratch buffer that is reused across calls.
//!
//! 3×3 stride-1 pad-1 convolutions with enough channels (see [`ConvAlgorithm::Auto`]) use
//! Winograd F(2×2, 3×3) instead (module `winograd`, variant `f2`: 16 smaller GEMMs with 4/9 of the
//! multiply-adds) on filters transformed once at construction. [`Conv2d::with_algorithm`]
//! forces one path, including the opt-in F(4×4, 3×3) (variant `f4`: 36 GEMMs with 1/4
//! of the multiply-adds).
//!
//! 3×3 stride-2 pad-1 convolutions with enough channels use a polyphase split + Winograd
//! F(2, 2) (variant `s2`: 2×2 output tiles from 5×5 input patches, 25 points sharing
//! 16 filter matrices, so 16 GEMMs with 25/36 of the multiply-adds and no im2col matrix;
//! transform entries are 0 and ±1, so it rounds no worse than im2col). It runs in the
//! same driver as the stride-1 variants (input transform per input channel, one
//! sequential GEMM per task, output transform + epilogue per output channel), with the same
//! thread-count independence.
//!
//! Convolutions of at most [`DIRECT_MAX_CHANNELS`] input channels (the stem) are computed
//! directly on CPUs with AVX-512 (module `direct`: sums of a block of output channels and
//! columns kept in registers over every tap of the kernel), without the im2col copy.
//!
//! Bias, residual addition and ReLU are applied in a single pass over the output right after
//! the GEMM (fused into the output transform on the Winograd path). Eval-mode BatchNorm is folded into the weights beforehand with
//! [`fold_batchnorm`].
//!
//! # Panics
//!
//! These are low-level kernels: inconsistent shapes or buffer lengths are caller bugs and are
//! reported by `assert!` with a message; use [`Conv2d::try_new`] to validate weights read
//! from a file.

mod algorithm;
mod batchnorm;
mod bf16;
mod direct;
mod epilogue;
mod im2col;
mod quantized;
mod winograd;

pub use algorithm::{
    ConvAlgorithm, DIRECT_MAX_CHANNELS, WINOGRAD_MIN_CHANNELS, WINOGRAD_S2_MIN_CHANNEL_PRODUCT,
};
pub use batchnorm::fold_batchnorm;
pub use bf16::{Bf16Conv, Bf16Scratch};
pub(crate) use quantized::{QInput, QOutput, Residual};
pub use quantized::{QuantScratch, QuantizedConv};

use epilogue::epilogue;

use std::sync::OnceLock;

use super::gemm::{gemm, Backend, MatRef, Parallelism};
use super::wide::Wide;
use crate::error::{Error, Result};

/// Parallel passes over buffers smaller than this many elements run sequentially.
pub(crate) const PAR_ELEMS: usize = 1 << 16;

/// A convolution whose weights (and folded BatchNorm bias) are fixed at load time.
///
/// `weight` is `[cout, cin, kh, kw]` row-major (PyTorch layout); `bias` has `cout` entries.
/// Padding is symmetric and zero-valued; the stride and padding are the same along both axes.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// Output channels.
    pub cout: usize,
    /// Input channels.
    pub cin: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both axes), at least 1.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
    /// `cout × (cin·kh·kw)` row-major.
    weight: Vec<f32>,
    bias: Vec<f32>,
    /// The requested algorithm.
    algorithm: ConvAlgorithm,
    /// Winograd F(2×2) filters `[16][cout][cin]`, once computed.
    wino2: OnceLock<Vec<f32>>,
    /// Winograd F(4×4) filters `[36][cout][cin]`, once computed.
    wino4: OnceLock<Vec<f32>>,
    /// Stride-2 filters `[16][cout][cin]` (variant `winograd::s2`, 16/9 of the weight
    /// memory), once computed.
    wino_s2: OnceLock<Vec<f32>>,
}

impl Conv2d {
    /// Build from PyTorch-layout weights `[cout, cin, kh, kw]` and a bias of length `cout`.
    ///
    /// # Panics
    ///
    /// If a dimension or the stride is 0 or a length does not match; see
    /// [`Conv2d::try_new`] for the checked version.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cout: usize,
        cin: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        pad: usize,
        weight: Vec<f32>,
        bias: Vec<f32>,
    ) -> Self {
        match Self::try_new(cout, cin, kh, kw, stride, pad, weight, bias) {
            Ok(conv) => conv,
            Err(e) => panic!("Conv2d::new: {e}"),
        }
    }

    /// Checked constructor: as [`Conv2d::new`], but returns [`Error::InvalidParameter`] when a
    /// dimension or the stride is 0, and [`Error::InvalidInput`] when `weight` does not hold
    /// `cout·cin·kh·kw` values or `bias` does not hold `cout` values.
    #[allow(clippy::too_many_arguments)]
    pub fn try_new(
        cout: usize,
        cin: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        pad: usize,
        weight: Vec<f32>,
        bias: Vec<f32>,
    ) -> Result<Self> {
        if cout == 0 || cin == 0 || kh == 0 || kw == 0 {
            return Err(Error::param(
                "conv shape",
                format!(
                    "every dimension must be at least 1, got cout={cout} cin={cin} kh={kh} kw={kw}"
                ),
            ));
        }
        if stride == 0 {
            return Err(Error::param(
                "stride",
                "convolution stride must be at least 1",
            ));
        }
        let expected = cout
            .checked_mul(cin)
            .and_then(|x| x.checked_mul(kh))
            .and_then(|x| x.checked_mul(kw));
        if expected != Some(weight.len()) {
            return Err(Error::input(format!(
                "conv weight has {} values, expected [{cout}, {cin}, {kh}, {kw}]",
                weight.len()
            )));
        }
        if bias.len() != cout {
            return Err(Error::input(format!(
                "conv bias has {} values, expected {cout}",
                bias.len()
            )));
        }
        let mut conv = Conv2d {
            cout,
            cin,
            kh,
            kw,
            stride,
            pad,
            weight,
            bias,
            algorithm: ConvAlgorithm::Auto,
            wino2: OnceLock::new(),
            wino4: OnceLock::new(),
            wino_s2: OnceLock::new(),
        };
        conv.set_algorithm(ConvAlgorithm::Auto)?;
        Ok(conv)
    }

    /// Hands the weights and the bias to `out` (weights first) and frees them, with the
    /// transformed filters. The convolution must not run until [`Conv2d::restore_parameters`]
    /// puts them back.
    pub(crate) fn stash_parameters(
        &mut self,
        out: &mut dyn FnMut(&[f32]) -> Result<()>,
    ) -> Result<()> {
        out(&self.weight)?;
        out(&self.bias)?;
        self.weight = Vec::new();
        self.bias = Vec::new();
        self.release_transformed_filters();
        Ok(())
    }

    /// Reads back what [`Conv2d::stash_parameters`] handed out, in the same order.
    pub(crate) fn restore_parameters(
        &mut self,
        input: &mut dyn FnMut(&mut [f32]) -> Result<()>,
    ) -> Result<()> {
        let mut weight = vec![0.0f32; self.cout * self.cin * self.kh * self.kw];
        let mut bias = vec![0.0f32; self.cout];
        input(&mut weight)?;
        input(&mut bias)?;
        self.weight = weight;
        self.bias = bias;
        Ok(())
    }

    /// The weights as a `cout × (cin·kh·kw)` row-major matrix (PyTorch order).
    pub fn weight(&self) -> &[f32] {
        &self.weight
    }

    /// The per-output-channel bias.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// Output spatial size for an `h × w` input, or `None` when the padded input is smaller
    /// than the kernel.
    pub fn checked_out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        self.window().checked_out_hw(h, w)
    }

    /// Output spatial size for an `h × w` input.
    ///
    /// # Panics
    ///
    /// If the padded input is smaller than the kernel (see [`Conv2d::checked_out_hw`]).
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        self.window().out_hw(h, w, "Conv2d")
    }

    fn window(&self) -> im2col::Window {
        im2col::Window {
            kh: self.kh,
            kw: self.kw,
            stride: self.stride,
            pad: self.pad,
        }
    }

    /// Floating-point operations of one image: `2·cout·cin·kh·kw·oh·ow` (one multiply and one
    /// add per weight and output pixel; bias, residual and ReLU are not counted).
    ///
    /// # Panics
    ///
    /// As [`Conv2d::out_hw`].
    pub fn flops(&self, h: usize, w: usize) -> u64 {
        let (oh, ow) = self.out_hw(h, w);
        2 * (self.cout * self.cin * self.kh * self.kw) as u64 * (oh * ow) as u64
    }

    /// Scratch elements [`Conv2d::forward_image`] needs for an `h × w` input (0 for 1×1
    /// stride-1 unpadded convolutions; `16·⌈h/2⌉·⌈w/2⌉·(cin + cout)` with Winograd F(2×2),
    /// `36·⌈h/4⌉·⌈w/4⌉·(cin + cout)` with F(4×4), `25·⌈oh/2⌉·⌈ow/2⌉·(cin + cout)` with the
    /// stride-2 variant (`oh × ow` the output size), `cin·kh·kw·oh·ow` with im2col; with
    /// [`ConvAlgorithm::Direct`] the stride-split padded input and the reordered weights).
    ///
    /// # Panics
    ///
    /// As [`Conv2d::out_hw`].
    pub fn scratch_len(&self, h: usize, w: usize) -> usize {
        if self.is_direct() {
            return 0;
        }
        let (oh, ow) = self.out_hw(h, w);
        if self.uses_direct() {
            return self.direct_geometry(h, w).scratch_len();
        }
        match self.tile_for(h, w) {
            Some(tile) => winograd::scratch_len(tile, self.cin, self.cout, oh, ow),
            None => self.cin * self.kh * self.kw * oh * ow,
        }
    }

    fn is_direct(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// The shape of [`ConvAlgorithm::Direct`] over an `h × w` input.
    fn direct_geometry(&self, h: usize, w: usize) -> direct::Geometry {
        let (oh, ow) = self.out_hw(h, w);
        direct::Geometry {
            cin: self.cin,
            cout: self.cout,
            h,
            w,
            kh: self.kh,
            kw: self.kw,
            stride: self.stride,
            pad: self.pad,
            oh,
            ow,
        }
    }

    /// One image: `input` is `[cin, h, w]`, `out` is `[cout, oh, ow]`.
    /// Computes `out = act(conv(input) + bias (+ residual))`, where `act` is ReLU when `relu`
    /// and `residual` (if any) has the shape of `out`.
    ///
    /// `scratch` is grown to [`Conv2d::scratch_len`] when shorter and reused as is otherwise
    /// (no allocation once it is large enough). Uses the rayon pool for large layers; inside
    /// `par_iter` loops call [`Conv2d::forward_image_with`] with
    /// [`Parallelism::Sequential`].
    ///
    /// # Panics
    ///
    /// If a slice length does not match the shapes above or the input is smaller than the
    /// kernel.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_image(
        &self,
        input: &[f32],
        h: usize,
        w: usize,
        out: &mut [f32],
        residual: Option<&[f32]>,
        relu: bool,
        scratch: &mut Vec<f32>,
    ) {
        let (oh, ow) = self.out_hw(h, w);
        let par = Parallelism::auto(self.cout, oh * ow, self.cin * self.kh * self.kw);
        self.forward_image_with(input, h, w, out, residual, relu, scratch, par);
    }

    /// [`Conv2d::forward_image`] with explicit parallelism.
    ///
    /// # Panics
    ///
    /// As [`Conv2d::forward_image`].
    #[allow(clippy::too_many_arguments)]
    pub fn forward_image_with(
        &self,
        input: &[f32],
        h: usize,
        w: usize,
        out: &mut [f32],
        residual: Option<&[f32]>,
        relu: bool,
        scratch: &mut Vec<f32>,
        par: Parallelism,
    ) {
        let (oh, ow) = self.out_hw(h, w);
        let p = oh * ow;
        let kk = self.cin * self.kh * self.kw;
        assert_eq!(
            self.weight.len(),
            self.cout * kk,
            "Conv2d: weight length does not match the (public) shape fields"
        );
        assert_eq!(self.bias.len(), self.cout, "Conv2d: bias length");
        assert_eq!(
            input.len(),
            self.cin * h * w,
            "Conv2d: input must be [cin={}, h={h}, w={w}]",
            self.cin
        );
        assert_eq!(
            out.len(),
            self.cout * p,
            "Conv2d: out must be [cout={}, oh={oh}, ow={ow}]",
            self.cout
        );
        if let Some(r) = residual {
            assert_eq!(r.len(), out.len(), "Conv2d: residual must match out");
        }

        if self.uses_direct() {
            let g = self.direct_geometry(h, w);
            let need = g.scratch_len();
            if scratch.len() < need {
                scratch.resize(need, 0.0);
            }
            direct::forward(
                &g,
                &self.weight,
                &self.bias,
                input,
                out,
                residual,
                relu,
                &mut scratch[..need],
                par,
                Wide::detect(true),
            );
            return;
        }

        if let Some(tile) = self.tile_for(h, w) {
            let u = self.winograd_filters(tile);
            assert_eq!(
                u.len(),
                tile.filter_mats() * self.cout * self.cin,
                "Conv2d: shape fields changed after the Winograd filters were built"
            );
            let need = winograd::scratch_len(tile, self.cin, self.cout, oh, ow);
            if scratch.len() < need {
                scratch.resize(need, 0.0);
            }
            winograd::forward(
                tile,
                u,
                &self.bias,
                self.cin,
                self.cout,
                input,
                h,
                w,
                out,
                residual,
                relu,
                &mut scratch[..need],
                par,
            );
            return;
        }

        let cols: &[f32] = if self.is_direct() {
            input
        } else {
            let need = kk * p;
            if scratch.len() < need {
                scratch.resize(need, 0.0);
            }
            let buf = &mut scratch[..need];
            self.window().im2col(input, h, w, buf, par);
            buf
        };
        let weight = MatRef::row_major(&self.weight, self.cout, kk);
        let cols = MatRef::row_major(cols, kk, p);
        // With `Parallelism::Rayon` the GEMM's own threading splits the work (and the packing
        // of the im2col matrix) between the threads. Measured against a coarse split over
        // blocks of output channels (sequential GEMM + epilogue per block), it used less CPU
        // time and ran no slower, even for 14×14 images.
        gemm(weight, cols, out, p, false, par, Backend::Default);
        epilogue(out, &self.bias, residual, relu, p, par);
    }

    /// Batch of `n` images `[n, cin, h, w]` into `[n, cout, oh, ow]`, one
    /// [`Conv2d::forward_image_with`] call per image; `residual` (if any) is
    /// `[n, cout, oh, ow]`.
    ///
    /// # Panics
    ///
    /// As [`Conv2d::forward_image`], with all lengths multiplied by `n`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_batch(
        &self,
        input: &[f32],
        n: usize,
        h: usize,
        w: usize,
        out: &mut [f32],
        residual: Option<&[f32]>,
        relu: bool,
        scratch: &mut Vec<f32>,
        par: Parallelism,
    ) {
        let (oh, ow) = self.out_hw(h, w);
        let in_len = self.cin * h * w;
        let out_len = self.cout * oh * ow;
        assert_eq!(input.len(), n * in_len, "Conv2d: batch input length");
        assert_eq!(out.len(), n * out_len, "Conv2d: batch output length");
        if let Some(r) = residual {
            assert_eq!(r.len(), out.len(), "Conv2d: batch residual length");
        }
        for i in 0..n {
            self.forward_image_with(
                &input[i * in_len..(i + 1) * in_len],
                h,
                w,
                &mut out[i * out_len..(i + 1) * out_len],
                residual.map(|r| &r[i * out_len..(i + 1) * out_len]),
                relu,
                scratch,
                par,
            );
        }
    }
}
