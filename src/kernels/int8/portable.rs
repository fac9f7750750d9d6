//! The portable int8 micro-kernel: plain loops over the packed panels.

use super::{MR, NR};

/// `tile[r][j] = Σ_g Σ_t a[g·MR + r].byte(t) · b[g·NR + j].byte(t)` over `k4` groups, with
/// `a`'s bytes signed and `b`'s unsigned (see the module documentation for the layouts).
pub(super) fn tile(a: &[i32], b: &[u32], k4: usize, tile: &mut [[i32; NR]; MR]) {
    let (a, b) = (&a[..k4 * MR], &b[..k4 * NR]);
    *tile = [[0; NR]; MR];
    for (ag, bg) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        // Unpacked once per group: four rows of NR activations.
        let mut bx = [[0i32; NR]; 4];
        for (j, &word) in bg.iter().enumerate() {
            for (t, v) in word.to_le_bytes().into_iter().enumerate() {
                bx[t][j] = i32::from(v);
            }
        }
        for (row, &word) in tile.iter_mut().zip(ag) {
            let w = word.to_le_bytes().map(|v| i32::from(v as i8));
            for t in 0..4 {
                for (acc, &x) in row.iter_mut().zip(&bx[t]) {
                    *acc += w[t] * x;
                }
            }
        }
    }
}
