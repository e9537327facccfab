//! `hearth.v1` responses as the JSON `aws ec2` prints: PascalCase EC2 names, empty fields left out.

use hearth_api::v1 as api;
use serde_json::{json, Map, Value};

/// A JSON object built field by field; empty strings and absent values are left out, as EC2 does.
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn new() -> Self {
        Obj::default()
    }

    /// A string field, left out when empty.
    fn s(mut self, key: &str, value: &str) -> Self {
        if !value.is_empty() {
            self.0.insert(key.to_owned(), Value::String(value.to_owned()));
        }
        self
    }

    /// Any field, always present.
    fn v(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.to_owned(), value.into());
        self
    }

    /// An optional field, left out when `None`.
    fn opt(self, key: &str, value: Option<impl Into<Value>>) -> Self {
        match value {
            Some(value) => self.v(key, value),
            None => self,
        }
    }

    /// A list field, left out when empty.
    fn list<T>(self, key: &str, items: &[T], convert: impl Fn(&T) -> Value) -> Self {
        if items.is_empty() {
            self
        } else {
            self.v(key, Value::Array(items.iter().map(convert).collect()))
        }
    }

    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

fn list<T>(items: &[T], convert: impl Fn(&T) -> Value) -> Value {
    Value::Array(items.iter().map(convert).collect())
}

/// `{"Key": .., "Value": ..}`.
pub fn tag(tag: &api::Tag) -> Value {
    json!({"Key": tag.key, "Value": tag.value})
}

/// `{"Code": 16, "Name": "running"}`.
pub fn state(state: &Option<api::InstanceState>) -> Value {
    let state = state.clone().unwrap_or_default();
    json!({"Code": state.code, "Name": state.name})
}

fn instance_block_device(mapping: &api::InstanceBlockDeviceMapping) -> Value {
    Obj::new()
        .s("DeviceName", &mapping.device_name)
        .v(
            "Ebs",
            Obj::new()
                .s("AttachTime", &mapping.attach_time)
                .v("DeleteOnTermination", mapping.delete_on_termination)
                .s("Status", &mapping.status)
                .s("VolumeId", &mapping.volume_id)
                .done(),
        )
        .done()
}

fn block_device(mapping: &api::BlockDeviceMapping) -> Value {
    let ebs = mapping.ebs.as_ref().map(|ebs| {
        Obj::new()
            .opt("DeleteOnTermination", ebs.delete_on_termination)
            .s("SnapshotId", &ebs.snapshot_id)
            .opt("VolumeSize", ebs.volume_size_gib)
            .s("VolumeType", &ebs.volume_type)
            .opt("Iops", ebs.iops)
            .opt("Throughput", ebs.throughput_mibps)
            .v("Encrypted", ebs.encrypted)
            .done()
    });
    Obj::new()
        .s("DeviceName", &mapping.device_name)
        .opt("Ebs", ebs)
        .s("VirtualName", &mapping.virtual_name)
        .opt("NoDevice", mapping.no_device.then_some(""))
        .done()
}

/// One instance, as in `Reservations[].Instances[]`.
pub fn instance(instance: &api::Instance) -> Value {
    let reason = instance
        .state_reason
        .as_ref()
        .filter(|reason| !reason.code.is_empty())
        .map(|reason| json!({"Code": reason.code, "Message": reason.message}));
    Obj::new()
        .v("AmiLaunchIndex", instance.ami_launch_index)
        .s("ImageId", &instance.image_id)
        .s("InstanceId", &instance.instance_id)
        .s("InstanceType", &instance.instance_type)
        .s("KeyName", &instance.key_name)
        .s("LaunchTime", &instance.launch_time)
        .v(
            "Placement",
            Obj::new()
                .s("AvailabilityZone", &instance.availability_zone)
                .s("HostId", &instance.host_id)
                .done(),
        )
        .s("PrivateDnsName", &instance.private_dns_name)
        .s("PrivateIpAddress", &instance.private_ip_address)
        .s("PublicIpAddress", &instance.public_ip_address)
        .v("State", state(&instance.state))
        .opt("StateReason", reason)
        .v("StateTransitionReason", instance.state_transition_reason.clone())
        .s("SubnetId", &instance.subnet_id)
        .s("VpcId", &instance.vpc_id)
        .s("MacAddress", &instance.mac_address)
        .s("RootDeviceName", &instance.root_device_name)
        .s("RootDeviceType", &instance.root_device_type)
        .v(
            "BlockDeviceMappings",
            list(&instance.block_device_mappings, instance_block_device),
        )
        .s("ClientToken", &instance.client_token)
        .opt("NetworkInterfaces", network_interfaces(instance))
        .list("SecurityGroups", &instance.security_groups, group_identifier)
        .opt(
            "MetadataOptions",
            instance.metadata_options.as_ref().map(metadata_options),
        )
        .v("CpuOptions", json!({"CoreCount": instance.vcpus, "ThreadsPerCore": 1}))
        .v("MemoryMiB", instance.memory_mib)
        .list("Tags", &instance.tags, tag)
        .done()
}

/// `{"GroupId": .., "GroupName": ..}`.
fn group_identifier(group: &api::GroupIdentifier) -> Value {
    Obj::new()
        .s("GroupId", &group.group_id)
        .s("GroupName", &group.group_name)
        .done()
}

/// An instance's one network interface, as aws shows it under `NetworkInterfaces` (none without a network).
fn network_interfaces(instance: &api::Instance) -> Option<Value> {
    if instance.mac_address.is_empty() && instance.subnet_id.is_empty() {
        return None;
    }
    let association = (!instance.public_ip_address.is_empty()).then(|| json!({"PublicIp": instance.public_ip_address}));
    let interface = Obj::new()
        .opt("Association", association)
        .v("Groups", list(&instance.security_groups, group_identifier))
        .s("MacAddress", &instance.mac_address)
        .s("PrivateDnsName", &instance.private_dns_name)
        .s("PrivateIpAddress", &instance.private_ip_address)
        .s("SubnetId", &instance.subnet_id)
        .s("VpcId", &instance.vpc_id)
        .done();
    Some(Value::Array(vec![interface]))
}

/// An instance's metadata options: `{"State": "applied", "HttpTokens": .., "HttpPutResponseHopLimit": .., ..}`.
pub fn metadata_options(options: &api::InstanceMetadataOptions) -> Value {
    Obj::new()
        .v("State", "applied")
        .s("HttpTokens", &options.http_tokens)
        .v("HttpPutResponseHopLimit", options.http_put_response_hop_limit)
        .s("HttpEndpoint", &options.http_endpoint)
        .done()
}

