//! Command-line syntax. Every option value is checked while parsing (ranges, finite numbers,
//! known layer and architecture names), so a bad value is a usage error (exit code 2) reported
//! before any file is read.

use std::path::PathBuf;

use clap::builder::RangedU64ValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

use patchcore::backbone::{Layer, ResNetSpec};

const FIT_EXAMPLE: &str = "\
Example:
  patchcore fit --weights wide_resnet50_2.safetensors --arch wide_resnet50_2 \\
      --train parts/good --out model.safetensors --coreset 0.01 --embed-weights \\
      --threshold-from-normal parts/held_out_good

Prints progress (images/s, ETA) on stderr, then the memory-bank size, the memory used and the
time of every stage. An existing --out file is only replaced with --force.";

const PREDICT_EXAMPLE: &str = "\
Example:
  patchcore predict --model model.safetensors incoming/
  patchcore predict --model model.safetensors --heatmaps out/ --contours --json a.png b.png

Prints one line per image: path, score and decision (`anomalous` when score >= threshold,
`good` otherwise, `-` without a threshold), tab-separated, or one JSON object per line with
--json. Without --heatmaps or --regions only the score is computed.

Names in the text output are escaped so that one image is one line and the name maps back to
the file: `\\` is written `\\\\`, newline `\\n`, carriage return `\\r`, tab `\\t`, other
control characters and every byte that is not valid UTF-8 `\\xNN` (two hex digits). In JSON,
`path` is the name itself when it is valid UTF-8; otherwise it is the escaped form and the
object has `\"path_escaped\":true`. With --heatmaps or --regions the JSON object lists
`regions`: the connected areas of the heat map at or above the threshold, each with its
bounding box `x`, `y`, `width`, `height`, its `area` in pixels, its `peak` value and its
`outline` polygon ([x, y] points), in pixels of the original image.

Heat maps are written at the size of the original image; their colour scale puts the
threshold in the middle. An image found in a folder given on the command line gets
`<DIR>/<its path relative to that folder, extension replaced>_heatmap.png`; a file given
directly gets `<DIR>/<file stem>_heatmap.png`. Two inputs that would get the same name (e.g.
p/a.png and q/a.jpg) are an error: run them separately. If some image cannot be read, the
others are still scored and the exit code is 1.";

const EVAL_EXAMPLE: &str = "\
Example:
  patchcore eval --data mvtec/bottle --weights wide_resnet50_2.safetensors \\
      --arch wide_resnet50_2 --json
  patchcore eval --data mvtec/bottle --model model.safetensors --out pictures/

Fits on <DATA>/train/good unless --model is given, scores every image under <DATA>/test and
prints image AUROC, pixel AUROC, AUPRO (FPR <= 0.3), image F1-max with its threshold, and
timings. --json prints one object with the keys category, image_auroc, pixel_auroc, aupro,
f1_max, threshold, fit_seconds, predict_ms_per_image, n_train, n_test (and a few more).

When the model has a stored threshold (fit --threshold-from-normal), the precision and recall
of its decisions and the confusion counts are printed too (JSON: `model_threshold`, an object
with threshold, precision, recall, tp, fp, tn, fn; null without a threshold). Without a
<DATA>/ground_truth folder only the image metrics are computed: pixel AUROC and AUPRO are
reported as skipped (JSON null, `pixel_metrics` says why).";

const EMBED_EXAMPLE: &str = "\
Example:
  patchcore embed --weights resnet18.safetensors --arch resnet18 --input part.png \\
      --out features.safetensors

Writes the f32 tensors `layer2`, `layer3` (one per --layers entry, [N, C, H, W]) and
`embedding` ([N*H*W, D], the PatchCore patch features) to --out.";

const WEIGHTS_EXAMPLE: &str = "\
Example:
  patchcore weights --random resnet18 --out resnet18-random.safetensors

Writes seeded RANDOM weights (torchvision tensor names, up to --last-layer) so that `fit`,
`predict` and `eval` can be tried without Python or a download. Scores computed with them are
meaningless: the file is marked `patchcore.random_weights = true` in its safetensors metadata
and `fit`/`predict`/`eval` warn when they load it. For real weights see the README (Weights):
scripts/export_torchvision.py exports torchvision's IMAGENET1K_V1 ResNets.";

const DEMO_EXAMPLE: &str = "\
Example:
  patchcore demo demo/

