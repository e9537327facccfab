//! `scripts/bench linux`, its third row group: `run-instances` of the `minimal` AMI → SSH
//! answering, through the whole stack (hearthd, an agent in a host namespace, hearth-vmm,
//! hearth's guest kernel, busybox init, dropbear), split into stages. It runs inside the
//! nested lab's L1 (docs/lab.md), where everything is emulated: only each stage's share of
//! the total means anything, never the seconds themselves. Prints a table; asserts nothing
//! about timings.
//!
//! The stack is the one of `tests/tests/linux.rs` (`lab::minimal_ami_through_the_whole_stack`):
//! [`Lab::start_with_local_host`] with one host, the `minimal` AMI (`scripts/build-image
//! minimal`, built on the host before the lab, registered from hearthd's import directory),
//! a key pair, a security group allowing tcp/22 from a client namespace on the subnet's
//! bridge. One unmeasured warm-up launch
//! first: it makes the subnet's bridge, so the client can be put on it; it is then stopped
//! (not terminated), so that the bridge stays while the measured instances come and go.
//! Then `HEARTH_BENCH_LAUNCHES` (default 5) measured launches, each terminated (and its run
//! directory gone) before the next. Before each, the client forgets its neighbour (ARP)
//! entries: the next instance gets the address the last one freed, with another MAC, and a
//! stale entry would hold SSH up for many seconds. Per launch, from t=0 just before the CLI
//! call:
//!
//! | stage | ends when |
//! |---|---|
//! | API | `hearth run-instances` returns (the InstanceId is known) |
//! | agent | the agent spawned the VMM: `<host0>/run/<id>/vmm.log` exists (the agent creates it right before the spawn) |
//! | VMM start | hearth-vmm's `vm-started` event is in `vmm.log` (it carries `startup_us`, the VMM's own start-up) |
//! | kernel | the console shows `Run /sbin/init as init process` (else the first `hearth-minimal:` line) |
//! | init | TCP port 22 of the instance answers with an `SSH-` banner, from the client namespace |
//! | sshd | `ssh root@ip true` with the key pair succeeds from the client namespace |
//!
//! Files are polled every `HEARTH_BENCH_POLL_MS` (default 20 ms) by reading only what was
//! appended; port 22 is polled as often from a thread inside the client namespace (Rust
//! sockets, no processes: spawning is slow in the lab). L1 has one vCPU, shared with the
//! guest, so the poll interval is a trade-off between resolution and stealing from the guest.
//!
//! Argument: a results file (JSON lines). Every measured launch is appended to it as it
//! comes, and launches already there are not run again: when L1 hangs (docs/lab.md),
//! scripts/bench starts a new L1 and this program goes on with a fresh stack (and a fresh
//! warm-up) for the launches not yet measured.
//!
//! Cleanup: everything made here (hearthd, the agent and its VMMs, the namespaces, the temp
//! directories) goes when the program ends, on success or error. The release profile aborts
//! on panic (the harness panics on a failed CLI call or wait), so Drop does not run then: a
//! panic hook kills this run's processes by pid and removes its namespaces and temp
//! directories. Inside L1, which is thrown away afterwards, that is all that is needed.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use hearth_e2e::bench::{self, Table};
use hearth_e2e::images::{build_image, ssh_in, ssh_key, TempDir};
use hearth_e2e::netlab::{Client, Lab};

type Error = Box<dyn std::error::Error>;
type Result<T, E = Error> = std::result::Result<T, E>;

/// Every wait: the lab runs everything emulated.
const LONG: Duration = Duration::from_secs(600);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);
/// The client namespace on the default subnet (172.31.0.0/20), allowed tcp/22.
const CLIENT: &str = "172.31.15.200/20";
const CLIENT_CIDR: &str = "172.31.15.200/32";
/// As the whole-stack lab test launches it.
const INSTANCE_TYPE: &str = "t3.micro";
/// Port 22 probes: connect timeout (until the guest has its address, SYNs go unanswered)
/// and how long the banner may take once connected.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
const BANNER_TIMEOUT: Duration = Duration::from_secs(5);
/// The kernel's line when it hands over to user space (`/sbin/init`: the minimal AMI has
/// no initramfs), and the fallback.
const KERNEL_MARKER: (&str, &str) = ("Run ", " as init process");
const INIT_MARKER: &str = "hearth-minimal:";
/// The temp-directory tag of [`TempDir`] here.
const TAG: &str = "bench-linux-launch";

