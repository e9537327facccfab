//! `hearth-agent`: the per-host agent. It syncs the desired instances of its host from
//! hearthd (`AgentControl.Sync`) and supervises one `hearth-vmm` process per instance in
//! `run/<instance-id>/`, following the agent rules of `docs/control-plane.md`.
//!
//! ```no_run
//! # async fn demo(config: hearth_agent::AgentConfig) -> Result<(), hearth_agent::AgentError> {
//! hearth_agent::run_agent(config, "unix:/run/hearth/hearthd.sock", "secret", async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```
#![deny(missing_docs)]

mod agent;
mod backoff;
pub mod control;
mod error;
pub mod hostnet;
mod process;
mod state;
mod sync;
pub mod vmm_log;
pub mod volume;

pub use agent::{console_tail, phase, Agent, AgentConfig, HostSpec, CONFIG_FILE, CONSOLE_FILE, PID_FILE};
pub use error::{error_chain, AgentError, LaunchError, VolumeError, ENCRYPTION_KEY_REASON, VMM_ERROR_REASON};
pub use state::STATE_FILE;
pub use sync::{channel, channel_tls, run_agent, sync_loop, WAIT_MS};
