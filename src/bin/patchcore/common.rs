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
use patchcore::inspect::{Inspection, RenderOptions};
use patchcore::knn::BankPrecision;
use patchcore::model::{FitProgress, PatchCore, PatchCoreConfig, PatchCoreParams};
use patchcore::preprocess::{ImageLimits, PreprocessConfig, Resize};
use patchcore::scoring::Distance;
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
        CliError::Failed(cli_message(&e))
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

/// A library error met while checking the command line's values: a usage error.
pub fn usage(e: Error) -> CliError {
    CliError::Usage(cli_message(&e))
}

/// Library parameter names and the options that set them.
const OPTION_OF_PARAM: &[(&str, &str)] = &[
    ("k", "--k"),
    ("reweight_neighbours", "--b"),
    ("batch_size", "--batch-size"),
    ("layers", "--layers"),
    ("layer", "--layers"),
    ("resize", "--resize"),
    ("crop", "--crop"),
    ("threshold", "--threshold"),
    ("aggregator", "--aggregator"),
];

/// A library error's message in the words of the command line: library types and
/// configuration fields are replaced by the options that set them.
pub fn cli_message(e: &Error) -> String {
    let mut msg = match e {
        Error::InvalidParameter { name, reason } => {
            match OPTION_OF_PARAM.iter().find(|(p, _)| p == name) {
                Some((_, opt)) => format!("invalid value for {opt}: {reason}"),
                None => e.to_string(),
            }
        }
        _ => e.to_string(),
    };
    for (from, to) in [
        (
            "load it with the weights file it was fitted with (BackboneSource::File)",
            "pass the weights file it was fitted with: --weights FILE (or fit with \
             --embed-weights)",
        ),
        ("`scoring.k`", "--k"),
        ("Sampler::None", "--sampler none"),
        (
            "(ImageLimits::max_alloc_bytes)",
            "(the image size limit of this tool)",
        ),
        ("; see ImageLimits)", ")"),
        (
            "(ImageLimits::max_working_set_bytes); use a smaller resize or crop",
            "of this tool; use a smaller --resize or --crop",
        ),
        ("(pass --force / overwrite = true)", "(pass --force)"),
    ] {
        msg = msg.replace(from, to);
    }
    msg
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
    p.precision = f.precision.map(Into::into).unwrap_or_default();
    p.scoring.reweight_neighbours = f.b;
    p.scoring.distance = match f.distance {
        DistanceArg::Euclidean => Distance::Euclidean,
        DistanceArg::Squared => Distance::SquaredL2,
    };
    p.check().map_err(usage)
}

/// Checks that the input file `path` given with `option` is a regular file; the message says
/// what it is otherwise (not found, a folder, a FIFO, a device), and `hint` what to pass.
pub fn check_input_file(path: &Path, option: &str, what: &str, hint: &str) -> CliResult {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) if m.is_dir() => Err(CliError::Failed(format!(
            "{}: {option} is a folder, not a {what} file; {hint}",
            path.display()
        ))),
        Ok(m) => Err(CliError::Failed(format!(
            "{}: {option} is not a regular file ({}); {hint}",
            path.display(),
            file_kind(&m.file_type())
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CliError::Failed(format!(
            "{}: {what} file not found ({option}); {hint}",
            path.display()
        ))),
        Err(e) => Err(CliError::Failed(format!(
            "{}: cannot read the {what} file ({option}): {e}",
            path.display()
        ))),
    }
}

/// Largest tensor file `embed --input` reads (1 GiB).
const MAX_INPUT_FILE_BYTES: u64 = 1 << 30;

/// Reads a whole input file (a regular file, at most 1 GiB).
pub fn read_input_file(path: &Path) -> CliResult<Vec<u8>> {
    Ok(patchcore::io_util::read_regular(
        path,
        MAX_INPUT_FILE_BYTES,
        "the 1 GiB limit for --input",
    )?)
}