// ---------------------------------------------------------------------------------------
// Cleanup. The release profile aborts on panic, so Drop does not run then: a panic hook
// kills every process whose command line names one of this run's temp directories (hearthd
// --data-dir, the agent's --hearthd socket, the VMMs' --config, ssh's -i key), deletes this
// run's network namespaces and removes those directories.

/// Prefixes of every temp directory this run makes (the harness's, the images helper's).
fn our_prefixes() -> Vec<String> {
    let pid = std::process::id();
    let raw = std::env::temp_dir();
    let canonical = std::fs::canonicalize(&raw).unwrap_or_else(|_| raw.clone());
    let mut prefixes = Vec::new();
    for root in [raw, canonical] {
        for name in [format!("hearth-e2e-{pid}-"), format!("hearth-images-{TAG}-{pid}-")] {
            let prefix = root.join(name).to_string_lossy().into_owned();
            if !prefixes.contains(&prefix) {
                prefixes.push(prefix);
            }
        }
    }
    prefixes
}

/// Kills (by pid) the processes that belong to this run, deletes its namespaces, then
/// removes its temp directories.
fn sweep() {
    let prefixes = our_prefixes();
    let me = std::process::id();
    bench::kill_processes_naming(&prefixes);
    // netlab names this process's namespaces hl<pid % 100000>x<n>-…
    let netns_prefix = format!("hl{}x", me % 100_000);
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&netns_prefix) {
                let _ = Command::new("ip")
                    .args(["netns", "del", &name])
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
    let mut roots = vec![std::env::temp_dir()];
    if let Ok(canonical) = std::fs::canonicalize(&roots[0]) {
        roots.push(canonical);
    }
    for root in roots {
        bench::remove_dirs_named(&root, &prefixes);
    }
}

// ---------------------------------------------------------------------------------------
// Statistics and the table (as in bench_api and scripts/bench.d/linux.py).

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------
// One launch.

/// One measured launch: when each stage ended, in seconds from t=0 (just before the CLI
/// call), plus what the VMM and the guest said themselves.
#[derive(Debug)]
struct Launch {
    api: f64,
    agent: f64,
    vmm: f64,
    kernel: f64,
    init: f64,
    sshd: f64,
    /// `startup_us` of the `vm-started` event.
    startup_us: u64,
    /// The guest kernel's own printk time on the marker line, if it has one.
    kernel_clock: Option<f64>,
    /// The console line that ended the kernel stage.
    kernel_marker: String,
    /// CPU time (user + system) this program used from t=0 to the SSH login, polling (the
    /// CLI and ssh processes not included): what the measurement takes from L1's one vCPU.
    poll_cpu: f64,
}

/// The stages' names and what ends each, in order.
const STAGES: [(&str, &str); 6] = [
    ("API", "-> hearth run-instances returned (InstanceId)"),
    ("agent", "-> vmm.log appeared (the agent spawned the VMM)"),
    ("VMM start", "-> vm-started in vmm.log"),
    ("kernel", "-> console: Run /sbin/init as init process"),
    (
        "init",
        "-> port 22 answers SSH- (rcS: disks, metadata, DHCP, host keys)",
    ),
    ("sshd", "-> ssh root@ip true succeeded (key pair, one ssh process)"),
];

impl Launch {
    /// When each stage ended, in order.
    fn ends(&self) -> [f64; 6] {
        [self.api, self.agent, self.vmm, self.kernel, self.init, self.sshd]
    }

    /// How long each stage took, in order.
    fn stages(&self) -> [f64; 6] {
        let ends = self.ends();
        let mut out = [0.0; 6];
        for (i, end) in ends.iter().enumerate() {
            out[i] = end - if i == 0 { 0.0 } else { ends[i - 1] };
        }
        out
    }

    fn to_json(&self, run: usize) -> serde_json::Value {
        serde_json::json!({
            "run": run,
            "api": self.api,
            "agent": self.agent,
            "vmm": self.vmm,
            "kernel": self.kernel,
            "init": self.init,
            "sshd": self.sshd,
            "startup_us": self.startup_us,
            "kernel_clock": self.kernel_clock,
            "kernel_marker": self.kernel_marker,
            "poll_cpu": self.poll_cpu,
        })
    }

