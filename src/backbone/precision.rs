//! The backbone's numeric precision and the activation ranges that int8 needs.

use std::fmt;
use std::str::FromStr;

use ndarray::{Array4, ArrayView4};

use super::{resnet, Backbone};
use crate::kernels::bf16::Bf16Isa;
use crate::kernels::int8::Int8Isa;
use crate::{Error, Result};

/// Numeric precision of the backbone's convolutions. The kNN search, the coreset and the maps
/// always run in f32.
///
/// Parses from and displays as `"f32"`, `"int8"` and `"bf16"` (case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Precision {
    /// Single precision everywhere: parity with PyTorch (the default).
    #[default]
    F32,
    /// Static post-training int8: symmetric per-output-channel `i8` weights, `u8` activations
    /// with one scale per convolution input taken from a [`Calibration`], exact `i32` sums.
    /// An image whose activations exceed a calibrated range has that input quantised with its
    /// own maximum instead, never clipped: a defect's strong response is kept (see
    /// [`Backbone::int8_last_ranges`]).
    /// The stem (the 7×7 convolution on the signed, normalised image) runs in int8 where AMX
    /// reads the image directly (Xeon Sapphire Rapids and later), its input quantised with a
    /// zero point from each image's own range (no calibration), and in f32 elsewhere, where
    /// that is faster.
    Int8,
    /// bf16 weights (half the memory) and activations rounded to bf16 at every convolution
    /// after the stem, products accumulated in f32. Needs no calibration. The stem runs in
    /// bf16 too where AMX reads the image directly (Xeon Sapphire Rapids and later), and
    /// stays f32 elsewhere, where it is faster in f32.
    Bf16,
}

impl Precision {
    /// Every precision, default first.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Int8, Precision::Bf16];

    /// The name used in model files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
            Precision::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Precision> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                Error::param(
                    "precision",
                    format!("unknown backbone precision {s:?}; expected one of: f32, int8, bf16"),
                )
            })
    }
}

/// The activation ranges of a backbone measured on images: the largest input value of every
/// convolution after the stem, in network order (per block: the main-path convolutions, then
/// the downsample projection, which shares the block's input).
///
/// A fit collects one over the images it is fitted on ([`crate::model::PatchCore::calibration`]); the
/// model file stores it, so that any fitted model can run its backbone in int8.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    maxima: Vec<f32>,
    images: u64,
}

impl Calibration {
    /// An empty calibration (no image seen, every maximum 0) for `convs` convolutions.
    pub fn empty(convs: usize) -> Calibration {
        Calibration {
            maxima: vec![0.0; convs],
            images: 0,
        }
    }

    /// A calibration from stored maxima (e.g. read from a model file).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if a maximum is negative, NaN or infinite.
    pub fn from_maxima(maxima: Vec<f32>, images: u64) -> Result<Calibration> {
        if let Some((i, v)) = maxima
            .iter()
            .enumerate()
            .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
        {
            return Err(Error::input(format!(
                "activation range {i} of the int8 calibration is {v}; every range must be a \
                 finite value ≥ 0"
            )));
        }
        Ok(Calibration { maxima, images })
    }

    /// The maxima, in network order.
    pub fn maxima(&self) -> &[f32] {
        &self.maxima
    }

    /// Number of images measured.
    pub fn images(&self) -> u64 {
        self.images
    }

    /// Adds the measurements of `other` (same backbone).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the two cover different numbers of convolutions.
    pub fn merge(&mut self, other: &Calibration) -> Result<()> {
        if other.maxima.len() != self.maxima.len() {
            return Err(Error::input(format!(
                "cannot merge int8 calibrations of {} and {} convolutions",
                self.maxima.len(),
                other.maxima.len()
            )));
        }
        for (a, &b) in self.maxima.iter_mut().zip(&other.maxima) {
            *a = a.max(b);
        }
        self.images += other.images;
        Ok(())
    }

    /// Records one image's maxima (`maxima.len()` must equal [`Calibration::maxima`]'s).
    pub(crate) fn record(&mut self, maxima: &[f32]) {
        debug_assert_eq!(maxima.len(), self.maxima.len());
        for (a, &b) in self.maxima.iter_mut().zip(maxima) {
            *a = a.max(b);
        }
        self.images += 1;
    }
}

