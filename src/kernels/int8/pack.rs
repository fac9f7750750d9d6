//! Packing of the activations for the int8 kernels (see the [module documentation](super)):
//! each value turned into a byte on the way, four consecutive `k` per 32-bit word.

use crate::kernels::gemm::Parallelism;
use crate::kernels::wide::Wide;

/// Packs the row-major `k × n` matrix `b`, each element turned into a byte by `byte`, into
/// `out`: `n.div_ceil(nr)` panels of `k4 · nr` words, `k4 ≥ k.div_ceil(4)` groups of four `k`
/// (zero-padded, like the columns past `n`). Panels are packed in parallel under
/// [`Parallelism::Rayon`], with the loop compiled for AVX-512 when `wide` says so.
///
/// Returns the largest `key(v)` over the elements of `b`, at least 0 (NaN ignored, as
/// [`max_or_zero`](super::max_or_zero)), found in the same pass: `|v| v` gives the range of
/// `f32` activations for free, `|_| 0.0` when it is not wanted.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_b<S: Copy + Sync>(
    wide: Wide,
    b: &[S],
    byte: impl Fn(S) -> u8 + Sync,
    key: impl Fn(S) -> f32 + Sync,
    k: usize,
    k4: usize,
    n: usize,
    nr: usize,
    out: &mut [u32],
    par: Parallelism,
) -> f32 {
    debug_assert!(k4 * 4 >= k);
    if k4 * nr == 0 {
        return 0.0;
    }
    let panel = |p: usize, panel: &mut [u32]| match wide {
        Wide::Baseline => pack_panel(b, &byte, &key, k, n, nr, p, panel),
        #[cfg(target_arch = "x86_64")]
        Wide::Avx512(_) => {
            // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected;
            // the body is safe code (bounds-checked slices).
            unsafe { pack_panel_avx512(b, &byte, &key, k, n, nr, p, panel) }
        }
    };
    if par == Parallelism::Rayon && out.len() >= 1 << 15 {
        let whole = out.len() / (k4 * nr) * (k4 * nr);
        let panel = |_: &mut (), p: usize, o: &mut [u32]| panel(p, o);
        crate::kernels::par::chunks_mut(&mut out[..whole], k4 * nr, || (), panel, 0.0, f32::max)
    } else {
        out.chunks_exact_mut(k4 * nr)
            .enumerate()
            .map(|(p, o)| panel(p, o))
            .fold(0.0, f32::max)
    }
}

/// Panel `p` of [`pack_b`] (`nr` columns from `p·nr`, every group of four `k`); returns the
/// largest `key` of the elements it read (at least 0).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pack_panel<S: Copy>(
    b: &[S],
    byte: &impl Fn(S) -> u8,
    key: &impl Fn(S) -> f32,
    k: usize,
    n: usize,
    nr: usize,
    p: usize,
    panel: &mut [u32],
) -> f32 {
    const L: usize = 16;
    let c0 = p * nr;
    let cols = nr.min(n - c0);
    let row = |kk: usize| -> &[S] {
        if kk < k {
            &b[kk * n + c0..kk * n + c0 + cols]
        } else {
            &[]
        }
    };
    // The maximum in 16 independent lanes (a running `f32::max` does not vectorise).
    let mut lanes = [0.0f32; L];
    let mut rest = 0.0f32;
    for (g, dst) in panel.chunks_exact_mut(nr).enumerate() {
        let (r0, r1, r2, r3) = (row(4 * g), row(4 * g + 1), row(4 * g + 2), row(4 * g + 3));
        if r0.is_empty() {
            // A group past `k` (AMX pads the depth to whole tiles of 64).
            dst.fill(0);
            continue;
        }
        if cols == nr && nr.is_multiple_of(L) {
            // The common case, one pass the compiler vectorises: four bytes per word.
            let keep = |r: &[S]| r.len() == cols;
            if keep(r3) {
                words(dst, [r0, r1, r2, r3], u32::MAX, byte, key, &mut lanes);
            } else {
                // The last group: rows past `k` read row `4g` again and their bytes are
                // masked off (re-reading it leaves the maximum as it is).
                let mask = !(if keep(r1) { 0 } else { 0xFF << 8 })
                    & !(if keep(r2) { 0 } else { 0xFF << 16 })
                    & !(0xFF << 24);
                let [r1, r2] = [r1, r2].map(|r| if keep(r) { r } else { r0 });
                words(dst, [r0, r1, r2, r0], mask, byte, key, &mut lanes);
            }
        } else {
            for (j, d) in dst.iter_mut().enumerate() {
                let at = |r: &[S]| r.get(j).map_or(0, |&v| byte(v));
                *d = u32::from_le_bytes([at(r0), at(r1), at(r2), at(r3)]);
                for r in [r0, r1, r2, r3] {
                    if let Some(&v) = r.get(j) {
                        rest = rest.max(key(v));
                    }
                }
            }
        }
    }
    lanes.iter().fold(rest, |m, &v| m.max(v))
}

