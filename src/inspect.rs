//! One call from an image to everything a person or a program needs about it:
//! [`PatchCore::inspect`] gives the image score, the decision, the anomaly map at the size of
//! the **original** image and the defect regions in original-image pixel coordinates;
//! [`Inspection::render`] draws the picture (heat map over the image, outlines).
//!
//! ```no_run
//! use patchcore::inspect::{InspectOptions, RenderOptions};
//! use patchcore::model::{BackboneSource, PatchCore};
//!
//! let model = PatchCore::load("model.safetensors".as_ref(), BackboneSource::Embedded)?;
//! let (image, result) = model.inspect_path("part.png".as_ref(), &InspectOptions::default())?;
//! println!("score {} anomalous {:?}", result.score, result.anomalous);
//! for r in &result.regions {
//!     println!("defect at {:?}, {} px, peak {}", r.bbox, r.area, r.peak);
//! }
//! result.render(&image, &RenderOptions::default())?.save("part_heatmap.png").ok();
//! # Ok::<(), patchcore::Error>(())
//! ```

use std::path::Path;
use std::time::Instant;

use image::{Rgb, RgbImage};
use ndarray::{Array2, ArrayView2};

use crate::anomaly_map::map_to_image;
use crate::error::{Error, Result};
use crate::metrics::is_anomalous;
use crate::model::{PatchCore, PredictOptions, Timings};
use crate::preprocess::{self, ImageLimits, PreprocessConfig};
use crate::segmentation::{self, BBox, Connectivity};
use crate::visualize::{self, ColorScale};

/// What [`PatchCore::inspect`] computes.
#[derive(Debug, Clone, PartialEq)]
pub struct InspectOptions {
    /// Decision threshold; `None` uses the model's ([`PatchCore::threshold`]). Without any,
    /// there is no decision and no regions.
    pub threshold: Option<f32>,
    /// Compute the anomaly map (and the regions). `false` gives the score (and decision) only,
    /// which is faster.
    pub anomaly_map: bool,
    /// Limits on decoded images ([`PatchCore::inspect_path`]) and on the working set of the
    /// prediction ([`ImageLimits::max_working_set_bytes`], checked before allocating).
    pub limits: ImageLimits,
}

impl Default for InspectOptions {
    fn default() -> Self {
        InspectOptions {
            threshold: None,
            anomaly_map: true,
            limits: ImageLimits::default(),
        }
    }
}

/// One defect region: an 8-connected component of the original-size map at or above the
/// threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct DefectRegion {
    /// Bounding box in original-image pixels (half-open, rows `y0..y1`, columns `x0..x1`).
    pub bbox: BBox,
    /// Number of pixels.
    pub area: usize,
    /// Highest map value inside the region.
    pub peak: f32,
    /// Outer boundary, `(x, y)` points in original-image pixel coordinates (pixel `[y, x]`
    /// has its centre at `(x, y)`), closed (the first point is not repeated); see
    /// [`segmentation::contours`].
    pub outline: Vec<(f32, f32)>,
}

/// The result of inspecting one image.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// Image anomaly score.
    pub score: f32,
    /// The threshold used (given, or the model's), if any.
    pub threshold: Option<f32>,
    /// `score >= threshold` (NaN counts as anomalous), when there is a threshold.
    pub anomalous: Option<bool>,
    /// The anomaly map resampled onto the whole original image (`height × width`), when
    /// asked for.
    pub anomaly_map: Option<Array2<f32>>,
    /// Regions at or above the threshold, in raster order of their first pixel (empty
    /// without a map or a threshold).
    pub regions: Vec<DefectRegion>,
    /// Time spent per stage (the map resampling and regions count as `map`).
    pub timings: Timings,
}

/// How [`Inspection::render`] draws.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenderOptions {
    /// Opacity of the heat map over the image, in `[0, 1]`.
    pub alpha: f32,
    /// Draw the region outlines.
    pub outlines: bool,
    /// Colour of the outlines.
    pub outline_colour: Rgb<u8>,
    /// Colour scale; `None` uses [`threshold_scale`] of the threshold (so that the threshold
    /// is the middle colour), or the map's own range without a threshold.
    pub scale: Option<ColorScale>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            alpha: 0.45,
            outlines: true,
            outline_colour: Rgb([255, 255, 255]),
            scale: None,
        }
    }
}

/// The colour scale centred on threshold `t`: `[0.5 t, 1.5 t]` for an ordinary positive
/// threshold; for `t <= 0`, a tiny or subnormal `t` (where that band collapses) the band is
/// `t ± 1e-6` at least, so a degenerate threshold still gives a picture.
///
/// # Errors
/// [`Error::InvalidParameter`] when `t` is not finite.
pub fn threshold_scale(t: f32) -> Result<ColorScale> {
    if !t.is_finite() {
        return Err(Error::param(
            "threshold",
            format!("must be finite, got {t}"),
        ));
    }
    let half = (0.5 * t.abs()).max(1e-6);
    ColorScale::new(t - half, t + half)
}

impl Inspection {
    /// Builds an inspection from a score and the map at the network input size (`map`, as in
    /// [`Prediction::anomaly_map`](crate::model::Prediction::anomaly_map)) of an original
    /// image of `height × width` pixels preprocessed by `preprocess`: the map is resampled
    /// onto the original image ([`map_to_image`] over [`preprocess::crop_box`]) and the
    /// regions are taken at `threshold`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the sizes do not fit the preprocessing.
    pub fn from_map(
        score: f32,
        map: Option<ArrayView2<'_, f32>>,
        preprocess: &PreprocessConfig,
        height: usize,
        width: usize,
        threshold: Option<f32>,
    ) -> Result<Inspection> {
        let full = match map {
            Some(m) => {
                let crop = preprocess::crop_box(height, width, preprocess)?;
                Some(map_to_image(m, &crop, height, width)?)
            }
            None => None,
        };
        let regions = match (&full, threshold) {
            (Some(m), Some(t)) => regions(m.view(), t),
            _ => Vec::new(),
        };
        Ok(Inspection {
            score,
            threshold,
            anomalous: threshold.map(|t| is_anomalous(score, t)),
            anomaly_map: full,
            regions,
            timings: Timings::default(),
        })
    }