/// What a file-system object that is not a regular file is.
fn file_kind(ft: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_char_device() || ft.is_block_device() {
            return "a device";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    if ft.is_symlink() {
        return "a symbolic link";
    }
    "a special file"
}

const WEIGHTS_HINT: &str =
    "pass a torchvision ResNet saved as safetensors (see scripts/export_torchvision.py)";

/// Reads a backbone; the message names the file and says what to check.
pub fn load_backbone(weights: &Path, spec: &ResNetSpec, layers: &[Layer]) -> CliResult<Backbone> {
    check_input_file(weights, "--weights", "weights", WEIGHTS_HINT)?;
    Ok(Backbone::from_safetensors_file(weights, spec, layers)?)
}

/// Loads a model, with the weights from `weights` or embedded in the file.
pub fn load_model(model: &Path, weights: Option<&Path>) -> CliResult<PatchCore> {
    use patchcore::model::BackboneSource;
    check_input_file(
        model,
        "--model",
        "model",
        &format!("write one with `patchcore fit --out {}`", model.display()),
    )?;
    let source = match weights {
        Some(w) => {
            check_input_file(w, "--weights", "weights", WEIGHTS_HINT)?;
            BackboneSource::File(w)
        }
        None => BackboneSource::Embedded,
    };
    Ok(PatchCore::load(model, source)?)
}

/// Lower-case hexadecimal of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The warning printed whenever a command runs on seeded random weights.
pub fn warn_if_random(backbone: &Backbone) {
    if backbone.is_random() {
        eprintln!(
            "warning: random weights: scores are meaningless (the weights file was written by \
             `patchcore weights --random`; see the README section Weights for real ones)"
        );
    }
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
/// not a folder, not anything else that is not a regular file (a FIFO, a device, a symbolic
/// link, even a dangling one — not even with `force`), and in an existing folder.
pub fn check_output_file(out: &Path, force: bool) -> CliResult {
    if out.is_dir() {
        return Err(CliError::Failed(format!(
            "{}: is a folder; give a file name",
            out.display()
        )));
    }
    check_existing_output(out, force, "pass --force to overwrite it")?;
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

/// Fails on the first path of `outs` that exists, unless `force`; with `force`, on the first
/// one that exists and is not a regular file.
pub fn check_outputs(outs: &[PathBuf], force: bool) -> CliResult {
    for p in outs {
        check_existing_output(p, force, "pass --force to overwrite the heat maps")?;
    }
    Ok(())
}

/// An existing output: a regular file is replaced only with `force`; anything else (a folder,
/// a FIFO, a device, a symbolic link — even a dangling one) never.
fn check_existing_output(out: &Path, force: bool, hint: &str) -> CliResult {
    let Ok(m) = std::fs::symlink_metadata(out) else {
        return Ok(());
    };
    let ft = m.file_type();
    if ft.is_file() {
        if force {
            return Ok(());
        }
        return Err(CliError::Failed(format!(
            "{}: exists; {hint}",
            out.display()
        )));
    }
    let what = if ft.is_dir() {
        "a folder"
    } else {
        file_kind(&ft)
    };
    Err(CliError::Failed(format!(
        "{}: exists and is {what}, not a regular file; it is never replaced (not even with \
         --force): choose another output path",
        out.display()
    )))
}

/// The identity of an existing file: (device, inode) on unix, the canonical path elsewhere.
#[cfg(unix)]
fn file_id(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(p: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(p).ok()
}

/// Refuses, before any work, an output that is one of the inputs (the same file, also through
/// another name or a link): writing it would destroy the input. `inputs` pairs each input
/// with the option that named it.
pub fn check_not_input(outs: &[PathBuf], option: &str, inputs: &[(&Path, &str)]) -> CliResult {
    let mut ids = HashMap::new();
    for (p, opt) in inputs {
        if let Some(id) = file_id(p) {
            ids.entry(id).or_insert((*p, *opt));
        }
    }
    for out in outs {
        let same = file_id(out).and_then(|id| ids.get(&id)).or_else(|| {
            // A path that does not exist yet cannot be an existing input; compare canonical
            // paths of those that do.
            let c = std::fs::canonicalize(out).ok()?;
            inputs
                .iter()
                .find(|(p, _)| std::fs::canonicalize(p).ok().as_ref() == Some(&c))
        });
        if let Some((p, opt)) = same {
            return Err(CliError::Usage(format!(
                "{option} {} is the input {opt} {}: writing it would destroy the input; \
                 choose another {option}",
                out.display(),
                p.display()
            )));
        }
    }
    Ok(())
}

/// Creates an output folder (and sweeps stale temporary heat maps an interrupted run left in
/// it).
pub fn create_dir(dir: &Path) -> CliResult {
    std::fs::create_dir_all(dir).map_err(|e| {
        CliError::Failed(format!("{}: cannot create the folder: {e}", dir.display()))
    })?;
    crate::cleanup::sweep_heatmaps(dir);
    Ok(())
}

/// Heat map over the original image (colour scale centred on `t`, see
/// [`patchcore::inspect::threshold_scale`]), with the outlines of the regions at or above `t`
/// when `contours`; `map` is at the network input size.
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
    let ins = Inspection::from_map(
        f32::NAN,
        Some(map.view()),
        &model.config().params().preprocess,
        h as usize,
        w as usize,
        Some(t),
    )?;
    let render = RenderOptions {
        outlines: contours,
        ..RenderOptions::default()
    };
    let _tmp = crate::cleanup::register_output(out);
    Ok(patchcore::visualize::save_png(
        &ins.render(&img, &render)?,
        out,
        force,
    )?)
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
