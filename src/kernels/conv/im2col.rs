//! The im2col matrix of one image (the general path of [`Conv2d`](super::Conv2d) and of the
//! int8 and bf16 convolutions).

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
        self.im2col_padded(input, h, w, cols, par, T::default());
    }

    /// [`Window::im2col`] with padding cells set to `fill` (the zero point of an input
    /// quantised with one, which stands for the value 0).
    pub(super) fn im2col_padded<T: Copy + Send + Sync>(
        self,
        input: &[T],
        h: usize,
        w: usize,
        cols: &mut [T],
        par: Parallelism,
        fill: T,
    ) {
        let (oh, ow) = self.out_hw(h, w, "im2col");
        let p = oh * ow;
        if p == 0 {
            return;
        }
        let taps = self.kh * self.kw;
        // One task = one row of `cols` (one tap of one input channel), so that convolutions
        // with few input channels (the stem has 3, i.e. 147 rows) still split evenly.
        // Stride 1 with an output as large as the input (3×3 pad 1, …): a row is the plane
        // shifted, copied in one piece.
        let shifted = self.stride == 1 && (oh, ow) == (h, w);
        let write_row = |r: usize, row: &mut [T]| {
            let (ci, t) = (r / taps, r % taps);
            let plane = &input[ci * h * w..(ci + 1) * h * w];
            let (ky, kx) = (t / self.kw, t % self.kw);
            if shifted {
                let (dy, dx) = (
                    ky as isize - self.pad as isize,
                    kx as isize - self.pad as isize,
                );
                im2col_row_shifted(plane, h, w, dy, dx, row, fill);
            } else {
                let win = (ky, kx, self.stride, self.pad);
                im2col_row(plane, h, w, win, oh, ow, row, fill);
            }
        };
        if par == Parallelism::Rayon && crate::kernels::par::splits(cols.len()) {
            crate::kernels::par::for_each_chunk(cols, p, write_row);
        } else {
            for (r, row) in cols.chunks_mut(p).enumerate() {
                write_row(r, row);
            }
        }
    }
}

/// One row of the im2col matrix of a stride-1 convolution whose output is `h × w` like its
/// input: `row[oy·w + ox] = plane[oy + dy, ox + dx]`, zero outside the plane. Instead of one
/// copy and two fills per output row (library calls of a few bytes each), the rows that read
/// the plane are one copy of the plane shifted by `dy·w + dx`; the elements that copy wraps
/// across a row end (the first `−dx` or the last `dx` of each row) are then set to `fill`
/// (zero). `|dx| < w` and `|dy| < h` are not required: a shift past the plane gives a row of
/// `fill`.
fn im2col_row_shifted<T: Copy>(
    plane: &[T],
    h: usize,
    w: usize,
    dy: isize,
    dx: isize,
    row: &mut [T],
    fill: T,
) {
    let (hi, wi) = (h as isize, w as isize);
    let row = &mut row[..h * w];
    // Output rows that read the plane: oy + dy in [0, h).
    let oy_lo = (-dy).clamp(0, hi) as usize;
    let oy_hi = (hi - dy).clamp(oy_lo as isize, hi) as usize;
    if dx.unsigned_abs() >= w {
        row.fill(fill);
        return;
    }
    row[..oy_lo * w].fill(fill);
    row[oy_hi * w..].fill(fill);
    if oy_hi == oy_lo {
        return;
    }
    // row[oy_lo·w + j] = plane[base + j] for j in [0, n), where it lies in the plane.
    let n = (oy_hi - oy_lo) * w;
    let base = (oy_lo as isize + dy) * wi + dx;
    let j0 = (-base).max(0) as usize;
    let j1 = ((plane.len() as isize - base) as usize).min(n);
    let dst = &mut row[oy_lo * w..oy_hi * w];
    let s0 = (base + j0 as isize) as usize;
    dst[j0..j1].copy_from_slice(&plane[s0..s0 + (j1 - j0)]);
    // The wrapped elements (and the at most one element per end the copy skipped).
    let (c0, c1) = if dx < 0 {
        (0, dx.unsigned_abs())
    } else {
        (w - dx as usize, w)
    };
    if c1 > c0 {
        for r in dst.chunks_exact_mut(w) {
            r[c0..c1].fill(fill);
        }
    }
}

