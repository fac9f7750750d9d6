//! Which algorithm a [`Conv2d`](super::Conv2d) uses, and the measured rules behind
//! [`ConvAlgorithm::Auto`].

/// How a [`Conv2d`](super::Conv2d) computes its output.
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
}

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
