//! File names in outputs: heat-map names that mirror the inputs, and the escaping of names in
//! text and JSON output so that one image is one line and every name maps back to its file.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::common::{collect_images, json_string, CliError, CliResult};
use crate::outputs::check_outputs;

/// One image to process and the command-line input it came from.
pub struct Input {
    /// The image file.
    pub path: PathBuf,
    /// The folder given on the command line that holds it, or `None` for a file given directly.
    pub base: Option<PathBuf>,
}

/// The images of the command line, each with its base folder (folders read one level deep).
pub fn collect_inputs(inputs: &[PathBuf]) -> CliResult<Vec<Input>> {
    // Checked as a whole first: the error for "no image at all" names every input.
    collect_images(inputs, "input")?;
    let mut out = Vec::new();
    for i in inputs {
        let base = i.is_dir().then(|| i.clone());
        for path in patchcore::dataset::collect_images(std::slice::from_ref(i))? {
            out.push(Input {
                path,
                base: base.clone(),
            });
        }
    }
    Ok(out)
}

/// Heat-map file names: an image found in a folder given on the command line becomes
/// `<dir>/<its path relative to that folder, extension replaced>_heatmap.png`; a file given
/// directly becomes `<dir>/<file stem>_heatmap.png`. A name never depends on the other inputs;
/// two inputs that would get the same name are an error naming both. Fails when one exists and
/// not `force`.
pub fn heatmap_paths(dir: &Path, inputs: &[Input], force: bool) -> CliResult<Vec<PathBuf>> {
    let mut out = Vec::with_capacity(inputs.len());
    let mut seen: HashMap<PathBuf, &Path> = HashMap::new();
    for i in inputs {
        let rel = i
            .base
            .as_deref()
            .and_then(|b| i.path.strip_prefix(b).ok())
            .filter(|r| r.file_name().is_some())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(i.path.file_name().unwrap_or("image".as_ref())));
        let mut name: OsString = rel
            .file_stem()
            .map(OsString::from)
            .unwrap_or_else(|| "image".into());
        name.push("_heatmap.png");
        let target = dir.join(rel.with_file_name(name));
        if let Some(first) = seen.insert(target.clone(), &i.path) {
            return Err(CliError::Failed(format!(
                "{} and {} would both write the heat map {}; heat maps are named after the \
                 path relative to the folder given (or the file name of a file given \
                 directly): run predict on them separately or rename one",
                escape_name(first),
                escape_name(&i.path),
                escape_name(&target)
            )));
        }
        out.push(target);
    }
    check_outputs(&out, force)?;
    Ok(out)
}

/// A path as one line of text: valid UTF-8 is kept except that `\` is written `\\`, newline
/// `\n`, carriage return `\r`, tab `\t`, and any other control character (U+0000–U+001F,
/// U+007F) `\xNN`; a byte that is not valid UTF-8 is written `\xNN` (two hex digits). Undoing
/// these escapes gives back the exact bytes of the name.
pub fn escape_name(p: &Path) -> String {
    let bytes = os_bytes(p);
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// A path as a JSON string: the name itself when it is valid UTF-8 (JSON escapes apply), and
/// otherwise its [`escape_name`] form; `escaped` says which.
pub fn json_path(p: &Path) -> (String, bool) {
    match p.to_str() {
        Some(s) => (json_string(s), false),
        None => (json_string(&escape_name(p)), true),
    }
}

#[cfg(unix)]
fn os_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

#[cfg(not(unix))]
fn os_bytes(p: &Path) -> Vec<u8> {
    p.to_string_lossy().into_owned().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_reversible_and_single_line() {
        assert_eq!(escape_name(Path::new("a/b c.png")), "a/b c.png");
        assert_eq!(
            escape_name(Path::new("a\nb\\c\td.png")),
            "a\\nb\\\\c\\td.png"
        );
        assert_eq!(escape_name(Path::new("é\u{1}.png")), "é\\x01.png");
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let p = Path::new(std::ffi::OsStr::from_bytes(b"x\xff\xc3.png"));
            assert_eq!(escape_name(p), "x\\xff\\xc3.png");
            assert_eq!(json_path(p), ("\"x\\\\xff\\\\xc3.png\"".to_string(), true));
        }
        assert_eq!(
            json_path(Path::new("a\nb")),
            ("\"a\\u000ab\"".to_string(), false)
        );
    }

    #[test]
    fn heatmap_names_mirror_the_input() {
        let dir = Path::new("out");
        let inputs = vec![
            Input {
                path: "data/x/a.png".into(),
                base: Some("data/x".into()),
            },
            Input {
                path: "data/x_a.png".into(),
                base: None,
            },
            Input {
                path: "data/y/b.v2.jpg".into(),
                base: Some("data/y/".into()),
            },
        ];
        let got = heatmap_paths(dir, &inputs, true).unwrap();
        let want: Vec<PathBuf> = [
            "out/a_heatmap.png",
            "out/x_a_heatmap.png",
            "out/b.v2_heatmap.png",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(got, want);
        let clash = vec![
            Input {
                path: "p/a.png".into(),
                base: None,
            },
            Input {
                path: "q/a.jpg".into(),
                base: None,
            },
        ];
        match heatmap_paths(dir, &clash, true) {
            Err(CliError::Failed(m)) => {
                assert!(m.contains("p/a.png") && m.contains("q/a.jpg"), "{m}")
            }
            _ => panic!("a name clash must be an error"),
        }
    }
}
