//! A network lab for whole-stack networking tests: hearthd on the test's data directory, and
//! each "host" a network namespace of its own running a `hearth-agent` with networking on.
//! An "internet" namespace stands in for the hosts' uplink network (198.51.100.0/24, its
//! router at .1) and carries their underlay network (192.0.2.0/24) for VXLAN. Nothing is
//! routed to the machine's real interfaces. Dropping the lab kills every agent and VMM it
//! started and deletes its namespaces, with every bridge, tap and nftables table in them.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hearth_net::netns::Netns;

use crate::{binary, AgentMode, Cloud};

/// The zone of every lab host.
pub const ZONE: &str = "homelab-1a";
/// Elastic IPs come from here (hearthd `--public-ip-pool`).
pub const PUBLIC_POOL: &str = "198.51.100.0/25";
/// The internet's router on the uplink network.
pub const INTERNET_ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

static LABS: AtomicU32 = AtomicU32::new(0);

/// One host: a namespace with an agent.
pub struct LabHost {
    pub netns: Netns,
    pub host_id: String,
    pub dir: PathBuf,
    pub underlay_ip: Ipv4Addr,
    agent: Option<Child>,
}

impl LabHost {
    /// The instance's console log on this host ("" if it does not run here).
    pub fn console(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.join("run").join(id).join("console.log")).unwrap_or_default()
    }

    fn vmm_pids(&self) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("run")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read_to_string(e.path().join("pid")).ok())
            .filter_map(|p| p.trim().parse().ok())
            .collect()
    }
}

/// A namespace attached to a subnet's bridge on a host, with an address of its own: the
/// tests' vantage point inside a VPC (an appliance on the subnet, not an instance port, so
/// only the instances' ingress rules judge its traffic).
pub struct Client {
    pub netns: Netns,
    pub ip: Ipv4Addr,
}

impl Client {
    /// Sends `payload` over UDP to `to` and waits up to `timeout` for one answer.
    pub fn udp(&self, to: SocketAddrV4, payload: &[u8], timeout: Duration) -> Option<Vec<u8>> {
        let payload = payload.to_vec();
        self.netns
            .run(move || {
                let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
                socket.set_read_timeout(Some(timeout)).ok()?;
                socket.send_to(&payload, to).ok()?;
                let mut buf = [0u8; 2048];
                let (n, _) = socket.recv_from(&mut buf).ok()?;
                Some(buf[..n].to_vec())
            })
            .ok()
            .flatten()
    }

    /// Sends a UDP command to the probe at `ip` from our port `from` (one flow, for conntrack,
    /// however many times it is called) and returns its answer as text.
    pub fn command_from(&self, from: u16, ip: Ipv4Addr, command: &str) -> Option<String> {
        let payload = command.as_bytes().to_vec();
        self.netns
            .run(move || {
                let socket = UdpSocket::bind(("0.0.0.0", from)).ok()?;
                socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                socket.send_to(&payload, SocketAddrV4::new(ip, 7)).ok()?;
                let mut buf = [0u8; 2048];
                let (n, _) = socket.recv_from(&mut buf).ok()?;
                Some(String::from_utf8_lossy(&buf[..n]).into_owned())
            })
            .ok()
            .flatten()
    }

