//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No (complete) snapshot with this id exists in the store.
    #[error("snapshot {0} not found")]
    NotFound(String),

    /// A snapshot with this id already exists in the store.
    #[error("snapshot {0} already exists")]
    AlreadyExists(String),

    /// A chunk object exists but its content does not hash to its name (or has the wrong length).
    #[error(
        "snapshot {snapshot_id}: chunk {index} (sha256 {digest}) is corrupt: its content does not match its digest"
    )]
    ChunkCorrupt {
        /// The snapshot being read.
        snapshot_id: String,
        /// The chunk index inside the volume.
        index: u64,
        /// The SHA-256 (hex) the manifest names for that chunk.
        digest: String,
    },

    /// A chunk the manifest references is not in the store.
    #[error("snapshot {snapshot_id}: chunk {index} (sha256 {digest}) is missing from the store")]
    ChunkMissing {
        /// The snapshot being read.
        snapshot_id: String,
        /// The chunk index inside the volume.
        index: u64,
        /// The SHA-256 (hex) the manifest names for that chunk.
        digest: String,
    },

    /// A manifest in the store (or given by the caller) does not follow the format.
    #[error("invalid snapshot manifest: {0}")]
    InvalidManifest(String),

    /// A size does not fit: a source file shorter than the volume, a restore smaller than the snapshot, ...
    #[error("{what} (expected {expected} bytes, got {actual})")]
    SizeMismatch {
        /// What was being checked.
        what: String,
        /// The size (or lower bound) that was required.
        expected: u64,
        /// The size that was found or asked for.
        actual: u64,
    },

    /// A caller-supplied argument is malformed: a snapshot id, a dirty list, a store location.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A local file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The object store failed (network, permissions, ...).
    #[error("snapshot store: {0}")]
    Store(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn store(context: &str, err: object_store::Error) -> Self {
        Error::Store(format!("{context}: {err}"))
    }
}
