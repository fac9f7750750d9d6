//! An estimate of the memory one fit batch or one prediction needs, checked against
//! [`ImageLimits::max_working_set_bytes`] before anything large is allocated, so that a huge
//! image, or a configuration asking for a huge resize or crop, gives
//! [`Error::LimitExceeded`] instead of an abort at a failed allocation.

use crate::backbone::{Backbone, Layer};
use crate::error::{Error, Result};
use crate::preprocess::{ImageLimits, Resize};

use super::PatchCoreConfig;

/// Estimated peak bytes of one forward pass of the backbone on an `h × w` input: the stem
/// output and its im2col buffer, the reused work buffers of the stages (input, output and
/// three intermediates, each as large as the largest activation after the stem, plus the
/// im2col buffer of the widest 3 × 3 convolution) and the tapped outputs.
pub(crate) fn forward_bytes(backbone: &Backbone, h: usize, w: usize) -> u64 {
    let spec = backbone.spec();
    let half = |n: u64| if n == 0 { 0 } else { (n - 1) / 2 + 1 };
    let (sh, sw) = (half(h as u64), half(w as u64));
    let stem_px = sh.saturating_mul(sw);
    let stem_out = (spec.stem_channels as u64).saturating_mul(stem_px);
    let stem_cols = (3 * 49u64).saturating_mul(stem_px);
    let last = backbone.taps().iter().map(|l| l.index()).max().unwrap_or(0);
    let (mut ch, mut cw) = (half(sh), half(sw));
    let mut largest = (spec.stem_channels as u64).saturating_mul(ch.saturating_mul(cw));
    let mut cols = 0u64;
    for s in 0..=last {
        let Some(layer) = Layer::from_index(s) else {
            break;
        };
        let (ih, iw) = (ch, cw);
        if s > 0 {
            ch = half(ch);
            cw = half(cw);
        }
        let px_in = ih.saturating_mul(iw);
        let px_out = ch.saturating_mul(cw);
        let inner = spec.inner_width(s) as u64;
        let out = spec.out_channels(layer) as u64;
        largest = largest
            .max(inner.saturating_mul(px_in))
            .max(out.saturating_mul(px_out));
        cols = cols.max((inner * 9).saturating_mul(px_out));
    }
    let taps: u64 = backbone
        .taps()
        .iter()
        .map(|&l| {
            let (c, th, tw) = spec.tap_shape(l, h, w);
            (c as u64).saturating_mul((th * tw) as u64)
        })
        .sum();
    let floats = stem_out
        .saturating_add(stem_cols.max(cols))
        .saturating_add(largest.saturating_mul(5))
        .saturating_add(taps);
    floats.saturating_mul(4)
}

/// Estimated peak bytes of scoring one image of `src_h × src_w` pixels (decoded) whose
/// preprocessing resizes it to `rh × rw` and gives an `h × w` tensor: the decoded and resized
/// pixels, the tensor, one forward pass, the patch embeddings (`rows × (dim + tapped
/// channels)`) and the anomaly map with its blur buffer.
pub(crate) fn image_bytes(
    config: &PatchCoreConfig,
    backbone: &Backbone,
    src: (usize, usize),
    resized: (usize, usize),
    out: (usize, usize),
) -> u64 {
    let p = config.params();
    let px = |(a, b): (usize, usize)| (a as u64).saturating_mul(b as u64);
    let decoded = px(src).saturating_mul(3);
    let resized_px = px(resized).saturating_mul(3);
    let tensor = px(out).saturating_mul(12);
    let forward = forward_bytes(backbone, out.0, out.1);
    let channels: Vec<usize> = p.layers.iter().map(|&l| backbone.out_channels(l)).collect();
    let dim = crate::embedding::embedding_dim(&channels, &p.aggregator) as u64;
    let first = p.layers.first().copied().unwrap_or(Layer::Layer2);
    let (_, gh, gw) = backbone.spec().tap_shape(first, out.0, out.1);
    let rows = px((gh, gw));
    let width = dim.saturating_add(channels.iter().map(|&c| c as u64).sum::<u64>());
    let embedding = rows.saturating_mul(width).saturating_mul(4);
    let map = px(out).saturating_mul(8);
    decoded
        .saturating_add(resized_px)
        .saturating_add(tensor)
        .saturating_add(forward)
        .saturating_add(embedding)
        .saturating_add(map)
}

