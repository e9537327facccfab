//! End-to-end on real KVM: `run_agent` against a small hearthd over a Unix socket: the
//! desired state flows down, every VMM start and end is reported back at once, and the
//! agent rides out hearthd going away.

mod common;

use std::time::Duration;

use common::{FakeHearthd, Host};
use hearth_agent::{phase, run_agent};

const BOOT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_agent_converges_and_reports_over_a_unix_socket() {
    require_kvm!();
    let host = Host::new("sync");
    let id = "i-00000000000000b1";
    let token = "sync-token";
    let hearthd = FakeHearthd::new(token);
    let socket = host.base.join("hearthd.sock");
    let server = hearthd.serve_unix(&socket).await;
    let mut desired = host.instance(id, "blk-counter,wait");
    hearthd.set_desired(vec![desired.clone()]);

    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let endpoint = format!("unix:{}", socket.display());
    let config = host.config.clone();
    let agent = tokio::spawn(async move {
        run_agent(config, &endpoint, token, async {
            let _ = agent_stopped.await;
        })
        .await
    });

    let running = hearthd
        .wait_report(id, BOOT, |a| a.phase == phase::RUNNING && a.pid > 0)
        .await;
    assert_eq!((running.start_generation, running.boot_count), (1, 1));

    // StopInstances: a new revision; the stop and then the end are reported.
    desired.run = "stopped".into();
    hearthd.set_desired(vec![desired.clone()]);
    let stopped = hearthd.wait_report(id, BOOT, |a| a.phase == phase::STOPPED).await;
    assert_eq!(stopped.last_exit_reason, "guest-poweroff", "{stopped:?}");

    // hearthd goes away: the agent keeps retrying and finds it again.
    let _ = server.send(());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = std::fs::remove_file(&socket);
    let calls_before = hearthd.reported(id).1;
    desired.run = "running".into();
    desired.start_generation = 2;
    hearthd.set_desired(vec![desired.clone()]);
    let _server = hearthd.serve_unix(&socket).await;
    let again = hearthd
        .wait_report(id, BOOT, |a| {
            a.phase == phase::RUNNING && a.start_generation == 2 && a.pid > 0
        })
        .await;
    assert!(hearthd.reported(id).1 > calls_before);
    common::wait_console(&host, id, "probe: boot-count 2", 1, BOOT).await;

    // Shutting the agent down leaves the VM running.
    stop_agent.send(()).unwrap();
    agent.await.unwrap().unwrap();
    assert!(!common::is_dead(again.pid));
}
