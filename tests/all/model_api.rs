//! The model API: batch prediction against a naive nearest-neighbour reference, the meaning of
//! `Prediction::max_patch`, parameter checking, fit progress events and fit refusals.

use crate::model_common::*;
use ndarray::Array2;
use patchcore::backbone::{Backbone, Layer, ResNetSpec};
use patchcore::coreset::{CoresetSize, Sampler};
use patchcore::embedding::{self, Aggregator};
use patchcore::model::{FitProgress, PatchCore, PatchCoreParams, PredictOptions};
use patchcore::preprocess::{self, ImageLimits, Resize};
use patchcore::scoring::Distance;
use patchcore::Error;

/// Naive f64 scoring of one image's embedding rows against `bank` (docs/algorithm.md §5: mean of the k
/// nearest distances; image score = max, re-weighted by 1 − softmax(d)_0 over the b nearest
/// bank rows of m* when b > 1). Returns (patch scores, image score, argmax).
fn reference(
    rows: ndarray::ArrayView2<f32>,
    bank: ndarray::ArrayView2<f32>,
    k: usize,
    b: usize,
    distance: Distance,
) -> (Vec<f64>, f64, usize) {
    let sq = |a: ndarray::ArrayView1<f32>, c: ndarray::ArrayView1<f32>| -> f64 {
        a.iter()
            .zip(c.iter())
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
            .sum()
    };
    let sorted = |q: ndarray::ArrayView1<f32>| -> Vec<(f64, usize)> {
        let mut d: Vec<(f64, usize)> = bank
            .outer_iter()
            .enumerate()
            .map(|(j, r)| (sq(q, r), j))
            .collect();
        d.sort_by(|x, y| x.partial_cmp(y).unwrap());
        d
    };
    let scores: Vec<f64> = rows
        .outer_iter()
        .map(|q| {
            let d = sorted(q);
            d[..k]
                .iter()
                .map(|&(s, _)| match distance {
                    Distance::Euclidean => s.sqrt(),
                    Distance::SquaredL2 => s,
                })
                .sum::<f64>()
                / k as f64
        })
        .collect();
    let mut arg = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[arg] {
            arg = i;
        }
    }
    let s_star = scores[arg];
    let b = b.min(bank.nrows());
    if b <= 1 {
        return (scores, s_star, arg);
    }
    let q = rows.row(arg);
    let m_star = sorted(q)[0].1;
    let nb = sorted(bank.row(m_star));
    let mut members = vec![m_star];
    members.extend(nb.iter().map(|&(_, j)| j).filter(|&j| j != m_star));
    members.truncate(b);
    let d: Vec<f64> = members.iter().map(|&j| sq(q, bank.row(j)).sqrt()).collect();
    let max = d.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let denom: f64 = d.iter().map(|v| (v - max).exp()).sum();
    let w = 1.0 - (d[0] - max).exp() / denom;
    (scores, w * s_star, arg)
}

fn close(a: f32, b: f64, what: &str) {
    let tol = 1e-3 * b.abs().max(1.0);
    assert!(
        (f64::from(a) - b).abs() <= tol,
        "{what}: {a} vs reference {b}"
    );
}

