//! The NoCloud metadata disk, judged by the real Debian tools: blkid (util-linux), fsck.vfat (dosfstools),
//! mdir/mtype (mtools), and python3's yaml module when it is installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TempDir;
use hearth_image::cidata::{render_network_config, write_disk, Addressing, Seed};
use hearth_image::ImageError;

/// The tool's path; fails the test with the package to install when it is missing.
fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("{name} is missing: install it with `apt-get install -y --no-install-recommends {package}`")
}

fn run(program: PathBuf, args: &[&str]) -> (bool, String) {
    let out = Command::new(&program)
        .args(args)
        // mtools: no geometry checks for an image that is not a floppy.
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn mtype(disk: &Path, file: &str) -> String {
    let (ok, text) = run(
        tool("mtype", "mtools"),
        &["-i", disk.to_str().unwrap(), &format!("::{file}")],
    );
    assert!(ok, "mtype {file}: {text}");
    text
}

/// The 11-byte name of the volume-label entry (attribute 0x08) in the root directory, read from the raw image
/// (FAT12/16: the root directory follows the reserved sectors and the FATs).
fn root_dir_label(disk: &Path) -> Option<String> {
    let image = std::fs::read(disk).unwrap();
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([image[at], image[at + 1]]));
    let (bytes_per_sector, reserved, fats, root_entries, sectors_per_fat) =
        (u16_at(11), u16_at(14), usize::from(image[16]), u16_at(17), u16_at(22));
    assert_ne!(sectors_per_fat, 0, "expected FAT12/16");
    let root = (reserved + fats * sectors_per_fat) * bytes_per_sector;
    (0..root_entries)
        .map(|i| &image[root + 32 * i..root + 32 * (i + 1)])
        .take_while(|entry| entry[0] != 0)
        .find(|entry| entry[0] != 0xe5 && entry[11] == 0x08)
        .map(|entry| String::from_utf8_lossy(&entry[..11]).into_owned())
}

/// blkid sees a vfat filesystem labelled cidata (in the boot sector and the root directory), and fsck.vfat
/// finds nothing wrong.
fn check_filesystem(disk: &Path) {
    assert_eq!(root_dir_label(disk).as_deref(), Some("cidata     "));
    let (ok, text) = run(tool("blkid", "util-linux"), &["-o", "export", disk.to_str().unwrap()]);
    assert!(ok, "blkid: {text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.contains(&"TYPE=vfat"), "blkid: {text}");
    assert!(lines.contains(&"LABEL=cidata"), "blkid: {text}");
    assert!(lines.contains(&"LABEL_FATBOOT=cidata"), "blkid: {text}");
    let (ok, text) = run(tool("fsck.vfat", "dosfstools"), &["-n", disk.to_str().unwrap()]);
    assert!(ok, "fsck.vfat -n: {text}");
}

fn seed() -> Seed {
    Seed {
        instance_id: "i-0123456789abcdef0".into(),
        hostname: "ip-10-0-0-5".into(),
        public_keys: vec![
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx3eU5o1kq0Oq8P0mGvG7hQ6iRa0t4S4v2j5nQfX2wA alice@example".into(),
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 \"bob\" key: with # and \\ and 'quotes'".into(),
        ],
        user_data: b"#cloud-config\nruncmd:\n  - [touch, /run/hello]\n".to_vec(),
        network_config: Some(
            render_network_config(
                Some("02:00:0a:00:00:05"),
                &Addressing::Static {
                    address: "10.0.0.5".parse().unwrap(),
                    prefix_len: 24,
                    gateway: Some("10.0.0.1".parse().unwrap()),
                    nameservers: vec!["10.0.0.2".parse().unwrap()],
                },
            )
            .unwrap(),
        ),
        vendor_data: Some(b"#cloud-config\npackages: []\n".to_vec()),
    }
}

#[test]
fn nocloud_disk_passes_blkid_fsck_and_mtools() {
    let tmp = TempDir::new("cidata");
    let disk = tmp.join("cidata.img");
    let seed = seed();
    let size = write_disk(&seed, &disk).unwrap();
    assert_eq!(size, 1 << 20, "small content fits the 1 MiB minimum");
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), size);
    check_filesystem(&disk);

    let (ok, listing) = run(tool("mdir", "mtools"), &["-i", disk.to_str().unwrap(), "::"]);
    assert!(ok, "mdir: {listing}");
    for name in ["meta-data", "user-data", "network-config", "vendor-data"] {
        assert!(listing.contains(name), "{name} not in {listing}");
    }

    let meta = mtype(&disk, "meta-data");
    assert!(meta.contains("instance-id: \"i-0123456789abcdef0\""), "{meta}");
    assert!(meta.contains("local-hostname: \"ip-10-0-0-5\""), "{meta}");
    assert!(meta.contains("public-keys:\n"), "{meta}");
    assert!(meta.contains("alice@example"), "{meta}");
    assert!(meta.contains("AAAAB3NzaC1yc2EAAAADAQABAAABAQC7"), "{meta}");
    assert_eq!(mtype(&disk, "user-data").as_bytes(), seed.user_data.as_slice());
    assert_eq!(mtype(&disk, "network-config"), seed.network_config.clone().unwrap());
    assert_eq!(
        mtype(&disk, "vendor-data").as_bytes(),
        seed.vendor_data.clone().unwrap().as_slice()
    );

    // Nothing else next to the disk (the temporary file was renamed).
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["cidata.img"]);

    // YAML parsers agree with what was meant, when python3-yaml is around.
    let yaml_ok = Command::new("python3")
        .args(["-c", "import yaml"])
        .status()
        .is_ok_and(|s| s.success());
    if yaml_ok {
        let script = "import json, sys, yaml\n\
                      print(json.dumps([yaml.safe_load(open(p)) for p in sys.argv[1:]]))";
        let meta_file = tmp.join("meta-data");
        let net_file = tmp.join("network-config");
        std::fs::write(&meta_file, &meta).unwrap();
        std::fs::write(&net_file, seed.network_config.clone().unwrap()).unwrap();
        let out = Command::new("python3")
            .args(["-c", script, meta_file.to_str().unwrap(), net_file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            parsed[0],
            serde_json::json!({
                "instance-id": seed.instance_id,
                "local-hostname": seed.hostname,
                "public-keys": seed.public_keys,
            })
        );
        let eth0 = &parsed[1]["ethernets"]["eth0"];
        assert_eq!(parsed[1]["version"], 2);
        assert_eq!(eth0["match"]["macaddress"], "02:00:0a:00:00:05");
        assert_eq!(eth0["addresses"], serde_json::json!(["10.0.0.5/24"]));
        assert_eq!(
            eth0["routes"],
            serde_json::json!([{"to": "0.0.0.0/0", "via": "10.0.0.1"}])
        );
        assert_eq!(eth0["nameservers"]["addresses"], serde_json::json!(["10.0.0.2"]));
    } else {
        eprintln!("python3 yaml module not installed: meta-data not parsed as YAML");
    }
}

