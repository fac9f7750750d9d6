//! Decode + preprocess of a 900×900 PNG (MVTec-sized) with the default (ORIG) configuration.
use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use image::RgbImage;
use patchcore::preprocess::{
    decode_rgb, preprocess, resize_antialiased, ImageLimits, PreprocessConfig,
};

fn bench(c: &mut Criterion) {
    // Deterministic 900×900 test pattern encoded as PNG in memory.
    let img = RgbImage::from_fn(900, 900, |x, y| {
        let v = (x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503)) >> 7;
        image::Rgb([(x / 4) as u8, (y / 4) as u8, v as u8])
    });
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img.clone())
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let cfg = PreprocessConfig::default();
    let lim = ImageLimits::default();
    c.bench_function("decode_preprocess_900_png", |b| {
        b.iter(|| {
            let im = decode_rgb(black_box(&png), Path::new("<bench>"), &lim).unwrap();
            preprocess(&im, &cfg).unwrap()
        })
    });
    c.bench_function("preprocess_900", |b| {
        b.iter(|| preprocess(black_box(&img), &cfg).unwrap())
    });
    c.bench_function("resize_900_to_256", |b| {
        b.iter(|| resize_antialiased(black_box(&img), 256, 256))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
