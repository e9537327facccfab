//! EC2 key pairs: create (ed25519 or RSA 2048), import an OpenSSH public key, fingerprints as EC2 shows them.
//!
//! What EC2 does, and so what this module does:
//!
//! * `CreateKeyPair` hands the private key out exactly once: ed25519 keys in the
//!   OpenSSH format (`-----BEGIN OPENSSH PRIVATE KEY-----`), RSA 2048 keys as
//!   PKCS#1 PEM (`-----BEGIN RSA PRIVATE KEY-----`). Nothing here stores it.
//! * Fingerprints of created keys: RSA is the SHA-1 of the DER-encoded PKCS#8
//!   private key, as colon-separated lowercase hex; ed25519 is `SHA256:` and the
//!   unpadded base64 SHA-256 of the public key blob, as `ssh-keygen -l` prints it.
//! * Fingerprints of imported keys: RSA is the MD5 of the DER-encoded public key
//!   (`SubjectPublicKeyInfo`), colon-separated lowercase hex; ed25519 is the same
//!   `SHA256:` form as for created keys.
//! * `ImportKeyPair` takes one OpenSSH public key line, `ssh-ed25519 AAAA… comment`
//!   or `ssh-rsa AAAA… comment` (RSA between 2048 and 4096 bits); anything else is
//!   refused with an error whose [`KeyError::code`] is the EC2 error code.
//!
//! Randomness comes from the operating system (`getrandom`).

use md5::Md5;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use sha1::{Digest, Sha1};
use ssh_key::public::KeyData;
use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, HashAlg, PrivateKey, PublicKey};
use std::fmt;

/// Modulus size of the RSA keys that [`create`] makes (EC2 creates RSA 2048 keys).
const RSA_CREATE_BITS: usize = 2048;
/// Smallest RSA modulus [`import`] accepts.
const RSA_IMPORT_MIN_BITS: usize = 2048;
/// Largest RSA modulus [`import`] accepts (EC2's largest, and the `rsa` crate's limit).
const RSA_IMPORT_MAX_BITS: usize = 4096;
/// Longest public key text [`import`] looks at; a 4096-bit `ssh-rsa` line is about 730 bytes.
const IMPORT_MAX_LEN: usize = 8 * 1024;
/// Longest user-supplied value echoed back in an error message.
const ECHO_MAX_CHARS: usize = 64;

/// SSH key types that are well formed but that EC2 does not import.
const UNSUPPORTED_SSH_TYPES: &[&str] = &[
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-ed448",
    "rsa-sha2-256",
    "rsa-sha2-512",
];

/// The kind of key pair, as EC2's `KeyType` parameter names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// An Ed25519 key pair (`ed25519`).
    Ed25519,
    /// An RSA key pair (`rsa`).
    Rsa,
}

impl KeyType {
    /// Parses EC2's `KeyType` value: exactly `ed25519` or `rsa`.
    ///
    /// Anything else is [`KeyError::InvalidKeyType`] (EC2's `InvalidParameterValue`).
    pub fn parse(s: &str) -> Result<KeyType, KeyError> {
        match s {
            "ed25519" => Ok(KeyType::Ed25519),
            "rsa" => Ok(KeyType::Rsa),
            other => Err(KeyError::InvalidKeyType(echo(other))),
        }
    }

    /// EC2's name of this key type: `ed25519` or `rsa`.
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::Rsa => "rsa",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A freshly created key pair, as `CreateKeyPair` returns it.
///
/// `private_pem` is handed to the caller once and must not be stored; the
/// [`Debug`] output of this type leaves it out.
#[derive(Clone)]
pub struct Generated {
    /// Which kind of key this is.
    pub key_type: KeyType,
    /// The private key: OpenSSH format for ed25519, PKCS#1 PEM for RSA; ends with a newline.
    pub private_pem: String,
    /// The public key as one OpenSSH line (`ssh-ed25519 AAAA…` / `ssh-rsa AAAA…`), without a comment.
    pub public_openssh: String,
    /// EC2's fingerprint of a created key: `SHA256:…` for ed25519, SHA-1 colon hex of the PKCS#8 DER for RSA.
    pub fingerprint: String,
}

impl fmt::Debug for Generated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generated")
            .field("key_type", &self.key_type)
            .field("private_pem", &"<redacted>")
            .field("public_openssh", &self.public_openssh)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// An imported public key, as `ImportKeyPair` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// Which kind of key this is.
    pub key_type: KeyType,
    /// The public key re-encoded as one OpenSSH line, `type base64 [comment]`, single-spaced, comment kept.
    pub public_openssh: String,
    /// EC2's fingerprint of an imported key: `SHA256:…` for ed25519, MD5 colon hex of the `SubjectPublicKeyInfo` DER for RSA.
    pub fingerprint: String,
}

