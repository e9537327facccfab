//! The agents' side: a Sync registers the host, applies its reported actual state with
//! the rules of docs/control-plane.md, and answers the host's desired state (long poll).

use std::sync::Arc;
use std::time::Duration;

use super::{Engine, State};
use crate::error::{Ec2Error, Ec2Result};
use crate::model::{DesiredRun, Host, Instance, InstanceState, ShutdownBehavior, StateReason, VolumeState};
use crate::store::Changes;

/// Longest long poll an agent may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// What an agent says about its host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostReport {
    /// Stable host ID.
    pub host_id: String,
    /// Availability zone.
    pub availability_zone: String,
    /// vCPUs offered.
    pub vcpus: u32,
    /// Memory offered.
    pub memory_mib: u64,
    /// Agent version.
    pub agent_version: String,
    /// Underlay address for VXLAN ("" = none).
    pub underlay_ip: String,
    /// Whether the host has an uplink for Elastic IPs.
    pub has_uplink: bool,
}

/// What an agent says about one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActualReport {
    /// The instance.
    pub instance_id: String,
    /// `running`, `stopping`, `stopped` or `terminated`.
    pub phase: String,
    /// The VMM's pid.
    pub pid: i32,
    /// Start generation of the VMM running now (or last run).
    pub start_generation: u64,
    /// Last reboot request carried out.
    pub reboot_generation: u64,
    /// hearth-vmm exit reason of the last VMM that ended.
    pub last_exit_reason: String,
    /// Its detail.
    pub last_exit_detail: String,
    /// VMMs started for the current start generation.
    pub boot_count: u32,
    /// Volumes removed on terminate.
    pub deleted_volumes: Vec<String>,
}

/// One volume of a desired instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredVolume {
    /// `vol-…`.
    pub volume_id: String,
    /// Device name.
    pub device_name: String,
    /// File to clone when the volume file does not exist yet ("" = blank).
    pub source_path: String,
    /// Grow to this size.
    pub size_bytes: u64,
    /// Read-only.
    pub read_only: bool,
    /// Delete on terminate.
    pub delete_on_termination: bool,
    /// The volume file holds ciphertext: the agent never attaches it without a usable
    /// `encryption_key` (an empty key here means the key file was unusable at Sync time, and
    /// the start fails with `encryption-key`).
    pub encrypted: bool,
    /// The AES-256-XTS key of an encrypted volume (empty for a plain one).
    pub encryption_key: Vec<u8>,
    /// Token buckets of its volume type.
    pub limits: crate::volume_types::DiskLimits,
}

/// An instance-store disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EphemeralDisk {
    /// Device name.
    pub device_name: String,
    /// `ephemeralN`.
    pub virtual_name: String,
    /// Size.
    pub size_bytes: u64,
}

/// One instance as its host should run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredInstance {
    /// `i-…`.
    pub instance_id: String,
    /// Desired run state.
    pub run: DesiredRun,
    /// Start generation.
    pub start_generation: u64,
    /// Reboot generation.
    pub reboot_generation: u64,
    /// Kill instead of a graceful stop.
    pub force_stop: bool,
    /// Graceful stop timeout.
    pub stop_timeout_ms: i64,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory.
    pub memory_mib: u64,
    /// Kernel file.
    pub kernel_path: String,
    /// Initrd file ("" = none).
    pub initrd_path: String,
    /// Kernel command line.
    pub cmdline: String,
    /// Volumes in slot order, root first.
    pub volumes: Vec<DesiredVolume>,
    /// The guest's metadata disk content.
    pub metadata: InstanceMetadata,
    /// Instance-store disks.
    pub ephemeral_disks: Vec<EphemeralDisk>,
    /// Network interfaces (none for instances launched before networking).
    pub interfaces: Vec<NetworkInterface>,
    /// What the metadata service answers.
    pub imds: ImdsInfo,
}

