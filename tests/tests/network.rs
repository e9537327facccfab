//! Instance networking through the whole stack, with probe VMs: each test builds its own
//! network lab (hearthd, agents in "host" namespaces, an "internet" namespace; see
//! `hearth_e2e::netlab`) and leaves nothing behind.

use std::net::Ipv4Addr;
use std::time::Duration;

use hearth_e2e::netlab::{Lab, ZONE};
use hearth_e2e::{in_ci, kvm_available};

/// Namespaces need root; VMs need KVM. Under CI both must be there.
fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(!in_ci(), "network tests need root under CI=true");
        eprintln!("SKIPPED: network namespaces need root");
        return false;
    }
    kvm_available()
}

fn s(value: &serde_json::Value) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"))
        .to_string()
}

/// Runs probe instances (net-echo, address by DHCP) with `extra` run-instances flags.
fn run(lab: &Lab, ami: &str, count: usize, extra: &[&str]) -> Vec<String> {
    let count = count.to_string();
    let mut args = vec!["run-instances", "--image-id", ami, "--count", &count];
    args.extend_from_slice(extra);
    let reservation = lab.cloud.cli_json(&args);
    reservation["Instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| s(&i["InstanceId"]))
        .collect()
}

fn private_ip(lab: &Lab, id: &str) -> Ipv4Addr {
    lab.cloud.instance(id).private_ip_address.parse().unwrap()
}

fn cli_error(lab: &Lab, args: &[&str]) -> String {
    let output = lab.cloud.cli(args);
    assert!(!output.status.success(), "hearth {args:?} should fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The default subnet's router as the lab's host 0 sees it.
const DEFAULT_GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);

#[test]
fn security_groups_dhcp_anti_spoofing_and_metadata_on_one_host() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::start(1);
    let ami = lab.cloud.register_probe_ami("net-echo", "net-echo");
    let web = s(&lab
        .cloud
        .cli_json(&["create-security-group", "--group-name", "web", "--description", "probe"])["GroupId"]);
    let duplicate = cli_error(
        &lab,
        &["create-security-group", "--group-name", "web", "--description", "again"],
    );
    assert!(duplicate.contains("InvalidGroup.Duplicate"), "{duplicate}");

    let ids = run(&lab, &ami, 1, &["--security-group-ids", &web]);
    let id = &ids[0];
    // The guest's DHCP answer is the address hearthd allocated.
    let ip = lab.wait_probe(id);
    assert_eq!(ip, private_ip(&lab, id));
    let console = lab.console(id);
    assert!(
        console.contains(&format!("probe: dhcp ip={ip}/20 router={DEFAULT_GATEWAY}")),
        "{console}"
    );

    let bridge = lab.bridge_of(&lab.hosts[0], DEFAULT_GATEWAY);
    let c = lab.client(0, &bridge, "172.31.15.250/20", DEFAULT_GATEWAY);
    let client = lab.get_client(c);

    // No inbound rule: nothing gets in.
    assert!(
        !client.echoes(ip, 7, Duration::from_millis(500)),
        "web has no inbound rule yet"
    );
    lab.cloud.cli(&[
        "authorize-security-group-ingress",
        "--group-id",
        &web,
        "--protocol",
        "udp",
        "--port",
        "7",
        "--cidr",
        "172.31.15.250/32",
    ]);
    let took = client
        .until_echo(ip, 7, true, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("udp 7 never allowed:\n{}", lab.logs()));
    eprintln!("authorize → first echo: {took:?}");
    // Only the authorised port and source.
    assert!(
        !client.echoes(ip, 8, Duration::from_millis(500)),
        "udp 8 is not authorised"
    );
    let ping = client.command(ip, "ping 172.31.15.250");
    assert_eq!(ping.as_deref(), Some("pong"), "egress allows all, replies come back");

    // Anti-spoofing: forged source IP or MAC never leaves the host; a rogue DHCP server
    // either. The real echo still works.
    assert_eq!(
        client.command(ip, "spoof-ip"),
        None,
        "a reply from a forged IP got through"
    );
    assert_eq!(
        client.command(ip, "spoof-mac"),
        None,
        "a reply from a forged MAC got through"
    );
    assert!(client.echoes(ip, 7, Duration::from_secs(2)));

    // The metadata service: IMDSv2 token, then the instance's own facts.
    let token_reply = client
        .command(
            ip,
            "http PUT /latest/api/token\nX-aws-ec2-metadata-token-ttl-seconds: 60",
        )
        .expect("token reply");
    assert!(token_reply.starts_with("HTTP/1.1 200"), "{token_reply}");
    let token = token_reply.split("\r\n\r\n").nth(1).unwrap().trim().to_string();
    let got = client
        .command(
            ip,
            &format!("http GET /latest/meta-data/instance-id\nX-aws-ec2-metadata-token: {token}"),
        )
        .unwrap();
    assert!(got.starts_with("HTTP/1.1 200") && got.ends_with(id.as_str()), "{got}");
    let got = client
        .command(
            ip,
            &format!("http GET /latest/meta-data/local-ipv4\nX-aws-ec2-metadata-token: {token}"),
        )
        .unwrap();
    assert!(got.ends_with(&ip.to_string()), "{got}");
    let got = client
        .command(
            ip,
            &format!("http GET /latest/meta-data/security-groups\nX-aws-ec2-metadata-token: {token}"),
        )
        .unwrap();
    assert!(got.ends_with("web"), "{got}");
    let got = client
        .command(
            ip,
            &format!("http GET /latest/meta-data/placement/availability-zone\nX-aws-ec2-metadata-token: {token}"),
        )
        .unwrap();
    assert!(got.ends_with(ZONE), "{got}");
    // v1 works until tokens are required; then only v2.
    let v1 = client.command(ip, "http GET /latest/meta-data/instance-id").unwrap();
    assert!(v1.starts_with("HTTP/1.1 200"), "{v1}");
    lab.cloud.cli_json(&[
        "modify-instance-metadata-options",
        "--instance-id",
        id,
        "--http-tokens",
        "required",
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v1 = client.command(ip, "http GET /latest/meta-data/instance-id").unwrap();
        if v1.starts_with("HTTP/1.1 401") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "IMDSv1 still answered: {v1}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let bad = client
        .command(
            ip,
            "http GET /latest/meta-data/instance-id\nX-aws-ec2-metadata-token: nonsense",
        )
        .unwrap();
    assert!(bad.starts_with("HTTP/1.1 401"), "{bad}");

    // Revoking the rule stops new traffic within a second or so.
    lab.cloud.cli(&[
        "revoke-security-group-ingress",
        "--group-id",
        &web,
        "--protocol",
        "udp",
        "--port",
        "7",
        "--cidr",
        "172.31.15.250/32",
    ]);
    let took = client
        .until_echo(ip, 7, false, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("udp 7 still allowed after the revoke:\n{}", lab.logs()));
    eprintln!("revoke → no echo: {took:?}");
    let missing = cli_error(
        &lab,
        &[
            "revoke-security-group-ingress",
            "--group-id",
            &web,
            "--protocol",
            "udp",
            "--port",
            "7",
            "--cidr",
            "172.31.15.250/32",
        ],
    );
    assert!(missing.contains("InvalidPermission.NotFound"), "{missing}");

    // Terminating removes the instance's tap; the bridge goes with the last port.
    lab.cloud.cli(&["terminate-instances", "--instance-ids", id]);
    lab.cloud.wait_state(id, "terminated", Duration::from_secs(30));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = lab.host_leftovers(0);
        if !left.contains("ht") && !left.contains("hbr") && !left.contains("table bridge hearth") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "left behind: {left}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
