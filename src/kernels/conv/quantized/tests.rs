//! Unit tests of the int8 convolution's input and output forms and of its byte rounding.

use super::{QInput, QOutput, QuantScratch, QuantizedConv};
use crate::kernels::conv::Conv2d;
use crate::kernels::gemm::Parallelism;
use crate::kernels::int8::{quantize_u8, scale_for, Int8Isa};
use crate::kernels::pool::maxpool2d;

/// The quantised forms are the f32 forms quantised: a quantised output has exactly the
/// bytes the next convolution makes of the f32 output (and says so only when no value
/// exceeds its range), and a quantised input gives exactly the f32 input's result, for
/// every path (1×1, 3×3 "same", strided im2col), kernel and thread mode, with and
/// without a residual.
#[test]
fn quantised_forms_are_the_f32_forms_quantised() {
    let mut s = 0x2545_F491u32;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s >> 8) as f32 / (1u32 << 24) as f32
    };
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
                    assert!(q.forward(io, h, w, res, true, &mut scratch, par, isa));
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
                            let ok = q.forward(io, h, w, res, true, &mut scratch, par, isa);
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
    let mut s = 0x9E37_79B9u32;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s >> 8) as f32 / (1u32 << 24) as f32
    };
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
                q.forward(io, h, w, res, true, &mut scratch, seq, pt);
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
                    assert!(q.forward(io, h, w, res, true, &mut scratch, par, amx));
                    assert_eq!(got, want_q, "{what}, quantised input");
                    let mut bytes = vec![0xA5u8; want.len()];
                    let io = (
                        QInput::F32(&x),
                        QOutput::Quantized {
                            q: &mut bytes,
                            limit,
                        },
                    );
                    assert!(q.forward(io, h, w, res, true, &mut scratch, par, amx));
                    assert_eq!(bytes, want_bytes, "{what}, quantised output");
                }
            }
        }
    }
}

