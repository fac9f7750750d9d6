//! The direct convolution against its definition.

use super::*;
use proptest::prelude::*;

/// The convolution by its definition, in the order the direct path promises: per output
/// value, `mac(w, x, acc)` over the taps in weight order from 0, then the epilogue of
/// the im2col path (`max(acc + b + r, 0)` with ReLU, `acc + (b + r)` without).
#[allow(clippy::too_many_arguments)]
fn naive(
    g: &Geometry,
    weight: &[f32],
    bias: &[f32],
    input: &[f32],
    residual: Option<&[f32]>,
    relu: bool,
    mac: impl Fn(f32, f32, f32) -> f32,
) -> Vec<f32> {
    let mut out = vec![0.0; g.cout * g.oh * g.ow];
    for co in 0..g.cout {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let mut acc = 0.0f32;
                for ci in 0..g.cin {
                    for ky in 0..g.kh {
                        for kx in 0..g.kw {
                            let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                            let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                            let inside =
                                iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w;
                            let x = if inside {
                                input[(ci * g.h + iy as usize) * g.w + ix as usize]
                            } else {
                                0.0
                            };
                            let wv = weight[((co * g.cin + ci) * g.kh + ky) * g.kw + kx];
                            acc = mac(wv, x, acc);
                        }
                    }
                }
                let at = (co * g.oh + oy) * g.ow + ox;
                out[at] = match (residual, relu) {
                    (Some(r), true) => (acc + bias[co] + r[at]).max(0.0),
                    (Some(r), false) => acc + (bias[co] + r[at]),
                    (None, true) => (acc + bias[co]).max(0.0),
                    (None, false) => acc + bias[co],
                };
            }
        }
    }
    out
}

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Runs the direct path with `wide` and `par` into a garbage-filled output and scratch.
#[allow(clippy::too_many_arguments)]
fn run(
    g: &Geometry,
    weight: &[f32],
    bias: &[f32],
    input: &[f32],
    residual: Option<&[f32]>,
    relu: bool,
    par: Parallelism,
    wide: Wide,
) -> Vec<f32> {
    let mut out = vec![f32::NAN; g.cout * g.oh * g.ow];
    let mut scratch = vec![f32::NAN; g.scratch_len()];
    forward(
        g,
        weight,
        bias,
        input,
        &mut out,
        residual,
        relu,
        &mut scratch,
        par,
        wide,
    );
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(120))]
    /// Every copy of the loops, sequential and parallel, gives exactly the bits of the
    /// definition summed in weight order (plain multiply-adds for the portable copy,
    /// fused ones for the AVX-512 copy): odd kernels, strides and paddings, partial
    /// blocks of output channels and of columns (widths past 64, not multiples of 16),
    /// with and without residual and ReLU.
    #[test]
    fn direct_matches_the_definition_bit_for_bit(
        cin in 1usize..=MAX_CIN, cout in 1usize..15, h in 1usize..12, w in 1usize..150,
        kh in 1usize..8, kw in 1usize..8, stride in 1usize..4, pad in 0usize..4,
        relu in any::<bool>(), with_residual in any::<bool>(), seed in any::<u64>(),
    ) {
        let (ph, pw) = (h + 2 * pad, w + 2 * pad);
        prop_assume!(ph >= kh && pw >= kw);
        let (oh, ow) = ((ph - kh) / stride + 1, (pw - kw) / stride + 1);
        let g = Geometry { cin, cout, h, w, kh, kw, stride, pad, oh, ow };
        let weight = values(cout * cin * kh * kw, seed);
        let bias = values(cout, seed ^ 1);
        let input = values(cin * h * w, seed ^ 2);
        let residual = with_residual.then(|| values(cout * oh * ow, seed ^ 3));
        let r = residual.as_deref();
        let plain = naive(&g, &weight, &bias, &input, r, relu, |a, b, c| a * b + c);
        for par in [Parallelism::Sequential, Parallelism::Rayon] {
            let got = run(&g, &weight, &bias, &input, r, relu, par, Wide::Baseline);
            prop_assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            let wide = Wide::detect(true);
            if wide.is_avx512() {
                let fused = naive(&g, &weight, &bias, &input, r, relu, f32::mul_add);
                let got = run(&g, &weight, &bias, &input, r, relu, par, wide);
                prop_assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    fused.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                );
            }
        }
    }
}

