//! Locally-aware patch embedding (PatchCore §3.1 of the paper; docs/algorithm.md §3).
//!
//! The backbone hands us a few feature maps ("taps", e.g. WRN-50-2 `layer2` and `layer3`), each
//! `[N, C_l, H_l, W_l]`. [`embed`] turns them into one feature vector per cell of the *first*
//! tap's `h × w` grid, for every image: row `img·h·w + y·w + x` of the returned `[N·h·w, D]`
//! matrix describes the neighbourhood of cell `(y, x)` of image `img`.
//!
//! Two constructions are offered, chosen by [`Aggregator`]:
//!
//! * [`Aggregator::Original`] (default) reproduces the reference implementation of the paper's
//!   authors exactly: every layer is unfolded into `p × p` zero-padded patches, the unfolded maps
//!   of deeper layers are bilinearly resized to the first grid, each per-layer vector is
//!   adaptively average-pooled to `pre_dim`, the pooled vectors are concatenated and pooled again
//!   to `target_dim`. For the usual WRN-50-2 / ResNet-50 `layer2 + layer3` setting with `p = 3`
//!   and 1024/1024 dims, a closed form of the same computation is used automatically
//!   (it is several times faster and equal to the generic path up to float rounding).
//! * [`Aggregator::Average`] is the simpler construction used by anomalib: `p × p` average
//!   pooling of every layer, deeper layers resized to the first grid, channel concatenation and
//!   an optional adaptive average pool over channels.
//!
//! The building blocks ([`adaptive_avg_pool1d`], [`bilinear_resize`], [`avg_pool2d`]) are public
//! because other stages (the anomaly map) need the very same semantics.
//!
//! ```
//! use ndarray::Array4;
//! use patchcore::embedding::{embed, embedding_dim, Aggregator};
//!
//! let layer2 = Array4::<f32>::ones((1, 8, 4, 4));
//! let layer3 = Array4::<f32>::ones((1, 16, 2, 2));
//! let agg = Aggregator::Original { patch_size: 3, pre_dim: 32, target_dim: 24 };
//! let rows = embed(&[layer2.view(), layer3.view()], &agg)?;
//! assert_eq!(rows.dim(), (16, embedding_dim(&[8, 16], &agg)));
//! # Ok::<(), patchcore::Error>(())
//! ```

mod average;
mod fast_wrn;
mod generic;
mod ops;

use ndarray::{Array2, ArrayView4, CowArray, Ix4};

use crate::{Error, Result};

pub use ops::{adaptive_avg_pool1d, adaptive_pool_bin, avg_pool2d, bilinear_resize};

/// How the backbone taps are turned into one feature vector per grid cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregator {
    /// The construction of the original PatchCore code (docs/algorithm.md §3.1): unfold `patch_size²`
    /// zero-padded neighbourhoods, align deeper layers by bilinear resize of the unfolded maps,
    /// adaptive average pool each layer's `C·patch_size²` vector to `pre_dim`, concatenate and
    /// adaptive average pool to `target_dim`.
    Original {
        /// Neighbourhood size `p` (odd, ≥ 1; default 3).
        patch_size: usize,
        /// Per-layer pooled dimension (default 1024).
        pre_dim: usize,
        /// Final embedding dimension (default 1024).
        target_dim: usize,
    },
    /// anomalib-style construction (docs/algorithm.md §3.2): per layer `p × p` average pooling (stride 1,
    /// zero padding `p/2`, always divided by `p²`), deeper layers bilinearly resized to the first
    /// grid, channel concatenation, then optionally an adaptive average pool over the channels.
    Average {
        /// Pooling window `p` (odd, ≥ 1; default 3).
        patch_size: usize,
        /// Channel-pooled dimension, or `None` to keep all `Σ C_l` channels.
        target_dim: Option<usize>,
    },
}

impl Default for Aggregator {
    /// `Original { patch_size: 3, pre_dim: 1024, target_dim: 1024 }`, the paper's setting.
    fn default() -> Self {
        Aggregator::Original {
            patch_size: 3,
            pre_dim: 1024,
            target_dim: 1024,
        }
    }
}

/// Largest accepted neighbourhood size `p` (the paper uses 3). Bounds the `C·p²` unfolded
/// vectors of [`Aggregator::Original`], whose buffers would otherwise grow without limit.
pub const MAX_PATCH_SIZE: usize = 63;

/// Largest accepted `pre_dim` / `target_dim` (the paper uses 1024). Bounds per-thread buffers
/// and the embedding rows; a model file cannot ask for gigabytes through them.
pub const MAX_EMBEDDING_DIM: usize = 1 << 16;

