//! Where the direct convolution's finished blocks of sums go: transposed to output channels
//! and handed to an epilogue ([`Planar`], the output `[m, h·w]`), or quantised position by
//! position straight into the AMX panels of a following 1×1 convolution ([`ToPanels`]).

use super::{DirectOp, Grid, Job, Sums, COLS, ROWS};
use crate::kernels::amx::Emit;
use crate::kernels::int8::quantize_u8;

/// What [`Job::run`] does with each finished block: `sums[i][j]` is the sum of grid position
/// `32·blk + i` and output channel `32·pair + j` of the task (position-major, as the tiles
/// store it).
pub(super) trait DirectSink<S> {
    /// Handles one block.
    fn block(&mut self, blk: usize, pair: usize, sums: &Sums<S>);
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
        let tr = &mut self.tr;
        #[cfg(target_arch = "x86_64")]
        if AVX512 {
            // SAFETY: `AVX512` is true only in the sinks that `Job::run_avx512` runs, which
            // requires AVX512F.
            unsafe { transpose32_avx512(sums, tr) };
        } else {
            transpose32(sums, tr);
        }
        #[cfg(not(target_arch = "x86_64"))]
        transpose32(sums, tr);
        let grid = self.grid;
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
            for c in 0..COLS.min(self.rows - pair * COLS) {
                let r = pair * COLS + c;
                let s = &tr.0[c][g - g0..][..len];
                self.emit
                    .emit(self.oc0 + r, j0, s, &mut self.o[r * p + j0..][..len]);
            }
            g += len;
        }
    }
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

/// The words that a writer of [`ToPanels`] puts into the panels, through a raw pointer: each
/// task writes only the groups of four channels of its own output channels.
pub(super) struct SharedWords<'a> {
    ptr: *mut u32,
    len: usize,
    k4: usize,
    _borrow: std::marker::PhantomData<&'a mut [u32]>,
}

// SAFETY: the pointer comes from a `&'a mut [u32]` held for the whole convolution; tasks on
// other threads write disjoint words through it (`put`), and nothing reads it meanwhile.
unsafe impl Sync for SharedWords<'_> {}

impl<'a> SharedWords<'a> {
    /// Shares `panels` (`k4` words per column) among the tasks of one convolution.
    pub(super) fn new(panels: &'a mut [u32], k4: usize) -> Self {
        SharedWords {
            ptr: panels.as_mut_ptr(),
            len: panels.len(),
            k4,
            _borrow: std::marker::PhantomData,
        }
    }

    /// Writes `word` as group `g` (channels `4g .. 4g + 4`) of column `j`.
    ///
    /// # Safety
    /// No other thread may access that word during the call: the tasks of [`super::conv_panels`]
    /// own disjoint runs of output channels, so disjoint groups.
    unsafe fn put(&self, j: usize, g: usize, word: u32) {
        let at = ((j / 16) * self.k4 + g) * 16 + j % 16;
        assert!(
            g < self.k4 && at < self.len,
            "amx direct: word out of range"
        );
        // SAFETY: in bounds (checked above) of the exclusively borrowed buffer; the caller
        // guarantees that no other thread touches this word.
        unsafe { self.ptr.add(at).write(word) };
    }
}

/// The sink of [`super::conv_panels`]: every valid position's 32 channel sums of a block
/// become bytes ([`DirectBytes`]) and, four channels to a word, go to the position's column of
/// the panels.
pub(super) struct ToPanels<'a> {
    grid: Grid,
    bytes: &'a DirectBytes<'a>,
    panels: &'a SharedWords<'a>,
    oc0: usize,
    rows: usize,
    over: bool,
}

impl<'a> ToPanels<'a> {
    /// The sink of the task with the `rows` output channels from `oc0`.
    pub(super) fn new<O: DirectOp>(
        job: &Job<'_, O>,
        bytes: &'a DirectBytes<'a>,
        panels: &'a SharedWords<'a>,
        oc0: usize,
        rows: usize,
    ) -> Self {
        ToPanels {
            grid: job.x.grid,
            bytes,
            panels,
            oc0,
            rows,
            over: false,
        }
    }

    /// Whether no value exceeded the range.
    pub(super) fn finish(&self) -> bool {
        !self.over
    }
}

impl DirectSink<i32> for ToPanels<'_> {
    #[inline(always)]
    fn block(&mut self, blk: usize, pair: usize, sums: &Sums<i32>) {
        let grid = self.grid;
        let (oh, ow) = grid.out_hw();
        let gw = grid.gw();
        let c0 = self.oc0 + pair * COLS;
        let valid = COLS.min(self.rows - pair * COLS);
        let b = self.bytes;
        // The pair's steps and biases; channels past the output give zero bytes.
        let mut step = [0.0f32; COLS];
        let mut bias = [0.0f32; COLS];
        step[..valid].copy_from_slice(&b.dequant[c0..c0 + valid]);
        bias[..valid].copy_from_slice(&b.bias[c0..c0 + valid]);
        let (relu, scale, limit) = (b.relu, b.scale, b.limit);
        let mut over = false;
        for (i, s) in sums.0.iter().enumerate() {
            let g = blk * ROWS + i;
            let (oy, ox) = (g / gw, g % gw);
            if oy >= oh {
                break;
            }
            if ox >= ow {
                continue;
            }
            let mut q = [0u8; COLS];
            for (((q, &a), &st), &bi) in q.iter_mut().zip(s).zip(&step).zip(&bias) {
                let y = a as f32 * st + bi;
                let y = if relu { y.max(0.0) } else { y };
                over |= y > limit;
                *q = quantize_u8(y, scale);
            }
            let j = oy * ow + ox;
            for (w, four) in q.chunks_exact(4).enumerate() {
                let word = u32::from_le_bytes([four[0], four[1], four[2], four[3]]);
                // SAFETY: groups `c0 / 4 ..` of this task's channels belong to it alone
                // (see `SharedWords::put`).
                unsafe { self.panels.put(j, c0 / 4 + w, word) };
            }
        }
        self.over |= over;
    }
}

/// `s[j][i] = sums[i][j]`: a plain loop over 16 × 16 blocks that the compiler turns into
/// shuffles in the AVX-512 copy.
#[inline(always)]
pub(super) fn transpose32<S: Copy>(sums: &Sums<S>, out: &mut Sums<S>) {
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
pub(super) fn transpose32_avx512<S: Copy>(sums: &Sums<S>, out: &mut Sums<S>) {
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
