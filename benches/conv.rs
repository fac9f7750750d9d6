//! Every distinct convolution of Wide-ResNet-50-2 up to layer3 at a 224² input, in GFLOP/s
//! (criterion's Gelem/s, one element = one flop), followed by a summary table with the total
//! time of all 43 convolutions of one image.
//!
//! A second group, `conv_3x3_algo`, runs the three 3×3 stride-1 shapes and the two 3×3
//! stride-2 shapes with the algorithm forced to im2col and to Winograd (ids
//! `<shape>/im2col`, `<shape>/winograd`, and `<shape>/winograd4x4` for stride 1; with
//! stride 2 `winograd` is the polyphase F(2, 2) variant), and two more tables compare them
//! in wall time and in sequential thread CPU time (also on ResNet-18's shapes and small
//! channel counts).
//!
//! Quick run: `cargo bench --bench conv -- --sample-size 10 --warm-up-time 1 --measurement-time 2`
//! (`CONV_TABLES=s2 cargo bench --bench conv -- 3x3s2` runs only the stride-2 benchmarks and
//! table; `CONV_TABLES` takes a comma list of `algo`, `s2`, `total`).

use criterion::{BenchmarkId, Criterion, Throughput};
use patchcore::kernels::conv::{Conv2d, ConvAlgorithm, DIRECT_MAX_CHANNELS};
use patchcore::kernels::gemm::Parallelism;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::time::Instant;

/// One distinct convolution shape and how often it occurs in WRN50-2 → layer3.
struct Shape {
    name: &'static str,
    cout: usize,
    cin: usize,
    k: usize,
    stride: usize,
    /// Input size (square).
    hw: usize,
    /// Occurrences in the network.
    count: usize,
    /// Last conv of a bottleneck: adds the residual before the ReLU.
    residual: bool,
    relu: bool,
}

#[allow(clippy::too_many_arguments)]
const fn s(
    name: &'static str,
    cout: usize,
    cin: usize,
    k: usize,
    stride: usize,
    hw: usize,
    count: usize,
    residual: bool,
    relu: bool,
) -> Shape {
    Shape {
        name,
        cout,
        cin,
        k,
        stride,
        hw,
        count,
        residual,
        relu,
    }
}

const SHAPES: [Shape; 18] = [
    s("stem_7x7s2_3-64@224", 64, 3, 7, 2, 224, 1, false, true),
    s("l1_1x1_64-128@56", 128, 64, 1, 1, 56, 1, false, true),
    s("l1_3x3_128-128@56", 128, 128, 3, 1, 56, 3, false, true),
    s("l1_1x1_128-256@56", 256, 128, 1, 1, 56, 3, true, true),
    s("l1_ds_1x1_64-256@56", 256, 64, 1, 1, 56, 1, false, false),
    s("l1_1x1_256-128@56", 128, 256, 1, 1, 56, 2, false, true),
    s("l2_1x1_256-256@56", 256, 256, 1, 1, 56, 1, false, true),
    s("l2_3x3s2_256-256@56", 256, 256, 3, 2, 56, 1, false, true),
    s("l2_1x1_256-512@28", 512, 256, 1, 1, 28, 4, true, true),
    s(
        "l2_ds_1x1s2_256-512@56",
        512,
        256,
        1,
        2,
        56,
        1,
        false,
        false,
    ),
    s("l2_1x1_512-256@28", 256, 512, 1, 1, 28, 3, false, true),
    s("l2_3x3_256-256@28", 256, 256, 3, 1, 28, 3, false, true),
    s("l3_1x1_512-512@28", 512, 512, 1, 1, 28, 1, false, true),
    s("l3_3x3s2_512-512@28", 512, 512, 3, 2, 28, 1, false, true),
    s("l3_1x1_512-1024@14", 1024, 512, 1, 1, 14, 6, true, true),
    s(
        "l3_ds_1x1s2_512-1024@28",
        1024,
        512,
        1,
        2,
        28,
        1,
        false,
        false,
    ),
    s("l3_1x1_1024-512@14", 512, 1024, 1, 1, 14, 5, false, true),
    s("l3_3x3_512-512@14", 512, 512, 3, 1, 14, 5, false, true),
];

/// Further 3×3 stride-1 shapes for the im2col-vs-Winograd table only: ResNet-18's (to
/// layer3) and small channel counts (where `ConvAlgorithm::Auto`'s threshold is decided).
const EXTRA_3X3: [Shape; 6] = [
    s("r18_3x3_64-64@56", 64, 64, 3, 1, 56, 4, false, true),
    s("r18_3x3_128-128@28", 128, 128, 3, 1, 28, 3, false, true),
    s("r18_3x3_256-256@14", 256, 256, 3, 1, 14, 3, false, true),
    s("small_3x3_32-32@56", 32, 32, 3, 1, 56, 0, false, true),
    s("small_3x3_16-16@56", 16, 16, 3, 1, 56, 0, false, true),
    s("small_3x3_8-8@56", 8, 8, 3, 1, 56, 0, false, true),
];

