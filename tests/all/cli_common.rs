//! Shared by the `cli_*` tests: a tiny synthetic data set, seeded random ResNet-18 weights, a
//! model fitted by the binary, and helpers to run the binary and read its output.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

use patchcore::backbone::{Backbone, Layer, ResNetSpec};
use patchcore::coreset::CoresetSize;
use patchcore::dataset::Category;
use patchcore::model::{BackboneSource, PatchCore, PatchCoreParams, PredictOptions, SaveOptions};
use patchcore::preprocess::{ImageLimits, PreprocessConfig, Resize};
use patchcore::synthetic::{normal_image, write_category, SyntheticSpec};

pub const BIN: &str = env!("CARGO_BIN_EXE_patchcore");
/// Options shared by every fit in these tests (small images for speed).
pub const FIT_OPTS: &[&str] = &[
    "--arch",
    "resnet18",
    "--resize",
    "96",
    "--crop",
    "64",
    "--coreset",
    "0.25",
    "--seed",
    "3",
];

pub struct Fixture {
    pub root: PathBuf,
    pub data: PathBuf,
    pub weights: PathBuf,
    /// Fitted by the CLI with --embed-weights and --threshold-from-normal test/good.
    pub model: PathBuf,
    /// The same model loaded through the library.
    pub lib: PatchCore,
    /// Fitted by the library (same options), saved without weights and without threshold.
    pub bare_model: PathBuf,
    /// A 120 × 100 (w × h) image, to check that heat maps get the original size.
    pub odd_image: PathBuf,
    pub fit_stderr: String,
}

/// The fixture of the test module `module` (its `module_path!()`), made on first use. Each
/// module has its own, in its own folder: the modules' tests run concurrently in one binary and
/// some of them write next to the fixture's files.
///
/// Each module defines `fn fixture() -> &'static Fixture { fixture_for(module_path!()) }`.
pub fn fixture_for(module: &'static str) -> &'static Fixture {
    static FIXTURES: Mutex<BTreeMap<&str, &OnceLock<Fixture>>> = Mutex::new(BTreeMap::new());
    // The map is locked only to find the module's cell, so that modules make their fixtures
    // concurrently; the cell makes one module's fixture once.
    let cell: &'static OnceLock<Fixture> = FIXTURES
        .lock()
        .unwrap()
        .entry(module)
        .or_insert_with(|| Box::leak(Box::new(OnceLock::new())));
    cell.get_or_init(|| {
        // Under the target dir (removed by `cargo clean`), replaced on every run; named after
        // the module without the crate name (`cli_flow`: the name of the test crate it was).
        let name = module.split_once("::").map_or(module, |(_, m)| m);
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name.replace("::", "-"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let spec = SyntheticSpec {
            size: 96,
            train: 6,
            test_good: 3,
            test_per_defect: 2,
            seed: 11,
        };
        let data = write_category(&root, "tex", &spec).unwrap();
        let weights = root.join("resnet18.safetensors");
        let bytes = Backbone::random_weights_safetensors(&ResNetSpec::resnet18(), Layer::Layer3, 5)
            .unwrap();
        std::fs::write(&weights, bytes).unwrap();
        let square = normal_image(120, 99);
        let odd = image::imageops::crop_imm(&square, 0, 0, 120, 100).to_image();
        let odd_image = root.join("odd.png");
        odd.save(&odd_image).unwrap();

        let model = root.join("model.safetensors");
        let mut args: Vec<&OsStr> = vec![
            "fit".as_ref(),
            "--weights".as_ref(),
            weights.as_ref(),
            "--train".as_ref(),
        ];
        let train = data.join("train/good");
        let held_out = data.join("test/good");
        args.push(train.as_ref());
        args.extend([
            "--out".as_ref(),
            model.as_os_str(),
            "--embed-weights".as_ref(),
        ]);
        args.extend(["--threshold-from-normal".as_ref(), held_out.as_os_str()]);
        args.extend(FIT_OPTS.iter().map(OsStr::new));
        let out = run(&args);
        let fit_stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "fit failed: {fit_stderr}");
        let lib = PatchCore::load(&model, BackboneSource::File(&weights)).unwrap();

        // The same fit through the library, saved bare.
        let backbone =
            Backbone::from_safetensors_file(&weights, &ResNetSpec::resnet18(), &LAYERS).unwrap();
        let cat = Category::open(&data).unwrap();
        let (bare, _) = PatchCore::fit_paths(
            lib_params().check().unwrap(),
            backbone,
            &cat.train,
            &ImageLimits::default(),
            &mut |_| {},
        )
        .unwrap();
        let bare_model = root.join("bare.safetensors");
        bare.save(&bare_model, &SaveOptions::default()).unwrap();
        Fixture {
            root,
            data,
            weights,
            model,
            lib,
            bare_model,
            odd_image,
            fit_stderr,
        }
    })
}

pub const LAYERS: [Layer; 2] = [Layer::Layer2, Layer::Layer3];

/// What FIT_OPTS mean, spelled out with the library's types.
pub fn lib_params() -> PatchCoreParams {
    let mut p = PatchCoreParams {
        preprocess: PreprocessConfig {
            resize: Resize::ShorterSide(96),
            crop: Some((64, 64)),
            ..PreprocessConfig::default()
        },
        layers: LAYERS.to_vec(),
        ..PatchCoreParams::default()
    };
    p.coreset.size = CoresetSize::Ratio(0.25);
    p.coreset.seed = 3;
    p
}

/// Runs the binary. Under a cross-target test run (the binary is for another CPU and the
/// kernel cannot execute it), `PATCHCORE_TEST_RUNNER` names the emulator to run it with, e.g.
/// `qemu-aarch64 -L /usr/aarch64-linux-gnu` (set by `.ci/aarch64.sh`).
pub fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let runner = std::env::var("PATCHCORE_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    let mut cmd = match words.next() {
        Some(emulator) => {
            let mut c = Command::new(emulator);
            c.args(words).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    cmd.args(args).output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The command failed with `code`, its stderr names every `needle`, and nothing panicked.
#[track_caller]
pub fn assert_fails(o: &Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("internal error"), "{err}");
    assert!(!err.contains("RUST_BACKTRACE"), "{err}");
    // A repeated option would be refused for the wrong reason.
    assert!(!err.contains("cannot be used multiple times"), "{err}");
}

impl Fixture {
    /// A fresh empty folder for one test, under this fixture's folder.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let d = self.root.join("scratch").join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

// ---------------------------------------------------------------------------------------------
// A minimal JSON reader for the flat objects the CLI prints.

#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
    /// A nested array or object, as its raw text (read it with `serde_json`).
    Raw(String),
}

impl Json {
    pub fn num(&self) -> f64 {
        match self {
            Json::Num(v) => *v,
            other => panic!("not a number: {other:?}"),
        }
    }
    pub fn str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            other => panic!("not a string: {other:?}"),
        }
    }
}

