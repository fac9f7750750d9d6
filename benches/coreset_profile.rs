//! Fixed-work driver for profiling the coreset selection (`perf stat` / `perf record`): runs
//! the 1 % greedy selection a fixed number of times and prints wall and CPU time per run, which
//! stays comparable when other processes share the machine (criterion's wall times do not).
//!
//! `cargo bench --bench coreset_profile -- [sel|full] [runs]`

use std::time::Instant;

use ndarray::Array2;
use patchcore::coreset::{select, CoresetConfig, CoresetSize};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// User + system CPU time of this process in seconds (from `/proc/self/stat`, Linux only).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
    ticks / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let what = args.first().map(String::as_str).unwrap_or("sel");
    let runs: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(3);
    let d = if what == "full" { 1024 } else { 128 };
    let mut rng = ChaCha8Rng::seed_from_u64(if d == 128 { 1 } else { 2 });
    let bank = Array2::from_shape_fn((163_840, d), |_| rng.random_range(-1.0f32..1.0));
    let cfg = CoresetConfig {
        size: CoresetSize::Ratio(0.01),
        ..CoresetConfig::default()
    };
    for _ in 0..runs {
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let idx = select(bank.view(), &cfg).unwrap();
        let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
        println!(
            "{what}: wall {wall:.3} s  cpu {cpu:.2} s  ({} rows, last {:?})",
            idx.len(),
            idx.last()
        );
    }
}
