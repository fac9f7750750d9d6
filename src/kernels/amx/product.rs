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

    /// The segment `row`, `col0 .. col0 + len` comes soon: an epilogue that reads other
    /// memory for it (a residual) may ask for those lines now ([`prefetch_read`]).
    #[inline(always)]
    fn prefetch(&self, row: usize, col0: usize, len: usize) {
        let _ = (row, col0, len);
    }
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
    product_impl(
        op,
        w,
        packed,
        n,
        out,
        parallel,
        emit,
        None::<(&NoHandoff, _)>,
    );
}

/// [`product`], whose output is also handed on as the packed activations of a following
/// product (the output's rows are its `k`): `handoff.values` turns each finished row segment
/// into that product's elements (bytes for int8, bf16 bits for bf16), which are written to
/// `panels` in the layout [`blocks`] reads (panels of 16 columns, `kw` words of `k` per column,
/// [`PanelElem::PER_WORD`] elements to a word: [`packed_words`](super::packed_words)`(kw / 16,
/// n)` words). Elements of columns past `n` and of rows past the output's up to the next
/// multiple of 32 are zero; the words past those (when the output has fewer rows than the
/// words hold) are left as they were: the following product's weights are zero there.
///
/// # Panics
/// If `kw` is not a multiple of 16, is smaller than the output's rows take, or `panels` has
/// the wrong length.
#[allow(clippy::too_many_arguments)]
pub(crate) fn product_handoff<O: AmxOp, P: Copy + Sync, T: Send, H: Handoff<T>>(
    op: O,
    w: &AmxWeights,
    packed: &[P],
    n: usize,
    out: &mut [T],
    parallel: bool,
    emit: &impl Emit<O::Sum, T>,
    handoff: &H,
    panels: &mut [u32],
    kw: usize,
) {
    let m = out.len() / n;
    let per = H::Elem::PER_WORD;
    assert!(
        kw.is_multiple_of(16) && per * kw >= m,
        "amx handoff: {kw} words of k for {m} rows"
    );
    assert_eq!(
        panels.len(),
        super::packed_words(kw / 16, n),
        "amx handoff: panels length"
    );
    let shared = SharedPanels {
        ptr: panels.as_mut_ptr(),
        len: panels.len(),
        kw,
        _borrow: std::marker::PhantomData,
    };
    product_impl(
        op,
        w,
        packed,
        n,
        out,
        parallel,
        emit,
        Some((handoff, &shared)),
    );
}

/// Where a product on AMX also writes its output, as the packed activations of a following
/// 1×1 product whose depth is this output's rows ([`product_handoff`]): `handoff` turns
/// output values into that product's elements, `panels` receives them (`kw` words of `k` per
/// column).
pub(crate) struct HandOn<'a, H> {
    /// The elements of the output values.
    pub handoff: &'a H,
    /// The packed activations ([`packed_words`](super::packed_words)`(kw / 16, n)` words).
    pub panels: &'a mut [u32],
    /// Words of `k` per column of the following product (its AMX chunks × 16).
    pub kw: usize,
}

/// No [`HandOn`].
pub(crate) fn no_hand_on<'a>() -> Option<HandOn<'a, NoHandoff>> {
    None
}

/// [`product`], or [`product_handoff`] with `hand_on`; returns whether the output was handed
/// on.
#[allow(clippy::too_many_arguments)]
pub(crate) fn product_or_handoff<O: AmxOp, P: Copy + Sync, T: Send, H: Handoff<T>>(
    op: O,
    w: &AmxWeights,
    packed: &[P],
    n: usize,
    out: &mut [T],
    parallel: bool,
    emit: &impl Emit<O::Sum, T>,
    hand_on: Option<HandOn<'_, H>>,
) -> bool {
    match hand_on {
        Some(HandOn {
            handoff,
            panels,
            kw,
        }) => {
            product_handoff(op, w, packed, n, out, parallel, emit, handoff, panels, kw);
            true
        }
        None => {
            product(op, w, packed, n, out, parallel, emit);
            false
        }
    }
}

