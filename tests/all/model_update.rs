//! Incremental update ("teach good"): images already fitted add nothing, a new kind of normal
//! image is learnt while the anomalies stay anomalous, the model file keeps the radius, the
//! images seen and the history, and files without those keys still load.

use crate::model_common::*;
use image::{Rgb, RgbImage};
use patchcore::coreset::Sampler;
use patchcore::model::{BackboneSource, PatchCore, PredictOptions, SaveOptions};
use patchcore::Error;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Another texture than `synthetic::normal_image`'s woven stripes: blue diagonal stripes with
/// a coarser period, one of four phases, and a little noise.
fn diagonal_images(n: usize, seed: u64) -> Vec<RgbImage> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let phase = rng.random_range(0..4) as f32 * std::f32::consts::FRAC_PI_2;
            let mut img = RgbImage::new(SIZE, SIZE);
            for (x, y, px) in img.enumerate_pixels_mut() {
                let v = 0.5
                    + 0.4 * ((x + y) as f32 * 0.45 + phase).sin()
                    + 0.02 * rng.random_range(-1.0f32..1.0);
                *px = Rgb([
                    (40.0 + 50.0 * v) as u8,
                    (70.0 + 60.0 * v) as u8,
                    (120.0 + 120.0 * v) as u8,
                ]);
            }
            img
        })
        .collect()
}

fn fitted(train: &[RgbImage]) -> PatchCore {
    let (m, _) = PatchCore::fit(
        small_params().check().unwrap(),
        random_backbone(7),
        train,
        &mut |_| {},
    )
    .unwrap();
    m
}

fn scores(m: &PatchCore, images: &[RgbImage]) -> Vec<f32> {
    images
        .iter()
        .map(|i| {
            m.predict(i, PredictOptions { anomaly_map: false })
                .unwrap()
                .0
                .score
        })
        .collect()
}

#[test]
fn updating_with_the_training_images_adds_no_row() {
    let train = normal_images(6, 1);
    let mut m = fitted(&train);
    let before = m.memory_bank().to_owned();
    let r = m.update(&train, &mut |_| {}).unwrap();
    assert_eq!(r.rows_added, 0);
    assert_eq!(r.patches, 6 * 64);
    assert_eq!(m.memory_bank(), before.view());
    assert_eq!(m.images_seen(), Some(12));
    assert_eq!(m.update_history().len(), 1);
    assert_eq!(m.update_history()[0].images, 6);
}

#[test]
fn a_new_kind_of_normal_image_is_learnt_and_anomalies_stay_anomalous() {
    let train = normal_images(8, 1);
    let held_out = normal_images(4, 2);
    let mut m = fitted(&train);
    let threshold = scores(&m, &held_out).into_iter().fold(f32::MIN, f32::max) * 1.0001;
    m.set_threshold(Some(threshold));
    let anomalies: Vec<RgbImage> = defective_images(6, 3).into_iter().map(|d| d.0).collect();
    let detected: Vec<RgbImage> = anomalies
        .iter()
        .zip(scores(&m, &anomalies))
        .filter(|(_, s)| *s >= threshold)
        .map(|(i, _)| i.clone())
        .collect();
    assert!(
        detected.len() >= 3,
        "the fit detects too few anomalies to test"
    );
    let new_kind = diagonal_images(6, 4);
    let new_test = diagonal_images(3, 5);
    // Before the update the new texture is judged anomalous (else the test proves nothing).
    assert!(scores(&m, &new_test).iter().all(|&s| s >= threshold));
    let rows = m.memory_bank().nrows();
    let r = m.update(&new_kind, &mut |_| {}).unwrap();
    assert!(r.rows_added > 0);
    assert_eq!(m.memory_bank().nrows(), rows + r.rows_added);
    assert_eq!(m.threshold(), Some(threshold), "the threshold is kept");
    // The images taught and unseen images of the same kind are now judged good.
    for (i, s) in scores(&m, &new_kind).into_iter().enumerate() {
        assert!(s < threshold, "taught image {i}: {s} ≥ {threshold}");
    }
    for (i, s) in scores(&m, &new_test).into_iter().enumerate() {
        assert!(s < threshold, "new-kind image {i}: {s} ≥ {threshold}");
    }
    for (i, s) in scores(&m, &detected).into_iter().enumerate() {
        assert!(s >= threshold, "anomaly {i}: {s} < {threshold}");
    }
    // Updating again with the same images adds nothing more.
    assert_eq!(m.update(&new_kind, &mut |_| {}).unwrap().rows_added, 0);
}

