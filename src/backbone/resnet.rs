//! The folded network and its single-image forward pass.

use super::arch::{BlockKind, Layer, ResNetSpec};
use super::precision::{Calibration, Precision};
use super::weights::{load_conv_bn, TensorSource};
use crate::kernels::bf16::Bf16Isa;
use crate::kernels::conv::{Bf16Conv, Bf16Scratch, Conv2d, QuantScratch, QuantizedConv};
use crate::kernels::gemm::Parallelism;
use crate::kernels::int8::Int8Isa;
use crate::kernels::pool::{maxpool2d, maxpool_out};
use crate::{Error, Result};
use std::sync::Mutex;

/// One residual block with BatchNorm folded into every convolution.
#[derive(Clone)]
struct Block {
    /// Main-path convolutions: 2 (basic) or 3 (bottleneck); the last one takes the residual.
    convs: Vec<Conv2d>,
    /// 1×1 projection of the identity branch, when channels or stride change.
    downsample: Option<Conv2d>,
}

/// A reduced-precision convolution.
#[derive(Clone)]
pub(crate) enum LowConv {
    Int8(QuantizedConv),
    Bf16(Bf16Conv),
}

impl LowConv {
    fn bytes(&self) -> usize {
        match self {
            LowConv::Int8(c) => c.bytes(),
            LowConv::Bf16(c) => c.bytes(),
        }
    }
}

/// The reduced-precision versions of every convolution, block by block.
#[derive(Clone)]
pub(crate) struct LowNet {
    /// The stem (int8: quantised with a zero point from each image's own range).
    stem: LowConv,
    /// Per stage, per block: main-path convolutions, then the downsample (if any).
    blocks: Vec<Vec<Vec<LowConv>>>,
    precision: Precision,
    isa: Isas,
}

/// The kernels a reduced-precision network runs.
#[derive(Clone, Copy)]
pub(crate) struct Isas {
    pub(crate) int8: Int8Isa,
    pub(crate) bf16: Bf16Isa,
}

impl LowNet {
    /// Bytes of the reduced-precision weights.
    pub(crate) fn bytes(&self) -> usize {
        self.stem.bytes()
            + self
                .blocks
                .iter()
                .flatten()
                .flatten()
                .map(LowConv::bytes)
                .sum::<usize>()
    }

    /// The precision it runs in.
    pub(crate) fn precision(&self) -> Precision {
        self.precision
    }

    /// The kernels it runs.
    pub(crate) fn isa(&self) -> Isas {
        self.isa
    }
}

/// Stem + stages up to the deepest tap, BatchNorm folded.
pub(crate) struct Net {
    stem: Conv2d,
    stages: Vec<Vec<Block>>,
    /// The reduced-precision network, when the backbone runs in int8 or bf16.
    quant: Option<LowNet>,
    /// Work buffers of finished forward passes, reused by the next ones so that a forward
    /// pass does not allocate (and page-fault) tens of MB of fresh memory every time. At most
    /// one set per concurrently running image is kept.
    spare: Mutex<Vec<Work>>,
}

impl Clone for Net {
    fn clone(&self) -> Self {
        Net {
            stem: self.stem.clone(),
            stages: self.stages.clone(),
            quant: self.quant.clone(),
            spare: Mutex::new(Vec::new()),
        }
    }
}

/// Reusable buffers for one image.
#[derive(Default)]
struct Work {
    x: Vec<f32>,
    y: Vec<f32>,
    t: [Vec<f32>; 2],
    ds: Vec<f32>,
    scratch: Vec<f32>,
    q: QuantScratch,
    b16: Bf16Scratch,
}

/// `buf[..n]`, growing `buf` if needed (contents unspecified; callers overwrite them).
fn ensure(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
    &mut buf[..n]
}

impl Net {
    /// Drops what forward passes rebuild on demand: the transformed filters and the spare
    /// work buffers.
    pub(crate) fn release_caches(&mut self) {
        self.stem.release_transformed_filters();
        for block in self.stages.iter_mut().flatten() {
            for c in block.convs.iter_mut().chain(block.downsample.as_mut()) {
                c.release_transformed_filters();
            }
        }
        if let Ok(spare) = self.spare.get_mut() {
            *spare = Vec::new();
        }
    }

    /// Every convolution, in a fixed order.
    fn convs_mut(&mut self) -> impl Iterator<Item = &mut Conv2d> {
        std::iter::once(&mut self.stem).chain(
            self.stages
                .iter_mut()
                .flatten()
                .flat_map(|b| b.convs.iter_mut().chain(b.downsample.as_mut())),
        )
    }

    /// Hands every convolution's parameters to `out` and frees them (see
    /// [`Conv2d::stash_parameters`]), with the caches.
    pub(crate) fn stash_parameters(
        &mut self,
        out: &mut dyn FnMut(&[f32]) -> Result<()>,
    ) -> Result<()> {
        self.release_caches();
        for c in self.convs_mut() {
            c.stash_parameters(out)?;
        }
        Ok(())
    }

