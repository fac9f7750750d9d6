//! Direct int8 and bf16 convolution on AMX tiles with channels-last activations: a
//! `size × size` window (odd) with "same" padding (3×3 pad 1, …), at stride 1 or 2, without
//! im2col and without packing the activations.
//!
//! **Why.** The packed path ([`super::product`]) rebuilds the activations as 16-column panels
//! for every convolution (a 3×3 window reads each input byte nine times while packing; a
//! strided one writes its im2col matrix first). Here the activations are the tiles' *first*
//! operand, `A` (16 rows × 64 bytes), read straight from a channels-last image: a row of an `A`
//! tile is one pixel's 64 bytes of consecutive channels (64 `u8` or 32 bf16), and the tile's
//! 16 rows are 16 pixels, `stride·cin` elements apart. The weights are the second operand,
//! `B`, packed once (`tdpbusd`: unsigned `A`, signed `B`, exact `i32` sums; `tdpbf16ps`: f32
//! sums, added in the hardware's order as in the packed AMX path). On Emerald Rapids, 2
//! threads, WRN-50-2's stride-1 3×3 int8 convolutions at 224² took 0.6–0.9× the time of packing
//! and multiplying (most gained at 56², where the packing weighs most).
//!
//! **The grid.** The image is stored with its zero padding, `wp = w + 2·pad` pixels per row,
//! pixel `(y, x)` of the input at index `(y + pad)·wp + x + pad`. The products run over *grid
//! positions*, 16 per tile:
//! - stride 1: `g = oy·wp + ox` for `oy < h` and every `ox < wp`; tap `(ky, kx)` of position
//!   `g` reads pixel `g + ky·wp + kx`, so that 16 consecutive positions read 16 consecutive
//!   pixels for every tap, across row ends. The `2·pad` positions per row with `ox ≥ w` are
//!   computed and discarded (12.5 % of the work at 14², 3.4 % at 56²);
//! - stride 2: `g = oy·gw + ox` with the output row rounded up to whole tiles (`gw`, a multiple
//!   of 16), so that a tile stays within one output row; tap `(ky, kx)` of `(oy, ox)` reads
//!   pixel `(2·oy + ky)·wp + 2·ox + kx`. The positions with `ox` beyond the output row are
//!   discarded (12.5 % at 28 and 14 columns).
//!
//! **Blocks.** A block is 32 positions (two `A` tiles) × 32 output channels (two `B` tiles):
//! four sum tiles, summed over `k` in chunks of 64 input channels of one tap (`k` in tap-major
//! order, so the weights are packed for it: [`DirectWeights`]). The sums come out
//! position-major; they are transposed in cache and handed to the same epilogues as the packed
//! path ([`Emit`]), one output channel and one run of valid positions at a time. A task is a
//! run of output-channel pairs (disjoint rows of the output); within it, each pair of output
//! channels meets every block of positions, so that its weights stay in the level-2 cache.
//! Every sum is exact, accumulated in increasing chunk order, so the result depends neither on
//! the split nor on the thread.

use super::{AmxOp, Bf16, Emit, Int8, Sums, COLS, ROWS};
use crate::kernels::wide::Wide;

/// Bytes of a tile row: one chunk of input channels (64 `u8` or 32 bf16).
const ROW_BYTES: usize = 64;

/// A tile product of the direct convolution and the element of its channels-last input.
pub(crate) trait DirectOp: AmxOp {
    /// `u8` (int8) or `u16` (bf16 bits).
    type Elem: Copy + Default + Send + Sync;
    /// Input channels per 32-bit word of a tile row (4 or 2).
    const PER_WORD: usize;
}

impl DirectOp for Int8 {
    type Elem = u8;
    const PER_WORD: usize = 4;
}

impl DirectOp for Bf16 {
    type Elem = u16;
    const PER_WORD: usize = 2;
}

/// Input channels per chunk of an op: one tile row.
pub(crate) const fn chunk_channels<O: DirectOp>() -> usize {
    16 * O::PER_WORD
}

