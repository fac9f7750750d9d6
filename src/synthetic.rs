//! Procedural images with known defects, for demos, tests and benchmarks that must run on a
//! machine that has downloaded nothing.
//!
//! Normal images are a woven texture (two families of stripes with random phase, a little
//! noise); defective images add a scratch (a thin dark line) or a spot (a bright blob) and come
//! with the exact ground-truth mask.

use std::path::{Path, PathBuf};

use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// The kinds of synthetic defect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// A thin dark line across part of the image.
    Scratch,
    /// A bright round blob.
    Spot,
}

impl Defect {
    /// Folder name of the defect in the MVTec layout.
    pub fn name(self) -> &'static str {
        match self {
            Defect::Scratch => "scratch",
            Defect::Spot => "spot",
        }
    }
}

/// A normal (defect-free) texture image of `size × size` pixels; the same `seed` gives the
/// same image (on every platform and `rand` version: the generator is internal).
///
/// ```
/// let a = patchcore::synthetic::normal_image(32, 7);
/// assert_eq!(a, patchcore::synthetic::normal_image(32, 7));
/// assert_ne!(a, patchcore::synthetic::normal_image(32, 8));
/// ```
pub fn normal_image(size: u32, seed: u64) -> RgbImage {
    Generator::new(seed).normal_image(size)
}

/// A defective image and its ground-truth mask (255 on the defect, 0 elsewhere); the same
/// `seed` gives the same pair.
pub fn defective_image(size: u32, defect: Defect, seed: u64) -> (RgbImage, GrayImage) {
    Generator::new(seed).defective_image(size, defect)
}

/// A seeded stream of synthetic images: consecutive calls give different images, and the
/// same seed gives the same sequence. `Generator::new(s).normal_image(n)` equals
/// [`normal_image`]`(n, s)`.
#[derive(Debug, Clone)]
pub struct Generator {
    rng: ChaCha8Rng,
}

impl Generator {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Generator {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The next normal image of `size × size` pixels.
    pub fn normal_image(&mut self, size: u32) -> RgbImage {
        normal_from(size, &mut self.rng)
    }

    /// The next defective image and its mask.
    pub fn defective_image(&mut self, size: u32, defect: Defect) -> (RgbImage, GrayImage) {
        defective_from(size, defect, &mut self.rng)
    }
}

fn normal_from(size: u32, rng: &mut impl Rng) -> RgbImage {
    let phase_x: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    let phase_y: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    let period = 9.0 + rng.random_range(-0.3f32..0.3);
    let k = std::f32::consts::TAU / period;
    let mut img = RgbImage::new(size, size);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let (xf, yf) = (x as f32, y as f32);
        let warp = (xf * k + phase_x).sin();
        let weft = (yf * k + phase_y).sin();
        let v = 0.5 + 0.18 * warp + 0.18 * weft + 0.04 * rng.random_range(-1.0f32..1.0);
        let r = 150.0 + 60.0 * v;
        let g = 110.0 + 50.0 * v;
        let b = 70.0 + 40.0 * v;
        *px = Rgb([r as u8, g as u8, b as u8]);
    }
    img
}

fn defective_from(size: u32, defect: Defect, rng: &mut impl Rng) -> (RgbImage, GrayImage) {
    let mut img = normal_from(size, rng);
    let mut mask = GrayImage::new(size, size);
    let s = size as f32;
    match defect {
        Defect::Scratch => {
            let (x0, y0) = (
                rng.random_range(0.15..0.45) * s,
                rng.random_range(0.15..0.85) * s,
            );
            let angle: f32 = rng.random_range(-0.8..0.8);
            let len = rng.random_range(0.35..0.5) * s;
            let half_width = (s / 90.0).max(1.0);
            let (dx, dy) = (angle.cos(), angle.sin());
            for (x, y, px) in img.enumerate_pixels_mut() {
                let (px_, py_) = (x as f32 - x0, y as f32 - y0);
                let t = px_ * dx + py_ * dy;
                let d = (px_ * dy - py_ * dx).abs();
                if (0.0..=len).contains(&t) && d <= half_width {
                    *px = Rgb([40, 30, 25]);
                    mask.put_pixel(x, y, Luma([255]));
                }
            }
        }
        Defect::Spot => {
            let (cx, cy) = (
                rng.random_range(0.25..0.75) * s,
                rng.random_range(0.25..0.75) * s,
            );
            let r = rng.random_range(0.05..0.09) * s;
            for (x, y, px) in img.enumerate_pixels_mut() {
                let d2 = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2);
                if d2 <= r * r {
                    *px = Rgb([235, 235, 210]);
                    mask.put_pixel(x, y, Luma([255]));
                }
            }
        }
    }
    (img, mask)
}