/// An instance's network interface as its host builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInterface {
    /// Host tap name.
    pub tap: String,
    /// MAC.
    pub mac: String,
    /// Private address.
    pub private_ip: std::net::Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix_len: u8,
    /// The router.
    pub gateway: std::net::Ipv4Addr,
    /// `subnet-…`.
    pub subnet_id: String,
    /// `vpc-…`.
    pub vpc_id: String,
    /// The subnet's CIDR.
    pub subnet_cidr: hearth_net::Ipv4Cidr,
    /// Its Elastic IP.
    pub public_ip: Option<std::net::Ipv4Addr>,
    /// Group IDs.
    pub security_group_ids: Vec<String>,
    /// Group names.
    pub security_group_names: Vec<String>,
    /// DNS servers (DHCP).
    pub dns: Vec<std::net::Ipv4Addr>,
    /// Token buckets from the instance type (all zero: unlimited, an unknown type).
    pub limits: crate::instance_types::NicLimits,
}

/// IMDS facts and options of an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImdsInfo {
    /// Instance type.
    pub instance_type: String,
    /// `ami-…`.
    pub ami_id: String,
    /// Zone.
    pub availability_zone: String,
    /// Region.
    pub region: String,
    /// IMDSv1 off.
    pub http_tokens_required: bool,
    /// Endpoint on.
    pub http_endpoint_enabled: bool,
    /// Token response TTL.
    pub http_put_response_hop_limit: u8,
}

/// What the guest learns from its metadata disk (cloud-init NoCloud).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceMetadata {
    /// `i-…`.
    pub instance_id: String,
    /// Its host name.
    pub hostname: String,
    /// OpenSSH public keys (the launch key pair's).
    pub public_keys: Vec<String>,
    /// User data.
    pub user_data: Vec<u8>,
    /// cloud-init network config v2 ("" = DHCP).
    pub network_config: String,
}

/// The answer to a Sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncAnswer {
    /// Revision of the host's desired state.
    pub revision: u64,
    /// Its instances (all but terminated ones).
    pub instances: Vec<DesiredInstance>,
    /// Its instance network.
    pub network: super::network::HostNetwork,
}

/// The outcome of a report on one instance.
fn apply_actual(instance: &Instance, actual: &ActualReport, now: i64) -> Option<Instance> {
    let mut next = instance.clone();
    next.actual.phase = actual.phase.clone();
    next.actual.pid = actual.pid;
    next.actual.start_generation = actual.start_generation;
    next.actual.boot_count = actual.boot_count;
    let current = actual.start_generation == instance.start_generation;
    match (instance.state, instance.desired, actual.phase.as_str()) {
        (InstanceState::Pending, DesiredRun::Running, "running") if current => {
            next.state = InstanceState::Running;
            next.state_reason = None;
        }
        (InstanceState::Stopping, DesiredRun::Stopped, "stopped" | "terminated") => {
            next.state = InstanceState::Stopped;
            next.force_stop = false;
        }
        (InstanceState::ShuttingDown, DesiredRun::Terminated, "terminated") => {
            next.state = InstanceState::Terminated;
            next.terminated_at_ms = Some(now);
        }
        (InstanceState::Pending | InstanceState::Running, DesiredRun::Running, "stopped") if current => {
            match actual.last_exit_reason.as_str() {
                // The agent restarts a rebooting guest itself; nothing to decide here.
                "guest-reboot" => {}
                // The agent refused to start: an encrypted volume without a usable key
                // (StartInstances and AttachVolume check the key; this is one lost
                // since). EC2 stops an instance whose encrypted volume's KMS key is
                // unusable at start, with this reason code.
                hearth_agent::ENCRYPTION_KEY_REASON => {
                    next.state = InstanceState::Stopped;
                    next.desired = DesiredRun::Stopped;
                    next.state_reason = Some(StateReason::new(
                        "Client.InvalidKMSKey.InvalidState",
                        &format!(
                            "The KMS key provided is in an incorrect state ({})",
                            actual.last_exit_detail
                        ),
                    ));
                    next.state_transition_reason = format!("Client error on launch ({})", crate::time::gmt(now));
                }
                "guest-poweroff" => {
                    next.state_reason = Some(StateReason::new(
                        "Client.InstanceInitiatedShutdown",
                        "Instance initiated shutdown",
                    ));
                    next.state_transition_reason = format!("Instance initiated shutdown ({})", crate::time::gmt(now));
                    match instance.shutdown_behavior {
                        ShutdownBehavior::Stop => {
                            next.state = InstanceState::Stopped;
                            next.desired = DesiredRun::Stopped;
                        }
                        ShutdownBehavior::Terminate => {
                            next.state = InstanceState::ShuttingDown;
                            next.desired = DesiredRun::Terminated;
                        }
                    }
                }
                reason => {
                    let detail = match (reason, actual.last_exit_detail.as_str()) {
                        ("", "") => "the VMM ended".to_string(),
                        ("", detail) => detail.to_string(),
                        (reason, "") => reason.to_string(),
                        (reason, detail) => format!("{reason}: {detail}"),
                    };
                    next.state = InstanceState::Stopped;
                    next.desired = DesiredRun::Stopped;
                    next.state_reason = Some(StateReason::new("Server.InternalError", &detail));
                    next.state_transition_reason = format!("Server error ({})", crate::time::gmt(now));
                }
            }
        }
        _ => {}
    }
    (next != *instance).then_some(next)
}

