//! The epilogue of the bf16 convolution: bias, residual (f32, bytes or bf16 bits) and ReLU
//! on each finished segment of sums, in f32 ([`Finish`]) or rounded to bf16 bits
//! ([`Rounded`]).

use super::super::epilogue::{epilogue_row, epilogue_segment};
use super::super::quantized::Residual;
use crate::kernels::amx::{self, direct};
use crate::kernels::bf16::{from_bf16, to_bf16, RowMap};

/// Bias, residual and ReLU on a finished segment of one output channel: a type with
/// `#[inline(always)]` methods, so that it compiles into the AVX-512 copies of the AMX loops
/// (as a closure it was a call to 128-bit code, and the sums were copied out before it: 7 %
/// of a bf16 prediction).
pub(super) struct Finish<'a> {
    pub(super) bias: &'a [f32],
    pub(super) residual: Option<Residual<'a>>,
    pub(super) relu: bool,
    /// Output pixels per channel.
    pub(super) p: usize,
}

impl Finish<'_> {
    /// `put(o[i], y)` for the value `y` of each sum `sums[i]` of row `c` from column `j0`,
    /// with a residual of bytes or bits (an f32 one goes through [`epilogue_row`]).
    #[inline(always)]
    fn each<T>(
        &self,
        c: usize,
        j0: usize,
        sums: &[f32],
        o: &mut [T],
        mut put: impl FnMut(&mut T, f32),
    ) {
        let (b, relu) = (self.bias[c], self.relu);
        let act = |v: f32| if relu { v.max(0.0) } else { v };
        let at = c * self.p + j0;
        match self.residual {
            None => {
                for (o, &s) in o.iter_mut().zip(sums) {
                    put(o, act(s + b));
                }
            }
            Some(Residual::F32(r)) => {
                for ((o, &s), &r) in o.iter_mut().zip(sums).zip(&r[at..][..sums.len()]) {
                    put(o, act(s + b + r));
                }
            }
            Some(Residual::Bf16(r)) => {
                for ((o, &s), &r) in o.iter_mut().zip(sums).zip(&r[at..][..sums.len()]) {
                    put(o, act(s + b + from_bf16(r)));
                }
            }
            Some(Residual::Bytes { q, step }) => {
                for ((o, &s), &r) in o.iter_mut().zip(sums).zip(&q[at..][..sums.len()]) {
                    put(o, act(s + b + f32::from(r) * step));
                }
            }
        }
    }
}

impl RowMap for Finish<'_> {
    #[inline(always)]
    fn map(&self, c: usize, j0: usize, o: &mut [f32]) {
        match self.residual {
            None => epilogue_segment(o, self.bias[c], None, self.relu),
            Some(Residual::F32(r)) => {
                let r = &r[c * self.p + j0..][..o.len()];
                epilogue_segment(o, self.bias[c], Some(r), self.relu);
            }
            Some(_) => {
                // (The sums are the output: read each before it is written.)
                for i in 0..o.len() {
                    let s = [o[i]];
                    self.each(c, j0 + i, &s, &mut o[i..i + 1], |o, y| *o = y);
                }
            }
        }
    }

    /// In one pass from the sums, without copying them out first.
    #[inline(always)]
    fn map_from(&self, c: usize, j0: usize, sums: &[f32], o: &mut [f32]) {
        match self.residual {
            None => epilogue_row(o, sums, self.bias[c], None, self.relu),
            Some(Residual::F32(r)) => {
                let r = &r[c * self.p + j0..][..o.len()];
                epilogue_row(o, sums, self.bias[c], Some(r), self.relu);
            }
            Some(_) => self.each(c, j0, sums, o, |o, y| *o = y),
        }
    }
}

/// [`Finish`] rounded to bf16 bits ([`QOutput::Bf16`]).
pub(super) struct Rounded<'a>(pub(super) &'a Finish<'a>);

impl amx::Emit<f32, u16> for Rounded<'_> {
    #[inline(always)]
    fn emit(&self, c: usize, j0: usize, sums: &[f32], o: &mut [u16]) {
        self.0.each(c, j0, sums, o, |o, y| *o = to_bf16(y));
    }

    #[inline(always)]
    fn prefetch(&self, c: usize, j0: usize, len: usize) {
        amx::Emit::<f32, f32>::prefetch(self.0, c, j0, len);
    }
}

impl amx::Emit<f32, f32> for Finish<'_> {
    #[inline(always)]
    fn emit(&self, c: usize, j0: usize, sums: &[f32], o: &mut [f32]) {
        self.map_from(c, j0, sums, o);
    }

    #[inline(always)]
    fn prefetch(&self, c: usize, j0: usize, len: usize) {
        let at = c * self.p + j0;
        match self.residual {
            Some(Residual::F32(r)) => amx::prefetch_read(&r[at..][..len]),
            Some(Residual::Bf16(r)) => amx::prefetch_read(&r[at..][..len]),
            Some(Residual::Bytes { q, .. }) => amx::prefetch_read(&q[at..][..len]),
            None => {}
        }
    }
}

/// Position by position for a pooled stem ([`direct::conv_pooled`]): the values of
/// [`epilogue_row`] without a residual, whose expressions this repeats.
impl direct::PositionEpilogue<f32> for Finish<'_> {
    type Pair = [f32; amx::COLS];

    #[inline(always)]
    fn pair(&self, c0: usize, valid: usize) -> Self::Pair {
        assert!(self.residual.is_none(), "a residual position by position");
        let mut bias = [0.0; amx::COLS];
        bias[..valid].copy_from_slice(&self.bias[c0..c0 + valid]);
        bias
    }

    #[inline(always)]
    fn values(&self, bias: &Self::Pair, sums: &[f32; amx::COLS], out: &mut [f32; amx::COLS]) {
        let relu = self.relu;
        for j in 0..amx::COLS {
            let y = sums[j] + bias[j];
            out[j] = if relu { y.max(0.0) } else { y };
        }
    }
}
