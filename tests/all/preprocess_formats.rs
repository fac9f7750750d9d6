//! BMP and TIFF files decode to the pixels they were written with (the formats are in
//! `IMAGE_EXTENSIONS`, so a folder of them must work like a folder of PNGs).

use std::io::Cursor;
use std::path::Path;

use image::{GrayImage, ImageFormat, Luma, Rgb, RgbImage};
use patchcore::preprocess::{decode_mask, decode_rgb, load_rgb, ImageLimits};

/// A small image whose every pixel differs (independent of the decoder under test).
fn pattern() -> RgbImage {
    RgbImage::from_fn(9, 5, |x, y| {
        Rgb([
            (x * 27 + y) as u8,
            (y * 51) as u8,
            (200 - x * 11 - y * 7) as u8,
        ])
    })
}

fn encode_rgb(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

#[test]
fn bmp_and_tiff_rgb_decode_exactly() {
    let img = pattern();
    for format in [ImageFormat::Bmp, ImageFormat::Tiff] {
        let bytes = encode_rgb(&img, format);
        let got = decode_rgb(&bytes, Path::new("x"), &ImageLimits::default())
            .unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(got.dimensions(), (9, 5), "{format:?}");
        for (x, y, p) in img.enumerate_pixels() {
            assert_eq!(got.get_pixel(x, y), p, "{format:?} pixel ({x}, {y})");
        }
    }
}

#[test]
fn bmp_and_tiff_grey_are_replicated_and_masks_binarised() {
    let grey = GrayImage::from_fn(6, 4, |x, y| {
        Luma([if (x + y) % 3 == 0 {
            0
        } else {
            (x * 40 + y) as u8
        }])
    });
    for format in [ImageFormat::Bmp, ImageFormat::Tiff] {
        let mut out = Cursor::new(Vec::new());
        grey.write_to(&mut out, format).unwrap();
        let bytes = out.into_inner();
        let rgb = decode_rgb(&bytes, Path::new("g"), &ImageLimits::default()).unwrap();
        let mask = decode_mask(&bytes, Path::new("g"), &ImageLimits::default()).unwrap();
        for (x, y, p) in grey.enumerate_pixels() {
            let v = p.0[0];
            assert_eq!(rgb.get_pixel(x, y).0, [v, v, v], "{format:?} ({x}, {y})");
            let m = if v == 0 { 0 } else { 255 };
            assert_eq!(mask.get_pixel(x, y).0, [m], "{format:?} mask ({x}, {y})");
        }
    }
}

#[test]
fn files_with_bmp_and_tif_extensions_are_listed_and_loaded() {
    let dir = std::env::temp_dir().join(format!("patchcore-formats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = pattern();
    std::fs::write(dir.join("a.bmp"), encode_rgb(&img, ImageFormat::Bmp)).unwrap();
    std::fs::write(dir.join("b.TIF"), encode_rgb(&img, ImageFormat::Tiff)).unwrap();
    std::fs::write(dir.join("c.tiff"), encode_rgb(&img, ImageFormat::Tiff)).unwrap();
    let listed = patchcore::dataset::list_images(&dir).unwrap();
    let names: Vec<_> = listed
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["a.bmp", "b.TIF", "c.tiff"]);
    for p in &listed {
        assert_eq!(
            load_rgb(p, &ImageLimits::default()).unwrap(),
            img,
            "{}",
            p.display()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_bmp_and_tiff_are_typed_errors() {
    let img = pattern();
    for format in [ImageFormat::Bmp, ImageFormat::Tiff] {
        let bytes = encode_rgb(&img, format);
        for cut in [10, bytes.len() / 2, bytes.len() - 3] {
            let err = decode_rgb(&bytes[..cut], Path::new("cut.img"), &ImageLimits::default())
                .expect_err("a truncated file must not decode");
            let msg = err.to_string();
            assert!(msg.contains("cut.img"), "{format:?} cut {cut}: {msg}");
        }
    }
}
