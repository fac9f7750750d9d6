//! The epilogues of the int8 convolution: the exact sums dequantised, with bias, residual and
//! ReLU, into f32 ([`Dequant`]) or quantised again for the next convolution ([`Requant`]).

use std::sync::atomic::{AtomicBool, Ordering};

use super::Residual;
use crate::kernels::amx::direct::PositionEpilogue;
use crate::kernels::amx::{prefetch_read, Emit, Handoff, COLS};
use crate::kernels::bf16::from_bf16;
use crate::kernels::int8::quantize_u8;

/// The epilogue of a call whose input step is `x_step` (see the module documentation of the
/// int8 convolution): the exact sums dequantised (`dequant[c] = s_x·s_w[c]`, written here),
/// plus bias (and residual), then ReLU if asked, as each tile of sums is finished, while it is
/// in cache. Without a zero point (`ZP = false`); set [`Dequant::offset`] and use `ZP = true`
/// for one.
pub(super) fn epilogue<'a, const ZP: bool>(
    dequant: &'a mut Vec<f32>,
    w_step: &[f32],
    x_step: f32,
    bias: &'a [f32],
    residual: Option<Residual<'a>>,
    relu: bool,
    p: usize,
) -> Dequant<'a, ZP> {
    dequant_steps(dequant, w_step, x_step);
    Dequant {
        dequant,
        offset: &[],
        bias,
        residual,
        relu,
        p,
    }
}

/// `dequant[c] = x_step·w_step[c]`: the step of each output channel's sums.
pub(super) fn dequant_steps(dequant: &mut Vec<f32>, w_step: &[f32], x_step: f32) {
    dequant.clear();
    dequant.extend(w_step.iter().map(|&s| x_step * s));
}

/// The epilogue of [`epilogue`]. A type rather than a closure so that its loop inlines into
/// (and vectorises with) the AVX-512 copy of the AMX driver's loop. With `ZP`, the sums of
/// row `c` are first reduced by `offset[c]` (exactly, in `i32`); without, there is no
/// subtraction in the loop.
pub(super) struct Dequant<'a, const ZP: bool> {
    dequant: &'a [f32],
    /// `z·Σ_j q_w[c, j]` per output channel (read only with `ZP`).
    pub(super) offset: &'a [i32],
    bias: &'a [f32],
    residual: Option<Residual<'a>>,
    relu: bool,
    p: usize,
}

impl<const ZP: bool> Dequant<'_, ZP> {
    /// `put(o[i], y)` for the value `y` of each sum `sums[i]` of row `c` from column `j0`.
    #[inline(always)]
    fn each<T>(
        &self,
        c: usize,
        j0: usize,
        sums: &[i32],
        o: &mut [T],
        mut put: impl FnMut(&mut T, f32),
    ) {
        let (s, b, relu) = (self.dequant[c], self.bias[c], self.relu);
        // `a − off = Σ_j q_w[c, j]·(q_x − z)` is at most 255·127·MAX_DEPTH in size, like `a`
        // and `off`: no overflow.
        let off = if ZP { self.offset[c] } else { 0 };
        let act = |v: f32| if relu { v.max(0.0) } else { v };
        match self.residual {
            Some(Residual::F32(r)) => {
                let r = &r[c * self.p + j0..][..o.len()];
                for ((o, &a), &r) in o.iter_mut().zip(sums).zip(r) {
                    put(o, act((a - off) as f32 * s + b + r));
                }
            }
            Some(Residual::Bytes { q, step }) => {
                let r = &q[c * self.p + j0..][..o.len()];
                for ((o, &a), &r) in o.iter_mut().zip(sums).zip(r) {
                    put(o, act((a - off) as f32 * s + b + f32::from(r) * step));
                }
            }
            Some(Residual::Bf16(bits)) => {
                let r = &bits[c * self.p + j0..][..o.len()];
                for ((o, &a), &r) in o.iter_mut().zip(sums).zip(r) {
                    put(o, act((a - off) as f32 * s + b + from_bf16(r)));
                }
            }
            None => {
                for (o, &a) in o.iter_mut().zip(sums) {
                    put(o, act((a - off) as f32 * s + b));
                }
            }
        }
    }
}

impl<const ZP: bool> Dequant<'_, ZP> {
    /// Asks for the residual of row `c`, columns `j0 .. j0 + len` (see [`Emit::prefetch`]).
    #[inline(always)]
    fn prefetch_residual(&self, c: usize, j0: usize, len: usize) {
        match self.residual {
            Some(Residual::F32(r)) => prefetch_read(&r[c * self.p + j0..][..len]),
            Some(Residual::Bytes { q, .. }) => prefetch_read(&q[c * self.p + j0..][..len]),
            Some(Residual::Bf16(b)) => prefetch_read(&b[c * self.p + j0..][..len]),
            None => {}
        }
    }
}

