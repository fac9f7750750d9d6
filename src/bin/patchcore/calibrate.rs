//! The decision threshold of `fit --threshold-from-normal`: the rule, the check that the
//! held-out images are not training images, and the refusal of thresholds that would make
//! every later decision meaningless.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use patchcore::metrics::{threshold_from_normal, NormalThreshold};
use sha2::{Digest, Sha256};

use crate::common::{CliError, CliResult};

/// Parses `--threshold-rule`: `max`, `quantile:Q` (`0 <= Q <= 1`) or `mean-std:K` (finite K).
pub fn parse_rule(s: &str) -> Result<NormalThreshold, String> {
    let s = s.trim();
    let (name, value) = match s.split_once(':') {
        Some((n, v)) => (n, Some(v)),
        None => (s, None),
    };
    let number = |v: Option<&str>| -> Result<f64, String> {
        let v =
            v.ok_or_else(|| format!("`{name}` needs a value, e.g. `{name}:{}`", example(name)))?;
        v.trim()
            .parse::<f64>()
            .map_err(|_| format!("`{v}` is not a number"))
    };
    match name {
        "max" if value.is_none() => Ok(NormalThreshold::Max),
        "quantile" => {
            let q = number(value)?;
            if (0.0..=1.0).contains(&q) {
                Ok(NormalThreshold::Quantile(q))
            } else {
                Err(format!("the quantile must lie in [0, 1], got {q}"))
            }
        }
        "mean-std" => {
            let k = number(value)?;
            if k.is_finite() {
                Ok(NormalThreshold::MeanPlusStd(k))
            } else {
                Err("the std multiplier must be finite".into())
            }
        }
        _ => Err(
            "expected `max`, `quantile:Q` (e.g. quantile:0.99) or `mean-std:K` (e.g. \
                  mean-std:3)"
                .into(),
        ),
    }
}

fn example(name: &str) -> &'static str {
    if name == "quantile" {
        "0.99"
    } else {
        "3"
    }
}

/// The threshold stored for held-out good `scores` under `rule`. Decisions are
/// `score >= threshold`, so the `max` rule stores the next float above the highest score
/// (every held-out image is then judged good).
///
/// Refuses (exit 1) a threshold that is not a positive normal float: scores are distances, so
/// such a threshold means the held-out images match the memory bank exactly (they were
/// training images), and it would flag every image and break the heat-map colour scale.
pub fn threshold(scores: &[f32], rule: NormalThreshold) -> CliResult<f32> {
    let t = threshold_from_normal(scores, rule)?;
    let t = if rule == NormalThreshold::Max {
        next_up(t)
    } else {
        t
    };
    if !(t.is_normal() && t > 0.0) {
        return Err(CliError::Failed(format!(
            "--threshold-from-normal: the threshold would be {t:e} (the held-out scores are \
             0 or nearly: those images are in the memory bank, i.e. they are training \
             images); such a threshold judges every image anomalous, so it is not stored and \
             no model was written. Give held-out good images that were not used for --train"
        )));
    }
    Ok(t)
}

/// The held-out images that are also training images (same canonical path, or same content),
/// as `(held-out, training)` pairs.
pub fn overlap(train: &[PathBuf], held_out: &[PathBuf]) -> Vec<(PathBuf, PathBuf)> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let by_path: HashMap<PathBuf, &PathBuf> = train.iter().map(|p| (canon(p), p)).collect();
    let mut by_hash: Option<HashMap<[u8; 32], &PathBuf>> = None;
    let mut out = Vec::new();
    for h in held_out {
        if let Some(t) = by_path.get(&canon(h)) {
            out.push((h.clone(), (*t).clone()));
            continue;
        }
        // Hash the training set lazily (only when some held-out image is not a path match).
        let hashes = by_hash.get_or_insert_with(|| {
            train
                .iter()
                .filter_map(|p| content_hash(p).map(|d| (d, p)))
                .collect()
        });
        if let Some(t) = content_hash(h).and_then(|d| hashes.get(&d)) {
            out.push((h.clone(), (*t).clone()));
        }
    }
    out
}

fn content_hash(p: &Path) -> Option<[u8; 32]> {
    let mut f = std::fs::File::open(p).ok()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(h.finalize().into())
}

/// The smallest `f32` greater than a finite `x`.
pub fn next_up(x: f32) -> f32 {
    if x == 0.0 {
        f32::from_bits(1)
    } else if x > 0.0 {
        f32::from_bits(x.to_bits() + 1)
    } else {
        f32::from_bits(x.to_bits() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse() {
        assert_eq!(parse_rule("max"), Ok(NormalThreshold::Max));
        assert_eq!(
            parse_rule("quantile:0.99"),
            Ok(NormalThreshold::Quantile(0.99))
        );
        assert_eq!(
            parse_rule("mean-std:3"),
            Ok(NormalThreshold::MeanPlusStd(3.0))
        );
        for bad in [
            "quantile",
            "quantile:1.5",
            "mean-std:inf",
            "max:1",
            "median",
            "",
        ] {
            assert!(parse_rule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn thresholds_by_hand() {
        let s = [1.0f32, 2.0, 3.0, 4.0];
        // max: the next float above 4.
        // (the f32 spacing in [4, 8) is 4·EPSILON).
        assert_eq!(
            threshold(&s, NormalThreshold::Max).unwrap(),
            4.0 + 4.0 * f32::EPSILON
        );
        // quantile 0.5 of 1..4 (linear): 2.5; mean 2.5, population std sqrt(1.25).
        assert_eq!(threshold(&s, NormalThreshold::Quantile(0.5)).unwrap(), 2.5);
        let want = (2.5 + 2.0 * 1.25f64.sqrt()) as f32;
        assert_eq!(
            threshold(&s, NormalThreshold::MeanPlusStd(2.0)).unwrap(),
            want
        );
        // Held-out scores of 0 (training images): refused, whatever the rule.
        for rule in [NormalThreshold::Max, NormalThreshold::Quantile(0.9)] {
            assert!(matches!(
                threshold(&[0.0, 0.0], rule),
                Err(CliError::Failed(_))
            ));
        }
        // mean − 3 std below zero: refused too.
        assert!(threshold(&s, NormalThreshold::MeanPlusStd(-3.0)).is_err());
    }
}
