//! The selection distance `Δ(x, y) = sqrt(Σ_j (x_j − y_j)²)` with a fixed summation order.
//!
//! The sum runs in `LANES` independent partial sums (element `j` of every full chunk of
//! `LANES` elements goes to lane `j`), the elements after the last full chunk go to a separate
//! `tail` sum (left to right), the lanes are then combined by a fixed pairwise tree
//! (`l += l + width` for `width = 8, 4, 2, 1`) and the result is `lanes[0] + tail`. Every
//! element enters its sum as one IEEE `f32` subtraction `t = x_j − y_j` followed by one *fused*
//! multiply-add `acc ← fma(t, t, acc)` (a single rounding); the tree uses plain additions. A
//! fused multiply-add is correctly rounded by definition, so the value is the same on every CPU
//! and with every instruction width: the hardware FMA of the SIMD kernels, `f32::mul_add`, and
//! the portable emulation [`fmadd`] uses where the build has no FMA (exact product in `f64`,
//! sum rounded to odd, then to `f32`) all give the same bits.
//!
//! [`sq_dist_many`] evaluates several distances from one row at once (independent
//! accumulators, so the additions pipeline), each with exactly the order of [`sq_dist`].
//!
//! The coreset selection is the user: its keys are these distances, so every CPU selects the
//! same rows. The portable kernels are here ([`Portable`] for rows, [`PortableBlocks`] for
//! transposed blocks of rows); `x86_fma.rs` and `x86_avx512.rs` hold the SIMD ones, whose
//! tokens ([`Fma`], [`Avx512Blocks`]) come from [`crate::kernels::cpu`].

mod blocks;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;
#[cfg(target_arch = "x86_64")]
mod x86_fma;

#[cfg(target_arch = "x86_64")]
use blocks::sq_block_loops;
pub(crate) use blocks::{BlockKernel, PortableBlocks, R};
#[cfg(target_arch = "x86_64")]
pub(crate) use x86_avx512::Avx512Blocks;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86_fma::{Fma, FmaBlocks};

/// `a·b + c` with a single rounding (IEEE fused multiply-add), for finite `f32` operands.
///
/// Builds with hardware FMA (or on AArch64, where it is always present) use `f32::mul_add`
/// directly. Elsewhere `f32::mul_add` may be a slow library call, so the product is formed
/// exactly in `f64` (24 + 24 significant bits fit in 53), the sum is rounded to odd in `f64`
/// (round to nearest, then one step towards the exact sum when inexact and even), and the
/// final conversion to `f32` is then correctly rounded: with 53 ≥ 24 + 2 bits, rounding to odd
/// first never causes a double-rounding error.
#[inline(always)]
pub(crate) fn fmadd(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(any(target_feature = "fma", target_arch = "aarch64"))]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(any(target_feature = "fma", target_arch = "aarch64")))]
    {
        fmadd_via_f64(a, b, c)
    }
}

/// The `f64` emulation of [`fmadd`] (see there); exact for all finite operands.
#[inline(always)]
#[cfg_attr(any(target_feature = "fma", target_arch = "aarch64"), allow(dead_code))]
pub(crate) fn fmadd_via_f64(a: f32, b: f32, c: f32) -> f32 {
    let p = a as f64 * b as f64; // exact
    let c = c as f64;
    let s = p + c;
    // TwoSum: `err` is the exact rounding error of `s` (finite operands, no overflow in f64).
    let bb = s - p;
    let err = (p - (s - bb)) + (c - bb);
    let bits = s.to_bits();
    let odd = if err != 0.0 && bits & 1 == 0 {
        // The other neighbour of the exact sum: away from zero when `err` has the sign of
        // `s`, towards zero otherwise (the bits of an f64 grow with its magnitude).
        if (err > 0.0) == (s > 0.0) {
            f64::from_bits(bits + 1)
        } else {
            f64::from_bits(bits - 1)
        }
    } else {
        s
    };
    odd as f32
}

/// Lanes of the distance accumulator.
pub(crate) const LANES: usize = 16;

