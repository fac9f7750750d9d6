//! One full pass of the batched farthest-first traversal: fold a batch of new centres into every
//! row's key, skipping the distances the triangle inequality proves useless, and collect the best
//! rows of the bank.
//!
//! Every row keeps, besides its key `a_i`, its *owner*: the coreset position of the centre whose
//! distance the key is (`a_i == Δ(z_i, z_owner)` bit for bit, as computed by
//! [`dist`](crate::kernels::distance::dist)), or [`NO_OWNER`] while the key is still an initial cap. For
//! a new centre `s`, `Δ(z_i, z_s) ≥ Δ(z_owner, z_s) − a_i`, so when the centre–centre distance
//! exceeds `2·a_i` (with a margin covering the rounding of all three computed distances) the
//! computed `Δ(z_i, z_s)` is at least `a_i` and cannot lower the key: it is not computed. The
//! keys after a pass are therefore exactly those of folding the centres one at a time.
//!
//! The passes read the bank in transposed row blocks ([`Blocked`]) and are generic over the
//! block kernel ([`BlockKernel`]): the portable loops, the same loops compiled with AVX + FMA,
//! or the AVX-512 kernel, chosen at run time. All give the bits of
//! [`sq_dist`](crate::kernels::distance::sq_dist) (see [`distance`](crate::kernels::distance) and
//! [`blocked`](super::blocked)); the centre–centre table and the candidate-list updates use the
//! row kernels ([`Kernel`]) on row-major copies of the few rows they need (the emitted rows,
//! the candidate list), so the bank itself is held only once, blocked.

use std::ops::AddAssign;

use rayon::prelude::*;

use super::blocked::{Blocked, GROUP, R};
use super::topk::{TopK, CAP};
#[cfg(target_arch = "x86_64")]
use crate::kernels::distance::{Avx512Blocks, Fma, FmaBlocks};
use crate::kernels::distance::{BlockKernel, Kernel, Portable, PortableBlocks};

/// Rows per parallel block of a pass (a multiple of the row block [`R`]).
pub(super) const BLOCK_ROWS: usize = 1024;
const _: () = assert!(BLOCK_ROWS.is_multiple_of(R));

/// Owner of a row whose key is not (yet) the distance to an emitted row.
pub(super) const NO_OWNER: u32 = u32::MAX;

/// Coreset positions per parallel block of the centre–centre table.
const CC_BLOCK: usize = 64;

/// Absolute part of the pruning margin: covers the rounding of distances whose squares are
/// subnormal (below ~1.1e-19).
const ABS_MARGIN: f32 = 1e-18;

/// Relative pruning margin for rows of length `d`. A computed distance has a relative error of
/// at most about `(d/16 + 6)·ε` (the roundings along one lane of the sum of squares, the lane
/// tree, the tail, the square root); the bound combines two computed distances against a third,
/// so `4·(d/16 + 16)·ε` (at least `1e-5`) leaves a wide safety factor.
pub(super) fn rel_margin(d: usize) -> f32 {
    let roundings = (d / crate::kernels::distance::LANES) as f32 + 16.0;
    (4.0 * roundings * f32::EPSILON).max(1e-5)
}

/// A new centre at distance `> bound(a_i)` from row `i`'s owner cannot lower `a_i`.
#[inline(always)]
fn bound(key: f32, rel: f32) -> f32 {
    2.0 * key * (1.0 + rel) + ABS_MARGIN
}

/// Work done by a pass, in row–centre pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Work {
    /// Distances computed.
    pub computed: u64,
    /// Distances skipped thanks to the triangle inequality.
    pub pruned: u64,
}

impl AddAssign for Work {
    fn add_assign(&mut self, o: Work) {
        self.computed += o.computed;
        self.pruned += o.pruned;
    }
}

