//! The sink of the direct convolution fused with a ResNet stem's 3×3 / stride 2 max-pool
//! ([`super::conv_pooled`]): the outputs made position by position and taken straight into
//! the column maxima of the pooled rows, which are written as soon as they are complete.

use super::sinks::{block_runs, transpose_rows, DirectSink};
use super::{DirectOp, Grid, Job, Sums, COLS, ROWS};
#[cfg(doc)]
use crate::kernels::amx::Emit;

/// How [`Pooled`] makes the f32 outputs of the sums of one output position: the
/// convolution's epilogue without a residual, 32 output channels at a time, giving the bits
/// that its [`Emit`] gives for the same sums.
pub(crate) trait PositionEpilogue<S>: Sync {
    /// What `values` needs of one pair of 32 output channels.
    type Pair;

    /// The constants of the output channels `c0 .. c0 + valid` (`valid ≤ 32`); channels past
    /// the output give values that are never written.
    fn pair(&self, c0: usize, valid: usize) -> Self::Pair;

    /// `out[j]`: the output of channel `c0 + j` of `pair` for the sum `sums[j]`.
    fn values(&self, pair: &Self::Pair, sums: &[S; COLS], out: &mut [f32; COLS]);
}

/// The sink of [`super::conv_pooled`]: each block's outputs made position by position
/// ([`PositionEpilogue`], 32 channels at a time, no transposition) and taken straight into
/// the column maxima of the pooled rows whose windows hold them (output row `r` is in the
/// windows of pooled rows `r / 2` and, when odd, `r / 2 + 1`: rows `2y − 1`, `2y`, `2y + 1`
/// make pooled row `y`), two such rows of the pair, channels-last; as soon as an output row
/// completes a window, that row of the 3×3 / stride 2 / padding 1 max-pool is taken along
/// the row 32 channels at a time, transposed and written into the task's pooled rows `pooled`
/// (from channel `oc0`). Blocks come in grid order for each pair, so output rows complete in
/// order, and the maxima are taken in the order of
/// [`maxpool2d`](crate::kernels::pool::maxpool2d)'s loop (so the same bits). (Transposed
/// block by block and pooled channel by channel, as the other sinks do, int8 ResNet-18 took
/// 1.69 ms against 1.62; with a ring of the last three output rows, pooled once complete,
/// the ResNet-18 stem took about 295 µs against 265 in int8, 345 against 315 in bf16.)
pub(super) struct Pooled<'a, S, E: PositionEpilogue<S>, const AVX512: bool> {
    grid: Grid,
    epilogue: &'a E,
    pooled: &'a mut [f32],
    oc0: usize,
    rows: usize,
    /// The pair of the last block and its constants.
    pair: Option<(usize, E::Pair)>,
    /// The column maxima of pooled rows `y % 2`, `ow` positions each.
    colmax: Vec<[f32; COLS]>,
    /// A pooled row, position-major, `pw` rounded up to whole blocks of 32.
    row: Vec<[f32; COLS]>,
    /// A block of `row` transposed (channels then being rows).
    tr: Box<[[f32; COLS]; ROWS]>,
    _sums: std::marker::PhantomData<S>,
}

impl<'a, S, E: PositionEpilogue<S>, const AVX512: bool> Pooled<'a, S, E, AVX512> {
    /// The sink of the task whose pooled rows are `pooled` (from output channel `oc0`).
    pub(super) fn new<O: DirectOp>(
        job: &Job<'_, O>,
        epilogue: &'a E,
        pooled: &'a mut [f32],
        oc0: usize,
    ) -> Self {
        let (ph, pw) = job.x.grid.pooled_hw();
        let ow = job.x.grid.out_hw().1;
        Pooled {
            grid: job.x.grid,
            epilogue,
            rows: pooled.len() / (ph * pw),
            pooled,
            oc0,
            pair: None,
            colmax: vec![[0.0; COLS]; 2 * ow],
            row: vec![[0.0; COLS]; pw.next_multiple_of(ROWS)],
            tr: Box::new([[0.0; COLS]; ROWS]),
            _sums: std::marker::PhantomData,
        }
    }
}

