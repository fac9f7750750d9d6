//! The memory-budgeted fit: the plan and its estimate, the refusal under a tiny budget, and the
//! spilled fit's bank against the in-memory fit's, bit for bit.

// A crate of its own, not a module of the merged test crate `tests/all`:
// `the_spill_plan_holds_less_and_the_budget_picks_it` plans fits whose estimates include this
// process's resident size, read at each call, and needs it to move by less than a few MiB
// between calls; in `tests/all` the other modules' tests run beside it in the same process.
// The helpers are shared with `tests/all`, whose modules use the ones this file does not.
#[allow(dead_code)]
#[path = "all/model_common.rs"]
mod model_common;

use model_common::*;
use patchcore::coreset::{CoresetConfig, CoresetSize, Sampler};
use patchcore::embedding::Aggregator;
use patchcore::model::{
    spill_path, FitOptions, FitPlan, FitProgress, PatchCore, PatchCoreParams, PredictOptions,
};
use patchcore::Error;

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// The paper's 1024-d features, projected to 128-d for the greedy (at these sizes the matrix
/// product's bits depend on how rows are grouped, so the spilled fit must group them as the
/// in-memory fit does).
fn params(sampler: Sampler) -> PatchCoreParams {
    let mut p = small_params();
    p.coreset = CoresetConfig {
        sampler,
        size: CoresetSize::Ratio(0.1),
        projection_dim: 128,
        seed: 11,
    };
    p
}

/// 48-d features projected to 8-d: small enough for plan arithmetic by hand.
fn small_dim_params() -> PatchCoreParams {
    let mut p = params(Sampler::Greedy);
    p.aggregator = Aggregator::Average {
        patch_size: 3,
        target_dim: Some(48),
    };
    p.coreset.projection_dim = 8;
    p
}

fn fit(
    p: PatchCoreParams,
    images: &[image::RgbImage],
    opts: &FitOptions,
) -> patchcore::Result<(PatchCore, patchcore::model::FitReport, Vec<FitProgress>)> {
    let mut seen = Vec::new();
    let (m, r) = PatchCore::fit_with_options(
        p.check().unwrap(),
        tiny_backbone(3),
        images,
        opts,
        &mut |e| seen.push(e),
    )?;
    Ok((m, r, seen))
}

/// 70 images × 64 patches = 4,480 rows: the projection runs in two blocks (4,096 + 384), which
/// the spilled fit must reproduce from rows arriving 4 images at a time.
#[test]
fn spilled_fit_equals_in_memory_fit_bit_for_bit_on_1_and_2_threads() {
    let images = normal_images(70, 21);
    let dir = TempDir::new("spill-equal");
    let out = dir.join("m.safetensors");
    for sampler in [
        Sampler::Greedy,
        Sampler::APPROXIMATE_GREEDY_DEFAULT,
        Sampler::Random,
    ] {
        let mem = FitOptions::default();
        let (a, ra, _) = in_pool(1, || fit(params(sampler), &images, &mem)).unwrap();
        assert_eq!(ra.estimate.plan, FitPlan::InMemory);
        for threads in [1, 2] {
            let spill = FitOptions {
                spill_path: Some(spill_path(&out)),
                force_plan: Some(FitPlan::Spill),
                ..FitOptions::default()
            };
            let (b, rb, events) =
                in_pool(threads, || fit(params(sampler), &images, &spill)).unwrap();
            assert_eq!(rb.estimate.plan, FitPlan::Spill);
            assert_eq!(a.memory_bank().nrows(), 448);
            assert_same_bank(&a, &b);
            assert_eq!(
                a.coverage_radius().map(f32::to_bits),
                b.coverage_radius().map(f32::to_bits),
                "{sampler:?}"
            );
            assert_eq!(b.images_seen(), Some(70));
            // The spilled fit stashed the backbone's weights on disk during its coreset stage
            // and put them back: the fitted model scores an image exactly as the other.
            // Under a budget the kNN's bf16 screening copy is not built; it can be turned on.
            let mut b = b;
            assert!(!b.index().screening());
            b.set_screening(true);
            assert_eq!(b.index().screening(), a.index().screening());
            let x = &images[3];
            let (pa, _) = a.predict(x, PredictOptions::default()).unwrap();
            let (pb, _) = b.predict(x, PredictOptions::default()).unwrap();
            assert_eq!(pa.score.to_bits(), pb.score.to_bits(), "{sampler:?}");
            // The coreset reports its progress, ending at the full count, and the gather.
            let coreset: Vec<_> = events
                .iter()
                .filter_map(|e| match e {
                    FitProgress::Coreset { selected, total } => Some((*selected, *total)),
                    _ => None,
                })
                .collect();
            assert_eq!(coreset.last(), Some(&(448, 448)));
            assert!(events.contains(&FitProgress::Gathering { rows: 448 }));
            // The spill file is gone.
            assert!(dir.files().is_empty(), "{:?}", dir.files());
        }
        if sampler == Sampler::Random {
            assert_eq!(a.coverage_radius(), None);
        } else {
            assert!(a.coverage_radius().unwrap() > 0.0);
        }
    }
}

