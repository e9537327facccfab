//! The records hearthd keeps: instances, volumes, images, key pairs, hosts, client tokens.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Tags of a resource, by key.
pub type Tags = BTreeMap<String, String>;

/// An instance's lifecycle state, with EC2's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// 0: being placed and booted.
    Pending,
    /// 16: its VMM runs.
    Running,
    /// 32: being terminated.
    ShuttingDown,
    /// 48: gone (visible for an hour).
    Terminated,
    /// 64: being stopped.
    Stopping,
    /// 80: stopped; its volumes remain.
    Stopped,
}

impl InstanceState {
    /// Every state.
    pub const ALL: [InstanceState; 6] = [
        InstanceState::Pending,
        InstanceState::Running,
        InstanceState::ShuttingDown,
        InstanceState::Terminated,
        InstanceState::Stopping,
        InstanceState::Stopped,
    ];

    /// EC2's state code.
    pub fn code(self) -> i32 {
        match self {
            InstanceState::Pending => 0,
            InstanceState::Running => 16,
            InstanceState::ShuttingDown => 32,
            InstanceState::Terminated => 48,
            InstanceState::Stopping => 64,
            InstanceState::Stopped => 80,
        }
    }

    /// EC2's state name.
    pub fn name(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
        }
    }

    /// Whether an instance in this state holds capacity on its host.
    pub fn holds_capacity(self) -> bool {
        !matches!(self, InstanceState::Stopped | InstanceState::Terminated)
    }
}

/// What the agent should make of an instance (the desired `run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DesiredRun {
    /// A VMM should run.
    Running,
    /// No VMM should run.
    Stopped,
    /// No VMM should run and the instance's DeleteOnTermination volumes should go.
    Terminated,
}

impl DesiredRun {
    /// The name sent to agents.
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredRun::Running => "running",
            DesiredRun::Stopped => "stopped",
            DesiredRun::Terminated => "terminated",
        }
    }
}

/// What happens when the guest powers itself off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownBehavior {
    /// The instance stops (the default).
    #[default]
    Stop,
    /// The instance is terminated.
    Terminate,
}

impl ShutdownBehavior {
    /// Parses `stop` or `terminate`; empty means `stop`.
    pub fn parse(text: &str) -> Option<ShutdownBehavior> {
        match text {
            "" | "stop" => Some(ShutdownBehavior::Stop),
            "terminate" => Some(ShutdownBehavior::Terminate),
            _ => None,
        }
    }

    /// The EC2 name.
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownBehavior::Stop => "stop",
            ShutdownBehavior::Terminate => "terminate",
        }
    }
}

/// Why an instance is in its state (EC2 `StateReason`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateReason {
    /// e.g. `Client.UserInitiatedShutdown`.
    pub code: String,
    /// e.g. `Client.UserInitiatedShutdown: User initiated shutdown`.
    pub message: String,
}

impl StateReason {
    /// A reason with the code repeated at the start of the message, as EC2 writes it.
    pub fn new(code: &str, text: &str) -> StateReason {
        StateReason {
            code: code.to_string(),
            message: format!("{code}: {text}"),
        }
    }
}

/// A volume attached to an instance, as the instance lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceBlockDevice {
    /// e.g. `/dev/xvda`.
    pub device_name: String,
    /// The volume.
    pub volume_id: String,
    /// Whether terminating the instance deletes the volume.
    pub delete_on_termination: bool,
    /// When it was attached (Unix ms).
    pub attach_time_ms: i64,
}

/// What the agent last reported for an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActualSeen {
    /// The agent's phase.
    pub phase: String,
    /// The start generation of the VMM running now or last.
    pub start_generation: u64,
    /// VMMs started for that start generation.
    pub boot_count: u32,
    /// The VMM's pid.
    pub pid: i32,
}

