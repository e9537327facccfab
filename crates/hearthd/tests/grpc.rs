//! hearthd over its Unix socket: EC2 errors as gRPC statuses (code, message, details),
//! the agent token check, and a Sync that sees RunInstances. Over TLS TCP: Compute needs
//! the API token or a client certificate from `--tls-client-ca`.

use std::path::{Path, PathBuf};

use hearth_api::v1 as pb;
use hearth_api::v1::agent_control_client::AgentControlClient;
use hearth_api::v1::compute_client::ComputeClient;
use hearthd::{Hearthd, ServeConfig, ServeError};
use hyper_util::rt::TokioIo;
use prost::Message;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Code;

struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("hearthd-grpc-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn channel(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    Endpoint::try_from("http://hearthd.invalid")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
        }))
        .await
        .unwrap()
}

fn ec2_code(status: &tonic::Status) -> String {
    pb::Ec2Error::decode(status.details()).unwrap().code
}

#[tokio::test]
async fn errors_tokens_and_sync_over_the_socket() {
    let dir = TempDir::new("socket");
    let config = ServeConfig::new(dir.0.join("data"));
    let daemon = Hearthd::bind(config.clone()).await.unwrap();
    let socket = daemon.socket_path().to_path_buf();
    let token = daemon.agent_token().to_string();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(config.token_path()).unwrap().trim(), token);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(daemon.run(async move {
        let _ = stopped.await;
    }));

    // A second hearthd on the same socket is refused.
    assert!(matches!(
        Hearthd::bind(config.clone()).await,
        Err(ServeError::AlreadyRunning(_))
    ));

    let channel = channel(&socket).await;
    let mut compute = ComputeClient::new(channel.clone());
    let status = compute
        .stop_instances(pb::StopInstancesRequest {
            instance_ids: vec!["i-0123456789abcdef0".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().starts_with("InvalidInstanceID.NotFound: "),
        "{}",
        status.message()
    );
    assert_eq!(ec2_code(&status), "InvalidInstanceID.NotFound");
    let status = compute
        .terminate_instances(pb::InstanceIdsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), ec2_code(&status).as_str()),
        (Code::InvalidArgument, "InvalidParameterCombination")
    );
    let status = compute
        .describe_instances(pb::DescribeInstancesRequest {
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), ec2_code(&status).as_str()),
        (Code::FailedPrecondition, "DryRunOperation")
    );
    let regions = compute
        .describe_regions(pb::DescribeRegionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(regions.regions[0].region_name, "homelab-1");

    // Agents need the token.
    let mut agent = AgentControlClient::new(channel);
    let sync = pb::SyncRequest {
        host: Some(pb::HostInfo {
            host_id: "h-test".into(),
            availability_zone: "homelab-1a".into(),
            vcpus: 4,
            memory_mib: 4096,
            agent_version: "test".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let status = agent.sync(sync.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(sync.clone());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(agent.sync(wrong).await.unwrap_err().code(), Code::Unauthenticated);
    let mut good = tonic::Request::new(sync.clone());
    good.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let answer = agent.sync(good).await.unwrap().into_inner();
    assert!(answer.instances.is_empty());
    let zones = compute
        .describe_availability_zones(pb::DescribeAvailabilityZonesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(zones.availability_zones[0].zone_name, "homelab-1a");
    assert_eq!(zones.availability_zones[0].state, "available");

    // An image and an instance reach the agent's next Sync (its files in the import directory).
    let files = dir.0.join("data/import");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("vmlinux"), b"k").unwrap();
    std::fs::write(files.join("root.img"), b"r").unwrap();
    let image = compute
        .register_image(pb::RegisterImageRequest {
            name: "tiny".into(),
            kernel_path: files.join("vmlinux").to_string_lossy().into_owned(),
            root_image_path: files.join("root.img").to_string_lossy().into_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .image_id;
    let reservation = compute
        .run_instances(pb::RunInstancesRequest {
            image_id: image,
            instance_type: "t3.nano".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let instance = &reservation.instances[0];
    assert_eq!(instance.state.as_ref().unwrap().name, "pending");
    assert_eq!(instance.host_id, "h-test");
    let mut poll = tonic::Request::new(pb::SyncRequest {
        known_revision: answer.revision,
        wait_ms: 5000,
        ..sync
    });
    poll.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let desired = agent.sync(poll).await.unwrap().into_inner();
    assert_eq!(desired.instances[0].instance_id, instance.instance_id);
    assert_eq!(desired.instances[0].run, "running");
    assert_eq!(desired.instances[0].memory_mib, 512);

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    assert!(!socket.exists(), "the socket is removed on shutdown");
}

#[tokio::test]
async fn tcp_without_tls_is_refused() {
    let dir = TempDir::new("tcp");
    let mut config = ServeConfig::new(dir.0.join("data"));
    config.listen_tcp = Some("127.0.0.1:0".parse().unwrap());
    assert!(matches!(Hearthd::bind(config).await, Err(ServeError::TcpWithoutTls)));
}

/// Test certificates made by `openssl`.
struct Certificates {
    /// The test CA.
    ca: PathBuf,
    /// hearthd's `localhost` certificate and key, signed by the CA.
    server: (PathBuf, PathBuf),
    /// A client certificate and key signed by the CA.
    client: (PathBuf, PathBuf),
    /// A self-signed client certificate and key (not from the CA).
    stranger: (PathBuf, PathBuf),
}

/// Makes [`Certificates`] in `dir`, or `None` (test skipped) without openssl.
fn test_certificates(dir: &Path) -> Option<Certificates> {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    std::fs::write(dir.join("server.cnf"), "subjectAltName=DNS:localhost\n").unwrap();
    std::fs::write(dir.join("client.cnf"), "extendedKeyUsage=clientAuth\n").unwrap();
    let sign = |name: &'static str, ext: &'static str| {
        vec![
            "x509",
            "-req",
            "-in",
            name,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            ext,
            "-out",
        ]
    };
    let self_signed = |cn: &'static str, key: &'static str, out: &'static str| {
        [
            &["req", "-x509"][..],
            &ec,
            &["-days", "1", "-subj", cn, "-keyout", key, "-out", out],
        ]
        .concat()
    };
    let request = |cn: &'static str, key: &'static str, out: &'static str| {
        [&["req"][..], &ec, &["-subj", cn, "-keyout", key, "-out", out]].concat()
    };
    let steps: [Vec<&str>; 6] = [
        self_signed("/CN=hearth test CA", "ca.key", "ca.pem"),
        request("/CN=localhost", "key.pem", "leaf.csr"),
        [sign("leaf.csr", "server.cnf"), vec!["cert.pem"]].concat(),
        request("/CN=hearth test client", "client.key", "client.csr"),
        [sign("client.csr", "client.cnf"), vec!["client.pem"]].concat(),
        self_signed("/CN=stranger", "stranger.key", "stranger.pem"),
    ];
    for args in steps {
        let status = std::process::Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if !matches!(status, Ok(status) if status.success()) {
            println!("skipping: openssl cannot make test certificates ({status:?})");
            return None;
        }
    }
    Some(Certificates {
        ca: dir.join("ca.pem"),
        server: (dir.join("cert.pem"), dir.join("key.pem")),
        client: (dir.join("client.pem"), dir.join("client.key")),
        stranger: (dir.join("stranger.pem"), dir.join("stranger.key")),
    })
}

/// A TLS channel to hearthd on `address`, trusting the test CA, presenting `identity`.
async fn tls_channel(address: std::net::SocketAddr, ca: &Path, identity: Option<&(PathBuf, PathBuf)>) -> Channel {
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    Endpoint::try_from(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// `message` with `authorization: Bearer <token>`.
fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn assert_auth_failure(status: &tonic::Status) {
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().starts_with("AuthFailure: "), "{}", status.message());
    assert_eq!(ec2_code(status), "AuthFailure");
}

/// A `SyncRequest` from a test host.
fn host_sync() -> pb::SyncRequest {
    pb::SyncRequest {
        host: Some(pb::HostInfo {
            host_id: "h-tcp".into(),
            availability_zone: "homelab-1a".into(),
            vcpus: 2,
            memory_mib: 2048,
            agent_version: "test".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn tcp_compute_needs_the_api_token() {
    let dir = TempDir::new("tls");
    let Some(certs) = test_certificates(&dir.0) else {
        return;
    };
    let mut config = ServeConfig::new(dir.0.join("data"));
    config.listen_tcp = Some("127.0.0.1:0".parse().unwrap());
    config.tls = Some(hearthd::server::TlsFiles {
        cert: certs.server.0.clone(),
        key: certs.server.1.clone(),
        client_ca: None,
    });
    let daemon = Hearthd::bind(config.clone()).await.unwrap();
    let address = daemon.tcp_address().unwrap();
    let socket = daemon.socket_path().to_path_buf();
    let api_token = daemon.api_token().unwrap().to_string();
    let agent_token = daemon.agent_token().to_string();
    assert_ne!(api_token, agent_token);
    assert_eq!(daemon.api_token_path(), Some(config.api_token_path().as_path()));
    use std::os::unix::fs::PermissionsExt;
    let file = config.api_token_path();
    assert_eq!(file, dir.0.join("data/api-token"));
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), api_token);
    assert_eq!(api_token.len(), 64);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(daemon.run(async move {
        let _ = stopped.await;
    }));

    let tcp = tls_channel(address, &certs.ca, None).await;
    let mut compute = ComputeClient::new(tcp.clone());
    // No token, a wrong token, the agent token: AuthFailure.
    let status = compute
        .describe_regions(pb::DescribeRegionsRequest {})
        .await
        .unwrap_err();
    assert_auth_failure(&status);
    let status = compute
        .describe_regions(bearer(pb::DescribeRegionsRequest {}, "not-the-token"))
        .await
        .unwrap_err();
    assert_auth_failure(&status);
    let status = compute
        .describe_regions(bearer(pb::DescribeRegionsRequest {}, &agent_token))
        .await
        .unwrap_err();
    assert_auth_failure(&status);
    // Refused before the engine runs: no instance is created.
    let status = compute
        .run_instances(pb::RunInstancesRequest {
            image_id: "ami-0123456789abcdef0".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_auth_failure(&status);
    // The API token works.
    let regions = compute
        .describe_regions(bearer(pb::DescribeRegionsRequest {}, &api_token))
        .await
        .unwrap();
    assert_eq!(regions.into_inner().regions.len(), 1);
    // EC2 errors still come through after authentication.
    let status = compute
        .stop_instances(bearer(
            pb::StopInstancesRequest {
                instance_ids: vec!["i-0123456789abcdef0".into()],
                ..Default::default()
            },
            &api_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(ec2_code(&status), "InvalidInstanceID.NotFound");

    // Agents over TCP use the agent token; the API token is not one.
    let mut agent = AgentControlClient::new(tcp);
    let status = agent.sync(bearer(host_sync(), &api_token)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    agent.sync(bearer(host_sync(), &agent_token)).await.unwrap();

    // On the Unix socket, Compute needs no token (the file permissions decide); agents do.
    let unix = channel(&socket).await;
    let regions = ComputeClient::new(unix.clone())
        .describe_regions(pb::DescribeRegionsRequest {})
        .await
        .unwrap();
    assert_eq!(regions.into_inner().regions.len(), 1);
    let status = AgentControlClient::new(unix).sync(host_sync()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Plaintext gRPC on the TLS port fails.
    let plain = Endpoint::try_from(format!("http://{address}")).unwrap().connect().await;
    if let Ok(plain) = plain {
        assert!(ComputeClient::new(plain)
            .describe_regions(bearer(pb::DescribeRegionsRequest {}, &api_token))
            .await
            .is_err());
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();

    // A restart keeps the token in the file.
    let daemon = Hearthd::bind(config).await.unwrap();
    assert_eq!(daemon.api_token(), Some(api_token.as_str()));
}

#[tokio::test]
async fn tcp_client_certificate_replaces_the_api_token() {
    let dir = TempDir::new("mtls");
    let Some(certs) = test_certificates(&dir.0) else {
        return;
    };
    let mut config = ServeConfig::new(dir.0.join("data"));
    config.listen_tcp = Some("127.0.0.1:0".parse().unwrap());
    config.api_token_file = Some(dir.0.join("my-api-token"));
    std::fs::write(dir.0.join("my-api-token"), "chosen-token\n").unwrap();
    config.tls = Some(hearthd::server::TlsFiles {
        cert: certs.server.0.clone(),
        key: certs.server.1.clone(),
        client_ca: Some(certs.ca.clone()),
    });
    let daemon = Hearthd::bind(config).await.unwrap();
    assert_eq!(daemon.api_token(), Some("chosen-token"));
    assert!(!dir.0.join("data/api-token").exists());
    let address = daemon.tcp_address().unwrap();
    let agent_token = daemon.agent_token().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(daemon.run(async move {
        let _ = stopped.await;
    }));

    // A client certificate from the CA: no token needed for Compute.
    let channel = tls_channel(address, &certs.ca, Some(&certs.client)).await;
    let mut compute = ComputeClient::new(channel.clone());
    let regions = compute.describe_regions(pb::DescribeRegionsRequest {}).await.unwrap();
    assert_eq!(regions.into_inner().regions.len(), 1);
    // ... but agents still need the agent token.
    let mut agent = AgentControlClient::new(channel);
    let status = agent.sync(host_sync()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    agent.sync(bearer(host_sync(), &agent_token)).await.unwrap();

    // Without a certificate the token is still required, and still enough.
    let mut anonymous = ComputeClient::new(tls_channel(address, &certs.ca, None).await);
    assert_auth_failure(
        &anonymous
            .describe_regions(pb::DescribeRegionsRequest {})
            .await
            .unwrap_err(),
    );
    anonymous
        .describe_regions(bearer(pb::DescribeRegionsRequest {}, "chosen-token"))
        .await
        .unwrap();

    // A certificate the CA did not sign is refused by the TLS handshake, token or not.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(&certs.ca).unwrap(),
        ))
        .domain_name("localhost")
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(&certs.stranger.0).unwrap(),
            std::fs::read(&certs.stranger.1).unwrap(),
        ));
    let stranger = Endpoint::try_from(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await;
    if let Ok(stranger) = stranger {
        let status = ComputeClient::new(stranger)
            .describe_regions(bearer(pb::DescribeRegionsRequest {}, "chosen-token"))
            .await
            .unwrap_err();
        assert_ne!(status.code(), Code::Ok);
    }

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
