//! EC2 instance lifecycle through the whole stack, with real VMs (the probe AMI).

use std::time::Duration;

use hearth_api::v1::*;
use hearth_e2e::{kvm_available, AgentMode, Cloud};

const T: Duration = Duration::from_secs(30);

fn ec2_code(status: &tonic::Status) -> String {
    status.message().split(':').next().unwrap_or_default().to_string()
}

fn run_one(cloud: &Cloud, image: &str, extra: &[&str]) -> String {
    let mut args = vec!["run-instances", "--image-id", image, "--instance-type", "t3.micro"];
    args.extend_from_slice(extra);
    let reservation = cloud.cli_json(&args);
    let instance = &reservation["Instances"][0];
    assert_eq!(instance["State"]["Code"], 0, "{reservation}");
    assert_eq!(instance["State"]["Name"], "pending");
    instance["InstanceId"].as_str().unwrap().to_string()
}

#[test]
fn run_stop_start_reboot_terminate_with_ebs_surviving_stop() {
    if !kvm_available() {
        return;
    }
    let cloud = Cloud::start(AgentMode::InProcess);
    let ami = cloud.register_probe_ami("probe-counter", "timer,blk-counter,wait");
    let id = run_one(&cloud, &ami, &[]);
    assert!(id.starts_with("i-") && id.len() == 19, "{id}");

    let seen = cloud.wait_state(&id, "running", T);
    assert_eq!(seen.first().map(String::as_str), Some("pending"));
    let running = cloud.instance(&id);
    assert_eq!(running.state.as_ref().unwrap().code, 16);
    cloud.wait_console(&id, "probe: boot-count 1", T);
    let root = running.block_device_mappings[0].volume_id.clone();
    assert!(root.starts_with("vol-"), "{running:?}");
    assert!(cloud.volume_dir().join(format!("{root}.img")).exists());

    // Stop: graceful (the probe answers the power button), EBS kept.
    let changes = cloud.cli_json(&["stop-instances", "--instance-ids", &id]);
    assert_eq!(
        changes["StoppingInstances"][0]["CurrentState"]["Name"], "stopping",
        "{changes}"
    );
    cloud.wait_state(&id, "stopped", T);
    assert_eq!(cloud.instance(&id).state.unwrap().code, 80);
    assert!(cloud.vmm_pids().is_empty(), "a VMM still runs after stop");

    // Start: same ID, same root volume, the counter on it goes on.
    let changes = cloud.cli_json(&["start-instances", "--instance-ids", &id]);
    assert_eq!(
        changes["StartingInstances"][0]["CurrentState"]["Name"], "pending",
        "{changes}"
    );
    cloud.wait_state(&id, "running", T);
    cloud.wait_console(&id, "probe: boot-count 2", T);
    assert_eq!(cloud.instance(&id).block_device_mappings[0].volume_id, root);

    // Reboot keeps it running; the guest boots again (counter 3).
    let output = cloud.cli(&["reboot-instances", "--instance-ids", &id]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    cloud.wait_console(&id, "probe: boot-count 3", T);
    assert_eq!(cloud.state(&id), "running");

    // Terminate: shutting-down → terminated, still listed, root volume deleted.
    let changes = cloud.cli_json(&["terminate-instances", "--instance-ids", &id]);
    assert_eq!(
        changes["TerminatingInstances"][0]["CurrentState"]["Name"], "shutting-down",
        "{changes}"
    );
    cloud.wait_state(&id, "terminated", T);
    assert_eq!(cloud.instance(&id).state.unwrap().code, 48);
    assert!(
        !cloud.volume_dir().join(format!("{root}.img")).exists(),
        "root volume kept after terminate"
    );
    // Terminate is idempotent.
    let again = cloud.cli_json(&["terminate-instances", "--instance-ids", &id]);
    assert_eq!(again["TerminatingInstances"][0]["CurrentState"]["Name"], "terminated");
}

#[test]
fn root_volume_is_kept_when_delete_on_termination_is_false() {
    if !kvm_available() {
        return;
    }
    let cloud = Cloud::start(AgentMode::InProcess);
    let ami = cloud.register_probe_ami("probe-keep", "wait");
    let id = run_one(
        &cloud,
        &ami,
        &[
            "--block-device-mappings",
            "DeviceName=/dev/xvda,Ebs={DeleteOnTermination=false}",
        ],
    );
    cloud.wait_state(&id, "running", T);
    let root = cloud.instance(&id).block_device_mappings[0].volume_id.clone();
    cloud.cli_json(&["terminate-instances", "--instance-ids", &id]);
    cloud.wait_state(&id, "terminated", T);
    assert!(
        cloud.volume_dir().join(format!("{root}.img")).exists(),
        "volume {root} deleted"
    );
}

#[test]
fn disable_api_termination_blocks_terminate_until_cleared() {
    if !kvm_available() {
        return;
    }
    let cloud = Cloud::start(AgentMode::InProcess);
    let ami = cloud.register_probe_ami("probe-protect", "wait");
    let id = run_one(&cloud, &ami, &["--disable-api-termination"]);
    cloud.wait_state(&id, "running", T);
    let output = cloud.cli(&["terminate-instances", "--instance-ids", &id]);
    assert_eq!(output.status.code(), Some(254));
    assert!(String::from_utf8_lossy(&output.stderr).contains("(OperationNotPermitted)"));
    cloud.cli_json(&["stop-instances", "--instance-ids", &id]);
    cloud.wait_state(&id, "stopped", T);
    let output = cloud.cli(&["terminate-instances", "--instance-ids", &id]);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("(OperationNotPermitted)"),
        "also when stopped"
    );
    let output = cloud.cli(&[
        "modify-instance-attribute",
        "--instance-id",
        &id,
        "--no-disable-api-termination",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    cloud.cli_json(&["terminate-instances", "--instance-ids", &id]);
    cloud.wait_state(&id, "terminated", T);
}

#[test]
fn guest_power_off_follows_the_shutdown_behaviour() {
    if !kvm_available() {
        return;
    }
    let cloud = Cloud::start(AgentMode::InProcess);
    let ami = cloud.register_probe_ami("probe-poweroff", "timer,poweroff");
    let stop = run_one(&cloud, &ami, &[]);
    let terminate = run_one(&cloud, &ami, &["--instance-initiated-shutdown-behavior", "terminate"]);
    cloud.wait_state(&stop, "stopped", T);
    let reason = cloud.instance(&stop).state_reason.unwrap();
    assert_eq!(reason.code, "Client.InstanceInitiatedShutdown", "{reason:?}");
    cloud.wait_state(&terminate, "terminated", T);
}

#[test]
fn illegal_transitions_unknown_ids_dry_run_and_client_token() {
    if !kvm_available() {
        return;
    }
    let cloud = Cloud::start(AgentMode::InProcess);
    let ami = cloud.register_probe_ami("probe-api", "wait");
    let id = run_one(&cloud, &ami, &[]);
    cloud.wait_state(&id, "running", T);
    cloud.block_on(async {
        let mut client = cloud.client().await;
        let state_client = client.clone();
        let state = move |id: String| {
            let mut client = state_client.clone();
            async move {
                let response = client
                    .describe_instances(DescribeInstancesRequest {
                        instance_ids: vec![id],
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                response.reservations[0].instances[0].state.clone().unwrap().name
            }
        };
        let ids = |ids: &[&str]| InstanceIdsRequest {
            instance_ids: ids.iter().map(|s| s.to_string()).collect(),
            dry_run: false,
        };

        // One unknown ID in a batch: NotFound and nothing changes.
        let err = client
            .stop_instances(StopInstancesRequest {
                instance_ids: vec![id.clone(), "i-0123456789abcdef0".into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(ec2_code(&err), "InvalidInstanceID.NotFound", "{err:?}");
        assert_eq!(state(id.clone()).await, "running");
        let err = client
            .stop_instances(StopInstancesRequest {
                instance_ids: vec!["i-xyz".into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(ec2_code(&err), "InvalidInstanceID.Malformed", "{err:?}");
        let err = client.start_instances(ids(&[])).await.unwrap_err();
        assert_eq!(ec2_code(&err), "InvalidParameterCombination", "{err:?}");

        // DryRun: DryRunOperation and no change.
        let err = client
            .stop_instances(StopInstancesRequest {
                instance_ids: vec![id.clone()],
                dry_run: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(ec2_code(&err), "DryRunOperation", "{err:?}");
        assert_eq!(state(id.clone()).await, "running");

        // ClientToken: the same reservation twice.
        let request = RunInstancesRequest {
            image_id: ami.clone(),
            instance_type: "t3.nano".into(),
            min_count: 2,
            max_count: 2,
            client_token: "e2e-token-1".into(),
            ..Default::default()
        };
        let first = client.run_instances(request.clone()).await.unwrap().into_inner();
        let second = client.run_instances(request).await.unwrap().into_inner();
        assert_eq!(first.reservation_id, second.reservation_id);
        let ids_first: Vec<_> = first.instances.iter().map(|i| i.instance_id.clone()).collect();
        let ids_second: Vec<_> = second.instances.iter().map(|i| i.instance_id.clone()).collect();
        assert_eq!(ids_first, ids_second);
        assert_eq!(ids_first.len(), 2);

        // Terminate, then start: IncorrectInstanceState.
        client.terminate_instances(ids(&[&id])).await.unwrap();
        let err = client.start_instances(ids(&[&id])).await.unwrap_err();
        assert_eq!(ec2_code(&err), "IncorrectInstanceState", "{err:?}");
        let err = client.reboot_instances(ids(&[&id])).await.unwrap_err();
        assert_eq!(ec2_code(&err), "IncorrectInstanceState", "{err:?}");
    });
}

#[test]
fn tag_filters_with_wildcards_and_pagination() {
    if !kvm_available() {
        return;
    }
    let cloud = Cloud::start(AgentMode::InProcess);
    let ami = cloud.register_probe_ami("probe-tags", "wait");
    let web = run_one(
        &cloud,
        &ami,
        &[
            "--count",
            "3",
            "--tag-specifications",
            "ResourceType=instance,Tags=[{Key=Name,Value=web-1},{Key=tier,Value=front}]",
        ],
    );
    let db = run_one(
        &cloud,
        &ami,
        &[
            "--tag-specifications",
            "ResourceType=instance,Tags=[{Key=Name,Value=db-1}]",
        ],
    );
    let filtered = cloud.cli_json(&["describe-instances", "--filters", "Name=tag:Name,Values=web-*"]);
    let ids: Vec<String> = filtered["Reservations"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r["Instances"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["InstanceId"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(ids.len(), 3, "{filtered}");
    assert!(ids.contains(&web) && !ids.contains(&db));
    let by_key = cloud.cli_json(&["describe-instances", "--filters", "Name=tag-key,Values=tier"]);
    assert_eq!(by_key["Reservations"][0]["Instances"].as_array().unwrap().len(), 3);
    let by_value = cloud.cli_json(&["describe-instances", "--filters", "Name=tag-value,Values=db-?"]);
    assert_eq!(by_value["Reservations"][0]["Instances"][0]["InstanceId"], db.as_str());

    // Pagination: 4 instances, pages of 5 minimum in EC2 → use the gRPC call with 5 and
    // more instances.
    cloud.cli_json(&[
        "run-instances",
        "--image-id",
        &ami,
        "--instance-type",
        "t3.nano",
        "--count",
        "3",
    ]);
    cloud.block_on(async {
        let mut client = cloud.client().await;
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = client
                .describe_instances(DescribeInstancesRequest {
                    max_results: 5,
                    next_token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let count: usize = page.reservations.iter().map(|r| r.instances.len()).sum();
            assert!(count <= 5);
            seen.extend(
                page.reservations
                    .into_iter()
                    .flat_map(|r| r.instances)
                    .map(|i| i.instance_id),
            );
            if page.next_token.is_empty() {
                break;
            }
            token = page.next_token;
        }
        let unique: std::collections::HashSet<_> = seen.iter().collect();
        assert_eq!(seen.len(), 7, "{seen:?}");
        assert_eq!(unique.len(), 7);
    });
}
