//! Key pairs: CreateKeyPair (private key returned once), ImportKeyPair, Describe, Delete.

use super::Engine;
use crate::error::{Ec2Error, Ec2Result};
use crate::filter::{self, Filter, Values};
use crate::ids::IdKind;
use crate::keypairs::{self, KeyType};
use crate::model::{KeyPair, Tags};
use crate::store::Changes;

/// A created key pair with its private key.
#[derive(Debug, Clone)]
pub struct CreatedKeyPair {
    /// The stored public half.
    pub key_pair: KeyPair,
    /// The private key, never stored.
    pub private_key: String,
}

const KEY_FILTERS: &[&str] = &["key-name", "key-pair-id", "fingerprint", "key-type"];

fn check_key_name(name: &str) -> Ec2Result<()> {
    if name.is_empty() {
        return Err(Ec2Error::MissingParameter("KeyName".into()));
    }
    if name.len() > 255 || !name.is_ascii() || name.chars().any(|c| c.is_ascii_control()) {
        return Err(Ec2Error::InvalidParameterValue(format!(
            "Invalid key name '{name}': up to 255 printable ASCII characters"
        )));
    }
    Ok(())
}

impl Engine {
    fn add_key_pair(&self, key_pair: KeyPair) -> Ec2Result<()> {
        let mut inner = self.lock();
        if inner.state.key_pairs.contains_key(&key_pair.name) {
            return Err(Ec2Error::KeyPairDuplicate(key_pair.name));
        }
        self.commit(
            &mut inner,
            Changes {
                key_pairs: vec![key_pair],
                ..Changes::default()
            },
        )
    }

    fn check_new_key_name(&self, name: &str) -> Ec2Result<()> {
        check_key_name(name)?;
        if self.lock().state.key_pairs.contains_key(name) {
            return Err(Ec2Error::KeyPairDuplicate(name.to_string()));
        }
        Ok(())
    }

    /// CreateKeyPair: generates a key (`ed25519` by default) and returns its private half once.
    pub fn create_key_pair(&self, name: &str, key_type: &str, dry_run: bool) -> Ec2Result<CreatedKeyPair> {
        self.check_new_key_name(name)?;
        let key_type = if key_type.is_empty() {
            KeyType::Ed25519
        } else {
            KeyType::parse(key_type)?
        };
        if dry_run {
            return Err(Ec2Error::DryRunOperation);
        }
        let generated = keypairs::create(key_type)?;
        let key_pair = KeyPair {
            name: name.to_string(),
            id: IdKind::KeyPair.generate(),
            key_type: key_type.as_str().to_string(),
            fingerprint: generated.fingerprint,
            public_key: generated.public_openssh,
            create_time_ms: self.now(),
            tags: Tags::new(),
        };
        self.add_key_pair(key_pair.clone())?;
        Ok(CreatedKeyPair {
            key_pair,
            private_key: generated.private_pem,
        })
    }

    /// ImportKeyPair: stores an OpenSSH public key.
    pub fn import_key_pair(&self, name: &str, public_key: &str, dry_run: bool) -> Ec2Result<KeyPair> {
        self.check_new_key_name(name)?;
        if public_key.trim().is_empty() {
            return Err(Ec2Error::MissingParameter("PublicKeyMaterial".into()));
        }
        let imported = keypairs::import(public_key)?;
        if dry_run {
            return Err(Ec2Error::DryRunOperation);
        }
        let key_pair = KeyPair {
            name: name.to_string(),
            id: IdKind::KeyPair.generate(),
            key_type: imported.key_type.as_str().to_string(),
            fingerprint: imported.fingerprint,
            public_key: imported.public_openssh,
            create_time_ms: self.now(),
            tags: Tags::new(),
        };
        self.add_key_pair(key_pair.clone())?;
        Ok(key_pair)
    }

    /// DescribeKeyPairs: all, or those named (each must exist), filtered.
    pub fn describe_key_pairs(&self, names: &[String], filters: &[Filter]) -> Ec2Result<Vec<KeyPair>> {
        filter::check_names(filters, KEY_FILTERS)?;
        let inner = self.lock();
        let key_pairs = &inner.state.key_pairs;
        if let Some(missing) = names.iter().find(|name| !key_pairs.contains_key(name.as_str())) {
            return Err(Ec2Error::KeyPairNotFound(missing.clone()));
        }
        Ok(key_pairs
            .values()
            .filter(|key| names.is_empty() || names.contains(&key.name))
            .filter(|key| {
                filter::matches(filters, &key.tags, |name| {
                    Some(Values::One(match name {
                        "key-name" => key.name.clone(),
                        "key-pair-id" => key.id.clone(),
                        "fingerprint" => key.fingerprint.clone(),
                        "key-type" => key.key_type.clone(),
                        _ => return None,
                    }))
                })
            })
            .cloned()
            .collect())
    }

    /// DeleteKeyPair: succeeds whether or not the key exists, as in EC2.
    pub fn delete_key_pair(&self, name: &str, dry_run: bool) -> Ec2Result<()> {
        check_key_name(name)?;
        if dry_run {
            return Err(Ec2Error::DryRunOperation);
        }
        let mut inner = self.lock();
        if !inner.state.key_pairs.contains_key(name) {
            return Ok(());
        }
        self.commit(
            &mut inner,
            Changes {
                deleted_key_pairs: vec![name.to_string()],
                ..Changes::default()
            },
        )
    }
}
