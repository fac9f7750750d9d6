//! `Backbone::from_safetensors_bytes` on arbitrary bytes for a very small basic and bottleneck
//! architecture and several tap lists; a backbone that loads runs once on a 32×32 input.
#![no_main]

mod common;

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use ndarray::Array4;
use patchcore::backbone::{Backbone, Layer};

fuzz_target!(|data: &[u8]| {
    let name = Path::new("<fuzz weights>");
    let taps: [&[Layer]; 3] = [
        &[Layer::Layer1],
        &[Layer::Layer2, Layer::Layer3],
        &[Layer::Layer4, Layer::Layer2],
    ];
    for spec in [common::micro_basic(), common::micro_bottleneck()] {
        for t in taps {
            let r = Backbone::from_safetensors_bytes(data, name, &spec, t);
            common::ok_or_typed(&r);
            if let Ok(b) = r {
                assert_eq!(b.taps(), t);
                let input = Array4::<f32>::from_elem((1, 3, 32, 32), 0.5);
                let out = b.forward(input.view());
                common::ok_or_typed(&out);
            }
        }
    }
});
