//! Dirty-chunk tracking for incremental disk snapshots, and point-in-time copies of disk
//! images.
//!
//! A disk is cut into chunks of [`CHUNK_BYTES`] (the last one may be shorter). A
//! [`DirtyBitmap`] has one bit per chunk: set when the guest wrote into the chunk since the
//! last snapshot point. It is kept in memory while the VM runs and can be stored in a
//! bitmap file between runs ([`DirtyBitmap::load`], [`DirtyBitmap::save`]).
//!
//! Bitmap file (all integers little endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `HEARTHDB` |
//! | 8 | 4 | version, 1 |
//! | 12 | 4 | reserved, 0 |
//! | 16 | 8 | chunk size in bytes (1048576) |
//! | 24 | 8 | disk size in bytes |
//! | 32 | ⌈chunks / 8⌉ | the bits: chunk `i` is bit `i % 8` of byte `i / 8` |
//! | end − 8 | 8 | FNV-1a 64 of every byte before it |

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Size of a tracked chunk: 1 MiB (2048 sectors).
pub const CHUNK_BYTES: u64 = 1 << 20;

const MAGIC: &[u8; 8] = b"HEARTHDB";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 32;
const CHECKSUM_LEN: usize = 8;

/// One bit per chunk; bits are set with atomic operations, so a shared bitmap can be marked
/// through `&self`.
#[derive(Debug)]
pub struct DirtyBitmap {
    disk_bytes: u64,
    chunks: u64,
    words: Vec<AtomicU64>,
}

/// What [`DirtyBitmap::load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// A valid file for this disk size: its bits.
    File(DirtyBitmap),
    /// No file: the history is unknown.
    Missing,
    /// A file that is unreadable, corrupt or for another disk size (the reason).
    Invalid(String),
}

