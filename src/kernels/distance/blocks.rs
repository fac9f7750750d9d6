//! The block distance kernels: the distances from the rows of one block to a few centres,
//! with the order of [`sq_dist`](super::sq_dist) for every row.
//!
//! A block holds [`R`] rows transposed: `blk[j·R + r]` is element `j` of row `r` (the layout
//! of the coreset's blocked bank). A SIMD register then holds one element of `R` different
//! rows, so the fixed order — `LANES` partial sums (element `j` into lane `j mod LANES`), the
//! pairwise lane tree, then the tail — is evaluated for all `R` rows at once with *vertical*
//! operations only: each of the `LANES` partial sums of a row lives in one lane of its own
//! register, and the lane tree becomes additions of whole registers. Every row's value is
//! produced by exactly the IEEE operations of [`sq_dist`](super::sq_dist), on the same
//! operands, in the same order, so the bits are the same.

use super::{fmadd, LANES};

/// Rows per block (one 512-bit register of `f32`).
pub(crate) const R: usize = 16;

/// How a block of rows computes its distances. All implementations give the same bits.
pub(crate) trait BlockKernel: Copy + Send + Sync {
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
pub(super) fn sq_block_loops<const C: usize>(
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
pub(crate) struct PortableBlocks;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::distance::tests::reference_sq_dist;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Centres per call in the checks (the coreset's full passes use 8).
    const GROUP: usize = 8;

    /// Rows `data` (row-major, `n × d`) in transposed blocks of `R`, zero rows padding the
    /// last block: the layout spelled out element by element.
    fn blocks_of(data: &[f32], n: usize, d: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; n.div_ceil(R) * R * d];
        for i in 0..n {
            for j in 0..d {
                out[(i / R) * R * d + j * R + i % R] = data[i * d + j];
            }
        }
        out
    }

    pub(in crate::kernels::distance) fn check<K: BlockKernel>(k: K, what: &str) {
        let mut rng = ChaCha8Rng::seed_from_u64(31);
        for d in [1usize, 3, 15, 16, 17, 31, 32, 100, 128, 129, 300] {
            // 37 rows: two full blocks and a partial one.
            let n = 37;
            let data: Vec<f32> = (0..n * d).map(|_| rng.random_range(-3.0f32..3.0)).collect();
            let b = blocks_of(&data, n, d);
            assert_eq!(b.len(), 3 * R * d);
            let ys: Vec<Vec<f32>> = (0..GROUP + 1)
                .map(|_| (0..d).map(|_| rng.random_range(-3.0f32..3.0)).collect())
                .collect();
            for (bi, blk) in b.chunks_exact(R * d).enumerate() {
                let rows = (bi * R..n.min((bi + 1) * R)).collect::<Vec<_>>();
                let want: Vec<Vec<f32>> = ys
                    .iter()
                    .map(|y| {
                        (0..R)
                            .map(|r| match rows.get(r) {
                                Some(&i) => reference_sq_dist(&data[i * d..(i + 1) * d], y),
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
            use crate::kernels::distance::{Avx512Blocks, Fma, FmaBlocks};
            if let Some(f) = Fma::detect() {
                let k = FmaBlocks(f);
                f.run(|| check(k, "fma loops"));
            }
            if let Some((k, _)) = Avx512Blocks::detect() {
                k.run(|| check(k, "avx512"));
            }
        }
    }
}
