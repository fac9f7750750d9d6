//! Winograd F(2×2, 3×3) for 3×3, stride-1, pad-1 convolutions.
//!
//! Every 2×2 block ("tile") of the output is computed from the 4×4 input patch around it as
//! `Y = Aᵀ·[Σ_ci U(co, ci) ⊙ V(ci)]·A` with `U = G·g·Gᵀ` (the transformed 3×3 filter) and
//! `V = Bᵀ·d·B` (the transformed input patch):
//!
//! ```text
//!      ⎡1  0  0⎤        ⎡1  0 -1  0⎤
//!  G = ⎢½  ½  ½⎥   Bᵀ = ⎢0  1  1  0⎥   Aᵀ = ⎡1  1  1  0⎤
//!      ⎢½ -½  ½⎥        ⎢0 -1  1  0⎥        ⎣0  1 -1 -1⎦
//!      ⎣0  0  1⎦        ⎣0  1  0 -1⎦
//! ```
//!
//! All entries are 0, ±1 or ±½, so the transforms add (almost) no rounding and the result stays
//! very close to the direct convolution. For each of the 16 Winograd-domain points `k` the sum
//! over input channels is one matrix product `M_k[cout × tiles] = U_k[cout × cin] ·
//! V_k[cin × tiles]`: 16 products with `(16/36)` of the multiply-adds of im2col + GEMM.
//!
//! Data layouts (`T` = number of tiles of one image):
//! - `U`: `[16][cout][cin]`, computed once when the convolution is built (on the folded
//!   weights);
//! - `V`: `[cin][16][T]` in the scratch buffer, so that the input transform of one channel
//!   writes one contiguous block (one parallel task per channel); `V_k` is then the strided
//!   view `rows = cin, row_stride = 16·T`;
//! - `M`: `[16][cout][T]` in the scratch buffer, one contiguous block per product (one
//!   parallel task per product);
//! - the output transform reads the 16 `M_k` rows of one output channel and writes that
//!   channel's plane with the epilogue (bias, residual, ReLU) fused in.
//!
//! Every output value is computed by the same sequence of operations whatever the number of
//! threads (the products themselves run sequentially inside their task), so results are
//! bit-identical with 1 or more threads.

use rayon::prelude::*;

use super::PAR_ELEMS;
use crate::kernels::gemm::{gemm, Backend, MatRef, Parallelism};

/// Winograd-domain points per F(2×2) tile (a 4×4 transformed patch).
const POINTS: usize = 16;

/// Most Winograd-domain points of any variant (F(4×4): 6×6).
pub(super) const MAX_POINTS: usize = 36;

/// Output tile size of a Winograd variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tile {
    /// F(2×2, 3×3): 4×4 input patches, 16 points, transforms with entries 0, ±1, ±½.
    F2,
    /// F(4×4, 3×3): 6×6 input patches, 36 points (module `winograd4`).
    F4,
    /// 3×3 stride 2: 2×2 output tiles from 5×5 input patches, 25 points sharing 16 filter
    /// matrices, transforms with entries 0, ±1 (module `winograd_s2`).
    S2,
}

impl Tile {
    /// Output pixels per tile side.
    pub(super) fn m(self) -> usize {
        match self {
            Tile::F2 | Tile::S2 => 2,
            Tile::F4 => 4,
        }
    }

    /// Winograd-domain points per tile.
    pub(super) fn points(self) -> usize {
        match self {
            Tile::F2 => POINTS,
            Tile::F4 => MAX_POINTS,
            Tile::S2 => super::winograd_s2::POINTS,
        }
    }

    /// Transformed filter matrices (`[filter_mats][cout][cin]`).
    pub(super) fn filter_mats(self) -> usize {
        match self {
            Tile::F2 => POINTS,
            Tile::F4 => MAX_POINTS,
            Tile::S2 => super::winograd_s2::CLASSES,
        }
    }
}

/// Tiles handled per step of the transforms (sized for stack buffers that vectorise well).
pub(super) const CHUNK: usize = 16;

