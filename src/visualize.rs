//! Pictures for people: heat maps over the inspected image and defect outlines.
//!
//! A [`ColorScale`] is fixed for a whole run (for example from the normal images' scores and
//! the decision threshold), so that the same colour means the same score on every image; maps
//! are never stretched per image.

use std::path::Path;

use image::{Rgb, RgbImage};
use ndarray::ArrayView2;

use crate::error::{Error, Result};

/// Maps scores linearly onto the colour map: `min` → blue, `max` → red; values outside are
/// clamped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColorScale {
    /// Score drawn with the coldest colour.
    pub min: f32,
    /// Score drawn with the hottest colour.
    pub max: f32,
}

impl ColorScale {
    /// A scale from `min` to `max`. Fails when the bounds are not finite or `max <= min`.
    pub fn new(min: f32, max: f32) -> Result<Self> {
        if !(min.is_finite() && max.is_finite() && max > min) {
            return Err(Error::param(
                "color_scale",
                format!("needs finite bounds with max > min, got [{min}, {max}]"),
            ));
        }
        Ok(ColorScale { min, max })
    }

    /// Position of `v` on the scale in `[0, 1]` (NaN maps to 0).
    pub fn unit(&self, v: f32) -> f32 {
        let t = (v - self.min) / (self.max - self.min);
        if t.is_nan() {
            0.0
        } else {
            t.clamp(0.0, 1.0)
        }
    }
}

/// The "jet" colour map: dark blue → blue → cyan → yellow → red → dark red, for `t ∈ [0, 1]`.
pub fn jet(t: f32) -> Rgb<u8> {
    let t = t.clamp(0.0, 1.0);
    let channel = |centre: f32| -> u8 {
        // Each channel is a trapezoid of width 1.5 centred at its colour.
        let v = (1.5 - (4.0 * t - centre).abs()).clamp(0.0, 1.0);
        (v * 255.0).round() as u8
    };
    Rgb([channel(3.0), channel(2.0), channel(1.0)])
}

/// Colours a map with [`jet`] under a fixed scale.
pub fn heatmap(map: ArrayView2<f32>, scale: &ColorScale) -> RgbImage {
    let (h, w) = map.dim();
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        jet(scale.unit(map[[y as usize, x as usize]]))
    })
}

