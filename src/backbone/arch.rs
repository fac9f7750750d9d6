//! Architecture descriptions: block types, stage layout, presets and tap names (the tensor
//! names and shapes each block needs are in [`layout`](super::layout)).

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// The residual block type of a ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockKind {
    /// Two 3×3 convolutions (ResNet-18/34), expansion 1.
    Basic,
    /// 1×1 → 3×3 → 1×1 convolutions, stride on the 3×3 ("v1.5", ResNet-50/101, Wide-ResNet),
    /// expansion 4.
    Bottleneck,
}

impl BlockKind {
    /// Output channels of a block divided by its `planes`: 1 for [`BlockKind::Basic`], 4 for
    /// [`BlockKind::Bottleneck`].
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            BlockKind::Basic => "BasicBlock",
            BlockKind::Bottleneck => "Bottleneck",
        }
    }
}

/// One of the four residual stages of a ResNet, named as in torchvision (`layer1` .. `layer4`).
///
/// Parses from `"layer1"` .. `"layer4"` (case-insensitive) and displays as the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layer {
    /// First stage (stride 4 relative to the input).
    Layer1,
    /// Second stage (stride 8).
    Layer2,
    /// Third stage (stride 16).
    Layer3,
    /// Fourth stage (stride 32).
    Layer4,
}

impl Layer {
    /// All four stages in network order.
    pub const ALL: [Layer; 4] = [Layer::Layer1, Layer::Layer2, Layer::Layer3, Layer::Layer4];

    /// Zero-based stage index (`Layer1` → 0).
    pub fn index(self) -> usize {
        match self {
            Layer::Layer1 => 0,
            Layer::Layer2 => 1,
            Layer::Layer3 => 2,
            Layer::Layer4 => 3,
        }
    }

    /// The stage with zero-based index `i`, if `i < 4`.
    pub fn from_index(i: usize) -> Option<Layer> {
        Layer::ALL.get(i).copied()
    }

    /// The torchvision module name, e.g. `"layer2"`.
    pub fn name(self) -> &'static str {
        match self {
            Layer::Layer1 => "layer1",
            Layer::Layer2 => "layer2",
            Layer::Layer3 => "layer3",
            Layer::Layer4 => "layer4",
        }
    }

    /// Total spatial stride of this stage's output relative to the input (4, 8, 16, 32).
    pub fn stride(self) -> usize {
        4 << self.index()
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Layer {
    type Err = Error;

    fn from_str(s: &str) -> Result<Layer> {
        let lower = s.trim().to_ascii_lowercase();
        Layer::ALL
            .iter()
            .copied()
            .find(|l| l.name() == lower)
            .ok_or_else(|| {
                Error::param(
                    "layer",
                    format!("unknown layer {s:?}; expected one of layer1, layer2, layer3, layer4"),
                )
            })
    }
}

/// The shape of a torchvision-layout ResNet.
///
/// The presets reproduce torchvision's models; custom values describe smaller or larger nets of
/// the same family (the test fixtures use e.g. a stem of 8 channels and planes `[8, 16, 32, 64]`).
///
/// Stage `s` has `blocks[s]` blocks; its first block has stride 1 (stage 0) or 2 (stages 1–3).
/// Basic blocks have `planes[s]` channels; bottleneck blocks have an inner width of
/// `planes[s] · width_per_group / 64` and `4 · planes[s]` output channels. Block 0 of a stage has
/// a `downsample` branch (1×1 conv + BatchNorm) when its stride is not 1 or its channel count
/// changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResNetSpec {
    /// Display name, e.g. `"wide_resnet50_2"` (used in error messages).
    pub name: String,
    /// Residual block type.
    pub block: BlockKind,
    /// Number of blocks in each stage.
    pub blocks: [usize; 4],
    /// Output channels of the stem convolution (64 in torchvision).
    pub stem_channels: usize,
    /// `planes` of each stage (64, 128, 256, 512 in torchvision).
    pub planes: [usize; 4],
    /// Bottleneck base width (64; 128 for the wide variants). Must be 64 for basic blocks.
    pub width_per_group: usize,
}

/// Names accepted by [`ResNetSpec::from_name`].
pub const KNOWN_ARCHITECTURES: [&str; 7] = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
];

/// Largest number of weight elements a [`ResNetSpec`] may describe (protects against absurd
/// custom specs; the largest preset, ResNet-152, has about 6·10⁷).
const MAX_PARAMS: u64 = 1 << 31;

impl ResNetSpec {
    fn torchvision(name: &str, block: BlockKind, blocks: [usize; 4], width: usize) -> Self {
        ResNetSpec {
            name: name.to_string(),
            block,
            blocks,
            stem_channels: 64,
            planes: [64, 128, 256, 512],
            width_per_group: width,
        }
    }

