//! Hand-checkable vectors of docs/algorithm.md §10 (1, 2, 3, 14) and the error contract of the embedding.

use ndarray::{array, s, Array3, Array4, ArrayView4, Axis};
use patchcore::embedding::{
    adaptive_avg_pool1d, adaptive_pool_bin, avg_pool2d, bilinear_resize, embed, embed_generic,
    embedding_dim, grid, Aggregator,
};
use patchcore::Error;

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "length mismatch: {a:?} vs {b:?}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol,
            "index {i}: {x} vs {y} (all: {a:?} vs {b:?})"
        );
    }
}

fn pool(input: &[f32], d: usize) -> Vec<f32> {
    let mut out = vec![0.0; d];
    adaptive_avg_pool1d(input, &mut out).unwrap();
    out
}

/// docs/algorithm.md §10 vector 1.
#[test]
fn adaptive_pool_hand_vectors() {
    close(&pool(&[1.0, 2.0, 3.0, 4.0, 5.0], 3), &[1.5, 3.0, 4.5], 1e-7);
    close(
        &pool(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], 4),
        &[0.5, 1.5, 3.5, 4.5],
        1e-7,
    );
    let bins: Vec<_> = (0..4).map(|i| adaptive_pool_bin(i, 6, 4)).collect();
    assert_eq!(bins, [(0, 2), (1, 3), (3, 5), (4, 6)]);
    close(&pool(&[1.0, 2.0, 3.0], 5), &[1.0, 1.5, 2.0, 2.5, 3.0], 1e-7);
    for (len, size) in [(4608, 5), (9216, 9), (1152, 2), (2304, 3)] {
        for i in 0..1024 {
            let (s, e) = adaptive_pool_bin(i, len, 1024);
            assert_eq!(e - s, size, "{len} → 1024, bin {i}");
        }
    }
    assert!(matches!(
        adaptive_avg_pool1d(&[], &mut [0.0]),
        Err(Error::InvalidInput { .. })
    ));
}

/// docs/algorithm.md §10 vector 2.
#[test]
fn bilinear_hand_vectors() {
    let up = bilinear_resize(array![[[0.0f32, 1.0]]].view(), 1, 4).unwrap();
    close(up.as_slice().unwrap(), &[0.0, 0.25, 0.75, 1.0], 1e-7);
    // Same along the other axis.
    let up = bilinear_resize(array![[[0.0f32], [1.0]]].view(), 4, 1).unwrap();
    close(up.as_slice().unwrap(), &[0.0, 0.25, 0.75, 1.0], 1e-7);
    let ramp = Array3::from_shape_fn((1, 1, 14), |(_, _, x)| x as f32);
    let up = bilinear_resize(ramp.view(), 1, 28).unwrap();
    close(&up.as_slice().unwrap()[..4], &[0.0, 0.25, 0.75, 1.25], 1e-6);
    // Last output clamps to the last input (src = 13.25 → i1 = 13).
    assert_eq!(up[[0, 0, 27]], 13.0);
    assert!(bilinear_resize(ramp.view(), 0, 3).is_err());
}

/// docs/algorithm.md §10 vector 14, on a 3×3 and a 4×5 map.
#[test]
fn avg_pool_borders() {
    let pooled = avg_pool2d(Array3::<f32>::ones((1, 3, 3)).view(), 3).unwrap();
    let expected = [4.0, 6.0, 4.0, 6.0, 9.0, 6.0, 4.0, 6.0, 4.0].map(|v: f32| v / 9.0);
    close(pooled.as_slice().unwrap(), &expected, 1e-7);
    let pooled = avg_pool2d(Array3::<f32>::ones((2, 4, 5)).view(), 3).unwrap();
    for c in 0..2 {
        assert!((pooled[[c, 0, 0]] - 4.0 / 9.0).abs() < 1e-7);
        assert!((pooled[[c, 3, 4]] - 4.0 / 9.0).abs() < 1e-7);
        assert!((pooled[[c, 0, 2]] - 2.0 / 3.0).abs() < 1e-7);
        assert!((pooled[[c, 2, 0]] - 2.0 / 3.0).abs() < 1e-7);
        assert!((pooled[[c, 1, 2]] - 1.0).abs() < 1e-7);
    }
    // The Average aggregator with one layer lays the same values out as rows y·w + x.
    let ones = Array4::<f32>::ones((1, 1, 3, 3));
    let agg = Aggregator::Average {
        patch_size: 3,
        target_dim: None,
    };
    let rows = embed(&[ones.view()], &agg).unwrap();
    close(rows.as_slice().unwrap(), &expected, 1e-7);
    assert!(avg_pool2d(Array3::<f32>::ones((1, 3, 3)).view(), 2).is_err());
}

