//! PatchCore industrial anomaly detection on the CPU, in pure Rust.
//!
//! PatchCore (Roth et al., CVPR 2022) fits a *memory bank* of locally aware patch features
//! taken from images of good parts, and scores a new image by how far its patches are from
//! that bank. This crate implements the whole method without Python, libtorch or a GPU:
//!
//! | stage | module |
//! |---|---|
//! | decode, resize (PIL-exact antialiased bilinear), centre-crop, normalise | [`preprocess`] |
//! | ResNet-18/34/50, Wide-ResNet-50-2 from torchvision safetensors, BatchNorm folded | [`backbone`] |
//! | matrix products, convolution, pooling | [`kernels`] |
//! | locally aware patch embedding (unfold, align, adaptive pooling) | [`embedding`] |
//! | greedy coreset subsampling of the memory bank | [`coreset`] |
//! | exact k-nearest-neighbour search against the bank | [`knn`] |
//! | patch scores, image score with the paper's re-weighting | [`scoring`] |
//! | anomaly map (upsample, Gaussian blur) | [`anomaly_map`] |
//! | thresholding, connected components, contours | [`segmentation`] |
//! | image/pixel AUROC, AUPRO, F1-max, thresholds | [`metrics`] |
//! | the fitted model: fit (in memory or under a memory budget), update, one-file save/load | [`model`] |
//! | one inspection call: score, decision, map at the original size, defect regions, picture | [`inspect`] |
//! | MVTec AD folders, synthetic data, pictures | [`dataset`], [`synthetic`], [`visualize`] |
//! | safe file reads (regular files only, bounded) and atomic writes | [`io_util`] |
//!
//! # The whole flow
//!
//! ```
//! use patchcore::backbone::{Backbone, Layer, ResNetSpec};
//! use patchcore::inspect::{InspectOptions, RenderOptions};
//! use patchcore::model::{PatchCore, PatchCoreParams, PredictOptions};
//! use patchcore::preprocess::{PreprocessConfig, Resize};
//! use patchcore::synthetic::{defective_image, normal_image, Defect};
//!
//! # fn main() -> patchcore::Result<()> {
//! // Real use: Backbone::from_safetensors_file("wide_resnet50_2.safetensors", ...).
//! let layers = [Layer::Layer2, Layer::Layer3];
//! let backbone = Backbone::random(&ResNetSpec::resnet18(), &layers, 0)?;
//!
//! // Defaults follow the original implementation (resize 256, crop 224, ...); small images
//! // here keep the example fast.
//! let mut params = PatchCoreParams::default();
//! params.preprocess = PreprocessConfig {
//!     resize: Resize::ShorterSide(96),
//!     crop: Some((64, 64)),
//!     ..PreprocessConfig::default()
//! };
//! let config = params.check()?;
//!
//! // Synthetic images: the same seed gives the same image.
//! let good: Vec<_> = (0..4).map(|seed| normal_image(96, seed)).collect();
//! let (model, _timings) = PatchCore::fit(config, backbone, &good, &mut |_progress| {})?;
//!
//! let (bad, _mask) = defective_image(96, Defect::Spot, 10);
//! let (pred, _) = model.predict(&bad, PredictOptions::default())?;
//! let (ok, _) = model.predict(&normal_image(96, 11), PredictOptions::default())?;
//! assert!(pred.score > ok.score);
//! let heat_map = pred.anomaly_map.expect("asked for"); // 64 × 64, the crop size
//! assert_eq!(heat_map.dim(), (64, 64));
//!
//! // One call for an inspection station: score, decision at a threshold, the map at the
//! // original image size and the defect regions (bounding box, area, peak, outline) in
//! // original-image pixels; `render` draws the picture.
//! let threshold = (ok.score + pred.score) / 2.0;
//! let opts = InspectOptions { threshold: Some(threshold), ..InspectOptions::default() };
//! let inspection = model.inspect(&bad, &opts)?;
//! assert_eq!(inspection.anomalous, Some(true));
//! assert_eq!(inspection.anomaly_map.as_ref().map(|m| m.dim()), Some((96, 96)));
//! for region in &inspection.regions {
//!     println!("defect at {:?}, {} pixels, peak {}", region.bbox, region.area, region.peak);
//! }
//! let _picture = inspection.render(&bad, &RenderOptions::default())?;
//! # Ok(())
//! # }
//! ```
//!
//! Everything that can fail returns [`Error`], whose variants say whose fault it is (a bad
//! file, a bad parameter, input that does not fit, a resource limit, the operating system).
//! Results are deterministic: one explicit seed, and the same output whatever the number of
//! threads. Parallelism runs on the caller's rayon pool.
#![warn(missing_docs)]
// Library code reports bad input as `Error`, never by panicking on `unwrap`/`expect`
// (tests may use them). Every `unsafe` block carries a `// SAFETY:` proof.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod error;
pub mod io_util;
mod os_memory;
mod st_index;

pub mod kernels;

pub mod anomaly_map;
pub mod backbone;
pub mod coreset;
pub mod dataset;
pub mod embedding;
pub mod evaluate;
pub mod inspect;
pub mod knn;
pub mod metrics;
pub mod model;
pub mod preprocess;
pub mod scoring;
pub mod segmentation;
pub mod synthetic;
pub mod tensor_io;
pub mod visualize;

pub use error::{Error, Result};
