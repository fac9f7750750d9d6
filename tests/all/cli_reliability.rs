//! Reliability of the `patchcore` binary (issue 15): outputs never destroy inputs or special
//! files, special files given as inputs are refused (never read forever), an interrupted run
//! removes its temporary file and a later run sweeps stale ones, and messages speak of
//! options, not library types.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use crate::cli_common::*;

/// This module's fixture (in its own folder, see [`fixture_for`]).
fn fixture() -> &'static Fixture {
    fixture_for(module_path!())
}

/// A fresh empty folder for one test, under this module's fixture.
fn scratch(name: &str) -> PathBuf {
    fixture().scratch(name)
}

/// `run` on a thread, failing the test after a generous timeout instead of hanging.
fn run_bounded(args: Vec<String>) -> Output {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run(&args));
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the command did not finish within 120 s (blocked on a special file?)")
}

fn mkfifo(path: &Path) -> Option<PathBuf> {
    match Command::new("mkfifo").arg(path).status() {
        Ok(s) if s.success() => Some(path.to_path_buf()),
        _ => {
            eprintln!("note: `mkfifo` is unavailable; FIFO checks skipped");
            None
        }
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn first_image(f: &Fixture) -> PathBuf {
    f.data.join("test/good/000.png")
}

#[test]
fn an_output_that_is_an_input_is_refused_even_with_force() {
    let f = fixture();
    let dir = scratch("out-is-input");
    let w = dir.join("w.safetensors");
    std::fs::copy(&f.weights, &w).unwrap();
    let before = std::fs::read(&w).unwrap();
    let o = run(&fit_args(f, p(&w), p(&w), &["--force"]));
    assert_fails(&o, 2, &["--out", "--weights", "destroy"]);
    assert_eq!(std::fs::read(&w).unwrap(), before);
    // The same file under another spelling, and a training image.
    let other = dir.join(".").join("w.safetensors");
    let o = run(&fit_args(f, p(&w), p(&other), &["--force"]));
    assert_fails(&o, 2, &["--weights"]);
    assert_eq!(std::fs::read(&w).unwrap(), before);
    let img = f
        .data
        .join("train/good")
        .join(listing(&f.data.join("train/good"))[0].clone());
    let img_before = std::fs::read(&img).unwrap();
    let o = run(&fit_args(f, p(&f.weights), p(&img), &["--force"]));
    assert_fails(&o, 2, &["--train image"]);
    assert_eq!(std::fs::read(&img).unwrap(), img_before);

    // predict --heatmaps into the input folder: the heat map of a.png would be the input
    // a_heatmap.png.
    let inputs = scratch("heatmap-is-input");
    std::fs::copy(first_image(f), inputs.join("a.png")).unwrap();
    std::fs::copy(first_image(f), inputs.join("a_heatmap.png")).unwrap();
    let keep = std::fs::read(inputs.join("a_heatmap.png")).unwrap();
    let o = run(&[
        "predict",
        "--model",
        p(&f.model),
        "--heatmaps",
        p(&inputs),
        "--force",
        p(&inputs),
    ]);
    assert_fails(&o, 2, &["a_heatmap.png", "destroy"]);
    assert_eq!(std::fs::read(inputs.join("a_heatmap.png")).unwrap(), keep);
    assert_eq!(listing(&inputs), ["a.png", "a_heatmap.png"]);

    // embed --out equal to --input.
    let t = dir.join("in.png");
    std::fs::copy(first_image(f), &t).unwrap();
    let o = run(&[
        "embed",
        "--weights",
        p(&f.weights),
        "--arch",
        "resnet18",
        "--input",
        p(&t),
        "--out",
        p(&t),
        "--force",
    ]);
    assert_fails(&o, 2, &["--input"]);
}

#[cfg(unix)]
#[test]
fn outputs_never_replace_symlinks_fifos_or_devices() {
    let f = fixture();
    let dir = scratch("special-outs");
    let link = dir.join("m.safetensors");
    std::os::unix::fs::symlink(dir.join("nowhere"), &link).unwrap();
    for extra in [&[][..], &["--force"][..]] {
        let o = run(&fit_args(f, p(&f.weights), p(&link), extra));
        assert_fails(&o, 1, &["m.safetensors", "symbolic link"]);
        // Refused before any work (the library's writer would refuse too, but only at the end).
        assert!(!stderr(&o).contains("training images"), "{}", stderr(&o));
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!dir.join("nowhere").exists());
    }
    // A device node, even with --force.
    let o = run(&fit_args(f, p(&f.weights), "/dev/null", &["--force"]));
    assert_fails(&o, 1, &["/dev/null", "device"]);
    assert!(!stderr(&o).contains("training images"), "{}", stderr(&o));
    let Some(fifo) = mkfifo(&dir.join("fifo.safetensors")) else {
        return;
    };
    let o = run_bounded(fit_args(f, p(&f.weights), p(&fifo), &["--force"]));
    assert_fails(&o, 1, &["fifo.safetensors", "FIFO"]);
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn special_inputs_are_named_not_read() {
    let f = fixture();
    let dir = scratch("special-ins");
    // A folder as --model or --weights says so (not "not found").
    let o = run(&["predict", "--model", p(&dir), p(&first_image(f))]);
    assert_fails(&o, 1, &["--model is a folder"]);
    let o = run(&fit_args(f, p(&dir), p(&dir.join("m.safetensors")), &[]));
    assert_fails(&o, 1, &["--weights is a folder"]);
    // /dev/zero as an image: refused at once.
    let o = run_bounded(strings(&["predict", "--model", p(&f.model), "/dev/zero"]));
    assert_fails(&o, 1, &["/dev/zero", "not a regular file"]);
    let Some(fifo) = mkfifo(&dir.join("x.png")) else {
        return;
    };
    let o = run_bounded(strings(&[
        "predict",
        "--model",
        p(&fifo),
        p(&first_image(f)),
    ]));
    assert_fails(&o, 1, &["--model is not a regular file (a FIFO)"]);
    let o = run_bounded(strings(&["predict", "--model", p(&f.model), p(&fifo)]));
    assert_fails(&o, 1, &["x.png", "FIFO"]);
    // Inside a folder a FIFO is skipped: the other image is scored.
    std::fs::copy(first_image(f), dir.join("a.png")).unwrap();
    let o = run_bounded(strings(&["predict", "--model", p(&f.model), p(&dir)]));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("a.png"), "{out}");
}

#[test]
fn messages_name_options_not_library_types() {
    let f = fixture();
    let dir = scratch("messages");
    // The bare model has no embedded weights.
    let o = run(&["predict", "--model", p(&f.bare_model), p(&first_image(f))]);
    assert_fails(&o, 1, &["--weights"]);
    assert!(!stderr(&o).contains("BackboneSource"), "{}", stderr(&o));
    // More neighbours than the memory bank has rows.
    let o = run(&fit_args(
        f,
        p(&f.weights),
        p(&dir.join("m.safetensors")),
        &["--k", "100000"],
    ));
    let err = stderr(&o);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("--k"), "{err}");
    assert!(!err.contains("scoring.k"), "{err}");
}

