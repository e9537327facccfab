//! What IMDS answers to a request: the checks (requester, method, token) and the metadata tree.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::http::{Request, Response};
use super::{Imds, ImdsInstance, DOMAIN, MAX_TOKEN_TTL, TOKEN_HEADER, TOKEN_PATH, TOKEN_TTL_HEADER};

/// The API versions listed at `/`; each serves the same tree.
const VERSIONS: [&str; 5] = ["2009-04-04", "2016-09-02", "2018-09-24", "2021-03-23", "latest"];

/// The answer to `request` from `peer` arriving on `device` (see the module documentation).
pub fn respond(imds: &Imds, device: &str, peer: Ipv4Addr, request: &Request) -> Response {
    respond_at(imds, device, peer, request, Instant::now())
}

/// [`respond`] at time `now` (token expiry).
pub(super) fn respond_at(imds: &Imds, device: &str, peer: Ipv4Addr, request: &Request, now: Instant) -> Response {
    let Some(instance) = imds.instance(device, peer) else {
        return Response::error(403);
    };
    if !instance.http_endpoint_enabled {
        return Response::error(403);
    }
    let path = request.path();
    if path == TOKEN_PATH {
        if request.method != "PUT" {
            return Response::error(405).with_header("Allow", "PUT");
        }
        return issue_token(imds, device, &instance, request, now);
    }
    if request.method != "GET" && request.method != "HEAD" {
        return Response::error(405).with_header("Allow", "GET, HEAD");
    }
    match request.header(TOKEN_HEADER) {
        Some(token) if !imds.token_valid(device, &instance, token, now) => return Response::error(401),
        None if instance.http_tokens_required => return Response::error(401),
        _ => {}
    }
    let tree = version_tree(&instance);
    let mut segments = path.split('/').filter(|segment| !segment.is_empty());
    let node = match segments.next() {
        None => return Response::text(200, VERSIONS.join("\n")),
        Some(version) if VERSIONS.contains(&version) => lookup(&tree, segments),
        Some(_) => None,
    };
    match node {
        Some(Node::Dir(entries)) => {
            let labels: Vec<&str> = entries.iter().map(|e| e.label.as_str()).collect();
            Response::text(200, labels.join("\n"))
        }
        Some(Node::File(content_type, body)) => Response::new(200, content_type, body.clone()),
        None => Response::error(404),
    }
}

fn issue_token(imds: &Imds, device: &str, instance: &ImdsInstance, request: &Request, now: Instant) -> Response {
    if request.header("X-Forwarded-For").is_some() {
        return Response::error(403);
    }
    let ttl = request
        .header(TOKEN_TTL_HEADER)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|ttl| (1..=MAX_TOKEN_TTL).contains(ttl));
    let Some(ttl) = ttl else {
        return Response::error(400);
    };
    match imds.issue_token(device, instance, Duration::from_secs(u64::from(ttl)), now) {
        Ok(token) => Response {
            ip_ttl: Some(instance.http_put_response_hop_limit.max(1)),
            ..Response::text(200, token).with_header(TOKEN_TTL_HEADER, ttl.to_string())
        },
        Err(_) => Response::error(500),
    }
}

