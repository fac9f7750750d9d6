//! The forms in which a reduced-precision convolution takes its input and gives its output:
//! f32, quantised for it (int8, chained from the previous convolution), packed as AMX panels
//! (handed on from the previous convolution), or as a direct convolution's channels-last
//! image; and [`QuantizedConv::forward`], which routes each pair of forms to its path.

use std::sync::atomic::{AtomicBool, Ordering};

use super::direct::BytesFor;
use super::epilogue::{dequant_steps, epilogue, PanelBytes, Requant, SameBytes};
use super::{once, Bufs, InputRange, PerImageOut, QuantScratch, QuantizedConv};
use crate::kernels::amx::direct::{DirectBytes, Grid};
use crate::kernels::amx::{no_hand_on, HandOn};
use crate::kernels::gemm::Parallelism;
use crate::kernels::int8::{gemm_u8i8_prepacked_to_image, scale_for, Int8Isa};

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

/// The residual a convolution adds before its ReLU: f32, bytes (`value = q · step`, the
/// block input as the previous block's last int8 convolution quantised it for this block's
/// first one: [`QOutput::Bytes`]), or bf16 bits (as the previous block's last bf16
/// convolution rounded it: [`QOutput::Bf16`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Residual<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// Bytes and the step of one unit.
    Bytes { q: &'a [u8], step: f32 },
    /// bf16 bits.
    Bf16(&'a [u16]),
}

impl Residual<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Residual::F32(r) => r.len(),
            Residual::Bytes { q, .. } => q.len(),
            Residual::Bf16(b) => b.len(),
        }
    }

    /// The value of element `i`.
    pub(crate) fn value(&self, i: usize) -> f32 {
        match self {
            Residual::F32(r) => r[i],
            Residual::Bytes { q, step } => f32::from(q[i]) * step,
            Residual::Bf16(b) => crate::kernels::bf16::from_bf16(b[i]),
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
    /// int8 only: the activations quantised for the next convolution (calibrated range
    /// `limit`) as in [`QOutput::Quantized`], and, when `panels` is given (`k4` words of `k`
    /// per column, from a plain 1×1 convolution on AMX), the same bytes packed for it as in
    /// [`QOutput::F32Panels`]: the output of a block read by the next block both as its first
    /// convolution's input and as its residual ([`Residual::Bytes`]), without f32.
    /// [`QuantizedConv::forward`](super::QuantizedConv::forward) returns whether both are
    /// valid (written, and no value exceeded `limit`).
    Bytes {
        q: &'a mut [u8],
        panels: Option<(&'a mut [u32], usize)>,
        limit: f32,
    },
    /// bf16 only: the output rounded to bf16 (`y`, bits), as the next convolution rounds its
    /// input, and the same bits packed for that one (a plain 1×1 convolution on AMX, `k4`
    /// words of `k` per column) into `panels`: the output of a block read by the next block
    /// both as its first convolution's input and as its residual ([`Residual::Bf16`]).
    /// [`QuantizedConv::forward`](super::QuantizedConv::forward) refuses it; `Bf16Conv`'s
    /// returns whether it was written (only on AMX).
    Bf16 {
        y: &'a mut [u16],
        panels: &'a mut [u32],
        k4: usize,
    },
    /// bf16 only: the output written as the padded channels-last image of `grid` (bf16
    /// bits, [`Grid::len`] of them) that a following direct convolution reads
    /// ([`QInput::ImageBf16`]), from a plain 1×1 or a direct convolution on AMX without a
    /// residual.
    ImageBf16 { image: &'a mut [u16], grid: Grid },
    /// int8 only: the output quantised for the following direct convolution (calibrated
    /// range `limit`) and written as the padded channels-last image of `grid` that it reads
    /// ([`QInput::ImageU8`]), from a plain 1×1 convolution on AMX reading panels or a direct
    /// convolution on AMX, without a residual. [`QuantizedConv::forward`](super::QuantizedConv::forward) returns whether
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
            QOutput::Quantized { q, .. } | QOutput::Bytes { q, .. } => Some(q.len()),
            QOutput::Bf16 { y, .. } => Some(y.len()),
            QOutput::F32Panels { y, .. } => Some(y.len()),
            QOutput::Panels { .. } | QOutput::ImageBf16 { .. } | QOutput::ImageU8 { .. } => None,
        }
    }
}

impl QuantizedConv {
    /// [`QuantizedConv::forward_image`] with the input and the output in either form: an
    /// input already quantised for this convolution, and an output quantised for the next one
    /// (see [`QOutput::Quantized`]). Returns `false` when a quantised output is not valid
    /// because a value exceeded its range (or because this convolution quantises its input
    /// per image, which is never chained); the caller then computes it again in f32, so the
    /// results are always those of the f32 output quantised by the next convolution.
    ///
    /// # Panics
    /// If a slice length does not match the shapes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        (input, out): (QInput<'_>, QOutput<'_>),
        h: usize,
        w: usize,
        residual: Option<Residual<'_>>,
        relu: bool,
        scratch: &mut QuantScratch,
        par: Parallelism,
        isa: Int8Isa,
    ) -> bool {
        let (oh, ow) = self.out_hw(h, w);
        let p = oh * ow;
        assert!(
            !matches!(input, QInput::ImageBf16(_))
                && !matches!(out, QOutput::ImageBf16 { .. } | QOutput::Bf16 { .. }),
            "QuantizedConv: bf16 images and bits are a bf16 form"
        );
        if !matches!(input, QInput::Panels(_) | QInput::ImageU8(_)) {
            assert_eq!(input.len(), self.cin * h * w, "QuantizedConv: input length");
        }
        if let Some(len) = out.len() {
            assert_eq!(len, self.cout * p, "QuantizedConv: output length");
        }
        if let Some(r) = residual {
            assert_eq!(r.len(), self.cout * p, "QuantizedConv: residual length");
        }
        let (w_step, bias) = (&self.w_step[..], &self.bias[..]);
        let QuantScratch {
            x,
            cols,
            pack,
            dequant,
            offset,
        } = scratch;
        let bufs = Bufs { x, cols, pack };
        match (self.input, input, out) {
            (InputRange::PerImage, QInput::F32(input), QOutput::F32(out)) => {
                self.forward_per_image(
                    input,
                    h,
                    w,
                    PerImageOut::Plain(out),
                    bufs,
                    offset,
                    par,
                    isa,
                    |x_step| epilogue::<true>(dequant, w_step, x_step, bias, residual, relu, p),
                );
                true
            }
            (InputRange::PerImage, QInput::F32(input), QOutput::F32Panels { y, .. }) => {
                self.forward_per_image(
                    input,
                    h,
                    w,
                    PerImageOut::Plain(y),
                    bufs,
                    offset,
                    par,
                    isa,
                    |x_step| epilogue::<true>(dequant, w_step, x_step, bias, residual, relu, p),
                );
                false
            }
            (InputRange::PerImage, ..) => false,
            (
                InputRange::Calibrated(limit),
                input,
                QOutput::Panels {
                    panels,
                    limit: next,
                    k4,
                },
            ) => {
                if residual.is_some() {
                    return false;
                }
                let bufs = (bufs.x, bufs.cols);
                let next = (next, BytesFor::Panels { panels, k4 });
                self.forward_direct_bytes(input, limit, h, w, bufs, dequant, relu, next, par, isa)
            }
            (InputRange::Calibrated(limit), input, QOutput::F32(out)) => {
                let none = no_hand_on();
                self.forward_calibrated(
                    input,
                    limit,
                    h,
                    w,
                    out,
                    bufs,
                    par,
                    isa,
                    |range| {
                        epilogue::<false>(dequant, w_step, range / 255.0, bias, residual, relu, p)
                    },
                    none,
                );
                true
            }
            (
                InputRange::Calibrated(limit),
                input,
                QOutput::F32Panels {
                    y,
                    panels,
                    limit: next,
                    k4,
                },
            ) => {
                let over = AtomicBool::new(false);
                let bytes = PanelBytes {
                    scale: scale_for(next),
                    limit: next,
                    over: &over,
                };
                let hand_on = Some(HandOn {
                    handoff: &bytes,
                    panels,
                    kw: k4,
                });
                let handed = self.forward_calibrated(
                    input,
                    limit,
                    h,
                    w,
                    y,
                    bufs,
                    par,
                    isa,
                    |range| {
                        epilogue::<false>(dequant, w_step, range / 255.0, bias, residual, relu, p)
                    },
                    hand_on,
                );
                handed && !over.load(Ordering::Relaxed)
            }
            (_, _, QOutput::ImageBf16 { .. } | QOutput::Bf16 { .. }) => {
                unreachable!("refused above")
            }
            (
                InputRange::Calibrated(limit),
                QInput::Panels(panels),
                QOutput::ImageU8 {
                    image,
                    grid,
                    limit: next,
                },
            ) if residual.is_none() && self.plain_1x1() => {
                // (Panels hold bytes of the calibrated range.)
                self.note_range(limit, limit);
                dequant_steps(dequant, w_step, limit / 255.0);
                let bytes = DirectBytes {
                    dequant,
                    bias,
                    relu,
                    scale: scale_for(next),
                    limit: next,
                };
                let ran = gemm_u8i8_prepacked_to_image(
                    self.packed(),
                    panels,
                    grid,
                    image,
                    par,
                    isa,
                    &bytes,
                );
                ran.unwrap_or_else(|| panic!("QuantizedConv: panels for a product not on AMX"))
            }
            (
                InputRange::Calibrated(limit),
                input,
                QOutput::ImageU8 {
                    image,
                    grid,
                    limit: next,
                },
            ) if residual.is_none() && self.direct.is_some() => {
                let bufs = (bufs.x, bufs.cols);
                let next = (next, BytesFor::Image { image, grid });
                self.forward_direct_bytes(input, limit, h, w, bufs, dequant, relu, next, par, isa)
            }
            (_, _, QOutput::ImageU8 { .. }) => false,
            (InputRange::Calibrated(limit), input, QOutput::Quantized { q, limit: next }) => {
                let out = (q, None, next);
                self.forward_requantised(
                    input,
                    limit,
                    h,
                    w,
                    out,
                    (bufs, dequant),
                    residual,
                    relu,
                    par,
                    isa,
                )
            }
            (
                InputRange::Calibrated(limit),
                input,
                QOutput::Bytes {
                    q,
                    panels,
                    limit: next,
                },
            ) => {
                let out = (q, panels, next);
                self.forward_requantised(
                    input,
                    limit,
                    h,
                    w,
                    out,
                    (bufs, dequant),
                    residual,
                    relu,
                    par,
                    isa,
                )
            }
        }
    }
}

