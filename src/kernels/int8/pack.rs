//! Packing of the activations for the int8 kernels (see the [module documentation](super)):
//! each value turned into a byte on the way, four consecutive `k` per 32-bit word.

use rayon::prelude::*;

use crate::kernels::gemm::Parallelism;
use crate::kernels::wide::Wide;

/// Packs the row-major `k × n` matrix `b`, each element turned into a byte by `byte`, into
/// `out`: `n.div_ceil(nr)` panels of `k4 · nr` words, `k4 ≥ k.div_ceil(4)` groups of four `k`
/// (zero-padded, like the columns past `n`). Panels are packed in parallel under
/// [`Parallelism::Rayon`], with the loop compiled for AVX-512 when `wide` says so.
///
/// Returns the largest `key(v)` over the elements of `b`, at least 0 (NaN ignored, as
/// [`max_or_zero`](super::max_or_zero)), found in the same pass: `|v| v` gives the range of
/// `f32` activations for free, `|_| 0.0` when it is not wanted.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_b<S: Copy + Sync>(
    wide: Wide,
    b: &[S],
    byte: impl Fn(S) -> u8 + Sync,
    key: impl Fn(S) -> f32 + Sync,
    k: usize,
    k4: usize,
    n: usize,
    nr: usize,
    out: &mut [u32],
    par: Parallelism,
) -> f32 {
    debug_assert!(k4 * 4 >= k);
    if k4 * nr == 0 {
        return 0.0;
    }
    let panel = |p: usize, panel: &mut [u32]| match wide {
        Wide::Baseline => pack_panel(b, &byte, &key, k, n, nr, p, panel),
        #[cfg(target_arch = "x86_64")]
        Wide::Avx512(_) => {
            // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected;
            // the body is safe code (bounds-checked slices).
            unsafe { pack_panel_avx512(b, &byte, &key, k, n, nr, p, panel) }
        }
    };
    if par == Parallelism::Rayon && out.len() >= 1 << 15 {
        out.par_chunks_exact_mut(k4 * nr)
            .enumerate()
            .map(|(p, o)| panel(p, o))
            .reduce(|| 0.0, f32::max)
    } else {
        out.chunks_exact_mut(k4 * nr)
            .enumerate()
            .map(|(p, o)| panel(p, o))
            .fold(0.0, f32::max)
    }
}

/// Panel `p` of [`pack_b`] (`nr` columns from `p·nr`, every group of four `k`); returns the
/// largest `key` of the elements it read (at least 0).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pack_panel<S: Copy>(
    b: &[S],
    byte: &impl Fn(S) -> u8,
    key: &impl Fn(S) -> f32,
    k: usize,
    n: usize,
    nr: usize,
    p: usize,
    panel: &mut [u32],
) -> f32 {
    const L: usize = 16;
    let c0 = p * nr;
    let cols = nr.min(n - c0);
    let row = |kk: usize| -> &[S] {
        if kk < k {
            &b[kk * n + c0..kk * n + c0 + cols]
        } else {
            &[]
        }
    };
    // The maximum in 16 independent lanes (a running `f32::max` does not vectorise).
    let mut lanes = [0.0f32; L];
    let mut rest = 0.0f32;
    for (g, dst) in panel.chunks_exact_mut(nr).enumerate() {
        let (r0, r1, r2, r3) = (row(4 * g), row(4 * g + 1), row(4 * g + 2), row(4 * g + 3));
        if r3.len() == cols && cols == nr && nr.is_multiple_of(L) {
            // The common case, one pass the compiler vectorises: four bytes per word.
            for ((((d, x0), x1), x2), x3) in dst
                .chunks_exact_mut(L)
                .zip(r0.chunks_exact(L))
                .zip(r1.chunks_exact(L))
                .zip(r2.chunks_exact(L))
                .zip(r3.chunks_exact(L))
            {
                for j in 0..L {
                    let (a, b, c, e) = (x0[j], x1[j], x2[j], x3[j]);
                    d[j] = u32::from_le_bytes([byte(a), byte(b), byte(c), byte(e)]);
                    lanes[j] = lanes[j].max(key(a)).max(key(b)).max(key(c)).max(key(e));
                }
            }
        } else {
            for (j, d) in dst.iter_mut().enumerate() {
                let at = |r: &[S]| r.get(j).map_or(0, |&v| byte(v));
                *d = u32::from_le_bytes([at(r0), at(r1), at(r2), at(r3)]);
                for r in [r0, r1, r2, r3] {
                    if let Some(&v) = r.get(j) {
                        rest = rest.max(key(v));
                    }
                }
            }
        }
    }
    lanes.iter().fold(rest, |m, &v| m.max(v))
}

/// [`pack_panel`] compiled with AVX-512.
///
/// # Safety
/// The CPU must run AVX512F and AVX512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[allow(clippy::too_many_arguments)]
unsafe fn pack_panel_avx512<S: Copy>(
    b: &[S],
    byte: &impl Fn(S) -> u8,
    key: &impl Fn(S) -> f32,
    k: usize,
    n: usize,
    nr: usize,
    p: usize,
    panel: &mut [u32],
) -> f32 {
    pack_panel(b, byte, key, k, n, nr, p, panel)
}
