//! UDP echo round trips: hearth's instance path (a client namespace's veth on a bridge, a tap, a probe VM run by
//! `hearth-vmm`, hearth's security-group ruleset with br_netfilter and conntrack) against a plain veth pair
//! between two namespaces with an echo server thread at the far end.
//!
//! Both use the same client: one socket sends [`SAMPLES`] datagrams of [`PAYLOAD`] bytes one after another
//! (each after the previous echo came back, [`WARMUP`] more first), timing each from `send` to the matching
//! `recv`. Everything lives in scratch namespaces; the VMM is killed and the namespaces deleted on every way
//! out (errors, SIGINT/SIGTERM/SIGHUP), and the VMM also dies with this process should it die.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hearth_net::link::{LinkError, Links};
use hearth_net::netns::Netns;
use hearth_net::{HostFirewall, Ipv4Cidr, MacAddr, Nft, Port, Protocol, Rule, SecurityGroup};
use tokio::runtime::Runtime;

/// Round trips measured per path.
pub const SAMPLES: usize = 2000;
/// Round trips before those, not measured (ARP, conntrack entry, caches).
pub const WARMUP: usize = 100;
/// UDP payload size.
pub const PAYLOAD: usize = 32;
/// More echoes than this lost (1 s without an answer each) fail the measurement.
const MAX_LOST: usize = SAMPLES / 100;
const ECHO_PORT: u16 = 7;
/// How long the probe may take from `hearth-vmm`'s start to its first echo.
const BOOT_LIMIT: Duration = Duration::from_secs(60);

// hearth's path, in namespace "host": bridge BRIDGE with the tap and CLIENT_PORT, whose peer CLIENT_IF is in
// namespace "client".
const BRIDGE: &str = "br0";
const TAP: &str = "tap0";
const CLIENT_PORT: &str = "client0";
const CLIENT_IF: &str = "eth0";
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const GUEST_MAC: MacAddr = MacAddr([0x06, 0x00, 0x0a, 0x4d, 0x00, 0x02]);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
const PREFIX: u8 = 24;

// The baseline: VETH_A in namespace "veth-a", its peer VETH_B in "veth-b".
const VETH_A: &str = "veth-a";
const VETH_B: &str = "veth-b";
const VETH_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const VETH_SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);

/// Median and 99th percentile of one path's round trips.
#[derive(Debug, Clone, Copy)]
pub struct Rtt {
    /// Median, µs.
    pub median_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Requests whose echo did not come back within a second (not in the samples).
    pub lost: usize,
}

/// What [`measure`] found.
pub enum Outcome {
    /// Both paths measured.
    Measured {
        /// Plain veth pair, no bridge, no firewall.
        veth: Rtt,
        /// Tap + bridge + nftables to a probe VM.
        hearth: Rtt,
        /// The same VM and bridge without hearth's ruleset (the firewall's share of `hearth`).
        bare: Rtt,
    },
    /// Not measured, for this reason (no KVM, no `hearth-vmm` given).
    Skipped(String),
    /// A measurement failed.
    Failed(String),
}

/// The programs that run the probe VM.
struct Guest {
    vmm: PathBuf,
    kernel: PathBuf,
}

/// The VMM and probe from `HEARTH_VMM` and `HEARTH_PROBE`, or why the round trips cannot be measured.
fn guest() -> Result<Guest, Outcome> {
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return Err(Outcome::Skipped(format!("/dev/kvm unusable: {e}")));
    }
    let (Some(vmm), Some(kernel)) = (std::env::var_os("HEARTH_VMM"), std::env::var_os("HEARTH_PROBE")) else {
        return Err(Outcome::Skipped(
            "HEARTH_VMM and HEARTH_PROBE (hearth-vmm and the probe guest) are not set; scripts/bench net sets them"
                .into(),
        ));
    };
    let guest = Guest {
        vmm: vmm.into(),
        kernel: kernel.into(),
    };
    for (variable, path) in [("HEARTH_VMM", &guest.vmm), ("HEARTH_PROBE", &guest.kernel)] {
        if !path.is_file() {
            return Err(Outcome::Failed(format!("{variable}={}: no such file", path.display())));
        }
    }
    Ok(guest)
}