/// The centres folded in by one pass.
pub(super) struct Batch<'a> {
    /// Their rows, `m × d`, in emission order.
    pub centres: &'a [f32],
    /// Number of centres `m` (at most [`CAP`]).
    pub m: usize,
    /// Coreset position of the first of them (the others follow).
    pub first_pos: usize,
    /// When pruning: the table `cc[q·m + j] = Δ(z_{out[q]}, centre j)`, stored rounded down to
    /// 16 bits ([`lower`]), for every coreset
    /// position `q` emitted so far (including the batch itself), and its row minima
    /// `min_j cc[q·m + j]` (`−∞` when a row holds a non-finite distance), see [`centre_table`].
    pub cc: Option<(&'a [u16], &'a [f32])>,
    /// [`rel_margin`] for the row length.
    pub rel: f32,
}

/// The per-row state of a traversal: key `a_i`, owner (see the module documentation) and
/// `sq_i`, the squared threshold of the key ([`sq_threshold`]`(a_i)` for a key `> 0`, `0`
/// otherwise, which no squared distance is below), kept up to date with the key so that a pass
/// does not recompute it.
pub(super) struct Keys<'k> {
    pub a: &'k mut [f32],
    pub owner: &'k mut [u32],
    pub sq: &'k mut [f32],
}

/// The squared threshold of a key (see [`Keys`]).
#[inline]
pub(super) fn key_sq(key: f32) -> f32 {
    if key > 0.0 {
        sq_threshold(key)
    } else {
        0.0
    }
}

/// Row-major rows of length `d`.
#[derive(Clone, Copy)]
pub(super) struct Rows<'a> {
    pub data: &'a [f32],
    pub n: usize,
    pub d: usize,
}

impl<'a> Rows<'a> {
    pub(super) fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.d..(i + 1) * self.d]
    }
}

/// The `C` centres `g` (batch positions) against the rows of `blk`, folded in the order of `g`
/// when a key can drop.
#[inline(always)]
fn group<'c, K: BlockKernel, const C: usize>(
    kern: K,
    blk: &[f32],
    g: &[usize],
    centre: &impl Fn(usize) -> &'c [f32],
    thr: &mut [f32; R],
    fold: &mut impl FnMut(&mut [f32; R], usize, &[f32; R]),
) {
    let cs: [&[f32]; C] = std::array::from_fn(|c| centre(g[c]));
    // Most blocks lower no key: their distances are not even looked at.
    if let Some(s) = kern.sq_block(blk, cs, thr) {
        for (&j, s) in g.iter().zip(&s) {
            fold(thr, j, s);
        }
    }
}

/// The smallest `t ≥ 0` with `sqrt(t) ≥ key` (`f32` square root, correctly rounded), for a key
/// `> 0` or `+∞`. As the square root is monotonic, a squared distance `sq ≥ 0` gives
/// `sqrt(sq) < key` exactly when `sq < sq_threshold(key)`: the passes compare squared distances
/// and take a square root only when a key really drops.
#[inline(always)]
pub(super) fn sq_threshold(key: f32) -> f32 {
    if key == f32::INFINITY {
        return f32::INFINITY;
    }
    // Neighbours of a non-negative float (its bits grow with it).
    let down = |t: f32| f32::from_bits(t.to_bits() - 1);
    let up = |t: f32| f32::from_bits(t.to_bits() + 1);
    let mut t = key * key;
    if t.sqrt() >= key {
        while t > 0.0 && down(t).sqrt() >= key {
            t = down(t);
        }
    } else {
        while t.sqrt() < key {
            t = up(t);
        }
    }
    t
}

