//! The aarch64 bf16 micro-kernel: `bfmlalt` / `bfmlalb` (FEAT_BF16) by element on 8 rows × 8
//! columns (16 accumulators of 4 f32), looped over the 16-, 32- or 48-column panel.
//!
//! `bfmlalt` then `bfmlalb` are IEEE fused multiply-adds (round to nearest under the default
//! FPCR): the odd element of a pair first, then the even one, as `vdpbf16ps` does. `bfdot` and
//! `bfmmla` would be faster but, without FEAT_EBF16, add the two products together first with
//! round to odd (another order, other bits). The bf16 intrinsics are not stable in Rust 1.89,
//! hence `asm!`.

use std::arch::aarch64::{vdupq_n_f32, vld1q_f32, vst1q_f32};
use std::arch::asm;

use super::{Tile, MR};

/// The NEON bf16 kernel. A value can only be obtained from [`NeonBf16::detect`], so holding
/// one proves that the CPU supports the bf16 extension.
#[derive(Clone, Copy)]
pub(super) struct NeonBf16(());

impl NeonBf16 {
    /// The kernel if the CPU supports NEON and FEAT_BF16.
    pub(super) fn detect() -> Option<NeonBf16> {
        let cpu = crate::kernels::cpu::features();
        if cpu.neon && cpu.bf16 {
            Some(NeonBf16(()))
        } else {
            None
        }
    }

    /// See [`super::Kernel::tile`].
    #[inline]
    pub(super) fn tile(self, a: &[u32], b: &[u16], kp: usize, width: usize, acc: &mut Tile) {
        assert!(matches!(width, 16 | 32 | 48), "panel width {width}");
        assert!(kp > 0 && a.len() >= kp * MR && b.len() >= kp * width * 2);
        for g in 0..width / 8 {
            // SAFETY: `self` exists, so the CPU supports bf16 (see `detect`); `kp ≥ 1`; `a`
            // holds `kp·8` pairs; `b` from column `8g` is readable for `(kp − 1)·width + 8`
            // pairs since `8g + 8 ≤ width` (asserts above); columns `8g .. 8g + 8` of the
            // accumulator rows (48 f32 each) are in bounds.
            unsafe { tile_8x8(a.as_ptr(), b.as_ptr().add(16 * g), kp, width, acc, 8 * g) };
        }
    }
}

