//! The whole flow on generated textures: fit on normal images, score normal and defective
//! (scratch, spot) ones; image and pixel AUROC, and where the anomaly map peaks.

use crate::model_common::*;
use image::{GrayImage, RgbImage};
use ndarray::Array2;
use patchcore::backbone::{Backbone, ResNetSpec};
use patchcore::coreset::{CoresetConfig, CoresetSize};
use patchcore::metrics;
use patchcore::model::{PatchCore, PatchCoreParams, PredictOptions};
use patchcore::preprocess::{self, PreprocessConfig, Resize};
use patchcore::synthetic::{self, Defect};

const E2E_SIZE: u32 = 128;

struct Sample {
    image: RgbImage,
    mask: Option<GrayImage>,
    defect: Option<Defect>,
}

fn data() -> (Vec<RgbImage>, Vec<Sample>) {
    let mut gen = synthetic::Generator::new(2024);
    let train = (0..8).map(|_| gen.normal_image(E2E_SIZE)).collect();
    let mut test = vec![];
    for _ in 0..6 {
        test.push(Sample {
            image: gen.normal_image(E2E_SIZE),
            mask: None,
            defect: None,
        });
    }
    for d in [Defect::Scratch, Defect::Spot] {
        for _ in 0..5 {
            let (image, mask) = gen.defective_image(E2E_SIZE, d);
            test.push(Sample {
                image,
                mask: Some(mask),
                defect: Some(d),
            });
        }
    }
    (train, test)
}

fn params() -> PatchCoreParams {
    PatchCoreParams {
        // 128 → crop 112: a 14 × 14 patch grid on layer2.
        preprocess: PreprocessConfig {
            resize: Resize::None,
            crop: Some((112, 112)),
            ..PreprocessConfig::default()
        },
        layers: LAYERS.to_vec(),
        coreset: CoresetConfig {
            size: CoresetSize::Ratio(0.25),
            ..CoresetConfig::default()
        },
        ..PatchCoreParams::default()
    }
}

/// Distance in pixels from `(y, x)` to the nearest `true` pixel of `mask` (brute force).
fn distance_to_mask(mask: &Array2<bool>, y: usize, x: usize) -> f64 {
    mask.indexed_iter()
        .filter(|(_, &m)| m)
        .map(|((my, mx), _)| {
            let (dy, dx) = (my as f64 - y as f64, mx as f64 - x as f64);
            (dy * dy + dx * dx).sqrt()
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
fn detects_and_localises_synthetic_defects() {
    let (train, test) = data();
    let backbone = Backbone::random(&ResNetSpec::resnet18(), &LAYERS, 0).unwrap();
    let (model, _) =
        PatchCore::fit(params().check().unwrap(), backbone, &train, &mut |_| {}).unwrap();
    let cfg = &model.config().params().preprocess;
    let mut labels = vec![];
    let mut scores = vec![];
    let mut maps = vec![];
    let mut masks = vec![];
    for s in &test {
        let (p, _) = model.predict(&s.image, PredictOptions::default()).unwrap();
        let map = p.anomaly_map.unwrap();
        assert_eq!(map.dim(), (112, 112));
        let mask = match &s.mask {
            Some(m) => preprocess::preprocess_mask(m, cfg).unwrap(),
            None => Array2::from_elem((112, 112), false),
        };
        labels.push(s.defect.is_some());
        scores.push(p.score);
        maps.push(map);
        masks.push(mask);
    }
    let image_auroc = metrics::auroc(&labels, &scores).unwrap();
    let mv: Vec<_> = maps.iter().map(|m| m.view()).collect();
    let kv: Vec<_> = masks.iter().map(|m| m.view()).collect();
    let pixel_auroc = metrics::pixel_auroc(&kv, &mv).unwrap();
    eprintln!("image AUROC {image_auroc:.4}, pixel AUROC {pixel_auroc:.4}");
    // Each defect kind alone against the normal images.
    for kind in [Defect::Scratch, Defect::Spot] {
        let (l, sc): (Vec<bool>, Vec<f32>) = test
            .iter()
            .zip(&scores)
            .filter(|(s, _)| s.defect.is_none() || s.defect == Some(kind))
            .map(|(s, &v)| (s.defect.is_some(), v))
            .unzip();
        let a = metrics::auroc(&l, &sc).unwrap();
        assert!(a >= 0.9, "{kind:?}: image AUROC {a}");
    }
    for (s, (map, mask)) in test.iter().zip(maps.iter().zip(&masks)) {
        let Some(d) = s.defect else { continue };
        if !mask.iter().any(|&m| m) {
            continue;
        }
        let ((y, x), _) = map
            .indexed_iter()
            .fold(((0, 0), f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            });
        let dist = distance_to_mask(mask, y, x);
        // Within 6 pixels, less than one patch (stride 8 on layer2).
        assert!(
            dist <= 6.0,
            "{d:?}: the map peaks at ({y}, {x}), {dist:.1} px from the defect"
        );
    }
    assert!(image_auroc >= 0.9, "image AUROC {image_auroc}");
    assert!(pixel_auroc >= 0.9, "pixel AUROC {pixel_auroc}");
}