/// Why a key pair could not be created or imported.
///
/// [`KeyError::code`] gives the EC2 error code to answer with; the `Display`
/// text is the message.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `KeyType` is neither `rsa` nor `ed25519` (EC2: `InvalidParameterValue`).
    #[error("Value ({0}) for parameter keyType is invalid. Valid values are 'rsa' and 'ed25519'.")]
    InvalidKeyType(String),
    /// The text is not one OpenSSH public key line (EC2: `InvalidKey.Format`).
    #[error("Key is not in valid OpenSSH public key format: {0}")]
    InvalidFormat(String),
    /// A well-formed SSH public key of a type EC2 does not import, e.g. `ssh-dss` (EC2: `InvalidKey.Format`).
    #[error("Key type {0} is not supported. Import an ssh-ed25519 key or an ssh-rsa key of 2048 to 4096 bits.")]
    UnsupportedKeyType(String),
    /// An `ssh-rsa` key whose modulus is shorter than 2048 or longer than 4096 bits (EC2: `InvalidKey.Format`).
    #[error("RSA key length {bits} is not supported. The key must be 2048 to 4096 bits long.")]
    RsaKeySize {
        /// Bit length of the key's modulus.
        bits: usize,
    },
    /// Making or encoding a new key failed; not the caller's fault (EC2: `InternalError`).
    #[error("key pair generation failed: {0}")]
    Generate(String),
}

impl KeyError {
    /// The EC2 error code for this error: `InvalidParameterValue`, `InvalidKey.Format` or `InternalError`.
    pub fn code(&self) -> &'static str {
        match self {
            KeyError::InvalidKeyType(_) => "InvalidParameterValue",
            KeyError::InvalidFormat(_) | KeyError::UnsupportedKeyType(_) | KeyError::RsaKeySize { .. } => {
                "InvalidKey.Format"
            }
            KeyError::Generate(_) => "InternalError",
        }
    }

    /// Whether the caller sent something wrong (HTTP 400) rather than the server failing (HTTP 500).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, KeyError::Generate(_))
    }
}

/// Creates a new key pair of `key_type`: Ed25519, or RSA with a 2048-bit modulus and exponent 65537.
///
/// RSA generation is CPU-bound (tens of milliseconds optimised, seconds in an
/// unoptimised debug build): call it from `tokio::task::spawn_blocking`.
pub fn create(key_type: KeyType) -> Result<Generated, KeyError> {
    match key_type {
        KeyType::Ed25519 => create_ed25519(),
        KeyType::Rsa => create_rsa(),
    }
}

fn create_ed25519() -> Result<Generated, KeyError> {
    let private = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).map_err(generate_err)?;
    let private_pem = private.to_openssh(ssh_key::LineEnding::LF).map_err(generate_err)?;
    let public = private.public_key();
    Ok(Generated {
        key_type: KeyType::Ed25519,
        private_pem: private_pem.as_str().to_owned(),
        public_openssh: public.to_openssh().map_err(generate_err)?,
        fingerprint: public.fingerprint(HashAlg::Sha256).to_string(),
    })
}

