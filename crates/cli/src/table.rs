//! Responses as aligned tables (`--output table`) or tab-separated rows (`--output text`).

use hearth_api::v1 as api;

/// Rows under a header; empty cells print as `-`.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
    /// A line printed under the table (e.g. the next page's token).
    footer: Option<String>,
}

impl Table {
    /// An empty table with these columns.
    pub fn new(header: &[&'static str]) -> Self {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
            footer: None,
        }
    }

    /// Adds one row (as many cells as columns).
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    /// Notes a `NextToken` under the table when there is one.
    pub fn next_token(mut self, token: &str) -> Self {
        if !token.is_empty() {
            self.footer = Some(format!("NextToken: {token}"));
        }
        self
    }

    fn cell(text: &str) -> &str {
        if text.is_empty() {
            "-"
        } else {
            text
        }
    }

    /// Columns padded to their widest cell, two spaces apart, no trailing blanks.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(Self::cell(cell).chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<&str> = self.header.to_vec();
        for line in std::iter::once(header).chain(self.rows.iter().map(|r| r.iter().map(|c| Self::cell(c)).collect())) {
            let mut text = String::new();
            for (i, (cell, width)) in line.iter().zip(&widths).enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(cell);
                text.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        if let Some(footer) = &self.footer {
            out.push_str(footer);
            out.push('\n');
        }
        out
    }

    /// The rows tab-separated without a header, for scripts.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for row in &self.rows {
            out.push_str(&row.join("\t"));
            out.push('\n');
        }
        if let Some(footer) = &self.footer {
            out.push_str(footer);
            out.push('\n');
        }
        out
    }
}

fn state_name(state: &Option<api::InstanceState>) -> String {
    state.as_ref().map(|s| s.name.clone()).unwrap_or_default()
}

/// The value of tag `key`, or empty.
pub fn tag_value(tags: &[api::Tag], key: &str) -> String {
    tags.iter()
        .find(|t| t.key == key)
        .map(|t| t.value.clone())
        .unwrap_or_default()
}

const INSTANCE_COLUMNS: &[&str] = &["ID", "STATE", "TYPE", "AZ", "IMAGE", "IP", "LAUNCHED", "NAME"];

fn instance_row(table: &mut Table, instance: &api::Instance) {
    table.row(vec![
        instance.instance_id.clone(),
        state_name(&instance.state),
        instance.instance_type.clone(),
        instance.availability_zone.clone(),
        instance.image_id.clone(),
        instance.private_ip_address.clone(),
        instance.launch_time.clone(),
        tag_value(&instance.tags, "Name"),
    ]);
}

/// DescribeInstances: one row per instance.
pub fn instances(response: &api::DescribeInstancesResponse) -> Table {
    let mut table = Table::new(INSTANCE_COLUMNS);
    for instance in response.reservations.iter().flat_map(|r| &r.instances) {
        instance_row(&mut table, instance);
    }
    table.next_token(&response.next_token)
}

/// RunInstances: the new instances.
pub fn reservation(reservation: &api::Reservation) -> Table {
    let mut table = Table::new(INSTANCE_COLUMNS);
    for instance in &reservation.instances {
        instance_row(&mut table, instance);
    }
    table
}

/// DescribeInstanceStatus.
pub fn instance_statuses(response: &api::DescribeInstanceStatusResponse) -> Table {
    let mut table = Table::new(&["ID", "AZ", "STATE", "SYSTEM", "INSTANCE"]);
    for status in &response.instance_statuses {
        table.row(vec![
            status.instance_id.clone(),
            status.availability_zone.clone(),
            state_name(&status.instance_state),
            status.system_status.clone(),
            status.instance_status.clone(),
        ]);
    }
    table.next_token(&response.next_token)
}

/// Start/Stop/TerminateInstances.
pub fn state_changes(response: &api::InstanceStateChanges) -> Table {
    let mut table = Table::new(&["ID", "PREVIOUS", "CURRENT"]);
    for change in &response.changes {
        table.row(vec![
            change.instance_id.clone(),
            state_name(&change.previous_state),
            state_name(&change.current_state),
        ]);
    }
    table
}

