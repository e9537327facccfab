//! virtio-blk over a raw disk image: IN, OUT, FLUSH and GET_ID, with optional rate limiting.
//!
//! Every request is validated before the disk is touched: all descriptors must lie in guest
//! RAM, readable descriptors must precede writable ones, the status byte is the last byte of
//! the last (device-writable) descriptor, data lengths are whole sectors, and the sector range
//! must fit the disk. Anything else is answered with `VIRTIO_BLK_S_IOERR` (or, if no status
//! byte can be written, the chain is returned with length 0) and counted in `errors`.
//!
//! Optionally the image is encrypted at rest ([`crate::crypt`], AES-256-XTS per 512-byte
//! sector): reads are decrypted and writes encrypted through a bounce buffer, so the file
//! only ever holds ciphertext. Every write marks its chunks in a [`DirtyBitmap`], which a
//! [`BlockHandle`] reads, persists and resets for incremental snapshots.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use event_manager::EventSet;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile,
};

use super::{
    read_config_bytes, require_version_1, ActivateError, EventSource, QueueContext, VirtioDevice,
    INTERRUPT_USED_BUFFER, TYPE_BLOCK, VIRTIO_F_VERSION_1,
};
use crate::crypt::XtsCipher;
use crate::dirty::{self, CopyMethod, DirtyBitmap, FreezeMode, Loaded};
use crate::rate_limiter::{RateLimitConfig, RateLimiter};
use crate::GuestMemoryMmap;

/// Bytes per sector: the unit of `capacity` and of request offsets.
pub const SECTOR_SIZE: u64 = 512;
/// Maximum (and advertised) size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the GET_ID answer.
pub const ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Token of the rate limiter's timer in [`VirtioDevice::event_sources`].
pub const RATE_LIMITER_TOKEN: u32 = 0;

/// `seg_max`: data segments per request (a chain of the queue's size minus header and
/// status).
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// `struct virtio_blk_outhdr`: type (u32), reserved (u32), sector (u64).
const REQUEST_HEADER_LEN: u64 = 16;
/// Descriptors kept per chain; longer chains (only possible with indirect tables, which we
/// do not offer) are refused.
const MAX_CHAIN_DESCRIPTORS: usize = QUEUE_SIZE as usize;
/// `struct virtio_blk_config` up to and including `blk_size`.
const CONFIG_LEN: usize = 24;
const CONFIG_SEG_MAX_OFFSET: usize = 12;
const CONFIG_BLK_SIZE_OFFSET: usize = 20;
/// Size of the bounce buffer of encrypted disks: requests are processed in pieces of this
/// (small in unit tests, so that their requests take several pieces).
const BOUNCE_BYTES: usize = if cfg!(test) { 2 * SECTOR_SIZE as usize } else { 1 << 20 };

