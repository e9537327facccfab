//! Helpers shared by the integration tests: temporary directories, test content, directory listings.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A directory under the system temp dir, removed (with everything in it) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "hearth-image-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
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

/// `len` pseudo-random bytes from `seed` (xorshift64*: incompressible, reproducible, no dependency).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Every path under `dir` (files, directories, hidden entries), relative and sorted, with file sizes.
pub fn list_recursive(dir: &Path) -> Vec<(String, Option<u64>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Option<u64>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.push((rel + "/", None));
                walk(root, &path, out);
            } else {
                out.push((rel, Some(meta.len())));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Writes `kernel`, optional `initrd`, and `root` into `dir` and an image.json describing them.
pub fn write_image(dir: &Path, name: &str, kernel: &[u8], initrd: Option<&[u8]>, root: &[u8]) -> PathBuf {
    use hearth_image::manifest::DescribeOptions;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("vmlinux"), kernel).unwrap();
    std::fs::write(dir.join("root.img"), root).unwrap();
    let mut options = DescribeOptions::new(name, dir.join("vmlinux"), dir.join("root.img"));
    if let Some(initrd) = initrd {
        std::fs::write(dir.join("initrd.img"), initrd).unwrap();
        options.initrd = Some(dir.join("initrd.img"));
    }
    let manifest = hearth_image::Manifest::describe_files(dir, &options).unwrap();
    let path = dir.join("image.json");
    std::fs::write(&path, manifest.canonical_bytes()).unwrap();
    path
}
