//! Running hearthd: open the store, bind the Unix socket (and TLS TCP), serve Compute and
//! AgentControl, purge old terminated instances, stop on the shutdown future.
//!
//! Who may call: on the Unix socket (mode 0600) the file permissions decide, so `Compute`
//! asks for nothing more. On TCP (TLS only) every `Compute` call carries the API token, or
//! comes over a connection with a client certificate signed by `--tls-client-ca`.
//! `AgentControl` asks for the agent token on both listeners.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hearth_api::v1::agent_control_server::AgentControlServer;
use hearth_api::v1::compute_server::ComputeServer;
use serde::Deserialize;
use thiserror::Error;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::engine::{Engine, EngineOptions};
use crate::hostfiles::{LocalConsole, LocalVolumes};
use crate::instance_types::InstanceType;
use crate::service::{AgentService, AgentToken, ApiAuth, ComputeService};
use crate::store::{SqliteStore, StoreError};

/// How often terminated instances past their hour are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// TLS files for the TCP listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificate(s): a client certificate they signed authenticates `Compute`
    /// calls without the API token (`None`: the token only).
    pub client_ca: Option<PathBuf>,
}

/// What `hearthd` is started with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// State, images, socket and token live here.
    pub data_dir: PathBuf,
    /// Unix socket (default `<data dir>/hearthd.sock`).
    pub listen_unix: Option<PathBuf>,
    /// Optional TCP address, served with TLS only.
    pub listen_tcp: Option<SocketAddr>,
    /// TLS certificate and key (required with `listen_tcp`).
    pub tls: Option<TlsFiles>,
    /// Agent token file (default `<data dir>/agent-token`), created with a random token if missing.
    pub agent_token_file: Option<PathBuf>,
    /// API token file for `Compute` over TCP (default `<data dir>/api-token`), created with a
    /// random token if missing when `listen_tcp` is set.
    pub api_token_file: Option<PathBuf>,
    /// Region name.
    pub region: String,
    /// JSON file extending the instance types and listing zones.
    pub config_file: Option<PathBuf>,
    /// A local agent's run directory, for console logs (default `<data dir>/agent/run`).
    pub agent_run_dir: Option<PathBuf>,
    /// A local agent's volume directory, for CreateImage (default `<data dir>/agent/volumes`).
    pub agent_volume_dir: Option<PathBuf>,
    /// The image store: a directory or `s3://bucket/prefix?endpoint=http://…` (default
    /// `<data dir>/images`).
    pub image_store: Option<String>,
    /// The snapshot store, likewise (default `<data dir>/snapshots`); never the image store's.
    pub snapshot_store: Option<String>,
    /// The only directory RegisterImage reads caller-named files from (default
    /// `<data dir>/import`, created mode 0700 if missing).
    pub image_import_dir: Option<PathBuf>,
    /// Elastic IPs come from this range.
    pub public_ip_pool: Option<hearth_net::Ipv4Cidr>,
    /// DNS servers handed to instances by DHCP.
    pub dns_servers: Vec<std::net::Ipv4Addr>,
}

impl ServeConfig {
    /// Defaults for `data_dir`.
    pub fn new(data_dir: PathBuf) -> ServeConfig {
        ServeConfig {
            data_dir,
            listen_unix: None,
            listen_tcp: None,
            tls: None,
            agent_token_file: None,
            api_token_file: None,
            region: "homelab-1".to_string(),
            config_file: None,
            agent_run_dir: None,
            agent_volume_dir: None,
            image_store: None,
            snapshot_store: None,
            image_import_dir: None,
            public_ip_pool: None,
            dns_servers: Vec::new(),
        }
    }

    /// The Unix socket path.
    pub fn socket_path(&self) -> PathBuf {
        self.listen_unix
            .clone()
            .unwrap_or_else(|| self.data_dir.join("hearthd.sock"))
    }

