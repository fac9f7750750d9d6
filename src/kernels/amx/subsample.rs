//! Packed activations of every `stride`-th pixel: what a 1×1 convolution at that stride (no
//! padding) reads, taken from the panels of its whole input that another product reads
//! (a ResNet block's downsample beside its first convolution), instead of quantising and
//! packing the input again.

use super::packed_words;

/// Columns of a panel.
const PANEL: usize = 16;

/// Writes into `dst` the packed activations ([`packed_words`]`(kw / 16, oh·ow)` words: panels
/// of 16 columns, `kw` words of `k` per column) of the pixels `(stride·oy, stride·ox)` of the
/// `h × w` image whose packed activations are `src` (`packed_words(kw / 16, h·w)` words), for
/// `oy < oh = (h − 1) / stride + 1` and `ox < ow = (w − 1) / stride + 1`, in row-major order;
/// the words of columns past `oh·ow` are zero. Returns `(oh, ow)`.
///
/// # Panics
/// If `kw` is not a multiple of 16, `stride` is 0, or a length does not match.
pub(crate) fn subsample_panels(
    src: &[u32],
    kw: usize,
    (h, w): (usize, usize),
    stride: usize,
    dst: &mut [u32],
) -> (usize, usize) {
    assert!(
        kw.is_multiple_of(16) && stride > 0,
        "subsample_panels: {kw} words, stride {stride}"
    );
    let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
    let n = oh * ow;
    assert_eq!(
        src.len(),
        packed_words(kw / 16, h * w),
        "subsample_panels: source length"
    );
    assert_eq!(
        dst.len(),
        packed_words(kw / 16, n),
        "subsample_panels: length"
    );
    let panel_len = PANEL * kw;
    debug_assert_eq!(dst.len() % panel_len, 0);
    // Panel `p` of the output: its 16 columns gathered, word `g` of `k` after word `g`.
    let panel = |p: usize, panel: &mut [u32]| {
        // Where each column of this panel comes from (its source panel's first word plus its
        // column there), and how many are pixels of the output.
        let valid = n.saturating_sub(p * PANEL).min(PANEL);
        let from: [usize; PANEL] = std::array::from_fn(|c| {
            let j = (p * PANEL + c).min(n - 1);
            let s = stride * (j / ow) * w + stride * (j % ow);
            (s / PANEL) * panel_len + s % PANEL
        });
        for (g, words) in panel.chunks_exact_mut(PANEL).enumerate() {
            let src = &src[g * PANEL..];
            for (d, &f) in words.iter_mut().zip(&from) {
                *d = src[f];
            }
            words[valid..].fill(0);
        }
    };
    // Four panels to a task (a WRN-50-2 layer2 input: 50 K words, 36 µs on one thread).
    let per = 4 * panel_len;
    if crate::kernels::par::splits(dst.len()) {
        crate::kernels::par::for_each_chunk(dst, per, |t, d| {
            for (i, d) in d.chunks_exact_mut(panel_len).enumerate() {
                panel(4 * t + i, d);
            }
        });
    } else {
        for (p, d) in dst.chunks_exact_mut(panel_len).enumerate() {
            panel(p, d);
        }
    }
    (oh, ow)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each word of the subsampled panels is the word of its pixel and `k` in the source
    /// panels, found from the layout's definition (word `g` of column `j` at index
    /// `((j / 16)·kw + g)·16 + j % 16`), and zero past the output: strides 1–3, images
    /// narrower than a panel, wider than two, and of one pixel.
    #[test]
    fn subsampled_panels_hold_the_strided_pixels() {
        let at = |kw: usize, j: usize, g: usize| ((j / 16) * kw + g) * 16 + j % 16;
        for (h, w, kw, stride) in [
            (7, 9, 16, 2),
            (56, 56, 32, 2),
            (5, 40, 16, 3),
            (1, 1, 16, 2),
            (6, 6, 48, 1),
        ] {
            let src: Vec<u32> = (0..packed_words(kw / 16, h * w) as u32)
                .map(|i| i.wrapping_mul(2654435761))
                .collect();
            let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
            let mut dst = vec![0xA5A5_A5A5; packed_words(kw / 16, oh * ow)];
            assert_eq!(
                subsample_panels(&src, kw, (h, w), stride, &mut dst),
                (oh, ow)
            );
            let cols = dst.len() / kw;
            for j in 0..cols {
                for g in 0..kw {
                    let want = if j < oh * ow {
                        let (oy, ox) = (j / ow, j % ow);
                        src[at(kw, stride * oy * w + stride * ox, g)]
                    } else {
                        0
                    };
                    assert_eq!(
                        dst[at(kw, j, g)],
                        want,
                        "{h}×{w}, {kw} words, stride {stride}: column {j}, word {g}"
                    );
                }
            }
        }
    }
}