/// A node of the metadata tree.
enum Node {
    /// Entries, listed by their labels.
    Dir(Vec<Entry>),
    /// A value with its content type.
    File(&'static str, Vec<u8>),
}

struct Entry {
    /// The path segment.
    name: String,
    /// The line in its directory's listing.
    label: String,
    node: Node,
}

fn file(name: &str, value: impl Into<Vec<u8>>) -> Entry {
    Entry {
        name: name.into(),
        label: name.into(),
        node: Node::File("text/plain", value.into()),
    }
}

/// A subdirectory, listed with a trailing slash.
fn dir(name: &str, entries: Vec<Entry>) -> Entry {
    Entry {
        name: name.into(),
        label: format!("{name}/"),
        node: Node::Dir(entries),
    }
}

/// A subdirectory listed under another label (`0=key-name`, or `meta-data` without a slash).
fn labelled_dir(name: &str, label: &str, entries: Vec<Entry>) -> Entry {
    Entry {
        name: name.into(),
        label: label.into(),
        node: Node::Dir(entries),
    }
}

/// A value of another content type.
fn typed_file(name: &str, content_type: &'static str, value: Vec<u8>) -> Entry {
    Entry {
        name: name.into(),
        label: name.into(),
        node: Node::File(content_type, value),
    }
}

fn lines(values: &[String]) -> String {
    values.join("\n")
}

/// The node at the end of `segments` from `root`.
fn lookup<'a, 'p>(root: &'a Node, mut segments: impl Iterator<Item = &'p str>) -> Option<&'a Node> {
    segments.try_fold(root, |node, segment| match node {
        Node::Dir(entries) => entries.iter().find(|e| e.name == segment).map(|e| &e.node),
        Node::File(..) => None,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IdentityDocument<'a> {
    architecture: &'static str,
    availability_zone: &'a str,
    image_id: &'a str,
    instance_id: &'a str,
    instance_type: &'a str,
    private_ip: Ipv4Addr,
    region: &'a str,
    version: &'static str,
}

/// The tree of `instance` under a version (`/latest/`).
fn version_tree(instance: &ImdsInstance) -> Node {
    let public_ipv4 = instance.public_ipv4.map(|ip| ip.to_string());
    let mac = instance.mac.to_string();

    let mut interface = vec![
        file("device-number", "0"),
        file("local-hostname", instance.hostname.as_str()),
        file("local-ipv4s", instance.local_ipv4.to_string()),
        file("mac", mac.as_str()),
    ];
    interface.extend(public_ipv4.iter().map(|ip| file("public-ipv4s", ip.as_str())));
    interface.extend([
        file("security-group-ids", lines(&instance.security_group_ids)),
        file("security-groups", lines(&instance.security_groups)),
        file("subnet-id", instance.subnet_id.as_str()),
        file("subnet-ipv4-cidr-block", instance.subnet_cidr.to_string()),
        file("vpc-id", instance.vpc_id.as_str()),
    ]);
    let network = dir(
        "network",
        vec![dir("interfaces", vec![dir("macs", vec![dir(&mac, interface)])])],
    );

    let mut meta_data = vec![
        file("ami-id", instance.ami_id.as_str()),
        file("hostname", instance.hostname.as_str()),
        file("instance-id", instance.instance_id.as_str()),
        file("instance-type", instance.instance_type.as_str()),
        file("local-hostname", instance.hostname.as_str()),
        file("local-ipv4", instance.local_ipv4.to_string()),
        file("mac", mac.as_str()),
        network,
        dir(
            "placement",
            vec![
                file("availability-zone", instance.availability_zone.as_str()),
                file("region", instance.region.as_str()),
            ],
        ),
    ];
    meta_data.extend(public_ipv4.iter().map(|ip| file("public-ipv4", ip.as_str())));
    if !instance.public_keys.is_empty() {
        let keys = instance
            .public_keys
            .iter()
            .enumerate()
            .map(|(i, (name, key))| {
                labelled_dir(
                    &i.to_string(),
                    &format!("{i}={name}"),
                    vec![file("openssh-key", key.as_str())],
                )
            })
            .collect();
        meta_data.push(dir("public-keys", keys));
    }
    meta_data.extend([
        file("security-groups", lines(&instance.security_groups)),
        dir("services", vec![file("domain", DOMAIN)]),
    ]);

    let document = IdentityDocument {
        architecture: "x86_64",
        availability_zone: &instance.availability_zone,
        image_id: &instance.ami_id,
        instance_id: &instance.instance_id,
        instance_type: &instance.instance_type,
        private_ip: instance.local_ipv4,
        region: &instance.region,
        version: "2017-09-30",
    };
    let document = serde_json::to_vec_pretty(&document).expect("a struct of strings serializes");
    let dynamic = vec![labelled_dir(
        "instance-identity",
        "instance-identity/",
        vec![typed_file("document", "application/json", document)],
    )];

    let mut version = vec![
        labelled_dir("dynamic", "dynamic", dynamic),
        labelled_dir("meta-data", "meta-data", meta_data),
    ];
    if let Some(user_data) = &instance.user_data {
        version.push(typed_file("user-data", "application/octet-stream", user_data.clone()));
    }
    Node::Dir(version)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::imds::{parse_request, MAX_TOKENS_PER_INSTANCE};
    use crate::MacAddr;

    const BR: &str = "br-a";
    const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);

    fn instance(id: &str, ip: Ipv4Addr) -> ImdsInstance {
        ImdsInstance {
            instance_id: id.into(),
            instance_type: "t3.micro".into(),
            ami_id: "ami-0abc".into(),
            hostname: "ip-10-0-0-5.hearth.internal".into(),
            local_ipv4: ip,
            public_ipv4: Some(Ipv4Addr::new(203, 0, 113, 7)),
            mac: MacAddr([2, 0, 0, 0, 0, 5]),
            availability_zone: "hearth-1a".into(),
            region: "hearth-1".into(),
            vpc_id: "vpc-1".into(),
            subnet_id: "subnet-1".into(),
            subnet_cidr: "10.0.0.0/24".parse().unwrap(),
            public_keys: vec![
                ("alice".into(), "ssh-ed25519 AAAAalice alice".into()),
                ("bob".into(), "ssh-ed25519 AAAAbob bob".into()),
            ],
            user_data: Some(b"#!/bin/sh\n\x00\xff".to_vec()),
            security_groups: vec!["default".into(), "web".into()],
            security_group_ids: vec!["sg-1".into(), "sg-2".into()],
            http_tokens_required: false,
            http_endpoint_enabled: true,
            http_put_response_hop_limit: 1,
        }
    }

    fn imds_with(instances: Vec<ImdsInstance>) -> Imds {
        let imds = Imds::default();
        imds.set_instances(BR, instances);
        imds
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
        let headers: String = headers.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
        let text = format!("{method} {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n{headers}\r\n");
        parse_request(text.as_bytes()).unwrap().unwrap().0
    }

    fn get(imds: &Imds, path: &str) -> Response {
        respond(imds, BR, IP, &request("GET", path, &[]))
    }

    fn body(response: &Response) -> &str {
        std::str::from_utf8(&response.body).unwrap()
    }

    fn token(imds: &Imds, device: &str, ip: Ipv4Addr, ttl: &str, now: Instant) -> String {
        let put = request("PUT", TOKEN_PATH, &[(TOKEN_TTL_HEADER, ttl)]);
        let response = respond_at(imds, device, ip, &put, now);
        assert_eq!(response.status, 200, "{}", body(&response));
        body(&response).to_string()
    }

    fn get_with_token(imds: &Imds, device: &str, ip: Ipv4Addr, token: &str, now: Instant) -> u16 {
        let request = request("GET", "/latest/meta-data/instance-id", &[(TOKEN_HEADER, token)]);
        respond_at(imds, device, ip, &request, now).status
    }

    #[test]
    fn directories_list_their_entries_with_or_without_a_trailing_slash() {
        let imds = imds_with(vec![instance("i-1", IP)]);
        assert_eq!(body(&get(&imds, "/")), VERSIONS.join("\n"));
        for path in ["/latest", "/latest/", "//latest//"] {
            assert_eq!(body(&get(&imds, path)), "dynamic\nmeta-data\nuser-data", "{path}");
        }
        let listing = "ami-id\nhostname\ninstance-id\ninstance-type\nlocal-hostname\nlocal-ipv4\nmac\nnetwork/\n\
                       placement/\npublic-ipv4\npublic-keys/\nsecurity-groups\nservices/";
        assert_eq!(body(&get(&imds, "/latest/meta-data/")), listing);
        assert_eq!(body(&get(&imds, "/latest/meta-data")), listing);
        assert_eq!(body(&get(&imds, "/2009-04-04/meta-data")), listing);
        assert_eq!(
            body(&get(&imds, "/latest/meta-data/placement")),
            "availability-zone\nregion"
        );
        assert_eq!(body(&get(&imds, "/latest/dynamic/")), "instance-identity/");
        assert_eq!(body(&get(&imds, "/latest/dynamic/instance-identity")), "document");
        let response = get(&imds, "/latest/meta-data/");
        assert_eq!(
            (response.status, response.header("Content-Type")),
            (200, Some("text/plain"))
        );
    }

    #[test]
    fn values_are_served() {
        let imds = imds_with(vec![instance("i-1", IP)]);
        for (path, value) in [
            ("/latest/meta-data/instance-id", "i-1"),
            ("/latest/meta-data/instance-id/", "i-1"),
            ("/latest/meta-data/ami-id", "ami-0abc"),
            ("/latest/meta-data/instance-type", "t3.micro"),
            ("/latest/meta-data/hostname", "ip-10-0-0-5.hearth.internal"),
            ("/latest/meta-data/local-hostname", "ip-10-0-0-5.hearth.internal"),
            ("/latest/meta-data/local-ipv4", "10.0.0.5"),
            ("/latest/meta-data/public-ipv4", "203.0.113.7"),
            ("/latest/meta-data/mac", "02:00:00:00:00:05"),
            ("/latest/meta-data/placement/availability-zone", "hearth-1a"),
            ("/latest/meta-data/placement/region", "hearth-1"),
            ("/latest/meta-data/security-groups", "default\nweb"),
            ("/latest/meta-data/services/domain", "hearth.internal"),
            ("/latest/meta-data/public-keys", "0=alice\n1=bob"),
            ("/latest/meta-data/public-keys/1/", "openssh-key"),
            ("/latest/meta-data/public-keys/1/openssh-key", "ssh-ed25519 AAAAbob bob"),
            ("/latest/meta-data/network/interfaces/macs/", "02:00:00:00:00:05/"),
            (
                "/latest/meta-data/network/interfaces/macs/02:00:00:00:00:05/vpc-id",
                "vpc-1",
            ),
            (
                "/latest/meta-data/network/interfaces/macs/02:00:00:00:00:05/subnet-id",
                "subnet-1",
            ),
            (
                "/latest/meta-data/network/interfaces/macs/02:00:00:00:00:05/subnet-ipv4-cidr-block",
                "10.0.0.0/24",
            ),
            (
                "/latest/meta-data/network/interfaces/macs/02:00:00:00:00:05/security-group-ids",
                "sg-1\nsg-2",
            ),
            (
                "/latest/meta-data/network/interfaces/macs/02:00:00:00:00:05/local-ipv4s",
                "10.0.0.5",
            ),
            (
                "/latest/meta-data/network/interfaces/macs/02:00:00:00:00:05/public-ipv4s",
                "203.0.113.7",
            ),
            (
                "/latest/meta-data/network/interfaces/macs/02:00:00:00:00:05",
                "device-number\nlocal-hostname\nlocal-ipv4s\nmac\npublic-ipv4s\nsecurity-group-ids\n\
                 security-groups\nsubnet-id\nsubnet-ipv4-cidr-block\nvpc-id",
            ),
        ] {
            let response = get(&imds, path);
            assert_eq!((response.status, body(&response)), (200, value), "{path}");
        }
        let user_data = get(&imds, "/latest/user-data");
        assert_eq!(user_data.body, b"#!/bin/sh\n\x00\xff");
        assert_eq!(user_data.header("Content-Type"), Some("application/octet-stream"));
    }

    #[test]
    fn optional_entries_are_absent_when_the_instance_has_none() {
        let mut bare = instance("i-1", IP);
        bare.public_ipv4 = None;
        bare.public_keys.clear();
        bare.user_data = None;
        let imds = imds_with(vec![bare]);
        assert_eq!(body(&get(&imds, "/latest/")), "dynamic\nmeta-data");
        let listing = body(&get(&imds, "/latest/meta-data/")).to_string();
        assert!(!listing.contains("public"), "{listing}");
        for path in [
            "/latest/user-data",
            "/latest/meta-data/public-ipv4",
            "/latest/meta-data/public-keys/",
            "/latest/meta-data/network/interfaces/macs/02:00:00:00:00:05/public-ipv4s",
        ] {
            assert_eq!(get(&imds, path).status, 404, "{path}");
        }
    }

    #[test]
    fn the_identity_document_is_json() {
        let imds = imds_with(vec![instance("i-1", IP)]);
        let response = get(&imds, "/latest/dynamic/instance-identity/document");
        assert_eq!(response.header("Content-Type"), Some("application/json"));
        let document: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(
            document,
            serde_json::json!({
                "architecture": "x86_64",
                "availabilityZone": "hearth-1a",
                "imageId": "ami-0abc",
                "instanceId": "i-1",
                "instanceType": "t3.micro",
                "privateIp": "10.0.0.5",
                "region": "hearth-1",
                "version": "2017-09-30",
            })
        );
    }

    #[test]
    fn unknown_paths_are_not_found() {
        let imds = imds_with(vec![instance("i-1", IP)]);
        for path in [
            "/nope",
            "/latest/nope",
            "/latest/meta-data/instance-id/extra",
            "/latest/meta-data/public-keys/2/openssh-key",
            "/1999-01-01/meta-data/",
            "/latest/api/token/x",
        ] {
            let response = get(&imds, path);
            assert_eq!((response.status, body(&response)), (404, "Not Found"), "{path}");
        }
    }

    #[test]
    fn head_is_get_and_other_methods_are_not_allowed() {
        let imds = imds_with(vec![instance("i-1", IP)]);
        let head = respond(&imds, BR, IP, &request("HEAD", "/latest/meta-data/instance-id", &[]));
        assert_eq!((head.status, body(&head)), (200, "i-1"));
        for method in ["POST", "PUT", "DELETE", "get"] {
            let response = respond(&imds, BR, IP, &request(method, "/latest/meta-data/", &[]));
            assert_eq!(response.status, 405, "{method}");
            assert_eq!(response.header("Allow"), Some("GET, HEAD"));
        }
        for method in ["GET", "HEAD", "POST"] {
            let response = respond(&imds, BR, IP, &request(method, TOKEN_PATH, &[(TOKEN_TTL_HEADER, "60")]));
            assert_eq!(response.status, 405, "{method}");
            assert_eq!(response.header("Allow"), Some("PUT"));
        }
    }

    #[test]
    fn unknown_requesters_and_disabled_endpoints_are_forbidden() {
        let mut disabled = instance("i-2", Ipv4Addr::new(10, 0, 0, 6));
        disabled.http_endpoint_enabled = false;
        let imds = imds_with(vec![instance("i-1", IP), disabled]);
        assert_eq!(respond(&imds, "br-b", IP, &request("GET", "/", &[])).status, 403);
        let stranger = Ipv4Addr::new(10, 0, 0, 9);
        assert_eq!(respond(&imds, BR, stranger, &request("GET", "/", &[])).status, 403);
        let disabled_ip = Ipv4Addr::new(10, 0, 0, 6);
        for request in [
            request("GET", "/latest/meta-data/instance-id", &[]),
            request("PUT", TOKEN_PATH, &[(TOKEN_TTL_HEADER, "60")]),
        ] {
            let response = respond(&imds, BR, disabled_ip, &request);
            assert_eq!((response.status, body(&response)), (403, "Forbidden"));
        }
    }

    #[test]
    fn a_token_is_issued_with_its_ttl_and_the_hop_limit() {
        let mut limited = instance("i-1", IP);
        limited.http_put_response_hop_limit = 2;
        let imds = imds_with(vec![limited]);
        let put = request("PUT", TOKEN_PATH, &[(TOKEN_TTL_HEADER, "21600")]);
        let response = respond(&imds, BR, IP, &put);
        assert_eq!(response.status, 200);
        assert_eq!(response.header(TOKEN_TTL_HEADER), Some("21600"));
        assert_eq!(response.ip_ttl, Some(2));
        let token = body(&response);
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        let again = respond(&imds, BR, IP, &put);
        assert_ne!(body(&again), token, "tokens are random");
        assert_eq!(get(&imds, "/latest/meta-data/").ip_ttl, None);

        let mut zero = instance("i-1", IP);
        zero.http_put_response_hop_limit = 0;
        let imds = imds_with(vec![zero]);
        assert_eq!(respond(&imds, BR, IP, &put).ip_ttl, Some(1));
    }

    #[test]
    fn token_requests_need_a_valid_ttl_and_no_proxy() {
        let imds = imds_with(vec![instance("i-1", IP)]);
        for ttl in [
            None,
            Some(""),
            Some("0"),
            Some("21601"),
            Some("-1"),
            Some("+5"),
            Some("1.5"),
            Some("x"),
        ] {
            let headers: Vec<(&str, &str)> = ttl.map(|t| (TOKEN_TTL_HEADER, t)).into_iter().collect();
            let response = respond(&imds, BR, IP, &request("PUT", TOKEN_PATH, &headers));
            assert_eq!(response.status, 400, "{ttl:?}");
        }
        let proxied = request(
            "PUT",
            TOKEN_PATH,
            &[(TOKEN_TTL_HEADER, "60"), ("X-Forwarded-For", "10.0.0.77")],
        );
        assert_eq!(respond(&imds, BR, IP, &proxied).status, 403);
    }

    #[test]
    fn tokens_authorize_only_their_instance_until_they_expire() {
        let other_ip = Ipv4Addr::new(10, 0, 0, 6);
        let imds = Imds::default();
        imds.set_all(HashMap::from([
            (BR.to_string(), vec![instance("i-1", IP), instance("i-2", other_ip)]),
            ("br-b".to_string(), vec![instance("i-3", IP)]),
        ]));
        let now = Instant::now();
        let token = token(&imds, BR, IP, "60", now);
        assert_eq!(get_with_token(&imds, BR, IP, &token, now), 200);
        assert_eq!(
            get_with_token(&imds, BR, IP, &token, now + Duration::from_secs(59)),
            200
        );
        assert_eq!(
            get_with_token(&imds, BR, IP, &token, now + Duration::from_secs(60)),
            401
        );
        let token = self::token(&imds, BR, IP, "60", now);
        assert_eq!(get_with_token(&imds, BR, other_ip, &token, now), 401, "another address");
        assert_eq!(get_with_token(&imds, "br-b", IP, &token, now), 401, "another bridge");
        assert_eq!(get_with_token(&imds, BR, IP, "0123", now), 401);
        assert_eq!(get_with_token(&imds, BR, IP, "", now), 401);
        assert_eq!(get_with_token(&imds, BR, IP, &token.to_uppercase(), now), 401);
        assert_eq!(get_with_token(&imds, BR, IP, &token, now), 200);
    }

    #[test]
    fn required_tokens_refuse_imdsv1() {
        let mut strict = instance("i-1", IP);
        strict.http_tokens_required = true;
        let imds = imds_with(vec![strict]);
        let response = get(&imds, "/latest/meta-data/instance-id");
        assert_eq!((response.status, body(&response)), (401, "Unauthorized"));
        let now = Instant::now();
        let token = token(&imds, BR, IP, "10", now);
        assert_eq!(get_with_token(&imds, BR, IP, &token, now), 200);
        // Optional tokens: no header is fine, a bad one is not.
        imds.set_instances(BR, vec![instance("i-1", IP)]);
        assert_eq!(get(&imds, "/latest/meta-data/instance-id").status, 200);
        assert_eq!(get_with_token(&imds, BR, IP, "bad", now), 401);
        assert_eq!(
            get_with_token(&imds, BR, IP, &token, now),
            200,
            "same instance: token kept"
        );
    }

    #[test]
    fn replacing_the_instance_behind_an_address_voids_its_tokens() {
        let imds = imds_with(vec![instance("i-1", IP)]);
        let now = Instant::now();
        let token = token(&imds, BR, IP, "600", now);
        imds.set_instances(BR, vec![instance("i-new", IP)]);
        assert_eq!(get_with_token(&imds, BR, IP, &token, now), 401);
        imds.set_instances(BR, vec![instance("i-1", IP)]);
        assert_eq!(
            get_with_token(&imds, BR, IP, &token, now),
            401,
            "pruned, not resurrected"
        );
        let token = self::token(&imds, BR, IP, "600", now);
        imds.set_instances(BR, Vec::new());
        assert_eq!(get_with_token(&imds, BR, IP, &token, now), 403);
        assert!(imds.lock().tokens.is_empty());
    }

    #[test]
    fn tokens_per_instance_are_capped() {
        let imds = imds_with(vec![instance("i-1", IP)]);
        let now = Instant::now();
        let first = token(&imds, BR, IP, "1", now);
        for _ in 1..MAX_TOKENS_PER_INSTANCE {
            token(&imds, BR, IP, "600", now);
        }
        assert_eq!(get_with_token(&imds, BR, IP, &first, now), 200);
        let last = token(&imds, BR, IP, "600", now);
        assert_eq!(imds.lock().tokens[BR][&IP].len(), MAX_TOKENS_PER_INSTANCE);
        assert_eq!(
            get_with_token(&imds, BR, IP, &first, now),
            401,
            "the soonest to expire went"
        );
        assert_eq!(get_with_token(&imds, BR, IP, &last, now), 200);
    }
}
