//! Where the direct convolution's finished blocks of sums go: transposed to output channels
//! and handed to an epilogue ([`Planar`], the output `[m, h·w]`), or quantised position by
//! position straight into the AMX panels of a following 1×1 convolution ([`ToPanels`]): as
//! bytes ([`DirectBytes`], int8) or bf16 bits ([`DirectBf16`]).

use super::{DirectOp, Grid, Job, Sums, COLS, ROWS};
use crate::kernels::amx::{Emit, PanelElem, SharedImage};
use crate::kernels::bf16::to_bf16;
use crate::kernels::int8::quantize_u8;

/// What [`Job::run`] does with each finished block: `sums[i][j]` is the sum of grid position
/// `32·blk + i` and output channel `32·pair + j` of the task (position-major, as the tiles
/// store it).
pub(super) trait DirectSink<S> {
    /// Handles one block.
    fn block(&mut self, blk: usize, pair: usize, sums: &Sums<S>);

    /// Whether what it wrote is valid (no value exceeded a range).
    fn valid(&self) -> bool {
        true
    }
}

/// The rows `i` of block `blk` of `grid`'s positions that are output pixels, with the pixel
/// `(oy, ox)` (the other rows are the grid's padding columns and its tail).
struct OutputPixels {
    grid: Grid,
    g0: usize,
    i: usize,
}

impl OutputPixels {
    #[inline(always)]
    fn new(grid: Grid, blk: usize) -> Self {
        OutputPixels {
            grid,
            g0: blk * ROWS,
            i: 0,
        }
    }
}

impl Iterator for OutputPixels {
    type Item = (usize, (usize, usize));

    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        let (oh, ow) = self.grid.out_hw();
        let gw = self.grid.gw();
        while self.i < ROWS {
            let i = self.i;
            self.i += 1;
            let g = self.g0 + i;
            let (oy, ox) = (g / gw, g % gw);
            if oy >= oh {
                self.i = ROWS;
                return None;
            }
            if ox < ow {
                return Some((i, (oy, ox)));
            }
        }
        None
    }
}

/// The sink of [`super::conv`]: each block transposed (with AVX-512 when `AVX512`) and handed
/// to `emit`, one output channel and one run of valid positions at a time, into the task's
/// output rows `o` (from channel `oc0`).
pub(super) struct Planar<'a, S, E, T, const AVX512: bool> {
    grid: Grid,
    emit: &'a E,
    o: &'a mut [T],
    oc0: usize,
    rows: usize,
    tr: Sums<S>,
}

impl<'a, S: Copy + Default, E, T, const AVX512: bool> Planar<'a, S, E, T, AVX512> {
    /// The sink of the task whose rows are `o` (from output channel `oc0`).
    pub(super) fn new<O: DirectOp>(
        job: &Job<'_, O>,
        emit: &'a E,
        o: &'a mut [T],
        oc0: usize,
    ) -> Self {
        let (oh, ow) = job.x.grid.out_hw();
        let rows = o.len() / (oh * ow);
        Planar {
            grid: job.x.grid,
            emit,
            o,
            oc0,
            rows,
            tr: Sums([[S::default(); COLS]; ROWS]),
        }
    }
}

impl<S: Copy, E: Emit<S, T>, T, const AVX512: bool> DirectSink<S> for Planar<'_, S, E, T, AVX512> {
    #[inline(always)]
    fn block(&mut self, blk: usize, pair: usize, sums: &Sums<S>) {
        let (oh, ow) = self.grid.out_hw();
        let p = oh * ow;
        let (emit, o, oc0) = (self.emit, &mut *self.o, self.oc0);
        let channels = COLS.min(self.rows - pair * COLS);
        transpose_block::<S, AVX512>(sums, &mut self.tr);
        // (Plain loops over the runs, no closure: a closure the compiler does not inline runs
        // outside `Job::run_avx512`, without AVX-512; that cost the pooled stem 4 %.)
        for (at, oy, ox, len) in block_runs(self.grid, blk) {
            let j0 = oy * ow + ox;
            for c in 0..channels {
                let r = pair * COLS + c;
                let s = &self.tr.0[c][at..][..len];
                emit.emit(oc0 + r, j0, s, &mut o[r * p + j0..][..len]);
            }
        }
    }
}