/// Further 3×3 stride-2 shapes for the im2col-vs-Winograd table only: ResNet-18's (to
/// layer3) and small channel counts (where `WINOGRAD_S2_MIN_CHANNELS` is decided).
const EXTRA_S2: [Shape; 6] = [
    s("r18_3x3s2_64-128@56", 128, 64, 3, 2, 56, 1, false, true),
    s("r18_3x3s2_128-256@28", 256, 128, 3, 2, 28, 1, false, true),
    s("small_3x3s2_32-32@56", 32, 32, 3, 2, 56, 0, false, true),
    s("small_3x3s2_16-16@56", 16, 16, 3, 2, 56, 0, false, true),
    s("small_3x3s2_8-8@56", 8, 8, 3, 2, 56, 0, false, true),
    s("small_3x3s2_4-4@56", 4, 4, 3, 2, 56, 0, false, true),
];

fn random(len: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Everything one shape needs to run.
struct Setup {
    conv: Conv2d,
    input: Vec<f32>,
    residual: Option<Vec<f32>>,
    out: Vec<f32>,
    scratch: Vec<f32>,
}

impl Setup {
    fn with_algorithm(mut self, algo: ConvAlgorithm) -> Self {
        self.conv = self.conv.with_algorithm(algo).expect("3x3 p1 shape");
        self
    }

    fn new(sh: &Shape) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(sh.cout as u64 * 31 + sh.cin as u64);
        let conv = Conv2d::new(
            sh.cout,
            sh.cin,
            sh.k,
            sh.k,
            sh.stride,
            sh.k / 2,
            random(sh.cout * sh.cin * sh.k * sh.k, &mut rng),
            random(sh.cout, &mut rng),
        );
        let (oh, ow) = conv.out_hw(sh.hw, sh.hw);
        let input = random(sh.cin * sh.hw * sh.hw, &mut rng);
        let residual = sh.residual.then(|| random(sh.cout * oh * ow, &mut rng));
        Setup {
            conv,
            input,
            residual,
            out: vec![0.0; sh.cout * oh * ow],
            scratch: Vec::new(),
        }
    }

    fn run(&mut self, sh: &Shape) {
        self.conv.forward_image(
            black_box(&self.input),
            sh.hw,
            sh.hw,
            &mut self.out,
            self.residual.as_deref(),
            sh.relu,
            &mut self.scratch,
        );
    }
}

impl Setup {
    fn run_seq(&mut self, sh: &Shape) {
        self.conv.forward_image_with(
            black_box(&self.input),
            sh.hw,
            sh.hw,
            &mut self.out,
            self.residual.as_deref(),
            sh.relu,
            &mut self.scratch,
            Parallelism::Sequential,
        );
    }
}

