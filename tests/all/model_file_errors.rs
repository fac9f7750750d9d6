//! Model files that must be refused, each with a typed error and an actionable message
//! (fuzzing of `load_bytes` is in `model_file_fuzz.rs`).

use std::path::{Path, PathBuf};

use crate::model_common::*;
use patchcore::backbone::{Backbone, Layer, Precision, ResNetSpec};
use patchcore::coreset::{CoresetSize, Sampler};
use patchcore::model::{BackboneSource, FitProgress, PatchCore, SaveOptions};
use patchcore::Error;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::Dtype;

/// A saved tiny model without embedded weights: (folder, path, bytes).
fn saved_tiny(tag: &str) -> (TempDir, PathBuf, Vec<u8>) {
    let dir = TempDir::new(tag);
    let path = dir.join("model.safetensors");
    tiny_model(tiny_backbone(1))
        .save(&path, &SaveOptions::default())
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (dir, path, bytes)
}

fn load_loaded(bytes: &[u8], name: &Path) -> Result<PatchCore, Error> {
    PatchCore::load_bytes(
        bytes,
        name,
        BackboneSource::Loaded(Box::new(tiny_backbone(1))),
    )
}

fn msg(e: &Error) -> String {
    e.to_string()
}

/// Asserts an `InvalidFile` error about `path` whose message contains every `needle`.
fn assert_invalid_file(r: Result<PatchCore, Error>, path: &Path, needles: &[&str]) {
    match r {
        Err(e @ Error::InvalidFile { .. }) => {
            let m = msg(&e);
            assert!(
                m.contains(&shown(path)),
                "message does not name the file: {m}"
            );
            for n in needles {
                assert!(m.contains(n), "message lacks {n:?}: {m}");
            }
        }
        Err(e) => panic!("expected InvalidFile, got {e:?}"),
        Ok(_) => panic!("expected InvalidFile, the model loaded"),
    }
}

#[test]
fn the_tiny_fixture_loads() {
    let (_d, path, bytes) = saved_tiny("err-fixture");
    let m = load_loaded(&bytes, &path).unwrap();
    assert_eq!(m.memory_bank().dim(), (ROWS, 16));
    assert!(bits(m.memory_bank().iter()) == bits(random_bank(ROWS, 16, 5).iter()));
}

#[test]
fn other_weights_are_refused_with_both_fingerprints() {
    let (dir, path, _) = saved_tiny("err-sha");
    let fitted = hex(&tiny_backbone(1).weights_sha256());
    let other = hex(&tiny_backbone(2).weights_sha256());
    assert_ne!(fitted, other);
    let r = PatchCore::load(&path, BackboneSource::Loaded(Box::new(tiny_backbone(2))));
    assert_invalid_file(r, &path, &[&fitted, &other, "same weights"]);

    // Through weights files: fitted with file 1, loaded with file 2.
    let spec = tiny_spec();
    let w1 = dir.join("w1.safetensors");
    let w2 = dir.join("w2.safetensors");
    std::fs::write(
        &w1,
        Backbone::random_weights_safetensors(&spec, Layer::Layer3, 1).unwrap(),
    )
    .unwrap();
    std::fs::write(
        &w2,
        Backbone::random_weights_safetensors(&spec, Layer::Layer3, 2).unwrap(),
    )
    .unwrap();
    let b1 = Backbone::from_safetensors_file(&w1, &spec, &LAYERS).unwrap();
    let sha1 = hex(&b1.weights_sha256());
    let sha2 = hex(&Backbone::from_safetensors_file(&w2, &spec, &LAYERS)
        .unwrap()
        .weights_sha256());
    let p = dir.join("m1.safetensors");
    tiny_model(b1).save(&p, &SaveOptions::default()).unwrap();
    PatchCore::load(&p, BackboneSource::File(&w1)).unwrap();
    assert_invalid_file(
        PatchCore::load(&p, BackboneSource::File(&w2)),
        &p,
        &[&sha1, &sha2],
    );
    // Embedding the wrong weights file is refused at save time, and nothing is written.
    let model = PatchCore::load(&p, BackboneSource::File(&w1)).unwrap();
    let out = dir.join("embedded.safetensors");
    let e = model
        .save(
            &out,
            &SaveOptions {
                overwrite: false,
                embed_weights: Some(w2.clone()),
            },
        )
        .unwrap_err();
    assert!(matches!(e, Error::InvalidFile { .. }), "{e:?}");
    assert!(msg(&e).contains(&sha1) && msg(&e).contains(&sha2), "{e}");
    assert!(!out.exists());
    // A random backbone has no weights file: embedding its random-weights file is refused
    // (the fingerprints differ), with a message saying so.
    let rnd = tiny_model(tiny_backbone(1));
    let e = rnd
        .save(
            &out,
            &SaveOptions {
                overwrite: false,
                embed_weights: Some(w1.clone()),
            },
        )
        .unwrap_err();
    assert!(matches!(e, Error::InvalidFile { .. }), "{e:?}");
    assert!(!out.exists());
}

