//! k-NN search of one image's patches (784 × 1024, WRN50 at 224) against memory banks of
//! 1,638 (1 % of 163,856) and 16,384 (10 %) rows, with the bank stored in f32 and in f16.
//! faiss IndexFlatL2 (exact, 2 threads) on the 2-core development machine: 15.0 ms and 137 ms.
//! `bank…` runs the default search (bf16 screening + exact rerank on AVX512-BF16 CPUs),
//! `bank…_noscreen` the f32 GEMM path.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ndarray::Array2;
use patchcore::knn::{BankPrecision, BruteForce, NearestNeighbours};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;

fn bench_knn(c: &mut Criterion) {
    let d = 1024;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let queries = Array2::from_shape_fn((784, d), |_| rng.random_range(0.0f32..1.0));
    let mut group = c.benchmark_group("knn_784x1024");
    group.sample_size(10);
    for n in [1_638usize, 16_384] {
        let bank = Array2::from_shape_fn((n, d), |_| rng.random_range(0.0f32..1.0));
        for (precision, tag) in [(BankPrecision::F32, ""), (BankPrecision::F16, "_f16")] {
            let index = BruteForce::with_precision(bank.clone(), precision).expect("bank");
            for k in [1usize, 3] {
                group.bench_with_input(
                    BenchmarkId::new(format!("bank{n}{tag}"), format!("k{k}")),
                    &k,
                    |b, &k| b.iter(|| black_box(index.k_nearest(queries.view(), k).expect("knn"))),
                );
            }
        }
        // The f32 GEMM path alone (bf16 screening switched off; same as above on CPUs
        // without AVX512-BF16).
        let index = BruteForce::new(bank.clone())
            .expect("bank")
            .with_screening(false);
        for k in [1usize, 3] {
            group.bench_with_input(
                BenchmarkId::new(format!("bank{n}_noscreen"), format!("k{k}")),
                &k,
                |b, &k| b.iter(|| black_box(index.k_nearest(queries.view(), k).expect("knn"))),
            );
        }
    }
    // Worst case for the screen: every bank row identical, so every query has all rows as
    // candidates and falls back to the f32 path (the cost of trying the screen first).
    let same = Array2::from_elem((1_638, d), 0.5f32);
    for (on, tag) in [(true, ""), (false, "_noscreen")] {
        let index = BruteForce::new(same.clone())
            .expect("bank")
            .with_screening(on);
        group.bench_function(format!("identical1638{tag}/k1"), |b| {
            b.iter(|| black_box(index.k_nearest(queries.view(), 1).expect("knn")))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_knn);
criterion_main!(benches);
