//! The manifest format: round trips, validation errors, building from files and verifying files.

mod common;

use common::TempDir;
use hearth_image::manifest::{DescribeOptions, RootDeviceType, FORMAT};
use hearth_image::{ImageError, Manifest};

const KERNEL_SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const ROOT_SHA: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

fn sample() -> String {
    format!(
        r#"{{
  "format": "hearth-image/1",
  "name": "minimal",
  "description": "free text",
  "architecture": "x86_64",
  "root_device_name": "/dev/xvda",
  "root_device_type": "ebs",
  "command_line": "console=ttyS0 reboot=k panic=1 root=/dev/vda rw",
  "kernel": {{"path": "vmlinux", "sha256": "{KERNEL_SHA}", "size": 123}},
  "initrd": null,
  "root":   {{"path": "root.img", "sha256": "{ROOT_SHA}", "size": 456}},
  "block_device_mappings": [
     {{"device_name": "/dev/xvdb", "virtual_name": "ephemeral0"}},
     {{"device_name": "/dev/sdf", "ebs": {{"volume_size_gib": 1, "delete_on_termination": true, "volume_type": "gp3"}}}}
  ]
}}"#
    )
}

#[test]
fn round_trip() {
    let manifest = Manifest::parse(&sample()).unwrap();
    assert_eq!(manifest.format, FORMAT);
    assert_eq!(manifest.name, "minimal");
    assert_eq!(manifest.root_device_type, RootDeviceType::Ebs);
    assert_eq!(manifest.kernel.size, 123);
    assert_eq!(manifest.initrd, None);
    assert_eq!(manifest.block_device_mappings.len(), 2);
    assert_eq!(
        manifest.block_device_mappings[1].ebs.as_ref().unwrap().volume_size_gib,
        1
    );

    let json = manifest.to_json_pretty();
    let again = Manifest::parse(&json).unwrap();
    assert_eq!(again, manifest);
    assert_eq!(again.to_json_pretty(), json);
    assert_eq!(again.digest(), manifest.digest());
    // The field names are exactly the format's.
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    for key in [
        "format",
        "name",
        "description",
        "architecture",
        "root_device_name",
        "root_device_type",
        "command_line",
        "kernel",
        "initrd",
        "root",
        "block_device_mappings",
    ] {
        assert!(keys.contains(&key), "{key} missing from {json}");
    }
    assert!(value["initrd"].is_null());
    assert_eq!(
        value["block_device_mappings"][0],
        serde_json::json!({"device_name": "/dev/xvdb", "virtual_name": "ephemeral0"})
    );
}

#[test]
fn optional_fields_and_initrd() {
    // initrd absent, description, command_line and mappings absent: all fine.
    let json = format!(
        r#"{{"format":"hearth-image/1","name":"n","architecture":"x86_64","root_device_name":"/dev/xvda",
        "root_device_type":"instance-store","kernel":{{"path":"boot/vmlinux","sha256":"{KERNEL_SHA}","size":1}},
        "root":{{"path":"root.img","sha256":"{ROOT_SHA}","size":2}}}}"#
    );
    let manifest = Manifest::parse(&json).unwrap();
    assert_eq!(manifest.initrd, None);
    assert_eq!(manifest.root_device_type, RootDeviceType::InstanceStore);
    assert!(manifest.block_device_mappings.is_empty());
    assert_eq!(Manifest::parse(&manifest.to_json_pretty()).unwrap(), manifest);

    let with_initrd = sample().replace(
        "\"initrd\": null",
        &format!("\"initrd\": {{\"path\": \"initrd.img\", \"sha256\": \"{KERNEL_SHA}\", \"size\": 7}}"),
    );
    let manifest = Manifest::parse(&with_initrd).unwrap();
    assert_eq!(manifest.initrd.as_ref().unwrap().size, 7);
    assert_eq!(
        manifest.files().iter().map(|(role, _)| *role).collect::<Vec<_>>(),
        ["kernel", "initrd", "root"]
    );
    assert_eq!(manifest.total_bytes(), 123 + 7 + 456);
    assert_eq!(Manifest::parse(&manifest.to_json_pretty()).unwrap(), manifest);
}

fn invalid(json: &str) -> String {
    match Manifest::parse(json) {
        Err(ImageError::ManifestInvalid(why)) => why,
        other => panic!("expected ManifestInvalid for {json}, got {other:?}"),
    }
}