#[test]
fn a_stale_temporary_file_is_removed_and_reported() {
    let f = fixture();
    let dir = scratch("stale");
    let out = dir.join("m.safetensors");
    let stale = dir.join(".m.safetensors.tmp-999999");
    let fresh = dir.join(".m.safetensors.tmp-999998");
    let other = dir.join(".other.safetensors.tmp-999999");
    let old = SystemTime::now() - Duration::from_secs(3600);
    for t in [&stale, &fresh, &other] {
        let file = std::fs::File::create(t).unwrap();
        if t != &fresh {
            file.set_modified(old).unwrap();
        }
    }
    let o = run(&fit_args(f, p(&f.weights), p(&out), &[]));
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(!stale.exists());
    assert!(err.contains(".m.safetensors.tmp-999999"), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    // Too recent (its writer may be on another machine), or not ours: kept.
    assert!(fresh.exists());
    assert!(other.exists());
}

#[cfg(unix)]
#[test]
fn sigterm_removes_the_temporary_file() {
    let f = fixture();
    let dir = scratch("sigterm");
    let out = dir.join("m.safetensors");
    // A fit whose coreset runs for seconds: large inputs, greedy, 90 %.
    let args = fit_args(
        f,
        p(&f.weights),
        p(&out),
        &[
            "--resize",
            "320",
            "--crop",
            "320",
            "--sampler",
            "greedy",
            "--coreset",
            "0.9",
        ],
    );
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
    let mut child = cmd
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            panic!("fit ended before its coreset started: {seen}");
        }
        seen.push_str(&line);
        if line.contains("coreset: choosing") {
            break;
        }
    }
    // The run's temporary model file (as the writer names it) exists when the signal comes.
    let tmp = dir.join(format!(".m.safetensors.tmp-{}", child.id()));
    std::fs::write(&tmp, b"half a model").unwrap();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    err.read_to_string(&mut seen).unwrap();
    assert_eq!(status.code(), Some(143), "{seen}");
    assert!(!tmp.exists(), "{seen}");
    assert!(!out.exists());
    assert!(seen.contains("removed the temporary file"), "{seen}");
    assert_eq!(listing(&dir), Vec::<String>::new());
}

#[test]
fn a_huge_image_is_a_limit_error_not_an_abort() {
    let f = fixture();
    let dir = scratch("huge");
    let model = dir.join("m.safetensors");
    // No resize, no crop: images go through the network at full size.
    let o = run(&fit_args(
        f,
        p(&f.weights),
        p(&model),
        &["--resize", "0", "--crop", "0", "--embed-weights"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let big = dir.join("big.png");
    image::RgbImage::new(3000, 3000).save(&big).unwrap();
    let o = run(&["predict", "--model", p(&model), p(&big)]);
    assert_fails(&o, 1, &["big.png", "3000×3000", "MiB", "--resize"]);
    assert!(!stderr(&o).contains("ImageLimits"), "{}", stderr(&o));
}
