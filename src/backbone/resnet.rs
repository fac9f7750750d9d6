//! The folded network and its single-image forward pass.

use super::arch::{BlockKind, Layer, ResNetSpec};
use super::block::{run, Block, LowBlock};
use super::precision::{Calibration, Precision};
use super::weights::{load_conv_bn, TensorSource};
use super::work::{ensure, Scratch, Work};
use crate::kernels::bf16::Bf16Isa;
use crate::kernels::conv::{Bf16Conv, Conv2d, QInput, QOutput, QuantizedConv};
use crate::kernels::gemm::Parallelism;
use crate::kernels::int8::Int8Isa;
use crate::kernels::pool::{maxpool2d, maxpool_out};
use crate::{Error, Result};
use std::sync::Mutex;

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

    /// Whether it can read, with `isa`, the AMX panels that `first` reads, subsampled at its
    /// stride ([`crate::kernels::amx::subsample_panels`]), and with how many words of `k` per
    /// column: a 1×1 convolution on the same input and of the same precision, such as a
    /// block's downsample beside its first convolution.
    pub(crate) fn reads_panels_of(&self, first: &LowConv, isa: Isas) -> Option<usize> {
        let reads = match (self, first) {
            (LowConv::Int8(c), LowConv::Int8(f)) => c.reads_panels_of(f, isa.int8),
            (LowConv::Bf16(c), LowConv::Bf16(f)) => c.reads_panels_of(f, isa.bf16),
            _ => false,
        };
        reads.then(|| first.panels_kw(isa)).flatten()
    }

    /// Whether it reads its input as AMX panels ([`QInput::Panels`]) with `isa`, and with
    /// how many words of `k` per column.
    pub(crate) fn panels_kw(&self, isa: Isas) -> Option<usize> {
        match self {
            LowConv::Int8(c) => c.panels_k4(isa.int8),
            LowConv::Bf16(c) => c.panels_kw(isa.bf16),
        }
    }

    /// The range that a previous convolution must keep to for the panels it writes for this
    /// one: the calibrated one in int8 (`None` without), none (infinite) in bf16.
    pub(crate) fn panels_limit(&self) -> Option<f32> {
        match self {
            LowConv::Int8(c) => c.input_max(),
            LowConv::Bf16(_) => Some(f32::INFINITY),
        }
    }

    /// Whether it writes its output for an `h × w` input as AMX panels ([`QOutput::Panels`])
    /// with `isa`.
    pub(crate) fn direct_panels(&self, isa: Isas, h: usize, w: usize) -> bool {
        match self {
            LowConv::Int8(c) => c.direct_panels(isa.int8, h, w),
            LowConv::Bf16(c) => c.direct_panels(isa.bf16, h, w),
        }
    }

    /// Whether its last input exceeded its calibrated range (int8,
    /// [`QuantizedConv::exceeded_last`]; never for bf16).
    pub(crate) fn exceeded_last(&self) -> bool {
        match self {
            LowConv::Int8(q) => q.exceeded_last(),
            LowConv::Bf16(_) => false,
        }
    }

    /// Whether `self` can hand its output on to `next` as panels, as far as their kinds go:
    /// both int8 with activations chained (`chain`, see [`CHAIN_MIN_IMAGES`]), or both bf16
    /// (whose panels hold exactly the values `next` would make of the f32 output).
    pub(crate) fn hands_on_to(&self, next: &LowConv, chain: bool) -> bool {
        match (self, next) {
            (LowConv::Int8(_), LowConv::Int8(_)) => chain,
            (LowConv::Bf16(_), LowConv::Bf16(_)) => true,
            _ => false,
        }
    }
}

/// The reduced-precision versions of every convolution, block by block.
#[derive(Clone)]
pub(crate) struct LowNet {
    /// The stem in int8 (its image quantised with a zero point from the image's own range,
    /// [`QuantizedConv::per_image`]) or bf16, where AMX reads the image directly
    /// ([`QuantizedConv::reads_image_directly`], [`Bf16Conv::reads_image_directly`]); `None`
    /// where it stays f32.
    stem: Option<LowConv>,
    /// Per stage, per block: main-path convolutions, then the downsample (if any).
    blocks: Vec<Vec<Vec<LowConv>>>,
    precision: Precision,
    isa: Isas,
    /// Whether int8 activations stay quantised between the convolutions of a main path
    /// (see [`CHAIN_MIN_IMAGES`]).
    chain: bool,
}

