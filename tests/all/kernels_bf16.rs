//! bf16 kernels: the rounding against an independent definition, every available isa against
//! a naive f64 product of the rounded inputs and against the documented summation order (bit
//! for bit), thread-count independence, scratch reuse and the fallback of unavailable isas.
//!
//! Bound used against the f64 reference `r = Σ a·b` (a, b already rounded to bf16): each output
//! is a sum of `k` exact products with at most `k` f32 roundings, so
//! `|c − r| ≤ (k + 1)·2⁻²⁴·Σ|a·b| + 1e-30`.

use patchcore::kernels::bf16::{
    from_bf16, gemm_bf16, gemm_bf16_map, to_bf16, Bf16Isa, PackedBf16Weights,
};
use patchcore::kernels::gemm::Parallelism;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Round to nearest even by comparing distances in f64 to the two bf16 neighbours (truncated
/// toward zero, and one step away from zero: 2¹²⁸ beyond the largest finite value).
fn to_bf16_reference(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7FC0 | if x.is_sign_negative() { 0x8000 } else { 0 };
    }
    if x.is_infinite() {
        return if x > 0.0 { 0x7F80 } else { 0xFF80 };
    }
    let lo = (x.to_bits() >> 16) as u16;
    let hi = lo + 1;
    let val = |b: u16| -> f64 {
        if b & 0x7FFF == 0x7F80 {
            2f64.powi(128).copysign(f64::from(x))
        } else {
            f64::from(from_bf16(b))
        }
    };
    let xd = f64::from(x);
    let (dl, dh) = ((xd - val(lo)).abs(), (val(hi) - xd).abs());
    if dl < dh || (dl == dh && lo & 1 == 0) {
        lo
    } else {
        hi
    }
}

fn same_bf16(a: u16, b: u16) -> bool {
    let nan = |v: u16| v & 0x7FFF > 0x7F80;
    if nan(a) || nan(b) {
        nan(a) && nan(b) && (a & 0x8000 == b & 0x8000)
    } else {
        a == b
    }
}

#[test]
fn to_bf16_every_high_half_with_ties_and_neighbours() {
    let lows = [0u32, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x4000, 0xC000];
    for hi in 0..=0xFFFFu32 {
        for &lo in &lows {
            let x = f32::from_bits(hi << 16 | lo);
            let (got, want) = (to_bf16(x), to_bf16_reference(x));
            assert!(
                same_bf16(got, want),
                "{x:e} ({:#010x}): {got:#06x} vs {want:#06x}",
                x.to_bits()
            );
        }
    }
}

#[test]
fn to_bf16_special_values() {
    assert_eq!(to_bf16(f32::MAX), 0x7F80, "largest finite rounds to +inf");
    assert_eq!(to_bf16(-f32::MAX), 0xFF80);
    assert_eq!(to_bf16(f32::INFINITY), 0x7F80);
    assert_eq!(to_bf16(f32::NEG_INFINITY), 0xFF80);
    assert_eq!(to_bf16(-0.0), 0x8000);
    // Largest value below the tie with infinity stays finite.
    assert_eq!(to_bf16(f32::from_bits(0x7F7F_7FFF)), 0x7F7F);
    for bits in [
        0x7F80_0001u32,
        0x7FC0_0000,
        0xFF80_0001,
        0x7F80_FFFF,
        0x7FFF_FFFF,
    ] {
        let x = f32::from_bits(bits);
        assert!(x.is_nan());
        assert!(from_bf16(to_bf16(x)).is_nan(), "{bits:#x} must stay NaN");
        assert_eq!(
            to_bf16(x) & 0x8000,
            ((bits >> 16) & 0x8000) as u16,
            "sign of {bits:#x}"
        );
    }
    // Ties: 1 + 2⁻⁸ → 1 (even), 1 + 3·2⁻⁸ → 1 + 2⁻⁶ (even).
    assert_eq!(to_bf16(1.0 + 2f32.powi(-8)), 0x3F80);
    assert_eq!(to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3F82);
}

