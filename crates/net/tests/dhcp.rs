//! `hearth_net::dhcp` against a real client: busybox's `udhcpc` in a "guest" namespace whose `eth0` is
//! a veth into a bridge in a "host" namespace, where the server runs.

mod common;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hearth_net::dhcp::{DhcpServer, DhcpStats, Lease, Leases};
use hearth_net::netns::Netns;
use hearth_net::MacAddr;

const BUSYBOX: &str = "/bin/busybox";

/// Why these tests cannot run here, or `None`.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespace tests need root".into());
    }
    if Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        return Some("ip is missing (apt-get install iproute2)".into());
    }
    if !Path::new(BUSYBOX).exists() {
        return Some(format!("{BUSYBOX} is missing (apt-get install busybox-static)"));
    }
    None
}

macro_rules! or_skip {
    ($test:expr) => {
        if let Some(reason) = missing_prerequisite() {
            assert!(!common::in_ci(), "{}: {reason} (CI=true: these tests must run)", $test);
            println!("SKIPPED {}: {reason}", $test);
            return;
        }
    };
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    format!(
        "hd{}-{}-{tag}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn ip(ns: &Netns, args: &[&str]) {
    common::run(ns.command("ip").unwrap().args(args));
}

/// Bridge `name` in `host` with address `cidr`, up, no STP.
fn bridge(host: &Netns, name: &str, cidr: &str) {
    ip(host, &["link", "add", name, "type", "bridge", "stp_state", "0"]);
    ip(host, &["addr", "add", cidr, "dev", name]);
    ip(host, &["link", "set", name, "up"]);
}

/// A guest namespace whose `eth0` (MAC `mac`) is joined to `bridge` by the veth `port` in `host`.
fn guest(host: &Netns, bridge: &str, port: &str, mac: MacAddr) -> Netns {
    let ns = Netns::create(&unique("g")).expect("create a guest namespace");
    ip(
        host,
        &[
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ],
    );
    ip(host, &["link", "set", port, "master", bridge, "up"]);
    ip(&ns, &["link", "set", "lo", "up"]);
    ip(&ns, &["link", "set", "eth0", "address", &mac.to_string()]);
    ip(&ns, &["link", "set", "eth0", "up"]);
    ns
}

/// A DHCP server on `device` in `host`, on its own thread and runtime; stopped on drop.
struct Server {
    stats: Arc<DhcpStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    fn start(host: &Netns, device: &str, server_ip: Ipv4Addr, leases: Arc<Leases>) -> Server {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let device = device.to_string();
        let thread = host
            .spawn("dhcp", move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let server = DhcpServer::bind(&device, server_ip, leases).expect("bind the DHCP server");
                    assert_eq!(server.device(), device);
                    ready_tx.send(server.stats()).unwrap();
                    let task = server.spawn();
                    let _ = stopped.await;
                    drop(task);
                })
            })
            .unwrap();
        let stats = ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("DHCP server ready");
        Server {
            stats,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|stop| stop.send(()));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `udhcpc` once on the guest's `eth0` (`tries` DISCOVERs a second apart); the variables its
