//! Anomaly maps against hand-checkable vectors (docs/algorithm.md §10 vectors 2 and 13), scipy/torch
//! fixtures (scripts/make_map_fixtures.py) and a naive 2-D convolution written here.

use ndarray::{Array2, ArrayView2};
use patchcore::anomaly_map::{
    anomaly_map, gaussian_blur, gaussian_kernel, resize_map, MapConfig, Upsample,
};
use patchcore::Error;
use proptest::prelude::*;
use safetensors::SafeTensors;

fn no_blur(upsample: Upsample) -> MapConfig {
    MapConfig {
        upsample,
        sigma: None,
        truncate: 4.0,
    }
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

#[test]
fn vector_2_bilinear_and_nearest() {
    let bil = anomaly_map(&[0.0, 1.0], 1, 2, 1, 4, &no_blur(Upsample::Bilinear)).unwrap();
    assert_close(
        bil.as_slice().unwrap(),
        &[0.0, 0.25, 0.75, 1.0],
        1e-7,
        "bilinear",
    );
    let near = anomaly_map(&[0.0, 1.0], 1, 2, 1, 4, &no_blur(Upsample::Nearest)).unwrap();
    assert_eq!(near.as_slice().unwrap(), &[0.0, 0.0, 1.0, 1.0]);
    // Same along the vertical axis.
    let bil = anomaly_map(&[0.0, 1.0], 2, 1, 4, 1, &no_blur(Upsample::Bilinear)).unwrap();
    assert_close(
        bil.as_slice().unwrap(),
        &[0.0, 0.25, 0.75, 1.0],
        1e-7,
        "bilinear y",
    );
    // arange(14) → 28 starts [0, .25, .75, 1.25].
    let ramp: Vec<f32> = (0..14).map(|v| v as f32).collect();
    let m = anomaly_map(&ramp, 1, 14, 1, 28, &no_blur(Upsample::Bilinear)).unwrap();
    assert_close(
        &m.as_slice().unwrap()[..4],
        &[0.0, 0.25, 0.75, 1.25],
        1e-7,
        "ramp",
    );
    assert_eq!(m[[0, 27]], 13.0);
}

#[test]
fn vector_13_kernel_and_impulse() {
    let k = gaussian_kernel(4.0, 4.0).unwrap();
    assert_eq!(k.len(), 33);
    assert!((k[16] - 0.099_739_1).abs() < 1e-7, "centre {}", k[16]);
    assert!((k[0] - 3.3459e-5).abs() < 1e-9, "end {}", k[0]);
    assert!((k[32] - 3.3459e-5).abs() < 1e-9, "end {}", k[32]);
    let sum: f32 = k.iter().sum();
    assert!((sum - 1.0).abs() < 1e-6);

    // 2-D impulse far from the borders.
    let mut imp = Array2::<f32>::zeros((41, 41));
    imp[[20, 20]] = 1.0;
    let out = gaussian_blur(imp.view(), 4.0, 4.0).unwrap();
    assert!(
        (out[[20, 20]] - 0.009_947_89).abs() < 1e-8,
        "{}",
        out[[20, 20]]
    );
    let total: f32 = out.iter().sum();
    assert!((total - 1.0).abs() < 1e-5, "sum {total}");
}

#[test]
fn vector_13_reflect_border() {
    let m = Array2::from_shape_vec((1, 5), vec![1.0f32, 0.0, 0.0, 0.0, 0.0]).unwrap();
    let out = gaussian_blur(m.view(), 1.0, 4.0).unwrap();
    assert_close(
        out.as_slice().unwrap(),
        &[0.640_915, 0.295_963, 0.058_423, 0.004_566, 0.000_134],
        2e-6,
        "reflect σ=1",
    );
    // Same along columns.
    let out = gaussian_blur(m.t(), 1.0, 4.0).unwrap();
    let col: Vec<f32> = out.column(0).to_vec();
    assert_close(
        &col,
        &[0.640_915, 0.295_963, 0.058_423, 0.004_566, 0.000_134],
        2e-6,
        "reflect σ=1, columns",
    );
}

#[test]
fn constant_map_stays_constant() {
    let cfg = MapConfig::default();
    for (h, w, oh, ow) in [(28, 28, 224, 224), (3, 5, 7, 9), (1, 1, 4, 3)] {
        let scores = vec![2.5f32; h * w];
        let m = anomaly_map(&scores, h, w, oh, ow, &cfg).unwrap();
        assert_eq!(m.dim(), (oh, ow));
        for &v in m.iter() {
            assert!((v - 2.5).abs() < 1e-5, "{v}");
        }
    }
}

fn fixture() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/anomaly_map.safetensors"
    ))
    .unwrap()
}

fn tensor(st: &SafeTensors, name: &str) -> Array2<f32> {
    let t = st.tensor(name).unwrap();
    let shape = t.shape().to_vec();
    let data: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Array2::from_shape_vec((shape[0], shape[1]), data).unwrap()
}

