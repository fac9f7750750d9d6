//! Pixel anomaly maps from patch scores.
//!
//! The patch scores of one image (row-major `h × w` grid) are upsampled to the output size
//! (bilinear with `align_corners = false` by default, or PyTorch `nearest`) and smoothed with a
//! separable Gaussian (σ = 4, truncate 4 → radius 16, scipy `'reflect'` border, i.e.
//! half-sample symmetric `… b a | a b …`), which is what the original PatchCore does with
//! `scipy.ndimage.gaussian_filter`.
//!
//! ```
//! use patchcore::anomaly_map::{anomaly_map, MapConfig, Upsample};
//!
//! let cfg = MapConfig { upsample: Upsample::Bilinear, sigma: None, truncate: 4.0 };
//! let map = anomaly_map(&[0.0, 1.0], 1, 2, 1, 4, &cfg)?;
//! assert_eq!(map.row(0).to_vec(), vec![0.0, 0.25, 0.75, 1.0]);
//! # Ok::<(), patchcore::Error>(())
//! ```

use ndarray::{Array2, ArrayView2};

use crate::{Error, Result};

/// Largest accepted output map, in pixels (guards against absurd sizes).
pub const MAX_MAP_PIXELS: usize = 1 << 28;

/// Upsampling of the patch-score grid to the output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Upsample {
    /// Bilinear, `align_corners = false`, no antialiasing (original PatchCore). Default.
    #[default]
    Bilinear,
    /// PyTorch `nearest`: source index `floor(dst · in/out)` (anomalib).
    Nearest,
}

/// Anomaly-map parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapConfig {
    /// Upsampling mode (default bilinear).
    pub upsample: Upsample,
    /// Gaussian standard deviation in output pixels; `None` = no blur. Default `Some(4.0)`.
    pub sigma: Option<f32>,
    /// Kernel radius in standard deviations: radius `= floor(truncate·σ + 0.5)` (default 4).
    pub truncate: f32,
}

impl Default for MapConfig {
    fn default() -> Self {
        Self {
            upsample: Upsample::Bilinear,
            sigma: Some(4.0),
            truncate: 4.0,
        }
    }
}

impl MapConfig {
    /// Check the parameters.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `sigma` is not a positive finite number or `truncate` is
    /// negative or not finite, or the kernel radius would exceed 65 536.
    pub fn validate(&self) -> Result<()> {
        if !(self.truncate.is_finite() && self.truncate >= 0.0) {
            return Err(Error::param(
                "truncate",
                format!("must be finite and ≥ 0, got {}", self.truncate),
            ));
        }
        if let Some(sigma) = self.sigma {
            if !(sigma.is_finite() && sigma > 0.0) {
                return Err(Error::param(
                    "sigma",
                    format!("must be finite and > 0 (use None for no blur), got {sigma}"),
                ));
            }
            let r = gaussian_radius(sigma, self.truncate);
            if r > 65_536.0 {
                return Err(Error::param(
                    "sigma",
                    format!("kernel radius {r} (truncate·σ) is too large; at most 65536 supported"),
                ));
            }
        }
        Ok(())
    }
}

/// Anomaly map `[out_h, out_w]` from the row-major `h × w` patch scores of one image.
///
/// # Errors
/// [`Error::InvalidParameter`] for an invalid `cfg`; [`Error::InvalidInput`] if a size is 0,
/// `patch_scores.len() != h·w`, or a score is NaN or infinite; [`Error::LimitExceeded`] if the
/// output has more than [`MAX_MAP_PIXELS`] pixels.
pub fn anomaly_map(
    patch_scores: &[f32],
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
    cfg: &MapConfig,
) -> Result<Array2<f32>> {
    cfg.validate()?;
    check_sizes(h, w, out_h, out_w)?;
    if patch_scores.len() != h * w {
        return Err(Error::input(format!(
            "{} patch scores do not fill a {h}×{w} grid",
            patch_scores.len()
        )));
    }
    if let Some(i) = patch_scores.iter().position(|v| !v.is_finite()) {
        return Err(Error::input(format!(
            "patch score {i} is NaN or infinite; cannot build an anomaly map"
        )));
    }
    let grid = ArrayView2::from_shape((h, w), patch_scores)
        .map_err(|e| Error::input(format!("patch scores do not fit {h}×{w}: {e}")))?;
    let mut map = match cfg.upsample {
        Upsample::Bilinear => bilinear(grid, out_h, out_w)?,
        Upsample::Nearest => nearest(grid, out_h, out_w),
    };
    if let Some(sigma) = cfg.sigma {
        map = blur(map.view(), &kernel(sigma, cfg.truncate))?;
    }
    Ok(map)
}