/// A 1×1 convolution on AMX that also packs its output for the next 1×1 convolution
/// ([`QOutput::F32Panels`]): its f32 output is the plain one, bit for bit, and the next
/// convolution reading those panels ([`QInput::Panels`]) gives exactly what it gives from the
/// f32 output; the panels are reported invalid when a value exceeds the next range. Odd pixel
/// counts, output channels that fill part of a row block or of the next depth's 64, inputs
/// in f32 and already quantised, with and without a residual, 1 and 2 threads.
#[test]
fn packed_handoff_between_1x1_convolutions_is_the_f32_path() {
    if !Int8Isa::Amx.is_available() {
        return;
    }
    let mut s = 0x51ED_270Bu32;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s >> 8) as f32 / (1u32 << 24) as f32
    };
    let conv = |cout: usize, cin: usize, rnd: &mut dyn FnMut() -> f32| {
        let weight: Vec<f32> = (0..cout * cin).map(|_| rnd() - 0.5).collect();
        let bias: Vec<f32> = (0..cout).map(|_| rnd() - 0.2).collect();
        Conv2d::new(cout, cin, 1, 1, 1, 0, weight, bias)
    };
    // (input channels, channels between the two, output channels, h, w)
    for (cin, mid, cout, h, w) in [
        (64, 64, 32, 7, 7),
        (32, 20, 9, 5, 13),
        (128, 96, 40, 14, 14),
        (16, 256, 33, 1, 1),
        (64, 64, 64, 3, 40),
    ] {
        let p = h * w;
        let m_in = 0.9f32;
        let first = QuantizedConv::new(&conv(mid, cin, &mut rnd), m_in).unwrap();
        let second_conv = conv(cout, mid, &mut rnd);
        // The next convolution, calibrated to `limit`.
        let second = |limit: f32| QuantizedConv::new(&second_conv, limit).unwrap();
        let x: Vec<f32> = (0..cin * p).map(|_| rnd() * m_in).collect();
        let xq: Vec<u8> = x.iter().map(|&v| quantize_u8(v, scale_for(m_in))).collect();
        let residual: Vec<f32> = (0..mid * p).map(|_| rnd() * 0.6 - 0.3).collect();
        for par in [Parallelism::Sequential, Parallelism::Rayon] {
            let k4 = second(1.0)
                .panels_k4(Int8Isa::Amx)
                .expect("a 1×1 on AMX takes panels");
            assert_eq!(k4, mid.div_ceil(64) * 16);
            let words = crate::kernels::amx::packed_words(k4 / 16, p);
            for (input, res) in [
                (QInput::F32(&x), None),
                (QInput::Quantized(&xq), Some(&residual[..])),
            ] {
                let mut scratch = QuantScratch::default();
                let run = |out: QOutput<'_>, scratch: &mut QuantScratch| {
                    first.forward((input, out), h, w, res, true, scratch, par, Int8Isa::Amx)
                };
                let mut want = vec![f32::NAN; mid * p];
                assert!(run(QOutput::F32(&mut want), &mut scratch));
                // A range above every output (the panels are used) and one below the largest
                // (they are not); garbage in the panels beforehand: every word must be
                // written.
                let top = want.iter().fold(0.0f32, |a, &b| a.max(b));
                assert!(top > 0.0);
                let mut checked = false;
                for limit in [1.25 * top, 0.5 * top] {
                    let mut y = vec![f32::NAN; mid * p];
                    let mut panels = vec![0xDEAD_BEEFu32; words];
                    let out = QOutput::F32Panels {
                        y: &mut y,
                        panels: &mut panels,
                        limit,
                        k4,
                    };
                    let valid = run(out, &mut scratch);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&y), bits(&want), "{cin}→{mid} {h}×{w}: f32 output");
                    let over = want.iter().any(|&v| v > limit);
                    assert_eq!(valid, !over, "{cin}→{mid} {h}×{w} limit {limit}");
                    if !valid {
                        continue;
                    }
                    let second = second(limit);
                    let next = |input: QInput<'_>, scratch: &mut QuantScratch| {
                        let mut z = vec![f32::NAN; cout * p];
                        let io = (input, QOutput::F32(&mut z));
                        second.forward(io, h, w, None, false, scratch, par, Int8Isa::Amx);
                        bits(&z)
                    };
                    assert_eq!(
                        next(QInput::Panels(&panels), &mut scratch),
                        next(QInput::F32(&y), &mut scratch),
                        "{cin}→{mid}→{cout} {h}×{w} {par:?}"
                    );
                    checked = true;
                }
                assert!(checked, "the panels were never used");
            }
        }
    }
    // A convolution that quantises its input per image never hands panels on, but still
    // writes its f32 output.
    let signed = QuantizedConv::per_image(&conv(8, 64, &mut rnd)).unwrap();
    let x: Vec<f32> = (0..64 * 9).map(|_| rnd() - 0.5).collect();
    let mut scratch = QuantScratch::default();
    let (mut want, mut y) = (vec![f32::NAN; 8 * 9], vec![f32::NAN; 8 * 9]);
    let (par, amx) = (Parallelism::Sequential, Int8Isa::Amx);
    let io = (QInput::F32(&x), QOutput::F32(&mut want));
    assert!(signed.forward(io, 3, 3, None, false, &mut scratch, par, amx));
    let mut panels = vec![0u32; crate::kernels::amx::packed_words(1, 9)];
    let out = QOutput::F32Panels {
        y: &mut y,
        panels: &mut panels,
        limit: 1.0,
        k4: 16,
    };
    assert!(!signed.forward(
        (QInput::F32(&x), out),
        3,
        3,
        None,
        false,
        &mut scratch,
        par,
        amx
    ));
    assert_eq!(y, want);
}

