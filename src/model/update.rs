//! Incremental update ("teach good"): add the patches of new normal images to a fitted model
//! without refitting and without the old images.
//!
//! The greedy k-center is continued from the current bank: with the stored coverage radius `r`
//! (where the fit's traversal stopped, see [`PatchCore::coverage_radius`]), a new patch joins
//! the bank when it lies farther than `r` from every bank row, farthest first — exactly the
//! rows the traversal would have gone on to choose, down to the radius it stopped at. Distances
//! are measured where the fit measured them: in the seeded projection (rebuilt from the stored
//! seed and dimensions; the old bank is searched with the kNN index, whose matrix-product
//! distances differ from the coreset's by rounding only). The projection of a row depends at the rounding level on the block of
//! rows it is computed in (see [`coreset::PROJECTION_SPLIT_TOLERANCE`]); a patch therefore
//! joins only when it is farther than `r` plus that rounding margin, so a patch the fit already
//! covered is never added again.
//!
//! **Threshold.** When the model has a decision threshold, the new images are declared good:
//! after the coverage step, any of their patches that would still score at or above the
//! threshold (its distance to the nearest bank row, as `predict` scores with `k = 1`) joins the
//! bank too, farthest first. The coverage radius lives in the projection while scores are
//! distances in the embedding, so coverage alone does not bound the new images' scores; this
//! step does (for `k = 1`, the default; with `k > 1` a patch's score is the mean distance to its
//! `k` nearest rows and can stay higher). The threshold itself is kept.
//!
//! Per sampler: [`Sampler::Greedy`] as above; [`Sampler::ApproximateGreedy`] the same, with its
//! stopping key as `r` (its keys start capped, so `r` can be below the true coverage: the update
//! then adds rather more rows than needed, never fewer); [`Sampler::None`] keeps every patch,
//! so every new patch is added; [`Sampler::Random`] has no notion of coverage: the update is
//! refused (refit instead).

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use image::RgbImage;
use ndarray::{concatenate, Array2, Axis};
use rayon::prelude::*;

use super::{embed_batch, PatchCore, Timings};
use crate::coreset::{self, Sampler};
use crate::error::{Error, Result};
use crate::knn::{BruteForce, NearestNeighbours};
use crate::preprocess::{self, ImageLimits};

/// What [`PatchCore::update`] reports while it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpdateProgress {
    /// `done` of `total` new images processed; `added` rows joined the bank so far.
    Images {
        /// Images done.
        done: usize,
        /// Images in all.
        total: usize,
        /// Rows added so far.
        added: usize,
    },
}

/// One update, as stored in the model's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateRecord {
    /// Seconds since the Unix epoch when the update ran.
    pub unix_time: u64,
    /// New images.
    pub images: u64,
    /// Rows they added to the memory bank.
    pub rows_added: u64,
}

impl UpdateRecord {
    /// `unix=…:images=…:rows=…` (the metadata encoding).
    pub fn encode(&self) -> String {
        format!(
            "unix={}:images={}:rows={}",
            self.unix_time, self.images, self.rows_added
        )
    }

    /// Parses [`UpdateRecord::encode`]'s form.
    pub fn decode(s: &str) -> Option<UpdateRecord> {
        let mut r = UpdateRecord {
            unix_time: 0,
            images: 0,
            rows_added: 0,
        };
        let mut seen = 0;
        for part in s.split(':') {
            let (k, v) = part.split_once('=')?;
            let v: u64 = v.parse().ok()?;
            match k {
                "unix" => r.unix_time = v,
                "images" => r.images = v,
                "rows" => r.rows_added = v,
                _ => return None,
            }
            seen += 1;
        }
        (seen == 3).then_some(r)
    }
}

/// The outcome of [`PatchCore::update`].
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateReport {
    /// New images processed.
    pub images: usize,
    /// Their patches.
    pub patches: usize,
    /// Rows added to the memory bank.
    pub rows_added: usize,
    /// Rows before the update.
    pub rows_before: usize,
    /// Of `rows_added`, those added because the patch would have scored at or above the
    /// model's decision threshold although the coverage radius did not ask for it.
    pub rows_for_threshold: usize,
    /// The coverage radius used (`None` for [`Sampler::None`]).
    pub radius: Option<f32>,
    /// Time per stage (`coreset` holds the coverage test).
    pub timings: Timings,
}

impl PatchCore {
    /// Adds the patches of new normal `images` that the memory bank does not cover yet (see
    /// the module documentation of `update`): the bank grows, the old training images are not
    /// needed. The decision threshold, if any, is kept as it is, and every patch of the new
    /// images that would score at or above it joins the bank (see the module documentation). Records the update in
    /// [`PatchCore::update_history`] and adds the images to [`PatchCore::images_seen`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no images, images the preprocessing or backbone refuse, a
    /// patch grid unlike the model's, or a model without a stored coverage radius (saved before
    /// it was stored: refit it); [`Error::InvalidParameter`] for a model fitted with the random
    /// sampler. On error the model is unchanged.
    pub fn update(
        &mut self,
        images: &[RgbImage],
        progress: &mut dyn FnMut(UpdateProgress),
    ) -> Result<UpdateReport> {
        self.update_with(
            images.len(),
            |i| Ok(images[i].clone()),
            &ImageLimits::default(),
            progress,
        )
    }

