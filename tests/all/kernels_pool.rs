//! Max pooling against a naive reference that pads with −∞ (PyTorch semantics); max is exact,
//! so results must be bit-identical.

use patchcore::kernels::pool::{maxpool2d, maxpool_out};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[allow(clippy::too_many_arguments)]
fn naive(x: &[f32], c: usize, h: usize, w: usize, k: usize, s: usize, p: usize) -> Vec<f32> {
    let (hp, wp) = (h + 2 * p, w + 2 * p);
    let mut padded = vec![f32::NEG_INFINITY; c * hp * wp];
    for ch in 0..c {
        for y in 0..h {
            for xx in 0..w {
                padded[(ch * hp + y + p) * wp + xx + p] = x[(ch * h + y) * w + xx];
            }
        }
    }
    let (oh, ow) = ((hp - k) / s + 1, (wp - k) / s + 1);
    let mut out = vec![0.0; c * oh * ow];
    for ch in 0..c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut m = f32::NEG_INFINITY;
                for dy in 0..k {
                    for dx in 0..k {
                        m = m.max(padded[(ch * hp + oy * s + dy) * wp + ox * s + dx]);
                    }
                }
                out[(ch * oh + oy) * ow + ox] = m;
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn check(c: usize, h: usize, w: usize, k: usize, s: usize, p: usize, seed: u64, negative: bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // All-negative inputs make sure zero padding would be caught.
    let x: Vec<f32> = (0..c * h * w)
        .map(|_| {
            let v = rng.random_range(-1.0f32..1.0);
            if negative {
                -v.abs() - 0.5
            } else {
                v
            }
        })
        .collect();
    let (oh, ow) = (maxpool_out(h, k, s, p), maxpool_out(w, k, s, p));
    let mut out = vec![f32::NAN; c * oh * ow];
    maxpool2d(&x, c, h, w, k, s, p, &mut out);
    assert_eq!(
        out,
        naive(&x, c, h, w, k, s, p),
        "c={c} h={h} w={w} k={k} s={s} p={p}"
    );
}

#[test]
fn resnet_stem_pool() {
    // 3×3 / 2 / pad 1 on the 112² stem output; large enough for the parallel path.
    check(64, 112, 112, 3, 2, 1, 1, false);
    check(64, 112, 112, 3, 2, 1, 2, true);
    assert_eq!(maxpool_out(112, 3, 2, 1), 56);
}

#[test]
fn hand_computed() {
    // 1×3×3, 3×3/2 pad 1 → 2×2; each output is the max of its (clipped) window.
    let x = [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -9.0];
    let mut out = [0.0; 4];
    maxpool2d(&x, 1, 3, 3, 3, 2, 1, &mut out);
    assert_eq!(out, [-1.0, -2.0, -4.0, -5.0]);
}

#[test]
#[should_panic(expected = "padding")]
fn padding_not_smaller_than_window_panics() {
    let mut out = [0.0; 16];
    maxpool2d(&[0.0; 4], 1, 2, 2, 2, 1, 2, &mut out);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn matches_naive(c in 1usize..5, h in 1usize..20, w in 1usize..20, k in 1usize..6,
                     s in 1usize..4, p in 0usize..3, seed in 0u64..1000, negative: bool) {
        prop_assume!(p < k && h + 2 * p >= k && w + 2 * p >= k);
        check(c, h, w, k, s, p, seed, negative);
    }

    /// The stem's 3×3 / 2 / pad 1 has its own row loop: every width from 1 (odd widths lose
    /// the last window's right cell).
    #[test]
    fn stem_window_matches_naive(c in prop::sample::select(vec![1usize, 3, 20]),
                                 h in 1usize..12, w in 1usize..70, seed in 0u64..1000,
                                 negative: bool) {
        check(c, h, w, 3, 2, 1, seed, negative);
    }
}
