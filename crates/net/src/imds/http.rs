//! The little HTTP/1.x IMDS needs: parsing a request head, encoding a response.

use super::{MAX_REQUEST_BODY, MAX_REQUEST_HEAD};

/// Most header lines a request may have.
const MAX_HEADERS: usize = 100;

/// Why a request cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The request line and headers exceed [`MAX_REQUEST_HEAD`] bytes or 100 lines.
    #[error("request head larger than {MAX_REQUEST_HEAD} bytes")]
    HeadTooLarge,
    /// The announced body exceeds [`MAX_REQUEST_BODY`] bytes.
    #[error("request body larger than {MAX_REQUEST_BODY} bytes")]
    BodyTooLarge,
    /// Not HTTP/1.0 or HTTP/1.1.
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    /// Anything else wrong with the request.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

impl HttpError {
    /// The status to answer with: `505` for the version, `400` otherwise.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::UnsupportedVersion => 505,
            _ => 400,
        }
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, as sent (methods are case-sensitive).
    pub method: String,
    /// The request target, as sent (origin form `/latest/…` or absolute form `http://host/…`).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// The header fields in order, names as sent, values without surrounding whitespace.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The target's path: without scheme and authority (absolute form), query or fragment.
    pub fn path(&self) -> &str {
        let mut path = self.target.as_str();
        if let Some(rest) = strip_prefix_ignore_case(path, "http://") {
            path = rest.find('/').map_or("/", |slash| &rest[slash..]);
        }
        match path.find(['?', '#']) {
            Some(end) => &path[..end],
            None => path,
        }
    }

    /// The body's length from `Content-Length` (0 without one). A `Transfer-Encoding`, a malformed or
    /// conflicting length is an error, as is a body larger than [`MAX_REQUEST_BODY`].
    pub fn content_length(&self) -> Result<usize, HttpError> {
        if self.header("Transfer-Encoding").is_some() {
            return Err(HttpError::Malformed("Transfer-Encoding is not supported"));
        }
        let mut length = None;
        for (_, value) in self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
        {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HttpError::Malformed("invalid Content-Length"));
            }
            let value: usize = value.parse().map_err(|_| HttpError::BodyTooLarge)?;
            if length.is_some_and(|l| l != value) {
                return Err(HttpError::Malformed("conflicting Content-Length"));
            }
            length = Some(value);
        }
        match length.unwrap_or(0) {
            n if n > MAX_REQUEST_BODY => Err(HttpError::BodyTooLarge),
            n => Ok(n),
        }
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is incomplete, else the request
/// and the length of the head (the body, if any, follows). Lines may end in CRLF or LF; empty lines
/// before the request line are skipped.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let head_len = loop {
        let Some(newline) = buf[start..].iter().position(|&b| b == b'\n') else {
            if buf.len() > MAX_REQUEST_HEAD {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok(None);
        };
        let end = start + newline;
        let line = buf[start..end].strip_suffix(b"\r").unwrap_or(&buf[start..end]);
        start = end + 1;
        if start > MAX_REQUEST_HEAD || lines.len() > MAX_HEADERS {
            return Err(HttpError::HeadTooLarge);
        }
        match (line.is_empty(), lines.is_empty()) {
            (true, true) => continue,
            (true, false) => break start,
            (false, _) => lines.push(line),
        }
    };

    let mut request_line = text(lines[0])?.split(' ');
    let (Some(method), Some(target), Some(version), None) = (
        request_line.next(),
        request_line.next(),
        request_line.next(),
        request_line.next(),
    ) else {
        return Err(HttpError::Malformed("bad request line"));
    };
    if method.is_empty() || !method.bytes().all(is_token_char) {
        return Err(HttpError::Malformed("bad method"));
    }
    if !(target.starts_with('/') || strip_prefix_ignore_case(target, "http://").is_some())
        || target.bytes().any(|b| b.is_ascii_control())
    {
        return Err(HttpError::Malformed("bad request target"));
    }
    let minor_version = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        v if v.starts_with("HTTP/") => return Err(HttpError::UnsupportedVersion),
        _ => return Err(HttpError::Malformed("bad HTTP version")),
    };

    let mut headers = Vec::with_capacity(lines.len() - 1);
    for line in &lines[1..] {
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(HttpError::Malformed("obsolete line folding"));
        }
        let line = text(line)?;
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::Malformed("header without a colon"));
        };
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err(HttpError::Malformed("bad header name"));
        }
        let value = value.trim_matches([' ', '\t']);
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(HttpError::Malformed("control character in a header"));
        }
        headers.push((name.to_string(), value.to_string()));
    }
    let request = Request {
        method: method.to_string(),
        target: target.to_string(),
        minor_version,
        headers,
    };
    Ok(Some((request, head_len)))
}

