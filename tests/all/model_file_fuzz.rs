//! `PatchCore::load_bytes` never panics, whatever the bytes: corrupted model files (with
//! embedded weights) and arbitrary metadata values.

use std::path::Path;

use crate::model_common::*;
use patchcore::backbone::{Backbone, Layer};
use patchcore::model::{BackboneSource, PatchCore, SaveOptions};
use patchcore::Error;
use proptest::prelude::*;

/// Positions biased towards the header (where a flipped byte changes the meaning).
fn corrupt(bytes: &[u8], edits: &[(usize, u8, bool)], cut: Option<usize>) -> Vec<u8> {
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut b = bytes.to_vec();
    for &(pos, val, in_header) in edits {
        let range = if in_header { header } else { b.len() };
        let i = pos % range;
        b[i] = val;
    }
    if let Some(c) = cut {
        b.truncate(c % (b.len() + 1));
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn load_bytes_never_panics(
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<bool>()), 1..6),
        cut in prop::option::of(any::<usize>()),
    ) {
        let (bytes, backbone) = fixture();
        let b = corrupt(bytes, &edits, cut);
        match PatchCore::load_bytes(&b, Path::new("fuzz.safetensors"), BackboneSource::Loaded(Box::new(backbone.clone()))) {
            Ok(m) => prop_assert!(m.memory_bank().iter().all(|v| v.is_finite())),
            Err(e) => prop_assert!(e.to_string().contains("fuzz.safetensors") || matches!(e, Error::InvalidParameter { .. }), "{e}"),
        }
        // The embedded-weights path too (corrupted weights go through the weights parser).
        match PatchCore::load_bytes(&b, Path::new("fuzz.safetensors"), BackboneSource::Embedded) {
            Ok(m) => prop_assert!(m.memory_bank().iter().all(|v| v.is_finite())),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// `PatchCore::load` reads the header, the bank and the embedded weights' tensors from disk
    /// one at a time (never the whole file); on any corrupted file it must give exactly what the
    /// in-memory path gives: the same error message, or the same bank and backbone.
    #[test]
    fn streaming_load_equals_in_memory_load(
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<bool>()), 1..6),
        cut in prop::option::of(any::<usize>()),
    ) {
        let (bytes, _) = fixture();
        let b = corrupt(bytes, &edits, cut);
        let dir = TempDir::new("stream-eq");
        let path = dir.join("m.safetensors");
        std::fs::write(&path, &b).unwrap();
        let from_file = PatchCore::load(&path, BackboneSource::Embedded);
        let from_bytes = PatchCore::load_bytes(&b, &path, BackboneSource::Embedded);
        match (from_file, from_bytes) {
            (Ok(f), Ok(m)) => {
                prop_assert_eq!(f.memory_bank(), m.memory_bank());
                prop_assert_eq!(f.backbone().weights_sha256(), m.backbone().weights_sha256());
            }
            (Err(f), Err(m)) => prop_assert_eq!(f.to_string(), m.to_string()),
            (f, m) => prop_assert!(false, "file {:?} vs bytes {:?}", f.err(), m.err()),
        }
    }

    /// Metadata values replaced by arbitrary text.
    #[test]
    fn arbitrary_metadata_values_never_panic(key_index in 0usize..64, value in "\\PC{0,24}") {
        let (bytes, backbone) = fixture();
        let (meta, _) = unpack(bytes);
        let mut keys: Vec<&String> = meta.keys().collect();
        keys.sort();
        let key = keys[key_index % keys.len()].clone();
        let b = rewrite(bytes, |m, _| { m.insert(key.clone(), value.clone()); });
        let _ = PatchCore::load_bytes(&b, Path::new("fuzz.safetensors"), BackboneSource::Loaded(Box::new(backbone.clone())));
    }
}

/// A tiny model file with embedded weights, and its backbone.
fn fixture() -> &'static (Vec<u8>, Backbone) {
    static F: std::sync::OnceLock<(Vec<u8>, Backbone)> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let dir = TempDir::new("err-fuzz");
        let w = dir.join("w.safetensors");
        std::fs::write(
            &w,
            Backbone::random_weights_safetensors(&tiny_spec(), Layer::Layer3, 1).unwrap(),
        )
        .unwrap();
        let bb = Backbone::from_safetensors_file(&w, &tiny_spec(), &LAYERS).unwrap();
        let path = dir.join("m.safetensors");
        tiny_model(bb.clone())
            .save(
                &path,
                &SaveOptions {
                    overwrite: false,
                    embed_weights: Some(w),
                },
            )
            .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // The uncorrupted file loads both ways.
        PatchCore::load_bytes(&bytes, &path, BackboneSource::Embedded).unwrap();
        PatchCore::load_bytes(&bytes, &path, BackboneSource::Loaded(Box::new(bb.clone()))).unwrap();
        (bytes, bb)
    })
}