/// Folds `batch` into the keys of the rows of `zb` (blocked rows, see
/// [`blocked`](super::blocked); `ab.len()` rows from row `base`). Rows go by blocks of [`R`]:
/// the centres that any live row of the block needs (all of them without pruning) are computed
/// for the whole block, [`GROUP`] at a time, and folded into each row in ascending order. A row
/// whose key cannot drop (key ≤ 0, a padding row, or every centre pruned) has threshold 0,
/// which no squared distance is below; a centre pruned for one row but computed for its block
/// is folded too, harmlessly: its distance cannot be below the row's key. When the rows of a
/// block need less than half of that union in all (clustered data, pruning at work), the block
/// goes row by row instead, each row with its own centres and the row kernel on the row-major
/// rows `zr` when given, else on the row copied out of its block. The work counters count the pairs per row, as if every row were computed alone.
#[inline(always)]
fn fold_block_body<K: BlockKernel, RK: Kernel>(
    (kern, row_kern): (K, RK),
    (zb, zr): (&[f32], Option<&[f32]>),
    d: usize,
    base: usize,
    keys: Keys,
    batch: &Batch,
) -> (TopK, Work) {
    let Keys {
        a: ab,
        owner: ob,
        sq: sb,
    } = keys;
    let m = batch.m;
    let centre = |j: usize| &batch.centres[j * d..(j + 1) * d];
    let pos = |j: usize| u32::try_from(batch.first_pos + j).unwrap_or(NO_OWNER);
    let mut work = Work::default();
    let mut row_buf = vec![0.0f32; d];
    let mut need = [false; CAP];
    let mut list = [0usize; CAP];
    let rows = ab.chunks_mut(R).zip(ob.chunks_mut(R)).zip(sb.chunks_mut(R));
    for (t, ((at, ot), st)) in rows.enumerate() {
        let blk = &zb[t * R * d..(t + 1) * R * d];
        let mut thr = [0.0f32; R];
        let mut any = false;
        let mut pairs = 0;
        if batch.cc.is_some() {
            need[..m].fill(false);
        }
        for (r, (&key, &own)) in at.iter().zip(ot.iter()).enumerate() {
            // A key ≤ 0 (emitted, or on an emitted row's duplicate) can never be lowered.
            if !(key > 0.0 && m > 0) {
                continue;
            }
            let mut nt = m;
            match batch.cc {
                Some((_, near))
                    if own != NO_OWNER && near[own as usize] > bound(key, batch.rel) =>
                {
                    // Every centre of the batch is too far from the owner: nothing to compute.
                    nt = 0;
                }
                Some((cc, _)) if own != NO_OWNER => {
                    let bound = bound(key, batch.rel);
                    let own = own as usize;
                    nt = 0;
                    for (n, &dc) in need.iter_mut().zip(&cc[own * m..(own + 1) * m]) {
                        let dc = widen(dc);
                        if !(dc > bound && dc.is_finite()) {
                            *n = true;
                            nt += 1;
                        }
                    }
                }
                Some(_) => need[..m].fill(true),
                None => {}
            }
            work.computed += nt as u64;
            work.pruned += (m - nt) as u64;
            pairs += nt;
            if nt > 0 {
                thr[r] = st[r];
                any = true;
            }
        }
        if !any {
            continue;
        }
        let mut nl = 0;
        if let Some((cc, _)) = batch.cc {
            if 2 * pairs < R * need[..m].iter().filter(|&&n| n).count() {
                // The rows need few and different centres: computing their union for the
                // whole block would waste most of it. Row by row (each row copied out of the
                // block), with each row's own list, as without blocks.
                for r in 0..at.len() {
                    if thr[r] <= 0.0 {
                        continue;
                    }
                    let row = match zr {
                        Some(zr) => &zr[(t * R + r) * d..(t * R + r + 1) * d],
                        None => {
                            for (j, v) in row_buf.iter_mut().enumerate() {
                                *v = blk[j * R + r];
                            }
                            &row_buf[..]
                        }
                    };
                    let mut nt = 0;
                    if ot[r] == NO_OWNER {
                        for (j, l) in list[..m].iter_mut().enumerate() {
                            *l = j;
                        }
                        nt = m;
                    } else {
                        let bound = bound(at[r], batch.rel);
                        let own = ot[r] as usize;
                        for (j, &dc) in cc[own * m..(own + 1) * m].iter().enumerate() {
                            let dc = widen(dc);
                            if !(dc > bound && dc.is_finite()) {
                                list[nt] = j;
                                nt += 1;
                            }
                        }
                    }
                    let mut set = |j: usize, sq: f32| {
                        // `sqrt(sq) < a`, without the square root.
                        if sq < thr[r] {
                            let dj = sq.sqrt();
                            at[r] = dj;
                            ot[r] = pos(j);
                            st[r] = sq_threshold(dj);
                            thr[r] = st[r];
                        }
                    };
                    let mut quads = list[..nt].chunks_exact(4);
                    for q in &mut quads {
                        let cs = [centre(q[0]), centre(q[1]), centre(q[2]), centre(q[3])];
                        for (&j, sq) in q.iter().zip(row_kern.sq4(row, cs)) {
                            set(j, sq);
                        }
                    }
                    for &j in quads.remainder() {
                        set(j, row_kern.sq1(row, centre(j)));
                    }
                }
                continue;
            }
        }
        for (j, &n) in need[..m].iter().enumerate() {
            // Without pruning every centre is needed.
            if n || batch.cc.is_none() {
                list[nl] = j;
                nl += 1;
            }
        }
        let mut fold = |thr: &mut [f32; R], j: usize, s: &[f32; R]| {
            let rows = at.iter_mut().zip(ot.iter_mut()).zip(st.iter_mut());
            for (r, ((a, o), sq)) in rows.enumerate() {
                // `sqrt(s[r]) < a`, without the square root.
                if s[r] < thr[r] {
                    let dj = s[r].sqrt();
                    *a = dj;
                    *o = pos(j);
                    *sq = sq_threshold(dj);
                    thr[r] = *sq;
                }
            }
        };
        let mut groups = list[..nl].chunks_exact(GROUP);
        for g in &mut groups {
            group::<K, GROUP>(kern, blk, g, &centre, &mut thr, &mut fold);
        }
        // The last centres together too (one centre per call would leave the registers idle).
        let rest = groups.remainder();
        match rest.len() {
            0 => {}
            1 => group::<K, 1>(kern, blk, rest, &centre, &mut thr, &mut fold),
            2 => group::<K, 2>(kern, blk, rest, &centre, &mut thr, &mut fold),
            3 => group::<K, 3>(kern, blk, rest, &centre, &mut thr, &mut fold),
            4 => group::<K, 4>(kern, blk, rest, &centre, &mut thr, &mut fold),
            _ => {
                let (a, b) = rest.split_at(4);
                group::<K, 4>(kern, blk, a, &centre, &mut thr, &mut fold);
                for g in b.chunks(2) {
                    match g.len() {
                        2 => group::<K, 2>(kern, blk, g, &centre, &mut thr, &mut fold),
                        _ => group::<K, 1>(kern, blk, g, &centre, &mut thr, &mut fold),
                    }
                }
            }
        }
    }
    (TopK::of_keys::<BLOCK_ROWS>(ab, base), work)
}