    /// Reads back what [`Net::stash_parameters`] handed out, in the same order.
    pub(crate) fn restore_parameters(
        &mut self,
        input: &mut dyn FnMut(&mut [f32]) -> Result<()>,
    ) -> Result<()> {
        for c in self.convs_mut() {
            c.restore_parameters(input)?;
        }
        Ok(())
    }

    /// Bytes of all weights and biases.
    pub(crate) fn weight_bytes(&self) -> usize {
        let convs = std::iter::once(&self.stem).chain(
            self.stages
                .iter()
                .flatten()
                .flat_map(|b| b.convs.iter().chain(b.downsample.as_ref())),
        );
        convs.map(|c| (c.weight().len() + c.bias().len()) * 4).sum()
    }

    /// Bytes [`Net::release_caches`] would free.
    pub(crate) fn cache_bytes(&self) -> usize {
        let convs = std::iter::once(&self.stem).chain(
            self.stages
                .iter()
                .flatten()
                .flat_map(|b| b.convs.iter().chain(b.downsample.as_ref())),
        );
        let filters: usize = convs.map(Conv2d::transformed_filter_bytes).sum();
        let work: usize = self.spare.lock().map_or(0, |spare| {
            spare
                .iter()
                .map(|w| {
                    (w.x.capacity()
                        + w.y.capacity()
                        + w.t[0].capacity()
                        + w.t[1].capacity()
                        + w.ds.capacity()
                        + w.scratch.capacity())
                        * 4
                        + w.q.bytes()
                        + w.b16.bytes()
                })
                .sum()
        });
        filters + work
    }

    /// Builds the network up to and including `last`, reading tensors in
    /// [`ResNetSpec::expected_tensors`] order.
    pub(crate) fn build(spec: &ResNetSpec, last: Layer, src: &mut dyn TensorSource) -> Result<Net> {
        let c0 = spec.stem_channels;
        let stem = load_conv_bn(src, "conv1", "bn1", [c0, 3, 7, 7], 2, 3)?;
        let mut stages = Vec::with_capacity(last.index() + 1);
        for s in 0..=last.index() {
            let mut blocks = Vec::with_capacity(spec.blocks[s]);
            for b in 0..spec.blocks[s] {
                let stride = if b == 0 {
                    ResNetSpec::stage_stride(s)
                } else {
                    1
                };
                let mut convs = Vec::with_capacity(3);
                let mut downsample = None;
                for (i, (cname, bname, shape)) in spec.block_convs(s, b).into_iter().enumerate() {
                    let is_ds = cname.ends_with("downsample.0");
                    // The stride sits on the first 3×3 conv (basic conv1, bottleneck conv2) and
                    // on the downsample projection.
                    let strided = is_ds
                        || match spec.block {
                            BlockKind::Basic => i == 0,
                            BlockKind::Bottleneck => i == 1,
                        };
                    let pad = shape[2] / 2;
                    let conv = load_conv_bn(
                        src,
                        &cname,
                        &bname,
                        shape,
                        if strided { stride } else { 1 },
                        pad,
                    )?;
                    if is_ds {
                        downsample = Some(conv);
                    } else {
                        convs.push(conv);
                    }
                }
                blocks.push(Block { convs, downsample });
            }
            stages.push(blocks);
        }
        Ok(Net {
            stem,
            stages,
            quant: None,
            spare: Mutex::new(Vec::new()),
        })
    }

    /// Number of convolutions after the stem (the length of a [`Calibration`]).
    pub(crate) fn calibrated_convs(&self) -> usize {
        self.stages
            .iter()
            .flatten()
            .map(|b| b.convs.len() + usize::from(b.downsample.is_some()))
            .sum()
    }

