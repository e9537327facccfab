//! DHCP client (RFC 2131) for `net-echo` without `probe.ip=`: DISCOVER until an OFFER,
//! REQUEST until the ACK (a NAK, or no answer to a few REQUESTs, starts over), then the
//! lease's address, subnet mask and router. No renewal: the probe lives far shorter than
//! any lease. Also the fake OFFER of the `spoof-dhcp` command.

use crate::net::{self, be32, part, put, Config, Net};
use crate::time;
use crate::uart::Ip;

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
const HTYPE_ETHERNET: u8 = 1;
/// `flags`: ask the server to broadcast its answers (the probe has no address yet).
const FLAG_BROADCAST: [u8; 2] = [0x80, 0];
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Offsets in a BOOTP message.
const XID: usize = 4;
const FLAGS: usize = 10;
const YIADDR: usize = 16;
const SIADDR: usize = 20;
const CHADDR: usize = 28;
const COOKIE: usize = 236;
const OPTIONS: usize = 240;
/// Messages are padded to this length (RFC 1542: some servers and relays drop shorter).
const MESSAGE_LEN: usize = 300;

const OPT_PAD: u8 = 0;
const OPT_SUBNET_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PARAMETERS: u8 = 55;
const OPT_END: u8 = 255;
/// Subnet mask, router, DNS servers, host name, domain name, MTU, lease time, server ID.
const PARAMETERS: [u8; 8] = [1, 3, 6, 12, 15, 26, 51, 54];

const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

/// Messages sent before giving up, one a second.
const TRIES: u32 = 30;
const RETRY_MS: u64 = 1000;
/// REQUESTs without an answer before starting over with a DISCOVER.
const REQUEST_TRIES: u32 = 4;
/// Prefix length when the server sends no subnet mask.
const DEFAULT_PREFIX: u8 = 24;

/// What an OFFER, ACK or NAK for us says.
#[derive(Clone, Copy)]
struct Answer {
    kind: u8,
    yiaddr: [u8; 4],
    mask: Option<[u8; 4]>,
    router: Option<[u8; 4]>,
    /// Option 54, else the IPv4 source of the answer.
    server: [u8; 4],
}

/// Gets a lease on `net`; prints `probe: dhcp ip=<a.b.c.d>/<prefix> router=<r|none>
/// server=<s>`. `None` after `TRIES` messages without a lease.
pub fn lease(net: &mut Net) -> Option<Config> {
    let mut xid = (time::tsc() as u32) ^ be32(&net.mac, 2);
    let mut offer: Option<Answer> = None;
    let mut requests = 0;
    for _ in 0..TRIES {
        let Some(offered) = offer else {
            send(net, DISCOVER, xid, None);
            offer = net.wait(RETRY_MS, |net, frame| {
                answer(frame, xid, net.mac).filter(|a| a.kind == OFFER)
            });
            requests = 0;
            continue;
        };
        send(net, REQUEST, xid, Some(&offered));
        requests += 1;
        let got = net.wait(RETRY_MS, |net, frame| {
            answer(frame, xid, net.mac).filter(|a| a.kind == ACK || a.kind == NAK)
        });
        match got {
            Some(ack) if ack.kind == ACK => {
                let mask = ack.mask.or(offered.mask);
                let config = Config {
                    ip: ack.yiaddr,
                    prefix: mask.map_or(DEFAULT_PREFIX, net::prefix_of),
                    router: ack.router.or(offered.router),
                };
                print(&config, ack.server);
                return Some(config);
            }
            Some(_) => {
                say!("dhcp nak");
                offer = None;
                xid = xid.wrapping_add(1);
            }
            None if requests >= REQUEST_TRIES => offer = None,
            None => {}
        }
    }
    None
}

/// `probe: dhcp ip=<a.b.c.d>/<prefix> router=<r|none> server=<s>`.
fn print(config: &Config, server: [u8; 4]) {
    let prefix = crate::uart::Dec(u64::from(config.prefix));
    match config.router {
        Some(router) => say!(
            "dhcp ip=",
            Ip(config.ip),
            "/",
            prefix,
            " router=",
            Ip(router),
            " server=",
            Ip(server)
        ),
        None => say!(
            "dhcp ip=",
            Ip(config.ip),
            "/",
            prefix,
            " router=none server=",
            Ip(server)
        ),
    }
}

