//! Unit tests of the int8 convolution's hand-ons: an output written as the packed panels
//! or the channels-last image of the convolution that reads it, against that convolution's
//! f32 path.

use super::tests::uniform;
use super::{QInput, QOutput, QuantScratch, QuantizedConv, Residual};
use crate::kernels::conv::Conv2d;
use crate::kernels::gemm::Parallelism;
use crate::kernels::int8::{quantize_u8, scale_for, Int8Isa};

/// A 1×1 convolution on AMX that also packs its output for the next 1×1 convolution
/// ([`QOutput::F32Panels`]): its f32 output is the plain one, bit for bit, and the next
/// convolution reading those panels ([`QInput::Panels`]) gives exactly what it gives from the
/// f32 output, and so does a strided 1×1 convolution with the same range reading them
/// subsampled ([`QuantizedConv::reads_panels_of`], a block's downsample); the panels are
/// reported invalid when a value exceeds the next range. Odd pixel counts, output channels that fill part of a row block or of the next depth's 64, inputs
/// in f32 and already quantised, with and without a residual, 1 and 2 threads.
#[test]
fn packed_handoff_between_1x1_convolutions_is_the_f32_path() {
    if !Int8Isa::Amx.is_available() {
        return;
    }
    let mut rnd = uniform(0x51ED_270Bu32);
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
        // A 1×1 convolution at `stride` on the same input (a block's downsample).
        let strided = |stride: usize| {
            let (weight, bias) = (second_conv.weight().to_vec(), second_conv.bias().to_vec());
            Conv2d::new(cout, mid, 1, 1, stride, 0, weight, bias)
        };
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
                    let res = res.map(Residual::F32);
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
                    // A strided 1×1 convolution with the same range (a block's downsample)
                    // reads the same panels, subsampled, and gives what it gives from the f32
                    // output; with another range it does not read them.
                    for stride in [1, 2, 3] {
                        let ds = |limit| QuantizedConv::new(&strided(stride), limit).unwrap();
                        assert!(!ds(1.5 * limit).reads_panels_of(&second, Int8Isa::Amx));
                        let ds = ds(limit);
                        assert!(ds.reads_panels_of(&second, Int8Isa::Amx), "stride {stride}");
                        let (oh, ow) = ds.out_hw(h, w);
                        let mut sub =
                            vec![0u32; crate::kernels::amx::packed_words(k4 / 16, oh * ow)];
                        crate::kernels::amx::subsample_panels(
                            &panels,
                            k4,
                            (h, w),
                            stride,
                            &mut sub,
                        );
                        let run = |input: QInput<'_>, scratch: &mut QuantScratch| {
                            let mut z = vec![f32::NAN; cout * oh * ow];
                            let io = (input, QOutput::F32(&mut z));
                            ds.forward(io, h, w, None, false, scratch, par, Int8Isa::Amx);
                            bits(&z)
                        };
                        assert_eq!(
                            run(QInput::Panels(&sub), &mut scratch),
                            run(QInput::F32(&y), &mut scratch),
                            "{cin}→{mid}→{cout} {h}×{w} stride {stride} {par:?}"
                        );
                    }
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
    let mut rnd = uniform(0x1A6E_0B17u32);
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
    let mut rnd = uniform(0x0D1E_C7A5u32);
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

/// [`QuantizedConv::pack_panels`] (a block's f32 input packed once for its first 1×1
/// convolution and its downsample): the convolution reading those panels gives exactly what
/// it gives from the f32 input, and so does a strided 1×1 convolution with the same range
/// reading them subsampled; every word is written (garbage beforehand); an input beyond the
/// range is refused. Channels not a multiple of 4 or 64, odd pixel counts, both thread modes.
#[test]
fn f32_input_packed_once_is_the_f32_path() {
    if !Int8Isa::Amx.is_available() {
        return;
    }
    let mut rnd = uniform(0x0BAC_C0DEu32);
    let m_in = 0.9f32;
    for (cin, cout, h, w) in [(64, 32, 7, 7), (30, 9, 5, 13), (100, 40, 3, 17)] {
        let conv = |stride: usize, rnd: &mut dyn FnMut() -> f32| {
            let weight: Vec<f32> = (0..cout * cin).map(|_| rnd() - 0.5).collect();
            let bias: Vec<f32> = (0..cout).map(|_| rnd() - 0.2).collect();
            let conv = Conv2d::new(cout, cin, 1, 1, stride, 0, weight, bias);
            QuantizedConv::new(&conv, m_in).unwrap()
        };
        let first = conv(1, &mut rnd);
        let ds = conv(2, &mut rnd);
        let p = h * w;
        // Values up to the range, and one exactly at it.
        let mut x: Vec<f32> = (0..cin * p).map(|_| rnd() * m_in).collect();
        x[p / 2] = m_in;
        let k4 = first
            .panels_k4(Int8Isa::Amx)
            .expect("a 1×1 on AMX takes panels");
        let words = crate::kernels::amx::packed_words(k4 / 16, p);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for par in [Parallelism::Sequential, Parallelism::Rayon] {
            let mut scratch = QuantScratch::default();
            let mut panels = vec![0xDEAD_BEEFu32; words];
            assert!(first.pack_panels(&x, h, w, &mut panels, par, Int8Isa::Amx));
            let run = |qc: &QuantizedConv, input: QInput<'_>, scratch: &mut QuantScratch| {
                let (oh, ow) = qc.out_hw(h, w);
                let mut y = vec![f32::NAN; cout * oh * ow];
                let io = (input, QOutput::F32(&mut y));
                qc.forward(io, h, w, None, true, scratch, par, Int8Isa::Amx);
                bits(&y)
            };
            assert_eq!(
                run(&first, QInput::Panels(&panels), &mut scratch),
                run(&first, QInput::F32(&x), &mut scratch),
                "{cin}→{cout} {h}×{w} {par:?}"
            );
            // A downsample at stride 2 on the same input, with the same range.
            assert!(ds.reads_panels_of(&first, Int8Isa::Amx));
            let (oh, ow) = ds.out_hw(h, w);
            let mut sub = vec![0u32; crate::kernels::amx::packed_words(k4 / 16, oh * ow)];
            crate::kernels::amx::subsample_panels(&panels, k4, (h, w), 2, &mut sub);
            assert_eq!(
                run(&ds, QInput::Panels(&sub), &mut scratch),
                run(&ds, QInput::F32(&x), &mut scratch),
                "downsample {cin}→{cout} {h}×{w} {par:?}"
            );
            // One value beyond the range: refused.
            let mut over = x.clone();
            over[cin * p - 1] = 1.01 * m_in;
            assert!(!first.pack_panels(&over, h, w, &mut panels, par, Int8Isa::Amx));
        }
    }
}
