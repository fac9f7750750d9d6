//! The AVX-512 block distance kernel (x86-64): one register per partial sum, `R = 16` rows
//! per register; the bits of the portable block loops (see [`blocks`](super::blocks)).

use super::{BlockKernel, Fma, LANES, R};
use std::arch::x86_64::*;

// One register holds the R rows; the kernel splits the LANES partial sums in quarters.
const _: () = assert!(R == 16 && LANES == 16);

/// The AVX-512 block kernel. A value can only be obtained from [`Avx512Blocks::detect`], so
/// holding one proves that the CPU supports AVX-512F.
#[derive(Clone, Copy)]
pub(crate) struct Avx512Blocks(());

impl Avx512Blocks {
    /// The kernel if the CPU supports AVX-512F (and AVX + FMA, whose row kernel comes
    /// with it).
    pub(crate) fn detect() -> Option<(Avx512Blocks, Fma)> {
        match Fma::detect() {
            Some(f) if crate::kernels::cpu::features().avx512f => Some((Avx512Blocks(()), f)),
            _ => None,
        }
    }

    /// Runs `f` compiled with AVX-512F, AVX and FMA enabled, so that the block kernel and
    /// the AVX + FMA row kernel inline into it (`f` should be an `#[inline(always)]` body).
    #[inline(always)]
    pub(crate) fn run<T>(self, f: impl FnOnce() -> T) -> T {
        #[target_feature(enable = "avx512f,avx,fma")]
        fn with_avx512<T>(f: impl FnOnce() -> T) -> T {
            f()
        }
        // SAFETY: `self` exists, so the CPU supports AVX-512F, AVX and FMA (see
        // `Avx512Blocks::detect`).
        unsafe { with_avx512(f) }
    }
}

impl BlockKernel for Avx512Blocks {
    #[inline(always)]
    fn sq_block<const C: usize>(
        self,
        blk: &[f32],
        centres: [&[f32]; C],
        thr: &[f32; R],
    ) -> Option<[[f32; R]; C]> {
        // SAFETY: `self` exists, so the CPU supports AVX-512F (see `Avx512Blocks::detect`).
        unsafe { sq_block(blk, centres, thr) }
    }
}

/// Partial sums per centre held in registers during one sweep of [`sq_block`].
const SWEEP: usize = 4;

/// The block distances with one register per partial sum: lane `r` of accumulator `l` is
/// partial sum `l` of row `r`. The `LANES` partial sums are swept `SWEEP` at a time (sweep
/// `q` holds `l = q + S·k` for `k < SWEEP`, `S = LANES / SWEEP`), so that `SWEEP·C`
/// accumulators stay in registers. The levels of the lane tree whose pairs lie inside one
/// sweep (widths `8, …, S`: `l` and `l + w` differ by a multiple of `S`) end each sweep, and
/// the remaining levels (widths `S/2, …, 1`) combine the sweeps' results `u_q` in the same
/// pairwise order, then `+ tail`: the additions of the portable lane tree, on the same
/// operands.
///
/// # Safety
/// AVX-512F must be available; call only from code compiled with it enabled (inside
/// [`Avx512Blocks::run`]), so that the intrinsics inline.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // the sweep and lane indices read best as indices
unsafe fn sq_block<const C: usize>(
    blk: &[f32],
    centres: [&[f32]; C],
    thr: &[f32; R],
) -> Option<[[f32; R]; C]> {
    const S: usize = LANES / SWEEP;
    let d = blk.len() / R;
    let full = d - d % LANES;
    let ys = centres.map(|y| &y[..d]);
    let bp = blk.as_ptr();
    let z = _mm512_setzero_ps();
    let mut u = [[z; S]; C];
    for q in 0..S {
        let mut acc = [[z; SWEEP]; C];
        let mut s = 0;
        while s < full {
            for k in 0..SWEEP {
                let j = s + q + S * k;
                // SAFETY: `j < full ≤ d`: the block holds `R·d` floats, so `R` floats are
                // readable at `j·R`, and every centre holds `d` floats.
                unsafe {
                    let x = _mm512_loadu_ps(bp.add(j * R));
                    for c in 0..C {
                        let t = _mm512_sub_ps(x, _mm512_set1_ps(*ys[c].get_unchecked(j)));
                        acc[c][k] = _mm512_fmadd_ps(t, t, acc[c][k]);
                    }
                }
            }
            s += LANES;
        }
        for c in 0..C {
            // Widths 8, …, S: lanes l and l + w are k and k + w / S of this sweep.
            let mut w = LANES / 2;
            while w >= S {
                for k in 0..w / S {
                    acc[c][k] = _mm512_add_ps(acc[c][k], acc[c][k + w / S]);
                }
                w /= 2;
            }
            u[c][q] = acc[c][0];
        }
    }
    // SAFETY: `thr` holds R floats.
    let t = unsafe { _mm512_loadu_ps(thr.as_ptr()) };
    let mut below: __mmask16 = 0;
    let mut v = [z; C];
    for c in 0..C {
        let mut tail = z;
        for j in full..d {
            // SAFETY: `j < d`, as above.
            unsafe {
                let x = _mm512_loadu_ps(bp.add(j * R));
                let t = _mm512_sub_ps(x, _mm512_set1_ps(*ys[c].get_unchecked(j)));
                tail = _mm512_fmadd_ps(t, t, tail);
            }
        }
        // Widths S/2, …, 1 across the sweeps.
        let mut w = S / 2;
        while w >= 1 {
            for q in 0..w {
                u[c][q] = _mm512_add_ps(u[c][q], u[c][q + w]);
            }
            w /= 2;
        }
        v[c] = _mm512_add_ps(u[c][0], tail);
        below |= _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v[c], t);
    }
    if below == 0 {
        return None;
    }
    let mut out = [[0.0f32; R]; C];
    for (o, v) in out.iter_mut().zip(v) {
        // SAFETY: `o` holds R floats.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), v) };
    }
    Some(out)
}