fn create_rsa() -> Result<Generated, KeyError> {
    let private = rsa::RsaPrivateKey::new(&mut OsRng, RSA_CREATE_BITS).map_err(generate_err)?;
    let private_pem = private.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).map_err(generate_err)?;
    let pkcs8 = private.to_pkcs8_der().map_err(generate_err)?;
    let public = ssh_key::public::RsaPublicKey::try_from(private.to_public_key()).map_err(generate_err)?;
    let public = PublicKey::new(KeyData::Rsa(public), "");
    Ok(Generated {
        key_type: KeyType::Rsa,
        private_pem: private_pem.as_str().to_owned(),
        public_openssh: public.to_openssh().map_err(generate_err)?,
        fingerprint: colon_hex(&Sha1::digest(pkcs8.as_bytes())),
    })
}

/// Imports one OpenSSH public key line, `ssh-ed25519 AAAA… [comment]` or `ssh-rsa AAAA… [comment]`.
///
/// Surrounding whitespace is ignored. Refused with a [`KeyError`] whose code is
/// `InvalidKey.Format`: empty or over-long text, more than one line,
/// `authorized_keys` options, PEM or RFC 4716 files, bad base64, a blob whose
/// type differs from the line's, other key types (DSA, ECDSA, security keys,
/// certificates), and RSA keys under 2048 or over 4096 bits.
pub fn import(public_openssh: &str) -> Result<Imported, KeyError> {
    let text = public_openssh.trim();
    if text.is_empty() {
        return Err(invalid("the key is empty"));
    }
    if text.len() > IMPORT_MAX_LEN {
        return Err(invalid("the key is too long"));
    }
    if text.starts_with("-----BEGIN") || text.starts_with("---- BEGIN SSH2") {
        return Err(invalid(
            "PEM and RFC 4716 files are not accepted; send one line such as 'ssh-ed25519 AAAA... comment'",
        ));
    }
    if text.contains(['\n', '\r']) {
        return Err(invalid("expected exactly one public key line"));
    }

    let mut fields = text.split_whitespace();
    let algorithm = fields.next().unwrap_or_default();
    let base64 = fields.next().unwrap_or_default();
    let comment = fields.collect::<Vec<_>>().join(" ");

    match algorithm {
        "ssh-ed25519" | "ssh-rsa" => {}
        other if UNSUPPORTED_SSH_TYPES.contains(&other) || other.ends_with("-cert-v01@openssh.com") => {
            return Err(KeyError::UnsupportedKeyType(other.to_owned()));
        }
        _ => {
            return Err(invalid(
                "expected a line starting with 'ssh-ed25519' or 'ssh-rsa' followed by the base64 key",
            ))
        }
    }
    if base64.is_empty() {
        return Err(invalid("the base64 key data is missing"));
    }
    if comment.chars().any(char::is_control) {
        return Err(invalid("the comment contains control characters"));
    }

    let line = if comment.is_empty() {
        format!("{algorithm} {base64}")
    } else {
        format!("{algorithm} {base64} {comment}")
    };
    let key = PublicKey::from_openssh(&line)
        .map_err(|_| invalid("the base64 key data is not a valid ssh-ed25519 or ssh-rsa public key"))?;

    let (key_type, fingerprint) = match key.key_data() {
        KeyData::Ed25519(_) => (KeyType::Ed25519, key.fingerprint(HashAlg::Sha256).to_string()),
        KeyData::Rsa(rsa_key) => (KeyType::Rsa, rsa_import_fingerprint(rsa_key)?),
        // from_openssh checks the blob's type against the line's, so this is unreachable in practice.
        other => return Err(KeyError::UnsupportedKeyType(other.algorithm().as_str().to_owned())),
    };
    Ok(Imported {
        key_type,
        public_openssh: key.to_openssh().map_err(|_| invalid("the key cannot be re-encoded"))?,
        fingerprint,
    })
}

