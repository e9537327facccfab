//! Each command: flags → request (checked before connecting), the call, the rendered answer, `--wait`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth_api::v1 as api;
use serde_json::Value;

use crate::cli::{
    AssociateAddress, Command, CopySnapshot, CreateVolume, InstanceAttributeName, ModifyInstanceAttribute,
    ModifyInstanceMetadataOptions, ModifyVolume, OutputFormat, RegisterImage, RunInstances, SecurityGroupRules,
    WaitArgs,
};
use crate::connect::Session;
use crate::error::CliError;
use crate::table::{self, Table};
use crate::wait::{self, Goal};
use crate::{base64, json, params};

/// Calls `method` with `message` on the session's client; a failure becomes the aws-style error of `operation`.
macro_rules! call {
    ($session:expr, $method:ident, $operation:literal, $message:expr) => {{
        let request = $session.request($message);
        let endpoint = $session.endpoint().to_owned();
        $session
            .client()
            .await?
            .$method(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| CliError::from_status($operation, &endpoint, &status))
    }};
}

/// The response in the chosen format: EC2 JSON, an aligned table, or tab-separated rows.
pub fn render(format: OutputFormat, json: impl FnOnce() -> Value, table: impl FnOnce() -> Table) -> String {
    match format {
        OutputFormat::Json => json::to_text(&json()),
        OutputFormat::Table => table().render(),
        OutputFormat::Text => table().render_text(),
    }
}

fn print(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::Local(format!("stdout: {e}")))
}

fn non_empty(value: Option<String>) -> String {
    value.unwrap_or_default()
}

/// `--wait` after a state-changing call: `known` is each resource's state as the call reported it.
async fn wait_if_asked(
    session: &mut Session,
    args: &WaitArgs,
    goal: Goal,
    known: Vec<(String, String)>,
) -> Result<(), CliError> {
    if !args.wait {
        return Ok(());
    }
    let timeout = Duration::try_from_secs_f64(args.wait_timeout)
        .map_err(|_| CliError::parameter("--wait-timeout", "expected a number of seconds"))?;
    wait::wait(session, goal, known, timeout).await
}

fn known_states(changes: &api::InstanceStateChanges) -> Vec<(String, String)> {
    changes
        .changes
        .iter()
        .map(|c| {
            (
                c.instance_id.clone(),
                c.current_state.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
            )
        })
        .collect()
}

/// The RunInstances request of `run-instances`.
pub fn run_instances_request(args: &RunInstances) -> Result<api::RunInstancesRequest, CliError> {
    let (min_count, max_count) = match &args.count {
        Some(count) => params::count("--count", count)?,
        None => {
            let min = args.min_count.unwrap_or(0);
            let max = args.max_count.unwrap_or(0);
            if min > 0 && max > 0 && min > max {
                return Err(CliError::Usage(format!("--min-count {min} is above --max-count {max}")));
            }
            // Only one given: EC2 takes the other as equal.
            match (min, max) {
                (0, max) => (max, max),
                (min, 0) => (min, min),
                pair => pair,
            }
        }
    };
    Ok(api::RunInstancesRequest {
        image_id: args.image_id.clone(),
        instance_type: non_empty(args.instance_type.clone()),
        min_count,
        max_count,
        key_name: non_empty(args.key_name.clone()),
        user_data: match &args.user_data {
            Some(data) => params::load_blob("--user-data", data)?,
            None => Vec::new(),
        },
        block_device_mappings: params::block_device_mappings("--block-device-mappings", &args.block_device_mappings)?,
        tag_specifications: params::tag_specifications("--tag-specifications", &args.tag_specifications)?,
        client_token: non_empty(args.client_token.clone()),
        dry_run: args.dry_run.dry_run,
        disable_api_termination: args.disable_api_termination,
        instance_initiated_shutdown_behavior: args
            .instance_initiated_shutdown_behavior
            .map(|b| b.as_str().to_owned())
            .unwrap_or_default(),
        availability_zone: match &args.placement {
            Some(placement) => params::placement_zone("--placement", placement)?,
            None => String::new(),
        },
        subnet_id: non_empty(args.subnet_id.clone()),
        security_group_ids: args.security_group_ids.clone(),
        security_groups: args.security_groups.clone(),
        private_ip_address: non_empty(args.private_ip_address.clone()),
        metadata_options: args
            .metadata_options
            .as_deref()
            .map(|options| params::metadata_options("--metadata-options", options))
            .transpose()?,
    })
}

/// The ModifyInstanceAttribute request of `modify-instance-attribute`.
pub fn modify_instance_attribute_request(
    args: &ModifyInstanceAttribute,
) -> Result<api::ModifyInstanceAttributeRequest, CliError> {
    let mut request = api::ModifyInstanceAttributeRequest {
        instance_id: args.instance_id.clone(),
        dry_run: args.dry_run.dry_run,
        ..Default::default()
    };
    if args.disable_api_termination {
        request.disable_api_termination = Some(true);
    }
    if args.no_disable_api_termination {
        request.disable_api_termination = Some(false);
    }
    let behavior_flag = "--instance-initiated-shutdown-behavior";
    if let Some(value) = &args.instance_initiated_shutdown_behavior {
        request.instance_initiated_shutdown_behavior = Some(params::attribute_value(behavior_flag, value)?);
    }
    if let Some(value) = &args.instance_type {
        request.instance_type = Some(params::attribute_value("--instance-type", value)?);
    }
    if let Some(value) = &args.user_data {
        let data = params::attribute_value("--user-data", value)?;
        request.user_data = Some(params::load_blob("--user-data", &data)?);
    }
    if let Some(value) = &args.kernel {
        request.kernel = Some(params::attribute_value("--kernel", value)?);
    }
    if let Some(value) = &args.ramdisk {
        request.ramdisk = Some(params::attribute_value("--ramdisk", value)?);
    }
    if let (Some(attribute), Some(value)) = (args.attribute, &args.value) {
        let value = params::attribute_value("--value", value)?;
        match attribute {
            InstanceAttributeName::DisableApiTermination => {
                request.disable_api_termination = Some(match value.to_ascii_lowercase().as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(CliError::parameter(
                            "--value",
                            "disableApiTermination takes true or false",
                        ))
                    }
                })
            }
            InstanceAttributeName::InstanceInitiatedShutdownBehavior => {
                request.instance_initiated_shutdown_behavior = Some(value)
            }
            InstanceAttributeName::InstanceType => request.instance_type = Some(value),
            InstanceAttributeName::UserData => request.user_data = Some(params::load_blob("--value", &value)?),
            InstanceAttributeName::Kernel => request.kernel = Some(value),
            InstanceAttributeName::Ramdisk => request.ramdisk = Some(value),
            InstanceAttributeName::RootDeviceName | InstanceAttributeName::BlockDeviceMapping => {
                return Err(CliError::Usage(format!(
                    "the {} attribute cannot be modified",
                    attribute.as_str()
                )))
            }
        }
    }
    let changes = [
        request.disable_api_termination.is_some(),
        request.instance_initiated_shutdown_behavior.is_some(),
        request.instance_type.is_some(),
        request.user_data.is_some(),
        request.kernel.is_some(),
        request.ramdisk.is_some(),
    ];
    if !args.groups.is_empty() {
        if changes.contains(&true) {
            return Err(CliError::Usage(
                "modify-instance-attribute: --groups changes the security groups alone; change the other \
                 attributes in another call"
                    .into(),
            ));
        }
        request.groups = args.groups.clone();
        return Ok(request);
    }
    if !changes.contains(&true) {
        return Err(CliError::Usage(
            "modify-instance-attribute: give an attribute to change (e.g. --instance-type t3.large, \
             --disable-api-termination, --groups sg-1 sg-2, or --attribute NAME --value VALUE)"
                .into(),
        ));
    }
    Ok(request)
}

