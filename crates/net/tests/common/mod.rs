//! A test network: namespace "host" with bridges, and one namespace per guest joined to a bridge by a
//! veth pair whose host end stands in for the instance's tap. Everything is deleted on drop.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hearth_net::netns::Netns;
use hearth_net::{HostFirewall, MacAddr, Nft, Port};

/// True under CI, where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Why namespace tests cannot run here (not root, no `ip`/`nft`), or `None`.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespace tests need root".into());
    }
    for (program, package) in [("ip", "iproute2"), ("nft", "nftables"), ("ping", "iputils-ping")] {
        let found = Command::new(program)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("{program} is missing (apt-get install {package})"));
        }
    }
    None
}

/// Skips the calling test (printing why) when namespaces cannot be used; panics instead under CI.
#[macro_export]
macro_rules! lab_or_skip {
    ($name:expr) => {
        match common::Lab::new($name) {
            Some(lab) => lab,
            None => return,
        }
    };
}

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// One guest: its namespace and its port as the firewall model sees it.
pub struct Guest {
    pub ns: Netns,
    pub port: Port,
}

impl Guest {
    pub fn ip(&self) -> Ipv4Addr {
        self.port.ipv4
    }

    pub fn mac(&self) -> MacAddr {
        self.port.mac
    }

    /// Runs `ip ARGS` inside the guest.
    pub fn ip_cmd(&self, args: &[&str]) {
        run(self.ns.command("ip").unwrap().args(args));
    }
}

/// The host namespace with its bridges and guests; dropping it deletes every namespace.
pub struct Lab {
    // Guests first: their namespaces go before the host's.
    pub guests: BTreeMap<String, Guest>,
    pub host: Netns,
    pub nft: Nft,
    prefix: String,
}

impl Lab {
    /// A host namespace (named after the test) with bridge `br0`, or `None` when the test must skip.
    pub fn new(test: &str) -> Option<Lab> {
        if let Some(reason) = missing_prerequisite() {
            assert!(!in_ci(), "{test}: {reason} (CI=true: these tests must run)");
            println!("SKIPPED {test}: {reason}");
            return None;
        }
        let prefix = format!("hn{}-{}", std::process::id(), NEXT_LAB.fetch_add(1, Ordering::Relaxed));
        let host = Netns::create(&format!("{prefix}-host")).expect("create the host namespace");
        let nft = Nft::in_netns(host.name());
        let lab = Lab {
            guests: BTreeMap::new(),
            host,
            nft,
            prefix,
        };
        lab.host_ip(&["link", "set", "lo", "up"]);
        lab.bridge("br0");
        Some(lab)
    }

    /// Runs `ip ARGS` in the host namespace.
    pub fn host_ip(&self, args: &[&str]) {
        run(self.host.command("ip").unwrap().args(args));
    }

    /// Adds a bridge (no STP, so ports forward at once).
    pub fn bridge(&self, name: &str) {
        self.host_ip(&["link", "add", name, "type", "bridge", "stp_state", "0"]);
        self.host_ip(&["link", "set", name, "up"]);
    }

    /// Adds guest `name` on `bridge` with address 10.0.0.`last`/24 (MAC 02:00:00:00:`vpc_byte`:`last`),
    /// in `vpc`, with `groups`. Its tap is `t-NAME` in the host namespace.
    pub fn guest(&mut self, name: &str, bridge: &str, last: u8, vpc: &str, groups: &[&str]) -> &Guest {
        let ns = Netns::create(&format!("{}-{name}", self.prefix)).expect("create a guest namespace");
        let tap = format!("t-{name}");
        let vpc_byte = vpc.bytes().last().unwrap_or(0);
        let port = Port {
            tap: tap.clone(),
            mac: MacAddr([2, 0, 0, 0, vpc_byte, last]),
            ipv4: Ipv4Addr::new(10, 0, 0, last),
            vpc_id: vpc.into(),
            group_ids: groups.iter().map(|g| g.to_string()).collect(),
        };
        self.host_ip(&[
            "link",
            "add",
            &tap,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]);
        self.host_ip(&["link", "set", &tap, "master", bridge, "up"]);
        let guest = Guest { ns, port };
        guest.ip_cmd(&["link", "set", "lo", "up"]);
        guest.ip_cmd(&["link", "set", "eth0", "address", &guest.mac().to_string()]);
        guest.ip_cmd(&["addr", "add", &format!("{}/24", guest.ip()), "dev", "eth0"]);
        guest.ip_cmd(&["link", "set", "eth0", "up"]);
        self.guests.insert(name.to_string(), guest);
        &self.guests[name]
    }

