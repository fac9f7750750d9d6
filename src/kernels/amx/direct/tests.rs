//! Unit tests of the direct convolution: the layout by its definition, the sums against naive
//! convolutions.

use super::layout::{fill_channels_last_bf16_with, transpose16};
#[cfg(target_arch = "x86_64")]
use super::sinks::{transpose32, transpose32_avx512};
use super::*;
use proptest::prelude::*;

/// The padded channels-last image by its definition.
fn naive_fill(planes: &[u8], grid: Grid) -> Vec<u8> {
    let (pad, wp) = (grid.pad(), grid.wp());
    let mut out = vec![0u8; grid.len()];
    for c in 0..grid.cin {
        for y in 0..grid.h {
            for x in 0..grid.w {
                let at = ((y + pad) * wp + x + pad) * grid.cin + c;
                out[at] = planes[(c * grid.h + y) * grid.w + x];
            }
        }
    }
    out
}

/// `Σ_{ci, ky, kx} q[c, ci, ky, kx] · x[ci, y + ky − pad, x + kx − pad]` (zero outside),
/// exact in i64.
fn naive_conv(q: &[i8], x: &[u8], m: usize, grid: Grid) -> Vec<i64> {
    let Grid {
        cin,
        h,
        w,
        size,
        stride,
    } = grid;
    let pad = grid.pad() as isize;
    let (oh, ow) = grid.out_hw();
    let mut out = vec![0i64; m * oh * ow];
    for c in 0..m {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut s = 0i64;
                for ci in 0..cin {
                    for ky in 0..size {
                        for kx in 0..size {
                            let iy = (oy * stride + ky) as isize - pad;
                            let ix = (ox * stride + kx) as isize - pad;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let wv = q[(c * cin + ci) * size * size + ky * size + kx];
                            let xv = x[(ci * h + iy as usize) * w + ix as usize];
                            s += i64::from(wv) * i64::from(xv);
                        }
                    }
                }
                out[(c * oh + oy) * ow + ox] = s;
            }
        }
    }
    out
}

