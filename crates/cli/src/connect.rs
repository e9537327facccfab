//! The connection to hearthd: a Unix socket (`unix:/path`) or TLS (`https://host:port`), with an optional bearer token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth_api::v1::compute_client::ComputeClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Uri};

use crate::error::CliError;

/// Largest answer accepted (DescribeInstances of many thousands of instances exceeds
/// tonic's 4 MiB default).
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// How long to try to reach hearthd before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The endpoint used when neither `--endpoint` nor `$HEARTH_ENDPOINT` is set.
pub fn default_endpoint() -> String {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    format!("unix:{home}/.local/share/hearth/hearthd.sock")
}

/// Where hearthd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `unix:/path/hearthd.sock` (also `unix:///path`).
    Unix(PathBuf),
    /// `https://host:port`, or plain `http://` (no TLS: for tests on loopback).
    Url { url: String, tls: bool },
}

impl Target {
    /// Parses `--endpoint`.
    pub fn parse(endpoint: &str) -> Result<Self, CliError> {
        if let Some(path) = endpoint.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(CliError::parameter(
                    "--endpoint",
                    "unix: needs a socket path (unix:/path/hearthd.sock)",
                ));
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        let tls = if endpoint.starts_with("https://") {
            true
        } else if endpoint.starts_with("http://") {
            false
        } else {
            return Err(CliError::parameter(
                "--endpoint",
                format!("{endpoint:?} is neither unix:/path/to/hearthd.sock nor https://host:port"),
            ));
        };
        endpoint
            .parse::<Uri>()
            .map_err(|e| CliError::parameter("--endpoint", format!("{endpoint:?}: {e}")))?;
        Ok(Target::Url {
            url: endpoint.to_owned(),
            tls,
        })
    }
}

/// The chain of causes of an error, `outer: inner: innermost`, without repeats.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
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

/// One CLI run's link to hearthd: connects on first use, adds the bearer token to every request.
pub struct Session {
    endpoint: String,
    target: Target,
    ca_cert: Option<PathBuf>,
    token: Option<MetadataValue<Ascii>>,
    client: Option<ComputeClient<Channel>>,
}

impl Session {
    /// Checks the endpoint, CA file flag and token; connects later, on the first call.
    pub fn new(endpoint: String, ca_cert: Option<PathBuf>, token: Option<String>) -> Result<Self, CliError> {
        let target = Target::parse(&endpoint)?;
        if ca_cert.is_some() && !matches!(target, Target::Url { tls: true, .. }) {
            return Err(CliError::Usage("--ca-cert applies only to an https:// endpoint".into()));
        }
        let token = token
            .filter(|t| !t.is_empty())
            .map(|t| {
                MetadataValue::try_from(format!("Bearer {t}"))
                    .map_err(|_| CliError::parameter("--token", "the token must be printable ASCII"))
            })
            .transpose()?;
        Ok(Session {
            endpoint,
            target,
            ca_cert,
            token,
            client: None,
        })
    }

    /// The endpoint as given, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `message` as a request carrying the `authorization` header when a token is set.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            request.metadata_mut().insert("authorization", token.clone());
        }
        request
    }

    /// The Compute client, connecting first if needed.
    pub async fn client(&mut self) -> Result<&mut ComputeClient<Channel>, CliError> {
        if self.client.is_none() {
            let channel = self.connect().await?;
            self.client = Some(ComputeClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES));
        }
        Ok(self.client.as_mut().expect("client was just set"))
    }

    fn connect_error(&self, cause: String) -> CliError {
        CliError::Connect {
            endpoint: self.endpoint.clone(),
            cause,
        }
    }

    async fn connect(&self) -> Result<Channel, CliError> {
        match &self.target {
            Target::Unix(path) => {
                let path = path.clone();
                // The URI is not used to connect (the connector ignores it); it names the :authority.
                let endpoint = Endpoint::from_static("http://localhost").connect_timeout(CONNECT_TIMEOUT);
                endpoint
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
                    }))
                    .await
                    .map_err(|e| self.connect_error(causes(&e)))
            }
            Target::Url { url, tls } => {
                let mut endpoint = Endpoint::from_shared(url.clone())
                    .map_err(|e| CliError::parameter("--endpoint", causes(&e)))?
                    .connect_timeout(CONNECT_TIMEOUT);
                if *tls {
                    endpoint = endpoint
                        .tls_config(self.tls_config()?)
                        .map_err(|e| CliError::Usage(format!("TLS setup for {url}: {}", causes(&e))))?;
                }
                endpoint.connect().await.map_err(|e| self.connect_error(causes(&e)))
            }
        }
    }

    fn tls_config(&self) -> Result<ClientTlsConfig, CliError> {
        let config = ClientTlsConfig::new();
        match &self.ca_cert {
            Some(path) => Ok(config.ca_certificate(read_certificate(path)?)),
            None => Ok(config.with_native_roots()),
        }
    }
}

fn read_certificate(path: &Path) -> Result<Certificate, CliError> {
    let pem = std::fs::read(path)
        .map_err(|e| CliError::parameter("--ca-cert", format!("cannot read {}: {e}", path.display())))?;
    Ok(Certificate::from_pem(pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            Target::parse("unix:/run/hearthd.sock").unwrap(),
            Target::Unix("/run/hearthd.sock".into())
        );
        assert_eq!(
            Target::parse("unix:///run/hearthd.sock").unwrap(),
            Target::Unix("/run/hearthd.sock".into())
        );
        assert_eq!(
            Target::parse("https://hearth.lan:7443").unwrap(),
            Target::Url {
                url: "https://hearth.lan:7443".into(),
                tls: true
            }
        );
        assert!(Target::parse("unix:").is_err());
        assert!(Target::parse("hearth.lan:7443").is_err());
    }

    #[test]
    fn token_goes_into_the_authorization_header() {
        let session = Session::new("unix:/s".into(), None, Some("sekrit".into())).unwrap();
        let request = session.request(());
        assert_eq!(request.metadata().get("authorization").unwrap(), "Bearer sekrit");
        let session = Session::new("unix:/s".into(), None, None).unwrap();
        assert!(session.request(()).metadata().get("authorization").is_none());
    }

    #[test]
    fn ca_cert_needs_https() {
        let error = Session::new("unix:/s".into(), Some("/ca.pem".into()), None)
            .err()
            .unwrap();
        assert_eq!(error.exit_code(), 2);
    }

    #[tokio::test]
    async fn missing_socket_is_a_connection_error_naming_the_endpoint() {
        let path = std::env::temp_dir().join(format!("hearth-cli-absent-{}.sock", std::process::id()));
        let endpoint = format!("unix:{}", path.display());
        let mut session = Session::new(endpoint.clone(), None, None).unwrap();
        let error = session.client().await.err().unwrap();
        assert_eq!(error.exit_code(), 255);
        let text = error.to_string();
        assert!(
            text.starts_with(&format!("Could not connect to the endpoint URL: \"{endpoint}\"")),
            "{text}"
        );
        assert!(text.contains("No such file or directory"), "{text}");
    }
}