#[test]
fn empty_user_data_and_no_optional_files() {
    let tmp = TempDir::new("cidata-min");
    let disk = tmp.join("seed.img");
    let seed = Seed {
        instance_id: "i-1".into(),
        hostname: "h".into(),
        ..Seed::default()
    };
    write_disk(&seed, &disk).unwrap();
    check_filesystem(&disk);
    let (ok, listing) = run(tool("mdir", "mtools"), &["-i", disk.to_str().unwrap(), "::"]);
    assert!(ok, "{listing}");
    assert!(
        listing.contains("meta-data") && listing.contains("user-data"),
        "{listing}"
    );
    assert!(
        !listing.contains("network-config") && !listing.contains("vendor-data"),
        "{listing}"
    );
    assert_eq!(mtype(&disk, "user-data"), "");
    assert_eq!(
        mtype(&disk, "meta-data"),
        "instance-id: \"i-1\"\nlocal-hostname: \"h\"\n"
    );

    // Rewriting replaces the disk.
    let seed = Seed {
        instance_id: "i-2".into(),
        ..seed
    };
    write_disk(&seed, &disk).unwrap();
    assert!(mtype(&disk, "meta-data").contains("i-2"));
}

#[test]
fn large_user_data_grows_the_disk() {
    let tmp = TempDir::new("cidata-big");
    for (len, seed_no) in [(16 << 10, 1), (3 << 20, 2), (20 << 20, 3)] {
        let disk = tmp.join(&format!("big-{len}.img"));
        let user_data = common::pseudo_random(len, seed_no);
        let seed = Seed {
            instance_id: "i-big".into(),
            hostname: "big".into(),
            user_data,
            ..Seed::default()
        };
        let size = write_disk(&seed, &disk).unwrap();
        assert_eq!(size % (1 << 20), 0);
        assert!(
            size >= len as u64 && size <= len as u64 + (3 << 20),
            "{len} bytes in a {size}-byte disk"
        );
        check_filesystem(&disk);
        let out = Command::new(tool("mtype", "mtools"))
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", disk.to_str().unwrap(), "::user-data"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(out.stdout == seed.user_data, "user-data of {len} bytes differs");
    }
}

#[test]
fn bad_seeds_are_refused_and_write_nothing() {
    let tmp = TempDir::new("cidata-bad");
    let disk = tmp.join("seed.img");
    let good = Seed {
        instance_id: "i-1".into(),
        hostname: "h".into(),
        ..Seed::default()
    };
    let bad = [
        Seed {
            public_keys: vec!["ssh-ed25519 AAAA\nssh-rsa BBBB".into()],
            ..good.clone()
        },
        Seed {
            public_keys: vec!["  ".into()],
            ..good.clone()
        },
        Seed {
            instance_id: "".into(),
            ..good.clone()
        },
        Seed {
            hostname: "a\nb".into(),
            ..good.clone()
        },
    ];
    for seed in bad {
        assert!(
            matches!(write_disk(&seed, &disk), Err(ImageError::SeedInvalid(_))),
            "{seed:?}"
        );
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
