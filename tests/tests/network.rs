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

    let bridge = lab.bridge_of_instance(id);
    assert_eq!(bridge, lab.bridge_of(&lab.hosts[0], DEFAULT_GATEWAY));
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
    assert_eq!(
        rogue_dhcp_seen(client, ip),
        (Some("sent".to_string()), 0),
        "a rogue DHCP offer got through"
    );

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

/// Polls a probe command until its answer satisfies `want` (rules reach hosts within a
/// second; the limit is generous for loaded machines). Returns the last answer.
fn until(client: &hearth_e2e::netlab::Client, ip: Ipv4Addr, command: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    loop {
        let answer = client.command(ip, command).unwrap_or_default();
        if want(&answer) || std::time::Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_default_group_lets_members_talk_and_source_group_rules_follow_membership() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::start(1);
    let ami = lab.cloud.register_probe_ami("net-echo", "net-echo");
    let default = s(&lab
        .cloud
        .cli_json(&["describe-security-groups", "--group-names", "default"])["SecurityGroups"][0]["GroupId"]);
    let friends = s(&lab
        .cloud
        .cli_json(&["create-security-group", "--group-name", "friends", "--description", "x"])["GroupId"]);
    let guarded = s(&lab
        .cloud
        .cli_json(&["create-security-group", "--group-name", "guarded", "--description", "x"])["GroupId"]);
    // The test's client may command every probe.
    for group in [&default, &guarded] {
        lab.cloud.cli_json(&[
            "authorize-security-group-ingress",
            "--group-id",
            group,
            "--protocol",
            "udp",
            "--port",
            "7-40",
            "--cidr",
            "172.31.15.250/32",
        ]);
    }
    lab.cloud.cli_json(&[
        "authorize-security-group-ingress",
        "--group-id",
        &guarded,
        "--protocol",
        "udp",
        "--port",
        "7",
        "--source-group",
        &friends,
    ]);
    let members = run(&lab, &ami, 2, &[]);
    let outsider = run(&lab, &ami, 1, &["--security-group-ids", &guarded])[0].clone();
    let (a, b) = (&members[0], &members[1]);
    let (ip_a, ip_b, ip_c) = (lab.wait_probe(a), lab.wait_probe(b), lab.wait_probe(&outsider));
    let bridge = lab.bridge_of_instance(a);
    let c = lab.client(0, &bridge, "172.31.15.250/20", DEFAULT_GATEWAY);
    let client = lab.get_client(c);

    // Members of the default group reach each other; others are kept out both ways.
    assert_eq!(
        until(client, ip_a, &format!("send {ip_b} 7 hi"), |r| r == "reply hi"),
        "reply hi"
    );
    assert_eq!(
        client.command(ip_a, &format!("send {ip_c} 7 hi")).as_deref(),
        Some("timeout")
    );
    assert_eq!(
        client.command(ip_c, &format!("send {ip_a} 7 hi")).as_deref(),
        Some("timeout")
    );

    // A joins "friends": guarded's source-group rule now lets it in.
    lab.cloud.cli(&[
        "modify-instance-attribute",
        "--instance-id",
        a,
        "--groups",
        &default,
        &friends,
    ]);
    let answer = until(client, ip_a, &format!("send {ip_c} 7 hi"), |r| r == "reply hi");
    assert_eq!(answer, "reply hi", "membership change not followed:\n{}", lab.logs());
    // B is no friend.
    assert_eq!(
        client.command(ip_b, &format!("send {ip_c} 7 hi")).as_deref(),
        Some("timeout")
    );
    // A leaves: new flows are kept out again (the flow A:7 → C:7 is tracked and, as in
    // EC2, outlives the rule; A's sends from port 9 are new flows).
    lab.cloud
        .cli(&["modify-instance-attribute", "--instance-id", a, "--groups", &default]);
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    let mut port = 9;
    loop {
        let answer = client
            .command_on(ip_a, port, &format!("send {ip_c} 7 hi"))
            .unwrap_or_default();
        if answer == "timeout" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "A still reaches C after leaving friends: {answer}"
        );
        port += 1;
    }

    // friends is named by guarded's rule: it cannot go.
    let in_use = cli_error(&lab, &["delete-security-group", "--group-id", &friends]);
    assert!(in_use.contains("InvalidGroup.InUse"), "{in_use}");
}