/// The ResNet stem's shape (3 → 64, 7×7, stride 2, padding 3) at 224² against the
/// definition, with the copy `Auto` picks on this CPU.
#[test]
fn stem_shape_matches_the_definition() {
    let (h, w) = (224, 224);
    let g = Geometry {
        cin: 3,
        cout: 64,
        h,
        w,
        kh: 7,
        kw: 7,
        stride: 2,
        pad: 3,
        oh: 112,
        ow: 112,
    };
    let weight = values(64 * 147, 5);
    let bias = values(64, 6);
    let input = values(3 * h * w, 7);
    let wide = Wide::detect(true);
    let got = run(
        &g,
        &weight,
        &bias,
        &input,
        None,
        true,
        Parallelism::Rayon,
        wide,
    );
    let want = if wide.is_avx512() {
        naive(&g, &weight, &bias, &input, None, true, f32::mul_add)
    } else {
        naive(&g, &weight, &bias, &input, None, true, |a, b, c| a * b + c)
    };
    assert!(got
        .iter()
        .zip(&want)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

/// Every small shape (widths and heights 1..8, kernels 1..7, strides 1..3, paddings 0..3),
/// where the phase split meets images narrower than its stride and padding wider than the
/// image: a proptest run found one such case.
#[test]
fn every_small_shape_matches_the_definition() {
    let wide = Wide::detect(true);
    for (h, w, k, stride, pad) in small_shapes() {
        let (ph, pw) = (h + 2 * pad, w + 2 * pad);
        if ph < k || pw < k {
            continue;
        }
        let (oh, ow) = ((ph - k) / stride + 1, (pw - k) / stride + 1);
        let g = Geometry {
            cin: 2,
            cout: 3,
            h,
            w,
            kh: k,
            kw: k,
            stride,
            pad,
            oh,
            ow,
        };
        let seed = (h * 1000 + w * 100 + k * 10 + stride + pad * 7) as u64;
        let weight = values(3 * 2 * k * k, seed);
        let bias = values(3, seed ^ 1);
        let input = values(2 * h * w, seed ^ 2);
        let plain = naive(&g, &weight, &bias, &input, None, false, |a, b, c| a * b + c);
        let seq = Parallelism::Sequential;
        let got = run(&g, &weight, &bias, &input, None, false, seq, Wide::Baseline);
        assert_eq!(bits(&got), bits(&plain), "{g:?}");
        if wide.is_avx512() {
            let fused = naive(&g, &weight, &bias, &input, None, false, f32::mul_add);
            let got = run(&g, &weight, &bias, &input, None, false, seq, wide);
            assert_eq!(bits(&got), bits(&fused), "{g:?}");
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `(h, w, k, stride, pad)` for every small shape.
fn small_shapes() -> impl Iterator<Item = (usize, usize, usize, usize, usize)> {
    (1..8).flat_map(|h| {
        (1..8).flat_map(move |w| {
            (1..8).flat_map(move |k| (1..4).flat_map(move |s| (0..4).map(move |p| (h, w, k, s, p))))
        })
    })
}

/// `take_every` against its definition, for every stride the stem and the tests use and every
/// length of `src` that reaches the last value (the shortest leaves no pair for it).
#[test]
fn take_every_takes_every_sth_value() {
    for s in 1..5 {
        for n in 0..40 {
            let shortest = if n == 0 { 0 } else { s * (n - 1) + 1 };
            for len in shortest..shortest + 2 * s {
                let src: Vec<f32> = (0..len).map(|i| i as f32).collect();
                let mut dst = vec![-1.0; n];
                take_every(s, &src, &mut dst);
                let want: Vec<f32> = (0..n).map(|j| (s * j) as f32).collect();
                assert_eq!(dst, want, "stride {s}, {n} values from {len}");
            }
        }
    }
}
