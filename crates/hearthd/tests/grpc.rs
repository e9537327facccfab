//! hearthd over its Unix socket: EC2 errors as gRPC statuses (code, message, details),
//! the agent token check, and a Sync that sees RunInstances.

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

    // An image and an instance reach the agent's next Sync.
    let files = dir.0.join("files");
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

/// A test CA and a `localhost` certificate it signed, made by `openssl`: `(ca, cert, key)`,
/// or `None` (test skipped) without openssl.
fn test_certificates(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost\n").unwrap();
    let steps: [Vec<&str>; 3] = [
        [
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "1",
                "-subj",
                "/CN=hearth test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
        [
            &["req"][..],
            &ec,
            &["-subj", "/CN=localhost", "-keyout", "key.pem", "-out", "leaf.csr"],
        ]
        .concat(),
        vec![
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            "cert.pem",
        ],
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
    Some((dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem")))
}

#[tokio::test]
async fn tcp_serves_tls() {
    let dir = TempDir::new("tls");
    let Some((ca, cert, key)) = test_certificates(&dir.0) else {
        return;
    };
    let mut config = ServeConfig::new(dir.0.join("data"));
    config.listen_tcp = Some("127.0.0.1:0".parse().unwrap());
    config.tls = Some(hearthd::server::TlsFiles {
        cert: cert.clone(),
        key,
    });
    let daemon = Hearthd::bind(config).await.unwrap();
    let address = daemon.tcp_address().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(daemon.run(async move {
        let _ = stopped.await;
    }));
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(&ca).unwrap()))
        .domain_name("localhost");
    let channel = Endpoint::try_from(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let regions = ComputeClient::new(channel)
        .describe_regions(pb::DescribeRegionsRequest {})
        .await
        .unwrap();
    assert_eq!(regions.into_inner().regions.len(), 1);
    // Plaintext gRPC on the TLS port fails.
    let plain = Endpoint::try_from(format!("http://{address}")).unwrap().connect().await;
    if let Ok(plain) = plain {
        assert!(ComputeClient::new(plain)
            .describe_regions(pb::DescribeRegionsRequest {})
            .await
            .is_err());
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
