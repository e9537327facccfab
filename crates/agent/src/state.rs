//! `run/<instance-id>/state.json`: what the agent must remember about an instance across
//! its own restarts (generations, boot count, the last exit), written atomically.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// File name of the per-instance state in the run directory.
pub const STATE_FILE: &str = "state.json";

/// Agent state of one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceState {
    /// `start_generation` of the VMM running now (or last run).
    pub start_generation: u64,
    /// Last reboot request carried out.
    pub reboot_generation: u64,
    /// VMMs started for `start_generation`.
    pub boot_count: u32,
    /// The last VMM ended in a way that asks for a new one (guest reboot, reboot request)
    /// and none has been started yet.
    pub restart_pending: bool,
    /// hearth-vmm exit reason of the last VMM that ended (`guest-poweroff`, …).
    pub last_exit_reason: String,
    /// Its detail.
    pub last_exit_detail: String,
    /// When it ended (Unix milliseconds).
    pub last_exit_unix_ms: i64,
    /// Length of `vmm.log` when the current (or last) VMM was started: its events follow.
    pub log_offset: u64,
}

impl InstanceState {
    /// Reads `dir/state.json`; `Ok(None)` when there is none.
    pub fn load(dir: &Path) -> io::Result<Option<InstanceState>> {
        match std::fs::read(dir.join(STATE_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `dir/state.json` through a temporary file and a rename.
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        write_atomic(&dir.join(STATE_FILE), &text)
    }
}

/// Writes `path` through `path.tmp` and a rename, so readers see the old or the new file.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_a_save_and_load() {
        let dir = std::env::temp_dir().join(format!("hearth-agent-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(InstanceState::load(&dir).unwrap(), None);
        let state = InstanceState {
            start_generation: 3,
            reboot_generation: 1,
            boot_count: 2,
            restart_pending: true,
            last_exit_reason: "guest-reboot".into(),
            last_exit_detail: String::new(),
            last_exit_unix_ms: 1_700_000_000_000,
            log_offset: 812,
        };
        state.save(&dir).unwrap();
        assert_eq!(InstanceState::load(&dir).unwrap(), Some(state));
        // Fields added later default to zero: an older file still loads.
        std::fs::write(dir.join(STATE_FILE), br#"{"start_generation": 7}"#).unwrap();
        assert_eq!(InstanceState::load(&dir).unwrap().unwrap().start_generation, 7);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
