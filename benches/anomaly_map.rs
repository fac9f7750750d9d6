//! Anomaly map of one image: 28×28 patch scores → 224×224, bilinear + Gaussian σ = 4
//! (33 taps, scipy 'reflect'), and nearest + the same blur.

use criterion::{criterion_group, criterion_main, Criterion};
use patchcore::anomaly_map::{anomaly_map, resize_map, MapConfig, Upsample};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;

fn bench_map(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let scores: Vec<f32> = (0..28 * 28)
        .map(|_| rng.random_range(0.0f32..5.0))
        .collect();
    let bilinear = MapConfig::default();
    let nearest = MapConfig {
        upsample: Upsample::Nearest,
        ..MapConfig::default()
    };
    c.bench_function("anomaly_map_28_to_224_bilinear_sigma4", |b| {
        b.iter(|| black_box(anomaly_map(&scores, 28, 28, 224, 224, &bilinear).expect("map")))
    });
    c.bench_function("anomaly_map_28_to_224_nearest_sigma4", |b| {
        b.iter(|| black_box(anomaly_map(&scores, 28, 28, 224, 224, &nearest).expect("map")))
    });
    let map = anomaly_map(&scores, 28, 28, 224, 224, &bilinear).expect("map");
    c.bench_function("resize_map_224_to_1024", |b| {
        b.iter(|| black_box(resize_map(map.view(), 1024, 1024).expect("resize")))
    });
}

criterion_group!(benches, bench_map);
criterion_main!(benches);