#[test]
fn the_spill_plan_holds_less_and_the_budget_picks_it() {
    let p = small_dim_params().check().unwrap();
    let bb = tiny_backbone(3);
    let force = |plan| FitOptions {
        force_plan: Some(plan),
        spill_path: Some("x".into()),
        ..FitOptions::default()
    };
    let mem = PatchCore::plan_fit(&p, &bb, 1000, (96, 96), &force(FitPlan::InMemory)).unwrap();
    let spill = PatchCore::plan_fit(&p, &bb, 1000, (96, 96), &force(FitPlan::Spill)).unwrap();
    // 1000 images × 64 patches: features 64,000 × 48 × 4 B, projection 64,000 × 8 × 4 B.
    assert_eq!(mem.rows, 64_000);
    assert_eq!(mem.keep, 6_400);
    assert_eq!(mem.stage_bytes("features"), 64_000 * 48 * 4);
    // The spill plan's coreset stage: the projection once (blocked; 64,000 is a multiple of
    // 16), the emitted rows (keep + 1) × 8, keys/owners/squares 64,000 × 3, and the
    // centre–centre table (keep + 1) × 130 × 2 B (16-bit), the rest 4 B.
    assert_eq!(
        spill.stage_bytes("coreset"),
        (64_000 * 8 + 6_401 * 8 + 64_000 * 3) * 4 + 6_401 * 130 * 2
    );
    // The in-memory plan holds the row-major projection beside the blocked one (until it is
    // blocked) and the features.
    assert_eq!(
        mem.stage_bytes("coreset"),
        (64_000 * 48 + 2 * 64_000 * 8 + 6_401 * 8 + 64_000 * 3) * 4 + 6_401 * 130 * 2
    );
    assert_eq!(spill.stage_bytes("gather"), 6_400 * 48 * 4);
    assert!(spill.peak() < mem.peak());
    let between = spill.peak() + (mem.peak() - spill.peak()) / 2;
    assert!(mem.peak() - spill.peak() > 128 << 10);
    let opts = FitOptions {
        max_memory: Some(between),
        spill_path: Some("x".into()),
        force_plan: None,
    };
    let chosen = PatchCore::plan_fit(&p, &bb, 1000, (96, 96), &opts).unwrap();
    assert_eq!(chosen.plan, FitPlan::Spill);
    let roomy = FitOptions {
        // (The baseline is the resident size at the call: leave room for it to move.)
        max_memory: Some(mem.peak() + (64 << 20)),
        ..opts.clone()
    };
    let chosen = PatchCore::plan_fit(&p, &bb, 1000, (96, 96), &roomy).unwrap();
    assert_eq!(chosen.plan, FitPlan::InMemory);
    // Without a spill location the spill plan is out of reach.
    let nowhere = FitOptions {
        spill_path: None,
        ..opts
    };
    assert!(matches!(
        PatchCore::plan_fit(&p, &bb, 1000, (96, 96), &nowhere),
        Err(Error::MemoryBudget { .. })
    ));
}

#[test]
fn a_tiny_budget_is_refused_before_any_work_and_leaves_no_file() {
    let images = normal_images(3, 2);
    let dir = TempDir::new("tiny-budget");
    let opts = FitOptions {
        max_memory: Some(1 << 20),
        spill_path: Some(spill_path(&dir.join("m.safetensors"))),
        force_plan: None,
    };
    let mut events = Vec::new();
    let r = PatchCore::fit_with_options(
        params(Sampler::Greedy).check().unwrap(),
        tiny_backbone(3),
        &images,
        &opts,
        &mut |e| events.push(e),
    );
    match r {
        Err(Error::MemoryBudget {
            budget,
            needed,
            detail,
        }) => {
            assert_eq!(budget, 1 << 20);
            assert!(needed > budget);
            assert!(detail.contains("raise the budget"), "{detail}");
        }
        other => panic!("expected MemoryBudget, got {other:?}"),
    }
    assert!(events.is_empty(), "work started: {events:?}");
    assert!(dir.files().is_empty(), "{:?}", dir.files());
}
