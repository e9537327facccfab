//! UDP commands to `net-echo`: a datagram to the probe's address, on any port, whose
//! payload (trailing CR/LF ignored) starts with a command word. They let host-side tests
//! make the guest send what a misbehaving or ordinary instance would send: forged
//! packets (anti-spoofing), a rogue DHCP server's offer, traffic to other addresses
//! (security groups, VM to VM) and HTTP to the instance metadata service.
//!
//! Replies go to the sender from the port the command arrived on. While a command waits
//! for an answer, the probe goes on answering ARP, ICMP echo and UDP echo, but runs no
//! second command: it answers `busy`.

use crate::net::{self, Net, Peer, Udp, UDP_MAX};
use crate::time;
use crate::{cmdline, dhcp, tcp};

const COMMANDS: [&[u8]; 6] = [b"spoof-ip", b"spoof-mac", b"spoof-dhcp", b"send", b"ping", b"http"];
/// How long `send` and `ping` wait for their answer.
const ANSWER_MS: u64 = 1000;
/// The ICMP echo request payload of `ping`.
const PING_DATA: &[u8] = b"hearth probe ping 0123456789abcdef";

/// The command word of `payload` and the rest after one space (or a newline).
fn split(payload: &[u8]) -> (&[u8], &[u8]) {
    let text = trim_end(payload);
    match text.iter().position(|&b| b == b' ' || b == b'\n') {
        Some(at) => (text.get(..at).unwrap_or(&[]), text.get(at + 1..).unwrap_or(&[])),
        None => (text, &[]),
    }
}

/// `s` without trailing CR and LF.
fn trim_end(mut s: &[u8]) -> &[u8] {
    while let Some((b'\n' | b'\r', rest)) = s.split_last() {
        s = rest;
    }
    s
}

/// Whether `payload` is a command (else it is echoed).
pub fn is_command(payload: &[u8]) -> bool {
    COMMANDS.contains(&split(payload).0)
}

/// Runs the command in `udp`; false if it is not one.
pub fn run(net: &mut Net, udp: &Udp) -> bool {
    let (word, args) = split(udp.payload);
    if !COMMANDS.contains(&word) {
        return false;
    }
    say!("udp cmd ", word);
    let peer = Peer::of(udp);
    match word {
        b"spoof-ip" => {
            let mut ip = net.ip;
            ip[3] = ip[3].wrapping_add(1);
            net.send_udp_raw(net.mac, peer.mac, ip, peer.ip, (peer.our_port, peer.port), b"spoofed");
        }
        b"spoof-mac" => {
            let mut mac = net.mac;
            mac[5] ^= 0x01;
            net.send_udp_raw(mac, peer.mac, net.ip, peer.ip, (peer.our_port, peer.port), b"spoofed");
        }
        b"spoof-dhcp" => {
            let offer = dhcp::fake_offer(net.ip);
            let ports = (dhcp::SERVER_PORT, dhcp::CLIENT_PORT);
            net.send_udp_raw(net.mac, net::BROADCAST_MAC, net.ip, net::BROADCAST_IP, ports, &offer);
            net.reply(&peer, b"sent");
        }
        b"send" => send(net, &peer, args),
        b"ping" => ping(net, &peer, args),
        _ => http(net, &peer, args),
    }
    true
}

/// Answers a command that arrived while another one was running.
pub fn busy(net: &mut Net, udp: &Udp) {
    say!("udp cmd ", split(udp.payload).0, " busy");
    net.reply(&Peer::of(udp), b"busy");
}

/// `send <a.b.c.d> <port> <text>`: UDP to another address, then `reply <payload>` with the
/// first datagram back from it (any port) within a second, else `timeout`.
fn send(net: &mut Net, peer: &Peer, args: &[u8]) {
    let (ip, rest) = cmdline::split_once(args, b' ').unwrap_or((args, &[]));
    let (port, text) = cmdline::split_once(rest, b' ').unwrap_or((rest, &[]));
    let (Some(ip), Some(port)) = (
        cmdline::parse_ip(ip),
        cmdline::parse_u64(port).and_then(|p| u16::try_from(p).ok()),
    ) else {
        net.reply(peer, b"usage: send <a.b.c.d> <port> <text>");
        return;
    };
    if !net.send_udp(ip, (peer.our_port, port), text) {
        net.reply(peer, b"timeout");
        return;
    }
    // The answer is copied out of its receive buffer, which goes back to the device.
    let mut answer = [0u8; UDP_MAX];
    const PREFIX: &[u8] = b"reply ";
    net::put(&mut answer, 0, PREFIX);
    let our_ip = net.ip;
    let got = net.wait(ANSWER_MS, |_, frame| {
        let udp = net::parse_udp(frame).filter(|u| u.ip.src == ip && u.ip.dst == our_ip)?;
        let len = udp.payload.len().min(UDP_MAX - PREFIX.len());
        net::put(&mut answer, PREFIX.len(), udp.payload);
        Some(PREFIX.len() + len)
    });
    match got {
        Some(len) => net.reply(peer, answer.get(..len).unwrap_or(&[])),
        None => net.reply(peer, b"timeout"),
    };
}

