//! Numerical kernels: matrix products, convolution, pooling, the coreset's distances and the
//! kNN screen's products.
//!
//! The public ones are public for benchmarks and advanced users; the rest of the crate goes
//! through them for every matrix product. Every kernel with instructions beyond the build
//! target's baseline has its portable version beside it (tested against it, and what other
//! CPUs run), one file per instruction set, and a token, made from what `cpu.rs` detected,
//! that proves the CPU runs it.

pub(crate) mod aligned;
pub(crate) mod amx;
pub mod bf16;
pub mod conv;
pub(crate) mod cpu;
pub(crate) mod distance;
pub mod gemm;
pub mod int8;
pub(crate) mod par;
pub mod pool;
pub(crate) mod screen;
pub(crate) mod wide;
