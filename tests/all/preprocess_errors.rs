//! Error handling of decoding and preprocessing: each bad input gives the documented `Error`
//! variant, and file errors name the file.

use std::path::{Path, PathBuf};

use image::RgbImage;
use patchcore::preprocess::{
    decode_rgb, load_mask, load_rgb, preprocess, preprocess_batch, preprocess_mask,
    preprocess_path, ImageLimits, PreprocessConfig, Resize,
};
use patchcore::Error;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/preprocess")
        .join(name)
}

/// Writes `bytes` to a fresh file under the cargo test temp dir.
fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("preprocess_errors");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn chunk(out: &mut Vec<u8>, ty: &[u8], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut td = ty.to_vec();
    td.extend_from_slice(data);
    out.extend_from_slice(&td);
    out.extend_from_slice(&crc32(&td).to_be_bytes());
}

/// A PNG whose header declares `w × h` 8-bit RGB pixels, with a tiny (invalid-length) IDAT.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut v, b"IHDR", &ihdr);
    // zlib stream of a few zero bytes
    chunk(
        &mut v,
        b"IDAT",
        &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01],
    );
    chunk(&mut v, b"IEND", &[]);
    v
}

fn assert_names(e: &Error, path: &Path) {
    let msg = e.to_string();
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(msg.contains(name), "message does not name {name}: {msg}");
}

#[test]
fn text_file_named_png_is_an_image_error() {
    let p = temp_file("not_an_image.png", b"hello, this is text\n");
    let e = load_rgb(&p, &ImageLimits::default()).unwrap_err();
    assert!(matches!(e, Error::Image { .. }), "{e:?}");
    assert_names(&e, &p);
    let e = load_mask(&p, &ImageLimits::default()).unwrap_err();
    assert!(matches!(e, Error::Image { .. }), "{e:?}");
}

#[test]
fn truncated_png_is_an_image_error() {
    let bytes = std::fs::read(fixture("photo.png")).unwrap();
    let p = temp_file("truncated.png", &bytes[..bytes.len() / 2]);
    let e = load_rgb(&p, &ImageLimits::default()).unwrap_err();
    assert!(matches!(e, Error::Image { .. }), "{e:?}");
    assert_names(&e, &p);
    let e = preprocess_path(&p, &PreprocessConfig::default(), &ImageLimits::default()).unwrap_err();
    assert!(matches!(e, Error::Image { .. }), "{e:?}");
}

#[test]
fn empty_file_is_an_image_error() {
    let p = temp_file("empty.png", b"");
    let e = load_rgb(&p, &ImageLimits::default()).unwrap_err();
    assert!(matches!(e, Error::Image { .. }), "{e:?}");
    assert_names(&e, &p);
    assert!(e.to_string().contains("empty"), "{e}");
}

#[test]
fn missing_file_is_an_io_error() {
    let p = fixture("does_not_exist.png");
    let e = load_rgb(&p, &ImageLimits::default()).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert_names(&e, &p);
}

#[test]
fn tiny_limits_are_enforced() {
    let p = fixture("photo.png"); // 300×240
    let lim = ImageLimits {
        max_width: 100,
        ..Default::default()
    };
    let e = load_rgb(&p, &lim).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded { .. }), "{e:?}");
    assert_names(&e, &p);
    let lim = ImageLimits {
        max_height: 239,
        ..Default::default()
    };
    assert!(matches!(
        load_rgb(&p, &lim).unwrap_err(),
        Error::LimitExceeded { .. }
    ));
    // Exactly at the limits is fine.
    let lim = ImageLimits {
        max_width: 300,
        max_height: 240,
        ..Default::default()
    };
    assert_eq!(load_rgb(&p, &lim).unwrap().dimensions(), (300, 240));
    // File larger than the allocation limit: refused before reading.
    let lim = ImageLimits {
        max_alloc_bytes: 1000,
        ..Default::default()
    };
    let e = load_rgb(&p, &lim).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded { .. }), "{e:?}");
    assert_names(&e, &p);
    // In-memory: the decoded buffer (300·240·3 bytes) exceeds the allocation limit.
    let bytes = std::fs::read(&p).unwrap();
    let lim = ImageLimits {
        max_alloc_bytes: 100_000,
        ..Default::default()
    };
    let e = decode_rgb(&bytes, Path::new("in-memory-photo.png"), &lim).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded { .. }), "{e:?}");
    assert!(e.to_string().contains("in-memory-photo.png"), "{e}");
    // Zero limits are parameter errors.
    let lim = ImageLimits {
        max_width: 0,
        ..Default::default()
    };
    assert!(matches!(
        load_rgb(&p, &lim).unwrap_err(),
        Error::InvalidParameter {
            name: "max_width",
            ..
        }
    ));
}

#[test]
fn decompression_bomb_is_refused_with_default_limits() {
    // Declares 100000 × 100000 RGB (30 GB) in a few bytes.
    let p = temp_file("bomb.png", &png_header_only(100_000, 100_000));
    let e = load_rgb(&p, &ImageLimits::default()).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded { .. }), "{e:?}");
    assert_names(&e, &p);
    // Within the width/height limits but over the allocation limit (16000² · 3 B ≈ 768 MB).
    let p = temp_file("bomb2.png", &png_header_only(16_000, 16_000));
    let e = load_rgb(&p, &ImageLimits::default()).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded { .. }), "{e:?}");
}

