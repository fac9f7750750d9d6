//! A torchvision ResNet written out naively, for the tests that hold a reduced-precision
//! network against a reference (`backbone_int8`, `backbone_bf16`): the weights file read as
//! f64, BatchNorm folded as the loader does, and the walk through stem, max-pool and blocks,
//! with each convolution's arithmetic, the residual addition and what becomes of a block's
//! output left to the test ([`RefNet`]).

use patchcore::backbone::{Backbone, BlockKind, Layer, ResNetSpec};

/// A feature map `[c, h, w]` in f64.
#[derive(Clone)]
pub(crate) struct Map {
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) v: Vec<f64>,
}

/// A tensor of the weights file as f64.
pub(crate) fn tensor(st: &safetensors::SafeTensors<'_>, name: &str) -> Vec<f64> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
        .collect()
}

/// A convolution with its eval BatchNorm (ε = 1e-5) folded in f64 and rounded to f32, as
/// the loader does: `w` is `[cout, cin, k, k]`, padding `k / 2`.
pub(crate) struct Folded {
    pub(crate) cout: usize,
    pub(crate) cin: usize,
    pub(crate) k: usize,
    pub(crate) w: Vec<f32>,
    pub(crate) b: Vec<f32>,
}

impl Folded {
    /// The torchvision tensors `conv` and `bn`.
    pub(crate) fn read(st: &safetensors::SafeTensors<'_>, conv: &str, bn: &str) -> Folded {
        let w = tensor(st, &format!("{conv}.weight"));
        let shape = st
            .tensor(&format!("{conv}.weight"))
            .unwrap()
            .shape()
            .to_vec();
        let (cout, cin, k) = (shape[0], shape[1], shape[2]);
        let [g, b, mean, var] = ["weight", "bias", "running_mean", "running_var"]
            .map(|f| tensor(st, &format!("{bn}.{f}")));
        let per = cin * k * k;
        let mut folded = Vec::with_capacity(cout * per);
        let mut bias = Vec::with_capacity(cout);
        for co in 0..cout {
            let scale = g[co] / (var[co] + 1e-5).sqrt();
            folded.extend(
                w[co * per..(co + 1) * per]
                    .iter()
                    .map(|&v| (v * scale) as f32),
            );
            bias.push((b[co] - mean[co] * scale) as f32);
        }
        Folded {
            cout,
            cin,
            k,
            w: folded,
            b: bias,
        }
    }

    /// The convolution of `x` at `stride`: output `(co, oy, ox)` is `value(co, taps)`, where
    /// `taps` pairs the index in `x.v` and the index in row `co` of `w` of every window
    /// element inside the image (padding left out).
    pub(crate) fn conv(
        &self,
        x: &Map,
        stride: usize,
        mut value: impl FnMut(usize, &[(usize, usize)]) -> f64,
    ) -> Map {
        let (k, pad) = (self.k, self.k / 2);
        assert_eq!(self.cin, x.c);
        let (oh, ow) = (
            (x.h + 2 * pad - k) / stride + 1,
            (x.w + 2 * pad - k) / stride + 1,
        );
        let mut out = vec![0.0; self.cout * oh * ow];
        let mut taps = Vec::with_capacity(self.cin * k * k);
        for oy in 0..oh {
            for ox in 0..ow {
                taps.clear();
                for ci in 0..self.cin {
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * stride + ky) as isize - pad as isize;
                            let ix = (ox * stride + kx) as isize - pad as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < x.h && (ix as usize) < x.w {
                                let at = (ci * x.h + iy as usize) * x.w + ix as usize;
                                taps.push((at, (ci * k + ky) * k + kx));
                            }
                        }
                    }
                }
                for co in 0..self.cout {
                    out[(co * oh + oy) * ow + ox] = value(co, &taps);
                }
            }
        }
        Map {
            c: self.cout,
            h: oh,
            w: ow,
            v: out,
        }
    }
}

/// What a reference network computes its own way.
pub(crate) trait RefNet {
    /// Convolution `f` (BatchNorm folded, no ReLU) of `x` at `stride`: the stem, or the next
    /// convolution after it in network order (each block's main path, then its downsample).
    fn conv(&mut self, f: &Folded, x: &Map, stride: usize, stem: bool) -> Map;

    /// A block's last convolution's value `y` plus its identity `r` (before the ReLU).
    fn add(&self, y: f64, r: f64) -> f64;

    /// What becomes of the output `y` of block `b` of stage `s` (the last of its stage when
    /// `last`) before the next block reads it.
    fn block_out(&mut self, s: usize, b: usize, last: bool, y: &mut Map);
}

