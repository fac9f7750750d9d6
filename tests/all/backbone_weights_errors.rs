//! Every weight-loading failure gives its typed error naming the file and the tensor, and no
//! byte sequence makes the loader panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use patchcore::backbone::{Backbone, BlockKind, Layer, ResNetSpec};
use patchcore::Error;
use proptest::prelude::*;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

const NAME: &str = "modified.safetensors";
const TAPS: [Layer; 2] = [Layer::Layer2, Layer::Layer3];

fn fixture_bytes(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/backbone")
        .join(name);
    std::fs::read(p).unwrap()
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

/// An editable copy of a safetensors file: name → (dtype, shape, raw little-endian bytes).
type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn decode(bytes: &[u8]) -> Tensors {
    let st = SafeTensors::deserialize(bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, t)| (n, (t.dtype(), t.shape().to_vec(), t.data().to_vec())))
        .collect()
}

fn encode(t: &Tensors) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = t
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, &None).unwrap()
}

fn basic() -> Tensors {
    decode(&fixture_bytes("basic.safetensors"))
}

fn load(bytes: &[u8], spec: &ResNetSpec) -> Result<Backbone, Error> {
    Backbone::from_safetensors_bytes(bytes, Path::new(NAME), spec, &TAPS)
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn bytes_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The message names the file and every fragment in `parts`.
fn assert_msg(e: &Error, parts: &[&str]) {
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(msg.contains(NAME), "message does not name the file: {msg}");
    for p in parts {
        assert!(msg.contains(p), "message lacks {p:?}: {msg}");
    }
}

#[test]
fn unmodified_fixture_loads_and_ignores_fc_and_counters() {
    let t = basic();
    // The fixture really contains the tensors that must be ignored.
    assert_eq!(t["layer1.0.bn1.num_batches_tracked"].0, Dtype::I64);
    assert!(t.contains_key("fc.weight"));
    assert!(t.contains_key("layer4.1.conv2.weight"));
    load(&encode(&t), &spec_basic()).unwrap();
}

#[test]
fn missing_tensor() {
    let mut t = basic();
    t.remove("layer2.1.bn2.running_var");
    let e = load(&encode(&t), &spec_basic()).unwrap_err();
    assert!(matches!(e, Error::MissingTensor { .. }), "{e:?}");
    assert_msg(&e, &["layer2.1.bn2.running_var", "[16]", "fixture_basic"]);
}

#[test]
fn layers_past_the_deepest_tap_may_be_absent() {
    let mut t = basic();
    t.retain(|k, _| !k.starts_with("layer4"));
    load(&encode(&t), &spec_basic()).unwrap();
    t.retain(|k, _| !k.starts_with("layer3"));
    let e = load(&encode(&t), &spec_basic()).unwrap_err();
    assert!(matches!(e, Error::MissingTensor { .. }), "{e:?}");
    assert_msg(&e, &["layer3.0.conv1.weight", "up to layer2"]);
    Backbone::from_safetensors_bytes(
        &encode(&t),
        Path::new(NAME),
        &spec_basic(),
        &[Layer::Layer2],
    )
    .unwrap();
}

#[test]
fn wrong_shape() {
    let mut t = basic();
    let entry = t.get_mut("layer2.0.conv2.weight").unwrap();
    assert_eq!(entry.1, vec![16, 16, 3, 3]);
    entry.1 = vec![16, 16, 9, 1];
    let e = load(&encode(&t), &spec_basic()).unwrap_err();
    match &e {
        Error::TensorShape {
            tensor,
            expected,
            found,
            ..
        } => {
            assert_eq!(tensor, "layer2.0.conv2.weight");
            assert_eq!(expected, &vec![16, 16, 3, 3]);
            assert_eq!(found, &vec![16, 16, 9, 1]);
        }
        other => panic!("expected TensorShape, got {other:?}"),
    }
    assert_msg(&e, &["layer2.0.conv2.weight"]);
}

#[test]
fn f64_and_integer_dtypes_are_rejected() {
    let mut t = basic();
    let e = t.get_mut("bn1.running_mean").unwrap();
    let v64: Vec<u8> = f32s(&e.2)
        .iter()
        .flat_map(|&x| f64::from(x).to_le_bytes())
        .collect();
    *e = (Dtype::F64, e.1.clone(), v64);
    let err = load(&encode(&t), &spec_basic()).unwrap_err();
    assert!(matches!(err, Error::TensorDtype { .. }), "{err:?}");
    assert_msg(&err, &["bn1.running_mean", "F64"]);

    let mut t = basic();
    let e = t.get_mut("layer1.1.conv1.weight").unwrap();
    *e = (Dtype::I32, e.1.clone(), vec![0u8; e.2.len()]);
    let err = load(&encode(&t), &spec_basic()).unwrap_err();
    assert!(matches!(err, Error::TensorDtype { .. }), "{err:?}");
    assert_msg(&err, &["layer1.1.conv1.weight", "I32"]);
}

#[test]
fn nan_and_inf_are_rejected() {
    for (name, bad) in [
        ("layer3.0.conv2.weight", f32::NAN),
        ("layer1.0.bn2.bias", f32::INFINITY),
    ] {
        let mut t = basic();
        let e = t.get_mut(name).unwrap();
        let mut v = f32s(&e.2);
        let mid = v.len() / 2;
        v[mid] = bad;
        e.2 = bytes_of(&v);
        let err = load(&encode(&t), &spec_basic()).unwrap_err();
        assert!(matches!(err, Error::NonFiniteTensor { .. }), "{err:?}");
        assert_msg(&err, &[name]);
    }
}

#[test]
fn nan_in_f16_is_rejected() {
    let mut t = decode(&fixture_bytes("basic_f16.safetensors"));
    let e = t.get_mut("layer2.1.conv1.weight").unwrap();
    assert_eq!(e.0, Dtype::F16);
    let nan = half::f16::NAN.to_le_bytes();
    e.2[10] = nan[0];
    e.2[11] = nan[1];
    let err = load(&encode(&t), &spec_basic()).unwrap_err();
    assert!(matches!(err, Error::NonFiniteTensor { .. }), "{err:?}");
    assert_msg(&err, &["layer2.1.conv1.weight"]);
}

#[test]
fn negative_running_var_is_rejected() {
    let mut t = basic();
    let e = t.get_mut("layer2.0.downsample.1.running_var").unwrap();
    let mut v = f32s(&e.2);
    v[3] = -0.5;
    e.2 = bytes_of(&v);
    let err = load(&encode(&t), &spec_basic()).unwrap_err();
    assert!(matches!(err, Error::InvalidFile { .. }), "{err:?}");
    assert_msg(&err, &["layer2.0.downsample.1.running_var"]);
}

#[test]
fn truncated_empty_and_garbage_files() {
    let good = fixture_bytes("basic.safetensors");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() - 100].to_vec()),
        ("header only", good[..good.len() / 2].to_vec()),
        ("zero bytes", Vec::new()),
        ("four bytes", vec![1, 2, 3, 4]),
        (
            "garbage",
            (0..5000u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
        ("huge header length", {
            let mut v = u64::MAX.to_le_bytes().to_vec();
            v.extend_from_slice(b"{}");
            v
        }),
        ("not json", {
            let mut v = 8u64.to_le_bytes().to_vec();
            v.extend_from_slice(b"not json");
            v
        }),
        ("padded", {
            let mut v = good.clone();
            v.extend_from_slice(&[0; 16]);
            v
        }),
    ];
    for (what, bytes) in cases {
        let err = load(&bytes, &spec_basic()).unwrap_err();
        assert!(matches!(err, Error::InvalidFile { .. }), "{what}: {err:?}");
        assert_msg(&err, &[]);
    }
}

