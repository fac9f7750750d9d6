//! The path of a convolution whose input is quantised with its own zero point (a stem's
//! signed image, [`QuantizedConv::per_image`]): on AMX the image read as a narrow
//! channels-last grid, optionally fused with the stem's max-pool; elsewhere im2col and the
//! int8 product.

use super::epilogue::{epilogue, Dequant};
use super::{grow, Bufs, InputRange, QuantScratch, QuantizedConv};
use crate::kernels::aligned::{aligned, aligned_mut};
use crate::kernels::amx::direct::{self, ChannelsLast, DirectWeights, Grid, NARROW};
use crate::kernels::amx::{self, no_hand_on};
use crate::kernels::gemm::{Parallelism, PAR_THRESHOLD};
use crate::kernels::int8::{gemm_u8i8_emit, quantize_u8, Int8Isa, ZeroPoint};
use crate::kernels::wide::Wide;

/// What [`QuantizedConv::forward_per_image`] writes: the output, or only its 3×3 / stride 2
/// / padding 1 max-pool (on the narrow AMX path only).
pub(super) enum PerImageOut<'a> {
    Plain(&'a mut [f32]),
    Pooled(&'a mut [f32]),
}

impl QuantizedConv {
    /// Whether this convolution quantises its input image (at most 4 channels, a stem's) with
    /// its own zero point and, on this CPU, can read it as a narrow channels-last grid on AMX
    /// (with [`Int8Isa::Amx`]; another kernel asked for computes the same sums on im2col).
    pub(crate) fn reads_image_directly(&self) -> bool {
        // (Direct weights exist only where AMX-INT8 was detected.)
        matches!(self.input, InputRange::PerImage) && self.direct.is_some()
    }

    /// The AMX op, weights and narrow grid of a convolution of an input quantised with its
    /// own zero point (a stem) for an `h × w` input, when it takes the direct path with `isa`.
    fn narrow_direct(
        &self,
        isa: Int8Isa,
        h: usize,
        w: usize,
    ) -> Option<(amx::Int8, &DirectWeights, Grid)> {
        let (Int8Isa::Amx, InputRange::PerImage, Some(weights), Some(op)) =
            (isa, self.input, &self.direct, amx::Int8::detect())
        else {
            return None;
        };
        let grid = Grid {
            cin: NARROW,
            ..self.direct_grid(h, w)
        };
        grid.supported::<u8>().then_some((op, weights, grid))
    }

    /// A stem fused with its max-pool: `pooled` (`[cout, ph, pw]`) is the 3×3 / stride 2 /
    /// padding 1 max-pool ([`maxpool2d`]'s result) of the output of
    /// [`QuantizedConv::forward_image`] without a residual, which is never written whole.
    /// Only on the narrow AMX path (an input quantised with its own zero point, on at most
    /// four channels, with [`Int8Isa::Amx`]); returns `false`, having written nothing,
    /// elsewhere.
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
        scratch: &mut QuantScratch,
        par: Parallelism,
        isa: Int8Isa,
    ) -> bool {
        if self.narrow_direct(isa, h, w).is_none() {
            return false;
        }
        let (oh, ow) = self.out_hw(h, w);
        let p = oh * ow;
        assert_eq!(input.len(), self.cin * h * w, "QuantizedConv: input length");
        let (w_step, bias) = (&self.w_step[..], &self.bias[..]);
        let QuantScratch {
            x,
            cols,
            pack,
            dequant,
            offset,
        } = scratch;
        let bufs = Bufs { x, cols, pack };
        let out = PerImageOut::Pooled(pooled);
        self.forward_per_image(input, h, w, out, bufs, offset, par, isa, |x_step| {
            epilogue::<true>(dequant, w_step, x_step, bias, None, relu, p)
        });
        true
    }

    /// The product of a signed input quantised with its own zero point (see the module
    /// documentation); `make(s_x)` gives the epilogue, which must subtract `offset`. With
    /// `pooled`, on the narrow AMX path only (the caller checks [`Self::narrow_direct`]), the
    /// 3×3 / stride 2 max-pool of the output too (`amx::direct::conv_pooled`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward_per_image<'o>(
        &self,
        input: &[f32],
        h: usize,
        w: usize,
        out: PerImageOut<'_>,
        bufs: Bufs<'_>,
        offset: &'o mut Vec<i32>,
        par: Parallelism,
        isa: Int8Isa,
        make: impl FnOnce(f32) -> Dequant<'o, true>,
    ) {
        let (oh, ow) = self.out_hw(h, w);
        let (p, k) = (oh * ow, self.cin * self.kh * self.kw);
        let zp = ZeroPoint::of(input);
        offset.clear();
        let z = i32::from(zp.zero);
        offset.extend(self.row_sums.iter().map(|&r| z * r));
        // With AMX, a stem reads its image as a narrow channels-last grid (`amx::direct`),
        // without an im2col matrix: the same sums.
        if let Some((op, weights, grid)) = self.narrow_direct(isa, h, w) {
            let rayon = par == Parallelism::Rayon;
            let image = aligned_mut(bufs.x, grid.len());
            fill_narrow(input, self.cin, zp, grid, image, rayon);
            // (Always `Some`: the grid is supported and the length is its own.)
            if let Some(x) = ChannelsLast::new(aligned(bufs.x, grid.len()), grid) {
                let parallel = rayon && self.cout * p * k >= PAR_THRESHOLD;
                let mut emit = make(zp.step);
                emit.offset = offset;
                match out {
                    PerImageOut::Pooled(pooled) => {
                        amx::direct::conv_pooled(op, weights, x, pooled, parallel, &emit)
                    }
                    PerImageOut::Plain(out) => {
                        amx::direct::conv(op, weights, x, out, parallel, &emit)
                    }
                }
                return;
            }
        }
        let PerImageOut::Plain(out) = out else {
            panic!("QuantizedConv: a pooled output off the narrow path")
        };
        grow(bufs.x, input.len());
        let xq = &mut bufs.x[..input.len()];
        if par == Parallelism::Rayon && crate::kernels::par::splits(input.len()) {
            crate::kernels::par::for_each_chunk(xq, 1 << 14, |i, d| {
                zp.quantize(&input[i << 14..][..d.len()], d)
            });
        } else {
            zp.quantize(input, xq);
        }
        grow(bufs.cols, k * p);
        let cols = &mut bufs.cols[..k * p];
        self.window()
            .im2col_padded(&bufs.x[..input.len()], h, w, cols, par, zp.zero);
        let mut emit = make(zp.step);
        emit.offset = offset;
        let cols = &bufs.cols[..k * p];
        gemm_u8i8_emit(
            self.packed(),
            cols,
            p,
            out,
            bufs.pack,
            par,
            isa,
            emit,
            no_hand_on(),
        );
    }
}