/// The weights of a `size × size` convolution as AMX `B` tiles for channels-last inputs:
/// per pair of 16-channel output tiles, per chunk (tap `t`, one tile row of input channels
/// from `ch·c`, in the order `t·(cin / ch) + c`, with `ch` = 64 for int8 and 32 for bf16), two
/// tiles of 16 words (four `i8` or two bf16 input channels each, the lowest channel in the low
/// bits) × 16 output channels.
#[derive(Debug, Clone)]
pub(crate) struct DirectWeights {
    tiles: Vec<u32>,
    m: usize,
    cin: usize,
    size: usize,
    /// Input channels per word.
    per_word: usize,
}

impl DirectWeights {
    /// Packs the `m × (cin·size²)` int8 weights `q` (row-major, column `ci·size² + t` for
    /// input channel `ci` and tap `t = ky·size + kx`, the im2col order). `None` unless `cin`
    /// is a positive multiple of 64 (every convolution of a torchvision ResNet after the
    /// stem).
    pub(crate) fn new(q: &[i8], m: usize, cin: usize, size: usize) -> Option<DirectWeights> {
        Self::pack(q.len(), m, cin, size, 4, |at| u32::from(q[at] as u8))
    }

    /// [`DirectWeights::new`] for bf16 weights (the bits of each, as [`to_bf16`] makes them);
    /// `cin` must be a positive multiple of 32.
    ///
    /// [`to_bf16`]: crate::kernels::bf16::to_bf16
    pub(crate) fn new_bf16(w: &[u16], m: usize, cin: usize, size: usize) -> Option<DirectWeights> {
        Self::pack(w.len(), m, cin, size, 2, |at| u32::from(w[at]))
    }

    /// The layout, `elem(i)` giving the bits of element `i` of the weight matrix.
    fn pack(
        len: usize,
        m: usize,
        cin: usize,
        size: usize,
        per_word: usize,
        elem: impl Fn(usize) -> u32,
    ) -> Option<DirectWeights> {
        let taps = size * size;
        let ch = 16 * per_word;
        if cin == 0 || !cin.is_multiple_of(ch) || m == 0 || len != m * cin * taps {
            return None;
        }
        let cc = cin / ch;
        let chunks = taps * cc;
        let pairs = m.div_ceil(COLS);
        let bits = 32 / per_word;
        let mut tiles = vec![0u32; pairs * chunks * 2 * 256];
        for (i, tile) in tiles.chunks_exact_mut(256).enumerate() {
            let (pair, rest) = (i / (2 * chunks), i % (2 * chunks));
            let (chunk, half) = (rest / 2, rest % 2);
            let (t, c) = (chunk / cc, chunk % cc);
            for (word, row) in tile.chunks_exact_mut(16).enumerate() {
                for (j, d) in row.iter_mut().enumerate() {
                    let oc = pair * COLS + half * 16 + j;
                    if oc >= m {
                        continue;
                    }
                    let ci = c * ch + per_word * word;
                    *d = (0..per_word)
                        .map(|e| elem(oc * cin * taps + (ci + e) * taps + t) << (bits * e))
                        .fold(0, |a, v| a | v);
                }
            }
        }
        Some(DirectWeights {
            tiles,
            m,
            cin,
            size,
            per_word,
        })
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.tiles.len() * 4
    }

    /// The bits of every element of the weight matrix, read back (im2col order).
    fn elements(&self) -> Vec<u32> {
        let (cin, taps, per_word) = (self.cin, self.size * self.size, self.per_word);
        let ch = 16 * per_word;
        let (cc, chunks) = (cin / ch, self.chunks());
        let bits = 32 / per_word;
        let mask = if bits == 32 {
            u32::MAX
        } else {
            (1 << bits) - 1
        };
        let mut out = vec![0u32; self.m * cin * taps];
        for (oc, row) in out.chunks_exact_mut(cin * taps).enumerate() {
            let (pair, half, j) = (oc / COLS, oc % COLS / 16, oc % 16);
            for (col, v) in row.iter_mut().enumerate() {
                let (ci, t) = (col / taps, col % taps);
                let (c, word, e) = (ci / ch, ci % ch / per_word, ci % per_word);
                let chunk = t * cc + c;
                let w = self.tiles[(((pair * chunks + chunk) * 2 + half) * 16 + word) * 16 + j];
                *v = w >> (bits * e) & mask;
            }
        }
        out
    }