/// `ping <a.b.c.d>`: one ICMP echo request, `pong` if the reply comes within a second,
/// else `timeout`.
fn ping(net: &mut Net, peer: &Peer, args: &[u8]) {
    let Some(ip) = cmdline::parse_ip(args) else {
        net.reply(peer, b"usage: ping <a.b.c.d>");
        return;
    };
    let ident = time::tsc() as u16;
    let answered = match net.resolve(ip) {
        Some(mac) => {
            send_echo_request(net, mac, ip, ident);
            let our_ip = net.ip;
            net.wait(ANSWER_MS, |_, frame| {
                let reply =
                    net::parse_ipv4(frame).filter(|p| p.proto == net::IP_ICMP && p.src == ip && p.dst == our_ip)?;
                let echo = reply.body.first() == Some(&net::ICMP_ECHO_REPLY) && net::be16(reply.body, 4) == ident;
                echo.then_some(())
            })
            .is_some()
        }
        None => false,
    };
    net.reply(peer, if answered { b"pong" } else { b"timeout" });
}

/// Sends an ICMP echo request (identifier `ident`, sequence 1) to `ip` via `mac`.
fn send_echo_request(net: &mut Net, mac: [u8; 6], ip: [u8; 4], ident: u16) {
    let len = 8 + PING_DATA.len();
    let (our_mac, our_ip, id) = (net.mac, net.ip, net.next_ip_id());
    let t = net.frame();
    net::eth(t, mac, our_mac, net::ETH_IPV4);
    net::ipv4(t, our_ip, ip, net::IP_ICMP, len, id);
    net::put(t, net::L4, &[8, 0, 0, 0]);
    net::put(t, net::L4 + 4, &ident.to_be_bytes());
    net::put(t, net::L4 + 6, &1u16.to_be_bytes());
    net::put(t, net::L4 + 8, PING_DATA);
    let sum = net::checksum(net::part(t, net::L4, len), 0);
    net::put(t, net::L4 + 2, &sum.to_be_bytes());
    net.transmit(net::L4 + len);
}

/// `http <METHOD> <path>[\n<Header: value>]*`: one HTTP/1.1 request to the metadata
/// address; replies with the raw response (cut at `tcp::RESPONSE_MAX` bytes) or
/// `http error <reason>`.
fn http(net: &mut Net, peer: &Peer, args: &[u8]) {
    let mut request = [0u8; tcp::REQUEST_MAX];
    let result = build_request(args, &mut request).and_then(|len| {
        let mut response = [0u8; tcp::RESPONSE_MAX];
        match tcp::http(net, request.get(..len).unwrap_or(&[]), &mut response)? {
            0 => Err("empty response"),
            len => {
                net.reply(peer, response.get(..len).unwrap_or(&[]));
                Ok(())
            }
        }
    });
    if let Err(reason) = result {
        let mut text = [0u8; 80];
        net::put(&mut text, 0, b"http error ");
        net::put(&mut text, 11, reason.as_bytes());
        net.reply(peer, text.get(..11 + reason.len()).unwrap_or(&text));
    }
}

/// Builds the request text of an `http` command into `out`; its length, or why not.
fn build_request(args: &[u8], out: &mut [u8]) -> Result<usize, &'static str> {
    const USAGE: &str = "usage: http <METHOD> <path>[\\n<Header: value>]*";
    let mut lines = args.split(|&b| b == b'\n').map(trim_end);
    let (method, path) = lines
        .next()
        .and_then(|line| cmdline::split_once(line, b' '))
        .ok_or(USAGE)?;
    if method.is_empty() || path.is_empty() {
        return Err(USAGE);
    }
    let mut w = Writer { buf: out, len: 0 };
    for part in [method, b" ", path, b" HTTP/1.1\r\n"] {
        w.push(part);
    }
    w.push(b"Host: 169.254.169.254\r\nConnection: close\r\n");
    if method == b"PUT" || method == b"POST" {
        w.push(b"Content-Length: 0\r\n");
    }
    for header in lines.filter(|l| !l.is_empty()) {
        w.push(header);
        w.push(b"\r\n");
    }
    w.push(b"\r\n");
    if w.len > w.buf.len() {
        return Err("request too long");
    }
    Ok(w.len)
}

/// Appends to a byte buffer; `len` counts past the end when it overflows.
struct Writer<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl Writer<'_> {
    fn push(&mut self, bytes: &[u8]) {
        net::put(self.buf, self.len, bytes);
        self.len += bytes.len();
    }
}
