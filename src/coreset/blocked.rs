//! The bank in row blocks transposed for the full passes, and the block distance kernels.
//!
//! Rows are stored in blocks of [`R`] rows; inside a block, element `j` of the `R` rows is
//! contiguous (`block[j·R + r]` is element `j` of row `r` of the block). A SIMD register then
//! holds one element of `R` different rows, so the [`distance`](super::distance) order — `LANES`
//! partial sums (element `j` into lane `j mod LANES`), the pairwise lane tree, then the tail —
//! is evaluated for all `R` rows at once with *vertical* operations only: each of the `LANES`
//! partial sums of a row lives in one lane of its own register, and the lane tree becomes
//! additions of whole registers. Every row's value is produced by exactly the IEEE operations of
//! [`sq_dist`](super::distance::sq_dist), on the same operands, in the same order, so the bits
//! are the same.
//!
//! The last block is padded with zero rows (at most `R − 1`); their distances are computed and
//! never used.

use rayon::prelude::*;

use super::distance::{fmadd, LANES};
use super::pass::Rows;

/// Rows per block (one 512-bit register of `f32`).
pub(super) const R: usize = 16;

/// Centres per call of the block kernel in the full passes.
pub(super) const GROUP: usize = 8;

/// The bank in transposed blocks of [`R`] rows (see the module documentation).
pub(super) struct Blocked {
    /// `⌈n / R⌉ · R · d` floats.
    pub data: Vec<f32>,
    /// Row length.
    pub d: usize,
    /// Rows.
    pub n: usize,
    /// The same rows row-major, when the caller had them anyway (the in-memory fit): the
    /// passes' row-by-row path then reads them instead of copying rows out of their blocks.
    /// Same bits either way.
    pub rows: Option<Vec<f32>>,
}

impl Blocked {
    /// The blocked copy of `z`.
    pub(super) fn from_rows(z: &Rows) -> Blocked {
        let (n, d) = (z.n, z.d);
        let mut data = vec![0.0f32; n.div_ceil(R) * R * d];
        data.par_chunks_mut(R * d)
            .zip(z.data.par_chunks(R * d))
            .with_min_len(16)
            .for_each(|(blk, rows)| {
                for (r, row) in rows.chunks_exact(d).enumerate() {
                    for (j, &v) in row.iter().enumerate() {
                        blk[j * R + r] = v;
                    }
                }
            });
        Blocked {
            data,
            d,
            n,
            rows: None,
        }
    }

    /// The blocked copy of `rows` (row-major, `n × d`), keeping `rows` beside it.
    pub(super) fn from_owned_rows(rows: Vec<f32>, n: usize, d: usize) -> Blocked {
        let mut b = Self::from_rows(&Rows { data: &rows, n, d });
        b.rows = Some(rows);
        b
    }

    /// Floats a blocked bank of `n` rows of length `d` holds (padding included), `None` on
    /// overflow.
    pub(super) fn len_for(n: usize, d: usize) -> Option<usize> {
        n.div_ceil(R).checked_mul(R)?.checked_mul(d)
    }

    /// An empty bank with room for `cap` rows of length `d` (allocated exactly, so that
    /// [`Blocked::push_rows`] never reallocates up to `cap` rows); `None` when that memory
    /// cannot be had.
    pub(super) fn try_with_capacity(cap: usize, d: usize) -> Option<Blocked> {
        let mut data = Vec::new();
        data.try_reserve_exact(Self::len_for(cap, d)?).ok()?;
        Some(Blocked {
            data,
            d,
            n: 0,
            rows: None,
        })
    }

    /// Appends row-major rows (`rows.len()` a multiple of `d`), giving the layout of
    /// [`Blocked::from_rows`] on all rows pushed so far.
    pub(super) fn push_rows(&mut self, rows: &[f32]) {
        let d = self.d;
        for row in rows.chunks_exact(d) {
            let r = self.n % R;
            if r == 0 {
                self.data.resize(self.data.len() + R * d, 0.0);
            }
            let base = (self.n / R) * R * d;
            for (j, &v) in row.iter().enumerate() {
                self.data[base + j * R + r] = v;
            }
            self.n += 1;
        }
    }

    /// Copies row `i` into `out` (`d` floats).
    pub(super) fn row_into(&self, i: usize, out: &mut [f32]) {
        let d = self.d;
        let blk = &self.data[(i / R) * R * d..(i / R + 1) * R * d];
        let r = i % R;
        for (j, o) in out[..d].iter_mut().enumerate() {
            *o = blk[j * R + r];
        }
    }

    /// Row `i`, copied.
    pub(super) fn row(&self, i: usize) -> Vec<f32> {
        let mut out = vec![0.0; self.d];
        self.row_into(i, &mut out);
        out
    }
}

