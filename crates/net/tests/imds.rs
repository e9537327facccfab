//! IMDS end to end: listeners on the bridges of a scratch host namespace, clients (std sockets) in
//! guest namespaces joined to the bridges by veth pairs.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Guest, Lab};
use hearth_net::imds::{
    Imds, ImdsInstance, ImdsLimits, ImdsListener, IMDS_ADDR, IMDS_PORT, TOKEN_HEADER, TOKEN_TTL_HEADER,
};
use tokio::runtime::Runtime;

fn instance(id: &str, ip: Ipv4Addr, tokens_required: bool) -> ImdsInstance {
    ImdsInstance {
        instance_id: id.into(),
        instance_type: "t3.micro".into(),
        ami_id: "ami-0abc".into(),
        hostname: format!("ip-{}.hearth.internal", ip.to_string().replace('.', "-")),
        local_ipv4: ip,
        public_ipv4: None,
        mac: hearth_net::MacAddr([2, 0, 0, 0, 0, ip.octets()[3]]),
        availability_zone: "hearth-1a".into(),
        region: "hearth-1".into(),
        vpc_id: "vpc-1".into(),
        subnet_id: "subnet-1".into(),
        subnet_cidr: "10.0.0.0/24".parse().unwrap(),
        public_keys: vec![("key".into(), "ssh-ed25519 AAAAkey key".into())],
        user_data: None,
        security_groups: vec!["default".into()],
        security_group_ids: vec!["sg-1".into()],
        http_tokens_required: tokens_required,
        http_endpoint_enabled: true,
        http_put_response_hop_limit: 1,
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Gives `bridge` the metadata address (as the agent does) and reverse-path filtering off.
fn imds_address(lab: &Lab, bridge: &str) {
    lab.host_ip(&["addr", "add", &format!("{IMDS_ADDR}/32"), "dev", bridge]);
    common::run(
        lab.host
            .command("sysctl")
            .unwrap()
            .args(["-qw", "net.ipv4.conf.all.rp_filter=0"])
            .arg(format!("net.ipv4.conf.{bridge}.rp_filter=0")),
    );
}

/// Guest `name` (10.0.0.`last`) on `bridge`, reaching the metadata address on-link.
fn guest<'a>(lab: &'a mut Lab, name: &str, bridge: &str, last: u8, vpc: &str) -> &'a Guest {
    let guest = lab.guest(name, bridge, last, vpc, &[]);
    guest.ip_cmd(&["route", "add", &IMDS_ADDR.to_string(), "dev", "eth0"]);
    guest
}

