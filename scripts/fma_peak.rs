//! Measures this machine's fp32 FMA peak per core (AVX-512 and AVX2 FMA loops), to put GEMM
//! and convolution GFLOP/s in context, and the AVX512-BF16 dot-product rate (`vdpbf16ps`, two
//! bf16 products per f32 lane) that the kNN screen runs on. Not part of the crate build:
//!
//! ```sh
//! rustc -O scripts/fma_peak.rs -o /tmp/fma_peak && /tmp/fma_peak          # one core
//! (/tmp/fma_peak & /tmp/fma_peak & wait)                                  # both cores
//! ```
//!
//! 12 independent accumulators hide the FMA latency. On the development machine (AMD EPYC,
//! family 25 model 17 = Zen 4, 2 cores) both loops give about 116 GFLOP/s per core: AVX-512
//! runs on 256-bit units there, so the fp32 peak is about 232 GFLOP/s for both cores.
//! `vdpbf16ps` gives about 232 GFLOP/s per core (bf16 products and sums), twice the fp32 rate.
#![allow(clippy::missing_safety_doc)]

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX-512F (checked by the caller).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(iters: u64) -> f32 {
        let mut acc = [_mm512_set1_ps(0.0); 12];
        let a = _mm512_set1_ps(1.000_000_1);
        let b = _mm512_set1_ps(0.999_999_9);
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
    }

    /// # Safety
    /// The CPU must support AVX-512F and AVX512-BF16 (checked by the caller).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dpbf16(iters: u64) -> f32 {
        let mut acc = [_mm512_set1_ps(0.0); 12];
        // 1.0 and 0.5 in bf16, two per 32-bit lane.
        let a: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3f80));
        let b: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3f00));
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_dpbf16_ps(*x, a, b);
            }
        }
        acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA (checked by the caller).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(iters: u64) -> f32 {
        let mut acc = [_mm256_set1_ps(0.0); 12];
        let a = _mm256_set1_ps(1.000_000_1);
        let b = _mm256_set1_ps(0.999_999_9);
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut lanes = [0f32; 8];
        let mut s = 0.0;
        for x in acc {
            _mm256_storeu_ps(lanes.as_mut_ptr(), x);
            s += lanes.iter().sum::<f32>();
        }
        s
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        let iters = 200_000_000u64;
        if is_x86_feature_detected!("avx512f") {
            let t = std::time::Instant::now();
            // SAFETY: AVX-512F support was just detected.
            let s = unsafe { x86::fma512(iters) };
            let gf = iters as f64 * 12.0 * 16.0 * 2.0 / t.elapsed().as_secs_f64() / 1e9;
            println!("AVX-512 FMA: {gf:.1} GFLOP/s on one core (checksum {s})");
        }
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16") {
            let t = std::time::Instant::now();
            // SAFETY: AVX-512F and AVX512-BF16 support were just detected.
            let s = unsafe { x86::dpbf16(iters) };
            // 16 lanes × 2 products, each a multiply and an add.
            let gf = iters as f64 * 12.0 * 32.0 * 2.0 / t.elapsed().as_secs_f64() / 1e9;
            println!("AVX512-BF16: {gf:.1} GFLOP/s on one core (bf16 dot products; checksum {s})");
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            let t = std::time::Instant::now();
            // SAFETY: AVX2 and FMA support were just detected.
            let s = unsafe { x86::fma256(iters) };
            let gf = iters as f64 * 12.0 * 8.0 * 2.0 / t.elapsed().as_secs_f64() / 1e9;
            println!("AVX2 FMA:    {gf:.1} GFLOP/s on one core (checksum {s})");
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("only x86-64 loops are written");
}
