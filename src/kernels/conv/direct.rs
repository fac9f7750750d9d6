//! Direct convolution of inputs with few channels: the stem (3 → 64 channels, 7×7, stride 2,
//! padding 3).
//!
//! im2col would copy such an image `kh·kw` times (147 rows of 12,544 values for the stem at
//! 224²) and hand the GEMM a product only 147 deep. Here the sums of a block of [`CO`] output
//! channels × [`LANES`]`·`[`VECS`] output columns of one output row stay in registers while
//! every tap `(ci, ky, kx)` adds `w · x` to them: per tap, `VECS` loads of the input row and
//! `CO` weights make `CO·VECS` vector multiply-adds.
//!
//! So that the inputs of 16 consecutive output columns are 16 consecutive values whatever the
//! stride, the padded input is first split into phases ([`split_phases`]): padded row `r` of
//! channel `ci` becomes `stride` rows, phase `p` holding the padded columns `p, p + s,
//! p + 2s, …`. Output column `ox` at tap `kx` then reads padded column `s·ox + kx`, which is
//! value `ox + kx / s` of phase `kx mod s`.
//!
//! Each output value is `act(Σ_taps w·x + bias (+ residual))` with the taps summed in the
//! order of the weights (`ci`, then `ky`, then `kx`), one multiply-add each, whatever the
//! block, the thread or the number of threads. Copies: the plain loops (multiply, then add,
//! on every CPU), and on x86-64 with AVX-512 the same loops with fused multiply-adds
//! ([`Wide::Avx512`]), the one [`ConvAlgorithm::Auto`](super::ConvAlgorithm::Auto) picks.

use rayon::prelude::*;

use super::epilogue::epilogue_segment;
use crate::kernels::gemm::Parallelism;
use crate::kernels::wide::Wide;

/// Input channels up to which the direct path applies.
pub(super) const MAX_CIN: usize = 4;
/// Output channels per block.
const CO: usize = 6;
/// Values per vector.
const LANES: usize = 16;
/// Vectors per block (output columns: `LANES·VECS`).
const VECS: usize = 4;