/// Listens on `device` from inside the host namespace.
fn listen(lab: &Lab, runtime: &Runtime, imds: &Arc<Imds>, device: &str, limits: ImdsLimits) -> ImdsListener {
    lab.host
        .run(|| {
            let _entered = runtime.enter();
            imds.listen_with_limits(device, IMDS_ADDR, IMDS_PORT, limits)
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("listen on {device}: {e}"))
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn parse_reply(bytes: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|l| l.split_once(": ").unwrap())
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

fn connect() -> TcpStream {
    let stream = TcpStream::connect_timeout(&SocketAddr::from((IMDS_ADDR, IMDS_PORT)), Duration::from_secs(3))
        .expect("connect to the metadata address");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream
}

/// Sends `request` from `guest` and reads the answer until the server closes.
fn exchange(guest: &Guest, request: &str) -> Vec<u8> {
    let request = request.to_string();
    guest
        .ns
        .run(move || {
            let mut stream = connect();
            stream.write_all(request.as_bytes()).unwrap();
            let mut bytes = Vec::new();
            stream.read_to_end(&mut bytes).expect("read the response");
            bytes
        })
        .unwrap()
}

fn http(guest: &Guest, request: &str) -> Reply {
    parse_reply(&exchange(guest, request))
}

fn get(guest: &Guest, path: &str, token: Option<&str>) -> Reply {
    let token = token.map(|t| format!("{TOKEN_HEADER}: {t}\r\n")).unwrap_or_default();
    http(
        guest,
        &format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n{token}\r\n"),
    )
}

fn put_token(guest: &Guest, ttl: u32, extra_headers: &str) -> Reply {
    http(
        guest,
        &format!(
            "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n{TOKEN_TTL_HEADER}: {ttl}\r\n{extra_headers}\r\n"
        ),
    )
}

fn token(guest: &Guest, ttl: u32) -> String {
    let reply = put_token(guest, ttl, "");
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body
}

fn instance_id(guest: &Guest, token: Option<&str>) -> Reply {
    get(guest, "/latest/meta-data/instance-id", token)
}

#[test]
fn imds_serves_v2_tokens_and_v1_to_the_instance_behind_the_bridge() {
    let mut lab = lab_or_skip!("imds_serves_v2_tokens_and_v1_to_the_instance_behind_the_bridge");
    imds_address(&lab, "br0");
    guest(&mut lab, "a", "br0", 5, "vpc-a");
    guest(&mut lab, "s", "br0", 6, "vpc-a");
    let runtime = runtime();
    let imds = Imds::new();
    imds.set_instances("br0", vec![instance("i-a", Ipv4Addr::new(10, 0, 0, 5), true)]);
    let listener = listen(&lab, &runtime, &imds, "br0", ImdsLimits::default());
    assert_eq!(listener.device(), "br0");
    let a = lab.g("a");

    // IMDSv2: a token, then metadata with it.
    let reply = put_token(a, 60, "");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header(TOKEN_TTL_HEADER), Some("60"));
    assert_eq!(reply.header("Connection"), Some("close"));
    let token = reply.body;
    assert!(token.len() >= 32, "{token:?}");
    let reply = instance_id(a, Some(&token));
    assert_eq!((reply.status, reply.body.as_str()), (200, "i-a"));
    assert_eq!(reply.header("Content-Type"), Some("text/plain"));

    // Tokens required: none, a bad one, an expired one → 401.
    assert_eq!(instance_id(a, None).status, 401);
    assert_eq!(instance_id(a, Some("not-a-token")).status, 401);
    let short = self::token(a, 1);
    assert_eq!(instance_id(a, Some(&short)).status, 200);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(instance_id(a, Some(&short)).status, 401);
    assert_eq!(instance_id(a, Some(&token)).status, 200);

    // A proxied token request, a GET of the token path, no TTL.
    assert_eq!(put_token(a, 60, "X-Forwarded-For: 192.0.2.1\r\n").status, 403);
    let reply = get(a, "/latest/api/token", None);
    assert_eq!((reply.status, reply.header("Allow")), (405, Some("PUT")));
    assert_eq!(http(a, "PUT /latest/api/token HTTP/1.1\r\n\r\n").status, 400);

    // Tokens optional: IMDSv1 works, over HTTP/1.0 too; HEAD has no body.
    imds.set_instances("br0", vec![instance("i-a", Ipv4Addr::new(10, 0, 0, 5), false)]);
    let reply = instance_id(a, None);
    assert_eq!((reply.status, reply.body.as_str()), (200, "i-a"));
    let reply = http(a, "GET /latest/meta-data/local-ipv4 HTTP/1.0\r\n\r\n");
    assert_eq!((reply.status, reply.body.as_str()), (200, "10.0.0.5"));
    let reply = http(a, "HEAD /latest/meta-data/instance-id HTTP/1.1\r\n\r\n");
    assert_eq!(
        (reply.status, reply.header("Content-Length"), reply.body.as_str()),
        (200, Some("3"), "")
    );
    let reply = get(a, "/latest/meta-data/public-keys/0/openssh-key", None);
    assert_eq!(reply.body, "ssh-ed25519 AAAAkey key");
    let reply = get(a, "/latest/dynamic/instance-identity/document", None);
    let document: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(document["instanceId"], "i-a");
    assert_eq!(document["privateIp"], "10.0.0.5");
    assert_eq!(get(a, "/latest/meta-data/nothing-here", None).status, 404);

    // Bad requests: malformed, oversized head.
    assert_eq!(http(a, "GET nowhere\r\n\r\n").status, 400);
    let huge = format!("GET / HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(9000));
    assert_eq!(http(a, &huge).status, 400);

    // An address the table does not know.
    let stranger = instance_id(lab.g("s"), None);
    assert_eq!((stranger.status, stranger.body.as_str()), (403, "Forbidden"));

    // Closing the listener closes the port.
    runtime.block_on(listener.close());
    let refused = a
        .ns
        .run(|| TcpStream::connect_timeout(&SocketAddr::from((IMDS_ADDR, IMDS_PORT)), Duration::from_secs(2)).is_err());
    assert!(refused.unwrap(), "the listener still accepts after close");
}

#[test]
fn duplicate_client_ips_on_two_bridges_get_their_own_instance() {
    let mut lab = lab_or_skip!("duplicate_client_ips_on_two_bridges_get_their_own_instance");
    lab.bridge("br1");
    imds_address(&lab, "br0");
    imds_address(&lab, "br1");
    let ip = Ipv4Addr::new(10, 0, 0, 5);
    guest(&mut lab, "a", "br0", 5, "vpc-a");
    guest(&mut lab, "b", "br1", 5, "vpc-b");
    let runtime = runtime();
    let imds = Imds::new();
    imds.set_all(HashMap::from([
        ("br0".to_string(), vec![instance("i-a", ip, true)]),
        ("br1".to_string(), vec![instance("i-b", ip, true)]),
    ]));
    let _listeners = [
        listen(&lab, &runtime, &imds, "br0", ImdsLimits::default()),
        listen(&lab, &runtime, &imds, "br1", ImdsLimits::default()),
    ];
    let (a, b) = (lab.g("a"), lab.g("b"));
    let each_gets_its_own = |setup: &str| {
        for _ in 0..5 {
            for (guest, id) in [(a, "i-a"), (b, "i-b")] {
                let token = token(guest, 60);
                let reply = instance_id(guest, Some(&token));
                assert_eq!((reply.status, reply.body.as_str()), (200, id), "{setup}");
            }
        }
        // A token is only good on the bridge that issued it.
        let token_a = token(a, 60);
        assert_eq!(instance_id(b, Some(&token_a)).status, 401, "{setup}");
        assert_eq!(instance_id(a, Some(&token_a)).status, 200, "{setup}");
    };

    // No route to 10.0.0.0/24 anywhere in the host namespace: the bound sockets reply on-link.
    each_gets_its_own("no routes");

    // Both bridges hold the subnet's gateway address: two connected routes for 10.0.0.0/24, one per
    // bridge, and the guests reach the metadata address through their gateway.
    for bridge in ["br0", "br1"] {
        lab.host_ip(&["addr", "add", "10.0.0.1/24", "dev", bridge]);
    }
    for guest in [a, b] {
        guest.ip_cmd(&["route", "del", &IMDS_ADDR.to_string(), "dev", "eth0"]);
        guest.ip_cmd(&["route", "add", "default", "via", "10.0.0.1"]);
    }
    each_gets_its_own("gateway address on both bridges");
}

#[test]
fn slow_and_greedy_clients_are_cut_off() {
    let mut lab = lab_or_skip!("slow_and_greedy_clients_are_cut_off");
    imds_address(&lab, "br0");
    guest(&mut lab, "a", "br0", 5, "vpc-a");
    let runtime = runtime();
    let imds = Imds::new();
    imds.set_instances("br0", vec![instance("i-a", Ipv4Addr::new(10, 0, 0, 5), false)]);
    let limits = ImdsLimits {
        request_timeout: Duration::from_millis(500),
        max_connections: 64,
        max_connections_per_client: 2,
        ..ImdsLimits::default()
    };
    let _listener = listen(&lab, &runtime, &imds, "br0", limits);
    let a = lab.g("a");

    let (mut idle, mut third) =
        a.ns.run(|| {
            let idle = [connect(), connect()];
            let mut third = connect();
            third
                .write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n")
                .unwrap();
            (idle, third)
        })
        .unwrap();
    // A third connection of the same client is closed unanswered.
    let mut bytes = Vec::new();
    let _ = third.read_to_end(&mut bytes);
    assert!(bytes.is_empty(), "{:?}", String::from_utf8_lossy(&bytes));
    // Connections that send nothing are closed after the request timeout.
    let start = Instant::now();
    for stream in &mut idle {
        let mut buf = [0u8; 16];
        assert_eq!(stream.read(&mut buf).expect("closed, not timed out on our side"), 0);
    }
    assert!(start.elapsed() < Duration::from_secs(4));
    // Their slots are free again (the server releases them just after closing).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let bytes = exchange(a, "GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n");
        if !bytes.is_empty() {
            let reply = parse_reply(&bytes);
            assert_eq!((reply.status, reply.body.as_str()), (200, "i-a"));
            break;
        }
        assert!(Instant::now() < deadline, "the client's slots were never released");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A raw socket that receives a copy of every TCP segment reaching the calling thread's namespace,
/// IP header included.
fn tcp_copies() -> OwnedFd {
    // SAFETY: plain socket(2) call; the descriptor is checked and then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_TCP) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: `timeout` is a valid timeval and the length is its size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const libc::timeval as *const libc::c_void,
            size_of::<libc::timeval>() as u32,
        )
    };
    fd
}

/// The IP TTL of the first received packet from the metadata address that carries `needle`.
fn ttl_of_packet_with(fd: &OwnedFd, needle: &[u8]) -> Option<u8> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        // SAFETY: `buf` is valid for its length; no source address is asked for.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 20 {
            continue;
        }
        let packet = &buf[..n as usize];
        if packet[12..16] == IMDS_ADDR.octets() && packet.windows(needle.len()).any(|w| w == needle) {
            return Some(packet[8]);
        }
    }
    None
}

