//! hearth-vmm: one KVM microVM per process, booted like Linux is booted by Firecracker:
//! 64-bit direct boot, ACPI (hardware-reduced), 8250 console, i8042 reset, boot timer,
//! and virtio-mmio block, net and rng devices.
#![deny(missing_docs)]

pub mod acpi;
pub mod boot;
pub mod coalesced;
pub mod config;
pub mod control;
pub mod devices;
pub mod events;
pub mod exit;
pub mod layout;
pub mod sandbox;
pub mod vcpu;
pub mod vmm;

pub use hearth_devices::GuestMemoryMmap;