fn instance_block_devices(mappings: &[api::InstanceBlockDeviceMapping]) -> Table {
    let mut table = Table::new(&["DEVICE", "VOLUME", "STATUS", "DELETE-ON-TERMINATION", "ATTACHED"]);
    for mapping in mappings {
        table.row(vec![
            mapping.device_name.clone(),
            mapping.volume_id.clone(),
            mapping.status.clone(),
            mapping.delete_on_termination.to_string(),
            mapping.attach_time.clone(),
        ]);
    }
    table
}

/// DescribeInstanceAttribute: the value, or the block devices for `blockDeviceMapping`.
pub fn instance_attribute(response: &api::InstanceAttribute) -> Table {
    if response.attribute == "blockDeviceMapping" {
        return instance_block_devices(&response.block_device_mappings);
    }
    let mut table = Table::new(&["ID", "ATTRIBUTE", "VALUE"]);
    table.row(vec![
        response.instance_id.clone(),
        response.attribute.clone(),
        response.value.clone(),
    ]);
    table
}

/// `1024` MiB → `1 GiB`, `512` → `512 MiB`.
fn mebibytes(mib: i64) -> String {
    if mib >= 1024 && mib % 1024 == 0 {
        format!("{} GiB", mib / 1024)
    } else if mib >= 1024 {
        format!("{:.1} GiB", mib as f64 / 1024.0)
    } else {
        format!("{mib} MiB")
    }
}

/// DescribeInstanceTypes.
pub fn instance_types(response: &api::DescribeInstanceTypesResponse) -> Table {
    let mut table = Table::new(&[
        "TYPE",
        "FAMILY",
        "VCPUS",
        "MEMORY",
        "INSTANCE-STORE",
        "NETWORK",
        "EBS",
        "BURSTABLE",
    ]);
    for info in &response.instance_types {
        let store = if info.instance_store_disks > 0 {
            format!(
                "{} x {} GiB",
                info.instance_store_disks,
                info.instance_store_gib / i64::from(info.instance_store_disks)
            )
        } else {
            String::new()
        };
        table.row(vec![
            info.instance_type.clone(),
            info.family.clone(),
            info.vcpus.to_string(),
            mebibytes(info.memory_mib),
            store,
            format!("{} Mbps", info.network_mbps),
            format!("{} Mbps", info.ebs_mbps),
            if info.burstable { "yes".into() } else { "no".into() },
        ]);
    }
    table
}

/// DescribeImages.
pub fn images(response: &api::DescribeImagesResponse) -> Table {
    let mut table = Table::new(&["ID", "NAME", "STATE", "ROOT", "SIZE", "SNAPSHOT", "CREATED", "LOCATION"]);
    for image in &response.images {
        let size = if image.root_size_bytes > 0 {
            mebibytes(image.root_size_bytes >> 20)
        } else {
            String::new()
        };
        table.row(vec![
            image.image_id.clone(),
            image.name.clone(),
            image.state.clone(),
            image.root_device_type.clone(),
            size,
            image.root_snapshot_id.clone(),
            image.creation_date.clone(),
            image.image_location.clone(),
        ]);
    }
    table
}

/// `8` GiB → `8 GiB`.
fn gibibytes(gib: i64) -> String {
    format!("{gib} GiB")
}

/// A byte count in the largest binary unit it reaches: `0 B`, `512 B`, `1.5 KiB`, `12 MiB`.
fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = "B";
    for next in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

const VOLUME_COLUMNS: &[&str] = &["ID", "SIZE", "TYPE", "STATE", "AZ", "INSTANCE", "DEVICE", "NAME"];

fn volume_row(table: &mut Table, volume: &api::Volume) {
    let attachment = volume.attachments.first();
    table.row(vec![
        volume.volume_id.clone(),
        gibibytes(volume.size_gib),
        volume.volume_type.clone(),
        volume.state.clone(),
        volume.availability_zone.clone(),
        attachment.map(|a| a.instance_id.clone()).unwrap_or_default(),
        attachment.map(|a| a.device.clone()).unwrap_or_default(),
        tag_value(&volume.tags, "Name"),
    ]);
}

/// CreateVolume: the new volume.
pub fn volume(volume: &api::Volume) -> Table {
    let mut table = Table::new(VOLUME_COLUMNS);
    volume_row(&mut table, volume);
    table
}

/// DescribeVolumes: one row per volume.
pub fn volumes(response: &api::DescribeVolumesResponse) -> Table {
    let mut table = Table::new(VOLUME_COLUMNS);
    for volume in &response.volumes {
        volume_row(&mut table, volume);
    }
    table
}

