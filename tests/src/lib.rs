//! Harness for whole-stack tests: starts `hearthd` (with an in-process agent, or with a
//! separate `hearth-agent` process) on a private data directory, talks to it over gRPC or
//! through the `hearth` CLI, and removes every process and file it made, even when a test
//! fails.
#![allow(missing_docs)]

pub mod bench;
pub mod images;
pub mod netlab;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hearth_api::v1::compute_client::ComputeClient;
use hearth_api::v1::*;
use tonic::transport::{Channel, Endpoint};

/// True under CI, where nothing may be skipped for lack of KVM.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// False (and says why) when `/dev/kvm` is unusable; panics instead under CI.
pub fn kvm_available() -> bool {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) => {
            assert!(!in_ci(), "/dev/kvm unusable under CI=true: {e}");
            eprintln!("SKIPPED: /dev/kvm unusable: {e}");
            false
        }
    }
}

/// True where real Linux guests run: a host whose CPU has VMX/SVM (not nested PVM), such
/// as a user's host or the nested lab's L1. Elsewhere the test skips saying why — when
/// `HEARTH_LAB_LATER=1` (scripts/test, which runs it in the lab next) or on a developer's
/// machine — and fails under CI.
pub fn linux_guests_run() -> bool {
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hardware = cpuinfo.split_whitespace().any(|w| w == "vmx" || w == "svm");
    if hardware && !pvm {
        return kvm_available();
    }
    let reason = format!(
        "real Linux guests need hardware virtualization (vmx/svm in /proc/cpuinfo: {hardware}, kvm_pvm: {pvm})"
    );
    if std::env::var("HEARTH_LAB_LATER").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED here: {reason}; scripts/test runs it in the nested lab next (scripts/lab test)");
        return false;
    }
    assert!(!in_ci(), "{reason}; under CI=true it must run: scripts/lab test");
    eprintln!("SKIPPED: {reason}; run it in the nested lab: scripts/lab test");
    false
}

/// `target/<profile>/` of this build (the workspace's binaries live there).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    // target/debug/deps/<test> → target/debug
    if dir.ends_with("deps") {
        dir.parent().unwrap().to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A workspace binary; `cargo build --workspace --bins` must have run (scripts/test does).
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// The probe guest ELF (built by scripts/build-probe).
pub fn probe_kernel() -> PathBuf {
    let path = repo_root().join("target/probe/release/hearth-probe");
    if !path.exists() {
        let status = Command::new(repo_root().join("scripts/build-probe"))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "scripts/build-probe failed");
    }
    path
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// How the agent runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AgentMode {
    /// `hearthd --dev`: hearthd and a local agent in one process.
    InProcess,
    /// `hearthd` plus a separate `hearth-agent` process (so each can be killed alone).
    Separate,
    /// `hearthd` alone: the test starts its agents (e.g. in network namespaces, [`netlab`]).
    External,
}

/// A private hearth region: hearthd + one agent, on a temp data directory.
pub struct Cloud {
    pub dir: PathBuf,
    pub mode: AgentMode,
    hearthd: Option<Child>,
    agent: Option<Child>,
    /// Extra arguments for every hearthd start (e.g. `--config FILE`).
    hearthd_args: Vec<String>,
}

impl Cloud {
    /// Starts hearthd (and the agent) and waits until the agent's host is registered.
    pub fn start(mode: AgentMode) -> Cloud {
        Cloud::start_with_hearthd_args(mode, &[])
    }

    /// [`Cloud::start`], with `args` added to hearthd's command line (each time it starts;
    /// `{dir}` in them stands for the data directory).
    pub fn start_with_hearthd_args(mode: AgentMode, args: &[&str]) -> Cloud {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("hearth-e2e-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cloud = Cloud {
            dir: dir.clone(),
            mode,
            hearthd: None,
            agent: None,
            hearthd_args: args
                .iter()
                .map(|a| a.replace("{dir}", &dir.display().to_string()))
                .collect(),
        };
        cloud.start_hearthd();
        if mode == AgentMode::Separate {
            cloud.start_agent();
        }
        if mode != AgentMode::External {
            cloud.wait_for_zone();
        }
        cloud
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("hearthd.sock")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("agent/run")
    }

    pub fn volume_dir(&self) -> PathBuf {
        self.dir.join("agent/volumes")
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
            .unwrap()
    }

