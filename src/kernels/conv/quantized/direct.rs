//! The AMX direct path of the int8 convolution (see `kernels::amx::direct`): its input made
//! channels-last (quantised on the way when it is f32), and its output either through an
//! epilogue ([`QuantizedConv::forward_calibrated`]) or straight into the AMX panels of a
//! following 1×1 convolution ([`QOutput::Panels`]).

use super::epilogue::dequant_steps;
use super::{quantize_input, InputRange, QInput, QuantizedConv};
use crate::kernels::aligned::{aligned, aligned_mut};
use crate::kernels::amx::direct::{ChannelsLast, DirectBytes, DirectWeights, Grid};
use crate::kernels::amx::{self, direct};
use crate::kernels::gemm::{Parallelism, PAR_THRESHOLD};
use crate::kernels::int8::{scale_for, Int8Isa};
use crate::kernels::wide::Wide;

/// What a direct convolution runs on: the op, the weights, the channels-last input, the range
/// its bytes were quantised with, and whether to spread it over the rayon pool.
pub(super) struct DirectInput<'a> {
    pub op: amx::Int8,
    pub weights: &'a DirectWeights,
    pub x: ChannelsLast<'a, u8>,
    pub range: f32,
    pub parallel: bool,
}

impl QuantizedConv {
    /// Whether this convolution writes its output for an `h × w` input as AMX panels
    /// ([`QOutput::Panels`](super::QOutput::Panels)) with `isa`: a direct convolution on AMX
    /// with a calibrated range.
    pub(crate) fn direct_panels(&self, isa: Int8Isa, h: usize, w: usize) -> bool {
        matches!(self.input, InputRange::Calibrated(_))
            && isa == Int8Isa::Amx
            && self.direct.is_some()
            && amx::Int8::detect().is_some()
            && self.direct_grid(h, w).supported::<u8>()
    }

    /// The grid of the image that a previous convolution writes for this one
    /// ([`QOutput::ImageU8`](super::QOutput::ImageU8)) for an `h × w` input with `isa`, when
    /// it is a direct convolution on AMX with a calibrated range.
    pub(crate) fn image_grid(&self, isa: Int8Isa, h: usize, w: usize) -> Option<Grid> {
        self.direct_panels(isa, h, w)
            .then(|| self.direct_grid(h, w))
    }

    /// The channels-last grid of the direct convolution of an `h × w` input.
    pub(super) fn direct_grid(&self, h: usize, w: usize) -> Grid {
        Grid {
            cin: self.cin,
            h,
            w,
            size: self.kh,
            stride: self.stride,
        }
    }

    /// The direct convolution's input, when this convolution takes the direct path with `isa`
    /// for an `h × w` input (`None` otherwise, or for panels): an f32 input quantised with
    /// the calibrated range `limit` (widened to its maximum) into `cols`, then, like a
    /// quantised one, transposed into the channels-last image in `xbuf`, from a cache line
    /// as every tile row then is.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn direct_input<'a>(
        &'a self,
        input: QInput<'a>,
        limit: f32,
        h: usize,
        w: usize,
        isa: Int8Isa,
        (xbuf, cols): (&'a mut Vec<u8>, &'a mut Vec<u8>),
        par: Parallelism,
    ) -> Option<DirectInput<'a>> {
        let (Int8Isa::Amx, Some(weights), Some(op)) = (isa, &self.direct, amx::Int8::detect())
        else {
            return None;
        };
        let grid = self.direct_grid(h, w);
        if !grid.supported::<u8>() {
            return None;
        }
        let rayon = par == Parallelism::Rayon;
        let (image, range): (&[u8], f32) = match input {
            QInput::F32(x) => {
                let range = quantize_input(x, limit, cols, rayon, Wide::detect(true));
                let planes = &cols[..x.len()];
                direct::fill_channels_last(planes, grid, aligned_mut(xbuf, grid.len()), rayon);
                (aligned(xbuf, grid.len()), range)
            }
            QInput::Quantized(q) => {
                direct::fill_channels_last(q, grid, aligned_mut(xbuf, grid.len()), rayon);
                (aligned(xbuf, grid.len()), limit)
            }
            // Written for this convolution by the previous one.
            QInput::ImageU8(image) => (image, limit),
            QInput::Panels(_) | QInput::ImageBf16(_) => return None,
        };
        // (Always `Some` for a filled image: the grid is supported and the length is its own.)
        let x = ChannelsLast::new(image, grid)?;
        let (oh, ow) = self.out_hw(h, w);
        let work = self.cout * oh * ow * self.cin * self.kh * self.kw;
        Some(DirectInput {
            op,
            weights,
            x,
            range,
            parallel: rayon && work >= PAR_THRESHOLD,
        })
    }

    /// The direct convolution written, as bytes for a following convolution whose calibrated
    /// range is `next`, into `to`: the panels of a following 1×1 convolution
    /// ([`QOutput::Panels`](super::QOutput::Panels)) or the channels-last image of a following
    /// direct one ([`QOutput::ImageU8`](super::QOutput::ImageU8)). The bytes are those of the
    /// `Requant` epilogue without a residual (the steps of [`dequant_steps`], in the same order
    /// of operations). Returns whether they are valid: this convolution takes the direct path
    /// and no value exceeded the following range.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward_direct_bytes(
        &self,
        input: QInput<'_>,
        limit: f32,
        h: usize,
        w: usize,
        bufs: (&mut Vec<u8>, &mut Vec<u8>),
        dequant: &mut Vec<f32>,
        relu: bool,
        (next, to): (f32, BytesFor<'_>),
        par: Parallelism,
        isa: Int8Isa,
    ) -> bool {
        if !matches!(self.input, InputRange::Calibrated(_)) {
            return false;
        }
        let Some(d) = self.direct_input(input, limit, h, w, isa, bufs, par) else {
            return false;
        };
        self.note_range(d.range, limit);
        dequant_steps(dequant, &self.w_step, d.range / 255.0);
        let bytes = DirectBytes {
            dequant,
            bias: &self.bias,
            relu,
            scale: scale_for(next),
            limit: next,
        };
        match to {
            BytesFor::Panels { panels, k4 } => {
                direct::conv_panels(d.op, d.weights, d.x, d.parallel, &bytes, panels, k4)
            }
            BytesFor::Image { image, grid } => {
                direct::conv_image(d.op, d.weights, d.x, d.parallel, &bytes, image, grid)
            }
        }
    }
}

/// Where [`QuantizedConv::forward_direct_bytes`] writes.
pub(super) enum BytesFor<'a> {
    /// AMX panels with `k4` words of `k` per column.
    Panels { panels: &'a mut [u32], k4: usize },
    /// The padded channels-last image of `grid`.
    Image { image: &'a mut [u8], grid: Grid },
}
