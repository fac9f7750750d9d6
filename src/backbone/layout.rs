//! The torchvision tensor layout of a [`ResNetSpec`]: which convolutions and BatchNorms each
//! block has, with their names and shapes (the plan the network assembly in
//! [`resnet`](super::resnet) and the weight loader follow).

use super::arch::{BlockKind, Layer, ResNetSpec};

impl ResNetSpec {
    /// Every tensor (name and shape) the network needs up to and including `last`, in a fixed
    /// order: stem, then per block convolutions and BatchNorms in torchvision order.
    pub(crate) fn expected_tensors(&self, last: Layer) -> Vec<TensorSpec> {
        let mut out = Vec::new();
        let conv = |out: &mut Vec<TensorSpec>, name: String, shape: [usize; 4]| {
            out.push(TensorSpec {
                name: format!("{name}.weight"),
                shape: shape.to_vec(),
            });
        };
        let bn = |out: &mut Vec<TensorSpec>, name: String, c: usize| {
            for field in BN_FIELDS {
                out.push(TensorSpec {
                    name: format!("{name}.{field}"),
                    shape: vec![c],
                });
            }
        };
        conv(&mut out, "conv1".into(), [self.stem_channels, 3, 7, 7]);
        bn(&mut out, "bn1".into(), self.stem_channels);
        for s in 0..=last.index() {
            for b in 0..self.blocks[s] {
                for (cname, bname, shape) in self.block_convs(s, b) {
                    conv(&mut out, cname, shape);
                    bn(&mut out, bname, shape[0]);
                }
            }
        }
        out
    }

    /// `(conv name, bn name, [cout, cin, kh, kw])` of block `b` of stage `s`: main-path convs in
    /// order, then the downsample conv if any.
    pub(crate) fn block_convs(&self, s: usize, b: usize) -> Vec<(String, String, [usize; 4])> {
        let p = format!("layer{}.{b}", s + 1);
        let cout = self.out_channels(Layer::ALL[s]);
        let cin = if b == 0 { self.in_channels(s) } else { cout };
        let width = self.inner_width(s);
        let mut v = match self.block {
            BlockKind::Basic => vec![
                (format!("{p}.conv1"), format!("{p}.bn1"), [width, cin, 3, 3]),
                (
                    format!("{p}.conv2"),
                    format!("{p}.bn2"),
                    [cout, width, 3, 3],
                ),
            ],
            BlockKind::Bottleneck => vec![
                (format!("{p}.conv1"), format!("{p}.bn1"), [width, cin, 1, 1]),
                (
                    format!("{p}.conv2"),
                    format!("{p}.bn2"),
                    [width, width, 3, 3],
                ),
                (
                    format!("{p}.conv3"),
                    format!("{p}.bn3"),
                    [cout, width, 1, 1],
                ),
            ],
        };
        if self.has_downsample(s, b) {
            v.push((
                format!("{p}.downsample.0"),
                format!("{p}.downsample.1"),
                [cout, cin, 1, 1],
            ));
        }
        v
    }
}

/// The four BatchNorm tensors, in the order the loader reads them.
pub(crate) const BN_FIELDS: [&str; 4] = ["weight", "bias", "running_mean", "running_var"];

/// Name and shape of one tensor the architecture needs.
#[derive(Debug, Clone)]
pub(crate) struct TensorSpec {
    #[cfg_attr(not(test), allow(dead_code))]
    pub name: String,
    pub shape: Vec<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_counts_match_torchvision_state_dicts() {
        // torchvision key totals (docs/algorithm.md §2) minus fc.weight/fc.bias and num_batches_tracked.
        let count = |s: ResNetSpec, nbt: usize, total: usize| {
            assert_eq!(
                s.expected_tensors(Layer::Layer4).len(),
                total - 2 - nbt,
                "{}",
                s.name
            );
        };
        count(ResNetSpec::resnet18(), 20, 122);
        count(ResNetSpec::resnet34(), 36, 218);
        count(ResNetSpec::resnet50(), 53, 320);
        count(ResNetSpec::wide_resnet50_2(), 53, 320);
    }

    #[test]
    fn wrn50_shapes_match_spec() {
        let s = ResNetSpec::wide_resnet50_2();
        let t = s.expected_tensors(Layer::Layer3);
        let shape = |n: &str| {
            t.iter()
                .find(|x| x.name == n)
                .map(|x| x.shape.clone())
                .unwrap()
        };
        assert_eq!(shape("conv1.weight"), vec![64, 3, 7, 7]);
        assert_eq!(shape("layer1.0.conv1.weight"), vec![128, 64, 1, 1]);
        assert_eq!(shape("layer1.0.conv2.weight"), vec![128, 128, 3, 3]);
        assert_eq!(shape("layer1.0.downsample.0.weight"), vec![256, 64, 1, 1]);
        assert_eq!(shape("layer2.0.conv2.weight"), vec![256, 256, 3, 3]);
        assert_eq!(shape("layer2.0.downsample.0.weight"), vec![512, 256, 1, 1]);
        assert_eq!(shape("layer3.0.conv2.weight"), vec![512, 512, 3, 3]);
        assert_eq!(shape("layer3.0.conv3.weight"), vec![1024, 512, 1, 1]);
        assert!(!t.iter().any(|x| x.name.starts_with("layer4")));
        // Basic nets have no downsample in layer1.
        let r = ResNetSpec::resnet18().expected_tensors(Layer::Layer1);
        assert!(!r.iter().any(|x| x.name.contains("downsample")));
    }
}