/// One group of [`pack_panel`]'s fast path: `dst[j]` is the word of `rows[0..4][j]` (bytes
/// `& mask`), and `lanes` takes their `key` maxima.
#[inline(always)]
fn words<S: Copy>(
    dst: &mut [u32],
    [r0, r1, r2, r3]: [&[S]; 4],
    mask: u32,
    byte: &impl Fn(S) -> u8,
    key: &impl Fn(S) -> f32,
    lanes: &mut [f32; 16],
) {
    const L: usize = 16;
    for ((((d, x0), x1), x2), x3) in dst
        .chunks_exact_mut(L)
        .zip(r0.chunks_exact(L))
        .zip(r1.chunks_exact(L))
        .zip(r2.chunks_exact(L))
        .zip(r3.chunks_exact(L))
    {
        for j in 0..L {
            let (a, b, c, e) = (x0[j], x1[j], x2[j], x3[j]);
            d[j] = u32::from_le_bytes([byte(a), byte(b), byte(c), byte(e)]) & mask;
            lanes[j] = lanes[j].max(key(a)).max(key(b)).max(key(c)).max(key(e));
        }
    }
}

/// [`pack_panel`] compiled with AVX-512.
///
/// # Safety
/// The CPU must run AVX512F and AVX512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[allow(clippy::too_many_arguments)]
unsafe fn pack_panel_avx512<S: Copy>(
    b: &[S],
    byte: &impl Fn(S) -> u8,
    key: &impl Fn(S) -> f32,
    k: usize,
    n: usize,
    nr: usize,
    p: usize,
    panel: &mut [u32],
) -> f32 {
    pack_panel(b, byte, key, k, n, nr, p, panel)
}

/// A `u8` input of `cin` planes of `h × w` for a stride-1 window of `size × size` that keeps
/// the plane's size (`size = 2·pad + 1`), stored with zero margins so that every shifted read
/// of the window stays inside the buffer: [`ShiftedPlanes::margin`] zeros, then each plane
/// followed by a margin, then [`MAX_NR`] more zeros. Its im2col matrix is then never written:
/// [`pack_b_shifted`] packs straight from the planes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShiftedPlanes<'a> {
    data: &'a [u8],
    cin: usize,
    h: usize,
    w: usize,
    pad: usize,
}

/// Widest panel [`pack_b_shifted`] packs.
pub(crate) const MAX_NR: usize = 64;
/// Widest window [`pack_b_shifted`] packs.
pub(crate) const MAX_SIZE: usize = 7;

impl<'a> ShiftedPlanes<'a> {
    /// Zeros before each plane (and after the last one): `pad·w + pad`, the largest shift.
    pub(crate) fn margin(w: usize, pad: usize) -> usize {
        pad * w + pad
    }

    /// Bytes of the layout.
    pub(crate) fn len(cin: usize, h: usize, w: usize, pad: usize) -> usize {
        let m = Self::margin(w, pad);
        m + cin * (h * w + m) + MAX_NR
    }

    /// Wraps `data`, laid out as above (the margins must be zero). `None` when the window is
    /// wider than [`MAX_SIZE`] or `data` has the wrong length.
    pub(crate) fn new(
        data: &'a [u8],
        cin: usize,
        h: usize,
        w: usize,
        pad: usize,
    ) -> Option<ShiftedPlanes<'a>> {
        (2 * pad < MAX_SIZE && data.len() == Self::len(cin, h, w, pad)).then_some(ShiftedPlanes {
            data,
            cin,
            h,
            w,
            pad,
        })
    }

    /// Rows of the im2col matrix: `cin · size²`.
    pub(crate) fn k(&self) -> usize {
        let size = 2 * self.pad + 1;
        self.cin * size * size
    }

    /// Columns: `h · w`.
    pub(crate) fn n(&self) -> usize {
        self.h * self.w
    }
}

/// [`pack_b`] of the im2col matrix of `x` (bytes as they are), read from the planes: row
/// `kk = ci·size² + ky·size + kx` at column `j` is plane `ci` at `j + (ky − pad)·w + kx − pad`,
/// zero where column `j % w + kx − pad` leaves the plane (the margins give the zero rows above
/// and below). Same words as [`pack_b`] on the matrix `Window::im2col` writes.
pub(super) fn pack_b_shifted(
    wide: Wide,
    x: ShiftedPlanes<'_>,
    k4: usize,
    nr: usize,
    out: &mut [u32],
    par: Parallelism,
) {
    assert!(
        nr <= MAX_NR && k4 * 4 >= x.k(),
        "pack_b_shifted: panel shape"
    );
    if k4 * nr == 0 {
        return;
    }
    let panel = |p: usize, panel: &mut [u32]| match wide {
        Wide::Baseline => pack_panel_shifted(x, nr, p, panel),
        #[cfg(target_arch = "x86_64")]
        Wide::Avx512(_) => {
            // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected;
            // the body is safe code (bounds-checked slices).
            unsafe { pack_panel_shifted_avx512(x, nr, p, panel) }
        }
    };
    if par == Parallelism::Rayon && out.len() >= 1 << 15 {
        let whole = out.len() / (k4 * nr) * (k4 * nr);
        crate::kernels::par::for_each_chunk(&mut out[..whole], k4 * nr, panel);
    } else {
        out.chunks_exact_mut(k4 * nr)
            .enumerate()
            .for_each(|(p, o)| panel(p, o));
    }
}

