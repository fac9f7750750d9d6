//! One-file models: the memory bank, the full configuration, the fingerprint of the backbone
//! weights and, optionally, the weights themselves, in one safetensors file.
//!
//! Layout (format version 1):
//! - tensor `memory_bank`: f32 or f16 `[rows, dim]` (f16 when fitted with
//!   [`crate::knn::BankPrecision::F16`]; the configuration's `bank_precision` follows the dtype);
//! - tensor `backbone_weights` (optional): u8 `[len]`, the bytes of the backbone's safetensors
//!   file, so that one file deploys;
//! - metadata (string → string): `format = patchcore-model`, `format_version`, the
//!   configuration (one key per field, see `meta.rs`), `backbone.*` (architecture, taps,
//!   sha256 of the weights file), `threshold` (optional), the optional keys of incremental
//!   update: `coreset.coverage_radius`, `images_seen`, `update_history` (files without them
//!   load; such a model cannot be updated until refitted), and of the backbone's precision:
//!   `backbone.precision` (`f32` when absent), `backbone.calibration` (the activation ranges,
//!   comma-separated) with `backbone.calibration_images` (files without them cannot run in
//!   int8 until refitted).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::st_index::StIndex;
use half::f16;
use ndarray::Array2;
use safetensors::tensor::Dtype;
use sha2::Digest;

use super::meta::{decode_params, decode_spec, encode, Meta};
use super::{PatchCore, PatchCoreConfig};
use crate::backbone::{Backbone, Layer, Precision, ResNetSpec};
use crate::error::{Error, Result};
use crate::knn::NearestNeighbours;

/// Version of the model file format written by this crate; files of other versions are refused.
pub const FORMAT_VERSION: u32 = 1;
pub(super) const FORMAT_NAME: &str = "patchcore-model";
const BANK: &str = "memory_bank";
const WEIGHTS: &str = "backbone_weights";

/// How [`PatchCore::save`] writes the file.
#[derive(Debug, Clone, Default)]
pub struct SaveOptions {
    /// Replace an existing file (otherwise an existing file is an error and is left untouched).
    pub overwrite: bool,
    /// Embed this backbone weights file (it must be the one the model was fitted with; its
    /// sha256 is checked), so the model file deploys alone.
    pub embed_weights: Option<PathBuf>,
}

