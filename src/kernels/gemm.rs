//! The crate's one entry point for single-precision matrix products.
//!
//! Every matrix product in the crate goes through [`matmul`], [`matmul_bt`] (or their
//! sequential twins [`matmul_seq`], [`matmul_bt_seq`]) or the general strided entry point
//! [`gemm()`].
//!
//! Backends (chosen by cargo feature, see [`Backend`]):
//! - `gemm-backend` (default): the [`gemm`](https://docs.rs/gemm) crate, which selects
//!   AVX-512 / AVX2 / NEON micro-kernels at run time;
//! - otherwise: [`matrixmultiply`](https://docs.rs/matrixmultiply), parallelised here by
//!   splitting the rows of `c` across the rayon pool.
//!
//! `matrixmultiply` is always compiled in: [`Backend::MatrixMultiply`] selects it explicitly,
//! which the tests use as an oracle for the default backend.
//!
//! # Panics
//!
//! These are low-level kernels: a slice that is too short for the declared shape and strides
//! is a bug in the caller, reported by an `assert!` with a message naming the operand. No
//! input can cause undefined behaviour.

use rayon::prelude::*;

/// How a matrix product may use threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallelism {
    /// Run on the calling thread only (use this inside rayon `par_iter` loops).
    Sequential,
    /// Split the work across the current rayon pool
    /// ([`rayon::current_num_threads`] threads).
    Rayon,
}

impl Parallelism {
    /// [`Parallelism::Rayon`] when the product has at least [`PAR_THRESHOLD`] multiply-adds
    /// (`m·n·k`) and the pool has more than one thread, else [`Parallelism::Sequential`].
    pub fn auto(m: usize, n: usize, k: usize) -> Self {
        let work = m.saturating_mul(n).saturating_mul(k);
        if work >= PAR_THRESHOLD && rayon::current_num_threads() > 1 {
            Parallelism::Rayon
        } else {
            Parallelism::Sequential
        }
    }
}

/// Products with fewer multiply-adds than this run sequentially under [`Parallelism::auto`].
pub const PAR_THRESHOLD: usize = 1 << 18;

/// Which implementation computes a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The backend selected at compile time: the `gemm` crate with the `gemm-backend`
    /// feature (default), otherwise `matrixmultiply`.
    #[default]
    Default,
    /// `matrixmultiply::sgemm` (always available; the test oracle).
    MatrixMultiply,
}

impl Backend {
    /// Human-readable name of the implementation this variant resolves to.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "gemm-backend")]
            Backend::Default => "gemm",
            #[cfg(not(feature = "gemm-backend"))]
            Backend::Default => "matrixmultiply",
            Backend::MatrixMultiply => "matrixmultiply",
        }
    }
}

/// A read-only strided view of a `rows × cols` matrix: element `(i, j)` is
/// `data[i * row_stride + j * col_stride]`.
///
/// Strides may be anything (including 0, for broadcasting); the view is checked against
/// `data.len()` when used by [`gemm()`].
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    /// Backing storage.
    pub data: &'a [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance in elements between consecutive rows.
    pub row_stride: usize,
    /// Distance in elements between consecutive columns.
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A contiguous row-major `rows × cols` matrix (`row_stride = cols`, `col_stride = 1`).
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transposed view (no data is moved).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Panics unless every element of the view lies inside `data` and the strides fit `isize`.
    fn check(&self, what: &str) {
        assert!(
            self.row_stride <= isize::MAX as usize && self.col_stride <= isize::MAX as usize,
            "gemm: stride of {what} does not fit isize"
        );
        if self.rows == 0 || self.cols == 0 {
            return;
        }
        let last = (self.rows - 1)
            .checked_mul(self.row_stride)
            .and_then(|r| {
                (self.cols - 1)
                    .checked_mul(self.col_stride)
                    .and_then(|c| r.checked_add(c))
            })
            .filter(|&last| last < self.data.len() && last <= isize::MAX as usize);
        assert!(
            last.is_some(),
            "gemm: {what} view ({}×{}, strides {}/{}) exceeds its buffer of {} elements",
            self.rows,
            self.cols,
            self.row_stride,
            self.col_stride,
            self.data.len()
        );
    }
}

