//! Reading and writing named f32 tensors in safetensors files (the `patchcore embed` input and
//! output format, and the test fixtures' format).

use std::io::Write;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::error::{Error, Result};

/// Reads tensor `name` from a safetensors file held in `bytes` as f32 (f16 and bf16 are
/// widened). `path` is used in error messages. Non-finite values are refused.
pub fn read_f32(bytes: &[u8], path: &Path, name: &str) -> Result<ArrayD<f32>> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::invalid_file(path, format!("not a valid safetensors file: {e:?}")))?;
    let t = st.tensor(name).map_err(|_| Error::MissingTensor {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        expected: "an f32, f16 or bf16 tensor".into(),
    })?;
    let data: Vec<f32> = match t.dtype() {
        Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => t
            .data()
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => t
            .data()
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::TensorDtype {
                path: path.to_path_buf(),
                tensor: name.to_string(),
                expected: "F32, F16 or BF16".into(),
                found: format!("{other:?}"),
            })
        }
    };
    if data.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFiniteTensor {
            path: path.to_path_buf(),
            tensor: name.to_string(),
        });
    }
    ArrayD::from_shape_vec(IxDyn(t.shape()), data)
        .map_err(|e| Error::invalid_file(path, format!("tensor `{name}`: {e}")))
}

/// Writes named f32 tensors to a safetensors file, atomically; an existing regular file is
/// replaced only when `overwrite` (anything else — a folder, a FIFO, a device, a symbolic
/// link — never).
pub fn write_f32(path: &Path, tensors: &[(&str, &ArrayD<f32>)], overwrite: bool) -> Result<()> {
    let buffers: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, a)| a.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, a), buf) in tensors.iter().zip(&buffers) {
        let v = TensorView::new(Dtype::F32, a.shape().to_vec(), buf)
            .map_err(|e| Error::input(format!("tensor `{name}`: {e:?}")))?;
        views.push((*name, v));
    }
    let bytes = safetensors::serialize(views, &None)
        .map_err(|e| Error::input(format!("cannot serialise tensors: {e:?}")))?;
    crate::io_util::write_atomic(path, overwrite, |f| {
        f.write_all(&bytes).map_err(|e| Error::io(path, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("patchcore-tio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.safetensors");
        let _ = std::fs::remove_file(&p);
        let a =
            ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0, -2.5, 3.0, 0.0, 1e-7, 7.0]).unwrap();
        write_f32(&p, &[("x", &a)], false).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(read_f32(&bytes, &p, "x").unwrap(), a);
        let e = read_f32(&bytes, &p, "y").unwrap_err();
        assert!(matches!(e, Error::MissingTensor { .. }) && e.to_string().contains("`y`"));
        assert!(matches!(
            read_f32(&bytes[..20], &p, "x"),
            Err(Error::InvalidFile { .. })
        ));
        assert!(write_f32(&p, &[("x", &a)], false).is_err());
        let nan = ArrayD::from_shape_vec(IxDyn(&[1]), vec![f32::NAN]).unwrap();
        write_f32(&p, &[("x", &nan)], true).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert!(matches!(
            read_f32(&bytes, &p, "x"),
            Err(Error::NonFiniteTensor { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