/// ModifyInstanceMetadataOptions: the instance and its options now.
pub fn modify_instance_metadata_options(instance_id: &str, options: &api::InstanceMetadataOptions) -> Value {
    json!({"InstanceId": instance_id, "InstanceMetadataOptions": metadata_options(options)})
}

/// A reservation, as RunInstances prints it and as in `Reservations[]`.
pub fn reservation(reservation: &api::Reservation) -> Value {
    Obj::new()
        .v("Groups", json!([]))
        .v("Instances", list(&reservation.instances, instance))
        .s("OwnerId", &reservation.owner_id)
        .s("ReservationId", &reservation.reservation_id)
        .done()
}

/// DescribeInstances.
pub fn describe_instances(response: &api::DescribeInstancesResponse) -> Value {
    Obj::new()
        .v("Reservations", list(&response.reservations, reservation))
        .s("NextToken", &response.next_token)
        .done()
}

/// DescribeInstanceStatus.
pub fn describe_instance_status(response: &api::DescribeInstanceStatusResponse) -> Value {
    let status = |s: &api::InstanceStatus| {
        Obj::new()
            .s("AvailabilityZone", &s.availability_zone)
            .s("InstanceId", &s.instance_id)
            .v("InstanceState", state(&s.instance_state))
            .v("InstanceStatus", json!({"Status": s.instance_status}))
            .v("SystemStatus", json!({"Status": s.system_status}))
            .done()
    };
    Obj::new()
        .v("InstanceStatuses", list(&response.instance_statuses, status))
        .s("NextToken", &response.next_token)
        .done()
}

/// Start/Stop/TerminateInstances, under `key` (`StartingInstances`, `StoppingInstances`, `TerminatingInstances`).
pub fn state_changes(key: &str, response: &api::InstanceStateChanges) -> Value {
    let change = |c: &api::InstanceStateChange| {
        json!({
            "CurrentState": state(&c.current_state),
            "InstanceId": c.instance_id,
            "PreviousState": state(&c.previous_state),
        })
    };
    Obj::new().v(key, list(&response.changes, change)).done()
}

/// The JSON member name of a DescribeInstanceAttribute attribute (`disableApiTermination` → `DisableApiTermination`).
fn attribute_member(attribute: &str) -> String {
    let mut chars = attribute.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// DescribeInstanceAttribute: `{"InstanceId": .., "<Attribute>": {"Value": ..}}`.
pub fn instance_attribute(response: &api::InstanceAttribute) -> Value {
    let out = Obj::new().s("InstanceId", &response.instance_id);
    if response.attribute == "blockDeviceMapping" {
        return out
            .v(
                "BlockDeviceMappings",
                list(&response.block_device_mappings, instance_block_device),
            )
            .done();
    }
    let value = match response.attribute.as_str() {
        "disableApiTermination" | "ebsOptimized" | "sourceDestCheck" | "enaSupport" => match response.value.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            other => Value::String(other.to_owned()),
        },
        _ => Value::String(response.value.clone()),
    };
    out.v(&attribute_member(&response.attribute), json!({"Value": value}))
        .done()
}

/// GetConsoleOutput (the output stays base64, as EC2 returns it).
pub fn console_output(response: &api::ConsoleOutput) -> Value {
    Obj::new()
        .s("InstanceId", &response.instance_id)
        .s("Timestamp", &response.timestamp)
        .s("Output", &response.output)
        .done()
}

/// DescribeInstanceTypes.
pub fn describe_instance_types(response: &api::DescribeInstanceTypesResponse) -> Value {
    let info = |t: &api::InstanceTypeInfo| {
        let storage = (t.instance_store_disks > 0).then(|| {
            json!({
                "TotalSizeInGB": t.instance_store_gib,
                "Disks": [{
                    "Count": t.instance_store_disks,
                    "SizeInGB": t.instance_store_gib / i64::from(t.instance_store_disks.max(1)),
                }],
            })
        });
        Obj::new()
            .s("InstanceType", &t.instance_type)
            .s("Family", &t.family)
            .v("VCpuInfo", json!({"DefaultVCpus": t.vcpus}))
            .v("MemoryInfo", json!({"SizeInMiB": t.memory_mib}))
            .v("InstanceStorageSupported", t.instance_store_disks > 0)
            .opt("InstanceStorageInfo", storage)
            .v(
                "NetworkInfo",
                json!({"NetworkPerformance": format!("{} Mbps", t.network_mbps)}),
            )
            .v(
                "EbsInfo",
                json!({"EbsOptimizedInfo": {"BaselineBandwidthInMbps": t.ebs_mbps}}),
            )
            .v("BurstablePerformanceSupported", t.burstable)
            .done()
    };
    json!({"InstanceTypes": list(&response.instance_types, info)})
}

/// One image. An EBS-backed image's root snapshot also shows in its root device's mapping, as in EC2.
pub fn image(image: &api::Image) -> Value {
    let mut mappings = image.block_device_mappings.clone();
    if !image.root_snapshot_id.is_empty() {
        let root_name = if image.root_device_name.is_empty() {
            "/dev/xvda"
        } else {
            image.root_device_name.as_str()
        };
        let root = match mappings.iter().position(|m| m.device_name == root_name) {
            Some(i) => &mut mappings[i],
            None => {
                mappings.insert(
                    0,
                    api::BlockDeviceMapping {
                        device_name: root_name.to_owned(),
                        ..Default::default()
                    },
                );
                &mut mappings[0]
            }
        };
        let ebs = root.ebs.get_or_insert_with(Default::default);
        if ebs.snapshot_id.is_empty() {
            ebs.snapshot_id = image.root_snapshot_id.clone();
        }
    }
    Obj::new()
        .s("Architecture", &image.architecture)
        .s("CreationDate", &image.creation_date)
        .s("ImageId", &image.image_id)
        .s("ImageLocation", &image.image_location)
        .s("Name", &image.name)
        .s("Description", &image.description)
        .s("State", &image.state)
        .s("RootDeviceName", &image.root_device_name)
        .s("RootDeviceType", &image.root_device_type)
        .v("BlockDeviceMappings", list(&mappings, block_device))
        .s("RootSnapshotId", &image.root_snapshot_id)
        .s("ManifestDigest", &image.manifest_digest)
        .s("CommandLine", &image.command_line)
        .v("RootSizeBytes", image.root_size_bytes)
        .list("Tags", &image.tags, tag)
        .done()
}