/// General product `c (+)= a · b` with strided `a` (`m×k`) and `b` (`k×n`) and a row-major
/// `c` (`m×n`) whose rows are `ldc` elements apart (`ldc ≥ n`).
///
/// With `accumulate == false`, `c` is overwritten (its previous content is never read, so it
/// may hold NaNs); with `accumulate == true` the product is added to it.
///
/// # Panics
///
/// If `a.cols != b.rows`, if a view exceeds its buffer, if `ldc < n` or if `c`
/// is too short for `m` rows of stride `ldc`.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    parallelism: Parallelism,
    backend: Backend,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(
        b.rows == k,
        "gemm: inner dimensions differ (a is {m}×{k}, b is {}×{n})",
        b.rows
    );
    a.check("a");
    b.check("b");
    assert!(ldc >= n, "gemm: ldc = {ldc} is smaller than n = {n}");
    assert!(ldc <= isize::MAX as usize, "gemm: ldc does not fit isize");
    if m == 0 || n == 0 {
        return;
    }
    let c_needed = (m - 1)
        .checked_mul(ldc)
        .and_then(|x| x.checked_add(n))
        .filter(|&x| x <= isize::MAX as usize);
    assert!(
        matches!(c_needed, Some(x) if x <= c.len()),
        "gemm: c has {} elements, {m}×{n} with row stride {ldc} needs more",
        c.len()
    );
    if k == 0 {
        if !accumulate {
            for row in 0..m {
                c[row * ldc..row * ldc + n].fill(0.0);
            }
        }
        return;
    }
    match backend {
        #[cfg(feature = "gemm-backend")]
        Backend::Default => gemm_crate(a, b, c, ldc, accumulate, parallelism),
        #[cfg(not(feature = "gemm-backend"))]
        Backend::Default => mm_par(a, b, c, ldc, accumulate, parallelism),
        Backend::MatrixMultiply => mm_par(a, b, c, ldc, accumulate, parallelism),
    }
}

/// The `gemm` crate backend. Shapes, strides and buffer lengths were checked by [`gemm()`]:
/// `m, n, k ≥ 1`, every element of `a`, `b` and of the `m×n` block of `c` is in bounds.
#[cfg(feature = "gemm-backend")]
fn gemm_crate(
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    parallelism: Parallelism,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let par = match parallelism {
        Parallelism::Sequential => ::gemm::Parallelism::None,
        Parallelism::Rayon => ::gemm::Parallelism::Rayon(rayon::current_num_threads()),
    };
    // SAFETY: `gemm` (the caller) asserted that for all i < m, j < n, p < k the offsets
    // i*a.row_stride + p*a.col_stride < a.data.len(), p*b.row_stride + j*b.col_stride <
    // b.data.len() and i*ldc + j < c.len(), and that all strides and offsets fit `isize`, so
    // every pointer the kernel forms stays inside its allocation. The `m×n` destination
    // elements are pairwise distinct (row stride ldc ≥ n, column stride 1), so the parallel
    // kernel never writes one location from two threads. `c` is a unique borrow and `a`, `b`
    // shared borrows, so the destination does not alias the inputs. With `read_dst == false`
    // the kernel does not read `c` (the product is stored with factor `beta = 1`); with
    // `read_dst == true` it computes `c = 1·c + 1·a·b`. T = f32 is a supported type.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

/// `matrixmultiply` on one block of rows; preconditions as in [`gemm_crate`].
fn mm_block(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 {
        return;
    }
    debug_assert!((m - 1) * ldc + n <= c.len());
    // SAFETY: every element the kernel touches is in bounds: `gemm` asserted the views of `a`
    // and `b` lie inside their slices, and `mm_par` passes a block of `c` holding at least
    // (m-1)*ldc + n elements (checked above in debug builds; by construction in release).
    // Strides fit `isize` (asserted by `gemm`). `c` is uniquely borrowed and does not alias
    // `a` or `b`. With beta = 0, matrixmultiply does not read `c` (it may hold NaN).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.data.as_ptr(),
            a.row_stride as isize,
            a.col_stride as isize,
            b.data.as_ptr(),
            b.row_stride as isize,
            b.col_stride as isize,
            if accumulate { 1.0 } else { 0.0 },
            c.as_mut_ptr(),
            ldc as isize,
            1,
        );
    }
}

/// `matrixmultiply` backend, parallelised by splitting the rows of `c` across rayon.
fn mm_par(
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    parallelism: Parallelism,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let threads = rayon::current_num_threads();
    if parallelism == Parallelism::Sequential || threads <= 1 || m < 16 {
        mm_block(a, b, c, ldc, accumulate);
        return;
    }
    // Rows per task: a multiple of 8 (the micro-kernel height), about two tasks per thread.
    let tasks = (threads * 2).min(m.div_ceil(8));
    let rows_per = m.div_ceil(tasks).div_ceil(8) * 8;
    let c = &mut c[..(m - 1) * ldc + n];
    c.par_chunks_mut(rows_per * ldc)
        .enumerate()
        .for_each(|(t, block)| {
            let r0 = t * rows_per;
            let rows = rows_per.min(m - r0);
            let a_block = MatRef {
                data: &a.data[r0 * a.row_stride..],
                rows,
                cols: k,
                row_stride: a.row_stride,
                col_stride: a.col_stride,
            };
            mm_block(a_block, b, block, ldc, accumulate);
        });
}