    /// Sends a UDP command to the probe at `ip` and returns its answer as text.
    pub fn command(&self, ip: Ipv4Addr, command: &str) -> Option<String> {
        self.udp(SocketAddrV4::new(ip, 7), command.as_bytes(), Duration::from_secs(4))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// Sends a UDP command to the probe at `ip`, port `port` (its `send` answers from there).
    pub fn command_on(&self, ip: Ipv4Addr, port: u16, command: &str) -> Option<String> {
        self.udp(SocketAddrV4::new(ip, port), command.as_bytes(), Duration::from_secs(4))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// Whether a UDP echo to `ip:port` comes back within `timeout`.
    pub fn echoes(&self, ip: Ipv4Addr, port: u16, timeout: Duration) -> bool {
        let payload = b"hearth-echo";
        self.udp(SocketAddrV4::new(ip, port), payload, timeout).as_deref() == Some(payload)
    }

    /// Polls `echoes` until it is `want`, up to `limit`; returns how long that took.
    pub fn until_echo(&self, ip: Ipv4Addr, port: u16, want: bool, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.echoes(ip, port, Duration::from_millis(150)) == want {
                return Some(start.elapsed());
            }
        }
        None
    }
}

/// Starts the agent of a lab host in its namespace (appending to its `agent.log`).
fn spawn_agent(cloud: &Cloud, netns: &str, dir: &std::path::Path, host_id: &str, underlay_ip: Ipv4Addr) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"))
        .unwrap();
    Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(binary("hearth-agent"))
        .arg("--hearthd")
        .arg(format!("unix:{}", cloud.socket().display()))
        .arg("--token-file")
        .arg(cloud.dir.join("agent-token"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--volume-dir")
        .arg(dir.join("volumes"))
        .args([
            "--host-id",
            host_id,
            "--az",
            ZONE,
            "--vcpus",
            "16",
            "--memory-mib",
            "8192",
        ])
        .args(["--underlay-ip", &underlay_ip.to_string(), "--underlay-dev", "u0"])
        .args(["--uplink", "up0", "--uplink-gateway", &INTERNET_ROUTER.to_string()])
        .arg("--vmm")
        .arg(binary("hearth-vmm"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn hearth-agent in its namespace")
}

/// hearthd and its hosts.
pub struct Lab {
    pub cloud: Cloud,
    pub hosts: Vec<LabHost>,
    pub internet: Netns,
    clients: Vec<Client>,
    prefix: String,
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Lab {
    /// hearthd with a public pool and `hosts` hosts in one zone, all synced.
    pub fn start(hosts: usize) -> Lab {
        Lab::start_with(hosts, &[])
    }

    /// [`Lab::start`] where hearthd also reaches host 0's files (as when its agent runs on
    /// hearthd's machine): snapshots of its volumes and console output go through hearthd.
    pub fn start_with_local_host(hosts: usize) -> Lab {
        Lab::start_with(
            hosts,
            &[
                "--agent-run-dir",
                "{dir}/host0/run",
                "--agent-volume-dir",
                "{dir}/host0/volumes",
            ],
        )
    }

    fn start_with(hosts: usize, hearthd_args: &[&str]) -> Lab {
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("hl{}x{n}", std::process::id() % 100_000);
        let mut args = vec!["--public-ip-pool", PUBLIC_POOL];
        args.extend_from_slice(hearthd_args);
        let cloud = Cloud::start_with_hearthd_args(AgentMode::External, &args);
        let internet = Netns::create(&format!("{prefix}-inet")).expect("create the internet namespace");
        let inet = internet.name().to_string();
        ip(&["-n", &inet, "link", "set", "lo", "up"]);
        ip(&["-n", &inet, "link", "add", "br-inet", "type", "bridge"]);
        ip(&["-n", &inet, "addr", "add", "198.51.100.1/24", "dev", "br-inet"]);
        ip(&["-n", &inet, "link", "set", "br-inet", "up"]);
        ip(&["-n", &inet, "link", "add", "br-under", "type", "bridge"]);
        ip(&["-n", &inet, "link", "set", "br-under", "up"]);
        let mut lab = Lab {
            cloud,
            hosts: Vec::new(),
            internet,
            clients: Vec::new(),
            prefix,
        };
        for index in 0..hosts {
            lab.add_host(index);
        }
        lab.wait_hosts();
        lab
    }

    fn add_host(&mut self, index: usize) {
        let netns = Netns::create(&format!("{}-h{index}", self.prefix)).expect("create a host namespace");
        let name = netns.name().to_string();
        let inet = self.internet.name().to_string();
        let underlay_ip = Ipv4Addr::new(192, 0, 2, 10 + index as u8);
        let uplink_ip = format!("198.51.100.{}/24", 200 + index);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        for (dev, peer, bridge) in [
            ("up0", format!("i{index}"), "br-inet"),
            ("u0", format!("u{index}"), "br-under"),
        ] {
            ip(&[
                "-n", &name, "link", "add", dev, "type", "veth", "peer", "name", &peer, "netns", &inet,
            ]);
            ip(&["-n", &inet, "link", "set", &peer, "master", bridge]);
            ip(&["-n", &inet, "link", "set", &peer, "up"]);
            ip(&["-n", &name, "link", "set", dev, "up"]);
        }
        ip(&["-n", &name, "addr", "add", &uplink_ip, "dev", "up0"]);
        ip(&["-n", &name, "addr", "add", &format!("{underlay_ip}/24"), "dev", "u0"]);
        let dir = self.cloud.dir.join(format!("host{index}"));
        std::fs::create_dir_all(&dir).unwrap();
        let host_id = format!("h-lab{index}");
        let agent = spawn_agent(&self.cloud, &name, &dir, &host_id, underlay_ip);
        self.hosts.push(LabHost {
            netns,
            host_id,
            dir,
            underlay_ip,
            agent: Some(agent),
        });
    }

    fn wait_hosts(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let zones = self.cloud.block_on(async {
                let mut client = self.cloud.client().await;
                client
                    .describe_availability_zones(hearth_api::v1::DescribeAvailabilityZonesRequest::default())
                    .await
            });
            let hosts = zones
                .ok()
                .and_then(|z| {
                    z.into_inner()
                        .availability_zones
                        .into_iter()
                        .find(|z| z.zone_name == ZONE)
                })
                .map_or(0, |z| z.hosts);
            if hosts as usize >= self.hosts.len() {
                return;
            }
            assert!(Instant::now() < deadline, "lab hosts did not sync:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// hearthd's and every agent's log.
    pub fn logs(&self) -> String {
        let mut out = self.cloud.logs();
        for host in &self.hosts {
            out.push_str(&format!(
                "\n--- {} agent.log ---\n{}",
                host.host_id,
                std::fs::read_to_string(host.dir.join("agent.log")).unwrap_or_default()
            ));
        }
        out
    }

    /// `kill -9` the agent of host `index` (its VMs and network stay).
    pub fn kill_agent(&mut self, index: usize) {
        if let Some(mut agent) = self.hosts[index].agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }

    /// Starts the agent of host `index` again.
    pub fn start_agent(&mut self, index: usize) {
        let host = &self.hosts[index];
        let agent = spawn_agent(
            &self.cloud,
            host.netns.name(),
            &host.dir,
            &host.host_id,
            host.underlay_ip,
        );
        self.hosts[index].agent = Some(agent);
    }

    /// The host an instance runs on.
    pub fn host_of(&self, id: &str) -> &LabHost {
        let host_id = self.cloud.instance(id).host_id;
        self.hosts
            .iter()
            .find(|h| h.host_id == host_id)
            .unwrap_or_else(|| panic!("{id} is on unknown host {host_id}"))
    }

    /// The instance's console, wherever it runs.
    pub fn console(&self, id: &str) -> String {
        self.host_of(id).console(id)
    }

    /// Waits until the console of `id` has `needle`.
    pub fn wait_console(&self, id: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let console = self.console(id);
            if console.contains(needle) {
                return console;
            }
            assert!(
                Instant::now() < deadline,
                "console of {id} lacks {needle:?}:\n{console}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the probe `id` got its address by DHCP and answers; returns the address.
    pub fn wait_probe(&self, id: &str) -> Ipv4Addr {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // A whole line only (the console may be caught mid-line).
            let console = self.console(id);
            let address = console
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .find_map(|l| l.strip_prefix("probe: net-echo ready ip="))
                .map(|a| a.trim().parse::<Ipv4Addr>());
            match address {
                Some(Ok(ip)) => return ip,
                Some(Err(_)) => panic!("bad probe address in:\n{console}"),
                None => {}
            }
            assert!(
                Instant::now() < deadline,
                "{id} never got ready:\n{console}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The bridge of the subnet with `gateway` on `host` (from the bridges' addresses).
    pub fn bridge_of(&self, host: &LabHost, gateway: Ipv4Addr) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let output = Command::new("ip")
                .args(["-n", host.netns.name(), "-o", "-4", "addr", "show"])
                .output()
                .expect("ip addr");
            let text = String::from_utf8_lossy(&output.stdout);
            let found = text.lines().find_map(|line| {
                let mut words = line.split_whitespace();
                let dev = words.nth(1)?;
                let addr = words.nth(1)?;
                (dev.starts_with("hbr") && addr.split('/').next() == Some(&gateway.to_string()))
                    .then(|| dev.to_string())
            });
            if let Some(dev) = found {
                return dev;
            }
            assert!(
                Instant::now() < deadline,
                "no bridge with {gateway} on {}:\n{text}",
                host.host_id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The bridge an instance's tap is enslaved to, on its host.
    pub fn bridge_of_instance(&self, id: &str) -> String {
        let mac = self.cloud.instance(id).mac_address;
        let tap: String = format!("ht{}", mac.split(':').skip(1).collect::<String>());
        let host = self.host_of(id);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let output = Command::new("ip")
                .args(["-n", host.netns.name(), "-o", "link", "show", "dev", &tap])
                .output()
                .expect("ip link");
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            let master = text.split_whitespace().skip_while(|w| *w != "master").nth(1);
            if let Some(master) = master {
                return master.to_string();
            }
            assert!(Instant::now() < deadline, "no bridge for {id} ({tap}):\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A client namespace on the bridge `bridge` of `host` with address `address` (CIDR
    /// form), routing everything through `gateway`.
    pub fn client(&mut self, host: usize, bridge: &str, address: &str, gateway: Ipv4Addr) -> usize {
        let index = self.clients.len();
        let netns = Netns::create(&format!("{}-c{index}", self.prefix)).expect("client namespace");
        let name = netns.name().to_string();
        let host_ns = self.hosts[host].netns.name().to_string();
        let outer = format!("lc{index}");
        ip(&[
            "-n", &host_ns, "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ]);
        ip(&["-n", &host_ns, "link", "set", &outer, "master", bridge]);
        ip(&["-n", &host_ns, "link", "set", &outer, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&["-n", &name, "addr", "add", address, "dev", "eth0"]);
        ip(&["-n", &name, "link", "set", "eth0", "up"]);
        ip(&["-n", &name, "route", "add", "default", "via", &gateway.to_string()]);
        self.clients.push(Client {
            netns,
            ip: address.split('/').next().unwrap().parse().unwrap(),
        });
        index
    }

    /// A client made by [`Lab::client`].
    pub fn get_client(&self, index: usize) -> &Client {
        &self.clients[index]
    }

    /// The internet namespace as a vantage point (198.51.100.1).
    pub fn internet_client(&self) -> Client {
        Client {
            netns: Netns::open(self.internet.name()).expect("internet namespace"),
            ip: INTERNET_ROUTER,
        }
    }

    /// Links, forwarding databases, addresses, rules and nftables of every host (for failure
    /// messages).
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for host in &self.hosts {
            let ns = host.netns.name();
            for args in [
                vec!["-n", ns, "-d", "-br", "link"],
                vec!["-n", ns, "-br", "addr"],
                vec!["-n", ns, "rule"],
                vec!["-n", ns, "route", "show", "table", "all"],
                vec!["-n", ns, "neigh"],
            ] {
                let output = Command::new("ip").args(&args).output().unwrap();
                out.push_str(&format!(
                    "--- {}: ip {}\n{}",
                    host.host_id,
                    args[2..].join(" "),
                    String::from_utf8_lossy(&output.stdout)
                ));
            }
            let fdb = Command::new("bridge").args(["-n", ns, "fdb", "show"]).output().unwrap();
            out.push_str(&format!(
                "--- {}: bridge fdb\n{}",
                host.host_id,
                String::from_utf8_lossy(&fdb.stdout)
            ));
            let nft = Command::new("ip")
                .args(["netns", "exec", ns, "nft", "list", "ruleset"])
                .output()
                .unwrap();
            out.push_str(&format!(
                "--- {}: nft list ruleset\n{}",
                host.host_id,
                String::from_utf8_lossy(&nft.stdout)
            ));
        }
        out
    }

    /// Every hearth link and table left in the host namespaces (for leak checks).
    pub fn host_leftovers(&self, host: usize) -> String {
        let ns = self.hosts[host].netns.name();
        let links = Command::new("ip")
            .args(["-n", ns, "-o", "link", "show"])
            .output()
            .unwrap();
        let tables = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "list", "tables"])
            .output()
            .unwrap();
        let links: Vec<String> = String::from_utf8_lossy(&links.stdout)
            .lines()
            .filter_map(|l| {
                l.split(": ")
                    .nth(1)
                    .map(|n| n.split('@').next().unwrap_or(n).to_string())
            })
            .filter(|n| n.starts_with("hbr") || n.starts_with("hvx") || n.starts_with("ht"))
            .collect();
        format!("{} {}", links.join(" "), String::from_utf8_lossy(&tables.stdout).trim())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            if let Some(mut agent) = host.agent.take() {
                let _ = agent.kill();
                let _ = agent.wait();
            }
            for pid in host.vmm_pids() {
                // SAFETY: kill(2) of a VMM pid from this lab's own run directory.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // Namespaces (hosts, clients, internet) go with their fields, after the processes.
        self.clients.clear();
    }
}
