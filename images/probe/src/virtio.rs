//! virtio-mmio (version 2) transport: discovery from `virtio_mmio.device=` arguments or
//! the DSDT, Linux-style initialisation, and polled split virtqueues in static memory.

use core::ptr::{addr_of, addr_of_mut, null_mut};
use core::sync::atomic::{compiler_fence, Ordering};

use crate::io::Mmio;
use crate::uart::{Dec, Hex, Out};
use crate::{acpi, cmdline};
use crate::{block, net, Global};

// Register offsets (virtio 1.x, 4.2.2).
const MAGIC: usize = 0x00;
const VERSION: usize = 0x04;
const DEVICE_ID: usize = 0x08;
const DEVICE_FEATURES: usize = 0x10;
const DEVICE_FEATURES_SEL: usize = 0x14;
const DRIVER_FEATURES: usize = 0x20;
const DRIVER_FEATURES_SEL: usize = 0x24;
const QUEUE_SEL: usize = 0x30;
const QUEUE_NUM_MAX: usize = 0x34;
const QUEUE_NUM: usize = 0x38;
const QUEUE_READY: usize = 0x44;
const QUEUE_NOTIFY: usize = 0x50;
const INTERRUPT_STATUS: usize = 0x60;
const INTERRUPT_ACK: usize = 0x64;
const STATUS: usize = 0x70;
const QUEUE_DESC: usize = 0x80;
const QUEUE_DRIVER: usize = 0x90;
const QUEUE_DEVICE: usize = 0xa0;
const CONFIG_GENERATION: usize = 0xfc;
const CONFIG: usize = 0x100;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"

// Device status bits.
const ACKNOWLEDGE: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;
const FAILED: u32 = 0x80;

/// Feature bits the probe may accept.
pub const F_VERSION_1: u64 = 1 << 32;
pub const BLK_F_SEG_MAX: u64 = 1 << 2;
pub const BLK_F_RO: u64 = 1 << 5;
pub const BLK_F_BLK_SIZE: u64 = 1 << 6;
pub const BLK_F_FLUSH: u64 = 1 << 9;
pub const NET_F_MAC: u64 = 1 << 5;

/// Device IDs.
pub const ID_NET: u32 = 1;
pub const ID_BLOCK: u32 = 2;
pub const ID_RNG: u32 = 4;

/// At most this many `virtio_mmio.device=` arguments are handled.
pub const MAX_DEVICES: usize = 16;
/// Queues use at most this many entries (a power of two).
pub const QUEUE_MAX: usize = 64;
/// Rings for all queues of all devices (net needs two).
const RING_POOL: usize = 24;
/// Poll rounds (each a VM exit reading `InterruptStatus`) before a request times out.
pub const WAIT_POLLS: u32 = 1_000_000;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// The only MMIO window the VMM uses for devices (the gap below 4 GiB).
const MMIO_GAP: core::ops::Range<u64> = 0xc000_0000..0x1_0000_0000;

#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C)]
struct Avail {
    flags: u16,
    idx: u16,
    ring: [u16; QUEUE_MAX],
    used_event: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UsedElem {
    id: u32,
    len: u32,
}

#[repr(C)]
struct Used {
    flags: u16,
    idx: u16,
    ring: [UsedElem; QUEUE_MAX],
    avail_event: u16,
}

/// One split virtqueue: descriptor table (16-byte aligned), driver and device areas.
#[repr(C, align(16))]
struct Ring {
    desc: [Desc; QUEUE_MAX],
    avail: Avail,
    used: Used,
}

impl Ring {
    const ZERO: Ring = Ring {
        desc: [Desc {
            addr: 0,
            len: 0,
            flags: 0,
            next: 0,
        }; QUEUE_MAX],
        avail: Avail {
            flags: 0,
            idx: 0,
            ring: [0; QUEUE_MAX],
            used_event: 0,
        },
        used: Used {
            flags: 0,
            idx: 0,
            ring: [UsedElem { id: 0, len: 0 }; QUEUE_MAX],
            avail_event: 0,
        },
    };
}

static RINGS: Global<[Ring; RING_POOL]> = Global::new([Ring::ZERO; RING_POOL]);
static RINGS_USED: Global<usize> = Global::new(0);

/// Hands out the next unused ring of the pool.
fn alloc_ring() -> Option<*mut Ring> {
    // SAFETY: single-threaded; only this function touches the counter.
    let used = unsafe { &mut *RINGS_USED.get() };
    if *used >= RING_POOL {
        return None;
    }
    // SAFETY: `*used < RING_POOL`, so the pointer stays inside `RINGS`.
    let ring = unsafe { RINGS.get().cast::<Ring>().add(*used) };
    *used += 1;
    Some(ring)
}

/// Driver-side state of one virtqueue.
#[derive(Clone, Copy)]
struct Queue {
    ring: *mut Ring,
    /// Queue size - 1 (the size is a power of two).
    mask: u16,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
}

impl Queue {
    const NONE: Queue = Queue {
        ring: null_mut(),
        mask: 0,
        next_desc: 0,
        avail_idx: 0,
        last_used: 0,
    };

