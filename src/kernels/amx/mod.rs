//! AMX tile products (Intel Sapphire Rapids and later), shared by the int8 and bf16 kernels.
//!
//! One tile instruction multiplies a 16 × 64-byte tile of weights (16 rows, 16 words of `k`
//! each) by a 16 × 64-byte tile of activations (16 words of `k`, for 16 columns) and adds the
//! products to a 16 × 16 tile of 32-bit sums:
//!
//! | op | instruction | a word holds | multiply-adds | sums |
//! |---|---|---|---|---|
//! | [`Int8`] | `tdpbsud` | four `k` (`i8` weights, `u8` activations) | 16,384 | exact `i32` |
//! | [`Bf16`] | `tdpbf16ps` | two `k` (bf16, even `k` in the low half) | 8,192 | `f32` |
//!
//! In a register-only loop one Emerald Rapids core ran 0.9–2.6·10¹² `tdpbsud` and 1.3·10¹²
//! `tdpbf16ps` multiply-adds per second (the host was noisy), against about 1.0·10¹¹ for
//! `vpdpbusd` and 1.3·10¹⁰ for `vdpbf16ps`.
//!
//! The weights have their own layout ([`AmxWeights`]): row tiles of 16 rows, each cut into
//! chunks of 16 words stored as one contiguous 1 KiB tile. The activations come in panels of
//! 16 columns with the words padded to a multiple of 16 (so that every activation tile is
//! 1 KiB too), in pairs (an odd last panel is followed by a zero one). A task computes a block
//! of 32 rows × 32 columns in four sum tiles (two weight tiles times two activation tiles per
//! chunk).
//!
//! Linux allocates the tile registers' save area only for processes that ask for it
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); [`Int8::detect`] and [`Bf16::detect`] ask once and
//! report the op unavailable when the CPU, the kernel or the permission is missing. Without
//! that request the first tile instruction would kill the process, which is why nothing here
//! runs before the request succeeded.

pub(crate) mod direct;
mod product;
mod subsample;
mod to_image;

use super::aligned::LineBuf;

pub(crate) use product::{
    no_hand_on, prefetch_read, product_or_handoff, BlockSink, Emit, HandOn, Handoff, PanelElem,
};
pub(crate) use subsample::subsample_panels;
pub(crate) use to_image::product_to_image;
use to_image::SharedImage;

/// Columns of a pair of activation panels: two tiles of 16.
pub(crate) const COLS: usize = 32;
/// Rows of a task's block: two tiles of 16.
pub(crate) const ROWS: usize = 32;
/// Words (of `k`) per tile row.
pub(crate) const WORDS: usize = 16;
/// Words of one tile (16 rows of 16).
const TILE: usize = 16 * WORDS;

/// A tile product: which instruction, and the type of its sums.
pub(crate) trait AmxOp: Copy + Send + Sync {
    /// Type of a sum (`i32` or `f32`).
    type Sum: Copy + Default;
    /// Whether the op is `tdpbf16ps` (else `tdpbsud`).
    const BF16: bool;
}

/// Proof that the CPU has AMX-TILE and AMX-INT8 and that the operating system lets this
/// process use them: a value exists only if [`Int8::detect`] found them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Int8(());

/// Proof that the CPU has AMX-TILE and AMX-BF16 and that the operating system lets this
/// process use them: a value exists only if [`Bf16::detect`] found them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bf16(());

impl AmxOp for Int8 {
    type Sum = i32;
    const BF16: bool = false;
}

impl AmxOp for Bf16 {
    type Sum = f32;
    const BF16: bool = true;
}

/// What the CPU and the operating system allow.
#[derive(Debug, Clone, Copy, Default)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Usable {
    /// AMX-INT8 usable.
    pub int8: bool,
    /// AMX-BF16 usable.
    pub bf16: bool,
}

/// Asks the CPU and the OS (called once per process, by [`super::cpu::features`]).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn usable() -> Usable {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        os::request()
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        Usable::default()
    }
}

impl Int8 {
    /// The int8 op, if this CPU and operating system run it.
    pub(crate) fn detect() -> Option<Int8> {
        super::cpu::features().amx_int8.then_some(Int8(()))
    }
}

