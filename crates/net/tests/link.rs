//! `hearth_net::link` against the kernel: every test works in scratch network namespaces (deleted on
//! drop) and checks the result with `ip -j` / `bridge -j`, not with the module itself.

mod common;

use std::future::Future;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use hearth_net::link::{LinkError, Links, Route, RoutingRule};
use hearth_net::netns::Netns;
use hearth_net::{Ipv4Cidr, MacAddr, Port};
use serde_json::Value;

/// Why these tests cannot run here, or `None`.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespace tests need root".into());
    }
    for program in ["ip", "bridge"] {
        let found = Command::new(program)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("{program} is missing (apt-get install iproute2)"));
        }
    }
    None
}

macro_rules! or_skip {
    ($test:expr) => {
        if let Some(reason) = missing_prerequisite() {
            assert!(!common::in_ci(), "{}: {reason} (CI=true: these tests must run)", $test);
            println!("SKIPPED {}: {reason}", $test);
            return;
        }
    };
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A scratch namespace, deleted on drop.
fn scratch(tag: &str) -> Netns {
    let name = format!(
        "hl{}-{}-{tag}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    Netns::create(&name).expect("create a scratch namespace")
}

/// Runs the future `make` builds on a current-thread runtime, on a thread inside `ns`.
fn block_on_in<F: Future>(ns: &Netns, make: impl FnOnce() -> F + Send) -> F::Output
where
    F::Output: Send,
{
    ns.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(make())
    })
    .unwrap()
}

/// `ip -j ARGS` in `ns`, parsed.
fn ip_json(ns: &Netns, args: &[&str]) -> Value {
    json(ns, "ip", args)
}

fn json(ns: &Netns, program: &str, args: &[&str]) -> Value {
    let output = ns
        .command(program)
        .unwrap()
        .arg("-j")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    if output.stdout.iter().all(u8::is_ascii_whitespace) {
        return Value::Array(Vec::new());
    }
    serde_json::from_slice(&output.stdout).unwrap()
}

fn link_json(ns: &Netns, name: &str) -> Value {
    ip_json(ns, &["-d", "link", "show", "dev", name])[0].clone()
}