/// One chunk of `LANES` elements into the lane accumulators.
#[inline(always)]
fn step(acc: &mut [f32; LANES], x: &[f32; LANES], y: &[f32; LANES]) {
    for l in 0..LANES {
        let t = x[l] - y[l];
        acc[l] = fmadd(t, t, acc[l]);
    }
}

/// The fixed pairwise reduction of the lanes.
#[inline(always)]
fn reduce(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    acc[0]
}

/// The elements after the last full chunk, left to right.
#[inline(always)]
fn tail(x: &[f32], y: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let t = a - b;
        s = fmadd(t, t, s);
    }
    s
}

/// Squared distances from `x` to each of the `C` rows `ys` (`C` ≤ 4), each summed in the fixed
/// order described in the module documentation. All slices must have the length of `x`.
#[inline(always)]
pub(crate) fn sq_dist_many<const C: usize>(x: &[f32], ys: [&[f32]; C]) -> [f32; C] {
    let n = x.len();
    let full = n - n % LANES;
    let ys = ys.map(|y| &y[..n]);
    let mut acc = [[0.0f32; LANES]; C];
    let chunk = |v: &[f32], s: usize| -> [f32; LANES] {
        let mut a = [0.0f32; LANES];
        a.copy_from_slice(&v[s..s + LANES]);
        a
    };
    let mut s = 0;
    while s < full {
        let xs = chunk(x, s);
        // Written out so that the accumulators stay in registers.
        if C > 0 {
            step(&mut acc[0], &xs, &chunk(ys[0], s));
        }
        if C > 1 {
            step(&mut acc[1], &xs, &chunk(ys[1], s));
        }
        if C > 2 {
            step(&mut acc[2], &xs, &chunk(ys[2], s));
        }
        if C > 3 {
            step(&mut acc[3], &xs, &chunk(ys[3], s));
        }
        s += LANES;
    }
    let mut out = [0.0f32; C];
    for c in 0..C {
        out[c] = reduce(acc[c]) + tail(&x[full..], &ys[c][full..]);
    }
    out
}

/// Squared Euclidean distance with the fixed summation order (see the module documentation).
#[inline(always)]
pub(crate) fn sq_dist(x: &[f32], y: &[f32]) -> f32 {
    sq_dist_many(x, [y])[0]
}

/// Euclidean distance `Δ(x, y)` used by every sampler (the definition; the passes compute the
/// same bits with the dispatched kernels).
#[inline(always)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn dist(x: &[f32], y: &[f32]) -> f32 {
    sq_dist(x, y).sqrt()
}

/// How distances between row-major rows are computed: the portable kernel, or the AVX + FMA
/// one. Both give the same bits (see the module documentation).
pub(crate) trait Kernel: Copy + Send + Sync {
    /// Squared distances from `x` to four rows.
    fn sq4(self, x: &[f32], ys: [&[f32]; 4]) -> [f32; 4];
    /// Squared distance from `x` to one row.
    fn sq1(self, x: &[f32], y: &[f32]) -> f32;
}

/// The portable kernel ([`sq_dist_many`]).
#[derive(Clone, Copy)]
pub(crate) struct Portable;

