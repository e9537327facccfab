//! Instances: RunInstances, Describe*, Start/Stop/Reboot/Terminate, attributes, console.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;

use super::{check_tag, require_ids, Engine, State, MAX_TAGS};
use crate::error::{Ec2Error, Ec2Result};
use crate::filter::{self, Filter, Values};
use crate::ids::IdKind;
use crate::instance_types::DEFAULT_INSTANCE_TYPE;
use crate::model::{
    ActualSeen, BlockDeviceMapping, ClientTokenRecord, DesiredRun, Image, ImageState, Instance, InstanceBlockDevice,
    InstanceState, ShutdownBehavior, StateReason, Tags, Volume, VolumeAttachment, VolumeState, GIB,
};
use crate::scheduler::{self, HostRoom};
use crate::store::Changes;
use crate::time;

/// Tags for the resources RunInstances creates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TagSpecification {
    /// `instance` or `volume`.
    pub resource_type: String,
    /// `(key, value)` pairs.
    pub tags: Vec<(String, String)>,
}

/// RunInstances.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunInstancesRequest {
    /// `ami-…`.
    pub image_id: String,
    /// Empty: `t3.micro`.
    pub instance_type: String,
    /// 0: 1.
    pub min_count: i32,
    /// 0: `min_count`.
    pub max_count: i32,
    /// Key pair name.
    pub key_name: String,
    /// Raw user data.
    pub user_data: Vec<u8>,
    /// Launch block device mappings.
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    /// Tags.
    pub tag_specifications: Vec<TagSpecification>,
    /// Idempotency token.
    pub client_token: String,
    /// Validate only.
    pub dry_run: bool,
    /// Refuse TerminateInstances.
    pub disable_api_termination: bool,
    /// `stop` (default) or `terminate`.
    pub instance_initiated_shutdown_behavior: String,
    /// Placement zone; empty: any.
    pub availability_zone: String,
    /// Subnet, groups, private address, IMDS options.
    pub network: super::network::LaunchNetwork,
}

/// The instances of one RunInstances call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// `r-…`.
    pub reservation_id: String,
    /// Owner.
    pub owner_id: String,
    /// Its instances, by launch index (shared with the engine's working set).
    pub instances: Vec<Arc<Instance>>,
    /// Public addresses and group names of the network.
    pub net: Arc<super::network::NetNames>,
}

/// One instance's state change, by ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// The instance.
    pub instance_id: String,
    /// Before.
    pub previous: InstanceState,
    /// After.
    pub current: InstanceState,
}

/// DescribeInstanceStatus entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    /// The instance.
    pub instance_id: String,
    /// Its zone.
    pub availability_zone: String,
    /// Its state.
    pub state: InstanceState,
    /// ok, impaired, initializing, not-applicable.
    pub system_status: String,
    /// ok, impaired, initializing, not-applicable.
    pub instance_status: String,
}

/// ModifyInstanceAttribute (one attribute per call).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModifyInstanceRequest {
    /// The instance.
    pub instance_id: String,
    /// DisableApiTermination.
    pub disable_api_termination: Option<bool>,
    /// InstanceInitiatedShutdownBehavior.
    pub instance_initiated_shutdown_behavior: Option<String>,
    /// Instance type (stopped only).
    pub instance_type: Option<String>,
    /// User data (stopped only).
    pub user_data: Option<Vec<u8>>,
    /// Kernel file (stopped only).
    pub kernel: Option<String>,
    /// Initrd file (stopped only).
    pub ramdisk: Option<String>,
    /// Validate only.
    pub dry_run: bool,
}

/// DescribeInstanceAttribute answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceAttribute {
    /// The instance.
    pub instance_id: String,
    /// The attribute asked for.
    pub attribute: String,
    /// Scalar value as text (user data in base64).
    pub value: String,
    /// For `blockDeviceMapping`.
    pub block_devices: Vec<InstanceBlockDevice>,
}

const INSTANCE_FILTERS: &[&str] = &[
    "instance-id",
    "instance-state-name",
    "instance-state-code",
    "instance-type",
    "image-id",
    "availability-zone",
    "reservation-id",
    "key-name",
    "host-id",
    "launch-index",
    "root-device-type",
    "client-token",
];

const MAX_USER_DATA: usize = 16 * 1024;
const CONSOLE_TAIL: u64 = 64 * 1024;
use crate::volume_types::VOLUME_TYPES;

fn instance_values(instance: &Instance, name: &str) -> Option<Values> {
    Some(Values::One(match name {
        "instance-id" => instance.id.clone(),
        "instance-state-name" => instance.state.name().to_string(),
        "instance-state-code" => instance.state.code().to_string(),
        "instance-type" => instance.instance_type.clone(),
        "image-id" => instance.image_id.clone(),
        "availability-zone" => instance.availability_zone.clone(),
        "reservation-id" => instance.reservation_id.clone(),
        "key-name" => instance.key_name.clone(),
        "host-id" => instance.host_id.clone(),
        "launch-index" => instance.launch_index.to_string(),
        "root-device-type" => instance.root_device_type.clone(),
        "client-token" => instance.client_token.clone(),
        _ => return None,
    }))
}

