//! Plain loops compiled for AVX-512 where the CPU has it: the packing and element-wise loops
//! around the matrix products are written once, as portable Rust, and each is also compiled
//! with AVX512F + AVX512BW for the CPUs that run the AVX-512 and AMX kernels. The baseline
//! build (SSE2 on x86-64) otherwise vectorises them to 128 bits only.
//!
//! A loop is an `#[inline(always)]` function, called either directly (the baseline copy) or
//! through a small `#[target_feature(enable = "avx512f,avx512bw")]` wrapper next to it (the
//! AVX-512 copy), which the code may call only with the [`Wide::Avx512`] token in hand. (A
//! generic trampoline taking a closure does not work: the closure is compiled on its own,
//! without the features, when the compiler declines to inline it.) The baseline copy is the
//! one every other CPU, and every test of the portable kernels, runs.

/// Which copy of a loop runs: a value exists for AVX-512 only when it was detected.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wide {
    /// The baseline instructions of the build target.
    Baseline,
    /// AVX512F and AVX512BW (detected).
    #[cfg(target_arch = "x86_64")]
    Avx512(Avx512Token),
}

/// Proof that the CPU runs AVX512F and AVX512BW.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx512Token(());

impl Wide {
    /// AVX-512 when `want` and the CPU has it, else the baseline.
    pub(crate) fn detect(want: bool) -> Wide {
        #[cfg(target_arch = "x86_64")]
        if want && super::cpu::features().avx512f && super::cpu::features().avx512bw {
            return Wide::Avx512(Avx512Token(()));
        }
        let _ = want;
        Wide::Baseline
    }

    /// Whether this is the AVX-512 copy.
    pub(crate) fn is_avx512(self) -> bool {
        !matches!(self, Wide::Baseline)
    }
}