    /// Ring slot of a free-running index (in bounds by construction).
    fn slot(&self, index: u16) -> usize {
        usize::from(index & self.mask) & (QUEUE_MAX - 1)
    }
}

/// One buffer of a descriptor chain.
#[derive(Clone, Copy)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

impl Buf {
    pub const NONE: Buf = Buf {
        addr: 0,
        len: 0,
        writable: false,
    };

    /// A buffer the device reads.
    pub fn readable(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            writable: false,
        }
    }

    /// A buffer the device writes.
    pub fn writable(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            writable: true,
        }
    }
}

/// A virtio-mmio device named on the command line.
#[derive(Clone, Copy)]
pub struct Device {
    /// Position among the `virtio_mmio.device=` arguments.
    pub index: usize,
    regs: Mmio,
    /// virtio device ID (0 = empty slot).
    pub id: u32,
    /// Initialised and DRIVER_OK.
    pub ready: bool,
    /// Negotiated features.
    pub features: u64,
    queues: [Queue; 2],
    /// Block: capacity in 512-byte sectors.
    pub capacity: u64,
    /// Block: maximum data segments per request (0 = no limit given).
    pub seg_max: u32,
    /// Net: MAC address.
    pub mac: [u8; 6],
}

impl Device {
    pub const EMPTY: Device = Device {
        index: 0,
        // SAFETY: never accessed: `ready` is false and `probe` replaces the whole value.
        regs: unsafe { Mmio::new(0) },
        id: 0,
        ready: false,
        features: 0,
        queues: [Queue::NONE; 2],
        capacity: 0,
        seg_max: 0,
        mac: [0; 6],
    };

    /// Whether feature `bit` (a mask) was negotiated.
    pub fn has(&self, feature: u64) -> bool {
        self.features & feature != 0
    }

    fn queue(&mut self, qi: usize) -> Option<&mut Queue> {
        self.queues.get_mut(qi).filter(|q| !q.ring.is_null())
    }

    /// Number of entries of queue `qi` (0 if not set up).
    pub fn queue_size(&self, qi: usize) -> u16 {
        match self.queues.get(qi) {
            Some(q) if !q.ring.is_null() => q.mask + 1,
            _ => 0,
        }
    }

    /// Writes descriptor `index` of queue `qi` as a single-buffer chain.
    pub fn set_desc(&mut self, qi: usize, index: u16, buf: Buf) {
        if let Some(q) = self.queue(qi) {
            write_desc(q, index, buf, None);
        }
    }

    /// Makes the chain starting at descriptor `head` available, optionally notifying.
    pub fn post(&mut self, qi: usize, head: u16, notify: bool) {
        let Some(q) = self.queue(qi) else { return };
        let slot = q.slot(q.avail_idx);
        q.avail_idx = q.avail_idx.wrapping_add(1);
        let (ring, idx) = (q.ring, q.avail_idx);
        // SAFETY: `ring` is this queue's ring; the slot is in bounds; the device reads the
        // entry only after it sees the new index, which is written after a fence.
        unsafe {
            addr_of_mut!((*ring).avail.ring[slot]).write_volatile(head);
            compiler_fence(Ordering::SeqCst);
            addr_of_mut!((*ring).avail.idx).write_volatile(idx);
        }
        compiler_fence(Ordering::SeqCst);
        if notify {
            self.notify(qi);
        }
    }