/// Padded patch columns needed by `CHUNK` adjacent tiles.
const COLS: usize = 2 * CHUNK + 2;

/// Tile grid `(rows, cols)` of an `oh × ow` output (partial tiles at the edges).
pub(super) fn tiles(tile: Tile, oh: usize, ow: usize) -> (usize, usize) {
    (oh.div_ceil(tile.m()), ow.div_ceil(tile.m()))
}

/// Scratch elements for one image with an `oh × ow` output: `V` (`points·cin·T`) followed
/// by `M` (`points·cout·T`).
pub(super) fn scratch_len(tile: Tile, cin: usize, cout: usize, oh: usize, ow: usize) -> usize {
    let (th, tw) = tiles(tile, oh, ow);
    tile.points() * th * tw * (cin + cout)
}

/// The filter transform of either variant, laid out `[points][cout][cin]`.
pub(super) fn transform_filters_for(
    tile: Tile,
    weight: &[f32],
    cout: usize,
    cin: usize,
) -> Vec<f32> {
    match tile {
        Tile::F2 => transform_filters(weight, cout, cin),
        Tile::F4 => super::winograd4::transform_filters(weight, cout, cin),
        Tile::S2 => super::winograd_s2::transform_filters(weight, cout, cin),
    }
}

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

/// Forward pass of one image through the Winograd path; shapes were checked by the caller
/// (`input` is `[cin, h, w]`, `out` `[cout, oh, ow]` (`h × w` but for [`Tile::S2`]), `u`
/// `[filter_mats][cout][cin]`, `scratch` at least [`scratch_len`] long).
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    tile: Tile,
    u: &[f32],
    bias: &[f32],
    cin: usize,
    cout: usize,
    input: &[f32],
    h: usize,
    w: usize,
    out: &mut [f32],
    residual: Option<&[f32]>,
    relu: bool,
    scratch: &mut [f32],
    par: Parallelism,
) {
    let (input_tf, output_tf): (InputTransform, OutputTransform) = match tile {
        Tile::F2 => (input_transform, output_transform),
        Tile::F4 => (
            super::winograd4::input_transform,
            super::winograd4::output_transform,
        ),
        Tile::S2 => {
            return super::winograd_s2::forward(
                u, bias, cin, cout, input, h, w, out, residual, relu, scratch, par,
            )
        }
    };
    let (th, tw) = tiles(tile, h, w);
    let t = th * tw;
    let points = tile.points();
    let (v, rest) = scratch.split_at_mut(points * cin * t);
    let m = &mut rest[..points * cout * t];
    let rayon = par == Parallelism::Rayon;

    // 1. Input transform, one task per input channel.
    let fill = |ci: usize, vc: &mut [f32]| {
        input_tf(&input[ci * h * w..(ci + 1) * h * w], h, w, th, tw, vc);
    };
    if rayon && v.len() >= PAR_ELEMS {
        v.par_chunks_mut(points * t)
            .enumerate()
            .for_each(|(ci, vc)| fill(ci, vc));
    } else {
        for (ci, vc) in v.chunks_mut(points * t).enumerate() {
            fill(ci, vc);
        }
    }

    // 2. The 16 products M_k = U_k · V_k, one sequential GEMM per task.
    let v: &[f32] = v;
    let product = |k: usize, mk: &mut [f32]| {
        let a = MatRef::row_major(&u[k * cout * cin..(k + 1) * cout * cin], cout, cin);
        let b = MatRef {
            data: &v[k * t..],
            rows: cin,
            cols: t,
            row_stride: points * t,
            col_stride: 1,
        };
        gemm(
            a,
            b,
            mk,
            t,
            false,
            Parallelism::Sequential,
            Backend::Default,
        );
    };
    if rayon {
        m.par_chunks_mut(cout * t)
            .enumerate()
            .for_each(|(k, mk)| product(k, mk));
    } else {
        for (k, mk) in m.chunks_mut(cout * t).enumerate() {
            product(k, mk);
        }
    }

    // 3. Output transform + epilogue, one task per output channel.
    let m: &[f32] = m;
    let plane = h * w;
    let finish = |co: usize, o: &mut [f32]| {
        let rows: [&[f32]; MAX_POINTS] = std::array::from_fn(|k| {
            if k < points {
                &m[(k * cout + co) * t..(k * cout + co + 1) * t]
            } else {
                &[]
            }
        });
        let res = residual.map(|r| &r[co * plane..(co + 1) * plane]);
        output_tf(&rows, th, tw, h, w, o, bias[co], res, relu);
    };
    if rayon && out.len() >= PAR_ELEMS {
        out.par_chunks_mut(plane)
            .enumerate()
            .for_each(|(co, o)| finish(co, o));
    } else {
        for (co, o) in out.chunks_mut(plane).enumerate() {
            finish(co, o);
        }
    }
}

