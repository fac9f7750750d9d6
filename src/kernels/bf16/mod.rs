//! bf16 matrix products for a reduced-precision backbone: `c = bf16(A) · bf16(B)` with f32
//! accumulation.
//!
//! The weights `A` (`m × k`) are rounded to bf16 once ([`PackedBf16Weights::new`]); the
//! activations `B` (`k × n`, f32) are rounded to bf16 (round to nearest even) while they are
//! packed by [`gemm_bf16`]. A product of two bf16 values is exact in f32, so the only roundings
//! are those of the f32 additions.
//!
//! # Instruction sets
//!
//! One file per instruction set, all reading the same packed layouts:
//!
//! | [`Bf16Isa`] | file | instructions |
//! |---|---|---|
//! | [`Bf16Isa::Portable`] | `portable.rs` | plain f32 loops (vectorised by the compiler) |
//! | [`Bf16Isa::Avx512Bf16`] | `avx512_bf16.rs` | x86-64 `vdpbf16ps` (AVX512-BF16) |
//! | [`Bf16Isa::NeonBf16`] | `neon_bf16.rs` | aarch64 `bfmlalt` / `bfmlalb` (FEAT_BF16) |
//! | [`Bf16Isa::Amx`] | `../amx.rs` | x86-64 `tdpbf16ps` on AMX tiles (AMX-BF16) |
//!
//! A kernel whose instructions the CPU lacks is reachable only through a zero-sized token that
//! [`Bf16Isa::detect`]-style run-time detection hands out, so it can never execute an illegal
//! instruction; asking [`gemm_bf16`] for an unavailable isa runs the portable kernel.
//!
//! # Summation order (the same for every isa but AMX)
//!
//! `k` is split into pairs `(2t, 2t + 1)`, `t = 0 .. ⌈k/2⌉` (an odd `k` gets a zero partner).
//! Every output element is computed as
//!
//! ```text
//! c = +0
//! for t in 0 .. ⌈k/2⌉:           // increasing t, never split across threads
//!     c = c + a[2t+1]·b[2t+1]    // odd element of the pair first
//!     c = c + a[2t]  ·b[2t]      // then the even one
//! ```
//!
//! with every addition rounded to nearest even in f32. This is the order of Intel's
//! pseudo-code for `vdpbf16ps` (`srcdest += src1.bf16[2i+1]·src2.bf16[2i+1]`, then
//! `+= …[2i+0]`, each an FMA with round to nearest even); the portable kernel does the same
//! additions in the same order (the product is exact, so `mul` then `add` equals the FMA), and
//! the NEON kernel uses the IEEE fused `bfmlalt` (odd elements) then `bfmlalb` (even elements).
//! Blocking over `k` stores the partial sums in f32 and reloads them, which changes nothing.
//! Hence **all isas but AMX give identical bits** as long as no product or partial sum is subnormal
//! in f32 (|x| < 2⁻¹²⁶) and no single product overflows: `vdpbf16ps` treats subnormal inputs
//! as zero and flushes subnormal results to zero, the others keep them. (NEON's `bfdot` /
//! `bfmmla` are not used: without FEAT_EBF16 they add the two products first with round to
//! odd, a different order.)
//!
//! AMX (`tdpbf16ps`) is the exception: its hardware adds the 32 products of a tile row in
//! an order and internal precision that Intel does not document (on Emerald Rapids the
//! result matched neither pair order, nor one rounding per pair, in about 60 % of random
//! cases; its error against the exact sum was the smaller one). Its sums are still exact
//! whenever no addition needs rounding (checked by the tests), satisfy the same bound
//! below, and do not depend on the thread count (a tile chunk of 32 `k` is always summed by
//! one instruction, in increasing chunks). A caller of [`gemm_bf16`] who needs the bits of the
//! other isas on an AMX machine passes [`Bf16Isa::Avx512Bf16`]; the backbone always takes
//! [`Bf16Isa::detect`]'s choice.
//!
//! Error bound against the exact product of the rounded inputs: each element is a sum of `k`
//! exact products (plus zeros) with at most `k` roundings, so
//! `|c − Σ a·b| ≤ k·2⁻²⁴·Σ|a·b|` (to first order), apart from subnormals.
//!
//! The result does not depend on the thread count: threads receive whole row blocks of `c`
//! and every element is computed by one thread in the order above.
//!
//! # Packed layouts
//!
//! - `A` ([`PackedBf16Weights`]): tiles of [`MR`] = 8 rows (the last padded with zero rows);
//!   per tile, for each pair `t`, 8 `u32` — row `r`'s pair with `a[r][2t]` in the low half
//!   and `a[r][2t+1]` in the high half (the lane layout `vdpbf16ps` and `bfmlal{b,t}` expect).
//!   Index: `(tile·⌈k/2⌉ + t)·8 + r`.
//! - `B` (the `scratch` of [`gemm_bf16`]): panels of [`NR`] = 48 columns (the last one
//!   `16·⌈w/16⌉` wide for its `w` remaining columns, padded with zeros); per panel, for each
//!   pair `t`, the panel's columns each as an (even row, odd row) pair of bf16. Panel `p`
//!   starts at `p·48·⌈k/2⌉·2`; within it, `b[2t + h][j0 + j]` is at `(t·width + j)·2 + h`.
//! - [`Bf16Isa::Amx`] reads its own layouts (see `kernels/amx.rs`): the same pair words, in
//!   1 KiB tiles of 16 rows × 16 pairs for the weights (on a CPU that runs it, the weights are
//!   kept in this layout only, and the one above is made from it when another isa is asked
//!   for), and `B` in panels of 16 columns with the pairs padded to a multiple of 16.