/// The SecurityGroupRulesRequest of `authorize-security-group-ingress` (and egress, and the revokes): the rules
/// from `--ip-permissions`, or one rule from aws's shortcut flags `--protocol`, `--port`, `--cidr` and
/// `--source-group`.
pub fn security_group_rules_request(args: &SecurityGroupRules) -> Result<api::SecurityGroupRulesRequest, CliError> {
    let group_id = non_empty(args.group_id.clone());
    let group_name = non_empty(args.group_name.clone());
    if group_id.is_empty() == group_name.is_empty() {
        return Err(CliError::Usage(
            "give the security group: --group-id ID or --group-name NAME (one of them)".into(),
        ));
    }
    let shortcut = [
        ("--protocol", args.protocol.is_some()),
        ("--port", args.port.is_some()),
        ("--cidr", args.cidr.is_some()),
        ("--source-group", args.source_group.is_some()),
        ("--group-owner", args.group_owner.is_some()),
    ];
    let ip_permissions = if !args.ip_permissions.is_empty() {
        if let Some((flag, _)) = shortcut.iter().find(|(_, given)| *given) {
            return Err(CliError::parameter(
                "--ip-permissions",
                format!("The {flag} option is not compatible with the --ip-permissions option"),
            ));
        }
        params::ip_permissions("--ip-permissions", &args.ip_permissions)?
    } else {
        vec![shortcut_permission(args)?]
    };
    Ok(api::SecurityGroupRulesRequest {
        group_id,
        group_name,
        ip_permissions,
        dry_run: args.dry_run.dry_run,
    })
}

/// The one rule of the shortcut flags.
fn shortcut_permission(args: &SecurityGroupRules) -> Result<api::IpPermission, CliError> {
    let Some(protocol) = &args.protocol else {
        return Err(CliError::Usage(
            "give the rules: --ip-permissions (shorthand or JSON), or --protocol PROTOCOL [--port PORTS] with \
             --cidr CIDR or --source-group sg-..."
                .into(),
        ));
    };
    let protocol = params::protocol("--protocol", protocol)?;
    let icmp = matches!(protocol.as_str(), "icmp" | "1");
    let (from_port, to_port) = match &args.port {
        Some(port) => {
            let (from, to) = params::port_range("--port", port, icmp)?;
            (Some(from), Some(to))
        }
        None if matches!(protocol.as_str(), "tcp" | "udp" | "6" | "17") => {
            return Err(CliError::Usage(format!(
                "--protocol {protocol} needs --port: a port (22), a range (1000-2000), or -1 for all ports"
            )))
        }
        None => (None, None),
    };
    if args.cidr.is_none() && args.source_group.is_none() {
        return Err(CliError::Usage(
            "--protocol needs --cidr CIDR or --source-group sg-... (the addresses the rule allows)".into(),
        ));
    }
    let ip_ranges = args
        .cidr
        .iter()
        .map(|cidr| api::IpRange {
            cidr_ip: cidr.clone(),
            description: String::new(),
        })
        .collect();
    let mut user_id_group_pairs = Vec::new();
    if let Some(group) = &args.source_group {
        if !group.starts_with("sg-") {
            return Err(CliError::parameter(
                "--source-group",
                format!("expected a security group ID (sg-...), not {group:?}"),
            ));
        }
        user_id_group_pairs.push(api::UserIdGroupPair {
            group_id: group.clone(),
            description: String::new(),
            user_id: non_empty(args.group_owner.clone()),
        });
    }
    Ok(api::IpPermission {
        ip_protocol: protocol,
        from_port,
        to_port,
        ip_ranges,
        user_id_group_pairs,
    })
}

/// The AssociateAddress request of `associate-address`.
pub fn associate_address_request(args: &AssociateAddress) -> Result<api::AssociateAddressRequest, CliError> {
    let allocation_id = non_empty(args.allocation_id.clone());
    let public_ip = non_empty(args.public_ip.clone());
    if allocation_id.is_empty() == public_ip.is_empty() {
        return Err(CliError::Usage(
            "associate-address: give the address: --allocation-id ID or --public-ip IP (one of them)".into(),
        ));
    }
    Ok(api::AssociateAddressRequest {
        allocation_id,
        instance_id: args.instance_id.clone(),
        allow_reassociation: args.allow_reassociation && !args.no_allow_reassociation,
        private_ip_address: non_empty(args.private_ip_address.clone()),
        public_ip,
        dry_run: args.dry_run.dry_run,
    })
}

/// The ModifyInstanceMetadataOptions request of `modify-instance-metadata-options` (what is not given stays).
pub fn modify_instance_metadata_options_request(
    args: &ModifyInstanceMetadataOptions,
) -> api::ModifyInstanceMetadataOptionsRequest {
    api::ModifyInstanceMetadataOptionsRequest {
        instance_id: args.instance_id.clone(),
        http_tokens: args.http_tokens.map(|t| t.as_str().to_owned()).unwrap_or_default(),
        http_endpoint: args.http_endpoint.map(|e| e.as_str().to_owned()).unwrap_or_default(),
        http_put_response_hop_limit: args.http_put_response_hop_limit,
        dry_run: args.dry_run.dry_run,
    }
}

/// The root device name hearthd uses when none is given.
const DEFAULT_ROOT_DEVICE_NAME: &str = "/dev/xvda";

/// The RegisterImage request of `register-image`: from a manifest (`--image-location`), or from a kernel
/// and a root disk image or snapshot.
pub fn register_image_request(args: &RegisterImage) -> Result<api::RegisterImageRequest, CliError> {
    // Paths name files in hearthd's image import directory (relative to it, or absolute inside it):
    // sent as given, never resolved against this shell's directory.
    let path = |path: &Option<PathBuf>| path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let block_device_mappings = params::block_device_mappings("--block-device-mappings", &args.block_device_mappings)?;
    if args.image_location.is_none() {
        let root_device_name = args.root_device_name.as_deref().unwrap_or(DEFAULT_ROOT_DEVICE_NAME);
        let mapped_root_snapshot = block_device_mappings.iter().any(|m| {
            m.device_name == root_device_name && m.ebs.as_ref().is_some_and(|ebs| !ebs.snapshot_id.is_empty())
        });
        if args.kernel.is_none() && args.kernel_id.is_none() {
            return Err(CliError::Usage(
                "register-image: give --image-location PATH (an image.json manifest), or --kernel PATH (or \
                 --kernel-id IMAGE_ID) with --root-image PATH or --root-snapshot-id ID"
                    .into(),
            ));
        }
        if args.root_image.is_none() && args.root_snapshot_id.is_none() && !mapped_root_snapshot {
            return Err(CliError::Usage(format!(
                "register-image: --kernel needs a root disk: --root-image PATH, --root-snapshot-id ID, or \
                 Ebs={{SnapshotId=ID}} for {root_device_name} in --block-device-mappings"
            )));
        }
    }
    Ok(api::RegisterImageRequest {
        name: non_empty(args.name.clone()),
        description: non_empty(args.description.clone()),
        architecture: non_empty(args.architecture.clone()),
        kernel_path: path(&args.kernel),
        initrd_path: path(&args.initrd),
        root_image_path: path(&args.root_image),
        root_device_name: non_empty(args.root_device_name.clone()),
        root_device_type: args.root_device_type.map(|t| t.as_str().to_owned()).unwrap_or_default(),
        command_line: non_empty(args.command_line.clone()),
        block_device_mappings,
        dry_run: args.dry_run.dry_run,
        image_location: path(&args.image_location),
        root_snapshot_id: non_empty(args.root_snapshot_id.clone()),
        kernel_id: non_empty(args.kernel_id.clone()),
        ramdisk_id: non_empty(args.ramdisk_id.clone()),
    })
}

/// The CreateVolume request of `create-volume`.
pub fn create_volume_request(args: &CreateVolume) -> Result<api::CreateVolumeRequest, CliError> {
    if args.size.is_none() && args.snapshot_id.is_none() {
        return Err(CliError::Usage(
            "create-volume: give --size GIB, or --snapshot-id ID (the volume then has the snapshot's size)".into(),
        ));
    }
    Ok(api::CreateVolumeRequest {
        availability_zone: args.availability_zone.clone(),
        size_gib: args.size,
        volume_type: args.volume_type.map(|t| t.as_str().to_owned()).unwrap_or_default(),
        iops: args.iops,
        throughput_mibps: args.throughput,
        encrypted: args.encrypted,
        snapshot_id: non_empty(args.snapshot_id.clone()),
        tag_specifications: params::tag_specifications("--tag-specifications", &args.tag_specifications)?,
        client_token: non_empty(args.client_token.clone()),
        dry_run: args.dry_run.dry_run,
        kms_key_id: non_empty(args.kms_key_id.clone()),
    })
}

