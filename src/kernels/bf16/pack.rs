//! Packing of `B` for the bf16 kernels (see the [module documentation](super#packed-layouts)):
//! f32 values rounded to bf16 on the way, or bf16 bits as they are, paired by rows of `k`.

use super::NR;
use crate::kernels::wide::Wide;

/// Length in `u16` of `B` packed for `k × n` (see the [module docs](self#packed-layouts)).
pub(super) fn packed_b_len(k: usize, n: usize) -> usize {
    let kp = k.div_ceil(2);
    let full = n / NR;
    let rest = (n % NR).div_ceil(16) * 16;
    (full * NR + rest) * kp * 2
}

/// `x`'s bits with its bf16 rounding (as [`to_bf16`](super::to_bf16)) in the high half; the low half is
/// not cleared. Branch-free, so that loops over it vectorise.
#[inline(always)]
pub(super) fn round_high(bits: u32) -> u32 {
    let nan = bits & 0x7FFF_FFFF > 0x7F80_0000;
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1));
    if nan {
        bits | 0x0040_0000
    } else {
        rounded
    }
}

/// An element of `B` as [`gemm_bf16`](super::gemm_bf16) takes it: `f32` (rounded to bf16 while it is packed) or
/// `u16` (bf16 bits, already rounded, e.g. by [`to_bf16`](super::to_bf16)).
pub trait Bf16Input: Copy + Send + Sync + sealed::Sealed {
    /// The bf16 bits in the high half of a word (the low half is not cleared).
    #[doc(hidden)]
    fn high(self) -> u32;
}

mod sealed {
    /// Only the types of this module implement [`super::Bf16Input`].
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for u16 {}
}

impl Bf16Input for f32 {
    #[inline(always)]
    fn high(self) -> u32 {
        round_high(self.to_bits())
    }
}

impl Bf16Input for u16 {
    #[inline(always)]
    fn high(self) -> u32 {
        u32::from(self) << 16
    }
}

/// The pair word of `b[2t][j]` (`e`, low half) and `b[2t + 1][j]` (`o`, high half).
#[inline(always)]
fn pair_word<T: Bf16Input>(e: T, o: T) -> u32 {
    (o.high() & 0xFFFF_0000) | (e.high() >> 16)
}

/// Packs the panel of `B` whose first column is `j0` into `dst`: `dst.len() / (2·width)`
/// pairs (at least `⌈k/2⌉`; those past `k` are zeros) of `width` columns.
#[inline(always)]
fn pack_b_panel_body<T: Bf16Input>(
    b: &[T],
    k: usize,
    n: usize,
    j0: usize,
    width: usize,
    dst: &mut [u16],
) {
    let w = width.min(n.saturating_sub(j0));
    for (t, out) in dst.chunks_exact_mut(2 * width).enumerate() {
        let (pairs, pad) = out.split_at_mut(2 * w);
        if 2 * t >= k || w == 0 {
            out.fill(0);
            continue;
        }
        let even = &b[2 * t * n + j0..][..w];
        if 2 * t + 1 < k {
            let odd = &b[(2 * t + 1) * n + j0..][..w];
            for ((p, &e), &o) in pairs.chunks_exact_mut(2).zip(even).zip(odd) {
                let word = pair_word(e, o);
                p[0] = word as u16;
                p[1] = (word >> 16) as u16;
            }
        } else {
            for (p, &e) in pairs.chunks_exact_mut(2).zip(even) {
                p[0] = (e.high() >> 16) as u16;
                p[1] = 0;
            }
        }
        pad.fill(0);
    }
}

/// [`pack_b_panel_body`], compiled with AVX-512 when `wide` says the CPU has it.
pub(super) fn pack_b_panel<T: Bf16Input>(
    wide: Wide,
    b: &[T],
    k: usize,
    n: usize,
    j0: usize,
    width: usize,
    dst: &mut [u16],
) {
    match wide {
        Wide::Baseline => pack_b_panel_body(b, k, n, j0, width, dst),
        #[cfg(target_arch = "x86_64")]
        Wide::Avx512(_) => {
            // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected;
            // the body is safe code (bounds-checked slices).
            unsafe { pack_b_panel_avx512(b, k, n, j0, width, dst) }
        }
    }
}

/// [`pack_b_panel_body`] compiled with AVX-512.
///
/// # Safety
/// The CPU must run AVX512F and AVX512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_b_panel_avx512<T: Bf16Input>(
    b: &[T],
    k: usize,
    n: usize,
    j0: usize,
    width: usize,
    dst: &mut [u16],
) {
    pack_b_panel_body(b, k, n, j0, width, dst)
}
