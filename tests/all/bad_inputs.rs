//! Bad inputs end to end: broken model and weights files, odd images, degenerate training
//! folders and parameters. Every case checks the exact error variant, that no file on disk
//! changed (sha256 of every file in the test's folder before and after), and that the library
//! still works afterwards (a valid model loads and scores an image to the same value as before).
//!
//! Weight-loader details (every malformed tensor, dtype, shape, NaN) are in
//! `backbone_weights_errors.rs`, decoder limits and configuration errors in
//! `preprocess_errors.rs`; this file covers model files, the paths through `PatchCore`, and the
//! image kinds those files do not.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::{ImageEncoder, RgbImage};
use patchcore::backbone::{Backbone, BlockKind, Layer, ResNetSpec};
use patchcore::coreset::{CoresetConfig, CoresetSize};
use patchcore::dataset::{list_images, Category};
use patchcore::embedding::Aggregator;
use patchcore::model::{BackboneSource, PatchCore, PatchCoreParams, PredictOptions, SaveOptions};
use patchcore::preprocess::{self, ImageLimits, PreprocessConfig, Resize};
use patchcore::scoring::ScoringConfig;
use patchcore::Error;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};

const LAYERS: [Layer; 2] = [Layer::Layer2, Layer::Layer3];

fn spec() -> ResNetSpec {
    ResNetSpec {
        name: "bad_inputs_basic".into(),
        block: BlockKind::Basic,
        blocks: [1, 1, 1, 1],
        stem_channels: 8,
        planes: [8, 16, 32, 64],
        width_per_group: 64,
    }
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// A fresh, empty folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "patchcore-bad-inputs-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// sha256 of every file under `dir` (recursively), by path.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, [u8; 32]> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), Sha256::digest(std::fs::read(&p).unwrap()).into());
            }
        }
    }
    out
}

/// The weights of the tiny test network, the backbone loaded from them, two training images,
/// and a model fitted on them (saved once, with and without embedded weights).
struct World {
    weights: Vec<u8>,
    backbone: Backbone,
    images: Vec<RgbImage>,
    model_bytes: Vec<u8>,
    embedded_bytes: Vec<u8>,
    /// Score of `probe()` under the fitted model.
    probe_score: f32,
}

fn params() -> PatchCoreParams {
    PatchCoreParams {
        preprocess: PreprocessConfig {
            resize: Resize::None,
            crop: None,
            ..Default::default()
        },
        layers: LAYERS.to_vec(),
        aggregator: Aggregator::Original {
            patch_size: 3,
            pre_dim: 16,
            target_dim: 16,
        },
        coreset: CoresetConfig {
            size: CoresetSize::Ratio(0.25),
            projection_dim: 0,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn probe() -> RgbImage {
    RgbImage::from_fn(40, 36, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 7) as u8, ((x + y) * 3) as u8])
    })
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let weights = Backbone::random_weights_safetensors(&spec(), Layer::Layer3, 0).unwrap();
        let backbone =
            Backbone::from_safetensors_bytes(&weights, Path::new("w"), &spec(), &LAYERS).unwrap();
        let mut gen = patchcore::synthetic::Generator::new(3);
        let images: Vec<_> = (0..2).map(|_| gen.normal_image(32)).collect();
        let (model, _) = PatchCore::fit(
            params().check().unwrap(),
            backbone.clone(),
            &images,
            &mut |_| {},
        )
        .unwrap();
        let dir = temp_dir("world");
        let wpath = dir.join("weights.safetensors");
        std::fs::write(&wpath, &weights).unwrap();
        let save = |name: &str, embed: bool| {
            let p = dir.join(name);
            let opts = SaveOptions {
                overwrite: false,
                embed_weights: embed.then(|| wpath.clone()),
            };
            model.save(&p, &opts).unwrap();
            std::fs::read(&p).unwrap()
        };
        let model_bytes = save("model.safetensors", false);
        let embedded_bytes = save("embedded.safetensors", true);
        let probe_score = model
            .predict(&probe(), PredictOptions { anomaly_map: true })
            .unwrap()
            .0
            .score;
        std::fs::remove_dir_all(&dir).unwrap();
        World {
            weights,
            backbone,
            images,
            model_bytes,
            embedded_bytes,
            probe_score,
        }
    })
}

fn loaded() -> BackboneSource<'static> {
    BackboneSource::Loaded(Box::new(world().backbone.clone()))
}

