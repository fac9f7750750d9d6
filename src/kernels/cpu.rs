//! What this CPU can run, detected once per process: every kernel of the crate with
//! instructions beyond the build target's baseline gets its proof of availability (its
//! zero-sized token, made by the kernel's own `detect`) from [`features`], and nowhere else.
//!
//! The answer cannot change while the process runs, so it is computed on first use and then
//! only read. On other architectures than the one a flag belongs to, the flag is `false`.

use std::sync::OnceLock;

/// CPU features the kernels use (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Features {
    /// x86-64 AVX (256-bit float vectors).
    pub avx: bool,
    /// x86-64 AVX2.
    pub avx2: bool,
    /// x86-64 FMA3.
    pub fma: bool,
    /// x86-64 AVX512F.
    pub avx512f: bool,
    /// x86-64 AVX512BW.
    pub avx512bw: bool,
    /// x86-64 AVX512-VNNI (`vpdpbusd` on zmm).
    pub avx512vnni: bool,
    /// x86-64 AVX512-BF16 (`vdpbf16ps`).
    pub avx512bf16: bool,
    /// x86-64 AVX-VNNI (`vpdpbusd` on ymm, VEX-encoded).
    pub avxvnni: bool,
    /// x86-64 AMX-TILE with AMX-INT8, and the tile state granted by the OS.
    pub amx_int8: bool,
    /// x86-64 AMX-TILE with AMX-BF16, and the tile state granted by the OS.
    pub amx_bf16: bool,
    /// aarch64 NEON (Advanced SIMD).
    pub neon: bool,
    /// aarch64 FEAT_DotProd (`sdot`, `udot`).
    pub dotprod: bool,
    /// aarch64 FEAT_I8MM (`usdot`, `smmla`).
    pub i8mm: bool,
    /// aarch64 FEAT_BF16 (`bfmlalb`, `bfmlalt`).
    pub bf16: bool,
}

/// The features of this CPU (detected on the first call, then remembered).
pub(crate) fn features() -> &'static Features {
    static FEATURES: OnceLock<Features> = OnceLock::new();
    FEATURES.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Features {
    use std::arch::is_x86_feature_detected as has;
    let amx = super::amx::usable();
    Features {
        avx: has!("avx"),
        avx2: has!("avx2"),
        fma: has!("fma"),
        avx512f: has!("avx512f"),
        avx512bw: has!("avx512bw"),
        avx512vnni: has!("avx512vnni"),
        avx512bf16: has!("avx512bf16"),
        avxvnni: has!("avxvnni"),
        amx_int8: amx.int8,
        amx_bf16: amx.bf16,
        ..Features::default()
    }
}

#[cfg(target_arch = "aarch64")]
fn detect() -> Features {
    use std::arch::is_aarch64_feature_detected as has;
    Features {
        neon: has!("neon"),
        dotprod: has!("dotprod"),
        i8mm: has!("i8mm"),
        bf16: has!("bf16"),
        ..Features::default()
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect() -> Features {
    Features::default()
}
