//! hearth's gRPC contract, generated from `proto/hearth/v1`: the public EC2-style
//! `Compute` service and the internal `AgentControl` service.
#![allow(missing_docs, clippy::all)]

/// `hearth.v1`.
pub mod v1 {
    tonic::include_proto!("hearth.v1");
}
