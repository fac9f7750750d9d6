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
    let (s, z) = (zp.scale, f32::from(zp.zero));
    let plane = h * w;
    direct::fill_padded(grid, dst, zp.zero, parallel, |y, row| {
        row.fill(zp.zero);
        for c in 0..cin {
            let src = &x[c * plane + y * w..][..w];
            for (px, &v) in row.chunks_exact_mut(NARROW).zip(src) {
                px[c] = quantize_u8(v * s + z, 1.0);
            }
        }
    });
}