impl DirtyBitmap {
    /// A bitmap for a disk of `disk_bytes` with no chunk dirty.
    pub fn clean(disk_bytes: u64) -> DirtyBitmap {
        let chunks = disk_bytes.div_ceil(CHUNK_BYTES);
        let words = (0..chunks.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        DirtyBitmap {
            disk_bytes,
            chunks,
            words,
        }
    }

    /// A bitmap for a disk of `disk_bytes` with every chunk dirty.
    pub fn all_dirty(disk_bytes: u64) -> DirtyBitmap {
        let bitmap = DirtyBitmap::clean(disk_bytes);
        bitmap.mark_all();
        bitmap
    }

    /// The disk size this bitmap describes.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Number of chunks (the last one may be partial).
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Marks the chunks holding bytes `offset..offset + len` (clamped to the disk).
    pub fn mark(&self, offset: u64, len: u64) {
        if len == 0 || self.chunks == 0 {
            return;
        }
        let first = offset / CHUNK_BYTES;
        let last = (offset.saturating_add(len - 1) / CHUNK_BYTES).min(self.chunks - 1);
        for chunk in first..=last {
            self.words[(chunk / 64) as usize].fetch_or(1 << (chunk % 64), Ordering::Relaxed);
        }
    }

    /// Marks every chunk.
    pub fn mark_all(&self) {
        for (index, word) in self.words.iter().enumerate() {
            let first = index as u64 * 64;
            let bits = (self.chunks - first).min(64);
            word.store(if bits == 64 { u64::MAX } else { (1 << bits) - 1 }, Ordering::Relaxed);
        }
    }

    /// Clears every chunk (a new snapshot point).
    pub fn clear(&self) {
        for word in &self.words {
            word.store(0, Ordering::Relaxed);
        }
    }

    /// True when chunk `chunk` is dirty.
    pub fn is_dirty(&self, chunk: u64) -> bool {
        chunk < self.chunks && self.words[(chunk / 64) as usize].load(Ordering::Relaxed) & (1 << (chunk % 64)) != 0
    }

    /// Number of dirty chunks.
    pub fn dirty_chunks(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// The dirty chunks as `[first_chunk, count]` runs, in order.
    pub fn runs(&self) -> Vec<[u64; 2]> {
        let mut runs: Vec<[u64; 2]> = Vec::new();
        for (index, word) in self.words.iter().enumerate() {
            let mut bits = word.load(Ordering::Relaxed);
            while bits != 0 {
                let chunk = index as u64 * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                match runs.last_mut() {
                    Some([start, count]) if *start + *count == chunk => *count += 1,
                    _ => runs.push([chunk, 1]),
                }
            }
        }
        runs
    }

    /// The bitmap file's bytes (see the module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let bit_bytes = self.chunks.div_ceil(8) as usize;
        let mut bytes = Vec::with_capacity(HEADER_LEN + bit_bytes + CHECKSUM_LEN);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&CHUNK_BYTES.to_le_bytes());
        bytes.extend_from_slice(&self.disk_bytes.to_le_bytes());
        for word in &self.words {
            bytes.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        bytes.truncate(HEADER_LEN + bit_bytes);
        let checksum = fnv1a(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        bytes
    }

    /// Parses a bitmap file's bytes for a disk of `disk_bytes`.
    pub fn from_bytes(bytes: &[u8], disk_bytes: u64) -> Result<DirtyBitmap, String> {
        let bitmap = DirtyBitmap::clean(disk_bytes);
        let bit_bytes = bitmap.chunks.div_ceil(8) as usize;
        if bytes.len() < HEADER_LEN + CHECKSUM_LEN || &bytes[..8] != MAGIC {
            return Err("not a hearth dirty bitmap".into());
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        if u32_at(8) != VERSION || u64_at(16) != CHUNK_BYTES {
            return Err(format!(
                "version {} with {}-byte chunks, expected {VERSION} with {CHUNK_BYTES}",
                u32_at(8),
                u64_at(16)
            ));
        }
        if u64_at(24) != disk_bytes {
            return Err(format!(
                "made for a disk of {} bytes, the disk has {disk_bytes}",
                u64_at(24)
            ));
        }
        if bytes.len() != HEADER_LEN + bit_bytes + CHECKSUM_LEN {
            return Err(format!(
                "{} bytes long, expected {}",
                bytes.len(),
                HEADER_LEN + bit_bytes + CHECKSUM_LEN
            ));
        }
        let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if fnv1a(body) != u64::from_le_bytes(checksum.try_into().unwrap()) {
            return Err("checksum mismatch".into());
        }
        for (index, word) in bitmap.words.iter().enumerate() {
            let mut value = [0u8; 8];
            let start = HEADER_LEN + index * 8;
            let end = (start + 8).min(HEADER_LEN + bit_bytes);
            value[..end - start].copy_from_slice(&body[start..end]);
            word.store(u64::from_le_bytes(value), Ordering::Relaxed);
        }
        // Bits past the last chunk are meaningless: drop them.
        if let Some(last) = bitmap.words.last() {
            let bits = bitmap.chunks % 64;
            if bits != 0 {
                last.fetch_and((1 << bits) - 1, Ordering::Relaxed);
            }
        }
        Ok(bitmap)
    }

    /// Reads the bitmap file at `path` for a disk of `disk_bytes`.
    pub fn load(path: &Path, disk_bytes: u64) -> Loaded {
        match std::fs::read(path) {
            Ok(bytes) => match DirtyBitmap::from_bytes(&bytes, disk_bytes) {
                Ok(bitmap) => Loaded::File(bitmap),
                Err(reason) => Loaded::Invalid(reason),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Loaded::Missing,
            Err(e) => Loaded::Invalid(e.to_string()),
        }
    }

    /// Writes the bitmap file atomically: `<path>.tmp`, fsync, rename over `path`, fsync
    /// of the directory.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let mut temp = path.as_os_str().to_owned();
        temp.push(".tmp");
        let temp = PathBuf::from(temp);
        let result = (|| {
            let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&temp)?;
            file.write_all(&self.to_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temp, path)?;
            sync_parent(path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }
}

/// Removes `path` if it exists and makes the removal durable (fsync of the directory).
pub fn remove_durably(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_parent(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// FNV-1a, 64 bit.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3)
    })
}

/// How a point-in-time copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    /// `FICLONE`: the whole file shares its extents with the disk (xfs, btrfs).
    Reflink,
    /// The dirty chunks were copied into a sparse file; the rest are holes.
    Copy,
}

impl CopyMethod {
    /// `reflink` or `copy`.
    pub fn name(self) -> &'static str {
        match self {
            CopyMethod::Reflink => "reflink",
            CopyMethod::Copy => "copy",
        }
    }
}

/// Which methods [`freeze`] may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FreezeMode {
    /// Reflink when the file system can, else copy the dirty chunks.
    #[default]
    Auto,
    /// Always copy the dirty chunks.
    Copy,
}

/// Makes `out` a point-in-time copy of `disk`: its first `size` bytes, with the same size.
/// With `FreezeMode::Auto` it first tries `FICLONE` (the whole file, instant on xfs/btrfs);
/// otherwise, or when the file system cannot, it copies the chunks `dirty` marks into a
/// sparse file, leaving holes everywhere else (and where the disk has holes or zeros). The
/// copy is written as `<out>.partial`, fsynced, then renamed over `out` (replacing any
/// file there); on failure nothing is left. The caller keeps the disk from changing
/// meanwhile.
pub fn freeze(disk: &File, size: u64, dirty: &DirtyBitmap, out: &Path, mode: FreezeMode) -> io::Result<CopyMethod> {
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)?;
        let method = if mode == FreezeMode::Auto && reflink(disk, &file)? {
            CopyMethod::Reflink
        } else {
            file.set_len(size)?;
            copy_chunks(disk, &file, size, dirty)?;
            CopyMethod::Copy
        };
        file.sync_all()?;
        std::fs::rename(&partial, out)?;
        sync_parent(out)?;
        Ok(method)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// `FICLONE`: true when done, false when the file systems cannot.
fn reflink(from: &File, to: &File) -> io::Result<bool> {
    // SAFETY: FICLONE takes the source descriptor as its argument and reads no memory; both
    // descriptors are open files we own for the duration of the call.
    let rc = unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) };
    if rc == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY | libc::ENOSYS | libc::EPERM) => Ok(false),
        _ => Err(error),
    }
}