Writes a small synthetic category (woven texture; scratches and spots with exact masks) in
the MVTec AD layout under DIR/texture (train/good, test/{good,scratch,spot},
ground_truth/{scratch,spot}), 8 more good images under DIR/held_out_good (for the threshold),
and prints the commands that fit, predict and evaluate on it.";

/// Top-level command line.
#[derive(Parser)]
#[command(
    name = "patchcore",
    version,
    about = "PatchCore anomaly detection on the CPU",
    long_about = "PatchCore anomaly detection on the CPU.\n\n\
        Exit codes: 0 success, 1 failure (unreadable file, bad image, ...), 2 usage error \
        (unknown option, bad option value)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Fit a model on images of good parts.
    #[command(after_help = FIT_EXAMPLE)]
    Fit(FitArgs),
    /// Score images (files or folders) with a fitted model.
    #[command(after_help = PREDICT_EXAMPLE)]
    Predict(PredictArgs),
    /// Fit (or load) a model and evaluate it on an MVTec-style category folder.
    #[command(after_help = EVAL_EXAMPLE)]
    Eval(EvalArgs),
    /// Write backbone features and the patch embedding of an image to a safetensors file.
    #[command(after_help = EMBED_EXAMPLE)]
    Embed(EmbedArgs),
    /// Write a weights file (today: seeded random weights, to try the tool without downloads).
    #[command(after_help = WEIGHTS_EXAMPLE)]
    Weights(WeightsArgs),
    /// Write a small synthetic data set and print the commands to try on it.
    #[command(after_help = DEMO_EXAMPLE)]
    Demo(DemoArgs),
    /// Add images of good parts to a fitted model without refitting ("teach good").
    #[command(after_help = UPDATE_EXAMPLE)]
    Update(UpdateArgs),
}

const UPDATE_EXAMPLE: &str = "\
Example:
  patchcore update --model model.safetensors --weights wide_resnet50_2.safetensors \\
      --add false_positives/ --out model2.safetensors

Adds the patches of the new good images that lie farther from the memory bank than the
coverage radius the fit stopped at (the old training images are not needed), and says how
many rows were added. The stored decision threshold is kept (say --threshold-from-normal DIR
to recalibrate it). Without --out the model file is replaced (atomically).";

/// A memory size: `1GiB`, `512MiB`, `2GB`, `100000000`.
fn memory_size(s: &str) -> Result<u64, String> {
    patchcore::model::parse_bytes(s).map_err(|e| e.to_string())
}

#[derive(Args)]
pub struct UpdateArgs {
    /// Model file written by `patchcore fit` (or `update`).
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Backbone weights (needed unless the model embeds them; then also needed to embed them
    /// again in the updated model).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Folders (read one level deep) or files of new good images.
    #[arg(long, required = true, num_args = 1.., value_name = "DIR_OR_FILE")]
    pub add: Vec<PathBuf>,
    /// Where to write the updated model (default: replace --model).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Store the --weights file inside the updated model file.
    #[arg(long, requires = "weights")]
    pub embed_weights: bool,
    /// Recalibrate the decision threshold: just above the highest score of these held-out
    /// good images (otherwise the stored threshold is kept).
    #[arg(long, value_name = "DIR_OR_FILE", num_args = 1..)]
    pub threshold_from_normal: Vec<PathBuf>,
    /// Overwrite an existing --out file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SamplerArg {
    /// Greedy k-center on a random projection (first element seeded and kept).
    Greedy,
    /// The original implementation's approximate greedy (10 random starts).
    Approx,
    /// Uniform random subset.
    Random,
    /// Keep every patch feature.
    None,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PrecisionArg {
    /// Single precision: parity with PyTorch.
    F32,
    /// int8 weights and activations, calibrated on the training images (faster).
    Int8,
    /// bf16 weights and activations, f32 sums (half the weight memory).
    Bf16,
}

impl From<PrecisionArg> for patchcore::backbone::Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::F32 => patchcore::backbone::Precision::F32,
            PrecisionArg::Int8 => patchcore::backbone::Precision::Int8,
            PrecisionArg::Bf16 => patchcore::backbone::Precision::Bf16,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum AggregatorArg {
    /// Original PatchCore: 3×3 neighbourhoods, adaptive pooling to 1024 dimensions.
    Original,
    /// anomalib style: 3×3 average pooling, all channels concatenated.
    Average,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DistanceArg {
    /// Euclidean distance (the paper).
    Euclidean,
    /// Squared Euclidean distance (faiss, the original code).
    Squared,
}

fn arch(s: &str) -> Result<ResNetSpec, String> {
    ResNetSpec::from_name(s).map_err(|_| {
        format!(
            "unknown architecture; known: {}",
            patchcore::backbone::KNOWN_ARCHITECTURES.join(", ")
        )
    })
}

fn layer(s: &str) -> Result<Layer, String> {
    s.parse::<Layer>()
        .map_err(|_| "expected one of layer1, layer2, layer3, layer4".to_string())
}

/// A coreset ratio in (0, 1].
fn ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| "not a number (expected a fraction in (0, 1], e.g. 0.1)".to_string())?;
    // Written so that NaN fails too.
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err("must lie in (0, 1] (the fraction of patch features kept; 1 keeps all)".into())
    }
}

