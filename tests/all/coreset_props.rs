//! Property tests of the coreset samplers against a naive reimplementation, and determinism
//! across thread pools.

use ndarray::{Array2, ArrayView2};
use patchcore::coreset::{
    approximate_greedy_from, coreset_size, greedy_from, select, CoresetConfig, CoresetSize, Sampler,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Euclidean distance, plain left-to-right sum. On integer-valued data every partial sum is
/// exact, so this agrees bit-for-bit with any summation order (and ties are frequent, which
/// exercises the lowest-index rule).
fn dist(z: ArrayView2<f32>, i: usize, j: usize) -> f32 {
    z.row(i)
        .iter()
        .zip(z.row(j).iter())
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f32>()
        .sqrt()
}

/// Naive O(N·k) farthest-first: `keys` are the initial keys, `emitted` rows already chosen.
fn naive_traverse(
    z: ArrayView2<f32>,
    mut keys: Vec<f32>,
    mut out: Vec<usize>,
    k: usize,
) -> Vec<usize> {
    let n = z.nrows();
    while out.len() < k {
        // argmax over rows not yet emitted, ties → lowest index.
        let mut best: Option<usize> = None;
        for i in 0..n {
            if out.contains(&i) {
                continue;
            }
            if best.is_none_or(|b| keys[i] > keys[b]) {
                best = Some(i);
            }
        }
        let s = best.unwrap();
        out.push(s);
        for (i, key) in keys.iter_mut().enumerate() {
            *key = key.min(dist(z, i, s));
        }
    }
    out
}

fn naive_greedy(z: ArrayView2<f32>, first: usize, k: usize) -> Vec<usize> {
    if k == 0 {
        return vec![];
    }
    let keys = (0..z.nrows()).map(|i| dist(z, i, first)).collect();
    naive_traverse(z, keys, vec![first], k)
}

fn naive_approx(z: ArrayView2<f32>, starts: &[usize], k: usize) -> Vec<usize> {
    let keys = (0..z.nrows())
        .map(|i| {
            let mut s = 0.0f32;
            for &j in starts {
                s += dist(z, i, j);
            }
            s / starts.len() as f32
        })
        .collect();
    naive_traverse(z, keys, vec![], k)
}

fn coverage_radius(z: ArrayView2<f32>, centers: &[usize]) -> f32 {
    (0..z.nrows())
        .map(|i| {
            centers
                .iter()
                .map(|&c| dist(z, i, c))
                .fold(f32::INFINITY, f32::min)
        })
        .fold(0.0, f32::max)
}

/// Integer-valued banks: N ∈ [1, 40], d ∈ [1, 20], values in [−4, 4].
fn int_bank() -> impl Strategy<Value = Array2<f32>> {
    (1usize..40, 1usize..20).prop_flat_map(|(n, d)| {
        proptest::collection::vec(-4i32..=4, n * d).prop_map(move |v| {
            Array2::from_shape_vec((n, d), v.into_iter().map(|x| x as f32).collect()).unwrap()
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn greedy_equals_naive(z in int_bank(), first_seed in any::<u64>(), f in 0.01f64..=1.0) {
        let n = z.nrows();
        let first = (first_seed % n as u64) as usize;
        let k = coreset_size(n, CoresetSize::Ratio(f)).unwrap();
        prop_assert_eq!(k, ((n as f64 * f) as usize).max(1));
        let got = greedy_from(z.view(), first, k).unwrap();
        prop_assert_eq!(&got, &naive_greedy(z.view(), first, k));
        // unique, in range, starts at `first`
        let mut s = got.clone();
        s.sort_unstable();
        s.dedup();
        prop_assert_eq!(s.len(), k);
        prop_assert!(got.iter().all(|&i| i < n));
        prop_assert_eq!(got[0], first);
    }

    #[test]
    fn approx_equals_naive(z in int_bank(), seed in any::<u64>(), starts in 1usize..12, f in 0.01f64..=1.0) {
        let n = z.nrows();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let st = rand::seq::index::sample(&mut rng, n, starts.min(n)).into_vec();
        let k = coreset_size(n, CoresetSize::Ratio(f)).unwrap();
        let got = approximate_greedy_from(z.view(), &st, k).unwrap();
        prop_assert_eq!(&got, &naive_approx(z.view(), &st, k));
    }

    #[test]
    fn prefix_and_coverage_monotone(z in int_bank(), first_seed in any::<u64>()) {
        let n = z.nrows();
        let first = (first_seed % n as u64) as usize;
        let all = greedy_from(z.view(), first, n).unwrap();
        let mut last = f32::INFINITY;
        for k in 1..=n {
            let part = greedy_from(z.view(), first, k).unwrap();
            prop_assert_eq!(&part[..], &all[..k]);
            let r = coverage_radius(z.view(), &part);
            prop_assert!(r <= last, "radius grew from {} to {} at k = {}", last, r, k);
            last = r;
        }
        prop_assert_eq!(last, 0.0);
        // Farthest-first: the k-th pick's distance to the first k−1 picks is exactly the
        // coverage radius of those k−1 picks.
        for k in 2..=n {
            let r = coverage_radius(z.view(), &all[..k - 1]);
            let key = all[..k - 1].iter().map(|&c| dist(z.view(), all[k - 1], c)).fold(f32::INFINITY, f32::min);
            prop_assert_eq!(key, r);
        }
    }

    #[test]
    fn select_invariants(
        n in 1usize..120,
        d in 1usize..24,
        data_seed in any::<u64>(),
        seed in any::<u64>(),
        f in 0.01f64..=1.0,
        dim in 0usize..10,
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(data_seed);
        let bank = Array2::from_shape_fn((n, d), |_| rng.random_range(-1.0f32..1.0));
        let cfg = CoresetConfig { size: CoresetSize::Ratio(f), projection_dim: dim, seed, ..CoresetConfig::default() };
        let idx = select(bank.view(), &cfg).unwrap();
        prop_assert_eq!(idx.len(), ((n as f64 * f) as usize).max(1));
        let mut s = idx.clone();
        s.sort_unstable();
        s.dedup();
        prop_assert_eq!(s.len(), idx.len());
        prop_assert!(idx.iter().all(|&i| i < n));
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        r.set_stream(1);
        prop_assert_eq!(idx[0], r.random_range(0..n));
        prop_assert_eq!(&idx, &select(bank.view(), &cfg).unwrap());
        for sampler in [Sampler::ApproximateGreedy { starts: 10 }, Sampler::Random] {
            let c = CoresetConfig { sampler, ..cfg.clone() };
            let idx = select(bank.view(), &c).unwrap();
            let mut s = idx.clone();
            s.sort_unstable();
            s.dedup();
            prop_assert_eq!(s.len(), ((n as f64 * f) as usize).max(1));
            prop_assert!(idx.iter().all(|&i| i < n));
        }
    }
}

/// Bank large enough to span many parallel blocks (blocks are 2048 rows).
fn big_bank() -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    Array2::from_shape_fn((9_000, 48), |_| rng.random_range(-1.0f32..1.0))
}

#[test]
fn identical_on_one_and_two_threads() {
    let bank = big_bank();
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let two = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for sampler in [Sampler::Greedy, Sampler::ApproximateGreedy { starts: 10 }] {
        let cfg = CoresetConfig {
            sampler,
            size: CoresetSize::Ratio(0.02),
            projection_dim: 16,
            seed: 1234,
        };
        let a = one.install(|| select(bank.view(), &cfg).unwrap());
        let b = two.install(|| select(bank.view(), &cfg).unwrap());
        let c = select(bank.view(), &cfg).unwrap();
        assert_eq!(a.len(), 180);
        assert_eq!(a, b, "{sampler:?}");
        assert_eq!(a, c, "{sampler:?}");
    }
}

#[test]
fn large_bank_matches_naive_on_integer_data() {
    // Spans several parallel blocks; integer data makes the naive distances bit-identical.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let z = Array2::from_shape_fn((5_000, 20), |_| rng.random_range(-3i32..=3) as f32);
    let got = greedy_from(z.view(), 4321, 40).unwrap();
    assert_eq!(got, naive_greedy(z.view(), 4321, 40));
    let got = approximate_greedy_from(z.view(), &[17, 4999, 2048, 3], 40).unwrap();
    assert_eq!(got, naive_approx(z.view(), &[17, 4999, 2048, 3], 40));
}

#[test]
fn different_seeds_usually_differ() {
    let bank = big_bank();
    let firsts: std::collections::HashSet<usize> = (0..8u64)
        .map(|seed| {
            let cfg = CoresetConfig {
                size: CoresetSize::Count(1),
                projection_dim: 8,
                seed,
                ..CoresetConfig::default()
            };
            select(bank.view(), &cfg).unwrap()[0]
        })
        .collect();
    // 8 uniform draws out of 9,000: a collision has probability < 0.4 %.
    assert!(firsts.len() >= 7, "{firsts:?}");
}
