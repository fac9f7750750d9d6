//! The selection distance `Δ(x, y) = sqrt(Σ_j (x_j − y_j)²)` with a fixed summation order.
//!
//! The sum runs in `LANES` independent partial sums (element `j` of every full chunk of
//! `LANES` elements goes to lane `j`), the elements after the last full chunk go to a separate
//! `tail` sum (left to right), the lanes are then combined by a fixed pairwise tree
//! (`l += l + width` for `width = 8, 4, 2, 1`) and the result is `lanes[0] + tail`. Every
//! operation is a plain IEEE `f32` subtract, multiply or add (never fused), so the value is the
//! same on every CPU and with every instruction width the compiler picks: the 16 lanes map onto
//! four SSE registers, two AVX registers or one AVX-512 register without changing a single
//! rounding.
//!
//! [`sq_dist_many`] evaluates several distances from one row at once (independent
//! accumulators, so the additions pipeline), each with exactly the order of [`sq_dist`].

/// Lanes of the distance accumulator.
pub(super) const LANES: usize = 16;

/// One chunk of `LANES` elements into the lane accumulators.
#[inline(always)]
fn step(acc: &mut [f32; LANES], x: &[f32; LANES], y: &[f32; LANES]) {
    for l in 0..LANES {
        let t = x[l] - y[l];
        acc[l] += t * t;
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
        s += t * t;
    }
    s
}

