//! Shared set-up of the fuzz targets: the tiny architectures the seed corpora are made with
//! (keep in sync with `examples/make_fuzz_corpus.rs`) and the "typed error only" check.

#![allow(dead_code)]

use patchcore::backbone::{BlockKind, ResNetSpec};
use patchcore::Error;

/// The basic-block net of the model seeds (`make_fuzz_corpus`).
pub fn tiny_basic() -> ResNetSpec {
    ResNetSpec {
        name: "fuzz_basic".into(),
        block: BlockKind::Basic,
        blocks: [1, 1, 1, 1],
        stem_channels: 8,
        planes: [8, 16, 32, 64],
        width_per_group: 64,
    }
}

/// A very small basic-block net (a few KB of weights) for the weights loader.
pub fn micro_basic() -> ResNetSpec {
    ResNetSpec {
        name: "fuzz_micro_basic".into(),
        block: BlockKind::Basic,
        blocks: [1, 1, 1, 1],
        stem_channels: 4,
        planes: [4, 4, 8, 8],
        width_per_group: 64,
    }
}

/// A very small bottleneck net for the weights loader.
pub fn micro_bottleneck() -> ResNetSpec {
    ResNetSpec {
        name: "fuzz_micro_bottleneck".into(),
        block: BlockKind::Bottleneck,
        blocks: [1, 1, 1, 1],
        stem_channels: 4,
        planes: [2, 2, 4, 4],
        width_per_group: 128,
    }
}

/// Every error the library returns must be one of its typed variants with a non-empty message
/// (formatting it must not panic either).
pub fn check_err(e: &Error) {
    let msg = e.to_string();
    assert!(!msg.is_empty());
    let _ = format!("{e:?}");
}

/// `Ok` or a typed error; never a panic.
pub fn ok_or_typed<T>(r: &Result<T, Error>) {
    if let Err(e) = r {
        check_err(e);
    }
}
