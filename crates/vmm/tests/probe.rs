//! End-to-end: the probe guest booted by `hearth-vmm` on real KVM exercises the boot
//! protocol, ACPI, the platform devices and virtio-blk/net/rng, and its small IPv4 stack
//! (DHCP client, forged frames, UDP/ICMP/HTTP it originates) works against the host.

mod common;

use std::ffi::CString;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{control, in_ci, probe_args, run_probe, spawn_vmm, wait_for_path, NetNs, Running, TempDir};

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

// ---- The probe's IPv4 stack: DHCP client, forged frames, traffic it originates ----

/// Runs `f` on a new thread inside namespace `ns` and returns at once (unlike
/// `NetNs::enter`), for servers and captures that run alongside the test.
fn spawn_in<T: Send + 'static>(ns: &NetNs, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/var/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on a namespace fd we hold open; affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

/// A helper process (udhcpd), killed and reaped on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ip -n <ns> <args>`, which must succeed.
fn ip_in(ns: &NetNs, args: &[&str]) {
    let output = Command::new("ip")
        .args(["-n", &ns.name])
        .args(args)
        .output()
        .expect("ip");
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Sends UDP `command` from `from` (an address in `ns`) to the probe at `to` up to `tries`
/// times, `wait` apart, and returns the first answer: payload and sender.
fn udp_command(
    ns: &NetNs,
    from: &str,
    to: &str,
    command: &str,
    tries: u32,
    wait: Duration,
) -> Option<(String, String)> {
    let (from, to, command) = (from.to_string(), to.to_string(), command.to_string());
    ns.enter(move || {
        let udp = UdpSocket::bind(format!("{from}:0")).unwrap();
        udp.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 2048];
        for _ in 0..tries {
            // Before the probe answers ARP the datagram is dropped; only the reply counts.
            let _ = udp.send_to(command.as_bytes(), &to);
            if let Ok((n, sender)) = udp.recv_from(&mut buf) {
                return Some((String::from_utf8_lossy(&buf[..n]).into_owned(), sender.to_string()));
            }
        }
        None
    })
}

/// The answer to `command`, which must come (the probe is known to be up).
fn ask(ns: &NetNs, from: &str, to: &str, command: &str) -> String {
    udp_command(ns, from, to, command, 1, Duration::from_secs(6))
        .unwrap_or_else(|| panic!("no answer to {command:?}"))
        .0
}

/// A probe VM with a control socket in `ns`; `cmdline` gets `probe.ops=net-echo`.
fn start_echo_probe(ns: &NetNs, dir: &TempDir, cmdline: &str, tap: &str, mac: &str) -> (Running, std::path::PathBuf) {
    let socket = dir.path(&format!("vmm-{tap}.sock"));
    let mut args = probe_args(&format!("probe.ops=net-echo {cmdline}"));
    args.extend([
        "--net".into(),
        format!("tap={tap},mac={mac}"),
        "--control-socket".into(),
        socket.display().to_string(),
    ]);
    let vmm = spawn_vmm(&args, Some(&ns.name));
    wait_for_path(&socket, Duration::from_secs(10));
    (vmm, socket)
}