#[test]
fn batch_prediction_matches_a_naive_reference() {
    for (k, b, distance) in [
        (1, 1, Distance::Euclidean),
        (3, 4, Distance::SquaredL2),
        (2, 9, Distance::Euclidean),
    ] {
        let mut params = small_params();
        params.coreset.size = CoresetSize::Ratio(0.25);
        params.scoring.k = k;
        params.scoring.reweight_neighbours = b;
        params.scoring.distance = distance;
        let (model, _) = PatchCore::fit(
            params.check().unwrap(),
            random_backbone(8),
            &normal_images(3, 60),
            &mut |_| {},
        )
        .unwrap();
        let p = model.config().params().clone();
        let mut images = normal_images(1, 61);
        images.extend(defective_images(2, 62).into_iter().map(|d| d.0));
        let input = preprocess::preprocess_batch(&images, &p.preprocess).unwrap();
        let (preds, _) = model
            .predict_tensor(input.view(), PredictOptions::default())
            .unwrap();
        assert_eq!(preds.len(), 3);
        // The embedding rows of the batch, image after image, 8 × 8 per image.
        let taps = model.backbone().forward(input.view()).unwrap();
        let views: Vec<_> = taps.iter().map(|t| t.view()).collect();
        let emb = embedding::embed(&views, &p.aggregator).unwrap();
        assert_eq!(emb.nrows(), 3 * 64);
        for (i, pred) in preds.iter().enumerate() {
            let rows = emb.slice(ndarray::s![i * 64..(i + 1) * 64, ..]);
            let (scores, image, arg) = reference(rows, model.memory_bank().view(), k, b, distance);
            assert_eq!(pred.patch_scores.dim(), (8, 8));
            for (j, (&got, &want)) in pred.patch_scores.iter().zip(&scores).enumerate() {
                close(got, want, &format!("k={k} image {i} patch {j}"));
            }
            close(pred.score, image, &format!("k={k} b={b} image {i} score"));
            // max_patch: row-major index of the highest patch score (the patch the image score
            // comes from).
            assert_eq!(pred.max_patch, arg, "k={k} image {i}");
            let flat: Vec<f32> = pred.patch_scores.iter().copied().collect();
            let max = flat.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(flat[pred.max_patch], max);
            assert_eq!(
                pred.patch_scores[[pred.max_patch / 8, pred.max_patch % 8]],
                max
            );
            if b == 1 {
                assert_eq!(pred.score, max);
            } else {
                assert!(
                    pred.score > 0.0 && pred.score < max,
                    "{} vs {max}",
                    pred.score
                );
            }
        }
        // One image at a time gives the same results as the batch.
        for (i, im) in images.iter().enumerate() {
            let (single, _) = model.predict(im, PredictOptions::default()).unwrap();
            close(single.score, f64::from(preds[i].score), "single vs batch");
            assert_eq!(single.max_patch, preds[i].max_patch);
            let (m1, m2) = (
                single.anomaly_map.as_ref().unwrap(),
                preds[i].anomaly_map.as_ref().unwrap(),
            );
            for (&x, &y) in m1.iter().zip(m2.iter()) {
                close(x, f64::from(y), "single vs batch map");
            }
        }
    }
}

#[test]
fn map_option_and_paths() {
    let dir = TempDir::new("api-paths");
    let mut params = small_params();
    params.coreset.size = CoresetSize::Ratio(0.25);
    let train = normal_images(3, 70);
    let paths: Vec<_> = train
        .iter()
        .enumerate()
        .map(|(i, im)| {
            let p = dir.join(&format!("{i}.png"));
            im.save(&p).unwrap();
            p
        })
        .collect();
    let limits = ImageLimits::default();
    let (a, _) = PatchCore::fit(
        params.clone().check().unwrap(),
        random_backbone(8),
        &train,
        &mut |_| {},
    )
    .unwrap();
    let (b, _) = PatchCore::fit_paths(
        params.check().unwrap(),
        random_backbone(8),
        &paths,
        &limits,
        &mut |_| {},
    )
    .unwrap();
    // PNG is lossless: the same bank from files and from memory.
    assert_same_bank(&a, &b);
    let (with, _) = a.predict(&train[0], PredictOptions::default()).unwrap();
    let (from_path, _) = a
        .predict_path(&paths[0], &limits, PredictOptions::default())
        .unwrap();
    assert_same_predictions(
        std::slice::from_ref(&with),
        std::slice::from_ref(&from_path),
    );
    let (without, _) = a
        .predict(&train[0], PredictOptions { anomaly_map: false })
        .unwrap();
    assert!(without.anomaly_map.is_none());
    assert_eq!(without.score.to_bits(), with.score.to_bits());
    // A training image scores (almost) zero: its own patches can be in the bank.
    assert!(
        with.patch_scores.iter().any(|&s| s < 1e-2),
        "{:?}",
        with.patch_scores
    );
    // A missing training file is an Io error naming it.
    let missing = dir.join("missing.png");
    let e = PatchCore::fit_paths(
        small_params().check().unwrap(),
        random_backbone(8),
        &[paths[0].clone(), missing.clone()],
        &limits,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains(&shown(&missing)), "{e}");
}