/// How a block of rows computes its distances. All implementations give the same bits.
pub(super) trait BlockKernel: Copy + Send + Sync {
    /// Squared distances `out[c][r]` from row `r` of the block `blk` (`R·d` floats, blocked) to
    /// each of the `C` centres (`d` floats each), when at least one of them is below its row's
    /// threshold (`out[c][r] < thr[r]`); `None` otherwise.
    fn sq_block<const C: usize>(
        self,
        blk: &[f32],
        centres: [&[f32]; C],
        thr: &[f32; R],
    ) -> Option<[[f32; R]; C]>;
}

/// The block distances with plain loops; `fma` must be a fused multiply-add (single rounding).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // the lane and row indices read best as indices
fn sq_block_loops<const C: usize>(
    fma: impl Fn(f32, f32, f32) -> f32 + Copy,
    blk: &[f32],
    centres: [&[f32]; C],
    thr: &[f32; R],
) -> Option<[[f32; R]; C]> {
    let d = blk.len() / R;
    let full = d - d % LANES;
    let mut out = [[0.0f32; R]; C];
    for (o, y) in out.iter_mut().zip(centres) {
        let y = &y[..d];
        let mut acc = [[0.0f32; R]; LANES];
        for (j, &yj) in y[..full].iter().enumerate() {
            let x = &blk[j * R..(j + 1) * R];
            let a = &mut acc[j % LANES];
            for r in 0..R {
                let t = x[r] - yj;
                a[r] = fma(t, t, a[r]);
            }
        }
        for width in [8, 4, 2, 1] {
            for l in 0..width {
                for r in 0..R {
                    acc[l][r] += acc[l + width][r];
                }
            }
        }
        let mut tail = [0.0f32; R];
        for (j, &yj) in y.iter().enumerate().skip(full) {
            let x = &blk[j * R..(j + 1) * R];
            for r in 0..R {
                let t = x[r] - yj;
                tail[r] = fma(t, t, tail[r]);
            }
        }
        for r in 0..R {
            o[r] = acc[0][r] + tail[r];
        }
    }
    let below = out.iter().any(|o| o.iter().zip(thr).any(|(v, t)| v < t));
    below.then_some(out)
}

/// The portable block kernel (plain loops, [`fmadd`]).
#[derive(Clone, Copy)]
pub(super) struct PortableBlocks;

