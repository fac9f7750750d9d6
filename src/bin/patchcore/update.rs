//! `patchcore update`: add images of good parts to a fitted model without refitting.

use std::time::Instant;

use patchcore::metrics::NormalThreshold;
use patchcore::model::{PredictOptions, SaveOptions, UpdateProgress};
use patchcore::preprocess::ImageLimits;

use crate::args::UpdateArgs;
use crate::common::{collect_images, load_model, CliError, CliResult};
use crate::outputs::{check_not_input, check_output_file};
use crate::progress::Progress;

pub fn run(a: UpdateArgs) -> CliResult {
    let t_all = Instant::now();
    let out = a.out.clone().unwrap_or_else(|| a.model.clone());
    let in_place = a.out.is_none() || a.out.as_deref() == Some(a.model.as_path());
    if !in_place {
        check_output_file(&out, a.force)?;
    }
    let added = collect_images(&a.add, "new good")?;
    let held_out = if a.threshold_from_normal.is_empty() {
        Vec::new()
    } else {
        collect_images(&a.threshold_from_normal, "held-out good")?
    };
    let mut inputs: Vec<(&std::path::Path, &str)> =
        added.iter().map(|p| (p.as_path(), "--add image")).collect();
    inputs.extend(
        held_out
            .iter()
            .map(|p| (p.as_path(), "--threshold-from-normal image")),
    );
    if let Some(w) = &a.weights {
        inputs.push((w.as_path(), "--weights"));
    }
    if !in_place {
        inputs.push((a.model.as_path(), "--model"));
    }
    check_not_input(std::slice::from_ref(&out), "--out", &inputs)?;
    crate::cleanup::sweep_for_output(&out);
    // An interrupt at any time removes the temporary model file.
    let _tmp = crate::cleanup::register_output(&out);
    if a.weights.is_none() && in_place {
        // The weights are embedded in --model; replacing it without them would lose them.
        return Err(CliError::Usage(format!(
            "--model {} would be replaced: pass --weights FILE --embed-weights (the weights \
             it was fitted with) so the updated file keeps the backbone, or write elsewhere \
             with --out FILE",
            a.model.display()
        )));
    }
    let mut model = load_model(&a.model, a.weights.as_deref())?;
    let rows_before = patchcore::knn::NearestNeighbours::len(model.index());
    eprintln!(
        "update: {} new images, memory bank of {rows_before} rows, {} images seen so far",
        added.len(),
        model
            .images_seen()
            .map(|n| n.to_string())
            .unwrap_or_else(|| "unknown".into())
    );
    let limits = ImageLimits::default();
    let mut progress = Progress::new("update", false);
    let mut last_added = 0;
    let report = model.update_paths(&added, &limits, &mut |p| {
        if let UpdateProgress::Images { done, total, added } = p {
            last_added = added;
            progress.images(done, total);
        }
    });
    drop(progress);
    let report = report.map_err(|e| match e {
        patchcore::Error::InvalidInput { reason } if reason.contains("coverage radius") => {
            CliError::Failed(format!("{}: {reason}", a.model.display()))
        }
        e => CliError::from(e),
    })?;
    debug_assert_eq!(last_added, report.rows_added);
    eprintln!(
        "added {} rows to the memory bank ({} → {} rows) from {} patches of {} images{}",
        report.rows_added,
        report.rows_before,
        report.rows_before + report.rows_added,
        report.patches,
        report.images,
        report
            .radius
            .map(|r| format!(" (coverage radius {r})"))
            .unwrap_or_default()
    );
    if held_out.is_empty() {
        match model.threshold() {
            Some(t) => eprintln!(
                "threshold: kept at {t} (pass --threshold-from-normal DIR to recalibrate it)"
            ),
            None => eprintln!("threshold: none stored"),
        }
    } else {
        let mut scores = Vec::with_capacity(held_out.len());
        for p in &held_out {
            let (pred, _) =
                model.predict_path(p, &limits, PredictOptions { anomaly_map: false })?;
            scores.push(pred.score);
        }
        // The same rule and checks as `fit --threshold-from-normal` (a degenerate threshold is
        // refused and the model file is left as it was).
        let th = crate::calibrate::threshold(&scores, NormalThreshold::Max)?;
        eprintln!(
            "threshold: recalibrated {} → {th} (just above the highest score of {} held-out \
             good images)",
            model
                .threshold()
                .map(|t| t.to_string())
                .unwrap_or_else(|| "none".into()),
            held_out.len()
        );
        model.set_threshold(Some(th));
    }
    model.save(
        &out,
        &SaveOptions {
            overwrite: in_place || a.force,
            embed_weights: if a.embed_weights {
                a.weights.clone()
            } else {
                None
            },
        },
    )?;
    eprintln!(
        "wrote {} ({} images seen, {} updates), {:.2} s",
        out.display(),
        model
            .images_seen()
            .map(|n| n.to_string())
            .unwrap_or_else(|| "unknown".into()),
        model.update_history().len(),
        t_all.elapsed().as_secs_f64()
    );
    Ok(())
}
