//! End-to-end: the probe guest booted by `hearth-vmm` on real KVM exercises the boot
//! protocol, ACPI, the platform devices and virtio-blk/net/rng.

mod common;

use std::time::Duration;

use common::{control, probe_args, run_probe, spawn_vmm, wait_for_path, NetNs, TempDir};

#[test]
fn probe_boots_prints_its_cmdline_and_powers_off() {
    require_kvm!();
    let outcome = run_probe("console=ttyS0 probe.ops=timer,poweroff", &["--no-rng"]);
    outcome.assert_line("probe: hearth probe guest v1");
    outcome.assert_line("probe: cmdline console=ttyS0 probe.ops=timer,poweroff");
    outcome.assert_line("probe: boot timer written");
    outcome.assert_line("probe: poweroff");
    assert_eq!(outcome.status, 0, "{outcome:?}");
    assert_eq!(outcome.exit_event()["reason"], "guest-poweroff");
    let boot = outcome.events("boot-timer");
    assert_eq!(boot.len(), 1, "{outcome:?}");
    assert!(boot[0]["boot_us"].as_u64().unwrap() > 0);
}

#[test]
fn i8042_reset_is_reported_as_reboot() {
    require_kvm!();
    let outcome = run_probe("probe.ops=reboot", &[]);
    outcome.assert_line("probe: reboot");
    assert_eq!(outcome.status, 3, "{outcome:?}");
    assert_eq!(outcome.exit_event()["reason"], "guest-reboot");
}

#[test]
fn acpi_reset_register_is_reported_as_reboot() {
    require_kvm!();
    let outcome = run_probe("probe.ops=acpi-reset", &[]);
    assert_eq!(outcome.status, 3, "{outcome:?}");
    assert_eq!(outcome.exit_event()["reason"], "guest-reboot");
}

#[test]
fn triple_fault_is_reported_as_crash() {
    require_kvm!();
    let outcome = run_probe("probe.ops=triple-fault", &[]);
    outcome.assert_line("probe: triple fault");
    assert_eq!(outcome.status, 4, "{outcome:?}");
    assert_eq!(outcome.exit_event()["reason"], "guest-crash");
}

#[test]
fn four_vcpus_are_reported_through_acpi() {
    require_kvm!();
    let outcome = run_probe("probe.ops=cpus", &["--vcpus", "4"]);
    outcome.assert_line("probe: cpus 4");
    assert!(!outcome.console.contains("checksum bad"), "{}", outcome.console);
    assert!(
        outcome.console.contains("probe: acpi tables RSDP XSDT FACP DSDT APIC"),
        "{}",
        outcome.console
    );
    assert_eq!(outcome.status, 0, "{outcome:?}");
}

