//! Two benchmarks of hearth's network path, each against a baseline measured in the same run:
//!
//! - Applying 1,000 security-group rules on 100 ports: hearth's nft batch against the same ruleset through
//!   `iptables-restore` (per-port chains reached with physdev matches, as OpenStack Neutron's hybrid iptables
//!   firewall builds them), in a scratch network namespace.
//! - UDP echo round trip (`netbench/rtt.rs`): from a client namespace through a veth pair, a bridge, hearth's ruleset
//!   (br_netfilter, conntrack) and a tap to the probe guest (`images/probe`, `probe.ops=net-echo`) run by
//!   `hearth-vmm`, against a plain veth pair between two namespaces with an echo thread at the far end, no
//!   bridge and no firewall: median and 99th percentile of 2,000 sequential round trips, and their ratio.
//!   A third row runs the same VM and bridge without the ruleset, which separates the firewall's share from
//!   the VM's (on nested KVM the VM dominates).
//!   The probe VM needs `/dev/kvm` and the paths `HEARTH_VMM` (`hearth-vmm`) and `HEARTH_PROBE` (the probe,
//!   `scripts/build-probe` prints it); without them these rows are skipped, saying why.
//!
//! `cargo run --release -p hearth-net --example netbench [RUNS]` prints one JSON line on stdout (nft:
//! medians of RUNS runs in milliseconds; round trips in microseconds) and a table on stderr;
//! `scripts/bench net` builds what it needs and runs it. Needs root, `ip` and `nft`; `iptables-restore` and
//! `iptables-legacy-restore` are measured when installed. `--print-nft` / `--print-iptables` print the two
//! rulesets instead. Every namespace is deleted and the VMM killed on the way out, errors and SIGINT/SIGTERM
//! included.

#[path = "netbench/rtt.rs"]
mod rtt;

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

/// What applying the ruleset cost.
struct Apply {
    rules: usize,
    runs: usize,
    compile_ms: f64,
    nft_ms: f64,
    restore_ms: Option<f64>,
    legacy_ms: Option<f64>,
    script_lines: usize,
    script_bytes: usize,
    iptables_lines: usize,
}

/// Runs the ruleset measurements in `netns`.
fn measure(netns: &Netns, runs: usize) -> Result<Apply, String> {
    let nft = Nft::in_netns(netns.name());
    let fw = firewall();
    let rules: usize = fw.groups.iter().map(|g| g.ingress.len() + g.egress.len()).sum();

    let start = Instant::now();
    let script = hearth_net::compile(&fw).map_err(|e| e.to_string())?;
    let compile_ms = start.elapsed().as_secs_f64() * 1000.0;
    let mut nft_times = Vec::new();
    for _ in 0..runs {
        rtt::interrupted()?;
        let start = Instant::now();
        nft.apply(&script).map_err(|e| e.to_string())?;
        nft_times.push(start.elapsed());
    }
    let nft_ms = median(nft_times);
    nft.remove().map_err(|e| e.to_string())?;

    let iptables = iptables_ruleset(&fw);
    let restore_ms = time_restore(netns, "iptables-restore", &iptables, runs)?;
    let legacy_ms = time_restore(netns, "iptables-legacy-restore", &iptables, runs)?;
    Ok(Apply {
        rules,
        runs,
        compile_ms,
        nft_ms,
        restore_ms,
        legacy_ms,
        script_lines: script.lines().count(),
        script_bytes: script.len(),
        iptables_lines: iptables.lines().count(),
    })
}

