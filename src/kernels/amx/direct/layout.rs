//! The padded channels-last image a direct convolution reads, its grid of output positions,
//! and the transpositions that fill it from planes.

use super::{ROWS, ROW_BYTES};
use crate::kernels::pool::maxpool_out;
use crate::kernels::wide::Wide;

/// The shape of a convolution on a channels-last padded image: a `size × size` window
/// (odd) with padding `(size − 1) / 2` ("same" at stride 1) and stride `stride`.
///
/// A grid of [`NARROW`] channels is *narrow* (an RGB image with a fourth channel of zero
/// weight): a tile row of 64 bytes then holds 16 consecutive `u8` pixels (8 bf16 ones), so
/// the window's columns become words of `k` and each window row is one chunk (`size` chunks,
/// not `size²`), read from the pixel of column 0. The row's pixels past the window meet zero
/// weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grid {
    /// Channels.
    pub cin: usize,
    /// Rows of the input image.
    pub h: usize,
    /// Columns of the input image.
    pub w: usize,
    /// Window size (odd); the padding is `(size − 1) / 2`.
    pub size: usize,
    /// Stride (both axes).
    pub stride: usize,
}

/// Channels of a narrow grid (see [`Grid`]).
pub(crate) const NARROW: usize = 4;

impl Grid {
    /// Whether a tile row holds several pixels (see [`Grid`]).
    pub(crate) fn narrow(self) -> bool {
        self.cin == NARROW
    }

    /// The taps, and the chunks of input channels per tap, of a tile product: `size²` taps
    /// of `cin / ch` chunks (`ch` channels per tile row), or for a narrow grid `size` taps
    /// (the window's rows) of one chunk.
    pub(super) fn taps_chunks(self, ch: usize) -> (usize, usize) {
        if self.narrow() {
            (self.size, 1)
        } else {
            (self.size * self.size, self.cin / ch)
        }
    }

    /// The window offset `(ky, kx)` that tap `t` of [`Grid::taps_chunks`] reads from.
    pub(super) fn tap(self, t: usize) -> (usize, usize) {
        if self.narrow() {
            (t, 0)
        } else {
            (t / self.size, t % self.size)
        }
    }

    /// Whether the direct path takes a `kh × kw` window with stride `stride` and padding
    /// `pad` (channels and image size aside, see [`Grid::supported`]): square, odd, wider than
    /// 1 (1×1 convolutions keep the packed path, measured faster: their packing is a plain
    /// interleave), "same" padding, stride 1 or 2.
    pub(crate) fn takes_window(kh: usize, kw: usize, stride: usize, pad: usize) -> bool {
        kw == kh && kh > 1 && kh % 2 == 1 && pad == (kh - 1) / 2 && (1..=2).contains(&stride)
    }

    pub(super) fn pad(self) -> usize {
        (self.size - 1) / 2
    }

    /// Pixels per padded input row.
    pub(crate) fn wp(self) -> usize {
        self.w + 2 * self.pad()
    }

    /// Output rows and columns.
    pub(crate) fn out_hw(self) -> (usize, usize) {
        (
            (self.h - 1) / self.stride + 1,
            (self.w - 1) / self.stride + 1,
        )
    }

    /// Grid positions per output row: at stride 1 the padded row (16 consecutive positions
    /// then read 16 consecutive pixels, across row ends); otherwise the output row rounded up
    /// to whole tiles of 16, so that no tile crosses a row.
    pub(super) fn gw(self) -> usize {
        if self.stride == 1 {
            self.wp()
        } else {
            self.out_hw().1.next_multiple_of(16)
        }
    }

    /// Rows and columns of the 3×3 / stride 2 / padding 1 max-pool of the output (a ResNet
    /// stem's, [`super::conv_pooled`]).
    pub(crate) fn pooled_hw(self) -> (usize, usize) {
        let (oh, ow) = self.out_hw();
        (maxpool_out(oh, 3, 2, 1), maxpool_out(ow, 3, 2, 1))
    }

    /// Blocks of 32 grid positions.
    pub(super) fn blocks(self) -> usize {
        (self.out_hw().0 * self.gw()).div_ceil(ROWS)
    }

    /// The pixel that row 0 of the tile starting at grid position `g0` (a multiple of 16)
    /// reads for tap `(ky, kx)`; row `r` reads the pixel `stride·r` after it.
    pub(super) fn base(self, g0: usize, ky: usize, kx: usize) -> usize {
        let (s, wp) = (self.stride, self.wp());
        if s == 1 {
            g0 + ky * wp + kx
        } else {
            let (oy, ox) = (g0 / self.gw(), g0 % self.gw());
            (s * oy + ky) * wp + s * ox + kx
        }
    }

