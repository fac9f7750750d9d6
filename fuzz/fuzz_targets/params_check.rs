//! Building a `PatchCoreParams` (and the other user-facing configurations) from arbitrary
//! values — ratios, counts, sizes, layer and architecture names as a user would type them —
//! and validating it never panics; whatever passes validation is usable by the size helpers.
#![no_main]

mod common;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use patchcore::anomaly_map::{MapConfig, Upsample};
use patchcore::backbone::{BlockKind, Layer, ResNetSpec};
use patchcore::coreset::{coreset_size, CoresetConfig, CoresetSize, Sampler};
use patchcore::embedding::{embedding_dim, Aggregator};
use patchcore::model::PatchCoreParams;
use patchcore::preprocess::{crop_box, ImageLimits, PreprocessConfig, Resize};
use patchcore::scoring::{Distance, ScoringConfig};

#[derive(Arbitrary, Debug)]
struct Input {
    resize: (u8, usize, usize),
    crop: Option<(usize, usize)>,
    mean: [f32; 3],
    std: [f32; 3],
    layers: Vec<String>,
    arch: String,
    custom_arch: Option<(bool, [usize; 4], usize, [usize; 4], usize)>,
    aggregator: (bool, usize, usize, Option<usize>),
    sampler: (u8, usize),
    ratio: Option<f64>,
    count: usize,
    projection_dim: usize,
    seed: u64,
    k: usize,
    reweight: usize,
    squared: bool,
    nearest: bool,
    sigma: Option<f32>,
    truncate: f32,
    batch_size: usize,
    image: (usize, usize),
    bank_rows: usize,
    limits: (u32, u32, u64),
}

fuzz_target!(|inp: Input| {
    let resize = match inp.resize.0 % 3 {
        0 => Resize::None,
        1 => Resize::ShorterSide(inp.resize.1),
        _ => Resize::Exact {
            height: inp.resize.1,
            width: inp.resize.2,
        },
    };
    let preprocess = PreprocessConfig {
        resize,
        crop: inp.crop,
        mean: inp.mean,
        std: inp.std,
    };
    // Layer names as typed on a command line (`--layers layer2,layer3`).
    let layers: Result<Vec<Layer>, _> = inp.layers.iter().map(|s| s.parse::<Layer>()).collect();
    common::ok_or_typed(&layers);
    let layers = layers.unwrap_or_else(|_| vec![Layer::Layer2]);
    for l in &layers {
        // Display and parse round-trip.
        assert_eq!(l.to_string().parse::<Layer>().unwrap(), *l);
    }
    // Architecture by name, or a custom one.
    let spec = ResNetSpec::from_name(&inp.arch);
    common::ok_or_typed(&spec);
    if let Ok(s) = &spec {
        s.validate().unwrap();
    }
    if let Some((bottleneck, blocks, stem, planes, width)) = inp.custom_arch {
        let s = ResNetSpec {
            name: inp.arch.clone(),
            block: if bottleneck {
                BlockKind::Bottleneck
            } else {
                BlockKind::Basic
            },
            blocks,
            stem_channels: stem,
            planes,
            width_per_group: width,
        };
        let v = s.validate();
        common::ok_or_typed(&v);
        if v.is_ok() {
            for l in Layer::ALL {
                let _ = s.out_channels(l);
                let _ = s.tap_shape(l, inp.image.0 % 100_000, inp.image.1 % 100_000);
            }
        }
    }
    let aggregator = if inp.aggregator.0 {
        Aggregator::Original {
            patch_size: inp.aggregator.1,
            pre_dim: inp.aggregator.2,
            target_dim: inp.aggregator.3.unwrap_or(0),
        }
    } else {
        Aggregator::Average {
            patch_size: inp.aggregator.1,
            target_dim: inp.aggregator.3,
        }
    };
    let sampler = match inp.sampler.0 % 4 {
        0 => Sampler::Greedy,
        1 => Sampler::ApproximateGreedy {
            starts: inp.sampler.1,
        },
        2 => Sampler::Random,
        _ => Sampler::None,
    };
    let size = match inp.ratio {
        Some(r) => CoresetSize::Ratio(r),
        None => CoresetSize::Count(inp.count),
    };
    let params = PatchCoreParams {
        preprocess,
        layers: layers.clone(),
        aggregator,
        coreset: CoresetConfig {
            sampler,
            size,
            projection_dim: inp.projection_dim,
            seed: inp.seed,
        },
        scoring: ScoringConfig {
            k: inp.k,
            reweight_neighbours: inp.reweight,
            distance: if inp.squared {
                Distance::SquaredL2
            } else {
                Distance::Euclidean
            },
        },
        map: MapConfig {
            upsample: if inp.nearest {
                Upsample::Nearest
            } else {
                Upsample::Bilinear
            },
            sigma: inp.sigma,
            truncate: inp.truncate,
        },
        batch_size: inp.batch_size,
        bank_precision: Default::default(),
    };
    let checked = params.clone().check();
    common::ok_or_typed(&checked);
    // The helpers a fit or predict call uses first, on arbitrary image and bank sizes.
    let (h, w) = inp.image;
    let r = preprocess.output_size(h, w);
    common::ok_or_typed(&r);
    common::ok_or_typed(&crop_box(h, w, &preprocess));
    common::ok_or_typed(&coreset_size(inp.bank_rows, size));
    let limits = ImageLimits {
        max_width: inp.limits.0,
        max_height: inp.limits.1,
        max_alloc_bytes: inp.limits.2,
        ..ImageLimits::default()
    };
    common::ok_or_typed(&limits.validate());
    if let Ok(cfg) = checked {
        // Everything validated: the pieces are individually valid too.
        let p = cfg.params();
        p.preprocess.validate().unwrap();
        p.aggregator.validate().unwrap();
        p.coreset.validate().unwrap();
        p.scoring.validate().unwrap();
        p.map.validate().unwrap();
        let channels: Vec<usize> = p.layers.iter().map(|l| 64 << l.index()).collect();
        assert!(embedding_dim(&channels, &p.aggregator) >= 1);
        if let (CoresetSize::Ratio(_), n @ 1..) = (p.coreset.size, inp.bank_rows) {
            let k = coreset_size(n, p.coreset.size).unwrap();
            assert!((1..=n).contains(&k));
        }
    }
});