/// The library still works: the valid model loads (both ways) and scores the probe image
/// exactly as the freshly fitted model did.
fn assert_still_usable() {
    let w = world();
    for (bytes, src) in [
        (&w.model_bytes, loaded()),
        (&w.embedded_bytes, BackboneSource::Embedded),
    ] {
        let m = PatchCore::load_bytes(bytes, Path::new("valid"), src).unwrap();
        let (p, _) = m
            .predict(&probe(), PredictOptions { anomaly_map: true })
            .unwrap();
        assert_eq!(p.score, w.probe_score);
        assert!(p.anomaly_map.unwrap().iter().all(|v| v.is_finite()));
    }
}

/// Writes `bytes` as `name` in `dir`, loads it from disk, checks the folder is unchanged, and
/// returns the error.
fn load_file_err(dir: &Path, name: &str, bytes: &[u8], src: BackboneSource<'_>) -> Error {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    let before = snapshot(dir);
    let r = PatchCore::load(&p, src);
    assert_eq!(snapshot(dir), before, "{name}: files changed");
    match r {
        Ok(_) => panic!("{name}: loaded although it is broken"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(name),
                "{name}: message does not name the file: {msg}"
            );
            e
        }
    }
}

/// The tensors and metadata of a model file, editable.
struct Parts {
    tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
    meta: HashMap<String, String>,
}

fn parts(bytes: &[u8]) -> Parts {
    let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    let st = SafeTensors::deserialize(bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, (t.dtype(), t.shape().to_vec(), t.data().to_vec())))
        .collect();
    Parts { tensors, meta }
}

impl Parts {
    fn bytes(&self) -> Vec<u8> {
        let views: Vec<(String, TensorView<'_>)> = self
            .tensors
            .iter()
            .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, &Some(self.meta.clone())).unwrap()
    }

    fn bank_f32(&self) -> (Vec<usize>, Vec<f32>) {
        let (_, s, b) = &self.tensors["memory_bank"];
        let v = b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (s.clone(), v)
    }

