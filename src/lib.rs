//! PatchCore industrial anomaly detection on the CPU, in pure Rust.
#![warn(missing_docs)]
// Library code reports bad input as `Error`, never by panicking on `unwrap`/`expect`
// (tests may use them). Every `unsafe` block carries a `// SAFETY:` proof.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod error;
mod io_util;

pub mod kernels;

pub mod anomaly_map;
pub mod backbone;
pub mod coreset;
pub mod dataset;
pub mod embedding;
pub mod knn;
pub mod metrics;
pub mod model;
pub mod preprocess;
pub mod scoring;
pub mod segmentation;
pub mod synthetic;
pub mod tensor_io;
pub mod visualize;

pub use error::{Error, Result};
