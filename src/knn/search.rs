//! The block-wise search kernel behind [`super::BruteForce`]: one matrix product per bank
//! block, a parallel top-k scan of its distances, and the exact refinement of the winners.

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::kernels::gemm::matmul;

/// Queries per matrix product (fixed: results never depend on the thread count).
pub(super) const QUERY_BLOCK: usize = 2048;
/// Bank rows per matrix product. `QUERY_BLOCK × BANK_BLOCK × 4` bytes = 16 MiB of distance
/// scratch, whatever the bank size.
pub(super) const BANK_BLOCK: usize = 2048;
/// Queries whose top-k lists one scan task keeps (the scan is split along queries only, so its
/// result does not depend on this size).
const SCAN_GROUP: usize = 64;
/// Bank rows converted from f16 per conversion task.
const CONVERT_ROWS: usize = 64;

/// The memory bank's rows, stored in f32 or in f16.
#[derive(Debug, Clone, Copy)]
pub(super) enum BankRows<'a> {
    /// Row-major f32 rows.
    F32(&'a [f32]),
    /// Row-major f16 rows (converted block-wise to f32 for the products).
    F16(&'a [f16]),
}

impl BankRows<'_> {
    /// Row `j` (width `d`) as f32, converted into `buf` when the bank is f16.
    #[inline]
    fn row<'b>(&'b self, j: usize, d: usize, buf: &'b mut [f32]) -> &'b [f32] {
        match *self {
            BankRows::F32(b) => &b[j * d..(j + 1) * d],
            BankRows::F16(b) => {
                b[j * d..(j + 1) * d].convert_to_f32_slice(&mut buf[..d]);
                &buf[..d]
            }
        }
    }
}

/// Reusable scratch memory of one search.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    /// Inner products of one bank block with one query chunk, `[bank rows, queries]`.
    dots: Vec<f32>,
    /// One bank block converted to f32 (f16 banks only).
    block: Vec<f32>,
    /// The query chunk transposed, `[d, queries]`.
    qt: Vec<f32>,
    /// Per-chunk state of the bf16 screening pass.
    pub(super) screen: Vec<super::screen::ChunkState>,
    /// Per-chunk queries sent back to the f32 path by the screening pass.
    pub(super) fallback: Vec<Vec<usize>>,
}

/// Query dimensions transposed per task.
const TRANSPOSE_DIMS: usize = 64;

/// Top-k search of the `m = qn.len()` contiguous queries `q` against the whole bank, one bank
/// block at a time: one (internally parallel) matrix product `block · qᵀ` (bank rows as the
/// product's rows; `qᵀ` is materialised once per call, which the GEMM packs faster than a
/// transposed view: about 10 % less time for 784 queries × 1,638 rows),
/// then a scan split over groups of queries, each keeping its queries' top-k. The winners'
/// distances are finally recomputed exactly and re-sorted (ties → lower index).
#[allow(clippy::too_many_arguments)]
pub(super) fn search_chunk(
    q: &[f32],
    qn: &[f32],
    bank: BankRows<'_>,
    bank_norms: &[f32],
    d: usize,
    k: usize,
    dist_out: &mut [f32],
    idx_out: &mut [usize],
    scratch: &mut Scratch,
) {
    let n = bank_norms.len();
    let m = qn.len();
    dist_out.fill(f32::INFINITY);
    idx_out.fill(usize::MAX);
    let bb = BANK_BLOCK.min(n);
    if scratch.dots.len() < m * bb {
        scratch.dots.resize(m * bb, 0.0);
    }
    if matches!(bank, BankRows::F16(_)) && scratch.block.len() < bb * d {
        scratch.block.resize(bb * d, 0.0);
    }
    if scratch.qt.len() < m * d {
        scratch.qt.resize(m * d, 0.0);
    }
    let qt = &mut scratch.qt[..m * d];
    // qt[c·m + i] = q[i·d + c], a band of TRANSPOSE_DIMS dimensions per task.
    qt.par_chunks_mut(TRANSPOSE_DIMS * m)
        .enumerate()
        .for_each(|(band, dst)| {
            let c0 = band * TRANSPOSE_DIMS;
            let width = dst.len() / m;
            for (i, qi) in q.chunks_exact(d).enumerate() {
                for (c, &v) in qi[c0..c0 + width].iter().enumerate() {
                    dst[c * m + i] = v;
                }
            }
        });
    let qt: &[f32] = qt;
    let mut b0 = 0;
    while b0 < n {
        let nb = bb.min(n - b0);
        let rows: &[f32] = match bank {
            BankRows::F32(b) => &b[b0 * d..(b0 + nb) * d],
            BankRows::F16(b) => {
                let dst = &mut scratch.block[..nb * d];
                b[b0 * d..(b0 + nb) * d]
                    .par_chunks(CONVERT_ROWS * d)
                    .zip(dst.par_chunks_mut(CONVERT_ROWS * d))
                    .for_each(|(src, dst)| src.convert_to_f32_slice(dst));
                dst
            }
        };
        let dots = &mut scratch.dots[..nb * m];
        // dots[j·m + i] = bank[b0 + j] · q[i]
        matmul(nb, m, d, rows, qt, dots, false);
        let dots: &[f32] = dots;
        let bn = &bank_norms[b0..b0 + nb];
        dist_out
            .par_chunks_mut(SCAN_GROUP * k)
            .zip(idx_out.par_chunks_mut(SCAN_GROUP * k))
            .enumerate()
            .for_each(|(g, (top_d, top_i))| {
                let c0 = g * SCAN_GROUP;
                let cw = top_d.len() / k;
                scan_group(dots, m, c0, &qn[c0..c0 + cw], bn, b0, k, top_d, top_i);
            });
        b0 += nb;
    }
    // Exact refinement of the winners' distances, then re-sort (ties → lower index).
    q.par_chunks(d)
        .zip(dist_out.par_chunks_mut(k))
        .zip(idx_out.par_chunks_mut(k))
        .for_each_init(
            || vec![0.0f32; d],
            |buf, ((qi, top_d), top_i)| {
                for (dist, &j) in top_d.iter_mut().zip(top_i.iter()) {
                    *dist = squared_distance(qi, bank.row(j, d, buf));
                }
                // Insertion sort by (distance, index): k is small and nothing is allocated.
                for t in 1..top_d.len() {
                    let mut u = t;
                    while u > 0 && (top_d[u - 1], top_i[u - 1]) > (top_d[u], top_i[u]) {
                        top_d.swap(u - 1, u);
                        top_i.swap(u - 1, u);
                        u -= 1;
                    }
                }
            },
        );
}

