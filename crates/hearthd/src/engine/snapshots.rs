//! EBS snapshots: CreateSnapshot, DescribeSnapshots, DeleteSnapshot, CopySnapshot, and the
//! restores behind CreateVolume from a snapshot.
//!
//! Snapshots are incremental and content-addressed (`hearth_snapshot`): a snapshot stores
//! only the 1 MiB chunks no other snapshot holds. While the volume's instance runs, the VMM
//! gives a crash-consistent point-in-time copy of the chunks written since the volume's
//! last snapshot (`snapshot-disk` on its control socket: I/O quiesced, a reflink or a copy
//! of the dirty chunks, the dirty bitmap reset), and only those chunks are read; the others
//! come from the previous snapshot's manifest. Without a usable previous snapshot the copy
//! is read whole when it is complete (a reflink, or every chunk dirty); otherwise the guest
//! is paused while every chunk of the live file is read. A volume no VMM runs is read from its file
//! while starts of its instance are refused (IncorrectInstanceState).
//!
//! The record is `pending` until the store holds the manifest; a hearthd killed in the
//! middle leaves no manifest, and the record is marked `error` when hearthd restarts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hearth_snapshot::{CreateRequest, SnapshotStore};

use super::instances::dry_run;
use super::volumes::volume;
use super::Engine;
use crate::error::{Ec2Error, Ec2Result};
use crate::filter::{self, Filter, Values};
use crate::ids::IdKind;
use crate::model::{ImageState, InstanceState, SnapshotRecord, SnapshotState, Volume, VolumeState, GIB};
use crate::store::Changes;

/// CopySnapshot.
#[derive(Debug, Clone, Default)]
pub struct CopySnapshotRequest {
    /// The snapshot to copy.
    pub source_snapshot_id: String,
    /// Must be this region ("" = this region).
    pub source_region: String,
    /// Description of the copy.
    pub description: String,
    /// Ask for an encrypted copy.
    pub encrypted: bool,
    /// Key of the copy ("" = the source's).
    pub kms_key_id: String,
    /// Tags of the copy.
    pub tags: Vec<(String, String)>,
    /// Validate only.
    pub dry_run: bool,
}

const SNAPSHOT_FILTERS: &[&str] = &[
    "snapshot-id",
    "volume-id",
    "status",
    "description",
    "encrypted",
    "owner-id",
    "volume-size",
    "progress",
];

/// How long a VMM control request may take (a `snapshot-disk` copies dirty chunks).
const SNAPSHOT_DISK_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the start of hearthd waits for a VMM to resume a guest that an interrupted
/// snapshot paused (longer only while the VMM still copies dirty chunks for it).
const RECOVER_RESUME_TIMEOUT: Duration = Duration::from_secs(30);

fn store_error(operation: &str, error: hearth_snapshot::Error) -> Ec2Error {
    Ec2Error::io(operation.to_string(), std::io::Error::other(error.to_string()))
}

/// How a snapshot reads its volume.
enum Source {
    /// The VMM runs it: ask it over its control socket.
    Vmm { socket: PathBuf, disk_id: String },
    /// Nothing runs it: read the file.
    File,
}

impl Engine {
    /// The snapshot store, opened on first use.
    pub(crate) fn snapshot_store(&self) -> Ec2Result<Arc<SnapshotStore>> {
        if let Some(store) = self.snapshot_store.get() {
            return Ok(Arc::clone(store));
        }
        let store = SnapshotStore::open_with_http(
            &self.options.snapshot_store_location,
            hearth_image::transport::PlainHttpConnector,
        )
        .map_err(|e| store_error("open the snapshot store", e))?;
        let store = Arc::new(store);
        let _ = self.snapshot_store.set(Arc::clone(&store));
        Ok(Arc::clone(self.snapshot_store.get().unwrap_or(&store)))
    }

