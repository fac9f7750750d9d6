//! Reading labelled image folders in the MVTec AD layout.
//!
//! ```text
//! <category>/train/good/*.png
//! <category>/test/good/*.png
//! <category>/test/<defect>/*.png
//! <category>/ground_truth/<defect>/<stem>_mask.png
//! ```
//!
//! Images of any size and format the crate decodes are accepted. Masks are paired with their
//! image by file stem (`000.png` ↔ `000_mask.png`), not by sorted position as the original
//! implementation does, so a missing mask is reported instead of silently shifting every pair.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// File extensions (lower-case) that are treated as images.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// One test image with its label and, for defective images, its ground-truth mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestSample {
    /// The image file.
    pub image: PathBuf,
    /// Name of the folder under `test/` (`good` for normal images).
    pub defect: String,
    /// The ground-truth mask (`None` for `good` images).
    pub mask: Option<PathBuf>,
}

impl TestSample {
    /// Whether the sample is anomalous (its defect folder is not `good`).
    pub fn is_anomalous(&self) -> bool {
        self.defect != "good"
    }
}

/// One category of an MVTec-AD-style data set.
#[derive(Debug, Clone)]
pub struct Category {
    /// Category name (the folder name).
    pub name: String,
    /// The category folder.
    pub root: PathBuf,
    /// Normal training images, sorted by path.
    pub train: Vec<PathBuf>,
    /// Test images, sorted by defect folder then path.
    pub test: Vec<TestSample>,
}

/// Whether `path` has one of [`IMAGE_EXTENSIONS`].
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}

/// The image files directly inside `dir`, sorted. Hidden files (starting with `.`), folders
/// and entries that are not regular files (FIFOs, devices, sockets — reading them would hang
/// or never end) are skipped silently; any other regular file that is not an image is an
/// error, so that a stray file is noticed. Symbolic links are followed (a dangling one named
/// like an image is kept, and reported when it is read).
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in read_dir_sorted(dir)? {
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.starts_with('.'))
            .unwrap_or(false);
        let special = std::fs::metadata(&p).is_ok_and(|m| !m.is_file());
        if hidden || special {
            continue;
        }
        if !is_image_path(&p) {
            return Err(Error::Image {
                path: p,
                reason: format!(
                    "not an image file (expected one of the extensions {IMAGE_EXTENSIONS:?}); \
                     remove it from the folder"
                ),
            });
        }
        out.push(p);
    }
    Ok(out)
}

/// Collects images from a list of files and folders (folders are read one level deep with
/// [`list_images`]). The result keeps the order given, folders expanded in sorted order. A
/// file named explicitly must be a regular file: a FIFO or a device is an error.
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            out.extend(list_images(p)?);
        } else if let Ok(m) = std::fs::metadata(p) {
            if !m.is_file() {
                return Err(crate::io_util::not_regular(p, &m.file_type()));
            }
            out.push(p.clone());
        } else {
            return Err(Error::io(
                p,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            ));
        }
    }
    Ok(out)
}

impl Category {
    /// Reads the layout of one category folder. When the folder has a `ground_truth` folder,
    /// every test image of a defect folder must have its mask
    /// `ground_truth/<defect>/<stem>_mask.png`; without one, no sample has a mask (image-level
    /// labels only; see [`Category::has_masks`]). An empty `train/good` or `test` folder is an
    /// error.
    pub fn open(root: &Path) -> Result<Category> {
        let name = root
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("category")
            .to_string();
        let train_dir = root.join("train").join("good");
        if !train_dir.is_dir() {
            return Err(Error::input(format!(
                "{}: no `train/good` folder; expected the MVTec AD layout \
                 <category>/train/good, <category>/test/<defect>",
                root.display()
            )));
        }
        let train = list_images(&train_dir)?;
        if train.is_empty() {
            return Err(Error::input(format!(
                "{}: holds no training image",
                train_dir.display()
            )));
        }
        let test_dir = root.join("test");
        let with_masks = root.join("ground_truth").is_dir();
        let mut test = Vec::new();
        if test_dir.is_dir() {
            for defect_dir in read_dir_sorted(&test_dir)? {
                if !defect_dir.is_dir() {
                    continue;
                }
                let defect = defect_dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                for image in list_images(&defect_dir)? {
                    let mask = if defect == "good" || !with_masks {
                        None
                    } else {
                        let stem = image
                            .file_stem()
                            .and_then(|s| s.to_str())
                            .unwrap_or_default();
                        let mask = root
                            .join("ground_truth")
                            .join(&defect)
                            .join(format!("{stem}_mask.png"));
                        if let Ok(m) = std::fs::metadata(&mask) {
                            if !m.is_file() {
                                return Err(crate::io_util::not_regular(&mask, &m.file_type()));
                            }
                        }
                        if !mask.is_file() {
                            return Err(Error::Image {
                                path: mask,
                                reason: format!(
                                    "the ground-truth mask of {} is missing",
                                    image.display()
                                ),
                            });
                        }
                        Some(mask)
                    };
                    test.push(TestSample {
                        image,
                        defect: defect.clone(),
                        mask,
                    });
                }
            }
        }
        if test.is_empty() {
            return Err(Error::input(format!(
                "{}: no test image found under test/<defect>/",
                root.display()
            )));
        }
        Ok(Category {
            name,
            root: root.to_path_buf(),
            train,
            test,
        })
    }
}