/// Measures both paths, the baseline first.
pub fn measure() -> Outcome {
    let guest = match guest() {
        Ok(guest) => guest,
        Err(outcome) => return outcome,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return Outcome::Failed(format!("tokio runtime: {e}")),
    };
    let veth = match veth_rtt(&runtime) {
        Ok(rtt) => rtt,
        Err(e) => return Outcome::Failed(format!("veth pair: {e}")),
    };
    let hearth = match hearth_rtt(&runtime, &guest, true) {
        Ok(rtt) => rtt,
        Err(e) => return Outcome::Failed(format!("probe VM: {e}")),
    };
    match hearth_rtt(&runtime, &guest, false) {
        Ok(bare) => Outcome::Measured { veth, hearth, bare },
        Err(e) => Outcome::Failed(format!("probe VM without the ruleset: {e}")),
    }
}

// ---- signals --------------------------------------------------------------------------------------------

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT, SIGTERM and SIGHUP into [`interrupted`] errors, so that the measurement returns and every
/// namespace and process it made is removed on the way out.
pub fn catch_signals() {
    let handler = note_signal as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t;
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; glibc's signal() installs
        // it with SA_RESTART, so interrupted system calls resume (every wait here has a timeout).
        unsafe {
            libc::signal(signal, handler);
        }
    }
}

/// An error once one of the signals of [`catch_signals`] arrived.
pub fn interrupted() -> Result<(), String> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

// ---- the two paths --------------------------------------------------------------------------------------

/// A scratch namespace `hearth-netbench-PID-TAG`, deleted on drop.
fn scratch_netns(tag: &str) -> Result<Netns, String> {
    Netns::create(&format!("hearth-netbench-{}-{tag}", std::process::id())).map_err(|e| e.to_string())
}

/// The baseline: veth pair, addresses, an echo thread in namespace "veth-b", the client in "veth-a".
fn veth_rtt(runtime: &Runtime) -> Result<Rtt, String> {
    let a = scratch_netns("veth-a")?;
    let b = scratch_netns("veth-b")?;
    runtime
        .block_on(async {
            let links = Links::new_in(&a)?;
            links.set_up("lo").await?;
            links.ensure_veth(VETH_A, VETH_B).await?;
            links.move_to_netns(VETH_B, &b).await?;
            links.set_addresses(VETH_A, &[(VETH_CLIENT_IP, PREFIX, false)]).await?;
            let links = Links::new_in(&b)?;
            links.set_up("lo").await?;
            links.set_addresses(VETH_B, &[(VETH_SERVER_IP, PREFIX, false)]).await?;
            links.set_up(VETH_B).await
        })
        .map_err(|e: LinkError| e.to_string())?;
    let server_addr = SocketAddrV4::new(VETH_SERVER_IP, ECHO_PORT);
    let _server = EchoServer::start(&b, server_addr)?;
    let client = client_socket(&a, VETH_CLIENT_IP, server_addr)?;
    await_echo(&client, Duration::from_secs(10), || Ok(()))?;
    round_trips(&client)
}

/// The firewall of hearth's path: the probe's port, in a group that admits UDP 7 from the subnet (and, like a
/// new EC2 group, lets everything out).
fn firewall() -> Result<HostFirewall, String> {
    let subnet = Ipv4Cidr::new(Ipv4Addr::new(10, 77, 0, 0), PREFIX).ok_or("bad subnet")?;
    let any = Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0).ok_or("bad CIDR")?;
    Ok(HostFirewall {
        ports: vec![Port {
            tap: TAP.into(),
            mac: GUEST_MAC,
            ipv4: GUEST_IP,
            vpc_id: "vpc-netbench".into(),
            group_ids: vec!["sg-netbench".into()],
        }],
        groups: vec![SecurityGroup {
            id: "sg-netbench".into(),
            vpc_id: "vpc-netbench".into(),
            ingress: vec![Rule::new(Protocol::Udp, ECHO_PORT.into(), ECHO_PORT.into()).cidr(subnet)],
            egress: vec![Rule::all().cidr(any)],
            remote_members: Vec::new(),
        }],
        ..Default::default()
    })
}

