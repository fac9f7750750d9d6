//! `BruteForce` k-NN against naive exact distance loops written here (f64), plus faiss
//! semantics (docs/algorithm.md §10 vector 7), thread-count independence and typed errors.

use ndarray::{array, Array2};
use patchcore::knn::{BruteForce, NearestNeighbours};
use patchcore::scoring::{patch_scores, Distance};
use patchcore::Error;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> Array2<f32> {
    Array2::from_shape_fn((rows, cols), |_| rng.random_range(-1.0f32..1.0))
}

/// All bank rows sorted by exact squared distance (f64), ties → lower index.
fn naive_sorted(q: &Array2<f32>, bank: &Array2<f32>, i: usize) -> Vec<(f64, usize)> {
    let mut all: Vec<(f64, usize)> = bank
        .rows()
        .into_iter()
        .enumerate()
        .map(|(j, b)| {
            let d: f64 = q
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

fn check_against_naive(q: &Array2<f32>, bank: &Array2<f32>, k: usize) {
    let index = BruteForce::new(bank.clone()).unwrap();
    let nn = index.k_nearest(q.view(), k).unwrap();
    assert_eq!(nn.distances.dim(), (q.nrows(), k));
    assert_eq!(nn.indices.dim(), (q.nrows(), k));
    for i in 0..q.nrows() {
        let want = naive_sorted(q, bank, i);
        for t in 0..k {
            let got_d = f64::from(nn.distances[[i, t]]);
            let (want_d, want_j) = want[t];
            assert!(
                (got_d - want_d).abs() <= 1e-4 * want_d.max(1e-3),
                "query {i} rank {t}: distance {got_d} vs {want_d}"
            );
            if t > 0 {
                assert!(
                    nn.distances[[i, t]] >= nn.distances[[i, t - 1]],
                    "not ascending"
                );
            }
            // Compare indices only where the neighbour is separated from its neighbours in
            // the ranking (no near-ties).
            let gap_before = if t > 0 {
                want_d - want[t - 1].0
            } else {
                f64::INFINITY
            };
            let gap_after = want[t + 1..]
                .first()
                .map_or(f64::INFINITY, |n| n.0 - want_d);
            if gap_before.min(gap_after) > 1e-4 * want_d.max(1e-3) {
                assert_eq!(nn.indices[[i, t]], want_j, "query {i} rank {t}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn matches_naive_search(
        nq in 1usize..40,
        n in 9usize..120,
        d in 1usize..40,
        k in prop::sample::select(vec![1usize, 3, 9]),
        seed in any::<u64>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let q = random(nq, d, &mut rng);
        let bank = random(n, d, &mut rng);
        check_against_naive(&q, &bank, k);
    }
}

#[test]
fn many_blocks_match_naive_search() {
    // Crosses several query blocks (128) and bank blocks (2048).
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let q = random(300, 12, &mut rng);
    let bank = random(4500, 12, &mut rng);
    check_against_naive(&q, &bank, 3);
}

#[test]
fn result_does_not_depend_on_thread_count() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let q = random(400, 24, &mut rng);
    let bank = BruteForce::new(random(2500, 24, &mut rng)).unwrap();
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| bank.k_nearest(q.view(), 5).unwrap())
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

#[test]
fn ties_go_to_the_lower_index() {
    let bank = BruteForce::new(array![[1.0f32, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]]).unwrap();
    let nn = bank.k_nearest(array![[0.0f32, 0.0]].view(), 4).unwrap();
    assert_eq!(nn.indices.row(0).to_vec(), vec![0, 1, 2, 3]);
    let nn = bank.k_nearest(array![[1.0f32, 0.0]].view(), 2).unwrap();
    assert_eq!(nn.indices.row(0).to_vec(), vec![0, 3]);
    assert_eq!(nn.distances.row(0).to_vec(), vec![0.0, 0.0]);
}

#[test]
fn vector_7_faiss_semantics() {
    let bank = BruteForce::new(array![[3.0f32, 4.0]]).unwrap();
    let nn = bank.k_nearest(array![[0.0f32, 0.0]].view(), 1).unwrap();
    assert_eq!(nn.distances[[0, 0]], 25.0);
    assert_eq!(patch_scores(&nn, Distance::SquaredL2), vec![25.0]);
    assert_eq!(patch_scores(&nn, Distance::Euclidean), vec![5.0]);
}

#[test]
fn self_query_distance_is_zero() {
    // Large norms: the GEMM identity alone would leave rounding noise.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let bank = random(200, 64, &mut rng).mapv(|v| 100.0 + v);
    let index = BruteForce::new(bank.clone()).unwrap();
    let nn = index.k_nearest(bank.view(), 1).unwrap();
    for i in 0..200 {
        assert_eq!(nn.indices[[i, 0]], i);
        assert_eq!(nn.distances[[i, 0]], 0.0);
    }
}

#[test]
fn non_contiguous_queries() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let q = random(10, 6, &mut rng);
    let bank = random(30, 6, &mut rng);
    let index = BruteForce::new(bank.clone()).unwrap();
    let qt = q.t().to_owned();
    let a = index.k_nearest(qt.t(), 3).unwrap();
    let b = index.k_nearest(q.view(), 3).unwrap();
    assert_eq!(a, b);
    check_against_naive(&q, &bank, 3);
}

#[test]
fn bad_input_is_a_typed_error() {
    let bank = BruteForce::new(array![[0.0f32, 0.0], [1.0, 1.0]]).unwrap();
    let q = array![[0.5f32, 0.5]];
    assert!(matches!(
        bank.k_nearest(q.view(), 0),
        Err(Error::InvalidParameter { name: "k", .. })
    ));
    assert!(matches!(
        bank.k_nearest(q.view(), 3),
        Err(Error::InvalidParameter { name: "k", .. })
    ));
    assert!(matches!(
        bank.k_nearest(array![[0.5f32, 0.5, 0.5]].view(), 1),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        bank.k_nearest(array![[0.5f32, f32::NAN]].view(), 1),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        bank.k_nearest(array![[0.5f32, f32::INFINITY]].view(), 1),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        BruteForce::new(Array2::<f32>::zeros((0, 4))),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        BruteForce::new(array![[0.0f32, f32::NAN]]),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        BruteForce::new(array![[3e38f32, 3e38]]),
        Err(Error::InvalidInput { .. })
    ));
    // No queries is fine.
    let nn = bank
        .k_nearest(Array2::<f32>::zeros((0, 2)).view(), 2)
        .unwrap();
    assert_eq!(nn.distances.dim(), (0, 2));
    assert_eq!((bank.len(), bank.dim()), (2, 2));
}

#[test]
fn an_index_built_without_screening_holds_none_and_agrees_with_naive() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let q = random(40, 64, &mut rng);
    let bank = random(900, 64, &mut rng);
    let index = BruteForce::new_screened(bank.clone(), false).unwrap();
    assert!(!index.screening());
    assert_eq!(index.screening_bytes(), 0);
    let nn = index.k_nearest(q.view(), 1).unwrap();
    for i in 0..q.nrows() {
        let (want_d, want_j) = naive_sorted(&q, &bank, i)[0];
        let got = f64::from(nn.distances[[i, 0]]);
        assert!(
            (got - want_d).abs() <= 1e-4 * want_d.max(1e-3),
            "{got} {want_d}"
        );
        assert_eq!(nn.indices[[i, 0]], want_j);
    }
    // Turned on afterwards, it screens where the CPU can (as `new` does).
    let on = index.with_screening(true);
    assert_eq!(on.screening(), BruteForce::new(bank).unwrap().screening());
}
