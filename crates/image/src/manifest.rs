//! The image manifest `image.json`: format `hearth-image/1`.
//!
//! ```json
//! {
//!   "format": "hearth-image/1",
//!   "name": "minimal",
//!   "description": "free text",
//!   "architecture": "x86_64",
//!   "root_device_name": "/dev/xvda",
//!   "root_device_type": "ebs",
//!   "command_line": "console=ttyS0 reboot=k panic=1 root=/dev/vda rw",
//!   "kernel": {"path": "vmlinux", "sha256": "<64 lowercase hex>", "size": 123},
//!   "initrd": null,
//!   "root": {"path": "root.img", "sha256": "<64 lowercase hex>", "size": 456},
//!   "block_device_mappings": [
//!     {"device_name": "/dev/xvdb", "virtual_name": "ephemeral0"},
//!     {"device_name": "/dev/sdf", "ebs": {"volume_size_gib": 1, "delete_on_termination": true, "volume_type": "gp3"}}
//!   ]
//! }
//! ```
//!
//! File paths are relative to the manifest's directory, `/`-separated, without `.` or `..` components.
//! `initrd` may be `null` or absent; `description`, `command_line` and `block_device_mappings` may be absent.
//! Unknown fields are refused, so that a misspelt field is an error rather than silently ignored.
//! [`Manifest::parse`] and [`Manifest::load`] validate; [`Manifest::describe_files`] builds a manifest from files.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{is_sha256_hex, sha256_file, sha256_hex};
use crate::error::{ImageError, Result};

/// The value of `format` this crate reads and writes.
pub const FORMAT: &str = "hearth-image/1";

/// The only architecture hearth runs.
pub const ARCHITECTURE: &str = "x86_64";

/// The root device name when none is given.
pub const DEFAULT_ROOT_DEVICE_NAME: &str = "/dev/xvda";

/// The kernel command line when none is given: serial console, reboot on panic, root on the first virtio disk.
pub const DEFAULT_COMMAND_LINE: &str = "console=ttyS0 reboot=k panic=1 root=/dev/vda rw";

/// The EBS volume types a mapping may name.
pub const VOLUME_TYPES: [&str; 7] = ["standard", "gp2", "gp3", "io1", "io2", "st1", "sc1"];

/// Longest kernel command line accepted (x86's COMMAND_LINE_SIZE less the terminating NUL).
const MAX_COMMAND_LINE: usize = 2047;

/// The largest EBS volume, in GiB.
const MAX_VOLUME_GIB: u64 = 16384;

/// A parsed, validated `image.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The image name (1 to 128 characters, no control characters).
    pub name: String,
    /// Free text (at most 255 characters).
    #[serde(default)]
    pub description: String,
    /// Always [`ARCHITECTURE`].
    pub architecture: String,
    /// The device name the root disk is attached as, e.g. `/dev/xvda`.
    pub root_device_name: String,
    /// Whether the root disk is a (persistent) EBS volume or instance store.
    pub root_device_type: RootDeviceType,
    /// The kernel command line.
    #[serde(default)]
    pub command_line: String,
    /// The kernel (an uncompressed `vmlinux` ELF or a bzImage).
    pub kernel: FileRef,
    /// The initial ramdisk, if any.
    #[serde(default)]
    pub initrd: Option<FileRef>,
    /// The root disk image (raw).
    pub root: FileRef,
    /// Further devices attached at launch.
    #[serde(default)]
    pub block_device_mappings: Vec<BlockDeviceMapping>,
}

/// One file of an image: where it is and what it must contain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// Relative to the manifest's directory, `/`-separated.
    pub path: String,
    /// The sha256 of the content, 64 lowercase hex digits.
    pub sha256: String,
    /// The size in bytes.
    pub size: u64,
}

/// `root_device_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub enum RootDeviceType {
    /// `"ebs"`: the root disk becomes an EBS volume that outlives stop/start.
    #[serde(rename = "ebs")]
    Ebs,
    /// `"instance-store"`: the root disk lives and dies with the instance.
    #[serde(rename = "instance-store")]
    InstanceStore,
}

