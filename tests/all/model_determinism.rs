//! Same seed and inputs → bit-identical memory bank, scores and maps, whatever the number of
//! rayon threads, and across save / load.

use crate::model_common::*;
use patchcore::coreset::{CoresetSize, Sampler};
use patchcore::model::{BackboneSource, PatchCore, PredictOptions, Prediction, SaveOptions};

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

fn fit_and_predict(sampler: Sampler) -> (PatchCore, Vec<Prediction>) {
    let mut params = small_params();
    params.coreset.sampler = sampler;
    params.coreset.size = CoresetSize::Ratio(0.2);
    params.batch_size = 3;
    params.scoring.reweight_neighbours = 3;
    let (model, _) = PatchCore::fit(
        params.check().unwrap(),
        random_backbone(21),
        &normal_images(5, 40),
        &mut |_| {},
    )
    .unwrap();
    let mut test = normal_images(2, 41);
    test.extend(defective_images(2, 42).into_iter().map(|d| d.0));
    let (preds, _) = model
        .predict_batch(&test, PredictOptions::default())
        .unwrap();
    (model, preds)
}

#[test]
fn one_and_two_threads_give_the_same_bits() {
    for sampler in [Sampler::Greedy, Sampler::APPROXIMATE_GREEDY_DEFAULT] {
        let (m1, p1) = in_pool(1, || fit_and_predict(sampler));
        let (m2, p2) = in_pool(2, || fit_and_predict(sampler));
        assert_eq!(m1.memory_bank().nrows(), 5 * 64 / 5);
        assert_same_bank(&m1, &m2);
        assert_same_predictions(&p1, &p2);
        // The model fitted with 1 thread predicts the same bits in a 2-thread pool.
        let mut test = normal_images(2, 41);
        test.extend(defective_images(2, 42).into_iter().map(|d| d.0));
        let (p3, _) = in_pool(2, || {
            m1.predict_batch(&test, PredictOptions::default()).unwrap()
        });
        assert_same_predictions(&p1, &p3);
    }
}

#[test]
fn save_load_in_another_pool_gives_the_same_bits() {
    let dir = TempDir::new("determinism");
    let (model, preds) = in_pool(2, || fit_and_predict(Sampler::Greedy));
    let path = dir.join("m.safetensors");
    model.save(&path, &SaveOptions::default()).unwrap();
    let (loaded, again) = in_pool(1, || {
        let loaded =
            PatchCore::load(&path, BackboneSource::Loaded(Box::new(random_backbone(21)))).unwrap();
        let mut test = normal_images(2, 41);
        test.extend(defective_images(2, 42).into_iter().map(|d| d.0));
        let (p, _) = loaded
            .predict_batch(&test, PredictOptions::default())
            .unwrap();
        (loaded, p)
    });
    assert_same_bank(&model, &loaded);
    assert_same_predictions(&preds, &again);
}

#[test]
fn another_coreset_seed_gives_another_bank() {
    // Guards the tests above against comparing two constant results.
    let mk = |seed| {
        let mut params = small_params();
        params.coreset.size = CoresetSize::Ratio(0.2);
        params.coreset.seed = seed;
        PatchCore::fit(
            params.check().unwrap(),
            random_backbone(21),
            &normal_images(3, 40),
            &mut |_| {},
        )
        .unwrap()
        .0
    };
    let (a, b) = (mk(0), mk(1));
    assert!(bits(a.memory_bank().iter()) != bits(b.memory_bank().iter()));
}
