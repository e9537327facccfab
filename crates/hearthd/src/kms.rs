//! Encryption keys of encrypted volumes and snapshots: one 64-byte AES-256-XTS key per key
//! id, each in its own file (mode 0600) in a directory outside the volume and snapshot
//! stores (`<data>/kms` by default). A volume's file, and its snapshots' chunks, hold
//! ciphertext; hearthd hands the key to the agent that runs the volume (over the Sync
//! channel, TLS between hosts), which gives it to hearth-vmm in a 0600 file in the
//! instance's run directory. A key that cannot be read fails the call that needs it
//! (`InvalidKMSKey.InvalidState`); it is never handed on empty (docs/storage.md).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Ec2Error, Ec2Result};
use crate::ids::fill_random;

/// Bytes in a key (two AES-256 keys for XTS).
pub const KEY_BYTES: usize = 64;

/// The key directory. Keys are read from their files at every use (64 bytes, no cache):
/// a key file removed or damaged takes effect at once, and every use of a missing key
/// fails closed (`InvalidKMSKey.InvalidState`), never hands on an empty key.
#[derive(Clone)]
pub struct KeyStore {
    dir: PathBuf,
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
        KeyStore { dir: dir.into() }
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

    /// The key bytes, read from its file now. A missing or unreadable file, or one that
    /// is not a usable AES-256-XTS key (64 bytes, two distinct halves), is
    /// `InvalidKMSKey.InvalidState`: never an empty key.
    pub fn load(&self, key_id: &str) -> Ec2Result<Vec<u8>> {
        if !well_formed(key_id) {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "Invalid KMS key id '{key_id}'"
            )));
        }
        let path = self.path(key_id);
        let key = std::fs::read(&path)
            .map_err(|e| Ec2Error::KmsKeyInvalidState(format!("key {key_id}: cannot read {}: {e}", path.display())))?;
        if key.len() != KEY_BYTES {
            return Err(Ec2Error::KmsKeyInvalidState(format!(
                "key {key_id}: {} holds {} bytes, expected {KEY_BYTES}",
                path.display(),
                key.len()
            )));
        }
        if key[..KEY_BYTES / 2] == key[KEY_BYTES / 2..] {
            return Err(Ec2Error::KmsKeyInvalidState(format!(
                "key {key_id}: {} is not an XTS key (equal halves)",
                path.display()
            )));
        }
        Ok(key)
    }

    /// Removes a key (a key created for a call that then failed).
    pub fn remove(&self, key_id: &str) {
        if well_formed(key_id) {
            let _ = std::fs::remove_file(self.path(key_id));
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Keys created for a call that may still fail: removed on drop unless [`NewKeys::keep`]
/// is called once the call's changes are committed (a failed RunInstances leaves no key).
pub struct NewKeys<'a> {
    keys: &'a KeyStore,
    ids: Vec<String>,
}

impl<'a> NewKeys<'a> {
    /// None yet, in `keys`.
    pub fn new(keys: &'a KeyStore) -> NewKeys<'a> {
        NewKeys { keys, ids: Vec::new() }
    }

    /// [`KeyStore::create`], remembered.
    pub fn create(&mut self) -> Ec2Result<String> {
        let id = self.keys.create()?;
        self.ids.push(id.clone());
        Ok(id)
    }

    /// The call succeeded: the keys stay.
    pub fn keep(mut self) {
        self.ids.clear();
    }
}

impl Drop for NewKeys<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            self.keys.remove(id);
        }
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

    #[test]
    fn a_missing_short_or_degenerate_key_is_an_invalid_state_even_after_a_load() {
        let dir = TempDir::new("kms-closed");
        let keys = KeyStore::new(dir.path().join("kms"));
        let id = keys.create().unwrap();
        let key = keys.load(&id).unwrap();
        let path = keys.path(&id);
        let refused = |keys: &KeyStore| {
            let error = keys.load(&id).unwrap_err();
            assert_eq!(error.code(), "InvalidKMSKey.InvalidState", "{error:?}");
            error.message()
        };
        std::fs::write(&path, &key[..63]).unwrap();
        assert!(refused(&keys).contains("63 bytes"));
        std::fs::write(&path, [7u8; 64]).unwrap();
        assert!(refused(&keys).contains("equal halves"));
        std::fs::remove_file(&path).unwrap();
        // Loaded before, gone now: refused (no copy kept in memory).
        let message = refused(&keys);
        assert!(message.contains(&id) && message.contains("cannot read"), "{message}");
        assert!(!keys.exists(&id));
        std::fs::write(&path, &key).unwrap();
        assert_eq!(keys.load(&id).unwrap(), key);
        keys.remove(&id);
        assert!(!path.exists());
    }

    #[test]
    fn new_keys_are_removed_unless_kept() {
        let dir = TempDir::new("kms-new");
        let keys = KeyStore::new(dir.path().join("kms"));
        let mut failed = NewKeys::new(&keys);
        let dropped = failed.create().unwrap();
        assert!(keys.exists(&dropped));
        drop(failed);
        assert!(!keys.exists(&dropped));
        let mut done = NewKeys::new(&keys);
        let kept = done.create().unwrap();
        done.keep();
        assert!(keys.exists(&kept));
    }
}
