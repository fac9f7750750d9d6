//! The PatchCore model: [`PatchCore::fit`] on normal images, [`PatchCore::predict`] on new ones,
//! [`PatchCore::save`] / [`PatchCore::load`] to one safetensors file.

mod budget;
mod file;
mod fit;
mod meta;
mod params;
mod predict;
mod sink;
mod spill;
mod update;
mod workset;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::RgbImage;
use ndarray::{Array2, ArrayView4, Axis, CowArray, Ix2};
use rayon::prelude::*;

pub use budget::{
    format_bytes, parse_bytes, peak_resident_bytes, resident_bytes, FitPlan, MemoryEstimate,
    StageMemory, SLACK_FIXED, SLACK_PERCENT,
};
pub use file::{BackboneSource, SaveOptions, FORMAT_VERSION};
pub use params::{PatchCoreConfig, PatchCoreParams};
pub use spill::{remove_stale_spills, spill_path, SpillFile};
pub use update::{UpdateProgress, UpdateRecord, UpdateReport};

use crate::anomaly_map;
use crate::backbone::{Backbone, Calibration, Precision};
use crate::coreset;
use crate::embedding;
use crate::error::{Error, Result};
use crate::knn::{BankPrecision, BruteForce, NearestNeighbours};
use crate::preprocess::{self, ImageLimits};
use crate::scoring;

/// What [`PatchCore::fit`] reports while it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FitProgress {
    /// Features of `done` of `total` training images have been extracted.
    Features {
        /// Images done so far.
        done: usize,
        /// Images in all.
        total: usize,
    },
    /// Coreset selection started on a bank of `rows` patch features.
    CoresetStarted {
        /// Rows in the full memory bank.
        rows: usize,
        /// Rows the coreset will keep.
        keep: usize,
    },
    /// `selected` of `total` coreset rows have been chosen (reported after every full pass of
    /// the greedy samplers over the bank; the last report has `selected == total`).
    Coreset {
        /// Rows chosen so far.
        selected: usize,
        /// Rows the coreset keeps.
        total: usize,
    },
    /// The chosen rows are being read back from the spill file (memory-budgeted fit only).
    Gathering {
        /// Rows to read.
        rows: usize,
    },
    /// Fitting finished; the memory bank holds `rows` rows.
    Done {
        /// Rows in the final memory bank.
        rows: usize,
    },
}

/// Wall-clock time spent in each stage of a call (for the caller to print or log).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Decoding, resizing and normalising images.
    pub preprocess: Duration,
    /// The backbone forward pass.
    pub backbone: Duration,
    /// Patch embedding.
    pub embedding: Duration,
    /// Coreset selection (fit only).
    pub coreset: Duration,
    /// Nearest-neighbour search and scoring (predict only).
    pub scoring: Duration,
    /// Anomaly maps (predict only, when asked).
    pub map: Duration,
}

impl std::ops::AddAssign for Timings {
    /// Adds `rhs` stage by stage (to total the timings of several calls).
    fn add_assign(&mut self, rhs: Timings) {
        self.preprocess += rhs.preprocess;
        self.backbone += rhs.backbone;
        self.embedding += rhs.embedding;
        self.coreset += rhs.coreset;
        self.scoring += rhs.scoring;
        self.map += rhs.map;
    }
}

impl Timings {
    /// Sum of all stages.
    pub fn total(&self) -> Duration {
        self.preprocess + self.backbone + self.embedding + self.coreset + self.scoring + self.map
    }
}

/// What to compute in [`PatchCore::predict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PredictOptions {
    /// Compute the blurred anomaly map at the crop size (skip for score-only inspection).
    pub anomaly_map: bool,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions { anomaly_map: true }
    }
}

/// The result of scoring one image.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Image anomaly score (higher = more anomalous).
    pub score: f32,
    /// Patch scores on the patch grid (`h × w` of the first tapped layer).
    pub patch_scores: Array2<f32>,
    /// The anomaly map at the network input size (the crop), when asked for.
    pub anomaly_map: Option<Array2<f32>>,
    /// The patch the image score comes from: the highest patch score (the first one on ties),
    /// as the row-major index `y · w + x` into `patch_scores` (`h × w`). With re-weighting
    /// (`reweight_neighbours > 1`) the image score is this patch's score times a weight in
    /// `[0, 1)`; without it, the score itself.
    pub max_patch: usize,
}

