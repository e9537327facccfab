//! `hearth.v1.Compute`: each call converts its request, runs the engine off the async
//! threads (the store syncs to disk), and converts the answer or the EC2 error.

use std::sync::Arc;

use hearth_api::v1 as pb;
use hearth_api::v1::compute_server::Compute;
use tonic::{Request, Response, Status};

use super::convert;
use super::status_of;
use crate::engine::{
    CopySnapshotRequest, CreateImageRequest, CreateVolumeRequest, Direction, Engine, LaunchNetwork, MetadataOptions,
    ModifyInstanceRequest, ModifyVolumeRequest, RegisterImageRequest, RunInstancesRequest, TagSpecification,
};
use crate::error::Ec2Result;
use crate::time::rfc3339;

/// The Compute service over an [`Engine`].
#[derive(Clone)]
pub struct ComputeService {
    engine: Arc<Engine>,
}

impl ComputeService {
    /// A service answering from `engine`.
    pub fn new(engine: Arc<Engine>) -> ComputeService {
        ComputeService { engine }
    }

    async fn run<T, F>(&self, call: F) -> Result<Response<T>, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Arc<Engine>) -> Ec2Result<T> + Send + 'static,
    {
        let engine = Arc::clone(&self.engine);
        match tokio::task::spawn_blocking(move || call(&engine)).await {
            Ok(Ok(answer)) => Ok(Response::new(answer)),
            Ok(Err(error)) => Err(status_of(&error)),
            Err(panic) => Err(Status::internal(format!("InternalError: the call failed: {panic}"))),
        }
    }
}

impl ComputeService {
    async fn rules(
        &self,
        r: pb::SecurityGroupRulesRequest,
        direction: Direction,
        authorize: bool,
    ) -> Result<Response<pb::Empty>, Status> {
        self.run(move |engine| {
            engine
                .change_security_group_rules(
                    &r.group_id,
                    &r.group_name,
                    direction,
                    authorize,
                    &convert::permissions_in(r.ip_permissions),
                    r.dry_run,
                )
                .map(|()| pb::Empty {})
        })
        .await
    }
}

fn metadata_in(options: pb::InstanceMetadataOptions) -> MetadataOptions {
    MetadataOptions {
        http_tokens: options.http_tokens,
        http_endpoint: options.http_endpoint,
        http_put_response_hop_limit: (options.http_put_response_hop_limit != 0)
            .then_some(options.http_put_response_hop_limit),
    }
}

#[tonic::async_trait]
impl Compute for ComputeService {
    async fn run_instances(
        &self,
        request: Request<pb::RunInstancesRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let r = request.into_inner();
        let request = RunInstancesRequest {
            image_id: r.image_id,
            instance_type: r.instance_type,
            min_count: r.min_count,
            max_count: r.max_count,
            key_name: r.key_name,
            user_data: r.user_data,
            block_device_mappings: r.block_device_mappings.into_iter().map(convert::mapping_in).collect(),
            tag_specifications: r
                .tag_specifications
                .into_iter()
                .map(|spec| TagSpecification {
                    resource_type: spec.resource_type,
                    tags: spec.tags.into_iter().map(|tag| (tag.key, tag.value)).collect(),
                })
                .collect(),
            client_token: r.client_token,
            dry_run: r.dry_run,
            disable_api_termination: r.disable_api_termination,
            instance_initiated_shutdown_behavior: r.instance_initiated_shutdown_behavior,
            availability_zone: r.availability_zone,
            network: LaunchNetwork {
                subnet_id: r.subnet_id,
                security_group_ids: r.security_group_ids,
                security_group_names: r.security_groups,
                private_ip: r.private_ip_address,
                metadata: r.metadata_options.map(metadata_in).unwrap_or_default(),
            },
        };
        self.run(move |engine| engine.run_instances(request).map(|r| convert::reservation(&r)))
            .await
    }

