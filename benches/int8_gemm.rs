//! The int8 product (`kernels::int8::gemm_u8i8`, activations packed on every call, as the
//! convolutions use it) against the f32 product of the same shape, on the im2col shapes of
//! Wide-ResNet-50-2 and ResNet-18 convolutions at 224² (`m` = output channels, `k` =
//! input channels × taps, `n` = output pixels). Throughput in multiply-adds per second.
//!
//! `cargo bench --bench int8_gemm -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use patchcore::kernels::gemm::{matmul, Parallelism};
use patchcore::kernels::int8::{gemm_u8i8, Int8Isa, PackedWeights};
use std::hint::black_box;

const SHAPES: [(usize, usize, usize); 6] = [
    (256, 512, 784),
    (256, 2304, 784),
    (1024, 512, 196),
    (512, 4608, 196),
    (128, 1152, 784),
    (64, 576, 3136),
];

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("int8_gemm");
    g.sample_size(20);
    for (m, k, n) in SHAPES {
        let id = format!("{m}x{k}x{n}");
        g.throughput(Throughput::Elements((m * k * n) as u64));
        let af: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let bf: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32).collect();
        let mut cf = vec![0.0f32; m * n];
        g.bench_function(BenchmarkId::new("f32", &id), |bch| {
            bch.iter(|| matmul(m, n, k, black_box(&af), black_box(&bf), &mut cf, false))
        });
        let a: Vec<i8> = (0..m * k).map(|i| (i % 255) as i8).collect();
        let b: Vec<u8> = (0..k * n).map(|i| (i % 256) as u8).collect();
        let w = PackedWeights::new(&a, m, k);
        let mut c32 = vec![0i32; m * n];
        let mut scratch = Vec::new();
        for isa in Int8Isa::all_available() {
            g.bench_function(BenchmarkId::new(isa.name(), &id), |bch| {
                bch.iter(|| {
                    gemm_u8i8(
                        &w,
                        black_box(&b),
                        n,
                        &mut c32,
                        &mut scratch,
                        Parallelism::Rayon,
                        isa,
                    )
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