#[test]
fn check_names_the_bad_parameter() {
    type Edit = Box<dyn Fn(&mut PatchCoreParams)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("layers", Box::new(|p| p.layers = vec![])),
        (
            "layers",
            Box::new(|p| p.layers = vec![Layer::Layer2, Layer::Layer3, Layer::Layer2]),
        ),
        ("batch_size", Box::new(|p| p.batch_size = 0)),
        (
            "resize",
            Box::new(|p| p.preprocess.resize = Resize::ShorterSide(0)),
        ),
        ("crop", Box::new(|p| p.preprocess.crop = Some((0, 64)))),
        ("std", Box::new(|p| p.preprocess.std = [0.2, 0.0, 0.2])),
        (
            "mean",
            Box::new(|p| p.preprocess.mean = [f32::NAN, 0.0, 0.0]),
        ),
        (
            "patch_size",
            Box::new(|p| {
                p.aggregator = Aggregator::Average {
                    patch_size: 4,
                    target_dim: None,
                }
            }),
        ),
        (
            "target_dim",
            Box::new(|p| {
                p.aggregator = Aggregator::Original {
                    patch_size: 3,
                    pre_dim: 8,
                    target_dim: 0,
                }
            }),
        ),
        (
            "coreset ratio",
            Box::new(|p| p.coreset.size = CoresetSize::Ratio(0.0)),
        ),
        (
            "coreset ratio",
            Box::new(|p| p.coreset.size = CoresetSize::Ratio(f64::NAN)),
        ),
        (
            "coreset count",
            Box::new(|p| p.coreset.size = CoresetSize::Count(0)),
        ),
        (
            "coreset starts",
            Box::new(|p| p.coreset.sampler = Sampler::ApproximateGreedy { starts: 0 }),
        ),
        ("k", Box::new(|p| p.scoring.k = 0)),
        (
            "reweight_neighbours",
            Box::new(|p| p.scoring.reweight_neighbours = 0),
        ),
        ("sigma", Box::new(|p| p.map.sigma = Some(0.0))),
        ("truncate", Box::new(|p| p.map.truncate = f32::INFINITY)),
    ];
    for (name, edit) in &cases {
        let mut p = PatchCoreParams::default();
        edit(&mut p);
        match p.check() {
            Err(Error::InvalidParameter { name: got, reason }) => {
                assert_eq!(got, *name, "{reason}");
                assert!(!reason.is_empty());
            }
            other => panic!("{name}: expected InvalidParameter, got {other:?}"),
        }
    }
    // The defaults pass and come back unchanged.
    let c = PatchCoreParams::default().check().unwrap();
    assert_eq!(c.into_params(), PatchCoreParams::default());
}

