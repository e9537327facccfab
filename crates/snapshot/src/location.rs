//! Turning a store location string into an `object_store`.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::client::{HttpClient, HttpConnector};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;

use crate::error::{Error, Result};

/// An opened store: the object store, and its root directory when it is a local one.
pub(crate) struct Opened {
    pub store: Arc<dyn ObjectStore>,
    pub local_root: Option<PathBuf>,
    pub display: String,
}

/// The settings of an `s3://` location.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct S3Location {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

/// Opens a local directory as a store (creating it if needed), with fsync on every write.
pub(crate) fn open_local(dir: &std::path::Path) -> Result<Opened> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let root = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    let fs = LocalFileSystem::new_with_prefix(&root)
        .map_err(|e| Error::store(&format!("opening {}", root.display()), e))?
        .with_fsync(true);
    Ok(Opened {
        store: Arc::new(fs),
        display: format!("file://{}", root.display()),
        local_root: Some(root),
    })
}

/// An [`HttpConnector`] behind an `Arc` (the builder wants one by value).
#[derive(Debug, Clone)]
pub(crate) struct SharedConnector(pub Arc<dyn HttpConnector>);

impl HttpConnector for SharedConnector {
    fn connect(&self, options: &object_store::ClientOptions) -> object_store::Result<HttpClient> {
        self.0.connect(options)
    }
}

/// Opens `location`: a local path, `file:///path`, or `s3://bucket[/prefix]?endpoint=http://host:port&...`
/// (which needs `http`, the transport for object_store's S3 client).
pub(crate) fn open(location: &str, http: Option<SharedConnector>) -> Result<Opened> {
    if let Some(rest) = location.strip_prefix("s3://") {
        let loc = parse_s3(rest, |k| std::env::var(k).ok())?;
        let Some(http) = http else {
            return Err(Error::InvalidArgument(format!(
                "{location}: an s3:// store needs an HTTP transport: open it with SnapshotStore::open_with_http \
                 (hearthd passes hearth_image::transport::PlainHttpConnector)"
            )));
        };
        let s3 = AmazonS3Builder::new()
            .with_http_connector(http)
            .with_bucket_name(&loc.bucket)
            .with_endpoint(&loc.endpoint)
            .with_region(&loc.region)
            .with_access_key_id(&loc.access_key_id)
            .with_secret_access_key(&loc.secret_access_key)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false);
        let s3 = match &loc.session_token {
            Some(t) => s3.with_token(t),
            None => s3,
        };
        let s3 = s3
            .build()
            .map_err(|e| Error::store(&format!("configuring s3://{}", loc.bucket), e))?;
        let display = format!("s3://{}/{} at {}", loc.bucket, loc.prefix, loc.endpoint);
        let store: Arc<dyn ObjectStore> = if loc.prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, loc.prefix.as_str()))
        };
        return Ok(Opened {
            store,
            local_root: None,
            display,
        });
    }
    if let Some(path) = location.strip_prefix("file://") {
        return open_local(std::path::Path::new(path));
    }
    if let Some((scheme, _)) = location.split_once("://") {
        return Err(Error::InvalidArgument(format!(
            "unsupported store location scheme {scheme:?} in {location:?}: use a local path, file:///path or s3://bucket/prefix?endpoint=http://host:port"
        )));
    }
    if location.is_empty() {
        return Err(Error::InvalidArgument("empty store location".into()));
    }
    open_local(std::path::Path::new(location))
}

