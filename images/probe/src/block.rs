//! virtio-blk requests (IN, OUT, FLUSH, GET_ID) and the block ops of `probe.ops=`.

use core::iter::once;
use core::ptr::{addr_of, addr_of_mut};

use crate::uart::{Dec, Status, Text};
use crate::virtio::{Buf, Device, BLK_F_FLUSH, BLK_F_RO, WAIT_POLLS};
use crate::Global;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

const SECTOR: u32 = 512;
const HEADER_LEN: u32 = 16;
const ID_LEN: u32 = 20;
/// Bulk writes use data segments of this size, all pointing at `BULK`.
const SEGMENT: u32 = 64 * 1024;
/// At most this many data segments per request.
const MAX_SEGMENTS: usize = 16;
/// Bulk writes use 1 MiB segments from this scratch area of guest RAM (16 MiB request),
/// when the e820 map says it is RAM: the probe never uses that memory otherwise, and what
/// it holds is what gets written.
pub const SCRATCH_ADDR: u64 = 16 << 20;
/// Size of one scratch segment.
pub const SCRATCH_LEN: u64 = 1 << 20;
/// Poll rounds granted to a request the device may rightly drop.
const BAD_ADDR_POLLS: u32 = 50_000;
/// A guest-physical address far outside any guest's RAM.
const BAD_ADDR: u64 = 0xf000_0000_0000;
/// Marks sector 0 as holding the boot counter (a little-endian u64 follows).
const COUNTER_MAGIC: &[u8; 8] = b"HEARTHBC";

/// `virtio_blk_outhdr` (16 bytes, device-readable) followed by the status byte.
#[repr(C)]
struct Request {
    kind: u32,
    reserved: u32,
    sector: u64,
    status: u8,
}

/// Slot 0 serves ordinary requests; slot 1 the one that may never be answered, so a late
/// answer cannot land in a later request's status byte.
static REQUESTS: Global<[Request; 2]> = Global::new(
    [const {
        Request {
            kind: 0,
            reserved: 0,
            sector: 0,
            status: 0,
        }
    }; 2],
);
static SECTOR_BUF: Global<[u8; SECTOR as usize]> = Global::new([0; SECTOR as usize]);
static CHECK_BUF: Global<[u8; SECTOR as usize]> = Global::new([0; SECTOR as usize]);
static ID_BUF: Global<[u8; ID_LEN as usize]> = Global::new([0; ID_LEN as usize]);
/// Whatever it holds is what bulk writes store (zeros): filling it would only cost time.
// Packet/bulk data: never read before written, so _start need not clear it.
#[link_section = ".noclear"]
static BULK: Global<[u8; SEGMENT as usize]> = Global::new([0; SEGMENT as usize]);

/// Sends one request on queue 0 and waits for it. The status byte (0xff if the device
/// wrote none), or `None` on timeout.
fn request(disk: &mut Device, slot: usize, kind: u32, sector: u64, data: &[Buf], polls: u32) -> Option<u8> {
    // SAFETY: `slot & 1` indexes the two-element `REQUESTS`; no request using that slot is
    // in flight any more (or, for slot 1, its answer no longer matters).
    let (header, status) = unsafe {
        let req = REQUESTS.get().cast::<Request>().add(slot & 1);
        req.write_volatile(Request {
            kind,
            reserved: 0,
            sector,
            status: 0xff,
        });
        (req, addr_of_mut!((*req).status))
    };
    let mut chain = [Buf::NONE; MAX_SEGMENTS + 2];
    let parts = once(Buf::readable(header as u64, HEADER_LEN))
        .chain(data.iter().copied().take(MAX_SEGMENTS))
        .chain(once(Buf::writable(status as u64, 1)));
    let mut len = 0;
    for (entry, part) in chain.iter_mut().zip(parts) {
        *entry = part;
        len += 1;
    }
    disk.transfer(0, chain.get(..len)?, polls)?;
    // SAFETY: the device has returned the chain, so the status byte is settled.
    Some(unsafe { addr_of!(*status).read_volatile() })
}

/// Reads the disk ID (GET_ID) and prints `probe: block <k> sectors=.. ro=.. id=..`.
pub fn announce(disk: &mut Device, k: usize) {
    // SAFETY: no request is in flight: the device does not touch `ID_BUF` now.
    unsafe { ID_BUF.get().write_volatile([0; ID_LEN as usize]) };
    let id_buf = Buf::writable(ID_BUF.addr(), ID_LEN);
    let status = request(disk, 0, T_GET_ID, 0, &[id_buf], WAIT_POLLS);
    let id: &[u8] = match status {
        // SAFETY: the request is complete: the device no longer writes the buffer.
        Some(0) => unsafe { &*ID_BUF.get() },
        _ => &[],
    };
    let ro = u64::from(disk.has(BLK_F_RO));
    say!(
        "block ",
        Dec(k as u64),
        " sectors=",
        Dec(disk.capacity),
        " ro=",
        Dec(ro),
        " id=",
        Text(id)
    );
}

