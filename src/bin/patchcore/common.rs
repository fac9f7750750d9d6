//! Pieces shared by the subcommands: the error type and exit codes, configuration building,
//! output-file checks, progress lines, heat-map pictures and JSON formatting.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ndarray::Array2;

use patchcore::backbone::{Backbone, Layer, ResNetSpec};
use patchcore::coreset::{CoresetConfig, CoresetSize, Sampler};
use patchcore::embedding::Aggregator;
use patchcore::knn::BankPrecision;
use patchcore::model::{FitProgress, PatchCore, PatchCoreConfig, PatchCoreParams};
use patchcore::preprocess::{ImageLimits, PreprocessConfig, Resize};
use patchcore::scoring::Distance;
use patchcore::visualize::{draw_polyline, ColorScale};
use patchcore::Error;

use crate::args::{AggregatorArg, DistanceArg, FitOptions, PreprocessArgs, SamplerArg};

/// Why a command stopped.
#[derive(Debug)]
pub enum CliError {
    /// The command line is wrong (a bad combination or value found after parsing): exit 2.
    Usage(String),
    /// The work failed (a file cannot be read, an image is broken, ...): exit 1.
    Failed(String),
    /// Stdout was closed by the reader (e.g. `| head`): stop quietly.
    BrokenPipe,
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Failed(_) => 1,
            CliError::BrokenPipe => 0,
        }
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError::Failed(e.to_string())
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

/// A library error met while checking the command line's values: a usage error.
pub fn usage(e: Error) -> CliError {
    CliError::Usage(e.to_string())
}

/// Writes one line to stdout; a closed pipe ends the command quietly.
pub fn out_line(line: &str) -> CliResult {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CliError::BrokenPipe),
        Err(e) => Err(CliError::Failed(format!("cannot write to stdout: {e}"))),
    }
}

