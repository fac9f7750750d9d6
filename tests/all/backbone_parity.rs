//! Parity of the Rust ResNet backbone with PyTorch/torchvision.
//!
//! Fixtures come from `scripts/make_fixtures.py`: small ResNets built from torchvision's own
//! `BasicBlock` / `Bottleneck` modules with randomised BatchNorm statistics, run in eval mode in
//! float64; the taps are stored as f32.
//!
//! Tolerance: max|Δ| ≤ 1e-4 · max|ref| per tap. The reference is exact to ~1e-15, so Δ is the
//! Rust f32 error alone. Each convolution output is a dot product of length K ≤ 9·64 = 576 here
//! (≤ 4608 for WRN50); f32 summation has a worst-case relative error of about K·u
//! (u = 6·10⁻⁸ ⇒ ≤ 3.5·10⁻⁵) and a typical one of √K·u ≈ 1.4·10⁻⁶, relative to the sum of
//! |terms|, which is of the order of the layer's largest activation. Folding BatchNorm into
//! the weights (w·γ/√(σ²+ε) rounded once to f32) and the residual additions reorder rounding and
//! add a few ulps per layer. Errors add up roughly linearly over the ≤ 12 convolutions between
//! input and layer3, so up to ~1e-5 relative to max|ref| is plausible (observed with the naive
//! kernels: ≈1e-6) and 1e-4 leaves a margin for blocked/FMA GEMM kernels, while a real bug
//! produces far larger errors (e.g. BatchNorm ε = 1e-3 instead of 1e-5 already gives 2.4e-3;
//! wrong stride, padding, missing ReLU or residual, swapped weights give O(1)).

use std::path::{Path, PathBuf};

use ndarray::{s, Array4, ArrayView4};
use patchcore::backbone::{Backbone, BlockKind, Layer, ResNetSpec};
use patchcore::Error;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/backbone")
        .join(name)
}

