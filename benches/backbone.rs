//! Full backbone forward passes up to layer3 (PatchCore's deepest tap) at 224², in GFLOP/s
//! (criterion's elements/s with one element = one flop; convolution flops only, from
//! `ResNetSpec::flops`: WRN50-2 → layer3 = 18.37 GFLOP/image, ResNet-18 → layer3 = 2.81).
//!
//! Weights are seeded random (`Backbone::random`), so no download is needed; speed does not
//! depend on the weight values.
//!
//! Quick run: `cargo bench --bench backbone -- --sample-size 10 --warm-up-time 1 --measurement-time 5`
//! (add a filter such as `resnet18/1` to run one case). The `<arch>-int8/1` and
//! `<arch>-bf16/1` cases run the reduced-precision backbones (int8 calibrated on 16 random
//! images of the same distribution, enough for its activations to stay quantised between
//! convolutions; the kernels are printed first).
//!
//! After criterion, a summary prints the CPU time of one batch-1 forward pass run in a
//! 1-thread pool (process CPU time, so it stays meaningful when other processes load the
//! machine and wall times are not).

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use ndarray::Array4;
use patchcore::backbone::{Backbone, Layer, Precision, ResNetSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;

fn bench_backbone(c: &mut Criterion) {
    let taps = [Layer::Layer2, Layer::Layer3];
    let mut group = c.benchmark_group("backbone_to_layer3_224");
    group.sample_size(10);
    for spec in [ResNetSpec::resnet18(), ResNetSpec::wide_resnet50_2()] {
        let net = Backbone::random(&spec, &taps, 0).expect("valid preset");
        let flops_per_image = spec.flops(Layer::Layer3, 224, 224);
        for batch in [1usize, 8] {
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let input = Array4::from_shape_simple_fn((batch, 3, 224, 224), || {
                rng.random_range(-2.0f32..2.0)
            });
            group.throughput(Throughput::Elements(flops_per_image * batch as u64));
            group.bench_with_input(
                BenchmarkId::new(spec.name.as_str(), batch),
                &input,
                |b, x| b.iter(|| black_box(net.forward(black_box(x.view())).expect("forward"))),
            );
        }
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let calib =
            Array4::from_shape_simple_fn((16, 3, 224, 224), || rng.random_range(-2.0f32..2.0));
        let mut cal = net.new_calibration();
        net.forward_calibrating(calib.view(), &mut cal)
            .expect("calibration");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let input =
            Array4::from_shape_simple_fn((1, 3, 224, 224), || rng.random_range(-2.0f32..2.0));
        group.throughput(Throughput::Elements(flops_per_image));
        for precision in [Precision::Int8, Precision::Bf16] {
            let mut q = net.clone();
            q.set_precision(precision, Some(&cal)).expect("precision");
            println!("{}: {}", spec.name, q.kernels());
            group.bench_with_input(
                BenchmarkId::new(format!("{}-{precision}", spec.name), 1),
                &input,
                |b, x| b.iter(|| black_box(q.forward(black_box(x.view())).expect("forward"))),
            );
        }
    }
    group.finish();
}

/// Process CPU time (user + system) in ms from `/proc/self/stat`; `None` off Linux.
fn process_cpu_ms() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 10.0) // USER_HZ = 100 on Linux
}

fn cpu_summary() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    println!("\nbatch-1 forward to layer3 at 224², 1 thread: CPU ms per image");
    for spec in [ResNetSpec::resnet18(), ResNetSpec::wide_resnet50_2()] {
        let net = Backbone::random(&spec, &[Layer::Layer3], 0).expect("valid preset");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let input =
            Array4::from_shape_simple_fn((1, 3, 224, 224), || rng.random_range(-2.0f32..2.0));
        let reps = if spec.name == "resnet18" { 40 } else { 8 };
        let ms = pool.install(|| {
            black_box(net.forward(input.view()).expect("forward"));
            let t0 = process_cpu_ms()?;
            for _ in 0..reps {
                black_box(net.forward(input.view()).expect("forward"));
            }
            process_cpu_ms().map(|t1| (t1 - t0) / reps as f64)
        });
        println!("{:<18} {:>8.1}", spec.name, ms.unwrap_or(f64::NAN));
    }
}

criterion_group!(benches, bench_backbone);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listing = args.iter().any(|a| a == "--list" || a == "--test");
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    if !listing {
        cpu_summary();
    }
}
