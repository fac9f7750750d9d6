//! The model file's metadata codec: the configuration, the backbone fingerprint and the
//! threshold as string → string pairs (one key per field), and their checked decoding.
//! Every refusal names the file and the key.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::file::{hex, FORMAT_NAME, FORMAT_VERSION};
use super::{PatchCore, PatchCoreParams, UpdateRecord};
use crate::anomaly_map::{MapConfig, Upsample};
use crate::backbone::{BlockKind, Calibration, Layer, Precision, ResNetSpec};
use crate::coreset::{CoresetConfig, CoresetSize, Sampler};
use crate::embedding::Aggregator;
use crate::error::{Error, Result};
use crate::knn::BankPrecision;
use crate::preprocess::{PreprocessConfig, Resize};
use crate::scoring::{Distance, ScoringConfig};

/// Typed access to a model file's metadata map, with errors that name the file and the key.
pub(super) struct Meta<'a> {
    pub(super) map: &'a HashMap<String, String>,
    pub(super) name: &'a Path,
}

impl Meta<'_> {
    pub(super) fn get(&self, key: &str) -> Result<&str> {
        self.map.get(key).map(|s| s.as_str()).ok_or_else(|| {
            Error::invalid_file(self.name, format!("metadata key `{key}` is missing"))
        })
    }

    pub(super) fn parse<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        let v = self.get(key)?;
        v.parse().map_err(|_| {
            Error::invalid_file(
                self.name,
                format!("metadata `{key}` = `{v}` cannot be parsed"),
            )
        })
    }

    pub(super) fn list<T: std::str::FromStr>(&self, key: &str) -> Result<Vec<T>> {
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

    pub(super) fn array3(&self, key: &str) -> Result<[f32; 3]> {
        let v: Vec<f32> = self.list(key)?;
        <[f32; 3]>::try_from(v).map_err(|_| {
            Error::invalid_file(self.name, format!("metadata `{key}` needs three numbers"))
        })
    }

    pub(super) fn bad(&self, key: &str) -> Error {
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
pub(super) fn encode(model: &PatchCore) -> BTreeMap<String, String> {
    let p = model.config.params();
    let mut m = BTreeMap::new();
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
    put("backbone.precision", p.precision.name().into());
    if let Some(c) = &model.calibration {
        put(
            "backbone.calibration",
            c.maxima()
                .iter()
                .map(|v| format!("{v:?}"))
                .collect::<Vec<_>>()
                .join(","),
        );
        put("backbone.calibration_images", c.images().to_string());
    }
    if let Some(t) = model.threshold {
        put("threshold", format!("{t:?}"));
    }
    // Incremental update (optional keys: older files lack them).
    if let Some(r) = model.coverage_radius {
        put("coreset.coverage_radius", format!("{r:?}"));
    }
    if let Some(n) = model.images_seen {
        put("images_seen", n.to_string());
    }
    if !model.history.is_empty() {
        put(
            "update_history",
            model
                .history
                .iter()
                .map(|r| r.encode())
                .collect::<Vec<_>>()
                .join(";"),
        );
    }
    m
}

/// The optional keys of incremental update.
pub(super) struct Extras {
    pub(super) coverage_radius: Option<f32>,
    pub(super) images_seen: Option<u64>,
    pub(super) history: Vec<UpdateRecord>,
    pub(super) calibration: Option<Calibration>,
}

pub(super) fn decode_extras(m: &Meta<'_>) -> Result<Extras> {
    let coverage_radius = match m.map.get("coreset.coverage_radius") {
        None => None,
        Some(_) => {
            let r: f32 = m.parse("coreset.coverage_radius")?;
            if !(r.is_finite() && r >= 0.0) {
                return Err(m.bad("coreset.coverage_radius"));
            }
            Some(r)
        }
    };
    let images_seen = match m.map.get("images_seen") {
        None => None,
        Some(_) => Some(m.parse("images_seen")?),
    };
    let history = match m.map.get("update_history") {
        None => Vec::new(),
        Some(v) => v
            .split(';')
            .map(|r| UpdateRecord::decode(r).ok_or_else(|| m.bad("update_history")))
            .collect::<Result<Vec<_>>>()?,
    };
    let calibration = match m.map.get("backbone.calibration") {
        None => None,
        Some(_) => {
            let maxima: Vec<f32> = m.list("backbone.calibration")?;
            let images = m.parse("backbone.calibration_images")?;
            Some(Calibration::from_maxima(maxima, images).map_err(|e| {
                Error::invalid_file(m.name, format!("metadata `backbone.calibration`: {e}"))
            })?)
        }
    };
    Ok(Extras {
        coverage_radius,
        images_seen,
        history,
        calibration,
    })
}

pub(super) fn decode_spec(m: &Meta<'_>) -> Result<ResNetSpec> {
    let block = match m.get("backbone.block")? {
        "basic" => BlockKind::Basic,
        "bottleneck" => BlockKind::Bottleneck,
        _ => return Err(m.bad("backbone.block")),
    };
    let blocks: Vec<usize> = m.list("backbone.blocks")?;
    let planes: Vec<usize> = m.list("backbone.planes")?;
    let name = m.get("backbone.name")?;
    let mut spec = ResNetSpec::from_name(name).unwrap_or_else(|_| ResNetSpec::resnet18());
    spec.name = name.to_string();
    spec.block = block;
    spec.blocks = <[usize; 4]>::try_from(blocks).map_err(|_| m.bad("backbone.blocks"))?;
    spec.planes = <[usize; 4]>::try_from(planes).map_err(|_| m.bad("backbone.planes"))?;
    spec.stem_channels = m.parse("backbone.stem_channels")?;
    spec.width_per_group = m.parse("backbone.width_per_group")?;
    Ok(spec)
}

pub(super) fn decode_params(m: &Meta<'_>) -> Result<PatchCoreParams> {
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
        // The bank tensor's dtype decides (see `load_bytes`).
        bank_precision: BankPrecision::F32,
        // Files written before the key existed ran in f32.
        precision: match m.map.get("backbone.precision") {
            None => Precision::F32,
            Some(v) => v.parse().map_err(|_| m.bad("backbone.precision"))?,
        },
    })
}

fn parse_hw(s: &str) -> Option<(usize, usize)> {
    let (h, w) = s.split_once('x')?;
    Some((h.parse().ok()?, w.parse().ok()?))
}