/// Why a block device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// Opening the disk image failed.
    #[error("opening disk image {}", path.display())]
    Open {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Finding the size of the disk image failed.
    #[error("reading the size of disk image {}", path.display())]
    Size {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The serial is longer than virtio-blk allows.
    #[error("disk id {id:?} is longer than {ID_LEN} bytes")]
    IdTooLong {
        /// The rejected id.
        id: String,
    },
    /// Creating the rate limiter's timer failed.
    #[error("creating the rate-limiter timer for disk image {}", path.display())]
    RateLimiter {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Duplicating the image's descriptor for the [`BlockHandle`] failed.
    #[error("duplicating the descriptor of disk image {}", path.display())]
    Dup {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Everything about a block device but its image path.
#[derive(Debug, Default)]
pub struct BlockOptions {
    /// Refuse writes (`VIRTIO_BLK_F_RO`); the image is opened read-only.
    pub read_only: bool,
    /// GET_ID answer, at most 20 bytes.
    pub id: Option<String>,
    /// I/O limits.
    pub rate_limit: Option<RateLimitConfig>,
    /// Encryption at rest: the image holds AES-256-XTS ciphertext.
    pub cipher: Option<XtsCipher>,
    /// Dirty-bitmap file: loaded when the device is created (see [`BlockHandle`]).
    pub dirty_bitmap: Option<PathBuf>,
}

/// Where the dirty bitmap came from when the device was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirtyStart {
    /// No bitmap file configured: every chunk starts dirty.
    NoFile,
    /// Loaded from the bitmap file.
    Loaded,
    /// The bitmap file did not exist: every chunk starts dirty.
    Missing,
    /// The bitmap file was unreadable, corrupt or for another disk size (why): every chunk
    /// starts dirty.
    Invalid(String),
}

impl DirtyStart {
    /// `none`, `loaded`, `missing` or `invalid`.
    pub fn name(&self) -> &'static str {
        match self {
            DirtyStart::NoFile => "none",
            DirtyStart::Loaded => "loaded",
            DirtyStart::Missing => "missing",
            DirtyStart::Invalid(_) => "invalid",
        }
    }
}

/// The state a [`Block`] shares with its [`BlockHandle`]s.
#[derive(Debug)]
struct BlockShared {
    /// The image (a duplicate descriptor: for fdatasync and copies).
    file: File,
    /// Image size in bytes when opened.
    size: u64,
    dirty: DirtyBitmap,
    bitmap_file: Option<PathBuf>,
    start: DirtyStart,
    /// Held by every write and by snapshots, so a snapshot sees no write in progress.
    io: Mutex<IoState>,
}

#[derive(Debug, Default)]
struct IoState {
    /// Set by [`BlockHandle::finish`]: the bitmap is saved, later writes fail.
    finished: bool,
}

impl BlockShared {
    fn lock(&self) -> MutexGuard<'_, IoState> {
        self.io.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The VMM's side of a block device: the dirty bitmap, point-in-time copies, and the
/// bitmap file's life cycle. Cheap to clone; usable from any thread.
///
/// The bitmap file holds the chunks written since the last snapshot point, and is only
/// true while no VMM runs the disk: [`BlockHandle::claim_bitmap_file`] removes it when the
/// VM starts, [`BlockHandle::finish`] writes it back when the VMM ends cleanly. After a
/// crash there is no file, and the next VMM starts with every chunk dirty.
#[derive(Debug, Clone)]
pub struct BlockHandle(Arc<BlockShared>);

/// What [`BlockHandle::snapshot`] did.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Size of the image (and of the copy) in bytes.
    pub size: u64,
    /// The chunks written since the previous snapshot point, as `[first, count]` runs.
    pub dirty: Vec<[u64; 2]>,
    /// Reflink or copy of the dirty chunks.
    pub method: CopyMethod,
    /// How long the device was held, in milliseconds.
    pub millis: u64,
}

impl BlockHandle {
    /// Image size in bytes.
    pub fn disk_bytes(&self) -> u64 {
        self.0.size
    }

    /// The chunks written since the last snapshot point, as `[first_chunk, count]` runs.
    pub fn dirty_runs(&self) -> Vec<[u64; 2]> {
        let _io = self.0.lock();
        self.0.dirty.runs()
    }

    /// Number of chunks of the disk.
    pub fn chunks(&self) -> u64 {
        self.0.dirty.chunks()
    }

    /// Number of dirty chunks.
    pub fn dirty_chunks(&self) -> u64 {
        self.0.dirty.dirty_chunks()
    }

    /// Where the bitmap came from.
    pub fn dirty_start(&self) -> &DirtyStart {
        &self.0.start
    }

    /// The configured bitmap file.
    pub fn bitmap_file(&self) -> Option<&Path> {
        self.0.bitmap_file.as_deref()
    }

    /// Removes the bitmap file (durably), so that a VMM that dies without
    /// [`BlockHandle::finish`] leaves none: call it before the guest runs.
    pub fn claim_bitmap_file(&self) -> io::Result<()> {
        match &self.0.bitmap_file {
            Some(path) => dirty::remove_durably(path),
            None => Ok(()),
        }
    }

    /// A point-in-time copy of the image at `out` (replaced if it exists), with no write
    /// in progress or started meanwhile: fdatasync of the image, then [`dirty::freeze`]
    /// (reflink, else the dirty chunks copied into a sparse file); on success the bitmap is
    /// reset (a new snapshot point). The copy holds the file's bytes (ciphertext for an
    /// encrypted disk).
    pub fn snapshot(&self, out: &Path, mode: FreezeMode) -> io::Result<Snapshot> {
        let started = Instant::now();
        let io = self.0.lock();
        if io.finished {
            return Err(io::Error::other("the disk is closed: the VMM is exiting"));
        }
        self.0.file.sync_data()?;
        let method = dirty::freeze(&self.0.file, self.0.size, &self.0.dirty, out, mode)?;
        let dirty = self.0.dirty.runs();
        self.0.dirty.clear();
        drop(io);
        Ok(Snapshot {
            size: self.0.size,
            dirty,
            method,
            millis: started.elapsed().as_millis() as u64,
        })
    }

    /// Ends the device's writes: later OUT requests fail, and the bitmap is saved to the
    /// bitmap file (if one is configured). Call it once the VM has stopped; the second call
    /// does nothing.
    pub fn finish(&self) -> io::Result<()> {
        let mut io = self.0.lock();
        if io.finished {
            return Ok(());
        }
        io.finished = true;
        match &self.0.bitmap_file {
            Some(path) => self.0.dirty.save(path),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Default)]
struct BlockCounters {
    read_ops: u64,
    write_ops: u64,
    flush_ops: u64,
    read_bytes: u64,
    write_bytes: u64,
    errors: u64,
    throttled_events: u64,
}

/// What the parser made of one descriptor chain.
enum Parsed {
    /// There is no device-writable status byte in RAM: return the chain with length 0.
    NoStatus,
    /// Malformed: answer IOERR without touching the disk.
    Invalid { status: GuestAddress },
    /// Well formed. Readable descriptors are `descriptors[..readable]`, writable ones the
    /// rest. For IN and OUT, bytes `offset..offset + data_len` were checked to fit the disk;
    /// other requests have `offset` 0.
    Valid {
        status: GuestAddress,
        request_type: u32,
        offset: u64,
        readable: usize,
        data_len: u64,
    },
}

/// A virtio block device backed by a raw image file (or a host block device).
pub struct Block {
    disk: File,
    read_only: bool,
    /// Encryption at rest, with its bounce buffer.
    cipher: Option<XtsCipher>,
    bounce: Vec<u8>,
    shared: Arc<BlockShared>,
    capacity_sectors: u64,
    id: [u8; ID_LEN],
    config: [u8; CONFIG_LEN],
    rate_limiter: RateLimiter,
    /// The chain being processed; reused so steady-state processing does not allocate.
    descriptors: Vec<Descriptor>,
    /// Bytes written since writeback was last started (write-behind, see `WRITE_BEHIND_BYTES`).
    unsynced_bytes: u64,
    counters: BlockCounters,
}

/// After this many written bytes the device asks the host kernel to start writing the
/// file's dirty pages back (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, asynchronous), so a
/// later FLUSH (`fdatasync`) finds most data already on disk instead of all of it.
/// Durability is unchanged: only FLUSH promises it.
const WRITE_BEHIND_BYTES: u64 = 8 << 20;

impl Block {
    /// Opens `path` (`O_RDONLY` if `read_only`, else `O_RDWR`). The capacity is the file size
    /// in whole sectors; a trailing partial sector is never accessed. `id` (at most 20
    /// bytes) answers GET_ID, zero padded.
    pub fn new(
        path: impl AsRef<Path>,
        read_only: bool,
        id: Option<String>,
        rate_limit: Option<RateLimitConfig>,
    ) -> Result<Block, BlockError> {
        let options = BlockOptions {
            read_only,
            id,
            rate_limit,
            ..BlockOptions::default()
        };
        Block::with_options(path, options)
    }

    /// Opens `path` as [`Block::new`] does, with encryption and a dirty-bitmap file if
    /// `options` ask for them. The bitmap is loaded from the file when it exists and matches
    /// the image size; otherwise every chunk starts dirty.
    pub fn with_options(path: impl AsRef<Path>, options: BlockOptions) -> Result<Block, BlockError> {
        let BlockOptions {
            read_only,
            id,
            rate_limit,
            cipher,
            dirty_bitmap,
        } = options;
        let path = path.as_ref();
        let mut id_bytes = [0u8; ID_LEN];
        if let Some(id) = id {
            if id.len() > ID_LEN {
                return Err(BlockError::IdTooLong { id });
            }
            id_bytes[..id.len()].copy_from_slice(id.as_bytes());
        }
        let mut disk = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_owned(),
                source,
            })?;
        // Seeking to the end also sizes host block devices, whose metadata length is 0.
        let size = disk.seek(SeekFrom::End(0)).map_err(|source| BlockError::Size {
            path: path.to_owned(),
            source,
        })?;
        let rate_limiter = RateLimiter::from_config(rate_limit.as_ref()).map_err(|source| BlockError::RateLimiter {
            path: path.to_owned(),
            source,
        })?;

        let (dirty, start) = match &dirty_bitmap {
            None => (DirtyBitmap::all_dirty(size), DirtyStart::NoFile),
            Some(file) => match DirtyBitmap::load(file, size) {
                Loaded::File(bitmap) => (bitmap, DirtyStart::Loaded),
                Loaded::Missing => (DirtyBitmap::all_dirty(size), DirtyStart::Missing),
                Loaded::Invalid(why) => (DirtyBitmap::all_dirty(size), DirtyStart::Invalid(why)),
            },
        };
        let shared = Arc::new(BlockShared {
            file: disk.try_clone().map_err(|source| BlockError::Dup {
                path: path.to_owned(),
                source,
            })?,
            size,
            dirty,
            bitmap_file: dirty_bitmap,
            start,
            io: Mutex::new(IoState::default()),
        });
        let bounce = if cipher.is_some() {
            vec![0u8; BOUNCE_BYTES]
        } else {
            Vec::new()
        };

        let capacity_sectors = size / SECTOR_SIZE;
        let mut config = [0u8; CONFIG_LEN];
        config[..8].copy_from_slice(&capacity_sectors.to_le_bytes());
        config[CONFIG_SEG_MAX_OFFSET..][..4].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[CONFIG_BLK_SIZE_OFFSET..][..4].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        Ok(Block {
            disk,
            read_only,
            cipher,
            bounce,
            shared,
            capacity_sectors,
            id: id_bytes,
            config,
            rate_limiter,
            descriptors: Vec::with_capacity(MAX_CHAIN_DESCRIPTORS),
            unsynced_bytes: 0,
            counters: BlockCounters::default(),
        })
    }

    /// Disk size in 512-byte sectors (the `capacity` config field).
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// The handle through which the VMM reads and resets the dirty bitmap and takes
    /// snapshots.
    pub fn handle(&self) -> BlockHandle {
        BlockHandle(self.shared.clone())
    }

    /// Serves available requests until the queue is empty or the rate limiter refuses one
    /// (the refused chain stays available and is retried from the limiter's timer event).
    fn process_requests(&mut self, ctx: &mut QueueContext<'_>) {
        if self.rate_limiter.is_blocked() {
            return;
        }
        let mem = ctx.mem;
        let Some(queue) = ctx.queues.first_mut() else {
            return;
        };
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let parsed = self.parse(mem, chain);
            let data_len = match parsed {
                Parsed::Valid { data_len, .. } => data_len,
                _ => 0,
            };
            if !self.rate_limiter.consume(1, data_len) {
                queue.go_to_previous_position();
                self.counters.throttled_events += 1;
                break;
            }
            let used_len = self.execute(mem, parsed);
            match queue.add_used(mem, head, used_len) {
                Ok(()) => used_any = true,
                // A head index outside the queue: nothing can be returned.
                Err(_) => self.counters.errors += 1,
            }
        }
        if used_any {
            ctx.interrupt.trigger(INTERRUPT_USED_BUFFER);
        }
    }

    /// Collects and validates a chain into `self.descriptors`.
    fn parse<I: Iterator<Item = Descriptor>>(&mut self, mem: &GuestMemoryMmap, chain: I) -> Parsed {
        self.descriptors.clear();
        let mut last = None;
        let mut too_long = false;
        for descriptor in chain {
            if self.descriptors.len() < MAX_CHAIN_DESCRIPTORS {
                self.descriptors.push(descriptor);
            } else {
                too_long = true;
            }
            last = Some(descriptor);
        }

        // The status byte: the last byte of the last descriptor, which must be writable.
        let Some(last) = last.filter(|d| d.is_write_only() && d.len() > 0) else {
            return Parsed::NoStatus;
        };
        let Some(status) = last.addr().checked_add(u64::from(last.len()) - 1) else {
            return Parsed::NoStatus;
        };
        if !mem.check_range(status, 1) {
            return Parsed::NoStatus;
        }
        let invalid = Parsed::Invalid { status };
        if too_long {
            return invalid;
        }

        let readable = self.descriptors.iter().take_while(|d| !d.is_write_only()).count();
        let (readable_descriptors, writable_descriptors) = self.descriptors.split_at(readable);
        if writable_descriptors.iter().any(|d| !d.is_write_only())
            || !self
                .descriptors
                .iter()
                .all(|d| mem.check_range(d.addr(), d.len() as usize))
        {
            return invalid;
        }
        let readable_len = total_len(readable_descriptors);
        // Device-writable bytes before the status byte.
        let writable_len = total_len(writable_descriptors) - 1;

        let mut header = [0u8; REQUEST_HEADER_LEN as usize];
        if readable_len < REQUEST_HEADER_LEN || copy_from_guest(mem, readable_descriptors, 0, &mut header).is_err() {
            return invalid;
        }
        let request_type = u32::from_le_bytes(header[..4].try_into().unwrap());
        let sector = u64::from_le_bytes(header[8..].try_into().unwrap());

        let data_len = match request_type {
            // IN: header only readable; data in the writable part.
            VIRTIO_BLK_T_IN if readable_len == REQUEST_HEADER_LEN => writable_len,
            // OUT: data in the readable part; only the status is writable.
            VIRTIO_BLK_T_OUT if writable_len == 0 => readable_len - REQUEST_HEADER_LEN,
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => return invalid,
            VIRTIO_BLK_T_GET_ID => writable_len.min(ID_LEN as u64),
            _ => 0,
        };
        let offset = match request_type {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => match self.disk_offset(sector, data_len) {
                Some(offset) => offset,
                None => return invalid,
            },
            // FLUSH and GET_ID ignore the sector field, whatever the guest put there.
            _ => 0,
        };
        Parsed::Valid {
            status,
            request_type,
            offset,
            readable,
            data_len,
        }
    }

    /// The byte offset of `sector` if `data_len` is whole sectors and the range fits the disk
    /// (with no overflow on the way).
    fn disk_offset(&self, sector: u64, data_len: u64) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(data_len)?;
        (data_len % SECTOR_SIZE == 0 && end <= self.capacity_sectors * SECTOR_SIZE).then_some(offset)
    }

    /// Runs a parsed request, writes its status byte and returns the used length.
    fn execute(&mut self, mem: &GuestMemoryMmap, parsed: Parsed) -> u32 {
        let (status, request_type, offset, readable, data_len) = match parsed {
            Parsed::NoStatus => {
                self.counters.errors += 1;
                return 0;
            }
            Parsed::Invalid { status } => {
                self.counters.errors += 1;
                return write_status(mem, status, VIRTIO_BLK_S_IOERR);
            }
            Parsed::Valid {
                status,
                request_type,
                offset,
                readable,
                data_len,
            } => (status, request_type, offset, readable, data_len),
        };
        let (readable_descriptors, writable_descriptors) = self.descriptors.split_at(readable);
        let (result, written) = match request_type {
            VIRTIO_BLK_T_IN => {
                let result = match &self.cipher {
                    Some(cipher) => read_encrypted(
                        mem,
                        &self.disk,
                        cipher,
                        &mut self.bounce,
                        writable_descriptors,
                        offset,
                        data_len,
                    ),
                    None => {
                        let mut disk = DiskAt {
                            disk: &self.disk,
                            offset,
                        };
                        for_each_range(writable_descriptors, 0, data_len, |addr, len| {
                            mem.read_exact_volatile_from(addr, &mut disk, len)
                                .map_err(io::Error::other)
                        })
                    }
                };
                if result.is_ok() {
                    self.counters.read_ops += 1;
                    self.counters.read_bytes += data_len;
                }
                (result, data_len)
            }
            VIRTIO_BLK_T_OUT if self.read_only => (Err(io::Error::from(io::ErrorKind::PermissionDenied)), 0),
            VIRTIO_BLK_T_OUT => {
                let io = self.shared.lock();
                let result = if io.finished {
                    Err(io::Error::other("disk closed"))
                } else {
                    // Marked first: a write that fails half way may still have changed the chunk.
                    self.shared.dirty.mark(offset, data_len);
                    match &self.cipher {
                        Some(cipher) => write_encrypted(
                            mem,
                            &self.disk,
                            cipher,
                            &mut self.bounce,
                            readable_descriptors,
                            offset,
                            data_len,
                        ),
                        None => {
                            let mut disk = DiskAt {
                                disk: &self.disk,
                                offset,
                            };
                            for_each_range(readable_descriptors, REQUEST_HEADER_LEN, data_len, |addr, len| {
                                mem.write_all_volatile_to(addr, &mut disk, len)
                                    .map_err(io::Error::other)
                            })
                        }
                    }
                };
                drop(io);
                if result.is_ok() {
                    self.counters.write_ops += 1;
                    self.counters.write_bytes += data_len;
                    self.unsynced_bytes += data_len;
                    if self.unsynced_bytes >= WRITE_BEHIND_BYTES {
                        self.start_writeback();
                    }
                }
                (result, 0)
            }
            VIRTIO_BLK_T_FLUSH => {
                self.unsynced_bytes = 0;
                let result = self.disk.sync_data();
                if result.is_ok() {
                    self.counters.flush_ops += 1;
                }
                (result, 0)
            }
            VIRTIO_BLK_T_GET_ID => {
                let mut id = &self.id[..data_len as usize];
                let result = for_each_range(writable_descriptors, 0, data_len, |addr, len| {
                    let (chunk, rest) = id.split_at(len);
                    id = rest;
                    mem.write_slice(chunk, addr).map_err(io::Error::other)
                });
                (result, data_len)
            }
            _ => {
                self.counters.errors += 1;
                return write_status(mem, status, VIRTIO_BLK_S_UNSUPP);
            }
        };
        match result {
            // `written` is below the 4 GiB chain limit virtio-queue enforces.
            Ok(()) => write_status(mem, status, VIRTIO_BLK_S_OK).saturating_add(written as u32),
            Err(_) => {
                self.counters.errors += 1;
                write_status(mem, status, VIRTIO_BLK_S_IOERR)
            }
        }
    }
}

