//! The sync loop: report the actual instances to hearthd and get the desired ones back
//! (`AgentControl.Sync`, a long poll), converge, and report again at once whenever a VMM
//! starts or ends. hearthd being away only delays reports: VMMs keep running and guest
//! reboots are still carried out from the last desired state.

use std::future::Future;
use std::time::{Duration, Instant};

use hearth_api::v1::agent_control_client::AgentControlClient;
use hearth_api::v1::{ActualInstance, SyncRequest};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::agent::{Agent, AgentConfig};
use crate::error::AgentError;

/// How long hearthd may hold a Sync when nothing changes.
pub const WAIT_MS: i32 = 1000;
/// Bound on one Sync beyond `WAIT_MS`.
const CALL_SLACK: Duration = Duration::from_secs(10);
/// Shortest time between two Syncs when neither side changed anything (guards against
/// a hearthd that answers at once instead of holding the call).
const MIN_INTERVAL: Duration = Duration::from_millis(200);
/// Retry delays after a failed Sync.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A channel to hearthd at `endpoint`: `unix:/path/to/hearthd.sock` (or `unix:///path`)
/// or `http://host:port`. Connects lazily and reconnects by itself.
pub fn channel(endpoint: &str) -> Result<Channel, AgentError> {
    channel_tls(endpoint, None)
}

/// Like `channel`, and for `https://host:port` (hearthd's TCP listener is TLS only) trusts
/// the PEM CA certificate `ca_pem`, or the system's roots when `None`.
pub fn channel_tls(endpoint: &str, ca_pem: Option<Vec<u8>>) -> Result<Channel, AgentError> {
    let endpoint_error = |source| AgentError::Endpoint {
        endpoint: endpoint.to_string(),
        source,
    };
    let mut parsed = Endpoint::from_shared(endpoint.to_string()).map_err(endpoint_error)?;
    if endpoint.starts_with("https://") {
        let tls = match ca_pem {
            Some(pem) => {
                tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem))
            }
            None => tonic::transport::ClientTlsConfig::new().with_native_roots(),
        };
        parsed = parsed.tls_config(tls).map_err(endpoint_error)?;
    }
    Ok(parsed
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Runs an agent for `config` against hearthd at `endpoint` (see `channel`), sending
/// `token` as `authorization: Bearer <token>`, until `shutdown` completes. The VMMs keep
/// running when it returns. Errors only when the agent cannot be set up.
pub async fn run_agent<F>(config: AgentConfig, endpoint: &str, token: &str, shutdown: F) -> Result<(), AgentError>
where
    F: Future<Output = ()>,
{
    let agent = Agent::new(config)?;
    let channel = channel(endpoint)?;
    sync_loop(agent, channel, token, shutdown).await
}

/// The loop of `run_agent`, over an agent and channel made by the caller.
pub async fn sync_loop<F>(mut agent: Agent, channel: Channel, token: &str, shutdown: F) -> Result<(), AgentError>
where
    F: Future<Output = ()>,
{
    let bearer: MetadataValue<_> = format!("Bearer {token}").parse().map_err(|_| AgentError::Token)?;
    let mut client = AgentControlClient::new(channel);
    let mut changes = agent.subscribe();
    let host = agent.host_info();
    let mut known_revision = 0u64;
    let mut backoff = BACKOFF_FIRST;
    let mut failing_since: Option<Instant> = None;
    let mut last_report: Option<Vec<ActualInstance>> = None;
    tokio::pin!(shutdown);
    loop {
        let actual = agent.actual();
        let mut request = tonic::Request::new(SyncRequest {
            host: Some(host.clone()),
            instances: actual.clone(),
            known_revision,
            wait_ms: WAIT_MS,
        });
        request.metadata_mut().insert("authorization", bearer.clone());
        request.set_timeout(Duration::from_millis(WAIT_MS as u64) + CALL_SLACK);
        let started = Instant::now();
        let answer = tokio::select! {
            () = &mut shutdown => return Ok(()),
            // A VMM started or ended while hearthd held the call: converge and report at
            // once (the held call is dropped).
            _ = changes.changed() => {
                agent.converge();
                continue;
            }
            answer = client.sync(request) => answer,
        };
        match answer {
            Ok(response) => {
                if let Some(since) = failing_since.take() {
                    eprintln!(
                        "hearth-agent: hearthd reachable again after {} s",
                        since.elapsed().as_secs()
                    );
                }
                backoff = BACKOFF_FIRST;
                let response = response.into_inner();
                let revision_moved = response.revision != known_revision;
                known_revision = response.revision;
                agent
                    .apply_network(response.network.as_ref(), &response.instances)
                    .await;
                agent.reconcile(&response.instances);
                let unchanged = last_report.as_ref() == Some(&actual) && agent.actual() == actual;
                last_report = Some(actual);
                // An answer that came back at once with nothing new: pace the next call.
                let pause = MIN_INTERVAL.saturating_sub(started.elapsed());
                if unchanged && !revision_moved && !pause.is_zero() {
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        _ = changes.changed() => agent.converge(),
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
            Err(status) => {
                if failing_since.is_none() {
                    failing_since = Some(Instant::now());
                    eprintln!(
                        "hearth-agent: Sync failed ({:?}: {}); retrying with backoff, VMs keep running",
                        status.code(),
                        status.message()
                    );
                }
                last_report = None;
                let retry_at = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                loop {
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        _ = changes.changed() => agent.converge(),
                        () = tokio::time::sleep_until(retry_at) => break,
                    }
                }
            }
        }
    }
}
