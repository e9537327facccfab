//! The image recipes (`scripts/build-image`): probe and minimal build from a clean image
//! cache and verify; the minimal image boots on hearth-vmm with its metadata disk (early
//! console here, SSH and the power button where the CPU has VT-x/AMD-V); its metadata
//! reader parses what `hearth-image cidata` writes; debian-12 builds with HEARTH_SLOW_TESTS=1.

use std::path::Path;
use std::time::Duration;

use hearth_e2e::images::{
    build_image, control, copy_sparse, guest_kernel, hearth_image, run, ssh_in, ssh_key, write_cidata, Metadata, NetNs,
    TempDir, Vm,
};
use hearth_e2e::{kvm_available, repo_root};

/// `debugfs -R 'cat PATH' IMAGE`: a file of an ext4 image, read without mounting it.
fn ext4_cat(image: &Path, path: &str) -> String {
    let output = run("debugfs", &["-R", &format!("cat {path}"), image.to_str().unwrap()]);
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// `debugfs -R 'stat PATH' IMAGE`.
fn ext4_stat(image: &Path, path: &str) -> String {
    let output = run("debugfs", &["-R", &format!("stat {path}"), image.to_str().unwrap()]);
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn assert_verifies(manifest: &Path) {
    let out = hearth_image(&["verify", manifest.to_str().unwrap()]);
    assert!(
        out.starts_with("ok "),
        "hearth-image verify {}: {out}",
        manifest.display()
    );
}

#[test]
fn probe_and_minimal_build_from_a_clean_image_cache_and_verify() {
    let cache = TempDir::new("cache");
    let probe = build_image("probe", Some(&cache.0));
    assert!(probe.manifest.starts_with(&cache.0), "{}", probe.manifest.display());
    assert!(!probe.was_cached(), "a clean cache must build:\n{}", probe.log);
    let json = probe.json();
    assert_eq!(json["format"], "hearth-image/1");
    assert_eq!(json["name"], "probe");
    assert_eq!(json["command_line"], "console=ttyS0 probe.ops=timer,blk-counter,wait");
    assert_eq!(json["root"]["size"], 1 << 20);
    assert!(json["initrd"].is_null());
    assert_verifies(&probe.manifest);
    let again = build_image("probe", Some(&cache.0));
    assert_eq!(again.manifest, probe.manifest);
    assert!(again.was_cached(), "second run rebuilt:\n{}", again.log);

    if guest_kernel().is_none() {
        return;
    }
    let minimal = build_image("minimal", Some(&cache.0));
    assert!(!minimal.was_cached(), "a clean cache must build:\n{}", minimal.log);
    let json = minimal.json();
    assert_eq!(json["name"], "minimal");
    assert_eq!(json["kernel"]["path"], "vmlinux");
    assert_eq!(json["root_device_name"], "/dev/xvda");
    assert!(json["command_line"].as_str().unwrap().contains("root=/dev/vda"));
    assert_verifies(&minimal.manifest);
    // The root file system: ext4 labelled root, files owned by root, the recipe's init.
    let root = minimal.file("root");
    let label = run("e2label", &[root.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "root");
    assert_eq!(
        ext4_cat(&root, "/etc/hearth/metadata.sh"),
        std::fs::read_to_string(repo_root().join("images/minimal/rootfs/etc/hearth/metadata.sh")).unwrap()
    );
    for path in [
        "/usr/sbin/dropbear",
        "/bin/busybox",
        "/etc/shadow",
        "/lib64/ld-linux-x86-64.so.2",
    ] {
        let stat = ext4_stat(&root, path);
        assert!(
            stat.contains("User:     0   Group:     0"),
            "{path} not owned by root:\n{stat}"
        );
    }
    assert!(ext4_stat(&root, "/etc/shadow").contains("Mode:  0600"));
    assert!(ext4_cat(&root, "/etc/inittab").contains("::sysinit:/etc/init.d/rcS"));
    let again = build_image("minimal", Some(&cache.0));
    assert_eq!(again.manifest, minimal.manifest);
    assert!(again.was_cached(), "second run rebuilt:\n{}", again.log);
    eprintln!(
        "probe built in {:?}, minimal in {:?}, cached rerun {:?}",
        probe.elapsed, minimal.elapsed, again.elapsed
    );
}

#[test]
fn minimal_image_boots_with_its_metadata_disk_to_the_early_console() {
    if !kvm_available() || guest_kernel().is_none() {
        return;
    }
    let image = build_image("minimal", None);
    let dir = TempDir::new("early");
    let root = dir.path("root.img");
    copy_sparse(&image.file("root"), &root);
    let cidata = dir.path("cidata.img");
    let metadata = Metadata {
        instance_id: "i-0123456789abcdef0",
        hostname: "early",
        public_keys: &[],
        user_data: None,
        network_config: None,
    };
    write_cidata(&dir, &metadata, &cidata);
    let cmdline = image.json()["command_line"].as_str().unwrap().to_string();
    let args: Vec<String> = [
        "--kernel",
        image.file("kernel").to_str().unwrap(),
        "--memory",
        "256",
        "--no-rng",
        "--cmdline",
        &cmdline,
        "--disk",
        &format!("path={},id=vol-root", root.display()),
        "--disk",
        &format!("path={},ro,id=cidata", cidata.display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut vm = Vm::start(&args, None);
    // Linux prints its command line before the e820 map.
    let console = vm.wait_for("BIOS-e820", Duration::from_secs(180));
    assert!(console.contains("Linux version 6.1"), "{console}");
    let line = console
        .lines()
        .find(|l| l.contains("Command line:"))
        .unwrap_or_else(|| panic!("no command line:\n{console}"));
    // The command line as the image gives it: the disks are announced in the DSDT.
    assert!(
        line.trim_end_matches('\r')
            .ends_with(&format!("Command line: {cmdline}")),
        "{line}"
    );
    assert!(line.contains("root=/dev/vda"), "{line}");
}

/// The network config the test instances get (hearth-image's static form).
fn static_network(mac: &str, address: &str, gateway: &str) -> String {
    format!(
        "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: \"{mac}\"\n    set-name: eth0\n    dhcp4: false\n    \
         addresses:\n      - \"{address}\"\n    routes:\n      - to: \"0.0.0.0/0\"\n        via: \"{gateway}\"\n    \
         nameservers:\n      addresses:\n        - \"{gateway}\"\n"
    )
}

#[test]
fn minimal_metadata_reader_parses_a_real_metadata_disk() {
    let Some(_) = guest_kernel() else { return };
    let image = build_image("minimal", None);
    let dir = TempDir::new("metadata");
    // The reader exactly as the image holds it.
    let reader = dir.path("metadata.sh");
    std::fs::write(&reader, ext4_cat(&image.file("root"), "/etc/hearth/metadata.sh")).unwrap();
    let keys = vec![
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHearthTestKeyOne one@test".to_string(),
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQHearthTwo \"quoted\" two".to_string(),
    ];
    let user_data = "#cloud-config\npassword: 'p4ss: word'\nchpasswd: { expire: False }\nssh_authorized_keys:\n  - ssh-ed25519 AAAAthree three@test\n";
    let network = static_network("06:00:0a:00:00:05", "10.0.0.5/24", "10.0.0.1");
    let metadata = Metadata {
        instance_id: "i-0123456789abcdef0",
        hostname: "ip-10-0-0-5",
        public_keys: &keys,
        user_data: Some(user_data),
        network_config: Some(&network),
    };
    let disk = dir.path("cidata.img");
    write_cidata(&dir, &metadata, &disk);
    let label = run("blkid", &["-o", "value", "-s", "LABEL", disk.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "cidata");
    let files = dir.path("cidata");
    std::fs::create_dir(&files).unwrap();
    run(
        "mcopy",
        &[
            "-n",
            "-i",
            disk.to_str().unwrap(),
            "::meta-data",
            "::user-data",
            "::network-config",
            files.to_str().unwrap(),
        ],
    );
    let md = |function: &str| -> String {
        let script = format!(". '{}'; {function} '{}'", reader.display(), files.display());
        let output = run("busybox", &["sh", "-c", &script]);
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    assert_eq!(md("md_instance_id"), "i-0123456789abcdef0\n");
    assert_eq!(md("md_hostname"), "ip-10-0-0-5\n");
    assert_eq!(md("md_userdata_kind"), "cloud-config\n");
    assert_eq!(
        md("md_public_keys"),
        format!("{}\n{}\nssh-ed25519 AAAAthree three@test\n", keys[0], keys[1])
    );
    assert_eq!(md("md_root_password"), "p4ss: word\n");
    assert_eq!(
        md("md_network"),
        "interface eth0\nmac 06:00:0a:00:00:05\naddress 10.0.0.5/24\nnameserver 10.0.0.1\ngateway 10.0.0.1\n"
    );

    // A script as user-data, DHCP without network-config.
    let metadata = Metadata {
        instance_id: "i-00000000000000001",
        hostname: "second",
        public_keys: &[],
        user_data: Some("#!/bin/sh\necho hello\n"),
        network_config: None,
    };
    write_cidata(&dir, &metadata, &disk);
    for name in ["meta-data", "user-data", "network-config"] {
        std::fs::remove_file(files.join(name)).unwrap();
    }
    run(
        "mcopy",
        &[
            "-n",
            "-i",
            disk.to_str().unwrap(),
            "::meta-data",
            "::user-data",
            files.to_str().unwrap(),
        ],
    );
    assert_eq!(md("md_userdata_kind"), "script\n");
    assert_eq!(md("md_public_keys"), "");
    assert_eq!(md("md_root_password"), "");
    assert_eq!(md("md_network"), "interface eth0\ndhcp4\n");
}

/// Real Linux to user space (where the host has VMX/SVM, and in the nested lab).
mod lab {
    use super::*;

    #[test]
    fn minimal_boots_to_ssh_and_powers_off() {
        if !hearth_e2e::linux_guests_run() {
            return;
        }
        let Some(_) = guest_kernel() else { return };
        let image = build_image("minimal", None);
        let dir = TempDir::new("ssh");
        let root = dir.path("root.img");
        copy_sparse(&image.file("root"), &root);
        let (key, public) = ssh_key(&dir);
        let mac = "06:00:0a:2a:00:02";
        let guest_ip = "10.42.0.2";
        let network = static_network(mac, &format!("{guest_ip}/24"), "10.42.0.1");
        let cidata = dir.path("cidata.img");
        let keys = [public];
        let metadata = Metadata {
            instance_id: "i-0000000000000ssh0",
            hostname: "ssh-test",
            public_keys: &keys,
            user_data: None,
            network_config: Some(&network),
        };
        write_cidata(&dir, &metadata, &cidata);
        let netns = NetNs::with_tap("10.42.0.1/24");
        let socket = dir.path("vm.sock");
        let cmdline = image.json()["command_line"].as_str().unwrap().to_string();
        let args: Vec<String> = [
            "--kernel",
            image.file("kernel").to_str().unwrap(),
            "--vcpus",
            "2",
            "--memory",
            "256",
            "--cmdline",
            &cmdline,
            "--disk",
            &format!("path={}", root.display()),
            "--disk",
            &format!("path={},ro,id=cidata", cidata.display()),
            "--net",
            &format!("tap={},mac={mac}", netns.tap),
            "--control-socket",
            socket.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut vm = Vm::start(&args, Some(&netns.name));
        let console = vm.wait_for(&format!("ssh root@{guest_ip}"), Duration::from_secs(120));
        assert!(
            console.contains(&format!(
                "hearth-minimal: ready instance-id=i-0000000000000ssh0 hostname=ssh-test ip={guest_ip}"
            )),
            "{console}"
        );
        let mut last = None;
        for _ in 0..20 {
            let output = ssh_in(&netns.name, &key, &format!("root@{guest_ip}"), "hostname");
            if output.status.success() {
                assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ssh-test");
                last = None;
                break;
            }
            last = Some(String::from_utf8_lossy(&output.stderr).to_string());
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(
            last.is_none(),
            "ssh root@{guest_ip} failed: {last:?}\nconsole:\n{}",
            vm.console()
        );
        assert_eq!(control(&socket, "power-button")["ok"], true);
        let (status, console, stderr) = vm.wait_exit(Duration::from_secs(60));
        assert_eq!(status, 0, "not a clean power-off:\n{console}\n{stderr}");
        assert!(console.contains("hearth-minimal: power button pressed"), "{console}");
    }

    /// debian-12 (systemd, cloud-init NoCloud, OpenSSH) as the agent boots it: cloud-init
    /// applies the hostname, the key (user `debian`) and the user-data script and ends
    /// `done`; the power button makes systemd shut down cleanly. Minutes in the nested lab:
    /// with `HEARTH_SLOW_TESTS=1` (`./scripts/test --slow`, which builds the image first).
    #[test]
    fn debian_12_boots_with_cloud_init_and_ssh_and_stops_through_systemd() {
        if std::env::var("HEARTH_SLOW_TESTS").as_deref() != Ok("1") {
            eprintln!(
                "SKIPPED: the debian-12 boot takes minutes in the nested lab and its image ~1 GiB; \
                 ./scripts/test --slow (HEARTH_SLOW_TESTS=1) runs it"
            );
            return;
        }
        if !hearth_e2e::linux_guests_run() {
            return;
        }
        let started = std::time::Instant::now();
        let image = build_image("debian-12", None);
        let dir = TempDir::new("debian");
        let root = dir.path("root.img");
        copy_sparse(&image.file("root"), &root);
        let (key, public) = ssh_key(&dir);
        let mac = "06:00:0a:2b:00:02";
        let guest_ip = "10.43.0.2";
        let network = static_network(mac, &format!("{guest_ip}/24"), "10.43.0.1");
        let cidata = dir.path("cidata.img");
        let keys = [public];
        let user_data = "#!/bin/sh\necho user-data-ran > /var/tmp/hearth-user-data\n";
        let metadata = Metadata {
            instance_id: "i-00000000000deb120",
            hostname: "debian-test",
            public_keys: &keys,
            user_data: Some(user_data),
            network_config: Some(&network),
        };
        write_cidata(&dir, &metadata, &cidata);
        let netns = NetNs::with_tap("10.43.0.1/24");
        let socket = dir.path("vm.sock");
        let json = image.json();
        let cmdline = json["command_line"].as_str().unwrap().to_string();
        let mut args: Vec<String> = vec![
            "--kernel".into(),
            image.file("kernel").display().to_string(),
            "--vcpus".into(),
            "1".into(),
            "--memory".into(),
            "1024".into(),
            "--cmdline".into(),
            cmdline,
            "--disk".into(),
            format!("path={}", root.display()),
            "--disk".into(),
            format!("path={},ro,id=cidata", cidata.display()),
            "--net".into(),
            format!("tap={},mac={mac}", netns.tap),
            "--control-socket".into(),
            socket.display().to_string(),
        ];
        if json["initrd"].is_object() {
            args.extend(["--initrd".to_string(), image.file("initrd").display().to_string()]);
        }
        let vm = Vm::start(&args, Some(&netns.name));
        let ssh = |command: &str| ssh_in(&netns.name, &key, &format!("debian@{guest_ip}"), command);
        let deadline = std::time::Instant::now() + Duration::from_secs(900);
        let hostname = loop {
            let output = ssh("hostname");
            if output.status.success() {
                break String::from_utf8_lossy(&output.stdout).trim().to_string();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ssh debian@{guest_ip} failed: {}\nconsole:\n{}",
                String::from_utf8_lossy(&output.stderr),
                vm.console()
            );
            std::thread::sleep(Duration::from_secs(2));
        };
        eprintln!("debian-12: SSH as debian after {:.1?}", started.elapsed());
        assert_eq!(hostname, "debian-test");
        let status = ssh("cloud-init status --wait; sudo cat /var/tmp/hearth-user-data");
        let text = String::from_utf8_lossy(&status.stdout).to_string();
        assert!(
            text.contains("status: done"),
            "cloud-init: {text}\nconsole:\n{}",
            vm.console()
        );
        assert!(text.contains("user-data-ran"), "{text}");
        eprintln!("debian-12: cloud-init done after {:.1?}", started.elapsed());
        assert_eq!(control(&socket, "power-button")["ok"], true);
        let (status, console, stderr) = vm.wait_exit(Duration::from_secs(300));
        assert_eq!(status, 0, "not a clean power-off:\n{console}\n{stderr}");
        assert!(console.contains("reboot: Power down"), "{console}");
        eprintln!("debian-12: powered off through systemd after {:.1?}", started.elapsed());
    }
}

#[test]
fn debian_12_builds_and_verifies_with_slow_tests() {
    if std::env::var("HEARTH_SLOW_TESTS").as_deref() != Ok("1") {
        eprintln!(
            "SKIPPED: the debian-12 image takes minutes and about 1 GiB (debootstrap from the Debian mirror); \
             HEARTH_SLOW_TESTS=1 runs it"
        );
        return;
    }
    // The default image cache: built once, then a cache hit.
    let image = build_image("debian-12", None);
    let json = image.json();
    assert_eq!(json["name"], "debian-12");
    assert_eq!(json["kernel"]["path"], "vmlinuz");
    assert_eq!(json["initrd"]["path"], "initrd.img");
    assert!(json["command_line"].as_str().unwrap().contains("root=LABEL=root"));
    assert_verifies(&image.manifest);
    let root = image.file("root");
    let label = run("e2label", &[root.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "root");
    assert!(ext4_cat(&root, "/etc/cloud/cloud.cfg.d/90-hearth.cfg").contains("datasource_list: [ NoCloud, None ]"));
    assert!(ext4_cat(&root, "/etc/fstab").contains("LABEL=root / ext4"));
    assert!(ext4_cat(&root, "/etc/initramfs-tools/modules").contains("virtio_mmio"));
    let packages = std::fs::read_to_string(image.dir().join("packages.txt")).unwrap();
    for package in [
        "cloud-init ",
        "openssh-server ",
        "systemd-sysv ",
        "linux-image-cloud-amd64 ",
    ] {
        assert!(packages.contains(package), "{package} missing from packages.txt");
    }
}
