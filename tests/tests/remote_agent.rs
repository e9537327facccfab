//! A host agent that reaches hearthd over TCP, as agents on other hosts do: TLS (a CA made
//! here with openssl), the agent's bearer token, and a real VM started through it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hearth_e2e::{binary, kvm_available, probe_kernel};

struct Killed(Vec<Child>, std::path::PathBuf);

impl Drop for Killed {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
        for pidfile in std::fs::read_dir(self.1.join("run")).into_iter().flatten().flatten() {
            if let Some(pid) = std::fs::read_to_string(pidfile.path().join("pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                // SAFETY: kill(2) on a VMM this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn openssl(dir: &std::path::Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn agent_over_tls_tcp_runs_an_instance() {
    if !kvm_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("hearth-e2e-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut guard = Killed(Vec::new(), dir.clone());
    // A CA and a server certificate for 127.0.0.1.
    std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    let made = openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=hearth-test-ca",
        ],
    ) && openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ) && openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "san.cnf",
        ],
    );
    if !made {
        assert!(!hearth_e2e::in_ci(), "openssl could not make the test CA under CI");
        eprintln!("SKIPPED: openssl missing or failed");
        return;
    }
    // A free port on loopback.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = dir.join("data");
    let hearthd = Command::new(binary("hearthd"))
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen-tcp", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(dir.join("server.pem"))
        .arg("--tls-key")
        .arg(dir.join("server.key"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("hearthd.log")).unwrap())
        .spawn()
        .unwrap();
    guard.0.push(hearthd);
    let token = data.join("agent-token");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !token.exists() || !data.join("hearthd.sock").exists() {
        assert!(
            Instant::now() < deadline,
            "hearthd did not start: {}",
            std::fs::read_to_string(dir.join("hearthd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let agent = Command::new(binary("hearth-agent"))
        .args(["--hearthd", &format!("https://127.0.0.1:{port}")])
        .arg("--ca-cert")
        .arg(dir.join("ca.pem"))
        .arg("--token-file")
        .arg(&token)
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--volume-dir")
        .arg(dir.join("volumes"))
        .args([
            "--az",
            "homelab-1b",
            "--host-id",
            "h-remote",
            "--network",
            "off",
            "--vmm",
        ])
        .arg(binary("hearth-vmm"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    guard.0.push(agent);

    let endpoint = format!("unix:{}", data.join("hearthd.sock").display());
    let hearth = |args: &[&str]| {
        let output = Command::new(binary("hearth"))
            .args(["--endpoint", &endpoint])
            .args(args)
            .args(["--output", "json"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "hearth {args:?}: {}\nagent.log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    // The remote host registers over TLS with its token.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let zones = hearth(&["describe-availability-zones"]);
        if zones.to_string().contains("homelab-1b") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never registered: {zones}\n{}",
            std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // RegisterImage reads only hearthd's import directory (<data dir>/import).
    let root = data.join("import/root.img");
    std::fs::write(&root, vec![0u8; 1 << 20]).unwrap();
    let kernel = hearth_e2e::import_file(&data.join("import"), &probe_kernel(), "hearth-probe");
    let image = hearth(&[
        "register-image",
        "--name",
        "probe",
        "--kernel",
        kernel.to_str().unwrap(),
        "--root-image",
        root.to_str().unwrap(),
        "--command-line",
        "probe.ops=wait",
    ]);
    let ami = image["ImageId"].as_str().unwrap().to_string();
    let reservation = hearth(&[
        "run-instances",
        "--image-id",
        &ami,
        "--instance-type",
        "t3.nano",
        "--placement",
        "AvailabilityZone=homelab-1b",
        "--wait",
    ]);
    let id = reservation["Instances"][0]["InstanceId"].as_str().unwrap().to_string();
    let described = hearth(&["describe-instances", "--instance-ids", &id]);
    assert_eq!(
        described["Reservations"][0]["Instances"][0]["State"]["Name"], "running",
        "{described}"
    );
    hearth(&["terminate-instances", "--instance-ids", &id, "--wait"]);
}
