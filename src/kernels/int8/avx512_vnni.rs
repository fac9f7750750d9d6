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

    /// As [`super::portable::tile`], same exact result, for the first `cols` columns of the
    /// panel: the others of `tile` are left as they are. A panel with at most 16 or 32 columns
    /// in use (the last one of a product whose `n` is not a multiple of [`NR`], e.g. the 196
    /// pixels of a 14 × 14 image: 4 panels and 4 columns) runs one or two of the three
    /// registers' products instead of all three.
    pub(super) fn tile(
        self,
        a: &[i32],
        b: &[u32],
        k4: usize,
        cols: usize,
        tile: &mut [[i32; NR]; MR],
    ) {
        assert!(
            a.len() >= k4 * MR && b.len() >= k4 * NR,
            "int8 tile: short panels"
        );
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `self` exists only when `detect` found avx512f, avx512bw and avx512vnni;
            // the panels are at least as long as the kernel reads (asserted above).
            unsafe {
                match cols.div_ceil(16) {
                    0 | 1 => tile_avx512::<1>(a, b, k4, tile),
                    2 => tile_avx512::<2>(a, b, k4, tile),
                    _ => tile_avx512::<3>(a, b, k4, tile),
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (self, cols);
            super::portable::tile(a, b, k4, tile)
        }
    }
}

/// The first `16·V` columns of the tile (`V` ≤ 3 of the panel's three registers).
///
/// # Safety
/// The CPU must support avx512f, avx512bw and avx512vnni; `a` must hold `k4·MR` words and `b`
/// `k4·NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_avx512<const V: usize>(a: &[i32], b: &[u32], k4: usize, tile: &mut [[i32; NR]; MR]) {
    use std::arch::x86_64::{
        __m512i, _mm512_dpbusd_epi32, _mm512_loadu_si512, _mm512_set1_epi32, _mm512_setzero_si512,
        _mm512_storeu_si512,
    };
    const _: () = assert!(NR == 48 && MR == 8);
    const { assert!(V >= 1 && V <= 3) };
    let mut acc = [[_mm512_setzero_si512(); V]; MR];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for g in 0..k4 {
        let mut bv = [_mm512_setzero_si512(); V];
        for (v, bv) in bv.iter_mut().enumerate() {
            // SAFETY: g < k4 and v < V ≤ 3, so the 16 words at `bp + g·NR + 16·v` lie inside
            // `b` (caller's contract); unaligned load.
            *bv = unsafe { _mm512_loadu_si512(bp.add(g * NR + 16 * v).cast::<__m512i>()) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: g·MR + r < k4·MR ≤ a.len() (caller's contract).
            let w = _mm512_set1_epi32(unsafe { *ap.add(g * MR + r) });
            // u8 activations (first source) times i8 weights (second source), four products
            // per 32-bit lane added to the lane's sum: exact (no saturation in vpdpbusd).
            for (acc, &bv) in acc.iter_mut().zip(&bv) {
                *acc = _mm512_dpbusd_epi32(*acc, bv, w);
            }
        }
    }
    for (row, acc) in tile.iter_mut().zip(acc.iter()) {
        for (v, &acc) in acc.iter().enumerate() {
            // SAFETY: each row holds 48 i32 = three 64-byte vectors and v < V ≤ 3; unaligned
            // stores.
            unsafe { _mm512_storeu_si512(row.as_mut_ptr().add(16 * v).cast(), acc) };
        }
    }
}
