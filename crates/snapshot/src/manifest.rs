//! The snapshot manifest (`snapshots/<id>.json`) and chunk digests.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// The value of [`Manifest::format`] this crate writes and reads.
pub const FORMAT: &str = "hearth-snapshot/1";

/// Volume sizes (and so snapshot sizes) are multiples of this many bytes.
pub const SECTOR_BYTES: u64 = 512;

/// The SHA-256 of a chunk's content: its name in the store (`chunks/sha256/<hex>`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkDigest(pub [u8; 32]);

impl ChunkDigest {
    /// Hashes `data`.
    pub fn of(data: &[u8]) -> Self {
        ChunkDigest(Sha256::digest(data).into())
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 15)] as char);
        }
        s
    }

    /// Parses 64 lower-case hex characters (the only spelling the store uses).
    pub fn from_hex(s: &str) -> Option<Self> {
        fn nibble(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            }
        }
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(ChunkDigest(out))
    }
}

impl fmt::Display for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkDigest({})", self.to_hex())
    }
}

impl FromStr for ChunkDigest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        ChunkDigest::from_hex(s).ok_or_else(|| Error::InvalidManifest(format!("not a lower-case sha256 hex: {s:?}")))
    }
}

impl Serialize for ChunkDigest {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkDigest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        ChunkDigest::from_hex(&s).ok_or_else(|| serde::de::Error::custom(format!("not a lower-case sha256 hex: {s:?}")))
    }
}

/// A complete snapshot: which content every chunk of the volume had.
///
/// Serialized as `snapshots/<snapshot_id>.json`. Its presence in the store is what makes the snapshot exist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The snapshot's id (also the manifest's object name).
    pub snapshot_id: String,
    /// The volume the snapshot was taken from.
    pub volume_id: String,
    /// The volume's size in bytes when the snapshot was taken (a multiple of 512).
    pub volume_size: u64,
    /// The chunk size the volume was cut into.
    pub chunk_bytes: u64,
    /// One entry per chunk: `None` for an all-zero chunk (stored nowhere), else its content's SHA-256.
    pub chunks: Vec<Option<ChunkDigest>>,
    /// Whether the volume is encrypted (the chunks then hold the volume's ciphertext as-is).
    pub encrypted: bool,
    /// The key the volume is encrypted with, if any.
    pub key_id: Option<String>,
    /// The snapshot this one was taken incrementally against (informational: chunks are shared by content).
    pub parent: Option<String>,
    /// Free text.
    pub description: String,
    /// When the snapshot was started, milliseconds since the Unix epoch.
    pub start_time_ms: u64,
    /// Bytes of chunk objects this snapshot newly uploaded (0 for a copy).
    pub stored_bytes: u64,
}

/// Number of `chunk_bytes` chunks a volume of `volume_size` bytes is cut into (the last one may be short).
pub fn chunk_count(volume_size: u64, chunk_bytes: u64) -> u64 {
    volume_size.div_ceil(chunk_bytes)
}

/// Length of chunk `index` of a volume of `volume_size` bytes (0 past the end).
pub fn chunk_len(volume_size: u64, chunk_bytes: u64, index: u64) -> u64 {
    let start = index.saturating_mul(chunk_bytes);
    volume_size.saturating_sub(start).min(chunk_bytes)
}

impl Manifest {
    /// Number of chunks (`chunks.len()`).
    pub fn chunk_count(&self) -> u64 {
        self.chunks.len() as u64
    }

    /// Length in bytes of chunk `index` (the last chunk may be shorter than `chunk_bytes`).
    pub fn chunk_len(&self, index: u64) -> u64 {
        chunk_len(self.volume_size, self.chunk_bytes, index)
    }