/// Reads tensor `name` (F32 or F16) from a fixture file as an f32 array.
fn load(file: &str, name: &str) -> Array4<f32> {
    let bytes = std::fs::read(fixture(file)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let data: Vec<f32> = match t.dtype() {
        Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => t
            .data()
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        d => panic!("unexpected dtype {d:?}"),
    };
    let sh = t.shape();
    Array4::from_shape_vec((sh[0], sh[1], sh[2], sh[3]), data).unwrap()
}

fn spec_basic() -> ResNetSpec {
    ResNetSpec {
        name: "fixture_basic".into(),
        block: BlockKind::Basic,
        blocks: [2, 2, 2, 2],
        stem_channels: 8,
        planes: [8, 16, 32, 32],
        width_per_group: 64,
    }
}

fn spec_bottleneck() -> ResNetSpec {
    ResNetSpec {
        name: "fixture_bottleneck".into(),
        block: BlockKind::Bottleneck,
        blocks: [1, 2, 2, 1],
        stem_channels: 8,
        planes: [8, 16, 32, 16],
        width_per_group: 128,
    }
}

fn assert_close(got: &Array4<f32>, want: &Array4<f32>, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let max_ref = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(max_ref > 1.0, "{what}: degenerate reference");
    let max_err = got
        .iter()
        .zip(want.iter())
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("{what}: max|Δ|/max|ref| = {:.2e}", max_err / max_ref);
    assert!(
        max_err <= 1e-4 * max_ref,
        "{what}: max|Δ| = {max_err} > 1e-4 · max|ref| = {}",
        1e-4 * max_ref
    );
    assert!(got.iter().all(|&v| v >= 0.0), "{what}: negative tap value");
}

fn check_net(
    weights: &str,
    spec: &ResNetSpec,
    cases: &[(&str, ArrayView4<f32>)],
    layers: &[Layer],
) {
    let outs = weights.replace(".safetensors", "_out.safetensors");
    let net = Backbone::from_safetensors_file(fixture(weights), spec, layers).unwrap();
    for (size, x) in cases {
        let taps = net.forward(x.view()).unwrap();
        assert_eq!(taps.len(), layers.len());
        for (tap, layer) in taps.iter().zip(layers) {
            let want = load(&outs, &format!("{size}.{layer}"));
            assert_close(tap, &want, &format!("{weights} {size} {layer}"));
        }
    }
}

#[test]
fn basic_net_matches_torchvision() {
    let x224 = load("inputs.safetensors", "x224");
    let x225 = load("inputs.safetensors", "x225x193");
    let all = [Layer::Layer1, Layer::Layer2, Layer::Layer3];
    check_net(
        "basic.safetensors",
        &spec_basic(),
        &[("224", x224.view()), ("225x193", x225.view())],
        &all,
    );
}

#[test]
fn bottleneck_wide_net_matches_torchvision() {
    let x224 = load("inputs.safetensors", "x224");
    let x225 = load("inputs.safetensors", "x225x193");
    check_net(
        "bottleneck.safetensors",
        &spec_bottleneck(),
        &[("224", x224.view())],
        &[Layer::Layer1, Layer::Layer2, Layer::Layer3],
    );
    check_net(
        "bottleneck.safetensors",
        &spec_bottleneck(),
        &[("225x193", x225.slice(s![..1, .., .., ..]))],
        &[Layer::Layer2, Layer::Layer3],
    );
}

#[test]
fn half_precision_weights_match() {
    let x224 = load("inputs.safetensors", "x224");
    for file in ["basic_f16.safetensors", "basic_bf16.safetensors"] {
        check_net(
            file,
            &spec_basic(),
            &[("224", x224.view())],
            &[Layer::Layer2, Layer::Layer3],
        );
    }
}

#[test]
fn taps_come_in_requested_order_and_stop_at_deepest() {
    let x = load("inputs.safetensors", "x224");
    let net = Backbone::from_safetensors_file(
        fixture("basic.safetensors"),
        &spec_basic(),
        &[Layer::Layer3, Layer::Layer1],
    )
    .unwrap();
    assert_eq!(net.taps(), &[Layer::Layer3, Layer::Layer1]);
    let taps = net.forward(x.view()).unwrap();
    assert_close(
        &taps[0],
        &load("basic_out.safetensors", "224.layer3"),
        "layer3 first",
    );
    assert_close(
        &taps[1],
        &load("basic_out.safetensors", "224.layer1"),
        "layer1 second",
    );

    // Only layer2 requested: layer3/layer4 weights in the file are ignored, result unchanged.
    let net = Backbone::from_safetensors_file(
        fixture("basic.safetensors"),
        &spec_basic(),
        &[Layer::Layer2],
    )
    .unwrap();
    let taps = net.forward(x.view()).unwrap();
    assert_eq!(taps.len(), 1);
    assert_close(
        &taps[0],
        &load("basic_out.safetensors", "224.layer2"),
        "layer2 only",
    );
}

#[test]
fn tap_shapes_at_224_and_225x193() {
    let x224 = load("inputs.safetensors", "x224");
    let x225 = load("inputs.safetensors", "x225x193");
    let net = Backbone::from_safetensors_file(
        fixture("bottleneck.safetensors"),
        &spec_bottleneck(),
        &[Layer::Layer2, Layer::Layer3],
    )
    .unwrap();
    let t = net.forward(x224.view()).unwrap();
    assert_eq!(t[0].shape(), &[1, 64, 28, 28]);
    assert_eq!(t[1].shape(), &[1, 128, 14, 14]);
    let t = net.forward(x225.view()).unwrap();
    assert_eq!(t[0].shape(), &[2, 64, 29, 25]);
    assert_eq!(t[1].shape(), &[2, 128, 15, 13]);
    assert_eq!(net.tap_shape(Layer::Layer3, 225, 193), (128, 15, 13));
    assert_eq!(net.out_channels(Layer::Layer2), 64);
    assert!(t.iter().all(|a| a.iter().all(|&v| v >= 0.0)));
}

#[test]
fn batch_equals_single_images_and_layout_does_not_matter() {
    let x = load("inputs.safetensors", "x225x193");
    let net = Backbone::from_safetensors_file(
        fixture("basic.safetensors"),
        &spec_basic(),
        &[Layer::Layer2, Layer::Layer3],
    )
    .unwrap();
    let batch = net.forward(x.view()).unwrap();
    for i in 0..2 {
        let single = net.forward(x.slice(s![i..i + 1, .., .., ..])).unwrap();
        for (b, s1) in batch.iter().zip(&single) {
            assert_eq!(b.slice(s![i..i + 1, .., .., ..]), s1.view(), "image {i}");
        }
    }
    // A non-contiguous view (NHWC storage seen as NCHW) gives identical results.
    let nhwc = x
        .permuted_axes([0, 2, 3, 1])
        .as_standard_layout()
        .to_owned();
    let view = nhwc.view().permuted_axes([0, 3, 1, 2]);
    assert!(view.as_slice().is_none());
    let again = net.forward(view).unwrap();
    assert_eq!(again, batch);
}

#[test]
fn weights_hash_is_sha256_of_file() {
    let bytes = std::fs::read(fixture("basic.safetensors")).unwrap();
    let net = Backbone::from_safetensors_bytes(
        &bytes,
        Path::new("<memory>"),
        &spec_basic(),
        &[Layer::Layer2],
    )
    .unwrap();
    let want: [u8; 32] = Sha256::digest(&bytes).into();
    assert_eq!(net.weights_sha256(), want);
}

#[test]
fn random_backbone_is_seeded() {
    let spec = spec_bottleneck();
    let taps = [Layer::Layer2, Layer::Layer3];
    let a = Backbone::random(&spec, &taps, 7).unwrap();
    let b = Backbone::random(&spec, &taps, 7).unwrap();
    let c = Backbone::random(&spec, &taps, 8).unwrap();
    assert_eq!(a.weights_sha256(), b.weights_sha256());
    assert_ne!(a.weights_sha256(), c.weights_sha256());
    let x = load("inputs.safetensors", "x224");
    let (ya, yb, yc) = (
        a.forward(x.view()).unwrap(),
        b.forward(x.view()).unwrap(),
        c.forward(x.view()).unwrap(),
    );
    assert_eq!(ya, yb);
    assert_ne!(ya, yc);
    for t in &ya {
        assert!(t.iter().all(|v| v.is_finite() && *v >= 0.0));
        assert!(t.iter().any(|&v| v > 0.0), "random net output is all zeros");
    }
    // Stage weights do not depend on the deepest tap.
    let shallow = Backbone::random(&spec, &[Layer::Layer2], 7).unwrap();
    assert_eq!(shallow.forward(x.view()).unwrap()[0], ya[0]);
}

#[test]
fn bad_inputs_are_rejected() {
    let net = Backbone::random(&spec_basic(), &[Layer::Layer2], 1).unwrap();
    let small = Array4::<f32>::zeros((1, 3, 31, 64));
    assert!(matches!(
        net.forward(small.view()),
        Err(Error::InvalidInput { .. })
    ));
    let gray = Array4::<f32>::zeros((1, 1, 64, 64));
    assert!(matches!(
        net.forward(gray.view()),
        Err(Error::InvalidInput { .. })
    ));
    let empty = Array4::<f32>::zeros((0, 3, 64, 64));
    assert_eq!(
        net.forward(empty.view()).unwrap()[0].shape(),
        &[0, 16, 8, 8]
    );
    assert!(matches!(
        Backbone::random(&spec_basic(), &[], 1),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        Backbone::random(&spec_basic(), &[Layer::Layer2, Layer::Layer2], 1),
        Err(Error::InvalidParameter { .. })
    ));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]

    /// For any input size, every tap has ⌈n / stride⌉ cells per axis (stride 4, 8, 16, 32 —
    /// docs/algorithm.md §2: each stride-2 op maps n → ⌊(n−1)/2⌋+1), matches `tap_shape`, and is ≥ 0.
    #[test]
    fn tap_sizes_follow_ceil_division(h in 32usize..90, w in 32usize..90, seed in 0u64..4) {
        let spec = ResNetSpec {
            name: "tiny".into(),
            block: BlockKind::Bottleneck,
            blocks: [1, 1, 1, 1],
            stem_channels: 4,
            planes: [2, 2, 2, 2],
            width_per_group: 128,
        };
        let net = Backbone::random(&spec, &Layer::ALL, seed).unwrap();
        let x = Array4::from_shape_fn((1, 3, h, w), |(_, c, y, x)| {
            ((c * 31 + y * 7 + x * 3) % 11) as f32 / 5.0 - 1.0
        });
        let taps = net.forward(x.view()).unwrap();
        for (t, layer) in taps.iter().zip(Layer::ALL) {
            let s = layer.stride();
            let want = [1, 8, h.div_ceil(s), w.div_ceil(s)];
            proptest::prop_assert_eq!(t.shape(), &want[..]);
            let (c, th, tw) = net.tap_shape(layer, h, w);
            proptest::prop_assert_eq!([1, c, th, tw], want);
            proptest::prop_assert!(t.iter().all(|&v| v >= 0.0));
        }
    }
}
