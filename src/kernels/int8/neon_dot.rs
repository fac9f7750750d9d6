//! The aarch64 int8 micro-kernels: `usdot` (FEAT_I8MM: unsigned activations times signed
//! weights, exactly the product needed) and, on CPUs with only the dot-product extension,
//! `sdot` on activations shifted to signed.
//!
//! Both take 4 columns × 4 `k` of activations per register (one 16-byte load of a packed
//! panel) and one weight word per lane (`.4b[lane]`), and run a block of 8 rows × 12 columns
//! (24 accumulators) four times per 48-column panel.
//!
//! The `sdot` kernel computes `Σ w·(x − 128)` (the activation bytes XOR 0x80 are `x − 128` as
//! signed bytes) and adds `128·Σ w` per row afterwards: the same integer, exactly. No partial
//! sum overflows: each product is at most 128·128 in magnitude and the depth is at most
//! [`super::MAX_DEPTH`], so every partial sum and the correction stay below 1.1·10⁹. The
//! dot-product intrinsics are not stable in Rust, hence `asm!`.

use std::arch::aarch64::{int32x4_t, vaddq_s32, vdupq_n_s32, vdupq_n_u8, vst1q_s32};
use std::arch::asm;

use super::{MR, NR};

/// Which instruction a [`NeonDot`] kernel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dot {
    /// `usdot` (FEAT_I8MM).
    Usdot,
    /// `sdot` (FEAT_DotProd) with the activations shifted by 128.
    Sdot,
}

/// Proof that the CPU runs the chosen dot-product instruction: a value exists only if
/// [`NeonDot::detect_i8mm`] or [`NeonDot::detect_dotprod`] found it.
#[derive(Debug, Clone, Copy)]
pub(super) struct NeonDot(Dot);

impl NeonDot {
    /// The `usdot` kernel, if the CPU has FEAT_I8MM.
    pub(super) fn detect_i8mm() -> Option<NeonDot> {
        let cpu = crate::kernels::cpu::features();
        (cpu.neon && cpu.i8mm).then_some(NeonDot(Dot::Usdot))
    }

    /// The `sdot` kernel, if the CPU has FEAT_DotProd.
    pub(super) fn detect_dotprod() -> Option<NeonDot> {
        let cpu = crate::kernels::cpu::features();
        (cpu.neon && cpu.dotprod).then_some(NeonDot(Dot::Sdot))
    }

    /// As [`super::portable::tile`], same exact result; `row_sums` holds `Σ_k a[r][k]` of the
    /// panel's [`MR`] rows (used by the `sdot` kernel).
    pub(super) fn tile(
        self,
        a: &[i32],
        row_sums: &[i32],
        b: &[u32],
        k4: usize,
        tile: &mut [[i32; NR]; MR],
    ) {
        assert!(
            k4 >= 1 && a.len() >= k4 * MR && b.len() >= k4 * NR && row_sums.len() >= MR,
            "int8 tile: short panels"
        );
        const _: () = assert!(NR == 48 && MR == 8);
        for c0 in [0, 12, 24, 36] {
            // SAFETY: NEON is present (detected with the dot product).
            let mut c = [unsafe { vdupq_n_s32(0) }; 24];
            // SAFETY: `self` exists only when `detect_*` found the instruction it uses;
            // `k4 ≥ 1`; each iteration reads 32 bytes of `a` (k4·MR words in all) and 48 bytes
            // of `b` at word `g·NR + c0` with `c0 + 12 ≤ NR` (k4·NR words in all: asserted
            // above).
            unsafe {
                match self.0 {
                    Dot::Usdot => run_usdot(a.as_ptr(), b.as_ptr().add(c0), k4, &mut c),
                    Dot::Sdot => run_sdot(a.as_ptr(), b.as_ptr().add(c0), k4, &mut c),
                }
            }
            for (r, row) in tile.iter_mut().enumerate() {
                // `sdot` summed w·(x − 128): add back 128·Σ w of the row.
                let fix = match self.0 {
                    Dot::Usdot => 0,
                    Dot::Sdot => 128 * row_sums[r],
                };
                for j in 0..3 {
                    // SAFETY: columns c0 + 4j .. c0 + 4j + 4 ≤ NR of the row; NEON is
                    // present (detected with the dot product).
                    unsafe {
                        let v = vaddq_s32(c[3 * r + j], vdupq_n_s32(fix));
                        vst1q_s32(row.as_mut_ptr().add(c0 + 4 * j), v);
                    }
                }
            }
        }
    }
}

