//! Durable state: the `Store` trait (all records loaded at open, changes committed in one
//! transaction each) and its SQLite implementation.

pub mod sqlite;

use thiserror::Error;

use crate::model::{ClientTokenRecord, Host, Image, Instance, KeyPair, NetRecord, SnapshotRecord, Volume};

pub use sqlite::SqliteStore;

/// Why the store failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database refused an operation.
    #[error("{operation}")]
    Database {
        /// What the store was doing.
        operation: &'static str,
        /// Why it failed.
        #[source]
        source: rusqlite::Error,
    },
    /// A record could not be encoded or decoded.
    #[error("{operation}")]
    Encoding {
        /// What the store was doing.
        operation: &'static str,
        /// Why it failed.
        #[source]
        source: serde_json::Error,
    },
    /// The database was written by a newer hearthd.
    #[error("the database has schema version {found}, newer than this hearthd's {supported}")]
    TooNew {
        /// Version in the file.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
}

/// Every record in the store.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Instances (terminated ones until purged).
    pub instances: Vec<Instance>,
    /// Volumes.
    pub volumes: Vec<Volume>,
    /// Images.
    pub images: Vec<Image>,
    /// Key pairs.
    pub key_pairs: Vec<KeyPair>,
    /// Hosts.
    pub hosts: Vec<Host>,
    /// RunInstances client tokens.
    pub client_tokens: Vec<ClientTokenRecord>,
    /// Volume snapshots.
    pub snapshots: Vec<SnapshotRecord>,
    /// VPCs, subnets, security groups, Elastic IPs.
    pub net: Vec<NetRecord>,
    /// The last desired-state revision handed out.
    pub revision: u64,
}

/// One atomic change: records to write (insert or replace) and keys to delete.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Instances to write.
    pub instances: Vec<Instance>,
    /// Instance IDs to delete.
    pub deleted_instances: Vec<String>,
    /// Volumes to write.
    pub volumes: Vec<Volume>,
    /// Volume IDs to delete.
    pub deleted_volumes: Vec<String>,
    /// Images to write.
    pub images: Vec<Image>,
    /// Image IDs to delete.
    pub deleted_images: Vec<String>,
    /// Key pairs to write.
    pub key_pairs: Vec<KeyPair>,
    /// Key pair names to delete.
    pub deleted_key_pairs: Vec<String>,
    /// Hosts to write.
    pub hosts: Vec<Host>,
    /// Client tokens to write.
    pub client_tokens: Vec<ClientTokenRecord>,
    /// Client tokens to delete.
    pub deleted_client_tokens: Vec<String>,
    /// Snapshots to write.
    pub snapshots: Vec<SnapshotRecord>,
    /// Snapshot IDs to delete.
    pub deleted_snapshots: Vec<String>,
    /// Network records to write.
    pub net: Vec<NetRecord>,
    /// Network record IDs to delete.
    pub deleted_net: Vec<String>,
    /// The new last revision, if it moved.
    pub revision: Option<u64>,
}

impl Changes {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
            && self.deleted_instances.is_empty()
            && self.volumes.is_empty()
            && self.deleted_volumes.is_empty()
            && self.images.is_empty()
            && self.deleted_images.is_empty()
            && self.key_pairs.is_empty()
            && self.deleted_key_pairs.is_empty()
            && self.hosts.is_empty()
            && self.client_tokens.is_empty()
            && self.deleted_client_tokens.is_empty()
            && self.snapshots.is_empty()
            && self.deleted_snapshots.is_empty()
            && self.net.is_empty()
            && self.deleted_net.is_empty()
            && self.revision.is_none()
    }
}

/// Durable storage of hearthd's records. hearthd keeps the working set in memory and writes
/// through: `commit` returns only once the change is durable (one transaction per call).
pub trait Store: Send {
    /// Every record.
    fn load(&mut self) -> Result<Snapshot, StoreError>;
    /// Applies one change atomically and durably.
    fn commit(&mut self, changes: &Changes) -> Result<(), StoreError>;
}
