//! Which algorithm a [`Conv2d`] uses: the choice, the measured rules behind
//! [`ConvAlgorithm::Auto`], and the transformed filters the Winograd variants need.

use std::sync::OnceLock;

use super::direct;
use super::winograd::{self, Tile};
use super::Conv2d;
use crate::error::{Error, Result};
use crate::kernels::wide::Wide;

/// How a [`Conv2d`] computes its output.
///
/// Both algorithms compute the same convolution; they differ in speed and (slightly) in
/// rounding. The Winograd variants apply only to 3×3 pad-1 convolutions: F(2×2) and F(4×4)
/// with stride 1, the polyphase variant with stride 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvAlgorithm {
    /// Winograd F(2×2, 3×3) for 3×3 stride-1 pad-1 convolutions with at least
    /// [`WINOGRAD_MIN_CHANNELS`] input and output channels, the stride-2 variant for 3×3
    /// stride-2 pad-1 convolutions with `cin·cout ≥` [`WINOGRAD_S2_MIN_CHANNEL_PRODUCT`],
    /// im2col + GEMM otherwise.
    #[default]
    Auto,
    /// Always im2col + GEMM (1×1 stride-1 unpadded convolutions skip the copy).
    Im2col,
    /// Winograd F(2×2, 3×3) for 3×3 stride-1 pad-1 convolutions; for 3×3 stride-2 pad-1
    /// convolutions its stride-2 counterpart (polyphase split + F(2, 2): 2×2 output tiles
    /// from 5×5 input patches, 25 instead of 36 multiply-adds per output and input channel,
    /// transforms with entries 0 and ±1). Not valid for other shapes.
    Winograd,
    /// Winograd F(4×4, 3×3): fewer multiply-adds than F(2×2) (2.25 instead of 4 per output
    /// and input channel) but larger transforms, ~10× the rounding error of F(2×2) (≈1e-5 of
    /// max|output| on ResNet layers) and 2.25× the transformed-filter memory; only valid for
    /// 3×3, stride-1, pad-1 convolutions. Not chosen by `Auto`.
    ///
    /// Measured (1-thread CPU ms, F(2×2) → F(4×4)): at 56² 64 ch 1.56 → 0.98, 128 ch
    /// 5.9 → 5.0; at 28² 128 ch 1.57 → 1.28, 256 ch 5.4 → 4.3; at 14² (3.5 tiles per side,
    /// many partial) 256 ch 1.42 → 1.98, 512 ch 6.0 → 5.8.
    Winograd4x4,
    /// Direct convolution without the im2col copy, for any kernel, stride and padding over
    /// at most [`DIRECT_MAX_CHANNELS`] input channels: the sums of 8 output channels × 48
    /// output columns stay in registers while every tap adds to them (the stem, 3 → 64
    /// channels 7×7 stride 2, reads its image once instead of 49 times). Rounds like im2col
    /// (one multiply-add per tap, fused on CPUs with AVX-512). Not valid for more input
    /// channels.
    ///
    /// Measured (`cargo bench --bench conv -- conv_stem_algo`, 2 threads, im2col → direct):
    /// the ResNet stem at 224² 1.40 → 0.92 ms on a Xeon (Emerald Rapids, AVX-512). CPUs
    /// without AVX-512 keep im2col under `Auto` (the portable copy of the loops is not
    /// measured faster there).
    Direct,
}

/// Input channels up to which [`ConvAlgorithm::Direct`] applies (and [`ConvAlgorithm::Auto`]
/// considers it).
pub const DIRECT_MAX_CHANNELS: usize = direct::MAX_CIN;

/// [`ConvAlgorithm::Auto`] picks Winograd for eligible convolutions when both `cin` and `cout`
/// are at least this large. Measured (`cargo bench --bench conv`, table "3x3 s1 shape"):
/// Winograd is faster from 8 channels up (8 ch @ 56²: 0.092 vs 0.102 ms; 64 ch @ 56²: 1.6 vs
/// 2.9 ms CPU; 128–512 ch: 1.6–2× less CPU); below 8 the products are too thin to matter.
pub const WINOGRAD_MIN_CHANNELS: usize = 8;