/// The ModifyVolume request of `modify-volume`.
pub fn modify_volume_request(args: &ModifyVolume) -> Result<api::ModifyVolumeRequest, CliError> {
    if args.size.is_none() && args.volume_type.is_none() && args.iops.is_none() && args.throughput.is_none() {
        return Err(CliError::Usage(
            "modify-volume: give a change: --size GIB, --volume-type TYPE, --iops N or --throughput MIBPS".into(),
        ));
    }
    Ok(api::ModifyVolumeRequest {
        volume_id: args.volume_id.clone(),
        size_gib: args.size,
        volume_type: args.volume_type.map(|t| t.as_str().to_owned()).unwrap_or_default(),
        iops: args.iops,
        throughput_mibps: args.throughput,
        dry_run: args.dry_run.dry_run,
    })
}

/// The CopySnapshot request of `copy-snapshot`.
pub fn copy_snapshot_request(args: &CopySnapshot) -> Result<api::CopySnapshotRequest, CliError> {
    Ok(api::CopySnapshotRequest {
        source_snapshot_id: args.source_snapshot_id.clone(),
        source_region: non_empty(args.source_region.clone()),
        description: non_empty(args.description.clone()),
        encrypted: args.encrypted,
        kms_key_id: non_empty(args.kms_key_id.clone()),
        tag_specifications: params::tag_specifications("--tag-specifications", &args.tag_specifications)?,
        dry_run: args.dry_run.dry_run,
    })
}

/// Opens `path` for a private key before the key exists: mode 0600, never over an existing file.
fn create_key_file(path: &Path) -> Result<File, CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CliError::Local(format!("cannot create {} for the private key: {e}", path.display())))
}

