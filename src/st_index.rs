//! The tensor table of a safetensors file, validated, and random access to one tensor's bytes,
//! from a byte slice or straight from a file (so a large weights file, e.g. torchvision's
//! Wide-ResNet-50-2 with its unused layer4, is never held in memory whole).
//!
//! Validation follows the safetensors format: an 8-byte little-endian header length, a JSON
//! header, then the tensor data; the tensors' byte ranges must tile the data section exactly
//! (sorted, contiguous, from 0 to its end), each range must equal the element count times the
//! dtype size (with overflow checks), and the data section must end where the input ends.
//! Everything is checked before any tensor data is read or allocated.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use safetensors::tensor::{Dtype, Metadata};

use crate::{Error, Result};

/// Largest accepted JSON header, as in the `safetensors` crate (100 MB).
const MAX_HEADER_LEN: u64 = 100_000_000;

/// One tensor's entry in the header.
#[derive(Debug, Clone)]
pub(crate) struct TensorEntry {
    /// Element type.
    pub(crate) dtype: Dtype,
    /// Shape.
    pub(crate) shape: Vec<usize>,
    /// Byte range inside the data section.
    pub(crate) range: (u64, u64),
}

/// Where the tensor bytes are read from.
pub(crate) enum ByteSource<'a> {
    /// The whole file in memory.
    Slice(&'a [u8]),
    /// An open file, read with a seek per tensor into a reused buffer.
    File {
        /// The open file.
        file: File,
        /// Reused read buffer.
        buf: Vec<u8>,
    },
}

/// The validated tensor table of a safetensors input plus access to its bytes.
pub(crate) struct StIndex<'a> {
    entries: HashMap<String, TensorEntry>,
    /// The `__metadata__` map of the header, if any.
    metadata: Option<HashMap<String, String>>,
    /// Offset of the data section from the start of the underlying slice or file.
    data_start: u64,
    source: ByteSource<'a>,
}

fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::invalid_file(path, format!("not a valid safetensors file: {what}"))
}

impl<'a> StIndex<'a> {
    /// Parses and validates the header of an in-memory file.
    pub(crate) fn from_slice(bytes: &'a [u8], path: &Path) -> Result<StIndex<'a>> {
        let total = bytes.len() as u64;
        let n = header_len(bytes.get(..8), total, path)?;
        // `header_len` checked 8 + n <= total, and total is a slice length.
        let header = bytes.get(8..8 + n as usize).ok_or_else(|| {
            bad(
                path,
                "the declared header size exceeds the file size (truncated?)",
            )
        })?;
        let (entries, metadata) = parse_header(header, total - 8 - n, path)?;
        Ok(StIndex {
            entries,
            metadata,
            data_start: 8 + n,
            source: ByteSource::Slice(bytes),
        })
    }

    /// Parses and validates the header of an open file, reading only the header.
    pub(crate) fn from_file(file: File, path: &Path) -> Result<StIndex<'static>> {
        let total = file.metadata().map_err(|e| Error::io(path, e))?.len();
        Self::from_file_range(file, path, 0, total)
    }

    /// As [`StIndex::from_file`] for a safetensors stream stored at bytes `base..base + total`
    /// of the file (e.g. weights embedded in a model file).
    pub(crate) fn from_file_range(
        mut file: File,
        path: &Path,
        base: u64,
        total: u64,
    ) -> Result<StIndex<'static>> {
        file.seek(SeekFrom::Start(base))
            .map_err(|e| Error::io(path, e))?;
        let mut len8 = [0u8; 8];
        let prefix = if total >= 8 {
            file.read_exact(&mut len8).map_err(|e| Error::io(path, e))?;
            Some(&len8[..])
        } else {
            None
        };
        let n = header_len(prefix, total, path)?;
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)
            .map_err(|e| Error::io(path, e))?;
        let (entries, metadata) = parse_header(&header, total - 8 - n, path)?;
        Ok(StIndex {
            entries,
            metadata,
            data_start: base + 8 + n,
            source: ByteSource::File {
                file,
                buf: Vec::new(),
            },
        })
    }

    /// The entry of tensor `name`, if the file has one.
    pub(crate) fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.entries.get(name)
    }

    /// The header's `__metadata__` map, if it has one.
    pub(crate) fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.as_ref()
    }

    /// Where tensor `name`'s bytes are in the underlying slice or file: `(offset, length)`.
    pub(crate) fn location(&self, name: &str) -> Option<(u64, u64)> {
        let (s, e) = self.entries.get(name)?.range;
        Some((self.data_start + s, e - s))
    }

    /// The shape of tensor `name`, if the file has one.
    pub(crate) fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// The raw little-endian bytes of tensor `name` (which must exist).
    pub(crate) fn bytes(&mut self, name: &str, path: &Path) -> Result<&[u8]> {
        let entry = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            expected: "a tensor of this name".to_string(),
        })?;
        let (s, e) = entry.range;
        let start = self.data_start + s;
        let len = e - s;
        match &mut self.source {
            ByteSource::Slice(bytes) => usize::try_from(start)
                .ok()
                .zip(usize::try_from(start + len).ok())
                .and_then(|(a, b)| bytes.get(a..b))
                .ok_or_else(|| bad(path, format!("tensor `{name}` lies outside the file"))),
            ByteSource::File { file, buf } => {
                let len = usize::try_from(len)
                    .map_err(|_| bad(path, format!("tensor `{name}` is too large")))?;
                // The length comes from the file: allocate fallibly (an error, not an abort).
                buf.clear();
                buf.try_reserve_exact(len)
                    .map_err(|_| Error::LimitExceeded {
                        reason: format!(
                            "{}: tensor `{name}` needs {len} bytes of memory, more than can be \
                         allocated",
                            path.display()
                        ),
                    })?;
                buf.resize(len, 0);
                file.seek(SeekFrom::Start(start))
                    .and_then(|_| file.read_exact(buf))
                    .map_err(|e| Error::io(path, e))?;
                Ok(buf.as_slice())
            }
        }
    }
}