/// Transposes a block of sums into `tr` (with AVX-512 when `AVX512`: only in the sinks that
/// `Job::run_avx512` runs), output channels then being rows.
#[inline(always)]
fn transpose_block<S: Copy, const AVX512: bool>(sums: &Sums<S>, tr: &mut Sums<S>) {
    transpose_rows::<S, AVX512>(&sums.0, &mut tr.0);
}

/// [`transpose32`], with AVX-512 when `AVX512` (only in the sinks that `Job::run_avx512`
/// runs).
#[inline(always)]
pub(super) fn transpose_rows<S: Copy, const AVX512: bool>(
    a: &[[S; COLS]; ROWS],
    tr: &mut [[S; COLS]; ROWS],
) {
    #[cfg(target_arch = "x86_64")]
    if AVX512 {
        // SAFETY: `AVX512` is true only in the sinks that `Job::run_avx512` runs, which
        // requires AVX512F.
        unsafe { transpose32_avx512(a, tr) };
    } else {
        transpose32(a, tr);
    }
    #[cfg(not(target_arch = "x86_64"))]
    transpose32(a, tr);
}

/// The runs of output pixels in block `blk` of `grid`'s positions, in order, as `(at, oy, ox,
/// len)`: `len` pixels from `(oy, ox)` (never across an output row), `at` the run's first
/// position in the block (its column in the transposed sums).
#[inline(always)]
pub(super) fn block_runs(
    grid: Grid,
    blk: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    let (oh, ow) = grid.out_hw();
    let gw = grid.gw();
    let g0 = blk * ROWS;
    let g_end = (g0 + ROWS).min(oh * gw);
    let mut g = g0;
    std::iter::from_fn(move || {
        while g < g_end {
            let (oy, ox) = (g / gw, g % gw);
            if ox >= ow {
                g += gw - ox;
                continue;
            }
            let len = (ow - ox).min(g_end - g);
            let at = g - g0;
            g += len;
            return Some((at, oy, ox, len));
        }
        None
    })
}

/// How [`ToPanels`] makes the elements of the following 1×1 convolution's panels of the sums
/// of one output position.
pub(crate) trait DirectValues<S>: Sync {
    /// The following convolution's element (bytes for int8, bf16 bits for bf16).
    type Elem: PanelElem;
    /// What `values` needs of one pair of 32 output channels (their steps and biases).
    type Pair;

    /// The constants of the output channels `c0 .. c0 + valid` (`valid ≤ 32`): channels past
    /// the output must give zero elements.
    fn pair(&self, c0: usize, valid: usize) -> Self::Pair;

    /// `out[j]` for the sum `sums[j]` of channel `c0 + j` of `pair`; returns whether a value
    /// exceeded the range (the panels are then not valid).
    fn values(&self, pair: &Self::Pair, sums: &[S; COLS], out: &mut [Self::Elem; COLS]) -> bool;
}

/// How [`ToPanels`] makes bytes of the sums of output channel `c`: `y = sum·dequant[c] +
/// bias[c]` (then `max(y, 0)` with `relu`), `quantize_u8(y, scale)`, `scale = 255 / limit`
/// for the following convolution's calibrated range `limit` — the bytes of the int8
/// convolution's `Requant` epilogue without a residual. A value above `limit` makes the
/// panels invalid.
pub(crate) struct DirectBytes<'a> {
    /// Per output channel: the input step times the weight step.
    pub dequant: &'a [f32],
    /// Per output channel.
    pub bias: &'a [f32],
    /// Whether negative values become 0.
    pub relu: bool,
    /// `255 / limit`.
    pub scale: f32,
    /// The following convolution's calibrated range.
    pub limit: f32,
}

impl DirectValues<i32> for DirectBytes<'_> {
    type Elem = u8;
    type Pair = ([f32; COLS], [f32; COLS]);

    #[inline(always)]
    fn pair(&self, c0: usize, valid: usize) -> Self::Pair {
        let mut step = [0.0f32; COLS];
        let mut bias = [0.0f32; COLS];
        step[..valid].copy_from_slice(&self.dequant[c0..c0 + valid]);
        bias[..valid].copy_from_slice(&self.bias[c0..c0 + valid]);
        (step, bias)
    }

    #[inline(always)]
    fn values(&self, (step, bias): &Self::Pair, s: &[i32; COLS], q: &mut [u8; COLS]) -> bool {
        let (relu, scale, limit) = (self.relu, self.scale, self.limit);
        let mut over = false;
        for (((q, &a), &st), &bi) in q.iter_mut().zip(s).zip(step).zip(bias) {
            let y = a as f32 * st + bi;
            let y = if relu { y.max(0.0) } else { y };
            over |= y > limit;
            *q = quantize_u8(y, scale);
        }
        over
    }
}

