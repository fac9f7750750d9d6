//! Pixel AUROC and AUPRO on a bottle-sized test set: 83 images × 224² (≈ 4.2 M pixels).

use criterion::{criterion_group, criterion_main, Criterion};
use ndarray::Array2;
use patchcore::metrics::{aupro, pixel_auroc, AuproConfig, AuproVariant};
use patchcore::segmentation::{connected_components, contours, Connectivity};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const IMAGES: usize = 83;
const SIDE: usize = 224;

/// Smooth-ish maps with a few blob defects on 63 of the 83 images; defect pixels score higher.
fn data() -> (Vec<Array2<bool>>, Vec<Array2<f32>>) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut masks = Vec::with_capacity(IMAGES);
    let mut maps = Vec::with_capacity(IMAGES);
    for i in 0..IMAGES {
        let mut m = Array2::from_elem((SIDE, SIDE), false);
        if i >= 20 {
            for _ in 0..rng.random_range(1..4) {
                let (cy, cx) = (rng.random_range(20..204), rng.random_range(20..204));
                let r: f32 = rng.random_range(3.0..18.0);
                for y in 0..SIDE {
                    for x in 0..SIDE {
                        let d = ((y as f32 - cy as f32).powi(2) + (x as f32 - cx as f32).powi(2))
                            .sqrt();
                        if d <= r {
                            m[[y, x]] = true;
                        }
                    }
                }
            }
        }
        let a = Array2::from_shape_fn((SIDE, SIDE), |(y, x)| {
            let base: f32 = rng.random_range(0.0..1.0);
            if m[[y, x]] {
                base + 0.8
            } else {
                base
            }
        });
        masks.push(m);
        maps.push(a);
    }
    (masks, maps)
}

fn bench(c: &mut Criterion) {
    let (masks, maps) = data();
    let mv: Vec<_> = masks.iter().map(|m| m.view()).collect();
    let av: Vec<_> = maps.iter().map(|m| m.view()).collect();
    let mut g = c.benchmark_group("metrics_83x224x224");
    g.bench_function("pixel_auroc", |b| b.iter(|| pixel_auroc(&mv, &av).unwrap()));
    g.bench_function("aupro_mvtec_reference", |b| {
        b.iter(|| aupro(&mv, &av, &AuproConfig::default()).unwrap())
    });
    let exact = AuproConfig {
        variant: AuproVariant::ExactStep,
        ..AuproConfig::default()
    };
    g.bench_function("aupro_exact_step", |b| {
        b.iter(|| aupro(&mv, &av, &exact).unwrap())
    });
    g.finish();
    let mut g = c.benchmark_group("segmentation_224");
    let m = &masks[IMAGES - 1];
    g.bench_function("connected_components", |b| {
        b.iter(|| connected_components(m.view(), Connectivity::Eight))
    });
    g.bench_function("contours", |b| b.iter(|| contours(m.view())));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
