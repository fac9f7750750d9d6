//! ResNet-family backbones (torchvision layout) with BatchNorm folded at load time.
//!
//! A [`Backbone`] is built from a [`ResNetSpec`] (architecture), weights (a safetensors file with
//! torchvision/timm tensor names, or seeded random weights) and the list of [`Layer`]s whose
//! outputs ("taps") the caller wants. Only the stages up to the deepest tap are loaded and run.
//!
//! ```no_run
//! use patchcore::backbone::{Backbone, Layer, ResNetSpec};
//!
//! let spec = ResNetSpec::wide_resnet50_2();
//! let net = Backbone::from_safetensors_file(
//!     "wide_resnet50_2.safetensors",
//!     &spec,
//!     &[Layer::Layer2, Layer::Layer3],
//! )?;
//! let input = ndarray::Array4::<f32>::zeros((1, 3, 224, 224));
//! let taps = net.forward(input.view())?;
//! assert_eq!(taps[0].shape(), &[1, 512, 28, 28]);
//! assert_eq!(taps[1].shape(), &[1, 1024, 14, 14]);
//! # Ok::<(), patchcore::Error>(())
//! ```

mod arch;
mod block;
mod layout;
mod precision;
mod resnet;
mod weights;
mod work;

use std::fmt;
use std::path::Path;

use ndarray::{Array4, ArrayView4};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

pub use arch::{BlockKind, Layer, ResNetSpec, KNOWN_ARCHITECTURES};
pub use precision::{Calibration, Precision};

use crate::{Error, Result};

/// Smallest accepted input height/width (the network's total stride).
pub const MIN_INPUT_SIZE: usize = 32;
/// Largest accepted input height/width (protects memory; a 8192² WRN50 image needs ~4 GB of
/// activations).
pub const MAX_INPUT_SIZE: usize = 8192;

/// The `__metadata__` key that [`Backbone::random_weights_safetensors`] sets to `true`, so a
/// file of random weights can be told from trained ones ([`Backbone::is_random`]).
pub const RANDOM_WEIGHTS_KEY: &str = "patchcore.random_weights";

/// A ResNet feature extractor returning the outputs of selected stages.
///
/// `Backbone` is immutable after construction and `Send + Sync`; [`Backbone::forward`] may be
/// called from several threads.
#[derive(Clone)]
pub struct Backbone {
    spec: ResNetSpec,
    taps: Vec<Layer>,
    net: resnet::Net,
    sha256: [u8; 32],
    random: bool,
    /// The weights are out (see [`Backbone::stash_weights`]).
    stashed: bool,
}

impl fmt::Debug for Backbone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex: String = self.sha256.iter().map(|b| format!("{b:02x}")).collect();
        f.debug_struct("Backbone")
            .field("spec", &self.spec)
            .field("taps", &self.taps)
            .field("weights_sha256", &hex)
            .finish_non_exhaustive()
    }
}

/// Checks the tap list and returns the deepest tap.
fn deepest_tap(taps: &[Layer]) -> Result<Layer> {
    for (i, t) in taps.iter().enumerate() {
        if taps[..i].contains(t) {
            return Err(Error::param(
                "layers",
                format!("layer {t} is requested twice in {taps:?}"),
            ));
        }
    }
    taps.iter().copied().max().ok_or_else(|| {
        Error::param(
            "layers",
            "at least one layer (layer1..layer4) must be tapped",
        )
    })
}

