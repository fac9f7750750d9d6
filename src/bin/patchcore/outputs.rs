//! Output files: checked before any work (never overwrite what the user owns by accident,
//! never write over an input), and the annotated pictures.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::Array2;

use patchcore::inspect::{Inspection, RenderOptions};
use patchcore::model::PatchCore;
use patchcore::preprocess::ImageLimits;

use crate::common::{file_kind, CliError, CliResult};

/// Checks, before any work, that `out` can be written: not an existing file (unless `force`),
/// not a folder, not anything else that is not a regular file (a FIFO, a device, a symbolic
/// link, even a dangling one — not even with `force`), and in an existing folder.
pub fn check_output_file(out: &Path, force: bool) -> CliResult {
    if out.is_dir() {
        return Err(CliError::Failed(format!(
            "{}: is a folder; give a file name",
            out.display()
        )));
    }
    check_existing_output(out, force, "pass --force to overwrite it")?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(CliError::Failed(format!(
            "{}: the folder {} does not exist; create it first",
            out.display(),
            parent.display()
        )));
    }
    Ok(())
}

/// Fails on the first path of `outs` that exists, unless `force`; with `force`, on the first
/// one that exists and is not a regular file.
pub fn check_outputs(outs: &[PathBuf], force: bool) -> CliResult {
    for p in outs {
        check_existing_output(p, force, "pass --force to overwrite the heat maps")?;
    }
    Ok(())
}

/// An existing output: a regular file is replaced only with `force`; anything else (a folder,
/// a FIFO, a device, a symbolic link — even a dangling one) never.
fn check_existing_output(out: &Path, force: bool, hint: &str) -> CliResult {
    let Ok(m) = std::fs::symlink_metadata(out) else {
        return Ok(());
    };
    let ft = m.file_type();
    if ft.is_file() {
        if force {
            return Ok(());
        }
        return Err(CliError::Failed(format!(
            "{}: exists; {hint}",
            out.display()
        )));
    }
    let what = if ft.is_dir() {
        "a folder"
    } else {
        file_kind(&ft)
    };
    Err(CliError::Failed(format!(
        "{}: exists and is {what}, not a regular file; it is never replaced (not even with \
         --force): choose another output path",
        out.display()
    )))
}

/// The identity of an existing file: (device, inode) on unix, the canonical path elsewhere.
#[cfg(unix)]
fn file_id(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(p: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(p).ok()
}

/// Refuses, before any work, an output that is one of the inputs (the same file, also through
/// another name or a link): writing it would destroy the input. `inputs` pairs each input
/// with the option that named it.
pub fn check_not_input(outs: &[PathBuf], option: &str, inputs: &[(&Path, &str)]) -> CliResult {
    let mut ids = HashMap::new();
    for (p, opt) in inputs {
        if let Some(id) = file_id(p) {
            ids.entry(id).or_insert((*p, *opt));
        }
    }
    for out in outs {
        let same = file_id(out).and_then(|id| ids.get(&id)).or_else(|| {
            // A path that does not exist yet cannot be an existing input; compare canonical
            // paths of those that do.
            let c = std::fs::canonicalize(out).ok()?;
            inputs
                .iter()
                .find(|(p, _)| std::fs::canonicalize(p).ok().as_ref() == Some(&c))
        });
        if let Some((p, opt)) = same {
            return Err(CliError::Usage(format!(
                "{option} {} is the input {opt} {}: writing it would destroy the input; \
                 choose another {option}",
                out.display(),
                p.display()
            )));
        }
    }
    Ok(())
}

/// Creates an output folder (and sweeps stale temporary heat maps an interrupted run left in
/// it).
pub fn create_dir(dir: &Path) -> CliResult {
    std::fs::create_dir_all(dir).map_err(|e| {
        CliError::Failed(format!("{}: cannot create the folder: {e}", dir.display()))
    })?;
    crate::cleanup::sweep_heatmaps(dir);
    Ok(())
}

/// Heat map over the original image (colour scale centred on `t`, see
/// [`patchcore::inspect::threshold_scale`]), with the outlines of the regions at or above `t`
/// when `contours`; `map` is at the network input size.
pub fn write_picture(
    model: &PatchCore,
    image_path: &Path,
    map: &Array2<f32>,
    t: f32,
    contours: bool,
    out: &Path,
    force: bool,
) -> CliResult {
    let img = patchcore::preprocess::load_rgb(image_path, &ImageLimits::default())?;
    let (w, h) = img.dimensions();
    let ins = Inspection::from_map(
        f32::NAN,
        Some(map.view()),
        &model.config().params().preprocess,
        h as usize,
        w as usize,
        Some(t),
    )?;
    let render = RenderOptions {
        outlines: contours,
        ..RenderOptions::default()
    };
    let _tmp = crate::cleanup::register_output(out);
    Ok(patchcore::visualize::save_png(
        &ins.render(&img, &render)?,
        out,
        force,
    )?)
}
