//! A DHCPv4 server for instance interfaces: static leases, answered only to the MACs it knows.
//!
//! # Design
//!
//! - **Static leases, as EC2 and OpenStack do.** hearthd assigns every port its address; DHCP only
//!   tells the guest. The agent keeps a [`Leases`] table (MAC → [`Lease`]) current and may replace it
//!   at any time; the server reads it for every message, so a change applies to the next exchange.
//!   There is no pool, no allocation and no lease database: a guest gets the same answer whatever it
//!   asks, a request for another address is refused (NAK), and a MAC that is not in the table gets no
//!   answer at all (another server on the segment, if any, may answer it).
//! - **One server per bridge, several bridges per host, all in one namespace.** Each [`DhcpServer`]
//!   owns a UDP socket on `0.0.0.0:67` with `SO_BINDTODEVICE` to its bridge (set before `bind`, so the
//!   sockets do not clash), `SO_REUSEADDR` and `SO_BROADCAST`. A bridge's DHCP traffic reaches only its
//!   own server; a VPC's address plan never leaks into another's. Bind after the bridge exists, and
//!   bind again if the bridge is re-created (the socket follows the ifindex it was bound to).
//! - **Replies by broadcast** to `255.255.255.255:68` when the client has no address yet (`ciaddr`
//!   0, the DISCOVER/REQUEST of a booting guest), the simplest correct choice on a bridge: it needs
//!   neither a raw socket nor an ARP entry for an address the client does not have yet. Every port of
//!   the bridge sees those replies; they hold nothing a guest of the same subnet could not learn
//!   anyway. A client that has an address (renewing, INFORM) gets a unicast to `ciaddr`; if that
//!   send fails (no route to it in the namespace) the reply is broadcast instead. NAKs are always
//!   broadcast, and so is the answer to a request with `giaddr` set (no relay sits on an instance
//!   bridge: that is a guest's forgery, which must not choose where the server sends).
//! - **Messages.** DISCOVER → OFFER. REQUEST → ACK when the address it asks for is the lease's:
//!   `requested IP` (option 50) with our server identifier (SELECTING) or without one (INIT-REBOOT),
//!   or `ciaddr` (RENEWING, REBINDING); a REQUEST naming another server identifier is the client
//!   choosing that server and is ignored; a REQUEST for another address gets a NAK. INFORM → ACK with
//!   the configuration and no lease time. RELEASE and DECLINE change nothing (the address is the
//!   port's whatever the guest says) and are logged: a DECLINE means the guest saw its address in use.
//!   A guest sends as many as it likes, so these lines (and the server's receive and send errors)
//!   are rate limited per MAC ([`crate::throttle::LogLimiter`]: 10 at once, then one per 10 s; the
//!   next line logged says how many were suppressed); [`DhcpStats`] counts every one.
//! - **Options** sent with every OFFER and ACK, whatever the parameter request list (option 55)
//!   asks, which clients accept: 53 type, 54 server identifier, 51 lease time, 58/59 renewal (T1 =
//!   ½) and rebinding (T2 = ⅞) times, 1 subnet mask, 28 broadcast address, and when the lease has
//!   them 3 router, 6 DNS servers, 12 host name, 15 domain name, 26 interface MTU. A client
//!   identifier (option 61) is echoed (RFC 6842). Leases are keyed by the hardware address (`chaddr`),
//!   not the client identifier: the MAC is what hearth assigns.
//! - **Robust parsing.** Anything that is not a well-formed BOOTREQUEST for Ethernet with the magic
//!   cookie and a message type (too short, options running past the end, wrong lengths) is dropped
//!   without an answer; the parser indexes nothing it has not checked, and a test feeds it random and
//!   mutated packets.
//!
//! The source address of a reply is chosen by the kernel (the bridge's primary address); give the
//! server that address as `server_ip`, the identifier clients will address their requests to.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::throttle::LogLimiter;
use crate::MacAddr;

/// What one MAC is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The address (the port's).
    pub ip: Ipv4Addr,
    /// The subnet's prefix length (subnet mask and broadcast address are derived from it).
    pub prefix_len: u8,
    /// Default gateway (option 3).
    pub router: Option<Ipv4Addr>,
    /// DNS servers (option 6), in order; at most 63 are sent.
    pub dns: Vec<Ipv4Addr>,
    /// Host name (option 12).
    pub hostname: Option<String>,
    /// Domain name (option 15).
    pub domain_name: Option<String>,
    /// Lease time in seconds (option 51); `u32::MAX` is infinite.
    pub lease_secs: u32,
    /// Interface MTU (option 26).
    pub mtu: Option<u16>,
}

