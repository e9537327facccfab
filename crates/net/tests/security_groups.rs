//! Security groups on real bridges: a "host" namespace with bridges, guests in their own namespaces
//! behind veth pairs (the host end stands in for the tap), hearth's ruleset applied in the host
//! namespace. Needs root, `ip`, `nft` and `ping`; skips without them (fails under CI=true).

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;
use hearth_net::{Ipv4Cidr, Nft, NftError, Protocol, Rule, SecurityGroup};

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().unwrap()
}

fn group(id: &str, vpc: &str, ingress: Vec<Rule>, egress: Vec<Rule>) -> SecurityGroup {
    SecurityGroup {
        id: id.into(),
        vpc_id: vpc.into(),
        ingress,
        egress,
        remote_members: Vec::new(),
    }
}

fn allow_all_egress() -> Vec<Rule> {
    vec![Rule::all().cidr(cidr("0.0.0.0/0"))]
}

fn sample() -> hearth_net::HostFirewall {
    serde_json::from_str(
        r#"{
        "ports": [
          {"tap": "tap-a", "mac": "02:00:00:00:00:0a", "ipv4": "10.0.0.10", "vpc_id": "vpc-1",
           "group_ids": ["sg-default", "sg-web"]},
          {"tap": "tap-b", "mac": "02:00:00:00:00:0b", "ipv4": "10.0.0.11", "vpc_id": "vpc-1",
           "group_ids": ["sg-default"]}
        ],
        "groups": [
          {"id": "sg-default", "vpc_id": "vpc-1",
           "ingress": [{"protocol": "-1", "source_groups": ["sg-default"]}],
           "egress": [{"protocol": "-1", "sources": ["0.0.0.0/0"]}]},
          {"id": "sg-web", "vpc_id": "vpc-1",
           "ingress": [{"protocol": "tcp", "from_port": 443, "to_port": 443, "sources": ["0.0.0.0/0"]},
                       {"protocol": "tcp", "from_port": 22, "to_port": 22, "sources": ["192.168.0.0/16", "10.0.0.0/8"]},
                       {"protocol": "icmp", "from_port": 8, "to_port": -1, "sources": ["10.0.0.0/8"]}],
           "egress": [{"protocol": "udp", "from_port": 53, "to_port": 53, "sources": ["10.0.0.2/32"]}]}
        ]}"#,
    )
    .unwrap()
}

#[test]
fn a_port_that_leaves_takes_its_chains_and_sets_with_it() {
    let mut lab = lab_or_skip!("a_port_that_leaves_takes_its_chains_and_sets_with_it");
    lab.guest("g1", "br0", 1, "vpc-a", &["sg-a"]);
    lab.guest("g2", "br0", 2, "vpc-b", &["sg-b"]);
    let sg_a = group("sg-a", "vpc-a", vec![Rule::all().group("sg-a")], allow_all_egress());
    let sg_b = group("sg-b", "vpc-b", vec![Rule::all().group("sg-b")], allow_all_egress());
    lab.install(&lab.firewall(vec![sg_a.clone(), sg_b]));
    let before = lab.nft.current().unwrap().unwrap();
    for name in [
        "chain port_t-g2_egress",
        "chain sg_b_ingress",
        "set sg_b_members",
        "chain vpc_2_only",
    ] {
        assert!(before.contains(name), "{name}:\n{before}");
    }
    let mut fw = lab.firewall(vec![sg_a]);
    fw.ports.retain(|p| p.tap == "t-g1");
    lab.install(&fw);
    let after = lab.nft.current().unwrap().unwrap();
    for name in ["t-g2", "sg_b", "vpc_2_only", "10.0.0.2"] {
        assert!(!after.contains(name), "{name} is still there:\n{after}");
    }
    assert!(after.contains("chain port_t-g1_ingress") && after.contains("elements = { 10.0.0.1 }"));
}

#[test]
fn remove_is_idempotent_and_current_reports_absence() {
    let lab = lab_or_skip!("remove_is_idempotent_and_current_reports_absence");
    let nft = &lab.nft;
    assert_eq!(nft.current().unwrap(), None);
    nft.remove().unwrap();
    nft.apply(&hearth_net::compile(&sample()).unwrap()).unwrap();
    let listed = nft.current().unwrap().expect("tables after apply");
    assert!(listed.contains("table bridge hearth"), "{listed}");
    assert!(listed.contains("table ip hearth"), "{listed}");
    assert!(listed.contains("10.0.0.10"), "{listed}");
    nft.remove().unwrap();
    assert_eq!(nft.current().unwrap(), None);
    nft.remove().unwrap();
}

