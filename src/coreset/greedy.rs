//! Farthest-first traversal (greedy k-center), the hot loop of coreset selection.
//!
//! The key array `a` holds, for every row, its current distance to the nearest emitted row (or
//! the initial cap of the approximate sampler). One *pass* folds the distance to the newly emitted
//! row into `a` and finds the next farthest row. Passes run in parallel over fixed blocks of
//! rows; every block reports its `(value, index)` maximum and the blocks are merged with a total
//! order (larger value first, then lower index), so the result is the same whatever the number
//! of threads and whatever order the blocks finish in.

use ndarray::ArrayView2;
use rayon::prelude::*;

use crate::{Error, Result};

/// Rows per parallel block of a pass.
const BLOCK_ROWS: usize = 2048;

/// Key of a row that has been emitted: below every distance, so it is never chosen again and
/// `min` with a distance keeps it.
const EMITTED: f32 = -1.0;

/// Lanes of the distance accumulator (a fixed summation order, vectorisable without fast-math).
const LANES: usize = 16;

/// Squared Euclidean distance with a fixed summation order: `LANES` independent partial sums,
/// the tail added to a separate sum, then a fixed pairwise reduction of the lanes.
#[inline(always)]
fn sq_dist(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let xc = x.chunks_exact(LANES);
    let yc = y.chunks_exact(LANES);
    let mut tail = 0.0f32;
    for (a, b) in xc.remainder().iter().zip(yc.remainder()) {
        let t = a - b;
        tail += t * t;
    }
    for (xs, ys) in xc.zip(yc) {
        for l in 0..LANES {
            let t = xs[l] - ys[l];
            acc[l] += t * t;
        }
    }
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    acc[0] + tail
}

/// Euclidean distance `Δ(x, y)` used by every sampler (see the module documentation).
#[inline(always)]
fn dist(x: &[f32], y: &[f32]) -> f32 {
    sq_dist(x, y).sqrt()
}

/// The better of two `(value, index)` candidates: larger value, then lower index. A total order
/// on finite values, hence associative and commutative.
#[inline]
fn better(p: (f32, usize), q: (f32, usize)) -> (f32, usize) {
    if q.0 > p.0 || (q.0 == p.0 && q.1 < p.1) {
        q
    } else {
        p
    }
}

const NO_CANDIDATE: (f32, usize) = (f32::NEG_INFINITY, usize::MAX);

/// Bank rows as one contiguous slice with row length `d`.
struct Rows<'a> {
    data: &'a [f32],
    n: usize,
    d: usize,
}

impl<'a> Rows<'a> {
    fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.d..(i + 1) * self.d]
    }
}

/// One pass: `a_i ← min(a_i, Δ(z_i, c))` for every row, returning the farthest row afterwards.
fn fold_center(z: &Rows, c: &[f32], a: &mut [f32]) -> (f32, usize) {
    let d = z.d;
    a.par_chunks_mut(BLOCK_ROWS)
        .zip(z.data.par_chunks(BLOCK_ROWS * d))
        .enumerate()
        .map(|(b, (ab, zb))| {
            let base = b * BLOCK_ROWS;
            let mut best = NO_CANDIDATE;
            for (i, (ai, row)) in ab.iter_mut().zip(zb.chunks_exact(d)).enumerate() {
                let delta = dist(row, c);
                if delta < *ai {
                    *ai = delta;
                }
                if *ai > best.0 {
                    best = (*ai, base + i);
                }
            }
            best
        })
        .reduce(|| NO_CANDIDATE, better)
}

/// Initial keys of the approximate sampler: `a_i = (Σ_j Δ(z_i, s_j)) / n0`, the sum in the given
/// start order, in `f32`. Returns the farthest row.
fn mean_to_starts(z: &Rows, starts: &[f32], n0: usize, a: &mut [f32]) -> (f32, usize) {
    let d = z.d;
    let count = n0 as f32;
    a.par_chunks_mut(BLOCK_ROWS)
        .zip(z.data.par_chunks(BLOCK_ROWS * d))
        .enumerate()
        .map(|(b, (ab, zb))| {
            let base = b * BLOCK_ROWS;
            let mut best = NO_CANDIDATE;
            for (i, (ai, row)) in ab.iter_mut().zip(zb.chunks_exact(d)).enumerate() {
                let mut sum = 0.0f32;
                for s in starts.chunks_exact(d) {
                    sum += dist(row, s);
                }
                *ai = sum / count;
                if *ai > best.0 {
                    best = (*ai, base + i);
                }
            }
            best
        })
        .reduce(|| NO_CANDIDATE, better)
}

