//! The agent proper: owns a host's run directory, re-adopts the VMMs it finds there, and
//! converges the hearth-vmm processes to the desired instances (docs/control-plane.md,
//! "Agent rules") without ever waiting on one VMM while others need attention.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hearth_api::v1::{ActualInstance, DesiredInstance, DesiredVolume, EphemeralDisk, HostInfo, InstanceMetadata};
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use hearth_net::throttle::LogLimiter;

use crate::backoff::RebootBackoff;
use crate::control::{self, SOCKET_FILE};
use crate::error::{error_chain, AgentError, LaunchError};
use crate::process::{self, ProcessState};
use crate::state::{write_atomic, InstanceState};
use crate::vmm_log::{exit_record, LOG_FILE};
use crate::volume::{disk_id, ensure_volume, is_valid_id, volume_path};

/// hearth-vmm configuration written for each start.
pub const CONFIG_FILE: &str = "config.json";
/// The guest's serial console.
pub const CONSOLE_FILE: &str = "console.log";
/// Pid of the running VMM (removed once its end is recorded).
pub const PID_FILE: &str = "pid";
/// The instance's NoCloud metadata disk in its run directory (rewritten at every start).
pub const METADATA_DISK_FILE: &str = "cidata.img";
/// The metadata disk's virtio-blk serial (`GET_ID`).
pub const METADATA_DISK_ID: &str = "cidata";
/// Held (flock) by the agent that owns the run directory.
const LOCK_FILE: &str = ".agent.lock";

/// How often a VMM's pid is looked at.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Bound on one control-socket exchange.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a stop request waits for the control socket of a VMM that is still starting.
const SOCKET_WAIT: Duration = Duration::from_secs(5);
/// How long a VMM found at start-up gets to answer `info`.
const ADOPT_WAIT: Duration = Duration::from_secs(3);
/// After the VMM should have ended by itself (stop timeout, `kill`), the agent sends SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Bytes of console returned by `console_output` (EC2 returns the last 64 KiB).
const CONSOLE_TAIL: u64 = 64 * 1024;

/// Instance phases reported in `ActualInstance.phase`.
pub mod phase {
    /// A VMM runs (also while a reboot replaces it).
    pub const RUNNING: &str = "running";
    /// The VMM was asked to end and has not yet.
    pub const STOPPING: &str = "stopping";
    /// No VMM runs.
    pub const STOPPED: &str = "stopped";
    /// Stopped, volumes with DeleteOnTermination and the run directory deleted.
    pub const TERMINATED: &str = "terminated";
}

/// What the host offers to instances, reported with every Sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// Stable per host, e.g. `h-` + hostname.
    pub host_id: String,
    /// Availability zone the host is in.
    pub availability_zone: String,
    /// vCPUs offered to instances.
    pub vcpus: i32,
    /// Memory offered to instances, MiB.
    pub memory_mib: i64,
}

impl HostSpec {
    /// This host as the agent offers it by default: `h-<hostname>`, all its CPUs, its
    /// memory minus 1 GiB for the host itself.
    pub fn detect(availability_zone: String) -> HostSpec {
        HostSpec {
            host_id: Self::default_host_id(),
            availability_zone,
            vcpus: Self::host_vcpus(),
            memory_mib: Self::host_memory_mib(),
        }
    }

    /// `h-` + the kernel's hostname.
    pub fn default_host_id() -> String {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("h-{}", hostname.trim())
    }

    /// The host's CPUs.
    pub fn host_vcpus() -> i32 {
        std::thread::available_parallelism().map_or(1, |n| n.get() as i32)
    }

    /// `MemTotal` minus 1 GiB, in MiB.
    pub fn host_memory_mib() -> i64 {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let total_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            .unwrap_or(0);
        (total_kib / 1024 - 1024).max(0)
    }
}

/// Everything an agent is built from.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `run/<instance-id>/` directories live here (created if missing).
    pub run_dir: PathBuf,
    /// Volume files `<volume-id>.img` live here (created if missing).
    pub volume_dir: PathBuf,
    /// The `hearth-vmm` binary.
    pub vmm_binary: PathBuf,
    /// This host.
    pub host: HostSpec,
    /// Grace period of a stop when the desired instance gives none (`stop_timeout_ms` 0).
    pub default_stop_timeout: Duration,
    /// The instance network (bridges, taps, firewall); off: instances get no NIC.
    pub network: crate::hostnet::NetworkConfig,
}

/// Where a supervised VMM is in its life; written by its supervisor task.
#[derive(Debug, Clone)]
enum VmmStatus {
    /// Volumes and config are being prepared, the process is not started yet.
    Launching,
    /// The process runs.
    Running { pid: i32 },
    /// The process ended (raw wait status when we reaped it).
    Exited {
        pid: i32,
        wait_status: Option<i32>,
        unix_ms: i64,
    },
    /// It could not be started.
    LaunchFailed {
        reason: &'static str,
        error: String,
        unix_ms: i64,
    },
}

/// One VMM and the task that watches it.
struct Vmm {
    status: Arc<Mutex<VmmStatus>>,
    task: JoinHandle<()>,
    /// State committed once the VMM runs (set while a launch is in progress).
    pending: Option<InstanceState>,
    /// This start replaces a VMM of a running instance (guest reboot, reboot request).
    restart: bool,
    /// When the agent saw this launched VMM run (`None` for an adopted one: its uptime is
    /// unknown).
    started: Option<Instant>,
}

impl Vmm {
    fn status(&self) -> VmmStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Why the agent asked a VMM to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopPurpose {
    /// `run=stopped`.
    Stop,
    /// `run=terminated`.
    Terminate,
    /// A newer `reboot_generation`: a new VMM follows, the instance stays running.
    Reboot,
    /// A newer `start_generation` while an older VMM still runs: a fresh start follows.
    Restart,
}

#[derive(Debug)]
struct StopRequest {
    purpose: StopPurpose,
    forced: bool,
    /// When the VMM should have ended by itself; past it, SIGKILL.
    deadline: Instant,
    hard_killed: bool,
}

/// What the agent knows about one instance.
struct Instance {
    dir: PathBuf,
    state: InstanceState,
    vmm: Option<Vmm>,
    stop: Option<StopRequest>,
    /// Set once terminated: the volumes deleted.
    deleted_volumes: Option<Vec<String>>,
    /// Reboot-loop backoff (docs/control-plane.md, "Agent rules").
    backoff: RebootBackoff,
    /// Log lines the guest can trigger (its reboots) are rate limited.
    log_limit: LogLimiter<()>,
}

impl Instance {
    fn new(dir: PathBuf, state: InstanceState) -> Self {
        Self {
            dir,
            state,
            vmm: None,
            stop: None,
            deleted_volumes: None,
            backoff: RebootBackoff::default(),
            log_limit: LogLimiter::default(),
        }
    }

    /// Logs a line the guest can cause at will (a reboot), rate limited per instance.
    fn guest_log(&mut self, id: &str, message: std::fmt::Arguments<'_>) {
        if let Some(line) = self.log_limit.format(&(), message, Instant::now()) {
            log(id, format_args!("{line}"));
        }
    }

    /// The state of the VMM running now: the one being committed, else the saved one.
    fn current_state(&self) -> &InstanceState {
        self.vmm
            .as_ref()
            .and_then(|vmm| vmm.pending.as_ref())
            .unwrap_or(&self.state)
    }

