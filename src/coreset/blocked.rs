//! The bank in row blocks transposed for the full passes.
//!
//! Rows are stored in blocks of [`R`] rows; inside a block, element `j` of the `R` rows is
//! contiguous (`block[j·R + r]` is element `j` of row `r` of the block): the layout the block
//! distance kernels read ([`crate::kernels::distance::BlockKernel`], which explains why).
//!
//! The last block is padded with zero rows (at most `R − 1`); their distances are computed and
//! never used.

use rayon::prelude::*;

use super::pass::Rows;
pub(super) use crate::kernels::distance::R;

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

#[cfg(test)]
mod tests {
    use super::*;

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
