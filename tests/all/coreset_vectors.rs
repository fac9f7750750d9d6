//! Hand-computed coreset vectors (docs/algorithm.md §10 v6, v15), sizes, errors and the projection.

use ndarray::{Array2, ArrayView2};
use patchcore::coreset::{
    approximate_greedy_from, coreset_size, greedy_from, project, select, select_with_progress,
    subsample, CoresetConfig, CoresetSize, Sampler,
};
use patchcore::Error;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn line(points: &[f32]) -> Array2<f32> {
    Array2::from_shape_vec((points.len(), 1), points.to_vec()).unwrap()
}

#[test]
fn spec_v15_sizes() {
    assert_eq!(
        coreset_size(163_856, CoresetSize::Ratio(0.1)).unwrap(),
        16_385
    );
    assert_eq!(
        coreset_size(163_856, CoresetSize::Ratio(0.01)).unwrap(),
        1_638
    );
    // 100·0.29 = 28.999999999999996 in f64.
    assert_eq!(coreset_size(100, CoresetSize::Ratio(0.29)).unwrap(), 28);
    assert_eq!(coreset_size(5, CoresetSize::Ratio(0.6)).unwrap(), 3);
    assert_eq!(coreset_size(7, CoresetSize::Ratio(1.0)).unwrap(), 7);
    // Truncates to 0 → at least one row.
    assert_eq!(coreset_size(5, CoresetSize::Ratio(0.1)).unwrap(), 1);
    assert_eq!(coreset_size(5, CoresetSize::Count(5)).unwrap(), 5);
}