fn page_key(instance: &Instance) -> String {
    format!("{:020}/{}", instance.launch_time_ms.max(0), instance.id)
}

fn user_initiated(now: i64) -> String {
    format!("User initiated ({})", time::gmt(now))
}

/// Validates instance IDs and looks them all up (all or nothing).
/// Applies `transition` to each instance of a validated batch: `Some(next)` is written,
/// `None` leaves the instance as it is. Every instance's previous and current state is
/// reported, as EC2's Start/Stop/TerminateInstances answers do.
fn transition_all(
    instances: Vec<&Instance>,
    mut transition: impl FnMut(&Instance) -> Option<Instance>,
) -> (Changes, Vec<StateChange>) {
    let mut changes = Changes::default();
    let mut result = Vec::with_capacity(instances.len());
    for instance in instances {
        let next = transition(instance);
        result.push(StateChange {
            instance_id: instance.id.clone(),
            previous: instance.state,
            current: next.as_ref().map_or(instance.state, |next| next.state),
        });
        changes.instances.extend(next);
    }
    (changes, result)
}

pub(crate) fn lookup<'a>(state: &'a State, ids: &[String]) -> Ec2Result<Vec<&'a Instance>> {
    for id in ids {
        IdKind::Instance.validate(id)?;
    }
    let missing: Vec<&str> = ids
        .iter()
        .filter(|id| !state.instances.contains_key(id.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(Ec2Error::InstanceNotFound(missing.join(", ")));
    }
    let mut seen = BTreeSet::new();
    Ok(ids
        .iter()
        .filter(|id| seen.insert(id.as_str()))
        .map(|id| state.instances[id.as_str()].as_ref())
        .collect())
}

/// [`lookup`], answering the shared records.
fn lookup_shared<'a>(state: &'a State, ids: &[String]) -> Ec2Result<Vec<&'a Arc<Instance>>> {
    lookup(state, ids)?;
    let mut seen = BTreeSet::new();
    Ok(ids
        .iter()
        .filter(|id| seen.insert(id.as_str()))
        .map(|id| &state.instances[id.as_str()])
        .collect())
}

pub(crate) fn dry_run(flag: bool) -> Ec2Result<()> {
    if flag {
        return Err(Ec2Error::DryRunOperation);
    }
    Ok(())
}

/// Validates a launch's tags, split by resource type.
fn launch_tags(specs: &[TagSpecification]) -> Ec2Result<(Tags, Tags)> {
    let (mut instance_tags, mut volume_tags) = (Tags::new(), Tags::new());
    for spec in specs {
        let target = match spec.resource_type.as_str() {
            "instance" => &mut instance_tags,
            "volume" => &mut volume_tags,
            other => {
                return Err(Ec2Error::InvalidParameterValue(format!(
                    "'{other}' is not a valid taggable resource type for this operation"
                )))
            }
        };
        for (key, value) in &spec.tags {
            check_tag(key, value)?;
            target.insert(key.clone(), value.clone());
        }
        if target.len() > MAX_TAGS {
            return Err(Ec2Error::TagLimitExceeded(format!(
                "More than {MAX_TAGS} tags on one resource"
            )));
        }
    }
    Ok((instance_tags, volume_tags))
}

/// A volume to create for each launched instance.
struct VolumePlan {
    device_name: String,
    size_gib: u64,
    volume_type: String,
    iops: Option<u32>,
    throughput_mibps: Option<u32>,
    encrypted: bool,
    delete_on_termination: bool,
    source_path: String,
}