/// A 1×1 convolution on AMX reading panels, written as the channels-last image of a
/// following direct convolution ([`QOutput::ImageU8`]): at the pixels, the bytes that the
/// direct convolution makes of the plain f32 output (by the definition of the layout), zero
/// in the padding (garbage beforehand), and the direct convolution gives from the image
/// exactly what it gives from the f32 output; the image is reported invalid when a value
/// exceeds the direct convolution's range. One to three pairs of row blocks, strides 1 and
/// 2, 3×3 and 5×5, 1 and 2 threads (the largest shape runs in parallel).
#[test]
fn image_output_is_the_f32_output_quantised() {
    if !Int8Isa::Amx.is_available() {
        return;
    }
    use crate::kernels::amx::packed_words;
    let isa = Int8Isa::Amx;
    let mut s = 0x1A6E_0B17u32;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s >> 8) as f32 / (1u32 << 24) as f32
    };
    let conv =
        |cout: usize, cin: usize, size: usize, stride: usize, rnd: &mut dyn FnMut() -> f32| {
            let weight: Vec<f32> = (0..cout * cin * size * size).map(|_| rnd() - 0.5).collect();
            let bias: Vec<f32> = (0..cout).map(|_| rnd() - 0.2).collect();
            Conv2d::new(cout, cin, size, size, stride, size / 2, weight, bias)
        };
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    for (cin, mid, cout, size, stride, h, w) in [
        (64, 64, 32, 3, 1, 7, 7),
        (48, 128, 40, 3, 2, 5, 13),
        (128, 192, 64, 3, 1, 28, 28),
        (64, 64, 32, 5, 1, 6, 11),
    ] {
        let p = h * w;
        // The first convolution's input, from a previous one that also packs it for the
        // first, quantised with the first one's range.
        let zeroth = QuantizedConv::new(&conv(cin, 16, 1, 1, &mut rnd), 1.0).unwrap();
        let first_conv = conv(mid, cin, 1, 1, &mut rnd);
        let second_conv = conv(cout, mid, size, stride, &mut rnd);
        let x0: Vec<f32> = (0..16 * p).map(|_| rnd()).collect();
        let mut y0 = vec![f32::NAN; cin * p];
        let mut scratch = QuantScratch::default();
        let par = Parallelism::Sequential;
        let io = (QInput::F32(&x0), QOutput::F32(&mut y0));
        assert!(zeroth.forward(io, h, w, None, true, &mut scratch, par, isa));
        let m_in = 1.1 * y0.iter().fold(0.0f32, |a, &b| a.max(b));
        let first = QuantizedConv::new(&first_conv, m_in).unwrap();
        let k4 = first.panels_k4(isa).expect("a 1×1 on AMX takes panels");
        let mut panels = vec![0u32; packed_words(k4 / 16, p)];
        let mut y = vec![f32::NAN; cin * p];
        let out = QOutput::F32Panels {
            y: &mut y,
            panels: &mut panels,
            limit: m_in,
            k4,
        };
        assert!(zeroth.forward(
            (QInput::F32(&x0), out),
            h,
            w,
            None,
            true,
            &mut scratch,
            par,
            isa
        ));
        for par in [Parallelism::Sequential, Parallelism::Rayon] {
            let mut want = vec![f32::NAN; mid * p];
            let io = (QInput::F32(&y0), QOutput::F32(&mut want));
            assert!(first.forward(io, h, w, None, true, &mut scratch, par, isa));
            let top = want.iter().fold(0.0f32, |a, &b| a.max(b));
            assert!(top > 0.0);
            for limit in [1.25 * top, 0.5 * top] {
                let second = QuantizedConv::new(&second_conv, limit).unwrap();
                let grid = second.image_grid(isa, h, w).expect("a direct convolution");
                let (pad, wp) = ((size - 1) / 2, grid.wp());
                let scale = scale_for(limit);
                let mut want_image = vec![0u8; grid.len()];
                for c in 0..mid {
                    for j in 0..p {
                        let at = ((j / w + pad) * wp + j % w + pad) * mid + c;
                        want_image[at] = quantize_u8(want[c * p + j], scale);
                    }
                }
                let mut image = vec![0xA5u8; grid.len()];
                let out = QOutput::ImageU8 {
                    image: &mut image,
                    grid,
                    limit,
                };
                let io = (QInput::Panels(&panels), out);
                let valid = first.forward(io, h, w, None, true, &mut scratch, par, isa);
                assert_eq!(valid, top <= limit, "{cin}→{mid} limit {limit}");
                if !valid {
                    continue;
                }
                assert!(
                    image == want_image,
                    "{cin}→{mid} {size} {stride} {h}×{w} {par:?}"
                );
                let (oh, ow) = second.out_hw(h, w);
                let mut next = |input: QInput<'_>| {
                    let mut z = vec![f32::NAN; cout * oh * ow];
                    let io = (input, QOutput::F32(&mut z));
                    second.forward(io, h, w, None, true, &mut scratch, par, isa);
                    bits(&z)
                };
                let from_f32 = next(QInput::F32(&want));
                assert_eq!(
                    next(QInput::ImageU8(&image)),
                    from_f32,
                    "{cin}→{mid}→{cout}"
                );
            }
        }
    }
}

