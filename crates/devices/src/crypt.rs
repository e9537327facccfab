//! AES-256-XTS (IEEE 1619) over 512-byte sectors: the encryption at rest of disk images.
//!
//! The key is 64 bytes: the first 32 are the data key, the last 32 the tweak key (the layout
//! of `openssl enc -aes-256-xts -K`, dm-crypt's `aes-xts-plain64` and LUKS). Sector `n` (of
//! 512 bytes, counted from the start of the image) is encrypted with the tweak `n` as a
//! 16-byte little-endian number, whatever the request size, so every sector can be encrypted
//! or decrypted on its own: a chunk copied out of an encrypted image decrypts with its own
//! sector numbers. The format is dm-crypt's `aes-xts-plain64` with 512-byte sectors.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::Aes256;

/// Length of an XTS key: two AES-256 keys.
pub const KEY_BYTES: usize = 64;
/// The unit of encryption and of the tweak.
pub const SECTOR_BYTES: usize = 512;

/// AES blocks per sector.
const BLOCKS_PER_SECTOR: usize = SECTOR_BYTES / 16;

/// Why a key was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read key file {}: {source}", path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The key file does not hold exactly [`KEY_BYTES`] bytes.
    #[error("key file {} must hold exactly {KEY_BYTES} bytes, it holds {}", path.display(), if *more { format!("more than {len}") } else { len.to_string() })]
    FileLength {
        /// The key file.
        path: PathBuf,
        /// Bytes read.
        len: usize,
        /// The file holds more than `len` bytes.
        more: bool,
    },
    /// A key of the wrong length was given.
    #[error("an AES-256-XTS key is {KEY_BYTES} bytes, got {0}")]
    Length(usize),
    /// Both halves are the same key, which voids XTS's security (IEEE 1619 requires them
    /// to differ; OpenSSL refuses such keys too).
    #[error("the two 32-byte halves of the AES-256-XTS key are equal")]
    EqualHalves,
}

/// An AES-256-XTS cipher for whole 512-byte sectors.
#[derive(Clone)]
pub struct XtsCipher {
    data: Aes256,
    tweak: Aes256,
}

impl fmt::Debug for XtsCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("XtsCipher(AES-256-XTS)")
    }
}

impl XtsCipher {
    /// A cipher from a 64-byte key (data key, then tweak key). Refuses other lengths and
    /// keys whose halves are equal.
    pub fn new(key: &[u8]) -> Result<XtsCipher, KeyError> {
        if key.len() != KEY_BYTES {
            return Err(KeyError::Length(key.len()));
        }
        let (data, tweak) = key.split_at(KEY_BYTES / 2);
        if data == tweak {
            return Err(KeyError::EqualHalves);
        }
        Ok(XtsCipher {
            data: Aes256::new(GenericArray::from_slice(data)),
            tweak: Aes256::new(GenericArray::from_slice(tweak)),
        })
    }

    /// A cipher from a file holding exactly the 64 raw key bytes.
    pub fn from_key_file(path: impl AsRef<Path>) -> Result<XtsCipher, KeyError> {
        let path = path.as_ref();
        let read_error = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        // One byte more than a key tells a long file from a key, without reading it all.
        let mut key = Vec::with_capacity(KEY_BYTES + 1);
        file.take(KEY_BYTES as u64 + 1)
            .read_to_end(&mut key)
            .map_err(read_error)?;
        let result = if key.len() == KEY_BYTES {
            XtsCipher::new(&key)
        } else {
            Err(KeyError::FileLength {
                path: path.to_owned(),
                len: key.len().min(KEY_BYTES),
                more: key.len() > KEY_BYTES,
            })
        };
        // Do not leave the key in freed heap memory.
        key.fill(0);
        std::hint::black_box(&mut key);
        result
    }

