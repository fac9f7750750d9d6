//! The int8 matrix products against a naive i32 triple loop computed here: every kernel this
//! CPU runs, odd shapes, the extreme values, 1 and 2 threads, and scratch reuse.

use patchcore::kernels::gemm::Parallelism;
use patchcore::kernels::int8::{gemm_u8i8, Int8Isa, PackedWeights, MAX_DEPTH, NR};
use proptest::prelude::*;

fn naive(a: &[i8], b: &[u8], m: usize, k: usize, n: usize) -> Vec<i32> {
    let mut c = vec![0i64; m * n];
    for i in 0..m {
        for t in 0..k {
            for j in 0..n {
                c[i * n + j] += i64::from(a[i * k + t]) * i64::from(b[t * n + j]);
            }
        }
    }
    c.into_iter()
        .map(|v| i32::try_from(v).expect("the naive sum fits i32"))
        .collect()
}

fn run(w: &PackedWeights, b: &[u8], n: usize, par: Parallelism, isa: Int8Isa) -> Vec<i32> {
    let mut c = vec![i32::MIN; w.rows() * n];
    gemm_u8i8(w, b, n, &mut c, &mut Vec::new(), par, isa);
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn every_kernel_is_exact(
        m in 1usize..40, k in 1usize..70, n in 1usize..110, seed in 0u64..1_000_000,
    ) {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let a: Vec<i8> = (0..m * k).map(|_| next() as i8).collect();
        let b: Vec<u8> = (0..k * n).map(|_| next() as u8).collect();
        let want = naive(&a, &b, m, k, n);
        let w = PackedWeights::new(&a, m, k);
        for isa in Int8Isa::all_available() {
            for par in [Parallelism::Sequential, Parallelism::Rayon] {
                prop_assert_eq!(&run(&w, &b, n, par, isa), &want, "{:?} {:?}", isa, par);
            }
        }
    }
}

/// The extreme values at a large depth: all activations 255 against all −128 or all 127,
/// and an alternating pattern; sums up to ±32,640·k stay exact.
#[test]
fn extreme_values_at_large_depth() {
    let (m, k, n) = (9, 4099, NR + 5);
    for (wa, wb) in [(-128i8, -128i8), (127, 127), (-128, 127)] {
        let a: Vec<i8> = (0..m * k)
            .map(|i| if i % 3 == 0 { wa } else { wb })
            .collect();
        let b = vec![255u8; k * n];
        let want = naive(&a, &b, m, k, n);
        let w = PackedWeights::new(&a, m, k);
        for isa in Int8Isa::all_available() {
            assert_eq!(run(&w, &b, n, Parallelism::Rayon, isa), want, "{isa:?}");
        }
    }
    assert!(255 * 128 * MAX_DEPTH <= i32::MAX as usize);
}

/// Same bits with 1 and 2 threads on a product large enough to run in parallel, and a
/// scratch buffer reused from a smaller, then a larger call.
#[test]
fn threads_and_scratch_reuse_do_not_change_the_result() {
    let (m, k, n) = (64, 300, 200);
    let a: Vec<i8> = (0..m * k).map(|i| (i * 37 % 255) as i8).collect();
    let b: Vec<u8> = (0..k * n).map(|i| (i * 91 % 256) as u8).collect();
    let want = naive(&a, &b, m, k, n);
    let w = PackedWeights::new(&a, m, k);
    for isa in Int8Isa::all_available() {
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let got = pool.install(|| run(&w, &b, n, Parallelism::Rayon, isa));
            assert_eq!(got, want, "{isa:?} {threads} threads");
        }
        let mut scratch = Vec::new();
        let small = PackedWeights::new(&a[..3 * 10], 3, 10);
        let mut c = vec![0; 3 * 7];
        gemm_u8i8(
            &small,
            &b[..70],
            7,
            &mut c,
            &mut scratch,
            Parallelism::Sequential,
            isa,
        );
        assert_eq!(c, naive(&a[..30], &b[..70], 3, 10, 7));
        let mut c = vec![0; m * n];
        gemm_u8i8(
            &w,
            &b,
            n,
            &mut c,
            &mut scratch,
            Parallelism::Sequential,
            isa,
        );
        assert_eq!(c, want, "{isa:?} reused scratch");
    }
}

/// Every kernel name is distinct, the portable one always runs, and the detected one is
/// among the available ones.
#[test]
fn detection_is_consistent() {
    let all = Int8Isa::all_available();
    assert_eq!(all[0], Int8Isa::Portable);
    assert!(all.contains(&Int8Isa::detect()));
    eprintln!(
        "int8 kernels here: {:?}, chosen {:?}",
        all,
        Int8Isa::detect()
    );
}

/// f32 activations quantised while packed (`gemm_quantizing_map`) give the products of the
/// bytes `clamp(round_ties_even(x·scale), 0, 255)` computed here, for every kernel; each cell
/// reaches the closure once.
#[test]
fn quantizing_while_packing_matches_quantizing_first() {
    use patchcore::kernels::int8::gemm_quantizing_map;
    let (m, k, n) = (37, 131, 75);
    let a: Vec<i8> = (0..m * k).map(|i| (i * 53 % 255) as i8).collect();
    // Values below 0, above the range, ties (x·scale = j + 0.5) and ordinary ones.
    let x: Vec<f32> = (0..k * n)
        .map(|i| match i % 5 {
            0 => -1.0,
            1 => 9.0,
            2 => (i % 200) as f32 * 0.5 / 25.5,
            _ => (i as f32 * 0.618).fract() * 10.0,
        })
        .collect();
    let scale = 25.5f32;
    let bytes: Vec<u8> = x
        .iter()
        .map(|&v| (v * scale).round_ties_even().clamp(0.0, 255.0) as u8)
        .collect();
    let want = naive(&a, &bytes, m, k, n);
    let w = PackedWeights::new(&a, m, k);
    for isa in Int8Isa::all_available() {
        for par in [Parallelism::Sequential, Parallelism::Rayon] {
            let mut got = vec![(i32::MIN, 0u32); m * n];
            gemm_quantizing_map(
                &w,
                &x,
                scale,
                n,
                &mut got,
                &mut Vec::new(),
                par,
                isa,
                |_, _, sums, out| {
                    for (o, &s) in out.iter_mut().zip(sums) {
                        *o = (s, o.1 + 1);
                    }
                },
            );
            assert!(
                got.iter().all(|&(_, c)| c == 1),
                "{isa:?}: a cell not visited once"
            );
            let got: Vec<i32> = got.into_iter().map(|(s, _)| s).collect();
            assert_eq!(got, want, "{isa:?} {par:?}");
        }
    }
}

/// Depth 0 (an empty inner dimension): every sum is 0, on every kernel (the AMX weight layout
/// has no tile then).
#[test]
fn depth_zero_gives_zeros() {
    let w = PackedWeights::new(&[], 5, 0);
    for isa in Int8Isa::all_available() {
        for par in [Parallelism::Sequential, Parallelism::Rayon] {
            assert_eq!(run(&w, &[], 3, par, isa), vec![0; 15], "{}", isa.name());
        }
    }
}