/// A direct convolution on AMX written as the channels-last image of a following direct
/// convolution ([`QOutput::ImageU8`], a ResNet basic block's first convolution): at the
/// pixels, the bytes that the following convolution makes of the plain f32 output, zero in
/// the padding (garbage beforehand), and invalid when a value exceeds the following range.
/// Shapes whose tasks split by blocks of positions (64 and 128 channels) and by output
/// channels (256), strides 1 and 2, an f32 and a quantised input, sequential and in pools of
/// 1 and 2 threads.
#[test]
fn direct_image_output_is_the_f32_output_quantised() {
    if !Int8Isa::Amx.is_available() {
        return;
    }
    let isa = Int8Isa::Amx;
    let mut s = 0x0D1E_C7A5u32;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s >> 8) as f32 / (1u32 << 24) as f32
    };
    let conv = |cout: usize, cin: usize, stride: usize, rnd: &mut dyn FnMut() -> f32| {
        let weight: Vec<f32> = (0..cout * cin * 9).map(|_| rnd() - 0.5).collect();
        let bias: Vec<f32> = (0..cout).map(|_| rnd() - 0.2).collect();
        Conv2d::new(cout, cin, 3, 3, stride, 1, weight, bias)
    };
    for (cin, mid, stride, h, w) in [
        (64, 64, 1, 30, 29),
        (64, 128, 2, 27, 28),
        (128, 256, 1, 14, 14),
    ] {
        let m_in = 0.9f32;
        let first = QuantizedConv::new(&conv(mid, cin, stride, &mut rnd), m_in).unwrap();
        let (oh, ow) = first.out_hw(h, w);
        let p = oh * ow;
        let x: Vec<f32> = (0..cin * h * w).map(|_| rnd() * m_in).collect();
        let xq: Vec<u8> = x.iter().map(|&v| quantize_u8(v, scale_for(m_in))).collect();
        let second = |limit| QuantizedConv::new(&conv(32, mid, 1, &mut || 0.5), limit).unwrap();
        for threads in [0, 1, 2] {
            let (par, pool) = match threads {
                0 => (Parallelism::Sequential, 1),
                n => (Parallelism::Rayon, n),
            };
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(pool)
                .build()
                .unwrap();
            pool.install(|| {
                let mut scratch = QuantScratch::default();
                let mut want = vec![f32::NAN; mid * p];
                let io = (QInput::F32(&x), QOutput::F32(&mut want));
                assert!(first.forward(io, h, w, None, true, &mut scratch, par, isa));
                let top = want.iter().fold(0.0f32, |a, &b| a.max(b));
                assert!(top > 0.0);
                for limit in [1.25 * top, 0.5 * top] {
                    let next = second(limit);
                    let grid = next.image_grid(isa, oh, ow).expect("a direct convolution");
                    let wp = grid.wp();
                    let scale = scale_for(limit);
                    let mut want_image = vec![0u8; grid.len()];
                    for c in 0..mid {
                        for j in 0..p {
                            let at = ((j / ow + 1) * wp + j % ow + 1) * mid + c;
                            want_image[at] = quantize_u8(want[c * p + j], scale);
                        }
                    }
                    for input in [QInput::F32(&x), QInput::Quantized(&xq)] {
                        let mut image = vec![0xA5u8; grid.len()];
                        let out = QOutput::ImageU8 {
                            image: &mut image,
                            grid,
                            limit,
                        };
                        let valid =
                            first.forward((input, out), h, w, None, true, &mut scratch, par, isa);
                        let what = format!("{cin}→{mid} /{stride} {h}×{w} {threads} {limit}");
                        assert_eq!(valid, top <= limit, "{what}");
                        if valid {
                            assert!(image == want_image, "{what}");
                        }
                    }
                }
            });
        }
    }
}