fn fold_block(
    z: (&[f32], Option<&[f32]>),
    d: usize,
    base: usize,
    keys: Keys,
    batch: &Batch,
) -> (TopK, Work) {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some((kern, f)) = Avx512Blocks::detect() {
            return kern.run(
                #[inline(always)]
                || fold_block_body((kern, f), z, d, base, keys, batch),
            );
        }
        if let Some(f) = Fma::detect() {
            return f.run(
                #[inline(always)]
                || fold_block_body((FmaBlocks(f), f), z, d, base, keys, batch),
            );
        }
    }
    fold_block_body((PortableBlocks, Portable), z, d, base, keys, batch)
}

/// Folds `batch` into the keys `a` (and owners, and squared thresholds `sq`, see [`Keys`]) of
/// all rows (`z` blocked) and returns the best [`CAP`] rows afterwards together with the work
/// done. Deterministic: every row is processed alone and the block lists merge in a total order.
pub(super) fn full_pass(z: &Blocked, keys: &mut Keys, batch: &Batch) -> (TopK, Work) {
    let d = z.d;
    keys.a
        .par_chunks_mut(BLOCK_ROWS)
        .zip(keys.owner.par_chunks_mut(BLOCK_ROWS))
        .zip(keys.sq.par_chunks_mut(BLOCK_ROWS))
        .zip(z.data.par_chunks(BLOCK_ROWS * d))
        .enumerate()
        .map(|(b, (((a, owner), sq), zb))| {
            let zr = z.rows.as_deref().map(|r| {
                let start = b * BLOCK_ROWS * d;
                &r[start..(start + a.len() * d).min(r.len())]
            });
            fold_block((zb, zr), d, b * BLOCK_ROWS, Keys { a, owner, sq }, batch)
        })
        .reduce(
            || (TopK::new(), Work::default()),
            |(ta, mut wa), (tb, wb)| {
                wa += wb;
                (TopK::merge(ta, tb), wa)
            },
        )
}