    fn set_bank(&mut self, dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) {
        self.tensors
            .insert("memory_bank".into(), (dtype, shape, data));
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ---------------------------------------------------------------------------------------------
// Model files
// ---------------------------------------------------------------------------------------------

#[test]
fn valid_model_round_trips() {
    // The baseline every other test compares against: the saved model scores like the fitted
    // one (fitted → saved → loaded, bank bit-exact).
    assert_still_usable();
    let w = world();
    let m = PatchCore::load_bytes(&w.model_bytes, Path::new("m"), loaded()).unwrap();
    let p = parts(&w.model_bytes);
    let (shape, bank) = p.bank_f32();
    assert_eq!(m.memory_bank().shape(), shape.as_slice());
    assert_eq!(m.memory_bank().iter().copied().collect::<Vec<_>>(), bank);
}

#[test]
fn empty_truncated_and_wrong_magic_model_files() {
    let w = world();
    let dir = temp_dir("model-truncated");
    let n = w.model_bytes.len();
    let header = u64::from_le_bytes(w.model_bytes[..8].try_into().unwrap()) as usize;
    let mut cases: Vec<(String, Vec<u8>)> = vec![("empty.safetensors".into(), Vec::new())];
    for cut in [1, 7, 8, 9, 8 + header / 2, 8 + header, n - 4, n - 1] {
        cases.push((
            format!("cut{cut}.safetensors"),
            w.model_bytes[..cut].to_vec(),
        ));
    }
    // Wrong magic: a PNG, text, a header length of 2⁶³, and trailing garbage.
    cases.push((
        "image.safetensors".into(),
        std::fs::read(fixture("preprocess/mask.png")).unwrap(),
    ));
    cases.push((
        "text.safetensors".into(),
        b"{\"not\": \"a model\"}\n".to_vec(),
    ));
    let mut huge = w.model_bytes.clone();
    huge[..8].copy_from_slice(&(1u64 << 63).to_le_bytes());
    cases.push(("huge_header.safetensors".into(), huge));
    let mut padded = w.model_bytes.clone();
    padded.extend_from_slice(&[0u8; 3]);
    cases.push(("padded.safetensors".into(), padded));
    for (name, bytes) in &cases {
        for src in [loaded(), BackboneSource::Embedded] {
            let e = load_file_err(&dir, name, bytes, src);
            assert!(matches!(e, Error::InvalidFile { .. }), "{name}: {e:?}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert_still_usable();
}

#[test]
fn a_weights_file_or_foreign_safetensors_is_not_a_model() {
    let w = world();
    let dir = temp_dir("model-foreign");
    // Backbone weights: valid safetensors whose metadata (random weights) has no `format`.
    let e = load_file_err(&dir, "weights.safetensors", &w.weights, loaded());
    assert!(
        matches!(&e, Error::InvalidFile { reason, .. } if reason.contains("not a patchcore model file")),
        "{e:?}"
    );
    // Metadata of another tool.
    let mut p = parts(&w.model_bytes);
    p.meta.insert("format".into(), "pt".into());
    let e = load_file_err(&dir, "foreign.safetensors", &p.bytes(), loaded());
    assert!(
        matches!(&e, Error::InvalidFile { reason, .. } if reason.contains("`format` is `pt`")),
        "{e:?}"
    );
    // A future format version.
    let mut p = parts(&w.model_bytes);
    p.meta.insert("format_version".into(), "2".into());
    let e = load_file_err(&dir, "v2.safetensors", &p.bytes(), loaded());
    assert!(
        matches!(&e, Error::InvalidFile { reason, .. } if reason.contains("format version 2")),
        "{e:?}"
    );
    // A missing key.
    let mut p = parts(&w.model_bytes);
    p.meta.remove("scoring.k");
    let e = load_file_err(&dir, "nokey.safetensors", &p.bytes(), loaded());
    assert!(
        matches!(&e, Error::InvalidFile { reason, .. } if reason.contains("`scoring.k` is missing")),
        "{e:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert_still_usable();
}

#[test]
fn every_bit_flip_in_the_model_header_is_caught_or_harmless() {
    // Flip each bit of the length prefix and the JSON header: the load fails with a typed
    // error, or succeeds with a model that still scores (the flip hit e.g. a seed digit or the
    // crate version). Never a panic.
    let w = world();
    let header = u64::from_le_bytes(w.model_bytes[..8].try_into().unwrap()) as usize;
    let mut ok = 0;
    let mut errors: BTreeMap<&'static str, usize> = BTreeMap::new();
    for byte in 0..8 + header {
        for bit in 0..8 {
            let mut b = w.model_bytes.clone();
            b[byte] ^= 1 << bit;
            match PatchCore::load_bytes(&b, Path::new("flipped"), loaded()) {
                Ok(m) => {
                    ok += 1;
                    // A harmless flip leaves a usable model.
                    let r = m.predict(&probe(), PredictOptions { anomaly_map: false });
                    if let Err(e) = r {
                        assert!(
                            matches!(
                                e,
                                Error::InvalidParameter { .. } | Error::InvalidInput { .. }
                            ),
                            "byte {byte} bit {bit}: {e:?}"
                        );
                    }
                }
                Err(e) => {
                    let kind = match e {
                        Error::InvalidFile { .. } => "InvalidFile",
                        Error::TensorShape { .. } => "TensorShape",
                        Error::TensorDtype { .. } => "TensorDtype",
                        Error::NonFiniteTensor { .. } => "NonFiniteTensor",
                        Error::InvalidParameter { .. } => "InvalidParameter",
                        // A flipped letter in the tensor name hides the memory bank.
                        Error::MissingTensor { .. } => "MissingTensor",
                        other => panic!("byte {byte} bit {bit}: unexpected {other:?}"),
                    };
                    if byte < 8 {
                        assert_eq!(kind, "InvalidFile", "length prefix byte {byte} bit {bit}");
                    }
                    *errors.entry(kind).or_default() += 1;
                }
            }
        }
    }
    // Most flips break the JSON, a name or a number: far more errors than harmless flips.
    let total_err: usize = errors.values().sum();
    assert!(total_err > 4 * ok, "errors {errors:?}, ok {ok}");
    assert!(errors["InvalidFile"] > 0);
    assert_still_usable();
}

#[test]
fn bit_flips_in_embedded_weights_fail_the_fingerprint() {
    // A flipped bit anywhere in the embedded weights changes their sha256: refused, even when
    // the damaged weights would still parse.
    let w = world();
    let p = parts(&w.embedded_bytes);
    let (_, _, data) = &p.tensors["backbone_weights"];
    let mut flips = 0;
    for byte in (0..data.len()).step_by(97) {
        let mut q = parts(&w.embedded_bytes);
        q.tensors.get_mut("backbone_weights").unwrap().2[byte] ^= 1 << (byte % 8);
        let e = PatchCore::load_bytes(&q.bytes(), Path::new("m"), BackboneSource::Embedded)
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidFile { .. }
                    | Error::NonFiniteTensor { .. }
                    | Error::TensorShape { .. }
                    | Error::MissingTensor { .. }
                    | Error::TensorDtype { .. }
            ),
            "byte {byte}: {e:?}"
        );
        flips += 1;
    }
    assert!(flips > 100);
    // A flip in the tensor data that keeps the weights parseable is caught by the fingerprint.
    let mut q = parts(&w.embedded_bytes);
    let n = q.tensors["backbone_weights"].2.len();
    q.tensors.get_mut("backbone_weights").unwrap().2[n - 2] ^= 0x01;
    let e =
        PatchCore::load_bytes(&q.bytes(), Path::new("m"), BackboneSource::Embedded).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidFile { reason, .. } if reason.contains("sha256")),
        "{e:?}"
    );
    assert_still_usable();
}

#[test]
fn memory_bank_with_wrong_dtype_is_a_dtype_error() {
    let w = world();
    let dir = temp_dir("model-dtype");
    let p = parts(&w.model_bytes);
    let (shape, bank) = p.bank_f32();
    let as_f64: Vec<u8> = bank
        .iter()
        .flat_map(|&v| f64::from(v).to_le_bytes())
        .collect();
    let as_i32: Vec<u8> = bank
        .iter()
        .flat_map(|&v| (v as i32).to_le_bytes())
        .collect();
    let as_u8: Vec<u8> = bank.iter().map(|&v| v as u8).collect();
    for (name, dtype, data, found) in [
        ("f64.safetensors", Dtype::F64, as_f64, "F64"),
        ("i32.safetensors", Dtype::I32, as_i32, "I32"),
        ("u8.safetensors", Dtype::U8, as_u8, "U8"),
    ] {
        let mut q = parts(&w.model_bytes);
        q.set_bank(dtype, shape.clone(), data);
        let e = load_file_err(&dir, name, &q.bytes(), loaded());
        match &e {
            Error::TensorDtype {
                tensor,
                expected,
                found: f,
                ..
            } => {
                assert_eq!(tensor, "memory_bank");
                assert_eq!(expected, "F32 or F16");
                assert_eq!(f, found);
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert_still_usable();
}

#[test]
fn memory_bank_with_nan_inf_or_wrong_shape() {
    let w = world();
    let dir = temp_dir("model-bank");
    let p = parts(&w.model_bytes);
    let (shape, bank) = p.bank_f32();
    for (i, bad) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY]
        .into_iter()
        .enumerate()
    {
        let mut b = bank.clone();
        b[bank.len() / 2 + i] = bad;
        let mut q = parts(&w.model_bytes);
        q.set_bank(Dtype::F32, shape.clone(), f32_bytes(&b));
        let name = format!("nonfinite{i}.safetensors");
        let e = load_file_err(&dir, &name, &q.bytes(), loaded());
        assert!(
            matches!(&e, Error::NonFiniteTensor { tensor, .. } if tensor == "memory_bank"),
            "{e:?}"
        );
    }
    let (rows, dim) = (shape[0], shape[1]);
    for (name, s, data) in [
        ("transposed.safetensors", vec![dim, rows], bank.clone()),
        ("flat.safetensors", vec![rows * dim], bank.clone()),
        ("narrow.safetensors", vec![rows * 2, dim / 2], bank.clone()),
        ("no_rows.safetensors", vec![0, dim], Vec::new()),
    ] {
        let mut q = parts(&w.model_bytes);
        q.set_bank(Dtype::F32, s.clone(), f32_bytes(&data));
        let e = load_file_err(&dir, name, &q.bytes(), loaded());
        match &e {
            Error::TensorShape {
                tensor,
                expected,
                found,
                ..
            } => {
                assert_eq!(tensor, "memory_bank");
                assert_eq!(expected[1], dim, "{name}");
                assert_eq!(found, &s, "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    let mut q = parts(&w.model_bytes);
    q.tensors.remove("memory_bank");
    let e = load_file_err(&dir, "nobank.safetensors", &q.bytes(), loaded());
    assert!(
        matches!(&e, Error::MissingTensor { tensor, .. } if tensor == "memory_bank"),
        "{e:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert_still_usable();
}

#[test]
fn invalid_configuration_in_a_model_file() {
    let w = world();
    let dir = temp_dir("model-config");
    for (key, value, needle) in [
        ("coreset.size", "ratio:0.0", "coreset ratio"),
        ("coreset.size", "ratio:1.5", "coreset ratio"),
        ("coreset.size", "ratio:NaN", "coreset ratio"),
        ("coreset.size", "count:0", "coreset count"),
        ("scoring.k", "0", "`k`"),
        ("scoring.k", "-1", "scoring.k"),
        ("layers", "layer2,layer2", "twice"),
        ("layers", "layer5", "layers"),
        ("map.sigma", "inf", "sigma"),
        ("map.truncate", "NaN", "truncate"),
        ("preprocess.std", "0.2,0,0.2", "std"),
        ("preprocess.mean", "0.5,0.5", "three numbers"),
        ("embedding.aggregator", "original:2:16:16", "patch_size"),
        ("embedding.aggregator", "median:3", "embedding.aggregator"),
        ("batch_size", "0", "batch_size"),
        ("threshold", "NaN", "threshold"),
        ("threshold", "inf", "threshold"),
        ("backbone.block", "dense", "backbone.block"),
    ] {
        let mut q = parts(&w.model_bytes);
        q.meta.insert(key.into(), value.into());
        let name = format!(
            "{}-{}.safetensors",
            key.replace('.', "_"),
            value.replace(':', "_")
        );
        let e = load_file_err(&dir, &name, &q.bytes(), loaded());
        assert!(
            matches!(&e, Error::InvalidFile { reason, .. } if reason.contains(needle)),
            "{key}={value}: {e:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert_still_usable();
}

#[test]
fn k_larger_than_the_bank() {
    let w = world();
    let rows = parts(&w.model_bytes).bank_f32().0[0];
    // In a model file: refused at load time, naming k and the bank size.
    let mut q = parts(&w.model_bytes);
    q.meta.insert("scoring.k".into(), (rows + 1).to_string());
    let e = PatchCore::load_bytes(&q.bytes(), Path::new("bigk"), loaded()).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidFile { reason, .. }
            if reason.contains(&format!("{}", rows + 1)) && reason.contains(&format!("{rows} rows"))),
        "{e:?}"
    );
    // k equal to the bank size is fine.
    let mut q = parts(&w.model_bytes);
    q.meta.insert("scoring.k".into(), rows.to_string());
    let m = PatchCore::load_bytes(&q.bytes(), Path::new("k=rows"), loaded()).unwrap();
    m.predict(&probe(), PredictOptions::default()).unwrap();
    // Fitting with a k the coreset cannot satisfy fails before the coreset is computed.
    let mut p = params();
    p.scoring = ScoringConfig {
        k: 1000,
        ..Default::default()
    };
    let mut stages = Vec::new();
    let e = PatchCore::fit(
        p.check().unwrap(),
        w.backbone.clone(),
        &w.images,
        &mut |s| stages.push(s),
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidParameter { name: "k", reason } if reason.contains("1000")),
        "{e:?}"
    );
    // From parts: same rule.
    let bank = ndarray::Array2::<f32>::zeros((3, 16));
    let mut p = params();
    p.scoring.k = 4;
    let e = PatchCore::from_parts(p.check().unwrap(), w.backbone.clone(), bank, None).unwrap_err();
    assert!(
        matches!(e, Error::InvalidParameter { name: "k", .. }),
        "{e:?}"
    );
    assert_still_usable();
}

#[test]
fn weights_file_that_does_not_match_the_model() {
    let w = world();
    let dir = temp_dir("model-weights");
    let model = dir.join("model.safetensors");
    std::fs::write(&model, &w.model_bytes).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Same architecture, other random weights: the fingerprint differs.
        (
            "other.safetensors",
            Backbone::random_weights_safetensors(&spec(), Layer::Layer3, 1).unwrap(),
        ),
        ("empty.safetensors", Vec::new()),
        (
            "truncated.safetensors",
            w.weights[..w.weights.len() / 2].to_vec(),
        ),
        (
            "picture.safetensors",
            std::fs::read(fixture("preprocess/mask.png")).unwrap(),
        ),
    ];
    for (name, bytes) in &cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let before = snapshot(&dir);
        let e = PatchCore::load(&model, BackboneSource::File(&p)).unwrap_err();
        assert_eq!(snapshot(&dir), before);
        assert!(matches!(e, Error::InvalidFile { .. }), "{name}: {e:?}");
        if *name == "other.safetensors" {
            assert!(e.to_string().contains("sha256"), "{e}");
        } else {
            assert!(e.to_string().contains(name), "{e}");
        }
    }
    // A missing weights file is an I/O error naming it.
    let missing = dir.join("missing.safetensors");
    let e = PatchCore::load(&model, BackboneSource::File(&missing)).unwrap_err();
    assert!(
        matches!(&e, Error::Io { path, .. } if path == &missing),
        "{e:?}"
    );
    // The model has no embedded weights.
    let e = PatchCore::load(&model, BackboneSource::Embedded).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidFile { reason, .. } if reason.contains("no embedded")),
        "{e:?}"
    );
    // The right weights file works.
    let good = dir.join("good.safetensors");
    std::fs::write(&good, &w.weights).unwrap();
    let m = PatchCore::load(&model, BackboneSource::File(&good)).unwrap();
    assert_eq!(
        m.predict(&probe(), PredictOptions::default())
            .unwrap()
            .0
            .score,
        w.probe_score
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert_still_usable();
}

#[test]
fn saving_over_an_existing_file_is_refused_and_leaves_it() {
    let w = world();
    let dir = temp_dir("model-save");
    let p = dir.join("existing.safetensors");
    std::fs::write(&p, b"precious").unwrap();
    let m = PatchCore::load_bytes(&w.model_bytes, Path::new("m"), loaded()).unwrap();
    let before = snapshot(&dir);
    let e = m.save(&p, &SaveOptions::default()).unwrap_err();
    assert!(matches!(&e, Error::Io { path, .. } if path == &p), "{e:?}");
    // Embedding weights that are not the model's: refused, nothing written.
    let other = dir.join("other_weights.safetensors");
    std::fs::write(
        &other,
        Backbone::random_weights_safetensors(&spec(), Layer::Layer3, 9).unwrap(),
    )
    .unwrap();
    let before_other = snapshot(&dir);
    let e = m
        .save(
            &dir.join("new.safetensors"),
            &SaveOptions {
                overwrite: false,
                embed_weights: Some(other.clone()),
            },
        )
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidFile { path, .. } if path == &other),
        "{e:?}"
    );
    assert_eq!(snapshot(&dir), before_other);
    assert_eq!(before.len() + 1, before_other.len());
    assert_eq!(std::fs::read(&p).unwrap(), b"precious");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_still_usable();
}

// ---------------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------------

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

fn model() -> PatchCore {
    PatchCore::load_bytes(&world().model_bytes, Path::new("m"), loaded()).unwrap()
}

#[test]
fn tiny_and_thin_images() {
    let dir = temp_dir("images-thin");
    let limits = ImageLimits::default();
    let m = model();
    let one = dir.join("one.png");
    std::fs::write(
        &one,
        png(&RgbImage::from_pixel(1, 1, image::Rgb([9, 99, 199]))),
    )
    .unwrap();
    let strip = dir.join("strip.png");
    std::fs::write(
        &strip,
        png(&RgbImage::from_fn(10_000, 1, |x, _| {
            image::Rgb([(x % 256) as u8, 0, 255])
        })),
    )
    .unwrap();
    let before = snapshot(&dir);
    // Both decode.
    let img1 = preprocess::load_rgb(&one, &limits).unwrap();
    assert_eq!(
        (img1.width(), img1.height(), img1.get_pixel(0, 0).0),
        (1, 1, [9, 99, 199])
    );
    let img2 = preprocess::load_rgb(&strip, &limits).unwrap();
    assert_eq!((img2.width(), img2.height()), (10_000, 1));
    // The default pipeline upscales 1×1 to 256² and crops 224², every pixel the same colour.
    let x = preprocess::preprocess(&img1, &PreprocessConfig::default()).unwrap();
    assert_eq!(x.dim(), (3, 224, 224));
    let want = (9.0f32 / 255.0 - 0.485) / 0.229;
    assert!(x.index_axis(ndarray::Axis(0), 0).iter().all(|&v| v == want));
    // ShorterSide(256) on 1×10000 would be 256 × 2 560 000 pixels: a limit error.
    let e = preprocess::preprocess(&img2, &PreprocessConfig::default()).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded { .. }), "{e:?}");
    // The model (no resize) cannot see below 32 pixels: InvalidInput, for both.
    for p in [&one, &strip] {
        let e = m
            .predict_path(p, &limits, PredictOptions::default())
            .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidInput { reason } if reason.contains("at least 32")),
            "{e:?}"
        );
    }
    assert_eq!(snapshot(&dir), before);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_still_usable();
}

