//! Tags on every resource, regions, availability zones and instance types.

use std::collections::BTreeSet;

use super::{check_tag, Engine, State, MAX_TAGS};
use crate::error::{Ec2Error, Ec2Result};
use crate::filter::{self, Filter, Values};
use crate::ids::IdKind;
use crate::instance_types::InstanceType;
use crate::model::NetRecord;
use crate::model::{ImageState, Tags, VolumeState};
use crate::store::Changes;

/// DescribeTags entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagDescription {
    /// The resource.
    pub resource_id: String,
    /// instance, volume, image, key-pair.
    pub resource_type: String,
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}

/// A region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// Name.
    pub name: String,
    /// Endpoint.
    pub endpoint: String,
}

/// An availability zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvailabilityZone {
    /// Name.
    pub name: String,
    /// `available` (a live host) or `impaired`.
    pub state: String,
    /// Region.
    pub region: String,
    /// Hosts registered in it.
    pub hosts: u32,
}

const TAG_FILTERS: &[&str] = &["resource-id", "resource-type", "key", "value"];
const TYPE_FILTERS: &[&str] = &[
    "instance-type",
    "family",
    "vcpu-info.default-vcpus",
    "memory-info.size-in-mib",
    "burstable-performance-supported",
    "instance-storage-supported",
];

/// The tags of a resource, `None` when it does not exist (or is gone).
fn tags_of<'a>(state: &'a State, id: &str) -> Option<&'a Tags> {
    match IdKind::of(id)? {
        IdKind::Instance => state.instances.get(id).map(|i| &i.tags),
        IdKind::Volume => state
            .volumes
            .get(id)
            .filter(|v| v.state != VolumeState::Deleted)
            .map(|v| &v.tags),
        IdKind::Image => state
            .images
            .get(id)
            .filter(|i| i.state != ImageState::Deregistered)
            .map(|i| &i.tags),
        IdKind::KeyPair => state.key_pairs.values().find(|k| k.id == id).map(|k| &k.tags),
        IdKind::Snapshot => state.snapshots.get(id).map(|s| &s.tags),
        IdKind::Vpc => state.vpcs.get(id).map(|v| &v.tags),
        IdKind::Subnet => state.subnets.get(id).map(|s| &s.tags),
        IdKind::SecurityGroup => state.groups.get(id).map(|g| &g.tags),
        IdKind::Allocation => state.addresses.get(id).map(|a| &a.tags),
        IdKind::Reservation | IdKind::Association => None,
    }
}

/// Checks resource IDs: known kind, well formed, existing (all or nothing).
fn check_resources(state: &State, resources: &[String]) -> Ec2Result<()> {
    if resources.is_empty() {
        return Err(Ec2Error::MissingParameter("ResourceId".into()));
    }
    for id in resources {
        let kind = match IdKind::of(id) {
            Some(IdKind::Reservation | IdKind::Association) | None => return Err(Ec2Error::InvalidId(id.clone())),
            Some(kind) => kind,
        };
        if kind == IdKind::KeyPair {
            if !kind.is_well_formed(id) {
                return Err(Ec2Error::InvalidId(id.clone()));
            }
        } else {
            kind.validate(id)?;
        }
        if tags_of(state, id).is_none() {
            return Err(match kind {
                IdKind::Instance => Ec2Error::InstanceNotFound(id.clone()),
                IdKind::Volume => Ec2Error::VolumeNotFound(id.clone()),
                IdKind::Image => Ec2Error::ImageNotFound(id.clone()),
                IdKind::Snapshot => Ec2Error::SnapshotNotFound(id.clone()),
                IdKind::Vpc => Ec2Error::VpcNotFound(id.clone()),
                IdKind::Subnet => Ec2Error::SubnetNotFound(id.clone()),
                IdKind::SecurityGroup => Ec2Error::GroupNotFound(id.clone()),
                IdKind::Allocation => Ec2Error::AddressNotFound(format!("The allocation ID '{id}' does not exist")),
                _ => Ec2Error::KeyPairNotFound(id.clone()),
            });
        }
    }
    Ok(())
}

