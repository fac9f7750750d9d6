//! The PatchCore model: [`PatchCore::fit`] on normal images, [`PatchCore::predict`] on new ones,
//! [`PatchCore::save`] / [`PatchCore::load`] to one safetensors file.

mod file;
mod meta;
mod params;
mod workset;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::RgbImage;
use ndarray::{Array2, ArrayView4, Axis, CowArray, Ix2};
use rayon::prelude::*;

pub use file::{BackboneSource, SaveOptions, FORMAT_VERSION};
pub use params::{PatchCoreConfig, PatchCoreParams};

use crate::anomaly_map;
use crate::backbone::Backbone;
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
        Self::fit_with(
            config,
            backbone,
            images.len(),
            |i| Ok(images[i].clone()),
            &ImageLimits::default(),
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
        Self::fit_with(
            config,
            backbone,
            paths.len(),
            |i| preprocess::load_rgb(&paths[i], limits),
            limits,
            progress,
        )
    }

    fn fit_with(
        config: PatchCoreConfig,
        backbone: Backbone,
        n: usize,
        load: impl Fn(usize) -> Result<RgbImage> + Sync,
        limits: &ImageLimits,
        progress: &mut dyn FnMut(FitProgress),
    ) -> Result<(PatchCore, Timings)> {
        if n == 0 {
            return Err(Error::input("fit needs at least one normal image"));
        }
        check_backbone(&config, &backbone)?;
        limits.validate()?;
        workset::check_config(&config, &backbone, limits)?;
        let p = config.params();
        let mut timings = Timings::default();
        let mut bank: Vec<f32> = Vec::new();
        let mut dim = 0;
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
            let (emb, g) = embed_batch(&config, &backbone, input.view(), &mut timings)?;
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
            dim = emb.ncols();
            bank.extend(emb.iter());
            done = end;
            progress(FitProgress::Features { done, total: n });
        }
        debug_assert_eq!(done, n);
        let rows = bank.len() / dim.max(1);
        let bank = Array2::from_shape_vec((rows, dim), bank)
            .map_err(|e| Error::input(format!("memory bank shape: {e}")))?;
        let keep = match p.coreset.sampler {
            coreset::Sampler::None => rows,
            _ => coreset::coreset_size(rows, p.coreset.size)?,
        };
        check_k(p.scoring.k, keep)?;
        progress(FitProgress::CoresetStarted { rows, keep });
        let t = Instant::now();
        let idx = coreset::select(bank.view(), &p.coreset)?;
        let memory = bank.select(Axis(0), &idx);
        drop(bank);
        timings.coreset = t.elapsed();
        let index = BruteForce::with_precision(memory, p.bank_precision)?;
        progress(FitProgress::Done { rows: index.len() });
        Ok((
            PatchCore {
                config,
                backbone,
                index,
                threshold: None,
            },
            timings,
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
        let index = BruteForce::with_precision(memory_bank, config.params().bank_precision)?;
        Ok(PatchCore {
            config,
            backbone,
            index,
            threshold,
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
        let index = BruteForce::from_f16(memory_bank)?;
        let mut params = config.into_params();
        params.bank_precision = BankPrecision::F16;
        Ok(PatchCore {
            config: params.check()?,
            backbone,
            index,
            threshold,
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
        let (emb, (gh, gw)) = embed_batch(&self.config, &self.backbone, input, &mut timings)?;
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
}

/// Backbone → embedding for one normalised batch; returns rows and the patch grid.
fn embed_batch(
    config: &PatchCoreConfig,
    backbone: &Backbone,
    input: ArrayView4<f32>,
    timings: &mut Timings,
) -> Result<(Array2<f32>, (usize, usize))> {
    let t = Instant::now();
    let feats = backbone.forward(input)?;
    timings.backbone += t.elapsed();
    let t = Instant::now();
    let views: Vec<_> = feats.iter().map(|f| f.view()).collect();
    let grid = (feats[0].shape()[2], feats[0].shape()[3]);
    let emb = embedding::embed(&views, &config.params().aggregator)?;
    timings.embedding += t.elapsed();
    Ok((emb, grid))
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
