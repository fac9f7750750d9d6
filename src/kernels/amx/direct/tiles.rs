//! The tile instructions of the direct convolution's loop ([`super::Job`]): the sums of a
//! block stored and reloaded between k-blocks, and the products of one tap over its chunks of
//! input channels.

use super::DirectOp;
#[cfg(target_arch = "x86_64")]
use super::ROW_BYTES;
use crate::kernels::amx::Sums;
#[cfg(target_arch = "x86_64")]
use crate::kernels::amx::COLS;

/// Stores the four sum tiles into `s` (position-major: `s[i][j]` for grid position `i` and
/// output channel `j` of the block).
///
/// # Safety
/// The tiles must be configured on this thread and hold a block's sums (after
/// [`chunk_run`]).
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn store<S>(s: &mut Sums<S>) {
    let out = s.0.as_mut_ptr().cast::<u8>();
    // SAFETY: four stores of 16 rows × 64 bytes at stride 128 into the 32 × 128-byte `s`: the
    // corners (0, 0), (0, 64), (16·128, 0) and (16·128, 64), all inside it.
    unsafe {
        std::arch::asm!(
            "tilestored [{o} + {s128}*1], tmm0",
            "tilestored [{o} + {s128}*1 + 64], tmm1",
            "tilestored [{o2} + {s128}*1], tmm2",
            "tilestored [{o2} + {s128}*1 + 64], tmm3",
            o = in(reg) out,
            o2 = in(reg) out.wrapping_add(16 * COLS * 4),
            s128 = in(reg) 128usize,
            options(nostack),
        );
    }
}

/// Loads a block's sums (as [`store`] wrote them) into the sum tiles.
///
/// # Safety
/// The tiles must be configured on this thread.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn load<S>(s: &Sums<S>) {
    let at = s.0.as_ptr().cast::<u8>();
    // SAFETY: four loads of 16 rows × 64 bytes at stride 128 from the 32 × 128-byte `s`, at
    // the corners that `store` writes, all inside it.
    unsafe {
        std::arch::asm!(
            "tileloadd tmm0, [{o} + {s128}*1]",
            "tileloadd tmm1, [{o} + {s128}*1 + 64]",
            "tileloadd tmm2, [{o2} + {s128}*1]",
            "tileloadd tmm3, [{o2} + {s128}*1 + 64]",
            o = in(reg) at,
            o2 = in(reg) at.wrapping_add(16 * COLS * 4),
            s128 = in(reg) 128usize,
            options(nostack, readonly),
        );
    }
}

/// Never called: no [`Int8`] has a value off x86-64.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn load<S>(_: &Sums<S>) {
    unreachable!("AMX ops exist only on x86-64")
}

/// Never called: no [`Int8`] has a value off x86-64.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn store<S>(_: &mut Sums<S>) {
    unreachable!("AMX ops exist only on x86-64")
}

/// Never called: no [`Int8`] has a value off x86-64.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn chunk_run<O: DirectOp, E>(
    _: &[E],
    _: &[E],
    _: usize,
    _: &[u32],
    _: usize,
    _: bool,
) {
    let _ = O::BF16;
    unreachable!("AMX ops exist only on x86-64")
}

/// The sums of one tap: `len` chunks of one tile row of input channels, `s += A · B` (or
/// `s = A · B` when `first`) with `O`'s instruction (`tdpbusd` or `tdpbf16ps`): `A` the two
/// tiles of 16 pixels × 64 bytes of channels from `a0` and `a1` (row stride `stride` bytes),
/// `B` the two weight tiles of each chunk (`b`, 2 KiB per chunk). While the tiles of one chunk
/// multiply, the rows of the next chunk's `A` tiles are prefetched.
///
/// # Safety
/// [`super::configure`] must have run on this thread with no other tile use since, except
/// this function and [`store`]; the CPU must run `O`'s instruction (a value of `O` exists).
/// `a0` and `a1` must each hold `15·stride + 64·len` bytes, `b` must hold `512·len` words, and
/// `len ≥ 1`.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn chunk_run<O: DirectOp, E>(
    a0: &[E],
    a1: &[E],
    stride: usize,
    b: &[u32],
    len: usize,
    first: bool,
) {
    use std::arch::asm;
    let need = 15 * stride + ROW_BYTES * len;
    debug_assert!(
        len >= 1
            && std::mem::size_of_val(a0) >= need
            && std::mem::size_of_val(a1) >= need
            && b.len() >= 512 * len
    );
    // SAFETY: the `A` tiles of chunk q read 16 rows of 64 bytes at `a0 + 64·q + r·stride` and
    // `a1 + 64·q + r·stride` (r < 16): the last byte read is `15·stride + 64·len − 1`, inside
    // both (caller's contract); the weight tiles read 2 KiB at `b + 2048·q`, inside `b`. The
    // prefetches may point past `a0` or `a1` and touch nothing (a prefetch never faults). The
    // loop runs `len ≥ 1` times. Compiled code never uses the tile registers.
    unsafe {
        if first {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem, preserves_flags),
            );
        }
        // One loop per instruction; the assembler text differs only in the product's name.
        macro_rules! chunk_loop {
            ($op:literal) => {
                asm!(
                    "2:",
                    "lea {p}, [{a0} + 64]",
                    ".rept 16",
                    "prefetcht0 [{p}]",
                    "add {p}, {sc}",
                    ".endr",
                    "lea {p}, [{a1} + 64]",
                    ".rept 16",
                    "prefetcht0 [{p}]",
                    "add {p}, {sc}",
                    ".endr",
                    "tileloadd tmm4, [{a0} + {sc}*1]",
                    "tileloadd tmm6, [{b} + {s64}*1]",
                    concat!($op, " tmm0, tmm4, tmm6"),
                    "tileloadd tmm7, [{b} + {s64}*1 + 1024]",
                    concat!($op, " tmm1, tmm4, tmm7"),
                    "tileloadd tmm5, [{a1} + {sc}*1]",
                    concat!($op, " tmm2, tmm5, tmm6"),
                    concat!($op, " tmm3, tmm5, tmm7"),
                    "add {a0}, 64",
                    "add {a1}, 64",
                    "add {b}, 2048",
                    "dec {n}",
                    "jnz 2b",
                    a0 = inout(reg) a0.as_ptr() => _,
                    a1 = inout(reg) a1.as_ptr() => _,
                    b = inout(reg) b.as_ptr() => _,
                    n = inout(reg) len => _,
                    p = out(reg) _,
                    sc = in(reg) stride,
                    s64 = in(reg) 64usize,
                    options(nostack),
                )
            };
        }
        if O::BF16 {
            chunk_loop!("tdpbf16ps");
        } else {
            chunk_loop!("tdpbusd");
        }
    }
}