fn text(line: &[u8]) -> Result<&str, HttpError> {
    std::str::from_utf8(line).map_err(|_| HttpError::Malformed("not UTF-8"))
}

/// RFC 9110 `tchar`.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A response, before encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header fields other than `Content-Length`, `Connection` and `Server` (which encoding adds).
    pub headers: Vec<(String, String)>,
    /// The body (not sent for `HEAD`).
    pub body: Vec<u8>,
    /// The IP TTL the connection must send this response with, if not the default.
    pub ip_ttl: Option<u8>,
}

impl Response {
    /// A response with `body` of type `content_type`.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
            ip_ttl: None,
        }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, "text/plain", body)
    }

    /// An error response whose body is the reason phrase (`Not Found`).
    pub fn error(status: u16) -> Response {
        Response::text(status, reason(status))
    }

    /// Adds a header field.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The bytes to send: status line, headers (with `Content-Length` and `Connection: close`) and,
    /// unless `head_only` (a `HEAD` request), the body.
    pub fn encode(&self, head_only: bool) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\nServer: hearth-imds\r\n\r\n",
            self.body.len()
        ));
        let mut bytes = head.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// The reason phrase of the statuses IMDS uses.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<(Request, usize)>, HttpError> {
        parse_request(text.as_bytes())
    }

    fn parsed(text: &str) -> Request {
        parse(text).unwrap().unwrap().0
    }

    #[test]
    fn a_get_request_is_parsed_with_its_headers() {
        let text =
            "GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token:  abc \r\n\r\n";
        let (request, len) = parse(text).unwrap().unwrap();
        assert_eq!(len, text.len());
        assert_eq!(request.method, "GET");
        assert_eq!(request.path(), "/latest/meta-data/");
        assert_eq!(request.minor_version, 1);
        assert_eq!(request.header("x-AWS-ec2-metadata-token"), Some("abc"));
        assert_eq!(request.header("host"), Some("169.254.169.254"));
        assert_eq!(request.header("missing"), None);
    }

    #[test]
    fn http_1_0_bare_lf_and_leading_empty_lines_are_accepted() {
        let request = parsed("\r\n\nGET / HTTP/1.0\nUser-Agent: x\n\n");
        assert_eq!((request.method.as_str(), request.minor_version), ("GET", 0));
        assert_eq!(request.header("user-agent"), Some("x"));
    }

    #[test]
    fn the_head_length_excludes_the_body() {
        let text = "PUT /latest/api/token HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        let (request, len) = parse(text).unwrap().unwrap();
        assert_eq!(len, text.len() - 3);
        assert_eq!(request.content_length(), Ok(3));
    }

    #[test]
    fn an_incomplete_head_asks_for_more() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: x\r\n\r"), Ok(None));
    }

    #[test]
    fn a_head_over_the_limit_is_refused_complete_or_not() {
        let long = format!("GET / HTTP/1.1\r\nX-Pad: {}\r\n", "a".repeat(MAX_REQUEST_HEAD));
        assert_eq!(parse(&long), Err(HttpError::HeadTooLarge));
        assert_eq!(parse(&format!("{long}\r\n")), Err(HttpError::HeadTooLarge));
        assert_eq!(parse(&"a".repeat(MAX_REQUEST_HEAD + 1)), Err(HttpError::HeadTooLarge));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Err(HttpError::HeadTooLarge)
        );
        let just_fits = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_REQUEST_HEAD - 23));
        assert_eq!(just_fits.len(), MAX_REQUEST_HEAD);
        assert!(parse(&just_fits).unwrap().is_some());
    }

    #[test]
    fn malformed_requests_are_refused() {
        for text in [
            "GET /\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1 x\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
            "GET latest HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nNo colon\r\n\r\n",
            "GET / HTTP/1.1\r\nBad name: x\r\n\r\n",
            "GET / HTTP/1.1\r\n: x\r\n\r\n",
            "GET / HTTP/1.1\r\nA: x\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nA: x\x01y\r\n\r\n",
            "GET / FTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse(text), Err(HttpError::Malformed(_))),
                "{text:?}: {:?}",
                parse(text)
            );
        }
        assert_eq!(parse("GET / HTTP/2.0\r\n\r\n"), Err(HttpError::UnsupportedVersion));
        assert_eq!(HttpError::UnsupportedVersion.status(), 505);
        assert_eq!(HttpError::HeadTooLarge.status(), 400);
        assert!(matches!(
            parse_request(b"GET /\xff HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn the_path_drops_query_fragment_and_absolute_form() {
        assert_eq!(
            parsed("GET /latest/meta-data?x=1 HTTP/1.1\r\n\r\n").path(),
            "/latest/meta-data"
        );
        assert_eq!(parsed("GET /a#b HTTP/1.1\r\n\r\n").path(), "/a");
        assert_eq!(
            parsed("GET http://169.254.169.254/latest/ HTTP/1.1\r\n\r\n").path(),
            "/latest/"
        );
        assert_eq!(parsed("GET HTTP://169.254.169.254 HTTP/1.1\r\n\r\n").path(), "/");
    }

    #[test]
    fn content_length_is_checked() {
        let with = |headers: &str| parsed(&format!("PUT / HTTP/1.1\r\n{headers}\r\n")).content_length();
        assert_eq!(with(""), Ok(0));
        assert_eq!(with("Content-Length: 0\r\n"), Ok(0));
        assert_eq!(with("content-length: 5\r\nContent-Length: 5\r\n"), Ok(5));
        assert!(matches!(
            with("Content-Length: 5\r\nContent-Length: 6\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(with("Content-Length: -1\r\n"), Err(HttpError::Malformed(_))));
        assert!(matches!(with("Content-Length: \r\n"), Err(HttpError::Malformed(_))));
        assert!(matches!(
            with("Transfer-Encoding: chunked\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert_eq!(
            with(&format!("Content-Length: {}\r\n", MAX_REQUEST_BODY + 1)),
            Err(HttpError::BodyTooLarge)
        );
        assert_eq!(
            with("Content-Length: 99999999999999999999999\r\n"),
            Err(HttpError::BodyTooLarge)
        );
    }

    #[test]
    fn responses_are_encoded_with_length_and_close() {
        let response = Response::text(200, "i-123").with_header("X-Test", "1");
        let bytes = String::from_utf8(response.encode(false)).unwrap();
        assert_eq!(
            bytes,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Test: 1\r\nContent-Length: 5\r\nConnection: close\r\nServer: hearth-imds\r\n\r\ni-123"
        );
        let head = String::from_utf8(response.encode(true)).unwrap();
        assert!(head.ends_with("Content-Length: 5\r\nConnection: close\r\nServer: hearth-imds\r\n\r\n"));
        assert_eq!(Response::error(404).body, b"Not Found");
        assert_eq!(Response::error(401).header("content-type"), Some("text/plain"));
    }
}