#[test]
fn the_token_leaves_with_the_hop_limit_as_ip_ttl() {
    let mut lab = lab_or_skip!("the_token_leaves_with_the_hop_limit_as_ip_ttl");
    imds_address(&lab, "br0");
    guest(&mut lab, "a", "br0", 5, "vpc-a");
    let runtime = runtime();
    let imds = Imds::new();
    let mut limited = instance("i-hops", Ipv4Addr::new(10, 0, 0, 5), false);
    limited.http_put_response_hop_limit = 3;
    imds.set_instances("br0", vec![limited]);
    let _listener = listen(&lab, &runtime, &imds, "br0", ImdsLimits::default());
    let (token_ttl, metadata_ttl) = lab
        .g("a")
        .ns
        .run(|| {
            let copies = tcp_copies();
            let request = format!("PUT /latest/api/token HTTP/1.1\r\n{TOKEN_TTL_HEADER}: 60\r\n\r\n");
            let mut stream = connect();
            stream.write_all(request.as_bytes()).unwrap();
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).unwrap();
            let token = parse_reply(&reply).body;
            let token_ttl = ttl_of_packet_with(&copies, token.as_bytes());

            let mut stream = connect();
            stream
                .write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n")
                .unwrap();
            stream.read_to_end(&mut Vec::new()).unwrap();
            (token_ttl, ttl_of_packet_with(&copies, b"i-hops"))
        })
        .unwrap();
    assert_eq!(token_ttl, Some(3));
    assert_eq!(metadata_ttl, Some(64), "metadata keeps the default TTL");
}

