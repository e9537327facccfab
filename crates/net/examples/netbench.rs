//! Applying 1,000 security-group rules on 100 ports: hearth's nft batch against the same ruleset
//! through `iptables-restore` (per-port chains reached with physdev matches, as OpenStack Neutron's
//! hybrid iptables firewall builds them). Everything runs in a scratch network namespace.
//!
//! `cargo run --release -p hearth-net --example netbench [RUNS]` prints one JSON line on stdout
//! (medians in milliseconds) and a table on stderr. Needs root, `ip` and `nft`; `iptables-restore` and
//! `iptables-legacy-restore` are measured when installed. `--print-nft` / `--print-iptables` print the
//! two rulesets instead.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hearth_net::netns::Netns;
use hearth_net::{HostFirewall, Ipv4Cidr, MacAddr, Nft, Port, Protocol, Rule, SecurityGroup};

const PORTS: usize = 100;

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().unwrap()
}

/// 100 ports, each with its own group of 9 ingress rules and 1 egress rule: 1,000 rules.
fn firewall() -> HostFirewall {
    let mut ports = Vec::new();
    let mut groups = Vec::new();
    for i in 0..PORTS {
        let id = format!("sg-{i:04}");
        ports.push(Port {
            tap: format!("tap{i}"),
            mac: MacAddr([2, 0, 0, 0, (i >> 8) as u8, i as u8]),
            ipv4: Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250 + 2) as u8),
            vpc_id: format!("vpc-{}", i % 4),
            group_ids: vec![id.clone()],
        });
        groups.push(SecurityGroup {
            id,
            vpc_id: format!("vpc-{}", i % 4),
            ingress: vec![
                Rule::new(Protocol::Tcp, 22, 22).cidr(cidr("10.0.0.0/8")),
                Rule::new(Protocol::Tcp, 80, 80).cidr(cidr("0.0.0.0/0")),
                Rule::new(Protocol::Tcp, 443, 443).cidr(cidr("0.0.0.0/0")),
                Rule::new(Protocol::Tcp, 8000, 8100).cidr(cidr("192.168.0.0/16")),
                Rule::new(Protocol::Udp, 53, 53).cidr(cidr("10.0.0.0/8")),
                Rule::new(Protocol::Udp, 5000, 5100).cidr(cidr("172.16.0.0/12")),
                Rule::new(Protocol::Icmp, 8, -1).cidr(cidr("0.0.0.0/0")),
                Rule::new(Protocol::Icmp, 3, 4).cidr(cidr("0.0.0.0/0")),
                Rule::new(Protocol::Tcp, 3306, 3306).cidr(Ipv4Cidr::new(Ipv4Addr::new(10, 1, 2, i as u8), 32).unwrap()),
            ],
            egress: vec![Rule::all().cidr(cidr("0.0.0.0/0"))],
            remote_members: Vec::new(),
        });
    }
    HostFirewall {
        ports,
        groups,
        ..Default::default()
    }
}

/// The same ruleset for `iptables-restore`: conntrack zones in `raw`, and in `filter` per-port ingress,
/// egress and anti-spoofing chains reached from FORWARD through physdev matches (Neutron's layout).
fn iptables_ruleset(fw: &HostFirewall) -> String {
    let mut raw = String::from("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    let mut filter = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    let mut rules = String::new();
    filter.push_str(":hearth-fwd - [0:0]\n");
    rules.push_str("-A FORWARD -j hearth-fwd\n");
    for (i, port) in fw.ports.iter().enumerate() {
        let tap = &port.tap;
        let zone = port.vpc_id.trim_start_matches("vpc-").parse::<u16>().unwrap() + 1;
        raw.push_str(&format!(
            "-A PREROUTING -m physdev --physdev-in {tap} -j CT --zone {zone}\n"
        ));
        let (ingress, egress, spoof) = (format!("hearth-i{i}"), format!("hearth-o{i}"), format!("hearth-s{i}"));
        for chain in [&ingress, &egress, &spoof] {
            filter.push_str(&format!(":{chain} - [0:0]\n"));
        }
        rules.push_str(&format!(
            "-A hearth-fwd -m physdev --physdev-out {tap} --physdev-is-bridged -j {ingress}\n\
             -A hearth-fwd -m physdev --physdev-in {tap} --physdev-is-bridged -j {egress}\n\
             -A {ingress} -m state --state RELATED,ESTABLISHED -j RETURN\n\
             -A {ingress} -m state --state INVALID -j DROP\n"
        ));
        let group = fw.groups.iter().find(|g| g.id == port.group_ids[0]).unwrap();
        for rule in &group.ingress {
            let source = &rule.sources[0];
            let matches = match (rule.protocol, rule.from_port, rule.to_port) {
                (Protocol::Tcp | Protocol::Udp, from, to) => {
                    let p = if rule.protocol == Protocol::Tcp { "tcp" } else { "udp" };
                    let ports = if from == to {
                        format!("{from}")
                    } else {
                        format!("{from}:{to}")
                    };
                    format!("-p {p} -m {p} --dport {ports}")
                }
                (Protocol::Icmp, kind, -1) => format!("-p icmp -m icmp --icmp-type {kind}"),
                (Protocol::Icmp, kind, code) => format!("-p icmp -m icmp --icmp-type {kind}/{code}"),
                _ => String::new(),
            };
            rules.push_str(&format!("-A {ingress} -s {source} {matches} -j RETURN\n"));
        }
        rules.push_str(&format!(
            "-A {ingress} -j DROP\n\
             -A {egress} -j {spoof}\n\
             -A {egress} -m state --state RELATED,ESTABLISHED -j RETURN\n\
             -A {egress} -m state --state INVALID -j DROP\n\
             -A {egress} -j RETURN\n\
             -A {spoof} -s 0.0.0.0/32 -d 255.255.255.255/32 -p udp -m udp --sport 68 --dport 67 -j RETURN\n\
             -A {spoof} -s {ip}/32 -m mac --mac-source {mac} -j RETURN\n\
             -A {spoof} -j DROP\n",
            ip = port.ipv4,
            mac = port.mac,
        ));
    }
    raw.push_str("COMMIT\n");
    format!("{raw}{filter}{rules}COMMIT\n")
}

fn median(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1000.0
}

/// Median wall time of `runs` runs of `program` (in `netns`) with `input` on stdin; `Ok(None)` if the
/// program is not installed.
fn time_restore(netns: &Netns, program: &str, input: &str, runs: usize) -> Result<Option<f64>, String> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let mut command = netns.command(program).map_err(|e| e.to_string())?;
        let spawned = command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(mut child) = spawned else {
            return Ok(None);
        };
        let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
        let output = child.wait_with_output().map_err(|e| format!("{program}: {e}"))?;
        times.push(start.elapsed());
        if !output.status.success() {
            return Err(format!("{program}: {}", String::from_utf8_lossy(&output.stderr)));
        }
    }
    Ok(Some(median(times)))
}

