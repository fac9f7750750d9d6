//! One-file models: the memory bank, the full configuration, the fingerprint of the backbone
//! weights and, optionally, the weights themselves, in one safetensors file.
//!
//! Layout (format version 1):
//! - tensor `memory_bank`: f32 `[rows, dim]`;
//! - tensor `backbone_weights` (optional): u8 `[len]`, the bytes of the backbone's safetensors
//!   file, so that one file deploys;
//! - metadata (string → string): `format = patchcore-model`, `format_version`, the
//!   configuration (one key per field, see [`encode`]), `backbone.*` (architecture, taps,
//!   sha256 of the weights file), `threshold` (optional).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::Array2;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use sha2::Digest;

use super::{PatchCore, PatchCoreConfig, PatchCoreParams};
use crate::anomaly_map::{MapConfig, Upsample};
use crate::backbone::{Backbone, BlockKind, Layer, ResNetSpec};
use crate::coreset::{CoresetConfig, CoresetSize, Sampler};
use crate::embedding::Aggregator;
use crate::error::{Error, Result};
use crate::preprocess::{PreprocessConfig, Resize};
use crate::scoring::{Distance, ScoringConfig};

/// Version of the model file format written by this crate; files of other versions are refused.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_NAME: &str = "patchcore-model";
const BANK: &str = "memory_bank";
const WEIGHTS: &str = "backbone_weights";

/// How [`PatchCore::save`] writes the file.
#[derive(Debug, Clone, Default)]
pub struct SaveOptions {
    /// Replace an existing file (otherwise an existing file is an error and is left untouched).
    pub overwrite: bool,
    /// Embed this backbone weights file (it must be the one the model was fitted with; its
    /// sha256 is checked), so the model file deploys alone.
    pub embed_weights: Option<PathBuf>,
}

