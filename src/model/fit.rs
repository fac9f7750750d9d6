//! Fitting: features of the normal images, calibration, coreset selection.

use super::sink::BankSink;
use super::*;

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
}
