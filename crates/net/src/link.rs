//! Idempotent netlink primitives for a host's instance network: bridges, taps, veth pairs, VXLAN
//! devices with head-end replication, IPv4 addresses, policy-routing tables and rules, and gratuitous
//! ARP.
//!
//! # Design
//!
//! - **Netlink, not `ip`.** Every call talks rtnetlink through one socket ([`Links`]): no process per
//!   change, errors carry the kernel's errno ([`LinkError::raw_os_error`]), and state is read back in
//!   structured form instead of parsing `ip` output. The one exception is tap creation, which goes
//!   through `/dev/net/tun` (`TUNSETIFF` + `TUNSETPERSIST`) because that is where taps are made; the
//!   VMM attaches to the tap later with the same flags (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`).
//! - **Desired state, not commands.** `ensure_*` creates what is missing and leaves what exists
//!   alone (returning the same ifindex each time); `set_*` reads the current state and changes only the
//!   difference. Every call can be repeated, after a crash too, and converges. The `set_*` calls own
//!   a scope completely and remove what they did not ask for: [`Links::set_addresses`] all IPv4
//!   addresses of one link, [`Links::set_routes`] one whole routing table, [`Links::set_rules`] one
//!   priority range of the IPv4 rules, [`Links::set_flood_peers`] the all-zeros FDB entries of one
//!   VXLAN device. Changes add before they delete where the kernel allows it, so a running instance
//!   does not lose its route or rule in between.
//! - **Policy routing.** Two VPCs may use the same CIDR on one host, so each VPC gets its own routing
//!   table ([`Links::set_routes`]) selected by rules on the input or output interface or the packet
//!   mark ([`Links::set_rules`]), in a priority range that belongs to hearth; rules outside it (the
//!   kernel's `local`/`main`/`default`, other software's) are never touched.
//! - **Flooding over VXLAN by head-end replication.** Broadcast, unknown-unicast and multicast frames
//!   go to every peer host listed as an all-zeros-MAC FDB entry of the VXLAN device (the equivalent of
//!   `bridge fdb append 00:00:00:00:00:00 dst PEER dev VX`); no underlay multicast is needed. Learning
//!   stays on, so unicast to a known MAC goes to that one host.
//!
//! # Network namespaces
//!
//! A netlink socket acts in the network namespace it was *created* in, whatever thread later uses it.
//! [`Links::new`] creates its socket in the namespace of the calling thread, and remembers that
//! namespace for the few operations that need a socket or a file of their own (taps through
//! `/dev/net/tun`, gratuitous ARP through a packet socket): when called from a thread in another
//! namespace they run on a short-lived thread that enters the remembered one. [`Links::new_in`]
//! creates the socket on such a thread, so a `Links` for any [`Netns`] can be made and used from the
//! agent's ordinary runtime threads.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use futures_util::stream::{Stream, StreamExt, TryStreamExt};
use rtnetlink::packet_core::{
    DefaultNla, NetlinkMessage, NetlinkPayload, Nla, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{
    BridgeStpState, InfoData, InfoKind, InfoTun, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType,
    LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope, RouteType};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, IpVersion, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

use crate::netns::Netns;
use crate::{Ipv4Cidr, MacAddr};

/// Why a [`Links`] operation failed. Messages name the link (or table, or rule) concerned.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No link of that name exists in the namespace of the [`Links`].
    #[error("no link named {0}")]
    NotFound(String),
    /// A link of that name exists but is of another kind, so it was left alone.
    #[error("link {name} is a {found}, not a {expected}")]
    WrongKind {
        /// The link's name.
        name: String,
        /// What the caller asked for (`bridge`, `tap`, `veth`, `vxlan`).
        expected: &'static str,
        /// What the link is (its `IFLA_INFO_KIND`, or `device` for one without).
        found: String,
    },
    /// An argument that cannot be applied (an invalid name, a rule outside its priority range, two
    /// routes to one destination, a reserved table).
    #[error("{0}")]
    Invalid(String),
    /// A netlink request or a system call failed.
    #[error("{action}: {source}")]
    Failed {
        /// What was being done, with the names involved.
        action: String,
        /// The error (the kernel's errno for a refused netlink request).
        #[source]
        source: io::Error,
    },
}

impl LinkError {
    /// The errno of a failed request or system call, if that is what happened.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            LinkError::Failed { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    fn failed(action: impl Into<String>, source: io::Error) -> LinkError {
        LinkError::Failed {
            action: action.into(),
            source,
        }
    }
}

/// The errno carried by a netlink error, if it is one.
fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(message.raw_code().abs()),
        _ => None,
    }
}

fn nl_failed(action: impl Into<String>, error: rtnetlink::Error) -> LinkError {
    let source = match error {
        rtnetlink::Error::NetlinkError(message) => message.to_io(),
        other => io::Error::other(other.to_string()),
    };
    LinkError::failed(action, source)
}

/// One IPv4 route of a routing table managed by [`Links::set_routes`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    /// Destination network (`0.0.0.0/0` for the default route).
    pub dst: Ipv4Cidr,
    /// Output device.
    pub dev: String,
    /// Next hop; `None` for a directly connected network (scope link).
    pub gateway: Option<Ipv4Addr>,
    /// Preferred source address (must be an address of this host, as for `ip route ... src`).
    pub src: Option<Ipv4Addr>,
}

/// One IPv4 policy-routing rule (`ip rule add priority P [iif I] [oif O] [fwmark M/MASK] table T`)
/// managed by [`Links::set_rules`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoutingRule {
    /// Priority (`ip rule` "pref"); lower is consulted first. Must lie in the managed range.
    pub priority: u32,
    /// Matches packets that arrived on this interface (`lo` for locally generated ones).
    pub iif: Option<String>,
    /// Matches locally generated packets bound to this interface.
    pub oif: Option<String>,
    /// Matches packets whose mark, masked with the second value, equals the first.
    pub fwmark: Option<(u32, u32)>,
    /// The routing table to look up.
    pub table: u32,
}

