//! The `patchcore` command-line tool: fit a model on a folder of good parts, score new images,
//! evaluate on a labelled MVTec-style folder, and dump backbone features.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ndarray::Array4;

use patchcore::backbone::{Backbone, Layer, ResNetSpec};
use patchcore::coreset::{CoresetConfig, CoresetSize, Sampler};
use patchcore::embedding::Aggregator;
use patchcore::metrics::AuproConfig;
use patchcore::model::{
    BackboneSource, FitProgress, PatchCore, PatchCoreParams, PredictOptions, SaveOptions,
};
use patchcore::preprocess::{ImageLimits, PreprocessConfig, Resize};
use patchcore::scoring::Distance;
use patchcore::visualize::{draw_polyline, ColorScale};
use patchcore::Error;

#[derive(Parser)]
#[command(
    name = "patchcore",
    version,
    about = "PatchCore anomaly detection on the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fit a model on images of good parts.
    #[command(
        after_help = "Example:\n  patchcore fit --weights wide_resnet50_2.safetensors \
        --arch wide_resnet50_2 --train good/ --out model.safetensors --coreset 0.01"
    )]
    Fit(FitArgs),
    /// Score images with a fitted model.
    #[command(
        after_help = "Example:\n  patchcore predict --model model.safetensors \
        --weights wide_resnet50_2.safetensors --threshold 2.5 --heatmaps out/ images/"
    )]
    Predict(PredictArgs),
    /// Fit (or load) and evaluate on an MVTec-style category folder.
    #[command(after_help = "Example:\n  patchcore eval --data mvtec/bottle \
        --weights wide_resnet50_2.safetensors --arch wide_resnet50_2 --json")]
    Eval(EvalArgs),
    /// Write backbone features (and the patch embedding) of an image to a safetensors file.
    #[command(
        after_help = "Example:\n  patchcore embed --weights resnet18.safetensors \
        --arch resnet18 --input part.png --out features.safetensors"
    )]
    Embed(EmbedArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum SamplerArg {
    Greedy,
    Approx,
    Random,
    None,
}

#[derive(Clone, Copy, ValueEnum)]
enum AggregatorArg {
    Original,
    Average,
}

#[derive(Clone, Copy, ValueEnum)]
enum DistanceArg {
    Euclidean,
    Squared,
}

#[derive(Args, Clone)]
struct BackboneArgs {
    /// Backbone weights (torchvision names, safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// Architecture: resnet18, resnet34, resnet50, wide_resnet50_2.
    #[arg(long, default_value = "wide_resnet50_2")]
    arch: String,
    /// Backbone layers to tap, comma-separated.
    #[arg(long, default_value = "layer2,layer3", value_delimiter = ',')]
    layers: Vec<String>,
}

#[derive(Args, Clone)]
struct PreprocessArgs {
    /// Resize the shorter side to this many pixels (0 = no resize).
    #[arg(long, default_value_t = 256)]
    resize: usize,
    /// Centre-crop to this square size (0 = no crop).
    #[arg(long, default_value_t = 224)]
    crop: usize,
}

#[derive(Args, Clone)]
struct FitOptions {
    /// Fraction of patch features kept in the memory bank, in (0, 1].
    #[arg(long, default_value_t = 0.1)]
    coreset: f64,
    /// Memory-bank subsampling.
    #[arg(long, value_enum, default_value = "greedy")]
    sampler: SamplerArg,
    /// Nearest neighbours averaged into a patch score.
    #[arg(long, default_value_t = 1)]
    k: usize,
    /// Bank neighbours of the re-weighting (paper Eq. 7); 1 = plain maximum.
    #[arg(long, default_value_t = 1)]
    b: usize,
    /// Patch distance.
    #[arg(long, value_enum, default_value = "euclidean")]
    distance: DistanceArg,
    /// Patch-feature construction.
    #[arg(long, value_enum, default_value = "original")]
    aggregator: AggregatorArg,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per backbone batch.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    #[command(flatten)]
    preprocess: PreprocessArgs,
}

#[derive(Args)]
struct FitArgs {
    #[command(flatten)]
    backbone: BackboneArgs,
    /// Folders or files of good images.
    #[arg(long, required = true, num_args = 1..)]
    train: Vec<PathBuf>,
    /// Model file to write.
    #[arg(long)]
    out: PathBuf,
    /// Store the backbone weights inside the model file.
    #[arg(long)]
    embed_weights: bool,
    /// Set the decision threshold to the highest score of these held-out good images.
    #[arg(long)]
    threshold_from_normal: Option<PathBuf>,
    /// Overwrite an existing output file.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    fit: FitOptions,
}

#[derive(Args)]
struct PredictArgs {
    /// Model file written by `patchcore fit`.
    #[arg(long)]
    model: PathBuf,
    /// Backbone weights (needed unless the model embeds them).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Decision threshold (defaults to the one stored in the model).
    #[arg(long)]
    threshold: Option<f32>,
    /// Write heat-map PNGs into this folder.
    #[arg(long)]
    heatmaps: Option<PathBuf>,
    /// Draw defect outlines on the heat maps (needs --heatmaps and a threshold).
    #[arg(long)]
    contours: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Overwrite existing heat-map files.
    #[arg(long)]
    force: bool,
    /// Image files or folders.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

#[derive(Args)]
struct EvalArgs {
    /// Category folder in the MVTec AD layout.
    #[arg(long)]
    data: PathBuf,
    /// A fitted model (otherwise fit on <data>/train/good).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Backbone weights.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Architecture when fitting.
    #[arg(long, default_value = "wide_resnet50_2")]
    arch: String,
    /// Backbone layers when fitting.
    #[arg(long, default_value = "layer2,layer3", value_delimiter = ',')]
    layers: Vec<String>,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Write heat maps with outlines (F1-optimal image threshold) under this folder.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    fit: FitOptions,
}

#[derive(Args)]
struct EmbedArgs {
    #[command(flatten)]
    backbone: BackboneArgs,
    /// An image file, or a safetensors file with a normalised tensor `input` [N,3,H,W].
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Overwrite an existing output file.
    #[arg(long)]
    force: bool,
    /// Do not compute the patch embedding (only the layer maps).
    #[arg(long)]
    no_embedding: bool,
    #[command(flatten)]
    preprocess: PreprocessArgs,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Fit(a) => fit(a),
        Command::Predict(a) => predict(a),
        Command::Eval(a) => eval(a),
        Command::Embed(a) => embed(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

type CliResult = Result<(), Error>;

fn parse_layers(names: &[String]) -> Result<Vec<Layer>, Error> {
    names.iter().map(|s| s.trim().parse::<Layer>()).collect()
}

fn preprocess_config(a: &PreprocessArgs) -> PreprocessConfig {
    PreprocessConfig {
        resize: if a.resize == 0 {
            Resize::None
        } else {
            Resize::ShorterSide(a.resize)
        },
        crop: if a.crop == 0 {
            None
        } else {
            Some((a.crop, a.crop))
        },
        ..PreprocessConfig::default()
    }
}

fn params(layers: Vec<Layer>, f: &FitOptions) -> PatchCoreParams {
    let mut p = PatchCoreParams {
        preprocess: preprocess_config(&f.preprocess),
        layers,
        batch_size: f.batch_size,
        ..PatchCoreParams::default()
    };
    p.coreset = CoresetConfig {
        sampler: match f.sampler {
            SamplerArg::Greedy => Sampler::Greedy,
            SamplerArg::Approx => Sampler::ApproximateGreedy { starts: 10 },
            SamplerArg::Random => Sampler::Random,
            SamplerArg::None => Sampler::None,
        },
        size: CoresetSize::Ratio(f.coreset),
        seed: f.seed,
        ..p.coreset
    };
    p.aggregator = match f.aggregator {
        AggregatorArg::Original => Aggregator::default(),
        AggregatorArg::Average => Aggregator::Average {
            patch_size: 3,
            target_dim: None,
        },
    };
    p.scoring.k = f.k;
    p.scoring.reweight_neighbours = f.b;
    p.scoring.distance = match f.distance {
        DistanceArg::Euclidean => Distance::Euclidean,
        DistanceArg::Squared => Distance::SquaredL2,
    };
    p
}

fn load_backbone(weights: &Path, arch: &str, layers: &[Layer]) -> Result<Backbone, Error> {
    let spec = ResNetSpec::from_name(arch)?;
    Backbone::from_safetensors_file(weights, &spec, layers)
}

fn progress_printer() -> impl FnMut(FitProgress) {
    let start = Instant::now();
    move |p| match p {
        FitProgress::Features { done, total } => {
            let s = start.elapsed().as_secs_f64();
            let rate = done as f64 / s.max(1e-9);
            let eta = (total - done) as f64 / rate.max(1e-9);
            eprint!("\rfeatures: {done}/{total} images, {rate:.1} images/s, ETA {eta:.0} s   ");
            if done == total {
                eprintln!();
            }
        }
        FitProgress::CoresetStarted { rows, keep } => {
            eprintln!("coreset: keeping {keep} of {rows} patch features ...");
        }
        FitProgress::Done { rows } => {
            eprintln!(
                "memory bank: {rows} rows ({:.1} s)",
                start.elapsed().as_secs_f64()
            );
        }
        _ => {}
    }
}

fn fit(a: FitArgs) -> CliResult {
    if a.out.exists() && !a.force {
        return Err(exists(&a.out));
    }
    let layers = parse_layers(&a.backbone.layers)?;
    let config = params(layers.clone(), &a.fit).check()?;
    let backbone = load_backbone(&a.backbone.weights, &a.backbone.arch, &layers)?;
    let train = patchcore::dataset::collect_images(&a.train)?;
    let limits = ImageLimits::default();
    let (mut model, timings) =
        PatchCore::fit_paths(config, backbone, &train, &limits, &mut progress_printer())?;
    if let Some(dir) = &a.threshold_from_normal {
        let held_out = patchcore::dataset::collect_images(std::slice::from_ref(dir))?;
        let mut max = f32::NEG_INFINITY;
        for p in &held_out {
            let (pred, _) =
                model.predict_path(p, &limits, PredictOptions { anomaly_map: false })?;
            max = max.max(pred.score);
        }
        if max.is_finite() {
            model.set_threshold(Some(max));
            eprintln!(
                "threshold: {max} (highest score of {} good images)",
                held_out.len()
            );
        }
    }
    model.save(
        &a.out,
        &SaveOptions {
            overwrite: a.force,
            embed_weights: a.embed_weights.then(|| a.backbone.weights.clone()),
        },
    )?;
    let bank = model.memory_bank();
    eprintln!(
        "wrote {}: {} × {} memory bank ({:.1} MB); preprocess {:.2} s, backbone {:.2} s, \
         embedding {:.2} s, coreset {:.2} s",
        a.out.display(),
        bank.nrows(),
        bank.ncols(),
        (bank.len() * 4) as f64 / 1e6,
        timings.preprocess.as_secs_f64(),
        timings.backbone.as_secs_f64(),
        timings.embedding.as_secs_f64(),
        timings.coreset.as_secs_f64()
    );
    Ok(())
}

fn exists(p: &Path) -> Error {
    Error::Io {
        path: p.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "exists; pass --force to overwrite it",
        ),
    }
}

fn load_model(model: &Path, weights: Option<&Path>) -> Result<PatchCore, Error> {
    match weights {
        Some(w) => PatchCore::load(model, BackboneSource::File(w)),
        None => PatchCore::load(model, BackboneSource::Embedded),
    }
}

fn predict(a: PredictArgs) -> CliResult {
    let model = load_model(&a.model, a.weights.as_deref())?;
    let threshold = a.threshold.or(model.threshold());
    let inputs = patchcore::dataset::collect_images(&a.inputs)?;
    let limits = ImageLimits::default();
    let want_map = a.heatmaps.is_some();
    for p in &inputs {
        let (pred, t) = model.predict_path(
            p,
            &limits,
            PredictOptions {
                anomaly_map: want_map,
            },
        )?;
        let decision = threshold.map(|t| if pred.score >= t { "anomalous" } else { "good" });
        if a.json {
            println!(
                "{{\"path\":{},\"score\":{},\"decision\":{},\"ms\":{:.2}}}",
                json_string(&p.display().to_string()),
                json_f32(pred.score),
                decision.map(json_string).unwrap_or_else(|| "null".into()),
                t.total().as_secs_f64() * 1e3
            );
        } else {
            println!(
                "{}\t{:.6}\t{}",
                p.display(),
                pred.score,
                decision.unwrap_or("-")
            );
        }
        if let (Some(dir), Some(map)) = (&a.heatmaps, &pred.anomaly_map) {
            let t = threshold.ok_or_else(|| Error::InvalidParameter {
                name: "threshold",
                reason: "heat maps use a colour scale fixed by the threshold: pass --threshold \
                         or fit with --threshold-from-normal"
                    .into(),
            })?;
            let out = heatmap_path(dir, p)?;
            write_picture(&model, p, map, t, a.contours, &out, a.force)?;
        }
    }
    Ok(())
}

/// `<dir>/<stem>_heatmap.png`; the folder is created if needed.
fn heatmap_path(dir: &Path, image: &Path) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    Ok(dir.join(format!("{stem}_heatmap.png")))
}

/// Heat map over the original image (colour scale [0.5 t, 1.5 t], so the threshold is the
/// middle colour), with the outlines of the regions at or above `t` when `contours`.
fn write_picture(
    model: &PatchCore,
    image_path: &Path,
    map: &ndarray::Array2<f32>,
    t: f32,
    contours: bool,
    out: &Path,
    force: bool,
) -> CliResult {
    let img = patchcore::preprocess::load_rgb(image_path, &ImageLimits::default())?;
    let (w, h) = img.dimensions();
    let crop = patchcore::preprocess::crop_box(
        h as usize,
        w as usize,
        &model.config().params().preprocess,
    )?;
    let full = patchcore::anomaly_map::map_to_image(map.view(), &crop, h as usize, w as usize)?;
    let scale = ColorScale::new(0.5 * t, 1.5 * t.max(f32::MIN_POSITIVE))?;
    let mut pic = patchcore::visualize::overlay(&img, full.view(), &scale, 0.45)?;
    if contours {
        let mask = patchcore::segmentation::threshold_map(full.view(), t);
        for c in patchcore::segmentation::contours(mask.view()) {
            draw_polyline(&mut pic, &c.points, c.closed, image::Rgb([255, 255, 255]));
        }
    }
    patchcore::visualize::save_png(&pic, out, force)
}

fn eval(a: EvalArgs) -> CliResult {
    let category = patchcore::dataset::Category::open(&a.data)?;
    let limits = ImageLimits::default();
    let start = Instant::now();
    let model = match (&a.model, &a.weights) {
        (Some(m), w) => load_model(m, w.as_deref())?,
        (None, Some(w)) => {
            let layers = parse_layers(&a.layers)?;
            let config = params(layers.clone(), &a.fit).check()?;
            let backbone = load_backbone(w, &a.arch, &layers)?;
            let mut quiet = |_: FitProgress| {};
            let mut loud = progress_printer();
            let progress: &mut dyn FnMut(FitProgress) = if a.json { &mut quiet } else { &mut loud };
            PatchCore::fit_paths(config, backbone, &category.train, &limits, progress)?.0
        }
        (None, None) => {
            return Err(Error::InvalidParameter {
                name: "weights",
                reason: "pass --model MODEL, or --weights W to fit on <data>/train/good".into(),
            })
        }
    };
    let fit_seconds = if a.model.is_some() {
        0.0
    } else {
        start.elapsed().as_secs_f64()
    };
    let cfg = &model.config().params().preprocess;
    let mut labels = Vec::new();
    let mut scores = Vec::new();
    let mut maps = Vec::new();
    let mut masks = Vec::new();
    let t0 = Instant::now();
    for s in &category.test {
        let (pred, _) =
            model.predict_path(&s.image, &limits, PredictOptions { anomaly_map: true })?;
        let map = pred.anomaly_map.ok_or_else(|| Error::InvalidInput {
            reason: "no anomaly map".into(),
        })?;
        let mask = match &s.mask {
            Some(m) => patchcore::preprocess::preprocess_mask(
                &patchcore::preprocess::load_mask(m, &limits)?,
                cfg,
            )?,
            None => ndarray::Array2::from_elem(map.dim(), false),
        };
        if mask.dim() != map.dim() {
            return Err(Error::InvalidInput {
                reason: format!(
                    "{}: mask is {:?} after preprocessing, map is {:?}",
                    s.image.display(),
                    mask.dim(),
                    map.dim()
                ),
            });
        }
        labels.push(s.is_anomalous());
        scores.push(pred.score);
        maps.push(map);
        masks.push(mask);
    }
    let ms_per_image = t0.elapsed().as_secs_f64() * 1e3 / category.test.len() as f64;
    let image_auroc = patchcore::metrics::auroc(&labels, &scores)?;
    let map_views: Vec<_> = maps.iter().map(|m| m.view()).collect();
    let mask_views: Vec<_> = masks.iter().map(|m| m.view()).collect();
    let pixel_auroc = patchcore::metrics::pixel_auroc(&mask_views, &map_views)?;
    let aupro = patchcore::metrics::aupro(&mask_views, &map_views, &AuproConfig::default())?;
    let f1 = patchcore::metrics::f1_max(&labels, &scores)?;
    if a.json {
        println!(
            "{{\"category\":{},\"image_auroc\":{},\"pixel_auroc\":{},\"aupro\":{},\
             \"f1_max\":{},\"threshold\":{},\"fit_seconds\":{:.3},\
             \"predict_ms_per_image\":{:.3},\"n_train\":{},\"n_test\":{}}}",
            json_string(&category.name),
            image_auroc,
            pixel_auroc,
            aupro,
            f1.f1,
            f1.threshold,
            fit_seconds,
            ms_per_image,
            category.train.len(),
            category.test.len()
        );
    } else {
        println!("category            {}", category.name);
        println!(
            "images              {} train, {} test",
            category.train.len(),
            category.test.len()
        );
        println!("image AUROC         {image_auroc:.4}");
        println!("pixel AUROC         {pixel_auroc:.4}");
        println!("AUPRO (FPR<=0.3)    {aupro:.4}");
        println!(
            "image F1-max        {:.4} at threshold {}",
            f1.f1, f1.threshold
        );
        println!("fit                 {fit_seconds:.2} s");
        println!("predict             {ms_per_image:.1} ms per image (with map)");
    }
    if let Some(dir) = &a.out {
        let t = f1.threshold as f32;
        for (s, map) in category.test.iter().zip(&maps) {
            let sub = dir.join(&s.defect);
            let out = heatmap_path(&sub, &s.image)?;
            write_picture(&model, &s.image, map, t, true, &out, true)?;
        }
    }
    Ok(())
}

fn embed(a: EmbedArgs) -> CliResult {
    if a.out.exists() && !a.force {
        return Err(exists(&a.out));
    }
    let layers = parse_layers(&a.backbone.layers)?;
    let backbone = load_backbone(&a.backbone.weights, &a.backbone.arch, &layers)?;
    let input: Array4<f32> = if a.input.extension().and_then(|e| e.to_str()) == Some("safetensors")
    {
        let bytes = std::fs::read(&a.input).map_err(|e| Error::Io {
            path: a.input.clone(),
            source: e,
        })?;
        let t = patchcore::tensor_io::read_f32(&bytes, &a.input, "input")?;
        let shape = t.shape().to_vec();
        t.into_dimensionality::<ndarray::Ix4>()
            .map_err(|_| Error::TensorShape {
                path: a.input.clone(),
                tensor: "input".into(),
                expected: vec![1, 3, 224, 224],
                found: shape,
            })?
    } else {
        let img = patchcore::preprocess::load_rgb(&a.input, &ImageLimits::default())?;
        patchcore::preprocess::preprocess_batch(&[img], &preprocess_config(&a.preprocess))?
    };
    let feats = backbone.forward(input.view())?;
    let mut named: Vec<(String, ndarray::ArrayD<f32>)> = layers
        .iter()
        .zip(feats.iter())
        .map(|(l, f)| (l.to_string(), f.clone().into_dyn()))
        .collect();
    if !a.no_embedding {
        let views: Vec<_> = feats.iter().map(|f| f.view()).collect();
        let emb = patchcore::embedding::embed(&views, &Aggregator::default())?;
        named.push(("embedding".into(), emb.into_dyn()));
    }
    let refs: Vec<(&str, &ndarray::ArrayD<f32>)> =
        named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    patchcore::tensor_io::write_f32(&a.out, &refs, a.force)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_f32(v: f32) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}