#[test]
fn the_model_file_keeps_radius_images_and_history_and_old_files_load() {
    let train = normal_images(4, 1);
    let mut m = fitted(&train);
    m.update(&diagonal_images(2, 4), &mut |_| {}).unwrap();
    let dir = TempDir::new("update-file");
    let path = dir.join("m.safetensors");
    m.save(&path, &SaveOptions::default()).unwrap();
    let back =
        PatchCore::load(&path, BackboneSource::Loaded(Box::new(random_backbone(7)))).unwrap();
    assert_eq!(
        back.coverage_radius().map(f32::to_bits),
        m.coverage_radius().map(f32::to_bits)
    );
    assert_eq!(back.images_seen(), Some(6));
    assert_eq!(back.update_history(), m.update_history());

    // A file written before these keys existed.
    let bytes = std::fs::read(&path).unwrap();
    let old = rewrite(&bytes, |meta, _| {
        meta.remove("coreset.coverage_radius");
        meta.remove("images_seen");
        meta.remove("update_history");
    });
    let mut old = PatchCore::load_bytes(
        &old,
        &path,
        BackboneSource::Loaded(Box::new(random_backbone(7))),
    )
    .unwrap();
    assert_eq!(old.coverage_radius(), None);
    assert_eq!(old.images_seen(), None);
    assert_same_bank(&old, &back);
    let rows = old.memory_bank().nrows();
    match old.update(&train, &mut |_| {}) {
        Err(Error::InvalidInput { reason }) => {
            assert!(
                reason.contains("coverage radius") && reason.contains("refit"),
                "{reason}"
            )
        }
        other => panic!("expected a clear refusal, got {other:?}"),
    }
    assert_eq!(old.memory_bank().nrows(), rows, "unchanged on error");
}

#[test]
fn random_sampler_refuses_and_no_sampler_adds_every_patch() {
    let train = normal_images(3, 1);
    for sampler in [Sampler::Random, Sampler::None] {
        let mut p = small_params();
        p.coreset.sampler = sampler;
        let (mut m, _) =
            PatchCore::fit(p.check().unwrap(), random_backbone(7), &train, &mut |_| {}).unwrap();
        let rows = m.memory_bank().nrows();
        let r = m.update(&train[..1], &mut |_| {});
        match sampler {
            Sampler::Random => assert!(matches!(r, Err(Error::InvalidParameter { .. }))),
            _ => {
                assert_eq!(r.unwrap().rows_added, 64);
                assert_eq!(m.memory_bank().nrows(), rows + 64);
            }
        }
    }
}

#[test]
fn update_checks_the_working_set_before_allocating() {
    let train = normal_images(4, 1);
    let mut m = fitted(&train);
    let before = m.memory_bank().to_owned();
    let dir = std::env::temp_dir().join(format!("patchcore-update-ws-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("big.png");
    // 400 × 400 RGB decodes to 480,000 bytes alone: above a 256 KiB working-set limit.
    RgbImage::from_pixel(400, 400, Rgb([90, 120, 60]))
        .save(&big)
        .unwrap();
    let limits = patchcore::preprocess::ImageLimits {
        max_working_set_bytes: 256 * 1024,
        ..Default::default()
    };
    match m.update_paths(std::slice::from_ref(&big), &limits, &mut |_| {}) {
        Err(Error::LimitExceeded { reason }) => assert!(reason.contains("MiB"), "{reason}"),
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    // Refused before anything changed; with the default limits the same image is accepted.
    assert_eq!(m.memory_bank(), before.view());
    assert_eq!(m.update_history().len(), 0);
    let r = m
        .update_paths(std::slice::from_ref(&big), &Default::default(), &mut |_| {})
        .unwrap();
    assert_eq!(r.images, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