#[test]
fn sixteen_bit_images_score_like_their_high_byte() {
    let limits = ImageLimits::default();
    let m = model();
    let p16 = fixture("preprocess/rgb16.png");
    let img = preprocess::load_rgb(&p16, &limits).unwrap();
    // Independent high-byte conversion of the 16-bit samples, through the image crate.
    let raw = image::open(&p16).unwrap().into_rgb16();
    let high = RgbImage::from_fn(raw.width(), raw.height(), |x, y| {
        let [r, g, b] = raw.get_pixel(x, y).0;
        image::Rgb([(r >> 8) as u8, (g >> 8) as u8, (b >> 8) as u8])
    });
    assert_eq!(img, high);
    let a = m
        .predict_path(&p16, &limits, PredictOptions::default())
        .unwrap()
        .0;
    let b = m.predict(&high, PredictOptions::default()).unwrap().0;
    assert_eq!(a.score, b.score);
    assert!(a.score.is_finite());
    // 16-bit greyscale: the high byte in R, G and B; at 40×30 it is below the backbone's
    // 32-pixel minimum, which is an InvalidInput, not a decoding failure.
    let pg = fixture("preprocess/grey16.png");
    let grey = preprocess::load_rgb(&pg, &limits).unwrap();
    let raw = image::open(&pg).unwrap().into_luma16();
    assert_eq!(grey.dimensions(), (40, 30));
    for (x, y, px) in grey.enumerate_pixels() {
        let v = (raw.get_pixel(x, y).0[0] >> 8) as u8;
        assert_eq!(px.0, [v, v, v]);
    }
    let e = m
        .predict_path(&pg, &limits, PredictOptions::default())
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidInput { reason } if reason.contains("30×40")),
        "{e:?}"
    );
    assert_still_usable();
}

