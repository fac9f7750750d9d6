//! Unit tests of the packing, the quantisation helpers and the widened-range product.

use super::*;

/// One pass of `quantize_max` = `quantize_u8` on every value + `max_or_zero`.
#[test]
fn quantize_max_is_quantize_then_max() {
    for n in [0usize, 1, 15, 16, 17, 40, 333] {
        let x: Vec<f32> = (0..n)
            .map(|i| match i % 9 {
                0 => f32::NAN,
                1 => -2.0,
                _ => (i * 37 % 101) as f32 * 0.173,
            })
            .collect();
        for scale in [0.0f32, 1.0, 2.7] {
            // The baseline copy and, where the CPU has it, the AVX-512 one.
            for wide in [Wide::Baseline, Wide::detect(true)] {
                let mut got = vec![7u8; n];
                let top = quantize_max(wide, &x, scale, &mut got);
                let want: Vec<u8> = x.iter().map(|&v| quantize_u8(v, scale)).collect();
                assert_eq!(got, want, "n {n} scale {scale} {wide:?}");
                assert_eq!(top, max_or_zero(&x), "n {n} {wide:?}");
            }
        }
    }
}

/// The widened product equals the plain quantising product with the scale of
/// `max(limit, max_or_zero(x))` and the epilogue of that range, bit for bit, on every isa
/// this CPU runs, for limits below and above the input's maximum (one pass or two).
#[test]
fn widened_range_is_the_plain_product_at_the_widened_scale() {
    let (m, k, n) = (MR + 5, 37, NR + 19);
    let a: Vec<i8> = (0..m * k)
        .map(|i| ((i * 53 % 255) as i32 - 127) as i8)
        .collect();
    let w = PackedWeights::new(&a, m, k);
    let x: Vec<f32> = (0..k * n)
        .map(|i| {
            if i % 13 == 0 {
                -1.0
            } else {
                (i * 29 % 97) as f32 * 0.05
            }
        })
        .collect();
    let top = max_or_zero(&x);
    for isa in Int8Isa::all_available() {
        for limit in [0.0f32, top * 0.5, top, top * 1.5] {
            let range = limit.max(top);
            let map_for = |range: f32| {
                move |r: usize, c0: usize, sums: &[i32], o: &mut [f32]| {
                    for (j, (o, &v)) in o.iter_mut().zip(sums).enumerate() {
                        *o = v as f32 * range + (r * 1000 + c0 + j) as f32;
                    }
                }
            };
            let mut want = vec![0.0f32; m * n];
            let mut scratch = Vec::new();
            gemm_quantizing_map(
                &w,
                &x,
                scale_for(range),
                n,
                &mut want,
                &mut scratch,
                Parallelism::Sequential,
                isa,
                map_for(range),
            );
            let mut got = vec![f32::NAN; m * n];
            let mut seen = None;
            gemm_quantizing_widened(
                &w,
                &x,
                limit,
                n,
                &mut got,
                &mut scratch,
                Parallelism::Rayon,
                isa,
                |r| {
                    seen = Some(r);
                    map_for(r)
                },
                amx::no_hand_on(),
            );
            assert_eq!(seen, Some(range), "{isa:?} limit {limit}");
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{isa:?} limit {limit}");
        }
    }
}

/// The lanes give the sequential `f32::max` fold from 0, NaN, −0, negative values and
/// every tail length included.
#[test]
fn max_or_zero_is_the_sequential_fold() {
    let specials = [
        f32::NAN,
        -0.0,
        -5.0,
        0.0,
        1e-40,
        3.5,
        f32::INFINITY,
        -f32::INFINITY,
    ];
    for n in 0..70usize {
        for seed in 0..12usize {
            let x: Vec<f32> = (0..n)
                .map(|i| {
                    let j = (i * 7 + seed * 13) % 23;
                    if j < specials.len() && (i + seed) % 3 == 0 {
                        specials[j]
                    } else {
                        (j as f32 - 11.0) * 0.37 + seed as f32
                    }
                })
                .collect();
            let want = x.iter().fold(0.0f32, |m, &v| m.max(v));
            // (The sign of a zero result is not specified by `f32::max`.)
            assert_eq!(max_or_zero(&x), want, "n {n} seed {seed}");
        }
    }
    assert_eq!(max_or_zero(&[f32::NAN; 40]), 0.0);
    assert_eq!(max_or_zero(&[-1.0; 33]), 0.0);
}

