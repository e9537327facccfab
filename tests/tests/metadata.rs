//! AMIs and metadata disks through the whole stack: an image directory built by
//! `scripts/build-image probe` is imported with `register-image --image-location` (every
//! checksum verified; a tampered copy refused with nothing left in the store), and each
//! instance gets a NoCloud metadata disk with its ID, the key pair's public key and its user
//! data, which Debian's own tools read back.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hearth_e2e::{kvm_available, repo_root, AgentMode, Cloud};

const T: Duration = Duration::from_secs(30);

/// `mtype -i DISK ::FILE`: a file of a FAT image, read by mtools.
fn mtype(disk: &Path, file: &str) -> String {
    let output = Command::new("mtype")
        .args(["-i", &disk.display().to_string(), &format!("::{file}")])
        .output()
        .expect("mtype (Debian package mtools) runs");
    assert!(
        output.status.success(),
        "mtype {file}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path.display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn image_import_and_metadata_disk() {
    if !kvm_available() {
        return;
    }
    let manifest = {
        let output = Command::new(repo_root().join("scripts/build-image"))
            .arg("probe")
            .output()
            .expect("scripts/build-image runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8(output.stdout).unwrap();
        stdout.lines().last().unwrap().trim().to_string()
    };
    let cloud = Cloud::start(AgentMode::InProcess);
    let store = cloud.dir.join("images");

    // A tampered copy of the image is refused, naming the file; the store holds nothing of it.
    let tampered = cloud.import_dir().join("tampered");
    std::fs::create_dir_all(&tampered).unwrap();
    let source = Path::new(&manifest).parent().unwrap();
    for entry in std::fs::read_dir(source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tampered.join(entry.file_name())).unwrap();
    }
    let root = tampered.join("root.img");
    let mut bytes = std::fs::read(&root).unwrap();
    bytes[4096] ^= 1;
    std::fs::write(&root, bytes).unwrap();
    let before = files_under(&store);
    let refused = cloud.cli(&[
        "register-image",
        "--image-location",
        &tampered.join("image.json").display().to_string(),
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("InvalidManifest") && stderr.contains("root.img"),
        "{stderr}"
    );
    assert_eq!(files_under(&store), before, "nothing half-imported stays");

    // Outside the import directory, the real one is refused: hearthd reads no other host path.
    let outside = cloud.cli(&["register-image", "--image-location", &manifest]);
    let stderr = String::from_utf8_lossy(&outside.stderr);
    assert!(!outside.status.success());
    assert!(
        stderr.contains("InvalidParameterValue") && stderr.contains("outside the image import directory"),
        "{stderr}"
    );
    assert_eq!(files_under(&store), before, "nothing imported");

    // Put into the import directory, it imports; DescribeImages shows where it came from.
    let manifest = hearth_e2e::import_manifest(&cloud.import_dir(), Path::new(&manifest), "probe")
        .display()
        .to_string();
    let ami = cloud.cli_json(&["register-image", "--image-location", &manifest])["ImageId"]
        .as_str()
        .unwrap()
        .to_string();
    let image = &cloud.cli_json(&["describe-images", "--image-ids", &ami])["Images"][0];
    assert_eq!(image["ImageLocation"], manifest.as_str(), "{image}");
    assert_eq!(image["ManifestDigest"].as_str().unwrap().len(), 64, "{image}");
    assert_eq!(files_under(&store.join("manifests")).len(), 1);

    // An instance with a key pair and user data: its metadata disk.
    let key_file = cloud.dir.join("laptop");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "laptop", "-f"])
        .arg(&key_file)
        .status()
        .expect("ssh-keygen (openssh-client) runs");
    assert!(keygen.success());
    let public_key = std::fs::read_to_string(key_file.with_extension("pub")).unwrap();
    let key_body = public_key.split_whitespace().nth(1).unwrap().to_string();
    let key = cloud.cli_json(&[
        "import-key-pair",
        "--key-name",
        "laptop",
        "--public-key-material",
        public_key.trim(),
    ]);
    assert_eq!(key["KeyName"], "laptop", "{key}");
    let user_data = cloud.dir.join("user-data");
    std::fs::write(&user_data, "#cloud-config\npassword: hunter2\n").unwrap();
    let reservation = cloud.cli_json(&[
        "run-instances",
        "--image-id",
        &ami,
        "--key-name",
        "laptop",
        "--user-data",
        &format!("file://{}", user_data.display()),
    ]);
    let id = reservation["Instances"][0]["InstanceId"].as_str().unwrap().to_string();
    cloud.wait_state(&id, "running", T);
    let disk = cloud.run_dir().join(&id).join("cidata.img");
    let blkid = Command::new("blkid")
        .args(["-o", "export"])
        .arg(&disk)
        .output()
        .unwrap();
    let blkid = String::from_utf8_lossy(&blkid.stdout);
    assert!(blkid.contains("TYPE=vfat") && blkid.contains("LABEL=cidata"), "{blkid}");
    let fsck = Command::new("fsck.vfat").arg("-n").arg(&disk).output().unwrap();
    assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stdout));
    let meta = mtype(&disk, "meta-data");
    assert!(meta.contains(&format!("instance-id: \"{id}\"")), "{meta}");
    assert!(meta.contains(&key_body), "{meta}");
    assert_eq!(mtype(&disk, "user-data"), "#cloud-config\npassword: hunter2\n");

    // The VMM got it last, read-only, with the serial "cidata".
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cloud.run_dir().join(&id).join("config.json")).unwrap()).unwrap();
    let disks = config["disks"].as_array().unwrap();
    let last = disks.last().unwrap();
    assert_eq!(
        (last["id"].as_str(), last["read_only"].as_bool()),
        (Some("cidata"), Some(true)),
        "{config}"
    );
    assert_eq!(disks.len(), 2, "root + metadata: {config}");

    // The key pair may go; the instance keeps its key (as in EC2).
    let deleted = cloud.cli(&["delete-key-pair", "--key-name", "laptop"]);
    assert!(deleted.status.success());
    let stopped = cloud.cli(&["stop-instances", "--instance-ids", &id, "--force", "--wait"]);
    assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
    let started = cloud.cli(&["start-instances", "--instance-ids", &id, "--wait"]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    assert!(mtype(&disk, "meta-data").contains(&key_body));

    let terminated = cloud.cli(&["terminate-instances", "--instance-ids", &id, "--wait"]);
    assert!(terminated.status.success());
    assert!(!disk.exists(), "the run directory goes at termination");
}