/// A netlink connection acting in one network namespace (see the module documentation).
///
/// Cheap to clone; clones share the connection, which ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Links {
    handle: Handle,
    netns: Arc<File>,
}

const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

impl Links {
    /// Opens a netlink socket in the calling thread's network namespace and spawns its connection
    /// task on the current tokio runtime (it fails outside one).
    pub fn new() -> Result<Links, LinkError> {
        let runtime = current_runtime()?;
        let netns = File::open(THREAD_NETNS).map_err(|e| LinkError::failed(format!("open {THREAD_NETNS}"), e))?;
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| LinkError::failed("open a netlink socket", e))?;
        runtime.spawn(connection);
        Ok(Links {
            handle,
            netns: Arc::new(netns),
        })
    }

    /// Like [`Links::new`], but acting in `netns`: the socket is created on a short-lived thread that
    /// enters the namespace, and the connection task runs on the current tokio runtime. The calling
    /// thread stays where it is.
    pub fn new_in(netns: &Netns) -> Result<Links, LinkError> {
        let runtime = current_runtime()?;
        let enter_runtime = runtime.clone();
        let (connection, handle, file) = netns
            .run(move || -> io::Result<_> {
                let _guard = enter_runtime.enter();
                let file = File::open(THREAD_NETNS)?;
                let (connection, handle, _) = rtnetlink::new_connection()?;
                Ok((connection, handle, file))
            })
            .and_then(|result| result)
            .map_err(|e| LinkError::failed(format!("open a netlink socket in namespace {}", netns.name()), e))?;
        runtime.spawn(connection);
        Ok(Links {
            handle,
            netns: Arc::new(file),
        })
    }

    // ---- links ------------------------------------------------------------------------------------

    /// The ifindex of link `name`, or `None` if there is no such link.
    pub async fn ifindex(&self, name: &str) -> Result<Option<u32>, LinkError> {
        Ok(self.get(name).await?.map(|link| link.header.index))
    }

    /// The names of all links starting with `prefix`, sorted.
    pub async fn link_names(&self, prefix: &str) -> Result<Vec<String>, LinkError> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_failed("list links", e))?;
        let mut names: Vec<String> = links
            .iter()
            .filter_map(link_name)
            .filter(|name| name.starts_with(prefix))
            .map(str::to_string)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes link `name`; `false` if it did not exist. Deleting one end of a veth pair deletes both.
    pub async fn delete_link(&self, name: &str) -> Result<bool, LinkError> {
        let Some(link) = self.get(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(nl_failed(format!("delete link {name}"), e)),
        }
    }

    /// Makes sure bridge `name` exists and is up; returns its ifindex. A new bridge has STP off,
    /// forward delay 0 (ports forward at once) and multicast snooping off (multicast floods like
    /// broadcast, which is what head-end replication over VXLAN expects). An existing bridge is only
    /// set up.
    pub async fn ensure_bridge(&self, name: &str) -> Result<u32, LinkError> {
        if self.get(name).await?.is_none() {
            let message = LinkBridge::new(name)
                .stp_state(BridgeStpState::Disabled)
                .forward_delay(0)
                .mcast_snooping(false)
                .up()
                .build();
            self.add(name, "bridge", message).await?;
        }
        let link = self.require(name).await?;
        expect_kind(name, &link, &InfoKind::Bridge, "bridge")?;
        self.up(name, &link).await?;
        Ok(link.header.index)
    }

    /// Makes sure tap `name` exists and is up; returns its ifindex. A missing tap is made persistent
    /// through `/dev/net/tun` (`TUNSETIFF` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, `TUNSETPERSIST`,
    /// close), ready for the VMM to attach with the same flags. A tap has no carrier until then.
    pub async fn ensure_tap(&self, name: &str) -> Result<u32, LinkError> {
        check_name(name)?;
        if self.get(name).await?.is_none() {
            let owned = name.to_string();
            self.in_netns(move || create_tap(&owned))
                .map_err(|e| LinkError::failed(format!("create tap {name}"), e))?;
        }
        let link = self.require(name).await?;
        expect_kind(name, &link, &InfoKind::Tun, "tap")?;
        if !is_tap(&link) {
            return Err(LinkError::WrongKind {
                name: name.to_string(),
                expected: "tap",
                found: "tun (layer 3)".to_string(),
            });
        }
        self.up(name, &link).await?;
        Ok(link.header.index)
    }

    /// Makes sure veth `a` exists, with peer `b` when it has to be created, and sets up both ends that
    /// are in this namespace; returns the ifindex of `a`. An existing `a` is accepted whatever its peer
    /// (which may have been moved to another namespace: see [`Links::move_to_netns`]).
    pub async fn ensure_veth(&self, a: &str, b: &str) -> Result<u32, LinkError> {
        check_name(b)?;
        if self.get(a).await?.is_none() {
            if self.get(b).await?.is_some() {
                return Err(LinkError::Invalid(format!(
                    "cannot create veth pair {a}/{b}: {b} exists without {a}"
                )));
            }
            self.add(a, "veth pair", LinkVeth::new(a, b).up().build()).await?;
        }
        let link = self.require(a).await?;
        expect_kind(a, &link, &InfoKind::Veth, "veth")?;
        self.up(a, &link).await?;
        if let Some(peer) = self.get(b).await? {
            self.up(b, &peer).await?;
        }
        Ok(link.header.index)
    }

    /// Moves link `name` into `netns` (it arrives there down, with no addresses). `false` if `name`
    /// is not in this namespace, which makes the call repeatable once the link has moved.
    pub async fn move_to_netns(&self, name: &str, netns: &Netns) -> Result<bool, LinkError> {
        let Some(link) = self.get(name).await? else {
            return Ok(false);
        };
        let path = format!("/run/netns/{}", netns.name());
        let target = File::open(&path).map_err(|e| LinkError::failed(format!("open {path}"), e))?;
        let message = LinkUnspec::new_with_index(link.header.index)
            .setns_by_fd(target.as_raw_fd())
            .build();
        self.change(format!("move link {name} to namespace {}", netns.name()), message)
            .await?;
        Ok(true)
    }

    /// Makes sure VXLAN device `name` exists with these parameters, learning on, and is up; returns
    /// its ifindex. An existing device with another VNI, local address, port, underlay device or
    /// learning setting is deleted and created again, which detaches it from its bridge and drops its
    /// FDB: set its master and flood peers again after this call (a new ifindex tells).
    pub async fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        dstport: u16,
        underlay_dev: Option<&str>,
    ) -> Result<u32, LinkError> {
        check_name(name)?;
        if vni >= 1 << 24 {
            return Err(LinkError::Invalid(format!(
                "vxlan {name}: VNI {vni} does not fit in 24 bits"
            )));
        }
        let underlay = match underlay_dev {
            Some(dev) => Some(self.require(dev).await?.header.index),
            None => None,
        };
        if let Some(link) = self.get(name).await? {
            expect_kind(name, &link, &InfoKind::Vxlan, "vxlan")?;
            if vxlan_matches(&link, vni, local, dstport, underlay) {
                self.up(name, &link).await?;
                return Ok(link.header.index);
            }
            self.handle
                .link()
                .del(link.header.index)
                .execute()
                .await
                .map_err(|e| nl_failed(format!("delete vxlan {name} to re-create it"), e))?;
        }
        let mut builder = LinkVxlan::new(name, vni).local(local).port(dstport).learning(true).up();
        if let Some(index) = underlay {
            builder = builder.dev(index);
        }
        self.add(name, "vxlan", builder.build()).await?;
        let link = self.require(name).await?;
        expect_kind(name, &link, &InfoKind::Vxlan, "vxlan")?;
        Ok(link.header.index)
    }

    /// Makes the all-zeros-MAC FDB entries of VXLAN device `vxlan` exactly `peers` (the underlay
    /// addresses that broadcast, unknown-unicast and multicast frames are replicated to).
    pub async fn set_flood_peers(&self, vxlan: &str, peers: &[Ipv4Addr]) -> Result<(), LinkError> {
        let link = self.require(vxlan).await?;
        expect_kind(vxlan, &link, &InfoKind::Vxlan, "vxlan")?;
        let index = link.header.index;
        let current = self
            .flood_peers(index)
            .await
            .map_err(|e| nl_failed(format!("list FDB of {vxlan}"), e))?;
        for peer in peers {
            if !current.contains(peer) {
                self.ack(
                    flood_entry(RouteNetlinkMessage::NewNeighbour, index, *peer),
                    NLM_F_CREATE | NLM_F_APPEND,
                )
                .await
                .map_err(|e| nl_failed(format!("add flood peer {peer} to {vxlan}"), e))?;
            }
        }
        for peer in current.iter().filter(|peer| !peers.contains(peer)) {
            match self
                .ack(flood_entry(RouteNetlinkMessage::DelNeighbour, index, *peer), 0)
                .await
            {
                Err(e) if errno(&e) != Some(libc::ENOENT) => {
                    return Err(nl_failed(format!("remove flood peer {peer} from {vxlan}"), e))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Makes the permanent IPv4 neighbour (ARP) entries of `link` exactly `entries` (address, MAC);
    /// learned entries are left alone. Lets a host route to instances behind a VXLAN port without
    /// ARP: their answers would go to the router's MAC, which is local on every host.
    pub async fn set_neighbors(&self, link: &str, entries: &[(Ipv4Addr, MacAddr)]) -> Result<(), LinkError> {
        const NUD_PERMANENT: u16 = 0x80;
        let index = self.require(link).await?.header.index;
        let current: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_failed(format!("list neighbours of {link}"), e))?;
        let mut present: Vec<(Ipv4Addr, Option<MacAddr>)> = Vec::new();
        for entry in current.iter().filter(|e| e.header.ifindex == index) {
            let permanent = matches!(entry.header.state, NeighbourState::Permanent)
                || matches!(entry.header.state, NeighbourState::Other(state) if state & NUD_PERMANENT != 0);
            if !permanent {
                continue;
            }
            let ip = entry.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let mac = entry.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr),
                _ => None,
            });
            if let Some(ip) = ip {
                present.push((ip, mac));
            }
        }
        for (ip, mac) in entries {
            if present.contains(&(*ip, Some(*mac))) {
                continue;
            }
            let message = neighbour_entry(RouteNetlinkMessage::NewNeighbour, index, *ip, Some(*mac));
            self.ack(message, NLM_F_CREATE | NLM_F_REPLACE)
                .await
                .map_err(|e| nl_failed(format!("add neighbour {ip} {mac} on {link}"), e))?;
        }
        for (ip, _) in present
            .iter()
            .filter(|(ip, _)| !entries.iter().any(|(want, _)| want == ip))
        {
            match self
                .ack(neighbour_entry(RouteNetlinkMessage::DelNeighbour, index, *ip, None), 0)
                .await
            {
                Err(e) if errno(&e) != Some(libc::ENOENT) => {
                    return Err(nl_failed(format!("remove neighbour {ip} from {link}"), e))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The flood peers of VXLAN device `vxlan` (its all-zeros-MAC FDB entries), sorted.
    pub async fn flood_peers_of(&self, vxlan: &str) -> Result<Vec<Ipv4Addr>, LinkError> {
        let index = self.require(vxlan).await?.header.index;
        let mut peers = self
            .flood_peers(index)
            .await
            .map_err(|e| nl_failed(format!("list FDB of {vxlan}"), e))?;
        peers.sort();
        Ok(peers)
    }

    /// Enslaves `link` to bridge `master`, or frees it (`None`); nothing if it already is.
    pub async fn set_master(&self, link: &str, master: Option<&str>) -> Result<(), LinkError> {
        let current = self.require(link).await?;
        let wanted = match master {
            Some(master) => self.require(master).await?.header.index,
            None => 0,
        };
        let controller = current
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Controller(index) => Some(*index),
                _ => None,
            })
            .unwrap_or(0);
        if controller == wanted {
            return Ok(());
        }
        let message = LinkUnspec::new_with_index(current.header.index)
            .controller(wanted)
            .build();
        let action = match master {
            Some(master) => format!("set master of {link} to {master}"),
            None => format!("release {link} from its master"),
        };
        self.change(action, message).await
    }

    /// Sets `link` up.
    pub async fn set_up(&self, link: &str) -> Result<(), LinkError> {
        let current = self.require(link).await?;
        self.up(link, &current).await
    }

    /// Sets the MAC address of `link` (nothing if it has it already).
    pub async fn set_mac(&self, link: &str, mac: MacAddr) -> Result<(), LinkError> {
        let current = self.require(link).await?;
        let has = current
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::Address(address) if address[..] == mac.0[..]));
        if has {
            return Ok(());
        }
        let message = LinkUnspec::new_with_index(current.header.index)
            .address(mac.0.to_vec())
            .build();
        self.change(format!("set MAC address of {link} to {mac}"), message)
            .await
    }

    /// Sets the MTU of `link` (nothing if it has it already).
    pub async fn set_mtu(&self, link: &str, mtu: u32) -> Result<(), LinkError> {
        let current = self.require(link).await?;
        if current.attributes.contains(&LinkAttribute::Mtu(mtu)) {
            return Ok(());
        }
        let message = LinkUnspec::new_with_index(current.header.index).mtu(mtu).build();
        self.change(format!("set MTU of {link} to {mtu}"), message).await
    }

    // ---- addresses --------------------------------------------------------------------------------

    /// The IPv4 addresses of `link`: address, prefix length, `noprefixroute`.
    pub async fn addresses(&self, link: &str) -> Result<Vec<(Ipv4Addr, u8, bool)>, LinkError> {
        let index = self.require(link).await?.header.index;
        let current: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_filter(|m| futures_util::future::ready(m.header.family == AddressFamily::Inet))
            .try_collect()
            .await
            .map_err(|e| nl_failed(format!("list addresses of {link}"), e))?;
        Ok(current.iter().filter_map(address_key).collect())
    }

    /// Makes the IPv4 addresses of `link` exactly `addresses`: (address, prefix length,
    /// `noprefixroute`). With `noprefixroute` the kernel adds no route to the address's network to the
    /// main table, which is what policy routing wants (the network's route goes in the VPC's table).
    pub async fn set_addresses(&self, link: &str, addresses: &[(Ipv4Addr, u8, bool)]) -> Result<(), LinkError> {
        for (address, prefix, _) in addresses {
            if *prefix > 32 {
                return Err(LinkError::Invalid(format!(
                    "{link}: invalid prefix length {address}/{prefix}"
                )));
            }
        }
        let index = self.require(link).await?.header.index;
        // Deleting a primary address also deletes its secondaries (unless promote_secondaries is on),
        // so re-read and repeat until nothing is left to do.
        for _ in 0..ROUNDS {
            let current: Vec<AddressMessage> = self
                .handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_filter(|m| futures_util::future::ready(m.header.family == AddressFamily::Inet))
                .try_collect()
                .await
                .map_err(|e| nl_failed(format!("list addresses of {link}"), e))?;
            let keys: Vec<Option<AddressKey>> = current.iter().map(address_key).collect();
            let missing: Vec<AddressKey> = addresses
                .iter()
                .filter(|wanted| !keys.contains(&Some(**wanted)))
                .copied()
                .collect();
            let extra: Vec<(&AddressMessage, Option<AddressKey>)> = current
                .iter()
                .zip(keys.iter().copied())
                .filter(|(_, key)| key.is_none_or(|key| !addresses.contains(&key)))
                .collect();
            if missing.is_empty() && extra.is_empty() {
                return Ok(());
            }
            // An address that only changes its flags must go before it can come back.
            let (clashing, others): (Vec<_>, Vec<_>) = extra.into_iter().partition(|(_, key)| {
                key.is_some_and(|(a, p, _)| missing.iter().any(|(ma, mp, _)| (*ma, *mp) == (a, p)))
            });
            for (message, _) in clashing {
                self.delete_address(link, message).await?;
            }
            for (address, prefix, noprefixroute) in &missing {
                let mut request = self.handle.address().add(index, (*address).into(), *prefix);
                if *noprefixroute {
                    request
                        .message_mut()
                        .attributes
                        .push(AddressAttribute::Flags(AddressFlags::Noprefixroute));
                }
                match request.execute().await {
                    Err(e) if errno(&e) != Some(libc::EEXIST) => {
                        return Err(nl_failed(format!("add address {address}/{prefix} to {link}"), e))
                    }
                    _ => {}
                }
            }
            for (message, _) in others {
                self.delete_address(link, message).await?;
            }
        }
        Err(unstable(format!("set the addresses of {link}")))
    }

    async fn delete_address(&self, link: &str, message: &AddressMessage) -> Result<(), LinkError> {
        match self.handle.address().del(message.clone()).execute().await {
            Err(e) if errno(&e) != Some(libc::EADDRNOTAVAIL) => {
                let shown =
                    address_key(message).map_or_else(|| "an address".to_string(), |(a, p, _)| format!("{a}/{p}"));
                Err(nl_failed(format!("delete address {shown} from {link}"), e))
            }
            _ => Ok(()),
        }
    }

    // ---- policy routing ---------------------------------------------------------------------------

    /// Makes routing table `table` exactly `routes` (IPv4). One route per destination. Tables 0 and
    /// 253–255 (`default`, `main`, `local`) are refused: they are not hearth's. Routes need their
    /// device up (the kernel refuses routes through a down device, and removes them from every table
    /// when a device goes down: call this again after setting it up). Routes without a gateway are
    /// added first, so that a gateway can be reached through them.
    pub async fn set_routes(&self, table: u32, routes: &[Route]) -> Result<(), LinkError> {
        if table == 0 || (253..=255).contains(&table) {
            return Err(LinkError::Invalid(format!(
                "table {table} is reserved; use another one"
            )));
        }
        for (i, route) in routes.iter().enumerate() {
            if routes[..i].iter().any(|other| other.dst == route.dst) {
                return Err(LinkError::Invalid(format!(
                    "table {table}: two routes to {}",
                    route.dst
                )));
            }
        }
        let mut wanted = Vec::with_capacity(routes.len());
        for route in routes {
            let index = self.require(&route.dev).await?.header.index;
            wanted.push((route, RouteKey::of(route, index)));
        }
        wanted.sort_by_key(|(route, _)| route.gateway.is_some());

        // The kernel deletes the first route that matches the attributes a request names, so deleting a
        // stale route could hit a wanted one to the same destination: re-read after every step and
        // repeat until the table is right (one round when only adding, two when also deleting).
        for _ in 0..ROUNDS {
            let current: Vec<RouteMessage> = self
                .handle
                .route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute()
                .try_filter(|m| {
                    futures_util::future::ready(
                        m.header.address_family == AddressFamily::Inet && route_table(m) == table,
                    )
                })
                .try_collect()
                .await
                .map_err(|e| nl_failed(format!("list routes of table {table}"), e))?;
            let current_keys: Vec<Option<RouteKey>> = current.iter().map(RouteKey::parse).collect();
            let missing: Vec<&(&Route, RouteKey)> = wanted
                .iter()
                .filter(|(_, key)| !current_keys.contains(&Some(*key)))
                .collect();
            let extra: Vec<&RouteMessage> = current
                .iter()
                .zip(&current_keys)
                .filter(|(_, key)| !key.is_some_and(|key| wanted.iter().any(|(_, wanted)| *wanted == key)))
                .map(|(message, _)| message)
                .collect();
            if missing.is_empty() && extra.is_empty() {
                return Ok(());
            }
            for (route, key) in &missing {
                let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(route.dst.addr(), route.dst.prefix())
                    .output_interface(key.oif);
                builder = match route.gateway {
                    Some(gateway) => builder.gateway(gateway),
                    None => builder.scope(RouteScope::Link),
                };
                if let Some(src) = route.src {
                    builder = builder.pref_source(src);
                }
                let mut message = builder.build();
                set_route_table(&mut message, table);
                // Replace: a route to the same destination (and metric) is changed in place, hitlessly.
                self.ack(
                    NetlinkMessage::from(RouteNetlinkMessage::NewRoute(message)),
                    NLM_F_CREATE | NLM_F_REPLACE,
                )
                .await
                .map_err(|e| nl_failed(format!("add route {} dev {} to table {table}", route.dst, route.dev), e))?;
            }
            if !missing.is_empty() {
                continue;
            }
            for message in extra {
                match self.handle.route().del(message.clone()).execute().await {
                    Err(e) if errno(&e) != Some(libc::ESRCH) => {
                        return Err(nl_failed(format!("delete a route from table {table}"), e))
                    }
                    _ => {}
                }
            }
        }
        Err(unstable(format!("set routing table {table}")))
    }

    /// Makes the IPv4 rules whose priority lies in `priorities` exactly `rules`; rules outside the range
    /// are left alone. Each rule looks up its table (`FR_ACT_TO_TBL`).
    pub async fn set_rules(&self, priorities: Range<u32>, rules: &[RoutingRule]) -> Result<(), LinkError> {
        let wanted: Vec<RoutingRule> = rules.iter().map(RoutingRule::normalized).collect();
        for rule in &wanted {
            if !priorities.contains(&rule.priority) {
                return Err(LinkError::Invalid(format!(
                    "rule priority {} lies outside the managed range {}..{}",
                    rule.priority, priorities.start, priorities.end
                )));
            }
            if rule.table == 0 {
                return Err(LinkError::Invalid(format!("rule priority {}: table 0", rule.priority)));
            }
            for name in rule.iif.iter().chain(&rule.oif) {
                check_name(name)?;
            }
        }
        // As for routes: the kernel deletes the first rule matching what a request names, so re-read and
        // repeat until the range is right.
        for _ in 0..ROUNDS {
            let current: Vec<RuleMessage> = self
                .handle
                .rule()
                .get(IpVersion::V4)
                .execute()
                .try_filter(|m| {
                    futures_util::future::ready(
                        m.header.family == AddressFamily::Inet && priorities.contains(&rule_priority(m)),
                    )
                })
                .try_collect()
                .await
                .map_err(|e| nl_failed("list rules", e))?;
            let current_rules: Vec<Option<RoutingRule>> = current.iter().map(parse_rule).collect();
            let missing: Vec<&RoutingRule> = wanted
                .iter()
                .filter(|rule| !current_rules.iter().any(|current| current.as_ref() == Some(*rule)))
                .collect();
            let extra: Vec<&RuleMessage> = current
                .iter()
                .zip(&current_rules)
                .filter(|(_, parsed)| !parsed.as_ref().is_some_and(|rule| wanted.contains(rule)))
                .map(|(message, _)| message)
                .collect();
            if missing.is_empty() && extra.is_empty() {
                return Ok(());
            }
            for rule in &missing {
                let request = NetlinkMessage::from(RouteNetlinkMessage::NewRule(rule_message(rule)));
                match self.ack(request, NLM_F_CREATE | NLM_F_EXCL).await {
                    Err(e) if errno(&e) != Some(libc::EEXIST) => {
                        return Err(nl_failed(format!("add rule {}", describe_rule(rule)), e))
                    }
                    _ => {}
                }
            }
            for message in extra {
                match self.handle.rule().del(message.clone()).execute().await {
                    Err(e) if errno(&e) != Some(libc::ENOENT) => {
                        return Err(nl_failed(format!("delete rule priority {}", rule_priority(message)), e))
                    }
                    _ => {}
                }
            }
        }
        Err(unstable(format!("set rules {}..{}", priorities.start, priorities.end)))
    }

    // ---- ARP --------------------------------------------------------------------------------------

    /// Announces that `ip` is at `mac` on `dev` (which must be up): one broadcast gratuitous ARP request
    /// (sender = target = `ip`, target MAC zero) and one gratuitous ARP reply (target MAC = `mac`), for
    /// neighbours that only update their caches from one kind. Used when an Elastic IP moves here.
    pub async fn send_gratuitous_arp(&self, dev: &str, ip: Ipv4Addr, mac: MacAddr) -> Result<(), LinkError> {
        let index = self.require(dev).await?.header.index;
        let frames = [garp_frame(1, ip, mac), garp_frame(2, ip, mac)];
        self.in_netns(move || send_arp_frames(index, &frames))
            .map_err(|e| LinkError::failed(format!("send gratuitous ARP for {ip} on {dev}"), e))
    }

    // ---- helpers ----------------------------------------------------------------------------------

    async fn get(&self, name: &str) -> Result<Option<LinkMessage>, LinkError> {
        check_name(name)?;
        let mut links = std::pin::pin!(self.handle.link().get().match_name(name).execute());
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl_failed(format!("look up link {name}"), e)),
        }
    }

    async fn require(&self, name: &str) -> Result<LinkMessage, LinkError> {
        self.get(name)
            .await?
            .ok_or_else(|| LinkError::NotFound(name.to_string()))
    }

    /// Creates a link; an `EEXIST` (someone else was faster) is not an error, the caller checks kind.
    async fn add(&self, name: &str, what: &str, message: LinkMessage) -> Result<(), LinkError> {
        match self.handle.link().add(message).execute().await {
            Err(e) if errno(&e) != Some(libc::EEXIST) => Err(nl_failed(format!("create {what} {name}"), e)),
            _ => Ok(()),
        }
    }

    async fn change(&self, action: String, message: LinkMessage) -> Result<(), LinkError> {
        self.handle
            .link()
            .change(message)
            .execute()
            .await
            .map_err(|e| nl_failed(action, e))
    }

    async fn up(&self, name: &str, link: &LinkMessage) -> Result<(), LinkError> {
        if link.header.flags.contains(LinkFlags::Up) {
            return Ok(());
        }
        let message = LinkUnspec::new_with_index(link.header.index).up().build();
        self.change(format!("set link {name} up"), message).await
    }

    /// Sends a request and waits for its acknowledgement.
    async fn ack(&self, mut message: NetlinkMessage<RouteNetlinkMessage>, flags: u16) -> Result<(), rtnetlink::Error> {
        message.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut responses = self.handle.clone().request(message)?;
        while let Some(response) = responses.next().await {
            if let NetlinkPayload::Error(error) = response.payload {
                if error.code.is_some() {
                    return Err(rtnetlink::Error::NetlinkError(error));
                }
            }
        }
        Ok(())
    }

    async fn flood_peers(&self, index: u32) -> Result<Vec<Ipv4Addr>, rtnetlink::Error> {
        let entries = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        collect_flood_peers(entries, index).await
    }

    /// Runs `f` in this connection's namespace: here if the calling thread is in it, else on a
    /// short-lived thread that enters it.
    fn in_netns<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        let here = std::fs::metadata(THREAD_NETNS)?;
        let ours = self.netns.metadata()?;
        if (here.dev(), here.ino()) == (ours.dev(), ours.ino()) {
            return f();
        }
        let fd = self.netns.as_raw_fd();
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                enter_netns(fd)?;
                f()
            });
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

