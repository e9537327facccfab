//! `scripts/bench api`: control-plane benchmarks through the whole stack (the real hearthd,
//! its agent, hearth-vmm and the probe guest on KVM), each next to a baseline measured in
//! the same run. Prints a table; never asserts on timings.
//!
//! 1. RunInstances → `running` (DescribeInstances polled every 1 ms), one at a time, vs
//!    hearth-vmm started directly → its `vm-started` event.
//! 2. 100 instances from one RunInstances → all `running`, vs 100 hearth-vmm started at once.
//! 3. DescribeInstances over 10,000 stored instances on a hearthd without an agent (this
//!    program registers a host through AgentControl.Sync and never starts anything), vs the
//!    engine alone (`cargo run --release -p hearthd --example describe_bench`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hearth_api::v1::agent_control_client::AgentControlClient;
use hearth_api::v1::compute_client::ComputeClient;
use hearth_api::v1::*;
use hearth_e2e::bench::{self, Table};
use hearth_e2e::{bin_dir, binary, kvm_available, probe_kernel, AgentMode, Cloud};
use tonic::transport::{Channel, Endpoint};

type Error = Box<dyn std::error::Error>;
type Result<T, E = Error> = std::result::Result<T, E>;

/// Sequential launches measured (after `WARMUP` unmeasured ones).
const RUNS: usize = 50;
const WARMUP: usize = 2;
/// Instances launched by one RunInstances.
const CONCURRENT: usize = 100;
/// Stored instances for DescribeInstances.
const STORED: usize = 10_000;
/// DescribeInstances calls timed.
const DESCRIBES: usize = 20;
/// Probe guest program: spin until the power button.
const PROBE_OPS: &str = "wait";
/// Shapes of t3.micro and t3.nano (crates/hearthd/src/instance_types.rs).
const MICRO: (u32, u64) = (2, 1024);
const NANO: (u32, u64) = (2, 512);
const TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------
// Cleanup. The release profile aborts on panic, so Drop does not run then: a panic hook
// kills every process whose command line names one of this run's temp directories
// (hearthd --data-dir, the agent's VMMs, the baseline VMMs) and removes those directories.

fn temp_root() -> PathBuf {
    let tmp = std::env::temp_dir();
    std::fs::canonicalize(&tmp).unwrap_or(tmp)
}

/// Prefixes of every temp directory this run makes (the harness's and ours).
fn our_prefixes() -> Vec<String> {
    let pid = std::process::id();
    let root = temp_root();
    [format!("hearth-e2e-{pid}-"), format!("hearth-bench-api-{pid}-")]
        .iter()
        .map(|name| root.join(name).to_string_lossy().into_owned())
        .collect()
}

/// Kills (by pid) the processes that belong to this run, then removes its temp directories.
fn sweep() {
    let prefixes = our_prefixes();
    bench::kill_processes_naming(&prefixes);
    bench::remove_dirs_named(&temp_root(), &prefixes);
}

static DIRS: AtomicU32 = AtomicU32::new(0);