/// Blends the coloured map over `base` with opacity `alpha ∈ [0, 1]`. The map must have the
/// image's size (use [`crate::anomaly_map`] to resize it).
pub fn overlay(
    base: &RgbImage,
    map: ArrayView2<f32>,
    scale: &ColorScale,
    alpha: f32,
) -> Result<RgbImage> {
    let (h, w) = map.dim();
    if (w as u32, h as u32) != base.dimensions() {
        return Err(Error::input(format!(
            "overlay: map is {h}×{w} but the image is {}×{}",
            base.height(),
            base.width()
        )));
    }
    if !(0.0..=1.0).contains(&alpha) {
        return Err(Error::param(
            "alpha",
            format!("must be in [0, 1], got {alpha}"),
        ));
    }
    let mut out = base.clone();
    for (x, y, px) in out.enumerate_pixels_mut() {
        let c = jet(scale.unit(map[[y as usize, x as usize]]));
        for ch in 0..3 {
            let v = (1.0 - alpha) * px[ch] as f32 + alpha * c[ch] as f32;
            px[ch] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    Ok(out)
}

/// Draws a polyline through `points` (`(x, y)` in pixel coordinates, pixel centres at integer
/// positions), closing it when `closed`. Points outside the image are clipped per pixel.
pub fn draw_polyline(img: &mut RgbImage, points: &[(f32, f32)], closed: bool, color: Rgb<u8>) {
    if points.is_empty() {
        return;
    }
    let n = points.len();
    let segments = if closed { n } else { n - 1 };
    for i in 0..segments.max(1) {
        let a = points[i];
        let b = points[(i + 1) % n];
        draw_segment(img, a, b, color);
    }
}

fn draw_segment(img: &mut RgbImage, a: (f32, f32), b: (f32, f32), color: Rgb<u8>) {
    let (w, h) = img.dimensions();
    let steps = (b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil().max(1.0) as usize;
    for s in 0..=steps {
        let t = s as f32 / steps as f32;
        let x = (a.0 + t * (b.0 - a.0)).round();
        let y = (a.1 + t * (b.1 - a.1)).round();
        if x >= 0.0 && y >= 0.0 && (x as u32) < w && (y as u32) < h {
            img.put_pixel(x as u32, y as u32, color);
        }
    }
}

/// Writes `img` as PNG. An existing regular file is only replaced when `overwrite` (anything
/// else — a folder, a FIFO, a device, a symbolic link — never); the image is first
/// written to a temporary name next to `path` and renamed, so a failure never leaves a
/// half-written file.
pub fn save_png(img: &RgbImage, path: &Path, overwrite: bool) -> Result<()> {
    crate::io_util::write_atomic(path, overwrite, |file| {
        let mut buf = std::io::BufWriter::new(file);
        img.write_to(&mut buf, image::ImageFormat::Png)
            .map_err(|e| Error::Image {
                path: path.to_path_buf(),
                reason: format!("cannot encode PNG: {e}"),
            })?;
        use std::io::Write;
        buf.flush().map_err(|e| Error::io(path, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn jet_endpoints_and_middle() {
        assert_eq!(jet(0.0), Rgb([0, 0, 128]));
        assert_eq!(jet(0.5), Rgb([128, 255, 128]));
        assert_eq!(jet(1.0), Rgb([128, 0, 0]));
        // Clamped outside [0, 1].
        assert_eq!(jet(-3.0), jet(0.0));
        assert_eq!(jet(7.0), jet(1.0));
    }

    #[test]
    fn scale_is_fixed_not_stretched() {
        let s = ColorScale::new(0.0, 10.0).unwrap();
        let m = Array2::from_shape_vec((1, 3), vec![0.0, 5.0, 20.0]).unwrap();
        let img = heatmap(m.view(), &s);
        assert_eq!(*img.get_pixel(0, 0), jet(0.0));
        assert_eq!(*img.get_pixel(1, 0), jet(0.5));
        assert_eq!(*img.get_pixel(2, 0), jet(1.0));
        assert!(ColorScale::new(1.0, 1.0).is_err());
        assert!(ColorScale::new(f32::NAN, 1.0).is_err());
    }

    #[test]
    fn overlay_blends_by_alpha() {
        let base = RgbImage::from_pixel(2, 1, Rgb([100, 100, 100]));
        let s = ColorScale::new(0.0, 1.0).unwrap();
        let m = Array2::from_shape_vec((1, 2), vec![1.0, 0.0]).unwrap();
        let o = overlay(&base, m.view(), &s, 0.5).unwrap();
        // jet(1) = (128, 0, 0): (100 + 128) / 2 = 114, (100 + 0) / 2 = 50.
        assert_eq!(*o.get_pixel(0, 0), Rgb([114, 50, 50]));
        assert_eq!(*o.get_pixel(1, 0), Rgb([50, 50, 114]));
        assert!(overlay(&base, Array2::zeros((2, 2)).view(), &s, 0.5).is_err());
    }

    #[test]
    fn polyline_draws_a_closed_square() {
        let mut img = RgbImage::new(6, 6);
        let red = Rgb([255, 0, 0]);
        draw_polyline(
            &mut img,
            &[(1.0, 1.0), (4.0, 1.0), (4.0, 4.0), (1.0, 4.0)],
            true,
            red,
        );
        for y in 0..6u32 {
            for x in 0..6u32 {
                let on_border = (1..=4).contains(&x)
                    && (1..=4).contains(&y)
                    && (x == 1 || x == 4 || y == 1 || y == 4);
                assert_eq!(*img.get_pixel(x, y) == red, on_border, "pixel ({x},{y})");
            }
        }
    }
}
