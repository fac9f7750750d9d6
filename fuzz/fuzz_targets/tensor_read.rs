//! `tensor_io::read_f32` on arbitrary bytes, for a fixed name and for every tensor the header
//! declares.
#![no_main]

mod common;

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use patchcore::tensor_io::read_f32;

fuzz_target!(|data: &[u8]| {
    let name = Path::new("<fuzz tensors>");
    common::ok_or_typed(&read_f32(data, name, "x"));
    if let Ok((_, meta)) = safetensors::SafeTensors::read_metadata(data) {
        for t in meta.tensors().keys().take(8) {
            let r = read_f32(data, name, t);
            common::ok_or_typed(&r);
            if let Ok(a) = r {
                assert!(a.iter().all(|v| v.is_finite()));
            }
        }
    }
});