/// Sizes of a synthetic category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticSpec {
    /// Side of every image in pixels.
    pub size: u32,
    /// Normal training images.
    pub train: usize,
    /// Normal test images.
    pub test_good: usize,
    /// Defective test images per defect kind.
    pub test_per_defect: usize,
    /// Seed of the generator.
    pub seed: u64,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        SyntheticSpec {
            size: 256,
            train: 16,
            test_good: 8,
            test_per_defect: 6,
            seed: 7,
        }
    }
}

/// Writes a category in the MVTec AD layout (see [`crate::dataset`]) under `root/name` and
/// returns the category folder. Fails if that folder already exists, so nothing is overwritten.
pub fn write_category(root: &Path, name: &str, spec: &SyntheticSpec) -> Result<PathBuf> {
    let dir = root.join(name);
    if dir.exists() {
        return Err(Error::io(
            &dir,
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, "folder exists"),
        ));
    }
    let mut gen = Generator::new(spec.seed);
    let save_rgb = |img: &RgbImage, p: PathBuf| -> Result<()> {
        std::fs::create_dir_all(p.parent().unwrap_or(Path::new(".")))
            .map_err(|e| Error::io(&p, e))?;
        img.save(&p).map_err(|e| Error::Image {
            path: p.clone(),
            reason: e.to_string(),
        })
    };
    for i in 0..spec.train {
        save_rgb(
            &gen.normal_image(spec.size),
            dir.join(format!("train/good/{i:03}.png")),
        )?;
    }
    for i in 0..spec.test_good {
        save_rgb(
            &gen.normal_image(spec.size),
            dir.join(format!("test/good/{i:03}.png")),
        )?;
    }
    for defect in [Defect::Scratch, Defect::Spot] {
        for i in 0..spec.test_per_defect {
            let (img, mask) = gen.defective_image(spec.size, defect);
            save_rgb(&img, dir.join(format!("test/{}/{i:03}.png", defect.name())))?;
            let mp = dir.join(format!("ground_truth/{}/{i:03}_mask.png", defect.name()));
            std::fs::create_dir_all(mp.parent().unwrap_or(Path::new(".")))
                .map_err(|e| Error::io(&mp, e))?;
            mask.save(&mp).map_err(|e| Error::Image {
                path: mp.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_mark_exactly_the_changed_pixels() {
        for defect in [Defect::Scratch, Defect::Spot] {
            let (img, mask) = defective_image(64, defect, 3);
            let area = mask.pixels().filter(|p| p[0] == 255).count();
            assert!(area > 20, "{defect:?}: defect area {area}");
            let colour = match defect {
                Defect::Scratch => Rgb([40, 30, 25]),
                Defect::Spot => Rgb([235, 235, 210]),
            };
            for (x, y, m) in mask.enumerate_pixels() {
                assert_eq!(m[0] == 255, *img.get_pixel(x, y) == colour, "({x},{y})");
            }
        }
    }

    #[test]
    fn same_seed_same_images() {
        let a = normal_image(32, 1);
        let b = normal_image(32, 1);
        let c = normal_image(32, 2);
        assert_eq!(a, b);
        assert_ne!(a, c);
        // The stream API continues where the one-shot call stops.
        let mut g = Generator::new(1);
        assert_eq!(g.normal_image(32), a);
        assert_ne!(g.normal_image(32), a);
    }
}
