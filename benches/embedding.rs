//! Embedding of one WRN-50-2 image at 224² (layer2 512×28², layer3 1024×14², random maps):
//! closed-form fast path vs generic ORIG construction, and the Average aggregator.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ndarray::Array4;
use patchcore::embedding::{embed, embed_closed_form, embed_generic, Aggregator};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_map(rng: &mut ChaCha8Rng, shape: (usize, usize, usize, usize)) -> Array4<f32> {
    Array4::from_shape_simple_fn(shape, || (rng.random::<f32>() * 2.0 - 0.5).max(0.0))
}

fn bench_embedding(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let l2 = random_map(&mut rng, (1, 512, 28, 28));
    let l3 = random_map(&mut rng, (1, 1024, 14, 14));
    let layers = [l2.view(), l3.view()];
    let orig = Aggregator::default();
    let avg = Aggregator::Average {
        patch_size: 3,
        target_dim: None,
    };
    let mut g = c.benchmark_group("embedding_wrn50_224_1img");
    g.bench_function("orig_fast", |b| {
        b.iter(|| embed_closed_form(black_box(&layers), &orig).unwrap())
    });
    g.bench_function("orig_generic", |b| {
        b.iter(|| embed_generic(black_box(&layers), &orig).unwrap())
    });
    g.bench_function("average_1536", |b| {
        b.iter(|| embed(black_box(&layers), &avg).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench_embedding);
criterion_main!(benches);