/// A fitted PatchCore model: a backbone, a configuration and a memory bank.
#[derive(Debug)]
pub struct PatchCore {
    config: PatchCoreConfig,
    backbone: Backbone,
    index: BruteForce,
    threshold: Option<f32>,
    /// The coverage radius of the coreset (see [`PatchCore::coverage_radius`]).
    coverage_radius: Option<f32>,
    /// Training images seen (fit + updates), when known.
    images_seen: Option<u64>,
    /// One record per [`PatchCore::update`].
    history: Vec<UpdateRecord>,
    /// Activation ranges of the backbone on the training images (for int8).
    calibration: Option<Calibration>,
}

/// Options of [`PatchCore::fit_with_options`] / [`PatchCore::fit_paths_with_options`] beyond
/// the configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FitOptions {
    /// A memory budget in bytes: the fit picks the plan that stays under it (every feature in
    /// memory if that fits, else only their projection with the full rows in
    /// [`FitOptions::spill_path`]) and refuses with [`Error::MemoryBudget`] before any large
    /// allocation when neither does. `None`: in memory, no check.
    pub max_memory: Option<u64>,
    /// Where the spill plan writes the full rows (see [`spill_path`]; must not exist). The
    /// file is removed when the fit returns, on success and on error. `None`: no spill plan.
    pub spill_path: Option<PathBuf>,
    /// Use this plan whatever the budget says (tests, benchmarks). The spill plan still needs
    /// [`FitOptions::spill_path`].
    pub force_plan: Option<FitPlan>,
}

/// What a fit reports besides the model.
#[derive(Debug, Clone, PartialEq)]
pub struct FitReport {
    /// Time per stage.
    pub timings: Timings,
    /// The memory plan the fit followed.
    pub estimate: MemoryEstimate,
}

impl PatchCore {
    /// Builds a model from parts (a memory bank computed elsewhere, or one read from a file).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if the backbone does not tap the configuration's layers or
    /// the bank has fewer rows than `scoring.k`; [`Error::InvalidInput`] if the bank's width
    /// is not the configuration's embedding dimension, or it is empty or holds NaN / ±∞ (or,
    /// with `bank_precision` = [`BankPrecision::F16`], a value beyond the f16 range ±65504).
    ///
    /// The bank is stored as the configuration's `bank_precision` says.
    pub fn from_parts(
        config: PatchCoreConfig,
        backbone: Backbone,
        memory_bank: Array2<f32>,
        threshold: Option<f32>,
    ) -> Result<PatchCore> {
        check_bank_shape(&config, &backbone, memory_bank.dim())?;
        let mut backbone = backbone;
        apply_precision(&config, &mut backbone)?;
        let index = BruteForce::with_precision(memory_bank, config.params().bank_precision)?;
        Ok(PatchCore {
            config,
            backbone,
            index,
            threshold,
            coverage_radius: None,
            images_seen: None,
            history: Vec::new(),
            calibration: None,
        })
    }

    /// [`PatchCore::from_parts`] with a memory bank already stored in f16 (as read from a model
    /// file); the configuration's `bank_precision` is set to [`BankPrecision::F16`].
    ///
    /// # Errors
    /// As [`PatchCore::from_parts`].
    pub fn from_parts_f16(
        config: PatchCoreConfig,
        backbone: Backbone,
        memory_bank: Array2<half::f16>,
        threshold: Option<f32>,
    ) -> Result<PatchCore> {
        check_bank_shape(&config, &backbone, memory_bank.dim())?;
        let mut backbone = backbone;
        apply_precision(&config, &mut backbone)?;
        let index = BruteForce::from_f16(memory_bank)?;
        let mut params = config.into_params();
        params.bank_precision = BankPrecision::F16;
        Ok(PatchCore {
            config: params.check()?,
            backbone,
            index,
            threshold,
            coverage_radius: None,
            images_seen: None,
            history: Vec::new(),
            calibration: None,
        })
    }

    /// The validated configuration.
    pub fn config(&self) -> &PatchCoreConfig {
        &self.config
    }

