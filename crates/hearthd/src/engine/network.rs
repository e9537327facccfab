//! VPCs, subnets, security groups and Elastic IPs, with EC2's rules, and what each host's
//! agent must build from them (bridges, VXLAN peers, the security-group firewall, NAT).
//!
//! hearthd owns every allocation (private addresses, MACs, public addresses, VPC and subnet
//! numbers); `hearth_net::ipam` does the arithmetic. A change that can alter any host's
//! firewall (a rule, a member, an address) bumps every host: the agents recompile their one
//! nftables table from the whole answer, so a stale host can never keep a revoked rule.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use hearth_net::{ipam, Ipv4Cidr, MacAddr};

use super::instances::dry_run;
use super::{resource_tags, Engine, State};
use crate::error::{Ec2Error, Ec2Result};
use crate::filter::{self, Filter, Values};
use crate::ids::IdKind;
use crate::model::{
    Address, AddressAssociation, GroupRule, Instance, InstanceNetwork, InstanceState, NetRecord, RulePeer,
    SecurityGroup, Subnet, Tags, Vpc,
};
use crate::store::{Changes, StoreError};

/// The default VPC's CIDR (EC2's).
pub fn default_vpc_cidr() -> Ipv4Cidr {
    Ipv4Cidr::new(Ipv4Addr::new(172, 31, 0, 0), 16).expect("172.31.0.0/16")
}
/// Prefix length of the default VPC's subnets (EC2's /20 per zone).
const DEFAULT_SUBNET_PREFIX: u8 = 20;
/// Highest VPC number (a conntrack zone on the hosts).
const MAX_VPC_NUMBER: u32 = hearth_net::MAX_ZONE as u32;
/// Highest subnet number (a VXLAN VNI and the bridge name `hbr<n>`).
const MAX_SUBNET_NUMBER: u32 = 9_999_999;
/// Most rules per group and direction (EC2's default quota).
const MAX_RULES: usize = 60;
/// The name of every VPC's default group.
pub const DEFAULT_GROUP: &str = "default";

const VPC_FILTERS: &[&str] = &[
    "vpc-id",
    "cidr",
    "cidr-block",
    "cidr-block-association.cidr-block",
    "is-default",
    "state",
];
const SUBNET_FILTERS: &[&str] = &[
    "subnet-id",
    "vpc-id",
    "availability-zone",
    "cidr-block",
    "cidr",
    "default-for-az",
    "state",
];
const GROUP_FILTERS: &[&str] = &["group-id", "group-name", "vpc-id", "description"];
const ADDRESS_FILTERS: &[&str] = &[
    "allocation-id",
    "association-id",
    "instance-id",
    "public-ip",
    "private-ip-address",
    "domain",
];

/// One allow rule as the API gives it (an `IpPermission`), before it is split per peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpPermission {
    /// `tcp`, `udp`, `icmp`, `-1`/`all` or a protocol number.
    pub ip_protocol: String,
    /// First port / ICMP type.
    pub from_port: Option<i32>,
    /// Last port / ICMP code.
    pub to_port: Option<i32>,
    /// Peer CIDRs with descriptions.
    pub ip_ranges: Vec<(String, String)>,
    /// Peer groups with descriptions.
    pub groups: Vec<(String, String)>,
}

/// A subnet and its free address count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetView {
    /// The subnet.
    pub subnet: Subnet,
    /// AvailableIpAddressCount.
    pub available: u64,
}

/// Which rules: inbound or outbound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Inbound.
    Ingress,
    /// Outbound.
    Egress,
}

/// The network part of a RunInstances request.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LaunchNetwork {
    /// Subnet ("" = the default subnet of the zone).
    pub subnet_id: String,
    /// Group IDs.
    pub security_group_ids: Vec<String>,
    /// Group names (default VPC).
    pub security_group_names: Vec<String>,
    /// A specific private address (one instance only).
    pub private_ip: String,
    /// IMDS options.
    pub metadata: MetadataOptions,
}

/// IMDS options as the API gives them ("" / None = default or unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MetadataOptions {
    /// `optional` | `required`.
    pub http_tokens: String,
    /// `enabled` | `disabled`.
    pub http_endpoint: String,
    /// 1..=64.
    pub http_put_response_hop_limit: Option<i32>,
}

fn parse_cidr(text: &str, what: &str) -> Ec2Result<Ipv4Cidr> {
    text.trim()
        .parse::<Ipv4Cidr>()
        .map_err(|_| Ec2Error::InvalidParameterValue(format!("Value ({text}) for parameter {what} is invalid")))
}

/// Every ID of `ids` validated as `kind`, then looked up in `map` (all must exist).
fn lookup<'a, T>(
    map: &'a BTreeMap<String, T>,
    ids: &[String],
    kind: IdKind,
    missing: impl Fn(String) -> Ec2Error,
) -> Ec2Result<Vec<&'a T>> {
    let mut found = Vec::new();
    let mut absent = Vec::new();
    let mut seen = BTreeSet::new();
    for id in ids {
        kind.validate(id)?;
        if !seen.insert(id.as_str()) {
            continue;
        }
        match map.get(id) {
            Some(record) => found.push(record),
            None => absent.push(id.as_str()),
        }
    }
    if !absent.is_empty() {
        return Err(missing(absent.join(", ")));
    }
    Ok(found)
}

/// Instances that hold an address (every state but terminated).
fn live_instances(state: &State) -> impl Iterator<Item = &Instance> {
    state
        .instances
        .values()
        .map(|i| i.as_ref())
        .filter(|i| i.state != InstanceState::Terminated)
}

/// Addresses in use in a subnet.
fn used_addresses(state: &State, subnet_id: &str) -> BTreeSet<Ipv4Addr> {
    live_instances(state)
        .filter_map(|i| i.network.as_ref())
        .filter(|n| n.subnet_id == subnet_id)
        .map(|n| n.private_ip)
        .collect()
}

fn next_number(used: impl Iterator<Item = u32>, max: u32, what: &str) -> Ec2Result<u32> {
    let used: BTreeSet<u32> = used.collect();
    (1..=max)
        .find(|n| !used.contains(n))
        .ok_or_else(|| Ec2Error::InvalidParameterValue(format!("No more {what} can be created ({max} at most)")))
}

fn new_default_group(vpc_id: &str) -> SecurityGroup {
    let id = IdKind::SecurityGroup.generate();
    SecurityGroup {
        ingress: vec![GroupRule {
            protocol: "-1".into(),
            from_port: -1,
            to_port: -1,
            peer: RulePeer::Group(id.clone()),
            description: String::new(),
        }],
        egress: vec![allow_all_egress()],
        id,
        name: DEFAULT_GROUP.into(),
        description: format!("default VPC security group ({vpc_id})"),
        vpc_id: vpc_id.to_string(),
        tags: Tags::new(),
    }
}

fn allow_all_egress() -> GroupRule {
    GroupRule {
        protocol: "-1".into(),
        from_port: -1,
        to_port: -1,
        peer: RulePeer::Cidr(Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0).expect("0.0.0.0/0")),
        description: String::new(),
    }
}

/// The host interface name of an instance's tap: `ht` and the MAC's last five bytes.
pub fn tap_name(mac: &str) -> String {
    let hex: String = mac.split(':').skip(1).collect();
    format!("ht{hex}")
}