use std::sync::OnceLock;

use super::amx;
use super::gemm::Parallelism;
use super::wide::Wide;

pub(crate) use amx_product::{
    amx_kw, gemm_amx, gemm_amx_bits, gemm_amx_to_image, AmxInput, Bf16Bits,
};
pub use pack::Bf16Input;
use pack::{pack_b_panel, packed_b_len};
use tiles::{Kernel, RowsJob};

mod amx_product;
#[cfg(target_arch = "x86_64")]
mod avx512_bf16;
#[cfg(target_arch = "aarch64")]
mod neon_bf16;
mod pack;
mod portable;
mod tiles;

/// Rows of a micro-tile of `c` (and of a tile of packed weights).
pub const MR: usize = 8;
/// Columns of a full panel of packed `B` (three 16-lane vectors).
pub const NR: usize = 48;
/// The accumulators of one micro-tile: `MR` rows of `NR` f32.
type Tile = [[f32; NR]; MR];

/// Instruction set of the bf16 kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Bf16Isa {
    /// Plain Rust loops; available everywhere.
    Portable,
    /// x86-64 AVX512F + AVX512-BF16 (`vdpbf16ps`).
    Avx512Bf16,
    /// aarch64 NEON with the bf16 extension (`bfmlalb` / `bfmlalt`).
    NeonBf16,
    /// x86-64 AMX-BF16 tiles (`tdpbf16ps`; Intel Sapphire Rapids and later, Linux 5.16+).
    /// Its sums are rounded in the hardware's own order, not the
    /// [documented one](self#summation-order-the-same-for-every-isa-but-amx), within the same bound.
    Amx,
}

impl Bf16Isa {
    /// The fastest instruction set this CPU supports.
    pub fn detect() -> Bf16Isa {
        if Bf16Isa::Amx.is_available() {
            Bf16Isa::Amx
        } else if Bf16Isa::Avx512Bf16.is_available() {
            Bf16Isa::Avx512Bf16
        } else if Bf16Isa::NeonBf16.is_available() {
            Bf16Isa::NeonBf16
        } else {
            Bf16Isa::Portable
        }
    }

