//! Virtio device models (block, net, rng) and token-bucket rate limiting for hearth-vmm.
#![deny(missing_docs)]

pub mod rate_limiter;
pub mod virtio;

/// Guest RAM as every device sees it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
