//! Engine tests of VPCs, subnets, security groups and Elastic IPs: API semantics, error
//! codes, what the hosts are told, persistence.

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::*;
use crate::store::SqliteStore;
use crate::testing::TempDir;
use crate::time::ManualClock;

fn code<T: std::fmt::Debug>(result: Ec2Result<T>) -> &'static str {
    result.expect_err("expected an error").code()
}

struct Net {
    dir: TempDir,
    clock: Arc<ManualClock>,
    engine: Arc<Engine>,
    image: String,
}

fn open(dir: &TempDir, clock: &Arc<ManualClock>) -> Arc<Engine> {
    let mut options = EngineOptions::new(dir.path());
    options.clock = clock.clone();
    options.public_ip_pool = Some("198.51.100.0/29".parse().unwrap());
    let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
    Arc::new(Engine::open(Box::new(store), options).unwrap())
}

fn rule(protocol: &str, from: i32, to: i32, cidr: &str) -> IpPermission {
    IpPermission {
        ip_protocol: protocol.into(),
        from_port: Some(from),
        to_port: Some(to),
        ip_ranges: vec![(cidr.into(), String::new())],
        groups: Vec::new(),
    }
}

impl Net {
    fn new() -> Net {
        let dir = TempDir::new("engine-net");
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let engine = open(&dir, &clock);
        std::fs::create_dir_all(dir.path().join("import")).unwrap();
        std::fs::write(dir.path().join("import/vmlinux"), b"kernel").unwrap();
        std::fs::write(dir.path().join("import/root.img"), vec![7u8; 4096]).unwrap();
        let mut net = Net {
            dir,
            clock,
            engine,
            image: String::new(),
        };
        net.host("h-a", "homelab-1a", "192.0.2.1");
        let path = |file: &str| net.dir.path().join("import").join(file).to_string_lossy().into_owned();
        net.image = net
            .engine
            .register_image(RegisterImageRequest {
                name: "base".into(),
                kernel_path: path("vmlinux"),
                root_image_path: path("root.img"),
                ..RegisterImageRequest::default()
            })
            .unwrap();
        net
    }

    fn host(&self, id: &str, zone: &str, underlay: &str) -> SyncAnswer {
        self.report(id, zone, underlay, &[])
    }

    fn report(&self, id: &str, zone: &str, underlay: &str, actual: &[ActualReport]) -> SyncAnswer {
        let host = HostReport {
            host_id: id.into(),
            availability_zone: zone.into(),
            vcpus: 64,
            memory_mib: 65536,
            agent_version: "test".into(),
            underlay_ip: underlay.into(),
            has_uplink: true,
        };
        self.engine.report(&host, actual).unwrap()
    }

    /// h-a's agent reports `instance` terminated (its VMM ended, volumes released).
    fn agent_terminated(&self, instance: &str) {
        let actual = ActualReport {
            instance_id: instance.into(),
            phase: "terminated".into(),
            start_generation: 1,
            ..ActualReport::default()
        };
        self.report("h-a", "homelab-1a", "192.0.2.1", &[actual]);
    }

    fn run(&self, network: LaunchNetwork) -> Ec2Result<String> {
        self.engine
            .run_instances(RunInstancesRequest {
                image_id: self.image.clone(),
                network,
                ..RunInstancesRequest::default()
            })
            .map(|r| r.instances[0].id.clone())
    }

    fn instance(&self, id: &str) -> crate::model::Instance {
        self.engine.lock().state.instances[id].as_ref().clone()
    }

    fn answer(&self, host: &str) -> SyncAnswer {
        self.engine.desired_state(host)
    }
}