    /// Whether this CPU (and this build's target architecture) can run the instruction set.
    pub fn is_available(self) -> bool {
        match self {
            Bf16Isa::Portable => true,
            Bf16Isa::Avx512Bf16 => {
                #[cfg(target_arch = "x86_64")]
                {
                    avx512_bf16::Avx512Bf16::detect().is_some()
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    false
                }
            }
            Bf16Isa::NeonBf16 => {
                #[cfg(target_arch = "aarch64")]
                {
                    neon_bf16::NeonBf16::detect().is_some()
                }
                #[cfg(not(target_arch = "aarch64"))]
                {
                    false
                }
            }
            Bf16Isa::Amx => amx::Bf16::detect().is_some(),
        }
    }

    /// Short human-readable name (`"portable"`, `"avx512-bf16"`, `"neon-bf16"`, `"amx-bf16"`).
    pub fn name(self) -> &'static str {
        match self {
            Bf16Isa::Portable => "portable",
            Bf16Isa::Avx512Bf16 => "avx512-bf16",
            Bf16Isa::NeonBf16 => "neon-bf16",
            Bf16Isa::Amx => "amx-bf16",
        }
    }

    /// Every instruction set available on this CPU, portable first.
    pub fn all_available() -> Vec<Bf16Isa> {
        [
            Bf16Isa::Portable,
            Bf16Isa::Avx512Bf16,
            Bf16Isa::NeonBf16,
            Bf16Isa::Amx,
        ]
        .into_iter()
        .filter(|i| i.is_available())
        .collect()
    }
}

/// f32 → bf16 bits, round to nearest even (NaN stays NaN, ±inf stays ±inf).
///
/// A NaN keeps its sign and the top of its payload and is made quiet; finite values whose
/// rounding exceeds the largest bf16 become ±inf.
///
/// Branch-free, so that loops over it vectorise.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    (pack::round_high(x.to_bits()) >> 16) as u16
}

/// bf16 bits → f32 (exact).
#[inline(always)]
pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// Weights `m × k` (row-major f32 on input) rounded to bf16 once and packed for the kernels
/// (half the memory of f32).
///
/// Layout: see the [module documentation](self#packed-layouts).
#[derive(Debug, Clone)]
pub struct PackedBf16Weights {
    /// `⌈m/8⌉` tiles × `⌈k/2⌉` pairs × 8 rows, each a pair of bf16 (even element low).
    /// On a CPU that runs the AMX kernel it is made from `amx` on first use (by another
    /// isa), so that the weights are held once.
    data: OnceLock<Vec<u32>>,
    /// The AMX layout of the same pairs, when this CPU runs the AMX kernel.
    amx: Option<amx::AmxWeights>,
    m: usize,
    k: usize,
}

impl PackedBf16Weights {
    /// Rounds `a` (row-major `m × k`) to bf16 and packs it (in a second layout too when this
    /// CPU runs the AMX kernel).
    ///
    /// # Panics
    /// If `a.len() != m·k` (or that product overflows).
    pub fn new(a: &[f32], m: usize, k: usize) -> Self {
        let len = m.checked_mul(k);
        assert!(
            len == Some(a.len()),
            "PackedBf16Weights::new: a has {} elements, {m}×{k} expected",
            a.len()
        );
        let kp = k.div_ceil(2);
        let tiles = m.div_ceil(MR);
        let mut data = vec![0u32; tiles * kp * MR];
        if kp > 0 {
            for (tile, dst) in data.chunks_exact_mut(kp * MR).enumerate() {
                for r in 0..MR.min(m - tile * MR) {
                    let row = &a[(tile * MR + r) * k..][..k];
                    for (t, pair) in row.chunks(2).enumerate() {
                        let lo = u32::from(to_bf16(pair[0]));
                        let hi = pair.get(1).map_or(0, |&x| u32::from(to_bf16(x)));
                        dst[t * MR + r] = lo | (hi << 16);
                    }
                }
            }
        }
        let amx = amx::Bf16::detect().map(|_| {
            amx::AmxWeights::new(m, kp, |row, t| data[((row / MR) * kp + t) * MR + row % MR])
        });
        let data = if amx.is_some() {
            OnceLock::new()
        } else {
            OnceLock::from(data)
        };
        PackedBf16Weights { data, amx, m, k }
    }

