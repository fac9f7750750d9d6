//! The selection distance `Δ(x, y) = sqrt(Σ_j (x_j − y_j)²)` with a fixed summation order.
//!
//! The sum runs in `LANES` independent partial sums (element `j` of every full chunk of
//! `LANES` elements goes to lane `j`), the elements after the last full chunk go to a separate
//! `tail` sum (left to right), the lanes are then combined by a fixed pairwise tree
//! (`l += l + width` for `width = 8, 4, 2, 1`) and the result is `lanes[0] + tail`. Every
//! operation is a plain IEEE `f32` subtract, multiply or add (never fused), so the value is the
//! same on every CPU and with every instruction width the compiler picks: the 16 lanes map onto
//! four SSE registers, two AVX registers or one AVX-512 register without changing a single
//! rounding.
//!
//! [`sq_dist_many`] evaluates several distances from one row at once (independent
//! accumulators, so the additions pipeline), each with exactly the order of [`sq_dist`].

/// Lanes of the distance accumulator.
pub(super) const LANES: usize = 16;

/// Squared distances from `x` to each of the `C` rows `ys`, each summed in the fixed order
/// described in the module documentation. All slices must have the length of `x`.
#[inline(always)]
pub(super) fn sq_dist_many<const C: usize>(x: &[f32], ys: [&[f32]; C]) -> [f32; C] {
    let n = x.len();
    let full = n - n % LANES;
    let mut acc = [[0.0f32; LANES]; C];
    let mut tail = [0.0f32; C];
    for c in 0..C {
        let y = &ys[c][..n];
        for j in full..n {
            let t = x[j] - y[j];
            tail[c] += t * t;
        }
    }
    let mut start = 0;
    while start < full {
        let xs = &x[start..start + LANES];
        for c in 0..C {
            let ys = &ys[c][start..start + LANES];
            for l in 0..LANES {
                let t = xs[l] - ys[l];
                acc[c][l] += t * t;
            }
        }
        start += LANES;
    }
    let mut out = [0.0f32; C];
    for c in 0..C {
        let a = &mut acc[c];
        let mut width = LANES / 2;
        while width > 0 {
            for l in 0..width {
                a[l] += a[l + width];
            }
            width /= 2;
        }
        out[c] = a[0] + tail[c];
    }
    out
}

/// Squared Euclidean distance with the fixed summation order (see the module documentation).
#[inline(always)]
pub(super) fn sq_dist(x: &[f32], y: &[f32]) -> f32 {
    sq_dist_many(x, [y])[0]
}

/// Euclidean distance `Δ(x, y)` used by every sampler.
#[inline(always)]
pub(super) fn dist(x: &[f32], y: &[f32]) -> f32 {
    sq_dist(x, y).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The summation order spelled out one element at a time, independently of the kernel.
    fn reference_sq_dist(x: &[f32], y: &[f32]) -> f32 {
        let n = x.len();
        let full = n - n % LANES;
        let mut lanes = [0.0f32; LANES];
        for j in 0..full {
            let t = x[j] - y[j];
            lanes[j % LANES] += t * t;
        }
        let mut tail = 0.0f32;
        for j in full..n {
            let t = x[j] - y[j];
            tail += t * t;
        }
        for width in [8, 4, 2, 1] {
            for l in 0..width {
                lanes[l] += lanes[l + width];
            }
        }
        lanes[0] + tail
    }

    #[test]
    fn sq_dist_matches_plain_sum_on_integers() {
        // Integer data: every partial sum is exact, so any summation order agrees.
        for len in [1usize, 5, 16, 17, 33, 128, 130] {
            let x: Vec<f32> = (0..len).map(|i| (i % 7) as f32 - 3.0).collect();
            let y: Vec<f32> = (0..len).map(|i| (i % 5) as f32).collect();
            let plain: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
            assert_eq!(sq_dist(&x, &y), plain, "len {len}");
        }
    }

    #[test]
    fn kernels_follow_the_documented_order_bit_for_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for len in [1usize, 3, 15, 16, 17, 31, 32, 100, 128, 129, 1536] {
            let x: Vec<f32> = (0..len).map(|_| rng.random_range(-3.0f32..3.0)).collect();
            let ys: Vec<Vec<f32>> = (0..4)
                .map(|_| (0..len).map(|_| rng.random_range(-3.0f32..3.0)).collect())
                .collect();
            let want: Vec<f32> = ys.iter().map(|y| reference_sq_dist(&x, y)).collect();
            assert_eq!(
                sq_dist(&x, &ys[0]).to_bits(),
                want[0].to_bits(),
                "len {len}"
            );
            let four = sq_dist_many(&x, [&ys[0], &ys[1], &ys[2], &ys[3]]);
            for c in 0..4 {
                assert_eq!(four[c].to_bits(), want[c].to_bits(), "len {len}, c {c}");
            }
            assert_eq!(dist(&x, &x), 0.0);
        }
    }
}