/// The `usdot` loop over `k4` groups (see [`NeonDot::tile`]).
///
/// # Safety
/// FEAT_I8MM; `k4 ≥ 1`; `a` readable for `k4·32` bytes, `b` for `(k4 − 1)·192 + 48` bytes.
#[target_feature(enable = "neon,i8mm")]
unsafe fn run_usdot(a: *const i32, b: *const u32, k4: usize, c: &mut [int32x4_t; 24]) {
    let (mut pa, mut pb, mut n) = (a, b, k4);
    // SAFETY: caller's contract; the loop runs `k4 ≥ 1` times, reading within the bounds
    // above; only the named registers and the flags are written; no stack use.
    unsafe {
        asm!(
            ".arch_extension i8mm",
            "2:",
            "ldp {a0:q}, {a1:q}, [{pa}], #32",
            "ldr {b0:q}, [{pb}]",
            "ldr {b1:q}, [{pb}, #16]",
            "ldr {b2:q}, [{pb}, #32]",
            "add {pb}, {pb}, #192",
            "usdot {c0:v}.4s, {b0:v}.16b, {a0:v}.4b[0]",
            "usdot {c1:v}.4s, {b1:v}.16b, {a0:v}.4b[0]",
            "usdot {c2:v}.4s, {b2:v}.16b, {a0:v}.4b[0]",
            "usdot {c3:v}.4s, {b0:v}.16b, {a0:v}.4b[1]",
            "usdot {c4:v}.4s, {b1:v}.16b, {a0:v}.4b[1]",
            "usdot {c5:v}.4s, {b2:v}.16b, {a0:v}.4b[1]",
            "usdot {c6:v}.4s, {b0:v}.16b, {a0:v}.4b[2]",
            "usdot {c7:v}.4s, {b1:v}.16b, {a0:v}.4b[2]",
            "usdot {c8:v}.4s, {b2:v}.16b, {a0:v}.4b[2]",
            "usdot {c9:v}.4s, {b0:v}.16b, {a0:v}.4b[3]",
            "usdot {c10:v}.4s, {b1:v}.16b, {a0:v}.4b[3]",
            "usdot {c11:v}.4s, {b2:v}.16b, {a0:v}.4b[3]",
            "usdot {c12:v}.4s, {b0:v}.16b, {a1:v}.4b[0]",
            "usdot {c13:v}.4s, {b1:v}.16b, {a1:v}.4b[0]",
            "usdot {c14:v}.4s, {b2:v}.16b, {a1:v}.4b[0]",
            "usdot {c15:v}.4s, {b0:v}.16b, {a1:v}.4b[1]",
            "usdot {c16:v}.4s, {b1:v}.16b, {a1:v}.4b[1]",
            "usdot {c17:v}.4s, {b2:v}.16b, {a1:v}.4b[1]",
            "usdot {c18:v}.4s, {b0:v}.16b, {a1:v}.4b[2]",
            "usdot {c19:v}.4s, {b1:v}.16b, {a1:v}.4b[2]",
            "usdot {c20:v}.4s, {b2:v}.16b, {a1:v}.4b[2]",
            "usdot {c21:v}.4s, {b0:v}.16b, {a1:v}.4b[3]",
            "usdot {c22:v}.4s, {b1:v}.16b, {a1:v}.4b[3]",
            "usdot {c23:v}.4s, {b2:v}.16b, {a1:v}.4b[3]",
            "subs {n}, {n}, #1",
            "b.ne 2b",
            pa = inout(reg) pa,
            pb = inout(reg) pb,
            n = inout(reg) n,
            a0 = out(vreg_low16) _,
            a1 = out(vreg_low16) _,
            b0 = out(vreg) _,
            b1 = out(vreg) _,
            b2 = out(vreg) _,
            c0 = inout(vreg) c[0],
            c1 = inout(vreg) c[1],
            c2 = inout(vreg) c[2],
            c3 = inout(vreg) c[3],
            c4 = inout(vreg) c[4],
            c5 = inout(vreg) c[5],
            c6 = inout(vreg) c[6],
            c7 = inout(vreg) c[7],
            c8 = inout(vreg) c[8],
            c9 = inout(vreg) c[9],
            c10 = inout(vreg) c[10],
            c11 = inout(vreg) c[11],
            c12 = inout(vreg) c[12],
            c13 = inout(vreg) c[13],
            c14 = inout(vreg) c[14],
            c15 = inout(vreg) c[15],
            c16 = inout(vreg) c[16],
            c17 = inout(vreg) c[17],
            c18 = inout(vreg) c[18],
            c19 = inout(vreg) c[19],
            c20 = inout(vreg) c[20],
            c21 = inout(vreg) c[21],
            c22 = inout(vreg) c[22],
            c23 = inout(vreg) c[23],
            options(nostack, readonly),
        );
    }
    let _ = (pa, pb, n);
}