/// Runs one command; what it prints goes to stdout, progress and errors to stderr.
pub async fn run(session: &mut Session, format: OutputFormat, command: Command) -> Result<(), CliError> {
    match command {
        Command::RunInstances(args) => {
            let request = run_instances_request(&args)?;
            let reservation = call!(session, run_instances, "RunInstances", request)?;
            print(&render(
                format,
                || json::reservation(&reservation),
                || table::reservation(&reservation),
            ))?;
            let known = reservation
                .instances
                .iter()
                .map(|i| {
                    (
                        i.instance_id.clone(),
                        i.state.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
                    )
                })
                .collect();
            wait_if_asked(session, &args.wait, Goal::Running, known).await
        }
        Command::DescribeInstances {
            instance_ids,
            filters,
            max_results,
            next_token,
            dry_run,
        } => {
            let request = api::DescribeInstancesRequest {
                instance_ids,
                filters: params::filters("--filters", &filters.filters)?,
                max_results: max_results.unwrap_or(0),
                next_token: non_empty(next_token),
                dry_run: dry_run.dry_run,
            };
            let response = call!(session, describe_instances, "DescribeInstances", request)?;
            print(&render(
                format,
                || json::describe_instances(&response),
                || table::instances(&response),
            ))
        }
        Command::DescribeInstanceStatus {
            instance_ids,
            filters,
            include_all_instances,
            max_results,
            next_token,
        } => {
            let request = api::DescribeInstanceStatusRequest {
                instance_ids,
                filters: params::filters("--filters", &filters.filters)?,
                include_all_instances,
                max_results: max_results.unwrap_or(0),
                next_token: non_empty(next_token),
            };
            let response = call!(session, describe_instance_status, "DescribeInstanceStatus", request)?;
            print(&render(
                format,
                || json::describe_instance_status(&response),
                || table::instance_statuses(&response),
            ))
        }
        Command::StartInstances { ids, dry_run, wait } => {
            let request = api::InstanceIdsRequest {
                instance_ids: ids.instance_ids,
                dry_run: dry_run.dry_run,
            };
            let changes = call!(session, start_instances, "StartInstances", request)?;
            print(&render(
                format,
                || json::state_changes("StartingInstances", &changes),
                || table::state_changes(&changes),
            ))?;
            wait_if_asked(session, &wait, Goal::Running, known_states(&changes)).await
        }
        Command::StopInstances {
            ids,
            force,
            hibernate,
            dry_run,
            wait,
        } => {
            let request = api::StopInstancesRequest {
                instance_ids: ids.instance_ids,
                force,
                hibernate,
                dry_run: dry_run.dry_run,
            };
            let changes = call!(session, stop_instances, "StopInstances", request)?;
            print(&render(
                format,
                || json::state_changes("StoppingInstances", &changes),
                || table::state_changes(&changes),
            ))?;
            wait_if_asked(session, &wait, Goal::Stopped, known_states(&changes)).await
        }
        Command::RebootInstances { ids, dry_run, wait } => {
            let known = ids.instance_ids.iter().map(|id| (id.clone(), String::new())).collect();
            let request = api::InstanceIdsRequest {
                instance_ids: ids.instance_ids,
                dry_run: dry_run.dry_run,
            };
            call!(session, reboot_instances, "RebootInstances", request)?;
            wait_if_asked(session, &wait, Goal::Running, known).await
        }
        Command::TerminateInstances { ids, dry_run, wait } => {
            let request = api::InstanceIdsRequest {
                instance_ids: ids.instance_ids,
                dry_run: dry_run.dry_run,
            };
            let changes = call!(session, terminate_instances, "TerminateInstances", request)?;
            print(&render(
                format,
                || json::state_changes("TerminatingInstances", &changes),
                || table::state_changes(&changes),
            ))?;
            wait_if_asked(session, &wait, Goal::Terminated, known_states(&changes)).await
        }
        Command::ModifyInstanceAttribute(args) => {
            let request = modify_instance_attribute_request(&args)?;
            call!(session, modify_instance_attribute, "ModifyInstanceAttribute", request)?;
            Ok(())
        }
        Command::DescribeInstanceAttribute {
            instance_id,
            attribute,
            dry_run,
        } => {
            let request = api::DescribeInstanceAttributeRequest {
                instance_id,
                attribute: attribute.as_str().to_owned(),
                dry_run: dry_run.dry_run,
            };
            let response = call!(
                session,
                describe_instance_attribute,
                "DescribeInstanceAttribute",
                request
            )?;
            print(&render(
                format,
                || json::instance_attribute(&response),
                || table::instance_attribute(&response),
            ))
        }
        Command::GetConsoleOutput {
            instance_id,
            latest,
            dry_run,
        } => {
            let request = api::GetConsoleOutputRequest {
                instance_id,
                latest,
                dry_run: dry_run.dry_run,
            };
            let response = call!(session, get_console_output, "GetConsoleOutput", request)?;
            if format == OutputFormat::Json {
                return print(&json::to_text(&json::console_output(&response)));
            }
            let console = base64::decode(&response.output).unwrap_or_else(|_| response.output.clone().into_bytes());
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&console)
                .and_then(|()| stdout.flush())
                .map_err(|e| CliError::Local(format!("stdout: {e}")))
        }
        Command::DescribeInstanceTypes {
            instance_types,
            filters,
        } => {
            let request = api::DescribeInstanceTypesRequest {
                instance_types,
                filters: params::filters("--filters", &filters.filters)?,
            };
            let response = call!(session, describe_instance_types, "DescribeInstanceTypes", request)?;
            print(&render(
                format,
                || json::describe_instance_types(&response),
                || table::instance_types(&response),
            ))
        }
        Command::RegisterImage(args) => {
            let request = register_image_request(&args)?;
            let response = call!(session, register_image, "RegisterImage", request)?;
            print(&render(
                format,
                || json::image_id(&response),
                || table::single("IMAGE", &response.image_id),
            ))
        }
        Command::DescribeImages { image_ids, filters } => {
            let request = api::DescribeImagesRequest {
                image_ids,
                filters: params::filters("--filters", &filters.filters)?,
            };
            let response = call!(session, describe_images, "DescribeImages", request)?;
            print(&render(
                format,
                || json::describe_images(&response),
                || table::images(&response),
            ))
        }
        Command::DeregisterImage { image_id, dry_run } => {
            let request = api::ImageIdRequest {
                image_id,
                dry_run: dry_run.dry_run,
            };
            call!(session, deregister_image, "DeregisterImage", request)?;
            Ok(())
        }
        Command::CreateImage {
            instance_id,
            name,
            description,
            no_reboot,
            dry_run,
        } => {
            let request = api::CreateImageRequest {
                instance_id,
                name,
                description: non_empty(description),
                no_reboot,
                dry_run: dry_run.dry_run,
            };
            let response = call!(session, create_image, "CreateImage", request)?;
            print(&render(
                format,
                || json::image_id(&response),
                || table::single("IMAGE", &response.image_id),
            ))
        }
        Command::CreateKeyPair {
            key_name,
            key_type,
            save,
            dry_run,
        } => {
            let request = api::CreateKeyPairRequest {
                key_name,
                key_type: key_type.map(|t| t.as_str().to_owned()).unwrap_or_default(),
                dry_run: dry_run.dry_run,
            };
            create_key_pair(session, format, request, save).await
        }
        Command::ImportKeyPair {
            key_name,
            public_key_material,
            dry_run,
        } => {
            let material = params::load_text("--public-key-material", &public_key_material)?;
            let request = api::ImportKeyPairRequest {
                key_name,
                public_key_material: material.trim().to_owned(),
                dry_run: dry_run.dry_run,
            };
            let response = call!(session, import_key_pair, "ImportKeyPair", request)?;
            print(&render(
                format,
                || json::imported_key_pair(&response),
                || table::imported_key_pair(&response),
            ))
        }
        Command::DescribeKeyPairs { key_names, filters } => {
            let request = api::DescribeKeyPairsRequest {
                key_names,
                filters: params::filters("--filters", &filters.filters)?,
            };
            let response = call!(session, describe_key_pairs, "DescribeKeyPairs", request)?;
            print(&render(
                format,
                || json::describe_key_pairs(&response),
                || table::key_pairs(&response),
            ))
        }
        Command::DeleteKeyPair { key_name, dry_run } => {
            let request = api::DeleteKeyPairRequest {
                key_name,
                dry_run: dry_run.dry_run,
            };
            call!(session, delete_key_pair, "DeleteKeyPair", request)?;
            Ok(())
        }
        Command::CreateTags {
            resources,
            tags,
            dry_run,
        } => {
            let request = api::CreateTagsRequest {
                resources,
                tags: params::tags("--tags", &tags)?,
                dry_run: dry_run.dry_run,
            };
            call!(session, create_tags, "CreateTags", request)?;
            Ok(())
        }
        Command::DeleteTags {
            resources,
            tags,
            dry_run,
        } => {
            let request = api::DeleteTagsRequest {
                resources,
                tags: params::tags("--tags", &tags)?,
                dry_run: dry_run.dry_run,
            };
            call!(session, delete_tags, "DeleteTags", request)?;
            Ok(())
        }
        Command::DescribeTags {
            filters,
            max_results,
            next_token,
        } => {
            let request = api::DescribeTagsRequest {
                filters: params::filters("--filters", &filters.filters)?,
                max_results: max_results.unwrap_or(0),
                next_token: non_empty(next_token),
            };
            let response = call!(session, describe_tags, "DescribeTags", request)?;
            print(&render(
                format,
                || json::describe_tags(&response),
                || table::tags(&response),
            ))
        }
        Command::CreateVolume(args) => {
            let request = create_volume_request(&args)?;
            let volume = call!(session, create_volume, "CreateVolume", request)?;
            print(&render(format, || json::volume(&volume), || table::volume(&volume)))?;
            let known = vec![(volume.volume_id.clone(), wait::volume_state(&volume))];
            wait_if_asked(session, &args.wait, Goal::VolumeAvailable, known).await
        }
        Command::DescribeVolumes { volume_ids, filters } => {
            let request = api::DescribeVolumesRequest {
                volume_ids,
                filters: params::filters("--filters", &filters.filters)?,
            };
            let response = call!(session, describe_volumes, "DescribeVolumes", request)?;
            print(&render(
                format,
                || json::describe_volumes(&response),
                || table::volumes(&response),
            ))
        }
        Command::AttachVolume {
            volume_id,
            instance_id,
            device,
            dry_run,
            wait,
        } => {
            let request = api::AttachVolumeRequest {
                volume_id,
                instance_id,
                device,
                dry_run: dry_run.dry_run,
            };
            let attachment = call!(session, attach_volume, "AttachVolume", request)?;
            print(&render(
                format,
                || json::volume_attachment(&attachment),
                || table::volume_attachment(&attachment),
            ))?;
            let known = vec![(attachment.volume_id.clone(), attachment.state.clone())];
            wait_if_asked(session, &wait, Goal::VolumeInUse, known).await
        }
        Command::DetachVolume {
            volume_id,
            instance_id,
            device,
            force,
            dry_run,
            wait,
        } => {
            let request = api::DetachVolumeRequest {
                volume_id,
                instance_id: non_empty(instance_id),
                device: non_empty(device),
                force,
                dry_run: dry_run.dry_run,
            };
            let attachment = call!(session, detach_volume, "DetachVolume", request)?;
            print(&render(
                format,
                || json::volume_attachment(&attachment),
                || table::volume_attachment(&attachment),
            ))?;
            let known = vec![(attachment.volume_id.clone(), attachment.state.clone())];
            wait_if_asked(session, &wait, Goal::VolumeAvailable, known).await
        }
        Command::DeleteVolume {
            volume_id,
            dry_run,
            wait,
        } => {
            let known = vec![(volume_id.clone(), String::new())];
            let request = api::VolumeIdRequest {
                volume_id,
                dry_run: dry_run.dry_run,
            };
            call!(session, delete_volume, "DeleteVolume", request)?;
            wait_if_asked(session, &wait, Goal::VolumeDeleted, known).await
        }
        Command::ModifyVolume(args) => {
            let request = modify_volume_request(&args)?;
            let modification = call!(session, modify_volume, "ModifyVolume", request)?;
            print(&render(
                format,
                || json::modify_volume(&modification),
                || table::volume_modifications(std::slice::from_ref(&modification)),
            ))
        }
        Command::DescribeVolumesModifications { volume_ids, filters } => {
            let request = api::DescribeVolumesModificationsRequest {
                volume_ids,
                filters: params::filters("--filters", &filters.filters)?,
            };
            let response = call!(
                session,
                describe_volumes_modifications,
                "DescribeVolumesModifications",
                request
            )?;
            print(&render(
                format,
                || json::describe_volumes_modifications(&response),
                || table::volume_modifications(&response.volumes_modifications),
            ))
        }
        Command::CreateSnapshot {
            volume_id,
            description,
            tag_specifications,
            dry_run,
            wait,
        } => {
            let request = api::CreateSnapshotRequest {
                volume_id,
                description: non_empty(description),
                tag_specifications: params::tag_specifications("--tag-specifications", &tag_specifications)?,
                dry_run: dry_run.dry_run,
            };
            let snapshot = call!(session, create_snapshot, "CreateSnapshot", request)?;
            print(&render(
                format,
                || json::snapshot(&snapshot),
                || table::snapshots(std::slice::from_ref(&snapshot)),
            ))?;
            let known = vec![(snapshot.snapshot_id.clone(), snapshot.state.clone())];
            wait_if_asked(session, &wait, Goal::SnapshotCompleted, known).await
        }
        Command::DescribeSnapshots {
            snapshot_ids,
            owner_ids,
            filters,
        } => {
            let request = api::DescribeSnapshotsRequest {
                snapshot_ids,
                filters: params::filters("--filters", &filters.filters)?,
                owner_ids,
            };
            let response = call!(session, describe_snapshots, "DescribeSnapshots", request)?;
            print(&render(
                format,
                || json::describe_snapshots(&response),
                || table::snapshots(&response.snapshots),
            ))
        }
        Command::DeleteSnapshot { snapshot_id, dry_run } => {
            let request = api::SnapshotIdRequest {
                snapshot_id,
                dry_run: dry_run.dry_run,
            };
            call!(session, delete_snapshot, "DeleteSnapshot", request)?;
            Ok(())
        }
        Command::CopySnapshot(args) => {
            let request = copy_snapshot_request(&args)?;
            let response = call!(session, copy_snapshot, "CopySnapshot", request)?;
            print(&render(
                format,
                || json::snapshot_id(&response),
                || table::single("SNAPSHOT", &response.snapshot_id),
            ))?;
            let known = vec![(response.snapshot_id.clone(), String::new())];
            wait_if_asked(session, &args.wait, Goal::SnapshotCompleted, known).await
        }
        Command::CreateVpc {
            cidr_block,
            tag_specifications,
            dry_run,
        } => {
            let request = api::CreateVpcRequest {
                cidr_block,
                tag_specifications: params::tag_specifications("--tag-specifications", &tag_specifications)?,
                dry_run: dry_run.dry_run,
            };
            let vpc = call!(session, create_vpc, "CreateVpc", request)?;
            print(&render(
                format,
                || json::create_vpc(&vpc),
                || table::vpcs(std::slice::from_ref(&vpc)),
            ))
        }
        Command::DescribeVpcs { vpc_ids, filters } => {
            let request = api::DescribeVpcsRequest {
                vpc_ids,
                filters: params::filters("--filters", &filters.filters)?,
            };
            let response = call!(session, describe_vpcs, "DescribeVpcs", request)?;
            print(&render(
                format,
                || json::describe_vpcs(&response),
                || table::vpcs(&response.vpcs),
            ))
        }
        Command::DeleteVpc { vpc_id, dry_run } => {
            let request = api::VpcIdRequest {
                vpc_id,
                dry_run: dry_run.dry_run,
            };
            call!(session, delete_vpc, "DeleteVpc", request)?;
            Ok(())
        }
        Command::CreateSubnet {
            vpc_id,
            cidr_block,
            availability_zone,
            tag_specifications,
            dry_run,
        } => {
            let request = api::CreateSubnetRequest {
                vpc_id,
                cidr_block,
                availability_zone: non_empty(availability_zone),
                tag_specifications: params::tag_specifications("--tag-specifications", &tag_specifications)?,
                dry_run: dry_run.dry_run,
            };
            let subnet = call!(session, create_subnet, "CreateSubnet", request)?;
            print(&render(
                format,
                || json::create_subnet(&subnet),
                || table::subnets(std::slice::from_ref(&subnet)),
            ))
        }
        Command::DescribeSubnets { subnet_ids, filters } => {
            let request = api::DescribeSubnetsRequest {
                subnet_ids,
                filters: params::filters("--filters", &filters.filters)?,
            };
            let response = call!(session, describe_subnets, "DescribeSubnets", request)?;
            print(&render(
                format,
                || json::describe_subnets(&response),
                || table::subnets(&response.subnets),
            ))
        }
        Command::DeleteSubnet { subnet_id, dry_run } => {
            let request = api::SubnetIdRequest {
                subnet_id,
                dry_run: dry_run.dry_run,
            };
            call!(session, delete_subnet, "DeleteSubnet", request)?;
            Ok(())
        }
        Command::CreateSecurityGroup {
            group_name,
            description,
            vpc_id,
            tag_specifications,
            dry_run,
        } => {
            let request = api::CreateSecurityGroupRequest {
                group_name,
                description,
                vpc_id: non_empty(vpc_id),
                tag_specifications: params::tag_specifications("--tag-specifications", &tag_specifications)?,
                dry_run: dry_run.dry_run,
            };
            let response = call!(session, create_security_group, "CreateSecurityGroup", request)?;
            print(&render(
                format,
                || json::security_group_id(&response),
                || table::single("GROUP", &response.group_id),
            ))
        }
        Command::DescribeSecurityGroups {
            group_ids,
            group_names,
            filters,
        } => {
            let request = api::DescribeSecurityGroupsRequest {
                group_ids,
                group_names,
                filters: params::filters("--filters", &filters.filters)?,
            };
            let response = call!(session, describe_security_groups, "DescribeSecurityGroups", request)?;
            print(&render(
                format,
                || json::describe_security_groups(&response),
                || table::security_groups(&response),
            ))
        }
        Command::DeleteSecurityGroup {
            group_id,
            group_name,
            dry_run,
        } => {
            let request = api::DeleteSecurityGroupRequest {
                group_id: non_empty(group_id),
                group_name: non_empty(group_name),
                dry_run: dry_run.dry_run,
            };
            call!(session, delete_security_group, "DeleteSecurityGroup", request)?;
            Ok(())
        }
        Command::AuthorizeSecurityGroupIngress(args) => {
            let request = security_group_rules_request(&args)?;
            let rules = request.clone();
            call!(
                session,
                authorize_security_group_ingress,
                "AuthorizeSecurityGroupIngress",
                request
            )?;
            print(&render(format, json::return_true, || table::rules(&rules, "ingress")))
        }
        Command::AuthorizeSecurityGroupEgress(args) => {
            let request = security_group_rules_request(&args)?;
            let rules = request.clone();
            call!(
                session,
                authorize_security_group_egress,
                "AuthorizeSecurityGroupEgress",
                request
            )?;
            print(&render(format, json::return_true, || table::rules(&rules, "egress")))
        }
        Command::RevokeSecurityGroupIngress(args) => {
            let request = security_group_rules_request(&args)?;
            let rules = request.clone();
            call!(
                session,
                revoke_security_group_ingress,
                "RevokeSecurityGroupIngress",
                request
            )?;
            print(&render(format, json::return_true, || table::rules(&rules, "ingress")))
        }
        Command::RevokeSecurityGroupEgress(args) => {
            let request = security_group_rules_request(&args)?;
            let rules = request.clone();
            call!(
                session,
                revoke_security_group_egress,
                "RevokeSecurityGroupEgress",
                request
            )?;
            print(&render(format, json::return_true, || table::rules(&rules, "egress")))
        }
        Command::AllocateAddress {
            domain,
            address,
            tag_specifications,
            dry_run,
        } => {
            let request = api::AllocateAddressRequest {
                domain: non_empty(domain),
                address: non_empty(address),
                tag_specifications: params::tag_specifications("--tag-specifications", &tag_specifications)?,
                dry_run: dry_run.dry_run,
            };
            let address = call!(session, allocate_address, "AllocateAddress", request)?;
            print(&render(
                format,
                || json::allocate_address(&address),
                || table::addresses(std::slice::from_ref(&address)),
            ))
        }
        Command::AssociateAddress(args) => {
            let request = associate_address_request(&args)?;
            let response = call!(session, associate_address, "AssociateAddress", request)?;
            print(&render(
                format,
                || json::associate_address(&response),
                || table::single("ASSOCIATION", &response.association_id),
            ))
        }
        Command::DisassociateAddress {
            association_id,
            public_ip,
            dry_run,
        } => {
            let request = api::DisassociateAddressRequest {
                association_id: non_empty(association_id),
                public_ip: non_empty(public_ip),
                dry_run: dry_run.dry_run,
            };
            call!(session, disassociate_address, "DisassociateAddress", request)?;
            Ok(())
        }
        Command::ReleaseAddress {
            allocation_id,
            public_ip,
            dry_run,
        } => {
            let request = api::ReleaseAddressRequest {
                allocation_id: non_empty(allocation_id),
                public_ip: non_empty(public_ip),
                dry_run: dry_run.dry_run,
            };
            call!(session, release_address, "ReleaseAddress", request)?;
            Ok(())
        }
        Command::DescribeAddresses {
            allocation_ids,
            public_ips,
            filters,
        } => {
            let request = api::DescribeAddressesRequest {
                allocation_ids,
                public_ips,
                filters: params::filters("--filters", &filters.filters)?,
            };
            let response = call!(session, describe_addresses, "DescribeAddresses", request)?;
            print(&render(
                format,
                || json::describe_addresses(&response),
                || table::addresses(&response.addresses),
            ))
        }
        Command::ModifyInstanceMetadataOptions(args) => {
            let request = modify_instance_metadata_options_request(&args);
            let options = call!(
                session,
                modify_instance_metadata_options,
                "ModifyInstanceMetadataOptions",
                request
            )?;
            print(&render(
                format,
                || json::modify_instance_metadata_options(&args.instance_id, &options),
                || table::instance_metadata_options(&args.instance_id, &options),
            ))
        }
        Command::DescribeRegions => {
            let response = call!(
                session,
                describe_regions,
                "DescribeRegions",
                api::DescribeRegionsRequest {}
            )?;
            print(&render(
                format,
                || json::describe_regions(&response),
                || table::regions(&response),
            ))
        }
        Command::DescribeAvailabilityZones { zone_names } => {
            let request = api::DescribeAvailabilityZonesRequest { zone_names };
            let response = call!(
                session,
                describe_availability_zones,
                "DescribeAvailabilityZones",
                request
            )?;
            print(&render(
                format,
                || json::describe_availability_zones(&response),
                || table::availability_zones(&response),
            ))
        }
    }
}