#[test]
fn size_errors() {
    for f in [0.0, -0.5, 1.0001, f64::NAN, f64::INFINITY] {
        match coreset_size(10, CoresetSize::Ratio(f)) {
            Err(Error::InvalidParameter { name, .. }) => assert_eq!(name, "coreset ratio"),
            other => panic!("ratio {f}: {other:?}"),
        }
    }
    assert!(matches!(
        coreset_size(10, CoresetSize::Count(0)),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        coreset_size(10, CoresetSize::Count(11)),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        coreset_size(0, CoresetSize::Ratio(0.5)),
        Err(Error::InvalidInput { .. })
    ));
    let cfg = CoresetConfig {
        sampler: Sampler::ApproximateGreedy { starts: 0 },
        ..CoresetConfig::default()
    };
    assert!(matches!(
        cfg.validate(),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(CoresetConfig::default().validate().is_ok());
}

#[test]
fn select_input_errors() {
    let cfg = CoresetConfig::default();
    let empty = Array2::<f32>::zeros((0, 4));
    assert!(matches!(
        select(empty.view(), &cfg),
        Err(Error::InvalidInput { .. })
    ));
    let no_cols = Array2::<f32>::zeros((4, 0));
    assert!(matches!(
        select(no_cols.view(), &cfg),
        Err(Error::InvalidInput { .. })
    ));
    let mut nan = Array2::<f32>::zeros((4, 3));
    nan[[2, 1]] = f32::NAN;
    match select(nan.view(), &cfg) {
        Err(Error::InvalidInput { reason }) => {
            assert!(reason.contains("row 2, column 1"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // Past the first 65,536 values, with a later one too, in a transposed (non-contiguous)
    // view as well: the first one in row-major order is reported.
    let mut big = Array2::<f32>::zeros((1_000, 100));
    big[[950, 3]] = f32::INFINITY;
    big[[900, 7]] = f32::NAN;
    big[[900, 9]] = f32::NEG_INFINITY;
    match select(big.view(), &cfg) {
        Err(Error::InvalidInput { reason }) => {
            assert!(reason.contains("row 900, column 7"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    match select(big.t(), &cfg) {
        Err(Error::InvalidInput { reason }) => {
            assert!(reason.contains("row 3, column 950"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let bank = line(&[0.0, 1.0]);
    let too_many = CoresetConfig {
        size: CoresetSize::Count(3),
        ..CoresetConfig::default()
    };
    assert!(matches!(
        select(bank.view(), &too_many),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(greedy_from(bank.view(), 2, 1).is_err());
    assert!(greedy_from(bank.view(), 0, 3).is_err());
    assert!(approximate_greedy_from(bank.view(), &[], 1).is_err());
    assert!(approximate_greedy_from(bank.view(), &[5], 1).is_err());
}

/// docs/algorithm.md §10 v6: points [0,1,2,3,10], f = 0.6 → k = 3.
#[test]
fn spec_v6_approximate_greedy_all_starts() {
    let z = line(&[0.0, 1.0, 2.0, 3.0, 10.0]);
    // Mean distances to all 5 points: [3.2, 2.6, 2.4, 2.6, 6.8] → emit 4 (10).
    // min with |z−10| = [10, 9, 8, 7, 0]: [3.2, 2.6, 2.4, 2.6, 0] → emit 0.
    // min with |z−0|  = [0, 1, 2, 3, 10]: [0, 1, 2, 2.6, 0]       → emit 3.
    let idx = approximate_greedy_from(z.view(), &[0, 1, 2, 3, 4], 3).unwrap();
    assert_eq!(idx, vec![4, 0, 3]);
    // Start order does not change the result here (sums of small integers ÷ 5).
    let idx = approximate_greedy_from(z.view(), &[3, 1, 4, 0, 2], 3).unwrap();
    assert_eq!(idx, vec![4, 0, 3]);
}

#[test]
fn spec_v6_greedy_forced_first() {
    let z = line(&[0.0, 1.0, 2.0, 3.0, 10.0]);
    // first 0: a = [·, 1, 2, 3, 10] → 4; a = min(a, [10, 9, 8, 7, 0]) = [·, 1, 2, 3, ·] → 3.
    assert_eq!(greedy_from(z.view(), 0, 3).unwrap(), vec![0, 4, 3]);
    // first 3: a = [3, 2, 1, ·, 7] → 4; a = [3, 2, 1, ·, ·] → 0.
    assert_eq!(greedy_from(z.view(), 3, 3).unwrap(), vec![3, 4, 0]);
    // first 4: a = [10, 9, 8, 7, ·] → 0; a = min(a, [·, 1, 2, 3]) = [·, 1, 2, 3] → 3.
    assert_eq!(greedy_from(z.view(), 4, 3).unwrap(), vec![4, 0, 3]);
    // Prefixes and the whole traversal: first 0 → 4 → 3 → then a = [·, 1, 1, ·, ·] → tie → 1.
    assert_eq!(greedy_from(z.view(), 0, 5).unwrap(), vec![0, 4, 3, 1, 2]);
    assert_eq!(greedy_from(z.view(), 0, 1).unwrap(), vec![0]);
    assert_eq!(greedy_from(z.view(), 0, 0).unwrap(), Vec::<usize>::new());
}

#[test]
fn greedy_ties_go_to_lowest_index() {
    // first 1 at 2: distances [2, ·, 2] → tie → 0, then 2.
    let z = line(&[0.0, 2.0, 4.0]);
    assert_eq!(greedy_from(z.view(), 1, 3).unwrap(), vec![1, 0, 2]);
    // 2-D square corners, first (1,1) at index 3: (0,0) is farthest; then (0,1) and (1,0) tie.
    let sq = Array2::from_shape_vec((4, 2), vec![0., 1., 1., 0., 0., 0., 1., 1.]).unwrap();
    assert_eq!(greedy_from(sq.view(), 3, 4).unwrap(), vec![3, 2, 0, 1]);
}

#[test]
fn duplicates_are_never_emitted_twice() {
    // Only two distinct points; every row must still be emitted exactly once.
    let z = line(&[5.0, 5.0, 1.0, 5.0, 1.0]);
    // first 1: a = [0, ·, 4, 0, 4] → 2; then all remaining keys 0 → lowest index 0, 3, 4.
    assert_eq!(greedy_from(z.view(), 1, 5).unwrap(), vec![1, 2, 0, 3, 4]);
    let a = approximate_greedy_from(z.view(), &[0], 5).unwrap();
    // keys = [0, 0, 4, 0, 4] → 2; then min(·, |z−1|) = [0,0,·,0,0] → 0, 1, 3, 4.
    assert_eq!(a, vec![2, 0, 1, 3, 4]);
}

#[test]
fn select_greedy_uses_seeded_first_and_no_projection_for_1d() {
    let z = line(&[0.0, 1.0, 2.0, 3.0, 10.0]);
    for seed in 0..20u64 {
        let cfg = CoresetConfig {
            size: CoresetSize::Ratio(0.6),
            seed,
            ..CoresetConfig::default()
        };
        let idx = select(z.view(), &cfg).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(1);
        let first: usize = rng.random_range(0..5);
        // Hand-traced traversals for each possible first row (D = 1 ≠ 128 → projected to 128-d
        // is a scaling of the line by a random vector w: |z_i − z_j|·|w|, same order).
        let expected = match first {
            0 => vec![0, 4, 3],
            1 => vec![1, 4, 3],
            2 => vec![2, 4, 0],
            3 => vec![3, 4, 0],
            4 => vec![4, 0, 3],
            _ => unreachable!(),
        };
        assert_eq!(idx, expected, "seed {seed}");
    }
}

#[test]
fn select_approximate_and_random_and_none() {
    let z = line(&[0.0, 1.0, 2.0, 3.0, 10.0]);
    let cfg = CoresetConfig {
        sampler: Sampler::ApproximateGreedy { starts: 10 },
        size: CoresetSize::Ratio(0.6),
        projection_dim: 0,
        seed: 3,
    };
    // 10 starts clamp to all 5 rows (in a shuffled order, which does not change the means).
    assert_eq!(select(z.view(), &cfg).unwrap(), vec![4, 0, 3]);

    let bank = Array2::from_shape_fn((50, 3), |(i, j)| (i * 3 + j) as f32);
    let random = CoresetConfig {
        sampler: Sampler::Random,
        size: CoresetSize::Count(7),
        ..CoresetConfig::default()
    };
    let idx = select(bank.view(), &random).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    rng.set_stream(1);
    assert_eq!(idx, rand::seq::index::sample(&mut rng, 50, 7).into_vec());
    let mut sorted = idx.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 7);

    let none = CoresetConfig {
        sampler: Sampler::None,
        ..CoresetConfig::default()
    };
    assert_eq!(
        select(bank.view(), &none).unwrap(),
        (0..50).collect::<Vec<_>>()
    );

    let rows = subsample(bank.view(), &random).unwrap();
    for (r, &i) in idx.iter().enumerate() {
        assert_eq!(rows.row(r), bank.row(i));
    }
}

fn naive_project(bank: ArrayView2<f32>, w: &[f32], dim: usize) -> Array2<f64> {
    let (n, d) = bank.dim();
    Array2::from_shape_fn((n, dim), |(i, r)| {
        (0..d)
            .map(|j| bank[[i, j]] as f64 * w[r * d + j] as f64)
            .sum()
    })
}

#[test]
fn projection_matches_seeded_uniform_matrix() {
    let (n, d, dim) = (37, 20, 6);
    let bank = Array2::from_shape_fn((n, d), |(i, j)| ((i * 13 + j * 7) % 17) as f32 - 8.0);
    let z = project(bank.view(), dim, 42).unwrap();
    // Independent draw of W: row-major dim × D from U(−1/√D, 1/√D) on stream 0.
    let bound = 1.0 / (d as f32).sqrt();
    let uniform = rand::distr::Uniform::new(-bound, bound).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let w: Vec<f32> = (0..dim * d).map(|_| rng.sample(uniform)).collect();
    let want = naive_project(bank.view(), &w, dim);
    for (a, b) in z.iter().zip(want.iter()) {
        assert!(
            (*a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()),
            "{a} vs {b}"
        );
    }
    // Other seed → other matrix.
    assert_ne!(project(bank.view(), dim, 43).unwrap(), z);
    // Non-contiguous input gives the same result.
    let t = bank.t().to_owned();
    assert_eq!(project(t.t(), dim, 42).unwrap(), z);
}

#[test]
fn projection_entries_are_bounded_and_uniform() {
    // Projecting the identity returns Wᵀ: check the range and the first two moments.
    let d = 256;
    let eye = Array2::<f32>::eye(d);
    let z = project(eye.view(), 64, 7).unwrap(); // z[j, r] = W[r, j]
    let bound = 1.0 / (d as f32).sqrt();
    assert!(z.iter().all(|v| v.abs() <= bound));
    let m = z.len() as f64;
    let mean = z.iter().map(|&v| v as f64).sum::<f64>() / m;
    let var = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / m;
    let want_var = (bound as f64).powi(2) / 3.0;
    assert!(mean.abs() < 0.02 * bound as f64, "mean {mean}");
    assert!(
        (var / want_var - 1.0).abs() < 0.03,
        "var {var} vs {want_var}"
    );
    assert!(matches!(
        project(eye.view(), 0, 7),
        Err(Error::InvalidParameter { .. })
    ));
}

#[test]
fn select_runs_greedy_on_the_projection() {
    let (n, d) = (300, 40);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let bank = Array2::from_shape_fn((n, d), |_| rng.random_range(-1.0f32..1.0));
    let cfg = CoresetConfig {
        size: CoresetSize::Ratio(0.1),
        projection_dim: 16,
        seed: 11,
        ..CoresetConfig::default()
    };
    let idx = select(bank.view(), &cfg).unwrap();
    let z = project(bank.view(), 16, 11).unwrap();
    let mut r = ChaCha8Rng::seed_from_u64(11);
    r.set_stream(1);
    let first = r.random_range(0..n);
    assert_eq!(idx, greedy_from(z.view(), first, 30).unwrap());
    // Without projection the traversal differs (on the raw 40-d rows).
    let raw = CoresetConfig {
        projection_dim: 0,
        ..cfg.clone()
    };
    assert_eq!(
        select(bank.view(), &raw).unwrap(),
        greedy_from(bank.view(), first, 30).unwrap()
    );
}

#[test]
fn progress_reports_every_pass_and_ends_at_the_total() {
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let bank = Array2::from_shape_fn((3_000, 24), |_| rng.random_range(-1.0f32..1.0));
    for sampler in [
        Sampler::Greedy,
        Sampler::APPROXIMATE_GREEDY_DEFAULT,
        Sampler::Random,
        Sampler::None,
    ] {
        let cfg = CoresetConfig {
            sampler,
            size: CoresetSize::Ratio(0.2),
            projection_dim: 16,
            seed: 4,
        };
        let mut calls = Vec::new();
        let idx = select_with_progress(bank.view(), &cfg, |done, total| calls.push((done, total)))
            .unwrap();
        assert_eq!(idx, select(bank.view(), &cfg).unwrap(), "{sampler:?}");
        let total = idx.len();
        assert_eq!(calls.last(), Some(&(total, total)), "{sampler:?}");
        assert!(calls.iter().all(|&(_, t)| t == total));
        assert!(
            calls.windows(2).all(|w| w[0].0 < w[1].0),
            "{sampler:?}: {calls:?}"
        );
        if matches!(sampler, Sampler::Greedy) {
            // 600 centres: several passes, each reported.
            assert!(calls.len() > 2, "{calls:?}");
        }
    }
    // A single-row coreset still reports its end.
    let cfg = CoresetConfig {
        size: CoresetSize::Count(1),
        ..CoresetConfig::default()
    };
    let mut calls = Vec::new();
    select_with_progress(bank.view(), &cfg, |d, t| calls.push((d, t))).unwrap();
    assert_eq!(calls, vec![(1, 1)]);
}