/// Where [`PatchCore::load`] takes the backbone from.
#[derive(Debug)]
pub enum BackboneSource<'a> {
    /// The weights embedded in the model file (an error if there are none).
    Embedded,
    /// A weights file; its sha256 must equal the fingerprint stored in the model.
    File(&'a Path),
    /// A backbone already in memory; its fingerprint must equal the stored one.
    Loaded(Box<Backbone>),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl PatchCore {
    /// Writes the model to one safetensors file (atomically: a temporary file renamed into
    /// place; nothing is left behind on error).
    pub fn save(&self, path: &Path, opts: &SaveOptions) -> Result<()> {
        let bank = self.memory_bank();
        let bank = bank.as_standard_layout();
        let bank_bytes: Vec<u8> = bank.iter().flat_map(|v| v.to_le_bytes()).collect();
        let weights = match &opts.embed_weights {
            Some(w) => {
                let bytes = std::fs::read(w).map_err(|e| Error::io(w, e))?;
                let sha: [u8; 32] = sha2::Sha256::digest(&bytes).into();
                if sha != self.backbone.weights_sha256() {
                    return Err(Error::invalid_file(
                        w,
                        "these weights are not the ones the model was fitted with (sha256 differs)",
                    ));
                }
                Some(bytes)
            }
            None => None,
        };
        let mut tensors: Vec<(&str, TensorView<'_>)> = Vec::new();
        let view = TensorView::new(Dtype::F32, vec![bank.nrows(), bank.ncols()], &bank_bytes)
            .map_err(|e| Error::invalid_file(path, format!("cannot build tensor: {e:?}")))?;
        tensors.push((BANK, view));
        if let Some(w) = &weights {
            let view = TensorView::new(Dtype::U8, vec![w.len()], w)
                .map_err(|e| Error::invalid_file(path, format!("cannot build tensor: {e:?}")))?;
            tensors.push((WEIGHTS, view));
        }
        let meta = encode(self);
        let bytes = safetensors::serialize(tensors, &Some(meta))
            .map_err(|e| Error::invalid_file(path, format!("cannot serialise: {e:?}")))?;
        crate::io_util::write_atomic(path, opts.overwrite, |f| {
            f.write_all(&bytes).map_err(|e| Error::io(path, e))
        })
    }

    /// Reads a model written by [`PatchCore::save`]. Everything is checked: format and
    /// version, every configuration field, the memory bank's shape against the configuration
    /// and backbone, finiteness, and the backbone weights' fingerprint.
    pub fn load(path: &Path, backbone: BackboneSource<'_>) -> Result<PatchCore> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::load_bytes(&bytes, path, backbone)
    }

    /// [`PatchCore::load`] from bytes in memory; `name` is used in error messages.
    pub fn load_bytes(
        bytes: &[u8],
        name: &Path,
        backbone: BackboneSource<'_>,
    ) -> Result<PatchCore> {
        let bad = |reason: String| Error::invalid_file(name, reason);
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors model file: {e:?}")))?;
        let meta = header
            .metadata()
            .clone()
            .ok_or_else(|| bad("no metadata: not a patchcore model file".into()))?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("damaged safetensors file: {e:?}")))?;
        let m = Meta { map: &meta, name };
        if m.get("format")? != FORMAT_NAME {
            return Err(bad(format!(
                "`format` is `{}`, expected `{FORMAT_NAME}`",
                m.get("format")?
            )));
        }
        let version: u32 = m.parse("format_version")?;
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {version} is not supported (this build reads version \
                 {FORMAT_VERSION}); re-fit or convert the model"
            )));
        }
        let params = decode_params(&m)?;
        let spec = decode_spec(&m)?;
        let sha = m.get("backbone.sha256")?.to_string();
        let backbone = match backbone {
            BackboneSource::Embedded => {
                let t = st.tensor(WEIGHTS).map_err(|_| {
                    bad("the model has no embedded backbone weights; pass the weights file".into())
                })?;
                if t.dtype() != Dtype::U8 || t.shape().len() != 1 {
                    return Err(bad(format!("`{WEIGHTS}` must be a 1-D u8 tensor")));
                }
                Backbone::from_safetensors_bytes(t.data(), name, &spec, &params.layers)?
            }
            BackboneSource::File(p) => Backbone::from_safetensors_file(p, &spec, &params.layers)?,
            BackboneSource::Loaded(b) => *b,
        };
        if hex(&backbone.weights_sha256()) != sha {
            return Err(bad(format!(
                "the model was fitted with backbone weights of sha256 {sha}, but the given \
                 weights have sha256 {}; use the same weights file as for fitting",
                hex(&backbone.weights_sha256())
            )));
        }
        if backbone.spec() != &spec {
            return Err(bad(format!(
                "the model was fitted with a {} backbone, the given backbone is {}",
                spec.name,
                backbone.spec().name
            )));
        }
        let t = st
            .tensor(BANK)
            .map_err(|_| bad(format!("tensor `{BANK}` is missing")))?;
        if t.dtype() != Dtype::F32 {
            return Err(Error::TensorDtype {
                path: name.to_path_buf(),
                tensor: BANK.into(),
                expected: "F32".into(),
                found: format!("{:?}", t.dtype()),
            });
        }
        let channels: Vec<usize> = params
            .layers
            .iter()
            .map(|&l| backbone.out_channels(l))
            .collect();
        let dim = crate::embedding::embedding_dim(&channels, &params.aggregator);
        let shape = t.shape().to_vec();
        if shape.len() != 2 || shape[1] != dim || shape[0] == 0 {
            return Err(Error::TensorShape {
                path: name.to_path_buf(),
                tensor: BANK.into(),
                expected: vec![shape.first().copied().unwrap_or(1).max(1), dim],
                found: shape,
            });
        }
        let data: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if data.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFiniteTensor {
                path: name.to_path_buf(),
                tensor: BANK.into(),
            });
        }
        let bank = Array2::from_shape_vec((shape[0], shape[1]), data)
            .map_err(|e| bad(format!("`{BANK}`: {e}")))?;
        let threshold = match meta.get("threshold") {
            Some(_) => {
                let t = m.parse::<f32>("threshold")?;
                if !t.is_finite() {
                    return Err(bad(format!("metadata `threshold` = `{t}` is not finite")));
                }
                Some(t)
            }
            None => None,
        };
        let config: PatchCoreConfig = params
            .check()
            .map_err(|e| bad(format!("configuration: {e}")))?;
        let k = config.params().scoring.k;
        if k > shape[0] {
            return Err(bad(format!(
                "configuration: `scoring.k` = {k} nearest neighbours, but the memory bank has \
                 only {} rows",
                shape[0]
            )));
        }
        PatchCore::from_parts(config, backbone, bank, threshold)
    }
}

struct Meta<'a> {
    map: &'a HashMap<String, String>,
    name: &'a Path,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Result<&str> {
        self.map.get(key).map(|s| s.as_str()).ok_or_else(|| {
            Error::invalid_file(self.name, format!("metadata key `{key}` is missing"))
        })
    }

    fn parse<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        let v = self.get(key)?;
        v.parse().map_err(|_| {
            Error::invalid_file(
                self.name,
                format!("metadata `{key}` = `{v}` cannot be parsed"),
            )
        })
    }

    fn list<T: std::str::FromStr>(&self, key: &str) -> Result<Vec<T>> {
        let v = self.get(key)?;
        v.split(',')
            .map(|s| {
                s.parse().map_err(|_| {
                    Error::invalid_file(
                        self.name,
                        format!("metadata `{key}` = `{v}` cannot be parsed"),
                    )
                })
            })
            .collect()
    }

    fn array3(&self, key: &str) -> Result<[f32; 3]> {
        let v: Vec<f32> = self.list(key)?;
        <[f32; 3]>::try_from(v).map_err(|_| {
            Error::invalid_file(self.name, format!("metadata `{key}` needs three numbers"))
        })
    }

    fn bad(&self, key: &str) -> Error {
        Error::invalid_file(
            self.name,
            format!(
                "metadata `{key}` = `{}` is not a known value",
                self.map.get(key).map(|s| s.as_str()).unwrap_or("")
            ),
        )
    }
}