/// `acc[r][j0 + j] += Σ_t` (odd, then even element of pair `t`) for rows `r < 8`, columns
/// `j < 8`, pairs `t < kp`; `b` points at column `j0` of a panel `width` columns wide.
///
/// # Safety
/// The CPU must support FEAT_BF16; `kp ≥ 1`; `a` must be readable for `kp·8` `u32`, `b` for
/// `((kp − 1)·width + 8)·2` `u16`; `j0 + 8 ≤ 48`.
#[target_feature(enable = "neon,bf16")]
unsafe fn tile_8x8(
    a: *const u32,
    b: *const u16,
    kp: usize,
    width: usize,
    acc: &mut Tile,
    j0: usize,
) {
    let mut c = [vdupq_n_f32(0.0); 16];
    for (r, row) in acc.iter().enumerate() {
        for h in 0..2 {
            // SAFETY: `j0 + 4h + 4 ≤ 48` floats of the row are readable.
            c[2 * r + h] = unsafe { vld1q_f32(row.as_ptr().add(j0 + 4 * h)) };
        }
    }
    let (mut pa, mut pb, mut n) = (a, b, kp);
    // SAFETY: the loop runs `kp ≥ 1` times; iteration `t` reads 32 bytes of `a` at `32t` and
    // 32 bytes of `b` at `4·t·width` (bounds of this function's contract); only the named
    // registers and the flags are written; no stack use.
    unsafe {
        asm!(
            ".arch_extension bf16",
            "2:",
            "ldp {a0:q}, {a1:q}, [{pa}], #32",
            "ldp {b0:q}, {b1:q}, [{pb}]",
            "add {pb}, {pb}, {bs}",
            "bfmlalt {c0:v}.4s, {b0:v}.8h, {a0:v}.h[1]",
            "bfmlalt {c1:v}.4s, {b1:v}.8h, {a0:v}.h[1]",
            "bfmlalb {c0:v}.4s, {b0:v}.8h, {a0:v}.h[0]",
            "bfmlalb {c1:v}.4s, {b1:v}.8h, {a0:v}.h[0]",
            "bfmlalt {c2:v}.4s, {b0:v}.8h, {a0:v}.h[3]",
            "bfmlalt {c3:v}.4s, {b1:v}.8h, {a0:v}.h[3]",
            "bfmlalb {c2:v}.4s, {b0:v}.8h, {a0:v}.h[2]",
            "bfmlalb {c3:v}.4s, {b1:v}.8h, {a0:v}.h[2]",
            "bfmlalt {c4:v}.4s, {b0:v}.8h, {a0:v}.h[5]",
            "bfmlalt {c5:v}.4s, {b1:v}.8h, {a0:v}.h[5]",
            "bfmlalb {c4:v}.4s, {b0:v}.8h, {a0:v}.h[4]",
            "bfmlalb {c5:v}.4s, {b1:v}.8h, {a0:v}.h[4]",
            "bfmlalt {c6:v}.4s, {b0:v}.8h, {a0:v}.h[7]",
            "bfmlalt {c7:v}.4s, {b1:v}.8h, {a0:v}.h[7]",
            "bfmlalb {c6:v}.4s, {b0:v}.8h, {a0:v}.h[6]",
            "bfmlalb {c7:v}.4s, {b1:v}.8h, {a0:v}.h[6]",
            "bfmlalt {c8:v}.4s, {b0:v}.8h, {a1:v}.h[1]",
            "bfmlalt {c9:v}.4s, {b1:v}.8h, {a1:v}.h[1]",
            "bfmlalb {c8:v}.4s, {b0:v}.8h, {a1:v}.h[0]",
            "bfmlalb {c9:v}.4s, {b1:v}.8h, {a1:v}.h[0]",
            "bfmlalt {c10:v}.4s, {b0:v}.8h, {a1:v}.h[3]",
            "bfmlalt {c11:v}.4s, {b1:v}.8h, {a1:v}.h[3]",
            "bfmlalb {c10:v}.4s, {b0:v}.8h, {a1:v}.h[2]",
            "bfmlalb {c11:v}.4s, {b1:v}.8h, {a1:v}.h[2]",
            "bfmlalt {c12:v}.4s, {b0:v}.8h, {a1:v}.h[5]",
            "bfmlalt {c13:v}.4s, {b1:v}.8h, {a1:v}.h[5]",
            "bfmlalb {c12:v}.4s, {b0:v}.8h, {a1:v}.h[4]",
            "bfmlalb {c13:v}.4s, {b1:v}.8h, {a1:v}.h[4]",
            "bfmlalt {c14:v}.4s, {b0:v}.8h, {a1:v}.h[7]",
            "bfmlalt {c15:v}.4s, {b1:v}.8h, {a1:v}.h[7]",
            "bfmlalb {c14:v}.4s, {b0:v}.8h, {a1:v}.h[6]",
            "bfmlalb {c15:v}.4s, {b1:v}.8h, {a1:v}.h[6]",
            "subs {n}, {n}, #1",
            "b.ne 2b",
            pa = inout(reg) pa,
            pb = inout(reg) pb,
            n = inout(reg) n,
            bs = in(reg) width * 4,
            a0 = out(vreg_low16) _,
            a1 = out(vreg_low16) _,
            b0 = out(vreg) _,
            b1 = out(vreg) _,
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
            options(nostack, readonly),
        );
    }
    let _ = (pa, pb, n);
    for (r, row) in acc.iter_mut().enumerate() {
        for h in 0..2 {
            // SAFETY: as for the loads.
            unsafe { vst1q_f32(row.as_mut_ptr().add(j0 + 4 * h), c[2 * r + h]) };
        }
    }
}