    /// The layout of the non-AMX kernels (made from the AMX layout on first use if needed).
    fn data(&self) -> &[u32] {
        self.data.get_or_init(|| {
            let Some(aw) = &self.amx else {
                unreachable!("PackedBf16Weights holds one of its layouts")
            };
            let kp = self.k.div_ceil(2);
            let mut data = vec![0u32; self.m.div_ceil(MR) * kp * MR];
            if kp > 0 {
                for (tile, dst) in data.chunks_exact_mut(kp * MR).enumerate() {
                    for r in 0..MR.min(self.m - tile * MR) {
                        for t in 0..kp {
                            dst[t * MR + r] = aw.at(tile * MR + r, t);
                        }
                    }
                }
            }
            data
        })
    }

    /// Number of rows `m` (output channels).
    pub fn rows(&self) -> usize {
        self.m
    }

    /// Depth `k` (the inner dimension).
    pub fn depth(&self) -> usize {
        self.k
    }

    /// Bytes of packed data held: about `2·m·k` (one layout: the AMX one on CPUs that run it,
    /// plus the other one once a non-AMX kernel has been asked for).
    pub fn bytes(&self) -> usize {
        self.data.get().map_or(0, |d| d.len() * 4)
            + self.amx.as_ref().map_or(0, amx::AmxWeights::bytes)
    }
}

/// c[m×n] (f32 row-major, row stride n, overwritten) = bf16(A) · bf16(B), B given row-major
/// k×n (row stride n) either as f32, rounded to bf16 (RNE, as [`to_bf16`]) while it is packed,
/// or as bf16 bits (`u16`); products of bf16 values are exact in f32 and are accumulated in
/// f32. Both forms of the same values give the same bits.
///
/// An isa that is not available runs the portable kernel (never an illegal instruction). The
/// result does not depend on the thread count, and is the same for every isa but AMX (see the
/// [summation order](self#summation-order-the-same-for-every-isa-but-amx) for that and the
/// subnormal caveat).
///
/// `scratch` receives the packed `B`; it is grown only when too short, so repeated calls with
/// the same or smaller shapes do not allocate.
///
/// # Panics
/// If `b.len() != k·n` or `c.len() != m·n` (`m`, `k` from `w`).
pub fn gemm_bf16<T: Bf16Input>(
    w: &PackedBf16Weights,
    b: &[T],
    n: usize,
    c: &mut [f32],
    scratch: &mut Vec<u16>,
    par: Parallelism,
    isa: Bf16Isa,
) {
    gemm_bf16_map(w, b, n, c, scratch, par, isa, |_, _, _| {});
}

/// [`gemm_bf16`], then `map(row, col0, values)` on every finished segment of a row of `c`
/// (`values` = `c[row][col0 .. col0 + values.len()]`, holding the sums on entry), while it
/// is still in cache: e.g. a convolution's bias, residual and ReLU. Every element of `c`
/// goes through `map` exactly once, possibly from several threads at a time.
///
/// # Panics
/// As [`gemm_bf16`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_map<T: Bf16Input>(
    w: &PackedBf16Weights,
    b: &[T],
    n: usize,
    c: &mut [f32],
    scratch: &mut Vec<u16>,
    par: Parallelism,
    isa: Bf16Isa,
    map: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    gemm_bf16_rows(w, b, n, c, scratch, par, isa, &map);
}

/// What [`gemm_bf16_rows`] does with each finished segment of `c` (see [`gemm_bf16_map`]):
/// a closure, or a type whose `map` is `#[inline(always)]`, which then compiles into the
/// AVX-512 copy of the AMX loop (a closure shared by several products stays a call to its
/// baseline code there).
pub(crate) trait RowMap: Sync {
    /// `values` = `c[row][col0 ..]`, holding the sums on entry.
    fn map(&self, row: usize, col0: usize, values: &mut [f32]);

    /// [`RowMap::map`] of the sums `sums` into `values` (same length).
    #[inline(always)]
    fn map_from(&self, row: usize, col0: usize, sums: &[f32], values: &mut [f32]) {
        values.copy_from_slice(sums);
        self.map(row, col0, values);
    }
}

