//! The whole PatchCore flow on one machine that has downloaded nothing.
//!
//! ```text
//! cargo run --release --example example
//! cargo run --release --example example -- --weights resnet18.safetensors --arch resnet18
//! cargo run --release --example example -- --data mvtec/bottle --weights wide_resnet50_2.safetensors --arch wide_resnet50_2
//! ```
//!
//! Without `--data` it writes a small procedural texture data set with scratches and spots
//! (masks included); without `--weights` it uses a ResNet-18 with seeded random weights. It
//! fits, scores the test images, prints image/pixel AUROC, AUPRO and timings, and writes heat
//! maps with defect outlines to a folder it prints.

use std::path::PathBuf;
use std::time::Instant;

use patchcore::backbone::{Backbone, Layer, ResNetSpec};
use patchcore::coreset::CoresetSize;
use patchcore::dataset::Category;
use patchcore::inspect::{InspectOptions, RenderOptions};
use patchcore::metrics::{self, AuproConfig};
use patchcore::model::{FitProgress, PatchCore, PatchCoreParams, PredictOptions};
use patchcore::preprocess::{self, ImageLimits};
use patchcore::synthetic::{self, SyntheticSpec};
use patchcore::visualize;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut data: Option<PathBuf> = None;
    let mut weights: Option<PathBuf> = None;
    let mut arch = "resnet18".to_string();
    let mut out: Option<PathBuf> = None;
    let mut coreset = 0.1;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--data" => data = Some(value()?.into()),
            "--weights" => weights = Some(value()?.into()),
            "--arch" => arch = value()?,
            "--out" => out = Some(value()?.into()),
            "--coreset" => coreset = value()?.parse()?,
            "--help" | "-h" => {
                println!(
                    "usage: example [--data CATEGORY_DIR] [--weights W --arch A] [--out DIR] \
                     [--coreset RATIO]"
                );
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let out = out.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("patchcore-example-{}", std::process::id()))
    });
    std::fs::create_dir_all(&out)?;
    let root = match data {
        Some(d) => d,
        None => {
            let t = Instant::now();
            let spec = SyntheticSpec::default();
            let dir = synthetic::write_category(&out, "texture", &spec)?;
            println!(
                "wrote a synthetic data set to {} ({} train, {} test images) in {:.2} s",
                dir.display(),
                spec.train,
                spec.test_good + 2 * spec.test_per_defect,
                t.elapsed().as_secs_f64()
            );
            dir
        }
    };
    let category = Category::open(&root)?;
    let spec = ResNetSpec::from_name(&arch)?;
    let layers = [Layer::Layer2, Layer::Layer3];
    let backbone = match &weights {
        Some(w) => Backbone::from_safetensors_file(w, &spec, &layers)?,
        None => {
            println!("no --weights: using {arch} with seeded random weights");
            Backbone::random(&spec, &layers, 0)?
        }
    };

    let mut params = PatchCoreParams::default();
    params.coreset.size = CoresetSize::Ratio(coreset);
    let config = params.check()?;
    let limits = ImageLimits::default();
    let t = Instant::now();
    let mut progress = |p: FitProgress| {
        if let FitProgress::Features { done, total } = p {
            eprint!("\rfeatures {done}/{total}");
            if done == total {
                eprintln!();
            }
        }
    };
    let (model, fit_t) =
        PatchCore::fit_paths(config, backbone, &category.train, &limits, &mut progress)?;
    println!(
        "fit on {} images in {:.2} s (backbone {:.2} s, embedding {:.2} s, coreset {:.2} s); \
         memory bank {} × {}",
        category.train.len(),
        t.elapsed().as_secs_f64(),
        fit_t.backbone.as_secs_f64(),
        fit_t.embedding.as_secs_f64(),
        fit_t.coreset.as_secs_f64(),
        model.memory_bank().nrows(),
        model.memory_bank().ncols()
    );

    let cfg = model.config().params().preprocess;
    let (mut labels, mut scores, mut maps, mut masks) = (vec![], vec![], vec![], vec![]);
    let t = Instant::now();
    for s in &category.test {
        let (pred, _) = model.predict_path(&s.image, &limits, PredictOptions::default())?;
        let map = pred.anomaly_map.ok_or("no map")?;
        let mask = match &s.mask {
            Some(m) => preprocess::preprocess_mask(&preprocess::load_mask(m, &limits)?, &cfg)?,
            None => ndarray::Array2::from_elem(map.dim(), false),
        };
        labels.push(s.is_anomalous());
        scores.push(pred.score);
        maps.push(map);
        masks.push(mask);
    }
    let per_image = t.elapsed().as_secs_f64() * 1e3 / category.test.len() as f64;
    let mv: Vec<_> = maps.iter().map(|m| m.view()).collect();
    let kv: Vec<_> = masks.iter().map(|m| m.view()).collect();
    let f1 = metrics::f1_max(&labels, &scores)?;
    println!("image AUROC  {:.4}", metrics::auroc(&labels, &scores)?);
    println!("pixel AUROC  {:.4}", metrics::pixel_auroc(&kv, &mv)?);
    println!(
        "AUPRO        {:.4}",
        metrics::aupro(&kv, &mv, &AuproConfig::default())?
    );
    println!(
        "F1-max       {:.4} at image threshold {:.4}",
        f1.f1, f1.threshold
    );
    println!("predict      {per_image:.1} ms per image (with anomaly map)");

    // Pictures: the threshold (here the F1-optimal one) is the middle of the colour scale, the
    // same on every image; `inspect` maps the heat map and the regions back onto the original
    // image and `render` draws them.
    let opts = InspectOptions {
        threshold: Some(f1.threshold as f32),
        ..InspectOptions::default()
    };
    let pics = out.join("heatmaps");
    std::fs::create_dir_all(&pics)?;
    let mut n_regions = 0;
    for s in &category.test {
        let (img, ins) = model.inspect_path(&s.image, &opts)?;
        n_regions += ins.regions.len();
        let pic = ins.render(&img, &RenderOptions::default())?;
        let stem = s
            .image
            .file_stem()
            .and_then(|x| x.to_str())
            .unwrap_or("img");
        visualize::save_png(&pic, &pics.join(format!("{}_{stem}.png", s.defect)), true)?;
    }
    println!("{n_regions} defect regions at the threshold");
    println!("heat maps with outlines: {}", pics.display());
    Ok(())
}