/// The precision API of [`Backbone`]: calibration, switching, and what runs.
impl Backbone {
    /// [`Backbone::forward`] in f32 (whatever [`Backbone::precision`] is) that also records
    /// the largest input of every convolution after the stem into `calibration` (one image
    /// at a time), for [`Backbone::set_precision`] with [`Precision::Int8`].
    ///
    /// # Errors
    /// As [`Backbone::forward`]; [`Error::InvalidInput`] if `calibration` was made for
    /// another network ([`Backbone::calibration_len`] values).
    pub fn forward_calibrating(
        &self,
        input: ArrayView4<'_, f32>,
        calibration: &mut Calibration,
    ) -> Result<Vec<Array4<f32>>> {
        if calibration.maxima().len() != self.calibration_len() {
            return Err(Error::input(format!(
                "the int8 calibration holds {} activation ranges, but this backbone has {} \
                 convolutions after the stem",
                calibration.maxima().len(),
                self.calibration_len()
            )));
        }
        self.forward_inner(input, Some(calibration))
    }

    /// Number of activation ranges a [`Calibration`] of this backbone holds (one per
    /// convolution after the stem).
    pub fn calibration_len(&self) -> usize {
        self.net.calibrated_convs()
    }

    /// An empty calibration for this backbone, to fill with
    /// [`Backbone::forward_calibrating`].
    pub fn new_calibration(&self) -> Calibration {
        Calibration::empty(self.calibration_len())
    }

    /// The precision forward passes run in.
    pub fn precision(&self) -> Precision {
        self.net.reduced().map_or(Precision::F32, |r| r.precision())
    }

    /// Selects the precision of forward passes. [`Precision::Int8`] quantises the weights of
    /// every convolution after the stem with the activation ranges of `calibration` (and the
    /// stem's, where AMX runs it: see [`Precision::Int8`]); [`Precision::Bf16`] rounds them to
    /// bf16; both keep the f32 weights (so the backbone can
    /// go back to f32) and pick the fastest kernels of this CPU ([`Backbone::kernels`]).
    /// [`Precision::F32`] drops the reduced-precision weights. `calibration` is only read
    /// for int8.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for int8 without a calibration; [`Error::InvalidInput`]
    /// if the calibration has the wrong length, a weight is not finite or the weights are
    /// stashed. The backbone is unchanged on error.
    pub fn set_precision(
        &mut self,
        precision: Precision,
        calibration: Option<&Calibration>,
    ) -> Result<()> {
        if self.stashed && precision != Precision::F32 {
            return Err(Error::input(
                "the backbone's weights are stashed (Backbone::stash_weights): restore them first",
            ));
        }
        let isa = resnet::Isas {
            int8: Int8Isa::detect(),
            bf16: Bf16Isa::detect(),
        };
        self.net.set_precision(precision, calibration, isa)
    }

    /// The instruction set of the int8 kernels, when the backbone runs in int8.
    pub fn int8_kernels(&self) -> Option<Int8Isa> {
        self.net
            .reduced()
            .filter(|r| r.precision() == Precision::Int8)
            .map(|r| r.isa().int8)
    }

    /// The ranges `[0, r]` that the int8 convolutions after the stem quantised their inputs
    /// with on the last image, in the order of [`Calibration::maxima`]: each convolution's
    /// calibrated maximum, or the image's own maximum where that was larger (the range widens
    /// rather than clipping, see [`Precision::Int8`]). A range wider than its calibrated one
    /// says that the image drives that layer beyond every fitted image, as a defect or a
    /// changed scene can. `None` unless the backbone runs in int8; `None` for a convolution
    /// that has seen no image yet. Pass images one at a time to read them per image: the
    /// images of a batch may run at once, as may forward passes on several threads, and the
    /// ranges may then come from different images.
    pub fn int8_last_ranges(&self) -> Option<Vec<Option<f32>>> {
        self.net
            .reduced()
            .filter(|r| r.precision() == Precision::Int8)
            .map(|r| r.last_ranges())
    }

    /// The instruction set of the bf16 kernels, when the backbone runs in bf16.
    pub fn bf16_kernels(&self) -> Option<Bf16Isa> {
        self.net
            .reduced()
            .filter(|r| r.precision() == Precision::Bf16)
            .map(|r| r.isa().bf16)
    }