#[test]
fn two_vpcs_with_the_same_cidr_stay_isolated() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::start(1);
    let ami = lab.cloud.register_probe_ami("net-echo", "net-echo");
    let mut vpcs = Vec::new();
    for _ in 0..2 {
        let vpc = s(&lab.cloud.cli_json(&["create-vpc", "--cidr-block", "10.0.0.0/16"])["Vpc"]["VpcId"]);
        let subnet = s(&lab.cloud.cli_json(&[
            "create-subnet",
            "--vpc-id",
            &vpc,
            "--cidr-block",
            "10.0.1.0/24",
            "--availability-zone",
            ZONE,
        ])["Subnet"]["SubnetId"]);
        let group = open_group(&lab, &vpc, "10.0.0.0/8");
        vpcs.push((vpc, subnet, group));
    }
    let run_in = |lab: &Lab, (_, subnet, group): &(String, String, String), count: usize| {
        run(
            lab,
            &ami,
            count,
            &["--subnet-id", subnet, "--security-group-ids", group],
        )
    };
    let one = run_in(&lab, &vpcs[0], 2);
    let two = run_in(&lab, &vpcs[1], 1);
    let (a1, b1, a2) = (&one[0], &one[1], &two[0]);
    let (ip_a1, ip_b1, ip_a2) = (lab.wait_probe(a1), lab.wait_probe(b1), lab.wait_probe(a2));
    assert_eq!(ip_a1, ip_a2, "both VPCs hand out the same first address");
    assert_ne!(ip_a1, ip_b1);
    let gateway = Ipv4Addr::new(10, 0, 1, 1);
    let bridge1 = lab.bridge_of_instance(a1);
    let bridge2 = lab.bridge_of_instance(a2);
    assert_ne!(bridge1, bridge2);
    let c1 = lab.client(0, &bridge1, "10.0.1.250/24", gateway);
    let c2 = lab.client(0, &bridge2, "10.0.1.250/24", gateway);
    let (client1, client2) = (lab.get_client(c1), lab.get_client(c2));
    // The same address answers as a different instance in each VPC (the metadata service
    // too: one listener per bridge).
    let who1 = until(client1, ip_a1, "http GET /latest/meta-data/instance-id", |r| {
        r.ends_with(a1.as_str())
    });
    let who2 = until(client2, ip_a2, "http GET /latest/meta-data/instance-id", |r| {
        r.ends_with(a2.as_str())
    });
    assert!(who1.ends_with(a1.as_str()), "{who1}");
    assert!(who2.ends_with(a2.as_str()), "{who2}");
    // Inside VPC 1, A1 reaches B1; from VPC 2 the same address is nobody.
    assert_eq!(
        until(client1, ip_a1, &format!("send {ip_b1} 7 x"), |r| r == "reply x"),
        "reply x"
    );
    assert_eq!(
        client2.command(ip_a2, &format!("send {ip_b1} 7 x")).as_deref(),
        Some("timeout")
    );
    // Nor does the host route between them, to the uplink or to itself: instances reach the
    // host only for DHCP and the metadata service.
    assert_eq!(client2.command(ip_a2, "ping 198.51.100.1").as_deref(), Some("timeout"));
    assert_eq!(
        client2.command(ip_a2, "ping 198.51.100.200").as_deref(),
        Some("timeout")
    );
    assert_eq!(client2.command(ip_a2, "ping 10.0.1.1").as_deref(), Some("timeout"));
}