    /// Encrypts `buf` in place; `buf[..512]` is sector `first_sector`, the next 512 bytes
    /// sector `first_sector + 1`, and so on.
    ///
    /// # Panics
    /// If `buf.len()` is not a multiple of 512.
    pub fn encrypt_sectors(&self, buf: &mut [u8], first_sector: u64) {
        self.crypt(buf, first_sector, true);
    }

    /// Decrypts `buf` in place (the inverse of [`XtsCipher::encrypt_sectors`]).
    ///
    /// # Panics
    /// If `buf.len()` is not a multiple of 512.
    ///
    /// A sector that is all zero bytes in the file (never written: a hole of a sparse
    /// volume, an all-zero chunk of a restored snapshot) reads as zeros, as an EBS volume
    /// does; a written sector is never all zero (that would take a 2^-4096 chance).
    pub fn decrypt_sectors(&self, buf: &mut [u8], first_sector: u64) {
        assert!(
            buf.len() % SECTOR_BYTES == 0,
            "XTS buffers are whole 512-byte sectors, got {} bytes",
            buf.len()
        );
        let mut start = 0;
        while start < buf.len() {
            // Runs of sectors that are not all zero are decrypted in one call.
            let mut end = start;
            while end < buf.len() && !is_zero(&buf[end..end + SECTOR_BYTES]) {
                end += SECTOR_BYTES;
            }
            if end > start {
                self.crypt(
                    &mut buf[start..end],
                    first_sector + (start / SECTOR_BYTES) as u64,
                    false,
                );
            }
            start = end + SECTOR_BYTES;
        }
    }

    fn crypt(&self, buf: &mut [u8], first_sector: u64, encrypt: bool) {
        assert!(
            buf.len() % SECTOR_BYTES == 0,
            "XTS buffers are whole 512-byte sectors, got {} bytes",
            buf.len()
        );
        let mut blocks = [GenericArray::from([0u8; 16]); BLOCKS_PER_SECTOR];
        let mut tweaks = [0u128; BLOCKS_PER_SECTOR];
        for (index, sector) in buf.chunks_exact_mut(SECTOR_BYTES).enumerate() {
            let number = u128::from(first_sector) + index as u128;
            let mut tweak = GenericArray::from(number.to_le_bytes());
            self.tweak.encrypt_block(&mut tweak);
            let mut t = u128::from_le_bytes(tweak.into());
            // XOR each block with its tweak (T_j = E_K2(n) · α^j in GF(2^128)), then run
            // the whole sector through AES at once (AES-NI pipelines the blocks).
            for ((block, tweak_j), plain) in blocks.iter_mut().zip(&mut tweaks).zip(sector.chunks_exact(16)) {
                *tweak_j = t;
                let value = u128::from_le_bytes(plain.try_into().expect("16-byte block")) ^ t;
                *block = GenericArray::from(value.to_le_bytes());
                t = times_alpha(t);
            }
            if encrypt {
                self.data.encrypt_blocks(&mut blocks);
            } else {
                self.data.decrypt_blocks(&mut blocks);
            }
            for ((block, tweak_j), out) in blocks.iter().zip(&tweaks).zip(sector.chunks_exact_mut(16)) {
                let value = u128::from_le_bytes((*block).into()) ^ tweak_j;
                out.copy_from_slice(&value.to_le_bytes());
            }
        }
        std::hint::black_box(&mut blocks);
    }
}

