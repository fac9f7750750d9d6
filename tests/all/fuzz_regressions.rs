//! Inputs that once crashed, hung or exhausted memory in a fuzz target (`fuzz/`), replayed
//! through the same code as the target. Each file under `tests/fixtures/fuzz/<target>/` must give
//! `Ok` or a typed error, quickly; the tests below also pin the error each one gives now.
//!
//! To add a finding: copy the artifact from `fuzz/artifacts/<target>/` into
//! `tests/fixtures/fuzz/<target>/` with a descriptive name.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ndarray::Array4;
use patchcore::backbone::{Backbone, BlockKind, Layer, ResNetSpec};
use patchcore::model::{BackboneSource, PatchCore, PredictOptions};
use patchcore::preprocess::{
    crop_box, decode_mask, decode_rgb, preprocess, preprocess_mask, ImageLimits, PreprocessConfig,
    Resize,
};
use patchcore::tensor_io::read_f32;
use patchcore::Error;

/// `fuzz/fuzz_targets/common.rs::tiny_basic`.
fn tiny_basic() -> ResNetSpec {
    ResNetSpec {
        name: "fuzz_basic".into(),
        block: BlockKind::Basic,
        blocks: [1, 1, 1, 1],
        stem_channels: 8,
        planes: [8, 16, 32, 64],
        width_per_group: 64,
    }
}

/// `common.rs::micro_basic`.
fn micro_basic() -> ResNetSpec {
    ResNetSpec {
        name: "fuzz_micro_basic".into(),
        block: BlockKind::Basic,
        blocks: [1, 1, 1, 1],
        stem_channels: 4,
        planes: [4, 4, 8, 8],
        width_per_group: 64,
    }
}

/// `common.rs::micro_bottleneck`.
fn micro_bottleneck() -> ResNetSpec {
    ResNetSpec {
        name: "fuzz_micro_bottleneck".into(),
        block: BlockKind::Bottleneck,
        blocks: [1, 1, 1, 1],
        stem_channels: 4,
        planes: [2, 2, 4, 4],
        width_per_group: 128,
    }
}

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(target);
    let mut out: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| {
                let b = std::fs::read(&p).unwrap();
                (p, b)
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

fn file_name(p: &Path) -> &str {
    p.file_name().unwrap().to_str().unwrap()
}

/// Typed error with a message; returns it for further checks.
fn typed<T>(r: Result<T, Error>) -> Option<Error> {
    match r {
        Ok(_) => None,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            Some(e)
        }
    }
}

/// The body of the `model_load` target; returns the errors of the two loads and of predicting.
fn model_load(data: &[u8]) -> Vec<Error> {
    let spec = tiny_basic();
    let weights = Backbone::random_weights_safetensors(&spec, Layer::Layer3, 0).unwrap();
    let backbone = Backbone::from_safetensors_bytes(
        &weights,
        Path::new("<fuzz weights>"),
        &spec,
        &[Layer::Layer2, Layer::Layer3],
    )
    .unwrap();
    let name = Path::new("<fuzz model>");
    let mut errs = Vec::new();
    for src in [
        BackboneSource::Loaded(Box::new(backbone)),
        BackboneSource::Embedded,
    ] {
        match PatchCore::load_bytes(data, name, src) {
            Ok(m) => {
                let input = Array4::<f32>::from_shape_fn((1, 3, 32, 32), |(_, c, y, x)| {
                    ((c * 7 + y * 3 + x) % 11) as f32 / 5.0 - 1.0
                });
                let r = m.predict_tensor(input.view(), PredictOptions { anomaly_map: true });
                if let Ok((preds, _)) = &r {
                    assert!(preds.iter().all(|p| !p.score.is_nan()));
                }
                errs.extend(typed(r));
            }
            Err(e) => errs.push(e),
        }
    }
    errs
}

fn quick(path: &Path, t: Instant) {
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "{}: took {:?}",
        path.display(),
        t.elapsed()
    );
}

#[test]
fn model_load_regressions() {
    let cases = inputs("model_load");
    assert!(!cases.is_empty());
    for (path, data) in &cases {
        let t = Instant::now();
        let errs = model_load(data);
        quick(path, t);
        let name = file_name(path);
        // Aggregator sizes without an upper bound used to allocate hundreds of gigabytes at the
        // first prediction (`pre_dim`) or unfold `C·p²` vectors of any size (`patch_size`);
        // they are configuration errors at load time now.
        let expect: Option<&str> = match name {
            "pre_dim.safetensors" => Some("pre_dim"),
            "patch.safetensors" => Some("patch_size"),
            _ => None,
        };
        if let Some(field) = expect {
            // The load with the backbone in memory is refused for the configuration.
            assert!(
                matches!(&errs[0], Error::InvalidFile { reason, .. } if reason.contains(field)),
                "{name}: {errs:?}"
            );
        }
    }
}

#[test]
fn weights_load_regressions() {
    for (path, data) in inputs("weights_load") {
        let t = Instant::now();
        let name = Path::new("<fuzz weights>");
        let taps: [&[Layer]; 3] = [
            &[Layer::Layer1],
            &[Layer::Layer2, Layer::Layer3],
            &[Layer::Layer4, Layer::Layer2],
        ];
        for spec in [micro_basic(), micro_bottleneck()] {
            for tp in taps {
                if let Ok(b) = Backbone::from_safetensors_bytes(&data, name, &spec, tp) {
                    let input = Array4::<f32>::from_elem((1, 3, 32, 32), 0.5);
                    typed(b.forward(input.view()));
                }
            }
        }
        quick(&path, t);
    }
}

#[test]
fn image_decode_regressions() {
    let limits = ImageLimits {
        max_width: 1024,
        max_height: 1024,
        max_alloc_bytes: 8 << 20,
        ..ImageLimits::default()
    };
    let d = PreprocessConfig::default();
    let configs = [
        PreprocessConfig {
            resize: Resize::ShorterSide(40),
            crop: Some((32, 32)),
            ..d
        },
        PreprocessConfig {
            resize: Resize::Exact {
                height: 17,
                width: 23,
            },
            crop: None,
            ..d
        },
        PreprocessConfig {
            resize: Resize::None,
            crop: Some((8, 8)),
            ..d
        },
        PreprocessConfig {
            resize: Resize::ShorterSide(1),
            crop: None,
            ..d
        },
    ];
    for (path, data) in inputs("image_decode") {
        let t = Instant::now();
        let name = Path::new("<fuzz image>");
        if let Ok(img) = decode_rgb(&data, name, &limits) {
            for cfg in &configs {
                typed(preprocess(&img, cfg));
                typed(crop_box(img.height() as usize, img.width() as usize, cfg));
            }
        }
        if let Ok(m) = decode_mask(&data, name, &limits) {
            for cfg in &configs {
                typed(preprocess_mask(&m, cfg));
            }
        }
        quick(&path, t);
    }
}

#[test]
fn tensor_read_regressions() {
    for (path, data) in inputs("tensor_read") {
        let t = Instant::now();
        let name = Path::new("<fuzz tensors>");
        typed(read_f32(&data, name, "x"));
        if let Ok((_, meta)) = safetensors::SafeTensors::read_metadata(&data) {
            for n in meta.tensors().keys().take(8) {
                typed(read_f32(&data, name, n));
            }
        }
        quick(&path, t);
    }
}
