//! Helpers for the end-to-end tests: locate hearth-vmm and the probe guest, a scratch host
//! (run dir, volume dir, source image) that kills every process it started when dropped,
//! desired instances, and a small in-test hearthd speaking AgentControl.Sync.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hearth_agent::{Agent, AgentConfig, HostSpec};
use hearth_api::v1::agent_control_server::{AgentControl, AgentControlServer};
use hearth_api::v1::{ActualInstance, DesiredInstance, DesiredVolume, SyncRequest, SyncResponse};
use tokio::sync::Notify;

/// Repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// True when running under CI, where nothing may be skipped for lack of KVM.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Returns false (and says why) when `/dev/kvm` is unusable; panics instead under CI.
pub fn kvm_available() -> bool {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) => {
            let reason = format!("/dev/kvm unusable: {e}");
            assert!(!in_ci(), "{reason} (CI=true: KVM tests must run)");
            eprintln!("SKIPPED: {reason}");
            false
        }
    }
}

/// Skips the calling test when KVM is missing (fails under CI).
#[macro_export]
macro_rules! require_kvm {
    () => {
        if !common::kvm_available() {
            return;
        }
    };
}

/// The real `hearth-vmm`: `$HEARTH_VMM`, else the one built next to this test (same
/// target dir), else `target/debug/hearth-vmm`.
pub fn vmm_binary() -> PathBuf {
    if let Ok(path) = std::env::var("HEARTH_VMM") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "HEARTH_VMM={} does not exist", path.display());
        return path;
    }
    let exe = std::env::current_exe().unwrap();
    let beside = exe.parent().and_then(Path::parent).map(|d| d.join("hearth-vmm"));
    let candidates = beside.into_iter().chain([repo_root().join("target/debug/hearth-vmm")]);
    for candidate in candidates {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "hearth-vmm binary not found next to {} nor in target/debug: build it first with \
         `cargo build -p hearth-vmm` (same CARGO_TARGET_DIR), or set HEARTH_VMM",
        exe.display()
    );
}

/// The probe guest ELF, built by `scripts/build-probe`.
pub fn probe_kernel() -> PathBuf {
    if let Ok(path) = std::env::var("HEARTH_PROBE") {
        return PathBuf::from(path);
    }
    let path = repo_root().join("target/probe/release/hearth-probe");
    if !path.exists() {
        let status = Command::new(repo_root().join("scripts/build-probe"))
            .stdout(Stdio::null())
            .status()
            .expect("run scripts/build-probe");
        assert!(status.success(), "scripts/build-probe failed");
    }
    path
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Every process whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Whether `pid` is gone or a zombie (reaps it if it is our child).
pub fn is_dead(pid: i32) -> bool {
    // SAFETY: WNOHANG waitpid writes only the status integer.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_none_or(|s| s == 'Z' || s == 'X'),
    }
}