impl Block {
    /// Starts (does not wait for) writeback of the whole file's dirty pages.
    fn start_writeback(&mut self) {
        self.unsynced_bytes = 0;
        // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
        // A failure (not supported on this file) leaves writeback to the kernel's own policy.
        let _ = unsafe { libc::sync_file_range(self.disk.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    }
}

/// Sum of descriptor lengths (at most 2^32 per chain, so no overflow in u64).
fn total_len(descriptors: &[Descriptor]) -> u64 {
    descriptors.iter().map(|d| u64::from(d.len())).sum()
}

/// Calls `f(address, length)` for the pieces of `descriptors` that hold bytes
/// `skip..skip + len` of their concatenation. The descriptors were checked to lie in RAM.
fn for_each_range(
    descriptors: &[Descriptor],
    mut skip: u64,
    mut len: u64,
    mut f: impl FnMut(GuestAddress, usize) -> io::Result<()>,
) -> io::Result<()> {
    for descriptor in descriptors {
        if len == 0 {
            break;
        }
        let descriptor_len = u64::from(descriptor.len());
        if skip >= descriptor_len {
            skip -= descriptor_len;
            continue;
        }
        let piece = (descriptor_len - skip).min(len);
        let addr = descriptor
            .addr()
            .checked_add(skip)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        // `piece` fits in a descriptor length (u32).
        f(addr, piece as usize)?;
        skip = 0;
        len -= piece;
    }
    Ok(())
}

/// IN on an encrypted disk: the file's bytes `offset..offset + len` are read into the bounce
/// buffer piece by piece, decrypted, and copied into the device-writable `descriptors`.
fn read_encrypted(
    mem: &GuestMemoryMmap,
    disk: &File,
    cipher: &XtsCipher,
    bounce: &mut [u8],
    descriptors: &[Descriptor],
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        // `offset` and `len` are whole sectors, and so is the bounce buffer.
        let piece = &mut bounce[..(len - done).min(BOUNCE_BYTES as u64) as usize];
        disk.read_exact_at(piece, offset + done)?;
        cipher.decrypt_sectors(piece, (offset + done) / SECTOR_SIZE);
        copy_to_guest(mem, descriptors, done, piece)?;
        done += piece.len() as u64;
    }
    Ok(())
}

/// OUT on an encrypted disk: the data (after the header in the device-readable
/// `descriptors`) is copied into the bounce buffer piece by piece, encrypted there, and
/// written at `offset`. Plaintext never reaches the file.
fn write_encrypted(
    mem: &GuestMemoryMmap,
    disk: &File,
    cipher: &XtsCipher,
    bounce: &mut [u8],
    descriptors: &[Descriptor],
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        let piece = &mut bounce[..(len - done).min(BOUNCE_BYTES as u64) as usize];
        copy_from_guest(mem, descriptors, REQUEST_HEADER_LEN + done, piece)?;
        cipher.encrypt_sectors(piece, (offset + done) / SECTOR_SIZE);
        disk.write_all_at(piece, offset + done)?;
        done += piece.len() as u64;
    }
    Ok(())
}

