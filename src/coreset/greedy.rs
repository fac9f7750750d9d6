//! Farthest-first traversal (greedy k-center), the hot loop of coreset selection.
//!
//! The key array `a` holds, for every row, its current distance to the nearest emitted row (or
//! the initial cap of the approximate sampler); the next emitted row is the one with the largest
//! key, ties going to the lowest index. The *definition* is the plain traversal: after every
//! emission, fold the distance to the new row into all keys and take the argmax.
//!
//! The implementation gives exactly the same sequence with far fewer passes over the bank:
//!
//! * **Candidate list.** A full pass also returns the `LIST` best rows (by key, then index) and
//!   the best row outside them, the *threshold* `(τ, i_τ)`. Keys of rows outside the list can only
//!   decrease, so while the best list row — its key kept exact by folding each new centre into
//!   the list alone — still comes before `(τ, i_τ)` in the (key, index) order, it *is* the global
//!   argmax and is emitted without touching the rest of the bank. When it no longer does, one
//!   full pass folds all pending centres into every row at once (each row read once for up to
//!   `CAP` centres) and rebuilds the list.
//! * **Triangle-inequality pruning** inside a full pass (see [`pass`](super::pass)): distances
//!   that provably cannot lower a key are not computed. It is switched off for a few passes when
//!   it does not pay for its centre–centre table (high-dimensional uniform data).
//!
//! Cost (163,840 × 128 rows, 1 % = 1,638 centres): uniform random rows, where nothing can be
//! pruned, need every one of the `k·N` distances but only ~24 passes (~70 centres per pass),
//! computed on row blocks transposed 16 at a time (see [`blocked`](super::blocked)) for 8
//! centres per kernel call; clustered rows prune 85–98 % of the distances. The
//! centre–centre table costs `~k²/2` distances over a run, which dominates on clustered data at
//! 10 %.
//!
//! Both only skip work whose outcome is known, and every key is a `min` of distances computed by
//! the one distance function, so keys, argmaxes and the emitted indices are bit-for-bit those of
//! the plain traversal, whatever the number of threads (blocks of rows are processed
//! independently and their candidate lists merge in a total order).

use ndarray::ArrayView2;
use rayon::prelude::*;

use super::blocked::{Blocked, R};
use super::pass::{
    centre_table, full_pass, key_sq, rel_margin, sq_dists, Batch, Keys, Rows, Work, BLOCK_ROWS,
    NO_OWNER,
};
use super::topk::{beats, CAP};
use crate::{Error, Result};

/// Key of a row that has been emitted: below every distance, so it is never chosen again and
/// `min` with a distance keeps it.
pub(super) const EMITTED: f32 = -1.0;

/// Length of the candidate list (the last entry of a pass's [`TopK`](super::topk::TopK) is the
/// threshold).
const LIST: usize = CAP - 1;

/// Passes run without pruning after a pass where pruning did not pay.
const PRUNE_BACKOFF: usize = 8;

/// `(value, index)` below every candidate.
const NO_CANDIDATE: (f32, usize) = (f32::NEG_INFINITY, usize::MAX);

/// The better of two `(value, index)` candidates: larger value, then lower index.
#[inline]
fn better(p: (f32, usize), q: (f32, usize)) -> (f32, usize) {
    if beats(q, p) {
        q
    } else {
        p
    }
}

/// Counters of one traversal (used by the tests and to tune the constants).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Stats {
    /// Full passes over the bank (including the first, which may fold no centre).
    pub passes: usize,
    /// Row–centre distances computed or pruned in full passes.
    pub work: Work,
}

/// Initial keys of the approximate sampler: `a_i = (Σ_j Δ(z_i, s_j)) / n0`, the sum in the given
/// start order, in `f32`.
pub(super) fn mean_to_starts(z: &Blocked, starts: &[f32], n0: usize, a: &mut [f32]) {
    let d = z.d;
    let count = n0 as f32;
    a.par_chunks_mut(BLOCK_ROWS)
        .zip(z.data.par_chunks(BLOCK_ROWS * d))
        .for_each(|(ab, zb)| {
            // The chunk's rows, copied out of their blocks (row-major).
            let mut data = vec![0.0f32; ab.len() * d];
            for (i, row) in data.chunks_exact_mut(d).enumerate() {
                let blk = &zb[(i / R) * R * d..];
                for (j, v) in row.iter_mut().enumerate() {
                    *v = blk[j * R + i % R];
                }
            }
            let rows = Rows {
                data: &data,
                n: ab.len(),
                d,
            };
            let all: Vec<usize> = (0..ab.len()).collect();
            let mut sq = vec![0.0f32; ab.len()];
            ab.fill(0.0);
            for s in starts.chunks_exact(d) {
                // `dist(row, s)`, with the dispatched kernel.
                sq_dists(&rows, &all, s, &mut sq);
                for (ai, &q) in ab.iter_mut().zip(&sq) {
                    *ai += q.sqrt();
                }
            }
            for ai in ab.iter_mut() {
                *ai /= count;
            }
        });
}

