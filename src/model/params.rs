//! Parameters of a PatchCore model: unchecked [`PatchCoreParams`] validated into a
//! [`PatchCoreConfig`].

use crate::anomaly_map::MapConfig;
use crate::backbone::{Layer, Precision};
use crate::coreset::CoresetConfig;
use crate::embedding::Aggregator;
use crate::error::{Error, Result};
use crate::knn::BankPrecision;
use crate::preprocess::PreprocessConfig;
use crate::scoring::ScoringConfig;

/// Everything that defines how a PatchCore model is fitted and how it scores, before
/// validation. Build one (start from [`Default`], which follows the original implementation)
/// and turn it into a [`PatchCoreConfig`] with [`PatchCoreParams::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct PatchCoreParams {
    /// Image preprocessing (resize, crop, normalisation).
    pub preprocess: PreprocessConfig,
    /// Backbone layers whose outputs are embedded; the first one defines the patch grid.
    pub layers: Vec<Layer>,
    /// How the tapped feature maps become one vector per patch.
    pub aggregator: Aggregator,
    /// How the memory bank is subsampled.
    pub coreset: CoresetConfig,
    /// Nearest-neighbour scoring and image-score re-weighting.
    pub scoring: ScoringConfig,
    /// Anomaly-map upsampling and blur.
    pub map: MapConfig,
    /// Images per backbone batch while fitting (bounds the memory of feature extraction).
    pub batch_size: usize,
    /// How the fitted memory bank is stored (in memory and in the model file).
    /// [`BankPrecision::F16`] halves the bank's memory and file size; scores then come from the
    /// exact search of the f16-rounded bank.
    pub bank_precision: BankPrecision,
    /// Precision of the backbone when the model scores images. [`Precision::Int8`] quantises
    /// it with the activation ranges the fit measures on its images
    /// ([`crate::model::PatchCore::calibration`]). The memory bank is always extracted in f32, so a
    /// model can switch precision after the fit ([`crate::model::PatchCore::set_precision`]).
    pub precision: Precision,
}

impl Default for PatchCoreParams {
    fn default() -> Self {
        PatchCoreParams {
            preprocess: PreprocessConfig::default(),
            layers: vec![Layer::Layer2, Layer::Layer3],
            aggregator: Aggregator::default(),
            coreset: CoresetConfig::default(),
            scoring: ScoringConfig::default(),
            map: MapConfig::default(),
            batch_size: 4,
            bank_precision: BankPrecision::F32,
            precision: Precision::F32,
        }
    }
}

/// Validated parameters; the only way to get one is [`PatchCoreParams::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct PatchCoreConfig {
    params: PatchCoreParams,
}

impl PatchCoreParams {
    /// Validates every parameter and returns the checked configuration.
    pub fn check(self) -> Result<PatchCoreConfig> {
        self.preprocess.validate()?;
        if self.layers.is_empty() {
            return Err(Error::param(
                "layers",
                "at least one backbone layer is needed",
            ));
        }
        for (i, l) in self.layers.iter().enumerate() {
            if self.layers[..i].contains(l) {
                return Err(Error::param("layers", format!("layer {l} is listed twice")));
            }
        }
        self.aggregator.validate()?;
        self.coreset.validate()?;
        self.scoring.validate()?;
        self.map.validate()?;
        if self.batch_size == 0 {
            return Err(Error::param("batch_size", "must be at least 1"));
        }
        Ok(PatchCoreConfig { params: self })
    }
}

impl PatchCoreConfig {
    /// The validated parameters.
    pub fn params(&self) -> &PatchCoreParams {
        &self.params
    }

    /// Gives the parameters back, e.g. to change one and check again.
    pub fn into_params(self) -> PatchCoreParams {
        self.params
    }
}