impl Lease {
    /// A lease of `ip`/`prefix_len` for one hour (EC2's lease time), with nothing else.
    pub fn new(ip: Ipv4Addr, prefix_len: u8) -> Lease {
        Lease {
            ip,
            prefix_len,
            router: None,
            dns: Vec::new(),
            hostname: None,
            domain_name: None,
            lease_secs: 3600,
            mtu: None,
        }
    }

    fn mask(&self) -> Ipv4Addr {
        match self.prefix_len {
            0 => Ipv4Addr::UNSPECIFIED,
            len => Ipv4Addr::from(u32::MAX << (32 - u32::from(len.min(32)))),
        }
    }

    fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.ip) | !u32::from(self.mask()))
    }
}

/// The lease table shared by the agent and any number of servers; every method takes `&self`, so an
/// `Arc<Leases>` can be updated while servers run.
#[derive(Debug, Default)]
pub struct Leases {
    table: RwLock<HashMap<MacAddr, Lease>>,
}

impl Leases {
    /// An empty table.
    pub fn new() -> Leases {
        Leases::default()
    }

    /// Replaces the whole table.
    pub fn set(&self, leases: HashMap<MacAddr, Lease>) {
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = leases;
    }

    /// Adds or replaces the lease of `mac`; returns the previous one.
    pub fn insert(&self, mac: MacAddr, lease: Lease) -> Option<Lease> {
        self.table
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(mac, lease)
    }

    /// Removes the lease of `mac`; returns it.
    pub fn remove(&self, mac: &MacAddr) -> Option<Lease> {
        self.table.write().unwrap_or_else(PoisonError::into_inner).remove(mac)
    }

    /// The lease of `mac`.
    pub fn get(&self, mac: &MacAddr) -> Option<Lease> {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(mac)
            .cloned()
    }

