//! EBS volumes, snapshots and the instance store through the whole stack, with real VMs (the
//! probe AMI): data that survives stop/start and hearthd restarts, volumes moved between
//! instances, the instance store kept across reboots and wiped at stop, incremental
//! snapshots of a running VM, encryption at rest, and hearthd killed during CreateSnapshot.
//!
//! Disk order in the guest (block device numbers of `probe: block <k>` and of the probe's
//! `blk-counter@<k>`): the root volume, the attached volumes in attach order, the
//! instance-store disks, the metadata disk (`cidata`) last.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hearth_api::v1::*;
use hearth_e2e::{binary, kvm_available, AgentMode, Cloud};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The zone of the `--dev` host (region `homelab-1`).
const ZONE: &str = "homelab-1a";
/// How the probe's console ends after `wait` saw the power button.
const GRACEFUL: &str = "probe: power button\nprobe: poweroff\n";

fn ec2_code(status: &tonic::Status) -> String {
    status.message().split(':').next().unwrap_or_default().to_string()
}

fn str_of(value: &Value, key: &str) -> String {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {value}"))
        .to_string()
}

/// RunInstances of `count` probe instances; their IDs.
fn run(cloud: &Cloud, ami: &str, instance_type: &str, count: usize) -> Vec<String> {
    let count = count.to_string();
    let reservation = cloud.cli_json(&[
        "run-instances",
        "--image-id",
        ami,
        "--instance-type",
        instance_type,
        "--count",
        &count,
    ]);
    reservation["Instances"]
        .as_array()
        .unwrap_or_else(|| panic!("no Instances in {reservation}"))
        .iter()
        .map(|i| str_of(i, "InstanceId"))
        .collect()
}

fn stop(cloud: &Cloud, ids: &[&str]) {
    let mut args = vec!["stop-instances", "--instance-ids"];
    args.extend_from_slice(ids);
    cloud.cli_json(&args);
    for id in ids {
        cloud.wait_state(id, "stopped", T);
    }
}

fn start(cloud: &Cloud, id: &str) {
    cloud.cli_json(&["start-instances", "--instance-ids", id]);
    cloud.wait_state(id, "running", T);
}

fn root_volume(cloud: &Cloud, id: &str) -> String {
    let instance = cloud.instance(id);
    let root = instance.block_device_mappings[0].volume_id.clone();
    assert!(root.starts_with("vol-"), "{instance:?}");
    root
}

fn volume_file(cloud: &Cloud, volume_id: &str) -> PathBuf {
    cloud.volume_dir().join(format!("{volume_id}.img"))
}

/// DescribeVolumes of one volume.
fn volume(cloud: &Cloud, volume_id: &str) -> Value {
    let described = cloud.cli_json(&["describe-volumes", "--volume-ids", volume_id]);
    described["Volumes"][0].clone()
}

/// CreateVolume of `size_gib` in the `--dev` zone (plus `extra` arguments); waits until it
/// is available and returns its description.
fn create_volume(cloud: &Cloud, size_gib: Option<u64>, extra: &[&str]) -> Value {
    let size = size_gib.map(|s| s.to_string());
    let mut args = vec!["create-volume", "--availability-zone", ZONE];
    if let Some(size) = &size {
        args.extend(["--size", size]);
    }
    args.extend_from_slice(extra);
    args.push("--wait");
    let created = cloud.cli_json(&args);
    let id = str_of(&created, "VolumeId");
    let described = volume(cloud, &id);
    assert_eq!(described["State"], "available", "{described}");
    described
}

fn attach(cloud: &Cloud, volume_id: &str, instance_id: &str, device: &str) {
    let attached = cloud.cli_json(&[
        "attach-volume",
        "--volume-id",
        volume_id,
        "--instance-id",
        instance_id,
        "--device",
        device,
    ]);
    assert_eq!(attached["State"], "attaching", "{attached}");
    let described = volume(cloud, volume_id);
    assert_eq!(described["State"], "in-use", "{described}");
    assert_eq!(described["Attachments"][0]["InstanceId"], instance_id, "{described}");
    assert_eq!(described["Attachments"][0]["Device"], device, "{described}");
}

/// CreateSnapshot --wait; the completed snapshot as DescribeSnapshots shows it.
fn snapshot(cloud: &Cloud, volume_id: &str) -> Value {
    let begun = Instant::now();
    let created = cloud.cli_json(&["create-snapshot", "--volume-id", volume_id, "--wait"]);
    let id = str_of(&created, "SnapshotId");
    let described = describe_snapshot(cloud, &id);
    assert_eq!(described["State"], "completed", "{described}\n{}", cloud.logs());
    eprintln!(
        "snapshot {id} of {volume_id}: {:?}, stored {} bytes of {}",
        begun.elapsed(),
        described["StoredBytes"],
        described["FullSnapshotSizeInBytes"]
    );
    described
}

fn describe_snapshot(cloud: &Cloud, snapshot_id: &str) -> Value {
    let described = cloud.cli_json(&["describe-snapshots", "--snapshot-ids", snapshot_id]);
    described["Snapshots"][0].clone()
}

