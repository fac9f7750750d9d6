//! Max pooling (the ResNet stem's 3×3 / stride 2 / padding 1, or any square window).
//!
//! Padding is implicit: padded cells are simply skipped, so they never win (the result equals
//! PyTorch's `max_pool2d`, which pads with −∞).

use rayon::prelude::*;

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
    let plane = |ch: usize, dst: &mut [f32], colmax: &mut Vec<f32>| {
        pool_plane(
            &input[ch * h * w..(ch + 1) * h * w],
            h,
            w,
            k,
            stride,
            pad,
            ow,
            dst,
            colmax,
        );
    };
    if input.len() >= 1 << 17 {
        out.par_chunks_mut(oh * ow)
            .enumerate()
            .for_each_init(Vec::new, |colmax, (ch, dst)| plane(ch, dst, colmax));
    } else {
        let mut colmax = Vec::new();
        for (ch, dst) in out.chunks_mut(oh * ow).enumerate() {
            plane(ch, dst, &mut colmax);
        }
    }
}

/// One channel: for each output row, a vertical max over the window's valid input rows
/// (contiguous, vectorisable), then a horizontal max over each window's valid columns.
#[allow(clippy::too_many_arguments)]
fn pool_plane(
    src: &[f32],
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
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
