//! Helpers for the end-to-end tests: locate the probe guest, run `hearth-vmm`, and make
//! network namespaces and taps that are removed even when a test fails.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Path of the VMM binary under test.
pub fn vmm_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hearth-vmm"))
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

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TempDir {
    /// A fresh directory under the system temp dir.
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("hearth-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a finished VMM run showed.
#[derive(Debug)]
pub struct Outcome {
    /// Process exit status.
    pub status: i32,
    /// Guest console (stdout).
    pub console: String,
    /// Event lines and errors (stderr).
    pub stderr: String,
}

impl Outcome {
    /// The `vm-exit` event, parsed.
    pub fn exit_event(&self) -> serde_json::Value {
        self.events("vm-exit")
            .pop()
            .unwrap_or_else(|| panic!("no vm-exit event in:\n{}", self.stderr))
    }

    /// Every event named `name`.
    pub fn events(&self, name: &str) -> Vec<serde_json::Value> {
        self.stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == name)
            .collect()
    }

    /// Asserts the console has `line` as a whole line.
    pub fn assert_line(&self, line: &str) {
        assert!(
            self.console.lines().any(|l| l.trim_end_matches('\r') == line),
            "console lacks line {line:?}:\n{}\nstderr:\n{}",
            self.console,
            self.stderr
        );
    }
}

/// A running VMM process, killed on drop.
pub struct Running {
    pub child: Child,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    /// Waits up to `timeout` for the VMM to end.
    pub fn wait(mut self, timeout: Duration) -> Outcome {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let status = self.child.wait().unwrap();
                let console = self.stdout.take().unwrap().join().unwrap();
                let stderr = self.stderr.take().unwrap().join().unwrap();
                panic!("VMM did not end within {timeout:?} ({status});\nconsole:\n{console}\nstderr:\n{stderr}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Outcome {
            status: status.code().unwrap_or(-1),
            console: self.stdout.take().unwrap().join().unwrap(),
            stderr: self.stderr.take().unwrap().join().unwrap(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect<R: Read + Send + 'static>(reader: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let mut reader = BufReader::new(reader);
        let _ = reader.read_to_string(&mut text);
        text
    })
}

/// Starts `hearth-vmm` with `args` (optionally inside network namespace `netns`).
pub fn spawn_vmm(args: &[String], netns: Option<&str>) -> Running {
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(vmm_binary());
            c
        }
        None => Command::new(vmm_binary()),
    };
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hearth-vmm");
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    Running {
        child,
        stdout: Some(stdout),
        stderr: Some(stderr),
    }
}

/// Arguments booting the probe with `cmdline` (the probe reads `probe.ops=`).
pub fn probe_args(cmdline: &str) -> Vec<String> {
    vec![
        "--kernel".into(),
        probe_kernel().display().to_string(),
        "--memory".into(),
        "64".into(),
        "--cmdline".into(),
        cmdline.into(),
    ]
}

/// Runs the probe to completion.
pub fn run_probe(cmdline: &str, extra: &[&str]) -> Outcome {
    let mut args = probe_args(cmdline);
    args.extend(extra.iter().map(|s| s.to_string()));
    spawn_vmm(&args, None).wait(Duration::from_secs(60))
}

/// Sends one control request and returns the JSON answer.
pub fn control(socket: &Path, request: &str) -> serde_json::Value {
    // The socket's path exists a moment before it listens (bind, then listen): a refused
    // connection is retried briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        match UnixStream::connect(socket) {
            Ok(stream) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("connect {}: {e}", socket.display()),
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    writeln!(stream, "{request}").unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad answer {line:?}: {e}"))
}

/// Waits until `path` exists.
pub fn wait_for_path(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn run(command: &str, args: &[&str]) {
    let output = Command::new(command)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{command}: {e}"));
    assert!(
        output.status.success(),
        "{command} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A network namespace with a tap device, both deleted on drop.
pub struct NetNs {
    /// Namespace name.
    pub name: String,
    /// Tap name inside it.
    pub tap: String,
}

impl NetNs {
    /// Creates namespace `hearth-t<pid>-<n>` with tap `tap0` at `host_cidr`, up.
    pub fn with_tap(host_cidr: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let ns = NetNs {
            name: format!("hearth-t{}-{n}", std::process::id()),
            tap: "tap0".into(),
        };
        run("ip", &["netns", "add", &ns.name]);
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        run("ip", &["-n", &ns.name, "tuntap", "add", "dev", &ns.tap, "mode", "tap"]);
        run("ip", &["-n", &ns.name, "addr", "add", host_cidr, "dev", &ns.tap]);
        run("ip", &["-n", &ns.name, "link", "set", &ns.tap, "up"]);
        ns
    }

    /// Runs `f` on a thread that entered the namespace (sockets it opens live there).
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on a namespace fd we hold open; affects only this thread.
            let rc = unsafe { libc::setns(std::os::unix::io::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).output();
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

/// Returns from the test unless real Linux guests run here (see [`linux_guests_run`]).
#[macro_export]
macro_rules! require_linux_guests {
    () => {
        if !common::linux_guests_run() {
            return;
        }
    };
}

/// The files the lab's Linux scenarios boot: hearth's kernel (vmlinux, bzImage beside
/// it), Debian's cloud kernel and the guests' initramfs (scripts/lab.d/guest-init).
pub struct LabFiles {
    pub hearth_vmlinux: PathBuf,
    pub debian_kernel: PathBuf,
    pub initramfs: PathBuf,
}

/// The lab's files, from the environment scripts/lab gives L1, else from `scripts/lab paths`
/// (which builds what is missing).
pub fn lab_files() -> LabFiles {
    let mut vars: std::collections::HashMap<String, String> = std::env::vars().collect();
    if !["HEARTH_KERNEL", "HEARTH_LAB_DEBIAN_KERNEL", "HEARTH_LAB_INITRAMFS"]
        .iter()
        .all(|k| vars.contains_key(*k))
    {
        let output = Command::new(repo_root().join("scripts/lab"))
            .arg("paths")
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/lab paths");
        assert!(output.status.success(), "scripts/lab paths failed");
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            if let Some((k, v)) = line.split_once('=') {
                vars.entry(k.to_string()).or_insert_with(|| v.to_string());
            }
        }
    }
    LabFiles {
        hearth_vmlinux: PathBuf::from(&vars["HEARTH_KERNEL"]),
        debian_kernel: PathBuf::from(&vars["HEARTH_LAB_DEBIAN_KERNEL"]),
        initramfs: PathBuf::from(&vars["HEARTH_LAB_INITRAMFS"]),
    }
}