/// How [`ToPanels`] makes bf16 bits of the sums of output channel `c`: `y = sum + bias[c]`
/// (then `max(y, 0)` with `relu`) rounded to bf16 — the bits that the following bf16
/// convolution makes of the output of the bf16 convolution's epilogue without a residual.
/// Never out of range.
pub(crate) struct DirectBf16<'a> {
    /// Per output channel.
    pub bias: &'a [f32],
    /// Whether negative values become 0.
    pub relu: bool,
}

impl DirectValues<f32> for DirectBf16<'_> {
    type Elem = u16;
    type Pair = [f32; COLS];

    #[inline(always)]
    fn pair(&self, c0: usize, valid: usize) -> Self::Pair {
        let mut bias = [0.0f32; COLS];
        bias[..valid].copy_from_slice(&self.bias[c0..c0 + valid]);
        bias
    }

    #[inline(always)]
    fn values(&self, bias: &Self::Pair, s: &[f32; COLS], out: &mut [u16; COLS]) -> bool {
        for ((o, &a), &bi) in out.iter_mut().zip(s).zip(bias) {
            let y = a + bi;
            *o = to_bf16(if self.relu { y.max(0.0) } else { y });
        }
        false
    }
}

/// The words that a writer of [`ToPanels`] puts into the panels, through a raw pointer: each
/// task writes only the words of its own output channels.
pub(super) struct SharedWords<'a> {
    ptr: *mut u32,
    len: usize,
    kw: usize,
    _borrow: std::marker::PhantomData<&'a mut [u32]>,
}

// SAFETY: the pointer comes from a `&'a mut [u32]` held for the whole convolution; tasks on
// other threads write disjoint words through it (`put`), and nothing reads it meanwhile.
unsafe impl Sync for SharedWords<'_> {}

impl<'a> SharedWords<'a> {
    /// Shares `panels` (`kw` words per column) among the tasks of one convolution.
    pub(super) fn new(panels: &'a mut [u32], kw: usize) -> Self {
        SharedWords {
            ptr: panels.as_mut_ptr(),
            len: panels.len(),
            kw,
            _borrow: std::marker::PhantomData,
        }
    }

    /// Writes `word` as word `g` of `k` (the channels of that word) of column `j`.
    ///
    /// # Safety
    /// No other thread may access that word during the call: the tasks of [`super::conv_panels`]
    /// own disjoint runs of whole pairs of output channels, or all channels of disjoint runs
    /// of blocks of positions (so of disjoint columns), so disjoint words.
    unsafe fn put(&self, j: usize, g: usize, word: u32) {
        let at = ((j / 16) * self.kw + g) * 16 + j % 16;
        assert!(
            g < self.kw && at < self.len,
            "amx direct: word out of range"
        );
        // SAFETY: in bounds (checked above) of the exclusively borrowed buffer; the caller
        // guarantees that no other thread touches this word.
        unsafe { self.ptr.add(at).write(word) };
    }
}

/// The sink of [`super::conv_panels`]: every valid position's 32 channel sums of a block
/// become the following convolution's elements ([`DirectValues`]) and, as many channels to a
/// word as it holds, go to the position's column of the panels.
pub(super) struct ToPanels<'a, V> {
    grid: Grid,
    values: &'a V,
    panels: &'a SharedWords<'a>,
    oc0: usize,
    rows: usize,
    over: bool,
}

impl<'a, V> ToPanels<'a, V> {
    /// The sink of the task with the `rows` output channels from `oc0`.
    pub(super) fn new<O: DirectOp>(
        job: &Job<'_, O>,
        values: &'a V,
        panels: &'a SharedWords<'a>,
        oc0: usize,
        rows: usize,
    ) -> Self {
        ToPanels {
            grid: job.x.grid,
            values,
            panels,
            oc0,
            rows,
            over: false,
        }
    }
}