    /// The backbone.
    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// The memory bank (`rows × dim`) as f32: borrowed when stored in f32, converted (a new
    /// array) when stored in f16 ([`BankPrecision::F16`]).
    pub fn memory_bank(&self) -> CowArray<'_, f32, Ix2> {
        self.index.bank()
    }

    /// How the memory bank is stored.
    pub fn bank_precision(&self) -> BankPrecision {
        self.index.precision()
    }

    /// The nearest-neighbour index over the memory bank.
    pub fn index(&self) -> &BruteForce {
        &self.index
    }

    /// The decision threshold stored with the model, if any.
    pub fn threshold(&self) -> Option<f32> {
        self.threshold
    }

    /// Sets (or clears) the decision threshold stored with the model.
    pub fn set_threshold(&mut self, threshold: Option<f32>) {
        self.threshold = threshold;
    }

    /// The coverage radius of the greedy coreset: where the traversal stopped, the largest
    /// distance from a training patch to its nearest memory-bank row, measured in the space the
    /// greedy works in — the seeded random projection to `coreset.projection_dim` dimensions
    /// (reproducible from the stored seed and dimensions), or the embedding itself when there
    /// is no projection. [`PatchCore::update`] adds a new patch when it lies farther than this
    /// from the bank. `None` for models fitted with the random or no sampler, and for models
    /// saved before the radius was stored (see [`PatchCore::set_coverage_radius`]).
    pub fn coverage_radius(&self) -> Option<f32> {
        self.coverage_radius
    }

    /// Sets the coverage radius (e.g. for a model saved without one, to a value from its fit).
    pub fn set_coverage_radius(&mut self, radius: Option<f32>) {
        self.coverage_radius = radius;
    }

    /// The model with the optional metadata of a model file.
    fn with_extras(mut self, e: meta::Extras) -> PatchCore {
        self.coverage_radius = e.coverage_radius;
        self.images_seen = e.images_seen;
        self.history = e.history;
        self.calibration = e.calibration;
        self
    }

    /// The backbone's activation ranges on the training images, which int8 needs: recorded
    /// by every fit (and extended by every update) and stored in the model file. `None` for
    /// a model built with [`PatchCore::from_parts`] or saved before they were recorded.
    pub fn calibration(&self) -> Option<&Calibration> {
        self.calibration.as_ref()
    }

    /// Replaces the activation ranges (e.g. measured with
    /// [`Backbone::forward_calibrating`] on other normal images). A model in int8 is
    /// quantised again with them.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `calibration` does not match the backbone; the model is
    /// unchanged.
    pub fn set_calibration(&mut self, calibration: Calibration) -> Result<()> {
        if calibration.maxima().len() != self.backbone.calibration_len() {
            return Err(Error::input(format!(
                "the calibration holds {} activation ranges, the backbone needs {}",
                calibration.maxima().len(),
                self.backbone.calibration_len()
            )));
        }
        let precision = self.backbone.precision();
        self.backbone.set_precision(precision, Some(&calibration))?;
        self.calibration = Some(calibration);
        Ok(())
    }

    /// The precision the backbone scores images in (the configuration's `precision`).
    pub fn precision(&self) -> Precision {
        self.config.params().precision
    }

    /// Runs the backbone in `precision` from now on; the configuration follows, so
    /// [`PatchCore::save`] stores it. Going to [`Precision::Int8`] quantises the backbone
    /// with [`PatchCore::calibration`] (a fraction of a second).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for int8 without a calibration (a model saved before
    /// they were recorded: refit it); the model is unchanged on error.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        self.backbone
            .set_precision(precision, self.calibration.as_ref())?;
        let mut params = self.config.clone().into_params();
        params.precision = precision;
        self.config = params.check()?;
        Ok(())
    }

    /// Training images the model has seen (its fit and every update), when known (`None` for
    /// models saved before this was stored).
    pub fn images_seen(&self) -> Option<u64> {
        self.images_seen
    }

    /// Switches the kNN search's bf16 screening pass on or off (see
    /// [`BruteForce::with_screening`]; same scores up to ties within f32 rounding). A model
    /// fitted under the spill plan of a memory budget comes without it, as the copy costs
    /// half the bank's memory; a model read from a file has it where the CPU supports it.
    pub fn set_screening(&mut self, on: bool) {
        self.index.set_screening(on);
    }

    /// The updates applied since the fit, oldest first.
    pub fn update_history(&self) -> &[UpdateRecord] {
        &self.history
    }
}

/// Whether the sampler is one of the greedy ones (which need the projected bank).
fn is_greedy(cfg: &coreset::CoresetConfig) -> bool {
    matches!(
        cfg.sampler,
        coreset::Sampler::Greedy | coreset::Sampler::ApproximateGreedy { .. }
    )
}

