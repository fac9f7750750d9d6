//! Benchmark results as a markdown table and as JSON (written by hand; no serde).

use std::fmt::Write as _;

use super::{RunMetrics, Stat, Summary};

/// How a benchmark was run, for the headers of the reports.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchmarkInfo {
    /// Backbone architecture name (e.g. `wide_resnet50_2`).
    pub arch: String,
    /// The weights file, or `None` for seeded random weights (numbers then meaningless).
    pub weights: Option<String>,
    /// Coreset ratio.
    pub coreset_ratio: f64,
    /// Seeds run for every category.
    pub seeds: Vec<u64>,
    /// Preprocessing, in words (e.g. `resize 256, centre crop 224`).
    pub preprocess: String,
    /// Test images per prediction batch.
    pub batch_size: usize,
    /// Worker threads of the rayon pool.
    pub threads: usize,
}

fn pct(v: f64) -> String {
    format!("{:.2}", 100.0 * v)
}

/// A number with at most 4 decimals and no trailing zeros (`1`, `0.5`, `7`).
fn short_num(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

fn escape_md(s: &str) -> String {
    s.replace('|', "\\|")
}

/// A per-category markdown table: image AUROC mean/min/max over seeds, then the means over
/// seeds of pixel AUROC, AUPRO (all in %), fit time (s) and prediction time per image (ms);
/// `mean`, when given, is the last row (in bold).
pub fn markdown_table(summaries: &[Summary], mean: Option<&Summary>) -> String {
    let mut s = String::from(
        "| category | image AUROC | min | max | pixel AUROC | AUPRO | fit (s) | ms / image |\n\
         |:--|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    let mut row = |name: &str, x: &Summary| {
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} | {:.1} | {:.1} |",
            pct(x.image_auroc.mean),
            pct(x.image_auroc.min),
            pct(x.image_auroc.max),
            pct(x.pixel_auroc.mean),
            pct(x.aupro.mean),
            x.fit_seconds.mean,
            x.predict_ms_per_image.mean
        );
    };
    for x in summaries {
        row(&escape_md(&x.name), x);
    }
    if let Some(m) = mean {
        row(&format!("**{}**", escape_md(&m.name)), m);
    }
    s
}

/// The whole `results.md`: a title, how the benchmark was run, [`markdown_table`] and what
/// the columns mean.
pub fn markdown_report(
    info: &BenchmarkInfo,
    summaries: &[Summary],
    mean: Option<&Summary>,
) -> String {
    let mut s = String::from("# MVTec AD benchmark\n\n");
    let seeds: Vec<String> = info.seeds.iter().map(|x| x.to_string()).collect();
    let weights = match &info.weights {
        Some(w) => format!("weights `{w}`"),
        None => "seeded **random** weights".to_string(),
    };
    let _ = writeln!(
        s,
        "Backbone `{}` ({weights}), coreset {}%, seeds {}, {}, test batch {}, {} threads.\n",
        info.arch,
        short_num(100.0 * info.coreset_ratio),
        seeds.join(", "),
        info.preprocess,
        info.batch_size,
        info.threads
    );
    if info.weights.is_none() {
        s.push_str(
            "> **Warning:** the backbone has random weights; these numbers only check that the \
             pipeline runs and say nothing about PatchCore's accuracy.\n\n",
        );
    }
    s.push_str(&markdown_table(summaries, mean));
    s.push_str(
        "\nImage AUROC: mean, min and max over seeds; the other columns are means over seeds. \
         Accuracy in %. Pixel AUROC is over every pixel of every test image; AUPRO is \
         integrated up to FPR 0.3. The **mean** row averages the categories seed by seed; its \
         min and max are the worst and best seed's average. Fit: wall time of feature \
         extraction and coreset selection. ms / image: wall time of scoring the test set \
         (decoding and anomaly map included) per image.\n",
    );
    s
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number (`null` when not finite).
fn json_num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".to_string()
    }
}

