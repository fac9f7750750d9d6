//! `BruteForce` block edges, scan groups and the f16 bank against a naive f64 search written
//! here (on the f16-rounded bank for `BankPrecision::F16`).

use half::f16;
use ndarray::Array2;
use patchcore::knn::{BankPrecision, BruteForce, NearestNeighbours};
use patchcore::Error;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> Array2<f32> {
    Array2::from_shape_fn((rows, cols), |_| rng.random_range(-1.0f32..1.0))
}

fn round_f16(a: &Array2<f32>) -> Array2<f32> {
    a.mapv(|v| f16::from_f32(v).to_f32())
}

/// Exact f64 squared distances of query `i` to every bank row, sorted (ties → lower index).
fn naive_sorted(q: &Array2<f32>, bank: &Array2<f32>, i: usize) -> Vec<(f64, usize)> {
    let mut all: Vec<(f64, usize)> = bank
        .rows()
        .into_iter()
        .enumerate()
        .map(|(j, b)| {
            let d = q
                .row(i)
                .iter()
                .zip(b.iter())
                .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
                .sum();
            (d, j)
        })
        .collect();
    all.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)));
    all
}

/// `index` (built from `bank` with `precision`) agrees with the naive search on the bank it
/// really holds: distances within 1e-4 relative, indices wherever there is no near-tie.
fn check(q: &Array2<f32>, bank: &Array2<f32>, k: usize, precision: BankPrecision) {
    let index = BruteForce::with_precision(bank.clone(), precision).unwrap();
    assert_eq!(index.precision(), precision);
    let held = match precision {
        BankPrecision::F32 => bank.clone(),
        BankPrecision::F16 => round_f16(bank),
    };
    assert!(index
        .bank()
        .iter()
        .zip(held.iter())
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    let nn = index.k_nearest(q.view(), k).unwrap();
    assert_eq!(nn.distances.dim(), (q.nrows(), k));
    for i in 0..q.nrows() {
        let want = naive_sorted(q, &held, i);
        for t in 0..k {
            let got = f64::from(nn.distances[[i, t]]);
            let (wd, wj) = want[t];
            let tol = 1e-4 * wd.max(1e-3);
            assert!((got - wd).abs() <= tol, "query {i} rank {t}: {got} vs {wd}");
            let before = if t > 0 {
                wd - want[t - 1].0
            } else {
                f64::INFINITY
            };
            let after = want.get(t + 1).map_or(f64::INFINITY, |n| n.0 - wd);
            if before.min(after) > tol {
                assert_eq!(nn.indices[[i, t]], wj, "query {i} rank {t}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Query counts around the scan group (64) and bank sizes around nothing special,
    /// k up to 9, both precisions.
    #[test]
    fn matches_naive_both_precisions(
        nq in 1usize..150,
        n in 9usize..200,
        d in 1usize..24,
        k in 1usize..10,
        f16_bank in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let q = random(nq, d, &mut rng);
        let bank = random(n, d, &mut rng);
        let p = if f16_bank { BankPrecision::F16 } else { BankPrecision::F32 };
        check(&q, &bank, k, p);
    }
}

/// Bank sizes at and around the 2048-row block, query counts around the 64-query scan group
/// and the 2048-query block, k = 9.
#[test]
fn block_edges() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    for (nq, n) in [(64, 2047), (65, 2048), (63, 2049), (2049, 40), (130, 4097)] {
        let q = random(nq, 5, &mut rng);
        let bank = random(n, 5, &mut rng);
        check(&q, &bank, 9, BankPrecision::F32);
        check(&q, &bank, 9, BankPrecision::F16);
    }
}

/// The f16 index of a bank equals the f32 index of the same bank rounded to f16: same
/// neighbours, bit-identical distances.
#[test]
fn f16_index_is_f32_index_of_rounded_bank() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let q = random(200, 33, &mut rng);
    let bank = random(2500, 33, &mut rng).mapv(|v| 3.0 * v);
    let a = BruteForce::with_precision(bank.clone(), BankPrecision::F16).unwrap();
    let b = BruteForce::new(round_f16(&bank)).unwrap();
    assert_eq!(a.bank_bytes() * 2, b.bank_bytes());
    for k in [1, 4] {
        assert_eq!(
            a.k_nearest(q.view(), k).unwrap(),
            b.k_nearest(q.view(), k).unwrap()
        );
    }
    let r = a.row(7).unwrap();
    assert_eq!(r.to_vec(), round_f16(&bank).row(7).to_vec());
    assert!(a.row(2500).is_none());
}

#[test]
fn f16_refuses_values_out_of_range() {
    let mut bank = Array2::<f32>::zeros((4, 3));
    bank[[2, 1]] = 70000.0;
    assert!(BruteForce::new(bank.clone()).is_ok());
    match BruteForce::with_precision(bank, BankPrecision::F16) {
        Err(Error::InvalidInput { reason }) => {
            assert!(
                reason.contains("row 2") && reason.contains("65504"),
                "{reason}"
            )
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

/// The index reuses its scratch between searches: a small search after a large one, and
/// searches running at the same time, give what a fresh index gives.
#[test]
fn scratch_reuse_and_concurrent_searches() {
    use rayon::prelude::*;
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let bank = random(2100, 16, &mut rng);
    let big = random(300, 16, &mut rng);
    let small = random(5, 16, &mut rng);
    for p in [BankPrecision::F32, BankPrecision::F16] {
        let fresh = |q: &Array2<f32>| {
            BruteForce::with_precision(bank.clone(), p)
                .unwrap()
                .k_nearest(q.view(), 3)
                .unwrap()
        };
        let index = BruteForce::with_precision(bank.clone(), p).unwrap();
        assert_eq!(index.k_nearest(big.view(), 3).unwrap(), fresh(&big));
        assert_eq!(index.k_nearest(small.view(), 3).unwrap(), fresh(&small));
        let want = fresh(&big);
        let got: Vec<_> = (0..6)
            .into_par_iter()
            .map(|_| index.k_nearest(big.view(), 3).unwrap())
            .collect();
        assert!(got.iter().all(|g| *g == want));
        check(&small, &bank, 3, p);
    }
}