/// hearth's path: bridge, tap, client veth, ruleset, probe VM; the client in namespace "client".
fn hearth_rtt(runtime: &Runtime, guest: &Guest, with_firewall: bool) -> Result<Rtt, String> {
    let host = scratch_netns("host")?;
    let client = scratch_netns("client")?;
    runtime
        .block_on(async {
            let links = Links::new_in(&host)?;
            links.set_up("lo").await?;
            links.ensure_bridge(BRIDGE).await?;
            links.ensure_tap(TAP).await?;
            links.set_master(TAP, Some(BRIDGE)).await?;
            links.ensure_veth(CLIENT_PORT, CLIENT_IF).await?;
            links.set_master(CLIENT_PORT, Some(BRIDGE)).await?;
            links.move_to_netns(CLIENT_IF, &client).await?;
            let links = Links::new_in(&client)?;
            links.set_up("lo").await?;
            links.set_addresses(CLIENT_IF, &[(CLIENT_IP, PREFIX, false)]).await?;
            links.set_up(CLIENT_IF).await
        })
        .map_err(|e: LinkError| e.to_string())?;
    if with_firewall {
        Nft::in_netns(host.name())
            .install(&firewall()?)
            .map_err(|e| e.to_string())?;
    }
    let dir = ScratchDir::create()?;
    let mut vmm = Vmm::start(&host, guest, &dir)?;
    let socket = client_socket(&client, CLIENT_IP, SocketAddrV4::new(GUEST_IP, ECHO_PORT))?;
    await_echo(&socket, BOOT_LIMIT, || vmm.check()).map_err(|e| vmm.explain(e))?;
    // The probe echoes on every port; the ruleset admits port 7 only. An echo from another port would mean
    // the datagrams bypass the firewall.
    let blocked = client_socket(&client, CLIENT_IP, SocketAddrV4::new(GUEST_IP, ECHO_PORT + 2))?;
    if with_firewall && await_echo(&blocked, Duration::from_millis(600), || Ok(())).is_ok() {
        return Err(format!(
            "UDP {} was echoed although the security group admits only {ECHO_PORT}: the ruleset is not in the path",
            ECHO_PORT + 2
        ));
    }
    let rtt = round_trips(&socket).map_err(|e| vmm.explain(e))?;
    vmm.check().map_err(|e| vmm.explain(e))?;
    Ok(rtt)
}

// ---- the client -----------------------------------------------------------------------------------------

/// A UDP socket in `netns`, bound to `local` and connected to `server`.
fn client_socket(netns: &Netns, local: Ipv4Addr, server: SocketAddrV4) -> Result<UdpSocket, String> {
    netns
        .run(move || {
            let socket = UdpSocket::bind((local, 0))?;
            socket.connect(server)?;
            Ok(socket)
        })
        .and_then(|result| result)
        .map_err(|e: io::Error| format!("UDP socket {local} -> {server} in {}: {e}", netns.name()))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Sends a datagram every 200 ms until one is echoed (ARP resolution, a guest still booting), for at most
/// `limit`; `alive` is asked before each try.
fn await_echo(
    socket: &UdpSocket,
    limit: Duration,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    const HELLO: &[u8] = b"hearth-netbench hello";
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut last_error = None;
    let mut buf = [0u8; 2048];
    loop {
        interrupted()?;
        alive()?;
        if let Err(e) = socket.send(HELLO) {
            last_error = Some(e);
        }
        match socket.recv(&mut buf) {
            Ok(n) if &buf[..n] == HELLO => return Ok(()),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            // ICMP unreachable (nothing bound yet), reported on a connected socket.
            Err(e) => last_error = Some(e),
        }
        if start.elapsed() > limit {
            let peer = socket.peer_addr().map_or("?".into(), |a| a.to_string());
            let why = last_error.map_or(String::new(), |e| format!(" (last error: {e})"));
            return Err(format!("no UDP echo from {peer} within {limit:?}{why}"));
        }
    }
}

/// [`WARMUP`] + [`SAMPLES`] sequential request/echo pairs on the connected `socket`.
fn round_trips(socket: &UdpSocket) -> Result<Rtt, String> {
    let io_error = |what: &str, e: io::Error| format!("{what}: {e}");
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| io_error("set timeout", e))?;
    let mut payload = [b'.'; PAYLOAD];
    payload[..11].copy_from_slice(b"hearth-rtt ");
    let mut samples = Vec::with_capacity(SAMPLES);
    let mut lost = 0;
    let mut buf = [0u8; 2048];
    for seq in 0..WARMUP + SAMPLES {
        if seq % 64 == 0 {
            interrupted()?;
        }
        payload[11..19].copy_from_slice(&(seq as u64).to_be_bytes());
        let start = Instant::now();
        socket.send(&payload).map_err(|e| io_error("send", e))?;
        let elapsed = loop {
            match socket.recv(&mut buf) {
                Ok(n) if buf[..n] == payload => break Some(start.elapsed()),
                // The late echo of an earlier request.
                Ok(_) => {}
                Err(e) if is_timeout(&e) => break None,
                Err(e) => return Err(io_error("recv", e)),
            }
        };
        match elapsed {
            Some(rtt) if seq >= WARMUP => samples.push(rtt),
            Some(_) => {}
            None => lost += 1,
        }
        if lost > MAX_LOST {
            return Err(format!("{lost} of {} echoes did not come back within 1 s", seq + 1));
        }
    }
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let n = samples.len();
    Ok(Rtt {
        median_us: us(samples[n / 2]),
        p99_us: us(samples[(n * 99).div_ceil(100) - 1]),
        lost,
    })
}