/// Packing places every value where the documented layout says.
#[test]
fn packing_follows_the_documented_layout() {
    let (m, k) = (MR + 3, 7);
    let a: Vec<i8> = (0..m * k).map(|i| (i as i32 - 40) as i8).collect();
    let w = PackedWeights::new(&a, m, k);
    let k4 = 2;
    for row in 0..m {
        for kk in 0..8 {
            let word = w.panel(row / MR)[(kk / 4) * MR + row % MR];
            let byte = word.to_le_bytes()[kk % 4] as i8;
            let want = if kk < k { a[row * k + kk] } else { 0 };
            assert_eq!(byte, want, "row {row} k {kk}");
        }
    }
    assert_eq!(w.panels().len() * 4, 2 * k4 * MR * 4);
    // The AMX layout: 16-row tiles of 64 bytes per row, zero-padded.
    let aw = amx_weights(&a, m, k);
    assert_eq!(aw.chunks(), 1);
    for row in 0..32 {
        for kk in 0..64 {
            let want = if row < m && kk < k {
                a[row * k + kk]
            } else {
                0
            };
            let got = aw.at(row, kk / 4).to_le_bytes()[kk % 4] as i8;
            assert_eq!(got, want, "amx row {row} k {kk}");
        }
    }
    // k = 5: the second group of four is partial (rows past k must be zero bytes), and with
    // k4 = 3 the third lies wholly past k; the buffer starts as garbage.
    let (k, n) = (5, NR + 2);
    let b: Vec<u8> = (0..k * n).map(|i| (i * 7 % 251) as u8).collect();
    for wide in [Wide::Baseline, Wide::detect(true)] {
        for k4 in [2usize, 3] {
            let mut out = vec![0xDEAD_BEEFu32; 2 * k4 * NR];
            let top = pack_b(
                wide,
                &b,
                |v| v,
                f32::from,
                k,
                k4,
                n,
                NR,
                &mut out,
                Parallelism::Sequential,
            );
            assert_eq!(top, f32::from(*b.iter().max().unwrap()));
            for kk in 0..4 * k4 {
                for col in 0..2 * NR {
                    let word = out[(col / NR) * k4 * NR + (kk / 4) * NR + col % NR];
                    let byte = word.to_le_bytes()[kk % 4];
                    let want = if kk < k && col < n {
                        b[kk * n + col]
                    } else {
                        0
                    };
                    assert_eq!(byte, want, "{wide:?} k4 {k4} k {kk} col {col}");
                }
            }
        }
    }
}