impl Aggregator {
    /// The neighbourhood / pooling window size `p`.
    pub fn patch_size(&self) -> usize {
        match *self {
            Aggregator::Original { patch_size, .. } | Aggregator::Average { patch_size, .. } => {
                patch_size
            }
        }
    }

    /// Checks the parameters: the patch size must be odd and in `1..=`[`MAX_PATCH_SIZE`], every
    /// dimension in `1..=`[`MAX_EMBEDDING_DIM`].
    ///
    /// Errors with [`Error::InvalidParameter`] naming the offending field.
    pub fn validate(&self) -> Result<()> {
        let p = self.patch_size();
        if p == 0 || p.is_multiple_of(2) || p > MAX_PATCH_SIZE {
            return Err(Error::param(
                "patch_size",
                format!("must be an odd number from 1 to {MAX_PATCH_SIZE} (1, 3, 5, ...), got {p}"),
            ));
        }
        let dims = match *self {
            Aggregator::Original {
                pre_dim,
                target_dim,
                ..
            } => [("pre_dim", pre_dim), ("target_dim", target_dim)],
            Aggregator::Average { target_dim, .. } => {
                [("target_dim", target_dim.unwrap_or(1)), ("target_dim", 1)]
            }
        };
        for (name, d) in dims {
            if d > MAX_EMBEDDING_DIM {
                return Err(Error::param(
                    name,
                    format!("must be at most {MAX_EMBEDDING_DIM}, got {d}"),
                ));
            }
        }
        match *self {
            Aggregator::Original {
                pre_dim,
                target_dim,
                ..
            } => {
                if pre_dim == 0 {
                    return Err(Error::param("pre_dim", "must be ≥ 1, got 0"));
                }
                if target_dim == 0 {
                    return Err(Error::param("target_dim", "must be ≥ 1, got 0"));
                }
            }
            Aggregator::Average { target_dim, .. } => {
                if target_dim == Some(0) {
                    return Err(Error::param(
                        "target_dim",
                        "must be ≥ 1 (or absent to keep all channels), got 0",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Embedding dimension `D` produced by [`embed`] for taps with the given channel counts:
/// `target_dim` for [`Aggregator::Original`], `target_dim` or `Σ channels` for
/// [`Aggregator::Average`].
pub fn embedding_dim(channels: &[usize], agg: &Aggregator) -> usize {
    match *agg {
        Aggregator::Original { target_dim, .. } => target_dim,
        Aggregator::Average { target_dim, .. } => {
            target_dim.unwrap_or_else(|| channels.iter().sum())
        }
    }
}

/// The patch grid `(h, w)` of a list of taps: the spatial size of the first one.
///
/// Errors like [`embed`] when the list is empty, batch sizes differ or a size is zero.
pub fn grid(layers: &[ArrayView4<f32>]) -> Result<(usize, usize)> {
    check_layers(layers)?;
    let (_, _, h, w) = layers[0].dim();
    Ok((h, w))
}

/// Locally-aware patch embedding of a batch (docs/algorithm.md §3).
///
/// `layers` are the backbone taps in order, each `[N, C_l, H_l, W_l]` (same `N`); the first one
/// defines the `h × w` patch grid. Returns `[N·h·w, D]` with row `img·h·w + y·w + x` and
/// `D = `[`embedding_dim`]. For [`Aggregator::Original`] with two taps of 512 and 1024 channels,
/// `p = 3` and 1024/1024 dims (WRN-50-2 / ResNet-50 `layer2 + layer3`) the closed-form fast path
/// is used; every other setting goes through the generic construction.
///
/// Errors: [`Error::InvalidParameter`] for a bad aggregator, [`Error::InvalidInput`] for an empty
/// list, mismatching batch sizes or a zero dimension, [`Error::LimitExceeded`] when the output
/// would not fit in memory addressing.
pub fn embed(layers: &[ArrayView4<f32>], agg: &Aggregator) -> Result<Array2<f32>> {
    agg.validate()?;
    check_layers(layers)?;
    match *agg {
        Aggregator::Original {
            patch_size,
            pre_dim,
            target_dim,
        } => {
            let channels: Vec<usize> = layers.iter().map(|l| l.dim().1).collect();
            if fast_wrn::applies(&channels, patch_size, pre_dim, target_dim) {
                fast_wrn::embed(&contiguous(layers))
            } else {
                generic::embed(&contiguous(layers), patch_size, pre_dim, target_dim)
            }
        }
        Aggregator::Average {
            patch_size,
            target_dim,
        } => average::embed(&contiguous(layers), patch_size, target_dim),
    }
}

/// The generic [`Aggregator::Original`] construction, never taking the closed-form fast path.
///
/// Same contract as [`embed`]; exposed so tests and benchmarks can compare both paths. For
/// [`Aggregator::Average`] it is identical to [`embed`].
#[doc(hidden)]
pub fn embed_generic(layers: &[ArrayView4<f32>], agg: &Aggregator) -> Result<Array2<f32>> {
    agg.validate()?;
    check_layers(layers)?;
    let views = contiguous(layers);
    match *agg {
        Aggregator::Original {
            patch_size,
            pre_dim,
            target_dim,
        } => generic::embed(&views, patch_size, pre_dim, target_dim),
        Aggregator::Average {
            patch_size,
            target_dim,
        } => average::embed(&views, patch_size, target_dim),
    }
}

/// Whether [`embed`] takes the closed-form fast path for taps with these channel counts.
#[doc(hidden)]
pub fn fast_path_applies(channels: &[usize], agg: &Aggregator) -> bool {
    match *agg {
        Aggregator::Original {
            patch_size,
            pre_dim,
            target_dim,
        } => fast_wrn::applies(channels, patch_size, pre_dim, target_dim),
        Aggregator::Average { .. } => false,
    }
}

/// The closed-form fast path alone; errors with [`Error::InvalidParameter`] when it does not
/// apply (see [`fast_path_applies`]). Exposed for tests and benchmarks.
#[doc(hidden)]
pub fn embed_closed_form(layers: &[ArrayView4<f32>], agg: &Aggregator) -> Result<Array2<f32>> {
    agg.validate()?;
    check_layers(layers)?;
    let channels: Vec<usize> = layers.iter().map(|l| l.dim().1).collect();
    if !fast_path_applies(&channels, agg) {
        return Err(Error::param(
            "aggregator",
            format!(
                "the closed form needs Original {{ patch_size: 3, pre_dim: 1024, target_dim: \
                 1024 }} and layers with [512, 1024] channels, got {agg:?} with {channels:?}"
            ),
        ));
    }
    fast_wrn::embed(&contiguous(layers))
}

/// One tap in standard (C-contiguous) layout with its sizes.
pub(crate) struct Tap<'a> {
    data: CowArray<'a, f32, Ix4>,
    pub(crate) n: usize,
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
}

impl Tap<'_> {
    /// The `[C, H, W]` block of image `img` as a flat slice.
    pub(crate) fn image(&self, img: usize) -> &[f32] {
        let plane = self.c * self.h * self.w;
        // `contiguous` guarantees the standard layout, so `as_slice` is `Some`; the fallback is
        // unreachable but keeps the library free of panics.
        let all = self.data.as_slice().unwrap_or(&[]);
        all.get(img * plane..(img + 1) * plane).unwrap_or(&[])
    }
}

/// Views of the taps in standard layout (copying only the ones that are not).
fn contiguous<'a>(layers: &'a [ArrayView4<'_, f32>]) -> Vec<Tap<'a>> {
    layers
        .iter()
        .map(|l| {
            let (n, c, h, w) = l.dim();
            Tap {
                data: l.as_standard_layout(),
                n,
                c,
                h,
                w,
            }
        })
        .collect()
}

/// Validates the list of taps: non-empty, same batch size, no zero dimension.
fn check_layers(layers: &[ArrayView4<f32>]) -> Result<()> {
    let Some(first) = layers.first() else {
        return Err(Error::input(
            "embedding: no backbone layers given (need at least one [N, C, H, W] feature map)",
        ));
    };
    let n = first.dim().0;
    for (i, l) in layers.iter().enumerate() {
        let (ln, c, h, w) = l.dim();
        if ln != n {
            return Err(Error::input(format!(
                "embedding: layer {i} has batch size {ln} but layer 0 has {n}; all layers must \
                 come from the same batch"
            )));
        }
        if ln == 0 || c == 0 || h == 0 || w == 0 {
            return Err(Error::input(format!(
                "embedding: layer {i} has shape [{ln}, {c}, {h}, {w}]; every dimension must be ≥ 1"
            )));
        }
    }
    Ok(())
}

/// Allocates the `[rows, dim]` output, refusing sizes that overflow.
pub(crate) fn alloc_output(n: usize, h: usize, w: usize, dim: usize) -> Result<Array2<f32>> {
    let rows = n
        .checked_mul(h)
        .and_then(|r| r.checked_mul(w))
        .ok_or_else(|| Error::LimitExceeded {
            reason: format!("embedding: {n} images × {h}×{w} cells overflows the row count"),
        })?;
    let total = rows
        .checked_mul(dim)
        .filter(|&t| t <= isize::MAX as usize / 4);
    if total.is_none() {
        return Err(Error::LimitExceeded {
            reason: format!("embedding: output of {rows} rows × {dim} dims is too large"),
        });
    }
    Ok(Array2::zeros((rows, dim)))
}