impl Engine {
    /// Applies one Sync report: registers or updates the host, applies each reported
    /// instance, and answers the host's desired state.
    pub fn report(&self, host: &HostReport, actual: &[ActualReport]) -> Ec2Result<SyncAnswer> {
        if host.host_id.is_empty() {
            return Err(Ec2Error::MissingParameter("host.host_id".into()));
        }
        let now = self.now();
        let mut inner = self.lock();
        inner.state.host_seen_ms.insert(host.host_id.clone(), now);
        let state = &inner.state;
        let mut changes = Changes::default();
        let zone = if host.availability_zone.is_empty() {
            format!("{}a", self.options.region)
        } else {
            host.availability_zone.clone()
        };
        let record = Host {
            id: host.host_id.clone(),
            availability_zone: zone,
            vcpus: host.vcpus,
            memory_mib: host.memory_mib,
            agent_version: host.agent_version.clone(),
            revision: state.hosts.get(&host.host_id).map_or(0, |h| h.revision),
            underlay_ip: host.underlay_ip.clone(),
            has_uplink: host.has_uplink,
        };
        let mut network_moved = false;
        if state.hosts.get(&host.host_id) != Some(&record) {
            if let Some(old) = state.hosts.get(&host.host_id) {
                // Other hosts' VXLAN peers name this one.
                network_moved |= old.underlay_ip != record.underlay_ip;
            }
            let mut zones = self.zone_names(state);
            zones.insert(record.availability_zone.clone());
            super::network::default_network_changes(state, &zones, &mut changes);
            changes.hosts.push(record);
        }
        let mut desired_moved = false;
        // Progress of the agent alone (phase, pid, boot count) is kept in memory only.
        let mut progress = Vec::new();
        for report in actual {
            let Some(instance) = state.instances.get(&report.instance_id) else {
                continue;
            };
            if instance.host_id != host.host_id {
                continue;
            }
            let Some(mut next) = apply_actual(instance, report, now) else {
                continue;
            };
            if next.state == instance.state && next.desired == instance.desired {
                progress.push(next);
                continue;
            }
            desired_moved |= next.desired != instance.desired || next.state == InstanceState::Terminated;
            if next.state == InstanceState::Terminated {
                release_volumes(state, instance, &mut changes);
                super::network::release_addresses(state, &instance.id, &mut changes);
                next.block_devices.clear();
                network_moved |= instance.network.is_some();
            }
            changes.instances.push(next);
        }
        if network_moved {
            state.bump_all_hosts(&mut changes);
        } else if desired_moved {
            state.bump_hosts(&mut changes, [host.host_id.as_str()]);
        }
        self.commit(&mut inner, changes)?;
        for instance in progress {
            inner.state.instances.insert(instance.id.clone(), Arc::new(instance));
        }
        Ok(self.desired_of(&inner.state, &host.host_id))
    }

