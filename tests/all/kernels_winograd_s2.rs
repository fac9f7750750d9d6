//! The stride-2 Winograd-style path of `Conv2d` (3×3, stride 2, pad 1: polyphase split +
//! F(2, 2), module `conv::winograd_s2`) against a naive f64 direct stride-2 convolution
//! written here, against the im2col path on Wide-ResNet-50-2 and ResNet-18 shapes, and for
//! thread-count independence.
//!
//! Tolerance of the proptest (first-order rounding analysis, u = 2⁻²⁴ the f32 unit roundoff,
//! inputs, weights, bias and residual in [-1, 1]). Along one axis the transforms are
//! `d = Bᵀx = [x0 − x2, x2, x4 − x2, x1, x3]`, `f = G·w = [w0, w0 + w2, w2, w1, w1]` and
//! `y = Aᵀm` with `y0 = m0 + m1 + m3`, `y1 = m1 + m2 + m4`; in 2-D each output is
//! `y = Σ_{k∈S} M_k` over the 3×3 = 9 points `S` its position uses, with
//! `M_k = Σ_ci U_k(ci)·V_k(ci)`:
//! - `U = G·g·Gᵀ` is computed in f64 and rounded once (relative error ≤ u); the row sums of
//!   `|G|` are `r = (1, 2, 1, 1, 1)`, so `|U_ij| ≤ r_i·r_j`;
//! - `V = Bᵀ·d·B` takes two stages of at most one subtraction (≤ 2u relative to
//!   `|Bᵀ||d||B|`); the row sums of `|Bᵀ|` are `b = (2, 1, 2, 1, 1)`, so `|V_ij| ≤ b_i·b_j`;
//! - the GEMM accumulates `cin` products (≤ cin·u relative to `Σ|U||V|`, any order);
//! - the output transform adds 2 stages of 3 terms (4u) and the epilogue 2 more additions.
//!
//! Hence `|Δy| ≤ (cin + 8)·u·Σ_{k∈S} Σ_ci |U_k||V_k| + 4u·(|y| + |b| + |r|)`, and since
//! `Σ_{i∈{0,1,3}} r_i·b_i = Σ_{i∈{1,2,4}} r_i·b_i = 5`, `Σ_{k∈S} Σ_ci |U_k||V_k| ≤ 25·cin`.
//! For cin = 40 the bound is ≈ 3e-3 while outputs are O(5): a wrong tap, window offset,
//! padding, slot or channel gives errors of O(0.1–1).

use patchcore::kernels::conv::{Conv2d, ConvAlgorithm, WINOGRAD_S2_MIN_CHANNEL_PRODUCT};
use patchcore::kernels::gemm::Parallelism;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const U: f64 = 1.0 / (1u64 << 24) as f64;

fn random(len: usize, scale: f32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Output side of a 3×3 stride-2 pad-1 convolution: ⌊(n + 2 − 3)/2⌋ + 1.
fn out_side(n: usize) -> usize {
    (n - 1) / 2 + 1
}

/// Direct 3×3 stride-2 pad-1 convolution in f64.
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
    let (oh, ow) = (out_side(h), out_side(w));
    let mut out = vec![0.0f64; cout * oh * ow];
    for co in 0..cout {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = f64::from(bias[co]);
                for ci in 0..cin {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            // Input position 2·o + k − 1 (padding 1).
                            let (iy, ix) = (2 * oy + ky, 2 * ox + kx);
                            if iy < 1 || ix < 1 || iy > h || ix > w {
                                continue;
                            }
                            let xv = x[(ci * h + iy - 1) * w + ix - 1];
                            let wv = wt[((co * cin + ci) * 3 + ky) * 3 + kx];
                            acc += f64::from(xv) * f64::from(wv);
                        }
                    }
                }
                let idx = (co * oh + oy) * ow + ox;
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