/// Shuts the probe down over its control socket and returns what it printed.
fn shut_down(vmm: Running, socket: &Path) -> common::Outcome {
    assert_eq!(control(socket, r#"{"cmd":"shutdown","timeout_ms":5000}"#)["ok"], true);
    let outcome = vmm.wait(Duration::from_secs(30));
    assert_eq!(outcome.status, 0, "{outcome:?}");
    outcome
}

#[test]
fn dhcp_client_takes_its_address_from_udhcpd() {
    require_kvm!();
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        assert!(!in_ci(), "/bin/busybox (busybox-static) missing under CI");
        eprintln!("SKIPPED: /bin/busybox (busybox-static) missing");
        return;
    }
    let ns = NetNs::with_tap("10.213.1.1/24");
    let dir = TempDir::new("dhcp");
    let conf = dir.path("udhcpd.conf");
    std::fs::write(dir.path("leases"), b"").unwrap();
    std::fs::write(
        &conf,
        format!(
            "interface {}\nstart 10.213.1.100\nend 10.213.1.150\nlease_file {}\npidfile {}\n\
             option subnet 255.255.255.0\noption router 10.213.1.1\n\
             static_lease 06:00:0a:d5:01:07 10.213.1.7\n",
            ns.tap,
            dir.path("leases").display(),
            dir.path("udhcpd.pid").display()
        ),
    )
    .unwrap();
    // `ip netns exec` execs udhcpd itself, so killing this child kills the server.
    let _udhcpd = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(busybox)
            .args(["udhcpd", "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("busybox udhcpd"),
    );
    let (vmm, socket) = start_echo_probe(&ns, &dir, "", &ns.tap, "06:00:0a:d5:01:07");
    // DISCOVER goes out every second; the lease usually comes with the first.
    let echoed = udp_command(
        &ns,
        "10.213.1.1",
        "10.213.1.7:7777",
        "hello dhcp",
        30,
        Duration::from_secs(1),
    );
    let ping = Command::new("ip")
        .args(["netns", "exec", &ns.name, "ping", "-c", "2", "-W", "2", "10.213.1.7"])
        .output()
        .expect("ping (iputils-ping)");
    let outcome = shut_down(vmm, &socket);
    outcome.assert_line("probe: dhcp ip=10.213.1.7/24 router=10.213.1.1 server=10.213.1.1");
    outcome.assert_line("probe: net-echo ready ip=10.213.1.7");
    assert_eq!(
        echoed,
        Some(("hello dhcp".to_string(), "10.213.1.7:7777".to_string())),
        "{outcome:?}"
    );
    let ping_text = String::from_utf8_lossy(&ping.stdout);
    assert!(
        ping.status.success() && ping_text.contains("2 received"),
        "ICMP echo: {ping_text}"
    );
}

/// Frames seen on an interface by an `AF_PACKET` socket, until stopped.
struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Vec<u8>>>>,
}

impl Capture {
    /// Starts capturing every frame on `ifname` in `ns` (returns once the socket is bound).
    fn start(ns: &NetNs, ifname: &str) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, started) = mpsc::channel();
        let (name, flag) = (CString::new(ifname).unwrap(), stop.clone());
        let thread = spawn_in(ns, move || {
            let fd = packet_socket(&name);
            ready.send(()).unwrap();
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::SeqCst) {
                // SAFETY: `buf` is valid for writes of its length; the fd is ours.
                let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    frames.push(buf[..n as usize].to_vec());
                }
            }
            frames
        });
        started.recv().expect("capture thread failed");
        Capture {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns the frames.
    fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An `AF_PACKET` socket receiving all frames of interface `name`, with a 100 ms receive
/// timeout (so the capture loop sees its stop flag).
fn packet_socket(name: &CString) -> OwnedFd {
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
    assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `name` is NUL terminated.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index != 0, "no interface {name:?}");
    // SAFETY: `sockaddr_ll` is plain old data; all zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = index as i32;
    // SAFETY: `addr` is a `sockaddr_ll` and the length says so.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: SO_RCVTIMEO reads one `timeval`, which the pointer and length describe.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    fd
}

/// The parts of an Ethernet/IPv4/UDP frame the spoofing checks look at.
#[derive(Debug)]
struct UdpFrame {
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    ip_src: [u8; 4],
    ip_dst: [u8; 4],
    src_port: u16,
    dst_port: u16,
    payload: Vec<u8>,
    /// IPv4 header and UDP checksums are right.
    checksums_ok: bool,
}

