//! Unit tests of the bf16 convolution's chained forms: each against the layout's definition
//! and, bit for bit, against the path it replaces.

use super::*;
use crate::kernels::amx::packed_words;

fn stream(mut s: u32) -> impl FnMut() -> f32 {
    move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s >> 8) as f32 / (1u32 << 24) as f32
    }
}

fn conv(
    cout: usize,
    cin: usize,
    size: usize,
    stride: usize,
    rnd: &mut impl FnMut() -> f32,
) -> Conv2d {
    let weight: Vec<f32> = (0..cout * cin * size * size).map(|_| rnd() - 0.5).collect();
    let bias: Vec<f32> = (0..cout).map(|_| rnd() - 0.3).collect();
    Conv2d::new(cout, cin, size, size, stride, size / 2, weight, bias)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// Checks the panels against their documented layout, computed here: `kw` words of `k`
/// per column, in panels of 16 columns (pairs of panels), `k` even in the low half; the
/// bits of `y[k][j]` (`k < m`) rounded to bf16, zero for the `k` up to the next multiple
/// of 32 and for the columns past `n`.
fn check_layout(panels: &[u32], y: &[f32], m: usize, n: usize, kw: usize) {
    assert_eq!(panels.len(), packed_words(kw / 16, n));
    for j in 0..n.next_multiple_of(32) {
        for k in 0..m.next_multiple_of(32) {
            let word = panels[((j / 16) * kw + k / 2) * 16 + j % 16];
            let got = if k % 2 == 0 {
                word as u16
            } else {
                (word >> 16) as u16
            };
            let want = if j < n && k < m {
                to_bf16(y[k * n + j])
            } else {
                0
            };
            assert_eq!(got, want, "column {j} of {n}, k {k} of {m}");
        }
    }
}

/// A 1×1 convolution on AMX that also packs its output for the next 1×1 convolution
/// ([`QOutput::F32Panels`]): its f32 output is the plain one, bit for bit, the panels hold
/// that output rounded to bf16 in the layout the next one reads, and the next one gives
/// from them exactly what it gives from the f32 output, as does a strided 1×1 convolution
/// from them subsampled ([`Bf16Conv::reads_panels_of`], a block's downsample). Odd pixel
/// counts, channels that fill part of a row block or of a tile's 32 `k`, with and without a
/// residual, 1 and 2 threads.
#[test]
fn handed_on_panels_are_the_rounded_f32_output() {
    if !Bf16Isa::Amx.is_available() {
        return;
    }
    let isa = Bf16Isa::Amx;
    let mut rnd = stream(0x0BF1_6A11);
    for (cin, mid, cout, h, w) in [
        (64, 64, 32, 7, 7),
        (32, 20, 9, 5, 13),
        (128, 96, 40, 14, 14),
        (16, 256, 33, 1, 1),
        (64, 40, 64, 3, 40),
    ] {
        let p = h * w;
        let first = Bf16Conv::new(&conv(mid, cin, 1, 1, &mut rnd)).unwrap();
        let second = Bf16Conv::new(&conv(cout, mid, 1, 1, &mut rnd)).unwrap();
        let strided: Vec<Bf16Conv> = [1, 2, 3]
            .map(|stride| Bf16Conv::new(&conv(cout, mid, 1, stride, &mut rnd)).unwrap())
            .into();
        let kw = second.panels_kw(isa).expect("a 1×1 on AMX takes panels");
        assert_eq!(kw, mid.div_ceil(32) * 16);
        let x: Vec<f32> = (0..cin * p).map(|_| rnd() - 0.4).collect();
        let residual: Vec<f32> = (0..mid * p).map(|_| rnd() * 0.6 - 0.3).collect();
        for par in [Parallelism::Sequential, Parallelism::Rayon] {
            for res in [None, Some(&residual[..])] {
                let mut s = Bf16Scratch::default();
                let mut want = vec![f32::NAN; mid * p];
                first.forward_image(&x, h, w, &mut want, res, true, &mut s, par, isa);
                let mut want_out = vec![f32::NAN; cout * p];
                second.forward_image(&want, h, w, &mut want_out, None, false, &mut s, par, isa);
                // Garbage in the panels beforehand: every word must be written.
                let mut panels = vec![0xDEAD_BEEFu32; packed_words(kw / 16, p)];
                let mut y = vec![f32::NAN; mid * p];
                let out = QOutput::F32Panels {
                    y: &mut y,
                    panels: &mut panels,
                    limit: f32::INFINITY,
                    k4: kw,
                };
                let io = (QInput::F32(&x), out);
                assert!(first.forward(io, h, w, res.map(Residual::F32), true, &mut s, par, isa));
                assert_eq!(bits(&y), bits(&want), "{cin} {mid} {h}×{w}");
                check_layout(&panels, &want, mid, p, kw);
                let mut got = vec![f32::NAN; cout * p];
                let io = (QInput::Panels(&panels), QOutput::F32(&mut got));
                assert!(second.forward(io, h, w, None, false, &mut s, par, isa));
                assert_eq!(bits(&got), bits(&want_out), "{cin} {mid} {cout} {h}×{w}");
                // A strided 1×1 convolution on the same input (a block's downsample) reads
                // the same panels subsampled, and gives what it gives from the f32 output.
                for ds in &strided {
                    assert!(ds.reads_panels_of(&second, isa));
                    let (oh, ow) = ds.out_hw(h, w);
                    let mut sub = vec![0u32; packed_words(kw / 16, oh * ow)];
                    crate::kernels::amx::subsample_panels(&panels, kw, (h, w), ds.stride, &mut sub);
                    let mut from_panels = vec![f32::NAN; cout * oh * ow];
                    let io = (QInput::Panels(&sub), QOutput::F32(&mut from_panels));
                    assert!(ds.forward(io, h, w, None, false, &mut s, par, isa));
                    let mut from_f32 = vec![f32::NAN; cout * oh * ow];
                    ds.forward_image(&want, h, w, &mut from_f32, None, false, &mut s, par, isa);
                    let stride = ds.stride;
                    assert_eq!(
                        bits(&from_panels),
                        bits(&from_f32),
                        "{mid} {h}×{w} / {stride}"
                    );
                }
            }
        }
    }
}

/// A direct convolution on AMX written as the panels of the next 1×1 convolution
/// ([`QOutput::Panels`]): the panels hold its plain f32 output rounded to bf16, and the next
/// one gives from them exactly what it gives from that output. Output channels that fill
/// part of a pair, strides 1 and 2, 3×3 and 5×5, with and without ReLU, 1 and 2 threads;
/// with a residual it declines.
#[test]
fn direct_panels_are_the_rounded_f32_output() {
    if !Bf16Isa::Amx.is_available() {
        return;
    }
    let isa = Bf16Isa::Amx;
    let mut rnd = stream(0x5EED_0D1C);
    for (cin, mid, cout, size, stride, h, w) in [
        (64, 64, 32, 3, 1, 7, 7),
        (32, 40, 9, 3, 2, 9, 13),
        (64, 96, 64, 3, 1, 14, 14),
        (32, 32, 16, 5, 1, 6, 11),
    ] {
        let first = Bf16Conv::new(&conv(mid, cin, size, stride, &mut rnd)).unwrap();
        let second = Bf16Conv::new(&conv(cout, mid, 1, 1, &mut rnd)).unwrap();
        let (oh, ow) = first.out_hw(h, w);
        let p = oh * ow;
        assert!(first.direct_panels(isa, h, w), "{cin} {size}×{size}");
        let kw = second.panels_kw(isa).unwrap();
        let x: Vec<f32> = (0..cin * h * w).map(|_| rnd() - 0.4).collect();
        for (par, relu) in [
            (Parallelism::Sequential, true),
            (Parallelism::Rayon, true),
            (Parallelism::Rayon, false),
        ] {
            let mut s = Bf16Scratch::default();
            let mut want = vec![f32::NAN; mid * p];
            first.forward_image(&x, h, w, &mut want, None, relu, &mut s, par, isa);
            let mut want_out = vec![f32::NAN; cout * p];
            second.forward_image(&want, oh, ow, &mut want_out, None, false, &mut s, par, isa);
            let mut panels = vec![0xDEAD_BEEFu32; packed_words(kw / 16, p)];
            let out = QOutput::Panels {
                panels: &mut panels,
                limit: f32::INFINITY,
                k4: kw,
            };
            assert!(first.forward((QInput::F32(&x), out), h, w, None, relu, &mut s, par, isa));
            check_layout(&panels, &want, mid, p, kw);
            let mut got = vec![f32::NAN; cout * p];
            let io = (QInput::Panels(&panels), QOutput::F32(&mut got));
            assert!(second.forward(io, oh, ow, None, false, &mut s, par, isa));
            assert_eq!(bits(&got), bits(&want_out), "{cin} {mid} {size} {stride}");
            // A residual is not part of the panels' values: declined, nothing written.
            let residual = vec![0.0f32; mid * p];
            let before = panels.clone();
            let out = QOutput::Panels {
                panels: &mut panels,
                limit: f32::INFINITY,
                k4: kw,
            };
            let io = (QInput::F32(&x), out);
            assert!(!first.forward(
                io,
                h,
                w,
                Some(Residual::F32(&residual)),
                relu,
                &mut s,
                par,
                isa
            ));
            assert_eq!(panels, before);
        }
    }
}

/// A plain 1×1 convolution on AMX written as the channels-last image of a following
/// direct convolution ([`QOutput::ImageBf16`]): the image is its plain f32 output rounded to
/// bf16 at the pixels, by the definition of the layout, and zero in the padding (garbage
/// beforehand); the direct convolution reading it ([`QInput::ImageBf16`]) gives exactly what it
/// gives from that output, to f32 and to panels. From f32 and from panels handed on by a
/// previous 1×1; one to three row blocks of channels, strides 1 and 2, 3×3 and 5×5,
/// pixel counts that end inside a pair of panels, 1 and 2 threads (the largest shape runs
/// in parallel); with a residual it declines and writes nothing.
#[test]
fn image_output_is_the_rounded_f32_output() {
    if !Bf16Isa::Amx.is_available() {
        return;
    }
    let isa = Bf16Isa::Amx;
    let mut rnd = stream(0x1A6E_0FF5);
    for (cin, mid, cout, size, stride, h, w) in [
        (64, 64, 32, 3, 1, 7, 7),
        (48, 32, 40, 3, 2, 5, 13),
        (128, 96, 64, 3, 1, 28, 28),
        (32, 64, 32, 5, 1, 6, 11),
        (64, 32, 32, 3, 1, 1, 1),
    ] {
        let p = h * w;
        let zeroth = Bf16Conv::new(&conv(cin, 32, 1, 1, &mut rnd)).unwrap();
        let first = Bf16Conv::new(&conv(mid, cin, 1, 1, &mut rnd)).unwrap();
        let second = Bf16Conv::new(&conv(cout, mid, size, stride, &mut rnd)).unwrap();
        let grid = second.direct_grid(isa, h, w).expect("a direct convolution");
        let (oh, ow) = second.out_hw(h, w);
        let x0: Vec<f32> = (0..32 * p).map(|_| rnd() - 0.4).collect();
        for par in [Parallelism::Sequential, Parallelism::Rayon] {
            let mut s = Bf16Scratch::default();
            // The first convolution's input in f32 and as panels.
            let mut x = vec![f32::NAN; cin * p];
            let kw = first.panels_kw(isa).unwrap();
            let mut panels = vec![0u32; packed_words(kw / 16, p)];
            let out = QOutput::F32Panels {
                y: &mut x,
                panels: &mut panels,
                limit: f32::INFINITY,
                k4: kw,
            };
            assert!(zeroth.forward((QInput::F32(&x0), out), h, w, None, true, &mut s, par, isa));
            let mut want = vec![f32::NAN; mid * p];
            first.forward_image(&x, h, w, &mut want, None, true, &mut s, par, isa);
            let (pad, wp) = ((size - 1) / 2, grid.wp());
            let mut want_image = vec![0u16; grid.len()];
            for c in 0..mid {
                for j in 0..p {
                    let at = ((j / w + pad) * wp + j % w + pad) * mid + c;
                    want_image[at] = to_bf16(want[c * p + j]);
                }
            }
            let mut want_out = vec![f32::NAN; cout * oh * ow];
            second.forward_image(&want, h, w, &mut want_out, None, true, &mut s, par, isa);
            for input in [QInput::F32(&x), QInput::Panels(&panels)] {
                let mut image = vec![0xA5A5u16; grid.len()];
                let out = QOutput::ImageBf16 {
                    image: &mut image,
                    grid,
                };
                assert!(first.forward((input, out), h, w, None, true, &mut s, par, isa));
                assert!(image == want_image, "{cin} {mid} {size} {stride} {h}×{w}");
                let mut got = vec![f32::NAN; cout * oh * ow];
                let io = (QInput::ImageBf16(&image), QOutput::F32(&mut got));
                assert!(second.forward(io, h, w, None, true, &mut s, par, isa));
                assert_eq!(bits(&got), bits(&want_out), "{cin} {mid} {size} {stride}");
                // A residual is not part of the image's values: declined, nothing written.
                let residual = vec![0.0f32; mid * p];
                let out = QOutput::ImageBf16 {
                    image: &mut image,
                    grid,
                };
                let io = (input, out);
                assert!(!first.forward(
                    io,
                    h,
                    w,
                    Some(Residual::F32(&residual)),
                    true,
                    &mut s,
                    par,
                    isa
                ));
                assert!(image == want_image);
            }
        }
    }
}

/// The image of `y` (`[c, h·w]`) for `grid`, by the definition of the layout: pixel
/// `(y, x)`'s channels at `((y + pad)·wp + x + pad)·c`, rounded to bf16; zero elsewhere.
fn image_of(y: &[f32], grid: Grid) -> Vec<u16> {
    let (c, p) = (grid.cin, grid.h * grid.w);
    let (pad, wp) = ((grid.size - 1) / 2, grid.wp());
    let mut image = vec![0u16; grid.len()];
    for ch in 0..c {
        for j in 0..p {
            let at = ((j / grid.w + pad) * wp + j % grid.w + pad) * c + ch;
            image[at] = to_bf16(y[ch * p + j]);
        }
    }
    image
}

/// A direct convolution on AMX written as the channels-last image of a following direct
/// convolution (ResNet-18's basic blocks): the image is its plain f32 output rounded to
/// bf16 at the pixels and zero in the padding (garbage beforehand), by the definition of
/// the layout, from an f32 input and from an image of it; the next convolution gives from
/// it exactly what it gives from the f32 output. Strides 1 and 2, 3×3 and 5×5, one to
/// three pairs of channels, 1 and 2 threads; with a residual it declines.
#[test]
fn direct_image_output_is_the_rounded_f32_output() {
    if !Bf16Isa::Amx.is_available() {
        return;
    }
    let isa = Bf16Isa::Amx;
    let mut rnd = stream(0xD12E_C71A);
    for (cin, mid, cout, size, stride, h, w) in [
        (64, 64, 32, 3, 1, 7, 7),
        (32, 96, 64, 3, 2, 13, 9),
        (64, 32, 32, 5, 1, 6, 11),
        (64, 64, 64, 3, 1, 28, 28),
    ] {
        let first = Bf16Conv::new(&conv(mid, cin, size, stride, &mut rnd)).unwrap();
        let second = Bf16Conv::new(&conv(cout, mid, 3, 1, &mut rnd)).unwrap();
        let (oh, ow) = first.out_hw(h, w);
        let grid = second
            .direct_grid(isa, oh, ow)
            .expect("a direct convolution");
        let x: Vec<f32> = (0..cin * h * w).map(|_| rnd() - 0.4).collect();
        let x_image = image_of(&x, first.direct_grid(isa, h, w).unwrap());
        for par in [Parallelism::Sequential, Parallelism::Rayon] {
            let mut s = Bf16Scratch::default();
            let mut want = vec![f32::NAN; mid * oh * ow];
            first.forward_image(&x, h, w, &mut want, None, true, &mut s, par, isa);
            let want_image = image_of(&want, grid);
            let mut want_out = vec![f32::NAN; cout * oh * ow];
            second.forward_image(&want, oh, ow, &mut want_out, None, true, &mut s, par, isa);
            for input in [QInput::F32(&x), QInput::ImageBf16(&x_image)] {
                let mut image = vec![0xA5A5u16; grid.len()];
                let out = QOutput::ImageBf16 {
                    image: &mut image,
                    grid,
                };
                assert!(first.forward((input, out), h, w, None, true, &mut s, par, isa));
                assert!(image == want_image, "{cin} {mid} {size} {stride} {h}×{w}");
                let mut got = vec![f32::NAN; cout * oh * ow];
                let io = (QInput::ImageBf16(&image), QOutput::F32(&mut got));
                assert!(second.forward(io, oh, ow, None, true, &mut s, par, isa));
                assert_eq!(bits(&got), bits(&want_out), "{cin} {mid} {size} {stride}");
            }
            let residual = vec![0.0f32; mid * oh * ow];
            let mut image = vec![0xA5A5u16; grid.len()];
            let out = QOutput::ImageBf16 {
                image: &mut image,
                grid,
            };
            let io = (QInput::F32(&x), out);
            assert!(!first.forward(
                io,
                h,
                w,
                Some(Residual::F32(&residual)),
                true,
                &mut s,
                par,
                isa
            ));
            assert!(image.iter().all(|&v| v == 0xA5A5));
        }
    }
}

/// A stem (one to three input channels) on AMX reads its image as a narrow channels-last
/// grid: every output within the f32 summation bound `(k + 2)·2⁻²⁴·(Σ|ŵ·x̂| + |bias|)` of
/// the exact sum of the bf16-rounded products, computed here in f64 (ReLU keeps the bound);
/// windows up to 7×7 at both strides, images narrower than a tile and wider than a block,
/// both thread modes; fused with its 3×3 / stride 2 max-pool, the pool of that output, bit for
/// bit. Skipped on CPUs without AMX-BF16.
#[test]
fn stem_on_amx_is_within_the_bound_of_the_exact_sums() {
    if !Bf16Isa::Amx.is_available() {
        return;
    }
    let mut rnd = stream(0x0BAD_5EED);
    let round = |v: f32| f64::from(f32::from_bits(u32::from(to_bf16(v)) << 16));
    let mut checked = 0;
    for (cin, k, stride, h, w) in [
        (3, 7, 2, 19, 37),
        (3, 7, 2, 1, 1),
        (1, 3, 1, 5, 40),
        (2, 5, 2, 8, 9),
        (3, 7, 1, 6, 6),
        (3, 7, 2, 40, 34),
    ] {
        let cout = 1 + (h * w) % 40 + if h == 40 { 40 } else { 0 };
        let c = conv(cout, cin, k, stride, &mut rnd);
        let b = Bf16Conv::new(&c).unwrap();
        assert!(b.reads_image_directly(), "{cin} channels, {k}×{k}");
        assert!(
            b.direct_grid(Bf16Isa::Amx, h, w).is_none(),
            "no image is written for it"
        );
        let (oh, ow) = b.out_hw(h, w);
        let x: Vec<f32> = (0..cin * h * w).map(|_| 4.0 * rnd() - 2.0).collect();
        let (pad, taps) = (k / 2, k * k);
        for par in [Parallelism::Sequential, Parallelism::Rayon] {
            let mut out = vec![f32::NAN; cout * oh * ow];
            let mut scratch = Bf16Scratch::default();
            b.forward_image(
                &x,
                h,
                w,
                &mut out,
                None,
                true,
                &mut scratch,
                par,
                Bf16Isa::Amx,
            );
            // Fused with its max-pool: the pool of that output, bit for bit.
            let (ph, pw) = ((oh - 1) / 2 + 1, (ow - 1) / 2 + 1);
            let mut want = vec![f32::NAN; cout * ph * pw];
            crate::kernels::pool::maxpool2d(&out, cout, oh, ow, 3, 2, 1, &mut want);
            let mut pooled = vec![f32::NAN; cout * ph * pw];
            let amx = Bf16Isa::Amx;
            assert!(b.forward_pooled(&x, h, w, &mut pooled, true, &mut scratch, par, amx));
            assert_eq!(
                bits(&pooled),
                bits(&want),
                "pooled {cin}→{cout} {k}×{k}/{stride} {h}×{w}"
            );
            for co in 0..cout {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let bias = f64::from(c.bias()[co]);
                        let (mut sum, mut abs) = (bias, bias.abs());
                        for ci in 0..cin {
                            for t in 0..taps {
                                let iy = (oy * stride + t / k) as isize - pad as isize;
                                let ix = (ox * stride + t % k) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let wv = round(c.weight()[(co * cin + ci) * taps + t]);
                                let p = wv * round(x[(ci * h + iy as usize) * w + ix as usize]);
                                sum += p;
                                abs += p.abs();
                            }
                        }
                        let want = sum.max(0.0);
                        let got = f64::from(out[(co * oh + oy) * ow + ox]);
                        let bound = (cin * taps + 2) as f64 * 2f64.powi(-24) * abs;
                        assert!(
                            (got - want).abs() <= bound,
                            "{cin}→{cout} {k}×{k}/{stride} {h}×{w} {par:?}: {got} vs {want}"
                        );
                    }
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
}

/// A strided 1×1 convolution (a downsample) gives, with every kernel of this CPU, the bits of
/// the same convolution at stride 1 on the pixels it reads, taken out here: strides 2 and 3,
/// odd sizes, channels that fill part of a tile's 32 `k`, 1 and 2 threads.
#[test]
fn strided_1x1_reads_only_its_pixels() {
    let mut rnd = stream(0x0D05_A3B1);
    for (cin, cout, h, w, stride) in [(64, 128, 14, 14, 2), (20, 9, 7, 11, 2), (32, 40, 9, 10, 3)] {
        let strided = conv(cout, cin, 1, stride, &mut rnd);
        let plain = Conv2d::new(
            cout,
            cin,
            1,
            1,
            1,
            0,
            strided.weight().to_vec(),
            strided.bias().to_vec(),
        );
        let (strided, plain) = (
            Bf16Conv::new(&strided).unwrap(),
            Bf16Conv::new(&plain).unwrap(),
        );
        let (oh, ow) = strided.out_hw(h, w);
        let x: Vec<f32> = (0..cin * h * w).map(|_| 2.0 * rnd() - 0.8).collect();
        let mut picked = Vec::with_capacity(cin * oh * ow);
        for c in 0..cin {
            for oy in 0..oh {
                for ox in 0..ow {
                    picked.push(x[(c * h + stride * oy) * w + stride * ox]);
                }
            }
        }
        for isa in Bf16Isa::all_available() {
            for par in [Parallelism::Sequential, Parallelism::Rayon] {
                let mut s = Bf16Scratch::default();
                let mut got = vec![f32::NAN; cout * oh * ow];
                strided.forward_image(&x, h, w, &mut got, None, true, &mut s, par, isa);
                let mut want = vec![f32::NAN; cout * oh * ow];
                plain.forward_image(&picked, oh, ow, &mut want, None, true, &mut s, par, isa);
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "{cin}→{cout} {h}×{w} / {stride} {isa:?}"
                );
            }
        }
    }
}
