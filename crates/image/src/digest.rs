//! sha256 helpers shared by the manifest and the store.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{ImageError, Result};

/// Whether `s` is a sha256 digest as this crate writes them: exactly 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `digest` as 64 lowercase hex digits.
pub(crate) fn to_hex(digest: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(digest.len() * 2);
    for b in digest {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

/// The sha256 of `bytes` as lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

/// The sha256 (lowercase hex) and size in bytes of the file at `path`, read in 1 MiB pieces.
///
/// A missing file is [`ImageError::FileMissing`].
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ImageError::FileMissing(path.to_path_buf())),
        Err(e) => return Err(ImageError::io(format!("cannot open {}", path.display()), e)),
    };
    sha256_reader(&mut file, &path.display().to_string())
}

/// The sha256 (lowercase hex) and number of bytes of what `reader` yields to its end (`name`
/// in errors), read in 1 MiB pieces.
pub fn sha256_reader(reader: &mut impl Read, name: &str) -> Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ImageError::io(format!("cannot read {name}"), e)),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((to_hex(&hasher.finalize()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_of_empty_input() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(is_sha256_hex(&sha256_hex(b"abc")));
        assert!(!is_sha256_hex(
            "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
        ));
        assert!(!is_sha256_hex("abc"));
    }
}