    /// The desired state of a host now.
    pub fn desired_state(&self, host_id: &str) -> SyncAnswer {
        let inner = self.lock();
        self.desired_of(&inner.state, host_id)
    }

    fn desired_of(&self, state: &State, host_id: &str) -> SyncAnswer {
        let revision = state.hosts.get(host_id).map_or(0, |host| host.revision);
        let mut instances: Vec<&Instance> = state
            .instances
            .values()
            .filter(|i| i.host_id == host_id && i.state != InstanceState::Terminated)
            .map(|i| i.as_ref())
            .collect();
        instances.sort_by(|a, b| (a.launch_time_ms, &a.id).cmp(&(b.launch_time_ms, &b.id)));
        let instances = instances
            .into_iter()
            .map(|instance| {
                let image = state.images.get(&instance.image_id);
                let (kernel_path, initrd_path) = super::images::boot_files(state, instance);
                let initrd_path = initrd_path.unwrap_or_default();
                let mut cmdline = image.map(|image| image.command_line.clone()).unwrap_or_default();
                if !cmdline.split_whitespace().any(|word| word.starts_with("root=")) {
                    if !cmdline.is_empty() {
                        cmdline.push(' ');
                    }
                    cmdline.push_str("root=/dev/vda");
                }
                let mut devices: Vec<&crate::model::InstanceBlockDevice> = instance.block_devices.iter().collect();
                // The root first (slot 0 is /dev/vda), the others in attach order.
                devices.sort_by_key(|d| d.device_name != instance.root_device_name);
                let volumes = devices
                    .into_iter()
                    .filter_map(|device| state.volumes.get(&device.volume_id).map(|volume| (device, volume)))
                    .map(|(device, volume)| DesiredVolume {
                        volume_id: volume.id.clone(),
                        device_name: device.device_name.clone(),
                        source_path: volume.source_path.clone(),
                        size_bytes: volume.size_bytes(),
                        read_only: false,
                        delete_on_termination: device.delete_on_termination,
                        encrypted: volume.encrypted || !volume.kms_key_id.is_empty(),
                        // StartInstances and AttachVolume refused an unusable key; one lost
                        // since is sent empty with `encrypted` set, and the agent refuses to
                        // start the instance (fail closed, never a plain disk).
                        encryption_key: match self.volume_key(volume) {
                            Ok(key) => key.unwrap_or_default(),
                            Err(e) => {
                                eprintln!("hearthd: {}", e.message());
                                Vec::new()
                            }
                        },
                        limits: crate::volume_types::limits(
                            &volume.volume_type,
                            volume.size_gib,
                            crate::volume_types::Shape {
                                iops: volume.iops,
                                throughput_mibps: volume.throughput_mibps,
                            },
                        ),
                    })
                    .collect();
                let ephemeral_disks = self
                    .options
                    .instance_types
                    .get(&instance.instance_type)
                    .filter(|t| t.instance_store_disks > 0)
                    .map(|t| {
                        let disks = u64::from(t.instance_store_disks);
                        (0..disks)
                            .map(|n| EphemeralDisk {
                                device_name: format!("/dev/nvme{}n1", n + 1),
                                virtual_name: format!("ephemeral{n}"),
                                size_bytes: t.instance_store_gib / disks * crate::model::GIB,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                DesiredInstance {
                    instance_id: instance.id.clone(),
                    run: instance.desired,
                    start_generation: instance.start_generation,
                    reboot_generation: instance.reboot_generation,
                    force_stop: instance.force_stop,
                    stop_timeout_ms: self.options.stop_timeout_ms,
                    vcpus: instance.vcpus,
                    memory_mib: instance.memory_mib,
                    kernel_path,
                    initrd_path,
                    cmdline,
                    volumes,
                    metadata: InstanceMetadata {
                        instance_id: instance.id.clone(),
                        hostname: instance.id.clone(),
                        public_keys: instance.public_keys.clone(),
                        user_data: instance.user_data.clone(),
                        network_config: instance
                            .network
                            .as_ref()
                            .map(|n| network_config(&n.mac))
                            .unwrap_or_default(),
                    },
                    ephemeral_disks,
                    interfaces: instance
                        .network
                        .as_ref()
                        .and_then(|network| self.interface_of(state, instance, network))
                        .into_iter()
                        .collect(),
                    imds: ImdsInfo {
                        instance_type: instance.instance_type.clone(),
                        ami_id: instance.image_id.clone(),
                        availability_zone: instance.availability_zone.clone(),
                        region: self.options.region.clone(),
                        http_tokens_required: instance.network.as_ref().is_some_and(|n| n.http_tokens_required),
                        http_endpoint_enabled: instance.network.as_ref().is_some_and(|n| n.http_endpoint_enabled),
                        http_put_response_hop_limit: instance
                            .network
                            .as_ref()
                            .map_or(1, |n| n.http_put_response_hop_limit),
                    },
                }
            })
            .collect();
        SyncAnswer {
            revision,
            instances,
            network: super::network::host_network(state, host_id),
        }
    }

    fn interface_of(
        &self,
        state: &State,
        instance: &Instance,
        network: &crate::model::InstanceNetwork,
    ) -> Option<NetworkInterface> {
        let subnet = state.subnets.get(&network.subnet_id)?;
        Some(NetworkInterface {
            tap: super::network::tap_name(&network.mac),
            mac: network.mac.clone(),
            private_ip: network.private_ip,
            prefix_len: subnet.cidr.prefix(),
            gateway: hearth_net::ipam::gateway(subnet.cidr),
            subnet_id: subnet.id.clone(),
            vpc_id: subnet.vpc_id.clone(),
            subnet_cidr: subnet.cidr,
            public_ip: super::network::public_ip_of(state, &instance.id),
            security_group_ids: network.group_ids.clone(),
            security_group_names: network
                .group_ids
                .iter()
                .filter_map(|id| state.groups.get(id).map(|g| g.name.clone()))
                .collect(),
            dns: self.options.dns_servers.clone(),
            limits: self
                .options
                .instance_types
                .get(&instance.instance_type)
                .map(|t| t.nic_limits())
                .unwrap_or_default(),
        })
    }

    /// A whole Sync: applies the report, then answers at once when `known_revision` differs
    /// from the host's revision, else waits up to `wait` for it to move.
    pub async fn sync(
        self: &Arc<Self>,
        host: HostReport,
        actual: Vec<ActualReport>,
        known_revision: u64,
        wait: Duration,
    ) -> Ec2Result<SyncAnswer> {
        let mut changed = self.revisions.subscribe();
        let engine = Arc::clone(self);
        let host_id = host.host_id.clone();
        let answer = tokio::task::spawn_blocking(move || engine.report(&host, &actual))
            .await
            .map_err(|error| Ec2Error::io("apply a report", std::io::Error::other(error)))??;
        if answer.revision != known_revision || wait.is_zero() {
            return Ok(answer);
        }
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {
                    let answer = self.desired_state(&host_id);
                    if answer.revision != known_revision {
                        return Ok(answer);
                    }
                }
                Ok(Err(_)) | Err(_) => return Ok(self.desired_state(&host_id)),
            }
        }
    }
}

/// Volumes of a terminated instance: DeleteOnTermination ones deleted, the others detached.
fn release_volumes(state: &State, instance: &Instance, changes: &mut Changes) {
    for device in &instance.block_devices {
        if let Some(volume) = state.volumes.get(&device.volume_id) {
            let mut volume = volume.clone();
            if device.delete_on_termination {
                volume.state = VolumeState::Deleted;
            } else {
                volume.state = VolumeState::Available;
                volume.attachment = None;
            }
            changes.volumes.push(volume);
        }
    }
}

/// The metadata disk's network config (cloud-init v2): DHCP on the interface with this MAC
/// (the agent's DHCP server answers it with the instance's address).
fn network_config(mac: &str) -> String {
    format!(
        "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: \"{mac}\"\n    set-name: eth0\n    dhcp4: true\n"
    )
}
