//! The per-instance metadata disk in cloud-init's NoCloud format.
//!
//! cloud-init's NoCloud datasource looks for a filesystem labelled `cidata` and reads `meta-data`, `user-data`,
//! and optionally `network-config` and `vendor-data` from its root directory. [`write_disk`] builds that disk as a
//! FAT image with the `fatfs` crate, entirely in Rust (no loop mounts, no mkfs). The label `cidata` is
//! in the boot sector and in the root directory's volume-label entry (which `blkid` prefers).
//!
//! [`render_network_config`] renders a cloud-init network config (version 2) for a static address or DHCP.

use std::io::{Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use fatfs::{FileSystem, FormatVolumeOptions, FsOptions};
use sha2::{Digest, Sha256};

use crate::error::{ImageError, Result};

/// The volume label cloud-init's NoCloud datasource looks for.
pub const LABEL: &str = "cidata";

const MIB: u64 = 1 << 20;

/// The content of one instance's metadata disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seed {
    /// `instance-id` in `meta-data` (cloud-init reruns its per-instance modules when it changes).
    pub instance_id: String,
    /// `local-hostname` in `meta-data`.
    pub hostname: String,
    /// OpenSSH public keys (`ssh-ed25519 AAAA... comment`), one line each, listed as `public-keys`.
    pub public_keys: Vec<String>,
    /// `user-data`, byte for byte (a `#cloud-config`, a script, MIME multipart, ...); may be empty.
    pub user_data: Vec<u8>,
    /// `network-config`: cloud-init network config YAML (see [`render_network_config`]); absent when `None`.
    pub network_config: Option<String>,
    /// `vendor-data`, byte for byte; absent when `None`.
    pub vendor_data: Option<Vec<u8>>,
}

impl Seed {
    /// Checks that every field can be written: non-empty single-line id and hostname, single-line keys.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(ImageError::SeedInvalid(why));
        for (field, value) in [("instance id", &self.instance_id), ("hostname", &self.hostname)] {
            if value.trim().is_empty() {
                return bad(format!("the {field} is empty"));
            }
            if value.chars().any(char::is_control) {
                return bad(format!("the {field} {value:?} contains control characters"));
            }
        }
        for key in &self.public_keys {
            if key.trim().is_empty() {
                return bad("a public key is empty".into());
            }
            if key.contains(['\n', '\r']) {
                return bad("a public key spans several lines (expected one OpenSSH public key line)".into());
            }
            if key.chars().any(char::is_control) {
                return bad("a public key contains control characters".into());
            }
        }
        Ok(())
    }

    /// The `meta-data` file: YAML with `instance-id`, `local-hostname` and `public-keys` (a list), every value a
    /// double-quoted YAML string.
    pub fn meta_data(&self) -> Result<String> {
        self.validate()?;
        let mut yaml = format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            yaml_quote(&self.instance_id),
            yaml_quote(&self.hostname)
        );
        if !self.public_keys.is_empty() {
            yaml.push_str("public-keys:\n");
            for key in &self.public_keys {
                yaml.push_str("  - ");
                yaml.push_str(&yaml_quote(key.trim()));
                yaml.push('\n');
            }
        }
        Ok(yaml)
    }

    /// The files of the disk, in order: name and content.
    fn files(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let mut files = vec![
            ("meta-data", self.meta_data()?.into_bytes()),
            ("user-data", self.user_data.clone()),
        ];
        if let Some(network) = &self.network_config {
            files.push(("network-config", network.clone().into_bytes()));
        }
        if let Some(vendor) = &self.vendor_data {
            files.push(("vendor-data", vendor.clone()));
        }
        Ok(files)
    }
}

