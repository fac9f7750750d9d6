//! Image preprocessing: decoding, antialiased resize, centre crop and normalisation.
//!
//! The default [`PreprocessConfig`] reproduces the reference PatchCore pipeline (torchvision on
//! PIL images):
//!
//! 1. `Image.open(...).convert("RGB")` → [`load_rgb`] / [`decode_rgb`];
//! 2. `Resize(256)`: the shorter side becomes 256, the longer `trunc(256·long/short)`, PIL
//!    bilinear with antialiasing, 8-bit result → [`resize_antialiased`] (bit-identical to PIL);
//! 3. `CenterCrop(224)`: top = `round((H − 224)/2)` with Python's round-half-to-even, same for
//!    the left edge;
//! 4. `ToTensor` + `Normalize`: `(v/255 − mean)/std` in `f32`, channels-first (CHW).
//!
//! Ground-truth masks go through the same resize and crop, and a pixel is positive only if the
//! resized value is exactly 255 ([`preprocess_mask`]), which is how the reference evaluation
//! binarises them.
//!
//! ```no_run
//! use patchcore::preprocess::{preprocess_path, ImageLimits, PreprocessConfig};
//! let cfg = PreprocessConfig::default();
//! let x = preprocess_path("bottle/test/broken_large/000.png".as_ref(), &cfg, &ImageLimits::default())?;
//! assert_eq!(x.dim(), (3, 224, 224));
//! # Ok::<(), patchcore::Error>(())
//! ```

mod decode;
mod resample;

use std::borrow::Cow;
use std::path::Path;

use image::{GrayImage, RgbImage};
use ndarray::{Array2, Array3, Array4};
use rayon::prelude::*;

pub use decode::{decode_mask, decode_rgb, load_mask, load_rgb, ImageLimits};
use resample::{resample, Window};

use crate::{Error, Result};

/// Largest number of pixels a resized image may have (2²⁶ ≈ 67 M); protects against
/// configurations such as `ShorterSide(256)` applied to a 1 × 16384 strip.
pub const MAX_RESIZED_PIXELS: usize = 1 << 26;

/// ImageNet channel means (RGB) used by torchvision-pretrained backbones.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How an image is resized before cropping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resize {
    /// Keep the original size.
    None,
    /// Scale so that the shorter side becomes this many pixels; the longer side becomes
    /// `trunc(s·long/short)` (torchvision `Resize(s)`). Square images become `s × s`.
    ShorterSide(usize),
    /// Scale to exactly `height × width` (torchvision `Resize((h, w))`), ignoring the aspect
    /// ratio.
    Exact {
        /// Output height in pixels.
        height: usize,
        /// Output width in pixels.
        width: usize,
    },
}

/// Preprocessing parameters. Plain data: every function that uses it calls
/// [`PreprocessConfig::validate`] first.
///
/// [`Default`] is the reference (ORIG) pipeline: shorter side to 256, centre crop 224 × 224,
/// ImageNet mean / std. The anomalib-style variant is
/// `PreprocessConfig { resize: Resize::Exact { height: 256, width: 256 }, crop: None, ..Default::default() }`
/// (anomalib resizes float tensors, so its pixels differ slightly from this 8-bit PIL resize).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PreprocessConfig {
    /// Resize step (antialiased bilinear, PIL-compatible).
    pub resize: Resize,
    /// Centre crop `(height, width)` applied after resizing; `None` keeps the whole image.
    pub crop: Option<(usize, usize)>,
    /// Per-channel mean (RGB) subtracted after scaling to `[0, 1]`.
    pub mean: [f32; 3],
    /// Per-channel standard deviation (RGB) divided by; must be finite and positive.
    pub std: [f32; 3],
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            resize: Resize::ShorterSide(256),
            crop: Some((224, 224)),
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
}

/// A rectangle in continuous pixel coordinates of the original image (pixel `(y, x)` covers
/// `[y, y+1) × [x, x+1)`): the region that ends up in the preprocessed tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropBox {
    /// Top edge.
    pub top: f64,
    /// Left edge.
    pub left: f64,
    /// Height (bottom edge = `top + height`).
    pub height: f64,
    /// Width (right edge = `left + width`).
    pub width: f64,
}