impl Bf16 {
    /// The bf16 op, if this CPU and operating system run it.
    pub(crate) fn detect() -> Option<Bf16> {
        super::cpu::features().amx_bf16.then_some(Bf16(()))
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod os {
    use super::Usable;

    /// Which ops the CPU reports (AMX-TILE with AMX-INT8, AMX-BF16) once the OS enables the
    /// tile state in XCR0 and Linux grants this process the tile data (`ARCH_REQ_XCOMP_PERM`,
    /// Linux 5.16+); nothing if any of these is missing.
    // `__cpuid` is a safe function in newer Rust and an unsafe one in the minimum version.
    #[allow(unused_unsafe)]
    pub(super) fn request() -> Usable {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        let none = Usable::default();
        // SAFETY: `cpuid` exists on every x86-64 CPU; leaf 7 is read only when the maximum
        // leaf (leaf 0's eax) reaches it.
        let (max_leaf, leaf1) = unsafe { (__cpuid(0).eax, __cpuid(1)) };
        if max_leaf < 7 {
            return none;
        }
        // SAFETY: as above.
        let leaf7 = unsafe { __cpuid_count(7, 0) };
        let bf16 = leaf7.edx >> 22 & 1 == 1;
        let tile = leaf7.edx >> 24 & 1 == 1;
        let int8 = leaf7.edx >> 25 & 1 == 1;
        let osxsave = leaf1.ecx >> 27 & 1 == 1;
        if !(tile && (int8 || bf16) && osxsave) {
            return none;
        }
        // XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA): the OS saves the tile state.
        let xcr0 = xgetbv0();
        if xcr0 >> 17 & 3 != 3 {
            return none;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM takes two integers and only changes
        // which extended states this process may use; it touches no memory of ours.
        let r = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        if r == 0 {
            Usable { int8, bf16 }
        } else {
            none
        }
    }

    /// XCR0 (`xgetbv` with ecx = 0).
    fn xgetbv0() -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: only called when CPUID reported OSXSAVE, so `xgetbv` is enabled; it reads
        // a register and writes edx:eax.
        unsafe {
            std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
                options(nomem, nostack, preserves_flags));
        }
        u64::from(hi) << 32 | u64::from(lo)
    }
}

/// Weights in the AMX layout: `m.div_ceil(ROWS)·2` row tiles of 16 rows, each
/// `chunks` tiles of 16 rows × [`WORDS`] words (zero-padded), one after another.
#[derive(Debug, Clone, Default)]
pub(crate) struct AmxWeights {
    tiles: LineBuf<u32>,
    chunks: usize,
}

impl AmxWeights {
    /// Packs `m` rows of `words` words each, `word(row, w)` giving word `w` of row `row`.
    pub(crate) fn new(m: usize, words: usize, word: impl Fn(usize, usize) -> u32) -> AmxWeights {
        let mut w = AmxWeights::default();
        w.refill(m, words, word);
        w
    }

