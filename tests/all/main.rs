//! The integration tests: one module per file, `tests/all/<name>.rs`, all linked into one test
//! binary (one link instead of fifty was most of the test build's time). A test's path is
//! `<name>::<test>`. Select modules with libtest's filters, which match substrings of the path
//! and are OR'd: `cargo test --features cli --test all -- kernels_gemm:: knn_screening::`, and
//! leave one out with `--skip model_api::`. Write `name::`, which only matches the module
//! `name` (`kernels_winograd` alone would select `kernels_winograd_s2` too).
//!
//! The modules' tests run concurrently in one process, so they must not share state by
//! accident: each writes to files and folders of its own (`cli_common::fixture_for` gives each
//! CLI module its own fixture folder), and none sets environment variables, the current
//! directory or rayon's global pool. `tests/model_fit_budget.rs` stays a test crate of its own:
//! it compares fit plans that include the process's resident size, which the other modules'
//! tests would move.
//!
//! The CLI modules (`cli_*`, `model_cli_f16`) run the `patchcore` binary, so they are built with
//! `--features cli` only, as the binary is.
//!
//! proptest keeps the failures it found in `tests/all/<name>.rs` in
//! `tests/proptest-regressions/<name>.txt` (beside the folder of the crate root, as for `src/`).

mod anomaly_map_reference;
mod backbone_bf16;
mod backbone_int8;
mod backbone_parity;
mod backbone_scratch_reuse;
mod backbone_weights_errors;
mod bad_inputs;
#[cfg(feature = "cli")]
mod cli_common;
#[cfg(feature = "cli")]
mod cli_errors;
#[cfg(feature = "cli")]
mod cli_flow;
#[cfg(feature = "cli")]
mod cli_newuser;
#[cfg(feature = "cli")]
mod cli_reliability;
#[cfg(feature = "cli")]
mod cli_update;
mod coreset_props;
mod coreset_vectors;
mod embedding_fast_path;
mod embedding_parity;
mod embedding_vectors;
mod evaluate_synthetic;
mod fuzz_regressions;
mod kernels_bf16;
mod kernels_conv;
mod kernels_gemm;
mod kernels_int8;
mod kernels_pool;
mod kernels_winograd;
mod kernels_winograd_s2;
mod knn_blocks_f16;
mod knn_bruteforce;
mod knn_screening;
mod metrics_props;
mod metrics_vectors;
mod model_api;
#[cfg(feature = "cli")]
mod model_cli_f16;
mod model_common;
mod model_determinism;
mod model_end_to_end;
mod model_f16_bank;
mod model_file_errors;
mod model_file_fuzz;
mod model_roundtrip;
mod model_update;
mod preprocess_errors;
mod preprocess_fixtures;
mod preprocess_formats;
mod preprocess_resize_prop;
mod reference_resnet;
mod reliability_files;
mod scoring_image;
mod segmentation_cases;
mod segmentation_props;
mod simd_dispatch;