/// script saw on `bound`, or `None` if it got no lease.
fn udhcpc(guest: &Netns, tries: u32) -> Option<HashMap<String, String>> {
    let dir = std::env::temp_dir().join(unique("udhcpc"));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("script");
    let out = dir.join("out");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nprintf '%s=%s\\n' ip \"$ip\" subnet \"$subnet\" router \"$router\" \
         dns \"$dns\" hostname \"$hostname\" domain \"$domain\" lease \"$lease\" mtu \"$mtu\" broadcast \"$broadcast\" \
         serverid \"$serverid\" > \"$HEARTH_DHCP_OUT\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = guest
        .command(BUSYBOX)
        .unwrap()
        .args([
            "udhcpc",
            "-i",
            "eth0",
            "-f",
            "-q",
            "-n",
            "-t",
            &tries.to_string(),
            "-T",
            "1",
            "-s",
        ])
        .arg(&script)
        .env("HEARTH_DHCP_OUT", &out)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let lease = output.status.success().then(|| {
        let text = std::fs::read_to_string(&out).unwrap_or_else(|e| {
            panic!(
                "udhcpc succeeded but its script wrote nothing ({e}): {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        text.lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    });
    let _ = std::fs::remove_dir_all(&dir);
    lease
}

fn expect(lease: &HashMap<String, String>, pairs: &[(&str, &str)]) {
    for (key, value) in pairs {
        assert_eq!(lease.get(*key).map(String::as_str), Some(*value), "{key} in {lease:?}");
    }
}

const KNOWN: MacAddr = MacAddr([2, 0, 0, 0, 1, 10]);
const OTHER: MacAddr = MacAddr([2, 0, 0, 0, 2, 10]);

fn web_lease() -> Lease {
    Lease {
        router: Some(Ipv4Addr::new(10, 1, 0, 1)),
        dns: vec![Ipv4Addr::new(10, 1, 0, 2), Ipv4Addr::new(10, 1, 0, 3)],
        hostname: Some("web-1".into()),
        domain_name: Some("ec2.internal".into()),
        lease_secs: 600,
        mtu: Some(1400),
        ..Lease::new(Ipv4Addr::new(10, 1, 0, 10), 24)
    }
}

#[test]
fn a_known_mac_gets_exactly_its_lease() {
    or_skip!("a_known_mac_gets_exactly_its_lease");
    let host = Netns::create(&unique("h")).unwrap();
    bridge(&host, "br-a", "10.1.0.1/24");
    let g = guest(&host, "br-a", "p-a", KNOWN);
    let leases = Arc::new(Leases::new());
    leases.insert(KNOWN, web_lease());
    let server = Server::start(&host, "br-a", Ipv4Addr::new(10, 1, 0, 1), leases.clone());

    let lease = udhcpc(&g, 5).expect("udhcpc got a lease");
    expect(
        &lease,
        &[
            ("ip", "10.1.0.10"),
            ("subnet", "255.255.255.0"),
            ("router", "10.1.0.1"),
            ("dns", "10.1.0.2 10.1.0.3"),
            ("hostname", "web-1"),
            ("domain", "ec2.internal"),
            ("lease", "600"),
            ("mtu", "1400"),
            ("broadcast", "10.1.0.255"),
            ("serverid", "10.1.0.1"),
        ],
    );
    assert!(server.stats.offers() >= 1 && server.stats.acks() >= 1);
    assert_eq!(server.stats.naks(), 0);

    // The table is live: a new lease applies to the next exchange.
    leases.insert(
        KNOWN,
        Lease {
            hostname: None,
            ..Lease::new(Ipv4Addr::new(10, 1, 0, 11), 16)
        },
    );
    let lease = udhcpc(&g, 5).expect("udhcpc got the new lease");
    expect(
        &lease,
        &[
            ("ip", "10.1.0.11"),
            ("subnet", "255.255.0.0"),
            ("router", ""),
            ("hostname", ""),
            ("lease", "3600"),
        ],
    );
}

#[test]
fn an_unknown_mac_gets_no_answer() {
    or_skip!("an_unknown_mac_gets_no_answer");
    let host = Netns::create(&unique("h")).unwrap();
    bridge(&host, "br-a", "10.1.0.1/24");
    let g = guest(&host, "br-a", "p-a", OTHER);
    let leases = Arc::new(Leases::new());
    leases.insert(KNOWN, web_lease());
    let server = Server::start(&host, "br-a", Ipv4Addr::new(10, 1, 0, 1), leases);

    assert_eq!(udhcpc(&g, 3), None);
    assert!(server.stats.unknown_clients() >= 1, "the server saw the DISCOVERs");
    assert_eq!((server.stats.offers(), server.stats.acks()), (0, 0));
}

#[test]
fn two_bridges_two_servers_each_answers_only_on_its_own() {
    or_skip!("two_bridges_two_servers_each_answers_only_on_its_own");
    let host = Netns::create(&unique("h")).unwrap();
    bridge(&host, "br-a", "10.1.0.1/24");
    bridge(&host, "br-b", "10.2.0.1/24");
    // Server A knows KNOWN, server B knows OTHER; both listen on 0.0.0.0:67 in one namespace.
    let leases_a = Arc::new(Leases::new());
    leases_a.insert(KNOWN, web_lease());
    let leases_b = Arc::new(Leases::new());
    leases_b.insert(OTHER, Lease::new(Ipv4Addr::new(10, 2, 0, 10), 24));
    let a = Server::start(&host, "br-a", Ipv4Addr::new(10, 1, 0, 1), leases_a);
    let b = Server::start(&host, "br-b", Ipv4Addr::new(10, 2, 0, 1), leases_b);

    // KNOWN on bridge B: server A would answer it, but never hears it; B does not know it.
    let on_b = guest(&host, "br-b", "p-b", KNOWN);
    assert_eq!(udhcpc(&on_b, 3), None);
    assert_eq!(
        (a.stats.offers(), a.stats.unknown_clients()),
        (0, 0),
        "A heard bridge B"
    );
    assert!(b.stats.unknown_clients() >= 1);

    let on_a = guest(&host, "br-a", "p-a", KNOWN);
    let lease = udhcpc(&on_a, 5).expect("KNOWN gets its lease on bridge A");
    expect(&lease, &[("ip", "10.1.0.10"), ("serverid", "10.1.0.1")]);

    ip(&on_b, &["link", "set", "eth0", "address", &OTHER.to_string()]);
    let lease = udhcpc(&on_b, 5).expect("OTHER gets its lease on bridge B");
    expect(&lease, &[("ip", "10.2.0.10"), ("serverid", "10.2.0.1"), ("router", "")]);
    assert_eq!(a.stats.unknown_clients(), 0, "A heard bridge B");
    assert_eq!((b.stats.offers(), b.stats.acks()), (1, 1));
}

/// A BOOTREQUEST from `mac` with `ciaddr` and message type `kind`.
fn request(mac: MacAddr, kind: u8, ciaddr: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[..4].copy_from_slice(&[1, 1, 6, 0]);
    p[4..8].copy_from_slice(&[0x12, 0x34, 0x56, kind]);
    p[12..16].copy_from_slice(&ciaddr.octets());
    p[28..34].copy_from_slice(&mac.0);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, kind, 255]);
    p
}

/// The value of option `code` in a reply.
fn option(reply: &[u8], code: u8) -> Option<Vec<u8>> {
    let mut rest = reply.get(240..)?;
    while let [c, len, tail @ ..] = rest {
        let value = tail.get(..usize::from(*len))?;
        if *c == code {
            return Some(value.to_vec());
        }
        rest = &tail[usize::from(*len)..];
    }
    None
}

#[test]
fn a_client_with_an_address_gets_unicast_answers() {
    or_skip!("a_client_with_an_address_gets_unicast_answers");
    let host = Netns::create(&unique("h")).unwrap();
    bridge(&host, "br-a", "10.1.0.1/24");
    let g = guest(&host, "br-a", "p-a", KNOWN);
    ip(&g, &["addr", "add", "10.1.0.10/24", "dev", "eth0"]);
    let leases = Arc::new(Leases::new());
    leases.insert(KNOWN, web_lease());
    let server = Server::start(&host, "br-a", Ipv4Addr::new(10, 1, 0, 1), leases);

    g.run(|| {
        // Bound to the client's address, the socket receives unicast only, not broadcasts.
        let socket = std::net::UdpSocket::bind((Ipv4Addr::new(10, 1, 0, 10), 68)).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 1500];
        // RENEWING: REQUEST with ciaddr, unicast to the server.
        socket
            .send_to(
                &request(KNOWN, 3, Ipv4Addr::new(10, 1, 0, 10)),
                (Ipv4Addr::new(10, 1, 0, 1), 67),
            )
            .unwrap();
        let (len, from) = socket.recv_from(&mut buf).expect("a unicast ACK");
        let ack = &buf[..len];
        assert_eq!(from, (Ipv4Addr::new(10, 1, 0, 1), 67).into());
        assert_eq!((ack[0], &ack[4..8]), (2, &[0x12, 0x34, 0x56, 3][..]));
        assert_eq!(option(ack, 53), Some(vec![5]));
        assert_eq!(&ack[16..20], &[10, 1, 0, 10]);
        assert_eq!(option(ack, 51), Some(600u32.to_be_bytes().to_vec()));

        // INFORM: the configuration without lease time or address.
        socket
            .send_to(
                &request(KNOWN, 8, Ipv4Addr::new(10, 1, 0, 10)),
                (Ipv4Addr::new(10, 1, 0, 1), 67),
            )
            .unwrap();
        let (len, _) = socket.recv_from(&mut buf).expect("a unicast ACK to INFORM");
        let ack = &buf[..len];
        assert_eq!(option(ack, 53), Some(vec![5]));
        assert_eq!(&ack[16..20], &[0, 0, 0, 0]);
        assert_eq!(option(ack, 51), None);
        assert_eq!(option(ack, 12), Some(b"web-1".to_vec()));
    })
    .unwrap();
    assert_eq!(server.stats.acks(), 2);
}