impl<F: Fn(usize, usize, &mut [f32]) + Sync> RowMap for F {
    #[inline(always)]
    fn map(&self, row: usize, col0: usize, values: &mut [f32]) {
        self(row, col0, values)
    }
}

/// [`gemm_bf16_map`] with any [`RowMap`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bf16_rows<T: Bf16Input>(
    w: &PackedBf16Weights,
    b: &[T],
    n: usize,
    c: &mut [f32],
    scratch: &mut Vec<u16>,
    par: Parallelism,
    isa: Bf16Isa,
    map: &impl RowMap,
) {
    let (m, k) = (w.m, w.k);
    assert!(
        k.checked_mul(n) == Some(b.len()),
        "gemm_bf16: b has {} elements, {k}×{n} expected",
        b.len()
    );
    assert!(
        m.checked_mul(n) == Some(c.len()),
        "gemm_bf16: c has {} elements, {m}×{n} expected",
        c.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        for (r, row) in c.chunks_exact_mut(n).enumerate() {
            map.map(r, 0, row);
        }
        return;
    }
    let input = AmxInput::Matrix(b);
    if gemm_amx(w, input, n, c, scratch, par, isa, map, amx::no_hand_on()).is_some() {
        return;
    }
    let kernel = Kernel::new(isa);
    // The packing loop with AVX-512 for the x86 kernels that need it anyway.
    let wide = Wide::detect(matches!(isa, Bf16Isa::Avx512Bf16 | Bf16Isa::Amx));
    let kp = k.div_ceil(2);
    let len = packed_b_len(k, n);
    if scratch.len() < len {
        scratch.resize(len, 0);
    }
    let packed = &mut scratch[..len];
    let panel_len = NR * kp * 2;
    match par {
        Parallelism::Sequential => {
            for (p, dst) in packed.chunks_mut(panel_len).enumerate() {
                pack_b_panel(wide, b, k, n, p * NR, dst.len() / (2 * kp), dst);
            }
        }
        Parallelism::Rayon => {
            crate::kernels::par::for_each_chunk(packed, panel_len, |p, dst| {
                pack_b_panel(wide, b, k, n, p * NR, dst.len() / (2 * kp), dst)
            });
        }
    }
    let job = RowsJob {
        kernel,
        w,
        packed: &scratch[..len],
        n,
    };
    let rows_block = |c_rows: &mut [f32], tile0: usize| {
        job.run(wide, c_rows, tile0);
        for (r, row) in c_rows.chunks_exact_mut(n).enumerate() {
            map.map(tile0 * MR + r, 0, row);
        }
    };
    match par {
        Parallelism::Sequential => rows_block(c, 0),
        Parallelism::Rayon => {
            // Whole tiles of rows per task; about four tasks per thread when `m` allows. The
            // split changes only who computes an element, never how.
            let tiles = m.div_ceil(MR);
            let tasks = 4 * crate::kernels::par::threads();
            let per_task = tiles.div_ceil(tasks).clamp(1, 8);
            crate::kernels::par::for_each_chunk(c, per_task * MR * n, |i, rows| {
                rows_block(rows, i * per_task)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_round_trip_and_ties() {
        assert_eq!(to_bf16(1.0), 0x3F80);
        assert_eq!(from_bf16(0x3F80), 1.0);
        // 1 + 2⁻⁸ is a tie between 1 and 1 + 2⁻⁷: even (1) wins.
        assert_eq!(to_bf16(1.0 + f32::EPSILON * 2f32.powi(15)), 0x3F80);
        assert_eq!(to_bf16(f32::MAX), 0x7F80);
        assert_eq!(to_bf16(f32::INFINITY), 0x7F80);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    }

    #[test]
    fn packed_b_len_matches_panels() {
        assert_eq!(packed_b_len(3, 49), (48 + 16) * 2 * 2);
        assert_eq!(packed_b_len(4, 96), 96 * 2 * 2);
    }
}
