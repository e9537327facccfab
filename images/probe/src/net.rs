//! virtio-net: the MAC announcement and `net-echo`, a tiny IPv4 host on net device 0.
//!
//! Its address is static (`probe.ip=`) or leased by DHCP (`dhcp.rs`). It answers ARP for
//! that address, ICMP echo requests and UDP datagrams to it (echoed, unless they are the
//! commands of `command.rs`), and it sends IPv4 anywhere: on-link destinations directly,
//! others through the router, the next hop resolved by ARP.
//!
//! Frames are handled in place in the receive buffer, which goes back to the device only
//! afterwards; a command that waits for an answer (see [`Net::wait`]) keeps its frame's
//! buffer meanwhile and receives into the others. Transmits are synchronous from one
//! buffer, so a packet is always built right before it is sent: any wait may send replies
//! (ARP, echo) from the same buffer.

use crate::cmdline;
use crate::time::Deadline;
use crate::uart::{Dec, Ip, Mac};
use crate::virtio::{Buf, Device, WAIT_POLLS};
use crate::{command, dhcp, io, tcp, time, Global};

const RX: usize = 0;
const TX: usize = 1;
/// `virtio_net_hdr_v1` (VIRTIO_F_VERSION_1): 12 bytes before every frame, zero on transmit.
const HDR: usize = 12;
/// Receive buffer size: header plus a full 1514-byte frame fits (no merged buffers).
const BUF: usize = 2048;
const RX_BUFS: usize = 16;

pub const ETH_ARP: u16 = 0x0806;
pub const ETH_IPV4: u16 = 0x0800;
pub const IP_ICMP: u8 = 1;
pub const IP_TCP: u8 = 6;
pub const IP_UDP: u8 = 17;
const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
/// ARP for Ethernet/IPv4: htype 1, ptype 0x0800, hlen 6, plen 4; then the operation.
const ARP_ETH_IPV4: [u8; 6] = [0, 1, 8, 0, 6, 4];
const ARP_REQUEST: [u8; 2] = [0, 1];
const ARP_REPLY: [u8; 2] = [0, 2];

/// Ethernet header length; the IPv4 header follows.
pub const ETH_LEN: usize = 14;
/// Where the layer-4 header starts in frames the probe builds (IPv4 without options).
pub const L4: usize = ETH_LEN + 20;
/// Largest UDP payload in one 1500-byte IPv4 packet.
pub const UDP_MAX: usize = 1472;
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];
pub const BROADCAST_IP: [u8; 4] = [255; 4];
/// No address yet (before the DHCP lease).
pub const UNSET: [u8; 4] = [0; 4];
/// Prefix length of a `probe.ip=` without `/<len>`.
const DEFAULT_PREFIX: u8 = 24;

/// Neighbours remembered (replaced round robin).
const ARP_SLOTS: usize = 8;
/// ARP requests per resolution, and how long each waits for the reply.
const ARP_TRIES: u32 = 3;
const ARP_WAIT_MS: u64 = 300;

// Packet/bulk data: never read before written, so _start need not clear it.
#[link_section = ".noclear"]
static RX_MEM: Global<[[u8; BUF]; RX_BUFS]> = Global::new([[0; BUF]; RX_BUFS]);
// Packet/bulk data: never read before written, so _start need not clear it.
#[link_section = ".noclear"]
static TX_MEM: Global<[u8; BUF]> = Global::new([0; BUF]);

/// Prints `probe: net <k> mac=..`.
pub fn announce(nic: &Device, k: usize) {
    say!("net ", Dec(k as u64), " mac=", Mac(nic.mac));
}

/// The probe's IPv4 configuration.
#[derive(Clone, Copy)]
pub struct Config {
    pub ip: [u8; 4],
    pub prefix: u8,
    pub router: Option<[u8; 4]>,
}

/// The static configuration from `probe.ip=<a.b.c.d>[/<len>]` and `probe.router=<a.b.c.d>`:
/// `Ok(None)` without `probe.ip=` (DHCP), `Err(argument)` when one does not parse.
pub fn static_config(line: &[u8]) -> Result<Option<Config>, &[u8]> {
    let Some(arg) = cmdline::value(line, b"probe.ip") else {
        return Ok(None);
    };
    let (ip, prefix) = match cmdline::split_once(arg, b'/') {
        Some((ip, len)) => (ip, cmdline::parse_u64(len).filter(|&l| l <= 32).ok_or(arg)? as u8),
        None => (arg, DEFAULT_PREFIX),
    };
    let router = match cmdline::value(line, b"probe.router") {
        Some(router) => Some(cmdline::parse_ip(router).ok_or(router)?),
        None => None,
    };
    Ok(Some(Config {
        ip: cmdline::parse_ip(ip).ok_or(arg)?,
        prefix,
        router,
    }))
}

