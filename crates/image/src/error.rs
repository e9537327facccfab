//! [`ImageError`], the one error type of this crate.

use std::path::PathBuf;

/// A result with [`ImageError`].
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// Everything that can go wrong with images, manifests, the image store and metadata disks.
///
/// The API layer maps the variants: [`ImageError::ManifestInvalid`], [`ImageError::ChecksumMismatch`],
/// [`ImageError::SizeMismatch`], [`ImageError::FileMissing`] and [`ImageError::SeedInvalid`] are the caller's
/// fault; [`ImageError::NotFound`] names a missing manifest or blob; [`ImageError::Store`] and
/// [`ImageError::Io`] are server-side failures.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The manifest (or a value meant for one) breaks the format; the text says which field and why.
    #[error("invalid image manifest: {0}")]
    ManifestInvalid(String),
    /// A file's content does not hash to the digest the manifest gives.
    #[error("{file}: sha256 mismatch: the manifest says {expected}, the file has {actual}")]
    ChecksumMismatch {
        /// The file (a local path, or the store key of a downloaded blob).
        file: String,
        /// The digest the manifest gives (64 lowercase hex digits).
        expected: String,
        /// The digest of the content read.
        actual: String,
    },
    /// A file's size differs from the size the manifest gives.
    #[error("{file}: size mismatch: the manifest says {expected} bytes, the file has {actual}")]
    SizeMismatch {
        /// The file (a local path, or the store key of a blob).
        file: String,
        /// The size in bytes the manifest gives.
        expected: u64,
        /// The size in bytes found.
        actual: u64,
    },
    /// A file the manifest names does not exist.
    #[error("{}: no such file", .0.display())]
    FileMissing(PathBuf),
    /// A manifest or blob is not in the image store.
    #[error("not in the image store: {0}")]
    NotFound(String),
    /// A digest argument is not 64 lowercase hex digits.
    #[error("invalid sha256 digest {0:?}: expected 64 lowercase hex digits")]
    InvalidDigest(String),
    /// The metadata disk's seed (instance id, hostname, keys, ...) is unusable.
    #[error("invalid metadata disk content: {0}")]
    SeedInvalid(String),
    /// The object store failed, or the store location is unusable.
    #[error("image store: {0}")]
    Store(String),
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    /// An [`ImageError::Io`] with `context` (e.g. "cannot read /x/y").
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ImageError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<object_store::Error> for ImageError {
    fn from(error: object_store::Error) -> Self {
        match error {
            object_store::Error::NotFound { path, .. } => ImageError::NotFound(path),
            other => ImageError::Store(other.to_string()),
        }
    }
}
