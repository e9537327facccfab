//! The CLI's failures, their aws-style text and exit codes, and EC2 error codes read out of gRPC statuses.

use hearth_api::v1::Ec2Error;
use prost::Message;
use tonic::{Code, Status};

/// Exit code of an API error (aws: "the service returned an error").
pub const EXIT_API_ERROR: u8 = 254;
/// Exit code of a failure to reach the endpoint (aws: 255).
pub const EXIT_CONNECTION: u8 = 255;
/// Exit code of a command line that does not parse.
pub const EXIT_USAGE: u8 = 2;
/// Exit code of a `--wait` that timed out or saw an instance reach a state it cannot leave.
pub const EXIT_WAIT: u8 = 1;

/// The text aws prints for `DryRunOperation`.
pub const DRY_RUN_MESSAGE: &str = "Request would have succeeded, but DryRun flag is set.";

/// Everything that makes `hearth` exit non-zero.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag's value does not parse (or a file it names cannot be read).
    #[error("Error parsing parameter '{flag}': {message}")]
    Parameter { flag: String, message: String },
    /// A command line that is wrong as a whole.
    #[error("{0}")]
    Usage(String),
    /// The service answered with an error.
    #[error("An error occurred ({code}) when calling the {operation} operation: {message}")]
    Api {
        operation: &'static str,
        code: String,
        message: String,
    },
    /// The endpoint could not be reached.
    #[error("Could not connect to the endpoint URL: \"{endpoint}\": {cause}")]
    Connect { endpoint: String, cause: String },
    /// `--wait` gave up.
    #[error("{0}")]
    Wait(String),
    /// A local file could not be written.
    #[error("{0}")]
    Local(String),
}

impl CliError {
    /// A `Parameter` error for `flag`.
    pub fn parameter(flag: &str, message: impl Into<String>) -> Self {
        CliError::Parameter {
            flag: flag.to_owned(),
            message: message.into(),
        }
    }

    /// The process exit code for this error, as aws uses them.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Parameter { .. } | CliError::Usage(_) => EXIT_USAGE,
            CliError::Api { .. } => EXIT_API_ERROR,
            CliError::Connect { .. } => EXIT_CONNECTION,
            CliError::Wait(_) | CliError::Local(_) => EXIT_WAIT,
        }
    }

    /// Maps a failed call of `operation` on `endpoint` to the error to print.
    pub fn from_status(operation: &'static str, endpoint: &str, status: &Status) -> Self {
        match ec2_error(status) {
            Some((code, message)) => {
                let message = if code == "DryRunOperation" {
                    DRY_RUN_MESSAGE.to_owned()
                } else {
                    message
                };
                CliError::Api {
                    operation,
                    code,
                    message,
                }
            }
            None if status.code() == Code::Unavailable => CliError::Connect {
                endpoint: endpoint.to_owned(),
                cause: status_cause(status),
            },
            None => CliError::Api {
                operation,
                code: fallback_code(status.code()).to_owned(),
                message: status.message().to_owned(),
            },
        }
    }
}