    /// Pixels of the buffer: the padded image, and every pixel a tile of the last block reads
    /// for its last tap (a narrow grid's tile rows read 16 pixels of `u8`, 8 of bf16).
    pub(super) fn pixels(self) -> usize {
        let k = self.size - 1;
        let (ky, kx) = self.tap(self.taps_chunks(ROW_BYTES).0 - 1);
        debug_assert_eq!((ky, kx), (k, if self.narrow() { 0 } else { k }));
        let span = if self.narrow() { ROW_BYTES / NARROW } else { 1 };
        let last = self.base(self.blocks() * ROWS - 16, ky, kx) + 15 * self.stride + span;
        last.max((self.h + 2 * self.pad()) * self.wp())
    }

    /// Bytes of the buffer.
    pub(crate) fn len(self) -> usize {
        self.pixels() * self.cin
    }

    /// Whether the direct path handles this shape for inputs of `T` (`u8` or bf16 bits): an
    /// odd window, stride 1 or 2, whole tile rows of channels (64·n `u8` or 32·n bf16) or a
    /// narrow grid whose window fits a tile row (16 `u8` pixels, 8 bf16), a non-empty image.
    pub(crate) fn supported<T>(self) -> bool {
        let ch = ROW_BYTES / std::mem::size_of::<T>();
        let channels = if self.narrow() {
            self.size <= ch / NARROW
        } else {
            self.cin > 0 && self.cin.is_multiple_of(ch)
        };
        self.size % 2 == 1 && (1..=2).contains(&self.stride) && channels && self.h > 0 && self.w > 0
    }
}

/// Writes the `[cin, h, w]` planes `planes` into `dst` ([`Grid::len`] bytes) as the padded
/// channels-last image of `grid`, zeros everywhere else; row by row on the rayon pool when
/// `parallel`.
///
/// # Panics
/// If a length does not match `grid`.
pub(crate) fn fill_channels_last(planes: &[u8], grid: Grid, dst: &mut [u8], parallel: bool) {
    let Grid { cin, h, w, .. } = grid;
    assert_eq!(planes.len(), cin * h * w, "channels-last: planes length");
    fill_rows(grid, dst, 0, parallel, |y, row| {
        transpose_row(planes, h * w, y * w, cin, w, row)
    });
}

/// [`fill_channels_last`] for bf16: the f32 planes `x` rounded to bf16 ([`to_bf16`]) on the
/// way, with AVX-512 where the CPU has it (every CPU with AMX).
///
/// [`to_bf16`]: crate::kernels::bf16::to_bf16
pub(crate) fn fill_channels_last_bf16(x: &[f32], grid: Grid, dst: &mut [u16], parallel: bool) {
    fill_channels_last_bf16_with(Wide::detect(true), x, grid, dst, parallel);
}

/// [`fill_channels_last_bf16`] with the loops of `wide` (every choice gives the same bits).
pub(super) fn fill_channels_last_bf16_with(
    wide: Wide,
    x: &[f32],
    grid: Grid,
    dst: &mut [u16],
    parallel: bool,
) {
    let Grid { cin, h, w, .. } = grid;
    assert_eq!(x.len(), cin * h * w, "channels-last: planes length");
    assert!(cin.is_multiple_of(2), "channels-last: odd channels");
    fill_rows(grid, dst, 0, parallel, |y, row| match wide {
        Wide::Baseline => bf16_row::<false>(x, h * w, y * w, cin, w, row),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected.
        Wide::Avx512(_) => unsafe { bf16_row_avx512(x, h * w, y * w, cin, w, row) },
    });
}

/// `row[x·cin + c] = to_bf16(planes[c·plane + at + x])` for `x < w`, `c < cin` (even): one
/// image row from f32 planes to channels-last bf16, in blocks of 64 channels × 32 pixels,
/// each a 32 × 32 matrix of words (two channels' bits per word, the even one low) transposed
/// at once, after which a pixel's words are its channels in order.
#[inline(always)]
fn bf16_row<const AVX512: bool>(
    planes: &[f32],
    plane: usize,
    at: usize,
    cin: usize,
    w: usize,
    row: &mut [u16],
) {
    use crate::kernels::bf16::to_bf16;
    for c0 in (0..cin).step_by(64) {
        let words = (cin - c0).min(64) / 2;
        for x0 in (0..w).step_by(32) {
            let xn = (w - x0).min(32);
            let mut block = [[0u32; 32]; 32];
            for (i, b) in block.iter_mut().enumerate().take(words) {
                let even = &planes[(c0 + 2 * i) * plane + at + x0..][..xn];
                let odd = &planes[(c0 + 2 * i + 1) * plane + at + x0..][..xn];
                for ((b, &e), &o) in b.iter_mut().zip(even).zip(odd) {
                    *b = u32::from(to_bf16(e)) | u32::from(to_bf16(o)) << 16;
                }
            }
            let mut t = [[0u32; 32]; 32];
            #[cfg(target_arch = "x86_64")]
            if AVX512 {
                // SAFETY: `AVX512` is true only in `bf16_row_avx512`, which requires AVX512F.
                unsafe { super::sinks::transpose32_avx512(&block, &mut t) };
            } else {
                super::sinks::transpose32(&block, &mut t);
            }
            #[cfg(not(target_arch = "x86_64"))]
            super::sinks::transpose32(&block, &mut t);
            for (j, tw) in t.iter().enumerate().take(xn) {
                let d = &mut row[(x0 + j) * cin + c0..][..2 * words];
                for (pair, &wd) in d.chunks_exact_mut(2).zip(tw) {
                    pair[0] = wd as u16;
                    pair[1] = (wd >> 16) as u16;
                }
            }
        }
    }
}