#[test]
fn from_bf16_is_exact_for_every_value() {
    for b in 0..=0xFFFFu16 {
        let x = from_bf16(b);
        assert_eq!(x.to_bits(), u32::from(b) << 16);
        if !x.is_nan() {
            assert_eq!(to_bf16(x), b);
        }
    }
}

proptest! {
    #[test]
    fn to_bf16_matches_reference(bits in any::<u32>()) {
        let x = f32::from_bits(bits);
        prop_assert!(same_bf16(to_bf16(x), to_bf16_reference(x)));
    }
}

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len)
        .map(|_| {
            if rng.random_range(0..8) == 0 {
                0.0
            } else {
                rng.random_range(-2.0f32..2.0)
            }
        })
        .collect()
}

fn round(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| from_bf16(to_bf16(v))).collect()
}

/// f64 product of the rounded inputs and `Σ|a·b|` per element.
fn reference(m: usize, k: usize, n: usize, a: &[f32], b: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let (a, b) = (round(a), round(b));
    let mut r = vec![0.0; m * n];
    let mut s = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                let x = f64::from(a[i * k + p]) * f64::from(b[p * n + j]);
                r[i * n + j] += x;
                s[i * n + j] += x.abs();
            }
        }
    }
    (r, s)
}

/// The documented order in f32: pairs in increasing order, odd element then even element.
fn documented_order(m: usize, k: usize, n: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    let (a, b) = (round(a), round(b));
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f32;
            for t in 0..k.div_ceil(2) {
                if 2 * t + 1 < k {
                    s += a[i * k + 2 * t + 1] * b[(2 * t + 1) * n + j];
                } else {
                    s += 0.0;
                }
                s += a[i * k + 2 * t] * b[2 * t * n + j];
            }
            c[i * n + j] = s;
        }
    }
    c
}

