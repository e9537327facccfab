//! VM configuration: parsed from command-line flags or a JSON file, then validated.

use std::path::{Path, PathBuf};

use hearth_devices::crypt::{KeyError, XtsCipher};
use hearth_devices::rate_limiter::RateLimitConfig;
use serde::{Deserialize, Serialize};

/// Most vCPUs a VM may have (the MP table and MADT are sized for this).
pub const MAX_VCPUS: u8 = 32;
/// Smallest guest RAM we accept, MiB.
pub const MIN_MEM_MIB: u64 = 8;
/// Largest guest RAM we accept, MiB (1 TiB).
pub const MAX_MEM_MIB: u64 = 1 << 20;
/// Most virtio devices (IRQs 5..=22 of the IOAPIC).
pub const MAX_VIRTIO_DEVICES: usize = 18;
/// Longest kernel command line we pass (Linux's x86 COMMAND_LINE_SIZE is 2048).
pub const MAX_CMDLINE_LEN: usize = 2048;

/// One virtio-blk disk backed by a raw file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Raw image file on the host.
    pub path: PathBuf,
    /// Refuse guest writes (`VIRTIO_BLK_F_RO`).
    #[serde(default)]
    pub read_only: bool,
    /// Device ID returned by `VIRTIO_BLK_T_GET_ID` (at most 20 bytes), e.g. `vol-0123…`.
    #[serde(default)]
    pub id: Option<String>,
    /// I/O limits.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Encryption at rest: the file holds AES-256-XTS ciphertext, the guest sees plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
    /// Dirty-chunk bitmap file: loaded at start (then removed), written back at a clean
    /// exit. Without it (or when it does not match the disk) every chunk starts dirty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_bitmap: Option<PathBuf>,
}

/// Encryption at rest of one disk (see `hearth_devices::crypt`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// File holding exactly 64 raw key bytes: the AES-256 data key, then the tweak key.
    pub key_file: PathBuf,
}

/// One virtio-net NIC on a host tap device.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Name of an existing tap device (created by the agent or the test, not by us).
    pub tap: String,
    /// Guest MAC address `aa:bb:cc:dd:ee:ff`; a locally administered one is derived from
    /// the tap name when absent.
    #[serde(default)]
    pub mac: Option<String>,
    /// Frame/byte limits, applied to each direction.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
}

/// Where the guest's UART output goes.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleConfig {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// Discarded.
    Off,
    /// Appended to a file.
    #[serde(untagged)]
    File(PathBuf),
}

/// Everything a VM is built from.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Number of vCPUs, 1–32.
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest RAM in MiB.
    #[serde(default = "default_mem")]
    pub memory_mib: u64,
    /// ELF vmlinux or bzImage.
    pub kernel: PathBuf,
    /// Optional initrd/initramfs.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line; with `acpi=off` the VMM appends `virtio_mmio.device=` arguments
    /// (otherwise the guest finds the devices in the DSDT).
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Disks, in slot order.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// NICs, after the disks.
    #[serde(default)]
    pub nics: Vec<NetConfig>,
    /// Add a virtio-rng device (after the NICs).
    #[serde(default = "default_true")]
    pub rng: bool,
    /// Console destination.
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Unix control socket path (created by the VMM, removed at exit).
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// Where the ACPI tables are also written as files (for `iasl -d`), if set.
    #[serde(default)]
    pub dump_acpi: Option<PathBuf>,
    /// Confine the VMM before the guest runs (capabilities dropped, rlimits, seccomp
    /// allowlists; `sandbox.rs`). Off only for debugging.
    #[serde(default = "default_true")]
    pub seccomp: bool,
}

fn default_vcpus() -> u8 {
    1
}
fn default_mem() -> u64 {
    128
}
fn default_cmdline() -> String {
    "console=ttyS0 reboot=k panic=1".to_string()
}
fn default_true() -> bool {
    true
}

