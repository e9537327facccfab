//! The instance metadata service (EC2's IMDS, v1 and v2) that the host agent serves at
//! `169.254.169.254:80` on each instance bridge.
//!
//! The agent keeps one [`Imds`] (behind an `Arc`) holding, for each bridge, the instances on it keyed
//! by private IPv4 address ([`Imds::set_instances`], [`Imds::set_all`]: replaced whenever the agent
//! likes), and calls [`Imds::listen`] once per bridge. A request is answered for the instance whose
//! bridge it arrived on and whose address it comes from; a requester the table does not know gets
//! `403 Forbidden` (EC2 has no such case: there every address on the wire belongs to an instance).
//! [`respond`] is the whole behaviour as a pure function of the table, the requester and the request.
//!
//! # What it serves (as EC2 does)
//!
//! | path | answer |
//! |---|---|
//! | `/` | the API versions: `2009-04-04`, `2016-09-02`, `2018-09-24`, `2021-03-23`, `latest` (each serves the same tree; cloud-init probes dated versions) |
//! | `/latest/` | `dynamic`, `meta-data`, `user-data` (the last only when the instance has user data) |
//! | `/latest/meta-data/` | `ami-id`, `hostname`, `instance-id`, `instance-type`, `local-hostname`, `local-ipv4`, `mac`, `network/`, `placement/`, `public-ipv4` (if any), `public-keys/` (if any), `security-groups`, `services/` |
//! | `…/placement/` | `availability-zone`, `region` |
//! | `…/public-keys/` | `0=NAME` per key; `…/public-keys/0/` lists `openssh-key`, which is the key |
//! | `…/network/interfaces/macs/MAC/` | `device-number` (0), `local-hostname`, `local-ipv4s`, `mac`, `public-ipv4s` (if any), `security-group-ids`, `security-groups`, `subnet-id`, `subnet-ipv4-cidr-block`, `vpc-id` |
//! | `…/services/domain` | [`DOMAIN`] |
//! | `/latest/user-data` | the raw bytes (`application/octet-stream`); `404` when there are none |
//! | `/latest/dynamic/instance-identity/document` | JSON (`application/json`): `architecture` (`x86_64`), `availabilityZone`, `imageId`, `instanceId`, `instanceType`, `privateIp`, `region`, `version` (`2017-09-30`); no signature |
//!
//! A directory answers with its entries one per line (subdirectories end in `/`), with or without the
//! trailing slash in the request; a value answers with or without one too. Everything else is
//! `404 Not Found` (body `Not Found`, no HTML). `GET` and `HEAD` read metadata; any other method is
//! `405` (with `Allow`). Bodies are `text/plain` unless said otherwise.
//!
//! # Tokens (IMDSv2)
//!
//! - `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds: N` (1 to [`MAX_TOKEN_TTL`])
//!   → `200`, the token as body (64 hex digits from `/dev/urandom`) and the TTL echoed in the same
//!   header. No or a bad TTL → `400`; an `X-Forwarded-For` header → `403` (EC2 refuses tokens to
//!   proxied requests); any other method on that path → `405`.
//! - The token response leaves with the instance's `http_put_response_hop_limit` as IP TTL
//!   (`IP_TTL` on the connection's socket), so it dies after that many hops: a container or proxy
//!   behind the instance cannot get a token when the limit is 1. The connection closes after it.
//! - A token is bound to the bridge, the address and the instance id that asked for it, and expires
//!   after its TTL. Replacing the instance behind an address (another instance id) voids its tokens.
//!   At most [`MAX_TOKENS_PER_INSTANCE`] live tokens per instance are kept; beyond, the one expiring
//!   soonest is dropped (EC2 has no documented cap; this one bounds the memory a guest can take).
//! - A metadata request with `X-aws-ec2-metadata-token` is served if the token is valid, else `401`
//!   (expired, unknown, another instance's) — also when tokens are optional. Without the header it is
//!   served (IMDSv1) unless the instance has `http_tokens_required`, then `401`.
//! - An instance with `http_endpoint_enabled: false` gets `403 Forbidden` for everything, token
//!   requests included (the SDKs then give up on IMDS without retrying).
//!
//! # HTTP
//!
//! Hand-written HTTP/1.0 and 1.1, one request per connection: every response says
//! `Connection: close` and the server closes after it (it reads what the client sent first, so the
//! close is a FIN, not a reset). Limits ([`ImdsLimits`]): the request head at most
//! [`MAX_REQUEST_HEAD`] bytes and a body (ignored) at most [`MAX_REQUEST_BODY`] (else `400`, as for a
//! malformed request; an HTTP version other than 1.x is `505`; `Transfer-Encoding` is refused with
//! `400`); the whole request must arrive within 5 s, else the connection is closed without an answer;
//! at most 64 connections per listener at once (further ones wait in the kernel's backlog) and 8 per
//! client address (further ones are closed at once).
//!
//! # Throttling per instance
//!
//! The 64 connections of a listener are shared by every guest of its bridge, so each client address
//! (on a bridge that is one instance: anti-spoofing keeps a guest to its own address) is limited
//! before it gets there, as EC2 throttles IMDS per instance: at most 8 connections at once, and a
//! token bucket of 100 requests per second with a burst of 200 (beyond it the answer is `429 Too
//! Many Requests`, cheaper than a real answer; EC2 documents 429 for throttled IMDS queries and a
//! limit of 1024 packets per second per interface to its link-local services, about 200 of these
//! exchanges). A guest flooding the service thus holds at most 8 of the 64 slots and gets 429s,
//! and another guest on the bridge keeps getting its answers (`tests/imds.rs`,
//! `a_flooding_guest_is_throttled_and_another_still_gets_its_answers`).
//!
//! # What the host needs (bridges, addresses, routes)
//!
//! Several VPCs with the same CIDR can sit on one host, so two instances on two bridges can both be
//! `10.0.0.5`. What makes each one get its own answer (the test `duplicate_client_ips_on_two_bridges_…`
//! in `tests/imds.rs` sets this up; each point was checked on Linux 6.18):
//!
//! 1. `169.254.169.254/32` on every instance bridge (`ip addr add 169.254.169.254/32 dev brX`). The
//!    same address on several devices is fine: the local table gets one entry per device.
//! 2. One listener per bridge, bound to it with `SO_BINDTODEVICE` ([`Imds::listen`]; `SO_REUSEADDR`
//!    too). Binding the same address and port on different devices does not conflict, and a bridge's
//!    listener only gets connections that arrive on that bridge (frames from its ports are delivered
//!    with the bridge as input device).
//! 3. **No route or rule is needed for the replies.** An accepted socket inherits the device binding,
//!    and the kernel's route lookup for a bound socket only considers routes whose next hop is that
//!    device; when no table has one, it takes the destination as on-link on that device and ARPs for
//!    it there (source `169.254.169.254`). Routes through other devices — the default route via the
//!    uplink, another bridge's `10.0.0.0/24 dev brB`, a host LAN that overlaps the VPC — are skipped,
//!    and a connected route on the bridge itself (the bridge holding the subnet's gateway address,
//!    `10.0.0.1/24`, on both bridges at once) works as well. Neighbour entries are per device, so the
//!    two `10.0.0.5` never mix. (A per-bridge table with `ip rule add oif brA lookup 100` is therefore
//!    unnecessary.) Never answer from an unbound socket: it would follow the main table to whichever
//!    bridge's route comes first.
//! 4. **Reverse-path filtering must not be strict.** The incoming SYN is validated against an
//!    *unbound* lookup of its source. With `rp_filter=1` only the bridge that the main table's route
//!    to `10.0.0.5` points at is accepted (the other bridge's clients time out), and without any route
//!    to the client every bridge fails. `rp_filter=2` (loose) works when *some* route covers the
//!    client (a default route suffices); `0` always works. The kernel uses the larger of
//!    `net.ipv4.conf.all.rp_filter` and `net.ipv4.conf.<bridge>.rp_filter`, so `all` must be 0 or 2 and
//!    each bridge 0 (or 2 with a default route).
//! 5. **An instance address the host itself holds** (on any device: the uplink, or another bridge's
//!    gateway address, e.g. `10.0.0.17` being VPC A's router and VPC B's instance) makes the kernel
//!    drop that instance's SYNs as martians. `net.ipv4.conf.<bridge>.accept_local=1` on the bridges
//!    fixes it (checked: IMDS then answers both).
//! 6. The guest needs a route to `169.254.169.254`: through its gateway (the bridge holding the
//!    gateway address answers ARP for it) or on-link (`169.254.169.254 dev eth0`, as EC2's DHCP gives
//!    some images; the host answers ARP for `169.254.169.254` on that bridge with `arp_ignore` 0 or 1).
//!    Port 80 and `SO_BINDTODEVICE` need root (`CAP_NET_BIND_SERVICE`, `CAP_NET_RAW`), and a listener
//!    dies with its bridge: when the agent re-creates a bridge it must listen again.
//!
//! With hearth's firewall ([`crate::Nft`]) loaded two more things matter, both outside this module:
//! its bridge `input` chain applies the port's *egress* security-group rules to port → host traffic
//! (only DHCP is exempt), so a group without egress to `169.254.169.254/32` TCP 80 blocks IMDS, which
//! EC2 never filters; and host-bound flows are tracked in conntrack zone 0, so two same-address
//! instances of different VPCs that happen to use the same source port at the same time share one
//! conntrack entry.

