//! Parity with PyTorch: fixtures written by `scripts/make_embedding_fixtures.py`, which builds
//! the ORIG embedding from `F.unfold` + `F.interpolate(bilinear, align_corners=False)` +
//! `F.adaptive_avg_pool1d`, and the Average aggregator from `F.avg_pool2d(count_include_pad)`,
//! in float64 on random non-negative float32 maps.
//!
//! Tolerance: 1e-5 relative (+1e-8 absolute for exact zeros). Every input and weight is
//! non-negative, so there is no cancellation: each output is a non-negative combination of at
//! most a few dozen inputs and its float32 rounding error is ≲ 40 ulp ≈ 5e-6 relative. Any
//! indexing mistake (wrong bin, tap or padding) changes values by O(1).

use std::path::Path;

use ndarray::{Array2, Array4};
use patchcore::embedding::{
    embed, embed_closed_form, embed_generic, embedding_dim, fast_path_applies, Aggregator,
};
use safetensors::{Dtype, SafeTensors};

struct Fixture {
    layers: Vec<Array4<f32>>,
    expected: Array2<f32>,
    agg: Aggregator,
}

fn load(name: &str) -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/embedding")
        .join(format!("{name}.safetensors"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |t: &str| -> (Vec<usize>, Vec<f32>) {
        let v = st.tensor(t).unwrap();
        assert_eq!(v.dtype(), Dtype::F32, "{name}/{t}");
        let data = v
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (v.shape().to_vec(), data)
    };
    let mut layers = Vec::new();
    while st.tensor(&format!("layer{}", layers.len())).is_ok() {
        let (shape, data) = f32s(&format!("layer{}", layers.len()));
        let shape: [usize; 4] = shape.try_into().unwrap();
        layers.push(Array4::from_shape_vec(shape, data).unwrap());
    }
    let (shape, data) = f32s("expected");
    let expected = Array2::from_shape_vec((shape[0], shape[1]), data).unwrap();
    let cfg = st.tensor("config").unwrap();
    assert_eq!(cfg.dtype(), Dtype::I64);
    let cfg: Vec<usize> = cfg
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize)
        .collect();
    let agg = match cfg[0] {
        0 => Aggregator::Original {
            patch_size: cfg[1],
            pre_dim: cfg[2],
            target_dim: cfg[3],
        },
        _ => Aggregator::Average {
            patch_size: cfg[1],
            target_dim: (cfg[3] > 0).then_some(cfg[3]),
        },
    };
    Fixture {
        layers,
        expected,
        agg,
    }
}

fn assert_matches(name: &str, got: &Array2<f32>, expected: &Array2<f32>) {
    assert_eq!(got.dim(), expected.dim(), "{name}: shape");
    let mut worst = 0.0f32;
    for ((r, c), &e) in expected.indexed_iter() {
        let g = got[[r, c]];
        let err = (g - e).abs();
        assert!(
            err <= 1e-5 * e.abs() + 1e-8,
            "{name}: row {r} col {c}: got {g}, PyTorch {e}"
        );
        worst = worst.max(err / e.abs().max(1e-8));
    }
    eprintln!("{name}: max relative error {worst:e}");
}

fn run(name: &str, expect_fast: bool) {
    let fx = load(name);
    let views: Vec<_> = fx.layers.iter().map(|l| l.view()).collect();
    let channels: Vec<usize> = fx.layers.iter().map(|l| l.dim().1).collect();
    assert_eq!(embedding_dim(&channels, &fx.agg), fx.expected.ncols());
    assert_eq!(fast_path_applies(&channels, &fx.agg), expect_fast, "{name}");
    assert_matches(name, &embed(&views, &fx.agg).unwrap(), &fx.expected);
    assert_matches(
        &format!("{name} (generic)"),
        &embed_generic(&views, &fx.agg).unwrap(),
        &fx.expected,
    );
    if expect_fast {
        assert_matches(
            &format!("{name} (closed form)"),
            &embed_closed_form(&views, &fx.agg).unwrap(),
            &fx.expected,
        );
    }
}

#[test]
fn orig_bottleneck_channels() {
    run("orig_bottleneck", true);
}

#[test]
fn orig_basic_channels() {
    run("orig_basic", false);
}

#[test]
fn orig_three_layers_p5() {
    run("orig_three_layers_p5", false);
}

#[test]
fn orig_p1() {
    run("orig_p1", false);
}

#[test]
fn average_concat() {
    run("average_concat", false);
}

#[test]
fn average_pooled_p5() {
    run("average_pooled_p5", false);
}
