//! The `hearth` binary against an in-process fake `Compute` service on a Unix socket: connection, token,
//! output formats, `--wait`, error text and exit codes. (Tests against a real hearthd live elsewhere.)

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hearth_api::v1::compute_server::{Compute, ComputeServer};
use hearth_api::v1::*;
use prost::Message;
use tonic::{Code, Request, Response, Status};

type Reply<T> = Result<Response<T>, Status>;

/// One fake instance: its state, and the state it moves to after `polls` more DescribeInstances.
#[derive(Clone)]
struct FakeInstance {
    state: &'static str,
    next: Option<(&'static str, u32)>,
    name: String,
}

/// One fake volume or snapshot: what it is now, and what each following Describe shows (None: gone).
struct Scripted<T> {
    now: T,
    then: VecDeque<Option<T>>,
}

impl<T: Clone> Scripted<T> {
    fn new(now: T, then: impl IntoIterator<Item = Option<T>>) -> Self {
        Scripted {
            now,
            then: then.into_iter().collect(),
        }
    }
}

#[derive(Default)]
struct FakeState {
    instances: BTreeMap<String, FakeInstance>,
    volumes: BTreeMap<String, Scripted<Volume>>,
    snapshots: BTreeMap<String, Scripted<Snapshot>>,
    authorization: Vec<String>,
    launched: u32,
    created: u32,
    /// The last security-group rules request, and which call it came with.
    rules: Option<(&'static str, SecurityGroupRulesRequest)>,
    /// The last RunInstances request.
    run_request: Option<RunInstancesRequest>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<FakeState>>);

fn code_of(state: &str) -> i32 {
    match state {
        "pending" => 0,
        "running" => 16,
        "shutting-down" => 32,
        "terminated" => 48,
        "stopping" => 64,
        _ => 80,
    }
}

fn state(name: &str) -> Option<InstanceState> {
    Some(InstanceState {
        code: code_of(name),
        name: name.into(),
    })
}

fn instance(id: &str, fake: &FakeInstance) -> Instance {
    Instance {
        instance_id: id.into(),
        image_id: "ami-0001".into(),
        instance_type: "t3.micro".into(),
        state: state(fake.state),
        launch_time: "2026-01-02T03:04:05Z".into(),
        availability_zone: "hearth-1a".into(),
        tags: if fake.name.is_empty() {
            vec![]
        } else {
            vec![Tag {
                key: "Name".into(),
                value: fake.name.clone(),
            }]
        },
        ..Default::default()
    }
}

fn not_found(id: &str) -> Status {
    Status::not_found(format!(
        "InvalidInstanceID.NotFound: The instance ID '{id}' does not exist"
    ))
}

fn volume_not_found(id: &str) -> Status {
    Status::not_found(format!("InvalidVolume.NotFound: The volume '{id}' does not exist."))
}

fn volume(id: &str, state: &str, attachment: Option<(&str, &str)>) -> Volume {
    Volume {
        volume_id: id.into(),
        size_gib: 8,
        volume_type: "gp3".into(),
        iops: 3000,
        throughput_mibps: 125,
        availability_zone: "hearth-1a".into(),
        state: state.into(),
        create_time: "2026-01-02T03:04:05Z".into(),
        attachments: attachment
            .map(|(instance_id, state)| VolumeAttachment {
                volume_id: id.into(),
                instance_id: instance_id.into(),
                device: "/dev/sdf".into(),
                state: state.into(),
                attach_time: "2026-01-02T03:04:06Z".into(),
                delete_on_termination: false,
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

fn snapshot(id: &str, volume_id: &str, state: &str, progress: &str, message: &str) -> Snapshot {
    Snapshot {
        snapshot_id: id.into(),
        volume_id: volume_id.into(),
        state: state.into(),
        state_message: message.into(),
        start_time: "2026-01-02T03:04:05Z".into(),
        progress: progress.into(),
        volume_size_gib: 8,
        owner_id: "000000000000".into(),
        ..Default::default()
    }
}

/// The current versions of the scripted `ids` (all when empty), each moved one step along its script.
fn describe<T: Clone>(
    all: &mut BTreeMap<String, Scripted<T>>,
    ids: &[String],
    not_found: fn(&str) -> Status,
) -> Result<Vec<T>, Status> {
    if let Some(unknown) = ids.iter().find(|id| !all.contains_key(*id)) {
        return Err(not_found(unknown));
    }
    let mut out = Vec::new();
    let mut gone = Vec::new();
    for (id, scripted) in all.iter_mut() {
        if !ids.is_empty() && !ids.contains(id) {
            continue;
        }
        match scripted.then.pop_front() {
            Some(Some(next)) => scripted.now = next,
            Some(None) => {
                gone.push(id.clone());
                continue;
            }
            None => {}
        }
        out.push(scripted.now.clone());
    }
    for id in gone {
        all.remove(&id);
    }
    Ok(out)
}

fn dry_run(dry_run: bool) -> Result<(), Status> {
    if dry_run {
        return Err(Status::failed_precondition(
            "DryRunOperation: the fake says it would work",
        ));
    }
    Ok(())
}

fn unimplemented<T>() -> Reply<T> {
    Err(Status::unimplemented("not in the fake"))
}

impl Fake {
    fn record<T>(&self, request: &Request<T>) {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        self.0.lock().unwrap().authorization.push(auth);
    }

    fn transition(
        &self,
        ids: &[String],
        to: &'static str,
        then: Option<(&'static str, u32)>,
    ) -> Result<InstanceStateChanges, Status> {
        let mut state = self.0.lock().unwrap();
        if let Some(unknown) = ids.iter().find(|id| !state.instances.contains_key(*id)) {
            return Err(not_found(unknown));
        }
        let mut changes = Vec::new();
        for id in ids {
            let fake = state.instances.get_mut(id).unwrap();
            changes.push(InstanceStateChange {
                instance_id: id.clone(),
                previous_state: self::state(fake.state),
                current_state: self::state(to),
            });
            fake.state = to;
            fake.next = then;
        }
        Ok(InstanceStateChanges { changes })
    }
}

#[tonic::async_trait]
impl Compute for Fake {
    async fn run_instances(&self, request: Request<RunInstancesRequest>) -> Reply<Reservation> {
        self.record(&request);
        let request = request.into_inner();
        if request.dry_run {
            return Err(Status::failed_precondition(
                "DryRunOperation: the fake says it would work",
            ));
        }
        let name = request
            .tag_specifications
            .iter()
            .flat_map(|s| &s.tags)
            .find(|t| t.key == "Name")
            .map(|t| t.value.clone())
            .unwrap_or_default();
        let mut state = self.0.lock().unwrap();
        state.run_request = Some(request.clone());
        let mut instances = Vec::new();
        for _ in 0..request.max_count.max(1) {
            state.launched += 1;
            let id = format!("i-{:04}", state.launched);
            let fake = FakeInstance {
                state: "pending",
                next: Some(("running", 3)),
                name: name.clone(),
            };
            instances.push(instance(&id, &fake));
            state.instances.insert(id, fake);
        }
        Ok(Response::new(Reservation {
            reservation_id: "r-0001".into(),
            owner_id: "000000000000".into(),
            instances,
        }))
    }

    async fn describe_instances(&self, request: Request<DescribeInstancesRequest>) -> Reply<DescribeInstancesResponse> {
        self.record(&request);
        let request = request.into_inner();
        let mut state = self.0.lock().unwrap();
        if let Some(unknown) = request
            .instance_ids
            .iter()
            .find(|id| !state.instances.contains_key(*id))
        {
            return Err(not_found(unknown));
        }
        let mut instances = Vec::new();
        for (id, fake) in state.instances.iter_mut() {
            if !request.instance_ids.is_empty() && !request.instance_ids.contains(id) {
                continue;
            }
            if let Some((next, polls)) = fake.next {
                if polls <= 1 {
                    fake.state = next;
                    fake.next = None;
                } else {
                    fake.next = Some((next, polls - 1));
                }
            }
            instances.push(instance(id, fake));
        }
        Ok(Response::new(DescribeInstancesResponse {
            reservations: vec![Reservation {
                reservation_id: "r-0001".into(),
                owner_id: "0".into(),
                instances,
            }],
            next_token: String::new(),
        }))
    }

    async fn describe_instance_status(
        &self,
        _: Request<DescribeInstanceStatusRequest>,
    ) -> Reply<DescribeInstanceStatusResponse> {
        unimplemented()
    }

    async fn start_instances(&self, request: Request<InstanceIdsRequest>) -> Reply<InstanceStateChanges> {
        let ids = request.into_inner().instance_ids;
        // i-stuck never leaves pending: for the --wait-timeout test.
        let then = if ids.iter().any(|id| id == "i-stuck") {
            None
        } else {
            Some(("running", 2))
        };
        self.transition(&ids, "pending", then).map(Response::new)
    }

    async fn stop_instances(&self, request: Request<StopInstancesRequest>) -> Reply<InstanceStateChanges> {
        let ids = request.into_inner().instance_ids;
        if ids.iter().any(|id| id == "i-protected") {
            // The EC2 code only in the details, as an Ec2Error.
            let detail = Ec2Error {
                code: "IncorrectInstanceState".into(),
                message: "The instance 'i-protected' is not in a state from which it can be stopped.".into(),
            };
            return Err(Status::with_details(
                Code::FailedPrecondition,
                "refused",
                detail.encode_to_vec().into(),
            ));
        }
        self.transition(&ids, "stopping", Some(("stopped", 2)))
            .map(Response::new)
    }

    async fn reboot_instances(&self, _: Request<InstanceIdsRequest>) -> Reply<Empty> {
        unimplemented()
    }

    async fn terminate_instances(&self, request: Request<InstanceIdsRequest>) -> Reply<InstanceStateChanges> {
        let ids = request.into_inner().instance_ids;
        self.transition(&ids, "shutting-down", Some(("terminated", 2)))
            .map(Response::new)
    }

    async fn modify_instance_attribute(&self, _: Request<ModifyInstanceAttributeRequest>) -> Reply<Empty> {
        unimplemented()
    }

    async fn describe_instance_attribute(
        &self,
        _: Request<DescribeInstanceAttributeRequest>,
    ) -> Reply<InstanceAttribute> {
        unimplemented()
    }

    async fn get_console_output(&self, request: Request<GetConsoleOutputRequest>) -> Reply<ConsoleOutput> {
        Ok(Response::new(ConsoleOutput {
            instance_id: request.into_inner().instance_id,
            timestamp: "2026-01-02T03:04:05Z".into(),
            output: "aGVsbG8gY29uc29sZQo=".into(), // "hello console\n"
        }))
    }

    async fn describe_instance_types(
        &self,
        _: Request<DescribeInstanceTypesRequest>,
    ) -> Reply<DescribeInstanceTypesResponse> {
        unimplemented()
    }

    async fn register_image(&self, _: Request<RegisterImageRequest>) -> Reply<ImageId> {
        unimplemented()
    }

    async fn describe_images(&self, _: Request<DescribeImagesRequest>) -> Reply<DescribeImagesResponse> {
        unimplemented()
    }

    async fn deregister_image(&self, _: Request<ImageIdRequest>) -> Reply<Empty> {
        unimplemented()
    }

    async fn create_image(&self, _: Request<CreateImageRequest>) -> Reply<ImageId> {
        unimplemented()
    }

    async fn create_key_pair(&self, request: Request<CreateKeyPairRequest>) -> Reply<KeyPair> {
        let request = request.into_inner();
        Ok(Response::new(KeyPair {
            key_name: request.key_name,
            key_pair_id: "key-0001".into(),
            key_fingerprint: "SHA256:fake".into(),
            key_material: "-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n-----END OPENSSH PRIVATE KEY-----".into(),
            key_type: "ed25519".into(),
        }))
    }

    async fn import_key_pair(&self, _: Request<ImportKeyPairRequest>) -> Reply<KeyPairInfo> {
        unimplemented()
    }

    async fn describe_key_pairs(&self, _: Request<DescribeKeyPairsRequest>) -> Reply<DescribeKeyPairsResponse> {
        unimplemented()
    }

    async fn delete_key_pair(&self, _: Request<DeleteKeyPairRequest>) -> Reply<Empty> {
        unimplemented()
    }

    async fn create_tags(&self, _: Request<CreateTagsRequest>) -> Reply<Empty> {
        unimplemented()
    }

    async fn delete_tags(&self, _: Request<DeleteTagsRequest>) -> Reply<Empty> {
        unimplemented()
    }

    async fn describe_tags(&self, _: Request<DescribeTagsRequest>) -> Reply<DescribeTagsResponse> {
        unimplemented()
    }

    async fn create_volume(&self, request: Request<CreateVolumeRequest>) -> Reply<Volume> {
        let request = request.into_inner();
        dry_run(request.dry_run)?;
        let mut state = self.0.lock().unwrap();
        state.created += 1;
        let id = format!("vol-{:04}", state.created);
        let mut created = volume(&id, "creating", None);
        created.size_gib = request.size_gib.unwrap_or(8);
        created.availability_zone = request.availability_zone;
        let available = Volume {
            state: "available".into(),
            ..created.clone()
        };
        state.volumes.insert(
            id,
            Scripted::new(created.clone(), [Some(created.clone()), Some(available)]),
        );
        Ok(Response::new(created))
    }

    async fn describe_volumes(&self, request: Request<DescribeVolumesRequest>) -> Reply<DescribeVolumesResponse> {
        let request = request.into_inner();
        let mut state = self.0.lock().unwrap();
        let volumes = describe(&mut state.volumes, &request.volume_ids, volume_not_found)?;
        Ok(Response::new(DescribeVolumesResponse { volumes }))
    }

    async fn attach_volume(&self, request: Request<AttachVolumeRequest>) -> Reply<VolumeAttachment> {
        let request = request.into_inner();
        dry_run(request.dry_run)?;
        let mut state = self.0.lock().unwrap();
        let id = request.volume_id.as_str();
        if !state.volumes.contains_key(id) {
            return Err(volume_not_found(id));
        }
        let instance = request.instance_id.as_str();
        let attaching = volume(id, "in-use", Some((instance, "attaching")));
        // i-bad's guest never takes the device: the attachment goes away.
        let last = if instance == "i-bad" {
            volume(id, "available", None)
        } else {
            volume(id, "in-use", Some((instance, "attached")))
        };
        let attachment = attaching.attachments[0].clone();
        state.volumes.insert(
            id.into(),
            Scripted::new(attaching.clone(), [Some(attaching), Some(last)]),
        );
        Ok(Response::new(attachment))
    }

    async fn detach_volume(&self, request: Request<DetachVolumeRequest>) -> Reply<VolumeAttachment> {
        let request = request.into_inner();
        dry_run(request.dry_run)?;
        let mut state = self.0.lock().unwrap();
        let id = request.volume_id.as_str();
        if !state.volumes.contains_key(id) {
            return Err(volume_not_found(id));
        }
        let detaching = volume(id, "in-use", Some(("i-1", "detaching")));
        let attachment = detaching.attachments[0].clone();
        state.volumes.insert(
            id.into(),
            Scripted::new(
                detaching.clone(),
                [Some(detaching), Some(volume(id, "available", None))],
            ),
        );
        Ok(Response::new(attachment))
    }

    async fn delete_volume(&self, request: Request<VolumeIdRequest>) -> Reply<Empty> {
        let request = request.into_inner();
        dry_run(request.dry_run)?;
        let mut state = self.0.lock().unwrap();
        let id = request.volume_id.as_str();
        if !state.volumes.contains_key(id) {
            return Err(volume_not_found(id));
        }
        let deleting = volume(id, "deleting", None);
        state
            .volumes
            .insert(id.into(), Scripted::new(deleting.clone(), [Some(deleting), None]));
        Ok(Response::new(Empty {}))
    }

    async fn modify_volume(&self, request: Request<ModifyVolumeRequest>) -> Reply<VolumeModification> {
        let request = request.into_inner();
        Ok(Response::new(VolumeModification {
            volume_id: request.volume_id,
            modification_state: "modifying".into(),
            target_size_gib: request.size_gib.unwrap_or(8),
            target_volume_type: "gp3".into(),
            original_size_gib: 8,
            original_volume_type: "gp3".into(),
            start_time: "2026-01-02T03:04:05Z".into(),
            ..Default::default()
        }))
    }

    async fn describe_volumes_modifications(
        &self,
        _: Request<DescribeVolumesModificationsRequest>,
    ) -> Reply<DescribeVolumesModificationsResponse> {
        unimplemented()
    }

    async fn create_snapshot(&self, request: Request<CreateSnapshotRequest>) -> Reply<Snapshot> {
        let request = request.into_inner();
        dry_run(request.dry_run)?;
        let mut state = self.0.lock().unwrap();
        state.created += 1;
        let id = format!("snap-{:04}", state.created);
        let volume_id = request.volume_id.as_str();
        let pending = snapshot(&id, volume_id, "pending", "0%", "");
        // vol-broken's snapshot fails.
        let last = if volume_id == "vol-broken" {
            snapshot(&id, volume_id, "error", "50%", "the volume's host went away")
        } else {
            snapshot(&id, volume_id, "completed", "100%", "")
        };
        let halfway = snapshot(&id, volume_id, "pending", "50%", "");
        state
            .snapshots
            .insert(id, Scripted::new(pending.clone(), [Some(halfway), Some(last)]));
        Ok(Response::new(pending))
    }

    async fn describe_snapshots(&self, request: Request<DescribeSnapshotsRequest>) -> Reply<DescribeSnapshotsResponse> {
        let request = request.into_inner();
        let mut state = self.0.lock().unwrap();
        let not_found =
            |id: &str| Status::not_found(format!("InvalidSnapshot.NotFound: The snapshot '{id}' does not exist."));
        let snapshots = describe(&mut state.snapshots, &request.snapshot_ids, not_found)?;
        Ok(Response::new(DescribeSnapshotsResponse { snapshots }))
    }

    async fn delete_snapshot(&self, _: Request<SnapshotIdRequest>) -> Reply<Empty> {
        unimplemented()
    }

    async fn copy_snapshot(&self, _: Request<CopySnapshotRequest>) -> Reply<SnapshotId> {
        unimplemented()
    }

    async fn describe_regions(&self, _: Request<DescribeRegionsRequest>) -> Reply<DescribeRegionsResponse> {
        Ok(Response::new(DescribeRegionsResponse {
            regions: vec![Region {
                region_name: "hearth-1".into(),
                endpoint: "unix:/run/hearthd.sock".into(),
            }],
        }))
    }

    async fn describe_availability_zones(
        &self,
        _: Request<DescribeAvailabilityZonesRequest>,
    ) -> Reply<DescribeAvailabilityZonesResponse> {
        unimplemented()
    }

    async fn create_vpc(&self, request: Request<CreateVpcRequest>) -> Reply<Vpc> {
        let request = request.into_inner();
        dry_run(request.dry_run)?;
        Ok(Response::new(Vpc {
            vpc_id: "vpc-0001".into(),
            cidr_block: request.cidr_block,
            state: "available".into(),
            owner_id: "000000000000".into(),
            instance_tenancy: "default".into(),
            tags: request.tag_specifications.into_iter().flat_map(|s| s.tags).collect(),
            ..Default::default()
        }))
    }

    async fn describe_vpcs(&self, _: Request<DescribeVpcsRequest>) -> Reply<DescribeVpcsResponse> {
        unimplemented()
    }

    async fn delete_vpc(&self, _: Request<VpcIdRequest>) -> Reply<Empty> {
        Ok(Response::new(Empty {}))
    }

    async fn create_subnet(&self, _: Request<CreateSubnetRequest>) -> Reply<Subnet> {
        unimplemented()
    }

    async fn describe_subnets(&self, _: Request<DescribeSubnetsRequest>) -> Reply<DescribeSubnetsResponse> {
        unimplemented()
    }

    async fn delete_subnet(&self, _: Request<SubnetIdRequest>) -> Reply<Empty> {
        unimplemented()
    }

    async fn create_security_group(&self, _: Request<CreateSecurityGroupRequest>) -> Reply<SecurityGroupId> {
        unimplemented()
    }

    async fn describe_security_groups(
        &self,
        _: Request<DescribeSecurityGroupsRequest>,
    ) -> Reply<DescribeSecurityGroupsResponse> {
        unimplemented()
    }

    async fn delete_security_group(&self, _: Request<DeleteSecurityGroupRequest>) -> Reply<Empty> {
        unimplemented()
    }

    async fn authorize_security_group_ingress(&self, request: Request<SecurityGroupRulesRequest>) -> Reply<Empty> {
        self.0.lock().unwrap().rules = Some(("AuthorizeSecurityGroupIngress", request.into_inner()));
        Ok(Response::new(Empty {}))
    }

    async fn authorize_security_group_egress(&self, request: Request<SecurityGroupRulesRequest>) -> Reply<Empty> {
        self.0.lock().unwrap().rules = Some(("AuthorizeSecurityGroupEgress", request.into_inner()));
        Ok(Response::new(Empty {}))
    }

    async fn revoke_security_group_ingress(&self, request: Request<SecurityGroupRulesRequest>) -> Reply<Empty> {
        self.0.lock().unwrap().rules = Some(("RevokeSecurityGroupIngress", request.into_inner()));
        Ok(Response::new(Empty {}))
    }

    async fn revoke_security_group_egress(&self, request: Request<SecurityGroupRulesRequest>) -> Reply<Empty> {
        self.0.lock().unwrap().rules = Some(("RevokeSecurityGroupEgress", request.into_inner()));
        Ok(Response::new(Empty {}))
    }

    async fn allocate_address(&self, _: Request<AllocateAddressRequest>) -> Reply<Address> {
        unimplemented()
    }

    async fn associate_address(&self, request: Request<AssociateAddressRequest>) -> Reply<AssociateAddressResponse> {
        let request = request.into_inner();
        if request.instance_id != "i-0abc" {
            return Err(not_found(&request.instance_id));
        }
        Ok(Response::new(AssociateAddressResponse {
            association_id: "eipassoc-0001".into(),
        }))
    }

    async fn disassociate_address(&self, _: Request<DisassociateAddressRequest>) -> Reply<Empty> {
        unimplemented()
    }

    async fn release_address(&self, _: Request<ReleaseAddressRequest>) -> Reply<Empty> {
        unimplemented()
    }

    async fn describe_addresses(&self, _: Request<DescribeAddressesRequest>) -> Reply<DescribeAddressesResponse> {
        unimplemented()
    }

    async fn modify_instance_metadata_options(
        &self,
        request: Request<ModifyInstanceMetadataOptionsRequest>,
    ) -> Reply<InstanceMetadataOptions> {
        let request = request.into_inner();
        Ok(Response::new(InstanceMetadataOptions {
            http_tokens: if request.http_tokens.is_empty() {
                "optional".into()
            } else {
                request.http_tokens
            },
            http_endpoint: "enabled".into(),
            http_put_response_hop_limit: request.http_put_response_hop_limit.unwrap_or(1),
        }))
    }
}

/// A fake hearthd on a fresh Unix socket; the server task ends with the test's runtime.
struct Server {
    fake: Fake,
    socket: PathBuf,
}

impl Server {
    async fn start(name: &str) -> Server {
        let socket = std::env::temp_dir().join(format!("hearth-cli-it-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let fake = Fake::default();
        let service = ComputeServer::new(fake.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        Server { fake, socket }
    }

    fn endpoint(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    fn add(&self, id: &str, state: &'static str) {
        let fake = FakeInstance {
            state,
            next: None,
            name: String::new(),
        };
        self.fake.0.lock().unwrap().instances.insert(id.into(), fake);
    }

    async fn hearth(&self, args: &[&str]) -> Output {
        hearth(&[&["--endpoint", &self.endpoint()], args].concat()).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn hearth(args: &[&str]) -> Output {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .env_remove("HEARTH_ENDPOINT")
        .env_remove("HEARTH_TOKEN")
        .output()
        .await
        .unwrap();
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_instances_waits_until_running_and_sends_the_token() {
    let server = Server::start("run").await;
    let out = server
        .hearth(&[
            "run-instances",
            "--image-id",
            "ami-0001",
            "--count",
            "2",
            "--tag-specifications",
            "ResourceType=instance,Tags=[{Key=Name,Value=web}]",
            "--token",
            "sekrit",
            "--wait",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("ID      STATE    TYPE      AZ         IMAGE     IP  LAUNCHED"),
        "{}",
        out.stdout
    );
    assert!(out
        .stdout
        .contains("i-0001  pending  t3.micro  hearth-1a  ami-0001  -   2026-01-02T03:04:05Z  web"));
    for id in ["i-0001", "i-0002"] {
        assert!(
            out.stderr.contains(&format!("{id} pending → running (")),
            "{}",
            out.stderr
        );
    }
    let auth = server.fake.0.lock().unwrap().authorization.clone();
    assert!(auth.len() >= 4, "{auth:?}");
    assert!(auth.iter().all(|a| a == "Bearer sekrit"), "{auth:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_prefix_and_json_output() {
    let server = Server::start("json").await;
    server.add("i-0abc", "running");
    let out = server.hearth(&["ec2", "describe-instances", "--output", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let instance = &json["Reservations"][0]["Instances"][0];
    assert_eq!(instance["InstanceId"], "i-0abc");
    assert_eq!(instance["State"], serde_json::json!({"Code": 16, "Name": "running"}));
    assert!(
        out.stdout.contains("\n    \"Reservations\": ["),
        "aws indents by four: {}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_terminate_wait_for_their_states() {
    let server = Server::start("stop").await;
    server.add("i-1", "running");
    let out = server
        .hearth(&["stop-instances", "--instance-ids", "i-1", "--wait", "--output", "text"])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "i-1\trunning\tstopping\n");
    assert!(out.stderr.contains("i-1 stopping → stopped ("), "{}", out.stderr);
    let out = server
        .hearth(&["terminate-instances", "--instance-ids", "i-1", "--wait"])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("i-1 shutting-down → terminated ("),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_timeout_exits_1() {
    let server = Server::start("timeout").await;
    server.add("i-stuck", "stopped");
    let out = server
        .hearth(&[
            "start-instances",
            "--instance-ids",
            "i-stuck",
            "--wait",
            "--wait-timeout",
            "0.3",
        ])
        .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("Timed out after 0.3 s waiting for running: i-stuck (pending)"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_print_the_aws_text_and_exit_254() {
    let server = Server::start("errors").await;
    server.add("i-protected", "running");
    let out = server.hearth(&["start-instances", "--instance-ids", "i-nope"]).await;
    assert_eq!(out.code, 254);
    assert_eq!(
        out.stderr,
        "\nAn error occurred (InvalidInstanceID.NotFound) when calling the StartInstances operation: \
         The instance ID 'i-nope' does not exist\n"
    );
    let out = server
        .hearth(&["stop-instances", "--instance-ids", "i-protected"])
        .await;
    assert_eq!(out.code, 254);
    assert!(
        out.stderr.contains(
            "An error occurred (IncorrectInstanceState) when calling the StopInstances operation: \
             The instance 'i-protected' is not in a state from which it can be stopped."
        ),
        "{}",
        out.stderr
    );
    let out = server
        .hearth(&["run-instances", "--image-id", "ami-0001", "--dry-run"])
        .await;
    assert_eq!(out.code, 254);
    assert_eq!(
        out.stderr,
        "\nAn error occurred (DryRunOperation) when calling the RunInstances operation: \
         Request would have succeeded, but DryRun flag is set.\n"
    );
    let out = server.hearth(&["describe-images"]).await;
    assert_eq!(out.code, 254);
    assert!(out
        .stderr
        .contains("An error occurred (InvalidAction) when calling the DescribeImages operation"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_output_is_decoded_except_in_json() {
    let server = Server::start("console").await;
    let out = server
        .hearth(&["get-console-output", "--instance-id", "i-1", "--output", "text"])
        .await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "hello console\n"),
        "{}",
        out.stderr
    );
    let out = server
        .hearth(&["get-console-output", "--instance-id", "i-1", "--output", "json"])
        .await;
    assert!(
        out.stdout.contains("\"Output\": \"aGVsbG8gY29uc29sZQo=\""),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_key_pair_prints_or_saves_the_private_key() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start("keys").await;
    let out = server.hearth(&["create-key-pair", "--key-name", "me"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n-----END OPENSSH PRIVATE KEY-----\n"
    );
    assert!(out.stderr.contains("Created key pair me (key-0001)"), "{}", out.stderr);

    let path = std::env::temp_dir().join(format!("hearth-cli-it-{}-me.pem", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let out = server
        .hearth(&["create-key-pair", "--key-name", "me", "--save", path.to_str().unwrap()])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains("PRIVATE KEY"), "{}", out.stdout);
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let again = server
        .hearth(&["create-key-pair", "--key-name", "me", "--save", path.to_str().unwrap()])
        .await;
    assert_eq!(again.code, 1, "an existing key file is never overwritten");
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_from_the_environment() {
    let server = Server::start("env").await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["describe-regions", "--output", "text"])
        .env("HEARTH_ENDPOINT", server.endpoint())
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "hearth-1\tunix:/run/hearthd.sock\n"
    );
}

#[tokio::test]
async fn unreachable_endpoint_exits_255_and_names_it() {
    let endpoint = format!("unix:{}/hearth-cli-it-absent.sock", std::env::temp_dir().display());
    let out = hearth(&["describe-regions", "--endpoint", &endpoint]).await;
    assert_eq!(out.code, 255);
    assert!(
        out.stderr
            .contains(&format!("Could not connect to the endpoint URL: \"{endpoint}\"")),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn usage_errors_exit_2_before_connecting() {
    let endpoint = "unix:/nonexistent/hearthd.sock";
    let out = hearth(&[
        "create-tags",
        "--resources",
        "i-1",
        "--tags",
        "Value=x",
        "--endpoint",
        endpoint,
    ])
    .await;
    assert_eq!(out.code, 2);
    assert!(out
        .stderr
        .contains("Error parsing parameter '--tags': Missing required parameter in Tags[0]: \"Key\""));
    let out = hearth(&["run-instances", "--endpoint", endpoint]).await;
    assert_eq!(out.code, 2);
    let out = hearth(&[
        "run-instances",
        "--image-id",
        "ami-1",
        "--user-data",
        "file:///nonexistent/ud",
        "--endpoint",
        endpoint,
    ])
    .await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("Unable to load paramfile file:///nonexistent/ud"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_wait_through_create_attach_detach_and_delete() {
    let server = Server::start("volumes").await;
    let out = server
        .hearth(&[
            "create-volume",
            "--availability-zone",
            "hearth-1a",
            "--size",
            "16",
            "--wait",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "ID        SIZE    TYPE  STATE     AZ         INSTANCE  DEVICE  NAME\n\
         vol-0001  16 GiB  gp3   creating  hearth-1a  -         -       -\n"
    );
    assert!(out.stderr.contains("vol-0001 creating → available ("), "{}", out.stderr);

    let out = server
        .hearth(&[
            "attach-volume",
            "--volume-id",
            "vol-0001",
            "--instance-id",
            "i-1",
            "--device",
            "/dev/sdf",
            "--output",
            "json",
            "--wait",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "AttachTime": "2026-01-02T03:04:06Z",
            "Device": "/dev/sdf",
            "InstanceId": "i-1",
            "State": "attaching",
            "VolumeId": "vol-0001"
        })
    );
    assert!(out.stderr.contains("vol-0001 attaching → attached ("), "{}", out.stderr);

    let out = server
        .hearth(&["detach-volume", "--volume-id", "vol-0001", "--wait", "--output", "text"])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "vol-0001\ti-1\t/dev/sdf\tdetaching\t2026-01-02T03:04:06Z\n");
    assert!(
        out.stderr.contains("vol-0001 detaching → available ("),
        "{}",
        out.stderr
    );

    let out = server
        .hearth(&["delete-volume", "--volume-id", "vol-0001", "--wait"])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("vol-0001 deleting → deleted ("), "{}", out.stderr);
    assert!(server.fake.0.lock().unwrap().volumes.is_empty());

    let out = server.hearth(&["describe-volumes", "--volume-ids", "vol-0001"]).await;
    assert_eq!(out.code, 254);
    assert!(
        out.stderr.contains(
            "An error occurred (InvalidVolume.NotFound) when calling the DescribeVolumes operation: \
             The volume 'vol-0001' does not exist."
        ),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attachment_fails_the_wait() {
    let server = Server::start("attach-fail").await;
    let out = server
        .hearth(&[
            "create-volume",
            "--availability-zone",
            "hearth-1a",
            "--size",
            "1",
            "--wait",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = server
        .hearth(&[
            "attach-volume",
            "--volume-id",
            "vol-0001",
            "--instance-id",
            "i-bad",
            "--device",
            "/dev/sdf",
            "--wait",
        ])
        .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("Waiter for state in-use failed: vol-0001 is available"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_wait_until_completed_or_fail_with_their_message() {
    let server = Server::start("snapshots").await;
    let out = server
        .hearth(&[
            "create-snapshot",
            "--volume-id",
            "vol-1",
            "--description",
            "nightly",
            "--output",
            "json",
            "--wait",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["SnapshotId"], "snap-0001");
    assert_eq!(json["State"], "pending");
    assert_eq!(json["VolumeSize"], 8);
    assert!(out.stderr.contains("snap-0001 pending → completed ("), "{}", out.stderr);

    let out = server
        .hearth(&["create-snapshot", "--volume-id", "vol-broken", "--wait"])
        .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("Waiter for state completed failed: snap-0002 is error: the volume's host went away"),
        "{}",
        out.stderr
    );

    let out = server.hearth(&["describe-snapshots", "--output", "text"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("snap-0001\tvol-1\tcompleted\t100%\t8 GiB\t0 B\t2026-01-02T03:04:05Z\t\n"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modify_volume_prints_the_modification() {
    let server = Server::start("modify").await;
    let out = server
        .hearth(&["modify-volume", "--volume-id", "vol-1", "--size", "16"])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "VOLUME  STATE      SIZE-GIB  TYPE  IOPS  THROUGHPUT  PROGRESS  STARTED\n\
         vol-1   modifying  8 → 16    gp3   -     -           0%        2026-01-02T03:04:05Z\n"
    );
    let out = server
        .hearth(&["modify-volume", "--volume-id", "vol-1", "--output", "json"])
        .await;
    assert_eq!(out.code, 2, "no change given: {}", out.stderr);
}

#[tokio::test]
async fn ebs_and_image_usage_errors_exit_2_before_connecting() {
    let endpoint = "unix:/nonexistent/hearthd.sock";
    let out = hearth(&[
        "create-volume",
        "--availability-zone",
        "hearth-1a",
        "--endpoint",
        endpoint,
    ])
    .await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("create-volume: give --size GIB"), "{}", out.stderr);
    let out = hearth(&["register-image", "--name", "x", "--endpoint", endpoint]).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("register-image: give --image-location PATH"),
        "{}",
        out.stderr
    );
    let out = hearth(&[
        "register-image",
        "--image-location",
        "/srv/images/alpine/image.json",
        "--kernel",
        "/srv/vmlinux",
        "--endpoint",
        endpoint,
    ])
    .await;
    assert_eq!(out.code, 2, "--image-location excludes --kernel: {}", out.stderr);
    let out = hearth(&[
        "create-volume",
        "--availability-zone",
        "a",
        "--volume-type",
        "gp9",
        "--size",
        "1",
    ])
    .await;
    assert_eq!(out.code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_group_rules_from_the_shortcut_flags_and_ip_permissions() {
    let server = Server::start("rules").await;
    let out = server
        .hearth(&[
            "authorize-security-group-ingress",
            "--group-id",
            "sg-0001",
            "--protocol",
            "tcp",
            "--port",
            "22",
            "--cidr",
            "10.0.0.0/8",
            "--output",
            "json",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "{\n    \"Return\": true\n}\n");
    let (call, request) = server.fake.0.lock().unwrap().rules.take().unwrap();
    assert_eq!(call, "AuthorizeSecurityGroupIngress");
    assert_eq!(
        request,
        SecurityGroupRulesRequest {
            group_id: "sg-0001".into(),
            group_name: String::new(),
            ip_permissions: vec![IpPermission {
                ip_protocol: "tcp".into(),
                from_port: Some(22),
                to_port: Some(22),
                ip_ranges: vec![IpRange {
                    cidr_ip: "10.0.0.0/8".into(),
                    description: String::new(),
                }],
                user_id_group_pairs: vec![],
            }],
            dry_run: false,
        }
    );

    let out = server
        .hearth(&[
            "revoke-security-group-egress",
            "--group-name",
            "web",
            "--ip-permissions",
            "IpProtocol=-1,IpRanges=[{CidrIp=0.0.0.0/0}]",
            r#"[{"IpProtocol":"udp","FromPort":53,"ToPort":53,"UserIdGroupPairs":[{"GroupId":"sg-0002"}]}]"#,
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "GROUP  DIRECTION  PROTOCOL  PORTS  PEER       DESCRIPTION\n\
         web    egress     all       all    0.0.0.0/0  -\n\
         web    egress     udp       53     sg-0002    -\n"
    );
    let (call, request) = server.fake.0.lock().unwrap().rules.take().unwrap();
    assert_eq!(call, "RevokeSecurityGroupEgress");
    assert_eq!(request.group_name, "web");
    assert_eq!(request.ip_permissions.len(), 2);
    assert_eq!(request.ip_permissions[1].user_id_group_pairs[0].group_id, "sg-0002");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networking_commands_print_aws_shapes() {
    let server = Server::start("network").await;
    let out = server
        .hearth(&[
            "create-vpc",
            "--cidr-block",
            "10.1.0.0/16",
            "--tag-specifications",
            "ResourceType=vpc,Tags=[{Key=Name,Value=prod}]",
            "--output",
            "json",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["Vpc"]["VpcId"], "vpc-0001");
    assert_eq!(json["Vpc"]["CidrBlock"], "10.1.0.0/16");
    assert_eq!(
        json["Vpc"]["Tags"],
        serde_json::json!([{"Key": "Name", "Value": "prod"}])
    );
    let out = server
        .hearth(&["create-vpc", "--cidr-block", "10.1.0.0/16", "--dry-run"])
        .await;
    assert_eq!(out.code, 254);
    assert!(out
        .stderr
        .contains("(DryRunOperation) when calling the CreateVpc operation"));

    let out = server.hearth(&["delete-vpc", "--vpc-id", "vpc-0001"]).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{}", out.stderr);

    let out = server
        .hearth(&[
            "associate-address",
            "--public-ip",
            "203.0.113.7",
            "--instance-id",
            "i-0abc",
            "--output",
            "json",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "{\n    \"AssociationId\": \"eipassoc-0001\"\n}\n");
    let out = server
        .hearth(&[
            "associate-address",
            "--public-ip",
            "203.0.113.7",
            "--instance-id",
            "i-9",
        ])
        .await;
    assert_eq!(out.code, 254);
    assert!(out
        .stderr
        .contains("(InvalidInstanceID.NotFound) when calling the AssociateAddress"));

    let out = server
        .hearth(&[
            "modify-instance-metadata-options",
            "--instance-id",
            "i-0abc",
            "--http-tokens",
            "required",
            "--http-put-response-hop-limit",
            "2",
            "--output",
            "json",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"InstanceId": "i-0abc", "InstanceMetadataOptions": {
            "State": "applied", "HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 2
        }})
    );

    let out = server
        .hearth(&[
            "run-instances",
            "--image-id",
            "ami-0001",
            "--subnet-id",
            "subnet-0001",
            "--security-group-ids",
            "sg-0001",
            "sg-0002",
            "--private-ip-address",
            "10.1.0.10",
            "--metadata-options",
            "HttpTokens=required,HttpPutResponseHopLimit=2",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let request = server.fake.0.lock().unwrap().run_request.take().unwrap();
    assert_eq!(request.subnet_id, "subnet-0001");
    assert_eq!(request.security_group_ids, ["sg-0001", "sg-0002"]);
    assert_eq!(request.private_ip_address, "10.1.0.10");
    let options = request.metadata_options.unwrap();
    assert_eq!(
        (options.http_tokens.as_str(), options.http_put_response_hop_limit),
        ("required", 2)
    );
}

#[tokio::test]
async fn networking_usage_errors_exit_2_before_connecting() {
    let endpoint = "unix:/nonexistent/hearthd.sock";
    let rules = |extra: &[&str]| {
        let mut args = vec!["authorize-security-group-ingress", "--endpoint", endpoint];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        hearth(&args).await
    };
    // No group; no rules; both kinds of rules; a shortcut without its protocol; tcp without ports; no peer.
    for (args, says) in [
        (
            rules(&["--protocol", "tcp", "--port", "22", "--cidr", "0.0.0.0/0"]),
            "--group-id",
        ),
        (rules(&["--group-id", "sg-1"]), "--ip-permissions"),
        (
            rules(&[
                "--group-id",
                "sg-1",
                "--ip-permissions",
                "IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=0.0.0.0/0}]",
                "--protocol",
                "tcp",
            ]),
            "cannot be used with",
        ),
        (
            rules(&["--group-id", "sg-1", "--port", "22", "--cidr", "0.0.0.0/0"]),
            "--protocol",
        ),
        (
            rules(&["--group-id", "sg-1", "--protocol", "tcp", "--cidr", "0.0.0.0/0"]),
            "--protocol tcp needs --port",
        ),
        (
            rules(&["--group-id", "sg-1", "--protocol", "tcp", "--port", "22"]),
            "needs --cidr CIDR or --source-group",
        ),
        (
            rules(&[
                "--group-id",
                "sg-1",
                "--protocol",
                "tcp",
                "--port",
                "22-x",
                "--cidr",
                "0.0.0.0/0",
            ]),
            "Error parsing parameter '--port'",
        ),
        (
            rules(&["--group-id", "sg-1", "--ip-permissions", "IpProtocol=tcp,Ipv6Ranges=[]"]),
            "Unknown parameter in IpPermissions[0]: \"Ipv6Ranges\"",
        ),
    ] {
        let out = run(args.clone()).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
    let out = hearth(&["release-address", "--endpoint", endpoint]).await;
    assert_eq!(out.code, 2);
    let out = hearth(&[
        "release-address",
        "--allocation-id",
        "eipalloc-1",
        "--public-ip",
        "203.0.113.7",
        "--endpoint",
        endpoint,
    ])
    .await;
    assert_eq!(out.code, 2);
    let out = hearth(&[
        "modify-instance-attribute",
        "--instance-id",
        "i-1",
        "--groups",
        "sg-1",
        "--instance-type",
        "t3.large",
        "--endpoint",
        endpoint,
    ])
    .await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("--groups changes the security groups alone"),
        "{}",
        out.stderr
    );
}

/// Runs `openssl` with `args` in `dir`; false when openssl is missing or fails.
fn openssl(dir: &std::path::Path, args: &[&str]) -> bool {
    std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_private_ca_and_a_token() {
    use tonic::transport::{Identity, ServerTlsConfig};
    let dir = std::env::temp_dir().join(format!("hearth-cli-it-{}-tls", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let made = openssl(
        &dir,
        &[
            &["req", "-x509"],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                "/CN=hearth test CA",
            ],
        ]
        .concat(),
    ) && openssl(
        &dir,
        &[
            &["req"],
            &ec[..],
            &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"],
        ]
        .concat(),
    ) && openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    );
    if !made {
        eprintln!("skipped: openssl could not make test certificates");
        return;
    }
    let identity = Identity::from_pem(
        std::fs::read(dir.join("server.pem")).unwrap(),
        std::fs::read(dir.join("server.key")).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let fake = Fake::default();
    fake.0.lock().unwrap().instances.insert(
        "i-tls".into(),
        FakeInstance {
            state: "running",
            next: None,
            name: "secure".into(),
        },
    );
    let server = tonic::transport::Server::builder()
        .tls_config(ServerTlsConfig::new().identity(identity))
        .unwrap()
        .add_service(ComputeServer::new(fake.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);

    let endpoint = format!("https://localhost:{port}");
    let ca = dir.join("ca.pem");
    let out = hearth(&[
        "describe-instances",
        "--endpoint",
        &endpoint,
        "--ca-cert",
        ca.to_str().unwrap(),
        "--token",
        "t0k",
        "--output",
        "text",
    ])
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("i-tls\trunning\t"), "{}", out.stdout);
    assert_eq!(fake.0.lock().unwrap().authorization, ["Bearer t0k"]);

    // Without the private CA the server's certificate is not trusted: a connection failure.
    let out = hearth(&["describe-instances", "--endpoint", &endpoint]).await;
    assert_eq!(out.code, 255, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("Could not connect to the endpoint URL: \"{endpoint}\"")),
        "{}",
        out.stderr
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