#[test]
fn cmyk_jpeg_decodes_to_rgb_like_pil() {
    let limits = ImageLimits::default();
    let img = preprocess::load_rgb(&fixture("bad_inputs/cmyk.jpg"), &limits).unwrap();
    let pil = image::open(fixture("bad_inputs/cmyk_rgb.png"))
        .unwrap()
        .into_rgb8();
    assert_eq!(img.dimensions(), pil.dimensions());
    // Both decoders invert Adobe CMYK the same way; JPEG IDCT differences stay small.
    let max = img
        .as_raw()
        .iter()
        .zip(pil.as_raw())
        .map(|(&a, &b)| (i16::from(a) - i16::from(b)).unsigned_abs())
        .max()
        .unwrap();
    assert!(max <= 8, "max difference to PIL {max}");
    let p = model()
        .predict_path(
            &fixture("bad_inputs/cmyk.jpg"),
            &limits,
            PredictOptions::default(),
        )
        .unwrap()
        .0;
    assert!(p.score.is_finite());
    assert_still_usable();
}

#[test]
fn animated_png_gives_its_first_frame_and_gif_is_an_image_error() {
    let limits = ImageLimits::default();
    let apng = preprocess::load_rgb(&fixture("bad_inputs/animated.png"), &limits).unwrap();
    let frame0 = image::open(fixture("bad_inputs/animated_frame0.png"))
        .unwrap()
        .into_rgb8();
    assert_eq!(apng, frame0);
    let gif = fixture("bad_inputs/animated.gif");
    for e in [
        preprocess::load_rgb(&gif, &limits).unwrap_err(),
        preprocess::load_mask(&gif, &limits).unwrap_err(),
        model()
            .predict_path(&gif, &limits, PredictOptions::default())
            .unwrap_err(),
    ] {
        assert!(
            matches!(&e, Error::Image { path, .. } if path == &gif),
            "{e:?}"
        );
    }
    assert_still_usable();
}

