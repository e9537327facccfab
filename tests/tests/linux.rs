//! Real Linux through the whole stack: hearthd, an agent in a host namespace, the
//! `minimal` AMI (hearth's kernel, busybox init, dropbear) booted by hearth-vmm, SSH from a
//! client namespace on the subnet. Runs where the host has VMX/SVM and, on our machines,
//! in the nested lab (`scripts/lab test`); every wait is generous, as the lab is emulated.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hearth_e2e::images::{build_image, ssh_in, ssh_key, TempDir};
use hearth_e2e::netlab::{Client, Lab, ZONE};

/// Every wait here: the lab runs everything emulated.
const LONG: Duration = Duration::from_secs(600);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);

fn s(value: &serde_json::Value) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"))
        .to_string()
}

/// Steps with how long each took (printed as the test goes, so the lab's log tells).
struct Steps {
    start: Instant,
    last: Instant,
}

impl Steps {
    fn new() -> Steps {
        let now = Instant::now();
        Steps { start: now, last: now }
    }

    fn done(&mut self, what: &str) {
        let now = Instant::now();
        eprintln!(
            "[{:7.1}s] {what} ({:.1}s)",
            (now - self.start).as_secs_f64(),
            (now - self.last).as_secs_f64()
        );
        self.last = now;
    }
}

/// `ssh root@ip COMMAND` from the client's namespace with `key`, one attempt.
fn ssh(client: &Client, key: &Path, ip: Ipv4Addr, command: &str) -> Output {
    ssh_in(client.netns.name(), key, &format!("root@{ip}"), command)
}