    /// The int8 weights [`DirectWeights::new`] packed, read back (im2col order).
    pub(crate) fn matrix(&self) -> Vec<i8> {
        self.elements().into_iter().map(|v| v as u8 as i8).collect()
    }

    /// The bf16 weights [`DirectWeights::new_bf16`] packed, read back as f32 (exactly).
    pub(crate) fn matrix_bf16(&self) -> Vec<f32> {
        self.elements()
            .into_iter()
            .map(|v| f32::from_bits(v << 16))
            .collect()
    }

    /// Chunks (tap × one tile row of input channels).
    fn chunks(&self) -> usize {
        self.size * self.size * (self.cin / (16 * self.per_word))
    }
}

/// The shape of a convolution on a channels-last padded image: a `size × size` window
/// (odd) with padding `(size − 1) / 2` ("same" at stride 1) and stride `stride`.
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

impl Grid {
    fn pad(self) -> usize {
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
    fn gw(self) -> usize {
        if self.stride == 1 {
            self.wp()
        } else {
            self.out_hw().1.next_multiple_of(16)
        }
    }

    /// Blocks of 32 grid positions.
    fn blocks(self) -> usize {
        (self.out_hw().0 * self.gw()).div_ceil(ROWS)
    }

    /// The pixel that row 0 of the tile starting at grid position `g0` (a multiple of 16)
    /// reads for tap `(ky, kx)`; row `r` reads the pixel `stride·r` after it.
    fn base(self, g0: usize, ky: usize, kx: usize) -> usize {
        let (s, wp) = (self.stride, self.wp());
        if s == 1 {
            g0 + ky * wp + kx
        } else {
            let (oy, ox) = (g0 / self.gw(), g0 % self.gw());
            (s * oy + ky) * wp + s * ox + kx
        }
    }

    /// Pixels of the buffer: the padded image, and every pixel a tile of the last block reads
    /// for its last tap.
    fn pixels(self) -> usize {
        let k = self.size - 1;
        let last = self.base(self.blocks() * ROWS - 16, k, k) + 15 * self.stride + 1;
        last.max((self.h + 2 * self.pad()) * self.wp())
    }

    /// Bytes of the buffer.
    pub(crate) fn len(self) -> usize {
        self.pixels() * self.cin
    }

    /// Whether the direct path handles this shape for inputs of `T` (`u8` or bf16 bits): an
    /// odd window, stride 1 or 2, whole tile rows of channels (64·n `u8` or 32·n bf16), a
    /// non-empty image.
    pub(crate) fn supported<T>(self) -> bool {
        let ch = ROW_BYTES / std::mem::size_of::<T>();
        self.size % 2 == 1
            && (1..=2).contains(&self.stride)
            && self.cin > 0
            && self.cin.is_multiple_of(ch)
            && self.h > 0
            && self.w > 0
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
    fill_rows(grid, dst, parallel, |y, row| {
        transpose_row(planes, h * w, y * w, cin, w, row)
    });
}

/// [`fill_channels_last`] for bf16: the f32 planes `x` rounded to bf16 ([`to_bf16`]) on the
/// way.
///
/// [`to_bf16`]: crate::kernels::bf16::to_bf16
pub(crate) fn fill_channels_last_bf16(x: &[f32], grid: Grid, dst: &mut [u16], parallel: bool) {
    use crate::kernels::bf16::to_bf16;
    let Grid { cin, h, w, .. } = grid;
    assert_eq!(x.len(), cin * h * w, "channels-last: planes length");
    let plane = h * w;
    fill_rows(grid, dst, parallel, |y, row| {
        // 16 channels × 16 pixels at a time: rows of the planes in, pixels out.
        for c0 in (0..cin).step_by(16) {
            let cn = 16.min(cin - c0);
            for x0 in (0..w).step_by(16) {
                let xn = 16.min(w - x0);
                let mut block = [[0u16; 16]; 16];
                for (i, b) in block.iter_mut().enumerate().take(cn) {
                    let src = &x[(c0 + i) * plane + y * w + x0..][..xn];
                    for (d, &v) in b.iter_mut().zip(src) {
                        *d = to_bf16(v);
                    }
                }
                for j in 0..xn {
                    let d = &mut row[(x0 + j) * cin + c0..][..cn];
                    for (i, d) in d.iter_mut().enumerate() {
                        *d = block[i][j];
                    }
                }
            }
        }
    });
}

/// The padded rows of `grid` in `dst`: zeros, or `row(y, pixels)` between the padding of
/// image row `y` (which must write all `w·cin` elements of `pixels`); zeros after the image.
fn fill_rows<T: Copy + Default + Send>(
    grid: Grid,
    dst: &mut [T],
    parallel: bool,
    row: impl Fn(usize, &mut [T]) + Sync,
) {
    let Grid { cin, h, w, .. } = grid;
    let (pad, wp) = (grid.pad(), grid.wp());
    assert_eq!(dst.len(), grid.len(), "channels-last: buffer length");
    let row_len = wp * cin;
    let (body, tail) = dst.split_at_mut((h + 2 * pad) * row_len);
    tail.fill(T::default());
    // Padded row `yy`: zeros, or image row `yy − pad` between `pad` zero pixels each side.
    let one = |(yy, r): (usize, &mut [T])| {
        if yy < pad || yy >= pad + h {
            r.fill(T::default());
            return;
        }
        let (left, rest) = r.split_at_mut(pad * cin);
        let (mid, right) = rest.split_at_mut(w * cin);
        left.fill(T::default());
        right.fill(T::default());
        row(yy - pad, mid);
    };
    if parallel && cin * h * w >= crate::kernels::conv::PAR_ELEMS {
        use rayon::prelude::*;
        body.par_chunks_mut(row_len).enumerate().for_each(one);
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
                let n = src.len().min(16);
                b[..n].copy_from_slice(&src[..n]);
            }
            let t = transpose16(&block);
            for (j, r) in t.iter().enumerate().take(xn) {
                row[(x0 + j) * cin + c0..][..cn].copy_from_slice(&r[..cn]);
            }
        }
    }
}

