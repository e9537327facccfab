//! The host's instance network, converged from each Sync answer (docs/networking.md).
//!
//! Per subnet with a port here: a bridge `hbr<n>` holding the subnet's router address (`.1`,
//! with a MAC derived from the subnet number, so it is the same on every host) and
//! 169.254.169.254, a DHCP server and a metadata-service listener bound to it, and a VXLAN
//! port `hvx<n>` (VNI `n`) to the other hosts with ports in the subnet. Per instance: a tap
//! `ht<mac>` enslaved to its subnet's bridge. Per VPC: a routing table (1000 + VPC number)
//! with the VPC's subnets here and the uplink's default route, chosen by `ip rule`s on the
//! bridges and on the VPC's packet mark, so that two VPCs with the same CIDR never meet and
//! the host's own routing table never reaches an instance. Security groups, anti-spoofing,
//! Elastic IP NAT and the host's protection are one `nft -f` transaction.
//!
//! Everything is declarative: each pass makes the host exactly what the answer says and
//! deletes the links, rules, routes and listeners it no longer names.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;

use hearth_api::v1::{DesiredInstance, HostNetwork};
use hearth_net::dhcp::{DhcpServer, DhcpTask, Lease, Leases};
use hearth_net::imds::{Imds, ImdsInstance, ImdsListener};
use hearth_net::link::{Links, Route, RoutingRule};
use hearth_net::{HostFirewall, Ipv4Cidr, MacAddr, Nft, MARK_VPC_MASK, MARK_VPC_SHIFT};

/// Bridge name prefix (`hbr<subnet number>`).
pub const BRIDGE_PREFIX: &str = "hbr";
/// VXLAN device prefix (`hvx<subnet number>`).
pub const VXLAN_PREFIX: &str = "hvx";
/// Tap prefix (`ht<last five MAC bytes>`).
pub const TAP_PREFIX: &str = "ht";
/// The VPC routing tables: this plus the VPC number.
pub const TABLE_BASE: u32 = 1000;
/// hearth's `ip rule` priorities.
pub const RULE_PRIORITIES: std::ops::Range<u32> = 10_000..20_000;
/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// The metadata service's address.
pub const IMDS_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The host table: Elastic IP NAT and the host's protection from its instances.
pub const HOST_TABLE: &str = "hearth_host";
/// Bytes VXLAN adds to a frame (outer Ethernet, IPv4, UDP, VXLAN).
const VXLAN_OVERHEAD: u16 = 50;

/// How the host's network is set up (agent flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Build instance networks at all (off: instances get no network interface).
    pub enabled: bool,
    /// This host's address on the network between hosts (VXLAN).
    pub underlay_ip: Option<Ipv4Addr>,
    /// The interface holding `underlay_ip` (VXLAN's underlay device).
    pub underlay_dev: Option<String>,
    /// The interface to the public network (Elastic IPs).
    pub uplink: Option<String>,
    /// The router on the uplink.
    pub uplink_gateway: Option<Ipv4Addr>,
    /// The MTU of the underlay (guests get it minus the VXLAN overhead).
    pub underlay_mtu: u16,
}

