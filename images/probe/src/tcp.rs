//! A minimal TCP client for the `http` command (one connection to the instance metadata
//! address, port 80) and the RST the probe answers every other segment with.
//!
//! The client sends SYN (MSS 1460), then the whole request in one segment, takes data
//! only in order (anything else gets a duplicate ACK; the server retransmits), ACKs each
//! segment, and answers the server's FIN with its own. Unacknowledged SYN or data goes
//! out again every 500 ms; after 3 s the request fails.

use crate::net::{self, be16, be32, put, Ipv4, Net, IP_TCP, L4};
use crate::time::{self, Deadline};

const SERVER: [u8; 4] = [169, 254, 169, 254];
const SERVER_PORT: u16 = 80;
/// The request must fit one segment (servers on Ethernet accept 1460 bytes).
pub const REQUEST_MAX: usize = 1400;
/// Response bytes kept (the rest is acknowledged and dropped): fits one UDP reply.
pub const RESPONSE_MAX: usize = 1400;
/// MSS option (kind 2, length 4, 1460) of the SYN.
const SYN_OPTIONS: [u8; 4] = [2, 4, 0x05, 0xb4];
/// Receive window: well below what 16 receive buffers hold.
const WINDOW: u16 = 8192;
const RETRANSMIT_MS: u64 = 500;
const TOTAL_MS: u64 = 3000;
/// How long to wait for the ACK of our FIN.
const LINGER_MS: u64 = 500;
/// Ephemeral ports: 49152 + 0..16384.
const EPHEMERAL: u16 = 49152;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// A received TCP segment.
struct Segment<'f> {
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    data: &'f [u8],
}

/// Parses the TCP segment in `ip`.
fn parse<'f>(ip: &Ipv4<'f>) -> Option<Segment<'f>> {
    let offset = usize::from(*ip.body.get(12)? >> 4) * 4;
    Some(Segment {
        src_port: be16(ip.body, 0),
        dst_port: be16(ip.body, 2),
        seq: be32(ip.body, 4),
        ack: be32(ip.body, 8),
        flags: *ip.body.get(13)?,
        data: ip.body.get(offset.max(20)..)?,
    })
}

/// Sequence space length of a segment: its data, plus one each for SYN and FIN.
fn seq_len(seg: &Segment) -> u32 {
    seg.data.len() as u32 + u32::from(seg.flags & SYN != 0) + u32::from(seg.flags & FIN != 0)
}

/// One TCP segment to send (addresses and ports of both ends, sequence numbers, flags).
struct Out<'d> {
    mac: [u8; 6],
    dst: [u8; 4],
    ports: (u16, u16),
    seq: u32,
    ack: u32,
    flags: u8,
    options: &'d [u8],
    data: &'d [u8],
}

/// Builds and sends a segment from our address.
fn send(net: &mut Net, out: &Out) -> bool {
    let header = 20 + out.options.len();
    let len = header + out.data.len();
    let (our_mac, our_ip, id) = (net.mac, net.ip, net.next_ip_id());
    let t = net.frame();
    net::eth(t, out.mac, our_mac, net::ETH_IPV4);
    net::ipv4(t, our_ip, out.dst, IP_TCP, len, id);
    put(t, L4, &out.ports.0.to_be_bytes());
    put(t, L4 + 2, &out.ports.1.to_be_bytes());
    put(t, L4 + 4, &out.seq.to_be_bytes());
    put(t, L4 + 8, &out.ack.to_be_bytes());
    put(t, L4 + 12, &[(header as u8 / 4) << 4, out.flags]);
    put(t, L4 + 14, &WINDOW.to_be_bytes());
    put(t, L4 + 16, &[0, 0, 0, 0]); // checksum, urgent pointer
    put(t, L4 + 20, out.options);
    put(t, L4 + header, out.data);
    let sum = net::l4_checksum(t, our_ip, out.dst, IP_TCP, len);
    put(t, L4 + 16, &sum.to_be_bytes());
    net.transmit(L4 + len)
}

/// Answers a segment to a port nobody listens on (every port: the probe has no server)
/// with RST, as RFC 793 says for the CLOSED state; RSTs themselves are not answered, nor
/// segments to the `http` client's port (those its own handling did not take).
pub fn refuse(net: &mut Net, ip: &Ipv4) {
    let Some(seg) = parse(ip) else { return };
    if seg.flags & RST != 0 || seg.dst_port == net.tcp_client_port {
        return;
    }
    let (seq, ack, flags) = match seg.flags & ACK {
        0 => (0, seg.seq.wrapping_add(seq_len(&seg)), RST | ACK),
        _ => (seg.ack, 0, RST),
    };
    let out = Out {
        mac: ip.src_mac,
        dst: ip.src,
        ports: (seg.dst_port, seg.src_port),
        seq,
        ack,
        flags,
        options: &[],
        data: &[],
    };
    send(net, &out);
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    SynSent,
    Established,
    /// Our FIN is out (after the server's).
    Closing,
}

/// What a received segment meant for the connection.
#[derive(Clone, Copy, PartialEq)]
enum Event {
    Established,
    /// The server's FIN: the response is complete.
    Finished,
    /// Our FIN was acknowledged.
    Closed,
    Reset,
}

/// The client's side of the connection.
struct Conn {
    mac: [u8; 6],
    port: u16,
    state: State,
    /// Initial send sequence number; our data starts at `iss + 1`.
    iss: u32,
    /// Everything before this is acknowledged by the server.
    snd_una: u32,
    /// Next sequence number to send.
    snd_nxt: u32,
    /// Next sequence number expected from the server.
    rcv_nxt: u32,
    /// Response bytes kept.
    received: usize,
}

