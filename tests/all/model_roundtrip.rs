//! Save → load round trips of fitted models: bit-identical memory bank, scores, patch scores
//! and maps; every configuration field preserved; the random-weights file is the random
//! backbone.

use crate::model_common::*;
use ndarray::Array2;
use patchcore::anomaly_map::{MapConfig, Upsample};
use patchcore::backbone::{Backbone, Calibration, Layer, Precision, ResNetSpec};
use patchcore::coreset::{CoresetConfig, CoresetSize, Sampler};
use patchcore::embedding::{embedding_dim, Aggregator};
use patchcore::knn::BankPrecision;
use patchcore::model::{
    BackboneSource, PatchCore, PatchCoreParams, PredictOptions, Prediction, SaveOptions,
};
use patchcore::preprocess::{self, PreprocessConfig, Resize};
use patchcore::scoring::{Distance, ScoringConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::Digest;

/// Every field compared one by one; the exhaustive destructuring makes this test stop
/// compiling when a field is added to `PatchCoreParams` without being covered here.
fn assert_params_eq(a: &PatchCoreParams, b: &PatchCoreParams) {
    let PatchCoreParams {
        preprocess,
        layers,
        aggregator,
        coreset,
        scoring,
        map,
        batch_size,
        bank_precision,
        precision,
    } = a;
    let PreprocessConfig {
        resize,
        crop,
        mean,
        std,
    } = preprocess;
    assert_eq!(*resize, b.preprocess.resize, "preprocess.resize");
    assert_eq!(*crop, b.preprocess.crop, "preprocess.crop");
    assert_eq!(bits(mean), bits(&b.preprocess.mean), "preprocess.mean");
    assert_eq!(bits(std), bits(&b.preprocess.std), "preprocess.std");
    assert_eq!(*layers, b.layers, "layers");
    assert_eq!(*aggregator, b.aggregator, "aggregator");
    let CoresetConfig {
        sampler,
        size,
        projection_dim,
        seed,
    } = coreset;
    assert_eq!(*sampler, b.coreset.sampler, "coreset.sampler");
    match (size, &b.coreset.size) {
        (CoresetSize::Ratio(x), CoresetSize::Ratio(y)) => {
            assert_eq!(x.to_bits(), y.to_bits(), "coreset.size ratio {x} vs {y}")
        }
        (x, y) => assert_eq!(x, y, "coreset.size"),
    }
    assert_eq!(*projection_dim, b.coreset.projection_dim, "projection_dim");
    assert_eq!(*seed, b.coreset.seed, "coreset.seed");
    let ScoringConfig {
        k,
        reweight_neighbours,
        distance,
    } = scoring;
    assert_eq!(*k, b.scoring.k, "scoring.k");
    assert_eq!(
        *reweight_neighbours, b.scoring.reweight_neighbours,
        "reweight_neighbours"
    );
    assert_eq!(*distance, b.scoring.distance, "scoring.distance");
    let MapConfig {
        upsample,
        sigma,
        truncate,
    } = map;
    assert_eq!(*upsample, b.map.upsample, "map.upsample");
    assert_eq!(
        sigma.map(f32::to_bits),
        b.map.sigma.map(f32::to_bits),
        "map.sigma"
    );
    assert_eq!(truncate.to_bits(), b.map.truncate.to_bits(), "map.truncate");
    assert_eq!(*batch_size, b.batch_size, "batch_size");
    assert_eq!(*bank_precision, b.bank_precision, "bank_precision");
    assert_eq!(*precision, b.precision, "precision");
    // And the derived equality agrees.
    assert_eq!(a, b);
}

/// Non-default values for every option.
fn all_options_params() -> PatchCoreParams {
    PatchCoreParams {
        preprocess: PreprocessConfig {
            resize: Resize::Exact {
                height: 80,
                width: 72,
            },
            crop: Some((64, 64)),
            mean: [0.5, 0.4, 0.3],
            std: [0.2, 0.25, 0.1 + 0.2],
        },
        layers: LAYERS.to_vec(),
        aggregator: Aggregator::Average {
            patch_size: 5,
            target_dim: Some(200),
        },
        coreset: CoresetConfig {
            sampler: Sampler::ApproximateGreedy { starts: 7 },
            size: CoresetSize::Count(40),
            projection_dim: 32,
            seed: 0xDEAD_BEEF_u64 << 20,
        },
        scoring: ScoringConfig {
            k: 3,
            reweight_neighbours: 4,
            distance: Distance::SquaredL2,
        },
        map: MapConfig {
            upsample: Upsample::Nearest,
            sigma: None,
            truncate: 2.5,
        },
        batch_size: 3,
        bank_precision: BankPrecision::F16,
        precision: Precision::Int8,
    }
}

fn predict_all(model: &PatchCore, images: &[image::RgbImage]) -> Vec<Prediction> {
    images
        .iter()
        .map(|im| model.predict(im, PredictOptions::default()).unwrap().0)
        .collect()
}

fn test_images() -> Vec<image::RgbImage> {
    let mut v = normal_images(2, 77);
    v.extend(defective_images(2, 78).into_iter().map(|(i, _, _)| i));
    v
}

#[test]
fn random_weights_file_is_the_random_backbone() {
    let spec = ResNetSpec::resnet18();
    let bytes = Backbone::random_weights_safetensors(&spec, Layer::Layer3, 5).unwrap();
    let from_file =
        Backbone::from_safetensors_bytes(&bytes, "<memory>".as_ref(), &spec, &LAYERS).unwrap();
    let random = random_backbone(5);
    let other = random_backbone(6);
    // The file's fingerprint is the sha256 of its bytes (computed here independently).
    let sha: [u8; 32] = sha2::Sha256::digest(&bytes).into();
    assert_eq!(from_file.weights_sha256(), sha);
    let input =
        preprocess::preprocess_batch(&normal_images(1, 3), &small_params().preprocess).unwrap();
    let a = from_file.forward(input.view()).unwrap();
    let b = random.forward(input.view()).unwrap();
    let c = other.forward(input.view()).unwrap();
    assert_eq!(a.len(), 2);
    for (t, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x.shape(), y.shape());
        assert!(bits(x.iter()) == bits(y.iter()), "tap {t} differs");
        assert!(x.iter().any(|&v| v > 0.0), "tap {t} is all zero");
    }
    assert!(bits(a[1].iter()) != bits(c[1].iter()), "seed has no effect");
}

