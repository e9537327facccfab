//! The EC2 engine: every Compute call and the agents' Sync over the store, as plain Rust.
//!
//! The working set lives in memory behind one mutex; every change is committed to the
//! [`Store`] (one transaction) before memory is updated and before the call returns.

mod agent;
mod images;
mod import;
mod instances;
mod keys;
mod network;
#[cfg(test)]
mod network_tests;
mod snapshots;
#[cfg(test)]
mod storage_tests;
mod tags;
#[cfg(test)]
mod tests;
mod volumes;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

pub use agent::{
    ActualReport, DesiredInstance, DesiredVolume, EphemeralDisk, HostReport, ImdsInfo, InstanceMetadata,
    NetworkInterface, SyncAnswer,
};
pub use images::{CreateImageRequest, RegisterImageRequest};
pub use instances::{
    InstanceAttribute, InstanceStatus, ModifyInstanceRequest, Reservation, RunInstancesRequest, StateChange,
    TagSpecification,
};
pub use keys::CreatedKeyPair;
pub use network::{
    Direction, HostElasticIp, HostNetwork, HostSubnet, IpPermission, LaunchNetwork, MetadataOptions, NetNames,
    SubnetView,
};
pub use snapshots::progress as snapshot_progress;
pub use snapshots::CopySnapshotRequest;
pub use tags::{AvailabilityZone, Region, TagDescription};
pub use volumes::{attachment_state, AttachmentInfo, CreateVolumeRequest, ModifyVolumeRequest};

use crate::error::{Ec2Error, Ec2Result};
use crate::hostfiles::{ConsoleSource, LocalConsole, LocalVolumes, VolumeFiles};
use crate::instance_types::InstanceTypes;
use crate::kms::KeyStore;
use crate::model::{ClientTokenRecord, Host, Image, Instance, KeyPair, NetRecord, SnapshotRecord, Volume};
use crate::store::{Changes, Store, StoreError};
use crate::time::{Clock, SystemClock};