    /// The picture: the heat map blended over `image` (the inspected image, at its original
    /// size) and, with [`RenderOptions::outlines`], the region outlines.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the inspection has no map or `image` is not the size of
    /// the map; [`Error::InvalidParameter`] for a bad `alpha` or scale.
    pub fn render(&self, image: &RgbImage, opts: &RenderOptions) -> Result<RgbImage> {
        let map = self.anomaly_map.as_ref().ok_or_else(|| {
            Error::input("render: the inspection has no anomaly map (inspect with anomaly_map)")
        })?;
        let scale = match (opts.scale, self.threshold) {
            (Some(s), _) => s,
            (None, Some(t)) => threshold_scale(t)?,
            (None, None) => {
                let finite = map.iter().copied().filter(|v| v.is_finite());
                let (lo, hi) = finite.fold((f32::MAX, f32::MIN), |(a, b), v| (a.min(v), b.max(v)));
                if lo < hi {
                    ColorScale::new(lo, hi)?
                } else if lo == hi {
                    threshold_scale(lo)?
                } else {
                    threshold_scale(0.0)?
                }
            }
        };
        let mut pic = visualize::overlay(image, map.view(), &scale, opts.alpha)?;
        if opts.outlines {
            for r in &self.regions {
                visualize::draw_polyline(&mut pic, &r.outline, true, opts.outline_colour);
            }
        }
        Ok(pic)
    }
}

/// The regions of `map` at or above `t`: 8-connected components with their bounding box,
/// area, peak value and outer outline (coordinates of `map`).
pub fn regions(map: ArrayView2<'_, f32>, t: f32) -> Vec<DefectRegion> {
    let mask = segmentation::threshold_map(map, t);
    let comps = segmentation::connected_components(mask.view(), Connectivity::Eight);
    comps
        .regions
        .iter()
        .map(|r| {
            let b = r.bbox;
            // The region alone inside its box: its one outer contour is the outline.
            let sub = comps
                .labels
                .slice(ndarray::s![b.y0..b.y1, b.x0..b.x1])
                .mapv(|l| l == r.label);
            let peak = ndarray::Zip::from(&sub)
                .and(map.slice(ndarray::s![b.y0..b.y1, b.x0..b.x1]))
                .fold(
                    f32::NEG_INFINITY,
                    |m, &inside, &v| if inside { m.max(v) } else { m },
                );
            let outline = segmentation::contours(sub.view())
                .into_iter()
                .find(|c| !c.is_hole)
                .map(|c| {
                    c.points
                        .iter()
                        .map(|&(x, y)| (x + b.x0 as f32, y + b.y0 as f32))
                        .collect()
                })
                .unwrap_or_default();
            DefectRegion {
                bbox: b,
                area: r.area,
                peak,
                outline,
            }
        })
        .collect()
}

impl PatchCore {
    /// Scores `image` and, with [`InspectOptions::anomaly_map`], computes the anomaly map at
    /// the image's own size and the defect regions at the threshold (the given one, else the
    /// model's). See the [module docs](crate::inspect).
    ///
    /// # Errors
    /// As [`PatchCore::predict`]; [`Error::InvalidParameter`] for a non-finite threshold.
    pub fn inspect(&self, image: &RgbImage, opts: &InspectOptions) -> Result<Inspection> {
        let threshold = opts.threshold.or(self.threshold());
        if let Some(t) = threshold {
            if !t.is_finite() {
                return Err(Error::param(
                    "threshold",
                    format!("must be finite, got {t}"),
                ));
            }
        }
        let (mut preds, mut timings) = self.predict_batch_limited(
            std::slice::from_ref(image),
            &opts.limits,
            PredictOptions {
                anomaly_map: opts.anomaly_map,
            },
        )?;
        let pred = preds.pop().ok_or_else(|| Error::input("no prediction"))?;
        let start = Instant::now();
        let (w, h) = image.dimensions();
        let mut out = Inspection::from_map(
            pred.score,
            pred.anomaly_map.as_ref().map(|m| m.view()),
            &self.config().params().preprocess,
            h as usize,
            w as usize,
            threshold,
        )?;
        timings.map += start.elapsed();
        out.timings = timings;
        Ok(out)
    }

    /// [`PatchCore::inspect`] of an image file (decoded under [`InspectOptions::limits`]);
    /// returns the decoded image too, for [`Inspection::render`].
    ///
    /// # Errors
    /// As [`preprocess::load_rgb`] and [`PatchCore::inspect`].
    pub fn inspect_path(
        &self,
        path: &Path,
        opts: &InspectOptions,
    ) -> Result<(RgbImage, Inspection)> {
        let start = Instant::now();
        let image = preprocess::load_rgb(path, &opts.limits)?;
        let decode = start.elapsed();
        let mut out = self.inspect(&image, opts).map_err(|e| match e {
            Error::LimitExceeded { reason } => Error::LimitExceeded {
                reason: format!("{}: {reason}", path.display()),
            },
            e => e,
        })?;
        out.timings.preprocess += decode;
        Ok((image, out))
    }
}

#[cfg(test)]
mod tests;