impl Backbone {
    /// Loads weights from a safetensors file. Only the header and the tensors the network
    /// needs are read (one at a time), so memory stays at the folded weights even for a file
    /// holding the whole network; the SHA-256 fingerprint covers the whole file. The file is
    /// opened once and everything (tensors and fingerprint) is read through that handle, so a
    /// file renamed over `path` meanwhile cannot mix two sets of weights.
    ///
    /// Tensors use torchvision/timm names (`conv1.weight`, `bn1.*`, `layer2.0.conv1.weight`,
    /// `layer2.0.downsample.{0,1}.*`, ...) in F32, F16 or BF16. `fc.*`, `num_batches_tracked`,
    /// unknown names and stages past the deepest tap are ignored. BatchNorm (eval mode,
    /// ε = 1e-5) is folded into the convolutions.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read or is not a regular file (a folder, a FIFO, a
    /// device); otherwise as [`Backbone::from_safetensors_bytes`].
    pub fn from_safetensors_file(
        path: impl AsRef<Path>,
        spec: &ResNetSpec,
        taps: &[Layer],
    ) -> Result<Backbone> {
        let path = path.as_ref();
        // Validate the cheap arguments before reading a possibly large file.
        spec.validate()?;
        deepest_tap(taps)?;
        // One open handle: the tensors and the fingerprint are read from the same file even
        // if another one is renamed over `path` meanwhile.
        let (file, len) = crate::io_util::open_regular(path)?;
        Self::from_safetensors_file_range(file, path, 0, len, spec, taps)
    }

    /// [`Backbone::from_safetensors_file`] for a safetensors stream stored at bytes
    /// `base..base + len` of a file (weights embedded in a model file); the fingerprint is the
    /// SHA-256 of that range. Everything is read through `file` (`path` names it in messages).
    pub(crate) fn from_safetensors_file_range(
        file: std::fs::File,
        path: &Path,
        base: u64,
        len: u64,
        spec: &ResNetSpec,
        taps: &[Layer],
    ) -> Result<Backbone> {
        spec.validate()?;
        let last = deepest_tap(taps)?;
        let mut hashed = file.try_clone().map_err(|e| Error::io(path, e))?;
        let mut src = weights::SafetensorsSource::open_range(file, path, base, len, spec, last)?;
        let net = resnet::Net::build(spec, last, &mut src)?;
        src.check_no_extra_blocks()?;
        let random = src.marked_random();
        drop(src);
        Ok(Backbone {
            spec: spec.clone(),
            taps: taps.to_vec(),
            net,
            sha256: weights::sha256_file_range(&mut hashed, path, base, len)?,
            random,
            stashed: false,
        })
    }

    /// Loads weights from the bytes of a safetensors file; `display_name` is used in error
    /// messages (e.g. the original path, or `<memory>`).
    ///
    /// # Errors
    /// - [`Error::InvalidParameter`] / [`Error::LimitExceeded`]: invalid `spec`, empty or
    ///   duplicated `taps`;
    /// - [`Error::InvalidFile`]: malformed, truncated or empty file, negative BatchNorm variance,
    ///   or weights of a different architecture (the message says which architecture the file
    ///   looks like and names the first mismatching tensor);
    /// - [`Error::MissingTensor`], [`Error::TensorShape`]: a needed tensor is absent or has the
    ///   wrong shape (and the file's architecture cannot be recognised as a different one);
    /// - [`Error::TensorDtype`]: a needed tensor is not F32/F16/BF16;
    /// - [`Error::NonFiniteTensor`]: a needed tensor holds NaN or ±∞.
    pub fn from_safetensors_bytes(
        bytes: &[u8],
        display_name: &Path,
        spec: &ResNetSpec,
        taps: &[Layer],
    ) -> Result<Backbone> {
        spec.validate()?;
        let last = deepest_tap(taps)?;
        let mut src = weights::SafetensorsSource::parse(bytes, display_name, spec, last)?;
        let net = resnet::Net::build(spec, last, &mut src)?;
        src.check_no_extra_blocks()?;
        Ok(Backbone {
            spec: spec.clone(),
            taps: taps.to_vec(),
            net,
            sha256: Sha256::digest(bytes).into(),
            random: src.marked_random(),
            stashed: false,
        })
    }