    /// Tells the device that queue `qi` has new buffers.
    pub fn notify(&self, qi: usize) {
        self.regs.write32(QUEUE_NOTIFY, qi as u32);
    }

    /// Next used element `(descriptor id, written length)` of queue `qi`, if any.
    pub fn pop_used(&mut self, qi: usize) -> Option<(u32, u32)> {
        let q = self.queue(qi)?;
        let ring = q.ring;
        // SAFETY: `ring` is this queue's ring; the device updates `used` concurrently, so
        // every access is volatile, and the element is read after the index.
        let idx = unsafe { addr_of!((*ring).used.idx).read_volatile() };
        if idx == q.last_used {
            return None;
        }
        compiler_fence(Ordering::SeqCst);
        let slot = q.slot(q.last_used);
        // SAFETY: as above; the slot is in bounds.
        let elem = unsafe { addr_of!((*ring).used.ring[slot]).read_volatile() };
        q.last_used = q.last_used.wrapping_add(1);
        Some((elem.id, elem.len))
    }

    /// Queues a descriptor chain (fresh descriptors, round robin) and notifies.
    /// Returns the head descriptor, or `None` if the chain does not fit the queue.
    pub fn submit(&mut self, qi: usize, bufs: &[Buf]) -> Option<u16> {
        let q = self.queue(qi)?;
        if bufs.is_empty() || bufs.len() > usize::from(q.mask) + 1 {
            return None;
        }
        let head = q.next_desc & q.mask;
        let last = bufs.len() - 1;
        for (i, &buf) in bufs.iter().enumerate() {
            let index = q.next_desc & q.mask;
            q.next_desc = q.next_desc.wrapping_add(1);
            let next = (i < last).then_some(q.next_desc & q.mask);
            write_desc(q, index, buf, next);
        }
        self.post(qi, head, true);
        Some(head)
    }

    /// Polls until the device returns the chain `head` of queue `qi`; its written length,
    /// or `None` after `polls` rounds. Other returned chains (late answers) are dropped.
    pub fn wait(&mut self, qi: usize, head: u16, polls: u32) -> Option<u32> {
        for _ in 0..polls {
            while let Some((id, len)) = self.pop_used(qi) {
                if id == u32::from(head) {
                    return Some(len);
                }
            }
            let pending = self.regs.read32(INTERRUPT_STATUS);
            if pending != 0 {
                self.regs.write32(INTERRUPT_ACK, pending);
            }
        }
        None
    }

    /// `submit` then `wait`; prints `probe: virtio <n> timeout` when the wait expires.
    pub fn transfer(&mut self, qi: usize, bufs: &[Buf], polls: u32) -> Option<u32> {
        let result = self.submit(qi, bufs).and_then(|head| self.wait(qi, head, polls));
        if result.is_none() {
            say!("virtio ", Dec(self.index as u64), " timeout");
        }
        result
    }

    /// Reads the config space with `read`, retrying while the generation changes.
    fn read_config<T>(&self, read: impl Fn(Mmio) -> T) -> T {
        let mut value = read(self.regs);
        for _ in 0..4 {
            let before = self.regs.read32(CONFIG_GENERATION);
            value = read(self.regs);
            if self.regs.read32(CONFIG_GENERATION) == before {
                break;
            }
        }
        value
    }