// ---------------------------------------------------------------------------------------------
// Training folders and parameters
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_training_folder() {
    let root = temp_dir("train-empty");
    let good = root.join("train/good");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::write(good.join(".hidden"), b"ignored").unwrap();
    let before = snapshot(&root);
    let e = Category::open(&root).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidInput { reason } if reason.contains("no training image")),
        "{e:?}"
    );
    let paths = list_images(&good).unwrap();
    assert!(paths.is_empty());
    let w = world();
    let e = PatchCore::fit_paths(
        params().check().unwrap(),
        w.backbone.clone(),
        &paths,
        &ImageLimits::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidInput { reason } if reason.contains("at least one")),
        "{e:?}"
    );
    assert_eq!(snapshot(&root), before);
    std::fs::remove_dir_all(&root).unwrap();
    assert_still_usable();
}

#[test]
fn one_training_image_is_enough() {
    let w = world();
    let root = temp_dir("train-one");
    let good = root.join("train/good");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::write(good.join("000.png"), png(&w.images[0])).unwrap();
    let before = snapshot(&root);
    let train = list_images(&good).unwrap();
    assert_eq!(train.len(), 1);
    let (m, _) = PatchCore::fit_paths(
        params().check().unwrap(),
        w.backbone.clone(),
        &train,
        &ImageLimits::default(),
        &mut |_| {},
    )
    .unwrap();
    // A 32×32 image gives a 4×4 grid at layer2: 16 rows, a quarter kept.
    assert_eq!(m.memory_bank().dim(), (4, 16));
    // Its own training image scores lower than a different texture.
    let own = m
        .predict(&w.images[0], PredictOptions::default())
        .unwrap()
        .0;
    let other = m.predict(&probe(), PredictOptions::default()).unwrap().0;
    assert!(own.score < other.score, "{} vs {}", own.score, other.score);
    assert_eq!(snapshot(&root), before);
    std::fs::remove_dir_all(&root).unwrap();
    assert_still_usable();
}

