//! hearth-probe: a freestanding x86-64 guest that exercises hearth-vmm's virtual hardware.
//!
//! The VMM boots it like a Linux `vmlinux` (64-bit long mode, identity-mapped first 4 GiB,
//! `RSI` = zero page). It prints one `probe: ...` line per fact on COM1, initialises the
//! virtio-mmio devices named on the command line and runs the ops of `probe.ops=`.
//! KVM's instruction emulator runs it on the development machines, so the code avoids SSE,
//! `core::fmt` and anything that could panic through formatting code.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

/// Prints one line: `probe: ` followed by each part (see [`uart::Out`]) and `\n`.
macro_rules! say {
    ($($part:expr),* $(,)?) => {{
        #[allow(unused_imports)]
        use $crate::uart::Out as _;
        $crate::uart::write(b"probe: ");
        $( ($part).out(); )*
        $crate::uart::write(b"\n");
    }};
}

mod acpi;
mod block;
mod cmdline;
mod command;
mod dhcp;
mod io;
mod net;
mod rt;
mod tcp;
mod time;
mod uart;
mod virtio;

use core::cell::UnsafeCell;

use cmdline::BootParams;
use uart::{Dec, HexBytes};
use virtio::{Device, ID_BLOCK, ID_NET, ID_RNG, MAX_DEVICES};

/// Ops run when the command line has no `probe.ops=`.
const DEFAULT_OPS: &[u8] = b"timer,poweroff";

/// A static shared between the single-threaded probe and its devices (through DMA).
/// Rust code reaches it only through the raw pointer of [`Global::get`].
pub struct Global<T>(UnsafeCell<T>);

// SAFETY: the probe runs on one vCPU with interrupts off: no two Rust contexts ever touch a
// `Global` at the same time.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    /// Wraps the initial value.
    pub const fn new(value: T) -> Self {
        Self(UnsafeCell::new(value))
    }

    /// Pointer to the value.
    pub const fn get(&self) -> *mut T {
        self.0.get()
    }

    /// Guest-physical address of the value (the first 4 GiB are identity mapped).
    pub fn addr(&self) -> u64 {
        self.get() as u64
    }
}

/// Rust entry point, called by `_start` (see `rt.rs`) with the zero-page address.
extern "C" fn probe_main(zero_page: usize) -> ! {
    say!("hearth probe guest v1");
    // SAFETY: the boot protocol hands the zero page's address in RSI, which `_start` passes here.
    let boot = unsafe { BootParams::new(zero_page) };
    let line = boot.cmdline();
    say!("cmdline ", line);

    let mut devices = [Device::EMPTY; MAX_DEVICES];
    virtio::discover(line, boot.acpi_rsdp_addr(), &mut devices);

    let ops = cmdline::value(line, b"probe.ops").unwrap_or(DEFAULT_OPS);
    for op in ops.split(|&b| b == b',').filter(|op| !op.is_empty()) {
        run(op, line, &boot, &mut devices);
    }
    io::poweroff()
}

/// The first initialised device of type `id`.
fn first(devices: &mut [Device], id: u32) -> Option<&mut Device> {
    devices.iter_mut().find(|d| d.ready && d.id == id)
}

/// The `n`-th (from 0) initialised block device, as numbered by `probe: block <k>`.
fn nth_block(devices: &mut [Device], n: u64) -> Option<&mut Device> {
    let n = usize::try_from(n).ok()?;
    devices.iter_mut().filter(|d| d.ready && d.id == ID_BLOCK).nth(n)
}