impl Engine {
    /// Creates the default VPC (172.31.0.0/16, with its default group) if there is none,
    /// and a default /20 subnet in every zone that has none.
    pub(crate) fn ensure_default_network(&self) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let mut changes = Changes::default();
        let zones = self.zone_names(&inner.state);
        default_network_changes(&inner.state, &zones, &mut changes);
        if changes.is_empty() {
            return Ok(());
        }
        inner.store.commit(&changes)?;
        inner.state.apply(changes);
        Ok(())
    }

    // ---- VPCs ----------------------------------------------------------------------

    /// CreateVpc, with the VPC's default security group.
    pub fn create_vpc(&self, cidr_block: &str, tags: &[(String, String)], dry: bool) -> Ec2Result<Vpc> {
        if cidr_block.is_empty() {
            return Err(Ec2Error::MissingParameter("CidrBlock".into()));
        }
        let cidr = parse_cidr(cidr_block, "CidrBlock")?;
        ipam::check_vpc_cidr(cidr).map_err(|e| Ec2Error::VpcRange(e.to_string()))?;
        let tags = resource_tags(tags)?;
        let mut inner = self.lock();
        let state = &inner.state;
        let number = next_number(state.vpcs.values().map(|v| v.number), MAX_VPC_NUMBER, "VPCs")?;
        dry_run(dry)?;
        let vpc = Vpc {
            id: IdKind::Vpc.generate(),
            cidr,
            is_default: false,
            number,
            tags,
        };
        let changes = Changes {
            net: vec![
                NetRecord::Vpc(vpc.clone()),
                NetRecord::SecurityGroup(new_default_group(&vpc.id)),
            ],
            ..Changes::default()
        };
        self.commit(&mut inner, changes)?;
        Ok(vpc)
    }

    /// DescribeVpcs.
    pub fn describe_vpcs(&self, ids: &[String], filters: &[Filter]) -> Ec2Result<Vec<Vpc>> {
        filter::check_names(filters, VPC_FILTERS)?;
        let inner = self.lock();
        let state = &inner.state;
        let mut vpcs: Vec<&Vpc> = if ids.is_empty() {
            state.vpcs.values().collect()
        } else {
            lookup(&state.vpcs, ids, IdKind::Vpc, Ec2Error::VpcNotFound)?
        };
        vpcs.retain(|vpc| {
            filter::matches(filters, &vpc.tags, |name| {
                Some(Values::One(match name {
                    "vpc-id" => vpc.id.clone(),
                    "cidr" | "cidr-block" | "cidr-block-association.cidr-block" => vpc.cidr.to_string(),
                    "is-default" => vpc.is_default.to_string(),
                    "state" => "available".into(),
                    _ => return None,
                }))
            })
        });
        Ok(vpcs.into_iter().cloned().collect())
    }

    /// DeleteVpc: only once its subnets and its groups other than `default` are gone.
    pub fn delete_vpc(&self, vpc_id: &str, dry: bool) -> Ec2Result<()> {
        if vpc_id.is_empty() {
            return Err(Ec2Error::MissingParameter("VpcId".into()));
        }
        IdKind::Vpc.validate(vpc_id)?;
        let mut inner = self.lock();
        let state = &inner.state;
        let vpc = state
            .vpcs
            .get(vpc_id)
            .ok_or_else(|| Ec2Error::VpcNotFound(vpc_id.to_string()))?;
        if let Some(subnet) = state.subnets.values().find(|s| s.vpc_id == vpc.id) {
            return Err(Ec2Error::DependencyViolation(format!(
                "The vpc '{vpc_id}' has dependencies and cannot be deleted: subnet {}",
                subnet.id
            )));
        }
        if let Some(group) = state
            .groups
            .values()
            .find(|g| g.vpc_id == vpc.id && g.name != DEFAULT_GROUP)
        {
            return Err(Ec2Error::DependencyViolation(format!(
                "The vpc '{vpc_id}' has dependencies and cannot be deleted: security group {}",
                group.id
            )));
        }
        dry_run(dry)?;
        let mut changes = Changes::default();
        changes.deleted_net.push(vpc.id.clone());
        changes.deleted_net.extend(
            state
                .groups
                .values()
                .filter(|g| g.vpc_id == vpc.id)
                .map(|g| g.id.clone()),
        );
        self.commit(&mut inner, changes)
    }

    // ---- Subnets -------------------------------------------------------------------

    /// CreateSubnet.
    pub fn create_subnet(
        &self,
        vpc_id: &str,
        cidr_block: &str,
        zone: &str,
        tags: &[(String, String)],
        dry: bool,
    ) -> Ec2Result<Subnet> {
        if vpc_id.is_empty() {
            return Err(Ec2Error::MissingParameter("VpcId".into()));
        }
        if cidr_block.is_empty() {
            return Err(Ec2Error::MissingParameter("CidrBlock".into()));
        }
        IdKind::Vpc.validate(vpc_id)?;
        let cidr = parse_cidr(cidr_block, "CidrBlock")?;
        let tags = resource_tags(tags)?;
        let mut inner = self.lock();
        let state = &inner.state;
        let vpc = state
            .vpcs
            .get(vpc_id)
            .ok_or_else(|| Ec2Error::VpcNotFound(vpc_id.to_string()))?;
        let others: Vec<Ipv4Cidr> = state
            .subnets
            .values()
            .filter(|s| s.vpc_id == vpc.id)
            .map(|s| s.cidr)
            .collect();
        ipam::check_subnet_cidr(cidr, vpc.cidr, &others).map_err(|e| match e {
            ipam::IpamError::Conflict { .. } => Ec2Error::SubnetConflict(e.to_string()),
            _ => Ec2Error::SubnetRange(e.to_string()),
        })?;
        let zones = self.zone_names(state);
        let zone = if zone.is_empty() {
            zones.iter().next().cloned().unwrap_or_default()
        } else if zones.contains(zone) {
            zone.to_string()
        } else {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "Value ({zone}) for parameter availabilityZone is invalid. Subnets can currently only be created in \
                 the following availability zones: {}",
                zones.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        };
        let number = next_number(state.subnets.values().map(|s| s.number), MAX_SUBNET_NUMBER, "subnets")?;
        dry_run(dry)?;
        let subnet = Subnet {
            id: IdKind::Subnet.generate(),
            vpc_id: vpc.id.clone(),
            cidr,
            availability_zone: zone,
            default_for_az: false,
            number,
            tags,
        };
        let changes = Changes {
            net: vec![NetRecord::Subnet(subnet.clone())],
            ..Changes::default()
        };
        self.commit(&mut inner, changes)?;
        Ok(subnet)
    }

    /// DescribeSubnets.
    pub fn describe_subnets(&self, ids: &[String], filters: &[Filter]) -> Ec2Result<Vec<SubnetView>> {
        filter::check_names(filters, SUBNET_FILTERS)?;
        let inner = self.lock();
        let state = &inner.state;
        let mut subnets: Vec<&Subnet> = if ids.is_empty() {
            state.subnets.values().collect()
        } else {
            lookup(&state.subnets, ids, IdKind::Subnet, Ec2Error::SubnetNotFound)?
        };
        subnets.retain(|subnet| {
            filter::matches(filters, &subnet.tags, |name| {
                Some(Values::One(match name {
                    "subnet-id" => subnet.id.clone(),
                    "vpc-id" => subnet.vpc_id.clone(),
                    "availability-zone" => subnet.availability_zone.clone(),
                    "cidr-block" | "cidr" => subnet.cidr.to_string(),
                    "default-for-az" => subnet.default_for_az.to_string(),
                    "state" => "available".into(),
                    _ => return None,
                }))
            })
        });
        Ok(subnets
            .into_iter()
            .map(|subnet| SubnetView {
                available: ipam::available_count(subnet.cidr, &used_addresses(state, &subnet.id)),
                subnet: subnet.clone(),
            })
            .collect())
    }

    /// DeleteSubnet: only when no instance uses it.
    pub fn delete_subnet(&self, subnet_id: &str, dry: bool) -> Ec2Result<()> {
        if subnet_id.is_empty() {
            return Err(Ec2Error::MissingParameter("SubnetId".into()));
        }
        IdKind::Subnet.validate(subnet_id)?;
        let mut inner = self.lock();
        let state = &inner.state;
        if !state.subnets.contains_key(subnet_id) {
            return Err(Ec2Error::SubnetNotFound(subnet_id.to_string()));
        }
        if let Some(instance) =
            live_instances(state).find(|i| i.network.as_ref().is_some_and(|n| n.subnet_id == subnet_id))
        {
            return Err(Ec2Error::DependencyViolation(format!(
                "The subnet '{subnet_id}' has dependencies and cannot be deleted: instance {}",
                instance.id
            )));
        }
        dry_run(dry)?;
        let changes = Changes {
            deleted_net: vec![subnet_id.to_string()],
            ..Changes::default()
        };
        self.commit(&mut inner, changes)
    }

    // ---- Security groups -----------------------------------------------------------

    /// CreateSecurityGroup: no inbound rules, all outbound allowed (EC2's start).
    pub fn create_security_group(
        &self,
        name: &str,
        description: &str,
        vpc_id: &str,
        tags: &[(String, String)],
        dry: bool,
    ) -> Ec2Result<String> {
        if name.is_empty() {
            return Err(Ec2Error::MissingParameter("GroupName".into()));
        }
        if description.is_empty() {
            return Err(Ec2Error::MissingParameter("GroupDescription".into()));
        }
        if name.len() > 255 || description.len() > 255 {
            return Err(Ec2Error::InvalidParameterValue(
                "Group names and descriptions are up to 255 characters".into(),
            ));
        }
        if name.starts_with("sg-") {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "Group names may not be in the format sg-*: '{name}'"
            )));
        }
        if name == DEFAULT_GROUP {
            return Err(Ec2Error::GroupReserved(
                "The security group 'default' is reserved".into(),
            ));
        }
        let tags = resource_tags(tags)?;
        let mut inner = self.lock();
        let state = &inner.state;
        let vpc = self.vpc_or_default(state, vpc_id)?;
        if state.groups.values().any(|g| g.vpc_id == vpc.id && g.name == name) {
            return Err(Ec2Error::GroupDuplicate(name.to_string()));
        }
        dry_run(dry)?;
        let group = SecurityGroup {
            id: IdKind::SecurityGroup.generate(),
            name: name.to_string(),
            description: description.to_string(),
            vpc_id: vpc.id.clone(),
            ingress: Vec::new(),
            egress: vec![allow_all_egress()],
            tags,
        };
        let id = group.id.clone();
        let changes = Changes {
            net: vec![NetRecord::SecurityGroup(group)],
            ..Changes::default()
        };
        self.commit(&mut inner, changes)?;
        Ok(id)
    }

    fn vpc_or_default<'a>(&self, state: &'a State, vpc_id: &str) -> Ec2Result<&'a Vpc> {
        if vpc_id.is_empty() {
            return state
                .vpcs
                .values()
                .find(|v| v.is_default)
                .ok_or_else(|| Ec2Error::VpcNotFound("(default VPC)".into()));
        }
        IdKind::Vpc.validate(vpc_id)?;
        state
            .vpcs
            .get(vpc_id)
            .ok_or_else(|| Ec2Error::VpcNotFound(vpc_id.to_string()))
    }

    /// A group by ID, or by name in the default VPC.
    fn group_ref<'a>(&self, state: &'a State, group_id: &str, group_name: &str) -> Ec2Result<&'a SecurityGroup> {
        if !group_id.is_empty() {
            IdKind::SecurityGroup.validate(group_id)?;
            return state
                .groups
                .get(group_id)
                .ok_or_else(|| Ec2Error::GroupNotFound(group_id.to_string()));
        }
        if group_name.is_empty() {
            return Err(Ec2Error::MissingParameter("GroupId".into()));
        }
        let vpc = self.vpc_or_default(state, "")?;
        state
            .groups
            .values()
            .find(|g| g.vpc_id == vpc.id && g.name == group_name)
            .ok_or_else(|| Ec2Error::GroupNotFound(group_name.to_string()))
    }

    /// DescribeSecurityGroups.
    pub fn describe_security_groups(
        &self,
        ids: &[String],
        names: &[String],
        filters: &[Filter],
    ) -> Ec2Result<Vec<SecurityGroup>> {
        filter::check_names(filters, GROUP_FILTERS)?;
        let inner = self.lock();
        let state = &inner.state;
        let mut groups: Vec<&SecurityGroup> = if ids.is_empty() && names.is_empty() {
            state.groups.values().collect()
        } else {
            let mut found = lookup(&state.groups, ids, IdKind::SecurityGroup, Ec2Error::GroupNotFound)?;
            for name in names {
                let group = self.group_ref(state, "", name)?;
                if !found.iter().any(|g| g.id == group.id) {
                    found.push(group);
                }
            }
            found
        };
        groups.retain(|group| {
            filter::matches(filters, &group.tags, |name| {
                Some(Values::One(match name {
                    "group-id" => group.id.clone(),
                    "group-name" => group.name.clone(),
                    "vpc-id" => group.vpc_id.clone(),
                    "description" => group.description.clone(),
                    _ => return None,
                }))
            })
        });
        Ok(groups.into_iter().cloned().collect())
    }

    /// DeleteSecurityGroup: not the default group, not while instances use it
    /// (DependencyViolation) or other groups' rules name it (InvalidGroup.InUse).
    pub fn delete_security_group(&self, group_id: &str, group_name: &str, dry: bool) -> Ec2Result<()> {
        let mut inner = self.lock();
        let state = &inner.state;
        let group = self.group_ref(state, group_id, group_name)?;
        if group.name == DEFAULT_GROUP {
            return Err(Ec2Error::GroupReserved(format!(
                "The security group '{}' is the default group of {} and cannot be deleted",
                group.id, group.vpc_id
            )));
        }
        let users: Vec<&str> = state
            .groups
            .values()
            .filter(|g| g.id != group.id)
            .filter(|g| {
                g.ingress
                    .iter()
                    .chain(&g.egress)
                    .any(|r| r.peer == RulePeer::Group(group.id.clone()))
            })
            .map(|g| g.id.as_str())
            .collect();
        if !users.is_empty() {
            return Err(Ec2Error::GroupInUse(format!(
                "Group {} is used by groups: {}",
                group.id,
                users.join(" ")
            )));
        }
        if let Some(instance) =
            live_instances(state).find(|i| i.network.as_ref().is_some_and(|n| n.group_ids.contains(&group.id)))
        {
            return Err(Ec2Error::DependencyViolation(format!(
                "resource {} has a dependent object ({})",
                group.id, instance.id
            )));
        }
        dry_run(dry)?;
        let changes = Changes {
            deleted_net: vec![group.id.clone()],
            ..Changes::default()
        };
        self.commit(&mut inner, changes)
    }

    /// Authorize/RevokeSecurityGroupIngress/Egress: all the permissions or none.
    pub fn change_security_group_rules(
        &self,
        group_id: &str,
        group_name: &str,
        direction: Direction,
        authorize: bool,
        permissions: &[IpPermission],
        dry: bool,
    ) -> Ec2Result<()> {
        if permissions.is_empty() {
            return Err(Ec2Error::MissingParameter("IpPermissions".into()));
        }
        let mut inner = self.lock();
        let state = &inner.state;
        let group = self.group_ref(state, group_id, group_name)?;
        let mut rules = Vec::new();
        for permission in permissions {
            rules.extend(rules_of(state, group, permission)?);
        }
        let mut next = group.clone();
        let list = match direction {
            Direction::Ingress => &mut next.ingress,
            Direction::Egress => &mut next.egress,
        };
        for rule in &rules {
            let position = list.iter().position(|r| same_rule(r, rule));
            match (authorize, position) {
                (true, Some(_)) => {
                    return Err(Ec2Error::PermissionDuplicate(format!(
                        "the specified rule \"peer: {}, {}, ALLOW\" already exists",
                        peer_text(&rule.peer),
                        ports_text(rule)
                    )))
                }
                (true, None) => list.push(rule.clone()),
                (false, Some(index)) => {
                    list.remove(index);
                }
                (false, None) => {
                    return Err(Ec2Error::PermissionNotFound(format!(
                        "The specified rule does not exist in this security group (peer: {}, {})",
                        peer_text(&rule.peer),
                        ports_text(rule)
                    )))
                }
            }
        }
        if list.len() > MAX_RULES {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "The maximum number of rules per security group ({MAX_RULES}) has been reached"
            )));
        }
        dry_run(dry)?;
        let mut changes = Changes {
            net: vec![NetRecord::SecurityGroup(next)],
            ..Changes::default()
        };
        state.bump_all_hosts(&mut changes);
        self.commit(&mut inner, changes)
    }

    /// ModifyInstanceAttribute `groups`: replaces an instance's groups (any state but
    /// terminated; running instances see the change within a second).
    pub fn modify_instance_groups(&self, instance_id: &str, group_ids: &[String], dry: bool) -> Ec2Result<()> {
        IdKind::Instance.validate(instance_id)?;
        let mut inner = self.lock();
        let state = &inner.state;
        let instance = state
            .instances
            .get(instance_id)
            .ok_or_else(|| Ec2Error::InstanceNotFound(instance_id.to_string()))?;
        if matches!(instance.state, InstanceState::Terminated | InstanceState::ShuttingDown) {
            return Err(Ec2Error::IncorrectInstanceState {
                id: instance_id.to_string(),
                action: "modified",
            });
        }
        let Some(network) = &instance.network else {
            return Err(Ec2Error::UnsupportedOperation(format!(
                "The instance '{instance_id}' has no network interface"
            )));
        };
        let groups = resolve_groups(state, &network.vpc_id, group_ids, &[])?;
        dry_run(dry)?;
        let mut next = instance.as_ref().clone();
        if let Some(network) = next.network.as_mut() {
            network.group_ids = groups;
        }
        let mut changes = Changes {
            instances: vec![next],
            ..Changes::default()
        };
        state.bump_all_hosts(&mut changes);
        self.commit(&mut inner, changes)
    }

    /// ModifyInstanceMetadataOptions.
    pub fn modify_instance_metadata_options(
        &self,
        instance_id: &str,
        options: &MetadataOptions,
        dry: bool,
    ) -> Ec2Result<InstanceNetwork> {
        IdKind::Instance.validate(instance_id)?;
        let mut inner = self.lock();
        let state = &inner.state;
        let instance = state
            .instances
            .get(instance_id)
            .filter(|i| i.state != InstanceState::Terminated)
            .ok_or_else(|| Ec2Error::InstanceNotFound(instance_id.to_string()))?;
        let Some(network) = &instance.network else {
            return Err(Ec2Error::UnsupportedOperation(format!(
                "The instance '{instance_id}' has no network interface"
            )));
        };
        let mut next_network = network.clone();
        apply_metadata_options(&mut next_network, options)?;
        dry_run(dry)?;
        let mut next = instance.as_ref().clone();
        next.network = Some(next_network.clone());
        let mut changes = Changes {
            instances: vec![next],
            ..Changes::default()
        };
        state.bump_hosts(&mut changes, [instance.host_id.as_str()]);
        self.commit(&mut inner, changes)?;
        Ok(next_network)
    }

    // ---- Elastic IPs -----------------------------------------------------------------

    /// AllocateAddress: the lowest free address of the public pool (or the one asked for).
    pub fn allocate_address(
        &self,
        domain: &str,
        address: &str,
        tags: &[(String, String)],
        dry: bool,
    ) -> Ec2Result<Address> {
        if !domain.is_empty() && domain != "vpc" {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "Invalid value '{domain}' for domain (only 'vpc')"
            )));
        }
        let Some(pool) = self.options.public_ip_pool else {
            return Err(Ec2Error::AddressLimitExceeded(
                "No public address pool is configured (hearthd --public-ip-pool)".into(),
            ));
        };
        let tags = resource_tags(tags)?;
        let mut inner = self.lock();
        let state = &inner.state;
        let used: BTreeSet<Ipv4Addr> = state.addresses.values().map(|a| a.public_ip).collect();
        let public_ip = if address.is_empty() {
            pool_addresses(pool)
                .find(|ip| !used.contains(ip))
                .ok_or_else(|| Ec2Error::AddressLimitExceeded(format!("The address pool {pool} is used up")))?
        } else {
            let ip: Ipv4Addr = address
                .parse()
                .map_err(|_| Ec2Error::InvalidParameterValue(format!("Invalid IPv4 address '{address}'")))?;
            if !pool_addresses(pool).any(|candidate| candidate == ip) {
                return Err(Ec2Error::AddressNotFound(format!(
                    "The address '{ip}' is not in the public pool {pool}"
                )));
            }
            if used.contains(&ip) {
                return Err(Ec2Error::AddressInUse(format!(
                    "The address '{ip}' is allocated already"
                )));
            }
            ip
        };
        dry_run(dry)?;
        let record = Address {
            allocation_id: IdKind::Allocation.generate(),
            public_ip,
            association: None,
            tags,
        };
        let changes = Changes {
            net: vec![NetRecord::Address(record.clone())],
            ..Changes::default()
        };
        self.commit(&mut inner, changes)?;
        Ok(record)
    }

    fn address_ref<'a>(&self, state: &'a State, allocation_id: &str, public_ip: &str) -> Ec2Result<&'a Address> {
        if !allocation_id.is_empty() {
            IdKind::Allocation.validate(allocation_id)?;
            return state.addresses.get(allocation_id).ok_or_else(|| {
                Ec2Error::AddressNotFound(format!("The allocation ID '{allocation_id}' does not exist"))
            });
        }
        if public_ip.is_empty() {
            return Err(Ec2Error::MissingParameter("AllocationId".into()));
        }
        state
            .addresses
            .values()
            .find(|a| a.public_ip.to_string() == public_ip)
            .ok_or_else(|| Ec2Error::AddressNotFound(format!("Address '{public_ip}' not found.")))
    }

    /// AssociateAddress: maps the address to an instance's private address. An address
    /// associated elsewhere needs AllowReassociation; an instance's previous address is
    /// disassociated.
    pub fn associate_address(
        &self,
        allocation_id: &str,
        public_ip: &str,
        instance_id: &str,
        allow_reassociation: bool,
        private_ip: &str,
        dry: bool,
    ) -> Ec2Result<String> {
        if instance_id.is_empty() {
            return Err(Ec2Error::MissingParameter("InstanceId".into()));
        }
        IdKind::Instance.validate(instance_id)?;
        let mut inner = self.lock();
        let state = &inner.state;
        let address = self.address_ref(state, allocation_id, public_ip)?;
        let instance = state
            .instances
            .get(instance_id)
            .filter(|i| i.state != InstanceState::Terminated)
            .ok_or_else(|| Ec2Error::InstanceNotFound(instance_id.to_string()))?;
        if instance.state == InstanceState::ShuttingDown {
            return Err(Ec2Error::IncorrectInstanceState {
                id: instance_id.to_string(),
                action: "associated",
            });
        }
        let Some(network) = &instance.network else {
            return Err(Ec2Error::UnsupportedOperation(format!(
                "The instance '{instance_id}' has no network interface"
            )));
        };
        if !private_ip.is_empty() && private_ip != network.private_ip.to_string() {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "The private address {private_ip} is not an address of {instance_id}"
            )));
        }
        if !state.hosts.get(&instance.host_id).is_some_and(|h| h.has_uplink) {
            return Err(Ec2Error::UnsupportedOperation(format!(
                "The host of {instance_id} has no uplink for Elastic IPs (hearth-agent --uplink)"
            )));
        }
        if let Some(current) = &address.association {
            if current.instance_id == instance.id {
                dry_run(dry)?;
                return Ok(current.id.clone());
            }
            if !allow_reassociation {
                return Err(Ec2Error::ResourceAlreadyAssociated(format!(
                    "The address {} is associated with {} ({})",
                    address.public_ip, current.instance_id, current.id
                )));
            }
        }
        dry_run(dry)?;
        let mut changes = Changes::default();
        for other in state.addresses.values() {
            if other.allocation_id != address.allocation_id
                && other.association.as_ref().is_some_and(|a| a.instance_id == instance.id)
            {
                changes.net.push(NetRecord::Address(Address {
                    association: None,
                    ..other.clone()
                }));
            }
        }
        let association = AddressAssociation {
            id: IdKind::Association.generate(),
            instance_id: instance.id.clone(),
            private_ip: network.private_ip,
        };
        let id = association.id.clone();
        changes.net.push(NetRecord::Address(Address {
            association: Some(association),
            ..address.clone()
        }));
        state.bump_all_hosts(&mut changes);
        self.commit(&mut inner, changes)?;
        Ok(id)
    }

    /// DisassociateAddress.
    pub fn disassociate_address(&self, association_id: &str, public_ip: &str, dry: bool) -> Ec2Result<()> {
        let mut inner = self.lock();
        let state = &inner.state;
        let address = if !association_id.is_empty() {
            IdKind::Association.validate(association_id)?;
            state
                .addresses
                .values()
                .find(|a| a.association.as_ref().is_some_and(|s| s.id == association_id))
                .ok_or_else(|| {
                    Ec2Error::AssociationNotFound(format!("The association ID '{association_id}' does not exist"))
                })?
        } else if !public_ip.is_empty() {
            let address = self.address_ref(state, "", public_ip)?;
            if address.association.is_none() {
                return Err(Ec2Error::AssociationNotFound(format!(
                    "The address '{public_ip}' is not associated"
                )));
            }
            address
        } else {
            return Err(Ec2Error::MissingParameter("AssociationId".into()));
        };
        dry_run(dry)?;
        let mut changes = Changes {
            net: vec![NetRecord::Address(Address {
                association: None,
                ..address.clone()
            })],
            ..Changes::default()
        };
        state.bump_all_hosts(&mut changes);
        self.commit(&mut inner, changes)
    }

    /// ReleaseAddress: only when not associated.
    pub fn release_address(&self, allocation_id: &str, public_ip: &str, dry: bool) -> Ec2Result<()> {
        let mut inner = self.lock();
        let state = &inner.state;
        let address = self.address_ref(state, allocation_id, public_ip)?;
        if let Some(association) = &address.association {
            return Err(Ec2Error::AddressInUse(format!(
                "Address {} is in use by {} ({})",
                address.public_ip, association.instance_id, association.id
            )));
        }
        dry_run(dry)?;
        let changes = Changes {
            deleted_net: vec![address.allocation_id.clone()],
            ..Changes::default()
        };
        self.commit(&mut inner, changes)
    }

    /// DescribeAddresses.
    pub fn describe_addresses(
        &self,
        allocation_ids: &[String],
        public_ips: &[String],
        filters: &[Filter],
    ) -> Ec2Result<Vec<Address>> {
        filter::check_names(filters, ADDRESS_FILTERS)?;
        let inner = self.lock();
        let state = &inner.state;
        let mut addresses: Vec<&Address> = if allocation_ids.is_empty() && public_ips.is_empty() {
            state.addresses.values().collect()
        } else {
            let mut found = Vec::new();
            for id in allocation_ids {
                found.push(self.address_ref(state, id, "")?);
            }
            for ip in public_ips {
                found.push(self.address_ref(state, "", ip)?);
            }
            found
        };
        addresses.retain(|address| {
            let association = address.association.as_ref();
            filter::matches(filters, &address.tags, |name| {
                Some(Values::One(match name {
                    "allocation-id" => address.allocation_id.clone(),
                    "association-id" => association?.id.clone(),
                    "instance-id" => association?.instance_id.clone(),
                    "public-ip" => address.public_ip.to_string(),
                    "private-ip-address" => association?.private_ip.to_string(),
                    "domain" => "vpc".into(),
                    _ => return None,
                }))
            })
        });
        Ok(addresses.into_iter().cloned().collect())
    }
}