    /// Linux's `virtio_mmio` probe plus driver probe: reset, ACKNOWLEDGE, DRIVER, feature
    /// negotiation, FEATURES_OK, queues, config, DRIVER_OK. Prints what it finds.
    fn probe(index: usize, addr: u64, irq: u64) -> Device {
        let mut dev = Device { index, ..Device::EMPTY };
        let n = Dec(index as u64);
        if !MMIO_GAP.contains(&addr) || !addr.is_multiple_of(4096) {
            say!("virtio ", n, " bad address 0x", Hex(addr));
            return dev;
        }
        // SAFETY: a page-aligned address in the MMIO gap, where the VMM puts only devices.
        dev.regs = unsafe { Mmio::new(addr as usize) };
        let magic = dev.regs.read32(MAGIC);
        if magic != MAGIC_VALUE {
            say!("virtio ", n, " bad magic 0x", Hex(u64::from(magic)));
            return dev;
        }
        let version = dev.regs.read32(VERSION);
        if version != 2 {
            say!("virtio ", n, " bad version ", Dec(u64::from(version)));
            return dev;
        }
        dev.id = dev.regs.read32(DEVICE_ID);
        say!(
            "virtio ",
            n,
            " addr=0x",
            Hex(addr),
            " irq=",
            Dec(irq),
            " type=",
            TypeName(dev.id)
        );
        let (wanted, queues) = match dev.id {
            ID_BLOCK => (BLK_F_SEG_MAX | BLK_F_RO | BLK_F_BLK_SIZE | BLK_F_FLUSH, 1),
            ID_NET => (NET_F_MAC, 2),
            ID_RNG => (0, 1),
            _ => return dev,
        };

        // Reset, and wait for the device to show it (as Linux does).
        dev.regs.write32(STATUS, 0);
        for _ in 0..1000 {
            if dev.regs.read32(STATUS) == 0 {
                break;
            }
        }
        let mut status = ACKNOWLEDGE;
        dev.regs.write32(STATUS, status);
        status |= DRIVER;
        dev.regs.write32(STATUS, status);

        dev.regs.write32(DEVICE_FEATURES_SEL, 0);
        let low = dev.regs.read32(DEVICE_FEATURES);
        dev.regs.write32(DEVICE_FEATURES_SEL, 1);
        let high = dev.regs.read32(DEVICE_FEATURES);
        let offered = u64::from(low) | u64::from(high) << 32;
        dev.features = offered & (wanted | F_VERSION_1);
        dev.regs.write32(DRIVER_FEATURES_SEL, 0);
        dev.regs.write32(DRIVER_FEATURES, dev.features as u32);
        dev.regs.write32(DRIVER_FEATURES_SEL, 1);
        dev.regs.write32(DRIVER_FEATURES, (dev.features >> 32) as u32);
        status |= FEATURES_OK;
        dev.regs.write32(STATUS, status);
        if dev.regs.read32(STATUS) & FEATURES_OK == 0 || !dev.has(F_VERSION_1) {
            say!("virtio ", n, " features refused");
            dev.regs.write32(STATUS, status | FAILED);
            return dev;
        }

        for qi in 0..queues {
            if dev.setup_queue(qi).is_none() {
                say!("virtio ", n, " queue ", Dec(qi as u64), " unavailable");
                dev.regs.write32(STATUS, status | FAILED);
                return dev;
            }
        }

        match dev.id {
            ID_BLOCK => {
                dev.capacity = dev.read_config(|r| u64::from(r.read32(CONFIG)) | u64::from(r.read32(CONFIG + 4)) << 32);
                if dev.has(BLK_F_SEG_MAX) {
                    dev.seg_max = dev.read_config(|r| r.read32(CONFIG + 12));
                }
            }
            ID_NET => {
                dev.mac = dev.read_config(|r| {
                    let mut mac = [0u8; 6];
                    for (i, b) in mac.iter_mut().enumerate() {
                        *b = r.read8(CONFIG + i);
                    }
                    mac
                });
            }
            _ => {}
        }

        status |= DRIVER_OK;
        dev.regs.write32(STATUS, status);
        dev.ready = true;
        dev
    }

    /// Sets up queue `qi` with a ring from the pool: size, ring addresses, QueueReady.
    fn setup_queue(&mut self, qi: usize) -> Option<()> {
        let regs = self.regs;
        regs.write32(QUEUE_SEL, qi as u32);
        if regs.read32(QUEUE_READY) != 0 {
            return None;
        }
        let max = regs.read32(QUEUE_NUM_MAX);
        let mut size = QUEUE_MAX as u32;
        while size > max {
            size /= 2;
        }
        if size == 0 {
            return None;
        }
        let ring = alloc_ring()?;
        // SAFETY: a ring of the pool that no device uses yet: start with empty rings and
        // take the addresses of its three areas.
        let areas = unsafe {
            addr_of_mut!((*ring).avail.flags).write_volatile(0);
            addr_of_mut!((*ring).avail.idx).write_volatile(0);
            addr_of_mut!((*ring).used.flags).write_volatile(0);
            addr_of_mut!((*ring).used.idx).write_volatile(0);
            [
                (QUEUE_DESC, addr_of!((*ring).desc) as u64),
                (QUEUE_DRIVER, addr_of!((*ring).avail) as u64),
                (QUEUE_DEVICE, addr_of!((*ring).used) as u64),
            ]
        };
        regs.write32(QUEUE_NUM, size);
        for (reg, addr) in areas {
            regs.write32(reg, addr as u32);
            regs.write32(reg + 4, (addr >> 32) as u32);
        }
        compiler_fence(Ordering::SeqCst);
        regs.write32(QUEUE_READY, 1);
        let queue = self.queues.get_mut(qi)?;
        *queue = Queue {
            ring,
            mask: (size - 1) as u16,
            ..Queue::NONE
        };
        Some(())
    }
}