    /// Whether a snapshot is reading `volume_id`'s file right now.
    pub(crate) fn volume_busy(&self, volume_id: &str) -> bool {
        self.busy_volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(volume_id)
    }

    /// Marks snapshots left `pending` by a hearthd that stopped in the middle as `error`
    /// (their manifests were never written) and collects their orphan chunks.
    pub fn recover_snapshots(&self) -> Ec2Result<()> {
        let mut inner = self.lock();
        let stale: Vec<SnapshotRecord> = inner
            .state
            .snapshots
            .values()
            .filter(|s| s.state == SnapshotState::Pending)
            .map(|s| SnapshotRecord {
                state: SnapshotState::Error,
                state_message: "hearthd stopped while the snapshot was being taken".to_string(),
                ..s.clone()
            })
            .collect();
        let mut changes = Changes {
            snapshots: stale.clone(),
            ..Changes::default()
        };
        // The VMMs that may still hold a guest paused for one of them (the first snapshot of
        // a running volume reads its live file with the vCPUs stopped), and their copies.
        let mut leftovers = Vec::new();
        for snapshot in &stale {
            if let Some(volume) = inner.state.volumes.get(&snapshot.volume_id) {
                changes.volumes.push(Volume {
                    dirty_base: None,
                    ..volume.clone()
                });
                if !self.options.volume_files.reaches(&volume.host_id) {
                    continue;
                }
                let socket = volume
                    .attachment
                    .as_ref()
                    .and_then(|a| inner.state.instances.get(&a.instance_id))
                    .filter(|i| !matches!(i.state, InstanceState::Stopped | InstanceState::Terminated))
                    .map(|i| self.options.volume_files.control_socket(&i.host_id, &i.id));
                let frozen = self
                    .options
                    .volume_files
                    .volume_path(&volume.host_id, &volume.id)
                    .with_file_name(format!(".{}.frozen", snapshot.id));
                leftovers.push((socket, frozen));
            }
        }
        self.commit(&mut inner, changes)?;
        drop(inner);
        for (socket, frozen) in leftovers {
            if let Some(socket) = socket {
                // Harmless when the guest was not paused; fails at once when no VMM runs.
                let request = serde_json::json!({"cmd": "resume"}).to_string();
                match hearth_agent::control::request_blocking(&socket, &request, RECOVER_RESUME_TIMEOUT) {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                        ) => {}
                    Err(e) => eprintln!("hearthd: cannot resume the VMM at {}: {e}", socket.display()),
                }
            }
            let mut partial = frozen.clone().into_os_string();
            partial.push(".partial");
            for file in [frozen, PathBuf::from(partial)] {
                let _ = std::fs::remove_file(file);
            }
        }
        if !stale.is_empty() {
            if let Ok(store) = self.snapshot_store() {
                if let Err(e) = store.gc() {
                    eprintln!("hearthd: snapshot store garbage collection failed: {e}");
                }
            }
        }
        Ok(())
    }

    /// CreateSnapshot: records a `pending` snapshot and takes it in the background.
    pub fn create_snapshot(
        self: &Arc<Self>,
        volume_id: &str,
        description: &str,
        tags: &[(String, String)],
        dry: bool,
    ) -> Ec2Result<SnapshotRecord> {
        let tags = super::resource_tags(tags)?;
        if description.len() > 255 {
            return Err(Ec2Error::InvalidParameterValue(
                "The description is limited to 255 characters".to_string(),
            ));
        }
        let mut inner = self.lock();
        let state = &inner.state;
        let volume = volume(state, volume_id)?.clone();
        if !matches!(volume.state, VolumeState::Available | VolumeState::InUse) {
            return Err(Ec2Error::ResourceIncorrectState(format!(
                "Volume '{}' is {}",
                volume.id,
                volume.state.as_str()
            )));
        }
        if !self.options.volume_files.reaches(&volume.host_id) {
            return Err(Ec2Error::UnsupportedOperation(format!(
                "The volume '{}' is on host {}, whose files hearthd cannot reach (snapshots need the agent on hearthd's host)",
                volume.id, volume.host_id
            )));
        }
        if state
            .snapshots
            .values()
            .any(|s| s.volume_id == volume.id && s.state == SnapshotState::Pending)
        {
            return Err(Ec2Error::ResourceIncorrectState(format!(
                "Volume '{}' already has a snapshot in progress",
                volume.id
            )));
        }
        let source = match volume
            .attachment
            .as_ref()
            .and_then(|a| state.instances.get(&a.instance_id))
        {
            None => Source::File,
            Some(instance) => match instance.state {
                InstanceState::Stopped | InstanceState::Terminated => Source::File,
                InstanceState::Running if instance.actual.pid > 0 => Source::Vmm {
                    socket: self
                        .options
                        .volume_files
                        .control_socket(&instance.host_id, &instance.id),
                    disk_id: hearth_agent::volume::disk_id(&volume.id),
                },
                other => {
                    return Err(Ec2Error::IncorrectInstanceState {
                        id: instance.id.clone(),
                        action: match other {
                            InstanceState::Pending => "snapshotted while pending; wait until it runs",
                            _ => "snapshotted now; wait until it is running or stopped",
                        },
                    })
                }
            },
        };
        dry_run(dry)?;
        let store = self.snapshot_store()?;
        let record = SnapshotRecord {
            id: IdKind::Snapshot.generate(),
            volume_id: volume.id.clone(),
            state: SnapshotState::Pending,
            state_message: String::new(),
            start_time_ms: self.now(),
            volume_size_gib: volume.size_gib,
            volume_size_bytes: volume.size_bytes(),
            description: description.to_string(),
            encrypted: volume.encrypted,
            kms_key_id: volume.kms_key_id.clone(),
            stored_bytes: 0,
            full_size_bytes: 0,
            tags,
        };
        if matches!(source, Source::File) {
            self.busy_volumes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(volume.id.clone());
        }
        if let Err(e) = self.commit(
            &mut inner,
            Changes {
                snapshots: vec![record.clone()],
                ..Changes::default()
            },
        ) {
            self.busy_volumes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&volume.id);
            return Err(e);
        }
        drop(inner);
        let engine = Arc::clone(self);
        let pending = record.clone();
        std::thread::Builder::new()
            .name(format!("snapshot {}", record.id))
            .spawn(move || engine.take_snapshot(store, pending, volume, source))
            .map_err(|e| Ec2Error::io("start the snapshot thread", e))?;
        Ok(record)
    }

    fn take_snapshot(&self, store: Arc<SnapshotStore>, record: SnapshotRecord, volume: Volume, source: Source) {
        let volume_path = self.options.volume_files.volume_path(&volume.host_id, &volume.id);
        let result = match &source {
            Source::File => {
                let result = self.snapshot_file(&store, &record, &volume, &volume_path);
                self.busy_volumes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&volume.id);
                result
            }
            Source::Vmm { socket, disk_id } => {
                // The snapshot the VMM's dirty bitmap is relative to, if it still exists.
                let parent = volume.dirty_base.as_ref().and_then(|base| {
                    let completed = self
                        .lock()
                        .state
                        .snapshots
                        .get(base)
                        .is_some_and(|s| s.state == SnapshotState::Completed);
                    completed.then(|| store.get(base).ok()).flatten()
                });
                self.snapshot_running(&store, &record, &volume, &volume_path, socket, disk_id, parent.as_ref())
            }
        };
        let mut inner = self.lock();
        let Some(current) = inner.state.snapshots.get(&record.id).cloned() else {
            return;
        };
        let mut changes = Changes::default();
        let volume_now = inner.state.volumes.get(&volume.id).cloned();
        match result {
            Ok(outcome) => {
                changes.snapshots.push(SnapshotRecord {
                    state: SnapshotState::Completed,
                    stored_bytes: outcome.stored_bytes,
                    full_size_bytes: outcome.manifest.data_bytes(),
                    ..current
                });
                if let Some(v) = volume_now {
                    changes.volumes.push(Volume {
                        dirty_base: Some(record.id.clone()),
                        ..v
                    });
                }
            }
            Err(error) => {
                changes.snapshots.push(SnapshotRecord {
                    state: SnapshotState::Error,
                    state_message: error.message(),
                    ..current
                });
                if let Some(v) = volume_now {
                    changes.volumes.push(Volume { dirty_base: None, ..v });
                }
            }
        }
        if let Err(e) = self.commit(&mut inner, changes) {
            eprintln!(
                "hearthd: cannot record the end of snapshot {}: {}",
                record.id,
                e.message()
            );
        }
    }

    fn create_request<'a>(
        record: &SnapshotRecord,
        volume: &Volume,
        source: &'a std::path::Path,
        dirty: Option<Vec<(u64, u64)>>,
        parent: Option<&'a hearth_snapshot::Manifest>,
    ) -> CreateRequest<'a> {
        CreateRequest {
            snapshot_id: record.id.clone(),
            volume_id: volume.id.clone(),
            source,
            volume_size: volume.size_bytes(),
            dirty,
            parent,
            encrypted: volume.encrypted,
            key_id: (!volume.kms_key_id.is_empty()).then(|| volume.kms_key_id.clone()),
            description: record.description.clone(),
            start_time_ms: record.start_time_ms.max(0) as u64,
        }
    }

    /// A volume no VMM runs: its file as it is (created first, as the agent would, when no
    /// instance ever started with it).
    fn snapshot_file(
        &self,
        store: &SnapshotStore,
        record: &SnapshotRecord,
        volume: &Volume,
        path: &std::path::Path,
    ) -> Ec2Result<hearth_snapshot::CreateReport> {
        // As the agent does at a start: created from its source if missing, grown (sparse)
        // to the volume's size after a ModifyVolume.
        materialize(volume, path)?;
        let request = Self::create_request(record, volume, path, None, None);
        store.create(request).map_err(|e| store_error("take the snapshot", e))
    }

    /// A volume a VMM runs: the dirty chunks since the last snapshot, point in time.
    #[allow(clippy::too_many_arguments)]
    fn snapshot_running(
        &self,
        store: &SnapshotStore,
        record: &SnapshotRecord,
        volume: &Volume,
        volume_path: &std::path::Path,
        socket: &std::path::Path,
        disk_id: &str,
        parent: Option<&hearth_snapshot::Manifest>,
    ) -> Ec2Result<hearth_snapshot::CreateReport> {
        let frozen = volume_path.with_file_name(format!(".{}.frozen", record.id));
        let ctl = |request: serde_json::Value| -> Ec2Result<serde_json::Value> {
            let answer = hearth_agent::control::request_blocking(socket, &request.to_string(), SNAPSHOT_DISK_TIMEOUT)
                .map_err(|e| Ec2Error::io(format!("ask the VMM ({})", socket.display()), e))?;
            if answer["ok"].as_bool() != Some(true) {
                return Err(Ec2Error::io(
                    "the VMM refused",
                    std::io::Error::other(answer["error"].as_str().unwrap_or("no reason").to_string()),
                ));
            }
            Ok(answer)
        };
        struct Cleanup<'a>(&'a std::path::Path);
        impl Drop for Cleanup<'_> {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(self.0);
            }
        }
        let _cleanup = Cleanup(&frozen);
        let answer = ctl(serde_json::json!({
            "cmd": "snapshot-disk", "disk": disk_id, "out": frozen.display().to_string()
        }))?;
        let dirty = parse_dirty(&answer)?;
        if let Some(parent) = parent {
            // Clean chunks come from the previous snapshot, dirty ones from the copy.
            let request = Self::create_request(record, volume, &frozen, Some(dirty), Some(parent));
            return store.create(request).map_err(|e| store_error("take the snapshot", e));
        }
        let chunks = hearth_snapshot::chunk_count(volume.size_bytes(), hearth_snapshot::CHUNK_BYTES);
        let dirty_chunks: u64 = dirty.iter().map(|(_, count)| count).sum();
        if answer["method"] == "reflink" || dirty_chunks >= chunks {
            // The point-in-time copy is complete (a reflink, or every chunk was dirty, as
            // after a VMM start without a bitmap): read it all, the guest runs on.
            let request = Self::create_request(record, volume, &frozen, None, None);
            return store.create(request).map_err(|e| store_error("take the snapshot", e));
        }
        // The copy holds only some chunks and no previous snapshot has the others: pause the
        // guest and read every chunk of the live file (writes since the copy are marked dirty
        // again, so the next snapshot still has them), then resume.
        ctl(serde_json::json!({"cmd": "pause"}))?;
        let result = {
            let request = Self::create_request(record, volume, volume_path, None, None);
            store.create(request).map_err(|e| store_error("take the snapshot", e))
        };
        let resumed = ctl(serde_json::json!({"cmd": "resume"}));
        let outcome = result?;
        resumed?;
        Ok(outcome)
    }

    /// Restores `snapshot` into `volume`'s file in the background; the volume becomes
    /// `available`, or `error` with the reason (a corrupted chunk is reported, never
    /// written as data).
    pub(crate) fn restore_in_background(self: &Arc<Self>, volume: Volume, snapshot: SnapshotRecord) {
        let engine = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(format!("restore {}", volume.id))
            .spawn(move || {
                let result = engine.restore(&volume, &snapshot.id);
                engine.finish_restore(&volume.id, result);
            });
        if let Err(e) = spawned {
            eprintln!("hearthd: cannot start a restore thread: {e}");
        }
    }

    fn restore(&self, volume: &Volume, snapshot_id: &str) -> Ec2Result<()> {
        if !self.options.volume_files.reaches(&volume.host_id) {
            return Err(Ec2Error::UnsupportedOperation(format!(
                "host {} is not reachable from hearthd",
                volume.host_id
            )));
        }
        let store = self.snapshot_store()?;
        let path = self.options.volume_files.volume_path(&volume.host_id, &volume.id);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Ec2Error::io(format!("create {}", dir.display()), e))?;
        }
        store
            .restore(snapshot_id, &path, Some(volume.size_gib * GIB))
            .map_err(|e| Ec2Error::InvalidParameterValue(format!("restoring snapshot {snapshot_id} failed: {e}")))?;
        Ok(())
    }

    fn finish_restore(&self, volume_id: &str, result: Ec2Result<()>) {
        let mut inner = self.lock();
        let Some(volume) = inner.state.volumes.get(volume_id).cloned() else {
            return;
        };
        let next = match result {
            Ok(()) => Volume {
                state: VolumeState::Available,
                ..volume
            },
            Err(error) => Volume {
                state: VolumeState::Error,
                status_message: error.message(),
                ..volume
            },
        };
        if let Err(e) = self.commit(
            &mut inner,
            Changes {
                volumes: vec![next],
                ..Changes::default()
            },
        ) {
            eprintln!("hearthd: cannot record the restore of {volume_id}: {}", e.message());
        }
    }

    /// DescribeSnapshots.
    pub fn describe_snapshots(
        &self,
        ids: &[String],
        owners: &[String],
        filters: &[Filter],
    ) -> Ec2Result<Vec<SnapshotRecord>> {
        filter::check_names(filters, SNAPSHOT_FILTERS)?;
        for owner in owners {
            if owner != "self" && owner != &self.options.owner_id && owner != "amazon" {
                return Err(Ec2Error::InvalidParameterValue(format!("Invalid owner '{owner}'")));
            }
        }
        if owners.iter().all(|o| o == "amazon") && !owners.is_empty() {
            return Ok(Vec::new());
        }
        let inner = self.lock();
        let state = &inner.state;
        let mut snapshots: Vec<&SnapshotRecord> = if ids.is_empty() {
            state.snapshots.values().collect()
        } else {
            let mut missing = Vec::new();
            let mut found: Vec<&SnapshotRecord> = Vec::new();
            for id in ids {
                IdKind::Snapshot.validate(id)?;
                match state.snapshots.get(id) {
                    Some(s) if !found.iter().any(|f| f.id == s.id) => found.push(s),
                    Some(_) => {}
                    None => missing.push(id.as_str()),
                }
            }
            if !missing.is_empty() {
                return Err(Ec2Error::SnapshotNotFound(missing.join(", ")));
            }
            found
        };
        let owner_id = self.options.owner_id.clone();
        snapshots.retain(|s| {
            filter::matches(filters, &s.tags, |name| {
                Some(Values::One(match name {
                    "snapshot-id" => s.id.clone(),
                    "volume-id" => s.volume_id.clone(),
                    "status" => s.state.as_str().to_string(),
                    "description" => s.description.clone(),
                    "encrypted" => s.encrypted.to_string(),
                    "owner-id" => owner_id.clone(),
                    "volume-size" => s.volume_size_gib.to_string(),
                    "progress" => progress(s).to_string(),
                    _ => return None,
                }))
            })
        });
        snapshots.sort_by(|a, b| (a.start_time_ms, &a.id).cmp(&(b.start_time_ms, &b.id)));
        Ok(snapshots.into_iter().cloned().collect())
    }

    /// DeleteSnapshot: the record, the manifest, and every chunk no other snapshot needs.
    pub fn delete_snapshot(&self, id: &str, dry: bool) -> Ec2Result<()> {
        if id.is_empty() {
            return Err(Ec2Error::MissingParameter("SnapshotId".into()));
        }
        IdKind::Snapshot.validate(id)?;
        let mut inner = self.lock();
        let state = &inner.state;
        let snapshot = state
            .snapshots
            .get(id)
            .ok_or_else(|| Ec2Error::SnapshotNotFound(id.to_string()))?
            .clone();
        if snapshot.state == SnapshotState::Pending {
            return Err(Ec2Error::ResourceIncorrectState(format!(
                "Snapshot '{id}' is still being taken"
            )));
        }
        if let Some(image) = state
            .images
            .values()
            .find(|i| i.root_snapshot_id == id && i.state != ImageState::Deregistered)
        {
            return Err(Ec2Error::SnapshotInUse(format!(
                "The snapshot {id} is currently in use by {}",
                image.id
            )));
        }
        if let Some(volume) = state
            .volumes
            .values()
            .find(|v| v.snapshot_id == id && v.state == VolumeState::Creating)
        {
            return Err(Ec2Error::SnapshotInUse(format!(
                "The snapshot {id} is being restored into {}",
                volume.id
            )));
        }
        dry_run(dry)?;
        if snapshot.state == SnapshotState::Completed {
            let store = self.snapshot_store()?;
            match store.delete(id) {
                Ok(_) | Err(hearth_snapshot::Error::NotFound(_)) => {}
                Err(e) => return Err(store_error("delete the snapshot", e)),
            }
        }
        let mut changes = Changes {
            deleted_snapshots: vec![id.to_string()],
            ..Changes::default()
        };
        for volume in state.volumes.values().filter(|v| v.dirty_base.as_deref() == Some(id)) {
            changes.volumes.push(Volume {
                dirty_base: None,
                ..volume.clone()
            });
        }
        self.commit(&mut inner, changes)
    }

    /// CopySnapshot: a new snapshot sharing every chunk of the source (nothing is copied).
    pub fn copy_snapshot(&self, request: CopySnapshotRequest) -> Ec2Result<String> {
        if request.source_snapshot_id.is_empty() {
            return Err(Ec2Error::MissingParameter("SourceSnapshotId".into()));
        }
        IdKind::Snapshot.validate(&request.source_snapshot_id)?;
        if !request.source_region.is_empty() && request.source_region != self.options.region {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "Unknown source region '{}' (hearth has one region, {})",
                request.source_region, self.options.region
            )));
        }
        let tags = super::resource_tags(&request.tags)?;
        let mut inner = self.lock();
        let source = inner
            .state
            .snapshots
            .get(&request.source_snapshot_id)
            .ok_or_else(|| Ec2Error::SnapshotNotFound(request.source_snapshot_id.clone()))?
            .clone();
        if source.state != SnapshotState::Completed {
            return Err(Ec2Error::ResourceIncorrectState(format!(
                "Snapshot '{}' is {}, not completed",
                source.id,
                source.state.as_str()
            )));
        }
        if request.encrypted && !source.encrypted {
            return Err(Ec2Error::UnsupportedOperation(
                "Encrypting a copy of an unencrypted snapshot is not supported yet".to_string(),
            ));
        }
        if !request.kms_key_id.is_empty() && request.kms_key_id != source.kms_key_id {
            return Err(Ec2Error::UnsupportedOperation(
                "Re-encrypting a snapshot under another key is not supported yet".to_string(),
            ));
        }
        if source.encrypted {
            self.check_key(&format!("snapshot {}", source.id), &source.kms_key_id)?;
        }
        dry_run(request.dry_run)?;
        let id = IdKind::Snapshot.generate();
        let description = if request.description.is_empty() {
            format!("[Copied {} from {}]", source.id, self.options.region)
        } else {
            request.description.clone()
        };
        self.snapshot_store()?
            .copy(&source.id, &id, &description)
            .map_err(|e| store_error("copy the snapshot", e))?;
        let record = SnapshotRecord {
            id: id.clone(),
            description,
            start_time_ms: self.now(),
            stored_bytes: 0,
            tags,
            ..source
        };
        self.commit(
            &mut inner,
            Changes {
                snapshots: vec![record],
                ..Changes::default()
            },
        )?;
        Ok(id)
    }
}