impl RootDeviceType {
    /// The manifest spelling: `ebs` or `instance-store`.
    pub fn as_str(self) -> &'static str {
        match self {
            RootDeviceType::Ebs => "ebs",
            RootDeviceType::InstanceStore => "instance-store",
        }
    }
}

impl TryFrom<String> for RootDeviceType {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse().map_err(|e: ImageError| match e {
            ImageError::ManifestInvalid(why) => why,
            other => other.to_string(),
        })
    }
}

impl std::str::FromStr for RootDeviceType {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ebs" => Ok(RootDeviceType::Ebs),
            "instance-store" => Ok(RootDeviceType::InstanceStore),
            other => Err(ImageError::ManifestInvalid(format!(
                "root_device_type {other:?} is neither \"ebs\" nor \"instance-store\""
            ))),
        }
    }
}

/// One entry of `block_device_mappings`: exactly one of `virtual_name` and `ebs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDeviceMapping {
    /// The device name, starting with `/dev/`.
    pub device_name: String,
    /// An instance store volume: `ephemeral0` to `ephemeral23`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_name: Option<String>,
    /// A fresh, empty EBS volume created at launch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebs: Option<EbsMapping>,
}

/// The `ebs` of a block device mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EbsMapping {
    /// Size in GiB, 1 to 16384.
    pub volume_size_gib: u64,
    /// Whether terminating the instance deletes the volume (default true).
    #[serde(default = "default_true")]
    pub delete_on_termination: bool,
    /// One of [`VOLUME_TYPES`] (default `gp3`).
    #[serde(default = "default_volume_type")]
    pub volume_type: String,
}

fn default_true() -> bool {
    true
}

fn default_volume_type() -> String {
    "gp3".to_string()
}

impl std::str::FromStr for BlockDeviceMapping {
    type Err = ImageError;

    /// `DEVICE=ephemeralN` or `DEVICE=ebs:SIZE_GIB[:DELETE_ON_TERMINATION[:VOLUME_TYPE]]`,
    /// e.g. `/dev/xvdb=ephemeral0`, `/dev/sdf=ebs:1:true:gp3`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| ImageError::ManifestInvalid(format!("block device mapping {s:?}: {why}"));
        let (device, what) = s
            .split_once('=')
            .ok_or_else(|| bad("expected DEVICE=ephemeralN or DEVICE=ebs:SIZE"))?;
        let mapping = if let Some(ebs) = what.strip_prefix("ebs:") {
            let mut parts = ebs.split(':');
            let size = parts.next().unwrap_or_default();
            let volume_size_gib = size
                .parse()
                .map_err(|_| bad("the EBS size is not a whole number of GiB"))?;
            let delete_on_termination = match parts.next() {
                None | Some("") => true,
                Some("true") => true,
                Some("false") => false,
                Some(_) => return Err(bad("delete-on-termination must be true or false")),
            };
            let volume_type = parts.next().filter(|t| !t.is_empty()).unwrap_or("gp3").to_string();
            if parts.next().is_some() {
                return Err(bad("too many fields after ebs:"));
            }
            BlockDeviceMapping {
                device_name: device.to_string(),
                virtual_name: None,
                ebs: Some(EbsMapping {
                    volume_size_gib,
                    delete_on_termination,
                    volume_type,
                }),
            }
        } else {
            BlockDeviceMapping {
                device_name: device.to_string(),
                virtual_name: Some(what.to_string()),
                ebs: None,
            }
        };
        mapping.validate()?;
        Ok(mapping)
    }
}