impl<S, V: DirectValues<S>> DirectSink<S> for ToPanels<'_, V> {
    #[inline(always)]
    fn block(&mut self, blk: usize, pair: usize, sums: &Sums<S>) {
        let ow = self.grid.out_hw().1;
        let c0 = self.oc0 + pair * COLS;
        let valid = COLS.min(self.rows - pair * COLS);
        // The pair's constants; channels past the output give zero elements.
        let consts = self.values.pair(c0, valid);
        let per = V::Elem::PER_WORD;
        let mut over = false;
        // (A loop rather than a helper taking a closure: a closure is compiled without the
        // AVX-512 of the loop it is called from, and this one cost 1 ms of an int8 WRN-50-2
        // backbone.)
        for (i, (oy, ox)) in OutputPixels::new(self.grid, blk) {
            let mut q = [V::Elem::default(); COLS];
            over |= self.values.values(&consts, &sums.0[i], &mut q);
            let j = oy * ow + ox;
            for (w, parts) in q.chunks_exact(per).enumerate() {
                // SAFETY: the words `c0 / per ..` of this task's channels at this block's
                // columns belong to it alone (see `SharedWords::put`).
                unsafe { self.panels.put(j, c0 / per + w, V::Elem::word(parts)) };
            }
        }
        self.over |= over;
    }

    fn valid(&self) -> bool {
        !self.over
    }
}

/// The sink of [`super::conv_image`]: every valid position's 32 channel sums of a block
/// become elements ([`DirectValues`]) and go, as one run of 32 channels, to the position's
/// pixel of the padded channels-last image of `next` (the following direct convolution's
/// grid, whose image is this convolution's output).
pub(super) struct ToImage<'a, V: DirectValues<S>, S> {
    grid: Grid,
    next: Grid,
    values: &'a V,
    image: &'a SharedImage<'a, V::Elem>,
    oc0: usize,
    over: bool,
}

impl<'a, S, V: DirectValues<S>> ToImage<'a, V, S> {
    /// The sink of the task whose output channels start at `oc0`.
    pub(super) fn new<O: DirectOp>(
        job: &Job<'_, O>,
        next: Grid,
        values: &'a V,
        image: &'a SharedImage<'a, V::Elem>,
        oc0: usize,
    ) -> Self {
        ToImage {
            grid: job.x.grid,
            next,
            values,
            image,
            oc0,
            over: false,
        }
    }
}

impl<S, V: DirectValues<S>> DirectSink<S> for ToImage<'_, V, S> {
    #[inline(always)]
    fn block(&mut self, blk: usize, pair: usize, sums: &Sums<S>) {
        let next = self.next;
        let (pad, wp) = ((next.size - 1) / 2, next.wp());
        // (The image's channels are whole pairs: `next.cin` is a multiple of 32.)
        let c0 = self.oc0 + pair * COLS;
        let consts = self.values.pair(c0, COLS);
        let mut over = false;
        for (i, (oy, ox)) in OutputPixels::new(self.grid, blk) {
            let mut run = [V::Elem::default(); COLS];
            over |= self.values.values(&consts, &sums.0[i], &mut run);
            let at = ((oy + pad) * wp + ox + pad) * next.cin + c0;
            // SAFETY: channels `c0 .. c0 + 32` of this block's pixels belong to this task
            // alone: its pair, or its run of blocks (see `SharedImage::put`).
            unsafe { self.image.put(at, &run) };
        }
        self.over |= over;
    }

    fn valid(&self) -> bool {
        !self.over
    }
}

/// `s[j][i] = sums[i][j]`: a plain loop over 16 × 16 blocks that the compiler turns into
/// shuffles in the AVX-512 copy.
#[inline(always)]
pub(in crate::kernels::amx) fn transpose32<S: Copy>(
    sums: &[[S; COLS]; ROWS],
    out: &mut [[S; COLS]; ROWS],
) {
    for (j, row) in out.iter_mut().enumerate() {
        for (i, v) in row.iter_mut().enumerate() {
            *v = sums[i][j];
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
pub(in crate::kernels::amx) fn transpose32_avx512<S: Copy>(
    sums: &[[S; COLS]; ROWS],
    out: &mut [[S; COLS]; ROWS],
) {
    use std::arch::x86_64::*;
    const { assert!(std::mem::size_of::<S>() == 4) };
    let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (bi, bj) in [(0, 0), (0, 16), (16, 0), (16, 16)] {
        let mut r = [_mm512_setzero_si512(); 16];
        for (i, v) in r.iter_mut().enumerate() {
            // SAFETY: 16 i32 of row `bi + i` from column `bj ≤ 16`, inside the 32 × 32 block.
            *v = unsafe { _mm512_loadu_si512(sums[bi + i][bj..].as_ptr().cast()) };
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
            unsafe { _mm512_storeu_si512(out[bj + j][bi..].as_mut_ptr().cast(), *v) };
        }
    }
}
