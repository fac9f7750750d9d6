//! Decoding PNG / JPEG / BMP / TIFF files into 8-bit RGB images and masks, with resource limits.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, GrayImage, ImageError, ImageReader, RgbImage};

use crate::{Error, Result};

/// Resource limits applied while reading and decoding an image and while scoring or fitting on
/// it, so that a malicious or corrupt file (a "decompression bomb" declaring a huge size) or a
/// huge image is refused with [`Error::LimitExceeded`] instead of exhausting memory (an
/// allocation failure aborts the process).
///
/// The decoding limits are handed to the `image` crate's decoder before any pixel buffer is
/// allocated, and checked again for the buffers this module allocates itself; file reads stop
/// after `max_alloc_bytes` even when the file's length is not known in advance.
///
/// The defaults suit an edge device with 2–4 GB of memory: a decoded image of at most 512 MiB
/// (e.g. 8192 × 8192 RGB is 192 MiB) and a working set of at most 1 GiB per prediction or fit
/// batch — an estimate of the decoded and resized pixels, the input tensor, the backbone's
/// activations at the network input size, the patch embeddings and the anomaly map, checked
/// before they are allocated. A Wide-ResNet-50-2 (layers 2 and 3) at 224² needs about 45 MB
/// per image, at 1024 × 1024 (no resize) about 950 MB; an 8192² image fed at full size (no
/// resize) would need about 60 GB and is refused. A larger limit is honoured by
/// [`PatchCore::fit_paths`](crate::model::PatchCore::fit_paths) and
/// [`PatchCore::predict_path`](crate::model::PatchCore::predict_path); the calls without
/// limits (`fit`, `predict`, `predict_batch`, `predict_tensor`, building or loading a model
/// whose configuration fixes the input size) use the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest accepted image width in pixels.
    pub max_width: u32,
    /// Largest accepted image height in pixels.
    pub max_height: u32,
    /// Largest accepted allocation (decoded pixel buffer, file size) in bytes.
    pub max_alloc_bytes: u64,
    /// Largest estimated memory, in bytes, that scoring one image (or fitting on one batch)
    /// may need; see the type's documentation.
    pub max_working_set_bytes: u64,
}

impl Default for ImageLimits {
    /// 16384 × 16384 pixels, 512 MiB per decoded image, a working set of 1 GiB.
    fn default() -> Self {
        ImageLimits {
            max_width: 16384,
            max_height: 16384,
            max_alloc_bytes: 512 * 1024 * 1024,
            max_working_set_bytes: 1 << 30,
        }
    }
}

impl ImageLimits {
    /// Checks that every limit is non-zero.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the zero limit.
    pub fn validate(&self) -> Result<()> {
        if self.max_width == 0 {
            return Err(Error::param("max_width", "must be at least 1 pixel"));
        }
        if self.max_height == 0 {
            return Err(Error::param("max_height", "must be at least 1 pixel"));
        }
        if self.max_alloc_bytes == 0 {
            return Err(Error::param("max_alloc_bytes", "must be at least 1 byte"));
        }
        if self.max_working_set_bytes == 0 {
            return Err(Error::param(
                "max_working_set_bytes",
                "must be at least 1 byte",
            ));
        }
        Ok(())
    }

    fn to_image_limits(self) -> image::Limits {
        let mut l = image::Limits::default();
        l.max_image_width = Some(self.max_width);
        l.max_image_height = Some(self.max_height);
        l.max_alloc = Some(self.max_alloc_bytes);
        l
    }
}

/// Reads and decodes an image file (PNG, JPEG, BMP or TIFF) into 8-bit RGB; see [`decode_rgb`] for the
/// conversion rules.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read, [`Error::LimitExceeded`] if the file or the image
/// exceeds `limits`, [`Error::Image`] if it is empty, not a PNG/JPEG/BMP/TIFF, corrupt or has zero size.
/// Every message names the file.
pub fn load_rgb(path: &Path, limits: &ImageLimits) -> Result<RgbImage> {
    let bytes = read_limited(path, limits)?;
    decode_rgb(&bytes, path, limits)
}

