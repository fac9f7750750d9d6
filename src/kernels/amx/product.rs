//! The driver of an AMX product: tasks of row blocks over rayon, each run in an AVX-512 copy
//! of its loop, and the epilogue interface through which finished sums leave it.

use super::{blocks, AmxOp, AmxWeights, SumsBuf, COLS, ROWS};
use crate::kernels::wide::Wide;

/// What a product does with each finished segment of sums: `emit(row, col0, sums, out)` with
/// the sums of output row `row` for columns `col0 .. col0 + sums.len()` and the same segment of
/// the output. Closures are epilogues; a type whose `emit` is `#[inline(always)]` is compiled
/// into the AVX-512 copy of the product's loop, where a closure shared by several products
/// stays a call to its baseline (128-bit) code.
pub(crate) trait Emit<S, T>: Sync {
    /// Handles one segment.
    fn emit(&self, row: usize, col0: usize, sums: &[S], out: &mut [T]);
}

impl<S, T, F: Fn(usize, usize, &[S], &mut [T]) + Sync> Emit<S, T> for F {
    #[inline(always)]
    fn emit(&self, row: usize, col0: usize, sums: &[S], out: &mut [T]) {
        self(row, col0, sums, out)
    }
}

/// The whole product of `w` and the packed activations `packed` (as [`blocks`](super::blocks)) for an output
/// of `n` columns, `out` (row-major, `out.len() / n` rows): calls `emit(row, col0, sums,
/// segment)` once per row and pair of panels with that row's sums for columns `col0 ..
/// col0 + segment.len()` and the same segment of `out`. Tasks are runs of whole row blocks
/// (about two per rayon thread when `parallel`, else one), each with one [`SumsBuf`] per
/// thread's run of tasks; the sums do not depend on the split.
pub(crate) fn product<O: AmxOp, P: Copy + Sync, T: Send>(
    op: O,
    w: &AmxWeights,
    packed: &[P],
    n: usize,
    out: &mut [T],
    parallel: bool,
    emit: &impl Emit<O::Sum, T>,
) {
    let row_blocks = (out.len() / n).div_ceil(ROWS);
    // Each task streams the activations once: few tasks, but enough to balance the threads.
    let task_blocks = if parallel {
        row_blocks.div_ceil(2 * rayon::current_num_threads()).max(1)
    } else {
        row_blocks
    };
    // The epilogues are plain loops: compiled with AVX-512 where the CPU has it (every CPU
    // with AMX so far), they run 4× wider than the baseline's 128 bits.
    let wide = Wide::detect(true);
    let job = Task {
        op,
        w,
        packed,
        n,
        task_blocks,
        emit,
    };
    let task = |sums: &mut SumsBuf<O::Sum>, t: usize, o: &mut [T]| match wide {
        Wide::Baseline => job.run(sums, t, o),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected.
        Wide::Avx512(_) => unsafe { job.run_avx512(sums, t, o) },
    };
    let task_len = task_blocks * ROWS * n;
    if parallel {
        use rayon::prelude::*;
        out.par_chunks_mut(task_len)
            .enumerate()
            .for_each_init(SumsBuf::new, |sums, (i, o)| task(sums, i, o));
    } else {
        task(&mut SumsBuf::new(), 0, out);
    }
}

/// Where [`blocks`] hands each finished 32 × 32 block of sums (a trait with an
/// `#[inline(always)]` method rather than a closure, so that it inlines into the AVX-512 copy
/// of the loop).
pub(crate) trait BlockSink<S> {
    /// The sums of row block `block` for the columns `col0 ..`.
    fn block(&mut self, block: usize, col0: usize, sums: &[[S; COLS]; ROWS]);
}

/// The rows `o` of a task of [`product`]: each block's rows go to `emit`, segment by segment.
struct RowsOut<'a, E, T> {
    emit: &'a E,
    o: &'a mut [T],
    n: usize,
    first: usize,
    rows: usize,
}

impl<S, T, E: Emit<S, T>> BlockSink<S> for RowsOut<'_, E, T> {
    #[inline(always)]
    fn block(&mut self, blk: usize, c0: usize, sums: &[[S; COLS]; ROWS]) {
        let n = self.n;
        let cols = COLS.min(n - c0);
        let r0 = (blk - self.first) * ROWS;
        for (r, s) in sums.iter().enumerate().take(self.rows - r0) {
            self.emit.emit(
                blk * ROWS + r,
                c0,
                &s[..cols],
                &mut self.o[(r0 + r) * n + c0..][..cols],
            );
        }
    }
}

/// One task of [`product`]: the row blocks of the output rows `o` (task `t`).
struct Task<'a, O, P, E> {
    op: O,
    w: &'a AmxWeights,
    packed: &'a [P],
    n: usize,
    task_blocks: usize,
    emit: &'a E,
}

impl<O: AmxOp, P: Copy, E> Task<'_, O, P, E> {
    /// The task's products and epilogues.
    #[inline(always)]
    fn run<T>(&self, sums: &mut SumsBuf<O::Sum>, t: usize, o: &mut [T])
    where
        E: Emit<O::Sum, T>,
    {
        let first = t * self.task_blocks;
        let rows = o.len() / self.n;
        let range = first..first + rows.div_ceil(ROWS);
        let mut sink = RowsOut {
            emit: self.emit,
            o,
            n: self.n,
            first,
            rows,
        };
        blocks(self.op, self.w, range, self.packed, sums, &mut sink);
    }

    /// [`Task::run`] compiled with AVX-512 (epilogues with an `#[inline(always)]` `emit`
    /// inline into it).
    ///
    /// # Safety
    /// The CPU must run AVX512F and AVX512BW.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn run_avx512<T>(&self, sums: &mut SumsBuf<O::Sum>, t: usize, o: &mut [T])
    where
        E: Emit<O::Sum, T>,
    {
        self.run(sums, t, o)
    }
}