    /// How many leases the table holds.
    pub fn len(&self) -> usize {
        self.table.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counters of one server, readable while it runs.
#[derive(Debug, Default)]
pub struct DhcpStats {
    offers: AtomicU64,
    acks: AtomicU64,
    naks: AtomicU64,
    unknown_clients: AtomicU64,
    malformed: AtomicU64,
    declines: AtomicU64,
    releases: AtomicU64,
}

impl DhcpStats {
    /// OFFERs sent (a send that fails is counted too, and logged).
    pub fn offers(&self) -> u64 {
        self.offers.load(Ordering::Relaxed)
    }

    /// ACKs sent (to REQUESTs and INFORMs).
    pub fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    /// NAKs sent.
    pub fn naks(&self) -> u64 {
        self.naks.load(Ordering::Relaxed)
    }

    /// Well-formed messages from MACs without a lease (not answered).
    pub fn unknown_clients(&self) -> u64 {
        self.unknown_clients.load(Ordering::Relaxed)
    }

    /// Datagrams that were not a well-formed DHCP request (dropped).
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// DECLINEs received from known clients (logged, rate limited).
    pub fn declines(&self) -> u64 {
        self.declines.load(Ordering::Relaxed)
    }

    /// RELEASEs received from known clients (logged, rate limited).
    pub fn releases(&self) -> u64 {
        self.releases.load(Ordering::Relaxed)
    }
}

/// Log lines of a server, rate limited per client MAC (`None`: the server's own errors).
type ServerLogs = LogLimiter<Option<MacAddr>>;

/// The (rate-limited) log line for a DECLINE or RELEASE, counting it.
fn skip_log(logs: &mut ServerLogs, stats: &DhcpStats, device: &str, skip: &Skip, now: Instant) -> Option<String> {
    match skip {
        Skip::Decline { mac, ip } => {
            stats.declines.fetch_add(1, Ordering::Relaxed);
            let ip = ip.map_or_else(|| "its address".to_string(), |ip| ip.to_string());
            logs.format(
                &Some(*mac),
                format_args!("hearth-net: DHCP on {device}: {mac} declined {ip} (the guest saw it in use)"),
                now,
            )
        }
        Skip::Release { mac, ip } => {
            stats.releases.fetch_add(1, Ordering::Relaxed);
            logs.format(
                &Some(*mac),
                format_args!("hearth-net: DHCP on {device}: {mac} released {ip}"),
                now,
            )
        }
        _ => None,
    }
}

/// A DHCP server for the ports of one bridge (see the module documentation).
#[derive(Debug)]
pub struct DhcpServer {
    socket: tokio::net::UdpSocket,
    device: String,
    server_ip: Ipv4Addr,
    leases: Arc<Leases>,
    stats: Arc<DhcpStats>,
}

const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;

impl DhcpServer {
    /// Opens the server's socket: UDP `0.0.0.0:67` bound to `device` (`SO_BINDTODEVICE`), with
    /// `SO_REUSEADDR` and `SO_BROADCAST`, in the calling thread's network namespace, registered with the
    /// current tokio runtime (it fails outside one; run the server on that runtime). `server_ip` is the
    /// server identifier (option 54): `device`'s address.
    pub fn bind(device: &str, server_ip: Ipv4Addr, leases: Arc<Leases>) -> io::Result<DhcpServer> {
        if device.is_empty() || device.len() >= libc::IFNAMSIZ || device.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid device name {device:?}"),
            ));
        }
        tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let context =
            |what: &str, e: io::Error| io::Error::new(e.kind(), format!("DHCP socket on {device}: {what}: {e}"));
        // SAFETY: plain socket(2) call; the result is checked and then owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::IPPROTO_UDP,
            )
        };
        if fd < 0 {
            return Err(context("socket", io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        for (option, name) in [
            (libc::SO_REUSEADDR, "SO_REUSEADDR"),
            (libc::SO_BROADCAST, "SO_BROADCAST"),
        ] {
            // SAFETY: the option value points to a live c_int whose size is passed.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(context(name, io::Error::last_os_error()));
            }
        }
        // SAFETY: the option value is the device name's bytes, valid for the length passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                device.as_ptr().cast(),
                device.len() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(context("SO_BINDTODEVICE", io::Error::last_os_error()));
        }
        // SAFETY: sockaddr_in is plain old data; all-zero is a valid value to start from.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_port = SERVER_PORT.to_be();
        addr.sin_addr.s_addr = u32::from(Ipv4Addr::UNSPECIFIED).to_be();
        // SAFETY: `addr` is a valid sockaddr_in and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(context("bind 0.0.0.0:67", io::Error::last_os_error()));
        }
        let socket = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd))?;
        Ok(DhcpServer {
            socket,
            device: device.to_string(),
            server_ip,
            leases,
            stats: Arc::default(),
        })
    }

    /// The device the server answers on.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The server's counters.
    pub fn stats(&self) -> Arc<DhcpStats> {
        self.stats.clone()
    }

    /// Serves until the future is dropped; errors are logged (to standard error) and do not stop it.
    pub async fn run(self) {
        let mut buf = vec![0u8; 4096];
        let mut logs = ServerLogs::default();
        loop {
            let len = match self.socket.recv_from(&mut buf).await {
                Ok((len, _)) => len,
                Err(e) => {
                    logs.eprintln(&None, format_args!("hearth-net: DHCP on {}: receive: {e}", self.device));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match respond(&buf[..len], self.server_ip, &self.leases) {
                Ok(reply) => self.send(reply, &mut logs).await,
                Err(Skip::Malformed) => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                }
                Err(Skip::UnknownClient) => {
                    self.stats.unknown_clients.fetch_add(1, Ordering::Relaxed);
                }
                Err(skip @ (Skip::Decline { .. } | Skip::Release { .. })) => {
                    if let Some(line) = skip_log(&mut logs, &self.stats, &self.device, &skip, Instant::now()) {
                        eprintln!("{line}");
                    }
                }
                Err(Skip::OtherServer | Skip::Unsupported) => {}
            }
        }
    }

    /// Runs the server as a task on the current tokio runtime (the one it was bound on); the task
    /// stops when the returned guard is dropped.
    pub fn spawn(self) -> DhcpTask {
        let stats = self.stats.clone();
        DhcpTask {
            task: tokio::spawn(self.run()),
            stats,
        }
    }

    async fn send(&self, reply: Reply, logs: &mut ServerLogs) {
        // Counted before sending, so that a client holding the reply always finds it counted.
        let counter = match reply.kind {
            OFFER => &self.stats.offers,
            NAK => &self.stats.naks,
            _ => &self.stats.acks,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT);
        let to = match reply.to {
            Destination::Broadcast => broadcast,
            Destination::Client(ip) => SocketAddrV4::new(ip, CLIENT_PORT),
        };
        let mut result = self.socket.send_to(&reply.packet, to).await;
        if result.is_err() && matches!(reply.to, Destination::Client(_)) {
            result = self.socket.send_to(&reply.packet, broadcast).await;
        }
        if let Err(e) = result {
            logs.eprintln(
                &None,
                format_args!("hearth-net: DHCP on {}: send to {to}: {e}", self.device),
            );
        }
    }
}