    /// [`AmxWeights::new`] into `self`, reusing its memory (for operands packed per call,
    /// such as the kNN screen's queries).
    pub(crate) fn refill(&mut self, m: usize, words: usize, word: impl Fn(usize, usize) -> u32) {
        let chunks = words.div_ceil(WORDS);
        let row_tiles = m.div_ceil(ROWS) * 2;
        self.chunks = chunks;
        let tiles = &mut self.tiles;
        tiles.resize(row_tiles * chunks * TILE);
        if chunks == 0 {
            return;
        }
        for (rt, block) in tiles.chunks_exact_mut(chunks * TILE).enumerate() {
            for (q, tile) in block.chunks_exact_mut(TILE).enumerate() {
                for (r, dst) in tile.chunks_exact_mut(WORDS).enumerate() {
                    let row = rt * 16 + r;
                    if row >= m {
                        break;
                    }
                    let w0 = q * WORDS;
                    for (i, d) in dst.iter_mut().enumerate().take(words - w0) {
                        *d = word(row, w0 + i);
                    }
                }
            }
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.tiles.len() * 4
    }

    /// Chunks of [`WORDS`] words.
    pub(crate) fn chunks(&self) -> usize {
        self.chunks
    }

    /// Blocks of 32 rows (the last one zero-padded).
    pub(crate) fn row_blocks(&self) -> usize {
        match self.chunks {
            0 => 0,
            c => self.tiles.len() / (2 * c * TILE),
        }
    }

    /// Word `w` of row `row` (zero in the padding).
    pub(crate) fn at(&self, row: usize, w: usize) -> u32 {
        let (rt, r) = (row / 16, row % 16);
        let (q, t) = (w / WORDS, w % WORDS);
        self.tiles[((rt * self.chunks + q) * 16 + r) * WORDS + t]
    }

    /// The `2·chunks` tiles of the row block `block` (32 rows).
    fn block(&self, block: usize) -> &[u32] {
        let len = 2 * self.chunks * TILE;
        &self.tiles[block * len..(block + 1) * len]
    }
}

/// Words of packed activations for `n` columns and `chunks` chunks: panels of 16 columns, an
/// even number of them.
pub(crate) fn packed_words(chunks: usize, n: usize) -> usize {
    n.div_ceil(COLS) * chunks * WORDS * COLS
}

/// The tile configuration: palette 1, eight tiles of 16 rows × 64 bytes.
#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

#[cfg(target_arch = "x86_64")]
static CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Chunks per k-block: the block's two weight row tiles for one k-block (24 KiB) stay in the
/// level-1 cache while they meet every panel of a group.
const K_BLOCK: usize = 12;
/// Panel pairs per group: their sums (4 KiB each, in a [`SumsBuf`]) stay in cache between
/// k-blocks.
const GROUP: usize = 8;

/// Row blocks `blocks` (of 32 rows each) of `w` times every column of the packed
/// activations `packed` (pairs of 16-column panels of `16·chunks` words each): calls
/// `emit.block(block, col0, &sums)` once per row block and pair with the 32 × 32 sums
/// `sums[r][j] = Σ_k a[32·block + r][k] · b[k][col0 + j]` computed by `op`.
///
/// Order: panels in groups of [`GROUP`] pairs, outermost, so that a group's activations stay
/// in the level-2 cache while every row block of the range meets them (the activations are
/// read from memory once per call, the weights once per group); within a group and row
/// block, k-blocks of [`K_BLOCK`] chunks outside and pairs inside, so that the weights of a
/// k-block stay in the level-1 cache while they meet the group. Every sum is accumulated chunk
/// after chunk in increasing `k` (stored and reloaded between k-blocks, which changes no bit),
/// so the result depends neither on the blocking nor on which thread computes which blocks.
///
/// Always inlined, so that `emit` is compiled with the features of the caller (the AVX-512
/// copy of [`product`]'s task).
#[inline(always)]
pub(crate) fn blocks<O: AmxOp, P: Copy>(
    op: O,
    w: &AmxWeights,
    blocks: std::ops::Range<usize>,
    packed: &[P],
    sums: &mut SumsBuf<O::Sum>,
    emit: &mut impl BlockSink<O::Sum>,
) {
    let chunks = w.chunks;
    // `packed` holds 32-bit words as `P` values (`u32`, or pairs of `u16`).
    const { assert!(4 % std::mem::size_of::<P>() == 0) };
    let per_word = 4 / std::mem::size_of::<P>();
    let panel_words = chunks * WORDS * COLS * per_word;
    let tile = TILE * per_word;
    assert!(
        chunks > 0 && packed.len().is_multiple_of(panel_words),
        "amx blocks: short panels"
    );
    let panels = packed.len() / panel_words;
    let sums = &mut sums.0;
    let _ = op;
    // SAFETY: `op` exists only when its `detect` found AMX-TILE and the op's instructions
    // and Linux granted this process the tile data; the configuration is a static 64-byte
    // block.
    unsafe { configure() };
    for g0 in (0..panels).step_by(GROUP) {
        let group = GROUP.min(panels - g0);
        for block in blocks.clone() {
            // The sink's output lines for this row block (32 rows × the group's columns),
            // asked for now, arrive while the tiles compute: without this the epilogues of
            // the 1×1 convolutions waited on their stores (int8 WRN-50-2 backbone 13.7 →
            // 12.6 ms, medians of 16 alternations).
            emit.prefetch(block, g0 * COLS, group * COLS);
            let a = w.block(block);
            assert!(a.len() == 2 * chunks * TILE, "amx blocks: short weights");
            for q0 in (0..chunks).step_by(K_BLOCK) {
                let len = K_BLOCK.min(chunks - q0);
                for (i, s) in sums.iter_mut().enumerate().take(group) {
                    let pair = &packed[(g0 + i) * panel_words..(g0 + i + 1) * panel_words];
                    let (p0, p1) = pair.split_at(panel_words / 2);
                    let b0 = &p0[q0 * tile..(q0 + len) * tile];
                    let b1 = &p1[q0 * tile..(q0 + len) * tile];
                    let a0 = &a[q0 * TILE..(q0 + len) * TILE];
                    let a1 = &a[(chunks + q0) * TILE..(chunks + q0 + len) * TILE];
                    // SAFETY: tiles configured above by this thread (nothing in between uses
                    // tiles); `a0`, `a1`, `b0` and `b1` hold `len` tiles of 1 KiB each, and
                    // `len ≥ 1`; `op` proves the instruction available.
                    unsafe { chunk_run::<O, P>(a0, a1, b0, b1, len, q0 > 0, s) };
                }
            }
            for (i, s) in sums.iter().enumerate().take(group) {
                emit.block(block, (g0 + i) * COLS, &s.0);
            }
        }
    }
    // SAFETY: as for `configure`; releases the tiles this thread configured.
    unsafe { release() };
}

/// The sums of a group of panels: scratch of [`blocks`], made once per thread (32 KiB)
/// rather than zeroed on every call.
pub(crate) struct SumsBuf<S>(Box<[Sums<S>; GROUP]>);

impl<S> std::fmt::Debug for SumsBuf<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SumsBuf")
    }
}