impl BlockDeviceMapping {
    fn validate(&self) -> Result<()> {
        check_device_name("block_device_mappings device_name", &self.device_name)?;
        let bad =
            |why: String| ImageError::ManifestInvalid(format!("block device mapping {}: {why}", self.device_name));
        match (&self.virtual_name, &self.ebs) {
            (Some(_), Some(_)) => Err(bad("has both virtual_name and ebs".into())),
            (None, None) => Err(bad("has neither virtual_name nor ebs".into())),
            (Some(name), None) => {
                let index = name.strip_prefix("ephemeral").and_then(|n| n.parse::<u32>().ok());
                match index {
                    Some(i) if i <= 23 && name == &format!("ephemeral{i}") => Ok(()),
                    _ => Err(bad(format!("virtual_name {name:?} is not ephemeral0 to ephemeral23"))),
                }
            }
            (None, Some(ebs)) => {
                if !(1..=MAX_VOLUME_GIB).contains(&ebs.volume_size_gib) {
                    return Err(bad(format!(
                        "ebs volume_size_gib {} is not between 1 and {MAX_VOLUME_GIB}",
                        ebs.volume_size_gib
                    )));
                }
                if !VOLUME_TYPES.contains(&ebs.volume_type.as_str()) {
                    return Err(bad(format!(
                        "ebs volume_type {:?} is not one of {}",
                        ebs.volume_type,
                        VOLUME_TYPES.join(", ")
                    )));
                }
                Ok(())
            }
        }
    }
}

/// What [`Manifest::describe_files`] needs besides the files' content.
#[derive(Debug, Clone)]
pub struct DescribeOptions {
    /// The image name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// The root device name (default [`DEFAULT_ROOT_DEVICE_NAME`]).
    pub root_device_name: String,
    /// The root device type (default EBS).
    pub root_device_type: RootDeviceType,
    /// The kernel command line (default [`DEFAULT_COMMAND_LINE`]).
    pub command_line: String,
    /// The kernel file (absolute, or relative to the current directory).
    pub kernel: PathBuf,
    /// The initrd file, if any.
    pub initrd: Option<PathBuf>,
    /// The root disk image file.
    pub root: PathBuf,
    /// Further block device mappings.
    pub block_device_mappings: Vec<BlockDeviceMapping>,
}

impl DescribeOptions {
    /// Options with the defaults for everything but the name, kernel and root disk.
    pub fn new(name: impl Into<String>, kernel: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Self {
        DescribeOptions {
            name: name.into(),
            description: String::new(),
            root_device_name: DEFAULT_ROOT_DEVICE_NAME.to_string(),
            root_device_type: RootDeviceType::Ebs,
            command_line: DEFAULT_COMMAND_LINE.to_string(),
            kernel: kernel.into(),
            initrd: None,
            root: root.into(),
            block_device_mappings: Vec::new(),
        }
    }
}

/// What [`Manifest::verify_files`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifySummary {
    /// How many files were hashed.
    pub files: usize,
    /// Their total size in bytes.
    pub total_bytes: u64,
}

impl Manifest {
    /// Parses and validates manifest JSON.
    pub fn parse(json: &str) -> Result<Manifest> {
        let manifest: Manifest = serde_json::from_str(json)
            .map_err(|e| ImageError::ManifestInvalid(format!("not valid manifest JSON: {e}")))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Reads, parses and validates the manifest file at `path`.
    pub fn load(path: &Path) -> Result<Manifest> {
        let json = match std::fs::read_to_string(path) {
            Ok(json) => json,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ImageError::FileMissing(path.into())),
            Err(e) => return Err(ImageError::io(format!("cannot read {}", path.display()), e)),
        };
        Manifest::parse(&json).map_err(|e| match e {
            ImageError::ManifestInvalid(why) => ImageError::ManifestInvalid(format!("{}: {why}", path.display())),
            other => other,
        })
    }