/// ReLU.
pub(crate) fn relu(mut m: Map) -> Map {
    m.v.iter_mut().for_each(|v| *v = v.max(0.0));
    m
}

/// Max-pool 3×3 / 2, padding 1 (padding never wins).
fn max_pool(m: &Map) -> Map {
    let (ph, pw) = ((m.h - 1) / 2 + 1, (m.w - 1) / 2 + 1);
    let mut pooled = vec![f64::NEG_INFINITY; m.c * ph * pw];
    for c in 0..m.c {
        for y in 0..ph {
            for x in 0..pw {
                for dy in 0..3 {
                    for dx in 0..3 {
                        let (iy, ix) = ((2 * y + dy) as isize - 1, (2 * x + dx) as isize - 1);
                        if iy >= 0 && ix >= 0 && (iy as usize) < m.h && (ix as usize) < m.w {
                            let v = m.v[(c * m.h + iy as usize) * m.w + ix as usize];
                            let o = &mut pooled[(c * ph + y) * pw + x];
                            *o = o.max(v);
                        }
                    }
                }
            }
        }
    }
    Map {
        c: m.c,
        h: ph,
        w: pw,
        v: pooled,
    }
}

/// The outputs of layer1 to layer3 of the torchvision ResNet `spec` (weights `st`) on
/// `input`: stem, ReLU, max-pool, then every block (torchvision v1.5: a bottleneck's stride
/// on its 3×3 convolution), each convolution, residual addition and block output as `net`
/// says.
pub(crate) fn walk(
    spec: &ResNetSpec,
    st: &safetensors::SafeTensors<'_>,
    input: &Map,
    net: &mut impl RefNet,
) -> Vec<Map> {
    let stem = Folded::read(st, "conv1", "bn1");
    let mut cur = max_pool(&relu(net.conv(&stem, input, 2, true)));
    let mut outs = Vec::new();
    for s in 0..3 {
        for b in 0..spec.blocks[s] {
            let p = format!("layer{}.{b}", s + 1);
            let stride = if b == 0 && s > 0 { 2 } else { 1 };
            let (n, strided) = match spec.block {
                BlockKind::Basic => (2, 1),
                _ => (3, 2),
            };
            let mut y = cur.clone();
            for i in 1..=n {
                let f = Folded::read(st, &format!("{p}.conv{i}"), &format!("{p}.bn{i}"));
                let z = net.conv(&f, &y, if i == strided { stride } else { 1 }, false);
                y = if i < n { relu(z) } else { z };
            }
            let identity = match st.tensor(&format!("{p}.downsample.0.weight")) {
                Ok(_) => {
                    let f = Folded::read(
                        st,
                        &format!("{p}.downsample.0"),
                        &format!("{p}.downsample.1"),
                    );
                    net.conv(&f, &cur, stride, false)
                }
                Err(_) => cur,
            };
            for (a, &r) in y.v.iter_mut().zip(&identity.v) {
                *a = net.add(*a, r).max(0.0);
            }
            net.block_out(s, b, b + 1 == spec.blocks[s], &mut y);
            cur = y;
        }
        outs.push(cur.clone());
    }
    outs
}

/// The networks the reference tests hold against: tiny basic-block and bottleneck ones at
/// 48² and, with `wide`, a bottleneck one with 64-channel stages at 64² (the AMX forms), each
/// with its seeded random weights file, its input size and the backbone tapping layer2 and
/// layer3.
pub(crate) fn tiny_network(block: BlockKind, wide: bool) -> (ResNetSpec, Vec<u8>, usize, Backbone) {
    let spec = ResNetSpec {
        name: "tiny".into(),
        block,
        blocks: [2, 1, 2, 1],
        stem_channels: if wide { 64 } else { 8 },
        planes: if wide { [64; 4] } else { [4, 8, 8, 8] },
        width_per_group: if block == BlockKind::Basic || wide {
            64
        } else {
            32
        },
    };
    let bytes = Backbone::random_weights_safetensors(&spec, Layer::Layer3, 4).unwrap();
    let taps = [Layer::Layer2, Layer::Layer3];
    let bb = Backbone::from_safetensors_bytes(&bytes, std::path::Path::new("tiny"), &spec, &taps)
        .unwrap();
    (spec, bytes, if wide { 64 } else { 48 }, bb)
}

/// The first image of `x` as a [`Map`].
pub(crate) fn image_map(x: &ndarray::Array4<f32>) -> Map {
    let (_, c, h, w) = x.dim();
    Map {
        c,
        h,
        w,
        v: x.iter().take(c * h * w).map(|&v| v as f64).collect(),
    }
}
