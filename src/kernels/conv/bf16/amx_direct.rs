//! The direct AMX path of the bf16 convolution (see `kernels::amx::direct`): when it is taken,
//! its grid, and its input rounded to bf16 into a padded channels-last image (a narrow grid
//! for a stem's image); and the stem fused with its max-pool. `Bf16Conv::forward` routes the
//! outputs.

use super::{Bf16Conv, Bf16Scratch, Finish};
use crate::kernels::aligned::{aligned, aligned_mut};
use crate::kernels::amx;
use crate::kernels::amx::direct::{self, ChannelsLast, DirectWeights, Grid, NARROW};
use crate::kernels::bf16::{to_bf16, Bf16Isa};
use crate::kernels::conv::quantized::QInput;
use crate::kernels::gemm::Parallelism;
use crate::kernels::wide::Wide;

impl Bf16Conv {
    /// The direct AMX path's weights, op and grid for an `h × w` input, when `isa` is AMX and
    /// this convolution has one.
    fn direct_path(
        &self,
        isa: Bf16Isa,
        h: usize,
        w: usize,
    ) -> Option<(&DirectWeights, amx::Bf16, Grid)> {
        let grid = Grid {
            cin: if self.cin < NARROW { NARROW } else { self.cin },
            h,
            w,
            size: self.kh,
            stride: self.stride,
        };
        match (isa, &self.direct, amx::Bf16::detect()) {
            (Bf16Isa::Amx, Some(dw), Some(op)) if grid.supported::<u16>() => Some((dw, op, grid)),
            _ => None,
        }
    }

    /// Whether this convolution's input is an image (at most 3 channels, a stem's) that it
    /// can read, on this CPU, as a narrow channels-last grid on AMX (with [`Bf16Isa::Amx`];
    /// another kernel asked for runs im2col).
    pub(crate) fn reads_image_directly(&self) -> bool {
        // (Direct weights exist only where AMX-BF16 was detected.)
        self.cin < NARROW && self.direct.is_some()
    }

    /// Whether this convolution writes its output for an `h × w` input as AMX panels
    /// ([`QOutput::Panels`]) with `isa`: a direct convolution on AMX.
    pub(crate) fn direct_panels(&self, isa: Bf16Isa, h: usize, w: usize) -> bool {
        self.direct_path(isa, h, w).is_some()
    }

    /// The grid of the direct AMX path for an `h × w` input, when this convolution takes it
    /// with `isa`: the image that a previous convolution writes for it ([`QOutput::ImageBf16`]).
    /// Never a narrow grid (an image's), which no convolution writes.
    pub(crate) fn direct_grid(&self, isa: Bf16Isa, h: usize, w: usize) -> Option<Grid> {
        self.direct_path(isa, h, w)
            .map(|(_, _, grid)| grid)
            .filter(|grid| !grid.narrow())
    }

    /// The direct AMX path's op, weights and input, when this convolution takes it with
    /// `isa` for an `h × w` input: an f32 input rounded to bf16 into a padded channels-last
    /// copy (on a cache line, as every tile row then is), or the image a previous convolution
    /// wrote for it; and whether to spread the work over the rayon pool.
    ///
    /// # Panics
    /// If the input is an image of the wrong length, or an image or panels for a convolution
    /// that does not take the direct path.
    pub(super) fn direct_input<'a>(
        &'a self,
        input: QInput<'a>,
        h: usize,
        w: usize,
        scratch: &'a mut Bf16Scratch,
        par: Parallelism,
        isa: Bf16Isa,
    ) -> Option<(amx::Bf16, &'a DirectWeights, ChannelsLast<'a, u16>, bool)> {
        let Some((dw, op, grid)) = self.direct_path(isa, h, w) else {
            assert!(
                matches!(input, QInput::F32(_)),
                "Bf16Conv: an image or panels for a convolution without the direct path"
            );
            return None;
        };
        let rayon = par == Parallelism::Rayon;
        let x = match input {
            QInput::F32(x) => {
                assert_eq!(x.len(), self.cin * h * w, "Bf16Conv: input length");
                // (`cin` is a multiple of 32, so every pixel's channels start on a line too.)
                let xs = aligned_mut(&mut scratch.x, grid.len());
                if grid.narrow() {
                    fill_narrow_bf16(x, self.cin, grid, xs, rayon);
                } else {
                    direct::fill_channels_last_bf16(x, grid, xs, rayon);
                }
                aligned(&scratch.x, grid.len())
            }
            QInput::ImageBf16(image) => image,
            QInput::Panels(_) | QInput::Quantized(_) | QInput::ImageU8(_) => {
                panic!("Bf16Conv: panels or bytes for a direct convolution")
            }
        };
        let x = ChannelsLast::new(x, grid);
        assert!(x.is_some(), "Bf16Conv: an image of the wrong length");
        let (oh, ow) = self.out_hw(h, w);
        let work = self.cout * oh * ow * self.cin * self.kh * self.kw;
        let parallel = rayon && work >= crate::kernels::gemm::PAR_THRESHOLD;
        x.map(|x| (op, dw, x, parallel))
    }

    /// A stem fused with its max-pool: `pooled` (`[cout, ph, pw]`) is the 3×3 / stride 2 /
    /// padding 1 max-pool ([`maxpool2d`]'s result) of the output of
    /// [`Bf16Conv::forward_image`] without a residual, which is never written whole. Only on
    /// the narrow AMX path (an image of at most 3 channels, with [`Bf16Isa::Amx`]); returns
    /// `false`, having written nothing, elsewhere.
    ///
    /// [`maxpool2d`]: crate::kernels::pool::maxpool2d
    ///
    /// # Panics
    /// If a slice length does not match the shapes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_pooled(
        &self,
        input: &[f32],
        h: usize,
        w: usize,
        pooled: &mut [f32],
        relu: bool,
        scratch: &mut Bf16Scratch,
        par: Parallelism,
        isa: Bf16Isa,
    ) -> bool {
        if !self.reads_image_directly() {
            return false;
        }
        let (oh, ow) = self.out_hw(h, w);
        let finish = Finish {
            bias: &self.bias,
            residual: None,
            relu,
            p: oh * ow,
        };
        match self.direct_input(QInput::F32(input), h, w, scratch, par, isa) {
            Some((op, dw, x, parallel)) => {
                direct::conv_pooled(op, dw, x, pooled, parallel, &finish);
                true
            }
            None => false,
        }
    }
}