/// An instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// `i-…`.
    pub id: String,
    /// `r-…` of its RunInstances call.
    pub reservation_id: String,
    /// `ami-…` it was launched from.
    pub image_id: String,
    /// e.g. `t3.micro`.
    pub instance_type: String,
    /// vCPUs of its type.
    pub vcpus: u32,
    /// Memory of its type.
    pub memory_mib: u64,
    /// Its availability zone (its host's).
    pub availability_zone: String,
    /// The host it is placed on.
    pub host_id: String,
    /// EC2 state.
    pub state: InstanceState,
    /// Why it is in that state.
    pub state_reason: Option<StateReason>,
    /// EC2 `StateTransitionReason`.
    pub state_transition_reason: String,
    /// Launch time (Unix ms); updated by each start, as EC2 does.
    pub launch_time_ms: i64,
    /// When it became `terminated` (Unix ms).
    pub terminated_at_ms: Option<i64>,
    /// Key pair name.
    pub key_name: String,
    /// The key pair's public key at launch (kept if the key pair is deleted, as in EC2).
    #[serde(default)]
    pub public_keys: Vec<String>,
    /// User data (raw bytes).
    pub user_data: Vec<u8>,
    /// Tags.
    pub tags: Tags,
    /// Refuse TerminateInstances.
    pub disable_api_termination: bool,
    /// What a guest power-off does.
    pub shutdown_behavior: ShutdownBehavior,
    /// Desired run state sent to the agent.
    pub desired: DesiredRun,
    /// Bumped by RunInstances (1) and each StartInstances.
    pub start_generation: u64,
    /// Bumped by RebootInstances.
    pub reboot_generation: u64,
    /// Stop without waiting for the guest.
    pub force_stop: bool,
    /// Volumes, root first.
    pub block_devices: Vec<InstanceBlockDevice>,
    /// Root device name, e.g. `/dev/xvda`.
    pub root_device_name: String,
    /// `ebs` or `instance-store`.
    pub root_device_type: String,
    /// The client token of its RunInstances call.
    pub client_token: String,
    /// Its index in the reservation.
    pub launch_index: u32,
    /// A kernel file set by ModifyInstanceAttribute (else the image's).
    pub kernel_override: Option<String>,
    /// An initrd file set by ModifyInstanceAttribute (else the image's).
    pub ramdisk_override: Option<String>,
    /// What the agent reported last.
    pub actual: ActualSeen,
    /// Its network interface (instances launched before networking existed have none).
    #[serde(default)]
    pub network: Option<InstanceNetwork>,
}

/// An instance's (primary) network interface and metadata options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceNetwork {
    /// Its VPC.
    pub vpc_id: String,
    /// Its subnet.
    pub subnet_id: String,
    /// Private IPv4 address (kept from launch to termination, as in EC2).
    pub private_ip: std::net::Ipv4Addr,
    /// MAC address.
    pub mac: String,
    /// Security group IDs.
    pub group_ids: Vec<String>,
    /// IMDS: tokens required (IMDSv1 off).
    pub http_tokens_required: bool,
    /// IMDS: endpoint enabled.
    pub http_endpoint_enabled: bool,
    /// IMDS: the token response's IP TTL.
    pub http_put_response_hop_limit: u8,
}

/// A VPC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vpc {
    /// `vpc-…`.
    pub id: String,
    /// Its CIDR.
    pub cidr: hearth_net::Ipv4Cidr,
    /// The default VPC.
    pub is_default: bool,
    /// Unique number (routing table, conntrack zone on hosts).
    pub number: u32,
    /// Tags.
    pub tags: Tags,
}

/// A subnet of a VPC, in one availability zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    /// `subnet-…`.
    pub id: String,
    /// Its VPC.
    pub vpc_id: String,
    /// Its CIDR (inside the VPC's).
    pub cidr: hearth_net::Ipv4Cidr,
    /// Its availability zone.
    pub availability_zone: String,
    /// The default VPC's subnet for the zone.
    pub default_for_az: bool,
    /// Unique number (bridge name, VXLAN VNI).
    pub number: u32,
    /// Tags.
    pub tags: Tags,
}

