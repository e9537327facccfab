//! The command line: `aws ec2` commands and flags, kebab-case, multi-value flags taking several values.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

/// hearth: a private EC2. Talks to hearthd's Compute API like `aws ec2`.
#[derive(Debug, Parser)]
#[command(name = "hearth", version, about)]
pub struct Cli {
    /// hearthd endpoint: unix:/path/hearthd.sock or https://host:port
    /// [default: $HEARTH_ENDPOINT, else unix:$HOME/.local/share/hearth/hearthd.sock]
    #[arg(long, global = true, value_name = "URL", help_heading = "Global options")]
    pub endpoint: Option<String>,

    /// PEM file of the CA that signed hearthd's certificate (https endpoints) [default: the system's roots]
    #[arg(long, global = true, value_name = "PATH", help_heading = "Global options")]
    pub ca_cert: Option<PathBuf>,

    /// Bearer token sent as `authorization` [default: $HEARTH_TOKEN]
    #[arg(long, global = true, value_name = "TOKEN", help_heading = "Global options")]
    pub token: Option<String>,

    /// Output format
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table, help_heading = "Global options")]
    pub output: OutputFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns with a header
    Table,
    /// The response as EC2 JSON
    Json,
    /// Tab-separated rows without a header; raw console output and key material
    Text,
}

/// `--wait` and `--wait-timeout`.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Poll until every instance (volume, snapshot) reaches the target state, printing each transition to stderr
    #[arg(long)]
    pub wait: bool,

    /// Give up waiting after this many seconds (exit 1)
    #[arg(long, value_name = "SECONDS", default_value_t = 300.0)]
    pub wait_timeout: f64,
}

/// `--dry-run`.
#[derive(Debug, Clone, Args)]
pub struct DryRun {
    /// Check permissions and parameters without making the change (fails with DryRunOperation when it would succeed)
    #[arg(long)]
    pub dry_run: bool,
}

/// `--instance-ids i-1 i-2 ...`, required.
#[derive(Debug, Clone, Args)]
pub struct InstanceIds {
    /// Instance IDs
    #[arg(long, required = true, num_args = 1.., value_name = "ID")]
    pub instance_ids: Vec<String>,
}

/// `--filters Name=...,Values=... ...`.
#[derive(Debug, Clone, Args)]
pub struct Filters {
    /// Filters: Name=instance-state-name,Values=running,stopped (shorthand or JSON; several allowed)
    #[arg(long, num_args = 1.., value_name = "FILTER")]
    pub filters: Vec<String>,
}

