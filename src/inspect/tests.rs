use super::*;
use crate::preprocess::Resize;
use ndarray::array;

#[test]
fn regions_of_a_hand_built_map() {
    // Two blobs at threshold 0.5: an L of three pixels (peak 0.9) and a diagonal pair that
    // 8-connectivity joins (peak 0.7); 0.49 is just below and stays background.
    let m = array![
        [0.0f32, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.6, 0.0, 0.0, 0.49, 0.0],
        [0.0, 0.9, 0.5, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.7, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.55],
    ];
    let r = regions(m.view(), 0.5);
    assert_eq!(r.len(), 2);
    assert_eq!(
        r[0].bbox,
        BBox {
            y0: 1,
            x0: 1,
            y1: 3,
            x1: 3
        }
    );
    assert_eq!((r[0].area, r[0].peak), (3, 0.9));
    assert_eq!(
        r[1].bbox,
        BBox {
            y0: 3,
            x0: 4,
            y1: 5,
            x1: 6
        }
    );
    assert_eq!((r[1].area, r[1].peak), (2, 0.7));
    // Outline vertices lie half-way between inside and outside pixel centres: within half a
    // pixel of the box; the L's outline passes (x, y) = (2.5, 2), between pixel [2, 2] (0.5,
    // inside) and [2, 3] (0, outside); the pair's passes (4, 2.5), between [3, 4] and [2, 4].
    for reg in &r {
        assert!(!reg.outline.is_empty());
        for &(x, y) in &reg.outline {
            assert!(x >= reg.bbox.x0 as f32 - 0.5 && x <= reg.bbox.x1 as f32 - 0.5);
            assert!(y >= reg.bbox.y0 as f32 - 0.5 && y <= reg.bbox.y1 as f32 - 0.5);
        }
    }
    assert!(r[0].outline.contains(&(2.5, 2.0)));
    assert!(r[1].outline.contains(&(4.0, 2.5)));
}

#[test]
fn regions_map_back_through_resize_and_crop() {
    // Original 12 × 20 (h × w); shorter side resized to 6 → 6 × 10, centre crop 4 × 4 at
    // top 1, left 3 → in original pixels the crop is rows 2..10, columns 6..14 (scale 2).
    // Map 4 × 4 with a single 1 at [1, 2]. Bilinear with aligned centres:
    // src_y = (y + 0.5 − 2)·4/8 − 0.5 = (y − 2)/2 − 0.25, src_x = (x − 6)/2 − 0.25; the weight
    // of cell (1, 2) is (1 − |src_y − 1|)(1 − |src_x − 2|): 0.75·0.75 = 0.5625 at y ∈ {4, 5},
    // x ∈ {10, 11}; next ones 0.75·0.25 = 0.1875.
    let cfg = PreprocessConfig {
        resize: Resize::ShorterSide(6),
        crop: Some((4, 4)),
        ..PreprocessConfig::default()
    };
    let mut m = Array2::<f32>::zeros((4, 4));
    m[[1, 2]] = 1.0;
    let ins = Inspection::from_map(0.8, Some(m.view()), &cfg, 12, 20, Some(0.5)).unwrap();
    let full = ins.anomaly_map.as_ref().unwrap();
    assert_eq!(full.dim(), (12, 20));
    assert_eq!(full[[4, 10]], 0.5625);
    assert_eq!(full[[3, 10]], 0.1875);
    assert_eq!(full[[4, 12]], 0.1875);
    assert_eq!(ins.regions.len(), 1);
    let r = &ins.regions[0];
    assert_eq!(
        r.bbox,
        BBox {
            y0: 4,
            x0: 10,
            y1: 6,
            x1: 12
        }
    );
    assert_eq!((r.area, r.peak), (4, 0.5625));
    assert_eq!(ins.anomalous, Some(true));
    // Without a threshold: no decision, no regions.
    let ins = Inspection::from_map(0.8, Some(m.view()), &cfg, 12, 20, None).unwrap();
    assert_eq!((ins.anomalous, ins.regions.len()), (None, 0));
}

#[test]
fn threshold_scale_survives_zero_and_subnormal_thresholds() {
    let s = threshold_scale(2.0).unwrap();
    assert_eq!((s.min, s.max), (1.0, 3.0));
    for t in [0.0f32, f32::from_bits(1), -1e-30, 1e-30] {
        let s = threshold_scale(t).unwrap();
        assert!(s.min < t && t < s.max, "{t}: {s:?}");
        assert_eq!(s.unit(t), 0.5, "{t}");
    }
    assert!(threshold_scale(f32::NAN).is_err());
}

#[test]
fn render_draws_outlines_over_the_heat_map() {
    let mut m = Array2::<f32>::zeros((8, 8));
    for y in 2..6 {
        for x in 2..6 {
            m[[y, x]] = 2.0;
        }
    }
    let cfg = PreprocessConfig {
        resize: Resize::None,
        crop: None,
        ..PreprocessConfig::default()
    };
    let ins = Inspection::from_map(2.0, Some(m.view()), &cfg, 8, 8, Some(1.0)).unwrap();
    let img = RgbImage::from_pixel(8, 8, Rgb([0, 0, 0]));
    let no_lines = RenderOptions {
        outlines: false,
        ..RenderOptions::default()
    };
    let pic = ins.render(&img, &no_lines).unwrap();
    // Scale [0.5, 1.5]: 0 is the coldest colour (jet(0) = [0, 0, 128]), 2 the hottest
    // ([128, 0, 0]), blended at 0.45 over black.
    assert_eq!(*pic.get_pixel(0, 0), Rgb([0, 0, 58]));
    assert_eq!(*pic.get_pixel(3, 3), Rgb([58, 0, 0]));
    let pic = ins.render(&img, &RenderOptions::default()).unwrap();
    // The outline of the 4 × 4 square runs half a pixel outside it: through (2, 1.5) →
    // rounded onto pixel (2, 2).
    assert_eq!(*pic.get_pixel(3, 2), Rgb([255, 255, 255]));
    assert_eq!(*pic.get_pixel(0, 0), Rgb([0, 0, 58]));
}
