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
//! **Narrow grids.** An image of at most four channels (a stem's) is stored with four per
//! pixel ([`NARROW`]); a tile row's 64 bytes then hold 16 consecutive `u8` pixels (8 bf16).
//! Tile row `r` (position `r`) starts at the pixel under window column 0, so it holds the whole
//! row of the window and the window's columns are words of `k`: each window row is one chunk
//! (`size` chunks instead of `size²`, for a window up to 15 `u8` or 7 bf16 pixels wide). The
//! pixels a tile row reads past the window meet zero weights. The stem's 7×7 window at
//! stride 2 takes 7 tile products per block (instead of 49 taps with 3 of 64 bytes useful),
//! and no im2col matrix. With [`conv_pooled`] its 3×3 / stride 2 max-pool is fused in.
//!
//! **Blocks.** A block is 32 positions (two `A` tiles) × 32 output channels (two `B` tiles):
//! four sum tiles, summed over `k` in chunks of 64 input channels of one tap (`k` in tap-major
//! order, so the weights are packed for it: [`DirectWeights`]). The sums come out
//! position-major; they are transposed in cache and handed to the same epilogues as the packed
//! path ([`Emit`]), one output channel and one run of valid positions at a time ([`conv`]),
//! or, for a following 1×1 convolution, quantised position by position straight into its
//! AMX panels (four output channels of a position are one word of the panels: [`conv_panels`],
//! no transposition). A task is a run of output-channel pairs (disjoint rows of the output),
//! or, when those would be too few for the threads and the sink writes through a shared
//! pointer ([`conv_panels`], [`conv_image`]), every pair at a run of blocks of positions
//! (ResNet-18's 64- and 128-channel convolutions; [`Job::split_blocks_if_few_pairs`]);
//! within a task, each pair of output channels meets every block of its positions, so that its
//! weights stay in the level-2 cache, in groups of [`GROUP`] blocks that go through the taps
//! together, [`K_BLOCK_BYTES`] of weights at a time (their sums stored and reloaded in
//! between), so that those weights are read from the level-1 cache by all but the first block
//! (int8 WRN-50-2 backbone 12.8 → 12.6 ms, bf16 23.9 → 23.1 ms: medians of 12 and 6
//! alternations, at the noise level).
//! Every sum is exact, accumulated in increasing chunk order, so the result depends neither on
//! the split nor on the thread.

use super::{AmxOp, Bf16, Emit, Int8, Sums, COLS, ROWS};
use crate::kernels::wide::Wide;

/// Bytes of a tile row: one chunk of input channels (64 `u8` or 32 bf16).
const ROW_BYTES: usize = 64;

/// Blocks of positions that meet the weights of a k-block together (their sums, 4 KiB each,
/// are stored and reloaded between k-blocks).
const GROUP: usize = 4;
/// Weight bytes of a k-block (of a pair of output channels).
const K_BLOCK_BYTES: usize = 24 * 1024;

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

mod layout;
mod pooled;
mod sinks;
#[cfg(test)]
mod tests;
mod tiles;
mod weights;

pub(crate) use layout::{
    fill_channels_last, fill_channels_last_bf16, fill_padded, narrow_row, zero_padding,
    ChannelsLast, Grid, NARROW,
};
pub(crate) use pooled::PositionEpilogue;
pub(super) use sinks::transpose32;
#[cfg(target_arch = "x86_64")]
pub(super) use sinks::transpose32_avx512;
pub(crate) use sinks::{DirectBf16, DirectBytes, DirectValues};
pub(crate) use weights::DirectWeights;

use super::PanelElem;
use super::SharedImage;
use pooled::Pooled;
use sinks::{DirectSink, Planar, SharedWords, ToImage, ToPanels};
use tiles::{chunk_run, load, store};

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
    let job = Job::new(op, w, x, parallel);
    let (oh, ow) = x.grid.out_hw();
    let p = oh * ow;
    assert_eq!(out.len(), w.m * p, "amx direct: output length");
    let wide = Wide::detect(true);
    let task = |t: usize, o: &mut [T]| job.run_planar(wide, t, o, emit);
    let task_len = job.task_pairs * COLS * p;
    if parallel {
        crate::kernels::par::for_each_chunk(out, task_len, task);
    } else {
        task(0, out);
    }
}

