//! Max pooling (the ResNet stem's 3×3 / stride 2 / padding 1, or any square window).
//!
//! Padding is implicit: padded cells are simply skipped, so they never win (the result equals
//! PyTorch's `max_pool2d`, which pads with −∞).

use super::wide::Wide;

/// Output size of a max-pool over `n` input cells (`(n + 2·pad − k) / stride + 1`).
///
/// # Panics
///
/// If `stride == 0` or `n + 2·pad < k`.
pub fn maxpool_out(n: usize, k: usize, stride: usize, pad: usize) -> usize {
    assert!(stride >= 1, "maxpool: stride must be at least 1");
    let padded = n + 2 * pad;
    assert!(
        padded >= k,
        "maxpool: input of {n} cells with padding {pad} is smaller than the window {k}"
    );
    (padded - k) / stride + 1
}

/// Max pool of one `[c, h, w]` image into `[c, oh, ow]` with a `k × k` window; padded cells
/// never win. Channels are spread over the rayon pool for large inputs.
///
/// # Panics
///
/// If `k == 0`, `stride == 0`, `pad ≥ k` (a window could then lie entirely in the padding),
/// the padded input is smaller than the window, or `input`/`out` do not have `c·h·w` /
/// `c·oh·ow` elements.
#[allow(clippy::too_many_arguments)]
pub fn maxpool2d(
    input: &[f32],
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    out: &mut [f32],
) {
    assert!(k >= 1, "maxpool: window must be at least 1");
    assert!(
        pad < k,
        "maxpool: padding {pad} must be smaller than the window {k}"
    );
    let oh = maxpool_out(h, k, stride, pad);
    let ow = maxpool_out(w, k, stride, pad);
    assert_eq!(input.len(), c * h * w, "maxpool: input must be [c, h, w]");
    assert_eq!(out.len(), c * oh * ow, "maxpool: out must be [c, oh, ow]");
    if c == 0 || oh == 0 || ow == 0 {
        return;
    }
    // The plane loop compiled with AVX-512 where the CPU has it (same results).
    let wide = Wide::detect(true);
    let plane = |ch: usize, dst: &mut [f32], colmax: &mut Vec<f32>| {
        let src = &input[ch * h * w..(ch + 1) * h * w];
        let win = Window { k, stride, pad };
        match wide {
            Wide::Baseline => pool_plane(src, h, w, win, ow, dst, colmax),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected; the
            // body is safe code.
            Wide::Avx512(_) => unsafe { pool_plane_avx512(src, h, w, win, ow, dst, colmax) },
        }
    };
    if input.len() >= 1 << 17 {
        let plane = |colmax: &mut Vec<f32>, ch: usize, dst: &mut [f32]| plane(ch, dst, colmax);
        crate::kernels::par::chunks_mut(out, oh * ow, Vec::new, plane, (), |_, _| ());
    } else {
        let mut colmax = Vec::new();
        for (ch, dst) in out.chunks_mut(oh * ow).enumerate() {
            plane(ch, dst, &mut colmax);
        }
    }
}

/// A pooling window: size, stride, padding.
#[derive(Clone, Copy)]
struct Window {
    k: usize,
    stride: usize,
    pad: usize,
}

/// [`pool_plane`] compiled with AVX-512.
///
/// # Safety
/// The CPU must run AVX512F and AVX512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn pool_plane_avx512(
    src: &[f32],
    h: usize,
    w: usize,
    win: Window,
    ow: usize,
    dst: &mut [f32],
    colmax: &mut Vec<f32>,
) {
    pool_plane(src, h, w, win, ow, dst, colmax)
}

/// One channel: for each output row, a vertical max over the window's valid input rows
/// (contiguous, vectorisable), then a horizontal max over each window's valid columns.
#[inline(always)]
fn pool_plane(
    src: &[f32],
    h: usize,
    w: usize,
    Window { k, stride, pad }: Window,
    ow: usize,
    dst: &mut [f32],
    colmax: &mut Vec<f32>,
) {
    colmax.resize(w, 0.0);
    for (oy, drow) in dst.chunks_exact_mut(ow).enumerate() {
        // Valid input rows of this window: [y0, y1).
        let y0 = (oy * stride).saturating_sub(pad);
        let y1 = (oy * stride + k - pad).min(h);
        colmax.copy_from_slice(&src[y0 * w..(y0 + 1) * w]);
        for y in y0 + 1..y1 {
            for (m, &v) in colmax.iter_mut().zip(&src[y * w..(y + 1) * w]) {
                *m = m.max(v);
            }
        }
        if (k, stride, pad) == (3, 2, 1) {
            row_3s2p1(colmax, drow);
            continue;
        }
        for (ox, d) in drow.iter_mut().enumerate() {
            let x0 = (ox * stride).saturating_sub(pad);
            let x1 = (ox * stride + k - pad).min(w);
            let mut m = colmax[x0];
            for &v in &colmax[x0 + 1..x1] {
                m = m.max(v);
            }
            *d = m;
        }
    }
}

/// The horizontal pass of a 3×3 / stride 2 / padding 1 pool (ResNet's stem) over one row of
/// column maxima `c`: `d[ox] = max(c[2·ox − 1], c[2·ox], c[2·ox + 1])` over the cells that
/// exist, the maxima taken in that order as in the general loop. The interior is one plain
/// loop the compiler vectorises (the general loop's variable bounds kept it scalar: 3.5 % of
/// an f32 ResNet-18 forward pass).
#[inline(always)]
fn row_3s2p1(c: &[f32], d: &mut [f32]) {
    let w = c.len();
    debug_assert_eq!(d.len(), w.div_ceil(2));
    if w == 1 {
        d[0] = c[0];
        return;
    }
    d[0] = c[0].max(c[1]);
    // Windows with all three cells: 2·ox + 1 < w.
    let full = w / 2;
    // (Slices of the exact lengths, so that the loop has no bounds checks.)
    let (cf, df) = (&c[..2 * full], &mut d[..full]);
    for ox in 1..full {
        df[ox] = cf[2 * ox - 1].max(cf[2 * ox]).max(cf[2 * ox + 1]);
    }
    if w % 2 == 1 {
        // The last window has lost its right cell.
        d[full] = c[w - 2].max(c[w - 1]);
    }
}
