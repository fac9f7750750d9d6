//! Pieces shared by the subcommands: the error type and exit codes, configuration building,
//! input files, model and backbone loading, and JSON formatting (output files are in
//! `outputs`, progress lines in `progress`).

use std::io::Write;
use std::path::{Path, PathBuf};

use patchcore::backbone::{Backbone, Layer, ResNetSpec};
use patchcore::coreset::{CoresetConfig, CoresetSize, Sampler};
use patchcore::embedding::Aggregator;
use patchcore::knn::BankPrecision;
use patchcore::model::{PatchCore, PatchCoreConfig, PatchCoreParams};
use patchcore::preprocess::{PreprocessConfig, Resize};
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
pub fn file_kind(ft: &std::fs::FileType) -> &'static str {
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