/// [`ConvAlgorithm::Auto`] uses the stride-2 variant for 3×3 stride-2 pad-1 convolutions when
/// `cin·cout` is at least this large (64·128), im2col + GEMM otherwise.
///
/// Measured (1-thread CPU ms, min of 40 runs, im2col → stride-2 Winograd, machine shared with
/// another job): 256→256 @ 56² 9.46 → 8.82–9.15, 512→512 @ 28² 9.65 → 8.45, 256→512 @ 28²
/// 4.75 → 4.36, 128→256 @ 28² 1.21 → 1.09, 128→128 @ 56² 2.45 → 2.25–2.42, 64→128 @ 56²
/// 1.17 → 1.13; break-even at 64→64 (0.665 → 0.675 @ 56², 0.198 → 0.203 @ 28²) and slower
/// below (32→32 @ 56² 0.188 → 0.242, 8→8 0.023 → 0.046): with few channels the transforms
/// (25 values per tile and channel in and out) outweigh the 31 % of multiply-adds saved.
pub const WINOGRAD_S2_MIN_CHANNEL_PRODUCT: usize = 64 * 128;

impl Conv2d {
    /// This convolution computed with `algorithm` (see [`Conv2d::set_algorithm`]).
    ///
    /// ```
    /// use patchcore::kernels::conv::{Conv2d, ConvAlgorithm};
    /// let conv = Conv2d::new(8, 8, 3, 3, 1, 1, vec![0.1; 8 * 8 * 9], vec![0.0; 8]);
    /// assert_eq!(conv.winograd_tile(56, 56), Some(2)); // Auto: F(2×2)
    /// let wino = conv.clone().with_algorithm(ConvAlgorithm::Winograd4x4).unwrap();
    /// assert_eq!(wino.winograd_tile(56, 56), Some(4));
    /// let direct = conv.with_algorithm(ConvAlgorithm::Im2col).unwrap();
    /// assert!(!direct.uses_winograd());
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Conv2d::set_algorithm`].
    pub fn with_algorithm(mut self, algorithm: ConvAlgorithm) -> Result<Self> {
        self.set_algorithm(algorithm)?;
        Ok(self)
    }

    /// Selects how the output is computed. When the result uses Winograd, the weights are
    /// transformed here, once. Call this again after changing the public shape fields (it
    /// drops the transformed filters).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] when a Winograd variant is requested for a convolution that
    /// is not 3×3, stride 1, pad 1 (the convolution is left unchanged).
    pub fn set_algorithm(&mut self, algorithm: ConvAlgorithm) -> Result<()> {
        let shape = self.winograd_shape();
        let stride1 = shape && self.stride == 1;
        match algorithm {
            ConvAlgorithm::Im2col | ConvAlgorithm::Auto => {}
            ConvAlgorithm::Direct if self.cin <= DIRECT_MAX_CHANNELS => {}
            ConvAlgorithm::Direct => {
                return Err(Error::param(
                    "conv algorithm",
                    format!(
                        "Direct takes at most {DIRECT_MAX_CHANNELS} input channels, got {}; \
                         use ConvAlgorithm::Auto or Im2col",
                        self.cin
                    ),
                ));
            }
            ConvAlgorithm::Winograd if shape => {}
            ConvAlgorithm::Winograd4x4 if stride1 => {}
            ConvAlgorithm::Winograd | ConvAlgorithm::Winograd4x4 => {
                let strides = if algorithm == ConvAlgorithm::Winograd {
                    "stride 1 or 2"
                } else {
                    "stride 1"
                };
                return Err(Error::param(
                    "conv algorithm",
                    format!(
                        "{algorithm:?} needs a 3×3 kernel with {strides} and padding 1, got \
                         {}×{} stride {} padding {}; use ConvAlgorithm::Auto or Im2col",
                        self.kh, self.kw, self.stride, self.pad
                    ),
                ));
            }
        };
        self.algorithm = algorithm;
        self.wino2 = OnceLock::new();
        self.wino4 = OnceLock::new();
        self.wino_s2 = OnceLock::new();
        // The tile does not depend on the image size (any size works).
        if let Some(tile) = self.tile_for(1, 1) {
            self.winograd_filters(tile);
        }
        Ok(())
    }

    /// Drops the transformed Winograd filters; the next forward pass that needs them computes
    /// them again (the same bits: the transform is deterministic).
    pub fn release_transformed_filters(&mut self) {
        self.wino2 = OnceLock::new();
        self.wino4 = OnceLock::new();
        self.wino_s2 = OnceLock::new();
    }

    /// Bytes held by transformed Winograd filters (what
    /// [`Conv2d::release_transformed_filters`] frees).
    pub fn transformed_filter_bytes(&self) -> usize {
        [&self.wino2, &self.wino4, &self.wino_s2]
            .iter()
            .filter_map(|c| c.get())
            .map(|v| v.len() * 4)
            .sum()
    }

    /// The requested algorithm (see [`Conv2d::winograd_tile`] for what `Auto` resolves to).
    pub fn algorithm(&self) -> ConvAlgorithm {
        self.algorithm
    }

    /// Whether forward passes use a Winograd variant.
    pub fn uses_winograd(&self) -> bool {
        self.tile_for(1, 1).is_some()
    }

    /// The Winograd output tile side (2 for F(2×2) and for the stride-2 variant, 4 for
    /// F(4×4)) a forward pass over an `h × w` input uses, or `None` when it uses im2col +
    /// GEMM. (The choice does not depend on the size today; the arguments leave room for a
    /// size-dependent `Auto`.)
    pub fn winograd_tile(&self, h: usize, w: usize) -> Option<usize> {
        self.tile_for(h, w).map(Tile::m)
    }

    /// Whether forward passes use [`ConvAlgorithm::Direct`] (requested, or chosen by `Auto`).
    pub fn uses_direct(&self) -> bool {
        let few = self.cin <= DIRECT_MAX_CHANNELS;
        match self.algorithm {
            ConvAlgorithm::Direct => few,
            ConvAlgorithm::Auto => few && self.kh * self.kw > 1 && Wide::detect(true).is_avx512(),
            _ => false,
        }
    }

    pub(super) fn tile_for(&self, _h: usize, _w: usize) -> Option<Tile> {
        if !self.winograd_ready() {
            return None;
        }
        let stride2 = self.stride == 2;
        match self.algorithm {
            ConvAlgorithm::Im2col | ConvAlgorithm::Direct => None,
            ConvAlgorithm::Winograd if stride2 => Some(Tile::S2),
            ConvAlgorithm::Winograd => Some(Tile::F2),
            ConvAlgorithm::Winograd4x4 => (!stride2).then_some(Tile::F4),
            ConvAlgorithm::Auto if stride2 => {
                (self.cin * self.cout >= WINOGRAD_S2_MIN_CHANNEL_PRODUCT).then_some(Tile::S2)
            }
            ConvAlgorithm::Auto => (self.cin >= WINOGRAD_MIN_CHANNELS
                && self.cout >= WINOGRAD_MIN_CHANNELS)
                .then_some(Tile::F2),
        }
    }

    /// 3×3, pad 1, stride 1 or 2.
    fn winograd_shape(&self) -> bool {
        self.kh == 3 && self.kw == 3 && self.pad == 1 && matches!(self.stride, 1 | 2)
    }

    /// 3×3 pad-1 stride 1 or 2, and weights consistent with the (public) shape fields.
    fn winograd_ready(&self) -> bool {
        self.winograd_shape() && self.weight.len() == self.cout * self.cin * 9
    }

    /// The transformed filters of `tile` (computed by `set_algorithm`; lazily only if a
    /// forward pass ever needs a variant that was not prepared).
    pub(super) fn winograd_filters(&self, tile: Tile) -> &[f32] {
        let cell = match tile {
            Tile::F2 => &self.wino2,
            Tile::F4 => &self.wino4,
            Tile::S2 => &self.wino_s2,
        };
        cell.get_or_init(|| {
            winograd::transform_filters_for(tile, &self.weight, self.cout, self.cin)
        })
    }
}
