//! The sums of the direct convolution with AVX-512 intrinsics: the block's sums are
//! `CO·N` vector registers (24 for the stem's whole blocks), one fused multiply-add each per
//! tap.

use std::arch::x86_64::*;

use super::{CO, LANES, VECS};

/// `sums[c][..16·N]` = per tap `t` in order, `fma(w[t][c], x, sum)` with `x` the 16·N values
/// of `phases` from `base + offsets[t]` (see `Kernel::sums`).
///
/// # Safety
/// The CPU must run AVX512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn sums<const N: usize>(
    phases: &[f32],
    w: &[[f32; CO]],
    offsets: &[usize],
    base: usize,
    sums: &mut [[f32; LANES * VECS]; CO],
) {
    const { assert!(N >= 1 && N <= VECS) };
    let mut acc = [[_mm512_setzero_ps(); N]; CO];
    for (wt, &off) in w.iter().zip(offsets) {
        let src = &phases[base + off..][..N * LANES];
        let mut x = [_mm512_setzero_ps(); N];
        for (v, xv) in x.iter_mut().enumerate() {
            // SAFETY: `src` holds `16·N` values and `v < N`: 16 values from `16·v` are in it.
            *xv = unsafe { _mm512_loadu_ps(src.as_ptr().add(v * LANES)) };
        }
        for (a, &wc) in acc.iter_mut().zip(wt) {
            let wv = _mm512_set1_ps(wc);
            for (av, &xv) in a.iter_mut().zip(&x) {
                *av = _mm512_fmadd_ps(wv, xv, *av);
            }
        }
    }
    for (dst, a) in sums.iter_mut().zip(&acc) {
        for (v, &av) in a.iter().enumerate() {
            // SAFETY: `dst` holds `16·VECS ≥ 16·N` values and `v < N`.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add(v * LANES), av) };
        }
    }
}
