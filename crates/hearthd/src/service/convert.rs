//! Conversions between `hearth_api::v1` messages and the engine's plain types.

use crate::engine::NetNames;
use hearth_api::v1 as pb;

use crate::engine::{self, Reservation, StateChange};
use crate::filter::Filter;
use crate::model::{
    BlockDeviceMapping, EbsSpec, Image, Instance, InstanceBlockDevice, InstanceState, KeyPair, SnapshotRecord, Tags,
    Volume, VolumeModification,
};
use crate::time::rfc3339;

pub(crate) fn filters(filters: Vec<pb::Filter>) -> Vec<Filter> {
    filters
        .into_iter()
        .map(|f| Filter {
            name: f.name,
            values: f.values,
        })
        .collect()
}

pub(crate) fn tags(tags: &Tags) -> Vec<pb::Tag> {
    tags.iter()
        .map(|(key, value)| pb::Tag {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

pub(crate) fn state(state: InstanceState) -> pb::InstanceState {
    pb::InstanceState {
        code: state.code(),
        name: state.name().to_string(),
    }
}

/// RFC 3339 texts for one answer: the instances of one launch share their launch and
/// attach times, so the last text is reused instead of formatted again.
#[derive(Default)]
pub(crate) struct Times {
    last: Option<(i64, String)>,
}

impl Times {
    fn rfc3339(&mut self, ms: i64) -> String {
        match &self.last {
            Some((at, text)) if *at == ms => text.clone(),
            _ => {
                let text = rfc3339(ms);
                self.last = Some((ms, text.clone()));
                text
            }
        }
    }
}

pub(crate) fn block_device(device: &InstanceBlockDevice) -> pb::InstanceBlockDeviceMapping {
    block_device_at(device, &mut Times::default())
}

fn block_device_at(device: &InstanceBlockDevice, times: &mut Times) -> pb::InstanceBlockDeviceMapping {
    pb::InstanceBlockDeviceMapping {
        device_name: device.device_name.clone(),
        volume_id: device.volume_id.clone(),
        status: "attached".to_string(),
        delete_on_termination: device.delete_on_termination,
        attach_time: times.rfc3339(device.attach_time_ms),
    }
}

fn instance(instance: &Instance, net: &NetNames, times: &mut Times) -> pb::Instance {
    let network = instance.network.as_ref();
    pb::Instance {
        instance_id: instance.id.clone(),
        image_id: instance.image_id.clone(),
        instance_type: instance.instance_type.clone(),
        state: Some(state(instance.state)),
        state_reason: instance.state_reason.as_ref().map(|reason| pb::StateReason {
            code: reason.code.clone(),
            message: reason.message.clone(),
        }),
        state_transition_reason: instance.state_transition_reason.clone(),
        launch_time: times.rfc3339(instance.launch_time_ms),
        availability_zone: instance.availability_zone.clone(),
        key_name: instance.key_name.clone(),
        private_ip_address: network.map(|n| n.private_ip.to_string()).unwrap_or_default(),
        public_ip_address: net
            .public_ips
            .get(&instance.id)
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        root_device_name: instance.root_device_name.clone(),
        root_device_type: instance.root_device_type.clone(),
        block_device_mappings: instance
            .block_devices
            .iter()
            .map(|device| block_device_at(device, times))
            .collect(),
        tags: tags(&instance.tags),
        client_token: instance.client_token.clone(),
        ami_launch_index: instance.launch_index as i32,
        host_id: instance.host_id.clone(),
        vcpus: instance.vcpus as i32,
        memory_mib: instance.memory_mib as i64,
        vpc_id: network.map(|n| n.vpc_id.clone()).unwrap_or_default(),
        subnet_id: network.map(|n| n.subnet_id.clone()).unwrap_or_default(),
        security_groups: network
            .map(|n| {
                n.group_ids
                    .iter()
                    .map(|id| pb::GroupIdentifier {
                        group_id: id.clone(),
                        group_name: net.group_names.get(id).cloned().unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        mac_address: network.map(|n| n.mac.clone()).unwrap_or_default(),
        metadata_options: network.map(metadata_options),
        private_dns_name: network
            .map(|n| format!("ip-{}.hearth.internal", n.private_ip.to_string().replace('.', "-")))
            .unwrap_or_default(),
    }
}

pub(crate) fn metadata_options(network: &crate::model::InstanceNetwork) -> pb::InstanceMetadataOptions {
    pb::InstanceMetadataOptions {
        http_tokens: if network.http_tokens_required {
            "required"
        } else {
            "optional"
        }
        .into(),
        http_endpoint: if network.http_endpoint_enabled {
            "enabled"
        } else {
            "disabled"
        }
        .into(),
        http_put_response_hop_limit: i32::from(network.http_put_response_hop_limit),
    }
}

pub(crate) fn reservation(reservation: &Reservation) -> pb::Reservation {
    let mut times = Times::default();
    pb::Reservation {
        reservation_id: reservation.reservation_id.clone(),
        owner_id: reservation.owner_id.clone(),
        instances: reservation
            .instances
            .iter()
            .map(|i| instance(i, &reservation.net, &mut times))
            .collect(),
    }
}

/// Below this many instances an answer is converted on the calling thread.
const PARALLEL_FROM: usize = 2048;

/// The reservations of a Describe answer, in order. Large answers are converted on a few
/// scoped threads (each a contiguous run of instances), then regrouped.
pub(crate) fn reservations(reservations: &[Reservation]) -> Vec<pb::Reservation> {
    let total: usize = reservations.iter().map(|r| r.instances.len()).sum();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4)
        .min(total / (PARALLEL_FROM / 2).max(1));
    if total < PARALLEL_FROM || threads < 2 {
        return reservations.iter().map(reservation).collect();
    }
    let net = &reservations[0].net;
    let all: Vec<&Instance> = reservations
        .iter()
        .flat_map(|r| r.instances.iter().map(|i| i.as_ref()))
        .collect();
    let chunk = total.div_ceil(threads);
    let converted: Vec<Vec<pb::Instance>> = std::thread::scope(|scope| {
        let workers: Vec<_> = all
            .chunks(chunk)
            .skip(1)
            .map(|part| scope.spawn(move || convert_run(part, net)))
            .collect();
        let mut parts = vec![convert_run(&all[..chunk.min(all.len())], net)];
        for worker in workers {
            match worker.join() {
                Ok(part) => parts.push(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        parts
    });
    let mut converted = converted.into_iter().flatten();
    reservations
        .iter()
        .map(|r| {
            let mut instances = Vec::with_capacity(r.instances.len());
            instances.extend(converted.by_ref().take(r.instances.len()));
            pb::Reservation {
                reservation_id: r.reservation_id.clone(),
                owner_id: r.owner_id.clone(),
                instances,
            }
        })
        .collect()
}

fn convert_run(part: &[&Instance], net: &NetNames) -> Vec<pb::Instance> {
    let mut times = Times::default();
    part.iter().map(|i| instance(i, net, &mut times)).collect()
}

pub(crate) fn changes(changes: Vec<StateChange>) -> pb::InstanceStateChanges {
    pb::InstanceStateChanges {
        changes: changes
            .into_iter()
            .map(|change| pb::InstanceStateChange {
                instance_id: change.instance_id,
                previous_state: Some(state(change.previous)),
                current_state: Some(state(change.current)),
            })
            .collect(),
    }
}

pub(crate) fn mapping_in(mapping: pb::BlockDeviceMapping) -> BlockDeviceMapping {
    BlockDeviceMapping {
        device_name: mapping.device_name,
        ebs: mapping.ebs.map(|ebs| EbsSpec {
            delete_on_termination: ebs.delete_on_termination,
            volume_size_gib: ebs.volume_size_gib.map(|size| size.max(0) as u64),
            volume_type: ebs.volume_type,
            iops: ebs.iops.map(|iops| iops.max(0) as u32),
            throughput_mibps: ebs.throughput_mibps.map(|t| t.max(0) as u32),
            snapshot_id: ebs.snapshot_id,
            encrypted: ebs.encrypted,
        }),
        virtual_name: mapping.virtual_name,
        no_device: mapping.no_device,
    }
}

pub(crate) fn mapping_out(mapping: &BlockDeviceMapping) -> pb::BlockDeviceMapping {
    pb::BlockDeviceMapping {
        device_name: mapping.device_name.clone(),
        ebs: mapping.ebs.as_ref().map(|ebs| pb::EbsBlockDevice {
            delete_on_termination: ebs.delete_on_termination,
            volume_size_gib: ebs.volume_size_gib.map(|size| size as i64),
            volume_type: ebs.volume_type.clone(),
            iops: ebs.iops.map(|iops| iops as i32),
            throughput_mibps: ebs.throughput_mibps.map(|t| t as i32),
            snapshot_id: ebs.snapshot_id.clone(),
            encrypted: ebs.encrypted,
        }),
        virtual_name: mapping.virtual_name.clone(),
        no_device: mapping.no_device,
    }
}

pub(crate) fn image(image: &Image) -> pb::Image {
    let mut mappings = vec![pb::BlockDeviceMapping {
        device_name: image.root_device_name.clone(),
        ebs: Some(pb::EbsBlockDevice {
            delete_on_termination: Some(true),
            volume_size_gib: Some(image.root_size_bytes.div_ceil(crate::model::GIB).max(1) as i64),
            volume_type: "gp3".to_string(),
            snapshot_id: image.root_snapshot_id.clone(),
            ..pb::EbsBlockDevice::default()
        }),
        ..pb::BlockDeviceMapping::default()
    }];
    mappings.extend(image.block_device_mappings.iter().map(mapping_out));
    pb::Image {
        image_id: image.id.clone(),
        name: image.name.clone(),
        description: image.description.clone(),
        architecture: image.architecture.clone(),
        state: image.state.as_str().to_string(),
        creation_date: rfc3339(image.creation_ms),
        root_device_name: image.root_device_name.clone(),
        root_device_type: image.root_device_type.clone(),
        command_line: image.command_line.clone(),
        block_device_mappings: mappings,
        root_size_bytes: image.root_size_bytes as i64,
        tags: tags(&image.tags),
        image_location: image.image_location.clone(),
        manifest_digest: image.manifest_digest.clone(),
        root_snapshot_id: image.root_snapshot_id.clone(),
    }
}

pub(crate) fn volume(volume: &Volume) -> pb::Volume {
    pb::Volume {
        volume_id: volume.id.clone(),
        size_gib: volume.size_gib as i64,
        volume_type: volume.volume_type.clone(),
        iops: volume.iops.unwrap_or(0) as i32,
        throughput_mibps: volume.throughput_mibps.unwrap_or(0) as i32,
        availability_zone: volume.availability_zone.clone(),
        state: volume.state.as_str().to_string(),
        create_time: rfc3339(volume.create_time_ms),
        encrypted: volume.encrypted,
        kms_key_id: volume.kms_key_id.clone(),
        snapshot_id: volume.snapshot_id.clone(),
        attachments: volume
            .attachment
            .iter()
            .map(|a| pb::VolumeAttachment {
                volume_id: volume.id.clone(),
                instance_id: a.instance_id.clone(),
                device: a.device_name.clone(),
                state: crate::engine::attachment_state(volume).to_string(),
                attach_time: rfc3339(volume.attach_time_ms.max(volume.create_time_ms)),
                delete_on_termination: a.delete_on_termination,
            })
            .collect(),
        tags: tags(&volume.tags),
        host_id: volume.host_id.clone(),
    }
}

pub(crate) fn attachment(info: &engine::AttachmentInfo) -> pb::VolumeAttachment {
    pb::VolumeAttachment {
        volume_id: info.volume_id.clone(),
        instance_id: info.instance_id.clone(),
        device: info.device.clone(),
        state: info.state.clone(),
        attach_time: rfc3339(info.attach_time_ms),
        delete_on_termination: info.delete_on_termination,
    }
}

pub(crate) fn modification(volume_id: &str, m: &VolumeModification) -> pb::VolumeModification {
    pb::VolumeModification {
        volume_id: volume_id.to_string(),
        modification_state: m.state.clone(),
        status_message: m.status_message.clone(),
        target_size_gib: m.target_size_gib as i64,
        target_iops: m.target_iops.unwrap_or(0) as i32,
        target_volume_type: m.target_volume_type.clone(),
        target_throughput_mibps: m.target_throughput_mibps.unwrap_or(0) as i32,
        original_size_gib: m.original_size_gib as i64,
        original_iops: m.original_iops.unwrap_or(0) as i32,
        original_volume_type: m.original_volume_type.clone(),
        original_throughput_mibps: m.original_throughput_mibps.unwrap_or(0) as i32,
        progress: if m.state == "completed" { 100 } else { 0 },
        start_time: rfc3339(m.start_time_ms),
        end_time: m.end_time_ms.map(rfc3339).unwrap_or_default(),
    }
}

pub(crate) fn snapshot(snapshot: &SnapshotRecord, owner_id: &str) -> pb::Snapshot {
    pb::Snapshot {
        snapshot_id: snapshot.id.clone(),
        volume_id: snapshot.volume_id.clone(),
        state: snapshot.state.as_str().to_string(),
        state_message: snapshot.state_message.clone(),
        start_time: rfc3339(snapshot.start_time_ms),
        progress: crate::engine::snapshot_progress(snapshot).to_string(),
        volume_size_gib: snapshot.volume_size_gib as i64,
        description: snapshot.description.clone(),
        encrypted: snapshot.encrypted,
        kms_key_id: snapshot.kms_key_id.clone(),
        owner_id: owner_id.to_string(),
        tags: tags(&snapshot.tags),
        stored_bytes: snapshot.stored_bytes as i64,
        full_snapshot_size_bytes: snapshot.full_size_bytes as i64,
    }
}

pub(crate) fn tag_pairs(
    specs: Vec<pb::TagSpecification>,
    resource_type: &str,
) -> Result<Vec<(String, String)>, crate::error::Ec2Error> {
    let mut out = Vec::new();
    for spec in specs {
        if spec.resource_type != resource_type {
            return Err(crate::error::Ec2Error::InvalidParameterValue(format!(
                "'{}' is not a valid taggable resource type for this operation (expected '{resource_type}')",
                spec.resource_type
            )));
        }
        out.extend(spec.tags.into_iter().map(|t| (t.key, t.value)));
    }
    Ok(out)
}

pub(crate) fn key_pair_info(key: &KeyPair) -> pb::KeyPairInfo {
    pb::KeyPairInfo {
        key_name: key.name.clone(),
        key_pair_id: key.id.clone(),
        key_fingerprint: key.fingerprint.clone(),
        key_type: key.key_type.clone(),
        public_key: key.public_key.clone(),
        create_time: rfc3339(key.create_time_ms),
    }
}

pub(crate) fn desired(instance: engine::DesiredInstance) -> pb::DesiredInstance {
    pb::DesiredInstance {
        instance_id: instance.instance_id,
        run: instance.run.as_str().to_string(),
        start_generation: instance.start_generation,
        reboot_generation: instance.reboot_generation,
        force_stop: instance.force_stop,
        stop_timeout_ms: instance.stop_timeout_ms,
        vcpus: instance.vcpus as i32,
        memory_mib: instance.memory_mib as i64,
        kernel_path: instance.kernel_path,
        initrd_path: instance.initrd_path,
        cmdline: instance.cmdline,
        volumes: instance
            .volumes
            .into_iter()
            .map(|volume| pb::DesiredVolume {
                volume_id: volume.volume_id,
                device_name: volume.device_name,
                source_path: volume.source_path,
                size_bytes: volume.size_bytes as i64,
                read_only: volume.read_only,
                delete_on_termination: volume.delete_on_termination,
                encrypted: volume.encrypted,
                encryption_key: volume.encryption_key,
                limits: Some(pb::DiskLimits {
                    ops_per_sec: volume.limits.ops_per_sec,
                    ops_burst: volume.limits.ops_burst,
                    bytes_per_sec: volume.limits.bytes_per_sec,
                    bytes_burst: volume.limits.bytes_burst,
                }),
            })
            .collect(),
        ephemeral_disks: instance
            .ephemeral_disks
            .into_iter()
            .map(|disk| pb::EphemeralDisk {
                device_name: disk.device_name,
                virtual_name: disk.virtual_name,
                size_bytes: disk.size_bytes as i64,
            })
            .collect(),
        interfaces: instance
            .interfaces
            .into_iter()
            .map(|i| pb::NetworkInterface {
                tap: i.tap,
                mac: i.mac,
                private_ip: i.private_ip.to_string(),
                prefix_len: u32::from(i.prefix_len),
                gateway: i.gateway.to_string(),
                subnet_id: i.subnet_id,
                vpc_id: i.vpc_id,
                subnet_cidr: i.subnet_cidr.to_string(),
                public_ip: i.public_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                security_group_ids: i.security_group_ids,
                security_group_names: i.security_group_names,
                dns: i.dns.iter().map(|d| d.to_string()).collect(),
                limits: Some(pb::NicLimits {
                    packets_per_sec: i.limits.packets_per_sec,
                    packets_burst: i.limits.packets_burst,
                    bytes_per_sec: i.limits.bytes_per_sec,
                    bytes_burst: i.limits.bytes_burst,
                }),
            })
            .collect(),
        imds: Some(pb::ImdsInfo {
            instance_type: instance.imds.instance_type,
            ami_id: instance.imds.ami_id,
            availability_zone: instance.imds.availability_zone,
            region: instance.imds.region,
            http_tokens_required: instance.imds.http_tokens_required,
            http_endpoint_enabled: instance.imds.http_endpoint_enabled,
            http_put_response_hop_limit: u32::from(instance.imds.http_put_response_hop_limit),
        }),
        metadata: Some(pb::InstanceMetadata {
            instance_id: instance.metadata.instance_id,
            hostname: instance.metadata.hostname,
            public_keys: instance.metadata.public_keys,
            user_data: instance.metadata.user_data,
            network_config: instance.metadata.network_config,
        }),
    }
}

pub(crate) fn actual(actual: pb::ActualInstance) -> engine::ActualReport {
    engine::ActualReport {
        instance_id: actual.instance_id,
        phase: actual.phase,
        pid: actual.pid,
        start_generation: actual.start_generation,
        reboot_generation: actual.reboot_generation,
        last_exit_reason: actual.last_exit_reason,
        last_exit_detail: actual.last_exit_detail,
        boot_count: actual.boot_count,
        deleted_volumes: actual.deleted_volumes,
    }
}

pub(crate) fn host_network(network: engine::HostNetwork) -> pb::HostNetwork {
    pb::HostNetwork {
        subnets: network
            .subnets
            .into_iter()
            .map(|s| pb::NetSubnet {
                subnet_id: s.subnet_id,
                vpc_id: s.vpc_id,
                cidr: s.cidr.to_string(),
                gateway: s.gateway.to_string(),
                number: s.number,
                vpc_number: s.vpc_number,
                peers: s.peers,
                neighbors: s
                    .neighbors
                    .iter()
                    .map(|(ip, mac)| pb::Neighbor {
                        ip: ip.to_string(),
                        mac: mac.clone(),
                    })
                    .collect(),
            })
            .collect(),
        firewall_json: serde_json::to_string(&network.firewall).unwrap_or_default(),
        elastic_ips: network
            .elastic_ips
            .into_iter()
            .map(|e| pb::ElasticIp {
                public_ip: e.public_ip.to_string(),
                private_ip: e.private_ip.to_string(),
                subnet_id: e.subnet_id,
                instance_id: e.instance_id,
            })
            .collect(),
    }
}

pub(crate) fn permissions_in(permissions: Vec<pb::IpPermission>) -> Vec<engine::IpPermission> {
    permissions
        .into_iter()
        .map(|p| engine::IpPermission {
            ip_protocol: p.ip_protocol,
            from_port: p.from_port,
            to_port: p.to_port,
            ip_ranges: p.ip_ranges.into_iter().map(|r| (r.cidr_ip, r.description)).collect(),
            groups: p
                .user_id_group_pairs
                .into_iter()
                .map(|g| (g.group_id, g.description))
                .collect(),
        })
        .collect()
}

/// A group's rules as EC2 shows them: one permission per protocol and port range, with its
/// peers gathered.
pub(crate) fn permissions_out(rules: &[crate::model::GroupRule], owner_id: &str) -> Vec<pb::IpPermission> {
    let mut out: Vec<pb::IpPermission> = Vec::new();
    for rule in rules {
        let ports = rule.protocol != "-1" && !(rule.from_port == -1 && rule.to_port == -1 && rule.protocol != "icmp");
        let index = match out.iter().position(|p| {
            p.ip_protocol == rule.protocol
                && p.from_port == ports.then_some(rule.from_port)
                && p.to_port == ports.then_some(rule.to_port)
        }) {
            Some(index) => index,
            None => {
                out.push(pb::IpPermission {
                    ip_protocol: rule.protocol.clone(),
                    from_port: ports.then_some(rule.from_port),
                    to_port: ports.then_some(rule.to_port),
                    ..pb::IpPermission::default()
                });
                out.len() - 1
            }
        };
        match &rule.peer {
            crate::model::RulePeer::Cidr(cidr) => out[index].ip_ranges.push(pb::IpRange {
                cidr_ip: cidr.to_string(),
                description: rule.description.clone(),
            }),
            crate::model::RulePeer::Group(id) => out[index].user_id_group_pairs.push(pb::UserIdGroupPair {
                group_id: id.clone(),
                description: rule.description.clone(),
                user_id: owner_id.to_string(),
            }),
        }
    }
    out
}

pub(crate) fn security_group(group: &crate::model::SecurityGroup, owner_id: &str) -> pb::SecurityGroup {
    pb::SecurityGroup {
        group_id: group.id.clone(),
        group_name: group.name.clone(),
        description: group.description.clone(),
        vpc_id: group.vpc_id.clone(),
        owner_id: owner_id.to_string(),
        ip_permissions: permissions_out(&group.ingress, owner_id),
        ip_permissions_egress: permissions_out(&group.egress, owner_id),
        tags: tags(&group.tags),
    }
}

pub(crate) fn vpc(vpc: &crate::model::Vpc, owner_id: &str) -> pb::Vpc {
    pb::Vpc {
        vpc_id: vpc.id.clone(),
        cidr_block: vpc.cidr.to_string(),
        state: "available".into(),
        is_default: vpc.is_default,
        owner_id: owner_id.to_string(),
        instance_tenancy: "default".into(),
        tags: tags(&vpc.tags),
    }
}

pub(crate) fn subnet(view: &engine::SubnetView, owner_id: &str) -> pb::Subnet {
    let subnet = &view.subnet;
    pb::Subnet {
        subnet_id: subnet.id.clone(),
        vpc_id: subnet.vpc_id.clone(),
        cidr_block: subnet.cidr.to_string(),
        availability_zone: subnet.availability_zone.clone(),
        available_ip_address_count: view.available.min(i32::MAX as u64) as i32,
        default_for_az: subnet.default_for_az,
        map_public_ip_on_launch: false,
        state: "available".into(),
        tags: tags(&subnet.tags),
        owner_id: owner_id.to_string(),
    }
}

pub(crate) fn address(address: &crate::model::Address) -> pb::Address {
    let association = address.association.as_ref();
    pb::Address {
        allocation_id: address.allocation_id.clone(),
        public_ip: address.public_ip.to_string(),
        domain: "vpc".into(),
        association_id: association.map(|a| a.id.clone()).unwrap_or_default(),
        instance_id: association.map(|a| a.instance_id.clone()).unwrap_or_default(),
        private_ip_address: association.map(|a| a.private_ip.to_string()).unwrap_or_default(),
        tags: tags(&address.tags),
        public_ipv4_pool: "hearth".into(),
    }
}
