//! The gRPC services: thin adapters from `hearth_api::v1` messages to the [`Engine`](crate::Engine).

pub mod agent;
pub mod auth;
pub mod compute;
mod convert;

pub use agent::{AgentService, AgentToken};
pub use auth::{ApiAuth, BearerToken};
pub use compute::ComputeService;

use hearth_api::v1 as pb;
use prost::Message;
use tonic::{Code, Status};

use crate::error::{Ec2Error, StatusClass};

/// The gRPC status of an EC2 error: its class's code, a message starting with the EC2 code,
/// and an `Ec2Error` message in the details.
pub fn status_of(error: &Ec2Error) -> Status {
    let code = match error.status_class() {
        StatusClass::InvalidArgument => Code::InvalidArgument,
        StatusClass::NotFound => Code::NotFound,
        StatusClass::AlreadyExists => Code::AlreadyExists,
        StatusClass::FailedPrecondition => Code::FailedPrecondition,
        StatusClass::PermissionDenied => Code::PermissionDenied,
        StatusClass::ResourceExhausted => Code::ResourceExhausted,
        StatusClass::Unimplemented => Code::Unimplemented,
        StatusClass::Internal => Code::Internal,
    };
    let message = error.message();
    let details = pb::Ec2Error {
        code: error.code().to_string(),
        message: message.clone(),
    }
    .encode_to_vec();
    Status::with_details(code, format!("{}: {message}", error.code()), details.into())
}
