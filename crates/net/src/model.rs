//! The security-group model the agent receives from hearthd: this host's ports and the groups they use.
//!
//! Everything here is plain data with serde (JSON) support; [`crate::compile`] turns it into an nft
//! script. The compiler compiles what it is given: EC2's defaults (the `default` group's rules, a new
//! group's allow-all egress) are hearthd's job.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Everything that decides the security-group firewall of one host: replaced as a whole at every change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFirewall {
    /// The instance network interfaces (taps) on this host.
    pub ports: Vec<Port>,
    /// The security groups that the ports use, and those that rules name as a source.
    pub groups: Vec<SecurityGroup>,
    /// Conntrack zone (1..=4095) per VPC id. Keep a VPC's zone stable while it has ports on the host (the
    /// agent's bridge number is a good choice): connections are tracked per zone, so renumbering a VPC
    /// turns its established flows into new ones. VPCs missing here get the lowest free zones, in id order.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vpc_zones: BTreeMap<String, u16>,
}

/// One instance network interface: a tap enslaved to its subnet's bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// Host-side interface name (the tap hearth-vmm attaches virtio-net to), at most 15 bytes of
    /// `[A-Za-z0-9_.-]`.
    pub tap: String,
    /// The guest's MAC address: the only source MAC accepted from the tap.
    pub mac: MacAddr,
    /// The guest's private IPv4 address: the only source address accepted from the tap.
    pub ipv4: Ipv4Addr,
    /// The VPC the port belongs to; traffic between ports of different VPCs is dropped.
    pub vpc_id: String,
    /// The security groups of the port (their rules allow the union).
    pub group_ids: Vec<String>,
}

/// A security group: allow-only, stateful rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    /// Group id (`sg-…`): 1 to 64 characters of `[A-Za-z0-9_-]`.
    pub id: String,
    /// The VPC of the group; its member ports must be in the same VPC.
    pub vpc_id: String,
    /// Rules that allow traffic to a member port.
    #[serde(default)]
    pub ingress: Vec<Rule>,
    /// Rules that allow traffic from a member port.
    #[serde(default)]
    pub egress: Vec<Rule>,
    /// Addresses of members on other hosts (local members are the ports that list the group), so that
    /// rules naming this group as a source match them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_members: Vec<Ipv4Addr>,
}

/// One allow rule. In an egress rule, `sources` and `source_groups` are the destinations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// IP protocol.
    pub protocol: Protocol,
    /// TCP/UDP: first port of the range; ICMP: the ICMP type. -1 (the default) means all.
    #[serde(default = "all_ports")]
    pub from_port: i32,
    /// TCP/UDP: last port of the range; ICMP: the ICMP code. -1 (the default) means all.
    #[serde(default = "all_ports")]
    pub to_port: i32,
    /// Peer address ranges (ingress: source, egress: destination).
    #[serde(default)]
    pub sources: Vec<Ipv4Cidr>,
    /// Peer security groups (ingress: source, egress: destination): their members' addresses.
    #[serde(default)]
    pub source_groups: Vec<String>,
}

fn all_ports() -> i32 {
    -1
}

impl Rule {
    /// A rule for `protocol` with EC2's `FromPort`/`ToPort` (ICMP: type/code; -1: all) and no peer yet.
    pub fn new(protocol: Protocol, from_port: i32, to_port: i32) -> Rule {
        Rule {
            protocol,
            from_port,
            to_port,
            sources: Vec::new(),
            source_groups: Vec::new(),
        }
    }

    /// All protocols and ports (EC2's `IpProtocol=-1`), no peer yet.
    pub fn all() -> Rule {
        Rule::new(Protocol::All, -1, -1)
    }

    /// Adds a peer address range.
    pub fn cidr(mut self, cidr: Ipv4Cidr) -> Rule {
        self.sources.push(cidr);
        self
    }

    /// Adds a peer security group.
    pub fn group(mut self, group_id: &str) -> Rule {
        self.source_groups.push(group_id.to_string());
        self
    }
}

/// IP protocol of a rule. Parses EC2's names and numbers: `tcp`/`6`, `udp`/`17`, `icmp`/`1`, `-1`/`all`,
/// any other protocol number 0..=255.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Every protocol (EC2 `-1`); ports are ignored.
    All,
    /// TCP with a destination port range.
    Tcp,
    /// UDP with a destination port range.
    Udp,
    /// ICMP with a type and code.
    Icmp,
    /// Another IP protocol number; as in EC2, all of its traffic matches (no ports).
    Number(u8),
}