/// Packing from planes with margins gives the words of packing the im2col matrix built by
/// the definition (`x[ci][y + ky − pad][x + kx − pad]`, zero outside), for every window size
/// up to 7, panel widths with and without a partial 16-lane tail, partial last panels and
/// `k4` padding, with the margins holding zeros and the packed buffer starting as garbage.
#[test]
fn shifted_packing_is_packing_of_the_im2col_matrix() {
    let mut seed = 7u32;
    let mut byte = move || {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (seed >> 16) as u8 | 1
    };
    let wides = [Wide::Baseline, Wide::detect(true)];
    for (cin, h, w, pad) in [
        (1usize, 1usize, 1usize, 0usize),
        (2, 3, 5, 1),
        (3, 7, 4, 1),
        (1, 2, 9, 2),
        (2, 5, 5, 3),
        (5, 14, 14, 1),
        (1, 1, 3, 1),
        (3, 4, 1, 2),
    ] {
        let size = 2 * pad + 1;
        let (n, k) = (h * w, cin * size * size);
        let x: Vec<u8> = (0..cin * n).map(|_| byte()).collect();
        // The definition.
        let mut cols = vec![0u8; k * n];
        for ci in 0..cin {
            for ky in 0..size {
                for kx in 0..size {
                    let kk = (ci * size + ky) * size + kx;
                    for y in 0..h {
                        for xo in 0..w {
                            let (sy, sx) = (
                                (y + ky) as isize - pad as isize,
                                (xo + kx) as isize - pad as isize,
                            );
                            if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                                cols[kk * n + y * w + xo] =
                                    x[ci * n + sy as usize * w + sx as usize];
                            }
                        }
                    }
                }
            }
        }
        // The planes with margins.
        let margin = ShiftedPlanes::margin(w, pad);
        let mut data = vec![0u8; ShiftedPlanes::len(cin, h, w, pad)];
        for ci in 0..cin {
            let at = margin + ci * (n + margin);
            data[at..at + n].copy_from_slice(&x[ci * n..(ci + 1) * n]);
        }
        let planes = ShiftedPlanes::new(&data, cin, h, w, pad).unwrap();
        assert_eq!((planes.k(), planes.n()), (k, n));
        for nr in [8usize, 16, 24, NR] {
            for k4 in [k.div_ceil(4), k.div_ceil(4) + 3] {
                let words = n.div_ceil(nr) * k4 * nr;
                let mut want = vec![0u32; words];
                pack_b(
                    Wide::Baseline,
                    &cols,
                    |v| v,
                    |_| 0.0,
                    k,
                    k4,
                    n,
                    nr,
                    &mut want,
                    Parallelism::Sequential,
                );
                for wide in wides {
                    for par in [Parallelism::Sequential, Parallelism::Rayon] {
                        let mut got = vec![0xdead_beef_u32; words];
                        pack_b_shifted(wide, planes, k4, nr, &mut got, par);
                        assert_eq!(
                            got, want,
                            "cin {cin} {h}x{w} pad {pad} nr {nr} k4 {k4} {wide:?}"
                        );
                    }
                }
            }
        }
    }
}

/// The zero-point quantiser's range against a naive fold (`min(0, min x)`, `max(0, max x)`,
/// NaN ignored) in both copies of its loop: lengths around the 16 lanes, NaN and infinities
/// anywhere, inputs all of one sign (the zero point 0 or 255), and an empty or infinite
/// range (everything to 0).
#[test]
fn zero_point_range_is_the_naive_fold_in_both_loops() {
    for n in [0usize, 1, 5, 15, 16, 17, 31, 48, 333] {
        for kind in 0..6 {
            let x: Vec<f32> = (0..n)
                .map(|i| {
                    let v = ((i * 53 + 7 * kind) % 97) as f32 * 0.061 - 2.3;
                    match (kind, i % 11) {
                        (1, _) => v.abs() + 0.5,
                        (2, _) => -v.abs() - 0.5,
                        (3, 4) => f32::NAN,
                        (4, 9) => f32::INFINITY,
                        // NaN last in every lane: the extremes seen before must survive it.
                        (5, _) if i + 16 >= n => f32::NAN,
                        _ => v,
                    }
                })
                .collect();
            let lo = x.iter().fold(0.0f32, |m, &v| m.min(v));
            let hi = x.iter().fold(0.0f32, |m, &v| m.max(v));
            let width = hi - lo;
            for wide in [Wide::Baseline, Wide::detect(true)] {
                let zp = ZeroPoint::of_with(wide, &x);
                if width > 0.0 && width.is_finite() {
                    let scale = 255.0 / width;
                    assert_eq!(zp.scale, scale, "n {n} kind {kind} {wide:?}");
                    assert_eq!(zp.step, width / 255.0, "n {n} kind {kind} {wide:?}");
                    assert_eq!(zp.zero, quantize_u8(-lo, scale), "n {n} kind {kind}");
                } else {
                    assert_eq!(
                        (zp.scale, zp.step, zp.zero),
                        (0.0, 0.0, 0),
                        "n {n} kind {kind}"
                    );
                }
            }
        }
    }
}