/// The VMM's JSON configuration the agent wrote for the instance's last start.
fn vmm_config(cloud: &Cloud, id: &str) -> Value {
    let path = cloud.run_dir().join(id).join("config.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The disk IDs of the config, in slot order.
fn disk_ids(config: &Value) -> Vec<String> {
    config["disks"]
        .as_array()
        .unwrap_or_else(|| panic!("no disks in {config}"))
        .iter()
        .map(|d| str_of(d, "id"))
        .collect()
}

/// The device ID a volume shows the guest (hearth_agent::volume::disk_id).
fn disk_id(volume_id: &str) -> String {
    volume_id.replace('-', "").chars().take(20).collect()
}

/// One request on the VMM's control socket.
fn vmm_ctl(cloud: &Cloud, id: &str, request: &str) -> Value {
    let socket = cloud.run_dir().join(id).join("vmm.sock");
    let mut stream =
        std::os::unix::net::UnixStream::connect(&socket).unwrap_or_else(|e| panic!("{}: {e}", socket.display()));
    stream.set_read_timeout(Some(T)).unwrap();
    stream.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{request}: bad answer {line:?}: {e}"))
}

/// The console's length now: [`wait_console_after`] looks only at what comes after it.
fn console_mark(cloud: &Cloud, id: &str) -> usize {
    cloud.console(id).len()
}

/// Waits until the console has `line` (a whole line) after `mark`.
fn wait_console_after(cloud: &Cloud, id: &str, mark: usize, line: &str) {
    let needle = format!("{line}\n");
    let deadline = Instant::now() + T;
    loop {
        let console = cloud.console(id);
        if console.get(mark..).is_some_and(|tail| tail.contains(&needle)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "console of {id} lacks {line:?} after byte {mark}:\n{}\n{}",
            console.get(mark..).unwrap_or(&console),
            cloud.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Boots counted on the console after `mark` (`probe: boot-count <n>` lines), for checks
/// that a counter printed nothing it should not have.
fn counters_after(cloud: &Cloud, id: &str, mark: usize) -> Vec<u64> {
    let console = cloud.console(id);
    console
        .get(mark..)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("probe: boot-count "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// hearthd restarted on the same data directory, once its host is back.
fn restart_hearthd(cloud: &mut Cloud) {
    cloud.start_hearthd();
    cloud.wait_for_zone();
}

/// The sector `blk-pattern` writes at `sector` with `seed`.
fn pattern_sector(sector: u64, seed: u64) -> [u8; 512] {
    let mut bytes = [0u8; 512];
    bytes[..8].copy_from_slice(b"HEARTHPT");
    bytes[8..16].copy_from_slice(&sector.to_le_bytes());
    bytes[16..24].copy_from_slice(&seed.to_le_bytes());
    bytes
}

fn read_at(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// Asserts that `[offset, offset + len)` of two files is equal, naming the first
/// differing MiB.
fn assert_same_range(a: &Path, b: &Path, offset: u64, len: u64) {
    let (x, y) = (read_at(a, offset, len), read_at(b, offset, len));
    if x != y {
        let first = x.iter().zip(&y).position(|(p, q)| p != q).unwrap() as u64 + offset;
        panic!(
            "{} and {} differ at byte {first} (MiB {})",
            a.display(),
            b.display(),
            first / MIB
        );
    }
}

/// Volume files and stray `.frozen`/`.partial` files in the volume directory.
fn stray_files(cloud: &Cloud) -> Vec<String> {
    std::fs::read_dir(cloud.volume_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".frozen") || n.ends_with(".partial") || n.ends_with(".tmp"))
        .collect()
}

/// 1. The root volume's boot counter goes on across stop/start and across hearthd killed
///    with SIGKILL, both while the instance runs (its VMM is re-adopted) and while it is
///    stopped.
#[test]
fn ebs_data_survives_stop_start_and_hearthd_restarts() {
    if !kvm_available() {
        return;
    }
    let begun = Instant::now();
    let mut cloud = Cloud::start(AgentMode::InProcess);
    let ami = cloud.register_probe_ami("probe-ebs", "timer,blk-counter,wait");
    let id = run(&cloud, &ami, "t3.micro", 1).remove(0);
    cloud.wait_state(&id, "running", T);
    wait_console_after(&cloud, &id, 0, "probe: boot-count 1");
    let root = root_volume(&cloud, &id);

    eprintln!("stop/start");
    stop(&cloud, &[&id]);
    let mark = console_mark(&cloud, &id);
    start(&cloud, &id);
    wait_console_after(&cloud, &id, mark, "probe: boot-count 2");

    eprintln!("hearthd killed while the instance runs");
    let pids = cloud.vmm_pids();
    assert_eq!(pids.len(), 1, "{pids:?}");
    cloud.kill_hearthd();
    assert!(hearth_e2e::process_alive(pids[0]), "the VMM died with hearthd");
    restart_hearthd(&mut cloud);
    assert_eq!(cloud.state(&id), "running");
    assert_eq!(cloud.vmm_pids(), pids, "the VMM was not re-adopted");
    stop(&cloud, &[&id]);
    let mark = console_mark(&cloud, &id);
    assert!(cloud.console(&id).ends_with(GRACEFUL), "not a graceful stop");
    start(&cloud, &id);
    wait_console_after(&cloud, &id, mark, "probe: boot-count 3");

    eprintln!("hearthd killed while the instance is stopped");
    stop(&cloud, &[&id]);
    cloud.kill_hearthd();
    restart_hearthd(&mut cloud);
    assert_eq!(cloud.state(&id), "stopped");
    let mark = console_mark(&cloud, &id);
    start(&cloud, &id);
    wait_console_after(&cloud, &id, mark, "probe: boot-count 4");
    assert_eq!(root_volume(&cloud, &id), root);
    assert_eq!(counters_after(&cloud, &id, 0), [1, 2, 3, 4]);

    // The counter is in the volume file, in plain text (not encrypted).
    stop(&cloud, &[&id]);
    let sector = read_at(&volume_file(&cloud, &root), 0, 16);
    assert_eq!(&sector[..8], b"HEARTHBC");
    assert_eq!(u64::from_le_bytes(sector[8..16].try_into().unwrap()), 4);
    eprintln!("done in {:?}", begun.elapsed());
}

/// A hearth-agent of its own in another zone (`homelab-1b`), killed with its files at drop.
struct OtherZoneAgent {
    child: Child,
    dir: PathBuf,
}

impl OtherZoneAgent {
    fn start(cloud: &Cloud) -> OtherZoneAgent {
        let dir = cloud.dir.join("agent-1b");
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let child = Command::new(binary("hearth-agent"))
            .arg("--hearthd")
            .arg(format!("unix:{}", cloud.socket().display()))
            .arg("--token-file")
            .arg(cloud.dir.join("agent-token"))
            .arg("--run-dir")
            .arg(dir.join("run"))
            .arg("--volume-dir")
            .arg(dir.join("volumes"))
            .args([
                "--host-id",
                "h-e2e-1b",
                "--az",
                "homelab-1b",
                "--vcpus",
                "4",
                "--memory-mib",
                "4096",
                "--network",
                "off",
            ])
            .arg("--vmm")
            .arg(binary("hearth-vmm"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn hearth-agent");
        OtherZoneAgent { child, dir }
    }
}

impl Drop for OtherZoneAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// 2. A data volume attached to a stopped instance shows up as its second disk with gp3's
///    limits, keeps what the guest wrote when it moves to another instance, and the
///    volume API refuses what EC2 refuses.
#[test]
fn data_volume_attaches_detaches_and_moves_between_instances() {
    if !kvm_available() {
        return;
    }
    let begun = Instant::now();
    let cloud = Cloud::start(AgentMode::InProcess);
    // Block device 1: the data volume when one is attached (else the read-only metadata
    // disk, whose write fails: no boot-count line).
    let ami = cloud.register_probe_ami("probe-data", "timer,blk-counter@1,wait");
    let ids = run(&cloud, &ami, "t3.micro", 2);
    let (a, b) = (ids[0].as_str(), ids[1].as_str());
    cloud.wait_state(a, "running", T);
    cloud.wait_state(b, "running", T);
    let data = create_volume(&cloud, Some(1), &[]);
    let vol = str_of(&data, "VolumeId");
    assert_eq!(data["Size"], 1);
    assert_eq!(data["VolumeType"], "gp3");
    assert_eq!(data["Iops"], 3000);
    assert_eq!(data["Throughput"], 125);
    assert_eq!(data["AvailabilityZone"], ZONE);

    eprintln!("errors");
    cloud.block_on(async {
        let mut client = cloud.client().await;
        let err = client
            .attach_volume(AttachVolumeRequest {
                volume_id: vol.clone(),
                instance_id: a.to_string(),
                device: "/dev/sdf".into(),
                dry_run: false,
            })
            .await
            .unwrap_err();
        assert_eq!(ec2_code(&err), "IncorrectInstanceState", "{err:?}");
        let err = client
            .describe_volumes(DescribeVolumesRequest {
                volume_ids: vec!["vol-0123456789abcdef0".into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(ec2_code(&err), "InvalidVolume.NotFound", "{err:?}");
        let err = client
            .delete_volume(VolumeIdRequest {
                volume_id: "vol-0123456789abcdef0".into(),
                dry_run: false,
            })
            .await
            .unwrap_err();
        assert_eq!(ec2_code(&err), "InvalidVolume.NotFound", "{err:?}");
        let err = client
            .detach_volume(DetachVolumeRequest {
                volume_id: vol.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(ec2_code(&err), "InvalidAttachment.NotFound", "{err:?}");
    });
    // Nothing changed.
    assert_eq!(volume(&cloud, &vol)["State"], "available");

    eprintln!("attach to {a}");
    stop(&cloud, &[a, b]);
    attach(&cloud, &vol, a, "/dev/sdf");
    let err = cloud.block_on(async {
        let mut client = cloud.client().await;
        client
            .delete_volume(VolumeIdRequest {
                volume_id: vol.clone(),
                dry_run: false,
            })
            .await
            .unwrap_err()
    });
    assert_eq!(ec2_code(&err), "VolumeInUse", "{err:?}");
    let mark = console_mark(&cloud, a);
    start(&cloud, a);
    wait_console_after(&cloud, a, mark, "probe: boot-count 1");
    wait_console_after(
        &cloud,
        a,
        mark,
        &format!("probe: block 1 sectors={} ro=0 id={}", GIB / 512, disk_id(&vol)),
    );
    let err = cloud.block_on(async {
        let mut client = cloud.client().await;
        client
            .detach_volume(DetachVolumeRequest {
                volume_id: vol.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err()
    });
    assert_eq!(
        ec2_code(&err),
        "IncorrectInstanceState",
        "detach from a running instance: {err:?}"
    );
    let config = vmm_config(&cloud, a);
    let root = root_volume(&cloud, a);
    assert_eq!(disk_ids(&config), [disk_id(&root), disk_id(&vol), "cidata".to_string()]);
    let disk = &config["disks"][1];
    assert_eq!(disk["path"], volume_file(&cloud, &vol).display().to_string(), "{disk}");
    assert_eq!(disk["read_only"], false);
    assert_eq!(
        disk["rate_limit"],
        serde_json::json!({
            "ops_per_sec": 3000, "ops_burst": 3000,
            "bytes_per_sec": 125 * MIB, "bytes_burst": 125 * MIB
        }),
        "{disk}"
    );
    assert!(disk.get("encryption").is_none(), "{disk}");
    assert_eq!(
        disk["dirty_bitmap"],
        cloud.volume_dir().join(format!("{vol}.dirty")).display().to_string()
    );
    let instance = cloud.instance(a);
    let devices: Vec<(&str, &str)> = instance
        .block_device_mappings
        .iter()
        .map(|m| (m.device_name.as_str(), m.volume_id.as_str()))
        .collect();
    assert_eq!(devices[1], ("/dev/sdf", vol.as_str()), "{devices:?}");

    eprintln!("detach from {a}, attach to {b}");
    stop(&cloud, &[a]);
    // Detach checks the instance and device it is given.
    let err = cloud.block_on(async {
        let mut client = cloud.client().await;
        client
            .detach_volume(DetachVolumeRequest {
                volume_id: vol.clone(),
                instance_id: b.to_string(),
                ..Default::default()
            })
            .await
            .unwrap_err()
    });
    assert_eq!(ec2_code(&err), "InvalidAttachment.NotFound", "{err:?}");
    let detached = cloud.cli_json(&["detach-volume", "--volume-id", &vol, "--wait"]);
    assert_eq!(detached["InstanceId"], a, "{detached}");
    assert_eq!(volume(&cloud, &vol)["State"], "available");
    assert!(cloud
        .instance(a)
        .block_device_mappings
        .iter()
        .all(|m| m.volume_id != vol));
    attach(&cloud, &vol, b, "/dev/sdg");
    let mark = console_mark(&cloud, b);
    start(&cloud, b);
    wait_console_after(&cloud, b, mark, "probe: boot-count 2");
    assert_eq!(disk_ids(&vmm_config(&cloud, b))[1], disk_id(&vol));

    // A started without it: block device 1 is the metadata disk again.
    let mark = console_mark(&cloud, a);
    start(&cloud, a);
    wait_console_after(&cloud, a, mark, "probe: boot timer written");
    let console = cloud.console(a);
    assert!(
        console[mark..]
            .lines()
            .any(|l| l.starts_with("probe: block 1 ") && l.ends_with(" ro=1 id=cidata")),
        "{}",
        &console[mark..]
    );
    assert_eq!(disk_ids(&vmm_config(&cloud, a)).len(), 2);
    assert!(counters_after(&cloud, a, mark).is_empty());

    eprintln!("zone mismatch");
    let other = OtherZoneAgent::start(&cloud);
    let deadline = Instant::now() + T;
    let far = loop {
        let output = cloud.cli(&[
            "create-volume",
            "--availability-zone",
            "homelab-1b",
            "--size",
            "1",
            "--output",
            "json",
        ]);
        if output.status.success() {
            let created: Value = serde_json::from_slice(&output.stdout).unwrap();
            break str_of(&created, "VolumeId");
        }
        assert!(
            Instant::now() < deadline,
            "no volume in homelab-1b: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(other.dir.join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = cloud.block_on(async {
        let mut client = cloud.client().await;
        client
            .attach_volume(AttachVolumeRequest {
                volume_id: far.clone(),
                instance_id: b.to_string(),
                device: "/dev/sdh".into(),
                dry_run: false,
            })
            .await
            .unwrap_err()
    });
    assert_eq!(ec2_code(&err), "InvalidVolume.ZoneMismatch", "{err:?}");
    drop(other);

    // Terminating B leaves the volume (attached with DeleteOnTermination false) available
    // and its file in place; DeleteVolume then removes both.
    cloud.cli_json(&["terminate-instances", "--instance-ids", b]);
    cloud.wait_state(b, "terminated", T);
    let after = volume(&cloud, &vol);
    assert_eq!(after["State"], "available", "{after}");
    assert!(volume_file(&cloud, &vol).exists());
    let output = cloud.cli(&["delete-volume", "--volume-id", &vol]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        !volume_file(&cloud, &vol).exists(),
        "the volume file outlived DeleteVolume"
    );
    eprintln!("done in {:?}", begun.elapsed());
}

/// 3. The instance store: a fresh disk at each start, kept across a reboot, wiped (its file
///    removed) at stop.
#[test]
fn instance_store_is_kept_on_reboot_and_wiped_at_stop() {
    if !kvm_available() {
        return;
    }
    let begun = Instant::now();
    let cloud = Cloud::start(AgentMode::InProcess);
    let types = cloud.cli_json(&["describe-instance-types", "--instance-types", "i3.nano"]);
    let store_gib = types["InstanceTypes"][0]["InstanceStorageInfo"]["TotalSizeInGB"]
        .as_u64()
        .unwrap_or_else(|| panic!("no instance store in {types}"));
    assert!(store_gib > 0, "{types}");
    // Block device 1: the instance-store disk (after the root volume, before cidata).
    let ami = cloud.register_probe_ami("probe-store", "timer,blk-counter@1,wait");
    let id = run(&cloud, &ami, "i3.nano", 1).remove(0);
    cloud.wait_state(&id, "running", T);
    wait_console_after(&cloud, &id, 0, "probe: boot-count 1");
    wait_console_after(
        &cloud,
        &id,
        0,
        &format!("probe: block 1 sectors={} ro=0 id=ephemeral0", store_gib * GIB / 512),
    );
    let ephemeral = cloud.run_dir().join(&id).join("ephemeral0.img");
    assert_eq!(std::fs::metadata(&ephemeral).unwrap().len(), store_gib * GIB);
    let config = vmm_config(&cloud, &id);
    let ids = disk_ids(&config);
    assert_eq!(ids[1..], ["ephemeral0", "cidata"], "{config}");
    assert!(config["disks"][1].get("dirty_bitmap").is_none(), "{config}");

    eprintln!("reboot");
    let mark = console_mark(&cloud, &id);
    let output = cloud.cli(&["reboot-instances", "--instance-ids", &id]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    wait_console_after(&cloud, &id, mark, "probe: boot-count 2");
    assert_eq!(cloud.state(&id), "running");

    eprintln!("stop: wiped");
    stop(&cloud, &[&id]);
    assert!(!ephemeral.exists(), "{} kept while stopped", ephemeral.display());
    let mark = console_mark(&cloud, &id);
    start(&cloud, &id);
    wait_console_after(&cloud, &id, mark, "probe: boot-count 1");
    assert_eq!(counters_after(&cloud, &id, 0), [1, 2, 1]);
    assert!(ephemeral.exists());

    eprintln!("terminate");
    cloud.cli_json(&["terminate-instances", "--instance-ids", &id]);
    cloud.wait_state(&id, "terminated", T);
    assert!(!ephemeral.exists());
    eprintln!("done in {:?}", begun.elapsed());
}

/// 4. Snapshots of a running instance's root volume through the VMM: point in time,
///    incremental (the second stores exactly the MiB written since the first), and restored
///    byte for byte; the guest runs on afterwards.
#[test]
fn snapshots_of_a_running_volume_are_incremental_and_restore_byte_for_byte() {
    if !kvm_available() {
        return;
    }
    let begun = Instant::now();
    let cloud = Cloud::start(AgentMode::InProcess);
    let ami = cloud.register_probe_ami(
        "probe-snap",
        "timer,blk-pattern=4@0,await-button,blk-pattern=3@8#1,wait",
    );
    let id = run(&cloud, &ami, "t3.micro", 1).remove(0);
    cloud.wait_state(&id, "running", T);
    wait_console_after(&cloud, &id, 0, "probe: pattern 4 MiB status=0");
    wait_console_after(&cloud, &id, 0, "probe: awaiting button");
    let root = root_volume(&cloud, &id);
    let source = volume_file(&cloud, &root);
    let size_gib = volume(&cloud, &root)["Size"].as_u64().unwrap();
    assert_eq!(read_at(&source, 3 * MIB + 512, 512), pattern_sector(3 * 2048 + 1, 0));

    eprintln!("first snapshot (guest paused, every chunk read)");
    let first = snapshot(&cloud, &root);
    assert_eq!(first["StoredBytes"], 4 * MIB, "{first}");
    assert_eq!(first["FullSnapshotSizeInBytes"], 4 * MIB, "{first}");
    assert_eq!(first["Encrypted"], false);
    assert_eq!(first["VolumeSize"], size_gib);
    let first_id = str_of(&first, "SnapshotId");
    let info = vmm_ctl(&cloud, &id, "info");
    assert_eq!(info["state"], "running", "guest left paused: {info}");

    eprintln!("more writes, second snapshot (the dirty chunks only)");
    assert_eq!(vmm_ctl(&cloud, &id, "power-button")["ok"], true);
    wait_console_after(&cloud, &id, 0, "probe: pattern 3 MiB status=0");
    let dirty = vmm_ctl(&cloud, &id, r#"{"cmd":"dirty-info","disk":0}"#);
    assert_eq!(dirty["dirty"], serde_json::json!([[8, 3]]), "{dirty}");
    let second = snapshot(&cloud, &root);
    assert_eq!(second["StoredBytes"], 3 * MIB, "{second}");
    assert_eq!(second["FullSnapshotSizeInBytes"], 7 * MIB, "{second}");
    let second_id = str_of(&second, "SnapshotId");
    assert!(stray_files(&cloud).is_empty(), "{:?}", stray_files(&cloud));
    // A third with nothing written stores nothing.
    let third = snapshot(&cloud, &root);
    assert_eq!(third["StoredBytes"], 0, "{third}");
    assert_eq!(third["FullSnapshotSizeInBytes"], 7 * MIB, "{third}");

    eprintln!("restores");
    let from_first = create_volume(&cloud, None, &["--snapshot-id", &first_id]);
    let from_second = create_volume(&cloud, None, &["--snapshot-id", &second_id]);
    assert_eq!(from_first["Size"], size_gib);
    assert_eq!(from_first["SnapshotId"], first_id.as_str());
    let first_file = volume_file(&cloud, &str_of(&from_first, "VolumeId"));
    let second_file = volume_file(&cloud, &str_of(&from_second, "VolumeId"));
    assert_eq!(std::fs::metadata(&first_file).unwrap().len(), size_gib * GIB);
    // The first holds the volume as it was then: the 4 MiB, nothing at MiB 8..11.
    assert_same_range(&first_file, &source, 0, 8 * MIB);
    assert!(read_at(&first_file, 8 * MIB, 3 * MIB).iter().all(|b| *b == 0));
    // The second, everything the guest wrote (the root image is 16 MiB; beyond is holes).
    assert_same_range(&second_file, &source, 0, 32 * MIB);
    assert_eq!(read_at(&second_file, 10 * MIB, 512), pattern_sector(10 * 2048, 1));

    // The guest still answers the power button: a graceful stop.
    stop(&cloud, &[&id]);
    assert!(cloud.console(&id).ends_with(GRACEFUL));

    eprintln!("stop/start: the dirty bitmap survives");
    let mark = console_mark(&cloud, &id);
    start(&cloud, &id);
    // The ops run again: the same 4 MiB rewritten, then the guest waits.
    wait_console_after(&cloud, &id, mark, "probe: awaiting button");
    let dirty = vmm_ctl(&cloud, &id, r#"{"cmd":"dirty-info","disk":0}"#);
    assert_eq!(dirty["dirty"], serde_json::json!([[0, 4]]), "{dirty}");
    let fourth = snapshot(&cloud, &root);
    assert_eq!(fourth["StoredBytes"], 0, "{fourth}");
    assert_eq!(fourth["FullSnapshotSizeInBytes"], 7 * MIB, "{fourth}");

    eprintln!("copy, delete the originals, restore the copy");
    let copied = cloud.cli_json(&["copy-snapshot", "--source-snapshot-id", &second_id, "--wait"]);
    let copy_id = str_of(&copied, "SnapshotId");
    let copy = describe_snapshot(&cloud, &copy_id);
    assert_eq!(copy["State"], "completed", "{copy}");
    assert_eq!(copy["StoredBytes"], 0, "{copy}");
    assert_eq!(copy["FullSnapshotSizeInBytes"], 7 * MIB, "{copy}");
    for snap in [
        &first_id,
        &second_id,
        &str_of(&third, "SnapshotId"),
        &str_of(&fourth, "SnapshotId"),
    ] {
        let output = cloud.cli(&["delete-snapshot", "--snapshot-id", snap]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let from_copy = create_volume(&cloud, None, &["--snapshot-id", &copy_id]);
    let copy_file = volume_file(&cloud, &str_of(&from_copy, "VolumeId"));
    assert_same_range(&copy_file, &second_file, 0, 32 * MIB);
    // The next snapshot has no base left: a full read again, nothing new to store.
    let fifth = snapshot(&cloud, &root);
    assert_eq!(fifth["StoredBytes"], 0, "{fifth}");
    assert_eq!(fifth["FullSnapshotSizeInBytes"], 7 * MIB, "{fifth}");
    assert_eq!(vmm_ctl(&cloud, &id, "info")["state"], "running");

    assert_eq!(vmm_ctl(&cloud, &id, "power-button")["ok"], true);
    let mark = console_mark(&cloud, &id);
    wait_console_after(&cloud, &id, mark, "probe: pattern 3 MiB status=0");
    stop(&cloud, &[&id]);
    assert!(cloud.console(&id).ends_with(GRACEFUL));
    eprintln!("done in {:?}", begun.elapsed());
}

/// 5. An encrypted volume: ciphertext in its file, an encrypted snapshot, and a restored
///    volume that another instance reads through its VMM; with its key file removed,
///    StartInstances and AttachVolume fail closed (`InvalidKMSKey.InvalidState`).
#[test]
fn encrypted_volume_snapshot_and_restore() {
    if !kvm_available() {
        return;
    }
    let begun = Instant::now();
    let cloud = Cloud::start(AgentMode::InProcess);
    let ami = cloud.register_probe_ami("probe-crypt", "timer,blk-counter@1,wait");
    let ids = run(&cloud, &ami, "t3.micro", 2);
    let (a, b) = (ids[0].as_str(), ids[1].as_str());
    cloud.wait_state(a, "running", T);
    cloud.wait_state(b, "running", T);
    stop(&cloud, &[a, b]);
    let created = create_volume(&cloud, Some(1), &["--encrypted"]);
    assert_eq!(created["Encrypted"], true, "{created}");
    let key = str_of(&created, "KmsKeyId");
    assert!(!key.is_empty(), "{created}");
    let vol = str_of(&created, "VolumeId");
    attach(&cloud, &vol, a, "/dev/sdf");
    let mark = console_mark(&cloud, a);
    start(&cloud, a);
    wait_console_after(&cloud, a, mark, "probe: boot-count 1");
    let config = vmm_config(&cloud, a);
    let key_file = PathBuf::from(str_of(&config["disks"][1]["encryption"], "key_file"));
    let meta = std::fs::metadata(&key_file).unwrap();
    assert_eq!(meta.len(), 64);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );

    // The guest's plain text never reaches the file.
    let file = volume_file(&cloud, &vol);
    let head = read_at(&file, 0, MIB);
    assert!(head[..512].iter().any(|b| *b != 0), "sector 0 not written");
    assert!(
        !head.windows(8).any(|w| w == b"HEARTHBC"),
        "plain text in the encrypted volume"
    );

    eprintln!("snapshot while running (VMM path)");
    let snap = snapshot(&cloud, &vol);
    assert_eq!(snap["Encrypted"], true, "{snap}");
    assert_eq!(snap["KmsKeyId"], key.as_str(), "{snap}");
    assert_eq!(snap["StoredBytes"], MIB, "{snap}");
    stop(&cloud, &[a]);
    assert!(!key_file.exists(), "key file kept after stop");

    eprintln!("restore, attach to {b}");
    let snap_id = str_of(&snap, "SnapshotId");
    let restored = create_volume(&cloud, None, &["--snapshot-id", &snap_id]);
    assert_eq!(restored["Encrypted"], true, "{restored}");
    assert_eq!(restored["KmsKeyId"], key.as_str(), "{restored}");
    let restored_id = str_of(&restored, "VolumeId");
    let restored_file = volume_file(&cloud, &restored_id);
    assert_same_range(&restored_file, &file, 0, MIB);
    attach(&cloud, &restored_id, b, "/dev/sdf");
    let mark = console_mark(&cloud, b);
    start(&cloud, b);
    wait_console_after(&cloud, b, mark, "probe: boot-count 2");
    assert!(
        vmm_config(&cloud, b)["disks"][1]["encryption"]["key_file"].is_string(),
        "no key for the restored volume"
    );
    // The original is untouched by B (still at 1), and still readable by A.
    let mark = console_mark(&cloud, a);
    start(&cloud, a);
    wait_console_after(&cloud, a, mark, "probe: boot-count 2");

    eprintln!("the key file removed: start and attach fail closed");
    stop(&cloud, &[a, b]);
    cloud.cli_json(&["detach-volume", "--volume-id", &restored_id, "--wait"]);
    assert_eq!(volume(&cloud, &restored_id)["State"], "available");
    let key_path = cloud.dir.join("kms").join(format!("{key}.key"));
    let hidden = key_path.with_extension("hidden");
    std::fs::rename(&key_path, &hidden).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let taps = || -> Vec<String> {
        std::fs::read_dir("/sys/class/net")
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.starts_with("ht"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let taps_before = taps();
    let (start_err, attach_err) = cloud.block_on(async {
        let mut client = cloud.client().await;
        let start_err = client
            .start_instances(InstanceIdsRequest {
                instance_ids: vec![a.to_string()],
                dry_run: false,
            })
            .await
            .unwrap_err();
        let attach_err = client
            .attach_volume(AttachVolumeRequest {
                volume_id: restored_id.clone(),
                instance_id: b.to_string(),
                device: "/dev/sdf".into(),
                dry_run: false,
            })
            .await
            .unwrap_err();
        (start_err, attach_err)
    });
    assert_eq!(ec2_code(&start_err), "InvalidKMSKey.InvalidState", "{start_err:?}");
    assert!(start_err.message().contains(&vol), "{start_err:?}");
    assert_eq!(ec2_code(&attach_err), "InvalidKMSKey.InvalidState", "{attach_err:?}");
    // Nothing changed: A stopped, no VMM started, no tap, the restored volume unattached,
    // the volume file the same bytes, no key file in A's run directory.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cloud.state(a), "stopped");
    assert!(cloud.vmm_pids().is_empty(), "VMMs: {:?}", cloud.vmm_pids());
    assert_eq!(taps(), taps_before);
    assert_eq!(volume(&cloud, &restored_id)["State"], "available");
    assert!(std::fs::read(&file).unwrap() == bytes, "the volume file changed");
    assert!(!cloud.run_dir().join(a).join(format!("{vol}.key")).exists());
    // With the key back, A starts and reads its volume again.
    std::fs::rename(&hidden, &key_path).unwrap();
    let mark = console_mark(&cloud, a);
    start(&cloud, a);
    wait_console_after(&cloud, a, mark, "probe: boot-count 3");
    eprintln!("done in {:?}", begun.elapsed());
}

/// Writes `mib` MiB of distinct non-zero chunks from MiB 1 of `path` (the file made
/// `size` bytes, sparse), and a boot counter at `count` in sector 0: what a guest could
/// have written.
fn fill_volume(path: &Path, size: u64, mib: u64, count: u64) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    file.set_len(size).unwrap();
    let mut sector0 = [0u8; 512];
    sector0[..8].copy_from_slice(b"HEARTHBC");
    sector0[8..16].copy_from_slice(&count.to_le_bytes());
    file.write_all_at(&sector0, 0).unwrap();
    let mut chunk = vec![0u8; MIB as usize];
    for m in 1..=mib {
        for (i, word) in chunk.chunks_exact_mut(8).enumerate() {
            word.copy_from_slice(&(m << 32 | i as u64).to_le_bytes());
        }
        file.write_all_at(&chunk, m * MIB).unwrap();
    }
    file.sync_all().unwrap();
}

/// Waits until `snapshot_id` leaves `pending`; its description.
fn wait_snapshot_done(cloud: &Cloud, snapshot_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let described = describe_snapshot(cloud, snapshot_id);
        if described["State"] != "pending" {
            return described;
        }
        assert!(Instant::now() < deadline, "{described}\n{}", cloud.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The data a large snapshot reads (MiB): big enough that hearthd is killed long before it
/// ends.
const BIG_MIB: u64 = 256;

/// 6. hearthd killed with SIGKILL while CreateSnapshot reads a stopped instance's volume
///    (starting the instance is refused meanwhile): the snapshot ends `error` (never
///    `completed`), and a new one of the same volume completes and restores correctly.
#[test]
fn hearthd_killed_during_create_snapshot_leaves_it_error_and_a_new_one_works() {
    if !kvm_available() {
        return;
    }
    let begun = Instant::now();
    let mut cloud = Cloud::start(AgentMode::InProcess);
    let ami = cloud.register_probe_ami("probe-killed", "timer,blk-counter@1,wait");
    let id = run(&cloud, &ami, "t3.micro", 1).remove(0);
    cloud.wait_state(&id, "running", T);
    stop(&cloud, &[&id]);
    let created = create_volume(&cloud, Some(2), &[]);
    let vol = str_of(&created, "VolumeId");
    attach(&cloud, &vol, &id, "/dev/sdf");
    let file = volume_file(&cloud, &vol);
    fill_volume(&file, 2 * GIB, BIG_MIB, 41);
    eprintln!("{BIG_MIB} MiB written in {:?}", begun.elapsed());

    let pending = cloud.cli_json(&["create-snapshot", "--volume-id", &vol]);
    let killed_id = str_of(&pending, "SnapshotId");
    assert_eq!(pending["State"], "pending", "{pending}");
    let refused = cloud.cli(&["start-instances", "--instance-ids", &id]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("(IncorrectInstanceState)"),
        "start during the snapshot: {stderr}"
    );
    cloud.kill_hearthd();
    eprintln!("hearthd killed with {killed_id} pending");
    restart_hearthd(&mut cloud);
    let killed = wait_snapshot_done(&cloud, &killed_id);
    assert_eq!(killed["State"], "error", "{killed}");
    assert!(
        !killed["StateMessage"].as_str().unwrap_or_default().is_empty(),
        "{killed}"
    );
    assert_eq!(cloud.state(&id), "stopped");
    // It cannot be restored.
    let output = cloud.cli(&[
        "create-volume",
        "--availability-zone",
        ZONE,
        "--snapshot-id",
        &killed_id,
    ]);
    assert!(!output.status.success());

    eprintln!("a new snapshot of the same volume");
    let fresh = snapshot(&cloud, &vol);
    assert_eq!(fresh["FullSnapshotSizeInBytes"], (BIG_MIB + 1) * MIB, "{fresh}");
    let restored = create_volume(&cloud, None, &["--snapshot-id", &str_of(&fresh, "SnapshotId")]);
    let restored_id = str_of(&restored, "VolumeId");
    let restored_file = volume_file(&cloud, &restored_id);
    assert_same_range(&restored_file, &file, 0, (BIG_MIB + 2) * MIB);
    assert_eq!(std::fs::metadata(&restored_file).unwrap().len(), 2 * GIB);
    // The error snapshot can be deleted.
    let output = cloud.cli(&["delete-snapshot", "--snapshot-id", &killed_id]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    // The guest reads the restored volume in place of the original: the counter written at
    // 41 goes on at 42.
    cloud.cli_json(&["detach-volume", "--volume-id", &vol, "--wait"]);
    attach(&cloud, &restored_id, &id, "/dev/sdf");
    let mark = console_mark(&cloud, &id);
    start(&cloud, &id);
    wait_console_after(&cloud, &id, mark, "probe: boot-count 42");
    eprintln!("done in {:?}", begun.elapsed());
}

/// 6b. hearthd killed with SIGKILL during the first snapshot of a running instance's
///     volume, while the guest is paused for it: after the restart the snapshot is `error`,
///     the guest runs again, and a new snapshot works.
#[test]
fn hearthd_killed_during_snapshot_of_a_running_volume_leaves_the_guest_running() {
    if !kvm_available() {
        return;
    }
    let begun = Instant::now();
    let mut cloud = Cloud::start(AgentMode::InProcess);
    let ami = cloud.register_probe_ami("probe-paused", "timer,blk-counter@1,wait");
    let id = run(&cloud, &ami, "t3.micro", 1).remove(0);
    cloud.wait_state(&id, "running", T);
    stop(&cloud, &[&id]);
    let created = create_volume(&cloud, Some(2), &[]);
    let vol = str_of(&created, "VolumeId");
    let file = volume_file(&cloud, &vol);
    fill_volume(&file, 2 * GIB, BIG_MIB, 6);
    attach(&cloud, &vol, &id, "/dev/sdf");
    let mark = console_mark(&cloud, &id);
    start(&cloud, &id);
    wait_console_after(&cloud, &id, mark, "probe: boot-count 7");
    // A first snapshot reads the VMM's copy whole (every chunk is dirty after a start
    // without a bitmap: no pause); deleting it leaves the next one without a base and with
    // a partial dirty list, which is when the guest is paused while the live file is read.
    let first = str_of(&cloud.cli_json(&["create-snapshot", "--volume-id", &vol]), "SnapshotId");
    let done = wait_snapshot_done(&cloud, &first);
    assert_eq!(done["State"], "completed", "{done}");
    let deleted = cloud.cli(&["delete-snapshot", "--snapshot-id", &first]);
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));

    let pending = cloud.cli_json(&["create-snapshot", "--volume-id", &vol]);
    let killed_id = str_of(&pending, "SnapshotId");
    // Kill once the guest is paused for the read.
    let deadline = Instant::now() + T;
    while vmm_ctl(&cloud, &id, "info")["state"] != "paused" {
        assert!(Instant::now() < deadline, "the guest was never paused");
        std::thread::sleep(Duration::from_millis(5));
    }
    cloud.kill_hearthd();
    eprintln!("hearthd killed with {killed_id} pending, guest paused");
    restart_hearthd(&mut cloud);
    let killed = wait_snapshot_done(&cloud, &killed_id);
    assert_eq!(killed["State"], "error", "{killed}");
    assert_eq!(cloud.state(&id), "running");
    let info = vmm_ctl(&cloud, &id, "info");
    assert_eq!(info["state"], "running", "the guest stays paused: {info}");

    let fresh = snapshot(&cloud, &vol);
    assert_eq!(fresh["FullSnapshotSizeInBytes"], (BIG_MIB + 1) * MIB, "{fresh}");
    assert!(stray_files(&cloud).is_empty(), "{:?}", stray_files(&cloud));
    let restored = create_volume(&cloud, None, &["--snapshot-id", &str_of(&fresh, "SnapshotId")]);
    let restored_file = volume_file(&cloud, &str_of(&restored, "VolumeId"));
    assert_same_range(&restored_file, &file, 0, (BIG_MIB + 2) * MIB);
    // The guest answers the power button.
    stop(&cloud, &[&id]);
    assert!(cloud.console(&id).ends_with(GRACEFUL));
    eprintln!("done in {:?}", begun.elapsed());
}
