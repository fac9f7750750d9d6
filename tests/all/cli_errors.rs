//! Error paths of the `patchcore` binary: exit code 2 for usage errors and 1 for failures,
//! stderr naming the file or option, no file created or changed, no panic.

use crate::cli_common::*;
use patchcore::backbone::{Backbone, Layer, ResNetSpec};
use patchcore::model::{BackboneSource, PatchCore};

/// This module's fixture (in its own folder, see [`fixture_for`]).
fn fixture() -> &'static Fixture {
    fixture_for(module_path!())
}

/// A fresh empty folder for one test, under this module's fixture.
fn scratch(name: &str) -> std::path::PathBuf {
    fixture().scratch(name)
}

// ---------------------------------------------------------------------------------------------
// Errors: exit code 2 for usage errors, 1 for failures; stderr names the file or option; no
// file is created or changed; no panic.

#[test]
fn bad_option_values_are_usage_errors() {
    let f = fixture();
    let dir = scratch("bad-values");
    let out = dir.join("m.safetensors");
    let cases: &[(&[&str], &str)] = &[
        (&["--coreset", "0"], "--coreset"),
        (&["--coreset", "1.5"], "--coreset"),
        (&["--coreset", "NaN"], "--coreset"),
        (&["--coreset=-0.1"], "--coreset"),
        (&["--coreset", "ten"], "--coreset"),
        (&["--k", "0"], "--k"),
        (&["--b", "0"], "--b"),
        (&["--batch-size", "0"], "--batch-size"),
        (&["--layers", "layer2,layer5"], "--layers"),
        (&["--layers", "layer2,layer2"], "layers"),
        (&["--arch", "resnet19"], "--arch"),
        (&["--sampler", "best"], "--sampler"),
        (&["--aggregator", "max"], "--aggregator"),
        (&["--crop", "128"], "larger than --resize 96"),
        (&["--no-such-option"], "--no-such-option"),
    ];
    for (extra, needle) in cases {
        let o = run(&fit_args(f, p(&f.weights), p(&out), extra));
        assert_fails(&o, 2, &[needle]);
        assert!(
            listing(&dir).is_empty(),
            "{extra:?} left {:?}",
            listing(&dir)
        );
    }
    // Missing required options.
    assert_fails(&run(&["fit", "--weights", p(&f.weights)]), 2, &["--train"]);
    assert_fails(&run(&["eval", "--data", p(&f.data)]), 2, &["--model"]);
    assert_fails(&run(&["predict", "--model", p(&f.model)]), 2, &["PATH"]);
    assert_fails(&run(&["frobnicate"]), 2, &["frobnicate"]);
    // predict: bad threshold, outlines without heat maps, heat maps without any threshold.
    let img = f.data.join("test/good/000.png");
    let m = p(&f.model);
    for t in ["NaN", "inf", "x"] {
        let o = run(&["predict", "--model", m, "--threshold", t, p(&img)]);
        assert_fails(&o, 2, &["--threshold"]);
    }
    assert_fails(
        &run(&["predict", "--model", m, "--contours", p(&img)]),
        2,
        &["--heatmaps"],
    );
    let maps = dir.join("maps");
    let o = run(&[
        "predict",
        "--model",
        p(&f.bare_model),
        "--weights",
        p(&f.weights),
        "--heatmaps",
        p(&maps),
        p(&img),
    ]);
    assert_fails(&o, 2, &["--heatmaps", "--threshold"]);
    assert!(!maps.exists());
    assert!(stdout(&o).is_empty());
    // eval: bad fit values are usage errors too.
    let o = run(&[
        "eval",
        "--data",
        p(&f.data),
        "--weights",
        p(&f.weights),
        "--coreset",
        "0",
    ]);
    assert_fails(&o, 2, &["--coreset"]);
    assert!(listing(&dir).is_empty());
}