/// Decodes an in-memory PNG, JPEG, BMP or TIFF image into 8-bit RGB, following PIL's `Image.convert("RGB")`:
///
/// * greyscale (with or without alpha) → the grey value replicated into R, G and B;
/// * RGBA → alpha dropped (not composited over a background), like PIL;
/// * palette and low-bit-depth PNGs → expanded by the PNG decoder;
/// * 16-bit samples → their high byte (`v >> 8`). This equals PIL for 16-bit RGB/RGBA PNGs
///   (PIL unpacks them with the high byte). For 16-bit *greyscale* PNGs PIL differs: it opens
///   them as mode `I;16` and `convert("RGB")` clips every value above 255 to 255, which turns
///   almost any real 16-bit image white; this crate deliberately takes the high byte there too.
///
/// The EXIF orientation is ignored, as PIL's `Image.open` does. `name` is only used in error
/// messages (use e.g. `Path::new("<memory>")`).
///
/// # Errors
/// [`Error::LimitExceeded`] if the image exceeds `limits`; [`Error::Image`] if the bytes are
/// empty, not PNG/JPEG/BMP/TIFF, corrupt, or the image has zero width or height;
/// [`Error::InvalidParameter`] if `limits` has a zero entry.
pub fn decode_rgb(bytes: &[u8], name: &Path, limits: &ImageLimits) -> Result<RgbImage> {
    let img = decode_dynamic(bytes, name, limits)?;
    let (w, h) = (img.width(), img.height());
    check_alloc(name, u64::from(w) * u64::from(h) * 3, limits)?;
    let rgb = match img {
        DynamicImage::ImageRgb8(im) => im,
        DynamicImage::ImageLuma8(im) => RgbImage::from_fn(w, h, |x, y| {
            let v = im.get_pixel(x, y).0[0];
            image::Rgb([v, v, v])
        }),
        DynamicImage::ImageLumaA8(im) => RgbImage::from_fn(w, h, |x, y| {
            let v = im.get_pixel(x, y).0[0];
            image::Rgb([v, v, v])
        }),
        DynamicImage::ImageRgba8(im) => RgbImage::from_fn(w, h, |x, y| {
            let [r, g, b, _] = im.get_pixel(x, y).0;
            image::Rgb([r, g, b])
        }),
        DynamicImage::ImageLuma16(im) => RgbImage::from_fn(w, h, |x, y| {
            let v = high(im.get_pixel(x, y).0[0]);
            image::Rgb([v, v, v])
        }),
        DynamicImage::ImageLumaA16(im) => RgbImage::from_fn(w, h, |x, y| {
            let v = high(im.get_pixel(x, y).0[0]);
            image::Rgb([v, v, v])
        }),
        DynamicImage::ImageRgb16(im) => RgbImage::from_fn(w, h, |x, y| {
            let [r, g, b] = im.get_pixel(x, y).0;
            image::Rgb([high(r), high(g), high(b)])
        }),
        DynamicImage::ImageRgba16(im) => RgbImage::from_fn(w, h, |x, y| {
            let [r, g, b, _] = im.get_pixel(x, y).0;
            image::Rgb([high(r), high(g), high(b)])
        }),
        other => other.to_rgb8(),
    };
    Ok(rgb)
}

/// Reads and decodes a mask image; see [`decode_mask`].
///
/// # Errors
/// As [`load_rgb`].
pub fn load_mask(path: &Path, limits: &ImageLimits) -> Result<GrayImage> {
    let bytes = read_limited(path, limits)?;
    decode_mask(&bytes, path, limits)
}