#[test]
fn the_default_vpc_gives_instances_an_address_a_mac_and_the_default_group() {
    let net = Net::new();
    let vpcs = net.engine.describe_vpcs(&[], &[]).unwrap();
    assert_eq!(vpcs.len(), 1);
    assert!(vpcs[0].is_default);
    assert_eq!(vpcs[0].cidr.to_string(), "172.31.0.0/16");
    let subnets = net.engine.describe_subnets(&[], &[]).unwrap();
    assert_eq!(subnets.len(), 1);
    assert_eq!(subnets[0].subnet.cidr.to_string(), "172.31.0.0/20");
    assert_eq!(subnets[0].subnet.availability_zone, "homelab-1a");
    assert_eq!(subnets[0].available, 4096 - 5);
    let groups = net.engine.describe_security_groups(&[], &[], &[]).unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].name, "default");

    let a = net.run(LaunchNetwork::default()).unwrap();
    let b = net.run(LaunchNetwork::default()).unwrap();
    let (na, nb) = (net.instance(&a).network.unwrap(), net.instance(&b).network.unwrap());
    assert_eq!(
        na.private_ip,
        Ipv4Addr::new(172, 31, 0, 4),
        "the first five are reserved"
    );
    assert_eq!(nb.private_ip, Ipv4Addr::new(172, 31, 0, 5));
    assert_ne!(na.mac, nb.mac);
    assert!(na.mac.starts_with("02:"));
    assert_eq!(na.group_ids, vec![groups[0].id.clone()]);
    assert_eq!(net.engine.describe_subnets(&[], &[]).unwrap()[0].available, 4096 - 7);

    // A zone seen for the first time gets its default subnet.
    net.host("h-b", "homelab-1b", "192.0.2.2");
    let subnets = net.engine.describe_subnets(&[], &[]).unwrap();
    assert_eq!(subnets.len(), 2);
    assert!(subnets.iter().any(|s| s.subnet.cidr.to_string() == "172.31.16.0/20"));

    // What h-a is told: one subnet, both ports, the default group with its self rule.
    let answer = net.answer("h-a");
    assert_eq!(answer.network.subnets.len(), 1);
    assert_eq!(answer.network.subnets[0].gateway, Ipv4Addr::new(172, 31, 0, 1));
    assert_eq!(answer.network.firewall.ports.len(), 2);
    let group = &answer.network.firewall.groups[0];
    assert_eq!(group.ingress[0].source_groups, vec![group.id.clone()]);
    let interface = &answer.instances[0].interfaces[0];
    assert_eq!(interface.prefix_len, 20);
    assert_eq!(interface.tap, crate::engine::network::tap_name(&interface.mac));
    assert!(interface.tap.len() <= 15);
    // The NIC's limits are the instance type's (RunInstances defaults to t3.micro: 64 Mbit/s
    // baseline, up to 5 Gbit/s).
    let limits = crate::instance_types::InstanceTypes::built_in()
        .get(crate::instance_types::DEFAULT_INSTANCE_TYPE)
        .unwrap()
        .nic_limits();
    assert_eq!(interface.limits, limits);
    assert_eq!(limits.bytes_per_sec, 8_000_000);
    assert!(answer.instances[0].metadata.network_config.contains(&interface.mac));
    assert!(hearth_net::compile(&answer.network.firewall).is_ok());
}

