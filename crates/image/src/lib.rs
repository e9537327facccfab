//! hearth images (AMIs).
//!
//! - [`manifest`]: the image manifest `image.json` (format `hearth-image/1`) that names an image's kernel,
//!   optional initrd and root disk with their sha256 digests and sizes, and its block device mappings.
//! - [`store`]: the content-addressed image store behind `object_store` (a local directory or an
//!   S3-compatible bucket), with an async API ([`ImageStore`]) and a blocking facade ([`BlockingImageStore`])
//!   for synchronous code.
//! - [`cidata`]: the per-instance metadata disk in cloud-init's NoCloud format (a FAT image labelled
//!   `cidata`), written in Rust without mounts or mkfs.
//!
//! Every fallible function returns [`ImageError`].

pub mod cidata;
mod digest;
mod error;
pub mod manifest;
pub mod store;
pub mod testing;
pub mod transport;

pub use crate::digest::{is_sha256_hex, sha256_file, sha256_reader};
pub use crate::error::{ImageError, Result};
pub use crate::manifest::Manifest;
pub use crate::store::{BlockingImageStore, ImageStore, ImportedImage};