/// How many read-change rounds a `set_*` call makes before it gives up on a state that keeps changing.
const ROUNDS: usize = 5;

fn unstable(action: String) -> LinkError {
    LinkError::failed(
        action,
        io::Error::other("the state keeps changing under us (someone else is editing it?)"),
    )
}

fn current_runtime() -> Result<tokio::runtime::Handle, LinkError> {
    tokio::runtime::Handle::try_current().map_err(|e| {
        LinkError::failed(
            "start a netlink connection (needs a tokio runtime)",
            io::Error::other(e),
        )
    })
}

fn check_name(name: &str) -> Result<(), LinkError> {
    let valid = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace());
    if valid {
        Ok(())
    } else {
        Err(LinkError::Invalid(format!("invalid link name {name:?}")))
    }
}

fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

fn link_infos(link: &LinkMessage) -> &[LinkInfo] {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos.as_slice()),
            _ => None,
        })
        .unwrap_or(&[])
}

fn expect_kind(name: &str, link: &LinkMessage, kind: &InfoKind, expected: &'static str) -> Result<(), LinkError> {
    let found = link_infos(link).iter().find_map(|info| match info {
        LinkInfo::Kind(kind) => Some(kind),
        _ => None,
    });
    match found {
        Some(found) if found == kind => Ok(()),
        found => Err(LinkError::WrongKind {
            name: name.to_string(),
            expected,
            found: found.map_or_else(|| "device".to_string(), ToString::to_string),
        }),
    }
}

