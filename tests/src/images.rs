//! Helpers for the image-recipe tests: run `scripts/build-image`, read a manifest, write a
//! metadata disk, run `hearth-vmm` on an image, and scratch directories and network
//! namespaces that are removed even when a test fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{binary, in_ci, repo_root};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory under the system temp dir.
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique(&format!("hearth-images-{tag}")));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
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

/// What one `scripts/build-image` run printed.
#[derive(Debug)]
pub struct Built {
    /// The manifest (last stdout line).
    pub manifest: PathBuf,
    /// The log (stderr).
    pub log: String,
    /// Wall time.
    pub elapsed: Duration,
}

impl Built {
    /// The image directory (the manifest's).
    pub fn dir(&self) -> PathBuf {
        self.manifest.parent().unwrap().to_path_buf()
    }

    /// The manifest, parsed.
    pub fn json(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(&self.manifest).unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", self.manifest.display()))
    }

    /// Path of the file the manifest names under `key` ("kernel", "initrd", "root").
    pub fn file(&self, key: &str) -> PathBuf {
        let json = self.json();
        let name = json[key]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("manifest has no {key}.path"));
        self.dir().join(name)
    }

    /// True when this run found the image in the cache (it built nothing).
    pub fn was_cached(&self) -> bool {
        !self.log.contains("build-image: building")
    }
}

/// Runs `scripts/build-image NAME`, with `HEARTH_IMAGE_CACHE=cache` if given; panics on failure.
pub fn build_image(name: &str, cache: Option<&Path>) -> Built {
    let start = Instant::now();
    let mut command = Command::new(repo_root().join("scripts/build-image"));
    command.arg(name).stdin(Stdio::null());
    if let Some(cache) = cache {
        command.env("HEARTH_IMAGE_CACHE", cache);
    }
    let output = command.output().expect("run scripts/build-image");
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let log = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(
        output.status.success(),
        "scripts/build-image {name} failed ({}):\n{log}",
        output.status
    );
    let last = stdout.lines().last().unwrap_or_default().trim();
    assert!(
        last.ends_with("/image.json"),
        "build-image {name}: last line {last:?} is not a manifest:\n{stdout}"
    );
    Built {
        manifest: PathBuf::from(last),
        log,
        elapsed,
    }
}