    /// What the convolutions run on, in words: e.g. `"f32"`, `"int8 (avx512-vnni kernels,
    /// f32 stem)"`, `"bf16 (amx-bf16 kernels, bf16 stem)"`.
    pub fn kernels(&self) -> String {
        let stem = |p: &str| match self.net.reduced().is_some_and(|r| r.reduced_stem()) {
            true => format!("{p} stem"),
            false => "f32 stem".to_string(),
        };
        match (self.int8_kernels(), self.bf16_kernels()) {
            (Some(i), _) => format!("int8 ({} kernels, {})", i.name(), stem("int8")),
            (_, Some(b)) => format!("bf16 ({} kernels, {})", b.name(), stem("bf16")),
            _ => "f32".to_string(),
        }
    }

    /// Bytes of the reduced-precision weights (0 in f32).
    pub fn reduced_weight_bytes(&self) -> usize {
        self.net.reduced().map_or(0, |r| r.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
            assert_eq!(p.to_string(), p.name());
        }
        assert_eq!(" INT8 ".parse::<Precision>().unwrap(), Precision::Int8);
        let e = "int4".parse::<Precision>().unwrap_err().to_string();
        assert!(e.contains("int4") && e.contains("f32, int8, bf16"), "{e}");
    }

    #[test]
    fn calibration_refuses_bad_ranges_and_merges_by_maximum() {
        for bad in [f32::NAN, -1.0, f32::INFINITY] {
            let e = Calibration::from_maxima(vec![1.0, bad], 1).unwrap_err();
            assert!(e.to_string().contains("range 1"), "{e}");
        }
        let mut a = Calibration::from_maxima(vec![1.0, 5.0], 2).unwrap();
        let b = Calibration::from_maxima(vec![3.0, 4.0], 3).unwrap();
        a.merge(&b).unwrap();
        assert_eq!(a.maxima(), &[3.0, 5.0]);
        assert_eq!(a.images(), 5);
        assert!(a.merge(&Calibration::empty(3)).is_err());
        let mut e = Calibration::empty(2);
        e.record(&[0.5, 7.0]);
        assert_eq!((e.maxima(), e.images()), (&[0.5f32, 7.0][..], 1));
    }

    /// A bottleneck network in int8 gives the same bits with every kernel of this CPU: on AMX
    /// each block's last convolution packs its output for the next block's first one
    /// (`QOutput::F32Panels`), and the 3×3 convolutions of the first two stages (64 channels:
    /// the direct path) write theirs straight into the panels of the last one
    /// (`QOutput::Panels`), which the other kernels never do. Calibrated on 8 images
    /// (activations chained) and on 2, with an input like the calibration ones and one beyond
    /// every range (the panels refused, the f32 output packed again).
    #[test]
    fn int8_bottleneck_network_gives_the_same_bits_with_every_kernel() {
        use crate::backbone::{BlockKind, Layer, ResNetSpec};
        use ndarray::Array4;
        let spec = ResNetSpec {
            name: "tiny-bottleneck".into(),
            block: BlockKind::Bottleneck,
            blocks: [2, 2, 2, 1],
            stem_channels: 16,
            planes: [64, 64, 16, 16],
            width_per_group: 64,
        };
        let taps = [Layer::Layer2, Layer::Layer3];
        let mut bb = Backbone::random(&spec, &taps, 3).unwrap();
        let image = |n: usize, seed: u64, gain: f32| {
            let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            Array4::from_shape_simple_fn((n, 3, 40, 40), || {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                gain * ((s >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0)
            })
        };
        for n_cal in [8, 2] {
            let mut cal = bb.new_calibration();
            bb.forward_calibrating(image(n_cal, 5, 1.0).view(), &mut cal)
                .unwrap();
            for gain in [1.0, 1.7] {
                let x = image(1, 9, gain);
                let run = |bb: &mut Backbone, int8: Int8Isa| {
                    let isa = resnet::Isas {
                        int8,
                        bf16: Bf16Isa::detect(),
                    };
                    bb.net
                        .set_precision(Precision::Int8, Some(&cal), isa)
                        .unwrap();
                    bb.forward(x.view()).unwrap()
                };
                let want = run(&mut bb, Int8Isa::Portable);
                for isa in Int8Isa::all_available() {
                    assert!(
                        run(&mut bb, isa) == want,
                        "{isa:?}, {n_cal} images, gain {gain}"
                    );
                }
            }
        }
    }
}