/// [`bf16_row`] compiled with AVX-512 (its transposition and rounding loops run 512 bits
/// wide).
///
/// # Safety
/// The CPU must run AVX512F and AVX512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn bf16_row_avx512(
    planes: &[f32],
    plane: usize,
    at: usize,
    cin: usize,
    w: usize,
    row: &mut [u16],
) {
    bf16_row::<true>(planes, plane, at, cin, w, row)
}

/// Zeroes the padding of `grid`'s channels-last image in `dst` (every element but the
/// image's pixels, which are left as they are, for a writer of the image itself).
///
/// # Panics
/// If `dst.len()` is not [`Grid::len`].
pub(crate) fn zero_padding<T: Copy + Default + Send + Sync>(grid: Grid, dst: &mut [T]) {
    fill_rows(grid, dst, T::default(), false, |_, _| {});
}

/// Writes the padded channels-last image of `grid` into `dst` ([`Grid::len`] elements):
/// `row(y, pixels)` writes the `w·cin` elements of image row `y`, and every other element is
/// `pad_value` (such as the zero point of an input quantised with one); row by row on the
/// rayon pool when `parallel`.
///
/// # Panics
/// If `dst.len()` is not [`Grid::len`].
pub(crate) fn fill_padded<T: Copy + Send + Sync>(
    grid: Grid,
    dst: &mut [T],
    pad_value: T,
    parallel: bool,
    row: impl Fn(usize, &mut [T]) + Sync,
) {
    fill_rows(grid, dst, pad_value, parallel, row);
}

/// `px[i] = [f(x[0·plane + at + i]), …, f(x[(cin − 1)·plane + at + i]), pad, …]` for every
/// pixel `i` of `px`: one row of a narrow image (a stem's, [`NARROW`] elements per pixel)
/// from `cin ≤ NARROW` f32 planes, a whole pixel at a time (storing one element at a time
/// does not vectorise: the scalar loop took 50 µs of a 1.7 ms ResNet-18 int8 backbone).
#[inline(always)]
pub(crate) fn narrow_row<T: Copy>(
    x: &[f32],
    plane: usize,
    at: usize,
    cin: usize,
    pad: T,
    f: impl Fn(f32) -> T,
    px: &mut [[T; NARROW]],
) {
    let w = px.len();
    let src = |c: usize| (c < cin).then(|| &x[c * plane + at..][..w]);
    match (src(0), src(1), src(2), src(3)) {
        // A stem's three channels (the case worth a loop of its own).
        (Some(r), Some(g), Some(b), None) => {
            for (((p, &r), &g), &b) in px.iter_mut().zip(r).zip(g).zip(b) {
                *p = [f(r), f(g), f(b), pad];
            }
        }
        _ => {
            for (i, p) in px.iter_mut().enumerate() {
                *p = std::array::from_fn(|c| src(c).map_or(pad, |x| f(x[i])));
            }
        }
    }
}