fn json_stat(x: &Stat) -> String {
    format!(
        "{{\"mean\": {}, \"min\": {}, \"max\": {}}}",
        json_num(x.mean),
        json_num(x.min),
        json_num(x.max)
    )
}

fn json_seeds(seeds: &[u64]) -> String {
    let v: Vec<String> = seeds.iter().map(|x| x.to_string()).collect();
    format!("[{}]", v.join(", "))
}

fn json_run(r: &RunMetrics) -> String {
    let a = &r.accuracy;
    format!(
        "{{\"category\": {}, \"seed\": {}, \"image_auroc\": {}, \"pixel_auroc\": {}, \
         \"aupro\": {}, \"image_f1_max\": {}, \"fit_seconds\": {}, \
         \"predict_ms_per_image\": {}, \"n_train\": {}, \"n_test\": {}, \"n_anomalous\": {}, \
         \"memory_bank_rows\": {}}}",
        json_str(&r.category),
        r.seed,
        json_num(a.image_auroc),
        json_num(a.pixel_auroc),
        json_num(a.aupro),
        json_num(a.image_f1_max),
        json_num(r.fit_seconds),
        json_num(r.predict_ms_per_image),
        r.n_train,
        r.n_test,
        r.n_anomalous,
        r.memory_bank_rows
    )
}

fn json_summary(x: &Summary) -> String {
    format!(
        "{{\"category\": {}, \"seeds\": {}, \"image_auroc\": {}, \"pixel_auroc\": {}, \
         \"aupro\": {}, \"image_f1_max\": {}, \"fit_seconds\": {}, \
         \"predict_ms_per_image\": {}}}",
        json_str(&x.name),
        json_seeds(&x.seeds),
        json_stat(&x.image_auroc),
        json_stat(&x.pixel_auroc),
        json_stat(&x.aupro),
        json_stat(&x.image_f1_max),
        json_stat(&x.fit_seconds),
        json_stat(&x.predict_ms_per_image)
    )
}

/// The whole `results.json`: the run settings, every raw run (`runs`), the per-category
/// summaries (`categories`, each metric as `{mean, min, max}`) and the mean row (`mean`, or
/// `null`). Accuracy values are fractions in `[0, 1]`, not percentages.
pub fn json_report(
    info: &BenchmarkInfo,
    runs: &[RunMetrics],
    summaries: &[Summary],
    mean: Option<&Summary>,
) -> String {
    let mut s = String::from("{\n");
    let _ = writeln!(s, "  \"benchmark\": \"MVTec AD\",");
    let _ = writeln!(s, "  \"arch\": {},", json_str(&info.arch));
    let _ = writeln!(
        s,
        "  \"weights\": {},",
        info.weights.as_deref().map_or("null".to_string(), json_str)
    );
    let _ = writeln!(s, "  \"random_weights\": {},", info.weights.is_none());
    let _ = writeln!(s, "  \"coreset_ratio\": {},", json_num(info.coreset_ratio));
    let _ = writeln!(s, "  \"seeds\": {},", json_seeds(&info.seeds));
    let _ = writeln!(s, "  \"preprocess\": {},", json_str(&info.preprocess));
    let _ = writeln!(s, "  \"batch_size\": {},", info.batch_size);
    let _ = writeln!(s, "  \"threads\": {},", info.threads);
    let list = |items: Vec<String>| -> String {
        if items.is_empty() {
            "[]".to_string()
        } else {
            format!("[\n    {}\n  ]", items.join(",\n    "))
        }
    };
    let _ = writeln!(
        s,
        "  \"runs\": {},",
        list(runs.iter().map(json_run).collect())
    );
    let _ = writeln!(
        s,
        "  \"categories\": {},",
        list(summaries.iter().map(json_summary).collect())
    );
    let _ = writeln!(
        s,
        "  \"mean\": {}",
        mean.map_or("null".to_string(), json_summary)
    );
    s.push_str("}\n");
    s
}