    /// (Re)starts hearthd on the same data directory.
    pub fn start_hearthd(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let mut command = Command::new(binary("hearthd"));
        command.arg("--data-dir").arg(&self.dir);
        if self.mode == AgentMode::InProcess {
            command.arg("--dev").arg("--vmm").arg(binary("hearth-vmm"));
        }
        command.args(&self.hearthd_args);
        let child = command
            .stdin(Stdio::null())
            .stdout(self.log("hearthd.log"))
            .stderr(self.log("hearthd.log"))
            .spawn()
            .expect("spawn hearthd");
        self.hearthd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "hearthd did not create its socket:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// (Re)starts the separate agent.
    pub fn start_agent(&mut self) {
        let child = Command::new(binary("hearth-agent"))
            .arg("--hearthd")
            .arg(format!("unix:{}", self.socket().display()))
            .arg("--token-file")
            .arg(self.dir.join("agent-token"))
            .arg("--run-dir")
            .arg(self.run_dir())
            .arg("--volume-dir")
            .arg(self.volume_dir())
            .args([
                "--host-id",
                "h-e2e",
                "--az",
                "homelab-1a",
                "--vcpus",
                "64",
                "--memory-mib",
                "65536",
            ])
            .arg("--vmm")
            .arg(binary("hearth-vmm"))
            // Instance networks are tested in namespaces of their own (tests/network.rs).
            .args(["--network", "off"])
            .stdin(Stdio::null())
            .stdout(self.log("agent.log"))
            .stderr(self.log("agent.log"))
            .spawn()
            .expect("spawn hearth-agent");
        self.agent = Some(child);
    }

    /// `kill -9` hearthd (with `--dev`, that is the agent too).
    pub fn kill_hearthd(&mut self) {
        if let Some(mut child) = self.hearthd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill -9` the separate agent.
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// hearthd's and the agent's logs, for failure messages.
    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!(
            "--- hearthd.log\n{}\n--- agent.log\n{}",
            read("hearthd.log"),
            read("agent.log")
        )
    }

    /// Waits until a zone is available with a host (hearthd answers and its agent synced).
    pub fn wait_for_zone(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let zones = self.block_on(async {
                let mut client = self.client().await;
                client
                    .describe_availability_zones(DescribeAvailabilityZonesRequest::default())
                    .await
            });
            if let Ok(zones) = zones {
                if zones
                    .get_ref()
                    .availability_zones
                    .iter()
                    .any(|z| z.state == "available" && z.hosts > 0)
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no available zone with a host:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `future` on a fresh current-thread runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    /// A gRPC client over the Unix socket.
    pub async fn client(&self) -> ComputeClient<Channel> {
        // The socket file appears at bind(2), a moment before listen(2): a connection in
        // between is refused, so retry for a while.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let socket = self.socket();
            let channel = Endpoint::try_from("http://hearthd.local")
                .unwrap()
                .connect_with_connector(tower::service_fn(move |_| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(socket).await?,
                        ))
                    }
                }))
                .await;
            match channel {
                Ok(channel) => return ComputeClient::new(channel),
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("cannot connect to hearthd: {e}\n{}", self.logs()),
            }
        }
    }

    /// Runs the `hearth` CLI against this cloud.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary("hearth"))
            .arg("--endpoint")
            .arg(format!("unix:{}", self.socket().display()))
            .args(args)
            .output()
            .expect("run hearth")
    }

    /// Runs the CLI with `--output json` and parses stdout; panics on failure.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let output = self.cli(&all);
        assert!(
            output.status.success(),
            "hearth {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.logs()
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("hearth {args:?}: bad JSON ({e})"))
    }

    /// hearthd's image import directory (`<data dir>/import`): RegisterImage reads files only there.
    pub fn import_dir(&self) -> PathBuf {
        self.dir.join("import")
    }

    /// Registers the probe guest as an AMI whose guest runs `ops` (probe.ops=) with a
    /// 16 MiB root disk image (both put into the import directory first); returns the AMI ID.
    pub fn register_probe_ami(&self, name: &str, ops: &str) -> String {
        let root = self.import_dir().join(format!("{name}-root.img"));
        std::fs::create_dir_all(self.import_dir()).unwrap();
        std::fs::write(&root, vec![0u8; 16 << 20]).unwrap();
        let kernel = import_file(&self.import_dir(), &probe_kernel(), &format!("{name}-kernel"));
        let cmdline = format!("console=ttyS0 probe.ops={ops}");
        let image = self.cli_json(&[
            "register-image",
            "--name",
            name,
            "--kernel",
            kernel.to_str().unwrap(),
            "--root-image",
            root.to_str().unwrap(),
            "--command-line",
            &cmdline,
        ]);
        image["ImageId"]
            .as_str()
            .unwrap_or_else(|| panic!("no ImageId in {image}"))
            .to_string()
    }

    /// DescribeInstances for one instance.
    pub fn instance(&self, id: &str) -> Instance {
        let response = self.block_on(async {
            let mut client = self.client().await;
            client
                .describe_instances(DescribeInstancesRequest {
                    instance_ids: vec![id.to_string()],
                    ..Default::default()
                })
                .await
        });
        let response = response
            .unwrap_or_else(|e| panic!("describe {id}: {e}\n{}", self.logs()))
            .into_inner();
        response
            .reservations
            .into_iter()
            .flat_map(|r| r.instances)
            .find(|i| i.instance_id == id)
            .unwrap()
    }

    /// The instance's state name.
    pub fn state(&self, id: &str) -> String {
        self.instance(id).state.map(|s| s.name).unwrap_or_default()
    }

    /// Waits until `id` is in `state`; returns the states seen on the way.
    pub fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen: Vec<String> = Vec::new();
        loop {
            let now = self.state(id);
            if seen.last() != Some(&now) {
                seen.push(now.clone());
            }
            if now == state {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never reached {state}; seen {seen:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The instance's console log as the agent wrote it.
    pub fn console(&self, id: &str) -> String {
        std::fs::read_to_string(self.run_dir().join(id).join("console.log")).unwrap_or_default()
    }

    /// Waits until the console has `needle`.
    pub fn wait_console(&self, id: &str, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.console(id).contains(needle) {
            assert!(
                Instant::now() < deadline,
                "console of {id} lacks {needle:?}:\n{}\n{}",
                self.console(id),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pids of the VMMs the agent started (from their run directories).
    pub fn vmm_pids(&self) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir(self.run_dir()) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read_to_string(e.path().join("pid")).ok())
            .filter_map(|p| p.trim().parse().ok())
            .filter(|pid| process_alive(*pid))
            .collect()
    }
}

/// Puts `source` into the image import directory `import_dir` as `name` (a hard link, or a
/// copy across file systems) and answers its path there: hearthd's RegisterImage reads files
/// only from its import directory.
pub fn import_file(import_dir: &Path, source: &Path, name: &str) -> PathBuf {
    let target = import_dir.join(name);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let _ = std::fs::remove_file(&target);
    if std::fs::hard_link(source, &target).is_err() {
        std::fs::copy(source, &target)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", source.display(), target.display()));
    }
    target
}

/// Puts an image directory's manifest and the files it names into `import_dir/subdir` (see
/// [`import_file`]) and answers the manifest's path there.
pub fn import_manifest(import_dir: &Path, manifest: &Path, subdir: &str) -> PathBuf {
    let source = manifest.parent().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    for role in ["kernel", "initrd", "root"] {
        if let Some(path) = json[role]["path"].as_str() {
            import_file(import_dir, &source.join(path), &format!("{subdir}/{path}"));
        }
    }
    import_file(import_dir, manifest, &format!("{subdir}/image.json"))
}

/// Every process (not this one) whose command line contains one of `needles`.
pub fn processes_naming(needles: &[String]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let cmdline = String::from_utf8_lossy(&c);
                needles.iter().any(|n| cmdline.contains(n.as_str()))
            })
        })
        .collect()
}

/// True while `pid` exists (and is not a zombie).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.kill_agent();
        self.kill_hearthd();
        // The VMMs by their pid files, and any other process naming this cloud's directory
        // on its command line: a VMM the agent started just before it was killed may have
        // no pid file yet (such a VMM once outlived a test run by two hours).
        let mut pids = self.vmm_pids();
        pids.extend(processes_naming(&[self.dir.to_string_lossy().into_owned()]));
        for pid in pids {
            // SAFETY: plain kill(2) on a pid of a process that belongs to this test cloud.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if std::env::var("HEARTH_E2E_KEEP").is_err() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