/// The pool's addresses that can be handed out: not the network, its `.1` (the uplink's
/// router) or the broadcast address.
fn pool_addresses(pool: Ipv4Cidr) -> impl Iterator<Item = Ipv4Addr> {
    let base = u32::from(pool.addr());
    let size = 1u64 << (32 - u32::from(pool.prefix()));
    (0..size)
        .filter(move |offset| size <= 2 || (*offset >= 2 && *offset + 1 < size))
        .map(move |offset| Ipv4Addr::from(base.wrapping_add(offset as u32)))
}

/// The default VPC, its default group and a default subnet per zone, where missing.
pub(crate) fn default_network_changes(state: &State, zones: &BTreeSet<String>, changes: &mut Changes) {
    let vpc = match state.vpcs.values().find(|v| v.is_default) {
        Some(vpc) => vpc.clone(),
        None => {
            let number = (1..=MAX_VPC_NUMBER)
                .find(|n| !state.vpcs.values().any(|v| v.number == *n))
                .unwrap_or(MAX_VPC_NUMBER);
            let vpc = Vpc {
                id: IdKind::Vpc.generate(),
                cidr: default_vpc_cidr(),
                is_default: true,
                number,
                tags: Tags::new(),
            };
            changes.net.push(NetRecord::Vpc(vpc.clone()));
            changes.net.push(NetRecord::SecurityGroup(new_default_group(&vpc.id)));
            vpc
        }
    };
    let mut taken: Vec<Ipv4Cidr> = state
        .subnets
        .values()
        .filter(|s| s.vpc_id == vpc.id)
        .map(|s| s.cidr)
        .collect();
    let mut numbers: BTreeSet<u32> = state.subnets.values().map(|s| s.number).collect();
    for zone in zones {
        let has = state
            .subnets
            .values()
            .any(|s| s.vpc_id == vpc.id && s.default_for_az && &s.availability_zone == zone);
        if has {
            continue;
        }
        let step = 1u32 << (32 - u32::from(DEFAULT_SUBNET_PREFIX));
        let count = 1u32 << (u32::from(DEFAULT_SUBNET_PREFIX) - u32::from(vpc.cidr.prefix()));
        let free = (0..count)
            .filter_map(|k| {
                Ipv4Cidr::new(
                    Ipv4Addr::from(u32::from(vpc.cidr.addr()) + k * step),
                    DEFAULT_SUBNET_PREFIX,
                )
            })
            .find(|cidr| !taken.iter().any(|other| ipam::overlaps(*cidr, *other)));
        let Some(cidr) = free else {
            continue;
        };
        let number = (1..=MAX_SUBNET_NUMBER)
            .find(|n| !numbers.contains(n))
            .unwrap_or(MAX_SUBNET_NUMBER);
        numbers.insert(number);
        taken.push(cidr);
        changes.net.push(NetRecord::Subnet(Subnet {
            id: IdKind::Subnet.generate(),
            vpc_id: vpc.id.clone(),
            cidr,
            availability_zone: zone.clone(),
            default_for_az: true,
            number,
            tags: Tags::new(),
        }));
    }
}

