//! The bf16 product on tile kernels (every instruction set but AMX): the kernel of an
//! instruction set, and the loop of one task's rows over the packed panels of `B`.

#[cfg(target_arch = "x86_64")]
use super::avx512_bf16;
#[cfg(target_arch = "aarch64")]
use super::neon_bf16;
use super::{portable, Bf16Isa, PackedBf16Weights, Tile, MR, NR};
use crate::kernels::wide::Wide;

/// Pairs of `k` per cache block: the micro-kernels run over at most this many pairs before
/// the partial sums go back to memory. Every convolution of the backbones to layer3 (at most
/// 2,304 pairs) is one block: writing and re-reading the tiles of `c` after every 256 pairs
/// (a block of `B` that fits a 48 KiB L1) cost more than streaming the whole panel of `B`
/// from L2 once per tile of rows (WRN-50-2 bf16 on a Zen 5: 11 % of the pass in those
/// copies, against 4 % after).
const KC: usize = 4096;

/// The micro-kernel of an instruction set, proven available.
#[derive(Clone, Copy)]
pub(super) enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx512(avx512_bf16::Avx512Bf16),
    #[cfg(target_arch = "aarch64")]
    Neon(neon_bf16::NeonBf16),
}

impl Kernel {
    /// The kernel of `isa`, or the portable one if `isa` is not available.
    pub(super) fn new(isa: Bf16Isa) -> Kernel {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Bf16Isa::Avx512Bf16 => {
                avx512_bf16::Avx512Bf16::detect().map_or(Kernel::Portable, Kernel::Avx512)
            }
            #[cfg(target_arch = "aarch64")]
            Bf16Isa::NeonBf16 => {
                neon_bf16::NeonBf16::detect().map_or(Kernel::Portable, Kernel::Neon)
            }
            _ => Kernel::Portable,
        }
    }

    /// `acc[r][j] (+)= Σ_t` over the `kp` pairs of `a` (`kp·8` pairs, see the packed layout)
    /// and `b` (`kp·width` pairs), in the [module's order](super#summation-order-the-same-for-every-isa-but-amx),
    /// for rows `r < 8` and columns `j < width`; `width` is 16, 32 or 48. With `fresh` the
    /// sums start from zero (`acc`'s contents are not read): `=` instead of `+=`.
    #[inline]
    fn tile(self, a: &[u32], b: &[u16], kp: usize, width: usize, acc: &mut Tile, fresh: bool) {
        fn zero_first(acc: &mut Tile, fresh: bool) -> &mut Tile {
            if fresh {
                *acc = [[0.0; NR]; MR];
            }
            acc
        }
        match self {
            Kernel::Portable => portable::tile(a, b, kp, width, zero_first(acc, fresh)),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(k) => k.tile(a, b, kp, width, acc, fresh),
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon(k) => k.tile(a, b, kp, width, zero_first(acc, fresh)),
        }
    }
}

/// The product of the weights `w` and the packed activations `packed` (`n` columns) on the
/// rows of `c` of one task.
#[derive(Clone, Copy)]
pub(super) struct RowsJob<'a> {
    pub kernel: Kernel,
    pub w: &'a PackedBf16Weights,
    pub packed: &'a [u16],
    pub n: usize,
}

impl RowsJob<'_> {
    /// Computes the rows of `c` given in `c_rows` (whole tiles, starting with tile `tile0`,
    /// the last one possibly partial): for each panel of `B`, for each block of `KC` pairs,
    /// every tile of rows. `wide` picks the copy of the loop (the kernel is the same).
    pub(super) fn run(self, wide: Wide, c_rows: &mut [f32], tile0: usize) {
        match wide {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Wide::Avx512` exists only when AVX512F and AVX512BW were detected.
            Wide::Avx512(_) => unsafe { self.run_avx512(c_rows, tile0) },
            Wide::Baseline => self.body(c_rows, tile0),
        }
    }

    /// [`Self::body`] compiled with AVX-512 (its copies of whole tile rows become three
    /// vector moves).
    ///
    /// # Safety
    /// The CPU must run AVX512F and AVX512BW.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn run_avx512(self, c_rows: &mut [f32], tile0: usize) {
        self.body(c_rows, tile0)
    }

    /// The loop of [`Self::run`]. From the second block of `KC` pairs on, a tile's rows go
    /// between `c` and the kernel's accumulators once per block; a full panel's (all [`NR`]
    /// columns in use, every panel but the last) as fixed-size copies, which compile to
    /// vector moves where a copy of a run-time length is a call to `memmove`.
    #[inline(always)]
    fn body(self, c_rows: &mut [f32], tile0: usize) {
        let RowsJob {
            kernel,
            w,
            packed,
            n,
        } = self;
        let kp = w.k.div_ceil(2);
        let data = w.data();
        let rows = c_rows.len() / n;
        let tiles = rows.div_ceil(MR);
        let mut acc: Tile = [[0.0; NR]; MR];
        for (p, panel) in packed.chunks(NR * kp * 2).enumerate() {
            let j0 = p * NR;
            let width = panel.len() / (2 * kp);
            let wv = width.min(n - j0);
            let mut t0 = 0;
            while t0 < kp {
                let kb = KC.min(kp - t0);
                let bblock = &panel[t0 * width * 2..(t0 + kb) * width * 2];
                for tile in 0..tiles {
                    let rt = MR.min(rows - tile * MR);
                    // The first block starts from zero in the kernel (`fresh`); a later one from
                    // the sums so far.
                    if t0 > 0 {
                        for (r, acc_row) in acc.iter_mut().enumerate() {
                            if r >= rt {
                                *acc_row = [0.0; NR];
                                continue;
                            }
                            let row = &c_rows[(tile * MR + r) * n + j0..][..wv];
                            if let Ok(row) = <&[f32; NR]>::try_from(row) {
                                *acc_row = *row;
                            } else {
                                acc_row[..wv].copy_from_slice(row);
                                acc_row[wv..width].fill(0.0);
                            }
                        }
                    }
                    let a0 = ((tile0 + tile) * kp + t0) * MR;
                    kernel.tile(
                        &data[a0..a0 + kb * MR],
                        bblock,
                        kb,
                        width,
                        &mut acc,
                        t0 == 0,
                    );
                    for (r, acc_row) in acc.iter().enumerate().take(rt) {
                        let row = &mut c_rows[(tile * MR + r) * n + j0..][..wv];
                        if let Ok(row) = <&mut [f32; NR]>::try_from(&mut *row) {
                            *row = *acc_row;
                        } else {
                            row.copy_from_slice(&acc_row[..wv]);
                        }
                    }
                }
                t0 += kb;
            }
        }
    }
}