/// Panel `p` of [`pack_b_shifted`].
#[inline(always)]
fn pack_panel_shifted(x: ShiftedPlanes<'_>, nr: usize, p: usize, panel: &mut [u32]) {
    const L: usize = 16;
    let (w, pad) = (x.w, x.pad);
    let size = 2 * pad + 1;
    let (n, k) = (x.n(), x.k());
    let stride = n + ShiftedPlanes::margin(w, pad);
    let c0 = p * nr;
    let cols = nr.min(n - c0);
    // masks[kx][j]: 0xff when column j of the panel reads inside its row for tap column kx.
    let mut masks = [[0u8; MAX_NR]; MAX_SIZE];
    for (kx, m) in masks.iter_mut().enumerate().take(size) {
        for (j, v) in m.iter_mut().enumerate().take(cols) {
            let xc = (c0 + j) % w + kx;
            *v = if xc >= pad && xc - pad < w { 0xff } else { 0 };
        }
    }
    let zeros = [0u8; MAX_NR];
    let mut rows = Rows {
        data: x.data,
        masks: &masks,
        zeros: &zeros,
        nr,
        w,
        size,
        stride,
        left: k,
        ci_at: c0,
        ky: 0,
        kx: 0,
    };
    for dst in panel.chunks_exact_mut(nr) {
        let ((r0, m0), (r1, m1), (r2, m2), (r3, m3)) =
            (rows.next(), rows.next(), rows.next(), rows.next());
        for c in 0..nr / L {
            let o = c * L;
            let (x0, x1, x2, x3) = (&r0[o..o + L], &r1[o..o + L], &r2[o..o + L], &r3[o..o + L]);
            let (k0, k1, k2, k3) = (&m0[o..o + L], &m1[o..o + L], &m2[o..o + L], &m3[o..o + L]);
            let d = &mut dst[o..o + L];
            for j in 0..L {
                d[j] = u32::from_le_bytes([
                    x0[j] & k0[j],
                    x1[j] & k1[j],
                    x2[j] & k2[j],
                    x3[j] & k3[j],
                ]);
            }
        }
        // A width that is not a multiple of 16 (not one the kernels use).
        for j in nr - nr % L..nr {
            dst[j] =
                u32::from_le_bytes([r0[j] & m0[j], r1[j] & m1[j], r2[j] & m2[j], r3[j] & m3[j]]);
        }
    }
}

/// The im2col rows of a panel of [`pack_panel_shifted`] in order, each with its column mask,
/// without a division per row: `(ci, ky, kx)` counts up. Plane `ci` starts at
/// `margin + ci·stride` and is read shifted by `(ky − pad)·w + kx − pad`; with
/// `margin = pad·w + pad`, row `(ci, ky, kx)` of the panel at `c0` starts at
/// `ci·stride + c0 + ky·w + kx`.
struct Rows<'a> {
    data: &'a [u8],
    masks: &'a [[u8; MAX_NR]; MAX_SIZE],
    zeros: &'a [u8; MAX_NR],
    nr: usize,
    w: usize,
    size: usize,
    stride: usize,
    /// Rows of the matrix still to come (then zero rows, the `k4` padding).
    left: usize,
    /// `ci·stride + c0`.
    ci_at: usize,
    ky: usize,
    kx: usize,
}

impl<'a> Rows<'a> {
    /// The next row's `nr` bytes and mask.
    #[inline(always)]
    fn next(&mut self) -> (&'a [u8], &'a [u8]) {
        let nr = self.nr;
        if self.left == 0 {
            return (&self.zeros[..nr], &self.zeros[..nr]);
        }
        self.left -= 1;
        let at = self.ci_at + self.ky * self.w + self.kx;
        let m = &self.masks[self.kx][..nr];
        self.kx += 1;
        if self.kx == self.size {
            self.kx = 0;
            self.ky += 1;
            if self.ky == self.size {
                self.ky = 0;
                self.ci_at += self.stride;
            }
        }
        (&self.data[at..at + nr], m)
    }
}

/// [`pack_panel_shifted`] compiled with AVX-512.
///
/// # Safety
/// The CPU must run AVX512F and AVX512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_panel_shifted_avx512(x: ShiftedPlanes<'_>, nr: usize, p: usize, panel: &mut [u32]) {
    pack_panel_shifted(x, nr, p, panel)
}
