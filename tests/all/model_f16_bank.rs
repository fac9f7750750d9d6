//! A model fitted with an f16 memory bank: its bank is the f32 model's bank rounded to f16
//! (rounded here independently), the file is about half the size, save → load → predict is
//! bit-identical, and the accuracy cost on synthetic defects is measured against the f32
//! model (printed with `--nocapture`; bounded by assertions that can fail).

use crate::model_common::*;
use patchcore::knn::BankPrecision;
use patchcore::metrics::auroc;
use patchcore::model::{BackboneSource, PatchCore, PredictOptions, Prediction, SaveOptions};

fn predict(model: &PatchCore, images: &[image::RgbImage]) -> Vec<Prediction> {
    let opts = PredictOptions { anomaly_map: true };
    images
        .iter()
        .map(|im| model.predict(im, opts).unwrap().0)
        .collect()
}

#[test]
fn f16_bank_file_size_roundtrip_and_accuracy_cost() {
    let dir = TempDir::new("f16-bank");
    let train = normal_images(6, 40);
    let fit = |precision| {
        let mut p = small_params();
        p.bank_precision = precision;
        PatchCore::fit(p.check().unwrap(), random_backbone(1), &train, &mut |_| {})
            .unwrap()
            .0
    };
    let m32 = fit(BankPrecision::F32);
    let m16 = fit(BankPrecision::F16);
    assert_eq!(m16.bank_precision(), BankPrecision::F16);
    assert_eq!(m16.config().params().bank_precision, BankPrecision::F16);
    // Same coreset (selected on the f32 features), stored rounded.
    let rounded = m32.memory_bank().mapv(|v| half::f16::from_f32(v).to_f32());
    assert!(bits(rounded.iter()) == bits(m16.memory_bank().iter()));
    assert!(bits(rounded.iter()) != bits(m32.memory_bank().iter()));

    // File sizes: the bank dominates, so the f16 file is about half.
    let p32 = dir.join("f32.safetensors");
    let p16 = dir.join("f16.safetensors");
    m32.save(&p32, &SaveOptions::default()).unwrap();
    m16.save(&p16, &SaveOptions::default()).unwrap();
    let s32 = std::fs::metadata(&p32).unwrap().len() as f64;
    let s16 = std::fs::metadata(&p16).unwrap().len() as f64;
    let bank_bytes = (m32.index().bank_bytes() / 2) as f64;
    println!(
        "file size: f32 {s32} B, f16 {s16} B (ratio {:.3})",
        s16 / s32
    );
    assert!(
        (s32 - s16 - bank_bytes).abs() < 64.0,
        "the bank accounts for the difference"
    );
    assert!(s16 / s32 < 0.55, "ratio {}", s16 / s32);

    // The f16 file stores an F16 tensor and loads back bit-identically.
    let loaded =
        PatchCore::load(&p16, BackboneSource::Loaded(Box::new(random_backbone(1)))).unwrap();
    assert_eq!(loaded.bank_precision(), BankPrecision::F16);
    assert_eq!(loaded.config(), m16.config());
    assert_same_bank(&m16, &loaded);
    let mut test = normal_images(4, 41);
    let defects = defective_images(6, 42);
    test.extend(defects.iter().map(|(i, _, _)| i.clone()));
    let labels: Vec<bool> = (0..test.len()).map(|i| i >= 4).collect();
    let a16 = predict(&m16, &test);
    assert_same_predictions(&a16, &predict(&loaded, &test));
    // The f32 file still loads as f32.
    let loaded32 =
        PatchCore::load(&p32, BackboneSource::Loaded(Box::new(random_backbone(1)))).unwrap();
    assert_eq!(loaded32.bank_precision(), BankPrecision::F32);
    assert_same_bank(&m32, &loaded32);

    // Accuracy cost of the f16 bank.
    let a32 = predict(&m32, &test);
    let mut max_score_rel = 0.0f64;
    let mut max_map_rel = 0.0f64;
    for (x, y) in a32.iter().zip(&a16) {
        let rel = (f64::from(x.score) - f64::from(y.score)).abs() / f64::from(x.score).abs();
        max_score_rel = max_score_rel.max(rel);
        let (mx, my) = (
            x.anomaly_map.as_ref().unwrap(),
            y.anomaly_map.as_ref().unwrap(),
        );
        let scale = mx.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        for (&u, &v) in mx.iter().zip(my.iter()) {
            max_map_rel = max_map_rel.max(f64::from((u - v).abs() / scale));
        }
    }
    let s32: Vec<f32> = a32.iter().map(|p| p.score).collect();
    let s16: Vec<f32> = a16.iter().map(|p| p.score).collect();
    let (auc32, auc16) = (auroc(&labels, &s32).unwrap(), auroc(&labels, &s16).unwrap());
    println!(
        "f16 bank vs f32 bank: image scores max rel diff {max_score_rel:.2e}, anomaly maps max \
         diff {max_map_rel:.2e} of the map's max; image AUROC f32 {auc32:.4} f16 {auc16:.4}"
    );
    assert!(max_score_rel > 0.0, "the f16 rounding should show");
    assert!(
        max_score_rel <= 1e-3,
        "image scores differ by {max_score_rel:e}"
    );
    assert!(
        max_map_rel <= 1e-3,
        "anomaly maps differ by {max_map_rel:e}"
    );
    assert!((auc32 - auc16).abs() <= 0.02, "AUROC {auc32} vs {auc16}");
}