#[test]
fn rules_admit_only_authorised_protocols_ports_and_sources() {
    let mut lab = lab_or_skip!("rules_admit_only_authorised_protocols_ports_and_sources");
    lab.guest("g1", "br0", 1, "vpc-a", &["sg-client"]);
    lab.guest("g2", "br0", 2, "vpc-a", &["sg-server"]);
    lab.guest("g3", "br0", 3, "vpc-a", &["sg-client"]);
    let server = |client_egress: Vec<Rule>| {
        vec![
            group(
                "sg-server",
                "vpc-a",
                vec![
                    Rule::new(Protocol::Udp, 7000, 7000).cidr(cidr("10.0.0.1/32")),
                    Rule::new(Protocol::Icmp, 8, -1).cidr(cidr("10.0.0.3")),
                    Rule::new(Protocol::Tcp, 8000, 8080).cidr(cidr("10.0.0.0/31")),
                ],
                allow_all_egress(),
            ),
            group("sg-client", "vpc-a", vec![], client_egress),
        ]
    };
    lab.install(&lab.firewall(server(allow_all_egress())));
    let (g1, g2, g3) = (lab.g("g1"), lab.g("g2"), lab.g("g3"));
    let _echo = (Echo::start(g2, 7000), Echo::start(g2, 7001), Echo::start(g1, 7000));
    let _listen = (tcp_listen(g2, 8080), tcp_listen(g2, 8081));

    // The echo comes back although sg-client allows no ingress: replies are tracked.
    assert!(udp_reaches(g1, g2.ip(), 7000), "UDP 7000 from 10.0.0.1 is allowed");
    assert!(
        udp_blocked(g3, g2.ip(), 7000),
        "UDP 7000 from 10.0.0.3: not a listed source"
    );
    assert!(udp_blocked(g1, g2.ip(), 7001), "UDP 7001: not a listed port");
    assert!(ping_blocked(g1, g2.ip()), "ICMP from 10.0.0.1: not a listed source");
    assert!(ping_reaches(g3, g2.ip()), "ICMP echo from 10.0.0.3 is allowed");
    assert!(udp_blocked(g2, g1.ip(), 7000), "sg-client has no ingress rule");
    assert!(
        tcp_reaches(g1, g2.ip(), 8080),
        "TCP 8080 is in 8000-8080 from 10.0.0.0/31"
    );
    assert!(tcp_blocked(g1, g2.ip(), 8081), "TCP 8081 is outside the range");
    assert!(tcp_blocked(g3, g2.ip(), 8080), "10.0.0.3 is outside 10.0.0.0/31");

    // Egress rules bind the sender: clients may now only send UDP 7000.
    lab.install(&lab.firewall(server(vec![
        Rule::new(Protocol::Udp, 7000, 7000).cidr(cidr("10.0.0.0/24")),
    ])));
    assert!(ping_blocked(g3, g2.ip()), "ICMP is no longer in g3's egress rules");
    assert!(udp_reaches(g1, g2.ip(), 7000), "UDP 7000 still passes both checks");
}

#[test]
fn source_group_rules_follow_membership() {
    let mut lab = lab_or_skip!("source_group_rules_follow_membership");
    lab.guest("g1", "br0", 1, "vpc-a", &["sg-other"]);
    lab.guest("g2", "br0", 2, "vpc-a", &["sg-db"]);
    let groups = || {
        vec![
            group(
                "sg-db",
                "vpc-a",
                vec![Rule::new(Protocol::Udp, 5432, 5432).group("sg-app")],
                allow_all_egress(),
            ),
            group("sg-app", "vpc-a", vec![], allow_all_egress()),
            group("sg-other", "vpc-a", vec![], allow_all_egress()),
        ]
    };
    lab.install(&lab.firewall(groups()));
    let _echo = Echo::start(lab.g("g2"), 5432);
    let db = lab.g("g2").ip();
    assert!(udp_blocked(lab.g("g1"), db, 5432), "g1 is not in sg-app yet");

    lab.guests.get_mut("g1").unwrap().port.group_ids.push("sg-app".into());
    lab.install(&lab.firewall(groups()));
    let listed = lab.nft.current().unwrap().unwrap();
    assert!(
        listed.contains("set sg_app_members {") && listed.contains("elements = { 10.0.0.1 }"),
        "{listed}"
    );
    assert!(udp_reaches(lab.g("g1"), db, 5432), "g1 joined sg-app");

    lab.guests
        .get_mut("g1")
        .unwrap()
        .port
        .group_ids
        .retain(|g| g != "sg-app");
    lab.install(&lab.firewall(groups()));
    assert!(
        udp_blocked(lab.g("g1"), db, 5432),
        "g1 left sg-app: new flows are dropped"
    );
}