/// `s` as a YAML double-quoted scalar (escaping `\`, `"` and control characters).
fn yaml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes the NoCloud disk for `seed` to `path` (replacing any file there) and returns its size in bytes.
///
/// The image is a whole number of MiB, at least 1 MiB: the smallest that fits the files. It is written to a
/// temporary file next to `path`, synced and renamed over `path`, so a half-written disk never exists there.
pub fn write_disk(seed: &Seed, path: &Path) -> Result<u64> {
    let files = seed.files()?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| ImageError::SeedInvalid(format!("{} is not a file path", path.display())))?;
    let temp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        crate::store::unique_suffix()
    ));
    let result = write_disk_to(&files, &seed.instance_id, &temp).and_then(|size| {
        std::fs::rename(&temp, path)
            .map_err(|e| ImageError::io(format!("cannot rename {} to {}", temp.display(), path.display()), e))?;
        Ok(size)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

fn write_disk_to(files: &[(&'static str, Vec<u8>)], instance_id: &str, temp: &Path) -> Result<u64> {
    let io = |what: &str, e| ImageError::io(format!("{what} {}", temp.display()), e);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(temp)
        .map_err(|e| io("cannot create", e))?;
    // Each file takes whole clusters (at most 4 KiB below 128 MiB); add room for the FATs and root directory.
    let content: u64 = files
        .iter()
        .map(|(_, data)| (data.len() as u64).div_ceil(4096) * 4096)
        .sum();
    let mut size = (content + content / 16 + 256 * 1024).div_ceil(MIB).max(1) * MIB;
    loop {
        file.set_len(0)
            .and_then(|()| file.set_len(size))
            .map_err(|e| io("cannot size", e))?;
        file.seek(SeekFrom::Start(0)).map_err(|e| io("cannot seek", e))?;
        match format_and_fill(&mut file, files, instance_id) {
            Ok(()) => break,
            // Out of room (a cluster size or overhead estimate was off): try a larger disk.
            Err(e) if size < 8192 * MIB && e.to_string().contains("No space left") => {
                size += (size / 8).div_ceil(MIB).max(1) * MIB;
            }
            Err(e) => return Err(io("cannot write the FAT filesystem to", e)),
        }
    }
    file.sync_all().map_err(|e| io("cannot sync", e))?;
    Ok(size)
}

fn format_and_fill(
    disk: &mut std::fs::File,
    files: &[(&'static str, Vec<u8>)],
    instance_id: &str,
) -> std::io::Result<()> {
    let mut label = [b' '; 11];
    label[..LABEL.len()].copy_from_slice(LABEL.as_bytes());
    // The volume id (blkid's UUID) derived from the instance id: stable across rewrites of one instance's disk.
    let id = Sha256::digest(instance_id.as_bytes());
    let volume_id = u32::from_le_bytes([id[0], id[1], id[2], id[3]]);
    // fatfs writes the label into the boot sector and as the root directory's volume-label entry.
    fatfs::format_volume(
        &mut *disk,
        FormatVolumeOptions::new().volume_label(label).volume_id(volume_id),
    )?;
    disk.seek(SeekFrom::Start(0))?;
    let fs = FileSystem::new(&mut *disk, FsOptions::new().time_provider(&CLOCK))?;
    {
        let root = fs.root_dir();
        for (name, data) in files {
            let mut f = root.create_file(name)?;
            f.truncate()?;
            f.write_all(data)?;
            f.flush()?;
        }
    }
    fs.unmount()
}

/// File times: the current UTC time (`fatfs` without its `chrono` feature would write invalid dates).
#[derive(Debug)]
struct Clock;

static CLOCK: Clock = Clock;

impl Clock {
    fn now(&self) -> fatfs::DateTime {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (mut year, mut month, mut day) = civil_from_days((secs / 86400) as i64);
        let mut rest = secs % 86400;
        // FAT dates cover 1980 to 2107.
        if !(1980..=2107).contains(&year) {
            (year, month, day, rest) = (1980, 1, 1, 0);
        }
        fatfs::DateTime {
            date: fatfs::Date {
                year: year as u16,
                month: month as u16,
                day: day as u16,
            },
            time: fatfs::Time {
                hour: (rest / 3600) as u16,
                min: (rest / 60 % 60) as u16,
                sec: (rest % 60) as u16,
                millis: 0,
            },
        }
    }
}

impl fatfs::TimeProvider for Clock {
    fn get_current_date(&self) -> fatfs::Date {
        self.now().date
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.now()
    }
}

/// Year, month (1-12), day (1-31) of the proleptic Gregorian calendar for days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// How the instance's `eth0` gets its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addressing {
    /// DHCP for IPv4.
    Dhcp,
    /// A fixed address.
    Static {
        /// The interface address.
        address: IpAddr,
        /// The prefix length of its subnet (e.g. 24).
        prefix_len: u8,
        /// The default gateway, if any.
        gateway: Option<IpAddr>,
        /// DNS servers.
        nameservers: Vec<IpAddr>,
    },
}

/// The cloud-init network config (version 2) for one interface named `eth0`, matched by `mac` when given
/// (`aa:bb:cc:dd:ee:ff`, renamed to `eth0`).
pub fn render_network_config(mac: Option<&str>, addressing: &Addressing) -> Result<String> {
    let mut yaml = String::from("version: 2\nethernets:\n  eth0:\n");
    if let Some(mac) = mac {
        let mac = mac.to_ascii_lowercase();
        let valid = mac.len() == 17
            && mac.split(':').count() == 6
            && mac
                .split(':')
                .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
        if !valid {
            return Err(ImageError::SeedInvalid(format!(
                "{mac:?} is not a MAC address like 02:00:00:00:00:01"
            )));
        }
        yaml.push_str(&format!(
            "    match:\n      macaddress: \"{mac}\"\n    set-name: eth0\n"
        ));
    }
    match addressing {
        Addressing::Dhcp => yaml.push_str("    dhcp4: true\n"),
        Addressing::Static {
            address,
            prefix_len,
            gateway,
            nameservers,
        } => {
            let max = if address.is_ipv4() { 32 } else { 128 };
            if *prefix_len > max {
                return Err(ImageError::SeedInvalid(format!(
                    "prefix length /{prefix_len} is too long for {address}"
                )));
            }
            yaml.push_str(&format!(
                "    dhcp4: false\n    addresses:\n      - \"{address}/{prefix_len}\"\n"
            ));
            if let Some(gateway) = gateway {
                let default = if gateway.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
                yaml.push_str(&format!(
                    "    routes:\n      - to: \"{default}\"\n        via: \"{gateway}\"\n"
                ));
            }
            if !nameservers.is_empty() {
                yaml.push_str("    nameservers:\n      addresses:\n");
                for server in nameservers {
                    yaml.push_str(&format!("        - \"{server}\"\n"));
                }
            }
        }
    }
    Ok(yaml)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_data_quotes_everything() {
        let seed = Seed {
            instance_id: "i-0123456789abcdef0".into(),
            hostname: "ip-10-0-0-5".into(),
            public_keys: vec!["ssh-ed25519 AAAAC3Nz \"quoted\" back\\slash".into()],
            ..Seed::default()
        };
        assert_eq!(
            seed.meta_data().unwrap(),
            "instance-id: \"i-0123456789abcdef0\"\nlocal-hostname: \"ip-10-0-0-5\"\npublic-keys:\n  - \"ssh-ed25519 AAAAC3Nz \\\"quoted\\\" back\\\\slash\"\n"
        );
        let mut bad = seed.clone();
        bad.public_keys.push("ssh-ed25519 AAAA\nssh-rsa BBBB".into());
        assert!(matches!(bad.meta_data(), Err(ImageError::SeedInvalid(_))));
        let mut bad = seed;
        bad.hostname.clear();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn network_config() {
        let yaml = render_network_config(
            Some("02:00:0A:00:00:05"),
            &Addressing::Static {
                address: "10.0.0.5".parse().unwrap(),
                prefix_len: 24,
                gateway: Some("10.0.0.1".parse().unwrap()),
                nameservers: vec!["10.0.0.2".parse().unwrap()],
            },
        )
        .unwrap();
        assert!(yaml.contains("macaddress: \"02:00:0a:00:00:05\""));
        assert!(yaml.contains("- \"10.0.0.5/24\""));
        assert!(yaml.contains("via: \"10.0.0.1\""));
        assert!(render_network_config(Some("nope"), &Addressing::Dhcp).is_err());
        assert_eq!(
            render_network_config(None, &Addressing::Dhcp).unwrap(),
            "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n"
        );
    }
}
