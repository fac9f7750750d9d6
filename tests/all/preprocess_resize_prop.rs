//! Property tests of the antialiased resize against a straightforward floating-point reference
//! written from the definition of PIL's bilinear resampling (no fixed point, no windowing).

use image::RgbImage;
use patchcore::preprocess::{preprocess, resize_antialiased, PreprocessConfig, Resize};
use proptest::prelude::*;

/// Normalised triangle-filter weights `(first index, weights)` for each output index.
fn reference_weights(n_in: usize, n_out: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = n_in as f64 / n_out as f64;
    let fs = scale.max(1.0);
    (0..n_out)
        .map(|i| {
            let c = (i as f64 + 0.5) * scale;
            let lo = ((c - fs + 0.5).trunc()).max(0.0) as usize;
            let hi = ((c + fs + 0.5).trunc() as usize).min(n_in);
            let w: Vec<f64> = (lo..hi)
                .map(|j| (1.0 - ((j as f64 + 0.5 - c) / fs).abs()).max(0.0))
                .collect();
            let s: f64 = w.iter().sum();
            (lo, w.into_iter().map(|x| x / s).collect())
        })
        .collect()
}

/// Horizontal pass (rounded to u8) then vertical pass (rounded), in f64.
fn reference_resize(img: &RgbImage, oh: usize, ow: usize) -> Vec<u8> {
    let (h, w) = (img.height() as usize, img.width() as usize);
    let px = |y: usize, x: usize, c: usize| f64::from(img.get_pixel(x as u32, y as u32).0[c]);
    let round = |v: f64| (v + 0.5).floor().clamp(0.0, 255.0) as u8;
    let tmp: Vec<u8> = if ow != w {
        let hw = reference_weights(w, ow);
        let mut t = vec![0u8; h * ow * 3];
        for y in 0..h {
            for (x, (lo, ws)) in hw.iter().enumerate() {
                for c in 0..3 {
                    let v: f64 = ws
                        .iter()
                        .enumerate()
                        .map(|(k, wk)| wk * px(y, lo + k, c))
                        .sum();
                    t[(y * ow + x) * 3 + c] = round(v);
                }
            }
        }
        t
    } else {
        img.as_raw().clone()
    };
    if oh == h {
        return tmp;
    }
    let vw = reference_weights(h, oh);
    let mut out = vec![0u8; oh * ow * 3];
    for (y, (lo, ws)) in vw.iter().enumerate() {
        for x in 0..ow {
            for c in 0..3 {
                let v: f64 = ws
                    .iter()
                    .enumerate()
                    .map(|(k, wk)| wk * f64::from(tmp[((lo + k) * ow + x) * 3 + c]))
                    .sum();
                out[(y * ow + x) * 3 + c] = round(v);
            }
        }
    }
    out
}

fn image_strategy() -> impl Strategy<Value = RgbImage> {
    (1usize..40, 1usize..40).prop_flat_map(|(h, w)| {
        proptest::collection::vec(any::<u8>(), h * w * 3)
            .prop_map(move |v| RgbImage::from_raw(w as u32, h as u32, v).unwrap())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Fixed point vs f64: only (near-)exact rounding ties can differ, by one level per pass.
    /// With both passes a tie in the 8-bit intermediate (±1, which the non-negative weights
    /// summing to 1 pass on as at most ±1) can meet a tie in the vertical pass: at most 2.
    #[test]
    fn resize_matches_float_reference(img in image_strategy(), oh in 1usize..50, ow in 1usize..50) {
        let got = resize_antialiased(&img, oh, ow);
        prop_assert_eq!((got.height() as usize, got.width() as usize), (oh, ow));
        let want = reference_resize(&img, oh, ow);
        let max = got.as_raw().iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
        let passes = u8::from(oh != img.height() as usize) + u8::from(ow != img.width() as usize);
        prop_assert!(max <= passes.max(1), "max |Δ| = {} with {} resampling passes", max, passes);
    }

    /// Resizing within a crop window gives the same pixels as a full resize then a crop.
    #[test]
    fn cropped_preprocess_equals_resize_then_crop(
        img in image_strategy(), oh in 1usize..50, ow in 1usize..50, fh in 0.0f64..1.0, fw in 0.0f64..1.0,
    ) {
        let ch = ((oh as f64 * fh) as usize).max(1);
        let cw = ((ow as f64 * fw) as usize).max(1);
        let cfg = PreprocessConfig {
            resize: Resize::Exact { height: oh, width: ow },
            crop: Some((ch, cw)),
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let x = preprocess(&img, &cfg).unwrap();
        let full = resize_antialiased(&img, oh, ow);
        // torchvision CenterCrop offsets: round((H − ch)/2) with round-half-to-even.
        let half_even = |d: usize| -> usize {
            let f = d as f64 / 2.0;
            let r = f.round();
            if (f - f.trunc() - 0.5).abs() < 1e-12 && r as usize % 2 == 1 { r as usize - 1 } else { r as usize }
        };
        let (top, left) = (half_even(oh - ch), half_even(ow - cw));
        for c in 0..3 {
            for y in 0..ch {
                for xx in 0..cw {
                    let want = f32::from(full.get_pixel((left + xx) as u32, (top + y) as u32).0[c]) / 255.0;
                    prop_assert_eq!(x[[c, y, xx]], want);
                }
            }
        }
    }
}

#[test]
fn constant_images_stay_constant() {
    for (h, w, oh, ow) in [(31, 17, 5, 40), (900, 900, 256, 256), (3, 2, 101, 99)] {
        let img = RgbImage::from_pixel(w, h, image::Rgb([7, 128, 255]));
        let out = resize_antialiased(&img, oh, ow);
        assert!(out.pixels().all(|p| p.0 == [7, 128, 255]));
    }
}

#[test]
fn masks_all_or_nothing() {
    let cfg = PreprocessConfig::default();
    let on = patchcore::preprocess::preprocess_mask(
        &image::GrayImage::from_pixel(300, 260, image::Luma([255])),
        &cfg,
    )
    .unwrap();
    assert!(on.iter().all(|&b| b));
    let off = patchcore::preprocess::preprocess_mask(
        &image::GrayImage::from_pixel(300, 260, image::Luma([254])),
        &cfg,
    )
    .unwrap();
    assert!(off.iter().all(|&b| !b));
    assert_eq!(on.dim(), (224, 224));
}