#[test]
fn default_group_members_talk_to_each_other_and_others_are_kept_out() {
    let mut lab = lab_or_skip!("default_group_members_talk_to_each_other_and_others_are_kept_out");
    lab.guest("g1", "br0", 1, "vpc-a", &["sg-default"]);
    lab.guest("g2", "br0", 2, "vpc-a", &["sg-default"]);
    lab.guest("g3", "br0", 3, "vpc-a", &["sg-new"]);
    // What hearthd gives a VPC's default group and a new group.
    lab.install(&lab.firewall(vec![
        group(
            "sg-default",
            "vpc-a",
            vec![Rule::all().group("sg-default")],
            allow_all_egress(),
        ),
        group("sg-new", "vpc-a", vec![], allow_all_egress()),
    ]));
    let (g1, g2, g3) = (lab.g("g1"), lab.g("g2"), lab.g("g3"));
    let _echo = (Echo::start(g1, 9), Echo::start(g2, 9), Echo::start(g3, 9));
    assert!(
        ping_reaches(g1, g2.ip()) && ping_reaches(g2, g1.ip()),
        "members ping each other"
    );
    assert!(
        udp_reaches(g1, g2.ip(), 9) && udp_reaches(g2, g1.ip(), 9),
        "members reach each other over UDP"
    );
    assert!(
        ping_blocked(g3, g1.ip()) && udp_blocked(g3, g1.ip(), 9),
        "a non-member cannot reach a member"
    );
    assert!(
        ping_blocked(g1, g3.ip()) && udp_blocked(g1, g3.ip(), 9),
        "a new group admits nothing"
    );
}

#[test]
fn revoking_a_rule_stops_new_flows_at_once_while_tracked_flows_continue() {
    let mut lab = lab_or_skip!("revoking_a_rule_stops_new_flows_at_once_while_tracked_flows_continue");
    lab.guest("g1", "br0", 1, "vpc-a", &["sg-client"]);
    lab.guest("g2", "br0", 2, "vpc-a", &["sg-server"]);
    let groups = |ingress: Vec<Rule>| {
        vec![
            group("sg-server", "vpc-a", ingress, allow_all_egress()),
            group("sg-client", "vpc-a", vec![], allow_all_egress()),
        ]
    };
    lab.install(&lab.firewall(groups(vec![
        Rule::new(Protocol::Udp, 7000, 7000).cidr(cidr("10.0.0.0/24")),
    ])));
    let (g1, g2) = (lab.g("g1"), lab.g("g2"));
    let _echo = Echo::start(g2, 7000);
    let mut tracked = Flow::open(g1, 40000, g2.ip(), 7000);
    assert!(tracked.exchange(Duration::from_secs(2)), "the flow starts");

    // The first datagram of a new flow leaves as soon as the apply returns.
    let apply = lab.install(&lab.firewall(groups(vec![])));
    let new_flow_blocked = udp_blocked(g1, g2.ip(), 7000);
    for _ in 0..20 {
        tracked.exchange(Duration::from_millis(200));
    }
    let (sent, lost) = tracked.lost(Duration::from_secs(2));
    println!(
        "revoke: nft apply took {apply:?}; the next new flow {}; the tracked flow lost {lost} of the {sent} \
         requests it sent before and after",
        if new_flow_blocked { "was dropped" } else { "passed" }
    );
    assert!(apply < Duration::from_secs(1), "apply took {apply:?}");
    assert!(new_flow_blocked, "a new flow after the revoke is dropped");
    // EC2: revoking a rule does not interrupt flows already tracked by it.
    assert_eq!(
        lost, 0,
        "the tracked flow continues (conntrack entry, as EC2's tracked connections)"
    );
    // A different source port is a new flow.
    assert!(!udp_probe_from(g1, 40001, g2.ip(), 7000, Duration::from_millis(300)));
}