/// Whether a `tun` link is a tap (layer 2): `IFLA_TUN_TYPE` when the kernel reports it, else the link
/// layer type.
fn is_tap(link: &LinkMessage) -> bool {
    const IFLA_TUN_TYPE: u16 = 3;
    let tun_type = link_infos(link).iter().find_map(|info| match info {
        LinkInfo::Data(InfoData::Tun(attributes)) => attributes.iter().find_map(|a| match a {
            InfoTun::Other(nla) if nla.kind() == IFLA_TUN_TYPE => nla_u8(nla),
            _ => None,
        }),
        _ => None,
    });
    match tun_type {
        Some(tun_type) => i32::from(tun_type) == libc::IFF_TAP,
        None => link.header.link_layer_type == LinkLayerType::Ether,
    }
}

fn nla_u8(nla: &DefaultNla) -> Option<u8> {
    let mut value = vec![0u8; nla.value_len()];
    nla.emit_value(&mut value);
    value.first().copied()
}

fn vxlan_matches(link: &LinkMessage, vni: u32, local: Ipv4Addr, port: u16, underlay: Option<u32>) -> bool {
    let Some(attributes) = link_infos(link).iter().find_map(|info| match info {
        LinkInfo::Data(InfoData::Vxlan(attributes)) => Some(attributes),
        _ => None,
    }) else {
        return false;
    };
    let (mut id, mut addr, mut dstport, mut dev, mut learning) = (None, None, None, 0, false);
    for attribute in attributes {
        match attribute {
            InfoVxlan::Id(value) => id = Some(*value),
            InfoVxlan::Local(value) => addr = Some(*value),
            InfoVxlan::Port(value) => dstport = Some(*value),
            InfoVxlan::Link(value) => dev = *value,
            InfoVxlan::Learning(value) => learning = *value,
            _ => {}
        }
    }
    id == Some(vni) && addr == Some(local) && dstport == Some(port) && dev == underlay.unwrap_or(0) && learning
}