/// Writes the `[cin, h, w]` f32 planes `x` (`cin ≤ NARROW`) into `dst` as the padded
/// channels-last image of the narrow `grid`, quantised by `zp` (`q = clamp(round(v·scale +
/// z), 0, 255)`, as [`ZeroPoint::quantize`]); the padding and the added channels are the zero
/// point `z`, which stands for 0 (the added channels have zero weights anyway).
fn fill_narrow(x: &[f32], cin: usize, zp: ZeroPoint, grid: Grid, dst: &mut [u8], parallel: bool) {
    let (h, w) = (grid.h, grid.w);
    assert!(
        grid.narrow() && cin <= NARROW && x.len() == cin * h * w,
        "fill_narrow: {cin} planes of {h}×{w} for a grid of {} channels",
        grid.cin
    );
    let plane = h * w;
    // (Whole pixels at a time, with AVX-512: see `direct::narrow_row`.)
    let wide = Wide::detect(true);
    direct::fill_padded(grid, dst, zp.zero, parallel, |y, row| {
        let px = row.as_chunks_mut::<NARROW>().0;
        match wide {
            Wide::Baseline => narrow_row(x, plane, y * w, cin, zp, px),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected.
            Wide::Avx512(_) => unsafe { narrow_row_avx512(x, plane, y * w, cin, zp, px) },
        }
    });
}