/// Checks an imported RSA key's size and returns EC2's MD5 fingerprint of its `SubjectPublicKeyInfo` DER.
fn rsa_import_fingerprint(key: &ssh_key::public::RsaPublicKey) -> Result<String, KeyError> {
    let (Some(n), Some(e)) = (key.n.as_positive_bytes(), key.e.as_positive_bytes()) else {
        return Err(invalid("the RSA modulus and exponent must be positive"));
    };
    let n = rsa::BigUint::from_bytes_be(n);
    let bits = n.bits();
    if !(RSA_IMPORT_MIN_BITS..=RSA_IMPORT_MAX_BITS).contains(&bits) {
        return Err(KeyError::RsaKeySize { bits });
    }
    let public = rsa::RsaPublicKey::new(n, rsa::BigUint::from_bytes_be(e))
        .map_err(|_| invalid("the RSA public exponent is not valid"))?;
    debug_assert_eq!(public.n().bits(), bits);
    let der = public
        .to_public_key_der()
        .map_err(|_| invalid("the RSA key cannot be DER-encoded"))?;
    Ok(colon_hex(&Md5::digest(der.as_bytes())))
}

/// Lowercase hex bytes joined by colons, as EC2 prints MD5 and SHA-1 fingerprints.
fn colon_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn invalid(reason: &str) -> KeyError {
    KeyError::InvalidFormat(reason.to_owned())
}

fn generate_err(e: impl fmt::Display) -> KeyError {
    KeyError::Generate(e.to_string())
}

