//! hearth-net: security groups compiled into one nftables ruleset per host, replaced atomically.
//!
//! hearthd sends each agent a [`HostFirewall`]: the host's ports (taps, with the guest's MAC, IPv4
//! address, VPC and security groups) and the groups they use. [`compile_replacing`] turns it into one
//! nft script and [`Nft::apply`] loads it with `nft -f -`, which commits the whole file as one netlink
//! transaction: packets see either the old ruleset or the new one, never a mix and never none, and a
//! script the kernel refuses changes nothing ([`Nft::install`] does all three steps). Every change (a
//! rule, a member, a port) recompiles everything: for 1,000 rules on 100 ports compiling takes about
//! 3 ms and applying about 80 ms (`examples/netbench.rs`).
//!
//! # How a ruleset is replaced
//!
//! One transaction: declare the tables, sets and maps (a no-op for those that exist), flush both tables
//! (all rules) and every set and map (all elements), delete the chains and sets the new ruleset no
//! longer has, then define everything. Base chains, sets and maps that both rulesets share are kept,
//! not re-created, and no rule uses an anonymous set. The classic pattern (`table bridge hearth {}`,
//! `delete table bridge hearth`, `table bridge hearth { … }`) is atomic too, but in this crate's
//! stress test it lost about one reply of a busy flow per few hundred replacements: rules of the
//! outgoing generation could still look up sets that the commit had just retired, so the packet missed
//! its conntrack zone or state mark. It also re-registers every hook at each update, which made
//! applies slower (median 60–110 ms instead of 30 ms for the small test ruleset, with multi-second
//! outliers under load). With the scheme above the stress test (`replacing_the_ruleset_100_times_under_load_loses_nothing`)
//! lost nothing in 900 replacements.
//!
//! # Semantics (EC2's)
//!
//! - Groups only allow; a port with several groups gets the union of their rules.
//! - Stateful: replies to allowed traffic pass (conntrack `established,related`). A revoked rule stops
//!   new flows as soon as the apply returns; flows already tracked keep going while their conntrack
//!   entry lives (UDP: 30 s after the last packet, 120 s once replied to both ways; TCP established: 5
//!   days), as EC2 does for tracked connections. Cutting them too would mean deleting their conntrack
//!   entries (`conntrack -D`), which this crate does not do.
//! - Traffic to a port passes only if the sender's egress rules *and* the receiver's ingress rules allow
//!   it (only one side applies when the other end is not a port: the host, the router, VXLAN).
//! - A rule's peer is a CIDR or a group: the group's members are the ports listing it plus its
//!   `remote_members` (other hosts), kept current by recompiling.
//! - Frames between ports of different VPCs are dropped, whatever the rules say.
//! - DHCP between a port and the host (client → server port 67, server → client port 68), the instance
//!   metadata service (TCP to 169.254.169.254:80) and ARP are
//!   infrastructure: never subject to groups (anti-spoofing still applies).
//!
//! # Why the bridge family, and where conntrack comes from
//!
//! Taps are enslaved to a Linux bridge per subnet, so port-to-port traffic is bridged, not routed. The
//! `bridge` family sees every frame with the tap as `iifname`/`oifname` (prerouting, forward, input for
//! frames to the host, output for frames from it), so per-port dispatch is a verdict-map lookup and
//! anti-spoofing can check Ethernet and ARP fields.
//!
//! Conntrack in the bridge family (`ct state` in a bridge chain) needs `nf_conntrack_bridge`
//! (`CONFIG_NF_CONNTRACK_BRIDGE`, Linux 5.3+). Distribution kernels usually ship it as a module, but the
//! kernel of hearth's development and CI machines (6.18) is built without it, and the kernel refuses such a
//! chain there
//! ([`Nft::bridge_conntrack_supported`]; the test `bridge_family_conntrack_availability_is_reported`
//! prints the answer). So the ruleset takes connection state from the IPv4 conntrack through
//! **br_netfilter** (`net.bridge.bridge-nf-call-iptables=1`, [`Nft::enable_br_netfilter`]), which
//! passes bridged IPv4 frames through the IPv4 hooks, and hands it to the bridge chains in the packet
//! mark. The filtering itself stays in the bridge family. This works on both kinds of kernel. The cost:
//! every bridged IPv4 frame of every bridge in the namespace also traverses the IPv4 hooks (more CPU per
//! packet than native bridge conntrack), and hearth owns the mark bits [`MARK_OWNED`] on traffic from
//! and to its ports.
//!
//! # Packet mark
//!
//! | bits | set by | meaning |
//! |---|---|---|
//! | [`MARK_VPC_MASK`] (16–27) | `bridge prerouting`, frames from a port | the port's VPC number = conntrack zone |
//! | [`MARK_ZONED`] (28) | `bridge prerouting` | the frame goes to another port's MAC: track it in the VPC's zone |
//! | [`MARK_CT_INVALID`] (30) | `ip mark_state` | conntrack: invalid |
//! | [`MARK_CT_ESTABLISHED`] (31) | `ip mark_state` | conntrack: established or related |
//!
//! Frames from a tap arrive with mark 0 and leave prerouting with only their VPC bits; on packets to a
//! port address hearth rewrites bits 30–31. Other software on the host should keep to the low 16 bits
//! ([`MARK_OWNED`] is hearth's).
//!
//! Conntrack zones keep VPCs with the same CIDR apart: without them a flow 10.0.0.1→10.0.0.2 in one VPC
//! would make the same 5-tuple "established" in another (the test `vpcs_with_the_same_cidr_stay_isolated`
//! fails without the zone rule). Only port-to-port frames are zoned; traffic that the host routes
//! (Elastic IP NAT) or that goes over VXLAN stays in zone 0, so that both of its directions meet in the
//! same zone. Give each VPC a stable zone ([`HostFirewall::vpc_zones`]).
//!
//! # Table layout
//!
//! `table bridge hearth`:
//!
//! | object | what |
//! |---|---|
//! | set `ports` (ifname) | every port's tap; frames that neither come from nor go to one are accepted untouched (other bridges, Docker's) |
//! | set `port_macs` (ether_addr) | every port's MAC: frames to them are zoned |
//! | sets `port_mac` (ifname . ether_addr), `port_ip`, `port_arp_ip` (ifname . ipv4_addr) | anti-spoofing: what each tap may send |
//! | map `port_mark` (ifname : mark) | each tap's VPC bits |
//! | set `sg_<id>_members` (ipv4_addr) | members of each group named as a peer (`sg-0abc` → `sg_0abc`) |
//! | map `port_vpc` (ifname : verdict) | tap → `jump vpc_<zone>_only` |
//! | map `port_egress` | tap → `jump port_<tap>_egress` |
//! | map `port_ingress` | tap → `goto port_<tap>_ingress` |
//! | chain `prerouting` (hook prerouting, priority -300) | frames from ports: VPC mark, zoning, anti-spoofing |
//! | chain `forward` (hook forward, filter: port ↔ port, port ↔ VXLAN/uplink) | not ours → accept; `oifname vmap @port_vpc`; ARP → accept; other non-IPv4 → drop; invalid → drop; established → accept; `iifname vmap @port_egress`; `oifname vmap @port_ingress` |
//! | chain `input` (hook input, filter: port → host) | not ours → accept; ARP, DHCP requests → accept; invalid → drop; established → accept; `iifname vmap @port_egress` |
//! | chain `output` (hook output, filter: host → port) | not ours → accept; ARP → accept; other non-IPv4 → drop; DHCP replies → accept; invalid → drop; established → accept; `oifname vmap @port_ingress` |
//! | chain `vpc_<zone>_only` | drops frames from a port of another VPC |
//! | chain `port_<tap>_egress` | `jump sg_<id>_egress` for each of the port's groups; drop |
//! | chain `egress_ok` | `oifname vmap @port_ingress` (port to port: the receiver's ingress decides); accept |
//! | chain `port_<tap>_ingress` | `jump sg_<id>_ingress` for each of the port's groups; drop |
//! | chain `sg_<id>_ingress` | one rule per rule and peer (CIDR or `@sg_<id>_members`): `[proto/ports] [ip saddr PEER] accept` |
//! | chain `sg_<id>_egress` | one rule per rule and peer: `[proto/ports] [ip daddr PEER] goto egress_ok` |
//!
//! `table ip hearth` (bridged IPv4 reaches it through br_netfilter):
//!
//! | object | what |
//! |---|---|
//! | set `port_addrs` | every port's IPv4 address |
//! | map `vpc_zone` (typeof meta mark : ct zone) | VPC bits → conntrack zone |
//! | chain `zone` (prerouting, raw) | zoned frames: `ct zone set meta mark & VPC map @vpc_zone` |
//! | chain `state_in` (prerouting, mangle) | packets from a port, or to a port address → `mark_state` |
//! | chain `state_out` (output, mangle) | packets to a port address → `mark_state` |
//! | chain `mark_state` | conntrack state → [`MARK_CT_ESTABLISHED`] / [`MARK_CT_INVALID`] |
//!
//! A frame costs a few hash lookups (sets and verdict maps keyed by tap) plus the rules of its own ports'
//! groups, however many ports the host has. Rules match protocol and ports as EC2 does: TCP/UDP
//! `dport FROM-TO` (-1 or 0–65535: any), ICMP `type FROM code TO` (-1: any), other protocol numbers
//! all of their traffic, `-1` everything.
//!
//! # Anti-spoofing (chain `prerouting`, for every frame from a tap, before any state check)
//!
//! - Ethernet source MAC other than the port's → drop (no MAC spoofing, no flooding the bridge's table).
//! - ARP whose sender MAC is not the port's, or whose sender IP is neither the port's nor 0.0.0.0
//!   (RFC 5227 probes) → drop (no ARP cache poisoning).
//! - UDP from port 67 (a guest acting as DHCP server) → drop.
//! - IPv4 from 0.0.0.0 to 255.255.255.255, UDP 68 → 67 (DHCP discovery) → allowed; any other IPv4 whose
//!   source is not the port's address → drop.
//! - Anything but IPv4 and ARP → drop: IPv6 entirely (hearth has no IPv6 yet), VLAN tags, other
//!   ethertypes. Non-IPv4, non-ARP frames *to* a port are dropped in `forward` and `output` too.
//!
//! Drops count (`counter`): [`Nft::current_with_counters`] shows what each check dropped.
//!
//! # Using it
//!
//! The agent calls [`Nft::install`] (compile, [`Nft::enable_br_netfilter`], apply) with the whole
//! [`HostFirewall`] at every change, and [`Nft::remove`] when the host is drained. With
//! br_netfilter on, bridged IPv4 also traverses the host's own `ip`/`inet` forward chains: a host
//! firewall whose forward policy is drop must accept the instance bridges' traffic.
#![deny(missing_docs)]

mod compile;
pub mod dhcp;
pub mod imds;
pub mod ipam;
pub mod link;
pub mod model;
pub mod netns;
mod nft;
pub mod throttle;

pub use compile::{
    compile, compile_replacing, removal_script, CompileError, IMDS_ADDR, MARK_CT_ESTABLISHED, MARK_CT_INVALID,
    MARK_OWNED, MARK_VPC_MASK, MARK_VPC_SHIFT, MARK_ZONED, MAX_ZONE, TABLE,
};
pub use model::{HostFirewall, Ipv4Cidr, MacAddr, Port, Protocol, Rule, SecurityGroup};
pub use nft::{Nft, NftError};