/// Reads and checks the header length: `prefix` holds the first 8 bytes (or `None` if the
/// input is shorter).
fn header_len(prefix: Option<&[u8]>, total: u64, path: &Path) -> Result<u64> {
    if total == 0 {
        return Err(Error::invalid_file(path, "the file is empty (0 bytes)"));
    }
    let p: [u8; 8] = prefix
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| bad(path, "too short to hold a safetensors header (truncated?)"))?;
    let n = u64::from_le_bytes(p);
    if n > MAX_HEADER_LEN {
        return Err(bad(
            path,
            "the declared header size is absurdly large (not a safetensors file?)",
        ));
    }
    if n + 8 > total {
        return Err(bad(
            path,
            "the declared header size exceeds the file size (truncated or not a safetensors file)",
        ));
    }
    Ok(n)
}

/// Parses the JSON header and checks that the tensors tile a data section of `data_len` bytes.
type Header = (
    HashMap<String, TensorEntry>,
    Option<HashMap<String, String>>,
);

fn parse_header(header: &[u8], data_len: u64, path: &Path) -> Result<Header> {
    let text = std::str::from_utf8(header).map_err(|_| {
        bad(
            path,
            "the header is not valid UTF-8 text (not a safetensors file?)",
        )
    })?;
    let meta: Metadata = serde_json::from_str(text)
        .map_err(|_| bad(path, "the header is not valid safetensors JSON"))?;
    let mut entries: Vec<(String, TensorEntry)> = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let (s, e) = info.data_offsets;
            (
                name,
                TensorEntry {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: (s as u64, e as u64),
                },
            )
        })
        .collect();
    entries.sort_by(|a, b| a.1.range.cmp(&b.1.range).then_with(|| a.0.cmp(&b.0)));
    let mut end = 0u64;
    for (name, entry) in &entries {
        let (s, e) = entry.range;
        if s != end || e < s {
            return Err(bad(
                path,
                format!("tensor `{name}` has invalid data offsets"),
            ));
        }
        let elements = entry
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| bad(path, "a tensor shape overflows when multiplied out"))?;
        let bytes = elements
            .checked_mul(entry.dtype.size() as u64)
            .ok_or_else(|| bad(path, "a tensor shape overflows when multiplied out"))?;
        if e - s != bytes {
            return Err(bad(
                path,
                format!("tensor `{name}`: its byte length does not match its shape and dtype"),
            ));
        }
        end = e;
    }
    if end != data_len {
        return Err(bad(
            path,
            "the tensor data does not match the file size (truncated or padded file)",
        ));
    }
    Ok((entries.into_iter().collect(), meta.metadata().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_bytes(header: &str, data_len: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend(std::iter::repeat_n(7u8, data_len));
        v
    }

    #[test]
    fn valid_table_and_bytes() {
        let h = r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#;
        let mut bytes = file_bytes(h, 12);
        let n = bytes.len();
        bytes[n - 8..].copy_from_slice(&[0, 0, 128, 63, 0, 0, 0, 64]);
        let p = Path::new("x");
        let mut idx = StIndex::from_slice(&bytes, p).unwrap();
        assert_eq!(idx.shape("a"), Some(&[2usize][..]));
        assert_eq!(idx.bytes("b", p).unwrap(), &[0, 0, 128, 63, 0, 0, 0, 64]);
        assert!(idx.entry("c").is_none());
    }

    #[test]
    fn rejects_gaps_overlaps_wrong_lengths_and_padding() {
        let p = Path::new("x");
        let cases = [
            // gap before the first tensor
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
                "offsets",
            ),
            // length does not match the shape
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
                4,
                "byte length",
            ),
            // overlap
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
                "offsets",
            ),
            // trailing bytes
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                5,
                "file size",
            ),
            // truncated data
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                3,
                "file size",
            ),
            // overflowing shape
            (
                r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,4]}}"#,
                4,
                "overflows",
            ),
            (r#"{"a":1}"#, 0, "JSON"),
        ];
        for (h, len, needle) in cases {
            let bytes = file_bytes(h, len);
            let err = StIndex::from_slice(&bytes, p).err().unwrap();
            assert!(err.to_string().contains(needle), "{h}: {err}");
        }
        for bytes in [vec![], vec![1, 0, 0], 1000u64.to_le_bytes().to_vec()] {
            assert!(StIndex::from_slice(&bytes, p).is_err());
        }
    }
}
