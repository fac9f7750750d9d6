//! 3×3, stride-2, pad-1 convolutions by a polyphase split and Winograd F(2, 2): every 2×2
//! output tile comes from a 5×5 input patch through 25 transform-domain points, i.e. 25
//! multiply-adds per output and input channel where im2col + GEMM spends 36, with transforms
//! whose entries are all 0 or ±1.
//!
//! In 1-D, outputs `y0, y1` of a tile read the input window `x0..x4` (it starts at input
//! `4t − 1` because of the padding; windows of neighbouring tiles overlap by one value):
//! `y0 = w0·x0 + w1·x1 + w2·x2`, `y1 = w0·x2 + w1·x3 + w2·x4`. The even taps `(w0, w2)` see the
//! even inputs `(x0, x2, x4)` with stride 1, which is Winograd F(2, 2) (3 points); the odd tap
//! `w1` sees `x1, x3` directly (2 points):
//!
//! ```text
//!      ⎡1  0 -1  0  0⎤        ⎡1 0 0⎤
//!      ⎢0  0  1  0  0⎥        ⎢1 0 1⎥
//! Bᵀ = ⎢0  0 -1  0  1⎥   G =  ⎢0 0 1⎥   Aᵀ = ⎡1 1 0 1 0⎤
//!      ⎢0  1  0  0  0⎥        ⎢0 1 0⎥        ⎣0 1 1 0 1⎦
//!      ⎣0  0  0  1  0⎦        ⎣0 1 0⎦
//! ```
//!
//! (`d = Bᵀx = [x0 − x2, x2, x4 − x2, x1, x3]`, `f = G·w = [w0, w0 + w2, w2, w1, w1]`,
//! `y = Aᵀ(f ⊙ d)`.) In 2-D the transforms act along the rows and the columns:
//! `Y = Aᵀ·[Σ_ci U(co, ci) ⊙ V(ci)]·A` with `U = G·g·Gᵀ` and `V = Bᵀ·d·B` (5×5).
//!
//! Rows 3 and 4 of `G` are equal, so `U` has only 4×4 = 16 distinct entries per filter:
//! the 25 points fall into 16 *classes* that share one filter matrix `U_k[cout × cin]`
//! (9 classes of one point, 6 of two, 1 of four). The points of a class are stored next to
//! each other, so each class is a single product `M_k = U_k · [V_p | V_q | …]` over
//! `T·|class|` columns: 16 GEMMs (the thin ones of the later layers get 2–4× wider), and the
//! transformed filters take 16/9 of the weight memory, as for stride-1 F(2×2).
//!
//! Layouts (`T` tiles per image, slots = the 25 points ordered by class):
//! - `U`: `[16][cout][cin]`, computed once (in f64, rounded once: exact but for `w0 + w2`);
//! - `V`: `[cin][25][T]` (one contiguous block per input channel and task);
//! - `M`: class `k` is a `[cout][|k|·T]` block at `off_k·cout·T` (one task per class).
//!
//! The driver (parent module) runs one product per class over its `T·|class|` columns.

use super::{gather_patch_rows, CHUNK, MAX_POINTS};
use crate::kernels::conv::epilogue::epilogue_row;

/// Transform-domain points per tile (5×5).
pub(super) const POINTS: usize = 25;

/// Distinct filter matrices (4×4 classes of points).
pub(super) const CLASSES: usize = 16;

/// Padded patch columns needed by `CHUNK` adjacent tiles (stride 4 plus one of overlap).
const COLS: usize = 4 * CHUNK + 1;

/// The filter class (0..4) of transform index `i` (0..5) along one axis.
const fn axis_class(i: usize) -> usize {
    if i < 3 {
        i
    } else {
        3
    }
}

/// Transform indices along one axis in axis class `f`.
const fn axis_len(f: usize) -> usize {
    if f < 3 {
        1
    } else {
        2
    }
}

/// Points in class `k = fi·4 + fj`.
pub(super) const fn class_len(k: usize) -> usize {
    axis_len(k / 4) * axis_len(k % 4)
}

/// First slot of every class (and the total, 25, at the end).
pub(super) const CLASS_OFF: [usize; CLASSES + 1] = {
    let mut off = [0; CLASSES + 1];
    let mut k = 0;
    while k < CLASSES {
        off[k + 1] = off[k] + class_len(k);
        k += 1;
    }
    off
};