/// Writes `buf` into `descriptors`, starting `skip` bytes into them.
fn copy_to_guest(mem: &GuestMemoryMmap, descriptors: &[Descriptor], skip: u64, buf: &[u8]) -> io::Result<()> {
    let mut done = 0;
    for_each_range(descriptors, skip, buf.len() as u64, |addr, len| {
        mem.write_slice(&buf[done..done + len], addr)
            .map_err(io::Error::other)?;
        done += len;
        Ok(())
    })
}

/// Reads `buf.len()` bytes starting `skip` bytes into `descriptors`.
fn copy_from_guest(mem: &GuestMemoryMmap, descriptors: &[Descriptor], skip: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    for_each_range(descriptors, skip, buf.len() as u64, |addr, len| {
        mem.read_slice(&mut buf[done..done + len], addr)
            .map_err(io::Error::other)?;
        done += len;
        Ok(())
    })
}

/// Writes the status byte; returns the number of bytes it adds to the used length.
fn write_status(mem: &GuestMemoryMmap, status: GuestAddress, value: u32) -> u32 {
    // The address was checked to be in RAM; a failure here can only mean it was not.
    u32::from(mem.write_obj(value as u8, status).is_ok())
}

/// The disk seen as a stream starting at byte `offset`, read and written with
/// `pread`/`pwrite` straight between the file and guest memory.
struct DiskAt<'a> {
    disk: &'a File,
    offset: u64,
}

impl DiskAt<'_> {
    /// Runs `io(fd, pointer, length, offset)` until `len` bytes are done or it returns 0.
    fn transfer(
        &mut self,
        ptr: *mut u8,
        len: usize,
        io: impl Fn(libc::c_int, *mut libc::c_void, usize, libc::off_t) -> isize,
    ) -> Result<usize, VolatileMemoryError> {
        let mut done = 0;
        while done < len {
            let offset = self
                .offset
                .checked_add(done as u64)
                .and_then(|offset| libc::off_t::try_from(offset).ok())
                .ok_or_else(|| VolatileMemoryError::IOError(io::Error::from_raw_os_error(libc::EOVERFLOW)))?;
            // `done < len`, so the pointer stays inside the caller's buffer.
            let result = io(self.disk.as_raw_fd(), ptr.wrapping_add(done).cast(), len - done, offset);
            match result {
                0 => break,
                n if n > 0 => done += n as usize,
                _ => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(VolatileMemoryError::IOError(error));
                    }
                }
            }
        }
        self.offset += done as u64;
        Ok(done)
    }
}