/// Squared distances from `x` to each of the `C` rows `ys` (`C` ≤ 4), each summed in the fixed
/// order described in the module documentation. All slices must have the length of `x`.
#[inline(always)]
pub(super) fn sq_dist_many<const C: usize>(x: &[f32], ys: [&[f32]; C]) -> [f32; C] {
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
pub(super) fn sq_dist(x: &[f32], y: &[f32]) -> f32 {
    sq_dist_many(x, [y])[0]
}

/// Euclidean distance `Δ(x, y)` used by every sampler.
#[inline(always)]
pub(super) fn dist(x: &[f32], y: &[f32]) -> f32 {
    sq_dist(x, y).sqrt()
}

/// How a block of rows computes its distances: the portable kernel, or the AVX one. Both give
/// the same bits (see the module documentation).
pub(super) trait Kernel: Copy + Send + Sync {
    /// Squared distances from `x` to four rows.
    fn sq4(self, x: &[f32], ys: [&[f32]; 4]) -> [f32; 4];
    /// Squared distance from `x` to one row.
    fn sq1(self, x: &[f32], y: &[f32]) -> f32;
}

/// The portable kernel ([`sq_dist_many`]).
#[derive(Clone, Copy)]
pub(super) struct Portable;

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

#[cfg(target_arch = "x86_64")]
pub(super) use avx::Avx;

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::{Kernel, LANES};
    use std::arch::x86_64::*;

    // The kernel splits the lanes into two 8-wide registers.
    const _: () = assert!(LANES == 16);

    /// The AVX kernel. A value can only be obtained from [`Avx::detect`], so holding one proves
    /// that the CPU supports AVX.
    #[derive(Clone, Copy)]
    pub(in crate::coreset) struct Avx(());

    impl Avx {
        /// Runs `f` compiled with AVX enabled, so that the kernel inlines into it (`f` should be
        /// an `#[inline(always)]` body).
        #[inline(always)]
        pub(in crate::coreset) fn run<R>(self, f: impl FnOnce() -> R) -> R {
            #[target_feature(enable = "avx")]
            fn with_avx<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: `self` exists, so the CPU supports AVX (see `Avx::detect`).
            unsafe { with_avx(f) }
        }

        /// The kernel if the CPU supports AVX.
        pub(in crate::coreset) fn detect() -> Option<Avx> {
            if std::arch::is_x86_feature_detected!("avx") {
                Some(Avx(()))
            } else {
                None
            }
        }
    }

    impl Kernel for Avx {
        #[inline(always)]
        fn sq4(self, x: &[f32], ys: [&[f32]; 4]) -> [f32; 4] {
            // SAFETY: `self` exists, so the CPU supports AVX (see `Avx::detect`).
            unsafe { sq4(x, ys) }
        }
        #[inline(always)]
        fn sq1(self, x: &[f32], y: &[f32]) -> f32 {
            // SAFETY: as above.
            unsafe { sq1(x, y) }
        }
    }

    /// The pairwise lane tree on lanes `lo` (0–7) and `hi` (8–15), then `+ tail`: the same IEEE
    /// additions, on the same operands, as the portable `reduce`.
    ///
    /// # Safety
    /// AVX must be available; call only from code compiled with AVX enabled (inside
    /// [`Avx::run`]), so that the intrinsics inline.
    #[inline(always)]
    unsafe fn finish(lo: __m256, hi: __m256, tail: f32) -> f32 {
        let s8 = _mm256_add_ps(lo, hi); // l += l + 8
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8)); // l += l + 4
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4)); // l += l + 2
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)); // l += l + 1
        _mm_cvtss_f32(s1) + tail
    }

    /// `(x − y)²` added lane-wise to `acc`, on the 8 elements at `xp`, `yp`.
    ///
    /// # Safety
    /// As [`finish`], and `yp` must be valid for reading 8 `f32`.
    #[inline(always)]
    unsafe fn step(acc: __m256, x: __m256, yp: *const f32) -> __m256 {
        // SAFETY: the caller guarantees 8 readable floats at `yp`.
        let t = _mm256_sub_ps(x, unsafe { _mm256_loadu_ps(yp) });
        _mm256_add_ps(acc, _mm256_mul_ps(t, t))
    }

    /// # Safety
    /// As [`finish`].
    #[inline(always)]
    unsafe fn sq4(x: &[f32], ys: [&[f32]; 4]) -> [f32; 4] {
        let n = x.len();
        let full = n - n % LANES;
        let ys = ys.map(|y| &y[..n]);
        let z = _mm256_setzero_ps();
        let (mut l0, mut l1, mut l2, mut l3) = (z, z, z, z);
        let (mut h0, mut h1, mut h2, mut h3) = (z, z, z, z);
        let mut s = 0;
        while s < full {
            // SAFETY: `s + LANES ≤ full ≤ n` and every slice holds `n` floats, so all the loads
            // below read inside the slices.
            unsafe {
                let xp = x.as_ptr().add(s);
                let xl = _mm256_loadu_ps(xp);
                let xh = _mm256_loadu_ps(xp.add(8));
                l0 = step(l0, xl, ys[0].as_ptr().add(s));
                h0 = step(h0, xh, ys[0].as_ptr().add(s + 8));
                l1 = step(l1, xl, ys[1].as_ptr().add(s));
                h1 = step(h1, xh, ys[1].as_ptr().add(s + 8));
                l2 = step(l2, xl, ys[2].as_ptr().add(s));
                h2 = step(h2, xh, ys[2].as_ptr().add(s + 8));
                l3 = step(l3, xl, ys[3].as_ptr().add(s));
                h3 = step(h3, xh, ys[3].as_ptr().add(s + 8));
            }
            s += LANES;
        }
        let t = |y: &[f32]| super::tail(&x[full..], &y[full..]);
        [
            finish(l0, h0, t(ys[0])),
            finish(l1, h1, t(ys[1])),
            finish(l2, h2, t(ys[2])),
            finish(l3, h3, t(ys[3])),
        ]
    }

    /// # Safety
    /// As [`finish`].
    #[inline(always)]
    unsafe fn sq1(x: &[f32], y: &[f32]) -> f32 {
        let n = x.len();
        let full = n - n % LANES;
        let y = &y[..n];
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut s = 0;
        while s < full {
            // SAFETY: `s + LANES ≤ n`, both slices hold `n` floats.
            unsafe {
                let xp = x.as_ptr().add(s);
                lo = step(lo, _mm256_loadu_ps(xp), y.as_ptr().add(s));
                hi = step(hi, _mm256_loadu_ps(xp.add(8)), y.as_ptr().add(s + 8));
            }
            s += LANES;
        }
        finish(lo, hi, super::tail(&x[full..], &y[full..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The summation order spelled out one element at a time, independently of the kernel.
    fn reference_sq_dist(x: &[f32], y: &[f32]) -> f32 {
        let n = x.len();
        let full = n - n % LANES;
        let mut lanes = [0.0f32; LANES];
        for j in 0..full {
            let t = x[j] - y[j];
            lanes[j % LANES] += t * t;
        }
        let mut tail = 0.0f32;
        for j in full..n {
            let t = x[j] - y[j];
            tail += t * t;
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
            if let Some(k) = Avx::detect() {
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
}