/// The `sdot` loop over `k4` groups, activations XOR 0x80 (see [`NeonDot::tile`]).
///
/// # Safety
/// FEAT_DotProd; `k4 ≥ 1`; `a` readable for `k4·32` bytes, `b` for `(k4 − 1)·192 + 48` bytes.
#[target_feature(enable = "neon,dotprod")]
unsafe fn run_sdot(a: *const i32, b: *const u32, k4: usize, c: &mut [int32x4_t; 24]) {
    let (mut pa, mut pb, mut n) = (a, b, k4);
    let flip = vdupq_n_u8(0x80);
    // SAFETY: as for `run_usdot`, with FEAT_DotProd.
    unsafe {
        asm!(
            ".arch_extension dotprod",
            "2:",
            "ldp {a0:q}, {a1:q}, [{pa}], #32",
            "ldr {b0:q}, [{pb}]",
            "ldr {b1:q}, [{pb}, #16]",
            "ldr {b2:q}, [{pb}, #32]",
            "add {pb}, {pb}, #192",
            "eor {b0:v}.16b, {b0:v}.16b, {flip:v}.16b",
            "eor {b1:v}.16b, {b1:v}.16b, {flip:v}.16b",
            "eor {b2:v}.16b, {b2:v}.16b, {flip:v}.16b",
            "sdot {c0:v}.4s, {b0:v}.16b, {a0:v}.4b[0]",
            "sdot {c1:v}.4s, {b1:v}.16b, {a0:v}.4b[0]",
            "sdot {c2:v}.4s, {b2:v}.16b, {a0:v}.4b[0]",
            "sdot {c3:v}.4s, {b0:v}.16b, {a0:v}.4b[1]",
            "sdot {c4:v}.4s, {b1:v}.16b, {a0:v}.4b[1]",
            "sdot {c5:v}.4s, {b2:v}.16b, {a0:v}.4b[1]",
            "sdot {c6:v}.4s, {b0:v}.16b, {a0:v}.4b[2]",
            "sdot {c7:v}.4s, {b1:v}.16b, {a0:v}.4b[2]",
            "sdot {c8:v}.4s, {b2:v}.16b, {a0:v}.4b[2]",
            "sdot {c9:v}.4s, {b0:v}.16b, {a0:v}.4b[3]",
            "sdot {c10:v}.4s, {b1:v}.16b, {a0:v}.4b[3]",
            "sdot {c11:v}.4s, {b2:v}.16b, {a0:v}.4b[3]",
            "sdot {c12:v}.4s, {b0:v}.16b, {a1:v}.4b[0]",
            "sdot {c13:v}.4s, {b1:v}.16b, {a1:v}.4b[0]",
            "sdot {c14:v}.4s, {b2:v}.16b, {a1:v}.4b[0]",
            "sdot {c15:v}.4s, {b0:v}.16b, {a1:v}.4b[1]",
            "sdot {c16:v}.4s, {b1:v}.16b, {a1:v}.4b[1]",
            "sdot {c17:v}.4s, {b2:v}.16b, {a1:v}.4b[1]",
            "sdot {c18:v}.4s, {b0:v}.16b, {a1:v}.4b[2]",
            "sdot {c19:v}.4s, {b1:v}.16b, {a1:v}.4b[2]",
            "sdot {c20:v}.4s, {b2:v}.16b, {a1:v}.4b[2]",
            "sdot {c21:v}.4s, {b0:v}.16b, {a1:v}.4b[3]",
            "sdot {c22:v}.4s, {b1:v}.16b, {a1:v}.4b[3]",
            "sdot {c23:v}.4s, {b2:v}.16b, {a1:v}.4b[3]",
            "subs {n}, {n}, #1",
            "b.ne 2b",
            pa = inout(reg) pa,
            pb = inout(reg) pb,
            n = inout(reg) n,
            flip = in(vreg) flip,
            a0 = out(vreg_low16) _,
            a1 = out(vreg_low16) _,
            b0 = out(vreg) _,
            b1 = out(vreg) _,
            b2 = out(vreg) _,
            c0 = inout(vreg) c[0],
            c1 = inout(vreg) c[1],
            c2 = inout(vreg) c[2],
            c3 = inout(vreg) c[3],
            c4 = inout(vreg) c[4],
            c5 = inout(vreg) c[5],
            c6 = inout(vreg) c[6],
            c7 = inout(vreg) c[7],
            c8 = inout(vreg) c[8],
            c9 = inout(vreg) c[9],
            c10 = inout(vreg) c[10],
            c11 = inout(vreg) c[11],
            c12 = inout(vreg) c[12],
            c13 = inout(vreg) c[13],
            c14 = inout(vreg) c[14],
            c15 = inout(vreg) c[15],
            c16 = inout(vreg) c[16],
            c17 = inout(vreg) c[17],
            c18 = inout(vreg) c[18],
            c19 = inout(vreg) c[19],
            c20 = inout(vreg) c[20],
            c21 = inout(vreg) c[21],
            c22 = inout(vreg) c[22],
            c23 = inout(vreg) c[23],
            options(nostack, readonly),
        );
    }
    let _ = (pa, pb, n);
}