#[test]
fn power_button_makes_a_listening_guest_power_off() {
    require_kvm!();
    let dir = TempDir::new("pwrbtn");
    let socket = dir.path("vmm.sock");
    let mut args = probe_args("probe.ops=wait");
    args.extend(["--control-socket".into(), socket.display().to_string()]);
    let vmm = spawn_vmm(&args, None);
    wait_for_path(&socket, Duration::from_secs(10));
    let info = control(&socket, "info");
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(control(&socket, r#"{"cmd":"power-button"}"#)["ok"], true);
    let outcome = vmm.wait(Duration::from_secs(30));
    outcome.assert_line("probe: power button");
    assert_eq!(outcome.status, 0, "{outcome:?}");
    assert!(!socket.exists(), "control socket left behind");
}

#[test]
fn hung_guest_is_forced_off_after_the_shutdown_timeout() {
    require_kvm!();
    let dir = TempDir::new("hang");
    let socket = dir.path("vmm.sock");
    let mut args = probe_args("probe.ops=hang");
    args.extend(["--control-socket".into(), socket.display().to_string()]);
    let vmm = spawn_vmm(&args, None);
    wait_for_path(&socket, Duration::from_secs(10));
    let answer = control(&socket, r#"{"cmd":"shutdown","timeout_ms":300}"#);
    assert_eq!(answer["ok"], true, "{answer}");
    let outcome = vmm.wait(Duration::from_secs(30));
    outcome.assert_line("probe: hanging");
    assert_eq!(outcome.status, 5, "{outcome:?}");
    let exit = outcome.exit_event();
    assert_eq!(exit["reason"], "killed");
    assert!(exit["detail"].as_str().unwrap().contains("power button"), "{exit}");
    assert!(!socket.exists(), "control socket left behind");
}

#[test]
fn pause_resume_and_kill_over_the_control_socket() {
    require_kvm!();
    let dir = TempDir::new("ctl");
    let socket = dir.path("vmm.sock");
    let mut args = probe_args("probe.ops=wait");
    args.extend(["--control-socket".into(), socket.display().to_string()]);
    let vmm = spawn_vmm(&args, None);
    wait_for_path(&socket, Duration::from_secs(10));
    assert_eq!(control(&socket, "pause")["state"], "paused");
    assert_eq!(control(&socket, "info")["state"], "paused");
    assert_eq!(control(&socket, "resume")["state"], "running");
    assert_eq!(control(&socket, "bogus")["ok"], false);
    assert_eq!(control(&socket, "kill")["ok"], true);
    let outcome = vmm.wait(Duration::from_secs(10));
    assert_eq!(outcome.status, 5, "{outcome:?}");
    assert_eq!(outcome.exit_event()["reason"], "killed");
}

#[test]
fn disk_data_written_in_one_boot_is_read_in_the_next() {
    require_kvm!();
    let dir = TempDir::new("disk");
    let disk = dir.path("root.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let spec = format!("path={},id=vol0123456789abcdef0", disk.display());
    for expected in 1..=2 {
        let outcome = run_probe("probe.ops=blk-counter", &["--disk", &spec]);
        outcome.assert_line("probe: block 0 sectors=2048 ro=0 id=vol0123456789abcdef0");
        outcome.assert_line(&format!("probe: boot-count {expected}"));
        assert_eq!(outcome.status, 0, "{outcome:?}");
    }
    let bytes = std::fs::read(&disk).unwrap();
    assert_eq!(&bytes[..8], b"HEARTHBC");
    assert_eq!(u64::from_le_bytes(bytes[8..16].try_into().unwrap()), 2);
}

#[test]
fn read_only_disk_refuses_writes() {
    require_kvm!();
    let dir = TempDir::new("ro");
    let disk = dir.path("ro.img");
    std::fs::write(&disk, vec![7u8; 64 * 1024]).unwrap();
    let spec = format!("path={},ro", disk.display());
    let outcome = run_probe("probe.ops=blk-ro-check", &["--disk", &spec]);
    outcome.assert_line("probe: block 0 sectors=128 ro=1 id=");
    outcome.assert_line("probe: write status=1");
    assert_eq!(outcome.status, 0, "{outcome:?}");
    assert!(std::fs::read(&disk).unwrap().iter().all(|b| *b == 7));
}

#[test]
fn malformed_block_requests_get_errors_and_the_vmm_survives() {
    require_kvm!();
    let dir = TempDir::new("bad");
    let disk = dir.path("bad.img");
    std::fs::write(&disk, vec![0u8; 64 * 1024]).unwrap();
    let spec = format!("path={}", disk.display());
    let outcome = run_probe("probe.ops=blk-badreq,blk-counter", &["--disk", &spec]);
    outcome.assert_line("probe: badreq range status=1");
    assert!(
        outcome.console.contains("probe: badreq addr status="),
        "{}",
        outcome.console
    );
    outcome.assert_line("probe: boot-count 1");
    assert_eq!(outcome.status, 0, "{outcome:?}");
}

#[test]
fn rng_device_returns_bytes() {
    require_kvm!();
    let outcome = run_probe("probe.ops=rng", &[]);
    let line = outcome
        .console
        .lines()
        .find(|l| l.starts_with("probe: rng "))
        .unwrap_or_else(|| panic!("{outcome:?}"));
    let hex = line.trim_start_matches("probe: rng ").trim();
    assert_eq!(hex.len(), 32, "{line}");
    assert_ne!(hex, "0".repeat(32));
    assert_eq!(outcome.status, 0);
}

#[test]
fn udp_datagram_through_the_tap_is_echoed() {
    require_kvm!();
    let ns = NetNs::with_tap("10.213.0.1/24");
    let dir = TempDir::new("net");
    let socket = dir.path("vmm.sock");
    let mut args = probe_args("probe.ops=net-echo probe.ip=10.213.0.2");
    args.extend([
        "--net".into(),
        format!("tap={},mac=06:00:0a:d5:00:02", ns.tap),
        "--control-socket".into(),
        socket.display().to_string(),
    ]);
    let vmm = spawn_vmm(&args, Some(&ns.name));
    wait_for_path(&socket, Duration::from_secs(10));
    let echoed = ns.enter(|| {
        let udp = std::net::UdpSocket::bind("10.213.0.1:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        // The first datagram may be spent on ARP resolution; retry a few times.
        for attempt in 0..15 {
            let payload = format!("hello hearth {attempt}");
            udp.send_to(payload.as_bytes(), "10.213.0.2:7777").unwrap();
            if let Ok((n, from)) = udp.recv_from(&mut buf) {
                return Some((
                    String::from_utf8_lossy(&buf[..n]).to_string(),
                    from.to_string(),
                    payload,
                ));
            }
        }
        None
    });
    let ping = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "ping", "-c", "2", "-W", "2", "10.213.0.2"])
        .output()
        .expect("ping (iputils-ping)");
    let info = control(&socket, "info");
    assert_eq!(control(&socket, r#"{"cmd":"shutdown","timeout_ms":5000}"#)["ok"], true);
    let outcome = vmm.wait(Duration::from_secs(30));
    let (reply, from, payload) = echoed.unwrap_or_else(|| panic!("no echo; {outcome:?}"));
    assert_eq!(reply, payload);
    assert_eq!(from, "10.213.0.2:7777");
    outcome.assert_line("probe: net-echo ready ip=10.213.0.2");
    let ping_text = String::from_utf8_lossy(&ping.stdout);
    assert!(
        ping.status.success() && ping_text.contains("2 received"),
        "ICMP echo: {ping_text}"
    );
    let net = &info["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["type"] == "net")
        .unwrap()["counters"];
    assert!(net["rx_frames"].as_u64().unwrap() >= 1, "{info}");
    assert!(net["tx_frames"].as_u64().unwrap() >= 1, "{info}");
    assert_eq!(outcome.status, 0, "{outcome:?}");
}