/// `SLOT[i][j]`: the slot of point `(i, j)` (row transform index `i`, column index `j`).
const SLOT: [[usize; 5]; 5] = {
    let mut s = [[0; 5]; 5];
    let mut i = 0;
    while i < 5 {
        let mut j = 0;
        while j < 5 {
            let (fi, fj) = (axis_class(i), axis_class(j));
            let k = fi * 4 + fj;
            s[i][j] = CLASS_OFF[k] + (i - fi) * axis_len(fj) + (j - fj);
            j += 1;
        }
        i += 1;
    }
    s
};

/// `(class, position in class)` of every slot.
pub(super) const SLOT_CLASS: [(usize, usize); POINTS] = {
    let mut c = [(0, 0); POINTS];
    let mut k = 0;
    while k < CLASSES {
        let mut q = 0;
        while q < class_len(k) {
            c[CLASS_OFF[k] + q] = (k, q);
            q += 1;
        }
        k += 1;
    }
    c
};

/// `G·w` along one axis (the 4 distinct entries).
fn g4(w0: f64, w1: f64, w2: f64) -> [f64; 4] {
    [w0, w0 + w2, w2, w1]
}

/// `U = G·g·Gᵀ` (its 16 distinct entries) for every `(co, ci)` of a `[cout, cin, 3, 3]`
/// weight, laid out `[16][cout][cin]` by class. Computed in f64 and rounded once.
pub(super) fn transform_filters(weight: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    debug_assert_eq!(weight.len(), cout * cin * 9);
    let plane = cout * cin;
    let mut u = vec![0.0f32; CLASSES * plane];
    for (idx, g) in weight.chunks_exact(9).enumerate() {
        let g: [f64; 9] = std::array::from_fn(|i| f64::from(g[i]));
        // t = G·g along the kernel rows (4×3), then U = t·Gᵀ (4×4).
        let cols: [[f64; 4]; 3] = std::array::from_fn(|c| g4(g[c], g[3 + c], g[6 + c]));
        for fi in 0..4 {
            let row = g4(cols[0][fi], cols[1][fi], cols[2][fi]);
            for (fj, v) in row.iter().enumerate() {
                u[(fi * 4 + fj) * plane + idx] = *v as f32;
            }
        }
    }
    u
}

/// `V = Bᵀ·d·B` for every tile of one input channel `plane` (`h × w`), written to `v`
/// (`[25][T]` by slot). The 5×5 patch of tile `(ty, tx)` starts at input row `4·ty − 1` and
/// column `4·tx − 1`; positions outside the image are the zero padding.
pub(super) fn input_transform(
    plane: &[f32],
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
    v: &mut [f32],
) {
    let t_all = th * tw;
    let mut d = [[0.0f32; COLS]; 5];
    // ph[r][q][j] = d[r][4j + q]: the patch rows split by column phase (q = 0 has one more
    // entry, the last tile's fifth column), so that both transforms run on contiguous
    // arrays over the tiles of a chunk.
    let mut ph = [[[0.0f32; CHUNK + 1]; 4]; 5];
    // Bᵀ along the rows gives [d0 − d2, d2, d4 − d2, d1, d3]; only two rows are new.
    let mut e = [[[0.0f32; CHUNK + 1]; 4]; 2];
    for ty in 0..th {
        let mut tx0 = 0;
        while tx0 < tw {
            let n = CHUNK.min(tw - tx0);
            let cols = 4 * n + 1;
            // d[r][c] = plane[4ty + r − 1, 4tx0 + c − 1]; tx0 < tw = ⌈ow/2⌉ gives
            // 2·tx0 ≤ ow − 1 = ⌊(w − 1)/2⌋, so 4·tx0 + 1 ≤ w as the gather requires.
            gather_patch_rows(plane, h, w, 4 * ty, 4 * tx0, cols, &mut d);
            for (pr, dr) in ph.iter_mut().zip(&d) {
                let [p0, p1, p2, p3] = pr;
                for (j, x) in dr[..4 * n].chunks_exact(4).enumerate() {
                    p0[j] = x[0];
                    p1[j] = x[1];
                    p2[j] = x[2];
                    p3[j] = x[3];
                }
                p0[n] = dr[4 * n];
            }
            for q in 0..4 {
                let (a, b, c) = (&ph[0][q], &ph[2][q], &ph[4][q]);
                for j in 0..=n {
                    e[0][q][j] = a[j] - b[j];
                    e[1][q][j] = c[j] - b[j];
                }
            }
            let rows = [&e[0], &ph[2], &e[1], &ph[1], &ph[3]];
            // B along the columns: [x0 − x2, x2, x4 − x2, x1, x3] per tile, i.e.
            // [p0[j] − p2[j], p2[j], p0[j + 1] − p2[j], p1[j], p3[j]].
            let t0 = ty * tw + tx0;
            for (i, [p0, p1, p2, p3]) in rows.into_iter().enumerate() {
                let mut outs: [&mut [f32]; 5] = Default::default();
                let mut rest: &mut [f32] = &mut *v;
                let mut base = 0;
                // The slots of row i in increasing order (SLOT[i] is increasing in j).
                for (j, o) in outs.iter_mut().enumerate() {
                    let s = SLOT[i][j];
                    let (_, tail) = std::mem::take(&mut rest).split_at_mut((s - base) * t_all);
                    let (cur, tail) = tail.split_at_mut(t_all);
                    *o = &mut cur[t0..t0 + n];
                    rest = tail;
                    base = s + 1;
                }
                let [o0, o1, o2, o3, o4] = outs;
                let (p0, p0n, p1, p2, p3) = (&p0[..n], &p0[1..=n], &p1[..n], &p2[..n], &p3[..n]);
                for j in 0..n {
                    o0[j] = p0[j] - p2[j];
                    o2[j] = p0n[j] - p2[j];
                }
                o1.copy_from_slice(p2);
                o3.copy_from_slice(p1);
                o4.copy_from_slice(p3);
            }
            tx0 += n;
        }
    }
}