    /// [`PatchCore::update`] on image files (decoded under `limits`, whose working-set limit
    /// also bounds each batch: [`Error::LimitExceeded`] before allocating).
    ///
    /// # Errors
    /// As [`PatchCore::update`], plus the read and decode errors of each file.
    pub fn update_paths(
        &mut self,
        paths: &[PathBuf],
        limits: &ImageLimits,
        progress: &mut dyn FnMut(UpdateProgress),
    ) -> Result<UpdateReport> {
        self.update_with(
            paths.len(),
            |i| preprocess::load_rgb(&paths[i], limits),
            limits,
            progress,
        )
    }

    fn update_with(
        &mut self,
        n: usize,
        load: impl Fn(usize) -> Result<RgbImage> + Sync,
        limits: &ImageLimits,
        progress: &mut dyn FnMut(UpdateProgress),
    ) -> Result<UpdateReport> {
        if n == 0 {
            return Err(Error::input("update needs at least one new normal image"));
        }
        let p = self.config.params().clone();
        let radius = match p.coreset.sampler {
            Sampler::Random => {
                return Err(Error::param(
                    "coreset sampler",
                    "the model was fitted with the random sampler, which has no coverage \
                     radius to continue from; refit it on all images (or fit with the greedy \
                     sampler to be able to update)",
                ))
            }
            Sampler::None => None,
            Sampler::Greedy | Sampler::ApproximateGreedy { .. } => {
                Some(self.coverage_radius.ok_or_else(|| {
                    Error::input(
                        "this model has no stored coverage radius (it was saved by a version \
                         without incremental update, or built from parts): refit it to update it",
                    )
                })?)
            }
        };
        let bank = self.index.bank().into_owned();
        let (rows_before, dim) = bank.dim();
        let projector = match radius {
            Some(_) if coreset::projects(&p.coreset, dim) => Some(coreset::Projector::new(
                dim,
                p.coreset.projection_dim,
                p.coreset.seed,
            )?),
            _ => None,
        };
        let project = |rows: &[f32]| -> Vec<f32> {
            match &projector {
                Some(pr) => {
                    let mut z = Vec::with_capacity(rows.len() / dim * pr.output_dim());
                    for block in rows.chunks(coreset::PROJECTION_BLOCK_ROWS * dim) {
                        pr.project_block(block, &mut z);
                    }
                    z
                }
                None => rows.to_vec(),
            }
        };
        let zd = projector.as_ref().map_or(dim, |pr| pr.output_dim());
        let mut timings = Timings::default();
        let t = Instant::now();
        // The bank as the greedy saw it (only when there is a radius to test against).
        // The old bank's projection is searched through the kNN index (matrix products);
        // the rows this update adds are folded in with the coreset's distance.
        let old_centres = match radius {
            Some(_) => {
                let z = project(bank.as_slice().unwrap_or(&[]));
                let z = Array2::from_shape_vec((rows_before, zd), z)
                    .map_err(|e| Error::input(format!("projected bank: {e}")))?;
                Some(BruteForce::with_precision(
                    z,
                    crate::knn::BankPrecision::F32,
                )?)
            }
            None => None,
        };
        let mut centres: Vec<f32> = Vec::new();
        timings.coreset += t.elapsed();
        let mut added: Vec<f32> = Vec::new();
        let mut calibration = self.backbone.new_calibration();
        let mut added_rows = 0;
        let mut patches = 0;
        let mut for_threshold = 0;
        for start in (0..n).step_by(p.batch_size) {
            let end = (start + p.batch_size).min(n);
            let t = Instant::now();
            let images = (start..end)
                .into_par_iter()
                .map(&load)
                .collect::<Result<Vec<_>>>()?;
            // The memory the batch needs, checked before it is allocated (as in fit).
            super::check_images(&self.config, &self.backbone, &images, limits)?;
            let input = preprocess::preprocess_batch(&images, &p.preprocess)?;
            timings.preprocess += t.elapsed();
            let (emb, _) = embed_batch(
                &self.config,
                &self.backbone,
                input.view(),
                Some(&mut calibration),
                &mut timings,
            )?;
            let t = Instant::now();
            let emb = emb.as_standard_layout().into_owned();
            let src = emb.as_slice().unwrap_or(&[]);
            if let Some(pos) = src.iter().position(|v| !v.is_finite()) {
                return Err(Error::input(format!(
                    "image {} gives a non-finite patch feature",
                    start + pos / dim / (emb.nrows() / (end - start)).max(1)
                )));
            }
            patches += emb.nrows();
            match radius {
                None => {
                    added.extend_from_slice(src);
                    added_rows += emb.nrows();
                }
                Some(r) => {
                    let z = project(src);
                    let zq = ndarray::ArrayView2::from_shape((z.len() / zd, zd), &z)
                        .map_err(|e| Error::input(format!("projected patches: {e}")))?;
                    let nn = match &old_centres {
                        Some(index) => index.k_nearest(zq, 1)?,
                        None => return Err(Error::input("no projected bank")),
                    };
                    let mut keys: Vec<f32> = nn
                        .distances
                        .column(0)
                        .iter()
                        .zip(coreset::nearest_distances(&z, &centres, zd))
                        .map(|(&sq, own)| sq.max(0.0).sqrt().min(own))
                        .collect();
                    // Rounding margin of the projection (see the module documentation).
                    let margin: Vec<f32> = z
                        .chunks_exact(zd)
                        .map(|row| {
                            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                            4.0 * coreset::PROJECTION_SPLIT_TOLERANCE * (2.0 * norm + r)
                        })
                        .collect();
                    // Farthest first, ties to the lowest index, while beyond the radius.
                    loop {
                        let mut best: Option<(f32, usize)> = None;
                        for (i, (&k, &m)) in keys.iter().zip(&margin).enumerate() {
                            if k > r + m && best.is_none_or(|(bk, _)| k > bk) {
                                best = Some((k, i));
                            }
                        }
                        let Some((_, i)) = best else { break };
                        let zi = z[i * zd..(i + 1) * zd].to_vec();
                        added.extend_from_slice(&src[i * dim..(i + 1) * dim]);
                        added_rows += 1;
                        keys.par_iter_mut()
                            .zip(z.par_chunks(zd))
                            .for_each(|(k, row)| *k = k.min(coreset::distance(row, &zi)));
                        keys[i] = f32::NEG_INFINITY;
                        centres.extend_from_slice(&zi);
                    }
                }
            }
            if let Some(th) = self.threshold {
                let before = added_rows;
                self.cover_below_threshold(emb.view(), th, &mut added, &mut added_rows)?;
                for_threshold += added_rows - before;
            }
            timings.coreset += t.elapsed();
            progress(UpdateProgress::Images {
                done: end,
                total: n,
                added: added_rows,
            });
        }
        let new_rows = Array2::from_shape_vec((added_rows, dim), added)
            .map_err(|e| Error::input(format!("added rows: {e}")))?;
        let memory = concatenate(Axis(0), &[bank.view(), new_rows.view()])
            .map_err(|e| Error::input(format!("updated bank: {e}")))?;
        drop(bank);
        self.index = BruteForce::with_precision(memory, p.bank_precision)?;
        // The new images widen the activation ranges (a model without them stays without:
        // its fit's images are unknown).
        if let Some(mut cal) = self.calibration.take() {
            cal.merge(&calibration)?;
            self.backbone
                .set_precision(self.backbone.precision(), Some(&cal))?;
            self.calibration = Some(cal);
        }
        self.images_seen = self.images_seen.map(|s| s + n as u64);
        self.history.push(UpdateRecord {
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            images: n as u64,
            rows_added: added_rows as u64,
        });
        Ok(UpdateReport {
            images: n,
            patches,
            rows_added: added_rows,
            rows_before,
            rows_for_threshold: for_threshold,
            radius,
            timings,
        })
    }

