//! The `hearth-image` binary: manifest → verify → import, errors, and the cidata subcommand.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{list_recursive, pseudo_random, TempDir};
use hearth_image::Manifest;

fn hearth_image(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hearth-image"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Exit status 1 and exactly one line on stderr: `hearth-image: error: ...`.
fn error_line(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("hearth-image: error: "), "{stderr}");
    stderr
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn manifest_verify_import() {
    let tmp = TempDir::new("cli");
    let dir = tmp.join("image");
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    std::fs::write(dir.join("boot/vmlinux"), pseudo_random(50_000, 1)).unwrap();
    std::fs::write(dir.join("boot/initrd"), pseudo_random(20_000, 2)).unwrap();
    std::fs::write(dir.join("root.img"), pseudo_random(9 << 20, 3)).unwrap();
    let manifest_path = dir.join("image.json");

    let out = hearth_image(&[
        "manifest",
        "--name",
        "cli-test",
        "--description",
        "from the cli test",
        "--kernel",
        s(&dir.join("boot/vmlinux")),
        "--initrd",
        s(&dir.join("boot/initrd")),
        "--root",
        s(&dir.join("root.img")),
        "--root-device-type",
        "instance-store",
        "--command-line",
        "console=ttyS0 root=/dev/vda ro",
        "--mapping",
        "/dev/xvdb=ephemeral0",
        "--mapping",
        "/dev/sdf=ebs:1:true:gp3",
        "--out",
        s(&manifest_path),
    ]);
    assert!(stdout(&out).starts_with("wrote "));
    let manifest = Manifest::load(&manifest_path).unwrap();
    assert_eq!(manifest.name, "cli-test");
    assert_eq!(manifest.kernel.path, "boot/vmlinux");
    assert_eq!(manifest.initrd.as_ref().unwrap().path, "boot/initrd");
    assert_eq!(manifest.root.size, 9 << 20);
    assert_eq!(manifest.command_line, "console=ttyS0 root=/dev/vda ro");
    assert_eq!(manifest.block_device_mappings.len(), 2);
    assert_eq!(manifest.root_device_type.as_str(), "instance-store");

    assert_eq!(
        stdout(&hearth_image(&["verify", s(&manifest_path)])),
        "ok cli-test (3 files, 9.1 MiB)\n"
    );

    let store = tmp.join("store");
    let cache = tmp.join("cache");
    let out = hearth_image(&[
        "import",
        "--store",
        s(&store),
        "--cache",
        s(&cache),
        "--json",
        s(&manifest_path),
    ]);
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(json["manifest"], manifest.digest());
    assert_eq!(json["total_bytes"], 50_000 + 20_000 + (9 << 20));
    assert_eq!(json["stored_bytes"], json["total_bytes"]);
    assert!(json["seconds"].as_f64().unwrap() >= 0.0);
    assert!(store
        .join("manifests")
        .join(format!("{}.json", manifest.digest()))
        .is_file());

    // Again, human-readable: nothing new.
    let text = stdout(&hearth_image(&["import", "--store", s(&store), s(&manifest_path)]));
    assert!(text.starts_with(&format!("manifest {}\n", manifest.digest())), "{text}");
    assert!(text.contains("stored 0 of"), "{text}");

    // A flipped byte: verify and import both fail naming the file, and the store is unchanged.
    let mut root = std::fs::read(dir.join("root.img")).unwrap();
    root[5 << 20] ^= 0xff;
    std::fs::write(dir.join("root.img"), &root).unwrap();
    let line = error_line(&hearth_image(&["verify", s(&manifest_path)]));
    assert!(line.contains("root.img") && line.contains("sha256 mismatch"), "{line}");
    let fresh = tmp.join("fresh-store");
    let before = list_recursive(&store);
    let line = error_line(&hearth_image(&["import", "--store", s(&fresh), s(&manifest_path)]));
    assert!(
        line.contains("root.img") && line.contains(&manifest.root.sha256),
        "{line}"
    );
    assert_eq!(list_recursive(&store), before);
    let fresh_files: Vec<_> = list_recursive(&fresh)
        .into_iter()
        .filter(|(_, size)| size.is_some())
        .collect();
    assert!(fresh_files.is_empty(), "{fresh_files:?}");
}

#[test]
fn usage_errors() {
    let tmp = TempDir::new("cli-errors");
    std::fs::write(tmp.join("k"), b"k").unwrap();
    let outside = TempDir::new("cli-outside");
    std::fs::write(outside.join("root.img"), b"r").unwrap();
    let line = error_line(&hearth_image(&[
        "manifest",
        "--name",
        "x",
        "--kernel",
        s(&tmp.join("k")),
        "--root",
        s(&outside.join("root.img")),
        "--out",
        s(&tmp.join("image.json")),
    ]));
    assert!(line.contains("not inside"), "{line}");
    let line = error_line(&hearth_image(&[
        "manifest",
        "--name",
        "x",
        "--kernel",
        s(&tmp.join("k")),
        "--root",
        s(&tmp.join("k")),
        "--mapping",
        "/dev/sdf=ebs:lots",
        "--out",
        s(&tmp.join("image.json")),
    ]));
    assert!(line.contains("/dev/sdf=ebs:lots"), "{line}");
    assert!(!tmp.join("image.json").exists());
    let line = error_line(&hearth_image(&["verify", s(&tmp.join("missing.json"))]));
    assert!(line.contains("missing.json: no such file"), "{line}");
    let line = error_line(&hearth_image(&[
        "import",
        "--store",
        "ftp://x",
        s(&tmp.join("missing.json")),
    ]));
    assert!(line.contains("unsupported scheme"), "{line}");
}

#[test]
fn cidata_subcommand() {
    let tmp = TempDir::new("cli-cidata");
    std::fs::write(tmp.join("user-data"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(
        tmp.join("net.yaml"),
        b"version: 2\nethernets:\n  eth0:\n    dhcp4: true\n",
    )
    .unwrap();
    let disk = tmp.join("seed.img");
    let out = hearth_image(&[
        "cidata",
        "--instance-id",
        "i-0abc",
        "--hostname",
        "web",
        "--public-key",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK key-one",
        "--public-key",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL key-two",
        "--user-data",
        s(&tmp.join("user-data")),
        "--network-config",
        s(&tmp.join("net.yaml")),
        "--out",
        s(&disk),
    ]);
    assert_eq!(
        stdout(&out),
        format!("wrote {} (1 MiB, label cidata)\n", disk.display())
    );
    // The FAT content itself is checked in tests/cidata.rs; here: the disk holds the given files.
    let image = std::fs::read(&disk).unwrap();
    assert_eq!(image.len(), 1 << 20);
    let find = |needle: &[u8]| image.windows(needle.len()).any(|w| w == needle);
    assert!(find(
        b"instance-id: \"i-0abc\"\nlocal-hostname: \"web\"\npublic-keys:\n"
    ));
    assert!(find(
        b"key-one\"\n  - \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL key-two\"\n"
    ));
    assert!(find(b"#!/bin/sh\necho hi\n"));
    assert!(find(b"ethernets:\n  eth0:\n    dhcp4: true\n"));

    let line = error_line(&hearth_image(&[
        "cidata",
        "--instance-id",
        "i-1",
        "--hostname",
        "h",
        "--public-key",
        "ssh-ed25519 AAAA\nssh-rsa BBBB",
        "--out",
        s(&disk),
    ]));
    assert!(line.contains("several lines"), "{line}");
}