/// `create-key-pair`: the private key is shown once, so `--save` opens its file before asking for the key.
async fn create_key_pair(
    session: &mut Session,
    format: OutputFormat,
    request: api::CreateKeyPairRequest,
    save: Option<PathBuf>,
) -> Result<(), CliError> {
    let file = save.as_deref().map(create_key_file).transpose()?;
    let response = match call!(session, create_key_pair, "CreateKeyPair", request) {
        Ok(response) => response,
        Err(error) => {
            if let Some(path) = &save {
                let _ = std::fs::remove_file(path);
            }
            return Err(error);
        }
    };
    let (Some(mut file), Some(path)) = (file, save) else {
        // Printed alone, so that `hearth create-key-pair --key-name k > k.pem` makes a usable key file.
        return match format {
            OutputFormat::Json => print(&json::to_text(&json::key_pair(&response))),
            OutputFormat::Table | OutputFormat::Text => {
                eprintln!(
                    "Created key pair {} ({}), fingerprint {}",
                    response.key_name, response.key_pair_id, response.key_fingerprint
                );
                let mut material = response.key_material;
                if !material.ends_with('\n') {
                    material.push('\n');
                }
                print(&material)
            }
        };
    };
    let mut material = response.key_material.clone();
    if !material.ends_with('\n') {
        material.push('\n');
    }
    file.write_all(material.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| CliError::Local(format!("writing the private key to {}: {e}", path.display())))?;
    let mut summary = json::key_pair(&response);
    if let Value::Object(map) = &mut summary {
        map.remove("KeyMaterial");
    }
    let mut table = Table::new(&["NAME", "ID", "FINGERPRINT", "SAVED-TO"]);
    table.row(vec![
        response.key_name.clone(),
        response.key_pair_id.clone(),
        response.key_fingerprint.clone(),
        path.display().to_string(),
    ]);
    print(&render(format, || summary, || table))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn command(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("hearth").chain(args.iter().copied()))
            .unwrap()
            .command
    }

    #[test]
    fn run_instances_request_from_aws_flags() {
        let Command::RunInstances(args) = command(&[
            "run-instances",
            "--image-id",
            "ami-0001",
            "--instance-type",
            "t3.small",
            "--count",
            "2",
            "--key-name",
            "me",
            "--user-data",
            "#!/bin/sh\necho hi",
            "--block-device-mappings",
            "DeviceName=/dev/xvda,Ebs={VolumeSize=8,DeleteOnTermination=false}",
            "--tag-specifications",
            "ResourceType=instance,Tags=[{Key=Name,Value=web}]",
            "--client-token",
            "tok",
            "--disable-api-termination",
            "--instance-initiated-shutdown-behavior",
            "terminate",
            "--placement",
            "AvailabilityZone=hearth-1a",
        ]) else {
            panic!("not run-instances")
        };
        let request = run_instances_request(&args).unwrap();
        assert_eq!(request.image_id, "ami-0001");
        assert_eq!(request.instance_type, "t3.small");
        assert_eq!((request.min_count, request.max_count), (2, 2));
        assert_eq!(request.key_name, "me");
        assert_eq!(request.user_data, b"#!/bin/sh\necho hi");
        assert_eq!(
            request.block_device_mappings[0].ebs.as_ref().unwrap().volume_size_gib,
            Some(8)
        );
        assert_eq!(request.tag_specifications[0].tags[0].value, "web");
        assert_eq!(request.client_token, "tok");
        assert!(request.disable_api_termination);
        assert_eq!(request.instance_initiated_shutdown_behavior, "terminate");
        assert_eq!(request.availability_zone, "hearth-1a");
        assert!(!request.dry_run);
    }

    #[test]
    fn run_instances_counts() {
        let counts = |args: &[&str]| {
            let mut full = vec!["run-instances", "--image-id", "ami-1"];
            full.extend_from_slice(args);
            let Command::RunInstances(args) = command(&full) else {
                panic!()
            };
            run_instances_request(&args).map(|r| (r.min_count, r.max_count))
        };
        assert_eq!(counts(&[]).unwrap(), (0, 0));
        assert_eq!(counts(&["--count", "1:3"]).unwrap(), (1, 3));
        assert_eq!(counts(&["--min-count", "2"]).unwrap(), (2, 2));
        assert_eq!(counts(&["--max-count", "4"]).unwrap(), (4, 4));
        assert_eq!(counts(&["--min-count", "2", "--max-count", "4"]).unwrap(), (2, 4));
        assert_eq!(
            counts(&["--min-count", "5", "--max-count", "4"])
                .unwrap_err()
                .exit_code(),
            2
        );
    }

    #[test]
    fn modify_instance_attribute_forms() {
        let modify = |args: &[&str]| {
            let mut full = vec!["modify-instance-attribute", "--instance-id", "i-1"];
            full.extend_from_slice(args);
            let Command::ModifyInstanceAttribute(args) = command(&full) else {
                panic!()
            };
            modify_instance_attribute_request(&args)
        };
        assert_eq!(
            modify(&["--no-disable-api-termination"])
                .unwrap()
                .disable_api_termination,
            Some(false)
        );
        assert_eq!(
            modify(&["--instance-type", "Value=t3.large"])
                .unwrap()
                .instance_type
                .as_deref(),
            Some("t3.large")
        );
        assert_eq!(
            modify(&["--instance-initiated-shutdown-behavior", "terminate"])
                .unwrap()
                .instance_initiated_shutdown_behavior
                .as_deref(),
            Some("terminate")
        );
        assert_eq!(
            modify(&["--user-data", "hello"]).unwrap().user_data.as_deref(),
            Some(&b"hello"[..])
        );
        let generic = modify(&["--attribute", "disableApiTermination", "--value", "true"]).unwrap();
        assert_eq!(generic.disable_api_termination, Some(true));
        assert_eq!(modify(&[]).unwrap_err().exit_code(), 2);
        assert_eq!(
            modify(&["--attribute", "rootDeviceName", "--value", "/dev/xvdb"])
                .unwrap_err()
                .exit_code(),
            2
        );
    }

    #[test]
    fn run_instances_network_flags() {
        let Command::RunInstances(args) = command(&[
            "run-instances",
            "--image-id",
            "ami-1",
            "--subnet-id",
            "subnet-0001",
            "--security-group-ids",
            "sg-0001",
            "sg-0002",
            "--private-ip-address",
            "10.0.1.10",
            "--metadata-options",
            "HttpTokens=required,HttpEndpoint=enabled,HttpPutResponseHopLimit=2",
        ]) else {
            panic!()
        };
        let request = run_instances_request(&args).unwrap();
        assert_eq!(request.subnet_id, "subnet-0001");
        assert_eq!(request.security_group_ids, ["sg-0001", "sg-0002"]);
        assert!(request.security_groups.is_empty());
        assert_eq!(request.private_ip_address, "10.0.1.10");
        assert_eq!(
            request.metadata_options,
            Some(api::InstanceMetadataOptions {
                http_tokens: "required".into(),
                http_endpoint: "enabled".into(),
                http_put_response_hop_limit: 2,
            })
        );

        let Command::RunInstances(args) = command(&[
            "run-instances",
            "--image-id",
            "ami-1",
            "--security-groups",
            "default",
            "web",
            "--metadata-options",
            r#"{"HttpTokens": "optional"}"#,
        ]) else {
            panic!()
        };
        let request = run_instances_request(&args).unwrap();
        assert_eq!(request.security_groups, ["default", "web"]);
        assert_eq!(
            (request.subnet_id.as_str(), request.private_ip_address.as_str()),
            ("", "")
        );
        assert_eq!(request.metadata_options.unwrap().http_tokens, "optional");

        let Command::RunInstances(args) = command(&["run-instances", "--image-id", "ami-1"]) else {
            panic!()
        };
        assert_eq!(run_instances_request(&args).unwrap().metadata_options, None);
        let Command::RunInstances(args) =
            command(&["run-instances", "--image-id", "ami-1", "--metadata-options", "Tokens=1"])
        else {
            panic!()
        };
        assert_eq!(run_instances_request(&args).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn modify_instance_attribute_groups_alone() {
        let modify = |args: &[&str]| {
            let mut full = vec!["modify-instance-attribute", "--instance-id", "i-1"];
            full.extend_from_slice(args);
            let Command::ModifyInstanceAttribute(args) = command(&full) else {
                panic!()
            };
            modify_instance_attribute_request(&args)
        };
        let request = modify(&["--groups", "sg-1", "sg-2"]).unwrap();
        assert_eq!(request.groups, ["sg-1", "sg-2"]);
        assert_eq!(request.instance_type, None);
        assert!(modify(&["--instance-type", "t3.large"]).unwrap().groups.is_empty());
        let error = modify(&["--groups", "sg-1", "--disable-api-termination"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(
            error.to_string().contains("--groups changes the security groups alone"),
            "{error}"
        );
    }

    fn rules(args: &[&str]) -> Result<api::SecurityGroupRulesRequest, CliError> {
        let mut full = vec!["authorize-security-group-ingress"];
        full.extend_from_slice(args);
        let Command::AuthorizeSecurityGroupIngress(args) = command(&full) else {
            panic!()
        };
        security_group_rules_request(&args)
    }

    fn cidr(cidr: &str) -> api::IpRange {
        api::IpRange {
            cidr_ip: cidr.into(),
            description: String::new(),
        }
    }

    #[test]
    fn security_group_rules_from_the_shortcut_flags() {
        let request = rules(&[
            "--group-id",
            "sg-1",
            "--protocol",
            "tcp",
            "--port",
            "1000-2000",
            "--cidr",
            "10.0.0.0/8",
            "--dry-run",
        ])
        .unwrap();
        assert_eq!(
            request,
            api::SecurityGroupRulesRequest {
                group_id: "sg-1".into(),
                group_name: String::new(),
                ip_permissions: vec![api::IpPermission {
                    ip_protocol: "tcp".into(),
                    from_port: Some(1000),
                    to_port: Some(2000),
                    ip_ranges: vec![cidr("10.0.0.0/8")],
                    user_id_group_pairs: vec![],
                }],
                dry_run: true,
            }
        );
        // From another group, by name of the group changed.
        let request = rules(&[
            "--group-name",
            "db",
            "--protocol",
            "udp",
            "--port",
            "53",
            "--source-group",
            "sg-2",
            "--group-owner",
            "000000000000",
        ])
        .unwrap();
        assert_eq!((request.group_id.as_str(), request.group_name.as_str()), ("", "db"));
        let permission = &request.ip_permissions[0];
        assert_eq!((permission.from_port, permission.to_port), (Some(53), Some(53)));
        assert!(permission.ip_ranges.is_empty());
        assert_eq!(
            permission.user_id_group_pairs,
            [api::UserIdGroupPair {
                group_id: "sg-2".into(),
                description: String::new(),
                user_id: "000000000000".into(),
            }]
        );
        // icmp: --port is the type; all: no ports needed, `all` is sent as -1.
        let icmp = &rules(&[
            "--group-id",
            "sg-1",
            "--protocol",
            "icmp",
            "--port",
            "8",
            "--cidr",
            "0.0.0.0/0",
        ])
        .unwrap()
        .ip_permissions[0];
        assert_eq!(
            (icmp.ip_protocol.as_str(), icmp.from_port, icmp.to_port),
            ("icmp", Some(8), Some(-1))
        );
        let icmp = &rules(&["--group-id", "sg-1", "--protocol", "icmp", "--cidr", "0.0.0.0/0"])
            .unwrap()
            .ip_permissions[0];
        assert_eq!((icmp.from_port, icmp.to_port), (None, None));
        let all = &rules(&[
            "--group-id",
            "sg-1",
            "--protocol",
            "all",
            "--cidr",
            "0.0.0.0/0",
            "--source-group",
            "sg-1",
        ])
        .unwrap()
        .ip_permissions[0];
        assert_eq!(
            (all.ip_protocol.as_str(), all.from_port, all.to_port),
            ("-1", None, None)
        );
        assert_eq!((all.ip_ranges.len(), all.user_id_group_pairs.len()), (1, 1));
        let every_port = &rules(&[
            "--group-id",
            "sg-1",
            "--protocol",
            "tcp",
            "--port",
            "-1",
            "--cidr",
            "0.0.0.0/0",
        ])
        .unwrap()
        .ip_permissions[0];
        assert_eq!((every_port.from_port, every_port.to_port), (Some(-1), Some(-1)));
    }

    #[test]
    fn security_group_rules_from_ip_permissions() {
        let request = rules(&[
            "--group-id",
            "sg-1",
            "--ip-permissions",
            "IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=10.0.0.0/8,Description=ssh}]",
            r#"[{"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "UserIdGroupPairs": [{"GroupId": "sg-2"}]}]"#,
        ])
        .unwrap();
        assert_eq!(request.ip_permissions.len(), 2);
        assert_eq!(request.ip_permissions[0].ip_ranges[0].description, "ssh");
        assert_eq!(request.ip_permissions[1].ip_protocol, "udp");
        assert_eq!(request.ip_permissions[1].user_id_group_pairs[0].group_id, "sg-2");
        let error = rules(&["--group-id", "sg-1", "--ip-permissions", "IpProtocol=tcp,FromPort=x"]).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("Error parsing parameter '--ip-permissions'"),
            "{error}"
        );
    }

    #[test]
    fn security_group_rule_errors() {
        let message = |args: &[&str]| {
            let error = rules(&[&["--group-id", "sg-1"][..], args].concat()).unwrap_err();
            assert_eq!(error.exit_code(), 2);
            error.to_string()
        };
        assert_eq!(
            message(&["--protocol", "tcp", "--cidr", "0.0.0.0/0"]),
            "--protocol tcp needs --port: a port (22), a range (1000-2000), or -1 for all ports"
        );
        assert_eq!(
            message(&["--protocol", "udp", "--port", "53"]),
            "--protocol needs --cidr CIDR or --source-group sg-... (the addresses the rule allows)"
        );
        assert!(
            message(&["--protocol", "gre", "--cidr", "0.0.0.0/0"]).starts_with("Error parsing parameter '--protocol'")
        );
        assert!(message(&["--protocol", "tcp", "--port", "a-b", "--cidr", "0.0.0.0/0"])
            .starts_with("Error parsing parameter '--port'"));
        assert_eq!(
            message(&["--protocol", "tcp", "--port", "22", "--source-group", "web"]),
            "Error parsing parameter '--source-group': expected a security group ID (sg-...), not \"web\""
        );
        // The builder checks what clap checks too, for callers that build the arguments themselves.
        let Command::AuthorizeSecurityGroupIngress(mut args) = command(&[
            "authorize-security-group-ingress",
            "--group-id",
            "sg-1",
            "--protocol",
            "tcp",
        ]) else {
            panic!()
        };
        args.ip_permissions = vec!["IpProtocol=-1,IpRanges=[{CidrIp=0.0.0.0/0}]".into()];
        assert_eq!(
            security_group_rules_request(&args).unwrap_err().to_string(),
            "Error parsing parameter '--ip-permissions': The --protocol option is not compatible with the \
             --ip-permissions option"
        );
        args.protocol = None;
        args.group_id = None;
        assert!(security_group_rules_request(&args)
            .unwrap_err()
            .to_string()
            .starts_with("give the security group"));
        args.group_id = Some("sg-1".into());
        args.ip_permissions.clear();
        assert!(security_group_rules_request(&args)
            .unwrap_err()
            .to_string()
            .starts_with("give the rules: --ip-permissions"));
    }

    #[test]
    fn associate_address_and_metadata_options_requests() {
        let Command::AssociateAddress(args) = command(&[
            "associate-address",
            "--public-ip",
            "203.0.113.7",
            "--instance-id",
            "i-1",
            "--private-ip-address",
            "10.0.1.5",
            "--allow-reassociation",
            "--dry-run",
        ]) else {
            panic!()
        };
        assert_eq!(
            associate_address_request(&args).unwrap(),
            api::AssociateAddressRequest {
                allocation_id: String::new(),
                instance_id: "i-1".into(),
                allow_reassociation: true,
                private_ip_address: "10.0.1.5".into(),
                public_ip: "203.0.113.7".into(),
                dry_run: true,
            }
        );
        let Command::AssociateAddress(args) = command(&[
            "associate-address",
            "--allocation-id",
            "eipalloc-1",
            "--instance-id",
            "i-1",
            "--no-allow-reassociation",
        ]) else {
            panic!()
        };
        let request = associate_address_request(&args).unwrap();
        assert_eq!(request.allocation_id, "eipalloc-1");
        assert!(!request.allow_reassociation);

        let Command::ModifyInstanceMetadataOptions(args) = command(&[
            "modify-instance-metadata-options",
            "--instance-id",
            "i-1",
            "--http-tokens",
            "required",
        ]) else {
            panic!()
        };
        assert_eq!(
            modify_instance_metadata_options_request(&args),
            api::ModifyInstanceMetadataOptionsRequest {
                instance_id: "i-1".into(),
                http_tokens: "required".into(),
                http_endpoint: String::new(),
                http_put_response_hop_limit: None,
                dry_run: false,
            }
        );
        let Command::ModifyInstanceMetadataOptions(args) = command(&[
            "modify-instance-metadata-options",
            "--instance-id",
            "i-1",
            "--http-endpoint",
            "disabled",
            "--http-put-response-hop-limit",
            "3",
        ]) else {
            panic!()
        };
        let request = modify_instance_metadata_options_request(&args);
        assert_eq!(request.http_tokens, "");
        assert_eq!(request.http_endpoint, "disabled");
        assert_eq!(request.http_put_response_hop_limit, Some(3));
    }

    #[test]
    fn register_image_paths_are_sent_as_given_for_the_import_directory() {
        let Command::RegisterImage(args) = command(&[
            "register-image",
            "--name",
            "alpine",
            "--kernel",
            "vmlinux",
            "--root-image",
            "/images/root.img",
            "--command-line",
            "console=ttyS0 root=/dev/vda",
            "--root-device-type",
            "instance-store",
        ]) else {
            panic!()
        };
        let request = register_image_request(&args).unwrap();
        assert_eq!(request.kernel_path, "vmlinux", "relative to hearthd's import directory");
        assert_eq!(request.root_image_path, "/images/root.img");
        assert_eq!(request.initrd_path, "");
        assert_eq!(request.command_line, "console=ttyS0 root=/dev/vda");
        assert_eq!(request.root_device_type, "instance-store");
    }

    fn register(args: &[&str]) -> Result<api::RegisterImageRequest, CliError> {
        let mut full = vec!["register-image"];
        full.extend_from_slice(args);
        let Command::RegisterImage(args) = command(&full) else {
            panic!()
        };
        register_image_request(&args)
    }

    #[test]
    fn register_image_from_a_manifest_or_a_snapshot() {
        let request = register(&["--image-location", "images/alpine/image.json"]).unwrap();
        assert_eq!(request.image_location, "images/alpine/image.json");
        assert_eq!(request.name, "", "the manifest's name");
        assert_eq!(
            (request.kernel_path.as_str(), request.root_image_path.as_str()),
            ("", "")
        );

        let request = register(&[
            "--name",
            "web",
            "--kernel",
            "/k/vmlinux",
            "--root-snapshot-id",
            "snap-0001",
        ])
        .unwrap();
        assert_eq!(request.root_snapshot_id, "snap-0001");
        assert_eq!(request.kernel_path, "/k/vmlinux");
        assert_eq!(request.image_location, "");

        let request = register(&[
            "--name",
            "web",
            "--kernel-id",
            "ami-0123456789abcdef0",
            "--ramdisk-id",
            "ami-0123456789abcdef1",
            "--root-snapshot-id",
            "snap-0001",
        ])
        .unwrap();
        assert_eq!(
            (
                request.kernel_id.as_str(),
                request.ramdisk_id.as_str(),
                request.kernel_path.as_str()
            ),
            ("ami-0123456789abcdef0", "ami-0123456789abcdef1", "")
        );

        let mapped = register(&[
            "--name",
            "web",
            "--kernel",
            "/k/vmlinux",
            "--root-device-name",
            "/dev/sda1",
            "--block-device-mappings",
            "DeviceName=/dev/sda1,Ebs={SnapshotId=snap-0002}",
        ])
        .unwrap();
        assert_eq!(
            mapped.block_device_mappings[0].ebs.as_ref().unwrap().snapshot_id,
            "snap-0002"
        );
    }

    #[test]
    fn register_image_needs_a_manifest_or_a_kernel_and_a_root() {
        let message = |args: &[&str]| {
            let error = register(args).unwrap_err();
            assert_eq!(error.exit_code(), 2);
            error.to_string()
        };
        assert!(message(&["--name", "x"]).starts_with("register-image: give --image-location PATH"));
        assert!(
            message(&["--name", "x", "--root-image", "/r.img"]).starts_with("register-image: give --image-location")
        );
        assert_eq!(
            message(&["--name", "x", "--kernel", "/k"]),
            "register-image: --kernel needs a root disk: --root-image PATH, --root-snapshot-id ID, or \
             Ebs={SnapshotId=ID} for /dev/xvda in --block-device-mappings"
        );
        // A snapshot mapped to another device is not the root's.
        assert!(message(&[
            "--name",
            "x",
            "--kernel",
            "/k",
            "--block-device-mappings",
            "DeviceName=/dev/sdf,Ebs={SnapshotId=snap-1}",
        ])
        .contains("needs a root disk"));
    }

    #[test]
    fn create_volume_request_from_aws_flags() {
        let Command::CreateVolume(args) = command(&[
            "create-volume",
            "--availability-zone",
            "hearth-1a",
            "--size",
            "100",
            "--volume-type",
            "io2",
            "--iops",
            "4000",
            "--encrypted",
            "--kms-key-id",
            "key-1",
            "--tag-specifications",
            "ResourceType=volume,Tags=[{Key=Name,Value=data}]",
            "--client-token",
            "tok",
            "--dry-run",
        ]) else {
            panic!()
        };
        let request = create_volume_request(&args).unwrap();
        assert_eq!(
            request,
            api::CreateVolumeRequest {
                availability_zone: "hearth-1a".into(),
                size_gib: Some(100),
                volume_type: "io2".into(),
                iops: Some(4000),
                throughput_mibps: None,
                encrypted: true,
                snapshot_id: String::new(),
                tag_specifications: vec![api::TagSpecification {
                    resource_type: "volume".into(),
                    tags: vec![api::Tag {
                        key: "Name".into(),
                        value: "data".into()
                    }],
                }],
                client_token: "tok".into(),
                dry_run: true,
                kms_key_id: "key-1".into(),
            }
        );

        let Command::CreateVolume(args) = command(&[
            "create-volume",
            "--availability-zone",
            "hearth-1a",
            "--snapshot-id",
            "snap-1",
            "--volume-type",
            "gp3",
            "--throughput",
            "250",
            "--no-encrypted",
        ]) else {
            panic!()
        };
        let request = create_volume_request(&args).unwrap();
        assert_eq!(request.size_gib, None, "the snapshot's size");
        assert_eq!(request.snapshot_id, "snap-1");
        assert_eq!(request.throughput_mibps, Some(250));
        assert!(!request.encrypted);

        let Command::CreateVolume(args) = command(&["create-volume", "--availability-zone", "hearth-1a"]) else {
            panic!()
        };
        assert_eq!(create_volume_request(&args).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn modify_volume_request_needs_a_change() {
        let modify = |args: &[&str]| {
            let mut full = vec!["modify-volume", "--volume-id", "vol-1"];
            full.extend_from_slice(args);
            let Command::ModifyVolume(args) = command(&full) else {
                panic!()
            };
            modify_volume_request(&args)
        };
        let request = modify(&["--size", "16", "--volume-type", "gp2"]).unwrap();
        assert_eq!(request.volume_id, "vol-1");
        assert_eq!(request.size_gib, Some(16));
        assert_eq!(request.volume_type, "gp2");
        assert_eq!((request.iops, request.throughput_mibps), (None, None));
        let request = modify(&["--iops", "6000", "--throughput", "500"]).unwrap();
        assert_eq!((request.iops, request.throughput_mibps), (Some(6000), Some(500)));
        assert_eq!(request.volume_type, "");
        assert_eq!(modify(&[]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn copy_snapshot_request_from_aws_flags() {
        let Command::CopySnapshot(args) = command(&[
            "copy-snapshot",
            "--source-snapshot-id",
            "snap-1",
            "--source-region",
            "hearth-1",
            "--description",
            "copy of snap-1",
            "--encrypted",
            "--tag-specifications",
            "ResourceType=snapshot,Tags=[{Key=Name,Value=copy}]",
        ]) else {
            panic!()
        };
        let request = copy_snapshot_request(&args).unwrap();
        assert_eq!(request.source_snapshot_id, "snap-1");
        assert_eq!(request.source_region, "hearth-1");
        assert_eq!(request.description, "copy of snap-1");
        assert!(request.encrypted);
        assert_eq!(request.kms_key_id, "");
        assert_eq!(request.tag_specifications[0].resource_type, "snapshot");
        assert!(!request.dry_run);
    }

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("hearth-cli-test-{}-key.pem", std::process::id()));
        let _ = std::fs::remove_file(&path);
        drop(create_key_file(&path).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(create_key_file(&path).is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn render_picks_the_format() {
        let json = || serde_json::json!({"ImageId": "ami-1"});
        assert_eq!(
            render(OutputFormat::Json, json, || table::single("IMAGE", "ami-1")),
            "{\n    \"ImageId\": \"ami-1\"\n}\n"
        );
        assert_eq!(
            render(OutputFormat::Table, json, || table::single("IMAGE", "ami-1")),
            "IMAGE\nami-1\n"
        );
        assert_eq!(
            render(OutputFormat::Text, json, || table::single("IMAGE", "ami-1")),
            "ami-1\n"
        );
    }
}