/// [`conv`] followed by the 3×3 / stride 2 / padding 1 max-pool of its output, fused (a
/// ResNet stem), the output made by `epilogue` (no residual) position by position:
/// `pooled` is `[m, ph·pw]` ([`Grid::pooled_hw`]) and holds [`maxpool2d`]'s result; the
/// output itself is never written, only taken into the column maxima of two pooled rows of a
/// task's channels, in cache ([`Pooled`]).
///
/// [`maxpool2d`]: crate::kernels::pool::maxpool2d
///
/// # Panics
/// As [`conv`], or if `pooled` has the wrong length.
pub(crate) fn conv_pooled<O: DirectOp>(
    op: O,
    w: &DirectWeights,
    x: ChannelsLast<'_, O::Elem>,
    pooled: &mut [f32],
    parallel: bool,
    epilogue: &impl PositionEpilogue<O::Sum>,
) {
    let job = Job::new(op, w, x, parallel);
    let (ph, pw) = x.grid.pooled_hw();
    assert_eq!(pooled.len(), w.m * ph * pw, "amx direct: pooled length");
    let wide = Wide::detect(true);
    let task = |t: usize, d: &mut [f32]| {
        let part = job.part(t);
        debug_assert_eq!(d.len(), part.rows * ph * pw);
        match wide {
            Wide::Baseline => {
                let mut sink = Pooled::<O::Sum, _, false>::new(&job, epilogue, d, part.oc0);
                job.run(part, &mut sink)
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected.
            Wide::Avx512(_) => unsafe {
                let mut sink = Pooled::<O::Sum, _, true>::new(&job, epilogue, d, part.oc0);
                job.run_avx512(part, &mut sink)
            },
        }
    };
    let task_len = job.task_pairs * COLS * ph * pw;
    if parallel {
        crate::kernels::par::for_each_chunk(pooled, task_len, task);
    } else {
        task(0, pooled);
    }
}

/// The convolution of `x` with `w`, its output made into the elements of a following 1×1
/// convolution by `values` (bytes quantised for an int8 one, bf16 bits for a bf16 one) and
/// packed for it, as [`super::product_or_handoff`] packs its own (panels of 16 output pixels,
/// `kw` words of output channels per pixel, [`super::packed_words`]`(kw / 16, h·w)` words;
/// the words of pixels past the output are zero). Returns `false` when a value exceeded the
/// range of `values` (the panels are then not valid).
///
/// # Panics
/// As [`conv`], or if `kw` is not a multiple of 16 smaller than the output channels take, or
/// `panels` has the wrong length.
pub(crate) fn conv_panels<O: DirectOp, V: DirectValues<O::Sum>>(
    op: O,
    w: &DirectWeights,
    x: ChannelsLast<'_, O::Elem>,
    parallel: bool,
    values: &V,
    panels: &mut [u32],
    kw: usize,
) -> bool {
    let mut job = Job::new(op, w, x, parallel);
    job.split_blocks_if_few_pairs(parallel);
    let (oh, ow) = x.grid.out_hw();
    let p = oh * ow;
    assert!(
        kw.is_multiple_of(16) && V::Elem::PER_WORD * kw >= w.m.next_multiple_of(COLS),
        "amx direct: {kw} words of k for {} channels",
        w.m
    );
    assert_eq!(
        panels.len(),
        super::packed_words(kw / 16, p),
        "amx direct: panels length"
    );
    zero_tail_columns(panels, kw, p);
    let shared = SharedWords::new(panels, kw);
    job.run_tasks(parallel, |oc0, rows| {
        ToPanels::new(&job, values, &shared, oc0, rows)
    })
}

/// The convolution of `x` with `w`, its output made into elements by `values` (bytes
/// quantised for an int8 convolution, bf16 bits for a bf16 one) and written as the padded
/// channels-last image of `next`, the grid of a following direct convolution on this output
/// (`next.cin` = the output channels, a multiple of 32; `next.h × next.w` = the output size);
/// the padding is zero. Returns `false` when a value exceeded the range of `values` (the
/// image is then not valid).
///
/// # Panics
/// As [`conv`], or if `next` does not fit the output or `image` has the wrong length.
pub(crate) fn conv_image<O: DirectOp, V: DirectValues<O::Sum>>(
    op: O,
    w: &DirectWeights,
    x: ChannelsLast<'_, O::Elem>,
    parallel: bool,
    values: &V,
    image: &mut [V::Elem],
    next: Grid,
) -> bool {
    let mut job = Job::new(op, w, x, parallel);
    assert!(
        next.cin == w.m && w.m.is_multiple_of(COLS) && (next.h, next.w) == x.grid.out_hw(),
        "amx direct: an image of {} channels, {}×{}, for {} channels, {:?}",
        next.cin,
        next.h,
        next.w,
        w.m,
        x.grid.out_hw()
    );
    assert_eq!(image.len(), next.len(), "amx direct: image length");
    // Whole cache lines of every pixel per task (two pairs of bytes), so that no two threads
    // write the same line; by blocks of positions (all channels of a pixel in one task)
    // when that leaves too few tasks.
    let per_line = (64 / (COLS * std::mem::size_of::<V::Elem>())).max(1);
    job.task_pairs = job.task_pairs.next_multiple_of(per_line);
    job.split_blocks_if_few_pairs(parallel);
    zero_padding(next, image);
    let shared = SharedImage::new(image);
    job.run_tasks(parallel, |oc0, _| {
        ToImage::new(&job, next, values, &shared, oc0)
    })
}

/// Zeroes the words of the columns from `n` in the panels (16 columns each, `kw` words per
/// column): the pixels past the output, which no block writes.
fn zero_tail_columns(panels: &mut [u32], kw: usize, n: usize) {
    let panel_len = 16 * kw;
    for (p, panel) in panels.chunks_exact_mut(panel_len).enumerate() {
        let valid = n.saturating_sub(16 * p).min(16);
        if valid < 16 {
            for g in panel.chunks_exact_mut(16) {
                g[valid..].fill(0);
            }
        }
    }
}

/// One call of [`conv`], [`conv_panels`] or [`conv_image`].
struct Job<'a, O: DirectOp> {
    op: O,
    w: &'a DirectWeights,
    x: ChannelsLast<'a, O::Elem>,
    /// Output-channel pairs per task.
    task_pairs: usize,
    /// Blocks of positions per task: all of them, unless split by blocks
    /// ([`Job::split_blocks_if_few_pairs`]).
    task_blocks: usize,
}