/// AttachVolume and DetachVolume.
pub fn volume_attachment(attachment: &api::VolumeAttachment) -> Table {
    let mut table = Table::new(&["VOLUME", "INSTANCE", "DEVICE", "STATE", "ATTACHED"]);
    table.row(vec![
        attachment.volume_id.clone(),
        attachment.instance_id.clone(),
        attachment.device.clone(),
        attachment.state.clone(),
        attachment.attach_time.clone(),
    ]);
    table
}

/// `original → target`, or the value alone when it does not change (empty for 0 → 0).
fn change<T: PartialEq + std::fmt::Display + Default>(original: T, target: T) -> String {
    if original == target {
        if target == T::default() {
            String::new()
        } else {
            target.to_string()
        }
    } else {
        format!("{original} → {target}")
    }
}

/// ModifyVolume and DescribeVolumesModifications: one row per modification.
pub fn volume_modifications(modifications: &[api::VolumeModification]) -> Table {
    let mut table = Table::new(&[
        "VOLUME",
        "STATE",
        "SIZE-GIB",
        "TYPE",
        "IOPS",
        "THROUGHPUT",
        "PROGRESS",
        "STARTED",
    ]);
    for m in modifications {
        table.row(vec![
            m.volume_id.clone(),
            m.modification_state.clone(),
            change(m.original_size_gib, m.target_size_gib),
            change(m.original_volume_type.clone(), m.target_volume_type.clone()),
            change(m.original_iops, m.target_iops),
            change(m.original_throughput_mibps, m.target_throughput_mibps),
            format!("{}%", m.progress),
            m.start_time.clone(),
        ]);
    }
    table
}

/// CreateSnapshot and DescribeSnapshots: one row per snapshot.
pub fn snapshots(snapshots: &[api::Snapshot]) -> Table {
    let mut table = Table::new(&[
        "ID",
        "VOLUME",
        "STATE",
        "PROGRESS",
        "SIZE",
        "STORED",
        "STARTED",
        "DESCRIPTION",
    ]);
    for snapshot in snapshots {
        table.row(vec![
            snapshot.snapshot_id.clone(),
            snapshot.volume_id.clone(),
            snapshot.state.clone(),
            snapshot.progress.clone(),
            gibibytes(snapshot.volume_size_gib),
            bytes(snapshot.stored_bytes),
            snapshot.start_time.clone(),
            snapshot.description.clone(),
        ]);
    }
    table
}

/// DescribeKeyPairs.
pub fn key_pairs(response: &api::DescribeKeyPairsResponse) -> Table {
    let mut table = Table::new(&["NAME", "ID", "TYPE", "FINGERPRINT", "CREATED"]);
    for key in &response.key_pairs {
        table.row(vec![
            key.key_name.clone(),
            key.key_pair_id.clone(),
            key.key_type.clone(),
            key.key_fingerprint.clone(),
            key.create_time.clone(),
        ]);
    }
    table
}

/// ImportKeyPair.
pub fn imported_key_pair(info: &api::KeyPairInfo) -> Table {
    let mut table = Table::new(&["NAME", "ID", "FINGERPRINT"]);
    table.row(vec![
        info.key_name.clone(),
        info.key_pair_id.clone(),
        info.key_fingerprint.clone(),
    ]);
    table
}

/// DescribeTags.
pub fn tags(response: &api::DescribeTagsResponse) -> Table {
    let mut table = Table::new(&["RESOURCE", "TYPE", "KEY", "VALUE"]);
    for tag in &response.tags {
        table.row(vec![
            tag.resource_id.clone(),
            tag.resource_type.clone(),
            tag.key.clone(),
            tag.value.clone(),
        ]);
    }
    table.next_token(&response.next_token)
}

/// DescribeRegions.
pub fn regions(response: &api::DescribeRegionsResponse) -> Table {
    let mut table = Table::new(&["REGION", "ENDPOINT"]);
    for region in &response.regions {
        table.row(vec![region.region_name.clone(), region.endpoint.clone()]);
    }
    table
}

/// DescribeAvailabilityZones.
pub fn availability_zones(response: &api::DescribeAvailabilityZonesResponse) -> Table {
    let mut table = Table::new(&["ZONE", "STATE", "REGION", "HOSTS"]);
    for zone in &response.availability_zones {
        table.row(vec![
            zone.zone_name.clone(),
            zone.state.clone(),
            zone.region_name.clone(),
            zone.hosts.to_string(),
        ]);
    }
    table
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.into()
}

