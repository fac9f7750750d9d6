//! Hand-checked segmentation cases: components, bounding boxes, marching-squares contours.

use ndarray::{array, Array2};
use patchcore::segmentation::{
    connected_components, connected_components_with_scores, contours, contours_at, threshold_map,
    BBox, Connectivity,
};

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-9, "{a} vs {b}");
}

fn square(n: usize, y0: usize, x0: usize, k: usize) -> Array2<bool> {
    Array2::from_shape_fn((n, n), |(y, x)| {
        (y0..y0 + k).contains(&y) && (x0..x0 + k).contains(&x)
    })
}

#[test]
fn filled_square() {
    let m = square(6, 1, 2, 3);
    let cc = connected_components(m.view(), Connectivity::Eight);
    assert_eq!(cc.regions.len(), 1);
    let r = &cc.regions[0];
    assert_eq!((r.label, r.area), (1, 9));
    assert_eq!(
        r.bbox,
        BBox {
            y0: 1,
            x0: 2,
            y1: 4,
            x1: 5
        }
    );
    assert_eq!((r.bbox.height(), r.bbox.width()), (3, 3));
    assert_eq!(r.centroid, (2.0, 3.0));
    assert_eq!(r.max_score, None);
    assert_eq!(cc.labels.iter().filter(|&&l| l == 1).count(), 9);

    let cs = contours(m.view());
    assert_eq!(cs.len(), 1);
    let c = &cs[0];
    assert!(c.closed && !c.is_hole);
    // The pixel square [1.5, 4.5] × [0.5, 3.5] (x × y) with four 0.5-leg corner triangles cut
    // off: 9 − 4 · 0.125 = 8.5.
    close(c.area, 8.5);
    // 4 sides × 3 midpoints = 12 vertices.
    assert_eq!(c.points.len(), 12);
    let xs: Vec<f32> = c.points.iter().map(|p| p.0).collect();
    let ys: Vec<f32> = c.points.iter().map(|p| p.1).collect();
    assert_eq!(xs.iter().cloned().fold(f32::MAX, f32::min), 1.5);
    assert_eq!(xs.iter().cloned().fold(f32::MIN, f32::max), 4.5);
    assert_eq!(ys.iter().cloned().fold(f32::MAX, f32::min), 0.5);
    assert_eq!(ys.iter().cloned().fold(f32::MIN, f32::max), 3.5);
    assert!(c.points.contains(&(2.0, 0.5)) && c.points.contains(&(1.5, 1.0)));
    // k×k squares: area k² − 0.5.
    for k in 1..6 {
        let cs = contours(square(7, 1, 1, k).view());
        assert_eq!(cs.len(), 1);
        close(cs[0].area, (k * k) as f64 - 0.5);
    }
}

#[test]
fn single_pixel_is_a_clockwise_diamond() {
    let mut m = Array2::from_elem((3, 3), false);
    m[[1, 1]] = true;
    let cs = contours(m.view());
    assert_eq!(cs.len(), 1);
    let p = &cs[0].points;
    assert_eq!(p.len(), 4);
    // Raster-first vertex is the top one; clockwise on screen (y down): top, right, bottom,
    // left.
    assert_eq!(p, &vec![(1.0, 0.5), (1.5, 1.0), (1.0, 1.5), (0.5, 1.0)]);
    close(cs[0].signed_area(), 0.5);
}

#[test]
fn ring_with_hole() {
    // 3×3 ring around one background pixel.
    let mut m = square(5, 1, 1, 3);
    m[[2, 2]] = false;
    let cc = connected_components(m.view(), Connectivity::Eight);
    assert_eq!(cc.regions.len(), 1);
    assert_eq!(cc.regions[0].area, 8);
    assert_eq!(cc.regions[0].centroid, (2.0, 2.0));
    assert_eq!(
        connected_components(m.view(), Connectivity::Four)
            .regions
            .len(),
        1
    );
    let cs = contours(m.view());
    assert_eq!(cs.len(), 2);
    let outer = cs.iter().find(|c| !c.is_hole).unwrap();
    let hole = cs.iter().find(|c| c.is_hole).unwrap();
    close(outer.area, 8.5);
    close(hole.area, 0.5); // the diamond around pixel (2, 2)
    close(outer.signed_area(), 8.5);
    close(hole.signed_area(), -0.5);
    // Hole vertices run counter-clockwise on screen: top, left, bottom, right.
    let mut hp = hole.points.clone();
    let start = hp.iter().position(|&p| p == (2.0, 1.5)).unwrap();
    hp.rotate_left(start);
    assert_eq!(hp, vec![(2.0, 1.5), (1.5, 2.0), (2.0, 2.5), (2.5, 2.0)]);

    // 5×5 ring around a 3×3 hole: outer 24.5, hole 8.5, difference = 16 pixels.
    let mut m = square(7, 1, 1, 5);
    for y in 2..5 {
        for x in 2..5 {
            m[[y, x]] = false;
        }
    }
    let cs = contours(m.view());
    assert_eq!(cs.len(), 2);
    let total: f64 = cs.iter().map(|c| c.signed_area()).sum();
    close(total, 16.0);
    close(cs.iter().find(|c| c.is_hole).unwrap().area, 8.5);
}