impl PreprocessConfig {
    /// Checks the parameters that do not depend on the image.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a zero resize or crop size, a non-finite mean or a
    /// standard deviation that is not finite and positive. (A crop larger than the resized
    /// image is detected per image, as [`Error::InvalidInput`].)
    pub fn validate(&self) -> Result<()> {
        match self.resize {
            Resize::None => {}
            Resize::ShorterSide(0) => {
                return Err(Error::param("resize", "ShorterSide(0): size must be ≥ 1"))
            }
            Resize::ShorterSide(s) if s > MAX_RESIZED_PIXELS => {
                return Err(Error::param(
                    "resize",
                    format!("ShorterSide({s}) exceeds {MAX_RESIZED_PIXELS}"),
                ))
            }
            Resize::ShorterSide(_) => {}
            Resize::Exact { height, width } => {
                if height == 0 || width == 0 {
                    return Err(Error::param(
                        "resize",
                        format!("Exact {{ height: {height}, width: {width} }}: sizes must be ≥ 1"),
                    ));
                }
                if height.saturating_mul(width) > MAX_RESIZED_PIXELS {
                    return Err(Error::param(
                        "resize",
                        format!("Exact {height}×{width} exceeds {MAX_RESIZED_PIXELS} pixels"),
                    ));
                }
            }
        }
        if let Some((ch, cw)) = self.crop {
            if ch == 0 || cw == 0 {
                return Err(Error::param(
                    "crop",
                    format!("({ch}, {cw}): crop sizes must be ≥ 1"),
                ));
            }
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return Err(Error::param(
                "mean",
                format!("{:?}: must be finite", self.mean),
            ));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::param(
                "std",
                format!("{:?}: every entry must be finite and > 0", self.std),
            ));
        }
        Ok(())
    }

    /// Size `(height, width)` of an `h × w` image after the resize step (before cropping).
    ///
    /// # Errors
    /// As [`validate`](Self::validate); [`Error::InvalidInput`] for a zero-sized image;
    /// [`Error::LimitExceeded`] if the result would exceed [`MAX_RESIZED_PIXELS`].
    pub fn resized_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        self.validate()?;
        if h == 0 || w == 0 {
            return Err(Error::input(format!("image has zero size ({h}×{w})")));
        }
        let (rh, rw) = match self.resize {
            Resize::None => (h, w),
            Resize::Exact { height, width } => (height, width),
            Resize::ShorterSide(s) => {
                let (short, long) = if w <= h { (w, h) } else { (h, w) };
                // torchvision: int(s * long / short) — an exact integer product, one correctly
                // rounded division, truncation.
                let new_long = (s as f64 * long as f64 / short as f64) as usize;
                if w <= h {
                    (new_long, s)
                } else {
                    (s, new_long)
                }
            }
        };
        if rh.saturating_mul(rw) > MAX_RESIZED_PIXELS {
            return Err(Error::LimitExceeded {
                reason: format!(
                    "resizing a {h}×{w} image with {:?} gives {rh}×{rw} pixels, more than {MAX_RESIZED_PIXELS}",
                    self.resize
                ),
            });
        }
        Ok((rh, rw))
    }

    /// Size `(height, width)` of the preprocessed tensor for an `h × w` image.
    ///
    /// # Errors
    /// As [`resized_size`](Self::resized_size); [`Error::InvalidInput`] if the crop is larger
    /// than the resized image.
    pub fn output_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let (_, _, win) = self.plan(h, w)?;
        Ok((win.height, win.width))
    }

    /// Resized size and crop window.
    fn plan(&self, h: usize, w: usize) -> Result<(usize, usize, Window)> {
        let (rh, rw) = self.resized_size(h, w)?;
        let win = match self.crop {
            None => Window {
                top: 0,
                left: 0,
                height: rh,
                width: rw,
            },
            Some((ch, cw)) => {
                if ch > rh || cw > rw {
                    return Err(Error::input(format!(
                        "centre crop {ch}×{cw} is larger than the resized image {rh}×{rw} \
                         (original {h}×{w}, resize {:?})",
                        self.resize
                    )));
                }
                Window {
                    top: round_half_even_half(rh - ch),
                    left: round_half_even_half(rw - cw),
                    height: ch,
                    width: cw,
                }
            }
        };
        Ok((rh, rw, win))
    }
}

/// `round(d / 2)` with Python's round-half-to-even (torchvision `CenterCrop`).
fn round_half_even_half(d: usize) -> usize {
    let q = d / 2;
    if d % 2 == 1 && q % 2 == 1 {
        q + 1
    } else {
        q
    }
}