/// The transpose of a 16 × 16 byte matrix: four rounds of byte interleaving (SSE2 unpacks on
/// x86-64, which every x86-64 CPU runs; plain loops elsewhere).
#[inline]
fn transpose16(m: &[[u8; 16]; 16]) -> [[u8; 16]; 16] {
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
    data: &'a [T],
    grid: Grid,
}

impl<'a, T> ChannelsLast<'a, T> {
    /// Wraps `data` (filled for `grid`); `None` if the grid is not [`Grid::supported`] or the
    /// length is wrong.
    pub(crate) fn new(data: &'a [T], grid: Grid) -> Option<ChannelsLast<'a, T>> {
        (grid.supported::<T>() && data.len() == grid.len()).then_some(ChannelsLast { data, grid })
    }
}

/// The convolution of `x` with `w`: `out` is `[m, h·w]` (row-major, `m` the weights' output
/// channels); calls `emit(c, j0, sums, segment)` for every output channel `c` and run of
/// output pixels `j0 .. j0 + segment.len()` (never across an image row) with their exact sums
/// `Σ_{t, ci} q[c, ci, t] · x[ci, pixel + tap t]` (the padding reads zeros). Tasks are runs of
/// output-channel pairs, about two per rayon thread when `parallel`.
///
/// # Panics
/// If the weights' window or channels do not match `x`, or `out.len() != m·h·w`.
pub(crate) fn conv<O: DirectOp, T: Send>(
    op: O,
    w: &DirectWeights,
    x: ChannelsLast<'_, O::Elem>,
    out: &mut [T],
    parallel: bool,
    emit: &impl Emit<O::Sum, T>,
) {
    let grid = x.grid;
    assert!(
        w.cin == grid.cin && w.size == grid.size && w.per_word == O::PER_WORD,
        "amx direct: weights for {}×{} on {} channels, input {}×{} on {}",
        w.size,
        w.size,
        w.cin,
        grid.size,
        grid.size,
        grid.cin
    );
    let (oh, ow) = grid.out_hw();
    let p = oh * ow;
    assert_eq!(out.len(), w.m * p, "amx direct: output length");
    let pairs = w.m.div_ceil(COLS);
    let task_pairs = if parallel {
        pairs.div_ceil(2 * rayon::current_num_threads()).max(1)
    } else {
        pairs
    };
    let wide = Wide::detect(true);
    let job = Job {
        op,
        w,
        x,
        emit,
        task_pairs,
    };
    let task = |t: usize, o: &mut [T]| match wide {
        Wide::Baseline => job.run::<T, false>(t, o),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected.
        Wide::Avx512(_) => unsafe { job.run_avx512(t, o) },
    };
    let task_len = task_pairs * COLS * p;
    if parallel {
        use rayon::prelude::*;
        out.par_chunks_mut(task_len)
            .enumerate()
            .for_each(|(i, o)| task(i, o));
    } else {
        task(0, out);
    }
}

/// One call of [`conv`].
struct Job<'a, O: DirectOp, E> {
    op: O,
    w: &'a DirectWeights,
    x: ChannelsLast<'a, O::Elem>,
    emit: &'a E,
    task_pairs: usize,
}