/// The preprocessing of the options; a crop larger than the resized shorter side (which would
/// fail on every image) is a usage error.
pub fn checked_preprocess(a: &PreprocessArgs) -> CliResult<PreprocessConfig> {
    if a.resize > 0 && a.crop > a.resize {
        return Err(CliError::Usage(format!(
            "--crop {} is larger than --resize {}: the crop is taken from the image after its \
             shorter side is resized; choose --crop <= --resize",
            a.crop, a.resize
        )));
    }
    let cfg = preprocess_config(a);
    cfg.validate().map_err(usage)?;
    Ok(cfg)
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

pub fn aggregator(a: AggregatorArg) -> Aggregator {
    match a {
        AggregatorArg::Original => Aggregator::default(),
        AggregatorArg::Average => Aggregator::Average {
            patch_size: 3,
            target_dim: None,
        },
    }
}

/// The checked model configuration of the fit options; a bad value is a usage error.
pub fn fit_config(layers: &[Layer], f: &FitOptions) -> CliResult<PatchCoreConfig> {
    let mut p = PatchCoreParams {
        preprocess: checked_preprocess(&f.preprocess)?,
        layers: layers.to_vec(),
        batch_size: f.batch_size,
        aggregator: aggregator(f.aggregator),
        ..PatchCoreParams::default()
    };
    p.coreset = CoresetConfig {
        sampler: match f.sampler {
            SamplerArg::Greedy => Sampler::Greedy,
            SamplerArg::Approx => Sampler::APPROXIMATE_GREEDY_DEFAULT,
            SamplerArg::Random => Sampler::Random,
            SamplerArg::None => Sampler::None,
        },
        size: CoresetSize::Ratio(f.coreset),
        seed: f.seed,
        ..p.coreset
    };
    p.scoring.k = f.k;
    p.bank_precision = if f.bank_f16 {
        BankPrecision::F16
    } else {
        BankPrecision::F32
    };
    p.scoring.reweight_neighbours = f.b;
    p.scoring.distance = match f.distance {
        DistanceArg::Euclidean => Distance::Euclidean,
        DistanceArg::Squared => Distance::SquaredL2,
    };
    p.check().map_err(usage)
}

/// Reads a backbone; the message names the file and says what to check.
pub fn load_backbone(weights: &Path, spec: &ResNetSpec, layers: &[Layer]) -> CliResult<Backbone> {
    if !weights.is_file() {
        return Err(CliError::Failed(format!(
            "{}: weights file not found; pass a torchvision ResNet saved as safetensors \
             (see scripts/export_torchvision.py)",
            weights.display()
        )));
    }
    Ok(Backbone::from_safetensors_file(weights, spec, layers)?)
}

/// Loads a model, with the weights from `weights` or embedded in the file.
pub fn load_model(model: &Path, weights: Option<&Path>) -> CliResult<PatchCore> {
    use patchcore::model::BackboneSource;
    if !model.is_file() {
        return Err(CliError::Failed(format!(
            "{}: model file not found; write one with `patchcore fit --out {}`",
            model.display(),
            model.display()
        )));
    }
    let source = match weights {
        Some(w) => {
            if !w.is_file() {
                return Err(CliError::Failed(format!(
                    "{}: weights file not found",
                    w.display()
                )));
            }
            BackboneSource::File(w)
        }
        None => BackboneSource::Embedded,
    };
    PatchCore::load(model, source).map_err(|e| {
        let mut msg = e.to_string();
        if weights.is_none() && msg.contains("no embedded backbone weights") {
            msg.push_str(" with --weights FILE (or fit with --embed-weights)");
        }
        CliError::Failed(msg)
    })
}

/// Images named on the command line (folders read one level deep); none at all is an error.
pub fn collect_images(inputs: &[PathBuf], what: &str) -> CliResult<Vec<PathBuf>> {
    let found = patchcore::dataset::collect_images(inputs)?;
    if found.is_empty() {
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        return Err(CliError::Failed(format!(
            "{}: no {what} image found (expected files ending in {})",
            names.join(", "),
            patchcore::dataset::IMAGE_EXTENSIONS.join(", ")
        )));
    }
    Ok(found)
}

/// Checks, before any work, that `out` can be written: not an existing file (unless `force`),
/// not a folder, and in an existing folder.
pub fn check_output_file(out: &Path, force: bool) -> CliResult {
    if out.is_dir() {
        return Err(CliError::Failed(format!(
            "{}: is a folder; give a file name",
            out.display()
        )));
    }
    if out.exists() && !force {
        return Err(CliError::Failed(format!(
            "{}: exists; pass --force to overwrite it",
            out.display()
        )));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(CliError::Failed(format!(
            "{}: the folder {} does not exist; create it first",
            out.display(),
            parent.display()
        )));
    }
    Ok(())
}

/// Heat-map file names `<dir>/<stem>_heatmap.png`, made unique when two inputs share a stem
/// (then `<parent>_<stem>_heatmap.png`, then a counter). Fails when one exists and not `force`.
pub fn heatmap_paths(dir: &Path, images: &[PathBuf], force: bool) -> CliResult<Vec<PathBuf>> {
    let stem = |p: &Path| {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into())
    };
    let mut count: HashMap<String, usize> = HashMap::new();
    for p in images {
        *count.entry(stem(p)).or_default() += 1;
    }
    let mut used: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(images.len());
    for p in images {
        let s = stem(p);
        let mut name = if count[&s] > 1 {
            let parent = p
                .parent()
                .and_then(|d| d.file_name())
                .map(|d| d.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{parent}_{s}")
        } else {
            s
        };
        let n = used.entry(name.clone()).or_default();
        *n += 1;
        if *n > 1 {
            name = format!("{name}_{n}");
        }
        out.push(dir.join(format!("{name}_heatmap.png")));
    }
    check_outputs(&out, force)?;
    Ok(out)
}

/// Fails on the first path of `outs` that exists, unless `force`.
pub fn check_outputs(outs: &[PathBuf], force: bool) -> CliResult {
    if force {
        return Ok(());
    }
    if let Some(p) = outs.iter().find(|p| p.exists()) {
        return Err(CliError::Failed(format!(
            "{}: exists; pass --force to overwrite the heat maps",
            p.display()
        )));
    }
    Ok(())
}

pub fn create_dir(dir: &Path) -> CliResult {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::Failed(format!("{}: cannot create the folder: {e}", dir.display())))
}

/// Heat map over the original image (colour scale `[0.5 t, 1.5 t]`, so the threshold is the
/// middle colour), with the outlines of the regions at or above `t` when `contours`.
#[allow(clippy::too_many_arguments)]
pub fn write_picture(
    model: &PatchCore,
    image_path: &Path,
    map: &Array2<f32>,
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
    let scale = colour_scale(t)?;
    let mut pic = patchcore::visualize::overlay(&img, full.view(), &scale, 0.45)?;
    if contours {
        let mask = patchcore::segmentation::threshold_map(full.view(), t);
        for c in patchcore::segmentation::contours(mask.view()) {
            draw_polyline(&mut pic, &c.points, c.closed, image::Rgb([255, 255, 255]));
        }
    }
    Ok(patchcore::visualize::save_png(&pic, out, force)?)
}