// ---- the echo server of the baseline ----------------------------------------------------------------------

/// A thread in a namespace echoing UDP datagrams on one address; stopped and joined on drop.
struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<io::Result<()>>>>,
}

impl EchoServer {
    /// Starts the thread and returns once its socket is bound.
    fn start(netns: &Netns, addr: SocketAddrV4) -> Result<EchoServer, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, bound) = mpsc::channel();
        let stopping = stop.clone();
        let thread = netns
            .spawn("udp-echo", move || -> io::Result<()> {
                let socket = UdpSocket::bind(addr)?;
                socket.set_read_timeout(Some(Duration::from_millis(50)))?;
                let _ = ready.send(());
                let mut buf = [0u8; 2048];
                while !stopping.load(Ordering::SeqCst) {
                    match socket.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            socket.send_to(&buf[..n], from)?;
                        }
                        Err(e) if is_timeout(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            })
            .map_err(|e| format!("echo server thread: {e}"))?;
        let mut server = EchoServer {
            stop,
            thread: Some(thread),
        };
        if bound.recv().is_ok() {
            return Ok(server);
        }
        // The thread ended before binding: say why.
        let why = match server.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(e) | Ok(Err(e)))) => e.to_string(),
            _ => "the thread ended".into(),
        };
        Err(format!("echo server on {addr} in {}: {why}", netns.name()))
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---- the probe VM -----------------------------------------------------------------------------------------

/// A directory under the system temp dir for the VMM's console and log, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create() -> Result<ScratchDir, String> {
        let path = std::env::temp_dir().join(format!("hearth-netbench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        Ok(ScratchDir(path))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `hearth-vmm` running the probe with `net-echo` on [`TAP`], in the host namespace; killed on drop.
struct Vmm {
    child: Child,
    console: PathBuf,
    log: PathBuf,
}

impl Vmm {
    fn start(host: &Netns, guest: &Guest, dir: &ScratchDir) -> Result<Vmm, String> {
        let console = dir.path("console.log");
        let log = dir.path("vmm.log");
        let stderr = File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let mut command = host.command(&guest.vmm).map_err(|e| e.to_string())?;
        command
            .arg("--kernel")
            .arg(&guest.kernel)
            .args(["--memory", "64", "--no-rng"])
            .args(["--cmdline", &format!("probe.ops=net-echo probe.ip={GUEST_IP}/{PREFIX}")])
            .args(["--net", &format!("tap={TAP},mac={GUEST_MAC}")])
            .arg("--console")
            .arg(&console)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: in the forked child the closure only calls prctl(2) and getppid(2), which are
        // async-signal-safe, and builds its errors without allocating.
        unsafe {
            command.pre_exec(move || die_with_parent(parent));
        }
        let child = command
            .spawn()
            .map_err(|e| format!("start {}: {e}", guest.vmm.display()))?;
        Ok(Vmm { child, console, log })
    }

    /// An error if it has ended.
    fn check(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("hearth-vmm ended ({status})")),
            Err(e) => Err(format!("hearth-vmm: {e}")),
        }
    }

    /// `error` followed by the end of the guest's console and of the VMM's log.
    fn explain(&self, error: String) -> String {
        format!(
            "{error}\n--- guest console (end) ---\n{}\n--- hearth-vmm stderr (end) ---\n{}",
            tail(&self.console),
            tail(&self.log)
        )
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// In the VMM's process before it executes: SIGKILL when this process ends, however it ends (a release
/// build aborts on panic without running destructors), so that no VMM outlives the benchmark.
fn die_with_parent(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid take and return plain integers.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            return Err(io::Error::last_os_error());
        }
        // The parent may have ended before prctl: then nobody would kill this process.
        if libc::getppid() != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// The last 12 lines of `path`.
fn tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(12)..].join("\n")
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => "(nothing written)".into(),
        Err(e) => format!("({}: {e})", path.display()),
    }
}