#[test]
fn fit_reports_progress_in_order() {
    let mut params = small_params();
    params.batch_size = 2;
    params.coreset.size = CoresetSize::Ratio(0.1);
    let mut events = vec![];
    let (model, _) = PatchCore::fit(
        params.check().unwrap(),
        random_backbone(8),
        &normal_images(5, 80),
        &mut |e| events.push(e),
    )
    .unwrap();
    // 5 images × 64 patches = 320 rows; int(320 · 0.1) = 32. The coreset reports its rows
    // chosen after each greedy pass: strictly increasing, ending at all 32.
    let chosen: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            FitProgress::Coreset { selected, total } => {
                assert_eq!(*total, 32);
                Some(*selected)
            }
            _ => None,
        })
        .collect();
    assert!(!chosen.is_empty(), "{events:?}");
    assert!(chosen.windows(2).all(|w| w[0] < w[1]), "{chosen:?}");
    assert_eq!(chosen.last(), Some(&32));
    let first_coreset = events
        .iter()
        .position(|e| matches!(e, FitProgress::Coreset { .. }))
        .unwrap();
    let last_coreset = events
        .iter()
        .rposition(|e| matches!(e, FitProgress::Coreset { .. }))
        .unwrap();
    assert_eq!(last_coreset - first_coreset + 1, chosen.len(), "contiguous");
    events.retain(|e| !matches!(e, FitProgress::Coreset { .. }));
    assert_eq!(
        events,
        [
            FitProgress::Features { done: 2, total: 5 },
            FitProgress::Features { done: 4, total: 5 },
            FitProgress::Features { done: 5, total: 5 },
            FitProgress::CoresetStarted {
                rows: 320,
                keep: 32
            },
            FitProgress::Done { rows: 32 },
        ]
    );
    assert_eq!(model.memory_bank().nrows(), 32);
    // Sampler::None keeps every row, and says so.
    let mut params = small_params();
    params.coreset.sampler = Sampler::None;
    let mut events = vec![];
    PatchCore::fit(
        params.check().unwrap(),
        random_backbone(8),
        &normal_images(1, 80),
        &mut |e| events.push(e),
    )
    .unwrap();
    assert_eq!(
        &events[1..],
        [
            FitProgress::CoresetStarted { rows: 64, keep: 64 },
            FitProgress::Coreset {
                selected: 64,
                total: 64
            },
            FitProgress::Done { rows: 64 }
        ]
    );
}

#[test]
fn fit_refusals() {
    let cfg = small_params().check().unwrap();
    // No images.
    let e = PatchCore::fit(cfg.clone(), random_backbone(8), &[], &mut |_| {}).unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");
    // A backbone tapping other layers.
    let bb = Backbone::random(&ResNetSpec::resnet18(), &[Layer::Layer2], 8).unwrap();
    let e = PatchCore::fit(cfg, bb, &normal_images(1, 1), &mut |_| {}).unwrap_err();
    match &e {
        Error::InvalidParameter {
            name: "layers",
            reason,
        } => {
            assert!(reason.contains("Layer3"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // Images whose patch grids differ (no crop, two sizes, batch size 1).
    let mut p = small_params();
    p.preprocess.resize = Resize::None;
    p.preprocess.crop = None;
    p.batch_size = 1;
    let mut gen = patchcore::synthetic::Generator::new(1);
    let images = vec![gen.normal_image(64), gen.normal_image(96)];
    let e =
        PatchCore::fit(p.check().unwrap(), random_backbone(8), &images, &mut |_| {}).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidInput { reason } if reason.contains("same size")),
        "{e:?}"
    );
}

#[test]
fn from_parts_checks_the_bank() {
    let cfg = small_params().check().unwrap();
    // Wrong width for the configuration (layer2 + layer3 → 1024 with the default aggregator).
    let e = PatchCore::from_parts(cfg.clone(), random_backbone(8), Array2::zeros((4, 7)), None)
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::InvalidInput { .. } | Error::InvalidParameter { .. }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("1024"), "{e}");
    let mut bank = Array2::<f32>::zeros((4, 1024));
    bank[[1, 3]] = f32::NAN;
    assert!(PatchCore::from_parts(cfg.clone(), random_backbone(8), bank, None).is_err());
    let e =
        PatchCore::from_parts(cfg, random_backbone(8), Array2::zeros((0, 1024)), None).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidInput { .. } | Error::InvalidParameter { .. }
        ),
        "{e:?}"
    );
}