mod http;
mod routes;
mod server;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::model::{Ipv4Cidr, MacAddr};

pub use http::{parse_request, HttpError, Request, Response};
pub use routes::respond;
pub use server::{ImdsLimits, ImdsListener};

/// The address IMDS answers on.
pub const IMDS_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The port IMDS answers on.
pub const IMDS_PORT: u16 = 80;
/// The largest request head (request line and headers) accepted, in bytes.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// The largest request body accepted (and ignored), in bytes.
pub const MAX_REQUEST_BODY: usize = 8 * 1024;
/// The longest token lifetime a client may ask for, in seconds (6 hours, as EC2).
pub const MAX_TOKEN_TTL: u32 = 21_600;
/// Live tokens kept per instance; issuing one more drops the one that expires soonest.
pub const MAX_TOKENS_PER_INSTANCE: usize = 1_000;
/// `services/domain`.
pub const DOMAIN: &str = "hearth.internal";
/// The path of the token endpoint.
pub const TOKEN_PATH: &str = "/latest/api/token";
/// The request header carrying an IMDSv2 token.
pub const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
/// The request (and response) header carrying a token's lifetime in seconds.
pub const TOKEN_TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";

/// What IMDS tells one instance about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImdsInstance {
    /// `i-…`.
    pub instance_id: String,
    /// `t3.micro`, …
    pub instance_type: String,
    /// `ami-…`.
    pub ami_id: String,
    /// `hostname` and `local-hostname` (EC2: `ip-10-0-0-5.REGION.compute.internal`).
    pub hostname: String,
    /// The primary private address; with the bridge, it identifies the requester.
    pub local_ipv4: Ipv4Addr,
    /// The public (or Elastic) IP, if any.
    pub public_ipv4: Option<Ipv4Addr>,
    /// The primary interface's MAC.
    pub mac: MacAddr,
    /// `placement/availability-zone`.
    pub availability_zone: String,
    /// `placement/region`.
    pub region: String,
    /// `vpc-…`.
    pub vpc_id: String,
    /// `subnet-…`.
    pub subnet_id: String,
    /// The subnet's CIDR.
    pub subnet_cidr: Ipv4Cidr,
    /// Key pairs as (name, OpenSSH public key); `public-keys/N` in this order.
    pub public_keys: Vec<(String, String)>,
    /// User data (already decoded from base64), if any.
    pub user_data: Option<Vec<u8>>,
    /// Names of the instance's security groups.
    pub security_groups: Vec<String>,
    /// Ids (`sg-…`) of the instance's security groups.
    pub security_group_ids: Vec<String>,
    /// IMDSv1 disabled: metadata only with a token (`HttpTokens=required`).
    pub http_tokens_required: bool,
    /// `HttpEndpoint=enabled`; when false every request of the instance gets `403`.
    pub http_endpoint_enabled: bool,
    /// IP TTL of token responses (`HttpPutResponseHopLimit`, 1–64; 0 is taken as 1).
    pub http_put_response_hop_limit: u8,
}