/// The volumes of a launch: the root from the image, then the image's and the launch's
/// other mappings (the launch's override the image's by device; `no_device` removes one).
fn plan_volumes(image: &Image, launch: &[BlockDeviceMapping]) -> Ec2Result<Vec<VolumePlan>> {
    let mut seen = BTreeSet::new();
    for mapping in launch {
        if !mapping.device_name.starts_with("/dev/") {
            return Err(Ec2Error::InvalidBlockDeviceMapping(format!(
                "Invalid device name '{}'",
                mapping.device_name
            )));
        }
        if !seen.insert(mapping.device_name.as_str()) {
            return Err(Ec2Error::InvalidBlockDeviceMapping(format!(
                "The device '{}' is mapped more than once",
                mapping.device_name
            )));
        }
    }
    let mut mappings: BTreeMap<String, BlockDeviceMapping> = BTreeMap::new();
    for mapping in image.block_device_mappings.iter().chain(launch) {
        mappings.insert(mapping.device_name.clone(), mapping.clone());
    }
    let image_root_gib = image.root_size_bytes.div_ceil(GIB).max(1);
    let mut root = VolumePlan {
        device_name: image.root_device_name.clone(),
        size_gib: image_root_gib,
        volume_type: "gp3".to_string(),
        iops: None,
        throughput_mibps: None,
        encrypted: false,
        delete_on_termination: true,
        source_path: image.root_path.clone(),
    };
    let mut plans = Vec::new();
    for (device, mapping) in mappings {
        if mapping.no_device || !mapping.virtual_name.is_empty() {
            // Instance-store disks are not attached yet; NoDevice removes the mapping.
            if device == root.device_name && mapping.no_device {
                return Err(Ec2Error::InvalidBlockDeviceMapping(
                    "The root device cannot be removed".to_string(),
                ));
            }
            continue;
        }
        let Some(ebs) = mapping.ebs else { continue };
        if !ebs.snapshot_id.is_empty() {
            return Err(Ec2Error::UnsupportedOperation(
                "Snapshots are not supported yet".to_string(),
            ));
        }
        let volume_type = if ebs.volume_type.is_empty() {
            "gp3".to_string()
        } else {
            ebs.volume_type.clone()
        };
        if !VOLUME_TYPES.contains(&volume_type.as_str()) {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "Invalid volume type '{volume_type}'"
            )));
        }
        if ebs.volume_size_gib == Some(0) {
            return Err(Ec2Error::InvalidParameterValue(
                "Volume size must be at least 1 GiB".to_string(),
            ));
        }
        if device == root.device_name {
            if let Some(size) = ebs.volume_size_gib {
                if size < image_root_gib {
                    return Err(Ec2Error::InvalidBlockDeviceMapping(format!(
                        "Volume of {size} GiB is smaller than the image's root ({image_root_gib} GiB)"
                    )));
                }
                root.size_gib = size;
            }
            if ebs.encrypted {
                return Err(Ec2Error::UnsupportedOperation(
                    "Encrypting a root volume from an unencrypted image is not supported yet".to_string(),
                ));
            }
            root.volume_type = volume_type;
            root.iops = ebs.iops;
            root.throughput_mibps = ebs.throughput_mibps;
            root.delete_on_termination = ebs.delete_on_termination.unwrap_or(true);
            continue;
        }
        let Some(size_gib) = ebs.volume_size_gib else {
            return Err(Ec2Error::InvalidBlockDeviceMapping(format!(
                "The volume size of '{device}' is missing"
            )));
        };
        plans.push(VolumePlan {
            device_name: device,
            size_gib,
            volume_type,
            iops: ebs.iops,
            throughput_mibps: ebs.throughput_mibps,
            encrypted: ebs.encrypted,
            delete_on_termination: ebs.delete_on_termination.unwrap_or(true),
            source_path: String::new(),
        });
    }
    plans.insert(0, root);
    for plan in &mut plans {
        let shape = crate::volume_types::check(&plan.volume_type, plan.size_gib, plan.iops, plan.throughput_mibps)
            .map_err(|e| Ec2Error::InvalidBlockDeviceMapping(format!("{}: {}", plan.device_name, e.message())))?;
        plan.iops = shape.iops;
        plan.throughput_mibps = shape.throughput_mibps;
    }
    Ok(plans)
}

impl Engine {
    /// Free room on every live host (instances not stopped/terminated hold their type's shape).
    pub(crate) fn host_rooms(&self, state: &State, now: i64) -> Vec<HostRoom> {
        let mut rooms: Vec<HostRoom> = state
            .hosts
            .values()
            .filter(|host| state.host_is_live(&host.id, now, self.options.host_timeout_ms))
            .map(|host| HostRoom {
                host_id: host.id.clone(),
                availability_zone: host.availability_zone.clone(),
                free_vcpus: (f64::from(host.vcpus) * self.options.cpu_allocation_ratio) as i64,
                free_memory_mib: (host.memory_mib as f64 * self.options.ram_allocation_ratio) as i64,
            })
            .collect();
        for instance in state.instances.values().filter(|i| i.state.holds_capacity()) {
            if let Some(room) = rooms.iter_mut().find(|room| room.host_id == instance.host_id) {
                room.free_vcpus -= i64::from(instance.vcpus);
                room.free_memory_mib -= instance.memory_mib as i64;
            }
        }
        rooms
    }

    fn reservation_of(&self, state: &State, reservation_id: &str) -> Reservation {
        let mut instances: Vec<Arc<Instance>> = state
            .instances
            .values()
            .filter(|i| i.reservation_id == reservation_id)
            .cloned()
            .collect();
        instances.sort_by_key(|i| i.launch_index);
        Reservation {
            reservation_id: reservation_id.to_string(),
            owner_id: self.options.owner_id.clone(),
            instances,
            net: super::network::net_names(state),
        }
    }