/// The group IDs of a launch or modification: IDs or (default VPC) names, all in `vpc_id`;
/// none given: the VPC's default group.
pub(crate) fn resolve_groups(state: &State, vpc_id: &str, ids: &[String], names: &[String]) -> Ec2Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for id in ids {
        IdKind::SecurityGroup.validate(id)?;
        let group = state
            .groups
            .get(id)
            .ok_or_else(|| Ec2Error::GroupNotFound(id.clone()))?;
        if group.vpc_id != vpc_id {
            return Err(Ec2Error::InvalidGroupVpc(format!(
                "Security group {id} and subnet belong to different networks ({} vs {vpc_id})",
                group.vpc_id
            )));
        }
        if !out.contains(&group.id) {
            out.push(group.id.clone());
        }
    }
    for name in names {
        let group = state
            .groups
            .values()
            .find(|g| g.vpc_id == vpc_id && &g.name == name)
            .ok_or_else(|| Ec2Error::GroupNotFound(name.clone()))?;
        if !out.contains(&group.id) {
            out.push(group.id.clone());
        }
    }
    if out.is_empty() {
        let default = state
            .groups
            .values()
            .find(|g| g.vpc_id == vpc_id && g.name == DEFAULT_GROUP)
            .ok_or_else(|| Ec2Error::GroupNotFound(format!("default ({vpc_id})")))?;
        out.push(default.id.clone());
    }
    if out.len() > 5 {
        return Err(Ec2Error::InvalidParameterValue(
            "An instance may have at most 5 security groups".into(),
        ));
    }
    Ok(out)
}