/// Input transform of one channel: `(plane, h, w, th, tw, v)`.
type InputTransform = fn(&[f32], usize, usize, usize, usize, &mut [f32]);

/// Output transform + epilogue of one channel: `(rows, th, tw, oh, ow, out, bias, residual,
/// relu)`.
type OutputTransform =
    fn(&[&[f32]; MAX_POINTS], usize, usize, usize, usize, &mut [f32], f32, Option<&[f32]>, bool);

/// Fills `rows[r][..cols]` with the zero-padded input (padding 1) starting at padded row `y0`
/// and padded column `x0`: `rows[r][c] = plane[y0 + r − 1, x0 + c − 1]`, 0 outside the image.
/// Shared by all tile kinds (F(2×2): 4 rows from `2·ty`; F(4×4): 6 rows from `4·ty`;
/// stride 2: 5 rows from `4·ty`).
/// Requires `x0 + 1 ≤ w` (the first tile of a chunk lies inside the image).
pub(super) fn gather_patch_rows<const N: usize>(
    plane: &[f32],
    h: usize,
    w: usize,
    y0: usize,
    x0: usize,
    cols: usize,
    rows: &mut [[f32; N]],
) {
    // Valid columns: 1 − x0 ≤ c < w + 1 − x0.
    let c_lo = usize::from(x0 == 0);
    let c_hi = (w + 1 - x0).min(cols);
    for (r, row) in rows.iter_mut().enumerate() {
        let row = &mut row[..cols];
        let iy = y0 + r;
        if iy == 0 || iy > h {
            row.fill(0.0);
            continue;
        }
        let src = &plane[(iy - 1) * w..iy * w];
        row[..c_lo].fill(0.0);
        row[c_hi..].fill(0.0);
        let sx = x0 + c_lo - 1;
        row[c_lo..c_hi].copy_from_slice(&src[sx..sx + (c_hi - c_lo)]);
    }
}

/// `V = Bᵀ·d·B` for every tile of one input channel `plane` (`h × w`), written to `v`
/// (`[16][T]`, `T = th·tw`). The 4×4 patch of tile `(ty, tx)` starts at input row `2·ty − 1`
/// and column `2·tx − 1`; positions outside the image are the zero padding.
fn input_transform(plane: &[f32], h: usize, w: usize, th: usize, tw: usize, v: &mut [f32]) {
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
fn output_transform(
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

/// `dst = act(src + bias (+ res))`.
pub(super) fn epilogue_row(
    dst: &mut [f32],
    src: &[f32],
    bias: f32,
    res: Option<&[f32]>,
    relu: bool,
) {
    match (res, relu) {
        (Some(r), true) => {
            for ((d, &s), &r) in dst.iter_mut().zip(src).zip(r) {
                *d = (s + bias + r).max(0.0);
            }
        }
        (Some(r), false) => {
            for ((d, &s), &r) in dst.iter_mut().zip(src).zip(r) {
                *d = s + (bias + r);
            }
        }
        (None, true) => {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = (s + bias).max(0.0);
            }
        }
        (None, false) => {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = s + bias;
            }
        }
    }
}
