//! Local file helpers: zero detection, hole probing, directory fsync.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};

/// True if every byte of `data` is zero.
pub(crate) fn is_zero(data: &[u8]) -> bool {
    // OR-reduce fixed blocks (which vectorizes well) and stop at the first non-zero block.
    data.chunks(4096)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Answers "is `[start, end)` entirely a hole of the file?" with `lseek(SEEK_DATA)`, so that the
/// unallocated parts of a sparse source (a point-in-time copy holding only the dirty chunks, a
/// mostly empty volume) are known to be zero without being read.
pub(crate) struct HoleProbe<'a> {
    file: &'a File,
    /// `(from, next)`: the file holds no data in `[from, next)`.
    known_hole: Option<(u64, u64)>,
    /// The filesystem does not support `SEEK_DATA`: every range is read.
    unsupported: bool,
}

impl<'a> HoleProbe<'a> {
    pub(crate) fn new(file: &'a File) -> Self {
        HoleProbe {
            file,
            known_hole: None,
            unsupported: false,
        }
    }

    /// True only if the file certainly holds no data in `[start, end)` (false when unsure).
    pub(crate) fn is_hole(&mut self, start: u64, end: u64) -> bool {
        if self.unsupported {
            return false;
        }
        if let Some((from, next)) = self.known_hole {
            if from <= start && end <= next {
                return true;
            }
        }
        let Ok(offset) = libc::off_t::try_from(start) else {
            return false;
        };
        // SAFETY: lseek only reads its integer arguments; the descriptor is owned by `self.file`,
        // which the borrow keeps open for the duration of the call. Moving the file offset does
        // not matter: all reads use pread.
        let next = unsafe { libc::lseek(self.file.as_raw_fd(), offset, libc::SEEK_DATA) };
        let next = if next >= 0 {
            next as u64
        } else {
            match std::io::Error::last_os_error().raw_os_error() {
                // No data at or after `start`.
                Some(libc::ENXIO) => u64::MAX,
                _ => {
                    self.unsupported = true;
                    return false;
                }
            }
        };
        self.known_hole = Some((start, next));
        next >= end
    }
}

/// fsyncs a directory so that entries just created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; (1 << 20) + 100];
        assert!(is_zero(&v));
        assert!(is_zero(&[]));
        *v.last_mut().unwrap() = 1;
        assert!(!is_zero(&v));
        v.fill(0);
        v[5000] = 0x80;
        assert!(!is_zero(&v));
    }

    #[test]
    fn hole_probe_sees_holes_and_data() {
        let path = std::env::temp_dir().join(format!("hearth-snapshot-holeprobe-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mib = 1u64 << 20;
        f.set_len(16 * mib).unwrap();
        f.write_all_at(&[1u8; 4096], 8 * mib).unwrap();
        let mut p = HoleProbe::new(&f);
        let holes: Vec<bool> = (0..16).map(|i| p.is_hole(i * mib, (i + 1) * mib)).collect();
        std::fs::remove_file(&path).unwrap();
        // Filesystems without SEEK_DATA report no holes (safe); with it, only chunk 8 has data.
        if holes.iter().any(|&h| h) {
            for (i, h) in holes.iter().enumerate() {
                assert_eq!(*h, i != 8, "chunk {i}");
            }
        }
        assert!(!holes[8]);
    }
}