#[test]
fn validation_errors() {
    let base = sample();
    let cases: Vec<(String, &str)> = vec![
        (
            base.replace("hearth-image/1", "hearth-image/2"),
            "unknown format version",
        ),
        (base.replace("\"minimal\"", "\"  \""), "name is empty"),
        (base.replace("\"minimal\"", "\"\""), "name is empty"),
        (base.replace("x86_64", "aarch64"), "architecture"),
        (base.replace("\"ebs\",", "\"floppy\","), "root_device_type"),
        (base.replace(KERNEL_SHA, &KERNEL_SHA.to_uppercase()), "kernel sha256"),
        (base.replace(KERNEL_SHA, &KERNEL_SHA[..63]), "kernel sha256"),
        (base.replace(ROOT_SHA, &ROOT_SHA.replace('f', "g")), "root sha256"),
        (base.replace("\"/dev/xvdb\"", "\"xvdb\""), "not a device name"),
        (base.replace("\"/dev/xvda\"", "\"sda\""), "root_device_name"),
        (base.replace("\"/dev/sdf\"", "\"/dev/xvdb\""), "mapped twice"),
        (base.replace("\"/dev/sdf\"", "\"/dev/xvda\""), "root device name"),
        (base.replace("\"vmlinux\"", "\"/boot/vmlinux\""), "absolute"),
        (base.replace("\"vmlinux\"", "\"../vmlinux\""), ".."),
        (base.replace("\"root.img\"", "\"a/../../root.img\""), ".."),
        (base.replace("\"root.img\"", "\"\""), "empty"),
        (base.replace("ephemeral0", "ephemeral24"), "virtual_name"),
        (
            base.replace("\"volume_size_gib\": 1", "\"volume_size_gib\": 0"),
            "volume_size_gib",
        ),
        (base.replace("\"gp3\"", "\"ssd\""), "volume_type"),
        (base.replace("\"description\"", "\"descripton\""), "unknown field"),
        (base.replace("rw\"", "rw\\n\""), "command_line"),
        ("{".to_string(), "not valid manifest JSON"),
    ];
    for (json, expected) in cases {
        let why = invalid(&json);
        assert!(why.contains(expected), "{expected:?} not in {why:?}");
    }
}

#[test]
fn describe_and_verify_files() {
    let dir = TempDir::new("describe");
    std::fs::create_dir(dir.join("boot")).unwrap();
    std::fs::write(dir.join("boot/vmlinux"), b"kernel bytes").unwrap();
    std::fs::write(dir.join("root.img"), vec![7u8; 3 << 20]).unwrap();
    let mut options = DescribeOptions::new("test", dir.join("boot/vmlinux"), dir.join("root.img"));
    options.description = "made by a test".into();
    options.block_device_mappings = vec!["/dev/xvdb=ephemeral0".parse().unwrap()];
    let manifest = Manifest::describe_files(dir.path(), &options).unwrap();
    assert_eq!(manifest.kernel.path, "boot/vmlinux");
    assert_eq!(manifest.kernel.size, 12);
    // sha256("kernel bytes"), as sha256sum prints it.
    assert_eq!(
        manifest.kernel.sha256,
        hearth_image::sha256_file(&dir.join("boot/vmlinux")).unwrap().0
    );
    assert_eq!(manifest.root.path, "root.img");
    assert_eq!(manifest.root.size, 3 << 20);

    let summary = manifest.verify_files(dir.path()).unwrap();
    assert_eq!((summary.files, summary.total_bytes), (2, 12 + (3 << 20)));

    // Written and loaded again.
    let path = dir.join("image.json");
    std::fs::write(&path, manifest.canonical_bytes()).unwrap();
    assert_eq!(Manifest::load(&path).unwrap(), manifest);

    // One byte flipped: a checksum mismatch naming the file.
    std::fs::write(dir.join("boot/vmlinux"), b"kernel bytez").unwrap();
    match manifest.verify_files(dir.path()) {
        Err(ImageError::ChecksumMismatch { file, expected, actual }) => {
            assert!(file.ends_with("boot/vmlinux"), "{file}");
            assert_eq!(expected, manifest.kernel.sha256);
            assert_ne!(actual, expected);
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    std::fs::write(dir.join("boot/vmlinux"), b"kernel bytes").unwrap();
    // Truncated: a size mismatch.
    std::fs::write(dir.join("root.img"), vec![7u8; 1 << 20]).unwrap();
    match manifest.verify_files(dir.path()) {
        Err(ImageError::SizeMismatch { file, expected, actual }) => {
            assert!(file.ends_with("root.img"), "{file}");
            assert_eq!((expected, actual), (3 << 20, 1 << 20));
        }
        other => panic!("expected a size mismatch, got {other:?}"),
    }
    std::fs::remove_file(dir.join("root.img")).unwrap();
    assert!(matches!(manifest.verify_files(dir.path()), Err(ImageError::FileMissing(p)) if p.ends_with("root.img")));
}

#[test]
fn describe_refuses_files_outside_the_directory() {
    let outer = TempDir::new("outside");
    std::fs::create_dir(outer.join("image")).unwrap();
    std::fs::write(outer.join("vmlinux"), b"k").unwrap();
    std::fs::write(outer.join("image/root.img"), b"r").unwrap();
    let options = DescribeOptions::new("x", outer.join("vmlinux"), outer.join("image/root.img"));
    let err = Manifest::describe_files(&outer.join("image"), &options).unwrap_err();
    assert!(err.to_string().contains("not inside"), "{err}");
    // A missing file is named.
    let options = DescribeOptions::new("x", outer.join("image/nope"), outer.join("image/root.img"));
    assert!(matches!(
        Manifest::describe_files(&outer.join("image"), &options),
        Err(ImageError::FileMissing(_))
    ));
}