/// One row of narrow pixels quantised by `zp` ([`direct::narrow_row`] with `q(v) =
/// quantize_u8(v·scale + z, 1)`, the channels from `cin` the zero point `z`).
#[inline(always)]
fn narrow_row(
    x: &[f32],
    plane: usize,
    at: usize,
    cin: usize,
    zp: ZeroPoint,
    px: &mut [[u8; NARROW]],
) {
    let (s, z) = (zp.scale, f32::from(zp.zero));
    direct::narrow_row(
        x,
        plane,
        at,
        cin,
        zp.zero,
        |v| quantize_u8(v * s + z, 1.0),
        px,
    );
}

/// [`narrow_row`] compiled with AVX-512.
///
/// # Safety
/// The CPU must run AVX512F and AVX512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn narrow_row_avx512(
    x: &[f32],
    plane: usize,
    at: usize,
    cin: usize,
    zp: ZeroPoint,
    px: &mut [[u8; NARROW]],
) {
    narrow_row(x, plane, at, cin, zp, px)
}

#[cfg(test)]
mod tests {
    use super::super::tests::uniform;
    use super::super::{QInput, QOutput, Residual};
    use super::*;
    use crate::kernels::conv::Conv2d;
    use crate::kernels::pool::maxpool2d;

    /// A row of narrow pixels holds, per pixel, the bytes of its channels quantised with the
    /// zero point, then the zero point: written out here byte by byte, for 1 to 4 channels,
    /// rows shorter and longer than a vector, values beyond both ends of the range, with the
    /// portable loop and (where the CPU has it) the AVX-512 one.
    #[test]
    fn narrow_rows_hold_the_quantised_channels_then_the_zero_point() {
        let mut rnd = uniform(0x5EED_0A11);
        for (cin, w) in [(3, 37), (1, 5), (2, 16), (4, 33), (3, 1)] {
            let (plane, at) = (w * 3 + 2, w + 1);
            let x: Vec<f32> = (0..cin * plane).map(|_| 6.0 * rnd() - 3.5).collect();
            // The range of part of the values only, so that some quantise beyond 0 and 255.
            let zp = ZeroPoint::of(&x[..x.len() / 2]);
            let want: Vec<[u8; NARROW]> = (0..w)
                .map(|i| {
                    let mut p = [zp.zero; NARROW];
                    for (c, b) in p.iter_mut().enumerate().take(cin) {
                        let v = x[c * plane + at + i] * zp.scale + f32::from(zp.zero);
                        *b = v.round_ties_even().clamp(0.0, 255.0) as u8;
                    }
                    p
                })
                .collect();
            let mut got = vec![[0xA5u8; NARROW]; w];
            narrow_row(&x, plane, at, cin, zp, &mut got);
            assert_eq!(got, want, "{cin} channels, {w} pixels");
            #[cfg(target_arch = "x86_64")]
            if let Wide::Avx512(_) = Wide::detect(true) {
                let mut got = vec![[0xA5u8; NARROW]; w];
                // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected.
                unsafe { narrow_row_avx512(&x, plane, at, cin, zp, &mut got) };
                assert_eq!(got, want, "{cin} channels, {w} pixels, AVX-512");
            }
        }
    }

