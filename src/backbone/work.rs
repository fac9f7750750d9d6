//! The work buffers of one image's forward pass: activations in every form a block keeps
//! them (f32, bytes, bf16 bits, AMX panels, channels-last images) and the scratch of one
//! convolution call.

use crate::kernels::conv::{Bf16Scratch, QuantScratch};

/// Reusable buffers for one image.
#[derive(Default)]
pub(super) struct Work {
    pub(super) x: Vec<f32>,
    pub(super) y: Vec<f32>,
    /// The block input as bytes with the step of one unit (`value = q · step`), when the
    /// previous block's last convolution wrote it so for this block ([`QOutput::Bytes`](crate::kernels::conv::QOutput::Bytes));
    /// `wk.x` is then not valid.
    pub(super) xq: Vec<u8>,
    pub(super) x_step: Option<f32>,
    /// The block output as bytes and their step, when it was written so (`wk.y` is then not
    /// valid).
    pub(super) yq: Vec<u8>,
    pub(super) y_step: Option<f32>,
    /// The block input as bf16 bits, when the previous block's last convolution wrote it so
    /// ([`QOutput::Bf16`](crate::kernels::conv::QOutput::Bf16)): `wk.x` is then not valid.
    pub(super) xb: Vec<u16>,
    pub(super) x_bf16: bool,
    /// The block output as bf16 bits, when it was written so.
    pub(super) yb: Vec<u16>,
    pub(super) y_bf16: bool,
    pub(super) t: [Vec<f32>; 2],
    pub(super) ds: Vec<f32>,
    /// Activations kept quantised between two int8 convolutions.
    pub(super) u: [Vec<u8>; 2],
    /// The block input packed for its first convolution on AMX by the previous block's last
    /// one ([`QOutput::F32Panels`](crate::kernels::conv::QOutput::F32Panels)), and how many words of it are valid (`None`: not valid).
    pub(super) panels: Vec<u32>,
    pub(super) panels_ready: Option<usize>,
    /// The output of the block's middle (direct) convolution packed for its last one
    /// ([`QOutput::Panels`](crate::kernels::conv::QOutput::Panels)).
    pub(super) panels_mid: Vec<u32>,
    /// The block input's panels subsampled for a strided downsample
    /// ([`subsample_panels`](crate::kernels::amx::subsample_panels)).
    pub(super) panels_ds: Vec<u32>,
    /// The output of a convolution as the channels-last image of the next (direct) one, in
    /// bf16 ([`QOutput::ImageBf16`](crate::kernels::conv::QOutput::ImageBf16)).
    pub(super) image: [Vec<u16>; 2],
    pub(super) scratch: Vec<f32>,
    pub(super) q: QuantScratch,
    pub(super) b16: Bf16Scratch,
}

/// `buf[..n]`, growing `buf` if needed (contents unspecified; callers overwrite them).
pub(super) fn ensure(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
    &mut buf[..n]
}

/// The work buffers of one convolution call.
pub(super) struct Scratch<'a> {
    pub(super) f32: &'a mut Vec<f32>,
    pub(super) q: &'a mut QuantScratch,
    pub(super) b16: &'a mut Bf16Scratch,
}