fn tiny_layers() -> (Array4<f32>, Array4<f32>) {
    (array![[[[1.0f32, 2.0], [3.0, 4.0]]]], array![[[[8.0f32]]]])
}

const TINY_TOP: [f32; 4] = [0.5, 5.0 / 3.0, 4.0 / 3.0, 4.0 / 3.0];
const TINY_BOTTOM: [f32; 4] = [5.0 / 3.0, 7.0 / 6.0, 4.0 / 3.0, 4.0 / 3.0];

/// docs/algorithm.md §10 vector 3, plus batching: a second image scaled by 2 gives rows 4..8 scaled by 2.
#[test]
fn tiny_orig_embedding() {
    let (a, b) = tiny_layers();
    let agg = Aggregator::Original {
        patch_size: 3,
        pre_dim: 3,
        target_dim: 4,
    };
    for f in [embed, embed_generic] {
        let rows = f(&[a.view(), b.view()], &agg).unwrap();
        assert_eq!(rows.dim(), (4, 4));
        for (r, expected) in [TINY_TOP, TINY_TOP, TINY_BOTTOM, TINY_BOTTOM]
            .iter()
            .enumerate()
        {
            close(rows.row(r).as_slice().unwrap(), expected, 1e-6);
        }
    }
    let a2 = ndarray::concatenate(Axis(0), &[a.view(), (&a * 2.0).view()]).unwrap();
    let b2 = ndarray::concatenate(Axis(0), &[b.view(), (&b * 2.0).view()]).unwrap();
    let rows = embed(&[a2.view(), b2.view()], &agg).unwrap();
    assert_eq!(rows.dim(), (8, 4));
    for r in 0..4 {
        let first: Vec<f32> = rows.row(r).iter().map(|v| v * 2.0).collect();
        close(rows.row(r + 4).as_slice().unwrap(), &first, 1e-6);
    }
}

/// Average aggregator on the tiny layers: 3×3 mean of A is 10/9 everywhere, B gives 8/9.
#[test]
fn tiny_average_embedding() {
    let (a, b) = tiny_layers();
    let rows = embed(
        &[a.view(), b.view()],
        &Aggregator::Average {
            patch_size: 3,
            target_dim: None,
        },
    )
    .unwrap();
    assert_eq!(rows.dim(), (4, 2));
    for r in 0..4 {
        close(
            rows.row(r).as_slice().unwrap(),
            &[10.0 / 9.0, 8.0 / 9.0],
            1e-6,
        );
    }
    let rows = embed(
        &[a.view(), b.view()],
        &Aggregator::Average {
            patch_size: 3,
            target_dim: Some(1),
        },
    )
    .unwrap();
    close(rows.as_slice().unwrap(), &[1.0; 4], 1e-6);
}

