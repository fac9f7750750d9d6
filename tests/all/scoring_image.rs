//! Patch and image scores against docs/algorithm.md §10 vector 8 and a brute-force reimplementation of the
//! paper's Eq. 7 written here in f64.

use ndarray::{array, Array2};
use patchcore::knn::{BruteForce, NearestNeighbours};
use patchcore::scoring::{image_score, patch_scores, Distance, ScoringConfig};
use patchcore::Error;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn cfg(k: usize, b: usize, distance: Distance) -> ScoringConfig {
    ScoringConfig {
        k,
        reweight_neighbours: b,
        distance,
    }
}

#[test]
fn vector_8_reweighting() {
    // q* = 0, bank {1, 2, 3} on a line: m* = 1, N_3(m*) = {1, 2, 3}, d = [1, 2, 3], s* = 1.
    let bank = BruteForce::new(array![[2.0f32], [3.0], [1.0]]).unwrap();
    let queries = array![[0.5f32], [0.0], [1.5]];
    let c = cfg(1, 3, Distance::Euclidean);
    let nn = bank.k_nearest(queries.view(), 1).unwrap();
    let scores = patch_scores(&nn, c.distance);
    assert_eq!(scores, vec![0.5, 1.0, 0.5]);
    let s = image_score(&scores, queries.view(), &bank, &c).unwrap();
    assert_eq!(s.patch, 1);
    assert!((s.weight - 0.909_969).abs() < 1e-6, "{}", s.weight);
    assert!((s.score - 0.909_969).abs() < 1e-6, "{}", s.score);
}

#[test]
fn b_one_is_the_plain_maximum() {
    let bank = BruteForce::new(array![[0.0f32, 0.0], [1.0, 0.0]]).unwrap();
    let queries = array![[0.0f32, 3.0], [5.0, 0.0], [0.5, 0.0]];
    for distance in [Distance::Euclidean, Distance::SquaredL2] {
        let c = cfg(1, 1, distance);
        let nn = bank.k_nearest(queries.view(), 1).unwrap();
        let scores = patch_scores(&nn, distance);
        let s = image_score(&scores, queries.view(), &bank, &c).unwrap();
        let want = match distance {
            Distance::Euclidean => 4.0,
            Distance::SquaredL2 => 16.0,
        };
        assert_eq!((s.patch, s.score, s.weight), (1, want, 1.0));
    }
    // A one-row bank cannot re-weight: plain maximum.
    let one = BruteForce::new(array![[0.0f32, 0.0]]).unwrap();
    let s = image_score(
        &[1.0, 2.0],
        array![[0.0f32, 1.0], [0.0, 2.0]].view(),
        &one,
        &cfg(1, 9, Distance::Euclidean),
    )
    .unwrap();
    assert_eq!((s.patch, s.score, s.weight), (1, 2.0, 1.0));
}

#[test]
fn patch_scores_average_k_distances() {
    // Squared distances from the origin to (1,0),(0,2),(3,0): 1, 4, 9.
    let bank = BruteForce::new(array![[3.0f32, 0.0], [1.0, 0.0], [0.0, 2.0]]).unwrap();
    let nn = bank.k_nearest(array![[0.0f32, 0.0]].view(), 3).unwrap();
    assert_eq!(patch_scores(&nn, Distance::SquaredL2), vec![14.0 / 3.0]);
    assert_eq!(patch_scores(&nn, Distance::Euclidean), vec![2.0]);
}

fn dist64(a: ndarray::ArrayView1<f32>, b: ndarray::ArrayView1<f32>) -> f64 {
    a.iter()
        .zip(b.iter())
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Eq. 7 from scratch: naive 1-NN distances, sort, softmax in f64.
fn naive_reweighted(q: &Array2<f32>, bank: &Array2<f32>, b: usize) -> (usize, f64, f64) {
    let nn1: Vec<(f64, usize)> = q
        .rows()
        .into_iter()
        .map(|r| {
            bank.rows()
                .into_iter()
                .enumerate()
                .map(|(j, m)| (dist64(r, m), j))
                .min_by(|a, b| a.0.partial_cmp(&b.0).unwrap())
                .unwrap()
        })
        .collect();
    let (patch, &(s_star, m_star)) = nn1
        .iter()
        .enumerate()
        .max_by(|a, b| a.1 .0.partial_cmp(&b.1 .0).unwrap())
        .unwrap();
    let mut around: Vec<(f64, usize)> = bank
        .rows()
        .into_iter()
        .enumerate()
        .map(|(j, m)| (dist64(bank.row(m_star), m), j))
        .collect();
    around.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let b = b.min(bank.nrows());
    let d: Vec<f64> = around[..b]
        .iter()
        .map(|&(_, j)| dist64(q.row(patch), bank.row(j)))
        .collect();
    let denom: f64 = d.iter().map(|v| v.exp()).sum();
    let w = 1.0 - d[0].exp() / denom;
    (patch, w, w * s_star)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn reweighting_matches_naive(
        nq in 1usize..30,
        n in 2usize..60,
        d in 1usize..16,
        b in 2usize..12,
        seed in any::<u64>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let q = Array2::from_shape_fn((nq, d), |_| rng.random_range(-1.0f32..1.0));
        let bank_arr = Array2::from_shape_fn((n, d), |_| rng.random_range(-1.0f32..1.0));
        let bank = BruteForce::new(bank_arr.clone()).unwrap();
        let c = cfg(1, b, Distance::Euclidean);
        let nn = bank.k_nearest(q.view(), 1).unwrap();
        let scores = patch_scores(&nn, c.distance);
        let got = image_score(&scores, q.view(), &bank, &c).unwrap();
        let (patch, w, s) = naive_reweighted(&q, &bank_arr, b);
        prop_assert_eq!(got.patch, patch);
        prop_assert!((f64::from(got.weight) - w).abs() < 1e-5, "w {} vs {}", got.weight, w);
        prop_assert!((f64::from(got.score) - s).abs() < 1e-5 * (1.0 + s), "s {} vs {}", got.score, s);
    }
}

#[test]
fn invalid_configuration_and_input() {
    let bank = BruteForce::new(array![[0.0f32, 0.0], [1.0, 0.0]]).unwrap();
    let q = array![[0.0f32, 3.0]];
    assert!(matches!(
        image_score(&[3.0], q.view(), &bank, &cfg(0, 1, Distance::Euclidean)),
        Err(Error::InvalidParameter { name: "k", .. })
    ));
    assert!(matches!(
        image_score(&[3.0], q.view(), &bank, &cfg(1, 0, Distance::Euclidean)),
        Err(Error::InvalidParameter {
            name: "reweight_neighbours",
            ..
        })
    ));
    let ok = ScoringConfig::default();
    assert!(ok.validate().is_ok());
    assert!(matches!(
        image_score(&[], q.view(), &bank, &ok),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        image_score(&[1.0, 2.0], q.view(), &bank, &ok),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        image_score(&[f32::NAN], q.view(), &bank, &ok),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        image_score(&[1.0], array![[0.0f32, 3.0, 1.0]].view(), &bank, &ok),
        Err(Error::InvalidInput { .. })
    ));
}
