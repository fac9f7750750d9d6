//! The AMX int8 kernel: `tdpbsud` on tile registers (Intel Sapphire Rapids and later).
//!
//! One `tdpbsud` multiplies a 16 × 64 tile of signed bytes (16 weight rows, 64 consecutive
//! `k`) by a 16 × 64-byte tile of unsigned bytes (16 groups of four `k`, for 16 columns: the
//! activation panels' layout) and adds the exact products to a 16 × 16 tile of `i32` sums:
//! 16,384 multiply-adds per instruction: 0.9–2.3·10¹² per second on one Emerald Rapids core
//! in a register-only loop (the host was noisy), against about 1.0·10¹¹ for `vpdpbusd`.
//!
//! The weights have their own layout ([`AmxWeights`]): row tiles of 16 rows, each cut into
//! chunks of 64 `k` stored as one contiguous 1 KiB tile. The activations are packed by
//! [`super::pack_b`] into panels of 16 columns with `k` padded to a multiple of 64 (so that
//! every activation tile is 1 KiB too), in pairs (an odd last panel is followed by a zero
//! one). A task computes a block of 32 rows × 32 columns in four sum tiles (two weight tiles
//! times two activation tiles per chunk of 64 `k`).
//!
//! Linux allocates the tile registers' save area only for processes that ask for it
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); [`Amx::detect`] asks once and reports the kernel
//! unavailable when the CPU, the kernel or the permission is missing. Without that request
//! the first tile instruction would kill the process, which is why nothing here runs before
//! the request succeeded.

use super::MAX_DEPTH;

/// Columns of an activation panel for this kernel: two tiles of 16.
pub(super) const COLS: usize = 32;
/// Rows of a task's block: two tiles of 16.
pub(super) const ROWS: usize = 32;
/// `k` per tile.
const KT: usize = 64;

/// Proof that the CPU has AMX-TILE and AMX-INT8 and that the operating system lets this
/// process use them: a value exists only if [`Amx::detect`] found them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Amx(());