#[allow(clippy::too_many_arguments)]
fn check_against_naive(
    cout: usize,
    cin: usize,
    h: usize,
    w: usize,
    with_res: bool,
    relu: bool,
    seed: u64,
) -> std::result::Result<(), TestCaseError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (oh, ow) = (out_side(h), out_side(w));
    let x = random(cin * h * w, 1.0, &mut rng);
    let wt = random(cout * cin * 9, 1.0, &mut rng);
    let bias = random(cout, 1.0, &mut rng);
    let res = with_res.then(|| random(cout * oh * ow, 1.0, &mut rng));
    let conv = Conv2d::new(cout, cin, 3, 3, 2, 1, wt.clone(), bias.clone())
        .with_algorithm(ConvAlgorithm::Winograd)
        .unwrap();
    prop_assert!(conv.uses_winograd());
    prop_assert_eq!(conv.out_hw(h, w), (oh, ow));
    let want = naive(cout, cin, h, w, &x, &wt, &bias, res.as_deref(), relu);
    let n = cin as f64;
    let tol_dot = (n + 8.0) * U * 25.0 * n;
    for par in [Parallelism::Sequential, Parallelism::Rayon] {
        // Exactly scratch_len elements, dirty: the kernel must overwrite what it reads.
        let mut scratch = vec![f32::NAN; conv.scratch_len(h, w)];
        let mut out = vec![f32::NAN; cout * oh * ow];
        conv.forward_image_with(&x, h, w, &mut out, res.as_deref(), relu, &mut scratch, par);
        prop_assert_eq!(scratch.len(), conv.scratch_len(h, w), "scratch grew");
        for (i, (&g, &r)) in out.iter().zip(&want).enumerate() {
            let co = i / (oh * ow);
            let extra = r.abs()
                + f64::from(bias[co]).abs()
                + res.as_ref().map_or(0.0, |v| f64::from(v[i]).abs());
            let tol = tol_dot + 4.0 * U * extra;
            prop_assert!(
                (f64::from(g) - r).abs() <= tol,
                "cout={} cin={} {}x{} res={} relu={} {:?}: element {}: got {}, want {}, tol {:e}",
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
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn stride2_winograd_matches_direct_convolution(
        cout in 1usize..40,
        cin in 1usize..40,
        h in 1usize..24,
        w in 1usize..24,
        with_res: bool,
        relu: bool,
        seed in 0u64..1000,
    ) {
        check_against_naive(cout, cin, h, w, with_res, relu, seed)?;
    }

    #[test]
    fn stride2_winograd_small_images(
        cout in 1usize..6,
        cin in 1usize..6,
        h in 1usize..10,
        w in 1usize..10,
        with_res: bool,
        relu: bool,
        seed in 0u64..1000,
    ) {
        check_against_naive(cout, cin, h, w, with_res, relu, seed)?;
    }
}

#[test]
fn stride2_winograd_edge_shapes() {
    // Every size 1..=9 in both axes, then rows/columns that need several transform chunks
    // (16 tiles = 64 input columns per chunk) with partial last tiles.
    for h in 1..=9 {
        for w in 1..=9 {
            check_against_naive(
                3,
                4,
                h,
                w,
                (h + w) % 2 == 0,
                h % 3 == 0,
                (h * 10 + w) as u64,
            )
            .unwrap();
        }
    }
    for (h, w) in [(1, 65), (3, 64), (2, 129), (131, 2), (6, 131), (9, 140)] {
        let seed = (h * 1000 + w) as u64;
        check_against_naive(3, 5, h, w, true, true, seed).unwrap();
        check_against_naive(5, 2, h, w, false, false, seed + 1).unwrap();
    }
}

#[test]
fn stride2_winograd_and_im2col_agree_on_network_shapes() {
    // Weights at the scale of trained (He-initialised, BN-folded) layers; inputs like
    // post-ReLU activations. Tolerance: the backbone parity bound 1e-4·max|ref| (the
    // measured differences are ~1e-6 relative, printed below).
    for (name, cout, cin, hw) in [
        ("WRN layer2", 256usize, 256usize, 56usize),
        ("WRN layer3", 512, 512, 28),
        ("R18 layer2", 128, 64, 56),
        ("R18 layer3", 256, 128, 28),
    ] {
        let mut rng = ChaCha8Rng::seed_from_u64((cout * cin) as u64);
        let scale = (2.0 / (9.0 * cin as f32)).sqrt() * 3f32.sqrt();
        let wt = random(cout * cin * 9, scale, &mut rng);
        let bias = random(cout, 0.1, &mut rng);
        let x: Vec<f32> = random(cin * hw * hw, 2.0, &mut rng)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect();
        let o = hw / 2;
        let auto = Conv2d::new(cout, cin, 3, 3, 2, 1, wt, bias);
        assert!(
            auto.uses_winograd(),
            "Auto should pick the stride-2 path for {name}"
        );
        let im2col = auto.clone().with_algorithm(ConvAlgorithm::Im2col).unwrap();
        assert!(!im2col.uses_winograd());
        let mut scratch = Vec::new();
        let mut want = vec![0.0; cout * o * o];
        im2col.forward_image(&x, hw, hw, &mut want, None, true, &mut scratch);
        let max_ref = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(max_ref > 1.0, "degenerate reference");
        let mut got = vec![0.0; cout * o * o];
        auto.forward_image(&x, hw, hw, &mut got, None, true, &mut scratch);
        let max_err = got
            .iter()
            .zip(&want)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        eprintln!(
            "{name} {cin}->{cout} @ {hw}²: max|Δ|/max|ref| = {:.2e}",
            max_err / max_ref
        );
        assert!(
            max_err <= 1e-4 * max_ref,
            "{name}: max|Δ| = {max_err} > 1e-4·{max_ref}"
        );
    }
}

#[test]
fn stride2_winograd_is_bit_identical_with_one_and_two_threads() {
    let (cout, cin, hw) = (96usize, 64usize, 45usize);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let conv = Conv2d::new(
        cout,
        cin,
        3,
        3,
        2,
        1,
        random(cout * cin * 9, 0.1, &mut rng),
        random(cout, 0.1, &mut rng),
    )
    .with_algorithm(ConvAlgorithm::Winograd)
    .unwrap();
    let x = random(cin * hw * hw, 1.0, &mut rng);
    let o = out_side(hw);
    let res = random(cout * o * o, 1.0, &mut rng);
    let run = |threads: usize, par: Parallelism| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                let mut out = vec![0.0; cout * o * o];
                conv.forward_image_with(
                    &x,
                    hw,
                    hw,
                    &mut out,
                    Some(&res),
                    true,
                    &mut Vec::new(),
                    par,
                );
                out
            })
    };
    let one = run(1, Parallelism::Sequential);
    for (threads, par) in [(2, Parallelism::Rayon), (1, Parallelism::Rayon)] {
        let other = run(threads, par);
        assert!(
            one.iter()
                .zip(&other)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{threads} threads {par:?}"
        );
    }
}