/// Reads sector 0 into `buf`.
fn read_sector0(disk: &mut Device, buf: &Global<[u8; SECTOR as usize]>) -> Option<u8> {
    request(disk, 0, T_IN, 0, &[Buf::writable(buf.addr(), SECTOR)], WAIT_POLLS)
}

/// Writes sector 0 from `SECTOR_BUF`.
fn write_sector0(disk: &mut Device) -> Option<u8> {
    request(
        disk,
        0,
        T_OUT,
        0,
        &[Buf::readable(SECTOR_BUF.addr(), SECTOR)],
        WAIT_POLLS,
    )
}

/// The `blk-counter` op: increments the boot counter kept in sector 0.
pub fn counter(disk: &mut Device) {
    let status = read_sector0(disk, &SECTOR_BUF);
    if status != Some(0) {
        return say!("blk-counter failed read status=", Status(status));
    }
    let count = {
        // SAFETY: no request is in flight: the probe alone uses `SECTOR_BUF` in this scope.
        let sector = unsafe { &mut *SECTOR_BUF.get() };
        let mut word = [0u8; 8];
        word.copy_from_slice(&sector[8..16]);
        let old = if sector[..8] == COUNTER_MAGIC[..] {
            u64::from_le_bytes(word)
        } else {
            0
        };
        let count = old.wrapping_add(1);
        sector[..8].copy_from_slice(COUNTER_MAGIC);
        sector[8..16].copy_from_slice(&count.to_le_bytes());
        count
    };
    let status = write_sector0(disk);
    if status != Some(0) {
        return say!("blk-counter failed write status=", Status(status));
    }
    if disk.has(BLK_F_FLUSH) {
        let status = request(disk, 0, T_FLUSH, 0, &[], WAIT_POLLS);
        if status != Some(0) {
            return say!("blk-counter failed flush status=", Status(status));
        }
    }
    let status = read_sector0(disk, &CHECK_BUF);
    if status != Some(0) {
        return say!("blk-counter failed readback status=", Status(status));
    }
    // SAFETY: every request is complete: both buffers are only read here.
    let same = unsafe { *SECTOR_BUF.get() == *CHECK_BUF.get() };
    if !same {
        return say!("blk-counter failed readback mismatch");
    }
    say!("boot-count ", Dec(count));
}

/// The `blk-ro-check` op: writes sector 0 back with its current content.
pub fn ro_check(disk: &mut Device) {
    read_sector0(disk, &SECTOR_BUF);
    let status = write_sector0(disk);
    say!("write status=", Status(status));
}

/// The `blk-seqwrite=<MiB>[@<MiB>]` op: writes `mib` MiB from MiB `start` in large
/// requests, then flushes. Each request has up to 16 data segments of 1 MiB, all pointing at
/// the scratch area (when the guest has RAM there), else of 64 KiB pointing at `BULK`.
pub fn seqwrite(disk: &mut Device, mib: u64, start: u64, scratch: Option<u64>) {
    let seg_limit = match disk.seg_max {
        0 => MAX_SEGMENTS,
        n => n as usize,
    };
    let queue_room = usize::from(disk.queue_size(0)).saturating_sub(2);
    let per_request = seg_limit.min(MAX_SEGMENTS).min(queue_room).max(1);
    let segment = match scratch {
        Some(addr) => Buf::readable(addr, SCRATCH_LEN as u32),
        None => Buf::readable(BULK.addr(), SEGMENT),
    };
    let segment_len = u64::from(segment.len);
    let segments = [segment; MAX_SEGMENTS];
    let mut remaining = mib.saturating_mul(1 << 20);
    let mut sector = start.saturating_mul((1 << 20) / u64::from(SECTOR));
    let mut status = Some(0);
    while remaining > 0 && status == Some(0) {
        let count = usize::try_from(remaining.div_ceil(segment_len))
            .map_or(per_request, |n| n.min(per_request))
            .max(1);
        status = request(disk, 0, T_OUT, sector, segments.get(..count).unwrap_or(&[]), WAIT_POLLS);
        let bytes = count as u64 * segment_len;
        remaining = remaining.saturating_sub(bytes);
        sector += bytes / u64::from(SECTOR);
    }
    if status == Some(0) && disk.has(BLK_F_FLUSH) {
        status = request(disk, 0, T_FLUSH, 0, &[], WAIT_POLLS);
    }
    say!("seqwrite ", Dec(mib), " MiB status=", Status(status));
}

/// Data segments (of 1 MiB, each its own part of the scratch area) per `blk-pattern` request.
pub const PATTERN_SEGMENTS: usize = 16;
/// First bytes of every sector `blk-pattern` writes.
const PATTERN_MAGIC: &[u8; 8] = b"HEARTHPT";

