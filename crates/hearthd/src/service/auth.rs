//! Who may call: bearer tokens compared in constant time, and the `Compute` check on the TCP
//! listener (the API token, or a client certificate that the TLS layer verified).

use std::sync::Arc;

use hearth_api::v1 as pb;
use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Code, Request, Status};

/// A secret token that callers present as `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct BearerToken(Arc<str>);

/// Why a request's bearer token is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No `authorization: Bearer …` header.
    Missing,
    /// A token that is not this one.
    Wrong,
}

impl BearerToken {
    /// A token (surrounding whitespace ignored).
    pub fn new(token: &str) -> BearerToken {
        BearerToken(Arc::from(token.trim()))
    }

    /// Checks the `authorization` header (constant time in the token's length). An empty
    /// token accepts nothing.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), TokenRefusal> {
        let presented = metadata
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or(TokenRefusal::Missing)?;
        if self.0.is_empty() || !constant_time_eq(presented.trim().as_bytes(), self.0.as_bytes()) {
            return Err(TokenRefusal::Wrong);
        }
        Ok(())
    }
}

/// Whether `a == b`, in time that depends on the lengths only, not on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// The `Unauthenticated` status of a refused `Compute` call: `AuthFailure: <message>`, with
/// an `Ec2Error{code: "AuthFailure"}` in the details like every other EC2 error.
pub fn auth_failure(message: &str) -> Status {
    let details = pb::Ec2Error {
        code: "AuthFailure".to_string(),
        message: message.to_string(),
    }
    .encode_to_vec();
    Status::with_details(Code::Unauthenticated, format!("AuthFailure: {message}"), details.into())
}

/// The `Compute` check on the TCP listener: the request carries the API token, or (when
/// hearthd was given a client CA) its connection presented a client certificate, which
/// the TLS handshake has already verified against that CA.
#[derive(Clone)]
pub struct ApiAuth {
    token: BearerToken,
    client_certificates: bool,
}

impl ApiAuth {
    /// Accepts `token`, and verified client certificates when `client_certificates` is set.
    pub fn new(token: &str, client_certificates: bool) -> ApiAuth {
        ApiAuth {
            token: BearerToken::new(token),
            client_certificates,
        }
    }

    /// Checks one request.
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.client_certificates && request.peer_certs().is_some_and(|certs| !certs.is_empty()) {
            return Ok(());
        }
        self.token.check(request.metadata()).map_err(|refusal| {
            auth_failure(match refusal {
                TokenRefusal::Missing => {
                    "no credentials: send authorization: Bearer <token> with the token from hearthd's api-token file"
                }
                TokenRefusal::Wrong => "the bearer token is not hearthd's API token",
            })
        })
    }
}

impl Interceptor for ApiAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(&request)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorization: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = authorization {
            request.metadata_mut().insert("authorization", value.parse().unwrap());
        }
        request
    }

    #[test]
    fn bearer_tokens() {
        let token = BearerToken::new(" sekrit\n");
        let check = |value| token.check(request(value).metadata());
        assert_eq!(check(None), Err(TokenRefusal::Missing));
        assert_eq!(check(Some("sekrit")), Err(TokenRefusal::Missing));
        assert_eq!(check(Some("Basic sekrit")), Err(TokenRefusal::Missing));
        assert_eq!(check(Some("Bearer sekriT")), Err(TokenRefusal::Wrong));
        assert_eq!(check(Some("Bearer sekrit2")), Err(TokenRefusal::Wrong));
        assert_eq!(check(Some("Bearer ")), Err(TokenRefusal::Wrong));
        assert_eq!(check(Some("Bearer sekrit")), Ok(()));
        let empty = BearerToken::new("  ");
        assert_eq!(
            empty.check(request(Some("Bearer ")).metadata()),
            Err(TokenRefusal::Wrong)
        );
    }

    #[test]
    fn api_auth_failures_are_ec2_errors() {
        let auth = ApiAuth::new("sekrit", true);
        for value in [None, Some("Bearer nope")] {
            let status = auth.check(&request(value)).unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated);
            assert!(status.message().starts_with("AuthFailure: "), "{}", status.message());
            let details = pb::Ec2Error::decode(status.details()).unwrap();
            assert_eq!(details.code, "AuthFailure");
            assert_eq!(format!("AuthFailure: {}", details.message), status.message());
        }
        // No TLS connection info, so no client certificate: the token decides.
        assert!(auth.check(&request(Some("Bearer sekrit"))).is_ok());
    }
}
