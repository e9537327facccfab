//! `hearthd`: hearth's control daemon (see `hearthd --help`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use hearth_agent::{error_chain, run_agent, AgentConfig, HostSpec};
use hearthd::server::{default_data_dir, TlsFiles};
use hearthd::{Hearthd, ServeConfig};

const USAGE: &str = "\
hearthd: hearth's control daemon (EC2 API over gRPC, agents sync with it)

usage: hearthd [options]
  --data-dir DIR            state, images, socket, token (default ~/.local/share/hearth)
  --listen unix:PATH        Unix socket, mode 0600 (default <data-dir>/hearthd.sock)
  --listen-tcp ADDR         also serve on TCP, TLS only (needs --tls-cert and --tls-key); Compute
                            calls there need the API token (or a client certificate, see below)
  --tls-cert FILE           PEM certificate chain for --listen-tcp
  --tls-key FILE            PEM private key for --listen-tcp
  --tls-client-ca FILE      PEM CA: a client certificate it signed replaces the API token on TCP
  --api-token-file FILE     bearer token for Compute over TCP (default <data-dir>/api-token;
                            created if missing)
  --agent-token-file FILE   agents' bearer token (default <data-dir>/agent-token; created if missing)
  --region NAME             region name (default homelab-1)
  --config FILE             JSON: {\"instance_types\": [...], \"availability_zones\": [...], \"stop_timeout_ms\": N,
                            \"cpu_allocation_ratio\": 16, \"ram_allocation_ratio\": 1.5}
  --agent-run-dir DIR       a local agent's run dir, for console output (default <data-dir>/agent/run)
  --agent-volume-dir DIR    a local agent's volume dir, for CreateImage (default <data-dir>/agent/volumes)
  --image-store LOCATION    image store: a directory or s3://bucket/prefix?endpoint=http://host:port
                            (default <data-dir>/images)
  --snapshot-store LOCATION snapshot store, likewise (default <data-dir>/snapshots)
  --image-import-dir DIR    the only directory RegisterImage reads files from (manifests, kernels,
                            root disks: below it, no symlinks, no ..; default <data-dir>/import)
  --public-ip-pool CIDR     Elastic IPs are allocated from this range (its first two and last
                            addresses excepted); without it AllocateAddress fails
  --dns IP                  a DNS server handed to instances by DHCP (repeatable)
  --dev                     also run a local agent in this process (one command for a
                            single host: run dir and volumes under <data-dir>/agent)
  --dev-network             with --dev: the local agent builds instance networks (bridges, taps,
                            DHCP, metadata service, security groups) in hearthd's network
                            namespace; without it, --dev instances get no network interface
  --vmm PATH                with --dev: the hearth-vmm binary (default: next to hearthd)
  -h, --help                this text
";

/// What the command line asks for.
struct Options {
    config: ServeConfig,
    /// `--dev`: run a local agent in-process, with this hearth-vmm.
    dev_vmm: Option<PathBuf>,
    /// `--dev-network`: the local agent builds instance networks.
    dev_network: bool,
}

fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut config = ServeConfig::new(default_data_dir());
    let mut dev = false;
    let mut dev_network = false;
    let mut vmm = None;
    let (mut cert, mut key, mut client_ca) = (None, None, None);
    let mut iter = args.iter();
    while let Some(flag) = iter.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let mut value = || iter.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--data-dir" => config.data_dir = PathBuf::from(value()?),
            "--listen" => {
                let text = value()?;
                let path = text
                    .strip_prefix("unix:")
                    .ok_or_else(|| format!("--listen takes unix:PATH, not {text}"))?;
                config.listen_unix = Some(PathBuf::from(path));
            }
            "--listen-tcp" => {
                let text = value()?;
                config.listen_tcp = Some(
                    text.parse::<SocketAddr>()
                        .map_err(|e| format!("--listen-tcp {text}: {e}"))?,
                );
            }
            "--tls-cert" => cert = Some(PathBuf::from(value()?)),
            "--tls-key" => key = Some(PathBuf::from(value()?)),
            "--tls-client-ca" => client_ca = Some(PathBuf::from(value()?)),
            "--api-token-file" => config.api_token_file = Some(PathBuf::from(value()?)),
            "--agent-token-file" => config.agent_token_file = Some(PathBuf::from(value()?)),
            "--region" => config.region = value()?,
            "--config" => config.config_file = Some(PathBuf::from(value()?)),
            "--agent-run-dir" => config.agent_run_dir = Some(PathBuf::from(value()?)),
            "--agent-volume-dir" => config.agent_volume_dir = Some(PathBuf::from(value()?)),
            "--image-store" => config.image_store = Some(value()?),
            "--snapshot-store" => config.snapshot_store = Some(value()?),
            "--image-import-dir" => config.image_import_dir = Some(PathBuf::from(value()?)),
            "--public-ip-pool" => {
                let text = value()?;
                config.public_ip_pool = Some(
                    text.parse()
                        .map_err(|_| format!("--public-ip-pool: {text:?} is not an IPv4 CIDR"))?,
                );
            }
            "--dns" => {
                let text = value()?;
                config.dns_servers.push(
                    text.parse()
                        .map_err(|_| format!("--dns: {text:?} is not an IPv4 address"))?,
                );
            }
            "--dev" => dev = true,
            "--dev-network" => dev_network = true,
            "--vmm" => vmm = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    match (cert, key) {
        (Some(cert), Some(key)) => config.tls = Some(TlsFiles { cert, key, client_ca }),
        (None, None) if client_ca.is_some() => return Err("--tls-client-ca needs --tls-cert and --tls-key".to_string()),
        (None, None) => {}
        _ => return Err("--tls-cert and --tls-key go together".to_string()),
    }
    if config.region.is_empty() {
        return Err("--region must not be empty".to_string());
    }
    let dev_vmm = match (dev, vmm) {
        (false, Some(_)) => return Err("--vmm goes with --dev".to_string()),
        (false, None) if dev_network => return Err("--dev-network goes with --dev".to_string()),
        (false, None) => None,
        (true, Some(vmm)) => Some(vmm),
        (true, None) => Some(
            std::env::current_exe()
                .map_err(|e| format!("cannot locate hearthd itself: {e}"))?
                .with_file_name("hearth-vmm"),
        ),
    };
    if let Some(vmm) = &dev_vmm {
        if !vmm.is_file() {
            return Err(format!(
                "hearth-vmm not found at {} (build it, or give --vmm)",
                vmm.display()
            ));
        }
    }
    Ok(Some(Options {
        config,
        dev_vmm,
        dev_network,
    }))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Options {
        config,
        dev_vmm,
        dev_network,
    } = match parse(&args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("hearthd: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let region = config.region.clone();
    let token_path = config.token_path();
    let data_dir = config.data_dir.clone();
    let daemon = match Hearthd::bind(config).await {
        Ok(daemon) => daemon,
        Err(error) => {
            eprintln!("hearthd: {}", error_chain(&error));
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "hearthd: region {region}, listening on unix:{}{}; agent token in {}{}",
        daemon.socket_path().display(),
        daemon
            .tcp_address()
            .map(|a| format!(" and tls://{a}"))
            .unwrap_or_default(),
        token_path.display(),
        daemon
            .api_token_path()
            .map(|path| format!("; API token (Compute over TCP) in {}", path.display()))
            .unwrap_or_default()
    );
    let (stop_agent, agent_stopped) = tokio::sync::watch::channel(false);
    let agent = dev_vmm.map(|vmm_binary| {
        let data_dir = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);
        let config = AgentConfig {
            run_dir: data_dir.join("agent/run"),
            volume_dir: data_dir.join("agent/volumes"),
            vmm_binary,
            host: HostSpec::detect(format!("{region}a")),
            default_stop_timeout: std::time::Duration::from_secs(10),
            network: hearth_agent::hostnet::NetworkConfig {
                enabled: dev_network,
                underlay_mtu: 1500,
                ..Default::default()
            },
        };
        eprintln!(
            "hearthd: --dev: local agent {} in {} ({} vCPUs, {} MiB)",
            config.host.host_id, config.host.availability_zone, config.host.vcpus, config.host.memory_mib
        );
        let endpoint = format!("unix:{}", daemon.socket_path().display());
        let token = daemon.agent_token().to_string();
        let mut stopped = agent_stopped.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            if let Err(error) = run_agent(config, &endpoint, &token, shutdown).await {
                eprintln!("hearthd: local agent: {}", error_chain(&error));
            }
        })
    });
    let result = daemon.run(shutdown_signal()).await;
    let _ = stop_agent.send(true);
    if let Some(agent) = agent {
        let _ = agent.await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hearthd: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}
