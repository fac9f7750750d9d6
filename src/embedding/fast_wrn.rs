//! Closed form of the ORIG embedding for two taps of 512 and 1024 channels, `p = 3`,
//! `pre_dim = target_dim = 1024` (WRN-50-2 / ResNet-50 `layer2 + layer3`; docs/algorithm.md §3.1).
//!
//! Pooling the 512·9 = 4608 unfolded values of `layer2` to 1024 gives bins of 5 that overlap on
//! the centre of each channel's 3×3 window, and the final 2048 → 1024 pool averages them in
//! pairs, so output `c < 512` is a depthwise 3×3 filter with weights `[[1,1,1],[1,2,1],[1,1,1]]/10`.
//! `layer3` has 1024·9 = 9216 values → bins of exactly 9 = one channel's window, i.e. a 3×3
//! zero-padded average (÷9), resized bilinearly (resize and averaging commute); the final pool
//! averages channel pairs: output `512 + m = ½(A[2m] + A[2m+1])`.

use ndarray::Array2;
use rayon::prelude::*;

use super::ops::{blend_hwc, box_sum_plane, chw_to_hwc, linear_taps};
use super::{alloc_output, Tap};
use crate::{Error, Result};

const C2: usize = 512;
const C3: usize = 1024;
const HALF: usize = C3 / 2;
const D: usize = 1024;

/// Whether the closed form applies to these channel counts and parameters.
pub(crate) fn applies(channels: &[usize], p: usize, pre_dim: usize, target_dim: usize) -> bool {
    channels == [C2, C3] && p == 3 && pre_dim == D && target_dim == D
}

/// Closed-form embedding of already validated taps (`applies` must hold).
pub(crate) fn embed(taps: &[Tap<'_>]) -> Result<Array2<f32>> {
    let [l2, l3] = taps else {
        return Err(Error::input(
            "embedding fast path: expected exactly two layers (internal dispatch error)",
        ));
    };
    let (n, h, w) = (l2.n, l2.h, l2.w);
    let (h3, w3) = (l3.h, l3.w);
    let hw = h * w;
    let hw3 = h3 * w3;

    // Phase 1: layer3 filtered (3×3 sum ÷ 9) and channel pairs averaged, one plane per task;
    // then both layer2 and that result transposed to channel-last [h·w, 512] per image.
    let mut g3_chw = vec![0.0f32; n * HALF * hw3];
    g3_chw.par_chunks_mut(hw3).enumerate().for_each_init(
        || (vec![0.0f32; hw3], vec![0.0f32; hw3], vec![0.0f32; hw3]),
        |(tmp, sa, sb), (plane, dst)| {
            let (img, m) = (plane / HALF, plane % HALF);
            let src = &l3.image(img)[2 * m * hw3..(2 * m + 2) * hw3];
            let (a, b) = src.split_at(hw3);
            box_sum_plane(a, h3, w3, 3, tmp, sa);
            box_sum_plane(b, h3, w3, 3, tmp, sb);
            for ((o, &va), &vb) in dst.iter_mut().zip(sa.iter()).zip(sb.iter()) {
                *o = 0.5 * (va / 9.0 + vb / 9.0);
            }
        },
    );
    let mut t2 = vec![0.0f32; n * hw * C2];
    let mut g3 = vec![0.0f32; n * hw3 * HALF];
    for img in 0..n {
        chw_to_hwc(
            l2.image(img),
            C2,
            hw,
            &mut t2[img * hw * C2..(img + 1) * hw * C2],
        );
        chw_to_hwc(
            &g3_chw[img * HALF * hw3..(img + 1) * HALF * hw3],
            HALF,
            hw3,
            &mut g3[img * hw3 * HALF..(img + 1) * hw3 * HALF],
        );
    }
    drop(g3_chw);

    let ty = linear_taps(h3, h);
    let tx = linear_taps(w3, w);
    let mut out = alloc_output(n, h, w, D)?;
    let Some(out_slice) = out.as_slice_mut() else {
        return Err(Error::input("embedding: internal output layout error"));
    };
    out_slice
        .par_chunks_mut(w * D)
        .enumerate()
        .for_each(|(row, chunk)| {
            let (img, y) = (row / h, row % h);
            let t2_img = &t2[img * hw * C2..(img + 1) * hw * C2];
            let g3_img = &g3[img * hw3 * HALF..(img + 1) * hw3 * HALF];
            let t = ty[y];
            for (x, cell) in chunk.chunks_exact_mut(D).enumerate() {
                let (e2, e3) = cell.split_at_mut(C2);
                // layer2: centre-weighted 3×3 depthwise filter. Start from the centre once; the
                // window loop below adds it a second time.
                let centre = &t2_img[(y * w + x) * C2..(y * w + x + 1) * C2];
                e2.copy_from_slice(centre);
                for yy in y.saturating_sub(1)..(y + 2).min(h) {
                    for xx in x.saturating_sub(1)..(x + 2).min(w) {
                        let nb = &t2_img[(yy * w + xx) * C2..(yy * w + xx + 1) * C2];
                        e2.iter_mut().zip(nb).for_each(|(o, &v)| *o += v);
                    }
                }
                e2.iter_mut().for_each(|o| *o /= 10.0);
                // layer3: bilinear blend of the filtered, pair-averaged vectors.
                blend_hwc(g3_img, w3, HALF, t, tx[x], e3);
            }
        });
    Ok(out)
}