/// Backbone → embedding for one normalised batch; returns rows and the patch grid. With
/// `calibration`, the backbone runs in f32 and records its activation ranges there.
fn embed_batch(
    config: &PatchCoreConfig,
    backbone: &Backbone,
    input: ArrayView4<f32>,
    calibration: Option<&mut Calibration>,
    timings: &mut Timings,
) -> Result<(Array2<f32>, (usize, usize))> {
    let t = Instant::now();
    let feats = match calibration {
        Some(cal) => backbone.forward_calibrating(input, cal)?,
        None => backbone.forward(input)?,
    };
    timings.backbone += t.elapsed();
    let t = Instant::now();
    let views: Vec<_> = feats.iter().map(|f| f.view()).collect();
    let grid = (feats[0].shape()[2], feats[0].shape()[3]);
    let emb = embedding::embed(&views, &config.params().aggregator)?;
    timings.embedding += t.elapsed();
    Ok((emb, grid))
}

/// Sets the backbone to the configuration's precision. A model built from parts has no
/// calibration, so its configuration cannot ask for int8 (unless the backbone already runs
/// in int8).
fn apply_precision(config: &PatchCoreConfig, backbone: &mut Backbone) -> Result<()> {
    let want = config.params().precision;
    if want == backbone.precision() {
        return Ok(());
    }
    if want == Precision::Int8 {
        return Err(Error::param(
            "precision",
            format!(
                "the configuration asks for an int8 backbone, the backbone given runs in {}; \
                 build the model in f32, then call PatchCore::set_calibration and \
                 PatchCore::set_precision",
                backbone.precision()
            ),
        ));
    }
    backbone.set_precision(want, None)
}

/// The backbone fits the configuration, and a `rows × cols` bank fits both.
fn check_bank_shape(
    config: &PatchCoreConfig,
    backbone: &Backbone,
    (rows, cols): (usize, usize),
) -> Result<()> {
    check_backbone(config, backbone)?;
    workset::check_config(config, backbone, &ImageLimits::default())?;
    let p = config.params();
    let channels: Vec<usize> = p.layers.iter().map(|&l| backbone.out_channels(l)).collect();
    let dim = embedding::embedding_dim(&channels, &p.aggregator);
    if cols != dim {
        return Err(Error::input(format!(
            "the memory bank has rows of {cols} values, but the configuration embeds patches \
             of the {} layers {:?} in {dim} dimensions",
            backbone.spec().name,
            p.layers
        )));
    }
    check_k(p.scoring.k, rows)
}

/// The working set of a batch of decoded images fits `limits` (checked with the largest image).
fn check_images(
    config: &PatchCoreConfig,
    backbone: &Backbone,
    images: &[RgbImage],
    limits: &ImageLimits,
) -> Result<()> {
    let pre = &config.params().preprocess;
    /// Height and width.
    type Hw = (usize, usize);
    let mut worst: Option<(u64, Hw, Hw, Hw)> = None;
    for im in images {
        let src = (im.height() as usize, im.width() as usize);
        // Size errors (a crop larger than the image, ...) are left to the preprocessing.
        let (Ok(resized), Ok(out)) = (
            pre.resized_size(src.0, src.1),
            pre.output_size(src.0, src.1),
        ) else {
            continue;
        };
        let bytes = workset::image_bytes(config, backbone, src, resized, out);
        if worst.is_none_or(|(b, ..)| bytes > b) {
            worst = Some((bytes, src, resized, out));
        }
    }
    match worst {
        Some((_, src, resized, out)) => {
            workset::check(config, backbone, images.len(), src, resized, out, limits)
        }
        None => Ok(()),
    }
}

/// `k` nearest neighbours need a memory bank of at least `k` rows.
fn check_k(k: usize, rows: usize) -> Result<()> {
    if k > rows {
        return Err(Error::param(
            "k",
            format!(
                "scoring asks for the {k} nearest memory-bank rows but the memory bank has only \
                 {rows} rows; lower `scoring.k` or keep more rows (a larger coreset or more \
                 training images)"
            ),
        ));
    }
    Ok(())
}

fn check_backbone(config: &PatchCoreConfig, backbone: &Backbone) -> Result<()> {
    if backbone.taps() != config.params().layers.as_slice() {
        return Err(Error::param(
            "layers",
            format!(
                "the backbone taps {:?} but the configuration asks for {:?}; build the \
                 backbone with the configuration's layers",
                backbone.taps(),
                config.params().layers
            ),
        ));
    }
    Ok(())
}