/// The region of an `h × w` original image that the preprocessed tensor covers, in original
/// pixel coordinates: the crop window mapped back through the resize (`x_orig = x_resized ·
/// w / w_resized`). Use it to place an anomaly map computed on the crop onto the original image.
///
/// # Errors
/// As [`PreprocessConfig::output_size`].
pub fn crop_box(h: usize, w: usize, cfg: &PreprocessConfig) -> Result<CropBox> {
    let (rh, rw, win) = cfg.plan(h, w)?;
    let sy = h as f64 / rh as f64;
    let sx = w as f64 / rw as f64;
    Ok(CropBox {
        top: win.top as f64 * sy,
        left: win.left as f64 * sx,
        height: win.height as f64 * sy,
        width: win.width as f64 * sx,
    })
}

/// Resizes an RGB image to `out_h × out_w` exactly like PIL's
/// `Image.resize((out_w, out_h), Image.BILINEAR)` (what torchvision's `Resize` uses on PIL
/// images): a separable triangle filter whose support grows with the downscale factor
/// (antialiasing), pixel-centre-aligned coordinates, 22-bit fixed-point weights, horizontal pass
/// then vertical pass, each rounded to 8 bits. The result is bit-identical to Pillow's.
/// Upscaling works too (plain bilinear interpolation). Returns a copy when the size is
/// unchanged, and an empty image when a requested size is zero.
pub fn resize_antialiased(img: &RgbImage, out_h: usize, out_w: usize) -> RgbImage {
    let (h, w) = (img.height() as usize, img.width() as usize);
    if out_h == 0 || out_w == 0 || h == 0 || w == 0 {
        return RgbImage::new(out_w as u32, out_h as u32);
    }
    let win = Window {
        top: 0,
        left: 0,
        height: out_h,
        width: out_w,
    };
    let data = resample::<3>(img.as_raw(), h, w, out_h, out_w, win);
    // The buffer has exactly out_h·out_w·3 bytes by construction.
    RgbImage::from_raw(out_w as u32, out_h as u32, data)
        .unwrap_or_else(|| RgbImage::new(out_w as u32, out_h as u32))
}

/// Resized and cropped 8-bit pixels (interleaved) of an image with `C` channels.
fn resize_crop<'a, const C: usize>(
    raw: &'a [u8],
    h: usize,
    w: usize,
    cfg: &PreprocessConfig,
) -> Result<(Cow<'a, [u8]>, Window)> {
    let (rh, rw, win) = cfg.plan(h, w)?;
    let full = Window {
        top: 0,
        left: 0,
        height: h,
        width: w,
    };
    if (rh, rw) == (h, w) && win.height == h && win.width == w {
        return Ok((Cow::Borrowed(raw), full));
    }
    Ok((Cow::Owned(resample::<C>(raw, h, w, rh, rw, win)), win))
}

/// Preprocesses one RGB image into a normalised `f32` tensor of shape `(3, H, W)` (RGB,
/// channels first): resize, centre crop, `(v/255 − mean[c]) / std[c]`.
///
/// # Errors
/// As [`PreprocessConfig::output_size`] (invalid configuration, zero-sized image, crop larger
/// than the resized image, resize too large).
pub fn preprocess(img: &RgbImage, cfg: &PreprocessConfig) -> Result<Array3<f32>> {
    let (h, w) = (img.height() as usize, img.width() as usize);
    let (oh, ow) = cfg.output_size(h, w)?;
    let mut out = Array3::<f32>::zeros((3, oh, ow));
    match out.as_slice_mut() {
        Some(dst) => preprocess_into(img, cfg, dst)?,
        None => return Err(Error::input("internal: non-contiguous output")),
    }
    Ok(out)
}

/// Writes the CHW tensor of `img` into `dst` (length `3·H·W` of the output size).
fn preprocess_into(img: &RgbImage, cfg: &PreprocessConfig, dst: &mut [f32]) -> Result<()> {
    let (h, w) = (img.height() as usize, img.width() as usize);
    let (px, win) = resize_crop::<3>(img.as_raw(), h, w, cfg)?;
    let plane = win.height * win.width;
    if dst.len() != 3 * plane {
        return Err(Error::input(format!(
            "internal: output buffer has {} values, expected {}",
            dst.len(),
            3 * plane
        )));
    }
    for (c, dst) in dst.chunks_exact_mut(plane).enumerate() {
        let (m, s) = (cfg.mean[c], cfg.std[c]);
        for (d, p) in dst.iter_mut().zip(px.chunks_exact(3)) {
            // Same f32 operations as torchvision's ToTensor + Normalize.
            *d = (f32::from(p[c]) / 255.0 - m) / s;
        }
    }
    Ok(())
}