fn create_tap(name: &str) -> io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: `ifreq` is plain data (integers, arrays, a union of such and a pointer we never read),
    // for which all zero bytes are a valid value.
    let mut ifreq: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifreq.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifreq.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and updates one `struct ifreq`, which `ifreq` is and which we borrow
    // exclusively for the call; `file` is an open /dev/net/tun descriptor.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifreq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNSETPERSIST takes its argument by value (no pointer); `file` is attached to the tap.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the calling thread into the network namespace `fd` refers to.
fn enter_netns(fd: RawFd) -> io::Result<()> {
    // SAFETY: setns(2) takes a descriptor number and a flag and touches no memory of ours.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// ---- FDB -------------------------------------------------------------------------------------------

/// The all-zeros-MAC FDB entry `dst PEER` of device `index` (`bridge fdb append/del 00:00:00:00:00:00
/// dst PEER dev VX`: self, permanent).
fn flood_entry(
    kind: fn(NeighbourMessage) -> RouteNetlinkMessage,
    index: u32,
    peer: Ipv4Addr,
) -> NetlinkMessage<RouteNetlinkMessage> {
    const NUD_NOARP: u16 = 0x40;
    const NUD_PERMANENT: u16 = 0x80;
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    message.header.ifindex = index;
    message.header.state = NeighbourState::Other(NUD_PERMANENT | NUD_NOARP);
    message.header.flags = NeighbourFlags::Own;
    message.header.kind = RouteType::Unspec;
    message.attributes = vec![
        NeighbourAttribute::LinkLayerAddress(vec![0; 6]),
        NeighbourAttribute::Destination(NeighbourAddress::Inet(peer)),
    ];
    NetlinkMessage::from(kind(message))
}

/// A permanent IPv4 neighbour entry `ip lladdr MAC dev INDEX nud permanent`.
fn neighbour_entry(
    kind: fn(NeighbourMessage) -> RouteNetlinkMessage,
    index: u32,
    ip: Ipv4Addr,
    mac: Option<MacAddr>,
) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Inet;
    message.header.ifindex = index;
    message.header.state = NeighbourState::Permanent;
    message.header.kind = RouteType::Unspec;
    message.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Inet(ip))];
    if let Some(mac) = mac {
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    }
    NetlinkMessage::from(kind(message))
}

