//! Elementary operations with PyTorch semantics: adaptive average pooling over a vector,
//! bilinear resize (`align_corners = false`, no antialias) and `p × p` average pooling with
//! `count_include_pad`.

use ndarray::{Array3, ArrayView3};
use rayon::prelude::*;

use crate::{Error, Result};

/// Half-open input range `[start, end)` averaged by output `i` of an adaptive average pool from
/// `len` to `out_len` elements: `start = ⌊i·len/out_len⌋`, `end = ⌈(i+1)·len/out_len⌉`.
///
/// Bins may overlap (e.g. 4608 → 1024 gives bins of 5 that share one element) and, when
/// `len < out_len`, elements repeat. `out_len` must be ≥ 1.
pub fn adaptive_pool_bin(i: usize, len: usize, out_len: usize) -> (usize, usize) {
    let start = i * len / out_len;
    let end = ((i + 1) * len).div_ceil(out_len);
    (start, end)
}

/// Adaptive average pool of `input` into `out` (the 1-D `adaptive_avg_pool1d` of PyTorch).
///
/// `out[i]` is the mean of `input[s..e)` with `(s, e) = `[`adaptive_pool_bin`]`(i, len, out_len)`.
/// Errors with [`Error::InvalidInput`] when either slice is empty.
///
/// ```
/// let mut out = [0.0f32; 3];
/// patchcore::embedding::adaptive_avg_pool1d(&[1.0, 2.0, 3.0, 4.0, 5.0], &mut out)?;
/// assert_eq!(out, [1.5, 3.0, 4.5]);
/// # Ok::<(), patchcore::Error>(())
/// ```
pub fn adaptive_avg_pool1d(input: &[f32], out: &mut [f32]) -> Result<()> {
    if input.is_empty() || out.is_empty() {
        return Err(Error::input(format!(
            "adaptive_avg_pool1d: input length {} and output length {} must both be ≥ 1",
            input.len(),
            out.len()
        )));
    }
    pool_into(input, out);
    Ok(())
}

/// [`adaptive_avg_pool1d`] without the emptiness check (callers guarantee both lengths ≥ 1).
#[inline]
pub(crate) fn pool_into(input: &[f32], out: &mut [f32]) {
    let len = input.len();
    let d = out.len();
    if len == d {
        out.copy_from_slice(input);
        return;
    }
    for (i, o) in out.iter_mut().enumerate() {
        let (s, e) = adaptive_pool_bin(i, len, d);
        let bin = &input[s..e];
        let sum: f32 = bin.iter().sum();
        *o = sum / bin.len() as f32;
    }
}

/// One output index of a bilinear resize along an axis: the two source indices and weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LinTap {
    /// Lower source index.
    pub(crate) i0: usize,
    /// Upper source index (`min(i0 + 1, in − 1)`).
    pub(crate) i1: usize,
    /// Weight of `i0`.
    pub(crate) w0: f32,
    /// Weight of `i1`.
    pub(crate) w1: f32,
}

/// Source taps of a 1-D bilinear resize from `in_len` to `out_len` (`align_corners = false`):
/// `src = (dst + 0.5)·in/out − 0.5`, clamped to ≥ 0 (PyTorch's float arithmetic).
pub(crate) fn linear_taps(in_len: usize, out_len: usize) -> Vec<LinTap> {
    let scale = in_len as f32 / out_len as f32;
    (0..out_len)
        .map(|o| {
            let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(in_len - 1);
            let i1 = if i0 + 1 < in_len { i0 + 1 } else { i0 };
            let w1 = (src - i0 as f32).clamp(0.0, 1.0);
            LinTap {
                i0,
                i1,
                w0: 1.0 - w1,
                w1,
            }
        })
        .collect()
}

/// Bilinear blend of four channel vectors (`[H, W, C]` layout) into `out`, with the same
/// operation order as PyTorch: `wy0·(wx0·v00 + wx1·v01) + wy1·(wx0·v10 + wx1·v11)`.
/// `hwc` is one image's `[H, W, C]` block of width `w` and `c` channels.
#[inline]
pub(crate) fn blend_hwc(hwc: &[f32], w: usize, c: usize, ty: LinTap, tx: LinTap, out: &mut [f32]) {
    let at = |y: usize, x: usize| &hwc[(y * w + x) * c..(y * w + x + 1) * c];
    let (v00, v01, v10, v11) = (
        at(ty.i0, tx.i0),
        at(ty.i0, tx.i1),
        at(ty.i1, tx.i0),
        at(ty.i1, tx.i1),
    );
    for (m, o) in out.iter_mut().enumerate() {
        let top = tx.w0 * v00[m] + tx.w1 * v01[m];
        let bottom = tx.w0 * v10[m] + tx.w1 * v11[m];
        *o = ty.w0 * top + ty.w1 * bottom;
    }
}

/// Number of grid positions per task in [`chw_to_hwc`] (16 floats = one cache line per channel
/// read; 16 output rows per task).
const TRANSPOSE_BLOCK: usize = 16;

/// Parallel transpose of one image's `[C, HW]` block into `[HW, C]`, in blocks of positions so
/// that reads are cache-line sized and each task's output stays in cache.
pub(crate) fn chw_to_hwc(src: &[f32], c: usize, hw: usize, dst: &mut [f32]) {
    dst.par_chunks_mut(c * TRANSPOSE_BLOCK)
        .enumerate()
        .for_each(|(block, out)| {
            let i0 = block * TRANSPOSE_BLOCK;
            let k = out.len() / c;
            for ch in 0..c {
                let col = &src[ch * hw + i0..ch * hw + i0 + k];
                for (j, &v) in col.iter().enumerate() {
                    out[j * c + ch] = v;
                }
            }
        });
}

