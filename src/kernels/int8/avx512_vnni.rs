//! The AVX-512 VNNI int8 micro-kernel: `vpdpbusd` on 512-bit registers.

use super::{MR, NR};

/// Proof that the CPU runs AVX-512F/BW and AVX512-VNNI: a value exists only if
/// [`Vnni512::detect`] found them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Vnni512(());

impl Vnni512 {
    /// The kernel, if this CPU runs it.
    pub(super) fn detect() -> Option<Vnni512> {
        #[cfg(target_arch = "x86_64")]
        {
            let cpu = crate::kernels::cpu::features();
            if cpu.avx512f && cpu.avx512bw && cpu.avx512vnni {
                return Some(Vnni512(()));
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
            // SAFETY: `self` exists only when `detect` found avx512f, avx512bw and avx512vnni;
            // the panels are at least as long as the kernel reads (asserted above).
            unsafe { tile_avx512(a, b, k4, tile) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            super::portable::tile(a, b, k4, tile)
        }
    }
}

/// # Safety
/// The CPU must support avx512f, avx512bw and avx512vnni; `a` must hold `k4·MR` words and `b`
/// `k4·NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_avx512(a: &[i32], b: &[u32], k4: usize, tile: &mut [[i32; NR]; MR]) {
    use std::arch::x86_64::{
        __m512i, _mm512_dpbusd_epi32, _mm512_loadu_si512, _mm512_set1_epi32, _mm512_setzero_si512,
        _mm512_storeu_si512,
    };
    const _: () = assert!(NR == 48 && MR == 8);
    let mut acc = [[_mm512_setzero_si512(); 3]; MR];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for g in 0..k4 {
        // SAFETY: g < k4, so the 48 words at `bp + g·NR` lie inside `b` (caller's contract);
        // unaligned loads.
        let (b0, b1, b2) = unsafe {
            let p = bp.add(g * NR).cast::<__m512i>();
            (
                _mm512_loadu_si512(p),
                _mm512_loadu_si512(p.add(1)),
                _mm512_loadu_si512(p.add(2)),
            )
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: g·MR + r < k4·MR ≤ a.len() (caller's contract).
            let w = _mm512_set1_epi32(unsafe { *ap.add(g * MR + r) });
            // u8 activations (first source) times i8 weights (second source), four products
            // per 32-bit lane added to the lane's sum: exact (no saturation in vpdpbusd).
            acc[0] = _mm512_dpbusd_epi32(acc[0], b0, w);
            acc[1] = _mm512_dpbusd_epi32(acc[1], b1, w);
            acc[2] = _mm512_dpbusd_epi32(acc[2], b2, w);
        }
    }
    for (row, acc) in tile.iter_mut().zip(acc.iter()) {
        let p = row.as_mut_ptr().cast::<__m512i>();
        // SAFETY: each row holds 48 i32 = three 64-byte vectors; unaligned stores.
        unsafe {
            _mm512_storeu_si512(p, acc[0]);
            _mm512_storeu_si512(p.add(1), acc[1]);
            _mm512_storeu_si512(p.add(2), acc[2]);
        }
    }
}