/// CreateVpc and DescribeVpcs: one row per VPC.
pub fn vpcs(vpcs: &[api::Vpc]) -> Table {
    let mut table = Table::new(&["ID", "CIDR", "STATE", "DEFAULT", "NAME"]);
    for vpc in vpcs {
        table.row(vec![
            vpc.vpc_id.clone(),
            vpc.cidr_block.clone(),
            vpc.state.clone(),
            yes_no(vpc.is_default),
            tag_value(&vpc.tags, "Name"),
        ]);
    }
    table
}

/// CreateSubnet and DescribeSubnets: one row per subnet.
pub fn subnets(subnets: &[api::Subnet]) -> Table {
    let mut table = Table::new(&["ID", "VPC", "CIDR", "AZ", "FREE-IPS", "DEFAULT", "STATE", "NAME"]);
    for subnet in subnets {
        table.row(vec![
            subnet.subnet_id.clone(),
            subnet.vpc_id.clone(),
            subnet.cidr_block.clone(),
            subnet.availability_zone.clone(),
            subnet.available_ip_address_count.to_string(),
            yes_no(subnet.default_for_az),
            subnet.state.clone(),
            tag_value(&subnet.tags, "Name"),
        ]);
    }
    table
}

/// `-1` → `all`, else the protocol as given.
fn protocol_text(protocol: &str) -> String {
    match protocol {
        "-1" => "all".into(),
        other => other.into(),
    }
}

/// A rule's ports: `22`, `1000-2000`, `all`; for icmp the type and code (`type 8`, `type 3 code 4`).
fn ports_text(permission: &api::IpPermission) -> String {
    let icmp = matches!(permission.ip_protocol.as_str(), "icmp" | "1");
    match (permission.from_port, permission.to_port) {
        _ if permission.ip_protocol == "-1" => "all".into(),
        (None, None) | (Some(-1), Some(-1) | None) => "all".into(),
        (Some(kind), code) if icmp => match code {
            Some(code) if code != -1 => format!("type {kind} code {code}"),
            _ => format!("type {kind}"),
        },
        (Some(from), Some(to)) if from == to => from.to_string(),
        (from, to) => {
            let end = |port: Option<i32>| port.map_or_else(|| "*".to_string(), |p| p.to_string());
            format!("{}-{}", end(from), end(to))
        }
    }
}

/// The peers of a rule with their descriptions: its CIDRs, then its groups.
fn peers(permission: &api::IpPermission) -> Vec<(String, String)> {
    let ranges = permission
        .ip_ranges
        .iter()
        .map(|r| (r.cidr_ip.clone(), r.description.clone()));
    let groups = permission
        .user_id_group_pairs
        .iter()
        .map(|p| (p.group_id.clone(), p.description.clone()));
    let peers: Vec<_> = ranges.chain(groups).collect();
    if peers.is_empty() {
        vec![(String::new(), String::new())]
    } else {
        peers
    }
}

/// DescribeSecurityGroups: one row per rule and peer (a group without rules gets one row of its own).
pub fn security_groups(response: &api::DescribeSecurityGroupsResponse) -> Table {
    let mut table = Table::new(&[
        "GROUP",
        "NAME",
        "VPC",
        "DIRECTION",
        "PROTOCOL",
        "PORTS",
        "PEER",
        "DESCRIPTION",
    ]);
    for group in &response.security_groups {
        let group_cells = || vec![group.group_id.clone(), group.group_name.clone(), group.vpc_id.clone()];
        let rules = [
            ("ingress", &group.ip_permissions),
            ("egress", &group.ip_permissions_egress),
        ];
        let mut any = false;
        for (direction, permissions) in rules {
            for permission in permissions {
                for (peer, description) in peers(permission) {
                    any = true;
                    let mut row = group_cells();
                    row.extend([
                        direction.to_string(),
                        protocol_text(&permission.ip_protocol),
                        ports_text(permission),
                        peer,
                        description,
                    ]);
                    table.row(row);
                }
            }
        }
        if !any {
            let mut row = group_cells();
            row.extend(std::iter::repeat_n(String::new(), 5));
            table.row(row);
        }
    }
    table
}