fn finite(s: &str) -> Result<f32, String> {
    let v: f32 = s.trim().parse().map_err(|_| "not a number".to_string())?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err("must be a finite number".into())
    }
}

fn at_least_one() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::<usize>::new().range(1..)
}

#[derive(Args, Clone)]
pub struct BackboneArgs {
    /// Backbone weights (torchvision tensor names, safetensors, f32/f16/bf16).
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Args, Clone)]
pub struct NetArgs {
    /// Architecture: resnet18, resnet34, resnet50, resnet101, resnet152, wide_resnet50_2,
    /// wide_resnet101_2.
    #[arg(long, default_value = "wide_resnet50_2", value_parser = arch)]
    pub arch: ResNetSpec,
    /// Backbone layers to tap, comma-separated.
    #[arg(long, default_value = "layer2,layer3", value_delimiter = ',', value_parser = layer)]
    pub layers: Vec<Layer>,
}

#[derive(Args, Clone)]
pub struct PreprocessArgs {
    /// Resize the shorter side to this many pixels (0 = no resize).
    #[arg(long, default_value_t = 256, value_name = "PIXELS")]
    pub resize: usize,
    /// Centre-crop to this square size (0 = no crop).
    #[arg(long, default_value_t = 224, value_name = "PIXELS")]
    pub crop: usize,
}

#[derive(Args, Clone)]
pub struct FitOptions {
    /// Fraction of patch features kept in the memory bank, in (0, 1].
    #[arg(long, default_value_t = 0.1, value_parser = ratio, value_name = "FRACTION")]
    pub coreset: f64,
    /// Memory-bank subsampling.
    #[arg(long, value_enum, default_value = "greedy")]
    pub sampler: SamplerArg,
    /// Nearest neighbours averaged into a patch score (≥ 1).
    #[arg(long, default_value_t = 1, value_parser = at_least_one())]
    pub k: usize,
    /// Bank neighbours of the image-score re-weighting (paper Eq. 7, ≥ 1); 1 = plain maximum.
    #[arg(long, default_value_t = 1, value_parser = at_least_one())]
    pub b: usize,
    /// Patch distance.
    #[arg(long, value_enum, default_value = "euclidean")]
    pub distance: DistanceArg,
    /// Patch-feature construction.
    #[arg(long, value_enum, default_value = "original")]
    pub aggregator: AggregatorArg,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per backbone batch (≥ 1; bounds the memory of feature extraction).
    #[arg(long, default_value_t = 4, value_parser = at_least_one())]
    pub batch_size: usize,
    /// Store the memory bank in f16 (half the memory and model-file size; scores change by
    /// the f16 rounding of the bank, typically well below 0.1 %).
    #[arg(long)]
    pub bank_f16: bool,
    /// Backbone precision when scoring images: f32 (default, parity with PyTorch), int8
    /// (faster; quantised with the activation ranges measured on the training images) or bf16
    /// (half the weight memory). The memory bank is always extracted in f32. With
    /// `eval --model`, overrides the model's.
    #[arg(long, value_enum, value_name = "PRECISION")]
    pub precision: Option<PrecisionArg>,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

#[derive(Args)]
pub struct FitArgs {
    #[command(flatten)]
    pub backbone: BackboneArgs,
    /// Folders (read one level deep) or files of good images.
    #[arg(long, required = true, num_args = 1.., value_name = "DIR_OR_FILE")]
    pub train: Vec<PathBuf>,
    /// Model file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Store the backbone weights inside the model file (it then deploys alone).
    #[arg(long)]
    pub embed_weights: bool,
    /// Store a decision threshold just above the highest score of these held-out good images
    /// (so all of them are judged good).
    #[arg(long, value_name = "DIR_OR_FILE", num_args = 1..)]
    pub threshold_from_normal: Vec<PathBuf>,
    /// How the threshold is derived from the held-out scores: `max` (just above the highest:
    /// every held-out image is judged good), `quantile:Q` (the Q-quantile, e.g. quantile:0.99
    /// accepts about 1 % false alarms) or `mean-std:K` (mean + K standard deviations).
    #[arg(long, default_value = "max", value_parser = crate::calibrate::parse_rule,
          requires = "threshold_from_normal", value_name = "RULE")]
    pub threshold_rule: patchcore::metrics::NormalThreshold,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
    /// Memory budget of the fit, e.g. `1GiB`: the fit prints what each stage will hold, keeps
    /// only the coreset projection in memory (the full features go to a temporary file next to
    /// --out) when that is needed to stay under it, and refuses before the work starts when
    /// even that does not fit.
    #[arg(long, value_parser = memory_size, value_name = "SIZE")]
    pub max_memory: Option<u64>,
    #[command(flatten)]
    pub fit: FitOptions,
}

