//! Unit tests of the int8 convolution's input and output forms and of its byte rounding.

use super::{QInput, QOutput, QuantScratch, QuantizedConv, Residual};
use crate::kernels::conv::Conv2d;
use crate::kernels::gemm::Parallelism;
use crate::kernels::int8::{quantize_u8, scale_for, Int8Isa};

/// Uniform values in `[0, 1)` from a xorshift generator seeded with `seed` (the tests' inputs
/// and weights).
pub(super) fn uniform(seed: u32) -> impl FnMut() -> f32 {
    let mut s = seed;
    move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s >> 8) as f32 / (1u32 << 24) as f32
    }
}

/// The quantised forms are the f32 forms quantised: a quantised output has exactly the
/// bytes the next convolution makes of the f32 output (and says so only when no value
/// exceeds its range), and a quantised input gives exactly the f32 input's result, for
/// every path (1×1, 3×3 "same", strided im2col), kernel and thread mode, with and
/// without a residual.
#[test]
fn quantised_forms_are_the_f32_forms_quantised() {
    let mut rnd = uniform(0x2545_F491u32);
    for (k, stride, pad) in [(1, 1, 0), (3, 1, 1), (3, 2, 1), (1, 2, 0)] {
        let (cout, cin, h, w) = (5, 6, 9, 7);
        let weight: Vec<f32> = (0..cout * cin * k * k).map(|_| rnd() - 0.5).collect();
        let bias: Vec<f32> = (0..cout).map(|_| rnd() - 0.3).collect();
        let conv = Conv2d::new(cout, cin, k, k, stride, pad, weight, bias);
        let m = 0.8f32;
        let q = QuantizedConv::new(&conv, m).unwrap();
        let (oh, ow) = q.out_hw(h, w);
        // Inputs within the calibrated range (as a quantised input always is).
        let x: Vec<f32> = (0..cin * h * w).map(|_| rnd() * m).collect();
        let xq: Vec<u8> = x.iter().map(|&v| quantize_u8(v, scale_for(m))).collect();
        let residual: Vec<f32> = (0..cout * oh * ow).map(|_| rnd() - 0.5).collect();
        for isa in Int8Isa::all_available() {
            for par in [Parallelism::Sequential, Parallelism::Rayon] {
                for res in [None, Some(&residual[..])] {
                    let mut scratch = QuantScratch::default();
                    let mut want = vec![0f32; cout * oh * ow];
                    q.forward_image(&x, h, w, &mut want, res, true, &mut scratch, par, isa);
                    // Quantised input, f32 output.
                    let mut got = vec![f32::NAN; want.len()];
                    let io = (QInput::Quantized(&xq), QOutput::F32(&mut got));
                    assert!(q.forward(
                        io,
                        h,
                        w,
                        res.map(Residual::F32),
                        true,
                        &mut scratch,
                        par,
                        isa
                    ));
                    assert_eq!(got, want, "k {k} s {stride} {isa:?} {par:?}");
                    // Quantised output, for a range below and above the largest value.
                    let top = want.iter().fold(0f32, |a, &v| a.max(v));
                    for limit in [top * 0.7, top, top * 1.3] {
                        for input in [QInput::F32(&x), QInput::Quantized(&xq)] {
                            let mut bytes = vec![0xA5u8; want.len()];
                            let io = (
                                input,
                                QOutput::Quantized {
                                    q: &mut bytes,
                                    limit,
                                },
                            );
                            let ok = q.forward(
                                io,
                                h,
                                w,
                                res.map(Residual::F32),
                                true,
                                &mut scratch,
                                par,
                                isa,
                            );
                            assert_eq!(ok, top <= limit, "k {k} limit {limit} top {top}");
                            if ok {
                                let sc = scale_for(limit);
                                let expect: Vec<u8> =
                                    want.iter().map(|&v| quantize_u8(v, sc)).collect();
                                assert_eq!(bytes, expect, "k {k} s {stride} {isa:?}");
                            }
                        }
                    }
                }
            }
        }
    }
    // A convolution that quantises its input per image is never chained.
    let conv = Conv2d::new(1, 1, 1, 1, 1, 0, vec![1.0], vec![0.0]);
    let q = QuantizedConv::per_image(&conv).unwrap();
    let mut bytes = [0u8; 4];
    let io = (
        QInput::F32(&[1.0, -1.0, 0.5, 0.0]),
        QOutput::Quantized {
            q: &mut bytes,
            limit: 1.0,
        },
    );
    let mut scratch = QuantScratch::default();
    let (par, isa) = (Parallelism::Sequential, Int8Isa::detect());
    assert!(!q.forward(io, 2, 2, None, true, &mut scratch, par, isa));
}

