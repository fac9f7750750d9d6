//! The MVTec AD benchmark: for every category and seed, fit on `train/good`, score `test/`,
//! and write `results.md`, `results.json` and `results.svg`.
//!
//! ```text
//! cargo run --release --features chart --example mvtec_benchmark -- \
//!     --root MVTEC_ROOT --weights wide_resnet50_2.safetensors --arch wide_resnet50_2 \
//!     [--categories bottle,cable,...] [--seeds 0,1,2] [--coreset 0.01] [--out DIR]
//! cargo run --release --features chart --example mvtec_benchmark -- --synthetic \
//!     --arch resnet18 --resize 96 --crop 64
//! ```
//!
//! Without `--weights` the backbone has seeded random weights (a warning is printed and
//! written into the results: the numbers then only show that the pipeline runs). With
//! `--synthetic` a small procedural two-category root is written under `OUT/synthetic-data`
//! and used as `--root`. The seed drives the coreset (random projection and first element).
//! The results are rewritten after every category, so an interrupted run keeps what it did.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use patchcore::backbone::{Backbone, Precision, ResNetSpec};
use patchcore::coreset::CoresetSize;
use patchcore::dataset::Category;
use patchcore::evaluate::{self, BenchmarkInfo, EvalOptions, EvalProgress, RunMetrics};
use patchcore::model::{FitProgress, PatchCoreParams};
use patchcore::preprocess::Resize;
use patchcore::synthetic::{self, SyntheticSpec};

/// The 15 MVTec AD categories.
const MVTEC: &[&str] = &[
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
];

const USAGE: &str = "\
usage: mvtec_benchmark --root MVTEC_ROOT [--weights W.safetensors] [--arch ARCH]
                       [--categories a,b,...] [--seeds 0,1,2] [--coreset RATIO] [--out DIR]
                       [--resize N] [--crop N] [--batch N] [--synthetic]
                       [--precision f32|int8|bf16]

  --root DIR        MVTec AD root holding one folder per category
  --weights FILE    torchvision ResNet weights as safetensors (none: random weights, warned)
  --arch NAME       resnet18 | resnet34 | resnet50 | wide_resnet50_2 (default wide_resnet50_2)
  --categories LIST comma-separated (default: every MVTec AD category found under --root,
                    or every category folder when none of them is there)
  --seeds LIST      comma-separated coreset seeds (default 0)
  --coreset RATIO   coreset ratio (default 0.01, the paper's 1 %)
  --out DIR         where results.md, results.json, results.svg go (default mvtec-results)
  --resize N        resize the shorter side to N (default 256)
  --crop N          centre crop N×N (default 224; 0 = no crop)
  --batch N         test images per prediction batch (default 1: per-image latency)
  --synthetic       write a small synthetic root under OUT/synthetic-data and use it
  --precision P     backbone precision when scoring: f32 (default), int8 (calibrated on
                    each category's train/good) or bf16; the memory bank is extracted in f32";

struct Args {
    root: Option<PathBuf>,
    weights: Option<PathBuf>,
    arch: String,
    categories: Option<Vec<String>>,
    seeds: Vec<u64>,
    coreset: f64,
    out: PathBuf,
    resize: usize,
    crop: usize,
    batch: usize,
    synthetic: bool,
    precision: Precision,
}

fn parse_args() -> Result<Option<Args>, Box<dyn std::error::Error>> {
    let mut a = Args {
        root: None,
        weights: None,
        arch: "wide_resnet50_2".into(),
        categories: None,
        seeds: vec![0],
        coreset: 0.01,
        out: "mvtec-results".into(),
        resize: 256,
        crop: 224,
        batch: 1,
        synthetic: false,
        precision: Precision::F32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--root" => a.root = Some(value()?.into()),
            "--weights" => a.weights = Some(value()?.into()),
            "--arch" => a.arch = value()?,
            "--categories" => {
                a.categories = Some(
                    value()?
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect(),
                )
            }
            "--seeds" => {
                a.seeds = value()?
                    .split(',')
                    .map(|s| s.trim().parse::<u64>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--seeds: {e} (expected e.g. 0,1,2)"))?
            }
            "--coreset" => a.coreset = value()?.parse()?,
            "--out" => a.out = value()?.into(),
            "--resize" => a.resize = value()?.parse()?,
            "--crop" => a.crop = value()?.parse()?,
            "--batch" => a.batch = value()?.parse()?,
            "--synthetic" => a.synthetic = true,
            "--precision" => a.precision = value()?.parse()?,
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}").into()),
        }
    }
    if a.seeds.is_empty() {
        return Err("--seeds: give at least one seed".into());
    }
    let mut seen = Vec::new();
    for s in &a.seeds {
        if seen.contains(s) {
            return Err(format!("--seeds: seed {s} is listed twice").into());
        }
        seen.push(*s);
    }
    Ok(Some(a))
}

/// Writes (or reuses) two small synthetic categories under `dir`.
fn synthetic_root(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    for (name, seed) in [("weave", 7), ("weave_fine", 8)] {
        if dir.join(name).is_dir() {
            eprintln!("reusing {}", dir.join(name).display());
            continue;
        }
        let spec = SyntheticSpec {
            size: 128,
            train: 12,
            test_good: 6,
            test_per_defect: 5,
            seed,
        };
        synthetic::write_category(dir, name, &spec)?;
        eprintln!("wrote synthetic category {}", dir.join(name).display());
    }
    Ok(())
}

/// The categories to run: the ones asked for, else the MVTec AD ones present, else every
/// folder with a `train/good` subfolder.
fn categories(
    root: &Path,
    asked: Option<&[String]>,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    if let Some(list) = asked {
        for c in list {
            if !root.join(c).is_dir() {
                return Err(
                    format!("category folder {} does not exist", root.join(c).display()).into(),
                );
            }
        }
        return Ok(list.to_vec());
    }
    let known: Vec<String> = MVTEC
        .iter()
        .filter(|c| root.join(c).is_dir())
        .map(|c| c.to_string())
        .collect();
    if !known.is_empty() {
        return Ok(known);
    }
    let mut found = Vec::new();
    let rd = std::fs::read_dir(root).map_err(|e| format!("{}: {e}", root.display()))?;
    for entry in rd {
        let p = entry?.path();
        if p.join("train").join("good").is_dir() {
            if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
                found.push(n.to_string());
            }
        }
    }
    found.sort();
    if found.is_empty() {
        return Err(format!(
            "{}: no category folder (<category>/train/good) found",
            root.display()
        )
        .into());
    }
    Ok(found)
}