    pub fn g(&self, name: &str) -> &Guest {
        &self.guests[name]
    }

    /// The firewall of every guest's port with `groups`.
    pub fn firewall(&self, groups: Vec<hearth_net::SecurityGroup>) -> HostFirewall {
        HostFirewall {
            ports: self.guests.values().map(|g| g.port.clone()).collect(),
            groups,
            vpc_zones: BTreeMap::new(),
        }
    }

    /// Compiles and installs `fw` in the host namespace (as [`Nft::install`] does); returns how long
    /// `nft -f` took.
    pub fn install(&self, fw: &HostFirewall) -> Duration {
        self.nft.enable_br_netfilter().expect("enable br_netfilter");
        let current = self.nft.current().expect("list the tables").unwrap_or_default();
        let script = hearth_net::compile_replacing(fw, &current).expect("compile");
        let start = Instant::now();
        self.nft.apply(&script).unwrap_or_else(|e| panic!("{e}\n{script}"));
        start.elapsed()
    }
}

/// Runs a command, panicking with its standard error if it fails.
pub fn run(command: &mut Command) {
    let output = command.stdin(Stdio::null()).output().expect("run a command");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn ping(guest: &Guest, to: Ipv4Addr, args: &[&str]) -> bool {
    guest
        .ns
        .command("ping")
        .unwrap()
        .args(args)
        .arg(to.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run ping")
        .success()
}

/// Whether `guest` gets an echo reply from `to` (up to 3 requests, so a stalled machine does not fail it).
pub fn ping_reaches(guest: &Guest, to: Ipv4Addr) -> bool {
    ping(guest, to, &["-c3", "-i0.2", "-W1", "-q"])
}

/// Whether one echo request from `guest` to `to` goes unanswered for 1 s.
pub fn ping_blocked(guest: &Guest, to: Ipv4Addr) -> bool {
    !ping(guest, to, &["-c1", "-W1", "-q"])
}

/// A TCP listener in a guest: the kernel completes handshakes without `accept`, which is all a
/// connection test needs.
pub fn tcp_listen(guest: &Guest, port: u16) -> TcpListener {
    guest
        .ns
        .run(move || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).expect("listen"))
        .unwrap()
}

/// Whether a TCP connection from `guest` to `to:port` is established within `wait`.
fn tcp_connect(guest: &Guest, to: Ipv4Addr, port: u16, wait: Duration) -> bool {
    let addr = SocketAddr::from((to, port));
    guest
        .ns
        .run(move || TcpStream::connect_timeout(&addr, wait).is_ok())
        .unwrap()
}

/// Whether `guest` can open a TCP connection to `to:port` (SYN, SYN-ACK, ACK: both directions pass).
pub fn tcp_reaches(guest: &Guest, to: Ipv4Addr, port: u16) -> bool {
    tcp_connect(guest, to, port, Duration::from_secs(2))
}

/// Whether a TCP connection attempt from `guest` to `to:port` gets nowhere for 400 ms.
pub fn tcp_blocked(guest: &Guest, to: Ipv4Addr, port: u16) -> bool {
    !tcp_connect(guest, to, port, Duration::from_millis(400))
}

/// A UDP echo server in a guest: answers every datagram with the same bytes, and counts them.
pub struct Echo {
    stop: Arc<AtomicBool>,
    pub received: Arc<AtomicUsize>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Echo {
    pub fn start(guest: &Guest, port: u16) -> Echo {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop2, received2) = (stop.clone(), received.clone());
        let thread = guest
            .ns
            .spawn("udp-echo", move || {
                let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind the echo port");
                socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                ready_tx.send(()).unwrap();
                let mut buf = [0u8; 2048];
                while !stop2.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = socket.recv_from(&mut buf) {
                        received2.fetch_add(1, Ordering::Relaxed);
                        let _ = socket.send_to(&buf[..n], from);
                    }
                }
            })
            .unwrap();
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("echo server ready");
        Echo {
            stop,
            received,
            thread: Some(thread),
        }
    }

    pub fn count(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Whether a new UDP flow from `guest` to `to:port` gets its echo (up to 3 flows of 500 ms each, so a
/// stalled machine does not fail it).
pub fn udp_reaches(guest: &Guest, to: Ipv4Addr, port: u16) -> bool {
    (0..3).any(|_| udp_probe_from(guest, 0, to, port, Duration::from_millis(500)))
}

/// Whether a new UDP flow from `guest` to `to:port` gets no echo within 400 ms.
pub fn udp_blocked(guest: &Guest, to: Ipv4Addr, port: u16) -> bool {
    !udp_probe_from(guest, 0, to, port, Duration::from_millis(400))
}

/// Sends one datagram from a fresh socket bound to `source_port` (0: any) and waits `wait` for its echo.
pub fn udp_probe_from(guest: &Guest, source_port: u16, to: Ipv4Addr, port: u16, wait: Duration) -> bool {
    guest
        .ns
        .run(move || {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, source_port)).expect("bind");
            socket.set_read_timeout(Some(wait)).unwrap();
            socket.send_to(b"probe", (to, port)).expect("send");
            let mut buf = [0u8; 64];
            matches!(socket.recv_from(&mut buf), Ok((5, _)) if &buf[..5] == b"probe")
        })
        .unwrap()
}

/// A UDP client with a fixed socket (one tracked flow) that sends sequence-numbered requests and waits
/// for each echo; echoes that come late are still counted.
pub struct Flow {
    socket: UdpSocket,
    seq: u64,
    echoed: std::collections::BTreeSet<u64>,
}

impl Flow {
    pub fn open(guest: &Guest, source_port: u16, to: Ipv4Addr, port: u16) -> Flow {
        let socket = guest
            .ns
            .run(move || {
                let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, source_port)).expect("bind");
                socket.connect((to, port)).unwrap();
                socket
            })
            .unwrap();
        Flow {
            socket,
            seq: 0,
            echoed: Default::default(),
        }
    }

    /// One request; whether its echo came back within `wait`.
    pub fn exchange(&mut self, wait: Duration) -> bool {
        self.seq += 1;
        let seq = self.seq;
        if self.socket.send(&seq.to_be_bytes()).is_err() {
            return false;
        }
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && !self.echoed.contains(&seq) {
            self.receive(deadline - Instant::now());
        }
        self.echoed.contains(&seq)
    }

    fn receive(&mut self, wait: Duration) {
        self.socket
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 64];
        if let Ok(8) = self.socket.recv(&mut buf) {
            self.echoed.insert(u64::from_be_bytes(buf[..8].try_into().unwrap()));
        }
    }

    /// Requests sent, and how many of them never got an echo (waiting `grace` for late ones).
    pub fn lost(&mut self, grace: Duration) -> (u64, u64) {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && (self.echoed.len() as u64) < self.seq {
            self.receive(deadline - Instant::now());
        }
        (self.seq, self.seq - self.echoed.len() as u64)
    }
}