/// Copies the dirty chunks of `from` into `to`, skipping holes (`SEEK_DATA`) and all-zero
/// pieces, so `to` stays sparse.
fn copy_chunks(from: &File, to: &File, size: u64, dirty: &DirtyBitmap) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK_BYTES as usize];
    for [first, count] in dirty.runs() {
        let start = first * CHUNK_BYTES;
        let end = ((first + count) * CHUNK_BYTES).min(size);
        let mut pos = start;
        while pos < end {
            let (data, data_end) = match next_data(from, pos)? {
                Some(range) => range,
                None => break,
            };
            if data >= end {
                break;
            }
            let piece_end = data_end.min(end);
            let mut at = data.max(pos);
            while at < piece_end {
                let len = (piece_end - at).min(CHUNK_BYTES) as usize;
                from.read_exact_at(&mut buf[..len], at)?;
                if buf[..len].iter().any(|b| *b != 0) {
                    to.write_all_at(&buf[..len], at)?;
                }
                at += len as u64;
            }
            pos = piece_end;
        }
    }
    Ok(())
}

/// The data range at or after `pos`: `(start, end)`, `None` past the last data. Files that
/// cannot say (no `SEEK_DATA`) are all data.
fn next_data(file: &File, pos: u64) -> io::Result<Option<(u64, u64)>> {
    let seek = |whence, at: u64| -> io::Result<Option<u64>> {
        let offset = libc::off_t::try_from(at).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: lseek on a descriptor we own; it touches no memory.
        let rc = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
        if rc >= 0 {
            return Ok(Some(rc as u64));
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(error),
        }
    };
    match seek(libc::SEEK_DATA, pos) {
        Ok(Some(data)) => {
            let hole = seek(libc::SEEK_HOLE, data)?.unwrap_or(u64::MAX);
            Ok(Some((data, hole)))
        }
        Ok(None) => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Some((pos, u64::MAX))),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hearth-dirty-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn marks_runs_and_clears() {
        let bitmap = DirtyBitmap::clean(130 * CHUNK_BYTES + 5);
        assert_eq!(bitmap.chunks(), 131);
        assert!(bitmap.runs().is_empty());
        bitmap.mark(0, 1);
        bitmap.mark(CHUNK_BYTES * 3 - 1, 2); // straddles chunks 2 and 3
        bitmap.mark(CHUNK_BYTES * 63, CHUNK_BYTES * 2); // 63 and 64: across a word
        bitmap.mark(CHUNK_BYTES * 130, 5);
        bitmap.mark(CHUNK_BYTES * 10, 0); // nothing
        bitmap.mark(u64::MAX - 10, 100); // clamped, no overflow
        assert_eq!(bitmap.runs(), vec![[0, 1], [2, 2], [63, 2], [130, 1]]);
        assert_eq!(bitmap.dirty_chunks(), 6);
        assert!(bitmap.is_dirty(64) && !bitmap.is_dirty(65) && !bitmap.is_dirty(1000));
        bitmap.clear();
        assert!(bitmap.runs().is_empty());
        bitmap.mark_all();
        assert_eq!(bitmap.runs(), vec![[0, 131]]);
        assert_eq!(DirtyBitmap::all_dirty(64 * CHUNK_BYTES).runs(), vec![[0, 64]]);
        assert!(DirtyBitmap::all_dirty(0).runs().is_empty());
    }

    #[test]
    fn file_round_trip_and_mismatches() {
        let dir = temp_dir("file");
        let path = dir.join("disk.dirty");
        let size = 70 * CHUNK_BYTES;
        assert!(matches!(DirtyBitmap::load(&path, size), Loaded::Missing));
        let bitmap = DirtyBitmap::clean(size);
        bitmap.mark(5 * CHUNK_BYTES, 1);
        bitmap.mark(69 * CHUNK_BYTES, 1);
        bitmap.save(&path).unwrap();
        assert!(!dir.join("disk.dirty.tmp").exists());
        match DirtyBitmap::load(&path, size) {
            Loaded::File(loaded) => assert_eq!(loaded.runs(), vec![[5, 1], [69, 1]]),
            other => panic!("{other:?}"),
        }
        match DirtyBitmap::load(&path, size + CHUNK_BYTES) {
            Loaded::Invalid(reason) => assert!(reason.contains("made for a disk of"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_LEN] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        match DirtyBitmap::load(&path, size) {
            Loaded::Invalid(reason) => assert_eq!(reason, "checksum mismatch"),
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, b"junk").unwrap();
        assert!(matches!(DirtyBitmap::load(&path, size), Loaded::Invalid(_)));
        remove_durably(&path).unwrap();
        remove_durably(&path).unwrap();
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn copy_freezes_only_dirty_chunks_sparsely() {
        let dir = temp_dir("freeze");
        let disk_path = dir.join("disk.img");
        let size = 6 * CHUNK_BYTES + 4096;
        let disk = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&disk_path)
            .unwrap();
        disk.set_len(size).unwrap();
        disk.write_all_at(&[1u8; 4096], 0).unwrap();
        disk.write_all_at(&[2u8; 8192], 2 * CHUNK_BYTES + 100).unwrap();
        disk.write_all_at(&[3u8; 4096], 6 * CHUNK_BYTES).unwrap();
        disk.write_all_at(&[4u8; 4096], 4 * CHUNK_BYTES).unwrap(); // not marked dirty
        let dirty = DirtyBitmap::clean(size);
        dirty.mark(0, 4096);
        dirty.mark(2 * CHUNK_BYTES, 3 * CHUNK_BYTES / 2); // chunks 2 and 3 (3 is a hole)
        dirty.mark(6 * CHUNK_BYTES, 1);
        let out = dir.join("frozen.img");
        assert_eq!(
            freeze(&disk, size, &dirty, &out, FreezeMode::Copy).unwrap(),
            CopyMethod::Copy
        );
        let frozen = std::fs::read(&out).unwrap();
        let original = std::fs::read(&disk_path).unwrap();
        assert_eq!(frozen.len() as u64, size);
        for chunk in 0..7u64 {
            let range = (chunk * CHUNK_BYTES) as usize..((chunk + 1) * CHUNK_BYTES).min(size) as usize;
            if dirty.is_dirty(chunk) {
                assert_eq!(frozen[range.clone()], original[range], "chunk {chunk}");
            } else {
                assert!(frozen[range].iter().all(|b| *b == 0), "chunk {chunk} is a hole");
            }
        }
        let blocks = std::fs::metadata(&out).unwrap().blocks();
        assert!(blocks * 512 <= 64 * 1024, "sparse: {} bytes allocated", blocks * 512);
        assert!(!dir.join("frozen.img.partial").exists());
        // An existing `out` is replaced; a failure leaves nothing.
        let clean = DirtyBitmap::clean(size);
        freeze(&disk, size, &clean, &out, FreezeMode::Copy).unwrap();
        assert!(std::fs::read(&out).unwrap().iter().all(|b| *b == 0));
        let missing = dir.join("no-such-dir/frozen.img");
        assert!(freeze(&disk, size, &dirty, &missing, FreezeMode::Copy).is_err());
        // Auto: reflink where the file system can, else the same copy.
        let auto = dir.join("auto.img");
        let method = freeze(&disk, size, &dirty, &auto, FreezeMode::Auto).unwrap();
        let frozen_auto = std::fs::read(&auto).unwrap();
        match method {
            CopyMethod::Reflink => assert_eq!(frozen_auto, original),
            CopyMethod::Copy => assert_eq!(frozen_auto, frozen),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