    fn from_json(value: &serde_json::Value) -> Option<(usize, Launch)> {
        let f = |key: &str| value[key].as_f64();
        Some((
            usize::try_from(value["run"].as_u64()?).ok()?,
            Launch {
                api: f("api")?,
                agent: f("agent")?,
                vmm: f("vmm")?,
                kernel: f("kernel")?,
                init: f("init")?,
                sshd: f("sshd")?,
                startup_us: value["startup_us"].as_u64()?,
                kernel_clock: f("kernel_clock"),
                kernel_marker: value["kernel_marker"].as_str().unwrap_or_default().to_string(),
                poll_cpu: f("poll_cpu").unwrap_or(0.0),
            },
        ))
    }
}

/// A file read as it grows: each call returns the whole lines appended since the last.
struct Tail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl Tail {
    fn new(path: PathBuf) -> Tail {
        Tail {
            path,
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// New complete lines (`None` while the file does not exist).
    fn lines(&mut self) -> Option<Vec<String>> {
        let mut file = File::open(&self.path).ok()?;
        let mut fresh = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_ok() {
            let _ = file.read_to_end(&mut fresh);
        }
        self.offset += fresh.len() as u64;
        self.partial.extend_from_slice(&fresh);
        let Some(last) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Some(Vec::new());
        };
        let whole: Vec<u8> = self.partial.drain(..=last).collect();
        Some(
            String::from_utf8_lossy(&whole)
                .lines()
                .map(|l| l.trim_end_matches('\r').to_string())
                .collect(),
        )
    }
}

/// The printk time of a console line (`[    1.234567] …`).
fn printk_time(line: &str) -> Option<f64> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (time, _) = rest.split_once(']')?;
    time.trim().parse().ok()
}

fn s(value: &serde_json::Value) -> Result<String> {
    Ok(value
        .as_str()
        .ok_or_else(|| format!("not a string: {value}"))?
        .to_string())
}

/// What a run needs: the stack, the client on the subnet, the AMI, the group, the key.
struct Stack {
    lab: Lab,
    client: usize,
    ami: String,
    group: String,
    key: PathBuf,
    poll: Duration,
    /// The key's directory (removed on drop).
    _dir: TempDir,
}

impl Stack {
    fn client(&self) -> &Client {
        self.lab.get_client(self.client)
    }

    fn failure(&self, what: &str, id: &str) -> Error {
        let run = self.lab.hosts[0].dir.join("run").join(id);
        let read = |name: &str| std::fs::read_to_string(run.join(name)).unwrap_or_default();
        format!(
            "{id}: {what}\n--- vmm.log\n{}\n--- console.log\n{}\n{}",
            read("vmm.log"),
            read("console.log"),
            self.lab.logs()
        )
        .into()
    }

    fn run_instances(&self) -> Result<(String, Option<Ipv4Addr>)> {
        let reservation = self.lab.cloud.cli_json(&[
            "run-instances",
            "--image-id",
            &self.ami,
            "--instance-type",
            INSTANCE_TYPE,
            "--key-name",
            "bench",
            "--security-group-ids",
            &self.group,
        ]);
        let instance = &reservation["Instances"][0];
        let ip = instance["PrivateIpAddress"].as_str().and_then(|ip| ip.parse().ok());
        Ok((s(&instance["InstanceId"])?, ip))
    }