fn apply_metadata_options(network: &mut InstanceNetwork, options: &MetadataOptions) -> Ec2Result<()> {
    match options.http_tokens.as_str() {
        "" => {}
        "optional" => network.http_tokens_required = false,
        "required" => network.http_tokens_required = true,
        other => {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "Invalid value '{other}' for HttpTokens (optional, required)"
            )))
        }
    }
    match options.http_endpoint.as_str() {
        "" => {}
        "enabled" => network.http_endpoint_enabled = true,
        "disabled" => network.http_endpoint_enabled = false,
        other => {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "Invalid value '{other}' for HttpEndpoint (enabled, disabled)"
            )))
        }
    }
    if let Some(limit) = options.http_put_response_hop_limit {
        if !(1..=64).contains(&limit) {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "Invalid value '{limit}' for HttpPutResponseHopLimit (1 to 64)"
            )));
        }
        network.http_put_response_hop_limit = limit as u8;
    }
    Ok(())
}

/// Plans the network interfaces of a launch: the subnet, groups, an address and a MAC for
/// each of `count` instances (hosts already chosen in `zone`).
pub(crate) struct NetworkPlan {
    /// The subnet.
    pub subnet: Subnet,
    /// Group IDs and IMDS options (no address yet).
    pub template: InstanceNetwork,
}

