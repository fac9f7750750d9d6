//! The [`Aggregator::Average`](super::Aggregator::Average) construction (docs/algorithm.md §3.2): per layer
//! `p × p` average pooling (stride 1, zero padding `p/2`, always ÷p²), deeper layers resized
//! bilinearly to the first grid, channel concatenation, optional adaptive pool over channels.

use ndarray::Array2;
use rayon::prelude::*;

use super::ops::{blend_hwc, box_sum_plane, chw_to_hwc, linear_taps, pool_into, LinTap};
use super::{alloc_output, Tap};
use crate::{Error, Result};

/// One layer average-pooled and transposed to `[N, H, W, C]`, with its resize taps.
struct PooledLayer {
    data: Vec<f32>,
    c: usize,
    h: usize,
    w: usize,
    ty: Vec<LinTap>,
    tx: Vec<LinTap>,
}

impl PooledLayer {
    fn new(tap: &Tap<'_>, p: usize, grid_h: usize, grid_w: usize) -> Result<Self> {
        let (c, h, w) = (tap.c, tap.h, tap.w);
        let hw = h * w;
        let per_image = hw.checked_mul(c).ok_or_else(|| Error::LimitExceeded {
            reason: format!("embedding: layer [{}, {c}, {h}, {w}] is too large", tap.n),
        })?;
        let divisor = (p * p) as f32;
        // Pool every plane in parallel (channel-first), then transpose to channel-last.
        let mut chw = vec![0.0f32; per_image * tap.n];
        chw.par_chunks_mut(hw).enumerate().for_each_init(
            || vec![0.0f32; hw],
            |tmp, (plane, dst)| {
                let (img, ch) = (plane / c, plane % c);
                box_sum_plane(&tap.image(img)[ch * hw..(ch + 1) * hw], h, w, p, tmp, dst);
                dst.iter_mut().for_each(|v| *v /= divisor);
            },
        );
        let mut data = vec![0.0f32; per_image * tap.n];
        for img in 0..tap.n {
            chw_to_hwc(
                &chw[img * per_image..(img + 1) * per_image],
                c,
                hw,
                &mut data[img * per_image..(img + 1) * per_image],
            );
        }
        Ok(PooledLayer {
            data,
            c,
            h,
            w,
            ty: linear_taps(h, grid_h),
            tx: linear_taps(w, grid_w),
        })
    }
}

/// Average-aggregator embedding of already validated taps.
pub(crate) fn embed(taps: &[Tap<'_>], p: usize, target_dim: Option<usize>) -> Result<Array2<f32>> {
    let (n, h, w) = (taps[0].n, taps[0].h, taps[0].w);
    let concat_dim = taps
        .iter()
        .try_fold(0usize, |acc, t| acc.checked_add(t.c))
        .ok_or_else(|| Error::LimitExceeded {
            reason: "embedding: total channel count overflows".into(),
        })?;
    let out_dim = target_dim.unwrap_or(concat_dim);
    let layers = taps
        .iter()
        .map(|t| PooledLayer::new(t, p, h, w))
        .collect::<Result<Vec<_>>>()?;
    let pool = target_dim.is_some();

    let mut out = alloc_output(n, h, w, out_dim)?;
    let Some(out_slice) = out.as_slice_mut() else {
        return Err(Error::input("embedding: internal output layout error"));
    };
    out_slice
        .par_chunks_mut(w * out_dim)
        .enumerate()
        .for_each_init(
            || vec![0.0f32; if pool { concat_dim } else { 0 }],
            |concat, (row, chunk)| {
                let (img, y) = (row / h, row % h);
                for (x, cell) in chunk.chunks_exact_mut(out_dim).enumerate() {
                    let dest: &mut [f32] = if pool { concat } else { cell };
                    let mut offset = 0;
                    for l in &layers {
                        let per_image = l.h * l.w * l.c;
                        let img_data = &l.data[img * per_image..(img + 1) * per_image];
                        let part = &mut dest[offset..offset + l.c];
                        blend_hwc(img_data, l.w, l.c, l.ty[y], l.tx[x], part);
                        offset += l.c;
                    }
                    if pool {
                        pool_into(concat, cell);
                    }
                }
            },
        );
    Ok(out)
}
