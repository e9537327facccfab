//! Virtio device models (block, net, rng), token-bucket rate limiting, disk encryption at
//! rest (AES-256-XTS) and dirty-chunk tracking for hearth-vmm.
#![deny(missing_docs)]

pub mod crypt;
pub mod dirty;
pub mod rate_limiter;
pub mod virtio;

/// Guest RAM as every device sees it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
