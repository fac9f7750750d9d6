//! Full backbone forward passes up to layer3 (PatchCore's deepest tap) at 224², in GFLOP/s
//! (criterion's elements/s with one element = one flop; convolution flops only, from
//! `ResNetSpec::flops`: WRN50-2 → layer3 = 18.37 GFLOP/image, ResNet-18 → layer3 = 2.81).
//!
//! Weights are seeded random (`Backbone::random`), so no download is needed; speed does not
//! depend on the weight values.
//!
//! Quick run: `cargo bench --bench backbone -- --sample-size 10 --warm-up-time 1 --measurement-time 5`
//! (add a filter such as `resnet18/1` to run one case).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::Array4;
use patchcore::backbone::{Backbone, Layer, ResNetSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;

fn bench_backbone(c: &mut Criterion) {
    let taps = [Layer::Layer2, Layer::Layer3];
    let mut group = c.benchmark_group("backbone_to_layer3_224");
    group.sample_size(10);
    for spec in [ResNetSpec::resnet18(), ResNetSpec::wide_resnet50_2()] {
        let net = Backbone::random(&spec, &taps, 0).expect("valid preset");
        let flops_per_image = spec.flops(Layer::Layer3, 224, 224);
        for batch in [1usize, 8] {
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let input = Array4::from_shape_simple_fn((batch, 3, 224, 224), || {
                rng.random_range(-2.0f32..2.0)
            });
            group.throughput(Throughput::Elements(flops_per_image * batch as u64));
            group.bench_with_input(
                BenchmarkId::new(spec.name.as_str(), batch),
                &input,
                |b, x| b.iter(|| black_box(net.forward(black_box(x.view())).expect("forward"))),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench_backbone);
criterion_main!(benches);