/// `ssh` until it succeeds (sshd may still be starting); returns its stdout, trimmed.
fn ssh_ok(lab: &Lab, client: &Client, key: &Path, ip: Ipv4Addr, command: &str) -> String {
    let deadline = Instant::now() + LONG;
    loop {
        let output = ssh(client, key, ip, command);
        if output.status.success() {
            return String::from_utf8_lossy(&output.stdout).trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "ssh root@{ip} {command:?} kept failing: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            lab.logs()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The run directory of `id` on host 0.
fn run_file(lab: &Lab, id: &str, name: &str) -> String {
    std::fs::read_to_string(lab.hosts[0].dir.join("run").join(id).join(name)).unwrap_or_default()
}

fn volume_file(lab: &Lab, volume: &str) -> std::path::PathBuf {
    lab.hosts[0].dir.join("volumes").join(format!("{volume}.img"))
}

fn debugfs_cat(image: &Path, path: &str) -> String {
    let output = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .output()
        .expect("debugfs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The guest's block device whose virtio serial names `volume`: like an EBS volume's NVMe
/// serial on EC2, the ID without its dash, in the 20 bytes virtio-blk has for it.
fn guest_disk(lab: &Lab, client: &Client, key: &Path, ip: Ipv4Addr, volume: &str) -> String {
    let serial: String = volume.replace('-', "").chars().take(20).collect();
    let listing = ssh_ok(
        lab,
        client,
        key,
        ip,
        "for b in /sys/block/vd*; do echo ${b##*/} $(cat $b/serial); done",
    );
    listing
        .lines()
        .find_map(|l| {
            let (dev, s) = l.split_once(' ')?;
            (s.trim() == serial).then(|| format!("/dev/{dev}"))
        })
        .unwrap_or_else(|| panic!("no guest disk with serial {serial}:\n{listing}"))
}

mod lab {
    use super::*;

    /// The whole-stack scenario, in order: launch → DHCP → SSH with the key pair →
    /// hostname and user-data → IMDSv2 → security group → graceful stop → start → data
    /// kept → a data volume → a snapshot while writing → restore + fsck → instance store
    /// → terminate leaves nothing.
    #[test]
    fn minimal_ami_through_the_whole_stack() {
        if !hearth_e2e::linux_guests_run() {
            return;
        }
        let mut steps = Steps::new();
        let mut lab = Lab::start_with_local_host(1);
        let image = build_image("minimal", None);
        let manifest = hearth_e2e::import_manifest(&lab.cloud.import_dir(), &image.manifest, "minimal");
        let ami = s(&lab
            .cloud
            .cli_json(&["register-image", "--image-location", manifest.to_str().unwrap()])["ImageId"]);
        let dir = TempDir::new("linux");
        let (key, public) = ssh_key(&dir);
        lab.cloud
            .cli_json(&["import-key-pair", "--key-name", "lab", "--public-key-material", &public]);
        let group = s(&lab
            .cloud
            .cli_json(&["create-security-group", "--group-name", "ssh", "--description", "lab"])["GroupId"]);
        steps.done("hearthd, agent, minimal AMI registered, key pair, group");

        let user_data = "#!/bin/sh\necho user-data-ran > /root/user-data.out\n";
        let reservation = lab.cloud.cli_json(&[
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "t3.micro",
            "--key-name",
            "lab",
            "--security-group-ids",
            &group,
            "--user-data",
            user_data,
        ]);
        let id = s(&reservation["Instances"][0]["InstanceId"]);
        lab.cloud.wait_state(&id, "running", LONG);
        steps.done("run-instances → running");
        let ip: Ipv4Addr = lab.cloud.instance(&id).private_ip_address.parse().unwrap();
        // The guest's DHCP lease is the address hearthd allocated. (The banner's next line
        // is waited for: the console may be caught mid-line.)
        let console = lab.wait_console(&id, &format!("ssh root@{ip}"), LONG);
        assert!(
            console.contains(&format!("hearth-minimal: ready instance-id={id} hostname={id} ip={ip}")),
            "{console}"
        );
        steps.done("guest ready (DHCP lease = the allocated address)");

        let bridge = lab.bridge_of_instance(&id);
        let allowed = lab.client(0, &bridge, "172.31.15.200/20", GATEWAY);
        let other = lab.client(0, &bridge, "172.31.15.201/20", GATEWAY);
        let (allowed, other) = (lab.get_client(allowed), lab.get_client(other));
        // No ingress rule yet: SSH is refused.
        assert!(!ssh(allowed, &key, ip, "true").status.success(), "SSH before any rule");
        lab.cloud.cli_json(&[
            "authorize-security-group-ingress",
            "--group-id",
            &group,
            "--protocol",
            "tcp",
            "--port",
            "22",
            "--cidr",
            "172.31.15.200/32",
        ]);
        assert_eq!(ssh_ok(&lab, allowed, &key, ip, "hostname"), id);
        steps.done("SSH with the key pair after authorize (hostname = instance id)");
        assert_eq!(
            ssh_ok(&lab, allowed, &key, ip, "cat /root/user-data.out"),
            "user-data-ran"
        );
        // IMDSv2 from inside: a token by PUT, then the instance id with it.
        let imds = ssh_ok(
            &lab,
            allowed,
            &key,
            ip,
            "t=$(printf 'PUT /latest/api/token HTTP/1.0\\r\\nX-aws-ec2-metadata-token-ttl-seconds: 60\\r\\n\\r\\n' \
             | nc 169.254.169.254 80 | tail -n 1) && \
             wget -q -O - --header \"X-aws-ec2-metadata-token: $t\" http://169.254.169.254/latest/meta-data/instance-id",
        );
        assert_eq!(imds, id);
        steps.done("user-data ran; IMDSv2 token + instance-id");
        assert!(
            !ssh(other, &key, ip, "true").status.success(),
            "SSH from an unauthorised source"
        );
        steps.done("SSH from an unauthorised source refused");

        ssh_ok(&lab, allowed, &key, ip, &format!("echo kept-{id} > /root/kept && sync"));
        lab.cloud.cli_json(&["stop-instances", "--instance-ids", &id]);
        lab.cloud.wait_state(&id, "stopped", LONG);
        let vmm_log = run_file(&lab, &id, "vmm.log");
        assert!(
            vmm_log.contains("guest-poweroff") && !vmm_log.contains("forced"),
            "the stop was not the guest's own power-off:\n{vmm_log}\n{}",
            lab.console(&id)
        );
        assert!(lab.console(&id).contains("hearth-minimal: power button pressed"));
        steps.done("stop-instances: graceful (power button → the guest's power-off)");

        let volume = s(&lab
            .cloud
            .cli_json(&["create-volume", "--availability-zone", ZONE, "--size", "1", "--wait"])["VolumeId"]);
        lab.cloud.cli_json(&[
            "attach-volume",
            "--volume-id",
            &volume,
            "--instance-id",
            &id,
            "--device",
            "/dev/sdf",
        ]);
        lab.cloud.cli_json(&["start-instances", "--instance-ids", &id]);
        lab.cloud.wait_state(&id, "running", LONG);
        assert_eq!(ssh_ok(&lab, allowed, &key, ip, "cat /root/kept"), format!("kept-{id}"));
        steps.done("data volume attached while stopped; start-instances; the file written before the stop is there");

        let disk = guest_disk(&lab, allowed, &key, ip, &volume);
        ssh_ok(
            &lab,
            allowed,
            &key,
            ip,
            &format!(
                "mkfs.ext4 -q {disk} && mkdir -p /data && mount {disk} /data && \
                 echo before-snapshot > /data/before && sync"
            ),
        );
        // The guest keeps writing while the snapshot is taken.
        ssh_ok(
            &lab,
            allowed,
            &key,
            ip,
            "nohup sh -c 'i=0; while [ $i -lt 600 ]; do echo $i >> /data/during; sync; i=$((i+1)); sleep 0.05; done' \
             >/dev/null 2>&1 &",
        );
        steps.done("volume formatted and mounted in the guest; writer started");
        let snapshot = s(&lab
            .cloud
            .cli_json(&["create-snapshot", "--volume-id", &volume, "--wait"])["SnapshotId"]);
        let restored = s(&lab.cloud.cli_json(&[
            "create-volume",
            "--availability-zone",
            ZONE,
            "--snapshot-id",
            &snapshot,
            "--wait",
        ])["VolumeId"]);
        let file = volume_file(&lab, &restored);
        let fsck = Command::new("fsck.ext4")
            .args(["-n", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "fsck.ext4 -n of the restored volume: {}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
        assert_eq!(debugfs_cat(&file, "/before").trim(), "before-snapshot");
        steps.done("snapshot while writing; restored volume passes fsck.ext4 -n and holds the earlier file");

        // An instance type with an instance-store disk.
        let reservation = lab.cloud.cli_json(&[
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "i3.nano",
            "--key-name",
            "lab",
            "--security-group-ids",
            &group,
        ]);
        let storage = s(&reservation["Instances"][0]["InstanceId"]);
        lab.cloud.wait_state(&storage, "running", LONG);
        let storage_ip: Ipv4Addr = lab.cloud.instance(&storage).private_ip_address.parse().unwrap();
        let sizes = ssh_ok(
            &lab,
            allowed,
            &key,
            storage_ip,
            "for b in /sys/block/vd*; do echo $(cat $b/size); done",
        );
        let store_sectors = 29u64 << 21; // 29 GiB (i3.nano) in 512-byte sectors
        assert!(
            sizes.lines().any(|l| l.trim().parse::<u64>() == Ok(store_sectors)),
            "no 29 GiB instance-store disk in the i3.nano guest: {sizes}"
        );
        steps.done("i3.nano sees its instance-store disk");

        lab.cloud
            .cli_json(&["terminate-instances", "--instance-ids", &id, &storage]);
        lab.cloud.wait_state(&id, "terminated", LONG);
        lab.cloud.wait_state(&storage, "terminated", LONG);
        let deadline = Instant::now() + LONG;
        loop {
            let leftovers = lab.host_leftovers(0);
            // (the agent's own lock file stays: it runs on)
            let runs: Vec<String> = std::fs::read_dir(lab.hosts[0].dir.join("run"))
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|name| name != ".agent.lock")
                        .collect()
                })
                .unwrap_or_default();
            // The subnet's bridge stays while the VPC has a port here: only taps count.
            let taps: Vec<&str> = leftovers.split_whitespace().filter(|w| w.starts_with("ht")).collect();
            if taps.is_empty() && runs.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "left after terminate: taps {taps:?}, run dirs {runs:?}\n{}",
                lab.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        steps.done("terminate-instances: no VMM, tap or run directory left");
    }
}