fn run(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    par: Parallelism,
    isa: Bf16Isa,
) -> Vec<f32> {
    let w = PackedBf16Weights::new(a, m, k);
    let mut c = vec![f32::NAN; m * n];
    let mut scratch = Vec::new();
    gemm_bf16(&w, b, n, &mut c, &mut scratch, par, isa);
    c
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Every available isa: within the bound of the f64 reference, and bit-identical to the
/// documented order except AMX (whose hardware rounds in its own order).
fn check_shape(m: usize, k: usize, n: usize, seed: u64) {
    let a = random(m * k, seed);
    let b = random(k * n, seed ^ 0x5EED);
    let (r, s) = reference(m, k, n, &a, &b);
    let doc = documented_order(m, k, n, &a, &b);
    for isa in Bf16Isa::all_available() {
        for par in [Parallelism::Sequential, Parallelism::Rayon] {
            let c = run(m, k, n, &a, &b, par, isa);
            for (idx, (&cv, (&rv, &sv))) in c.iter().zip(r.iter().zip(&s)).enumerate() {
                let bound = (k as f64 + 1.0) * 2f64.powi(-24) * sv + 1e-30;
                assert!(
                    (f64::from(cv) - rv).abs() <= bound,
                    "{} {m}×{k}×{n} at {idx}: {cv} vs {rv} (bound {bound})",
                    isa.name()
                );
            }
            assert!(
                isa == Bf16Isa::Amx || bits(&c) == bits(&doc),
                "{} {m}×{k}×{n}: not the documented order",
                isa.name()
            );
            // The same values given as bf16 bits: the same result.
            let b16: Vec<u16> = b.iter().map(|&v| to_bf16(v)).collect();
            let w = PackedBf16Weights::new(&a, m, k);
            let mut c16 = vec![f32::NAN; m * n];
            gemm_bf16(&w, &b16, n, &mut c16, &mut Vec::new(), par, isa);
            assert!(
                bits(&c16) == bits(&c),
                "{} {m}×{k}×{n}: u16 input differs from f32 input",
                isa.name()
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn odd_shapes_every_isa(m in 1usize..70, k in 1usize..70, n in 1usize..70, seed in any::<u64>()) {
        check_shape(m, k, n, seed);
    }
}

#[test]
fn shapes_with_several_k_blocks_and_panels() {
    // k = 16463: three cache blocks of pairs (4096, 4096, 40) with an odd tail; n = 113: two
    // full panels and a 17-column one; m = 19: a partial row tile.
    check_shape(19, 16463, 113, 1);
    check_shape(19, 1101, 113, 1);
    check_shape(9, 513, 49, 2);
    check_shape(64, 576, 50, 3);
}

#[test]
fn result_does_not_depend_on_thread_count() {
    let (m, k, n) = (72, 301, 97);
    let a = random(m * k, 11);
    let b = random(k * n, 12);
    for isa in Bf16Isa::all_available() {
        let seq = run(m, k, n, &a, &b, Parallelism::Sequential, isa);
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let par = pool.install(|| run(m, k, n, &a, &b, Parallelism::Rayon, isa));
            assert!(
                bits(&seq) == bits(&par),
                "{} with {threads} threads",
                isa.name()
            );
        }
    }
}

#[test]
fn scratch_is_reused() {
    let a = random(40 * 70, 21);
    let b_small = random(70 * 20, 22);
    let b_large = random(70 * 130, 23);
    for isa in Bf16Isa::all_available() {
        let w = PackedBf16Weights::new(&a, 40, 70);
        let mut scratch = Vec::new();
        let mut c = vec![0.0; 40 * 20];
        gemm_bf16(
            &w,
            &b_small,
            20,
            &mut c,
            &mut scratch,
            Parallelism::Sequential,
            isa,
        );
        assert!(bits(&c) == bits(&run(40, 70, 20, &a, &b_small, Parallelism::Sequential, isa)));
        // Larger: the scratch grows, and stale contents from the small call do not leak in.
        let mut c = vec![0.0; 40 * 130];
        gemm_bf16(
            &w,
            &b_large,
            130,
            &mut c,
            &mut scratch,
            Parallelism::Rayon,
            isa,
        );
        assert!(
            bits(&c)
                == bits(&run(
                    40,
                    70,
                    130,
                    &a,
                    &b_large,
                    Parallelism::Sequential,
                    isa
                ))
        );
        // Same and smaller calls again: no reallocation.
        let (ptr, cap) = (scratch.as_ptr(), scratch.capacity());
        gemm_bf16(
            &w,
            &b_large,
            130,
            &mut c,
            &mut scratch,
            Parallelism::Sequential,
            isa,
        );
        let mut c_small = vec![0.0; 40 * 20];
        gemm_bf16(
            &w,
            &b_small,
            20,
            &mut c_small,
            &mut scratch,
            Parallelism::Sequential,
            isa,
        );
        assert_eq!((scratch.as_ptr(), scratch.capacity()), (ptr, cap));
        assert!(
            bits(&c_small) == bits(&run(40, 70, 20, &a, &b_small, Parallelism::Sequential, isa))
        );
    }
}

#[test]
fn unavailable_isa_falls_back_to_portable() {
    let (m, k, n) = (13, 37, 29);
    let a = random(m * k, 31);
    let b = random(k * n, 32);
    let portable = run(m, k, n, &a, &b, Parallelism::Sequential, Bf16Isa::Portable);
    let mut unavailable = 0;
    for isa in [Bf16Isa::Avx512Bf16, Bf16Isa::NeonBf16, Bf16Isa::Amx] {
        if !isa.is_available() {
            unavailable += 1;
            let c = run(m, k, n, &a, &b, Parallelism::Sequential, isa);
            assert!(bits(&c) == bits(&portable), "{}", isa.name());
        }
    }
    // The x86 and aarch64 kernels cannot both exist on a CPU.
    assert!(unavailable >= 1);
    assert!(Bf16Isa::Portable.is_available());
    assert_eq!(Bf16Isa::all_available()[0], Bf16Isa::Portable);
    assert!(Bf16Isa::detect().is_available());
}

#[test]
fn summation_order_is_odd_then_even() {
    // Pair 0 (even 0, odd 1) leaves c = 1. Pair 1 (even 2⁻²⁴, odd −1): odd first gives
    // (1 − 1) + 2⁻²⁴ = 2⁻²⁴; even first would give (1 + 2⁻²⁴) − 1 = 0 (the tie rounds to 1).
    let a = [0.0, 1.0, 2f32.powi(-24), -1.0];
    let b = [1.0f32; 4];
    let want = 2f32.powi(-24);
    assert_eq!(
        ((1.0f32 + 2f32.powi(-24)) - 1.0).to_bits(),
        0,
        "the orders differ"
    );
    // AMX does not promise this order (see `Bf16Isa::Amx`).
    for isa in Bf16Isa::all_available()
        .into_iter()
        .filter(|&i| i != Bf16Isa::Amx)
    {
        let c = run(1, 4, 1, &a, &b, Parallelism::Sequential, isa);
        assert_eq!(c[0].to_bits(), want.to_bits(), "{}", isa.name());
    }
}

/// Small integers: every product and partial sum is an integer below 2²⁴, so no addition
/// rounds and every isa, AMX included, must return the exact sum bit for bit. This pins the
/// layouts (which weight meets which activation) independently of any summation order.
#[test]
fn exact_when_nothing_rounds() {
    for (m, k, n, seed) in [
        (1, 1, 1, 1u64),
        (33, 65, 47, 2),
        (70, 1101, 113, 3),
        (5, 31, 200, 4),
    ] {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut ints = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| rng.random_range(-8i32..=8) as f32)
                .collect()
        };
        let a = ints(m * k);
        let b = ints(k * n);
        let mut want = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: i64 = (0..k)
                    .map(|p| a[i * k + p] as i64 * b[p * n + j] as i64)
                    .sum();
                want[i * n + j] = s as f32;
            }
        }
        for isa in Bf16Isa::all_available() {
            for par in [Parallelism::Sequential, Parallelism::Rayon] {
                let c = run(m, k, n, &a, &b, par, isa);
                assert!(
                    bits(&c) == bits(&want),
                    "{} {m}×{k}×{n} {par:?}",
                    isa.name()
                );
            }
        }
    }
}