pub fn parse_object(line: &str) -> HashMap<String, Json> {
    let c: Vec<char> = line.trim().chars().collect();
    let mut i = 0;
    let ws = |i: &mut usize| {
        while *i < c.len() && c[*i].is_whitespace() {
            *i += 1
        }
    };
    let string = |i: &mut usize| -> String {
        assert_eq!(c[*i], '"', "{line}");
        *i += 1;
        let mut s = String::new();
        loop {
            match c[*i] {
                '"' => {
                    *i += 1;
                    return s;
                }
                '\\' => {
                    *i += 1;
                    match c[*i] {
                        'u' => {
                            let hex: String = c[*i + 1..*i + 5].iter().collect();
                            s.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap());
                            *i += 4;
                        }
                        'n' => s.push('\n'),
                        't' => s.push('\t'),
                        other => s.push(other),
                    }
                    *i += 1;
                }
                ch => {
                    s.push(ch);
                    *i += 1;
                }
            }
        }
    };
    let mut out = HashMap::new();
    ws(&mut i);
    assert_eq!(c[i], '{', "{line}");
    i += 1;
    loop {
        ws(&mut i);
        if c[i] == '}' {
            break;
        }
        let key = string(&mut i);
        ws(&mut i);
        assert_eq!(c[i], ':', "{line}");
        i += 1;
        ws(&mut i);
        let value = if c[i] == '"' {
            Json::Str(string(&mut i))
        } else if c[i] == '[' || c[i] == '{' {
            let (start, mut depth, mut in_str) = (i, 0i32, false);
            loop {
                match c[i] {
                    '\\' if in_str => i += 1,
                    '"' => in_str = !in_str,
                    '[' | '{' if !in_str => depth += 1,
                    ']' | '}' if !in_str => depth -= 1,
                    _ => {}
                }
                i += 1;
                if depth == 0 {
                    break;
                }
            }
            Json::Raw(c[start..i].iter().collect())
        } else {
            let start = i;
            while i < c.len() && !matches!(c[i], ',' | '}') && !c[i].is_whitespace() {
                i += 1;
            }
            let tok: String = c[start..i].iter().collect();
            match tok.as_str() {
                "null" => Json::Null,
                "true" => Json::Bool(true),
                "false" => Json::Bool(false),
                t => Json::Num(
                    t.parse()
                        .unwrap_or_else(|_| panic!("bad number {t}: {line}")),
                ),
            }
        };
        assert!(out.insert(key, value).is_none(), "duplicate key: {line}");
        ws(&mut i);
        if c[i] == ',' {
            i += 1;
        }
    }
    assert_eq!(i + 1, c.len(), "trailing characters: {line}");
    out
}

pub fn score(model: &PatchCore, path: &Path) -> f32 {
    model
        .predict_path(
            path,
            &ImageLimits::default(),
            PredictOptions { anomaly_map: false },
        )
        .unwrap()
        .0
        .score
}

/// `fit` arguments writing to `out`, with `extra` options appended.
pub fn fit_args(f: &Fixture, weights: &str, out: &str, extra: &[&str]) -> Vec<String> {
    let train = f.data.join("train/good");
    let mut v = vec![
        "fit",
        "--weights",
        weights,
        "--train",
        p(&train),
        "--out",
        out,
    ];
    // FIT_OPTS are `--option value` pairs; `extra` replaces those it names.
    for pair in FIT_OPTS.chunks(2) {
        if !extra.iter().any(|e| e.split('=').next() == Some(pair[0])) {
            v.extend(pair);
        }
    }
    v.extend(extra);
    v.into_iter().map(String::from).collect()
}