/// Farthest-first traversal from the keys `a` (all rows' owners [`NO_OWNER`]): emits `first`
/// (if any), then the farthest row, until `out` holds `k` rows. `progress(selected, k)` is
/// called after every full pass (the last call has `selected == k`).
///
/// The bank is read only in its blocked form `z`: the rows the candidate list and the
/// centre–centre table need are kept as row-major copies (the emitted rows, `k × d`, and the
/// list rows, `LIST × d`).
pub(super) fn traverse(
    z: &Blocked,
    a: &mut [f32],
    first: Option<usize>,
    k: usize,
    out: &mut Vec<usize>,
    keys: &mut Vec<f32>,
    progress: &mut dyn FnMut(usize, usize),
) -> Stats {
    let d = z.d;
    let mut stats = Stats::default();
    let mut owner = vec![NO_OWNER; z.n];
    let mut sq: Vec<f32> = a.par_iter().map(|&key| key_sq(key)).collect();
    let mut live: Vec<usize> = Vec::with_capacity(LIST);
    let mut live_sq: Vec<f32> = Vec::with_capacity(LIST);
    let mut pending: Vec<usize> = Vec::with_capacity(CAP + 1);
    let mut centres: Vec<f32> = Vec::with_capacity((CAP + 1) * d);
    let mut cc: Vec<u16> = Vec::new();
    let mut near: Vec<f32> = Vec::new();
    let mut list: Vec<usize> = Vec::with_capacity(LIST);
    // Row-major copies: the rows of the list, and of every emitted row (in emission order).
    let mut list_rows: Vec<f32> = Vec::with_capacity(LIST * d);
    let mut emitted_rows: Vec<f32> = Vec::with_capacity(k.min(z.n) * d);
    let mut positions: Vec<usize> = Vec::with_capacity(k.min(z.n));
    let rel = rel_margin(d);
    let mut backoff = 0usize;

    let emit = |s: usize,
                a: &mut [f32],
                sq: &mut [f32],
                out: &mut Vec<usize>,
                keys: &mut Vec<f32>,
                pending: &mut Vec<usize>,
                rows: &mut Vec<f32>| {
        out.push(s);
        keys.push(a[s]);
        a[s] = EMITTED;
        sq[s] = key_sq(EMITTED);
        pending.push(s);
        let at = rows.len();
        rows.resize(at + d, 0.0);
        z.row_into(s, &mut rows[at..]);
    };
    if let Some(f) = first {
        emit(f, a, &mut sq, out, keys, &mut pending, &mut emitted_rows);
    }
    while out.len() < k {
        // Fold every pending centre into every row. The pending centres are the last `m`
        // emitted rows.
        let m = pending.len();
        centres.clear();
        centres.extend_from_slice(&emitted_rows[(out.len() - m) * d..]);
        let prune = m > 0 && backoff == 0 && out.len() > m;
        if prune {
            // Grown exactly: the table is the traversal's largest buffer after the bank
            // (`k × (LIST + 1)` at most), and a doubling vector could hold twice that.
            let need = out.len() * m;
            if need > cc.capacity() {
                cc.reserve_exact(need - cc.len());
            }
            cc.resize(need, 0);
            near.resize(out.len(), 0.0);
            positions.extend(positions.len()..out.len());
            let emitted = Rows {
                data: &emitted_rows,
                n: out.len(),
                d,
            };
            centre_table(&emitted, &positions, &centres, m, &mut cc, &mut near);
        }
        let batch = Batch {
            centres: &centres,
            m,
            first_pos: out.len() - m,
            cc: if prune { Some((&cc, &near)) } else { None },
            rel,
        };
        let (top, work) = full_pass(
            z,
            &mut Keys {
                a: &mut *a,
                owner: &mut owner,
                sq: &mut sq,
            },
            &batch,
        );
        stats.passes += 1;
        stats.work += work;
        if prune {
            // The table cost `out.len() · m` distances; keep pruning while it saves more.
            if work.pruned < (out.len() * m) as u64 {
                backoff = PRUNE_BACKOFF;
            }
        } else {
            backoff = backoff.saturating_sub(1);
        }
        pending.clear();

        // All keys are exact now: the best row is the global argmax.
        list.clear();
        list.extend((0..top.len().min(LIST)).map(|i| top.get(i).1));
        list_rows.resize(list.len() * d, 0.0);
        for (&r, row) in list.iter().zip(list_rows.chunks_exact_mut(d)) {
            z.row_into(r, row);
        }
        let list_z = Rows {
            data: &list_rows,
            n: list.len(),
            d,
        };
        let threshold = if top.len() > LIST {
            top.get(LIST)
        } else {
            NO_CANDIDATE
        };
        let mut next = top.get(0).1;
        loop {
            emit(next, a, &mut sq, out, keys, &mut pending, &mut emitted_rows);
            if out.len() >= k || pending.len() > LIST {
                break;
            }
            // Fold the new centre into the list rows only.
            let pos = u32::try_from(out.len() - 1).unwrap_or(NO_OWNER);
            // Rows whose key can drop (their places in the list); `Δ < a_r` exactly when
            // `Δ² < sq_r`. The new centre is the last emitted row.
            live.clear();
            live.extend((0..list.len()).filter(|&p| a[list[p]] > 0.0));
            live_sq.resize(live.len(), 0.0);
            let centre = &emitted_rows[(out.len() - 1) * d..];
            sq_dists(&list_z, &live, centre, &mut live_sq);
            for (&p, &s) in live.iter().zip(&live_sq) {
                let r = list[p];
                if s < sq[r] {
                    a[r] = s.sqrt();
                    owner[r] = pos;
                    sq[r] = key_sq(a[r]);
                }
            }
            let mut best = NO_CANDIDATE;
            for &r in &list {
                best = better(best, (a[r], r));
            }
            // Rows outside the list have keys at most those seen by the last pass, all of
            // which come after the threshold; the best list row is the argmax if it comes
            // before the threshold.
            if best.1 == usize::MAX || best.0 < 0.0 || !beats(best, threshold) {
                break;
            }
            next = best.1;
        }
        progress(out.len(), k);
    }
    if stats.passes == 0 {
        progress(out.len(), k);
    }
    stats
}
/// Checks the projected bank and makes it contiguous.
pub(super) fn rows_of<'a>(
    z: &'a ndarray::CowArray<'_, f32, ndarray::Ix2>,
    what: &str,
) -> Result<Rows<'a>> {
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
    greedy_from_with_progress(z, first, k, &mut |_, _| {})
}