/// A server running as a task; dropping this stops it.
#[derive(Debug)]
pub struct DhcpTask {
    task: tokio::task::JoinHandle<()>,
    stats: Arc<DhcpStats>,
}

impl DhcpTask {
    /// The server's counters.
    pub fn stats(&self) -> &DhcpStats {
        &self.stats
    }
}

impl Drop for DhcpTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---- protocol ---------------------------------------------------------------------------------------

const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const DECLINE: u8 = 4;
const ACK: u8 = 5;
const NAK: u8 = 6;
const RELEASE: u8 = 7;
const INFORM: u8 = 8;

const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Fixed BOOTP header plus the magic cookie.
const HEADER_LEN: usize = 240;
/// BOOTP's minimum message size, which some clients still expect.
const MIN_REPLY_LEN: usize = 300;

/// Why a datagram gets no answer.
#[derive(Debug, PartialEq, Eq)]
enum Skip {
    Malformed,
    UnknownClient,
    /// A REQUEST selecting another server.
    OtherServer,
    /// A message type a server does not answer (or answers with nothing: OFFER, ACK from elsewhere).
    Unsupported,
    Decline {
        mac: MacAddr,
        ip: Option<Ipv4Addr>,
    },
    Release {
        mac: MacAddr,
        ip: Ipv4Addr,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    Broadcast,
    Client(Ipv4Addr),
}

#[derive(Debug)]
struct Reply {
    kind: u8,
    to: Destination,
    packet: Vec<u8>,
}

/// The fields of a request that matter here.
#[derive(Debug)]
struct Request<'a> {
    xid: &'a [u8],
    flags: &'a [u8],
    ciaddr: Ipv4Addr,
    giaddr: Ipv4Addr,
    chaddr: &'a [u8],
    mac: MacAddr,
    message_type: u8,
    requested_ip: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
    client_id: Option<&'a [u8]>,
}

fn ipv4(bytes: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(bytes).ok().map(Ipv4Addr::from)
}

/// Parses a BOOTREQUEST for Ethernet; `None` for anything else or anything malformed.
fn parse(packet: &[u8]) -> Option<Request<'_>> {
    let header = packet.get(..HEADER_LEN)?;
    if header[0] != 1 || header[1] != 1 || header[2] != 6 || header[236..240] != MAGIC {
        return None;
    }
    let mut request = Request {
        xid: &header[4..8],
        flags: &header[10..12],
        ciaddr: ipv4(&header[12..16])?,
        giaddr: ipv4(&header[24..28])?,
        chaddr: &header[28..44],
        mac: MacAddr(header[28..34].try_into().ok()?),
        message_type: 0,
        requested_ip: None,
        server_id: None,
        client_id: None,
    };
    let mut options = &packet[HEADER_LEN..];
    loop {
        match options {
            // No end option: tolerated (some clients pad to the end instead).
            [] | [255, ..] => break,
            [0, rest @ ..] => options = rest,
            [code, len, rest @ ..] => {
                let value = rest.get(..usize::from(*len))?;
                match code {
                    53 => request.message_type = *value.first().filter(|_| value.len() == 1)?,
                    50 => request.requested_ip = Some(ipv4(value)?),
                    54 => request.server_id = Some(ipv4(value)?),
                    61 => request.client_id = Some(value),
                    _ => {}
                }
                options = &rest[usize::from(*len)..];
            }
            // A code without its length byte.
            [_] => return None,
        }
    }
    (request.message_type != 0).then_some(request)
}

/// The answer to one datagram, or why there is none.
fn respond(packet: &[u8], server_ip: Ipv4Addr, leases: &Leases) -> Result<Reply, Skip> {
    let request = parse(packet).ok_or(Skip::Malformed)?;
    let lease = leases.get(&request.mac).ok_or(Skip::UnknownClient)?;
    let nonzero = |ip: Ipv4Addr| (!ip.is_unspecified()).then_some(ip);
    match request.message_type {
        DISCOVER => Ok(reply(&request, OFFER, lease.ip, server_ip, lease_options(&lease, true))),
        REQUEST => {
            if request.server_id.is_some_and(|id| id != server_ip) {
                return Err(Skip::OtherServer);
            }
            // SELECTING and INIT-REBOOT name the address in option 50, RENEWING and REBINDING in ciaddr.
            let asked = request
                .requested_ip
                .or(nonzero(request.ciaddr))
                .ok_or(Skip::Malformed)?;
            if asked == lease.ip {
                Ok(reply(&request, ACK, lease.ip, server_ip, lease_options(&lease, true)))
            } else {
                let message = (56, b"requested address is not this client's".to_vec());
                Ok(reply(&request, NAK, Ipv4Addr::UNSPECIFIED, server_ip, vec![message]))
            }
        }
        // The configuration, without an address or lease times.
        INFORM => Ok(reply(
            &request,
            ACK,
            Ipv4Addr::UNSPECIFIED,
            server_ip,
            lease_options(&lease, false),
        )),
        DECLINE => Err(Skip::Decline {
            mac: request.mac,
            ip: request.requested_ip,
        }),
        RELEASE => Err(Skip::Release {
            mac: request.mac,
            ip: request.ciaddr,
        }),
        _ => Err(Skip::Unsupported),
    }
}

