//! Predict end-to-end for one image with Wide-ResNet-50-2 (layer2 + layer3, the defaults of
//! the original code): preprocessing of a decoded 300×300 image, backbone, patch embedding,
//! k-NN against the memory bank, image score and (unless score-only) the blurred anomaly map.
//!
//! - `predict_wrn50_2/224/bank1638/{full,score_only}`: one 224² crop against a 1 % bank
//!   (1,638 rows: 1 % of MVTec *bottle*'s 163,840 training patches).
//! - `predict_wrn50_2/{320,448}/bank1638/score_only`: cost growth with the crop size.
//! - `predict_wrn50_2/224/bank{16384,40960}/score_only`: cost growth with the bank (10 %, 25 %).
//! - `predict_wrn50_2/224-{int8,bf16}/bank1638/full`: the first case with the int8 backbone
//!   (calibrated by the fit on the bank's 3 images) and with the bf16 one.
//! - `predict_wrn50_2/224-int8-fit24/bank1638/full`: int8 calibrated on 24 images, closer to a
//!   real training set: fewer test images exceed the ranges, and int8 activations stay
//!   quantised between convolutions (which needs 8 calibration images or more).
//!
//! Random weights (`Backbone::random`) and random-noise images. The bank is a random subset of
//! the patch features of other noise images (fitted with `Sampler::Random`), so queries lie
//! among the bank rows as in real use: the kNN's bf16 screen prunes by distance, and a bank
//! unrelated to the queries would make every row a candidate (its worst case, measured in
//! `benches/knn.rs`). On real WRN-50-2 features the screen is as effective as here.
//! Quick run: `cargo bench --bench predict -- --sample-size 10`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use image::RgbImage;
use patchcore::backbone::{Backbone, Layer, Precision, ResNetSpec};
use patchcore::coreset::{CoresetConfig, CoresetSize, Sampler};
use patchcore::model::{PatchCore, PatchCoreParams, PredictOptions};
use patchcore::preprocess::Resize;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;

/// A model whose bank is `bank_rows` random patch features of `images` noise images (by
/// default just enough of them).
fn model(crop: usize, bank_rows: usize, images: Option<usize>) -> PatchCore {
    let layers = [Layer::Layer2, Layer::Layer3];
    let backbone =
        Backbone::random(&ResNetSpec::wide_resnet50_2(), &layers, 7).expect("random backbone");
    let mut params = PatchCoreParams::default();
    params.preprocess.resize = Resize::ShorterSide(crop * 256 / 224);
    params.preprocess.crop = Some((crop, crop));
    params.coreset = CoresetConfig {
        sampler: Sampler::Random,
        size: CoresetSize::Count(bank_rows),
        ..CoresetConfig::default()
    };
    let config = params.check().expect("config");
    let side = (crop * 300 / 224) as u32;
    let patches = (crop / 8) * (crop / 8);
    let n = images.unwrap_or(bank_rows.div_ceil(patches));
    let images: Vec<RgbImage> = (0..n as u64).map(|i| image(side, 100 + i)).collect();
    let (model, _) = PatchCore::fit(config, backbone, &images, &mut |_| {}).expect("fit");
    model
}

fn image(side: u32, seed: u64) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    RgbImage::from_fn(side, side, |_, _| {
        image::Rgb([rng.random(), rng.random(), rng.random()])
    })
}

fn bench_predict(c: &mut Criterion) {
    let mut g = c.benchmark_group("predict_wrn50_2");
    g.sample_size(10);
    let full = PredictOptions { anomaly_map: true };
    let score_only = PredictOptions { anomaly_map: false };
    let cases: [(usize, usize, bool); 6] = [
        (224, 1_638, true),
        (224, 1_638, false),
        (320, 1_638, false),
        (448, 1_638, false),
        (224, 16_384, false),
        (224, 40_960, false),
    ];
    for (crop, rows, with_map) in cases {
        let m = model(crop, rows, None);
        let img = image((crop * 300 / 224) as u32, 3);
        let opts = if with_map { full } else { score_only };
        let what = if with_map { "full" } else { "score_only" };
        g.bench_with_input(
            BenchmarkId::new(format!("{crop}/bank{rows}"), what),
            &opts,
            |b, &opts| b.iter(|| black_box(m.predict(&img, opts).expect("predict"))),
        );
    }
    let mut m = model(224, 1_638, None);
    let img = image(300, 3);
    for precision in [Precision::Int8, Precision::Bf16] {
        m.set_precision(precision).expect("precision");
        g.bench_with_input(
            BenchmarkId::new(format!("224-{precision}/bank1638"), "full"),
            &full,
            |b, &opts| b.iter(|| black_box(m.predict(&img, opts).expect("predict"))),
        );
    }
    // int8 calibrated on 24 images rather than 3: fewer images exceed the ranges, and the
    // activations stay quantised between convolutions (`CHAIN_MIN_IMAGES`).
    let mut m = model(224, 1_638, Some(24));
    m.set_precision(Precision::Int8).expect("precision");
    g.bench_with_input(
        BenchmarkId::new("224-int8-fit24/bank1638", "full"),
        &full,
        |b, &opts| b.iter(|| black_box(m.predict(&img, opts).expect("predict"))),
    );
    g.finish();
}

criterion_group!(benches, bench_predict);
criterion_main!(benches);