/// A security group: allow rules, stateful.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    /// `sg-…`.
    pub id: String,
    /// Name, unique in the VPC.
    pub name: String,
    /// Description.
    pub description: String,
    /// Its VPC.
    pub vpc_id: String,
    /// Inbound rules.
    pub ingress: Vec<GroupRule>,
    /// Outbound rules.
    pub egress: Vec<GroupRule>,
    /// Tags.
    pub tags: Tags,
}

/// One rule of a group: protocol, ports and one peer (EC2 keeps rules per peer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRule {
    /// `tcp`, `udp`, `icmp`, `-1` or a protocol number.
    pub protocol: String,
    /// First port / ICMP type (-1: all).
    pub from_port: i32,
    /// Last port / ICMP code (-1: all).
    pub to_port: i32,
    /// The peer: a CIDR or a group.
    pub peer: RulePeer,
    /// Description.
    #[serde(default)]
    pub description: String,
}

/// A rule's peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RulePeer {
    /// An IPv4 range.
    Cidr(hearth_net::Ipv4Cidr),
    /// A security group's members.
    Group(String),
}

/// An Elastic IP address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// `eipalloc-…`.
    pub allocation_id: String,
    /// The public address.
    pub public_ip: std::net::Ipv4Addr,
    /// The association, if any.
    pub association: Option<AddressAssociation>,
    /// Tags.
    pub tags: Tags,
}

/// An Elastic IP's association with an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressAssociation {
    /// `eipassoc-…`.
    pub id: String,
    /// The instance.
    pub instance_id: String,
    /// Its private address the public one maps to.
    pub private_ip: std::net::Ipv4Addr,
}

/// A network record of the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum NetRecord {
    /// A VPC.
    Vpc(Vpc),
    /// A subnet.
    Subnet(Subnet),
    /// A security group.
    SecurityGroup(SecurityGroup),
    /// An Elastic IP.
    Address(Address),
}

impl NetRecord {
    /// The record's ID.
    pub fn id(&self) -> &str {
        match self {
            NetRecord::Vpc(v) => &v.id,
            NetRecord::Subnet(s) => &s.id,
            NetRecord::SecurityGroup(g) => &g.id,
            NetRecord::Address(a) => &a.allocation_id,
        }
    }

    /// The kind, as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            NetRecord::Vpc(_) => "vpc",
            NetRecord::Subnet(_) => "subnet",
            NetRecord::SecurityGroup(_) => "security-group",
            NetRecord::Address(_) => "address",
        }
    }
}

/// A volume's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeState {
    /// Being created (restored from a snapshot).
    Creating,
    /// Not attached.
    Available,
    /// Attached to an instance.
    InUse,
    /// Being deleted.
    Deleting,
    /// Deleted.
    Deleted,
    /// Creation failed (see `status_message`).
    Error,
}

impl VolumeState {
    /// The EC2 name.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeState::Creating => "creating",
            VolumeState::Available => "available",
            VolumeState::InUse => "in-use",
            VolumeState::Deleting => "deleting",
            VolumeState::Deleted => "deleted",
            VolumeState::Error => "error",
        }
    }
}

/// A volume's attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeAttachment {
    /// The instance.
    pub instance_id: String,
    /// Its device name there.
    pub device_name: String,
    /// Whether terminating the instance deletes the volume.
    pub delete_on_termination: bool,
}