impl Conn {
    /// A segment to the server with our current numbers.
    fn out<'d>(&self, seq: u32, flags: u8, options: &'d [u8], data: &'d [u8]) -> Out<'d> {
        Out {
            mac: self.mac,
            dst: SERVER,
            ports: (self.port, SERVER_PORT),
            seq,
            ack: if flags & ACK != 0 { self.rcv_nxt } else { 0 },
            flags,
            options,
            data,
        }
    }

    /// Acknowledges everything received so far.
    fn ack(&self, net: &mut Net) {
        send(net, &self.out(self.snd_nxt, ACK, &[], &[]));
    }

    /// Handles one frame; `None` for frames of other connections and for plain progress.
    fn on_frame(&mut self, net: &mut Net, frame: &[u8], response: &mut [u8]) -> Option<Event> {
        let ip = net::parse_ipv4(frame).filter(|ip| ip.proto == IP_TCP && ip.src == SERVER && ip.dst == net.ip)?;
        let seg = parse(&ip).filter(|s| s.src_port == SERVER_PORT && s.dst_port == self.port)?;
        if seg.flags & RST != 0 {
            // In SYN-SENT only an RST acknowledging our SYN counts (RFC 793); later one in
            // the receive window.
            let valid = match self.state {
                State::SynSent => seg.flags & ACK != 0 && seg.ack == self.snd_nxt,
                _ => seg.seq.wrapping_sub(self.rcv_nxt) < u32::from(WINDOW),
            };
            return valid.then_some(Event::Reset);
        }
        if self.state == State::SynSent {
            if seg.flags & (SYN | ACK) != SYN | ACK || seg.ack != self.snd_nxt {
                return None;
            }
            self.rcv_nxt = seg.seq.wrapping_add(1);
            self.snd_una = seg.ack;
            self.state = State::Established;
            return Some(Event::Established);
        }
        if seg.flags & ACK != 0 && after(seg.ack, self.snd_una) && !after(seg.ack, self.snd_nxt) {
            self.snd_una = seg.ack;
        }
        if self.state == State::Closing && self.snd_una == self.snd_nxt {
            return Some(Event::Closed);
        }
        if seq_len(&seg) == 0 {
            return None;
        }
        if seg.seq != self.rcv_nxt || self.state != State::Established {
            // Out of order, a retransmission, or the server repeating its FIN.
            self.ack(net);
            return None;
        }
        let room = response.len().saturating_sub(self.received);
        let keep = seg.data.get(..room).unwrap_or(seg.data);
        put(response, self.received, keep);
        self.received += keep.len();
        self.rcv_nxt = self.rcv_nxt.wrapping_add(seq_len(&seg));
        if seg.flags & FIN == 0 {
            self.ack(net);
            return None;
        }
        send(net, &self.out(self.snd_nxt, FIN | ACK, &[], &[]));
        self.snd_nxt = self.snd_nxt.wrapping_add(1);
        self.state = State::Closing;
        Some(Event::Finished)
    }
}

/// Whether sequence number `a` comes after `b` (modulo 2^32).
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Sends `request` to 169.254.169.254:80 and collects the response (at most
/// `response.len()` bytes kept) until the server closes. Returns the bytes kept, or why it
/// failed: `arp timeout`, `timeout`, `reset`.
pub fn http(net: &mut Net, request: &[u8], response: &mut [u8]) -> Result<usize, &'static str> {
    let Some(mac) = net.resolve(SERVER) else {
        return Err("arp timeout");
    };
    let seed = time::tsc();
    let iss = (seed as u32).wrapping_mul(2_654_435_761) ^ (seed >> 32) as u32;
    let mut conn = Conn {
        mac,
        port: EPHEMERAL + ((seed >> 3) as u16 & 0x3fff),
        state: State::SynSent,
        iss,
        snd_una: iss,
        snd_nxt: iss.wrapping_add(1),
        rcv_nxt: 0,
        received: 0,
    };
    net.tcp_client_port = conn.port;
    let result = exchange(net, &mut conn, request, response);
    net.tcp_client_port = 0;
    result
}

/// The connection's life after the first SYN: handshake, request, response, close.
fn exchange(net: &mut Net, conn: &mut Conn, request: &[u8], response: &mut [u8]) -> Result<usize, &'static str> {
    let deadline = Deadline::after_ms(TOTAL_MS);
    loop {
        if deadline.passed() {
            if conn.state != State::SynSent {
                send(net, &conn.out(conn.snd_nxt, RST, &[], &[]));
            }
            return Err("timeout");
        }
        // (Re)send what the server has not acknowledged.
        let data_start = conn.iss.wrapping_add(1);
        match conn.state {
            State::SynSent => {
                send(net, &conn.out(conn.iss, SYN, &SYN_OPTIONS, &[]));
            }
            State::Established if conn.snd_una != data_start.wrapping_add(request.len() as u32) => {
                send(net, &conn.out(data_start, PSH | ACK, &[], request));
                conn.snd_nxt = data_start.wrapping_add(request.len() as u32);
            }
            _ => {}
        }
        match net.wait(RETRANSMIT_MS, |net, frame| conn.on_frame(net, frame, response)) {
            Some(Event::Reset) => return Err("reset"),
            Some(Event::Finished) => break,
            _ => {}
        }
    }
    // Wait briefly for the ACK of our FIN (answering a repeated FIN meanwhile); the
    // response is complete either way.
    let _ = net.wait(LINGER_MS, |net, frame| {
        conn.on_frame(net, frame, response).filter(|&e| e != Event::Finished)
    });
    Ok(conn.received)
}
