//! KVM's coalesced I/O ring: guest writes to the serial port's transmit register are queued
//! by KVM in a page shared with us instead of each leaving `KVM_RUN` for a round trip through
//! this process. A Linux console prints every byte with one read of the line status register
//! and one write of the transmit register; with the write queued, each byte costs one exit to
//! user space instead of two.
//!
//! Order is kept: every vCPU empties the ring before it handles any exit, so a queued write
//! reaches the device before anything the guest does after it that we see (a status read, a
//! divisor change, a write KVM could not queue because the ring was full). Writes the guest
//! queues and then follows with nothing we see (it halts) are emptied by the event loop's
//! timer within [`DRAIN_INTERVAL`], and once more when the VM stops.

use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use kvm_bindings::{kvm_coalesced_mmio, kvm_coalesced_mmio_ring, KVM_COALESCED_MMIO_PAGE_OFFSET};

use crate::devices::bus::Bus;

/// How often the event loop empties writes no exit followed.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(50);

/// The ring page, mapped from a vCPU's descriptor (every vCPU maps the same page).
pub struct CoalescedRing {
    page: NonNull<u8>,
    page_size: usize,
    /// Entries the page holds (KVM_COALESCED_MMIO_MAX).
    capacity: u32,
    /// One reader at a time: the vCPUs and the event loop all empty the ring.
    reader: Mutex<()>,
}

// SAFETY: the page is shared memory that KVM writes and we read and write only through
// atomics and volatile reads, one reader at a time (`reader`); the pointer stays valid until
// Drop unmaps it.
unsafe impl Send for CoalescedRing {}
// SAFETY: as above.
unsafe impl Sync for CoalescedRing {}

const HEADER: usize = std::mem::size_of::<kvm_coalesced_mmio_ring>();
const ENTRY: usize = std::mem::size_of::<kvm_coalesced_mmio>();

impl CoalescedRing {
    /// Maps the ring page of the VM `vcpu` belongs to.
    pub fn map(vcpu: &impl AsRawFd) -> io::Result<Self> {
        // SAFETY: sysconf takes a constant and touches no memory.
        let page_size = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            size if size > 0 => size as usize,
            _ => return Err(io::Error::last_os_error()),
        };
        let offset = libc::off_t::from(KVM_COALESCED_MMIO_PAGE_OFFSET) * page_size as libc::off_t;
        // SAFETY: a new shared mapping of one page of the vCPU descriptor at the offset KVM
        // documents for the ring; the result is checked.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                offset,
            )
        };
        if page == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let page = NonNull::new(page.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self {
            page,
            page_size,
            capacity: ((page_size - HEADER) / ENTRY) as u32,
            reader: Mutex::new(()),
        })
    }

    fn first(&self) -> &AtomicU32 {
        // SAFETY: `first` is the page's first u32, aligned, and lives as long as `self`.
        unsafe { AtomicU32::from_ptr(self.page.as_ptr().cast::<u32>()) }
    }

    fn last(&self) -> &AtomicU32 {
        // SAFETY: `last` is the page's second u32, aligned, and lives as long as `self`.
        unsafe { AtomicU32::from_ptr(self.page.as_ptr().add(4).cast::<u32>()) }
    }

    /// True when KVM has queued writes nobody has handled yet.
    pub fn is_pending(&self) -> bool {
        self.first().load(Ordering::Relaxed) != self.last().load(Ordering::Acquire)
    }

    /// Hands every queued write, oldest first, to the device on `io` (port writes) or `mmio`.
    /// Returns how many there were.
    pub fn drain(&self, io: &Bus, mmio: &Bus) -> usize {
        if !self.is_pending() {
            return 0;
        }
        let _reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let mut handled = 0;
        loop {
            let first = self.first().load(Ordering::Relaxed);
            // Acquire: the entry KVM wrote before publishing `last` is visible.
            let last = self.last().load(Ordering::Acquire);
            if first == last || first >= self.capacity || last >= self.capacity {
                // Empty, or indices KVM would never write: stop rather than read past the page.
                return handled;
            }
            let offset = HEADER + first as usize * ENTRY;
            debug_assert!(offset + ENTRY <= self.page_size);
            // SAFETY: `first < capacity`, so the entry lies inside the page; KVM finished
            // writing it before it advanced `last` past it.
            let entry = unsafe { std::ptr::read_volatile(self.page.as_ptr().add(offset).cast::<kvm_coalesced_mmio>()) };
            let len = (entry.len as usize).min(entry.data.len());
            // SAFETY: both union members are plain u32s.
            let pio = unsafe { entry.__bindgen_anon_1.pio } != 0;
            let bus = if pio { io } else { mmio };
            bus.write(entry.phys_addr, &entry.data[..len]);
            // Release: KVM may reuse the slot only after we are done reading it.
            self.first().store((first + 1) % self.capacity, Ordering::Release);
            handled += 1;
        }
    }
}

impl Drop for CoalescedRing {
    fn drop(&mut self) {
        // SAFETY: we mapped exactly this page in `map` and nothing uses it after Drop.
        unsafe { libc::munmap(self.page.as_ptr().cast(), self.page_size) };
    }
}
