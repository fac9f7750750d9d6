//! `patchcore predict`.

use patchcore::inspect::{DefectRegion, InspectOptions, Inspection, RenderOptions};
use patchcore::preprocess::ImageLimits;

use crate::args::PredictArgs;
use crate::common::{json_f32, json_string, load_model, out_line, CliError, CliResult};
use crate::names::{collect_inputs, escape_name, heatmap_paths, json_path};
use crate::outputs::{check_not_input, create_dir};

pub fn run(a: PredictArgs) -> CliResult {
    let mut model = load_model(&a.model, a.weights.as_deref())?;
    if let Some(p) = a.precision {
        model
            .set_precision(p.into())
            .map_err(|e| CliError::Failed(format!("{}: --precision: {e}", a.model.display())))?;
    }
    crate::common::warn_if_random(model.backbone());
    let threshold = a.threshold.or(model.threshold());
    if (a.heatmaps.is_some() || a.regions) && threshold.is_none() {
        return Err(CliError::Usage(format!(
            "--heatmaps and --regions need a threshold (the colour scale and the regions are \
             fixed by it): pass --threshold T, or fit the model with --threshold-from-normal \
             DIR ({} has no stored threshold)",
            a.model.display()
        )));
    }
    let inputs = collect_inputs(&a.inputs)?;
    let pictures = match &a.heatmaps {
        Some(dir) => {
            let paths = heatmap_paths(dir, &inputs, a.force)?;
            let mut given: Vec<(&std::path::Path, &str)> =
                inputs.iter().map(|i| (i.path.as_path(), "image")).collect();
            given.push((a.model.as_path(), "--model"));
            if let Some(w) = &a.weights {
                given.push((w.as_path(), "--weights"));
            }
            check_not_input(&paths, "heat map", &given)?;
            create_dir(dir)?;
            Some(paths)
        }
        None => None,
    };
    let opts = InspectOptions {
        threshold,
        anomaly_map: pictures.is_some() || a.regions,
        limits: ImageLimits::default(),
    };
    let render = RenderOptions {
        outlines: a.contours,
        ..RenderOptions::default()
    };
    let mut failed = 0usize;
    for (i, input) in inputs.iter().enumerate() {
        let p = &input.path;
        let picture = pictures.as_ref().map(|v| v[i].as_path());
        let (image, ins) = match model.inspect_path(p, &opts) {
            Ok(r) => r,
            Err(e) => {
                failed += 1;
                report(&e.into());
                continue;
            }
        };
        if let Some(out) = picture {
            if let Some(parent) = out.parent() {
                create_dir(parent)?;
            }
            let _tmp = crate::cleanup::register_output(out);
            let written = ins
                .render(&image, &render)
                .and_then(|pic| patchcore::visualize::save_png(&pic, out, a.force));
            if let Err(e) = written {
                failed += 1;
                report(&e.into());
                continue;
            }
        }
        let line = if a.json {
            json_line(p, picture, &ins, opts.anomaly_map)
        } else {
            let decision = match ins.anomalous {
                Some(true) => "anomalous",
                Some(false) => "good",
                None => "-",
            };
            format!("{}\t{}\t{decision}", escape_name(p), ins.score)
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

fn json_line(
    p: &std::path::Path,
    picture: Option<&std::path::Path>,
    ins: &Inspection,
    with_regions: bool,
) -> String {
    let (path, escaped) = json_path(p);
    let mut s = format!("{{\"path\":{path}");
    if escaped {
        s.push_str(",\"path_escaped\":true");
    }
    s.push_str(&format!(
        ",\"score\":{},\"decision\":{},\"threshold\":{},\"heatmap\":{}",
        json_f32(ins.score),
        ins.anomalous
            .map(|a| json_string(if a { "anomalous" } else { "good" }))
            .unwrap_or_else(|| "null".into()),
        ins.threshold.map(json_f32).unwrap_or_else(|| "null".into()),
        picture
            .map(|o| json_path(o).0)
            .unwrap_or_else(|| "null".into()),
    ));
    if with_regions {
        let regions: Vec<String> = ins.regions.iter().map(json_region).collect();
        s.push_str(&format!(",\"regions\":[{}]", regions.join(",")));
    }
    s.push_str(&format!(
        ",\"ms\":{:.2}}}",
        ins.timings.total().as_secs_f64() * 1e3
    ));
    s
}

fn json_region(r: &DefectRegion) -> String {
    let outline: Vec<String> = r
        .outline
        .iter()
        .map(|&(x, y)| format!("[{},{}]", json_f32(x), json_f32(y)))
        .collect();
    format!(
        "{{\"x\":{},\"y\":{},\"width\":{},\"height\":{},\"area\":{},\"peak\":{},\"outline\":[{}]}}",
        r.bbox.x0,
        r.bbox.y0,
        r.bbox.width(),
        r.bbox.height(),
        r.area,
        json_f32(r.peak),
        outline.join(",")
    )
}

fn report(e: &CliError) {
    if let CliError::Failed(m) | CliError::Usage(m) = e {
        eprintln!("error: {m}");
    }
}