/// The message of a status without an EC2 code, with its source chain (transport errors hide the cause there).
fn status_cause(status: &Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The EC2 error code and message of a status: from an `Ec2Error` in the details (raw, or packed in a
/// `google.rpc.Status`), else from the `Code: message` prefix of the status message.
pub fn ec2_error(status: &Status) -> Option<(String, String)> {
    let prefixed = split_code_prefix(status.message());
    if let Some(detail) = ec2_error_from_details(status.details()) {
        let message = if !detail.message.is_empty() {
            detail.message
        } else {
            match &prefixed {
                Some((code, message)) if *code == detail.code => message.clone(),
                _ => status.message().to_owned(),
            }
        };
        return Some((detail.code, message));
    }
    prefixed
}

/// `InvalidInstanceID.NotFound: The instance ID 'i-1' does not exist` → (code, message).
pub fn split_code_prefix(message: &str) -> Option<(String, String)> {
    let (code, rest) = message.split_once(": ")?;
    let looks_like_code = code.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '.');
    looks_like_code.then(|| (code.to_owned(), rest.to_owned()))
}

/// `google.rpc.Status`, for servers that pack the `Ec2Error` in an `Any` (as tonic-types does).
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<Any>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
struct Any {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

fn ec2_error_from_details(details: &[u8]) -> Option<Ec2Error> {
    if details.is_empty() {
        return None;
    }
    if let Ok(error) = Ec2Error::decode(details) {
        if !error.code.is_empty() {
            return Some(error);
        }
    }
    let status = RpcStatus::decode(details).ok()?;
    status
        .details
        .iter()
        .filter(|any| any.type_url.ends_with("hearth.v1.Ec2Error"))
        .find_map(|any| Ec2Error::decode(any.value.as_slice()).ok())
        .filter(|error| !error.code.is_empty())
}

/// An EC2-like code for a status that carries none.
fn fallback_code(code: Code) -> &'static str {
    match code {
        Code::Unauthenticated => "AuthFailure",
        Code::PermissionDenied => "UnauthorizedOperation",
        Code::InvalidArgument | Code::OutOfRange => "InvalidParameterValue",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::FailedPrecondition => "IncorrectState",
        Code::ResourceExhausted => "RequestLimitExceeded",
        Code::Unimplemented => "InvalidAction",
        Code::DeadlineExceeded => "RequestTimeout",
        Code::Unavailable => "ServiceUnavailable",
        _ => "InternalError",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_details(code: Code, message: &str, details: Vec<u8>) -> Status {
        Status::with_details(code, message, details.into())
    }

    #[test]
    fn code_from_the_message_prefix() {
        let status = Status::not_found("InvalidInstanceID.NotFound: The instance ID 'i-0abc' does not exist");
        let error = CliError::from_status("DescribeInstances", "unix:/s", &status);
        assert_eq!(
            error.to_string(),
            "An error occurred (InvalidInstanceID.NotFound) when calling the DescribeInstances operation: \
             The instance ID 'i-0abc' does not exist"
        );
        assert_eq!(error.exit_code(), 254);
    }

    #[test]
    fn code_from_raw_ec2_error_details() {
        let detail = Ec2Error {
            code: "IncorrectInstanceState".into(),
            message: "not stopped".into(),
        };
        let status = with_details(Code::FailedPrecondition, "something else", detail.encode_to_vec());
        let error = CliError::from_status("StartInstances", "unix:/s", &status);
        assert_eq!(
            error.to_string(),
            "An error occurred (IncorrectInstanceState) when calling the StartInstances operation: not stopped"
        );
    }

    #[test]
    fn details_without_a_message_take_it_from_the_status() {
        let detail = Ec2Error {
            code: "OperationNotPermitted".into(),
            message: String::new(),
        };
        let status = with_details(
            Code::FailedPrecondition,
            "OperationNotPermitted: protected",
            detail.encode_to_vec(),
        );
        assert_eq!(
            ec2_error(&status),
            Some(("OperationNotPermitted".into(), "protected".into()))
        );
    }

    #[test]
    fn code_from_ec2_error_packed_in_google_rpc_status() {
        let detail = Ec2Error {
            code: "InvalidKeyPair.Duplicate".into(),
            message: "exists".into(),
        };
        let packed = RpcStatus {
            code: 6,
            message: "exists".into(),
            details: vec![Any {
                type_url: "type.googleapis.com/hearth.v1.Ec2Error".into(),
                value: detail.encode_to_vec(),
            }],
        };
        let status = with_details(Code::AlreadyExists, "exists", packed.encode_to_vec());
        assert_eq!(
            ec2_error(&status),
            Some(("InvalidKeyPair.Duplicate".into(), "exists".into()))
        );
    }

    #[test]
    fn dry_run_prints_the_aws_text() {
        let status = Status::failed_precondition("DryRunOperation: dry run");
        let error = CliError::from_status("RunInstances", "unix:/s", &status);
        assert_eq!(
            error.to_string(),
            "An error occurred (DryRunOperation) when calling the RunInstances operation: \
             Request would have succeeded, but DryRun flag is set."
        );
        assert_eq!(error.exit_code(), 254);
    }

    #[test]
    fn status_without_a_code() {
        assert_eq!(split_code_prefix("no colon here"), None);
        assert_eq!(split_code_prefix("two words: x"), None);
        let error = CliError::from_status("DescribeRegions", "unix:/s", &Status::internal("boom"));
        assert_eq!(
            error.to_string(),
            "An error occurred (InternalError) when calling the DescribeRegions operation: boom"
        );
        let error = CliError::from_status("DescribeRegions", "unix:/run/h.sock", &Status::unavailable("refused"));
        assert_eq!(
            error.to_string(),
            "Could not connect to the endpoint URL: \"unix:/run/h.sock\": refused"
        );
        assert_eq!(error.exit_code(), 255);
    }

    #[test]
    fn parameter_errors_are_usage_errors() {
        let error = CliError::parameter("--tags", "Expected: '='");
        assert_eq!(error.to_string(), "Error parsing parameter '--tags': Expected: '='");
        assert_eq!(error.exit_code(), 2);
    }
}
