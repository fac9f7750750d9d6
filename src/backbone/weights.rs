//! Reading ResNet weights: safetensors parsing and validation, dtype conversion, architecture
//! detection for helpful errors, seeded random weights, and BatchNorm folding.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::Dtype;

use super::arch::{BlockKind, Layer, ResNetSpec};
use crate::kernels::conv::Conv2d;
use crate::st_index::StIndex;
use crate::{Error, Result};

/// BatchNorm epsilon of torchvision's ResNets.
const BN_EPS: f64 = 1e-5;

/// Something that hands out named f32 tensors of a required shape.
pub(crate) trait TensorSource {
    /// Tensor `name`, which must have exactly `shape`, converted to f32 (row-major).
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;

    /// Where the tensors come from (for error messages).
    fn path(&self) -> &Path;
}

/// The SHA-256 of bytes `base..base + len` of an open file (`path` names it in messages),
/// read in 1 MiB chunks (never held in memory whole).
pub(crate) fn sha256_file_range(
    f: &mut std::fs::File,
    path: &Path,
    base: u64,
    len: u64,
) -> Result<[u8; 32]> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Seek, SeekFrom};
    f.seek(SeekFrom::Start(base))
        .map_err(|e| Error::io(path, e))?;
    let mut f = f.take(len);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut seen = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        seen += n as u64;
        h.update(&buf[..n]);
    }
    if seen != len {
        return Err(Error::invalid_file(
            path,
            "the file changed or was truncated while it was read",
        ));
    }
    Ok(h.finalize().into())
}

/// Tensors of a safetensors file (in memory or read tensor by tensor from disk), checked
/// against an architecture.
pub(crate) struct SafetensorsSource<'a> {
    st: StIndex<'a>,
    path: &'a Path,
    spec: &'a ResNetSpec,
    last: Layer,
}

impl<'a> SafetensorsSource<'a> {
    /// Parses the header of an in-memory file ([`StIndex`] checks that every offset and byte
    /// length is consistent with the declared shapes and the buffer size, with overflow
    /// checks, before anything is allocated).
    pub(crate) fn parse(
        bytes: &'a [u8],
        path: &'a Path,
        spec: &'a ResNetSpec,
        last: Layer,
    ) -> Result<Self> {
        Ok(SafetensorsSource {
            st: StIndex::from_slice(bytes, path)?,
            path,
            spec,
            last,
        })
    }

    /// `true` when the header's `__metadata__` marks the file as seeded random weights
    /// ([`RANDOM_WEIGHTS_KEY`](super::RANDOM_WEIGHTS_KEY) = `true`).
    pub(crate) fn marked_random(&self) -> bool {
        self.st
            .metadata()
            .and_then(|m| m.get(super::RANDOM_WEIGHTS_KEY))
            .is_some_and(|v| v == "true")
    }

