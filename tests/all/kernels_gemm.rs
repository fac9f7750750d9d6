//! GEMM backends against a naive triple loop (in f64) and against each other.
//!
//! Tolerance: the backends accumulate in f32 with blocked, FMA-based summation orders that
//! differ from the naive loop, so results agree only up to rounding: with inputs in [-1, 1]
//! the error of a length-k dot product is bounded by about k·ε·Σ|a·b| ≤ k²·ε; we use
//! |Δ| ≤ 1e-5·(1 + k) · (1 + |ref|) against the f64 reference.

use patchcore::kernels::gemm::{
    gemm, matmul, matmul_bt, matmul_bt_seq, matmul_bt_with, matmul_seq, matmul_with, Backend,
    MatRef, Parallelism,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Naive `c0 (+) a·b` in f64, `a` m×k and `b` k×n row-major.
fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c0: Option<&[f32]>) -> Vec<f64> {
    let mut c = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = c0.map_or(0.0, |c0| f64::from(c0[i * n + j]));
            for p in 0..k {
                s += f64::from(a[i * k + p]) * f64::from(b[p * n + j]);
            }
            c[i * n + j] = s;
        }
    }
    c
}

fn transpose(rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
    let mut t = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = x[r * cols + c];
        }
    }
    t
}

fn assert_close(got: &[f32], want: &[f64], k: usize, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let tol = 1e-5 * (1.0 + k as f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

const BACKENDS: [Backend; 2] = [Backend::Default, Backend::MatrixMultiply];
const PARS: [Parallelism; 2] = [Parallelism::Sequential, Parallelism::Rayon];

fn check_all(m: usize, n: usize, k: usize, seed: u64) {
    let a = random(m * k, seed);
    let b = random(k * n, seed + 1);
    let c0 = random(m * n, seed + 2);
    let bt = transpose(k, n, &b);
    let want = naive(m, n, k, &a, &b, None);
    let want_acc = naive(m, n, k, &a, &b, Some(&c0));
    let mut by_backend = Vec::new();
    for backend in BACKENDS {
        for par in PARS {
            let what = format!("{m}x{n}x{k} {backend:?} {par:?}");
            let mut c = vec![f32::NAN; m * n];
            matmul_with(m, n, k, &a, &b, &mut c, false, par, backend);
            assert_close(&c, &want, k, &format!("matmul {what}"));
            by_backend.push(c);
            let mut c = c0.clone();
            matmul_with(m, n, k, &a, &b, &mut c, true, par, backend);
            assert_close(&c, &want_acc, k, &format!("matmul acc {what}"));
            let mut c = vec![f32::NAN; m * n];
            matmul_bt_with(m, n, k, &a, &bt, &mut c, false, par, backend);
            assert_close(&c, &want, k, &format!("matmul_bt {what}"));
            let mut c = c0.clone();
            matmul_bt_with(m, n, k, &a, &bt, &mut c, true, par, backend);
            assert_close(&c, &want_acc, k, &format!("matmul_bt acc {what}"));
        }
    }
    // The default backend against the matrixmultiply oracle directly.
    let tol = 1e-5 * (1.0 + k as f32);
    for (x, y) in by_backend[0].iter().zip(&by_backend[2]) {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{x} vs {y}");
    }
    // The plain entry points.
    let mut c = vec![f32::NAN; m * n];
    matmul(m, n, k, &a, &b, &mut c, false);
    assert_close(&c, &want, k, "matmul plain");
    let mut c = vec![f32::NAN; m * n];
    matmul_seq(m, n, k, &a, &b, &mut c, false);
    assert_close(&c, &want, k, "matmul_seq");
    let mut c = vec![f32::NAN; m * n];
    matmul_bt(m, n, k, &a, &bt, &mut c, false);
    assert_close(&c, &want, k, "matmul_bt plain");
    let mut c = c0.clone();
    matmul_bt_seq(m, n, k, &a, &bt, &mut c, true);
    assert_close(&c, &want_acc, k, "matmul_bt_seq acc");
}

#[test]
fn edge_sizes() {
    let sizes = [0usize, 1, 2, 3, 7, 13, 17, 31];
    let mut seed = 0;
    for &m in &sizes {
        for &n in &sizes {
            for &k in &[0usize, 1, 5, 17, 33] {
                seed += 3;
                check_all(m, n, k, seed);
            }
        }
    }
}

#[test]
fn large_parallel_sizes() {
    // Above the parallel threshold, with prime and non-multiple-of-kernel sizes.
    check_all(257, 131, 67, 100);
    check_all(64, 3136, 64, 101);
    check_all(509, 37, 1031, 102);
    check_all(1, 1000, 300, 103);
    check_all(1000, 1, 300, 104);
}

#[test]
fn k_zero_overwrites_or_keeps() {
    let mut c = vec![f32::NAN; 6];
    matmul(2, 3, 0, &[], &[], &mut c, false);
    assert_eq!(c, vec![0.0; 6]);
    let mut c = vec![5.0; 6];
    matmul(2, 3, 0, &[], &[], &mut c, true);
    assert_eq!(c, vec![5.0; 6]);
}

#[test]
fn strided_views_and_ldc() {
    // a is a 5×4 window of a 9×11 buffer, b the transpose of a 6×4 window; c has ldc = 8.
    let (m, n, k) = (5, 6, 4);
    let abuf = random(9 * 11, 7);
    let bbuf = random(10 * 13, 8);
    let a = MatRef {
        data: &abuf[2 * 11 + 3..],
        rows: m,
        cols: k,
        row_stride: 11,
        col_stride: 2,
    };
    let bt = MatRef {
        data: &bbuf[13 + 1..],
        rows: n,
        cols: k,
        row_stride: 13,
        col_stride: 1,
    };
    let dense_a: Vec<f32> = (0..m * k)
        .map(|x| a.data[(x / k) * 11 + (x % k) * 2])
        .collect();
    let dense_b: Vec<f32> = (0..k * n).map(|x| bt.data[(x % n) * 13 + x / n]).collect();
    let want = naive(m, n, k, &dense_a, &dense_b, None);
    for backend in BACKENDS {
        for par in PARS {
            let mut c = vec![-7.0f32; (m - 1) * 8 + n];
            gemm(a, bt.t(), &mut c, 8, false, par, backend);
            let got: Vec<f32> = (0..m * n).map(|x| c[(x / n) * 8 + x % n]).collect();
            assert_close(&got, &want, k, "strided");
            // Padding columns between rows are untouched.
            for i in 0..m - 1 {
                assert!(c[i * 8 + n..i * 8 + 8].iter().all(|&v| v == -7.0));
            }
        }
    }
}

#[test]
#[should_panic(expected = "inner dimensions differ")]
fn mismatched_inner_dimension_panics() {
    let a = [0.0; 6];
    let b = [0.0; 6];
    let mut c = [0.0; 4];
    gemm(
        MatRef::row_major(&a, 2, 3),
        MatRef::row_major(&b, 2, 3),
        &mut c,
        2,
        false,
        Parallelism::Sequential,
        Backend::Default,
    );
}

#[test]
#[should_panic(expected = "c has")]
fn short_c_panics() {
    let mut c = [0.0; 3];
    matmul(2, 2, 2, &[0.0; 4], &[0.0; 4], &mut c, false);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_shapes_match_naive(m in 0usize..70, n in 0usize..70, k in 0usize..70, seed in 0u64..1000) {
        check_all(m, n, k, seed * 7);
    }
}
