//! `patchcore eval`.

use std::path::PathBuf;
use std::time::Instant;

use ndarray::Array2;

use patchcore::dataset::Category;
use patchcore::metrics::{self, AuproConfig};
use patchcore::model::{PatchCore, PredictOptions, Timings};
use patchcore::preprocess::{self, ImageLimits};

use crate::args::EvalArgs;
use crate::common::{
    check_outputs, create_dir, fit_config, json_num, json_string, load_backbone, load_model,
    out_line, write_picture, CliError, CliResult, Progress,
};

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
            Some(paths)
        }
        None => None,
    };
    let limits = ImageLimits::default();

    let start = Instant::now();
    let (model, fit_timings) = match (&a.model, config, &a.weights) {
        (Some(m), _, w) => (load_model(m, w.as_deref())?, None),
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
    let fit_seconds = if a.model.is_some() {
        0.0
    } else {
        start.elapsed().as_secs_f64()
    };

    let cfg = &model.config().params().preprocess;
    let n_test = category.test.len();
    let mut labels = Vec::with_capacity(n_test);
    let mut scores = Vec::with_capacity(n_test);
    let mut maps: Vec<Array2<f32>> = Vec::with_capacity(n_test);
    let mut masks: Vec<Array2<bool>> = Vec::with_capacity(n_test);
    let mut predict_timings = Timings::default();
    let mut progress = Progress::new("test", a.json);
    let t0 = Instant::now();
    for (i, s) in category.test.iter().enumerate() {
        let (pred, t) =
            model.predict_path(&s.image, &limits, PredictOptions { anomaly_map: true })?;
        predict_timings = add(predict_timings, t);
        let map = pred.anomaly_map.ok_or_else(|| {
            CliError::Failed(format!("{}: no anomaly map computed", s.image.display()))
        })?;
        let mask = match &s.mask {
            Some(m) => preprocess::preprocess_mask(&preprocess::load_mask(m, &limits)?, cfg)?,
            None => Array2::from_elem(map.dim(), false),
        };
        if mask.dim() != map.dim() {
            return Err(CliError::Failed(format!(
                "{}: the mask is {:?} after preprocessing but the anomaly map is {:?}; the \
                 mask must have the size of its image",
                s.mask.as_ref().unwrap_or(&s.image).display(),
                mask.dim(),
                map.dim()
            )));
        }
        labels.push(s.is_anomalous());
        scores.push(pred.score);
        maps.push(map);
        masks.push(mask);
        progress.images(i + 1, n_test);
    }
    drop(progress);
    let ms_per_image = t0.elapsed().as_secs_f64() * 1e3 / n_test as f64;

    let image_auroc = metrics::auroc(&labels, &scores)?;
    let map_views: Vec<_> = maps.iter().map(|m| m.view()).collect();
    let mask_views: Vec<_> = masks.iter().map(|m| m.view()).collect();
    let pixel_auroc = metrics::pixel_auroc(&mask_views, &map_views)?;
    let aupro = metrics::aupro(&mask_views, &map_views, &AuproConfig::default())?;
    let f1 = metrics::f1_max(&labels, &scores)?;
    let bank_rows = model.memory_bank().nrows();

    if a.json {
        out_line(&format!(
            "{{\"category\":{},\"image_auroc\":{},\"pixel_auroc\":{},\"aupro\":{},\
             \"f1_max\":{},\"threshold\":{},\"fit_seconds\":{},\"predict_ms_per_image\":{},\
             \"n_train\":{},\"n_test\":{},\"n_anomalous\":{},\"memory_bank_rows\":{},\
             \"arch\":{}}}",
            json_string(&category.name),
            json_num(image_auroc),
            json_num(pixel_auroc),
            json_num(aupro),
            json_num(f1.f1),
            json_num(f1.threshold),
            json_num(round3(fit_seconds)),
            json_num(round3(ms_per_image)),
            category.train.len(),
            n_test,
            labels.iter().filter(|&&l| l).count(),
            bank_rows,
            json_string(&model.backbone().spec().name.to_string()),
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
            format!("pixel AUROC         {pixel_auroc:.4}"),
            format!("AUPRO (FPR<=0.3)    {aupro:.4}"),
            format!(
                "image F1-max        {:.4} at threshold {}",
                f1.f1, f1.threshold
            ),
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

fn add(mut a: Timings, b: Timings) -> Timings {
    a.preprocess += b.preprocess;
    a.backbone += b.backbone;
    a.embedding += b.embedding;
    a.coreset += b.coreset;
    a.scoring += b.scoring;
    a.map += b.map;
    a
}

fn per_image_ms(d: std::time::Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e3 / n.max(1) as f64
}

fn round3(v: f64) -> f64 {
    (v * 1e3).round() / 1e3
}