/// The metadata service's state: the instances of each bridge and the tokens issued. Shared (`Arc`)
/// between the agent, which replaces the instances, and the listeners.
#[derive(Debug, Default)]
pub struct Imds {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// device → private IPv4 → instance.
    instances: HashMap<String, HashMap<Ipv4Addr, Arc<ImdsInstance>>>,
    /// device → private IPv4 → tokens issued to that requester.
    tokens: HashMap<String, HashMap<Ipv4Addr, Vec<Token>>>,
}

#[derive(Debug)]
struct Token {
    value: String,
    instance_id: String,
    expires: Instant,
}

impl Imds {
    /// An empty service (no instances: every request gets `403`).
    pub fn new() -> Arc<Imds> {
        Arc::new(Imds::default())
    }

    /// Replaces the instances served on `device` (an empty list removes the device). When two share an
    /// address the last one wins. Tokens of instances that are gone or replaced become invalid.
    pub fn set_instances(&self, device: &str, instances: Vec<ImdsInstance>) {
        let mut state = self.lock();
        if instances.is_empty() {
            state.instances.remove(device);
        } else {
            state.instances.insert(device.to_string(), by_address(instances));
        }
        state.prune_tokens();
    }

    /// Replaces every device's instances at once (devices missing from `all` are removed).
    pub fn set_all(&self, all: HashMap<String, Vec<ImdsInstance>>) {
        let mut state = self.lock();
        state.instances = all
            .into_iter()
            .filter(|(_, instances)| !instances.is_empty())
            .map(|(device, instances)| (device, by_address(instances)))
            .collect();
        state.prune_tokens();
    }