    async fn describe_instances(
        &self,
        request: Request<pb::DescribeInstancesRequest>,
    ) -> Result<Response<pb::DescribeInstancesResponse>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            if r.dry_run {
                return Err(crate::Ec2Error::DryRunOperation);
            }
            let (reservations, next_token) = engine.describe_instances(
                &r.instance_ids,
                &convert::filters(r.filters),
                r.max_results,
                &r.next_token,
            )?;
            Ok(pb::DescribeInstancesResponse {
                reservations: convert::reservations(&reservations),
                next_token,
            })
        })
        .await
    }

    async fn describe_instance_status(
        &self,
        request: Request<pb::DescribeInstanceStatusRequest>,
    ) -> Result<Response<pb::DescribeInstanceStatusResponse>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let (statuses, next_token) = engine.describe_instance_status(
                &r.instance_ids,
                &convert::filters(r.filters),
                r.include_all_instances,
                r.max_results,
                &r.next_token,
            )?;
            Ok(pb::DescribeInstanceStatusResponse {
                instance_statuses: statuses
                    .into_iter()
                    .map(|status| pb::InstanceStatus {
                        instance_id: status.instance_id,
                        availability_zone: status.availability_zone,
                        instance_state: Some(convert::state(status.state)),
                        system_status: status.system_status,
                        instance_status: status.instance_status,
                    })
                    .collect(),
                next_token,
            })
        })
        .await
    }

    async fn start_instances(
        &self,
        request: Request<pb::InstanceIdsRequest>,
    ) -> Result<Response<pb::InstanceStateChanges>, Status> {
        let r = request.into_inner();
        self.run(move |engine| engine.start_instances(&r.instance_ids, r.dry_run).map(convert::changes))
            .await
    }

    async fn stop_instances(
        &self,
        request: Request<pb::StopInstancesRequest>,
    ) -> Result<Response<pb::InstanceStateChanges>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            engine
                .stop_instances(&r.instance_ids, r.force, r.hibernate, r.dry_run)
                .map(convert::changes)
        })
        .await
    }

    async fn reboot_instances(&self, request: Request<pb::InstanceIdsRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            engine
                .reboot_instances(&r.instance_ids, r.dry_run)
                .map(|()| pb::Empty {})
        })
        .await
    }

    async fn terminate_instances(
        &self,
        request: Request<pb::InstanceIdsRequest>,
    ) -> Result<Response<pb::InstanceStateChanges>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            engine
                .terminate_instances(&r.instance_ids, r.dry_run)
                .map(convert::changes)
        })
        .await
    }

    async fn modify_instance_attribute(
        &self,
        request: Request<pb::ModifyInstanceAttributeRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        if !r.groups.is_empty() {
            let others = r.disable_api_termination.is_some()
                || r.instance_initiated_shutdown_behavior.is_some()
                || r.instance_type.is_some()
                || r.user_data.is_some()
                || r.kernel.is_some()
                || r.ramdisk.is_some();
            return self
                .run(move |engine| {
                    if others {
                        return Err(crate::Ec2Error::InvalidParameterCombination(
                            "Groups cannot be modified together with other attributes".into(),
                        ));
                    }
                    engine
                        .modify_instance_groups(&r.instance_id, &r.groups, r.dry_run)
                        .map(|()| pb::Empty {})
                })
                .await;
        }
        let request = ModifyInstanceRequest {
            instance_id: r.instance_id,
            disable_api_termination: r.disable_api_termination,
            instance_initiated_shutdown_behavior: r.instance_initiated_shutdown_behavior,
            instance_type: r.instance_type,
            user_data: r.user_data,
            kernel: r.kernel,
            ramdisk: r.ramdisk,
            dry_run: r.dry_run,
        };
        self.run(move |engine| engine.modify_instance_attribute(request).map(|()| pb::Empty {}))
            .await
    }

    async fn describe_instance_attribute(
        &self,
        request: Request<pb::DescribeInstanceAttributeRequest>,
    ) -> Result<Response<pb::InstanceAttribute>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let attribute = engine.describe_instance_attribute(&r.instance_id, &r.attribute, r.dry_run)?;
            Ok(pb::InstanceAttribute {
                instance_id: attribute.instance_id,
                attribute: attribute.attribute,
                value: attribute.value,
                block_device_mappings: attribute.block_devices.iter().map(convert::block_device).collect(),
            })
        })
        .await
    }

    async fn get_console_output(
        &self,
        request: Request<pb::GetConsoleOutputRequest>,
    ) -> Result<Response<pb::ConsoleOutput>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let (bytes, at) = engine.get_console_output(&r.instance_id, r.dry_run)?;
            Ok(pb::ConsoleOutput {
                instance_id: r.instance_id,
                timestamp: rfc3339(at),
                output: crate::encoding::base64(&bytes),
            })
        })
        .await
    }

    async fn describe_instance_types(
        &self,
        request: Request<pb::DescribeInstanceTypesRequest>,
    ) -> Result<Response<pb::DescribeInstanceTypesResponse>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let types = engine.describe_instance_types(&r.instance_types, &convert::filters(r.filters))?;
            Ok(pb::DescribeInstanceTypesResponse {
                instance_types: types
                    .into_iter()
                    .map(|t| pb::InstanceTypeInfo {
                        instance_type: t.name,
                        family: t.family,
                        vcpus: t.vcpus as i32,
                        memory_mib: t.memory_mib as i64,
                        instance_store_disks: t.instance_store_disks as i32,
                        instance_store_gib: t.instance_store_gib as i64,
                        network_mbps: t.network_mbps as i32,
                        ebs_mbps: t.ebs_mbps as i32,
                        burstable: t.burstable,
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn register_image(
        &self,
        request: Request<pb::RegisterImageRequest>,
    ) -> Result<Response<pb::ImageId>, Status> {
        let r = request.into_inner();
        let request = RegisterImageRequest {
            name: r.name,
            description: r.description,
            architecture: r.architecture,
            kernel_path: r.kernel_path,
            initrd_path: r.initrd_path,
            root_image_path: r.root_image_path,
            kernel_id: r.kernel_id,
            ramdisk_id: r.ramdisk_id,
            root_device_name: r.root_device_name,
            root_device_type: r.root_device_type,
            command_line: r.command_line,
            block_device_mappings: r.block_device_mappings.into_iter().map(convert::mapping_in).collect(),
            dry_run: r.dry_run,
            image_location: r.image_location,
            root_snapshot_id: r.root_snapshot_id,
        };
        self.run(move |engine| engine.register_image(request).map(|image_id| pb::ImageId { image_id }))
            .await
    }

    async fn describe_images(
        &self,
        request: Request<pb::DescribeImagesRequest>,
    ) -> Result<Response<pb::DescribeImagesResponse>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let images = engine.describe_images(&r.image_ids, &convert::filters(r.filters))?;
            Ok(pb::DescribeImagesResponse {
                images: images.iter().map(convert::image).collect(),
            })
        })
        .await
    }

    async fn deregister_image(&self, request: Request<pb::ImageIdRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.run(move |engine| engine.deregister_image(&r.image_id, r.dry_run).map(|()| pb::Empty {}))
            .await
    }

    async fn create_image(&self, request: Request<pb::CreateImageRequest>) -> Result<Response<pb::ImageId>, Status> {
        let r = request.into_inner();
        let request = CreateImageRequest {
            instance_id: r.instance_id,
            name: r.name,
            description: r.description,
            no_reboot: r.no_reboot,
            dry_run: r.dry_run,
        };
        self.run(move |engine| engine.create_image(request).map(|image_id| pb::ImageId { image_id }))
            .await
    }

    async fn create_key_pair(
        &self,
        request: Request<pb::CreateKeyPairRequest>,
    ) -> Result<Response<pb::KeyPair>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let created = engine.create_key_pair(&r.key_name, &r.key_type, r.dry_run)?;
            Ok(pb::KeyPair {
                key_name: created.key_pair.name,
                key_pair_id: created.key_pair.id,
                key_fingerprint: created.key_pair.fingerprint,
                key_material: created.private_key,
                key_type: created.key_pair.key_type,
            })
        })
        .await
    }

    async fn import_key_pair(
        &self,
        request: Request<pb::ImportKeyPairRequest>,
    ) -> Result<Response<pb::KeyPairInfo>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            engine
                .import_key_pair(&r.key_name, &r.public_key_material, r.dry_run)
                .map(|key| convert::key_pair_info(&key))
        })
        .await
    }

    async fn describe_key_pairs(
        &self,
        request: Request<pb::DescribeKeyPairsRequest>,
    ) -> Result<Response<pb::DescribeKeyPairsResponse>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let keys = engine.describe_key_pairs(&r.key_names, &convert::filters(r.filters))?;
            Ok(pb::DescribeKeyPairsResponse {
                key_pairs: keys.iter().map(convert::key_pair_info).collect(),
            })
        })
        .await
    }

    async fn delete_key_pair(&self, request: Request<pb::DeleteKeyPairRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.run(move |engine| engine.delete_key_pair(&r.key_name, r.dry_run).map(|()| pb::Empty {}))
            .await
    }

    async fn create_tags(&self, request: Request<pb::CreateTagsRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        let tags: Vec<(String, String)> = r.tags.into_iter().map(|tag| (tag.key, tag.value)).collect();
        self.run(move |engine| {
            engine
                .create_tags(&r.resources, &tags, r.dry_run)
                .map(|()| pb::Empty {})
        })
        .await
    }

    async fn delete_tags(&self, request: Request<pb::DeleteTagsRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        let tags: Vec<(String, Option<String>)> = r
            .tags
            .into_iter()
            .map(|tag| (tag.key, (!tag.value.is_empty()).then_some(tag.value)))
            .collect();
        self.run(move |engine| {
            engine
                .delete_tags(&r.resources, &tags, r.dry_run)
                .map(|()| pb::Empty {})
        })
        .await
    }

    async fn describe_tags(
        &self,
        request: Request<pb::DescribeTagsRequest>,
    ) -> Result<Response<pb::DescribeTagsResponse>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let (tags, next_token) =
                engine.describe_tags(&convert::filters(r.filters), r.max_results, &r.next_token)?;
            Ok(pb::DescribeTagsResponse {
                tags: tags
                    .into_iter()
                    .map(|tag| pb::TagDescription {
                        resource_id: tag.resource_id,
                        resource_type: tag.resource_type,
                        key: tag.key,
                        value: tag.value,
                    })
                    .collect(),
                next_token,
            })
        })
        .await
    }

    async fn create_vpc(&self, request: Request<pb::CreateVpcRequest>) -> Result<Response<pb::Vpc>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let tags = convert::tag_pairs(r.tag_specifications, "vpc")?;
            let vpc = engine.create_vpc(&r.cidr_block, &tags, r.dry_run)?;
            Ok(convert::vpc(&vpc, &engine.options().owner_id))
        })
        .await
    }

    async fn describe_vpcs(
        &self,
        request: Request<pb::DescribeVpcsRequest>,
    ) -> Result<Response<pb::DescribeVpcsResponse>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let vpcs = engine.describe_vpcs(&r.vpc_ids, &convert::filters(r.filters))?;
            let owner = &engine.options().owner_id;
            Ok(pb::DescribeVpcsResponse {
                vpcs: vpcs.iter().map(|v| convert::vpc(v, owner)).collect(),
            })
        })
        .await
    }

    async fn delete_vpc(&self, request: Request<pb::VpcIdRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.run(move |engine| engine.delete_vpc(&r.vpc_id, r.dry_run).map(|()| pb::Empty {}))
            .await
    }

    async fn create_subnet(&self, request: Request<pb::CreateSubnetRequest>) -> Result<Response<pb::Subnet>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let tags = convert::tag_pairs(r.tag_specifications, "subnet")?;
            let subnet = engine.create_subnet(&r.vpc_id, &r.cidr_block, &r.availability_zone, &tags, r.dry_run)?;
            let view = engine
                .describe_subnets(std::slice::from_ref(&subnet.id), &[])?
                .pop()
                .ok_or_else(|| crate::Ec2Error::SubnetNotFound(subnet.id.clone()))?;
            Ok(convert::subnet(&view, &engine.options().owner_id))
        })
        .await
    }

    async fn describe_subnets(
        &self,
        request: Request<pb::DescribeSubnetsRequest>,
    ) -> Result<Response<pb::DescribeSubnetsResponse>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let subnets = engine.describe_subnets(&r.subnet_ids, &convert::filters(r.filters))?;
            let owner = &engine.options().owner_id;
            Ok(pb::DescribeSubnetsResponse {
                subnets: subnets.iter().map(|s| convert::subnet(s, owner)).collect(),
            })
        })
        .await
    }

    async fn delete_subnet(&self, request: Request<pb::SubnetIdRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.run(move |engine| engine.delete_subnet(&r.subnet_id, r.dry_run).map(|()| pb::Empty {}))
            .await
    }

    async fn create_security_group(
        &self,
        request: Request<pb::CreateSecurityGroupRequest>,
    ) -> Result<Response<pb::SecurityGroupId>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let tags = convert::tag_pairs(r.tag_specifications, "security-group")?;
            let group_id = engine.create_security_group(&r.group_name, &r.description, &r.vpc_id, &tags, r.dry_run)?;
            Ok(pb::SecurityGroupId { group_id })
        })
        .await
    }

    async fn describe_security_groups(
        &self,
        request: Request<pb::DescribeSecurityGroupsRequest>,
    ) -> Result<Response<pb::DescribeSecurityGroupsResponse>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let groups = engine.describe_security_groups(&r.group_ids, &r.group_names, &convert::filters(r.filters))?;
            let owner = &engine.options().owner_id;
            Ok(pb::DescribeSecurityGroupsResponse {
                security_groups: groups.iter().map(|g| convert::security_group(g, owner)).collect(),
            })
        })
        .await
    }

    async fn delete_security_group(
        &self,
        request: Request<pb::DeleteSecurityGroupRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            engine
                .delete_security_group(&r.group_id, &r.group_name, r.dry_run)
                .map(|()| pb::Empty {})
        })
        .await
    }

    async fn authorize_security_group_ingress(
        &self,
        request: Request<pb::SecurityGroupRulesRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.rules(request.into_inner(), Direction::Ingress, true).await
    }

    async fn authorize_security_group_egress(
        &self,
        request: Request<pb::SecurityGroupRulesRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.rules(request.into_inner(), Direction::Egress, true).await
    }

    async fn revoke_security_group_ingress(
        &self,
        request: Request<pb::SecurityGroupRulesRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.rules(request.into_inner(), Direction::Ingress, false).await
    }

    async fn revoke_security_group_egress(
        &self,
        request: Request<pb::SecurityGroupRulesRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.rules(request.into_inner(), Direction::Egress, false).await
    }

    async fn allocate_address(
        &self,
        request: Request<pb::AllocateAddressRequest>,
    ) -> Result<Response<pb::Address>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let tags = convert::tag_pairs(r.tag_specifications, "elastic-ip")?;
            let address = engine.allocate_address(&r.domain, &r.address, &tags, r.dry_run)?;
            Ok(convert::address(&address))
        })
        .await
    }

    async fn associate_address(
        &self,
        request: Request<pb::AssociateAddressRequest>,
    ) -> Result<Response<pb::AssociateAddressResponse>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let association_id = engine.associate_address(
                &r.allocation_id,
                &r.public_ip,
                &r.instance_id,
                r.allow_reassociation,
                &r.private_ip_address,
                r.dry_run,
            )?;
            Ok(pb::AssociateAddressResponse { association_id })
        })
        .await
    }

    async fn disassociate_address(
        &self,
        request: Request<pb::DisassociateAddressRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            engine
                .disassociate_address(&r.association_id, &r.public_ip, r.dry_run)
                .map(|()| pb::Empty {})
        })
        .await
    }

    async fn release_address(
        &self,
        request: Request<pb::ReleaseAddressRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            engine
                .release_address(&r.allocation_id, &r.public_ip, r.dry_run)
                .map(|()| pb::Empty {})
        })
        .await
    }

    async fn describe_addresses(
        &self,
        request: Request<pb::DescribeAddressesRequest>,
    ) -> Result<Response<pb::DescribeAddressesResponse>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let addresses =
                engine.describe_addresses(&r.allocation_ids, &r.public_ips, &convert::filters(r.filters))?;
            Ok(pb::DescribeAddressesResponse {
                addresses: addresses.iter().map(convert::address).collect(),
            })
        })
        .await
    }

    async fn modify_instance_metadata_options(
        &self,
        request: Request<pb::ModifyInstanceMetadataOptionsRequest>,
    ) -> Result<Response<pb::InstanceMetadataOptions>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let options = MetadataOptions {
                http_tokens: r.http_tokens,
                http_endpoint: r.http_endpoint,
                http_put_response_hop_limit: r.http_put_response_hop_limit,
            };
            let network = engine.modify_instance_metadata_options(&r.instance_id, &options, r.dry_run)?;
            Ok(convert::metadata_options(&network))
        })
        .await
    }

    async fn describe_regions(
        &self,
        _request: Request<pb::DescribeRegionsRequest>,
    ) -> Result<Response<pb::DescribeRegionsResponse>, Status> {
        self.run(move |engine| {
            Ok(pb::DescribeRegionsResponse {
                regions: engine
                    .describe_regions()
                    .into_iter()
                    .map(|region| pb::Region {
                        region_name: region.name,
                        endpoint: region.endpoint,
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn describe_availability_zones(
        &self,
        request: Request<pb::DescribeAvailabilityZonesRequest>,
    ) -> Result<Response<pb::DescribeAvailabilityZonesResponse>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            Ok(pb::DescribeAvailabilityZonesResponse {
                availability_zones: engine
                    .describe_availability_zones(&r.zone_names)?
                    .into_iter()
                    .map(|zone| pb::AvailabilityZone {
                        zone_name: zone.name,
                        state: zone.state,
                        region_name: zone.region,
                        hosts: zone.hosts as i32,
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn create_volume(&self, request: Request<pb::CreateVolumeRequest>) -> Result<Response<pb::Volume>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let request = CreateVolumeRequest {
                availability_zone: r.availability_zone,
                size_gib: r.size_gib.map(|s| s.max(0) as u64),
                volume_type: r.volume_type,
                iops: r.iops.map(|i| i.max(0) as u32),
                throughput_mibps: r.throughput_mibps.map(|t| t.max(0) as u32),
                encrypted: r.encrypted,
                kms_key_id: r.kms_key_id,
                snapshot_id: r.snapshot_id,
                tags: convert::tag_pairs(r.tag_specifications, "volume")?,
                dry_run: r.dry_run,
            };
            engine.create_volume(request).map(|v| convert::volume(&v))
        })
        .await
    }

    async fn describe_volumes(
        &self,
        request: Request<pb::DescribeVolumesRequest>,
    ) -> Result<Response<pb::DescribeVolumesResponse>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let volumes = engine.describe_volumes(&r.volume_ids, &convert::filters(r.filters))?;
            Ok(pb::DescribeVolumesResponse {
                volumes: volumes.iter().map(convert::volume).collect(),
            })
        })
        .await
    }

    async fn attach_volume(
        &self,
        request: Request<pb::AttachVolumeRequest>,
    ) -> Result<Response<pb::VolumeAttachment>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            engine
                .attach_volume(&r.volume_id, &r.instance_id, &r.device, r.dry_run)
                .map(|a| convert::attachment(&a))
        })
        .await
    }

    async fn detach_volume(
        &self,
        request: Request<pb::DetachVolumeRequest>,
    ) -> Result<Response<pb::VolumeAttachment>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            engine
                .detach_volume(&r.volume_id, &r.instance_id, &r.device, r.force, r.dry_run)
                .map(|a| convert::attachment(&a))
        })
        .await
    }

    async fn delete_volume(&self, request: Request<pb::VolumeIdRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.run(move |engine| engine.delete_volume(&r.volume_id, r.dry_run).map(|()| pb::Empty {}))
            .await
    }

    async fn modify_volume(
        &self,
        request: Request<pb::ModifyVolumeRequest>,
    ) -> Result<Response<pb::VolumeModification>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let volume_id = r.volume_id.clone();
            engine
                .modify_volume(ModifyVolumeRequest {
                    volume_id: r.volume_id,
                    size_gib: r.size_gib.map(|s| s.max(0) as u64),
                    volume_type: r.volume_type,
                    iops: r.iops.map(|i| i.max(0) as u32),
                    throughput_mibps: r.throughput_mibps.map(|t| t.max(0) as u32),
                    dry_run: r.dry_run,
                })
                .map(|m| convert::modification(&volume_id, &m))
        })
        .await
    }

    async fn describe_volumes_modifications(
        &self,
        request: Request<pb::DescribeVolumesModificationsRequest>,
    ) -> Result<Response<pb::DescribeVolumesModificationsResponse>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let found = engine.describe_volumes_modifications(&r.volume_ids, &convert::filters(r.filters))?;
            Ok(pb::DescribeVolumesModificationsResponse {
                volumes_modifications: found.iter().map(|(id, m)| convert::modification(id, m)).collect(),
            })
        })
        .await
    }

    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let tags = convert::tag_pairs(r.tag_specifications, "snapshot")?;
            let snapshot = engine.create_snapshot(&r.volume_id, &r.description, &tags, r.dry_run)?;
            Ok(convert::snapshot(&snapshot, &engine.options().owner_id))
        })
        .await
    }

    async fn describe_snapshots(
        &self,
        request: Request<pb::DescribeSnapshotsRequest>,
    ) -> Result<Response<pb::DescribeSnapshotsResponse>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let found = engine.describe_snapshots(&r.snapshot_ids, &r.owner_ids, &convert::filters(r.filters))?;
            let owner = engine.options().owner_id.clone();
            Ok(pb::DescribeSnapshotsResponse {
                snapshots: found.iter().map(|s| convert::snapshot(s, &owner)).collect(),
            })
        })
        .await
    }

    async fn delete_snapshot(&self, request: Request<pb::SnapshotIdRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.run(move |engine| engine.delete_snapshot(&r.snapshot_id, r.dry_run).map(|()| pb::Empty {}))
            .await
    }

    async fn copy_snapshot(
        &self,
        request: Request<pb::CopySnapshotRequest>,
    ) -> Result<Response<pb::SnapshotId>, Status> {
        let r = request.into_inner();
        self.run(move |engine| {
            let request = CopySnapshotRequest {
                source_snapshot_id: r.source_snapshot_id,
                source_region: r.source_region,
                description: r.description,
                encrypted: r.encrypted,
                kms_key_id: r.kms_key_id,
                tags: convert::tag_pairs(r.tag_specifications, "snapshot")?,
                dry_run: r.dry_run,
            };
            engine
                .copy_snapshot(request)
                .map(|snapshot_id| pb::SnapshotId { snapshot_id })
        })
        .await
    }
}