fn join<T: ToString>(v: &[T]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The metadata map of a model (configuration, backbone fingerprint, threshold).
fn encode(model: &PatchCore) -> HashMap<String, String> {
    let p = model.config.params();
    let mut m = HashMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_string(), v);
    };
    put("format", FORMAT_NAME.into());
    put("format_version", FORMAT_VERSION.to_string());
    put("crate_version", env!("CARGO_PKG_VERSION").into());
    // Preprocessing.
    put(
        "preprocess.resize",
        match p.preprocess.resize {
            Resize::None => "none".into(),
            Resize::ShorterSide(s) => format!("shorter:{s}"),
            Resize::Exact { height, width } => format!("exact:{height}x{width}"),
        },
    );
    put(
        "preprocess.crop",
        match p.preprocess.crop {
            None => "none".into(),
            Some((h, w)) => format!("{h}x{w}"),
        },
    );
    put("preprocess.mean", join(&p.preprocess.mean));
    put("preprocess.std", join(&p.preprocess.std));
    // Backbone.
    let spec = model.backbone.spec();
    put("backbone.name", spec.name.to_string());
    put(
        "backbone.block",
        match spec.block {
            BlockKind::Basic => "basic".into(),
            BlockKind::Bottleneck => "bottleneck".into(),
        },
    );
    put("backbone.blocks", join(&spec.blocks));
    put("backbone.stem_channels", spec.stem_channels.to_string());
    put("backbone.planes", join(&spec.planes));
    put("backbone.width_per_group", spec.width_per_group.to_string());
    put("backbone.sha256", hex(&model.backbone.weights_sha256()));
    put("layers", join(&p.layers));
    // Embedding.
    put(
        "embedding.aggregator",
        match p.aggregator {
            Aggregator::Original {
                patch_size,
                pre_dim,
                target_dim,
            } => format!("original:{patch_size}:{pre_dim}:{target_dim}"),
            Aggregator::Average {
                patch_size,
                target_dim,
            } => format!(
                "average:{patch_size}:{}",
                target_dim
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "none".into())
            ),
        },
    );
    // Coreset (how the bank was made; informative, and kept for re-fitting).
    put(
        "coreset.sampler",
        match p.coreset.sampler {
            Sampler::Greedy => "greedy".into(),
            Sampler::ApproximateGreedy { starts } => format!("approx:{starts}"),
            Sampler::Random => "random".into(),
            Sampler::None => "none".into(),
        },
    );
    put(
        "coreset.size",
        match p.coreset.size {
            CoresetSize::Ratio(r) => format!("ratio:{r:?}"),
            CoresetSize::Count(c) => format!("count:{c}"),
        },
    );
    put(
        "coreset.projection_dim",
        p.coreset.projection_dim.to_string(),
    );
    put("coreset.seed", p.coreset.seed.to_string());
    // Scoring.
    put("scoring.k", p.scoring.k.to_string());
    put(
        "scoring.reweight_neighbours",
        p.scoring.reweight_neighbours.to_string(),
    );
    put(
        "scoring.distance",
        match p.scoring.distance {
            Distance::Euclidean => "euclidean".into(),
            Distance::SquaredL2 => "squared_l2".into(),
        },
    );
    // Map.
    put(
        "map.upsample",
        match p.map.upsample {
            Upsample::Bilinear => "bilinear".into(),
            Upsample::Nearest => "nearest".into(),
        },
    );
    put(
        "map.sigma",
        p.map
            .sigma
            .map(|s| format!("{s:?}"))
            .unwrap_or_else(|| "none".into()),
    );
    put("map.truncate", format!("{:?}", p.map.truncate));
    put("batch_size", p.batch_size.to_string());
    if let Some(t) = model.threshold {
        put("threshold", format!("{t:?}"));
    }
    m
}