/// DescribeImages.
pub fn describe_images(response: &api::DescribeImagesResponse) -> Value {
    json!({"Images": list(&response.images, image)})
}

/// RegisterImage and CreateImage.
pub fn image_id(response: &api::ImageId) -> Value {
    json!({"ImageId": response.image_id})
}

/// CreateKeyPair (with the private key).
pub fn key_pair(response: &api::KeyPair) -> Value {
    Obj::new()
        .s("KeyFingerprint", &response.key_fingerprint)
        .v("KeyMaterial", response.key_material.clone())
        .s("KeyName", &response.key_name)
        .s("KeyPairId", &response.key_pair_id)
        .s("KeyType", &response.key_type)
        .done()
}

fn key_pair_info(info: &api::KeyPairInfo) -> Value {
    Obj::new()
        .s("KeyPairId", &info.key_pair_id)
        .s("KeyFingerprint", &info.key_fingerprint)
        .s("KeyName", &info.key_name)
        .s("KeyType", &info.key_type)
        .s("PublicKey", &info.public_key)
        .s("CreateTime", &info.create_time)
        .done()
}

/// ImportKeyPair.
pub fn imported_key_pair(info: &api::KeyPairInfo) -> Value {
    Obj::new()
        .s("KeyFingerprint", &info.key_fingerprint)
        .s("KeyName", &info.key_name)
        .s("KeyPairId", &info.key_pair_id)
        .done()
}

/// DescribeKeyPairs.
pub fn describe_key_pairs(response: &api::DescribeKeyPairsResponse) -> Value {
    json!({"KeyPairs": list(&response.key_pairs, key_pair_info)})
}

/// DescribeTags.
pub fn describe_tags(response: &api::DescribeTagsResponse) -> Value {
    let description = |t: &api::TagDescription| json!({"Key": t.key, "ResourceId": t.resource_id, "ResourceType": t.resource_type, "Value": t.value});
    Obj::new()
        .v("Tags", list(&response.tags, description))
        .s("NextToken", &response.next_token)
        .done()
}

/// DescribeRegions.
pub fn describe_regions(response: &api::DescribeRegionsResponse) -> Value {
    let region = |r: &api::Region| {
        Obj::new()
            .s("Endpoint", &r.endpoint)
            .s("RegionName", &r.region_name)
            .v("OptInStatus", "opt-in-not-required")
            .done()
    };
    json!({"Regions": list(&response.regions, region)})
}

/// DescribeAvailabilityZones.
pub fn describe_availability_zones(response: &api::DescribeAvailabilityZonesResponse) -> Value {
    let zone = |z: &api::AvailabilityZone| {
        Obj::new()
            .s("State", &z.state)
            .s("RegionName", &z.region_name)
            .s("ZoneName", &z.zone_name)
            .v("ZoneType", "availability-zone")
            .v("Hosts", z.hosts)
            .done()
    };
    json!({"AvailabilityZones": list(&response.availability_zones, zone)})
}

/// AttachVolume and DetachVolume: the attachment.
pub fn volume_attachment(attachment: &api::VolumeAttachment) -> Value {
    Obj::new()
        .s("AttachTime", &attachment.attach_time)
        .s("Device", &attachment.device)
        .s("InstanceId", &attachment.instance_id)
        .s("State", &attachment.state)
        .s("VolumeId", &attachment.volume_id)
        .done()
}

/// A positive number, or nothing (IOPS and throughput of the volume types without them).
fn positive<T: Into<i64> + Copy>(value: T) -> Option<i64> {
    Some(value.into()).filter(|v| *v > 0)
}

/// One volume, as CreateVolume prints it and as in `Volumes[]`.
pub fn volume(volume: &api::Volume) -> Value {
    let attachment = |a: &api::VolumeAttachment| {
        Obj::new()
            .s("AttachTime", &a.attach_time)
            .s("Device", &a.device)
            .s("InstanceId", &a.instance_id)
            .s("State", &a.state)
            .s("VolumeId", &a.volume_id)
            .v("DeleteOnTermination", a.delete_on_termination)
            .done()
    };
    Obj::new()
        .v("Attachments", list(&volume.attachments, attachment))
        .s("AvailabilityZone", &volume.availability_zone)
        .s("CreateTime", &volume.create_time)
        .v("Encrypted", volume.encrypted)
        .s("KmsKeyId", &volume.kms_key_id)
        .v("Size", volume.size_gib)
        .s("SnapshotId", &volume.snapshot_id)
        .s("State", &volume.state)
        .s("VolumeId", &volume.volume_id)
        .opt("Iops", positive(volume.iops))
        .s("VolumeType", &volume.volume_type)
        .opt("Throughput", positive(volume.throughput_mibps))
        .s("HostId", &volume.host_id)
        .list("Tags", &volume.tags, tag)
        .done()
}

/// DescribeVolumes.
pub fn describe_volumes(response: &api::DescribeVolumesResponse) -> Value {
    json!({"Volumes": list(&response.volumes, volume)})
}

/// One volume modification, as in `VolumesModifications[]`.
pub fn volume_modification(modification: &api::VolumeModification) -> Value {
    let m = modification;
    Obj::new()
        .s("VolumeId", &m.volume_id)
        .s("ModificationState", &m.modification_state)
        .s("StatusMessage", &m.status_message)
        .v("TargetSize", m.target_size_gib)
        .opt("TargetIops", positive(m.target_iops))
        .s("TargetVolumeType", &m.target_volume_type)
        .opt("TargetThroughput", positive(m.target_throughput_mibps))
        .v("OriginalSize", m.original_size_gib)
        .opt("OriginalIops", positive(m.original_iops))
        .s("OriginalVolumeType", &m.original_volume_type)
        .opt("OriginalThroughput", positive(m.original_throughput_mibps))
        .v("Progress", m.progress)
        .s("StartTime", &m.start_time)
        .s("EndTime", &m.end_time)
        .done()
}

/// ModifyVolume.
pub fn modify_volume(modification: &api::VolumeModification) -> Value {
    json!({"VolumeModification": volume_modification(modification)})
}

/// DescribeVolumesModifications.
pub fn describe_volumes_modifications(response: &api::DescribeVolumesModificationsResponse) -> Value {
    json!({"VolumesModifications": list(&response.volumes_modifications, volume_modification)})
}