    fn running_pid(&self) -> Option<i32> {
        match self.vmm.as_ref()?.status() {
            VmmStatus::Running { pid } => Some(pid),
            _ => None,
        }
    }

    fn save(&self, id: &str) {
        let saved = std::fs::create_dir_all(&self.dir).and_then(|()| self.state.save(&self.dir));
        if let Err(e) = saved {
            log(
                id,
                format_args!("cannot save {}: {e}", self.dir.join("state.json").display()),
            );
        }
    }

    /// Records the end of the VMM `pid`, read from `vmm.log` and the wait status; `uptime`
    /// is how long it ran (`None`: unknown). Returns how long the restart of a guest in a
    /// reboot loop must wait (zero: none).
    fn record_exit(
        &mut self,
        id: &str,
        pid: i32,
        wait_status: Option<i32>,
        unix_ms: i64,
        uptime: Option<Duration>,
    ) -> Duration {
        let mut record = exit_record(&self.dir.join(LOG_FILE), self.state.log_offset, wait_status, pid);
        let reboot_requested = self.stop.as_ref().is_some_and(|s| s.purpose == StopPurpose::Reboot);
        let guest_reboot = record.reason == "guest-reboot" && !reboot_requested;
        let delay = if guest_reboot {
            self.backoff.record_reboot(uptime, Instant::now())
        } else {
            Duration::ZERO
        };
        if !delay.is_zero() {
            let note = format!(
                "reboot loop ({} reboots in a row, each up less than {} s): restart in {} s",
                self.backoff.quick_reboots(),
                crate::backoff::STABLE_UPTIME.as_secs(),
                delay.as_secs()
            );
            record.detail = if record.detail.is_empty() {
                note
            } else {
                format!("{}; {note}", record.detail)
            };
        }
        let line = format!(
            "VMM pid {pid} ended: {}{}{}",
            record.reason,
            if record.detail.is_empty() { "" } else { ": " },
            record.detail
        );
        if guest_reboot {
            self.guest_log(id, format_args!("{line}"));
        } else {
            log(id, format_args!("{line}"));
        }
        self.state.restart_pending = record.reason == "guest-reboot" || reboot_requested;
        self.state.last_exit_reason = record.reason;
        self.state.last_exit_detail = record.detail;
        self.state.last_exit_unix_ms = unix_ms;
        self.vmm = None;
        self.stop = None;
        let _ = std::fs::remove_file(self.dir.join(PID_FILE));
        self.save(id);
        delay
    }

    /// Records a start that failed before a VMM ran: `reason` (`vmm-error`,
    /// `encryption-key`), and no retry until a newer `start_generation`.
    fn record_launch_failure(&mut self, id: &str, mut state: InstanceState, reason: &str, error: String, unix_ms: i64) {
        log(id, format_args!("cannot start the VMM: {error}"));
        state.boot_count = state.boot_count.saturating_sub(1);
        state.restart_pending = false;
        state.last_exit_reason = reason.into();
        state.last_exit_detail = error;
        state.last_exit_unix_ms = unix_ms;
        self.state = state;
        self.vmm = None;
        self.stop = None;
        self.save(id);
    }
}

/// What the agent's parts share: configuration, the runtime its tasks run on, and the
/// change signal.
struct Context {
    config: AgentConfig,
    runtime: Handle,
    changes: Arc<watch::Sender<u64>>,
}

/// Supervises the hearth-vmm processes of one host. Must be created inside a Tokio
/// runtime: each VMM is watched by a task on it.
pub struct Agent {
    ctx: Context,
    instances: BTreeMap<String, Instance>,
    desired: Option<Vec<DesiredInstance>>,
    warned: HashSet<String>,
    net: crate::hostnet::HostNet,
    _lock: File,
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn log(id: &str, message: std::fmt::Arguments<'_>) {
    eprintln!("hearth-agent: instance {id}: {message}");
}

fn read_pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 0)
}

fn notify(changes: &watch::Sender<u64>) {
    changes.send_modify(|n| *n = n.wrapping_add(1));
}

impl Agent {
    /// Takes over `config.run_dir`: locks it, loads `state.json` of every instance found
    /// there, re-adopts each VMM that still runs (pid alive, a `hearth-vmm` started with
    /// that instance's config, control socket answering `info`) and records the others as
    /// stopped with the reason their `vmm.log` gives.
    pub fn new(mut config: AgentConfig) -> Result<Agent, AgentError> {
        let runtime = Handle::try_current().map_err(|_| AgentError::NoRuntime)?;
        for dir in [&mut config.run_dir, &mut config.volume_dir] {
            let create = |source| AgentError::CreateDir {
                path: dir.clone(),
                source,
            };
            std::fs::create_dir_all(&*dir).map_err(create)?;
            *dir = dir.canonicalize().map_err(create)?;
        }
        let lock = lock_run_dir(&config.run_dir)?;
        let (changes, _) = watch::channel(0u64);
        let net = crate::hostnet::HostNet::new(config.network.clone());
        let mut agent = Agent {
            ctx: Context {
                config,
                runtime,
                changes: Arc::new(changes),
            },
            instances: BTreeMap::new(),
            desired: None,
            warned: HashSet::new(),
            net,
            _lock: lock,
        };
        agent.adopt()?;
        Ok(agent)
    }

    fn adopt(&mut self) -> Result<(), AgentError> {
        let run_dir = self.ctx.config.run_dir.clone();
        let vmm_binary = &self.ctx.config.vmm_binary;
        let running = process::find_vmms(&run_dir, vmm_binary);
        let read_error = |source| AgentError::ReadRunDir {
            path: run_dir.clone(),
            source,
        };
        for entry in std::fs::read_dir(&run_dir).map_err(read_error)? {
            let entry = entry.map_err(read_error)?;
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !is_valid_id(&id) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let dir = entry.path();
            let state = InstanceState::load(&dir).unwrap_or_else(|e| {
                log(&id, format_args!("unreadable state.json ({e}), starting from scratch"));
                None
            });
            let mut instance = Instance::new(dir.clone(), state.unwrap_or_default());
            let config_path = dir.join(CONFIG_FILE);
            let pid_file = read_pid(&dir);
            let live = pid_file
                .filter(|pid| process::is_our_vmm(*pid, vmm_binary, &config_path))
                .or_else(|| running.get(&config_path).copied())
                .filter(|pid| process::check(*pid) == ProcessState::Alive);
            if let Some(pid) = live {
                if !control_answers(&dir.join(SOCKET_FILE), pid) {
                    log(
                        &id,
                        format_args!("VMM pid {pid} does not answer on its control socket; supervising it anyway"),
                    );
                }
                if pid_file != Some(pid) {
                    let _ = write_atomic(&dir.join(PID_FILE), pid.to_string().as_bytes());
                }
                log(&id, format_args!("re-adopted VMM pid {pid}"));
                instance.vmm = Some(self.ctx.supervise(VmmSource::Adopted(pid), None, false));
            } else if let Some(pid) = pid_file {
                // It ended while no agent watched it.
                let wait_status = match process::check(pid) {
                    ProcessState::Exited(status) => status,
                    ProcessState::Alive => None,
                };
                let ended = std::fs::metadata(dir.join(LOG_FILE))
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or_else(now_unix_ms);
                instance.record_exit(&id, pid, wait_status, ended, None);
            }
            self.instances.insert(id, instance);
        }
        Ok(())
    }