    /// The manifest as pretty-printed JSON (two-space indent, fields in the documented order, no final newline).
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest always serializes")
    }

    /// The exact bytes the image store keeps for this manifest: [`Manifest::to_json_pretty`] and a newline.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut bytes = self.to_json_pretty().into_bytes();
        bytes.push(b'\n');
        bytes
    }

    /// The manifest digest: the sha256 (lowercase hex) of [`Manifest::canonical_bytes`], which names the manifest
    /// in the image store.
    pub fn digest(&self) -> String {
        sha256_hex(&self.canonical_bytes())
    }

    /// The image's files with their roles: `kernel`, then `initrd` if any, then `root`.
    pub fn files(&self) -> Vec<(&'static str, &FileRef)> {
        let mut files = vec![("kernel", &self.kernel)];
        if let Some(initrd) = &self.initrd {
            files.push(("initrd", initrd));
        }
        files.push(("root", &self.root));
        files
    }

    /// The sum of the files' sizes.
    pub fn total_bytes(&self) -> u64 {
        self.files().iter().map(|(_, f)| f.size).sum()
    }

    /// Checks every rule of the format; the error names the offending field.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(ImageError::ManifestInvalid(why));
        if self.format != FORMAT {
            return bad(format!(
                "unknown format version {:?} (this hearth reads {FORMAT:?})",
                self.format
            ));
        }
        if self.name.trim().is_empty() {
            return bad("name is empty".into());
        }
        if self.name.chars().count() > 128 {
            return bad("name is longer than 128 characters".into());
        }
        if self.name.chars().any(char::is_control) {
            return bad("name contains control characters".into());
        }
        if self.description.chars().count() > 255 {
            return bad("description is longer than 255 characters".into());
        }
        if self.architecture != ARCHITECTURE {
            return bad(format!(
                "architecture {:?} is not supported (only {ARCHITECTURE:?})",
                self.architecture
            ));
        }
        check_device_name("root_device_name", &self.root_device_name)?;
        if self.command_line.len() > MAX_COMMAND_LINE {
            return bad(format!("command_line is longer than {MAX_COMMAND_LINE} bytes"));
        }
        if self.command_line.chars().any(char::is_control) {
            return bad("command_line contains control characters (newlines, tabs, NUL)".into());
        }
        for (role, file) in self.files() {
            file.validate(role)?;
        }
        let mut names = HashSet::new();
        for mapping in &self.block_device_mappings {
            mapping.validate()?;
            if mapping.device_name == self.root_device_name {
                return bad(format!(
                    "block device mapping {} uses the root device name",
                    mapping.device_name
                ));
            }
            if !names.insert(mapping.device_name.as_str()) {
                return bad(format!("device name {} is mapped twice", mapping.device_name));
            }
        }
        Ok(())
    }

    /// Builds a manifest for files in `dir` (the directory the manifest will be written to), hashing each.
    ///
    /// The files must be inside `dir` or below it; their paths in the manifest are relative to `dir`.
    pub fn describe_files(dir: &Path, options: &DescribeOptions) -> Result<Manifest> {
        let describe = |file: &Path| -> Result<FileRef> {
            let path = relative_to(dir, file)?;
            let (sha256, size) = sha256_file(file)?;
            Ok(FileRef { path, sha256, size })
        };
        let manifest = Manifest {
            format: FORMAT.to_string(),
            name: options.name.clone(),
            description: options.description.clone(),
            architecture: ARCHITECTURE.to_string(),
            root_device_name: options.root_device_name.clone(),
            root_device_type: options.root_device_type,
            command_line: options.command_line.clone(),
            kernel: describe(&options.kernel)?,
            initrd: options.initrd.as_deref().map(describe).transpose()?,
            root: describe(&options.root)?,
            block_device_mappings: options.block_device_mappings.clone(),
        };
        manifest.validate()?;
        Ok(manifest)
    }

    /// Re-hashes every file (paths relative to `dir`) and compares digest and size with the manifest.
    ///
    /// Fails with [`ImageError::FileMissing`], [`ImageError::SizeMismatch`] or [`ImageError::ChecksumMismatch`]
    /// naming the first bad file.
    pub fn verify_files(&self, dir: &Path) -> Result<VerifySummary> {
        let mut summary = VerifySummary {
            files: 0,
            total_bytes: 0,
        };
        for (_, file) in self.files() {
            let path = file.local_path(dir);
            let (sha256, size) = sha256_file(&path)?;
            let name = path.display().to_string();
            if size != file.size {
                return Err(ImageError::SizeMismatch {
                    file: name,
                    expected: file.size,
                    actual: size,
                });
            }
            if sha256 != file.sha256 {
                return Err(ImageError::ChecksumMismatch {
                    file: name,
                    expected: file.sha256.clone(),
                    actual: sha256,
                });
            }
            summary.files += 1;
            summary.total_bytes += size;
        }
        Ok(summary)
    }
}

impl FileRef {
    /// The file's location for a manifest in `dir`.
    pub fn local_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.path)
    }

    fn validate(&self, role: &str) -> Result<()> {
        check_relative_path(role, &self.path)?;
        if !is_sha256_hex(&self.sha256) {
            return Err(ImageError::ManifestInvalid(format!(
                "{role} sha256 {:?} is not 64 lowercase hex digits",
                self.sha256
            )));
        }
        Ok(())
    }
}

