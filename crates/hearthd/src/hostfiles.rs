//! Files that live on an agent's host: console logs and volume files, reached through traits
//! (in `--dev` mode the agent runs on hearthd's host and they are plain local paths).

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

/// Reads an instance's serial console log.
pub trait ConsoleSource: Send + Sync {
    /// Up to the last `max_bytes` of the console of `instance_id` on `host_id`
    /// (`Ok(None)` when there is no log).
    fn read_tail(&self, host_id: &str, instance_id: &str, max_bytes: u64) -> std::io::Result<Option<Vec<u8>>>;
}

/// Console logs in an agent run directory on this host: `<run dir>/<instance-id>/console.log`.
#[derive(Debug, Clone)]
pub struct LocalConsole {
    /// The agent's run directory.
    pub run_dir: PathBuf,
}

impl ConsoleSource for LocalConsole {
    fn read_tail(&self, _host_id: &str, instance_id: &str, max_bytes: u64) -> std::io::Result<Option<Vec<u8>>> {
        let path = self.run_dir.join(instance_id).join("console.log");
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let length = file.metadata()?.len();
        file.seek(SeekFrom::Start(length.saturating_sub(max_bytes)))?;
        let mut bytes = Vec::new();
        file.take(max_bytes).read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    }
}

/// Where a volume's files are, and how to reach the VMM that runs it.
pub trait VolumeFiles: Send + Sync {
    /// The path of `volume_id`'s file on `host_id`, readable from hearthd.
    fn volume_path(&self, host_id: &str, volume_id: &str) -> PathBuf;
    /// The VMM's dirty-chunk bitmap file of `volume_id` (next to the volume file).
    fn dirty_bitmap_path(&self, host_id: &str, volume_id: &str) -> PathBuf;
    /// The control socket of `instance_id`'s VMM on `host_id`.
    fn control_socket(&self, host_id: &str, instance_id: &str) -> PathBuf;
    /// Whether hearthd can reach `host_id`'s files (the agent runs on hearthd's host).
    fn reaches(&self, host_id: &str) -> bool;
}

/// Files of an agent on this host: volumes in `<dir>/<vol-id>.img` (bitmaps in
/// `<dir>/<vol-id>.dirty`), VMM sockets in `<run dir>/<instance-id>/vmm.sock`.
#[derive(Debug, Clone)]
pub struct LocalVolumes {
    /// The agent's volume directory.
    pub dir: PathBuf,
    /// The agent's run directory.
    pub run_dir: PathBuf,
    /// The hosts whose agent runs here (empty = every host).
    pub hosts: Vec<String>,
}

impl VolumeFiles for LocalVolumes {
    fn volume_path(&self, _host_id: &str, volume_id: &str) -> PathBuf {
        self.dir.join(format!("{volume_id}.img"))
    }

    fn dirty_bitmap_path(&self, _host_id: &str, volume_id: &str) -> PathBuf {
        self.dir.join(format!("{volume_id}.dirty"))
    }

    fn control_socket(&self, _host_id: &str, instance_id: &str) -> PathBuf {
        self.run_dir.join(instance_id).join("vmm.sock")
    }

    fn reaches(&self, host_id: &str) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|h| h == host_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;

    #[test]
    fn local_console_reads_the_tail() {
        let dir = TempDir::new("console");
        std::fs::create_dir_all(dir.path().join("i-1")).unwrap();
        std::fs::write(dir.path().join("i-1/console.log"), b"0123456789").unwrap();
        let console = LocalConsole {
            run_dir: dir.path().to_path_buf(),
        };
        assert_eq!(console.read_tail("h", "i-1", 4).unwrap().unwrap(), b"6789");
        assert_eq!(console.read_tail("h", "i-1", 100).unwrap().unwrap(), b"0123456789");
        assert!(console.read_tail("h", "i-2", 4).unwrap().is_none());
    }
}
