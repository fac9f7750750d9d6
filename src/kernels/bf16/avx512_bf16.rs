//! The AVX512-BF16 micro-kernel: `vdpbf16ps` on 8 rows × up to 48 columns (24 zmm
//! accumulators), one broadcast pair of `A` per row and up to three vectors of `B` per pair.

use std::arch::x86_64::{
    __m512bh, __m512i, _mm512_dpbf16_ps, _mm512_loadu_ps, _mm512_loadu_si512, _mm512_set1_epi32,
    _mm512_setzero_ps, _mm512_storeu_ps,
};

use super::{Tile, MR};

/// The AVX512-BF16 kernel. A value can only be obtained from [`Avx512Bf16::detect`], so
/// holding one proves that the CPU supports AVX512F and AVX512-BF16.
#[derive(Clone, Copy)]
pub(super) struct Avx512Bf16(());

impl Avx512Bf16 {
    /// The kernel if the CPU supports AVX512F and AVX512-BF16.
    pub(super) fn detect() -> Option<Avx512Bf16> {
        let cpu = crate::kernels::cpu::features();
        if cpu.avx512f && cpu.avx512bf16 {
            Some(Avx512Bf16(()))
        } else {
            None
        }
    }

    /// See [`super::Kernel::tile`].
    #[inline]
    pub(super) fn tile(
        self,
        a: &[u32],
        b: &[u16],
        kp: usize,
        width: usize,
        acc: &mut Tile,
        fresh: bool,
    ) {
        assert!(a.len() >= kp * MR && b.len() >= kp * width * 2);
        // SAFETY: `self` exists, so the CPU supports AVX512F and AVX512-BF16 (see `detect`);
        // the assert above is each kernel's bounds requirement for its `W = 16·NV = width`.
        unsafe {
            match (width, fresh) {
                (48, true) => tile_nv::<3, true>(a.as_ptr(), b.as_ptr(), kp, acc),
                (48, false) => tile_nv::<3, false>(a.as_ptr(), b.as_ptr(), kp, acc),
                (32, true) => tile_nv::<2, true>(a.as_ptr(), b.as_ptr(), kp, acc),
                (32, false) => tile_nv::<2, false>(a.as_ptr(), b.as_ptr(), kp, acc),
                (16, true) => tile_nv::<1, true>(a.as_ptr(), b.as_ptr(), kp, acc),
                (16, false) => tile_nv::<1, false>(a.as_ptr(), b.as_ptr(), kp, acc),
                _ => unreachable!("panel width {width} is not 16, 32 or 48"),
            }
        }
    }
}

/// Reinterprets 32 packed bf16 values.
#[inline(always)]
fn as_bh(v: __m512i) -> __m512bh {
    // SAFETY: both types are plain 64-byte SIMD vectors for which every bit pattern is valid.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// `acc[r][j] += Σ_t` (odd, then even element of pair `t`) for rows `r < 8`, columns
/// `j < 16·NV`, pairs `t < kp`: `vdpbf16ps` computes exactly that per lane (Intel's
/// pseudo-code: `+= src1.bf16[2i+1]·src2.bf16[2i+1]`, then `+= …[2i+0]`). With `FRESH` the
/// sums start from zero instead of `acc` (which is then only written).
///
/// # Safety
/// The CPU must support `avx512f` and `avx512bf16`; `a` must be readable for `kp·8` `u32`
/// and `b` for `kp·16·NV·2` `u16`.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_nv<const NV: usize, const FRESH: bool>(
    a: *const u32,
    b: *const u16,
    kp: usize,
    acc: &mut Tile,
) {
    let mut c = [[_mm512_setzero_ps(); NV]; MR];
    if !FRESH {
        for (cr, ar) in c.iter_mut().zip(acc.iter()) {
            for (v, cv) in cr.iter_mut().enumerate() {
                // SAFETY: each accumulator row holds 48 ≥ 16·NV f32; unaligned load.
                *cv = unsafe { _mm512_loadu_ps(ar.as_ptr().add(16 * v)) };
            }
        }
    }
    for t in 0..kp {
        let mut bv = [as_bh(_mm512_set1_epi32(0)); NV];
        for (v, x) in bv.iter_mut().enumerate() {
            // SAFETY: `t < kp`, so `(t·NV + v)·32 + 32 ≤ kp·16·NV·2` values are readable.
            *x = as_bh(unsafe { _mm512_loadu_si512(b.add((t * NV + v) * 32).cast::<__m512i>()) });
        }
        for (r, cr) in c.iter_mut().enumerate() {
            // SAFETY: `t·8 + r < kp·8`.
            let pair = unsafe { *a.add(t * MR + r) };
            let av = as_bh(_mm512_set1_epi32(pair as i32));
            for (cv, &x) in cr.iter_mut().zip(&bv) {
                *cv = _mm512_dpbf16_ps(*cv, av, x);
            }
        }
    }
    for (cr, ar) in c.iter().zip(acc.iter_mut()) {
        for (v, &cv) in cr.iter().enumerate() {
            // SAFETY: as for the loads.
            unsafe { _mm512_storeu_ps(ar.as_mut_ptr().add(16 * v), cv) };
        }
    }
}