/// EC2's progress text.
pub fn progress(snapshot: &SnapshotRecord) -> &'static str {
    match snapshot.state {
        SnapshotState::Completed => "100%",
        _ => "0%",
    }
}

/// The `dirty` ranges of a `snapshot-disk` answer.
fn parse_dirty(answer: &serde_json::Value) -> Ec2Result<Vec<(u64, u64)>> {
    let bad = || Ec2Error::io("read the VMM's answer", std::io::Error::other(answer.to_string()));
    let chunk = answer["chunk_bytes"].as_u64().ok_or_else(bad)?;
    if chunk != hearth_snapshot::CHUNK_BYTES {
        return Err(Ec2Error::io(
            "the VMM's dirty chunks",
            std::io::Error::other(format!(
                "chunk size {chunk}, the store's is {}",
                hearth_snapshot::CHUNK_BYTES
            )),
        ));
    }
    answer["dirty"]
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|range| Some((range.get(0)?.as_u64()?, range.get(1)?.as_u64()?)))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(bad)
}

/// Creates a volume's file the way the agent does (a clone of its source, or nothing,
/// grown sparse to its size), or grows an existing one to its size.
fn materialize(volume: &Volume, path: &std::path::Path) -> Ec2Result<()> {
    let desired = hearth_api::v1::DesiredVolume {
        volume_id: volume.id.clone(),
        source_path: volume.source_path.clone(),
        size_bytes: i64::try_from(volume.size_bytes()).unwrap_or(i64::MAX),
        ..Default::default()
    };
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Ec2Error::io(format!("create {}", dir.display()), e))?;
    hearth_agent::volume::ensure_volume(dir, &desired)
        .map(|_| ())
        .map_err(|e| {
            Ec2Error::io(
                format!("create {}", path.display()),
                std::io::Error::other(e.to_string()),
            )
        })
}