#[test]
fn unreadable_training_images_name_the_file() {
    let w = world();
    let root = temp_dir("train-bad");
    let good = root.join("train/good");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::write(good.join("000.png"), png(&w.images[0])).unwrap();
    std::fs::write(good.join("001.png"), b"this is a text file, not a PNG\n").unwrap();
    std::fs::copy(fixture("bad_inputs/animated.gif"), good.join("002.gif")).unwrap();
    let before = snapshot(&root);
    // The .gif extension is not an image extension of this crate: the folder is refused.
    let e = list_images(&good).unwrap_err();
    assert!(
        matches!(&e, Error::Image { path, .. } if path.ends_with("002.gif")),
        "{e:?}"
    );
    std::fs::remove_file(good.join("002.gif")).unwrap();
    let before_fit = snapshot(&root);
    assert_eq!(before_fit.len() + 1, before.len());
    let paths = list_images(&good).unwrap();
    let e = PatchCore::fit_paths(
        params().check().unwrap(),
        w.backbone.clone(),
        &paths,
        &ImageLimits::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::Image { path, .. } if path.ends_with("001.png")),
        "{e:?}"
    );
    assert_eq!(snapshot(&root), before_fit);
    std::fs::remove_dir_all(&root).unwrap();
    assert_still_usable();
}