/// The commands, named as in `aws ec2`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Launch instances from an image
    RunInstances(RunInstances),
    /// Describe instances (all, or by ID, or by filters)
    DescribeInstances {
        /// Instance IDs
        #[arg(long, num_args = 1.., value_name = "ID")]
        instance_ids: Vec<String>,
        #[command(flatten)]
        filters: Filters,
        /// Page size (5..1000)
        #[arg(long, value_name = "N")]
        max_results: Option<i32>,
        /// Token of the page to fetch, from a previous NextToken
        #[arg(long, value_name = "TOKEN")]
        next_token: Option<String>,
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Describe the status (system and instance checks) of instances
    DescribeInstanceStatus {
        /// Instance IDs
        #[arg(long, num_args = 1.., value_name = "ID")]
        instance_ids: Vec<String>,
        #[command(flatten)]
        filters: Filters,
        /// Include instances that are not running
        #[arg(long)]
        include_all_instances: bool,
        /// Page size
        #[arg(long, value_name = "N")]
        max_results: Option<i32>,
        /// Token of the page to fetch
        #[arg(long, value_name = "TOKEN")]
        next_token: Option<String>,
    },
    /// Start stopped instances
    StartInstances {
        #[command(flatten)]
        ids: InstanceIds,
        #[command(flatten)]
        dry_run: DryRun,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop running instances (power button, then forced after a timeout)
    StopInstances {
        #[command(flatten)]
        ids: InstanceIds,
        /// Stop at once, without a graceful shutdown
        #[arg(long)]
        force: bool,
        /// Hibernate instead of stopping
        #[arg(long)]
        hibernate: bool,
        #[command(flatten)]
        dry_run: DryRun,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Reboot instances
    RebootInstances {
        #[command(flatten)]
        ids: InstanceIds,
        #[command(flatten)]
        dry_run: DryRun,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Terminate instances
    TerminateInstances {
        #[command(flatten)]
        ids: InstanceIds,
        #[command(flatten)]
        dry_run: DryRun,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Change one attribute of an instance
    ModifyInstanceAttribute(ModifyInstanceAttribute),
    /// Show one attribute of an instance
    DescribeInstanceAttribute {
        /// Instance ID
        #[arg(long, value_name = "ID")]
        instance_id: String,
        /// Attribute
        #[arg(long, value_enum)]
        attribute: InstanceAttributeName,
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Show an instance's serial console output
    GetConsoleOutput {
        /// Instance ID
        #[arg(long, value_name = "ID")]
        instance_id: String,
        /// Only the most recent output
        #[arg(long)]
        latest: bool,
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Describe the instance types
    DescribeInstanceTypes {
        /// Instance types
        #[arg(long, num_args = 1.., value_name = "TYPE")]
        instance_types: Vec<String>,
        #[command(flatten)]
        filters: Filters,
    },
    /// Register an image from an image.json manifest, or from a kernel and a root disk image or snapshot
    RegisterImage(RegisterImage),
    /// Describe images
    DescribeImages {
        /// Image IDs
        #[arg(long, num_args = 1.., value_name = "ID")]
        image_ids: Vec<String>,
        #[command(flatten)]
        filters: Filters,
    },
    /// Deregister an image
    DeregisterImage {
        /// Image ID
        #[arg(long, value_name = "ID")]
        image_id: String,
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Create an image from an instance
    CreateImage {
        /// Instance ID
        #[arg(long, value_name = "ID")]
        instance_id: String,
        /// Image name
        #[arg(long)]
        name: String,
        /// Image description
        #[arg(long)]
        description: Option<String>,
        /// Do not stop the instance first (the image is crash-consistent)
        #[arg(long)]
        no_reboot: bool,
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Create a key pair and print its private key (shown only once)
    CreateKeyPair {
        /// Key pair name
        #[arg(long, value_name = "NAME")]
        key_name: String,
        /// Key type
        #[arg(long, value_enum)]
        key_type: Option<KeyType>,
        /// Write the private key to this file (mode 0600) instead of printing it
        #[arg(long, value_name = "PATH")]
        save: Option<PathBuf>,
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Import an OpenSSH public key as a key pair
    ImportKeyPair {
        /// Key pair name
        #[arg(long, value_name = "NAME")]
        key_name: String,
        /// The public key line, or file://PATH
        #[arg(long, value_name = "KEY")]
        public_key_material: String,
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Describe key pairs
    DescribeKeyPairs {
        /// Key pair names
        #[arg(long, num_args = 1.., value_name = "NAME")]
        key_names: Vec<String>,
        #[command(flatten)]
        filters: Filters,
    },
    /// Delete a key pair
    DeleteKeyPair {
        /// Key pair name
        #[arg(long, value_name = "NAME")]
        key_name: String,
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Add or overwrite tags on resources
    CreateTags {
        /// Resource IDs
        #[arg(long, required = true, num_args = 1.., value_name = "ID")]
        resources: Vec<String>,
        /// Tags: Key=Name,Value=web (several allowed)
        #[arg(long, required = true, num_args = 1.., value_name = "TAG")]
        tags: Vec<String>,
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Delete tags from resources (Key=k deletes k whatever its value; no --tags deletes all)
    DeleteTags {
        /// Resource IDs
        #[arg(long, required = true, num_args = 1.., value_name = "ID")]
        resources: Vec<String>,
        /// Tags: Key=Name[,Value=web] (several allowed)
        #[arg(long, num_args = 1.., value_name = "TAG")]
        tags: Vec<String>,
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Describe tags (filters: resource-id, resource-type, key, value)
    DescribeTags {
        #[command(flatten)]
        filters: Filters,
        /// Page size
        #[arg(long, value_name = "N")]
        max_results: Option<i32>,
        /// Token of the page to fetch
        #[arg(long, value_name = "TOKEN")]
        next_token: Option<String>,
    },
    /// Create an EBS volume (empty, or from a snapshot)
    CreateVolume(CreateVolume),
    /// Describe volumes
    DescribeVolumes {
        /// Volume IDs
        #[arg(long, num_args = 1.., value_name = "ID")]
        volume_ids: Vec<String>,
        #[command(flatten)]
        filters: Filters,
    },
    /// Attach a volume to an instance as a device
    AttachVolume {
        /// Volume ID
        #[arg(long, value_name = "ID")]
        volume_id: String,
        /// Instance ID
        #[arg(long, value_name = "ID")]
        instance_id: String,
        /// Device name, e.g. /dev/sdf
        #[arg(long, value_name = "DEVICE")]
        device: String,
        #[command(flatten)]
        dry_run: DryRun,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Detach a volume from its instance
    DetachVolume {
        /// Volume ID
        #[arg(long, value_name = "ID")]
        volume_id: String,
        /// Only if attached to this instance
        #[arg(long, value_name = "ID")]
        instance_id: Option<String>,
        /// Only if attached as this device
        #[arg(long, value_name = "DEVICE")]
        device: Option<String>,
        /// Detach without waiting for the guest to release the device (data may be lost)
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        dry_run: DryRun,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete an available volume
    DeleteVolume {
        /// Volume ID
        #[arg(long, value_name = "ID")]
        volume_id: String,
        #[command(flatten)]
        dry_run: DryRun,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Change a volume's size, type, IOPS or throughput
    ModifyVolume(ModifyVolume),
    /// Describe the modifications of volumes
    DescribeVolumesModifications {
        /// Volume IDs
        #[arg(long, num_args = 1.., value_name = "ID")]
        volume_ids: Vec<String>,
        #[command(flatten)]
        filters: Filters,
    },
    /// Take a snapshot of a volume
    CreateSnapshot {
        /// Volume ID
        #[arg(long, value_name = "ID")]
        volume_id: String,
        /// Description
        #[arg(long)]
        description: Option<String>,
        /// Tags for the snapshot: 'ResourceType=snapshot,Tags=[{Key=Name,Value=nightly}]'
        #[arg(long, num_args = 1.., value_name = "SPEC")]
        tag_specifications: Vec<String>,
        #[command(flatten)]
        dry_run: DryRun,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Describe snapshots
    DescribeSnapshots {
        /// Snapshot IDs
        #[arg(long, num_args = 1.., value_name = "ID")]
        snapshot_ids: Vec<String>,
        /// Owners: self, or owner IDs
        #[arg(long, num_args = 1.., value_name = "OWNER")]
        owner_ids: Vec<String>,
        #[command(flatten)]
        filters: Filters,
    },
    /// Delete a snapshot
    DeleteSnapshot {
        /// Snapshot ID
        #[arg(long, value_name = "ID")]
        snapshot_id: String,
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Copy a snapshot (within this region)
    CopySnapshot(CopySnapshot),
    /// Create a VPC
    CreateVpc {
        /// The VPC's IPv4 range, /16 to /28 (e.g. 10.0.0.0/16)
        #[arg(long, value_name = "CIDR")]
        cidr_block: String,
        /// Tags for the VPC: 'ResourceType=vpc,Tags=[{Key=Name,Value=prod}]'
        #[arg(long, num_args = 1.., value_name = "SPEC")]
        tag_specifications: Vec<String>,
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Describe VPCs (filters: vpc-id, cidr, cidr-block, is-default, state, tag:KEY, tag-key)
    DescribeVpcs {
        /// VPC IDs
        #[arg(long, num_args = 1.., value_name = "ID")]
        vpc_ids: Vec<String>,
        #[command(flatten)]
        filters: Filters,
    },
    /// Delete a VPC (its subnets and non-default security groups first)
    DeleteVpc {
        /// VPC ID
        #[arg(long, value_name = "ID")]
        vpc_id: String,
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Create a subnet in a VPC
    CreateSubnet {
        /// VPC ID
        #[arg(long, value_name = "ID")]
        vpc_id: String,
        /// The subnet's IPv4 range, inside the VPC's (e.g. 10.0.1.0/24)
        #[arg(long, value_name = "CIDR")]
        cidr_block: String,
        /// Availability zone [default: the first zone]
        #[arg(long, value_name = "ZONE")]
        availability_zone: Option<String>,
        /// Tags for the subnet: 'ResourceType=subnet,Tags=[{Key=Name,Value=private}]'
        #[arg(long, num_args = 1.., value_name = "SPEC")]
        tag_specifications: Vec<String>,
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Describe subnets (filters: subnet-id, vpc-id, availability-zone, cidr-block, default-for-az, state, tag:KEY)
    DescribeSubnets {
        /// Subnet IDs
        #[arg(long, num_args = 1.., value_name = "ID")]
        subnet_ids: Vec<String>,
        #[command(flatten)]
        filters: Filters,
    },
    /// Delete a subnet without instances
    DeleteSubnet {
        /// Subnet ID
        #[arg(long, value_name = "ID")]
        subnet_id: String,
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Create a security group (no inbound rules, all outbound allowed)
    CreateSecurityGroup {
        /// Group name (unique in the VPC)
        #[arg(long, value_name = "NAME")]
        group_name: String,
        /// Description
        #[arg(long)]
        description: String,
        /// VPC ID [default: the default VPC]
        #[arg(long, value_name = "ID")]
        vpc_id: Option<String>,
        /// Tags for the group: 'ResourceType=security-group,Tags=[{Key=Name,Value=web}]'
        #[arg(long, num_args = 1.., value_name = "SPEC")]
        tag_specifications: Vec<String>,
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Describe security groups and their rules (filters: group-id, group-name, vpc-id, description, tag:KEY)
    DescribeSecurityGroups {
        /// Group IDs
        #[arg(long, num_args = 1.., value_name = "ID")]
        group_ids: Vec<String>,
        /// Group names (in the default VPC)
        #[arg(long, num_args = 1.., value_name = "NAME")]
        group_names: Vec<String>,
        #[command(flatten)]
        filters: Filters,
    },
    /// Delete a security group (not a VPC's default group, nor one that instances or other groups' rules use)
    #[command(group(ArgGroup::new("group").required(true).args(["group_id", "group_name"])))]
    DeleteSecurityGroup {
        /// Group ID
        #[arg(long, value_name = "ID")]
        group_id: Option<String>,
        /// Group name (in the default VPC)
        #[arg(long, value_name = "NAME")]
        group_name: Option<String>,
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Add inbound rules to a security group
    AuthorizeSecurityGroupIngress(SecurityGroupRules),
    /// Add outbound rules to a security group
    AuthorizeSecurityGroupEgress(SecurityGroupRules),
    /// Remove inbound rules from a security group
    RevokeSecurityGroupIngress(SecurityGroupRules),
    /// Remove outbound rules from a security group
    RevokeSecurityGroupEgress(SecurityGroupRules),
    /// Allocate an Elastic IP address
    AllocateAddress {
        /// Domain [default: vpc]
        #[arg(long, value_name = "DOMAIN", value_parser = ["vpc"])]
        domain: Option<String>,
        /// A specific address of the pool
        #[arg(long, value_name = "IP")]
        address: Option<String>,
        /// Tags for the address: 'ResourceType=elastic-ip,Tags=[{Key=Name,Value=web}]'
        #[arg(long, num_args = 1.., value_name = "SPEC")]
        tag_specifications: Vec<String>,
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Associate an Elastic IP address with an instance
    AssociateAddress(AssociateAddress),
    /// Disassociate an Elastic IP address from its instance
    #[command(group(ArgGroup::new("address").required(true).args(["association_id", "public_ip"])))]
    DisassociateAddress {
        /// Association ID
        #[arg(long, value_name = "ID")]
        association_id: Option<String>,
        /// The Elastic IP address
        #[arg(long, value_name = "IP")]
        public_ip: Option<String>,
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Release an Elastic IP address (disassociate it first)
    #[command(group(ArgGroup::new("address").required(true).args(["allocation_id", "public_ip"])))]
    ReleaseAddress {
        /// Allocation ID
        #[arg(long, value_name = "ID")]
        allocation_id: Option<String>,
        /// The Elastic IP address
        #[arg(long, value_name = "IP")]
        public_ip: Option<String>,
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Describe Elastic IP addresses (filters: allocation-id, association-id, instance-id, public-ip,
    /// private-ip-address, domain, tag:KEY)
    DescribeAddresses {
        /// Allocation IDs
        #[arg(long, num_args = 1.., value_name = "ID")]
        allocation_ids: Vec<String>,
        /// Elastic IP addresses
        #[arg(long, num_args = 1.., value_name = "IP")]
        public_ips: Vec<String>,
        #[command(flatten)]
        filters: Filters,
    },
    /// Change an instance's metadata service (169.254.169.254) options
    ModifyInstanceMetadataOptions(ModifyInstanceMetadataOptions),
    /// Describe the region (one hearthd is one region)
    DescribeRegions,
    /// Describe the availability zones (groups of hosts)
    DescribeAvailabilityZones {
        /// Zone names
        #[arg(long, num_args = 1.., value_name = "ZONE")]
        zone_names: Vec<String>,
    },
}

/// `run-instances`.
#[derive(Debug, Args)]
pub struct RunInstances {
    /// Image ID
    #[arg(long, value_name = "ID")]
    pub image_id: String,
    /// Instance type [default: t3.micro]
    #[arg(long, value_name = "TYPE")]
    pub instance_type: Option<String>,
    /// Number of instances: N, or MIN:MAX
    #[arg(long, value_name = "N", conflicts_with_all = ["min_count", "max_count"])]
    pub count: Option<String>,
    /// Launch at least this many instances, or none
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub min_count: Option<i32>,
    /// Launch at most this many instances
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub max_count: Option<i32>,
    /// Key pair name
    #[arg(long, value_name = "NAME")]
    pub key_name: Option<String>,
    /// User data: text, or file://PATH
    #[arg(long, value_name = "DATA")]
    pub user_data: Option<String>,
    /// Block device mappings: JSON like aws, or DeviceName=/dev/xvda,Ebs={VolumeSize=8,DeleteOnTermination=false}
    #[arg(long, num_args = 1.., value_name = "MAPPING")]
    pub block_device_mappings: Vec<String>,
    /// Tags for the new resources: 'ResourceType=instance,Tags=[{Key=Name,Value=web}]'
    #[arg(long, num_args = 1.., value_name = "SPEC")]
    pub tag_specifications: Vec<String>,
    /// Idempotency token: repeating the call with it returns the same reservation
    #[arg(long, value_name = "TOKEN")]
    pub client_token: Option<String>,
    #[command(flatten)]
    pub dry_run: DryRun,
    /// Refuse TerminateInstances until the flag is cleared
    #[arg(long, conflicts_with = "no_disable_api_termination")]
    pub disable_api_termination: bool,
    /// Allow TerminateInstances (the default)
    #[arg(long)]
    pub no_disable_api_termination: bool,
    /// What a shutdown from inside the guest does
    #[arg(long, value_enum, value_name = "BEHAVIOR")]
    pub instance_initiated_shutdown_behavior: Option<ShutdownBehavior>,
    /// Placement: AvailabilityZone=ZONE
    #[arg(long, value_name = "PLACEMENT")]
    pub placement: Option<String>,
    /// Subnet to launch into [default: the default VPC's subnet of the zone]
    #[arg(long, value_name = "ID")]
    pub subnet_id: Option<String>,
    /// Security group IDs [default: the VPC's default group]
    #[arg(long, num_args = 1.., value_name = "ID")]
    pub security_group_ids: Vec<String>,
    /// Security group names (default VPC), instead of IDs
    #[arg(long, num_args = 1.., value_name = "NAME")]
    pub security_groups: Vec<String>,
    /// Primary private IPv4 address, in the subnet [default: the lowest free one]
    #[arg(long, value_name = "IP")]
    pub private_ip_address: Option<String>,
    /// Metadata service options: HttpTokens=required,HttpEndpoint=enabled,HttpPutResponseHopLimit=2 (or JSON)
    #[arg(long, value_name = "OPTIONS")]
    pub metadata_options: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `authorize-security-group-ingress` and its three siblings: the group, and the rules as `--ip-permissions`
/// or as aws's shortcut flags (`--protocol`, `--port`, `--cidr`, `--source-group`).
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("group").required(true).args(["group_id", "group_name"])))]
#[command(group(ArgGroup::new("rules").required(true).args(["ip_permissions", "protocol"])))]
pub struct SecurityGroupRules {
    /// Group ID
    #[arg(long, value_name = "ID")]
    pub group_id: Option<String>,
    /// Group name (in the default VPC)
    #[arg(long, value_name = "NAME")]
    pub group_name: Option<String>,
    /// Rules, shorthand or JSON (several allowed):
    /// IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=10.0.0.0/8,Description=ssh}],UserIdGroupPairs=[{GroupId=sg-1}]
    #[arg(long, num_args = 1.., value_name = "PERMISSION")]
    pub ip_permissions: Vec<String>,
    /// Shortcut for one rule: tcp, udp, icmp, all (-1) or a protocol number
    #[arg(long, value_name = "PROTOCOL", allow_negative_numbers = true)]
    pub protocol: Option<String>,
    /// With --protocol: a port (22), a range (1000-2000) or -1 for all; for icmp, the type (8, or 8-0 for
    /// type 8 code 0)
    #[arg(
        long,
        value_name = "PORTS",
        allow_negative_numbers = true,
        requires = "protocol",
        conflicts_with = "ip_permissions"
    )]
    pub port: Option<String>,
    /// With --protocol: the IPv4 range the rule allows (from for ingress, to for egress)
    #[arg(long, value_name = "CIDR", requires = "protocol", conflicts_with = "ip_permissions")]
    pub cidr: Option<String>,
    /// With --protocol: the security group (sg-...) the rule allows
    #[arg(long, value_name = "ID", requires = "protocol", conflicts_with = "ip_permissions")]
    pub source_group: Option<String>,
    /// With --source-group: the group's owner (account ID)
    #[arg(long, value_name = "ACCOUNT", requires = "source_group")]
    pub group_owner: Option<String>,
    #[command(flatten)]
    pub dry_run: DryRun,
}

/// `associate-address`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("address").required(true).args(["allocation_id", "public_ip"])))]
pub struct AssociateAddress {
    /// Allocation ID of the Elastic IP
    #[arg(long, value_name = "ID")]
    pub allocation_id: Option<String>,
    /// The Elastic IP address (instead of --allocation-id)
    #[arg(long, value_name = "IP")]
    pub public_ip: Option<String>,
    /// Instance ID
    #[arg(long, value_name = "ID")]
    pub instance_id: String,
    /// Move the address even if it is associated with another instance
    #[arg(long, conflicts_with = "no_allow_reassociation")]
    pub allow_reassociation: bool,
    /// Fail if the address is associated already (the default)
    #[arg(long)]
    pub no_allow_reassociation: bool,
    /// The instance's private address to map to [default: its primary]
    #[arg(long, value_name = "IP")]
    pub private_ip_address: Option<String>,
    #[command(flatten)]
    pub dry_run: DryRun,
}

/// `modify-instance-metadata-options`.
#[derive(Debug, Args)]
pub struct ModifyInstanceMetadataOptions {
    /// Instance ID
    #[arg(long, value_name = "ID")]
    pub instance_id: String,
    /// required: IMDSv2 (session tokens) only; optional: v1 and v2
    #[arg(long, value_enum, value_name = "TOKENS")]
    pub http_tokens: Option<HttpTokens>,
    /// Whether the metadata service answers at all
    #[arg(long, value_enum, value_name = "STATE")]
    pub http_endpoint: Option<HttpEndpoint>,
    /// Hops (1..64) a token response (PUT) may travel
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=64))]
    pub http_put_response_hop_limit: Option<i32>,
    #[command(flatten)]
    pub dry_run: DryRun,
}

/// `modify-instance-attribute`.
#[derive(Debug, Args)]
pub struct ModifyInstanceAttribute {
    /// Instance ID
    #[arg(long, value_name = "ID")]
    pub instance_id: String,
    /// Refuse TerminateInstances
    #[arg(long, conflicts_with = "no_disable_api_termination")]
    pub disable_api_termination: bool,
    /// Allow TerminateInstances
    #[arg(long)]
    pub no_disable_api_termination: bool,
    /// stop | terminate (also Value=...)
    #[arg(long, value_name = "BEHAVIOR")]
    pub instance_initiated_shutdown_behavior: Option<String>,
    /// New instance type, while stopped (also Value=...)
    #[arg(long, value_name = "TYPE")]
    pub instance_type: Option<String>,
    /// New user data, while stopped: text or file://PATH (also Value=...)
    #[arg(long, value_name = "DATA")]
    pub user_data: Option<String>,
    /// While stopped, boot the kernel of this registered image (an image ID; "" = the instance's own)
    #[arg(long, value_name = "IMAGE_ID")]
    pub kernel: Option<String>,
    /// While stopped, boot the initrd of this registered image (an image ID; "" = the instance's own)
    #[arg(long, value_name = "IMAGE_ID")]
    pub ramdisk: Option<String>,
    /// Replace the instance's security groups (IDs; alone, not with other attributes)
    #[arg(long, num_args = 1.., value_name = "ID")]
    pub groups: Vec<String>,
    /// aws's generic form: the attribute to change (with --value)
    #[arg(long, value_enum, requires = "value")]
    pub attribute: Option<InstanceAttributeName>,
    /// aws's generic form: the new value (with --attribute)
    #[arg(long, requires = "attribute")]
    pub value: Option<String>,
    #[command(flatten)]
    pub dry_run: DryRun,
}

/// `register-image`.
#[derive(Debug, Args)]
pub struct RegisterImage {
    /// Image name [default with --image-location: the manifest's]
    #[arg(long, required_unless_present = "image_location")]
    pub name: Option<String>,
    /// An image directory's manifest (image.json) in hearthd's image import directory (relative to it, or
    /// absolute inside it; no symlinks, no ..), imported with its checksums verified
    #[arg(long, value_name = "PATH", conflicts_with_all = ["kernel", "initrd", "root_image", "root_snapshot_id", "kernel_id", "ramdisk_id"])]
    pub image_location: Option<PathBuf>,
    /// Kernel (bzImage or ELF vmlinux) in hearthd's image import directory
    #[arg(long, value_name = "PATH", conflicts_with = "kernel_id")]
    pub kernel: Option<PathBuf>,
    /// Initrd in hearthd's image import directory
    #[arg(long, value_name = "PATH", conflicts_with = "ramdisk_id")]
    pub initrd: Option<PathBuf>,
    /// Raw root disk image in hearthd's image import directory
    #[arg(long, value_name = "PATH", conflicts_with = "root_snapshot_id")]
    pub root_image: Option<PathBuf>,
    /// The kernel of this registered image (an image ID) instead of --kernel
    #[arg(long, value_name = "IMAGE_ID")]
    pub kernel_id: Option<String>,
    /// The initrd of this registered image (an image ID) instead of --initrd
    #[arg(long, value_name = "IMAGE_ID")]
    pub ramdisk_id: Option<String>,
    /// EBS-backed image: the snapshot of its root device (with --kernel or --kernel-id)
    #[arg(long, value_name = "ID")]
    pub root_snapshot_id: Option<String>,
    /// Default kernel command line
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub command_line: Option<String>,
    /// Root device type
    #[arg(long, value_enum)]
    pub root_device_type: Option<RootDeviceType>,
    /// Root device name [default: /dev/xvda]
    #[arg(long, value_name = "DEVICE")]
    pub root_device_name: Option<String>,
    /// Description
    #[arg(long)]
    pub description: Option<String>,
    /// Architecture [default: x86_64]
    #[arg(long)]
    pub architecture: Option<String>,
    /// Block device mappings (as for run-instances; Ebs={SnapshotId=snap-...} on the root device makes an
    /// EBS-backed image)
    #[arg(long, num_args = 1.., value_name = "MAPPING")]
    pub block_device_mappings: Vec<String>,
    #[command(flatten)]
    pub dry_run: DryRun,
}

/// `create-volume`.
#[derive(Debug, Args)]
pub struct CreateVolume {
    /// Availability zone of the new volume
    #[arg(long, value_name = "ZONE")]
    pub availability_zone: String,
    /// Size in GiB [default with --snapshot-id: the snapshot's]
    #[arg(long, value_name = "GIB", value_parser = clap::value_parser!(i64).range(1..))]
    pub size: Option<i64>,
    /// Volume type [default: gp3]
    #[arg(long, value_enum, value_name = "TYPE")]
    pub volume_type: Option<VolumeType>,
    /// Provisioned IOPS (gp3: 3000..16000, io1/io2: 100..64000)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub iops: Option<i32>,
    /// Throughput in MiB/s (gp3: 125..1000)
    #[arg(long, value_name = "MIBPS", value_parser = clap::value_parser!(i32).range(1..))]
    pub throughput: Option<i32>,
    /// Encrypt the volume
    #[arg(long, conflicts_with = "no_encrypted")]
    pub encrypted: bool,
    /// Do not encrypt the volume (the default)
    #[arg(long)]
    pub no_encrypted: bool,
    /// Encryption key ID [default with --encrypted: a new key]
    #[arg(long, value_name = "KEY")]
    pub kms_key_id: Option<String>,
    /// Snapshot to create the volume from
    #[arg(long, value_name = "ID")]
    pub snapshot_id: Option<String>,
    /// Tags for the volume: 'ResourceType=volume,Tags=[{Key=Name,Value=data}]'
    #[arg(long, num_args = 1.., value_name = "SPEC")]
    pub tag_specifications: Vec<String>,
    /// Idempotency token: repeating the call with it returns the same volume
    #[arg(long, value_name = "TOKEN")]
    pub client_token: Option<String>,
    #[command(flatten)]
    pub dry_run: DryRun,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `modify-volume`.
#[derive(Debug, Args)]
pub struct ModifyVolume {
    /// Volume ID
    #[arg(long, value_name = "ID")]
    pub volume_id: String,
    /// New size in GiB (only larger)
    #[arg(long, value_name = "GIB", value_parser = clap::value_parser!(i64).range(1..))]
    pub size: Option<i64>,
    /// New volume type
    #[arg(long, value_enum, value_name = "TYPE")]
    pub volume_type: Option<VolumeType>,
    /// New provisioned IOPS
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub iops: Option<i32>,
    /// New throughput in MiB/s
    #[arg(long, value_name = "MIBPS", value_parser = clap::value_parser!(i32).range(1..))]
    pub throughput: Option<i32>,
    #[command(flatten)]
    pub dry_run: DryRun,
}

/// `copy-snapshot`.
#[derive(Debug, Args)]
pub struct CopySnapshot {
    /// The snapshot to copy
    #[arg(long, value_name = "ID")]
    pub source_snapshot_id: String,
    /// The source snapshot's region (must be this one)
    #[arg(long, value_name = "REGION")]
    pub source_region: Option<String>,
    /// Description of the copy
    #[arg(long)]
    pub description: Option<String>,
    /// Encrypt the copy
    #[arg(long)]
    pub encrypted: bool,
    /// Encryption key ID of the copy
    #[arg(long, value_name = "KEY")]
    pub kms_key_id: Option<String>,
    /// Tags for the copy: 'ResourceType=snapshot,Tags=[{Key=Name,Value=copy}]'
    #[arg(long, num_args = 1.., value_name = "SPEC")]
    pub tag_specifications: Vec<String>,
    #[command(flatten)]
    pub dry_run: DryRun,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `--instance-initiated-shutdown-behavior`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShutdownBehavior {
    Stop,
    Terminate,
}

impl ShutdownBehavior {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownBehavior::Stop => "stop",
            ShutdownBehavior::Terminate => "terminate",
        }
    }
}

/// `--key-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyType {
    Ed25519,
    Rsa,
}

impl KeyType {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::Rsa => "rsa",
        }
    }
}

/// `--root-device-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RootDeviceType {
    Ebs,
    InstanceStore,
}

impl RootDeviceType {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RootDeviceType::Ebs => "ebs",
            RootDeviceType::InstanceStore => "instance-store",
        }
    }
}

/// `--volume-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VolumeType {
    Gp3,
    Gp2,
    Io1,
    Io2,
    St1,
    Sc1,
    Standard,
}

impl VolumeType {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeType::Gp3 => "gp3",
            VolumeType::Gp2 => "gp2",
            VolumeType::Io1 => "io1",
            VolumeType::Io2 => "io2",
            VolumeType::St1 => "st1",
            VolumeType::Sc1 => "sc1",
            VolumeType::Standard => "standard",
        }
    }
}

/// `--http-tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HttpTokens {
    Optional,
    Required,
}

impl HttpTokens {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpTokens::Optional => "optional",
            HttpTokens::Required => "required",
        }
    }
}

/// `--http-endpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HttpEndpoint {
    Enabled,
    Disabled,
}

impl HttpEndpoint {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpEndpoint::Enabled => "enabled",
            HttpEndpoint::Disabled => "disabled",
        }
    }
}

/// The attributes of DescribeInstanceAttribute, spelled as in EC2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "camelCase")]
pub enum InstanceAttributeName {
    DisableApiTermination,
    InstanceInitiatedShutdownBehavior,
    InstanceType,
    UserData,
    Kernel,
    Ramdisk,
    RootDeviceName,
    BlockDeviceMapping,
}

impl InstanceAttributeName {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceAttributeName::DisableApiTermination => "disableApiTermination",
            InstanceAttributeName::InstanceInitiatedShutdownBehavior => "instanceInitiatedShutdownBehavior",
            InstanceAttributeName::InstanceType => "instanceType",
            InstanceAttributeName::UserData => "userData",
            InstanceAttributeName::Kernel => "kernel",
            InstanceAttributeName::Ramdisk => "ramdisk",
            InstanceAttributeName::RootDeviceName => "rootDeviceName",
            InstanceAttributeName::BlockDeviceMapping => "blockDeviceMapping",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hearth").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn multi_value_flags_take_several_values() {
        let cli = parse(&["terminate-instances", "--instance-ids", "i-1", "i-2", "--wait"]).unwrap();
        match cli.command {
            Command::TerminateInstances { ids, wait, .. } => {
                assert_eq!(ids.instance_ids, ["i-1", "i-2"]);
                assert!(wait.wait);
                assert_eq!(wait.wait_timeout, 300.0);
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&[
            "describe-instances",
            "--filters",
            "Name=instance-state-name,Values=running,stopped",
            "Name=tag:Name,Values=web",
        ])
        .unwrap();
        match cli.command {
            Command::DescribeInstances { filters, .. } => assert_eq!(filters.filters.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        let cli = parse(&["--output", "json", "describe-regions"]).unwrap();
        assert_eq!(cli.output, OutputFormat::Json);
        let cli = parse(&["describe-regions", "--output", "text", "--endpoint", "unix:/s"]).unwrap();
        assert_eq!(cli.output, OutputFormat::Text);
        assert_eq!(cli.endpoint.as_deref(), Some("unix:/s"));
    }

    #[test]
    fn usage_errors() {
        let exit = |args: &[&str]| parse(args).unwrap_err().exit_code();
        assert_eq!(exit(&["run-instances"]), 2);
        assert_eq!(
            exit(&[
                "run-instances",
                "--image-id",
                "ami-1",
                "--count",
                "2",
                "--min-count",
                "1"
            ]),
            2
        );
        assert_eq!(exit(&["start-instances"]), 2);
        assert_eq!(
            exit(&[
                "describe-instance-attribute",
                "--instance-id",
                "i-1",
                "--attribute",
                "colour"
            ]),
            2
        );
        assert_eq!(
            exit(&[
                "modify-instance-attribute",
                "--instance-id",
                "i-1",
                "--attribute",
                "instanceType"
            ]),
            2
        );
        assert_eq!(exit(&["no-such-command"]), 2);
    }

    #[test]
    fn ebs_commands_parse_like_aws() {
        let cli = parse(&[
            "detach-volume",
            "--volume-id",
            "vol-1",
            "--instance-id",
            "i-1",
            "--force",
            "--wait",
        ])
        .unwrap();
        match cli.command {
            Command::DetachVolume {
                volume_id,
                instance_id,
                device,
                force,
                wait,
                ..
            } => {
                assert_eq!(volume_id, "vol-1");
                assert_eq!(instance_id.as_deref(), Some("i-1"));
                assert_eq!(device, None);
                assert!(force && wait.wait);
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&[
            "describe-snapshots",
            "--owner-ids",
            "self",
            "--snapshot-ids",
            "snap-1",
            "snap-2",
        ])
        .unwrap();
        match cli.command {
            Command::DescribeSnapshots {
                snapshot_ids,
                owner_ids,
                ..
            } => {
                assert_eq!(snapshot_ids, ["snap-1", "snap-2"]);
                assert_eq!(owner_ids, ["self"]);
            }
            other => panic!("{other:?}"),
        }
        for (name, volume_type) in [
            ("gp3", VolumeType::Gp3),
            ("gp2", VolumeType::Gp2),
            ("io1", VolumeType::Io1),
            ("io2", VolumeType::Io2),
            ("st1", VolumeType::St1),
            ("sc1", VolumeType::Sc1),
            ("standard", VolumeType::Standard),
        ] {
            let cli = parse(&["modify-volume", "--volume-id", "vol-1", "--volume-type", name]).unwrap();
            match cli.command {
                Command::ModifyVolume(args) => {
                    assert_eq!(args.volume_type, Some(volume_type));
                    assert_eq!(volume_type.as_str(), name);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn ebs_and_image_usage_errors() {
        let exit = |args: &[&str]| parse(args).unwrap_err().exit_code();
        assert_eq!(
            exit(&["create-volume", "--size", "8"]),
            2,
            "--availability-zone is required"
        );
        let zone = ["create-volume", "--availability-zone", "a"];
        assert_eq!(exit(&[&zone[..], &["--size", "0"]].concat()), 2);
        assert_eq!(exit(&[&zone[..], &["--volume-type", "gp4"]].concat()), 2);
        assert_eq!(exit(&[&zone[..], &["--encrypted", "--no-encrypted"]].concat()), 2);
        assert_eq!(
            exit(&["attach-volume", "--volume-id", "vol-1", "--instance-id", "i-1"]),
            2
        );
        assert_eq!(exit(&["copy-snapshot"]), 2);
        // --name is needed without a manifest; a manifest excludes the kernel, initrd, root image and snapshot.
        assert_eq!(exit(&["register-image", "--kernel", "/k", "--root-image", "/r"]), 2);
        for excluded in [
            "--kernel",
            "--initrd",
            "--root-image",
            "--root-snapshot-id",
            "--kernel-id",
            "--ramdisk-id",
        ] {
            assert_eq!(
                exit(&["register-image", "--image-location", "/i/image.json", excluded, "x"]),
                2,
                "{excluded}"
            );
        }
        assert_eq!(
            exit(&[
                "register-image",
                "--name",
                "n",
                "--kernel",
                "/k",
                "--root-image",
                "/r",
                "--root-snapshot-id",
                "s"
            ]),
            2
        );
        let both = ["register-image", "--name", "n", "--root-image", "r"];
        assert_eq!(
            exit(&[&both[..], &["--kernel", "k", "--kernel-id", "ami-1"]].concat()),
            2
        );
        assert_eq!(
            exit(&[&both[..], &["--initrd", "i", "--ramdisk-id", "ami-1"]].concat()),
            2
        );
        assert!(parse(&["register-image", "--image-location", "/i/image.json"]).is_ok());
    }

    #[test]
    fn networking_commands_parse_like_aws() {
        let cli = parse(&[
            "authorize-security-group-ingress",
            "--group-id",
            "sg-1",
            "--protocol",
            "-1",
            "--port",
            "-1",
            "--cidr",
            "10.0.0.0/8",
        ])
        .unwrap();
        match cli.command {
            Command::AuthorizeSecurityGroupIngress(rules) => {
                assert_eq!(rules.group_id.as_deref(), Some("sg-1"));
                assert_eq!(rules.protocol.as_deref(), Some("-1"));
                assert_eq!(rules.port.as_deref(), Some("-1"));
                assert_eq!(rules.cidr.as_deref(), Some("10.0.0.0/8"));
                assert!(rules.ip_permissions.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&[
            "revoke-security-group-egress",
            "--group-name",
            "web",
            "--ip-permissions",
            "IpProtocol=tcp,FromPort=80,ToPort=80,IpRanges=[{CidrIp=0.0.0.0/0}]",
            "IpProtocol=tcp,FromPort=443,ToPort=443,IpRanges=[{CidrIp=0.0.0.0/0}]",
            "--dry-run",
        ])
        .unwrap();
        match cli.command {
            Command::RevokeSecurityGroupEgress(rules) => {
                assert_eq!(rules.group_name.as_deref(), Some("web"));
                assert_eq!(rules.ip_permissions.len(), 2);
                assert!(rules.dry_run.dry_run);
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&[
            "describe-security-groups",
            "--group-names",
            "default",
            "web",
            "--filters",
            "Name=vpc-id,Values=vpc-1",
        ])
        .unwrap();
        match cli.command {
            Command::DescribeSecurityGroups {
                group_ids,
                group_names,
                filters,
            } => {
                assert!(group_ids.is_empty());
                assert_eq!(group_names, ["default", "web"]);
                assert_eq!(filters.filters.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&[
            "associate-address",
            "--allocation-id",
            "eipalloc-1",
            "--instance-id",
            "i-1",
            "--allow-reassociation",
        ])
        .unwrap();
        match cli.command {
            Command::AssociateAddress(args) => {
                assert_eq!(args.allocation_id.as_deref(), Some("eipalloc-1"));
                assert!(args.allow_reassociation);
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&[
            "modify-instance-metadata-options",
            "--instance-id",
            "i-1",
            "--http-tokens",
            "required",
            "--http-endpoint",
            "disabled",
            "--http-put-response-hop-limit",
            "64",
        ])
        .unwrap();
        match cli.command {
            Command::ModifyInstanceMetadataOptions(args) => {
                assert_eq!(args.http_tokens, Some(HttpTokens::Required));
                assert_eq!(args.http_endpoint, Some(HttpEndpoint::Disabled));
                assert_eq!(args.http_put_response_hop_limit, Some(64));
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&["allocate-address", "--domain", "vpc", "--address", "203.0.113.7"]).unwrap();
        match cli.command {
            Command::AllocateAddress { domain, address, .. } => {
                assert_eq!(domain.as_deref(), Some("vpc"));
                assert_eq!(address.as_deref(), Some("203.0.113.7"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn networking_usage_errors() {
        let exit = |args: &[&str]| parse(args).unwrap_err().exit_code();
        assert_eq!(exit(&["create-vpc"]), 2, "--cidr-block is required");
        assert_eq!(
            exit(&["create-subnet", "--cidr-block", "10.0.1.0/24"]),
            2,
            "--vpc-id too"
        );
        assert_eq!(
            exit(&["create-security-group", "--group-name", "web"]),
            2,
            "--description too"
        );
        // Exactly one of --group-id and --group-name.
        assert_eq!(exit(&["delete-security-group"]), 2);
        assert_eq!(
            exit(&["delete-security-group", "--group-id", "sg-1", "--group-name", "web"]),
            2
        );
        let rules = ["authorize-security-group-ingress", "--group-id", "sg-1"];
        assert_eq!(exit(&rules), 2, "no rules");
        assert_eq!(
            exit(&["authorize-security-group-egress", "--protocol", "tcp"]),
            2,
            "no group"
        );
        for shortcut in [&["--protocol", "tcp"][..], &["--port", "22"], &["--cidr", "0.0.0.0/0"]] {
            let args = [&rules[..], &["--ip-permissions", "IpProtocol=-1"], shortcut].concat();
            assert_eq!(exit(&args), 2, "{shortcut:?} with --ip-permissions");
        }
        assert_eq!(
            exit(&[&rules[..], &["--port", "22", "--cidr", "0.0.0.0/0"]].concat()),
            2
        );
        assert_eq!(
            exit(&[&rules[..], &["--protocol", "tcp", "--group-owner", "1"]].concat()),
            2,
            "--group-owner needs --source-group"
        );
        // Exactly one of --allocation-id and --public-ip (--association-id for disassociate).
        assert_eq!(exit(&["associate-address", "--instance-id", "i-1"]), 2);
        assert_eq!(
            exit(&[
                "associate-address",
                "--instance-id",
                "i-1",
                "--allocation-id",
                "eipalloc-1",
                "--public-ip",
                "203.0.113.7"
            ]),
            2
        );
        assert_eq!(
            exit(&[
                "associate-address",
                "--public-ip",
                "203.0.113.7",
                "--instance-id",
                "i-1",
                "--allow-reassociation",
                "--no-allow-reassociation"
            ]),
            2
        );
        assert_eq!(exit(&["disassociate-address"]), 2);
        assert_eq!(exit(&["release-address"]), 2);
        assert_eq!(exit(&["allocate-address", "--domain", "standard"]), 2);
        let metadata = ["modify-instance-metadata-options", "--instance-id", "i-1"];
        assert_eq!(exit(&[&metadata[..], &["--http-tokens", "always"]].concat()), 2);
        assert_eq!(exit(&[&metadata[..], &["--http-endpoint", "on"]].concat()), 2);
        assert_eq!(
            exit(&[&metadata[..], &["--http-put-response-hop-limit", "0"]].concat()),
            2
        );
        assert_eq!(
            exit(&[&metadata[..], &["--http-put-response-hop-limit", "65"]].concat()),
            2
        );
    }

    #[test]
    fn attribute_names_are_camel_case() {
        let cli = parse(&[
            "describe-instance-attribute",
            "--instance-id",
            "i-1",
            "--attribute",
            "disableApiTermination",
        ])
        .unwrap();
        match cli.command {
            Command::DescribeInstanceAttribute { attribute, .. } => {
                assert_eq!(attribute, InstanceAttributeName::DisableApiTermination);
                assert_eq!(attribute.as_str(), "disableApiTermination");
            }
            other => panic!("{other:?}"),
        }
    }
}