    /// Parses the header of the safetensors stream at bytes `base..base + len` of an open
    /// file only; tensors are then read one at a time through the same handle.
    pub(crate) fn open_range(
        file: std::fs::File,
        path: &'a Path,
        base: u64,
        len: u64,
        spec: &'a ResNetSpec,
        last: Layer,
    ) -> Result<SafetensorsSource<'a>> {
        Ok(SafetensorsSource {
            st: StIndex::from_file_range(file, path, base, len)?,
            path,
            spec,
            last,
        })
    }

    /// Turns a missing-tensor or wrong-shape error into an architecture-mismatch error when the
    /// file's structure can be recognised and differs from the requested one.
    fn explain(&self, err: Error) -> Error {
        let Some(found) = detect_architecture(&self.st) else {
            return err;
        };
        if found.same_structure(self.spec, self.last) {
            return err;
        }
        // A file that stops early (e.g. exported only up to layer2) but matches so far.
        let present = found.blocks.iter().take_while(|&&b| b > 0).count();
        if present <= self.last.index() {
            if let Some(l) = present.checked_sub(1).and_then(Layer::from_index) {
                if found.same_structure(self.spec, l) {
                    return match err {
                        Error::MissingTensor {
                            path,
                            tensor,
                            expected,
                        } => Error::MissingTensor {
                            path,
                            tensor,
                            expected: format!(
                                "{expected}; the file only holds weights up to {l}, tap fewer layers or use a complete file"
                            ),
                        },
                        other => other,
                    };
                }
            }
        }
        Error::invalid_file(
            self.path,
            format!(
                "the weights do not fit architecture {} ({}); the file looks like {} \
                 — choose the matching backbone. First mismatch: {}",
                self.spec.name,
                self.spec.describe(),
                describe_found(&found),
                strip_path(&err, self.path),
            ),
        )
    }

    /// Fails if the file holds more blocks in a used stage than the architecture (e.g. ResNet-101
    /// weights loaded as ResNet-50 would otherwise load silently).
    pub(crate) fn check_no_extra_blocks(&self) -> Result<()> {
        for s in 0..=self.last.index() {
            let extra = format!("layer{}.{}.conv1.weight", s + 1, self.spec.blocks[s]);
            if self.st.entry(&extra).is_some() {
                let found = detect_architecture(&self.st);
                let looks = found
                    .as_ref()
                    .map(describe_found)
                    .unwrap_or_else(|| "a deeper network".to_string());
                return Err(Error::invalid_file(
                    self.path,
                    format!(
                        "the weights do not fit architecture {} ({}): the file has tensor `{extra}` \
                         but layer{} should have {} block(s); the file looks like {looks}",
                        self.spec.name,
                        self.spec.describe(),
                        s + 1,
                        self.spec.blocks[s]
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl TensorSource for SafetensorsSource<'_> {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let Some(entry) = self.st.entry(name) else {
            let err = Error::MissingTensor {
                path: self.path.to_path_buf(),
                tensor: name.to_string(),
                expected: format!("shape {shape:?} for architecture {}", self.spec.name),
            };
            return Err(self.explain(err));
        };
        if entry.shape != shape {
            let err = Error::TensorShape {
                path: self.path.to_path_buf(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                found: entry.shape.clone(),
            };
            return Err(self.explain(err));
        }
        let dtype = entry.dtype;
        if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(Error::TensorDtype {
                path: self.path.to_path_buf(),
                tensor: name.to_string(),
                expected: "F32, F16 or BF16".to_string(),
                found: format!("{dtype:?}"),
            });
        }
        let data = self.st.bytes(name, self.path)?;
        let values: Vec<f32> = match dtype {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        };
        let n: usize = shape.iter().product();
        if values.len() != n {
            // Unreachable after the crate's own validation; kept as a typed guard.
            return Err(Error::invalid_file(
                self.path,
                format!(
                    "tensor `{name}` holds {} values, expected {n}",
                    values.len()
                ),
            ));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFiniteTensor {
                path: self.path.to_path_buf(),
                tensor: name.to_string(),
            });
        }
        Ok(values)
    }

    fn path(&self) -> &Path {
        self.path
    }
}

/// The error's message without the leading `<path>: ` (the outer error names the path already).
fn strip_path(err: &Error, path: &Path) -> String {
    let msg = err.to_string();
    let prefix = format!("{}: ", path.display());
    msg.strip_prefix(&prefix).map(str::to_string).unwrap_or(msg)
}

fn describe_found(found: &ResNetSpec) -> String {
    let preset = super::arch::KNOWN_ARCHITECTURES.iter().find_map(|n| {
        let p = ResNetSpec::from_name(n).ok()?;
        let stages = found.blocks.iter().take_while(|&&b| b > 0).count();
        let last = Layer::from_index(stages.checked_sub(1)?)?;
        p.same_structure(found, last).then_some((n, stages))
    });
    match preset {
        Some((n, 4)) => format!("{n} ({})", found.describe()),
        Some((n, s)) => format!("{n}, up to layer{s} ({})", found.describe()),
        None => format!("a ResNet with {}", found.describe()),
    }
}

/// Reads the architecture off the tensor names and shapes of a torchvision-layout file, or
/// `None` when it does not look like a ResNet. Stages absent from the file get 0 blocks.
fn detect_architecture(st: &StIndex<'_>) -> Option<ResNetSpec> {
    let shape = |name: &str| st.shape(name).map(<[usize]>::to_vec);
    let stem = shape("conv1.weight")?;
    if stem.len() != 4 {
        return None;
    }
    let block = if shape("layer1.0.conv3.weight").is_some() {
        BlockKind::Bottleneck
    } else if shape("layer1.0.conv1.weight").is_some() {
        BlockKind::Basic
    } else {
        return None;
    };
    let mut blocks = [0usize; 4];
    let mut planes = [0usize; 4];
    for s in 0..4 {
        while blocks[s] < 4096
            && shape(&format!("layer{}.{}.conv1.weight", s + 1, blocks[s])).is_some()
        {
            blocks[s] += 1;
        }
        if blocks[s] == 0 {
            continue;
        }
        let last_conv = match block {
            BlockKind::Basic => "conv2",
            BlockKind::Bottleneck => "conv3",
        };
        let out = shape(&format!("layer{}.0.{last_conv}.weight", s + 1))?;
        planes[s] = *out.first()? / block.expansion();
    }
    let width_per_group = match block {
        BlockKind::Basic => 64,
        BlockKind::Bottleneck => {
            let w = *shape("layer1.0.conv1.weight")?.first()?;
            if planes[0] == 0 {
                return None;
            }
            w.checked_mul(64)? / planes[0]
        }
    };
    Some(ResNetSpec {
        name: "detected".to_string(),
        block,
        blocks,
        stem_channels: stem[0],
        planes,
        width_per_group,
    })
}

/// Seeded random weights in torchvision layout, for examples and benchmarks.
///
/// Convolutions: He-uniform (variance 2/fan_in). BatchNorm: weight U(0.5, 1.5) — U(0.2, 0.5)
/// for the last BatchNorm of each residual branch so activations stay bounded through deep
/// stages — bias and running mean U(−0.2, 0.2), running variance U(0.5, 1.5).
pub(crate) struct RandomSource {
    rng: ChaCha8Rng,
    block: BlockKind,
    path: std::path::PathBuf,
}

impl RandomSource {
    pub(crate) fn new(seed: u64, block: BlockKind) -> Self {
        RandomSource {
            rng: ChaCha8Rng::seed_from_u64(seed),
            block,
            path: std::path::PathBuf::from(format!("<random seed {seed}>")),
        }
    }
}

impl TensorSource for RandomSource {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        let mut uniform = |lo: f32, hi: f32| -> Vec<f32> {
            (0..n).map(|_| self.rng.random_range(lo..hi)).collect()
        };
        let last_bn = match self.block {
            BlockKind::Basic => ".bn2.",
            BlockKind::Bottleneck => ".bn3.",
        };
        Ok(if shape.len() == 4 {
            let fan_in = (shape[1] * shape[2] * shape[3]).max(1) as f32;
            let bound = (6.0 / fan_in).sqrt();
            uniform(-bound, bound)
        } else if name.ends_with(".running_var") {
            uniform(0.5, 1.5)
        } else if name.ends_with(".weight") && name.contains(last_bn) {
            uniform(0.2, 0.5)
        } else if name.ends_with(".weight") {
            uniform(0.5, 1.5)
        } else {
            uniform(-0.2, 0.2)
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

/// Loads convolution `conv` (`[cout, cin, kh, kw]`) and BatchNorm `bn` and folds the eval-mode
/// BatchNorm into the convolution: `w' = w·γ/√(σ²+ε)`, `b' = β − μ·γ/√(σ²+ε)` (computed in f64).
pub(crate) fn load_conv_bn(
    src: &mut dyn TensorSource,
    conv: &str,
    bn: &str,
    shape: [usize; 4],
    stride: usize,
    pad: usize,
) -> Result<Conv2d> {
    let [cout, cin, kh, kw] = shape;
    let mut weight = src.get(&format!("{conv}.weight"), &shape)?;
    let gamma = src.get(&format!("{bn}.weight"), &[cout])?;
    let beta = src.get(&format!("{bn}.bias"), &[cout])?;
    let mean = src.get(&format!("{bn}.running_mean"), &[cout])?;
    let var = src.get(&format!("{bn}.running_var"), &[cout])?;
    if let Some(v) = var.iter().find(|&&v| v < 0.0) {
        return Err(Error::invalid_file(
            src.path(),
            format!("tensor `{bn}.running_var` holds a negative variance ({v})"),
        ));
    }
    let per_out = cin * kh * kw;
    let mut bias = vec![0.0f32; cout];
    for o in 0..cout {
        let scale = f64::from(gamma[o]) / (f64::from(var[o]) + BN_EPS).sqrt();
        bias[o] = (f64::from(beta[o]) - f64::from(mean[o]) * scale) as f32;
        for w in &mut weight[o * per_out..(o + 1) * per_out] {
            *w = (f64::from(*w) * scale) as f32;
        }
    }
    if weight.iter().chain(bias.iter()).any(|v| !v.is_finite()) {
        return Err(Error::invalid_file(
            src.path(),
            format!("folding `{bn}` into `{conv}` overflows f32 (extreme BatchNorm statistics)"),
        ));
    }
    Ok(Conv2d::new(cout, cin, kh, kw, stride, pad, weight, bias))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct MapSource(
        std::collections::HashMap<String, Vec<f32>>,
        std::path::PathBuf,
    );

    impl TensorSource for MapSource {
        fn get(&mut self, name: &str, _shape: &[usize]) -> Result<Vec<f32>> {
            Ok(self.0[name].clone())
        }
        fn path(&self) -> &Path {
            &self.1
        }
    }

    #[test]
    fn folding_matches_conv_then_batchnorm() {
        // 1×1 conv, 2 outputs, 2 inputs; BN computed by hand on a single pixel.
        let mut m = std::collections::HashMap::new();
        m.insert("c.weight".to_string(), vec![1.0, 2.0, -3.0, 0.5]);
        m.insert("b.weight".to_string(), vec![2.0, 0.5]);
        m.insert("b.bias".to_string(), vec![0.1, -1.0]);
        m.insert("b.running_mean".to_string(), vec![1.0, -2.0]);
        m.insert("b.running_var".to_string(), vec![4.0, 0.25]);
        let mut src = MapSource(m, "x".into());
        let conv = load_conv_bn(&mut src, "c", "b", [2, 2, 1, 1], 1, 0).unwrap();
        let x = [0.7f32, -1.3];
        let mut out = [0.0f32; 2];
        conv.forward_image(&x, 1, 1, &mut out, None, false, &mut Vec::new());
        let z0 = 1.0 * 0.7 + 2.0 * -1.3;
        let z1 = -3.0 * 0.7 + 0.5 * -1.3;
        let e0 = (z0 - 1.0) / (4.0f64 + 1e-5).sqrt() * 2.0 + 0.1;
        let e1 = (z1 + 2.0) / (0.25f64 + 1e-5).sqrt() * 0.5 - 1.0;
        assert!((f64::from(out[0]) - e0).abs() < 1e-6, "{} {e0}", out[0]);
        assert!((f64::from(out[1]) - e1).abs() < 1e-6, "{} {e1}", out[1]);
    }

    #[test]
    fn negative_variance_is_rejected() {
        let mut m = std::collections::HashMap::new();
        m.insert("c.weight".to_string(), vec![1.0]);
        m.insert("b.weight".to_string(), vec![1.0]);
        m.insert("b.bias".to_string(), vec![0.0]);
        m.insert("b.running_mean".to_string(), vec![0.0]);
        m.insert("b.running_var".to_string(), vec![-1.0]);
        let mut src = MapSource(m, "x".into());
        let e = load_conv_bn(&mut src, "c", "b", [1, 1, 1, 1], 1, 0).unwrap_err();
        assert!(e.to_string().contains("b.running_var"), "{e}");
    }
}