/// Authorize/RevokeSecurityGroupIngress/Egress: the rules the call added or removed, one row per peer.
pub fn rules(request: &api::SecurityGroupRulesRequest, direction: &str) -> Table {
    let mut table = Table::new(&["GROUP", "DIRECTION", "PROTOCOL", "PORTS", "PEER", "DESCRIPTION"]);
    let group = if request.group_id.is_empty() {
        &request.group_name
    } else {
        &request.group_id
    };
    for permission in &request.ip_permissions {
        for (peer, description) in peers(permission) {
            table.row(vec![
                group.clone(),
                direction.to_string(),
                protocol_text(&permission.ip_protocol),
                ports_text(permission),
                peer,
                description,
            ]);
        }
    }
    table
}

/// AllocateAddress and DescribeAddresses: one row per Elastic IP.
pub fn addresses(addresses: &[api::Address]) -> Table {
    let mut table = Table::new(&[
        "ALLOCATION",
        "PUBLIC-IP",
        "DOMAIN",
        "INSTANCE",
        "PRIVATE-IP",
        "ASSOCIATION",
        "NAME",
    ]);
    for address in addresses {
        table.row(vec![
            address.allocation_id.clone(),
            address.public_ip.clone(),
            address.domain.clone(),
            address.instance_id.clone(),
            address.private_ip_address.clone(),
            address.association_id.clone(),
            tag_value(&address.tags, "Name"),
        ]);
    }
    table
}

/// ModifyInstanceMetadataOptions.
pub fn instance_metadata_options(instance_id: &str, options: &api::InstanceMetadataOptions) -> Table {
    let mut table = Table::new(&["INSTANCE", "HTTP-TOKENS", "HTTP-ENDPOINT", "HOP-LIMIT", "STATE"]);
    table.row(vec![
        instance_id.to_owned(),
        options.http_tokens.clone(),
        options.http_endpoint.clone(),
        options.http_put_response_hop_limit.to_string(),
        "applied".into(),
    ]);
    table
}

