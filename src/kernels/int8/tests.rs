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
            let mut got = vec![7u8; n];
            let top = quantize_max(&x, scale, &mut got);
            let want: Vec<u8> = x.iter().map(|&v| quantize_u8(v, scale)).collect();
            assert_eq!(got, want, "n {n} scale {scale}");
            assert_eq!(top, max_or_zero(&x), "n {n}");
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
    let (k, n) = (5, NR + 2);
    let b: Vec<u8> = (0..k * n).map(|i| (i * 7 % 251) as u8).collect();
    let mut out = vec![0u32; 2 * 2 * NR];
    let top = pack_b(
        Wide::Baseline,
        &b,
        |v| v,
        f32::from,
        k,
        2,
        n,
        NR,
        &mut out,
        Parallelism::Sequential,
    );
    assert_eq!(top, f32::from(*b.iter().max().unwrap()));
    for kk in 0..8 {
        for col in 0..2 * NR {
            let word = out[(col / NR) * 2 * NR + (kk / 4) * NR + col % NR];
            let byte = word.to_le_bytes()[kk % 4];
            let want = if kk < k && col < n {
                b[kk * n + col]
            } else {
                0
            };
            assert_eq!(byte, want, "k {kk} col {col}");
        }
    }
}