async fn collect_flood_peers(
    entries: impl Stream<Item = Result<NeighbourMessage, rtnetlink::Error>>,
    index: u32,
) -> Result<Vec<Ipv4Addr>, rtnetlink::Error> {
    let entries: Vec<NeighbourMessage> = entries.try_collect().await?;
    let mut peers = Vec::new();
    for entry in entries.iter().filter(|e| e.header.ifindex == index) {
        let zero_mac = entry
            .attributes
            .iter()
            .any(|a| matches!(a, NeighbourAttribute::LinkLayerAddress(mac) if mac[..] == [0; 6]));
        let dst = entry.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
            NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                <[u8; 4]>::try_from(bytes.as_slice()).ok().map(Ipv4Addr::from)
            }
            _ => None,
        });
        if let (true, Some(dst)) = (zero_mac, dst) {
            if !peers.contains(&dst) {
                peers.push(dst);
            }
        }
    }
    Ok(peers)
}

// ---- addresses -------------------------------------------------------------------------------------

/// Address, prefix length, `noprefixroute`.
type AddressKey = (Ipv4Addr, u8, bool);

fn address_key(message: &AddressMessage) -> Option<AddressKey> {
    let local = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(std::net::IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    let address = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(std::net::IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    let noprefixroute = message
        .attributes
        .iter()
        .any(|a| matches!(a, AddressAttribute::Flags(flags) if flags.contains(AddressFlags::Noprefixroute)));
    // A point-to-point address (peer ≠ local) is not one this module makes: it never matches.
    match (local, address) {
        (Some(local), Some(address)) if local != address => None,
        (Some(ip), _) | (None, Some(ip)) => Some((ip, message.header.prefix_len, noprefixroute)),
        (None, None) => None,
    }
}

// ---- routes ----------------------------------------------------------------------------------------

/// What [`Links::set_routes`] compares: a route of the table is kept only if it is exactly this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RouteKey {
    dst: Ipv4Addr,
    prefix: u8,
    oif: u32,
    gateway: Option<Ipv4Addr>,
    src: Option<Ipv4Addr>,
}

impl RouteKey {
    fn of(route: &Route, oif: u32) -> RouteKey {
        RouteKey {
            dst: route.dst.addr(),
            prefix: route.dst.prefix(),
            oif,
            gateway: route.gateway,
            src: route.src,
        }
    }

    /// The key of a dumped route, or `None` for a route this module would not make (another type,
    /// TOS, metric, multipath, no output device).
    fn parse(message: &RouteMessage) -> Option<RouteKey> {
        let header = &message.header;
        if header.kind != RouteType::Unicast || header.tos != 0 {
            return None;
        }
        let mut key = RouteKey {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix: header.destination_prefix_length,
            oif: 0,
            gateway: None,
            src: None,
        };
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => key.dst = *ip,
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => key.gateway = Some(*ip),
                RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => key.src = Some(*ip),
                RouteAttribute::Oif(index) => key.oif = *index,
                RouteAttribute::Priority(0) | RouteAttribute::Table(_) | RouteAttribute::CacheInfo(_) => {}
                RouteAttribute::Priority(_) | RouteAttribute::MultiPath(_) | RouteAttribute::Source(_) => return None,
                _ => {}
            }
        }
        (key.oif != 0).then_some(key)
    }
}

