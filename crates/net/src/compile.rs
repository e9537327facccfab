//! Compiles a [`HostFirewall`] into one nft script that replaces hearth's two tables in one transaction.
//!
//! The layout of the generated tables is described in the crate documentation.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::model::{HostFirewall, Ipv4Cidr, Port, Protocol, Rule, SecurityGroup};

/// Name of hearth's tables (`table bridge hearth` and `table ip hearth`).
pub const TABLE: &str = "hearth";

/// Packet-mark bits holding the conntrack zone (= VPC number) of the port a frame came from.
pub const MARK_VPC_MASK: u32 = 0x0fff_0000;
/// Shift of the VPC number inside [`MARK_VPC_MASK`].
pub const MARK_VPC_SHIFT: u32 = 16;
/// Packet-mark bit: the frame goes from a port to another port's MAC, so it is tracked in the VPC's
/// conntrack zone (routed, VXLAN and host traffic stays in the host's zone 0).
pub const MARK_ZONED: u32 = 0x1000_0000;
/// Packet-mark bit set by `table ip hearth`: conntrack says the packet is invalid.
pub const MARK_CT_INVALID: u32 = 0x4000_0000;
/// Packet-mark bit set by `table ip hearth`: conntrack says established or related.
pub const MARK_CT_ESTABLISHED: u32 = 0x8000_0000;
/// Every packet-mark bit hearth uses on traffic from and to ports (keep other software to the low 16
/// bits, e.g. kube-proxy's 0x4000/0x8000).
pub const MARK_OWNED: u32 = 0xffff_0000;
/// The largest conntrack zone (VPC number) that fits [`MARK_VPC_MASK`].
pub const MAX_ZONE: u16 = 4095;
/// The instance metadata service's address: traffic from a port to it (TCP 80) is never subject to groups.
pub const IMDS_ADDR: &str = "169.254.169.254";