#[test]
fn spoofed_frames_from_a_guest_are_dropped() {
    let mut lab = lab_or_skip!("spoofed_frames_from_a_guest_are_dropped");
    lab.guest("g1", "br0", 1, "vpc-a", &["sg-open"]);
    lab.guest("g2", "br0", 2, "vpc-a", &["sg-open"]);
    // Everything is allowed, so whatever is dropped is dropped by anti-spoofing.
    lab.install(&lab.firewall(vec![group(
        "sg-open",
        "vpc-a",
        vec![Rule::all().cidr(cidr("0.0.0.0/0"))],
        allow_all_egress(),
    )]));
    let (g1, g2) = (lab.g("g1"), lab.g("g2"));
    let (mac1, mac2, ip1, ip2) = (g1.mac(), g2.mac(), g1.ip(), g2.ip());
    let other_mac = hearth_net::MacAddr([2, 0, 0, 0, 0x99, 0x99]);
    let other_ip = Ipv4Addr::new(10, 0, 0, 99);
    let sniffer = Sniffer::start(g2);
    let cases: Vec<(&str, bool, Vec<u8>)> = vec![
        (
            "genuine UDP",
            true,
            udp_frame((mac1, mac2), (ip1, ip2), (5000, 9), b"m-genuine"),
        ),
        (
            "UDP from another MAC",
            false,
            udp_frame((other_mac, mac2), (ip1, ip2), (5000, 9), b"m-mac"),
        ),
        (
            "UDP from another IP",
            false,
            udp_frame((mac1, mac2), (other_ip, ip2), (5000, 9), b"m-ip"),
        ),
        (
            "DHCP discovery",
            true,
            udp_frame(
                (mac1, hearth_net::MacAddr([0xff; 6])),
                (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST),
                (68, 67),
                b"m-dhcp-discover",
            ),
        ),
        (
            "DHCP server reply",
            false,
            udp_frame((mac1, mac2), (ip1, ip2), (67, 68), b"m-dhcp-offer"),
        ),
        ("genuine ARP", true, arp_frame(mac1, (mac1, ip1), ip2, b"m-arp-genuine")),
        (
            "ARP for another IP",
            false,
            arp_frame(mac1, (mac1, other_ip), ip2, b"m-arp-ip"),
        ),
        (
            "ARP for another MAC",
            false,
            arp_frame(mac1, (other_mac, ip1), ip2, b"m-arp-mac"),
        ),
        (
            "ARP probe",
            true,
            arp_frame(mac1, (mac1, Ipv4Addr::UNSPECIFIED), ip2, b"m-arp-probe"),
        ),
        ("IPv6", false, ipv6_frame(mac1, mac2, b"m-ipv6")),
    ];
    send_frames(g1, &cases.iter().map(|c| c.2.clone()).collect::<Vec<_>>());
    for (what, passes, frame) in &cases {
        let marker = &frame[frame.len() - 5..];
        assert_eq!(
            sniffer.saw(marker),
            *passes,
            "{what}: should {}pass",
            if *passes { "" } else { "not " }
        );
    }

    // The guest's own stack: an address or MAC that is not the port's gets nowhere.
    let _echo = Echo::start(g2, 9);
    assert!(udp_reaches(g1, ip2, 9));
    g1.ip_cmd(&["addr", "flush", "dev", "eth0"]);
    g1.ip_cmd(&["addr", "add", "10.0.0.99/24", "dev", "eth0"]);
    g1.ip_cmd(&[
        "neigh",
        "replace",
        &ip2.to_string(),
        "lladdr",
        &mac2.to_string(),
        "dev",
        "eth0",
    ]);
    assert!(udp_blocked(g1, ip2, 9), "spoofed source address");
    g1.ip_cmd(&["addr", "flush", "dev", "eth0"]);
    g1.ip_cmd(&["addr", "add", "10.0.0.1/24", "dev", "eth0"]);
    assert!(udp_reaches(g1, ip2, 9), "own address again");
    g1.ip_cmd(&["link", "set", "eth0", "address", &other_mac.to_string()]);
    assert!(udp_blocked(g1, ip2, 9) && ping_blocked(g1, ip2), "spoofed MAC");
    g1.ip_cmd(&["link", "set", "eth0", "address", &mac1.to_string()]);
    g1.ip_cmd(&["neigh", "flush", "dev", "eth0"]);
    assert!(ping_reaches(g1, ip2), "own MAC again");
    let listed = lab.nft.current_with_counters().unwrap().unwrap();
    let mac_drops = listed.lines().find(|l| l.contains("ether saddr != @port_mac")).unwrap();
    assert!(!mac_drops.contains("counter packets 0 "), "{mac_drops}");
}

