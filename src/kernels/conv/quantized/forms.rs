//! The forms in which a reduced-precision convolution takes its input and gives its output:
//! f32, quantised for it (int8, chained from the previous convolution), packed as AMX panels
//! (handed on from the previous convolution), or as a direct convolution's channels-last
//! image (bf16).

use crate::kernels::amx::direct::Grid;

/// The input of [`QuantizedConv::forward`](super::QuantizedConv::forward).
#[derive(Debug, Clone, Copy)]
pub(crate) enum QInput<'a> {
    /// f32 activations.
    F32(&'a [f32]),
    /// Activations already quantised with this convolution's calibrated range (as the
    /// [`QOutput::Quantized`] of the previous convolution writes them).
    Quantized(&'a [u8]),
    /// Activations quantised with this convolution's calibrated range and packed for the AMX
    /// kernel (as the [`QOutput::F32Panels`] of the previous convolution writes them); only
    /// for a convolution whose [`QuantizedConv::panels_k4`](super::QuantizedConv::panels_k4) is the `k4` they were written
    /// with.
    Panels(&'a [u32]),
    /// bf16 only: the padded channels-last image of bf16 bits that a direct convolution
    /// reads, for its grid, as the [`QOutput::ImageBf16`] of the previous convolution writes it.
    ImageBf16(&'a [u16]),
    /// int8 only: the padded channels-last image of bytes quantised with this convolution's
    /// calibrated range that a direct convolution reads, for its grid, as the
    /// [`QOutput::ImageU8`] of the previous convolution writes it.
    ImageU8(&'a [u8]),
}

impl QInput<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            QInput::F32(x) => x.len(),
            QInput::Quantized(q) => q.len(),
            QInput::Panels(p) => p.len(),
            QInput::ImageBf16(i) => i.len(),
            QInput::ImageU8(i) => i.len(),
        }
    }
}

/// An input that is not [`QInput::Panels`].
#[derive(Clone, Copy)]
pub(super) enum Plain<'a> {
    F32(&'a [f32]),
    Quantized(&'a [u8]),
}

/// The output of [`QuantizedConv::forward`](super::QuantizedConv::forward).
#[derive(Debug)]
pub(crate) enum QOutput<'a> {
    /// f32 activations.
    F32(&'a mut [f32]),
    /// Activations quantised for the next convolution, whose calibrated range is `limit`:
    /// `q = clamp(round(y · (255 / limit)), 0, 255)`, the bytes the next convolution would
    /// make of the f32 output `y` if no value exceeded `limit`.
    Quantized { q: &'a mut [u8], limit: f32 },
    /// f32 activations `y`, and, from a plain 1×1 convolution on AMX, the same activations
    /// quantised for a following 1×1 convolution (calibrated range `limit`, `k4` words of `k`
    /// per column: [`QuantizedConv::panels_k4`](super::QuantizedConv::panels_k4)) and packed for it into `panels`
    /// ([`crate::kernels::amx::packed_words`]`(k4 / 16, h·w)` words). `y` is always written;
    /// [`QuantizedConv::forward`](super::QuantizedConv::forward) returns whether `panels` is valid (written, and no value
    /// exceeded `limit`).
    F32Panels {
        y: &'a mut [f32],
        panels: &'a mut [u32],
        limit: f32,
        k4: usize,
    },
    /// Only the activations quantised for a following 1×1 convolution and packed for it, as
    /// in [`QOutput::F32Panels`] (no f32 output): from a convolution that
    /// [`QuantizedConv::direct_panels`](super::QuantizedConv::direct_panels) allows, without a
    /// residual. [`QuantizedConv::forward`](super::QuantizedConv::forward) returns whether
    /// `panels` is valid.
    Panels {
        panels: &'a mut [u32],
        limit: f32,
        k4: usize,
    },
    /// bf16 only: the output written as the padded channels-last image of `grid` (bf16
    /// bits, [`Grid::len`] of them) that a following direct convolution reads
    /// ([`QInput::ImageBf16`]), from a plain 1×1 or a direct convolution on AMX without a
    /// residual.
    ImageBf16 { image: &'a mut [u16], grid: Grid },
    /// int8 only: the output quantised for the following direct convolution (calibrated
    /// range `limit`) and written as the padded channels-last image of `grid` that it reads
    /// ([`QInput::ImageU8`]), from a plain 1×1 convolution on AMX reading panels, without a
    /// residual. [`QuantizedConv::forward`](super::QuantizedConv::forward) returns whether
    /// the image is valid (written, and no value exceeded `limit`).
    ImageU8 {
        image: &'a mut [u8],
        grid: Grid,
        limit: f32,
    },
}

impl QOutput<'_> {
    /// Elements of the output, `None` for [`QOutput::Panels`] and [`QOutput::ImageBf16`] (whose
    /// lengths depend on the following convolution).
    pub(super) fn len(&self) -> Option<usize> {
        match self {
            QOutput::F32(y) => Some(y.len()),
            QOutput::Quantized { q, .. } => Some(q.len()),
            QOutput::F32Panels { y, .. } => Some(y.len()),
            QOutput::Panels { .. } | QOutput::ImageBf16 { .. } | QOutput::ImageU8 { .. } => None,
        }
    }
}