/// Bilinear resize of a `[C, H, W]` stack of maps to `[C, out_h, out_w]`, with PyTorch's
/// `F.interpolate(mode="bilinear", align_corners=False)` semantics (no antialiasing).
///
/// Errors with [`Error::InvalidInput`] for an empty input or a zero output size.
///
/// ```
/// use ndarray::array;
/// let up = patchcore::embedding::bilinear_resize(array![[[0.0f32, 1.0]]].view(), 1, 4)?;
/// assert_eq!(up.into_raw_vec_and_offset().0, vec![0.0, 0.25, 0.75, 1.0]);
/// # Ok::<(), patchcore::Error>(())
/// ```
pub fn bilinear_resize(input: ArrayView3<f32>, out_h: usize, out_w: usize) -> Result<Array3<f32>> {
    let (c, h, w) = input.dim();
    if c == 0 || h == 0 || w == 0 || out_h == 0 || out_w == 0 {
        return Err(Error::input(format!(
            "bilinear_resize: input [{c}, {h}, {w}] → [{out_h}, {out_w}]: every size must be ≥ 1"
        )));
    }
    let ty = linear_taps(h, out_h);
    let tx = linear_taps(w, out_w);
    let mut out = Array3::<f32>::zeros((c, out_h, out_w));
    for (src, mut dst) in input.outer_iter().zip(out.outer_iter_mut()) {
        for (oy, t) in ty.iter().enumerate() {
            for (ox, s) in tx.iter().enumerate() {
                let top = s.w0 * src[[t.i0, s.i0]] + s.w1 * src[[t.i0, s.i1]];
                let bottom = s.w0 * src[[t.i1, s.i0]] + s.w1 * src[[t.i1, s.i1]];
                dst[[oy, ox]] = t.w0 * top + t.w1 * bottom;
            }
        }
    }
    Ok(out)
}

/// `p × p` average pooling, stride 1, zero padding `p/2`, always divided by `p²`
/// (`count_include_pad = true`) of a `[C, H, W]` stack; the output has the input's size.
///
/// Errors with [`Error::InvalidParameter`] for an even or zero `p` and [`Error::InvalidInput`]
/// for an empty input.
///
/// ```
/// use ndarray::Array3;
/// let pooled = patchcore::embedding::avg_pool2d(Array3::<f32>::ones((1, 3, 3)).view(), 3)?;
/// assert!((pooled[[0, 0, 0]] - 4.0 / 9.0).abs() < 1e-7);
/// # Ok::<(), patchcore::Error>(())
/// ```
pub fn avg_pool2d(input: ArrayView3<f32>, p: usize) -> Result<Array3<f32>> {
    if p == 0 || p.is_multiple_of(2) {
        return Err(Error::param(
            "patch_size",
            format!("average pooling window must be odd and ≥ 1, got {p}"),
        ));
    }
    let (c, h, w) = input.dim();
    if c == 0 || h == 0 || w == 0 {
        return Err(Error::input(format!(
            "avg_pool2d: input [{c}, {h}, {w}]: every size must be ≥ 1"
        )));
    }
    let src = input.as_standard_layout();
    let src = src.as_slice().unwrap_or(&[]);
    let mut out = Array3::<f32>::zeros((c, h, w));
    let mut tmp = vec![0.0f32; h * w];
    let scale = 1.0 / (p * p) as f32;
    if let Some(dst) = out.as_slice_mut() {
        for (s, d) in src.chunks_exact(h * w).zip(dst.chunks_exact_mut(h * w)) {
            box_sum_plane(s, h, w, p, &mut tmp, d);
            d.iter_mut().for_each(|v| *v *= scale);
        }
    }
    Ok(out)
}

/// Zero-padded `p × p` box sum (stride 1, same size) of one `h × w` plane into `dst`.
/// `tmp` is scratch of at least `h·w` elements. Separable: rows first, then columns.
pub(crate) fn box_sum_plane(
    src: &[f32],
    h: usize,
    w: usize,
    p: usize,
    tmp: &mut [f32],
    dst: &mut [f32],
) {
    let r = p / 2;
    // Horizontal pass.
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        let out = &mut tmp[y * w..(y + 1) * w];
        for (x, o) in out.iter_mut().enumerate() {
            let lo = x.saturating_sub(r);
            let hi = (x + r + 1).min(w);
            *o = row[lo..hi].iter().sum();
        }
    }
    // Vertical pass.
    for y in 0..h {
        let lo = y.saturating_sub(r);
        let hi = (y + r + 1).min(h);
        let out = &mut dst[y * w..(y + 1) * w];
        out.copy_from_slice(&tmp[lo * w..(lo + 1) * w]);
        for yy in lo + 1..hi {
            let row = &tmp[yy * w..(yy + 1) * w];
            out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_identity_and_clamp() {
        let t = linear_taps(5, 5);
        for (o, tap) in t.iter().enumerate() {
            assert_eq!((tap.i0, tap.w0, tap.w1), (o, 1.0, 0.0));
        }
        // Downsampling 4 → 2: src = 0.5, 2.5.
        let t = linear_taps(4, 2);
        assert_eq!((t[0].i0, t[0].i1, t[0].w1), (0, 1, 0.5));
        assert_eq!((t[1].i0, t[1].i1, t[1].w1), (2, 3, 0.5));
        // Upsampling 1 → 3: everything reads index 0.
        let t = linear_taps(1, 3);
        assert!(t.iter().all(|tap| tap.i0 == 0 && tap.i1 == 0));
    }
}