/// `out[i] = Δ(z_{rows[i]}, c)²` with the dispatched kernel (the bits of
/// [`sq_dist`](crate::kernels::distance::sq_dist)).
pub(super) fn sq_dists(z: &Rows, rows: &[usize], c: &[f32], out: &mut [f32]) {
    #[inline(always)]
    fn body<K: Kernel>(kern: K, z: &Rows, rows: &[usize], c: &[f32], out: &mut [f32]) {
        for (o, &r) in out.iter_mut().zip(rows) {
            *o = kern.sq1(z.row(r), c);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(kern) = Fma::detect() {
        return kern.run(
            #[inline(always)]
            || body(kern, z, rows, c, out),
        );
    }
    body(Portable, z, rows, c, out)
}

#[inline(always)]
fn cc_block_body<K: Kernel>(
    kern: K,
    z: &Rows,
    rows: &[usize],
    centres: &[f32],
    m: usize,
    out: &mut [f32],
) {
    let d = z.d;
    let centre = |j: usize| &centres[j * d..(j + 1) * d];
    for (&r, o) in rows.iter().zip(out.chunks_exact_mut(m)) {
        let x = z.row(r);
        let mut quads = o.chunks_exact_mut(4);
        let mut j = 0;
        for q in &mut quads {
            let s = kern.sq4(x, [centre(j), centre(j + 1), centre(j + 2), centre(j + 3)]);
            for (v, sq) in q.iter_mut().zip(s) {
                *v = sq.sqrt();
            }
            j += 4;
        }
        for v in quads.into_remainder() {
            *v = kern.sq1(x, centre(j)).sqrt();
            j += 1;
        }
    }
}

fn cc_block(z: &Rows, rows: &[usize], centres: &[f32], m: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(kern) = Fma::detect() {
        return kern.run(
            #[inline(always)]
            || cc_block_body(kern, z, rows, centres, m, out),
        );
    }
    cc_block_body(Portable, z, rows, centres, m, out)
}

/// A non-negative distance rounded down to the 16 high bits of its `f32` (bfloat16 by
/// truncation; NaN stays NaN). The centre–centre table is stored so: half the memory, and as
/// the stored value is never above the distance, a centre pruned by it (`widen(dc) > bound`)
/// is also pruned by the exact distance — pruning stays exact, only a little less of it.
#[inline(always)]
pub(super) fn lower(v: f32) -> u16 {
    if v.is_nan() {
        0x7fc0
    } else {
        (v.to_bits() >> 16) as u16
    }
}

/// The `f32` a [`lower`] value stands for.
#[inline(always)]
pub(super) fn widen(u: u16) -> f32 {
    f32::from_bits(u32::from(u) << 16)
}

/// Fills `cc` (`emitted.len() × m`) with the distances from every emitted row to every centre of
/// the batch (rows `m × d` in `centres`), rounded down to 16 bits ([`lower`]), and `near`
/// (`emitted.len()`) with the exact row minima, or `−∞` for a row holding a non-finite
/// distance (such a row never prunes).
pub(super) fn centre_table(
    z: &Rows,
    emitted: &[usize],
    centres: &[f32],
    m: usize,
    cc: &mut [u16],
    near: &mut [f32],
) {
    cc.par_chunks_mut(CC_BLOCK * m)
        .zip(near.par_chunks_mut(CC_BLOCK))
        .zip(emitted.par_chunks(CC_BLOCK))
        .for_each(|((table, near), rows)| {
            let mut out = vec![0.0f32; rows.len() * m];
            cc_block(z, rows, centres, m, &mut out);
            for (n, row) in near.iter_mut().zip(out.chunks_exact(m)) {
                *n = row.iter().fold(f32::INFINITY, |acc, &v| {
                    if v.is_finite() {
                        acc.min(v)
                    } else {
                        f32::NEG_INFINITY
                    }
                });
            }
            for (t, &v) in table.iter_mut().zip(&out) {
                *t = lower(v);
            }
        });
}

#[cfg(test)]
mod tests;