#[test]
fn fit_save_load_with_and_without_embedded_weights() {
    let dir = TempDir::new("roundtrip-embedded");
    let spec = ResNetSpec::resnet18();
    let weights = dir.join("weights.safetensors");
    std::fs::write(
        &weights,
        Backbone::random_weights_safetensors(&spec, Layer::Layer3, 11).unwrap(),
    )
    .unwrap();
    let backbone = Backbone::from_safetensors_file(&weights, &spec, &LAYERS).unwrap();
    let mut params = small_params();
    params.coreset.size = CoresetSize::Ratio(0.25);
    let (mut model, _) = PatchCore::fit(
        params.check().unwrap(),
        backbone,
        &normal_images(4, 1),
        &mut |_| {},
    )
    .unwrap();
    model.set_threshold(Some(1.0 / 3.0));
    assert_eq!(model.memory_bank().nrows(), 4 * 64 / 4);
    let images = test_images();
    let before = predict_all(&model, &images);

    let with = dir.join("with.safetensors");
    model
        .save(
            &with,
            &SaveOptions {
                overwrite: false,
                embed_weights: Some(weights.clone()),
            },
        )
        .unwrap();
    let without = dir.join("without.safetensors");
    model.save(&without, &SaveOptions::default()).unwrap();
    let weights_len = std::fs::metadata(&weights).unwrap().len();
    let with_len = std::fs::metadata(&with).unwrap().len();
    let without_len = std::fs::metadata(&without).unwrap().len();
    assert!(
        with_len >= without_len + weights_len,
        "weights not embedded"
    );
    // No temporary files are left next to the outputs.
    assert_eq!(
        dir.files(),
        [
            "weights.safetensors",
            "with.safetensors",
            "without.safetensors"
        ]
    );

    let loaded = [
        PatchCore::load(&with, BackboneSource::Embedded).unwrap(),
        PatchCore::load(&with, BackboneSource::File(&weights)).unwrap(),
        PatchCore::load(&without, BackboneSource::File(&weights)).unwrap(),
        PatchCore::load(
            &without,
            BackboneSource::Loaded(Box::new(
                Backbone::from_safetensors_file(&weights, &spec, &LAYERS).unwrap(),
            )),
        )
        .unwrap(),
    ];
    for m in &loaded {
        assert_same_bank(&model, m);
        assert_params_eq(model.config().params(), m.config().params());
        assert_eq!(
            m.threshold().map(f32::to_bits),
            Some((1.0f32 / 3.0).to_bits())
        );
        assert_eq!(
            m.backbone().weights_sha256(),
            model.backbone().weights_sha256()
        );
        assert_eq!(m.backbone().spec(), &spec);
        assert_same_predictions(&before, &predict_all(m, &images));
    }
    // Saving the loaded model again gives the same bytes: the file is a function of the model.
    let again = dir.join("again.safetensors");
    loaded[0]
        .save(
            &again,
            &SaveOptions {
                overwrite: false,
                embed_weights: Some(weights.clone()),
            },
        )
        .unwrap();
    assert!(
        std::fs::read(&again).unwrap() == std::fs::read(&with).unwrap(),
        "saving the loaded model again gives other bytes"
    );
}

