//! One residual block's forward pass, in f32 or reduced precision.

use super::resnet::{Isas, LowConv};
use super::work::{ensure, Scratch, Work};
use crate::kernels::aligned::{aligned, aligned_mut};
use crate::kernels::conv::{Conv2d, QInput, QOutput, Residual};
use crate::kernels::gemm::Parallelism;
use crate::kernels::wide::Wide;

/// One residual block with BatchNorm folded into every convolution.
#[derive(Clone)]
pub(super) struct Block {
    /// Main-path convolutions: 2 (basic) or 3 (bottleneck); the last one takes the residual.
    pub(super) convs: Vec<Conv2d>,
    /// 1×1 projection of the identity branch, when channels or stride change.
    pub(super) downsample: Option<Conv2d>,
}

/// The largest value of `x` (0 for an empty or all-negative slice).
fn max_of(x: &[f32]) -> f32 {
    crate::kernels::int8::max_or_zero(x)
}

/// One convolution, in f32 or reduced precision, with its input and output in either form
/// (quantised forms and AMX panels only for int8 convolutions, see
/// [`QuantizedConv::forward`](crate::kernels::conv::QuantizedConv)). Returns whether the
/// output's quantised or packed form is valid: `false` when a quantised output is not (a
/// value exceeded the next convolution's range; it must then be computed again in f32), or
/// when panels were not written (the f32 output is valid either way).
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    conv: &Conv2d,
    q: Option<(&LowConv, Isas)>,
    (src, dst): (QInput<'_>, QOutput<'_>),
    h: usize,
    w: usize,
    residual: Option<Residual<'_>>,
    relu: bool,
    wk: &mut Scratch<'_>,
) -> bool {
    // Only reduced-precision blocks keep their outputs as bytes or bits.
    let f32_residual = || {
        residual.map(|r| match r {
            Residual::F32(r) => r,
            _ => unreachable!("a residual of bytes or bits for an f32 convolution"),
        })
    };
    let par = |cout: usize, (oh, ow): (usize, usize)| {
        Parallelism::auto(cout, oh * ow, conv.cin * conv.kh * conv.kw)
    };
    match (q, src, dst) {
        (Some((LowConv::Int8(qc), isa)), src, dst) => {
            let p = par(qc.cout, qc.out_hw(h, w));
            qc.forward((src, dst), h, w, residual, relu, wk.q, p, isa.int8)
        }
        (Some((LowConv::Bf16(bc), isa)), src, dst) => {
            let p = par(bc.cout, bc.out_hw(h, w));
            bc.forward((src, dst), h, w, residual, relu, wk.b16, p, isa.bf16)
        }
        (None, QInput::F32(src), QOutput::F32(dst)) => {
            conv.forward_image(src, h, w, dst, f32_residual(), relu, wk.f32);
            true
        }
        // Quantised forms and panels are only ever asked of int8 and bf16 convolutions.
        _ => unreachable!("a quantised activation for an f32 convolution"),
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

/// A block's reduced-precision convolutions and how they run.
#[derive(Clone, Copy)]
pub(super) struct LowBlock<'a> {
    /// Main-path convolutions, then the downsample (if any).
    pub(super) convs: &'a [LowConv],
    pub(super) isa: Isas,
    /// Int8 activations stay quantised between the convolutions of the main path.
    pub(super) chain: bool,
    /// The calibrated range and AMX words of `k` of the next block's first convolution, when
    /// it reads AMX panels (see [`Block::forward`]).
    pub(super) next: Option<(f32, usize)>,
    /// The calibrated range of the next block's first convolution, when the block's output
    /// is kept as bytes for it if no value exceeds that range (see [`Block::forward`]), and
    /// whether to write the bytes at once (else f32 first, quantised after).
    pub(super) bytes_next: Option<(f32, bool)>,
    /// Whether the block's output may be kept as bf16 bits for the next block, with its
    /// panels (see [`Block::forward`]).
    pub(super) bits_next: bool,
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
    /// The first `n` words of `wk.panels_mid` (aligned), packed for the last convolution.
    Panels(usize),
    /// The first `n` elements of `wk.image[i]` (aligned), the channels-last image of the
    /// next (direct) convolution.
    ImageBf16(usize, usize),
    /// The first `n` bytes of `wk.u[i]` (aligned), the channels-last image of the next
    /// (direct) convolution, quantised for it.
    ImageU8(usize, usize),
}

impl Block {
    /// Reads `wk.x` (`[c, h, w]`), writes `wk.y`; returns the output shape. With `q`, the
    /// convolutions run in reduced precision (`q` holds them in the order main path,
    /// downsample), and, if its flag says so, between two int8 convolutions of the main path
    /// the activation stays quantised; with `record`, the largest input of each convolution
    /// (same order) is written there.
    ///
    /// With `q.next` (the calibrated range and [`QuantizedConv::panels_k4`] of the next block's
    /// first convolution), the last convolution also packs its output for that one into
    /// `wk.panels` when it can ([`QOutput::F32Panels`]), and `wk.panels_ready` says whether it
    /// did; the first convolution reads its input from there when `wk.panels_ready` is set
    /// (and clears it).
    ///
    /// With `q.bytes_next`, the output is kept as bytes for the next block (`wk.yq`, and
    /// `wk.y_step` set) unless a value exceeds that range: the last convolution writes them
    /// ([`QOutput::Bytes`]), together with its panels when there are any, or, when asked
    /// for f32 first (or a value exceeded the range), it writes f32 as above and the bytes
    /// are made of that (the same bytes). A block whose input is bytes (`wk.x_step`) reads
    /// them as its first convolution's input and as its residual ([`Residual::Bytes`]).
    ///
    /// With `q.bits_next` (bf16), the last convolution writes its output as bf16 bits for
    /// the next block (`wk.yb`, `wk.y_bf16` set; [`QOutput::Bf16`]) together with its panels,
    /// when it runs on AMX and the next block reads panels; the next block reads those as
    /// its residual ([`Residual::Bf16`]).
    ///
    /// [`QuantizedConv::panels_k4`]: crate::kernels::conv::QuantizedConv
    pub(super) fn forward(
        &self,
        wk: &mut Work,
        c: usize,
        h: usize,
        w: usize,
        q: Option<LowBlock<'_>>,
        mut record: Option<&mut [f32]>,
    ) -> (usize, usize, usize) {
        // Panels from the previous block are for this block's first convolution only.
        let mut panels_in = wk.panels_ready.take();
        let n = self.convs.len();
        wk.y_step = None;
        wk.y_bf16 = false;
        let qconv = |i: usize| q.map(|l| (&l.convs[i], l.isa));
        // The bytes of an input kept as bytes are the first convolution's quantised input,
        // and the downsample's when its range is the same; anything else reads f32.
        let first_range = match qconv(0) {
            Some((LowConv::Int8(qc), _)) => qc.input_max(),
            _ => None,
        };
        let same_range = |i: usize| match qconv(i) {
            Some((LowConv::Int8(qc), _)) => {
                qc.input_max().is_some() && qc.input_max() == first_range
            }
            _ => false,
        };
        let x_bytes = match wk.x_step.take() {
            Some(step)
                if n >= 2
                    && record.is_none()
                    && same_range(0)
                    && (self.downsample.is_none() || same_range(n)) =>
            {
                Some(step)
            }
            Some(step) => {
                let len = c * h * w;
                let x = ensure(&mut wk.x, len);
                for (x, &q) in x.iter_mut().zip(&wk.xq[..len]) {
                    *x = f32::from(q) * step;
                }
                None
            }
            None => None,
        };
        // An f32 input (the first block's, from the stem) packed once for the first
        // convolution and the downsample when both read the same panels, instead of packed by
        // each (and, for the first, read as panels it writes its output as the next one's
        // channels-last image), unless a value exceeds the range.
        if let (None, None, false, Some((first, isa)), Some((dq, _))) = (
            panels_in,
            x_bytes,
            wk.x_bf16,
            qconv(0),
            self.downsample.as_ref().and_then(|_| qconv(n)),
        ) {
            if let (LowConv::Int8(fq), Some(kw)) = (first, dq.reads_panels_of(first, isa)) {
                let words = crate::kernels::amx::packed_words(kw / 16, h * w);
                let par = Parallelism::auto(fq.cout, h * w, c);
                let panels = aligned_mut(&mut wk.panels, words);
                if fq.pack_panels(&wk.x[..c * h * w], h, w, panels, par, isa.int8) {
                    panels_in = Some(words);
                }
            }
        }
        // The panels of the block input that the first convolution reads, when the
        // downsample can read them too (see below).
        let ds_shared = match (
            panels_in,
            self.downsample.as_ref().and_then(|_| qconv(n)),
            qconv(0),
        ) {
            (Some(words), Some((dq, isa)), Some((first, _))) => {
                dq.reads_panels_of(first, isa).map(|kw| (words, kw))
            }
            _ => None,
        };
        // The bits of an input kept as bf16 are read from its panels and as the residual;
        // anything else reads f32.
        let mut x_bits = std::mem::take(&mut wk.x_bf16);
        if x_bits && (panels_in.is_none() || (self.downsample.is_some() && ds_shared.is_none())) {
            let len = c * h * w;
            let x = ensure(&mut wk.x, len);
            for (x, &b) in x.iter_mut().zip(&wk.xb[..len]) {
                *x = crate::kernels::bf16::from_bf16(b);
            }
            x_bits = false;
        }
        // (Empty when the input is bytes or bits: an f32 read of it would fail its length
        // check.)
        let x_len = if x_bytes.is_some() || x_bits {
            0
        } else {
            c * h * w
        };
        if let Some(r) = record.as_deref_mut() {
            // The first convolution and the downsample both read the block's input.
            let m = max_of(&wk.x[..c * h * w]);
            r[0] = m;
            if self.downsample.is_some() {
                r[n] = m;
            }
        }
        let chain = q.is_some_and(|l| l.chain);
        let next = q.and_then(|l| l.next);
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
            let x = &wk.x[..x_len];
            let (t_src, t_dst) = other_and(&mut wk.t, d);
            let (u_src, u_dst) = other_and(&mut wk.u, d);
            let (image_src, image_dst) = other_and(&mut wk.image, d);
            let src = match (act, panels_in) {
                (Act::Input, Some(words)) => QInput::Panels(aligned(&wk.panels, words)),
                (Act::Input, None) if x_bytes.is_some() => QInput::Quantized(&wk.xq[..len_in]),
                (Act::Input, None) => QInput::F32(x),
                (Act::F32(_), _) => QInput::F32(&t_src[..len_in]),
                (Act::U8(_), _) => QInput::Quantized(&u_src[..len_in]),
                (Act::ImageBf16(_, len), _) => QInput::ImageBf16(aligned(image_src, len)),
                (Act::ImageU8(_, len), _) => QInput::ImageU8(aligned(u_src, len)),
                (Act::Panels(_), _) => unreachable!("panels are only for the last convolution"),
            };
            let mut scratch = Scratch {
                f32: &mut wk.scratch,
                q: &mut wk.q,
                b16: &mut wk.b16,
            };
            // The convolution before the last, straight into the last one's panels when it
            // is a direct convolution on AMX and the last one reads panels (int8 WRN-50-2
            // backbone 11.3 → 10.1 ms: no transposition, no planar bytes, no packing), unless
            // a value exceeds the range.
            // (Not when the next one's last input exceeded its range, which this output would
            // likely exceed too: see `QuantizedConv::exceeded_last`.)
            let bytes_for_next = !qconv(i + 1).is_some_and(|(next, _)| next.exceeded_last());
            if let (true, Some((qc, isa)), Some((last, _))) = (i + 2 == n, qconv(i), qconv(n - 1)) {
                if let (true, true, Some(k4), Some(limit)) = (
                    qc.hands_on_to(last, chain) && bytes_for_next,
                    qc.direct_panels(isa, mh, mw),
                    last.panels_kw(isa),
                    last.panels_limit(),
                ) {
                    let words = crate::kernels::amx::packed_words(k4 / 16, oh * ow);
                    let out = QOutput::Panels {
                        panels: aligned_mut(&mut wk.panels_mid, words),
                        limit,
                        k4,
                    };
                    if run(conv, qconv(i), (src, out), mh, mw, None, true, &mut scratch) {
                        act = Act::Panels(words);
                        (mc, mh, mw) = (conv.cout, oh, ow);
                        continue;
                    }
                }
            }
            // In bf16, a plain 1×1 or a direct convolution on AMX straight into the
            // channels-last image of the next one when that is a direct convolution on AMX:
            // no f32 planes, no separate transposition.
            if let (Some((LowConv::Bf16(bc), isa)), Some((LowConv::Bf16(next), _))) =
                (qconv(i), qconv(i + 1))
            {
                let on_amx = bc.panels_kw(isa.bf16).is_some() || bc.direct_panels(isa.bf16, mh, mw);
                if let (true, Some(grid)) = (on_amx, next.direct_grid(isa.bf16, oh, ow)) {
                    let out = QOutput::ImageBf16 {
                        image: aligned_mut(image_dst, grid.len()),
                        grid,
                    };
                    if run(conv, qconv(i), (src, out), mh, mw, None, true, &mut scratch) {
                        act = Act::ImageBf16(d, grid.len());
                        (mc, mh, mw) = (conv.cout, oh, ow);
                        continue;
                    }
                }
            }
            // Likewise in int8 (quantised for the next one), from a plain 1×1 convolution
            // reading panels (about 0.35 ms of an 11.6 ms WRN-50-2 backbone) or a direct one
            // (ResNet-18's basic blocks: 2.04 → 1.75 ms, with the direct convolution's tasks
            // split by positions where its channels give too few), unless a value exceeds
            // the range. (Split by channels only, as before, the direct one gained nothing:
            // a 64-channel image of bytes was then written by one task.)
            if let (true, Some((LowConv::Int8(qc), isa)), Some((LowConv::Int8(next), _))) =
                (chain && bytes_for_next, qconv(i), qconv(i + 1))
            {
                let on_amx = matches!(src, QInput::Panels(_)) || qc.direct_panels(isa.int8, mh, mw);
                if let (true, Some(grid), Some(limit)) =
                    (on_amx, next.image_grid(isa.int8, oh, ow), next.input_max())
                {
                    let out = QOutput::ImageU8 {
                        image: aligned_mut(u_dst, grid.len()),
                        grid,
                        limit,
                    };
                    if run(conv, qconv(i), (src, out), mh, mw, None, true, &mut scratch) {
                        act = Act::ImageU8(d, grid.len());
                        (mc, mh, mw) = (conv.cout, oh, ow);
                        continue;
                    }
                }
            }
            // Quantised for the next convolution when both are int8, unless a value exceeds
            // its range; then (or otherwise) in f32.
            let mut quantised = false;
            let int8 = matches!(qconv(i), Some((LowConv::Int8(_), _)));
            if let (true, true, Some(limit)) = (chain && bytes_for_next, int8, int8_range(i + 1)) {
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
        let x = &wk.x[..x_len];
        let mut scratch = Scratch {
            f32: &mut wk.scratch,
            q: &mut wk.q,
            b16: &mut wk.b16,
        };
        let identity: Residual<'_> = match &self.downsample {
            Some(ds) => {
                let d = ensure(&mut wk.ds, ds.cout * oh * ow);
                // The panels of the block's input that the first convolution read, when the
                // downsample can read them too (the same bytes: its range is the first one's),
                // subsampled at its stride: not quantised (or rounded) and packed again (int8
                // WRN-50-2 backbone 9.18 → 9.01 ms, bf16 14.70 → 14.06).
                let src = match ds_shared {
                    Some((words, _)) if ds.stride == 1 => {
                        QInput::Panels(aligned(&wk.panels, words))
                    }
                    Some((words, kw)) => {
                        let len = crate::kernels::amx::packed_words(kw / 16, oh * ow);
                        let dst = aligned_mut(&mut wk.panels_ds, len);
                        let src = aligned(&wk.panels, words);
                        crate::kernels::amx::subsample_panels(src, kw, (h, w), ds.stride, dst);
                        QInput::Panels(aligned(&wk.panels_ds, len))
                    }
                    None if x_bytes.is_some() => QInput::Quantized(&wk.xq[..c * h * w]),
                    None => QInput::F32(x),
                };
                run(
                    ds,
                    qconv(n),
                    (src, QOutput::F32(d)),
                    h,
                    w,
                    None,
                    false,
                    &mut scratch,
                );
                Residual::F32(&wk.ds[..oc * oh * ow])
            }
            None => match x_bytes {
                Some(step) => Residual::Bytes {
                    q: &wk.xq[..c * h * w],
                    step,
                },
                None if x_bits => Residual::Bf16(&wk.xb[..c * h * w]),
                None => Residual::F32(x),
            },
        };
        debug_assert_eq!(identity.len(), oc * oh * ow);
        let len_in = mc * mh * mw;
        let src = match act {
            Act::Input => {
                debug_assert!(x_bytes.is_none(), "bytes are read by the first convolution");
                QInput::F32(x)
            }
            Act::F32(j) => QInput::F32(&wk.t[j][..len_in]),
            Act::U8(j) => QInput::Quantized(&wk.u[j][..len_in]),
            Act::Panels(words) => QInput::Panels(aligned(&wk.panels_mid, words)),
            Act::ImageBf16(j, len) => QInput::ImageBf16(aligned(&wk.image[j], len)),
            Act::ImageU8(j, len) => QInput::ImageU8(aligned(&wk.u[j], len)),
        };
        // Packed for the next block's first convolution too, when both can.
        let words = match (next, qconv(n - 1)) {
            (Some((_, k4)), Some((lc, isa))) if lc.panels_kw(isa).is_some() => {
                Some(crate::kernels::amx::packed_words(k4 / 16, oh * ow))
            }
            _ => None,
        };
        // As bytes for the next block when it can, with its panels when there are any
        // (a value beyond the range: in f32 below, computed a second time).
        if let Some((limit, true)) = q.and_then(|l| l.bytes_next) {
            let len = oc * oh * ow;
            if wk.yq.len() < len {
                wk.yq.resize(len, 0);
            }
            let panels = match (next, words) {
                (Some((panels_limit, k4)), Some(words)) => {
                    debug_assert_eq!(panels_limit, limit, "one range for bytes and panels");
                    Some((aligned_mut(&mut wk.panels, words), k4))
                }
                _ => None,
            };
            let out = QOutput::Bytes {
                q: &mut wk.yq[..len],
                panels,
                limit,
            };
            let io = (src, out);
            if run(
                last,
                qconv(n - 1),
                io,
                mh,
                mw,
                Some(identity),
                true,
                &mut scratch,
            ) {
                wk.y_step = Some(limit / 255.0);
                wk.panels_ready = words;
                return (oc, oh, ow);
            }
        }
        // As bf16 bits with the panels, when it can.
        if let (true, Some((_, k4)), Some(words)) = (q.is_some_and(|l| l.bits_next), next, words) {
            let len = oc * oh * ow;
            if wk.yb.len() < len {
                wk.yb.resize(len, 0);
            }
            let out = QOutput::Bf16 {
                y: &mut wk.yb[..len],
                panels: aligned_mut(&mut wk.panels, words),
                k4,
            };
            let io = (src, out);
            if run(
                last,
                qconv(n - 1),
                io,
                mh,
                mw,
                Some(identity),
                true,
                &mut scratch,
            ) {
                wk.y_bf16 = true;
                wk.panels_ready = Some(words);
                return (oc, oh, ow);
            }
        }
        let y = ensure(&mut wk.y, oc * oh * ow);
        let out = match (next, words) {
            (Some((limit, k4)), Some(words)) => {
                QOutput::F32Panels {
                    y,
                    // From a cache line (the tile rows), read back with `aligned` below.
                    panels: aligned_mut(&mut wk.panels, words),
                    limit,
                    k4,
                }
            }
            _ => QOutput::F32(y),
        };
        let packed = run(
            last,
            qconv(n - 1),
            (src, out),
            mh,
            mw,
            Some(identity),
            true,
            &mut scratch,
        );
        wk.panels_ready = words.filter(|_| packed);
        if let Some((limit, _)) = q.and_then(|l| l.bytes_next) {
            // The bytes the last convolution would have written, unless a value exceeds the
            // range (so that results never depend on the order tried).
            let y = &wk.y[..oc * oh * ow];
            if wk.yq.len() < y.len() {
                wk.yq.resize(y.len(), 0);
            }
            // (One pass, 512 bits wide where the CPU has AVX-512: the same bytes.)
            let scale = crate::kernels::int8::scale_for(limit);
            let yq = &mut wk.yq[..y.len()];
            if crate::kernels::int8::quantize_max(Wide::detect(true), y, scale, yq) <= limit {
                wk.y_step = Some(limit / 255.0);
            }
        }
        (oc, oh, ow)
    }
}