/// The shape of one direct convolution of an `h × w` image.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geometry {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Padding (every side).
    pub pad: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl Geometry {
    /// Padded input rows.
    fn rows(&self) -> usize {
        self.h + 2 * self.pad
    }

    /// Values per phase row: the columns a block of whole vectors reads
    /// (`⌈ow/16⌉·16 + (kw − 1) / s`).
    fn phase_width(&self) -> usize {
        self.ow.div_ceil(LANES) * LANES + (self.kw - 1) / self.stride
    }

    /// Values of the split input.
    fn phase_len(&self) -> usize {
        self.cin * self.rows() * self.stride * self.phase_width()
    }

    /// Taps per output value.
    fn taps(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    /// Values of the reordered weights: per block of [`CO`] output channels, per tap, the
    /// block's `CO` weights (zero for channels past `cout`).
    fn weight_len(&self) -> usize {
        self.cout.div_ceil(CO) * self.taps() * CO
    }

    /// Scratch values [`forward`] needs.
    pub(super) fn scratch_len(&self) -> usize {
        self.phase_len() + self.weight_len()
    }
}

/// How a copy of the loops forms `a·b + c`.
trait Mac {
    fn mac(a: f32, b: f32, c: f32) -> f32;
}

/// `a·b + c` with two roundings (every CPU).
struct Separate;

impl Mac for Separate {
    #[inline(always)]
    fn mac(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// `a·b + c` with one rounding; only in code compiled with FMA (else a library call).
#[cfg(target_arch = "x86_64")]
struct Fused;

#[cfg(target_arch = "x86_64")]
impl Mac for Fused {
    #[inline(always)]
    fn mac(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// `out = act(conv(input) + bias (+ residual))` for one image (`input` `[cin, h, w]`, `out`
/// `[cout, oh, ow]`, `weight` `[cout, cin, kh, kw]`), with `scratch` of
/// [`Geometry::scratch_len`] values. `wide` picks the copy of the loops.
///
/// # Panics
/// If a length does not match `g`, or `g.cin` exceeds [`MAX_CIN`].
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    g: &Geometry,
    weight: &[f32],
    bias: &[f32],
    input: &[f32],
    out: &mut [f32],
    residual: Option<&[f32]>,
    relu: bool,
    scratch: &mut [f32],
    par: Parallelism,
    wide: Wide,
) {
    assert!(g.cin <= MAX_CIN, "direct conv: {} input channels", g.cin);
    assert_eq!(
        weight.len(),
        g.cout * g.taps(),
        "direct conv: weight length"
    );
    assert_eq!(bias.len(), g.cout, "direct conv: bias length");
    assert_eq!(input.len(), g.cin * g.h * g.w, "direct conv: input length");
    let p = g.oh * g.ow;
    assert_eq!(out.len(), g.cout * p, "direct conv: output length");
    if let Some(r) = residual {
        assert_eq!(r.len(), out.len(), "direct conv: residual length");
    }
    assert_eq!(
        scratch.len(),
        g.scratch_len(),
        "direct conv: scratch length"
    );
    if p == 0 {
        return;
    }
    let (phases, packed) = scratch.split_at_mut(g.phase_len());
    split_phases(g, input, phases, par);
    reorder_weights(g, weight, packed);
    let offsets = tap_offsets(g);
    let job = Job {
        g,
        phases,
        offsets: &offsets,
        relu,
    };
    let packed = &*packed;
    let block = |cb: usize, o: &mut [f32]| {
        let w = &packed[cb * g.taps() * CO..][..g.taps() * CO];
        let r = residual.map(|r| &r[cb * CO * p..][..o.len()]);
        let b = &bias[cb * CO..][..o.len() / p];
        match wide {
            Wide::Baseline => channels::<Separate>(&job, w, b, r, o),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected.
            Wide::Avx512(_) => unsafe { channels_avx512(&job, w, b, r, o) },
        }
    };
    match par {
        Parallelism::Rayon => out
            .par_chunks_mut(CO * p)
            .enumerate()
            .for_each(|(cb, o)| block(cb, o)),
        Parallelism::Sequential => out
            .chunks_mut(CO * p)
            .enumerate()
            .for_each(|(cb, o)| block(cb, o)),
    }
}

/// Splits the zero-padded input into phases: `phases[((ci·rows + r)·s + q)·width + j]` is
/// padded value `(r, s·j + q)` of channel `ci`.
fn split_phases(g: &Geometry, input: &[f32], phases: &mut [f32], par: Parallelism) {
    let (s, width, pad) = (g.stride, g.phase_width(), g.pad);
    let row = |i: usize, row: &mut [f32]| {
        let (ci, r) = (i / g.rows(), i % g.rows());
        let Some(src) = r
            .checked_sub(pad)
            .filter(|&y| y < g.h)
            .map(|y| &input[(ci * g.h + y) * g.w..][..g.w])
        else {
            row.fill(0.0);
            return;
        };
        for (q, dst) in row.chunks_exact_mut(width).enumerate() {
            // Value j is input column s·j + q − pad: inside for j0 ≤ j < j1.
            let j0 = pad.saturating_sub(q).div_ceil(s).min(width);
            let j1 = (g.w + pad).saturating_sub(q).div_ceil(s).clamp(j0, width);
            dst[..j0].fill(0.0);
            let first = s * j0 + q - pad;
            for (d, &v) in dst[j0..j1].iter_mut().zip(src[first..].iter().step_by(s)) {
                *d = v;
            }
            dst[j1..].fill(0.0);
        }
    };
    match par {
        Parallelism::Rayon => phases
            .par_chunks_exact_mut(s * width)
            .enumerate()
            .with_min_len(16)
            .for_each(|(i, r)| row(i, r)),
        Parallelism::Sequential => phases
            .chunks_exact_mut(s * width)
            .enumerate()
            .for_each(|(i, r)| row(i, r)),
    }
}

/// Per tap `(ci, ky, kx)` (in the order of the weights), where the inputs of output row 0,
/// column 0 start in the split input: row `ky` of channel `ci`, phase `kx mod s`, value
/// `kx / s`.
fn tap_offsets(g: &Geometry) -> Vec<usize> {
    let (s, width) = (g.stride, g.phase_width());
    let mut offsets = Vec::with_capacity(g.taps());
    for ci in 0..g.cin {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                offsets.push(((ci * g.rows() + ky) * s + kx % s) * width + kx / s);
            }
        }
    }
    offsets
}

/// `packed[(cb·taps + t)·CO + c] = weight[(CO·cb + c)·taps + t]` (zero past `cout`).
fn reorder_weights(g: &Geometry, weight: &[f32], packed: &mut [f32]) {
    let taps = g.taps();
    for (cb, block) in packed.chunks_exact_mut(taps * CO).enumerate() {
        for (t, ws) in block.chunks_exact_mut(CO).enumerate() {
            for (c, v) in ws.iter_mut().enumerate() {
                let co = cb * CO + c;
                *v = if co < g.cout {
                    weight[co * taps + t]
                } else {
                    0.0
                };
            }
        }
    }
}

/// [`channels`] with fused multiply-adds, compiled with AVX-512.
///
/// # Safety
/// The CPU must run AVX512F and AVX512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,fma")]
fn channels_avx512(
    job: &Job<'_>,
    w: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    channels::<Fused>(job, w, bias, residual, out)
}

/// What every block of output channels shares.
struct Job<'a> {
    g: &'a Geometry,
    /// The split input ([`split_phases`]).
    phases: &'a [f32],
    /// Per tap, where its inputs start ([`tap_offsets`]).
    offsets: &'a [usize],
    relu: bool,
}

/// One block of up to [`CO`] output channels (`out`: `bias.len()` planes): every output row,
/// in blocks of [`VECS`] vectors (fewer at the row's end).
#[inline(always)]
fn channels<M: Mac>(
    job: &Job<'_>,
    w: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    let Job {
        g,
        phases,
        offsets,
        relu,
    } = *job;
    let p = g.oh * g.ow;
    for oy in 0..g.oh {
        for x0 in (0..g.ow).step_by(LANES * VECS) {
            let len = (g.ow - x0).min(LANES * VECS);
            let mut sums = [[0.0f32; LANES * VECS]; CO];
            match len.div_ceil(LANES) {
                1 => sums_block::<M, 1>(g, phases, w, offsets, oy, x0, &mut sums),
                2 => sums_block::<M, 2>(g, phases, w, offsets, oy, x0, &mut sums),
                3 => sums_block::<M, 3>(g, phases, w, offsets, oy, x0, &mut sums),
                _ => sums_block::<M, VECS>(g, phases, w, offsets, oy, x0, &mut sums),
            }
            for (c, (s, &b)) in sums.iter_mut().zip(bias).enumerate() {
                let at = c * p + oy * g.ow + x0;
                let seg = &mut out[at..at + len];
                seg.copy_from_slice(&s[..len]);
                epilogue_segment(seg, b, residual.map(|r| &r[at..at + len]), relu);
            }
        }
    }
}

/// The sums of output row `oy`, columns `x0 .. x0 + 16·N`, for the block's [`CO`] channels
/// (`w`: per tap, `CO` weights; `offsets`: per tap, where its inputs start in `phases` for
/// output row 0, column 0), written to `sums[c][..16·N]`.
#[inline(always)]
fn sums_block<M: Mac, const N: usize>(
    g: &Geometry,
    phases: &[f32],
    w: &[f32],
    offsets: &[usize],
    oy: usize,
    x0: usize,
    sums: &mut [[f32; LANES * VECS]; CO],
) {
    let base = oy * g.stride * g.stride * g.phase_width() + x0;
    let mut acc = [[[0.0f32; LANES]; N]; CO];
    let (taps, _) = w.as_chunks::<CO>();
    for (wt, &off) in taps.iter().zip(offsets) {
        let from = base + off;
        let (src, _) = phases[from..from + N * LANES].as_chunks::<LANES>();
        for (a, &wc) in acc.iter_mut().zip(wt) {
            for (av, xv) in a.iter_mut().zip(src) {
                for (al, &xl) in av.iter_mut().zip(xv) {
                    *al = M::mac(wc, xl, *al);
                }
            }
        }
    }
    for (dst, a) in sums.iter_mut().zip(&acc) {
        for (d, v) in dst.chunks_exact_mut(LANES).zip(a) {
            d.copy_from_slice(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The convolution by its definition, in the order the direct path promises: per output
    /// value, `mac(w, x, acc)` over the taps in weight order from 0, then the epilogue of
    /// the im2col path (`max(acc + b + r, 0)` with ReLU, `acc + (b + r)` without).
    #[allow(clippy::too_many_arguments)]
    fn naive(
        g: &Geometry,
        weight: &[f32],
        bias: &[f32],
        input: &[f32],
        residual: Option<&[f32]>,
        relu: bool,
        mac: impl Fn(f32, f32, f32) -> f32,
    ) -> Vec<f32> {
        let mut out = vec![0.0; g.cout * g.oh * g.ow];
        for co in 0..g.cout {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut acc = 0.0f32;
                    for ci in 0..g.cin {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                let inside = iy >= 0
                                    && ix >= 0
                                    && (iy as usize) < g.h
                                    && (ix as usize) < g.w;
                                let x = if inside {
                                    input[(ci * g.h + iy as usize) * g.w + ix as usize]
                                } else {
                                    0.0
                                };
                                let wv = weight[((co * g.cin + ci) * g.kh + ky) * g.kw + kx];
                                acc = mac(wv, x, acc);
                            }
                        }
                    }
                    let at = (co * g.oh + oy) * g.ow + ox;
                    out[at] = match (residual, relu) {
                        (Some(r), true) => (acc + bias[co] + r[at]).max(0.0),
                        (Some(r), false) => acc + (bias[co] + r[at]),
                        (None, true) => (acc + bias[co]).max(0.0),
                        (None, false) => acc + bias[co],
                    };
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Runs the direct path with `wide` and `par` into a garbage-filled output and scratch.
    #[allow(clippy::too_many_arguments)]
    fn run(
        g: &Geometry,
        weight: &[f32],
        bias: &[f32],
        input: &[f32],
        residual: Option<&[f32]>,
        relu: bool,
        par: Parallelism,
        wide: Wide,
    ) -> Vec<f32> {
        let mut out = vec![f32::NAN; g.cout * g.oh * g.ow];
        let mut scratch = vec![f32::NAN; g.scratch_len()];
        forward(
            g,
            weight,
            bias,
            input,
            &mut out,
            residual,
            relu,
            &mut scratch,
            par,
            wide,
        );
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(120))]
        /// Every copy of the loops, sequential and parallel, gives exactly the bits of the
        /// definition summed in weight order (plain multiply-adds for the portable copy,
        /// fused ones for the AVX-512 copy): odd kernels, strides and paddings, partial
        /// blocks of output channels and of columns (widths past 64, not multiples of 16),
        /// with and without residual and ReLU.
        #[test]
        fn direct_matches_the_definition_bit_for_bit(
            cin in 1usize..=MAX_CIN, cout in 1usize..15, h in 1usize..12, w in 1usize..150,
            kh in 1usize..8, kw in 1usize..8, stride in 1usize..4, pad in 0usize..4,
            relu in any::<bool>(), with_residual in any::<bool>(), seed in any::<u64>(),
        ) {
            let (ph, pw) = (h + 2 * pad, w + 2 * pad);
            prop_assume!(ph >= kh && pw >= kw);
            let (oh, ow) = ((ph - kh) / stride + 1, (pw - kw) / stride + 1);
            let g = Geometry { cin, cout, h, w, kh, kw, stride, pad, oh, ow };
            let weight = values(cout * cin * kh * kw, seed);
            let bias = values(cout, seed ^ 1);
            let input = values(cin * h * w, seed ^ 2);
            let residual = with_residual.then(|| values(cout * oh * ow, seed ^ 3));
            let r = residual.as_deref();
            let plain = naive(&g, &weight, &bias, &input, r, relu, |a, b, c| a * b + c);
            for par in [Parallelism::Sequential, Parallelism::Rayon] {
                let got = run(&g, &weight, &bias, &input, r, relu, par, Wide::Baseline);
                prop_assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                );
                let wide = Wide::detect(true);
                if wide.is_avx512() {
                    let fused = naive(&g, &weight, &bias, &input, r, relu, f32::mul_add);
                    let got = run(&g, &weight, &bias, &input, r, relu, par, wide);
                    prop_assert_eq!(
                        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        fused.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                    );
                }
            }
        }
    }

    /// The ResNet stem's shape (3 → 64, 7×7, stride 2, padding 3) at 224² against the
    /// definition, with the copy `Auto` picks on this CPU.
    #[test]
    fn stem_shape_matches_the_definition() {
        let (h, w) = (224, 224);
        let g = Geometry {
            cin: 3,
            cout: 64,
            h,
            w,
            kh: 7,
            kw: 7,
            stride: 2,
            pad: 3,
            oh: 112,
            ow: 112,
        };
        let weight = values(64 * 147, 5);
        let bias = values(64, 6);
        let input = values(3 * h * w, 7);
        let wide = Wide::detect(true);
        let got = run(
            &g,
            &weight,
            &bias,
            &input,
            None,
            true,
            Parallelism::Rayon,
            wide,
        );
        let want = if wide.is_avx512() {
            naive(&g, &weight, &bias, &input, None, true, f32::mul_add)
        } else {
            naive(&g, &weight, &bias, &input, None, true, |a, b, c| a * b + c)
        };
        assert!(got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