/// The part of the output a task computes: `rows` output channels from `oc0`, at the blocks of
/// positions `blocks.0 .. blocks.1`.
#[derive(Clone, Copy)]
struct Part {
    oc0: usize,
    rows: usize,
    blocks: (usize, usize),
}

impl<'a, O: DirectOp> Job<'a, O> {
    /// Checks the shapes and splits the output channels into tasks.
    fn new(op: O, w: &'a DirectWeights, x: ChannelsLast<'a, O::Elem>, parallel: bool) -> Self {
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
        let pairs = w.m.div_ceil(COLS);
        let task_pairs = if parallel {
            pairs.div_ceil(2 * crate::kernels::par::threads()).max(1)
        } else {
            pairs
        };
        Job {
            op,
            w,
            x,
            task_pairs,
            task_blocks: grid.blocks(),
        }
    }

    /// The tasks: runs of `task_pairs` output-channel pairs, each split into runs of
    /// `task_blocks` blocks of positions.
    fn tasks(&self) -> usize {
        self.w.m.div_ceil(self.task_pairs * COLS) * self.x.grid.blocks().div_ceil(self.task_blocks)
    }

    /// The part of the output of task `t` (of [`Job::tasks`]).
    fn part(&self, t: usize) -> Part {
        let blocks = self.x.grid.blocks();
        let runs = blocks.div_ceil(self.task_blocks);
        let (pairs_run, blocks_run) = (t / runs, t % runs);
        let oc0 = pairs_run * self.task_pairs * COLS;
        let b0 = blocks_run * self.task_blocks;
        Part {
            oc0,
            rows: (self.task_pairs * COLS).min(self.w.m - oc0),
            blocks: (b0, (b0 + self.task_blocks).min(blocks)),
        }
    }

    /// When the runs of output-channel pairs give fewer than two tasks per thread, every task takes all pairs and a run of blocks of
    /// positions instead, about four per thread (ResNet-18's 64- and 128-channel
    /// convolutions). Only for sinks that write through a shared pointer.
    fn split_blocks_if_few_pairs(&mut self, parallel: bool) {
        let threads = crate::kernels::par::threads();
        let pairs = self.w.m.div_ceil(COLS);
        let blocks = self.x.grid.blocks();
        if parallel && pairs.div_ceil(self.task_pairs) < 2 * threads && blocks >= 2 * threads {
            self.task_pairs = pairs;
            self.task_blocks = blocks.div_ceil(4 * threads);
        }
    }

