//! The closed-form WRN-50 path against the generic construction (docs/algorithm.md §10 vector 4), and the
//! generic constructions against a naive, fully materialised reference written here in f64
//! (proptest over shapes, patch sizes and dimensions).

use ndarray::{Array2, Array4};
use patchcore::embedding::{
    embed, embed_closed_form, embed_generic, fast_path_applies, Aggregator,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// ReLU-like random maps: uniform in [0, 1.5), a third of them exactly zero.
fn random_map(rng: &mut ChaCha8Rng, shape: (usize, usize, usize, usize)) -> Array4<f32> {
    Array4::from_shape_simple_fn(shape, || (rng.random::<f32>() * 2.0 - 0.5).max(0.0))
}

fn max_abs_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check_fast_equals_generic(
    n: usize,
    (h, w): (usize, usize),
    (h3, w3): (usize, usize),
    seed: u64,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let l2 = random_map(&mut rng, (n, 512, h, w));
    let l3 = random_map(&mut rng, (n, 1024, h3, w3));
    let layers = [l2.view(), l3.view()];
    let agg = Aggregator::default();
    assert!(fast_path_applies(&[512, 1024], &agg));
    let generic = embed_generic(&layers, &agg).unwrap();
    let fast = embed_closed_form(&layers, &agg).unwrap();
    let auto = embed(&layers, &agg).unwrap();
    assert_eq!(generic.dim(), (n * h * w, 1024));
    let err = max_abs_diff(&fast, &generic);
    eprintln!("{h}×{w} / {h3}×{w3}: max |fast − generic| = {err:e}");
    // Both are float32 computations of the same non-negative combinations with different
    // summation orders (values ≲ 1.5): a few ulp apart. A wrong kernel weight or tap is O(0.1).
    assert!(err <= 1e-5, "max abs difference {err}");
    assert_eq!(auto, fast, "embed must take the closed-form path");
}

/// docs/algorithm.md §10 vector 4: WRN-50-2 at 224² (layer2 512×28², layer3 1024×14²), two images.
#[test]
fn fast_path_equals_generic_wrn50_224() {
    check_fast_equals_generic(2, (28, 28), (14, 14), 7);
}

/// Odd grid (input 225²): 29×29 with 15×15, where the resize is not an exact ×2.
#[test]
fn fast_path_equals_generic_odd_grid() {
    check_fast_equals_generic(1, (29, 29), (15, 15), 11);
}

/// Rectangular grid with a deeper layer that is larger than the grid.
#[test]
fn fast_path_equals_generic_rectangular() {
    check_fast_equals_generic(1, (6, 9), (7, 4), 13);
}

#[test]
fn closed_form_refuses_other_settings() {
    let a = Array4::<f32>::ones((1, 128, 4, 4));
    let b = Array4::<f32>::ones((1, 256, 2, 2));
    assert!(!fast_path_applies(&[128, 256], &Aggregator::default()));
    assert!(embed_closed_form(&[a.view(), b.view()], &Aggregator::default()).is_err());
    let agg = Aggregator::Original {
        patch_size: 5,
        pre_dim: 1024,
        target_dim: 1024,
    };
    assert!(!fast_path_applies(&[512, 1024], &agg));
}

// ---------------------------------------------------------------------------------------------
// Naive reference: materialise everything, f64, straight from the docs/algorithm.md §3 wording.

fn ref_bilinear(src: &[f64], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f64> {
    let axis = |n_in: usize, n_out: usize, o: usize| {
        let src = ((o as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        (i0, i1, src - i0 as f64)
    };
    let mut out = vec![0.0; oh * ow];
    for y in 0..oh {
        let (y0, y1, ly) = axis(h, oh, y);
        for x in 0..ow {
            let (x0, x1, lx) = axis(w, ow, x);
            let v = |yy: usize, xx: usize| src[yy * w + xx];
            out[y * ow + x] = (1.0 - ly) * ((1.0 - lx) * v(y0, x0) + lx * v(y0, x1))
                + ly * ((1.0 - lx) * v(y1, x0) + lx * v(y1, x1));
        }
    }
    out
}

fn ref_pool(v: &[f64], d: usize) -> Vec<f64> {
    let l = v.len() as f64;
    (0..d)
        .map(|i| {
            let s = (i as f64 * l / d as f64).floor() as usize;
            let e = ((i + 1) as f64 * l / d as f64).ceil() as usize;
            v[s..e].iter().sum::<f64>() / (e - s) as f64
        })
        .collect()
}

/// Per layer, per image: `[K][h·w]` component maps on the first layer's grid.
fn aligned(maps: Vec<Vec<f64>>, hl: usize, wl: usize, h: usize, w: usize) -> Vec<Vec<f64>> {
    maps.into_iter()
        .map(|m| {
            if (hl, wl) == (h, w) {
                m
            } else {
                ref_bilinear(&m, hl, wl, h, w)
            }
        })
        .collect()
}

fn ref_orig(layers: &[Array4<f32>], p: usize, pre: usize, tgt: usize) -> Array2<f64> {
    let (n, _, h, w) = layers[0].dim();
    let pad = (p / 2) as isize;
    let mut out = Array2::zeros((n * h * w, tgt));
    for img in 0..n {
        let mut per_layer: Vec<Vec<Vec<f64>>> = Vec::new(); // [layer][component][cell]
        for layer in layers {
            let (_, c, hl, wl) = layer.dim();
            let mut comps = Vec::new();
            for ch in 0..c {
                for ky in 0..p {
                    for kx in 0..p {
                        let mut m = vec![0.0; hl * wl];
                        for y in 0..hl {
                            for x in 0..wl {
                                let sy = y as isize + ky as isize - pad;
                                let sx = x as isize + kx as isize - pad;
                                if sy >= 0 && sx >= 0 && (sy as usize) < hl && (sx as usize) < wl {
                                    m[y * wl + x] =
                                        layer[[img, ch, sy as usize, sx as usize]] as f64;
                                }
                            }
                        }
                        comps.push(m);
                    }
                }
            }
            per_layer.push(aligned(comps, hl, wl, h, w));
        }
        for cell in 0..h * w {
            let mut cat = Vec::new();
            for comps in &per_layer {
                let u: Vec<f64> = comps.iter().map(|m| m[cell]).collect();
                cat.extend(ref_pool(&u, pre));
            }
            for (j, v) in ref_pool(&cat, tgt).into_iter().enumerate() {
                out[[img * h * w + cell, j]] = v;
            }
        }
    }
    out
}

fn ref_average(layers: &[Array4<f32>], p: usize, tgt: Option<usize>) -> Array2<f64> {
    let (n, _, h, w) = layers[0].dim();
    let pad = (p / 2) as isize;
    let total: usize = layers.iter().map(|l| l.dim().1).sum();
    let d = tgt.unwrap_or(total);
    let mut out = Array2::zeros((n * h * w, d));
    for img in 0..n {
        let mut chans: Vec<Vec<f64>> = Vec::new();
        for layer in layers {
            let (_, c, hl, wl) = layer.dim();
            let mut pooled = Vec::new();
            for ch in 0..c {
                let mut m = vec![0.0; hl * wl];
                for y in 0..hl {
                    for x in 0..wl {
                        let mut s = 0.0;
                        for dy in -pad..=pad {
                            for dx in -pad..=pad {
                                let (yy, xx) = (y as isize + dy, x as isize + dx);
                                if yy >= 0 && xx >= 0 && (yy as usize) < hl && (xx as usize) < wl {
                                    s += layer[[img, ch, yy as usize, xx as usize]] as f64;
                                }
                            }
                        }
                        m[y * wl + x] = s / (p * p) as f64;
                    }
                }
                pooled.push(m);
            }
            chans.extend(aligned(pooled, hl, wl, h, w));
        }
        for cell in 0..h * w {
            let v: Vec<f64> = chans.iter().map(|m| m[cell]).collect();
            let v = match tgt {
                Some(t) => ref_pool(&v, t),
                None => v,
            };
            for (j, x) in v.into_iter().enumerate() {
                out[[img * h * w + cell, j]] = x;
            }
        }
    }
    out
}

fn assert_close(got: &Array2<f32>, want: &Array2<f64>) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.dim(), want.dim());
    for ((r, c), &e) in want.indexed_iter() {
        let g = got[[r, c]] as f64;
        // Non-negative inputs and weights: float32 error is a few ulp relative (see
        // embedding_parity.rs); 1e-5 relative leaves room, wrong indices are O(1).
        prop_assert!(
            (g - e).abs() <= 1e-5 * e.abs() + 1e-7,
            "row {} col {}: got {}, reference {}",
            r,
            c,
            g,
            e
        );
    }
    Ok(())
}

fn layer_shapes() -> impl Strategy<Value = Vec<(usize, usize, usize)>> {
    prop::collection::vec((1usize..=4, 1usize..=6, 1usize..=6), 1..=3)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generic_orig_matches_naive_reference(
        n in 1usize..=2,
        shapes in layer_shapes(),
        p in prop::sample::select(vec![1usize, 3, 5]),
        pre in 1usize..=24,
        tgt in 1usize..=24,
        seed in any::<u64>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let layers: Vec<_> = shapes.iter().map(|&(c, h, w)| random_map(&mut rng, (n, c, h, w))).collect();
        let views: Vec<_> = layers.iter().map(|l| l.view()).collect();
        let agg = Aggregator::Original { patch_size: p, pre_dim: pre, target_dim: tgt };
        let got = embed(&views, &agg).unwrap();
        assert_close(&got, &ref_orig(&layers, p, pre, tgt))?;
    }

    #[test]
    fn average_matches_naive_reference(
        n in 1usize..=2,
        shapes in layer_shapes(),
        p in prop::sample::select(vec![1usize, 3, 5]),
        tgt in prop::option::of(1usize..=16),
        seed in any::<u64>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let layers: Vec<_> = shapes.iter().map(|&(c, h, w)| random_map(&mut rng, (n, c, h, w))).collect();
        let views: Vec<_> = layers.iter().map(|l| l.view()).collect();
        let agg = Aggregator::Average { patch_size: p, target_dim: tgt };
        let got = embed(&views, &agg).unwrap();
        assert_close(&got, &ref_average(&layers, p, tgt))?;
    }
}