// ---- raw frames -------------------------------------------------------------------------------------

const ETH_P_ALL: u16 = 0x0003;

/// An AF_PACKET socket bound to `ifname` in the calling thread's namespace.
fn packet_socket(ifname: &str) -> io::Result<(OwnedFd, i32)> {
    let name = CString::new(ifname).unwrap();
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain socket(2) call; the returned descriptor is checked and then owned.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ALL.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value to start from.
    let mut addr: libc::sockaddr_ll = unsafe { zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ALL.to_be();
    addr.sll_ifindex = index as i32;
    // SAFETY: `addr` is a valid sockaddr_ll and the length passed is its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((fd, index as i32))
}

/// Sends raw Ethernet `frames` out of the guest's `eth0`, bypassing its IP stack.
pub fn send_frames(guest: &Guest, frames: &[Vec<u8>]) {
    let frames = frames.to_vec();
    guest
        .ns
        .run(move || {
            let (fd, _) = packet_socket("eth0").expect("packet socket");
            for frame in &frames {
                // SAFETY: the buffer is valid for `frame.len()` bytes; the socket is bound, so no address.
                let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
                assert_eq!(
                    n,
                    frame.len() as isize,
                    "send a raw frame: {}",
                    io::Error::last_os_error()
                );
            }
        })
        .unwrap();
}

/// Records every frame that arrives on a guest's `eth0` (not those it sends).
pub struct Sniffer {
    stop: Arc<AtomicBool>,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Sniffer {
    pub fn start(guest: &Guest) -> Sniffer {
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop2, frames2) = (stop.clone(), frames.clone());
        let thread = guest
            .ns
            .spawn("sniffer", move || {
                let (fd, _) = packet_socket("eth0").expect("packet socket");
                let timeout = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 20_000,
                };
                // SAFETY: `timeout` is a valid timeval and the length is its size.
                unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVTIMEO,
                        &timeout as *const libc::timeval as *const libc::c_void,
                        size_of::<libc::timeval>() as u32,
                    )
                };
                ready_tx.send(()).unwrap();
                let mut buf = vec![0u8; 65536];
                while !stop2.load(Ordering::Relaxed) {
                    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
                    let mut from: libc::sockaddr_ll = unsafe { zeroed() };
                    let mut len = size_of::<libc::sockaddr_ll>() as u32;
                    // SAFETY: `buf` is valid for its length, `from`/`len` describe a sockaddr_ll buffer.
                    let n = unsafe {
                        libc::recvfrom(
                            fd.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            0,
                            &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                            &mut len,
                        )
                    };
                    if n > 0 && from.sll_pkttype != libc::PACKET_OUTGOING {
                        frames2.lock().unwrap().push(buf[..n as usize].to_vec());
                    }
                }
            })
            .unwrap();
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("sniffer ready");
        Sniffer {
            stop,
            frames,
            thread: Some(thread),
        }
    }

    /// Whether a frame holding `marker` arrived (waits up to 300 ms for it).
    pub fn saw(&self, marker: &[u8]) -> bool {
        let deadline = Instant::now() + Duration::from_millis(300);
        loop {
            if self
                .frames
                .lock()
                .unwrap()
                .iter()
                .any(|f| f.windows(marker.len()).any(|w| w == marker))
            {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn ethernet(dst: MacAddr, src: MacAddr, ethertype: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&dst.0);
    frame.extend_from_slice(&src.0);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

/// An Ethernet frame carrying an IPv4 UDP datagram (valid IP header checksum, no UDP checksum).
pub fn udp_frame(eth: (MacAddr, MacAddr), ip: (Ipv4Addr, Ipv4Addr), ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
    let mut frame = ethernet(eth.1, eth.0, 0x0800);
    let total = (20 + 8 + payload.len()) as u16;
    let mut header = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    header[2..4].copy_from_slice(&total.to_be_bytes());
    header.extend_from_slice(&ip.0.octets());
    header.extend_from_slice(&ip.1.octets());
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    header[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(&ports.0.to_be_bytes());
    frame.extend_from_slice(&ports.1.to_be_bytes());
    frame.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// A broadcast ARP request from Ethernet source `eth_src` claiming `sender` (MAC, IP), asking for
/// `target`; `marker` rides in the Ethernet padding.
pub fn arp_frame(eth_src: MacAddr, sender: (MacAddr, Ipv4Addr), target: Ipv4Addr, marker: &[u8]) -> Vec<u8> {
    let mut frame = ethernet(MacAddr([0xff; 6]), eth_src, 0x0806);
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&sender.0 .0);
    frame.extend_from_slice(&sender.1.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target.octets());
    frame.extend_from_slice(marker);
    frame
}

/// An IPv6 frame (next header 59: nothing) with `marker` as payload.
pub fn ipv6_frame(src: MacAddr, dst: MacAddr, marker: &[u8]) -> Vec<u8> {
    let mut frame = ethernet(dst, src, 0x86dd);
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&(marker.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[59, 64]);
    frame.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    frame.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    frame.extend_from_slice(marker);
    frame
}
