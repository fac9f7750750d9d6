//! Fixed-work driver: per-convolution breakdown of ResNet-18 → layer3 at 224², batch 1, in
//! the global rayon pool (all cores), next to the whole forward pass.
//!
//! Each of R18's 15 convolutions (to layer3) is timed in isolation with the same call the
//! backbone makes (`Conv2d::forward_image`, residual + ReLU where the network has them), as
//! well as the max-pool and the tap copies; the sum is compared with `Backbone::forward`.
//!
//! `cargo bench --bench r18_profile -- [reps] [whole]` (`whole`: only the forward pass, for
//! `perf record`)

use std::hint::black_box;
use std::time::Instant;

use ndarray::Array4;
use patchcore::backbone::{Backbone, Layer, ResNetSpec};
use patchcore::kernels::conv::Conv2d;
use patchcore::kernels::pool::maxpool2d;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// name, cout, cin, k, stride, input side, residual, relu.
type Row = (&'static str, usize, usize, usize, usize, usize, bool, bool);

const CONVS: [Row; 15] = [
    ("stem 7x7/2 3->64 @224", 64, 3, 7, 2, 224, false, true),
    ("l1.0.conv1 3x3 64 @56", 64, 64, 3, 1, 56, false, true),
    ("l1.0.conv2 3x3 64 @56 +res", 64, 64, 3, 1, 56, true, true),
    ("l1.1.conv1 3x3 64 @56", 64, 64, 3, 1, 56, false, true),
    ("l1.1.conv2 3x3 64 @56 +res", 64, 64, 3, 1, 56, true, true),
    (
        "l2.0.conv1 3x3/2 64->128 @56",
        128,
        64,
        3,
        2,
        56,
        false,
        true,
    ),
    ("l2.0.ds 1x1/2 64->128 @56", 128, 64, 1, 2, 56, false, false),
    (
        "l2.0.conv2 3x3 128 @28 +res",
        128,
        128,
        3,
        1,
        28,
        true,
        true,
    ),
    ("l2.1.conv1 3x3 128 @28", 128, 128, 3, 1, 28, false, true),
    (
        "l2.1.conv2 3x3 128 @28 +res",
        128,
        128,
        3,
        1,
        28,
        true,
        true,
    ),
    (
        "l3.0.conv1 3x3/2 128->256 @28",
        256,
        128,
        3,
        2,
        28,
        false,
        true,
    ),
    (
        "l3.0.ds 1x1/2 128->256 @28",
        256,
        128,
        1,
        2,
        28,
        false,
        false,
    ),
    (
        "l3.0.conv2 3x3 256 @14 +res",
        256,
        256,
        3,
        1,
        14,
        true,
        true,
    ),
    ("l3.1.conv1 3x3 256 @14", 256, 256, 3, 1, 14, false, true),
    (
        "l3.1.conv2 3x3 256 @14 +res",
        256,
        256,
        3,
        1,
        14,
        true,
        true,
    ),
];

/// Median wall time in ms of `f` over `reps` runs (after one warm-up run).
fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let reps: usize = args.first().and_then(|v| v.parse().ok()).unwrap_or(200);
    let whole_only = args.get(1).is_some_and(|a| a == "whole");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    if whole_only {
        let net = Backbone::random(&ResNetSpec::resnet18(), &[Layer::Layer2, Layer::Layer3], 0)
            .expect("valid preset");
        let x = Array4::from_shape_simple_fn((1, 3, 224, 224), || rng.random_range(-2.0f32..2.0));
        let ms = median_ms(reps, || {
            black_box(net.forward(black_box(x.view())).expect("forward"));
        });
        println!("{:<32} {ms:>9.3}", "Backbone::forward (whole)");
        return;
    }
    println!("threads: {}", rayon::current_num_threads());
    println!("{:<32} {:>9} {:>8}", "part", "ms", "GFLOP/s");
    let mut sum = 0.0;
    let mut scratch = Vec::new();
    for &(name, cout, cin, k, stride, hw, residual, relu) in &CONVS {
        let conv = Conv2d::new(
            cout,
            cin,
            k,
            k,
            stride,
            k / 2,
            (0..cout * cin * k * k)
                .map(|_| rng.random_range(-0.1f32..0.1))
                .collect(),
            (0..cout).map(|_| rng.random_range(-0.1f32..0.1)).collect(),
        );
        let input: Vec<f32> = (0..cin * hw * hw)
            .map(|_| rng.random_range(0.0f32..1.0))
            .collect();
        let (oh, ow) = conv.out_hw(hw, hw);
        let res: Vec<f32> = (0..cout * oh * ow)
            .map(|_| rng.random_range(0.0f32..1.0))
            .collect();
        let mut out = vec![0.0f32; cout * oh * ow];
        let ms = median_ms(reps, || {
            conv.forward_image(
                black_box(&input),
                hw,
                hw,
                &mut out,
                residual.then_some(res.as_slice()),
                relu,
                &mut scratch,
            );
            black_box(&out);
        });
        sum += ms;
        let gf = conv.flops(hw, hw) as f64 / ms / 1e6;
        println!("{name:<32} {ms:>9.3} {gf:>8.1}");
    }
    // Max-pool 3×3/2 pad 1 of the stem output.
    let stem_out: Vec<f32> = (0..64 * 112 * 112)
        .map(|_| rng.random_range(0.0f32..1.0))
        .collect();
    let mut pooled = vec![0.0f32; 64 * 56 * 56];
    let ms = median_ms(reps, || {
        maxpool2d(black_box(&stem_out), 64, 112, 112, 3, 2, 1, &mut pooled);
        black_box(&pooled);
    });
    sum += ms;
    println!("{:<32} {ms:>9.3}", "maxpool 3x3/2 64 @112");
    // Tap copies (layer2 + layer3 outputs).
    let l2 = vec![1.0f32; 128 * 28 * 28];
    let l3 = vec![1.0f32; 256 * 14 * 14];
    let ms = median_ms(reps, || {
        black_box(l2.to_vec());
        black_box(l3.to_vec());
    });
    sum += ms;
    println!("{:<32} {ms:>9.3}", "tap copies l2+l3");
    println!("{:<32} {sum:>9.3}", "sum of parts");

    let net = Backbone::random(&ResNetSpec::resnet18(), &[Layer::Layer2, Layer::Layer3], 0)
        .expect("valid preset");
    let x = Array4::from_shape_simple_fn((1, 3, 224, 224), || rng.random_range(-2.0f32..2.0));
    let ms = median_ms(reps, || {
        black_box(net.forward(black_box(x.view())).expect("forward"));
    });
    println!("{:<32} {ms:>9.3}", "Backbone::forward (whole)");
}