/// Where [`PatchCore::load`] takes the backbone from.
#[derive(Debug)]
pub enum BackboneSource<'a> {
    /// The weights embedded in the model file (an error if there are none).
    Embedded,
    /// A weights file; its sha256 must equal the fingerprint stored in the model.
    File(&'a Path),
    /// A backbone already in memory; its fingerprint must equal the stored one.
    Loaded(Box<Backbone>),
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl PatchCore {
    /// Writes the model to one safetensors file (atomically: a temporary file renamed into
    /// place; nothing is left behind on error). The bytes depend only on the model (metadata
    /// keys are written in sorted order), so saving the same model twice gives the same file.
    ///
    /// # Errors
    /// [`Error::Io`] if `path` exists and `opts.overwrite` is false (the file is left
    /// untouched), if it is anything but a regular file — a folder, a FIFO, a device, a
    /// symbolic link, even a dangling one — (never replaced, whatever `opts.overwrite`), or
    /// writing fails; [`Error::InvalidFile`] if `opts.embed_weights` is not the
    /// weights file the backbone was loaded from (sha256 differs; note that a
    /// [`Backbone::random`] backbone has no weights file: fit with
    /// [`Backbone::from_safetensors_file`] on the bytes of
    /// [`Backbone::random_weights_safetensors`] to embed random weights);
    /// [`Error::InvalidParameter`] for a non-finite threshold.
    pub fn save(&self, path: &Path, opts: &SaveOptions) -> Result<()> {
        if let Some(t) = self.threshold {
            if !t.is_finite() {
                return Err(Error::param(
                    "threshold",
                    format!("must be finite to be saved, got {t}"),
                ));
            }
        }
        let weights = match &opts.embed_weights {
            Some(w) => {
                let bytes = crate::io_util::read_regular(w, u64::MAX, "embedded weights")?;
                let sha: [u8; 32] = sha2::Sha256::digest(&bytes).into();
                if sha != self.backbone.weights_sha256() {
                    return Err(Error::invalid_file(
                        w,
                        format!(
                            "these weights (sha256 {}) are not the ones the model was fitted \
                             with (sha256 {}); embed the weights file the backbone was loaded from",
                            hex(&sha),
                            hex(&self.backbone.weights_sha256())
                        ),
                    ));
                }
                Some(bytes)
            }
            None => None,
        };
        let index = self.index();
        let (rows, dim) = (index.len(), index.dim());
        let f32_bank = index.bank_f32();
        let f16_bank = index.bank_f16();
        let dtype = if f16_bank.is_some() { "F16" } else { "F32" };
        let bank_len = index.bank_bytes();
        let mut tensors = vec![(BANK, dtype, vec![rows, dim], bank_len)];
        if let Some(w) = &weights {
            tensors.push((WEIGHTS, "U8", vec![w.len()], w.len()));
        }
        let header = header_bytes(&encode(self), &tensors);
        crate::io_util::write_atomic(path, opts.overwrite, |f| {
            let mut out = std::io::BufWriter::new(f);
            let write = |out: &mut std::io::BufWriter<&mut std::fs::File>, b: &[u8]| {
                out.write_all(b).map_err(|e| Error::io(path, e))
            };
            write(&mut out, &(header.len() as u64).to_le_bytes())?;
            write(&mut out, &header)?;
            // Little-endian values in logical (row-major) order, through a small buffer.
            const RUN: usize = 1 << 16;
            let mut buf = Vec::with_capacity(RUN + 4);
            if let Some(b) = &f32_bank {
                for v in b.iter() {
                    buf.extend_from_slice(&v.to_le_bytes());
                    if buf.len() >= RUN {
                        write(&mut out, &buf)?;
                        buf.clear();
                    }
                }
            }
            if let Some(b) = &f16_bank {
                for v in b.iter() {
                    buf.extend_from_slice(&v.to_le_bytes());
                    if buf.len() >= RUN {
                        write(&mut out, &buf)?;
                        buf.clear();
                    }
                }
            }
            write(&mut out, &buf)?;
            if let Some(w) = &weights {
                write(&mut out, w)?;
            }
            out.flush().map_err(|e| Error::io(path, e))
        })
    }

    /// Reads a model written by [`PatchCore::save`]. Everything is checked: format and
    /// version, every configuration field, the architecture and the backbone weights'
    /// fingerprint, the memory bank's dtype, shape (against the configuration and backbone)
    /// and finiteness, and that the bank has at least `scoring.k` rows.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read or is not a regular file (a folder, a FIFO, a
    /// device); otherwise as [`PatchCore::load_bytes`], plus [`Error::LimitExceeded`] if the
    /// configuration fixes an input size whose working set exceeds
    /// [`ImageLimits::max_working_set_bytes`](crate::preprocess::ImageLimits::max_working_set_bytes)
    /// of the default limits, or the memory bank cannot be allocated.
    pub fn load(path: &Path, backbone: BackboneSource<'_>) -> Result<PatchCore> {
        // Only the header, the bank and the needed backbone tensors are read: a model with
        // embedded weights is never held in memory whole. The path is opened once: header,
        // bank, embedded weights and their fingerprint all come from this one handle, so a
        // file replaced while it is read cannot give a mix of two models.
        let (file, _) = crate::io_util::open_regular(path)?;
        Self::load_from_file(file, path, backbone)
    }

    /// [`PatchCore::load`] from a file already open for reading; `name` is used in error
    /// messages. Everything (header, memory bank, embedded weights and their sha256) is read
    /// through this one handle: renaming another file over its path meanwhile changes nothing.
    ///
    /// # Errors
    /// As [`PatchCore::load`]; [`Error::Io`] if `file` is not a regular file.
    pub fn load_from_file(
        file: std::fs::File,
        name: &Path,
        backbone: BackboneSource<'_>,
    ) -> Result<PatchCore> {
        let meta = file.metadata().map_err(|e| Error::io(name, e))?;
        if !meta.is_file() {
            return Err(crate::io_util::not_regular(name, &meta.file_type()));
        }
        let weights = file.try_clone().map_err(|e| Error::io(name, e))?;
        let mut st = StIndex::from_file(file, name)?;
        load_index(&mut st, name, backbone, &|spec, layers, (base, len)| {
            let handle = weights.try_clone().map_err(|e| Error::io(name, e))?;
            Backbone::from_safetensors_file_range(handle, name, base, len, spec, layers)
        })
    }

    /// [`PatchCore::load`] from bytes in memory; `name` is used in error messages. Never
    /// panics, whatever the bytes.
    ///
    /// # Errors
    /// - [`Error::InvalidFile`]: not a safetensors file, damaged or truncated, not a patchcore
    ///   model (`format`), another format version, a missing or unparsable metadata key (the
    ///   message names it), an invalid configuration, no embedded weights with
    ///   [`BackboneSource::Embedded`], a backbone of another architecture or with other weights
    ///   (the message gives both sha256), a bank with fewer rows than `scoring.k`, a
    ///   non-finite threshold;
    /// - [`Error::MissingTensor`], [`Error::TensorDtype`], [`Error::TensorShape`],
    ///   [`Error::NonFiniteTensor`]: the memory bank is absent, not F32, not `[rows, dim]` with
    ///   the embedding dimension of the configuration, or holds NaN / ±∞;
    /// - errors of [`Backbone::from_safetensors_bytes`] / [`Backbone::from_safetensors_file`]
    ///   for the embedded or given weights.
    pub fn load_bytes(
        bytes: &[u8],
        name: &Path,
        backbone: BackboneSource<'_>,
    ) -> Result<PatchCore> {
        let mut st = StIndex::from_slice(bytes, name)?;
        load_index(&mut st, name, backbone, &|spec, layers, (base, len)| {
            let range = usize::try_from(base)
                .ok()
                .zip(usize::try_from(base + len).ok())
                .and_then(|(a, b)| bytes.get(a..b))
                .ok_or_else(|| Error::invalid_file(name, "embedded weights outside the file"))?;
            Backbone::from_safetensors_bytes(range, name, spec, layers)
        })
    }
}

/// Loads the backbone embedded at a byte range `(offset, length)` of the model input.
type EmbeddedLoader<'f> = dyn Fn(&ResNetSpec, &[Layer], (u64, u64)) -> Result<Backbone> + 'f;

/// [`PatchCore::load_bytes`] / [`PatchCore::load`] on a parsed model header.
fn load_index(
    st: &mut StIndex<'_>,
    name: &Path,
    backbone: BackboneSource<'_>,
    embedded: &EmbeddedLoader<'_>,
) -> Result<PatchCore> {
    let bad = |reason: String| Error::invalid_file(name, reason);
    let meta = st
        .metadata()
        .cloned()
        .ok_or_else(|| bad("no metadata: not a patchcore model file".into()))?;
    let m = Meta { map: &meta, name };
    // A weights file (e.g. from `patchcore weights --random`) has metadata but no `format`.
    let format = meta.get("format").ok_or_else(|| {
        bad("metadata key `format` is missing: not a patchcore model file (a weights file?)".into())
    })?;
    if format != FORMAT_NAME {
        return Err(bad(format!(
            "`format` is `{format}`, expected `{FORMAT_NAME}`: not a patchcore model file"
        )));
    }
    let version: u32 = m.parse("format_version")?;
    if version != FORMAT_VERSION {
        return Err(bad(format!(
            "format version {version} is not supported (this build reads version \
                 {FORMAT_VERSION}); re-fit or convert the model"
        )));
    }
    let config: PatchCoreConfig = decode_params(&m)?
        .check()
        .map_err(|e| bad(format!("invalid configuration: {e}")))?;
    let params = config.params();
    let precision = params.precision;
    let spec = decode_spec(&m)?;
    let sha = m.get("backbone.sha256")?.to_string();
    let threshold = match meta.get("threshold") {
        Some(_) => {
            let t: f32 = m.parse("threshold")?;
            if !t.is_finite() {
                return Err(bad(format!("metadata `threshold` = `{t}` is not finite")));
            }
            Some(t)
        }
        None => None,
    };
    let extras = super::meta::decode_extras(&m)?;
    // The bank's dtype and rank are checked before the (possibly slow) backbone load.
    let t = st
        .entry(BANK)
        .cloned()
        .ok_or_else(|| Error::MissingTensor {
            path: name.to_path_buf(),
            tensor: BANK.into(),
            expected: "an F32 or F16 [rows, dim] memory bank".into(),
        })?;
    if t.dtype != Dtype::F32 && t.dtype != Dtype::F16 {
        return Err(Error::TensorDtype {
            path: name.to_path_buf(),
            tensor: BANK.into(),
            expected: "F32 or F16".into(),
            found: format!("{:?}", t.dtype),
        });
    }
    let backbone = match backbone {
        BackboneSource::Embedded => {
            let w = st.entry(WEIGHTS).ok_or_else(|| {
                bad(
                    "the model has no embedded backbone weights; load it with the weights \
                         file it was fitted with (BackboneSource::File)"
                        .into(),
                )
            })?;
            if w.dtype != Dtype::U8 || w.shape.len() != 1 {
                return Err(bad(format!("`{WEIGHTS}` must be a 1-D u8 tensor")));
            }
            let range = st
                .location(WEIGHTS)
                .ok_or_else(|| bad(format!("`{WEIGHTS}` has no data")))?;
            embedded(&spec, &params.layers, range)?
        }
        BackboneSource::File(p) => Backbone::from_safetensors_file(p, &spec, &params.layers)?,
        BackboneSource::Loaded(b) => *b,
    };
    if backbone.spec() != &spec {
        return Err(bad(format!(
            "the model was fitted with a {} backbone ({spec:?}), the given backbone is a {} \
                 ({:?})",
            spec.name,
            backbone.spec().name,
            backbone.spec()
        )));
    }
    let given = hex(&backbone.weights_sha256());
    if given != sha {
        return Err(bad(format!(
            "the model was fitted with backbone weights of sha256 {sha}, but the given \
                 weights have sha256 {given}; use the same weights file as for fitting"
        )));
    }
    if backbone.taps() != params.layers.as_slice() {
        return Err(bad(format!(
            "the model uses the backbone layers {:?}, the given backbone taps {:?}",
            params.layers,
            backbone.taps()
        )));
    }
    // A configuration asking for a huge resize or crop is refused before the bank is read.
    super::workset::check_config(
        &config,
        &backbone,
        &crate::preprocess::ImageLimits::default(),
    )?;
    let channels: Vec<usize> = params
        .layers
        .iter()
        .map(|&l| backbone.out_channels(l))
        .collect();
    let dim = crate::embedding::embedding_dim(&channels, &params.aggregator);
    let shape = t.shape.clone();
    if shape.len() != 2 || shape[1] != dim || shape[0] == 0 {
        return Err(Error::TensorShape {
            path: name.to_path_buf(),
            tensor: BANK.into(),
            expected: vec![shape.first().copied().unwrap_or(1).max(1), dim],
            found: shape,
        });
    }
    if shape[0] < params.scoring.k {
        return Err(bad(format!(
            "`scoring.k` = {} nearest neighbours, but the memory bank has only {} rows",
            params.scoring.k, shape[0]
        )));
    }
    let non_finite = || Error::NonFiniteTensor {
        path: name.to_path_buf(),
        tensor: BANK.into(),
    };
    // The bank's size comes from the file: allocate fallibly (an error, not an abort).
    let too_large = |bytes: usize| Error::LimitExceeded {
        reason: format!(
            "{}: the memory bank ({} × {} values, {bytes} bytes) does not fit in memory",
            name.display(),
            shape[0],
            shape[1]
        ),
    };
    let data = st.bytes(BANK, name)?;
    if t.dtype == Dtype::F16 {
        let mut values: Vec<f16> = Vec::new();
        values
            .try_reserve_exact(data.len() / 2)
            .map_err(|_| too_large(data.len()))?;
        values.extend(
            data.chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]])),
        );
        let data = values;
        if data.iter().any(|v| !v.is_finite()) {
            return Err(non_finite());
        }
        let bank = Array2::from_shape_vec((shape[0], shape[1]), data)
            .map_err(|e| bad(format!("`{BANK}`: {e}")))?;
        let model = PatchCore::from_parts_f16(f32_config(&config)?, backbone, bank, threshold)?;
        return finish_load(model, extras, precision, name);
    }
    let mut values: Vec<f32> = Vec::new();
    values
        .try_reserve_exact(data.len() / 4)
        .map_err(|_| too_large(data.len()))?;
    values.extend(
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
    let data = values;
    if data.iter().any(|v| !v.is_finite()) {
        return Err(non_finite());
    }
    let bank = Array2::from_shape_vec((shape[0], shape[1]), data)
        .map_err(|e| bad(format!("`{BANK}`: {e}")))?;
    let model = PatchCore::from_parts(f32_config(&config)?, backbone, bank, threshold)?;
    finish_load(model, extras, precision, name)
}

