//! virtio-net: the MAC announcement and the `net-echo` responder (ARP, ICMP echo, UDP echo).

use crate::io;
use crate::uart::{Dec, Ip, Mac};
use crate::virtio::{Buf, Device, WAIT_POLLS};
use crate::Global;

const RX: usize = 0;
const TX: usize = 1;
/// `virtio_net_hdr_v1` (VIRTIO_F_VERSION_1): 12 bytes before every frame, zero on transmit.
const HDR: usize = 12;
/// Receive buffer size: header plus a full 1514-byte frame fits (no merged buffers).
const BUF: usize = 2048;
const RX_BUFS: usize = 16;

const ETH_ARP: u16 = 0x0806;
const ETH_IPV4: u16 = 0x0800;
const IP_ICMP: u8 = 1;
const IP_UDP: u8 = 17;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
/// ARP for Ethernet/IPv4: htype 1, ptype 0x0800, hlen 6, plen 4; then the operation.
const ARP_ETH_IPV4: [u8; 6] = [0, 1, 8, 0, 6, 4];
const ARP_REQUEST: [u8; 2] = [0, 1];
const ARP_REPLY: [u8; 2] = [0, 2];

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

/// The `net-echo` op: answers ARP, ICMP echo and UDP for `ip` until the power button.
pub fn echo(nic: &mut Device, ip: [u8; 4]) -> ! {
    say!("net-echo ready ip=", Ip(ip));
    let buffers = usize::from(nic.queue_size(RX)).min(RX_BUFS);
    for i in 0..buffers {
        let addr = RX_MEM.addr() + (i * BUF) as u64;
        nic.set_desc(RX, i as u16, Buf::writable(addr, BUF as u32));
        nic.post(RX, i as u16, false);
    }
    nic.notify(RX);
    loop {
        while let Some((id, len)) = nic.pop_used(RX) {
            let i = id as usize;
            if i >= buffers {
                continue;
            }
            // SAFETY: the device returned buffer `i` (< RX_BUFS, so the mask changes
            // nothing) and writes it again only once it is posted anew below.
            let rx = unsafe { &(*RX_MEM.get())[i & (RX_BUFS - 1)] };
            let frame = rx.get(HDR..(len as usize).min(BUF)).unwrap_or(&[]);
            // SAFETY: transmits wait for their completion, so the device is not reading
            // `TX_MEM` now.
            let tx = unsafe { &mut *TX_MEM.get() };
            if let Some(reply) = answer(frame, tx, nic.mac, ip) {
                tx[..HDR].fill(0);
                let sent = nic.transfer(
                    TX,
                    &[Buf::readable(TX_MEM.addr(), (HDR + reply.len) as u32)],
                    WAIT_POLLS,
                );
                if let (Some(_), Some(payload)) = (sent, reply.udp_payload) {
                    say!("udp echo ", Dec(payload as u64), " bytes");
                }
            }
            nic.post(RX, i as u16, true);
        }
        if io::power_button_pressed() {
            say!("power button");
            io::poweroff();
        }
    }
}

/// A reply frame built in the transmit buffer.
struct Reply {
    /// Frame length (without the virtio header).
    len: usize,
    /// For a UDP echo: the payload length.
    udp_payload: Option<usize>,
}

/// Builds the answer to `rx` (a frame without virtio header) after the header in `tx`.
fn answer(rx: &[u8], tx: &mut [u8; BUF], mac: [u8; 6], ip: [u8; 4]) -> Option<Reply> {
    let t = &mut tx[HDR..];
    match be16(rx, 12) {
        ETH_ARP => {
            if !(has(rx, 14, &ARP_ETH_IPV4) && has(rx, 20, &ARP_REQUEST) && has(rx, 38, &ip)) {
                return None;
            }
            put(t, 0, part(rx, 6, 6)); // to the asker
            put(t, 6, &mac);
            put(t, 12, &ETH_ARP.to_be_bytes());
            put(t, 14, &ARP_ETH_IPV4);
            put(t, 20, &ARP_REPLY);
            put(t, 22, &mac);
            put(t, 28, &ip);
            put(t, 32, part(rx, 22, 10)); // target = the asker's MAC and IP
            Some(Reply {
                len: 42,
                udp_payload: None,
            })
        }
        ETH_IPV4 => {
            let version_ihl = *rx.get(14)?;
            let ihl = usize::from(version_ihl & 0xf) * 4;
            let total = usize::from(be16(rx, 16));
            let end = 14 + total;
            let fragment = be16(rx, 20) & 0x3fff != 0;
            if version_ihl >> 4 != 4 || ihl < 20 || total < ihl + 8 || end > rx.len() || fragment || !has(rx, 30, &ip) {
                return None;
            }
            let l4 = 14 + ihl;
            put(t, 0, part(rx, 0, end));
            put(t, 0, part(rx, 6, 6));
            put(t, 6, &mac);
            put(t, 22, &[64]); // TTL
            put(t, 26, part(rx, 30, 4));
            put(t, 30, part(rx, 26, 4));
            let udp_payload = match *rx.get(23)? {
                IP_ICMP if rx.get(l4) == Some(&ICMP_ECHO_REQUEST) => {
                    put(t, l4, &[ICMP_ECHO_REPLY]);
                    put(t, l4 + 2, &[0, 0]);
                    let sum = checksum(part(t, l4, end - l4));
                    put(t, l4 + 2, &sum.to_be_bytes());
                    None
                }
                IP_UDP => {
                    let udp_len = usize::from(be16(rx, l4 + 4));
                    if udp_len < 8 || l4 + udp_len > end {
                        return None;
                    }
                    put(t, l4, part(rx, l4 + 2, 2));
                    put(t, l4 + 2, part(rx, l4, 2));
                    put(t, l4 + 6, &[0, 0]); // no UDP checksum
                    Some(udp_len - 8)
                }
                _ => return None,
            };
            put(t, 24, &[0, 0]);
            let sum = checksum(part(t, 14, ihl));
            put(t, 24, &sum.to_be_bytes());
            Some(Reply { len: end, udp_payload })
        }
        _ => None,
    }
}

/// Big-endian u16 at `offset` (0 past the end).
fn be16(s: &[u8], offset: usize) -> u16 {
    match s.get(offset..offset + 2) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    }
}

/// `len` bytes at `offset` (empty past the end).
fn part(s: &[u8], offset: usize, len: usize) -> &[u8] {
    s.get(offset..offset + len).unwrap_or(&[])
}

/// Whether `s` holds `want` at `offset`.
fn has(s: &[u8], offset: usize, want: &[u8]) -> bool {
    s.get(offset..offset + want.len()) == Some(want)
}

/// Copies `src` to `offset` of `dst`, as far as it fits.
fn put(dst: &mut [u8], offset: usize, src: &[u8]) {
    if let Some(dst) = dst.get_mut(offset..) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s;
        }
    }
}

/// The Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut words = data.chunks_exact(2);
    let mut sum: u32 = 0;
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
