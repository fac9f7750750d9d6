//! Winograd F(2×2, 3×3) path of `Conv2d` against a naive f64 direct convolution written here,
//! against the im2col path on Wide-ResNet-50-2 shapes, and for thread-count independence.
//!
//! Tolerance of the proptest (first-order rounding analysis, u = 2⁻²⁴ the f32 unit roundoff,
//! inputs and weights in [-1, 1]). Each output is `y = Σ_{k∈S} ±M_k` over the 9 Winograd
//! points `S` its position uses, with `M_k = Σ_ci U_k(ci)·V_k(ci)`:
//! - `U = G·g·Gᵀ` is computed in f64 and rounded once (relative error ≤ u); the row sums of
//!   `|G|` are (1, 1.5, 1.5, 1), so `|U_k| ≤ r_i·r_j` with `Σ_{i∈rows(a)} r_i = 4`;
//! - `V = Bᵀ·d·B` takes two f32 add stages (≤ 2u relative to `|Bᵀ||d||B|`); every row of `|Bᵀ|`
//!   sums to 2, so `|V_k| ≤ 4`;
//! - the GEMM accumulates `cin` products (≤ cin·u relative to `Σ|U||V|`, any summation order);
//! - the output transform adds 2 stages of 3 terms and the epilogue 2 more additions.
//!
//! Hence `|Δy| ≤ (cin + 8)·u·Σ_{k∈S} Σ_ci |U_k||V_k| + 4u·(|y| + |b| + |r|)` with
//! `Σ_{k∈S} Σ_ci |U_k||V_k| ≤ cin·(Σ r_i)²·4 = 64·cin`. For cin = 40 that is ≈ 7e-3 while
//! outputs are O(5): a wrong tap, tile offset, padding or channel gives errors of O(0.1–1).
//!
//! F(4×4) the same way: row sums of `|G|` are (¼, ½, ½, 7/24, 7/24, 1), of `|Bᵀ|` (10, 10, 10,
//! 6, 6, 10), and `Aᵀ`'s largest row is |0 1 1 8 8 1|, so `Σ_{k∈S} Σ_ci |U_k||V_k| ≤ 48²·cin`;
//! the transforms take up to 4 rounding stages each, so `(cin + 16)·u·2304·cin`. That bound is
//! loose (≈0.25 for cin = 40), so the WRN-shape test below holds both variants to
//! 1e-4·max|ref| as well.

use patchcore::kernels::conv::{Conv2d, ConvAlgorithm};
use patchcore::kernels::gemm::Parallelism;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const U: f64 = 1.0 / (1u64 << 24) as f64;

fn random(len: usize, scale: f32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Direct 3×3 stride-1 pad-1 convolution in f64.
#[allow(clippy::too_many_arguments)]
fn naive(
    cout: usize,
    cin: usize,
    h: usize,
    w: usize,
    x: &[f32],
    wt: &[f32],
    bias: &[f32],
    res: Option<&[f32]>,
    relu: bool,
) -> Vec<f64> {
    let mut out = vec![0.0f64; cout * h * w];
    for co in 0..cout {
        for oy in 0..h {
            for ox in 0..w {
                let mut acc = f64::from(bias[co]);
                for ci in 0..cin {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = (oy + ky, ox + kx);
                            if iy < 1 || ix < 1 || iy > h || ix > w {
                                continue;
                            }
                            let xv = x[(ci * h + iy - 1) * w + ix - 1];
                            let wv = wt[((co * cin + ci) * 3 + ky) * 3 + kx];
                            acc += f64::from(xv) * f64::from(wv);
                        }
                    }
                }
                let idx = (co * h + oy) * w + ox;
                if let Some(r) = res {
                    acc += f64::from(r[idx]);
                }
                if relu {
                    acc = acc.max(0.0);
                }
                out[idx] = acc;
            }
        }
    }
    out
}

fn wino(conv: Conv2d, algo: ConvAlgorithm) -> Conv2d {
    let c = conv.with_algorithm(algo).unwrap();
    assert!(c.uses_winograd());
    c
}