/// Bilinear resize (`align_corners = false`, no antialiasing) of a map, e.g. from the crop size
/// to an original image resolution.
///
/// # Errors
/// [`Error::InvalidInput`] if a size is 0; [`Error::LimitExceeded`] if the output has more
/// than [`MAX_MAP_PIXELS`] pixels.
pub fn resize_map(map: ArrayView2<f32>, out_h: usize, out_w: usize) -> Result<Array2<f32>> {
    check_sizes(map.nrows(), map.ncols(), out_h, out_w)?;
    bilinear(map, out_h, out_w)
}

/// Separable Gaussian blur with scipy `'reflect'` borders, returning a new map.
///
/// # Errors
/// [`Error::InvalidParameter`] for an invalid `sigma`/`truncate` (see [`MapConfig::validate`]).
pub fn gaussian_blur(map: ArrayView2<f32>, sigma: f32, truncate: f32) -> Result<Array2<f32>> {
    MapConfig {
        upsample: Upsample::Bilinear,
        sigma: Some(sigma),
        truncate,
    }
    .validate()?;
    blur(map, &kernel(sigma, truncate))
}

/// The normalised 1-D Gaussian kernel (`2·radius + 1` taps) used by the blur.
///
/// # Errors
/// [`Error::InvalidParameter`] for an invalid `sigma`/`truncate`.
pub fn gaussian_kernel(sigma: f32, truncate: f32) -> Result<Vec<f32>> {
    MapConfig {
        upsample: Upsample::Bilinear,
        sigma: Some(sigma),
        truncate,
    }
    .validate()?;
    Ok(kernel(sigma, truncate))
}

fn check_sizes(h: usize, w: usize, out_h: usize, out_w: usize) -> Result<()> {
    if h == 0 || w == 0 || out_h == 0 || out_w == 0 {
        return Err(Error::input(format!(
            "map sizes must be non-zero, got grid {h}×{w} → output {out_h}×{out_w}"
        )));
    }
    match out_h.checked_mul(out_w) {
        Some(p) if p <= MAX_MAP_PIXELS => Ok(()),
        _ => Err(Error::LimitExceeded {
            reason: format!(
                "anomaly map of {out_h}×{out_w} pixels exceeds the limit of {MAX_MAP_PIXELS}"
            ),
        }),
    }
}

/// Source taps of a bilinear (align_corners = false) resize along one axis.
struct Taps {
    i0: Vec<usize>,
    i1: Vec<usize>,
    frac: Vec<f32>,
}

