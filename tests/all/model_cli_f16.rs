//! `patchcore fit --bank-f16` writes a model whose memory bank is the library's f32 bank
//! rounded to f16 (rounded here independently), stored as F16.

use crate::cli_common::*;
use patchcore::knn::BankPrecision;
use patchcore::model::{BackboneSource, PatchCore};

/// This module's fixture (in its own folder, see [`fixture_for`]).
fn fixture() -> &'static Fixture {
    fixture_for(module_path!())
}

/// A fresh empty folder for one test, under this module's fixture.
fn scratch(name: &str) -> std::path::PathBuf {
    fixture().scratch(name)
}

#[test]
fn fit_bank_f16_stores_the_rounded_bank() {
    let f = fixture();
    let dir = scratch("bank-f16");
    let out = dir.join("f16.safetensors");
    let o = run(&fit_args(f, p(&f.weights), p(&out), &["--bank-f16"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("F16"), "{}", stderr(&o));
    let m = PatchCore::load(&out, BackboneSource::File(&f.weights)).unwrap();
    assert_eq!(m.bank_precision(), BankPrecision::F16);
    let bare = PatchCore::load(&f.bare_model, BackboneSource::File(&f.weights)).unwrap();
    assert_eq!(bare.bank_precision(), BankPrecision::F32);
    let want = bare.memory_bank().mapv(|v| half::f16::from_f32(v).to_f32());
    assert_eq!(m.memory_bank(), want.view());
    // Same options otherwise: the bare (f32, no weights, no threshold) file is about twice
    // as large.
    let s16 = std::fs::metadata(&out).unwrap().len() as f64;
    let s32 = std::fs::metadata(&f.bare_model).unwrap().len() as f64;
    assert!(s16 / s32 < 0.6, "{s16} vs {s32}");
}
