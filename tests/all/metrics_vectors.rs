//! docs/algorithm.md §10 vectors 9–12 and hand-computed cases for the metrics.

use ndarray::{array, Array2};
use patchcore::metrics::{
    aupro, auroc, f1_max, is_anomalous, pixel_auroc, threshold_from_normal, AuproConfig,
    AuproVariant, Decision, NormalThreshold,
};
use patchcore::Error;

fn close(a: f64, b: f64, tol: f64) {
    assert!((a - b).abs() <= tol, "{a} vs {b} (tol {tol})");
}

#[test]
fn auroc_spec_vector_9() {
    let y = [false, false, true, true];
    assert_eq!(auroc(&y, &[0.1f32, 0.4, 0.35, 0.8]).unwrap(), 0.75);
    let y = [false, true, false, true];
    assert_eq!(auroc(&y, &[0.5f32, 0.5, 0.2, 0.9]).unwrap(), 0.875);
    assert_eq!(auroc(&y, &[0.3f32; 4]).unwrap(), 0.5);
    // Same in f64.
    assert_eq!(auroc(&y, &[0.5f64, 0.5, 0.2, 0.9]).unwrap(), 0.875);
}

#[test]
fn auroc_signed_zero_is_a_tie() {
    let y = [false, true];
    assert_eq!(auroc(&y, &[0.0f32, -0.0]).unwrap(), 0.5);
}

#[test]
fn auroc_errors() {
    let bad = |r: patchcore::Result<f64>| matches!(r, Err(Error::InvalidInput { .. }));
    assert!(bad(auroc(&[true, false], &[0.1f32])));
    assert!(bad(auroc::<f32>(&[], &[])));
    assert!(bad(auroc(&[true, true], &[0.1f32, 0.2])));
    assert!(bad(auroc(&[false, false], &[0.1f32, 0.2])));
    assert!(bad(auroc(&[true, false], &[f32::NAN, 0.2])));
    // Infinite scores are ordered normally.
    assert_eq!(auroc(&[true, false], &[f32::INFINITY, 0.2]).unwrap(), 1.0);
}

#[test]
fn pixel_auroc_over_all_pixels() {
    // Image 0 has a defect; image 1 is good (its pixels are all negatives).
    let m0 = array![[true, false], [false, false]];
    let s0 = array![[0.9f32, 0.1], [0.2, 0.95]];
    let m1 = Array2::from_elem((1, 3), false);
    let s1 = array![[0.5f32, 0.05, 0.92]];
    // Positive 0.9 beats negatives 0.1, 0.2, 0.5, 0.05 and loses to 0.95, 0.92 → 4/6.
    let v = pixel_auroc(&[m0.view(), m1.view()], &[s0.view(), s1.view()]).unwrap();
    close(v, 4.0 / 6.0, 1e-15);
    let e = pixel_auroc(&[m0.view()], &[s1.view()]).unwrap_err();
    assert!(e.to_string().contains("image 0"), "{e}");
}

#[test]
fn f1_spec_vector_10() {
    let y = [false, false, true, true, true];
    let r = f1_max(&y, &[0.1f32, 0.6, 0.4, 0.7, 0.9]).unwrap();
    close(r.f1, 6.0 / 7.0, 1e-15);
    assert_eq!(r.threshold, f64::from(0.4f32));
    close(r.precision, 0.75, 1e-15);
    close(r.recall, 1.0, 1e-15);
}

#[test]
fn f1_ties_pick_lowest_threshold_and_no_negatives() {
    // t=0.8: TP1 FP0 → F1 = 2/3; t=0.5: TP1 FP1 → 2/4; t=0.2: TP2 FP1 → 4/5.
    // t=0.1: TP2 FP2 → 4/6. Max at 0.2.
    let y = [true, false, true, false];
    let r = f1_max(&y, &[0.8f64, 0.5, 0.2, 0.1]).unwrap();
    close(r.f1, 0.8, 1e-15);
    assert_eq!(r.threshold, 0.2);
    // Exact F1 tie: t=0.9 (TP1 FP0, P=2 → 2/3) and t=0.3 (TP2 FP2 → 4/6): lowest wins.
    let y = [true, false, false, true];
    let r = f1_max(&y, &[0.9f64, 0.6, 0.5, 0.3]).unwrap();
    close(r.f1, 2.0 / 3.0, 1e-15);
    assert_eq!(r.threshold, 0.3);
    let r = f1_max(&[true, true], &[0.2f32, 0.7]).unwrap();
    assert_eq!((r.f1, r.threshold), (1.0, f64::from(0.2f32)));
    assert!(f1_max(&[false, false], &[0.2f32, 0.7]).is_err());
    assert!(f1_max(&[true, false], &[0.2f32, f32::NAN]).is_err());
}

fn v11() -> (Array2<bool>, Array2<f32>) {
    let gt = array![
        [true, true, false, false, false],
        [false, false, false, false, true]
    ];
    let s = array![[0.9f32, 0.3, 0.1, 0.2, 0.4], [0.5, 0.7, 0.05, 0.15, 0.6]];
    (gt, s)
}

#[test]
fn aupro_spec_vector_11_mvtec_reference() {
    let (gt, s) = v11();
    for nt in [None, Some(7), Some(8), Some(50), Some(1000)] {
        let cfg = AuproConfig {
            num_thresholds: nt,
            ..AuproConfig::default()
        };
        let v = aupro(&[gt.view()], &[s.view()], &cfg).unwrap();
        close(v, 0.631548, 5e-7);
        // Hand value: (0.5/7 + 0.75/7 + 0.7625·(0.3 − 2/7)) / 0.3.
        close(
            v,
            (0.5 / 7.0 + 0.75 / 7.0 + 0.7625 * (0.3 - 2.0 / 7.0)) / 0.3,
            1e-12,
        );
    }
}