/// Why the network could not be converged (the next answer tries again).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink change failed.
    #[error(transparent)]
    Link(#[from] hearth_net::link::LinkError),
    /// The firewall could not be compiled or applied.
    #[error(transparent)]
    Nft(#[from] hearth_net::NftError),
    /// The answer is malformed.
    #[error("bad network answer: {0}")]
    Answer(String),
    /// A socket (DHCP, metadata) or sysctl failed.
    #[error("{what}: {source}")]
    Io {
        /// What.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Io { what, source }
}

/// A subnet as this host builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SubnetPlan {
    id: String,
    cidr: Ipv4Cidr,
    gateway: Ipv4Addr,
    number: u32,
    vpc_number: u32,
    peers: Vec<Ipv4Addr>,
    neighbors: Vec<(Ipv4Addr, MacAddr)>,
}

impl SubnetPlan {
    fn bridge(&self) -> String {
        format!("{BRIDGE_PREFIX}{}", self.number)
    }

    fn vxlan(&self) -> String {
        format!("{VXLAN_PREFIX}{}", self.number)
    }

    fn table(&self) -> u32 {
        TABLE_BASE + self.vpc_number
    }
}

/// The router's MAC of a subnet: locally administered, the same on every host (so that a
/// guest's ARP cache stays right whichever host answers), never an instance's (those start
/// with `02`).
pub fn gateway_mac(subnet_number: u32) -> MacAddr {
    let n = subnet_number.to_be_bytes();
    MacAddr([0x06, 0x68, 0x62, n[1], n[2], n[3]])
}

/// The instance network of this host.
pub struct HostNet {
    config: NetworkConfig,
    links: Option<Links>,
    nft: Nft,
    imds: Arc<Imds>,
    /// Per bridge: its ifindex when the servers were bound, the leases, the DHCP task, the
    /// metadata listener.
    bridges: HashMap<String, BridgeServers>,
    /// Routing tables filled by the last pass.
    tables: BTreeSet<u32>,
    /// Elastic IPs on the uplink after the last pass.
    elastic: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// The last input applied successfully, and when: a pass with the same input does nothing
    /// for a minute, then converges again (repairs drift: a flapped uplink, a deleted link).
    applied: Option<(NetInput, std::time::Instant)>,
}

/// What of a Sync answer the network depends on.
#[derive(Debug, Clone, PartialEq)]
struct NetInput {
    network: HostNetwork,
    interfaces: Vec<InstanceNet>,
}

/// An instance's interfaces, metadata-service facts and metadata.
type InstanceNet = (
    String,
    Vec<hearth_api::v1::NetworkInterface>,
    Option<hearth_api::v1::ImdsInfo>,
    Option<hearth_api::v1::InstanceMetadata>,
);

/// How long an applied input is trusted before the next pass converges again.
const REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

struct BridgeServers {
    ifindex: u32,
    leases: Arc<Leases>,
    _dhcp: DhcpTask,
    _imds: ImdsListener,
}

impl HostNet {
    /// A host network with `config`; nothing changes before the first `apply`.
    pub fn new(config: NetworkConfig) -> HostNet {
        HostNet {
            config,
            links: None,
            nft: Nft::host(),
            imds: Imds::new(),
            bridges: HashMap::new(),
            tables: BTreeSet::new(),
            elastic: BTreeMap::new(),
            applied: None,
        }
    }

    /// Whether instance networks are built.
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// The configuration.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    fn links(&mut self) -> Result<Links, NetError> {
        if self.links.is_none() {
            self.links = Some(Links::new()?);
        }
        Ok(self.links.clone().expect("just set"))
    }

    /// Makes the host's network what `network` and the instances' interfaces say. Taps of
    /// instances that should run exist when this returns.
    pub async fn apply(&mut self, network: &HostNetwork, instances: &[DesiredInstance]) -> Result<(), NetError> {
        if !self.config.enabled {
            return Ok(());
        }
        let input = NetInput {
            network: network.clone(),
            interfaces: instances
                .iter()
                .map(|i| {
                    (
                        i.instance_id.clone(),
                        i.interfaces.clone(),
                        i.imds.clone(),
                        i.metadata.clone(),
                    )
                })
                .collect(),
        };
        if self
            .applied
            .as_ref()
            .is_some_and(|(applied, at)| *applied == input && at.elapsed() < REFRESH)
        {
            return Ok(());
        }
        let result = self.converge(network, instances).await;
        self.applied = match result {
            Ok(()) => Some((input, std::time::Instant::now())),
            Err(_) => None,
        };
        result
    }

    async fn converge(&mut self, network: &HostNetwork, instances: &[DesiredInstance]) -> Result<(), NetError> {
        let links = self.links()?;
        let subnets = parse_subnets(network)?;
        let firewall: HostFirewall = if network.firewall_json.is_empty() {
            HostFirewall::default()
        } else {
            serde_json::from_str(&network.firewall_json).map_err(|e| NetError::Answer(format!("firewall: {e}")))?
        };
        let by_id: BTreeMap<&str, &SubnetPlan> = subnets.iter().map(|s| (s.id.as_str(), s)).collect();
        if !subnets.is_empty() {
            // Forwarding only on hearth's interfaces, not the host's others: the host routes
            // for its VPCs, not between its other networks.
            if let Some(uplink) = &self.config.uplink {
                sysctl(&format!("net/ipv4/conf/{uplink}/forwarding"), "1")?;
            }
            // Loose at most: replies of the metadata service and DHCP leave through the
            // bridge they are bound to, whatever the main table says (see hearth_net::imds).
            let all = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter").unwrap_or_default();
            if all.trim() == "1" {
                sysctl("net/ipv4/conf/all/rp_filter", "2")?;
            }
        }

        // Bridges, their addresses and VXLAN ports. With an underlay every guest gets the VXLAN
        // MTU from the start (a subnet may span hosts later).
        let guest_mtu: Option<u16> = self
            .config
            .underlay_ip
            .map(|_| self.config.underlay_mtu.saturating_sub(VXLAN_OVERHEAD));
        for subnet in &subnets {
            let bridge = subnet.bridge();
            links.ensure_bridge(&bridge).await?;
            links.set_mac(&bridge, gateway_mac(subnet.number)).await?;
            links
                .set_addresses(
                    &bridge,
                    &[(subnet.gateway, subnet.cidr.prefix(), true), (IMDS_ADDR, 32, true)],
                )
                .await?;
            for (key, value) in [
                ("rp_filter", "0"),
                ("accept_local", "1"),
                ("arp_ignore", "1"),
                ("forwarding", "1"),
            ] {
                sysctl(&format!("net/ipv4/conf/{bridge}/{key}"), value)?;
            }
            links.set_up(&bridge).await?;
            let vxlan = subnet.vxlan();
            match (self.config.underlay_ip, subnet.peers.is_empty()) {
                (Some(local), false) => {
                    links
                        .ensure_vxlan(
                            &vxlan,
                            subnet.number,
                            local,
                            VXLAN_PORT,
                            self.config.underlay_dev.as_deref(),
                        )
                        .await?;
                    links.set_master(&vxlan, Some(&bridge)).await?;
                    links.set_up(&vxlan).await?;
                    links.set_flood_peers(&vxlan, &subnet.peers).await?;
                    if let Some(mtu) = guest_mtu {
                        links.set_mtu(&vxlan, u32::from(mtu)).await?;
                    }
                }
                _ => {
                    links.delete_link(&vxlan).await?;
                }
            }
            // Instances behind the VXLAN port are known, not ARPed for: their ARP answers
            // would go to the router's MAC, which is this host's own on every host.
            links.set_neighbors(&bridge, &subnet.neighbors).await?;
        }

        // Elastic IPs (their NAT is in the host table).
        let mut elastic: Vec<(Ipv4Addr, Ipv4Addr, &SubnetPlan)> = Vec::new();
        for eip in &network.elastic_ips {
            let public: Ipv4Addr = parse(&eip.public_ip, "elastic ip")?;
            let private: Ipv4Addr = parse(&eip.private_ip, "private ip")?;
            let subnet = by_id
                .get(eip.subnet_id.as_str())
                .ok_or_else(|| NetError::Answer(format!("elastic ip {public}: unknown subnet {}", eip.subnet_id)))?;
            elastic.push((public, private, subnet));
        }
        // The firewall and the host table, one transaction, before any tap joins a bridge: a
        // port is never on a bridge without its rules (a failure stops here, before the taps).
        let nft = self.nft.clone();
        let host_table = host_table(&self.config, &subnets, &elastic);
        let has_ports = !firewall.ports.is_empty();
        tokio::task::spawn_blocking(move || -> Result<(), NetError> {
            let current = nft.current()?.unwrap_or_default();
            let mut script = if has_ports {
                nft.enable_br_netfilter()?;
                hearth_net::compile_replacing(&firewall, &current).map_err(hearth_net::NftError::from)?
            } else {
                hearth_net::removal_script()
            };
            script.push_str(&host_table);
            nft.apply(&script)?;
            Ok(())
        })
        .await
        .map_err(|e| NetError::Answer(format!("firewall task: {e}")))??;

        // Taps.
        let mut taps: BTreeSet<String> = BTreeSet::new();
        for instance in instances {
            for interface in &instance.interfaces {
                let subnet = by_id.get(interface.subnet_id.as_str()).ok_or_else(|| {
                    NetError::Answer(format!("{}: unknown subnet {}", interface.tap, interface.subnet_id))
                })?;
                links.ensure_tap(&interface.tap).await?;
                links.set_master(&interface.tap, Some(&subnet.bridge())).await?;
                links.set_up(&interface.tap).await?;
                taps.insert(interface.tap.clone());
            }
        }

        // What is no longer named goes: taps first, then VXLAN ports and bridges.
        let wanted_bridges: BTreeSet<String> = subnets.iter().map(SubnetPlan::bridge).collect();
        let wanted_vxlans: BTreeSet<String> = subnets
            .iter()
            .filter(|s| self.config.underlay_ip.is_some() && !s.peers.is_empty())
            .map(SubnetPlan::vxlan)
            .collect();
        for tap in links.link_names(TAP_PREFIX).await? {
            if !taps.contains(&tap) {
                links.delete_link(&tap).await?;
            }
        }
        for vxlan in links.link_names(VXLAN_PREFIX).await? {
            if !wanted_vxlans.contains(&vxlan) {
                links.delete_link(&vxlan).await?;
            }
        }
        self.bridges.retain(|bridge, _| wanted_bridges.contains(bridge));
        for bridge in links.link_names(BRIDGE_PREFIX).await? {
            if !wanted_bridges.contains(&bridge) {
                links.delete_link(&bridge).await?;
            }
        }

        // Routing: a table per VPC, chosen by the bridges and by the VPC mark (Elastic IP
        // traffic from the uplink, marked in the host table).
        let mut tables: BTreeMap<u32, Vec<Route>> = BTreeMap::new();
        let mut rules: Vec<RoutingRule> = Vec::new();
        for subnet in &subnets {
            let bridge = subnet.bridge();
            tables.entry(subnet.table()).or_default().push(Route {
                dst: subnet.cidr,
                dev: bridge.clone(),
                gateway: None,
                src: Some(subnet.gateway),
            });
            for (iif, oif) in [(Some(bridge.clone()), None), (None, Some(bridge.clone()))] {
                rules.push(RoutingRule {
                    priority: RULE_PRIORITIES.start + 2 * subnet.number % 5000,
                    iif,
                    oif,
                    fwmark: None,
                    table: subnet.table(),
                });
            }
        }
        let vpcs: BTreeSet<u32> = subnets.iter().map(|s| s.vpc_number).collect();
        for vpc in &vpcs {
            let table = TABLE_BASE + vpc;
            if let (Some(uplink), Some(gateway)) = (&self.config.uplink, self.config.uplink_gateway) {
                tables.entry(table).or_default().push(Route {
                    dst: Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0).expect("0/0"),
                    dev: uplink.clone(),
                    gateway: Some(gateway),
                    src: None,
                });
            }
            // Only for packets from the uplink: frames from ports carry the VPC mark too, and
            // so do the VXLAN packets that encapsulate them (the mark survives the tunnel),
            // which must follow the main table to the underlay.
            if let Some(uplink) = &self.config.uplink {
                rules.push(RoutingRule {
                    priority: RULE_PRIORITIES.start + 9000 + vpc % 1000,
                    iif: Some(uplink.clone()),
                    oif: None,
                    fwmark: Some((vpc << MARK_VPC_SHIFT, MARK_VPC_MASK)),
                    table,
                });
            }
        }
        // Rules with the same priority are fine for the kernel, but keep them apart.
        dedup_priorities(&mut rules);
        for (table, routes) in &tables {
            links.set_routes(*table, routes).await?;
        }
        for stale in self.tables.difference(&tables.keys().copied().collect()) {
            links.set_routes(*stale, &[]).await?;
        }
        self.tables = tables.keys().copied().collect();
        links.set_rules(RULE_PRIORITIES, &rules).await?;

        // Each Elastic IP becomes an address of the uplink (/32, noprefixroute marks ours) only
        // now that its DNAT exists, so that the uplink's network finds it here; a gratuitous
        // ARP when it arrives.
        let uplink = self.config.uplink.clone();
        if let Some(uplink) = &uplink {
            let current = links.addresses(uplink).await?;
            let mut wanted: Vec<(Ipv4Addr, u8, bool)> = current
                .iter()
                .copied()
                .filter(|(_, prefix, ours)| !(*prefix == 32 && *ours))
                .collect();
            wanted.extend(elastic.iter().map(|(public, _, _)| (*public, 32, true)));
            links.set_addresses(uplink, &wanted).await?;
        }

        if let (Some(uplink), Some(_)) = (&uplink, self.config.uplink_gateway) {
            let now: BTreeMap<Ipv4Addr, Ipv4Addr> =
                elastic.iter().map(|(public, private, _)| (*public, *private)).collect();
            if let Some(mac) = link_mac(uplink) {
                for new in now.keys().filter(|public| !self.elastic.contains_key(public)) {
                    links.send_gratuitous_arp(uplink, *new, mac).await?;
                }
            }
            // An address that moved or went: the connections tracked through it would keep
            // their old translation until they expire; cut them, so that its traffic goes
            // where the address is now (as moving an Elastic IP does in EC2).
            let moved: Vec<Ipv4Addr> = self
                .elastic
                .iter()
                .filter(|(public, private)| now.get(public) != Some(private))
                .map(|(public, _)| *public)
                .collect();
            if !moved.is_empty() {
                tokio::task::spawn_blocking(move || forget_connections(&moved))
                    .await
                    .map_err(|e| NetError::Answer(format!("conntrack task: {e}")))?;
            }
            self.elastic = now;
        }

        // DHCP and the metadata service, per bridge.
        let mut leases: HashMap<String, HashMap<MacAddr, Lease>> = HashMap::new();
        let mut metadata: HashMap<String, Vec<ImdsInstance>> = HashMap::new();
        for instance in instances {
            for interface in &instance.interfaces {
                let Some(subnet) = by_id.get(interface.subnet_id.as_str()) else {
                    continue;
                };
                let mac: MacAddr = parse(&interface.mac, "mac")?;
                let ip: Ipv4Addr = parse(&interface.private_ip, "private ip")?;
                let mut lease = Lease::new(ip, subnet.cidr.prefix());
                lease.router = Some(subnet.gateway);
                lease.dns = interface.dns.iter().filter_map(|d| d.parse().ok()).collect();
                lease.hostname = instance.metadata.as_ref().map(|m| m.hostname.clone());
                lease.domain_name = Some(hearth_net::imds::DOMAIN.to_string());
                lease.mtu = guest_mtu;
                leases.entry(subnet.bridge()).or_default().insert(mac, lease);
                metadata.entry(subnet.bridge()).or_default().push(imds_instance(
                    instance,
                    interface,
                    subnet.cidr,
                    mac,
                    ip,
                ));
            }
        }
        for subnet in &subnets {
            let bridge = subnet.bridge();
            let ifindex = links.ifindex(&bridge).await?.unwrap_or(0);
            // A re-created bridge drops its bound sockets: bind again.
            if self.bridges.get(&bridge).is_some_and(|s| s.ifindex != ifindex) {
                self.bridges.remove(&bridge);
            }
            if !self.bridges.contains_key(&bridge) {
                let table = Arc::new(Leases::new());
                let dhcp = DhcpServer::bind(&bridge, subnet.gateway, Arc::clone(&table))
                    .map_err(io_error(format!("DHCP server on {bridge}")))?
                    .spawn();
                let imds = self
                    .imds
                    .listen(&bridge, IMDS_ADDR, 80)
                    .map_err(io_error(format!("metadata service on {bridge}")))?;
                self.bridges.insert(
                    bridge.clone(),
                    BridgeServers {
                        ifindex,
                        leases: table,
                        _dhcp: dhcp,
                        _imds: imds,
                    },
                );
            }
            if let Some(servers) = self.bridges.get(&bridge) {
                servers.leases.set(leases.remove(&bridge).unwrap_or_default());
            }
        }
        self.imds.set_all(metadata);
        Ok(())
    }
}

