//! The folded network and its single-image forward pass.

use super::arch::{BlockKind, Layer, ResNetSpec};
use super::weights::{load_conv_bn, TensorSource};
use crate::kernels::conv::Conv2d;
use crate::kernels::pool::{maxpool2d, maxpool_out};
use crate::Result;
use std::sync::Mutex;

/// One residual block with BatchNorm folded into every convolution.
#[derive(Clone)]
struct Block {
    /// Main-path convolutions: 2 (basic) or 3 (bottleneck); the last one takes the residual.
    convs: Vec<Conv2d>,
    /// 1×1 projection of the identity branch, when channels or stride change.
    downsample: Option<Conv2d>,
}

/// Stem + stages up to the deepest tap, BatchNorm folded.
pub(crate) struct Net {
    stem: Conv2d,
    stages: Vec<Vec<Block>>,
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
            spare: Mutex::new(Vec::new()),
        })
    }

    /// Forward pass of one `[3, h, w]` image. Returns the output of every stage in `want`
    /// (`want[s]` ⇔ keep stage `s`), indexed by stage; stages not wanted are `None`.
    pub(crate) fn forward_image(
        &self,
        image: &[f32],
        h: usize,
        w: usize,
        want: [bool; 4],
    ) -> [Option<Vec<f32>>; 4] {
        // A poisoned lock only means another forward pass panicked; the buffers are plain
        // scratch whose contents are never read before being written, so reuse is safe.
        let mut wk = match self.spare.lock() {
            Ok(mut v) => v.pop(),
            Err(p) => p.into_inner().pop(),
        }
        .unwrap_or_default();
        let out = self.forward_with(&mut wk, image, h, w, want);
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
    ) -> [Option<Vec<f32>>; 4] {
        let mut out: [Option<Vec<f32>>; 4] = Default::default();

        // Stem: conv 7×7/2 + folded BN + ReLU, then max-pool 3×3/2 pad 1.
        let (sh, sw) = self.stem.out_hw(h, w);
        let c = self.stem.cout;
        let t0 = ensure(&mut wk.t[0], c * sh * sw);
        self.stem
            .forward_image(image, h, w, t0, None, true, &mut wk.scratch);
        let (mut ch, mut cw) = (maxpool_out(sh, 3, 2, 1), maxpool_out(sw, 3, 2, 1));
        let x = ensure(&mut wk.x, c * ch * cw);
        maxpool2d(&wk.t[0][..c * sh * sw], c, sh, sw, 3, 2, 1, x);
        let mut cc = c;

        for (s, blocks) in self.stages.iter().enumerate() {
            for block in blocks {
                let (nc, nh, nw) = block.forward(wk, cc, ch, cw);
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

impl Block {
    /// Reads `wk.x` (`[c, h, w]`), writes `wk.y`; returns the output shape.
    fn forward(&self, wk: &mut Work, c: usize, h: usize, w: usize) -> (usize, usize, usize) {
        let x = &wk.x[..c * h * w];
        // Main path up to (not including) the last conv, each with ReLU.
        let (mut mc, mut mh, mut mw) = (c, h, w);
        let n = self.convs.len();
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
            conv.forward_image(src, mh, mw, dst, None, true, &mut wk.scratch);
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
                ds.forward_image(x, h, w, d, None, false, &mut wk.scratch);
                &wk.ds[..oc * oh * ow]
            }
            None => x,
        };
        debug_assert_eq!(identity.len(), oc * oh * ow);
        let src: &[f32] = &wk.t[cur][..mc * mh * mw];
        let y = ensure(&mut wk.y, oc * oh * ow);
        last.forward_image(src, mh, mw, y, Some(identity), true, &mut wk.scratch);
        (oc, oh, ow)
    }
}
