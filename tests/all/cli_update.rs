//! `patchcore fit --max-memory` and `patchcore update` through the binary.

use std::ffi::OsStr;

use crate::cli_common::*;
use patchcore::model::{BackboneSource, PatchCore};

/// This module's fixture (in its own folder, see [`fixture_for`]).
fn fixture() -> &'static Fixture {
    fixture_for(module_path!())
}

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn fit_args<'a>(f: &'a Fixture, out: &'a std::path::Path, extra: &[&'a str]) -> Vec<&'a OsStr> {
    let mut args: Vec<&OsStr> = vec![
        "fit".as_ref(),
        "--weights".as_ref(),
        f.weights.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--train".as_ref(),
    ];
    args.extend(FIT_OPTS.iter().map(OsStr::new));
    args.extend(extra.iter().map(|s| OsStr::new(*s)));
    args
}

#[test]
fn fit_under_a_tiny_budget_refuses_before_any_work_and_writes_nothing() {
    let f = fixture();
    let dir = f.root.join("tiny-budget");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("m.safetensors");
    let train = f.data.join("train/good");
    let mut args = fit_args(f, &out, &["--max-memory", "1MiB"]);
    args.insert(6, train.as_os_str());
    let o = run(&args);
    let e = err(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("--max-memory 1.0 MiB") && e.contains("memory budget"),
        "{e}"
    );
    assert!(!e.contains("images/s"), "work started: {e}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    // A malformed size is a usage error.
    let mut args = fit_args(f, &out, &["--max-memory", "lots"]);
    args.insert(6, train.as_os_str());
    assert_eq!(run(&args).status.code(), Some(2));
}

#[test]
fn fit_prints_its_plan_and_removes_a_spill_file_left_by_a_killed_fit() {
    let f = fixture();
    let dir = f.root.join("stale-spill");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("m.safetensors");
    // What a fit killed by SIGKILL leaves: a spill file of a process that is gone.
    let stale = dir.join(".m.safetensors.spill-999999999");
    std::fs::write(&stale, [0u8; 64]).unwrap();
    let train = f.data.join("train/good");
    let mut args = fit_args(f, &out, &["--max-memory", "8GiB"]);
    args.insert(6, train.as_os_str());
    let o = run(&args);
    let e = err(&o);
    assert!(o.status.success(), "{e}");
    if std::path::Path::new("/proc/self").exists() {
        assert!(!stale.exists());
        assert!(
            e.contains("removed") && e.contains(".m.safetensors.spill-999999999"),
            "{e}"
        );
    }
    for needle in [
        "memory plan InMemory",
        "patch features = 384 × 1024 × 4 B",
        "estimated peak",
    ] {
        assert!(e.contains(needle), "{needle}: {e}");
    }
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["m.safetensors".to_string()]);
}

#[test]
fn update_adds_rows_keeps_the_threshold_and_records_the_history() {
    let f = fixture();
    let dir = f.root.join("update");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("m2.safetensors");
    let add = f.data.join("test/good");
    let o = run(&[
        "update".as_ref(),
        "--model".as_ref(),
        f.model.as_os_str(),
        "--weights".as_ref(),
        f.weights.as_os_str(),
        "--embed-weights".as_ref(),
        "--add".as_ref(),
        add.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    let e = err(&o);
    assert!(o.status.success(), "{e}");
    let m2 = PatchCore::load(&out, BackboneSource::Embedded).unwrap();
    let before = f.lib.memory_bank().nrows();
    let added = m2.memory_bank().nrows() - before;
    assert!(
        e.contains(&format!(
            "added {added} rows to the memory bank ({before} → "
        )),
        "{e}"
    );
    assert!(e.contains("threshold: kept at"), "{e}");
    assert_eq!(m2.threshold(), f.lib.threshold());
    assert_eq!(m2.images_seen(), Some(6 + 3));
    assert_eq!(m2.update_history().len(), 1);
    assert_eq!(m2.update_history()[0].rows_added, added as u64);
    // The first rows are the old bank, untouched.
    assert_eq!(
        m2.memory_bank().slice(ndarray::s![..before, ..]),
        f.lib.memory_bank()
    );
    // Replacing a model with embedded weights needs them to embed again.
    let o = run(&[
        "update".as_ref(),
        "--model".as_ref(),
        out.as_os_str(),
        "--add".as_ref(),
        add.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("--weights"));
}

#[test]
fn update_has_help_with_an_example() {
    let o = run(&["update", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    assert!(
        out.contains("Example:") && out.contains("patchcore update "),
        "{out}"
    );
    let o = run(&["fit", "--help"]);
    assert!(stdout(&o).contains("--max-memory"));
}