/// Calibrations from fewer images than this do not keep int8 activations quantised between
/// convolutions. An image exceeds a range measured on `n` images with a chance of about
/// `1/(n + 1)` per convolution, and each time the chained output is computed a second time,
/// in f32: measured on WRN-50-2 with noise images (toggled per prediction), chaining cost 7 %
/// with 3 calibration images and saved 4 % with 8, 7 % with 12 and 8 % with 24.
pub(crate) const CHAIN_MIN_IMAGES: u64 = 8;

/// The kernels a reduced-precision network runs.
#[derive(Clone, Copy)]
pub(crate) struct Isas {
    pub(crate) int8: Int8Isa,
    pub(crate) bf16: Bf16Isa,
}

impl LowNet {
    /// [`QuantizedConv::last_range`] of every convolution after the stem, block by block
    /// (main path, then downsample): the order of the calibration's maxima. `None` for a bf16
    /// convolution.
    pub(crate) fn last_ranges(&self) -> Vec<Option<f32>> {
        self.blocks
            .iter()
            .flatten()
            .flatten()
            .map(|c| match c {
                LowConv::Int8(q) => q.last_range(),
                LowConv::Bf16(_) => None,
            })
            .collect()
    }

    /// For block `b` of stage `s`: the range ([`LowConv::panels_limit`]) and AMX words of
    /// `k` of the next block's first convolution when it reads its input as AMX panels
    /// ([`LowConv::panels_kw`]), so that block `b`'s last convolution packs its output for
    /// it. On WRN-50-2 int8 (Emerald Rapids, 2 threads) packing those 1×1 inputs from f32
    /// was 8 % of a prediction; handing them on made the backbone about 10 % faster.
    pub(crate) fn panels_for_next(&self, s: usize, b: usize) -> Option<(f32, usize)> {
        let next = match self.blocks[s].get(b + 1) {
            Some(block) => block,
            None => self.blocks.get(s + 1)?.first()?,
        };
        let (last, first) = (self.blocks[s][b].first()?, next.first()?);
        // (Every convolution of a network has the same precision; `hands_on_to` checks it.)
        if !last.hands_on_to(first, true) {
            return None;
        }
        Some((first.panels_limit()?, first.panels_kw(self.isa)?))
    }

    /// For block `b` of stage `s`: the calibrated range of the next block's first convolution
    /// when block `b`'s output is kept as bytes for it if no value exceeds that range (both
    /// int8 with activations chained, and a calibrated range), and whether block `b`'s last
    /// convolution should write them at once: not when that input exceeded its range on the
    /// last image ([`QuantizedConv::exceeded_last`]: the bytes would not be valid, and the
    /// output computed twice); the bytes are then made of the f32 output if it fits. The
    /// next block reads its residual as those bytes too, where f32 kept every bit: on
    /// WRN-50-2 int8 the f32 outputs of layer1 (3.2 MB each) were written and read back at
    /// the memory's pace.
    ///
    /// [`QOutput::Bytes`]: crate::kernels::conv::QOutput
    pub(crate) fn bytes_for_next(&self, s: usize, b: usize) -> Option<(f32, bool)> {
        if !self.chain {
            return None;
        }
        let next = match self.blocks[s].get(b + 1) {
            Some(block) => block,
            None => self.blocks.get(s + 1)?.first()?,
        };
        match (self.blocks[s][b].first()?, next.first()?) {
            (LowConv::Int8(_), LowConv::Int8(first)) => {
                Some((first.input_max()?, !first.exceeded_last()))
            }
            _ => None,
        }
    }

