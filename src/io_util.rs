//! Writing files safely: never overwrite without being asked, never leave half-written files.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes a file through `write` into a temporary sibling of `path`, then renames it into
/// place. Fails without touching anything when `path` exists and `overwrite` is false. On any
/// error the temporary file is removed and `path` is left as it was.
pub(crate) fn write_atomic(
    path: &Path,
    overwrite: bool,
    write: impl FnOnce(&mut File) -> Result<()>,
) -> Result<()> {
    if !overwrite && path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "file exists; refusing to overwrite it (pass --force / overwrite = true)",
            ),
        ));
    }
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        write(&mut f)?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_string());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn refuses_to_overwrite_and_cleans_up_on_error() {
        let dir = std::env::temp_dir().join(format!("patchcore-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.bin");
        std::fs::write(&p, b"user data").unwrap();
        let e = write_atomic(&p, false, |f| {
            f.write_all(b"new").map_err(|e| Error::io(&p, e))
        });
        assert!(e.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"user data");
        // A failing writer leaves the old file and no temporary behind.
        let e = write_atomic(&p, true, |f| {
            f.write_all(b"half").unwrap();
            Err(Error::input("boom"))
        });
        assert!(e.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"user data");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        write_atomic(&p, true, |f| {
            f.write_all(b"new").map_err(|e| Error::io(&p, e))
        })
        .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }
}
