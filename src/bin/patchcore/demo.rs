//! `patchcore demo`: a synthetic data set and the commands to try on it.

use std::path::Path;

use patchcore::synthetic::{write_category, Generator, SyntheticSpec};
use patchcore::visualize::save_png;

use crate::args::DemoArgs;
use crate::common::{out_line, CliError, CliResult};
use crate::outputs::create_dir;

/// Name of the category folder written under the demo folder.
const CATEGORY: &str = "texture";
/// Folder of the held-out good images (for `fit --threshold-from-normal`).
const HELD_OUT: &str = "held_out_good";
/// How many held-out good images.
const HELD_OUT_COUNT: usize = 8;

pub fn run(a: DemoArgs) -> CliResult {
    let cat = a.dir.join(CATEGORY);
    if cat.exists() {
        return Err(CliError::Failed(format!(
            "{}: exists; choose another folder for the demo (nothing was written)",
            cat.display()
        )));
    }
    create_dir(&a.dir)?;
    let spec = SyntheticSpec {
        size: a.size,
        seed: a.seed,
        ..SyntheticSpec::default()
    };
    let held_out = a.dir.join(HELD_OUT);
    if held_out.exists() {
        return Err(CliError::Failed(format!(
            "{}: exists; choose another folder for the demo (nothing was written)",
            held_out.display()
        )));
    }
    let data = write_category(&a.dir, CATEGORY, &spec)?;
    // Held-out good images for the threshold, from another seed: never training images.
    create_dir(&held_out)?;
    let mut gen = Generator::new(a.seed ^ 0x005e_ed0f_7e57);
    for i in 0..HELD_OUT_COUNT {
        let img = gen.normal_image(spec.size);
        save_png(&img, &held_out.join(format!("{i:03}.png")), false)?;
    }
    eprintln!(
        "wrote {}: {} good training images, {} test images ({} good, {} scratch, {} spot; \
         masks under ground_truth/), {}×{} pixels; and {HELD_OUT_COUNT} held-out good images \
         in {}",
        data.display(),
        spec.train,
        spec.test_good + 2 * spec.test_per_defect,
        spec.test_good,
        spec.test_per_defect,
        spec.test_per_defect,
        spec.size,
        spec.size,
        held_out.display()
    );
    let q = |p: &Path| shell_quote(&p.display().to_string());
    let weights = a.dir.join("resnet18-random.safetensors");
    let model = a.dir.join("model.safetensors");
    let maps = a.dir.join("maps");
    // The images are square: no resize, no crop.
    let size = spec.size;
    let lines = [
        "# next (random weights: the commands work, the scores mean little; see --help of weights):"
            .to_string(),
        format!("patchcore weights --random resnet18 --out {}", q(&weights)),
        format!(
            "patchcore fit --weights {} --arch resnet18 --resize {size} --crop {size} --train {} \
             --threshold-from-normal {} --embed-weights --out {}",
            q(&weights),
            q(&data.join("train/good")),
            q(&held_out),
            q(&model)
        ),
        format!(
            "patchcore predict --model {} --heatmaps {} --contours {}",
            q(&model),
            q(&maps),
            q(&data.join("test/scratch"))
        ),
        format!("patchcore eval --data {} --model {}", q(&data), q(&model)),
    ];
    for l in &lines {
        out_line(l)?;
    }
    Ok(())
}

/// `s` as one POSIX shell word: unchanged when it holds only safe characters, otherwise in
/// single quotes (a quote inside written as `'\''`).
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:=@%".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a/b_c.png"), "a/b_c.png");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