#[allow(clippy::too_many_arguments)]
fn check_against_naive(
    algo: ConvAlgorithm,
    cout: usize,
    cin: usize,
    h: usize,
    w: usize,
    with_res: bool,
    relu: bool,
    seed: u64,
) -> std::result::Result<(), TestCaseError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = random(cin * h * w, 1.0, &mut rng);
    let wt = random(cout * cin * 9, 1.0, &mut rng);
    let bias = random(cout, 1.0, &mut rng);
    let res = with_res.then(|| random(cout * h * w, 1.0, &mut rng));
    let conv = wino(
        Conv2d::new(cout, cin, 3, 3, 1, 1, wt.clone(), bias.clone()),
        algo,
    );
    let want = naive(cout, cin, h, w, &x, &wt, &bias, res.as_deref(), relu);
    let n = cin as f64;
    let tol_dot = match algo {
        ConvAlgorithm::Winograd4x4 => (n + 16.0) * U * 2304.0 * n,
        _ => (n + 8.0) * U * 64.0 * n,
    };
    for par in [Parallelism::Sequential, Parallelism::Rayon] {
        // Exactly scratch_len elements, dirty: the kernel must overwrite what it reads.
        let mut scratch = vec![f32::NAN; conv.scratch_len(h, w)];
        let mut out = vec![f32::NAN; cout * h * w];
        conv.forward_image_with(&x, h, w, &mut out, res.as_deref(), relu, &mut scratch, par);
        prop_assert_eq!(scratch.len(), conv.scratch_len(h, w), "scratch grew");
        for (i, (&g, &r)) in out.iter().zip(&want).enumerate() {
            let co = i / (h * w);
            let extra = r.abs()
                + f64::from(bias[co]).abs()
                + res.as_ref().map_or(0.0, |v| f64::from(v[i]).abs());
            let tol = tol_dot + 4.0 * U * extra;
            prop_assert!(
                (f64::from(g) - r).abs() <= tol,
                "{:?} cout={} cin={} {}x{} res={} relu={} {:?}: element {}: got {}, want {}, \
                 tol {:e}",
                algo,
                cout,
                cin,
                h,
                w,
                with_res,
                relu,
                par,
                i,
                g,
                r,
                tol
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn winograd_matches_direct_convolution(
        cout in 1usize..40,
        cin in 1usize..40,
        h in 1usize..23,
        w in 1usize..23,
        with_res: bool,
        relu: bool,
        seed in 0u64..1000,
    ) {
        check_against_naive(ConvAlgorithm::Winograd, cout, cin, h, w, with_res, relu, seed)?;
    }

    #[test]
    fn winograd4x4_matches_direct_convolution(
        cout in 1usize..40,
        cin in 1usize..40,
        h in 1usize..23,
        w in 1usize..23,
        with_res: bool,
        relu: bool,
        seed in 0u64..1000,
    ) {
        check_against_naive(ConvAlgorithm::Winograd4x4, cout, cin, h, w, with_res, relu, seed)?;
    }
}

const WINOGRADS: [ConvAlgorithm; 2] = [ConvAlgorithm::Winograd, ConvAlgorithm::Winograd4x4];

#[test]
fn winograd_edge_shapes() {
    // Odd sizes, sizes below one tile, and rows/columns that need several transform chunks.
    for (h, w) in [
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
        (3, 5),
        (5, 3),
        (1, 37),
        (37, 1),
        (9, 70),
        (6, 131),
    ] {
        for algo in WINOGRADS {
            let seed = (h * 1000 + w) as u64;
            check_against_naive(algo, 3, 5, h, w, true, true, seed).unwrap();
            check_against_naive(algo, 5, 2, h, w, false, false, seed + 1).unwrap();
        }
    }
}

#[test]
fn winograd_and_im2col_agree_on_wrn_shapes() {
    // Weights at the scale of trained (He-initialised, BN-folded) layers; inputs like
    // post-ReLU activations. Tolerance: the backbone parity bound 1e-4·max|ref|.
    for (c, hw, res) in [
        (128usize, 56usize, false),
        (256, 28, true),
        (512, 14, false),
    ] {
        let mut rng = ChaCha8Rng::seed_from_u64(c as u64);
        let scale = (2.0 / (9.0 * c as f32)).sqrt() * 3f32.sqrt();
        let wt = random(c * c * 9, scale, &mut rng);
        let bias = random(c, 0.1, &mut rng);
        let x: Vec<f32> = random(c * hw * hw, 2.0, &mut rng)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect();
        let r = res.then(|| random(c * hw * hw, 1.0, &mut rng));
        let auto = Conv2d::new(c, c, 3, 3, 1, 1, wt, bias);
        assert!(
            auto.uses_winograd(),
            "Auto should pick Winograd for {c} channels"
        );
        let im2col = auto.clone().with_algorithm(ConvAlgorithm::Im2col).unwrap();
        assert!(!im2col.uses_winograd());
        let mut scratch = Vec::new();
        let mut want = vec![0.0; c * hw * hw];
        im2col.forward_image(&x, hw, hw, &mut want, r.as_deref(), true, &mut scratch);
        let max_ref = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(max_ref > 1.0, "degenerate reference");
        for algo in WINOGRADS {
            let conv = auto.clone().with_algorithm(algo).unwrap();
            let mut got = vec![0.0; c * hw * hw];
            conv.forward_image(&x, hw, hw, &mut got, r.as_deref(), true, &mut scratch);
            let max_err = got
                .iter()
                .zip(&want)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            eprintln!(
                "{algo:?} {c} ch @ {hw}²: max|Δ|/max|ref| = {:.2e}",
                max_err / max_ref
            );
            assert!(
                max_err <= 1e-4 * max_ref,
                "{algo:?} {c} ch @ {hw}²: max|Δ| = {max_err} > 1e-4·{max_ref}"
            );
        }
    }
}

#[test]
fn winograd_is_bit_identical_with_one_and_two_threads() {
    let (c, hw) = (64usize, 30usize);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let base = Conv2d::new(
        c,
        c,
        3,
        3,
        1,
        1,
        random(c * c * 9, 0.1, &mut rng),
        random(c, 0.1, &mut rng),
    );
    let x = random(c * hw * hw, 1.0, &mut rng);
    for algo in WINOGRADS {
        let conv = wino(base.clone(), algo);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    let mut out = vec![0.0; c * hw * hw];
                    conv.forward_image(&x, hw, hw, &mut out, None, true, &mut Vec::new());
                    out
                })
        };
        let (one, two) = (run(1), run(2));
        assert!(
            one.iter()
                .zip(&two)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{algo:?}"
        );
    }
}