/// An OFFER, ACK or NAK with `options`, addressed as RFC 2131 §4.1 says for a server on the client's
/// segment or behind a relay.
fn reply(request: &Request<'_>, kind: u8, yiaddr: Ipv4Addr, server_ip: Ipv4Addr, options: Vec<(u8, Vec<u8>)>) -> Reply {
    // No relay sits on an instance bridge: a guest that fills in `giaddr` must not make the
    // server send to an address of its choosing, so such requests are answered on the segment.
    let to = if kind == NAK || request.ciaddr.is_unspecified() || !request.giaddr.is_unspecified() {
        Destination::Broadcast
    } else {
        Destination::Client(request.ciaddr)
    };
    Reply {
        kind,
        to,
        packet: build(request, kind, yiaddr, server_ip, &options),
    }
}

/// The configuration options of `lease` (with the lease times or without, for INFORM).
fn lease_options(lease: &Lease, with_times: bool) -> Vec<(u8, Vec<u8>)> {
    let mut options = Vec::new();
    if with_times {
        options.push((51, lease.lease_secs.to_be_bytes().to_vec()));
        if lease.lease_secs != u32::MAX {
            let secs = u64::from(lease.lease_secs);
            options.push((58, ((secs / 2) as u32).to_be_bytes().to_vec()));
            options.push((59, ((secs * 7 / 8) as u32).to_be_bytes().to_vec()));
        }
    }
    options.push((1, lease.mask().octets().to_vec()));
    options.push((28, lease.broadcast().octets().to_vec()));
    if let Some(router) = lease.router {
        options.push((3, router.octets().to_vec()));
    }
    if !lease.dns.is_empty() {
        options.push((6, lease.dns.iter().take(63).flat_map(|ip| ip.octets()).collect()));
    }
    for (code, text) in [(12, &lease.hostname), (15, &lease.domain_name)] {
        if let Some(text) = text.as_deref().filter(|t| !t.is_empty()) {
            options.push((code, text.as_bytes()[..text.len().min(255)].to_vec()));
        }
    }
    if let Some(mtu) = lease.mtu {
        options.push((26, mtu.to_be_bytes().to_vec()));
    }
    options
}