/// Parses an Ethernet frame holding IPv4/UDP.
fn udp_frame(frame: &[u8]) -> Option<UdpFrame> {
    if frame.len() < 42 || frame[12..14] != [8, 0] || frame[14] >> 4 != 4 || frame[23] != 17 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0xf) * 4;
    let ip = frame.get(14..14 + ihl)?;
    let l4 = frame.get(14 + ihl..)?;
    let udp_len = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
    let udp = l4.get(..udp_len)?;
    let mut pseudo = Vec::from(&ip[12..20]);
    pseudo.extend([0, 17]);
    pseudo.extend((udp_len as u16).to_be_bytes());
    pseudo.extend(udp);
    Some(UdpFrame {
        eth_dst: frame[0..6].try_into().unwrap(),
        eth_src: frame[6..12].try_into().unwrap(),
        ip_src: ip[12..16].try_into().unwrap(),
        ip_dst: ip[16..20].try_into().unwrap(),
        src_port: u16::from_be_bytes([udp[0], udp[1]]),
        dst_port: u16::from_be_bytes([udp[2], udp[3]]),
        payload: udp[8..].to_vec(),
        checksums_ok: internet_sum(ip) == 0 && internet_sum(&pseudo) == 0,
    })
}

/// The one's complement sum of `data` (0 when it includes a correct checksum).
fn internet_sum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[test]
fn spoof_commands_put_forged_frames_on_the_wire() {
    require_kvm!();
    let ns = NetNs::with_tap("10.213.2.1/24");
    let dir = TempDir::new("spoof");
    let mac = [0x06, 0x00, 0x0a, 0xd5, 0x02, 0x02];
    let (vmm, socket) = start_echo_probe(&ns, &dir, "probe.ip=10.213.2.2/24", &ns.tap, "06:00:0a:d5:02:02");
    let up = udp_command(&ns, "10.213.2.1", "10.213.2.2:7", "up?", 15, Duration::from_secs(1));
    assert_eq!(up.map(|(text, _)| text).as_deref(), Some("up?"));

    let capture = Capture::start(&ns, &ns.tap);
    // The forged replies may or may not reach the socket (reverse-path filtering); the
    // capture is what counts.
    let _ = udp_command(
        &ns,
        "10.213.2.1",
        "10.213.2.2:5001",
        "spoof-ip",
        1,
        Duration::from_secs(1),
    );
    let _ = udp_command(
        &ns,
        "10.213.2.1",
        "10.213.2.2:5002",
        "spoof-mac\n",
        1,
        Duration::from_secs(1),
    );
    let sent = ask(&ns, "10.213.2.1", "10.213.2.2:5003", "spoof-dhcp");
    std::thread::sleep(Duration::from_millis(200));
    let frames: Vec<UdpFrame> = capture.finish().iter().filter_map(|f| udp_frame(f)).collect();
    let outcome = shut_down(vmm, &socket);
    assert_eq!(sent, "sent");

    let spoofed_ip = frames
        .iter()
        .find(|f| f.src_port == 5001 && f.payload == b"spoofed")
        .unwrap_or_else(|| panic!("no spoof-ip frame in {frames:?}"));
    assert_eq!(spoofed_ip.ip_src, [10, 213, 2, 3]);
    assert_eq!(spoofed_ip.eth_src, mac);
    assert_eq!(spoofed_ip.ip_dst, [10, 213, 2, 1]);
    assert!(spoofed_ip.checksums_ok, "{spoofed_ip:?}");

    let spoofed_mac = frames
        .iter()
        .find(|f| f.src_port == 5002 && f.payload == b"spoofed")
        .unwrap_or_else(|| panic!("no spoof-mac frame in {frames:?}"));
    assert_eq!(spoofed_mac.eth_src, [0x06, 0x00, 0x0a, 0xd5, 0x02, 0x03]);
    assert_eq!(spoofed_mac.ip_src, [10, 213, 2, 2]);
    assert!(spoofed_mac.checksums_ok, "{spoofed_mac:?}");

    let offer = frames
        .iter()
        .find(|f| f.src_port == 67 && f.dst_port == 68)
        .unwrap_or_else(|| panic!("no DHCP frame in {frames:?}"));
    assert_eq!(offer.eth_dst, [0xff; 6]);
    assert_eq!(offer.eth_src, mac);
    assert_eq!((offer.ip_src, offer.ip_dst), ([10, 213, 2, 2], [255; 4]));
    assert!(offer.checksums_ok, "{offer:?}");
    assert_eq!(offer.payload[0], 2, "BOOTREPLY");
    assert_eq!(offer.payload[236..240], [99, 130, 83, 99], "magic cookie");
    assert_eq!(offer.payload[240..243], [53, 1, 2], "DHCPOFFER");
    for word in ["spoof-ip", "spoof-mac", "spoof-dhcp"] {
        outcome.assert_line(&format!("probe: udp cmd {word}"));
    }
}

