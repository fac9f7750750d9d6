//! Coreset selection benches.
//!
//! `selection/*`: greedy on pre-projected 163,840 × 128 rows (no projection: D == 128), the hot
//! loop alone; uniform random rows (no pruning possible: every distance is computed), and
//! `*_blobs`: rows around 400 Gaussian clusters (the triangle inequality skips most distances). `full/*`: projection 1024 → 128 plus greedy (dominated by the matrix product).
//!
//! Quick run: `cargo bench --bench coreset -- selection --sample-size 10`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ndarray::Array2;
use patchcore::coreset::{select, CoresetConfig, CoresetSize, Sampler};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const N: usize = 163_840;

fn random_bank(n: usize, d: usize, seed: u64) -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_fn((n, d), |_| rng.random_range(-1.0f32..1.0))
}

/// `n` rows around 400 centres drawn from `U(−1, 1)^d`, with per-cluster spreads 0.02–0.08.
fn blob_bank(n: usize, d: usize, seed: u64) -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres = Array2::from_shape_fn((400, d), |_| rng.random_range(-1.0f32..1.0));
    let mut bank = Array2::zeros((n, d));
    for mut row in bank.rows_mut() {
        let c = rng.random_range(0..400);
        let spread = 0.02 * (1 + c % 4) as f32;
        for (v, &m) in row.iter_mut().zip(centres.row(c)) {
            // Sum of 4 uniforms: roughly Gaussian, enough for a benchmark.
            let g: f32 = (0..4).map(|_| rng.random_range(-1.0f32..1.0)).sum();
            *v = m + spread * g;
        }
    }
    bank
}

fn bench_selection(c: &mut Criterion) {
    let bank = random_bank(N, 128, 1);
    let mut g = c.benchmark_group("selection");
    g.sample_size(10);
    // 11 centres: the fixed costs of a call (input check, first passes while the candidate
    // list is still short-lived; 3 passes on this data). Named after the plain traversal's
    // 10 passes.
    let cfg = CoresetConfig {
        size: CoresetSize::Count(11),
        ..CoresetConfig::default()
    };
    g.bench_with_input(
        BenchmarkId::new("greedy_10passes", "163840x128"),
        &cfg,
        |b, cfg| b.iter(|| select(bank.view(), cfg).unwrap()),
    );
    for (name, sampler) in [
        ("greedy", Sampler::Greedy),
        ("approx", Sampler::ApproximateGreedy { starts: 10 }),
    ] {
        for pct in [1u32, 10] {
            let cfg = CoresetConfig {
                sampler,
                size: CoresetSize::Ratio(pct as f64 / 100.0),
                projection_dim: 128,
                seed: 0,
            };
            g.bench_with_input(
                BenchmarkId::new(format!("{name}_{pct}pct"), "163840x128"),
                &cfg,
                |b, cfg| b.iter(|| select(bank.view(), cfg).unwrap()),
            );
        }
    }
    let blobs = blob_bank(N, 128, 3);
    for (name, sampler) in [
        ("greedy", Sampler::Greedy),
        ("approx", Sampler::ApproximateGreedy { starts: 10 }),
    ] {
        for pct in [1u32, 10] {
            let cfg = CoresetConfig {
                sampler,
                size: CoresetSize::Ratio(pct as f64 / 100.0),
                projection_dim: 128,
                seed: 0,
            };
            g.bench_with_input(
                BenchmarkId::new(format!("{name}_{pct}pct_blobs"), "163840x128"),
                &cfg,
                |b, cfg| b.iter(|| select(blobs.view(), cfg).unwrap()),
            );
        }
    }
    g.finish();
}

fn bench_full(c: &mut Criterion) {
    let bank = random_bank(N, 1024, 2);
    let mut g = c.benchmark_group("full");
    g.sample_size(10);
    for pct in [1u32, 10] {
        let cfg = CoresetConfig {
            size: CoresetSize::Ratio(pct as f64 / 100.0),
            ..CoresetConfig::default()
        };
        g.bench_with_input(
            BenchmarkId::new(format!("greedy_{pct}pct"), "163840x1024"),
            &cfg,
            |b, cfg| b.iter(|| select(bank.view(), cfg).unwrap()),
        );
    }
    g.finish();
}

criterion_group!(benches, bench_selection, bench_full);
criterion_main!(benches);
