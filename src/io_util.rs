//! Reading and writing files safely: only regular files are read (a FIFO or a device given as
//! an input is refused instead of hanging or reading forever), reads are bounded even when the
//! length is unknown, outputs never overwrite without being asked, never replace something
//! that is not a regular file, and never leave half-written files.

use std::fs::{File, FileType};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// What a file-system object that is not a regular file is, for messages: "a folder", "a FIFO
/// (named pipe)", ...
pub(crate) fn kind_name(ft: &FileType) -> &'static str {
    if ft.is_dir() {
        return "a folder";
    }
    if ft.is_symlink() {
        return "a symbolic link";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    "a special file"
}

/// The error for an input that is not a regular file.
pub(crate) fn not_regular(path: &Path, ft: &FileType) -> Error {
    let what = if ft.is_dir() {
        "is a folder, not a file".to_string()
    } else {
        format!(
            "is not a regular file ({}); only regular files are read",
            kind_name(ft)
        )
    };
    Error::io(
        path,
        std::io::Error::new(std::io::ErrorKind::InvalidInput, what),
    )
}

/// Opens `path` for reading if it is a regular file (symbolic links followed), and returns it
/// with its length. A FIFO, a device, a socket or a folder is an error: the path is checked
/// before it is opened (so that opening a FIFO never blocks; on unix it is also opened
/// non-blocking), and the open handle is checked again (`fstat`), so that a file swapped in
/// between cannot sneak past.
///
/// # Errors
/// [`Error::Io`] naming the file: it cannot be opened, or it is not a regular file (the
/// message says what it is).
pub fn open_regular(path: &Path) -> Result<(File, u64)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta.file_type()));
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = opts.open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta.file_type()));
    }
    Ok((file, meta.len()))
}

/// Reads all of `file` (`len_hint` bytes expected) but at most `limit` bytes: a file that
/// turns out longer (its length may be unknown, or have changed since it was opened) is an
/// [`Error::LimitExceeded`] naming `limit_name`.
pub(crate) fn read_bounded(
    file: File,
    path: &Path,
    len_hint: u64,
    limit: u64,
    limit_name: &str,
) -> Result<Vec<u8>> {
    let too_large = |bytes: String| Error::LimitExceeded {
        reason: format!(
            "{}: needs {bytes} bytes, more than the limit of {limit} bytes ({limit_name})",
            path.display()
        ),
    };
    if len_hint > limit {
        return Err(too_large(len_hint.to_string()));
    }
    let mut out = Vec::new();
    out.try_reserve_exact(usize::try_from(len_hint).unwrap_or(0))
        .map_err(|_| too_large(len_hint.to_string()))?;
    file.take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| Error::io(path, e))?;
    if out.len() as u64 > limit {
        return Err(too_large(format!("more than {limit}")));
    }
    Ok(out)
}

/// Opens a regular file ([`open_regular`]) and reads it whole, refusing more than `limit`
/// bytes (`limit_name` names the limit in the message).
///
/// # Errors
/// As [`open_regular`]; [`Error::LimitExceeded`] for a file larger than `limit`.
pub fn read_regular(path: &Path, limit: u64, limit_name: &str) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path)?;
    read_bounded(file, path, len, limit, limit_name)
}

/// Checks that `path` may be written by this crate's atomic writer (models, tensors and
/// pictures are all written through it): nothing is there, or (with
/// `overwrite`) a regular file. A folder, a FIFO, a device, a socket or a symbolic link —
/// even a dangling one — is never replaced.
///
/// # Errors
/// [`Error::Io`] naming the path and saying why.
pub fn check_output_path(path: &Path, overwrite: bool) -> Result<()> {
    let refuse = |why: String| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, why),
        )
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
        Ok(m) if m.file_type().is_file() => {
            if overwrite {
                Ok(())
            } else {
                Err(refuse(
                    "file exists; refusing to overwrite it (pass --force / overwrite = true)"
                        .into(),
                ))
            }
        }
        Ok(m) => Err(refuse(format!(
            "exists and is {}; refusing to replace it (even when asked to overwrite): \
             give the path of a regular file",
            kind_name(&m.file_type())
        ))),
    }
}

/// The temporary file this crate's atomic writer writes before renaming it to `path`:
/// `.<name>.tmp-<pid>` next to it. A caller that wants to remove it on a signal (the CLI) can
/// register this path before writing.
pub fn atomic_temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_string());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes a file through `write` into a temporary sibling of `path`
/// ([`atomic_temp_path`]), then renames it into place. Fails without touching anything when
/// `path` exists and `overwrite` is false, or when it is anything but a regular file
/// ([`check_output_path`]). On any error the temporary file is removed and `path` is left as
/// it was.
pub(crate) fn write_atomic(
    path: &Path,
    overwrite: bool,
    write: impl FnOnce(&mut File) -> Result<()>,
) -> Result<()> {
    check_output_path(path, overwrite)?;
    let tmp = atomic_temp_path(path);
    let result = (|| {
        let mut f = create_new(&tmp)?;
        write(&mut f)?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(f);
        // Checked again just before the rename: something that appeared meanwhile is kept.
        check_output_path(path, overwrite)?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates `tmp` afresh: a leftover of the same name (a stale file of a run that had this
/// process id, or a symbolic link planted there) is removed first, never written through.
fn create_new(tmp: &Path) -> Result<File> {
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)
    };
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(tmp).map_err(|e| Error::io(tmp, e))?;
            open().map_err(|e| Error::io(tmp, e))
        }
        r => r.map_err(|e| Error::io(tmp, e)),
    }
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
        let _ = std::fs::remove_dir_all(&dir);
    }
}
