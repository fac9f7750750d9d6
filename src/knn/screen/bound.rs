//! The rigorous error bound of the bf16 screening product and the distance interval it gives
//! (the notation of the [parent module](super)).
//!
//! **Products.** `vdpbf16ps` adds the two exact bf16 products of each pair into the f32
//! accumulator with round-to-nearest-even and flush-to-zero (Intel SDM: two additions per
//! pair). Over `K` elements (`K` = padded width) that is at most `K` rounded additions in a
//! recursive sum, hence (Higham, Thm 3.1, plus one absolute error below 2⁻¹²⁶ per flushed
//! operation, at most 2 per element)
//! `|S − â·b̂| ≤ γ_K Σ|âᵢb̂ᵢ| + 2K·2⁻¹²⁶ ≤ γ_K‖â‖‖b̂‖ + 2K·2⁻¹²⁶`, `γ_K = Ku/(1 − Ku)`,
//! `u = 2⁻²⁴` (Cauchy–Schwarz for the last step). Because the exact internal order of the
//! pair sum on a given CPU is not documented, both terms are doubled:
//! `E = 2γ_K(1 + 10⁻⁹)‖â‖‖b̂‖ + 4K·2⁻¹²⁶`. No partial sum can overflow: screening is only
//! used while `max‖â‖·max‖b̂‖ ≤ 2¹⁰⁰`.
//!
//! **AMX.** `tdpbf16ps` does not follow the SDM's pseudo-code bit for bit (on Emerald Rapids
//! its sums differ from every fixed order of single-rounding additions, and its error is
//! smaller than a sequential sum's), and its internal order is undocumented. The bound above
//! does not depend on the order: Higham's γ bound holds for any summation tree with at most
//! `K` rounded additions, and the doubled `γ_K` covers a relative error up to `2u` per
//! addition, that is any rounding mode, including truncation; the products of two bf16 are
//! exact in f32, and the absolute term covers the flushing of subnormal results. What the
//! screen assumes of the hardware is therefore only that each tile product is an f32 sum of the
//! exact pair products with at most one rounding per addition — checked against exact f64 sums
//! by the tests on every AMX machine they run on.
//!
//! **Interval.** `D = ‖â‖² + ‖b̂‖² − 2S` (f64) satisfies `|D − ‖â − b̂‖²| ≤ δ` with
//! `δ = 2E + 10⁻¹²(‖â‖² + ‖b̂‖² + 2|S|)` (the last term covers the f64 rounding of the norms
//! and of `D`). Hence the true distance lies in `[L, U]` with
//! `L = √max(0, D − δ)·(1 − 10⁻¹²) − ε_a − ε_b` and `U = √(D + δ)·(1 + 10⁻¹²) + ε_a + ε_b`
//! (the factors absorb the f64 rounding of the square roots and sums).
//!
//! A cheap f32 prefilter ([`prefilter_reference`], vectorised in the kernel) runs on every
//! product first; it is looser than the f64 test above by a relative margin of 10⁻⁶ (about 17
//! times the f32 rounding error of its few operations), so it never drops a candidate; only
//! rows passing it get the exact f64 test.

use super::RowMeta;

/// Relative slack of the f32 prefilter.
pub(super) const PREFILTER_SLACK: f64 = 1e-6;
/// Largest `max‖â‖·max‖b̂‖` for which the f32 accumulation cannot overflow.
pub(super) const MAX_NORM_PRODUCT: f64 = 1.2676506002282294e30; // 2^100

/// Coefficients of the product error bound `E = rel·‖â‖‖b̂‖ + abs`.
#[derive(Debug, Clone, Copy)]
pub(super) struct BoundCoef {
    pub rel: f64,
    pub abs: f64,
}

impl BoundCoef {
    /// Bound for `k_elems` accumulated elements (`None` if `k_elems·u ≥ 1/2`).
    pub(super) fn new(k_elems: usize) -> Option<Self> {
        let u = 2f64.powi(-24);
        let ku = k_elems as f64 * u;
        if ku >= 0.5 {
            return None;
        }
        let gamma = ku / (1.0 - ku);
        Some(Self {
            rel: 2.0 * gamma * (1.0 + 1e-9),
            abs: 4.0 * k_elems as f64 * 2f64.powi(-126),
        })
    }

    /// `[L, U]` enclosing the true distance `‖a − b‖` (not squared) from the screening product
    /// `s` of the two rows (see the module documentation).
    #[inline]
    pub(super) fn interval(&self, s: f32, a: &RowMeta, b: &RowMeta) -> (f64, f64) {
        let s = f64::from(s);
        let e = self.rel * a.norm * b.norm + self.abs;
        let d = a.sq + b.sq - 2.0 * s;
        let delta = 2.0 * e + 1e-12 * (a.sq + b.sq + 2.0 * s.abs());
        let eps = a.eps + b.eps;
        let lo = (d - delta).max(0.0).sqrt() * (1.0 - 1e-12) - eps;
        let hi = (d + delta).max(0.0).sqrt() * (1.0 + 1e-12) + eps;
        (lo, hi)
    }

    /// `(c1, c2)` of the f32 prefilter margin `c1·(‖â‖ + ‖b̂‖)² + c2`.
    pub(super) fn prefilter_coefs(&self) -> (f32, f32) {
        (
            (self.rel + 4e-12 + PREFILTER_SLACK) as f32,
            (4.0 * self.abs + 1e-30) as f32,
        )
    }
}

/// Scalar form of the prefilter: `true` when `[L, U]` of the pair may satisfy `L ≤ τ`.
///
/// `L ≤ τ` implies `D − δ ≤ (τ + ε_a + ε_b)²(1 + 3·10⁻¹²)`, and `δ ≤ (rel + 4·10⁻¹²)(‖â‖ +
/// ‖b̂‖)² + 4·abs` (as `2‖â‖‖b̂‖ ≤ (‖â‖ + ‖b̂‖)²` and `|S| ≤ (1 + γ)‖â‖‖b̂‖ + abs`). The test
/// below is that inequality with `τ + ε_a` inflated by `1 + 10⁻⁶` and `10⁻⁶(‖â‖ + ‖b̂‖)²`
/// added, which exceeds the f32 rounding of `D` (≤ 3u(‖â‖² + ‖b̂‖² + 2|S|)) and of the
/// right-hand side.
pub(super) fn prefilter_reference(
    s: f32,
    a: &RowMeta,
    b: &RowMeta,
    tau: f64,
    coef: &BoundCoef,
) -> bool {
    let (c1, c2) = coef.prefilter_coefs();
    let t1 = ((tau + a.eps) * (1.0 + PREFILTER_SLACK)) as f32;
    let d = (a.sq as f32 + b.sq as f32) + -2.0 * s;
    let t = t1 + b.eps as f32;
    let m = a.norm as f32 + b.norm as f32;
    d <= t * t + (m * m * c1 + c2)
}
