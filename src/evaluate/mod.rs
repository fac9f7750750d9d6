//! Benchmark evaluation: fit on one category, score its test set, measure accuracy and time;
//! aggregate runs over seeds; write the results as a markdown table, JSON and (with the
//! `chart` feature) an SVG bar chart.
//!
//! ```no_run
//! use patchcore::backbone::{Backbone, ResNetSpec};
//! use patchcore::dataset::Category;
//! use patchcore::evaluate::{self, EvalOptions};
//! use patchcore::model::PatchCoreParams;
//!
//! # fn main() -> patchcore::Result<()> {
//! let category = Category::open("mvtec/bottle".as_ref())?;
//! let mut runs = Vec::new();
//! for seed in [0, 1, 2] {
//!     let mut params = PatchCoreParams::default();
//!     params.coreset.seed = seed;
//!     let config = params.check()?;
//!     let spec = ResNetSpec::from_name("wide_resnet50_2")?;
//!     let backbone = Backbone::from_safetensors_file(
//!         "wide_resnet50_2.safetensors",
//!         &spec,
//!         &config.params().layers,
//!     )?;
//!     let eval =
//!         evaluate::evaluate_category(&category, config, backbone, &EvalOptions::default(), &mut |_| {})?;
//!     runs.push(eval.metrics);
//! }
//! let summaries = evaluate::summarize(&runs)?;
//! println!("{}", evaluate::markdown_table(&summaries, None));
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "chart")]
mod chart;
mod report;

use std::time::{Duration, Instant};

use ndarray::Array2;
use rayon::prelude::*;

#[cfg(feature = "chart")]
pub use chart::chart_svg;
pub use report::{json_report, markdown_report, markdown_table, BenchmarkInfo};

use crate::backbone::Backbone;
use crate::dataset::Category;
use crate::error::{Error, Result};
use crate::metrics::{self, AuproConfig};
use crate::model::{FitProgress, PatchCore, PatchCoreConfig, PredictOptions, Timings};
use crate::preprocess::{self, ImageLimits};

/// How test images are read and scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalOptions {
    /// Decoding limits for images and masks.
    pub limits: ImageLimits,
    /// Test images per [`PatchCore::predict_batch`] call (1 = per-image latency).
    pub batch_size: usize,
    /// AUPRO settings (default: FPR ≤ 0.3, MVTec reference thresholds).
    pub aupro: AuproConfig,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            limits: ImageLimits::default(),
            batch_size: 1,
            aupro: AuproConfig::default(),
        }
    }
}

/// What [`evaluate_category`] reports while it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EvalProgress {
    /// A step of fitting.
    Fit(FitProgress),
    /// `done` of `total` test images have been scored.
    Predicted {
        /// Images scored so far.
        done: usize,
        /// Test images in all.
        total: usize,
    },
}

/// Everything [`PatchCore::predict`] said about a category's test set, with the ground truth,
/// in test-set order.
#[derive(Debug, Clone, Default)]
pub struct Predictions {
    /// `true` for anomalous test images.
    pub labels: Vec<bool>,
    /// Image anomaly scores.
    pub scores: Vec<f32>,
    /// Anomaly maps at the crop size.
    pub maps: Vec<Array2<f32>>,
    /// Ground-truth masks, preprocessed like the images (all `false` for normal images).
    pub masks: Vec<Array2<bool>>,
    /// Per-stage timings of scoring these images, summed over all calls (decoding in
    /// `preprocess`; mask loading is not included).
    pub timings: Timings,
}

/// Accuracy of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accuracy {
    /// Image-level AUROC.
    pub image_auroc: f64,
    /// AUROC over every pixel of every test image.
    pub pixel_auroc: f64,
    /// Normalised area under the per-region-overlap curve.
    pub aupro: f64,
    /// Best image-level F1 over all thresholds.
    pub image_f1_max: f64,
}

impl Predictions {
    /// Image/pixel AUROC, AUPRO and image F1-max of these predictions.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the metrics reject the data (one class only, no defect
    /// region, mismatched shapes).
    pub fn accuracy(&self, aupro: &AuproConfig) -> Result<Accuracy> {
        let maps: Vec<_> = self.maps.iter().map(|m| m.view()).collect();
        let masks: Vec<_> = self.masks.iter().map(|m| m.view()).collect();
        Ok(Accuracy {
            image_auroc: metrics::auroc(&self.labels, &self.scores)?,
            pixel_auroc: metrics::pixel_auroc(&masks, &maps)?,
            aupro: metrics::aupro(&masks, &maps, aupro)?,
            image_f1_max: metrics::f1_max(&self.labels, &self.scores)?.f1,
        })
    }
}