fn parse<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, NetError> {
    text.parse()
        .map_err(|_| NetError::Answer(format!("{what} {text:?} does not parse")))
}

fn parse_subnets(network: &HostNetwork) -> Result<Vec<SubnetPlan>, NetError> {
    network
        .subnets
        .iter()
        .map(|s| {
            Ok(SubnetPlan {
                id: s.subnet_id.clone(),
                cidr: parse(&s.cidr, "subnet cidr")?,
                gateway: parse(&s.gateway, "gateway")?,
                number: s.number,
                vpc_number: s.vpc_number,
                peers: s
                    .peers
                    .iter()
                    .map(|p| parse(p, "peer"))
                    .collect::<Result<Vec<Ipv4Addr>, NetError>>()?,
                neighbors: s
                    .neighbors
                    .iter()
                    .map(|n| Ok((parse(&n.ip, "neighbor ip")?, parse(&n.mac, "neighbor mac")?)))
                    .collect::<Result<Vec<(Ipv4Addr, MacAddr)>, NetError>>()?,
            })
        })
        .collect()
}

fn dedup_priorities(rules: &mut [RoutingRule]) {
    let mut used = BTreeSet::new();
    for rule in rules.iter_mut() {
        while !used.insert(rule.priority) {
            rule.priority += 1;
        }
    }
}