/// Runs the measurements in `netns` and returns the JSON line.
fn measure(netns: &Netns, runs: usize) -> Result<String, String> {
    let nft = Nft::in_netns(netns.name());
    let fw = firewall();
    let rules: usize = fw.groups.iter().map(|g| g.ingress.len() + g.egress.len()).sum();

    let start = Instant::now();
    let script = hearth_net::compile(&fw).map_err(|e| e.to_string())?;
    let compile_ms = start.elapsed().as_secs_f64() * 1000.0;
    let mut nft_times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        nft.apply(&script).map_err(|e| e.to_string())?;
        nft_times.push(start.elapsed());
    }
    let nft_ms = median(nft_times);
    nft.remove().map_err(|e| e.to_string())?;

    let iptables = iptables_ruleset(&fw);
    let restore_ms = time_restore(netns, "iptables-restore", &iptables, runs)?;
    let legacy_ms = time_restore(netns, "iptables-legacy-restore", &iptables, runs)?;
    let json = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.2}"));
    eprintln!("| {rules} rules on {PORTS} ports, median of {runs} | ms | vs nft |");
    eprintln!("|---|---|---|");
    eprintln!("| hearth-net compile | {compile_ms:.2} | |");
    eprintln!("| nft -f (hearth-net, one transaction) | {nft_ms:.2} | 1.0 |");
    for (name, value) in [("iptables-restore", restore_ms), ("iptables-legacy-restore", legacy_ms)] {
        match value {
            Some(ms) => eprintln!("| {name} | {ms:.2} | {:.2} |", ms / nft_ms),
            None => eprintln!("| {name} | not installed | |"),
        }
    }
    eprintln!(
        "(nft script: {} lines, {} bytes; iptables-restore input: {} lines)",
        script.lines().count(),
        script.len(),
        iptables.lines().count()
    );
    Ok(format!(
        "{{\"nft_ms\":{nft_ms:.2},\"iptables_restore_ms\":{},\"iptables_legacy_restore_ms\":{},\
         \"compile_ms\":{compile_ms:.2},\"rules\":{rules},\"ports\":{PORTS},\"runs\":{runs}}}",
        json(restore_ms),
        json(legacy_ms)
    ))
}

fn main() {
    let arg = std::env::args().nth(1);
    if let Some(which @ ("--print-nft" | "--print-iptables")) = arg.as_deref() {
        let fw = firewall();
        let text = if which == "--print-nft" {
            hearth_net::compile(&fw).unwrap()
        } else {
            iptables_ruleset(&fw)
        };
        print!("{text}");
        return;
    }
    let runs: usize = arg.map(|a| a.parse().expect("RUNS: a number of runs")).unwrap_or(5);
    let netns = Netns::create(&format!("hearth-netbench-{}", std::process::id())).expect("scratch namespace");
    // No panics past this point: release builds abort, and the namespace must be deleted.
    let result = measure(&netns, runs.max(1));
    drop(netns);
    match result {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("netbench: {e}");
            std::process::exit(1);
        }
    }
}
