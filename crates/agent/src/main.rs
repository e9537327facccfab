//! `hearth-agent`: the per-host agent binary; flags in `USAGE`.

use std::path::PathBuf;
use std::time::Duration;

use hearth_agent::{channel_tls, error_chain, sync_loop, Agent, AgentConfig, HostSpec};

const USAGE: &str = "\
usage: hearth-agent --hearthd ENDPOINT --token-file FILE --az ZONE [options]

Supervises one hearth-vmm per instance of this host, as hearthd desires.

  --hearthd ENDPOINT     unix:/path/to/hearthd.sock or https://host:port (hearthd's TLS listener)
  --ca-cert FILE         with https: the PEM CA that signed hearthd's certificate (default: system roots)
  --token-file FILE      file holding the agent token (sent as a bearer token)
  --az ZONE              availability zone of this host
  --host-id ID           stable host ID (default: h-<hostname>)
  --run-dir DIR          per-instance directories (default: /var/lib/hearth/agent/run)
  --volume-dir DIR       volume files (default: /var/lib/hearth/volumes)
  --vcpus N              vCPUs offered to instances (default: the host's CPUs)
  --memory-mib M         memory offered to instances (default: MemTotal minus 1 GiB)
  --vmm PATH             hearth-vmm binary (default: next to hearth-agent)
  --stop-timeout-ms MS   stop grace period when hearthd gives none (default: 10000)
  --network on|off       build instance networks: bridges, taps, DHCP, metadata service,
                         security groups (default: on; off: instances get no NIC)
  --underlay-ip IP       this host's address for VXLAN to other hosts (default: none)
  --underlay-dev DEV     the interface holding --underlay-ip
  --underlay-mtu N       MTU between hosts (default: 1500; guests get 50 less over VXLAN)
  --uplink DEV           interface to the public network, for Elastic IPs
  --uplink-gateway IP    router on the uplink

SIGINT/SIGTERM end the agent; the VMs keep running and the next agent re-adopts them.";

struct Flags {
    endpoint: String,
    ca_cert: Option<PathBuf>,
    token: String,
    config: AgentConfig,
}

fn parse(args: &[String]) -> Result<Flags, String> {
    let mut endpoint = None;
    let mut ca_cert = None;
    let mut token_file = None;
    let mut az = None;
    let mut host_id = None;
    let mut run_dir = PathBuf::from("/var/lib/hearth/agent/run");
    let mut volume_dir = PathBuf::from("/var/lib/hearth/volumes");
    let mut vcpus = None;
    let mut memory_mib = None;
    let mut vmm = None;
    let mut stop_timeout_ms = 10_000u64;
    let mut network = hearth_agent::hostnet::NetworkConfig {
        enabled: true,
        underlay_mtu: 1500,
        ..Default::default()
    };
    let ip = |flag: &str, text: String| {
        text.parse::<std::net::Ipv4Addr>()
            .map_err(|_| format!("{flag}: {text:?} is not an IPv4 address"))
    };
    let mut iter = args.iter();
    while let Some(flag) = iter.next() {
        let mut value = || iter.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        let number = |text: String| {
            text.parse::<i64>()
                .map_err(|_| format!("{flag}: {text:?} is not a number"))
        };
        match flag.as_str() {
            "--hearthd" => endpoint = Some(value()?),
            "--ca-cert" => ca_cert = Some(PathBuf::from(value()?)),
            "--token-file" => token_file = Some(PathBuf::from(value()?)),
            "--az" => az = Some(value()?),
            "--host-id" => host_id = Some(value()?),
            "--run-dir" => run_dir = PathBuf::from(value()?),
            "--volume-dir" => volume_dir = PathBuf::from(value()?),
            "--vcpus" => vcpus = Some(i32::try_from(number(value()?)?).map_err(|_| "--vcpus is too large")?),
            "--memory-mib" => memory_mib = Some(number(value()?)?),
            "--vmm" => vmm = Some(PathBuf::from(value()?)),
            "--stop-timeout-ms" => {
                stop_timeout_ms = u64::try_from(number(value()?)?).map_err(|_| "--stop-timeout-ms must be ≥ 0")?
            }
            "--network" => {
                network.enabled = match value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("--network: {other:?} is not on or off")),
                }
            }
            "--underlay-ip" => network.underlay_ip = Some(ip(flag, value()?)?),
            "--underlay-dev" => network.underlay_dev = Some(value()?),
            "--underlay-mtu" => {
                network.underlay_mtu = u16::try_from(number(value()?)?)
                    .ok()
                    .filter(|m| *m >= 576)
                    .ok_or("--underlay-mtu must be 576..=65535")?
            }
            "--uplink" => network.uplink = Some(value()?),
            "--uplink-gateway" => network.uplink_gateway = Some(ip(flag, value()?)?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let endpoint = endpoint.ok_or("--hearthd is required")?;
    let token_file = token_file.ok_or("--token-file is required")?;
    let token = std::fs::read_to_string(&token_file)
        .map_err(|e| format!("cannot read token file {}: {e}", token_file.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        return Err(format!("token file {} is empty", token_file.display()));
    }
    let vmm_binary = match vmm {
        Some(path) => path,
        None => std::env::current_exe()
            .map_err(|e| format!("cannot locate hearth-agent: {e}"))?
            .with_file_name("hearth-vmm"),
    };
    if !vmm_binary.is_file() {
        return Err(format!("hearth-vmm not found at {} (use --vmm)", vmm_binary.display()));
    }
    Ok(Flags {
        endpoint,
        ca_cert,
        token,
        config: AgentConfig {
            run_dir,
            volume_dir,
            vmm_binary,
            host: HostSpec {
                host_id: host_id.unwrap_or_else(HostSpec::default_host_id),
                availability_zone: az.ok_or("--az is required")?,
                vcpus: vcpus.unwrap_or_else(HostSpec::host_vcpus),
                memory_mib: memory_mib.unwrap_or_else(HostSpec::host_memory_mib),
            },
            default_stop_timeout: Duration::from_millis(stop_timeout_ms),
            network,
        },
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{USAGE}");
        return;
    }
    let flags = match parse(&args) {
        Ok(flags) => flags,
        Err(e) => {
            eprintln!("hearth-agent: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hearth-agent: cannot start the Tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    eprintln!(
        "hearth-agent: host {} ({} vCPUs, {} MiB) syncing with {}",
        flags.config.host.host_id, flags.config.host.vcpus, flags.config.host.memory_mib, flags.endpoint
    );
    let ca_pem = match &flags.ca_cert {
        Some(path) => match std::fs::read(path) {
            Ok(pem) => Some(pem),
            Err(e) => {
                eprintln!("hearth-agent: cannot read --ca-cert {}: {e}", path.display());
                std::process::exit(2);
            }
        },
        None => None,
    };
    let result = runtime.block_on(async {
        let agent = Agent::new(flags.config)?;
        let channel = channel_tls(&flags.endpoint, ca_pem)?;
        sync_loop(agent, channel, &flags.token, shutdown_signal()).await
    });
    if let Err(e) = result {
        eprintln!("hearth-agent: {}", error_chain(&e));
        std::process::exit(1);
    }
    eprintln!("hearth-agent: stopped; VMs keep running");
}