    /// The digests of all non-zero chunks, in chunk order (with repeats if content repeats).
    pub fn referenced(&self) -> impl Iterator<Item = &ChunkDigest> + '_ {
        self.chunks.iter().flatten()
    }

    /// Bytes of volume data the snapshot holds outside zero chunks.
    pub fn data_bytes(&self) -> u64 {
        (0..self.chunk_count())
            .filter(|&i| self.chunks[i as usize].is_some())
            .map(|i| self.chunk_len(i))
            .sum()
    }

    /// Checks the manifest's internal consistency.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidManifest(format!("{}: {m}", self.snapshot_id)));
        if self.format != FORMAT {
            return bad(format!("format is {:?}, expected {FORMAT:?}", self.format));
        }
        validate_id(&self.snapshot_id).map_err(|e| Error::InvalidManifest(e.to_string()))?;
        if self.chunk_bytes == 0 || self.chunk_bytes % SECTOR_BYTES != 0 {
            return bad(format!(
                "chunk_bytes {} is not a positive multiple of {SECTOR_BYTES}",
                self.chunk_bytes
            ));
        }
        if self.volume_size % SECTOR_BYTES != 0 {
            return bad(format!(
                "volume_size {} is not a multiple of {SECTOR_BYTES}",
                self.volume_size
            ));
        }
        let expected = chunk_count(self.volume_size, self.chunk_bytes);
        if self.chunk_count() != expected {
            return bad(format!(
                "{} chunk entries for a volume of {} bytes in chunks of {} (expected {expected})",
                self.chunks.len(),
                self.volume_size,
                self.chunk_bytes
            ));
        }
        Ok(())
    }

    /// Parses and validates a manifest; `expected_id` is the id its object name says it has.
    pub fn from_json(bytes: &[u8], expected_id: Option<&str>) -> Result<Self> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::InvalidManifest(format!("{}: {e}", expected_id.unwrap_or("manifest"))))?;
        m.validate()?;
        if let Some(id) = expected_id {
            if m.snapshot_id != id {
                return Err(Error::InvalidManifest(format!(
                    "object snapshots/{id}.json holds snapshot_id {:?}",
                    m.snapshot_id
                )));
            }
        }
        Ok(m)
    }

    /// Serializes the manifest (compact JSON, one trailing newline).
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("a manifest always serializes");
        v.push(b'\n');
        v
    }
}

/// Checks that `id` can name a snapshot: 1 to 255 characters of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 255
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "snapshot id {id:?}: use 1-255 characters of [A-Za-z0-9._-], not starting with '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            snapshot_id: "snap-1".into(),
            volume_id: "vol-1".into(),
            volume_size: (1 << 20) + 512,
            chunk_bytes: 1 << 20,
            chunks: vec![Some(ChunkDigest::of(b"a")), None],
            encrypted: false,
            key_id: None,
            parent: None,
            description: "d".into(),
            start_time_ms: 7,
            stored_bytes: 1 << 20,
        }
    }

    #[test]
    fn digest_hex_round_trip_and_known_value() {
        let d = ChunkDigest::of(b"abc");
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(ChunkDigest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(ChunkDigest::from_hex(&d.to_hex().to_uppercase()), None);
        assert_eq!(ChunkDigest::from_hex("ab"), None);
    }

    #[test]
    fn manifest_json_shape_and_round_trip() {
        let m = sample();
        let json = m.to_json();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["format"], "hearth-snapshot/1");
        assert_eq!(v["chunks"][1], serde_json::Value::Null);
        assert_eq!(v["chunks"][0].as_str().unwrap().len(), 64);
        assert_eq!(v["parent"], serde_json::Value::Null);
        assert_eq!(Manifest::from_json(&json, Some("snap-1")).unwrap(), m);
        assert!(matches!(
            Manifest::from_json(&json, Some("snap-2")),
            Err(Error::InvalidManifest(_))
        ));
        assert_eq!(m.data_bytes(), 1 << 20);
        assert_eq!(m.chunk_len(1), 512);
    }

    #[test]
    fn manifest_validation_rejects_inconsistencies() {
        let mut m = sample();
        m.chunks.push(None);
        assert!(matches!(m.validate(), Err(Error::InvalidManifest(_))));
        let mut m = sample();
        m.volume_size += 1;
        assert!(matches!(m.validate(), Err(Error::InvalidManifest(_))));
        let mut m = sample();
        m.format = "hearth-snapshot/2".into();
        assert!(matches!(m.validate(), Err(Error::InvalidManifest(_))));
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["tags"] = serde_json::json!({});
        assert!(Manifest::from_json(&serde_json::to_vec(&v).unwrap(), None).is_err());
    }

    #[test]
    fn ids() {
        assert!(validate_id("snap-0123abcd").is_ok());
        for bad in ["", ".x", "a/b", "a#1", "a b", &"x".repeat(256)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chunk_arithmetic() {
        assert_eq!(chunk_count(0, 1 << 20), 0);
        assert_eq!(chunk_count(1 << 20, 1 << 20), 1);
        assert_eq!(chunk_count((1 << 20) + 512, 1 << 20), 2);
        assert_eq!(chunk_len((1 << 20) + 512, 1 << 20, 0), 1 << 20);
        assert_eq!(chunk_len((1 << 20) + 512, 1 << 20, 1), 512);
        assert_eq!(chunk_len((1 << 20) + 512, 1 << 20, 2), 0);
    }
}