fn max_abs_diff(a: ArrayView2<f32>, b: ArrayView2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn matches_scipy_and_torch_fixtures() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let run = |grid: &Array2<f32>, oh, ow, cfg: &MapConfig| {
        let (h, w) = grid.dim();
        anomaly_map(grid.as_slice().unwrap(), h, w, oh, ow, cfg).unwrap()
    };
    let blur = |upsample, sigma| MapConfig {
        upsample,
        sigma: Some(sigma),
        truncate: 4.0,
    };

    let a = tensor(&st, "a_grid");
    let got = run(&a, 224, 224, &MapConfig::default());
    let d = max_abs_diff(got.view(), tensor(&st, "a_bilinear_blur").view());
    assert!(d < 2e-6, "default 28→224: max diff {d}");

    let b = tensor(&st, "b_grid");
    let got = run(&b, 13, 23, &no_blur(Upsample::Bilinear));
    let d = max_abs_diff(got.view(), tensor(&st, "b_bilinear_13x23").view());
    assert!(d < 2e-6, "bilinear 5×7→13×23: max diff {d}");
    let got = run(&b, 13, 23, &no_blur(Upsample::Nearest));
    assert_eq!(got, tensor(&st, "b_nearest_13x23"), "nearest 5×7→13×23");

    let c = tensor(&st, "c_grid");
    let got = run(&c, 56, 56, &blur(Upsample::Nearest, 4.0));
    let d = max_abs_diff(got.view(), tensor(&st, "c_nearest_blur").view());
    assert!(d < 2e-6, "nearest 14→56 + σ4: max diff {d}");

    let dg = tensor(&st, "d_grid");
    let got = run(&dg, 6, 10, &blur(Upsample::Bilinear, 4.0));
    let d = max_abs_diff(got.view(), tensor(&st, "d_bilinear_blur").view());
    assert!(d < 2e-6, "radius > size: max diff {d}");

    let got = run(&a, 100, 75, &blur(Upsample::Bilinear, 1.5));
    let d = max_abs_diff(got.view(), tensor(&st, "e_bilinear_blur").view());
    assert!(d < 2e-6, "σ1.5 28→100×75: max diff {d}");
}

#[test]
fn resize_map_matches_upsampling() {
    // Bilinear resize of a map equals the bilinear anomaly map without blur.
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let b = tensor(&st, "b_grid");
    let got = resize_map(b.view(), 13, 23).unwrap();
    let d = max_abs_diff(got.view(), tensor(&st, "b_bilinear_13x23").view());
    assert!(d < 2e-6, "resize_map: max diff {d}");
    // Identity size is the identity.
    assert_eq!(resize_map(b.view(), 5, 7).unwrap(), b);
}

/// scipy 'reflect' index, written independently: walk back and forth one step at a time.
fn reflect_walk(pos: i64, n: i64) -> usize {
    let mut p = pos;
    loop {
        if p < 0 {
            p = -p - 1;
        } else if p >= n {
            p = 2 * n - 1 - p;
        } else {
            return p as usize;
        }
    }
}

/// Direct 2-D convolution with the outer-product kernel, in f64.
fn naive_blur(m: &Array2<f32>, sigma: f64, truncate: f64) -> Array2<f32> {
    let r = (truncate * sigma + 0.5).floor() as i64;
    let raw: Vec<f64> = (-r..=r)
        .map(|t| (-(t * t) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f64 = raw.iter().sum();
    let k: Vec<f64> = raw.iter().map(|v| v / s).collect();
    let (h, w) = m.dim();
    let mut out = Array2::<f32>::zeros((h, w));
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let mut acc = 0.0f64;
            for dy in -r..=r {
                for dx in -r..=r {
                    let sy = reflect_walk(y + dy, h as i64);
                    let sx = reflect_walk(x + dx, w as i64);
                    acc += k[(dy + r) as usize] * k[(dx + r) as usize] * f64::from(m[[sy, sx]]);
                }
            }
            out[[y as usize, x as usize]] = acc as f32;
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn blur_matches_naive_2d_convolution(
        h in 1usize..12,
        w in 1usize..12,
        sigma in 0.3f64..3.0,
        seed in any::<u64>(),
    ) {
        let mut state = seed;
        let m = Array2::from_shape_fn((h, w), |_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32) / (1u64 << 24) as f32
        });
        let got = gaussian_blur(m.view(), sigma as f32, 4.0).unwrap();
        let want = naive_blur(&m, f64::from(sigma as f32), 4.0);
        prop_assert!(max_abs_diff(got.view(), want.view()) < 1e-5);
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let cfg = MapConfig::default();
    assert!(matches!(
        anomaly_map(&[1.0; 5], 2, 3, 8, 8, &cfg),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        anomaly_map(&[1.0, f32::NAN], 1, 2, 8, 8, &cfg),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        anomaly_map(&[1.0; 4], 2, 2, 0, 8, &cfg),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        anomaly_map(&[1.0; 4], 2, 2, 1 << 20, 1 << 20, &cfg),
        Err(Error::LimitExceeded { .. })
    ));
    for sigma in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let bad = MapConfig {
            sigma: Some(sigma),
            ..cfg
        };
        assert!(matches!(
            anomaly_map(&[1.0; 4], 2, 2, 4, 4, &bad),
            Err(Error::InvalidParameter { name: "sigma", .. })
        ));
    }
    let bad = MapConfig {
        truncate: -1.0,
        ..cfg
    };
    assert!(matches!(
        anomaly_map(&[1.0; 4], 2, 2, 4, 4, &bad),
        Err(Error::InvalidParameter {
            name: "truncate",
            ..
        })
    ));
}
