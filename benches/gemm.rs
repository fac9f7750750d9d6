//! GEMM throughput (GFLOP/s = Gelem/s as reported, one element = one flop).
//!
//! Quick run: `cargo bench --bench gemm -- --sample-size 10 --warm-up-time 1 --measurement-time 2`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use patchcore::kernels::gemm::{matmul_bt_with, matmul_with, Backend, Parallelism};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn bench(c: &mut Criterion) {
    // (m, n, k): square sizes, conv-like shapes (cout × pixels × cin·k²), a k-NN-like a·bᵀ.
    let sizes = [
        (256usize, 256usize, 256usize),
        (1024, 1024, 1024),
        (128, 3136, 1152),
        (512, 196, 4608),
        (1024, 196, 512),
    ];
    let mut g = c.benchmark_group("matmul");
    for &(m, n, k) in &sizes {
        let a = random(m * k, 1);
        let b = random(k * n, 2);
        let mut out = vec![0.0; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        for (name, backend) in [
            ("default", Backend::Default),
            ("mm", Backend::MatrixMultiply),
        ] {
            for (pname, par) in [
                ("seq", Parallelism::Sequential),
                ("par", Parallelism::Rayon),
            ] {
                let id = BenchmarkId::new(format!("{name}/{pname}"), format!("{m}x{n}x{k}"));
                g.bench_function(id, |bch| {
                    bch.iter(|| {
                        matmul_with(m, n, k, black_box(&a), &b, &mut out, false, par, backend)
                    })
                });
            }
        }
    }
    g.finish();

    let mut g = c.benchmark_group("matmul_bt");
    let (m, n, k) = (784usize, 4096usize, 512usize);
    let a = random(m * k, 3);
    let b = random(n * k, 4);
    let mut out = vec![0.0; m * n];
    g.throughput(Throughput::Elements((2 * m * n * k) as u64));
    for (name, backend) in [
        ("default", Backend::Default),
        ("mm", Backend::MatrixMultiply),
    ] {
        g.bench_function(BenchmarkId::new(name, format!("{m}x{n}x{k}")), |bch| {
            bch.iter(|| {
                matmul_bt_with(
                    m,
                    n,
                    k,
                    black_box(&a),
                    &b,
                    &mut out,
                    false,
                    Parallelism::Rayon,
                    backend,
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
