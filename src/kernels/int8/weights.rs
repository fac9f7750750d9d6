//! The int8 weights, packed once: the panels of the VNNI, dot-product and portable kernels,
//! or the AMX tiles on CPUs that run AMX (the panels are then made from them on first use).

use std::sync::OnceLock;

use super::{MAX_DEPTH, MR};
use crate::kernels::amx;

/// Signed 8-bit weights `m × k`, packed once for the kernels (see the module documentation).
#[derive(Debug, Clone)]
pub struct PackedWeights {
    /// `m.div_ceil(MR)` panels of `k4 · MR` words. On a CPU that runs the AMX kernel it is
    /// made from `amx` on first use (by another kernel), so that the weights are held once.
    panels: OnceLock<Vec<i32>>,
    /// The AMX layout, when this CPU runs the AMX kernel.
    pub(super) amx: Option<amx::AmxWeights>,
    /// `Σ_k a[r][k]` per row, padded with zeros to a multiple of [`MR`] rows (the aarch64
    /// `sdot` kernel's correction).
    #[cfg(target_arch = "aarch64")]
    pub(super) row_sums: Vec<i32>,
    pub(super) m: usize,
    pub(super) k: usize,
}

impl PackedWeights {
    /// Packs the row-major `m × k` matrix `a` (in the AMX layout instead when this CPU runs
    /// the AMX kernel).
    ///
    /// # Panics
    /// If `a.len() != m·k` or `k > MAX_DEPTH`.
    pub fn new(a: &[i8], m: usize, k: usize) -> PackedWeights {
        assert_eq!(a.len(), m * k, "PackedWeights: a must hold m·k values");
        assert!(
            k <= MAX_DEPTH,
            "PackedWeights: depth {k} exceeds {MAX_DEPTH}"
        );
        // On AMX CPUs only the AMX layout is made; the panels follow from it if ever asked for.
        let amx = amx::Int8::detect().map(|_| amx_weights(a, m, k));
        let panels = if amx.is_some() {
            OnceLock::new()
        } else {
            OnceLock::from(build_panels(m, k, |row, g| word(a, k, row, g) as i32))
        };
        #[cfg(target_arch = "aarch64")]
        let row_sums = {
            let mut sums = vec![0i32; m.div_ceil(MR) * MR];
            for (s, row) in sums.iter_mut().zip(a.chunks_exact(k.max(1))) {
                *s = row.iter().map(|&v| i32::from(v)).sum();
            }
            sums
        };
        PackedWeights {
            panels,
            amx,
            #[cfg(target_arch = "aarch64")]
            row_sums,
            m,
            k,
        }
    }

    /// Rows `m`.
    pub fn rows(&self) -> usize {
        self.m
    }

    /// Depth `k`.
    pub fn depth(&self) -> usize {
        self.k
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        #[cfg(target_arch = "aarch64")]
        let sums = self.row_sums.len() * 4;
        #[cfg(not(target_arch = "aarch64"))]
        let sums = 0;
        self.panels.get().map_or(0, |p| p.len() * 4)
            + self.amx.as_ref().map_or(0, amx::AmxWeights::bytes)
            + sums
    }

    /// The panels of the non-AMX kernels (made from the AMX layout on first use if needed).
    pub(super) fn panels(&self) -> &[i32] {
        self.panels.get_or_init(|| {
            let Some(aw) = &self.amx else {
                unreachable!("PackedWeights holds one of its layouts")
            };
            build_panels(self.m, self.k, |row, g| aw.at(row, g) as i32)
        })
    }

    /// Panel `p` of [`PackedWeights::panels`].
    pub(super) fn panel(&self, p: usize) -> &[i32] {
        let len = self.k.div_ceil(4) * MR;
        &self.panels()[p * len..(p + 1) * len]
    }
}

/// The AMX layout of the row-major `m × k` weights `a`: each word four consecutive `k`
/// (the first in the low byte), zero-padded.
pub(super) fn amx_weights(a: &[i8], m: usize, k: usize) -> amx::AmxWeights {
    amx::AmxWeights::new(m, k.div_ceil(4), |row, g| word(a, k, row, g))
}

/// Word `g` of row `row` of the row-major `· × k` weights `a`: `k` from `4g` to `4g + 3`, the
/// first in the low byte, zero past `k`.
fn word(a: &[i8], k: usize, row: usize, g: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (t, b) in bytes.iter_mut().enumerate() {
        if let Some(&v) = a[row * k..(row + 1) * k].get(4 * g + t) {
            *b = v as u8;
        }
    }
    u32::from_le_bytes(bytes)
}

/// The panels of `m` rows of depth `k`: `m.div_ceil(MR)` panels of `k.div_ceil(4) · MR` words,
/// word `g` of row `row` being `word(row, g)` (four consecutive `k`), zero in the padding rows.
fn build_panels(m: usize, k: usize, word: impl Fn(usize, usize) -> i32) -> Vec<i32> {
    let k4 = k.div_ceil(4);
    let mut panels = vec![0i32; m.div_ceil(MR) * k4 * MR];
    // `max(1)`: with k = 0 there are no words (and no panel to fill).
    for (p, panel) in panels.chunks_exact_mut((k4 * MR).max(1)).enumerate() {
        for r in 0..MR.min(m - p * MR) {
            for g in 0..k4 {
                panel[g * MR + r] = word(p * MR + r, g);
            }
        }
    }
    panels
}
