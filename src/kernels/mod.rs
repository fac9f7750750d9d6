//! Numerical kernels: matrix products, convolution, pooling.
//!
//! These are public for benchmarks and advanced users; the rest of the crate goes through them
//! for every matrix product.

mod amx;
pub mod bf16;
pub mod conv;
pub(crate) mod cpu;
pub mod gemm;
pub mod int8;
pub mod pool;
mod wide;