fn flags(link: &Value) -> Vec<&str> {
    link["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect()
}

fn ip(ns: &Netns, args: &[&str]) {
    common::run(ns.command("ip").unwrap().args(args));
}

/// Attaches to tap `name` as hearth-vmm does (`TUNSETIFF` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`).
fn attach_like_the_vmm(name: &str) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: all-zero bytes are a valid `ifreq`.
    let mut ifreq: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifreq.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifreq.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and updates the `ifreq` we lend it exclusively.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifreq) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn bridge_tap_and_veth_are_created_idempotently() {
    or_skip!("bridge_tap_and_veth_are_created_idempotently");
    let ns = scratch("a");
    let mac = MacAddr([2, 0xab, 0, 0, 0, 1]);
    let (bridge, tap) = block_on_in(&ns, || async move {
        let links = Links::new().unwrap();
        let bridge = links.ensure_bridge("br-t").await.unwrap();
        assert_eq!(links.ensure_bridge("br-t").await.unwrap(), bridge);
        let tap = links.ensure_tap("tap-t").await.unwrap();
        assert_eq!(links.ensure_tap("tap-t").await.unwrap(), tap);
        links.set_master("tap-t", Some("br-t")).await.unwrap();
        links.set_master("tap-t", Some("br-t")).await.unwrap();
        let veth = links.ensure_veth("ve-a", "ve-b").await.unwrap();
        assert_eq!(links.ensure_veth("ve-a", "ve-b").await.unwrap(), veth);
        links.set_mac("ve-a", mac).await.unwrap();
        links.set_mac("ve-a", mac).await.unwrap();
        links.set_mtu("ve-a", 1400).await.unwrap();

        assert_eq!(links.ifindex("br-t").await.unwrap(), Some(bridge));
        assert_eq!(links.ifindex("nothing").await.unwrap(), None);
        assert_eq!(links.link_names("ve-").await.unwrap(), ["ve-a", "ve-b"]);
        assert!(matches!(
            links.ensure_tap("br-t").await,
            Err(LinkError::WrongKind { expected: "tap", .. })
        ));
        let wrong = links.ensure_bridge("tap-t").await.unwrap_err();
        assert_eq!(wrong.to_string(), "link tap-t is a tun, not a bridge");
        assert!(matches!(links.set_up("nothing").await, Err(LinkError::NotFound(name)) if name == "nothing"));
        assert!(matches!(
            links.ensure_bridge("much-too-long-name").await,
            Err(LinkError::Invalid(_))
        ));
        (bridge, tap)
    });

    let br = link_json(&ns, "br-t");
    assert_eq!(br["ifindex"], bridge);
    assert!(flags(&br).contains(&"UP"));
    let data = &br["linkinfo"]["info_data"];
    assert_eq!(
        (data["stp_state"].as_u64(), data["forward_delay"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(data["mcast_snooping"], 0);

    let t = link_json(&ns, "tap-t");
    assert_eq!(t["ifindex"], tap);
    assert_eq!(t["master"], "br-t");
    assert!(flags(&t).contains(&"UP"));
    assert_eq!(t["linkinfo"]["info_kind"], "tun");
    let data = &t["linkinfo"]["info_data"];
    assert_eq!(
        (&data["type"], &data["pi"], &data["vnet_hdr"]),
        (&"tap".into(), &false.into(), &true.into())
    );
    assert_eq!(data["persist"], true);
    ns.run(|| attach_like_the_vmm("tap-t"))
        .unwrap()
        .expect("the VMM's flags attach to the tap");

    let a = link_json(&ns, "ve-a");
    assert_eq!(a["linkinfo"]["info_kind"], "veth");
    assert_eq!(a["address"], mac.to_string());
    assert_eq!(a["mtu"], 1400);
    assert!(flags(&a).contains(&"UP") && flags(&link_json(&ns, "ve-b")).contains(&"UP"));

    block_on_in(&ns, || async {
        let links = Links::new().unwrap();
        links.set_master("tap-t", None).await.unwrap();
        links.set_master("tap-t", None).await.unwrap();
        assert!(links.delete_link("tap-t").await.unwrap());
        assert!(!links.delete_link("tap-t").await.unwrap());
        assert!(links.delete_link("ve-b").await.unwrap());
        assert!(
            links.link_names("ve-").await.unwrap().is_empty(),
            "deleting one end deletes both"
        );
    });
    assert!(ip_json(&ns, &["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["ifname"] != "tap-t"));
}

#[test]
fn links_made_outside_act_in_their_namespace() {
    or_skip!("links_made_outside_act_in_their_namespace");
    let ns = scratch("n");
    let other = scratch("o");
    // This thread stays in the test's own namespace: the tap (made through /dev/net/tun) and the veth
    // must still appear in `ns`, and the moved end in `other`.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let links = Links::new_in(&ns).unwrap();
        links.ensure_bridge("br-n").await.unwrap();
        let tap = links.ensure_tap("tap-n").await.unwrap();
        assert_eq!(links.ensure_tap("tap-n").await.unwrap(), tap);
        links.ensure_veth("mv-a", "mv-b").await.unwrap();
        assert!(links.move_to_netns("mv-b", &other).await.unwrap());
        assert!(!links.move_to_netns("mv-b", &other).await.unwrap());
        assert_eq!(links.link_names("mv-").await.unwrap(), ["mv-a"]);
        // The pair still exists: ensuring it again is a no-op although the peer is gone from here.
        links.ensure_veth("mv-a", "mv-b").await.unwrap();
    });
    assert_eq!(link_json(&ns, "tap-n")["linkinfo"]["info_data"]["type"], "tap");
    assert_eq!(link_json(&other, "mv-b")["linkinfo"]["info_kind"], "veth");
    let here = Command::new("ip")
        .args(["link", "show", "dev", "tap-n"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!here.success(), "tap-n was created in the test's own namespace");
}

#[test]
fn vxlan_flood_peers_are_set_exactly() {
    or_skip!("vxlan_flood_peers_are_set_exactly");
    let ns = scratch("v");
    let peer = |last| Ipv4Addr::new(192, 0, 2, last);
    let first = block_on_in(&ns, || async move {
        let links = Links::new().unwrap();
        links.ensure_veth("ul0", "ul1").await.unwrap();
        links.set_addresses("ul0", &[(peer(1), 24, false)]).await.unwrap();
        let vx = links
            .ensure_vxlan("vx100", 100, peer(1), 4789, Some("ul0"))
            .await
            .unwrap();
        assert_eq!(
            links
                .ensure_vxlan("vx100", 100, peer(1), 4789, Some("ul0"))
                .await
                .unwrap(),
            vx
        );
        links.ensure_bridge("br-v").await.unwrap();
        links.set_master("vx100", Some("br-v")).await.unwrap();

        links.set_flood_peers("vx100", &[peer(2), peer(3)]).await.unwrap();
        links.set_flood_peers("vx100", &[peer(3), peer(2)]).await.unwrap();
        assert_eq!(links.flood_peers_of("vx100").await.unwrap(), [peer(2), peer(3)]);
        vx
    });
    let fdb = |ns: &Netns| -> Vec<String> {
        let mut peers: Vec<String> = json(ns, "bridge", &["fdb", "show", "dev", "vx100"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["mac"] == "00:00:00:00:00:00")
            .map(|e| {
                assert_eq!(e["state"], "permanent");
                assert!(e["flags"].as_array().unwrap().contains(&"self".into()));
                e["dst"].as_str().unwrap().to_string()
            })
            .collect();
        peers.sort();
        peers
    };
    assert_eq!(fdb(&ns), ["192.0.2.2", "192.0.2.3"]);
    // A unicast entry (another host's guest) is not a flood peer and stays.
    common::run(ns.command("bridge").unwrap().args([
        "fdb",
        "add",
        "02:00:00:00:00:99",
        "dst",
        "192.0.2.9",
        "dev",
        "vx100",
    ]));

    block_on_in(&ns, || async move {
        let links = Links::new().unwrap();
        links.set_flood_peers("vx100", &[peer(3), peer(4)]).await.unwrap();
    });
    assert_eq!(fdb(&ns), ["192.0.2.3", "192.0.2.4"]);
    let unicast = json(&ns, "bridge", &["fdb", "show", "dev", "vx100"]);
    assert!(unicast
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["mac"] == "02:00:00:00:00:99" && e["dst"] == "192.0.2.9"));

    let vx = link_json(&ns, "vx100");
    assert_eq!(vx["ifindex"], first);
    assert!(flags(&vx).contains(&"UP"));
    let data = &vx["linkinfo"]["info_data"];
    assert_eq!(
        (&data["id"], &data["local"], &data["port"]),
        (&100.into(), &"192.0.2.1".into(), &4789.into())
    );
    assert_eq!((&data["link"], &data["learning"]), (&"ul0".into(), &true.into()));

    let second = block_on_in(&ns, || async move {
        let links = Links::new().unwrap();
        links.set_flood_peers("vx100", &[]).await.unwrap();
        assert!(links.flood_peers_of("vx100").await.unwrap().is_empty());
        // Another VNI: re-created.
        let vx = links.ensure_vxlan("vx100", 101, peer(1), 4789, None).await.unwrap();
        assert_ne!(vx, first);
        vx
    });
    assert!(fdb(&ns).is_empty());
    let vx = link_json(&ns, "vx100");
    assert_eq!(vx["ifindex"], second);
    assert_eq!(vx["linkinfo"]["info_data"]["id"], 101);
    assert!(vx["linkinfo"]["info_data"].get("link").is_none());
    assert!(vx.get("master").is_none(), "a re-created device has no master");
}

#[test]
fn addresses_are_set_exactly() {
    or_skip!("addresses_are_set_exactly");
    let ns = scratch("d");
    let addresses = |ns: &Netns| -> Vec<(String, u64, bool)> {
        let shown = ip_json(ns, &["-4", "addr", "show", "dev", "br-d"]);
        let mut found: Vec<_> = shown[0]["addr_info"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(|a| {
                (
                    a["local"].as_str().unwrap().to_string(),
                    a["prefixlen"].as_u64().unwrap(),
                    a["noprefixroute"] == true,
                )
            })
            .collect();
        found.sort();
        found
    };
    let main_routes = |ns: &Netns| -> Vec<String> {
        let mut dsts: Vec<String> = ip_json(ns, &["route", "show", "table", "main"])
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["dst"].as_str().unwrap().to_string())
            .collect();
        dsts.sort();
        dsts
    };
    let a = Ipv4Addr::new(10, 0, 0, 1);
    let b = Ipv4Addr::new(10, 0, 0, 2);
    let c = Ipv4Addr::new(172, 16, 0, 1);

    block_on_in(&ns, || async move {
        let links = Links::new().unwrap();
        links.ensure_bridge("br-d").await.unwrap();
        links
            .set_addresses("br-d", &[(a, 24, false), (b, 24, false), (c, 16, true)])
            .await
            .unwrap();
        links
            .set_addresses("br-d", &[(c, 16, true), (a, 24, false), (b, 24, false)])
            .await
            .unwrap();
    });
    assert_eq!(
        addresses(&ns),
        [
            ("10.0.0.1".into(), 24, false),
            ("10.0.0.2".into(), 24, false),
            ("172.16.0.1".into(), 16, true)
        ]
    );
    assert_eq!(
        main_routes(&ns),
        ["10.0.0.0/24"],
        "noprefixroute: no route to 172.16.0.0/16"
    );

    // Dropping the primary (10.0.0.1) takes its secondary with it; the secondary must come back. The
    // flag change on 172.16.0.1 needs a delete and an add.
    block_on_in(&ns, || async move {
        let links = Links::new().unwrap();
        links
            .set_addresses("br-d", &[(b, 24, false), (c, 16, false)])
            .await
            .unwrap();
    });
    assert_eq!(
        addresses(&ns),
        [("10.0.0.2".into(), 24, false), ("172.16.0.1".into(), 16, false)]
    );
    assert_eq!(main_routes(&ns), ["10.0.0.0/24", "172.16.0.0/16"]);

    block_on_in(&ns, || async move {
        let links = Links::new().unwrap();
        links.set_addresses("br-d", &[]).await.unwrap();
        assert!(matches!(
            links.set_addresses("br-d", &[(a, 33, false)]).await,
            Err(LinkError::Invalid(_))
        ));
    });
    assert!(addresses(&ns).is_empty());
}

#[test]
fn routes_and_rules_are_set_exactly() {
    or_skip!("routes_and_rules_are_set_exactly");
    let ns = scratch("r");
    ip(&ns, &["rule", "add", "priority", "20000", "table", "2000"]);
    ip(&ns, &["rule", "add", "priority", "10500", "table", "3000"]);
    let cidr = |s: &str| s.parse::<Ipv4Cidr>().unwrap();
    let route = |dst: &str, gateway: Option<[u8; 4]>, src: Option<[u8; 4]>| Route {
        dst: cidr(dst),
        dev: "br-r".into(),
        gateway: gateway.map(Ipv4Addr::from),
        src: src.map(Ipv4Addr::from),
    };
    let rule = |priority, iif: Option<&str>, oif: Option<&str>, fwmark, table| RoutingRule {
        priority,
        iif: iif.map(Into::into),
        oif: oif.map(Into::into),
        fwmark,
        table,
    };
    let first_routes = vec![
        route("0.0.0.0/0", Some([10, 9, 0, 254]), Some([10, 9, 0, 1])),
        route("10.9.0.0/24", None, None),
    ];
    let first_rules = vec![
        rule(10_000, Some("br-r"), None, None, 1000),
        rule(10_001, None, None, Some((0x1_0000, 0xff_0000)), 1001),
        rule(10_002, None, Some("br-r"), None, 100),
    ];
    let (routes, rules) = (first_routes.clone(), first_rules.clone());
    block_on_in(&ns, || async move {
        let links = Links::new().unwrap();
        links.ensure_bridge("br-r").await.unwrap();
        links
            .set_addresses("br-r", &[(Ipv4Addr::new(10, 9, 0, 1), 24, false)])
            .await
            .unwrap();
        links.set_routes(1000, &routes).await.unwrap();
        links.set_routes(1000, &routes).await.unwrap();
        links.set_rules(10_000..11_000, &rules).await.unwrap();
        links.set_rules(10_000..11_000, &rules).await.unwrap();
    });
    let table = |ns: &Netns, id: &str| -> Vec<Value> {
        let mut routes = ip_json(ns, &["route", "show", "table", id]).as_array().unwrap().clone();
        for route in &mut routes {
            route.as_object_mut().unwrap().remove("flags");
        }
        routes.sort_by_key(|r| r["dst"].as_str().unwrap().to_string());
        routes
    };
    assert_eq!(
        table(&ns, "1000"),
        [
            serde_json::json!({"dst": "10.9.0.0/24", "dev": "br-r", "protocol": "static", "scope": "link"}),
            serde_json::json!({"dst": "default", "gateway": "10.9.0.254", "dev": "br-r", "protocol": "static", "prefsrc": "10.9.0.1"}),
        ]
    );
    let rules_shown = |ns: &Netns| -> Vec<Value> { ip_json(ns, &["rule", "show"]).as_array().unwrap().clone() };
    assert_eq!(
        rules_shown(&ns),
        [
            serde_json::json!({"priority": 0, "src": "all", "table": "local"}),
            serde_json::json!({"priority": 10000, "src": "all", "iif": "br-r", "table": "1000"}),
            serde_json::json!({"priority": 10001, "src": "all", "fwmark": "0x10000", "fwmask": "0xff0000", "table": "1001"}),
            serde_json::json!({"priority": 10002, "src": "all", "oif": "br-r", "table": "100"}),
            serde_json::json!({"priority": 20000, "src": "all", "table": "2000"}),
            serde_json::json!({"priority": 32766, "src": "all", "table": "main"}),
            serde_json::json!({"priority": 32767, "src": "all", "table": "default"}),
        ]
    );

    // Change a route in place (same destination, now with a source), swap the default route for a
    // narrower one; retarget one rule, drop another.
    block_on_in(&ns, || async move {
        let links = Links::new().unwrap();
        let routes = [
            route("10.9.0.0/24", None, Some([10, 9, 0, 1])),
            route("10.8.0.0/16", Some([10, 9, 0, 254]), None),
        ];
        links.set_routes(1000, &routes).await.unwrap();
        let rules = [
            rule(10_000, Some("br-r"), None, None, 1002),
            rule(10_001, None, None, Some((0x1_0000, 0xff_0000)), 1001),
        ];
        links.set_rules(10_000..11_000, &rules).await.unwrap();

        assert!(matches!(links.set_routes(254, &[]).await, Err(LinkError::Invalid(_))));
        let twice = [
            route("10.7.0.0/16", None, None),
            route("10.7.0.0/16", Some([10, 9, 0, 254]), None),
        ];
        assert!(matches!(
            links.set_routes(1000, &twice).await,
            Err(LinkError::Invalid(_))
        ));
        let elsewhere = Route {
            dev: "nothing".into(),
            ..route("10.7.0.0/16", None, None)
        };
        assert!(matches!(
            links.set_routes(1000, &[elsewhere]).await,
            Err(LinkError::NotFound(_))
        ));
        let outside = [rule(9_999, None, None, None, 1000)];
        assert!(matches!(
            links.set_rules(10_000..11_000, &outside).await,
            Err(LinkError::Invalid(_))
        ));
    });
    assert_eq!(
        table(&ns, "1000"),
        [
            serde_json::json!({"dst": "10.8.0.0/16", "gateway": "10.9.0.254", "dev": "br-r", "protocol": "static"}),
            serde_json::json!({"dst": "10.9.0.0/24", "dev": "br-r", "protocol": "static", "scope": "link", "prefsrc": "10.9.0.1"}),
        ]
    );
    let main: Vec<Value> = table(&ns, "main");
    assert_eq!(main.len(), 1, "the main table keeps its connected route: {main:?}");
    assert_eq!(
        rules_shown(&ns),
        [
            serde_json::json!({"priority": 0, "src": "all", "table": "local"}),
            serde_json::json!({"priority": 10000, "src": "all", "iif": "br-r", "table": "1002"}),
            serde_json::json!({"priority": 10001, "src": "all", "fwmark": "0x10000", "fwmask": "0xff0000", "table": "1001"}),
            serde_json::json!({"priority": 20000, "src": "all", "table": "2000"}),
            serde_json::json!({"priority": 32766, "src": "all", "table": "main"}),
            serde_json::json!({"priority": 32767, "src": "all", "table": "default"}),
        ]
    );

    block_on_in(&ns, || async move {
        let links = Links::new().unwrap();
        links.set_routes(1000, &[]).await.unwrap();
        links.set_rules(10_000..11_000, &[]).await.unwrap();
    });
    assert!(table(&ns, "1000").is_empty());
    assert_eq!(rules_shown(&ns).len(), 4, "{:?}", rules_shown(&ns));
}

#[test]
fn gratuitous_arp_is_seen_on_the_other_end_of_a_veth() {
    or_skip!("gratuitous_arp_is_seen_on_the_other_end_of_a_veth");
    let host = scratch("g");
    let guest = common::Guest {
        ns: scratch("p"),
        port: Port {
            tap: "garp0".into(),
            mac: MacAddr([2, 0, 0, 0, 0, 0x42]),
            ipv4: Ipv4Addr::new(203, 0, 113, 7),
            vpc_id: "vpc-1".into(),
            group_ids: Vec::new(),
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // From outside the namespace, so the packet socket is opened on a thread that enters it.
    let links = runtime.block_on(async {
        let links = Links::new_in(&host).unwrap();
        links.ensure_veth("garp0", "eth0").await.unwrap();
        assert!(links.move_to_netns("eth0", &guest.ns).await.unwrap());
        links
    });
    guest.ip_cmd(&["link", "set", "eth0", "up"]);
    let sniffer = common::Sniffer::start(&guest);
    let (mac, ip) = (guest.mac(), guest.ip());
    runtime.block_on(links.send_gratuitous_arp("garp0", ip, mac)).unwrap();
    let marker = |op: u8| [&[0, op][..], &mac.0, &ip.octets()].concat();
    assert!(sniffer.saw(&marker(1)), "no gratuitous ARP request");
    assert!(sniffer.saw(&marker(2)), "no gratuitous ARP reply");

    let error = runtime
        .block_on(links.send_gratuitous_arp("nothing", ip, mac))
        .unwrap_err();
    assert_eq!(error.to_string(), "no link named nothing");
}