/// The `net-echo` op: configures the address (`config`, else DHCP), then answers ARP,
/// ICMP echo, UDP echo and UDP commands until the power button. Returns only when DHCP
/// fails.
pub fn echo(nic: &mut Device, config: Option<Config>) {
    let mut net = Net::new(nic);
    let config = match config {
        Some(config) => config,
        None => match dhcp::lease(&mut net) {
            Some(config) => config,
            None => {
                say!("dhcp failed");
                return;
            }
        },
    };
    net.configure(config);
    say!("net-echo ready ip=", Ip(net.ip));
    loop {
        if let Some((id, frame)) = net.receive() {
            let handled = match parse_udp(frame) {
                Some(udp) if udp.ip.dst == net.ip => command::run(&mut net, &udp),
                _ => false,
            };
            if !handled {
                net.background(frame);
            }
            net.release(id);
        }
        if io::power_button_pressed() {
            say!("power button");
            io::poweroff();
        }
    }
}

/// Net device 0 as an IPv4 host.
pub struct Net<'a> {
    nic: &'a mut Device,
    pub mac: [u8; 6],
    /// Our address; [`UNSET`] until configured.
    pub ip: [u8; 4],
    pub prefix: u8,
    pub router: Option<[u8; 4]>,
    /// Receive buffers posted (≤ `RX_BUFS`).
    buffers: usize,
    arp: [([u8; 4], [u8; 6]); ARP_SLOTS],
    arp_next: usize,
    /// IPv4 identification of the next packet sent.
    ip_id: u16,
    /// Local port of the `http` command's TCP connection (0: none): [`Net::background`]
    /// does not answer its segments with RST.
    pub tcp_client_port: u16,
}

impl<'a> Net<'a> {
    /// Posts the receive buffers and calibrates the clock the timeouts use.
    pub fn new(nic: &'a mut Device) -> Self {
        let buffers = usize::from(nic.queue_size(RX)).min(RX_BUFS);
        for i in 0..buffers {
            let addr = RX_MEM.addr() + (i * BUF) as u64;
            nic.set_desc(RX, i as u16, Buf::writable(addr, BUF as u32));
            nic.post(RX, i as u16, false);
        }
        nic.notify(RX);
        time::ticks_per_ms();
        Net {
            mac: nic.mac,
            nic,
            ip: UNSET,
            prefix: 32,
            router: None,
            buffers,
            arp: [(UNSET, [0; 6]); ARP_SLOTS],
            arp_next: 0,
            ip_id: time::tsc() as u16,
            tcp_client_port: 0,
        }
    }

    /// Takes address, prefix and router.
    pub fn configure(&mut self, config: Config) {
        self.ip = config.ip;
        self.prefix = config.prefix;
        self.router = config.router;
    }

    /// The next received frame (without virtio header) and its buffer, which the device
    /// gets back only with [`Net::release`].
    fn receive(&mut self) -> Option<(u16, &'static [u8])> {
        while let Some((id, len)) = self.nic.pop_used(RX) {
            let i = id as usize;
            if i >= self.buffers {
                continue;
            }
            // SAFETY: the device returned buffer `i` (< RX_BUFS, so the mask changes
            // nothing) and writes it again only after `release` posts it anew; the other
            // buffers are separate arrays.
            let rx = unsafe { &*RX_MEM.get().cast::<[u8; BUF]>().add(i & (RX_BUFS - 1)) };
            let frame = rx.get(HDR..(len as usize).min(BUF)).unwrap_or(&[]);
            if self.for_us(frame) {
                return Some((id as u16, frame));
            }
            self.release(id as u16);
        }
        None
    }

    /// Whether a NIC would take `frame`: to our MAC, broadcast or multicast (a bridge
    /// floods unicast for others to every port).
    fn for_us(&self, frame: &[u8]) -> bool {
        let dst = arr6(frame, 0);
        frame.len() >= ETH_LEN && (dst == self.mac || dst[0] & 1 != 0)
    }

