//! How far the int8 and bf16 backbones' features are from the f32 ones: the relative L2 error
//! of the layer2 and layer3 maps and of the patch embedding, measured on normal and defective
//! images (int8 calibrated on other normal images).
//!
//! ```text
//! cargo run --release --example precision_error -- [--arch wide_resnet50_2] [--weights W]
//!     [--size 256] [--train 16] [--test 8]
//! ```
//!
//! Images are procedural (`patchcore::synthetic`: textures with scratches and spots); without
//! `--weights` the backbone has seeded random weights. The relative error is
//! `‖reduced − f32‖₂ / ‖f32‖₂` over each whole tensor, and its maximum over the test images
//! is printed with the mean. On your own data, `patchcore eval` with `--precision f32`,
//! `--precision int8` and `--precision bf16` compares the metrics that matter.

use ndarray::{Array2, Array4};
use patchcore::backbone::{Backbone, Layer, Precision, ResNetSpec};
use patchcore::embedding::{embed, Aggregator};
use patchcore::preprocess::{preprocess_batch, PreprocessConfig};
use patchcore::synthetic::{Defect, Generator};

fn rel<'a>(a: impl Iterator<Item = &'a f32>, b: impl Iterator<Item = &'a f32>) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.zip(b) {
        num += (f64::from(x) - f64::from(y)).powi(2);
        den += f64::from(y).powi(2);
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

fn features(net: &Backbone, x: &Array4<f32>) -> (Vec<Array4<f32>>, Array2<f32>) {
    let taps = net.forward(x.view()).expect("forward");
    let views: Vec<_> = taps.iter().map(|t| t.view()).collect();
    let emb = embed(&views, &Aggregator::default()).expect("embedding");
    (taps, emb)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut arch = "wide_resnet50_2".to_string();
    let mut weights: Option<String> = None;
    let (mut size, mut train, mut test) = (256u32, 16usize, 8usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--arch" => arch = value()?,
            "--weights" => weights = Some(value()?),
            "--size" => size = value()?.parse()?,
            "--train" => train = value()?.parse()?,
            "--test" => test = value()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let spec = ResNetSpec::from_name(&arch)?;
    let taps = [Layer::Layer2, Layer::Layer3];
    let mut net = match &weights {
        Some(w) => Backbone::from_safetensors_file(w, &spec, &taps)?,
        None => Backbone::random(&spec, &taps, 0)?,
    };
    let cfg = PreprocessConfig::default();
    let mut gen = Generator::new(3);
    let normal: Vec<_> = (0..train).map(|_| gen.normal_image(size)).collect();
    let mut cal = net.new_calibration();
    for chunk in normal.chunks(4) {
        net.forward_calibrating(preprocess_batch(chunk, &cfg)?.view(), &mut cal)?;
    }
    let defects = [Defect::Scratch, Defect::Spot];
    let tests: Vec<(&str, _)> = (0..test)
        .map(|i| {
            if i % 2 == 0 {
                ("normal", gen.normal_image(size))
            } else {
                ("defective", gen.defective_image(size, defects[i / 2 % 2]).0)
            }
        })
        .collect();
    let inputs: Vec<Array4<f32>> = tests
        .iter()
        .map(|(_, im)| preprocess_batch(std::slice::from_ref(im), &cfg))
        .collect::<Result<_, _>>()?;
    let reference: Vec<_> = inputs.iter().map(|x| features(&net, x)).collect();
    println!(
        "{arch}, {} weights, int8 calibrated on {train} normal images",
        if weights.is_some() { "given" } else { "random" },
    );
    for precision in [Precision::Int8, Precision::Bf16] {
        net.set_precision(precision, Some(&cal))?;
        println!(
            "{}: relative L2 error against f32 (mean / max over the test images):",
            net.kernels()
        );
        for kind in ["normal", "defective"] {
            let mut errs = [Vec::new(), Vec::new(), Vec::new()];
            for ((k, _), (x, (ft, fe))) in tests.iter().zip(inputs.iter().zip(&reference)) {
                if *k != kind {
                    continue;
                }
                let (qt, qe) = features(&net, x);
                errs[0].push(rel(qt[0].iter(), ft[0].iter()));
                errs[1].push(rel(qt[1].iter(), ft[1].iter()));
                errs[2].push(rel(qe.iter(), fe.iter()));
            }
            let stat = |v: &[f64]| {
                let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
                let max = v.iter().copied().fold(0.0, f64::max);
                format!("{mean:.4} / {max:.4}")
            };
            println!(
                "  {kind:<9} images: layer2 {}, layer3 {}, embedding {}",
                stat(&errs[0]),
                stat(&errs[1]),
                stat(&errs[2])
            );
        }
    }
    Ok(())
}
