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
//! block, the thread or the number of threads. Kernels ([`Kernel`]): plain loops (a multiply,
//! then an add, on every CPU), and on x86-64 with AVX-512 intrinsics with a fused
//! multiply-add (`x86_avx512.rs`), the one [`ConvAlgorithm::Auto`](super::ConvAlgorithm::Auto)
//! picks. (Plain loops compiled for AVX-512 kept the sums in registers in some builds and
//! not in others: with debug info they ran 20× slower.)

use super::epilogue::epilogue_segment;
use crate::kernels::gemm::Parallelism;
#[cfg(target_arch = "x86_64")]
use crate::kernels::wide::Avx512Token;
use crate::kernels::wide::Wide;

#[cfg(target_arch = "x86_64")]
mod x86_avx512;

/// Input channels up to which the direct path applies.
pub(super) const MAX_CIN: usize = 4;
/// Output channels per block. With [`VECS`] = 3 a block is 24 vector registers of sums, as
/// 6 × 4 was; the stem's 64 channels then make 8 whole blocks (6 made 11, the last one a
/// third empty, split 6 : 5 between two threads). Measured (throwaway loop, 12 alternations
/// of separate builds): ResNet-18 int8 backbone 2.73 → 2.66 ms, f32 9.35 → 9.15 ms.
const CO: usize = 8;
/// Values per vector.
const LANES: usize = 16;
/// Vectors per block (output columns: `LANES·VECS`).
const VECS: usize = 3;

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

/// How a copy of the loops computes the sums of one block.
trait Kernel: Copy {
    /// The sums of the block's [`CO`] channels for `16·N` output columns whose inputs start
    /// at `base` (plus each tap's offset) in the split input, into `sums[c][..16·N]`: per
    /// tap, in order, `sum += w·x` (`w`: per tap, the block's `CO` weights).
    fn sums<const N: usize>(
        self,
        job: &Job<'_>,
        w: &[[f32; CO]],
        base: usize,
        sums: &mut [[f32; LANES * VECS]; CO],
    );
}

/// Plain loops, a multiply and an add per tap (every CPU).
#[derive(Clone, Copy)]
struct Portable;

impl Kernel for Portable {
    #[inline(always)]
    fn sums<const N: usize>(
        self,
        job: &Job<'_>,
        w: &[[f32; CO]],
        base: usize,
        sums: &mut [[f32; LANES * VECS]; CO],
    ) {
        let mut acc = [[[0.0f32; LANES]; N]; CO];
        for (wt, &off) in w.iter().zip(job.offsets) {
            let from = base + off;
            let (src, _) = job.phases[from..from + N * LANES].as_chunks::<LANES>();
            for (a, &wc) in acc.iter_mut().zip(wt) {
                for (av, xv) in a.iter_mut().zip(src) {
                    for (al, &xl) in av.iter_mut().zip(xv) {
                        *al += wc * xl;
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
}

/// AVX-512 intrinsics, a fused multiply-add per tap; a value exists only with the token.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Avx512(#[allow(dead_code)] Avx512Token);

#[cfg(target_arch = "x86_64")]
impl Kernel for Avx512 {
    #[inline(always)]
    fn sums<const N: usize>(
        self,
        job: &Job<'_>,
        w: &[[f32; CO]],
        base: usize,
        sums: &mut [[f32; LANES * VECS]; CO],
    ) {
        // SAFETY: a value of `Avx512` holds the token of a CPU with AVX512F.
        unsafe { x86_avx512::sums::<N>(job.phases, w, job.offsets, base, sums) }
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
            Wide::Baseline => channels(Portable, &job, w, b, r, o),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected.
            Wide::Avx512(t) => unsafe { channels_avx512(Avx512(t), &job, w, b, r, o) },
        }
    };
    match par {
        Parallelism::Rayon => crate::kernels::par::for_each_chunk(out, CO * p, block),
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
            if j1 > j0 {
                let first = s * j0 + q - pad;
                take_every(s, &src[first..], &mut dst[j0..j1]);
            }
            dst[j1..].fill(0.0);
        }
    };
    match par {
        Parallelism::Rayon => {
            // 16 rows to a task.
            let rows = phases.len() / (s * width);
            let phases = &mut phases[..rows * s * width];
            crate::kernels::par::for_each_chunk(phases, 16 * s * width, |t, rs| {
                for (i, r) in rs.chunks_exact_mut(s * width).enumerate() {
                    row(16 * t + i, r);
                }
            })
        }
        Parallelism::Sequential => phases
            .chunks_exact_mut(s * width)
            .enumerate()
            .for_each(|(i, r)| row(i, r)),
    }
}

/// `dst[j] = src[s·j]` for every `j < dst.len()` (`src` must reach that far), with the
/// strides of the stem and of 1 written out so that they compile to whole-vector moves.
fn take_every(s: usize, src: &[f32], dst: &mut [f32]) {
    fn strided<const S: usize>(src: &[f32], dst: &mut [f32]) {
        let (whole, _) = src.as_chunks::<S>();
        let n = dst.len().min(whole.len());
        for (d, c) in dst[..n].iter_mut().zip(whole) {
            *d = c[0];
        }
        // The last value may have fewer than `S − 1` after it.
        for (j, d) in dst.iter_mut().enumerate().skip(n) {
            *d = src[S * j];
        }
    }
    match s {
        1 => dst.copy_from_slice(&src[..dst.len()]),
        2 => strided::<2>(src, dst),
        _ => {
            for (d, &v) in dst.iter_mut().zip(src.iter().step_by(s)) {
                *d = v;
            }
        }
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

/// [`channels`] with the AVX-512 kernel, its epilogue compiled with AVX-512 too.
///
/// # Safety
/// The CPU must run AVX512F and AVX512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn channels_avx512(
    k: Avx512,
    job: &Job<'_>,
    w: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    channels(k, job, w, bias, residual, out)
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
fn channels<K: Kernel>(
    k: K,
    job: &Job<'_>,
    w: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    let g = job.g;
    let p = g.oh * g.ow;
    let (w, _) = w.as_chunks::<CO>();
    for oy in 0..g.oh {
        for x0 in (0..g.ow).step_by(LANES * VECS) {
            let len = (g.ow - x0).min(LANES * VECS);
            let base = oy * g.stride * g.stride * g.phase_width() + x0;
            let mut sums = [[0.0f32; LANES * VECS]; CO];
            match len.div_ceil(LANES) {
                1 => k.sums::<1>(job, w, base, &mut sums),
                2 => k.sums::<2>(job, w, base, &mut sums),
                3 => k.sums::<3>(job, w, base, &mut sums),
                _ => k.sums::<VECS>(job, w, base, &mut sums),
            }
            for (c, (s, &b)) in sums.iter_mut().zip(bias).enumerate() {
                let at = c * p + oy * g.ow + x0;
                let seg = &mut out[at..at + len];
                seg.copy_from_slice(&s[..len]);
                epilogue_segment(seg, b, residual.map(|r| &r[at..at + len]), job.relu);
            }
        }
    }
}

#[cfg(test)]
mod tests;