/// Writes new tags for a resource into `changes`.
fn set_tags(state: &State, changes: &mut Changes, id: &str, tags: Tags) {
    match IdKind::of(id) {
        Some(IdKind::Instance) => {
            if let Some(instance) = state.instances.get(id) {
                changes.instances.push(crate::model::Instance {
                    tags,
                    ..instance.as_ref().clone()
                });
            }
        }
        Some(IdKind::Volume) => {
            if let Some(volume) = state.volumes.get(id) {
                changes.volumes.push(crate::model::Volume { tags, ..volume.clone() });
            }
        }
        Some(IdKind::Image) => {
            if let Some(image) = state.images.get(id) {
                changes.images.push(crate::model::Image { tags, ..image.clone() });
            }
        }
        Some(IdKind::KeyPair) => {
            if let Some(key) = state.key_pairs.values().find(|k| k.id == id) {
                changes.key_pairs.push(crate::model::KeyPair { tags, ..key.clone() });
            }
        }
        Some(IdKind::Vpc) => {
            if let Some(vpc) = state.vpcs.get(id) {
                changes
                    .net
                    .push(NetRecord::Vpc(crate::model::Vpc { tags, ..vpc.clone() }));
            }
        }
        Some(IdKind::Subnet) => {
            if let Some(subnet) = state.subnets.get(id) {
                changes
                    .net
                    .push(NetRecord::Subnet(crate::model::Subnet { tags, ..subnet.clone() }));
            }
        }
        Some(IdKind::SecurityGroup) => {
            if let Some(group) = state.groups.get(id) {
                changes.net.push(NetRecord::SecurityGroup(crate::model::SecurityGroup {
                    tags,
                    ..group.clone()
                }));
            }
        }
        Some(IdKind::Allocation) => {
            if let Some(address) = state.addresses.get(id) {
                changes.net.push(NetRecord::Address(crate::model::Address {
                    tags,
                    ..address.clone()
                }));
            }
        }
        Some(IdKind::Snapshot) => {
            if let Some(snapshot) = state.snapshots.get(id) {
                changes.snapshots.push(crate::model::SnapshotRecord {
                    tags,
                    ..snapshot.clone()
                });
            }
        }
        _ => {}
    }
}

impl Engine {
    /// CreateTags: adds or overwrites tags on every resource (all or nothing).
    pub fn create_tags(&self, resources: &[String], tags: &[(String, String)], dry_run: bool) -> Ec2Result<()> {
        if tags.is_empty() {
            return Err(Ec2Error::MissingParameter("Tag".into()));
        }
        for (key, value) in tags {
            check_tag(key, value)?;
        }
        let mut inner = self.lock();
        let state = &inner.state;
        check_resources(state, resources)?;
        let mut changes = Changes::default();
        let unique: BTreeSet<&str> = resources.iter().map(String::as_str).collect();
        for id in unique {
            let mut next = tags_of(state, id).cloned().unwrap_or_default();
            for (key, value) in tags {
                next.insert(key.clone(), value.clone());
            }
            if next.len() > MAX_TAGS {
                return Err(Ec2Error::TagLimitExceeded(format!(
                    "The resource '{id}' would have more than {MAX_TAGS} tags"
                )));
            }
            set_tags(state, &mut changes, id, next);
        }
        if dry_run {
            return Err(Ec2Error::DryRunOperation);
        }
        self.commit(&mut inner, changes)
    }

    /// DeleteTags: removes the given keys (only where the value matches, when one is given);
    /// no tags at all removes every tag.
    pub fn delete_tags(&self, resources: &[String], tags: &[(String, Option<String>)], dry_run: bool) -> Ec2Result<()> {
        let mut inner = self.lock();
        let state = &inner.state;
        check_resources(state, resources)?;
        if dry_run {
            return Err(Ec2Error::DryRunOperation);
        }
        let mut changes = Changes::default();
        let unique: BTreeSet<&str> = resources.iter().map(String::as_str).collect();
        for id in unique {
            let before = tags_of(state, id).cloned().unwrap_or_default();
            let mut next = before.clone();
            if tags.is_empty() {
                next.clear();
            }
            for (key, value) in tags {
                if value.as_ref().is_none_or(|value| next.get(key) == Some(value)) {
                    next.remove(key);
                }
            }
            if next != before {
                set_tags(state, &mut changes, id, next);
            }
        }
        self.commit(&mut inner, changes)
    }

