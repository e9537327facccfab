//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hearth_snapshot::{CreateRequest, Manifest};

pub const MIB: u64 = 1 << 20;

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!("hearth-snapshot-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// xorshift64*: fast, deterministic, non-cryptographic bytes (a 1 MiB chunk of it is never all zero).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for piece in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            piece.copy_from_slice(&v[..piece.len()]);
        }
    }
}

/// Opens (creating if needed, never truncating) a file for positional writes.
pub fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}

/// Writes `len` random bytes at `offset`.
pub fn write_random(path: &Path, offset: u64, len: u64, rng: &mut Rng) {
    let f = open_rw(path);
    let mut buf = vec![0u8; MIB as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(MIB) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all_at(&buf[..n], offset + done).unwrap();
        done += n as u64;
    }
}

/// A volume file of `size` bytes (sparse), with random data in `[offset, offset+len)` ranges.
pub fn make_volume(path: &Path, size: u64, data: &[(u64, u64)], rng: &mut Rng) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.set_len(size).unwrap();
    drop(f);
    for &(off, len) in data {
        write_random(path, off, len, rng);
    }
}

pub fn request<'a>(
    id: &str,
    source: &'a Path,
    volume_size: u64,
    dirty: Option<Vec<(u64, u64)>>,
    parent: Option<&'a Manifest>,
    start_time_ms: u64,
) -> CreateRequest<'a> {
    CreateRequest {
        snapshot_id: id.to_string(),
        volume_id: "vol-test".to_string(),
        source,
        volume_size,
        dirty,
        parent,
        encrypted: false,
        key_id: None,
        description: format!("test snapshot {id}"),
        start_time_ms,
    }
}

/// Panics unless the two files have the same length and bytes.
pub fn assert_same_file(a: &Path, b: &Path) {
    let (la, lb) = (std::fs::metadata(a).unwrap().len(), std::fs::metadata(b).unwrap().len());
    assert_eq!(la, lb, "{} and {} differ in length", a.display(), b.display());
    let (mut fa, mut fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut off = 0u64;
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            break;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        assert!(
            ba[..n] == bb[..n],
            "{} and {} differ in the MiB at {off}",
            a.display(),
            b.display()
        );
        off += n as u64;
    }
}

/// Names of the files in a directory (empty if it does not exist), sorted.
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().into_string().unwrap()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}
