//! A product written as the padded channels-last image of a following direct convolution
//! ([`super::direct`]), instead of planes that the convolution would then transpose: each
//! finished 32 × 32 block of sums (32 rows of the product, the image's channels, × 32
//! columns, its pixels) is transposed to pixel-major and made into the image's elements by
//! a [`DirectValues`] (bias, ReLU, rounding to bf16), 32 channels of one pixel at a time. In
//! bf16 those 32 channels are exactly one cache line of the image, so tasks of different row
//! blocks never write the same line.

use super::direct::{transpose32, zero_padding, DirectValues, Grid};
use super::{blocks, AmxOp, AmxWeights, BlockSink, SumsBuf, COLS, ROWS};
use crate::kernels::wide::Wide;

/// The product of `w` (`grid.cin` rows, a multiple of 32) and the packed activations
/// `packed` (as [`blocks`] reads them, for `grid.h·grid.w` columns), written as the padded
/// channels-last image of `grid` into `image` ([`Grid::len`] elements): the element of
/// channel `c` at pixel `(y, x)` is `values` of the sum of row `c` and column `y·w + x`; the
/// padding is zero. Tasks are runs of row blocks, about two per rayon thread when `parallel`;
/// the result does not depend on the split. Returns `false` when a value exceeded the range
/// of `values` (the image is then not valid).
///
/// # Panics
/// If `grid.cin` is not a multiple of 32, `w` does not have `grid.cin` rows or `image` has
/// the wrong length.
pub(crate) fn product_to_image<O, P, V>(
    op: O,
    w: &AmxWeights,
    packed: &[P],
    grid: Grid,
    parallel: bool,
    values: &V,
    image: &mut [V::Elem],
) -> bool
where
    O: AmxOp,
    P: Copy + Sync,
    V: DirectValues<O::Sum>,
{
    let m = grid.cin;
    assert!(
        m.is_multiple_of(ROWS) && w.row_blocks() == m / ROWS,
        "amx image: weights for {} row blocks, {m} channels",
        w.row_blocks()
    );
    assert_eq!(image.len(), grid.len(), "amx image: image length");
    zero_padding(grid, image);
    let shared = SharedImage::new(image);
    let row_blocks = m / ROWS;
    // Whole cache lines of every pixel per task (two row blocks of bytes), so that no two
    // threads write the same line.
    let per_line = (64 / (ROWS * std::mem::size_of::<V::Elem>())).max(1);
    let task_blocks = if parallel {
        row_blocks
            .div_ceil(2 * crate::kernels::par::threads())
            .next_multiple_of(per_line)
    } else {
        row_blocks
    };
    let tasks = row_blocks.div_ceil(task_blocks);
    let wide = Wide::detect(true);
    let task = |sums: &mut SumsBuf<O::Sum>, t: usize| -> bool {
        let range = t * task_blocks..((t + 1) * task_blocks).min(row_blocks);
        match wide {
            Wide::Baseline => {
                let mut sink = ToImage::<_, _, false>::new(grid, values, &shared);
                blocks(op, w, range, packed, sums, &mut sink);
                sink.over
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected.
            Wide::Avx512(_) => unsafe {
                blocks_avx512(op, w, range, packed, sums, grid, values, &shared)
            },
        }
    };
    let over = if parallel {
        crate::kernels::par::run(tasks, SumsBuf::new, task, false, |a, b| a | b)
    } else {
        let mut sums = SumsBuf::new();
        (0..tasks).fold(false, |a, t| task(&mut sums, t) | a)
    };
    !over
}

/// [`blocks`] into a [`ToImage`] sink, compiled with AVX-512 (the sink's transposition and
/// element loop inline into it); returns whether a value exceeded the range.
///
/// # Safety
/// The CPU must run AVX512F and AVX512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[allow(clippy::too_many_arguments)]
unsafe fn blocks_avx512<O: AmxOp, P: Copy, V: DirectValues<O::Sum>>(
    op: O,
    w: &AmxWeights,
    range: std::ops::Range<usize>,
    packed: &[P],
    sums: &mut SumsBuf<O::Sum>,
    grid: Grid,
    values: &V,
    image: &SharedImage<'_, V::Elem>,
) -> bool {
    let mut sink = ToImage::<_, _, true>::new(grid, values, image);
    blocks(op, w, range, packed, sums, &mut sink);
    sink.over
}

/// The image of [`product_to_image`], written by its tasks through a raw pointer: each task
/// writes only the channels of its own row blocks (see [`SharedImage::put`]).
pub(super) struct SharedImage<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: the pointer comes from a `&'a mut [T]` held for the whole product; tasks on other
// threads write disjoint elements through it (`put`), and nothing reads it meanwhile.
unsafe impl<T: Send> Sync for SharedImage<'_, T> {}

impl<'a, T: Copy> SharedImage<'a, T> {
    /// Shares `image` among the tasks of one product or convolution.
    pub(super) fn new(image: &'a mut [T]) -> Self {
        SharedImage {
            ptr: image.as_mut_ptr(),
            len: image.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    /// Writes `run` at `at .. at + 32`.
    ///
    /// # Safety
    /// No other thread may access those elements during the call. The writers are tasks
    /// that own disjoint runs of 32 channels: [`product_to_image`]'s tasks are disjoint runs
    /// of row blocks, and row block `b` owns channels `32·b .. 32·b + 32` of every pixel;
    /// [`super::direct::conv_image`]'s are disjoint runs of output-channel pairs, and pair
    /// `q` owns channels `32·q .. 32·q + 32`, or disjoint runs of blocks of positions, and
    /// each owns every channel of its blocks' pixels (a pixel is in one block).
    pub(super) unsafe fn put(&self, at: usize, run: &[T; ROWS]) {
        assert!(at + ROWS <= self.len, "amx image: element out of range");
        // SAFETY: in bounds (checked above) of the exclusively borrowed buffer; the caller
        // guarantees that no other thread touches these elements.
        unsafe { std::ptr::copy_nonoverlapping(run.as_ptr(), self.ptr.add(at), ROWS) };
    }
}

/// The sink of [`product_to_image`]: each block transposed (with AVX-512 when `AVX512`),
/// then every pixel's 32 channel sums made into elements and written at that pixel.
struct ToImage<'a, S, V: DirectValues<S>, const AVX512: bool> {
    grid: Grid,
    values: &'a V,
    image: &'a SharedImage<'a, V::Elem>,
    tr: [[S; COLS]; ROWS],
    over: bool,
}

impl<'a, S: Copy + Default, V: DirectValues<S>, const AVX512: bool> ToImage<'a, S, V, AVX512> {
    fn new(grid: Grid, values: &'a V, image: &'a SharedImage<'a, V::Elem>) -> Self {
        ToImage {
            grid,
            values,
            image,
            tr: [[S::default(); COLS]; ROWS],
            over: false,
        }
    }
}

impl<S: Copy, V: DirectValues<S>, const AVX512: bool> BlockSink<S> for ToImage<'_, S, V, AVX512> {
    #[inline(always)]
    fn block(&mut self, blk: usize, c0: usize, sums: &[[S; COLS]; ROWS]) {
        let tr = &mut self.tr;
        #[cfg(target_arch = "x86_64")]
        if AVX512 {
            // SAFETY: `AVX512` is true only in the sinks of `blocks_avx512`, which requires
            // AVX512F.
            unsafe { super::direct::transpose32_avx512(sums, tr) };
        } else {
            transpose32(sums, tr);
        }
        #[cfg(not(target_arch = "x86_64"))]
        transpose32(sums, tr);
        let Grid { cin, h, w, .. } = self.grid;
        let (pad, wp) = ((self.grid.size - 1) / 2, self.grid.wp());
        let ch0 = blk * ROWS;
        let consts = self.values.pair(ch0, ROWS);
        let mut over = false;
        for (c, s) in tr.iter().enumerate().take((h * w).saturating_sub(c0)) {
            let j = c0 + c;
            let (y, x) = (j / w, j % w);
            let mut run = [V::Elem::default(); ROWS];
            over |= self.values.values(&consts, s, &mut run);
            let at = ((y + pad) * wp + x + pad) * cin + ch0;
            // SAFETY: channels `ch0 .. ch0 + 32` belong to this task's row block `blk` alone
            // (see `SharedImage::put`).
            unsafe { self.image.put(at, &run) };
        }
        self.over |= over;
    }
}