    /// `ssh root@ip true` until it succeeds.
    fn ssh_true(&self, id: &str, ip: Ipv4Addr, deadline: Instant) -> Result<()> {
        loop {
            let output = ssh_in(self.client().netns.name(), &self.key, &format!("root@{ip}"), "true");
            if output.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
                return Err(self.failure(&format!("ssh root@{ip} true kept failing: {stderr}"), id));
            }
            std::thread::sleep(self.poll);
        }
    }

    /// One measured launch; the instance is left running (see [`Stack::terminate`]).
    fn launch(&self) -> Result<(String, Launch)> {
        let run_dir = self.lab.hosts[0].dir.join("run");
        let poll = self.poll;
        // A fresh client each time: hearthd gives the next instance the address the last
        // one freed, with another MAC, and the client's neighbour entry for it would send
        // to the old MAC until it fails (DELAY 5 s, then probes; 8-30 s seen in the lab).
        self.flush_client_neighbours()?;
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        let deadline = t0 + LONG;
        let (id, ip) = self.run_instances()?;
        let api = t0.elapsed();

        // agent, VMM start, kernel: the run directory's files.
        let dir = run_dir.join(&id);
        let mut vmm_log = Tail::new(dir.join("vmm.log"));
        let mut console = Tail::new(dir.join("console.log"));
        let (mut agent, mut vmm, mut kernel) = (None, None, None);
        let mut startup_us = 0;
        let (mut kernel_clock, mut kernel_marker) = (None, String::new());
        while kernel.is_none() {
            if vmm.is_none() {
                if let Some(lines) = vmm_log.lines() {
                    agent.get_or_insert_with(|| t0.elapsed());
                    for line in lines {
                        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                            continue;
                        };
                        if event["event"] == "vm-started" {
                            vmm = Some(t0.elapsed());
                            startup_us = event["startup_us"].as_u64().unwrap_or(0);
                        } else if event["event"] == "vm-exit" {
                            return Err(self.failure("the VMM ended before the guest's init", &id));
                        }
                    }
                }
            }
            if vmm.is_some() {
                for line in console.lines().unwrap_or_default() {
                    let marker = line
                        .find(KERNEL_MARKER.0)
                        .is_some_and(|at| line[at..].contains(KERNEL_MARKER.1));
                    if marker || line.contains(INIT_MARKER) {
                        kernel = Some(t0.elapsed());
                        kernel_clock = printk_time(&line);
                        kernel_marker = line.trim().to_string();
                        break;
                    }
                }
            }
            if kernel.is_some() {
                break;
            }
            if Instant::now() > deadline {
                return Err(self.failure("no kernel marker on the console", &id));
            }
            std::thread::sleep(poll);
        }
        let (Some(agent), Some(vmm), Some(kernel)) = (agent, vmm, kernel) else {
            return Err(self.failure("stages out of order", &id));
        };

        // init: port 22 answers with an SSH banner, from the client's namespace.
        let ip = match ip {
            Some(ip) => ip,
            None => self.lab.cloud.instance(&id).private_ip_address.parse()?,
        };
        let banner = self
            .client()
            .netns
            .run(move || wait_banner(SocketAddrV4::new(ip, 22), t0, deadline, poll))?;
        let Some(init) = banner else {
            return Err(self.failure(&format!("no SSH banner from {ip}:22"), &id));
        };

        // sshd: a login with the key pair runs a command.
        self.ssh_true(&id, ip, deadline)?;
        let sshd = t0.elapsed();
        let poll_cpu = cpu_seconds() - cpu0;

        Ok((
            id,
            Launch {
                api: api.as_secs_f64(),
                agent: agent.as_secs_f64(),
                vmm: vmm.as_secs_f64(),
                kernel: kernel.as_secs_f64(),
                init: init.as_secs_f64(),
                sshd: sshd.as_secs_f64(),
                startup_us,
                kernel_clock,
                kernel_marker,
                poll_cpu,
            },
        ))
    }

    /// terminate-instances, then waits for `terminated` and the run directory to go.
    fn terminate(&self, id: &str) -> Result<()> {
        self.lab.cloud.cli_json(&["terminate-instances", "--instance-ids", id]);
        self.lab.cloud.wait_state(id, "terminated", LONG);
        let dir = self.lab.hosts[0].dir.join("run").join(id);
        let deadline = Instant::now() + LONG;
        while dir.exists() {
            if Instant::now() > deadline {
                return Err(self.failure("run directory left after terminate", id));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Forgets every neighbour (ARP) entry of the client.
    fn flush_client_neighbours(&self) -> Result<()> {
        let output = Command::new("ip")
            .args(["-n", self.client().netns.name(), "neigh", "flush", "dev", "eth0"])
            .stdin(Stdio::null())
            .output()?;
        if !output.status.success() {
            return Err(format!("ip neigh flush: {}", String::from_utf8_lossy(&output.stderr)).into());
        }
        Ok(())
    }

    /// Fails unless the client's veth is still on a bridge (a bridge goes with the VPC's
    /// last instance on the host: the stopped warm-up instance keeps it).
    fn check_client_on_bridge(&self) -> Result<()> {
        let output = Command::new("ip")
            .args(["-n", self.lab.hosts[0].netns.name(), "-o", "link", "show", "dev", "lc0"])
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        if text.split_whitespace().skip_while(|w| *w != "master").nth(1).is_none() {
            return Err(format!("the client's veth lc0 is on no bridge any more: {text}").into());
        }
        Ok(())
    }
}

/// CPU time (user + system) of this process so far, every thread included.
fn cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage(2) writes into the struct we own and pass by pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Polls `addr` until it answers with `SSH-`; returns when, from `t0` (`None` at
/// `deadline`). Runs inside the client's namespace.
fn wait_banner(addr: SocketAddrV4, t0: Instant, deadline: Instant, poll: Duration) -> Option<Duration> {
    let addr = SocketAddr::V4(addr);
    loop {
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            let _ = stream.set_read_timeout(Some(BANNER_TIMEOUT));
            let mut banner = [0u8; 4];
            if stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-" {
                return Some(t0.elapsed());
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(poll);
    }
}

/// hearthd, the agent, the AMI, the key pair, the group, the warm-up launch and the client.
fn start_stack(poll: Duration) -> Result<Stack> {
    let start = Instant::now();
    let lab = Lab::start_with_local_host(1);
    let image = build_image("minimal", None);
    // hearthd's RegisterImage reads files only from its import directory.
    let manifest = hearth_e2e::import_manifest(&lab.cloud.import_dir(), &image.manifest, "minimal");
    let manifest = manifest.to_str().ok_or("manifest path is not UTF-8")?;
    let ami = s(&lab.cloud.cli_json(&["register-image", "--image-location", manifest])["ImageId"])?;
    let dir = TempDir::new(TAG);
    let (key, public) = ssh_key(&dir);
    lab.cloud.cli_json(&[
        "import-key-pair",
        "--key-name",
        "bench",
        "--public-key-material",
        &public,
    ]);
    let group = s(&lab
        .cloud
        .cli_json(&["create-security-group", "--group-name", "ssh", "--description", "bench"])["GroupId"])?;
    lab.cloud.cli_json(&[
        "authorize-security-group-ingress",
        "--group-id",
        &group,
        "--protocol",
        "tcp",
        "--port",
        "22",
        "--cidr",
        CLIENT_CIDR,
    ]);

    // The warm-up launch: unmeasured; it makes the subnet's bridge, for the client.
    let mut stack = Stack {
        lab,
        client: 0,
        ami,
        group,
        key,
        poll,
        _dir: dir,
    };
    let (warm, ip) = stack.run_instances()?;
    stack.lab.cloud.wait_state(&warm, "running", LONG);
    let bridge = stack.lab.bridge_of_instance(&warm);
    stack.client = stack.lab.client(0, &bridge, CLIENT, GATEWAY);
    let ip = match ip {
        Some(ip) => ip,
        None => stack.lab.cloud.instance(&warm).private_ip_address.parse()?,
    };
    stack.ssh_true(&warm, ip, Instant::now() + LONG)?;
    // Stopped, not terminated: a stopped instance stays a port of the VPC on its host, so
    // the bridge (and the client on it) stays while the measured instances come and go.
    stack
        .lab
        .cloud
        .cli_json(&["stop-instances", "--force", "--instance-ids", &warm]);
    stack.lab.cloud.wait_state(&warm, "stopped", LONG);
    stack.check_client_on_bridge()?;
    eprintln!(
        "bench_linux_launch: stack up and warm-up launch done in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(stack)
}

/// Launches already in the results file, by run.
fn load(results: &Path) -> Result<Vec<(usize, Launch)>> {
    let text = match std::fs::read_to_string(results) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", results.display()).into()),
    };
    let mut done = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // A line cut short by a hung L1 is measured again.
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(launch) = Launch::from_json(&value) {
            done.push(launch);
        }
    }
    Ok(done)
}

fn append(results: &Path, run: usize, launch: &Launch) -> Result<()> {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(results)?;
    writeln!(file, "{}", launch.to_json(run))?;
    file.sync_all()?;
    Ok(())
}

fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => Ok(v.trim().parse().map_err(|_| format!("{name}={v:?}: not a number"))?),
        Err(_) => Ok(default),
    }
}