/// The body of [`product`] and [`product_handoff`].
#[allow(clippy::too_many_arguments)]
fn product_impl<O: AmxOp, P: Copy + Sync, T: Send, H: Handoff<T>>(
    op: O,
    w: &AmxWeights,
    packed: &[P],
    n: usize,
    out: &mut [T],
    parallel: bool,
    emit: &impl Emit<O::Sum, T>,
    handoff: Option<(&H, &SharedPanels<'_>)>,
) {
    let row_blocks = (out.len() / n).div_ceil(ROWS);
    // Each task streams the activations once: few tasks, but enough to balance the threads.
    let task_blocks = if parallel {
        row_blocks
            .div_ceil(2 * crate::kernels::par::threads())
            .max(1)
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
        handoff,
    };
    let task = |sums: &mut SumsBuf<O::Sum>, t: usize, o: &mut [T]| match wide {
        Wide::Baseline => job.run(sums, t, o),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected.
        Wide::Avx512(_) => unsafe { job.run_avx512(sums, t, o) },
    };
    let task_len = task_blocks * ROWS * n;
    if parallel {
        crate::kernels::par::chunks_mut(out, task_len, SumsBuf::new, task, (), |_, _| ());
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

    /// Row block `block` of the columns `col0 .. col0 + cols` is next: a sink that writes
    /// memory may ask for its lines now, so that they arrive while the tiles compute.
    #[inline(always)]
    fn prefetch(&mut self, block: usize, col0: usize, cols: usize) {
        let _ = (block, col0, cols);
    }
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
    fn prefetch(&mut self, blk: usize, c0: usize, cols: usize) {
        let n = self.n;
        let cols = cols.min(n - c0);
        let r0 = (blk - self.first) * ROWS;
        for r in r0..(r0 + ROWS).min(self.rows) {
            prefetch_write(&self.o[r * n + c0..][..cols]);
            self.emit.prefetch(blk * ROWS + r - r0, c0, cols);
        }
    }

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

/// An element of the AMX panels of activations: a byte (int8, four `k` to a 32-bit word) or
/// the bits of a bf16 (two `k` to a word), the first `k` in the low bits.
pub(crate) trait PanelElem: Copy + Default + Send + Sync {
    /// Elements per 32-bit word.
    const PER_WORD: usize;

    /// The word of `parts` (`PER_WORD` elements of consecutive `k`).
    fn word(parts: &[Self]) -> u32;
}

impl PanelElem for u8 {
    const PER_WORD: usize = 4;

    #[inline(always)]
    fn word(parts: &[u8]) -> u32 {
        u32::from_le_bytes([parts[0], parts[1], parts[2], parts[3]])
    }
}

impl PanelElem for u16 {
    const PER_WORD: usize = 2;

    #[inline(always)]
    fn word(parts: &[u16]) -> u32 {
        u32::from(parts[0]) | u32::from(parts[1]) << 16
    }
}

/// How [`product_handoff`] turns its output into the elements of the following product.
pub(crate) trait Handoff<T>: Sync {
    /// The following product's element.
    type Elem: PanelElem;

    /// `values[j]` for the output value `row[j]` (same lengths).
    fn values(&self, row: &[T], values: &mut [Self::Elem]);
}

/// The handoff of a plain [`product`] (never called).
pub(crate) struct NoHandoff;

impl<T> Handoff<T> for NoHandoff {
    type Elem = u8;

    fn values(&self, _: &[T], _: &mut [u8]) {
        unreachable!("a product without handoff hands nothing on")
    }
}

/// The panels of [`product_handoff`], written by its tasks through a raw pointer: each task
/// writes only the words of `k` of its own row blocks (see [`SharedPanels::put`]).
struct SharedPanels<'a> {
    ptr: *mut u32,
    len: usize,
    kw: usize,
    _borrow: std::marker::PhantomData<&'a mut [u32]>,
}

// SAFETY: the pointer comes from a `&'a mut [u32]` held for the whole product; tasks on other
// threads write disjoint words through it (`put`), and nothing reads it during the product.
unsafe impl Sync for SharedPanels<'_> {}

impl SharedPanels<'_> {
    /// Writes `words` as the 16 columns of word `g` of `k` in panel `panel`.
    ///
    /// # Safety
    /// No other thread may access those 16 words during the call. [`product_impl`]'s tasks
    /// are disjoint runs of row blocks, and a row block of 32 rows owns the words
    /// `32·block / PER_WORD ..` up to the next block's of every panel, which only its task
    /// writes.
    unsafe fn put(&self, panel: usize, g: usize, words: &[u32; 16]) {
        let at = (panel * self.kw + g) * 16;
        assert!(
            g < self.kw && at + 16 <= self.len,
            "amx handoff: word out of range"
        );
        // SAFETY: in bounds (checked above) of the exclusively borrowed buffer; the caller
        // guarantees that no other thread touches these words.
        unsafe { std::ptr::copy_nonoverlapping(words.as_ptr(), self.ptr.add(at), 16) };
    }
}

/// The sink of a task of [`product_handoff`]: the rows to the epilogue as [`RowsOut`], then
/// the block's output values as bytes into the panels.
struct RowsAndPanels<'a, E, T, H> {
    rows: RowsOut<'a, E, T>,
    handoff: &'a H,
    panels: &'a SharedPanels<'a>,
}