/// A volume (a raw file on its host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// `vol-…`.
    pub id: String,
    /// Size in GiB.
    pub size_gib: u64,
    /// gp3, gp2, io2, st1, sc1.
    pub volume_type: String,
    /// Provisioned IOPS, if any.
    pub iops: Option<u32>,
    /// Availability zone.
    pub availability_zone: String,
    /// The host whose disk holds the file.
    pub host_id: String,
    /// State.
    pub state: VolumeState,
    /// Attachment, while in use.
    pub attachment: Option<VolumeAttachment>,
    /// File to clone when the volume file does not exist yet ("" for a blank volume).
    pub source_path: String,
    /// Whether the file holds AES-XTS ciphertext.
    pub encrypted: bool,
    /// Created at (Unix ms).
    pub create_time_ms: i64,
    /// Tags.
    pub tags: Tags,
    /// Throughput limit (gp3), MiB/s.
    #[serde(default)]
    pub throughput_mibps: Option<u32>,
    /// The snapshot it was created from ("" = none).
    #[serde(default)]
    pub snapshot_id: String,
    /// The encryption key's id in hearthd's key directory ("" = not encrypted).
    #[serde(default)]
    pub kms_key_id: String,
    /// Why it is in `error`.
    #[serde(default)]
    pub status_message: String,
    /// The last ModifyVolume.
    #[serde(default)]
    pub modification: Option<VolumeModification>,
    /// The completed snapshot the VMM's dirty-chunk bitmap is relative to: chunks it does
    /// not mark are as in this snapshot. None = unknown (the next snapshot reads every chunk).
    #[serde(default)]
    pub dirty_base: Option<String>,
    /// When the attachment was made (Unix ms).
    #[serde(default)]
    pub attach_time_ms: i64,
}

/// A ModifyVolume request and its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeModification {
    /// modifying, optimizing, completed, failed.
    pub state: String,
    /// Free text.
    pub status_message: String,
    /// Size before, GiB.
    pub original_size_gib: u64,
    /// Type before.
    pub original_volume_type: String,
    /// IOPS before.
    pub original_iops: Option<u32>,
    /// Throughput before.
    pub original_throughput_mibps: Option<u32>,
    /// Size asked for.
    pub target_size_gib: u64,
    /// Type asked for.
    pub target_volume_type: String,
    /// IOPS asked for.
    pub target_iops: Option<u32>,
    /// Throughput asked for.
    pub target_throughput_mibps: Option<u32>,
    /// Started (Unix ms).
    pub start_time_ms: i64,
    /// Completed (Unix ms).
    pub end_time_ms: Option<i64>,
}

/// A snapshot's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotState {
    /// Being taken.
    Pending,
    /// Usable.
    Completed,
    /// Failed (see `state_message`).
    Error,
}

impl SnapshotState {
    /// The EC2 name.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Pending => "pending",
            SnapshotState::Completed => "completed",
            SnapshotState::Error => "error",
        }
    }
}

/// An EBS snapshot: its chunks and manifest live in the snapshot store; this is the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// `snap-…`.
    pub id: String,
    /// The volume it was taken from.
    pub volume_id: String,
    /// State.
    pub state: SnapshotState,
    /// Why it is in `error`.
    pub state_message: String,
    /// Started (Unix ms).
    pub start_time_ms: i64,
    /// Size of the volume, GiB.
    pub volume_size_gib: u64,
    /// Size of the volume, bytes.
    pub volume_size_bytes: u64,
    /// Free text.
    pub description: String,
    /// Whether its chunks are ciphertext.
    pub encrypted: bool,
    /// The encryption key ("" = none).
    pub kms_key_id: String,
    /// Bytes this snapshot added to the store.
    pub stored_bytes: u64,
    /// Non-zero bytes of the volume it captures.
    pub full_size_bytes: u64,
    /// Tags.
    pub tags: Tags,
}

impl Volume {
    /// The size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size_gib * GIB
    }
}

/// Bytes in a GiB.
pub const GIB: u64 = 1 << 30;

/// An image's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageState {
    /// Being created.
    Pending,
    /// Usable.
    Available,
    /// Creation failed.
    Failed,
    /// Deregistered (kept only while instances still use its files).
    Deregistered,
}