/// A tiny HTTP server at 169.254.169.254:80 in a namespace (the metadata service's
/// address), answering `GET /x` and `PUT /latest/api/token`; records each request head.
struct MetadataServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<String>>>,
}

impl MetadataServer {
    fn start(ns: &NetNs) -> MetadataServer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready, started) = mpsc::channel();
        let thread = spawn_in(ns, move || {
            let listener = TcpListener::bind("169.254.169.254:80").unwrap();
            listener.set_nonblocking(true).unwrap();
            ready.send(()).unwrap();
            let mut seen = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => seen.push(serve_one(stream)),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            seen
        });
        started.recv().expect("metadata server failed to start");
        MetadataServer {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the server (its port then refuses connections); the request heads it saw.
    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request head, answers it, closes; returns the head.
fn serve_one(mut stream: std::net::TcpStream) -> String {
    use std::io::{Read, Write};
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let ttl = head
        .lines()
        .find_map(|l| l.strip_prefix("X-aws-ec2-metadata-token-ttl-seconds: "))
        .unwrap_or("none")
        .to_string();
    let (status, body) = if head.starts_with("GET /x ") {
        ("200 OK", "hello from imds".to_string())
    } else if head.starts_with("PUT /latest/api/token ") {
        ("200 OK", format!("token-for-{ttl}s"))
    } else {
        ("404 Not Found", "nope".to_string())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    head
}

#[test]
fn send_ping_and_http_commands_reach_services_on_the_host() {
    require_kvm!();
    let ns = NetNs::with_tap("10.213.3.1/24");
    ip_in(&ns, &["addr", "add", "169.254.169.254/32", "dev", &ns.tap]);
    let server = MetadataServer::start(&ns);
    let dir = TempDir::new("http");
    let cmdline = "probe.ip=10.213.3.2/24 probe.router=10.213.3.1";
    let (vmm, socket) = start_echo_probe(&ns, &dir, cmdline, &ns.tap, "06:00:0a:d5:03:02");
    let (host, probe) = ("10.213.3.1", "10.213.3.2:6000");
    let up = udp_command(&ns, host, probe, "up?", 15, Duration::from_secs(1));
    assert_eq!(up.map(|(text, _)| text).as_deref(), Some("up?"));

    // `send`: the datagram comes from the command's port; the answer is relayed.
    let (relayed, seen) = ns.enter(|| {
        let sink = UdpSocket::bind("10.213.3.1:9999").unwrap();
        sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let commander = UdpSocket::bind("10.213.3.1:0").unwrap();
        commander.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        commander
            .send_to(b"send 10.213.3.1 9999 hello over there", "10.213.3.2:6000")
            .unwrap();
        let mut buf = [0u8; 2048];
        let (n, from) = sink.recv_from(&mut buf).expect("datagram from the probe");
        let seen = (String::from_utf8_lossy(&buf[..n]).into_owned(), from.to_string());
        sink.send_to(b"right back", from).unwrap();
        let (n, _) = commander.recv_from(&mut buf).expect("relayed answer");
        (String::from_utf8_lossy(&buf[..n]).into_owned(), seen)
    });
    assert_eq!(seen, ("hello over there".to_string(), "10.213.3.2:6000".to_string()));
    assert_eq!(relayed, "reply right back");
    assert_eq!(ask(&ns, host, probe, "send 10.213.3.1 9998 nobody listens"), "timeout");
    assert_eq!(ask(&ns, host, probe, "ping 10.213.3.1"), "pong");
    // A command while another one waits (here for ARP, which nobody answers) gets `busy`.
    let (first, second) = ns.enter(|| {
        let commander = UdpSocket::bind("10.213.3.1:0").unwrap();
        commander.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        commander.send_to(b"ping 10.213.3.99", "10.213.3.2:6000").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        commander.send_to(b"ping 10.213.3.1", "10.213.3.2:6000").unwrap();
        let mut buf = [0u8; 2048];
        let mut next = || {
            let (n, _) = commander.recv_from(&mut buf).expect("answer");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        (next(), next())
    });
    assert_eq!((first.as_str(), second.as_str()), ("busy", "timeout"));

    // `http`: off-link 169.254.169.254 goes through the router (the host end).
    let get = ask(&ns, host, probe, "http GET /x");
    assert!(get.starts_with("HTTP/1.1 200 OK\r\n"), "{get:?}");
    assert!(get.ends_with("\r\n\r\nhello from imds"), "{get:?}");
    let put = ask(
        &ns,
        host,
        probe,
        "http PUT /latest/api/token\nX-aws-ec2-metadata-token-ttl-seconds: 60",
    );
    assert!(put.starts_with("HTTP/1.1 200 OK\r\n"), "{put:?}");
    assert!(put.ends_with("\r\n\r\ntoken-for-60s"), "{put:?}");
    let heads = server.finish();
    assert_eq!(ask(&ns, host, probe, "http GET /x"), "http error reset");
    let outcome = shut_down(vmm, &socket);

    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(heads[0].starts_with("GET /x HTTP/1.1\r\n"), "{heads:?}");
    let put_head = &heads[1];
    for line in [
        "PUT /latest/api/token HTTP/1.1",
        "Host: 169.254.169.254",
        "Connection: close",
        "Content-Length: 0",
        "X-aws-ec2-metadata-token-ttl-seconds: 60",
    ] {
        assert!(
            put_head.split("\r\n").any(|l| l == line),
            "{line:?} missing in {put_head:?}"
        );
    }
    for word in ["send", "ping", "http"] {
        outcome.assert_line(&format!("probe: udp cmd {word}"));
    }
    outcome.assert_line("probe: arp timeout 10.213.3.99");
    outcome.assert_line("probe: udp cmd ping busy");
}

#[test]
fn two_probes_send_to_each_other_at_once() {
    require_kvm!();
    // tap0 and tap1 on a bridge that holds the host's address.
    let ns = NetNs::with_tap("10.213.4.1/24");
    ip_in(&ns, &["addr", "flush", "dev", "tap0"]);
    ip_in(&ns, &["link", "add", "br0", "type", "bridge"]);
    ip_in(&ns, &["tuntap", "add", "dev", "tap1", "mode", "tap"]);
    for tap in ["tap0", "tap1"] {
        ip_in(&ns, &["link", "set", tap, "master", "br0"]);
        ip_in(&ns, &["link", "set", tap, "up"]);
    }
    ip_in(&ns, &["addr", "add", "10.213.4.1/24", "dev", "br0"]);
    ip_in(&ns, &["link", "set", "br0", "up"]);
    let dir = TempDir::new("two");
    let (vmm_a, socket_a) = start_echo_probe(&ns, &dir, "probe.ip=10.213.4.10/24", "tap0", "06:00:0a:d5:04:0a");
    let (vmm_b, socket_b) = start_echo_probe(&ns, &dir, "probe.ip=10.213.4.11/24", "tap1", "06:00:0a:d5:04:0b");
    for probe in ["10.213.4.10:7", "10.213.4.11:7"] {
        let up = udp_command(&ns, "10.213.4.1", probe, "up?", 15, Duration::from_secs(1));
        assert_eq!(up.map(|(text, _)| text).as_deref(), Some("up?"), "{probe}");
    }
    // Both wait for each other at the same time: each must still answer the other's ARP
    // and take the other's datagram as its answer (or echo it, if its own command has
    // not started yet).
    let replies = ns.enter(|| {
        let commander = UdpSocket::bind("10.213.4.1:0").unwrap();
        commander.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        commander
            .send_to(b"send 10.213.4.11 5000 from A", "10.213.4.10:5000")
            .unwrap();
        commander
            .send_to(b"send 10.213.4.10 5000 from B", "10.213.4.11:5000")
            .unwrap();
        let mut buf = [0u8; 2048];
        let mut replies = Vec::new();
        let start = Instant::now();
        while replies.len() < 2 && start.elapsed() < Duration::from_secs(6) {
            if let Ok((n, from)) = commander.recv_from(&mut buf) {
                replies.push((from.to_string(), String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
        }
        replies
    });
    let ping = ask(&ns, "10.213.4.1", "10.213.4.10:5000", "ping 10.213.4.11");
    let outcome_a = shut_down(vmm_a, &socket_a);
    let outcome_b = shut_down(vmm_b, &socket_b);
    assert_eq!(replies.len(), 2, "{replies:?}\nA: {outcome_a:?}\nB: {outcome_b:?}");
    for (from, text) in &replies {
        assert!(text.starts_with("reply from "), "{from}: {text:?}");
    }
    assert_eq!(ping, "pong");
}

/// The console's transmit writes are queued by KVM (coalesced port I/O) and reach the
/// console at the guest's next exit; a guest that prints and then halts makes no exit, and
/// its output must still arrive while it runs, complete and in order, even when it is
/// longer than KVM's ring (170 writes on 4 KiB pages).
#[test]
fn console_output_of_a_guest_that_halts_arrives_while_it_runs() {
    require_kvm!();
    let dir = TempDir::new("halted-console");
    let console = dir.path("console.log");
    let pad: String = (0..600).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let cmdline = format!("probe.ops=hang probe.pad={pad}");
    let mut args = probe_args(&cmdline);
    args.extend(["--console".into(), console.display().to_string()]);
    let mut vmm = spawn_vmm(&args, None);
    let want = [format!("probe: cmdline {cmdline}"), "probe: hanging".to_string()];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if want.iter().all(|line| text.lines().any(|l| l == line)) {
            break;
        }
        assert!(
            vmm.child.try_wait().unwrap().is_none(),
            "the VMM ended before the console showed {want:?}:\n{text}"
        );
        assert!(Instant::now() < deadline, "the console never showed {want:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        vmm.child.try_wait().unwrap().is_none(),
        "the guest should still be hanging"
    );
}

/// `status` lines of every thread of the VMM `pid`: (thread name, the line's value) for `field`.
fn thread_status(pid: u32, field: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        let value = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let name = value("Name");
        // KVM's own worker (kvm-nx-lpage-recovery) is listed among the tasks on newer kernels.
        if name == "hearth-vmm" || name.starts_with("vcpu") {
            found.push((name, value(field)));
        }
    }
    found
}

/// A running VMM has confined itself: every thread (the event loop and each vCPU) under a
/// seccomp filter, with no_new_privs and no capabilities; no core dumps. `--no-seccomp`
/// leaves it as it was started.
#[test]
fn a_running_vmm_is_confined() {
    require_kvm!();
    for confined in [true, false] {
        let dir = TempDir::new("confined");
        let socket = dir.path("vmm.sock");
        let mut args = probe_args("probe.ops=wait");
        args.extend([
            "--vcpus".into(),
            "2".into(),
            "--control-socket".into(),
            socket.display().to_string(),
        ]);
        if !confined {
            args.push("--no-seccomp".into());
        }
        let vmm = spawn_vmm(&args, None);
        wait_for_path(&socket, Duration::from_secs(10));
        assert_eq!(control(&socket, "info")["state"], "running");
        let pid = vmm.child.id();
        let seccomp = thread_status(pid, "Seccomp");
        assert_eq!(seccomp.len(), 3, "the event loop and two vCPU threads: {seccomp:?}");
        let want = if confined { "2" } else { "0" };
        assert!(seccomp.iter().all(|(_, mode)| mode == want), "{seccomp:?}");
        assert!(
            seccomp.iter().filter(|(name, _)| name.starts_with("vcpu")).count() == 2,
            "{seccomp:?}"
        );
        let no_new_privs = thread_status(pid, "NoNewPrivs");
        let cap_eff = thread_status(pid, "CapEff");
        let cap_bnd = thread_status(pid, "CapBnd");
        if confined {
            assert!(no_new_privs.iter().all(|(_, v)| v == "1"), "{no_new_privs:?}");
            assert!(cap_eff.iter().all(|(_, v)| v == "0000000000000000"), "{cap_eff:?}");
            assert!(cap_bnd.iter().all(|(_, v)| v == "0000000000000000"), "{cap_bnd:?}");
            let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
            let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
            assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
        } else {
            assert!(cap_eff.iter().all(|(_, v)| v != "0000000000000000"), "{cap_eff:?}");
        }
        // Still fully working under the filters: the power button and a clean power-off.
        assert_eq!(control(&socket, r#"{"cmd":"power-button"}"#)["ok"], true);
        let outcome = vmm.wait(Duration::from_secs(30));
        outcome.assert_line("probe: power button");
        assert_eq!(outcome.status, 0, "{outcome:?}");
    }
}

/// A guest printing without end: the console file stays under its hard limit the whole
/// time, is trimmed to its last whole lines (saying how much was dropped), and the guest
/// and the VMM go on working (the power button still powers it off).
#[test]
fn a_guest_printing_without_end_keeps_its_console_file_bounded() {
    require_kvm!();
    const HARD_LIMIT: u64 = 1 << 20;
    let dir = TempDir::new("flood");
    let console = dir.path("console.log");
    let socket = dir.path("vmm.sock");
    let mut args = probe_args("probe.ops=flood");
    args.extend([
        "--console".into(),
        console.display().to_string(),
        "--control-socket".into(),
        socket.display().to_string(),
    ]);
    let vmm = spawn_vmm(&args, None);
    wait_for_path(&socket, Duration::from_secs(10));
    let (mut largest, mut trims, mut last) = (0u64, 0, 0u64);
    // Until the file has been trimmed twice (however slowly this machine lets the guest print).
    let until = Instant::now() + Duration::from_secs(120);
    while trims < 2 && Instant::now() < until {
        let size = std::fs::metadata(&console).map(|m| m.len()).unwrap_or(0);
        largest = largest.max(size);
        if size < last {
            trims += 1;
        }
        last = size;
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(largest <= HARD_LIMIT, "the console file reached {largest} bytes");
    assert!(
        trims > 0,
        "the console file was never trimmed (largest {largest} bytes)"
    );
    assert_eq!(control(&socket, r#"{"cmd":"power-button"}"#)["ok"], true);
    let outcome = vmm.wait(Duration::from_secs(30));
    assert_eq!(outcome.status, 0, "{outcome:?}");
    let text = std::fs::read_to_string(&console).unwrap();
    assert!(text.len() as u64 <= HARD_LIMIT);
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("probe: flood ") || first.starts_with("[hearth-vmm: "),
        "the file starts with a whole line: {first:?}"
    );
    // The last line is the guest's, or, when it printed faster than the ticks trimmed (a
    // loaded machine) and its last lines were dropped, the note saying so.
    let last = text.lines().last().unwrap_or_default();
    assert!(
        text.ends_with("\nprobe: power button\nprobe: poweroff\n")
            || (last.starts_with("[hearth-vmm: ") && last.contains("bytes of console output dropped")),
        "{}\nstderr:\n{}",
        &text[text.len().saturating_sub(300)..],
        outcome.stderr
    );
}