/// Decodes a ground-truth mask (any supported format) into a binary 8-bit image: a pixel is 255 if
/// **any** of its colour samples is non-zero (alpha is ignored), else 0.
///
/// MVTec AD masks are 8-bit greyscale with values 0/255, for which this is the identity, so the
/// result fed to [`preprocess_mask`](super::preprocess_mask) reproduces the reference pipeline
/// exactly. Binarising makes masks stored as 0/1 or as coloured labels work too (they would be
/// all-negative under the reference rule). Use [`decode_rgb`] or the `image` crate directly if a
/// different rule is wanted.
///
/// # Errors
/// As [`decode_rgb`].
pub fn decode_mask(bytes: &[u8], name: &Path, limits: &ImageLimits) -> Result<GrayImage> {
    let img = decode_dynamic(bytes, name, limits)?;
    let (w, h) = (img.width(), img.height());
    check_alloc(name, u64::from(w) * u64::from(h), limits)?;
    let bin = |on: bool| image::Luma([if on { 255u8 } else { 0 }]);
    let mask = match img {
        DynamicImage::ImageLuma8(im) => {
            GrayImage::from_fn(w, h, |x, y| bin(im.get_pixel(x, y).0[0] != 0))
        }
        DynamicImage::ImageLumaA8(im) => {
            GrayImage::from_fn(w, h, |x, y| bin(im.get_pixel(x, y).0[0] != 0))
        }
        DynamicImage::ImageLuma16(im) => {
            GrayImage::from_fn(w, h, |x, y| bin(im.get_pixel(x, y).0[0] != 0))
        }
        DynamicImage::ImageLumaA16(im) => {
            GrayImage::from_fn(w, h, |x, y| bin(im.get_pixel(x, y).0[0] != 0))
        }
        DynamicImage::ImageRgb16(im) => GrayImage::from_fn(w, h, |x, y| {
            bin(im.get_pixel(x, y).0.iter().any(|&v| v != 0))
        }),
        DynamicImage::ImageRgba16(im) => GrayImage::from_fn(w, h, |x, y| {
            bin(im.get_pixel(x, y).0[..3].iter().any(|&v| v != 0))
        }),
        other => {
            let rgba = other.to_rgba8();
            GrayImage::from_fn(w, h, |x, y| {
                bin(rgba.get_pixel(x, y).0[..3].iter().any(|&v| v != 0))
            })
        }
    };
    Ok(mask)
}

/// High byte of a 16-bit sample.
#[inline]
fn high(v: u16) -> u8 {
    (v >> 8) as u8
}

/// Reads a regular file (a FIFO, a device or a folder is refused), refusing more than
/// `limits.max_alloc_bytes` bytes even when the length is not known in advance.
fn read_limited(path: &Path, limits: &ImageLimits) -> Result<Vec<u8>> {
    limits.validate()?;
    crate::io_util::read_regular(path, limits.max_alloc_bytes, "ImageLimits::max_alloc_bytes")
}

fn check_alloc(name: &Path, bytes: u64, limits: &ImageLimits) -> Result<()> {
    if bytes > limits.max_alloc_bytes {
        return Err(Error::LimitExceeded {
            reason: format!(
                "{}: needs {bytes} bytes, more than the limit of {} bytes (ImageLimits::max_alloc_bytes)",
                name.display(),
                limits.max_alloc_bytes
            ),
        });
    }
    Ok(())
}

fn image_error(name: &Path, reason: impl Into<String>) -> Error {
    Error::Image {
        path: name.to_path_buf(),
        reason: reason.into(),
    }
}

/// Decodes with limits; maps errors to this crate's variants, each naming the file.
fn decode_dynamic(bytes: &[u8], name: &Path, limits: &ImageLimits) -> Result<DynamicImage> {
    limits.validate()?;
    if bytes.is_empty() {
        return Err(image_error(name, "the file is empty (0 bytes)"));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| image_error(name, e.to_string()))?;
    if reader.format().is_none() {
        return Err(image_error(
            name,
            "unrecognised image format (expected a PNG, JPEG, BMP or TIFF file)",
        ));
    }
    reader.limits(limits.to_image_limits());
    let img = reader.decode().map_err(|e| match e {
        ImageError::Limits(l) => Error::LimitExceeded {
            reason: format!(
                "{}: {l} (limits: {}×{} pixels, {} bytes; see ImageLimits)",
                name.display(),
                limits.max_width,
                limits.max_height,
                limits.max_alloc_bytes
            ),
        },
        other => image_error(name, other.to_string()),
    })?;
    if img.width() == 0 || img.height() == 0 {
        return Err(image_error(
            name,
            format!("the image has zero size ({}×{})", img.width(), img.height()),
        ));
    }
    Ok(img)
}
