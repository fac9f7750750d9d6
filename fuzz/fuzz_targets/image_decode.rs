//! `decode_rgb` / `decode_mask` under small limits, then `preprocess` / `preprocess_mask` with a
//! few small configurations.
#![no_main]

mod common;

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use patchcore::preprocess::{
    crop_box, decode_mask, decode_rgb, preprocess, preprocess_mask, ImageLimits, PreprocessConfig,
    Resize,
};

fn configs() -> [PreprocessConfig; 4] {
    let d = PreprocessConfig::default();
    [
        PreprocessConfig {
            resize: Resize::ShorterSide(40),
            crop: Some((32, 32)),
            ..d
        },
        PreprocessConfig {
            resize: Resize::Exact {
                height: 17,
                width: 23,
            },
            crop: None,
            ..d
        },
        PreprocessConfig {
            resize: Resize::None,
            crop: Some((8, 8)),
            ..d
        },
        PreprocessConfig {
            resize: Resize::ShorterSide(1),
            crop: None,
            ..d
        },
    ]
}

fuzz_target!(|data: &[u8]| {
    let name = Path::new("<fuzz image>");
    let limits = ImageLimits {
        max_width: 1024,
        max_height: 1024,
        max_alloc_bytes: 8 << 20,
        ..ImageLimits::default()
    };
    let rgb = decode_rgb(data, name, &limits);
    common::ok_or_typed(&rgb);
    if let Ok(img) = &rgb {
        assert!(img.width() >= 1 && img.height() >= 1);
        assert!(img.width() <= limits.max_width && img.height() <= limits.max_height);
        for cfg in configs() {
            let r = preprocess(img, &cfg);
            common::ok_or_typed(&r);
            if let Ok(t) = &r {
                let (oh, ow) = cfg
                    .output_size(img.height() as usize, img.width() as usize)
                    .unwrap();
                assert_eq!(t.dim(), (3, oh, ow));
                assert!(t.iter().all(|v| v.is_finite()));
            }
            common::ok_or_typed(&crop_box(img.height() as usize, img.width() as usize, &cfg));
        }
    }
    let mask = decode_mask(data, name, &limits);
    common::ok_or_typed(&mask);
    if let Ok(m) = &mask {
        assert!(m.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
        for cfg in configs() {
            common::ok_or_typed(&preprocess_mask(m, &cfg));
        }
    }
});
