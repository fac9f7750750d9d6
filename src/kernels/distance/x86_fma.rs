//! The AVX + FMA distance kernels (x86-64): the row kernel with explicit 256-bit intrinsics,
//! and the portable block loops compiled with AVX + FMA (where `f32::mul_add` is the FMA
//! instruction). Both give the bits of the portable kernels (see the [module
//! documentation](super)).

use super::{sq_block_loops, BlockKernel, Kernel, LANES, R};
use std::arch::x86_64::*;

// The kernel splits the lanes into two 8-wide registers.
const _: () = assert!(LANES == 16);

/// The AVX + FMA kernel. A value can only be obtained from [`Fma::detect`], so holding one
/// proves that the CPU supports AVX and FMA.
#[derive(Clone, Copy)]
pub(crate) struct Fma(());

impl Fma {
    /// Runs `f` compiled with AVX and FMA enabled, so that the kernel inlines into it (`f`
    /// should be an `#[inline(always)]` body).
    #[inline(always)]
    pub(crate) fn run<T>(self, f: impl FnOnce() -> T) -> T {
        #[target_feature(enable = "avx,fma")]
        fn with_fma<T>(f: impl FnOnce() -> T) -> T {
            f()
        }
        // SAFETY: `self` exists, so the CPU supports AVX and FMA (see `Fma::detect`).
        unsafe { with_fma(f) }
    }

    /// The kernel if the CPU supports AVX and FMA.
    pub(crate) fn detect() -> Option<Fma> {
        let cpu = crate::kernels::cpu::features();
        if cpu.avx && cpu.fma {
            Some(Fma(()))
        } else {
            None
        }
    }
}

impl Kernel for Fma {
    #[inline(always)]
    fn sq4(self, x: &[f32], ys: [&[f32]; 4]) -> [f32; 4] {
        // SAFETY: `self` exists, so the CPU supports AVX and FMA (see `Fma::detect`).
        unsafe { sq4(x, ys) }
    }
    #[inline(always)]
    fn sq1(self, x: &[f32], y: &[f32]) -> f32 {
        // SAFETY: as above.
        unsafe { sq1(x, y) }
    }
}

/// The block loops compiled with AVX + FMA (`f32::mul_add` is the FMA instruction there):
/// for CPUs without AVX-512.
#[derive(Clone, Copy)]
pub(crate) struct FmaBlocks(pub(crate) Fma);

impl BlockKernel for FmaBlocks {
    #[inline(always)]
    fn sq_block<const C: usize>(
        self,
        blk: &[f32],
        centres: [&[f32]; C],
        thr: &[f32; R],
    ) -> Option<[[f32; R]; C]> {
        sq_block_loops(f32::mul_add, blk, centres, thr)
    }
}

/// The tail (elements after the last full chunk), left to right with fused multiply-adds:
/// the portable `tail` (`f32::mul_add` is the FMA instruction here).
///
/// # Safety
/// AVX and FMA must be available; call only from code compiled with them enabled (inside
/// [`Fma::run`]), so that the intrinsics inline.
#[inline(always)]
unsafe fn tail(x: &[f32], y: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let t = a - b;
        s = t.mul_add(t, s);
    }
    s
}

/// The pairwise lane tree on lanes `lo` (0–7) and `hi` (8–15), then `+ tail`: the same IEEE
/// additions, on the same operands, as the portable `reduce`.
///
/// # Safety
/// As [`tail`].
#[inline(always)]
unsafe fn finish(lo: __m256, hi: __m256, tail: f32) -> f32 {
    let s8 = _mm256_add_ps(lo, hi); // l += l + 8
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8)); // l += l + 4
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4)); // l += l + 2
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)); // l += l + 1
    _mm_cvtss_f32(s1) + tail
}

/// `fma(x − y, x − y, acc)` lane-wise, on the 8 elements of `x` and at `yp`.
///
/// # Safety
/// As [`tail`], and `yp` must be valid for reading 8 `f32`.
#[inline(always)]
unsafe fn step(acc: __m256, x: __m256, yp: *const f32) -> __m256 {
    // SAFETY: the caller guarantees 8 readable floats at `yp`.
    let t = _mm256_sub_ps(x, unsafe { _mm256_loadu_ps(yp) });
    _mm256_fmadd_ps(t, t, acc)
}

/// # Safety
/// As [`tail`].
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
    let t = |y: &[f32]| {
        // SAFETY: as this function's own contract.
        unsafe { tail(&x[full..], &y[full..]) }
    };
    [
        finish(l0, h0, t(ys[0])),
        finish(l1, h1, t(ys[1])),
        finish(l2, h2, t(ys[2])),
        finish(l3, h3, t(ys[3])),
    ]
}

/// # Safety
/// As [`tail`].
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
    // SAFETY: as this function's own contract.
    finish(lo, hi, unsafe { tail(&x[full..], &y[full..]) })
}
