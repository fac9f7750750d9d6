//! The PatchCore model: [`PatchCore::fit`] on normal images, [`PatchCore::predict`] on new ones,
//! [`PatchCore::save`] / [`PatchCore::load`] to one safetensors file.

mod budget;
mod file;
mod meta;
mod params;
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
    /// Fits on already decoded normal images: features of every image (in batches of
    /// `batch_size`, images of a batch in parallel), then coreset selection. `progress` gets
    /// [`FitProgress::Features`] after every batch, then [`FitProgress::CoresetStarted`] and
    /// [`FitProgress::Done`]. The result does not depend on the number of rayon threads.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no images, images whose patch grids differ, or images the
    /// preprocessing or backbone refuse; [`Error::InvalidParameter`] if the backbone does not
    /// tap the configuration's layers, the coreset asks for more rows than the bank has, or
    /// the coreset keeps fewer rows than `scoring.k` (checked before the coreset is computed).
    pub fn fit(
        config: PatchCoreConfig,
        backbone: Backbone,
        images: &[RgbImage],
        progress: &mut dyn FnMut(FitProgress),
    ) -> Result<(PatchCore, Timings)> {
        let (m, r) =
            Self::fit_with_options(config, backbone, images, &FitOptions::default(), progress)?;
        Ok((m, r.timings))
    }

    /// [`PatchCore::fit`] under [`FitOptions`] (a memory budget, a spill file); the report
    /// carries the memory plan followed. The memory bank does not depend on the plan: a
    /// spilled fit gives bit for bit the in-memory fit's bank.
    ///
    /// # Errors
    /// As [`PatchCore::fit`], plus [`Error::MemoryBudget`] (before any large allocation) when
    /// no plan fits `max_memory`, and [`Error::Io`] when the spill file cannot be written.
    pub fn fit_with_options(
        config: PatchCoreConfig,
        backbone: Backbone,
        images: &[RgbImage],
        opts: &FitOptions,
        progress: &mut dyn FnMut(FitProgress),
    ) -> Result<(PatchCore, FitReport)> {
        Self::fit_with(
            config,
            backbone,
            images.len(),
            |i| Ok(images[i].clone()),
            &ImageLimits::default(),
            opts,
            progress,
        )
    }

    /// Fits on normal images read from files (decoded under `limits`).
    ///
    /// # Errors
    /// As [`PatchCore::fit`], plus [`Error::Io`] / [`Error::Image`] / [`Error::LimitExceeded`]
    /// for a file that cannot be read or decoded (the message names it).
    pub fn fit_paths(
        config: PatchCoreConfig,
        backbone: Backbone,
        paths: &[PathBuf],
        limits: &ImageLimits,
        progress: &mut dyn FnMut(FitProgress),
    ) -> Result<(PatchCore, Timings)> {
        let opts = FitOptions::default();
        let (m, r) =
            Self::fit_paths_with_options(config, backbone, paths, limits, &opts, progress)?;
        Ok((m, r.timings))
    }

    /// [`PatchCore::fit_paths`] under [`FitOptions`].
    ///
    /// # Errors
    /// As [`PatchCore::fit_paths`] and [`PatchCore::fit_with_options`].
    pub fn fit_paths_with_options(
        config: PatchCoreConfig,
        backbone: Backbone,
        paths: &[PathBuf],
        limits: &ImageLimits,
        opts: &FitOptions,
        progress: &mut dyn FnMut(FitProgress),
    ) -> Result<(PatchCore, FitReport)> {
        Self::fit_with(
            config,
            backbone,
            paths.len(),
            |i| preprocess::load_rgb(&paths[i], limits),
            limits,
            opts,
            progress,
        )
    }

    /// The memory plan a fit of `images` training images of `image_size` (`height, width`,
    /// before preprocessing) would follow under `opts`, without fitting: what each stage
    /// holds and the estimated peak.
    ///
    /// # Errors
    /// [`Error::MemoryBudget`] when no plan fits `opts.max_memory`; the configuration and
    /// backbone errors of [`PatchCore::fit`].
    pub fn plan_fit(
        config: &PatchCoreConfig,
        backbone: &Backbone,
        images: usize,
        image_size: (usize, usize),
        opts: &FitOptions,
    ) -> Result<MemoryEstimate> {
        if images == 0 {
            return Err(Error::input("fit needs at least one normal image"));
        }
        check_backbone(config, backbone)?;
        let p = config.params();
        let (h, w) = p.preprocess.output_size(image_size.0, image_size.1)?;
        let (_, gh, gw) = backbone.tap_shape(p.layers[0], h, w);
        let channels: Vec<usize> = p.layers.iter().map(|&l| backbone.out_channels(l)).collect();
        let dim = embedding::embedding_dim(&channels, &p.aggregator);
        let rows_per_image = gh * gw;
        // Backbone activations of one image (stem and the four stages, a few buffers each:
        // input, output, im2col / residual), and the embedding's intermediates.
        let mut act = 3 * h * w + 64 * h.div_ceil(2) * w.div_ceil(2);
        for l in crate::backbone::Layer::ALL {
            let (c, a, b) = backbone.tap_shape(l, h, w);
            act += c * a * b;
        }
        let per_image = (act * 4 + rows_per_image * dim * 3) as u64 * 4;
        let inp = budget::PlanInput {
            config,
            images,
            rows_per_image,
            dim,
            baseline: budget::resident_bytes().unwrap_or(0),
            batch_working: per_image * p.batch_size.min(images) as u64,
            released: backbone.cache_bytes() as u64,
            weights: backbone.weight_bytes() as u64,
        };
        match opts.force_plan {
            Some(plan) => budget::estimate(&inp, plan),
            None => budget::choose(&inp, opts.max_memory, opts.spill_path.is_some()),
        }
    }

    fn fit_with(
        config: PatchCoreConfig,
        mut backbone: Backbone,
        n: usize,
        load: impl Fn(usize) -> Result<RgbImage> + Sync,
        limits: &ImageLimits,
        opts: &FitOptions,
        progress: &mut dyn FnMut(FitProgress),
    ) -> Result<(PatchCore, FitReport)> {
        if n == 0 {
            return Err(Error::input("fit needs at least one normal image"));
        }
        check_backbone(&config, &backbone)?;
        limits.validate()?;
        workset::check_config(&config, &backbone, limits)?;
        let first = load(0)?;
        let estimate = Self::plan_fit(
            &config,
            &backbone,
            n,
            (first.height() as usize, first.width() as usize),
            opts,
        )?;
        drop(first);
        let p = config.params();
        let spill = match estimate.plan {
            FitPlan::InMemory => None,
            FitPlan::Spill => {
                let path = opts.spill_path.as_ref().ok_or_else(|| {
                    Error::param(
                        "spill_path",
                        "the spill plan needs a spill file location (FitOptions::spill_path)",
                    )
                })?;
                Some(BankSink::spill_file(path, &p.coreset, &estimate)?)
            }
        };
        let mut sink = BankSink::new(&p.coreset, &estimate, spill)?;
        let mut calibration = backbone.new_calibration();
        let mut timings = Timings::default();
        let mut grid: Option<(usize, usize)> = None;
        let mut done = 0;
        for start in (0..n).step_by(p.batch_size) {
            let end = (start + p.batch_size).min(n);
            let t = Instant::now();
            let images = (start..end)
                .into_par_iter()
                .map(&load)
                .collect::<Result<Vec<_>>>()?;
            check_images(&config, &backbone, &images, limits)?;
            let input = preprocess::preprocess_batch(&images, &p.preprocess)?;
            timings.preprocess += t.elapsed();
            let (emb, g) = embed_batch(
                &config,
                &backbone,
                input.view(),
                Some(&mut calibration),
                &mut timings,
            )?;
            if let Some(g0) = grid {
                if g0 != g {
                    return Err(Error::input(format!(
                        "training images {start}..{end} give a {}×{} patch grid, earlier ones \
                         {}×{}: all images must have the same size after preprocessing \
                         (use a crop or an exact resize)",
                        g.0, g.1, g0.0, g0.1
                    )));
                }
            }
            grid = Some(g);
            let t = Instant::now();
            sink.push(emb.view())?;
            timings.coreset += t.elapsed();
            done = end;
            progress(FitProgress::Features { done, total: n });
        }
        debug_assert_eq!(done, n);
        let rows = sink.rows;
        let keep = match p.coreset.sampler {
            coreset::Sampler::None => rows,
            _ => coreset::coreset_size(rows, p.coreset.size)?,
        };
        check_k(p.scoring.k, keep)?;
        progress(FitProgress::CoresetStarted { rows, keep });
        let t = Instant::now();
        // The spilled coreset and gather stages do not need the backbone: its caches are
        // dropped (the next forward pass rebuilds them) and its weights wait in the spill file.
        let release = (estimate.plan == FitPlan::Spill).then_some(&mut backbone);
        let (memory, radius) = sink.finish(&p.coreset, keep, release, progress)?;
        timings.coreset += t.elapsed();
        // Under the spill plan the kNN's bf16 screening copy (half the bank again, on
        // AVX512-BF16 CPUs) is not built: a saved and reloaded model has it; `set_screening`
        // turns it on in this one.
        let screening = estimate.plan != FitPlan::Spill;
        let index = BruteForce::with_precision_screened(memory, p.bank_precision, screening)?;
        backbone.set_precision(p.precision, Some(&calibration))?;
        progress(FitProgress::Done { rows: index.len() });
        Ok((
            PatchCore {
                config,
                backbone,
                index,
                threshold: None,
                coverage_radius: radius,
                images_seen: Some(n as u64),
                history: Vec::new(),
                calibration: Some(calibration),
            },
            FitReport { timings, estimate },
        ))
    }

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

    /// Scores one decoded image.
    pub fn predict(&self, image: &RgbImage, opts: PredictOptions) -> Result<(Prediction, Timings)> {
        let (mut v, t) = self.predict_batch(std::slice::from_ref(image), opts)?;
        let p = v.pop().ok_or_else(|| Error::input("no prediction"))?;
        Ok((p, t))
    }

    /// Scores one image file (decoded under `limits`).
    pub fn predict_path(
        &self,
        path: &Path,
        limits: &ImageLimits,
        opts: PredictOptions,
    ) -> Result<(Prediction, Timings)> {
        let t = Instant::now();
        let img = preprocess::load_rgb(path, limits)?;
        let decode = t.elapsed();
        let (mut v, mut timings) = self
            .predict_batch_limited(std::slice::from_ref(&img), limits, opts)
            .map_err(|e| match e {
                Error::LimitExceeded { reason } => Error::LimitExceeded {
                    reason: format!("{}: {reason}", path.display()),
                },
                e => e,
            })?;
        let p = v.pop().ok_or_else(|| Error::input("no prediction"))?;
        timings.preprocess += decode;
        Ok((p, timings))
    }

    /// Scores a batch of decoded images (all must have the same size after preprocessing).
    /// The memory the batch needs is estimated first and checked against
    /// [`ImageLimits::default`]'s working-set limit ([`Error::LimitExceeded`]).
    pub fn predict_batch(
        &self,
        images: &[RgbImage],
        opts: PredictOptions,
    ) -> Result<(Vec<Prediction>, Timings)> {
        self.predict_batch_limited(images, &ImageLimits::default(), opts)
    }

    /// [`PatchCore::predict_batch`] under the working-set limit of `limits`.
    pub(crate) fn predict_batch_limited(
        &self,
        images: &[RgbImage],
        limits: &ImageLimits,
        opts: PredictOptions,
    ) -> Result<(Vec<Prediction>, Timings)> {
        check_images(&self.config, &self.backbone, images, limits)?;
        let t = Instant::now();
        let input = preprocess::preprocess_batch(images, &self.config.params().preprocess)?;
        let pre = t.elapsed();
        let (preds, mut timings) =
            rayon::scope(|_| self.predict_tensor_here(input.view(), limits, opts))?;
        timings.preprocess += pre;
        Ok((preds, timings))
    }

    /// Scores an already normalised NCHW batch (as [`preprocess::preprocess_batch`] makes);
    /// one [`Prediction`] per image, in order. The anomaly maps have the input's `H × W`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] / [`Error::LimitExceeded`] for input the backbone refuses (not 3
    /// channels, too small or too large); [`Error::LimitExceeded`] when the estimated memory
    /// exceeds the working-set limit of [`ImageLimits::default`].
    pub fn predict_tensor(
        &self,
        input: ArrayView4<f32>,
        opts: PredictOptions,
    ) -> Result<(Vec<Prediction>, Timings)> {
        // On a pool thread, so that the parallel regions of every stage fork from a worker
        // instead of each one waking the caller's thread.
        rayon::scope(|_| self.predict_tensor_here(input, &ImageLimits::default(), opts))
    }

    /// [`Model::predict_tensor`] on the current thread.
    fn predict_tensor_here(
        &self,
        input: ArrayView4<f32>,
        limits: &ImageLimits,
        opts: PredictOptions,
    ) -> Result<(Vec<Prediction>, Timings)> {
        let p = self.config.params();
        let mut timings = Timings::default();
        let (n, h, w) = (input.shape()[0], input.shape()[2], input.shape()[3]);
        workset::check(
            &self.config,
            &self.backbone,
            n,
            (h, w),
            (h, w),
            (h, w),
            limits,
        )?;
        let (emb, (gh, gw)) = embed_batch(&self.config, &self.backbone, input, None, &mut timings)?;
        let t = Instant::now();
        let per_image = gh * gw;
        let n = input.shape()[0];
        let nn = self.index.k_nearest(emb.view(), p.scoring.k)?;
        let all_scores = scoring::patch_scores(&nn, p.scoring.distance);
        let mut preds = Vec::with_capacity(n);
        for i in 0..n {
            let rows = i * per_image..(i + 1) * per_image;
            let scores = &all_scores[rows.clone()];
            let s = scoring::image_score(
                scores,
                emb.slice(ndarray::s![rows, ..]),
                &self.index,
                &p.scoring,
            )?;
            let patch_scores = Array2::from_shape_vec((gh, gw), scores.to_vec())
                .map_err(|e| Error::input(format!("patch grid: {e}")))?;
            preds.push(Prediction {
                score: s.score,
                patch_scores,
                anomaly_map: None,
                max_patch: s.patch,
            });
        }
        timings.scoring = t.elapsed();
        if opts.anomaly_map {
            let t = Instant::now();
            let (h, w) = (input.shape()[2], input.shape()[3]);
            for pred in &mut preds {
                let scores = pred.patch_scores.as_slice().unwrap_or(&[]).to_vec();
                pred.anomaly_map = Some(anomaly_map::anomaly_map(&scores, gh, gw, h, w, &p.map)?);
            }
            timings.map = t.elapsed();
        }
        Ok((preds, timings))
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

/// Where the patch features of a fit go while they are extracted: kept whole (the in-memory
/// plan), or projected with the full rows spilled to a file.
struct BankSink {
    /// In memory: every row. Spilled: unused.
    bank: Vec<f32>,
    /// Spilled, greedy, no projection: the rows themselves as the greedy reads them.
    z: Option<coreset::ProjectedBank>,
    /// Spilled, greedy, projecting: one block's projection on its way to the spill file.
    zblock: Vec<f32>,
    /// Spilled: rows awaiting projection (less than one projection block).
    pending: Vec<f32>,
    /// Spilled, greedy, projecting: the projection (written to the spill file block by block).
    projector: Option<coreset::Projector>,
    /// Spilled with a greedy sampler.
    greedy: bool,
    spill: Option<SpillFile>,
    dim: usize,
    rows: usize,
}

impl BankSink {
    /// The spill file for `est` at `path`: with a projection region when the greedy projects.
    fn spill_file(
        path: &std::path::Path,
        cfg: &coreset::CoresetConfig,
        est: &MemoryEstimate,
    ) -> Result<SpillFile> {
        if is_greedy(cfg) && coreset::projects(cfg, est.dim) {
            SpillFile::with_projection(path, est.dim, est.rows, cfg.projection_dim)
        } else {
            SpillFile::create(path, est.dim)
        }
    }

    fn new(
        cfg: &coreset::CoresetConfig,
        est: &MemoryEstimate,
        spill: Option<SpillFile>,
    ) -> Result<BankSink> {
        let greedy = is_greedy(cfg);
        let dim = est.dim;
        let mut sink = BankSink {
            bank: Vec::new(),
            z: None,
            zblock: Vec::new(),
            pending: Vec::new(),
            projector: None,
            greedy,
            spill,
            dim,
            rows: 0,
        };
        // Exact reservations: a growing vector would briefly hold twice its size.
        if sink.spill.is_none() {
            sink.bank.reserve_exact(est.rows * dim);
        } else if greedy {
            if coreset::projects(cfg, dim) {
                sink.projector = Some(coreset::Projector::new(dim, cfg.projection_dim, cfg.seed)?);
                sink.pending
                    .reserve_exact(coreset::PROJECTION_BLOCK_ROWS * dim);
                sink.zblock
                    .reserve_exact(coreset::PROJECTION_BLOCK_ROWS * cfg.projection_dim);
            } else {
                sink.z = Some(coreset::ProjectedBank::with_capacity(est.rows, dim)?);
            }
        }
        Ok(sink)
    }

    fn push(&mut self, emb: ndarray::ArrayView2<f32>) -> Result<()> {
        let rows = emb.as_standard_layout();
        let src = rows.as_slice().unwrap_or(&[]);
        let Some(spill) = self.spill.as_mut() else {
            self.bank.extend_from_slice(src);
            self.rows += emb.nrows();
            return Ok(());
        };
        if let Some(pos) = src.iter().position(|v| !v.is_finite()) {
            return Err(Error::input(format!(
                "the memory bank holds a non-finite value at row {}, column {}",
                self.rows + pos / self.dim,
                pos % self.dim
            )));
        }
        spill.append(src)?;
        self.rows += emb.nrows();
        if !self.greedy {
            return Ok(());
        }
        let Some(proj) = &self.projector else {
            if let Some(z) = self.z.as_mut() {
                z.push_rows(src)?;
            }
            return Ok(());
        };
        // Projected in the blocks `coreset::project` uses, for the same bits.
        let block = coreset::PROJECTION_BLOCK_ROWS * self.dim;
        let mut rest = src;
        while !rest.is_empty() {
            let take = (block - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == block {
                proj.project_block(&self.pending, &mut self.zblock);
                spill.append_projection(&self.zblock)?;
                self.zblock.clear();
                self.pending.clear();
            }
        }
        Ok(())
    }

    /// The chosen rows (`keep × dim`, in selection order) and the coverage radius.
    ///
    /// Spilled: the projection is read back from the spill file into the blocked layout the
    /// greedy reads (the only copy of it in memory), dropped after the selection, and the
    /// chosen rows are read back.
    ///
    /// `backbone` (spilled fits with a projection region only) is released while the coreset
    /// is chosen: its caches dropped, its weights stashed in the spill file and restored before
    /// the chosen rows are read.
    fn finish(
        mut self,
        cfg: &coreset::CoresetConfig,
        keep: usize,
        backbone: Option<&mut Backbone>,
        progress: &mut dyn FnMut(FitProgress),
    ) -> Result<(Array2<f32>, Option<f32>)> {
        let mut report = |selected, total| progress(FitProgress::Coreset { selected, total });
        let Some(mut spill) = self.spill.take() else {
            let bank =
                Array2::from_shape_vec((self.rows, self.dim), std::mem::take(&mut self.bank))
                    .map_err(|e| Error::input(format!("memory bank shape: {e}")))?;
            let sel = coreset::select_with_radius(bank.view(), cfg, &mut report)?;
            let memory = bank.select(Axis(0), &sel.indices);
            return Ok((memory, sel.radius));
        };
        let mut stashed = None;
        if let Some(b) = backbone {
            b.release_caches();
            if spill.has_projection() {
                b.stash_weights(&mut |w| spill.append_stash(w))?;
                stashed = Some(b);
            }
        }
        if let Some(proj) = &self.projector {
            if !self.pending.is_empty() {
                proj.project_block(&self.pending, &mut self.zblock);
                spill.append_projection(&self.zblock)?;
            }
            self.pending = Vec::new();
            self.zblock = Vec::new();
            // What the backbone and the feature stage freed lies in pieces between live
            // allocations: give it back before the largest allocation of the fit.
            crate::os_memory::return_freed_memory();
            let mut z = coreset::ProjectedBank::with_capacity(self.rows, cfg.projection_dim)?;
            spill.read_projection(|rows| z.push_rows(rows))?;
            self.z = Some(z);
        }
        let sel =
            coreset::select_from_projected(self.z.as_ref(), self.rows, keep, cfg, &mut report)?;
        self.z = None;
        progress(FitProgress::Gathering {
            rows: sel.indices.len(),
        });
        if let Some(b) = stashed {
            let mut at = 0u64;
            b.restore_weights(&mut |w| {
                spill.read_stash(at, w)?;
                at += w.len() as u64;
                Ok(())
            })?;
        }
        let memory = spill.gather(&sel.indices)?;
        drop(spill);
        Ok((memory, sel.radius))
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

#[cfg(test)]
mod sink_tests {
    use super::*;
    use crate::coreset::{CoresetConfig, CoresetSize, Sampler};

    /// Rows arriving in awkward chunks (1, 7, 300 rows) are projected in the blocks of the
    /// whole-bank projection: the spilled selection, radius and rows equal the in-memory ones.
    #[test]
    fn spilled_sink_equals_in_memory_selection_for_any_arrival_chunks() {
        let (n, d) = (coreset::PROJECTION_BLOCK_ROWS + 700, 1536);
        let bank = Array2::from_shape_fn((n, d), |(i, j)| {
            ((i * 2654435761 + j * 40503) % 1000) as f32 / 250.0 - 2.0
        });
        let dir = std::env::temp_dir().join(format!("pc-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            (Sampler::Greedy, 128, vec![1usize, 7, 300]),
            (Sampler::APPROXIMATE_GREEDY_DEFAULT, 128, vec![300]),
            // No projection: the greedy reads the rows themselves.
            (Sampler::Greedy, 0, vec![300]),
        ];
        for (sampler, projection_dim, chunks) in cases {
            let cfg = CoresetConfig {
                sampler,
                size: CoresetSize::Count(60),
                projection_dim,
                seed: 2,
            };
            let want = coreset::select_with_radius(bank.view(), &cfg, |_, _| {}).unwrap();
            for chunk in chunks {
                let est = MemoryEstimate {
                    plan: FitPlan::Spill,
                    images: 1,
                    rows: n,
                    keep: 60,
                    dim: d,
                    baseline: 0,
                    batch_working: 0,
                    released: 0,
                    restored: 0,
                    stages: Vec::new(),
                };
                let path = dir.join(format!("s{chunk}-{projection_dim}"));
                let spill = BankSink::spill_file(&path, &cfg, &est).unwrap();
                let mut sink = BankSink::new(&cfg, &est, Some(spill)).unwrap();
                let mut start = 0;
                while start < n {
                    let end = (start + chunk).min(n);
                    sink.push(bank.slice(ndarray::s![start..end, ..])).unwrap();
                    start = end;
                }
                let (rows, radius) = sink.finish(&cfg, 60, None, &mut |_| {}).unwrap();
                let what = format!("{sampler:?} p {projection_dim} chunk {chunk}");
                assert_eq!(
                    radius.map(f32::to_bits),
                    want.radius.map(f32::to_bits),
                    "{what}"
                );
                assert_eq!(rows, bank.select(Axis(0), &want.indices), "{what}");
                assert!(!path.exists());
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