    /// A backbone with seeded random weights (He-uniform convolutions, randomised BatchNorm
    /// statistics), for examples without downloads and for benchmarks. Same `spec` and `seed` →
    /// same weights; the weights of a stage do not depend on the deepest tap.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] / [`Error::LimitExceeded`] for an invalid `spec` or `taps`.
    pub fn random(spec: &ResNetSpec, taps: &[Layer], seed: u64) -> Result<Backbone> {
        spec.validate()?;
        let last = deepest_tap(taps)?;
        let mut src = weights::RandomSource::new(seed, spec.block);
        let net = resnet::Net::build(spec, last, &mut src)?;
        let mut h = Sha256::new();
        h.update(b"patchcore random resnet v1\0");
        h.update(seed.to_le_bytes());
        h.update(spec.canonical_bytes());
        Ok(Backbone {
            spec: spec.clone(),
            taps: taps.to_vec(),
            net,
            sha256: h.finalize().into(),
            random: true,
            stashed: false,
        })
    }

    /// Seeded random weights for `spec` up to `last`, written as a safetensors file in
    /// torchvision layout (the same weights as [`Backbone::random`] with the same seed). Useful
    /// to try the command-line tool or a pipeline on a machine without downloaded weights.
    /// The header's `__metadata__` holds [`RANDOM_WEIGHTS_KEY`] = `true` (and the seed under
    /// `patchcore.seed`), so a backbone loaded from the file reports [`Backbone::is_random`].
    ///
    /// # Errors
    /// As [`Backbone::random`].
    pub fn random_weights_safetensors(
        spec: &ResNetSpec,
        last: Layer,
        seed: u64,
    ) -> Result<Vec<u8>> {
        spec.validate()?;
        struct Recorder {
            inner: weights::RandomSource,
            tensors: Vec<(String, Vec<usize>, Vec<u8>)>,
        }
        impl weights::TensorSource for Recorder {
            fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
                let v = self.inner.get(name, shape)?;
                let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                self.tensors.push((name.to_string(), shape.to_vec(), bytes));
                Ok(v)
            }
            fn path(&self) -> &std::path::Path {
                self.inner.path()
            }
        }
        let mut rec = Recorder {
            inner: weights::RandomSource::new(seed, spec.block),
            tensors: Vec::new(),
        };
        resnet::Net::build(spec, last, &mut rec)?;
        let mut views = Vec::with_capacity(rec.tensors.len());
        for (name, shape, bytes) in &rec.tensors {
            let v =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .map_err(|e| Error::input(format!("tensor `{name}`: {e:?}")))?;
            views.push((name.as_str(), v));
        }
        let meta = std::collections::HashMap::from([
            (RANDOM_WEIGHTS_KEY.to_string(), "true".to_string()),
            ("patchcore.seed".to_string(), seed.to_string()),
            ("patchcore.arch".to_string(), spec.name.to_string()),
        ]);
        safetensors::serialize(views, &Some(meta))
            .map_err(|e| Error::input(format!("cannot serialise random weights: {e:?}")))
    }

    /// [`Backbone::random_weights_safetensors`] written to `path` (through a temporary sibling
    /// and a rename, so a failure leaves no half-written file). An existing `path` is only
    /// replaced when `overwrite`. Returns the SHA-256 of the written bytes.
    ///
    /// # Errors
    /// As [`Backbone::random`]; [`Error::Io`] when the file exists (and not `overwrite`) or
    /// cannot be written.
    pub fn write_random_weights(
        path: &Path,
        spec: &ResNetSpec,
        last: Layer,
        seed: u64,
        overwrite: bool,
    ) -> Result<[u8; 32]> {
        let bytes = Self::random_weights_safetensors(spec, last, seed)?;
        crate::io_util::write_atomic(path, overwrite, |f| {
            use std::io::Write;
            f.write_all(&bytes).map_err(|e| Error::io(path, e))
        })?;
        Ok(Sha256::digest(&bytes).into())
    }

    /// `true` when the weights are seeded random ones ([`Backbone::random`], or a file written by
    /// [`Backbone::random_weights_safetensors`]): scores computed with them mean nothing.
    pub fn is_random(&self) -> bool {
        self.random
    }

    /// Runs the network on an NCHW batch (3 channels, ImageNet-normalised) and returns one
    /// `[N, C, H_l, W_l]` array per tap, in the order the taps were requested. Nothing past the
    /// deepest tap is computed. Images of a batch are processed in parallel (rayon); the result
    /// does not depend on the number of threads. The work buffers of a pass (a few tens of MB
    /// at 224²) are kept by the backbone and reused by the next pass, one set per image that
    /// ran concurrently; a clone starts without them. Tap values are ≥ 0 (each stage ends in a ReLU).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the input does not have 3 channels or H or W is below
    /// [`MIN_INPUT_SIZE`]; [`Error::LimitExceeded`] if H or W exceeds [`MAX_INPUT_SIZE`].
    pub fn forward(&self, input: ArrayView4<'_, f32>) -> Result<Vec<Array4<f32>>> {
        self.forward_inner(input, None)
    }

    fn forward_inner(
        &self,
        input: ArrayView4<'_, f32>,
        calibration: Option<&mut Calibration>,
    ) -> Result<Vec<Array4<f32>>> {
        if self.stashed {
            return Err(Error::input(
                "the backbone's weights are stashed (Backbone::stash_weights): restore them first",
            ));
        }
        let [n, c, h, w] = [
            input.shape()[0],
            input.shape()[1],
            input.shape()[2],
            input.shape()[3],
        ];
        if c != 3 {
            return Err(Error::input(format!(
                "the backbone expects 3-channel (RGB) NCHW input, got shape {:?}",
                input.shape()
            )));
        }
        if h < MIN_INPUT_SIZE || w < MIN_INPUT_SIZE {
            return Err(Error::input(format!(
                "input images must be at least {MIN_INPUT_SIZE}×{MIN_INPUT_SIZE} pixels, got {h}×{w}"
            )));
        }
        if h > MAX_INPUT_SIZE || w > MAX_INPUT_SIZE {
            return Err(Error::LimitExceeded {
                reason: format!(
                    "input images are limited to {MAX_INPUT_SIZE}×{MAX_INPUT_SIZE} pixels, got {h}×{w}"
                ),
            });
        }
        let mut want = [false; 4];
        for t in &self.taps {
            want[t.index()] = true;
        }
        let slots = calibration.as_ref().map(|c| c.maxima().len());
        let run = |i: usize| {
            let img = input.index_axis(ndarray::Axis(0), i);
            let owned;
            let data: &[f32] = match img.as_slice() {
                Some(s) => s,
                None => {
                    owned = img.iter().copied().collect::<Vec<f32>>();
                    &owned
                }
            };
            let mut rec = slots.map(|k| vec![0.0f32; k]);
            let taps = self.net.forward_image(data, h, w, want, rec.as_deref_mut());
            (taps, rec)
        };
        type PerImage = ([Option<Vec<f32>>; 4], Option<Vec<f32>>);
        let per_image: Vec<PerImage> = if n > 1 {
            (0..n).into_par_iter().map(run).collect()
        } else {
            // On a pool thread, with the pool's other threads spinning between the many short
            // parallel regions of one forward pass instead of sleeping (`kernels::par`).
            crate::kernels::par::with_team(|| (0..n).map(run).collect())
        };
        if let Some(cal) = calibration {
            for (_, rec) in &per_image {
                if let Some(r) = rec {
                    cal.record(r);
                }
            }
        }
        let mut per_image: Vec<_> = per_image.into_iter().map(|(t, _)| t).collect();
        self.taps
            .iter()
            .map(|&t| {
                let (tc, th, tw) = self.tap_shape(t, h, w);
                let len = tc * th * tw;
                let wrong =
                    || Error::input(format!("internal error: tap {t} has an unexpected size"));
                // One image: its tap is the tensor's data as it is (no copy).
                let data = if let [img] = &mut per_image[..] {
                    img[t.index()]
                        .take()
                        .filter(|v| v.len() == len)
                        .ok_or_else(wrong)?
                } else {
                    let mut data = Vec::with_capacity(n * len);
                    for img in &per_image {
                        match &img[t.index()] {
                            Some(v) if v.len() == len => data.extend_from_slice(v),
                            _ => return Err(wrong()),
                        }
                    }
                    data
                };
                Array4::from_shape_vec((n, tc, th, tw), data)
                    .map_err(|e| Error::input(format!("internal error building tap {t}: {e}")))
            })
            .collect()
    }

    /// The tapped layers, in output order.
    pub fn taps(&self) -> &[Layer] {
        &self.taps
    }

    /// The architecture.
    pub fn spec(&self) -> &ResNetSpec {
        &self.spec
    }

    /// Channels of `layer`'s output.
    pub fn out_channels(&self, layer: Layer) -> usize {
        self.spec.out_channels(layer)
    }

    /// `(channels, height, width)` of `layer`'s output for an `h × w` input.
    pub fn tap_shape(&self, layer: Layer, h: usize, w: usize) -> (usize, usize, usize) {
        self.spec.tap_shape(layer, h, w)
    }

    /// Frees the memory the backbone rebuilds by itself when it is next used: the
    /// Winograd-transformed filters of the 3×3 convolutions (about 105 MB for Wide-ResNet-50-2
    /// up to layer3) and the work buffers kept from earlier forward passes. Results do not
    /// change; the next forward pass transforms the filters again (a fraction of a second for
    /// WRN-50-2). A memory-budgeted fit calls this before its coreset stage.
    pub fn release_caches(&mut self) {
        self.net.release_caches();
    }

    /// Hands all weights to `out` (in a fixed order, a slice per tensor) and frees them, so
    /// that a memory-budgeted fit can keep them on disk while it selects the coreset. Until
    /// [`Backbone::restore_weights`] puts them back, [`Backbone::forward`] refuses to run.
    ///
    /// # Errors
    /// Whatever `out` returns (the weights are then partly freed: the backbone stays
    /// unusable until restored).
    pub fn stash_weights(&mut self, out: &mut dyn FnMut(&[f32]) -> Result<()>) -> Result<()> {
        self.stashed = true;
        self.net.stash_parameters(out)
    }

    /// Reads the weights back, in the order [`Backbone::stash_weights`] handed them out:
    /// `input` fills each slice with exactly the values it was given.
    ///
    /// # Errors
    /// Whatever `input` returns.
    pub fn restore_weights(
        &mut self,
        input: &mut dyn FnMut(&mut [f32]) -> Result<()>,
    ) -> Result<()> {
        self.net.restore_parameters(input)?;
        self.stashed = false;
        Ok(())
    }

    /// Bytes of the folded weights and biases ([`Backbone::stash_weights`] frees them).
    pub fn weight_bytes(&self) -> usize {
        self.net.weight_bytes()
    }

    /// Bytes [`Backbone::release_caches`] would free now.
    pub fn cache_bytes(&self) -> usize {
        self.net.cache_bytes()
    }

    /// SHA-256 of the weights file's bytes; for [`Backbone::random`], of a canonical encoding
    /// of the seed and the architecture.
    pub fn weights_sha256(&self) -> [u8; 32] {
        self.sha256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stashed weights leave nothing behind, stop forward passes, and come back bit for bit.
    #[test]
    fn stashed_weights_come_back_bit_for_bit() {
        let spec = ResNetSpec::resnet18();
        let mut b = Backbone::random(&spec, &[Layer::Layer2, Layer::Layer3], 5).unwrap();
        let x = ndarray::Array4::from_shape_fn((1, 3, 64, 64), |(_, c, i, j)| {
            ((c * 5 + i + j * 3) % 13) as f32 / 6.0 - 1.0
        });
        let before = b.forward(x.view()).unwrap();
        let bytes = b.weight_bytes();
        // ResNet-18 to layer3: about 2.8 M parameters.
        assert!(bytes > 10 << 20, "{bytes}");
        let mut store: Vec<f32> = Vec::new();
        b.stash_weights(&mut |w| {
            store.extend_from_slice(w);
            Ok(())
        })
        .unwrap();
        assert_eq!(store.len() * 4, bytes);
        assert_eq!(b.weight_bytes(), 0);
        assert_eq!(b.cache_bytes(), 0);
        assert!(b.forward(x.view()).is_err());
        let mut at = 0;
        b.restore_weights(&mut |w| {
            w.copy_from_slice(&store[at..at + w.len()]);
            at += w.len();
            Ok(())
        })
        .unwrap();
        assert_eq!(at, store.len());
        let after = b.forward(x.view()).unwrap();
        for (f, g) in before.iter().zip(&after) {
            let bits = |a: &Array4<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(f), bits(g));
        }
    }

    /// Released caches are rebuilt by the next forward pass, which gives the same bits.
    #[test]
    fn released_caches_come_back_with_the_same_features() {
        let spec = ResNetSpec::resnet18();
        let mut b = Backbone::random(&spec, &[Layer::Layer2, Layer::Layer3], 4).unwrap();
        let x = ndarray::Array4::from_shape_fn((1, 3, 64, 64), |(_, c, i, j)| {
            ((c * 7 + i * 3 + j) % 11) as f32 / 5.0 - 1.0
        });
        let before = b.forward(x.view()).unwrap();
        // ResNet-18's 3×3 convolutions of 64+ channels use Winograd: transformed filters of
        // layer1-layer3 (tens of MB) plus the work buffers of the pass.
        let held = b.cache_bytes();
        assert!(held > 1 << 20, "{held}");
        b.release_caches();
        assert_eq!(b.cache_bytes(), 0);
        let after = b.forward(x.view()).unwrap();
        assert!(b.cache_bytes() > 1 << 20);
        for (f, g) in before.iter().zip(&after) {
            let bits = |a: &Array4<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(f), bits(g));
        }
    }

    /// A weights file renamed over the path after it was opened changes nothing: the tensors
    /// and the fingerprint both come from the open handle.
    #[test]
    fn weights_are_parsed_and_hashed_through_one_handle() {
        let spec = ResNetSpec {
            name: "tiny".to_string(),
            blocks: [1, 1, 1, 1],
            stem_channels: 8,
            planes: [8, 16, 32, 64],
            ..ResNetSpec::resnet18()
        };
        let taps = [Layer::Layer2];
        let dir = std::env::temp_dir().join(format!("patchcore-bb-swap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (path, other) = (dir.join("w.safetensors"), dir.join("other.safetensors"));
        let a = Backbone::random_weights_safetensors(&spec, Layer::Layer2, 1).unwrap();
        let b = Backbone::random_weights_safetensors(&spec, Layer::Layer2, 2).unwrap();
        assert_eq!(a.len(), b.len());
        std::fs::write(&path, &a).unwrap();
        std::fs::write(&other, &b).unwrap();
        let (file, len) = crate::io_util::open_regular(&path).unwrap();
        std::fs::rename(&other, &path).unwrap();
        let got = Backbone::from_safetensors_file_range(file, &path, 0, len, &spec, &taps).unwrap();
        let want = Backbone::from_safetensors_bytes(&a, &path, &spec, &taps).unwrap();
        let sha_a: [u8; 32] = Sha256::digest(&a).into();
        assert_eq!(got.weights_sha256(), sha_a);
        // Same features as the first file's weights.
        let x = ndarray::Array4::from_shape_fn((1, 3, 32, 32), |(_, c, i, j)| {
            ((c * 7 + i * 3 + j) % 11) as f32 / 11.0 - 0.5
        });
        let (fa, fg) = (
            want.forward(x.view()).unwrap(),
            got.forward(x.view()).unwrap(),
        );
        assert_eq!(fa[0], fg[0]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