#[test]
fn stride2_algorithm_selection() {
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
    // Auto: from cin·cout = 64·128 up (ResNet-18's 64→128 and larger), im2col below.
    assert_eq!(WINOGRAD_S2_MIN_CHANNEL_PRODUCT, 64 * 128);
    assert_eq!(conv(128, 64, 3, 2, 1).winograd_tile(56, 56), Some(2));
    assert_eq!(conv(256, 256, 3, 2, 1).winograd_tile(56, 56), Some(2));
    assert_eq!(conv(127, 64, 3, 2, 1).winograd_tile(56, 56), None);
    assert_eq!(conv(64, 64, 3, 2, 1).winograd_tile(56, 56), None);
    assert_eq!(conv(8, 8, 3, 2, 1).winograd_tile(56, 56), None);
    // Winograd accepts stride 2 (whatever the channel count), F(4×4) does not.
    let small = conv(2, 3, 3, 2, 1);
    assert!(small
        .clone()
        .with_algorithm(ConvAlgorithm::Winograd)
        .unwrap()
        .uses_winograd());
    assert!(small
        .clone()
        .with_algorithm(ConvAlgorithm::Winograd4x4)
        .is_err());
    assert!(conv(8, 8, 3, 3, 1)
        .with_algorithm(ConvAlgorithm::Winograd)
        .is_err());
    assert!(conv(8, 8, 3, 2, 0)
        .with_algorithm(ConvAlgorithm::Winograd)
        .is_err());
    // Im2col forces the old path.
    let c = conv(64, 64, 3, 2, 1);
    let direct = c.clone().with_algorithm(ConvAlgorithm::Im2col).unwrap();
    assert!(!direct.uses_winograd());
    assert_eq!(direct.scratch_len(9, 10), 64 * 9 * 5 * 5);
    // 25 points per 2×2 output tile: 9×10 → 5×5 output → 3×3 tiles.
    let s2 = c.with_algorithm(ConvAlgorithm::Winograd).unwrap();
    assert_eq!(s2.scratch_len(9, 10), 25 * 3 * 3 * 128);
}