/// One snapshot, as CreateSnapshot prints it and as in `Snapshots[]`.
pub fn snapshot(snapshot: &api::Snapshot) -> Value {
    Obj::new()
        .s("Description", &snapshot.description)
        .v("Encrypted", snapshot.encrypted)
        .s("KmsKeyId", &snapshot.kms_key_id)
        .s("OwnerId", &snapshot.owner_id)
        .s("Progress", &snapshot.progress)
        .s("SnapshotId", &snapshot.snapshot_id)
        .s("StartTime", &snapshot.start_time)
        .s("State", &snapshot.state)
        .s("StateMessage", &snapshot.state_message)
        .s("VolumeId", &snapshot.volume_id)
        .v("VolumeSize", snapshot.volume_size_gib)
        .list("Tags", &snapshot.tags, tag)
        .v("FullSnapshotSizeInBytes", snapshot.full_snapshot_size_bytes)
        .v("StoredBytes", snapshot.stored_bytes)
        .done()
}

/// DescribeSnapshots.
pub fn describe_snapshots(response: &api::DescribeSnapshotsResponse) -> Value {
    json!({"Snapshots": list(&response.snapshots, snapshot)})
}

/// CopySnapshot.
pub fn snapshot_id(response: &api::SnapshotId) -> Value {
    json!({"SnapshotId": response.snapshot_id})
}

/// One VPC, as in `Vpcs[]`.
pub fn vpc(vpc: &api::Vpc) -> Value {
    Obj::new()
        .s("CidrBlock", &vpc.cidr_block)
        .s("State", &vpc.state)
        .s("VpcId", &vpc.vpc_id)
        .s("OwnerId", &vpc.owner_id)
        .s("InstanceTenancy", &vpc.instance_tenancy)
        .v("IsDefault", vpc.is_default)
        .list("Tags", &vpc.tags, tag)
        .done()
}

/// CreateVpc.
pub fn create_vpc(created: &api::Vpc) -> Value {
    json!({"Vpc": vpc(created)})
}

/// DescribeVpcs.
pub fn describe_vpcs(response: &api::DescribeVpcsResponse) -> Value {
    json!({"Vpcs": list(&response.vpcs, vpc)})
}

/// One subnet, as in `Subnets[]`.
pub fn subnet(subnet: &api::Subnet) -> Value {
    Obj::new()
        .s("AvailabilityZone", &subnet.availability_zone)
        .v("AvailableIpAddressCount", subnet.available_ip_address_count)
        .s("CidrBlock", &subnet.cidr_block)
        .v("DefaultForAz", subnet.default_for_az)
        .v("MapPublicIpOnLaunch", subnet.map_public_ip_on_launch)
        .s("State", &subnet.state)
        .s("SubnetId", &subnet.subnet_id)
        .s("VpcId", &subnet.vpc_id)
        .s("OwnerId", &subnet.owner_id)
        .list("Tags", &subnet.tags, tag)
        .done()
}

/// CreateSubnet.
pub fn create_subnet(created: &api::Subnet) -> Value {
    json!({"Subnet": subnet(created)})
}

/// DescribeSubnets.
pub fn describe_subnets(response: &api::DescribeSubnetsResponse) -> Value {
    json!({"Subnets": list(&response.subnets, subnet)})
}

/// One rule of a security group, as in `IpPermissions[]`: the peer lists are always there, as in aws.
pub fn ip_permission(permission: &api::IpPermission) -> Value {
    let range = |r: &api::IpRange| {
        Obj::new()
            .s("CidrIp", &r.cidr_ip)
            .s("Description", &r.description)
            .done()
    };
    let pair = |p: &api::UserIdGroupPair| {
        Obj::new()
            .s("Description", &p.description)
            .s("GroupId", &p.group_id)
            .s("UserId", &p.user_id)
            .done()
    };
    Obj::new()
        .opt("FromPort", permission.from_port)
        .s("IpProtocol", &permission.ip_protocol)
        .v("IpRanges", list(&permission.ip_ranges, range))
        .v("Ipv6Ranges", json!([]))
        .v("PrefixListIds", json!([]))
        .opt("ToPort", permission.to_port)
        .v("UserIdGroupPairs", list(&permission.user_id_group_pairs, pair))
        .done()
}

/// One security group, as in `SecurityGroups[]`.
pub fn security_group(group: &api::SecurityGroup) -> Value {
    Obj::new()
        .s("Description", &group.description)
        .s("GroupName", &group.group_name)
        .v("IpPermissions", list(&group.ip_permissions, ip_permission))
        .s("OwnerId", &group.owner_id)
        .s("GroupId", &group.group_id)
        .v("IpPermissionsEgress", list(&group.ip_permissions_egress, ip_permission))
        .list("Tags", &group.tags, tag)
        .s("VpcId", &group.vpc_id)
        .done()
}

/// CreateSecurityGroup.
pub fn security_group_id(response: &api::SecurityGroupId) -> Value {
    json!({"GroupId": response.group_id})
}

/// DescribeSecurityGroups.
pub fn describe_security_groups(response: &api::DescribeSecurityGroupsResponse) -> Value {
    json!({"SecurityGroups": list(&response.security_groups, security_group)})
}

/// Authorize/RevokeSecurityGroupIngress/Egress.
pub fn return_true() -> Value {
    json!({"Return": true})
}

/// One Elastic IP address, as in `Addresses[]`.
pub fn address(address: &api::Address) -> Value {
    Obj::new()
        .s("InstanceId", &address.instance_id)
        .s("PublicIp", &address.public_ip)
        .s("AllocationId", &address.allocation_id)
        .s("AssociationId", &address.association_id)
        .s("Domain", &address.domain)
        .s("PrivateIpAddress", &address.private_ip_address)
        .list("Tags", &address.tags, tag)
        .s("PublicIpv4Pool", &address.public_ipv4_pool)
        .done()
}

/// AllocateAddress.
pub fn allocate_address(address: &api::Address) -> Value {
    Obj::new()
        .s("AllocationId", &address.allocation_id)
        .s("PublicIp", &address.public_ip)
        .s("Domain", &address.domain)
        .s("PublicIpv4Pool", &address.public_ipv4_pool)
        .done()
}

/// AssociateAddress.
pub fn associate_address(response: &api::AssociateAddressResponse) -> Value {
    json!({"AssociationId": response.association_id})
}