    /// DescribeTags: every tag of every resource, filtered, by resource then key, paged.
    pub fn describe_tags(
        &self,
        filters: &[Filter],
        max_results: i32,
        next_token: &str,
    ) -> Ec2Result<(Vec<TagDescription>, String)> {
        filter::check_names(filters, TAG_FILTERS)?;
        let inner = self.lock();
        let state = &inner.state;
        let mut all = Vec::new();
        let mut push = |id: &str, kind: IdKind, tags: &Tags| {
            for (key, value) in tags {
                all.push(TagDescription {
                    resource_id: id.to_string(),
                    resource_type: kind.resource_type().to_string(),
                    key: key.clone(),
                    value: value.clone(),
                });
            }
        };
        for instance in state.instances.values() {
            push(&instance.id, IdKind::Instance, &instance.tags);
        }
        for volume in state.volumes.values().filter(|v| v.state != VolumeState::Deleted) {
            push(&volume.id, IdKind::Volume, &volume.tags);
        }
        for image in state.images.values().filter(|i| i.state != ImageState::Deregistered) {
            push(&image.id, IdKind::Image, &image.tags);
        }
        for key in state.key_pairs.values() {
            push(&key.id, IdKind::KeyPair, &key.tags);
        }
        for snapshot in state.snapshots.values() {
            push(&snapshot.id, IdKind::Snapshot, &snapshot.tags);
        }
        let empty = Tags::new();
        all.retain(|tag| {
            filter::matches(filters, &empty, |name| {
                Some(Values::One(match name {
                    "resource-id" => tag.resource_id.clone(),
                    "resource-type" => tag.resource_type.clone(),
                    "key" => tag.key.clone(),
                    "value" => tag.value.clone(),
                    _ => return None,
                }))
            })
        });
        all.sort_by(|a, b| (&a.resource_id, &a.key).cmp(&(&b.resource_id, &b.key)));
        filter::paginate(all, max_results, next_token, |tag| {
            format!("{}\u{1}{}", tag.resource_id, tag.key)
        })
    }

    /// DescribeRegions: hearthd is one region.
    pub fn describe_regions(&self) -> Vec<Region> {
        vec![Region {
            name: self.options.region.clone(),
            endpoint: self.options.endpoint.clone(),
        }]
    }

    /// Zone names: configured ones, those of registered hosts, or `<region>a` when there are none.
    pub(crate) fn zone_names(&self, state: &State) -> BTreeSet<String> {
        let mut zones: BTreeSet<String> = self.options.availability_zones.iter().cloned().collect();
        zones.extend(state.hosts.values().map(|host| host.availability_zone.clone()));
        if zones.is_empty() {
            zones.insert(format!("{}a", self.options.region));
        }
        zones
    }

    /// DescribeAvailabilityZones: `available` when a host there synced recently.
    pub fn describe_availability_zones(&self, names: &[String]) -> Ec2Result<Vec<AvailabilityZone>> {
        let now = self.now();
        let inner = self.lock();
        let state = &inner.state;
        let zones = self.zone_names(state);
        if let Some(unknown) = names.iter().find(|name| !zones.contains(name.as_str())) {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "The zone '{unknown}' does not exist"
            )));
        }
        Ok(zones
            .into_iter()
            .filter(|zone| names.is_empty() || names.contains(zone))
            .map(|zone| {
                let hosts: Vec<&str> = state
                    .hosts
                    .values()
                    .filter(|host| host.availability_zone == zone)
                    .map(|host| host.id.as_str())
                    .collect();
                let live = hosts
                    .iter()
                    .any(|host| state.host_is_live(host, now, self.options.host_timeout_ms));
                AvailabilityZone {
                    name: zone,
                    state: if live { "available" } else { "impaired" }.to_string(),
                    region: self.options.region.clone(),
                    hosts: hosts.len() as u32,
                }
            })
            .collect())
    }

    /// DescribeInstanceTypes: all, or those named (each must exist), filtered.
    pub fn describe_instance_types(&self, names: &[String], filters: &[Filter]) -> Ec2Result<Vec<InstanceType>> {
        filter::check_names(filters, TYPE_FILTERS)?;
        let types = &self.options.instance_types;
        if let Some(unknown) = names.iter().find(|name| types.get(name).is_none()) {
            return Err(Ec2Error::InvalidInstanceType(unknown.clone()));
        }
        let empty = Tags::new();
        Ok(types
            .all()
            .filter(|t| names.is_empty() || names.contains(&t.name))
            .filter(|t| {
                filter::matches(filters, &empty, |name| {
                    Some(Values::One(match name {
                        "instance-type" => t.name.clone(),
                        "family" => t.family.clone(),
                        "vcpu-info.default-vcpus" => t.vcpus.to_string(),
                        "memory-info.size-in-mib" => t.memory_mib.to_string(),
                        "burstable-performance-supported" => t.burstable.to_string(),
                        "instance-storage-supported" => (t.instance_store_disks > 0).to_string(),
                        _ => return None,
                    }))
                })
            })
            .cloned()
            .collect())
    }
}
