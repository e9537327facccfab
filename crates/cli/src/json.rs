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
        .s("PrivateIpAddress", &instance.private_ip_address)
        .s("PublicIpAddress", &instance.public_ip_address)
        .v("State", state(&instance.state))
        .opt("StateReason", reason)
        .v("StateTransitionReason", instance.state_transition_reason.clone())
        .s("RootDeviceName", &instance.root_device_name)
        .s("RootDeviceType", &instance.root_device_type)
        .v(
            "BlockDeviceMappings",
            list(&instance.block_device_mappings, instance_block_device),
        )
        .s("ClientToken", &instance.client_token)
        .v("CpuOptions", json!({"CoreCount": instance.vcpus, "ThreadsPerCore": 1}))
        .v("MemoryMiB", instance.memory_mib)
        .list("Tags", &instance.tags, tag)
        .done()
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