#[test]
fn another_architecture_is_refused() {
    let (dir, path, _) = saved_tiny("err-arch");
    // A backbone in memory of another architecture.
    let other = Backbone::random(&ResNetSpec::resnet18(), &LAYERS, 1).unwrap();
    assert_invalid_file(
        PatchCore::load(&path, BackboneSource::Loaded(Box::new(other))),
        &path,
        &["tiny", "resnet18"],
    );
    // A weights file of another architecture.
    let w = dir.join("r18.safetensors");
    std::fs::write(
        &w,
        Backbone::random_weights_safetensors(&ResNetSpec::resnet18(), Layer::Layer3, 1).unwrap(),
    )
    .unwrap();
    let e = PatchCore::load(&path, BackboneSource::File(&w)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidFile { .. } | Error::TensorShape { .. } | Error::MissingTensor { .. }
        ),
        "{e:?}"
    );
    assert!(msg(&e).contains(&shown(&w)), "{e}");
    // A backbone of the right weights but other taps.
    let taps = Backbone::random(&tiny_spec(), &[Layer::Layer2], 1).unwrap();
    assert_invalid_file(
        PatchCore::load(&path, BackboneSource::Loaded(Box::new(taps))),
        &path,
        &["Layer3"],
    );
}

#[test]
fn a_bank_of_another_shape_is_refused() {
    let (_d, path, bytes) = saved_tiny("err-dim");
    for shape in [
        vec![ROWS, 17],
        vec![ROWS * 16],
        vec![2, 3, 16],
        vec![ROWS + 1, 15],
    ] {
        let n: usize = shape.iter().product();
        let b = rewrite(&bytes, |_, t| {
            let bank = t.iter_mut().find(|t| t.name == "memory_bank").unwrap();
            bank.shape = shape.clone();
            bank.data = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
        });
        match load_loaded(&b, &path) {
            Err(e @ Error::TensorShape { .. }) => {
                let Error::TensorShape {
                    tensor,
                    expected,
                    found,
                    ..
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!(tensor, "memory_bank");
                assert_eq!(expected[1], 16, "{e}");
                assert_eq!(*found, shape);
                assert!(msg(&e).contains(&shown(&path)));
            }
            other => panic!("shape {shape:?}: expected TensorShape, got {other:?}"),
        }
    }
}

#[test]
fn format_and_version_are_checked() {
    let (_d, path, bytes) = saved_tiny("err-format");
    let with = |k: &str, v: &str| {
        rewrite(&bytes, |m, _| {
            m.insert(k.to_string(), v.to_string());
        })
    };
    assert_invalid_file(
        load_loaded(&with("format_version", "2"), &path),
        &path,
        &["version 2", "version 1"],
    );
    assert_invalid_file(
        load_loaded(&with("format_version", "one"), &path),
        &path,
        &["format_version", "one"],
    );
    assert_invalid_file(
        load_loaded(&with("format", "pt"), &path),
        &path,
        &["`pt`", "patchcore-model"],
    );
}

#[test]
fn every_missing_metadata_key_is_named() {
    let (_d, path, bytes) = saved_tiny("err-keys");
    let (meta, _) = unpack(&bytes);
    assert!(meta.len() > 25, "{meta:?}");
    for key in meta.keys() {
        let b = rewrite(&bytes, |m, _| {
            m.remove(key);
        });
        let r = load_loaded(&b, &path);
        match key.as_str() {
            // Informative only.
            "crate_version" => {
                r.unwrap();
            }
            // Optional: no threshold.
            "threshold" => assert_eq!(r.unwrap().threshold(), None),
            // Optional: files written before it existed run in f32.
            "backbone.precision" => assert_eq!(r.unwrap().precision(), Precision::F32),
            _ => assert_invalid_file(r, &path, &[&format!("`{key}`"), "missing"]),
        }
    }
    // No metadata at all (e.g. a weights file given as a model).
    let (_, tensors) = unpack(&bytes);
    let views: Vec<_> = tensors
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    let b = safetensors::serialize(views, &None).unwrap();
    assert_invalid_file(load_loaded(&b, &path), &path, &["metadata"]);
}

#[test]
fn bad_metadata_values_are_named() {
    let (_d, path, bytes) = saved_tiny("err-values");
    let cases: &[(&str, &str, &[&str])] = &[
        ("batch_size", "four", &["batch_size", "four"]),
        ("batch_size", "0", &["batch_size"]),
        ("scoring.k", "0", &["`k`"]),
        (
            "scoring.distance",
            "manhattan",
            &["scoring.distance", "manhattan"],
        ),
        ("layers", "layer2,layer9", &["layers"]),
        ("layers", "layer2,layer2", &["layers", "twice"]),
        ("map.sigma", "-1", &["sigma"]),
        ("embedding.aggregator", "original:2:16:16", &["patch_size"]),
        ("coreset.size", "ratio:1.5", &["coreset ratio"]),
        ("preprocess.std", "0.2,0.2", &["preprocess.std", "three"]),
        ("preprocess.crop", "64y64", &["preprocess.crop"]),
        ("threshold", "NaN", &["threshold"]),
        ("backbone.blocks", "1,1,1", &["backbone.blocks"]),
        (
            "backbone.precision",
            "int4",
            &["backbone.precision", "int4"],
        ),
    ];
    for (k, v, needles) in cases {
        let b = rewrite(&bytes, |m, _| {
            m.insert(k.to_string(), v.to_string());
        });
        assert_invalid_file(load_loaded(&b, &path), &path, needles);
    }
}

#[test]
fn damaged_files_are_refused() {
    let (dir, path, bytes) = saved_tiny("err-damaged");
    // Zero bytes, truncated anywhere, garbage, a huge header length.
    let mut cases: Vec<(String, Vec<u8>)> = vec![("empty".into(), vec![])];
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for cut in [1, 7, 8, 9, 8 + header / 2, 8 + header, bytes.len() - 1] {
        cases.push((format!("cut at {cut}"), bytes[..cut].to_vec()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    cases.push((
        "garbage".into(),
        (0..4096).map(|_| rng.random::<u8>()).collect(),
    ));
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    cases.push(("huge header length".into(), huge));
    let mut broken_json = bytes.clone();
    broken_json[8] = b'[';
    cases.push(("broken json".into(), broken_json));
    let mut extra = bytes.clone();
    extra.extend_from_slice(&[0; 4]);
    cases.push(("trailing bytes".into(), extra));
    for (what, b) in &cases {
        match load_loaded(b, &path) {
            Err(e @ Error::InvalidFile { .. }) => {
                assert!(msg(&e).contains(&shown(&path)), "{what}: {e}")
            }
            other => panic!("{what}: expected InvalidFile, got {other:?}"),
        }
    }
    // The same through the file system, and a missing file.
    let p = dir.join("empty.safetensors");
    std::fs::write(&p, b"").unwrap();
    assert_invalid_file(
        PatchCore::load(&p, BackboneSource::Loaded(Box::new(tiny_backbone(1)))),
        &p,
        &[],
    );
    let missing = dir.join("nope.safetensors");
    let e = PatchCore::load(&missing, BackboneSource::Embedded).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(msg(&e).contains(&shown(&missing)));
}

#[test]
fn bad_bank_values_and_dtypes_are_refused() {
    let (_d, path, bytes) = saved_tiny("err-bank");
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let b = rewrite(&bytes, |_, t| {
            let bank = t.iter_mut().find(|t| t.name == "memory_bank").unwrap();
            bank.data[4 * 37..4 * 38].copy_from_slice(&bad.to_le_bytes());
        });
        match load_loaded(&b, &path) {
            Err(e @ Error::NonFiniteTensor { .. }) => {
                assert!(msg(&e).contains("memory_bank") && msg(&e).contains(&shown(&path)))
            }
            other => panic!("{bad}: expected NonFiniteTensor, got {other:?}"),
        }
    }
    // F64 and I32 banks (F16 is a valid, half-precision bank).
    for (dtype, size, name) in [(Dtype::F64, 8, "F64"), (Dtype::I32, 4, "I32")] {
        let b = rewrite(&bytes, |_, t| {
            let bank = t.iter_mut().find(|t| t.name == "memory_bank").unwrap();
            bank.dtype = dtype;
            bank.data = vec![0; ROWS * 16 * size];
        });
        match load_loaded(&b, &path) {
            Err(Error::TensorDtype {
                tensor,
                expected,
                found,
                ..
            }) => {
                assert_eq!(tensor, "memory_bank");
                assert_eq!(expected, "F32 or F16");
                assert_eq!(found, name);
            }
            other => panic!("{name}: expected TensorDtype, got {other:?}"),
        }
    }
    // An F16 bank holding an infinity or a NaN.
    for bad in [half::f16::INFINITY, half::f16::NAN] {
        let b = rewrite(&bytes, |_, t| {
            let bank = t.iter_mut().find(|t| t.name == "memory_bank").unwrap();
            bank.dtype = Dtype::F16;
            bank.data = vec![0; ROWS * 16 * 2];
            bank.data[2 * 37..2 * 38].copy_from_slice(&bad.to_le_bytes());
        });
        match load_loaded(&b, &path) {
            Err(e @ Error::NonFiniteTensor { .. }) => assert!(msg(&e).contains("memory_bank")),
            other => panic!("{bad}: expected NonFiniteTensor, got {other:?}"),
        }
    }
    // No bank at all.
    let b = rewrite(&bytes, |_, t| t.retain(|t| t.name != "memory_bank"));
    match load_loaded(&b, &path) {
        Err(e @ Error::MissingTensor { .. }) => assert!(msg(&e).contains("memory_bank")),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
}

#[test]
fn embedded_weights_that_are_absent_are_refused() {
    let (_d, path, _) = saved_tiny("err-noweights");
    assert_invalid_file(
        PatchCore::load(&path, BackboneSource::Embedded),
        &path,
        &["no embedded backbone weights", "weights file"],
    );
}

#[test]
fn an_existing_output_is_never_overwritten_without_permission() {
    let dir = TempDir::new("err-overwrite");
    let model = tiny_model(tiny_backbone(1));
    let out = dir.join("model.safetensors");
    std::fs::write(&out, b"precious").unwrap();
    let e = model.save(&out, &SaveOptions::default()).unwrap_err();
    match &e {
        Error::Io { path, source } => {
            assert_eq!(path, &out);
            assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists);
            assert!(msg(&e).contains("overwrite"), "{e}");
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    assert_eq!(dir.files(), ["model.safetensors"]);
    // With permission it is replaced, atomically, and nothing else is left.
    model
        .save(
            &out,
            &SaveOptions {
                overwrite: true,
                embed_weights: None,
            },
        )
        .unwrap();
    assert_eq!(dir.files(), ["model.safetensors"]);
    load_loaded(&std::fs::read(&out).unwrap(), &out).unwrap();
    // A non-finite threshold is refused before anything is written.
    let mut m = tiny_model(tiny_backbone(1));
    m.set_threshold(Some(f32::NAN));
    let other = dir.join("nan.safetensors");
    let e = m.save(&other, &SaveOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidParameter {
                name: "threshold",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(dir.files(), ["model.safetensors"]);
}

#[test]
fn k_larger_than_the_bank_is_refused() {
    // At load.
    let (_d, path, bytes) = saved_tiny("err-k");
    let b = rewrite(&bytes, |m, _| {
        m.insert("scoring.k".into(), (ROWS + 1).to_string());
    });
    assert_invalid_file(
        load_loaded(&b, &path),
        &path,
        &[
            "scoring.k",
            &format!("{}", ROWS + 1),
            &format!("only {ROWS} rows"),
        ],
    );
    let b = rewrite(&bytes, |m, _| {
        m.insert("scoring.k".into(), ROWS.to_string());
    });
    load_loaded(&b, &path).unwrap();

    // From parts.
    let mut params = tiny_params();
    params.scoring.k = 4;
    let e = PatchCore::from_parts(
        params.clone().check().unwrap(),
        tiny_backbone(1),
        random_bank(3, 16, 1),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::InvalidParameter { name: "k", .. }),
        "{e:?}"
    );
    assert!(msg(&e).contains("only 3 rows"), "{e}");

    // When fitting gives fewer rows than k: a count, then a ratio on a tiny bank (one image,
    // 8 × 8 = 64 rows, 1 % → 1 row). The error comes before the coreset is computed.
    for size in [CoresetSize::Count(2), CoresetSize::Ratio(0.01)] {
        let mut p = params.clone();
        p.scoring.k = 3;
        p.coreset.size = size;
        let mut events = vec![];
        let e = PatchCore::fit(
            p.check().unwrap(),
            tiny_backbone(1),
            &normal_images(1, 3),
            &mut |ev| events.push(ev),
        )
        .unwrap_err();
        assert!(
            matches!(e, Error::InvalidParameter { name: "k", .. }),
            "{size:?}: {e:?}"
        );
        assert!(msg(&e).contains('3') && msg(&e).contains("rows"), "{e}");
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, FitProgress::CoresetStarted { .. })),
            "{events:?}"
        );
    }
    // Sampler::None keeps every row whatever the size says: 64 rows ≥ k.
    let mut p = params.clone();
    p.scoring.k = 3;
    p.coreset.sampler = Sampler::None;
    p.coreset.size = CoresetSize::Count(1_000_000);
    let (m, _) = PatchCore::fit(
        p.check().unwrap(),
        tiny_backbone(1),
        &normal_images(1, 3),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(m.memory_bank().nrows(), 64);
}

/// The int8 keys: a precision the file cannot set up, and activation ranges that are not
/// finite, negative, of the wrong count or without their image count, are refused with the
/// file named; good ones load and switch the backbone to int8.
#[test]
fn bad_int8_calibrations_are_refused() {
    let (_d, path, bytes) = saved_tiny("err-int8");
    let n = tiny_backbone(1).calibration_len();
    assert!(n > 2, "{n}");
    let ranges = |f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<Vec<_>>().join(",");
    let good = ranges(&|i| format!("{}.5", i + 1));
    let with = |precision: &str, cal: Option<&str>, images: Option<&str>| {
        rewrite(&bytes, |m, _| {
            m.insert("backbone.precision".into(), precision.into());
            if let Some(c) = cal {
                m.insert("backbone.calibration".into(), c.into());
            }
            if let Some(i) = images {
                m.insert("backbone.calibration_images".into(), i.into());
            }
        })
    };
    // int8 without ranges: the model cannot be set up.
    assert_invalid_file(
        load_loaded(&with("int8", None, None), &path),
        &path,
        &["int8", "calibration"],
    );
    let nan = ranges(&|i| if i == 1 { "NaN".into() } else { "1".into() });
    let negative = ranges(&|i| if i == 2 { "-3".into() } else { "1".into() });
    let short = ranges(&|i| format!("{i}"))
        .rsplit_once(',')
        .unwrap()
        .0
        .to_string();
    let cases: [(&str, Option<&str>, &[&str]); 5] = [
        (&nan, Some("4"), &["backbone.calibration", "range 1"]),
        (&negative, Some("4"), &["backbone.calibration", "range 2"]),
        (
            &short,
            Some("4"),
            &["backbone.calibration", &format!("{}", n - 1)],
        ),
        ("1,x", Some("4"), &["backbone.calibration", "parsed"]),
        (&good, None, &["backbone.calibration_images", "missing"]),
    ];
    for (cal, images, needles) in cases {
        for precision in ["f32", "int8"] {
            assert_invalid_file(
                load_loaded(&with(precision, Some(cal), images), &path),
                &path,
                needles,
            );
        }
    }
    let m = load_loaded(&with("int8", Some(&good), Some("4")), &path).unwrap();
    assert_eq!(m.precision(), Precision::Int8);
    assert_eq!(m.backbone().precision(), Precision::Int8);
    let cal = m.calibration().unwrap();
    assert_eq!(
        (cal.maxima()[0], cal.maxima()[n - 1], cal.images()),
        (1.5, n as f32 + 0.5, 4)
    );
}
