//! The transforms of Winograd F(2×2, 3×3) (the driver is in the parent module): every 2×2
//! output tile comes from the 4×4 input patch around it through 16 Winograd-domain points,
//! with `U = G·g·Gᵀ` (the transformed 3×3 filter) and `V = Bᵀ·d·B` (the transformed input
//! patch):
//!
//! ```text
//!      ⎡1  0  0⎤        ⎡1  0 -1  0⎤
//!  G = ⎢½  ½  ½⎥   Bᵀ = ⎢0  1  1  0⎥   Aᵀ = ⎡1  1  1  0⎤
//!      ⎢½ -½  ½⎥        ⎢0 -1  1  0⎥        ⎣0  1 -1 -1⎦
//!      ⎣0  0  1⎦        ⎣0  1  0 -1⎦
//! ```
//!
//! All entries are 0, ±1 or ±½, so the transforms add (almost) no rounding and the result stays
//! very close to the direct convolution: 16 products with `(16/36)` of the multiply-adds of
//! im2col + GEMM.

use super::{gather_patch_rows, CHUNK, MAX_POINTS};
use crate::kernels::conv::epilogue::epilogue_row;

/// Winograd-domain points per F(2×2) tile (a 4×4 transformed patch).
pub(super) const POINTS: usize = 16;

/// Padded patch columns needed by `CHUNK` adjacent tiles.
const COLS: usize = 2 * CHUNK + 2;

/// `U = G·g·Gᵀ` for every `(co, ci)` of a `[cout, cin, 3, 3]` weight, laid out
/// `[16][cout][cin]`. Computed in f64 (the ½ factors are exact; only the final rounding to
/// f32 remains).
pub(super) fn transform_filters(weight: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    debug_assert_eq!(weight.len(), cout * cin * 9);
    let plane = cout * cin;
    let mut u = vec![0.0f32; POINTS * plane];
    for (idx, g) in weight.chunks_exact(9).enumerate() {
        let g: [f64; 9] = std::array::from_fn(|i| f64::from(g[i]));
        // t = G·g (4×3).
        let mut t = [[0.0f64; 3]; 4];
        for c in 0..3 {
            let (g0, g1, g2) = (g[c], g[3 + c], g[6 + c]);
            t[0][c] = g0;
            t[1][c] = 0.5 * (g0 + g1 + g2);
            t[2][c] = 0.5 * (g0 - g1 + g2);
            t[3][c] = g2;
        }
        // U = t·Gᵀ (4×4).
        for (r, tr) in t.iter().enumerate() {
            let (a, b, c) = (tr[0], tr[1], tr[2]);
            let row = [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
            for (j, v) in row.iter().enumerate() {
                u[(r * 4 + j) * plane + idx] = *v as f32;
            }
        }
    }
    u
}

/// `V = Bᵀ·d·B` for every tile of one input channel `plane` (`h × w`), written to `v`
/// (`[16][T]`, `T = th·tw`). The 4×4 patch of tile `(ty, tx)` starts at input row `2·ty − 1`
/// and column `2·tx − 1`; positions outside the image are the zero padding.
pub(super) fn input_transform(
    plane: &[f32],
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
    v: &mut [f32],
) {
    let t_all = th * tw;
    let mut d = [[0.0f32; COLS]; 4];
    let mut e = [[0.0f32; COLS]; 4];
    for ty in 0..th {
        let mut tx0 = 0;
        while tx0 < tw {
            let n = CHUNK.min(tw - tx0);
            let cols = 2 * n + 2;
            gather_patch_rows(plane, h, w, 2 * ty, 2 * tx0, cols, &mut d);
            // Bᵀ along the rows (element-wise over whole patch rows).
            for c in 0..cols {
                let (d0, d1, d2, d3) = (d[0][c], d[1][c], d[2][c], d[3][c]);
                e[0][c] = d0 - d2;
                e[1][c] = d1 + d2;
                e[2][c] = d2 - d1;
                e[3][c] = d1 - d3;
            }
            // B along the columns, tile by tile.
            let t0 = ty * tw + tx0;
            for (i, er) in e.iter().enumerate() {
                let blk = &mut v[4 * i * t_all..(4 * i + 4) * t_all];
                let (o0, rest) = blk.split_at_mut(t_all);
                let (o1, rest) = rest.split_at_mut(t_all);
                let (o2, o3) = rest.split_at_mut(t_all);
                let (o0, o1) = (&mut o0[t0..t0 + n], &mut o1[t0..t0 + n]);
                let (o2, o3) = (&mut o2[t0..t0 + n], &mut o3[t0..t0 + n]);
                for j in 0..n {
                    let (a, b, c, dd) = (er[2 * j], er[2 * j + 1], er[2 * j + 2], er[2 * j + 3]);
                    o0[j] = a - c;
                    o1[j] = b + c;
                    o2[j] = c - b;
                    o3[j] = b - dd;
                }
            }
            tx0 += n;
        }
    }
}

/// `Y = Aᵀ·M·A` for every tile of one output channel (`rows[k]` holds point `k` of all `T`
/// tiles), then `out = act(Y + bias (+ residual))` on the `oh × ow` plane; the parts of edge
/// tiles that fall outside the plane are dropped.
#[allow(clippy::too_many_arguments)]
pub(super) fn output_transform(
    rows: &[&[f32]; MAX_POINTS],
    th: usize,
    tw: usize,
    oh: usize,
    ow: usize,
    out: &mut [f32],
    bias: f32,
    residual: Option<&[f32]>,
    relu: bool,
) {
    let mut y = [[0.0f32; 2 * CHUNK]; 2];
    for ty in 0..th {
        let mut tx0 = 0;
        while tx0 < tw {
            let n = CHUNK.min(tw - tx0);
            let t0 = ty * tw + tx0;
            let p: [&[f32]; POINTS] = std::array::from_fn(|k| &rows[k][t0..t0 + n]);
            let (y0, y1) = y.split_at_mut(1);
            let (y0, y1) = (&mut y0[0], &mut y1[0]);
            for j in 0..n {
                // Aᵀ along the rows: s0 = m0 + m1 + m2, s1 = m1 − m2 − m3 (per column).
                let s0: [f32; 4] = std::array::from_fn(|c| p[c][j] + p[4 + c][j] + p[8 + c][j]);
                let s1: [f32; 4] =
                    std::array::from_fn(|c| p[4 + c][j] - p[8 + c][j] - p[12 + c][j]);
                // A along the columns.
                y0[2 * j] = s0[0] + s0[1] + s0[2];
                y0[2 * j + 1] = s0[1] - s0[2] - s0[3];
                y1[2 * j] = s1[0] + s1[1] + s1[2];
                y1[2 * j + 1] = s1[1] - s1[2] - s1[3];
            }
            let x0 = 2 * tx0;
            let len = (2 * n).min(ow - x0);
            for (a, ya) in y.iter().enumerate() {
                let oy = 2 * ty + a;
                if oy >= oh {
                    break;
                }
                let at = oy * ow + x0;
                let dst = &mut out[at..at + len];
                let src = &ya[..len];
                epilogue_row(dst, src, bias, residual.map(|r| &r[at..at + len]), relu);
            }
            tx0 += n;
        }
    }
}
