//! hearthd: hearth's control daemon. EC2 semantics (instances, images, key pairs, tags,
//! zones) over a durable store, the `Compute` gRPC service for users and the
//! `AgentControl` service that host agents sync with (see docs/control-plane.md).
#![deny(missing_docs)]

pub mod encoding;
pub mod engine;
pub mod error;
pub mod filter;
pub mod hostfiles;
pub mod ids;
pub mod instance_types;
pub mod keypairs;
pub mod kms;
pub mod model;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod store;
#[cfg(test)]
mod testing;
pub mod time;
pub mod volume_types;

pub use engine::{Engine, EngineOptions};
pub use error::{Ec2Error, StatusClass};
pub use server::{serve, Hearthd, ServeConfig, ServeError};
pub use store::{SqliteStore, Store};