#[test]
fn vxlan_carries_a_subnet_between_two_hosts() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::start(2);
    let ami = lab.cloud.register_probe_ami("net-echo", "net-echo");
    open_default_group(&lab, "172.31.15.250/32");
    let (a, b) = one_per_host(&lab, &ami);
    let (ip_a, ip_b) = (lab.wait_probe(&a), lab.wait_probe(&b));
    let bridge = lab.bridge_of_instance(&a);
    let c = lab.client(0, &bridge, "172.31.15.250/20", DEFAULT_GATEWAY);
    let client = lab.get_client(c);
    // The client on host 0 reaches B on host 1 through VXLAN; A and B talk.
    assert!(
        client.until_echo(ip_b, 7, true, Duration::from_secs(8)).is_some(),
        "{}\n{}",
        lab.dump(),
        lab.logs()
    );
    assert_eq!(
        until(client, ip_a, &format!("send {ip_b} 7 over"), |r| r == "reply over"),
        "reply over"
    );
    assert_eq!(
        until(client, ip_b, &format!("send {ip_a} 7 back"), |r| r == "reply back"),
        "reply back"
    );
    // B's metadata comes from its own host.
    let who = until(client, ip_b, "http GET /latest/meta-data/instance-id", |r| {
        r.ends_with(b.as_str())
    });
    assert!(who.ends_with(b.as_str()), "{who}");
    // Two subnets of another VPC, one instance each, on different hosts: each host routes
    // between the VPC's subnets itself and reaches the other subnet's instance over VXLAN.
    let vpc = s(&lab.cloud.cli_json(&["create-vpc", "--cidr-block", "10.1.0.0/16"])["Vpc"]["VpcId"]);
    let group = open_group(&lab, &vpc, "10.1.0.0/16");
    let mut placed = Vec::new();
    for (cidr, host) in [("10.1.1.0/24", "h-lab0"), ("10.1.2.0/24", "h-lab1")] {
        let subnet = s(&lab.cloud.cli_json(&[
            "create-subnet",
            "--vpc-id",
            &vpc,
            "--cidr-block",
            cidr,
            "--availability-zone",
            ZONE,
        ])["Subnet"]["SubnetId"]);
        let id = (0..6)
            .map(|_| run(&lab, &ami, 1, &["--subnet-id", &subnet, "--security-group-ids", &group])[0].clone())
            .find(|id| lab.cloud.instance(id).host_id == host)
            .unwrap_or_else(|| panic!("no instance of {cidr} landed on {host}"));
        placed.push(id);
    }
    let (ip_c, ip_d) = (lab.wait_probe(&placed[0]), lab.wait_probe(&placed[1]));
    let bridge = lab.bridge_of_instance(&placed[0]);
    let c2 = lab.client(0, &bridge, "10.1.1.250/24", Ipv4Addr::new(10, 1, 1, 1));
    let client2 = lab.get_client(c2);
    assert_eq!(
        until(client2, ip_c, &format!("send {ip_d} 7 routed"), |r| r == "reply routed"),
        "reply routed",
        "{}",
        lab.dump()
    );
    // The VXLAN ports exist on both hosts while the subnet spans them.
    for host in 0..2 {
        assert!(lab.host_leftovers(host).contains("hvx"), "{}", lab.host_leftovers(host));
    }
}