#[test]
fn aupro_spec_vector_11_exact_step() {
    let (gt, s) = v11();
    let cfg = AuproConfig {
        variant: AuproVariant::ExactStep,
        ..AuproConfig::default()
    };
    let v = aupro(&[gt.view()], &[s.view()], &cfg).unwrap();
    close(v, 0.511905, 5e-7);
    close(
        v,
        (0.25 / 7.0 + 0.75 / 7.0 + 0.75 * (0.3 - 2.0 / 7.0)) / 0.3,
        1e-12,
    );
    // With s as f64 too.
    let s64 = s.mapv(f64::from);
    let v64 = aupro(&[gt.view()], &[s64.view()], &cfg).unwrap();
    close(v64, v, 1e-12);
}

#[test]
fn aupro_regions_are_eight_connected() {
    // GT pixels (0,0), (1,1), (1,2): one 8-connected region of 3 (4-connectivity would give
    // {(0,0)} and {(1,1),(1,2)}). Normal scores sorted [0.05, 0.1, 0.2], n = 3.
    //   p=2 (t=0.2): FPR 0,   PRO = 1/3 (only the 0.9 pixel)   [4-conn: (1+0)/2 = 0.5]
    //   p=1 (t=0.1): FPR 1/3, PRO = 1
    //   At FPR 0.3: PRO = 1/3 + (2/3)·0.9 = 0.9333…; area/0.3 = (1/3 + 0.9333…)/2.
    let gt = array![[true, false, false], [false, true, true]];
    let s = array![[0.9f32, 0.1, 0.2], [0.05, 0.15, 0.15]];
    let v = aupro(&[gt.view()], &[s.view()], &AuproConfig::default()).unwrap();
    close(v, 0.5 * (1.0 / 3.0 + 1.0 / 3.0 + 0.6), 1e-12);
}

#[test]
fn aupro_errors() {
    let (gt, s) = v11();
    let none = Array2::from_elem((2, 5), false);
    assert!(matches!(
        aupro(&[none.view()], &[s.view()], &AuproConfig::default()),
        Err(Error::InvalidInput { .. })
    ));
    let all = Array2::from_elem((2, 5), true);
    assert!(aupro(&[all.view()], &[s.view()], &AuproConfig::default()).is_err());
    let mut nan = s.clone();
    nan[[1, 1]] = f32::NAN;
    assert!(aupro(&[gt.view()], &[nan.view()], &AuproConfig::default()).is_err());
    for cfg in [
        AuproConfig {
            fpr_limit: 0.0,
            ..AuproConfig::default()
        },
        AuproConfig {
            fpr_limit: 1.5,
            ..AuproConfig::default()
        },
        AuproConfig {
            num_thresholds: Some(1),
            ..AuproConfig::default()
        },
    ] {
        assert!(matches!(
            aupro(&[gt.view()], &[s.view()], &cfg),
            Err(Error::InvalidParameter { .. })
        ));
    }
    let small = Array2::<f32>::zeros((2, 4));
    assert!(aupro(&[gt.view()], &[small.view()], &AuproConfig::default()).is_err());
    assert!(aupro::<f32>(&[], &[], &AuproConfig::default()).is_err());
}

#[test]
fn normal_thresholds() {
    let s = [3.0f32, 1.0, 4.0, 1.0, 5.0];
    assert_eq!(
        threshold_from_normal(&s, NormalThreshold::Max).unwrap(),
        5.0
    );
    // sorted [1,1,3,4,5]; q=0.75 → h = 3 → 4; q=0.6 → h = 2.4 → 3 + 0.4·1 = 3.4.
    assert_eq!(
        threshold_from_normal(&s, NormalThreshold::Quantile(0.75)).unwrap(),
        4.0
    );
    assert_eq!(
        threshold_from_normal(&s, NormalThreshold::Quantile(0.6)).unwrap(),
        3.4f32
    );
    assert_eq!(
        threshold_from_normal(&s, NormalThreshold::Quantile(0.0)).unwrap(),
        1.0
    );
    // mean 2.8, population var = (0.04+3.24+1.44+3.24+4.84)/5 = 2.56, std 1.6.
    assert_eq!(
        threshold_from_normal(&s, NormalThreshold::MeanPlusStd(2.0)).unwrap(),
        6.0
    );
    assert!(threshold_from_normal(&[], NormalThreshold::Max).is_err());
    assert!(threshold_from_normal(&[f32::NAN], NormalThreshold::Max).is_err());
    assert!(threshold_from_normal(&s, NormalThreshold::Quantile(1.1)).is_err());
    assert!(threshold_from_normal(&s, NormalThreshold::MeanPlusStd(f64::NAN)).is_err());
}

#[test]
fn decisions() {
    assert!(is_anomalous(0.5, 0.5));
    assert!(!is_anomalous(0.49, 0.5));
    assert!(is_anomalous(f32::NAN, 0.5));
    let d = Decision::new(0.7, 0.5);
    assert_eq!((d.score, d.threshold, d.anomalous), (0.7, 0.5, true));
}

#[test]
fn f1_threshold_round_trips_negative_scores() {
    // t = −0.3: TP 2, FP 0 → F1 = 1; the threshold is reported exactly.
    let y = [true, false, true];
    let r = f1_max(&y, &[-0.3f32, -0.9, -0.1]).unwrap();
    assert_eq!((r.f1, r.threshold), (1.0, f64::from(-0.3f32)));
    let r = f1_max(&y, &[-0.3f64, -0.9, -0.1]).unwrap();
    assert_eq!(r.threshold, -0.3);
    let r = f1_max(&[true, false], &[-0.0f32, -1.0]).unwrap();
    assert_eq!(r.threshold, 0.0);
}
