//! The transforms of Winograd F(4×4, 3×3) (the driver is in the parent module): each 4×4 output tile comes from a 6×6 input patch through 36 Winograd-domain
//! points, i.e. 36/16 = 2.25 multiply-adds per output and input channel instead of 4 (F(2×2))
//! or 9 (direct). The matrices (interpolation points 0, ±1, ±2, ∞):
//!
//! ```text
//!      ⎡ ¼    0    0 ⎤        ⎡4  0 -5  0  1  0⎤
//!      ⎢-⅙   -⅙   -⅙ ⎥        ⎢0 -4 -4  1  1  0⎥        ⎡1  1  1  1  1  0⎤
//!  G = ⎢-⅙    ⅙   -⅙ ⎥   Bᵀ = ⎢0  4 -4 -1  1  0⎥   Aᵀ = ⎢0  1 -1  2 -2  0⎥
//!      ⎢1/24 1/12  ⅙ ⎥        ⎢0 -2 -1  2  1  0⎥        ⎢0  1  1  4  4  0⎥
//!      ⎢1/24 -1/12 ⅙ ⎥        ⎢0  2 -1 -2  1  0⎥        ⎣0  1 -1  8 -8  1⎦
//!      ⎣ 0    0    1 ⎦        ⎣0  4  0 -5  0  1⎦
//! ```
//!
//! The larger constants make it less accurate than F(2×2) (still ~1e-6 relative on ResNet
//! layers, see `tests/all/kernels_winograd.rs`), and its 36 filter matrices take 2.25× the memory
//! of F(2×2)'s 16, so it is used only for convolutions with few channels (see
//! [`ConvAlgorithm::Auto`](crate::kernels::conv::ConvAlgorithm::Auto)).

use super::{gather_patch_rows, CHUNK, MAX_POINTS};
use crate::kernels::conv::epilogue::epilogue_row;

/// Points per tile (6×6).
pub(super) const POINTS: usize = 36;

/// Padded patch columns needed by `CHUNK` adjacent tiles.
const COLS: usize = 4 * CHUNK + 2;