/// How the engine behaves, and where it finds what it needs.
pub struct EngineOptions {
    /// Region name (`DescribeRegions`).
    pub region: String,
    /// Endpoint shown by `DescribeRegions`.
    pub endpoint: String,
    /// Availability zones that exist even without a host.
    pub availability_zones: Vec<String>,
    /// The image store: a directory or `s3://bucket/prefix?endpoint=…` (see docs/images.md).
    pub image_store_location: String,
    /// Local copies of remote image files, and staging for imports.
    pub image_cache_dir: PathBuf,
    /// The only place RegisterImage reads files a caller names (`ImageLocation`, `KernelPath`,
    /// `InitrdPath`, `RootImagePath`): below it, without symbolic links or `..`.
    pub image_import_dir: PathBuf,
    /// Instance types offered.
    pub instance_types: InstanceTypes,
    /// Graceful stop timeout sent to agents.
    pub stop_timeout_ms: i64,
    /// vCPUs placed per host vCPU (overcommit, as OpenStack's `cpu_allocation_ratio`).
    pub cpu_allocation_ratio: f64,
    /// Guest memory placed per MiB a host offers (guest RAM is touched lazily).
    pub ram_allocation_ratio: f64,
    /// A host silent for longer is impaired and gets no new instances.
    pub host_timeout_ms: i64,
    /// How long terminated instances stay visible.
    pub terminated_retention_ms: i64,
    /// Owner ID shown on reservations.
    pub owner_id: String,
    /// Console logs.
    pub console: Arc<dyn ConsoleSource>,
    /// Volume files and VMM sockets on agent hosts (CreateImage, snapshots, restores).
    pub volume_files: Arc<dyn VolumeFiles>,
    /// Encryption keys of encrypted volumes.
    pub keys: KeyStore,
    /// The snapshot store, opened at `snapshot_store_location` on first use when `None`.
    pub snapshots: Option<Arc<hearth_snapshot::SnapshotStore>>,
    /// Where snapshots live: a directory or `s3://bucket/prefix?endpoint=…`.
    pub snapshot_store_location: String,
    /// Elastic IP addresses are allocated from this range (none: AllocateAddress fails).
    pub public_ip_pool: Option<hearth_net::Ipv4Cidr>,
    /// DNS servers handed to instances by DHCP (default: none).
    pub dns_servers: Vec<std::net::Ipv4Addr>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

impl EngineOptions {
    /// Defaults for a data directory: region `homelab-1`, images in `<data>/images`, and a
    /// local agent's files in `<data>/agent/run` and `<data>/agent/volumes`.
    pub fn new(data_dir: &std::path::Path) -> EngineOptions {
        EngineOptions {
            region: "homelab-1".to_string(),
            endpoint: String::new(),
            availability_zones: Vec::new(),
            image_store_location: data_dir.join("images").display().to_string(),
            image_cache_dir: data_dir.join("image-cache"),
            image_import_dir: data_dir.join("import"),
            instance_types: InstanceTypes::built_in(),
            stop_timeout_ms: 30_000,
            cpu_allocation_ratio: 16.0,
            ram_allocation_ratio: 1.5,
            host_timeout_ms: 10_000,
            terminated_retention_ms: 3_600_000,
            owner_id: "000000000000".to_string(),
            console: Arc::new(LocalConsole {
                run_dir: data_dir.join("agent/run"),
            }),
            volume_files: Arc::new(LocalVolumes {
                dir: data_dir.join("agent/volumes"),
                run_dir: data_dir.join("agent/run"),
                hosts: Vec::new(),
            }),
            keys: KeyStore::new(data_dir.join("kms")),
            snapshots: None,
            snapshot_store_location: data_dir.join("snapshots").display().to_string(),
            public_ip_pool: None,
            dns_servers: Vec::new(),
            clock: Arc::new(SystemClock),
        }
    }
}

/// The in-memory working set, a mirror of the store.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) instances: HashMap<String, Arc<Instance>>,
    pub(crate) volumes: HashMap<String, Volume>,
    pub(crate) images: HashMap<String, Image>,
    pub(crate) key_pairs: BTreeMap<String, KeyPair>,
    pub(crate) hosts: BTreeMap<String, Host>,
    pub(crate) client_tokens: HashMap<String, ClientTokenRecord>,
    pub(crate) snapshots: BTreeMap<String, SnapshotRecord>,
    pub(crate) vpcs: BTreeMap<String, crate::model::Vpc>,
    pub(crate) subnets: BTreeMap<String, crate::model::Subnet>,
    pub(crate) groups: BTreeMap<String, crate::model::SecurityGroup>,
    pub(crate) addresses: BTreeMap<String, crate::model::Address>,
    pub(crate) revision: u64,
    /// When each host last synced (memory only: a restarted hearthd waits for reports).
    pub(crate) host_seen_ms: HashMap<String, i64>,
}

impl State {
    fn apply(&mut self, changes: Changes) {
        for instance in changes.instances {
            self.instances.insert(instance.id.clone(), Arc::new(instance));
        }
        for id in changes.deleted_instances {
            self.instances.remove(&id);
        }
        for volume in changes.volumes {
            self.volumes.insert(volume.id.clone(), volume);
        }
        for id in changes.deleted_volumes {
            self.volumes.remove(&id);
        }
        for image in changes.images {
            self.images.insert(image.id.clone(), image);
        }
        for id in changes.deleted_images {
            self.images.remove(&id);
        }
        for key_pair in changes.key_pairs {
            self.key_pairs.insert(key_pair.name.clone(), key_pair);
        }
        for name in changes.deleted_key_pairs {
            self.key_pairs.remove(&name);
        }
        for host in changes.hosts {
            self.hosts.insert(host.id.clone(), host);
        }
        for record in changes.client_tokens {
            self.client_tokens.insert(record.token.clone(), record);
        }
        for token in changes.deleted_client_tokens {
            self.client_tokens.remove(&token);
        }
        for snapshot in changes.snapshots {
            self.snapshots.insert(snapshot.id.clone(), snapshot);
        }
        for id in changes.deleted_snapshots {
            self.snapshots.remove(&id);
        }
        for record in changes.net {
            match record {
                NetRecord::Vpc(vpc) => {
                    self.vpcs.insert(vpc.id.clone(), vpc);
                }
                NetRecord::Subnet(subnet) => {
                    self.subnets.insert(subnet.id.clone(), subnet);
                }
                NetRecord::SecurityGroup(group) => {
                    self.groups.insert(group.id.clone(), group);
                }
                NetRecord::Address(address) => {
                    self.addresses.insert(address.allocation_id.clone(), address);
                }
            }
        }
        for id in changes.deleted_net {
            self.vpcs.remove(&id);
            self.subnets.remove(&id);
            self.groups.remove(&id);
            self.addresses.remove(&id);
        }
        if let Some(revision) = changes.revision {
            self.revision = revision;
        }
    }

