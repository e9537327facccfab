//! Volume files `volume_dir/<volume-id>.img`: created once by cloning the source image
//! (reflink when the filesystem can, else a copy that skips holes and zero blocks), grown
//! sparsely to the volume size, and never overwritten afterwards.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hearth_api::v1::DesiredVolume;

use crate::error::VolumeError;

/// Copy granularity: runs of all-zero blocks of this size are left as holes.
const BLOCK: usize = 4096;
/// Bytes read per step of the copy.
const CHUNK: usize = 1 << 20;

/// Whether `id` can name a file of ours (instance and volume IDs).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// `volume_dir/<volume-id>.img`.
pub fn volume_path(volume_dir: &Path, volume_id: &str) -> Result<PathBuf, VolumeError> {
    if !is_valid_id(volume_id) {
        return Err(VolumeError::InvalidId(volume_id.to_string()));
    }
    Ok(volume_dir.join(format!("{volume_id}.img")))
}

/// `volume_dir/<volume-id>.dirty`: hearth-vmm's dirty-chunk bitmap of the volume (kept
/// across VMM runs; see docs/vmm.md).
pub fn dirty_bitmap_path(volume_dir: &Path, volume_id: &str) -> PathBuf {
    volume_dir.join(format!("{volume_id}.dirty"))
}

/// The device ID a volume shows the guest (`VIRTIO_BLK_T_GET_ID`, at most 20 bytes):
/// the volume ID without its hyphen, `vol-0123…` → `vol0123…`.
pub fn disk_id(volume_id: &str) -> String {
    let id: String = volume_id.chars().filter(|c| *c != '-').collect();
    id.chars().take(20).collect()
}

/// Returns the volume's file, creating it when missing. An existing file is used as it is.
pub fn ensure_volume(volume_dir: &Path, volume: &DesiredVolume) -> Result<PathBuf, VolumeError> {
    let path = volume_path(volume_dir, &volume.volume_id)?;
    if std::fs::symlink_metadata(&path).is_ok() {
        // ModifyVolume may have grown it since: grow the file (sparse), never shrink.
        let size = u64::try_from(volume.size_bytes).unwrap_or(0);
        let grow = |source| VolumeError::Grow {
            path: path.clone(),
            size,
            source,
        };
        let file = OpenOptions::new().write(true).open(&path).map_err(grow)?;
        if size > file.metadata().map_err(grow)?.len() {
            file.set_len(size).map_err(grow)?;
        }
        return Ok(path);
    }
    let tmp = volume_dir.join(format!(".{}.img.tmp", volume.volume_id));
    let result = create(&tmp, &path, volume);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| path)
}

