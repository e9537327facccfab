//! End-to-end on real KVM: VMMs outlive their agent. A new agent (in this process, or
//! after the `hearth-agent` binary was killed) re-adopts the running ones and reports the
//! ones that ended meanwhile with their reason.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{converge_until, find, is_dead, wait_console, FakeHearthd, Host};
use hearth_agent::phase;

const BOOT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_agent_readopts_a_running_vmm() {
    require_kvm!();
    let host = Host::new("adopt");
    let id = "i-00000000000000a1";
    let mut desired = host.instance(id, "blk-counter,wait");
    let mut first = host.agent();
    let running = converge_until(&host, &mut first, &[desired.clone()], id, BOOT, |a| a.pid > 0).await;
    wait_console(&host, id, "probe: boot-count 1", 1, BOOT).await;
    drop(first);
    assert!(!is_dead(running.pid), "dropping the agent ended its VMM");

    let mut second = host.agent();
    // Known before any desired state arrives.
    let adopted = find(&second.actual(), id).expect("re-adopted instance");
    assert_eq!(
        (
            adopted.phase.as_str(),
            adopted.pid,
            adopted.start_generation,
            adopted.boot_count
        ),
        (phase::RUNNING, running.pid, 1, 1),
        "{adopted:?}"
    );
    // The same desired state starts nothing new.
    second.reconcile(&[desired.clone()]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    second.reconcile(&[desired.clone()]);
    assert_eq!(find(&second.actual(), id).unwrap().pid, running.pid);
    assert_eq!(host.console(id).matches("probe: hearth probe guest v1").count(), 1);

    // The adopted VMM obeys the new agent.
    desired.run = "stopped".into();
    let stopped = converge_until(&host, &mut second, &[desired], id, BOOT, |a| a.phase == phase::STOPPED).await;
    assert_eq!(stopped.last_exit_reason, "guest-poweroff", "{stopped:?}");
    assert!(host.console(id).contains("probe: power button"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_that_ended_while_no_agent_watched_is_reported_with_its_reason() {
    require_kvm!();
    let host = Host::new("gone");
    let id = "i-00000000000000a2";
    let desired = [host.instance(id, "blk-counter,wait")];
    let mut first = host.agent();
    let running = converge_until(&host, &mut first, &desired, id, BOOT, |a| a.pid > 0).await;
    wait_console(&host, id, "probe: boot-count 1", 1, BOOT).await;
    drop(first);

    // The guest powers off while no agent runs.
    let socket = host.run_dir(id).join("vmm.sock");
    hearth_agent::control::request_blocking(&socket, "power-button", Duration::from_secs(5)).unwrap();
    let deadline = std::time::Instant::now() + BOOT;
    while !is_dead(running.pid) {
        assert!(std::time::Instant::now() < deadline, "{}", host.diagnostics(id));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut second = host.agent();
    let found = find(&second.actual(), id).unwrap();
    assert_eq!(
        (found.phase.as_str(), found.pid, found.last_exit_reason.as_str()),
        (phase::STOPPED, 0, "guest-poweroff"),
        "{found:?}"
    );
    assert!(found.last_exit_unix_ms > 0);
    assert!(!host.run_dir(id).join("pid").exists());
    // A guest power-off is not undone.
    second.reconcile(&desired);
    tokio::time::sleep(Duration::from_millis(200)).await;
    second.reconcile(&desired);
    assert_eq!(find(&second.actual(), id).unwrap().phase, phase::STOPPED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_dies_its_vmm_lives_on_and_is_readopted() {
    require_kvm!();
    let host = Host::new("bin");
    let id = "i-00000000000000a3";
    let token = "t0k3n-for-tests";
    let hearthd = FakeHearthd::new(token);
    let socket = host.base.join("hearthd.sock");
    let _server = hearthd.serve_unix(&socket).await;
    hearthd.set_desired(vec![host.instance(id, "blk-counter,wait")]);
    let token_file = host.base.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();

    let mut agent = Command::new(env!("CARGO_BIN_EXE_hearth-agent"))
        .args(["--hearthd", &format!("unix:{}", socket.display())])
        .args(["--token-file", token_file.to_str().unwrap()])
        .args(["--run-dir", host.config.run_dir.to_str().unwrap()])
        .args(["--volume-dir", host.config.volume_dir.to_str().unwrap()])
        .args([
            "--host-id",
            "h-bin",
            "--az",
            "test-1a",
            "--vcpus",
            "3",
            "--memory-mib",
            "2048",
        ])
        .args(["--vmm", host.config.vmm_binary.to_str().unwrap()])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(host.base.join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let reported = hearthd
        .wait_report(id, BOOT, |a| a.phase == phase::RUNNING && a.pid > 0)
        .await;
    {
        let state = hearthd.state.lock().unwrap();
        let (auth, request) = state.calls.last().unwrap();
        assert_eq!(auth, &format!("Bearer {token}"));
        let reported_host = request.host.as_ref().unwrap();
        assert_eq!(
            (
                reported_host.host_id.as_str(),
                reported_host.availability_zone.as_str(),
                reported_host.vcpus,
                reported_host.memory_mib
            ),
            ("h-bin", "test-1a", 3, 2048)
        );
        assert_eq!(request.wait_ms, hearth_agent::WAIT_MS);
        assert_eq!(request.known_revision, 1);
    }
    wait_console(&host, id, "probe: boot-count 1", 1, BOOT).await;

    // The agent dies hard; its VM does not.
    agent.kill().unwrap();
    agent.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!is_dead(reported.pid), "the VMM died with its agent");

    // A new agent (not the VMM's parent: it watches the pid by polling).
    let mut next = host.agent();
    let adopted = find(&next.actual(), id).unwrap();
    assert_eq!((adopted.phase.as_str(), adopted.pid), (phase::RUNNING, reported.pid));

    // kill -9 behind its back: reported stopped, with a reason.
    common::kill9(reported.pid);
    let desired = hearthd.state.lock().unwrap().desired.clone();
    let stopped = converge_until(&host, &mut next, &desired, id, BOOT, |a| a.phase == phase::STOPPED).await;
    assert_eq!(stopped.last_exit_reason, "killed", "{stopped:?}");
    assert!(
        stopped.last_exit_detail.contains("without a vm-exit event"),
        "{stopped:?}"
    );
}