impl<O: DirectOp, E> Job<'_, O, E> {
    /// Task `t`: output channels from `t·task_pairs·32`, whose rows are `o`. `AVX512` only
    /// from [`Job::run_avx512`] (it transposes with AVX-512 instructions).
    #[inline(always)]
    fn run<T, const AVX512: bool>(&self, t: usize, o: &mut [T])
    where
        E: Emit<O::Sum, T>,
    {
        let _ = self.op;
        let grid = self.x.grid;
        let (oh, ow) = grid.out_hw();
        let (cin, size, p) = (grid.cin, grid.size, oh * ow);
        let rows = o.len() / p;
        let oc0 = t * self.task_pairs * COLS;
        let chunks = self.w.chunks();
        let cc = cin / chunk_channels::<O>();
        let pair_words = chunks * 2 * 256;
        let row_stride = grid.stride * cin * std::mem::size_of::<O::Elem>();
        let mut sums = Sums([[O::Sum::default(); COLS]; ROWS]);
        let mut tr = Sums([[O::Sum::default(); COLS]; ROWS]);
        // SAFETY: `op` exists only when AMX-TILE and AMX-INT8 were detected and Linux granted
        // the tile data; the configuration is a static 64-byte block.
        unsafe { super::configure() };
        for pair in 0..rows.div_ceil(COLS) {
            let b = &self.w.tiles[((oc0 / COLS) + pair) * pair_words..][..pair_words];
            for blk in 0..grid.blocks() {
                let g0 = blk * ROWS;
                for t in 0..size * size {
                    let (ky, kx) = (t / size, t % size);
                    let a0 = &self.x.data[grid.base(g0, ky, kx) * cin..];
                    let a1 = &self.x.data[grid.base(g0 + 16, ky, kx) * cin..];
                    let bt = &b[t * cc * 512..][..cc * 512];
                    // SAFETY: tiles configured above by this thread; see `chunk_run` for the
                    // extents, which `Grid::pixels` (the last tile's last tap) and the
                    // weights' layout guarantee.
                    unsafe { chunk_run::<O, _>(a0, a1, row_stride, bt, cc, t == 0) };
                }
                // SAFETY: tiles configured and holding this block's sums.
                unsafe { store(&mut sums) };
                #[cfg(target_arch = "x86_64")]
                if AVX512 {
                    // SAFETY: `AVX512` is true only in `run_avx512`, which requires AVX512F.
                    unsafe { transpose32_avx512(&sums, &mut tr) };
                } else {
                    transpose32(&sums, &mut tr);
                }
                #[cfg(not(target_arch = "x86_64"))]
                transpose32(&sums, &mut tr);
                self.block(blk, pair, rows, oc0, &tr, o);
            }
        }
        // SAFETY: as for `configure`; releases this thread's tiles.
        unsafe { super::release() };
    }

    /// Hands the transposed sums `tr` (`tr[c][i]` for output channel `oc0 + 32·pair + c` and
    /// grid position `32·blk + i`) to the epilogue, run by run of valid positions; `o` holds
    /// the task's `rows` output rows from channel `oc0`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn block<T>(
        &self,
        blk: usize,
        pair: usize,
        rows: usize,
        oc0: usize,
        tr: &Sums<O::Sum>,
        o: &mut [T],
    ) where
        E: Emit<O::Sum, T>,
    {
        let grid = self.x.grid;
        let (oh, ow) = grid.out_hw();
        let (gw, p) = (grid.gw(), oh * ow);
        let g0 = blk * ROWS;
        let g_end = (g0 + ROWS).min(oh * gw);
        let mut g = g0;
        while g < g_end {
            let (oy, ox) = (g / gw, g % gw);
            if ox >= ow {
                g += gw - ox;
                continue;
            }
            let len = (ow - ox).min(g_end - g);
            let j0 = oy * ow + ox;
            for c in 0..COLS.min(rows - pair * COLS) {
                let r = pair * COLS + c;
                let s = &tr.0[c][g - g0..][..len];
                self.emit.emit(oc0 + r, j0, s, &mut o[r * p + j0..][..len]);
            }
            g += len;
        }
    }

    /// [`Job::run`] compiled with AVX-512 (the epilogue and the transposition inline into it).
    ///
    /// # Safety
    /// The CPU must run AVX512F and AVX512BW.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn run_avx512<T>(&self, t: usize, o: &mut [T])
    where
        E: Emit<O::Sum, T>,
    {
        self.run::<T, true>(t, o)
    }
}