impl<S, T, E: Emit<S, T>, H: Handoff<T>> BlockSink<S> for RowsAndPanels<'_, E, T, H> {
    #[inline(always)]
    fn prefetch(&mut self, blk: usize, c0: usize, cols: usize) {
        self.rows.prefetch(blk, c0, cols);
    }

    #[inline(always)]
    fn block(&mut self, blk: usize, c0: usize, sums: &[[S; COLS]; ROWS]) {
        self.rows.block(blk, c0, sums);
        let RowsOut {
            o, n, first, rows, ..
        } = &self.rows;
        let (n, r0) = (*n, (blk - first) * ROWS);
        let (cols, valid) = (COLS.min(n - c0), ROWS.min(rows - r0));
        // Rows and columns past the output stay zero.
        let mut q = [[H::Elem::default(); COLS]; ROWS];
        for (r, qr) in q.iter_mut().enumerate().take(valid) {
            self.handoff
                .values(&o[(r0 + r) * n + c0..][..cols], &mut qr[..cols]);
        }
        let per = H::Elem::PER_WORD;
        for (g, rows) in q.chunks_exact(per).enumerate() {
            // The words of the two panels of the pair: `per` rows' elements of each column.
            let mut words = [[0u32; 16]; 2];
            for (i, half) in words.iter_mut().enumerate() {
                for (j, wd) in half.iter_mut().enumerate() {
                    let c = 16 * i + j;
                    let mut parts = [H::Elem::default(); 4];
                    for (p, row) in parts.iter_mut().zip(rows) {
                        *p = row[c];
                    }
                    *wd = H::Elem::word(&parts[..per]);
                }
            }
            let group = blk * ROWS / per + g;
            for (i, half) in words.iter().enumerate() {
                // SAFETY: row block `blk` belongs to this task only (see `SharedPanels::put`).
                unsafe { self.panels.put(c0 / 16 + i, group, half) };
            }
        }
    }
}

/// One task of [`product`]: the row blocks of the output rows `o` (task `t`).
struct Task<'a, O, P, E, H> {
    op: O,
    w: &'a AmxWeights,
    packed: &'a [P],
    n: usize,
    task_blocks: usize,
    emit: &'a E,
    handoff: Option<(&'a H, &'a SharedPanels<'a>)>,
}

impl<O: AmxOp, P: Copy, E, H> Task<'_, O, P, E, H> {
    /// The task's products and epilogues.
    #[inline(always)]
    fn run<T>(&self, sums: &mut SumsBuf<O::Sum>, t: usize, o: &mut [T])
    where
        E: Emit<O::Sum, T>,
        H: Handoff<T>,
    {
        let first = t * self.task_blocks;
        let rows = o.len() / self.n;
        let range = first..first + rows.div_ceil(ROWS);
        let rows = RowsOut {
            emit: self.emit,
            o,
            n: self.n,
            first,
            rows,
        };
        match self.handoff {
            None => {
                let mut sink = rows;
                blocks(self.op, self.w, range, self.packed, sums, &mut sink);
            }
            Some((handoff, panels)) => {
                let mut sink = RowsAndPanels {
                    rows,
                    handoff,
                    panels,
                };
                blocks(self.op, self.w, range, self.packed, sums, &mut sink);
            }
        }
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
        H: Handoff<T>,
    {
        self.run(sums, t, o)
    }
}

/// Asks for the cache lines of `values` to be written (`prefetchw`: each line in the
/// exclusive state), a hint only, as [`prefetch_read`].
#[inline(always)]
fn prefetch_write<T>(values: &[T]) {
    prefetch_lines::<true, T>(values);
}

/// Asks for the cache lines of `values` (`prefetcht0`: into every cache level), a hint only:
/// no memory is read or written.
#[inline(always)]
pub(crate) fn prefetch_read<T>(values: &[T]) {
    prefetch_lines::<false, T>(values);
}

/// One prefetch per 64 bytes of `values`, for writing (`WRITE`) or reading.
#[inline(always)]
fn prefetch_lines<const WRITE: bool, T>(values: &[T]) {
    let p = values.as_ptr().cast::<u8>();
    for off in (0..std::mem::size_of_val(values)).step_by(64) {
        let line = p.wrapping_add(off).cast::<i8>();
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch reads and writes no memory and does not fault (the addresses
        // are inside `values` anyway).
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0, _MM_HINT_T0};
            if WRITE {
                _mm_prefetch::<_MM_HINT_ET0>(line)
            } else {
                _mm_prefetch::<_MM_HINT_T0>(line)
            }
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = line;
    }
}