/// The padded rows of `grid` in `dst`: `pad_value`, or `row(y, pixels)` between the padding
/// of image row `y` (which must write all `w·cin` elements of `pixels`, unless another writer
/// fills them); `pad_value` after the image.
fn fill_rows<T: Copy + Send + Sync>(
    grid: Grid,
    dst: &mut [T],
    pad_value: T,
    parallel: bool,
    row: impl Fn(usize, &mut [T]) + Sync,
) {
    let Grid { cin, h, w, .. } = grid;
    let (pad, wp) = (grid.pad(), grid.wp());
    assert_eq!(dst.len(), grid.len(), "channels-last: buffer length");
    let row_len = wp * cin;
    let (body, tail) = dst.split_at_mut((h + 2 * pad) * row_len);
    tail.fill(pad_value);
    // Padded row `yy`: padding, or image row `yy − pad` between `pad` padding pixels each side.
    let one = |(yy, r): (usize, &mut [T])| {
        if yy < pad || yy >= pad + h {
            r.fill(pad_value);
            return;
        }
        let (left, rest) = r.split_at_mut(pad * cin);
        let (mid, right) = rest.split_at_mut(w * cin);
        left.fill(pad_value);
        right.fill(pad_value);
        row(yy - pad, mid);
    };
    if parallel && crate::kernels::par::splits(cin * h * w) {
        crate::kernels::par::for_each_chunk(body, row_len, |i, r| one((i, r)));
    } else {
        body.chunks_mut(row_len).enumerate().for_each(one);
    }
}

/// `row[x·cin + c] = planes[c·plane + at + x]` for `x < w`, `c < cin`: one image row from
/// planes to channels-last, in 16 × 16 byte blocks (a block past the row's end reads the
/// following bytes of the plane, or zeros past the last plane, and stores only its `w` pixels).
fn transpose_row(planes: &[u8], plane: usize, at: usize, cin: usize, w: usize, row: &mut [u8]) {
    for c0 in (0..cin).step_by(16) {
        let cn = 16.min(cin - c0);
        for x0 in (0..w).step_by(16) {
            let xn = 16.min(w - x0);
            let mut block = [[0u8; 16]; 16];
            for (i, b) in block.iter_mut().enumerate().take(cn) {
                let src = &planes[(c0 + i) * plane + at + x0..];
                // Whole blocks (all but the last of the last plane) as one 16-byte move: a
                // copy of a variable length is a call of `memcpy`, which cost as much as
                // the transposition (and LLVM merges two inline branches into one).
                match src.first_chunk::<16>() {
                    Some(s) => *b = *s,
                    None => copy_short(src, b),
                }
            }
            let t = transpose16(&block);
            for (j, r) in t.iter().enumerate().take(xn) {
                let d = &mut row[(x0 + j) * cin + c0..];
                match d.first_chunk_mut::<16>() {
                    Some(d) if cn == 16 => *d = *r,
                    _ => copy_short(&r[..cn], d),
                }
            }
        }
    }
}

/// `dst[..src.len()] = src`: the rare short copies of [`transpose_row`], kept out of its loop.
#[cold]
#[inline(never)]
fn copy_short(src: &[u8], dst: &mut [u8]) {
    dst[..src.len()].copy_from_slice(src);
}

/// The transpose of a 16 × 16 byte matrix: four rounds of byte interleaving (SSE2 unpacks on
/// x86-64, which every x86-64 CPU runs; plain loops elsewhere).
#[inline]
pub(super) fn transpose16(m: &[[u8; 16]; 16]) -> [[u8; 16]; 16] {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of the x86-64 baseline; the loads and stores are of 16-byte
        // arrays, unaligned accesses.
        unsafe {
            let mut r: [__m128i; 16] = [_mm_setzero_si128(); 16];
            for (v, row) in r.iter_mut().zip(m) {
                *v = _mm_loadu_si128(row.as_ptr().cast());
            }
            // Each round interleaves the bytes of rows i and i + 8 into rows 2i and 2i + 1:
            // after four rounds, row j holds column j in order.
            for _ in 0..4 {
                let mut t = [_mm_setzero_si128(); 16];
                for i in 0..8 {
                    let (a, b) = (r[i], r[i + 8]);
                    t[2 * i] = _mm_unpacklo_epi8(a, b);
                    t[2 * i + 1] = _mm_unpackhi_epi8(a, b);
                }
                r = t;
            }
            let mut out = [[0u8; 16]; 16];
            for (row, v) in out.iter_mut().zip(&r) {
                _mm_storeu_si128(row.as_mut_ptr().cast(), *v);
            }
            out
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mut out = [[0u8; 16]; 16];
        for (i, row) in m.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                out[j][i] = v;
            }
        }
        out
    }
}

/// The channels-last image of [`fill_channels_last`] (`u8`) or [`fill_channels_last_bf16`]
/// (bf16 bits), checked against its grid.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelsLast<'a, T> {
    pub(super) data: &'a [T],
    pub(super) grid: Grid,
}

impl<'a, T> ChannelsLast<'a, T> {
    /// Wraps `data` (filled for `grid`); `None` if the grid is not [`Grid::supported`] or the
    /// length is wrong.
    pub(crate) fn new(data: &'a [T], grid: Grid) -> Option<ChannelsLast<'a, T>> {
        (grid.supported::<T>() && data.len() == grid.len()).then_some(ChannelsLast { data, grid })
    }
}