/// Why a [`HostFirewall`] cannot be compiled. Nothing is applied then: the previous ruleset stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// A port is malformed or inconsistent (tap name, MAC, group membership).
    #[error("port {tap:?}: {reason}")]
    InvalidPort {
        /// The port's tap name.
        tap: String,
        /// What is wrong.
        reason: String,
    },
    /// A security group id is malformed or repeated.
    #[error("security group {id:?}: {reason}")]
    InvalidGroup {
        /// The group id.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// A rule cannot be expressed (port range, ICMP type/code, peer group id).
    #[error("security group {group:?}: {direction} rule {index}: {reason}")]
    InvalidRule {
        /// The group holding the rule.
        group: String,
        /// `ingress` or `egress`.
        direction: &'static str,
        /// Index of the rule in its list.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A VPC cannot get a conntrack zone.
    #[error("VPC {vpc:?}: {reason}")]
    InvalidVpc {
        /// The VPC id.
        vpc: String,
        /// What is wrong.
        reason: String,
    },
}

/// Compiles `fw` into an nft script that replaces the contents of `table bridge hearth` and `table ip
/// hearth` in one transaction (see [`crate::Nft::apply`]). Same as [`compile_replacing`] with no previous
/// ruleset: objects of an older ruleset that `fw` no longer has (chains of removed ports and groups, member
/// sets) would stay behind, empty and unreferenced.
///
/// The output is deterministic (ports sorted by tap, groups by id), so equal inputs give equal scripts.
pub fn compile(fw: &HostFirewall) -> Result<String, CompileError> {
    compile_replacing(fw, "")
}

/// Compiles `fw` into one transaction that turns the tables listed in `current` (the output of
/// [`crate::Nft::current`], empty if none) into `fw`'s ruleset:
///
/// 1. declare the tables and every set and map (declaring an existing one changes nothing);
/// 2. flush both tables (every rule) and every set and map (every element);
/// 3. delete the chains, sets and maps of `current` that the new ruleset does not have;
/// 4. define everything: elements and rules.
///
/// Base chains, sets and maps that both rulesets have are kept, not deleted and re-created: a packet that
/// crosses the hooks while the transaction commits then meets either the old or the new contents of a
/// set, never a set that is half gone. (Deleting and re-defining the whole table, the classic pattern,
/// lost about one reply packet of a busy flow per few hundred replacements in this crate's stress test:
/// a rule of the old generation could look up a set that the new generation had already dropped.)
pub fn compile_replacing(fw: &HostFirewall, current: &str) -> Result<String, CompileError> {
    let plan = Plan::new(fw)?;
    Ok(plan.render(current))
}

/// The script that deletes hearth's tables; deleting tables that do not exist is not an error.
pub fn removal_script() -> String {
    format!("table bridge {TABLE} {{}}\ndelete table bridge {TABLE}\ntable ip {TABLE} {{}}\ndelete table ip {TABLE}\n")
}

/// A validated firewall, with the names of every chain and set.
struct Plan<'a> {
    /// Ports in tap order.
    ports: Vec<&'a Port>,
    /// Groups used by a port, in id order, with their chain/set name stem.
    used_groups: Vec<(&'a SecurityGroup, String)>,
    /// Conntrack zone of each VPC that has a port here.
    zones: BTreeMap<&'a str, u16>,
    /// Member addresses of each group named as a peer, by the group's name stem.
    member_sets: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    /// Name stem of every group id (used or named as a peer).
    stems: BTreeMap<&'a str, String>,
}

fn valid_tap(tap: &str) -> bool {
    (1..=15).contains(&tap.len()) && tap.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn valid_group_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
}

/// `sg-0abc` → `sg_0abc`: the stem of the group's chains and member set.
fn group_stem(id: &str) -> String {
    format!("sg_{}", id.strip_prefix("sg-").unwrap_or(id))
}

impl<'a> Plan<'a> {
    fn new(fw: &'a HostFirewall) -> Result<Plan<'a>, CompileError> {
        let mut groups: BTreeMap<&str, &SecurityGroup> = BTreeMap::new();
        let mut stems: BTreeMap<&str, String> = BTreeMap::new();
        let mut stem_owner: BTreeMap<String, &str> = BTreeMap::new();
        let mut name_group = |id: &'a str, stems: &mut BTreeMap<&'a str, String>| -> Result<(), String> {
            if stems.contains_key(id) {
                return Ok(());
            }
            if !valid_group_id(id) {
                return Err("a group id is 1 to 64 characters of [A-Za-z0-9_-]".into());
            }
            let stem = group_stem(id);
            if let Some(other) = stem_owner.insert(stem.clone(), id) {
                return Err(format!("its nft name {stem} collides with group {other:?}"));
            }
            stems.insert(id, stem);
            Ok(())
        };
        for group in &fw.groups {
            let invalid = |reason: String| CompileError::InvalidGroup {
                id: group.id.clone(),
                reason,
            };
            if groups.insert(&group.id, group).is_some() {
                return Err(invalid("listed twice".into()));
            }
            name_group(&group.id, &mut stems).map_err(invalid)?;
        }

        let mut ports: Vec<&Port> = fw.ports.iter().collect();
        ports.sort_by(|a, b| a.tap.cmp(&b.tap));
        let mut macs = BTreeMap::new();
        let mut used: BTreeSet<&str> = BTreeSet::new();
        for (i, port) in ports.iter().enumerate() {
            let invalid = |reason: String| CompileError::InvalidPort {
                tap: port.tap.clone(),
                reason,
            };
            if !valid_tap(&port.tap) {
                return Err(invalid("a tap name is 1 to 15 characters of [A-Za-z0-9_.-]".into()));
            }
            if i > 0 && ports[i - 1].tap == port.tap {
                return Err(invalid("listed twice".into()));
            }
            if port.mac.is_multicast() {
                return Err(invalid(format!("{} is a group (multicast) MAC address", port.mac)));
            }
            if let Some(other) = macs.insert(port.mac, &port.tap) {
                return Err(invalid(format!("MAC {} is also port {other:?}'s", port.mac)));
            }
            if port.vpc_id.is_empty() {
                return Err(invalid("no VPC".into()));
            }
            for id in &port.group_ids {
                let group = groups
                    .get(id.as_str())
                    .ok_or_else(|| invalid(format!("security group {id:?} is not in the firewall's groups")))?;
                if group.vpc_id != port.vpc_id {
                    return Err(invalid(format!(
                        "security group {id:?} is in VPC {:?}, the port in {:?}",
                        group.vpc_id, port.vpc_id
                    )));
                }
                used.insert(id);
            }
        }

        // Peers named by the rules of the groups in use get member sets.
        let mut peers: BTreeSet<&str> = BTreeSet::new();
        for id in &used {
            let group = groups[id];
            for (direction, rules) in [("ingress", &group.ingress), ("egress", &group.egress)] {
                for (index, rule) in rules.iter().enumerate() {
                    for peer in &rule.source_groups {
                        name_group(peer, &mut stems).map_err(|reason| CompileError::InvalidRule {
                            group: group.id.clone(),
                            direction,
                            index,
                            reason: format!("peer group {peer:?}: {reason}"),
                        })?;
                        peers.insert(peer);
                    }
                }
            }
        }
        let mut member_sets = BTreeMap::new();
        for peer in peers {
            let mut members: BTreeSet<Ipv4Addr> = ports
                .iter()
                .filter(|port| port.group_ids.iter().any(|g| g == peer))
                .map(|port| port.ipv4)
                .collect();
            if let Some(group) = groups.get(peer) {
                members.extend(group.remote_members.iter().copied());
            }
            member_sets.insert(stems[peer].clone(), members);
        }

        let zones = assign_zones(fw, &ports)?;
        let used_groups = used.iter().map(|id| (groups[id], stems[id].clone())).collect();
        let plan = Plan {
            ports,
            used_groups,
            zones,
            member_sets,
            stems,
        };
        // Render every rule once now so that rule errors surface before anything is written.
        for (group, _) in &plan.used_groups {
            plan.group_rules(group, Direction::Ingress)?;
            plan.group_rules(group, Direction::Egress)?;
        }
        Ok(plan)
    }

    fn render(&self, current: &str) -> String {
        let tables = [self.render_bridge(), self.render_ip()];
        let mut s = Script::default();
        s.line(
            0,
            &format!(
                "# hearth security groups: {} ports, {} groups, {} VPCs (generated by hearth-net), one transaction.",
                self.ports.len(),
                self.used_groups.len(),
                self.zones.len()
            ),
        );
        s.line(
            0,
            "# 1. The tables, sets and maps exist (declaring an existing one changes nothing).",
        );
        for table in &tables {
            s.line(0, &format!("table {} {TABLE} {{", table.family));
            for set in &table.sets {
                s.line(1, &format!("{} {} {{ {}; }}", set.keyword(), set.name, set.kind));
            }
            s.line(0, "}");
        }
        s.line(0, "# 2. Empty them: every rule, every element.");
        for table in &tables {
            s.line(0, &format!("flush table {} {TABLE}", table.family));
            for set in &table.sets {
                s.line(
                    0,
                    &format!("flush {} {} {TABLE} {}", set.keyword(), table.family, set.name),
                );
            }
        }
        s.line(0, "# 3. Delete what the previous ruleset had and this one has not.");
        let wanted: BTreeSet<(&str, &str, &str)> = tables
            .iter()
            .flat_map(|t| {
                let sets = t.sets.iter().map(|set| (t.family, set.keyword(), set.name.as_str()));
                sets.chain(t.chains.iter().map(|c| (t.family, "chain", c.name.as_str())))
            })
            .collect();
        let stale: Vec<(&str, &str, &str)> = objects(current).into_iter().filter(|o| !wanted.contains(o)).collect();
        // Maps may refer to chains: maps and sets go first.
        for kinds in [["map", "set"], ["chain", "chain"]] {
            for (family, kind, name) in stale.iter().filter(|o| kinds.contains(&o.1)) {
                s.line(0, &format!("delete {kind} {family} {TABLE} {name}"));
            }
        }
        s.line(0, "# 4. The ruleset.");
        for table in &tables {
            table.render(&mut s);
        }
        s.out
    }

    fn render_bridge(&self) -> Table {
        let mut s = Table::new("bridge");
        let each = |f: &dyn Fn(&Port) -> String| self.ports.iter().map(|p| f(p)).collect::<Vec<_>>();
        s.set("ports", "ifname", each(&|p| format!("\"{}\"", p.tap)));
        s.set("port_macs", "ether_addr", each(&|p| p.mac.to_string()));
        s.set(
            "port_mac",
            "ifname . ether_addr",
            each(&|p| format!("\"{}\" . {}", p.tap, p.mac)),
        );
        s.set(
            "port_ip",
            "ifname . ipv4_addr",
            each(&|p| format!("\"{}\" . {}", p.tap, p.ipv4)),
        );
        let arp_ips = self.ports.iter().flat_map(|p| {
            [
                format!("\"{}\" . 0.0.0.0", p.tap),
                format!("\"{}\" . {}", p.tap, p.ipv4),
            ]
        });
        s.set("port_arp_ip", "ifname . ipv4_addr", arp_ips.collect());
        s.set(
            "port_mark",
            "ifname : mark",
            each(&|p| format!("\"{}\" : {:#010x}", p.tap, self.vpc_mark(p))),
        );
        for (stem, members) in &self.member_sets {
            let members = members.iter().map(|a| a.to_string()).collect();
            s.set(&format!("{stem}_members"), "ipv4_addr", members);
        }
        s.set(
            "port_vpc",
            "ifname : verdict",
            each(&|p| format!("\"{}\" : jump vpc_{}_only", p.tap, self.zones[p.vpc_id.as_str()])),
        );
        s.set(
            "port_egress",
            "ifname : verdict",
            each(&|p| format!("\"{}\" : jump port_{}_egress", p.tap, p.tap)),
        );
        s.set(
            "port_ingress",
            "ifname : verdict",
            each(&|p| format!("\"{}\" : goto port_{}_ingress", p.tap, p.tap)),
        );

        let invalid = format!("meta mark & {MARK_CT_INVALID:#010x} != 0 counter drop");
        let established = format!("meta mark & {MARK_CT_ESTABLISHED:#010x} != 0 accept");
        s.chain(
            "prerouting",
            Some("type filter hook prerouting priority -300; policy accept;"),
            &[
                "iifname != @ports accept".into(),
                // Frames from a tap start with mark 0: all of it becomes the port's VPC number.
                "meta mark set iifname map @port_mark".into(),
                format!("ether daddr @port_macs meta mark set meta mark | {MARK_ZONED:#010x}"),
                // Anti-spoofing (see the crate documentation).
                "iifname . ether saddr != @port_mac counter drop".into(),
                "iifname . arp saddr ether != @port_mac counter drop".into(),
                "iifname . arp saddr ip != @port_arp_ip counter drop".into(),
                "udp sport 67 counter drop".into(),
                "ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept".into(),
                "iifname . ip saddr != @port_ip counter drop".into(),
                "ether type != ip ether type != arp counter drop".into(),
            ],
        );
        s.chain(
            "forward",
            Some("type filter hook forward priority filter; policy accept;"),
            &[
                "iifname != @ports oifname != @ports accept".into(),
                "oifname vmap @port_vpc".into(),
                "ether type arp accept".into(),
                "ether type != ip counter drop".into(),
                invalid.clone(),
                established.clone(),
                "iifname vmap @port_egress".into(),
                "oifname vmap @port_ingress".into(),
            ],
        );
        s.chain(
            "input",
            Some("type filter hook input priority filter; policy accept;"),
            &[
                "iifname != @ports accept".into(),
                "ether type arp accept".into(),
                "udp sport 68 udp dport 67 accept".into(),
                // The instance metadata service is infrastructure too (EC2 never filters it).
                format!("ip daddr {IMDS_ADDR} tcp dport 80 accept"),
                invalid.clone(),
                established.clone(),
                "iifname vmap @port_egress".into(),
            ],
        );
        s.chain(
            "output",
            Some("type filter hook output priority filter; policy accept;"),
            &[
                "oifname != @ports accept".into(),
                "ether type arp accept".into(),
                "ether type != ip counter drop".into(),
                "udp sport 67 udp dport 68 accept".into(),
                invalid,
                established,
                "oifname vmap @port_ingress".into(),
            ],
        );
        s.chain(
            "egress_ok",
            None,
            &["oifname vmap @port_ingress".into(), "accept".into()],
        );
        for zone in BTreeSet::from_iter(self.zones.values()) {
            let vpc = u32::from(*zone) << MARK_VPC_SHIFT;
            s.chain(
                &format!("vpc_{zone}_only"),
                None,
                &[format!(
                    "meta mark & {MARK_VPC_MASK:#010x} != 0 meta mark & {MARK_VPC_MASK:#010x} != {vpc:#010x} counter drop"
                )],
            );
        }
        for port in &self.ports {
            let groups = port.group_ids.iter().collect::<BTreeSet<_>>();
            for direction in [Direction::Egress, Direction::Ingress] {
                let mut rules: Vec<String> = groups
                    .iter()
                    .map(|id| format!("jump {}_{}", self.stems[id.as_str()], direction.name()))
                    .collect();
                rules.push("counter drop".into());
                s.chain(&format!("port_{}_{}", port.tap, direction.name()), None, &rules);
            }
        }
        for (group, stem) in &self.used_groups {
            for direction in [Direction::Ingress, Direction::Egress] {
                let rules = self.group_rules(group, direction).expect("checked in Plan::new");
                s.chain(&format!("{stem}_{}", direction.name()), None, &rules);
            }
        }
        s
    }

    /// The packet mark of frames from `port`: its VPC number.
    fn vpc_mark(&self, port: &Port) -> u32 {
        u32::from(self.zones[port.vpc_id.as_str()]) << MARK_VPC_SHIFT
    }

    fn render_ip(&self) -> Table {
        let mut s = Table::new("ip");
        let addrs: BTreeSet<Ipv4Addr> = self.ports.iter().map(|p| p.ipv4).collect();
        s.set("port_addrs", "ipv4_addr", addrs.iter().map(|a| a.to_string()).collect());
        let zones: BTreeSet<u16> = self.zones.values().copied().collect();
        let zones = zones
            .iter()
            .map(|z| format!("{:#010x} : {z}", u32::from(*z) << MARK_VPC_SHIFT));
        s.typeof_map("vpc_zone", "meta mark : ct zone", zones.collect());
        s.chain(
            "zone",
            Some("type filter hook prerouting priority raw; policy accept;"),
            &[format!(
                "meta mark & {MARK_ZONED:#010x} != 0 ct zone set meta mark & {MARK_VPC_MASK:#010x} map @vpc_zone"
            )],
        );
        s.chain(
            "state_in",
            Some("type filter hook prerouting priority mangle; policy accept;"),
            &[
                format!("meta mark & {MARK_VPC_MASK:#010x} != 0 goto mark_state"),
                "ip daddr @port_addrs goto mark_state".into(),
            ],
        );
        s.chain(
            "state_out",
            Some("type filter hook output priority mangle; policy accept;"),
            &["ip daddr @port_addrs goto mark_state".into()],
        );
        s.chain(
            "mark_state",
            None,
            &[
                format!(
                    "meta mark set meta mark & {:#010x}",
                    !(MARK_CT_ESTABLISHED | MARK_CT_INVALID)
                ),
                format!("ct state established,related meta mark set meta mark | {MARK_CT_ESTABLISHED:#010x}"),
                format!("ct state invalid meta mark set meta mark | {MARK_CT_INVALID:#010x}"),
            ],
        );
        s
    }

    /// The rules of `group`'s chain for `direction`, one nft rule per peer match.
    fn group_rules(&self, group: &SecurityGroup, direction: Direction) -> Result<Vec<String>, CompileError> {
        let rules = match direction {
            Direction::Ingress => &group.ingress,
            Direction::Egress => &group.egress,
        };
        let mut out = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            let invalid = |reason: String| CompileError::InvalidRule {
                group: group.id.clone(),
                direction: direction.name(),
                index,
                reason,
            };
            let protocol = protocol_match(rule).map_err(invalid)?;
            let address = match direction {
                Direction::Ingress => "ip saddr",
                Direction::Egress => "ip daddr",
            };
            let verdict = match direction {
                Direction::Ingress => "accept",
                Direction::Egress => "goto egress_ok",
            };
            // One rule per peer: anonymous sets would be re-created at every replacement (see
            // compile_replacing).
            let mut peers = Vec::new();
            for cidr in normalize(&rule.sources) {
                peers.push(if cidr.prefix() == 0 {
                    String::new()
                } else {
                    format!("{address} {}", cidr_text(&cidr))
                });
            }
            for peer in BTreeSet::from_iter(&rule.source_groups) {
                peers.push(format!("{address} @{}_members", self.stems[peer.as_str()]));
            }
            for peer in peers {
                let words = [protocol.as_str(), peer.as_str(), verdict];
                out.push(
                    words
                        .iter()
                        .filter(|w| !w.is_empty())
                        .copied()
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            }
        }
        Ok(out)
    }
}

/// Gives every VPC with a port a conntrack zone: the requested one, else the lowest free one.
fn assign_zones<'a>(fw: &'a HostFirewall, ports: &[&'a Port]) -> Result<BTreeMap<&'a str, u16>, CompileError> {
    let vpcs: BTreeSet<&str> = ports.iter().map(|p| p.vpc_id.as_str()).collect();
    let mut zones = BTreeMap::new();
    let mut taken: BTreeMap<u16, &str> = BTreeMap::new();
    for vpc in &vpcs {
        if let Some(&zone) = fw.vpc_zones.get(*vpc) {
            let invalid = |reason: String| CompileError::InvalidVpc {
                vpc: vpc.to_string(),
                reason,
            };
            if !(1..=MAX_ZONE).contains(&zone) {
                return Err(invalid(format!("conntrack zone {zone} is outside 1..={MAX_ZONE}")));
            }
            if let Some(other) = taken.insert(zone, vpc) {
                return Err(invalid(format!("conntrack zone {zone} is also VPC {other:?}'s")));
            }
            zones.insert(*vpc, zone);
        }
    }
    let mut next = 1u16;
    for vpc in vpcs {
        if zones.contains_key(vpc) {
            continue;
        }
        while taken.contains_key(&next) {
            next += 1;
        }
        if next > MAX_ZONE {
            return Err(CompileError::InvalidVpc {
                vpc: vpc.to_string(),
                reason: format!("more than {MAX_ZONE} VPCs on one host"),
            });
        }
        taken.insert(next, vpc);
        zones.insert(vpc, next);
    }
    Ok(zones)
}

/// The nft match for a rule's protocol and ports (EC2 semantics), empty for all protocols.
fn protocol_match(rule: &Rule) -> Result<String, String> {
    let (from, to) = (rule.from_port, rule.to_port);
    Ok(match rule.protocol {
        Protocol::All => String::new(),
        Protocol::Number(n) => format!("ip protocol {n}"),
        Protocol::Tcp | Protocol::Udp => {
            let name = if rule.protocol == Protocol::Tcp { "tcp" } else { "udp" };
            match (from, to) {
                (-1, -1) | (0, 65535) => format!("ip protocol {name}"),
                (from, to) if (0..=65535).contains(&from) && (from..=65535).contains(&to) => {
                    if from == to {
                        format!("{name} dport {from}")
                    } else {
                        format!("{name} dport {from}-{to}")
                    }
                }
                _ => {
                    return Err(format!(
                        "port range {from}..{to} is not within 0..65535 (or -1 for all)"
                    ))
                }
            }
        }
        Protocol::Icmp => match (from, to) {
            (-1, -1) => "ip protocol icmp".into(),
            (kind @ 0..=255, -1) => format!("icmp type {kind}"),
            (kind @ 0..=255, code @ 0..=255) => format!("icmp type {kind} icmp code {code}"),
            _ => {
                return Err(format!(
                    "ICMP type {from} code {to}: each is 0..=255 or -1 (a code needs a type)"
                ))
            }
        },
    })
}

/// Sorted ranges with those inside another range dropped (nft rejects overlapping set elements).
fn normalize(cidrs: &[Ipv4Cidr]) -> Vec<Ipv4Cidr> {
    let mut sorted: Vec<Ipv4Cidr> = cidrs.to_vec();
    sorted.sort_by_key(|c| (c.prefix(), c.addr()));
    let mut kept: Vec<Ipv4Cidr> = Vec::new();
    for cidr in sorted {
        if !kept.iter().any(|k| k.contains(&cidr)) {
            kept.push(cidr);
        }
    }
    kept.sort_by_key(|c| (c.addr(), c.prefix()));
    kept
}

fn cidr_text(cidr: &Ipv4Cidr) -> String {
    if cidr.prefix() == 32 {
        cidr.addr().to_string()
    } else {
        cidr.to_string()
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// A tab-indented nft script being written.
#[derive(Default)]
struct Script {
    out: String,
}

impl Script {
    fn line(&mut self, depth: usize, text: &str) {
        for _ in 0..depth {
            self.out.push('\t');
        }
        self.out.push_str(text);
        self.out.push('\n');
    }
}

/// A named set or map of a table.
struct SetDef {
    name: String,
    /// `type …` or `typeof …`; a map's has ` : `.
    kind: String,
    elements: Vec<String>,
}

impl SetDef {
    fn keyword(&self) -> &'static str {
        if self.kind.contains(" : ") {
            "map"
        } else {
            "set"
        }
    }
}

/// A chain: base chains have a hook line.
struct ChainDef {
    name: String,
    hook: Option<String>,
    rules: Vec<String>,
}

/// One table's sets, maps and chains, in definition order.
struct Table {
    family: &'static str,
    sets: Vec<SetDef>,
    chains: Vec<ChainDef>,
}

impl Table {
    fn new(family: &'static str) -> Table {
        Table {
            family,
            sets: Vec::new(),
            chains: Vec::new(),
        }
    }

    /// A named set, or a map when `kind` holds ` : `.
    fn set(&mut self, name: &str, kind: &str, elements: Vec<String>) {
        self.sets.push(SetDef {
            name: name.into(),
            kind: format!("type {kind}"),
            elements,
        });
    }

    /// A map whose key and value types are those of expressions.
    fn typeof_map(&mut self, name: &str, kind: &str, elements: Vec<String>) {
        self.sets.push(SetDef {
            name: name.into(),
            kind: format!("typeof {kind}"),
            elements,
        });
    }

    fn chain(&mut self, name: &str, hook: Option<&str>, rules: &[String]) {
        self.chains.push(ChainDef {
            name: name.into(),
            hook: hook.map(str::to_string),
            rules: rules.to_vec(),
        });
    }

    fn render(&self, s: &mut Script) {
        s.line(0, &format!("table {} {TABLE} {{", self.family));
        for set in &self.sets {
            s.line(1, &format!("{} {} {{", set.keyword(), set.name));
            s.line(2, &set.kind);
            if !set.elements.is_empty() {
                s.line(2, &format!("elements = {{ {} }}", set.elements.join(", ")));
            }
            s.line(1, "}");
        }
        for chain in &self.chains {
            s.line(1, &format!("chain {} {{", chain.name));
            if let Some(hook) = &chain.hook {
                s.line(2, hook);
            }
            for rule in &chain.rules {
                s.line(2, rule);
            }
            s.line(1, "}");
        }
        s.line(0, "}");
    }
}

/// The (family, kind, name) of every chain, set and map of hearth's tables in an `nft list` output.
fn objects(listing: &str) -> Vec<(&str, &str, &str)> {
    let mut family = None;
    let mut out = Vec::new();
    for line in listing.lines() {
        if let Some(rest) = line.strip_prefix("table ") {
            family = match rest.strip_suffix(&format!(" {TABLE} {{")) {
                Some("bridge") => Some("bridge"),
                Some("ip") => Some("ip"),
                _ => None,
            };
        } else if let (Some(family), Some(rest)) = (family, line.strip_prefix('\t')) {
            for kind in ["chain", "set", "map"] {
                if let Some(name) = rest.strip_prefix(kind).and_then(|r| r.strip_prefix(' ')) {
                    if let Some(name) = name.strip_suffix(" {") {
                        out.push((family, kind, name));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MacAddr;

    fn port(tap: &str, last: u8, vpc: &str, groups: &[&str]) -> Port {
        Port {
            tap: tap.into(),
            mac: MacAddr([2, 0, 0, 0, 0, last]),
            ipv4: Ipv4Addr::new(10, 0, 0, last),
            vpc_id: vpc.into(),
            group_ids: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn group(id: &str, vpc: &str, ingress: Vec<Rule>, egress: Vec<Rule>) -> SecurityGroup {
        SecurityGroup {
            id: id.into(),
            vpc_id: vpc.into(),
            ingress,
            egress,
            remote_members: Vec::new(),
        }
    }

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    fn sample() -> HostFirewall {
        HostFirewall {
            ports: vec![
                port("tap2", 2, "vpc-a", &["sg-web"]),
                port("tap1", 1, "vpc-a", &["sg-default", "sg-web"]),
            ],
            groups: vec![
                group(
                    "sg-web",
                    "vpc-a",
                    vec![
                        Rule::new(Protocol::Tcp, 80, 80).cidr(cidr("0.0.0.0/0")),
                        Rule::new(Protocol::Udp, 1000, 2000)
                            .cidr(cidr("10.0.0.0/8"))
                            .cidr(cidr("10.1.0.0/16"))
                            .cidr(cidr("192.168.1.7/32")),
                        Rule::new(Protocol::Icmp, 8, -1).group("sg-default"),
                    ],
                    vec![Rule::all().cidr(cidr("0.0.0.0/0"))],
                ),
                group(
                    "sg-default",
                    "vpc-a",
                    vec![Rule::all().group("sg-default")],
                    vec![Rule::all().cidr(cidr("0.0.0.0/0"))],
                ),
            ],
            vpc_zones: BTreeMap::new(),
        }
    }

    #[test]
    fn the_script_declares_flushes_then_defines_both_tables() {
        let script = compile(&sample()).unwrap();
        let at = |text: &str| {
            script
                .find(text)
                .unwrap_or_else(|| panic!("{text:?} missing:\n{script}"))
        };
        let declared = at("table bridge hearth {\n\tset ports { type ifname; }\n");
        let flushed = at("flush table bridge hearth\nflush set bridge hearth ports\n");
        let ip_flushed = at("flush table ip hearth\nflush set ip hearth port_addrs\nflush map ip hearth vpc_zone\n");
        let defined = at("table bridge hearth {\n\tset ports {\n\t\ttype ifname\n");
        assert!(declared < flushed && flushed < ip_flushed && ip_flushed < defined);
        assert!(
            !script.contains("delete "),
            "nothing to delete without a previous ruleset"
        );
        assert_eq!(compile(&sample()).unwrap(), script, "deterministic");
    }

    #[test]
    fn objects_the_new_ruleset_lacks_are_deleted_maps_before_chains() {
        let current = "table bridge hearth {\n\tset ports {\n\t\ttype ifname\n\t}\n\n\tmap port_gone {\n\t\ttype \
                       ifname : verdict\n\t}\n\n\tchain port_tap9_egress {\n\t\tcounter drop\n\t}\n\n\tset sg_old_members {\n\
                       \t}\n}\ntable ip hearth {\n\tchain zone {\n\t}\n\tchain old_ip {\n\t}\n}\ntable inet other {\n\tchain x {\n\t}\n}\n";
        let script = compile_replacing(&sample(), current).unwrap();
        let deletes: Vec<&str> = script.lines().filter(|l| l.starts_with("delete ")).collect();
        assert_eq!(
            deletes,
            [
                "delete map bridge hearth port_gone",
                "delete set bridge hearth sg_old_members",
                "delete chain bridge hearth port_tap9_egress",
                "delete chain ip hearth old_ip",
            ]
        );
    }

    #[test]
    fn rules_compile_to_group_chains_with_ec2_meaning() {
        let script = compile(&sample()).unwrap();
        // Ingress: ports, collapsed CIDRs (10.1/16 lies in 10/8), ICMP type, peer group set.
        assert!(script.contains("\t\ttcp dport 80 accept\n"), "{script}");
        assert!(script.contains("\t\tudp dport 1000-2000 ip saddr 10.0.0.0/8 accept\n"));
        assert!(script.contains("\t\tudp dport 1000-2000 ip saddr 192.168.1.7 accept\n"));
        assert!(!script.contains("10.1.0.0/16"));
        assert!(script.contains("\t\ticmp type 8 ip saddr @sg_default_members accept\n"));
        assert!(script.contains("\t\tip saddr @sg_default_members accept\n"));
        // Egress: all traffic goes on to the receiving port's ingress check.
        assert!(script.contains("\tchain sg_web_egress {\n\t\tgoto egress_ok\n\t}\n"));
        // Members of the default group: tap1 only.
        assert!(script.contains("set sg_default_members {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.1 }\n"));
        // The port chains jump to each of the port's groups, then drop.
        assert!(script.contains(
            "chain port_tap1_ingress {\n\t\tjump sg_default_ingress\n\t\tjump sg_web_ingress\n\t\tcounter drop\n"
        ));
        assert!(script.contains("elements = { \"tap1\" : goto port_tap1_ingress, \"tap2\" : goto port_tap2_ingress }"));
    }

    #[test]
    fn anti_spoofing_pins_each_port_to_its_mac_and_address() {
        let script = compile(&sample()).unwrap();
        for line in [
            "elements = { \"tap1\" . 02:00:00:00:00:01, \"tap2\" . 02:00:00:00:00:02 }",
            "elements = { \"tap1\" . 10.0.0.1, \"tap2\" . 10.0.0.2 }",
            "elements = { \"tap1\" . 0.0.0.0, \"tap1\" . 10.0.0.1, \"tap2\" . 0.0.0.0, \"tap2\" . 10.0.0.2 }",
            "elements = { \"tap1\" : 0x00010000, \"tap2\" : 0x00010000 }",
            "meta mark set iifname map @port_mark",
            "iifname . ether saddr != @port_mac counter drop",
            "iifname . arp saddr ether != @port_mac counter drop",
            "iifname . arp saddr ip != @port_arp_ip counter drop",
            "iifname . ip saddr != @port_ip counter drop",
            "udp sport 67 counter drop",
            "ether type != ip ether type != arp counter drop",
        ] {
            assert!(script.contains(&format!("\t\t{line}\n")), "missing {line:?}");
        }
    }

    #[test]
    fn zones_are_stable_when_given_and_fill_gaps_otherwise() {
        let mut fw = sample();
        fw.ports.push(port("tap3", 3, "vpc-b", &[]));
        fw.ports.push(port("tap4", 4, "vpc-c", &[]));
        fw.vpc_zones.insert("vpc-b".into(), 1);
        let script = compile(&fw).unwrap();
        // vpc-b keeps 1, vpc-a and vpc-c get 2 and 3 in id order.
        assert!(script.contains("\"tap3\" : jump vpc_1_only"));
        assert!(script.contains("\"tap1\" : jump vpc_2_only"));
        assert!(script.contains("\"tap4\" : jump vpc_3_only"));
        assert!(script.contains("elements = { 0x00010000 : 1, 0x00020000 : 2, 0x00030000 : 3 }"));
        fw.vpc_zones.insert("vpc-a".into(), 1);
        assert!(matches!(compile(&fw), Err(CompileError::InvalidVpc { .. })));
        fw.vpc_zones.insert("vpc-a".into(), 4096);
        assert!(matches!(compile(&fw), Err(CompileError::InvalidVpc { .. })));
    }

    #[test]
    fn bad_input_is_refused_before_anything_is_written() {
        let mut fw = sample();
        fw.ports[0].tap = "tap\"; flush ruleset".into();
        assert!(matches!(compile(&fw), Err(CompileError::InvalidPort { .. })));

        let mut fw = sample();
        fw.ports[0].group_ids.push("sg-missing".into());
        assert!(matches!(compile(&fw), Err(CompileError::InvalidPort { .. })));

        let mut fw = sample();
        fw.ports[0].mac = MacAddr([1, 0, 0, 0, 0, 9]);
        assert!(matches!(compile(&fw), Err(CompileError::InvalidPort { .. })));

        let mut fw = sample();
        fw.ports[1].mac = fw.ports[0].mac;
        assert!(matches!(compile(&fw), Err(CompileError::InvalidPort { .. })));

        let mut fw = sample();
        fw.groups[0].vpc_id = "vpc-b".into();
        assert!(matches!(compile(&fw), Err(CompileError::InvalidPort { .. })));

        for (protocol, from, to) in [
            (Protocol::Tcp, 10, 5),
            (Protocol::Udp, 0, 65536),
            (Protocol::Icmp, -1, 0),
            (Protocol::Icmp, 256, -1),
        ] {
            let mut fw = sample();
            fw.groups[0]
                .ingress
                .push(Rule::new(protocol, from, to).cidr(cidr("10.0.0.0/8")));
            assert!(
                matches!(compile(&fw), Err(CompileError::InvalidRule { index: 3, .. })),
                "{protocol} {from} {to}"
            );
        }

        let mut fw = sample();
        fw.groups[0].ingress.push(Rule::all().group("sg bad"));
        assert!(matches!(compile(&fw), Err(CompileError::InvalidRule { .. })));

        let mut fw = sample();
        fw.groups.push(group("web", "vpc-a", vec![], vec![]));
        assert!(matches!(compile(&fw), Err(CompileError::InvalidGroup { .. })));
    }

    #[test]
    fn peer_groups_without_local_members_still_get_a_set() {
        let mut fw = sample();
        fw.groups[0]
            .ingress
            .push(Rule::new(Protocol::Tcp, 22, 22).group("sg-bastion"));
        let script = compile(&fw).unwrap();
        assert!(script.contains("\tset sg_bastion_members {\n\t\ttype ipv4_addr\n\t}\n"));
        fw.groups.push(SecurityGroup {
            remote_members: vec![Ipv4Addr::new(10, 9, 9, 9)],
            ..group("sg-bastion", "vpc-a", vec![], vec![])
        });
        let script = compile(&fw).unwrap();
        assert!(script.contains("set sg_bastion_members {\n\t\ttype ipv4_addr\n\t\telements = { 10.9.9.9 }\n"));
    }

    #[test]
    fn protocols_other_than_tcp_udp_icmp_match_all_their_traffic() {
        let rule = Rule::new(Protocol::Number(47), 5, 6);
        assert_eq!(protocol_match(&rule).unwrap(), "ip protocol 47");
        assert_eq!(
            protocol_match(&Rule::new(Protocol::Tcp, 0, 65535)).unwrap(),
            "ip protocol tcp"
        );
        assert_eq!(
            protocol_match(&Rule::new(Protocol::Icmp, 3, 4)).unwrap(),
            "icmp type 3 icmp code 4"
        );
        assert_eq!(protocol_match(&Rule::all()).unwrap(), "");
    }
}
