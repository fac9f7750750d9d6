//! Incremental update ("teach good"): add the patches of new normal images to a fitted model
//! without refitting and without the old images.
//!
//! The greedy k-center is continued from the current bank: with the stored coverage radius `r`
//! (where the fit's traversal stopped, see [`PatchCore::coverage_radius`]), a new patch joins
//! the bank when it lies farther than `r` from every bank row, farthest first — exactly the
//! rows the traversal would have gone on to choose, down to the radius it stopped at. Distances
//! are measured where the fit measured them: in the seeded projection (rebuilt from the stored
//! seed and dimensions). The projection of a row depends at the rounding level on the block of
//! rows it is computed in (see [`coreset::PROJECTION_SPLIT_TOLERANCE`]); a patch therefore
//! joins only when it is farther than `r` plus that rounding margin, so a patch the fit already
//! covered is never added again.
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
use crate::knn::BruteForce;
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
    /// The coverage radius used (`None` for [`Sampler::None`]).
    pub radius: Option<f32>,
    /// Time per stage (`coreset` holds the coverage test).
    pub timings: Timings,
}

impl PatchCore {
    /// Adds the patches of new normal `images` that the memory bank does not cover yet (see
    /// the module documentation of `update`): the bank grows, the old training images are not
    /// needed. The decision threshold, if any, is kept as it is. Records the update in
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
        self.update_with(images.len(), |i| Ok(images[i].clone()), progress)
    }

    /// [`PatchCore::update`] on image files (decoded under `limits`).
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
            progress,
        )
    }

    fn update_with(
        &mut self,
        n: usize,
        load: impl Fn(usize) -> Result<RgbImage> + Sync,
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
        let mut centres: Vec<f32> = match radius {
            Some(_) => project(bank.as_slice().unwrap_or(&[])),
            None => Vec::new(),
        };
        timings.coreset += t.elapsed();
        let mut added: Vec<f32> = Vec::new();
        let mut added_rows = 0;
        let mut patches = 0;
        for start in (0..n).step_by(p.batch_size) {
            let end = (start + p.batch_size).min(n);
            let t = Instant::now();
            let images = (start..end)
                .into_par_iter()
                .map(&load)
                .collect::<Result<Vec<_>>>()?;
            let input = preprocess::preprocess_batch(&images, &p.preprocess)?;
            timings.preprocess += t.elapsed();
            let (emb, _) = embed_batch(&self.config, &self.backbone, input.view(), &mut timings)?;
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
                    let mut keys = coreset::nearest_distances(&z, &centres, zd);
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
            radius,
            timings,
        })
    }
}