impl ReadVolatile for DiskAt<'_> {
    fn read_volatile<B: BitmapSlice>(&mut self, buf: &mut VolatileSlice<B>) -> Result<usize, VolatileMemoryError> {
        let guard = buf.ptr_guard_mut();
        let read = self.transfer(guard.as_ptr(), buf.len(), |fd, ptr, len, offset| {
            // SAFETY: `ptr..ptr + len` lies within `buf`, a live mapping of guest memory that
            // the guard keeps valid; pread writes at most `len` bytes there.
            unsafe { libc::pread(fd, ptr, len, offset) }
        });
        // On error part of the buffer may have been written: mark it all.
        buf.bitmap().mark_dirty(0, *read.as_ref().unwrap_or(&buf.len()));
        read
    }
}

impl WriteVolatile for DiskAt<'_> {
    fn write_volatile<B: BitmapSlice>(&mut self, buf: &VolatileSlice<B>) -> Result<usize, VolatileMemoryError> {
        let guard = buf.ptr_guard();
        self.transfer(guard.as_ptr().cast_mut(), buf.len(), |fd, ptr, len, offset| {
            // SAFETY: `ptr..ptr + len` lies within `buf`, a live mapping of guest memory that
            // the guard keeps valid; pwrite only reads from it.
            unsafe { libc::pwrite(fd, ptr, len, offset) }
        })
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        let mut features =
            VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX | 1 << VIRTIO_BLK_F_BLK_SIZE;
        if self.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, acked_features: u64) -> Result<(), ActivateError> {
        require_version_1(acked_features)
    }

    fn reset(&mut self) {
        // Requests complete synchronously: nothing is in flight.
    }

    fn process_queue(&mut self, queue_index: usize, ctx: &mut QueueContext<'_>) {
        if queue_index == 0 {
            self.process_requests(ctx);
        }
    }

    fn event_sources(&self) -> Vec<EventSource> {
        self.rate_limiter
            .timer_fd()
            .map(|fd| EventSource {
                fd,
                events: EventSet::IN,
                token: RATE_LIMITER_TOKEN,
            })
            .into_iter()
            .collect()
    }

    fn handle_event(&mut self, token: u32, _events: EventSet, ctx: Option<&mut QueueContext<'_>>) {
        if token == RATE_LIMITER_TOKEN {
            self.rate_limiter.event_handler();
            if let Some(ctx) = ctx {
                self.process_requests(ctx);
            }
        }
    }

    fn counters(&self) -> serde_json::Value {
        let c = &self.counters;
        serde_json::json!({
            "read_ops": c.read_ops,
            "write_ops": c.write_ops,
            "flush_ops": c.flush_ops,
            "read_bytes": c.read_bytes,
            "write_bytes": c.write_bytes,
            "errors": c.errors,
            "throttled_events": c.throttled_events,
            "dirty_chunks": self.shared.dirty.dirty_chunks(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::Queue;

    use super::*;
    use crate::virtio::testing::{guest_memory, interrupt, Buf, DriverQueue, TempFile, RAM_SIZE};
    use crate::virtio::Interrupt;

    const HEADER: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x3_0000;
    const STATUS_UNSET: u8 = 0xff;

    /// A disk whose sector `n` is filled with byte `n`, plus `tail` extra bytes.
    fn disk(sectors: u8, tail: usize) -> TempFile {
        let mut contents: Vec<u8> = (0..sectors).flat_map(|n| [n; SECTOR_SIZE as usize]).collect();
        contents.extend(std::iter::repeat_n(0xee, tail));
        TempFile::with_contents(&contents)
    }

    struct Harness<'a> {
        mem: &'a GuestMemoryMmap,
        driver: DriverQueue<'a>,
        queues: Vec<Queue>,
        interrupt: Interrupt,
        block: Block,
    }

    impl<'a> Harness<'a> {
        fn new(mem: &'a GuestMemoryMmap, block: Block) -> Self {
            Self::with_queue_size(mem, block, 16)
        }

        fn with_queue_size(mem: &'a GuestMemoryMmap, block: Block, size: u16) -> Self {
            let driver = DriverQueue::new(mem, size);
            let queues = vec![driver.queue()];
            Harness {
                mem,
                driver,
                queues,
                interrupt: interrupt(),
                block,
            }
        }

        fn header(&self, request_type: u32, sector: u64) {
            let mut header = [0u8; 16];
            header[..4].copy_from_slice(&request_type.to_le_bytes());
            header[8..].copy_from_slice(&sector.to_le_bytes());
            self.mem.write_slice(&header, GuestAddress(HEADER)).unwrap();
            self.mem.write_obj(STATUS_UNSET, GuestAddress(STATUS)).unwrap();
        }

        fn run(&mut self) {
            let mut ctx = QueueContext {
                mem: self.mem,
                queues: &mut self.queues,
                interrupt: &self.interrupt,
            };
            self.block.process_queue(0, &mut ctx);
        }

        fn timer_event(&mut self) {
            let mut ctx = QueueContext {
                mem: self.mem,
                queues: &mut self.queues,
                interrupt: &self.interrupt,
            };
            self.block
                .handle_event(RATE_LIMITER_TOKEN, EventSet::IN, Some(&mut ctx));
        }

        /// Submits one chain, runs the device, and returns (used length, status byte).
        fn request(&mut self, bufs: &[Buf]) -> (u32, u8) {
            let before = self.driver.used_idx();
            let head = self.driver.add_chain(bufs);
            self.run();
            assert_eq!(self.driver.used_idx(), before.wrapping_add(1), "chain returned");
            let (id, len) = self.driver.used(before);
            assert_eq!(id, u32::from(head));
            (len, self.mem.read_obj(GuestAddress(STATUS)).unwrap())
        }

        fn counter(&self, name: &str) -> u64 {
            self.block.counters()[name].as_u64().unwrap()
        }
    }

    fn open(file: &TempFile, read_only: bool) -> Block {
        Block::new(file.path(), read_only, Some("hearth-disk-0".into()), None).unwrap()
    }

    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

    #[test]
    fn config_and_features() {
        let file = disk(3, 100);
        let block = open(&file, false);
        assert_eq!(block.capacity_sectors(), 3);
        let mut config = [0xaa; 32];
        block.read_config(0, &mut config);
        assert_eq!(u64::from_le_bytes(config[..8].try_into().unwrap()), 3);
        assert_eq!(u32::from_le_bytes(config[12..16].try_into().unwrap()), 254);
        assert_eq!(u32::from_le_bytes(config[20..24].try_into().unwrap()), 512);
        assert_eq!(config[24..], [0; 8]);
        let mut far = [0xaa; 4];
        block.read_config(u64::MAX, &mut far);
        assert_eq!(far, [0; 4]);
        assert_eq!(block.device_features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(open(&file, true).device_features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert!(block.event_sources().is_empty());
        let mut block = block;
        assert!(block.activate(0).is_err());
        assert!(block.activate(VIRTIO_F_VERSION_1).is_ok());
    }

    #[test]
    fn errors_name_the_operation_and_path() {
        let error = Block::new("/nonexistent/disk.img", false, None, None).err().unwrap();
        assert_eq!(error.to_string(), "opening disk image /nonexistent/disk.img");
        assert!(std::error::Error::source(&error).is_some());
        let file = disk(1, 0);
        let error = Block::new(file.path(), false, Some("x".repeat(21)), None)
            .err()
            .unwrap();
        assert!(matches!(error, BlockError::IdTooLong { .. }));
    }

    #[test]
    fn write_then_read_round_trip_across_descriptors() {
        let mem = guest_memory();
        let file = disk(8, 0);
        let mut h = Harness::new(&mem, open(&file, false));
        let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 251) as u8).collect();
        mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();

        h.header(VIRTIO_BLK_T_OUT, 2);
        let out = [
            (HEADER, 16, false),
            (DATA, 300, false),
            (DATA + 300, 724, false),
            (STATUS, 1, true),
        ];
        assert_eq!(h.request(&out), (1, OK));
        let on_disk = std::fs::read(file.path()).unwrap();
        assert_eq!(&on_disk[1024..2048], &pattern[..]);
        assert_eq!(&on_disk[..1024], &[[0u8; 512], [1u8; 512]].concat()[..]);

        let back = 0x4_0000;
        h.header(VIRTIO_BLK_T_IN, 1);
        let read = [
            (HEADER, 16, false),
            (back, 512, true),
            (back + 512, 1024, true),
            (STATUS, 1, true),
        ];
        assert_eq!(h.request(&read), (1536 + 1, OK));
        let mut got = vec![0u8; 1536];
        mem.read_slice(&mut got, GuestAddress(back)).unwrap();
        assert_eq!(&got[..512], &[1u8; 512]);
        assert_eq!(&got[512..], &pattern[..]);

        assert_eq!(h.counter("write_ops"), 1);
        assert_eq!(h.counter("write_bytes"), 1024);
        assert_eq!(h.counter("read_ops"), 1);
        assert_eq!(h.counter("read_bytes"), 1536);
        assert_eq!(h.counter("errors"), 0);
        assert_eq!(h.interrupt.status() & INTERRUPT_USED_BUFFER, INTERRUPT_USED_BUFFER);
        assert!(h.interrupt.irqfd().read().unwrap() >= 1);
    }

    #[test]
    fn flush_get_id_and_unsupported() {
        let mem = guest_memory();
        let file = disk(1, 0);
        let mut h = Harness::new(&mem, open(&file, false));
        // FLUSH ignores the sector, even one whose byte offset overflows (found by fuzzing).
        h.header(VIRTIO_BLK_T_FLUSH, u64::MAX);
        assert_eq!(h.request(&[(HEADER, 16, false), (STATUS, 1, true)]), (1, OK));
        assert_eq!(h.counter("flush_ops"), 1);

        mem.write_slice(&[0xaa; 20], GuestAddress(DATA)).unwrap();
        h.header(VIRTIO_BLK_T_GET_ID, u64::MAX);
        let get_id = [(HEADER, 16, false), (DATA, 20, true), (STATUS, 1, true)];
        assert_eq!(h.request(&get_id), (21, OK));
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"hearth-disk-0\0\0\0\0\0\0\0");

        h.header(0x7777, 0);
        assert_eq!(
            h.request(&[(HEADER, 16, false), (STATUS, 1, true)]),
            (1, VIRTIO_BLK_S_UNSUPP as u8)
        );
    }

    #[test]
    fn read_only_disk_refuses_writes_but_reads() {
        let mem = guest_memory();
        let file = disk(2, 0);
        let mut h = Harness::new(&mem, open(&file, true));
        h.header(VIRTIO_BLK_T_OUT, 0);
        assert_eq!(
            h.request(&[(HEADER, 16, false), (DATA, 512, false), (STATUS, 1, true)]),
            (1, IOERR)
        );
        assert_eq!(std::fs::read(file.path()).unwrap()[..512], [0u8; 512]);
        h.header(VIRTIO_BLK_T_IN, 1);
        assert_eq!(
            h.request(&[(HEADER, 16, false), (DATA, 512, true), (STATUS, 1, true)]),
            (513, OK)
        );
        assert_eq!(h.counter("errors"), 1);
        assert_eq!(h.counter("write_ops"), 0);
    }

    #[test]
    fn partial_trailing_sector_is_out_of_range() {
        let mem = guest_memory();
        let file = disk(1, 300);
        let mut h = Harness::new(&mem, open(&file, false));
        h.header(VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            h.request(&[(HEADER, 16, false), (DATA, 512, true), (STATUS, 1, true)]),
            (513, OK)
        );
        h.header(VIRTIO_BLK_T_IN, 1);
        assert_eq!(
            h.request(&[(HEADER, 16, false), (DATA, 512, true), (STATUS, 1, true)]),
            (1, IOERR)
        );
        h.header(VIRTIO_BLK_T_OUT, 0);
        assert_eq!(
            h.request(&[(HEADER, 16, false), (DATA, 1024, false), (STATUS, 1, true)]),
            (1, IOERR)
        );
        assert_eq!(std::fs::metadata(file.path()).unwrap().len(), 812, "file untouched");
    }

    /// Every malformed request answers IOERR (status written, disk untouched).
    #[test]
    fn malformed_requests_get_ioerr() {
        let mem = guest_memory();
        let file = disk(4, 0);
        let mut h = Harness::new(&mem, open(&file, false));
        let cases: &[(&str, u32, u64, &[Buf])] = &[
            (
                "data outside RAM",
                VIRTIO_BLK_T_IN,
                0,
                &[(HEADER, 16, false), (RAM_SIZE, 512, true), (STATUS, 1, true)],
            ),
            (
                "data straddles the end of RAM",
                VIRTIO_BLK_T_OUT,
                0,
                &[(HEADER, 16, false), (RAM_SIZE - 256, 512, false), (STATUS, 1, true)],
            ),
            (
                "address + length overflows",
                VIRTIO_BLK_T_OUT,
                0,
                &[(HEADER, 16, false), (u64::MAX - 100, 512, false), (STATUS, 1, true)],
            ),
            (
                "header outside RAM",
                VIRTIO_BLK_T_IN,
                0,
                &[(u64::MAX - 8, 16, false), (DATA, 512, true), (STATUS, 1, true)],
            ),
            (
                "header too short",
                VIRTIO_BLK_T_IN,
                0,
                &[(HEADER, 8, false), (DATA, 512, true), (STATUS, 1, true)],
            ),
            (
                "length not whole sectors",
                VIRTIO_BLK_T_IN,
                0,
                &[(HEADER, 16, false), (DATA, 100, true), (STATUS, 1, true)],
            ),
            (
                "past the capacity",
                VIRTIO_BLK_T_IN,
                4,
                &[(HEADER, 16, false), (DATA, 512, true), (STATUS, 1, true)],
            ),
            (
                "straddles the capacity",
                VIRTIO_BLK_T_OUT,
                3,
                &[(HEADER, 16, false), (DATA, 1024, false), (STATUS, 1, true)],
            ),
            (
                "sector * 512 overflows",
                VIRTIO_BLK_T_IN,
                u64::MAX / 256,
                &[(HEADER, 16, false), (DATA, 512, true), (STATUS, 1, true)],
            ),
            (
                "offset + length overflows",
                VIRTIO_BLK_T_IN,
                (u64::MAX - 511) / 512,
                &[(HEADER, 16, false), (DATA, 1024, true), (STATUS, 1, true)],
            ),
            (
                "IN into a read-only buffer",
                VIRTIO_BLK_T_IN,
                0,
                &[(HEADER, 16, false), (DATA, 512, false), (STATUS, 1, true)],
            ),
            (
                "OUT from a writable buffer",
                VIRTIO_BLK_T_OUT,
                0,
                &[(HEADER, 16, false), (DATA, 512, true), (STATUS, 1, true)],
            ),
            (
                "readable after writable",
                VIRTIO_BLK_T_IN,
                0,
                &[
                    (HEADER, 16, false),
                    (DATA, 512, true),
                    (DATA + 512, 512, false),
                    (STATUS, 1, true),
                ],
            ),
        ];
        for (i, &(name, request_type, sector, bufs)) in cases.iter().enumerate() {
            h.header(request_type, sector);
            assert_eq!(h.request(bufs), (1, IOERR), "{name}");
            assert_eq!(h.counter("errors"), i as u64 + 1, "{name}");
        }
        let contents: Vec<u8> = (0..4u8).flat_map(|n| [n; 512]).collect();
        assert_eq!(std::fs::read(file.path()).unwrap(), contents, "disk untouched");
        assert_eq!(h.counter("read_ops") + h.counter("write_ops"), 0);
    }

    /// Without a writable status byte in RAM the chain comes back with length 0.
    #[test]
    fn chains_without_status_are_returned_empty() {
        let mem = guest_memory();
        let file = disk(4, 0);
        let mut h = Harness::new(&mem, open(&file, false));
        let cases: &[(&str, &[Buf])] = &[
            (
                "status read-only",
                &[(HEADER, 16, false), (DATA, 512, true), (STATUS, 1, false)],
            ),
            ("header only", &[(HEADER, 16, false)]),
            (
                "zero-length status",
                &[(HEADER, 16, false), (DATA, 512, true), (STATUS, 0, true)],
            ),
            (
                "status outside RAM",
                &[(HEADER, 16, false), (DATA, 512, true), (RAM_SIZE, 1, true)],
            ),
            ("status address overflows", &[(HEADER, 16, false), (u64::MAX, 2, true)]),
        ];
        for (i, &(name, bufs)) in cases.iter().enumerate() {
            h.header(VIRTIO_BLK_T_IN, 0);
            assert_eq!(h.request(bufs), (0, STATUS_UNSET), "{name}");
            assert_eq!(h.counter("errors"), i as u64 + 1, "{name}");
        }
        let mut data = [0u8; 512];
        mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
        assert_eq!(data, [0; 512], "nothing read");
    }

    #[test]
    fn looping_chain_terminates() {
        let mem = guest_memory();
        let file = disk(4, 0);
        let mut h = Harness::new(&mem, open(&file, false));
        h.header(VIRTIO_BLK_T_IN, 0);
        // 0 -> 1 -> 2 -> 1 -> 2 ...: virtio-queue stops after `queue size` descriptors.
        let next = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
        let write = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
        h.driver.write_descriptor(0, Descriptor::new(HEADER, 16, next, 1));
        h.driver
            .write_descriptor(1, Descriptor::new(DATA, 512, next | write, 2));
        h.driver
            .write_descriptor(2, Descriptor::new(STATUS, 1, next | write, 1));
        h.driver.make_available(0);
        h.run();
        assert_eq!(h.driver.used_idx(), 1);
        assert_eq!(h.counter("errors"), 1);
        assert_eq!(h.counter("read_ops"), 0);
    }

    #[test]
    fn head_index_outside_the_queue_is_counted_not_fatal() {
        let mem = guest_memory();
        let file = disk(1, 0);
        let mut h = Harness::new(&mem, open(&file, false));
        h.driver.make_available(200);
        h.run();
        assert_eq!(h.driver.used_idx(), 0);
        assert_eq!(h.counter("errors"), 2, "no status + unusable head");
        // The queue still works afterwards.
        h.header(VIRTIO_BLK_T_FLUSH, 0);
        let head = h.driver.add_chain(&[(HEADER, 16, false), (STATUS, 1, true)]);
        h.run();
        assert_eq!(h.driver.used(0), (u32::from(head), 1));
    }

    #[test]
    fn overlong_chain_is_refused() {
        let mem = guest_memory();
        let file = disk(4, 0);
        let mut h = Harness::with_queue_size(&mem, open(&file, false), 512);
        h.header(VIRTIO_BLK_T_IN, 0);
        let mut bufs = vec![(HEADER, 16, false)];
        bufs.extend((0..MAX_CHAIN_DESCRIPTORS as u64).map(|i| (DATA + i, 1, true)));
        bufs.push((STATUS, 1, true));
        assert_eq!(h.request(&bufs), (1, IOERR));
    }

    #[test]
    fn rate_limited_requests_wait_for_the_timer() {
        let mem = guest_memory();
        let file = disk(4, 0);
        let limit = RateLimitConfig {
            ops_per_sec: Some(5),
            ops_burst: Some(1),
            ..Default::default()
        };
        let block = Block::new(file.path(), false, None, Some(limit)).unwrap();
        let sources = block.event_sources();
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].token, RATE_LIMITER_TOKEN);
        let mut h = Harness::new(&mem, block);
        // 200 ms between requests; GET_ID makes no syscall, so both arrive within that.
        h.header(VIRTIO_BLK_T_GET_ID, 0);
        h.driver.add_chain(&[(HEADER, 16, false), (STATUS, 1, true)]);
        h.driver.add_chain(&[(HEADER, 16, false), (STATUS, 1, true)]);
        h.run();
        assert_eq!(h.driver.used_idx(), 1, "second request throttled");
        assert_eq!(h.counter("throttled_events"), 1);
        // A notification while blocked does nothing.
        h.run();
        assert_eq!(h.driver.used_idx(), 1);
        std::thread::sleep(Duration::from_millis(250));
        h.timer_event();
        assert_eq!(h.driver.used_idx(), 2);
        assert_eq!(h.driver.used(1).1, 1);
    }

    fn key() -> [u8; 64] {
        std::array::from_fn(|i| (i as u8).wrapping_mul(7).wrapping_add(1))
    }

    #[test]
    fn encrypted_disk_holds_ciphertext_and_reads_plaintext() {
        let mem = guest_memory();
        let file = TempFile::with_contents(&[0u8; 8 * SECTOR_SIZE as usize]);
        let cipher = XtsCipher::new(&key()).unwrap();
        // The image starts as the encryption of its plaintext (zeros, sector 7 = 0x77).
        let mut image = vec![0u8; 8 * SECTOR_SIZE as usize];
        image[7 * 512..].fill(0x77);
        cipher.encrypt_sectors(&mut image, 0);
        std::fs::write(file.path(), &image).unwrap();
        let options = BlockOptions {
            cipher: Some(cipher.clone()),
            ..BlockOptions::default()
        };
        let mut h = Harness::new(&mem, Block::with_options(file.path(), options).unwrap());

        // Five sectors over uneven descriptors: three bounce-buffer pieces.
        let pattern: Vec<u8> = (0..2560u32).map(|i| (i * 13 % 253) as u8 + 1).collect();
        mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
        h.header(VIRTIO_BLK_T_OUT, 1);
        let out = [
            (HEADER, 16, false),
            (DATA, 300, false),
            (DATA + 300, 1700, false),
            (DATA + 2000, 560, false),
            (STATUS, 1, true),
        ];
        assert_eq!(h.request(&out), (1, OK));
        let on_disk = std::fs::read(file.path()).unwrap();
        let written = &on_disk[512..3072];
        assert_ne!(written, &pattern[..]);
        assert!(
            written.windows(16).all(|w| !pattern.windows(16).any(|p| p == w)),
            "no 16 plaintext bytes on disk"
        );
        let mut plain = on_disk.clone();
        cipher.decrypt_sectors(&mut plain, 0);
        assert_eq!(&plain[512..3072], &pattern[..]);
        assert_eq!(&plain[..512], &[0u8; 512]);
        assert_eq!(&plain[7 * 512..], &[0x77u8; 512]);

        // Read sectors 0..8 back in uneven pieces: the guest sees plaintext.
        let back = 0x4_0000;
        h.header(VIRTIO_BLK_T_IN, 0);
        let read = [
            (HEADER, 16, false),
            (back, 100, true),
            (back + 100, 3996, true),
            (STATUS, 1, true),
        ];
        assert_eq!(h.request(&read), (4096 + 1, OK));
        let mut got = vec![0u8; 4096];
        mem.read_slice(&mut got, GuestAddress(back)).unwrap();
        assert_eq!(got, plain);
        assert_eq!(h.counter("errors"), 0);
    }

    #[test]
    fn writes_mark_dirty_chunks_and_snapshots_reset_them() {
        use crate::dirty::CHUNK_BYTES;
        let mem = guest_memory();
        let dir = std::env::temp_dir().join(format!("hearth-blk-dirty-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("disk.img");
        let size = 4 * CHUNK_BYTES + 4096;
        std::fs::File::create(&image).unwrap().set_len(size).unwrap();
        let bitmap_file = dir.join("disk.dirty");
        let options = |bitmap: &Path| BlockOptions {
            dirty_bitmap: Some(bitmap.to_owned()),
            ..BlockOptions::default()
        };

        let block = Block::with_options(&image, options(&bitmap_file)).unwrap();
        let handle = block.handle();
        assert_eq!(handle.dirty_start(), &DirtyStart::Missing);
        assert_eq!(handle.dirty_runs(), vec![[0, 5]], "unknown history: all dirty");
        assert_eq!(handle.chunks(), 5);
        let mut h = Harness::new(&mem, block);
        let first = handle.snapshot(&dir.join("full.img"), FreezeMode::Copy).unwrap();
        assert_eq!(first.dirty, vec![[0, 5]]);
        assert_eq!(first.size, size);
        assert!(handle.dirty_runs().is_empty());

        // A write straddling chunks 1 and 2, one in the partial last chunk, reads (ignored).
        mem.write_slice(&[9u8; 1024], GuestAddress(DATA)).unwrap();
        h.header(VIRTIO_BLK_T_OUT, 2 * (CHUNK_BYTES / SECTOR_SIZE) - 1);
        assert_eq!(
            h.request(&[(HEADER, 16, false), (DATA, 1024, false), (STATUS, 1, true)])
                .1,
            OK
        );
        h.header(VIRTIO_BLK_T_OUT, 4 * (CHUNK_BYTES / SECTOR_SIZE) + 7);
        assert_eq!(
            h.request(&[(HEADER, 16, false), (DATA, 512, false), (STATUS, 1, true)])
                .1,
            OK
        );
        h.header(VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            h.request(&[(HEADER, 16, false), (DATA, 512, true), (STATUS, 1, true)])
                .1,
            OK
        );
        assert_eq!(handle.dirty_runs(), vec![[1, 2], [4, 1]]);
        assert_eq!(h.counter("dirty_chunks"), 3);

        let frozen = dir.join("frozen.img");
        let snap = handle.snapshot(&frozen, FreezeMode::Copy).unwrap();
        assert_eq!(snap.dirty, vec![[1, 2], [4, 1]]);
        assert_eq!(snap.method, CopyMethod::Copy);
        let bytes = std::fs::read(&frozen).unwrap();
        assert_eq!(bytes.len() as u64, size);
        let at = (2 * CHUNK_BYTES - 512) as usize;
        assert_eq!(&bytes[at..at + 1024], &[9u8; 1024]);
        assert!(handle.dirty_runs().is_empty(), "a new snapshot point");

        // Saved at finish; later writes fail; the next device loads it.
        h.header(VIRTIO_BLK_T_OUT, 0);
        assert_eq!(
            h.request(&[(HEADER, 16, false), (DATA, 512, false), (STATUS, 1, true)])
                .1,
            OK
        );
        handle.claim_bitmap_file().unwrap();
        handle.finish().unwrap();
        handle.finish().unwrap();
        h.header(VIRTIO_BLK_T_OUT, 512);
        assert_eq!(
            h.request(&[(HEADER, 16, false), (DATA, 512, false), (STATUS, 1, true)])
                .1,
            IOERR
        );
        assert!(handle.snapshot(&dir.join("late.img"), FreezeMode::Copy).is_err());
        let next = Block::with_options(&image, options(&bitmap_file)).unwrap().handle();
        assert_eq!(next.dirty_start(), &DirtyStart::Loaded);
        assert_eq!(next.dirty_runs(), vec![[0, 1]]);
        next.claim_bitmap_file().unwrap();
        assert!(!bitmap_file.exists(), "claimed: a crash from here on leaves no file");

        // A grown disk does not match the saved bitmap: all dirty.
        next.finish().unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap()
            .set_len(size + CHUNK_BYTES)
            .unwrap();
        let grown = Block::with_options(&image, options(&bitmap_file)).unwrap().handle();
        assert!(
            matches!(grown.dirty_start(), DirtyStart::Invalid(_)),
            "{:?}",
            grown.dirty_start()
        );
        assert_eq!(grown.dirty_runs(), vec![[0, 6]]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
