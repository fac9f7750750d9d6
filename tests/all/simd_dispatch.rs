//! Guard for the CI runs that exercise the GEMM kernels on a particular (emulated) CPU.
//!
//! The `gemm` and `matrixmultiply` crates pick their micro-kernels at run time from the CPU
//! features the program detects, so which code path a test run exercises depends on the
//! machine, not on the build. `.ci/run` therefore runs the kernel tests under qemu-user with
//! a chosen CPU model and sets `PATCHCORE_EXPECT_SIMD` to what that CPU must (not) offer:
//!
//! - `none`: x86-64 without AVX, AVX2, FMA and AVX-512 (`qemu-x86_64 -cpu qemu64`), so both
//!   crates fall back to their portable kernels;
//! - `neon`: AArch64 with NEON (`qemu-aarch64`), so both crates use their NEON kernels.
//!
//! This test fails when the detected features contradict that expectation, e.g. when the
//! emulator is not actually in use and the "fallback" run would silently test the AVX
//! kernels instead. Without the variable (a plain `cargo test`) it checks nothing beyond
//! reporting the detected features.

use patchcore::kernels::gemm::{matmul_with, Backend, Parallelism};

/// The SIMD features relevant to the GEMM dispatch that the running CPU reports.
fn detected() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx") {
            found.push("avx");
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            found.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            found.push("fma");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            found.push("avx512f");
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            found.push("neon");
        }
    }
    found
}

#[test]
fn detected_features_match_the_ci_expectation() {
    let found = detected();
    eprintln!(
        "target_arch = {}, detected SIMD features: {found:?}",
        std::env::consts::ARCH
    );
    match std::env::var("PATCHCORE_EXPECT_SIMD").as_deref() {
        Err(_) | Ok("") => {}
        Ok("none") => {
            assert!(
                found.is_empty(),
                "PATCHCORE_EXPECT_SIMD=none but the CPU reports {found:?}: the portable-kernel \
                 run is not running on a CPU without SIMD (is the qemu runner set?)"
            );
            assert_eq!(
                patchcore::kernels::int8::Int8Isa::detect(),
                patchcore::kernels::int8::Int8Isa::Portable,
                "the int8 kernels must fall back to the portable one here"
            );
            assert_eq!(
                patchcore::kernels::bf16::Bf16Isa::detect(),
                patchcore::kernels::bf16::Bf16Isa::Portable,
                "the bf16 kernels must fall back to the portable one here"
            );
        }
        Ok("neon") => {
            assert_eq!(
                std::env::consts::ARCH,
                "aarch64",
                "PATCHCORE_EXPECT_SIMD=neon on a non-AArch64 build"
            );
            assert!(
                found.contains(&"neon"),
                "PATCHCORE_EXPECT_SIMD=neon but NEON is not detected"
            );
            // qemu-aarch64's default CPU ("max") has the dot product and i8mm, so both int8
            // NEON kernels ran in the tests of this run.
            let int8 = patchcore::kernels::int8::Int8Isa::all_available();
            assert!(
                int8.contains(&patchcore::kernels::int8::Int8Isa::NeonDotprod)
                    && int8.contains(&patchcore::kernels::int8::Int8Isa::NeonI8mm),
                "the int8 NEON kernels are not available here: {int8:?}"
            );
        }
        Ok(other) => panic!("unknown PATCHCORE_EXPECT_SIMD value {other:?} (use none or neon)"),
    }
}

/// A product large enough to reach the blocked micro-kernels of both backends (not only
/// their small-size paths), checked against exact integer arithmetic: the entries are small
/// integers, so every partial sum is exactly representable in f32 and any summation order
/// gives the exact result.
#[test]
fn both_backends_exact_on_integer_matrices() {
    let (m, n, k) = (67, 45, 129);
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 13) as f32 - 6.0).collect();
    let mut want = vec![0i64; m * n];
    for i in 0..m {
        for j in 0..n {
            want[i * n + j] = (0..k)
                .map(|p| a[i * k + p] as i64 * b[p * n + j] as i64)
                .sum();
        }
    }
    for backend in [Backend::Default, Backend::MatrixMultiply] {
        for par in [Parallelism::Sequential, Parallelism::Rayon] {
            let mut c = vec![f32::NAN; m * n];
            matmul_with(m, n, k, &a, &b, &mut c, false, par, backend);
            for (idx, (&got, &w)) in c.iter().zip(&want).enumerate() {
                assert_eq!(
                    got,
                    w as f32,
                    "{backend:?}/{par:?}: c[{}][{}] = {got}, exact {w}",
                    idx / n,
                    idx % n
                );
            }
        }
    }
}