fn create(tmp: &Path, path: &Path, volume: &DesiredVolume) -> Result<(), VolumeError> {
    let _ = std::fs::remove_file(tmp);
    let dest = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|source| VolumeError::Create {
            path: tmp.to_path_buf(),
            source,
        })?;
    if !volume.source_path.is_empty() {
        let from = PathBuf::from(&volume.source_path);
        let src = File::open(&from).map_err(|source| VolumeError::OpenSource {
            path: from.clone(),
            source,
        })?;
        clone_or_copy(&src, &dest).map_err(|source| VolumeError::Copy {
            from,
            to: tmp.to_path_buf(),
            source,
        })?;
    }
    let size = u64::try_from(volume.size_bytes).unwrap_or(0);
    let grow = |source| VolumeError::Grow {
        path: tmp.to_path_buf(),
        size,
        source,
    };
    if size > dest.metadata().map_err(grow)?.len() {
        dest.set_len(size).map_err(grow)?;
    }
    let commit = |source| VolumeError::Commit {
        path: path.to_path_buf(),
        source,
    };
    dest.sync_all().map_err(commit)?;
    std::fs::rename(tmp, path).map_err(commit)?;
    if let Some(dir) = path.parent().and_then(|d| File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Reflink `src` into the empty `dest` (`FICLONE`), else `sparse_copy`.
pub fn clone_or_copy(src: &File, dest: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its argument and reads no memory of
    // ours; both descriptors are open files borrowed for the call.
    let cloned = unsafe { libc::ioctl(dest.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if cloned == 0 {
        return Ok(());
    }
    sparse_copy(src, dest)
}

/// `lseek(fd, offset, whence)` for `SEEK_DATA`/`SEEK_HOLE`: `Ok(None)` when there is no
/// more data (`ENXIO`).
fn seek(file: &File, offset: u64, whence: i32) -> io::Result<Option<u64>> {
    // SAFETY: lseek only moves the file offset of a descriptor we borrow.
    let position = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    if position >= 0 {
        return Ok(Some(position as u64));
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        _ => Err(error),
    }
}

/// Copies the data regions of `src` into the empty `dest` (same length), leaving holes and
/// all-zero blocks unwritten so `dest` stays sparse.
pub fn sparse_copy(src: &File, dest: &File) -> io::Result<()> {
    let len = src.metadata()?.len();
    dest.set_len(len)?;
    let mut buffer = vec![0u8; CHUNK];
    let mut position = 0;
    while position < len {
        let (start, end) = match seek(src, position, libc::SEEK_DATA) {
            Ok(Some(start)) => (start, seek(src, start, libc::SEEK_HOLE)?.unwrap_or(len).min(len)),
            Ok(None) => break,
            // No SEEK_DATA on this filesystem: everything may be data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (position, len),
            Err(e) => return Err(e),
        };
        copy_range(src, dest, start, end, &mut buffer)?;
        position = end.max(start + 1);
    }
    Ok(())
}

fn copy_range(src: &File, dest: &File, start: u64, end: u64, buffer: &mut [u8]) -> io::Result<()> {
    let mut offset = start;
    while offset < end {
        let want = (end - offset).min(buffer.len() as u64) as usize;
        let chunk = &mut buffer[..want];
        src.read_exact_at(chunk, offset)?;
        // Write runs of non-zero blocks; zero blocks stay holes.
        let mut block = 0;
        while block < want {
            let run_start = block;
            while block < want && chunk[block..(block + BLOCK).min(want)].iter().any(|b| *b != 0) {
                block += BLOCK;
            }
            let run_end = block.min(want);
            if run_end > run_start {
                dest.write_all_at(&chunk[run_start..run_end], offset + run_start as u64)?;
            }
            while block < want && chunk[block..(block + BLOCK).min(want)].iter().all(|b| *b == 0) {
                block += BLOCK;
            }
        }
        offset += want as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Self {
            let path = std::env::temp_dir().join(format!("hearth-agent-vol-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn volume(id: &str, source: &Path, size: i64) -> DesiredVolume {
        DesiredVolume {
            volume_id: id.into(),
            source_path: source.display().to_string(),
            size_bytes: size,
            ..Default::default()
        }
    }

    /// A 16 MiB image with data at 0, at 8 MiB and in its last bytes, holes elsewhere.
    fn sparse_image(path: &Path) -> Vec<u8> {
        let file = File::create(path).unwrap();
        file.set_len(16 << 20).unwrap();
        file.write_all_at(b"HEARTHBC\x01", 0).unwrap();
        file.write_all_at(&[0xab; 10_000], 8 << 20).unwrap();
        file.write_all_at(b"end", (16 << 20) - 3).unwrap();
        std::fs::read(path).unwrap()
    }

    #[test]
    fn a_clone_has_the_same_bytes_stays_sparse_and_grows() {
        let dir = Scratch::new("clone");
        let source = dir.0.join("source.img");
        let contents = sparse_image(&source);
        let path = ensure_volume(&dir.0, &volume("vol-1", &source, 64 << 20)).unwrap();
        assert_eq!(path, dir.0.join("vol-1.img"));
        let cloned = std::fs::read(&path).unwrap();
        assert_eq!(cloned.len(), 64 << 20);
        assert_eq!(&cloned[..contents.len()], &contents[..]);
        assert!(cloned[contents.len()..].iter().all(|b| *b == 0));
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated < 1 << 20, "clone allocates {allocated} bytes: not sparse");
        assert!(!dir.0.join(".vol-1.img.tmp").exists());
    }

    #[test]
    fn the_copy_fallback_skips_holes_and_zero_blocks() {
        let dir = Scratch::new("copy");
        let source = dir.0.join("source.img");
        let contents = sparse_image(&source);
        // Zeros written as data are skipped too.
        File::options()
            .write(true)
            .open(&source)
            .unwrap()
            .write_all_at(&vec![0; 1 << 20], 2 << 20)
            .unwrap();
        let dest_path = dir.0.join("dest.img");
        let dest = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&dest_path)
            .unwrap();
        sparse_copy(&File::open(&source).unwrap(), &dest).unwrap();
        assert_eq!(std::fs::read(&dest_path).unwrap(), contents);
        let allocated = std::fs::metadata(&dest_path).unwrap().blocks() * 512;
        assert!(allocated < 1 << 20, "copy allocates {allocated} bytes: not sparse");
    }

    #[test]
    fn an_existing_volume_is_never_overwritten_only_grown() {
        let dir = Scratch::new("keep");
        let source = dir.0.join("source.img");
        sparse_image(&source);
        std::fs::write(dir.0.join("vol-2.img"), b"guest data").unwrap();
        // ModifyVolume grew it: the file grows (sparse), the data stays.
        let path = ensure_volume(&dir.0, &volume("vol-2", &source, 64 << 20)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!((bytes.len(), &bytes[..10]), (64 << 20, &b"guest data"[..]));
        assert!(bytes[10..].iter().all(|b| *b == 0));
        // Never shrunk.
        ensure_volume(&dir.0, &volume("vol-2", &source, 1 << 20)).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 << 20);
    }

    #[test]
    fn a_volume_without_source_is_blank_and_a_missing_source_is_an_error() {
        let dir = Scratch::new("blank");
        let blank = DesiredVolume {
            volume_id: "vol-3".into(),
            size_bytes: 1 << 20,
            ..Default::default()
        };
        let path = ensure_volume(&dir.0, &blank).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        let error = ensure_volume(&dir.0, &volume("vol-4", &dir.0.join("nope.img"), 0)).unwrap_err();
        assert!(matches!(error, VolumeError::OpenSource { .. }), "{error:?}");
        assert!(!dir.0.join("vol-4.img").exists());
        assert!(!dir.0.join(".vol-4.img.tmp").exists());
        assert!(matches!(
            ensure_volume(&dir.0, &volume("../x", &dir.0, 0)),
            Err(VolumeError::InvalidId(_))
        ));
    }

    #[test]
    fn disk_ids_drop_the_hyphen() {
        assert_eq!(disk_id("vol-0123456789abcdef0"), "vol0123456789abcdef0");
        assert_eq!(disk_id("vol-0123456789abcdef0123").len(), 20);
    }
}