#[test]
fn all_options_fit_save_load() {
    let dir = TempDir::new("roundtrip-options");
    let params = all_options_params();
    let (mut model, _) = PatchCore::fit(
        params.clone().check().unwrap(),
        random_backbone(3),
        &normal_images(5, 2),
        &mut |_| {},
    )
    .unwrap();
    // Count(40) of 5 · 8 · 8 rows; Average with target 200.
    assert_eq!(model.memory_bank().dim(), (40, 200));
    model.set_threshold(Some(12.75));
    let path = dir.join("m.safetensors");
    model.save(&path, &SaveOptions::default()).unwrap();
    let loaded =
        PatchCore::load(&path, BackboneSource::Loaded(Box::new(random_backbone(3)))).unwrap();
    assert_params_eq(&params, loaded.config().params());
    assert_eq!(loaded.threshold(), Some(12.75));
    assert_same_bank(&model, &loaded);
    let images = test_images();
    let a = predict_all(&model, &images);
    assert_same_predictions(&a, &predict_all(&loaded, &images));
    // Nearest upsampling without blur: the map is the patch grid blown up 8×.
    let p = &a[2];
    let map = p.anomaly_map.as_ref().unwrap();
    assert_eq!(map.dim(), (64, 64));
    for ((y, x), v) in map.indexed_iter() {
        assert_eq!(v.to_bits(), p.patch_scores[[y / 8, x / 8]].to_bits());
    }
}