/// Broadcasts a DISCOVER or (with the offer) a REQUEST from 0.0.0.0:68.
fn send(net: &mut Net, kind: u8, xid: u32, offer: Option<&Answer>) {
    let mut msg = [0u8; MESSAGE_LEN];
    put(&mut msg, 0, &[BOOTREQUEST, HTYPE_ETHERNET, 6, 0]);
    put(&mut msg, XID, &xid.to_be_bytes());
    put(&mut msg, FLAGS, &FLAG_BROADCAST);
    put(&mut msg, CHADDR, &net.mac);
    put(&mut msg, COOKIE, &MAGIC_COOKIE);
    let mut at = OPTIONS;
    put(&mut msg, at, &[OPT_MESSAGE_TYPE, 1, kind]);
    at += 3;
    if let Some(offer) = offer {
        put(&mut msg, at, &[OPT_REQUESTED_IP, 4]);
        put(&mut msg, at + 2, &offer.yiaddr);
        put(&mut msg, at + 6, &[OPT_SERVER_ID, 4]);
        put(&mut msg, at + 8, &offer.server);
        at += 12;
    }
    put(&mut msg, at, &[OPT_PARAMETERS, PARAMETERS.len() as u8]);
    put(&mut msg, at + 2, &PARAMETERS);
    put(&mut msg, at + 2 + PARAMETERS.len(), &[OPT_END]);
    let ports = (CLIENT_PORT, SERVER_PORT);
    net.send_udp_raw(net.mac, net::BROADCAST_MAC, net::UNSET, net::BROADCAST_IP, ports, &msg);
}

/// The server's answer in `frame`, if it is one for transaction `xid` of `mac`: UDP
/// 67 → 68 to our MAC or broadcast, BOOTREPLY, matching xid and chaddr, magic cookie.
fn answer(frame: &[u8], xid: u32, mac: [u8; 6]) -> Option<Answer> {
    let udp = net::parse_udp(frame)?;
    let to_us = udp.ip.dst_mac == mac || udp.ip.dst_mac == net::BROADCAST_MAC;
    let msg = udp.payload;
    let ours = msg.first() == Some(&BOOTREPLY) && be32(msg, XID) == xid && net::has(msg, CHADDR, &mac);
    if !to_us
        || udp.src_port != SERVER_PORT
        || udp.dst_port != CLIENT_PORT
        || !ours
        || !net::has(msg, COOKIE, &MAGIC_COOKIE)
    {
        return None;
    }
    let mut answer = Answer {
        kind: 0,
        yiaddr: net::arr4(msg, YIADDR),
        mask: None,
        router: None,
        server: udp.ip.src,
    };
    let mut at = OPTIONS;
    while let Some(&code) = msg.get(at) {
        match code {
            OPT_PAD => {
                at += 1;
                continue;
            }
            OPT_END => break,
            _ => {}
        }
        let len = usize::from(*msg.get(at + 1)?);
        let data = part(msg, at + 2, len);
        match code {
            OPT_MESSAGE_TYPE if len == 1 => answer.kind = data.first().copied().unwrap_or(0),
            OPT_SUBNET_MASK if len == 4 => answer.mask = Some(net::arr4(data, 0)),
            OPT_ROUTER if len >= 4 => answer.router = Some(net::arr4(data, 0)),
            OPT_SERVER_ID if len == 4 => answer.server = net::arr4(data, 0),
            _ => {}
        }
        at += 2 + len;
    }
    (answer.kind != 0).then_some(answer)
}

/// What a rogue DHCP server would broadcast: a BOOTREPLY OFFER (option 53 = 2) of the
/// address after `ip`, naming `ip` as server (option 54). For `spoof-dhcp`.
pub fn fake_offer(ip: [u8; 4]) -> [u8; MESSAGE_LEN] {
    let mut msg = [0u8; MESSAGE_LEN];
    let mut offered = ip;
    offered[3] = offered[3].wrapping_add(1);
    put(&mut msg, 0, &[BOOTREPLY, HTYPE_ETHERNET, 6, 0]);
    put(&mut msg, XID, &(time::tsc() as u32).to_be_bytes());
    put(&mut msg, FLAGS, &FLAG_BROADCAST);
    put(&mut msg, YIADDR, &offered);
    put(&mut msg, SIADDR, &ip);
    put(&mut msg, COOKIE, &MAGIC_COOKIE);
    put(&mut msg, OPTIONS, &[OPT_MESSAGE_TYPE, 1, OFFER, OPT_SERVER_ID, 4]);
    put(&mut msg, OPTIONS + 5, &ip);
    put(&mut msg, OPTIONS + 9, &[OPT_END]);
    msg
}
