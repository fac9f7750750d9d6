//! A new user's first hour with the binary: `demo` → `weights --random` → `fit` → `predict` →
//! `eval` on a tiny synthetic set, heat-map names, escaped file names, degenerate thresholds.

use std::ffi::OsStr;
use std::path::Path;

use crate::cli_common::*;

/// This module's fixture (in its own folder, see [`fixture_for`]).
fn fixture() -> &'static Fixture {
    fixture_for(module_path!())
}

/// A fresh empty folder for one test, under this module's fixture.
fn scratch(name: &str) -> std::path::PathBuf {
    fixture().scratch(name)
}

/// The printed `patchcore ...` commands of `demo`, as argument lists.
fn printed_commands(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter_map(|l| l.strip_prefix("patchcore "))
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

fn json_lines(o: &std::process::Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn demo_weights_fit_predict_eval_from_nothing() {
    let dir = scratch("demo");
    let o = run(&["demo", p(&dir), "--size", "64", "--seed", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let data = dir.join("texture");
    assert_eq!(listing(&data.join("train/good")).len(), 16);
    assert_eq!(listing(&data.join("ground_truth/spot")).len(), 6);
    assert_eq!(listing(&dir.join("held_out_good")).len(), 8);
    let cmds = printed_commands(&stdout(&o));
    let names: Vec<&str> = cmds.iter().map(|c| c[0].as_str()).collect();
    assert_eq!(
        names,
        ["weights", "fit", "predict", "eval"],
        "{}",
        stdout(&o)
    );
    // Running demo again would overwrite: refused, nothing changed.
    let again = run(&["demo", p(&dir), "--size", "64"]);
    assert_fails(&again, 1, &["exists"]);

    // The printed commands, verbatim.
    let mut outputs = Vec::new();
    for c in &cmds {
        let o = run(c);
        assert!(o.status.success(), "{c:?}: {}", stderr(&o));
        outputs.push(o);
    }
    let weights = dir.join("resnet18-random.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["patchcore.random_weights"], "true");
    assert!(stderr(&outputs[0]).contains("RANDOM"));
    let fit_err = stderr(&outputs[1]);
    assert!(
        fit_err.contains("random weights: scores are meaningless"),
        "{fit_err}"
    );
    // fit prints the sha256 of the weights file (what `sha256sum` prints).
    let sha: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert!(fit_err.contains(&sha), "{fit_err}");
    let maps = dir.join("maps");
    assert_eq!(listing(&maps).len(), 6);

    // Scores from --json: the defective images score above the good ones on average.
    let model = dir.join("model.safetensors");
    let mean_of = |sub: &str| -> (f64, Vec<serde_json::Value>) {
        let o = run(&[
            "predict",
            "--model",
            p(&model),
            "--json",
            "--regions",
            p(&data.join("test").join(sub)),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v = json_lines(&o);
        let s: Vec<f64> = v.iter().map(|o| o["score"].as_f64().unwrap()).collect();
        (mean(&s), v)
    };
    let (good, good_rows) = mean_of("good");
    let (scratch_m, _) = mean_of("scratch");
    let (spot, spot_rows) = mean_of("spot");
    assert!(good < scratch_m && good < spot, "{good} {scratch_m} {spot}");
    // The map is a convex blend of patch scores, so an image judged good (score below the
    // threshold) has no region; some spot image has one; regions lie inside the 64 × 64 image.
    for r in good_rows.iter().chain(&spot_rows) {
        if r["decision"] == "good" {
            assert_eq!(r["regions"].as_array().unwrap().len(), 0, "{r}");
        }
    }
    assert!(spot_rows
        .iter()
        .any(|r| !r["regions"].as_array().unwrap().is_empty()));
    for r in &spot_rows {
        for reg in r["regions"].as_array().unwrap() {
            let (x, w) = (reg["x"].as_u64().unwrap(), reg["width"].as_u64().unwrap());
            let (y, h) = (reg["y"].as_u64().unwrap(), reg["height"].as_u64().unwrap());
            assert!(x + w <= 64 && y + h <= 64 && reg["area"].as_u64().unwrap() <= w * h);
            assert!(reg["peak"].as_f64().unwrap() >= r["threshold"].as_f64().unwrap());
        }
    }

    // eval --json: every test image, and an image AUROC that beats chance.
    let o = run(&["eval", "--data", p(&data), "--model", p(&model), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = &json_lines(&o)[0];
    assert_eq!(e["n_test"], 20);
    assert!(e["image_auroc"].as_f64().unwrap() > 0.5, "{e}");
}

#[test]
fn heatmap_names_mirror_the_command_line() {
    let f = fixture();
    let root = scratch("mirror");
    std::fs::create_dir_all(root.join("x")).unwrap();
    let img = f.data.join("test/good/000.png");
    std::fs::copy(&img, root.join("x/a.png")).unwrap();
    std::fs::copy(&img, root.join("x_a.png")).unwrap();
    let out = root.join("maps");
    // A folder and a file: `x/a.png` → a_heatmap.png (relative to x/), x_a.png → its stem.
    let o = run(&[
        "predict",
        "--model",
        p(&f.model),
        "--heatmaps",
        p(&out),
        p(&root.join("x")),
        p(&root.join("x_a.png")),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(listing(&out), ["a_heatmap.png", "x_a_heatmap.png"]);
    // The name of x_a.png does not depend on the other inputs.
    let alone = root.join("alone");
    let o = run(&[
        "predict",
        "--model",
        p(&f.model),
        "--heatmaps",
        p(&alone),
        p(&root.join("x_a.png")),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(listing(&alone), ["x_a_heatmap.png"]);
}

#[cfg(unix)]
#[test]
fn names_with_newlines_and_bad_utf8_stay_one_line() {
    use std::os::unix::ffi::OsStrExt;
    let f = fixture();
    let root = scratch("names");
    let img = f.data.join("test/good/000.png");
    let newline = root.join("new\nline.png");
    let bad = root.join(OsStr::from_bytes(b"bad\xff.png"));
    std::fs::copy(&img, &newline).unwrap();
    std::fs::copy(&img, &bad).unwrap();
    let o = run(&[
        "predict".as_ref(),
        "--model".as_ref(),
        f.model.as_os_str(),
        root.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    let first: Vec<String> = lines
        .iter()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    let esc = |name: &str| format!("{}/{name}", p(&root));
    let mut want = vec![esc("bad\\xff.png"), esc("new\\nline.png")];
    let mut got = first.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);

    let o = run(&[
        "predict".as_ref(),
        "--model".as_ref(),
        f.model.as_os_str(),
        "--json".as_ref(),
        root.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = json_lines(&o);
    assert_eq!(rows.len(), 2);
    for r in &rows {
        let path = r["path"].as_str().unwrap();
        if path.ends_with("line.png") {
            // Valid UTF-8: the exact name.
            assert_eq!(Path::new(path), newline.as_path());
            assert!(r.get("path_escaped").is_none());
        } else {
            assert_eq!(path, esc("bad\\xff.png"));
            assert_eq!(r["path_escaped"], true);
        }
    }
}

#[test]
fn threshold_from_training_images_is_refused_and_tiny_thresholds_still_draw() {
    let f = fixture();
    let dir = scratch("degenerate");
    let out = dir.join("m.safetensors");
    let train = f.data.join("train/good");
    // The bug: with every patch in the bank, training images score 0, the stored threshold
    // was 1.4e-45 and every later heat map failed. Now: a warning, and no model written.
    let mut args = fit_args(f, p(&f.weights), p(&out), &["--sampler", "none"]);
    args.extend(["--threshold-from-normal".into(), p(&train).into()]);
    let o = run(&args);
    assert_fails(
        &o,
        1,
        &["also training images", "--threshold-from-normal", "1e-45"],
    );
    assert!(!out.exists());
    // A tiny or zero threshold given by hand draws a picture (everything is above it).
    let img = f.data.join("test/good/000.png");
    for t in ["1e-45", "0"] {
        let maps = dir.join(format!("maps{t}"));
        let o = run(&[
            "predict",
            "--model",
            p(&f.model),
            "--threshold",
            t,
            "--heatmaps",
            p(&maps),
            "--contours",
            p(&img),
        ]);
        assert!(o.status.success(), "{t}: {}", stderr(&o));
        assert!(stdout(&o).contains("anomalous"));
        assert_eq!(listing(&maps), ["000_heatmap.png"]);
    }
}

#[test]
fn threshold_rules_store_the_rule_of_the_held_out_scores() {
    let f = fixture();
    let dir = scratch("rules");
    let held_out = f.data.join("test/good");
    let scores: Vec<f64> = patchcore::dataset::list_images(&held_out)
        .unwrap()
        .iter()
        .map(|i| score(&f.lib, i) as f64)
        .collect();
    let n = scores.len() as f64;
    let m = scores.iter().sum::<f64>() / n;
    let sd = (scores.iter().map(|s| (s - m).powi(2)).sum::<f64>() / n).sqrt();
    let mut sorted = scores.clone();
    sorted.sort_by(f64::total_cmp);
    // 3 scores: the 0.5-quantile is the middle one.
    assert_eq!(sorted.len(), 3);
    for (rule, want) in [("quantile:0.5", sorted[1]), ("mean-std:1", m + sd)] {
        let out = dir.join(format!("{}.safetensors", rule.replace(':', "_")));
        let mut args = fit_args(f, p(&f.weights), p(&out), &[]);
        args.extend([
            "--threshold-from-normal".into(),
            p(&held_out).into(),
            "--threshold-rule".into(),
            rule.into(),
        ]);
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let model = patchcore::model::PatchCore::load(
            &out,
            patchcore::model::BackboneSource::File(&f.weights),
        )
        .unwrap();
        let t = model.threshold().unwrap() as f64;
        assert!((t - want).abs() <= 1e-5 * want, "{rule}: {t} vs {want}");
    }
    let o = run(&fit_args(
        f,
        p(&f.weights),
        p(&dir.join("x")),
        &["--threshold-rule", "median"],
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// A copy of the fixture's category without its ground_truth folder.
fn copy_without_masks(from: &Path, to: &Path) {
    for sub in ["train/good", "test/good", "test/scratch", "test/spot"] {
        std::fs::create_dir_all(to.join(sub)).unwrap();
        for img in patchcore::dataset::list_images(&from.join(sub)).unwrap() {
            std::fs::copy(&img, to.join(sub).join(img.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn eval_reports_decisions_at_the_model_threshold_and_runs_without_masks() {
    let f = fixture();
    let dir = scratch("eval-nomasks");
    let data = dir.join("tex");
    copy_without_masks(&f.data, &data);
    // Independent counts: library scores against the stored threshold, labels by folder.
    let t = f.lib.threshold().unwrap();
    let (mut tp, mut fp, mut tn, mut fn_) = (0, 0, 0, 0);
    let mut labels = Vec::new();
    let mut scores = Vec::new();
    for (sub, bad) in [("good", false), ("scratch", true), ("spot", true)] {
        for img in patchcore::dataset::list_images(&data.join("test").join(sub)).unwrap() {
            let s = score(&f.lib, &img);
            match (bad, s >= t) {
                (true, true) => tp += 1,
                (true, false) => fn_ += 1,
                (false, true) => fp += 1,
                (false, false) => tn += 1,
            }
            labels.push(bad);
            scores.push(s);
        }
    }
    let o = run(&["eval", "--data", p(&data), "--model", p(&f.model), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("skipped"), "{}", stderr(&o));
    let e = &json_lines(&o)[0];
    assert!(e["pixel_auroc"].is_null() && e["aupro"].is_null(), "{e}");
    assert_eq!(e["pixel_metrics"], "skipped: no ground_truth folder");
    // Image AUROC by pair counting (ties count one half).
    let (mut wins, mut pairs) = (0.0, 0.0);
    for (i, &li) in labels.iter().enumerate() {
        for (j, &lj) in labels.iter().enumerate() {
            if li && !lj {
                pairs += 1.0;
                wins += match scores[i].partial_cmp(&scores[j]).unwrap() {
                    std::cmp::Ordering::Greater => 1.0,
                    std::cmp::Ordering::Equal => 0.5,
                    std::cmp::Ordering::Less => 0.0,
                };
            }
        }
    }
    let auroc = e["image_auroc"].as_f64().unwrap();
    assert!(
        (auroc - wins / pairs).abs() < 1e-9,
        "{auroc} vs {}",
        wins / pairs
    );
    let m = &e["model_threshold"];
    assert_eq!(m["threshold"].as_f64().unwrap() as f32, t);
    assert_eq!(
        [&m["tp"], &m["fp"], &m["tn"], &m["fn"]].map(|v| v.as_u64().unwrap()),
        [tp, fp, tn, fn_]
    );
    // The threshold lies above every held-out good score: no false alarm on test/good.
    assert_eq!(fp, 0);
    assert_eq!(m["recall"].as_f64().unwrap(), tp as f64 / (tp + fn_) as f64);
    if tp > 0 {
        assert_eq!(m["precision"].as_f64().unwrap(), 1.0);
    }
    // Text output says so too.
    let o = run(&["eval", "--data", p(&data), "--model", p(&f.model)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("pixel AUROC         skipped"), "{text}");
    assert!(
        text.contains(&format!("(TP {tp}, FP {fp}, TN {tn}, FN {fn_})")),
        "{text}"
    );
}