    /// The instance at `ip` on `device`, if any.
    pub fn instance(&self, device: &str, ip: Ipv4Addr) -> Option<Arc<ImdsInstance>> {
        self.lock().instances.get(device)?.get(&ip).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it: every update is one assignment.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Issues a token for `instance` at (`device`, its address), valid for `ttl` from `now`.
    fn issue_token(&self, device: &str, instance: &ImdsInstance, ttl: Duration, now: Instant) -> io::Result<String> {
        let value = random_token()?;
        let mut state = self.lock();
        let tokens = state
            .tokens
            .entry(device.to_string())
            .or_default()
            .entry(instance.local_ipv4)
            .or_default();
        tokens.retain(|t| t.expires > now && t.instance_id == instance.instance_id);
        if tokens.len() >= MAX_TOKENS_PER_INSTANCE {
            if let Some(soonest) = (0..tokens.len()).min_by_key(|&i| tokens[i].expires) {
                tokens.swap_remove(soonest);
            }
        }
        tokens.push(Token {
            value: value.clone(),
            instance_id: instance.instance_id.clone(),
            expires: now + ttl,
        });
        Ok(value)
    }

    /// Whether `token` was issued to `instance` at (`device`, its address) and is still valid at `now`.
    fn token_valid(&self, device: &str, instance: &ImdsInstance, token: &str, now: Instant) -> bool {
        let mut state = self.lock();
        let Some(tokens) = state
            .tokens
            .get_mut(device)
            .and_then(|by_ip| by_ip.get_mut(&instance.local_ipv4))
        else {
            return false;
        };
        tokens.retain(|t| t.expires > now);
        tokens
            .iter()
            .any(|t| t.instance_id == instance.instance_id && constant_time_eq(t.value.as_bytes(), token.as_bytes()))
    }
}

impl State {
    /// Drops the tokens whose (device, address) no longer holds the instance they were issued to.
    fn prune_tokens(&mut self) {
        let instances = &self.instances;
        self.tokens.retain(|device, by_ip| {
            let Some(current) = instances.get(device) else {
                return false;
            };
            by_ip.retain(|ip, tokens| {
                let Some(instance) = current.get(ip) else {
                    return false;
                };
                tokens.retain(|t| t.instance_id == instance.instance_id);
                !tokens.is_empty()
            });
            !by_ip.is_empty()
        });
    }
}

fn by_address(instances: Vec<ImdsInstance>) -> HashMap<Ipv4Addr, Arc<ImdsInstance>> {
    instances
        .into_iter()
        .map(|instance| (instance.local_ipv4, Arc::new(instance)))
        .collect()
}

/// 32 bytes from `/dev/urandom` as 64 lowercase hex digits.
fn random_token() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares without stopping at the first difference (a client cannot time its way into a token).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