/// Everything measured in one run (one category, one seed).
#[derive(Debug, Clone, PartialEq)]
pub struct RunMetrics {
    /// Category name.
    pub category: String,
    /// The coreset seed of the run.
    pub seed: u64,
    /// Accuracy.
    pub accuracy: Accuracy,
    /// Wall time of [`PatchCore::fit_paths`] in seconds.
    pub fit_seconds: f64,
    /// Wall time of scoring the test set (decoding, anomaly maps included; masks excluded)
    /// divided by the number of test images, in milliseconds.
    pub predict_ms_per_image: f64,
    /// Training images.
    pub n_train: usize,
    /// Test images.
    pub n_test: usize,
    /// Anomalous test images.
    pub n_anomalous: usize,
    /// Rows of the memory bank after coreset selection.
    pub memory_bank_rows: usize,
}

/// The result of [`evaluate_category`]: the metrics and the predictions they were computed on.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The metrics.
    pub metrics: RunMetrics,
    /// The raw predictions.
    pub predictions: Predictions,
}

/// Scores every test image of `category` with `model` and loads its ground truth. Returns the
/// predictions and the wall time spent predicting (mask loading excluded).
///
/// # Errors
/// Decoding errors (naming the file), [`Error::InvalidParameter`] for `batch_size == 0`,
/// [`Error::InvalidInput`] when a mask does not match its anomaly map after preprocessing.
pub fn predict_category(
    model: &PatchCore,
    category: &Category,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(EvalProgress),
) -> Result<(Predictions, Duration)> {
    if opts.batch_size == 0 {
        return Err(Error::param("batch_size", "must be at least 1"));
    }
    let cfg = &model.config().params().preprocess;
    let total = category.test.len();
    let mut out = Predictions::default();
    let mut elapsed = Duration::ZERO;
    for chunk in category.test.chunks(opts.batch_size) {
        let t = Instant::now();
        let images = chunk
            .par_iter()
            .map(|s| preprocess::load_rgb(&s.image, &opts.limits))
            .collect::<Result<Vec<_>>>()?;
        let decode = t.elapsed();
        let (preds, mut timings) =
            model.predict_batch(&images, PredictOptions { anomaly_map: true })?;
        elapsed += t.elapsed();
        timings.preprocess += decode;
        out.timings += timings;
        for (s, pred) in chunk.iter().zip(preds) {
            let map = pred
                .anomaly_map
                .ok_or_else(|| Error::input("the model returned no anomaly map"))?;
            let mask = match &s.mask {
                Some(m) => {
                    preprocess::preprocess_mask(&preprocess::load_mask(m, &opts.limits)?, cfg)?
                }
                None => Array2::from_elem(map.dim(), false),
            };
            if mask.dim() != map.dim() {
                return Err(Error::input(format!(
                    "{}: the ground-truth mask is {:?} after preprocessing but the anomaly map \
                     is {:?}; the mask must have the size of its image",
                    s.image.display(),
                    mask.dim(),
                    map.dim()
                )));
            }
            out.labels.push(s.is_anomalous());
            out.scores.push(pred.score);
            out.maps.push(map);
            out.masks.push(mask);
        }
        progress(EvalProgress::Predicted {
            done: out.labels.len(),
            total,
        });
    }
    Ok((out, elapsed))
}

/// Fits a model on `category.train` with `config` and `backbone`, scores `category.test` and
/// measures accuracy and time. The run's seed is `config`'s coreset seed.
///
/// # Errors
/// As [`PatchCore::fit_paths`], [`predict_category`] and [`Predictions::accuracy`].
pub fn evaluate_category(
    category: &Category,
    config: PatchCoreConfig,
    backbone: Backbone,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(EvalProgress),
) -> Result<Evaluation> {
    let seed = config.params().coreset.seed;
    let t = Instant::now();
    let (model, _) =
        PatchCore::fit_paths(config, backbone, &category.train, &opts.limits, &mut |p| {
            progress(EvalProgress::Fit(p))
        })?;
    let fit_seconds = t.elapsed().as_secs_f64();
    let (predictions, predict_time) = predict_category(&model, category, opts, progress)?;
    let accuracy = predictions.accuracy(&opts.aupro)?;
    let n_test = predictions.labels.len();
    let metrics = RunMetrics {
        category: category.name.clone(),
        seed,
        accuracy,
        fit_seconds,
        predict_ms_per_image: predict_time.as_secs_f64() * 1e3 / n_test.max(1) as f64,
        n_train: category.train.len(),
        n_test,
        n_anomalous: predictions.labels.iter().filter(|&&l| l).count(),
        memory_bank_rows: model.memory_bank().nrows(),
    };
    Ok(Evaluation {
        metrics,
        predictions,
    })
}

/// Mean, minimum and maximum of a set of values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// Arithmetic mean.
    pub mean: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Stat {
    /// The statistics of `values`; `None` when empty.
    pub fn of(values: &[f64]) -> Option<Stat> {
        if values.is_empty() {
            return None;
        }
        let mut min = f64::INFINITY;
        let mut max = f64::NEG_INFINITY;
        let mut sum = 0.0;
        for &v in values {
            min = min.min(v);
            max = max.max(v);
            sum += v;
        }
        Some(Stat {
            mean: sum / values.len() as f64,
            min,
            max,
        })
    }
}