/// Multiplication by α (x) in GF(2^128) with IEEE 1619's little-endian convention and the
/// polynomial x^128 + x^7 + x^2 + x + 1.
fn times_alpha(t: u128) -> u128 {
    (t << 1) ^ ((t >> 127) * 0x87)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use aes::cipher::generic_array::GenericArray;
    use xts_mode::{get_tweak_default, Xts128};

    use super::*;

    fn key() -> [u8; KEY_BYTES] {
        std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11))
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 131 % 251) as u8 ^ (i >> 9) as u8).collect()
    }

    #[test]
    fn round_trip_and_sector_independence() {
        let cipher = XtsCipher::new(&key()).unwrap();
        let plain = pattern(8 * SECTOR_BYTES);
        let mut buf = plain.clone();
        cipher.encrypt_sectors(&mut buf, 1000);
        assert_ne!(buf, plain);
        // Equal plaintext in different sectors gives different ciphertext.
        let mut zeros = vec![0u8; 2 * SECTOR_BYTES];
        cipher.encrypt_sectors(&mut zeros, 7);
        assert_ne!(zeros[..SECTOR_BYTES], zeros[SECTOR_BYTES..]);
        // Any sector decrypts alone, with its own number.
        let mut third = buf[3 * SECTOR_BYTES..4 * SECTOR_BYTES].to_vec();
        cipher.decrypt_sectors(&mut third, 1003);
        assert_eq!(third, plain[3 * SECTOR_BYTES..4 * SECTOR_BYTES]);
        cipher.decrypt_sectors(&mut buf, 1000);
        assert_eq!(buf, plain);
        // The tweak is the full 64-bit sector number.
        let mut high = plain[..SECTOR_BYTES].to_vec();
        cipher.encrypt_sectors(&mut high, u64::MAX);
        let mut low = plain[..SECTOR_BYTES].to_vec();
        cipher.encrypt_sectors(&mut low, u64::MAX >> 1);
        assert_ne!(high, low);
        cipher.decrypt_sectors(&mut high, u64::MAX);
        assert_eq!(high, plain[..SECTOR_BYTES]);
    }

    #[test]
    fn matches_the_xts_mode_crate() {
        let key = key();
        let ours = XtsCipher::new(&key).unwrap();
        let theirs = Xts128::<Aes256>::new(
            Aes256::new(GenericArray::from_slice(&key[..32])),
            Aes256::new(GenericArray::from_slice(&key[32..])),
        );
        let plain = pattern(16 * SECTOR_BYTES);
        let mut a = plain.clone();
        let mut b = plain.clone();
        ours.encrypt_sectors(&mut a, 0xfff0);
        theirs.encrypt_area(&mut b, SECTOR_BYTES, 0xfff0, get_tweak_default);
        assert_eq!(a, b);
    }

    /// Encrypts one sector with OpenSSL's AES-256-XTS (libcrypto through Python's ctypes:
    /// `openssl enc` refuses XTS), IV = the sector number as 16 bytes little endian.
    const OPENSSL_XTS: &str = r#"