#[test]
fn zero_sized_png_is_an_image_error() {
    let p = temp_file("zero.png", &png_header_only(0, 10));
    let e = load_rgb(&p, &ImageLimits::default()).unwrap_err();
    assert!(matches!(e, Error::Image { .. }), "{e:?}");
    assert_names(&e, &p);
}

#[test]
fn zero_sized_image_is_invalid_input() {
    let cfg = PreprocessConfig::default();
    let e = preprocess(&RgbImage::new(0, 0), &cfg).unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");
    let e = preprocess_mask(&image::GrayImage::new(5, 0), &cfg).unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");
}

#[test]
fn invalid_configs_are_rejected() {
    let img = RgbImage::new(8, 8);
    let bad = [
        (
            PreprocessConfig {
                resize: Resize::ShorterSide(0),
                ..Default::default()
            },
            "resize",
        ),
        (
            PreprocessConfig {
                resize: Resize::Exact {
                    height: 0,
                    width: 3,
                },
                ..Default::default()
            },
            "resize",
        ),
        (
            PreprocessConfig {
                crop: Some((0, 4)),
                ..Default::default()
            },
            "crop",
        ),
        (
            PreprocessConfig {
                std: [0.2, 0.0, 0.2],
                ..Default::default()
            },
            "std",
        ),
        (
            PreprocessConfig {
                std: [0.2, -1.0, 0.2],
                ..Default::default()
            },
            "std",
        ),
        (
            PreprocessConfig {
                mean: [f32::NAN, 0.0, 0.0],
                ..Default::default()
            },
            "mean",
        ),
    ];
    for (cfg, field) in bad {
        let e = cfg.validate().unwrap_err();
        assert!(
            matches!(e, Error::InvalidParameter { name, .. } if name == field),
            "{cfg:?}: {e:?}"
        );
        assert!(matches!(
            preprocess(&img, &cfg).unwrap_err(),
            Error::InvalidParameter { .. }
        ));
    }
    assert!(PreprocessConfig::default().validate().is_ok());
}

#[test]
fn crop_larger_than_resized_image_is_invalid_input() {
    let cfg = PreprocessConfig {
        resize: Resize::None,
        crop: Some((224, 224)),
        ..Default::default()
    };
    let e = preprocess(&RgbImage::new(300, 200), &cfg).unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");
    assert!(e.to_string().contains("224×224"), "{e}");
    let p = fixture("odd.png"); // 53×71
    let e = preprocess_path(&p, &cfg, &ImageLimits::default()).unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");
    assert_names(&e, &p);
}

#[test]
fn oversized_resize_is_refused() {
    // A 1×16384 strip with ShorterSide(256) would become 256 × 4194304.
    let cfg = PreprocessConfig::default();
    let e = cfg.resized_size(16384, 1).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded { .. }), "{e:?}");
    let cfg = PreprocessConfig {
        resize: Resize::Exact {
            height: 100_000,
            width: 100_000,
        },
        crop: None,
        ..Default::default()
    };
    assert!(matches!(
        cfg.validate().unwrap_err(),
        Error::InvalidParameter { .. }
    ));
}

#[test]
fn batch_errors() {
    let cfg = PreprocessConfig {
        resize: Resize::ShorterSide(16),
        crop: None,
        ..Default::default()
    };
    let e = preprocess_batch(&[], &cfg).unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");
    // 20×20 → 16×16 but 20×40 → 16×32: different sizes without a crop.
    let e = preprocess_batch(&[RgbImage::new(20, 20), RgbImage::new(40, 20)], &cfg).unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");
    assert!(e.to_string().contains("image 1"), "{e}");
    // With a crop they batch fine.
    let cfg = PreprocessConfig {
        crop: Some((16, 16)),
        ..cfg
    };
    let b = preprocess_batch(&[RgbImage::new(20, 20), RgbImage::new(40, 20)], &cfg).unwrap();
    assert_eq!(b.dim(), (2, 3, 16, 16));
}

#[test]
fn load_mask_binarises_nonzero() {
    // A 0/1 mask (as some datasets store them) and an RGB label mask both become 0/255.
    let mut bytes = Vec::new();
    let m = image::GrayImage::from_fn(4, 2, |x, _| image::Luma([(x % 2) as u8]));
    image::DynamicImage::ImageLuma8(m)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    let p = temp_file("mask01.png", &bytes);
    let g = load_mask(&p, &ImageLimits::default()).unwrap();
    assert_eq!(g.as_raw(), &[0, 255, 0, 255, 0, 255, 0, 255]);

    let mut bytes = Vec::new();
    let rgb = RgbImage::from_fn(3, 1, |x, _| image::Rgb([0, if x == 1 { 9 } else { 0 }, 0]));
    image::DynamicImage::ImageRgb8(rgb)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    let g =
        patchcore::preprocess::decode_mask(&bytes, Path::new("<memory>"), &ImageLimits::default())
            .unwrap();
    assert_eq!(g.as_raw(), &[0, 255, 0]);
}
