//! The crate's one error type.
//!
//! Every variant says whose fault it is: a bad file the user gave us ([`Error::InvalidFile`],
//! [`Error::MissingTensor`], [`Error::TensorShape`], [`Error::TensorDtype`],
//! [`Error::NonFiniteTensor`], [`Error::Image`]), a bad parameter ([`Error::InvalidParameter`]),
//! input data that does not fit the model ([`Error::InvalidInput`]), a limit that protects memory
//! ([`Error::LimitExceeded`], [`Error::MemoryBudget`]), or the operating system ([`Error::Io`]).

use std::fmt;
use std::path::{Path, PathBuf};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in this crate.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed at the operating-system level.
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A weights or model file is malformed (truncated, bad header, wrong format version, ...).
    InvalidFile {
        /// The file concerned (`<memory>` for in-memory bytes).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor the architecture needs is absent from the file.
    MissingTensor {
        /// The file concerned.
        path: PathBuf,
        /// Name of the missing tensor, e.g. `layer2.0.downsample.1.running_var`.
        tensor: String,
        /// What the crate was looking for (architecture, expected shape).
        expected: String,
    },
    /// A tensor has the wrong shape.
    TensorShape {
        /// The file concerned.
        path: PathBuf,
        /// Name of the tensor.
        tensor: String,
        /// The shape the architecture requires.
        expected: Vec<usize>,
        /// The shape found in the file.
        found: Vec<usize>,
    },
    /// A tensor has a dtype this crate cannot use.
    TensorDtype {
        /// The file concerned.
        path: PathBuf,
        /// Name of the tensor.
        tensor: String,
        /// Accepted dtypes.
        expected: String,
        /// The dtype found in the file.
        found: String,
    },
    /// A tensor holds NaN or infinite values.
    NonFiniteTensor {
        /// The file concerned.
        path: PathBuf,
        /// Name of the tensor.
        tensor: String,
    },
    /// An image could not be read or decoded.
    Image {
        /// The image file (`<memory>` for in-memory bytes).
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A configuration parameter is out of its valid range.
    InvalidParameter {
        /// Parameter name as it appears in the configuration.
        name: &'static str,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// Input data does not fit the operation (wrong shape, empty set, NaN scores, ...).
    InvalidInput {
        /// What is wrong.
        reason: String,
    },
    /// A resource limit would be exceeded (image too large, tensor too large, ...).
    LimitExceeded {
        /// What would have exceeded which limit.
        reason: String,
    },
    /// Even the most frugal plan of an operation needs more memory than the budget the caller
    /// set (checked before anything large is allocated).
    MemoryBudget {
        /// The budget, in bytes.
        budget: u64,
        /// What the smallest plan needs, in bytes.
        needed: u64,
        /// The plan's stages and what would let it fit.
        detail: String,
    },
}

impl Error {
    /// Shorthand for [`Error::InvalidFile`].
    pub(crate) fn invalid_file(path: &Path, reason: impl Into<String>) -> Self {
        Error::InvalidFile {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::InvalidParameter`].
    pub(crate) fn param(name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidParameter {
            name,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::InvalidInput`].
    pub(crate) fn input(reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::InvalidFile { path, reason } => {
                write!(f, "{}: invalid file: {reason}", path.display())
            }
            Error::MissingTensor {
                path,
                tensor,
                expected,
            } => write!(
                f,
                "{}: tensor `{tensor}` is missing (expected {expected})",
                path.display()
            ),
            Error::TensorShape {
                path,
                tensor,
                expected,
                found,
            } => write!(
                f,
                "{}: tensor `{tensor}` has shape {found:?}, expected {expected:?}",
                path.display()
            ),
            Error::TensorDtype {
                path,
                tensor,
                expected,
                found,
            } => write!(
                f,
                "{}: tensor `{tensor}` has dtype {found}, expected {expected}",
                path.display()
            ),
            Error::NonFiniteTensor { path, tensor } => write!(
                f,
                "{}: tensor `{tensor}` contains NaN or infinite values",
                path.display()
            ),
            Error::Image { path, reason } => {
                write!(f, "{}: cannot read image: {reason}", path.display())
            }
            Error::InvalidParameter { name, reason } => {
                write!(f, "invalid parameter `{name}`: {reason}")
            }
            Error::InvalidInput { reason } => write!(f, "invalid input: {reason}"),
            Error::LimitExceeded { reason } => write!(f, "resource limit exceeded: {reason}"),
            Error::MemoryBudget {
                budget,
                needed,
                detail,
            } => write!(
                f,
                "memory budget of {} is too small: the smallest plan needs {} ({detail})",
                crate::model::format_bytes(*budget),
                crate::model::format_bytes(*needed)
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