impl<S: Copy + Default> SumsBuf<S> {
    /// A zeroed buffer.
    pub(crate) fn new() -> SumsBuf<S> {
        SumsBuf(Box::new([Sums([[S::default(); COLS]; ROWS]); GROUP]))
    }
}

/// The sums of one 32 × 32 block, aligned for the tile loads and stores.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Sums<S>([[S; COLS]; ROWS]);

/// Loads the tile configuration (eight tiles of 16 × 64 bytes; all tiles zeroed).
///
/// # Safety
/// The CPU must run AMX-TILE with the tile data granted to this process.
#[cfg(target_arch = "x86_64")]
unsafe fn configure() {
    // SAFETY: caller's contract; `CONFIG` is a 64-byte aligned static, read only.
    unsafe {
        std::arch::asm!("ldtilecfg [{cfg}]", cfg = in(reg) &CONFIG, options(nostack, readonly, preserves_flags))
    };
}

/// Releases the tile registers (`tilerelease`).
///
/// # Safety
/// As for [`configure`].
#[cfg(target_arch = "x86_64")]
unsafe fn release() {
    // SAFETY: caller's contract; `tilerelease` touches no memory.
    unsafe { std::arch::asm!("tilerelease", options(nostack, nomem, preserves_flags)) };
}

/// Never called: no [`AmxOp`] has a value off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn configure() {
    unreachable!("AMX ops exist only on x86-64")
}

/// Never called: no [`AmxOp`] has a value off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn release() {}

/// Never called: no [`AmxOp`] has a value off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn chunk_run<O: AmxOp, P>(
    _: &[u32],
    _: &[u32],
    _: &[P],
    _: &[P],
    _: usize,
    _: bool,
    _: &mut Sums<O::Sum>,
) {
    let _ = O::BF16;
    unreachable!("AMX ops exist only on x86-64")
}

