//! bf16 matrix products ([`gemm_bf16`], every available isa) against the f32 product
//! ([`gemm`]) on the im2col shapes of the WRN-50-2 and ResNet-18 convolutions at 224², on a
//! rayon pool of 2 threads.
//!
//! Quick run: `cargo bench --bench bf16_gemm -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use patchcore::kernels::bf16::{gemm_bf16, Bf16Isa, PackedBf16Weights};
use patchcore::kernels::gemm::{gemm, Backend, MatRef, Parallelism};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn bench(c: &mut Criterion) {
    // (m, k, n) = (cout, cin·kh·kw, oh·ow).
    let shapes = [
        (256usize, 512usize, 784usize),
        (256, 2304, 784),
        (512, 256, 784),
        (1024, 512, 196),
        (512, 4608, 196),
        (512, 1024, 196),
        (1024, 256, 196),
        (128, 1152, 784),
        (256, 2304, 196),
        (64, 576, 3136),
    ];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("rayon pool");
    let mut g = c.benchmark_group("bf16_gemm");
    for &(m, k, n) in &shapes {
        let a = random(m * k, 1);
        let b = random(k * n, 2);
        let mut out = vec![0.0; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        let shape = format!("{m}x{k}x{n}");
        g.bench_function(BenchmarkId::new("f32", &shape), |bch| {
            pool.install(|| {
                bch.iter(|| {
                    gemm(
                        MatRef::row_major(black_box(&a), m, k),
                        MatRef::row_major(&b, k, n),
                        &mut out,
                        n,
                        false,
                        Parallelism::Rayon,
                        Backend::Default,
                    )
                })
            })
        });
        let w = PackedBf16Weights::new(&a, m, k);
        let mut scratch = Vec::new();
        for isa in Bf16Isa::all_available() {
            g.bench_function(BenchmarkId::new(isa.name(), &shape), |bch| {
                pool.install(|| {
                    bch.iter(|| {
                        gemm_bf16(
                            &w,
                            black_box(&b),
                            n,
                            &mut out,
                            &mut scratch,
                            Parallelism::Rayon,
                            isa,
                        )
                    })
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