/// Checks a launch's network and returns its subnet (zone-bound) and groups.
pub(crate) fn plan_launch(
    state: &State,
    launch: &LaunchNetwork,
    zone: Option<&str>,
    count: i32,
) -> Ec2Result<Option<NetworkPlan>> {
    let subnet = if !launch.subnet_id.is_empty() {
        IdKind::Subnet.validate(&launch.subnet_id)?;
        let subnet = state
            .subnets
            .get(&launch.subnet_id)
            .ok_or_else(|| Ec2Error::SubnetNotFound(launch.subnet_id.clone()))?;
        if zone.is_some_and(|z| z != subnet.availability_zone) {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "The subnet {} is in {}, not in the requested zone {}",
                subnet.id,
                subnet.availability_zone,
                zone.unwrap_or_default()
            )));
        }
        subnet.clone()
    } else {
        // Decided per host once placed (the default subnet of its zone).
        let Some(zone) = zone else {
            if !launch.security_group_ids.is_empty() || !launch.security_group_names.is_empty() {
                // Check the groups against the default VPC now; hosts pick the zone later.
                let vpc = state.vpcs.values().find(|v| v.is_default);
                if let Some(vpc) = vpc {
                    resolve_groups(state, &vpc.id, &launch.security_group_ids, &launch.security_group_names)?;
                }
            }
            return Ok(None);
        };
        default_subnet(state, zone)?.clone()
    };
    let group_ids = resolve_groups(
        state,
        &subnet.vpc_id,
        &launch.security_group_ids,
        &launch.security_group_names,
    )?;
    if !launch.private_ip.is_empty() {
        if count != 1 {
            return Err(Ec2Error::InvalidParameterCombination(
                "PrivateIpAddress can only be used with a count of 1".into(),
            ));
        }
        let ip: Ipv4Addr = launch
            .private_ip
            .parse()
            .map_err(|_| Ec2Error::InvalidParameterValue(format!("Invalid private address '{}'", launch.private_ip)))?;
        ipam::allocate_specific(subnet.cidr, ip, &used_addresses(state, &subnet.id)).map_err(|e| match e {
            ipam::IpamError::InUse(_) => Ec2Error::AddressInUse(e.to_string()),
            _ => Ec2Error::InvalidParameterValue(e.to_string()),
        })?;
    }
    let mut template = InstanceNetwork {
        vpc_id: subnet.vpc_id.clone(),
        subnet_id: subnet.id.clone(),
        private_ip: Ipv4Addr::UNSPECIFIED,
        mac: String::new(),
        group_ids,
        http_tokens_required: false,
        http_endpoint_enabled: true,
        http_put_response_hop_limit: 1,
    };
    apply_metadata_options(&mut template, &launch.metadata)?;
    let free = ipam::available_count(subnet.cidr, &used_addresses(state, &subnet.id));
    if free < count as u64 {
        return Err(Ec2Error::InsufficientFreeAddresses(format!(
            "There are not enough free addresses in subnet '{}' to satisfy the requested number of instances",
            subnet.id
        )));
    }
    Ok(Some(NetworkPlan { subnet, template }))
}