#[test]
fn an_elastic_ip_reaches_the_probe_from_the_internet_and_follows_reassociation() {
    if !can_run() {
        return;
    }
    let lab = Lab::start(2);
    let ami = lab.cloud.register_probe_ami("net-echo", "net-echo");
    open_default_group(&lab, "198.51.100.0/24");
    let (a, b) = one_per_host(&lab, &ami);
    lab.wait_probe(&a);
    lab.wait_probe(&b);
    let address = lab.cloud.cli_json(&["allocate-address"]);
    let (allocation, public) = (s(&address["AllocationId"]), s(&address["PublicIp"]));
    let eip: Ipv4Addr = public.parse().unwrap();
    lab.cloud
        .cli_json(&["associate-address", "--allocation-id", &allocation, "--instance-id", &a]);
    assert_eq!(lab.cloud.instance(&a).public_ip_address, public);
    let internet = lab.internet_client();
    let who = until(&internet, eip, "http GET /latest/meta-data/instance-id", |r| {
        r.ends_with(a.as_str())
    });
    assert!(
        who.ends_with(a.as_str()),
        "the Elastic IP does not reach A: {who:?}\n{}",
        lab.logs()
    );
    let public_seen = until(&internet, eip, "http GET /latest/meta-data/public-ipv4", |r| {
        r.ends_with(&public)
    });
    assert!(public_seen.ends_with(&public), "{public_seen}");

    // One long-lived flow from the internet (a fixed source port), tracked by conntrack: the
    // instance ID that answers it.
    let flow = || {
        let answer = internet
            .command_from(40007, eip, "http GET /latest/meta-data/instance-id")
            .unwrap_or_default();
        answer.rsplit('\n').next().unwrap_or_default().trim().to_string()
    };
    assert_eq!(flow(), a, "the tracked flow reaches A");
    let taken = cli_error(
        &lab,
        &["associate-address", "--allocation-id", &allocation, "--instance-id", &b],
    );
    assert!(taken.contains("Resource.AlreadyAssociated"), "{taken}");
    let start = std::time::Instant::now();
    lab.cloud.cli_json(&[
        "associate-address",
        "--allocation-id",
        &allocation,
        "--instance-id",
        &b,
        "--allow-reassociation",
    ]);
    let who = until(&internet, eip, "http GET /latest/meta-data/instance-id", |r| {
        r.ends_with(b.as_str())
    });
    assert!(
        who.ends_with(b.as_str()),
        "the Elastic IP did not move to B: {who:?}\n{}",
        lab.logs()
    );
    eprintln!("reassociation → traffic at B (another host): {:?}", start.elapsed());
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while flow() != b {
        assert!(std::time::Instant::now() < deadline, "the tracked flow still goes to A");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A move on the same host: the flow tracked there follows the address too (the host cuts
    // its conntrack entries; else it would keep its old translation for minutes).
    let c = (0..6)
        .map(|_| run(&lab, &ami, 1, &[])[0].clone())
        .find(|id| lab.cloud.instance(id).host_id == "h-lab1")
        .expect("an instance on h-lab1");
    lab.wait_probe(&c);
    lab.cloud.cli_json(&[
        "associate-address",
        "--allocation-id",
        &allocation,
        "--instance-id",
        &c,
        "--allow-reassociation",
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while flow() != c {
        assert!(
            std::time::Instant::now() < deadline,
            "the tracked flow still goes to B:\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lab.cloud.instance(&c).public_ip_address, public);
    assert_eq!(lab.cloud.instance(&a).public_ip_address, "");

    let unknown = cli_error(&lab, &["release-address", "--allocation-id", "eipalloc-12345678"]);
    assert!(unknown.contains("InvalidAddress.NotFound"), "{unknown}");
    let busy = cli_error(&lab, &["release-address", "--allocation-id", &allocation]);
    assert!(busy.contains("InvalidIPAddress.InUse"), "{busy}");
    let association = s(&lab.cloud.cli_json(&["describe-addresses"])["Addresses"][0]["AssociationId"]);
    lab.cloud
        .cli(&["disassociate-address", "--association-id", &association]);
    assert!(
        until(&internet, eip, "http GET /latest/meta-data/instance-id", |r| r
            .is_empty())
        .is_empty(),
        "the address still answers after DisassociateAddress"
    );
    let released = lab.cloud.cli(&["release-address", "--allocation-id", &allocation]);
    assert!(released.status.success());
}

/// Asks the probe to send a DHCP offer as if it were a server, while the client listens on
/// the DHCP client port: returns the probe's answer and how many offers arrived.
fn rogue_dhcp_seen(client: &hearth_e2e::netlab::Client, ip: Ipv4Addr) -> (Option<String>, usize) {
    client
        .netns
        .run(move || {
            let listener = std::net::UdpSocket::bind("0.0.0.0:68").unwrap();
            listener.set_broadcast(true).unwrap();
            listener.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
            let commander = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            commander.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            commander.send_to(b"spoof-dhcp", (ip, 7)).unwrap();
            let mut buf = [0u8; 2048];
            let answer = commander
                .recv_from(&mut buf)
                .ok()
                .map(|(n, _)| String::from_utf8_lossy(&buf[..n]).into_owned());
            let mut offers = 0;
            while listener.recv_from(&mut buf).is_ok() {
                offers += 1;
            }
            (answer, offers)
        })
        .unwrap()
}

/// Lets UDP 7 from `cidr` into the default VPC's default group.
fn open_default_group(lab: &Lab, cidr: &str) {
    let groups = lab
        .cloud
        .cli_json(&["describe-security-groups", "--group-names", "default"]);
    allow_udp7(lab, &s(&groups["SecurityGroups"][0]["GroupId"]), cidr);
}

/// Lets UDP 7 from `cidr` into `group`.
fn allow_udp7(lab: &Lab, group: &str, cidr: &str) {
    lab.cloud.cli_json(&[
        "authorize-security-group-ingress",
        "--group-id",
        group,
        "--protocol",
        "udp",
        "--port",
        "7",
        "--cidr",
        cidr,
    ]);
}

/// A new group "open" in `vpc` letting UDP 7 in from `cidr`.
fn open_group(lab: &Lab, vpc: &str, cidr: &str) -> String {
    let group = s(&lab.cloud.cli_json(&[
        "create-security-group",
        "--group-name",
        "open",
        "--description",
        "x",
        "--vpc-id",
        vpc,
    ])["GroupId"]);
    allow_udp7(lab, &group, cidr);
    group
}

/// Probe instances in the default subnet, one on each of the lab's two hosts (the scheduler
/// spreads; launch until both hosts have one): (on h-lab0, on h-lab1).
fn one_per_host(lab: &Lab, ami: &str) -> (String, String) {
    let mut by_host: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    for _ in 0..6 {
        let id = run(lab, ami, 1, &[])[0].clone();
        by_host.entry(lab.cloud.instance(&id).host_id).or_insert(id);
        if by_host.len() == 2 {
            break;
        }
    }
    assert_eq!(by_host.len(), 2, "instances on both hosts: {by_host:?}");
    (by_host["h-lab0"].clone(), by_host["h-lab1"].clone())
}

#[test]
fn an_agent_restart_keeps_instance_networks_and_rebuilds_its_services() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::start(1);
    let ami = lab.cloud.register_probe_ami("net-echo", "net-echo");
    open_default_group(&lab, "172.31.15.250/32");
    let id = run(&lab, &ami, 1, &[])[0].clone();
    let ip = lab.wait_probe(&id);
    let bridge = lab.bridge_of_instance(&id);
    let c = lab.client(0, &bridge, "172.31.15.250/20", DEFAULT_GATEWAY);
    let who = until(lab.get_client(c), ip, "http GET /latest/meta-data/instance-id", |r| {
        r.ends_with(id.as_str())
    });
    assert!(who.ends_with(id.as_str()), "{who}");

    // The data path is the kernel's: with the agent gone, the guest still answers.
    lab.kill_agent(0);
    assert!(
        lab.get_client(c).echoes(ip, 7, Duration::from_secs(2)),
        "no echo without the agent"
    );

    // A new agent re-adopts the VM and rebuilds DHCP and the metadata service around it,
    // without touching the guest.
    lab.start_agent(0);
    let who = until(lab.get_client(c), ip, "http GET /latest/meta-data/instance-id", |r| {
        r.ends_with(id.as_str())
    });
    assert!(
        who.ends_with(id.as_str()),
        "metadata service not back: {who:?}\n{}",
        lab.logs()
    );
    assert!(lab.get_client(c).echoes(ip, 7, Duration::from_secs(2)));
    assert_eq!(lab.cloud.state(&id), "running");
    assert_eq!(
        lab.console(&id).matches("net-echo ready").count(),
        1,
        "the guest was restarted:\n{}",
        lab.console(&id)
    );
    // And it follows rule changes again.
    let default = s(&lab
        .cloud
        .cli_json(&["describe-security-groups", "--group-names", "default"])["SecurityGroups"][0]["GroupId"]);
    lab.cloud.cli_json(&[
        "authorize-security-group-ingress",
        "--group-id",
        &default,
        "--protocol",
        "udp",
        "--port",
        "8",
        "--cidr",
        "172.31.15.250/32",
    ]);
    assert!(
        lab.get_client(c)
            .until_echo(ip, 8, true, Duration::from_secs(8))
            .is_some(),
        "{}",
        lab.logs()
    );
}

#[test]
fn a_source_flooding_the_metadata_service_does_not_starve_a_guest_on_its_bridge() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    if !can_run() {
        return;
    }
    let mut lab = Lab::start(1);
    let ami = lab.cloud.register_probe_ami("net-echo", "net-echo");
    open_default_group(&lab, "172.31.15.250/32");
    let id = run(&lab, &ami, 1, &[])[0].clone();
    let ip = lab.wait_probe(&id);
    let bridge = lab.bridge_of_instance(&id);
    let c = lab.client(0, &bridge, "172.31.15.250/20", DEFAULT_GATEWAY);
    let client = lab.get_client(c);
    const ASK: &str = "http GET /latest/meta-data/instance-id";
    let who = until(client, ip, ASK, |r| r.ends_with(id.as_str()));
    assert!(who.ends_with(id.as_str()), "{who}");

    // The flooder: another address on the guest's bridge (a probe VM makes one request at
    // a time, about 20 a second, well below the limit), 32 threads asking as fast as they
    // can for 4 s, far beyond the 8 connections and 100 requests per second one source gets.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, usize>::new()));
    let flooders: Vec<_> = (0..32)
        .map(|n| {
            let (stop, seen) = (stop.clone(), seen.clone());
            client
                .netns
                .spawn(&format!("imds-flood-{n}"), move || {
                    let imds = std::net::SocketAddr::from((Ipv4Addr::new(169, 254, 169, 254), 80));
                    while !stop.load(Ordering::Relaxed) {
                        let mut status = 0;
                        if let Ok(mut stream) = std::net::TcpStream::connect_timeout(&imds, Duration::from_secs(1)) {
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(6)));
                            let _ = stream.write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n");
                            let mut bytes = Vec::new();
                            let _ = stream.read_to_end(&mut bytes);
                            status = String::from_utf8_lossy(&bytes)
                                .split(' ')
                                .nth(1)
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(0);
                        }
                        *seen.lock().unwrap().entry(status).or_default() += 1;
                    }
                })
                .unwrap()
        })
        .collect();
    // Meanwhile the guest asks ten times a second and is answered every time, promptly.
    let started = std::time::Instant::now();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(4) {
        let asked = std::time::Instant::now();
        let answer = client.command(ip, ASK).unwrap_or_else(|| "no answer".into());
        slowest = slowest.max(asked.elapsed());
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with(id.as_str()),
            "the guest got {answer:?} during the flood ({:?})",
            seen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.join().unwrap().unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    eprintln!("flood: {seen:?} (status 0: closed unanswered); the guest's slowest answer {slowest:?}");
    assert!(slowest < Duration::from_secs(2), "the guest waited {slowest:?}");
    // The flooder was throttled: 429 Too Many Requests.
    assert!(seen.get(&429).copied().unwrap_or(0) > 0, "never throttled: {seen:?}");
}