/// A stem (an input quantised with its own zero point) on AMX reads its image as a narrow
/// channels-last grid, padded with the zero point; it gives the bits of the portable kernel's
/// im2col path: one to four input channels, windows up to 7×7 at both strides, images
/// narrower than a tile and wider than a block of 32 positions, inputs all negative (the
/// zero point 255), all positive (0) and mixed, with and without a residual, both thread
/// modes; fused with its 3×3 / stride 2 max-pool, the pool of that output. Skipped on CPUs
/// without AMX-INT8.
#[test]
fn stem_on_amx_is_the_portable_stem() {
    if !Int8Isa::Amx.is_available() {
        return;
    }
    let mut s = 0x1234_5677u32;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s >> 8) as f32 / (1u32 << 24) as f32
    };
    let mut checked = 0;
    for (cin, k, stride, h, w) in [
        (3, 7, 2, 19, 37),
        (3, 7, 2, 1, 1),
        (1, 3, 1, 5, 40),
        (2, 5, 2, 8, 9),
        (4, 3, 1, 3, 17),
        (3, 7, 1, 6, 6),
        (3, 7, 2, 40, 34),
    ] {
        let cout = 1 + (h * w) % 40 + if h == 40 { 40 } else { 0 };
        let weight: Vec<f32> = (0..cout * cin * k * k).map(|_| rnd() - 0.5).collect();
        let bias: Vec<f32> = (0..cout).map(|_| rnd() - 0.3).collect();
        let conv = Conv2d::new(cout, cin, k, k, stride, k / 2, weight, bias);
        let q = QuantizedConv::per_image(&conv).unwrap();
        let (oh, ow) = q.out_hw(h, w);
        for shift in [-1.2f32, 0.0, 0.5] {
            let x: Vec<f32> = (0..cin * h * w)
                .map(|_| 2.0 * rnd() - 1.0 + shift)
                .collect();
            let residual: Vec<f32> = (0..cout * oh * ow).map(|_| rnd() - 0.5).collect();
            for (res, relu) in [(None, true), (Some(&residual[..]), false)] {
                let run = |isa: Int8Isa, par: Parallelism| {
                    let mut out = vec![f32::NAN; cout * oh * ow];
                    let mut scratch = QuantScratch::default();
                    let io = (QInput::F32(&x), QOutput::F32(&mut out));
                    assert!(q.forward(io, h, w, res, relu, &mut scratch, par, isa));
                    out
                };
                let want = run(Int8Isa::Portable, Parallelism::Sequential);
                assert!(want.iter().all(|v| v.is_finite()));
                // The stem fused with its max-pool against the pool of the portable output.
                let (ph, pw) = ((oh - 1) / 2 + 1, (ow - 1) / 2 + 1);
                let mut pooled_want = vec![f32::NAN; cout * ph * pw];
                maxpool2d(&want, cout, oh, ow, 3, 2, 1, &mut pooled_want);
                for par in [Parallelism::Sequential, Parallelism::Rayon] {
                    let got = run(Int8Isa::Amx, par);
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{cin}→{cout} {k}×{k}/{stride} {h}×{w} {shift} {par:?}"
                    );
                    if res.is_none() {
                        let mut pooled = vec![f32::NAN; cout * ph * pw];
                        let mut s = QuantScratch::default();
                        let fused = |isa, pooled: &mut [f32], s: &mut QuantScratch| {
                            q.forward_pooled(&x, h, w, pooled, relu, s, par, isa)
                        };
                        assert!(fused(Int8Isa::Amx, &mut pooled, &mut s));
                        let same = pooled
                            .iter()
                            .zip(&pooled_want)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "pooled {cin}→{cout} {k}×{k}/{stride} {h}×{w} {par:?}");
                        // Not on the other kernels (which write nothing).
                        assert!(!fused(Int8Isa::Portable, &mut pooled, &mut s));
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 7 * 3 * 2 * 2);
}

/// A convolution notes whether its last f32 input exceeded its calibrated range (the hint of
/// [`QuantizedConv::exceeded_last`]), on every path that quantises an f32 input (1×1, 3×3
/// "same", strided im2col, and the direct one on AMX), with every kernel; a clone starts
/// afresh; an input that arrives quantised never exceeded.
#[test]
fn convolutions_note_inputs_beyond_their_range() {
    let mut s = 0x7E57_AB1Eu32;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s >> 8) as f32 / (1u32 << 24) as f32
    };
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