/// Many configurations through `from_parts` (no fitting): the file keeps every field.
#[test]
fn configuration_variants_survive() {
    let dir = TempDir::new("roundtrip-variants");
    let backbone = random_backbone(0);
    let mut variants = vec![PatchCoreParams::default(), all_options_params()];
    let mut p = PatchCoreParams::default();
    p.preprocess.resize = Resize::None;
    p.preprocess.crop = None;
    p.aggregator = Aggregator::Original {
        patch_size: 1,
        pre_dim: 77,
        target_dim: 33,
    };
    p.coreset = CoresetConfig {
        sampler: Sampler::Random,
        size: CoresetSize::Ratio(0.1 + 0.2),
        projection_dim: 0,
        seed: u64::MAX,
    };
    p.map = MapConfig {
        upsample: Upsample::Bilinear,
        sigma: Some(1.7),
        truncate: 0.0,
    };
    p.batch_size = 1;
    variants.push(p.clone());
    p.aggregator = Aggregator::Average {
        patch_size: 3,
        target_dim: None,
    };
    p.coreset.sampler = Sampler::None;
    p.coreset.size = CoresetSize::Ratio(1.0);
    p.precision = Precision::Bf16;
    p.preprocess.resize = Resize::ShorterSide(123);
    p.preprocess.crop = Some((100, 64));
    p.scoring.distance = Distance::Euclidean;
    p.map.sigma = Some(f32::MIN_POSITIVE);
    variants.push(p.clone());
    p.coreset.sampler = Sampler::Greedy;
    p.coreset.size = CoresetSize::Ratio(1e-7);
    p.layers = vec![Layer::Layer3, Layer::Layer2];
    variants.push(p);

    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for (i, params) in variants.into_iter().enumerate() {
        let bb = Backbone::random(&ResNetSpec::resnet18(), &params.layers, 0).unwrap();
        assert_eq!(bb.weights_sha256(), backbone.weights_sha256());
        let channels: Vec<usize> = params.layers.iter().map(|&l| bb.out_channels(l)).collect();
        let dim = embedding_dim(&channels, &params.aggregator);
        let bank = Array2::from_shape_fn((5, dim), |_| rng.random_range(-2.0f32..2.0));
        let threshold = (i % 2 == 0).then_some(i as f32 + 0.1);
        // A model from parts is built in f32; int8 needs a calibration first.
        let mut f32_params = params.clone();
        f32_params.precision = Precision::F32;
        let mut model = PatchCore::from_parts(
            f32_params.check().unwrap(),
            bb.clone(),
            bank.clone(),
            threshold,
        )
        .unwrap();
        if params.precision == Precision::Int8 {
            assert!(PatchCore::from_parts(
                params.clone().check().unwrap(),
                bb.clone(),
                bank.clone(),
                threshold
            )
            .is_err());
            assert!(
                model.set_precision(Precision::Int8).is_err(),
                "no calibration"
            );
            let ranges = (0..bb.calibration_len()).map(|j| 0.5 + j as f32 / 3.0);
            let cal = Calibration::from_maxima(ranges.collect(), 2).unwrap();
            model.set_calibration(cal.clone()).unwrap();
            model.set_precision(Precision::Int8).unwrap();
            assert_eq!(model.calibration(), Some(&cal));
        }
        if params.precision == Precision::Bf16 {
            model.set_precision(Precision::Bf16).unwrap();
        }
        let path = dir.join(&format!("v{i}.safetensors"));
        model.save(&path, &SaveOptions::default()).unwrap();
        let loaded = PatchCore::load(&path, BackboneSource::Loaded(Box::new(bb))).unwrap();
        assert_params_eq(&params, loaded.config().params());
        assert_eq!(loaded.calibration(), model.calibration(), "variant {i}");
        assert_eq!(loaded.backbone().precision(), params.precision);
        assert_eq!(
            loaded.threshold().map(f32::to_bits),
            threshold.map(f32::to_bits)
        );
        // An f16 bank holds the f16-rounded values (rounded here independently).
        let want = match params.bank_precision {
            BankPrecision::F32 => bank.clone(),
            BankPrecision::F16 => bank.mapv(|v| half::f16::from_f32(v).to_f32()),
        };
        assert_eq!(loaded.bank_precision(), params.bank_precision);
        assert!(
            bits(want.iter()) == bits(loaded.memory_bank().iter()),
            "variant {i}: bank"
        );
    }
}

/// A custom architecture (with a name that needs JSON escaping) survives the file, and the
/// same model saved twice gives the same bytes.
#[test]
fn custom_architecture_survives() {
    let dir = TempDir::new("roundtrip-custom");
    let spec = ResNetSpec {
        name: "tiny \"net\" \\ v1\n".to_string(),
        blocks: [1, 1, 1, 1],
        stem_channels: 8,
        planes: [8, 16, 32, 64],
        ..ResNetSpec::resnet18()
    };
    let bb = Backbone::random(&spec, &LAYERS, 4).unwrap();
    let mut params = small_params();
    params.coreset.size = CoresetSize::Ratio(0.5);
    let (model, _) = PatchCore::fit(
        params.check().unwrap(),
        bb.clone(),
        &normal_images(2, 8),
        &mut |_| {},
    )
    .unwrap();
    let a = dir.join("a.safetensors");
    let b = dir.join("b.safetensors");
    model.save(&a, &SaveOptions::default()).unwrap();
    model.save(&b, &SaveOptions::default()).unwrap();
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    let loaded = PatchCore::load(&a, BackboneSource::Loaded(Box::new(bb))).unwrap();
    assert_eq!(loaded.backbone().spec(), &spec);
    assert_same_bank(&model, &loaded);
    let images = test_images();
    assert_same_predictions(
        &predict_all(&model, &images),
        &predict_all(&loaded, &images),
    );
}