/// Writes the `[cin, h, w]` f32 planes `x` (`cin < NARROW`) into `dst` as the padded
/// channels-last image of the narrow `grid`, rounded to bf16; the padding and the added
/// channels are zero.
fn fill_narrow_bf16(x: &[f32], cin: usize, grid: Grid, dst: &mut [u16], parallel: bool) {
    let (h, w) = (grid.h, grid.w);
    let plane = h * w;
    let wide = Wide::detect(true);
    direct::fill_padded(grid, dst, 0, parallel, |y, row| {
        let px = row.as_chunks_mut::<NARROW>().0;
        match wide {
            Wide::Baseline => direct::narrow_row(x, plane, y * w, cin, 0, to_bf16, px),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected.
            Wide::Avx512(_) => unsafe { narrow_row_bf16_avx512(x, plane, y * w, cin, px) },
        }
    });
}

/// A row of [`fill_narrow_bf16`] ([`direct::narrow_row`] with `to_bf16`) compiled with
/// AVX-512.
///
/// # Safety
/// The CPU must run AVX512F and AVX512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn narrow_row_bf16_avx512(
    x: &[f32],
    plane: usize,
    at: usize,
    cin: usize,
    px: &mut [[u16; NARROW]],
) {
    direct::narrow_row(x, plane, at, cin, 0, to_bf16, px)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of narrow bf16 pixels holds, per pixel, its channels rounded to bf16, then
    /// zeros: written out here element by element, for 1 to 4 channels and rows shorter and
    /// longer than a vector, with the portable loop and (where the CPU has it) the AVX-512 one.
    #[test]
    fn narrow_bf16_rows_hold_the_rounded_channels_then_zeros() {
        for (cin, w) in [(3, 37), (1, 5), (2, 16), (4, 33), (3, 1)] {
            let (plane, at) = (w * 3 + 2, w + 1);
            let x: Vec<f32> = (0..cin * plane)
                .map(|i| (i as f32 * 0.618_034).sin() * 3.0 + 1e-3)
                .collect();
            let want: Vec<[u16; NARROW]> = (0..w)
                .map(|i| {
                    std::array::from_fn(|c| {
                        if c < cin {
                            to_bf16(x[c * plane + at + i])
                        } else {
                            0
                        }
                    })
                })
                .collect();
            let mut got = vec![[0xA5A5u16; NARROW]; w];
            direct::narrow_row(&x, plane, at, cin, 0, to_bf16, &mut got);
            assert_eq!(got, want, "{cin} channels, {w} pixels");
            #[cfg(target_arch = "x86_64")]
            if let Wide::Avx512(_) = Wide::detect(true) {
                let mut got = vec![[0xA5A5u16; NARROW]; w];
                // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected.
                unsafe { narrow_row_bf16_avx512(&x, plane, at, cin, &mut got) };
                assert_eq!(got, want, "{cin} channels, {w} pixels, AVX-512");
            }
        }
    }
}