fn decode_spec(m: &Meta<'_>) -> Result<ResNetSpec> {
    let block = match m.get("backbone.block")? {
        "basic" => BlockKind::Basic,
        "bottleneck" => BlockKind::Bottleneck,
        _ => return Err(m.bad("backbone.block")),
    };
    let blocks: Vec<usize> = m.list("backbone.blocks")?;
    let planes: Vec<usize> = m.list("backbone.planes")?;
    let name = m.get("backbone.name")?;
    let mut spec = ResNetSpec::from_name(name).unwrap_or_else(|_| ResNetSpec::resnet18());
    // Keep the stored name: a custom architecture must compare equal to the backbone it was
    // fitted with (every other field is read below).
    spec.name = name.to_string();
    spec.block = block;
    spec.blocks = <[usize; 4]>::try_from(blocks).map_err(|_| m.bad("backbone.blocks"))?;
    spec.planes = <[usize; 4]>::try_from(planes).map_err(|_| m.bad("backbone.planes"))?;
    spec.stem_channels = m.parse("backbone.stem_channels")?;
    spec.width_per_group = m.parse("backbone.width_per_group")?;
    Ok(spec)
}

fn decode_params(m: &Meta<'_>) -> Result<PatchCoreParams> {
    let resize = {
        let v = m.get("preprocess.resize")?;
        if v == "none" {
            Resize::None
        } else if let Some(s) = v.strip_prefix("shorter:") {
            Resize::ShorterSide(s.parse().map_err(|_| m.bad("preprocess.resize"))?)
        } else if let Some(s) = v.strip_prefix("exact:") {
            let (h, w) = parse_hw(s).ok_or_else(|| m.bad("preprocess.resize"))?;
            Resize::Exact {
                height: h,
                width: w,
            }
        } else {
            return Err(m.bad("preprocess.resize"));
        }
    };
    let crop = match m.get("preprocess.crop")? {
        "none" => None,
        s => Some(parse_hw(s).ok_or_else(|| m.bad("preprocess.crop"))?),
    };
    let preprocess = PreprocessConfig {
        resize,
        crop,
        mean: m.array3("preprocess.mean")?,
        std: m.array3("preprocess.std")?,
    };
    let layers = m
        .get("layers")?
        .split(',')
        .map(|s| s.parse::<Layer>().map_err(|_| m.bad("layers")))
        .collect::<Result<Vec<_>>>()?;
    let aggregator = {
        let v = m.get("embedding.aggregator")?;
        let parts: Vec<&str> = v.split(':').collect();
        let num = |s: &str| {
            s.parse::<usize>()
                .map_err(|_| m.bad("embedding.aggregator"))
        };
        match parts.as_slice() {
            ["original", p, pre, tgt] => Aggregator::Original {
                patch_size: num(p)?,
                pre_dim: num(pre)?,
                target_dim: num(tgt)?,
            },
            ["average", p, tgt] => Aggregator::Average {
                patch_size: num(p)?,
                target_dim: if *tgt == "none" {
                    None
                } else {
                    Some(num(tgt)?)
                },
            },
            _ => return Err(m.bad("embedding.aggregator")),
        }
    };
    let sampler = match m.get("coreset.sampler")? {
        "greedy" => Sampler::Greedy,
        "random" => Sampler::Random,
        "none" => Sampler::None,
        v => match v.strip_prefix("approx:").and_then(|s| s.parse().ok()) {
            Some(starts) => Sampler::ApproximateGreedy { starts },
            None => return Err(m.bad("coreset.sampler")),
        },
    };
    let size = {
        let v = m.get("coreset.size")?;
        if let Some(r) = v.strip_prefix("ratio:").and_then(|s| s.parse().ok()) {
            CoresetSize::Ratio(r)
        } else if let Some(c) = v.strip_prefix("count:").and_then(|s| s.parse().ok()) {
            CoresetSize::Count(c)
        } else {
            return Err(m.bad("coreset.size"));
        }
    };
    let coreset = CoresetConfig {
        sampler,
        size,
        projection_dim: m.parse("coreset.projection_dim")?,
        seed: m.parse("coreset.seed")?,
    };
    let scoring = ScoringConfig {
        k: m.parse("scoring.k")?,
        reweight_neighbours: m.parse("scoring.reweight_neighbours")?,
        distance: match m.get("scoring.distance")? {
            "euclidean" => Distance::Euclidean,
            "squared_l2" => Distance::SquaredL2,
            _ => return Err(m.bad("scoring.distance")),
        },
    };
    let map = MapConfig {
        upsample: match m.get("map.upsample")? {
            "bilinear" => Upsample::Bilinear,
            "nearest" => Upsample::Nearest,
            _ => return Err(m.bad("map.upsample")),
        },
        sigma: match m.get("map.sigma")? {
            "none" => None,
            _ => Some(m.parse("map.sigma")?),
        },
        truncate: m.parse("map.truncate")?,
    };
    Ok(PatchCoreParams {
        preprocess,
        layers,
        aggregator,
        coreset,
        scoring,
        map,
        batch_size: m.parse("batch_size")?,
    })
}

fn parse_hw(s: &str) -> Option<(usize, usize)> {
    let (h, w) = s.split_once('x')?;
    Some((h.parse().ok()?, w.parse().ok()?))
}
