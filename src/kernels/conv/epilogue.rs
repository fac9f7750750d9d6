//! The epilogue of the im2col path: bias, residual and ReLU on a finished output.

use crate::kernels::gemm::Parallelism;

/// The epilogue of [`epilogue`] on one segment of an output row: `o += bias (+ r)`, then ReLU
/// if asked (`r` the same segment of the residual).
#[inline(always)]
pub(super) fn epilogue_segment(o: &mut [f32], b: f32, residual: Option<&[f32]>, relu: bool) {
    match (residual, relu) {
        (Some(r), true) => {
            for (v, &r) in o.iter_mut().zip(r) {
                *v = (*v + b + r).max(0.0);
            }
        }
        (Some(r), false) => {
            for (v, &r) in o.iter_mut().zip(r) {
                *v += b + r;
            }
        }
        (None, true) => {
            for v in o.iter_mut() {
                *v = (*v + b).max(0.0);
            }
        }
        (None, false) => {
            for v in o.iter_mut() {
                *v += b;
            }
        }
    }
}

/// `out[c, :] = act(out[c, :] + bias[c] (+ residual[c, :]))` in one pass.
pub(super) fn epilogue(
    out: &mut [f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    relu: bool,
    p: usize,
    par: Parallelism,
) {
    if p == 0 {
        return;
    }
    let row = |c: usize, o: &mut [f32]| {
        epilogue_segment(o, bias[c], residual.map(|r| &r[c * p..(c + 1) * p]), relu);
    };
    if par == Parallelism::Rayon && crate::kernels::par::splits(out.len()) {
        crate::kernels::par::for_each_chunk(out, p, row);
    } else {
        for (c, o) in out.chunks_mut(p).enumerate() {
            row(c, o);
        }
    }
}

/// `dst = act(src + bias (+ res))`: [`epilogue_segment`] from a separate source (the same
/// operations, so the same bits).
#[inline(always)]
pub(super) fn epilogue_row(
    dst: &mut [f32],
    src: &[f32],
    bias: f32,
    res: Option<&[f32]>,
    relu: bool,
) {
    match (res, relu) {
        (Some(r), true) => {
            for ((d, &s), &r) in dst.iter_mut().zip(src).zip(r) {
                *d = (s + bias + r).max(0.0);
            }
        }
        (Some(r), false) => {
            for ((d, &s), &r) in dst.iter_mut().zip(src).zip(r) {
                *d = s + (bias + r);
            }
        }
        (None, true) => {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = (s + bias).max(0.0);
            }
        }
        (None, false) => {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = s + bias;
            }
        }
    }
}