/// SIGKILL.
pub fn kill9(pid: i32) {
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// A scratch host: `base/run`, `base/volumes`, `base/images/source.img`. Dropping it kills
/// every process that mentions `base` (VMMs, agent binaries) and removes `base`.
pub struct Host {
    pub base: PathBuf,
    pub config: AgentConfig,
    pub source_image: PathBuf,
}

impl Host {
    pub fn new(tag: &str) -> Host {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // Short: the control socket path must fit in sun_path.
        let base = std::env::temp_dir().join(format!("ha-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("images")).unwrap();
        // 1 MiB, no boot counter yet, a little data past the first sector.
        let source_image = base.join("images/source.img");
        let file = std::fs::File::create(&source_image).unwrap();
        file.set_len(1 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, b"hearth test image", 4096).unwrap();
        let config = AgentConfig {
            run_dir: base.join("run"),
            volume_dir: base.join("volumes"),
            vmm_binary: vmm_binary(),
            host: HostSpec {
                host_id: format!("h-test-{tag}"),
                availability_zone: "test-1a".into(),
                vcpus: 4,
                memory_mib: 4096,
            },
            default_stop_timeout: Duration::from_secs(10),
            network: Default::default(),
        };
        Host {
            base,
            config,
            source_image,
        }
    }

    pub fn agent(&self) -> Agent {
        Agent::new(self.config.clone()).unwrap()
    }

    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.config.run_dir.join(id)
    }

    pub fn volume_file(&self, volume_id: &str) -> PathBuf {
        self.config.volume_dir.join(format!("{volume_id}.img"))
    }

    /// A volume cloned from the source image, 2 MiB.
    pub fn volume(&self, volume_id: &str, delete_on_termination: bool) -> DesiredVolume {
        DesiredVolume {
            volume_id: volume_id.into(),
            device_name: "/dev/vda".into(),
            source_path: self.source_image.display().to_string(),
            size_bytes: 2 << 20,
            read_only: false,
            delete_on_termination,
            ..Default::default()
        }
    }

    /// `run=running`, start generation 1, the probe with `ops`, one root volume
    /// `vol-<id without i->` deleted on termination.
    pub fn instance(&self, id: &str, ops: &str) -> DesiredInstance {
        DesiredInstance {
            instance_id: id.into(),
            run: "running".into(),
            start_generation: 1,
            reboot_generation: 0,
            force_stop: false,
            stop_timeout_ms: 10_000,
            vcpus: 1,
            memory_mib: 32,
            kernel_path: probe_kernel().display().to_string(),
            initrd_path: String::new(),
            cmdline: format!("console=ttyS0 probe.ops={ops}"),
            volumes: vec![self.volume(&root_volume(id), true)],
            ..Default::default()
        }
    }

    pub fn console(&self, id: &str) -> String {
        std::fs::read_to_string(self.run_dir(id).join("console.log")).unwrap_or_default()
    }

    /// Console and vmm.log, for failure messages.
    pub fn diagnostics(&self, id: &str) -> String {
        let log = std::fs::read_to_string(self.run_dir(id).join("vmm.log")).unwrap_or_default();
        format!("console:\n{}\nvmm.log:\n{log}", self.console(id))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let needle = self.base.display().to_string();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let alive: Vec<i32> = processes_mentioning(&needle)
                .into_iter()
                .filter(|p| !is_dead(*p))
                .collect();
            if alive.is_empty() || Instant::now() > deadline {
                break;
            }
            alive.iter().for_each(|pid| kill9(*pid));
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// `i-abc` → `vol-abc`.
pub fn root_volume(id: &str) -> String {
    format!("vol-{}", id.trim_start_matches("i-"))
}

/// The entry for `id`.
pub fn find(actual: &[ActualInstance], id: &str) -> Option<ActualInstance> {
    actual.iter().find(|a| a.instance_id == id).cloned()
}

/// Reconciles `desired` and waits (on the agent's change signal, 20 ms at most between
/// looks) until the entry for `id` satisfies `what`; panics with diagnostics after
/// `timeout`. Every entry seen is passed to `seen` too.
pub async fn converge_until(
    host: &Host,
    agent: &mut Agent,
    desired: &[DesiredInstance],
    id: &str,
    timeout: Duration,
    mut what: impl FnMut(&ActualInstance) -> bool,
) -> ActualInstance {
    let mut changes = agent.subscribe();
    let deadline = Instant::now() + timeout;
    loop {
        agent.reconcile(desired);
        let actual = agent.actual();
        if let Some(entry) = find(&actual, id) {
            if what(&entry) {
                return entry;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting on {id}; actual: {actual:#?}\n{}",
            host.diagnostics(id)
        );
        let _ = tokio::time::timeout(Duration::from_millis(20), changes.changed()).await;
    }
}

/// Waits until the console of `id` has `line` (ending with a newline) `count` times. A
/// line may follow a line cut short by a killed VMM, so it need not start a line.
pub async fn wait_console(host: &Host, id: &str, line: &str, count: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let needle = format!("{line}\n");
    loop {
        let console = host.console(id);
        if console.matches(&needle).count() >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "console of {id} lacks {count}× {line:?}\n{}",
            host.diagnostics(id)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the in-test hearthd holds and saw.
#[derive(Default)]
pub struct HearthdState {
    pub revision: u64,
    pub desired: Vec<DesiredInstance>,
    /// Every Sync received: (authorization header, request).
    pub calls: Vec<(String, SyncRequest)>,
}

/// A minimal hearthd for the agent: desired state set by the test, Sync answered at once
/// when the agent's revision is old, else held up to `wait_ms` until the test changes it.
#[derive(Clone)]
pub struct FakeHearthd {
    pub token: String,
    pub state: Arc<Mutex<HearthdState>>,
    changed: Arc<Notify>,
}

impl FakeHearthd {
    pub fn new(token: &str) -> Self {
        Self {
            token: token.into(),
            state: Arc::default(),
            changed: Arc::default(),
        }
    }

    /// Replaces the desired instances (new revision) and wakes held calls.
    pub fn set_desired(&self, desired: Vec<DesiredInstance>) {
        let mut state = self.state.lock().unwrap();
        state.revision += 1;
        state.desired = desired;
        self.changed.notify_waiters();
    }

    /// The latest report of `id`, and how many Syncs came in.
    pub fn reported(&self, id: &str) -> (Option<ActualInstance>, usize) {
        let state = self.state.lock().unwrap();
        let last = state.calls.last().and_then(|(_, r)| find(&r.instances, id));
        (last, state.calls.len())
    }

    /// Waits until the latest report of `id` satisfies `what`.
    pub async fn wait_report(
        &self,
        id: &str,
        timeout: Duration,
        what: impl Fn(&ActualInstance) -> bool,
    ) -> ActualInstance {
        let deadline = Instant::now() + timeout;
        loop {
            if let (Some(entry), _) = self.reported(id) {
                if what(&entry) {
                    return entry;
                }
            }
            let calls = self.state.lock().unwrap().calls.len();
            assert!(
                Instant::now() < deadline,
                "no matching report of {id} after {timeout:?} ({calls} Syncs); last: {:?}",
                self.reported(id).0
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Serves AgentControl on the Unix socket `path` until the returned sender fires.
    pub async fn serve_unix(&self, path: &Path) -> tokio::sync::oneshot::Sender<()> {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = AgentControlServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        stop
    }
}

#[tonic::async_trait]
impl AgentControl for FakeHearthd {
    async fn sync(&self, request: tonic::Request<SyncRequest>) -> Result<tonic::Response<SyncResponse>, tonic::Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if auth != format!("Bearer {}", self.token) {
            return Err(tonic::Status::unauthenticated("bad token"));
        }
        let request = request.into_inner();
        let known = request.known_revision;
        let wait = Duration::from_millis(request.wait_ms.max(0) as u64);
        let notified = self.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let current = {
            let mut state = self.state.lock().unwrap();
            state.calls.push((auth, request));
            state.revision
        };
        if known >= current {
            let _ = tokio::time::timeout(wait, notified).await;
        }
        let state = self.state.lock().unwrap();
        Ok(tonic::Response::new(SyncResponse {
            revision: state.revision,
            instances: state.desired.clone(),
            network: None,
        }))
    }
}
