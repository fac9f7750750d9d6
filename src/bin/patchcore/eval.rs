//! `patchcore eval`.

use std::path::PathBuf;
use std::time::Instant;

use patchcore::dataset::Category;
use patchcore::evaluate::{predict_category, EvalOptions, EvalProgress, Predictions};
use patchcore::metrics::{self, AuproConfig};
use patchcore::model::PatchCore;
use patchcore::preprocess::ImageLimits;

use crate::args::EvalArgs;
use crate::common::{
    fit_config, json_num, json_string, load_backbone, load_model, out_line, CliError, CliResult,
};
use crate::outputs::{check_not_input, check_outputs, create_dir, write_picture};
use crate::progress::Progress;

pub fn run(a: EvalArgs) -> CliResult {
    // Options first (usage errors), then the data layout, then the outputs, then the work.
    let config = match a.model {
        Some(_) => None,
        None => Some(fit_config(&a.net.layers, &a.fit)?),
    };
    let category = Category::open(&a.data)?;
    let pictures: Option<Vec<PathBuf>> = match &a.out {
        Some(dir) => {
            let paths: Vec<PathBuf> = category
                .test
                .iter()
                .map(|s| {
                    let stem = s
                        .image
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "image".into());
                    dir.join(&s.defect).join(format!("{stem}_heatmap.png"))
                })
                .collect();
            check_outputs(&paths, a.force)?;
            let mut inputs: Vec<(&std::path::Path, &str)> = Vec::new();
            for s in &category.test {
                inputs.push((s.image.as_path(), "test image"));
                if let Some(m) = &s.mask {
                    inputs.push((m.as_path(), "mask"));
                }
            }
            inputs.extend(
                category
                    .train
                    .iter()
                    .map(|p| (p.as_path(), "training image")),
            );
            if let Some(m) = &a.model {
                inputs.push((m.as_path(), "--model"));
            }
            if let Some(w) = &a.weights {
                inputs.push((w.as_path(), "--weights"));
            }
            check_not_input(&paths, "--out", &inputs)?;
            Some(paths)
        }
        None => None,
    };
    let limits = ImageLimits::default();

    let start = Instant::now();
    let (model, fit_timings) = match (&a.model, config, &a.weights) {
        (Some(m), _, w) => {
            let mut model = load_model(m, w.as_deref())?;
            if let Some(p) = a.fit.precision {
                model
                    .set_precision(p.into())
                    .map_err(|e| CliError::Failed(format!("{}: --precision: {e}", m.display())))?;
            }
            (model, None)
        }
        (None, Some(config), Some(w)) => {
            let backbone = load_backbone(w, &a.net.arch, &a.net.layers)?;
            let mut progress = Progress::new("features", a.json);
            let (model, t) =
                PatchCore::fit_paths(config, backbone, &category.train, &limits, &mut |p| {
                    progress.fit(p)
                })?;
            (model, Some(t))
        }
        _ => {
            return Err(CliError::Usage(
                "pass --model MODEL, or --weights W to fit on <DATA>/train/good".into(),
            ))
        }
    };
    crate::common::warn_if_random(model.backbone());
    let fit_seconds = if a.model.is_some() {
        0.0
    } else {
        start.elapsed().as_secs_f64()
    };

    let n_test = category.test.len();
    let mut progress = Progress::new("test", a.json);
    let opts = EvalOptions {
        limits,
        ..EvalOptions::default()
    };
    let (predictions, predict_time) = predict_category(&model, &category, &opts, &mut |p| {
        if let EvalProgress::Predicted { done, total } = p {
            progress.images(done, total)
        }
    })?;
    drop(progress);
    let ms_per_image = predict_time.as_secs_f64() * 1e3 / n_test.max(1) as f64;
    let predict_timings = predictions.timings;
    let Predictions {
        labels,
        scores,
        maps,
        masks,
        ..
    } = predictions;

    let image_auroc = metrics::auroc(&labels, &scores)?;
    // Pixel metrics need the ground-truth masks; a folder without ground_truth/ gets the
    // image metrics only.
    let (pixel_auroc, aupro) = if category.has_masks() {
        let map_views: Vec<_> = maps.iter().map(|m| m.view()).collect();
        let mask_views: Vec<_> = masks.iter().map(|m| m.view()).collect();
        (
            Some(metrics::pixel_auroc(&mask_views, &map_views)?),
            Some(metrics::aupro(
                &mask_views,
                &map_views,
                &AuproConfig::default(),
            )?),
        )
    } else {
        eprintln!(
            "eval: {} has no ground_truth folder: pixel AUROC and AUPRO skipped (image \
             metrics only)",
            a.data.display()
        );
        (None, None)
    };
    let f1 = metrics::f1_max(&labels, &scores)?;
    // Decisions at the model's own threshold, when it has one.
    let at_threshold = match model.threshold() {
        Some(t) => Some((t, metrics::Confusion::at(&labels, &scores, t)?)),
        None => None,
    };
    let opt = |v: Option<f64>| v.map(json_num).unwrap_or_else(|| "null".into());
    let bank_rows = model.memory_bank().nrows();
    let bb = model.backbone();
    let backbone_kernels = bb.kernels();
    let knn_kernels = match model.index().screening_kernel() {
        Some(k) => format!("bf16 screen ({k}) + exact f32 rerank"),
        None => "f32 products".to_string(),
    };

    if a.json {
        out_line(&format!(
            "{{\"category\":{},\"image_auroc\":{},\"pixel_auroc\":{},\"aupro\":{},\
             \"f1_max\":{},\"threshold\":{},\"fit_seconds\":{},\"predict_ms_per_image\":{},\
             \"n_train\":{},\"n_test\":{},\"n_anomalous\":{},\"memory_bank_rows\":{},\
             \"arch\":{},\"backbone_precision\":{},\"backbone_kernels\":{},\"knn_kernels\":{},\
             \"pixel_metrics\":{},\"model_threshold\":{}}}",
            json_string(&category.name),
            json_num(image_auroc),
            opt(pixel_auroc),
            opt(aupro),
            json_num(f1.f1),
            json_num(f1.threshold),
            json_num(round3(fit_seconds)),
            json_num(round3(ms_per_image)),
            category.train.len(),
            n_test,
            labels.iter().filter(|&&l| l).count(),
            bank_rows,
            json_string(&model.backbone().spec().name.to_string()),
            json_string(bb.precision().name()),
            json_string(&backbone_kernels),
            json_string(&knn_kernels),
            json_string(if pixel_auroc.is_some() {
                "computed"
            } else {
                "skipped: no ground_truth folder"
            }),
            match &at_threshold {
                Some((t, c)) => format!(
                    "{{\"threshold\":{},\"precision\":{},\"recall\":{},\"tp\":{},\"fp\":{},\
                     \"tn\":{},\"fn\":{}}}",
                    json_num(f64::from(*t)),
                    opt(c.precision()),
                    opt(c.recall()),
                    c.true_positives,
                    c.false_positives,
                    c.true_negatives,
                    c.false_negatives
                ),
                None => "null".into(),
            },
        ))?;
    } else {
        let lines = [
            format!("category            {}", category.name),
            format!(
                "images              {} train, {} test ({} anomalous)",
                category.train.len(),
                n_test,
                labels.iter().filter(|&&l| l).count()
            ),
            format!("image AUROC         {image_auroc:.4}"),
            match pixel_auroc {
                Some(v) => format!("pixel AUROC         {v:.4}"),
                None => "pixel AUROC         skipped (no ground_truth folder)".into(),
            },
            match aupro {
                Some(v) => format!("AUPRO (FPR<=0.3)    {v:.4}"),
                None => "AUPRO (FPR<=0.3)    skipped (no ground_truth folder)".into(),
            },
            format!(
                "image F1-max        {:.4} at threshold {}",
                f1.f1, f1.threshold
            ),
            match &at_threshold {
                Some((t, c)) => format!(
                    "model threshold     {t}: precision {}, recall {} (TP {}, FP {}, TN {}, FN {})",
                    fmt_ratio(c.precision()),
                    fmt_ratio(c.recall()),
                    c.true_positives,
                    c.false_positives,
                    c.true_negatives,
                    c.false_negatives
                ),
                None => "model threshold     none stored (fit with --threshold-from-normal)".into(),
            },
            match fit_timings {
                Some(t) => format!(
                    "fit                 {fit_seconds:.2} s (backbone {:.2} s, embedding \
                     {:.2} s, coreset {:.2} s; memory bank {bank_rows} rows)",
                    t.backbone.as_secs_f64(),
                    t.embedding.as_secs_f64(),
                    t.coreset.as_secs_f64()
                ),
                None => format!("fit                 none (loaded; memory bank {bank_rows} rows)"),
            },
            format!("backbone            {backbone_kernels}"),
            format!("nearest neighbours  {knn_kernels}"),
            format!(
                "predict             {ms_per_image:.1} ms per image with map (backbone {:.1}, \
                 embedding {:.1}, scoring {:.1}, map {:.1} ms)",
                per_image_ms(predict_timings.backbone, n_test),
                per_image_ms(predict_timings.embedding, n_test),
                per_image_ms(predict_timings.scoring, n_test),
                per_image_ms(predict_timings.map, n_test),
            ),
        ];
        for l in &lines {
            out_line(l)?;
        }
    }

    if let (Some(dir), Some(paths)) = (&a.out, &pictures) {
        let t = f1.threshold as f32;
        for ((s, map), out) in category.test.iter().zip(&maps).zip(paths) {
            if let Some(parent) = out.parent() {
                create_dir(parent)?;
            }
            write_picture(&model, &s.image, map, t, true, out, a.force)?;
        }
        eprintln!(
            "heat maps with outlines at threshold {t}: {}",
            dir.display()
        );
    }
    Ok(())
}

fn per_image_ms(d: std::time::Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e3 / n.max(1) as f64
}

fn fmt_ratio(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into())
}

fn round3(v: f64) -> f64 {
    (v * 1e3).round() / 1e3
}