    /// The agent token file path.
    pub fn token_path(&self) -> PathBuf {
        self.agent_token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("agent-token"))
    }

    /// The API token file path.
    pub fn api_token_path(&self) -> PathBuf {
        self.api_token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("api-token"))
    }
}

/// `$XDG_DATA_HOME/hearth`, else `~/.local/share/hearth`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir).join("hearth");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".local/share/hearth")
}

/// The `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Instance types added to (or replacing) the built-in ones.
    #[serde(default)]
    pub instance_types: Vec<InstanceType>,
    /// Zones that exist even before a host registers.
    #[serde(default)]
    pub availability_zones: Vec<String>,
    /// Graceful stop timeout sent to agents.
    pub stop_timeout_ms: Option<i64>,
    /// vCPU overcommit (default 16).
    pub cpu_allocation_ratio: Option<f64>,
    /// Memory overcommit (default 1.5).
    pub ram_allocation_ratio: Option<f64>,
}

/// Why hearthd could not start or serve.
#[derive(Debug, Error)]
pub enum ServeError {
    /// A file or socket operation failed.
    #[error("{operation}")]
    Io {
        /// What was being done.
        operation: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid.
    #[error("read the config file {path}")]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The state store could not be opened.
    #[error("open the state store")]
    Store(#[from] StoreError),
    /// Settings that contradict each other.
    #[error("{0}")]
    Settings(String),
    /// Another hearthd answers on the socket.
    #[error("another hearthd is listening on {0}")]
    AlreadyRunning(PathBuf),
    /// TCP without TLS is refused.
    #[error("--listen-tcp needs --tls-cert and --tls-key: hearthd does not serve plaintext TCP")]
    TcpWithoutTls,
    /// The gRPC server failed.
    #[error("serve gRPC")]
    Transport(#[source] tonic::transport::Error),
    /// A token file (agent or API) is empty.
    #[error("the token file {0} is empty")]
    EmptyToken(PathBuf),
}

fn io(operation: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let operation = operation.into();
    move |source| ServeError::Io { operation, source }
}

/// Reads the agent token from `path`, creating the file (mode 0600) with a random token first
/// when it does not exist.
pub fn ensure_agent_token(path: &Path) -> Result<String, ServeError> {
    ensure_token(path, "agent token")
}

/// Reads the token (`what`: "agent token", "API token") from `path`, creating the file
/// (mode 0600) with a random 256-bit token first when it does not exist.
pub fn ensure_token(path: &Path, what: &str) -> Result<String, ServeError> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            let token = crate::ids::random_hex(32);
            file.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io(format!("write the {what} {}", path.display())))?;
            Ok(token)
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            let token = std::fs::read_to_string(path)
                .map_err(io(format!("read the {what} {}", path.display())))?
                .trim()
                .to_string();
            if token.is_empty() {
                return Err(ServeError::EmptyToken(path.to_path_buf()));
            }
            Ok(token)
        }
        Err(error) => Err(io(format!("create the {what} {}", path.display()))(error)),
    }
}