/// Runs of one category (or the cross-category mean) aggregated over seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Category name (`"mean"` for [`mean_over_categories`]).
    pub name: String,
    /// The seeds aggregated, in order of appearance.
    pub seeds: Vec<u64>,
    /// Image AUROC over seeds.
    pub image_auroc: Stat,
    /// Pixel AUROC over seeds.
    pub pixel_auroc: Stat,
    /// AUPRO over seeds.
    pub aupro: Stat,
    /// Image F1-max over seeds.
    pub image_f1_max: Stat,
    /// Fit time in seconds over seeds.
    pub fit_seconds: Stat,
    /// Prediction time per image in milliseconds over seeds.
    pub predict_ms_per_image: Stat,
}

/// Builds a summary from per-seed values `(seed, metrics of that seed)`.
fn summary_of(name: &str, rows: &[(u64, [f64; 6])]) -> Result<Summary> {
    let col = |j: usize| {
        let v: Vec<f64> = rows.iter().map(|r| r.1[j]).collect();
        Stat::of(&v).ok_or_else(|| Error::input(format!("{name}: no run to summarise")))
    };
    Ok(Summary {
        name: name.to_string(),
        seeds: rows.iter().map(|r| r.0).collect(),
        image_auroc: col(0)?,
        pixel_auroc: col(1)?,
        aupro: col(2)?,
        image_f1_max: col(3)?,
        fit_seconds: col(4)?,
        predict_ms_per_image: col(5)?,
    })
}

fn values(r: &RunMetrics) -> [f64; 6] {
    let a = &r.accuracy;
    [
        a.image_auroc,
        a.pixel_auroc,
        a.aupro,
        a.image_f1_max,
        r.fit_seconds,
        r.predict_ms_per_image,
    ]
}

/// Category names in order of first appearance, with their runs.
fn group(runs: &[RunMetrics]) -> Result<Vec<(&str, Vec<&RunMetrics>)>> {
    if runs.is_empty() {
        return Err(Error::input("no run to summarise (empty input)"));
    }
    let mut groups: Vec<(&str, Vec<&RunMetrics>)> = Vec::new();
    for r in runs {
        match groups.iter_mut().find(|g| g.0 == r.category) {
            Some(g) => {
                if g.1.iter().any(|o| o.seed == r.seed) {
                    return Err(Error::input(format!(
                        "category {} has two runs with seed {}; each (category, seed) pair \
                         must appear once",
                        r.category, r.seed
                    )));
                }
                g.1.push(r);
            }
            None => groups.push((&r.category, vec![r])),
        }
    }
    Ok(groups)
}

/// Aggregates runs over seeds, one [`Summary`] per category in order of first appearance.
///
/// # Errors
/// [`Error::InvalidInput`] for no runs or a (category, seed) pair that appears twice.
pub fn summarize(runs: &[RunMetrics]) -> Result<Vec<Summary>> {
    group(runs)?
        .into_iter()
        .map(|(name, rs)| {
            let rows: Vec<(u64, [f64; 6])> = rs.iter().map(|r| (r.seed, values(r))).collect();
            summary_of(name, &rows)
        })
        .collect()
}

/// The cross-category mean row: for each seed, the mean over categories of that seed's
/// runs; then [`Stat`] over seeds. So `mean` is the mean of the category means, and
/// `min`/`max` are the worst and best seed's category average.
///
/// # Errors
/// [`Error::InvalidInput`] for no runs, a duplicated (category, seed) pair, or a seed that
/// some category lacks (the mean would mix different sets of categories).
pub fn mean_over_categories(runs: &[RunMetrics]) -> Result<Summary> {
    let groups = group(runs)?;
    let seeds: Vec<u64> = groups[0].1.iter().map(|r| r.seed).collect();
    for (name, rs) in &groups {
        if let Some(r) = rs.iter().find(|r| !seeds.contains(&r.seed)) {
            return Err(Error::input(format!(
                "category {name} has a run with seed {} that category {} lacks; the mean \
                 over categories needs every seed in every category",
                r.seed, groups[0].0
            )));
        }
    }
    let mut rows = Vec::with_capacity(seeds.len());
    for &seed in &seeds {
        let mut sum = [0.0f64; 6];
        for (name, rs) in &groups {
            let r = rs.iter().find(|r| r.seed == seed).ok_or_else(|| {
                Error::input(format!(
                    "category {name} has no run with seed {seed}; the mean over categories \
                     needs every seed in every category"
                ))
            })?;
            for (s, v) in sum.iter_mut().zip(values(r)) {
                *s += v;
            }
        }
        let n = groups.len() as f64;
        rows.push((seed, sum.map(|s| s / n)));
    }
    summary_of("mean", &rows)
}

#[cfg(test)]
mod tests;