    /// Every task, each with the sink that `sink(oc0, rows)` makes for its `rows` output
    /// channels from `oc0`, on the rayon pool when `parallel`; returns whether every sink
    /// finished valid ([`DirectSink::valid`]).
    fn run_tasks<K: DirectSink<O::Sum>>(
        &self,
        parallel: bool,
        sink: impl Fn(usize, usize) -> K + Sync,
    ) -> bool {
        let wide = Wide::detect(true);
        let task = |t: usize| {
            let part = self.part(t);
            let mut sink = sink(part.oc0, part.rows);
            match wide {
                Wide::Baseline => self.run(part, &mut sink),
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected.
                Wide::Avx512(_) => unsafe { self.run_avx512(part, &mut sink) },
            }
            sink.valid()
        };
        let tasks = self.tasks();
        if parallel {
            crate::kernels::par::run(tasks, || (), |_, t| task(t), true, |a, b| a & b)
        } else {
            (0..tasks).map(task).fold(true, |a, b| a & b)
        }
    }

    /// Task `t` of [`conv`]: its output rows `o` (from channel `t·task_pairs·32`) through the
    /// [`Planar`] sink, with the loops of `wide`.
    #[inline(always)]
    fn run_planar<T>(&self, wide: Wide, t: usize, o: &mut [T], emit: &impl Emit<O::Sum, T>) {
        let (oh, ow) = self.x.grid.out_hw();
        let part = self.part(t);
        debug_assert_eq!(o.len(), part.rows * oh * ow);
        match wide {
            Wide::Baseline => {
                let mut sink = Planar::<O::Sum, _, _, false>::new(self, emit, o, part.oc0);
                self.run(part, &mut sink)
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected.
            Wide::Avx512(_) => unsafe {
                let mut sink = Planar::<O::Sum, _, _, true>::new(self, emit, o, part.oc0);
                self.run_avx512(part, &mut sink)
            },
        }
    }

    /// The part of a task, each finished block of sums handed to `sink`.
    #[inline(always)]
    fn run(&self, part: Part, sink: &mut impl DirectSink<O::Sum>) {
        let _ = self.op;
        let grid = self.x.grid;
        let cin = grid.cin;
        let Part {
            oc0,
            rows,
            blocks: (b0, b1),
        } = part;
        let chunks = self.w.chunks();
        let (taps, cc) = grid.taps_chunks(chunk_channels::<O>());
        debug_assert_eq!(taps * cc, chunks);
        let pair_words = chunks * 2 * 256;
        let row_stride = grid.stride * cin * std::mem::size_of::<O::Elem>();
        let mut group = [Sums([[O::Sum::default(); COLS]; ROWS]); GROUP];
        // Taps per k-block: their weights (2 KiB per chunk of the pair) stay in the level-1
        // cache while they meet the group's blocks.
        let kb_taps = (K_BLOCK_BYTES / (cc * 2048)).clamp(1, taps);
        // SAFETY: `op` exists only when AMX-TILE and AMX-INT8 were detected and Linux granted
        // the tile data; the configuration is a static 64-byte block.
        unsafe { super::configure() };
        for pair in 0..rows.div_ceil(COLS) {
            let b = &self.w.tiles[((oc0 / COLS) + pair) * pair_words..][..pair_words];
            for g0 in (b0..b1).step_by(GROUP) {
                let gn = GROUP.min(b1 - g0);
                for t0 in (0..taps).step_by(kb_taps) {
                    for (i, sums) in group[..gn].iter_mut().enumerate() {
                        let blk = g0 + i;
                        let g = blk * ROWS;
                        if t0 > 0 {
                            // SAFETY: tiles configured by this thread; `sums` holds this
                            // block's sums of the taps before `t0` (stored below).
                            unsafe { load(sums) };
                        }
                        for t in t0..(t0 + kb_taps).min(taps) {
                            let (ky, kx) = grid.tap(t);
                            let a0 = &self.x.data[grid.base(g, ky, kx) * cin..];
                            let a1 = &self.x.data[grid.base(g + 16, ky, kx) * cin..];
                            let bt = &b[t * cc * 512..][..cc * 512];
                            // SAFETY: tiles configured above by this thread; see `chunk_run`
                            // for the extents, which `Grid::pixels` (the last tile's last
                            // tap) and the weights' layout guarantee.
                            unsafe { chunk_run::<O, _>(a0, a1, row_stride, bt, cc, t == 0) };
                        }
                        // SAFETY: tiles configured and holding this block's sums.
                        unsafe { store(sums) };
                    }
                }
                for (i, sums) in group[..gn].iter().enumerate() {
                    sink.block(g0 + i, pair, sums);
                }
            }
        }
        // SAFETY: as for `configure`; releases this thread's tiles.
        unsafe { super::release() };
    }

    /// [`Job::run`] compiled with AVX-512 (the sink's work inlines into it).
    ///
    /// # Safety
    /// The CPU must run AVX512F and AVX512BW.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn run_avx512(&self, part: Part, sink: &mut impl DirectSink<O::Sum>) {
        self.run(part, sink)
    }
}
