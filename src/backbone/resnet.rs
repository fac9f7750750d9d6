//! The folded network and its single-image forward pass.

use super::arch::{BlockKind, Layer, ResNetSpec};
use super::precision::{Calibration, Precision};
use super::weights::{load_conv_bn, TensorSource};
use crate::kernels::bf16::Bf16Isa;
use crate::kernels::conv::{
    Bf16Conv, Bf16Scratch, Conv2d, QInput, QOutput, QuantScratch, QuantizedConv,
};
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
    /// The stem, in bf16; `None` in int8, where it stays f32. An int8 stem
    /// ([`QuantizedConv::per_image`]) is faster on its own (7×7 on 224²: 1.14 against 1.55 ms),
    /// but whole int8 predictions were 4–5 % slower with it than without it, measured
    /// between separate builds (never within one process, where it measured 4 % faster); the
    /// cause was not found.
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
/// in f32: measured on WRN-50-2 with noise images (`zz_ab`, interleaved), chaining cost 7 %
/// with 3 calibration images and saved 4 % with 8, 7 % with 12 and 8 % with 24.
pub(crate) const CHAIN_MIN_IMAGES: u64 = 8;

/// The kernels a reduced-precision network runs.
#[derive(Clone, Copy)]
pub(crate) struct Isas {
    pub(crate) int8: Int8Isa,
    pub(crate) bf16: Bf16Isa,
}