    /// torchvision `resnet18`.
    pub fn resnet18() -> Self {
        Self::torchvision("resnet18", BlockKind::Basic, [2, 2, 2, 2], 64)
    }

    /// torchvision `resnet34`.
    pub fn resnet34() -> Self {
        Self::torchvision("resnet34", BlockKind::Basic, [3, 4, 6, 3], 64)
    }

    /// torchvision `resnet50` (bottleneck v1.5).
    pub fn resnet50() -> Self {
        Self::torchvision("resnet50", BlockKind::Bottleneck, [3, 4, 6, 3], 64)
    }

    /// torchvision `resnet101` (bottleneck v1.5).
    pub fn resnet101() -> Self {
        Self::torchvision("resnet101", BlockKind::Bottleneck, [3, 4, 23, 3], 64)
    }

    /// torchvision `resnet152` (bottleneck v1.5).
    pub fn resnet152() -> Self {
        Self::torchvision("resnet152", BlockKind::Bottleneck, [3, 8, 36, 3], 64)
    }

    /// torchvision `wide_resnet50_2` (PatchCore's default backbone).
    pub fn wide_resnet50_2() -> Self {
        Self::torchvision("wide_resnet50_2", BlockKind::Bottleneck, [3, 4, 6, 3], 128)
    }

    /// torchvision `wide_resnet101_2`.
    pub fn wide_resnet101_2() -> Self {
        Self::torchvision(
            "wide_resnet101_2",
            BlockKind::Bottleneck,
            [3, 4, 23, 3],
            128,
        )
    }

    /// The preset with this torchvision name (see [`KNOWN_ARCHITECTURES`]; case-insensitive,
    /// `-` accepted for `_`, and the original PatchCore alias `wideresnet50`).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] listing the known names.
    pub fn from_name(name: &str) -> Result<Self> {
        let key = name.trim().to_ascii_lowercase().replace('-', "_");
        Ok(match key.as_str() {
            "resnet18" => Self::resnet18(),
            "resnet34" => Self::resnet34(),
            "resnet50" => Self::resnet50(),
            "resnet101" => Self::resnet101(),
            "resnet152" => Self::resnet152(),
            "wide_resnet50_2" | "wideresnet50" => Self::wide_resnet50_2(),
            "wide_resnet101_2" | "wideresnet101" => Self::wide_resnet101_2(),
            _ => {
                return Err(Error::param(
                    "backbone",
                    format!(
                        "unknown architecture {name:?}; known: {}",
                        KNOWN_ARCHITECTURES.join(", ")
                    ),
                ))
            }
        })
    }

    /// Checks that the numbers describe a buildable network (all counts ≥ 1, basic blocks with
    /// `width_per_group` 64, bottleneck inner width ≥ 1, total size below 2³¹ weights).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] or [`Error::LimitExceeded`] naming the offending field.
    pub fn validate(&self) -> Result<()> {
        if self.stem_channels == 0 {
            return Err(Error::param("stem_channels", "must be at least 1"));
        }
        if self.blocks.contains(&0) {
            return Err(Error::param(
                "blocks",
                format!(
                    "every stage needs at least one block, got {:?}",
                    self.blocks
                ),
            ));
        }
        const MAX_CHANNELS: usize = 1 << 16;
        const MAX_BLOCKS: usize = 1 << 10;
        if self.stem_channels > MAX_CHANNELS
            || self.width_per_group > MAX_CHANNELS
            || self.planes.iter().any(|&p| p > MAX_CHANNELS)
            || self.blocks.iter().any(|&b| b > MAX_BLOCKS)
        {
            return Err(Error::LimitExceeded {
                reason: format!(
                    "architecture {:?}: channel counts are limited to {MAX_CHANNELS} and blocks per stage to {MAX_BLOCKS}",
                    self.name
                ),
            });
        }
        if self.planes.contains(&0) {
            return Err(Error::param(
                "planes",
                format!(
                    "every stage needs at least one plane, got {:?}",
                    self.planes
                ),
            ));
        }
        match self.block {
            BlockKind::Basic if self.width_per_group != 64 => {
                return Err(Error::param(
                    "width_per_group",
                    format!(
                        "basic blocks only support width_per_group 64 (as torchvision), got {}",
                        self.width_per_group
                    ),
                ))
            }
            BlockKind::Bottleneck => {
                for s in 0..4 {
                    if self.inner_width_checked(s).unwrap_or(0) == 0 {
                        return Err(Error::param(
                            "width_per_group",
                            format!(
                                "bottleneck inner width planes·width_per_group/64 = {}·{}/64 must be at least 1",
                                self.planes[s], self.width_per_group
                            ),
                        ));
                    }
                }
            }
            _ => {}
        }
        match self.param_count(Layer::Layer4) {
            Some(n) if n <= MAX_PARAMS => Ok(()),
            _ => Err(Error::LimitExceeded {
                reason: format!(
                    "architecture {:?} would have more than {MAX_PARAMS} weights",
                    self.name
                ),
            }),
        }
    }