/// Writes one descriptor of `q`.
fn write_desc(q: &Queue, index: u16, buf: Buf, next: Option<u16>) {
    let mut flags = if buf.writable { DESC_F_WRITE } else { 0 };
    if next.is_some() {
        flags |= DESC_F_NEXT;
    }
    let desc = Desc {
        addr: buf.addr,
        len: buf.len,
        flags,
        next: next.unwrap_or(0),
    };
    let slot = q.slot(index);
    let ring = q.ring;
    // SAFETY: `ring` is the queue's ring and the slot is in bounds; the descriptor is not
    // available to the device until `post` publishes its chain.
    unsafe { addr_of_mut!((*ring).desc[slot]).write_volatile(desc) }
}

/// `block`, `net`, `rng`, `none` or `unknown(<id>)`.
struct TypeName(u32);

impl Out for TypeName {
    fn out(&self) {
        match self.0 {
            0 => "none".out(),
            ID_NET => "net".out(),
            ID_BLOCK => "block".out(),
            ID_RNG => "rng".out(),
            id => {
                "unknown(".out();
                Dec(u64::from(id)).out();
                ")".out();
            }
        }
    }
}

/// Parses `<size>@<addr>:<irq>[:<id>]` into `(addr, irq)`.
fn parse_device(spec: &[u8]) -> Option<(u64, u64)> {
    let (size, rest) = cmdline::split_once(spec, b'@')?;
    cmdline::parse_size(size).filter(|&s| s > 0)?;
    let (addr, irq) = match cmdline::split_once(rest, b':') {
        Some((addr, irq)) => (addr, cmdline::split_once(irq, b':').map_or(irq, |(irq, _)| irq)),
        None => return None,
    };
    Some((cmdline::parse_u64(addr)?, cmdline::parse_u64(irq)?))
}

/// Finds, prints and initialises every virtio-mmio device: those of `virtio_mmio.device=`
/// arguments in command-line order (hearth-vmm gives them with `acpi=off`), else the
/// DSDT's `LNRO0005` devices in table order (prints `probe: virtio acpi <n> devices`).
pub fn discover(line: &[u8], rsdp_hint: u64, devices: &mut [Device; MAX_DEVICES]) {
    let mut count = 0;
    let (mut blocks, mut nets) = (0, 0);
    let mut found = |count: usize, slot: &mut Device, addr_irq: Option<(u64, u64)>, spec: &[u8]| {
        match addr_irq {
            Some((addr, irq)) => *slot = Device::probe(count, addr, irq),
            None => say!("virtio ", Dec(count as u64), " bad argument ", spec),
        }
        if slot.ready && slot.id == ID_BLOCK {
            block::announce(slot, blocks);
            blocks += 1;
        }
        if slot.ready && slot.id == ID_NET {
            net::announce(slot, nets);
            nets += 1;
        }
    };
    for arg in cmdline::args(line) {
        let Some(spec) = arg.strip_prefix(b"virtio_mmio.device=") else {
            continue;
        };
        let Some(slot) = devices.get_mut(count) else {
            say!("virtio too many devices");
            break;
        };
        found(count, slot, parse_device(spec), spec);
        count += 1;
    }
    if count > 0 {
        return;
    }
    let mut acpi_devices = [acpi::MmioDevice { addr: 0, irq: 0 }; MAX_DEVICES];
    let n = acpi::virtio_devices(rsdp_hint, &mut acpi_devices);
    say!("virtio acpi ", Dec(n as u64), " devices");
    let listed = acpi_devices.get(..n).unwrap_or(&[]);
    for (index, (slot, dev)) in devices.iter_mut().zip(listed).enumerate() {
        found(index, slot, Some((dev.addr, dev.irq)), b"");
    }
}