/// Builds the engine for a config: SQLite at `<data dir>/state.db`, images in
/// `<data dir>/images`, instance types and zones from the config file.
pub fn open_engine(config: &ServeConfig) -> Result<Engine, ServeError> {
    if !config.data_dir.exists() {
        std::fs::create_dir_all(&config.data_dir).map_err(io(format!("create {}", config.data_dir.display())))?;
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("chmod 0700 {}", config.data_dir.display())))?;
    }
    // Paths handed to agents must not depend on hearthd's working directory.
    let data_dir =
        std::fs::canonicalize(&config.data_dir).map_err(io(format!("resolve {}", config.data_dir.display())))?;
    let mut options = EngineOptions::new(&data_dir);
    options.region = config.region.clone();
    if let Some(dir) = &config.agent_run_dir {
        options.console = Arc::new(LocalConsole { run_dir: dir.clone() });
    }
    if config.agent_volume_dir.is_some() || config.agent_run_dir.is_some() {
        options.volume_files = Arc::new(LocalVolumes {
            dir: config
                .agent_volume_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("agent/volumes")),
            run_dir: config
                .agent_run_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("agent/run")),
            hosts: Vec::new(),
        });
    }
    if let Some(path) = &config.config_file {
        let text = std::fs::read_to_string(path).map_err(io(format!("read the config file {}", path.display())))?;
        let file: FileConfig = serde_json::from_str(&text).map_err(|source| ServeError::Config {
            path: path.clone(),
            source,
        })?;
        options.instance_types.extend(file.instance_types);
        options.availability_zones = file.availability_zones;
        if let Some(timeout) = file.stop_timeout_ms {
            options.stop_timeout_ms = timeout;
        }
        if let Some(ratio) = file.cpu_allocation_ratio {
            options.cpu_allocation_ratio = ratio;
        }
        if let Some(ratio) = file.ram_allocation_ratio {
            options.ram_allocation_ratio = ratio;
        }
    }
    if let Some(location) = &config.image_store {
        options.image_store_location = location.clone();
    }
    if let Some(location) = &config.snapshot_store {
        options.snapshot_store_location = location.clone();
    }
    options.public_ip_pool = config.public_ip_pool;
    options.dns_servers = config.dns_servers.clone();
    if options.image_store_location == options.snapshot_store_location {
        return Err(ServeError::Settings(
            "the image store and the snapshot store must be different locations".to_string(),
        ));
    }
    std::fs::create_dir_all(&options.image_cache_dir)
        .map_err(io(format!("create {}", options.image_cache_dir.display())))?;
    if let Some(dir) = &config.image_import_dir {
        options.image_import_dir = dir.clone();
    }
    if !options.image_import_dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&options.image_import_dir)
            .map_err(io(format!("create {}", options.image_import_dir.display())))?;
    }
    let store = SqliteStore::open(&data_dir.join("state.db"))?;
    Ok(Engine::open(Box::new(store), options)?)
}

/// A bound hearthd, ready to serve (bind first, then start an in-process agent, then `run`).
pub struct Hearthd {
    engine: Arc<Engine>,
    token: String,
    socket_path: PathBuf,
    unix: UnixListener,
    tcp: Option<Tcp>,
}

/// The TCP listener and what it asks of callers.
struct Tcp {
    listener: TcpListener,
    tls: ServerTlsConfig,
    api_token: String,
    api_token_path: PathBuf,
    client_certificates: bool,
}