impl Amx {
    /// The kernel, if this CPU and operating system run it (asked once per process, then
    /// remembered: the answer cannot change while the process runs).
    pub(super) fn detect() -> Option<Amx> {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            if *USABLE.get_or_init(os::request) {
                return Some(Amx(()));
            }
        }
        None
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod os {
    /// Whether the CPU reports AMX-TILE and AMX-INT8, the OS enables the tile state in XCR0,
    /// and Linux grants this process the tile data (`ARCH_REQ_XCOMP_PERM`, Linux 5.16+).
    // `__cpuid` is a safe function in newer Rust and an unsafe one in the minimum version.
    #[allow(unused_unsafe)]
    pub(super) fn request() -> bool {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // SAFETY: `cpuid` exists on every x86-64 CPU; leaf 7 is read only when the maximum
        // leaf (leaf 0's eax) reaches it.
        let (max_leaf, leaf1) = unsafe { (__cpuid(0).eax, __cpuid(1)) };
        if max_leaf < 7 {
            return false;
        }
        // SAFETY: as above.
        let leaf7 = unsafe { __cpuid_count(7, 0) };
        let tile = leaf7.edx >> 24 & 1 == 1;
        let int8 = leaf7.edx >> 25 & 1 == 1;
        let osxsave = leaf1.ecx >> 27 & 1 == 1;
        if !(tile && int8 && osxsave) {
            return false;
        }
        // XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA): the OS saves the tile state.
        let xcr0 = xgetbv0();
        if xcr0 >> 17 & 3 != 3 {
            return false;
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
        r == 0
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

/// Signed 8-bit weights in the AMX layout: `m.div_ceil(ROWS)·2` row tiles of 16 rows, each
/// `k.div_ceil(64)` tiles of 16 × 64 bytes (zero-padded), one after another.
#[derive(Debug, Clone)]
pub(super) struct AmxWeights {
    tiles: Vec<i8>,
    chunks: usize,
}

impl AmxWeights {
    /// Packs the row-major `m × k` matrix `a`.
    pub(super) fn new(a: &[i8], m: usize, k: usize) -> AmxWeights {
        assert_eq!(a.len(), m * k, "AmxWeights: a must hold m·k values");
        assert!(k <= MAX_DEPTH, "AmxWeights: depth {k} exceeds {MAX_DEPTH}");
        let chunks = k.div_ceil(KT);
        let row_tiles = m.div_ceil(ROWS) * 2;
        let mut tiles = vec![0i8; row_tiles * chunks * 16 * KT];
        for (rt, block) in tiles.chunks_exact_mut(chunks * 16 * KT).enumerate() {
            for (q, tile) in block.chunks_exact_mut(16 * KT).enumerate() {
                for (r, dst) in tile.chunks_exact_mut(KT).enumerate() {
                    let row = rt * 16 + r;
                    if row >= m {
                        break;
                    }
                    let k0 = q * KT;
                    let len = KT.min(k - k0);
                    dst[..len].copy_from_slice(&a[row * k + k0..row * k + k0 + len]);
                }
            }
        }
        AmxWeights { tiles, chunks }
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.tiles.len()
    }

    /// Chunks of 64 `k`.
    pub(super) fn chunks(&self) -> usize {
        self.chunks
    }

    /// The weight at row `row`, depth `kk` (zero in the padding).
    #[cfg(test)]
    pub(super) fn at(&self, row: usize, kk: usize) -> i8 {
        let (rt, r) = (row / 16, row % 16);
        let (q, t) = (kk / KT, kk % KT);
        self.tiles[((rt * self.chunks + q) * 16 + r) * KT + t]
    }

    /// The `2·chunks` tiles of the row block `block` (32 rows).
    fn block(&self, block: usize) -> &[i8] {
        let len = 2 * self.chunks * 16 * KT;
        &self.tiles[block * len..(block + 1) * len]
    }
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

/// Chunks of 64 `k` per k-block: the block's two weight row tiles for one k-block (24 KiB)
/// stay in the level-1 cache while they meet every panel of a group.
const K_BLOCK: usize = 12;
/// Panel pairs per group: their sums (4 KiB each, in a [`SumsBuf`]) stay in cache between
/// k-blocks.
const GROUP: usize = 8;

impl Amx {
    /// One row block: for the 32 rows of block `block` and every column of the packed
    /// activations `packed` (pairs of 16-column panels, `16·chunks` groups of four `k` each),
    /// calls `emit(col0, &sums)` once per pair with the exact 32 × 32 sums
    /// `sums[r][j] = Σ_k a[32·block + r][k] · b[k][col0 + j]`.
    ///
    /// Order: panels in groups of [`GROUP`]; within a group, k-blocks of [`K_BLOCK`] chunks
    /// outside, panels inside, so that the weights of a k-block are read from memory once per
    /// group and the activations once per row block. Integer sums are exact, so the order
    /// does not change the result.
    pub(super) fn block(
        self,
        w: &AmxWeights,
        block: usize,
        packed: &[u32],
        sums: &mut SumsBuf,
        mut emit: impl FnMut(usize, &[[i32; COLS]; ROWS]),
    ) {
        let chunks = w.chunks;
        let a = w.block(block);
        let panel_words = chunks * 16 * COLS;
        assert!(
            chunks > 0
                && a.len() == 2 * chunks * 16 * KT
                && packed.len().is_multiple_of(panel_words),
            "amx block: short panels"
        );
        let panels = packed.len() / panel_words;
        let sums = &mut sums.0;
        let _ = self;
        // SAFETY: `self` exists only when `detect` found AMX-TILE and AMX-INT8 and Linux
        // granted this process the tile data; the configuration is a static 64-byte block.
        unsafe { configure() };
        for g0 in (0..panels).step_by(GROUP) {
            let group = GROUP.min(panels - g0);
            for q0 in (0..chunks).step_by(K_BLOCK) {
                let len = K_BLOCK.min(chunks - q0);
                for (i, s) in sums.iter_mut().enumerate().take(group) {
                    let pair = &packed[(g0 + i) * panel_words..(g0 + i + 1) * panel_words];
                    let (p0, p1) = pair.split_at(panel_words / 2);
                    let b0 = &p0[q0 * 16 * 16..(q0 + len) * 16 * 16];
                    let b1 = &p1[q0 * 16 * 16..(q0 + len) * 16 * 16];
                    let a0 = &a[q0 * 16 * KT..(q0 + len) * 16 * KT];
                    let a1 = &a[(chunks + q0) * 16 * KT..(chunks + q0 + len) * 16 * KT];
                    // SAFETY: tiles configured above by this thread (nothing in between uses
                    // tiles); `a0`, `a1`, `b0` and `b1` hold `len` tiles of 1 KiB each, and
                    // `len ≥ 1`.
                    unsafe { chunk_run(a0, a1, b0, b1, len, q0 > 0, s) };
                }
            }
            for (i, s) in sums.iter().enumerate().take(group) {
                emit((g0 + i) * COLS, &s.0);
            }
        }
        // SAFETY: as for `configure`; releases the tiles this thread configured.
        unsafe { release() };
    }
}

/// The sums of a group of panels: scratch of [`Amx::block`], made once per thread (32 KiB)
/// rather than zeroed on every call.
pub(super) struct SumsBuf(Box<[Sums; GROUP]>);

impl SumsBuf {
    /// A zeroed buffer.
    pub(super) fn new() -> SumsBuf {
        SumsBuf(Box::new([const { Sums([[0; COLS]; ROWS]) }; GROUP]))
    }
}

/// The sums of one 32 × 32 block, aligned for the tile loads and stores.
#[repr(C, align(64))]
struct Sums([[i32; COLS]; ROWS]);

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

/// Never called: [`Amx`] has no value off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn configure() {
    unreachable!("Amx exists only on x86-64")
}

/// Never called: [`Amx`] has no value off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn release() {}

/// Never called: [`Amx`] has no value off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn chunk_run(_: &[i8], _: &[i8], _: &[u32], _: &[u32], _: usize, _: bool, _: &mut Sums) {
    unreachable!("Amx exists only on x86-64")
}

/// `s += a · b` over `len` chunks of 64 `k` (or `s = a · b` when `accumulate` is false):
/// `a0` and `a1` the two weight row tiles of each chunk, `b0` and `b1` the two activation
/// column tiles (16 columns each); every tile is 1 KiB, one chunk after another.
///
/// # Safety
/// [`configure`] must have run on this thread with no tile use since other than this
/// function; `a0` and `a1` must hold `len·1024` bytes, `b0` and `b1` `len·256` words, and
/// `len ≥ 1`.
#[cfg(target_arch = "x86_64")]
unsafe fn chunk_run(
    a0: &[i8],
    a1: &[i8],
    b0: &[u32],
    b1: &[u32],
    len: usize,
    accumulate: bool,
    s: &mut Sums,
) {
    use std::arch::asm;
    debug_assert!(
        len >= 1
            && a0.len() >= len * 1024
            && a1.len() >= len * 1024
            && b0.len() >= len * 256
            && b1.len() >= len * 256
    );
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
        asm!(
            "2:",
            "tileloadd tmm4, [{a0} + {s64}*1]",
            "tileloadd tmm6, [{b0} + {s64}*1]",
            "tdpbsud tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s64}*1]",
            "tdpbsud tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {s64}*1]",
            "tdpbsud tmm2, tmm5, tmm6",
            "tdpbsud tmm3, tmm5, tmm7",
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
        );
    }
}