/// A non-contiguous (sliced, transposed) input gives the same result as its contiguous copy.
#[test]
fn non_contiguous_input() {
    let big = Array4::from_shape_fn((2, 3, 6, 5), |(n, c, y, x)| {
        ((n * 31 + c * 7 + y * 3 + x) % 11) as f32 * 0.25
    });
    let sliced = big.slice(s![.., .., 1..5, ..;2]);
    let owned = sliced.to_owned();
    let deep = Array4::from_shape_fn((2, 5, 3, 2), |(n, c, y, x)| (n + c + y * x) as f32);
    let deep_t = deep.clone().permuted_axes([0, 1, 3, 2]);
    let deep_t_owned = deep_t.as_standard_layout().to_owned();
    for agg in [
        Aggregator::default(),
        Aggregator::Average {
            patch_size: 3,
            target_dim: Some(5),
        },
    ] {
        let a = embed(&[sliced, deep_t.view()], &agg).unwrap();
        let b = embed(&[owned.view(), deep_t_owned.view()], &agg).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn dims_and_grid() {
    assert_eq!(embedding_dim(&[512, 1024], &Aggregator::default()), 1024);
    let avg = Aggregator::Average {
        patch_size: 3,
        target_dim: None,
    };
    assert_eq!(embedding_dim(&[512, 1024], &avg), 1536);
    assert_eq!(
        embedding_dim(
            &[512, 1024],
            &Aggregator::Average {
                patch_size: 3,
                target_dim: Some(100)
            }
        ),
        100
    );
    let a = Array4::<f32>::zeros((2, 3, 5, 7));
    let b = Array4::<f32>::zeros((2, 4, 3, 4));
    assert_eq!(grid(&[a.view(), b.view()]).unwrap(), (5, 7));
    let rows = embed(&[a.view(), b.view()], &avg).unwrap();
    assert_eq!(rows.dim(), (2 * 5 * 7, 7));
}

#[test]
fn parameter_validation() {
    assert_eq!(
        Aggregator::default(),
        Aggregator::Original {
            patch_size: 3,
            pre_dim: 1024,
            target_dim: 1024
        }
    );
    assert!(Aggregator::default().validate().is_ok());
    let bad = [
        (
            Aggregator::Original {
                patch_size: 2,
                pre_dim: 8,
                target_dim: 8,
            },
            "patch_size",
        ),
        (
            Aggregator::Original {
                patch_size: 0,
                pre_dim: 8,
                target_dim: 8,
            },
            "patch_size",
        ),
        (
            Aggregator::Original {
                patch_size: 3,
                pre_dim: 0,
                target_dim: 8,
            },
            "pre_dim",
        ),
        (
            Aggregator::Original {
                patch_size: 3,
                pre_dim: 8,
                target_dim: 0,
            },
            "target_dim",
        ),
        (
            Aggregator::Average {
                patch_size: 4,
                target_dim: None,
            },
            "patch_size",
        ),
        (
            Aggregator::Average {
                patch_size: 3,
                target_dim: Some(0),
            },
            "target_dim",
        ),
    ];
    let a = Array4::<f32>::ones((1, 2, 3, 3));
    for (agg, field) in bad {
        match agg.validate() {
            Err(Error::InvalidParameter { name, .. }) => assert_eq!(name, field, "{agg:?}"),
            other => panic!("{agg:?}: expected InvalidParameter, got {other:?}"),
        }
        assert!(matches!(
            embed(&[a.view()], &agg),
            Err(Error::InvalidParameter { .. })
        ));
    }
}

#[test]
fn input_errors() {
    let agg = Aggregator::default();
    let empty: [ArrayView4<f32>; 0] = [];
    assert!(matches!(
        embed(&empty, &agg),
        Err(Error::InvalidInput { .. })
    ));
    let a = Array4::<f32>::ones((2, 4, 3, 3));
    let b = Array4::<f32>::ones((1, 4, 2, 2));
    let err = embed(&[a.view(), b.view()], &agg).unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }));
    assert!(err.to_string().contains("batch size"), "{err}");
    for shape in [(0, 4, 3, 3), (2, 0, 3, 3), (2, 4, 0, 3), (2, 4, 3, 0)] {
        let z = Array4::<f32>::zeros(shape);
        assert!(matches!(
            embed(&[z.view()], &agg),
            Err(Error::InvalidInput { .. })
        ));
        assert!(matches!(
            embed(&[a.view(), z.view()], &agg),
            Err(Error::InvalidInput { .. })
        ));
    }
    assert!(grid(&empty).is_err());
}
