//! `patchcore predict`.

use patchcore::preprocess::ImageLimits;

use patchcore::model::PredictOptions;

use crate::args::PredictArgs;
use crate::common::{
    collect_images, create_dir, heatmap_paths, json_f32, json_string, load_model, out_line,
    write_picture, CliError, CliResult,
};

pub fn run(a: PredictArgs) -> CliResult {
    let model = load_model(&a.model, a.weights.as_deref())?;
    crate::common::warn_if_random(model.backbone());
    let threshold = a.threshold.or(model.threshold());
    if a.heatmaps.is_some() && threshold.is_none() {
        return Err(CliError::Usage(format!(
            "--heatmaps needs a threshold (the colour scale and the outlines are fixed by it): \
             pass --threshold T, or fit the model with --threshold-from-normal DIR ({} has no \
             stored threshold)",
            a.model.display()
        )));
    }
    let inputs = collect_images(&a.inputs, "input")?;
    let pictures = match &a.heatmaps {
        Some(dir) => {
            let paths = heatmap_paths(dir, &inputs, a.force)?;
            create_dir(dir)?;
            Some(paths)
        }
        None => None,
    };
    let limits = ImageLimits::default();
    let opts = PredictOptions {
        anomaly_map: pictures.is_some(),
    };
    let mut failed = 0usize;
    for (i, p) in inputs.iter().enumerate() {
        let picture = pictures.as_ref().map(|v| v[i].as_path());
        let result = model.predict_path(p, &limits, opts).map_err(CliError::from);
        let (pred, timings) = match result {
            Ok(r) => r,
            Err(e) => {
                failed += 1;
                report(&e);
                continue;
            }
        };
        if let (Some(out), Some(map), Some(t)) = (picture, &pred.anomaly_map, threshold) {
            if let Err(e) = write_picture(&model, p, map, t, a.contours, out, a.force) {
                failed += 1;
                report(&e);
                continue;
            }
        }
        let decision = threshold.map(|t| {
            if patchcore::metrics::is_anomalous(pred.score, t) {
                "anomalous"
            } else {
                "good"
            }
        });
        let line = if a.json {
            format!(
                "{{\"path\":{},\"score\":{},\"decision\":{},\"threshold\":{},\"heatmap\":{},\
                 \"ms\":{:.2}}}",
                json_string(&p.display().to_string()),
                json_f32(pred.score),
                decision.map(json_string).unwrap_or_else(|| "null".into()),
                threshold.map(json_f32).unwrap_or_else(|| "null".into()),
                picture
                    .map(|o| json_string(&o.display().to_string()))
                    .unwrap_or_else(|| "null".into()),
                timings.total().as_secs_f64() * 1e3
            )
        } else {
            format!(
                "{}\t{}\t{}",
                p.display(),
                pred.score,
                decision.unwrap_or("-")
            )
        };
        out_line(&line)?;
    }
    if failed > 0 {
        return Err(CliError::Failed(format!(
            "{failed} of {} images could not be scored (see above)",
            inputs.len()
        )));
    }
    Ok(())
}

fn report(e: &CliError) {
    if let CliError::Failed(m) | CliError::Usage(m) = e {
        eprintln!("error: {m}");
    }
}
