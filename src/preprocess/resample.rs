//! Antialiased bilinear resampling that reproduces Pillow's `Image.resize(..., BILINEAR)`.
//!
//! Pillow resizes in two separable passes (horizontal first, then vertical). For every output
//! coordinate `i` along an axis of `n_in → n_out` samples it uses
//!
//! * `scale = n_in / n_out`, `filterscale = max(scale, 1)` (the filter widens when downscaling,
//!   which is the antialiasing), `support = filterscale` (the triangle filter has radius 1);
//! * the centre `c = (i + 0.5)·scale` (pixel centres aligned, like `align_corners=false`);
//! * the taps `j ∈ [trunc(c − support + 0.5), trunc(c + support + 0.5))`, clamped to the image,
//!   with weight `tri((j − c + 0.5) / filterscale)`, `tri(t) = max(0, 1 − |t|)`, normalised
//!   to sum 1 in `f64`;
//! * the weights converted to fixed point with 22 fractional bits (rounded half away from
//!   zero), the sum accumulated in `i32` starting at one half (`1 << 21`), shifted right by 22
//!   and clamped to `0..=255`.
//!
//! The horizontal pass writes an 8-bit intermediate image (rounded), which the vertical pass
//! reads; an axis whose size does not change is not resampled at all. This module follows the
//! same arithmetic, so results are bit-identical to Pillow for 8-bit images.
//!
//! Additionally the output may be restricted to a window (the centre crop), which yields exactly
//! the same pixels as resizing fully and cropping afterwards, with less work.

use rayon::prelude::*;

/// Number of fractional bits of the fixed-point weights (Pillow: `32 − 8 − 2`).
const PRECISION_BITS: u32 = 22;

/// Fixed-point filter taps for one axis.
pub(crate) struct AxisCoeffs {
    /// `(first input index, number of taps)` per output index.
    bounds: Vec<(usize, usize)>,
    /// Maximum number of taps per output index (row stride of `weights`).
    ksize: usize,
    /// `bounds.len() × ksize` fixed-point weights; unused entries are 0.
    weights: Vec<i32>,
}

impl AxisCoeffs {
    /// Taps for resampling `n_in` samples to `n_out` samples (both ≥ 1).
    pub(crate) fn new(n_in: usize, n_out: usize) -> Self {
        // Pillow passes the box bounds as `float` and computes the scale in `double`.
        let scale = (n_in as f32) as f64 / n_out as f64;
        let filterscale = scale.max(1.0);
        let support = filterscale; // bilinear support is 1.0
        let ksize = support.ceil() as usize * 2 + 1;
        let inv = 1.0 / filterscale;
        let mut bounds = Vec::with_capacity(n_out);
        let mut weights = vec![0i32; n_out * ksize];
        let mut taps = vec![0f64; ksize];
        for (i, row) in weights.chunks_exact_mut(ksize).enumerate() {
            let center = (i as f64 + 0.5) * scale;
            // C `(int)` truncates toward zero; negative values are clamped to 0 afterwards.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(n_in as i64).max(0) as usize;
            let len = hi.saturating_sub(lo).min(ksize);
            let mut total = 0.0;
            for (t, tap) in taps[..len].iter_mut().enumerate() {
                let x = (((t + lo) as f64) - center + 0.5) * inv;
                let w = triangle(x);
                *tap = w;
                total += w;
            }
            for (dst, &w) in row[..len].iter_mut().zip(&taps[..len]) {
                let w = if total != 0.0 { w / total } else { w };
                *dst = to_fixed(w);
            }
            bounds.push((lo, len));
        }
        AxisCoeffs {
            bounds,
            ksize,
            weights,
        }
    }

    /// First input index and fixed-point weights of output index `i`.
    #[inline]
    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (lo, len) = self.bounds[i];
        (lo, &self.weights[i * self.ksize..i * self.ksize + len])
    }

    /// Half-open range of input indices used by output indices `range`.
    fn input_span(&self, range: std::ops::Range<usize>) -> (usize, usize) {
        let mut lo = usize::MAX;
        let mut hi = 0;
        for i in range {
            let (a, n) = self.bounds[i];
            lo = lo.min(a);
            hi = hi.max(a + n);
        }
        if lo > hi {
            (0, 0)
        } else {
            (lo, hi)
        }
    }
}

/// The triangle (bilinear) filter.
#[inline]
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Pillow's conversion of a normalised weight to fixed point (round half away from zero).
#[inline]
fn to_fixed(w: f64) -> i32 {
    let s = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (s - 0.5) as i32
    } else {
        (s + 0.5) as i32
    }
}