/// CPU time of the calling thread in ms (Linux `schedstat`), insensitive to other processes
/// competing for the cores; `None` elsewhere.
fn thread_cpu_ms() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e6)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv_wrn50_2");
    for sh in &SHAPES {
        let mut setup = Setup::new(sh);
        g.throughput(Throughput::Elements(setup.conv.flops(sh.hw, sh.hw)));
        g.bench_function(BenchmarkId::from_parameter(sh.name), |b| {
            b.iter(|| setup.run(sh))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("conv_3x3_algo");
    for sh in SHAPES.iter().filter(|s| s.k == 3) {
        let algos = if sh.stride == 1 {
            &ALGOS[..]
        } else {
            &ALGOS[..2]
        };
        for &(name, algo) in algos {
            let mut setup = Setup::new(sh).with_algorithm(algo);
            g.throughput(Throughput::Elements(setup.conv.flops(sh.hw, sh.hw)));
            g.bench_function(BenchmarkId::new(sh.name, name), |b| {
                b.iter(|| setup.run(sh))
            });
        }
    }
    g.finish();
    // The stem (3 input channels): im2col + GEMM against the direct loops.
    let mut g = c.benchmark_group("conv_stem_algo");
    for sh in SHAPES.iter().filter(|s| s.cin <= DIRECT_MAX_CHANNELS) {
        for (name, algo) in [
            ("im2col", ConvAlgorithm::Im2col),
            ("direct", ConvAlgorithm::Direct),
        ] {
            let mut setup = Setup::new(sh).with_algorithm(algo);
            g.throughput(Throughput::Elements(setup.conv.flops(sh.hw, sh.hw)));
            g.bench_function(BenchmarkId::new(sh.name, name), |b| {
                b.iter(|| setup.run(sh))
            });
        }
    }
    g.finish();
}

const ALGOS: [(&str, ConvAlgorithm); 3] = [
    ("im2col", ConvAlgorithm::Im2col),
    ("winograd", ConvAlgorithm::Winograd),
    ("winograd4x4", ConvAlgorithm::Winograd4x4),
];

fn is_3x3_s1(sh: &Shape) -> bool {
    sh.k == 3 && sh.stride == 1
}

/// Median wall ms (default parallelism) and sequential thread CPU ms of one setup.
fn measure(setup: &mut Setup, sh: &Shape) -> (f64, Option<f64>) {
    for _ in 0..3 {
        setup.run(sh);
    }
    let mut times: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            setup.run(sh);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let reps = 10;
    let cpu = thread_cpu_ms().and_then(|t0| {
        for _ in 0..reps {
            setup.run_seq(sh);
        }
        thread_cpu_ms().map(|t1| (t1 - t0) / reps as f64)
    });
    (times[times.len() / 2], cpu)
}

/// im2col vs Winograd F(2×2) vs F(4×4) on the 3×3 stride-1 shapes: median wall ms with the
/// default parallelism, then sequential thread CPU ms.
fn algo_summary() {
    println!(
        "\n{:<22} {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8}   (wall ms | 1-thread CPU ms)",
        "3x3 s1 shape", "im2col", "wino2", "wino4", "im2col", "wino2", "wino4"
    );
    for sh in SHAPES.iter().filter(|s| is_3x3_s1(s)).chain(&EXTRA_3X3) {
        let r: Vec<(f64, Option<f64>)> = ALGOS
            .iter()
            .map(|&(_, algo)| measure(&mut Setup::new(sh).with_algorithm(algo), sh))
            .collect();
        let cpu = |i: usize| r[i].1.unwrap_or(f64::NAN);
        println!(
            "{:<22} {:>8.3} {:>8.3} {:>8.3} | {:>8.3} {:>8.3} {:>8.3}",
            sh.name,
            r[0].0,
            r[1].0,
            r[2].0,
            cpu(0),
            cpu(1),
            cpu(2)
        );
    }
}

/// im2col vs the stride-2 Winograd variant on the 3×3 stride-2 shapes: median wall ms with
/// the default parallelism, then sequential thread CPU ms.
fn s2_summary() {
    println!(
        "\n{:<22} {:>8} {:>8} | {:>8} {:>8}   (wall ms | 1-thread CPU ms)",
        "3x3 s2 shape", "im2col", "wino_s2", "im2col", "wino_s2"
    );
    for sh in SHAPES
        .iter()
        .filter(|s| s.k == 3 && s.stride == 2)
        .chain(&EXTRA_S2)
    {
        let r: Vec<(f64, Option<f64>)> = ALGOS[..2]
            .iter()
            .map(|&(_, algo)| measure(&mut Setup::new(sh).with_algorithm(algo), sh))
            .collect();
        let cpu = |i: usize| r[i].1.unwrap_or(f64::NAN);
        println!(
            "{:<22} {:>8.3} {:>8.3} | {:>8.3} {:>8.3}",
            sh.name,
            r[0].0,
            r[1].0,
            cpu(0),
            cpu(1)
        );
    }
}

fn summary() {
    println!(
        "\n{:<26} {:>5} {:>9} {:>8} {:>10} {:>12}",
        "shape", "count", "wall ms", "GFLOP/s", "wall total", "seq GFLOP/s"
    );
    let (mut total_ms, mut total_flops, mut total_cpu) = (0.0, 0.0, 0.0);
    for sh in &SHAPES {
        let mut setup = Setup::new(sh);
        let (ms, cpu) = measure(&mut setup, sh);
        let flops = setup.conv.flops(sh.hw, sh.hw) as f64;
        total_ms += ms * sh.count as f64;
        total_flops += flops * sh.count as f64;
        total_cpu += cpu.unwrap_or(f64::NAN) * sh.count as f64;
        println!(
            "{:<26} {:>5} {:>9.3} {:>8.1} {:>10.3} {:>12.1}",
            sh.name,
            sh.count,
            ms,
            flops / ms / 1e6,
            ms * sh.count as f64,
            cpu.map_or(f64::NAN, |c| flops / c / 1e6),
        );
    }
    let n: usize = SHAPES.iter().map(|s| s.count).sum();
    println!(
        "all {n} convs of WRN50-2 -> layer3 at 224²: {total_ms:.2} ms wall, {:.2} GFLOP, \
         {:.1} GFLOP/s; sequential: {total_cpu:.1} ms CPU ({:.1} GFLOP/s per core)",
        total_flops / 1e9,
        total_flops / total_ms / 1e6,
        total_flops / total_cpu / 1e6,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listing = args.iter().any(|a| a == "--list" || a == "--test");
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    if !listing {
        // CONV_TABLES=s2 (or any comma list of algo, s2, total) prints only those tables.
        let tables = std::env::var("CONV_TABLES").unwrap_or_else(|_| "algo,s2,total".into());
        let want = |t: &str| tables.split(',').any(|x| x.trim() == t);
        if want("algo") {
            algo_summary();
        }
        if want("s2") {
            s2_summary();
        }
        if want("total") {
            summary();
        }
    }
}