impl Protocol {
    /// From an IP protocol number (6, 17 and 1 become Tcp, Udp and Icmp).
    pub fn from_number(number: u8) -> Protocol {
        match number {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            1 => Protocol::Icmp,
            n => Protocol::Number(n),
        }
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "-1" | "all" => Ok(Protocol::All),
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "icmp" => Ok(Protocol::Icmp),
            other => other
                .parse::<u8>()
                .map(Protocol::from_number)
                .map_err(|_| format!("unknown IP protocol {s:?} (tcp, udp, icmp, -1/all or 0..=255)")),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::All => f.write_str("-1"),
            Protocol::Tcp => f.write_str("tcp"),
            Protocol::Udp => f.write_str("udp"),
            Protocol::Icmp => f.write_str("icmp"),
            Protocol::Number(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ProtocolVisitor;
        impl Visitor<'_> for ProtocolVisitor {
            type Value = Protocol;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an IP protocol name or number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Protocol, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Protocol, E> {
                match v {
                    -1 => Ok(Protocol::All),
                    0..=255 => Ok(Protocol::from_number(v as u8)),
                    _ => Err(E::custom(format!("IP protocol number {v} out of range"))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Protocol, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
        }
        deserializer.deserialize_any(ProtocolVisitor)
    }
}

/// An IPv4 network in CIDR notation (`10.0.0.0/16`; a bare address is a /32). Host bits are cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// The network of `addr` with `prefix` bits (host bits cleared); `None` if `prefix` > 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Cidr> {
        (prefix <= 32).then(|| Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `other` lies entirely inside this network.
    pub fn contains(&self, other: &Ipv4Cidr) -> bool {
        other.prefix >= self.prefix && u32::from(other.addr) & mask(self.prefix) == u32::from(self.addr)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid IPv4 CIDR {s:?}");
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, prefix.parse::<u8>().map_err(|_| bad())?),
            None => (s, 32),
        };
        Ipv4Cidr::new(addr.parse().map_err(|_| bad())?, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// An Ethernet MAC address. Serialized as `"aa:bb:cc:dd:ee:ff"`; deserialized from that or from an
/// array of 6 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Whether this is a group (multicast or broadcast) address, which no port may have.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid MAC address {s:?}");
        let mut bytes = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MacVisitor;
        impl<'de> Visitor<'de> for MacVisitor {
            type Value = MacAddr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a MAC address \"aa:bb:cc:dd:ee:ff\" or 6 bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MacAddr, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MacAddr, A::Error> {
                let mut bytes = [0u8; 6];
                for (i, byte) in bytes.iter_mut().enumerate() {
                    *byte = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                if seq.next_element::<u8>()?.is_some() {
                    return Err(de::Error::invalid_length(7, &self));
                }
                Ok(MacAddr(bytes))
            }
        }
        deserializer.deserialize_any(MacVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_parse_like_ec2() {
        for (text, want) in [
            ("\"-1\"", Protocol::All),
            ("-1", Protocol::All),
            ("\"all\"", Protocol::All),
            ("\"TCP\"", Protocol::Tcp),
            ("\"6\"", Protocol::Tcp),
            ("17", Protocol::Udp),
            ("\"icmp\"", Protocol::Icmp),
            ("\"1\"", Protocol::Icmp),
            ("\"47\"", Protocol::Number(47)),
        ] {
            assert_eq!(serde_json::from_str::<Protocol>(text).unwrap(), want, "{text}");
        }
        assert!(serde_json::from_str::<Protocol>("\"sctp\"").is_err());
        assert!(serde_json::from_str::<Protocol>("256").is_err());
        assert_eq!(serde_json::to_string(&Protocol::All).unwrap(), "\"-1\"");
        assert_eq!(serde_json::to_string(&Protocol::Number(47)).unwrap(), "\"47\"");
    }

    #[test]
    fn cidrs_and_macs_round_trip() {
        let cidr: Ipv4Cidr = "10.1.2.3/16".parse().unwrap();
        assert_eq!(cidr.to_string(), "10.1.0.0/16");
        assert_eq!("10.0.0.7".parse::<Ipv4Cidr>().unwrap().to_string(), "10.0.0.7/32");
        assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!(cidr.contains(&"10.1.200.0/24".parse().unwrap()));
        assert!(!cidr.contains(&"10.0.0.0/8".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().contains(&cidr));

        let mac: MacAddr = serde_json::from_str("\"02:AA:00:00:00:01\"").unwrap();
        assert_eq!(serde_json::to_string(&mac).unwrap(), "\"02:aa:00:00:00:01\"");
        let from_bytes: MacAddr = serde_json::from_str("[2, 170, 0, 0, 0, 1]").unwrap();
        assert_eq!(from_bytes, mac);
        assert!(serde_json::from_str::<MacAddr>("\"02:aa:00:00:00\"").is_err());
        assert!("ff:ff:ff:ff:ff:ff".parse::<MacAddr>().unwrap().is_multicast());
    }

    #[test]
    fn a_host_firewall_reads_from_json_with_defaults() {
        let json = r#"{
            "ports": [{"tap": "tap0", "mac": "02:00:00:00:00:01", "ipv4": "10.0.0.5",
                       "vpc_id": "vpc-1", "group_ids": ["sg-1"]}],
            "groups": [{"id": "sg-1", "vpc_id": "vpc-1",
                        "ingress": [{"protocol": "tcp", "from_port": 22, "to_port": 22,
                                     "sources": ["0.0.0.0/0"]},
                                    {"protocol": "-1", "source_groups": ["sg-1"]}],
                        "egress": [{"protocol": "-1", "sources": ["0.0.0.0/0"]}]}]
        }"#;
        let fw: HostFirewall = serde_json::from_str(json).unwrap();
        assert_eq!(fw.groups[0].ingress[1], Rule::all().group("sg-1"));
        assert!(fw.vpc_zones.is_empty());
        let again: HostFirewall = serde_json::from_str(&serde_json::to_string(&fw).unwrap()).unwrap();
        assert_eq!(again, fw);
    }
}