import ctypes, ctypes.util, sys
lib = ctypes.CDLL(ctypes.util.find_library("crypto") or "libcrypto.so.3")
lib.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
lib.EVP_aes_256_xts.restype = ctypes.c_void_p
key, iv = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2])
data = sys.stdin.buffer.read()
ctx = ctypes.c_void_p(lib.EVP_CIPHER_CTX_new())
assert lib.EVP_EncryptInit_ex(ctx, ctypes.c_void_p(lib.EVP_aes_256_xts()), None, key, iv) == 1
out, n = ctypes.create_string_buffer(len(data) + 16), ctypes.c_int(0)
assert lib.EVP_EncryptUpdate(ctx, out, ctypes.byref(n), data, len(data)) == 1
sys.stdout.buffer.write(out.raw[: n.value])
"#;

    /// Known answers from an independent implementation (OpenSSL's).
    #[test]
    fn matches_openssl() {
        use std::io::Write;
        use std::process::Stdio;
        let key = key();
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let cipher = XtsCipher::new(&key).unwrap();
        for sector in [0u64, 1, 5, 0x1234_5678_9abc, u64::MAX] {
            let plain = pattern(SECTOR_BYTES);
            let iv = hex(&u128::from(sector).to_le_bytes());
            let child = Command::new("python3")
                .args(["-c", OPENSSL_XTS, &hex(&key), &iv])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn();
            let mut child = match child {
                Ok(child) => child,
                Err(e) => {
                    assert!(std::env::var("CI").as_deref() != Ok("true"), "python3: {e}");
                    eprintln!("SKIPPED: python3 not runnable: {e}");
                    return;
                }
            };
            child.stdin.take().unwrap().write_all(&plain).unwrap();
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            let mut ours = plain.clone();
            cipher.encrypt_sectors(&mut ours, sector);
            assert_eq!(hex(&ours), hex(&output.stdout), "sector {sector}");
        }
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(matches!(XtsCipher::new(&[1; 32]), Err(KeyError::Length(32))));
        assert!(matches!(XtsCipher::new(&[1; 64]), Err(KeyError::EqualHalves)));
        let dir = std::env::temp_dir().join(format!("hearth-xts-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, [3u8; 63]).unwrap();
        let error = XtsCipher::from_key_file(&path).unwrap_err().to_string();
        assert!(error.ends_with("must hold exactly 64 bytes, it holds 63"), "{error}");
        std::fs::write(&path, [3u8; 100]).unwrap();
        let error = XtsCipher::from_key_file(&path).unwrap_err().to_string();
        assert!(error.ends_with("it holds more than 64"), "{error}");
        std::fs::write(&path, key()).unwrap();
        assert!(XtsCipher::from_key_file(&path).is_ok());
        let error = XtsCipher::from_key_file(dir.join("missing")).unwrap_err().to_string();
        assert!(error.starts_with("cannot read key file"), "{error}");
        assert_eq!(
            format!("{:?}", XtsCipher::new(&key()).unwrap()),
            "XtsCipher(AES-256-XTS)"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `cargo test --release -p hearth-devices xts_throughput -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn xts_throughput() {
        let cipher = XtsCipher::new(&key()).unwrap();
        let mut buf = vec![0x5a; 64 << 20];
        let start = std::time::Instant::now();
        cipher.encrypt_sectors(&mut buf, 0);
        let encrypt = start.elapsed();
        let start = std::time::Instant::now();
        cipher.decrypt_sectors(&mut buf, 0);
        let decrypt = start.elapsed();
        assert!(buf.iter().all(|b| *b == 0x5a));
        let mib = |d: std::time::Duration| 64.0 / d.as_secs_f64();
        eprintln!(
            "AES-256-XTS: encrypt {:.0} MiB/s, decrypt {:.0} MiB/s",
            mib(encrypt),
            mib(decrypt)
        );
        let key = key();
        let theirs = Xts128::<Aes256>::new(
            Aes256::new(GenericArray::from_slice(&key[..32])),
            Aes256::new(GenericArray::from_slice(&key[32..])),
        );
        let start = std::time::Instant::now();
        theirs.encrypt_area(&mut buf, SECTOR_BYTES, 0, get_tweak_default);
        eprintln!("xts-mode crate: encrypt {:.0} MiB/s", mib(start.elapsed()));
    }
}

/// Whether a sector is all zero bytes.
fn is_zero(sector: &[u8]) -> bool {
    sector.iter().all(|b| *b == 0)
}

#[cfg(test)]
mod zero_sector_tests {
    use super::*;

    #[test]
    fn unwritten_sectors_read_as_zeros() {
        let key: Vec<u8> = (0..64u8).collect();
        let cipher = XtsCipher::new(&key).unwrap();
        let mut plain = vec![0x5au8; 4 * SECTOR_BYTES];
        plain[SECTOR_BYTES..2 * SECTOR_BYTES].fill(0);
        let mut file = plain.clone();
        cipher.encrypt_sectors(&mut file, 10);
        // Sector 1 holds encrypted zeros (written): not all zero in the file.
        assert!(!is_zero(&file[SECTOR_BYTES..2 * SECTOR_BYTES]));
        // Sector 2 was never written: a hole.
        file[2 * SECTOR_BYTES..3 * SECTOR_BYTES].fill(0);
        cipher.decrypt_sectors(&mut file, 10);
        let mut expected = plain;
        expected[2 * SECTOR_BYTES..3 * SECTOR_BYTES].fill(0);
        assert_eq!(file, expected);
    }
}