#[test]
fn vpcs_with_the_same_cidr_stay_isolated() {
    let mut lab = lab_or_skip!("vpcs_with_the_same_cidr_stay_isolated");
    lab.bridge("br1");
    lab.guest("a1", "br0", 1, "vpc-a", &["sg-a"]);
    lab.guest("a2", "br0", 2, "vpc-a", &["sg-a"]);
    lab.guest("b1", "br1", 1, "vpc-b", &["sg-b"]);
    lab.guest("b2", "br1", 2, "vpc-b", &["sg-b"]);
    // A port of VPC b on VPC a's bridge, open to everything.
    lab.guest("b3", "br0", 3, "vpc-b", &["sg-b-open"]);
    let mut fw = lab.firewall(vec![
        group(
            "sg-a",
            "vpc-a",
            vec![Rule::new(Protocol::Udp, 7000, 7000).cidr(cidr("10.0.0.0/24"))],
            allow_all_egress(),
        ),
        group("sg-b", "vpc-b", vec![], allow_all_egress()),
        group(
            "sg-b-open",
            "vpc-b",
            vec![Rule::all().cidr(cidr("0.0.0.0/0"))],
            allow_all_egress(),
        ),
    ]);
    fw.vpc_zones.insert("vpc-a".into(), 7);
    fw.vpc_zones.insert("vpc-b".into(), 8);
    lab.install(&fw);
    let (a1, a2, b1, b2, b3) = (lab.g("a1"), lab.g("a2"), lab.g("b1"), lab.g("b2"), lab.g("b3"));
    let _echo = (Echo::start(a2, 7000), Echo::start(b3, 7000));
    let b2_echo = Echo::start(b2, 7000);

    // VPC a: 10.0.0.1:40000 -> 10.0.0.2:7000 is allowed and tracked.
    let mut flow = Flow::open(a1, 40000, a2.ip(), 7000);
    assert!(flow.exchange(Duration::from_secs(2)));
    // VPC b: the very same 5-tuple is not "established" there (conntrack zones), and sg-b admits nothing.
    assert!(!udp_probe_from(b1, 40000, b2.ip(), 7000, Duration::from_millis(300)));
    assert_eq!(b2_echo.count(), 0);
    drop(b2_echo);
    // Nor is the reply direction: 10.0.0.2:7000 -> 10.0.0.1:40000 in VPC b.
    let b1_listens = Echo::start(b1, 40000);
    assert!(!udp_probe_from(b2, 7000, b1.ip(), 40000, Duration::from_millis(300)));
    assert_eq!(b1_listens.count(), 0);
    assert!(flow.exchange(Duration::from_secs(2)), "VPC a's flow is unaffected");

    // Same bridge, different VPCs: dropped whatever the rules allow.
    assert!(
        udp_blocked(a1, b3.ip(), 7000),
        "a -> b on one bridge (b3 admits everything)"
    );
    assert!(
        udp_blocked(b3, a2.ip(), 7000),
        "b -> a on one bridge (sg-a admits 10.0.0.0/24)"
    );
    assert!(ping_blocked(a1, b3.ip()));
    let conntrack = std::fs::read_to_string("/proc/net/nf_conntrack").ok();
    if let Some(table) = conntrack.filter(|t| !t.is_empty()) {
        println!(
            "(host namespace's conntrack visible from here: {} entries)",
            table.lines().count()
        );
    }
}

