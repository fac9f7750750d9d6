//! Packing of the activations for the int8 kernels (see the [module documentation](super)):
//! each value turned into a byte on the way, four consecutive `k` per 32-bit word.

use rayon::prelude::*;

use crate::kernels::gemm::Parallelism;
use crate::kernels::wide::Wide;

/// Packs the row-major `k × n` matrix `b`, each element turned into a byte by `byte`, into
/// `out`: `n.div_ceil(nr)` panels of `k4 · nr` words, `k4 ≥ k.div_ceil(4)` groups of four `k`
/// (zero-padded, like the columns past `n`). Panels are packed in parallel under
/// [`Parallelism::Rayon`], with the loop compiled for AVX-512 when `wide` says so.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_b<S: Copy + Sync>(
    wide: Wide,
    b: &[S],
    byte: impl Fn(S) -> u8 + Sync,
    k: usize,
    k4: usize,
    n: usize,
    nr: usize,
    out: &mut [u32],
    par: Parallelism,
) {
    debug_assert!(k4 * 4 >= k);
    let panel = |p: usize, panel: &mut [u32]| match wide {
        Wide::Baseline => pack_panel(b, &byte, k, n, nr, p, panel),
        #[cfg(target_arch = "x86_64")]
        Wide::Avx512(_) => {
            // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected;
            // the body is safe code (bounds-checked slices).
            unsafe { pack_panel_avx512(b, &byte, k, n, nr, p, panel) }
        }
    };
    if par == Parallelism::Rayon && out.len() >= 1 << 15 {
        out.par_chunks_exact_mut(k4 * nr)
            .enumerate()
            .for_each(|(p, o)| panel(p, o));
    } else {
        for (p, o) in out.chunks_exact_mut(k4 * nr).enumerate() {
            panel(p, o);
        }
    }
}

/// Panel `p` of [`pack_b`] (`nr` columns from `p·nr`, every group of four `k`).
#[inline(always)]
fn pack_panel<S: Copy>(
    b: &[S],
    byte: &impl Fn(S) -> u8,
    k: usize,
    n: usize,
    nr: usize,
    p: usize,
    panel: &mut [u32],
) {
    let c0 = p * nr;
    let cols = nr.min(n - c0);
    let row = |kk: usize| -> &[S] {
        if kk < k {
            &b[kk * n + c0..kk * n + c0 + cols]
        } else {
            &[]
        }
    };
    for (g, dst) in panel.chunks_exact_mut(nr).enumerate() {
        let (r0, r1, r2, r3) = (row(4 * g), row(4 * g + 1), row(4 * g + 2), row(4 * g + 3));
        if r3.len() == cols && cols == nr {
            // The common case, one pass the compiler vectorises: four bytes per word.
            for ((((d, &x0), &x1), &x2), &x3) in dst.iter_mut().zip(r0).zip(r1).zip(r2).zip(r3) {
                *d = u32::from_le_bytes([byte(x0), byte(x1), byte(x2), byte(x3)]);
            }
        } else {
            for (j, d) in dst.iter_mut().enumerate() {
                let at = |r: &[S]| r.get(j).map_or(0, |&v| byte(v));
                *d = u32::from_le_bytes([at(r0), at(r1), at(r2), at(r3)]);
            }
        }
    }
}

/// [`pack_panel`] compiled with AVX-512.
///
/// # Safety
/// The CPU must run AVX512F and AVX512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_panel_avx512<S: Copy>(
    b: &[S],
    byte: &impl Fn(S) -> u8,
    k: usize,
    n: usize,
    nr: usize,
    p: usize,
    panel: &mut [u32],
) {
    pack_panel(b, byte, k, n, nr, p, panel)
}

/// Packs `b` into `scratch` (grown when too short) as [`pack_b`] does and returns the packed
/// words.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_into<'s, S: Copy + Sync>(
    wide: Wide,
    scratch: &'s mut Vec<u32>,
    b: &[S],
    byte: impl Fn(S) -> u8 + Sync,
    k: usize,
    k4: usize,
    n: usize,
    nr: usize,
    par: Parallelism,
) -> &'s [u32] {
    let words = n.div_ceil(nr) * k4 * nr;
    if scratch.len() < words {
        scratch.resize(words, 0);
    }
    let packed = &mut scratch[..words];
    pack_b(wide, b, byte, k, k4, n, nr, packed, par);
    packed
}