/// Scan one bank block's products for the queries `c0 .. c0 + qn.len()` (columns of `dots`,
/// whose rows are `m` long) into their top-k lists (`top_d`/`top_i`, `k` per query).
#[allow(clippy::too_many_arguments)]
#[inline]
fn scan_group(
    dots: &[f32],
    m: usize,
    c0: usize,
    qn: &[f32],
    bn: &[f32],
    b0: usize,
    k: usize,
    top_d: &mut [f32],
    top_i: &mut [usize],
) {
    let cw = qn.len();
    // Current k-th best distance of every query of the group, kept contiguous so the
    // comparison loop vectorises.
    let mut worst = [0.0f32; SCAN_GROUP];
    let worst = &mut worst[..cw];
    for (w, t) in worst.iter_mut().zip(0..cw) {
        *w = top_d[t * k + k - 1];
    }
    let mut dist = [0.0f32; SCAN_GROUP];
    let dist = &mut dist[..cw];
    for (j, &nj) in bn.iter().enumerate() {
        let row = &dots[j * m + c0..j * m + c0 + cw];
        let mut any = false;
        for (((dv, &dot), &qi), &w) in dist.iter_mut().zip(row).zip(qn).zip(worst.iter()) {
            let v = (qi - 2.0 * dot + nj).max(0.0);
            *dv = v;
            any |= v < w;
        }
        if !any {
            continue;
        }
        for t in 0..cw {
            // Strict `<`: later (higher) bank indices never displace equal distances.
            if dist[t] < worst[t] {
                let (td, ti) = (
                    &mut top_d[t * k..(t + 1) * k],
                    &mut top_i[t * k..(t + 1) * k],
                );
                insert_sorted(td, ti, dist[t], b0 + j);
                worst[t] = td[k - 1];
            }
        }
    }
}

/// Insert `(dist, idx)` into the ascending arrays, dropping the last element; equal distances
/// keep their existing (lower-index) entries first.
#[inline]
pub(super) fn insert_sorted(top_d: &mut [f32], top_i: &mut [usize], dist: f32, idx: usize) {
    let mut p = top_d.len() - 1;
    while p > 0 && dist < top_d[p - 1] {
        top_d[p] = top_d[p - 1];
        top_i[p] = top_i[p - 1];
        p -= 1;
    }
    top_d[p] = dist;
    top_i[p] = idx;
}

/// `Σ v²`, accumulated in f64 for an accurate norm.
pub(super) fn squared_norm(v: &[f32]) -> f64 {
    let mut acc = [0.0f64; 4];
    let mut chunks = v.chunks_exact(4);
    for c in &mut chunks {
        for t in 0..4 {
            acc[t] += f64::from(c[t]) * f64::from(c[t]);
        }
    }
    let mut s = acc[0] + acc[1] + acc[2] + acc[3];
    for &x in chunks.remainder() {
        s += f64::from(x) * f64::from(x);
    }
    s
}

/// `Σ (a − b)²`, computed directly (no cancellation), accumulated in f64.
pub(crate) fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f64; 4];
    let mut ca = a.chunks_exact(4);
    let mut cb = b.chunks_exact(4);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for t in 0..4 {
            let diff = f64::from(x[t]) - f64::from(y[t]);
            acc[t] += diff * diff;
        }
    }
    let mut s = acc[0] + acc[1] + acc[2] + acc[3];
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        let diff = f64::from(x) - f64::from(y);
        s += diff * diff;
    }
    s as f32
}