#[test]
fn a_failing_apply_changes_nothing_and_reports_nfts_error() {
    let mut lab = lab_or_skip!("a_failing_apply_changes_nothing_and_reports_nfts_error");
    lab.guest("g1", "br0", 1, "vpc-a", &["sg-a"]);
    lab.guest("g2", "br0", 2, "vpc-a", &["sg-a"]);
    let fw = |port: i32| {
        lab.firewall(vec![group(
            "sg-a",
            "vpc-a",
            vec![Rule::new(Protocol::Udp, port, port).cidr(cidr("10.0.0.0/24"))],
            allow_all_egress(),
        )])
    };
    lab.install(&fw(7000));
    let before = lab.nft.current().unwrap().unwrap();
    let (g1, g2) = (lab.g("g1"), lab.g("g2"));
    let _echo = (Echo::start(g2, 7000), Echo::start(g2, 7001));

    // The next ruleset (UDP 7001 instead of 7000) with one bad rule in it.
    let good = hearth_net::compile(&fw(7001)).unwrap();
    let bad = good.replace("udp dport 7001 ", "udp dport 70000 ");
    assert_ne!(good, bad);
    let error = lab.nft.apply(&bad).unwrap_err();
    let NftError::Rejected { stderr, .. } = &error else {
        panic!("{error}");
    };
    println!("nft's error: {stderr}");
    assert!(stderr.contains("Error:") && stderr.contains("70000"), "{stderr}");
    assert_eq!(
        lab.nft.current().unwrap().unwrap(),
        before,
        "the previous ruleset is intact"
    );
    assert!(udp_reaches(g1, g2.ip(), 7000), "the previous rules still apply");
    assert!(udp_blocked(g1, g2.ip(), 7001), "nothing of the failed ruleset applies");

    // A rule the parser accepts but the kernel refuses (a jump to a missing chain) fails the same way.
    let bad = good.replace(
        "\t\tjump sg_a_ingress\n",
        "\t\tjump sg_a_ingress\n\t\tjump no_such_chain\n",
    );
    assert!(matches!(lab.nft.apply(&bad), Err(NftError::Rejected { .. })));
    assert_eq!(lab.nft.current().unwrap().unwrap(), before);

    lab.nft.apply(&good).unwrap();
    assert!(udp_reaches(g1, g2.ip(), 7001), "the good ruleset applies");
}