#[test]
fn transpose16_is_the_transpose() {
    let mut m = [[0u8; 16]; 16];
    for (i, row) in m.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (i * 16 + j) as u8;
        }
    }
    let t = transpose16(&m);
    for (j, row) in t.iter().enumerate() {
        for (i, &v) in row.iter().enumerate() {
            assert_eq!(v, m[i][j], "({j}, {i})");
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn transpose32_avx512_is_the_plain_transpose() {
    if !(crate::kernels::cpu::features().avx512f) {
        return;
    }
    let mut s = Sums([[0i32; COLS]; ROWS]);
    for (i, row) in s.0.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (i * 1000 + j) as i32 - 7000;
        }
    }
    let (mut a, mut b) = (Sums([[1i32; COLS]; ROWS]), Sums([[2i32; COLS]; ROWS]));
    transpose32(&s.0, &mut a.0);
    // SAFETY: AVX512F detected above.
    unsafe { transpose32_avx512(&s.0, &mut b.0) };
    assert_eq!(a.0, b.0);
    assert_eq!(a.0[3][17], s.0[17][3]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Every byte of the layout, into a buffer full of garbage, in both thread modes.
    #[test]
    fn fill_matches_the_definition(
        c64 in 1usize..3, h in 1usize..20, w in 1usize..40, size in prop::sample::select(vec![1usize, 3, 5, 7]),
        seed in any::<u8>(),
    ) {
        let grid = Grid { cin: 64 * c64, h, w, size, stride: 1 };
        let planes: Vec<u8> = (0..grid.cin * h * w)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let want = naive_fill(&planes, grid);
        for par in [false, true] {
            let mut got = vec![0xA5u8; grid.len()];
            fill_channels_last(&planes, grid, &mut got, par);
            prop_assert!(got == want, "{:?} par {}", grid, par);
        }
    }

    /// The bf16 layout: every element, each the input rounded to bf16, into a buffer full of
    /// garbage, in both thread modes, with the baseline and the AVX-512 loops; images wider
    /// than a block of 32 pixels and channels that end in half a block of 64.
    #[test]
    fn bf16_fill_matches_the_definition(
        c32 in 1usize..6, h in 1usize..12, w in 1usize..70, size in prop::sample::select(vec![3usize, 5]),
        seed in any::<u32>(),
    ) {
        use crate::kernels::bf16::to_bf16;
        use crate::kernels::wide::Wide;
        let grid = Grid { cin: 32 * c32, h, w, size, stride: 1 };
        let x: Vec<f32> = (0..grid.cin * h * w)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / 1e9 - 2.0)
            .collect();
        let (pad, wp) = (grid.pad(), grid.wp());
        let mut want = vec![0u16; grid.len()];
        for c in 0..grid.cin {
            for y in 0..h {
                for xx in 0..w {
                    let at = ((y + pad) * wp + xx + pad) * grid.cin + c;
                    want[at] = to_bf16(x[(c * h + y) * w + xx]);
                }
            }
        }
        // The baseline loops and, where the CPU has it, the AVX-512 ones.
        for wide in [Wide::Baseline, Wide::detect(true)] {
            for par in [false, true] {
                let mut got = vec![0xA5A5u16; grid.len()];
                fill_channels_last_bf16_with(wide, &x, grid, &mut got, par);
                prop_assert!(got == want, "{:?} par {} {:?}", grid, par, wide);
            }
        }
    }

    /// The bf16 direct convolution (AMX-BF16 only) within the f32 summation bound of the
    /// exact sum of the rounded products, `(k + 1)·2⁻²⁴·Σ|ŵ·x̂|`; its weights read back
    /// exactly.
    #[test]
    fn direct_bf16_conv_is_within_the_bound_of_the_exact_sums(
        c32 in 1usize..3, m in 1usize..40, h in 1usize..10, w in 1usize..30,
        stride in 1usize..3, seed in any::<u32>(),
    ) {
        use crate::kernels::bf16::to_bf16;
        let Some(op) = Bf16::detect() else { return Ok(()) };
        let size = 3;
        let grid = Grid { cin: 32 * c32, h, w, size, stride };
        let cin = grid.cin;
        let mut s = seed | 1;
        let mut rnd = move || {
            s ^= s << 13; s ^= s >> 17; s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        };
        let wt: Vec<u16> = (0..m * cin * 9).map(|_| to_bf16(rnd())).collect();
        let x: Vec<f32> = (0..cin * h * w).map(|_| rnd() * 3.0).collect();
        let dw = DirectWeights::new_bf16(&wt, m, cin, size).unwrap();
        let wf: Vec<f32> = wt.iter().map(|&b| f32::from_bits(u32::from(b) << 16)).collect();
        prop_assert!(dw.matrix_bf16() == wf, "the packed weights read back");
        let mut buf = vec![0u16; grid.len()];
        fill_channels_last_bf16(&x, grid, &mut buf, false);
        let xs = ChannelsLast::new(&buf, grid).unwrap();
        let (oh, ow) = grid.out_hw();
        let mut got = vec![f32::NAN; m * oh * ow];
        let emit = |_: usize, _: usize, sums: &[f32], o: &mut [f32]| o.copy_from_slice(sums);
        conv(op, &dw, xs, &mut got, true, &emit);
        let xr = |v: f32| f64::from(f32::from_bits(u32::from(to_bf16(v)) << 16));
        for c in 0..m {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (mut sum, mut abs) = (0f64, 0f64);
                    for ci in 0..cin {
                        for t in 0..9 {
                            let iy = (oy * stride + t / 3) as isize - 1;
                            let ix = (ox * stride + t % 3) as isize - 1;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let p = f64::from(wf[(c * cin + ci) * 9 + t])
                                * xr(x[(ci * h + iy as usize) * w + ix as usize]);
                            sum += p;
                            abs += p.abs();
                        }
                    }
                    let v = f64::from(got[(c * oh + oy) * ow + ox]);
                    let bound = (cin * 9 + 1) as f64 * 2f64.powi(-24) * abs + 1e-30;
                    prop_assert!((v - sum).abs() <= bound, "{:?} m {}: {} vs {}", grid, m, v, sum);
                }
            }
        }
    }

    /// The direct convolution's sums against the naive one (AMX only): odd sizes, output
    /// channels not a multiple of 32, saturating bytes (255 and −127), both thread modes.
    #[test]
    fn direct_conv_matches_the_naive_sums(
        c64 in 1usize..3, m in 1usize..70, h in 1usize..12, w in 1usize..40,
        size in prop::sample::select(vec![3usize, 5]), stride in 1usize..3,
        seed in any::<u32>(), extreme in any::<bool>(),
    ) {
        let Some(op) = Int8::detect() else { return Ok(()) };
        let grid = Grid { cin: 64 * c64, h, w, size, stride };
        let mut s = seed | 1;
        let mut rnd = move || { s ^= s << 13; s ^= s >> 17; s ^= s << 5; s };
        let q: Vec<i8> = (0..m * grid.cin * size * size)
            .map(|_| if extreme { -127 } else { (rnd() % 255) as i8 })
            .collect();
        let x: Vec<u8> = (0..grid.cin * h * w)
            .map(|_| if extreme { 255 } else { rnd() as u8 })
            .collect();
        let want = naive_conv(&q, &x, m, grid);
        let dw = DirectWeights::new(&q, m, grid.cin, size).unwrap();
        prop_assert!(dw.matrix() == q, "the packed weights read back");
        let mut buf = vec![0u8; grid.len()];
        fill_channels_last(&x, grid, &mut buf, false);
        let xs = ChannelsLast::new(&buf, grid).unwrap();
        for parallel in [false, true] {
            let (oh, ow) = grid.out_hw();
            let mut got = vec![i64::MIN; m * oh * ow];
            let emit = |_: usize, _: usize, sums: &[i32], o: &mut [i64]| {
                for (o, &v) in o.iter_mut().zip(sums) {
                    *o = i64::from(v);
                }
            };
            conv(op, &dw, xs, &mut got, parallel, &emit);
            prop_assert!(got == want, "{:?} m {} parallel {}", grid, m, parallel);
        }
    }

    /// A narrow grid (four channels, a tile row holding 16 pixels: a stem's image) against
    /// the naive sums (AMX only): windows up to 15 wide (the widest a tile row holds), both
    /// strides, images narrower than a tile and wider than a block, saturating bytes, the
    /// packed weights read back, both thread modes.
    #[test]
    fn narrow_conv_matches_the_naive_sums(
        m in 1usize..70, h in 1usize..12, w in 1usize..40,
        size in prop::sample::select(vec![1usize, 3, 7, 15]), stride in 1usize..3,
        seed in any::<u32>(), extreme in any::<bool>(),
    ) {
        let Some(op) = Int8::detect() else { return Ok(()) };
        let grid = Grid { cin: NARROW, h, w, size, stride };
        prop_assert!(grid.narrow() && grid.supported::<u8>());
        let mut s = seed | 1;
        let mut rnd = move || { s ^= s << 13; s ^= s >> 17; s ^= s << 5; s };
        let q: Vec<i8> = (0..m * NARROW * size * size)
            .map(|_| if extreme { -127 } else { (rnd() % 255) as i8 })
            .collect();
        let x: Vec<u8> = (0..NARROW * h * w)
            .map(|_| if extreme { 255 } else { rnd() as u8 })
            .collect();
        let want = naive_conv(&q, &x, m, grid);
        let dw = DirectWeights::new(&q, m, NARROW, size).unwrap();
        prop_assert!(dw.matrix() == q, "the packed weights read back");
        // The bytes after the padded image, which tile rows read only for pixels past the
        // window (or for positions past the output), hold 255: they must meet zero weights.
        let mut buf = vec![0u8; grid.len()];
        fill_channels_last(&x, grid, &mut buf, false);
        let image_end = (h + 2 * grid.pad()) * grid.wp() * NARROW;
        buf[image_end..].fill(255);
        let xs = ChannelsLast::new(&buf, grid).unwrap();
        for parallel in [false, true] {
            let (oh, ow) = grid.out_hw();
            let mut got = vec![i64::MIN; m * oh * ow];
            let emit = |_: usize, _: usize, sums: &[i32], o: &mut [i64]| {
                for (o, &v) in o.iter_mut().zip(sums) {
                    *o = i64::from(v);
                }
            };
            conv(op, &dw, xs, &mut got, parallel, &emit);
            prop_assert!(got == want, "{:?} m {} parallel {}", grid, m, parallel);
        }
    }

    /// The weights of an image of 1–4 channels pack as those of four, the added channels
    /// zero (read back against the widening written out here), in int8 and bf16.
    #[test]
    fn narrow_weights_add_zero_channels(
        m in 1usize..40, cin in 1usize..5, size in prop::sample::select(vec![1usize, 3, 7]),
        seed in any::<u32>(),
    ) {
        let taps = size * size;
        let bits: Vec<u16> = (0..m * cin * taps)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as u16 | 1)
            .collect();
        let mut wide = vec![0u16; m * NARROW * taps];
        for oc in 0..m {
            for ci in 0..cin {
                for t in 0..taps {
                    wide[(oc * NARROW + ci) * taps + t] = bits[(oc * cin + ci) * taps + t];
                }
            }
        }
        let q: Vec<i8> = bits.iter().map(|&b| b as u8 as i8).collect();
        let q_wide: Vec<i8> = wide.iter().map(|&b| b as u8 as i8).collect();
        let dw = DirectWeights::new_narrow(&q, m, cin, size).unwrap();
        prop_assert!(dw.matrix() == q_wide);
        let dw = DirectWeights::new_narrow_bf16(&bits, m, cin, size).unwrap();
        let f_wide: Vec<u32> = wide.iter().map(|&b| u32::from(b) << 16).collect();
        let got: Vec<u32> = dw.matrix_bf16().iter().map(|v| v.to_bits()).collect();
        prop_assert!(got == f_wide);
        prop_assert!(DirectWeights::new_narrow(&q, m, cin, 17).is_none());
        prop_assert!(DirectWeights::new_narrow_bf16(&bits, m, cin, 9).is_none());
    }

    /// A narrow grid is supported only with a window that a tile row holds (16 `u8` pixels, 8
    /// bf16 ones), and its weights pack only then.
    #[test]
    fn narrow_windows_fit_a_tile_row(size in prop::sample::select(vec![7usize, 9, 15, 17])) {
        let grid = Grid { cin: NARROW, h: 20, w: 20, size, stride: 2 };
        prop_assert_eq!(grid.supported::<u8>(), size <= 16);
        prop_assert_eq!(grid.supported::<u16>(), size <= 8);
        let q = vec![1i8; 2 * NARROW * size * size];
        prop_assert_eq!(DirectWeights::new(&q, 2, NARROW, size).is_some(), size <= 16);
    }

    /// The panels of `conv_panels` against the naive sums quantised by the definition of
    /// `DirectBytes` (AMX only): every word of the panels, the columns past the output zero,
    /// the groups past the output channels untouched, and the answer whether a value exceeded
    /// the range; output channels not a multiple of 32, both thread modes.
    #[test]
    fn direct_panels_are_the_naive_sums_quantised(
        c64 in 1usize..3, m in 1usize..70, h in 1usize..10, w in 1usize..30,
        size in prop::sample::select(vec![3usize, 5]), stride in 1usize..3,
        seed in any::<u32>(), relu in any::<bool>(), tight in any::<bool>(),
    ) {
        let Some(op) = Int8::detect() else { return Ok(()) };
        let grid = Grid { cin: 64 * c64, h, w, size, stride };
        let mut s = seed | 1;
        let mut rnd = move || { s ^= s << 13; s ^= s >> 17; s ^= s << 5; s };
        let q: Vec<i8> = (0..m * grid.cin * size * size).map(|_| (rnd() % 255) as i8).collect();
        let x: Vec<u8> = (0..grid.cin * h * w).map(|_| rnd() as u8).collect();
        let want = naive_conv(&q, &x, m, grid);
        let dequant: Vec<f32> = (0..m).map(|_| (1 + rnd() % 100) as f32 * 1e-6).collect();
        let bias: Vec<f32> = (0..m).map(|_| (rnd() % 200) as f32 * 0.01 - 1.0).collect();
        // The range: the largest value (bytes over all of 0..=255), or half of it (so that
        // some values exceed it).
        let (oh, ow) = grid.out_hw();
        let top = (0..m * oh * ow)
            .map(|i| want[i] as i32 as f32 * dequant[i / (oh * ow)] + bias[i / (oh * ow)])
            .fold(0.0f32, f32::max);
        let limit = if tight { top / 2.0 } else { top.max(1e-3) };
        let scale = 255.0 / limit;
        let dw = DirectWeights::new(&q, m, grid.cin, size).unwrap();
        let mut buf = vec![0u8; grid.len()];
        fill_channels_last(&x, grid, &mut buf, false);
        let xs = ChannelsLast::new(&buf, grid).unwrap();
        let n = oh * ow;
        let groups = m.next_multiple_of(32) / 4;
        let k4 = groups.next_multiple_of(16);
        // The expected bytes, channel-major, and whether a value exceeded the range.
        let mut over = false;
        let byte = |c: usize, j: usize, over: &mut bool| -> u8 {
            if c >= m {
                return 0;
            }
            let y = want[c * n + j] as i32 as f32 * dequant[c] + bias[c];
            let y = if relu { y.max(0.0) } else { y };
            *over |= y > limit;
            crate::kernels::int8::quantize_u8(y, scale)
        };
        let mut expect = vec![0xDEAD_BEEFu32; crate::kernels::amx::packed_words(k4 / 16, n)];
        for (at, e) in expect.iter_mut().enumerate() {
            let (panel, rest) = (at / (16 * k4), at % (16 * k4));
            let (g, j) = (rest / 16, panel * 16 + rest % 16);
            if j >= n {
                *e = 0;
            } else if g < groups {
                let b: [u8; 4] = std::array::from_fn(|i| byte(4 * g + i, j, &mut over));
                *e = u32::from_le_bytes(b);
            }
        }
        let bytes = DirectBytes { dequant: &dequant, bias: &bias, relu, scale, limit };
        for parallel in [false, true] {
            let mut got = vec![0xDEAD_BEEFu32; expect.len()];
            let fine = conv_panels(op, &dw, xs, parallel, &bytes, &mut got, k4);
            prop_assert!(fine != over, "{:?} m {} over {}", grid, m, over);
            if !over {
                prop_assert!(got == expect, "{:?} m {} parallel {}", grid, m, parallel);
            }
        }
    }
}
