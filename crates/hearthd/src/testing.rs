//! Test helpers: a temporary directory removed on drop.

use std::path::{Path, PathBuf};

/// A fresh directory under the system temp dir, removed with everything in it on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `hearthd-<label>-<random>`.
    pub fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("hearthd-{label}-{}", crate::ids::random_hex(6)));
        std::fs::create_dir_all(&path).expect("create a temp dir");
        TempDir(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
