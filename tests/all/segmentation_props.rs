//! Property tests for segmentation against brute-force references written here.

use ndarray::Array2;
use patchcore::segmentation::{connected_components, contours, contours_at, Connectivity};
use proptest::prelude::*;

/// Naive labelling by repeated min-label propagation. Labels are then ranked by their
/// smallest raster index, which is the raster order of each region's first pixel.
fn naive_label(m: &Array2<bool>, eight: bool) -> Array2<u32> {
    let (h, w) = m.dim();
    let mut lab = Array2::<usize>::zeros((h, w));
    for ((y, x), &b) in m.indexed_iter() {
        if b {
            lab[[y, x]] = y * w + x + 1;
        }
    }
    loop {
        let mut changed = false;
        for y in 0..h {
            for x in 0..w {
                if lab[[y, x]] == 0 {
                    continue;
                }
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        if !eight && dy != 0 && dx != 0 {
                            continue;
                        }
                        let (ny, nx) = (y as i64 + dy, x as i64 + dx);
                        if ny < 0 || nx < 0 || ny >= h as i64 || nx >= w as i64 {
                            continue;
                        }
                        let o = lab[[ny as usize, nx as usize]];
                        if o != 0 && o < lab[[y, x]] {
                            lab[[y, x]] = o;
                            changed = true;
                        }
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut ids: Vec<usize> = lab.iter().copied().filter(|&l| l != 0).collect();
    ids.sort_unstable();
    ids.dedup();
    lab.mapv(|l| {
        if l == 0 {
            0
        } else {
            ids.binary_search(&l).unwrap() as u32 + 1
        }
    })
}

fn count_labels(l: &Array2<u32>) -> usize {
    l.iter().copied().max().unwrap_or(0) as usize
}

/// Enclosed foreground area per marching-squares cell of the 0/1 field (cell corners are four
/// pixel centres; corner triangles have legs ½; saddles keep the foreground connected).
fn cell_area(n_fg: usize, saddle: bool) -> f64 {
    match (n_fg, saddle) {
        (0, _) => 0.0,
        (1, _) => 0.125,
        (2, false) => 0.5,
        (2, true) => 0.75,
        (3, _) => 0.875,
        _ => 1.0,
    }
}

fn masks() -> impl Strategy<Value = Array2<bool>> {
    (1usize..9, 1usize..9, 0.2f64..0.8).prop_flat_map(|(h, w, p)| {
        prop::collection::vec(prop::bool::weighted(p), h * w)
            .prop_map(move |v| Array2::from_shape_vec((h, w), v).unwrap())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn components_match_naive(m in masks()) {
        for (conn, eight) in [(Connectivity::Eight, true), (Connectivity::Four, false)] {
            let cc = connected_components(m.view(), conn);
            let want = naive_label(&m, eight);
            prop_assert_eq!(&cc.labels, &want);
            prop_assert_eq!(cc.regions.len(), count_labels(&want));
            for r in &cc.regions {
                let px: Vec<(usize, usize)> = want
                    .indexed_iter()
                    .filter(|(_, &l)| l == r.label)
                    .map(|(p, _)| p)
                    .collect();
                prop_assert_eq!(r.area, px.len());
                prop_assert_eq!(r.bbox.y0, px.iter().map(|p| p.0).min().unwrap());
                prop_assert_eq!(r.bbox.y1, px.iter().map(|p| p.0).max().unwrap() + 1);
                prop_assert_eq!(r.bbox.x0, px.iter().map(|p| p.1).min().unwrap());
                prop_assert_eq!(r.bbox.x1, px.iter().map(|p| p.1).max().unwrap() + 1);
                let cy = px.iter().map(|p| p.0 as f64).sum::<f64>() / px.len() as f64;
                prop_assert!((r.centroid.0 - cy).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn contour_topology_and_area(m in masks()) {
        let (h, w) = m.dim();
        let cs = contours(m.view());
        // One outer contour per 8-connected foreground region.
        let outer = cs.iter().filter(|c| !c.is_hole).count();
        prop_assert_eq!(outer, count_labels(&naive_label(&m, true)));
        // One hole per 4-connected background component of the zero-padded image, minus the
        // component that contains the padding.
        let padded_bg = Array2::from_shape_fn((h + 2, w + 2), |(y, x)| {
            !(y >= 1 && x >= 1 && y <= h && x <= w && m[[y - 1, x - 1]])
        });
        let holes = cs.iter().filter(|c| c.is_hole).count();
        prop_assert_eq!(holes, count_labels(&naive_label(&padded_bg, false)) - 1);
        // Total signed area = per-cell enclosed areas of the padded field.
        let fg = |y: usize, x: usize| y >= 1 && x >= 1 && y <= h && x <= w && m[[y - 1, x - 1]];
        let mut want = 0.0;
        for y in 0..h + 1 {
            for x in 0..w + 1 {
                let (a, b, c, d) = (fg(y, x), fg(y, x + 1), fg(y + 1, x + 1), fg(y + 1, x));
                let n = [a, b, c, d].iter().filter(|&&v| v).count();
                let saddle = n == 2 && a == c;
                want += cell_area(n, saddle);
            }
        }
        let got: f64 = cs.iter().map(|c| c.signed_area()).sum();
        prop_assert!((got - want).abs() < 1e-9, "{} vs {}", got, want);
        for c in &cs {
            prop_assert!(c.closed);
            prop_assert!(c.points.len() >= 4);
            // Every vertex is a midpoint between two 4-neighbouring pixel centres.
            for &(x, y) in &c.points {
                let fx = (x * 2.0).rem_euclid(2.0);
                let fy = (y * 2.0).rem_euclid(2.0);
                prop_assert!((fx == 1.0) != (fy == 1.0), "({}, {})", x, y);
            }
        }
        // The float-map variant on the 0/1 field at level 0.5 is the same.
        let f = m.mapv(|b| if b { 1.0f32 } else { 0.0 });
        prop_assert_eq!(contours_at(f.view(), 0.5), cs);
    }
}
