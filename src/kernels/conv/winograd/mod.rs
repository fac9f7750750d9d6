//! Winograd convolutions of 3×3 filters with padding 1: one driver, three variants.
//!
//! Every output tile is computed from the input patch around it as
//! `Y = Aᵀ·[Σ_ci U(co, ci) ⊙ V(ci)]·A` with `U = G·g·Gᵀ` (the transformed filter) and
//! `V = Bᵀ·d·B` (the transformed input patch). For each Winograd-domain point the sum over
//! input channels is one matrix product `M[cout × tiles] = U[cout × cin] · V[cin × tiles]`.
//! The variants differ only in their transforms (one file each):
//! - `f2`: F(2×2, 3×3), stride 1, 16 points (the default for stride 1);
//! - `f4`: F(4×4, 3×3), stride 1, 36 points (opt-in, or for few channels);
//! - `s2`: stride 2 by a polyphase split and F(2, 2), 25 points sharing 16 filter matrices.
//!
//! Points that share a filter matrix form a *class* (in `s2`; every point is its own class in
//! `f2` and `f4`) and are stored next to each other, so that each class is one product
//! `M_k = U_k · [V_p | V_q | …]`.
//!
//! Data layouts (`T` = number of tiles of one image, slots = the points ordered by class):
//! - `U`: `[classes][cout][cin]`, computed once when the convolution is built (on the folded
//!   weights);
//! - `V`: `[cin][points][T]` in the scratch buffer, so that the input transform of one channel
//!   writes one contiguous block (one parallel task per channel); class `k` is then the
//!   strided view `rows = cin, row_stride = points·T` from slot `off_k`;
//! - `M`: class `k` is a `[cout][|k|·T]` block at `off_k·cout·T` in the scratch buffer (one
//!   parallel task per product);
//! - the output transform reads the rows of one output channel and writes that channel's plane
//!   with the epilogue (bias, residual, ReLU) fused in.
//!
//! Every output value is computed by the same sequence of operations whatever the number of
//! threads (the products themselves run sequentially inside their task), so results are
//! bit-identical with 1 or more threads.

use crate::kernels::gemm::{gemm, Backend, MatRef, Parallelism};
use crate::kernels::par;

mod f2;
mod f4;
mod s2;

/// Most Winograd-domain points of any variant (F(4×4): 6×6).
pub(super) const MAX_POINTS: usize = 36;

/// Output tile size of a Winograd variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tile {
    /// F(2×2, 3×3): 4×4 input patches, 16 points, transforms with entries 0, ±1, ±½.
    F2,
    /// F(4×4, 3×3): 6×6 input patches, 36 points (module `f4`).
    F4,
    /// 3×3 stride 2: 2×2 output tiles from 5×5 input patches, 25 points sharing 16 filter
    /// matrices, transforms with entries 0, ±1 (module `s2`).
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
            Tile::F2 => f2::POINTS,
            Tile::F4 => f4::POINTS,
            Tile::S2 => s2::POINTS,
        }
    }

    /// Transformed filter matrices (`[filter_mats][cout][cin]`).
    pub(super) fn filter_mats(self) -> usize {
        match self {
            Tile::F2 => f2::POINTS,
            Tile::F4 => f4::POINTS,
            Tile::S2 => s2::CLASSES,
        }
    }

    /// Points in class `k` (see the module documentation).
    fn class_len(self, k: usize) -> usize {
        match self {
            Tile::F2 | Tile::F4 => 1,
            Tile::S2 => s2::class_len(k),
        }
    }

    /// First slot of class `k`.
    fn class_off(self, k: usize) -> usize {
        match self {
            Tile::F2 | Tile::F4 => k,
            Tile::S2 => s2::CLASS_OFF[k],
        }
    }

    /// `(class, position in class)` of slot `s`.
    fn slot_class(self, s: usize) -> (usize, usize) {
        match self {
            Tile::F2 | Tile::F4 => (s, 0),
            Tile::S2 => s2::SLOT_CLASS[s],
        }
    }

    /// Output size of an `h × w` input.
    fn out_size(self, h: usize, w: usize) -> (usize, usize) {
        match self {
            Tile::F2 | Tile::F4 => (h, w),
            Tile::S2 => ((h - 1) / 2 + 1, (w - 1) / 2 + 1),
        }
    }

    /// The variant's input and output transforms.
    fn transforms(self) -> (InputTransform, OutputTransform) {
        match self {
            Tile::F2 => (f2::input_transform, f2::output_transform),
            Tile::F4 => (f4::input_transform, f4::output_transform),
            Tile::S2 => (s2::input_transform, s2::output_transform),
        }
    }
}