/// [`greedy_from`] reporting its progress (see [`select_with_progress`](super::select_with_progress)).
pub(super) fn greedy_from_with_progress(
    z: ArrayView2<f32>,
    first: usize,
    k: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<usize>> {
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
    let blocked = Blocked::from_rows(&rows);
    let mut a = vec![f32::INFINITY; rows.n];
    traverse(
        &blocked,
        &mut a,
        Some(first),
        k,
        &mut out,
        &mut Vec::new(),
        progress,
    );
    Ok(out)
}

/// [`greedy_from_with_progress`] that also returns the coverage radius: the largest distance
/// from a row to its nearest emitted row once `k` rows are emitted (`0` when `k = N`). It is
/// the key the traversal would emit next, so the traversal runs one step further (the order
/// is prefix-closed: the first `k` rows are unchanged) and drops that row.
///
/// `z` is the (projected) bank in the blocked layout.
pub(super) fn greedy_with_radius(
    z: &Blocked,
    first: usize,
    k: usize,
    approximate: Option<&[usize]>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<usize>, f32)> {
    let what = if approximate.is_some() {
        "approximate greedy coreset"
    } else {
        "greedy coreset"
    };
    let rows = z;
    if rows.n == 0 {
        return Err(Error::input(format!("{what}: the bank is empty")));
    }
    if rows.d == 0 {
        return Err(Error::input(format!(
            "{what}: the bank has rows of length 0"
        )));
    }
    check_k(k, rows.n, what)?;
    let mut out = Vec::with_capacity(k + 1);
    let mut keys = Vec::with_capacity(k + 1);
    let steps = (k + 1).min(rows.n);
    let mut report = |s: usize, _: usize| progress(s.min(k), k);
    match approximate {
        None => {
            if first >= rows.n {
                return Err(Error::input(format!(
                    "{what}: first row {first} is out of range for a bank of {} rows",
                    rows.n
                )));
            }
            let mut a = vec![f32::INFINITY; rows.n];
            traverse(
                rows,
                &mut a,
                Some(first),
                steps,
                &mut out,
                &mut keys,
                &mut report,
            );
        }
        Some(starts) => {
            if starts.is_empty() || starts.iter().any(|&s| s >= rows.n) {
                return Err(Error::input(format!(
                    "{what}: start rows out of range for a bank of {} rows",
                    rows.n
                )));
            }
            let start_rows: Vec<f32> = starts.iter().flat_map(|&s| rows.row(s)).collect();
            let mut a = vec![0.0f32; rows.n];
            mean_to_starts(rows, &start_rows, starts.len(), &mut a);
            traverse(rows, &mut a, None, steps, &mut out, &mut keys, &mut report);
        }
    }
    let radius = if out.len() > k {
        out.truncate(k);
        keys[k].max(0.0)
    } else {
        0.0
    };
    Ok((out, radius))
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
    approximate_greedy_from_with_progress(z, starts, k, &mut |_, _| {})
}

/// [`approximate_greedy_from`] reporting its progress (see
/// [`select_with_progress`](super::select_with_progress)).
pub(super) fn approximate_greedy_from_with_progress(
    z: ArrayView2<f32>,
    starts: &[usize],
    k: usize,
    progress: &mut dyn FnMut(usize, usize),
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
    let blocked = Blocked::from_rows(&rows);
    let mut a = vec![0.0f32; rows.n];
    mean_to_starts(&blocked, &start_rows, starts.len(), &mut a);
    traverse(
        &blocked,
        &mut a,
        None,
        k,
        &mut out,
        &mut Vec::new(),
        progress,
    );
    Ok(out)
}