    /// Switches the convolutions to `precision` (int8 with the ranges of `cal`, which it needs
    /// for every convolution after the stem; bf16; f32 drops the reduced network).
    pub(crate) fn set_precision(
        &mut self,
        precision: Precision,
        cal: Option<&Calibration>,
        isa: Isas,
    ) -> Result<()> {
        let n = self.calibrated_convs();
        let ranges: Vec<f32> = match (precision, cal) {
            (Precision::F32, _) => {
                self.quant = None;
                return Ok(());
            }
            (Precision::Int8, Some(cal)) => {
                if cal.maxima().len() != n {
                    return Err(Error::input(format!(
                        "the int8 calibration holds {} activation ranges, but this backbone \
                         has {n} convolutions after the stem",
                        cal.maxima().len()
                    )));
                }
                cal.maxima().to_vec()
            }
            (Precision::Int8, None) => {
                return Err(Error::param(
                    "precision",
                    "int8 needs the activation ranges measured on the fitted images (a \
                     calibration); refit the model to record them",
                ))
            }
            (Precision::Bf16, _) => Vec::new(),
        };
        let mut ranges = ranges.into_iter();
        let mut low = |c: &Conv2d| -> Result<LowConv> {
            Ok(match precision {
                Precision::Bf16 => LowConv::Bf16(Bf16Conv::new(c)?),
                _ => LowConv::Int8(QuantizedConv::new(c, ranges.next().unwrap_or(0.0))?),
            })
        };
        let stem = match precision {
            Precision::Bf16 => LowConv::Bf16(Bf16Conv::new(&self.stem)?),
            _ => LowConv::Int8(QuantizedConv::per_image(&self.stem)?),
        };
        let mut blocks = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            let mut qs = Vec::with_capacity(stage.len());
            for b in stage {
                let mut q = Vec::with_capacity(b.convs.len() + 1);
                for c in b.convs.iter().chain(b.downsample.as_ref()) {
                    q.push(low(c)?);
                }
                qs.push(q);
            }
            blocks.push(qs);
        }
        self.quant = Some(LowNet {
            stem,
            blocks,
            precision,
            isa,
        });
        Ok(())
    }

    /// The reduced-precision network, if the backbone runs in int8 or bf16.
    pub(crate) fn reduced(&self) -> Option<&LowNet> {
        self.quant.as_ref()
    }

    /// Forward pass of one `[3, h, w]` image. Returns the output of every stage in `want`
    /// (`want[s]` ⇔ keep stage `s`), indexed by stage; stages not wanted are `None`.
    pub(crate) fn forward_image(
        &self,
        image: &[f32],
        h: usize,
        w: usize,
        want: [bool; 4],
        record: Option<&mut [f32]>,
    ) -> [Option<Vec<f32>>; 4] {
        // A poisoned lock only means another forward pass panicked; the buffers are plain
        // scratch whose contents are never read before being written, so reuse is safe.
        let mut wk = match self.spare.lock() {
            Ok(mut v) => v.pop(),
            Err(p) => p.into_inner().pop(),
        }
        .unwrap_or_default();
        let out = self.forward_with(&mut wk, image, h, w, want, record);
        match self.spare.lock() {
            Ok(mut v) => v.push(wk),
            Err(p) => p.into_inner().push(wk),
        }
        out
    }

    fn forward_with(
        &self,
        wk: &mut Work,
        image: &[f32],
        h: usize,
        w: usize,
        want: [bool; 4],
        mut record: Option<&mut [f32]>,
    ) -> [Option<Vec<f32>>; 4] {
        let mut out: [Option<Vec<f32>>; 4] = Default::default();
        let mut at = 0usize; // next calibration slot

        // Stem: conv 7×7/2 + folded BN + ReLU, then max-pool 3×3/2 pad 1. A calibrating pass
        // measures the f32 network.
        let (sh, sw) = self.stem.out_hw(h, w);
        let c = self.stem.cout;
        let t0 = ensure(&mut wk.t[0], c * sh * sw);
        let low_stem = match (&self.quant, &record) {
            (Some(q), None) => Some((&q.stem, q.isa)),
            _ => None,
        };
        run(
            &self.stem,
            low_stem,
            image,
            h,
            w,
            t0,
            None,
            true,
            &mut Scratch {
                f32: &mut wk.scratch,
                q: &mut wk.q,
                b16: &mut wk.b16,
            },
        );
        let (mut ch, mut cw) = (maxpool_out(sh, 3, 2, 1), maxpool_out(sw, 3, 2, 1));
        let x = ensure(&mut wk.x, c * ch * cw);
        maxpool2d(&wk.t[0][..c * sh * sw], c, sh, sw, 3, 2, 1, x);
        let mut cc = c;

        for (s, blocks) in self.stages.iter().enumerate() {
            for (b, block) in blocks.iter().enumerate() {
                // A calibrating pass measures the f32 network.
                let q = match (&self.quant, &record) {
                    (Some(q), None) => Some((&q.blocks[s][b][..], q.isa)),
                    _ => None,
                };
                let slots = block.convs.len() + usize::from(block.downsample.is_some());
                let rec = record.as_deref_mut().map(|r| &mut r[at..at + slots]);
                at += slots;
                let (nc, nh, nw) = block.forward(wk, cc, ch, cw, q, rec);
                std::mem::swap(&mut wk.x, &mut wk.y);
                (cc, ch, cw) = (nc, nh, nw);
            }
            if want[s] {
                out[s] = Some(wk.x[..cc * ch * cw].to_vec());
            }
        }
        out
    }
}

/// The work buffers of one convolution call.
struct Scratch<'a> {
    f32: &'a mut Vec<f32>,
    q: &'a mut QuantScratch,
    b16: &'a mut Bf16Scratch,
}