/// Fails with [`Error::LimitExceeded`] when `n` images of the given sizes need more than
/// `limits.max_working_set_bytes`.
pub(crate) fn check(
    config: &PatchCoreConfig,
    backbone: &Backbone,
    n: usize,
    src: (usize, usize),
    resized: (usize, usize),
    out: (usize, usize),
    limits: &ImageLimits,
) -> Result<()> {
    let one = image_bytes(config, backbone, src, resized, out);
    let need = one.saturating_mul(n.max(1) as u64);
    if need > limits.max_working_set_bytes {
        return Err(Error::LimitExceeded {
            reason: format!(
                "{n} image(s) of {}×{} pixels, preprocessed to {}×{}, need about {} MiB of \
                 memory, more than the working-set limit of {} MiB \
                 (ImageLimits::max_working_set_bytes); use a smaller resize or crop, smaller \
                 images or a smaller batch",
                src.0,
                src.1,
                out.0,
                out.1,
                need.div_ceil(1 << 20),
                limits.max_working_set_bytes >> 20
            ),
        });
    }
    Ok(())
}

/// The tensor size every image gets when the preprocessing fixes it (a crop, or an exact
/// resize without crop); for a shorter-side resize without crop, the smallest possible one
/// (`s × s`). `None` without resize and crop (it depends on the image only).
pub(crate) fn fixed_output(config: &PatchCoreConfig) -> Option<(usize, usize)> {
    let pre = &config.params().preprocess;
    if let Some(c) = pre.crop {
        return Some(c);
    }
    match pre.resize {
        Resize::None => None,
        Resize::ShorterSide(s) => Some((s, s)),
        Resize::Exact { height, width } => Some((height, width)),
    }
}

/// Checks, before any image is seen, that one image of the size the configuration fixes fits
/// `limits` (a model whose configuration asks for a huge resize or crop is refused when it is
/// built or loaded).
pub(crate) fn check_config(
    config: &PatchCoreConfig,
    backbone: &Backbone,
    limits: &ImageLimits,
) -> Result<()> {
    match fixed_output(config) {
        Some(out) => check(config, backbone, 1, out, out, out, limits),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::ResNetSpec;
    use crate::model::PatchCoreParams;

    /// The figures `ImageLimits`' documentation quotes (WRN-50-2, layers 2 and 3): about 45 MB
    /// at 224², 950 MB at 1024² (under the default 1 GiB working set) and 60 GB at 8192²
    /// (refused). This fails when the estimate changes and the documentation is not updated.
    #[test]
    fn estimates_match_the_documented_figures() {
        let layers = [Layer::Layer2, Layer::Layer3];
        let bb = Backbone::random(&ResNetSpec::wide_resnet50_2(), &layers, 1).unwrap();
        let config = PatchCoreParams::default().check().unwrap();
        let mb = |s: usize| image_bytes(&config, &bb, (s, s), (s, s), (s, s)) as f64 / 1e6;
        for (s, documented) in [(224usize, 45.0), (1024, 950.0), (8192, 60_000.0)] {
            let got = mb(s);
            assert!(
                (got - documented).abs() <= 0.05 * documented,
                "{s}²: estimate {got:.0} MB, documented about {documented} MB"
            );
        }
        let limit = ImageLimits::default().max_working_set_bytes as f64 / 1e6;
        assert!(mb(1024) < limit && mb(8192) > limit);
    }
}
