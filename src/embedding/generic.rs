//! The generic ORIG construction (docs/algorithm.md §3.1), computed cell by cell without materialising the
//! unfolded tensors.
//!
//! For output cell `(y, x)` and layer `l`, the resized unfolded vector is the bilinear blend of
//! the unfolded vectors at (at most) four source cells, and the unfolded vector at source cell
//! `(sy, sx)` is the `p × p` window of the zero-padded map whose top-left corner is `(sy, sx)`.
//! So each layer is zero-padded once, and every output row is built from four shifted windows.

use ndarray::Array2;
use rayon::prelude::*;

use super::ops::{linear_taps, pool_into, LinTap};
use super::{alloc_output, Tap};
use crate::{Error, Result};

/// One layer, zero-padded, with its resize taps towards the first layer's grid.
struct PaddedLayer {
    /// `[N, C, H + 2·pad, W + 2·pad]`, zero borders.
    data: Vec<f32>,
    c: usize,
    /// Padded height and width.
    hp: usize,
    wp: usize,
    /// Taps along y and x from this layer's grid to the first layer's grid.
    ty: Vec<LinTap>,
    tx: Vec<LinTap>,
    /// This layer already has the first layer's grid (no interpolation needed).
    identity: bool,
}

impl PaddedLayer {
    fn new(tap: &Tap<'_>, pad: usize, grid_h: usize, grid_w: usize) -> Result<Self> {
        let hp = tap.h + 2 * pad;
        let wp = tap.w + 2 * pad;
        let per_image = tap
            .c
            .checked_mul(hp)
            .and_then(|v| v.checked_mul(wp))
            .ok_or_else(|| too_large(tap))?;
        let total = per_image.checked_mul(tap.n).ok_or_else(|| too_large(tap))?;
        let mut data = vec![0.0f32; total];
        let (h, w) = (tap.h, tap.w);
        data.par_chunks_mut(per_image)
            .enumerate()
            .for_each(|(img, dst)| {
                let src = tap.image(img);
                for (plane_src, plane_dst) in
                    src.chunks_exact(h * w).zip(dst.chunks_exact_mut(hp * wp))
                {
                    for (row_src, row_dst) in plane_src
                        .chunks_exact(w)
                        .zip(plane_dst.chunks_exact_mut(wp).skip(pad))
                    {
                        row_dst[pad..pad + w].copy_from_slice(row_src);
                    }
                }
            });
        Ok(PaddedLayer {
            data,
            c: tap.c,
            hp,
            wp,
            ty: linear_taps(tap.h, grid_h),
            tx: linear_taps(tap.w, grid_w),
            identity: tap.h == grid_h && tap.w == grid_w,
        })
    }

    /// Writes the (resized) unfolded vector of image `img` at grid cell `(y, x)` into `u`
    /// (length `C·p²`, index `c·p² + ky·p + kx`).
    #[inline]
    fn fill(&self, img: usize, y: usize, x: usize, p: usize, u: &mut [f32]) {
        let plane = self.hp * self.wp;
        let d = &self.data[img * self.c * plane..(img + 1) * self.c * plane];
        let wp = self.wp;
        if self.identity {
            for (c, uc) in u.chunks_exact_mut(p * p).enumerate() {
                for (ky, row) in uc.chunks_exact_mut(p).enumerate() {
                    let s = c * plane + (y + ky) * wp + x;
                    row.copy_from_slice(&d[s..s + p]);
                }
            }
            return;
        }
        let ty = self.ty[y];
        let tx = self.tx[x];
        let o00 = ty.i0 * wp + tx.i0;
        let o01 = ty.i0 * wp + tx.i1;
        let o10 = ty.i1 * wp + tx.i0;
        let o11 = ty.i1 * wp + tx.i1;
        for (c, uc) in u.chunks_exact_mut(p * p).enumerate() {
            for (ky, row) in uc.chunks_exact_mut(p).enumerate() {
                let b = c * plane + ky * wp;
                let r00 = &d[b + o00..b + o00 + p];
                let r01 = &d[b + o01..b + o01 + p];
                let r10 = &d[b + o10..b + o10 + p];
                let r11 = &d[b + o11..b + o11 + p];
                for kx in 0..p {
                    let top = tx.w0 * r00[kx] + tx.w1 * r01[kx];
                    let bottom = tx.w0 * r10[kx] + tx.w1 * r11[kx];
                    row[kx] = ty.w0 * top + ty.w1 * bottom;
                }
            }
        }
    }
}

fn too_large(tap: &Tap<'_>) -> Error {
    Error::LimitExceeded {
        reason: format!(
            "embedding: padded layer [{}, {}, {}, {}] is too large",
            tap.n, tap.c, tap.h, tap.w
        ),
    }
}

/// Generic ORIG embedding of already validated taps.
pub(crate) fn embed(
    taps: &[Tap<'_>],
    p: usize,
    pre_dim: usize,
    target_dim: usize,
) -> Result<Array2<f32>> {
    let (n, h, w) = (taps[0].n, taps[0].h, taps[0].w);
    let pad = p / 2;
    let p2 = p * p;
    let mut max_len = 0usize;
    for t in taps {
        let len = t.c.checked_mul(p2).ok_or_else(|| too_large(t))?;
        max_len = max_len.max(len);
    }
    let pre_total = taps
        .len()
        .checked_mul(pre_dim)
        .ok_or_else(|| Error::LimitExceeded {
            reason: format!(
                "embedding: {} layers × pre_dim {pre_dim} overflows",
                taps.len()
            ),
        })?;
    let layers = taps
        .iter()
        .map(|t| PaddedLayer::new(t, pad, h, w))
        .collect::<Result<Vec<_>>>()?;

    let mut out = alloc_output(n, h, w, target_dim)?;
    let Some(out_slice) = out.as_slice_mut() else {
        return Err(Error::input("embedding: internal output layout error"));
    };
    out_slice
        .par_chunks_mut(w * target_dim)
        .enumerate()
        .for_each_init(
            || (vec![0.0f32; max_len], vec![0.0f32; pre_total]),
            |(u, pre), (row, chunk)| {
                let (img, y) = (row / h, row % h);
                for (x, cell) in chunk.chunks_exact_mut(target_dim).enumerate() {
                    for (layer, pre_l) in layers.iter().zip(pre.chunks_exact_mut(pre_dim)) {
                        let u = &mut u[..layer.c * p2];
                        layer.fill(img, y, x, p, u);
                        pool_into(u, pre_l);
                    }
                    pool_into(pre, cell);
                }
            },
        );
    Ok(out)
}