/// One row of the im2col matrix: `row[oy·ow + ox] = plane[oy·s + ky − pad, ox·s + kx − pad]`,
/// `fill` (zero) where that falls in the padding. `win` is `(ky, kx, s, pad)`.
#[allow(clippy::too_many_arguments)]
fn im2col_row<T: Copy>(
    plane: &[T],
    h: usize,
    w: usize,
    (ky, kx, s, pad): (usize, usize, usize, usize),
    oh: usize,
    ow: usize,
    row: &mut [T],
    fill: T,
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
            dst.fill(fill);
            continue;
        }
        let src = &plane[(iy - pad) * w..(iy - pad + 1) * w];
        dst[..ox_lo].fill(fill);
        dst[ox_hi..].fill(fill);
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The im2col matrix by its definition, one element at a time, padding cells `fill`.
    fn naive(win: Window, input: &[u16], h: usize, w: usize, fill: u16) -> Vec<u16> {
        let (oh, ow) = win.out_hw(h, w, "naive");
        let taps = win.kh * win.kw;
        let cin = input.len() / (h * w);
        let mut out = vec![fill; cin * taps * oh * ow];
        for ci in 0..cin {
            for t in 0..taps {
                let (ky, kx) = (t / win.kw, t % win.kw);
                for oy in 0..oh {
                    for ox in 0..ow {
                        let iy = (oy * win.stride + ky) as isize - win.pad as isize;
                        let ix = (ox * win.stride + kx) as isize - win.pad as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            out[((ci * taps + t) * oh + oy) * ow + ox] =
                                input[(ci * h + iy as usize) * w + ix as usize];
                        }
                    }
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Every window (the shifted copy of stride 1 "same" windows included) against the
        /// definition, with zero padding and with a padding value; the output buffer starts
        /// full of garbage, so every cell must be written.
        #[test]
        fn im2col_matches_the_definition(
            cin in 1usize..4, h in 1usize..9, w in 1usize..9, k in 1usize..6,
            stride in 1usize..4, pad in 0usize..4, seed in any::<u16>(), fill in 1u16..0xDEAD,
        ) {
            let win = Window { kh: k, kw: k, stride, pad };
            prop_assume!(win.checked_out_hw(h, w).is_some());
            let input: Vec<u16> = (0..cin * h * w)
                .map(|i| (i as u16).wrapping_mul(7).wrapping_add(seed) | 1)
                .collect();
            let want = naive(win, &input, h, w, 0);
            let want_filled = naive(win, &input, h, w, fill);
            for par in [Parallelism::Sequential, Parallelism::Rayon] {
                let mut got = vec![0xDEADu16; want.len()];
                win.im2col(&input, h, w, &mut got, par);
                prop_assert_eq!(&got, &want);
                got.fill(0xDEAD);
                win.im2col_padded(&input, h, w, &mut got, par, fill);
                prop_assert_eq!(&got, &want_filled);
            }
        }
    }

    /// Every "same" window (k × k with pad (k − 1)/2, the shifted path) at every small size,
    /// including planes narrower or shorter than the shift.
    #[test]
    fn same_size_windows_at_every_small_size() {
        for (k, pad) in [(1usize, 0usize), (3, 1), (5, 2), (7, 3)] {
            for h in 1..10 {
                for w in 1..10 {
                    let win = Window {
                        kh: k,
                        kw: k,
                        stride: 1,
                        pad,
                    };
                    let input: Vec<u16> = (0..2 * h * w).map(|i| i as u16 + 1).collect();
                    for fill in [0u16, 0xBEEF] {
                        let want = naive(win, &input, h, w, fill);
                        let mut got = vec![0xDEADu16; want.len()];
                        win.im2col_padded(&input, h, w, &mut got, Parallelism::Sequential, fill);
                        assert_eq!(got, want, "k {k} pad {pad} {h}×{w} fill {fill}");
                    }
                }
            }
        }
    }
}
