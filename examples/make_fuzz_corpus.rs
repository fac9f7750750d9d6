//! Writes the seed corpora of the fuzz targets under `fuzz/` (see `scripts/make_fuzz_corpus.sh`,
//! which also copies the image and tensor fixtures).
//!
//! ```text
//! cargo run --example make_fuzz_corpus -- fuzz/corpus
//! ```
//!
//! Seeds (all deterministic):
//! - `model_load/`: a tiny fitted model without and with embedded weights, and one with a
//!   threshold and the `Average` aggregator;
//! - `weights_load/`: random weights of the fuzz target's very small basic and bottleneck nets;
//! - `tensor_read/`: a tensor `x` in f32, f16 and bf16, and a 0-d and an empty tensor;
//! - `image_decode/`: small BMP and TIFF images, RGB and grey (the PNG and JPEG seeds are the
//!   preprocessing fixtures, copied by the script).
//!
//! The architectures must match `fuzz/fuzz_targets/common.rs`.

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use patchcore::anomaly_map::MapConfig;
use patchcore::backbone::{Backbone, BlockKind, Layer, ResNetSpec};
use patchcore::coreset::{CoresetConfig, CoresetSize};
use patchcore::embedding::Aggregator;
use patchcore::model::{PatchCore, PatchCoreParams, SaveOptions};
use patchcore::preprocess::{PreprocessConfig, Resize};
use safetensors::tensor::{Dtype, TensorView};

fn tiny_basic() -> ResNetSpec {
    ResNetSpec {
        name: "fuzz_basic".into(),
        block: BlockKind::Basic,
        blocks: [1, 1, 1, 1],
        stem_channels: 8,
        planes: [8, 16, 32, 64],
        width_per_group: 64,
    }
}

fn micro_basic() -> ResNetSpec {
    ResNetSpec {
        name: "fuzz_micro_basic".into(),
        block: BlockKind::Basic,
        blocks: [1, 1, 1, 1],
        stem_channels: 4,
        planes: [4, 4, 8, 8],
        width_per_group: 64,
    }
}

fn micro_bottleneck() -> ResNetSpec {
    ResNetSpec {
        name: "fuzz_micro_bottleneck".into(),
        block: BlockKind::Bottleneck,
        blocks: [1, 1, 1, 1],
        stem_channels: 4,
        planes: [2, 2, 4, 4],
        width_per_group: 128,
    }
}

fn write(path: PathBuf, bytes: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::write(&path, bytes)?;
    println!("{} ({} bytes)", path.display(), bytes.len());
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: make_fuzz_corpus OUT_DIR")?,
    );
    for t in ["model_load", "weights_load", "tensor_read", "image_decode"] {
        std::fs::create_dir_all(out.join(t))?;
    }

    // BMP and TIFF images (RGB and grey).
    let rgb =
        image::RgbImage::from_fn(7, 5, |x, y| image::Rgb([(x * 30) as u8, (y * 50) as u8, 9]));
    let grey = image::GrayImage::from_fn(6, 4, |x, y| image::Luma([(x * 40 + y) as u8]));
    for (name, format) in [
        ("rgb.bmp", image::ImageFormat::Bmp),
        ("rgb.tif", image::ImageFormat::Tiff),
    ] {
        let mut bytes = std::io::Cursor::new(Vec::new());
        rgb.write_to(&mut bytes, format)?;
        write(out.join("image_decode").join(name), bytes.get_ref())?;
    }
    for (name, format) in [
        ("grey.bmp", image::ImageFormat::Bmp),
        ("grey.tif", image::ImageFormat::Tiff),
    ] {
        let mut bytes = std::io::Cursor::new(Vec::new());
        grey.write_to(&mut bytes, format)?;
        write(out.join("image_decode").join(name), bytes.get_ref())?;
    }

    // Weights.
    let spec = tiny_basic();
    let layers = [Layer::Layer2, Layer::Layer3];
    let weights = Backbone::random_weights_safetensors(&spec, Layer::Layer3, 0)?;
    for (name, spec, last) in [
        ("basic_layer1", micro_basic(), Layer::Layer1),
        ("basic_layer3", micro_basic(), Layer::Layer3),
        ("basic_layer4", micro_basic(), Layer::Layer4),
        ("bottleneck_layer4", micro_bottleneck(), Layer::Layer4),
    ] {
        write(
            out.join(format!("weights_load/{name}.safetensors")),
            &Backbone::random_weights_safetensors(&spec, last, 1)?,
        )?;
    }

    // Models fitted with exactly these weights (the fuzz target loads the same bytes).
    let tmp = std::env::temp_dir().join(format!("patchcore-fuzz-corpus-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let wpath = tmp.join("weights.safetensors");
    std::fs::write(&wpath, &weights)?;
    let backbone = Backbone::from_safetensors_bytes(&weights, Path::new("w"), &spec, &layers)?;
    let mut gen = patchcore::synthetic::Generator::new(3);
    let images: Vec<_> = (0..2).map(|_| gen.normal_image(32)).collect();
    let base = PatchCoreParams {
        preprocess: PreprocessConfig {
            resize: Resize::None,
            crop: None,
            ..Default::default()
        },
        layers: layers.to_vec(),
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
    };
    let average = PatchCoreParams {
        aggregator: Aggregator::Average {
            patch_size: 1,
            target_dim: Some(8),
        },
        map: MapConfig {
            sigma: None,
            ..Default::default()
        },
        ..base.clone()
    };
    for (name, params, embed, threshold) in [
        ("plain", base.clone(), false, None),
        ("embedded", base, true, None),
        ("average_threshold", average, false, Some(1.5f32)),
    ] {
        let (mut model, _) =
            PatchCore::fit(params.check()?, backbone.clone(), &images, &mut |_| {})?;
        model.set_threshold(threshold);
        let p = tmp.join(format!("{name}.safetensors"));
        model.save(
            &p,
            &SaveOptions {
                overwrite: true,
                embed_weights: embed.then(|| wpath.clone()),
            },
        )?;
        write(
            out.join(format!("model_load/{name}.safetensors")),
            &std::fs::read(&p)?,
        )?;
    }
    std::fs::remove_dir_all(&tmp)?;

    // Tensors.
    let x = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0f32, -2.5, 0.0, 3.25, 1e-3, 7.0])?;
    let f32_bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let f16_bytes: Vec<u8> = x
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let bf16_bytes: Vec<u8> = x
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    for (name, dtype, shape, data) in [
        ("f32", Dtype::F32, vec![2, 3], &f32_bytes),
        ("f16", Dtype::F16, vec![2, 3], &f16_bytes),
        ("bf16", Dtype::BF16, vec![3, 2], &bf16_bytes),
        ("scalar", Dtype::F32, vec![], &f32_bytes[..4].to_vec()),
        ("empty", Dtype::F32, vec![0, 4], &Vec::new()),
    ] {
        let view = TensorView::new(dtype, shape, data).map_err(|e| format!("{e:?}"))?;
        let bytes = safetensors::serialize([("x", view)], &None).map_err(|e| format!("{e:?}"))?;
        write(out.join(format!("tensor_read/{name}.safetensors")), &bytes)?;
    }
    Ok(())
}