impl ImageState {
    /// The EC2 name.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageState::Pending => "pending",
            ImageState::Available => "available",
            ImageState::Failed => "failed",
            ImageState::Deregistered => "deregistered",
        }
    }
}

/// An EBS part of a block device mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EbsSpec {
    /// Delete with the instance (default true for launch mappings).
    pub delete_on_termination: Option<bool>,
    /// Size of a new volume.
    pub volume_size_gib: Option<u64>,
    /// gp3 (default), gp2, io2, st1, sc1.
    pub volume_type: String,
    /// Provisioned IOPS.
    pub iops: Option<u32>,
    /// Throughput for gp3.
    pub throughput_mibps: Option<u32>,
    /// Snapshot to restore (not supported yet).
    pub snapshot_id: String,
    /// Ask for encryption.
    pub encrypted: bool,
}

/// A block device mapping of an image or a launch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDeviceMapping {
    /// e.g. `/dev/xvdb`.
    pub device_name: String,
    /// An EBS volume.
    pub ebs: Option<EbsSpec>,
    /// `ephemeralN` for an instance-store disk.
    pub virtual_name: String,
    /// Suppress the image's mapping for this device.
    pub no_device: bool,
}

/// An image (AMI): files in hearthd's image store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// `ami-…`.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// `x86_64`.
    pub architecture: String,
    /// State.
    pub state: ImageState,
    /// Created at (Unix ms).
    pub creation_ms: i64,
    /// The kernel file.
    pub kernel_path: String,
    /// The initrd file, if any.
    pub initrd_path: Option<String>,
    /// The root disk image.
    pub root_path: String,
    /// Size of the root disk image.
    pub root_size_bytes: u64,
    /// Root device name.
    pub root_device_name: String,
    /// `ebs` or `instance-store`.
    pub root_device_type: String,
    /// Default kernel command line.
    pub command_line: String,
    /// Block device mapping (besides the root).
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    /// The instance it was created from (CreateImage).
    pub source_instance_id: Option<String>,
    /// Tags.
    pub tags: Tags,
    /// The manifest it was imported from (RegisterImage ImageLocation).
    #[serde(default)]
    pub image_location: String,
    /// SHA-256 of its manifest in the image store.
    #[serde(default)]
    pub manifest_digest: String,
    /// SHA-256 of each of its files in the image store (kernel, initrd, root).
    #[serde(default)]
    pub blob_digests: Vec<String>,
    /// EBS-backed images: the root device's snapshot.
    #[serde(default)]
    pub root_snapshot_id: String,
}

/// A key pair (the public half).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPair {
    /// Unique name.
    pub name: String,
    /// `key-…`.
    pub id: String,
    /// `ed25519` or `rsa`.
    pub key_type: String,
    /// EC2 fingerprint.
    pub fingerprint: String,
    /// OpenSSH public key line.
    pub public_key: String,
    /// Created at (Unix ms).
    pub create_time_ms: i64,
    /// Tags.
    pub tags: Tags,
}

/// A host that runs an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Stable host ID.
    pub id: String,
    /// Its availability zone.
    pub availability_zone: String,
    /// vCPUs offered to instances.
    pub vcpus: u32,
    /// Memory offered to instances.
    pub memory_mib: u64,
    /// The agent's version.
    pub agent_version: String,
    /// Revision of this host's desired state.
    pub revision: u64,
    /// The host's underlay address for VXLAN ("" = none: it only carries subnets alone).
    #[serde(default)]
    pub underlay_ip: String,
    /// Whether the host has an uplink for Elastic IPs.
    #[serde(default)]
    pub has_uplink: bool,
}

/// A RunInstances ClientToken and what it was used with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientTokenRecord {
    /// The token.
    pub token: String,
    /// The reservation it created.
    pub reservation_id: String,
    /// The call's parameters, canonical text.
    pub parameters: String,
    /// When (Unix ms).
    pub created_ms: i64,
}