fn route_table(message: &RouteMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table))
}

fn set_route_table(message: &mut RouteMessage, table: u32) {
    message.header.table = u8::try_from(table).unwrap_or(0);
    message.attributes.retain(|a| !matches!(a, RouteAttribute::Table(_)));
    message.attributes.push(RouteAttribute::Table(table));
}

// ---- rules -----------------------------------------------------------------------------------------

impl RoutingRule {
    /// The form the kernel reports: a mark and mask of zero is no mark match.
    fn normalized(&self) -> RoutingRule {
        let mut rule = self.clone();
        if rule.fwmark == Some((0, 0)) {
            rule.fwmark = None;
        }
        rule
    }
}

fn rule_priority(message: &RuleMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Priority(priority) => Some(*priority),
            _ => None,
        })
        .unwrap_or(0)
}

/// A dumped rule as a [`RoutingRule`], or `None` for a rule this module would not make (another action,
/// addresses, TOS, inversion, ports, …).
fn parse_rule(message: &RuleMessage) -> Option<RoutingRule> {
    let header = &message.header;
    if header.action != RuleAction::ToTable
        || header.src_len != 0
        || header.dst_len != 0
        || header.tos != 0
        || header.flags.contains(RuleFlags::Invert)
    {
        return None;
    }
    let mut rule = RoutingRule {
        priority: 0,
        iif: None,
        oif: None,
        fwmark: None,
        table: u32::from(header.table),
    };
    let (mut mark, mut mask) = (0, 0);
    for attribute in &message.attributes {
        match attribute {
            RuleAttribute::Priority(priority) => rule.priority = *priority,
            RuleAttribute::Iifname(name) => rule.iif = Some(name.clone()),
            RuleAttribute::Oifname(name) => rule.oif = Some(name.clone()),
            RuleAttribute::FwMark(value) => mark = *value,
            RuleAttribute::FwMask(value) => mask = *value,
            RuleAttribute::Table(table) => rule.table = *table,
            // -1: not set (the kernel reports it anyway).
            RuleAttribute::Protocol(_)
            | RuleAttribute::SuppressPrefixLen(u32::MAX)
            | RuleAttribute::SuppressIfGroup(u32::MAX) => {}
            _ => return None,
        }
    }
    if (mark, mask) != (0, 0) {
        rule.fwmark = Some((mark, mask));
    }
    Some(rule)
}

