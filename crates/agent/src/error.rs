//! Errors of the agent, each naming the operation that failed, with the cause chained.

use std::io;
use std::path::PathBuf;

/// Creating the agent or running its sync loop failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// `Agent::new` was called outside a Tokio runtime.
    #[error("the agent needs a Tokio runtime (call Agent::new inside one)")]
    NoRuntime,
    /// A directory the agent owns could not be created or resolved.
    #[error("cannot create directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The run directory could not be listed.
    #[error("cannot read run directory {path}")]
    ReadRunDir {
        /// The run directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another agent holds the run directory.
    #[error("cannot lock {path} (is another hearth-agent using this run directory?)")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The hearthd address is not a valid `unix:` path or URI.
    #[error("invalid hearthd endpoint {endpoint}")]
    Endpoint {
        /// What was given.
        endpoint: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The token cannot be sent as gRPC metadata.
    #[error("the agent token is not valid metadata (it must be printable ASCII)")]
    Token,
}

/// Preparing a volume file failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The volume ID cannot name a file.
    #[error("invalid volume id {0:?}")]
    InvalidId(String),
    /// The image to clone could not be opened.
    #[error("cannot open source image {path}")]
    OpenSource {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The temporary volume file could not be created.
    #[error("cannot create volume file {path}")]
    Create {
        /// The temporary file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Copying the source image failed.
    #[error("cannot copy {from} to {to}")]
    Copy {
        /// The image.
        from: PathBuf,
        /// The temporary volume file.
        to: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Growing the volume to its size failed.
    #[error("cannot grow {path} to {size} bytes")]
    Grow {
        /// The temporary volume file.
        path: PathBuf,
        /// Wanted size.
        size: u64,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Making the finished volume file durable or visible failed.
    #[error("cannot commit volume file {path}")]
    Commit {
        /// The volume file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Starting a VMM failed; reported as `vmm-error` (or `encryption-key`, see [`LaunchError::exit_reason`])
/// with this error as the detail.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The desired shape cannot be given to hearth-vmm.
    #[error("invalid instance shape: {0}")]
    Shape(String),
    /// A volume file could not be prepared.
    #[error("cannot prepare volume {volume_id}")]
    Volume {
        /// The volume.
        volume_id: String,
        /// Why.
        #[source]
        source: VolumeError,
    },
    /// A file in the run directory could not be written.
    #[error("cannot write {path}")]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The metadata disk could not be written.
    #[error("cannot write the metadata disk {path}: {message}")]
    Metadata {
        /// The disk file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// An encrypted volume came without usable key material: the VMM is not started (the
    /// disk is never attached unencrypted). Reported as `encryption-key`.
    #[error("encrypted volume {volume_id} has no usable key: {problem}")]
    EncryptionKey {
        /// The volume.
        volume_id: String,
        /// What is wrong with the key.
        problem: String,
    },
    /// The VMM process could not be started.
    #[error("cannot start {binary}")]
    Spawn {
        /// The hearth-vmm binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl LaunchError {
    /// The `last_exit_reason` reported for this failure: `encryption-key` for a volume
    /// without a usable key (hearthd answers `Client.InvalidKMSKey.InvalidState`),
    /// `vmm-error` for everything else.
    pub fn exit_reason(&self) -> &'static str {
        match self {
            LaunchError::EncryptionKey { .. } => ENCRYPTION_KEY_REASON,
            _ => VMM_ERROR_REASON,
        }
    }
}

/// `last_exit_reason` of a start refused for an encrypted volume without a usable key.
pub const ENCRYPTION_KEY_REASON: &str = "encryption-key";
/// `last_exit_reason` of any other start that failed before the VMM ran.
pub const VMM_ERROR_REASON: &str = "vmm-error";

/// `error: cause: cause…`, the whole `source()` chain on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_names_the_operation_and_the_cause() {
        let error = LaunchError::Volume {
            volume_id: "vol-1".into(),
            source: VolumeError::OpenSource {
                path: "/img".into(),
                source: io::Error::from_raw_os_error(libc::ENOENT),
            },
        };
        let text = error_chain(&error);
        assert!(
            text.starts_with("cannot prepare volume vol-1: cannot open source image /img: No such file"),
            "{text}"
        );
    }
}