/// A temp directory of this run, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let n = DIRS.fetch_add(1, Ordering::SeqCst);
        let path = temp_root().join(format!("hearth-bench-api-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var("HEARTH_E2E_KEEP").is_err() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Children killed (SIGKILL) and reaped on drop.
#[derive(Default)]
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Statistics and the table.

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(values: &[f64]) -> f64 {
    pct(values, 50.0)
}

/// Nearest-rank percentile (as scripts/bench.d/vmm.py computes it).
fn pct(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let index = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[index.min(v.len() - 1)]
}

// ---------------------------------------------------------------------------------------
// hearth-vmm started directly (the baselines).

/// hearth-vmm's arguments for the probe in the shape the agent gives an instance (vCPUs,
/// memory, root disk, rng, control socket), console off.
fn vmm_args(dir: &Path, root: &Path, shape: (u32, u64), n: usize) -> Vec<String> {
    vec![
        "--kernel".into(),
        probe_kernel().to_string_lossy().into_owned(),
        "--vcpus".into(),
        shape.0.to_string(),
        "--memory".into(),
        shape.1.to_string(),
        "--console".into(),
        "off".into(),
        "--cmdline".into(),
        format!("console=ttyS0 probe.ops={PROBE_OPS} root=/dev/vda"),
        "--disk".into(),
        format!("path={},ro", root.display()),
        "--control-socket".into(),
        dir.join(format!("vmm-{n}.sock")).to_string_lossy().into_owned(),
    ]
}

fn spawn_vmm(args: &[String]) -> Result<Child> {
    Ok(Command::new(binary("hearth-vmm"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?)
}

/// Reads the VMM's stderr until its `vm-started` event; returns when it was read.
fn wait_vm_started(stderr: impl std::io::Read) -> Result<Instant, String> {
    let mut seen = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if serde_json::from_str::<serde_json::Value>(&line).is_ok_and(|v| v["event"] == "vm-started") {
            return Ok(Instant::now());
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    Err(format!("hearth-vmm ended before vm-started:\n{seen}"))
}

/// One hearth-vmm: spawn → vm-started, then killed.
fn direct_vmm_start(dir: &Path, root: &Path, shape: (u32, u64)) -> Result<Duration> {
    let _ = std::fs::remove_file(dir.join("vmm-0.sock"));
    let args = vmm_args(dir, root, shape, 0);
    let start = Instant::now();
    let mut children = Children::default();
    children.0.push(spawn_vmm(&args)?);
    let stderr = children.0[0].stderr.take().ok_or("no stderr")?;
    let started = wait_vm_started(stderr)?;
    Ok(started - start)
}

/// `count` hearth-vmm at once: spawn of the first → the last `vm-started`, then all killed.
fn direct_vmm_concurrent(dir: &Path, root: &Path, shape: (u32, u64), count: usize) -> Result<Duration> {
    for n in 0..count {
        let _ = std::fs::remove_file(dir.join(format!("vmm-{n}.sock")));
    }
    let args: Vec<Vec<String>> = (0..count).map(|n| vmm_args(dir, root, shape, n)).collect();
    let mut children = Children::default();
    let mut readers = Vec::new();
    let start = Instant::now();
    for args in &args {
        let mut child = spawn_vmm(args)?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        children.0.push(child);
        readers.push(std::thread::spawn(move || wait_vm_started(stderr)));
    }
    let mut last = start;
    for reader in readers {
        let started = reader.join().map_err(|_| "reader thread panicked")??;
        last = last.max(started);
    }
    Ok(last - start)
}

// ---------------------------------------------------------------------------------------
// The API side.

async fn connect(socket: &Path) -> Result<Channel> {
    let socket = socket.to_path_buf();
    Ok(Endpoint::try_from("http://hearthd.local")?
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await?)
}

fn compute(channel: Channel) -> ComputeClient<Channel> {
    // 10,000 instances are several MiB, over tonic's 4 MiB default.
    ComputeClient::new(channel).max_decoding_message_size(usize::MAX)
}

async fn states(client: &mut ComputeClient<Channel>, ids: &[String]) -> Result<Vec<String>> {
    let response = client
        .describe_instances(DescribeInstancesRequest {
            instance_ids: ids.to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(response
        .reservations
        .into_iter()
        .flat_map(|r| r.instances)
        .map(|i| i.state.map(|s| s.name).unwrap_or_default())
        .collect())
}

/// RunInstances of `count` → DescribeInstances (every `poll`) shows them all `running`.
async fn launch(
    client: &mut ComputeClient<Channel>,
    image: &str,
    instance_type: &str,
    count: usize,
    poll: Duration,
) -> Result<(Duration, Vec<String>)> {
    let start = Instant::now();
    let reservation = client
        .run_instances(RunInstancesRequest {
            image_id: image.to_string(),
            instance_type: instance_type.to_string(),
            min_count: count as i32,
            max_count: count as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    let ids: Vec<String> = reservation.instances.into_iter().map(|i| i.instance_id).collect();
    loop {
        let now = states(client, &ids).await?;
        let elapsed = start.elapsed();
        if now.len() == ids.len() && now.iter().all(|s| s == "running") {
            return Ok((elapsed, ids));
        }
        if let Some(bad) = now.iter().find(|s| !matches!(s.as_str(), "pending" | "running")) {
            return Err(format!("an instance went {bad} instead of running (ids {ids:?})").into());
        }
        if elapsed > TIMEOUT {
            return Err(format!("instances not running after {TIMEOUT:?}: {now:?}").into());
        }
        tokio::time::sleep(poll).await;
    }
}

/// TerminateInstances, then waits until all are `terminated`.
async fn terminate(client: &mut ComputeClient<Channel>, ids: &[String]) -> Result<()> {
    client
        .terminate_instances(InstanceIdsRequest {
            instance_ids: ids.to_vec(),
            ..Default::default()
        })
        .await?;
    let start = Instant::now();
    loop {
        let now = states(client, ids).await?;
        if now.iter().all(|s| s == "terminated") {
            return Ok(());
        }
        if start.elapsed() > TIMEOUT {
            return Err(format!("not terminated after {TIMEOUT:?}: {now:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// What hearthd's local agent offers: `(vCPUs, MiB)` (`HostSpec::detect`).
fn host_capacity() -> (u64, u64) {
    let vcpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    (vcpus, (total_kib / 1024).saturating_sub(1024).max(1))
}

/// Rows 1 and 2, against `hearthd --dev`.
fn bench_launches(table: &mut Table, scratch: &Path, root: &Path) -> Result<()> {
    // Baselines first, while nothing else runs.
    let mut direct = Vec::new();
    for run in 0..WARMUP + RUNS {
        let took = direct_vmm_start(scratch, root, MICRO)?;
        if run >= WARMUP {
            direct.push(ms(took));
        }
    }
    let direct_many = direct_vmm_concurrent(scratch, root, NANO, CONCURRENT)?;

    // hearthd must place CONCURRENT t3.nano on this one host: raise the overcommit ratios
    // above the defaults (16x vCPU, 1.5x memory) when the host is too small for them.
    let (vcpus, memory_mib) = host_capacity();
    let cpu_ratio = (16.0f64).max(((CONCURRENT as u64 * u64::from(NANO.0)) as f64 / vcpus as f64 * 1.1).ceil());
    let ram_ratio = (1.5f64).max(((CONCURRENT as u64 * NANO.1) as f64 / memory_mib as f64 * 1.1 * 10.0).ceil() / 10.0);
    let config = scratch.join("hearthd-config.json");
    std::fs::write(
        &config,
        serde_json::json!({"cpu_allocation_ratio": cpu_ratio, "ram_allocation_ratio": ram_ratio}).to_string(),
    )?;
    let config_text = config.to_string_lossy().into_owned();
    let cloud = Cloud::start_with_hearthd_args(AgentMode::InProcess, &["--config", &config_text]);
    let image = cloud.register_probe_ami("bench-probe", PROBE_OPS);
    let rt = runtime()?;
    let (api, api_many) = rt.block_on(async {
        let mut client = compute(connect(&cloud.socket()).await?);
        let mut api = Vec::new();
        for run in 0..WARMUP + RUNS {
            let (took, ids) = launch(&mut client, &image, "t3.micro", 1, Duration::from_millis(1)).await?;
            terminate(&mut client, &ids).await?;
            if run >= WARMUP {
                api.push(ms(took));
            }
        }
        let (many, ids) = launch(&mut client, &image, "t3.nano", CONCURRENT, Duration::from_millis(10)).await?;
        terminate(&mut client, &ids).await?;
        Ok::<_, Error>((api, many))
    })?;
    drop(cloud);

    table.row(
        "RunInstances -> running (t3.micro, one at a time), median",
        median(&api),
        "ms",
        Some(("hearth-vmm -> vm-started", median(&direct))),
        "<= 100 ms",
    );
    table.row(
        "RunInstances -> running (t3.micro, one at a time), p99",
        pct(&api, 99.0),
        "ms",
        Some(("hearth-vmm -> vm-started", pct(&direct, 99.0))),
        &format!("{RUNS} runs after {WARMUP} warm-up; DescribeInstances polled every 1 ms"),
    );
    table.row(
        &format!("{CONCURRENT} x t3.nano from one RunInstances -> all running"),
        api_many.as_secs_f64(),
        "s",
        Some((
            &format!("{CONCURRENT} x hearth-vmm -> all vm-started"),
            direct_many.as_secs_f64(),
        )),
        "<= 10 s",
    );
    table.note(
        "  hearthd --config (this host)",
        &format!(
            "cpu_allocation_ratio {cpu_ratio}, ram_allocation_ratio {ram_ratio} ({vcpus} vCPUs, {memory_mib} MiB offered)"
        ),
    );
    Ok(())
}

/// A hearthd without any agent, on its own data directory.
struct BareHearthd {
    // Field order is drop order: the process goes before its directory.
    _process: Children,
    dir: TempDir,
}

impl BareHearthd {
    fn start() -> Result<BareHearthd> {
        let dir = TempDir::new()?;
        let log = std::fs::File::create(dir.0.join("hearthd.log"))?;
        let child = Command::new(binary("hearthd"))
            .arg("--data-dir")
            .arg(&dir.0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let hearthd = BareHearthd {
            _process: Children(vec![child]),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !hearthd.socket().exists() || !hearthd.dir.0.join("agent-token").exists() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(hearthd.dir.0.join("hearthd.log")).unwrap_or_default();
                return Err(format!("hearthd did not start:\n{log}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(hearthd)
    }

    fn socket(&self) -> PathBuf {
        self.dir.0.join("hearthd.sock")
    }
}

/// Registers (or keeps alive) a host with room for everything, as an agent's Sync would.
async fn fake_host_sync(agents: &mut AgentControlClient<Channel>, token: &str) -> Result<()> {
    let mut request = tonic::Request::new(SyncRequest {
        host: Some(HostInfo {
            host_id: "h-bench".into(),
            availability_zone: "homelab-1a".into(),
            vcpus: 1_000_000,
            memory_mib: 1 << 40,
            agent_version: "bench".into(),
            ..Default::default()
        }),
        wait_ms: 0,
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {}", token.trim()).parse()?);
    agents.sync(request).await?;
    Ok(())
}

/// Median time of `DESCRIBES` calls of `request` (each must return `expect` instances).
async fn time_describes(
    client: &mut ComputeClient<Channel>,
    request: DescribeInstancesRequest,
    expect: usize,
) -> Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..DESCRIBES {
        let start = Instant::now();
        let response = client.describe_instances(request.clone()).await?.into_inner();
        samples.push(ms(start.elapsed()));
        let got: usize = response.reservations.iter().map(|r| r.instances.len()).sum();
        if got != expect {
            return Err(format!("DescribeInstances returned {got} instances, expected {expect}").into());
        }
    }
    Ok(median(&samples))
}

/// The engine-level numbers of `describe_bench` (built by scripts/bench next to this
/// binary), by row label, in ms.
fn engine_level() -> Option<Vec<(String, f64)>> {
    let example = bin_dir().join("examples/describe_bench");
    if !example.exists() {
        return None;
    }
    let output = Command::new(example).stderr(Stdio::inherit()).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    Some(
        text.lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
                let [label, value] = cells.as_slice() else { return None };
                let number = value.split_whitespace().next()?.parse::<f64>().ok()?;
                Some((label.to_string(), number))
            })
            .collect(),
    )
}

/// Row 3.
fn bench_describe(table: &mut Table, scratch: &Path) -> Result<()> {
    let hearthd = BareHearthd::start()?;
    let token = std::fs::read_to_string(hearthd.dir.0.join("agent-token"))?;
    let kernel = scratch.join("vmlinux");
    let root = scratch.join("tiny-root.img");
    std::fs::write(&kernel, b"k")?;
    std::fs::write(&root, b"r")?;
    let rt = runtime()?;
    let (launch_ms, all_ms, page_ms, filtered_ms) = rt.block_on(async {
        let channel = connect(&hearthd.socket()).await?;
        let mut client = compute(channel.clone());
        let mut agents = AgentControlClient::new(channel);
        fake_host_sync(&mut agents, &token).await?;
        let image = client
            .register_image(RegisterImageRequest {
                name: "bench".into(),
                kernel_path: kernel.to_string_lossy().into_owned(),
                root_image_path: root.to_string_lossy().into_owned(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .image_id;
        let start = Instant::now();
        for batch in 0..STORED / 100 {
            // The host must have synced within hearthd's host timeout (10 s) to be placed on.
            fake_host_sync(&mut agents, &token).await?;
            client
                .run_instances(RunInstancesRequest {
                    image_id: image.clone(),
                    min_count: 100,
                    max_count: 100,
                    tag_specifications: vec![TagSpecification {
                        resource_type: "instance".into(),
                        tags: vec![Tag {
                            key: "Name".into(),
                            value: format!("web-{}", batch % 10),
                        }],
                    }],
                    ..Default::default()
                })
                .await?;
        }
        let launch_ms = ms(start.elapsed()) / (STORED / 100) as f64;
        // One unmeasured call first (connection and allocator warm-up).
        let all = DescribeInstancesRequest::default();
        client.describe_instances(all.clone()).await?;
        let all_ms = time_describes(&mut client, all, STORED).await?;
        let page = DescribeInstancesRequest {
            max_results: 1000,
            ..Default::default()
        };
        let page_ms = time_describes(&mut client, page, 1000).await?;
        let filtered = DescribeInstancesRequest {
            filters: vec![
                Filter {
                    name: "tag:Name".into(),
                    values: vec!["web-3".into()],
                },
                Filter {
                    name: "instance-state-name".into(),
                    values: vec!["pending".into()],
                },
            ],
            ..Default::default()
        };
        let filtered_ms = time_describes(&mut client, filtered, STORED / 10).await?;
        Ok::<_, Error>((launch_ms, all_ms, page_ms, filtered_ms))
    })?;
    drop(rt);
    drop(hearthd);

    let engine = engine_level().unwrap_or_default();
    let engine_ms = |label: &str| engine.iter().find(|(l, _)| l.starts_with(label)).map(|(_, v)| *v);
    let baseline = |label: &str| engine_ms(label).map(|v| ("engine alone", v));
    table.row(
        &format!("DescribeInstances (all {STORED}) over gRPC, median of {DESCRIBES}"),
        all_ms,
        "ms",
        baseline("DescribeInstances, all"),
        "<= 50 ms",
    );
    table.row(
        &format!("DescribeInstances MaxResults=1000 (of {STORED}), median"),
        page_ms,
        "ms",
        baseline("DescribeInstances, first page of 1000"),
        "",
    );
    table.row(
        &format!(
            "DescribeInstances tag:Name + state filter ({} match), median",
            STORED / 10
        ),
        filtered_ms,
        "ms",
        baseline("DescribeInstances, tag + state filter"),
        "",
    );
    table.row(
        "RunInstances of 100 (no agent), per call",
        launch_ms,
        "ms",
        baseline("RunInstances, 100 per call"),
        "",
    );
    if let Some(v) = engine_ms("DescribeInstances, all") {
        table.row(
            &format!("  engine alone: DescribeInstances (all {STORED}), median"),
            v,
            "ms",
            None,
            "hearthd example describe_bench, no gRPC",
        );
    } else {
        table.note(
            "  engine alone",
            "target/release/examples/describe_bench not built: skipped",
        );
    }
    Ok(())
}

fn run() -> Result<Table> {
    let mut table = Table::new("benchmark");
    if !kvm_available() {
        return Err("/dev/kvm is unusable: the launch benchmarks need KVM".into());
    }
    for name in ["hearthd", "hearth-vmm", "hearth"] {
        binary(name);
    }
    let scratch = TempDir::new()?;
    let root = scratch.0.join("root.img");
    std::fs::write(&root, vec![0u8; 16 << 20])?;
    bench_launches(&mut table, &scratch.0, &root)?;
    bench_describe(&mut table, &scratch.0)?;
    Ok(table)
}

fn main() -> ExitCode {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        sweep();
    }));
    let result = run();
    sweep();
    match result {
        Ok(table) => {
            table.print();
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("bench_api: {error}");
            ExitCode::FAILURE
        }
    }
}
