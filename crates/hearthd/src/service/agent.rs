//! `hearth.v1.AgentControl`: bearer-token check, then the engine's Sync (report + long poll).

use std::sync::Arc;
use std::time::Duration;

use hearth_api::v1 as pb;
use hearth_api::v1::agent_control_server::AgentControl;
use tonic::{Request, Response, Status};

use super::auth::{BearerToken, TokenRefusal};
use super::{convert, status_of};
use crate::engine::{Engine, HostReport};

/// The token agents must present as `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct AgentToken(BearerToken);

impl AgentToken {
    /// A token (surrounding whitespace ignored).
    pub fn new(token: &str) -> AgentToken {
        AgentToken(BearerToken::new(token))
    }

    /// Checks a request's `authorization` header (constant time in the token's length).
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.0.check(request.metadata()).map_err(|refusal| match refusal {
            TokenRefusal::Missing => Status::unauthenticated("agent token missing"),
            TokenRefusal::Wrong => Status::unauthenticated("agent token refused"),
        })
    }
}

/// The AgentControl service over an [`Engine`].
#[derive(Clone)]
pub struct AgentService {
    engine: Arc<Engine>,
    token: AgentToken,
}

impl AgentService {
    /// A service answering from `engine` to agents that present `token`.
    pub fn new(engine: Arc<Engine>, token: AgentToken) -> AgentService {
        AgentService { engine, token }
    }
}

#[tonic::async_trait]
impl AgentControl for AgentService {
    async fn sync(&self, request: Request<pb::SyncRequest>) -> Result<Response<pb::SyncResponse>, Status> {
        self.token.check(&request)?;
        let r = request.into_inner();
        let host = r
            .host
            .ok_or_else(|| Status::invalid_argument("MissingParameter: host"))?;
        let host = HostReport {
            host_id: host.host_id,
            availability_zone: host.availability_zone,
            vcpus: host.vcpus.max(0) as u32,
            memory_mib: host.memory_mib.max(0) as u64,
            agent_version: host.agent_version,
            underlay_ip: host.underlay_ip,
            has_uplink: host.has_uplink,
        };
        let actual = r.instances.into_iter().map(convert::actual).collect();
        let wait = Duration::from_millis(r.wait_ms.max(0) as u64);
        let answer = self
            .engine
            .sync(host, actual, r.known_revision, wait)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(pb::SyncResponse {
            revision: answer.revision,
            instances: answer.instances.into_iter().map(convert::desired).collect(),
            network: Some(convert::host_network(answer.network)),
        }))
    }
}
