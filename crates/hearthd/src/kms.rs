//! Encryption keys of encrypted volumes and snapshots: one 64-byte AES-256-XTS key per key
//! id, each in its own file (mode 0600) in a directory outside the volume and snapshot
//! stores (`<data>/kms` by default). A volume's file, and its snapshots' chunks, hold
//! ciphertext; hearthd hands the key to the agent that runs the volume (over the Sync
//! channel, TLS between hosts), which gives it to hearth-vmm in a 0600 file in the
//! instance's run directory.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Ec2Error, Ec2Result};
use crate::ids::fill_random;

/// Bytes in a key (two AES-256 keys for XTS).
pub const KEY_BYTES: usize = 64;

/// The key directory, with the keys read so far kept in memory (keys never change once
/// written, and every Sync answer for a host with encrypted volumes carries them).
#[derive(Clone)]
pub struct KeyStore {
    dir: PathBuf,
    loaded: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl std::fmt::Debug for KeyStore {
    /// The directory only: never key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn well_formed(key_id: &str) -> bool {
    // 8-4-4-4-12 lowercase hex, as KMS key ids.
    let parts: Vec<&str> = key_id.split('-').collect();
    parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(part, len)| {
            part.len() == len && part.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

impl KeyStore {
    /// Keys in `dir` (created when the first key is).
    pub fn new(dir: impl Into<PathBuf>) -> KeyStore {
        KeyStore {
            dir: dir.into(),
            loaded: Arc::default(),
        }
    }

    fn path(&self, key_id: &str) -> PathBuf {
        self.dir.join(format!("{key_id}.key"))
    }

    /// A new random key; answers its id.
    pub fn create(&self) -> Ec2Result<String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Ec2Error::io(format!("create {}", self.dir.display()), e))?;
        let mut id_bytes = [0u8; 16];
        fill_random(&mut id_bytes);
        let hex: String = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let key_id = format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        );
        let mut key = [0u8; KEY_BYTES];
        loop {
            fill_random(&mut key);
            if key[..32] != key[32..] {
                break;
            }
        }
        let path = self.path(&key_id);
        let tmp = self.dir.join(format!(".{key_id}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&key)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Ec2Error::io(format!("write the key {}", path.display()), e)
        })?;
        Ok(key_id)
    }

    /// Whether `key_id` names a key here.
    pub fn exists(&self, key_id: &str) -> bool {
        well_formed(key_id) && self.path(key_id).is_file()
    }

    /// The key bytes (read from its file once).
    pub fn load(&self, key_id: &str) -> Ec2Result<Vec<u8>> {
        if !well_formed(key_id) {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "Invalid KMS key id '{key_id}'"
            )));
        }
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = loaded.get(key_id) {
            return Ok(key.clone());
        }
        let path = self.path(key_id);
        let key = std::fs::read(&path).map_err(|e| Ec2Error::io(format!("read the key {}", path.display()), e))?;
        if key.len() != KEY_BYTES {
            return Err(Ec2Error::io(
                format!("the key {}", path.display()),
                std::io::Error::other(format!("{} bytes, expected {KEY_BYTES}", key.len())),
            ));
        }
        loaded.insert(key_id.to_string(), key.clone());
        Ok(key)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_are_private_random_and_reloadable() {
        let dir = TempDir::new("kms");
        let keys = KeyStore::new(dir.path().join("kms"));
        let a = keys.create().unwrap();
        let b = keys.create().unwrap();
        assert_ne!(a, b);
        assert!(keys.exists(&a) && well_formed(&a), "{a}");
        let key = keys.load(&a).unwrap();
        assert_eq!(key.len(), KEY_BYTES);
        assert_ne!(key, keys.load(&b).unwrap());
        let mode = std::fs::metadata(keys.path(&a)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!keys.exists("../etc/passwd"));
        assert_eq!(keys.load("nope").unwrap_err().code(), "InvalidParameterValue");
    }
}