/// A user-supplied value cut to a length fit for an error message.
fn echo(s: &str) -> String {
    if s.chars().count() <= ECHO_MAX_CHARS {
        s.to_owned()
    } else {
        let mut cut: String = s.chars().take(ECHO_MAX_CHARS).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    /// One RSA key for all tests: generation is slow in a debug build.
    fn rsa_generated() -> &'static Generated {
        static KEY: OnceLock<Generated> = OnceLock::new();
        KEY.get_or_init(|| create(KeyType::Rsa).expect("create rsa"))
    }

    fn ed25519_generated() -> &'static Generated {
        static KEY: OnceLock<Generated> = OnceLock::new();
        KEY.get_or_init(|| create(KeyType::Ed25519).expect("create ed25519"))
    }

    fn assert_colon_hex(fp: &str, bytes: usize) {
        let parts: Vec<&str> = fp.split(':').collect();
        assert_eq!(parts.len(), bytes, "{fp}");
        for p in parts {
            assert_eq!(p.len(), 2, "{fp}");
            assert!(p.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')), "{fp}");
        }
    }

    fn assert_sha256_fp(fp: &str) {
        let b64 = fp.strip_prefix("SHA256:").unwrap_or_else(|| panic!("{fp}"));
        assert_eq!(b64.len(), 43, "{fp}"); // 32 bytes, unpadded base64
        assert!(
            b64.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/'),
            "{fp}"
        );
    }

    /// A scratch directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "hearthd-keypairs-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&path).expect("mkdir");
            TempDir(path)
        }

        fn write(&self, name: &str, contents: &str, mode: u32) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Whether `ssh-keygen` can run; if not, skips (prints why) or panics under CI=true.
    fn have_ssh_keygen() -> bool {
        match Command::new("ssh-keygen").arg("-?").output() {
            Ok(_) => true,
            Err(e) => {
                let reason = format!("ssh-keygen not runnable ({e}); install openssh-client");
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("{reason}");
                }
                println!("skipping: {reason}");
                false
            }
        }
    }

    fn ssh_keygen(args: &[&str]) -> String {
        let out = Command::new("ssh-keygen").args(args).output().expect("run ssh-keygen");
        assert!(
            out.status.success(),
            "ssh-keygen {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn path_str(p: &Path) -> &str {
        p.to_str().expect("utf-8 path")
    }

    /// `ssh-keygen -l -E sha256` of a public key file: the fingerprint field.
    fn ssh_keygen_sha256(pubfile: &Path) -> String {
        let out = ssh_keygen(&["-l", "-E", "sha256", "-f", path_str(pubfile)]);
        out.split_whitespace().nth(1).expect("fingerprint field").to_owned()
    }

    /// A new key made by `ssh-keygen -t <args>`: (private key text, public line).
    fn ssh_keygen_new(dir: &TempDir, name: &str, args: &[&str]) -> (String, String) {
        let path = dir.0.join(name);
        let mut all = vec!["-q", "-N", "", "-C", "user@example", "-f", path_str(&path)];
        all.extend_from_slice(args);
        ssh_keygen(&all);
        let private = std::fs::read_to_string(&path).expect("read private");
        let public = std::fs::read_to_string(path.with_extension("pub")).expect("read public");
        (private, public)
    }

    #[test]
    fn key_type_parse_and_name() {
        for t in [KeyType::Ed25519, KeyType::Rsa] {
            assert_eq!(KeyType::parse(t.as_str()).unwrap(), t);
            assert_eq!(t.to_string(), t.as_str());
        }
        for bad in ["", "RSA", "dsa", "ecdsa", "ed25519 ", "x".repeat(500).as_str()] {
            let err = KeyType::parse(bad).unwrap_err();
            assert!(matches!(err, KeyError::InvalidKeyType(_)), "{bad}");
            assert_eq!(err.code(), "InvalidParameterValue");
            assert!(err.is_client_error());
            assert!(err.to_string().len() < 200, "{err}");
        }
    }

    #[test]
    fn created_ed25519_parses_back() {
        let g = ed25519_generated();
        assert_eq!(g.key_type, KeyType::Ed25519);
        assert!(g.private_pem.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
        assert!(g.private_pem.ends_with("-----END OPENSSH PRIVATE KEY-----\n"));
        let private = PrivateKey::from_openssh(&g.private_pem).expect("parse private");
        assert_eq!(private.algorithm(), Algorithm::Ed25519);
        assert!(!private.is_encrypted());
        assert_eq!(private.public_key().to_openssh().unwrap(), g.public_openssh);
        assert!(g.public_openssh.starts_with("ssh-ed25519 AAAA"));
        assert_eq!(g.public_openssh.split(' ').count(), 2);
        // The public half is derived from the secret seed, not just stored next to it.
        let KeyData::Ed25519(public) = PublicKey::from_openssh(&g.public_openssh).unwrap().key_data().clone() else {
            panic!("not ed25519")
        };
        let seed = private
            .key_data()
            .ed25519()
            .expect("ed25519 keypair")
            .private
            .to_bytes();
        let derived = ed25519_public_from_seed(&seed);
        assert_eq!(derived, public.0);
        assert_sha256_fp(&g.fingerprint);
        assert_eq!(g.fingerprint, private.fingerprint(HashAlg::Sha256).to_string());
        assert!(!format!("{g:?}").contains("PRIVATE"));
        // Two calls make two different keys.
        let other = create(KeyType::Ed25519).unwrap();
        assert_ne!(other.public_openssh, g.public_openssh);
        assert_ne!(other.private_pem, g.private_pem);
    }

    fn ed25519_public_from_seed(seed: &[u8; 32]) -> [u8; 32] {
        let keypair = ssh_key::private::Ed25519Keypair::from_seed(seed);
        keypair.public.0
    }

    #[test]
    fn created_rsa_parses_back() {
        let g = rsa_generated();
        assert_eq!(g.key_type, KeyType::Rsa);
        assert!(g.private_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        assert!(g.private_pem.ends_with("-----END RSA PRIVATE KEY-----\n"));
        let private = rsa::RsaPrivateKey::from_pkcs1_pem(&g.private_pem).expect("parse pkcs1");
        private.validate().expect("valid rsa key");
        assert_eq!(private.n().bits(), 2048);
        assert_eq!(private.e(), &rsa::BigUint::from(65537u32));
        // The OpenSSH public line is the public half of the private key.
        let public = PublicKey::from_openssh(&g.public_openssh).expect("parse public");
        let public = rsa::RsaPublicKey::try_from(public.key_data().rsa().expect("rsa")).unwrap();
        assert_eq!(public, private.to_public_key());
        assert!(g.public_openssh.starts_with("ssh-rsa AAAA"));
        assert_eq!(g.public_openssh.split(' ').count(), 2);
        // Fingerprint: SHA-1 of the PKCS#8 DER, 20 colon-separated bytes.
        assert_colon_hex(&g.fingerprint, 20);
        let der = private.to_pkcs8_der().unwrap();
        assert_eq!(g.fingerprint, colon_hex(&Sha1::digest(der.as_bytes())));
        assert!(!format!("{g:?}").contains("PRIVATE"));
    }

    #[test]
    fn created_keys_import_back() {
        let g = ed25519_generated();
        let i = import(&g.public_openssh).unwrap();
        assert_eq!(i.key_type, KeyType::Ed25519);
        assert_eq!(i.public_openssh, g.public_openssh);
        assert_eq!(i.fingerprint, g.fingerprint, "ed25519: same SHA256 form either way");

        let g = rsa_generated();
        let i = import(&format!("  {} my key\n", g.public_openssh)).unwrap();
        assert_eq!(i.key_type, KeyType::Rsa);
        assert_eq!(i.public_openssh, format!("{} my key", g.public_openssh));
        assert_colon_hex(&i.fingerprint, 16);
        let private = rsa::RsaPrivateKey::from_pkcs1_pem(&g.private_pem).unwrap();
        let spki = private.to_public_key().to_public_key_der().unwrap();
        assert_eq!(i.fingerprint, colon_hex(&Md5::digest(spki.as_bytes())));
    }

    #[test]
    fn colon_hex_format() {
        assert_eq!(colon_hex(&[0x00, 0x0f, 0xab, 0xff]), "00:0f:ab:ff");
        assert_eq!(colon_hex(&[]), "");
    }

    #[test]
    fn ssh_keygen_derives_same_public_key() {
        if !have_ssh_keygen() {
            return;
        }
        let dir = TempDir::new();
        for g in [ed25519_generated(), rsa_generated()] {
            let key = dir.write(&format!("id_{}", g.key_type), &g.private_pem, 0o600);
            let derived = ssh_keygen(&["-y", "-f", path_str(&key)]);
            let derived: Vec<&str> = derived.split_whitespace().take(2).collect();
            let ours: Vec<&str> = g.public_openssh.split_whitespace().collect();
            assert_eq!(derived, ours, "{}", g.key_type);
        }
    }

    #[test]
    fn ssh_keygen_agrees_on_ed25519_fingerprint() {
        if !have_ssh_keygen() {
            return;
        }
        let dir = TempDir::new();
        let g = ed25519_generated();
        let pubfile = dir.write("id_ed25519.pub", &format!("{}\n", g.public_openssh), 0o644);
        assert_eq!(ssh_keygen_sha256(&pubfile), g.fingerprint);
        // ssh-keygen computes the same from the private key.
        let key = dir.write("id_ed25519", &g.private_pem, 0o600);
        assert_eq!(ssh_keygen_sha256(&key), g.fingerprint);
    }

    #[test]
    fn openssl_agrees_on_created_rsa_fingerprint() {
        // EC2 documents this fingerprint as
        // `openssl pkcs8 -in key.pem -inform PEM -outform DER -topk8 -nocrypt | openssl sha1 -c`.
        let dir = TempDir::new();
        let g = rsa_generated();
        let pem = dir.write("rsa.pem", &g.private_pem, 0o600);
        let der = dir.0.join("rsa.pk8.der");
        let status = Command::new("openssl")
            .args(["pkcs8", "-topk8", "-nocrypt", "-inform", "PEM", "-outform", "DER"])
            .args(["-in", path_str(&pem), "-out", path_str(&der)])
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => {
                println!("skipping: openssl pkcs8 not usable ({other:?})");
                return;
            }
        }
        let der = std::fs::read(der).unwrap();
        assert_eq!(colon_hex(&Sha1::digest(&der)), g.fingerprint);
    }

    #[test]
    fn imports_ssh_keygen_ed25519() {
        if !have_ssh_keygen() {
            return;
        }
        let dir = TempDir::new();
        let (_, public) = ssh_keygen_new(&dir, "ed", &["-t", "ed25519"]);
        let i = import(&public).unwrap();
        assert_eq!(i.key_type, KeyType::Ed25519);
        assert_eq!(i.public_openssh, public.trim_end());
        assert!(i.public_openssh.ends_with(" user@example"));
        assert_eq!(i.fingerprint, ssh_keygen_sha256(&dir.0.join("ed.pub")));
    }

    #[test]
    fn imports_ssh_keygen_rsa() {
        if !have_ssh_keygen() {
            return;
        }
        let dir = TempDir::new();
        for bits in ["2048", "3072", "4096"] {
            let name = format!("rsa{bits}");
            let (_, public) = ssh_keygen_new(&dir, &name, &["-t", "rsa", "-b", bits]);
            let i = import(&public).unwrap_or_else(|e| panic!("{bits}: {e}"));
            assert_eq!(i.key_type, KeyType::Rsa);
            assert_eq!(i.public_openssh, public.trim_end());
            assert_colon_hex(&i.fingerprint, 16);
            // EC2's fingerprint: MD5 of the SubjectPublicKeyInfo DER, here as ssh-keygen exports it.
            let pubfile = dir.0.join(&name).with_extension("pub");
            let spki_pem = ssh_keygen(&["-e", "-m", "PKCS8", "-f", path_str(&pubfile)]);
            let (label, der) = rsa::pkcs8::der::pem::decode_vec(spki_pem.as_bytes()).expect("pem");
            assert_eq!(label, "PUBLIC KEY");
            assert_eq!(i.fingerprint, colon_hex(&Md5::digest(&der)), "{bits}");
        }
    }

    #[test]
    fn refuses_ssh_keygen_small_rsa_and_other_types() {
        if !have_ssh_keygen() {
            return;
        }
        let dir = TempDir::new();
        let (_, public) = ssh_keygen_new(&dir, "rsa1024", &["-t", "rsa", "-b", "1024"]);
        let err = import(&public).unwrap_err();
        assert!(matches!(err, KeyError::RsaKeySize { bits: 1024 }), "{err:?}");
        assert_eq!(err.code(), "InvalidKey.Format");

        let (_, public) = ssh_keygen_new(&dir, "ecdsa", &["-t", "ecdsa"]);
        let err = import(&public).unwrap_err();
        assert!(
            matches!(err, KeyError::UnsupportedKeyType(ref t) if t == "ecdsa-sha2-nistp256"),
            "{err:?}"
        );

        // Newer OpenSSH builds cannot make DSA keys at all; the built one below covers that case.
        let dsa = dir.0.join("dsa");
        let made = Command::new("ssh-keygen")
            .args(["-q", "-N", "", "-t", "dsa", "-f", path_str(&dsa)])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if made {
            let public = std::fs::read_to_string(dsa.with_extension("pub")).unwrap();
            let err = import(&public).unwrap_err();
            assert!(
                matches!(err, KeyError::UnsupportedKeyType(ref t) if t == "ssh-dss"),
                "{err:?}"
            );
        } else {
            println!("note: this ssh-keygen cannot make DSA keys; covered by refuses_dsa");
        }

        // A private key pasted in place of the public one.
        let (private, _) = ssh_keygen_new(&dir, "ed", &["-t", "ed25519"]);
        assert!(matches!(import(&private), Err(KeyError::InvalidFormat(_))));
    }

    #[test]
    fn refuses_dsa() {
        let mpint = |b: &[u8]| ssh_key::Mpint::from_positive_bytes(b).unwrap();
        let dsa = ssh_key::public::DsaPublicKey {
            p: mpint(&[0xc3; 128]),
            q: mpint(&[0xd1; 20]),
            g: mpint(&[0x05; 128]),
            y: mpint(&[0x77; 128]),
        };
        let line = PublicKey::new(KeyData::Dsa(dsa), "old@key").to_openssh().unwrap();
        assert!(line.starts_with("ssh-dss AAAA"), "{line}");
        let err = import(&line).unwrap_err();
        assert!(
            matches!(err, KeyError::UnsupportedKeyType(ref t) if t == "ssh-dss"),
            "{err:?}"
        );
        assert_eq!(err.code(), "InvalidKey.Format");
        assert!(err.to_string().contains("ssh-dss"));

        // A DSA blob labelled ssh-rsa is refused too.
        let relabelled = line.replacen("ssh-dss", "ssh-rsa", 1);
        assert!(matches!(import(&relabelled), Err(KeyError::InvalidFormat(_))));
    }

    fn synthetic_rsa_line(bits: usize) -> String {
        // Any odd number with the top bit set passes as a modulus for parsing purposes.
        let mut n = vec![0x5au8; bits.div_ceil(8)];
        let top_bits = bits - (n.len() - 1) * 8;
        n[0] = (0xffu16 >> (8 - top_bits)) as u8 | (1 << (top_bits - 1));
        *n.last_mut().unwrap() |= 1;
        let key = ssh_key::public::RsaPublicKey {
            e: ssh_key::Mpint::from_positive_bytes(&[1, 0, 1]).unwrap(),
            n: ssh_key::Mpint::from_positive_bytes(&n).unwrap(),
        };
        PublicKey::new(KeyData::Rsa(key), "").to_openssh().unwrap()
    }

    #[test]
    fn rsa_size_limits() {
        for bits in [2048, 2049, 3072, 4095, 4096] {
            let i = import(&synthetic_rsa_line(bits)).unwrap_or_else(|e| panic!("{bits}: {e}"));
            assert_eq!(i.key_type, KeyType::Rsa);
        }
        for bits in [512, 1024, 2047, 4097, 8192] {
            let err = import(&synthetic_rsa_line(bits)).unwrap_err();
            assert!(
                matches!(err, KeyError::RsaKeySize { bits: b } if b == bits),
                "{bits}: {err:?}"
            );
            assert!(err.to_string().contains(&bits.to_string()));
        }
    }

    #[test]
    fn refuses_malformed() {
        let good = ed25519_generated().public_openssh.clone();
        let b64 = good.split(' ').nth(1).unwrap().to_owned();
        let cases = [
            String::new(),
            "   \n".to_owned(),
            "hello".to_owned(),
            "ssh-ed25519".to_owned(),
            "ssh-ed25519 ".to_owned(),
            "ssh-ed25519 not-base64!".to_owned(),
            "ssh-ed25519 AAAA".to_owned(),
            format!("ssh-ed25519 {}", &b64[..b64.len() - 8]),
            format!("ssh-rsa {b64}"),
            format!("ssh-ed25519 {b64}x"),
            format!("command=\"ls\" {good}"),
            format!("{good}\n{good}"),
            format!("{good} bad\u{7}comment"),
            format!("{good} {}", "c".repeat(IMPORT_MAX_LEN)),
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----".to_owned(),
            format!("---- BEGIN SSH2 PUBLIC KEY ----\n{b64}\n---- END SSH2 PUBLIC KEY ----"),
            b64.clone(),
        ];
        for case in &cases {
            let err = import(case).unwrap_err();
            assert!(matches!(err, KeyError::InvalidFormat(_)), "{case:?}: {err:?}");
            assert_eq!(err.code(), "InvalidKey.Format");
            assert!(err.is_client_error());
            assert!(err
                .to_string()
                .starts_with("Key is not in valid OpenSSH public key format"));
        }
        for t in [
            "ssh-dss",
            "ecdsa-sha2-nistp384",
            "sk-ssh-ed25519@openssh.com",
            "ssh-ed25519-cert-v01@openssh.com",
        ] {
            let err = import(&format!("{t} {b64}")).unwrap_err();
            assert!(
                matches!(err, KeyError::UnsupportedKeyType(ref s) if s == t),
                "{t}: {err:?}"
            );
        }
        // Extra whitespace between fields is fine and normalised.
        let i = import(&format!("\tssh-ed25519 \t {b64}   a   comment \r\n")).unwrap();
        assert_eq!(i.public_openssh, format!("ssh-ed25519 {b64} a comment"));
    }

    #[test]
    fn generate_error_is_internal() {
        let err = KeyError::Generate("boom".into());
        assert_eq!(err.code(), "InternalError");
        assert!(!err.is_client_error());
    }
}