/// `U = G·g·Gᵀ` for every `(co, ci)`, laid out `[36][cout][cin]`, computed in f64.
pub(super) fn transform_filters(weight: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    const G: [[f64; 3]; 6] = [
        [0.25, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
    debug_assert_eq!(weight.len(), cout * cin * 9);
    let plane = cout * cin;
    let mut u = vec![0.0f32; POINTS * plane];
    for (idx, g) in weight.chunks_exact(9).enumerate() {
        // t = G·g (6×3), then U = t·Gᵀ (6×6).
        let mut t = [[0.0f64; 3]; 6];
        for (r, gr) in G.iter().enumerate() {
            for c in 0..3 {
                t[r][c] = (0..3).map(|k| gr[k] * f64::from(g[k * 3 + c])).sum();
            }
        }
        for (r, tr) in t.iter().enumerate() {
            for (j, gj) in G.iter().enumerate() {
                let v: f64 = (0..3).map(|k| tr[k] * gj[k]).sum();
                u[(r * 6 + j) * plane + idx] = v as f32;
            }
        }
    }
    u
}

/// `Bᵀ·x` for one 6-vector (the same formulas serve the rows and the columns).
#[inline(always)]
fn bt(x: [f32; 6]) -> [f32; 6] {
    let [d0, d1, d2, d3, d4, d5] = x;
    [
        4.0 * d0 - 5.0 * d2 + d4,
        (d3 + d4) - 4.0 * (d1 + d2),
        (d4 - d3) + 4.0 * (d1 - d2),
        (d4 - d2) + 2.0 * (d3 - d1),
        (d4 - d2) - 2.0 * (d3 - d1),
        4.0 * d1 - 5.0 * d3 + d5,
    ]
}

/// `Aᵀ·x` for one 6-vector.
#[inline(always)]
fn at(x: [f32; 6]) -> [f32; 4] {
    let [m0, m1, m2, m3, m4, m5] = x;
    let (p12, n12, p34, n34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
    [
        m0 + p12 + p34,
        n12 + 2.0 * n34,
        p12 + 4.0 * p34,
        n12 + 8.0 * n34 + m5,
    ]
}

/// `V = Bᵀ·d·B` for every tile of one input channel (`v` is `[36][T]`); the 6×6 patch of tile
/// `(ty, tx)` starts at input row `4·ty − 1` and column `4·tx − 1`, zero outside the image.
pub(super) fn input_transform(
    plane: &[f32],
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
    v: &mut [f32],
) {
    let t_all = th * tw;
    let mut d = [[0.0f32; COLS]; 6];
    let mut e = [[0.0f32; COLS]; 6];
    for ty in 0..th {
        let mut tx0 = 0;
        while tx0 < tw {
            let n = CHUNK.min(tw - tx0);
            let cols = 4 * n + 2;
            // d[r][c] = plane[4ty + r − 1, 4tx0 + c − 1] (tx0 < tw ⇒ 4tx0 + 1 ≤ w).
            gather_patch_rows(plane, h, w, 4 * ty, 4 * tx0, cols, &mut d);
            // Bᵀ along the rows, element-wise over whole patch rows.
            for c in 0..cols {
                let col = bt(std::array::from_fn(|r| d[r][c]));
                for (er, x) in e.iter_mut().zip(col) {
                    er[c] = x;
                }
            }
            // B along the columns, tile by tile.
            let t0 = ty * tw + tx0;
            for (i, er) in e.iter().enumerate() {
                let blk = &mut v[6 * i * t_all..(6 * i + 6) * t_all];
                let mut outs: [&mut [f32]; 6] = Default::default();
                for (o, chunk) in outs.iter_mut().zip(blk.chunks_exact_mut(t_all)) {
                    *o = &mut chunk[t0..t0 + n];
                }
                for j in 0..n {
                    let x = bt(std::array::from_fn(|c| er[4 * j + c]));
                    for (o, x) in outs.iter_mut().zip(x) {
                        o[j] = x;
                    }
                }
            }
            tx0 += n;
        }
    }
}

/// `Y = Aᵀ·M·A` for every tile of one output channel (`rows[k]` holds point `k` of all
/// tiles), then `out = act(Y + bias (+ residual))`, dropping what falls outside `oh × ow`.
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
    let mut y = [[0.0f32; 4 * CHUNK]; 4];
    for ty in 0..th {
        let mut tx0 = 0;
        while tx0 < tw {
            let n = CHUNK.min(tw - tx0);
            let t0 = ty * tw + tx0;
            let p: [&[f32]; POINTS] = std::array::from_fn(|k| &rows[k][t0..t0 + n]);
            for j in 0..n {
                // Aᵀ along the rows (per column c), then A along the columns.
                let mut s = [[0.0f32; 6]; 4];
                for c in 0..6 {
                    let col = at(std::array::from_fn(|r| p[r * 6 + c][j]));
                    for (sa, x) in s.iter_mut().zip(col) {
                        sa[c] = x;
                    }
                }
                for (ya, sa) in y.iter_mut().zip(&s) {
                    ya[4 * j..4 * j + 4].copy_from_slice(&at(*sa));
                }
            }
            let x0 = 4 * tx0;
            let len = (4 * n).min(ow - x0);
            for (a, ya) in y.iter().enumerate() {
                let oy = 4 * ty + a;
                if oy >= oh {
                    break;
                }
                let at0 = oy * ow + x0;
                let dst = &mut out[at0..at0 + len];
                epilogue_row(
                    dst,
                    &ya[..len],
                    bias,
                    residual.map(|r| &r[at0..at0 + len]),
                    relu,
                );
            }
            tx0 += n;
        }
    }
}
