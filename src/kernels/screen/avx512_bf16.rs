//! The AVX-512 BF16 micro-kernel of the screening pass, its vectorised prefilter, and the
//! AVX-512 copy of the row rounding.
//!
//! The functions are `unsafe` only because of `#[target_feature]`: callers must have checked
//! that the CPU has the features (the [`Bf16Screen`](super::Bf16Screen) token for the first
//! two, `avx512f` for the rounding).

use std::arch::x86_64::{
    __m512, __m512bh, __m512i, _mm512_add_ps, _mm512_cmp_ps_mask, _mm512_dpbf16_ps,
    _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_loadu_si512, _mm512_mul_ps, _mm512_set1_epi32,
    _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps, _CMP_LE_OQ,
};

use super::{round_row_lanes, PanelMeta, QueryScalars, RowMeta, PANEL, QGROUP};

/// Reinterprets 32 packed bf16 values.
#[inline(always)]
fn as_bh(v: __m512i) -> __m512bh {
    // SAFETY: both types are plain 64-byte SIMD vectors for which every bit pattern is valid.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// Screening products of one panel of `PANEL = 32` bank rows with one group of `QGROUP = 8`
/// queries: `out[j][l] = Σ_t â_j[2t]·b̂_l[2t] + â_j[2t+1]·b̂_l[2t+1]`, accumulated in f32 by
/// `vdpbf16ps` in increasing `t`.
///
/// `panel` holds `k2` pair-steps of 32 rows × 2 bf16 (`panel[(t·32 + l)·2 + h]`), `q` holds
/// `k2` steps of 8 queries × 1 pair packed in a `u32` (`q[t·8 + j]`, low half = even element).
///
/// # Safety
/// The CPU must support `avx512f` and `avx512bf16`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn dots_panel(
    panel: &[u16],
    q: &[u32],
    k2: usize,
    out: &mut [[f32; PANEL]; QGROUP],
) {
    assert!(panel.len() >= k2 * 2 * PANEL && q.len() >= k2 * QGROUP);
    let pp = panel.as_ptr();
    let qp = q.as_ptr();
    let mut acc = [[_mm512_setzero_ps(); 2]; QGROUP];
    for t in 0..k2 {
        // SAFETY: t < k2 and the assert above give `t·64 + 64 ≤ panel.len()`; unaligned loads.
        let (b0, b1) = unsafe {
            let p = pp.add(t * 2 * PANEL);
            (
                as_bh(_mm512_loadu_si512(p.cast::<__m512i>())),
                as_bh(_mm512_loadu_si512(p.add(PANEL).cast::<__m512i>())),
            )
        };
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: t·8 + j < k2·8 ≤ q.len() (assert above).
            let pair = unsafe { *qp.add(t * QGROUP + j) };
            let qa = as_bh(_mm512_set1_epi32(pair as i32));
            a[0] = _mm512_dpbf16_ps(a[0], qa, b0);
            a[1] = _mm512_dpbf16_ps(a[1], qa, b1);
        }
    }
    for (o, a) in out.iter_mut().zip(acc.iter()) {
        // SAFETY: each `o` holds 32 f32, written as two unaligned 16-lane stores.
        unsafe {
            _mm512_storeu_ps(o.as_mut_ptr(), a[0]);
            _mm512_storeu_ps(o.as_mut_ptr().add(16), a[1]);
        }
    }
}

/// Bit `l` set when bank row `l` of the panel may be a candidate of the query: the
/// vectorised form of `knn::screen::bound::prefilter_reference`.
///
/// # Safety
/// The CPU must support `avx512f`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn prefilter_mask(
    s: &[f32; PANEL],
    m: &PanelMeta,
    qs: QueryScalars,
    c1: f32,
    c2: f32,
) -> u32 {
    let mut mask = 0u32;
    let (na, an, t1) = (
        _mm512_set1_ps(qs.na),
        _mm512_set1_ps(qs.an),
        _mm512_set1_ps(qs.t1),
    );
    let (m2, vc1, vc2) = (_mm512_set1_ps(-2.0), _mm512_set1_ps(c1), _mm512_set1_ps(c2));
    for h in 0..2 {
        // SAFETY: every array holds 32 f32; lanes 16h .. 16h + 16 are in bounds.
        let (sv, nb, bn, eb): (__m512, __m512, __m512, __m512) = unsafe {
            (
                _mm512_loadu_ps(s.as_ptr().add(16 * h)),
                _mm512_loadu_ps(m.sq.as_ptr().add(16 * h)),
                _mm512_loadu_ps(m.norm.as_ptr().add(16 * h)),
                _mm512_loadu_ps(m.eps.as_ptr().add(16 * h)),
            )
        };
        let d = _mm512_fmadd_ps(sv, m2, _mm512_add_ps(na, nb));
        let t = _mm512_add_ps(t1, eb);
        let mm = _mm512_add_ps(an, bn);
        let rhs = _mm512_fmadd_ps(t, t, _mm512_fmadd_ps(_mm512_mul_ps(mm, mm), vc1, vc2));
        let k = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(d, rhs);
        mask |= u32::from(k) << (16 * h);
    }
    mask
}

/// [`round_row_lanes`] compiled for AVX-512 (same results, vectorised).
///
/// # Safety
/// The CPU must support `avx512f`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn round_row(x: &[f32], mu: &[f64], out: &mut [u16]) -> RowMeta {
    round_row_lanes(x, mu, out)
}