fn bilinear_taps(input: usize, output: usize) -> Taps {
    let scale = input as f64 / output as f64;
    let mut t = Taps {
        i0: Vec::with_capacity(output),
        i1: Vec::with_capacity(output),
        frac: Vec::with_capacity(output),
    };
    for dst in 0..output {
        let src = ((dst as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(input - 1);
        let i1 = (i0 + 1).min(input - 1);
        t.i0.push(i0);
        t.i1.push(i1);
        t.frac.push((src - i0 as f64) as f32);
    }
    t
}

fn bilinear(src: ArrayView2<f32>, out_h: usize, out_w: usize) -> Result<Array2<f32>> {
    let (h, w) = src.dim();
    let ty = bilinear_taps(h, out_h);
    let tx = bilinear_taps(w, out_w);
    // Horizontal pass on the source rows, then vertical blend of two of them per output row.
    let mut horiz = vec![0.0f32; h * out_w];
    for (src_row, dst_row) in src.rows().into_iter().zip(horiz.chunks_exact_mut(out_w)) {
        for (x, d) in dst_row.iter_mut().enumerate() {
            let a = src_row[tx.i0[x]];
            let b = src_row[tx.i1[x]];
            let l = tx.frac[x];
            *d = a + l * (b - a);
        }
    }
    let mut out = vec![0.0f32; out_h * out_w];
    for (y, dst_row) in out.chunks_exact_mut(out_w).enumerate() {
        let a = &horiz[ty.i0[y] * out_w..(ty.i0[y] + 1) * out_w];
        let b = &horiz[ty.i1[y] * out_w..(ty.i1[y] + 1) * out_w];
        let l = ty.frac[y];
        for ((d, &va), &vb) in dst_row.iter_mut().zip(a).zip(b) {
            *d = va + l * (vb - va);
        }
    }
    to_array(out, out_h, out_w)
}

/// Wrap a row-major buffer (length checked by construction) as an array.
fn to_array(data: Vec<f32>, h: usize, w: usize) -> Result<Array2<f32>> {
    Array2::from_shape_vec((h, w), data)
        .map_err(|e| Error::input(format!("internal map buffer does not fit {h}×{w}: {e}")))
}

/// PyTorch `nearest` source index: identity for equal sizes, `dst >> 1` for exact doubling,
/// otherwise `min(floor(dst · (in/out as f32)), in − 1)` in f32 like PyTorch's CPU kernel.
fn nearest_index(dst: usize, input: usize, output: usize) -> usize {
    if input == output {
        dst
    } else if output == 2 * input {
        dst >> 1
    } else {
        let scale = input as f32 / output as f32;
        ((dst as f32 * scale).floor() as usize).min(input - 1)
    }
}

fn nearest(src: ArrayView2<f32>, out_h: usize, out_w: usize) -> Array2<f32> {
    let (h, w) = src.dim();
    let xs: Vec<usize> = (0..out_w).map(|x| nearest_index(x, w, out_w)).collect();
    let mut out = Array2::<f32>::zeros((out_h, out_w));
    for (y, mut dst_row) in out.rows_mut().into_iter().enumerate() {
        let src_row = src.row(nearest_index(y, h, out_h));
        for (d, &sx) in dst_row.iter_mut().zip(&xs) {
            *d = src_row[sx];
        }
    }
    out
}

fn gaussian_radius(sigma: f32, truncate: f32) -> f64 {
    (f64::from(truncate) * f64::from(sigma) + 0.5).floor()
}

/// Normalised taps `exp(−t²/(2σ²))`, `t = −r..=r`, computed in f64.
fn kernel(sigma: f32, truncate: f32) -> Vec<f32> {
    let r = gaussian_radius(sigma, truncate) as i64;
    let s2 = f64::from(sigma) * f64::from(sigma);
    let raw: Vec<f64> = (-r..=r)
        .map(|t| (-0.5 * (t * t) as f64 / s2).exp())
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.iter().map(|&v| (v / sum) as f32).collect()
}

/// scipy `'reflect'` (half-sample symmetric) index for any integer position, folding as often
/// as needed: period `2n`, positions `n..2n` map to `2n − 1 − p`.
fn reflect_index(pos: i64, n: usize) -> usize {
    let n = n as i64;
    let period = 2 * n;
    let p = pos.rem_euclid(period);
    (if p >= n { period - 1 - p } else { p }) as usize
}

/// Separable convolution of `src` with the odd-length kernel `k` (rows first, then columns).
fn blur(src: ArrayView2<f32>, k: &[f32]) -> Result<Array2<f32>> {
    let r = (k.len() - 1) / 2;
    let (h, w) = src.dim();
    if h == 0 || w == 0 {
        return Ok(src.to_owned());
    }
    // Rows: pad each row into `padded` (length w + 2r), then out[x] = Σ_t k[t]·padded[x + t].
    let pad_idx: Vec<usize> = (0..w + 2 * r)
        .map(|p| reflect_index(p as i64 - r as i64, w))
        .collect();
    let mut padded = vec![0.0f32; w + 2 * r];
    let mut rows = vec![0.0f32; h * w];
    for (src_row, row) in src.rows().into_iter().zip(rows.chunks_exact_mut(w)) {
        for (p, &i) in padded.iter_mut().zip(&pad_idx) {
            *p = src_row[i];
        }
        for (t, &kt) in k.iter().enumerate() {
            let window = &padded[t..t + w];
            for (o, &v) in row.iter_mut().zip(window) {
                *o += kt * v;
            }
        }
    }
    // Columns: out_row[y] = Σ_t k[t]·rows[reflect(y + t − r)], vectorised along x.
    let mut out = vec![0.0f32; h * w];
    for (y, out_row) in out.chunks_exact_mut(w).enumerate() {
        for (t, &kt) in k.iter().enumerate() {
            let sy = reflect_index(y as i64 + t as i64 - r as i64, h);
            let in_row = &rows[sy * w..(sy + 1) * w];
            for (o, &v) in out_row.iter_mut().zip(in_row) {
                *o += kt * v;
            }
        }
    }
    to_array(out, h, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_folds_repeatedly() {
        // n = 3, positions −7..=9: … 0 | 0 1 2 2 1 0 | 0 1 2 | 2 1 0 | 0 1 2 | 2
        let got: Vec<usize> = (-7..10).map(|p| reflect_index(p, 3)).collect();
        assert_eq!(got, vec![0, 0, 1, 2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0, 1, 2, 2]);
        assert_eq!(reflect_index(-1, 1), 0);
        assert_eq!(reflect_index(5, 1), 0);
    }

    #[test]
    fn nearest_index_matches_torch_rule() {
        let v: Vec<usize> = (0..4).map(|d| nearest_index(d, 2, 4)).collect();
        assert_eq!(v, vec![0, 0, 1, 1]);
        let v: Vec<usize> = (0..3).map(|d| nearest_index(d, 5, 3)).collect();
        assert_eq!(v, vec![0, 1, 3]);
    }
}

/// Resamples a map that covers `crop` (a rectangle of the original image, in original pixel
/// coordinates, as given by [`crate::preprocess::crop_box`]) onto the whole `h × w` original
/// image, bilinearly with pixel centres aligned (`align_corners = false`). Pixels outside the
/// crop take the value of the nearest map edge.
pub fn map_to_image(
    map: ArrayView2<f32>,
    crop: &crate::preprocess::CropBox,
    h: usize,
    w: usize,
) -> Result<Array2<f32>> {
    let (mh, mw) = map.dim();
    check_sizes(mh, mw, h, w)?;
    if !(crop.height > 0.0 && crop.width > 0.0) {
        return Err(Error::input("map_to_image: empty crop box"));
    }
    let coords = |n_out: usize, start: f64, len: f64, n_map: usize| -> Vec<(usize, usize, f32)> {
        (0..n_out)
            .map(|i| {
                let src = ((i as f64 + 0.5 - start) * n_map as f64 / len - 0.5)
                    .clamp(0.0, (n_map - 1) as f64);
                let i0 = src.floor() as usize;
                let i1 = (i0 + 1).min(n_map - 1);
                (i0, i1, (src - i0 as f64) as f32)
            })
            .collect()
    };
    let ys = coords(h, crop.top, crop.height, mh);
    let xs = coords(w, crop.left, crop.width, mw);
    let mut out = Array2::zeros((h, w));
    for (y, &(y0, y1, ly)) in ys.iter().enumerate() {
        for (x, &(x0, x1, lx)) in xs.iter().enumerate() {
            let top = map[[y0, x0]] * (1.0 - lx) + map[[y0, x1]] * lx;
            let bottom = map[[y1, x0]] * (1.0 - lx) + map[[y1, x1]] * lx;
            out[[y, x]] = top * (1.0 - ly) + bottom * ly;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod map_to_image_tests {
    use super::*;
    use crate::preprocess::CropBox;

    #[test]
    fn full_crop_is_bilinear_resize_and_outside_is_clamped() {
        let m = Array2::from_shape_vec((1, 2), vec![0.0f32, 1.0]).unwrap();
        let full = CropBox {
            top: 0.0,
            left: 0.0,
            height: 1.0,
            width: 4.0,
        };
        let out = map_to_image(m.view(), &full, 1, 4).unwrap();
        // Same as docs/algorithm.md §10 vector 2: [0, 1] 2 → 4 = [0, .25, .75, 1].
        assert_eq!(out.row(0).to_vec(), vec![0.0, 0.25, 0.75, 1.0]);
        // The map covers columns 2..4 of a 6-wide image: left of it 0, right of it 1.
        let part = CropBox {
            top: 0.0,
            left: 2.0,
            height: 1.0,
            width: 2.0,
        };
        let out = map_to_image(m.view(), &part, 1, 6).unwrap();
        assert_eq!(out.row(0).to_vec(), vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    }
}
