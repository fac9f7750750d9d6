//! The accelerated traversal against the plain one (its definition): one full pass over the
//! bank per emitted row, exactly as the sampler is specified.

use ndarray::{Array2, CowArray, Ix2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::blocked::Blocked;
use super::greedy::{mean_to_starts, rows_of, traverse, Stats, EMITTED};
use super::pass::{Rows, BLOCK_ROWS};
use super::topk::beats;
use crate::kernels::distance::dist;

/// The plain pass: `a_i ← min(a_i, Δ(z_i, c))` for every row, returning the farthest row.
fn fold_center(z: &Rows, c: &[f32], a: &mut [f32]) -> (f32, usize) {
    let d = z.d;
    a.par_chunks_mut(BLOCK_ROWS)
        .zip(z.data.par_chunks(BLOCK_ROWS * d))
        .enumerate()
        .map(|(b, (ab, zb))| {
            let mut best = (f32::NEG_INFINITY, usize::MAX);
            for (i, (ai, row)) in ab.iter_mut().zip(zb.chunks_exact(d)).enumerate() {
                let delta = dist(row, c);
                if delta < *ai {
                    *ai = delta;
                }
                if beats((*ai, b * BLOCK_ROWS + i), best) {
                    best = (*ai, b * BLOCK_ROWS + i);
                }
            }
            best
        })
        .reduce(
            || (f32::NEG_INFINITY, usize::MAX),
            |p, q| if beats(q, p) { q } else { p },
        )
}

fn plain_traverse(z: &Rows, a: &mut [f32], first: Option<usize>, k: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut next = first.unwrap_or_else(|| {
        (0..z.n).fold(usize::MAX, |b, i| {
            if b == usize::MAX || beats((a[i], i), (a[b], b)) {
                i
            } else {
                b
            }
        })
    });
    while out.len() < k {
        out.push(next);
        a[next] = EMITTED;
        if out.len() == k {
            break;
        }
        next = fold_center(z, z.row(next), a).1;
    }
    out
}

/// Runs both traversals (greedy from `first`, and approximate greedy from `starts`) and
/// asserts identical sequences and identical final keys. Returns the accelerated stats.
fn compare(bank: &Array2<f32>, first: usize, starts: &[usize], k: usize) -> (Stats, Stats) {
    let cow: CowArray<f32, Ix2> = CowArray::from(bank.view());
    let z = rows_of(&cow, "test").unwrap();
    let zb = Blocked::from_rows(&z);
    let n = z.n;

    let mut a_fast = vec![f32::INFINITY; n];
    let mut fast = Vec::new();
    let s_greedy = traverse(
        &zb,
        &mut a_fast,
        Some(first),
        k,
        &mut fast,
        &mut Vec::new(),
        &mut |_, _| {},
    );
    let mut a_plain = vec![f32::INFINITY; n];
    let plain = plain_traverse(&z, &mut a_plain, Some(first), k);
    assert_eq!(fast, plain, "greedy from {first}, k {k}");
    // With the row-major rows kept beside the blocks (the in-memory fit): the same run.
    let zr = Blocked::from_owned_rows(z.data.to_vec(), n, z.d);
    let mut a_rows = vec![f32::INFINITY; n];
    let mut with_rows = Vec::new();
    let s_rows = traverse(
        &zr,
        &mut a_rows,
        Some(first),
        k,
        &mut with_rows,
        &mut Vec::new(),
        &mut |_, _| {},
    );
    assert_eq!(with_rows, fast);
    assert_eq!(s_rows.work, s_greedy.work);
    let bits = |a: &[f32]| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a_rows), bits(&a_fast));

    let start_rows: Vec<f32> = starts.iter().flat_map(|&s| z.row(s).to_vec()).collect();
    let mut a_fast = vec![0.0; n];
    mean_to_starts(&zb, &start_rows, starts.len(), &mut a_fast);
    // The initial keys by their definition: the f32 sum of distances in start order.
    for (i, &got) in a_fast.iter().enumerate() {
        let mut sum = 0.0f32;
        for &s in starts {
            sum += dist(z.row(i), z.row(s));
        }
        assert_eq!(
            got.to_bits(),
            (sum / starts.len() as f32).to_bits(),
            "row {i}"
        );
    }
    let mut a_plain = a_fast.clone();
    let mut fast = Vec::new();
    let s_approx = traverse(
        &zb,
        &mut a_fast,
        None,
        k,
        &mut fast,
        &mut Vec::new(),
        &mut |_, _| {},
    );
    let plain = plain_traverse(&z, &mut a_plain, None, k);
    assert_eq!(fast, plain, "approximate greedy from {starts:?}, k {k}");
    (s_greedy, s_approx)
}

fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    // Box–Muller; the exact distribution does not matter.
    let u: f32 = rng.random_range(f32::EPSILON..1.0);
    let v: f32 = rng.random_range(0.0..1.0);
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

/// `n` rows in `d` dims around `blobs` centres (spread 10, radius ~0.3·√d); a fraction of
/// the rows are exact copies of earlier rows.
fn blobs(n: usize, d: usize, blobs: usize, dup_every: usize, seed: u64) -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<f32> = (0..blobs * d)
        .map(|_| rng.random_range(-10.0f32..10.0))
        .collect();
    let mut data = vec![0.0f32; n * d];
    for i in 0..n {
        if dup_every > 0 && i > 0 && i % dup_every == 0 {
            let j = rng.random_range(0..i);
            data.copy_within(j * d..(j + 1) * d, i * d);
            continue;
        }
        let c = rng.random_range(0..blobs);
        let scale = 0.05 + 0.3 * (c % 4) as f32;
        for t in 0..d {
            data[i * d + t] = centres[c * d + t] + scale * gaussian(&mut rng);
        }
    }
    Array2::from_shape_vec((n, d), data).unwrap()
}

#[test]
fn uniform_random_matches_plain() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let bank = Array2::from_shape_fn((20_000, 40), |_| rng.random_range(-1.0f32..1.0));
    let k = 600;
    let (g, _) = compare(&bank, 12_345, &[3, 19_999, 8_000, 7, 1_024], k);
    assert!(
        g.passes * 10 < k,
        "the candidate list should batch many centres per pass"
    );
}

#[test]
fn gaussian_blobs_with_duplicates_match_plain_and_prune() {
    let bank = blobs(20_000, 24, 60, 7, 5);
    let k = 2_000;
    let (g, _) = compare(&bank, 77, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], k);
    assert!(
        g.work.pruned > g.work.computed,
        "the triangle inequality should skip most distances on clustered data: {g:?}"
    );
}

#[test]
fn heavy_duplicates_and_ties_match_plain_to_the_end() {
    // 4,000 rows over only 600 distinct integer vectors: exact ties everywhere, and k = N runs
    // through the phase where every remaining key is 0.
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let distinct = Array2::from_shape_fn((600, 6), |_| rng.random_range(-2i32..=2) as f32);
    let bank = Array2::from_shape_fn((4_000, 6), |(i, j)| {
        distinct[[((i * 7919) % 600 + i / 600) % 600, j]]
    });
    for k in [1, 2, 599, 600, 601, 1_500, 4_000] {
        compare(&bank, 3_999, &[5, 6, 600, 1200], k);
    }
    // Blobs quantised to a coarse grid: clustered, with many exact duplicates and equal keys.
    let q = blobs(12_000, 8, 30, 0, 9).mapv(|v| (v * 2.0).round() / 2.0);
    compare(&q, 0, &[1, 2, 3], 3_000);
}

#[test]
fn tiny_and_degenerate_banks_match_plain() {
    // Fewer rows than the candidate list, a single row, all rows equal, one dimension.
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for (n, d) in [
        (1usize, 1usize),
        (2, 3),
        (50, 1),
        (95, 2),
        (96, 2),
        (97, 2),
        (98, 2),
        (300, 17),
    ] {
        let bank = Array2::from_shape_fn((n, d), |_| rng.random_range(-3i32..=3) as f32);
        for k in [1, n / 2, n] {
            if k >= 1 {
                compare(&bank, n - 1, &[0], k);
            }
        }
    }
    let same = Array2::from_elem((500, 4), 1.5f32);
    compare(&same, 250, &[1, 2], 500);
}

#[test]
fn pruned_and_batched_traversal_is_identical_on_one_and_two_threads() {
    let bank = blobs(6_000, 12, 40, 5, 13);
    let cow: CowArray<f32, Ix2> = CowArray::from(bank.view());
    let z = rows_of(&cow, "threads").unwrap();
    let zb = Blocked::from_rows(&z);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut a = vec![f32::INFINITY; z.n];
            let mut out = Vec::new();
            let s = traverse(
                &zb,
                &mut a,
                Some(5),
                1_500,
                &mut out,
                &mut Vec::new(),
                &mut |_, _| {},
            );
            (out, a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), s)
        })
    };
    let (o1, a1, s1) = run(1);
    let (o2, a2, s2) = run(2);
    assert_eq!(o1, o2);
    assert_eq!(a1, a2);
    assert_eq!(s1.work, s2.work);
    assert!(s1.work.pruned > 0);
}