#[derive(Args)]
pub struct PredictArgs {
    /// Model file written by `patchcore fit`.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Backbone weights (needed unless the model was fitted with --embed-weights).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Decision threshold (defaults to the one stored in the model).
    #[arg(long, value_parser = finite)]
    pub threshold: Option<f32>,
    /// Run the backbone in this precision instead of the model's (int8 needs a model fitted
    /// by this version, which stores the activation ranges).
    #[arg(long, value_enum, value_name = "PRECISION")]
    pub precision: Option<PrecisionArg>,
    /// Write heat-map PNGs into this folder (needs a threshold: --threshold or one stored in
    /// the model).
    #[arg(long, value_name = "DIR")]
    pub heatmaps: Option<PathBuf>,
    /// Draw the outlines of the regions at or above the threshold on the heat maps.
    #[arg(long, requires = "heatmaps")]
    pub contours: bool,
    /// Compute the heat map and list its regions at or above the threshold in the --json
    /// output (bounding box, area, peak, outline), without writing pictures.
    #[arg(long)]
    pub regions: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Overwrite existing heat-map files.
    #[arg(long)]
    pub force: bool,
    /// Image files or folders (read one level deep).
    #[arg(required = true, value_name = "PATH")]
    pub inputs: Vec<PathBuf>,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Category folder in the MVTec AD layout (train/good, test/<defect>, and optionally
    /// ground_truth/<defect> for the pixel metrics).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// A fitted model (otherwise fit on <DATA>/train/good; the fit options are then ignored).
    #[arg(long, value_name = "FILE", required_unless_present = "weights")]
    pub model: Option<PathBuf>,
    /// Backbone weights (to fit, or for a model saved without its weights).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub net: NetArgs,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Write heat maps with outlines (at the F1-optimal threshold) to <OUT>/<defect>/.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Overwrite existing heat-map files under --out.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub fit: FitOptions,
}

#[derive(Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub backbone: BackboneArgs,
    /// An image file, or a safetensors file holding a normalised f32 tensor `input` [N,3,H,W].
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Output safetensors file.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
    /// Do not compute the patch embedding (only the layer maps).
    #[arg(long)]
    pub no_embedding: bool,
    /// Patch-feature construction of the `embedding` tensor.
    #[arg(long, value_enum, default_value = "original")]
    pub aggregator: AggregatorArg,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

#[derive(Args)]
pub struct WeightsArgs {
    /// Write seeded random weights for this architecture (resnet18, resnet34, resnet50,
    /// resnet101, resnet152, wide_resnet50_2, wide_resnet101_2). Scores are meaningless.
    #[arg(long, value_name = "ARCH", value_parser = arch)]
    pub random: ResNetSpec,
    /// Weights file to write (safetensors).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Deepest stage written (fit with --layers up to this one).
    #[arg(long, default_value = "layer3", value_parser = layer)]
    pub last_layer: Layer,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Folder to write the data set into (created if missing; DIR/texture and
    /// DIR/held_out_good must not exist).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Side of the square images in pixels (32..=1024).
    #[arg(long, default_value_t = 128, value_parser = RangedU64ValueParser::<u32>::new().range(32..=1024))]
    pub size: u32,
    /// Seed of the generator.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}