/// `s[j][i] = sums[i][j]`: a plain loop over 16 × 16 blocks that the compiler turns into
/// shuffles in the AVX-512 copy.
#[inline(always)]
fn transpose32<S: Copy>(sums: &Sums<S>, out: &mut Sums<S>) {
    for (j, row) in out.0.iter_mut().enumerate() {
        for (i, v) in row.iter_mut().enumerate() {
            *v = sums.0[i][j];
        }
    }
}

/// [`transpose32`] with AVX-512: each 16 × 16 quarter in four rounds of interleaving rows
/// `i` and `i + 8` (`vpermt2d`), after which row `j` holds column `j`.
///
/// # Safety
/// The CPU must run AVX512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn transpose32_avx512<S: Copy>(sums: &Sums<S>, out: &mut Sums<S>) {
    use std::arch::x86_64::*;
    const { assert!(std::mem::size_of::<S>() == 4) };
    let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (bi, bj) in [(0, 0), (0, 16), (16, 0), (16, 16)] {
        let mut r = [_mm512_setzero_si512(); 16];
        for (i, v) in r.iter_mut().enumerate() {
            // SAFETY: 16 i32 of row `bi + i` from column `bj ≤ 16`, inside the 32 × 32 block.
            *v = unsafe { _mm512_loadu_si512(sums.0[bi + i][bj..].as_ptr().cast()) };
        }
        for _ in 0..4 {
            let mut t = [_mm512_setzero_si512(); 16];
            for i in 0..8 {
                t[2 * i] = _mm512_permutex2var_epi32(r[i], lo, r[i + 8]);
                t[2 * i + 1] = _mm512_permutex2var_epi32(r[i], hi, r[i + 8]);
            }
            r = t;
        }
        for (j, v) in r.iter().enumerate() {
            // SAFETY: 16 i32 of row `bj + j` from column `bi ≤ 16`, inside the block.
            unsafe { _mm512_storeu_si512(out.0[bj + j][bi..].as_mut_ptr().cast(), *v) };
        }
    }
}

/// Stores the four sum tiles into `s` (position-major: `s[i][j]` for grid position `i` and
/// output channel `j` of the block).
///
/// # Safety
/// The tiles must be configured on this thread and hold a block's sums (after
/// [`chunk_run`]).
#[cfg(target_arch = "x86_64")]
unsafe fn store<S>(s: &mut Sums<S>) {
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

/// Never called: no [`Int8`] has a value off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn store<S>(_: &mut Sums<S>) {
    unreachable!("AMX ops exist only on x86-64")
}

