//! Virtio devices behind the virtio-mmio transport: the device trait and shared glue.

pub mod block;
pub mod net;
pub mod rng;
#[cfg(test)]
mod testing;

use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use event_manager::EventSet;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::GuestMemoryMmap;

/// Virtio device type IDs (virtio 1.x §5).
pub const TYPE_NET: u32 = 1;
/// Block device type ID.
pub const TYPE_BLOCK: u32 = 2;
/// Entropy device type ID.
pub const TYPE_RNG: u32 = 4;

/// `VIRTIO_F_VERSION_1`: every device we offer is a modern (1.x) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// `InterruptStatus` bit: the device used a buffer.
pub const INTERRUPT_USED_BUFFER: u32 = 0x1;
/// `InterruptStatus` bit: the device's configuration changed.
pub const INTERRUPT_CONFIG_CHANGE: u32 = 0x2;

/// The interrupt line of one virtio-mmio slot: the `InterruptStatus` register plus the
/// irqfd wired to the slot's GSI in the in-kernel IOAPIC.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    /// Wraps an irqfd (already registered with KVM, or a plain eventfd in unit tests).
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Sets `bits` in `InterruptStatus` and raises the line.
    pub fn trigger(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        // A failed write means the eventfd counter is saturated: the line is raised anyway.
        let _ = self.irqfd.write(1);
    }

    /// Current `InterruptStatus`.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// `InterruptACK`: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears all pending bits (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// The eventfd behind the line (for KVM_IRQFD registration and for tests).
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// What a device gets while it processes its queues: guest memory, the queues as the
/// driver configured them, and its interrupt line.
pub struct QueueContext<'a> {
    /// All of guest RAM; every address a guest gives is checked against it.
    pub mem: &'a GuestMemoryMmap,
    /// The device's queues, indexed like the driver's `QueueSel`.
    pub queues: &'a mut [Queue],
    /// The slot's interrupt line.
    pub interrupt: &'a Interrupt,
}

/// A host file descriptor a device wants the event loop to watch (a tap, a rate-limiter
/// timer). `token` comes back to [`VirtioDevice::handle_event`].
#[derive(Debug, Clone, Copy)]
pub struct EventSource {
    /// The descriptor to watch.
    pub fd: RawFd,
    /// Which readiness to watch for (level-triggered unless `EDGE_TRIGGERED` is set).
    pub events: EventSet,
    /// Device-chosen identifier.
    pub token: u32,
}

/// Why a device refused `DRIVER_OK`.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not accept a feature the device needs.
    #[error("driver did not accept required feature bits {0:#x}")]
    MissingFeatures(u64),
    /// A host resource the device needs failed.
    #[error("device activation failed: {0}")]
    Host(#[source] std::io::Error),
}

/// A virtio device model. The transport (`hearth_vmm`'s virtio-mmio transport) owns the queues and
/// calls in on the vCPU thread (config space, activation) and on the event-loop thread
/// (queue notifications and device event sources).
pub trait VirtioDevice: Send {
    /// Virtio device type ID (`TYPE_*`).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (including `VIRTIO_F_VERSION_1`).
    fn device_features(&self) -> u64;
    /// Reads device-specific configuration space at `offset` (relative to 0x100).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device-specific configuration space; ignored by default.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set `DRIVER_OK` after accepting `acked_features`.
    fn activate(&mut self, acked_features: u64) -> Result<(), ActivateError>;
    /// The driver reset the device (status 0): forget in-flight state.
    fn reset(&mut self);
    /// The driver notified queue `queue_index` (an ioeventfd fired). Only called while
    /// activated.
    fn process_queue(&mut self, queue_index: usize, ctx: &mut QueueContext<'_>);
    /// Extra host descriptors to watch, fixed for the device's lifetime.
    fn event_sources(&self) -> Vec<EventSource> {
        Vec::new()
    }
    /// One of `event_sources` is ready. `ctx` is `None` while the device is not
    /// activated (the device must then only drain or remember the event).
    fn handle_event(&mut self, _token: u32, _events: EventSet, _ctx: Option<&mut QueueContext<'_>>) {}
    /// Counters for the control socket's `info` (JSON object).
    fn counters(&self) -> serde_json::Value;
}

/// Copies device configuration bytes at `offset` into `data`; bytes past the end of
/// `config` read as zero.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(available) = config.get(start..) {
        let len = available.len().min(data.len());
        data[..len].copy_from_slice(&available[..len]);
    }
}

/// `ActivateError::MissingFeatures` unless the driver accepted `VIRTIO_F_VERSION_1` (all
/// our devices are modern-only).
pub(crate) fn require_version_1(acked_features: u64) -> Result<(), ActivateError> {
    if acked_features & VIRTIO_F_VERSION_1 == 0 {
        return Err(ActivateError::MissingFeatures(VIRTIO_F_VERSION_1));
    }
    Ok(())
}