/// The guest kernel from `scripts/build-kernel`, or `None` (and why, on stderr) when it cannot
/// be built outside CI.
pub fn guest_kernel() -> Option<PathBuf> {
    let output = Command::new(repo_root().join("scripts/build-kernel"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/build-kernel");
    let stdout = String::from_utf8_lossy(&output.stdout);
    match (output.status.success(), stdout.lines().last()) {
        (true, Some(path)) if !path.trim().is_empty() => Some(PathBuf::from(path.trim())),
        _ => {
            assert!(!in_ci(), "scripts/build-kernel failed under CI");
            eprintln!("SKIPPED: the guest kernel could not be built (scripts/build-kernel failed)");
            None
        }
    }
}

/// Runs a program and returns its output; panics (with stderr) if it fails.
pub fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/test installs what the tests need)"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `hearth-image ARGS...`, which must succeed; returns stdout.
pub fn hearth_image(args: &[&str]) -> String {
    let output = run(binary("hearth-image").to_str().unwrap(), args);
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// The metadata a test gives an instance.
pub struct Metadata<'a> {
    pub instance_id: &'a str,
    pub hostname: &'a str,
    pub public_keys: &'a [String],
    pub user_data: Option<&'a str>,
    pub network_config: Option<&'a str>,
}

/// Writes a NoCloud metadata disk with `hearth-image cidata` at `out`.
pub fn write_cidata(dir: &TempDir, metadata: &Metadata, out: &Path) {
    let mut args: Vec<String> = vec![
        "cidata".into(),
        "--instance-id".into(),
        metadata.instance_id.into(),
        "--hostname".into(),
        metadata.hostname.into(),
        "--out".into(),
        out.display().to_string(),
    ];
    for key in metadata.public_keys {
        args.push("--public-key".into());
        args.push(key.clone());
    }
    if let Some(text) = metadata.user_data {
        let path = dir.path(&unique("user-data"));
        std::fs::write(&path, text).unwrap();
        args.push("--user-data".into());
        args.push(path.display().to_string());
    }
    if let Some(text) = metadata.network_config {
        let path = dir.path(&unique("network-config"));
        std::fs::write(&path, text).unwrap();
        args.push("--network-config".into());
        args.push(path.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    hearth_image(&args);
}

/// A fresh ed25519 key pair: (private key path, public key line).
pub fn ssh_key(dir: &TempDir) -> (PathBuf, String) {
    let key = dir.path(&unique("id_ed25519"));
    run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "hearth-test",
            "-f",
            key.to_str().unwrap(),
        ],
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_string())
}

/// `ssh -i KEY TARGET COMMAND` from inside network namespace `netns`, one attempt, no
/// host-key checks or prompts; its output whatever the status.
pub fn ssh_in(netns: &str, key: &Path, target: &str, command: &str) -> Output {
    Command::new("ip")
        .args(["netns", "exec", netns, "ssh", "-i"])
        .arg(key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            target,
            command,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run ssh")
}

/// A sparse copy of `from` at `to` (a VM gets a copy, never the cached image).
pub fn copy_sparse(from: &Path, to: &Path) {
    run("cp", &["--sparse=always", from.to_str().unwrap(), to.to_str().unwrap()]);
}

/// A running `hearth-vmm` whose console is collected as it arrives; killed on drop.
pub struct Vm {
    child: Child,
    console: Vec<u8>,
    chunks: mpsc::Receiver<Vec<u8>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Vm {
    /// Starts `hearth-vmm ARGS` (inside network namespace `netns` if given).
    pub fn start(args: &[String], netns: Option<&str>) -> Vm {
        let vmm = binary("hearth-vmm");
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(vmm);
                c
            }
            None => Command::new(vmm),
        };
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hearth-vmm");
        let mut stdout = child.stdout.take().unwrap();
        let (tx, chunks) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Vm {
            child,
            console: Vec::new(),
            chunks,
            stderr: Some(stderr),
        }
    }

    /// The console so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.console).to_string()
    }

    /// Reads the console until it contains `needle`; panics (with the console) after `timeout`
    /// or if the VM ends first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if self.console().contains(needle) {
                return self.console();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no {needle:?} on the console within {timeout:?}; console:\n{}",
                    self.console()
                );
            }
            match self.chunks.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(chunk) => self.console.extend_from_slice(&chunk),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().unwrap();
                    let stderr = self.stderr.take().map(|h| h.join().unwrap()).unwrap_or_default();
                    panic!(
                        "the VM ended ({status}) before {needle:?}; console:\n{}\nstderr:\n{stderr}",
                        self.console()
                    );
                }
            }
        }
    }

    /// Waits up to `timeout` for the VMM to end; returns its exit status, the whole console
    /// and stderr.
    pub fn wait_exit(mut self, timeout: Duration) -> (i32, String, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the VM did not end within {timeout:?}; console:\n{}",
                self.console()
            );
            while let Ok(chunk) = self.chunks.try_recv() {
                self.console.extend_from_slice(&chunk);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(chunk) = self.chunks.recv_timeout(Duration::from_millis(500)) {
            self.console.extend_from_slice(&chunk);
        }
        let stderr = self.stderr.take().map(|h| h.join().unwrap()).unwrap_or_default();
        (status.code().unwrap_or(-1), self.console(), stderr)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one request line to a `hearth-vmm` control socket and returns the JSON answer.
pub fn control(socket: &Path, request: &str) -> serde_json::Value {
    // The socket's path exists a moment before it listens: a refused connection is retried.
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

/// A network namespace with a tap device at `host_cidr`; both are deleted on drop.
pub struct NetNs {
    /// Namespace name.
    pub name: String,
    /// Tap name inside it.
    pub tap: String,
}

impl NetNs {
    /// Creates namespace `hearth-img<pid>-<n>` with tap `tap0` at `host_cidr`, up.
    pub fn with_tap(host_cidr: &str) -> NetNs {
        let ns = NetNs {
            name: unique("hearth-img"),
            tap: "tap0".into(),
        };
        run("ip", &["netns", "add", &ns.name]);
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        run("ip", &["-n", &ns.name, "tuntap", "add", "dev", &ns.tap, "mode", "tap"]);
        run("ip", &["-n", &ns.name, "addr", "add", host_cidr, "dev", &ns.tap]);
        run("ip", &["-n", &ns.name, "link", "set", &ns.tap, "up"]);
        ns
    }

    /// Runs `program ARGS` inside the namespace; returns its output (whatever the status).
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {program}: {e}"))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).output();
    }
}