    /// A stem (an input quantised with its own zero point) on AMX reads its image as a narrow
    /// channels-last grid, padded with the zero point; it gives the bits of the portable kernel's
    /// im2col path: one to four input channels, windows up to 7×7 at both strides, images
    /// narrower than a tile and wider than a block of 32 positions, inputs all negative (the
    /// zero point 255), all positive (0) and mixed, with and without a residual, both thread
    /// modes; fused with its 3×3 / stride 2 max-pool, the pool of that output. Skipped on CPUs
    /// without AMX-INT8.
    #[test]
    fn stem_on_amx_is_the_portable_stem() {
        if !Int8Isa::Amx.is_available() {
            return;
        }
        let mut rnd = uniform(0x1234_5677u32);
        let mut checked = 0;
        for (cin, k, stride, h, w) in [
            (3, 7, 2, 19, 37),
            (3, 7, 2, 1, 1),
            (1, 3, 1, 5, 40),
            (2, 5, 2, 8, 9),
            (4, 3, 1, 3, 17),
            (3, 7, 1, 6, 6),
            (3, 7, 2, 40, 34),
        ] {
            let cout = 1 + (h * w) % 40 + if h == 40 { 40 } else { 0 };
            let weight: Vec<f32> = (0..cout * cin * k * k).map(|_| rnd() - 0.5).collect();
            let bias: Vec<f32> = (0..cout).map(|_| rnd() - 0.3).collect();
            let conv = Conv2d::new(cout, cin, k, k, stride, k / 2, weight, bias);
            let q = QuantizedConv::per_image(&conv).unwrap();
            let (oh, ow) = q.out_hw(h, w);
            for shift in [-1.2f32, 0.0, 0.5] {
                let x: Vec<f32> = (0..cin * h * w)
                    .map(|_| 2.0 * rnd() - 1.0 + shift)
                    .collect();
                let residual: Vec<f32> = (0..cout * oh * ow).map(|_| rnd() - 0.5).collect();
                for (res, relu) in [(None, true), (Some(&residual[..]), false)] {
                    let run = |isa: Int8Isa, par: Parallelism| {
                        let mut out = vec![f32::NAN; cout * oh * ow];
                        let mut scratch = QuantScratch::default();
                        let io = (QInput::F32(&x), QOutput::F32(&mut out));
                        assert!(q.forward(
                            io,
                            h,
                            w,
                            res.map(Residual::F32),
                            relu,
                            &mut scratch,
                            par,
                            isa
                        ));
                        out
                    };
                    let want = run(Int8Isa::Portable, Parallelism::Sequential);
                    assert!(want.iter().all(|v| v.is_finite()));
                    // The stem fused with its max-pool against the pool of the portable output.
                    let (ph, pw) = ((oh - 1) / 2 + 1, (ow - 1) / 2 + 1);
                    let mut pooled_want = vec![f32::NAN; cout * ph * pw];
                    maxpool2d(&want, cout, oh, ow, 3, 2, 1, &mut pooled_want);
                    for par in [Parallelism::Sequential, Parallelism::Rayon] {
                        let got = run(Int8Isa::Amx, par);
                        let same = got
                            .iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same,
                            "{cin}→{cout} {k}×{k}/{stride} {h}×{w} {shift} {par:?}"
                        );
                        if res.is_none() {
                            let mut pooled = vec![f32::NAN; cout * ph * pw];
                            let mut s = QuantScratch::default();
                            let fused = |isa, pooled: &mut [f32], s: &mut QuantScratch| {
                                q.forward_pooled(&x, h, w, pooled, relu, s, par, isa)
                            };
                            assert!(fused(Int8Isa::Amx, &mut pooled, &mut s));
                            let same = pooled
                                .iter()
                                .zip(&pooled_want)
                                .all(|(a, b)| a.to_bits() == b.to_bits());
                            assert!(same, "pooled {cin}→{cout} {k}×{k}/{stride} {h}×{w} {par:?}");
                            // Not on the other kernels (which write nothing).
                            assert!(!fused(Int8Isa::Portable, &mut pooled, &mut s));
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 7 * 3 * 2 * 2);
    }
}