/// Checks the projected bank and makes it contiguous.
fn rows_of<'a>(z: &'a ndarray::CowArray<'a, f32, ndarray::Ix2>, what: &str) -> Result<Rows<'a>> {
    let (n, d) = z.dim();
    if n == 0 {
        return Err(Error::input(format!("{what}: the bank is empty")));
    }
    if d == 0 {
        return Err(Error::input(format!(
            "{what}: the bank has rows of length 0"
        )));
    }
    let data = z
        .as_slice()
        .ok_or_else(|| Error::input(format!("{what}: the bank is not contiguous")))?;
    Ok(Rows { data, n, d })
}

fn check_k(k: usize, n: usize, what: &str) -> Result<()> {
    if k > n {
        return Err(Error::param(
            "coreset count",
            format!("{what}: asks for {k} rows but the bank has only {n}"),
        ));
    }
    Ok(())
}

/// Farthest-first traversal after `first`, which is emitted first.
fn traverse(z: &Rows, a: &mut [f32], mut next: usize, k: usize, out: &mut Vec<usize>) {
    while out.len() < k {
        out.push(next);
        a[next] = EMITTED;
        if out.len() == k {
            break;
        }
        next = fold_center(z, z.row(next), a).1;
    }
}

/// Greedy k-center with a given first row: emits `first`, then repeatedly the row farthest
/// (Euclidean, ties → lowest index) from all rows emitted so far, until `k` rows are emitted.
///
/// `z` is the (projected) bank, `N × d`. The result is a prefix-closed sequence: the output for
/// `k` is the first `k` entries of the output for any larger `k`. [`select`](super::select) with
/// [`Sampler::Greedy`](super::Sampler::Greedy) calls this with a seeded random `first`.
///
/// # Errors
/// [`Error::InvalidInput`] for an empty bank, rows of length 0, or `first ≥ N`;
/// [`Error::InvalidParameter`] when `k > N`.
pub fn greedy_from(z: ArrayView2<f32>, first: usize, k: usize) -> Result<Vec<usize>> {
    let what = "greedy coreset";
    let z = z.as_standard_layout();
    let rows = rows_of(&z, what)?;
    if first >= rows.n {
        return Err(Error::input(format!(
            "{what}: first row {first} is out of range for a bank of {} rows",
            rows.n
        )));
    }
    check_k(k, rows.n, what)?;
    let mut out = Vec::with_capacity(k);
    if k == 0 {
        return Ok(out);
    }
    let mut a = vec![f32::INFINITY; rows.n];
    traverse(&rows, &mut a, first, k, &mut out);
    Ok(out)
}

/// The original implementation's approximate greedy sampler with given start rows: the initial
/// key of row `i` is `a_i = (Σ_j Δ(z_i, z_{starts[j]})) / starts.len()` (summed in `f32` in the
/// order of `starts`); the starts are **not** emitted; then `k` times: emit the row with the
/// largest key (ties → lowest index) and lower every key to the distance to that row if smaller.
///
/// # Errors
/// [`Error::InvalidInput`] for an empty bank, rows of length 0, no starts, or a start `≥ N`;
/// [`Error::InvalidParameter`] when `k > N`.
pub fn approximate_greedy_from(
    z: ArrayView2<f32>,
    starts: &[usize],
    k: usize,
) -> Result<Vec<usize>> {
    let what = "approximate greedy coreset";
    let z = z.as_standard_layout();
    let rows = rows_of(&z, what)?;
    if starts.is_empty() {
        return Err(Error::input(format!(
            "{what}: needs at least one start row"
        )));
    }
    if let Some(&s) = starts.iter().find(|&&s| s >= rows.n) {
        return Err(Error::input(format!(
            "{what}: start row {s} is out of range for a bank of {} rows",
            rows.n
        )));
    }
    check_k(k, rows.n, what)?;
    let mut out = Vec::with_capacity(k);
    if k == 0 {
        return Ok(out);
    }
    let start_rows: Vec<f32> = starts
        .iter()
        .flat_map(|&s| rows.row(s).iter().copied())
        .collect();
    let mut a = vec![0.0f32; rows.n];
    let first = mean_to_starts(&rows, &start_rows, starts.len(), &mut a).1;
    traverse(&rows, &mut a, first, k, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn better_prefers_larger_then_lower_index() {
        assert_eq!(better((1.0, 5), (2.0, 9)), (2.0, 9));
        assert_eq!(better((2.0, 5), (2.0, 3)), (2.0, 3));
        assert_eq!(better((2.0, 3), (2.0, 5)), (2.0, 3));
        assert_eq!(better(NO_CANDIDATE, (EMITTED, 0)), (EMITTED, 0));
    }
}