impl<const ZP: bool> Emit<i32, f32> for Dequant<'_, ZP> {
    #[inline(always)]
    fn emit(&self, c: usize, j0: usize, sums: &[i32], o: &mut [f32]) {
        self.each(c, j0, sums, o, |o, y| *o = y);
    }

    #[inline(always)]
    fn prefetch(&self, c: usize, j0: usize, len: usize) {
        self.prefetch_residual(c, j0, len);
    }
}

/// The epilogue of a quantised output: the value of [`Dequant`], quantised for the next
/// convolution (`quantize_u8(y, 255 / limit)`); a value above `limit` sets `over` (the
/// output is then computed again in f32, where the next convolution widens its range).
pub(super) struct Requant<'a> {
    pub(super) dequant: Dequant<'a, false>,
    pub(super) scale: f32,
    pub(super) limit: f32,
    pub(super) over: &'a AtomicBool,
}

impl Emit<i32, u8> for Requant<'_> {
    #[inline(always)]
    fn prefetch(&self, c: usize, j0: usize, len: usize) {
        self.dequant.prefetch_residual(c, j0, len);
    }

    #[inline(always)]
    fn emit(&self, c: usize, j0: usize, sums: &[i32], o: &mut [u8]) {
        let (scale, limit) = (self.scale, self.limit);
        let mut over = false;
        self.dequant.each(c, j0, sums, o, |o, y| {
            over |= y > limit;
            *o = quantize_u8(y, scale);
        });
        if over {
            self.over.store(true, Ordering::Relaxed);
        }
    }
}

/// The bytes a following 1×1 convolution makes of an f32 output (`quantize_u8(y, scale)`,
/// `scale = 255 / limit` for its calibrated range `limit`), for [`Handoff`]; a value above
/// `limit` sets `over` (the bytes are then not used, and that convolution quantises the f32
/// output itself, widening its range).
pub(super) struct PanelBytes<'a> {
    pub(super) scale: f32,
    pub(super) limit: f32,
    pub(super) over: &'a AtomicBool,
}

impl Handoff<f32> for PanelBytes<'_> {
    type Elem = u8;

    #[inline(always)]
    fn values(&self, row: &[f32], bytes: &mut [u8]) {
        let (scale, limit) = (self.scale, self.limit);
        let mut over = false;
        for (b, &y) in bytes.iter_mut().zip(row) {
            over |= y > limit;
            *b = quantize_u8(y, scale);
        }
        if over {
            self.over.store(true, Ordering::Relaxed);
        }
    }
}

/// The bytes of a [`Requant`] output as they are, for [`Handoff`]: the output quantised for
/// the next convolution is also its panels ([`QOutput::Bytes`]).
///
/// [`QOutput::Bytes`]: super::QOutput::Bytes
pub(super) struct SameBytes;

impl Handoff<u8> for SameBytes {
    type Elem = u8;

    #[inline(always)]
    fn values(&self, row: &[u8], bytes: &mut [u8]) {
        bytes.copy_from_slice(row);
    }
}

/// Position by position for a pooled stem ([`amx::direct::conv_pooled`]): the values of
/// [`Dequant::emit`], whose expression this repeats. Only without a residual.
///
/// [`amx::direct::conv_pooled`]: crate::kernels::amx::direct::conv_pooled
impl<const ZP: bool> PositionEpilogue<i32> for Dequant<'_, ZP> {
    type Pair = ([i32; COLS], [f32; COLS], [f32; COLS]);

    #[inline(always)]
    fn pair(&self, c0: usize, valid: usize) -> Self::Pair {
        assert!(self.residual.is_none(), "a residual position by position");
        let (mut off, mut step, mut bias) = ([0; COLS], [0.0; COLS], [0.0; COLS]);
        if ZP {
            off[..valid].copy_from_slice(&self.offset[c0..c0 + valid]);
        }
        step[..valid].copy_from_slice(&self.dequant[c0..c0 + valid]);
        bias[..valid].copy_from_slice(&self.bias[c0..c0 + valid]);
        (off, step, bias)
    }

    #[inline(always)]
    fn values(&self, (off, step, bias): &Self::Pair, sums: &[i32; COLS], out: &mut [f32; COLS]) {
        for j in 0..COLS {
            let y = (sums[j] - off[j]) as f32 * step[j] + bias[j];
            out[j] = if self.relu { y.max(0.0) } else { y };
        }
    }
}