#[test]
fn algorithm_selection() {
    let conv = |cout, cin, k, s, p| {
        Conv2d::new(
            cout,
            cin,
            k,
            k,
            s,
            p,
            vec![0.5; cout * cin * k * k],
            vec![0.0; cout],
        )
    };
    assert!(conv(64, 64, 3, 1, 1).uses_winograd());
    // Stride 2 is covered by tests/kernels_winograd_s2.rs.
    assert!(!conv(64, 64, 3, 3, 1).uses_winograd());
    assert!(!conv(64, 64, 1, 1, 0).uses_winograd());
    assert!(!conv(4, 4, 3, 1, 1).uses_winograd());
    assert_eq!(conv(64, 64, 3, 1, 1).algorithm(), ConvAlgorithm::Auto);
    // Auto: F(2×2) from 8 channels up, im2col below.
    assert_eq!(conv(64, 64, 3, 1, 1).winograd_tile(56, 56), Some(2));
    assert_eq!(conv(8, 8, 3, 1, 1).winograd_tile(14, 14), Some(2));
    assert_eq!(conv(7, 8, 3, 1, 1).winograd_tile(56, 56), None);
    assert!(conv(64, 64, 3, 2, 1)
        .with_algorithm(ConvAlgorithm::Winograd4x4)
        .is_err());
    for algo in WINOGRADS {
        assert!(conv(64, 64, 3, 3, 1).with_algorithm(algo).is_err());
        assert!(conv(64, 64, 3, 1, 0).with_algorithm(algo).is_err());
        assert!(conv(64, 64, 5, 1, 2).with_algorithm(algo).is_err());
    }
    let c = conv(64, 64, 3, 1, 1);
    let f2 = c.clone().with_algorithm(ConvAlgorithm::Winograd).unwrap();
    assert_eq!(f2.scratch_len(5, 6), 16 * 3 * 3 * 128);
    let f4 = c
        .clone()
        .with_algorithm(ConvAlgorithm::Winograd4x4)
        .unwrap();
    assert_eq!(f4.scratch_len(5, 9), 36 * 2 * 3 * 128);
    let c = c.with_algorithm(ConvAlgorithm::Im2col).unwrap();
    assert_eq!(c.scratch_len(5, 6), 64 * 9 * 30);
}