    /// Gives a receive buffer back to the device.
    fn release(&mut self, id: u16) {
        self.nic.post(RX, id, true);
    }

    /// The transmit buffer after the virtio header: build a frame here, then `transmit`.
    pub fn frame(&mut self) -> &mut [u8] {
        // SAFETY: transmits wait for their completion, so the device is not reading
        // `TX_MEM` now, and the `&mut self` borrow keeps this the only reference.
        let tx = unsafe { &mut *TX_MEM.get() };
        tx.get_mut(HDR..).unwrap_or(&mut [])
    }

    /// Sends the first `len` bytes of [`Net::frame`]; false if the device did not take it.
    pub fn transmit(&mut self, len: usize) -> bool {
        // SAFETY: as in `frame`; no reference from `frame` outlives its `&mut self` borrow.
        let tx = unsafe { &mut *TX_MEM.get() };
        tx[..HDR].fill(0);
        let buf = Buf::readable(TX_MEM.addr(), (HDR + len.min(BUF - HDR)) as u32);
        self.nic.transfer(TX, &[buf], WAIT_POLLS).is_some()
    }

    /// Identification for the next IPv4 packet.
    pub fn next_ip_id(&mut self) -> u16 {
        self.ip_id = self.ip_id.wrapping_add(1);
        self.ip_id
    }

    /// Receives frames for up to `ms` milliseconds until `want` returns something. Every
    /// frame `want` does not take gets the usual answers ([`Net::background`]), and ARP is
    /// handled before `want` sees it (so the cache is up to date). UDP commands that
    /// arrive meanwhile are answered `busy`.
    pub fn wait<T>(&mut self, ms: u64, mut want: impl FnMut(&mut Self, &[u8]) -> Option<T>) -> Option<T> {
        let deadline = Deadline::after_ms(ms);
        loop {
            if let Some((id, frame)) = self.receive() {
                let arp = be16(frame, 12) == ETH_ARP;
                if arp {
                    self.background(frame);
                }
                let got = want(self, frame);
                if got.is_none() && !arp {
                    self.background(frame);
                }
                self.release(id);
                if got.is_some() {
                    return got;
                }
            }
            if deadline.passed() {
                return None;
            }
        }
    }