#[test]
fn absurd_header_shapes_are_refused_without_allocating() {
    let header = br#"{"conv1.weight":{"dtype":"F32","shape":[4000000000,4000000000,3,7],"data_offsets":[0,16]}}"#;
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header);
    v.extend_from_slice(&[0u8; 16]);
    let err = load(&v, &spec_basic()).unwrap_err();
    assert!(matches!(err, Error::InvalidFile { .. }), "{err:?}");
}

#[test]
fn io_error_names_the_path() {
    let p = PathBuf::from("/nonexistent/dir/weights.safetensors");
    let err = Backbone::from_safetensors_file(&p, &spec_basic(), &TAPS).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("weights.safetensors"), "{err}");
}

#[test]
fn file_on_disk_errors_name_the_file() {
    let dir = std::env::temp_dir().join(format!("patchcore-bb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(NAME);
    let mut t = basic();
    t.remove("bn1.bias");
    std::fs::write(&path, encode(&t)).unwrap();
    let err = Backbone::from_safetensors_file(&path, &spec_basic(), &TAPS).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(err, Error::MissingTensor { .. }), "{err:?}");
    assert_msg(&err, &["bn1.bias"]);
}

#[test]
fn wrong_architecture_says_what_the_file_looks_like() {
    // Basic-block weights loaded as a bottleneck net.
    let err = load(&fixture_bytes("basic.safetensors"), &spec_bottleneck()).unwrap_err();
    assert!(matches!(err, Error::InvalidFile { .. }), "{err:?}");
    assert_msg(
        &err,
        &["BasicBlock", "fixture_bottleneck", "layer1.0.conv1.weight"],
    );

    // Deeper file than the architecture (2 blocks in layer2, spec says 1): not silently loaded.
    let mut shallow = spec_bottleneck();
    shallow.blocks = [1, 1, 2, 1];
    let err = load(&fixture_bytes("bottleneck.safetensors"), &shallow).unwrap_err();
    assert!(matches!(err, Error::InvalidFile { .. }), "{err:?}");
    assert_msg(&err, &["layer2.1.conv1.weight", "blocks [1, 2, 2, 1]"]);
}

#[test]
fn resnet18_file_loaded_as_wide_resnet50_is_recognised() {
    // Conv shapes of a real resnet18 up to layer3 (zeros; BatchNorms omitted — the detector
    // only needs convolution shapes).
    let r18 = ResNetSpec::resnet18();
    let mut t = Tensors::new();
    let mut conv = |name: String, shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        t.insert(name, (Dtype::F16, shape, vec![0u8; 2 * n]));
    };
    conv("conv1.weight".into(), vec![64, 3, 7, 7]);
    for s in 0..3 {
        let p = r18.planes[s];
        for b in 0..2 {
            let cin = if b == 0 && s > 0 { p / 2 } else { p };
            conv(
                format!("layer{}.{b}.conv1.weight", s + 1),
                vec![p, cin, 3, 3],
            );
            conv(format!("layer{}.{b}.conv2.weight", s + 1), vec![p, p, 3, 3]);
        }
    }
    let err = load(&encode(&t), &ResNetSpec::wide_resnet50_2()).unwrap_err();
    assert!(matches!(err, Error::InvalidFile { .. }), "{err:?}");
    assert_msg(&err, &["resnet18", "wide_resnet50_2"]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Corrupting or truncating the file never panics; it either loads or returns an error.
    #[test]
    fn corrupted_bytes_never_panic(
        edits in proptest::collection::vec((0usize..4000, any::<u8>()), 1..6),
        cut in 0usize..100_000,
    ) {
        let mut bytes = fixture_bytes("basic_f16.safetensors");
        for (pos, val) in edits {
            let i = pos % bytes.len();
            bytes[i] = val;
        }
        if cut % 3 == 0 {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        let _ = load(&bytes, &spec_basic());
    }
}

/// The file path reads the header and then one tensor at a time (never the whole file); it must
/// load exactly what the in-memory path loads, fingerprint the whole file, and refuse exactly
/// the same damaged files.
#[test]
fn streaming_file_load_equals_in_memory_load() {
    use sha2::{Digest, Sha256};
    let dir = std::env::temp_dir().join(format!("patchcore-stream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(NAME);
    let good = fixture_bytes("bottleneck.safetensors");
    std::fs::write(&path, &good).unwrap();
    let from_file = Backbone::from_safetensors_file(&path, &spec_bottleneck(), &TAPS).unwrap();
    let from_bytes = load(&good, &spec_bottleneck()).unwrap();
    let expected_sha: [u8; 32] = Sha256::digest(&good).into();
    assert_eq!(from_file.weights_sha256(), expected_sha);
    assert_eq!(from_bytes.weights_sha256(), expected_sha);
    let input = ndarray::Array4::from_shape_fn((1, 3, 40, 36), |(_, c, y, x)| {
        ((c * 7 + y * 3 + x) % 11) as f32 / 5.0 - 1.0
    });
    let a = from_file.forward(input.view()).unwrap();
    let b = from_bytes.forward(input.view()).unwrap();
    assert_eq!(a, b);

    let damaged: Vec<Vec<u8>> = vec![
        good[..good.len() - 100].to_vec(),
        good[..6].to_vec(),
        Vec::new(),
        {
            let mut v = good.clone();
            v.extend_from_slice(&[0; 3]);
            v
        },
    ];
    for bytes in damaged {
        std::fs::write(&path, &bytes).unwrap();
        let ef = Backbone::from_safetensors_file(&path, &spec_bottleneck(), &TAPS).unwrap_err();
        let eb =
            Backbone::from_safetensors_bytes(&bytes, &path, &spec_bottleneck(), &TAPS).unwrap_err();
        assert_eq!(ef.to_string(), eb.to_string());
        assert!(matches!(ef, Error::InvalidFile { .. }), "{ef:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