impl Category {
    /// `true` when the defective test images have ground-truth masks (the folder has a
    /// `ground_truth` folder), so pixel-level metrics can be computed.
    pub fn has_masks(&self) -> bool {
        self.test.iter().any(|s| s.mask.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    /// A fresh folder under the system's temporary folder, deleted when dropped (also when
    /// the test fails).
    struct TmpDir(PathBuf);

    impl Drop for TmpDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tmpdir(name: &str) -> TmpDir {
        let d = std::env::temp_dir().join(format!("patchcore-ds-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        TmpDir(d)
    }

    #[test]
    fn reads_layout_and_pairs_masks_by_stem() {
        let root = tmpdir("ok");
        let d = root.0.join("bottle");
        touch(&d.join("train/good/001.png"));
        touch(&d.join("train/good/000.png"));
        touch(&d.join("test/good/000.png"));
        touch(&d.join("test/crack/003.png"));
        touch(&d.join("test/crack/001.png"));
        // Mask order differs from image order on purpose: pairing must be by stem.
        touch(&d.join("ground_truth/crack/001_mask.png"));
        touch(&d.join("ground_truth/crack/003_mask.png"));
        let c = Category::open(&d).unwrap();
        assert_eq!(c.name, "bottle");
        assert_eq!(
            c.train,
            vec![d.join("train/good/000.png"), d.join("train/good/001.png")]
        );
        assert_eq!(c.test.len(), 3);
        assert_eq!(c.test[0].defect, "crack");
        assert_eq!(
            c.test[0].mask,
            Some(d.join("ground_truth/crack/001_mask.png"))
        );
        assert_eq!(
            c.test[1].mask,
            Some(d.join("ground_truth/crack/003_mask.png"))
        );
        assert!(c.test[1].is_anomalous());
        assert_eq!(c.test[2].defect, "good");
        assert!(!c.test[2].is_anomalous());
        assert_eq!(c.test[2].mask, None);
    }

    #[test]
    fn missing_mask_is_named() {
        let root = tmpdir("nomask");
        let d = root.0.join("cat");
        touch(&d.join("train/good/000.png"));
        touch(&d.join("test/scratch/007.png"));
        // Without a ground_truth folder: image labels only, no masks.
        let c = Category::open(&d).unwrap();
        assert_eq!((c.test.len(), c.test[0].mask.clone()), (1, None));
        assert!(c.test[0].is_anomalous() && !c.has_masks());
        // With one, every defective image needs its mask.
        std::fs::create_dir_all(d.join("ground_truth/scratch")).unwrap();
        let e = Category::open(&d).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::Image { .. }), "{msg}");
        assert!(msg.contains("007_mask.png"), "{msg}");
        touch(&d.join("ground_truth/scratch/007_mask.png"));
        assert!(Category::open(&d).unwrap().has_masks());
    }

    #[test]
    fn empty_train_and_stray_files_are_errors() {
        let root = tmpdir("empty");
        let d = root.0.join("cat");
        std::fs::create_dir_all(d.join("train/good")).unwrap();
        touch(&d.join("test/good/000.png"));
        assert!(matches!(
            Category::open(&d),
            Err(Error::InvalidInput { .. })
        ));
        touch(&d.join("train/good/notes.txt"));
        let e = Category::open(&d).unwrap_err();
        assert!(e.to_string().contains("notes.txt"), "{e}");
        assert!(matches!(
            Category::open(&tmpdir("none").0),
            Err(Error::InvalidInput { .. })
        ));
    }

    #[test]
    fn hidden_files_are_skipped_and_extensions_case_insensitive() {
        let root = tmpdir("hidden");
        let d = &root.0;
        touch(&d.join(".DS_Store"));
        touch(&d.join("a.PNG"));
        touch(&d.join("b.jpeg"));
        assert_eq!(
            list_images(d).unwrap(),
            vec![d.join("a.PNG"), d.join("b.jpeg")]
        );
    }
}