/// Never called: no [`Int8`] has a value off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn chunk_run<O: DirectOp, E>(_: &[E], _: &[E], _: usize, _: &[u32], _: usize, _: bool) {
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
unsafe fn chunk_run<O: DirectOp, E>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The padded channels-last image by its definition.
    fn naive_fill(planes: &[u8], grid: Grid) -> Vec<u8> {
        let (pad, wp) = (grid.pad(), grid.wp());
        let mut out = vec![0u8; grid.len()];
        for c in 0..grid.cin {
            for y in 0..grid.h {
                for x in 0..grid.w {
                    let at = ((y + pad) * wp + x + pad) * grid.cin + c;
                    out[at] = planes[(c * grid.h + y) * grid.w + x];
                }
            }
        }
        out
    }

    /// `Σ_{ci, ky, kx} q[c, ci, ky, kx] · x[ci, y + ky − pad, x + kx − pad]` (zero outside),
    /// exact in i64.
    fn naive_conv(q: &[i8], x: &[u8], m: usize, grid: Grid) -> Vec<i64> {
        let Grid {
            cin,
            h,
            w,
            size,
            stride,
        } = grid;
        let pad = grid.pad() as isize;
        let (oh, ow) = grid.out_hw();
        let mut out = vec![0i64; m * oh * ow];
        for c in 0..m {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = 0i64;
                    for ci in 0..cin {
                        for ky in 0..size {
                            for kx in 0..size {
                                let iy = (oy * stride + ky) as isize - pad;
                                let ix = (ox * stride + kx) as isize - pad;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let wv = q[(c * cin + ci) * size * size + ky * size + kx];
                                let xv = x[(ci * h + iy as usize) * w + ix as usize];
                                s += i64::from(wv) * i64::from(xv);
                            }
                        }
                    }
                    out[(c * oh + oy) * ow + ox] = s;
                }
            }
        }
        out
    }

    #[test]
    fn transpose16_is_the_transpose() {
        let mut m = [[0u8; 16]; 16];
        for (i, row) in m.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (i * 16 + j) as u8;
            }
        }
        let t = transpose16(&m);
        for (j, row) in t.iter().enumerate() {
            for (i, &v) in row.iter().enumerate() {
                assert_eq!(v, m[i][j], "({j}, {i})");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn transpose32_avx512_is_the_plain_transpose() {
        if !(crate::kernels::cpu::features().avx512f) {
            return;
        }
        let mut s = Sums([[0i32; COLS]; ROWS]);
        for (i, row) in s.0.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (i * 1000 + j) as i32 - 7000;
            }
        }
        let (mut a, mut b) = (Sums([[1i32; COLS]; ROWS]), Sums([[2i32; COLS]; ROWS]));
        transpose32(&s, &mut a);
        // SAFETY: AVX512F detected above.
        unsafe { transpose32_avx512(&s, &mut b) };
        assert_eq!(a.0, b.0);
        assert_eq!(a.0[3][17], s.0[17][3]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every byte of the layout, into a buffer full of garbage, in both thread modes.
        #[test]
        fn fill_matches_the_definition(
            c64 in 1usize..3, h in 1usize..20, w in 1usize..40, size in prop::sample::select(vec![1usize, 3, 5, 7]),
            seed in any::<u8>(),
        ) {
            let grid = Grid { cin: 64 * c64, h, w, size, stride: 1 };
            let planes: Vec<u8> = (0..grid.cin * h * w)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect();
            let want = naive_fill(&planes, grid);
            for par in [false, true] {
                let mut got = vec![0xA5u8; grid.len()];
                fill_channels_last(&planes, grid, &mut got, par);
                prop_assert!(got == want, "{:?} par {}", grid, par);
            }
        }

        /// The bf16 direct convolution (AMX-BF16 only) within the f32 summation bound of the
        /// exact sum of the rounded products, `(k + 1)·2⁻²⁴·Σ|ŵ·x̂|`; its weights read back
        /// exactly.
        #[test]
        fn direct_bf16_conv_is_within_the_bound_of_the_exact_sums(
            c32 in 1usize..3, m in 1usize..40, h in 1usize..10, w in 1usize..30,
            stride in 1usize..3, seed in any::<u32>(),
        ) {
            use crate::kernels::bf16::to_bf16;
            let Some(op) = Bf16::detect() else { return Ok(()) };
            let size = 3;
            let grid = Grid { cin: 32 * c32, h, w, size, stride };
            let cin = grid.cin;
            let mut s = seed | 1;
            let mut rnd = move || {
                s ^= s << 13; s ^= s >> 17; s ^= s << 5;
                (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            };
            let wt: Vec<u16> = (0..m * cin * 9).map(|_| to_bf16(rnd())).collect();
            let x: Vec<f32> = (0..cin * h * w).map(|_| rnd() * 3.0).collect();
            let dw = DirectWeights::new_bf16(&wt, m, cin, size).unwrap();
            let wf: Vec<f32> = wt.iter().map(|&b| f32::from_bits(u32::from(b) << 16)).collect();
            prop_assert!(dw.matrix_bf16() == wf, "the packed weights read back");
            let mut buf = vec![0u16; grid.len()];
            fill_channels_last_bf16(&x, grid, &mut buf, false);
            let xs = ChannelsLast::new(&buf, grid).unwrap();
            let (oh, ow) = grid.out_hw();
            let mut got = vec![f32::NAN; m * oh * ow];
            let emit = |_: usize, _: usize, sums: &[f32], o: &mut [f32]| o.copy_from_slice(sums);
            conv(op, &dw, xs, &mut got, true, &emit);
            let xr = |v: f32| f64::from(f32::from_bits(u32::from(to_bf16(v)) << 16));
            for c in 0..m {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (mut sum, mut abs) = (0f64, 0f64);
                        for ci in 0..cin {
                            for t in 0..9 {
                                let iy = (oy * stride + t / 3) as isize - 1;
                                let ix = (ox * stride + t % 3) as isize - 1;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let p = f64::from(wf[(c * cin + ci) * 9 + t])
                                    * xr(x[(ci * h + iy as usize) * w + ix as usize]);
                                sum += p;
                                abs += p.abs();
                            }
                        }
                        let v = f64::from(got[(c * oh + oy) * ow + ox]);
                        let bound = (cin * 9 + 1) as f64 * 2f64.powi(-24) * abs + 1e-30;
                        prop_assert!((v - sum).abs() <= bound, "{:?} m {}: {} vs {}", grid, m, v, sum);
                    }
                }
            }
        }

        /// The direct convolution's sums against the naive one (AMX only): odd sizes, output
        /// channels not a multiple of 32, saturating bytes (255 and −127), both thread modes.
        #[test]
        fn direct_conv_matches_the_naive_sums(
            c64 in 1usize..3, m in 1usize..70, h in 1usize..12, w in 1usize..40,
            size in prop::sample::select(vec![3usize, 5]), stride in 1usize..3,
            seed in any::<u32>(), extreme in any::<bool>(),
        ) {
            let Some(op) = Int8::detect() else { return Ok(()) };
            let grid = Grid { cin: 64 * c64, h, w, size, stride };
            let mut s = seed | 1;
            let mut rnd = move || { s ^= s << 13; s ^= s >> 17; s ^= s << 5; s };
            let q: Vec<i8> = (0..m * grid.cin * size * size)
                .map(|_| if extreme { -127 } else { (rnd() % 255) as i8 })
                .collect();
            let x: Vec<u8> = (0..grid.cin * h * w)
                .map(|_| if extreme { 255 } else { rnd() as u8 })
                .collect();
            let want = naive_conv(&q, &x, m, grid);
            let dw = DirectWeights::new(&q, m, grid.cin, size).unwrap();
            prop_assert!(dw.matrix() == q, "the packed weights read back");
            let mut buf = vec![0u8; grid.len()];
            fill_channels_last(&x, grid, &mut buf, false);
            let xs = ChannelsLast::new(&buf, grid).unwrap();
            for parallel in [false, true] {
                let (oh, ow) = grid.out_hw();
                let mut got = vec![i64::MIN; m * oh * ow];
                let emit = |_: usize, _: usize, sums: &[i32], o: &mut [i64]| {
                    for (o, &v) in o.iter_mut().zip(sums) {
                        *o = i64::from(v);
                    }
                };
                conv(op, &dw, xs, &mut got, parallel, &emit);
                prop_assert!(got == want, "{:?} m {} parallel {}", grid, m, parallel);
            }
        }
    }
}