    /// The host as reported in every Sync.
    pub fn host_info(&self) -> HostInfo {
        let host = &self.ctx.config.host;
        HostInfo {
            host_id: host.host_id.clone(),
            availability_zone: host.availability_zone.clone(),
            vcpus: host.vcpus,
            memory_mib: host.memory_mib,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            underlay_ip: self
                .ctx
                .config
                .network
                .underlay_ip
                .filter(|_| self.net.enabled())
                .map(|ip| ip.to_string())
                .unwrap_or_default(),
            has_uplink: self.net.enabled() && self.ctx.config.network.uplink.is_some(),
        }
    }

    /// The configuration, with the run and volume directories made absolute.
    pub fn config(&self) -> &AgentConfig {
        &self.ctx.config
    }

    /// A receiver whose value changes whenever a VMM started, failed to start or ended:
    /// the moment to `converge` and report.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.ctx.changes.subscribe()
    }

    /// Applies `desired` (the instances hearthd wants on this host) and remembers it for
    /// `converge`. Returns at once: starts, stops and ends run in the background, and are
    /// picked up by later calls.
    pub fn reconcile(&mut self, desired: &[DesiredInstance]) {
        let desired: Vec<DesiredInstance> = if self.net.enabled() {
            desired.to_vec()
        } else {
            // Without an instance network the VMs get no NIC (and no tap is needed).
            desired
                .iter()
                .cloned()
                .map(|mut d| {
                    d.interfaces.clear();
                    d
                })
                .collect()
        };
        let desired = desired.as_slice();
        self.desired = Some(desired.to_vec());
        self.converge();
    }

    /// Converges the host's instance network to a Sync answer (before `reconcile`, so that
    /// the taps of instances to start exist). Failures are logged; the next answer retries.
    pub async fn apply_network(&mut self, network: Option<&hearth_api::v1::HostNetwork>, desired: &[DesiredInstance]) {
        if !self.net.enabled() {
            return;
        }
        let empty = hearth_api::v1::HostNetwork::default();
        // Instances being terminated keep their taps until hearthd drops them from the answer
        // (after their VMM ended).
        if let Err(e) = self.net.apply(network.unwrap_or(&empty), desired).await {
            eprintln!("hearth-agent: instance network: {}", error_chain(&e));
        }
    }

    /// Takes in what the VMMs did since the last call (started, ended) and applies the
    /// last desired state again (nothing is started or stopped before the first
    /// `reconcile`).
    pub fn converge(&mut self) {
        self.collect();
        let Some(desired) = self.desired.take() else {
            return;
        };
        for wanted in &desired {
            let id = &wanted.instance_id;
            if !is_valid_id(id) {
                if self.warned.insert(id.clone()) {
                    eprintln!("hearth-agent: ignoring desired instance with invalid id {id:?}");
                }
                continue;
            }
            let dir = self.ctx.config.run_dir.join(id);
            let instance = self
                .instances
                .entry(id.clone())
                .or_insert_with(|| Instance::new(dir, InstanceState::default()));
            if instance.deleted_volumes.is_some() {
                continue;
            }
            match wanted.run.as_str() {
                "running" => self.ctx.apply_running(id, instance, wanted),
                "stopped" => self.ctx.apply_stopped(id, instance, wanted, StopPurpose::Stop),
                "terminated" => self.ctx.apply_stopped(id, instance, wanted, StopPurpose::Terminate),
                other => {
                    if self.warned.insert(format!("{id}/{other}")) {
                        log(
                            id,
                            format_args!("unknown desired run state {other:?}; leaving it alone"),
                        );
                    }
                }
            }
        }
        // Terminated instances are reported until hearthd no longer lists them.
        let listed: HashSet<&str> = desired.iter().map(|d| d.instance_id.as_str()).collect();
        self.instances
            .retain(|id, instance| instance.deleted_volumes.is_none() || listed.contains(id.as_str()));
        self.desired = Some(desired);
    }

    /// Commits what the supervisor tasks saw.
    fn collect(&mut self) {
        for (id, instance) in &mut self.instances {
            let Some(vmm) = &mut instance.vmm else {
                continue;
            };
            match vmm.status() {
                VmmStatus::Launching => {}
                VmmStatus::Running { .. } => {
                    if let Some(state) = vmm.pending.take() {
                        instance.state = state;
                        vmm.started = Some(Instant::now());
                    }
                }
                VmmStatus::Exited {
                    pid,
                    wait_status,
                    unix_ms,
                } => {
                    // Launched and ended before it was seen running: it ran (close to) no time.
                    let mut uptime = vmm.started.map(|at| at.elapsed());
                    if let Some(state) = vmm.pending.take() {
                        instance.state = state;
                        uptime = Some(Duration::ZERO);
                    }
                    let delay = instance.record_exit(id, pid, wait_status, unix_ms, uptime);
                    if !delay.is_zero() {
                        // Converge again when the restart is due.
                        let changes = self.ctx.changes.clone();
                        self.ctx.runtime.spawn(async move {
                            tokio::time::sleep(delay).await;
                            notify(&changes);
                        });
                    }
                }
                VmmStatus::LaunchFailed { reason, error, unix_ms } => {
                    let state = vmm.pending.take().unwrap_or_else(|| instance.state.clone());
                    instance.record_launch_failure(id, state, reason, error, unix_ms);
                }
            }
        }
    }

    /// What runs on this host, one entry per instance the agent knows.
    pub fn actual(&self) -> Vec<ActualInstance> {
        self.instances
            .iter()
            .map(|(id, instance)| {
                let status = instance.vmm.as_ref().map(Vmm::status);
                let restart = instance.vmm.as_ref().is_some_and(|v| v.restart);
                let (phase, pid, state) = if instance.deleted_volumes.is_some() {
                    (phase::TERMINATED, 0, &instance.state)
                } else {
                    match status {
                        // A guest reboot waiting out its backoff: EC2 keeps a rebooting
                        // instance running.
                        None if instance.state.restart_pending => (phase::RUNNING, 0, &instance.state),
                        None => (phase::STOPPED, 0, &instance.state),
                        // Not started yet: report what ran last (a reboot keeps the
                        // instance running).
                        Some(VmmStatus::Launching | VmmStatus::LaunchFailed { .. }) => (
                            if restart { phase::RUNNING } else { phase::STOPPED },
                            0,
                            &instance.state,
                        ),
                        Some(VmmStatus::Running { pid } | VmmStatus::Exited { pid, .. }) => {
                            let phase = match &instance.stop {
                                None => phase::RUNNING,
                                Some(stop) if stop.purpose == StopPurpose::Reboot => phase::RUNNING,
                                Some(_) => phase::STOPPING,
                            };
                            (phase, pid, instance.current_state())
                        }
                    }
                };
                ActualInstance {
                    instance_id: id.clone(),
                    phase: phase.to_string(),
                    pid,
                    start_generation: state.start_generation,
                    reboot_generation: state.reboot_generation,
                    last_exit_reason: state.last_exit_reason.clone(),
                    last_exit_detail: state.last_exit_detail.clone(),
                    last_exit_unix_ms: state.last_exit_unix_ms,
                    boot_count: state.boot_count,
                    console_path: instance.dir.join(CONSOLE_FILE).display().to_string(),
                    deleted_volumes: instance.deleted_volumes.clone().unwrap_or_default(),
                }
            })
            .collect()
    }

    /// The last 64 KiB of the instance's console (`run/<id>/console.log`), `None` when
    /// there is none (unknown or terminated instance, never started).
    pub fn console_output(&self, instance_id: &str) -> Option<Vec<u8>> {
        if !is_valid_id(instance_id) {
            return None;
        }
        console_tail(&self.ctx.config.run_dir.join(instance_id).join(CONSOLE_FILE))
    }
}