/// A configuration problem, reported as one line before the VMM exits with status 1.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Bad flag syntax.
    #[error("{0}")]
    Usage(String),
    /// The JSON file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// File given with `--config`.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The JSON file is not a valid configuration.
    #[error("invalid config file {path}: {source}")]
    Json {
        /// File given with `--config`.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Parses a MAC address `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl VmConfig {
    /// Checks ranges and that every file the VM needs exists, so that a bad config fails
    /// before anything (a KVM VM, a socket, a thread) is created.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return invalid(format!("vcpus must be 1–{MAX_VCPUS}, got {}", self.vcpus));
        }
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&self.memory_mib) {
            return invalid(format!(
                "memory_mib must be {MIN_MEM_MIB}–{MAX_MEM_MIB}, got {}",
                self.memory_mib
            ));
        }
        check_file("kernel", &self.kernel)?;
        if let Some(initrd) = &self.initrd {
            check_file("initrd", initrd)?;
        }
        if self.cmdline.contains('\0') || self.cmdline.contains('\n') {
            return invalid("cmdline must not contain NUL or newline".into());
        }
        let devices = self.disks.len() + self.nics.len() + usize::from(self.rng);
        if devices > MAX_VIRTIO_DEVICES {
            return invalid(format!(
                "at most {MAX_VIRTIO_DEVICES} virtio devices (disks + nics + rng), got {devices}"
            ));
        }
        for (index, disk) in self.disks.iter().enumerate() {
            check_file(&format!("disks[{index}].path"), &disk.path)?;
            if let Some(id) = &disk.id {
                if id.len() > 20 || !id.is_ascii() {
                    return invalid(format!("disks[{index}].id must be ASCII of at most 20 bytes"));
                }
            }
            check_limits(&format!("disks[{index}]"), disk.rate_limit.as_ref())?;
            if let Some(encryption) = &disk.encryption {
                match XtsCipher::from_key_file(&encryption.key_file) {
                    Ok(_) => {}
                    Err(e @ (KeyError::Read { .. } | KeyError::FileLength { .. })) => {
                        return invalid(format!("disks[{index}].encryption: {e}"))
                    }
                    Err(e) => {
                        return invalid(format!(
                            "disks[{index}].encryption: key file {}: {e}",
                            encryption.key_file.display()
                        ))
                    }
                }
            }
            if let Some(bitmap) = &disk.dirty_bitmap {
                check_bitmap_path(&format!("disks[{index}].dirty_bitmap"), bitmap)?;
            }
        }
        let mut bitmaps = std::collections::HashSet::new();
        for (index, disk) in self.disks.iter().enumerate() {
            if let Some(bitmap) = &disk.dirty_bitmap {
                if !bitmaps.insert(bitmap) {
                    return invalid(format!(
                        "disks[{index}].dirty_bitmap {} is used twice",
                        bitmap.display()
                    ));
                }
            }
        }
        let mut taps = std::collections::HashSet::new();
        for (index, nic) in self.nics.iter().enumerate() {
            if nic.tap.is_empty() || nic.tap.len() > 15 || nic.tap.contains('/') {
                return invalid(format!("nics[{index}].tap must be a 1–15 character interface name"));
            }
            if !taps.insert(&nic.tap) {
                return invalid(format!("nics[{index}].tap {} is used twice", nic.tap));
            }
            if let Some(mac) = &nic.mac {
                match parse_mac(mac) {
                    Some(bytes) if bytes[0] & 1 == 0 => {}
                    Some(_) => return invalid(format!("nics[{index}].mac {mac} is a multicast address")),
                    None => return invalid(format!("nics[{index}].mac {mac} is not aa:bb:cc:dd:ee:ff")),
                }
            }
            check_limits(&format!("nics[{index}]"), nic.rate_limit.as_ref())?;
        }
        if let ConsoleConfig::File(path) = &self.console {
            if path.as_os_str().is_empty() {
                return invalid("console file path is empty".into());
            }
        }
        if let Some(socket) = &self.control_socket {
            if socket.as_os_str().len() >= 108 {
                return invalid(format!("control socket path {} is too long", socket.display()));
            }
            if socket.exists() {
                return invalid(format!("control socket {} already exists", socket.display()));
            }
        }
        Ok(())
    }

    /// Builds a config from `hearth-vmm` flags (see `USAGE`).
    pub fn from_args(args: &[String]) -> Result<VmConfig, ConfigError> {
        let usage = |m: String| ConfigError::Usage(m);
        let mut file: Option<PathBuf> = None;
        let mut vcpus = None;
        let mut memory = None;
        let mut kernel = None;
        let mut initrd = None;
        let mut cmdline = None;
        let mut disks = Vec::new();
        let mut nics = Vec::new();
        let mut rng = None;
        let mut console = None;
        let mut control_socket = None;
        let mut dump_acpi = None;
        let mut seccomp = None;
        let mut iter = args.iter();
        while let Some(flag) = iter.next() {
            let mut value = |name: &str| {
                iter.next()
                    .cloned()
                    .ok_or_else(|| usage(format!("{name} needs a value")))
            };
            match flag.as_str() {
                "--config" => file = Some(PathBuf::from(value(flag)?)),
                "--vcpus" => {
                    let v = value(flag)?;
                    vcpus = Some(
                        v.parse::<u8>()
                            .map_err(|_| usage(format!("--vcpus: not a number 1–{MAX_VCPUS}: {v}")))?,
                    )
                }
                "--memory" | "--mem" => {
                    let v = value(flag)?;
                    memory = Some(
                        v.parse::<u64>()
                            .map_err(|_| usage(format!("{flag}: not a number of MiB: {v}")))?,
                    )
                }
                "--kernel" => kernel = Some(PathBuf::from(value(flag)?)),
                "--initrd" => initrd = Some(PathBuf::from(value(flag)?)),
                "--cmdline" => cmdline = Some(value(flag)?),
                "--disk" => disks.push(parse_disk(&value(flag)?)?),
                "--net" => nics.push(parse_net(&value(flag)?)?),
                "--no-rng" => rng = Some(false),
                "--no-seccomp" => seccomp = Some(false),
                "--console" => {
                    console = Some(match value(flag)?.as_str() {
                        "stdout" => ConsoleConfig::Stdout,
                        "off" => ConsoleConfig::Off,
                        path => ConsoleConfig::File(PathBuf::from(path)),
                    })
                }
                "--control-socket" | "--api-sock" => control_socket = Some(PathBuf::from(value(flag)?)),
                "--dump-acpi" => dump_acpi = Some(PathBuf::from(value(flag)?)),
                other => return Err(usage(format!("unknown flag {other} (see --help)"))),
            }
        }
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::ReadFile {
                    path: path.clone(),
                    source,
                })?;
                serde_json::from_str::<VmConfig>(&text).map_err(|source| ConfigError::Json { path, source })?
            }
            None => VmConfig {
                vcpus: default_vcpus(),
                memory_mib: default_mem(),
                kernel: kernel
                    .clone()
                    .ok_or_else(|| usage("--kernel or --config is required".into()))?,
                initrd: None,
                cmdline: default_cmdline(),
                disks: Vec::new(),
                nics: Vec::new(),
                rng: true,
                console: ConsoleConfig::Stdout,
                control_socket: None,
                dump_acpi: None,
                seccomp: true,
            },
        };
        // Flags override the file.
        if let Some(v) = vcpus {
            config.vcpus = v;
        }
        if let Some(v) = memory {
            config.memory_mib = v;
        }
        if let Some(v) = kernel {
            config.kernel = v;
        }
        if initrd.is_some() {
            config.initrd = initrd;
        }
        if let Some(v) = cmdline {
            config.cmdline = v;
        }
        config.disks.extend(disks);
        config.nics.extend(nics);
        if let Some(v) = rng {
            config.rng = v;
        }
        if let Some(v) = seccomp {
            config.seccomp = v;
        }
        if let Some(v) = console {
            config.console = v;
        }
        if control_socket.is_some() {
            config.control_socket = control_socket;
        }
        if dump_acpi.is_some() {
            config.dump_acpi = dump_acpi;
        }
        Ok(config)
    }
}

