//! `evaluate::evaluate_category` on a small synthetic MVTec-style root, checked against an
//! independent fit → predict → metrics loop written here with the public API.

use std::path::PathBuf;

use ndarray::Array2;
use patchcore::backbone::{Backbone, ResNetSpec};
use patchcore::coreset::CoresetSize;
use patchcore::dataset::Category;
use patchcore::evaluate::{self, EvalOptions, EvalProgress};
use patchcore::metrics::{self, AuproConfig};
use patchcore::model::{PatchCore, PatchCoreConfig, PatchCoreParams, PredictOptions};
use patchcore::preprocess::{self, ImageLimits, Resize};
use patchcore::synthetic::{self, SyntheticSpec};

/// A fresh temporary data root, removed when dropped (also when the test fails).
struct Root(PathBuf);

impl Root {
    fn new(name: &str) -> Root {
        let d =
            std::env::temp_dir().join(format!("patchcore-evaluate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Root(d)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_root(name: &str) -> (Root, Vec<Category>) {
    let root = Root::new(name);
    let r = root.0.clone();
    let cats = [("weave", 3), ("mesh", 4)]
        .iter()
        .map(|&(cat, seed)| {
            let spec = SyntheticSpec {
                size: 80,
                train: 4,
                test_good: 3,
                test_per_defect: 2,
                seed,
            };
            Category::open(&synthetic::write_category(&r, cat, &spec).unwrap()).unwrap()
        })
        .collect();
    (root, cats)
}

fn config(seed: u64) -> PatchCoreConfig {
    let mut p = PatchCoreParams::default();
    p.preprocess.resize = Resize::ShorterSide(96);
    p.preprocess.crop = Some((64, 64));
    p.coreset.size = CoresetSize::Ratio(0.25);
    p.coreset.seed = seed;
    p.batch_size = 3;
    p.check().unwrap()
}

fn backbone(cfg: &PatchCoreConfig) -> Backbone {
    Backbone::random(
        &ResNetSpec::from_name("resnet18").unwrap(),
        &cfg.params().layers,
        0,
    )
    .unwrap()
}

/// Pairwise Mann-Whitney AUROC with half credit for ties (O(P·N), test-only reference).
fn naive_auroc(labels: &[bool], scores: &[f32]) -> f64 {
    let (mut num, mut pairs) = (0.0, 0.0);
    for (i, &li) in labels.iter().enumerate() {
        for (j, &lj) in labels.iter().enumerate() {
            if li && !lj {
                pairs += 1.0;
                num += match scores[i].partial_cmp(&scores[j]).unwrap() {
                    std::cmp::Ordering::Greater => 1.0,
                    std::cmp::Ordering::Equal => 0.5,
                    std::cmp::Ordering::Less => 0.0,
                };
            }
        }
    }
    num / pairs
}

#[test]
fn evaluate_category_equals_an_independent_fit_predict_metrics_loop() {
    let (_root, cats) = write_root("indep");
    let opts = EvalOptions::default();
    let mut runs = Vec::new();
    for cat in &cats {
        for seed in [0u64, 1] {
            let cfg = config(seed);
            let mut events = Vec::new();
            let eval =
                evaluate::evaluate_category(cat, cfg.clone(), backbone(&cfg), &opts, &mut |e| {
                    events.push(e)
                })
                .unwrap();

            // The same run done by hand.
            let limits = ImageLimits::default();
            let (model, _) = PatchCore::fit_paths(
                cfg.clone(),
                backbone(&cfg),
                &cat.train,
                &limits,
                &mut |_| {},
            )
            .unwrap();
            let (mut labels, mut scores, mut maps, mut masks) = (vec![], vec![], vec![], vec![]);
            for s in &cat.test {
                let (p, _) = model
                    .predict_path(&s.image, &limits, PredictOptions { anomaly_map: true })
                    .unwrap();
                let map = p.anomaly_map.unwrap();
                let mask = match &s.mask {
                    Some(m) => preprocess::preprocess_mask(
                        &preprocess::load_mask(m, &limits).unwrap(),
                        &cfg.params().preprocess,
                    )
                    .unwrap(),
                    None => Array2::from_elem((64, 64), false),
                };
                labels.push(s.defect != "good");
                scores.push(p.score);
                maps.push(map);
                masks.push(mask);
            }
            let pr = &eval.predictions;
            assert_eq!(pr.labels, labels);
            assert_eq!(pr.scores, scores, "{} seed {seed}", cat.name);
            assert_eq!(pr.masks, masks);
            assert_eq!(pr.maps, maps);
            assert!(masks
                .iter()
                .zip(&labels)
                .all(|(m, &l)| m.iter().any(|&x| x) == l));

            let mv: Vec<_> = maps.iter().map(|m| m.view()).collect();
            let kv: Vec<_> = masks.iter().map(|m| m.view()).collect();
            let m = &eval.metrics;
            let a = m.accuracy;
            assert_eq!(a.image_auroc, metrics::auroc(&labels, &scores).unwrap());
            assert!((a.image_auroc - naive_auroc(&labels, &scores)).abs() < 1e-12);
            assert_eq!(a.pixel_auroc, metrics::pixel_auroc(&kv, &mv).unwrap());
            assert_eq!(
                a.aupro,
                metrics::aupro(&kv, &mv, &AuproConfig::default()).unwrap()
            );
            assert_eq!(
                a.image_f1_max,
                metrics::f1_max(&labels, &scores).unwrap().f1
            );

            assert_eq!(m.category, cat.name);
            assert_eq!(m.seed, seed);
            assert_eq!((m.n_train, m.n_test, m.n_anomalous), (4, 7, 4));
            // 4 images × 8×8 patches (64 px / stride 8), 25 % kept.
            assert_eq!(m.memory_bank_rows, 64);
            assert_eq!(m.memory_bank_rows, model.memory_bank().nrows());
            assert!(m.fit_seconds > 0.0 && m.predict_ms_per_image > 0.0);
            assert_eq!(
                events.last(),
                Some(&EvalProgress::Predicted { done: 7, total: 7 })
            );
            runs.push(eval.metrics);
        }
    }
    let sums = evaluate::summarize(&runs).unwrap();
    assert_eq!(sums.len(), 2);
    for (k, s) in sums.iter().enumerate() {
        let (r0, r1) = (&runs[2 * k], &runs[2 * k + 1]);
        let (x, y) = (r0.accuracy.image_auroc, r1.accuracy.image_auroc);
        assert!((s.image_auroc.mean - (x + y) / 2.0).abs() < 1e-15);
        assert_eq!((s.image_auroc.min, s.image_auroc.max), (x.min(y), x.max(y)));
    }
    let mean = evaluate::mean_over_categories(&runs).unwrap();
    let all: f64 = runs.iter().map(|r| r.accuracy.aupro).sum::<f64>() / 4.0;
    assert!((mean.aupro.mean - all).abs() < 1e-12);
}

#[test]
fn batched_prediction_matches_one_image_at_a_time() {
    let (_root, cats) = write_root("batch");
    let cat = &cats[0];
    let cfg = config(0);
    let one = evaluate::evaluate_category(
        cat,
        cfg.clone(),
        backbone(&cfg),
        &EvalOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let opts = EvalOptions {
        batch_size: 3,
        ..EvalOptions::default()
    };
    let mut seen = Vec::new();
    let three = evaluate::evaluate_category(cat, cfg.clone(), backbone(&cfg), &opts, &mut |e| {
        if let EvalProgress::Predicted { done, .. } = e {
            seen.push(done)
        }
    })
    .unwrap();
    assert_eq!(seen, vec![3, 6, 7]);
    for (a, b) in one.predictions.scores.iter().zip(&three.predictions.scores) {
        assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
    }
    assert_eq!(one.predictions.labels, three.predictions.labels);
    let e = evaluate::evaluate_category(
        cat,
        cfg.clone(),
        backbone(&cfg),
        &EvalOptions {
            batch_size: 0,
            ..EvalOptions::default()
        },
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("batch_size"), "{e}");
}