/// The table, on stderr.
fn print_table(apply: &Apply, rtt: &rtt::Outcome) {
    let Apply {
        rules, runs, nft_ms, ..
    } = *apply;
    eprintln!("| {rules} rules on {PORTS} ports, median of {runs} | ms | vs nft |");
    eprintln!("|---|---|---|");
    eprintln!("| hearth-net compile | {:.2} | |", apply.compile_ms);
    eprintln!("| nft -f (hearth-net, one transaction) | {nft_ms:.2} | 1.0 |");
    for (name, value) in [
        ("iptables-restore", apply.restore_ms),
        ("iptables-legacy-restore", apply.legacy_ms),
    ] {
        match value {
            Some(ms) => eprintln!("| {name} | {ms:.2} | {:.2} |", ms / nft_ms),
            None => eprintln!("| {name} | not installed | |"),
        }
    }
    if let rtt::Outcome::Measured { veth, hearth, bare } = rtt {
        eprintln!(
            "| **UDP echo round trip, {} sequential after {} warm-up, {} B** | **µs, median / p99** | **vs veth** |",
            rtt::SAMPLES,
            rtt::WARMUP,
            rtt::PAYLOAD
        );
        eprintln!(
            "| veth pair, no bridge, no firewall (echo thread) | {:.1} / {:.1} | 1.0 |",
            veth.median_us, veth.p99_us
        );
        eprintln!(
            "| probe VM: veth + bridge + nftables (br_netfilter, conntrack) + tap | {:.1} / {:.1} | {:.2} / {:.2} |",
            hearth.median_us,
            hearth.p99_us,
            hearth.median_us / veth.median_us,
            hearth.p99_us / veth.p99_us
        );
        eprintln!(
            "| same probe VM and bridge, no ruleset (the VM's share) | {:.1} / {:.1} | {:.2} / {:.2} |",
            bare.median_us,
            bare.p99_us,
            bare.median_us / veth.median_us,
            bare.p99_us / veth.p99_us
        );
        eprintln!(
            "| the ruleset's share: with / without, same VM | | {:.2} / {:.2} |",
            hearth.median_us / bare.median_us,
            hearth.p99_us / bare.p99_us
        );
    }
    eprintln!(
        "(nft script: {} lines, {} bytes; iptables-restore input: {} lines)",
        apply.script_lines, apply.script_bytes, apply.iptables_lines
    );
    match rtt {
        rtt::Outcome::Measured { veth, hearth, bare } => {
            for (path, lost) in [
                ("veth", veth.lost),
                ("probe VM", hearth.lost),
                ("probe VM, no ruleset", bare.lost),
            ] {
                if lost > 0 {
                    eprintln!("({path}: {lost} echoes lost, left out of the samples)");
                }
            }
        }
        rtt::Outcome::Skipped(why) => eprintln!("(UDP echo round-trip rows skipped: {why})"),
        rtt::Outcome::Failed(_) => {}
    }
}

/// The JSON line: milliseconds for the ruleset, microseconds for round trips (null when skipped).
fn json(apply: &Apply, rtt: &rtt::Outcome) -> String {
    let num = |v: Option<f64>, digits: usize| v.map_or("null".to_string(), |v| format!("{v:.digits$}"));
    let (veth, hearth, bare) = match rtt {
        rtt::Outcome::Measured { veth, hearth, bare } => (Some(*veth), Some(*hearth), Some(*bare)),
        _ => (None, None, None),
    };
    let skipped = match rtt {
        rtt::Outcome::Skipped(why) => serde_json::to_string(why).unwrap_or_else(|_| "\"?\"".into()),
        _ => "null".into(),
    };
    let ratio = |f: fn(&rtt::Rtt) -> f64| num(veth.zip(hearth).map(|(veth, hearth)| f(&hearth) / f(&veth)), 2);
    format!(
        "{{\"nft_ms\":{:.2},\"iptables_restore_ms\":{},\"iptables_legacy_restore_ms\":{},\
         \"compile_ms\":{:.2},\"rules\":{},\"ports\":{PORTS},\"runs\":{},\
         \"veth_rtt_median_us\":{},\"veth_rtt_p99_us\":{},\"hearth_rtt_median_us\":{},\"hearth_rtt_p99_us\":{},\
         \"rtt_ratio_median\":{},\"rtt_ratio_p99\":{},\"bare_rtt_median_us\":{},\"bare_rtt_p99_us\":{},\
         \"rtt_samples\":{},\"rtt_warmup\":{},\
         \"rtt_payload_bytes\":{},\"rtt_skipped\":{skipped}}}",
        apply.nft_ms,
        num(apply.restore_ms, 2),
        num(apply.legacy_ms, 2),
        apply.compile_ms,
        apply.rules,
        apply.runs,
        num(veth.map(|r| r.median_us), 1),
        num(veth.map(|r| r.p99_us), 1),
        num(hearth.map(|r| r.median_us), 1),
        num(hearth.map(|r| r.p99_us), 1),
        ratio(|r| r.median_us),
        ratio(|r| r.p99_us),
        num(bare.map(|r| r.median_us), 1),
        num(bare.map(|r| r.p99_us), 1),
        rtt::SAMPLES,
        rtt::WARMUP,
        rtt::PAYLOAD,
    )
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
    rtt::catch_signals();
    // No panics past this point: release builds abort, and namespaces must be deleted, processes killed.
    let apply = Netns::create(&format!("hearth-netbench-{}", std::process::id()))
        .map_err(|e| format!("scratch namespace: {e}"))
        .and_then(|netns| measure(&netns, runs.max(1)));
    let apply = match apply {
        Ok(apply) => apply,
        Err(e) => {
            eprintln!("netbench: {e}");
            std::process::exit(1);
        }
    };
    let rtt = match rtt::interrupted() {
        Ok(()) => rtt::measure(),
        Err(e) => rtt::Outcome::Failed(e),
    };
    print_table(&apply, &rtt);
    if let rtt::Outcome::Failed(e) = &rtt {
        eprintln!("netbench: UDP echo round trip: {e}");
        std::process::exit(1);
    }
    println!("{}", json(&apply, &rtt));
}