impl Kernel for Portable {
    #[inline(always)]
    fn sq4(self, x: &[f32], ys: [&[f32]; 4]) -> [f32; 4] {
        sq_dist_many(x, ys)
    }
    #[inline(always)]
    fn sq1(self, x: &[f32], y: &[f32]) -> f32 {
        sq_dist(x, y)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The summation order spelled out one element at a time, independently of the kernel
    /// (also the oracle of the `blocked` kernels' tests).
    pub(crate) fn reference_sq_dist(x: &[f32], y: &[f32]) -> f32 {
        let n = x.len();
        let full = n - n % LANES;
        let mut lanes = [0.0f32; LANES];
        for j in 0..full {
            let t = x[j] - y[j];
            lanes[j % LANES] = t.mul_add(t, lanes[j % LANES]);
        }
        let mut tail = 0.0f32;
        for j in full..n {
            let t = x[j] - y[j];
            tail = t.mul_add(t, tail);
        }
        for width in [8, 4, 2, 1] {
            for l in 0..width {
                lanes[l] += lanes[l + width];
            }
        }
        lanes[0] + tail
    }

    #[test]
    fn sq_dist_matches_plain_sum_on_integers() {
        // Integer data: every partial sum is exact, so any summation order agrees.
        for len in [1usize, 5, 16, 17, 33, 128, 130] {
            let x: Vec<f32> = (0..len).map(|i| (i % 7) as f32 - 3.0).collect();
            let y: Vec<f32> = (0..len).map(|i| (i % 5) as f32).collect();
            let plain: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
            assert_eq!(sq_dist(&x, &y), plain, "len {len}");
        }
    }

    #[test]
    fn kernels_follow_the_documented_order_bit_for_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for len in [1usize, 3, 15, 16, 17, 31, 32, 100, 128, 129, 1536] {
            let x: Vec<f32> = (0..len).map(|_| rng.random_range(-3.0f32..3.0)).collect();
            let ys: Vec<Vec<f32>> = (0..4)
                .map(|_| (0..len).map(|_| rng.random_range(-3.0f32..3.0)).collect())
                .collect();
            let want: Vec<f32> = ys.iter().map(|y| reference_sq_dist(&x, y)).collect();
            assert_eq!(
                sq_dist(&x, &ys[0]).to_bits(),
                want[0].to_bits(),
                "len {len}"
            );
            let four = sq_dist_many(&x, [&ys[0], &ys[1], &ys[2], &ys[3]]);
            for c in 0..4 {
                assert_eq!(four[c].to_bits(), want[c].to_bits(), "len {len}, c {c}");
            }
            assert_eq!(dist(&x, &x), 0.0);
            #[cfg(target_arch = "x86_64")]
            if let Some(k) = Fma::detect() {
                assert_eq!(
                    k.sq1(&x, &ys[1]).to_bits(),
                    want[1].to_bits(),
                    "avx len {len}"
                );
                let four = k.sq4(&x, [&ys[0], &ys[1], &ys[2], &ys[3]]);
                for c in 0..4 {
                    assert_eq!(four[c].to_bits(), want[c].to_bits(), "avx len {len}, c {c}");
                }
            }
        }
    }

    /// The `f64` emulation against the library's correctly rounded `f32::mul_add`.
    #[test]
    fn emulated_fma_is_correctly_rounded() {
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        let check = |a: f32, b: f32, c: f32| {
            assert_eq!(
                fmadd_via_f64(a, b, c).to_bits(),
                a.mul_add(b, c).to_bits(),
                "fma({a:e}, {b:e}, {c:e})"
            );
            assert_eq!(fmadd(a, b, c).to_bits(), a.mul_add(b, c).to_bits());
        };
        for _ in 0..200_000 {
            let t = rng.random_range(-4.0f32..4.0);
            let acc = rng.random_range(0.0f32..1000.0);
            check(t, t, acc);
            // Exponents far apart and cancellation.
            let e: i32 = rng.random_range(-60..60);
            let a = rng.random_range(-2.0f32..2.0) * 2f32.powi(e);
            let b = rng.random_range(-2.0f32..2.0);
            check(a, b, -(a * b));
            check(a, b, rng.random_range(-1.0f32..1.0) * 2f32.powi(-e / 2));
        }
        // Hard cases: the exact result lies just beside an f32 rounding midpoint (the product
        // of `1 + 2^-12`-type values has bits far below the f32 precision).
        let one_p = 1.0f32 + f32::EPSILON;
        for k in 0..64 {
            let a = 1.0f32 + (k as f32) * f32::EPSILON;
            check(a, one_p, 2f32.powi(-24));
            check(a, one_p, -(2f32.powi(-24)));
            check(a, a, 1.0);
            check(a, -a, 1.0);
            check(a, 1.5, 2f32.powi(-25) + 2f32.powi(-48));
        }
        // Subnormal results and zeros.
        for &(a, b, c) in &[
            (1e-20f32, 1e-20f32, 0.0f32),
            (1e-20, 1e-19, 1e-40),
            (0.0, 5.0, -0.0),
            (-0.0, 5.0, 0.0),
            (3.0, 0.0, -0.0),
            (1e-30, -1e-10, 1.4e-45),
        ] {
            check(a, b, c);
        }
    }
}