/// `Y = Aᵀ·M·A` for every tile of one output channel (`rows[s]` holds slot `s` of all `T`
/// tiles), then `out = act(Y + bias (+ residual))` on the `oh × ow` plane; the parts of edge
/// tiles outside the plane are dropped.
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
            let p: [[&[f32]; 5]; 5] =
                std::array::from_fn(|i| std::array::from_fn(|j| &rows[SLOT[i][j]][t0..t0 + n]));
            let (y0, y1) = y.split_at_mut(1);
            let (y0, y1) = (&mut y0[0], &mut y1[0]);
            for j in 0..n {
                // Aᵀ along the rows: s0 = m0 + m1 + m3, s1 = m1 + m2 + m4 (per column).
                let s0: [f32; 5] = std::array::from_fn(|c| p[0][c][j] + p[1][c][j] + p[3][c][j]);
                let s1: [f32; 5] = std::array::from_fn(|c| p[1][c][j] + p[2][c][j] + p[4][c][j]);
                // A along the columns.
                y0[2 * j] = s0[0] + s0[1] + s0[3];
                y0[2 * j + 1] = s0[1] + s0[2] + s0[4];
                y1[2 * j] = s1[0] + s1[1] + s1[3];
                y1[2 * j + 1] = s1[1] + s1[2] + s1[4];
            }
            let x0 = 2 * tx0;
            let len = (2 * n).min(ow - x0);
            for (a, ya) in y.iter().enumerate() {
                let oy = 2 * ty + a;
                if oy >= oh {
                    break;
                }
                let at = oy * ow + x0;
                epilogue_row(
                    &mut out[at..at + len],
                    &ya[..len],
                    bias,
                    residual.map(|r| &r[at..at + len]),
                    relu,
                );
            }
            tx0 += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_a_permutation_grouped_by_class() {
        let mut seen = [false; POINTS];
        for (i, row) in SLOT.iter().enumerate() {
            for (j, &s) in row.iter().enumerate() {
                assert!(!seen[s]);
                seen[s] = true;
                let (k, _) = SLOT_CLASS[s];
                assert_eq!(k, axis_class(i) * 4 + axis_class(j));
                assert!(j == 0 || row[j - 1] < s);
            }
        }
        assert_eq!(CLASS_OFF[CLASSES], POINTS);
    }

    #[test]
    fn one_dimensional_transforms_compute_the_stride_2_taps() {
        let (x, wt) = ([0.3, -1.2, 2.5, 0.7, -0.4], [1.5, -0.25, 2.0]);
        let d = [x[0] - x[2], x[2], x[4] - x[2], x[1], x[3]];
        let f = g4(wt[0], wt[1], wt[2]);
        let f = [f[0], f[1], f[2], f[3], f[3]];
        let m: [f64; 5] = std::array::from_fn(|i| f[i] * d[i]);
        let y = [m[0] + m[1] + m[3], m[1] + m[2] + m[4]];
        let want = [
            wt[0] * x[0] + wt[1] * x[1] + wt[2] * x[2],
            wt[0] * x[2] + wt[1] * x[3] + wt[2] * x[4],
        ];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }
}