/// `gemm_bf16_map` = `gemm_bf16`, then the map applied exactly once to every element with its
/// row and column (the map is not idempotent, so a second application or a wrong position
/// shows).
#[test]
fn map_sees_every_element_once_at_its_place() {
    for (m, k, n) in [
        (1, 1, 1),
        (19, 70, 113),
        (40, 33, 17),
        (70, 1101, 50),
        (3, 0, 5),
    ] {
        let a = random(m * k, 41);
        let b = random(k * n, 42);
        let f = |r: usize, j: usize, v: f32| v * 0.5 + (r * 1000 + j) as f32;
        for isa in Bf16Isa::all_available() {
            for par in [Parallelism::Sequential, Parallelism::Rayon] {
                let plain = run(m, k, n, &a, &b, par, isa);
                let want: Vec<f32> = plain
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| f(i / n, i % n, v))
                    .collect();
                let w = PackedBf16Weights::new(&a, m, k);
                let mut c = vec![f32::NAN; m * n];
                gemm_bf16_map(&w, &b, n, &mut c, &mut Vec::new(), par, isa, |r, j0, o| {
                    for (j, v) in o.iter_mut().enumerate() {
                        *v = f(r, j0 + j, *v);
                    }
                });
                assert!(
                    bits(&c) == bits(&want),
                    "{} {m}×{k}×{n} {par:?}",
                    isa.name()
                );
            }
        }
    }
}
