//! EBS-style incremental snapshots of hearth volume files.
//!
//! A volume is a raw file cut into chunks of [`CHUNK_BYTES`] (1 MiB, the unit of the VMM's dirty tracking;
//! the last chunk may be shorter, volume sizes being multiples of 512 bytes). A snapshot records, for every
//! chunk, either `null` (all zero bytes: stored nowhere) or the SHA-256 of its content. Chunks live in an
//! [`object_store`] — a local directory, or an S3-compatible bucket over plain HTTP (through the transport given
//! to [`SnapshotStore::open_with_http`]) — under their digest, so a
//! chunk already held by any snapshot is never uploaded again: snapshots are **incremental by construction**,
//! and a snapshot's `stored_bytes` is exactly the new content it brought.
//!
//! # Layout of the store
//!
//! ```text
//! chunks/sha256/<64 hex>      the content of one chunk (1 MiB, or less for a volume's last chunk)
//! snapshots/<snapshot-id>.json  the manifest (see Manifest): {"format": "hearth-snapshot/1", "snapshot_id",
//!                             "volume_id", "volume_size", "chunk_bytes", "chunks": [hex|null, ...],
//!                             "encrypted", "key_id", "parent", "description", "start_time_ms", "stored_bytes"}
//! ```
//!
//! The store location (directory, or bucket prefix) belongs to the snapshot store alone: garbage collection
//! deletes every object under `chunks/sha256/` that no manifest references.
//!
//! Encryption is the volume's business: the chunks are the volume file's bytes as they are (ciphertext for an
//! encrypted volume); the manifest only records `encrypted` and `key_id`.
//!
//! # Crash safety
//!
//! The manifest is the completion marker. [`SnapshotStore::create`] uploads chunks first and writes the
//! manifest last, with one atomic put (the local backend writes a staging file and renames it into place;
//! S3 puts are atomic), after every chunk put has returned; local writes are fsynced (file and directory)
//! before the put returns, so a durable manifest only ever names durable chunks. A process killed in the
//! middle of a create therefore leaves no manifest — the snapshot does not exist ([`SnapshotStore::get`] says
//! [`Error::NotFound`]) — and at worst some orphan chunks (and, locally, a half-written `<name>#<n>` staging
//! file) that the next [`SnapshotStore::gc`] removes. A restore writes a temporary file next to its
//! destination, verifies every chunk's SHA-256, fsyncs and only then renames it over the destination: a
//! failed or interrupted restore never leaves a partial volume under the destination name.
//!
//! # Garbage collection rules
//!
//! [`SnapshotStore::delete`] removes the manifest (made durable first), then runs a mark and sweep:
//! * **mark**: every chunk referenced by any remaining manifest, plus every chunk an operation of this
//!   process is holding (see below), is live;
//! * **sweep**: every other object under `chunks/sha256/` is deleted.
//!
//! Chunks shared with other snapshots (a child's unchanged chunks, a copy's chunks) are therefore kept, and
//! exactly the content that only the deleted snapshot held is freed. If any manifest cannot be read or
//! parsed, the collection stops before deleting anything.
//!
//! hearthd is the only writer of the store. Inside the process, one lock serializes the mutations: delete,
//! gc and copy hold it throughout; a create takes it to start (the id is free, the parent still exists), for
//! each chunk it is about to look up or upload, and to publish its manifest. While it runs, a create has
//! chunks in the store that no manifest references yet, so every such chunk (and every parent chunk it
//! reuses) is first registered, under the lock, in an in-process *pending* set that the mark phase treats as
//! live; restores and verifications hold their snapshot's chunks the same way, so deleting a snapshot being
//! restored defers the freeing of its chunks to the next collection. Because registration and the
//! collection's whole mark-and-sweep happen under the same lock, a chunk is either seen as pending by the
//! collection, or looked up (and re-uploaded if needed) only after the collection is over. Local staging files
//! of killed uploads are removed only when no create of this process is running.
//!
//! # Threads
//!
//! [`SnapshotStore`] is a blocking facade, usable from any thread, including tokio's `spawn_blocking`
//! threads: it owns a small tokio runtime, spawns the object-store futures on it and waits for them on a
//! channel. File I/O is positional (`pread`/`pwrite`) on the calling thread; hashing and transfers run on
//! the runtime in a bounded pipeline, so an operation holds only a few chunks in memory.

#![deny(missing_docs)]

mod error;
mod io;
mod location;
mod manifest;
mod store;

pub use error::{Error, Result};
pub use manifest::{chunk_count, chunk_len, validate_id, ChunkDigest, Manifest, FORMAT, SECTOR_BYTES};
/// The object store crate this one is built on (for [`SnapshotStore::with_object_store`] and
/// [`SnapshotStore::open_with_http`]).
pub use object_store;
pub use store::{
    ChunkProblem, ChunkProblemKind, CreateReport, CreateRequest, GcReport, RestoreReport, SnapshotStore, VerifyReport,
};

/// Size of a snapshot chunk: 1 MiB, the unit of the VMM's dirty-block tracking.
pub const CHUNK_BYTES: u64 = 1 << 20;