/// `c[m×n] (+)= a[m×k] · b[k×n]`, all row-major and contiguous.
///
/// With `accumulate == false`, `c` is overwritten. Runs on the rayon pool when the product is
/// large ([`Parallelism::auto`]); inside `par_iter` loops prefer [`matmul_seq`].
///
/// # Panics
///
/// If `a`, `b` or `c` is shorter than `m·k`, `k·n`, `m·n` elements (extra elements are
/// ignored).
pub fn matmul(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32], accumulate: bool) {
    matmul_with(
        m,
        n,
        k,
        a,
        b,
        c,
        accumulate,
        Parallelism::auto(m, n, k),
        Backend::Default,
    );
}

/// [`matmul`] on the calling thread only.
///
/// # Panics
///
/// As [`matmul`].
pub fn matmul_seq(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
) {
    matmul_with(
        m,
        n,
        k,
        a,
        b,
        c,
        accumulate,
        Parallelism::Sequential,
        Backend::Default,
    );
}

/// [`matmul`] with explicit parallelism and backend.
///
/// # Panics
///
/// As [`matmul`].
#[allow(clippy::too_many_arguments)]
pub fn matmul_with(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
    parallelism: Parallelism,
    backend: Backend,
) {
    check_len("a", a.len(), m, k);
    check_len("b", b.len(), k, n);
    check_len("c", c.len(), m, n);
    gemm(
        MatRef::row_major(&a[..m * k], m, k),
        MatRef::row_major(&b[..k * n], k, n),
        c,
        n,
        accumulate,
        parallelism,
        backend,
    );
}

/// `c[m×n] (+)= a[m×k] · b[n×k]ᵀ`, all row-major and contiguous (`b` holds `n` rows of
/// length `k`, e.g. a memory bank). With `accumulate == false`, `c` is overwritten.
///
/// Runs on the rayon pool when the product is large ([`Parallelism::auto`]); inside
/// `par_iter` loops prefer [`matmul_bt_seq`].
///
/// # Panics
///
/// If `a`, `b` or `c` is shorter than `m·k`, `n·k`, `m·n` elements (extra elements are
/// ignored).
pub fn matmul_bt(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
) {
    matmul_bt_with(
        m,
        n,
        k,
        a,
        b,
        c,
        accumulate,
        Parallelism::auto(m, n, k),
        Backend::Default,
    );
}

/// [`matmul_bt`] on the calling thread only.
///
/// # Panics
///
/// As [`matmul_bt`].
pub fn matmul_bt_seq(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
) {
    matmul_bt_with(
        m,
        n,
        k,
        a,
        b,
        c,
        accumulate,
        Parallelism::Sequential,
        Backend::Default,
    );
}

/// [`matmul_bt`] with explicit parallelism and backend.
///
/// # Panics
///
/// As [`matmul_bt`].
#[allow(clippy::too_many_arguments)]
pub fn matmul_bt_with(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
    parallelism: Parallelism,
    backend: Backend,
) {
    check_len("a", a.len(), m, k);
    check_len("b", b.len(), n, k);
    check_len("c", c.len(), m, n);
    gemm(
        MatRef::row_major(&a[..m * k], m, k),
        MatRef::row_major(&b[..n * k], n, k).t(),
        c,
        n,
        accumulate,
        parallelism,
        backend,
    );
}

fn check_len(what: &str, len: usize, rows: usize, cols: usize) {
    let need = rows.checked_mul(cols);
    assert!(
        matches!(need, Some(x) if x <= len),
        "matmul: {what} has {len} elements, {rows}×{cols} needed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_known_product() {
        // [1 2; 3 4] · [5 6; 7 8] = [19 22; 43 50]
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [5.0, 6.0, 7.0, 8.0];
        let mut c = [f32::NAN; 4];
        matmul(2, 2, 2, &a, &b, &mut c, false);
        assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
        // b given as rows of bᵀ: [5 7; 6 8]
        let bt = [5.0, 7.0, 6.0, 8.0];
        matmul_bt(2, 2, 2, &a, &bt, &mut c, true);
        assert_eq!(c, [38.0, 44.0, 86.0, 100.0]);
    }

    #[test]
    #[should_panic(expected = "matmul: b has")]
    fn short_b_panics() {
        let mut c = [0.0; 4];
        matmul(2, 2, 2, &[0.0; 4], &[0.0; 3], &mut c, false);
    }

    #[test]
    #[should_panic(expected = "exceeds its buffer")]
    fn bad_stride_panics() {
        let a = MatRef {
            data: &[0.0; 4],
            rows: 2,
            cols: 2,
            row_stride: 3,
            col_stride: 1,
        };
        let b = MatRef::row_major(&[0.0; 4], 2, 2);
        let mut c = [0.0; 4];
        gemm(
            a,
            b,
            &mut c,
            2,
            false,
            Parallelism::Sequential,
            Backend::Default,
        );
    }
}