/// DescribeAddresses.
pub fn describe_addresses(response: &api::DescribeAddressesResponse) -> Value {
    json!({"Addresses": list(&response.addresses, address)})
}

/// JSON text as aws prints it: four-space indentation, a final newline.
pub fn to_text(value: &Value) -> String {
    use serde::Serialize as _;
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    // Serializing a Value into memory cannot fail.
    value.serialize(&mut serializer).expect("JSON value serializes");
    let mut text = String::from_utf8(out).expect("serde_json writes UTF-8");
    text.push('\n');
    text
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A response with one running, tagged instance, shared with the table tests.
    pub fn sample_instances() -> api::DescribeInstancesResponse {
        api::DescribeInstancesResponse {
            reservations: vec![api::Reservation {
                reservation_id: "r-0123".into(),
                owner_id: "000000000000".into(),
                instances: vec![api::Instance {
                    instance_id: "i-0abc".into(),
                    image_id: "ami-0001".into(),
                    instance_type: "t3.micro".into(),
                    state: Some(api::InstanceState {
                        code: 16,
                        name: "running".into(),
                    }),
                    launch_time: "2026-01-02T03:04:05Z".into(),
                    availability_zone: "hearth-1a".into(),
                    key_name: "me".into(),
                    private_ip_address: "10.0.0.5".into(),
                    root_device_name: "/dev/xvda".into(),
                    root_device_type: "ebs".into(),
                    block_device_mappings: vec![api::InstanceBlockDeviceMapping {
                        device_name: "/dev/xvda".into(),
                        volume_id: "vol-0001".into(),
                        status: "attached".into(),
                        delete_on_termination: true,
                        attach_time: "2026-01-02T03:04:05Z".into(),
                    }],
                    tags: vec![api::Tag {
                        key: "Name".into(),
                        value: "web".into(),
                    }],
                    vcpus: 2,
                    memory_mib: 1024,
                    ..Default::default()
                }],
            }],
            next_token: String::new(),
        }
    }

    #[test]
    fn describe_instances_uses_ec2_names() {
        let value = describe_instances(&sample_instances());
        assert_eq!(
            value,
            json!({"Reservations": [{
                "Groups": [],
                "OwnerId": "000000000000",
                "ReservationId": "r-0123",
                "Instances": [{
                    "AmiLaunchIndex": 0,
                    "ImageId": "ami-0001",
                    "InstanceId": "i-0abc",
                    "InstanceType": "t3.micro",
                    "KeyName": "me",
                    "LaunchTime": "2026-01-02T03:04:05Z",
                    "Placement": {"AvailabilityZone": "hearth-1a"},
                    "PrivateIpAddress": "10.0.0.5",
                    "State": {"Code": 16, "Name": "running"},
                    "StateTransitionReason": "",
                    "RootDeviceName": "/dev/xvda",
                    "RootDeviceType": "ebs",
                    "BlockDeviceMappings": [{
                        "DeviceName": "/dev/xvda",
                        "Ebs": {
                            "AttachTime": "2026-01-02T03:04:05Z",
                            "DeleteOnTermination": true,
                            "Status": "attached",
                            "VolumeId": "vol-0001"
                        }
                    }],
                    "CpuOptions": {"CoreCount": 2, "ThreadsPerCore": 1},
                    "MemoryMiB": 1024,
                    "Tags": [{"Key": "Name", "Value": "web"}]
                }]
            }]})
        );
    }

    #[test]
    fn networked_instances_show_their_vpc_groups_and_interface() {
        let mut response = sample_instances();
        let instance = &mut response.reservations[0].instances[0];
        instance.vpc_id = "vpc-0001".into();
        instance.subnet_id = "subnet-0001".into();
        instance.mac_address = "02:00:0a:00:00:05".into();
        instance.private_dns_name = "ip-10-0-0-5.hearth.internal".into();
        instance.public_ip_address = "203.0.113.7".into();
        instance.security_groups = vec![api::GroupIdentifier {
            group_id: "sg-0001".into(),
            group_name: "default".into(),
        }];
        instance.metadata_options = Some(api::InstanceMetadataOptions {
            http_tokens: "required".into(),
            http_endpoint: "enabled".into(),
            http_put_response_hop_limit: 2,
        });
        let value = super::instance(instance);
        let groups = json!([{"GroupId": "sg-0001", "GroupName": "default"}]);
        assert_eq!(value["VpcId"], "vpc-0001");
        assert_eq!(value["SubnetId"], "subnet-0001");
        assert_eq!(value["MacAddress"], "02:00:0a:00:00:05");
        assert_eq!(value["PrivateDnsName"], "ip-10-0-0-5.hearth.internal");
        assert_eq!(value["PrivateIpAddress"], "10.0.0.5");
        assert_eq!(value["PublicIpAddress"], "203.0.113.7");
        assert_eq!(value["SecurityGroups"], groups);
        assert_eq!(
            value["NetworkInterfaces"],
            json!([{
                "Association": {"PublicIp": "203.0.113.7"},
                "Groups": groups,
                "MacAddress": "02:00:0a:00:00:05",
                "PrivateDnsName": "ip-10-0-0-5.hearth.internal",
                "PrivateIpAddress": "10.0.0.5",
                "SubnetId": "subnet-0001",
                "VpcId": "vpc-0001"
            }])
        );
        assert_eq!(
            value["MetadataOptions"],
            json!({"State": "applied", "HttpTokens": "required", "HttpPutResponseHopLimit": 2, "HttpEndpoint": "enabled"})
        );
        // Without a public address there is no Association; without a network no interface at all.
        instance.public_ip_address.clear();
        let value = super::instance(instance);
        assert_eq!(value.get("PublicIpAddress"), None);
        assert_eq!(value["NetworkInterfaces"][0].get("Association"), None);
        let bare = super::instance(&sample_instances().reservations[0].instances[0]);
        for key in [
            "NetworkInterfaces",
            "SecurityGroups",
            "MetadataOptions",
            "VpcId",
            "SubnetId",
            "MacAddress",
        ] {
            assert_eq!(bare.get(key), None, "{key}");
        }
    }

    /// The default group and a web group with rules, shared with the table tests.
    pub fn sample_security_groups() -> api::DescribeSecurityGroupsResponse {
        let all_from = |group_id: &str| api::IpPermission {
            ip_protocol: "-1".into(),
            user_id_group_pairs: vec![api::UserIdGroupPair {
                group_id: group_id.into(),
                description: String::new(),
                user_id: "000000000000".into(),
            }],
            ..Default::default()
        };
        let all_out = api::IpPermission {
            ip_protocol: "-1".into(),
            ip_ranges: vec![api::IpRange {
                cidr_ip: "0.0.0.0/0".into(),
                description: String::new(),
            }],
            ..Default::default()
        };
        api::DescribeSecurityGroupsResponse {
            security_groups: vec![
                api::SecurityGroup {
                    group_id: "sg-0001".into(),
                    group_name: "default".into(),
                    description: "default VPC security group".into(),
                    vpc_id: "vpc-0001".into(),
                    owner_id: "000000000000".into(),
                    ip_permissions: vec![all_from("sg-0001")],
                    ip_permissions_egress: vec![all_out.clone()],
                    tags: vec![],
                },
                api::SecurityGroup {
                    group_id: "sg-0002".into(),
                    group_name: "web".into(),
                    description: "web servers".into(),
                    vpc_id: "vpc-0001".into(),
                    owner_id: "000000000000".into(),
                    ip_permissions: vec![
                        api::IpPermission {
                            ip_protocol: "tcp".into(),
                            from_port: Some(22),
                            to_port: Some(22),
                            ip_ranges: vec![
                                api::IpRange {
                                    cidr_ip: "10.0.0.0/8".into(),
                                    description: "ssh".into(),
                                },
                                api::IpRange {
                                    cidr_ip: "192.168.0.0/16".into(),
                                    description: String::new(),
                                },
                            ],
                            user_id_group_pairs: vec![],
                        },
                        api::IpPermission {
                            ip_protocol: "icmp".into(),
                            from_port: Some(8),
                            to_port: Some(-1),
                            ip_ranges: vec![api::IpRange {
                                cidr_ip: "0.0.0.0/0".into(),
                                description: String::new(),
                            }],
                            user_id_group_pairs: vec![],
                        },
                    ],
                    ip_permissions_egress: vec![],
                    tags: vec![api::Tag {
                        key: "Name".into(),
                        value: "web".into(),
                    }],
                },
            ],
        }
    }

    #[test]
    fn security_groups_use_ec2_names() {
        let value = describe_security_groups(&sample_security_groups());
        assert_eq!(
            value["SecurityGroups"][0],
            json!({
                "Description": "default VPC security group",
                "GroupName": "default",
                "IpPermissions": [{
                    "IpProtocol": "-1",
                    "IpRanges": [],
                    "Ipv6Ranges": [],
                    "PrefixListIds": [],
                    "UserIdGroupPairs": [{"GroupId": "sg-0001", "UserId": "000000000000"}]
                }],
                "OwnerId": "000000000000",
                "GroupId": "sg-0001",
                "IpPermissionsEgress": [{
                    "IpProtocol": "-1",
                    "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
                    "Ipv6Ranges": [],
                    "PrefixListIds": [],
                    "UserIdGroupPairs": []
                }],
                "VpcId": "vpc-0001"
            })
        );
        let web = &value["SecurityGroups"][1];
        assert_eq!(
            web["IpPermissions"][0],
            json!({
                "FromPort": 22,
                "IpProtocol": "tcp",
                "IpRanges": [{"CidrIp": "10.0.0.0/8", "Description": "ssh"}, {"CidrIp": "192.168.0.0/16"}],
                "Ipv6Ranges": [],
                "PrefixListIds": [],
                "ToPort": 22,
                "UserIdGroupPairs": []
            })
        );
        assert_eq!(web["IpPermissionsEgress"], json!([]));
        assert_eq!(web["Tags"], json!([{"Key": "Name", "Value": "web"}]));
        let created = api::SecurityGroupId {
            group_id: "sg-0003".into(),
        };
        assert_eq!(security_group_id(&created), json!({"GroupId": "sg-0003"}));
        assert_eq!(return_true(), json!({"Return": true}));
    }

    #[test]
    fn vpcs_and_subnets_use_ec2_names() {
        let vpc = api::Vpc {
            vpc_id: "vpc-0001".into(),
            cidr_block: "10.0.0.0/16".into(),
            state: "available".into(),
            is_default: false,
            owner_id: "000000000000".into(),
            instance_tenancy: "default".into(),
            tags: vec![api::Tag {
                key: "Name".into(),
                value: "prod".into(),
            }],
        };
        let expected = json!({
            "CidrBlock": "10.0.0.0/16",
            "State": "available",
            "VpcId": "vpc-0001",
            "OwnerId": "000000000000",
            "InstanceTenancy": "default",
            "IsDefault": false,
            "Tags": [{"Key": "Name", "Value": "prod"}]
        });
        assert_eq!(create_vpc(&vpc), json!({"Vpc": expected}));
        let response = api::DescribeVpcsResponse { vpcs: vec![vpc] };
        assert_eq!(describe_vpcs(&response), json!({"Vpcs": [expected]}));

        let subnet = api::Subnet {
            subnet_id: "subnet-0001".into(),
            vpc_id: "vpc-0001".into(),
            cidr_block: "10.0.1.0/24".into(),
            availability_zone: "hearth-1a".into(),
            available_ip_address_count: 251,
            default_for_az: true,
            map_public_ip_on_launch: false,
            state: "available".into(),
            tags: vec![],
            owner_id: "000000000000".into(),
        };
        let expected = json!({
            "AvailabilityZone": "hearth-1a",
            "AvailableIpAddressCount": 251,
            "CidrBlock": "10.0.1.0/24",
            "DefaultForAz": true,
            "MapPublicIpOnLaunch": false,
            "State": "available",
            "SubnetId": "subnet-0001",
            "VpcId": "vpc-0001",
            "OwnerId": "000000000000"
        });
        assert_eq!(create_subnet(&subnet), json!({"Subnet": expected}));
        let response = api::DescribeSubnetsResponse { subnets: vec![subnet] };
        assert_eq!(describe_subnets(&response), json!({"Subnets": [expected]}));
    }

    /// An Elastic IP associated with an instance, shared with the table tests.
    pub fn sample_address() -> api::Address {
        api::Address {
            allocation_id: "eipalloc-0001".into(),
            public_ip: "203.0.113.7".into(),
            domain: "vpc".into(),
            association_id: "eipassoc-0001".into(),
            instance_id: "i-0abc".into(),
            private_ip_address: "10.0.0.5".into(),
            tags: vec![],
            public_ipv4_pool: "hearth".into(),
        }
    }

    #[test]
    fn addresses_and_metadata_options_use_ec2_names() {
        let response = api::DescribeAddressesResponse {
            addresses: vec![sample_address()],
        };
        assert_eq!(
            describe_addresses(&response),
            json!({"Addresses": [{
                "InstanceId": "i-0abc",
                "PublicIp": "203.0.113.7",
                "AllocationId": "eipalloc-0001",
                "AssociationId": "eipassoc-0001",
                "Domain": "vpc",
                "PrivateIpAddress": "10.0.0.5",
                "PublicIpv4Pool": "hearth"
            }]})
        );
        let allocated = api::Address {
            association_id: String::new(),
            instance_id: String::new(),
            private_ip_address: String::new(),
            ..sample_address()
        };
        assert_eq!(
            allocate_address(&allocated),
            json!({"AllocationId": "eipalloc-0001", "PublicIp": "203.0.113.7", "Domain": "vpc", "PublicIpv4Pool": "hearth"})
        );
        assert_eq!(
            address(&allocated),
            json!({"PublicIp": "203.0.113.7", "AllocationId": "eipalloc-0001", "Domain": "vpc", "PublicIpv4Pool": "hearth"})
        );
        let associated = api::AssociateAddressResponse {
            association_id: "eipassoc-0001".into(),
        };
        assert_eq!(
            associate_address(&associated),
            json!({"AssociationId": "eipassoc-0001"})
        );
        let options = api::InstanceMetadataOptions {
            http_tokens: "optional".into(),
            http_endpoint: "disabled".into(),
            http_put_response_hop_limit: 1,
        };
        assert_eq!(
            modify_instance_metadata_options("i-0abc", &options),
            json!({"InstanceId": "i-0abc", "InstanceMetadataOptions": {
                "HttpTokens": "optional", "HttpEndpoint": "disabled", "HttpPutResponseHopLimit": 1, "State": "applied"
            }})
        );
    }

    #[test]
    fn json_text_is_indented_like_aws() {
        let text = to_text(&json!({"Reservations": []}));
        assert_eq!(text, "{\n    \"Reservations\": []\n}\n");
    }

    #[test]
    fn state_changes_and_attributes() {
        let changes = api::InstanceStateChanges {
            changes: vec![api::InstanceStateChange {
                instance_id: "i-1".into(),
                previous_state: Some(api::InstanceState {
                    code: 16,
                    name: "running".into(),
                }),
                current_state: Some(api::InstanceState {
                    code: 64,
                    name: "stopping".into(),
                }),
            }],
        };
        assert_eq!(
            state_changes("StoppingInstances", &changes),
            json!({"StoppingInstances": [{
                "CurrentState": {"Code": 64, "Name": "stopping"},
                "InstanceId": "i-1",
                "PreviousState": {"Code": 16, "Name": "running"}
            }]})
        );
        let attribute = api::InstanceAttribute {
            instance_id: "i-1".into(),
            attribute: "disableApiTermination".into(),
            value: "true".into(),
            block_device_mappings: vec![],
        };
        assert_eq!(
            instance_attribute(&attribute),
            json!({"InstanceId": "i-1", "DisableApiTermination": {"Value": true}})
        );
        let attribute = api::InstanceAttribute {
            attribute: "instanceType".into(),
            value: "t3.large".into(),
            ..attribute
        };
        assert_eq!(
            instance_attribute(&attribute),
            json!({"InstanceId": "i-1", "InstanceType": {"Value": "t3.large"}})
        );
    }

    #[test]
    fn image_block_devices() {
        let image = api::Image {
            image_id: "ami-1".into(),
            block_device_mappings: vec![api::BlockDeviceMapping {
                device_name: "/dev/xvda".into(),
                ebs: Some(api::EbsBlockDevice {
                    delete_on_termination: Some(true),
                    volume_size_gib: Some(8),
                    volume_type: "gp3".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            super::image(&image)["BlockDeviceMappings"],
            json!([{"DeviceName": "/dev/xvda", "Ebs": {
                "DeleteOnTermination": true, "VolumeSize": 8, "VolumeType": "gp3", "Encrypted": false
            }}])
        );
    }

    /// A gp3 volume attached to an instance, shared with the table tests.
    pub fn sample_volume() -> api::Volume {
        api::Volume {
            volume_id: "vol-0001".into(),
            size_gib: 16,
            volume_type: "gp3".into(),
            iops: 3000,
            throughput_mibps: 125,
            availability_zone: "hearth-1a".into(),
            state: "in-use".into(),
            create_time: "2026-01-02T03:04:05Z".into(),
            encrypted: true,
            kms_key_id: "key-0001".into(),
            snapshot_id: "snap-0001".into(),
            attachments: vec![api::VolumeAttachment {
                volume_id: "vol-0001".into(),
                instance_id: "i-0abc".into(),
                device: "/dev/sdf".into(),
                state: "attached".into(),
                attach_time: "2026-01-02T03:05:00Z".into(),
                delete_on_termination: false,
            }],
            tags: vec![api::Tag {
                key: "Name".into(),
                value: "data".into(),
            }],
            host_id: String::new(),
        }
    }

    /// A completed snapshot, shared with the table tests.
    pub fn sample_snapshot() -> api::Snapshot {
        api::Snapshot {
            snapshot_id: "snap-0002".into(),
            volume_id: "vol-0001".into(),
            state: "completed".into(),
            state_message: String::new(),
            start_time: "2026-01-02T04:00:00Z".into(),
            progress: "100%".into(),
            volume_size_gib: 16,
            description: "nightly".into(),
            encrypted: false,
            kms_key_id: String::new(),
            owner_id: "000000000000".into(),
            tags: vec![],
            stored_bytes: 3 << 20,
            full_snapshot_size_bytes: 5 << 20,
        }
    }

    #[test]
    fn volumes_use_ec2_names() {
        let response = api::DescribeVolumesResponse {
            volumes: vec![sample_volume()],
        };
        assert_eq!(
            describe_volumes(&response),
            json!({"Volumes": [{
                "Attachments": [{
                    "AttachTime": "2026-01-02T03:05:00Z",
                    "Device": "/dev/sdf",
                    "InstanceId": "i-0abc",
                    "State": "attached",
                    "VolumeId": "vol-0001",
                    "DeleteOnTermination": false
                }],
                "AvailabilityZone": "hearth-1a",
                "CreateTime": "2026-01-02T03:04:05Z",
                "Encrypted": true,
                "KmsKeyId": "key-0001",
                "Size": 16,
                "SnapshotId": "snap-0001",
                "State": "in-use",
                "VolumeId": "vol-0001",
                "Iops": 3000,
                "VolumeType": "gp3",
                "Throughput": 125,
                "Tags": [{"Key": "Name", "Value": "data"}]
            }]})
        );
        // A new, empty gp2 volume: no attachments, snapshot, key, throughput or tags.
        let created = api::Volume {
            volume_id: "vol-0002".into(),
            size_gib: 8,
            volume_type: "gp2".into(),
            iops: 100,
            availability_zone: "hearth-1a".into(),
            state: "creating".into(),
            create_time: "2026-01-02T03:04:05Z".into(),
            host_id: "host-1".into(),
            ..Default::default()
        };
        assert_eq!(
            volume(&created),
            json!({
                "Attachments": [],
                "AvailabilityZone": "hearth-1a",
                "CreateTime": "2026-01-02T03:04:05Z",
                "Encrypted": false,
                "Size": 8,
                "State": "creating",
                "VolumeId": "vol-0002",
                "Iops": 100,
                "VolumeType": "gp2",
                "HostId": "host-1"
            })
        );
    }

    #[test]
    fn attachment_is_printed_as_aws_does() {
        let mut attachment = sample_volume().attachments.remove(0);
        attachment.state = "attaching".into();
        attachment.delete_on_termination = true;
        assert_eq!(
            volume_attachment(&attachment),
            json!({
                "AttachTime": "2026-01-02T03:05:00Z",
                "Device": "/dev/sdf",
                "InstanceId": "i-0abc",
                "State": "attaching",
                "VolumeId": "vol-0001"
            })
        );
    }

    #[test]
    fn volume_modifications_use_ec2_names() {
        let modification = api::VolumeModification {
            volume_id: "vol-0001".into(),
            modification_state: "optimizing".into(),
            status_message: String::new(),
            target_size_gib: 32,
            target_iops: 6000,
            target_volume_type: "gp3".into(),
            target_throughput_mibps: 250,
            original_size_gib: 16,
            original_iops: 3000,
            original_volume_type: "gp3".into(),
            original_throughput_mibps: 125,
            progress: 40,
            start_time: "2026-01-02T05:00:00Z".into(),
            end_time: String::new(),
        };
        let expected = json!({
            "VolumeId": "vol-0001",
            "ModificationState": "optimizing",
            "TargetSize": 32,
            "TargetIops": 6000,
            "TargetVolumeType": "gp3",
            "TargetThroughput": 250,
            "OriginalSize": 16,
            "OriginalIops": 3000,
            "OriginalVolumeType": "gp3",
            "OriginalThroughput": 125,
            "Progress": 40,
            "StartTime": "2026-01-02T05:00:00Z"
        });
        assert_eq!(modify_volume(&modification), json!({"VolumeModification": expected}));
        let done = api::VolumeModification {
            modification_state: "completed".into(),
            progress: 100,
            end_time: "2026-01-02T05:01:00Z".into(),
            ..modification
        };
        let response = api::DescribeVolumesModificationsResponse {
            volumes_modifications: vec![done],
        };
        let value = describe_volumes_modifications(&response);
        let listed = &value["VolumesModifications"][0];
        assert_eq!(listed["ModificationState"], "completed");
        assert_eq!(listed["Progress"], 100);
        assert_eq!(listed["EndTime"], "2026-01-02T05:01:00Z");
    }

    #[test]
    fn snapshots_use_ec2_names() {
        let response = api::DescribeSnapshotsResponse {
            snapshots: vec![sample_snapshot()],
        };
        assert_eq!(
            describe_snapshots(&response),
            json!({"Snapshots": [{
                "Description": "nightly",
                "Encrypted": false,
                "OwnerId": "000000000000",
                "Progress": "100%",
                "SnapshotId": "snap-0002",
                "StartTime": "2026-01-02T04:00:00Z",
                "State": "completed",
                "VolumeId": "vol-0001",
                "VolumeSize": 16,
                "FullSnapshotSizeInBytes": 5242880,
                "StoredBytes": 3145728
            }]})
        );
        let failed = api::Snapshot {
            state: "error".into(),
            state_message: "the volume's host went away".into(),
            ..sample_snapshot()
        };
        assert_eq!(snapshot(&failed)["StateMessage"], "the volume's host went away");
        let copied = api::SnapshotId {
            snapshot_id: "snap-0003".into(),
        };
        assert_eq!(snapshot_id(&copied), json!({"SnapshotId": "snap-0003"}));
    }

    #[test]
    fn images_show_their_location_and_root_snapshot() {
        let imported = api::Image {
            image_id: "ami-1".into(),
            image_location: "/srv/images/alpine/image.json".into(),
            manifest_digest: "ab".repeat(32),
            ..Default::default()
        };
        let value = super::image(&imported);
        assert_eq!(value["ImageLocation"], "/srv/images/alpine/image.json");
        assert_eq!(value["ManifestDigest"], "ab".repeat(32));
        assert_eq!(value.get("RootSnapshotId"), None);
        assert_eq!(value["BlockDeviceMappings"], json!([]));

        // EBS-backed: the snapshot goes into the root device's mapping, made when missing.
        let ebs_backed = api::Image {
            image_id: "ami-2".into(),
            root_device_name: "/dev/xvda".into(),
            root_snapshot_id: "snap-0001".into(),
            block_device_mappings: vec![api::BlockDeviceMapping {
                device_name: "/dev/sdb".into(),
                virtual_name: "ephemeral0".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let value = super::image(&ebs_backed);
        assert_eq!(value["RootSnapshotId"], "snap-0001");
        assert_eq!(
            value["BlockDeviceMappings"],
            json!([
                {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": "snap-0001", "Encrypted": false}},
                {"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"}
            ])
        );
        // A root mapping already there keeps its settings and gains the snapshot.
        let mapped = api::Image {
            block_device_mappings: vec![api::BlockDeviceMapping {
                device_name: "/dev/xvda".into(),
                ebs: Some(api::EbsBlockDevice {
                    volume_size_gib: Some(8),
                    delete_on_termination: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..ebs_backed
        };
        assert_eq!(
            super::image(&mapped)["BlockDeviceMappings"],
            json!([{"DeviceName": "/dev/xvda", "Ebs": {
                "DeleteOnTermination": true, "SnapshotId": "snap-0001", "VolumeSize": 8, "Encrypted": false
            }}])
        );
    }
}
