//! `patchcore embed`.

use ndarray::{Array4, ArrayD};

use patchcore::preprocess::ImageLimits;

use crate::args::EmbedArgs;
use crate::common::{
    aggregator, check_input_file, checked_preprocess, load_backbone, read_input_file, CliError,
    CliResult,
};
use crate::outputs::{check_not_input, check_output_file};

pub fn run(a: EmbedArgs) -> CliResult {
    let net = &a.backbone.net;
    let pre = checked_preprocess(&a.preprocess)?;
    let agg = aggregator(a.aggregator);
    check_output_file(&a.out, a.force)?;
    check_input_file(
        &a.input,
        "--input",
        "input",
        "pass an image or a safetensors tensor file",
    )?;
    check_not_input(
        std::slice::from_ref(&a.out),
        "--out",
        &[
            (a.input.as_path(), "--input"),
            (a.backbone.weights.as_path(), "--weights"),
        ],
    )?;
    crate::cleanup::sweep_for_output(&a.out);
    let _tmp = crate::cleanup::register_output(&a.out);
    let backbone = load_backbone(&a.backbone.weights, &net.arch, &net.layers)?;
    let is_tensor = a
        .input
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let input: Array4<f32> = if is_tensor {
        let bytes = read_input_file(&a.input)?;
        let t = patchcore::tensor_io::read_f32(&bytes, &a.input, "input")?;
        let shape = t.shape().to_vec();
        t.into_dimensionality::<ndarray::Ix4>().map_err(|_| {
            CliError::Failed(format!(
                "{}: tensor `input` has shape {shape:?}; expected [N, 3, H, W] (a normalised \
                 batch)",
                a.input.display()
            ))
        })?
    } else {
        let img = patchcore::preprocess::load_rgb(&a.input, &ImageLimits::default())?;
        patchcore::preprocess::preprocess_batch(&[img], &pre)?
    };
    let feats = backbone.forward(input.view())?;
    let mut named: Vec<(String, ArrayD<f32>)> = net
        .layers
        .iter()
        .zip(feats.iter())
        .map(|(l, f)| (l.to_string(), f.clone().into_dyn()))
        .collect();
    if !a.no_embedding {
        let views: Vec<_> = feats.iter().map(|f| f.view()).collect();
        let emb = patchcore::embedding::embed(&views, &agg)?;
        named.push(("embedding".into(), emb.into_dyn()));
    }
    let refs: Vec<(&str, &ArrayD<f32>)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    patchcore::tensor_io::write_f32(&a.out, &refs, a.force)?;
    for (n, t) in &named {
        eprintln!("{n}: {:?}", t.shape());
    }
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