fn write_results(
    out: &Path,
    info: &BenchmarkInfo,
    runs: &[RunMetrics],
) -> Result<(), Box<dyn std::error::Error>> {
    let summaries = evaluate::summarize(runs)?;
    let mean = evaluate::mean_over_categories(runs)?;
    let mean = (summaries.len() > 1).then_some(&mean);
    std::fs::write(
        out.join("results.md"),
        evaluate::markdown_report(info, &summaries, mean),
    )?;
    std::fs::write(
        out.join("results.json"),
        evaluate::json_report(info, runs, &summaries, mean),
    )?;
    let seeds = info.seeds.len();
    let title = format!(
        "PatchCore on MVTec AD: {}, coreset {}%, {} seed{}{}",
        info.arch,
        (100.0 * info.coreset_ratio * 1e4).round() / 1e4,
        seeds,
        if seeds == 1 { "" } else { "s (min–max)" },
        if info.weights.is_none() {
            ", RANDOM WEIGHTS"
        } else {
            ""
        }
    );
    std::fs::write(
        out.join("results.svg"),
        evaluate::chart_svg(&summaries, mean, &title)?,
    )?;
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let Some(args) = parse_args()? else {
        return Ok(());
    };
    std::fs::create_dir_all(&args.out)?;
    let root = if args.synthetic {
        let dir = args.out.join("synthetic-data");
        synthetic_root(&dir)?;
        dir
    } else {
        args.root
            .clone()
            .ok_or(format!("--root is required (or --synthetic)\n{USAGE}"))?
    };
    let cats = categories(&root, args.categories.as_deref())?;

    let mut params = PatchCoreParams::default();
    params.preprocess.resize = Resize::ShorterSide(args.resize);
    params.preprocess.crop = (args.crop > 0).then_some((args.crop, args.crop));
    params.coreset.size = CoresetSize::Ratio(args.coreset);
    params.precision = args.precision;
    let layers = params.layers.clone();
    params.clone().check()?;

    let spec = ResNetSpec::from_name(&args.arch)?;
    let backbone = match &args.weights {
        Some(w) => Backbone::from_safetensors_file(w, &spec, &layers)?,
        None => {
            eprintln!(
                "WARNING: no --weights: {} with seeded random weights; the numbers will be \
                 meaningless (they only show that the pipeline runs)",
                args.arch
            );
            Backbone::random(&spec, &layers, 0)?
        }
    };
    let info = BenchmarkInfo {
        arch: match args.precision {
            Precision::F32 => args.arch.clone(),
            p => format!("{} ({p} backbone)", args.arch),
        },
        weights: args.weights.as_ref().map(|w| w.display().to_string()),
        coreset_ratio: args.coreset,
        seeds: args.seeds.clone(),
        preprocess: match args.crop {
            0 => format!("resize {}, no crop", args.resize),
            c => format!("resize {}, centre crop {c}", args.resize),
        },
        batch_size: args.batch,
        threads: rayon::current_num_threads(),
    };
    let opts = EvalOptions {
        batch_size: args.batch,
        ..EvalOptions::default()
    };

    let start = Instant::now();
    let total_runs = cats.len() * args.seeds.len();
    eprintln!(
        "{} categories × {} seeds = {total_runs} runs; {} threads; root {}",
        cats.len(),
        args.seeds.len(),
        info.threads,
        root.display()
    );
    let mut runs = Vec::new();
    for name in &cats {
        let category = Category::open(&root.join(name))?;
        for &seed in &args.seeds {
            let tag = format!("[{}/{total_runs}] {name} seed {seed}", runs.len() + 1);
            eprintln!(
                "{tag}: fitting on {} images, then {} test images ({:.0} s elapsed)",
                category.train.len(),
                category.test.len(),
                start.elapsed().as_secs_f64()
            );
            let mut p = params.clone();
            p.coreset.seed = seed;
            let config = p.check()?;
            let run_start = Instant::now();
            let mut quarter = 0;
            let mut progress = |e: EvalProgress| {
                let secs = run_start.elapsed().as_secs_f64();
                match e {
                    EvalProgress::Fit(FitProgress::Features { done, total }) => {
                        let q = 4 * done / total.max(1);
                        if q > quarter {
                            quarter = q;
                            eprintln!("{tag}:   features {done}/{total} ({secs:.1} s)");
                        }
                    }
                    EvalProgress::Fit(FitProgress::CoresetStarted { rows, keep }) => {
                        eprintln!("{tag}:   coreset {keep} of {rows} rows ({secs:.1} s)");
                    }
                    EvalProgress::Fit(FitProgress::Done { .. }) => {
                        eprintln!("{tag}:   fitted ({secs:.1} s)");
                        quarter = 0;
                    }
                    EvalProgress::Predicted { done, total } => {
                        let q = 4 * done / total.max(1);
                        if q > quarter {
                            quarter = q;
                            eprintln!("{tag}:   scored {done}/{total} ({secs:.1} s)");
                        }
                    }
                    _ => {}
                }
            };
            let eval = evaluate::evaluate_category(
                &category,
                config,
                backbone.clone(),
                &opts,
                &mut progress,
            )?;
            let m = eval.metrics;
            eprintln!(
                "{tag}: image AUROC {:.4}, pixel AUROC {:.4}, AUPRO {:.4}; fit {:.1} s, \
                 {:.1} ms/image ({:.0} s elapsed)",
                m.accuracy.image_auroc,
                m.accuracy.pixel_auroc,
                m.accuracy.aupro,
                m.fit_seconds,
                m.predict_ms_per_image,
                start.elapsed().as_secs_f64()
            );
            runs.push(m);
        }
        write_results(&args.out, &info, &runs)?;
    }
    let summaries = evaluate::summarize(&runs)?;
    let mean = evaluate::mean_over_categories(&runs)?;
    print!(
        "{}",
        evaluate::markdown_table(&summaries, (summaries.len() > 1).then_some(&mean))
    );
    println!(
        "results: {} (results.md, results.json, results.svg) in {:.0} s",
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