/// Fixed-point accumulator → `u8` (arithmetic shift, clamped like Pillow's `clip8`).
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Rounding offset every accumulator starts with.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Output window of a resampling: rows `top..top + height`, columns `left..left + width` of the
/// full `out_h × out_w` result.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// Resamples an interleaved 8-bit image with `C` channels (`src.len() == in_h·in_w·C`) to
/// `out_h × out_w` like Pillow's bilinear `resize`, returning only the pixels inside `win`
/// (row-major, interleaved, `win.height·win.width·C` bytes).
///
/// Callers guarantee non-zero sizes and that `win` lies inside `out_h × out_w`.
pub(crate) fn resample<const C: usize>(
    src: &[u8],
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
    win: Window,
) -> Vec<u8> {
    debug_assert_eq!(src.len(), in_h * in_w * C);
    debug_assert!(win.top + win.height <= out_h && win.left + win.width <= out_w);
    let need_h = in_w != out_w;
    let need_v = in_h != out_h;

    // Horizontal pass over the input rows the vertical pass needs.
    let vcoef = need_v.then(|| AxisCoeffs::new(in_h, out_h));
    let (row0, row1) = match &vcoef {
        Some(vc) => vc.input_span(win.top..win.top + win.height),
        None => (win.top, win.top + win.height),
    };
    let tmp_w = win.width;
    let tmp: Vec<u8> = if need_h {
        let hc = AxisCoeffs::new(in_w, out_w);
        let mut tmp = vec![0u8; (row1 - row0) * tmp_w * C];
        tmp.par_chunks_mut(tmp_w * C)
            .enumerate()
            .for_each(|(r, out_row)| {
                let y = row0 + r;
                let in_row = &src[y * in_w * C..(y + 1) * in_w * C];
                horizontal_row::<C>(in_row, out_row, &hc, win.left);
            });
        tmp
    } else {
        let mut tmp = Vec::with_capacity((row1 - row0) * tmp_w * C);
        for y in row0..row1 {
            let start = (y * in_w + win.left) * C;
            tmp.extend_from_slice(&src[start..start + tmp_w * C]);
        }
        tmp
    };

    let Some(vc) = vcoef else {
        return tmp;
    };
    let row_len = tmp_w * C;
    let mut out = vec![0u8; win.height * row_len];
    out.par_chunks_mut(row_len).enumerate().for_each_init(
        || vec![0i32; row_len],
        |acc, (r, out_row)| {
            let (lo, ws) = vc.taps(win.top + r);
            acc.fill(HALF);
            for (t, &w) in ws.iter().enumerate() {
                let y = lo + t - row0;
                let in_row = &tmp[y * row_len..(y + 1) * row_len];
                for (a, &v) in acc.iter_mut().zip(in_row) {
                    *a += i32::from(v) * w;
                }
            }
            for (o, &a) in out_row.iter_mut().zip(acc.iter()) {
                *o = clip8(a);
            }
        },
    );
    out
}

/// Horizontal resampling of one row into output columns `left..left + out.len()/C`.
#[inline]
fn horizontal_row<const C: usize>(input: &[u8], out: &mut [u8], hc: &AxisCoeffs, left: usize) {
    for (j, px) in out.chunks_exact_mut(C).enumerate() {
        let (lo, ws) = hc.taps(left + j);
        let mut acc = [HALF; C];
        let taps = &input[lo * C..(lo + ws.len()) * C];
        for (p, &w) in taps.chunks_exact(C).zip(ws) {
            for c in 0..C {
                acc[c] += i32::from(p[c]) * w;
            }
        }
        for c in 0..C {
            px[c] = clip8(acc[c]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_when_sizes_match() {
        let src: Vec<u8> = (0..5 * 7 * 3).map(|i| (i * 37 % 256) as u8).collect();
        let win = Window {
            top: 0,
            left: 0,
            height: 5,
            width: 7,
        };
        assert_eq!(resample::<3>(&src, 5, 7, 5, 7, win), src);
    }

    #[test]
    fn fixed_point_weights_sum_to_one() {
        for (n_in, n_out) in [(900, 256), (256, 900), (7, 3), (3, 7), (300, 256)] {
            let c = AxisCoeffs::new(n_in, n_out);
            for i in 0..n_out {
                let (_, ws) = c.taps(i);
                let s: i64 = ws.iter().map(|&w| i64::from(w)).sum();
                // Each weight is rounded separately: the sum is within one unit per tap.
                assert!((s - (1 << PRECISION_BITS)).unsigned_abs() as usize <= ws.len());
            }
        }
    }

    #[test]
    fn halving_averages_pairs_of_pixels() {
        // 4 → 2: scale 2, support 2, taps of output 0: centre 1, inputs 0..3 with weights
        // tri((j − 0.5)/2) = 3/4, 3/4, 1/4 → normalised 3/7, 3/7, 1/7.
        let src = [10u8, 20, 30, 40];
        let win = Window {
            top: 0,
            left: 0,
            height: 1,
            width: 2,
        };
        let out = resample::<1>(&src, 1, 4, 1, 2, win);
        let e0 = (3.0 * 10.0 + 3.0 * 20.0 + 30.0) / 7.0f64;
        let e1 = (20.0 + 3.0 * 30.0 + 3.0 * 40.0) / 7.0f64;
        assert_eq!(out, vec![e0.round() as u8, e1.round() as u8]);
    }
}