/// Flag help.
pub const USAGE: &str = "\
usage: hearth-vmm [--config FILE.json] [flags]
       hearth-vmm ctl SOCKET info|power-button|shutdown [TIMEOUT_MS]|pause|resume|kill
       hearth-vmm ctl SOCKET '{\"cmd\":\"snapshot-disk\",\"disk\":\"ID|INDEX\",\"out\":\"PATH\"}'
       hearth-vmm ctl SOCKET '{\"cmd\":\"dirty-info\",\"disk\":\"ID|INDEX\"}'
  --kernel PATH            ELF vmlinux or bzImage (required unless in --config)
  --initrd PATH            initrd / initramfs
  --cmdline TEXT           kernel command line
  --vcpus N                1-32 (default 1)
  --memory MIB             guest RAM (default 128)
  --disk path=P[,ro][,id=ID][,iops=N][,iops_burst=N][,bps=N][,bps_burst=N]
         [,key_file=KEY][,dirty_bitmap=FILE]
                           KEY: 64 bytes, the disk is AES-256-XTS encrypted at rest;
                           FILE: the dirty-chunk bitmap kept between runs
  --net tap=NAME[,mac=aa:bb:cc:dd:ee:ff][,pps=N][,bps=N]
  --no-rng                 no virtio-rng device
  --console stdout|off|PATH
  --control-socket PATH    Unix socket for info/power-button/pause/resume/kill,
                           snapshot-disk/dirty-info
  --dump-acpi DIR          also write the ACPI tables to DIR (for iasl -d)
  --no-seccomp             do not confine the VMM (capabilities, rlimits, seccomp);
                           for debugging only
