//! Counts of right and wrong decisions at one threshold, and precision / recall from them.

use super::threshold::is_anomalous;
use crate::{Error, Result};

/// The confusion counts of the decisions `score >= threshold` against labels
/// (`true` = anomalous).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Confusion {
    /// Anomalous samples judged anomalous.
    pub true_positives: usize,
    /// Normal samples judged anomalous (false alarms).
    pub false_positives: usize,
    /// Normal samples judged normal.
    pub true_negatives: usize,
    /// Anomalous samples judged normal (missed defects).
    pub false_negatives: usize,
}

impl Confusion {
    /// Counts the decisions [`is_anomalous`]`(score, threshold)` (a NaN score counts as
    /// anomalous) against `labels`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `labels` and `scores` differ in length.
    ///
    /// # Example
    /// ```
    /// use patchcore::metrics::Confusion;
    /// let c = Confusion::at(&[true, true, false, false], &[0.9, 0.2, 0.6, 0.1], 0.5).unwrap();
    /// assert_eq!((c.true_positives, c.false_negatives, c.false_positives), (1, 1, 1));
    /// assert_eq!((c.precision(), c.recall()), (Some(0.5), Some(0.5)));
    /// ```
    pub fn at(labels: &[bool], scores: &[f32], threshold: f32) -> Result<Confusion> {
        if labels.len() != scores.len() {
            return Err(Error::input(format!(
                "{} labels but {} scores; they must pair up",
                labels.len(),
                scores.len()
            )));
        }
        let mut c = Confusion::default();
        for (&l, &s) in labels.iter().zip(scores) {
            match (l, is_anomalous(s, threshold)) {
                (true, true) => c.true_positives += 1,
                (true, false) => c.false_negatives += 1,
                (false, true) => c.false_positives += 1,
                (false, false) => c.true_negatives += 1,
            }
        }
        Ok(c)
    }

    /// `TP / (TP + FP)`: the fraction of flagged samples that are anomalous; `None` when
    /// nothing is flagged.
    pub fn precision(&self) -> Option<f64> {
        let flagged = self.true_positives + self.false_positives;
        (flagged > 0).then(|| self.true_positives as f64 / flagged as f64)
    }

    /// `TP / (TP + FN)`: the fraction of anomalous samples that are flagged; `None` without
    /// anomalous samples.
    pub fn recall(&self) -> Option<f64> {
        let positives = self.true_positives + self.false_negatives;
        (positives > 0).then(|| self.true_positives as f64 / positives as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_hand() {
        // Threshold 0.5, decisions >= 0.5: 0.5 itself and NaN are anomalous.
        let labels = [true, true, true, false, false, false, false];
        let scores = [0.5, f32::NAN, 0.49, 0.5, 0.7, 0.1, 0.0];
        let c = Confusion::at(&labels, &scores, 0.5).unwrap();
        assert_eq!(
            c,
            Confusion {
                true_positives: 2,
                false_negatives: 1,
                false_positives: 2,
                true_negatives: 2
            }
        );
        assert_eq!(c.precision(), Some(0.5));
        assert_eq!(c.recall(), Some(2.0 / 3.0));
        let none = Confusion::at(&[false], &[0.1], 0.5).unwrap();
        assert_eq!((none.precision(), none.recall()), (None, None));
        assert!(Confusion::at(&[true], &[], 0.5).is_err());
    }
}