#[test]
fn vpcs_and_subnets_follow_ec2_rules() {
    let net = Net::new();
    assert_eq!(
        code(net.engine.create_vpc("10.0.0.0/8", &[], false)),
        "InvalidVpc.Range"
    );
    assert_eq!(
        code(net.engine.create_vpc("nonsense", &[], false)),
        "InvalidParameterValue"
    );
    let vpc = net.engine.create_vpc("10.0.0.0/16", &[], false).unwrap();
    let same = net.engine.create_vpc("10.0.0.0/16", &[], false).unwrap();
    assert_ne!(vpc.number, same.number, "each VPC gets its own number (zone, table)");
    assert_eq!(
        code(net.engine.create_subnet(&vpc.id, "10.1.0.0/24", "", &[], false)),
        "InvalidSubnet.Range"
    );
    let subnet = net
        .engine
        .create_subnet(&vpc.id, "10.0.1.0/24", "", &[], false)
        .unwrap();
    assert_eq!(
        code(net.engine.create_subnet(&vpc.id, "10.0.1.128/25", "", &[], false)),
        "InvalidSubnet.Conflict"
    );
    assert_eq!(
        code(
            net.engine
                .create_subnet(&vpc.id, "10.0.2.0/24", "nowhere-1z", &[], false)
        ),
        "InvalidParameterValue"
    );
    assert_eq!(
        code(net.engine.create_subnet("vpc-12345678", "10.0.2.0/24", "", &[], false)),
        "InvalidVpcID.NotFound"
    );
    assert_eq!(code(net.engine.delete_vpc(&vpc.id, false)), "DependencyViolation");

    let id = net
        .run(LaunchNetwork {
            subnet_id: subnet.id.clone(),
            private_ip: "10.0.1.50".into(),
            ..LaunchNetwork::default()
        })
        .unwrap();
    assert_eq!(
        net.instance(&id).network.unwrap().private_ip,
        Ipv4Addr::new(10, 0, 1, 50)
    );
    assert_eq!(
        code(net.run(LaunchNetwork {
            subnet_id: subnet.id.clone(),
            private_ip: "10.0.1.50".into(),
            ..LaunchNetwork::default()
        })),
        "InvalidIPAddress.InUse"
    );
    assert_eq!(
        code(net.run(LaunchNetwork {
            subnet_id: subnet.id.clone(),
            private_ip: "10.0.1.1".into(),
            ..LaunchNetwork::default()
        })),
        "InvalidParameterValue"
    );
    // The default VPC's default group cannot go with another VPC's subnet.
    let default_group = net
        .engine
        .describe_security_groups(&[], &["default".into()], &[])
        .unwrap()[0]
        .clone();
    assert_eq!(
        code(net.run(LaunchNetwork {
            subnet_id: subnet.id.clone(),
            security_group_ids: vec![default_group.id.clone()],
            ..LaunchNetwork::default()
        })),
        "InvalidParameter"
    );
    assert_eq!(code(net.engine.delete_subnet(&subnet.id, false)), "DependencyViolation");
    net.engine
        .terminate_instances(std::slice::from_ref(&id), false)
        .unwrap();
    // Terminated (as the agent reports it): the address is free again.
    net.agent_terminated(&id);
    net.engine.delete_subnet(&subnet.id, false).unwrap();
    net.engine.delete_vpc(&vpc.id, false).unwrap();
    assert_eq!(
        code(net.engine.describe_vpcs(std::slice::from_ref(&vpc.id), &[])),
        "InvalidVpcID.NotFound"
    );
}