impl LowNet {
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
    /// Activations kept quantised between two int8 convolutions.
    u: [Vec<u8>; 2],
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
        // bf16 runs the stem too; int8 keeps it in f32 (see `LowNet::stem`).
        let stem = match precision {
            Precision::Bf16 => Some(LowConv::Bf16(Bf16Conv::new(&self.stem)?)),
            _ => None,
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

        // Stem: conv 7×7/2 + folded BN + ReLU, then max-pool 3×3/2 pad 1. A calibrating pass
        // measures the f32 network.
        let (sh, sw) = self.stem.out_hw(h, w);
        let c = self.stem.cout;
        let t0 = ensure(&mut wk.t[0], c * sh * sw);
        let low_stem = match (&self.quant, &record) {
            (Some(q), None) => q.stem.as_ref().map(|stem| (stem, q.isa)),
            _ => None,
        };
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
        let (mut ch, mut cw) = (maxpool_out(sh, 3, 2, 1), maxpool_out(sw, 3, 2, 1));
        let x = ensure(&mut wk.x, c * ch * cw);
        maxpool2d(&wk.t[0][..c * sh * sw], c, sh, sw, 3, 2, 1, x);
        let mut cc = c;

        for (s, blocks) in self.stages.iter().enumerate() {
            for (b, block) in blocks.iter().enumerate() {
                // A calibrating pass measures the f32 network.
                let q = match (&self.quant, &record) {
                    (Some(q), None) => Some((&q.blocks[s][b][..], q.isa, q.chain)),
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

/// One convolution, in f32 or reduced precision, with its input and output in either form
/// (quantised forms only for int8 convolutions, see [`QuantizedConv::forward`]). Returns
/// `false` when a quantised output is not valid (a value exceeded the next convolution's
/// range); it must then be computed again in f32.
#[allow(clippy::too_many_arguments)]
fn run(
    conv: &Conv2d,
    q: Option<(&LowConv, Isas)>,
    (src, dst): (QInput<'_>, QOutput<'_>),
    h: usize,
    w: usize,
    residual: Option<&[f32]>,
    relu: bool,
    wk: &mut Scratch<'_>,
) -> bool {
    let par = |cout: usize, (oh, ow): (usize, usize)| {
        Parallelism::auto(cout, oh * ow, conv.cin * conv.kh * conv.kw)
    };
    match (q, src, dst) {
        (Some((LowConv::Int8(qc), isa)), src, dst) => {
            let p = par(qc.cout, qc.out_hw(h, w));
            qc.forward((src, dst), h, w, residual, relu, wk.q, p, isa.int8)
        }
        (Some((LowConv::Bf16(bc), isa)), QInput::F32(src), QOutput::F32(dst)) => {
            let p = par(bc.cout, bc.out_hw(h, w));
            bc.forward_image(src, h, w, dst, residual, relu, wk.b16, p, isa.bf16);
            true
        }
        (None, QInput::F32(src), QOutput::F32(dst)) => {
            conv.forward_image(src, h, w, dst, residual, relu, wk.f32);
            true
        }
        // Quantised forms are only ever asked of int8 convolutions.
        _ => unreachable!("a quantised activation for a convolution that is not int8"),
    }
}

/// The two buffers of `pair`: the one that is not `dst`, and `dst`.
fn other_and<T>(pair: &mut [Vec<T>; 2], dst: usize) -> (&Vec<T>, &mut Vec<T>) {
    let (a, b) = pair.split_at_mut(1);
    if dst == 0 {
        (&b[0], &mut a[0])
    } else {
        (&a[0], &mut b[0])
    }
}

/// Where a block's current main-path activation is.
#[derive(Clone, Copy)]
enum Act {
    /// The block's input, `wk.x`.
    Input,
    /// `wk.t[i]`, f32.
    F32(usize),
    /// `wk.u[i]`, quantised for the convolution that reads it.
    U8(usize),
}

impl Block {
    /// Reads `wk.x` (`[c, h, w]`), writes `wk.y`; returns the output shape. With `q`, the
    /// convolutions run in reduced precision (`q` holds them in the order main path,
    /// downsample), and, if its flag says so, between two int8 convolutions of the main path
    /// the activation stays quantised; with `record`, the largest input of each convolution (same order) is
    /// written there.
    fn forward(
        &self,
        wk: &mut Work,
        c: usize,
        h: usize,
        w: usize,
        q: Option<(&[LowConv], Isas, bool)>,
        mut record: Option<&mut [f32]>,
    ) -> (usize, usize, usize) {
        let n = self.convs.len();
        if let Some(r) = record.as_deref_mut() {
            // The first convolution and the downsample both read the block's input.
            let m = max_of(&wk.x[..c * h * w]);
            r[0] = m;
            if self.downsample.is_some() {
                r[n] = m;
            }
        }
        let qconv = |i: usize| q.map(|(qs, isa, _)| (&qs[i], isa));
        let chain = q.is_some_and(|(_, _, chain)| chain);
        // The range of convolution `i`'s input, when it is int8 with a calibrated range.
        let int8_range = |i: usize| match qconv(i) {
            Some((LowConv::Int8(qc), _)) => qc.input_max(),
            _ => None,
        };
        // Main path up to (not including) the last conv, each with ReLU.
        let (mut mc, mut mh, mut mw) = (c, h, w);
        let mut act = Act::Input;
        for (i, conv) in self.convs[..n - 1].iter().enumerate() {
            let (oh, ow) = conv.out_hw(mh, mw);
            let (d, len_in, len_out) = (i % 2, mc * mh * mw, conv.cout * oh * ow);
            let x = &wk.x[..c * h * w];
            let (t_src, t_dst) = other_and(&mut wk.t, d);
            let (u_src, u_dst) = other_and(&mut wk.u, d);
            let src = match act {
                Act::Input => QInput::F32(x),
                Act::F32(_) => QInput::F32(&t_src[..len_in]),
                Act::U8(_) => QInput::Quantized(&u_src[..len_in]),
            };
            let mut scratch = Scratch {
                f32: &mut wk.scratch,
                q: &mut wk.q,
                b16: &mut wk.b16,
            };
            // Quantised for the next convolution when both are int8, unless a value exceeds
            // its range; then (or otherwise) in f32.
            let mut quantised = false;
            let int8 = matches!(qconv(i), Some((LowConv::Int8(_), _)));
            if let (true, true, Some(limit)) = (chain, int8, int8_range(i + 1)) {
                if u_dst.len() < len_out {
                    u_dst.resize(len_out, 0);
                }
                let out = QOutput::Quantized {
                    q: &mut u_dst[..len_out],
                    limit,
                };
                quantised = run(conv, qconv(i), (src, out), mh, mw, None, true, &mut scratch);
            }
            if quantised {
                act = Act::U8(d);
            } else {
                let dst = ensure(t_dst, len_out);
                let io = (src, QOutput::F32(dst));
                run(conv, qconv(i), io, mh, mw, None, true, &mut scratch);
                if let Some(r) = record.as_deref_mut() {
                    r[i + 1] = max_of(&t_dst[..len_out]);
                }
                act = Act::F32(d);
            }
            (mc, mh, mw) = (conv.cout, oh, ow);
        }
        // Identity branch.
        let last = &self.convs[n - 1];
        let (oh, ow) = last.out_hw(mh, mw);
        let oc = last.cout;
        let x = &wk.x[..c * h * w];
        let mut scratch = Scratch {
            f32: &mut wk.scratch,
            q: &mut wk.q,
            b16: &mut wk.b16,
        };
        let identity: &[f32] = match &self.downsample {
            Some(ds) => {
                let d = ensure(&mut wk.ds, ds.cout * oh * ow);
                let io = (QInput::F32(x), QOutput::F32(d));
                run(ds, qconv(n), io, h, w, None, false, &mut scratch);
                &wk.ds[..oc * oh * ow]
            }
            None => x,
        };
        debug_assert_eq!(identity.len(), oc * oh * ow);
        let len_in = mc * mh * mw;
        let src = match act {
            Act::Input => QInput::F32(x),
            Act::F32(j) => QInput::F32(&wk.t[j][..len_in]),
            Act::U8(j) => QInput::Quantized(&wk.u[j][..len_in]),
        };
        let y = ensure(&mut wk.y, oc * oh * ow);
        let io = (src, QOutput::F32(y));
        run(
            last,
            qconv(n - 1),
            io,
            mh,
            mw,
            Some(identity),
            true,
            &mut scratch,
        );
        (oc, oh, ow)
    }
}