/// The `blk-pattern=<MiB>[@<MiB>][#<seed>]` op: like `blk-seqwrite`, but every sector
/// written is distinct: `HEARTHPT`, then its sector number and `seed` as little-endian
/// u64s, zeros after that. Requests of up to 16 MiB come from 16 different 1 MiB parts of
/// the scratch area (the caller checks it is RAM); then FLUSH.
pub fn pattern(disk: &mut Device, mib: u64, start: u64, seed: u64) {
    let seg_limit = match disk.seg_max {
        0 => MAX_SEGMENTS,
        n => n as usize,
    };
    let queue_room = usize::from(disk.queue_size(0)).saturating_sub(2);
    let per_request = seg_limit.min(PATTERN_SEGMENTS).min(queue_room).max(1);
    let sectors_per_mib = (1 << 20) / u64::from(SECTOR);
    let magic = u64::from_le_bytes(*PATTERN_MAGIC);
    let mut segments = [Buf::NONE; PATTERN_SEGMENTS];
    for (i, segment) in segments.iter_mut().enumerate() {
        *segment = Buf::readable(SCRATCH_ADDR + i as u64 * SCRATCH_LEN, SCRATCH_LEN as u32);
    }
    let mut done = 0u64;
    let mut status = Some(0);
    while done < mib && status == Some(0) {
        let count = usize::try_from(mib - done).map_or(per_request, |n| n.min(per_request));
        let first_sector = start.saturating_add(done).saturating_mul(sectors_per_mib);
        for k in 0..count as u64 * sectors_per_mib {
            let words = (SCRATCH_ADDR + k * u64::from(SECTOR)) as *mut u64;
            // SAFETY: the scratch area is RAM the probe uses for nothing else (checked by the
            // caller), identity mapped, and no request using it is in flight.
            unsafe {
                words.write_volatile(magic);
                words.add(1).write_volatile(first_sector.wrapping_add(k));
                words.add(2).write_volatile(seed);
            }
        }
        let data = segments.get(..count).unwrap_or(&[]);
        status = request(disk, 0, T_OUT, first_sector, data, WAIT_POLLS);
        done += count as u64;
    }
    if status == Some(0) && disk.has(BLK_F_FLUSH) {
        status = request(disk, 0, T_FLUSH, 0, &[], WAIT_POLLS);
    }
    say!("pattern ", Dec(mib), " MiB status=", Status(status));
}

/// Size of one `blk-iops` read.
const IOPS_READ: u32 = 4096;
/// `blk-iops` prints a progress line after every this many reads.
const IOPS_MARK_EVERY: u64 = 100;
/// Where `blk-iops` reads land (not `BULK`, whose zeros bulk writes store).
#[link_section = ".noclear"]
static IOPS_BUF: Global<[u8; IOPS_READ as usize]> = Global::new([0; IOPS_READ as usize]);

/// The `blk-iops=<N>` op: `n` 4 KiB reads, one after the other, each waiting for the
/// previous one, at consecutive 4 KiB offsets from sector 0 (wrapping at the end of the
/// disk). The marker lines around them (and one after every 100 reads) let the host time
/// the run, or its steady state after an initial burst.
pub fn iops(disk: &mut Device, n: u64) {
    let per_read = u64::from(IOPS_READ / SECTOR);
    let span = disk.capacity / per_read * per_read;
    if span == 0 {
        return say!("blk-iops failed disk smaller than 4 KiB");
    }
    let buf = Buf::writable(IOPS_BUF.addr(), IOPS_READ);
    say!("blk-iops start");
    let mut sector = 0u64;
    let mut done = 0u64;
    let mut status = Some(0);
    while done < n {
        status = request(disk, 0, T_IN, sector, &[buf], WAIT_POLLS);
        if status != Some(0) {
            break;
        }
        done += 1;
        if done.is_multiple_of(IOPS_MARK_EVERY) && done < n {
            say!("blk-iops at ", Dec(done));
        }
        sector += per_read;
        if sector >= span {
            sector = 0;
        }
    }
    say!("blk-iops done ", Dec(done), " status=", Status(status));
}

/// The `blk-badreq` op: a read past the end of the disk, then a read into an address
/// outside guest RAM. The device must answer IOERR or drop the request; the probe must not
/// hang either way.
pub fn bad_requests(disk: &mut Device) {
    let past_end = Buf::writable(SECTOR_BUF.addr(), SECTOR);
    let status = request(disk, 0, T_IN, disk.capacity, &[past_end], WAIT_POLLS);
    say!("badreq range status=", Status(status));
    let outside = Buf::writable(BAD_ADDR, SECTOR);
    let status = request(disk, 1, T_IN, 0, &[outside], BAD_ADDR_POLLS);
    say!("badreq addr status=", Status(status));
}