#[test]
fn security_group_rules_and_their_error_codes() {
    let net = Net::new();
    let web = net
        .engine
        .create_security_group("web", "web servers", "", &[], false)
        .unwrap();
    assert_eq!(
        code(net.engine.create_security_group("web", "again", "", &[], false)),
        "InvalidGroup.Duplicate"
    );
    assert_eq!(
        code(net.engine.create_security_group("default", "x", "", &[], false)),
        "InvalidGroup.Reserved"
    );
    assert_eq!(
        code(net.engine.create_security_group("", "x", "", &[], false)),
        "MissingParameter"
    );
    let db = net
        .engine
        .create_security_group("db", "databases", "", &[], false)
        .unwrap();
    let id = net
        .run(LaunchNetwork {
            security_group_ids: vec![web.clone()],
            ..LaunchNetwork::default()
        })
        .unwrap();
    let before = net.answer("h-a").revision;
    net.engine
        .change_security_group_rules(
            &web,
            "",
            Direction::Ingress,
            true,
            &[rule("udp", 7, 7, "10.9.0.0/16")],
            false,
        )
        .unwrap();
    let answer = net.answer("h-a");
    assert!(answer.revision > before, "a rule change reaches the host");
    let compiled = hearth_net::compile(&answer.network.firewall).unwrap();
    assert!(compiled.contains("10.9.0.0/16"), "{compiled}");
    assert_eq!(
        code(ingress(&net, &web, true, rule("udp", 7, 7, "10.9.0.0/16"))),
        "InvalidPermission.Duplicate"
    );
    assert_eq!(
        code(ingress(&net, &web, false, rule("tcp", 22, 22, "10.9.0.0/16"))),
        "InvalidPermission.NotFound"
    );
    assert_eq!(
        code(ingress(&net, &web, true, rule("tcp", 22, 70000, "0.0.0.0/0"))),
        "InvalidParameterValue"
    );
    assert_eq!(
        code(ingress(&net, "sg-12345678", true, rule("tcp", 22, 22, "0.0.0.0/0"))),
        "InvalidGroup.NotFound"
    );
    // db lets web's members in: db is now in use by web's... no, web is used by db's rule.
    let from_web = IpPermission {
        ip_protocol: "tcp".into(),
        from_port: Some(5432),
        to_port: Some(5432),
        ip_ranges: Vec::new(),
        groups: vec![(web.clone(), String::new())],
    };
    net.engine
        .change_security_group_rules(
            &db,
            "",
            Direction::Ingress,
            true,
            std::slice::from_ref(&from_web),
            false,
        )
        .unwrap();
    // A group another group's rule names cannot go; nor one an instance uses.
    net.engine
        .modify_instance_groups(&id, std::slice::from_ref(&db), false)
        .unwrap();
    assert_eq!(
        code(net.engine.delete_security_group(&web, "", false)),
        "InvalidGroup.InUse"
    );
    assert_eq!(
        code(net.engine.delete_security_group(&db, "", false)),
        "DependencyViolation"
    );
    assert_eq!(
        code(net.engine.delete_security_group("", "default", false)),
        "InvalidGroup.Reserved"
    );
    net.engine
        .change_security_group_rules(&db, "", Direction::Ingress, false, &[from_web], false)
        .unwrap();
    net.engine.delete_security_group(&web, "", false).unwrap();
    // Rules revoked: the compiled firewall has no trace of the web rule.
    let compiled = hearth_net::compile(&net.answer("h-a").network.firewall).unwrap();
    assert!(!compiled.contains("10.9.0.0/16"));
    assert_eq!(net.instance(&id).network.unwrap().group_ids, vec![db]);
}

#[test]
fn elastic_ips_associate_move_and_follow_termination() {
    let net = Net::new();
    let a = net.run(LaunchNetwork::default()).unwrap();
    let b = net.run(LaunchNetwork::default()).unwrap();
    let address = net.engine.allocate_address("", "", &[], false).unwrap();
    assert_eq!(
        address.public_ip,
        Ipv4Addr::new(198, 51, 100, 2),
        ".0 and .1 are not handed out"
    );
    assert_eq!(
        code(net.engine.allocate_address("", "203.0.113.9", &[], false)),
        "InvalidAddress.NotFound"
    );
    let first = net
        .engine
        .associate_address(&address.allocation_id, "", &a, false, "", false)
        .unwrap();
    assert_eq!(net.answer("h-a").network.elastic_ips[0].instance_id, a);
    let shown = net
        .engine
        .describe_instances(std::slice::from_ref(&a), &[], 0, "")
        .unwrap()
        .0;
    assert_eq!(shown[0].net.public_ips[&a], address.public_ip);
    assert_eq!(
        code(
            net.engine
                .associate_address(&address.allocation_id, "", &b, false, "", false)
        ),
        "Resource.AlreadyAssociated"
    );
    let second = net
        .engine
        .associate_address(&address.allocation_id, "", &b, true, "", false)
        .unwrap();
    assert_ne!(first, second);
    let elastic = &net.answer("h-a").network.elastic_ips;
    assert_eq!(elastic.len(), 1);
    assert_eq!(elastic[0].instance_id, b);
    assert_eq!(
        code(net.engine.release_address(&address.allocation_id, "", false)),
        "InvalidIPAddress.InUse"
    );
    assert_eq!(
        code(net.engine.disassociate_address(&first, "", false)),
        "InvalidAssociationID.NotFound"
    );
    assert_eq!(
        code(net.engine.release_address("eipalloc-12345678", "", false)),
        "InvalidAddress.NotFound"
    );
    assert_eq!(
        code(net.engine.describe_addresses(&[], &["198.51.100.6".into()], &[])),
        "InvalidAddress.NotFound"
    );
    // Terminating the instance disassociates the address (the allocation stays).
    net.engine.terminate_instances(std::slice::from_ref(&b), false).unwrap();
    net.agent_terminated(&b);
    let now = net.engine.describe_addresses(&[], &[], &[]).unwrap();
    assert!(now[0].association.is_none());
    net.engine
        .release_address("", &address.public_ip.to_string(), false)
        .unwrap();
    // The pool is small: 198.51.100.2..=6 (5 addresses).
    for _ in 0..5 {
        net.engine.allocate_address("vpc", "", &[], false).unwrap();
    }
    assert_eq!(
        code(net.engine.allocate_address("", "", &[], false)),
        "AddressLimitExceeded"
    );
}