    /// Bytes of the reduced-precision weights.
    pub(crate) fn bytes(&self) -> usize {
        self.stem.as_ref().map_or(0, LowConv::bytes)
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

    /// Whether the stem runs in the reduced precision (else in f32).
    pub(crate) fn reduced_stem(&self) -> bool {
        self.stem.is_some()
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
                        + w.scratch.capacity()
                        + w.panels.capacity())
                        * 4
                        + w.u[0].capacity()
                        + w.u[1].capacity()
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
        // The stem runs in int8 or bf16 only on CPUs where AMX can read the image directly
        // (whichever kernels are asked for, so that every int8 kernel of a CPU gives the same
        // bits); elsewhere (im2col, then int8 or bf16 products) it was slower than the f32
        // direct stem (int8 with AVX512-VNNI: 1.12 against 0.83 ms at 224²).
        let stem = match precision {
            Precision::Int8 => {
                let stem = QuantizedConv::per_image(&self.stem)?;
                stem.reads_image_directly().then_some(LowConv::Int8(stem))
            }
            Precision::Bf16 => {
                let stem = Bf16Conv::new(&self.stem)?;
                stem.reads_image_directly().then_some(LowConv::Bf16(stem))
            }
            Precision::F32 => None,
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
            chain: cal.is_some_and(|c| c.images() >= CHAIN_MIN_IMAGES),
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

        // Stem: conv 7×7/2 + folded BN + ReLU, then max-pool 3×3/2 pad 1. In int8 and bf16
        // it runs in that precision where AMX reads the image as a narrow channels-last grid
        // (16 `u8` or 8 bf16 pixels per tile row; int8 on the image quantised with its own
        // zero point): ResNet-18 backbones int8 2.56 → 2.13 ms, bf16 3.12 → 2.65 ms. On
        // im2col it was no faster than the f32 direct stem, which runs elsewhere
        // (BENCHMARKS.md, tenth and eleventh sessions).
        let (sh, sw) = self.stem.out_hw(h, w);
        let c = self.stem.cout;
        let (mut ch, mut cw) = (maxpool_out(sh, 3, 2, 1), maxpool_out(sw, 3, 2, 1));
        let t0 = ensure(&mut wk.t[0], c * sh * sw);
        let x = ensure(&mut wk.x, c * ch * cw);
        let low_stem = match (&self.quant, &record) {
            (Some(q), None) => q.stem.as_ref().map(|stem| (stem, q.isa)),
            _ => None,
        };
        // A reduced stem on AMX is fused with its max-pool (the stem's output is never
        // written whole): ResNet-18 int8 2.24 → 2.07 ms, bf16 2.77 → 2.68 ms.
        let par = Parallelism::auto(c, sh * sw, self.stem.cin * self.stem.kh * self.stem.kw);
        let pooled = match low_stem {
            Some((LowConv::Int8(q), isa)) => {
                q.forward_pooled(image, h, w, x, true, &mut wk.q, par, isa.int8)
            }
            Some((LowConv::Bf16(b), isa)) => {
                b.forward_pooled(image, h, w, x, true, &mut wk.b16, par, isa.bf16)
            }
            None => false,
        };
        if !pooled {
            run(
                &self.stem,
                low_stem,
                (QInput::F32(image), QOutput::F32(t0)),
                h,
                w,
                None,
                true,
                &mut Scratch {
                    f32: &mut wk.scratch,
                    q: &mut wk.q,
                    b16: &mut wk.b16,
                },
            );
            maxpool2d(&wk.t[0][..c * sh * sw], c, sh, sw, 3, 2, 1, x);
        }
        let mut cc = c;
        // (Panels and bytes left by an earlier image are never read.)
        wk.panels_ready = None;
        wk.x_step = None;
        wk.x_bf16 = false;

        for (s, blocks) in self.stages.iter().enumerate() {
            for (b, block) in blocks.iter().enumerate() {
                // A calibrating pass measures the f32 network.
                let low = match (&self.quant, &record) {
                    (Some(q), None) => Some(q),
                    _ => None,
                };
                let q = low.map(|q| LowBlock {
                    convs: &q.blocks[s][b][..],
                    isa: q.isa,
                    chain: q.chain,
                    next: q.panels_for_next(s, b),
                    // Not the stage's output when that is wanted (in f32).
                    bytes_next: match want[s] && b + 1 == blocks.len() {
                        true => None,
                        false => q.bytes_for_next(s, b),
                    },
                    bits_next: !(want[s] && b + 1 == blocks.len())
                        && q.precision == Precision::Bf16,
                });
                let slots = block.convs.len() + usize::from(block.downsample.is_some());
                let rec = record.as_deref_mut().map(|r| &mut r[at..at + slots]);
                at += slots;
                let (nc, nh, nw) = block.forward(wk, cc, ch, cw, q, rec);
                std::mem::swap(&mut wk.x, &mut wk.y);
                std::mem::swap(&mut wk.xq, &mut wk.yq);
                wk.x_step = wk.y_step.take();
                std::mem::swap(&mut wk.xb, &mut wk.yb);
                wk.x_bf16 = std::mem::take(&mut wk.y_bf16);
                (cc, ch, cw) = (nc, nh, nw);
            }
            if want[s] {
                debug_assert!(
                    wk.x_step.is_none() && !wk.x_bf16,
                    "a wanted stage's output is f32"
                );
                out[s] = Some(wk.x[..cc * ch * cw].to_vec());
            }
        }
        out
    }
}
