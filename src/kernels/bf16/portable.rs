//! The portable micro-kernel: plain loops over the packed layouts, in the module's summation
//! order (odd element of each pair, then even, increasing pairs), which the compiler
//! vectorises over the columns.

use super::{from_bf16, Tile, MR, NR};

/// `acc[r][j] += Σ_t a_odd·b_odd, then a_even·b_even` for `t < kp`, rows `r < 8`, columns
/// `j < width` (see [`super::Kernel::tile`]).
pub(super) fn tile(a: &[u32], b: &[u16], kp: usize, width: usize, acc: &mut Tile) {
    match width {
        48 => tile_w::<48>(a, b, kp, acc),
        32 => tile_w::<32>(a, b, kp, acc),
        16 => tile_w::<16>(a, b, kp, acc),
        _ => unreachable!("panel width {width} is not 16, 32 or 48"),
    }
}

/// [`tile`] for a compile-time panel width `W`.
#[inline(always)]
fn tile_w<const W: usize>(a: &[u32], b: &[u16], kp: usize, acc: &mut Tile) {
    const { assert!(W <= NR && W.is_multiple_of(16)) };
    assert!(a.len() >= kp * MR && b.len() >= kp * W * 2);
    for (pairs, brow) in a.chunks_exact(MR).zip(b.chunks_exact(2 * W)).take(kp) {
        // Unpacked once per pair: the odd and even rows of this pair for the panel's columns.
        let mut bo = [0.0f32; W];
        let mut be = [0.0f32; W];
        for ((o, e), p) in bo.iter_mut().zip(be.iter_mut()).zip(brow.chunks_exact(2)) {
            *e = from_bf16(p[0]);
            *o = from_bf16(p[1]);
        }
        for (row, &pair) in acc.iter_mut().zip(pairs) {
            let ae = from_bf16(pair as u16);
            let ao = from_bf16((pair >> 16) as u16);
            for ((c, &o), &e) in row[..W].iter_mut().zip(&bo).zip(&be) {
                // Two separate roundings, odd first: the products are exact, so this is what
                // the fused `vdpbf16ps` / `bfmlalt` + `bfmlalb` compute.
                *c = (*c + ao * o) + ae * e;
            }
        }
    }
}