impl<S, E: PositionEpilogue<S>, const AVX512: bool> DirectSink<S> for Pooled<'_, S, E, AVX512> {
    #[inline(always)]
    fn block(&mut self, blk: usize, pair: usize, sums: &Sums<S>) {
        let (grid, epilogue) = (self.grid, self.epilogue);
        let (oh, ow) = grid.out_hw();
        let channels = COLS.min(self.rows - pair * COLS);
        if self.pair.as_ref().is_none_or(|(p, _)| *p != pair) {
            self.pair = Some((pair, epilogue.pair(self.oc0 + pair * COLS, channels)));
        }
        let Some((_, consts)) = &self.pair else {
            unreachable!("set above")
        };
        for (at, oy, ox, len) in block_runs(grid, blk) {
            // Pooled row `y` (window rows `2y − 1 ..= 2y + 1`) takes this row; an odd row
            // also opens the window of row `y + 1`. The first row of a window is copied, the
            // others taken into the maxima after it.
            let y = oy / 2;
            let (this, next) = self.colmax.split_at_mut(ow);
            let (this, next) = if y % 2 == 0 {
                (this, next)
            } else {
                (next, this)
            };
            let this = &mut this[ox..][..len];
            let next = &mut next[ox..][..len];
            let sums = &sums.0[at..at + len];
            let mut v = [0.0f32; COLS];
            for ((m, n), s) in this.iter_mut().zip(next.iter_mut()).zip(sums) {
                epilogue.values(consts, s, &mut v);
                if oy == 0 {
                    *m = v;
                } else {
                    for (m, &v) in m.iter_mut().zip(&v) {
                        *m = m.max(v);
                    }
                }
                if oy % 2 == 1 {
                    *n = v;
                }
                // One position at a time, its channels in two vectors: without the fence the
                // compiler vectorises across positions, with gathers (twice the stem's time).
                std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
            }
            // The row completes the window of pooled row `y` when it is its last row.
            if ox + len == ow && (oy % 2 == 1 || oy + 1 == oh) {
                let colmax = &self.colmax[(y % 2) * ow..][..ow];
                let Pooled {
                    row, tr, pooled, ..
                } = self;
                pool_row::<AVX512>(grid, y, pair, channels, colmax, row, tr, pooled);
            }
        }
    }
}

/// Pooled row `y` of a pair's `channels` channels from the column maxima of its window
/// (`colmax`, channels-last): `max(c[2x − 1], c[2x], c[2x + 1])` along the row (the cells
/// that exist, in that order, as [`maxpool2d`](crate::kernels::pool::maxpool2d)), transposed
/// through `row` and `tr` into `pooled` (`[rows][ph·pw]`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pool_row<const AVX512: bool>(
    grid: Grid,
    y: usize,
    pair: usize,
    channels: usize,
    colmax: &[[f32; COLS]],
    row: &mut [[f32; COLS]],
    tr: &mut [[f32; COLS]; ROWS],
    pooled: &mut [f32],
) {
    let ow = colmax.len();
    let (ph, pw) = grid.pooled_hw();
    let max3 = |d: &mut [f32; COLS], a: &[f32; COLS], b: &[f32; COLS], c: Option<&[f32; COLS]>| {
        for j in 0..COLS {
            let m = a[j].max(b[j]);
            d[j] = c.map_or(m, |c| m.max(c[j]));
        }
        // As in `Pooled::block`: one position at a time.
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    };
    if ow == 1 {
        row[0] = colmax[0];
    } else {
        max3(&mut row[0], &colmax[0], &colmax[1], None);
        // Windows with all three cells: 2·x + 1 < ow.
        let full = ow / 2;
        for (x, d) in row.iter_mut().enumerate().take(full).skip(1) {
            let [a, b, c] = [2 * x - 1, 2 * x, 2 * x + 1].map(|i| &colmax[i]);
            max3(d, a, b, Some(c));
        }
        if ow % 2 == 1 {
            // The last window has lost its right cell.
            max3(&mut row[full], &colmax[ow - 2], &colmax[ow - 1], None);
        }
    }
    // (`row` holds whole blocks of 32 positions: no remainder.)
    for (x0, block) in row.as_chunks::<ROWS>().0.iter().enumerate() {
        let x0 = x0 * ROWS;
        let len = ROWS.min(pw - x0);
        transpose_rows::<f32, AVX512>(block, tr);
        for (c, t) in tr.iter().enumerate().take(channels) {
            let r = pair * COLS + c;
            copy_run(&t[..len], &mut pooled[(r * ph + y) * pw + x0..][..len]);
        }
    }
}

/// `dst = src` for a run of at most 32 values, in moves of 8 (a `copy_from_slice` of a
/// variable length is a call of `memcpy`: most of the pooled stem's time went there).
#[inline(always)]
fn copy_run(src: &[f32], dst: &mut [f32]) {
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        d.copy_from_slice(s);
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}