#[test]
fn missing_and_mismatched_weights_fail_with_the_file_named() {
    let f = fixture();
    let dir = scratch("weights");
    let out = dir.join("m.safetensors");
    let missing = dir.join("nowhere.safetensors");
    let o = run(&fit_args(f, p(&missing), p(&out), &[]));
    assert_fails(&o, 1, &[p(&missing), "not found"]);
    // ResNet-18 weights read as a ResNet-34.
    let o = run(&fit_args(
        f,
        p(&f.weights),
        p(&out),
        &["--arch", "resnet34"],
    ));
    assert_fails(&o, 1, &[p(&f.weights), "resnet34"]);
    // Not a safetensors file at all.
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"not weights").unwrap();
    let o = run(&fit_args(f, p(&junk), p(&out), &[]));
    assert_fails(&o, 1, &[p(&junk)]);
    assert_eq!(listing(&dir), ["junk.safetensors"]);

    // predict: a model without embedded weights, weights of another seed, a missing model.
    let img = f.data.join("test/good/000.png");
    let o = run(&["predict", "--model", p(&f.bare_model), p(&img)]);
    assert_fails(&o, 1, &[p(&f.bare_model), "--weights"]);
    let other = dir.join("other.safetensors");
    let bytes =
        Backbone::random_weights_safetensors(&ResNetSpec::resnet18(), Layer::Layer3, 6).unwrap();
    std::fs::write(&other, bytes).unwrap();
    let o = run(&[
        "predict",
        "--model",
        p(&f.bare_model),
        "--weights",
        p(&other),
        p(&img),
    ]);
    assert_fails(&o, 1, &[p(&f.bare_model), "sha256"]);
    let nomodel = dir.join("none.safetensors");
    let o = run(&["predict", "--model", p(&nomodel), p(&img)]);
    assert_fails(&o, 1, &[p(&nomodel)]);
    assert!(stdout(&o).is_empty());
    let o = run(&[
        "eval",
        "--data",
        p(&f.data),
        "--model",
        p(&nomodel),
        "--json",
    ]);
    assert_fails(&o, 1, &[p(&nomodel)]);
    assert!(stdout(&o).is_empty());
    // The weights given to embed are checked the same way.
    let feats = dir.join("f.safetensors");
    let o = run(&[
        "embed",
        "--weights",
        p(&missing),
        "--arch",
        "resnet18",
        "--input",
        p(&img),
        "--out",
        p(&feats),
    ]);
    assert_fails(&o, 1, &[p(&missing)]);
    assert_eq!(listing(&dir), ["junk.safetensors", "other.safetensors"]);
}

#[test]
fn unreadable_images_are_named() {
    let f = fixture();
    let dir = scratch("images");
    let train = dir.join("train");
    std::fs::create_dir_all(&train).unwrap();
    for name in ["000.png", "001.png"] {
        std::fs::copy(f.data.join("train/good").join(name), train.join(name)).unwrap();
    }
    let bad = train.join("002.png");
    std::fs::write(&bad, "this is text, not a PNG\n").unwrap();
    let out = dir.join("m.safetensors");
    let mut args = vec![
        "fit",
        "--weights",
        p(&f.weights),
        "--train",
        p(&train),
        "--out",
        p(&out),
    ];
    args.extend(FIT_OPTS);
    assert_fails(&run(&args), 1, &[p(&bad)]);
    assert_eq!(listing(&dir), ["train"]);

    // predict scores the readable images, names the broken one and exits with 1.
    let o = run(&["predict", "--model", p(&f.model), "--json", p(&train)]);
    assert_fails(&o, 1, &[p(&bad), "1 of 3"]);
    let lines: Vec<_> = stdout(&o).lines().map(parse_object).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["path"].str(), p(&train.join("001.png")));

    // A stray non-image file in a folder, an empty folder, a missing path.
    std::fs::write(train.join("notes.txt"), "x").unwrap();
    let o = run(&["predict", "--model", p(&f.model), p(&train)]);
    assert_fails(&o, 1, &["notes.txt"]);
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mut args = vec![
        "fit",
        "--weights",
        p(&f.weights),
        "--train",
        p(&empty),
        "--out",
        p(&out),
    ];
    args.extend(FIT_OPTS);
    assert_fails(&run(&args), 1, &[p(&empty), "no training image"]);
    let gone = dir.join("gone");
    let o = run(&["predict", "--model", p(&f.model), p(&gone)]);
    assert_fails(&o, 1, &[p(&gone)]);
    let o = run(&["eval", "--data", p(&gone), "--model", p(&f.model)]);
    assert_fails(&o, 1, &[p(&gone)]);
    assert_eq!(listing(&dir), ["empty", "train"]);
}

#[test]
fn outputs_are_never_overwritten_without_force() {
    let f = fixture();
    let dir = scratch("outputs");
    let out = dir.join("m.safetensors");
    std::fs::write(&out, b"keep me").unwrap();
    let o = run(&fit_args(f, p(&f.weights), p(&out), &[]));
    assert_fails(&o, 1, &[p(&out), "--force"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    // An output in a folder that does not exist, or that is a folder.
    let nested = dir.join("no/such/m.safetensors");
    let o = run(&fit_args(f, p(&f.weights), p(&nested), &[]));
    assert_fails(&o, 1, &[p(&dir.join("no/such"))]);
    let o = run(&fit_args(f, p(&f.weights), p(&dir), &[]));
    assert_fails(&o, 1, &[p(&dir), "folder"]);
    assert_eq!(listing(&dir), ["m.safetensors"]);
    // With --force the file is replaced by a valid model (and no temporary file remains).
    let o = run(&fit_args(f, p(&f.weights), p(&out), &["--force"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let m = PatchCore::load(&out, BackboneSource::File(&f.weights)).unwrap();
    assert_eq!(m.memory_bank(), f.lib.memory_bank());
    assert_eq!(m.threshold(), None);
    assert_eq!(listing(&dir), ["m.safetensors"]);
}