/// The bit-level rounding equals `f32::round_ties_even` on every f32 in [0.25, 255] and
/// on a stride of the values below (the values the input quantiser rounds), ties
/// included; NaN gives 0 like `as u8`; values outside the range saturate.
#[test]
fn byte_rounding_is_round_ties_even() {
    // Every f32 in [0.25, 255] (where the results 0..=255 and every tie lie: 84 M values),
    // and every 1009th bit pattern below 0.25 (all of which round to 0). Every f32 in
    // [0, 255] would be 1.1 G values, 13× the time, mostly below 0.25.
    let check = |bits: u32| {
        let y = f32::from_bits(bits);
        assert_eq!(quantize_u8(y, 1.0), y.round_ties_even() as u8, "{y}");
    };
    (0..0.25f32.to_bits()).step_by(1009).for_each(check);
    (0.25f32.to_bits()..=255f32.to_bits()).for_each(check);
    assert_eq!(quantize_u8(f32::NAN, 1.0), 0);
    assert_eq!(quantize_u8(-3.0, 1.0), 0);
    assert_eq!(quantize_u8(300.0, 1.0), 255);
    assert_eq!(quantize_u8(2.5, 2.0), 5);
}

/// The direct AMX path (channels-last input, for stride-1 "same" windows on 64·n channels)
/// gives the bits of the portable kernel: f32 and quantised inputs and outputs, an input
/// beyond the calibrated range (widened), a residual, odd sizes (images narrower than a tile,
/// rows longer than a block of 32 positions, output channels not a multiple of 32), and both
/// thread modes. Skipped on CPUs without AMX-INT8.
#[test]
fn direct_amx_path_matches_the_portable_kernel() {
    if !Int8Isa::Amx.is_available() {
        return;
    }
    let mut rnd = uniform(0x9E37_79B9u32);
    let shapes = [
        (3, 1, 64, 33, 9, 7),
        (3, 1, 128, 70, 14, 14),
        (3, 1, 64, 32, 1, 1),
        (3, 1, 64, 5, 3, 40),
        (5, 1, 64, 17, 6, 5),
        (7, 1, 64, 3, 4, 4),
        (3, 1, 192, 40, 5, 9),
        (3, 2, 64, 33, 9, 7),
        (3, 2, 128, 40, 28, 28),
        (3, 2, 64, 5, 1, 2),
        (3, 2, 64, 17, 6, 37),
        (5, 2, 64, 9, 7, 8),
    ];
    for (k, stride, cin, cout, h, w) in shapes {
        let pad = (k - 1) / 2;
        let weight: Vec<f32> = (0..cout * cin * k * k).map(|_| rnd() - 0.5).collect();
        let bias: Vec<f32> = (0..cout).map(|_| rnd() - 0.3).collect();
        let conv = Conv2d::new(cout, cin, k, k, stride, pad, weight, bias);
        let m = 0.8f32;
        let q = QuantizedConv::new(&conv, m).unwrap();
        assert!(q.direct.is_some(), "k {k} cin {cin}: no direct weights");
        // The weights are held once: the packed kernels' copy is made only when one of them
        // runs (the portable reference below).
        assert!(q.weights.get().is_none());
        let (oh, ow) = q.out_hw(h, w);
        // 1×1 convolutions keep the packed path; fewer than 64·n channels cannot use it.
        let other = |k: usize, cin: usize| {
            let conv = Conv2d::new(
                2,
                cin,
                k,
                k,
                1,
                k / 2,
                vec![0.1; 2 * cin * k * k],
                vec![0.0; 2],
            );
            QuantizedConv::new(&conv, m).unwrap().direct.is_none()
        };
        assert!(other(1, 64) && other(3, 96) && other(3, 32));
        let strided = Conv2d::new(2, 64, 3, 3, 3, 1, vec![0.1; 2 * 64 * 9], vec![0.0; 2]);
        assert!(QuantizedConv::new(&strided, m).unwrap().direct.is_none());
        // One value beyond the calibrated range: the range widens.
        for top in [m, 1.5 * m] {
            let mut x: Vec<f32> = (0..cin * h * w).map(|_| rnd() * m).collect();
            x[cin * h * w / 2] = top;
            let xq: Vec<u8> = x.iter().map(|&v| quantize_u8(v, scale_for(m))).collect();
            let residual: Vec<f32> = (0..cout * oh * ow).map(|_| rnd() - 0.5).collect();
            for res in [None, Some(&residual[..])] {
                let seq = Parallelism::Sequential;
                let mut scratch = QuantScratch::default();
                let mut want = vec![0f32; cout * oh * ow];
                let pt = Int8Isa::Portable;
                q.forward_image(&x, h, w, &mut want, res, true, &mut scratch, seq, pt);
                let mut want_q = vec![0f32; cout * oh * ow];
                let io = (QInput::Quantized(&xq), QOutput::F32(&mut want_q));
                q.forward(
                    io,
                    h,
                    w,
                    res.map(Residual::F32),
                    true,
                    &mut scratch,
                    seq,
                    pt,
                );
                let limit = want.iter().fold(0f32, |a, &v| a.max(v)) * 1.1;
                let sc = scale_for(limit);
                let want_bytes: Vec<u8> = want.iter().map(|&v| quantize_u8(v, sc)).collect();
                for par in [Parallelism::Sequential, Parallelism::Rayon] {
                    let what =
                        format!("k {k}/{stride} cin {cin} cout {cout} {h}×{w} top {top} {par:?}");
                    let amx = Int8Isa::Amx;
                    let mut got = vec![f32::NAN; want.len()];
                    q.forward_image(&x, h, w, &mut got, res, true, &mut scratch, par, amx);
                    assert_eq!(got, want, "{what}");
                    let io = (QInput::Quantized(&xq), QOutput::F32(&mut got));
                    assert!(q.forward(
                        io,
                        h,
                        w,
                        res.map(Residual::F32),
                        true,
                        &mut scratch,
                        par,
                        amx
                    ));
                    assert_eq!(got, want_q, "{what}, quantised input");
                    let mut bytes = vec![0xA5u8; want.len()];
                    let io = (
                        QInput::F32(&x),
                        QOutput::Quantized {
                            q: &mut bytes,
                            limit,
                        },
                    );
                    assert!(q.forward(
                        io,
                        h,
                        w,
                        res.map(Residual::F32),
                        true,
                        &mut scratch,
                        par,
                        amx
                    ));
                    assert_eq!(bytes, want_bytes, "{what}, quantised output");
                }
            }
        }
    }
}