/// `s += a · b` over `len` chunks of [`WORDS`] words (or `s = a · b` when `accumulate` is
/// false) with the instruction of `O`: `a0` and `a1` the two weight row tiles of each chunk,
/// `b0` and `b1` the two activation column tiles (16 columns each); every tile is 1 KiB, one
/// chunk after another.
///
/// # Safety
/// [`configure`] must have run on this thread with no tile use since other than this
/// function; the CPU must run `O`'s instruction (a value of `O` exists); `a0`, `a1`, `b0` and
/// `b1` must hold `len·1024` bytes each, and `len ≥ 1`.
#[cfg(target_arch = "x86_64")]
unsafe fn chunk_run<O: AmxOp, P>(
    a0: &[u32],
    a1: &[u32],
    b0: &[P],
    b1: &[P],
    len: usize,
    accumulate: bool,
    s: &mut Sums<O::Sum>,
) {
    use std::arch::asm;
    debug_assert!(
        len >= 1
            && a0.len() >= len * TILE
            && a1.len() >= len * TILE
            && std::mem::size_of_val(b0) >= len * 1024
            && std::mem::size_of_val(b1) >= len * 1024
    );
    const { assert!(std::mem::size_of::<O::Sum>() == 4) };
    let out = s.0.as_mut_ptr().cast::<u8>();
    // The lower 16 rows of the block start 16 rows of 128 bytes later.
    let out2 = out.wrapping_add(16 * COLS * 4);
    // SAFETY: each tile load reads 16 rows of 64 bytes at stride 64, at `x + 1024·q` for
    // x in a0, a1, b0, b1 and q < len, all inside the slices (caller's contract); the sum
    // tiles are read and written as 16 rows of 64 bytes at the four corners of the
    // 32 × 128-byte `s` (stride 128). The loop runs `len ≥ 1` times. Compiled code never uses
    // the tile registers.
    unsafe {
        if accumulate {
            asm!(
                "tileloadd tmm0, [{out} + {s128}*1]",
                "tileloadd tmm1, [{out} + {s128}*1 + 64]",
                "tileloadd tmm2, [{out2} + {s128}*1]",
                "tileloadd tmm3, [{out2} + {s128}*1 + 64]",
                out = in(reg) out,
                out2 = in(reg) out2,
                s128 = in(reg) 128usize,
                options(nostack, readonly, preserves_flags),
            );
        } else {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem, preserves_flags),
            );
        }
        // One loop per instruction; the assembler text differs only in the product's name.
        macro_rules! chunk_loop {
            ($op:literal) => {
                asm!(
                    "2:",
                    "tileloadd tmm4, [{a0} + {s64}*1]",
                    "tileloadd tmm6, [{b0} + {s64}*1]",
                    concat!($op, " tmm0, tmm4, tmm6"),
                    "tileloadd tmm7, [{b1} + {s64}*1]",
                    concat!($op, " tmm1, tmm4, tmm7"),
                    "tileloadd tmm5, [{a1} + {s64}*1]",
                    concat!($op, " tmm2, tmm5, tmm6"),
                    concat!($op, " tmm3, tmm5, tmm7"),
                    "add {a0}, 1024",
                    "add {a1}, 1024",
                    "add {b0}, 1024",
                    "add {b1}, 1024",
                    "dec {n}",
                    "jnz 2b",
                    "tilestored [{out} + {s128}*1], tmm0",
                    "tilestored [{out} + {s128}*1 + 64], tmm1",
                    "tilestored [{out2} + {s128}*1], tmm2",
                    "tilestored [{out2} + {s128}*1 + 64], tmm3",
                    a0 = inout(reg) a0.as_ptr() => _,
                    a1 = inout(reg) a1.as_ptr() => _,
                    b0 = inout(reg) b0.as_ptr() => _,
                    b1 = inout(reg) b1.as_ptr() => _,
                    n = inout(reg) len => _,
                    out = in(reg) out,
                    out2 = in(reg) out2,
                    s64 = in(reg) 64usize,
                    s128 = in(reg) 128usize,
                    options(nostack),
                )
            };
        }
        if O::BF16 {
            chunk_loop!("tdpbf16ps");
        } else {
            chunk_loop!("tdpbsud");
        }
    }
}
