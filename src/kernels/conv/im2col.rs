//! The im2col matrix of one image (the general path of [`Conv2d`](super::Conv2d) and of the
//! int8 and bf16 convolutions).

use rayon::prelude::*;

use super::PAR_ELEMS;
use crate::kernels::gemm::Parallelism;

/// The sliding window of a convolution: kernel size, stride and padding (shared by the f32,
/// int8 and bf16 convolutions).
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
}

impl Window {
    /// Output size for an `h × w` input, or `None` when the padded input is smaller than the
    /// kernel.
    pub(super) fn checked_out_hw(self, h: usize, w: usize) -> Option<(usize, usize)> {
        let ph = h.checked_add(2 * self.pad)?.checked_sub(self.kh)?;
        let pw = w.checked_add(2 * self.pad)?.checked_sub(self.kw)?;
        Some((ph / self.stride + 1, pw / self.stride + 1))
    }

    /// Output size for an `h × w` input; `who` names the convolution in the panic message.
    ///
    /// # Panics
    /// If the padded input is smaller than the kernel.
    pub(super) fn out_hw(self, h: usize, w: usize, who: &str) -> (usize, usize) {
        match self.checked_out_hw(h, w) {
            Some(hw) => hw,
            None => panic!(
                "{who}: input {h}×{w} with padding {} is smaller than the {}×{} kernel",
                self.pad, self.kh, self.kw
            ),
        }
    }

    /// Writes the `(cin·kh·kw) × (oh·ow)` im2col matrix of the `[cin, h, w]` `input` into
    /// `cols` (`cin` follows from the lengths); padding cells are `T::default()` (zero).
    pub(super) fn im2col<T: Copy + Default + Send + Sync>(
        self,
        input: &[T],
        h: usize,
        w: usize,
        cols: &mut [T],
        par: Parallelism,
    ) {
        let (oh, ow) = self.out_hw(h, w, "im2col");
        let p = oh * ow;
        if p == 0 {
            return;
        }
        let taps = self.kh * self.kw;
        // One task = one row of `cols` (one tap of one input channel), so that convolutions
        // with few input channels (the stem has 3, i.e. 147 rows) still split evenly.
        let fill = |r: usize, row: &mut [T]| {
            let (ci, t) = (r / taps, r % taps);
            let plane = &input[ci * h * w..(ci + 1) * h * w];
            let (ky, kx) = (t / self.kw, t % self.kw);
            im2col_row(plane, h, w, ky, kx, self.stride, self.pad, oh, ow, row);
        };
        if par == Parallelism::Rayon && cols.len() >= PAR_ELEMS {
            cols.par_chunks_mut(p)
                .enumerate()
                .for_each(|(r, row)| fill(r, row));
        } else {
            for (r, row) in cols.chunks_mut(p).enumerate() {
                fill(r, row);
            }
        }
    }
}

/// One row of the im2col matrix: `row[oy·ow + ox] = plane[oy·s + ky − pad, ox·s + kx − pad]`,
/// zero where that falls in the padding.
#[allow(clippy::too_many_arguments)]
fn im2col_row<T: Copy + Default>(
    plane: &[T],
    h: usize,
    w: usize,
    ky: usize,
    kx: usize,
    s: usize,
    pad: usize,
    oh: usize,
    ow: usize,
    row: &mut [T],
) {
    // Output columns whose input column ix = ox·s + kx − pad lies in [0, w).
    let ox_hi = if w + pad > kx {
        (w + pad - kx).div_ceil(s).min(ow)
    } else {
        0
    };
    let ox_lo = if kx >= pad { 0 } else { (pad - kx).div_ceil(s) }.min(ox_hi);
    let len = ox_hi - ox_lo;
    for (oy, dst) in row.chunks_exact_mut(ow).take(oh).enumerate() {
        let iy = oy * s + ky;
        if iy < pad || iy - pad >= h {
            dst.fill(T::default());
            continue;
        }
        let src = &plane[(iy - pad) * w..(iy - pad + 1) * w];
        dst[..ox_lo].fill(T::default());
        dst[ox_hi..].fill(T::default());
        if len == 0 {
            continue;
        }
        let ix0 = ox_lo * s + kx - pad;
        let dst = &mut dst[ox_lo..ox_hi];
        if s == 1 {
            dst.copy_from_slice(&src[ix0..ix0 + len]);
        } else if s == 2 {
            // Even elements of pairs: a pattern the compiler turns into vector shuffles.
            let src = &src[ix0..];
            let full = (src.len() / 2).min(len);
            for (d, pair) in dst.iter_mut().zip(src[..2 * full].chunks_exact(2)) {
                *d = pair[0];
            }
            if full < len {
                // Odd remainder: the last needed element has no partner.
                dst[full] = src[2 * full];
            }
        } else {
            let src = &src[ix0..=ix0 + (len - 1) * s];
            for (d, v) in dst.iter_mut().zip(src.iter().step_by(s)) {
                *d = *v;
            }
        }
    }
}