    /// RunInstances: validates everything, places `min..=max` instances (all or nothing for
    /// `min`), and commits them `pending`.
    pub fn run_instances(&self, request: RunInstancesRequest) -> Ec2Result<Reservation> {
        let now = self.now();
        let mut inner = self.lock();
        let state = &inner.state;

        if !request.client_token.is_empty() {
            if request.client_token.len() > 64 || !request.client_token.is_ascii() {
                return Err(Ec2Error::InvalidParameterValue(
                    "ClientToken must be up to 64 ASCII characters".into(),
                ));
            }
            let parameters = canonical_parameters(&request);
            if let Some(record) = state.client_tokens.get(&request.client_token) {
                if record.parameters != parameters {
                    return Err(Ec2Error::IdempotentParameterMismatch(request.client_token.clone()));
                }
                dry_run(request.dry_run)?;
                return Ok(self.reservation_of(state, &record.reservation_id));
            }
        }

        let min_count = if request.min_count == 0 { 1 } else { request.min_count };
        let max_count = if request.max_count == 0 {
            min_count
        } else {
            request.max_count
        };
        if min_count < 1 || max_count < min_count {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "MinCount ({min_count}) must be at least 1 and at most MaxCount ({max_count})"
            )));
        }
        if request.image_id.is_empty() {
            return Err(Ec2Error::MissingParameter("ImageId".into()));
        }
        IdKind::Image.validate(&request.image_id)?;
        let image = state
            .images
            .get(&request.image_id)
            .filter(|image| image.state == ImageState::Available)
            .ok_or_else(|| Ec2Error::ImageNotFound(request.image_id.clone()))?;
        let type_name = if request.instance_type.is_empty() {
            DEFAULT_INSTANCE_TYPE
        } else {
            request.instance_type.as_str()
        };
        let instance_type = self
            .options
            .instance_types
            .get(type_name)
            .ok_or_else(|| Ec2Error::InvalidInstanceType(type_name.to_string()))?;
        if !request.key_name.is_empty() && !state.key_pairs.contains_key(&request.key_name) {
            return Err(Ec2Error::KeyPairNotFound(request.key_name.clone()));
        }
        if request.user_data.len() > MAX_USER_DATA {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "User data is limited to {MAX_USER_DATA} bytes"
            )));
        }
        let shutdown_behavior =
            ShutdownBehavior::parse(&request.instance_initiated_shutdown_behavior).ok_or_else(|| {
                Ec2Error::InvalidParameterValue(format!(
                    "Invalid value '{}' for InstanceInitiatedShutdownBehavior",
                    request.instance_initiated_shutdown_behavior
                ))
            })?;
        let zone = (!request.availability_zone.is_empty()).then_some(request.availability_zone.as_str());
        if let Some(zone) = zone {
            if !self.zone_names(state).contains(zone) {
                return Err(Ec2Error::InvalidParameterValue(format!(
                    "Invalid availability zone: [{zone}]"
                )));
            }
        }
        let (instance_tags, volume_tags) = launch_tags(&request.tag_specifications)?;
        let volume_plans = plan_volumes(image, &request.block_device_mappings)?;
        let fixed_plan = super::network::plan_launch(state, &request.network, zone, max_count)?;
        // A subnet fixes the zone.
        let zone = fixed_plan
            .as_ref()
            .map(|p| p.subnet.availability_zone.as_str())
            .or(zone);
        dry_run(request.dry_run)?;

        let mut rooms = self.host_rooms(state, now);
        let mut hosts = Vec::new();
        while hosts.len() < max_count as usize {
            match scheduler::place(&mut rooms, instance_type.vcpus, instance_type.memory_mib, zone) {
                Some(host_id) => hosts.push(host_id),
                None => break,
            }
        }
        if hosts.len() < min_count as usize {
            return Err(Ec2Error::InsufficientInstanceCapacity(format!(
                "We currently do not have sufficient {type_name} capacity{} for {min_count} instance(s): \
                 room for {}",
                zone.map(|z| format!(" in the Availability Zone you requested ({z})"))
                    .unwrap_or_default(),
                hosts.len()
            )));
        }

        let reservation_id = IdKind::Reservation.generate();
        let mut changes = Changes::default();
        // Removed again if the launch fails below.
        let mut new_keys = crate::kms::NewKeys::new(&self.options.keys);
        let mut zone_plans: BTreeMap<String, super::network::NetworkPlan> = BTreeMap::new();
        for (index, host_id) in hosts.iter().enumerate() {
            let host = &state.hosts[host_id];
            let plan = match &fixed_plan {
                Some(plan) => plan,
                None => match zone_plans.entry(host.availability_zone.clone()) {
                    std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                    std::collections::btree_map::Entry::Vacant(entry) => {
                        let plan = super::network::plan_launch(state, &request.network, Some(entry.key()), max_count)?
                            .ok_or_else(|| Ec2Error::SubnetNotFound(format!("(default subnet of {})", entry.key())))?;
                        entry.insert(plan)
                    }
                },
            };
            let network = super::network::allocate_interface(state, plan, &request.network, &changes.instances)?;
            let instance_id = IdKind::Instance.generate();
            let mut block_devices = Vec::new();
            for plan in &volume_plans {
                let kms_key_id = if plan.encrypted {
                    new_keys.create()?
                } else {
                    String::new()
                };
                let volume = Volume {
                    id: IdKind::Volume.generate(),
                    size_gib: plan.size_gib,
                    volume_type: plan.volume_type.clone(),
                    iops: plan.iops,
                    availability_zone: host.availability_zone.clone(),
                    host_id: host.id.clone(),
                    state: VolumeState::InUse,
                    attachment: Some(VolumeAttachment {
                        instance_id: instance_id.clone(),
                        device_name: plan.device_name.clone(),
                        delete_on_termination: plan.delete_on_termination,
                    }),
                    source_path: plan.source_path.clone(),
                    encrypted: plan.encrypted,
                    create_time_ms: now,
                    tags: volume_tags.clone(),
                    throughput_mibps: plan.throughput_mibps,
                    snapshot_id: String::new(),
                    kms_key_id,
                    status_message: String::new(),
                    modification: None,
                    dirty_base: None,
                    attach_time_ms: now,
                };
                block_devices.push(InstanceBlockDevice {
                    device_name: plan.device_name.clone(),
                    volume_id: volume.id.clone(),
                    delete_on_termination: plan.delete_on_termination,
                    attach_time_ms: now,
                });
                changes.volumes.push(volume);
            }
            changes.instances.push(Instance {
                id: instance_id,
                reservation_id: reservation_id.clone(),
                image_id: image.id.clone(),
                instance_type: type_name.to_string(),
                vcpus: instance_type.vcpus,
                memory_mib: instance_type.memory_mib,
                availability_zone: host.availability_zone.clone(),
                host_id: host.id.clone(),
                state: InstanceState::Pending,
                state_reason: Some(StateReason::new("pending", "pending")),
                state_transition_reason: String::new(),
                launch_time_ms: now,
                terminated_at_ms: None,
                key_name: request.key_name.clone(),
                public_keys: state
                    .key_pairs
                    .get(&request.key_name)
                    .map(|key| vec![key.public_key.clone()])
                    .unwrap_or_default(),
                user_data: request.user_data.clone(),
                tags: instance_tags.clone(),
                disable_api_termination: request.disable_api_termination,
                shutdown_behavior,
                desired: DesiredRun::Running,
                start_generation: 1,
                reboot_generation: 0,
                force_stop: false,
                block_devices,
                root_device_name: image.root_device_name.clone(),
                root_device_type: image.root_device_type.clone(),
                client_token: request.client_token.clone(),
                launch_index: index as u32,
                kernel_override: None,
                ramdisk_override: None,
                actual: ActualSeen::default(),
                network: Some(network),
            });
        }
        if !request.client_token.is_empty() {
            changes.client_tokens.push(ClientTokenRecord {
                token: request.client_token.clone(),
                reservation_id: reservation_id.clone(),
                parameters: canonical_parameters(&request),
                created_ms: now,
            });
        }
        // New members change other hosts' firewalls (group members) and VXLAN peers too.
        state.bump_all_hosts(&mut changes);
        let ids: Vec<String> = changes.instances.iter().map(|i| i.id.clone()).collect();
        self.commit(&mut inner, changes)?;
        new_keys.keep();
        let instances = ids.iter().map(|id| Arc::clone(&inner.state.instances[id])).collect();
        Ok(Reservation {
            reservation_id,
            owner_id: self.options.owner_id.clone(),
            instances,
            net: super::network::net_names(&inner.state),
        })
    }

    /// The instances matching `ids` (all must exist) and `filters`, grouped by reservation,
    /// in launch order, one page at a time.
    pub fn describe_instances(
        &self,
        ids: &[String],
        filters: &[Filter],
        max_results: i32,
        next_token: &str,
    ) -> Ec2Result<(Vec<Reservation>, String)> {
        if !ids.is_empty() && max_results != 0 {
            return Err(Ec2Error::InvalidParameterCombination(
                "The parameter instancesSet cannot be used with the parameter maxResults".into(),
            ));
        }
        filter::check_names(filters, INSTANCE_FILTERS)?;
        let inner = self.lock();
        let state = &inner.state;
        let mut selected: Vec<&Arc<Instance>> = if ids.is_empty() {
            state.instances.values().collect()
        } else {
            lookup_shared(state, ids)?
        };
        selected.retain(|instance| filter::matches(filters, &instance.tags, |name| instance_values(instance, name)));
        // IDs are unique: an unstable sort gives the same order.
        selected.sort_unstable_by(|a, b| a.launch_time_ms.cmp(&b.launch_time_ms).then_with(|| a.id.cmp(&b.id)));
        let (page, token) = filter::paginate(selected, max_results, next_token, |i| page_key(i))?;
        let mut reservations: Vec<Reservation> = Vec::new();
        let mut index: BTreeMap<&str, usize> = BTreeMap::new();
        let net = super::network::net_names(state);
        for instance in page {
            // Instances of one launch are usually adjacent: try the last group before the map.
            if let Some(last) = reservations.last_mut() {
                if last.reservation_id == instance.reservation_id {
                    last.instances.push(Arc::clone(instance));
                    continue;
                }
            }
            let slot = *index.entry(&instance.reservation_id).or_insert_with(|| {
                reservations.push(Reservation {
                    reservation_id: instance.reservation_id.clone(),
                    owner_id: self.options.owner_id.clone(),
                    instances: Vec::new(),
                    net: Arc::clone(&net),
                });
                reservations.len() - 1
            });
            reservations[slot].instances.push(Arc::clone(instance));
        }
        Ok((reservations, token))
    }

    /// Status checks: running instances (all with `include_all`), impaired when the host is silent.
    pub fn describe_instance_status(
        &self,
        ids: &[String],
        filters: &[Filter],
        include_all: bool,
        max_results: i32,
        next_token: &str,
    ) -> Ec2Result<(Vec<InstanceStatus>, String)> {
        filter::check_names(filters, INSTANCE_FILTERS)?;
        let now = self.now();
        let inner = self.lock();
        let state = &inner.state;
        let mut selected: Vec<&Arc<Instance>> = if ids.is_empty() {
            state.instances.values().collect()
        } else {
            lookup_shared(state, ids)?
        };
        selected.retain(|i| include_all || i.state == InstanceState::Running);
        selected.retain(|instance| filter::matches(filters, &instance.tags, |name| instance_values(instance, name)));
        // IDs are unique: an unstable sort gives the same order.
        selected.sort_unstable_by(|a, b| a.launch_time_ms.cmp(&b.launch_time_ms).then_with(|| a.id.cmp(&b.id)));
        let (page, token) = filter::paginate(selected, max_results, next_token, |i| page_key(i))?;
        let statuses = page
            .into_iter()
            .map(|instance| {
                let live = state.host_is_live(&instance.host_id, now, self.options.host_timeout_ms);
                let (system, guest) = match instance.state {
                    InstanceState::Running | InstanceState::Pending if !live => ("impaired", "impaired"),
                    InstanceState::Running if instance.actual.phase == "running" => ("ok", "ok"),
                    InstanceState::Running | InstanceState::Pending => ("initializing", "initializing"),
                    _ => ("not-applicable", "not-applicable"),
                };
                InstanceStatus {
                    instance_id: instance.id.clone(),
                    availability_zone: instance.availability_zone.clone(),
                    state: instance.state,
                    system_status: system.to_string(),
                    instance_status: guest.to_string(),
                }
            })
            .collect();
        Ok((statuses, token))
    }

    /// StartInstances: `stopped` → `pending` (new start generation); running ones unchanged.
    pub fn start_instances(&self, ids: &[String], dry: bool) -> Ec2Result<Vec<StateChange>> {
        require_ids(ids)?;
        let now = self.now();
        let mut inner = self.lock();
        let state = &inner.state;
        let instances = lookup(state, ids)?;
        for instance in &instances {
            if !matches!(
                instance.state,
                InstanceState::Stopped | InstanceState::Pending | InstanceState::Running
            ) {
                return Err(Ec2Error::IncorrectInstanceState {
                    id: instance.id.clone(),
                    action: "started",
                });
            }
            if instance.state == InstanceState::Stopped {
                if let Some(device) = instance.block_devices.iter().find(|d| self.volume_busy(&d.volume_id)) {
                    return Err(Ec2Error::IncorrectState(format!(
                        "The instance '{}' cannot start while a snapshot reads its volume {}; try again shortly",
                        instance.id, device.volume_id
                    )));
                }
                if instance.root_device_type == "ebs"
                    && !instance
                        .block_devices
                        .iter()
                        .any(|d| d.device_name == instance.root_device_name)
                {
                    return Err(Ec2Error::IncorrectState(format!(
                        "The instance '{}' has no root volume at {} (attach one first)",
                        instance.id, instance.root_device_name
                    )));
                }
                // Fail closed: no start with an encrypted volume whose key is unusable.
                for device in &instance.block_devices {
                    if let Some(volume) = state.volumes.get(&device.volume_id) {
                        self.volume_key(volume)?;
                    }
                }
            }
        }
        let mut rooms = self.host_rooms(state, now);
        for instance in instances.iter().filter(|i| i.state == InstanceState::Stopped) {
            let room = rooms.iter_mut().find(|room| room.host_id == instance.host_id);
            let fits = room.is_some_and(|room| {
                let fits =
                    room.free_vcpus >= i64::from(instance.vcpus) && room.free_memory_mib >= instance.memory_mib as i64;
                room.free_vcpus -= i64::from(instance.vcpus);
                room.free_memory_mib -= instance.memory_mib as i64;
                fits
            });
            if !fits {
                return Err(Ec2Error::InsufficientInstanceCapacity(format!(
                    "Insufficient capacity on the host of '{}' ({}) for {}",
                    instance.id, instance.host_id, instance.instance_type
                )));
            }
        }
        dry_run(dry)?;
        let (mut changes, result) = transition_all(instances, |instance| {
            if instance.state != InstanceState::Stopped {
                return None;
            }
            let mut next = instance.clone();
            next.state = InstanceState::Pending;
            next.desired = DesiredRun::Running;
            next.start_generation += 1;
            next.force_stop = false;
            next.state_reason = Some(StateReason::new("pending", "pending"));
            next.state_transition_reason = String::new();
            next.launch_time_ms = now;
            Some(next)
        });
        state.bump_changed_hosts(&mut changes);
        self.commit(&mut inner, changes)?;
        Ok(result)
    }

    /// StopInstances: `pending`/`running` → `stopping` (desired stopped, `force` kills).
    pub fn stop_instances(
        &self,
        ids: &[String],
        force: bool,
        hibernate: bool,
        dry: bool,
    ) -> Ec2Result<Vec<StateChange>> {
        require_ids(ids)?;
        if hibernate {
            return Err(Ec2Error::UnsupportedOperation(
                "Hibernation is not supported yet".into(),
            ));
        }
        let now = self.now();
        let mut inner = self.lock();
        let state = &inner.state;
        let instances = lookup(state, ids)?;
        for instance in &instances {
            if matches!(instance.state, InstanceState::ShuttingDown | InstanceState::Terminated) {
                return Err(Ec2Error::IncorrectInstanceState {
                    id: instance.id.clone(),
                    action: "stopped",
                });
            }
            if instance.root_device_type == "instance-store" {
                return Err(Ec2Error::UnsupportedOperation(format!(
                    "The instance '{}' does not have an 'ebs' root device type and cannot be stopped.",
                    instance.id
                )));
            }
        }
        dry_run(dry)?;
        let (mut changes, result) = transition_all(instances, |instance| {
            let mut next = instance.clone();
            match instance.state {
                InstanceState::Pending | InstanceState::Running => {
                    next.state = InstanceState::Stopping;
                    next.desired = DesiredRun::Stopped;
                    next.force_stop = force;
                    next.state_reason = Some(StateReason::new(
                        "Client.UserInitiatedShutdown",
                        "User initiated shutdown",
                    ));
                    next.state_transition_reason = user_initiated(now);
                }
                InstanceState::Stopping if force && !instance.force_stop => next.force_stop = true,
                _ => return None,
            }
            Some(next)
        });
        state.bump_changed_hosts(&mut changes);
        self.commit(&mut inner, changes)?;
        Ok(result)
    }

    /// RebootInstances: running instances get a new reboot generation.
    pub fn reboot_instances(&self, ids: &[String], dry: bool) -> Ec2Result<()> {
        require_ids(ids)?;
        let mut inner = self.lock();
        let state = &inner.state;
        let instances = lookup(state, ids)?;
        for instance in &instances {
            if instance.state != InstanceState::Running {
                return Err(Ec2Error::IncorrectInstanceState {
                    id: instance.id.clone(),
                    action: "rebooted",
                });
            }
        }
        dry_run(dry)?;
        let mut changes = Changes::default();
        for instance in instances {
            let mut next = instance.clone();
            next.reboot_generation += 1;
            changes.instances.push(next);
        }
        state.bump_changed_hosts(&mut changes);
        self.commit(&mut inner, changes)
    }

    /// TerminateInstances: → `shutting-down` (desired terminated); idempotent; refused for
    /// the whole batch when one has DisableApiTermination.
    pub fn terminate_instances(&self, ids: &[String], dry: bool) -> Ec2Result<Vec<StateChange>> {
        require_ids(ids)?;
        let now = self.now();
        let mut inner = self.lock();
        let state = &inner.state;
        let instances = lookup(state, ids)?;
        for instance in &instances {
            if instance.disable_api_termination && instance.state != InstanceState::Terminated {
                return Err(Ec2Error::OperationNotPermitted(format!(
                    "The instance '{}' may not be terminated. Modify its 'disableApiTermination' instance \
                     attribute and try again.",
                    instance.id
                )));
            }
        }
        dry_run(dry)?;
        let (mut changes, result) = transition_all(instances, |instance| {
            if matches!(instance.state, InstanceState::ShuttingDown | InstanceState::Terminated) {
                return None;
            }
            let mut next = instance.clone();
            next.state = InstanceState::ShuttingDown;
            next.desired = DesiredRun::Terminated;
            next.state_reason = Some(StateReason::new(
                "Client.UserInitiatedShutdown",
                "User initiated shutdown",
            ));
            next.state_transition_reason = user_initiated(now);
            Some(next)
        });
        state.bump_changed_hosts(&mut changes);
        self.commit(&mut inner, changes)?;
        Ok(result)
    }

    /// ModifyInstanceAttribute: exactly one attribute; type, user data, kernel and ramdisk
    /// only while stopped.
    pub fn modify_instance_attribute(&self, request: ModifyInstanceRequest) -> Ec2Result<()> {
        if request.instance_id.is_empty() {
            return Err(Ec2Error::MissingParameter("InstanceId".into()));
        }
        let set = [
            request.disable_api_termination.is_some(),
            request.instance_initiated_shutdown_behavior.is_some(),
            request.instance_type.is_some(),
            request.user_data.is_some(),
            request.kernel.is_some(),
            request.ramdisk.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count();
        if set == 0 {
            return Err(Ec2Error::MissingParameter("Attribute".into()));
        }
        if set > 1 {
            return Err(Ec2Error::InvalidParameterCombination(
                "Fields for multiple attribute types specified".into(),
            ));
        }
        let mut inner = self.lock();
        let state = &inner.state;
        let instance = lookup(state, std::slice::from_ref(&request.instance_id))?[0];
        if instance.state == InstanceState::Terminated {
            return Err(Ec2Error::IncorrectInstanceState {
                id: instance.id.clone(),
                action: "modified",
            });
        }
        let stopped_only = request.instance_type.is_some()
            || request.user_data.is_some()
            || request.kernel.is_some()
            || request.ramdisk.is_some();
        if stopped_only && instance.state != InstanceState::Stopped {
            return Err(Ec2Error::IncorrectState(format!(
                "The instance '{}' is not in the 'stopped' state.",
                instance.id
            )));
        }
        let mut next = instance.clone();
        if let Some(flag) = request.disable_api_termination {
            next.disable_api_termination = flag;
        }
        if let Some(text) = &request.instance_initiated_shutdown_behavior {
            next.shutdown_behavior = ShutdownBehavior::parse(text)
                .filter(|_| !text.is_empty())
                .ok_or_else(|| {
                    Ec2Error::InvalidParameterValue(format!(
                        "Invalid value '{text}' for InstanceInitiatedShutdownBehavior"
                    ))
                })?;
        }
        if let Some(type_name) = &request.instance_type {
            let instance_type = self
                .options
                .instance_types
                .get(type_name)
                .ok_or_else(|| Ec2Error::InvalidInstanceType(type_name.clone()))?;
            next.instance_type = type_name.clone();
            next.vcpus = instance_type.vcpus;
            next.memory_mib = instance_type.memory_mib;
        }
        if let Some(user_data) = &request.user_data {
            if user_data.len() > MAX_USER_DATA {
                return Err(Ec2Error::InvalidParameterValue(format!(
                    "User data is limited to {MAX_USER_DATA} bytes"
                )));
            }
            next.user_data = user_data.clone();
        }
        for (value, slot, ramdisk) in [
            (&request.kernel, &mut next.kernel_override, false),
            (&request.ramdisk, &mut next.ramdisk_override, true),
        ] {
            if let Some(id) = value {
                if id.is_empty() {
                    *slot = None;
                } else {
                    // An image ID, never a host path: the kernel (initrd) of that image.
                    super::images::boot_file_of(state, id, ramdisk)?;
                    *slot = Some(id.clone());
                }
            }
        }
        dry_run(request.dry_run)?;
        let mut changes = Changes {
            instances: vec![next],
            ..Changes::default()
        };
        state.bump_hosts(&mut changes, [instance.host_id.as_str()]);
        self.commit(&mut inner, changes)
    }

    /// DescribeInstanceAttribute.
    pub fn describe_instance_attribute(&self, id: &str, attribute: &str, dry: bool) -> Ec2Result<InstanceAttribute> {
        if id.is_empty() {
            return Err(Ec2Error::MissingParameter("InstanceId".into()));
        }
        let inner = self.lock();
        let state = &inner.state;
        let instance = lookup(state, &[id.to_string()])?[0];
        let image = state.images.get(&instance.image_id);
        let mut block_devices = Vec::new();
        let value = match attribute {
            "disableApiTermination" => instance.disable_api_termination.to_string(),
            "instanceInitiatedShutdownBehavior" => instance.shutdown_behavior.as_str().to_string(),
            "instanceType" => instance.instance_type.clone(),
            "userData" => crate::encoding::base64(&instance.user_data),
            // The image the kernel (initrd) comes from: EC2 answers a kernel ID, not a file.
            "kernel" => instance
                .kernel_override
                .clone()
                .or(image.map(|i| i.id.clone()))
                .unwrap_or_default(),
            "ramdisk" => instance
                .ramdisk_override
                .clone()
                .or(image.filter(|i| i.initrd_path.is_some()).map(|i| i.id.clone()))
                .unwrap_or_default(),
            "rootDeviceName" => instance.root_device_name.clone(),
            "blockDeviceMapping" => {
                block_devices = instance.block_devices.clone();
                String::new()
            }
            "" => return Err(Ec2Error::MissingParameter("Attribute".into())),
            other => {
                return Err(Ec2Error::InvalidParameterValue(format!(
                    "Value ({other}) for parameter attribute is invalid"
                )))
            }
        };
        dry_run(dry)?;
        Ok(InstanceAttribute {
            instance_id: instance.id.clone(),
            attribute: attribute.to_string(),
            value,
            block_devices,
        })
    }

    /// GetConsoleOutput: the last 64 KiB of the serial console, read from the instance's host.
    pub fn get_console_output(&self, id: &str, dry: bool) -> Ec2Result<(Vec<u8>, i64)> {
        if id.is_empty() {
            return Err(Ec2Error::MissingParameter("InstanceId".into()));
        }
        let (host_id, instance_id) = {
            let inner = self.lock();
            let instance = lookup(&inner.state, &[id.to_string()])?[0];
            (instance.host_id.clone(), instance.id.clone())
        };
        dry_run(dry)?;
        let bytes = self
            .options
            .console
            .read_tail(&host_id, &instance_id, CONSOLE_TAIL)
            .map_err(|error| Ec2Error::io(format!("read the console of {instance_id}"), error))?
            .unwrap_or_default();
        Ok((bytes, self.now()))
    }
}

/// The RunInstances parameters that a repeated ClientToken must match.
fn canonical_parameters(request: &RunInstancesRequest) -> String {
    let canonical = RunInstancesRequest {
        client_token: String::new(),
        dry_run: false,
        ..request.clone()
    };
    serde_json::to_string(&canonical).unwrap_or_default()
}