#[test]
fn invalid_coreset_ratios_are_parameter_errors() {
    let w = world();
    for r in [0.0, 1.5, f64::NAN, -0.1, f64::INFINITY] {
        let mut p = params();
        p.coreset.size = CoresetSize::Ratio(r);
        let e = p.check().unwrap_err();
        assert!(
            matches!(
                &e,
                Error::InvalidParameter {
                    name: "coreset ratio",
                    ..
                }
            ),
            "{r}: {e:?}"
        );
    }
    // Ratio 1 keeps every row: 2 images × 16 patches.
    let mut p = params();
    p.coreset.size = CoresetSize::Ratio(1.0);
    let (m, _) = PatchCore::fit(
        p.check().unwrap(),
        w.backbone.clone(),
        &w.images,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(m.memory_bank().nrows(), 32);
    // A count above the bank size fails the fit with a parameter error.
    let mut p = params();
    p.coreset.size = CoresetSize::Count(33);
    let e = PatchCore::fit(
        p.check().unwrap(),
        w.backbone.clone(),
        &w.images,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidParameter { .. }), "{e:?}");
    assert_still_usable();
}

// ---------------------------------------------------------------------------------------------
// Tensor files (`patchcore embed` input)
// ---------------------------------------------------------------------------------------------

#[test]
fn tensor_files_with_wrong_dtype_or_non_finite_values() {
    use patchcore::tensor_io::read_f32;
    let one = |dtype: Dtype, data: Vec<u8>, n: usize| {
        let v = TensorView::new(dtype, vec![n], &data).unwrap();
        safetensors::serialize([("x", v)], &None).unwrap()
    };
    let p = Path::new("t.safetensors");
    for (dtype, data, found) in [
        (Dtype::F64, 1.5f64.to_le_bytes().repeat(3), "F64"),
        (Dtype::I64, 7i64.to_le_bytes().repeat(3), "I64"),
        (Dtype::I32, 7i32.to_le_bytes().repeat(3), "I32"),
        (Dtype::U8, vec![1, 2, 3], "U8"),
        (Dtype::BOOL, vec![0, 1, 0], "BOOL"),
    ] {
        let e = read_f32(&one(dtype, data, 3), p, "x").unwrap_err();
        assert!(
            matches!(&e, Error::TensorDtype { tensor, found: f, .. } if tensor == "x" && f == found),
            "{e:?}"
        );
    }
    for bytes in [
        one(Dtype::F32, f32_bytes(&[1.0, f32::NAN]), 2),
        one(Dtype::F32, f32_bytes(&[f32::NEG_INFINITY, 1.0]), 2),
        one(Dtype::F16, half::f16::INFINITY.to_le_bytes().to_vec(), 1),
        one(Dtype::BF16, half::bf16::NAN.to_le_bytes().to_vec(), 1),
    ] {
        let e = read_f32(&bytes, p, "x").unwrap_err();
        assert!(
            matches!(&e, Error::NonFiniteTensor { tensor, .. } if tensor == "x"),
            "{e:?}"
        );
    }
    // Widening is exact for the half types.
    let ok = read_f32(
        &one(
            Dtype::BF16,
            half::bf16::from_f32(-2.5).to_le_bytes().to_vec(),
            1,
        ),
        p,
        "x",
    )
    .unwrap();
    assert_eq!(ok.as_slice().unwrap(), &[-2.5]);
    assert_still_usable();
}