impl Hearthd {
    /// Opens the store, prepares the agent token, binds the listeners.
    pub async fn bind(config: ServeConfig) -> Result<Hearthd, ServeError> {
        let tls = match (&config.listen_tcp, &config.tls) {
            (Some(_), None) => return Err(ServeError::TcpWithoutTls),
            (Some(_), Some(files)) => {
                let cert = std::fs::read(&files.cert).map_err(io(format!("read {}", files.cert.display())))?;
                let key = std::fs::read(&files.key).map_err(io(format!("read {}", files.key.display())))?;
                let tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
                Some(match &files.client_ca {
                    // Optional: a caller without a certificate can still send the token.
                    Some(path) => {
                        let ca = std::fs::read(path).map_err(io(format!("read {}", path.display())))?;
                        tls.client_ca_root(Certificate::from_pem(ca)).client_auth_optional(true)
                    }
                    None => tls,
                })
            }
            (None, _) => None,
        };
        let engine = Arc::new(open_engine(&config)?);
        let token = ensure_agent_token(&config.token_path())?;
        let socket_path = config.socket_path();
        if socket_path.exists() {
            if std::os::unix::net::UnixStream::connect(&socket_path).is_ok() {
                return Err(ServeError::AlreadyRunning(socket_path));
            }
            std::fs::remove_file(&socket_path).map_err(io(format!("remove the stale {}", socket_path.display())))?;
        }
        let unix = UnixListener::bind(&socket_path).map_err(io(format!("bind {}", socket_path.display())))?;
        // Only now that this hearthd owns the data directory: snapshots a killed hearthd
        // left pending are marked `error` and their orphan chunks collected.
        if let Err(e) = engine.recover_snapshots() {
            eprintln!("hearthd: cannot recover interrupted snapshots: {}", e.message());
        }
        std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))
            .map_err(io(format!("chmod 0600 {}", socket_path.display())))?;
        let tcp = match (config.listen_tcp, tls) {
            (Some(address), Some(tls)) => {
                let api_token_path = config.api_token_path();
                let api_token = ensure_token(&api_token_path, "API token")?;
                let client_certificates = config.tls.as_ref().is_some_and(|files| files.client_ca.is_some());
                let listener = TcpListener::bind(address)
                    .await
                    .map_err(io(format!("bind {address}")))?;
                Some(Tcp {
                    listener,
                    tls,
                    api_token,
                    api_token_path,
                    client_certificates,
                })
            }
            _ => None,
        };
        Ok(Hearthd {
            engine,
            token,
            socket_path,
            unix,
            tcp,
        })
    }

    /// The engine (for an in-process agent or tests).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The agent token.
    pub fn agent_token(&self) -> &str {
        &self.token
    }

    /// The Unix socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The bound TCP address, if any.
    pub fn tcp_address(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|tcp| tcp.listener.local_addr().ok())
    }

    /// The API token that `Compute` calls over TCP carry (`None` without TCP).
    pub fn api_token(&self) -> Option<&str> {
        self.tcp.as_ref().map(|tcp| tcp.api_token.as_str())
    }

    /// The API token file (`None` without TCP).
    pub fn api_token_path(&self) -> Option<&Path> {
        self.tcp.as_ref().map(|tcp| tcp.api_token_path.as_path())
    }

    /// Serves until `shutdown` completes; removes the socket file afterwards.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let token = AgentToken::new(&self.token);
        let compute_service = ComputeService::new(Arc::clone(&self.engine));
        let compute = ComputeServer::new(compute_service.clone());
        let agents = AgentControlServer::new(AgentService::new(Arc::clone(&self.engine), token));

        let purge_engine = Arc::clone(&self.engine);
        let purge_stop = stopped(stop_rx.clone());
        let purge = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(PURGE_EVERY);
            tokio::pin!(purge_stop);
            loop {
                tokio::select! {
                    _ = &mut purge_stop => break,
                    _ = ticks.tick() => {
                        let engine = Arc::clone(&purge_engine);
                        match tokio::task::spawn_blocking(move || engine.purge()).await {
                            Ok(Err(error)) => eprintln!("hearthd: purge failed: {}", error.message()),
                            Err(error) => eprintln!("hearthd: purge failed: {error}"),
                            Ok(Ok(_)) => {}
                        }
                    }
                }
            }
        });

        // The socket's file permissions are its authentication: Compute asks for no token.
        let unix = Server::builder()
            .add_service(compute)
            .add_service(agents.clone())
            .serve_with_incoming_shutdown(UnixListenerStream::new(self.unix), stopped(stop_rx.clone()));
        let result = match self.tcp {
            Some(tcp) => {
                // Anyone who reaches the port can call: Compute needs the API token or a
                // client certificate (AgentService checks the agent token itself).
                let auth = ApiAuth::new(&tcp.api_token, tcp.client_certificates);
                let tcp = Server::builder()
                    .tls_config(tcp.tls)
                    .map_err(ServeError::Transport)?
                    .add_service(ComputeServer::with_interceptor(compute_service, auth))
                    .add_service(agents)
                    .serve_with_incoming_shutdown(TcpListenerStream::new(tcp.listener), stopped(stop_rx.clone()));
                let (a, b) = tokio::join!(unix, tcp);
                a.and(b)
            }
            None => unix.await,
        };
        let _ = purge.await;
        let _ = std::fs::remove_file(&self.socket_path);
        result.map_err(ServeError::Transport)
    }
}

/// Runs hearthd with `config` until `shutdown` completes.
pub async fn serve(config: ServeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
    Hearthd::bind(config).await?.run(shutdown).await
}
