//! Scoring images with a fitted model.

use super::*;

impl PatchCore {
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

    /// [`PatchCore::predict_tensor`] on the current thread.
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
}
