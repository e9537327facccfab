//! Test harness: a driver-side view of one split queue in test guest memory, plus temp files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::Interrupt;
use crate::GuestMemoryMmap;

/// Size of the test guest RAM (one region at 0).
pub const RAM_SIZE: u64 = 0x10_0000;

/// One MiB of guest RAM at address 0.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)]).unwrap()
}

/// An interrupt line over a plain eventfd.
pub fn interrupt() -> Interrupt {
    Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
}

/// A buffer descriptor as the driver writes it: (guest address, length, device-writable).
pub type Buf = (u64, u32, bool);

/// The driver's side of a split queue placed at guest address 0.
pub struct DriverQueue<'a> {
    mem: &'a GuestMemoryMmap,
    mock: MockSplitQueue<'a, GuestMemoryMmap>,
    size: u16,
    next_descriptor: u16,
}

impl<'a> DriverQueue<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, size: u16) -> Self {
        Self::at(mem, GuestAddress(0), size)
    }

    /// A queue whose descriptor table starts at `start`.
    pub fn at(mem: &'a GuestMemoryMmap, start: GuestAddress, size: u16) -> Self {
        let mock = MockSplitQueue::create(mem, start, size);
        Self {
            mem,
            mock,
            size,
            next_descriptor: 0,
        }
    }

    /// The device's view of the queue, configured and ready.
    pub fn queue(&self) -> Queue {
        let queue: Queue = self.mock.create_queue().unwrap();
        assert_eq!(queue.size(), self.size);
        queue
    }

    /// Writes `bufs` as one chain and makes it available; returns its head index.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> u16 {
        assert!(bufs.len() <= usize::from(self.size));
        // Chains are contiguous in the table; earlier ones are assumed consumed.
        let head = if usize::from(self.next_descriptor) + bufs.len() > usize::from(self.size) {
            0
        } else {
            self.next_descriptor
        };
        let descriptors: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writable))| {
                let index = head + i as u16;
                let mut flags = if writable { VRING_DESC_F_WRITE as u16 } else { 0 };
                if i + 1 < bufs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(Descriptor::new(addr, len, flags, (index + 1) % self.size))
            })
            .collect();
        self.mock.add_desc_chains(&descriptors, head).unwrap();
        self.next_descriptor = (head + bufs.len() as u16) % self.size;
        head
    }

    /// Writes raw descriptors at `index` (no avail-ring update).
    pub fn write_descriptor(&self, index: u16, descriptor: Descriptor) {
        self.mock
            .desc_table()
            .store(index, RawDescriptor::from(descriptor))
            .unwrap();
    }

    /// Makes `head` available without touching the descriptor table.
    pub fn make_available(&self, head: u16) {
        let avail = self.mock.avail_addr();
        let idx: u16 = self.mem.read_obj(avail.unchecked_add_raw(2)).unwrap();
        let slot = avail.unchecked_add_raw(4 + 2 * u64::from(idx % self.size));
        self.mem.write_obj(head, slot).unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), avail.unchecked_add_raw(2))
            .unwrap();
    }

    /// The device's used index.
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(self.mock.used_addr().unchecked_add_raw(2)).unwrap()
    }

    /// Used element `i`: (head index, length).
    pub fn used(&self, i: u16) -> (u32, u32) {
        let elem = self
            .mock
            .used_addr()
            .unchecked_add_raw(4 + 8 * u64::from(i % self.size));
        (
            self.mem.read_obj(elem).unwrap(),
            self.mem.read_obj(elem.unchecked_add_raw(4)).unwrap(),
        )
    }
}

trait AddRaw {
    fn unchecked_add_raw(self, offset: u64) -> GuestAddress;
}

impl AddRaw for GuestAddress {
    fn unchecked_add_raw(self, offset: u64) -> GuestAddress {
        GuestAddress(self.0 + offset)
    }
}

/// A file under the temp directory, removed on drop.
pub struct TempFile {
    path: PathBuf,
}

impl TempFile {
    pub fn with_contents(contents: &[u8]) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "hearth-devices-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).unwrap();
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