/// The last 64 KiB of a console log, e.g. at an `ActualInstance.console_path`; `None` when
/// it cannot be read.
pub fn console_tail(path: &Path) -> Option<Vec<u8>> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(CONSOLE_TAIL))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    Some(tail)
}

impl Drop for Agent {
    /// Stops watching; the VMMs keep running and the next agent re-adopts them.
    fn drop(&mut self) {
        for instance in self.instances.values() {
            if let Some(vmm) = &instance.vmm {
                vmm.task.abort();
            }
        }
    }
}

fn lock_run_dir(run_dir: &Path) -> Result<File, AgentError> {
    let path = run_dir.join(LOCK_FILE);
    let error = |source| AgentError::Lock {
        path: path.clone(),
        source,
    };
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(error)?;
    // SAFETY: flock only takes a lock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(error(io::Error::last_os_error()));
    }
    Ok(file)
}

/// Whether the VMM at `socket` answers `info` as `pid`, retried for `ADOPT_WAIT` (a VMM
/// that is still starting binds its socket last).
fn control_answers(socket: &Path, pid: i32) -> bool {
    let deadline = Instant::now() + ADOPT_WAIT;
    loop {
        if let Ok(info) = control::request_blocking(socket, "info", Duration::from_secs(1)) {
            if info["pid"].as_i64() == Some(i64::from(pid)) {
                return true;
            }
        }
        if Instant::now() >= deadline || process::check(pid) != ProcessState::Alive {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where the pid a supervisor watches comes from.
enum VmmSource {
    /// Start it first.
    Launch(Box<LaunchPlan>),
    /// Already running.
    Adopted(i32),
}

/// hearth-vmm's JSON configuration (`crates/vmm/src/config.rs`, `VmConfig`).
#[derive(Debug, Serialize)]
struct VmmConfigFile {
    vcpus: u8,
    memory_mib: u64,
    kernel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    initrd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmdline: Option<String>,
    disks: Vec<DiskConfigFile>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    nics: Vec<NicConfigFile>,
    rng: bool,
    console: PathBuf,
    control_socket: PathBuf,
}

/// hearth-vmm's `NetConfig`.
#[derive(Debug, Serialize)]
struct NicConfigFile {
    tap: String,
    mac: String,
    /// The instance type's limits, each direction (`ops` are frames).
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimitFile>,
}

#[derive(Debug, Serialize)]
struct DiskConfigFile {
    path: PathBuf,
    read_only: bool,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimitFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption: Option<EncryptionFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dirty_bitmap: Option<PathBuf>,
}

/// hearth-vmm's `RateLimitConfig`.
#[derive(Debug, Serialize)]
struct RateLimitFile {
    ops_per_sec: u64,
    ops_burst: u64,
    bytes_per_sec: u64,
    bytes_burst: u64,
}

/// The VMM limit of a NIC: `None` when unlimited. A bucket size of 0 becomes one second's
/// worth (hearth-vmm would read 0 as an empty bucket).
fn nic_rate_limit(limits: &hearth_api::v1::NicLimits) -> Option<RateLimitFile> {
    let burst = |rate: u64, burst: u64| match (rate, burst) {
        (0, _) => 0,
        (rate, 0) => rate,
        (_, burst) => burst,
    };
    (limits.packets_per_sec > 0 || limits.bytes_per_sec > 0).then(|| RateLimitFile {
        ops_per_sec: limits.packets_per_sec,
        ops_burst: burst(limits.packets_per_sec, limits.packets_burst),
        bytes_per_sec: limits.bytes_per_sec,
        bytes_burst: burst(limits.bytes_per_sec, limits.bytes_burst),
    })
}

/// hearth-vmm's disk encryption: the key file (64 bytes, mode 0600, in the run directory).
#[derive(Debug, Serialize)]
struct EncryptionFile {
    key_file: PathBuf,
}

/// Prefix of instance-store disk files in the run directory (`ephemeral0.img`, …).
pub const EPHEMERAL_PREFIX: &str = "ephemeral";
/// Suffix of volume key files in the run directory.
pub const KEY_SUFFIX: &str = ".key";

/// Removes the instance-store disks and key files of a run directory (at stop: the
/// instance store is wiped, keys never stay on disk longer than the VMM runs).
pub fn wipe_stopped(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if (name.starts_with(EPHEMERAL_PREFIX) && name.ends_with(".img")) || name.ends_with(KEY_SUFFIX) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The key of an encrypted volume (`None` for a plain one); an error when the volume is
/// encrypted (`encrypted`, or a key given) and the key is not 64 bytes with distinct
/// halves, the only key hearth-vmm's AES-256-XTS takes. Never lets an encrypted volume
/// through as plain.
pub fn volume_key(volume: &DesiredVolume) -> Result<Option<&[u8]>, LaunchError> {
    let key = volume.encryption_key.as_slice();
    if !volume.encrypted && key.is_empty() {
        return Ok(None);
    }
    let refuse = |problem: String| LaunchError::EncryptionKey {
        volume_id: volume.volume_id.clone(),
        problem,
    };
    if key.is_empty() {
        return Err(refuse("hearthd sent no key (is its key file missing?)".into()));
    }
    if key.len() != XTS_KEY_BYTES {
        return Err(refuse(format!("{} bytes, expected {XTS_KEY_BYTES}", key.len())));
    }
    if key[..XTS_KEY_BYTES / 2] == key[XTS_KEY_BYTES / 2..] {
        return Err(refuse("its two halves are equal".into()));
    }
    Ok(Some(key))
}

/// Bytes of a volume key (two AES-256 keys for XTS).
pub const XTS_KEY_BYTES: usize = 64;

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = File::options().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Everything one start needs, done on a blocking thread (a volume clone may be long).
struct LaunchPlan {
    dir: PathBuf,
    vmm_binary: PathBuf,
    volume_dir: PathBuf,
    volumes: Vec<DesiredVolume>,
    metadata: Option<InstanceMetadata>,
    ephemeral_disks: Vec<EphemeralDisk>,
    /// A new start (instance-store disks are created empty) rather than a reboot.
    fresh_start: bool,
    config: VmmConfigFile,
    state: InstanceState,
}

impl LaunchPlan {
    fn new(
        config: &AgentConfig,
        dir: PathBuf,
        wanted: &DesiredInstance,
        state: InstanceState,
        fresh_start: bool,
    ) -> Result<Self, LaunchError> {
        let vcpus = u8::try_from(wanted.vcpus)
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| LaunchError::Shape(format!("vcpus {}", wanted.vcpus)))?;
        let memory_mib = u64::try_from(wanted.memory_mib)
            .ok()
            .filter(|m| *m > 0)
            .ok_or_else(|| LaunchError::Shape(format!("memory_mib {}", wanted.memory_mib)))?;
        if wanted.kernel_path.is_empty() {
            return Err(LaunchError::Shape("no kernel".into()));
        }
        // Before anything is created (run directory, volume files, metadata disk): an
        // encrypted volume without a usable key fails the start here.
        for volume in &wanted.volumes {
            volume_key(volume)?;
        }
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Ok(Self {
            vmm_binary: config.vmm_binary.clone(),
            volume_dir: config.volume_dir.clone(),
            volumes: wanted.volumes.clone(),
            metadata: wanted.metadata.clone(),
            ephemeral_disks: wanted.ephemeral_disks.clone(),
            fresh_start,
            config: VmmConfigFile {
                vcpus,
                memory_mib,
                kernel: wanted.kernel_path.clone(),
                initrd: non_empty(&wanted.initrd_path),
                cmdline: non_empty(&wanted.cmdline),
                disks: Vec::new(),
                nics: wanted
                    .interfaces
                    .iter()
                    .map(|i| NicConfigFile {
                        tap: i.tap.clone(),
                        mac: i.mac.clone(),
                        rate_limit: i.limits.as_ref().and_then(nic_rate_limit),
                    })
                    .collect(),
                rng: true,
                console: dir.join(CONSOLE_FILE),
                // Relative to the VMM's working directory (the run directory): short
                // enough for sun_path however deep the run directory is.
                control_socket: PathBuf::from(SOCKET_FILE),
            },
            dir,
            state,
        })
    }

    /// Prepares the volumes and the run directory, starts the VMM, writes `pid` and
    /// `state.json`. Returns the pid.
    fn run(mut self) -> Result<i32, LaunchError> {
        let write_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LaunchError::WriteFile { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(write_error(&self.dir))?;
        for volume in &self.volumes {
            let key = volume_key(volume)?;
            let path = ensure_volume(&self.volume_dir, volume).map_err(|source| LaunchError::Volume {
                volume_id: volume.volume_id.clone(),
                source,
            })?;
            let encryption = match key {
                None => None,
                Some(key) => {
                    let key_file = self.dir.join(format!("{}{KEY_SUFFIX}", volume.volume_id));
                    write_private(&key_file, key).map_err(write_error(&key_file))?;
                    Some(EncryptionFile { key_file })
                }
            };
            let rate_limit = volume
                .limits
                .as_ref()
                .filter(|l| l.ops_per_sec > 0 || l.bytes_per_sec > 0)
                .map(|l| RateLimitFile {
                    ops_per_sec: l.ops_per_sec,
                    ops_burst: l.ops_burst,
                    bytes_per_sec: l.bytes_per_sec,
                    bytes_burst: l.bytes_burst,
                });
            self.config.disks.push(DiskConfigFile {
                dirty_bitmap: Some(crate::volume::dirty_bitmap_path(&self.volume_dir, &volume.volume_id)),
                path,
                read_only: volume.read_only,
                id: disk_id(&volume.volume_id),
                rate_limit,
                encryption,
            });
        }
        for (index, disk) in self.ephemeral_disks.iter().enumerate() {
            let path = self.dir.join(format!("{EPHEMERAL_PREFIX}{index}.img"));
            let size = u64::try_from(disk.size_bytes).unwrap_or(0);
            if self.fresh_start || !path.exists() {
                let _ = std::fs::remove_file(&path);
                let file = File::options()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(write_error(&path))?;
                file.set_len(size).map_err(write_error(&path))?;
            }
            self.config.disks.push(DiskConfigFile {
                path,
                read_only: false,
                id: format!("{EPHEMERAL_PREFIX}{index}"),
                rate_limit: None,
                encryption: None,
                dirty_bitmap: None,
            });
        }
        if let Some(metadata) = &self.metadata {
            let path = self.dir.join(METADATA_DISK_FILE);
            let seed = hearth_image::cidata::Seed {
                instance_id: metadata.instance_id.clone(),
                hostname: metadata.hostname.clone(),
                public_keys: metadata.public_keys.clone(),
                user_data: metadata.user_data.clone(),
                network_config: (!metadata.network_config.is_empty()).then(|| metadata.network_config.clone()),
                vendor_data: None,
            };
            hearth_image::cidata::write_disk(&seed, &path).map_err(|e| LaunchError::Metadata {
                path: path.clone(),
                message: e.to_string(),
            })?;
            self.config.disks.push(DiskConfigFile {
                path,
                read_only: true,
                id: METADATA_DISK_ID.to_string(),
                rate_limit: None,
                encryption: None,
                dirty_bitmap: None,
            });
        }
        let config_path = self.dir.join(CONFIG_FILE);
        let text = serde_json::to_vec_pretty(&self.config).map_err(|e| LaunchError::WriteFile {
            path: config_path.clone(),
            source: io::Error::other(e),
        })?;
        write_atomic(&config_path, &text).map_err(write_error(&config_path))?;
        // A VMM that died without cleaning up left its socket; hearth-vmm refuses to
        // start over an existing path.
        let socket = self.dir.join(SOCKET_FILE);
        match std::fs::remove_file(&socket) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(write_error(&socket)(e)),
            _ => {}
        }
        let pid = process::spawn_vmm(&self.vmm_binary, &self.dir, &config_path, &self.dir.join(LOG_FILE))?;
        // The VMM runs from here on: failures below are logged, never returned, so that
        // it stays supervised.
        let id = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Err(e) = write_atomic(&self.dir.join(PID_FILE), pid.to_string().as_bytes()) {
            log(&id, format_args!("cannot write the pid file: {e}"));
        }
        if let Err(e) = self.state.save(&self.dir) {
            log(&id, format_args!("cannot save state.json: {e}"));
        }
        Ok(pid)
    }
}

impl Context {
    fn stop_timeout(&self, wanted: &DesiredInstance) -> Duration {
        u64::try_from(wanted.stop_timeout_ms)
            .ok()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
            .unwrap_or(self.config.default_stop_timeout)
    }

    /// Starts a task that (launches and) watches one VMM, publishing its status.
    fn supervise(&self, source: VmmSource, pending: Option<InstanceState>, restart: bool) -> Vmm {
        let initial = match &source {
            VmmSource::Launch(_) => VmmStatus::Launching,
            VmmSource::Adopted(pid) => VmmStatus::Running { pid: *pid },
        };
        let status = Arc::new(Mutex::new(initial));
        let changes = self.changes.clone();
        let shared = status.clone();
        let task = self.runtime.spawn(async move {
            let set = |value: VmmStatus| {
                *shared.lock().unwrap_or_else(|e| e.into_inner()) = value;
                notify(&changes);
            };
            let pid = match source {
                VmmSource::Adopted(pid) => pid,
                VmmSource::Launch(plan) => match tokio::task::spawn_blocking(move || plan.run()).await {
                    Ok(Ok(pid)) => {
                        set(VmmStatus::Running { pid });
                        pid
                    }
                    Ok(Err(e)) => {
                        set(VmmStatus::LaunchFailed {
                            reason: e.exit_reason(),
                            error: error_chain(&e),
                            unix_ms: now_unix_ms(),
                        });
                        return;
                    }
                    Err(e) => {
                        set(VmmStatus::LaunchFailed {
                            reason: crate::error::VMM_ERROR_REASON,
                            error: format!("the start task failed: {e}"),
                            unix_ms: now_unix_ms(),
                        });
                        return;
                    }
                },
            };
            loop {
                match process::check(pid) {
                    ProcessState::Alive => tokio::time::sleep(POLL_INTERVAL).await,
                    ProcessState::Exited(wait_status) => {
                        set(VmmStatus::Exited {
                            pid,
                            wait_status,
                            unix_ms: now_unix_ms(),
                        });
                        return;
                    }
                }
            }
        });
        Vmm {
            status,
            task,
            pending,
            restart,
            started: None,
        }
    }

    /// Starts a VMM for `wanted`: a fresh start (boot 1 of a new start generation) or a
    /// restart of a running instance (boot + 1).
    fn launch(&self, id: &str, instance: &mut Instance, wanted: &DesiredInstance, restart: bool) {
        let previous = &instance.state;
        let mut next = if restart {
            InstanceState {
                boot_count: previous.boot_count + 1,
                reboot_generation: previous.reboot_generation.max(wanted.reboot_generation),
                restart_pending: false,
                ..previous.clone()
            }
        } else {
            InstanceState {
                start_generation: wanted.start_generation,
                reboot_generation: wanted.reboot_generation,
                boot_count: 1,
                restart_pending: false,
                ..previous.clone()
            }
        };
        next.log_offset = std::fs::metadata(instance.dir.join(LOG_FILE))
            .map(|m| m.len())
            .unwrap_or(0);
        let line = format_args!(
            "starting VMM (start_generation {}, boot {})",
            next.start_generation, next.boot_count
        );
        if restart {
            instance.guest_log(id, line);
        } else {
            log(id, line);
        }
        match LaunchPlan::new(&self.config, instance.dir.clone(), wanted, next.clone(), !restart) {
            Ok(plan) => {
                instance.vmm = Some(self.supervise(VmmSource::Launch(Box::new(plan)), Some(next), restart));
            }
            Err(e) => instance.record_launch_failure(id, next, e.exit_reason(), error_chain(&e), now_unix_ms()),
        }
    }

    /// Sends `kill` (forced) or `shutdown` with `timeout` to the VMM `pid` of `dir`,
    /// falling back to SIGKILL / SIGTERM when its control socket does not answer.
    fn send_stop(&self, id: &str, dir: &Path, pid: i32, force: bool, timeout: Duration) {
        let socket = dir.join(SOCKET_FILE);
        let config_path = dir.join(CONFIG_FILE);
        let vmm_binary = self.config.vmm_binary.clone();
        let request = if force {
            "kill".to_string()
        } else {
            control::shutdown_request(timeout)
        };
        log(
            id,
            format_args!(
                "{} VMM pid {pid}",
                if force {
                    "killing".to_string()
                } else {
                    format!("shutting down (timeout {} ms)", timeout.as_millis())
                }
            ),
        );
        let id = id.to_string();
        self.runtime.spawn(async move {
            // A VMM that was just started binds its socket last: wait for it a while.
            let give_up = Instant::now() + SOCKET_WAIT;
            loop {
                let error = match control::request(&socket, &request, CONTROL_TIMEOUT).await {
                    Ok(_) => return,
                    Err(e) => e,
                };
                if !process::is_our_vmm(pid, &vmm_binary, &config_path) {
                    return;
                }
                let not_yet = matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused);
                if not_yet && Instant::now() < give_up {
                    tokio::time::sleep(POLL_INTERVAL).await;
                    continue;
                }
                let signal = if force { libc::SIGKILL } else { libc::SIGTERM };
                log(
                    &id,
                    format_args!("control socket {}: {error}; sending signal {signal}", socket.display()),
                );
                let _ = process::signal_vmm(pid, signal, &vmm_binary, &config_path);
                return;
            }
        });
    }

    fn request_stop(&self, id: &str, instance: &mut Instance, purpose: StopPurpose, force: bool, timeout: Duration) {
        let Some(pid) = instance.running_pid() else {
            return;
        };
        self.send_stop(id, &instance.dir, pid, force, timeout);
        let grace = if force { KILL_GRACE } else { timeout + KILL_GRACE };
        instance.stop = Some(StopRequest {
            purpose,
            forced: force,
            deadline: Instant::now() + grace,
            hard_killed: false,
        });
    }

    /// SIGKILL for a VMM that outlived its stop deadline.
    fn enforce_deadline(&self, id: &str, instance: &mut Instance) {
        let Some(pid) = instance.running_pid() else {
            return;
        };
        let Some(stop) = &mut instance.stop else {
            return;
        };
        if stop.hard_killed || Instant::now() < stop.deadline {
            return;
        }
        log(id, format_args!("VMM pid {pid} outlived its stop deadline; SIGKILL"));
        let config_path = instance.dir.join(CONFIG_FILE);
        if let Err(e) = process::signal_vmm(pid, libc::SIGKILL, &self.config.vmm_binary, &config_path) {
            log(id, format_args!("cannot kill pid {pid}: {e}"));
        }
        stop.hard_killed = true;
    }

    /// `run=running`.
    fn apply_running(&self, id: &str, instance: &mut Instance, wanted: &DesiredInstance) {
        match instance.vmm.as_ref().map(Vmm::status) {
            Some(VmmStatus::Running { .. }) => {
                if instance.stop.is_some() {
                    self.enforce_deadline(id, instance);
                    return;
                }
                let current = instance.current_state();
                let timeout = self.stop_timeout(wanted);
                if wanted.start_generation > current.start_generation {
                    self.request_stop(id, instance, StopPurpose::Restart, wanted.force_stop, timeout);
                } else if wanted.reboot_generation > current.reboot_generation {
                    self.request_stop(id, instance, StopPurpose::Reboot, false, timeout);
                }
            }
            // Starting, or ended and not collected yet: the next call sees it.
            Some(_) => {}
            None => {
                let state = &instance.state;
                if wanted.start_generation > state.start_generation {
                    instance.backoff.reset();
                    self.launch(id, instance, wanted, false);
                } else if wanted.start_generation == state.start_generation
                    && state.restart_pending
                    && instance.backoff.remaining(Instant::now()).is_zero()
                {
                    self.launch(id, instance, wanted, true);
                }
            }
        }
    }

    /// `run=stopped` and `run=terminated`.
    fn apply_stopped(&self, id: &str, instance: &mut Instance, wanted: &DesiredInstance, purpose: StopPurpose) {
        match instance.vmm.as_ref().map(Vmm::status) {
            Some(VmmStatus::Running { pid }) => {
                let timeout = self.stop_timeout(wanted);
                let Some(stop) = &mut instance.stop else {
                    self.request_stop(id, instance, purpose, wanted.force_stop, timeout);
                    return;
                };
                stop.purpose = purpose;
                if wanted.force_stop && !stop.forced {
                    stop.forced = true;
                    stop.deadline = Instant::now() + KILL_GRACE;
                    self.send_stop(id, &instance.dir, pid, true, timeout);
                }
                self.enforce_deadline(id, instance);
            }
            Some(_) => {}
            None => {
                instance.backoff.reset();
                if instance.state.restart_pending {
                    instance.state.restart_pending = false;
                    instance.save(id);
                }
                if let Err(e) = wipe_stopped(&instance.dir) {
                    log(id, format_args!("cannot wipe the instance store: {e}; will retry"));
                    return;
                }
                if purpose == StopPurpose::Terminate {
                    self.terminate(id, instance, wanted);
                }
            }
        }
    }

    /// Deletes the volumes with DeleteOnTermination and the run directory of a stopped
    /// instance. Idempotent: what is already gone counts as deleted.
    fn terminate(&self, id: &str, instance: &mut Instance, wanted: &DesiredInstance) {
        let mut deleted = Vec::new();
        for volume in wanted.volumes.iter().filter(|v| v.delete_on_termination) {
            let path = match volume_path(&self.config.volume_dir, &volume.volume_id) {
                Ok(path) => path,
                Err(e) => {
                    log(id, format_args!("{e}; not deleting it"));
                    continue;
                }
            };
            let _ = std::fs::remove_file(crate::volume::dirty_bitmap_path(
                &self.config.volume_dir,
                &volume.volume_id,
            ));
            match std::fs::remove_file(&path) {
                Ok(()) => deleted.push(volume.volume_id.clone()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => deleted.push(volume.volume_id.clone()),
                Err(e) => {
                    log(id, format_args!("cannot delete {}: {e}; will retry", path.display()));
                    return;
                }
            }
        }
        match std::fs::remove_dir_all(&instance.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                log(
                    id,
                    format_args!("cannot remove {}: {e}; will retry", instance.dir.display()),
                );
                return;
            }
            _ => {}
        }
        log(id, format_args!("terminated; deleted volumes {deleted:?}"));
        instance.deleted_volumes = Some(deleted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tag: &str) -> AgentConfig {
        let base = std::env::temp_dir().join(format!("hearth-agent-unit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        AgentConfig {
            run_dir: base.join("run"),
            volume_dir: base.join("volumes"),
            vmm_binary: PathBuf::from("/nonexistent/hearth-vmm"),
            host: HostSpec {
                host_id: "h-test".into(),
                availability_zone: "az-1".into(),
                vcpus: 2,
                memory_mib: 1024,
            },
            default_stop_timeout: Duration::from_secs(10),
            network: Default::default(),
        }
    }

    fn wanted(id: &str, run: &str) -> DesiredInstance {
        DesiredInstance {
            instance_id: id.into(),
            run: run.into(),
            start_generation: 1,
            vcpus: 1,
            memory_mib: 32,
            kernel_path: "/nonexistent/vmlinux".into(),
            ..Default::default()
        }
    }

    async fn wait_until(agent: &mut Agent, what: impl Fn(&[ActualInstance]) -> bool) -> Vec<ActualInstance> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            agent.converge();
            let actual = agent.actual();
            if what(&actual) {
                return actual;
            }
            assert!(Instant::now() < deadline, "timed out; actual: {actual:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn new_outside_a_runtime_is_an_error() {
        assert!(matches!(Agent::new(config("nort")), Err(AgentError::NoRuntime)));
    }

    #[tokio::test]
    async fn a_missing_vmm_binary_is_reported_as_vmm_error_and_not_retried() {
        let config = config("nobin");
        let base = config.run_dir.parent().unwrap().to_path_buf();
        let mut agent = Agent::new(config).unwrap();
        // Nothing happens before the first desired state.
        agent.converge();
        assert!(agent.actual().is_empty());
        agent.reconcile(&[wanted("i-1", "running")]);
        let actual = wait_until(&mut agent, |a| a[0].last_exit_reason == "vmm-error").await;
        assert_eq!(actual[0].phase, phase::STOPPED);
        assert_eq!(actual[0].start_generation, 1);
        assert_eq!(actual[0].boot_count, 0);
        assert!(
            actual[0]
                .last_exit_detail
                .contains("cannot start /nonexistent/hearth-vmm"),
            "{actual:?}"
        );
        // The same generation is not started again.
        agent.converge();
        assert!(agent.instances["i-1"].vmm.is_none());
        // A second agent on the same run directory is refused.
        assert!(matches!(
            Agent::new(agent.config().clone()),
            Err(AgentError::Lock { .. })
        ));
        drop(agent);
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn an_encrypted_volume_needs_a_usable_key_and_a_key_means_encrypted() {
        let volume = |encrypted: bool, key: Vec<u8>| DesiredVolume {
            volume_id: "vol-e".into(),
            encrypted,
            encryption_key: key,
            ..Default::default()
        };
        let mut good: Vec<u8> = (0..64).collect();
        assert_eq!(volume_key(&volume(false, Vec::new())).unwrap(), None);
        assert_eq!(volume_key(&volume(true, good.clone())).unwrap(), Some(good.as_slice()));
        // A key without the flag (a hearthd from before the flag) is encrypted too.
        assert_eq!(volume_key(&volume(false, good.clone())).unwrap(), Some(good.as_slice()));
        good[32..].copy_from_slice(&(0..32).collect::<Vec<u8>>());
        for (encrypted, key, problem) in [
            (true, Vec::new(), "no key"),
            (true, vec![1; 63], "63 bytes, expected 64"),
            (false, vec![1; 16], "16 bytes, expected 64"),
            (true, good, "halves are equal"),
        ] {
            let error = volume_key(&volume(encrypted, key)).unwrap_err();
            assert_eq!(error.exit_reason(), crate::error::ENCRYPTION_KEY_REASON);
            let text = error_chain(&error);
            assert!(text.contains("vol-e") && text.contains(problem), "{text}");
        }
    }

    #[tokio::test]
    async fn an_encrypted_volume_without_a_usable_key_is_never_started() {
        let config = config("nokey");
        let base = config.run_dir.parent().unwrap().to_path_buf();
        let mut agent = Agent::new(config).unwrap();
        let volume_file = agent.config().volume_dir.join("vol-enc.img");
        std::fs::write(&volume_file, b"ciphertext").unwrap();
        let run_dir = agent.config().run_dir.join("i-1");
        let encrypted = |generation: u64, key: Vec<u8>| {
            let mut desired = wanted("i-1", "running");
            desired.start_generation = generation;
            desired.volumes = vec![DesiredVolume {
                volume_id: "vol-enc".into(),
                encrypted: true,
                encryption_key: key,
                ..Default::default()
            }];
            desired
        };
        for (generation, key) in [(1, Vec::new()), (2, vec![9; 32])] {
            agent.reconcile(&[encrypted(generation, key)]);
            let actual = wait_until(&mut agent, |a| a[0].start_generation == generation).await;
            assert_eq!(actual[0].last_exit_reason, "encryption-key", "{actual:?}");
            assert_eq!(actual[0].phase, phase::STOPPED);
            assert_eq!((actual[0].pid, actual[0].boot_count), (0, 0));
            assert!(actual[0].last_exit_detail.contains("vol-enc"), "{actual:?}");
            assert!(agent.instances["i-1"].vmm.is_none());
            // Nothing prepared: no VMM config, no key file, the volume file as it was.
            assert!(!run_dir.join(CONFIG_FILE).exists());
            assert!(!run_dir.join(format!("vol-enc{KEY_SUFFIX}")).exists());
            assert_eq!(std::fs::read(&volume_file).unwrap(), b"ciphertext");
        }
        // With its key the start goes on (and fails only for the missing VMM binary), the
        // disk configured encrypted.
        let key: Vec<u8> = (0..64).collect();
        agent.reconcile(&[encrypted(3, key.clone())]);
        let actual = wait_until(&mut agent, |a| {
            a[0].start_generation == 3 && a[0].last_exit_reason == "vmm-error"
        })
        .await;
        assert!(actual[0].last_exit_detail.contains("hearth-vmm"), "{actual:?}");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run_dir.join(CONFIG_FILE)).unwrap()).unwrap();
        let key_file = PathBuf::from(config["disks"][0]["encryption"]["key_file"].as_str().unwrap());
        assert_eq!(std::fs::read(key_file).unwrap(), key);
        drop(agent);
        std::fs::remove_dir_all(base).unwrap();
    }

    #[tokio::test]
    async fn a_guest_in_a_reboot_loop_is_restarted_with_backoff_and_stays_running() {
        use crate::backoff::{FIRST_DELAY, FREE_RESTARTS};
        use std::os::unix::fs::PermissionsExt;
        let mut config = config("rebootloop");
        let base = config.run_dir.parent().unwrap().to_path_buf();
        std::fs::create_dir_all(&base).unwrap();
        // A "VMM" whose guest reboots at once: exit status 3.
        let vmm = base.join("hearth-vmm-reboots");
        std::fs::write(&vmm, "#!/bin/sh\nexit 3\n").unwrap();
        std::fs::set_permissions(&vmm, std::fs::Permissions::from_mode(0o755)).unwrap();
        config.vmm_binary = vmm;
        let mut agent = Agent::new(config).unwrap();
        agent.reconcile(&[wanted("i-1", "running")]);
        // The first quick reboots restart at once; the next one waits.
        let started = Instant::now();
        let actual = wait_until(&mut agent, |a| a[0].last_exit_detail.contains("restart in 1 s")).await;
        assert!(started.elapsed() < FIRST_DELAY * 5, "{:?}", started.elapsed());
        assert_eq!(actual[0].last_exit_reason, "guest-reboot");
        assert_eq!(actual[0].boot_count, FREE_RESTARTS + 1, "{actual:?}");
        // Waiting out its backoff the instance is still running (no VMM yet).
        assert_eq!(
            (actual[0].phase.as_str(), actual[0].pid),
            (phase::RUNNING, 0),
            "{actual:?}"
        );
        let waiting = Instant::now();
        let actual = wait_until(&mut agent, |a| a[0].boot_count == FREE_RESTARTS + 2).await;
        assert!(
            waiting.elapsed() >= FIRST_DELAY / 2,
            "restarted after {:?}",
            waiting.elapsed()
        );
        assert_eq!(actual[0].phase, phase::RUNNING);
        // The next wait doubles; the agent's own timer wakes its loop when it is due.
        let actual = wait_until(&mut agent, |a| a[0].last_exit_detail.contains("restart in 2 s")).await;
        assert_eq!(actual[0].boot_count, FREE_RESTARTS + 2, "{actual:?}");
        let mut changes = agent.subscribe();
        changes.borrow_and_update();
        let woke = tokio::time::timeout(Duration::from_secs(5), changes.changed()).await;
        assert!(woke.is_ok(), "no wake-up when the restart was due");
        // Stopping ends the loop: the next start begins without delay.
        let mut stopped = wanted("i-1", "stopped");
        stopped.start_generation = 1;
        agent.reconcile(&[stopped]);
        let actual = wait_until(&mut agent, |a| a[0].phase == phase::STOPPED).await;
        assert_eq!(actual[0].last_exit_reason, "guest-reboot");
        let mut again = wanted("i-1", "running");
        again.start_generation = 2;
        agent.reconcile(&[again]);
        let actual = wait_until(&mut agent, |a| a[0].start_generation == 2 && a[0].boot_count >= 2).await;
        assert_eq!(actual[0].phase, phase::RUNNING);
        drop(agent);
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn nic_limits_reach_the_vmm_config_and_absent_ones_mean_unlimited() {
        use hearth_api::v1::{NetworkInterface, NicLimits};
        let config = config("niclimits");
        let mut desired = wanted("i-1", "running");
        let nic = |limits: Option<NicLimits>| NetworkInterface {
            tap: "ht0".into(),
            mac: "02:00:00:00:00:05".into(),
            limits,
            ..Default::default()
        };
        desired.interfaces = vec![
            nic(Some(NicLimits {
                packets_per_sec: 10_000,
                packets_burst: 500_000,
                bytes_per_sec: 8_000_000,
                bytes_burst: 0,
            })),
            nic(None),
            nic(Some(NicLimits::default())),
        ];
        let plan = LaunchPlan::new(
            &config,
            PathBuf::from("/nonexistent"),
            &desired,
            InstanceState::default(),
            true,
        )
        .unwrap();
        let json = serde_json::to_value(&plan.config).unwrap();
        assert_eq!(
            json["nics"][0]["rate_limit"],
            serde_json::json!({
                "ops_per_sec": 10_000, "ops_burst": 500_000,
                // No bucket size given: one second's worth.
                "bytes_per_sec": 8_000_000, "bytes_burst": 8_000_000,
            })
        );
        assert!(json["nics"][1].get("rate_limit").is_none(), "{json}");
        assert!(json["nics"][2].get("rate_limit").is_none(), "{json}");
    }

    #[tokio::test]
    async fn an_unknown_instance_desired_terminated_is_reported_terminated() {
        let config = config("term");
        let base = config.run_dir.parent().unwrap().to_path_buf();
        let mut agent = Agent::new(config).unwrap();
        std::fs::write(agent.config().volume_dir.join("vol-a.img"), b"x").unwrap();
        std::fs::write(agent.config().volume_dir.join("vol-b.img"), b"y").unwrap();
        let mut terminated = wanted("i-2", "terminated");
        terminated.volumes = vec![
            DesiredVolume {
                volume_id: "vol-a".into(),
                delete_on_termination: true,
                ..Default::default()
            },
            DesiredVolume {
                volume_id: "vol-b".into(),
                ..Default::default()
            },
        ];
        agent.reconcile(std::slice::from_ref(&terminated));
        let actual = agent.actual();
        assert_eq!(actual[0].phase, phase::TERMINATED);
        assert_eq!(actual[0].deleted_volumes, ["vol-a"]);
        assert!(!agent.config().volume_dir.join("vol-a.img").exists());
        assert!(agent.config().volume_dir.join("vol-b.img").exists());
        // Reported while listed, forgotten once hearthd drops it.
        agent.reconcile(&[terminated]);
        assert_eq!(agent.actual().len(), 1);
        agent.reconcile(&[]);
        assert!(agent.actual().is_empty());
        drop(agent);
        std::fs::remove_dir_all(base).unwrap();
    }

    #[tokio::test]
    async fn console_output_is_the_tail_of_the_console_log() {
        let config = config("console");
        let base = config.run_dir.parent().unwrap().to_path_buf();
        let agent = Agent::new(config).unwrap();
        assert_eq!(agent.console_output("i-3"), None);
        assert_eq!(agent.console_output("../etc"), None);
        let dir = agent.config().run_dir.join("i-3");
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = vec![b'a'; 70 * 1024];
        text.extend_from_slice(b"probe: poweroff\n");
        std::fs::write(dir.join(CONSOLE_FILE), &text).unwrap();
        let tail = agent.console_output("i-3").unwrap();
        assert_eq!(tail.len(), 64 * 1024);
        assert!(tail.ends_with(b"probe: poweroff\n"));
        drop(agent);
        std::fs::remove_dir_all(base).unwrap();
    }
}