/// The default VPC's subnet of a zone.
pub(crate) fn default_subnet<'a>(state: &'a State, zone: &str) -> Ec2Result<&'a Subnet> {
    let vpc = state
        .vpcs
        .values()
        .find(|v| v.is_default)
        .ok_or_else(|| Ec2Error::VpcNotFound("(default VPC)".into()))?;
    state
        .subnets
        .values()
        .find(|s| s.vpc_id == vpc.id && s.default_for_az && s.availability_zone == zone)
        .ok_or_else(|| Ec2Error::SubnetNotFound(format!("(the default subnet of {zone})")))
}

/// One instance's interface in a launch: the next free address (taking those of this
/// launch into account) and a unique MAC.
pub(crate) fn allocate_interface(
    state: &State,
    plan: &NetworkPlan,
    launch: &LaunchNetwork,
    pending: &[Instance],
) -> Ec2Result<InstanceNetwork> {
    let mut used = used_addresses(state, &plan.subnet.id);
    let mut macs: BTreeSet<MacAddr> = live_instances(state)
        .filter_map(|i| i.network.as_ref())
        .filter_map(|n| n.mac.parse().ok())
        .collect();
    for instance in pending {
        if let Some(network) = &instance.network {
            used.insert(network.private_ip);
            if let Ok(mac) = network.mac.parse() {
                macs.insert(mac);
            }
        }
    }
    let private_ip = if launch.private_ip.is_empty() {
        ipam::allocate(plan.subnet.cidr, &used).map_err(|e| Ec2Error::InsufficientFreeAddresses(e.to_string()))?
    } else {
        launch
            .private_ip
            .parse()
            .map_err(|_| Ec2Error::InvalidParameterValue(format!("Invalid private address '{}'", launch.private_ip)))?
    };
    // Tap names come from the MAC's last five bytes: keep those unique too.
    let taps: BTreeSet<String> = macs.iter().map(|m| tap_name(&m.to_string())).collect();
    let mac = loop {
        let mac = ipam::random_mac(&macs);
        if !taps.contains(&tap_name(&mac.to_string())) {
            break mac;
        }
        macs.insert(mac);
    };
    Ok(InstanceNetwork {
        private_ip,
        mac: mac.to_string(),
        ..plan.template.clone()
    })
}

/// Elastic IPs of an instance that terminates: disassociated (EC2 keeps the allocation).
pub(crate) fn release_addresses(state: &State, instance_id: &str, changes: &mut Changes) {
    for address in state.addresses.values() {
        if address
            .association
            .as_ref()
            .is_some_and(|a| a.instance_id == instance_id)
        {
            changes.net.push(NetRecord::Address(Address {
                association: None,
                ..address.clone()
            }));
        }
    }
}

/// The public address associated with an instance.
pub(crate) fn public_ip_of(state: &State, instance_id: &str) -> Option<Ipv4Addr> {
    state
        .addresses
        .values()
        .find(|a| a.association.as_ref().is_some_and(|s| s.instance_id == instance_id))
        .map(|a| a.public_ip)
}

fn same_rule(a: &GroupRule, b: &GroupRule) -> bool {
    a.protocol == b.protocol && a.from_port == b.from_port && a.to_port == b.to_port && a.peer == b.peer
}

fn peer_text(peer: &RulePeer) -> String {
    match peer {
        RulePeer::Cidr(cidr) => cidr.to_string(),
        RulePeer::Group(id) => id.clone(),
    }
}

fn ports_text(rule: &GroupRule) -> String {
    match rule.protocol.as_str() {
        "-1" => "ALL".to_string(),
        protocol => format!("{protocol} {}-{}", rule.from_port, rule.to_port),
    }
}

/// One permission split into rules (one per peer), checked the EC2 way.
fn rules_of(state: &State, group: &SecurityGroup, permission: &IpPermission) -> Ec2Result<Vec<GroupRule>> {
    let protocol: hearth_net::Protocol = permission.ip_protocol.parse().map_err(|_| {
        Ec2Error::InvalidParameterValue(format!(
            "Invalid value '{}' for IP protocol. Unknown protocol.",
            permission.ip_protocol
        ))
    })?;
    let (from_port, to_port) = match protocol {
        hearth_net::Protocol::Tcp | hearth_net::Protocol::Udp => {
            let (Some(from), Some(to)) = (permission.from_port, permission.to_port) else {
                return Err(Ec2Error::InvalidParameterValue(format!(
                    "Invalid value for portRange. Must specify both from and to ports with TCP/UDP ({protocol})"
                )));
            };
            if (from, to) == (-1, -1) {
                (0, 65535)
            } else if !(0..=65535).contains(&from) || !(0..=65535).contains(&to) || from > to {
                return Err(Ec2Error::InvalidParameterValue(format!(
                    "Invalid TCP/UDP port range {from}-{to}: ports are 0-65535, from <= to"
                )));
            } else {
                (from, to)
            }
        }
        hearth_net::Protocol::Icmp => {
            let from = permission.from_port.unwrap_or(-1);
            let to = permission.to_port.unwrap_or(-1);
            if !(-1..=255).contains(&from) || !(-1..=255).contains(&to) {
                return Err(Ec2Error::InvalidParameterValue(format!(
                    "Invalid ICMP type/code {from}/{to}: -1 or 0-255"
                )));
            }
            (from, to)
        }
        hearth_net::Protocol::All | hearth_net::Protocol::Number(_) => (-1, -1),
    };
    if permission.ip_ranges.is_empty() && permission.groups.is_empty() {
        return Err(Ec2Error::MissingParameter(
            "IpRanges or UserIdGroupPairs (a rule needs a source or destination)".into(),
        ));
    }
    let mut rules = Vec::new();
    for (cidr, description) in &permission.ip_ranges {
        rules.push(GroupRule {
            protocol: protocol.to_string(),
            from_port,
            to_port,
            peer: RulePeer::Cidr(parse_cidr(cidr, "CidrIp")?),
            description: description.clone(),
        });
    }
    for (id, description) in &permission.groups {
        IdKind::SecurityGroup.validate(id)?;
        let peer = state
            .groups
            .get(id)
            .ok_or_else(|| Ec2Error::GroupNotFound(id.clone()))?;
        if peer.vpc_id != group.vpc_id {
            return Err(Ec2Error::InvalidGroupVpc(format!(
                "You have specified two resources that belong to different networks ({} and {})",
                group.id, peer.id
            )));
        }
        rules.push(GroupRule {
            protocol: protocol.to_string(),
            from_port,
            to_port,
            peer: RulePeer::Group(id.clone()),
            description: description.clone(),
        });
    }
    Ok(rules)
}

