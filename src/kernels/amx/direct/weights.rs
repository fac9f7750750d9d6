//! The weights of a direct convolution as AMX `B` tiles.

use super::{COLS, NARROW};
use crate::kernels::aligned::LineBuf;

/// The weights of a `size × size` convolution as AMX `B` tiles for channels-last inputs:
/// per pair of 16-channel output tiles, per chunk (tap `t`, one tile row of input channels
/// from `ch·c`, in the order `t·(cin / ch) + c`, with `ch` = 64 for int8 and 32 for bf16), two
/// tiles of 16 words (four `i8` or two bf16 input channels each, the lowest channel in the low
/// bits) × 16 output channels. For a narrow grid ([`NARROW`] input channels) chunk `ky` holds
/// the window row `ky`: word `w` is pixel `kx = w / (4 / per_word)` of the row (zero for
/// `kx ≥ size`).
#[derive(Debug, Clone)]
pub(crate) struct DirectWeights {
    pub(super) tiles: LineBuf<u32>,
    pub(super) m: usize,
    pub(super) cin: usize,
    pub(super) size: usize,
    /// Input channels per word.
    pub(super) per_word: usize,
}

impl DirectWeights {
    /// Packs the `m × (cin·size²)` int8 weights `q` (row-major, column `ci·size² + t` for
    /// input channel `ci` and tap `t = ky·size + kx`, the im2col order). `None` unless `cin`
    /// is a positive multiple of 64 (every convolution of a torchvision ResNet after the
    /// stem) or [`NARROW`] with `size ≤ 16` (a stem, its image padded to four channels).
    pub(crate) fn new(q: &[i8], m: usize, cin: usize, size: usize) -> Option<DirectWeights> {
        Self::pack(q.len(), m, cin, size, 4, |at| u32::from(q[at] as u8))
    }

    /// [`DirectWeights::new`] for bf16 weights (the bits of each, as [`to_bf16`] makes them);
    /// `cin` must be a positive multiple of 32.
    ///
    /// [`to_bf16`]: crate::kernels::bf16::to_bf16
    pub(crate) fn new_bf16(w: &[u16], m: usize, cin: usize, size: usize) -> Option<DirectWeights> {
        Self::pack(w.len(), m, cin, size, 2, |at| u32::from(w[at]))
    }

    /// [`DirectWeights::new`] for a narrow grid: the `m × (cin·size²)` int8 weights `q` of an
    /// image of `cin ≤ NARROW` channels, the channels up to [`NARROW`] added with zero weights.
    pub(crate) fn new_narrow(q: &[i8], m: usize, cin: usize, size: usize) -> Option<DirectWeights> {
        Self::pack_narrow(q.len(), m, cin, size, 4, |at| u32::from(q[at] as u8))
    }

    /// [`DirectWeights::new_narrow`] for bf16 weights (the bits of each).
    pub(crate) fn new_narrow_bf16(
        w: &[u16],
        m: usize,
        cin: usize,
        size: usize,
    ) -> Option<DirectWeights> {
        Self::pack_narrow(w.len(), m, cin, size, 2, |at| u32::from(w[at]))
    }

    /// [`DirectWeights::pack`] of the weights of `cin ≤ NARROW` channels, `elem(i)` giving the
    /// bits of element `i` of their `m × (cin·size²)` matrix, as those of [`NARROW`] channels.
    fn pack_narrow(
        len: usize,
        m: usize,
        cin: usize,
        size: usize,
        per_word: usize,
        elem: impl Fn(usize) -> u32,
    ) -> Option<DirectWeights> {
        let taps = size * size;
        if cin == 0 || cin > NARROW || len != m * cin * taps {
            return None;
        }
        Self::pack(m * NARROW * taps, m, NARROW, size, per_word, |at| {
            let (oc, rest) = (at / (NARROW * taps), at % (NARROW * taps));
            match rest < cin * taps {
                true => elem(oc * cin * taps + rest),
                false => 0,
            }
        })
    }