impl BlockKernel for PortableBlocks {
    #[inline(always)]
    fn sq_block<const C: usize>(
        self,
        blk: &[f32],
        centres: [&[f32]; C],
        thr: &[f32; R],
    ) -> Option<[[f32; R]; C]> {
        sq_block_loops(fmadd, blk, centres, thr)
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::{Avx512Blocks, FmaBlocks};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{sq_block_loops, BlockKernel, LANES, R};
    use crate::coreset::distance::Fma;
    use std::arch::x86_64::*;

    // One register holds the R rows; the kernel splits the LANES partial sums in quarters.
    const _: () = assert!(R == 16 && LANES == 16);

    /// The block loops compiled with AVX + FMA (`f32::mul_add` is the FMA instruction there):
    /// for CPUs without AVX-512.
    #[derive(Clone, Copy)]
    pub(in crate::coreset) struct FmaBlocks(pub(in crate::coreset) Fma);

    impl BlockKernel for FmaBlocks {
        #[inline(always)]
        fn sq_block<const C: usize>(
            self,
            blk: &[f32],
            centres: [&[f32]; C],
            thr: &[f32; R],
        ) -> Option<[[f32; R]; C]> {
            sq_block_loops(f32::mul_add, blk, centres, thr)
        }
    }

    /// The AVX-512 block kernel. A value can only be obtained from [`Avx512Blocks::detect`], so
    /// holding one proves that the CPU supports AVX-512F.
    #[derive(Clone, Copy)]
    pub(in crate::coreset) struct Avx512Blocks(());

    impl Avx512Blocks {
        /// The kernel if the CPU supports AVX-512F (and AVX + FMA, whose row kernel comes
        /// with it).
        pub(in crate::coreset) fn detect() -> Option<(Avx512Blocks, Fma)> {
            match Fma::detect() {
                Some(f) if crate::kernels::cpu::features().avx512f => Some((Avx512Blocks(()), f)),
                _ => None,
            }
        }

        /// Runs `f` compiled with AVX-512F, AVX and FMA enabled, so that the block kernel and
        /// the AVX + FMA row kernel inline into it (`f` should be an `#[inline(always)]` body).
        #[inline(always)]
        pub(in crate::coreset) fn run<T>(self, f: impl FnOnce() -> T) -> T {
            #[target_feature(enable = "avx512f,avx,fma")]
            fn with_avx512<T>(f: impl FnOnce() -> T) -> T {
                f()
            }
            // SAFETY: `self` exists, so the CPU supports AVX-512F, AVX and FMA (see
            // `Avx512Blocks::detect`).
            unsafe { with_avx512(f) }
        }
    }

    impl BlockKernel for Avx512Blocks {
        #[inline(always)]
        fn sq_block<const C: usize>(
            self,
            blk: &[f32],
            centres: [&[f32]; C],
            thr: &[f32; R],
        ) -> Option<[[f32; R]; C]> {
            // SAFETY: `self` exists, so the CPU supports AVX-512F (see `Avx512Blocks::detect`).
            unsafe { sq_block(blk, centres, thr) }
        }
    }

    /// Partial sums per centre held in registers during one sweep of [`sq_block`].
    const SWEEP: usize = 4;

    /// The block distances with one register per partial sum: lane `r` of accumulator `l` is
    /// partial sum `l` of row `r`. The `LANES` partial sums are swept `SWEEP` at a time (sweep
    /// `q` holds `l = q + S·k` for `k < SWEEP`, `S = LANES / SWEEP`), so that `SWEEP·C`
    /// accumulators stay in registers. The levels of the lane tree whose pairs lie inside one
    /// sweep (widths `8, …, S`: `l` and `l + w` differ by a multiple of `S`) end each sweep, and
    /// the remaining levels (widths `S/2, …, 1`) combine the sweeps' results `u_q` in the same
    /// pairwise order, then `+ tail`: the additions of the portable lane tree, on the same
    /// operands.
    ///
    /// # Safety
    /// AVX-512F must be available; call only from code compiled with it enabled (inside
    /// [`Avx512Blocks::run`]), so that the intrinsics inline.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // the sweep and lane indices read best as indices
    unsafe fn sq_block<const C: usize>(
        blk: &[f32],
        centres: [&[f32]; C],
        thr: &[f32; R],
    ) -> Option<[[f32; R]; C]> {
        const S: usize = LANES / SWEEP;
        let d = blk.len() / R;
        let full = d - d % LANES;
        let ys = centres.map(|y| &y[..d]);
        let bp = blk.as_ptr();
        let z = _mm512_setzero_ps();
        let mut u = [[z; S]; C];
        for q in 0..S {
            let mut acc = [[z; SWEEP]; C];
            let mut s = 0;
            while s < full {
                for k in 0..SWEEP {
                    let j = s + q + S * k;
                    // SAFETY: `j < full ≤ d`: the block holds `R·d` floats, so `R` floats are
                    // readable at `j·R`, and every centre holds `d` floats.
                    unsafe {
                        let x = _mm512_loadu_ps(bp.add(j * R));
                        for c in 0..C {
                            let t = _mm512_sub_ps(x, _mm512_set1_ps(*ys[c].get_unchecked(j)));
                            acc[c][k] = _mm512_fmadd_ps(t, t, acc[c][k]);
                        }
                    }
                }
                s += LANES;
            }
            for c in 0..C {
                // Widths 8, …, S: lanes l and l + w are k and k + w / S of this sweep.
                let mut w = LANES / 2;
                while w >= S {
                    for k in 0..w / S {
                        acc[c][k] = _mm512_add_ps(acc[c][k], acc[c][k + w / S]);
                    }
                    w /= 2;
                }
                u[c][q] = acc[c][0];
            }
        }
        // SAFETY: `thr` holds R floats.
        let t = unsafe { _mm512_loadu_ps(thr.as_ptr()) };
        let mut below: __mmask16 = 0;
        let mut v = [z; C];
        for c in 0..C {
            let mut tail = z;
            for j in full..d {
                // SAFETY: `j < d`, as above.
                unsafe {
                    let x = _mm512_loadu_ps(bp.add(j * R));
                    let t = _mm512_sub_ps(x, _mm512_set1_ps(*ys[c].get_unchecked(j)));
                    tail = _mm512_fmadd_ps(t, t, tail);
                }
            }
            // Widths S/2, …, 1 across the sweeps.
            let mut w = S / 2;
            while w >= 1 {
                for q in 0..w {
                    u[c][q] = _mm512_add_ps(u[c][q], u[c][q + w]);
                }
                w /= 2;
            }
            v[c] = _mm512_add_ps(u[c][0], tail);
            below |= _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v[c], t);
        }
        if below == 0 {
            return None;
        }
        let mut out = [[0.0f32; R]; C];
        for (o, v) in out.iter_mut().zip(v) {
            // SAFETY: `o` holds R floats.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), v) };
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coreset::distance::tests::reference_sq_dist;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn check<K: BlockKernel>(k: K, what: &str) {
        let mut rng = ChaCha8Rng::seed_from_u64(31);
        for d in [1usize, 3, 15, 16, 17, 31, 32, 100, 128, 129, 300] {
            // 37 rows: two full blocks and a partial one.
            let n = 37;
            let data: Vec<f32> = (0..n * d).map(|_| rng.random_range(-3.0f32..3.0)).collect();
            let z = Rows { data: &data, n, d };
            let b = Blocked::from_rows(&z);
            assert_eq!(b.data.len(), 3 * R * d);
            let ys: Vec<Vec<f32>> = (0..GROUP + 1)
                .map(|_| (0..d).map(|_| rng.random_range(-3.0f32..3.0)).collect())
                .collect();
            for (bi, blk) in b.data.chunks_exact(R * d).enumerate() {
                let rows = (bi * R..n.min((bi + 1) * R)).collect::<Vec<_>>();
                let want: Vec<Vec<f32>> = ys
                    .iter()
                    .map(|y| {
                        (0..R)
                            .map(|r| match rows.get(r) {
                                Some(&i) => reference_sq_dist(z.row(i), y),
                                None => reference_sq_dist(&vec![0.0; d], y),
                            })
                            .collect()
                    })
                    .collect();
                let inf = [f32::INFINITY; R];
                let all: [&[f32]; GROUP] = std::array::from_fn(|c| &ys[c][..]);
                let many = k.sq_block(blk, all, &inf).unwrap();
                let three = k.sq_block(blk, [&ys[1][..], &ys[2], &ys[3]], &inf).unwrap();
                let one = k.sq_block(blk, [&ys[GROUP][..]], &inf).unwrap();
                for r in 0..R {
                    for c in 0..GROUP {
                        assert_eq!(
                            many[c][r].to_bits(),
                            want[c][r].to_bits(),
                            "{what} d {d} block {bi} row {r} centre {c}"
                        );
                    }
                    for c in 0..3 {
                        assert_eq!(three[c][r].to_bits(), want[c + 1][r].to_bits());
                    }
                    assert_eq!(
                        one[0][r].to_bits(),
                        want[GROUP][r].to_bits(),
                        "{what} d {d}"
                    );
                }
                // The threshold test: nothing below, then exactly one entry below.
                let zero = [0.0f32; R];
                assert!(k.sq_block(blk, [&ys[0][..], &ys[1]], &zero).is_none());
                let r = bi % R;
                let mut thr = [0.0f32; R];
                let low = want[0][r].min(want[1][r]);
                thr[r] = low;
                assert!(k.sq_block(blk, [&ys[0][..], &ys[1]], &thr).is_none());
                thr[r] = f32::from_bits(low.to_bits() + 1);
                assert!(k.sq_block(blk, [&ys[0][..], &ys[1]], &thr).is_some());
            }
        }
    }

    #[test]
    fn block_kernels_follow_the_documented_order_bit_for_bit() {
        check(PortableBlocks, "portable");
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(f) = crate::coreset::distance::Fma::detect() {
                let k = FmaBlocks(f);
                f.run(|| check(k, "fma loops"));
            }
            if let Some((k, _)) = Avx512Blocks::detect() {
                k.run(|| check(k, "avx512"));
            }
        }
    }

    #[test]
    fn pushed_rows_give_the_layout_of_from_rows_and_read_back() {
        let d = 5;
        for n in [0usize, 1, 15, 16, 17, 40] {
            let data: Vec<f32> = (0..n * d).map(|v| v as f32 * 0.5 - 3.0).collect();
            let whole = Blocked::from_rows(&Rows { data: &data, n, d });
            let mut pushed = Blocked::try_with_capacity(n, d).unwrap();
            let cap = pushed.data.capacity();
            // Rows arriving in uneven pieces.
            let mut rest = &data[..];
            for take in [3usize, 1, 7, 2].iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let t = (take * d).min(rest.len());
                pushed.push_rows(&rest[..t]);
                rest = &rest[t..];
            }
            assert_eq!(pushed.n, n);
            assert_eq!(pushed.data, whole.data, "n {n}");
            assert_eq!(pushed.data.capacity(), cap, "no reallocation");
            for i in 0..n {
                assert_eq!(pushed.row(i), data[i * d..(i + 1) * d].to_vec());
            }
        }
    }

    #[test]
    fn blocked_layout_transposes_each_block() {
        let (n, d) = (35usize, 3usize);
        let data: Vec<f32> = (0..n * d).map(|v| v as f32).collect();
        let b = Blocked::from_rows(&Rows { data: &data, n, d });
        assert_eq!(b.data.len(), 3 * R * d);
        for i in 0..3 * R {
            for j in 0..d {
                let want = if i < n { (i * d + j) as f32 } else { 0.0 };
                assert_eq!(
                    b.data[(i / R) * R * d + j * R + i % R],
                    want,
                    "row {i} col {j}"
                );
            }
        }
    }
}