fn rule_message(rule: &RoutingRule) -> RuleMessage {
    let mut message = RuleMessage::default();
    message.header.family = AddressFamily::Inet;
    message.header.action = RuleAction::ToTable;
    message.header.table = u8::try_from(rule.table).unwrap_or(0);
    message.attributes.push(RuleAttribute::Priority(rule.priority));
    message.attributes.push(RuleAttribute::Table(rule.table));
    if let Some(iif) = &rule.iif {
        message.attributes.push(RuleAttribute::Iifname(iif.clone()));
    }
    if let Some(oif) = &rule.oif {
        message.attributes.push(RuleAttribute::Oifname(oif.clone()));
    }
    if let Some((mark, mask)) = rule.fwmark {
        message.attributes.push(RuleAttribute::FwMark(mark));
        message.attributes.push(RuleAttribute::FwMask(mask));
    }
    message
}

fn describe_rule(rule: &RoutingRule) -> String {
    let mut text = format!("priority {}", rule.priority);
    if let Some(iif) = &rule.iif {
        text += &format!(" iif {iif}");
    }
    if let Some(oif) = &rule.oif {
        text += &format!(" oif {oif}");
    }
    if let Some((mark, mask)) = rule.fwmark {
        text += &format!(" fwmark {mark:#x}/{mask:#x}");
    }
    text + &format!(" table {}", rule.table)
}

// ---- gratuitous ARP ----------------------------------------------------------------------------------

const ETH_P_ARP: u16 = 0x0806;

/// A broadcast ARP frame announcing `ip` at `mac`: `op` 1 (request, target MAC zero) or 2 (reply,
/// target MAC = `mac`), sender and target IP both `ip`, padded to the 60-byte minimum.
fn garp_frame(op: u16, ip: Ipv4Addr, mac: MacAddr) -> [u8; 60] {
    let mut frame = [0u8; 60];
    frame[0..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&mac.0);
    frame[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    frame[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 0]);
    frame[20..22].copy_from_slice(&op.to_be_bytes());
    frame[22..28].copy_from_slice(&mac.0);
    frame[28..32].copy_from_slice(&ip.octets());
    if op == 2 {
        frame[32..38].copy_from_slice(&mac.0);
    }
    frame[38..42].copy_from_slice(&ip.octets());
    frame
}

fn send_arp_frames(ifindex: u32, frames: &[[u8; 60]]) -> io::Result<()> {
    // SAFETY: plain socket(2) call; protocol 0 means the socket receives nothing, it only sends.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value to start from.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ARP.to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    for frame in frames {
        // SAFETY: the buffer is valid for `frame.len()` bytes and `addr` is a valid sockaddr_ll whose
        // size is passed.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_frames_are_well_formed() {
        let mac = MacAddr([2, 0, 0, 0, 0, 9]);
        let ip = Ipv4Addr::new(203, 0, 113, 7);
        let request = garp_frame(1, ip, mac);
        assert_eq!(&request[12..22], &[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&request[22..28], &mac.0);
        assert_eq!(&request[28..32], &ip.octets());
        assert_eq!(&request[32..38], &[0; 6]);
        assert_eq!(&request[38..42], &ip.octets());
        let reply = garp_frame(2, ip, mac);
        assert_eq!(&reply[20..22], &[0, 2]);
        assert_eq!(&reply[32..38], &mac.0);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("br-0123456789ab").is_ok());
        for bad in ["", "0123456789abcdef", "a/b", "a b", ".", "..", "a:b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rules_round_trip_through_their_message() {
        let rule = RoutingRule {
            priority: 10_010,
            iif: Some("br-a".into()),
            oif: None,
            fwmark: Some((0x1_0000, 0xff_0000)),
            table: 1000,
        };
        let mut message = rule_message(&rule);
        message.header.table = 0;
        assert_eq!(parse_rule(&message), Some(rule));
        message.header.src_len = 24;
        assert_eq!(parse_rule(&message), None);
    }
}