/// Runs one op of `probe.ops=`; ops that end the VM do not return.
fn run(op: &[u8], line: &[u8], boot: &BootParams, devices: &mut [Device]) {
    if let Some(arg) = op.strip_prefix(b"blk-seqwrite=") {
        // `<MiB>` or `<MiB>@<start MiB>`.
        let (size, start) = match cmdline::split_once(arg, b'@') {
            Some((size, start)) => (cmdline::parse_u64(size), cmdline::parse_u64(start)),
            None => (cmdline::parse_u64(arg), Some(0)),
        };
        match (size, start, first(devices, ID_BLOCK)) {
            (Some(mib), Some(start), Some(disk)) => {
                let scratch = boot
                    .is_ram(block::SCRATCH_ADDR, block::SCRATCH_LEN)
                    .then_some(block::SCRATCH_ADDR);
                block::seqwrite(disk, mib, start, scratch)
            }
            (None, _, _) | (_, None, _) => say!("unknown op ", op),
            (_, _, None) => say!("seqwrite failed no block device"),
        }
        return;
    }
    if let Some(arg) = op.strip_prefix(b"blk-pattern=") {
        // `<MiB>` or `<MiB>@<start MiB>`, each optionally followed by `#<seed>`.
        let (arg, seed) = match cmdline::split_once(arg, b'#') {
            Some((arg, seed)) => (arg, cmdline::parse_u64(seed)),
            None => (arg, Some(0)),
        };
        let (size, start) = match cmdline::split_once(arg, b'@') {
            Some((size, start)) => (cmdline::parse_u64(size), cmdline::parse_u64(start)),
            None => (cmdline::parse_u64(arg), Some(0)),
        };
        match (size, start, seed, first(devices, ID_BLOCK)) {
            (Some(mib), Some(start), Some(seed), Some(disk)) => {
                let scratch = block::PATTERN_SEGMENTS as u64 * block::SCRATCH_LEN;
                if boot.is_ram(block::SCRATCH_ADDR, scratch) {
                    block::pattern(disk, mib, start, seed)
                } else {
                    say!("blk-pattern failed no scratch RAM")
                }
            }
            (_, _, _, None) => say!("blk-pattern failed no block device"),
            _ => say!("unknown op ", op),
        }
        return;
    }
    if let Some(index) = op.strip_prefix(b"blk-counter@") {
        match cmdline::parse_u64(index) {
            Some(n) => match nth_block(devices, n) {
                Some(disk) => block::counter(disk),
                None => say!("blk-counter failed no block device ", Dec(n)),
            },
            None => say!("unknown op ", op),
        }
        return;
    }
    if let Some(count) = op.strip_prefix(b"blk-iops=") {
        match (cmdline::parse_u64(count), first(devices, ID_BLOCK)) {
            (Some(n), Some(disk)) => block::iops(disk, n),
            (None, _) => say!("unknown op ", op),
            (_, None) => say!("blk-iops failed no block device"),
        }
        return;
    }
    match op {
        b"timer" => {
            io::boot_timer();
            say!("boot timer written");
        }
        b"cpus" => acpi::cpus(boot.acpi_rsdp_addr()),
        b"blk-counter" => match first(devices, ID_BLOCK) {
            Some(disk) => block::counter(disk),
            None => say!("blk-counter failed no block device"),
        },
        b"blk-ro-check" => match first(devices, ID_BLOCK) {
            Some(disk) => block::ro_check(disk),
            None => say!("blk-ro-check failed no block device"),
        },
        b"blk-badreq" => match first(devices, ID_BLOCK) {
            Some(disk) => block::bad_requests(disk),
            None => say!("blk-badreq failed no block device"),
        },
        b"rng" => match first(devices, ID_RNG) {
            Some(rng) => entropy(rng),
            None => say!("rng failed no rng device"),
        },
        // With `probe.ip=` a static address, else DHCP.
        b"net-echo" => match (net::static_config(line), first(devices, ID_NET)) {
            (Ok(config), Some(nic)) => net::echo(nic, config),
            (Err(bad), _) => say!("net-echo bad address ", bad),
            (_, None) => say!("net-echo failed no net device"),
        },
        b"await-button" => {
            say!("awaiting button");
            while !io::power_button_pressed() {}
            say!("button pressed");
        }
        b"wait" => loop {
            if io::power_button_pressed() {
                say!("power button");
                io::poweroff();
            }
        },
        // Console output without end (numbered lines), until the power button.
        b"flood" => {
            let mut n: u64 = 0;
            while !io::power_button_pressed() {
                say!("flood ", uart::Dec(n), " the quick brown fox jumps over the lazy dog");
                n = n.wrapping_add(1);
            }
            say!("power button");
            io::poweroff();
        }
        b"hang" => {
            say!("hanging");
            io::hang()
        }
        b"poweroff" => io::poweroff(),
        b"reboot" => io::reboot(),
        b"acpi-reset" => io::acpi_reset(),
        b"triple-fault" => {
            say!("triple fault");
            io::triple_fault()
        }
        _ => say!("unknown op ", op),
    }
}

/// The `rng` op: 16 bytes from the entropy device, printed as hex.
fn entropy(rng: &mut Device) {
    static POOL: Global<[u8; 16]> = Global::new([0; 16]);
    let mut got = 0u32;
    for _ in 0..16 {
        if got >= 16 {
            break;
        }
        let buf = virtio::Buf::writable(POOL.addr() + u64::from(got), 16 - got);
        match rng.transfer(0, &[buf], virtio::WAIT_POLLS) {
            Some(len) => got += len.min(16 - got),
            None => return,
        }
    }
    // SAFETY: the device has returned every buffer, so nothing writes `POOL` any more.
    let bytes = unsafe { &*POOL.get() };
    if got < 16 {
        say!("rng short read ", Dec(u64::from(got)));
    } else {
        say!("rng ", HexBytes(bytes));
    }
}