/// A convolution notes whether its last f32 input exceeded its calibrated range (the hint of
/// [`QuantizedConv::exceeded_last`]), on every path that quantises an f32 input (1×1, 3×3
/// "same", strided im2col, and the direct one on AMX), with every kernel; a clone starts
/// afresh; an input that arrives quantised never exceeded.
#[test]
fn convolutions_note_inputs_beyond_their_range() {
    let mut rnd = uniform(0x7E57_AB1Eu32);
    for (k, stride, pad, cin) in [(1, 1, 0, 8), (3, 1, 1, 8), (3, 2, 1, 8), (3, 1, 1, 64)] {
        let (cout, h, w) = (32, 9, 10);
        let weight: Vec<f32> = (0..cout * cin * k * k).map(|_| rnd() - 0.5).collect();
        let bias: Vec<f32> = (0..cout).map(|_| rnd() - 0.3).collect();
        let conv = Conv2d::new(cout, cin, k, k, stride, pad, weight, bias);
        let q = QuantizedConv::new(&conv, 1.0).unwrap();
        let (oh, ow) = q.out_hw(h, w);
        let within: Vec<f32> = (0..cin * h * w).map(|_| rnd() * 0.9).collect();
        let mut beyond = within.clone();
        beyond[cin * h * w / 2] = 1.5;
        let bytes: Vec<u8> = within
            .iter()
            .map(|&v| quantize_u8(v, scale_for(1.0)))
            .collect();
        for isa in Int8Isa::all_available() {
            let mut scratch = QuantScratch::default();
            let mut out = vec![0f32; cout * oh * ow];
            let mut run = |x: QInput<'_>| {
                let io = (x, QOutput::F32(&mut out));
                q.forward(
                    io,
                    h,
                    w,
                    None,
                    true,
                    &mut scratch,
                    Parallelism::Sequential,
                    isa,
                );
                q.exceeded_last()
            };
            let what = format!("{k}×{k} /{stride} {cin} channels {isa:?}");
            assert!(!run(QInput::F32(&within)), "{what}");
            assert!(run(QInput::F32(&beyond)), "{what}");
            assert!(!q.clone().exceeded_last(), "{what}: a clone");
            assert!(run(QInput::F32(&beyond)), "{what}");
            assert!(!run(QInput::Quantized(&bytes)), "{what}: bytes");
            assert!(run(QInput::F32(&beyond)), "{what}");
            assert!(!run(QInput::F32(&within)), "{what}");
        }
    }
}