/// Panels to write for a following 1×1 convolution, and its words of `k` per column.
type PanelsOut<'a> = (&'a mut [u32], usize);

impl QuantizedConv {
    /// The output quantised for the next convolution (range `next`), and, with `panels`,
    /// packed for it too ([`QOutput::Quantized`], [`QOutput::Bytes`]); returns whether it
    /// is valid (no value exceeded `next`, and the panels, if asked for, were written).
    #[allow(clippy::too_many_arguments)]
    fn forward_requantised(
        &self,
        input: QInput<'_>,
        limit: f32,
        h: usize,
        w: usize,
        (q, panels, next): (&mut [u8], Option<PanelsOut<'_>>, f32),
        bufs: (Bufs<'_>, &mut Vec<f32>),
        residual: Option<Residual<'_>>,
        relu: bool,
        par: Parallelism,
        isa: Int8Isa,
    ) -> bool {
        let (bufs, dequant) = bufs;
        let p = {
            let (oh, ow) = self.out_hw(h, w);
            oh * ow
        };
        let over = AtomicBool::new(false);
        let (w_step, bias) = (&self.w_step[..], &self.bias[..]);
        let make = once(|range: f32| Requant {
            dequant: epilogue::<false>(dequant, w_step, range / 255.0, bias, residual, relu, p),
            scale: scale_for(next),
            limit: next,
            over: &over,
        });
        let want_panels = panels.is_some();
        let hand_on = panels.map(|(panels, kw)| HandOn {
            handoff: &SameBytes,
            panels,
            kw,
        });
        let handed = self.forward_calibrated(input, limit, h, w, q, bufs, par, isa, make, hand_on);
        (handed || !want_panels) && !over.load(Ordering::Relaxed)
    }
}