#[test]
fn the_host_reaches_a_port_only_as_its_ingress_rules_allow() {
    let mut lab = lab_or_skip!("the_host_reaches_a_port_only_as_its_ingress_rules_allow");
    lab.host_ip(&["addr", "add", "10.0.0.254/24", "dev", "br0"]);
    lab.guest("g1", "br0", 1, "vpc-a", &["sg-a"]);
    let fw = |ingress: Vec<Rule>| lab.firewall(vec![group("sg-a", "vpc-a", ingress, allow_all_egress())]);
    lab.install(&fw(vec![]));
    let g1 = lab.g("g1");
    let host_pings = || {
        lab.host
            .command("ping")
            .unwrap()
            .args(["-c3", "-i0.2", "-W1", "-q", "10.0.0.1"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(
        ping_reaches(g1, Ipv4Addr::new(10, 0, 0, 254)),
        "port -> host: egress allows, the reply is tracked"
    );
    assert!(!host_pings(), "host -> port: no ingress rule");
    lab.install(&fw(vec![Rule::new(Protocol::Icmp, -1, -1).cidr(cidr("10.0.0.254/32"))]));
    assert!(host_pings(), "host -> port: ICMP from the host allowed");
    lab.install(&lab.firewall(vec![group("sg-a", "vpc-a", vec![], vec![])]));
    assert!(
        ping_blocked(g1, Ipv4Addr::new(10, 0, 0, 254)),
        "port -> host: no egress rule"
    );
}

#[test]
fn replacing_the_ruleset_100_times_under_load_loses_nothing() {
    let mut lab = lab_or_skip!("replacing_the_ruleset_100_times_under_load_loses_nothing");
    lab.guest("g1", "br0", 1, "vpc-a", &["sg-a"]);
    lab.guest("g2", "br0", 2, "vpc-a", &["sg-a"]);
    // Two rulesets that both allow g1 <-> g2, differing in an unrelated rule: every apply really
    // replaces the tables.
    let fw = |extra: i32| {
        lab.firewall(vec![group(
            "sg-a",
            "vpc-a",
            vec![
                Rule::new(Protocol::Udp, 7000, 7000).group("sg-a"),
                Rule::new(Protocol::Icmp, -1, -1).group("sg-a"),
                Rule::new(Protocol::Tcp, extra, extra).cidr(cidr("192.168.0.0/16")),
            ],
            allow_all_egress(),
        )])
    };
    lab.install(&fw(1));
    let scripts = [
        hearth_net::compile(&fw(1)).unwrap(),
        hearth_net::compile(&fw(2)).unwrap(),
    ];
    let (g1, g2) = (lab.g("g1"), lab.g("g2"));
    let _echo = Echo::start(g2, 7000);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let stopped = || stop.load(std::sync::atomic::Ordering::Relaxed);

    let (tracked, fresh, pings, applies) = std::thread::scope(|scope| {
        // One long UDP flow (established path), request/response. A request counts as lost only if its
        // echo never comes (the machine may stall a thread for a while; that is not a drop).
        let tracked = scope.spawn(|| {
            let mut flow = Flow::open(g1, 41000, g2.ip(), 7000);
            while !stopped() {
                flow.exchange(Duration::from_millis(500));
            }
            flow.lost(Duration::from_secs(2))
        });
        // A new UDP flow per request (each one is judged by the rules).
        let fresh = scope.spawn(|| {
            let (mut sent, mut lost) = (0, 0);
            while !stopped() {
                sent += 1;
                lost += usize::from(!udp_probe_from(g1, 0, g2.ip(), 7000, Duration::from_secs(3)));
            }
            (sent, lost)
        });
        // A ping flood.
        let pings = scope.spawn(|| {
            let child = g1
                .ns
                .command("ping")
                .unwrap()
                .args(["-f", "-q", "-W", "1", &g2.ip().to_string()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            while !stopped() {
                std::thread::sleep(Duration::from_millis(10));
            }
            // SIGINT: ping prints its summary and exits.
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let output = child.wait_with_output().unwrap();
            String::from_utf8_lossy(&output.stdout).into_owned()
        });
        std::thread::sleep(Duration::from_millis(200));
        let mut applies = Vec::new();
        for i in 0..100 {
            let start = Instant::now();
            lab.nft.apply(&scripts[i % 2]).unwrap();
            applies.push(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (
            tracked.join().unwrap(),
            fresh.join().unwrap(),
            pings.join().unwrap(),
            applies,
        )
    });
    let mut sorted = applies.clone();
    sorted.sort();
    let summary = pings
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("")
        .to_string();
    println!(
        "100 applies: median {:?}, max {:?}; tracked UDP flow {}/{} lost; new UDP flows {}/{} lost; ping -f: {}",
        sorted[50], sorted[99], tracked.1, tracked.0, fresh.1, fresh.0, summary
    );
    assert!(
        tracked.0 > 100 && fresh.0 > 100,
        "enough traffic ran during the applies"
    );
    assert_eq!(tracked.1, 0, "tracked flow lost requests");
    assert_eq!(fresh.1, 0, "new flows lost requests");
    // "N packets transmitted, M received, …": one echo request may still be in flight when SIGINT stops
    // ping, and counts as lost; that is ping's accounting, not the firewall's.
    let counts: Vec<u64> = summary
        .split(',')
        .filter_map(|part| part.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(counts.len() >= 2 && counts[0] > 1000, "ping -f: {summary}");
    assert!(counts[0] - counts[1] <= 1, "ping -f lost replies: {summary}");
}

#[test]
fn bridge_family_conntrack_availability_is_reported() {
    let lab = lab_or_skip!("bridge_family_conntrack_availability_is_reported");
    let supported = lab.nft.bridge_conntrack_supported().unwrap();
    println!("ct state in the bridge family (nf_conntrack_bridge): {supported}");
    let config = std::process::Command::new("sh")
        .args([
            "-c",
            "zcat /proc/config.gz 2>/dev/null | grep '^CONFIG_NF_CONNTRACK_BRIDGE='",
        ])
        .output()
        .unwrap();
    let config = String::from_utf8_lossy(&config.stdout);
    if config.contains("=y") {
        assert!(supported, "the kernel is built with CONFIG_NF_CONNTRACK_BRIDGE=y");
    }
    if std::path::Path::new("/proc/config.gz").exists() && config.is_empty() {
        assert!(!supported, "the kernel is built without CONFIG_NF_CONNTRACK_BRIDGE");
    }
    // Either way hearth's ruleset loads: it does not use ct in the bridge family.
    lab.nft.apply(&hearth_net::compile(&sample()).unwrap()).unwrap();
    let _ = Nft::host(); // the probe never touches the host (nft -c): nothing to clean
}