/// Parses what follows `s3://`. `env` looks up environment variables (injectable for tests).
pub(crate) fn parse_s3(rest: &str, env: impl Fn(&str) -> Option<String>) -> Result<S3Location> {
    let bad = |m: String| Error::InvalidArgument(format!("s3://{rest}: {m}"));
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    if bucket.is_empty() {
        return Err(bad("no bucket name".into()));
    }
    let prefix = prefix.trim_matches('/').to_string();
    let (mut endpoint, mut region, mut key, mut secret, mut token) = (None, None, None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or_else(|| bad(format!("bad percent-encoding in {k}=")))?;
        match k {
            "endpoint" => endpoint = Some(v),
            "region" => region = Some(v),
            "access_key_id" | "aws_access_key_id" => key = Some(v),
            "secret_access_key" | "aws_secret_access_key" => secret = Some(v),
            "session_token" | "aws_session_token" => token = Some(v),
            _ => {
                return Err(bad(format!(
                    "unknown parameter {k:?} (known: endpoint, region, access_key_id, secret_access_key, session_token)"
                )))
            }
        }
    }
    let endpoint = endpoint.ok_or_else(|| {
        bad(
            "no endpoint= given; hearth is built without TLS, so it can only reach an S3-compatible server over \
             plain HTTP, e.g. ?endpoint=http://127.0.0.1:9000"
                .into(),
        )
    })?;
    if endpoint.starts_with("https://") {
        return Err(bad(format!(
            "endpoint {endpoint} uses https, but hearth is built without TLS support; use an http:// endpoint \
             (e.g. a local MinIO) or a TLS-terminating proxy on localhost"
        )));
    }
    if !endpoint.starts_with("http://") {
        return Err(bad(format!("endpoint {endpoint:?} must start with http://")));
    }
    let endpoint = endpoint.trim_end_matches('/').to_string();
    let access_key_id = key.or_else(|| env("AWS_ACCESS_KEY_ID")).ok_or_else(|| {
        bad("no access key: set AWS_ACCESS_KEY_ID (and AWS_SECRET_ACCESS_KEY) or pass access_key_id=".into())
    })?;
    let secret_access_key = secret
        .or_else(|| env("AWS_SECRET_ACCESS_KEY"))
        .ok_or_else(|| bad("no secret key: set AWS_SECRET_ACCESS_KEY or pass secret_access_key=".into()))?;
    let session_token = token.or_else(|| env("AWS_SESSION_TOKEN")).filter(|t| !t.is_empty());
    let region = region
        .or_else(|| env("AWS_REGION"))
        .unwrap_or_else(|| "us-east-1".into());
    Ok(S3Location {
        bucket: bucket.to_string(),
        prefix,
        endpoint,
        region,
        access_key_id,
        secret_access_key,
        session_token,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn s3_url_with_everything_in_the_query() {
        let loc = parse_s3(
            "bkt/some/prefix/?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=eu-1&access_key_id=AK&secret_access_key=S%2B",
            no_env,
        )
        .unwrap();
        assert_eq!(
            loc,
            S3Location {
                bucket: "bkt".into(),
                prefix: "some/prefix".into(),
                endpoint: "http://127.0.0.1:9000".into(),
                region: "eu-1".into(),
                access_key_id: "AK".into(),
                secret_access_key: "S+".into(),
                session_token: None,
            }
        );
    }

    #[test]
    fn s3_keys_from_env_and_default_region() {
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("envkey".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("envsecret".to_string()),
            _ => None,
        };
        let loc = parse_s3("b?endpoint=http://minio:9000/", env).unwrap();
        assert_eq!(
            (loc.access_key_id.as_str(), loc.secret_access_key.as_str()),
            ("envkey", "envsecret")
        );
        assert_eq!(loc.region, "us-east-1");
        assert_eq!(loc.endpoint, "http://minio:9000");
        assert_eq!(loc.prefix, "");
    }

    #[test]
    fn s3_https_and_missing_things_are_clear_errors() {
        let e = parse_s3(
            "b?endpoint=https://s3.example.com&access_key_id=a&secret_access_key=b",
            no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("without TLS"), "{e}");
        let e = parse_s3("b?access_key_id=a&secret_access_key=b", no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no endpoint"), "{e}");
        let e = parse_s3("b?endpoint=http://h:1", no_env).unwrap_err().to_string();
        assert!(e.contains("AWS_ACCESS_KEY_ID"), "{e}");
        let e = parse_s3("b?endpoint=http://h:1&bogus=1", no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        assert!(parse_s3("?endpoint=http://h:1", no_env).is_err());
    }

    #[test]
    fn other_schemes_are_refused() {
        assert!(matches!(open("gs://x", None), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            open("https://host/bucket", None),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(open("", None), Err(Error::InvalidArgument(_))));
    }

    /// A transport that refuses to connect, to see that S3 stores are built with the one given.
    #[derive(Debug)]
    struct NoConnect;

    impl HttpConnector for NoConnect {
        fn connect(&self, _: &object_store::ClientOptions) -> object_store::Result<HttpClient> {
            Err(object_store::Error::NotSupported {
                source: "no network in this test".into(),
            })
        }
    }

    #[test]
    fn s3_needs_and_uses_an_http_transport() {
        let url = "s3://bkt/pre?endpoint=http://127.0.0.1:1&access_key_id=a&secret_access_key=b";
        let e = open(url, None).err().unwrap().to_string();
        assert!(e.contains("open_with_http"), "{e}");
        let e = open(url, Some(SharedConnector(Arc::new(NoConnect))))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no network in this test"), "{e}");
        // Local locations do not need one.
        let dir = std::env::temp_dir().join(format!("hearth-snapshot-open-{}", std::process::id()));
        assert!(open(dir.to_str().unwrap(), None).unwrap().local_root.is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