    /// What the probe answers whatever else it is doing (nothing before it has an address):
    /// ARP requests for its address (and it learns the asker), ARP replies to it (learned),
    /// ICMP echo requests to it, TCP segments to it (RST: no port is open), UDP datagrams
    /// to it (echoed; commands, which arrive only while another one runs, get `busy`).
    fn background(&mut self, frame: &[u8]) {
        if self.ip == UNSET {
            return;
        }
        match be16(frame, 12) {
            ETH_ARP => self.on_arp(frame),
            ETH_IPV4 => {
                let Some(ip) = parse_ipv4(frame) else { return };
                if ip.dst != self.ip {
                    return;
                }
                match ip.proto {
                    IP_ICMP if ip.body.first() == Some(&ICMP_ECHO_REQUEST) => self.echo_icmp(frame, &ip),
                    IP_TCP => tcp::refuse(self, &ip),
                    IP_UDP => {
                        let Some(udp) = parse_udp(frame) else { return };
                        if command::is_command(udp.payload) {
                            command::busy(self, &udp);
                        } else if self.reply(&Peer::of(&udp), udp.payload) {
                            say!("udp echo ", Dec(udp.payload.len() as u64), " bytes");
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// ARP to our address: learns the sender; answers requests.
    fn on_arp(&mut self, rx: &[u8]) {
        if !has(rx, 14, &ARP_ETH_IPV4) || !has(rx, 38, &self.ip) {
            return;
        }
        let (sender_mac, sender_ip) = (arr6(rx, 22), arr4(rx, 28));
        if sender_ip != UNSET {
            self.learn(sender_ip, sender_mac);
        }
        if !has(rx, 20, &ARP_REQUEST) {
            return;
        }
        let (mac, ip) = (self.mac, self.ip);
        let t = self.frame();
        eth(t, sender_mac, mac, ETH_ARP);
        put(t, 14, &ARP_ETH_IPV4);
        put(t, 20, &ARP_REPLY);
        put(t, 22, &mac);
        put(t, 28, &ip);
        put(t, 32, part(rx, 22, 10)); // target = the asker's MAC and IP
        self.transmit(42);
    }

    /// Answers an ICMP echo request: the same packet with addresses swapped and type 0.
    fn echo_icmp(&mut self, rx: &[u8], ip: &Ipv4) {
        let end = ETH_LEN + ip.total;
        let l4 = end - ip.body.len();
        let mac = self.mac;
        let to = self.reply_mac(ip.src, ip.src_mac);
        let t = self.frame();
        put(t, 0, part(rx, 0, end));
        eth(t, to, mac, ETH_IPV4);
        put(t, 22, &[64]); // TTL
        put(t, 26, &ip.dst);
        put(t, 30, &ip.src);
        put(t, 24, &[0, 0]);
        let sum = checksum(part(t, ETH_LEN, l4 - ETH_LEN), 0);
        put(t, 24, &sum.to_be_bytes());
        put(t, l4, &[ICMP_ECHO_REPLY]);
        put(t, l4 + 2, &[0, 0]);
        let sum = checksum(part(t, l4, end - l4), 0);
        put(t, l4 + 2, &sum.to_be_bytes());
        self.transmit(end);
    }

    /// Remembers `ip` at `mac`, replacing the oldest entry if `ip` is new.
    fn learn(&mut self, ip: [u8; 4], mac: [u8; 6]) {
        if let Some(entry) = self.arp.iter_mut().find(|(known, _)| *known == ip) {
            entry.1 = mac;
            return;
        }
        if let Some(entry) = self.arp.get_mut(self.arp_next % ARP_SLOTS) {
            *entry = (ip, mac);
        }
        self.arp_next = (self.arp_next + 1) % ARP_SLOTS;
    }

    /// The cached MAC of `ip`.
    fn cached(&self, ip: [u8; 4]) -> Option<[u8; 6]> {
        self.arp
            .iter()
            .find(|(known, _)| *known == ip && ip != UNSET)
            .map(|&(_, mac)| mac)
    }

    /// Whether `dst` is in our subnet.
    fn on_link(&self, dst: [u8; 4]) -> bool {
        (u32::from_be_bytes(dst) ^ u32::from_be_bytes(self.ip)) & mask(self.prefix) == 0
    }

    /// Where a packet to `dst` goes first: `dst` itself when on-link (or when there is no
    /// router to ask), else the router.
    fn next_hop(&self, dst: [u8; 4]) -> [u8; 4] {
        match self.router {
            Some(router) if !self.on_link(dst) && dst != BROADCAST_IP => router,
            _ => dst,
        }
    }

    /// Whether `dst` is the limited broadcast or our subnet's broadcast address.
    fn is_broadcast(&self, dst: [u8; 4]) -> bool {
        let host = !mask(self.prefix);
        dst == BROADCAST_IP || (self.prefix < 31 && self.on_link(dst) && u32::from_be_bytes(dst) & host == host)
    }

    /// The MAC to send packets for `dst` to: broadcast, cached, or asked for by ARP (a few
    /// tries). Prints `probe: arp timeout <next hop>` when nobody answers.
    pub fn resolve(&mut self, dst: [u8; 4]) -> Option<[u8; 6]> {
        if self.is_broadcast(dst) {
            return Some(BROADCAST_MAC);
        }
        let hop = self.next_hop(dst);
        for _ in 0..ARP_TRIES {
            if let Some(mac) = self.cached(hop) {
                return Some(mac);
            }
            self.send_arp_request(hop);
            if let Some(mac) = self.wait(ARP_WAIT_MS, |net, _| net.cached(hop)) {
                return Some(mac);
            }
        }
        say!("arp timeout ", Ip(hop));
        None
    }

    /// Broadcasts "who has `ip`?".
    fn send_arp_request(&mut self, ip: [u8; 4]) {
        let (mac, our_ip) = (self.mac, self.ip);
        let t = self.frame();
        eth(t, BROADCAST_MAC, mac, ETH_ARP);
        put(t, 14, &ARP_ETH_IPV4);
        put(t, 20, &ARP_REQUEST);
        put(t, 22, &mac);
        put(t, 28, &our_ip);
        put(t, 32, &[0; 6]);
        put(t, 38, &ip);
        self.transmit(42);
    }

    /// Sends a UDP datagram exactly as given: Ethernet `eth_src` → `eth_dst`, IPv4
    /// `src` → `dst`, with a correct UDP checksum. The payload is cut at [`UDP_MAX`].
    pub fn send_udp_raw(
        &mut self,
        eth_src: [u8; 6],
        eth_dst: [u8; 6],
        src: [u8; 4],
        dst: [u8; 4],
        ports: (u16, u16),
        payload: &[u8],
    ) -> bool {
        let payload = payload.get(..UDP_MAX).unwrap_or(payload);
        let udp_len = 8 + payload.len();
        let id = self.next_ip_id();
        let t = self.frame();
        eth(t, eth_dst, eth_src, ETH_IPV4);
        ipv4(t, src, dst, IP_UDP, udp_len, id);
        put(t, L4, &ports.0.to_be_bytes());
        put(t, L4 + 2, &ports.1.to_be_bytes());
        put(t, L4 + 4, &(udp_len as u16).to_be_bytes());
        put(t, L4 + 6, &[0, 0]);
        put(t, L4 + 8, payload);
        let sum = match l4_checksum(t, src, dst, IP_UDP, udp_len) {
            0 => 0xffff, // 0 would mean "no checksum"
            sum => sum,
        };
        put(t, L4 + 6, &sum.to_be_bytes());
        self.transmit(L4 + udp_len)
    }

    /// Sends UDP from our address to `dst` (routed, next hop resolved by ARP); false if
    /// the next hop does not answer ARP or the device did not take the frame.
    pub fn send_udp(&mut self, dst: [u8; 4], ports: (u16, u16), payload: &[u8]) -> bool {
        let Some(mac) = self.resolve(dst) else { return false };
        self.send_udp_raw(self.mac, mac, self.ip, dst, ports, payload)
    }

    /// Sends `payload` back to the sender of a datagram, from the port it was sent to.
    pub fn reply(&mut self, to: &Peer, payload: &[u8]) -> bool {
        let mac = self.reply_mac(to.ip, to.mac);
        self.send_udp_raw(self.mac, mac, self.ip, to.ip, (to.our_port, to.port), payload)
    }

    /// Where a reply to `ip` goes: the sender's MAC when it is on-link (or there is no router),
    /// else the router's, as a real IP stack routes it (a routed packet's source MAC is the
    /// last router's, which need not be the way back).
    /// Never waits (it runs while other frames are being handled): with the router's MAC not
    /// cached yet, it asks for it and this reply goes to the sender's MAC.
    fn reply_mac(&mut self, ip: [u8; 4], sender_mac: [u8; 6]) -> [u8; 6] {
        let Some(router) = self.router.filter(|_| !self.on_link(ip)) else {
            return sender_mac;
        };
        match self.cached(router) {
            Some(mac) => mac,
            None => {
                self.send_arp_request(router);
                sender_mac
            }
        }
    }
}

/// The sender of a UDP datagram to us, and the port it went to.
#[derive(Clone, Copy)]
pub struct Peer {
    pub mac: [u8; 6],
    pub ip: [u8; 4],
    pub port: u16,
    pub our_port: u16,
}

impl Peer {
    pub fn of(udp: &Udp) -> Self {
        Peer {
            mac: udp.ip.src_mac,
            ip: udp.ip.src,
            port: udp.src_port,
            our_port: udp.dst_port,
        }
    }
}

/// A received IPv4 packet (not a fragment, checked lengths).
pub struct Ipv4<'f> {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    /// Total length from the IPv4 header.
    pub total: usize,
    /// The layer-4 bytes (header and payload), up to the total length.
    pub body: &'f [u8],
}

/// Parses an Ethernet frame holding an unfragmented IPv4 packet.
pub fn parse_ipv4(rx: &[u8]) -> Option<Ipv4<'_>> {
    if be16(rx, 12) != ETH_IPV4 {
        return None;
    }
    let version_ihl = *rx.get(ETH_LEN)?;
    let ihl = usize::from(version_ihl & 0xf) * 4;
    let total = usize::from(be16(rx, 16));
    let fragment = be16(rx, 20) & 0x3fff != 0;
    if version_ihl >> 4 != 4 || ihl < 20 || total < ihl || ETH_LEN + total > rx.len() || fragment {
        return None;
    }
    Some(Ipv4 {
        src_mac: arr6(rx, 6),
        dst_mac: arr6(rx, 0),
        src: arr4(rx, 26),
        dst: arr4(rx, 30),
        proto: *rx.get(23)?,
        total,
        body: rx.get(ETH_LEN + ihl..ETH_LEN + total)?,
    })
}

/// A received UDP datagram.
pub struct Udp<'f> {
    pub ip: Ipv4<'f>,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'f [u8],
}

/// Parses an Ethernet frame holding a UDP datagram.
pub fn parse_udp(rx: &[u8]) -> Option<Udp<'_>> {
    let ip = parse_ipv4(rx)?;
    if ip.proto != IP_UDP {
        return None;
    }
    let len = usize::from(be16(ip.body, 4));
    let payload = ip.body.get(8..len.max(8))?;
    Some(Udp {
        src_port: be16(ip.body, 0),
        dst_port: be16(ip.body, 2),
        payload,
        ip,
    })
}

/// Writes the Ethernet header.
pub fn eth(t: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    put(t, 0, &dst);
    put(t, 6, &src);
    put(t, 12, &ethertype.to_be_bytes());
}

/// Writes a 20-byte IPv4 header (TTL 64, don't fragment) for `l4_len` bytes of `proto`.
pub fn ipv4(t: &mut [u8], src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: usize, id: u16) {
    put(t, ETH_LEN, &[0x45, 0]);
    put(t, 16, &((20 + l4_len) as u16).to_be_bytes());
    put(t, 18, &id.to_be_bytes());
    put(t, 20, &[0x40, 0, 64, proto, 0, 0]);
    put(t, 26, &src);
    put(t, 30, &dst);
    let sum = checksum(part(t, ETH_LEN, 20), 0);
    put(t, 24, &sum.to_be_bytes());
}

/// The TCP/UDP checksum of the `len` bytes at [`L4`] (checksum field zeroed beforehand),
/// with the pseudo header.
pub fn l4_checksum(t: &[u8], src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u16 {
    let mut pseudo = [0u8; 12];
    put(&mut pseudo, 0, &src);
    put(&mut pseudo, 4, &dst);
    put(&mut pseudo, 9, &[proto]);
    put(&mut pseudo, 10, &(len as u16).to_be_bytes());
    checksum(part(t, L4, len), !checksum(&pseudo, 0))
}

/// The mask of a prefix length, as a host-order u32.
fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// Prefix length of a subnet mask (its leading ones).
pub fn prefix_of(mask: [u8; 4]) -> u8 {
    u32::from_be_bytes(mask).leading_ones() as u8
}

/// Big-endian u16 at `offset` (0 past the end).
pub fn be16(s: &[u8], offset: usize) -> u16 {
    match s.get(offset..offset + 2) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    }
}

/// Big-endian u32 at `offset` (0 past the end).
pub fn be32(s: &[u8], offset: usize) -> u32 {
    u32::from(be16(s, offset)) << 16 | u32::from(be16(s, offset + 2))
}

/// Four bytes at `offset` (zeros past the end).
pub fn arr4(s: &[u8], offset: usize) -> [u8; 4] {
    let mut a = [0; 4];
    put(&mut a, 0, part(s, offset, 4));
    a
}

/// Six bytes at `offset` (zeros past the end).
pub fn arr6(s: &[u8], offset: usize) -> [u8; 6] {
    let mut a = [0; 6];
    put(&mut a, 0, part(s, offset, 6));
    a
}

/// `len` bytes at `offset` (empty past the end).
pub fn part(s: &[u8], offset: usize, len: usize) -> &[u8] {
    s.get(offset..offset + len).unwrap_or(&[])
}

/// Whether `s` holds `want` at `offset`.
pub fn has(s: &[u8], offset: usize, want: &[u8]) -> bool {
    s.get(offset..offset + want.len()) == Some(want)
}

/// Copies `src` to `offset` of `dst`, as far as it fits.
pub fn put(dst: &mut [u8], offset: usize, src: &[u8]) {
    if let Some(dst) = dst.get_mut(offset..) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s;
        }
    }
}

/// The Internet checksum (RFC 1071) of `data`, continuing from `start` (the one's
/// complement sum of earlier parts, i.e. `!checksum(earlier)`; 0 for none).
pub fn checksum(data: &[u8], start: u16) -> u16 {
    let mut words = data.chunks_exact(2);
    let mut sum = u32::from(start);
    for word in &mut words {
        if let &[a, b] = word {
            sum += u32::from(u16::from_be_bytes([a, b]));
        }
    }
    if let &[last] = words.remainder() {
        sum += u32::from(last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