    fn inner_width_checked(&self, stage: usize) -> Option<usize> {
        match self.block {
            BlockKind::Basic => Some(self.planes[stage]),
            BlockKind::Bottleneck => self.planes[stage]
                .checked_mul(self.width_per_group)
                .map(|v| v / 64),
        }
    }

    /// Number of weight elements (convolutions and BatchNorm) up to and including `last`, or
    /// `None` on arithmetic overflow.
    fn param_count(&self, last: Layer) -> Option<u64> {
        let mut total: u64 = 0;
        for t in self.expected_tensors(last) {
            let n = t
                .shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d as u64))?;
            total = total.checked_add(n)?;
        }
        Some(total)
    }

    /// Inner (bottleneck) width of stage `stage` (0-based); `planes` for basic blocks.
    pub fn inner_width(&self, stage: usize) -> usize {
        self.inner_width_checked(stage).unwrap_or(0)
    }

    /// Output channels of `layer`.
    pub fn out_channels(&self, layer: Layer) -> usize {
        self.planes[layer.index()] * self.block.expansion()
    }

    /// Input channels of stage `stage` (0-based).
    pub(crate) fn in_channels(&self, stage: usize) -> usize {
        if stage == 0 {
            self.stem_channels
        } else {
            self.planes[stage - 1] * self.block.expansion()
        }
    }

    /// Stride of the first block of stage `stage` (0-based).
    pub(crate) fn stage_stride(stage: usize) -> usize {
        if stage == 0 {
            1
        } else {
            2
        }
    }

    /// Whether block `block` of stage `stage` has a downsample branch.
    pub(crate) fn has_downsample(&self, stage: usize, block: usize) -> bool {
        block == 0
            && (Self::stage_stride(stage) != 1
                || self.in_channels(stage) != self.out_channels(Layer::ALL[stage]))
    }

    /// `(channels, height, width)` of `layer`'s output for an `h × w` input.
    ///
    /// Every stride-2 operation maps `n` to `⌊(n − 1)/2⌋ + 1`, so the stem + max-pool give
    /// `⌈n/4⌉`-ish sizes and each later stage halves (rounding up) again.
    pub fn tap_shape(&self, layer: Layer, h: usize, w: usize) -> (usize, usize, usize) {
        let half = |n: usize| if n == 0 { 0 } else { (n - 1) / 2 + 1 };
        let (mut oh, mut ow) = (half(half(h)), half(half(w)));
        for _ in 0..layer.index() {
            oh = half(oh);
            ow = half(ow);
        }
        (self.out_channels(layer), oh, ow)
    }

    /// Floating-point operations (2 per multiply-add, convolutions only) of one forward pass of
    /// an `h × w` image up to and including `last`. Used for throughput reporting.
    pub fn flops(&self, last: Layer, h: usize, w: usize) -> u64 {
        let half = |n: usize| (n.max(1) - 1) / 2 + 1;
        let mut macs: u64 = 0;
        let (mut ch, mut cw) = (half(h), half(w));
        macs += (self.stem_channels * 3 * 49 * ch * cw) as u64;
        ch = half(ch);
        cw = half(cw);
        for s in 0..=last.index() {
            let cin0 = self.in_channels(s);
            let cout = self.out_channels(Layer::ALL[s]);
            let width = self.inner_width(s);
            for b in 0..self.blocks[s] {
                let cin = if b == 0 { cin0 } else { cout };
                let (ih, iw) = (ch, cw);
                if b == 0 && s > 0 {
                    ch = half(ch);
                    cw = half(cw);
                }
                let (o_in, o_out) = ((ih * iw) as u64, (ch * cw) as u64);
                macs += match self.block {
                    BlockKind::Basic => {
                        (width * cin * 9) as u64 * o_out + (cout * width * 9) as u64 * o_out
                    }
                    BlockKind::Bottleneck => {
                        (width * cin) as u64 * o_in
                            + (width * width * 9) as u64 * o_out
                            + (cout * width) as u64 * o_out
                    }
                };
                if self.has_downsample(s, b) {
                    macs += (cout * cin) as u64 * o_out;
                }
            }
        }
        2 * macs
    }

    /// One-line human description, e.g.
    /// `Bottleneck, blocks [3, 4, 6, 3], stem 64, planes [64, 128, 256, 512], width_per_group 128`.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{}, blocks {:?}, stem {}, planes {:?}, width_per_group {}",
            self.block.name(),
            self.blocks,
            self.stem_channels,
            self.planes,
            self.width_per_group
        )
    }

    /// Whether two specs describe the same network up to and including `last` (names ignored).
    pub(crate) fn same_structure(&self, other: &ResNetSpec, last: Layer) -> bool {
        let n = last.index() + 1;
        self.block == other.block
            && self.stem_channels == other.stem_channels
            && self.width_per_group == other.width_per_group
            && self.blocks[..n] == other.blocks[..n]
            && self.planes[..n] == other.planes[..n]
    }

    /// Canonical byte encoding (for hashing randomly initialised backbones).
    pub(crate) fn canonical_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        let mut push = |x: usize| v.extend_from_slice(&(x as u64).to_le_bytes());
        push(match self.block {
            BlockKind::Basic => 0,
            BlockKind::Bottleneck => 1,
        });
        for &b in &self.blocks {
            push(b);
        }
        push(self.stem_channels);
        for &p in &self.planes {
            push(p);
        }
        push(self.width_per_group);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_match_published_counts() {
        // The brief's figures: WRN50-2 up to layer3 at 224² = 18.37 GFLOP, ResNet-18 = 2.81.
        let w = ResNetSpec::wide_resnet50_2().flops(Layer::Layer3, 224, 224) as f64 / 1e9;
        let r = ResNetSpec::resnet18().flops(Layer::Layer3, 224, 224) as f64 / 1e9;
        assert!((w - 18.37).abs() < 0.01, "{w}");
        assert!((r - 2.81).abs() < 0.01, "{r}");
        // Full ResNet-50 (without fc) is the well-known 4.09 GMAC ≈ 8.18 GFLOP.
        let full = ResNetSpec::resnet50().flops(Layer::Layer4, 224, 224) as f64 / 1e9;
        assert!((full - 8.18).abs() < 0.02, "{full}");
    }

    #[test]
    fn tap_shapes_match_spec_table() {
        let w = ResNetSpec::wide_resnet50_2();
        let r = ResNetSpec::resnet18();
        assert_eq!(w.tap_shape(Layer::Layer1, 224, 224), (256, 56, 56));
        assert_eq!(w.tap_shape(Layer::Layer2, 224, 224), (512, 28, 28));
        assert_eq!(w.tap_shape(Layer::Layer3, 224, 224), (1024, 14, 14));
        assert_eq!(r.tap_shape(Layer::Layer2, 224, 224), (128, 28, 28));
        assert_eq!(r.tap_shape(Layer::Layer3, 224, 224), (256, 14, 14));
        assert_eq!(w.tap_shape(Layer::Layer2, 256, 320), (512, 32, 40));
        assert_eq!(w.tap_shape(Layer::Layer1, 225, 225), (256, 57, 57));
        assert_eq!(w.tap_shape(Layer::Layer2, 225, 225), (512, 29, 29));
        assert_eq!(w.tap_shape(Layer::Layer3, 225, 225), (1024, 15, 15));
        assert_eq!(w.tap_shape(Layer::Layer4, 224, 224), (2048, 7, 7));
    }

    #[test]
    fn names_parse() {
        assert_eq!("layer2".parse::<Layer>().unwrap(), Layer::Layer2);
        assert_eq!("LAYER4".parse::<Layer>().unwrap(), Layer::Layer4);
        assert!(matches!(
            "layer5".parse::<Layer>(),
            Err(Error::InvalidParameter { .. })
        ));
        assert_eq!(Layer::Layer3.to_string(), "layer3");
        for n in KNOWN_ARCHITECTURES {
            let s = ResNetSpec::from_name(n).unwrap();
            assert_eq!(s.name, n);
            s.validate().unwrap();
        }
        assert_eq!(
            ResNetSpec::from_name("wideresnet50").unwrap(),
            ResNetSpec::wide_resnet50_2()
        );
        let e = ResNetSpec::from_name("vgg16").unwrap_err().to_string();
        assert!(e.contains("vgg16") && e.contains("wide_resnet50_2"), "{e}");
    }

    #[test]
    fn validate_rejects_bad_specs() {
        let mut s = ResNetSpec::resnet18();
        s.width_per_group = 128;
        assert!(matches!(s.validate(), Err(Error::InvalidParameter { .. })));
        let mut s = ResNetSpec::resnet50();
        s.blocks[2] = 0;
        assert!(matches!(s.validate(), Err(Error::InvalidParameter { .. })));
        let mut s = ResNetSpec::resnet50();
        s.planes = [usize::MAX / 2; 4];
        assert!(s.validate().is_err());
        let mut s = ResNetSpec::resnet50();
        s.width_per_group = 1;
        s.planes[0] = 8;
        assert!(matches!(s.validate(), Err(Error::InvalidParameter { .. })));
    }
}