    /// The layout, `elem(i)` giving the bits of element `i` of the weight matrix.
    fn pack(
        len: usize,
        m: usize,
        cin: usize,
        size: usize,
        per_word: usize,
        elem: impl Fn(usize) -> u32,
    ) -> Option<DirectWeights> {
        let taps = size * size;
        let ch = 16 * per_word;
        let narrow = cin == NARROW && size <= ch / NARROW;
        if cin == 0 || !(narrow || cin.is_multiple_of(ch)) || m == 0 || len != m * cin * taps {
            return None;
        }
        let mut w = DirectWeights {
            tiles: LineBuf::default(),
            m,
            cin,
            size,
            per_word,
        };
        let chunks = w.chunks();
        let pairs = m.div_ceil(COLS);
        let bits = 32 / per_word;
        let mut tiles = LineBuf::zeroed(pairs * chunks * 2 * 256);
        for (i, tile) in tiles.chunks_exact_mut(256).enumerate() {
            let (pair, rest) = (i / (2 * chunks), i % (2 * chunks));
            let (chunk, half) = (rest / 2, rest % 2);
            for (word, row) in tile.chunks_exact_mut(16).enumerate() {
                let Some((t, ci)) = w.slot(chunk, word) else {
                    continue;
                };
                for (j, d) in row.iter_mut().enumerate() {
                    let oc = pair * COLS + half * 16 + j;
                    if oc >= m {
                        continue;
                    }
                    *d = (0..per_word)
                        .map(|e| elem(oc * cin * taps + (ci + e) * taps + t) << (bits * e))
                        .fold(0, |a, v| a | v);
                }
            }
        }
        w.tiles = tiles;
        Some(w)
    }

    /// What word `word` of a tile row of chunk `chunk` holds: the tap `t = ky·size + kx` and
    /// the first of its `per_word` input channels, or `None` for a word of zeros (a narrow
    /// grid's pixels past the window).
    fn slot(&self, chunk: usize, word: usize) -> Option<(usize, usize)> {
        let (size, per_word) = (self.size, self.per_word);
        if self.cin == NARROW {
            // Chunk `ky`; a pixel is `NARROW / per_word` words.
            let per_pixel = NARROW / per_word;
            let (kx, ci) = (word / per_pixel, word % per_pixel * per_word);
            (kx < size).then_some((chunk * size + kx, ci))
        } else {
            let cc = self.cin / (16 * per_word);
            let (t, c) = (chunk / cc, chunk % cc);
            Some((t, c * 16 * per_word + per_word * word))
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.tiles.len() * 4
    }

    /// The bits of every element of the weight matrix, read back (im2col order).
    fn elements(&self) -> Vec<u32> {
        let (cin, taps, per_word) = (self.cin, self.size * self.size, self.per_word);
        let chunks = self.chunks();
        let bits = 32 / per_word;
        let mask = if bits == 32 {
            u32::MAX
        } else {
            (1 << bits) - 1
        };
        let mut out = vec![0u32; self.m * cin * taps];
        for (oc, row) in out.chunks_exact_mut(cin * taps).enumerate() {
            let (pair, half, j) = (oc / COLS, oc % COLS / 16, oc % 16);
            for chunk in 0..chunks {
                for word in 0..16 {
                    let Some((t, ci)) = self.slot(chunk, word) else {
                        continue;
                    };
                    let at = (((pair * chunks + chunk) * 2 + half) * 16 + word) * 16 + j;
                    let w = self.tiles[at];
                    for e in 0..per_word {
                        row[(ci + e) * taps + t] = w >> (bits * e) & mask;
                    }
                }
            }
        }
        out
    }

    /// The int8 weights [`DirectWeights::new`] packed, read back (im2col order).
    pub(crate) fn matrix(&self) -> Vec<i8> {
        self.elements().into_iter().map(|v| v as u8 as i8).collect()
    }

    /// The bf16 weights [`DirectWeights::new_bf16`] packed, read back as f32 (exactly).
    pub(crate) fn matrix_bf16(&self) -> Vec<f32> {
        self.elements()
            .into_iter()
            .map(|v| f32::from_bits(v << 16))
            .collect()
    }

    /// Chunks (tap × one tile row of input channels; a narrow grid's window rows).
    pub(super) fn chunks(&self) -> usize {
        if self.cin == NARROW {
            self.size
        } else {
            self.size * self.size * (self.cin / (16 * self.per_word))
        }
    }
}
