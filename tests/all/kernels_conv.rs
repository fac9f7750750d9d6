//! Convolution (im2col + GEMM) against a naive direct convolution written here, and
//! BatchNorm folding against applying BatchNorm after the convolution.
//!
//! Tolerance |Δ| ≤ 1e-4·(1 + |ref|): the reference accumulates each output in f64 in the
//! natural (ci, ky, kx) order, while the kernel accumulates in f32 in the GEMM's blocked,
//! FMA-based order. With inputs and weights in [-1, 1] and at most 8·7·7 = 392 terms per
//! output, the f32 rounding error is a few 1e-5 at most, well within the bound, while any
//! indexing error (wrong tap, wrong padding, wrong channel) produces O(0.1) differences.

use patchcore::kernels::conv::{fold_batchnorm, Conv2d};
use patchcore::kernels::gemm::Parallelism;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(len: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

struct Case {
    cout: usize,
    cin: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    h: usize,
    w: usize,
}

/// Direct convolution in f64 with explicit bounds checks for the padding.
fn naive(
    c: &Case,
    x: &[f32],
    wt: &[f32],
    bias: &[f32],
    res: Option<&[f32]>,
    relu: bool,
) -> Vec<f64> {
    let oh = (c.h + 2 * c.pad - c.kh) / c.stride + 1;
    let ow = (c.w + 2 * c.pad - c.kw) / c.stride + 1;
    let mut out = vec![0.0f64; c.cout * oh * ow];
    for co in 0..c.cout {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = f64::from(bias[co]);
                for ci in 0..c.cin {
                    for ky in 0..c.kh {
                        for kx in 0..c.kw {
                            let iy = (oy * c.stride + ky) as i64 - c.pad as i64;
                            let ix = (ox * c.stride + kx) as i64 - c.pad as i64;
                            if iy < 0 || ix < 0 || iy >= c.h as i64 || ix >= c.w as i64 {
                                continue;
                            }
                            let xv = x[(ci * c.h + iy as usize) * c.w + ix as usize];
                            let wv = wt[((co * c.cin + ci) * c.kh + ky) * c.kw + kx];
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

fn close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

fn check(c: &Case, seed: u64, with_res: bool, relu: bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = random(c.cin * c.h * c.w, &mut rng);
    let wt = random(c.cout * c.cin * c.kh * c.kw, &mut rng);
    let bias = random(c.cout, &mut rng);
    let conv = Conv2d::new(
        c.cout,
        c.cin,
        c.kh,
        c.kw,
        c.stride,
        c.pad,
        wt.clone(),
        bias.clone(),
    );
    let (oh, ow) = conv.out_hw(c.h, c.w);
    let res = with_res.then(|| random(c.cout * oh * ow, &mut rng));
    let want = naive(c, &x, &wt, &bias, res.as_deref(), relu);
    let what = format!(
        "cout={} cin={} k={}x{} s={} p={} in={}x{} res={with_res} relu={relu}",
        c.cout, c.cin, c.kh, c.kw, c.stride, c.pad, c.h, c.w
    );
    // Scratch deliberately filled with garbage: it must be fully overwritten.
    let mut scratch = vec![f32::NAN; 7];
    let mut out = vec![f32::NAN; c.cout * oh * ow];
    conv.forward_image(&x, c.h, c.w, &mut out, res.as_deref(), relu, &mut scratch);
    close(&out, &want, &what);
    // Sequential path and a reused (now large, dirty) scratch.
    scratch.iter_mut().for_each(|v| *v = f32::NAN);
    let mut out2 = vec![f32::NAN; out.len()];
    conv.forward_image_with(
        &x,
        c.h,
        c.w,
        &mut out2,
        res.as_deref(),
        relu,
        &mut scratch,
        Parallelism::Sequential,
    );
    close(&out2, &want, &format!("{what} seq"));
}

#[test]
fn resnet_like_shapes() {
    let shapes = [
        // (cout, cin, k, stride, pad, h, w)
        (16, 3, 7, 2, 3, 40, 36),   // stem-like, rectangular
        (32, 16, 1, 1, 0, 23, 29),  // 1×1 direct path
        (32, 16, 1, 2, 0, 23, 29),  // 1×1 stride-2 downsample
        (24, 32, 3, 1, 1, 30, 30),  // 3×3
        (24, 32, 3, 2, 1, 30, 31),  // 3×3 stride 2
        (64, 64, 3, 1, 1, 56, 56),  // large: parallel im2col / epilogue paths
        (200, 24, 3, 1, 1, 14, 13), // small image, many channels
        (136, 40, 1, 2, 0, 27, 28), // same, 1×1 stride 2
    ];
    for (i, &(cout, cin, k, stride, pad, h, w)) in shapes.iter().enumerate() {
        let c = Case {
            cout,
            cin,
            kh: k,
            kw: k,
            stride,
            pad,
            h,
            w,
        };
        check(&c, i as u64, i % 2 == 0, true);
        check(&c, 100 + i as u64, i % 2 == 1, false);
    }
}

#[test]
fn rectangular_kernel_and_batch() {
    let c = Case {
        cout: 5,
        cin: 3,
        kh: 3,
        kw: 5,
        stride: 2,
        pad: 2,
        h: 9,
        w: 13,
    };
    check(&c, 1, true, true);
    // forward_batch = repeated forward_image.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let n = 3;
    let x = random(n * c.cin * c.h * c.w, &mut rng);
    let wt = random(c.cout * c.cin * c.kh * c.kw, &mut rng);
    let bias = random(c.cout, &mut rng);
    let conv = Conv2d::new(
        c.cout,
        c.cin,
        c.kh,
        c.kw,
        c.stride,
        c.pad,
        wt.clone(),
        bias.clone(),
    );
    let (oh, ow) = conv.out_hw(c.h, c.w);
    let plen = c.cout * oh * ow;
    let res = random(n * plen, &mut rng);
    let mut out = vec![f32::NAN; n * plen];
    let mut scratch = Vec::new();
    conv.forward_batch(
        &x,
        n,
        c.h,
        c.w,
        &mut out,
        Some(&res),
        true,
        &mut scratch,
        Parallelism::Rayon,
    );
    let ilen = c.cin * c.h * c.w;
    for i in 0..n {
        let want = naive(
            &c,
            &x[i * ilen..(i + 1) * ilen],
            &wt,
            &bias,
            Some(&res[i * plen..(i + 1) * plen]),
            true,
        );
        close(
            &out[i * plen..(i + 1) * plen],
            &want,
            &format!("batch image {i}"),
        );
    }
}

#[test]
fn flops_and_shapes() {
    let conv = Conv2d::new(64, 3, 7, 7, 2, 3, vec![0.0; 64 * 3 * 49], vec![0.0; 64]);
    assert_eq!(conv.out_hw(224, 224), (112, 112));
    assert_eq!(conv.flops(224, 224), 2 * 64 * 3 * 49 * 112 * 112);
    assert_eq!(conv.checked_out_hw(0, 5), None);
    assert!(Conv2d::try_new(2, 2, 3, 3, 1, 1, vec![0.0; 35], vec![0.0; 2]).is_err());
    assert!(Conv2d::try_new(2, 2, 3, 3, 0, 1, vec![0.0; 36], vec![0.0; 2]).is_err());
    assert!(Conv2d::try_new(2, 2, 3, 3, 1, 1, vec![0.0; 36], vec![0.0; 3]).is_err());
}

#[test]
#[should_panic(expected = "input must be")]
fn wrong_input_length_panics() {
    let conv = Conv2d::new(1, 2, 1, 1, 1, 0, vec![1.0; 2], vec![0.0]);
    let mut out = vec![0.0; 4];
    conv.forward_image(&[0.0; 7], 2, 2, &mut out, None, false, &mut Vec::new());
}

#[test]
fn batchnorm_folding_matches_conv_then_bn() {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let c = Case {
        cout: 6,
        cin: 4,
        kh: 3,
        kw: 3,
        stride: 1,
        pad: 1,
        h: 8,
        w: 7,
    };
    let x = random(c.cin * c.h * c.w, &mut rng);
    let wt = random(c.cout * c.cin * 9, &mut rng);
    let gamma = random(c.cout, &mut rng);
    let beta = random(c.cout, &mut rng);
    let mean = random(c.cout, &mut rng);
    let var: Vec<f32> = (0..c.cout).map(|_| rng.random_range(0.1f32..2.0)).collect();
    let eps = 1e-5;
    // Reference: bias-free conv, then BN applied naively in f64, then ReLU.
    let raw = naive(&c, &x, &wt, &vec![0.0; c.cout], None, false);
    let p = c.h * c.w;
    let want: Vec<f64> = raw
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = i / p;
            let y = (v - f64::from(mean[ch])) / (f64::from(var[ch]) + f64::from(eps)).sqrt()
                * f64::from(gamma[ch])
                + f64::from(beta[ch]);
            y.max(0.0)
        })
        .collect();
    let mut folded = wt.clone();
    let bias = fold_batchnorm(&mut folded, c.cout, &gamma, &beta, &mean, &var, eps);
    assert_eq!(bias.len(), c.cout);
    let conv = Conv2d::new(c.cout, c.cin, 3, 3, 1, 1, folded, bias);
    let mut out = vec![0.0; c.cout * p];
    conv.forward_image(&x, c.h, c.w, &mut out, None, true, &mut Vec::new());
    close(&out, &want, "folded BN");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn matches_direct_convolution(
        cout in 1usize..9, cin in 1usize..9, h in 1usize..21, w in 1usize..21,
        k in prop::sample::select(vec![1usize, 3, 5, 7]), stride in 1usize..3, pad in 0usize..4,
        with_res: bool, relu: bool, seed in 0u64..10_000,
    ) {
        prop_assume!(h + 2 * pad >= k && w + 2 * pad >= k);
        let c = Case { cout, cin, kh: k, kw: k, stride, pad, h, w };
        check(&c, seed, with_res, relu);
    }
}
