//! A backbone reuses its work buffers between forward passes (so that a pass does not fault in
//! tens of MB of fresh pages). Stale contents must never leak into a result: after passes at
//! other sizes and batch sizes, every output equals the output of a backbone that has never
//! run (a clone starts with no buffers), bit for bit.

use ndarray::Array4;
use patchcore::backbone::{Backbone, Layer, ResNetSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn input(n: usize, h: usize, w: usize, seed: u64) -> Array4<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Array4::from_shape_simple_fn((n, 3, h, w), || rng.random_range(-2.0f32..2.0))
}

#[test]
fn reused_buffers_never_change_results() {
    let taps = [Layer::Layer1, Layer::Layer2, Layer::Layer3];
    for spec in [ResNetSpec::resnet18(), ResNetSpec::resnet50()] {
        let bb = Backbone::random(&spec, &taps, 5).unwrap();
        // Sizes that grow, shrink and change aspect; batch 2 runs images concurrently.
        let seq = [
            (1, 96, 80),
            (2, 64, 64),
            (1, 33, 47),
            (1, 96, 80),
            (2, 40, 72),
        ];
        for (i, &(n, h, w)) in seq.iter().enumerate() {
            let x = input(n, h, w, i as u64);
            let used = bb.forward(x.view()).unwrap();
            let fresh = bb.clone().forward(x.view()).unwrap();
            assert_eq!(used, fresh, "{} pass {i} ({n}×{h}×{w})", spec.name);
        }
    }
}