/// Tiles handled per step of the transforms (sized for stack buffers that vectorise well).
pub(super) const CHUNK: usize = 16;

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

/// The filter transform of any variant, laid out `[classes][cout][cin]`.
pub(super) fn transform_filters_for(
    tile: Tile,
    weight: &[f32],
    cout: usize,
    cin: usize,
) -> Vec<f32> {
    match tile {
        Tile::F2 => f2::transform_filters(weight, cout, cin),
        Tile::F4 => f4::transform_filters(weight, cout, cin),
        Tile::S2 => s2::transform_filters(weight, cout, cin),
    }
}

/// Forward pass of one image through the Winograd path; shapes were checked by the caller
/// (`input` is `[cin, h, w]`, `out` `[cout, oh, ow]` with `(oh, ow)` from the tile kind
/// (`h × w` but for [`Tile::S2`]), `u` `[filter_mats][cout][cin]`, `scratch` at least
/// [`scratch_len`] long).
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
    let (input_tf, output_tf) = tile.transforms();
    let (oh, ow) = tile.out_size(h, w);
    let (th, tw) = tiles(tile, oh, ow);
    let t = th * tw;
    let points = tile.points();
    let classes = tile.filter_mats();
    let (v, rest) = scratch.split_at_mut(points * cin * t);
    let m = &mut rest[..points * cout * t];
    let rayon = par == Parallelism::Rayon;

    // 1. Input transform, one task per input channel.
    let fill = |ci: usize, vc: &mut [f32]| {
        input_tf(&input[ci * h * w..(ci + 1) * h * w], h, w, th, tw, vc);
    };
    if rayon && par::splits(v.len()) {
        par::for_each_chunk(v, points * t, fill);
    } else {
        for (ci, vc) in v.chunks_mut(points * t).enumerate() {
            fill(ci, vc);
        }
    }

    // 2. One product per class, M_k = U_k · [V_p | V_q | …], sequential inside its task.
    let v: &[f32] = v;
    let product = |k: usize, mk: &mut [f32]| {
        let n = tile.class_len(k) * t;
        let a = MatRef::row_major(&u[k * cout * cin..(k + 1) * cout * cin], cout, cin);
        let b = MatRef {
            data: &v[tile.class_off(k) * t..],
            rows: cin,
            cols: n,
            row_stride: points * t,
            col_stride: 1,
        };
        gemm(
            a,
            b,
            mk,
            n,
            false,
            Parallelism::Sequential,
            Backend::Default,
        );
    };
    let mut blocks: [&mut [f32]; MAX_POINTS] = std::array::from_fn(|_| <&mut [f32]>::default());
    let mut tail: &mut [f32] = &mut *m;
    for (k, blk) in blocks[..classes].iter_mut().enumerate() {
        let (head, rest) = std::mem::take(&mut tail).split_at_mut(tile.class_len(k) * cout * t);
        *blk = head;
        tail = rest;
    }
    let blocks = &mut blocks[..classes];
    if rayon {
        par::for_each_chunk(blocks, 1, |k, mk| product(k, mk[0]));
    } else {
        for (k, mk) in blocks.iter_mut().enumerate() {
            product(k, mk);
        }
    }

    // 3. Output transform + epilogue, one task per output channel.
    let m: &[f32] = m;
    let plane = oh * ow;
    let finish = |co: usize, o: &mut [f32]| {
        let rows: [&[f32]; MAX_POINTS] = std::array::from_fn(|s| {
            if s < points {
                let (k, q) = tile.slot_class(s);
                let at = (tile.class_off(k) * cout + co * tile.class_len(k) + q) * t;
                &m[at..at + t]
            } else {
                &[]
            }
        });
        let res = residual.map(|r| &r[co * plane..(co + 1) * plane]);
        output_tf(&rows, th, tw, oh, ow, o, bias[co], res, relu);
    };
    if rayon && par::splits(out.len()) {
        par::for_each_chunk(out, plane, finish);
    } else {
        for (co, o) in out.chunks_mut(plane).enumerate() {
            finish(co, o);
        }
    }
}

/// Input transform of one channel: `(plane, h, w, th, tw, v)`.
type InputTransform = fn(&[f32], usize, usize, usize, usize, &mut [f32]);

/// Output transform + epilogue of one channel: `(rows, th, tw, oh, ow, out, bias, residual,
/// relu)`; `rows[s]` holds slot `s` of all `T` tiles.
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