#[test]
fn a_flooding_guest_is_throttled_and_another_still_gets_its_answers() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    let mut lab = lab_or_skip!("a_flooding_guest_is_throttled_and_another_still_gets_its_answers");
    imds_address(&lab, "br0");
    guest(&mut lab, "a", "br0", 5, "vpc-a");
    guest(&mut lab, "b", "br0", 6, "vpc-a");
    let runtime = runtime();
    let imds = Imds::new();
    imds.set_instances(
        "br0",
        vec![
            instance("i-a", Ipv4Addr::new(10, 0, 0, 5), false),
            instance("i-b", Ipv4Addr::new(10, 0, 0, 6), false),
        ],
    );
    let limits = ImdsLimits::default();
    let _listener = listen(&lab, &runtime, &imds, "br0", limits.clone());
    let (a, b) = (lab.g("a"), lab.g("b"));

    // Guest a: 32 threads asking as fast as they can (far beyond its 8 connections and 100
    // requests per second), 4 of them opening connections and sending nothing.
    let stop = Arc::new(AtomicBool::new(false));
    // Status → count; 0: closed unanswered or not connected.
    let seen = Arc::new(Mutex::new(HashMap::<u16, usize>::new()));
    let started = Instant::now();
    let flooders: Vec<_> = (0..32)
        .map(|n| {
            let (stop, seen) = (stop.clone(), seen.clone());
            a.ns.spawn(&format!("flood-{n}"), move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut stream) =
                        TcpStream::connect_timeout(&SocketAddr::from((IMDS_ADDR, IMDS_PORT)), Duration::from_secs(1))
                    else {
                        *seen.lock().unwrap().entry(0).or_default() += 1;
                        continue;
                    };
                    stream.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
                    if n >= 4 {
                        let _ = stream.write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n");
                    }
                    let mut bytes = Vec::new();
                    let _ = stream.read_to_end(&mut bytes);
                    let status = if bytes.is_empty() {
                        0
                    } else {
                        parse_reply(&bytes).status
                    };
                    *seen.lock().unwrap().entry(status).or_default() += 1;
                }
            })
            .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    // Guest b on the same bridge is answered all along, and quickly.
    let mut slowest = Duration::ZERO;
    for _ in 0..30 {
        let asked = Instant::now();
        let reply = instance_id(b, None);
        slowest = slowest.max(asked.elapsed());
        assert_eq!((reply.status, reply.body.as_str()), (200, "i-b"));
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.join().unwrap().unwrap();
    }
    let elapsed = started.elapsed();
    let seen = seen.lock().unwrap().clone();
    eprintln!("flood for {elapsed:?}: {seen:?}; b's slowest answer {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "b waited {slowest:?}");
    // a was throttled: 429s, and no more answers than its bucket allows.
    assert!(seen.get(&429).copied().unwrap_or(0) > 0, "{seen:?}");
    let allowed =
        limits.request_burst_per_client as f64 + limits.requests_per_sec_per_client as f64 * elapsed.as_secs_f64();
    let answered = seen.get(&200).copied().unwrap_or(0);
    assert!(
        (answered as f64) <= allowed,
        "{answered} answers in {elapsed:?}: {seen:?}"
    );
    // Once the flood stops, a's bucket refills and it is answered again.
    std::thread::sleep(Duration::from_millis(200));
    let reply = instance_id(a, None);
    assert_eq!((reply.status, reply.body.as_str()), (200, "i-a"));
}