fn build(request: &Request<'_>, kind: u8, yiaddr: Ipv4Addr, server_ip: Ipv4Addr, options: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut packet = vec![0u8; HEADER_LEN];
    packet[..4].copy_from_slice(&[2, 1, 6, 0]);
    packet[4..8].copy_from_slice(request.xid);
    packet[10..12].copy_from_slice(request.flags);
    if kind != NAK {
        packet[12..16].copy_from_slice(&request.ciaddr.octets());
    }
    packet[16..20].copy_from_slice(&yiaddr.octets());
    packet[24..28].copy_from_slice(&request.giaddr.octets());
    packet[28..44].copy_from_slice(request.chaddr);
    packet[236..240].copy_from_slice(&MAGIC);
    packet.extend_from_slice(&[53, 1, kind, 54, 4]);
    packet.extend_from_slice(&server_ip.octets());
    let client_id = request.client_id.map(|id| (61, id.to_vec()));
    for (code, value) in options.iter().chain(client_id.as_ref()) {
        packet.push(*code);
        packet.push(value.len() as u8);
        packet.extend_from_slice(value);
    }
    packet.push(255);
    if packet.len() < MIN_REPLY_LEN {
        packet.resize(MIN_REPLY_LEN, 0);
    }
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decline_and_release_lines_are_rate_limited_per_mac_and_all_counted() {
        let leases = leases();
        let other = MacAddr([2, 0, 0, 0, 0, 6]);
        leases.insert(other, Lease::new(Ipv4Addr::new(10, 0, 0, 6), 24));
        let stats = DhcpStats::default();
        let mut logs = ServerLogs::default();
        let t0 = Instant::now();
        let decline = packet(MAC, DECLINE, Ipv4Addr::UNSPECIFIED, &[(50, &[10, 0, 0, 5])]);
        let release = packet(MAC, RELEASE, Ipv4Addr::new(10, 0, 0, 5), &[]);
        let mut lines = Vec::new();
        for i in 0..1000 {
            let datagram = if i % 2 == 0 { &decline } else { &release };
            let skip = respond(datagram, SERVER, &leases).unwrap_err();
            lines.extend(skip_log(&mut logs, &stats, "hbr1", &skip, t0));
        }
        assert_eq!((stats.declines(), stats.releases()), (500, 500));
        assert_eq!(lines.len(), crate::throttle::LOG_BURST as usize, "{lines:?}");
        assert_eq!(
            lines[0],
            "hearth-net: DHCP on hbr1: 02:00:00:00:00:05 declined 10.0.0.5 (the guest saw it in use)"
        );
        // Another guest's lines are not crowded out.
        let skip = respond(
            &packet(other, RELEASE, Ipv4Addr::new(10, 0, 0, 6), &[]),
            SERVER,
            &leases,
        )
        .unwrap_err();
        assert!(skip_log(&mut logs, &stats, "hbr1", &skip, t0).is_some());
        // Later, one line that says how many were left out.
        let later = t0 + crate::throttle::LOG_INTERVAL;
        let skip = respond(&decline, SERVER, &leases).unwrap_err();
        let line = skip_log(&mut logs, &stats, "hbr1", &skip, later).unwrap();
        assert!(line.ends_with("(990 similar lines suppressed)"), "{line}");
    }

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 5]);

    fn leases() -> Leases {
        let leases = Leases::new();
        leases.insert(
            MAC,
            Lease {
                router: Some(SERVER),
                dns: vec![Ipv4Addr::new(10, 0, 0, 2)],
                hostname: Some("web-1".into()),
                domain_name: Some("ec2.internal".into()),
                mtu: Some(1450),
                ..Lease::new(Ipv4Addr::new(10, 0, 0, 5), 24)
            },
        );
        leases
    }

    fn packet(mac: MacAddr, kind: u8, ciaddr: Ipv4Addr, options: &[(u8, &[u8])]) -> Vec<u8> {
        let mut p = vec![0u8; HEADER_LEN];
        p[..4].copy_from_slice(&[1, 1, 6, 0]);
        p[4..8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        p[12..16].copy_from_slice(&ciaddr.octets());
        p[28..34].copy_from_slice(&mac.0);
        p[236..240].copy_from_slice(&MAGIC);
        p.extend_from_slice(&[53, 1, kind]);
        for (code, value) in options {
            p.push(*code);
            p.push(value.len() as u8);
            p.extend_from_slice(value);
        }
        p.push(255);
        p
    }

    /// The options of a reply, by code.
    fn options(reply: &[u8]) -> HashMap<u8, Vec<u8>> {
        let mut found = HashMap::new();
        let mut rest = &reply[HEADER_LEN..];
        while let [code, len, tail @ ..] = rest {
            if *code == 255 {
                break;
            }
            found.insert(*code, tail[..usize::from(*len)].to_vec());
            rest = &tail[usize::from(*len)..];
        }
        found
    }

    #[test]
    fn discover_gets_an_offer_with_the_whole_configuration() {
        let reply = respond(&packet(MAC, DISCOVER, Ipv4Addr::UNSPECIFIED, &[]), SERVER, &leases()).unwrap();
        assert_eq!(reply.kind, OFFER);
        assert_eq!(reply.to, Destination::Broadcast);
        let p = &reply.packet;
        assert_eq!(p[0], 2);
        assert_eq!(&p[4..8], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&p[16..20], &[10, 0, 0, 5]);
        assert_eq!(&p[28..34], &MAC.0);
        assert!(p.len() >= MIN_REPLY_LEN);
        let o = options(p);
        assert_eq!(o[&53], [OFFER]);
        assert_eq!(o[&54], [10, 0, 0, 1]);
        assert_eq!(o[&51], 3600u32.to_be_bytes());
        assert_eq!(o[&58], 1800u32.to_be_bytes());
        assert_eq!(o[&59], 3150u32.to_be_bytes());
        assert_eq!(o[&1], [255, 255, 255, 0]);
        assert_eq!(o[&28], [10, 0, 0, 255]);
        assert_eq!(o[&3], [10, 0, 0, 1]);
        assert_eq!(o[&6], [10, 0, 0, 2]);
        assert_eq!(o[&12], b"web-1");
        assert_eq!(o[&15], b"ec2.internal");
        assert_eq!(o[&26], 1450u16.to_be_bytes());
    }

    #[test]
    fn requests_are_acked_or_refused_by_state() {
        let leases = leases();
        let zero = Ipv4Addr::UNSPECIFIED;
        let ours: &[u8] = &[10, 0, 0, 5];
        let other: &[u8] = &[10, 0, 0, 9];
        let server: &[u8] = &[10, 0, 0, 1];
        let another_server: &[u8] = &[10, 0, 0, 254];
        // SELECTING.
        let ack = respond(
            &packet(MAC, REQUEST, zero, &[(54, server), (50, ours)]),
            SERVER,
            &leases,
        )
        .unwrap();
        assert_eq!((ack.kind, ack.to), (ACK, Destination::Broadcast));
        assert_eq!(&ack.packet[16..20], ours);
        let nak = respond(
            &packet(MAC, REQUEST, zero, &[(54, server), (50, other)]),
            SERVER,
            &leases,
        )
        .unwrap();
        assert_eq!((nak.kind, nak.to), (NAK, Destination::Broadcast));
        assert_eq!(&nak.packet[16..20], &[0; 4]);
        assert!(!options(&nak.packet).contains_key(&51));
        assert_eq!(
            respond(
                &packet(MAC, REQUEST, zero, &[(54, another_server), (50, ours)]),
                SERVER,
                &leases
            )
            .unwrap_err(),
            Skip::OtherServer
        );
        // INIT-REBOOT.
        assert_eq!(
            respond(&packet(MAC, REQUEST, zero, &[(50, ours)]), SERVER, &leases)
                .unwrap()
                .kind,
            ACK
        );
        assert_eq!(
            respond(&packet(MAC, REQUEST, zero, &[(50, other)]), SERVER, &leases)
                .unwrap()
                .kind,
            NAK
        );
        // RENEWING: unicast to ciaddr, which the ACK keeps.
        let renew = respond(&packet(MAC, REQUEST, Ipv4Addr::new(10, 0, 0, 5), &[]), SERVER, &leases).unwrap();
        assert_eq!(
            (renew.kind, renew.to),
            (ACK, Destination::Client(Ipv4Addr::new(10, 0, 0, 5)))
        );
        assert_eq!(&renew.packet[12..16], ours);
        let wrong = respond(&packet(MAC, REQUEST, Ipv4Addr::new(10, 0, 0, 9), &[]), SERVER, &leases).unwrap();
        assert_eq!((wrong.kind, wrong.to), (NAK, Destination::Broadcast));
        // Neither a requested address nor ciaddr.
        assert_eq!(
            respond(&packet(MAC, REQUEST, zero, &[]), SERVER, &leases).unwrap_err(),
            Skip::Malformed
        );
    }

    #[test]
    fn inform_release_decline_and_strangers() {
        let leases = leases();
        let inform = respond(&packet(MAC, INFORM, Ipv4Addr::new(10, 0, 0, 5), &[]), SERVER, &leases).unwrap();
        assert_eq!(
            (inform.kind, inform.to),
            (ACK, Destination::Client(Ipv4Addr::new(10, 0, 0, 5)))
        );
        assert_eq!(&inform.packet[16..20], &[0; 4]);
        let o = options(&inform.packet);
        assert!(!o.contains_key(&51) && !o.contains_key(&58) && !o.contains_key(&59));
        assert_eq!(o[&3], [10, 0, 0, 1]);

        let release = respond(&packet(MAC, RELEASE, Ipv4Addr::new(10, 0, 0, 5), &[]), SERVER, &leases);
        assert!(matches!(release, Err(Skip::Release { .. })));
        let decline = respond(
            &packet(MAC, DECLINE, Ipv4Addr::UNSPECIFIED, &[(50, &[10, 0, 0, 5])]),
            SERVER,
            &leases,
        );
        assert!(matches!(decline, Err(Skip::Decline { ip: Some(_), .. })));

        let stranger = MacAddr([2, 0, 0, 0, 0, 6]);
        let unknown = respond(&packet(stranger, DISCOVER, Ipv4Addr::UNSPECIFIED, &[]), SERVER, &leases);
        assert_eq!(unknown.unwrap_err(), Skip::UnknownClient);

        // The client identifier is echoed; a "relayed" request (no relay sits on an instance
        // bridge: a guest's forgery) is answered by broadcast on the segment, not to giaddr.
        let mut relayed = packet(MAC, DISCOVER, Ipv4Addr::UNSPECIFIED, &[(61, &[1, 2, 0, 0, 0, 0, 5])]);
        relayed[24..28].copy_from_slice(&[192, 0, 2, 1]);
        let offer = respond(&relayed, SERVER, &leases).unwrap();
        assert_eq!(offer.to, Destination::Broadcast);
        assert_eq!(options(&offer.packet)[&61], [1, 2, 0, 0, 0, 0, 5]);
    }

    #[test]
    fn lease_table_changes_apply_to_the_next_message() {
        let leases = leases();
        let discover = packet(MAC, DISCOVER, Ipv4Addr::UNSPECIFIED, &[]);
        leases.insert(MAC, Lease::new(Ipv4Addr::new(10, 0, 0, 77), 16));
        let offer = respond(&discover, SERVER, &leases).unwrap();
        assert_eq!(&offer.packet[16..20], &[10, 0, 0, 77]);
        assert_eq!(options(&offer.packet)[&1], [255, 255, 0, 0]);
        leases.set(HashMap::new());
        assert_eq!(respond(&discover, SERVER, &leases).unwrap_err(), Skip::UnknownClient);
    }

    #[test]
    fn masks_and_broadcasts_at_the_edges() {
        let lease = |prefix| Lease::new(Ipv4Addr::new(10, 1, 2, 3), prefix);
        assert_eq!(lease(0).mask(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(lease(0).broadcast(), Ipv4Addr::BROADCAST);
        assert_eq!(lease(32).mask(), Ipv4Addr::BROADCAST);
        assert_eq!(lease(32).broadcast(), Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(lease(40).mask(), Ipv4Addr::BROADCAST);
        assert_eq!(lease(20).broadcast(), Ipv4Addr::new(10, 1, 15, 255));
    }

    #[test]
    fn malformed_packets_are_dropped() {
        let leases = leases();
        let good = packet(MAC, DISCOVER, Ipv4Addr::UNSPECIFIED, &[]);
        assert!(respond(&good, SERVER, &leases).is_ok());
        let mut no_type = good.clone();
        no_type.truncate(HEADER_LEN);
        let mut bad_magic = good.clone();
        bad_magic[236] = 0;
        let mut reply_op = good.clone();
        reply_op[0] = 2;
        let mut overrun = good[..HEADER_LEN].to_vec();
        overrun.extend_from_slice(&[53, 1, DISCOVER, 12, 200, b'x']);
        let mut dangling = good[..HEADER_LEN].to_vec();
        dangling.extend_from_slice(&[53, 1, DISCOVER, 50]);
        let mut short_ip = good[..HEADER_LEN].to_vec();
        short_ip.extend_from_slice(&[53, 1, REQUEST, 50, 3, 10, 0, 0, 255]);
        for p in [
            &good[..100],
            &no_type[..],
            &bad_magic,
            &reply_op,
            &overrun,
            &dangling,
            &short_ip,
        ] {
            assert_eq!(respond(p, SERVER, &leases).unwrap_err(), Skip::Malformed, "{p:?}");
        }
    }

    /// Random and randomly mutated packets never make the parser panic.
    #[test]
    fn random_packets_never_panic() {
        let leases = leases();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds = [
            packet(
                MAC,
                DISCOVER,
                Ipv4Addr::UNSPECIFIED,
                &[(55, &[1, 3, 6, 12, 15, 26, 28])],
            ),
            packet(
                MAC,
                REQUEST,
                Ipv4Addr::UNSPECIFIED,
                &[(54, &[10, 0, 0, 1]), (50, &[10, 0, 0, 5])],
            ),
            packet(MAC, INFORM, Ipv4Addr::new(10, 0, 0, 5), &[(61, &[1, 2, 0, 0, 0, 0, 5])]),
        ];
        let mut answered = 0;
        for round in 0..100_000 {
            let packet: Vec<u8> = if round % 4 == 0 {
                let len = (next() % 600) as usize;
                (0..len).map(|_| next() as u8).collect()
            } else {
                let mut p = seeds[round % seeds.len()].clone();
                for _ in 0..(next() % 8) {
                    let at = (next() as usize) % p.len();
                    match next() % 3 {
                        0 => p[at] = next() as u8,
                        1 => p.truncate(at.max(1)),
                        _ => p.insert(at, next() as u8),
                    }
                }
                p
            };
            if respond(&packet, SERVER, &leases).is_ok() {
                answered += 1;
            }
        }
        // Mutations that spare the fields that matter still get answers: the parser is not just
        // rejecting everything.
        assert!(answered > 1000, "{answered}");
    }
}