    /// Bumps every known host (a network change: groups, members, addresses).
    pub(crate) fn bump_all_hosts(&self, changes: &mut Changes) {
        let hosts: Vec<String> = self.hosts.keys().cloned().collect();
        self.bump_hosts(changes, hosts.iter().map(String::as_str));
    }

    /// Whether `host_id` synced within `timeout_ms` of `now`.
    pub(crate) fn host_is_live(&self, host_id: &str, now: i64, timeout_ms: i64) -> bool {
        self.host_seen_ms
            .get(host_id)
            .is_some_and(|seen| now - seen <= timeout_ms)
    }

    /// Marks the desired state of `hosts` changed: they get the next revision.
    /// Bumps every host that an instance written by `changes` lives on.
    pub(crate) fn bump_changed_hosts(&self, changes: &mut Changes) {
        let hosts: Vec<String> = changes.instances.iter().map(|i| i.host_id.clone()).collect();
        self.bump_hosts(changes, hosts.iter().map(String::as_str));
    }

    pub(crate) fn bump_hosts<'a>(&self, changes: &mut Changes, hosts: impl IntoIterator<Item = &'a str>) {
        let next = self.revision + 1;
        let hosts: BTreeSet<&str> = hosts.into_iter().collect();
        for host_id in hosts {
            if let Some(host) = changes.hosts.iter_mut().find(|host| host.id == host_id) {
                host.revision = next;
            } else if let Some(host) = self.hosts.get(host_id) {
                changes.hosts.push(Host {
                    revision: next,
                    ..host.clone()
                });
            } else {
                continue;
            }
            changes.revision = Some(next);
        }
    }
}

struct Inner {
    state: State,
    store: Box<dyn Store>,
}

/// The engine: EC2 semantics over a [`Store`].
pub struct Engine {
    inner: Mutex<Inner>,
    options: EngineOptions,
    revisions: watch::Sender<u64>,
    snapshot_store: std::sync::OnceLock<Arc<hearth_snapshot::SnapshotStore>>,
    image_store: std::sync::OnceLock<Arc<hearth_image::BlockingImageStore>>,
    /// Volumes a snapshot is reading from the file right now (no start may touch them).
    busy_volumes: Mutex<BTreeSet<String>>,
}

impl Engine {
    /// Loads every record from `store`.
    pub fn open(mut store: Box<dyn Store>, options: EngineOptions) -> Result<Engine, StoreError> {
        let snapshot = store.load()?;
        let mut state = State {
            revision: snapshot.revision,
            ..State::default()
        };
        state.apply(Changes {
            instances: snapshot.instances,
            volumes: snapshot.volumes,
            images: snapshot.images,
            key_pairs: snapshot.key_pairs,
            hosts: snapshot.hosts,
            client_tokens: snapshot.client_tokens,
            snapshots: snapshot.snapshots,
            net: snapshot.net,
            ..Changes::default()
        });
        let (revisions, _) = watch::channel(state.revision);
        let snapshot_store = std::sync::OnceLock::new();
        if let Some(store) = &options.snapshots {
            let _ = snapshot_store.set(Arc::clone(store));
        }
        let engine = Engine {
            inner: Mutex::new(Inner { state, store }),
            options,
            revisions,
            snapshot_store,
            image_store: std::sync::OnceLock::new(),
            busy_volumes: Mutex::new(BTreeSet::new()),
        };
        engine.ensure_default_network()?;
        Ok(engine)
    }