/// Preprocesses several images (in parallel) into one `(N, 3, H, W)` batch.
///
/// # Errors
/// [`Error::InvalidInput`] if `images` is empty or the images do not all produce the same
/// output size (e.g. different aspect ratios without a crop); otherwise as [`preprocess`]
/// (the message names the image index).
pub fn preprocess_batch(images: &[RgbImage], cfg: &PreprocessConfig) -> Result<Array4<f32>> {
    cfg.validate()?;
    let first = images
        .first()
        .ok_or_else(|| Error::input("preprocess_batch: no images given"))?;
    let (oh, ow) = cfg.output_size(first.height() as usize, first.width() as usize)?;
    for (i, im) in images.iter().enumerate() {
        let size = cfg
            .output_size(im.height() as usize, im.width() as usize)
            .map_err(|e| Error::input(format!("image {i}: {e}")))?;
        if size != (oh, ow) {
            return Err(Error::input(format!(
                "image {i} ({}×{}) preprocesses to {}×{}, but image 0 to {oh}×{ow}; \
                 use a crop or an exact resize to batch images of different shapes",
                im.height(),
                im.width(),
                size.0,
                size.1
            )));
        }
    }
    let mut out = Array4::<f32>::zeros((images.len(), 3, oh, ow));
    let per_image = 3 * oh * ow;
    let Some(buf) = out.as_slice_mut() else {
        return Err(Error::input("internal: non-contiguous output"));
    };
    buf.par_chunks_mut(per_image)
        .zip(images.par_iter())
        .try_for_each(|(dst, im)| preprocess_into(im, cfg, dst))?;
    Ok(out)
}

/// Loads an image file ([`load_rgb`]) and preprocesses it ([`preprocess`]).
///
/// # Errors
/// As [`load_rgb`] and [`preprocess`]; configuration errors are reported before the file is
/// read, and size errors name the file.
pub fn preprocess_path(
    path: &Path,
    cfg: &PreprocessConfig,
    limits: &ImageLimits,
) -> Result<Array3<f32>> {
    cfg.validate()?;
    let img = load_rgb(path, limits)?;
    preprocess(&img, cfg).map_err(|e| match e {
        Error::InvalidInput { reason } => Error::input(format!("{}: {reason}", path.display())),
        other => other,
    })
}

/// Transforms a ground-truth mask like the reference evaluation: the same antialiased bilinear
/// resize and centre crop as the image, then a pixel is `true` **only if its resized value is
/// exactly 255** (the reference converts to `[0, 1]` and casts to `int`, so partially covered
/// edge pixels count as negative). Feed it masks with values 0/255 ([`load_mask`] produces
/// them).
///
/// # Errors
/// As [`PreprocessConfig::output_size`].
pub fn preprocess_mask(mask: &GrayImage, cfg: &PreprocessConfig) -> Result<Array2<bool>> {
    let (h, w) = (mask.height() as usize, mask.width() as usize);
    let (px, win) = resize_crop::<1>(mask.as_raw(), h, w, cfg)?;
    let v: Vec<bool> = px.iter().map(|&p| p == 255).collect();
    Array2::from_shape_vec((win.height, win.width), v)
        .map_err(|e| Error::input(format!("mask shape: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_round_half_even() {
        // round(0.5)=0, round(1.5)=2, round(2.5)=2, round(16)=16
        assert_eq!(round_half_even_half(1), 0);
        assert_eq!(round_half_even_half(3), 2);
        assert_eq!(round_half_even_half(5), 2);
        assert_eq!(round_half_even_half(7), 4);
        assert_eq!(round_half_even_half(32), 16);
        assert_eq!(round_half_even_half(0), 0);
    }

    #[test]
    fn shorter_side_sizes_like_torchvision() {
        let cfg = PreprocessConfig::default();
        assert_eq!(cfg.resized_size(900, 900).unwrap(), (256, 256));
        // int(256*300/240) = 320
        assert_eq!(cfg.resized_size(240, 300).unwrap(), (256, 320));
        // int(256*263/197) = int(341.76..) = 341
        assert_eq!(cfg.resized_size(263, 197).unwrap(), (341, 256));
        assert_eq!(cfg.output_size(263, 197).unwrap(), (224, 224));
    }
}