    /// Adds rows of `emb` (full-dimensional patch features of images declared good) until
    /// none of them would score at or above the threshold `th`: farthest first, the nearest
    /// distance in the embedding space (as `predict` scores with `k = 1`) folded over the
    /// bank and the rows `added` so far. A small relative margin covers the rounding
    /// difference between this distance and the search's.
    fn cover_below_threshold(
        &self,
        emb: ndarray::ArrayView2<f32>,
        th: f32,
        added: &mut Vec<f32>,
        added_rows: &mut usize,
    ) -> Result<()> {
        let dim = emb.ncols();
        let emb = emb.as_standard_layout();
        let src = emb.as_slice().unwrap_or(&[]);
        let nn = self.index.k_nearest(emb.view(), 1)?;
        let mut sq: Vec<f32> = nn.distances.column(0).to_vec();
        let fold = |sq: &mut Vec<f32>, centres: &[f32]| {
            sq.par_iter_mut()
                .zip(src.par_chunks(dim))
                .for_each(|(s, row)| {
                    for c in centres.chunks_exact(dim) {
                        let d: f32 = row.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum();
                        *s = s.min(d);
                    }
                });
        };
        fold(&mut sq, added);
        let score = |s: f32| match self.config.params().scoring.distance {
            crate::scoring::Distance::Euclidean => s.max(0.0).sqrt(),
            crate::scoring::Distance::SquaredL2 => s.max(0.0),
        };
        let limit = th * (1.0 - 1e-3);
        loop {
            let mut best: Option<(f32, usize)> = None;
            for (i, &s) in sq.iter().enumerate() {
                let v = score(s);
                if v >= limit && best.is_none_or(|(b, _)| v > b) {
                    best = Some((v, i));
                }
            }
            let Some((_, i)) = best else { break };
            let row = src[i * dim..(i + 1) * dim].to_vec();
            added.extend_from_slice(&row);
            *added_rows += 1;
            fold(&mut sq, &row);
            sq[i] = 0.0;
        }
        Ok(())
    }
}