fn sysctl(path: &str, value: &str) -> Result<(), NetError> {
    let full = format!("/proc/sys/{path}");
    if std::fs::read_to_string(&full).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&full, value).map_err(io_error(format!("sysctl {path}={value}")))
}

/// Deletes the conntrack entries of connections to and from `addresses` (`conntrack -D`, from
/// conntrack-tools: inbound flows have the address as original destination, outbound ones as
/// reply destination). Failures are logged: the entries expire by themselves anyway.
fn forget_connections(addresses: &[Ipv4Addr]) {
    for address in addresses {
        for direction in ["--orig-dst", "--reply-dst"] {
            let output = std::process::Command::new("conntrack")
                .args(["-D", direction, &address.to_string()])
                .stdin(std::process::Stdio::null())
                .output();
            match output {
                // Exit status 1 with "0 flow entries": nothing to delete.
                Ok(out) if out.status.success() || String::from_utf8_lossy(&out.stderr).contains("0 flow entries") => {}
                Ok(out) => eprintln!(
                    "hearth-agent: conntrack -D {direction} {address}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => eprintln!("hearth-agent: conntrack -D {direction} {address}: {e} (install conntrack)"),
            }
        }
    }
}

fn link_mac(dev: &str) -> Option<MacAddr> {
    std::fs::read_to_string(format!("/sys/class/net/{dev}/address"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn imds_instance(
    instance: &DesiredInstance,
    interface: &hearth_api::v1::NetworkInterface,
    cidr: Ipv4Cidr,
    mac: MacAddr,
    ip: Ipv4Addr,
) -> ImdsInstance {
    let metadata = instance.metadata.clone().unwrap_or_default();
    let info = instance.imds.clone().unwrap_or_default();
    ImdsInstance {
        instance_id: instance.instance_id.clone(),
        instance_type: info.instance_type,
        ami_id: info.ami_id,
        hostname: metadata.hostname,
        local_ipv4: ip,
        public_ipv4: interface.public_ip.parse().ok(),
        mac,
        availability_zone: info.availability_zone,
        region: info.region,
        vpc_id: interface.vpc_id.clone(),
        subnet_id: interface.subnet_id.clone(),
        subnet_cidr: cidr,
        public_keys: metadata
            .public_keys
            .iter()
            .enumerate()
            .map(|(n, key)| {
                // The key's comment names it, else its position.
                let name = key
                    .split_whitespace()
                    .nth(2)
                    .map_or_else(|| format!("key-{n}"), str::to_string);
                (name, key.clone())
            })
            .collect(),
        user_data: (!metadata.user_data.is_empty()).then_some(metadata.user_data),
        security_groups: interface.security_group_names.clone(),
        security_group_ids: interface.security_group_ids.clone(),
        http_tokens_required: info.http_tokens_required,
        http_endpoint_enabled: info.http_endpoint_enabled,
        http_put_response_hop_limit: u8::try_from(info.http_put_response_hop_limit.max(1)).unwrap_or(64),
    }
}

/// `table ip hearth_host`, replaced whole: Elastic IP DNAT/SNAT on the uplink, the VPC mark
/// that routes DNAT'd traffic into its VPC's table, and the filters that keep instances
/// off the host and the uplink unless an Elastic IP carries them.
fn host_table(config: &NetworkConfig, subnets: &[SubnetPlan], elastic: &[(Ipv4Addr, Ipv4Addr, &SubnetPlan)]) -> String {
    let mut s = format!(
        "table ip {HOST_TABLE} {{}}\ndelete table ip {HOST_TABLE}\ntable bridge {HOST_TABLE} {{}}\ndelete table bridge {HOST_TABLE}\n"
    );
    if subnets.is_empty() {
        return s;
    }
    let list = |items: Vec<String>| items.join(", ");
    let elements = |items: Vec<String>| {
        if items.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", items.join(", "))
        }
    };
    let gateways: BTreeSet<String> = subnets.iter().map(|b| b.gateway.to_string()).collect();
    let gateways: Vec<String> = gateways.into_iter().collect();
    let mut infra = gateways.clone();
    infra.push(IMDS_ADDR.to_string());
    let peers: BTreeSet<String> = subnets
        .iter()
        .flat_map(|b| b.peers.iter().map(|p| p.to_string()))
        .collect();

    // Between hosts (VXLAN ports): every host's router has the same MAC, so a frame this host
    // routed leaves with a MAC of its own instead (else the receiving bridge, which owns the
    // router MAC too, would drop it as its own); ARP for the router and the metadata service
    // and DHCP stay on their host.
    if let Some(underlay) = config.underlay_ip {
        let o = underlay.octets();
        let own = format!("0a:68:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
        let _ = writeln!(
            s,
            "table bridge {HOST_TABLE} {{\n  set infra {{ type ipv4_addr;{} }}\n  chain vxlan_out {{ type filter hook output priority filter; policy accept;\n    oifname \"{VXLAN_PREFIX}*\" ether saddr and ff:ff:ff:00:00:00 == 06:68:62:00:00:00 ether saddr set {own}\n    oifname \"{VXLAN_PREFIX}*\" udp sport 67 drop\n  }}\n  chain vxlan_forward {{ type filter hook forward priority filter; policy accept;\n    oifname \"{VXLAN_PREFIX}*\" arp daddr ip @infra drop\n    oifname \"{VXLAN_PREFIX}*\" udp dport 67 drop\n  }}\n  chain vxlan_in {{ type filter hook prerouting priority filter; policy accept;\n    iifname \"{VXLAN_PREFIX}*\" udp dport 67 drop\n    iifname \"{VXLAN_PREFIX}*\" arp daddr ip @infra drop\n  }}\n}}",
            elements(infra.clone())
        );
    }

    let bridges = list(subnets.iter().map(|b| format!("\"{}\"", b.bridge())).collect());
    let zones = list(
        subnets
            .iter()
            .map(|b| format!("\"{}\" : {}", b.bridge(), b.vpc_number))
            .collect(),
    );
    let _ = writeln!(s, "table ip {HOST_TABLE} {{");
    let _ = writeln!(s, "  set bridges {{ type ifname; elements = {{ {bridges} }} }}");
    let _ = writeln!(s, "  set gateways {{ type ipv4_addr;{} }}", elements(gateways));
    let _ = writeln!(
        s,
        "  set vxlan_peers {{ type ipv4_addr;{} }}",
        elements(peers.into_iter().collect())
    );
    // Each VPC's traffic is tracked in its own conntrack zone (its number), whichever way it
    // goes: bridged, routed, NAT'd or to the host. Two VPCs with the same addresses never
    // share a connection.
    let _ = writeln!(
        s,
        "  map bridge_zone {{ typeof iifname : ct zone; elements = {{ {zones} }} }}"
    );
    let uplink = config.uplink.as_deref().filter(|_| !elastic.is_empty());
    let mut zone_rules = vec!["iifname @bridges ct zone set iifname map @bridge_zone".to_string()];
    if let Some(uplink) = uplink {
        let dnat = list(elastic.iter().map(|(p, q, _)| format!("{p} : {q}")).collect());
        let marks = list(
            elastic
                .iter()
                .map(|(p, _, sub)| format!("{p} : {:#010x}", sub.vpc_number << MARK_VPC_SHIFT))
                .collect(),
        );
        let eip_zones = list(
            elastic
                .iter()
                .map(|(p, _, sub)| format!("{p} : {}", sub.vpc_number))
                .collect(),
        );
        let sources = list(
            elastic
                .iter()
                .map(|(_, q, sub)| format!("\"{}\" . {q}", sub.bridge()))
                .collect(),
        );
        let publics = list(elastic.iter().map(|(p, _, _)| p.to_string()).collect());
        let _ = writeln!(
            s,
            "  map eip_dnat {{ type ipv4_addr : ipv4_addr; elements = {{ {dnat} }} }}"
        );
        let _ = writeln!(
            s,
            "  map eip_mark {{ type ipv4_addr : mark; elements = {{ {marks} }} }}"
        );
        let _ = writeln!(
            s,
            "  map eip_zone {{ typeof ip daddr : ct zone; elements = {{ {eip_zones} }} }}"
        );
        let _ = writeln!(
            s,
            "  set eip_src {{ type ifname . ipv4_addr; elements = {{ {sources} }} }}"
        );
        let _ = writeln!(s, "  set eips {{ type ipv4_addr; elements = {{ {publics} }} }}");
        zone_rules.push(format!("iifname \"{uplink}\" ct zone set ip daddr map @eip_zone"));
        // Before the security groups' state marks (priority mangle in `ip hearth`).
        let _ = writeln!(
            s,
            "  chain eip_mark_in {{ type filter hook prerouting priority -160; policy accept;\n    iifname \"{uplink}\" meta mark set ip daddr map @eip_mark\n  }}"
        );
        let _ = writeln!(
            s,
            "  chain eip_dnat_in {{ type nat hook prerouting priority dstnat; policy accept;\n    iifname \"{uplink}\" dnat to ip daddr map @eip_dnat\n  }}"
        );
        // Postrouting has no input interface: the VPC mark (set on every frame from a port)
        // tells VPCs with the same private addresses apart.
        let mut vpcs: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for (public, private, sub) in elastic {
            vpcs.entry(sub.vpc_number)
                .or_default()
                .push(format!("{private} : {public}"));
        }
        let verdicts = list(
            vpcs.keys()
                .map(|vpc| format!("{:#010x} : jump eip_snat_{vpc}", vpc << MARK_VPC_SHIFT))
                .collect(),
        );
        let _ = writeln!(
            s,
            "  chain eip_snat_out {{ type nat hook postrouting priority srcnat; policy accept;\n    oifname \"{uplink}\" meta mark & {MARK_VPC_MASK:#010x} vmap {{ {verdicts} }}\n  }}"
        );
        for (vpc, pairs) in &vpcs {
            let _ = writeln!(
                s,
                "  chain eip_snat_{vpc} {{\n    snat to ip saddr map {{ {} }}\n  }}",
                pairs.join(", ")
            );
        }
    }
    let _ = writeln!(
        s,
        "  chain zones_in {{ type filter hook prerouting priority raw; policy accept;\n{}\n  }}",
        zone_rules
            .iter()
            .map(|r| format!("    {r}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let _ = writeln!(
        s,
        "  chain zones_out {{ type filter hook output priority raw; policy accept;\n    oifname @bridges ct zone set oifname map @bridge_zone\n  }}"
    );
    let mut forward = Vec::new();
    if let Some(uplink) = config.uplink.as_deref() {
        // The uplink leads only into instances (Elastic IPs), never through the host.
        forward.push(format!("iifname \"{uplink}\" oifname != @bridges counter drop"));
    }
    forward.extend([
        "iifname != @bridges oifname != @bridges accept".to_string(),
        "ct state established,related accept".to_string(),
        // Routed between subnets: the bridge's rule chose its VPC's table, which only
        // holds the VPC's subnets.
        "iifname @bridges oifname @bridges accept".to_string(),
    ]);
    if let Some(uplink) = uplink {
        forward.push(format!(
            "iifname @bridges oifname \"{uplink}\" iifname . ip saddr @eip_src accept"
        ));
        forward.push(format!("iifname \"{uplink}\" oifname @bridges ct status dnat accept"));
    }
    forward.push("counter drop".to_string());
    let _ = writeln!(
        s,
        "  chain routed {{ type filter hook forward priority filter; policy accept;\n{}\n  }}",
        forward
            .iter()
            .map(|r| format!("    {r}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut to_host = vec![
        // VXLAN only from the hosts that share a subnet with this one.
        format!("udp dport {VXLAN_PORT} ip saddr != @vxlan_peers counter drop"),
    ];
    if let Some(uplink) = uplink {
        // An Elastic IP is for its instance: never the host's own services (a backstop; DNAT
        // takes it first).
        to_host.push(format!("iifname \"{uplink}\" ip daddr @eips counter drop"));
    }
    to_host.extend([
        "iifname != @bridges accept".to_string(),
        "ct state established,related accept".to_string(),
        "udp sport 68 udp dport 67 ip daddr 255.255.255.255 accept".to_string(),
        "udp sport 68 udp dport 67 ip daddr @gateways accept".to_string(),
        format!("ip daddr {IMDS_ADDR} tcp dport 80 accept"),
        "counter drop".to_string(),
    ]);
    let _ = writeln!(
        s,
        "  chain to_host {{ type filter hook input priority filter; policy accept;\n{}\n  }}",
        to_host
            .iter()
            .map(|r| format!("    {r}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_macs_are_unicast_local_and_unlike_instance_macs() {
        let mac = gateway_mac(0x01_0203);
        assert_eq!(mac.to_string(), "06:68:62:01:02:03");
        assert!(!mac.is_multicast());
        assert_ne!(mac.0[0], 0x02);
    }

    #[test]
    fn the_host_table_parses_with_and_without_elastic_ips() {
        let subnet = SubnetPlan {
            id: "subnet-1".into(),
            cidr: "10.0.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            number: 7,
            vpc_number: 3,
            peers: Vec::new(),
            neighbors: Vec::new(),
        };
        let config = NetworkConfig {
            enabled: true,
            uplink: Some("up0".into()),
            uplink_gateway: Some(Ipv4Addr::new(198, 51, 100, 1)),
            ..NetworkConfig::default()
        };
        let with = host_table(
            &config,
            std::slice::from_ref(&subnet),
            &[(Ipv4Addr::new(198, 51, 100, 5), Ipv4Addr::new(10, 0, 0, 4), &subnet)],
        );
        assert!(with.contains("198.51.100.5 : 10.0.0.4"), "{with}");
        assert!(with.contains("198.51.100.5 : 0x00030000"), "{with}");
        assert!(with.contains("\"hbr7\" . 10.0.0.4"), "{with}");
        assert!(with.contains("10.0.0.4 : 198.51.100.5"), "{with}");
        let without = host_table(&config, std::slice::from_ref(&subnet), &[]);
        assert!(!without.contains("eip_"), "{without}");
        assert_eq!(
            host_table(&config, &[], &[]),
            "table ip hearth_host {}\ndelete table ip hearth_host\ntable bridge hearth_host {}\ndelete table bridge hearth_host\n"
        );
        let vxlan = NetworkConfig {
            underlay_ip: Some(Ipv4Addr::new(192, 0, 2, 10)),
            ..config.clone()
        };
        let bridged = host_table(&vxlan, std::slice::from_ref(&subnet), &[]);
        assert!(bridged.contains("ether saddr set 0a:68:c0:00:02:0a"), "{bridged}");
        // The kernel's verdict on the scripts: `nft -c` in a scratch namespace.
        let Ok(ns) = hearth_net::netns::Netns::create(&format!("hearth-hostnet-{}", std::process::id())) else {
            eprintln!("skipped: cannot create a network namespace (needs root)");
            return;
        };
        let nft = Nft::in_netns(ns.name());
        nft.check(&with).unwrap();
        nft.check(&without).unwrap();
        nft.check(&bridged).unwrap();
    }
}