#[test]
fn hosts_learn_their_vxlan_peers_and_remote_group_members() {
    let net = Net::new();
    net.host("h-b", "homelab-1a", "192.0.2.2");
    // One instance per host (each has room for many: place explicitly by filling h-a? the
    // scheduler spreads): run until both hosts have one.
    let mut on = std::collections::BTreeMap::new();
    for _ in 0..8 {
        let id = net.run(LaunchNetwork::default()).unwrap();
        on.entry(net.instance(&id).host_id).or_insert(id);
        if on.len() == 2 {
            break;
        }
    }
    assert_eq!(on.len(), 2, "the scheduler spread the instances: {on:?}");
    let a = net.answer("h-a");
    let b = net.answer("h-b");
    assert_eq!(a.network.subnets[0].peers, vec!["192.0.2.2".to_string()]);
    assert_eq!(b.network.subnets[0].peers, vec!["192.0.2.1".to_string()]);
    // The default group's members on h-b are remote members on h-a.
    let remote = &a.network.firewall.groups[0].remote_members;
    let b_ips: Vec<Ipv4Addr> = b.network.firewall.ports.iter().map(|p| p.ipv4).collect();
    assert!(b_ips.iter().all(|ip| remote.contains(ip)), "{remote:?} vs {b_ips:?}");
}

#[test]
fn network_records_survive_a_restart() {
    let mut net = Net::new();
    let vpc = net
        .engine
        .create_vpc("10.5.0.0/16", &[("Name".into(), "lab".into())], false)
        .unwrap();
    let group = net
        .engine
        .create_security_group("ssh", "ssh in", &vpc.id, &[], false)
        .unwrap();
    net.engine
        .change_security_group_rules(
            &group,
            "",
            Direction::Ingress,
            true,
            &[rule("tcp", 22, 22, "0.0.0.0/0")],
            false,
        )
        .unwrap();
    let address = net.engine.allocate_address("", "", &[], false).unwrap();
    net.engine = open(&net.dir, &net.clock);
    let vpcs = net.engine.describe_vpcs(std::slice::from_ref(&vpc.id), &[]).unwrap();
    assert_eq!(vpcs[0].tags.get("Name").map(String::as_str), Some("lab"));
    let groups = net
        .engine
        .describe_security_groups(std::slice::from_ref(&group), &[], &[])
        .unwrap();
    assert_eq!(groups[0].ingress.len(), 1);
    assert_eq!(net.engine.describe_addresses(&[], &[], &[]).unwrap()[0], address);
    // Still exactly one default VPC after the restart.
    let defaults = net
        .engine
        .describe_vpcs(&[], &[crate::filter::Filter::new("is-default", &["true"])])
        .unwrap();
    assert_eq!(defaults.len(), 1);
}

/// Authorizes (`true`) or revokes one ingress permission of `group`.
fn ingress(net: &Net, group: &str, authorize: bool, permission: IpPermission) -> Ec2Result<()> {
    net.engine
        .change_security_group_rules(group, "", Direction::Ingress, authorize, &[permission], false)
}
