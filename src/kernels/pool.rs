//! Max pooling (the ResNet stem's 3×3 / stride 2 / padding 1).
//!
//! STUB (to be replaced by the kernels work).

/// Output size of a max-pool over `n` input cells.
pub fn maxpool_out(n: usize, k: usize, stride: usize, pad: usize) -> usize {
    (n + 2 * pad - k) / stride + 1
}

/// Max pool of one `[c, h, w]` image into `[c, oh, ow]`; padded cells never win.
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
    let oh = maxpool_out(h, k, stride, pad);
    let ow = maxpool_out(w, k, stride, pad);
    assert_eq!(out.len(), c * oh * ow);
    for ch in 0..c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut m = f32::NEG_INFINITY;
                for ky in 0..k {
                    let iy = (oy * stride + ky) as isize - pad as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for kx in 0..k {
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        if ix < 0 || ix >= w as isize {
                            continue;
                        }
                        m = m.max(input[(ch * h + iy as usize) * w + ix as usize]);
                    }
                }
                out[(ch * oh + oy) * ow + ox] = m;
            }
        }
    }
}
