//! A plain-HTTP/1.1 transport for object_store's S3 client, on hyper.
//!
//! object_store's built-in transport (its `reqwest` feature) only compiles together with a reqwest TLS backend;
//! hearth talks to S3-compatible stores over plain HTTP on a trusted network instead, through this connector
//! (`AmazonS3Builder::with_http_connector(PlainHttpConnector)`). One TCP connection per request: requests are
//! few and large (8 MiB parts, whole blobs), so connection reuse buys little.
//!
//! Timeouts: 10 s to connect, 5 min for the response headers (which for an upload follow the whole request
//! body), and 60 s without data while streaming a response body. Failures carry the [`HttpErrorKind`] that
//! object_store's retry logic expects (connect, request, timeout, interrupted).

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::Uri;
use http_body::{Body, Frame, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody, HttpResponse, HttpResponseBody,
    HttpService,
};
use object_store::ClientOptions;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);
const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// An object_store [`HttpConnector`] for `http://` endpoints over hyper's HTTP/1.1 client; `https://` URLs fail
/// with a clear error.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainHttpConnector;

impl HttpConnector for PlainHttpConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(PlainHttp))
    }
}

#[derive(Debug)]
struct PlainHttp;

fn error(kind: HttpErrorKind, message: String) -> HttpError {
    HttpError::new(kind, std::io::Error::other(message))
}

#[async_trait::async_trait]
impl HttpService for PlainHttp {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (mut parts, body) = req.into_parts();
        let uri = parts.uri.clone();
        if uri.scheme_str() != Some("http") {
            return Err(error(
                HttpErrorKind::Unknown,
                format!("{uri}: only http:// endpoints are supported (hearth's S3 client has no TLS)"),
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| error(HttpErrorKind::Unknown, format!("{uri}: no host")))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(80);
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|e| error(HttpErrorKind::Unknown, format!("{uri}: bad host: {e}")))?;
        parts.headers.insert(HOST, host_header);
        // A server is sent the origin form: path and query only.
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = Uri::try_from(path).map_err(|e| error(HttpErrorKind::Unknown, format!("{uri}: {e}")))?;

        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((host.as_str(), port))).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(HttpError::new(HttpErrorKind::Connect, e)),
                Err(_) => {
                    return Err(error(
                        HttpErrorKind::Connect,
                        format!("connecting to {authority} timed out"),
                    ))
                }
            };
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| HttpError::new(HttpErrorKind::Connect, e))?;
        // Drives the connection; it ends once the response is read and `sender` is dropped.
        tokio::spawn(connection);
        let request = http::Request::from_parts(parts, body);
        let response = match tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Err(hyper_error(e)),
            Err(_) => return Err(error(HttpErrorKind::Timeout, format!("no response from {authority}"))),
        };
        let (parts, incoming) = response.into_parts();
        let body = IdleTimeoutBody {
            state: Mutex::new(BodyState {
                incoming,
                idle: Box::pin(tokio::time::sleep(READ_IDLE_TIMEOUT)),
                _sender: sender,
            }),
        };
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}

/// Classifies a hyper error for object_store's retries.
fn hyper_error(e: hyper::Error) -> HttpError {
    let kind = if e.is_timeout() {
        HttpErrorKind::Timeout
    } else if e.is_closed() || e.is_incomplete_message() || e.is_canceled() {
        HttpErrorKind::Interrupted
    } else {
        HttpErrorKind::Request
    };
    HttpError::new(kind, e)
}

/// A response body that fails when no data arrives for [`READ_IDLE_TIMEOUT`].
///
/// object_store needs a `Sync` body; the state sits behind a mutex (only ever locked by the one poller).
struct IdleTimeoutBody {
    state: Mutex<BodyState>,
}

struct BodyState {
    incoming: hyper::body::Incoming,
    idle: Pin<Box<tokio::time::Sleep>>,
    /// Keeps the connection's request side open while the body streams.
    _sender: SendRequest<HttpRequestBody>,
}

impl Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        let state = &mut *state;
        match Pin::new(&mut state.incoming).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + READ_IDLE_TIMEOUT;
                state.idle.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(hyper_error)))
            }
            Poll::Pending => match state.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(error(
                    HttpErrorKind::Timeout,
                    format!("no response data for {} s", READ_IDLE_TIMEOUT.as_secs()),
                )))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state.lock().map(|s| s.incoming.is_end_stream()).unwrap_or(false)
    }

    fn size_hint(&self) -> SizeHint {
        self.state.lock().map(|s| s.incoming.size_hint()).unwrap_or_default()
    }
}