/// The largest value of `x` (0 for an empty or all-negative slice).
fn max_of(x: &[f32]) -> f32 {
    crate::kernels::int8::max_or_zero(x)
}

/// One convolution, in f32 or reduced precision.
#[allow(clippy::too_many_arguments)]
fn run(
    conv: &Conv2d,
    q: Option<(&LowConv, Isas)>,
    src: &[f32],
    h: usize,
    w: usize,
    dst: &mut [f32],
    residual: Option<&[f32]>,
    relu: bool,
    wk: &mut Scratch<'_>,
) {
    let par = |cout: usize, (oh, ow): (usize, usize)| {
        Parallelism::auto(cout, oh * ow, conv.cin * conv.kh * conv.kw)
    };
    match q {
        Some((LowConv::Int8(qc), isa)) => {
            let p = par(qc.cout, qc.out_hw(h, w));
            qc.forward_image(src, h, w, dst, residual, relu, wk.q, p, isa.int8);
        }
        Some((LowConv::Bf16(bc), isa)) => {
            let p = par(bc.cout, bc.out_hw(h, w));
            bc.forward_image(src, h, w, dst, residual, relu, wk.b16, p, isa.bf16);
        }
        None => conv.forward_image(src, h, w, dst, residual, relu, wk.f32),
    }
}

impl Block {
    /// Reads `wk.x` (`[c, h, w]`), writes `wk.y`; returns the output shape. With `q`, the
    /// convolutions run in int8 (`q` holds them in the order main path, downsample); with
    /// `record`, the largest input of each convolution (same order) is written there.
    fn forward(
        &self,
        wk: &mut Work,
        c: usize,
        h: usize,
        w: usize,
        q: Option<(&[LowConv], Isas)>,
        mut record: Option<&mut [f32]>,
    ) -> (usize, usize, usize) {
        let x = &wk.x[..c * h * w];
        let n = self.convs.len();
        if let Some(r) = record.as_deref_mut() {
            // The first convolution and the downsample both read the block's input.
            let m = max_of(x);
            r[0] = m;
            if self.downsample.is_some() {
                r[n] = m;
            }
        }
        let qconv = |i: usize| q.map(|(qs, isa)| (&qs[i], isa));
        // Main path up to (not including) the last conv, each with ReLU.
        let (mut mc, mut mh, mut mw) = (c, h, w);
        let mut src_is_x = true;
        let mut cur = 0usize; // which of wk.t holds the current activation
        for (i, conv) in self.convs[..n - 1].iter().enumerate() {
            let (oh, ow) = conv.out_hw(mh, mw);
            let dst_idx = i % 2;
            let (a, b) = wk.t.split_at_mut(1);
            let (src, dst): (&[f32], &mut Vec<f32>) = if src_is_x {
                (x, if dst_idx == 0 { &mut a[0] } else { &mut b[0] })
            } else if dst_idx == 0 {
                (&b[0][..mc * mh * mw], &mut a[0])
            } else {
                (&a[0][..mc * mh * mw], &mut b[0])
            };
            let dst = ensure(dst, conv.cout * oh * ow);
            run(
                conv,
                qconv(i),
                src,
                mh,
                mw,
                dst,
                None,
                true,
                &mut Scratch {
                    f32: &mut wk.scratch,
                    q: &mut wk.q,
                    b16: &mut wk.b16,
                },
            );
            if let Some(r) = record.as_deref_mut() {
                r[i + 1] = max_of(dst);
            }
            (mc, mh, mw) = (conv.cout, oh, ow);
            src_is_x = false;
            cur = dst_idx;
        }
        // Identity branch.
        let last = &self.convs[n - 1];
        let (oh, ow) = last.out_hw(mh, mw);
        let oc = last.cout;
        let identity: &[f32] = match &self.downsample {
            Some(ds) => {
                let d = ensure(&mut wk.ds, ds.cout * oh * ow);
                run(
                    ds,
                    qconv(n),
                    x,
                    h,
                    w,
                    d,
                    None,
                    false,
                    &mut Scratch {
                        f32: &mut wk.scratch,
                        q: &mut wk.q,
                        b16: &mut wk.b16,
                    },
                );
                &wk.ds[..oc * oh * ow]
            }
            None => x,
        };
        debug_assert_eq!(identity.len(), oc * oh * ow);
        let src: &[f32] = &wk.t[cur][..mc * mh * mw];
        let y = ensure(&mut wk.y, oc * oh * ow);
        run(
            last,
            qconv(n - 1),
            src,
            mh,
            mw,
            y,
            Some(identity),
            true,
            &mut Scratch {
                f32: &mut wk.scratch,
                q: &mut wk.q,
                b16: &mut wk.b16,
            },
        );
        (oc, oh, ow)
    }
}