/// `[0.5 t, 1.5 t]` for a positive threshold; a band around `t` otherwise.
fn colour_scale(t: f32) -> Result<ColorScale, Error> {
    let half = if t > 0.0 { 0.5 * t } else { 1.0 };
    ColorScale::new(t - half, t + half)
}

/// Peak resident memory of this process in MB (Linux), if known.
pub fn peak_memory_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn json_string(s: &str) -> String {
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

/// A number as JSON (shortest form that reads back to the same value; `null` if not finite).
pub fn json_num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}

pub fn json_f32(v: f32) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}

/// Progress lines on stderr. On a terminal one line is rewritten in place; otherwise a line is
/// printed at most every few seconds (and at the end), so logs stay short.
pub struct Progress {
    label: &'static str,
    start: Instant,
    last: Option<Instant>,
    tty: bool,
    quiet: bool,
    ticker: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    coreset_start: Option<Instant>,
}

impl Progress {
    pub fn new(label: &'static str, quiet: bool) -> Self {
        Progress {
            label,
            start: Instant::now(),
            last: None,
            tty: std::io::stderr().is_terminal(),
            quiet,
            ticker: None,
            coreset_start: None,
        }
    }

    fn interval(&self) -> Duration {
        if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        }
    }

    /// `done` of `total` images processed since [`Progress::new`].
    pub fn images(&mut self, done: usize, total: usize) {
        if self.quiet {
            return;
        }
        let now = Instant::now();
        let due = self.last.is_none_or(|l| now - l >= self.interval());
        if !(due || done == total) {
            return;
        }
        self.last = Some(now);
        let s = (now - self.start).as_secs_f64().max(1e-9);
        let rate = done as f64 / s;
        let eta = total.saturating_sub(done) as f64 / rate.max(1e-9);
        let line = format!(
            "{}: {done}/{total} images, {rate:.1} images/s, ETA {eta:.0} s",
            self.label
        );
        if self.tty {
            eprint!("\r{line}   ");
            if done == total {
                eprintln!();
            }
        } else {
            eprintln!("{line}");
        }
    }

    /// The fit callback: feature extraction in images/s with an ETA, then the coreset with the
    /// elapsed time (the selection reports no intermediate progress).
    pub fn fit(&mut self, p: FitProgress) {
        match p {
            FitProgress::Features { done, total } => self.images(done, total),
            FitProgress::CoresetStarted { rows, keep } if !self.quiet => {
                eprintln!("coreset: choosing {keep} of {rows} patch features ...");
                self.coreset_start = Some(Instant::now());
                self.start_ticker();
            }
            FitProgress::Coreset { selected, total } if !self.quiet && selected < total => {
                // The greedy passes get cheaper as keys shrink: the ETA is an upper bound.
                if let Some(t0) = self.coreset_start {
                    let s = t0.elapsed().as_secs_f64().max(1e-9);
                    let eta = total.saturating_sub(selected) as f64 * s / selected.max(1) as f64;
                    let line = format!(
                        "coreset: {selected}/{total} rows chosen, {s:.0} s, ETA ~{eta:.0} s"
                    );
                    let now = Instant::now();
                    if self.last.is_none_or(|l| now - l >= self.interval()) {
                        self.last = Some(now);
                        if self.tty {
                            eprint!("\r{line}   ");
                        } else {
                            eprintln!("{line}");
                        }
                    }
                }
            }
            FitProgress::Gathering { rows } if !self.quiet => {
                eprintln!("coreset: reading the {rows} chosen rows back from the spill file");
            }
            FitProgress::Done { rows } => {
                self.stop_ticker();
                if !self.quiet {
                    eprintln!("coreset: done, memory bank of {rows} rows");
                }
            }
            _ => {}
        }
    }

    fn start_ticker(&mut self) {
        self.stop_ticker();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (interval, tty) = (self.interval().max(Duration::from_secs(1)), self.tty);
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            loop {
                std::thread::park_timeout(interval);
                if flag.load(Ordering::Acquire) {
                    break;
                }
                let s = start.elapsed().as_secs();
                if tty {
                    eprint!("\rcoreset: {s} s elapsed   ");
                } else {
                    eprintln!("coreset: {s} s elapsed");
                }
            }
            if tty {
                eprint!("\r");
            }
        });
        self.ticker = Some((stop, handle));
    }

    fn stop_ticker(&mut self) {
        if let Some((stop, handle)) = self.ticker.take() {
            stop.store(true, Ordering::Release);
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop_ticker();
    }
}