    /// The options the engine runs with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // State only changes after a successful commit, so a poisoned lock holds consistent data.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now(&self) -> i64 {
        self.options.clock.now_ms()
    }

    /// Commits `changes` to the store, then to memory, then wakes agents waiting on a revision.
    fn commit(&self, inner: &mut Inner, changes: Changes) -> Ec2Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        inner.store.commit(&changes)?;
        let moved = changes.revision;
        inner.state.apply(changes);
        if let Some(revision) = moved {
            self.revisions.send_replace(revision);
        }
        Ok(())
    }

    /// Removes terminated instances older than the retention (with their deleted volumes
    /// and client tokens) and deregistered images no instance uses any more. Returns how
    /// many instances went.
    pub fn purge(&self) -> Ec2Result<usize> {
        let now = self.now();
        let mut inner = self.lock();
        let state = &inner.state;
        let cutoff = now - self.options.terminated_retention_ms;
        let mut changes = Changes::default();
        for instance in state.instances.values() {
            if instance.terminated_at_ms.is_some_and(|at| at <= cutoff) {
                changes.deleted_instances.push(instance.id.clone());
            }
        }
        let gone: BTreeSet<&str> = changes.deleted_instances.iter().map(String::as_str).collect();
        for volume in state.volumes.values() {
            let orphan = volume.state == crate::model::VolumeState::Deleted
                && volume
                    .attachment
                    .as_ref()
                    .is_none_or(|a| gone.contains(a.instance_id.as_str()));
            if orphan {
                changes.deleted_volumes.push(volume.id.clone());
            }
        }
        let live_reservations: BTreeSet<&str> = state
            .instances
            .values()
            .filter(|i| !gone.contains(i.id.as_str()))
            .map(|i| i.reservation_id.as_str())
            .collect();
        for record in state.client_tokens.values() {
            if !live_reservations.contains(record.reservation_id.as_str()) {
                changes.deleted_client_tokens.push(record.token.clone());
            }
        }
        let used_images: BTreeSet<&str> = state
            .instances
            .values()
            .filter(|i| i.state != crate::model::InstanceState::Terminated)
            .flat_map(|i| images::images_used_by(i))
            .collect();
        let mut removed_images = Vec::new();
        for image in state.images.values() {
            if image.state == crate::model::ImageState::Deregistered && !used_images.contains(image.id.as_str()) {
                changes.deleted_images.push(image.id.clone());
                removed_images.push(image.id.clone());
            }
        }
        let purged = changes.deleted_instances.len();
        let removed: Vec<Image> = removed_images
            .iter()
            .filter_map(|id| inner.state.images.get(id).cloned())
            .collect();
        self.commit(&mut inner, changes)?;
        let others: Vec<Image> = inner.state.images.values().cloned().collect();
        drop(inner);
        for image in &removed {
            self.release_image_files(image, &others);
        }
        Ok(purged)
    }
}

/// Refuses an empty ID list the EC2 way.
pub(crate) fn require_ids(ids: &[String]) -> Ec2Result<()> {
    if ids.is_empty() {
        return Err(Ec2Error::InvalidParameterCombination(
            "No instances specified".to_string(),
        ));
    }
    Ok(())
}

/// Checks tags the EC2 way: key 1–128 characters, not `aws:`, value up to 256.
/// The tags of a new volume or snapshot (TagSpecifications), checked.
pub(crate) fn resource_tags(tags: &[(String, String)]) -> Ec2Result<crate::model::Tags> {
    let mut out = crate::model::Tags::new();
    for (key, value) in tags {
        check_tag(key, value)?;
        out.insert(key.clone(), value.clone());
    }
    if out.len() > MAX_TAGS {
        return Err(Ec2Error::TagLimitExceeded(format!(
            "More than {MAX_TAGS} tags on one resource"
        )));
    }
    Ok(out)
}

pub(crate) fn check_tag(key: &str, value: &str) -> Ec2Result<()> {
    if key.is_empty() || key.chars().count() > 128 {
        return Err(Ec2Error::InvalidParameterValue(format!(
            "Tag key '{key}' must be 1 to 128 characters"
        )));
    }
    if key.starts_with("aws:") {
        return Err(Ec2Error::InvalidParameterValue(
            "Tag keys starting with 'aws:' are reserved".to_string(),
        ));
    }
    if value.chars().count() > 256 {
        return Err(Ec2Error::InvalidParameterValue(format!(
            "The value of tag '{key}' is longer than 256 characters"
        )));
    }
    Ok(())
}

/// Most tags a resource may carry.
pub(crate) const MAX_TAGS: usize = 50;
