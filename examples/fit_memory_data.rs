//! Writes the inputs of `scripts/fit_memory_table.sh`: `N` synthetic normal images (256 × 256
//! PNG, `synthetic::Generator`) and seeded random WRN-50-2 weights (up to layer3), so that
//! the fit's time and memory can be measured on a machine that has downloaded nothing.
//!
//! `cargo run --release --example fit_memory_data -- OUT_DIR N`

use patchcore::backbone::{Backbone, Layer, ResNetSpec};
use patchcore::synthetic::Generator;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: fit_memory_data OUT_DIR N");
        std::process::exit(2);
    }
    let out = std::path::PathBuf::from(&args[1]);
    let n: usize = args[2].parse()?;
    let images = out.join(format!("train{n}"));
    std::fs::create_dir_all(&images)?;
    let mut generator = Generator::new(7);
    for i in 0..n {
        let p = images.join(format!("{i:05}.png"));
        let img = generator.normal_image(256);
        if !p.exists() {
            img.save(&p)?;
        }
    }
    let w = out.join("wrn50_2_random.safetensors");
    if !w.exists() {
        let spec = ResNetSpec::from_name("wide_resnet50_2")?;
        std::fs::write(
            &w,
            Backbone::random_weights_safetensors(&spec, Layer::Layer3, 1)?,
        )?;
    }
    println!("{}", images.display());
    Ok(())
}
