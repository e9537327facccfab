//! End-to-end on real KVM: the agent drives real `hearth-vmm` processes booting the probe
//! guest through start, stop, start again, guest power-off, guest reboot, reboot
//! requests, forced stops and termination.

mod common;

use std::time::{Duration, Instant};

use common::{converge_until, find, wait_console, Host};
use hearth_agent::phase;

const BOOT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_and_start_again_keeps_the_volume() {
    require_kvm!();
    let host = Host::new("life");
    let mut agent = host.agent();
    let id = "i-0000000000000001";
    let mut desired = host.instance(id, "blk-counter,wait");

    let running = converge_until(&host, &mut agent, &[desired.clone()], id, BOOT, |a| {
        a.phase == phase::RUNNING && a.pid > 0
    })
    .await;
    assert_eq!((running.start_generation, running.boot_count), (1, 1), "{running:?}");
    wait_console(&host, id, "probe: boot-count 1", 1, BOOT).await;

    // The run directory holds what docs/control-plane.md lists.
    let dir = host.run_dir(id);
    assert_eq!(running.console_path, dir.join("console.log").display().to_string());
    let pid_file = std::fs::read_to_string(dir.join("pid")).unwrap();
    assert_eq!(pid_file.trim(), running.pid.to_string());
    assert!(dir.join("vmm.sock").exists());
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["disks"][0]["id"], "vol0000000000000001", "{config}");
    assert_eq!(
        config["disks"][0]["path"],
        host.volume_file("vol-0000000000000001").display().to_string()
    );
    assert_eq!(config["rng"], true);
    assert_eq!(config["control_socket"], "vmm.sock");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["start_generation"], 1);
    assert!(
        host.console(id).contains(" id=vol0000000000000001"),
        "{}",
        host.diagnostics(id)
    );
    let vmm_log = std::fs::read_to_string(dir.join("vmm.log")).unwrap();
    assert!(vmm_log.contains(r#""event":"vm-started""#), "{vmm_log}");

    // Stop: power button, the probe powers off.
    desired.run = "stopped".into();
    agent.reconcile(&[desired.clone()]);
    assert_eq!(find(&agent.actual(), id).unwrap().phase, phase::STOPPING);
    let stopped = converge_until(&host, &mut agent, &[desired.clone()], id, BOOT, |a| {
        a.phase == phase::STOPPED
    })
    .await;
    assert_eq!(stopped.last_exit_reason, "guest-poweroff", "{stopped:?}");
    assert_eq!(stopped.pid, 0);
    assert!(stopped.last_exit_unix_ms > 0);
    assert!(host.console(id).contains("probe: power button"));
    assert!(!dir.join("pid").exists());
    assert!(host.volume_file("vol-0000000000000001").exists());

    // Start again (StartInstances bumps the start generation): same volume, counter 2.
    desired.run = "running".into();
    desired.start_generation = 2;
    let again = converge_until(&host, &mut agent, &[desired.clone()], id, BOOT, |a| {
        a.phase == phase::RUNNING && a.pid > 0
    })
    .await;
    assert_eq!((again.start_generation, again.boot_count), (2, 1), "{again:?}");
    assert_ne!(again.pid, running.pid);
    wait_console(&host, id, "probe: boot-count 2", 1, BOOT).await;

    desired.run = "stopped".into();
    desired.force_stop = true;
    converge_until(&host, &mut agent, &[desired], id, BOOT, |a| a.phase == phase::STOPPED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_poweroff_is_reported_and_not_restarted() {
    require_kvm!();
    let host = Host::new("poweroff");
    let mut agent = host.agent();
    let id = "i-0000000000000002";
    let desired = [host.instance(id, "blk-counter,poweroff")];
    let stopped = converge_until(&host, &mut agent, &desired, id, BOOT, |a| {
        a.phase == phase::STOPPED && !a.last_exit_reason.is_empty()
    })
    .await;
    assert_eq!(stopped.last_exit_reason, "guest-poweroff", "{stopped:?}");
    assert_eq!((stopped.start_generation, stopped.boot_count), (1, 1));
    // Desired is still running, yet nothing starts again.
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        agent.reconcile(&desired);
        let now = find(&agent.actual(), id).unwrap();
        assert_eq!((now.phase.as_str(), now.boot_count), (phase::STOPPED, 1), "{now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        host.console(id).matches("probe: hearth probe guest v1").count(),
        1,
        "{}",
        host.diagnostics(id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_reboot_starts_a_new_vmm_and_the_instance_stays_running() {
    require_kvm!();
    let host = Host::new("reboot");
    let mut agent = host.agent();
    let id = "i-0000000000000003";
    // The probe reboots after counting each boot on its disk: a reboot loop.
    let mut desired = host.instance(id, "blk-counter,reboot");
    let mut pids = std::collections::BTreeSet::new();
    let mut phases = std::collections::BTreeSet::new();
    let rebooted = converge_until(&host, &mut agent, &[desired.clone()], id, BOOT, |a| {
        // From the first start on (before it, nothing of generation 1 ran yet).
        if a.start_generation == 1 {
            pids.insert(a.pid);
            phases.insert(a.phase.clone());
        }
        a.boot_count >= 3
    })
    .await;
    assert_eq!(rebooted.start_generation, 1);
    assert_eq!(rebooted.last_exit_reason, "guest-reboot", "{rebooted:?}");
    assert_eq!(
        phases.into_iter().collect::<Vec<_>>(),
        [phase::RUNNING],
        "a rebooting instance is running throughout"
    );
    assert!(pids.len() >= 2, "each boot is a new VMM: {pids:?}");
    // The volume survives the reboots: the counter goes on.
    wait_console(&host, id, "probe: boot-count 2", 1, BOOT).await;
    wait_console(&host, id, "probe: boot-count 3", 1, BOOT).await;

    // Stopping ends the loop: a VMM ending with guest-reboot is not restarted when the
    // instance is desired stopped.
    desired.run = "stopped".into();
    desired.stop_timeout_ms = 200;
    let stopped = converge_until(&host, &mut agent, &[desired.clone()], id, BOOT, |a| {
        a.phase == phase::STOPPED
    })
    .await;
    let boots = stopped.boot_count;
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.reconcile(&[desired]);
    let later = find(&agent.actual(), id).unwrap();
    assert_eq!(
        (later.phase.as_str(), later.boot_count),
        (phase::STOPPED, boots),
        "{later:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_request_replaces_the_vmm() {
    require_kvm!();
    let host = Host::new("rebootreq");
    let mut agent = host.agent();
    let id = "i-0000000000000004";
    let mut desired = host.instance(id, "blk-counter,wait");
    let first = converge_until(&host, &mut agent, &[desired.clone()], id, BOOT, |a| a.pid > 0).await;
    wait_console(&host, id, "probe: boot-count 1", 1, BOOT).await;

    // RebootInstances: power button, the probe powers off, a new VMM boots.
    desired.reboot_generation = 1;
    let mut phases = std::collections::BTreeSet::new();
    let second = converge_until(&host, &mut agent, &[desired.clone()], id, BOOT, |a| {
        phases.insert(a.phase.clone());
        a.boot_count == 2 && a.pid > 0
    })
    .await;
    assert_ne!(second.pid, first.pid);
    assert_eq!(
        (second.start_generation, second.reboot_generation),
        (1, 1),
        "{second:?}"
    );
    assert_eq!(phases.into_iter().collect::<Vec<_>>(), [phase::RUNNING]);
    wait_console(&host, id, "probe: power button", 1, BOOT).await;
    wait_console(&host, id, "probe: boot-count 2", 1, BOOT).await;
    // Carried out once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    agent.reconcile(&[desired]);
    let later = find(&agent.actual(), id).unwrap();
    assert_eq!((later.pid, later.boot_count), (second.pid, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_ignores_the_power_button_is_forced_off() {
    require_kvm!();
    let host = Host::new("hang");
    let mut agent = host.agent();
    let hung = "i-0000000000000005";
    let waiting = "i-0000000000000006";
    let mut desired = [host.instance(hung, "hang"), host.instance(waiting, "wait")];
    converge_until(&host, &mut agent, &desired, hung, BOOT, |a| a.pid > 0).await;
    converge_until(&host, &mut agent, &desired, waiting, BOOT, |a| a.pid > 0).await;
    wait_console(&host, hung, "probe: hanging", 1, BOOT).await;

    // A graceful stop with a short timeout on the hung guest, StopInstances --force on
    // the other: both end as killed; the forced one does not wait for a timeout.
    desired[0].run = "stopped".into();
    desired[0].stop_timeout_ms = 300;
    desired[1].run = "stopped".into();
    desired[1].force_stop = true;
    let started = Instant::now();
    let forced = converge_until(&host, &mut agent, &desired, waiting, BOOT, |a| {
        a.phase == phase::STOPPED
    })
    .await;
    assert_eq!(forced.last_exit_reason, "killed", "{forced:?}");
    assert!(!host.console(waiting).contains("probe: power button"));
    let timed_out = converge_until(&host, &mut agent, &desired, hung, BOOT, |a| a.phase == phase::STOPPED).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(timed_out.last_exit_reason, "killed", "{timed_out:?}");
    assert!(!timed_out.last_exit_detail.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_deletes_the_volumes_marked_for_deletion_and_the_run_dir() {
    require_kvm!();
    let host = Host::new("term");
    let mut agent = host.agent();
    let id = "i-0000000000000007";
    let mut desired = host.instance(id, "blk-counter,wait");
    desired.volumes.push(host.volume("vol-data0000000007", false));
    converge_until(&host, &mut agent, &[desired.clone()], id, BOOT, |a| a.pid > 0).await;
    wait_console(&host, id, "probe: boot-count 1", 1, BOOT).await;
    assert!(agent.console_output(id).unwrap().ends_with(b"probe: boot-count 1\n"));
    assert!(host.volume_file("vol-data0000000007").exists());

    desired.run = "terminated".into();
    let terminated = converge_until(&host, &mut agent, &[desired.clone()], id, BOOT, |a| {
        a.phase == phase::TERMINATED
    })
    .await;
    assert_eq!(terminated.deleted_volumes, ["vol-0000000000000007"]);
    assert_eq!(terminated.last_exit_reason, "guest-poweroff");
    assert!(!host.volume_file("vol-0000000000000007").exists());
    assert!(host.volume_file("vol-data0000000007").exists());
    assert!(!host.run_dir(id).exists());
    assert_eq!(agent.console_output(id), None);
    // Forgotten once hearthd no longer lists it.
    agent.reconcile(&[]);
    assert!(agent.actual().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_killed_behind_the_agents_back_is_reported_stopped() {
    require_kvm!();
    let host = Host::new("kill9");
    let mut agent = host.agent();
    let id = "i-0000000000000008";
    let desired = [host.instance(id, "wait")];
    let running = converge_until(&host, &mut agent, &desired, id, BOOT, |a| a.pid > 0).await;
    wait_console(&host, id, "probe: hearth probe guest v1", 1, BOOT).await;
    common::kill9(running.pid);
    let stopped = converge_until(&host, &mut agent, &desired, id, BOOT, |a| a.phase == phase::STOPPED).await;
    assert_eq!(stopped.last_exit_reason, "killed", "{stopped:?}");
    assert!(stopped.last_exit_detail.contains("signal 9"), "{stopped:?}");
    // Not restarted, no zombie left.
    tokio::time::sleep(Duration::from_millis(200)).await;
    agent.reconcile(&desired);
    assert_eq!(find(&agent.actual(), id).unwrap().phase, phase::STOPPED);
    assert!(!std::path::Path::new(&format!("/proc/{}", running.pid)).exists());
    // hearth-vmm could not remove its socket: the next start must.
    assert!(host.run_dir(id).join("vmm.sock").exists());
    let mut again = desired[0].clone();
    again.start_generation = 2;
    converge_until(&host, &mut agent, &[again.clone()], id, BOOT, |a| {
        a.phase == phase::RUNNING && a.start_generation == 2 && a.pid > 0
    })
    .await;
    wait_console(&host, id, "probe: hearth probe guest v1", 2, BOOT).await;
    again.force_stop = true;
    again.run = "stopped".into();
    converge_until(&host, &mut agent, &[again], id, BOOT, |a| a.phase == phase::STOPPED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_right_after_the_start_still_presses_the_power_button() {
    require_kvm!();
    let host = Host::new("early");
    let mut agent = host.agent();
    let id = "i-0000000000000009";
    let mut desired = host.instance(id, "wait");
    // Stop the moment the process exists, before its control socket is bound.
    converge_until(&host, &mut agent, &[desired.clone()], id, BOOT, |a| a.pid > 0).await;
    desired.run = "stopped".into();
    let stopped = converge_until(&host, &mut agent, &[desired], id, BOOT, |a| a.phase == phase::STOPPED).await;
    assert_eq!(stopped.last_exit_reason, "guest-poweroff", "{stopped:?}");
    wait_console(&host, id, "probe: power button", 1, BOOT).await;
}
