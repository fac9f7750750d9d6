//! The AVX-VNNI int8 micro-kernel: `vpdpbusd` on 256-bit registers (the VEX encoding of
//! Alder Lake, Meteor Lake and other CPUs with AVX2 but without AVX-512, and of later
//! AVX-512 CPUs too).
//!
//! A tile of [`MR`] × [`NR`] sums takes four passes over the panels, each a block of 4 rows ×
//! 24 columns: 12 accumulators, three activation vectors and one broadcast weight fill the 16
//! registers.

use super::{MR, NR};

/// Proof that the CPU runs AVX2 and AVX-VNNI: a value exists only if [`VnniYmm::detect`]
/// found them.
#[derive(Debug, Clone, Copy)]
pub(super) struct VnniYmm(());

impl VnniYmm {
    /// The kernel, if this CPU runs it.
    pub(super) fn detect() -> Option<VnniYmm> {
        #[cfg(target_arch = "x86_64")]
        {
            let cpu = crate::kernels::cpu::features();
            if cpu.avx2 && cpu.avxvnni {
                return Some(VnniYmm(()));
            }
        }
        None
    }

    /// As [`super::portable::tile`], same exact result.
    pub(super) fn tile(self, a: &[i32], b: &[u32], k4: usize, tile: &mut [[i32; NR]; MR]) {
        assert!(
            a.len() >= k4 * MR && b.len() >= k4 * NR,
            "int8 tile: short panels"
        );
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `self` exists only when `detect` found avx2 and avxvnni; the panels are
            // at least as long as the kernel reads (asserted above).
            unsafe { tile_ymm(a, b, k4, tile) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            super::portable::tile(a, b, k4, tile)
        }
    }
}

/// # Safety
/// The CPU must support avx2 and avxvnni; `a` must hold `k4·MR` words and `b` `k4·NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn tile_ymm(a: &[i32], b: &[u32], k4: usize, tile: &mut [[i32; NR]; MR]) {
    use std::arch::x86_64::{
        __m256i, _mm256_dpbusd_avx_epi32, _mm256_loadu_si256, _mm256_set1_epi32,
        _mm256_setzero_si256, _mm256_storeu_si256,
    };
    const _: () = assert!(NR == 48 && MR == 8);
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for r0 in [0, 4] {
        for c0 in [0, 24] {
            let mut acc = [[_mm256_setzero_si256(); 3]; 4];
            for g in 0..k4 {
                // SAFETY: g < k4 and c0 + 24 ≤ NR, so the 24 words at `bp + g·NR + c0` lie
                // inside `b` (caller's contract); unaligned loads.
                let (b0, b1, b2) = unsafe {
                    let p = bp.add(g * NR + c0).cast::<__m256i>();
                    (
                        _mm256_loadu_si256(p),
                        _mm256_loadu_si256(p.add(1)),
                        _mm256_loadu_si256(p.add(2)),
                    )
                };
                for (r, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: g·MR + r0 + r < k4·MR ≤ a.len() (caller's contract).
                    let w = _mm256_set1_epi32(unsafe { *ap.add(g * MR + r0 + r) });
                    // u8 activations (first source) times i8 weights (second source): exact.
                    acc[0] = _mm256_dpbusd_avx_epi32(acc[0], b0, w);
                    acc[1] = _mm256_dpbusd_avx_epi32(acc[1], b1, w);
                    acc[2] = _mm256_dpbusd_avx_epi32(acc[2], b2, w);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let p = tile[r0 + r][c0..c0 + 24].as_mut_ptr().cast::<__m256i>();
                // SAFETY: the 24 i32 at `p` are three 32-byte vectors of row r0 + r, columns
                // c0..c0 + 24 (in bounds: sliced above); unaligned stores.
                unsafe {
                    _mm256_storeu_si256(p, acc[0]);
                    _mm256_storeu_si256(p.add(1), acc[1]);
                    _mm256_storeu_si256(p.add(2), acc[2]);
                }
            }
        }
    }
}
