//! `patchcore fit`.

use std::path::Path;
use std::time::Instant;

use patchcore::knn::NearestNeighbours;
use patchcore::metrics::NormalThreshold;
use patchcore::model::{
    remove_stale_spills, spill_path, FitOptions, FitPlan, PatchCore, PredictOptions, SaveOptions,
};
use patchcore::preprocess::ImageLimits;
use patchcore::Error;

use crate::args::FitArgs;
use crate::common::{
    collect_images, fit_config, load_backbone, peak_memory_mb, CliError, CliResult,
};
use crate::outputs::{check_not_input, check_output_file};
use crate::progress::Progress;

pub fn run(a: FitArgs) -> CliResult {
    let t_all = Instant::now();
    // Everything that can be checked cheaply is checked before the long work starts.
    let net = &a.backbone.net;
    let config = fit_config(&net.layers, &a.fit)?;
    check_output_file(&a.out, a.force)?;
    let train = collect_images(&a.train, "training")?;
    let held_out = if a.threshold_from_normal.is_empty() {
        Vec::new()
    } else {
        collect_images(&a.threshold_from_normal, "held-out good")?
    };
    let mut inputs: Vec<(&Path, &str)> = vec![(a.backbone.weights.as_path(), "--weights")];
    inputs.extend(train.iter().map(|p| (p.as_path(), "--train image")));
    inputs.extend(
        held_out
            .iter()
            .map(|p| (p.as_path(), "--threshold-from-normal image")),
    );
    check_not_input(std::slice::from_ref(&a.out), "--out", &inputs)?;
    crate::cleanup::sweep_for_output(&a.out);
    // Registered from the start: an interrupt at any time removes the temporary model file.
    let _tmp = crate::cleanup::register_output(&a.out);
    let shared = crate::calibrate::overlap(&train, &held_out);
    if let Some((h, t)) = shared.first() {
        eprintln!(
            "warning: {} of the {} --threshold-from-normal images are also training images \
             (e.g. {} is {}); their scores are too low, so the threshold will be too low. Use \
             held-out good images that are not in --train",
            shared.len(),
            held_out.len(),
            h.display(),
            t.display()
        );
    }
    let t = Instant::now();
    let backbone = load_backbone(&a.backbone.weights, &net.arch, &net.layers)?;
    let load_s = t.elapsed().as_secs_f64();
    eprintln!(
        "fit: {} training images, {} backbone ({} s to load, weights sha256 {})",
        train.len(),
        net.arch.name,
        fmt_s(load_s),
        crate::common::hex(&backbone.weights_sha256())
    );
    crate::common::warn_if_random(&backbone);

    // Spill files of fits of the same --out that were killed before they could clean up.
    let stale_age = std::time::Duration::from_secs(24 * 3600);
    for p in remove_stale_spills(&a.out, stale_age)? {
        eprintln!(
            "removed {} (a temporary file left by an interrupted fit)",
            p.display()
        );
    }
    // An interrupt removes the spill file too (it is also removed on success and error).
    let _spill = crate::cleanup::register(spill_path(&a.out));
    let opts = FitOptions {
        max_memory: a.max_memory,
        spill_path: Some(spill_path(&a.out)),
        force_plan: None,
    };
    // The plan (what every stage will hold) before any work; the first image's size fixes
    // the patch grid.
    let size = image::image_dimensions(&train[0])
        .map(|(w, h)| (h as usize, w as usize))
        .map_err(|e| CliError::Failed(format!("{}: cannot read image: {e}", train[0].display())))?;
    let plan = PatchCore::plan_fit(&config, &backbone, train.len(), size, &opts)
        .map_err(|e| budget_error(e, a.max_memory))?;
    for line in plan.lines() {
        eprintln!("{line}");
    }
    if plan.plan == FitPlan::Spill {
        eprintln!(
            "spilling full features to {} (removed at the end)",
            spill_path(&a.out).display()
        );
    }

    let limits = ImageLimits::default();
    let mut progress = Progress::new("features", false);
    let (mut model, report) =
        PatchCore::fit_paths_with_options(config, backbone, &train, &limits, &opts, &mut |p| {
            progress.fit(p)
        })
        .map_err(|e| budget_error(e, a.max_memory))?;
    let timings = report.timings;
    drop(progress);

    let mut threshold_s = None;
    if !held_out.is_empty() {
        let t = Instant::now();
        let mut progress = Progress::new("threshold", false);
        let mut scores = Vec::with_capacity(held_out.len());
        for (i, p) in held_out.iter().enumerate() {
            let (pred, _) =
                model.predict_path(p, &limits, PredictOptions { anomaly_map: false })?;
            scores.push(pred.score);
            progress.images(i + 1, held_out.len());
        }
        let th = crate::calibrate::threshold(&scores, a.threshold_rule)?;
        model.set_threshold(Some(th));
        eprintln!(
            "threshold: {th} ({} of the scores of {} held-out good images)",
            rule_text(a.threshold_rule),
            held_out.len()
        );
        threshold_s = Some(t.elapsed().as_secs_f64());
    }

    model.save(
        &a.out,
        &SaveOptions {
            overwrite: a.force,
            embed_weights: a.embed_weights.then(|| a.backbone.weights.clone()),
        },
    )?;
    let index = model.index();
    let bank_mb = index.bank_bytes() as f64 / 1e6;
    let file_mb = std::fs::metadata(&a.out)
        .map(|m| m.len() as f64 / 1e6)
        .unwrap_or(0.0);
    eprintln!("wrote {} ({file_mb:.1} MB)", a.out.display());
    eprintln!(
        "memory bank: {} rows × {} dims, {:?} ({bank_mb:.1} MB)",
        index.len(),
        index.dim(),
        index.precision()
    );
    let bb = model.backbone();
    eprintln!(
        "backbone: {} when scoring (activation ranges of {} images recorded)",
        bb.kernels(),
        model.calibration().map_or(0, |c| c.images())
    );
    if let Some(mb) = peak_memory_mb() {
        eprintln!(
            "peak memory: {mb:.0} MB (estimated {:.0} MB, plan {:?})",
            report.estimate.peak() as f64 / (1 << 20) as f64,
            report.estimate.plan
        );
    }
    let mut stages = format!(
        "time: load {} s, preprocess {} s, backbone {} s, embedding {} s, coreset {} s",
        fmt_s(load_s),
        fmt_s(timings.preprocess.as_secs_f64()),
        fmt_s(timings.backbone.as_secs_f64()),
        fmt_s(timings.embedding.as_secs_f64()),
        fmt_s(timings.coreset.as_secs_f64()),
    );
    if let Some(s) = threshold_s {
        stages.push_str(&format!(", threshold {} s", fmt_s(s)));
    }
    stages.push_str(&format!(
        ", total {} s",
        fmt_s(t_all.elapsed().as_secs_f64())
    ));
    eprintln!("{stages}");
    Ok(())
}

fn rule_text(rule: NormalThreshold) -> String {
    match rule {
        NormalThreshold::Max => "just above the highest".into(),
        NormalThreshold::Quantile(q) => format!("the {q}-quantile"),
        NormalThreshold::MeanPlusStd(k) => format!("mean + {k} std"),
    }
}

/// The library's budget refusal in the terms of the command line.
fn budget_error(e: Error, max_memory: Option<u64>) -> CliError {
    match e {
        Error::MemoryBudget { .. } => CliError::Failed(format!(
            "--max-memory {}: {e}",
            max_memory
                .map(patchcore::model::format_bytes)
                .unwrap_or_default()
        )),
        e => CliError::from(e),
    }
}

fn fmt_s(s: f64) -> String {
    format!("{s:.2}")
}