#[test]
fn diagonal_touching_pixels() {
    let m = array![[true, false], [false, true]];
    assert_eq!(
        connected_components(m.view(), Connectivity::Eight)
            .regions
            .len(),
        1
    );
    let four = connected_components(m.view(), Connectivity::Four);
    assert_eq!(four.regions.len(), 2);
    assert_eq!(four.labels, array![[1, 0], [0, 2]]);
    // Contours keep the foreground 8-connected: one contour through the saddle cell, the
    // parallelogram (0,−.5) (1.5,1) (1,1.5) (−.5,0) with area 0.5 + 0.5 + 0.5 (two diamonds
    // plus the saddle cell's middle square).
    let cs = contours(m.view());
    assert_eq!(cs.len(), 1);
    close(cs[0].area, 1.5);
    assert!(!cs[0].is_hole);
    let mut got = cs[0].points.clone();
    got.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut want = vec![
        (0.0, -0.5),
        (0.5, 0.0),
        (1.0, 0.5),
        (1.5, 1.0),
        (1.0, 1.5),
        (0.5, 1.0),
        (0.0, 0.5),
        (-0.5, 0.0),
    ];
    want.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(got, want);
    // The other diagonal too.
    let m = array![[false, true], [true, false]];
    let cs = contours(m.view());
    assert_eq!(cs.len(), 1);
    close(cs[0].area, 1.5);
}

#[test]
fn empty_and_full_maps() {
    let m = Array2::from_elem((3, 4), false);
    assert!(connected_components(m.view(), Connectivity::Eight)
        .regions
        .is_empty());
    assert!(contours(m.view()).is_empty());
    let e = Array2::from_elem((0, 4), false);
    assert!(contours(e.view()).is_empty());
    assert!(connected_components(e.view(), Connectivity::Eight)
        .regions
        .is_empty());

    let m = Array2::from_elem((3, 4), true);
    let cc = connected_components(m.view(), Connectivity::Four);
    assert_eq!(cc.regions.len(), 1);
    assert_eq!(cc.regions[0].area, 12);
    assert_eq!(
        cc.regions[0].bbox,
        BBox {
            y0: 0,
            x0: 0,
            y1: 3,
            x1: 4
        }
    );
    let cs = contours(m.view());
    assert_eq!(cs.len(), 1);
    close(cs[0].area, 12.0 - 0.5);
    // Around the border, half a pixel outside.
    for &(x, y) in &cs[0].points {
        assert!(x == -0.5 || x == 3.5 || y == -0.5 || y == 2.5, "({x}, {y})");
    }
}

#[test]
fn spec_vector_12_identity() {
    let m = Array2::from_shape_fn((3, 3), |(y, x)| y == x);
    let e = connected_components(m.view(), Connectivity::Eight);
    assert_eq!(e.regions.len(), 1);
    assert_eq!(e.regions[0].area, 3);
    assert_eq!(
        e.regions[0].bbox,
        BBox {
            y0: 0,
            x0: 0,
            y1: 3,
            x1: 3
        }
    );
    let f = connected_components(m.view(), Connectivity::Four);
    assert_eq!(f.regions.len(), 3);
    assert_eq!(f.labels, array![[1, 0, 0], [0, 2, 0], [0, 0, 3]]);
    assert_eq!(contours(m.view()).len(), 1);
}

#[test]
fn labels_in_raster_order_and_scores() {
    let map = array![
        [0.1f32, 0.9, 0.2, 0.0],
        [0.0, 0.8, 0.0, 0.7],
        [0.6, 0.0, 0.0, 0.75]
    ];
    let m = threshold_map(map.view(), 0.6);
    assert_eq!(
        m,
        array![
            [false, true, false, false],
            [false, true, false, true],
            [true, false, false, true]
        ]
    );
    let cc = connected_components_with_scores(m.view(), map.view(), Connectivity::Four).unwrap();
    assert_eq!(cc.labels, array![[0, 1, 0, 0], [0, 1, 0, 2], [3, 0, 0, 2]]);
    let maxes: Vec<_> = cc.regions.iter().map(|r| r.max_score).collect();
    assert_eq!(maxes, vec![Some(0.9), Some(0.75), Some(0.6)]);
    let cc8 = connected_components_with_scores(m.view(), map.view(), Connectivity::Eight).unwrap();
    assert_eq!(cc8.labels, array![[0, 1, 0, 0], [0, 1, 0, 2], [1, 0, 0, 2]]);
    assert_eq!(cc8.regions[0].area, 3);
    let bad = Array2::<f32>::zeros((2, 2));
    assert!(connected_components_with_scores(m.view(), bad.view(), Connectivity::Eight).is_err());
}

#[test]
fn contours_on_float_map() {
    // A single peak of 1 on zeros, level 0.25: crossings 0.75 from the centre along each
    // axis → diamond with half-diagonal 0.75, area 2 · 0.75² = 1.125.
    let mut map = Array2::<f32>::zeros((3, 3));
    map[[1, 1]] = 1.0;
    let cs = contours_at(map.view(), 0.25);
    assert_eq!(cs.len(), 1);
    close(cs[0].area, 1.125);
    assert_eq!(cs[0].points[0], (1.0, 0.25));
    // A map that is everywhere above the level: crossings with the outside are half a pixel
    // beyond the border, like for masks.
    let full = Array2::from_elem((2, 2), 5.0f32);
    let cs = contours_at(full.view(), 1.0);
    assert_eq!(cs.len(), 1);
    close(cs[0].area, 3.5);
}