fn run(results: &Path) -> Result<Table> {
    let launches = usize::try_from(env_number("HEARTH_BENCH_LAUNCHES", 5)?)?.max(1);
    let poll = Duration::from_millis(env_number("HEARTH_BENCH_POLL_MS", 20)?.max(1));
    let done = load(results)?;
    let missing: Vec<usize> = (0..launches)
        .filter(|run| !done.iter().any(|(r, _)| r == run))
        .collect();
    if !done.is_empty() {
        eprintln!(
            "bench_linux_launch: {} of {launches} launches already in {}",
            launches - missing.len(),
            results.display()
        );
    }
    if !missing.is_empty() {
        if !hearth_e2e::linux_guests_run() {
            return Err("real Linux guests do not run here: scripts/bench linux runs this in the nested lab".into());
        }
        for name in ["hearthd", "hearth-agent", "hearth-vmm", "hearth"] {
            hearth_e2e::binary(name);
        }
        let stack = start_stack(poll)?;
        for run in missing {
            let (id, launch) = stack.launch()?;
            append(results, run, &launch)?;
            eprintln!(
                "bench_linux_launch: launch {} of {launches}: {:.1} s to SSH ({}; startup_us {}, polling CPU {:.2} s)",
                run + 1,
                launch.sshd,
                launch
                    .stages()
                    .iter()
                    .zip(STAGES)
                    .map(|(t, (name, _))| format!("{name} {t:.2} s"))
                    .collect::<Vec<_>>()
                    .join(", "),
                launch.startup_us,
                launch.poll_cpu
            );
            stack.terminate(&id)?;
            stack.check_client_on_bridge()?;
        }
        drop(stack);
    }

    // Every launch of this run and of the L1s before it, once each.
    let mut all: Vec<Launch> = Vec::new();
    let mut seen: Vec<usize> = Vec::new();
    for (run, launch) in load(results)? {
        if run < launches && !seen.contains(&run) {
            seen.push(run);
            all.push(launch);
        }
    }
    let n = all.len();
    let med = |f: &dyn Fn(&Launch) -> f64| median(&all.iter().map(f).collect::<Vec<_>>());
    let total = med(&|l| l.sshd);
    let mut table = Table::new("benchmark (in the nested lab)");
    table.row(
        &format!("run-instances -> SSH login, minimal AMI ({INSTANCE_TYPE}), median of {n}"),
        total,
        "s",
        None,
        &format!(
            "t=0 before the CLI call; after 1 warm-up; polled every {} ms; stages below: ratio = share of this",
            poll.as_millis()
        ),
    );
    let fallback = all.iter().find(|l| !l.kernel_marker.contains(KERNEL_MARKER.1));
    for (i, (name, what)) in STAGES.iter().enumerate() {
        let what = match fallback {
            Some(l) if i == 3 => format!("-> console: {:?} (no init line)", l.kernel_marker),
            _ => what.to_string(),
        };
        table.row(
            &format!("  {}. {name}, median", i + 1),
            med(&|l| l.stages()[i]),
            "s",
            Some(("total", total)),
            &what,
        );
    }
    let vmm_stage = med(&|l| l.stages()[2]);
    table.row(
        "  hearth-vmm's own start-up (vm-started startup_us), median",
        med(&|l| l.startup_us as f64 / 1000.0),
        "ms",
        Some(("VMM start stage", vmm_stage * 1000.0)),
        "the rest: exec, the agent's spawn, polling",
    );
    let clocks: Vec<f64> = all.iter().filter_map(|l| l.kernel_clock).collect();
    if !clocks.is_empty() {
        table.row(
            "  the guest's printk time on its init line, median",
            median(&clocks),
            "s",
            Some(("kernel stage", med(&|l| l.stages()[3]))),
            "the guest kernel's own clock",
        );
    }
    table.row(
        "  this program's CPU time while it polls, median",
        med(&|l| l.poll_cpu),
        "s",
        Some(("total", total)),
        "taken from L1's one vCPU (the CLI and ssh not included)",
    );
    Ok(table)
}

fn main() -> ExitCode {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        sweep();
    }));
    let Some(results) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: bench_linux_launch RESULTS.jsonl (scripts/bench linux runs it in the nested lab)");
        return ExitCode::from(2);
    };
    let result = run(&results);
    sweep();
    match result {
        Ok(table) => {
            table.print();
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("bench_linux_launch: {error}");
            ExitCode::FAILURE
        }
    }
}
