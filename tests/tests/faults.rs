//! Faults: hearthd and the agent killed with SIGKILL, and a VMM killed behind the agent's
//! back. Every instance must end in a consistent state and no VM may be orphaned.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use hearth_api::v1::*;
use hearth_e2e::{kvm_available, process_alive, AgentMode, Cloud};

const T: Duration = Duration::from_secs(30);

fn all_instances(cloud: &Cloud) -> Vec<Instance> {
    cloud.block_on(async {
        let mut client = cloud.client().await;
        let response = client
            .describe_instances(DescribeInstancesRequest::default())
            .await
            .unwrap()
            .into_inner();
        response.reservations.into_iter().flat_map(|r| r.instances).collect()
    })
}

/// Instance IDs whose VMM process is alive, from the agent's run directory.
fn live_vmm_instances(cloud: &Cloud) -> HashSet<String> {
    let Ok(entries) = std::fs::read_dir(cloud.run_dir()) else {
        return HashSet::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .is_some_and(process_alive)
        })
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect()
}

#[test]
fn hearthd_killed_during_run_instances_leaves_nothing_inconsistent() {
    if !kvm_available() {
        return;
    }
    let mut cloud = Cloud::start(AgentMode::InProcess);
    let ami = cloud.register_probe_ami("probe-fault", "wait");
    // RunInstances of 10 in the background, hearthd killed while it is being served.
    let cli = hearth_e2e::binary("hearth");
    let socket = cloud.socket();
    let mut run = std::process::Command::new(cli)
        .arg("--endpoint")
        .arg(format!("unix:{}", socket.display()))
        .args([
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "t3.nano",
            "--count",
            "10",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(30));
    cloud.kill_hearthd();
    let _ = run.wait();
    cloud.start_hearthd();

    // Converge: every instance hearthd knows ends running; no VMM runs without a record.
    let deadline = Instant::now() + T;
    loop {
        let instances = all_instances(&cloud);
        let known: HashSet<String> = instances.iter().map(|i| i.instance_id.clone()).collect();
        let live = live_vmm_instances(&cloud);
        let orphans: Vec<_> = live.difference(&known).collect();
        assert!(
            orphans.is_empty(),
            "VMMs without a record: {orphans:?}\n{}",
            cloud.logs()
        );
        let settled = instances.iter().all(|i| {
            let state = i.state.as_ref().map(|s| s.name.as_str()).unwrap_or("");
            state == "running" && live.contains(&i.instance_id)
        });
        if settled {
            assert!(
                instances.is_empty() || instances.len() == 10,
                "partial reservation: {}",
                instances.len()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not consistent: {instances:?}\nlive VMMs {live:?}\n{}",
            cloud.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn agent_killed_keeps_vms_running_and_its_successor_readopts_them() {
    if !kvm_available() {
        return;
    }
    let mut cloud = Cloud::start(AgentMode::Separate);
    let ami = cloud.register_probe_ami("probe-adopt", "timer,blk-counter,wait");
    let reservation = cloud.cli_json(&[
        "run-instances",
        "--image-id",
        &ami,
        "--instance-type",
        "t3.nano",
        "--count",
        "2",
    ]);
    let ids: Vec<String> = reservation["Instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["InstanceId"].as_str().unwrap().to_string())
        .collect();
    for id in &ids {
        cloud.wait_state(id, "running", T);
    }
    let pids_before: HashSet<i32> = cloud.vmm_pids().into_iter().collect();
    assert_eq!(pids_before.len(), 2);

    cloud.kill_agent();
    std::thread::sleep(Duration::from_millis(300));
    for pid in &pids_before {
        assert!(process_alive(*pid), "VMM {pid} died with the agent");
    }
    cloud.start_agent();
    std::thread::sleep(Duration::from_secs(1));
    let pids_after: HashSet<i32> = cloud.vmm_pids().into_iter().collect();
    assert_eq!(pids_before, pids_after, "VMMs were restarted instead of re-adopted");
    for id in &ids {
        assert_eq!(cloud.state(id), "running");
    }
    // The re-adopted VMM is still controlled: stop works gracefully.
    cloud.cli_json(&["stop-instances", "--instance-ids", &ids[0]]);
    cloud.wait_state(&ids[0], "stopped", T);
    cloud.wait_console(&ids[0], "probe: power button", T);
}

#[test]
fn vmm_killed_behind_the_agents_back_ends_stopped() {
    if !kvm_available() {
        return;
    }
    let cloud = Cloud::start(AgentMode::InProcess);
    let ami = cloud.register_probe_ami("probe-kill", "wait");
    let reservation = cloud.cli_json(&["run-instances", "--image-id", &ami, "--instance-type", "t3.nano"]);
    let id = reservation["Instances"][0]["InstanceId"].as_str().unwrap().to_string();
    cloud.wait_state(&id, "running", T);
    let pid = cloud.vmm_pids()[0];
    // SAFETY: kill(2) on the VMM we just started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    cloud.wait_state(&id, "stopped", T);
    let reason = cloud.instance(&id).state_reason.unwrap_or_default();
    assert!(!reason.code.is_empty(), "no state reason after the VMM died");
}