/// `config` with an f32 backbone (a model is built in f32, then switched).
fn f32_config(config: &PatchCoreConfig) -> Result<PatchCoreConfig> {
    let mut p = config.clone().into_params();
    p.precision = Precision::F32;
    p.check()
}

/// Applies the optional metadata and the stored backbone precision.
fn finish_load(
    model: PatchCore,
    extras: super::meta::Extras,
    precision: Precision,
    name: &Path,
) -> Result<PatchCore> {
    if let Some(c) = &extras.calibration {
        let want = model.backbone().calibration_len();
        if c.maxima().len() != want {
            return Err(Error::invalid_file(
                name,
                format!(
                    "metadata `backbone.calibration` holds {} activation ranges, the backbone \
                     has {want} convolutions after the stem",
                    c.maxima().len()
                ),
            ));
        }
    }
    let mut model = model.with_extras(extras);
    model.set_precision(precision).map_err(|e| {
        Error::invalid_file(
            name,
            format!("the model asks for a {precision} backbone, which cannot be set up: {e}"),
        )
    })?;
    Ok(model)
}

/// The safetensors header (JSON, padded with spaces to a multiple of 8 bytes) for `meta` and
/// `tensors` (`name, dtype, shape, byte length`, in data order). Keys are written in sorted
/// order so that the file is a function of the model.
fn header_bytes(
    meta: &BTreeMap<String, String>,
    tensors: &[(&str, &str, Vec<usize>, usize)],
) -> Vec<u8> {
    let mut h = String::from("{\"__metadata__\":{");
    for (i, (k, v)) in meta.iter().enumerate() {
        if i > 0 {
            h.push(',');
        }
        json_string(&mut h, k);
        h.push(':');
        json_string(&mut h, v);
    }
    h.push('}');
    let mut offset = 0;
    for (name, dtype, shape, len) in tensors {
        h.push(',');
        json_string(&mut h, name);
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        h.push_str(&format!(
            ":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{offset},{}]}}",
            dims.join(","),
            offset + len
        ));
        offset += len;
    }
    h.push('}');
    let mut bytes = h.into_bytes();
    while bytes.len() % 8 != 0 {
        bytes.push(b' ');
    }
    bytes
}

/// Appends `s` as a JSON string literal.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}