fn check_device_name(field: &str, name: &str) -> Result<()> {
    let rest = name.strip_prefix("/dev/").unwrap_or_default();
    if rest.is_empty()
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'_' || b == b'-')
    {
        return Err(ImageError::ManifestInvalid(format!(
            "{field} {name:?} is not a device name like /dev/xvda"
        )));
    }
    Ok(())
}

/// A manifest file path: relative, `/`-separated, each component a plain name.
fn check_relative_path(role: &str, path: &str) -> Result<()> {
    let bad = |why: &str| Err(ImageError::ManifestInvalid(format!("{role} path {path:?} {why}")));
    if path.is_empty() {
        return bad("is empty");
    }
    if path.starts_with('/') {
        return bad("is absolute (paths are relative to the manifest's directory)");
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return bad("contains control characters or backslashes");
    }
    for part in path.split('/') {
        match part {
            "" => return bad("has an empty component"),
            "." => return bad("has a '.' component"),
            ".." => return bad("leaves the manifest's directory ('..')"),
            _ => {}
        }
    }
    Ok(())
}

/// `file`'s path relative to `dir`, `/`-separated; an error if it is not inside `dir`.
fn relative_to(dir: &Path, file: &Path) -> Result<String> {
    let lexical = std::path::absolute(dir)
        .and_then(|d| std::path::absolute(file).map(|f| (d, f)))
        .ok()
        .and_then(|(d, f)| f.strip_prefix(&d).ok().map(Path::to_path_buf));
    let relative = match lexical {
        Some(relative)
            if relative
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_))) =>
        {
            relative
        }
        _ => {
            let canonical = |p: &Path| match std::fs::canonicalize(p) {
                Ok(p) => Ok(p),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ImageError::FileMissing(p.into())),
                Err(e) => Err(ImageError::io(format!("cannot resolve {}", p.display()), e)),
            };
            let (d, f) = (canonical(dir)?, canonical(file)?);
            match f.strip_prefix(&d) {
                Ok(relative) => relative.to_path_buf(),
                Err(_) => {
                    return Err(ImageError::ManifestInvalid(format!(
                        "{} is not inside the manifest's directory {}",
                        file.display(),
                        dir.display()
                    )))
                }
            }
        }
    };
    let parts: Option<Vec<&str>> = relative.components().map(|c| c.as_os_str().to_str()).collect();
    match parts {
        Some(parts) if !parts.is_empty() => Ok(parts.join("/")),
        _ => Err(ImageError::ManifestInvalid(format!(
            "{} is not a file path inside {} in UTF-8",
            file.display(),
            dir.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_shorthand() {
        let m: BlockDeviceMapping = "/dev/xvdb=ephemeral0".parse().unwrap();
        assert_eq!(m.virtual_name.as_deref(), Some("ephemeral0"));
        let m: BlockDeviceMapping = "/dev/sdf=ebs:1:false:io2".parse().unwrap();
        assert_eq!(
            m.ebs,
            Some(EbsMapping {
                volume_size_gib: 1,
                delete_on_termination: false,
                volume_type: "io2".into()
            })
        );
        let m: BlockDeviceMapping = "/dev/sdg=ebs:8".parse().unwrap();
        assert_eq!(m.ebs.unwrap().volume_type, "gp3");
        for bad in [
            "/dev/sdf",
            "/dev/sdf=ephemeral24",
            "sdf=ephemeral0",
            "/dev/sdf=ebs:x",
            "/dev/sdf=ebs:0",
        ] {
            assert!(bad.parse::<BlockDeviceMapping>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn relative_paths() {
        assert!(check_relative_path("kernel", "boot/vmlinux").is_ok());
        for bad in ["", "/vmlinux", "../vmlinux", "a/../b", "./a", "a//b", "a/"] {
            assert!(check_relative_path("kernel", bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            relative_to(Path::new("/x/y"), Path::new("/x/y/boot/vmlinux")).unwrap(),
            "boot/vmlinux"
        );
    }
}
