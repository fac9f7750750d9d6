//! The spill file of the memory-budgeted fit: full-dimensional bank rows written to a
//! temporary file next to the output while only their projection stays in memory, then the
//! chosen rows read back.
//!
//! The file is named `.<output file name>.spill-<pid>` in the output's folder ([`spill_path`]),
//! so a command-line tool can register it for removal on a signal and a later run can
//! recognise one left behind by a killed process ([`remove_stale_spills`]). [`SpillFile`]
//! removes its file when dropped: on success and on every error path.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ndarray::Array2;

use crate::error::{Error, Result};

/// Infix of spill file names: `.<output name>.spill-<pid>`.
const SPILL_INFIX: &str = ".spill-";

/// The spill file a fit writing `out` uses in this process: `.<name of out>.spill-<pid>` in
/// `out`'s folder.
pub fn spill_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    dir.join(format!(".{name}{SPILL_INFIX}{}", std::process::id()))
}

/// Whether process `pid` is known to be gone (Linux: no `/proc/<pid>`); `false` where that
/// cannot be told.
fn process_gone(pid: u32) -> bool {
    let proc_root = Path::new("/proc/self");
    proc_root.exists() && !Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes spill files left in `out`'s folder by fits of `out` that did not finish (killed
/// before they could clean up): files named `.<name of out>.spill-<pid>` whose process is gone
/// or that are older than `max_age`. The current process's own file is never touched. Returns
/// the files removed (for the caller to say so).
///
/// # Errors
/// [`Error::Io`] if the folder cannot be listed or a stale file cannot be removed.
pub fn remove_stale_spills(out: &Path, max_age: Duration) -> Result<Vec<PathBuf>> {
    let own = spill_path(out);
    let dir = own.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let prefix = format!(".{name}{SPILL_INFIX}");
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(Error::io(&dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file_name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        if path == own {
            continue;
        }
        let old = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > max_age);
        if process_gone(pid) || old {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// A temporary file of `f32` rows (little-endian, row after row), removed when dropped.
///
/// A file made by [`SpillFile::with_projection`] also holds the rows' projection: the file is
/// laid out for a known number of rows, the full rows first, then their projection.
#[derive(Debug)]
pub struct SpillFile {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    dim: usize,
    rows: usize,
    /// The projection region: rows planned, values per projected row, projected rows written.
    proj: Option<ProjectionRegion>,
}

#[derive(Debug, Clone, Copy)]
struct ProjectionRegion {
    capacity: usize,
    dim: usize,
    rows: usize,
    /// Values written to the stash region after the projection (see
    /// [`SpillFile::append_stash`]).
    stashed: u64,
}

/// Little-endian bytes of `values`, written through a small buffer.
fn write_values(w: &mut impl Write, values: &[f32], path: &Path) -> Result<()> {
    let mut buf = Vec::with_capacity(values.len().min(1 << 16) * 4);
    for chunk in values.chunks(1 << 16) {
        buf.clear();
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        w.write_all(&buf).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

impl SpillFile {
    /// Creates `path` (which must not exist) for rows of `dim` values.
    ///
    /// # Errors
    /// [`Error::Io`] if the file exists or cannot be created.
    pub fn create(path: &Path, dim: usize) -> Result<SpillFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(SpillFile {
            path: path.to_path_buf(),
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
            dim,
            rows: 0,
            proj: None,
        })
    }

    /// Creates `path` (which must not exist) for exactly `rows` rows of `dim` values and their
    /// projection, `rows` rows of `proj_dim` values, written with
    /// [`SpillFile::append_projection`] and read back with [`SpillFile::read_projection`].
    ///
    /// # Errors
    /// As [`SpillFile::create`].
    pub fn with_projection(
        path: &Path,
        dim: usize,
        rows: usize,
        proj_dim: usize,
    ) -> Result<SpillFile> {
        let mut f = Self::create(path, dim)?;
        f.proj = Some(ProjectionRegion {
            capacity: rows,
            dim: proj_dim,
            rows: 0,
            stashed: 0,
        });
        Ok(f)
    }

    /// Byte offset of the projection region.
    fn projection_offset(&self, region: &ProjectionRegion) -> u64 {
        region.capacity as u64 * self.dim as u64 * 4
    }

    /// Appends projected rows (row-major, whole rows of the projection dimension) after those
    /// already written.
    ///
    /// # Errors
    /// [`Error::Io`] if writing fails; [`Error::InvalidInput`] if the file has no projection
    /// region, for a length that is not whole rows, or more rows than planned.
    pub fn append_projection(&mut self, z: &[f32]) -> Result<()> {
        let region = self
            .proj
            .ok_or_else(|| Error::input("spill file without a projection region"))?;
        let pd = region.dim;
        if pd == 0 || !z.len().is_multiple_of(pd) || region.rows + z.len() / pd > region.capacity {
            return Err(Error::input(format!(
                "spill file {}: {} projected values do not fit the {} rows of {pd} planned \
                 ({} written)",
                self.path.display(),
                z.len(),
                region.capacity,
                region.rows
            )));
        }
        let at = self.projection_offset(&region) + region.rows as u64 * pd as u64 * 4;
        self.write_at(at, z)?;
        if let Some(r) = self.proj.as_mut() {
            r.rows += z.len() / pd;
        }
        Ok(())
    }

    /// Writes `values` at byte offset `at`, then returns to where the full rows continue
    /// (seeking flushes the buffer).
    fn write_at(&mut self, at: u64, values: &[f32]) -> Result<()> {
        let back = self.rows as u64 * self.dim as u64 * 4;
        let path = self.path.clone();
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| Error::input("spill file already read back"))?;
        w.seek(SeekFrom::Start(at))
            .map_err(|e| Error::io(&path, e))?;
        write_values(w, values, &path)?;
        w.seek(SeekFrom::Start(back))
            .map_err(|e| Error::io(&path, e))?;
        Ok(())
    }

    /// Byte offset of the stash region (after the projection).
    fn stash_offset(&self, region: &ProjectionRegion) -> u64 {
        self.projection_offset(region) + region.capacity as u64 * region.dim as u64 * 4
    }

    /// Appends values to the stash region, after the projection: what a fit keeps on disk
    /// during its coreset stage (the backbone's weights), read back with
    /// [`SpillFile::read_stash`].
    ///
    /// # Errors
    /// [`Error::Io`] if writing fails; [`Error::InvalidInput`] if the file has no projection
    /// region.
    pub fn append_stash(&mut self, values: &[f32]) -> Result<()> {
        let region = self
            .proj
            .ok_or_else(|| Error::input("spill file without a projection region"))?;
        let at = self.stash_offset(&region) + region.stashed * 4;
        self.write_at(at, values)?;
        if let Some(r) = self.proj.as_mut() {
            r.stashed += values.len() as u64;
        }
        Ok(())
    }

    /// Fills `dst` with the stashed values from value `start` on.
    ///
    /// # Errors
    /// [`Error::Io`] if reading fails; [`Error::InvalidInput`] for a range beyond what was
    /// stashed or a file without a projection region.
    pub fn read_stash(&mut self, start: u64, dst: &mut [f32]) -> Result<()> {
        let region = self
            .proj
            .ok_or_else(|| Error::input("spill file without a projection region"))?;
        if start + dst.len() as u64 > region.stashed {
            return Err(Error::input(format!(
                "spill file {}: values {start}..{} asked, {} stashed",
                self.path.display(),
                start + dst.len() as u64,
                region.stashed
            )));
        }
        let path = self.path.clone();
        let at = self.stash_offset(&region) + start * 4;
        let back = self.rows as u64 * self.dim as u64 * 4;
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| Error::input("spill file already read back"))?;
        w.flush().map_err(|e| Error::io(&path, e))?;
        let file = w.get_mut();
        file.seek(SeekFrom::Start(at))
            .map_err(|e| Error::io(&path, e))?;
        let mut bytes = vec![0u8; (1 << 16) * 4];
        for chunk in dst.chunks_mut(1 << 16) {
            let b = &mut bytes[..chunk.len() * 4];
            file.read_exact(b).map_err(|e| Error::io(&path, e))?;
            for (v, c) in chunk.iter_mut().zip(b.chunks_exact(4)) {
                *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        file.seek(SeekFrom::Start(back))
            .map_err(|e| Error::io(&path, e))?;
        Ok(())
    }

    /// Whether the file has a projection region (and so a stash region).
    pub fn has_projection(&self) -> bool {
        self.proj.is_some()
    }

    /// Reads the projection back, in order, feeding `sink` whole rows a few thousand at a
    /// time (so that only the destination holds the whole projection).
    ///
    /// # Errors
    /// [`Error::Io`] if reading fails; [`Error::InvalidInput`] if the file has no projection
    /// region; whatever `sink` returns.
    pub fn read_projection(&mut self, mut sink: impl FnMut(&[f32]) -> Result<()>) -> Result<()> {
        let region = self
            .proj
            .ok_or_else(|| Error::input("spill file without a projection region"))?;
        let path = self.path.clone();
        let off = self.projection_offset(&region);
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| Error::input("spill file already read back"))?;
        w.flush().map_err(|e| Error::io(&path, e))?;
        let file = w.get_mut();
        file.seek(SeekFrom::Start(off))
            .map_err(|e| Error::io(&path, e))?;
        let pd = region.dim.max(1);
        let chunk_rows = (1 << 20) / (pd * 4) + 1;
        let mut bytes = vec![0u8; chunk_rows * pd * 4];
        let mut vals = vec![0.0f32; chunk_rows * pd];
        let mut left = region.rows;
        while left > 0 {
            let take = left.min(chunk_rows);
            let b = &mut bytes[..take * pd * 4];
            file.read_exact(b).map_err(|e| Error::io(&path, e))?;
            for (v, c) in vals.iter_mut().zip(b.chunks_exact(4)) {
                *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
            sink(&vals[..take * pd])?;
            left -= take;
        }
        // Back to where the full rows continue (the writer's position is the file's).
        let back = self.rows as u64 * self.dim as u64 * 4;
        file.seek(SeekFrom::Start(back))
            .map_err(|e| Error::io(&path, e))?;
        Ok(())
    }

    /// The file's path (to register it for removal on a signal).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Appends rows (row-major, a multiple of the row length).
    ///
    /// # Errors
    /// [`Error::Io`] if writing fails (e.g. the disk is full); [`Error::InvalidInput`] for a
    /// length that is not a multiple of the row length.
    pub fn append(&mut self, rows: &[f32]) -> Result<()> {
        if self.dim == 0 || !rows.len().is_multiple_of(self.dim) {
            return Err(Error::input(format!(
                "spill file {}: {} values are not whole rows of {}",
                self.path.display(),
                rows.len(),
                self.dim
            )));
        }
        if let Some(region) = self.proj {
            if self.rows + rows.len() / self.dim > region.capacity {
                return Err(Error::input(format!(
                    "spill file {}: more than the {} rows planned",
                    self.path.display(),
                    region.capacity
                )));
            }
        }
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| Error::input("spill file already read back"))?;
        write_values(w, rows, &self.path)?;
        self.rows += rows.len() / self.dim;
        Ok(())
    }

    /// Reads rows `idx` back, in the order given (`idx.len() × dim`).
    ///
    /// # Errors
    /// [`Error::Io`] if reading fails; [`Error::InvalidInput`] for an index out of range.
    pub fn gather(&mut self, idx: &[usize]) -> Result<Array2<f32>> {
        let w = self
            .writer
            .take()
            .ok_or_else(|| Error::input("spill file already read back"))?;
        let mut file = w
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        let d = self.dim;
        let mut order: Vec<(usize, usize)> = idx.iter().copied().zip(0..).collect();
        order.sort_unstable();
        if let Some(&(r, _)) = order.last() {
            if r >= self.rows {
                return Err(Error::input(format!(
                    "spill file {}: row {r} asked, {} written",
                    self.path.display(),
                    self.rows
                )));
            }
        }
        let mut out = vec![0.0f32; idx.len() * d];
        let mut bytes = vec![0u8; d * 4];
        let mut at: Option<usize> = None;
        for (row, pos) in order {
            if at != Some(row) {
                file.seek(SeekFrom::Start((row * d * 4) as u64))
                    .map_err(|e| Error::io(&self.path, e))?;
            }
            file.read_exact(&mut bytes)
                .map_err(|e| Error::io(&self.path, e))?;
            at = Some(row + 1);
            for (o, c) in out[pos * d..(pos + 1) * d]
                .iter_mut()
                .zip(bytes.chunks_exact(4))
            {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Array2::from_shape_vec((idx.len(), d), out)
            .map_err(|e| Error::input(format!("spill rows: {e}")))
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        // Close before removing (required on some systems); errors cannot be reported here.
        self.writer.take();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_back_in_the_asked_order_and_the_file_goes() {
        let dir = std::env::temp_dir().join(format!("pc-spill-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("m.safetensors");
        let path = spill_path(&out);
        assert_eq!(
            path.file_name().unwrap().to_string_lossy(),
            format!(".m.safetensors.spill-{}", std::process::id())
        );
        let mut s = SpillFile::create(&path, 3).unwrap();
        let rows: Vec<f32> = (0..30).map(|v| v as f32 * 0.5 - 3.0).collect();
        s.append(&rows[..12]).unwrap();
        s.append(&rows[12..]).unwrap();
        assert!(path.exists());
        let g = s.gather(&[7, 0, 7, 3]).unwrap();
        let want: Vec<f32> = [7, 0, 7, 3]
            .iter()
            .flat_map(|&r| rows[r * 3..r * 3 + 3].to_vec())
            .collect();
        assert_eq!(g.as_slice().unwrap(), &want[..]);
        drop(s);
        assert!(!path.exists());
        // A stale file of a dead process is found and removed, ours is not.
        let stale = dir.join(".m.safetensors.spill-999999999");
        std::fs::write(&stale, b"x").unwrap();
        let other = dir.join(".n.safetensors.spill-999999999");
        std::fs::write(&other, b"x").unwrap();
        let own = SpillFile::create(&spill_path(&out), 3).unwrap();
        let removed = remove_stale_spills(&out, Duration::from_secs(3600)).unwrap();
        if Path::new("/proc/self").exists() {
            assert_eq!(removed, vec![stale.clone()]);
        }
        assert!(own.path().exists() && other.exists());
        drop(own);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn projection_region_reads_back_beside_the_rows() {
        let dir = std::env::temp_dir().join(format!("pc-spill-proj-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".m.spill");
        let (n, d, p) = (10usize, 4usize, 2usize);
        let rows: Vec<f32> = (0..n * d).map(|v| v as f32).collect();
        let proj: Vec<f32> = (0..n * p).map(|v| -(v as f32) - 0.25).collect();
        let mut s = SpillFile::with_projection(&path, d, n, p).unwrap();
        // Interleaved as a fit writes them: rows, then the projection of a block of rows.
        s.append(&rows[..3 * d]).unwrap();
        s.append_projection(&proj[..2 * p]).unwrap();
        s.append(&rows[3 * d..7 * d]).unwrap();
        s.append_projection(&proj[2 * p..7 * p]).unwrap();
        s.append(&rows[7 * d..]).unwrap();
        assert!(s.append(&rows[..d]).is_err(), "more rows than planned");
        s.append_projection(&proj[7 * p..]).unwrap();
        assert!(s.append_projection(&proj[..p]).is_err());
        let mut back = Vec::new();
        s.read_projection(|z| {
            back.extend_from_slice(z);
            Ok(())
        })
        .unwrap();
        assert_eq!(back, proj);
        // The stash region, after the projection: written in pieces, read at any offset.
        let stash: Vec<f32> = (0..100).map(|v| v as f32 * 1.5 + 0.125).collect();
        s.append_stash(&stash[..30]).unwrap();
        s.append(&[]).unwrap();
        s.append_stash(&stash[30..]).unwrap();
        let mut part = vec![0.0; 40];
        s.read_stash(25, &mut part).unwrap();
        assert_eq!(part, stash[25..65].to_vec());
        assert!(s.read_stash(70, &mut part).is_err());
        back.clear();
        s.read_projection(|z| {
            back.extend_from_slice(z);
            Ok(())
        })
        .unwrap();
        assert_eq!(back, proj, "the stash does not touch the projection");
        let g = s.gather(&[9, 0, 4]).unwrap();
        let want: Vec<f32> = [9, 0, 4]
            .iter()
            .flat_map(|&r| rows[r * d..(r + 1) * d].to_vec())
            .collect();
        assert_eq!(g.as_slice().unwrap(), &want[..]);
        drop(s);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
