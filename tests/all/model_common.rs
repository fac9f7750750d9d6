//! Shared helpers of the `model_*` integration tests: small synthetic data, a small
//! configuration, temporary folders and bit-exact comparisons.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::{GrayImage, RgbImage};
use ndarray::Array2;
use patchcore::backbone::{Backbone, Layer, ResNetSpec};
use patchcore::embedding::{embedding_dim, Aggregator};
use patchcore::model::{PatchCore, PatchCoreParams, Prediction};
use patchcore::preprocess::{PreprocessConfig, Resize};
use patchcore::synthetic::{self, Defect};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

pub const SIZE: u32 = 96;
pub const LAYERS: [Layer; 2] = [Layer::Layer2, Layer::Layer3];

/// `n` normal images of `SIZE × SIZE` from `seed`.
pub fn normal_images(n: usize, seed: u64) -> Vec<RgbImage> {
    let mut gen = synthetic::Generator::new(seed);
    (0..n).map(|_| gen.normal_image(SIZE)).collect()
}

/// `n` defective images (alternating scratch / spot) with their masks.
pub fn defective_images(n: usize, seed: u64) -> Vec<(RgbImage, GrayImage, Defect)> {
    let mut gen = synthetic::Generator::new(seed);
    (0..n)
        .map(|i| {
            let d = if i % 2 == 0 {
                Defect::Scratch
            } else {
                Defect::Spot
            };
            let (img, mask) = gen.defective_image(SIZE, d);
            (img, mask, d)
        })
        .collect()
}

/// Small, fast parameters: 96 → centre crop 64, ResNet-18 layer2+layer3, 8 × 8 patch grid.
pub fn small_params() -> PatchCoreParams {
    PatchCoreParams {
        preprocess: PreprocessConfig {
            resize: Resize::ShorterSide(96),
            crop: Some((64, 64)),
            ..PreprocessConfig::default()
        },
        layers: LAYERS.to_vec(),
        ..PatchCoreParams::default()
    }
}

pub fn random_backbone(seed: u64) -> Backbone {
    Backbone::random(&ResNetSpec::resnet18(), &LAYERS, seed).unwrap()
}

/// A fresh empty temporary folder (removed when dropped).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        // The test modules share one process (one id): a number per folder keeps two modules
        // that pick the same tag apart.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "patchcore-model-test-{}-{n}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Names of the files in the folder, sorted.
    pub fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Bits of every value of an array (for exact comparisons that also distinguish -0.0 / NaN).
pub fn bits<'a>(it: impl IntoIterator<Item = &'a f32>) -> Vec<u32> {
    it.into_iter().map(|v| v.to_bits()).collect()
}

pub fn assert_same_bank(a: &PatchCore, b: &PatchCore) {
    assert_eq!(a.memory_bank().dim(), b.memory_bank().dim());
    assert!(
        bits(a.memory_bank().iter()) == bits(b.memory_bank().iter()),
        "memory banks differ"
    );
}

pub fn assert_same_predictions(a: &[Prediction], b: &[Prediction]) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.score.to_bits(), y.score.to_bits(), "image {i}: score");
        assert_eq!(x.max_patch, y.max_patch, "image {i}: max_patch");
        assert_eq!(x.patch_scores.dim(), y.patch_scores.dim(), "image {i}");
        assert!(
            bits(x.patch_scores.iter()) == bits(y.patch_scores.iter()),
            "image {i}: patch scores differ"
        );
        match (&x.anomaly_map, &y.anomaly_map) {
            (Some(m), Some(n)) => {
                assert_eq!(m.dim(), n.dim(), "image {i}: map size");
                assert!(bits(m.iter()) == bits(n.iter()), "image {i}: maps differ");
            }
            (None, None) => {}
            _ => panic!("image {i}: one prediction has a map, the other not"),
        }
    }
}

/// One tensor of a safetensors file, owned.
#[derive(Clone, Debug)]
pub struct RawTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Splits a safetensors file into its metadata and tensors.
pub fn unpack(bytes: &[u8]) -> (HashMap<String, String>, Vec<RawTensor>) {
    let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
    let meta = header.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut tensors: Vec<RawTensor> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| RawTensor {
            name,
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
            data: t.data().to_vec(),
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    (meta, tensors)
}

/// Builds a safetensors file from metadata and tensors.
pub fn pack(meta: &HashMap<String, String>, tensors: &[RawTensor]) -> Vec<u8> {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, &Some(meta.clone())).unwrap()
}

/// Rewrites a model file's bytes through `edit`.
pub fn rewrite(
    bytes: &[u8],
    edit: impl FnOnce(&mut HashMap<String, String>, &mut Vec<RawTensor>),
) -> Vec<u8> {
    let (mut meta, mut tensors) = unpack(bytes);
    edit(&mut meta, &mut tensors);
    pack(&meta, &tensors)
}

/// `path`'s display string, for messages.
pub fn shown(p: &Path) -> String {
    p.display().to_string()
}

/// Lower-case hex of a sha256.
pub fn hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Rows of the tiny model's memory bank.
pub const ROWS: usize = 6;

/// A small custom ResNet (fast to build and to clone).
pub fn tiny_spec() -> ResNetSpec {
    ResNetSpec {
        name: "tiny".to_string(),
        blocks: [1, 1, 1, 1],
        stem_channels: 8,
        planes: [8, 16, 32, 64],
        ..ResNetSpec::resnet18()
    }
}

/// `small_params` with a 16-dimensional Average embedding.
pub fn tiny_params() -> PatchCoreParams {
    let mut p = small_params();
    p.aggregator = Aggregator::Average {
        patch_size: 3,
        target_dim: Some(16),
    };
    p
}

/// Random weights for [`tiny_spec`].
pub fn tiny_backbone(seed: u64) -> Backbone {
    Backbone::random(&tiny_spec(), &LAYERS, seed).unwrap()
}

/// Embedding dimension of `params` on `bb`.
pub fn dim_of(params: &PatchCoreParams, bb: &Backbone) -> usize {
    let ch: Vec<usize> = params.layers.iter().map(|&l| bb.out_channels(l)).collect();
    embedding_dim(&ch, &params.aggregator)
}

/// A seeded random `rows × dim` bank.
pub fn random_bank(rows: usize, dim: usize, seed: u64) -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_fn((rows, dim), |_| rng.random_range(-1.0f32..1.0))
}

/// A tiny model from parts: `ROWS × 16` random bank, threshold 0.5.
pub fn tiny_model(backbone: Backbone) -> PatchCore {
    let params = tiny_params();
    let dim = dim_of(&params, &backbone);
    assert_eq!(dim, 16);
    PatchCore::from_parts(
        params.check().unwrap(),
        backbone,
        random_bank(ROWS, dim, 5),
        Some(0.5),
    )
    .unwrap()
}