exit status: 0 guest power-off, 1 configuration error, 2 VMM error,
             3 guest reboot, 4 guest crash, 5 killed";

fn check_file(what: &str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(ConfigError::Invalid(format!(
            "{what} {} is not a regular file",
            path.display()
        ))),
        Err(e) => Err(ConfigError::Invalid(format!("{what} {}: {e}", path.display()))),
    }
}

/// A bitmap file may be missing, but its directory must exist and the path must not be
/// anything but a regular file.
fn check_bitmap_path(what: &str, path: &Path) -> Result<(), ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(format!("{what} {}: {m}", path.display())));
    if path.as_os_str().is_empty() || path.file_name().is_none() {
        return invalid("not a file path".into());
    }
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => return invalid("is not a regular file".into()),
        Ok(_) => return Ok(()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return invalid(e.to_string()),
        Err(_) => {}
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return invalid("its directory does not exist".into());
    }
    Ok(())
}

fn check_limits(what: &str, limit: Option<&RateLimitConfig>) -> Result<(), ConfigError> {
    let Some(limit) = limit else { return Ok(()) };
    let pairs = [
        ("ops", limit.ops_per_sec, limit.ops_burst),
        ("bytes", limit.bytes_per_sec, limit.bytes_burst),
    ];
    for (name, rate, burst) in pairs {
        if rate.unwrap_or(0) == 0 && burst.unwrap_or(0) != 0 {
            return Err(ConfigError::Invalid(format!(
                "{what}: {name}_burst given without {name}_per_sec"
            )));
        }
    }
    Ok(())
}

fn parse_number(key: &str, value: &str) -> Result<u64, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::Usage(format!("{key}={value}: not a number")))
}

fn parse_disk(spec: &str) -> Result<DiskConfig, ConfigError> {
    let mut disk = DiskConfig {
        path: PathBuf::new(),
        read_only: false,
        id: None,
        rate_limit: None,
        encryption: None,
        dirty_bitmap: None,
    };
    let mut limit = RateLimitConfig::default();
    for part in spec.split(',') {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        match key {
            "path" => disk.path = PathBuf::from(value),
            "key_file" => {
                disk.encryption = Some(EncryptionConfig {
                    key_file: PathBuf::from(value),
                })
            }
            "dirty_bitmap" => disk.dirty_bitmap = Some(PathBuf::from(value)),
            "ro" | "read_only" => disk.read_only = true,
            "id" => disk.id = Some(value.to_string()),
            "iops" => limit.ops_per_sec = Some(parse_number(key, value)?),
            "iops_burst" => limit.ops_burst = Some(parse_number(key, value)?),
            "bps" => limit.bytes_per_sec = Some(parse_number(key, value)?),
            "bps_burst" => limit.bytes_burst = Some(parse_number(key, value)?),
            _ => return Err(ConfigError::Usage(format!("--disk: unknown key {key:?} in {spec:?}"))),
        }
    }
    if disk.path.as_os_str().is_empty() {
        return Err(ConfigError::Usage(format!("--disk needs path=…: {spec:?}")));
    }
    disk.rate_limit = (!limit.is_unlimited() || limit != RateLimitConfig::default()).then_some(limit);
    Ok(disk)
}

fn parse_net(spec: &str) -> Result<NetConfig, ConfigError> {
    let mut nic = NetConfig {
        tap: String::new(),
        mac: None,
        rate_limit: None,
    };
    let mut limit = RateLimitConfig::default();
    for part in spec.split(',') {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        match key {
            "tap" => nic.tap = value.to_string(),
            "mac" => nic.mac = Some(value.to_string()),
            "pps" => limit.ops_per_sec = Some(parse_number(key, value)?),
            "bps" => limit.bytes_per_sec = Some(parse_number(key, value)?),
            _ => return Err(ConfigError::Usage(format!("--net: unknown key {key:?} in {spec:?}"))),
        }
    }
    if nic.tap.is_empty() {
        return Err(ConfigError::Usage(format!("--net needs tap=…: {spec:?}")));
    }
    nic.rate_limit = (limit != RateLimitConfig::default()).then_some(limit);
    Ok(nic)
}