/// A single value under one column (RegisterImage's image ID, CopySnapshot's snapshot ID).
pub fn single(column: &'static str, value: &str) -> Table {
    let mut table = Table::new(&[column]);
    table.row(vec![value.to_owned()]);
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::tests::{
        sample_address, sample_instances, sample_security_groups, sample_snapshot, sample_volume,
    };

    #[test]
    fn instances_table_is_aligned() {
        let mut response = sample_instances();
        let mut second = response.reservations[0].instances[0].clone();
        second.instance_id = "i-0def456".into();
        second.state = Some(api::InstanceState {
            code: 80,
            name: "stopped".into(),
        });
        second.private_ip_address.clear();
        second.tags.clear();
        response.reservations[0].instances.push(second);
        assert_eq!(
            instances(&response).render(),
            "\
ID         STATE    TYPE      AZ         IMAGE     IP        LAUNCHED              NAME
i-0abc     running  t3.micro  hearth-1a  ami-0001  10.0.0.5  2026-01-02T03:04:05Z  web
i-0def456  stopped  t3.micro  hearth-1a  ami-0001  -         2026-01-02T03:04:05Z  -
"
        );
    }

    #[test]
    fn text_output_is_tab_separated_without_header() {
        let table = instances(&sample_instances());
        assert_eq!(
            table.render_text(),
            "i-0abc\trunning\tt3.micro\thearth-1a\tami-0001\t10.0.0.5\t2026-01-02T03:04:05Z\tweb\n"
        );
    }

    #[test]
    fn next_token_is_shown_under_the_table() {
        let mut response = sample_instances();
        response.next_token = "tok-2".into();
        assert!(instances(&response).render().ends_with("web\nNextToken: tok-2\n"));
    }

    #[test]
    fn empty_table_keeps_its_header() {
        let response = api::DescribeKeyPairsResponse::default();
        assert_eq!(key_pairs(&response).render(), "NAME  ID  TYPE  FINGERPRINT  CREATED\n");
    }

    #[test]
    fn instance_types_are_readable() {
        let response = api::DescribeInstanceTypesResponse {
            instance_types: vec![api::InstanceTypeInfo {
                instance_type: "m5d.large".into(),
                family: "general".into(),
                vcpus: 2,
                memory_mib: 8192,
                instance_store_disks: 1,
                instance_store_gib: 75,
                network_mbps: 750,
                ebs_mbps: 650,
                burstable: false,
            }],
        };
        assert_eq!(
            instance_types(&response).render(),
            "\
TYPE       FAMILY   VCPUS  MEMORY  INSTANCE-STORE  NETWORK   EBS       BURSTABLE
m5d.large  general  2      8 GiB   1 x 75 GiB      750 Mbps  650 Mbps  no
"
        );
    }

    #[test]
    fn volumes_show_their_attachment() {
        let mut detached = sample_volume();
        detached.volume_id = "vol-0002".into();
        detached.size_gib = 100;
        detached.volume_type = "io2".into();
        detached.state = "available".into();
        detached.attachments.clear();
        detached.tags.clear();
        let response = api::DescribeVolumesResponse {
            volumes: vec![sample_volume(), detached],
        };
        assert_eq!(
            volumes(&response).render(),
            "\
ID        SIZE     TYPE  STATE      AZ         INSTANCE  DEVICE    NAME
vol-0001  16 GiB   gp3   in-use     hearth-1a  i-0abc    /dev/sdf  data
vol-0002  100 GiB  io2   available  hearth-1a  -         -         -
"
        );
        assert_eq!(
            volume_attachment(&sample_volume().attachments[0]).render_text(),
            "vol-0001\ti-0abc\t/dev/sdf\tattached\t2026-01-02T03:05:00Z\n"
        );
    }

    #[test]
    fn modifications_show_what_changes() {
        let modification = api::VolumeModification {
            volume_id: "vol-0001".into(),
            modification_state: "modifying".into(),
            target_size_gib: 32,
            target_iops: 3000,
            target_volume_type: "gp3".into(),
            original_size_gib: 16,
            original_iops: 3000,
            original_volume_type: "gp2".into(),
            progress: 10,
            start_time: "2026-01-02T05:00:00Z".into(),
            ..Default::default()
        };
        assert_eq!(
            volume_modifications(&[modification]).render(),
            "\
VOLUME    STATE      SIZE-GIB  TYPE       IOPS  THROUGHPUT  PROGRESS  STARTED
vol-0001  modifying  16 → 32   gp2 → gp3  3000  -           10%       2026-01-02T05:00:00Z
"
        );
    }

    #[test]
    fn snapshots_table() {
        let pending = api::Snapshot {
            snapshot_id: "snap-0003".into(),
            state: "pending".into(),
            progress: "45%".into(),
            description: String::new(),
            stored_bytes: 0,
            ..sample_snapshot()
        };
        assert_eq!(
            snapshots(&[sample_snapshot(), pending]).render(),
            "\
ID         VOLUME    STATE      PROGRESS  SIZE    STORED  STARTED               DESCRIPTION
snap-0002  vol-0001  completed  100%      16 GiB  3 MiB   2026-01-02T04:00:00Z  nightly
snap-0003  vol-0001  pending    45%       16 GiB  0 B     2026-01-02T04:00:00Z  -
"
        );
    }

    #[test]
    fn byte_counts_are_readable() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12 << 20), "12 MiB");
        assert_eq!(bytes((5 << 30) + (1 << 29)), "5.5 GiB");
        assert_eq!(bytes(3 << 40), "3 TiB");
    }

    #[test]
    fn security_groups_show_one_rule_per_row() {
        let mut response = sample_security_groups();
        response.security_groups.push(api::SecurityGroup {
            group_id: "sg-0003".into(),
            group_name: "empty".into(),
            vpc_id: "vpc-0001".into(),
            ..Default::default()
        });
        assert_eq!(
            security_groups(&response).render(),
            "\
GROUP    NAME     VPC       DIRECTION  PROTOCOL  PORTS   PEER            DESCRIPTION
sg-0001  default  vpc-0001  ingress    all       all     sg-0001         -
sg-0001  default  vpc-0001  egress     all       all     0.0.0.0/0       -
sg-0002  web      vpc-0001  ingress    tcp       22      10.0.0.0/8      ssh
sg-0002  web      vpc-0001  ingress    tcp       22      192.168.0.0/16  -
sg-0002  web      vpc-0001  ingress    icmp      type 8  0.0.0.0/0       -
sg-0003  empty    vpc-0001  -          -         -       -               -
"
        );
    }

    #[test]
    fn rule_ports_are_readable() {
        let ports = |protocol: &str, from: Option<i32>, to: Option<i32>| {
            ports_text(&api::IpPermission {
                ip_protocol: protocol.into(),
                from_port: from,
                to_port: to,
                ..Default::default()
            })
        };
        assert_eq!(ports("tcp", Some(22), Some(22)), "22");
        assert_eq!(ports("tcp", Some(1000), Some(2000)), "1000-2000");
        assert_eq!(ports("udp", Some(-1), Some(-1)), "all");
        assert_eq!(ports("tcp", Some(0), Some(65535)), "0-65535");
        assert_eq!(ports("-1", None, None), "all");
        assert_eq!(ports("icmp", Some(-1), Some(-1)), "all");
        assert_eq!(ports("icmp", Some(8), Some(-1)), "type 8");
        assert_eq!(ports("icmp", Some(3), Some(4)), "type 3 code 4");
        assert_eq!(ports("icmp", None, None), "all");
    }

    #[test]
    fn authorized_rules_are_listed() {
        let request = api::SecurityGroupRulesRequest {
            group_name: "web".into(),
            ip_permissions: sample_security_groups().security_groups[1].ip_permissions.clone(),
            ..Default::default()
        };
        assert_eq!(
            rules(&request, "ingress").render_text(),
            "web\tingress\ttcp\t22\t10.0.0.0/8\tssh\n\
             web\tingress\ttcp\t22\t192.168.0.0/16\t\n\
             web\tingress\ticmp\ttype 8\t0.0.0.0/0\t\n"
        );
    }

    #[test]
    fn networking_tables() {
        let vpc = api::Vpc {
            vpc_id: "vpc-0001".into(),
            cidr_block: "172.31.0.0/16".into(),
            state: "available".into(),
            is_default: true,
            ..Default::default()
        };
        assert_eq!(
            vpcs(&[vpc]).render(),
            "ID        CIDR           STATE      DEFAULT  NAME\nvpc-0001  172.31.0.0/16  available  yes      -\n"
        );
        let subnet = api::Subnet {
            subnet_id: "subnet-0001".into(),
            vpc_id: "vpc-0001".into(),
            cidr_block: "10.0.1.0/24".into(),
            availability_zone: "hearth-1a".into(),
            available_ip_address_count: 251,
            state: "available".into(),
            tags: vec![api::Tag {
                key: "Name".into(),
                value: "private".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            subnets(&[subnet]).render(),
            "\
ID           VPC       CIDR         AZ         FREE-IPS  DEFAULT  STATE      NAME
subnet-0001  vpc-0001  10.0.1.0/24  hearth-1a  251       no       available  private
"
        );
        let free = api::Address {
            allocation_id: "eipalloc-0002".into(),
            public_ip: "203.0.113.8".into(),
            domain: "vpc".into(),
            ..Default::default()
        };
        assert_eq!(
            addresses(&[sample_address(), free]).render(),
            "\
ALLOCATION     PUBLIC-IP    DOMAIN  INSTANCE  PRIVATE-IP  ASSOCIATION    NAME
eipalloc-0001  203.0.113.7  vpc     i-0abc    10.0.0.5    eipassoc-0001  -
eipalloc-0002  203.0.113.8  vpc     -         -           -              -
"
        );
        let options = api::InstanceMetadataOptions {
            http_tokens: "required".into(),
            http_endpoint: "enabled".into(),
            http_put_response_hop_limit: 2,
        };
        assert_eq!(
            instance_metadata_options("i-0abc", &options).render_text(),
            "i-0abc\trequired\tenabled\t2\tapplied\n"
        );
    }

    #[test]
    fn images_show_snapshot_and_location() {
        let response = api::DescribeImagesResponse {
            images: vec![api::Image {
                image_id: "ami-1".into(),
                name: "alpine".into(),
                state: "available".into(),
                root_device_type: "ebs".into(),
                root_size_bytes: 1 << 30,
                root_snapshot_id: "snap-1".into(),
                creation_date: "2026-01-02T03:04:05Z".into(),
                image_location: "/srv/alpine/image.json".into(),
                ..Default::default()
            }],
        };
        assert_eq!(
            images(&response).render_text(),
            "ami-1\talpine\tavailable\tebs\t1 GiB\tsnap-1\t2026-01-02T03:04:05Z\t/srv/alpine/image.json\n"
        );
    }
}
