//! `PatchCore::load_bytes` on arbitrary bytes, with the backbone given in memory and with the
//! backbone embedded in the file. A model that loads is run once on a small input.
#![no_main]

mod common;

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ndarray::Array4;
use patchcore::backbone::{Backbone, Layer};
use patchcore::model::{BackboneSource, PatchCore, PredictOptions};

/// The backbone the model seeds were fitted with: random weights (seed 0) up to layer3 of
/// `tiny_basic`, loaded from their safetensors bytes so the fingerprint matches.
fn backbone() -> &'static Backbone {
    static B: OnceLock<Backbone> = OnceLock::new();
    B.get_or_init(|| {
        let spec = common::tiny_basic();
        let bytes = Backbone::random_weights_safetensors(&spec, Layer::Layer3, 0).unwrap();
        Backbone::from_safetensors_bytes(
            &bytes,
            Path::new("<fuzz weights>"),
            &spec,
            &[Layer::Layer2, Layer::Layer3],
        )
        .unwrap()
    })
}

fn exercise(model: &PatchCore) {
    // 32×32 is the smallest input the backbone accepts: cheap whatever the configuration.
    let input = Array4::<f32>::from_shape_fn((1, 3, 32, 32), |(_, c, y, x)| {
        ((c * 7 + y * 3 + x) % 11) as f32 / 5.0 - 1.0
    });
    let r = model.predict_tensor(input.view(), PredictOptions { anomaly_map: true });
    common::ok_or_typed(&r);
    if let Ok((preds, _)) = r {
        for p in preds {
            assert!(!p.score.is_nan());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let name = Path::new("<fuzz model>");
    let loaded = PatchCore::load_bytes(
        data,
        name,
        BackboneSource::Loaded(Box::new(backbone().clone())),
    );
    common::ok_or_typed(&loaded);
    if let Ok(m) = &loaded {
        exercise(m);
    }
    let embedded = PatchCore::load_bytes(data, name, BackboneSource::Embedded);
    common::ok_or_typed(&embedded);
    if let Ok(m) = &embedded {
        exercise(m);
    }
});