/// A group's rules as the firewall compiler takes them.
fn compile_rules(rules: &[GroupRule]) -> Vec<hearth_net::Rule> {
    rules
        .iter()
        .filter_map(|rule| {
            let protocol: hearth_net::Protocol = rule.protocol.parse().ok()?;
            let out = hearth_net::Rule::new(protocol, rule.from_port, rule.to_port);
            Some(match &rule.peer {
                RulePeer::Cidr(cidr) => out.cidr(*cidr),
                RulePeer::Group(id) => out.group(id),
            })
        })
        .collect()
}

/// What one host's agent builds: its subnets (with VXLAN peers), the firewall of its
/// ports, the Elastic IPs of its instances.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostNetwork {
    /// Subnets with a port on the host.
    pub subnets: Vec<HostSubnet>,
    /// The security-group firewall.
    pub firewall: hearth_net::HostFirewall,
    /// Elastic IPs of instances on the host.
    pub elastic_ips: Vec<HostElasticIp>,
}

/// A subnet as one host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSubnet {
    /// `subnet-…`.
    pub subnet_id: String,
    /// `vpc-…`.
    pub vpc_id: String,
    /// CIDR.
    pub cidr: Ipv4Cidr,
    /// The router's address (`.1`).
    pub gateway: Ipv4Addr,
    /// Subnet number.
    pub number: u32,
    /// VPC number.
    pub vpc_number: u32,
    /// Underlay addresses of other hosts with ports in the subnet.
    pub peers: Vec<String>,
    /// Instances of the subnet on other hosts: address and MAC.
    pub neighbors: Vec<(Ipv4Addr, String)>,
}

/// An Elastic IP on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostElasticIp {
    /// Public.
    pub public_ip: Ipv4Addr,
    /// Private.
    pub private_ip: Ipv4Addr,
    /// The instance's subnet.
    pub subnet_id: String,
    /// The instance.
    pub instance_id: String,
}

/// The host's network: every non-terminated instance on it with an interface is a port.
pub(crate) fn host_network(state: &State, host_id: &str) -> HostNetwork {
    let mut ports: Vec<(&Instance, &InstanceNetwork)> = live_instances(state)
        .filter(|i| i.host_id == host_id)
        .filter_map(|i| i.network.as_ref().map(|n| (i, n)))
        .collect();
    ports.sort_by(|a, b| (a.0.launch_time_ms, &a.0.id).cmp(&(b.0.launch_time_ms, &b.0.id)));
    let mut out = HostNetwork::default();
    // Every subnet with an instance anywhere in a VPC that has a port here: the host routes
    // between a VPC's subnets itself (distributed routing), reaching the others over VXLAN.
    let local_vpcs: BTreeSet<&str> = ports.iter().map(|(_, n)| n.vpc_id.as_str()).collect();
    let subnet_ids: BTreeSet<&str> = live_instances(state)
        .filter_map(|i| i.network.as_ref())
        .filter(|n| local_vpcs.contains(n.vpc_id.as_str()))
        .map(|n| n.subnet_id.as_str())
        .collect();
    for subnet_id in &subnet_ids {
        let Some(subnet) = state.subnets.get(*subnet_id) else {
            continue;
        };
        let Some(vpc) = state.vpcs.get(&subnet.vpc_id) else {
            continue;
        };
        let remote: Vec<&Instance> = live_instances(state)
            .filter(|i| i.host_id != host_id && i.network.as_ref().is_some_and(|n| n.subnet_id == subnet.id))
            .collect();
        // Every host with a port in the VPC has this subnet's bridge (it routes to it).
        let peers: BTreeSet<String> = live_instances(state)
            .filter(|i| i.host_id != host_id && i.network.as_ref().is_some_and(|n| n.vpc_id == vpc.id))
            .filter_map(|i| state.hosts.get(&i.host_id))
            .filter(|h| !h.underlay_ip.is_empty())
            .map(|h| h.underlay_ip.clone())
            .collect();
        let mut neighbors: Vec<(Ipv4Addr, String)> = remote
            .iter()
            .filter_map(|i| i.network.as_ref())
            .map(|n| (n.private_ip, n.mac.clone()))
            .collect();
        neighbors.sort();
        out.subnets.push(HostSubnet {
            subnet_id: subnet.id.clone(),
            vpc_id: vpc.id.clone(),
            cidr: subnet.cidr,
            gateway: ipam::gateway(subnet.cidr),
            number: subnet.number,
            vpc_number: vpc.number,
            peers: peers.into_iter().collect(),
            neighbors,
        });
        out.firewall.vpc_zones.insert(vpc.id.clone(), vpc.number as u16);
    }
    for (instance, network) in &ports {
        let Ok(mac) = network.mac.parse() else {
            continue;
        };
        out.firewall.ports.push(hearth_net::Port {
            tap: tap_name(&network.mac),
            mac,
            ipv4: network.private_ip,
            vpc_id: network.vpc_id.clone(),
            group_ids: network.group_ids.clone(),
        });
        if let Some(ip) = public_ip_of(state, &instance.id) {
            out.elastic_ips.push(HostElasticIp {
                public_ip: ip,
                private_ip: network.private_ip,
                subnet_id: network.subnet_id.clone(),
                instance_id: instance.id.clone(),
            });
        }
    }
    // The groups the ports use, and those their rules name as peers.
    let mut wanted: BTreeSet<String> = ports.iter().flat_map(|(_, n)| n.group_ids.iter().cloned()).collect();
    let peers: Vec<String> = wanted
        .iter()
        .filter_map(|id| state.groups.get(id))
        .flat_map(|g| g.ingress.iter().chain(&g.egress))
        .filter_map(|r| match &r.peer {
            RulePeer::Group(id) => Some(id.clone()),
            RulePeer::Cidr(_) => None,
        })
        .collect();
    wanted.extend(peers);
    for id in wanted {
        let Some(group) = state.groups.get(&id) else {
            continue;
        };
        let remote_members: BTreeSet<Ipv4Addr> = live_instances(state)
            .filter(|i| i.host_id != host_id)
            .filter_map(|i| i.network.as_ref())
            .filter(|n| n.group_ids.contains(&group.id))
            .map(|n| n.private_ip)
            .collect();
        out.firewall.groups.push(hearth_net::SecurityGroup {
            id: group.id.clone(),
            vpc_id: group.vpc_id.clone(),
            ingress: compile_rules(&group.ingress),
            egress: compile_rules(&group.egress),
            remote_members: remote_members.into_iter().collect(),
        });
        out.firewall
            .vpc_zones
            .entry(group.vpc_id.clone())
            .or_insert_with(|| state.vpcs.get(&group.vpc_id).map_or(0, |v| v.number as u16));
    }
    out.firewall.vpc_zones.retain(|_, zone| *zone != 0);
    out
}

/// Public addresses and group names, for showing instances.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetNames {
    /// Elastic IP by instance ID.
    pub public_ips: std::collections::HashMap<String, Ipv4Addr>,
    /// Group name by group ID.
    pub group_names: std::collections::HashMap<String, String>,
}

pub(crate) fn net_names(state: &State) -> std::sync::Arc<NetNames> {
    std::sync::Arc::new(NetNames {
        public_ips: state
            .addresses
            .values()
            .filter_map(|a| a.association.as_ref().map(|s| (s.instance_id.clone(), a.public_ip)))
            .collect(),
        group_names: state.groups.values().map(|g| (g.id.clone(), g.name.clone())).collect(),
    })
}
