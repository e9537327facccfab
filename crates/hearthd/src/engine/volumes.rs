//! EBS volumes: CreateVolume, DescribeVolumes, AttachVolume, DetachVolume, DeleteVolume,
//! ModifyVolume, DescribeVolumesModifications.
//!
//! A volume is a raw file on one host (`<volume dir>/<vol-id>.img`, created by the agent
//! when an instance first starts with it, or by hearthd when it restores a snapshot into
//! it). Volumes attach and detach while their instance is **stopped**: virtio-mmio has no
//! hotplug in Linux, and hearth does not reserve empty slots at boot (see
//! docs/storage.md). A modification (size, type, IOPS, throughput) reaches the guest when
//! the instance next starts.

use std::sync::Arc;

use super::instances::dry_run;
use super::{Engine, State};
use crate::error::{Ec2Error, Ec2Result};
use crate::filter::{self, Filter, Values};
use crate::ids::IdKind;
use crate::model::{
    InstanceBlockDevice, InstanceState, SnapshotState, Tags, Volume, VolumeAttachment, VolumeModification, VolumeState,
    GIB,
};
use crate::store::Changes;
use crate::volume_types;

/// Most volumes attached to one instance (virtio-mmio slots left after the metadata disk,
/// the entropy device and NICs).
pub const MAX_ATTACHED_VOLUMES: usize = 12;

/// CreateVolume.
#[derive(Debug, Clone, Default)]
pub struct CreateVolumeRequest {
    /// Required.
    pub availability_zone: String,
    /// GiB (default: the snapshot's size).
    pub size_gib: Option<u64>,
    /// Default gp3.
    pub volume_type: String,
    /// Provisioned IOPS.
    pub iops: Option<u32>,
    /// gp3 throughput.
    pub throughput_mibps: Option<u32>,
    /// Encrypt (always true from an encrypted snapshot).
    pub encrypted: bool,
    /// The key to use ("" = a new key, or the snapshot's).
    pub kms_key_id: String,
    /// Restore this snapshot into it.
    pub snapshot_id: String,
    /// Tags (resource type `volume`).
    pub tags: Vec<(String, String)>,
    /// Validate only.
    pub dry_run: bool,
}

/// ModifyVolume.
#[derive(Debug, Clone, Default)]
pub struct ModifyVolumeRequest {
    /// The volume.
    pub volume_id: String,
    /// New size (grow only).
    pub size_gib: Option<u64>,
    /// New type ("" = same).
    pub volume_type: String,
    /// New IOPS.
    pub iops: Option<u32>,
    /// New throughput.
    pub throughput_mibps: Option<u32>,
    /// Validate only.
    pub dry_run: bool,
}

/// An attachment as AttachVolume/DetachVolume answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentInfo {
    /// The volume.
    pub volume_id: String,
    /// The instance.
    pub instance_id: String,
    /// Device name.
    pub device: String,
    /// attaching, attached, detaching, detached.
    pub state: String,
    /// Attach time (Unix ms).
    pub attach_time_ms: i64,
    /// DeleteOnTermination.
    pub delete_on_termination: bool,
}

const VOLUME_FILTERS: &[&str] = &[
    "volume-id",
    "availability-zone",
    "status",
    "size",
    "volume-type",
    "encrypted",
    "snapshot-id",
    "attachment.instance-id",
    "attachment.device",
    "attachment.status",
    "attachment.delete-on-termination",
];

const MODIFICATION_FILTERS: &[&str] = &["volume-id", "modification-state", "target-volume-type", "target-size"];

fn valid_device_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("/dev/") else {
        return false;
    };
    let letters = rest
        .strip_prefix("xvd")
        .or_else(|| rest.strip_prefix("sd"))
        .or_else(|| rest.strip_prefix("vd"));
    letters.is_some_and(|l| (1..=2).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_lowercase()))
}

/// Looks a volume up (not deleted).
pub(crate) fn volume<'a>(state: &'a State, id: &str) -> Ec2Result<&'a Volume> {
    if id.is_empty() {
        return Err(Ec2Error::MissingParameter("VolumeId".into()));
    }
    IdKind::Volume.validate(id)?;
    state
        .volumes
        .get(id)
        .filter(|v| v.state != VolumeState::Deleted)
        .ok_or_else(|| Ec2Error::VolumeNotFound(id.to_string()))
}

/// The attachment state EC2 shows for a volume in use.
pub fn attachment_state(volume: &Volume) -> &'static str {
    match volume.state {
        VolumeState::InUse => "attached",
        _ => "detached",
    }
}

impl Engine {
    /// The host a new volume in `zone` lives on: the zone's host with the fewest volumes.
    fn volume_host(&self, state: &State, zone: &str) -> Ec2Result<String> {
        let known = state.hosts.values().any(|h| h.availability_zone == zone)
            || self.options.availability_zones.iter().any(|z| z == zone);
        if !known {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "Invalid availability zone: [{zone}]"
            )));
        }
        state
            .hosts
            .values()
            .filter(|h| h.availability_zone == zone)
            .min_by_key(|h| {
                let count = state
                    .volumes
                    .values()
                    .filter(|v| v.host_id == h.id && v.state != VolumeState::Deleted)
                    .count();
                (count, h.id.clone())
            })
            .map(|h| h.id.clone())
            .ok_or_else(|| {
                Ec2Error::InsufficientInstanceCapacity(format!(
                    "There is no host in {zone} to hold the volume yet (start an agent there)"
                ))
            })
    }

    /// Fails closed unless the key `key_id` of the encrypted `owner` (e.g. `volume vol-…`)
    /// can be used now: an empty id, a missing or unreadable key file, or a key that is not
    /// 64 bytes is `InvalidKMSKey.InvalidState`. Called before anything changes.
    pub(super) fn check_key(&self, owner: &str, key_id: &str) -> Ec2Result<Vec<u8>> {
        if key_id.is_empty() {
            return Err(Ec2Error::KmsKeyInvalidState(format!(
                "{owner} is encrypted but names no key"
            )));
        }
        match self.options.keys.load(key_id) {
            Ok(key) => Ok(key),
            Err(Ec2Error::KmsKeyInvalidState(problem)) => {
                Err(Ec2Error::KmsKeyInvalidState(format!("{owner}: {problem}")))
            }
            Err(other) => Err(Ec2Error::KmsKeyInvalidState(format!("{owner}: {}", other.message()))),
        }
    }

    /// [`Engine::check_key`] for a volume: its key, `None` for a plain volume.
    pub(super) fn volume_key(&self, volume: &Volume) -> Ec2Result<Option<Vec<u8>>> {
        if !volume.encrypted && volume.kms_key_id.is_empty() {
            return Ok(None);
        }
        self.check_key(&format!("volume {}", volume.id), &volume.kms_key_id)
            .map(Some)
    }

    /// CreateVolume: a blank volume is `available` at once (its file is created sparse when
    /// an instance first starts with it); from a snapshot it is `creating` until the
    /// snapshot is restored into its file.
    pub fn create_volume(self: &Arc<Self>, request: CreateVolumeRequest) -> Ec2Result<Volume> {
        if request.availability_zone.is_empty() {
            return Err(Ec2Error::MissingParameter("AvailabilityZone".into()));
        }
        let tags = super::resource_tags(&request.tags)?;
        let volume_type = if request.volume_type.is_empty() {
            "gp3".to_string()
        } else {
            request.volume_type.clone()
        };
        let mut inner = self.lock();
        let state = &inner.state;
        let snapshot = if request.snapshot_id.is_empty() {
            None
        } else {
            IdKind::Snapshot.validate(&request.snapshot_id)?;
            let snapshot = state
                .snapshots
                .get(&request.snapshot_id)
                .ok_or_else(|| Ec2Error::SnapshotNotFound(request.snapshot_id.clone()))?;
            if snapshot.state != SnapshotState::Completed {
                return Err(Ec2Error::ResourceIncorrectState(format!(
                    "Snapshot '{}' is {}, not completed",
                    snapshot.id,
                    snapshot.state.as_str()
                )));
            }
            Some(snapshot.clone())
        };
        let size_gib = match (request.size_gib, &snapshot) {
            (Some(size), Some(snapshot)) if size < snapshot.volume_size_gib => {
                return Err(Ec2Error::InvalidParameterValue(format!(
                    "Volume of {size} GiB is smaller than snapshot {} ({} GiB)",
                    snapshot.id, snapshot.volume_size_gib
                )))
            }
            (Some(size), _) => size,
            (None, Some(snapshot)) => snapshot.volume_size_gib,
            (None, None) => return Err(Ec2Error::MissingParameter("Size".into())),
        };
        let shape = volume_types::check(&volume_type, size_gib, request.iops, request.throughput_mibps)?;
        let host_id = self.volume_host(state, &request.availability_zone)?;
        let encrypted = request.encrypted || snapshot.as_ref().is_some_and(|s| s.encrypted);
        if !request.kms_key_id.is_empty() {
            if !encrypted {
                return Err(Ec2Error::InvalidParameterCombination(
                    "KmsKeyId requires Encrypted".to_string(),
                ));
            }
            if !self.options.keys.exists(&request.kms_key_id) {
                return Err(Ec2Error::InvalidParameterValue(format!(
                    "The KMS key '{}' does not exist",
                    request.kms_key_id
                )));
            }
            if let Some(snapshot) = snapshot.as_ref().filter(|s| s.encrypted) {
                if snapshot.kms_key_id != request.kms_key_id {
                    return Err(Ec2Error::InvalidParameterCombination(format!(
                        "Snapshot {} is encrypted with key {}; hearth does not re-encrypt on restore",
                        snapshot.id, snapshot.kms_key_id
                    )));
                }
            }
        }
        if snapshot.as_ref().is_some_and(|s| !s.encrypted) && request.encrypted {
            return Err(Ec2Error::UnsupportedOperation(
                "Creating an encrypted volume from an unencrypted snapshot is not supported yet".to_string(),
            ));
        }
        // The key the volume will use must be usable now: a volume from an encrypted
        // snapshot whose key is gone could never be attached.
        match &snapshot {
            Some(snapshot) if snapshot.encrypted => {
                self.check_key(&format!("snapshot {}", snapshot.id), &snapshot.kms_key_id)?;
            }
            _ if !request.kms_key_id.is_empty() => {
                self.check_key("the requested key", &request.kms_key_id)?;
            }
            _ => {}
        }
        dry_run(request.dry_run)?;
        let mut new_keys = crate::kms::NewKeys::new(&self.options.keys);
        let kms_key_id = match &snapshot {
            Some(snapshot) if snapshot.encrypted => snapshot.kms_key_id.clone(),
            _ if !encrypted => String::new(),
            _ if !request.kms_key_id.is_empty() => request.kms_key_id.clone(),
            _ => new_keys.create()?,
        };
        let volume = Volume {
            id: IdKind::Volume.generate(),
            size_gib,
            volume_type,
            iops: shape.iops,
            availability_zone: request.availability_zone.clone(),
            host_id,
            state: if snapshot.is_some() {
                VolumeState::Creating
            } else {
                VolumeState::Available
            },
            attachment: None,
            source_path: String::new(),
            encrypted,
            create_time_ms: self.now(),
            tags,
            throughput_mibps: shape.throughput_mibps,
            snapshot_id: request.snapshot_id.clone(),
            kms_key_id,
            status_message: String::new(),
            modification: None,
            dirty_base: None,
            attach_time_ms: 0,
        };
        self.commit(
            &mut inner,
            Changes {
                volumes: vec![volume.clone()],
                ..Changes::default()
            },
        )?;
        new_keys.keep();
        drop(inner);
        if let Some(snapshot) = snapshot {
            self.restore_in_background(volume.clone(), snapshot);
        }
        Ok(volume)
    }

    /// DescribeVolumes: every volume, or those named (all must exist), filtered.
    pub fn describe_volumes(&self, ids: &[String], filters: &[Filter]) -> Ec2Result<Vec<Volume>> {
        filter::check_names(filters, VOLUME_FILTERS)?;
        let inner = self.lock();
        let state = &inner.state;
        let mut volumes: Vec<&Volume> = if ids.is_empty() {
            state
                .volumes
                .values()
                .filter(|v| v.state != VolumeState::Deleted)
                .collect()
        } else {
            let mut found = Vec::new();
            let mut missing = Vec::new();
            for id in ids {
                IdKind::Volume.validate(id)?;
                match state.volumes.get(id).filter(|v| v.state != VolumeState::Deleted) {
                    Some(volume) if !found.iter().any(|v: &&Volume| v.id == volume.id) => found.push(volume),
                    Some(_) => {}
                    None => missing.push(id.as_str()),
                }
            }
            if !missing.is_empty() {
                return Err(Ec2Error::VolumeNotFound(missing.join(", ")));
            }
            found
        };
        volumes.retain(|volume| {
            filter::matches(filters, &volume.tags, |name| {
                let attachment = volume.attachment.as_ref();
                Some(Values::One(match name {
                    "volume-id" => volume.id.clone(),
                    "availability-zone" => volume.availability_zone.clone(),
                    "status" => volume.state.as_str().to_string(),
                    "size" => volume.size_gib.to_string(),
                    "volume-type" => volume.volume_type.clone(),
                    "encrypted" => volume.encrypted.to_string(),
                    "snapshot-id" => volume.snapshot_id.clone(),
                    "attachment.instance-id" => attachment?.instance_id.clone(),
                    "attachment.device" => attachment?.device_name.clone(),
                    "attachment.status" => attachment.map(|_| attachment_state(volume).to_string())?,
                    "attachment.delete-on-termination" => attachment?.delete_on_termination.to_string(),
                    _ => return None,
                }))
            })
        });
        volumes.sort_by(|a, b| (a.create_time_ms, &a.id).cmp(&(b.create_time_ms, &b.id)));
        Ok(volumes.into_iter().cloned().collect())
    }

    /// AttachVolume: an available volume to a stopped instance in its zone.
    pub fn attach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        device: &str,
        dry: bool,
    ) -> Ec2Result<AttachmentInfo> {
        if instance_id.is_empty() {
            return Err(Ec2Error::MissingParameter("InstanceId".into()));
        }
        if device.is_empty() {
            return Err(Ec2Error::MissingParameter("Device".into()));
        }
        let now = self.now();
        let mut inner = self.lock();
        let state = &inner.state;
        let volume = volume(state, volume_id)?;
        let instance = super::instances::lookup(state, &[instance_id.to_string()])?[0];
        if !valid_device_name(device) {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "Value ({device}) for parameter device is invalid. {device} is not a valid EBS device name."
            )));
        }
        match volume.state {
            VolumeState::Available => {}
            VolumeState::InUse => {
                return Err(Ec2Error::VolumeInUse(format!(
                    "{} is already attached to an instance",
                    volume.id
                )))
            }
            other => {
                return Err(Ec2Error::ResourceIncorrectState(format!(
                    "Volume '{}' is {}, not available",
                    volume.id,
                    other.as_str()
                )))
            }
        }
        if volume.availability_zone != instance.availability_zone {
            return Err(Ec2Error::VolumeZoneMismatch(format!(
                "The volume '{}' is in {}, the instance '{}' in {}",
                volume.id, volume.availability_zone, instance.id, instance.availability_zone
            )));
        }
        if instance.state != InstanceState::Stopped {
            return Err(Ec2Error::IncorrectState(format!(
                "The instance '{}' is {}: hearth attaches volumes to stopped instances only \
                 (virtio-mmio has no hotplug; stop the instance first)",
                instance.id,
                instance.state.name()
            )));
        }
        if volume.host_id != instance.host_id && (volume.attach_time_ms != 0 || !volume.snapshot_id.is_empty()) {
            return Err(Ec2Error::IncorrectState(format!(
                "The volume '{}' lives on host {} and the instance '{}' on host {}: hearth does not move volume files between hosts",
                volume.id, volume.host_id, instance.id, instance.host_id
            )));
        }
        // Fail closed: an encrypted volume is never attached without a usable key.
        self.volume_key(volume)?;
        if instance.block_devices.iter().any(|d| d.device_name == device) {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "Attachment point {device} is already in use"
            )));
        }
        if instance.block_devices.len() >= MAX_ATTACHED_VOLUMES {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "The instance '{}' has {MAX_ATTACHED_VOLUMES} volumes, the most hearth attaches",
                instance.id
            )));
        }
        dry_run(dry)?;
        let mut next_volume = volume.clone();
        next_volume.state = VolumeState::InUse;
        next_volume.host_id = instance.host_id.clone();
        next_volume.attach_time_ms = now;
        next_volume.attachment = Some(VolumeAttachment {
            instance_id: instance.id.clone(),
            device_name: device.to_string(),
            delete_on_termination: false,
        });
        let mut next_instance = instance.clone();
        next_instance.block_devices.push(InstanceBlockDevice {
            device_name: device.to_string(),
            volume_id: volume.id.clone(),
            delete_on_termination: false,
            attach_time_ms: now,
        });
        let info = AttachmentInfo {
            volume_id: volume.id.clone(),
            instance_id: instance.id.clone(),
            device: device.to_string(),
            state: "attaching".to_string(),
            attach_time_ms: now,
            delete_on_termination: false,
        };
        let mut changes = Changes {
            volumes: vec![next_volume],
            instances: vec![next_instance],
            ..Changes::default()
        };
        inner.state.bump_changed_hosts(&mut changes);
        self.commit(&mut inner, changes)?;
        Ok(info)
    }

    /// DetachVolume: from a stopped instance (Force too: a running guest cannot lose a
    /// virtio-mmio disk under it).
    pub fn detach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        device: &str,
        _force: bool,
        dry: bool,
    ) -> Ec2Result<AttachmentInfo> {
        let mut inner = self.lock();
        let state = &inner.state;
        let volume = volume(state, volume_id)?;
        if !instance_id.is_empty() {
            IdKind::Instance.validate(instance_id)?;
        }
        let Some(attachment) = volume
            .attachment
            .as_ref()
            .filter(|_| volume.state == VolumeState::InUse)
        else {
            return Err(Ec2Error::AttachmentNotFound(format!(
                "The volume '{}' is not attached{}",
                volume.id,
                if instance_id.is_empty() {
                    String::new()
                } else {
                    format!(" to '{instance_id}'")
                }
            )));
        };
        if (!instance_id.is_empty() && attachment.instance_id != instance_id)
            || (!device.is_empty() && attachment.device_name != device)
        {
            return Err(Ec2Error::AttachmentNotFound(format!(
                "The volume '{}' is attached to '{}' at {}, not as asked",
                volume.id, attachment.instance_id, attachment.device_name
            )));
        }
        let instance = state
            .instances
            .get(&attachment.instance_id)
            .ok_or_else(|| Ec2Error::InstanceNotFound(attachment.instance_id.clone()))?;
        if instance.state != InstanceState::Stopped {
            return Err(Ec2Error::IncorrectState(format!(
                "The instance '{}' is {}: hearth detaches volumes from stopped instances only \
                 (virtio-mmio has no hot unplug; stop the instance first)",
                instance.id,
                instance.state.name()
            )));
        }
        dry_run(dry)?;
        let info = AttachmentInfo {
            volume_id: volume.id.clone(),
            instance_id: instance.id.clone(),
            device: attachment.device_name.clone(),
            state: "detaching".to_string(),
            attach_time_ms: volume.attach_time_ms,
            delete_on_termination: attachment.delete_on_termination,
        };
        let mut next_volume = volume.clone();
        next_volume.state = VolumeState::Available;
        next_volume.attachment = None;
        let mut next_instance = instance.as_ref().clone();
        next_instance.block_devices.retain(|d| d.volume_id != volume.id);
        let mut changes = Changes {
            volumes: vec![next_volume],
            instances: vec![next_instance],
            ..Changes::default()
        };
        inner.state.bump_changed_hosts(&mut changes);
        self.commit(&mut inner, changes)?;
        Ok(info)
    }

    /// DeleteVolume: an available (or failed) volume and its file.
    pub fn delete_volume(&self, volume_id: &str, dry: bool) -> Ec2Result<()> {
        let mut inner = self.lock();
        let state = &inner.state;
        let volume = volume(state, volume_id)?;
        match volume.state {
            VolumeState::Available | VolumeState::Error => {}
            VolumeState::InUse => {
                return Err(Ec2Error::VolumeInUse(format!(
                    "Volume {} is currently attached to {}",
                    volume.id,
                    volume
                        .attachment
                        .as_ref()
                        .map_or("an instance", |a| a.instance_id.as_str())
                )))
            }
            other => {
                return Err(Ec2Error::ResourceIncorrectState(format!(
                    "Volume '{}' is {}",
                    volume.id,
                    other.as_str()
                )))
            }
        }
        if state
            .snapshots
            .values()
            .any(|s| s.volume_id == volume.id && s.state == SnapshotState::Pending)
        {
            return Err(Ec2Error::ResourceIncorrectState(format!(
                "Volume '{}' has a snapshot in progress",
                volume.id
            )));
        }
        dry_run(dry)?;
        let path = self.options.volume_files.volume_path(&volume.host_id, &volume.id);
        let bitmap = self.options.volume_files.dirty_bitmap_path(&volume.host_id, &volume.id);
        let id = volume.id.clone();
        self.commit(
            &mut inner,
            Changes {
                deleted_volumes: vec![id],
                ..Changes::default()
            },
        )?;
        drop(inner);
        for file in [path, bitmap] {
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    eprintln!("hearthd: cannot remove {}: {e}", file.display());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// ModifyVolume: grow, change type, IOPS or throughput. Recorded at once; the file grows
    /// now when no instance runs it, else when the instance next starts (the new limits too).
    pub fn modify_volume(&self, request: ModifyVolumeRequest) -> Ec2Result<VolumeModification> {
        let now = self.now();
        let mut inner = self.lock();
        let state = &inner.state;
        let volume = volume(state, &request.volume_id)?;
        if !matches!(volume.state, VolumeState::Available | VolumeState::InUse) {
            return Err(Ec2Error::ResourceIncorrectState(format!(
                "Volume '{}' is {}",
                volume.id,
                volume.state.as_str()
            )));
        }
        if request.size_gib.is_none()
            && request.volume_type.is_empty()
            && request.iops.is_none()
            && request.throughput_mibps.is_none()
        {
            return Err(Ec2Error::MissingParameter(
                "Size, VolumeType, Iops or Throughput".to_string(),
            ));
        }
        let size_gib = request.size_gib.unwrap_or(volume.size_gib);
        if size_gib < volume.size_gib {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "New size {size_gib} GiB cannot be smaller than the existing size {} GiB",
                volume.size_gib
            )));
        }
        let volume_type = if request.volume_type.is_empty() {
            volume.volume_type.clone()
        } else {
            request.volume_type.clone()
        };
        let same_type = volume_type == volume.volume_type;
        let iops = request
            .iops
            .or(if same_type && matches!(volume_type.as_str(), "gp3" | "io1" | "io2") {
                volume.iops
            } else {
                None
            });
        let throughput = request
            .throughput_mibps
            .or(if same_type { volume.throughput_mibps } else { None });
        let shape = volume_types::check(&volume_type, size_gib, iops, throughput)?;
        let running = volume
            .attachment
            .as_ref()
            .and_then(|a| state.instances.get(&a.instance_id))
            .is_some_and(|i| i.state != InstanceState::Stopped && i.state != InstanceState::Terminated);
        dry_run(request.dry_run)?;
        let modification = VolumeModification {
            state: if running { "optimizing" } else { "completed" }.to_string(),
            status_message: if running {
                "takes effect in the guest when the instance next starts".to_string()
            } else {
                String::new()
            },
            original_size_gib: volume.size_gib,
            original_volume_type: volume.volume_type.clone(),
            original_iops: volume.iops,
            original_throughput_mibps: volume.throughput_mibps,
            target_size_gib: size_gib,
            target_volume_type: volume_type.clone(),
            target_iops: shape.iops,
            target_throughput_mibps: shape.throughput_mibps,
            start_time_ms: now,
            end_time_ms: (!running).then_some(now),
        };
        let mut next = volume.clone();
        next.size_gib = size_gib;
        next.volume_type = volume_type;
        next.iops = shape.iops;
        next.throughput_mibps = shape.throughput_mibps;
        next.modification = Some(modification.clone());
        if !running {
            // Grow the file now (sparse); an absent file is created at the new size later.
            let path = self.options.volume_files.volume_path(&next.host_id, &next.id);
            if let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) {
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                if len < size_gib * GIB {
                    file.set_len(size_gib * GIB)
                        .map_err(|e| Ec2Error::io(format!("grow {}", path.display()), e))?;
                }
            }
        }
        let mut changes = Changes {
            volumes: vec![next],
            ..Changes::default()
        };
        if let Some(instance) = volume
            .attachment
            .as_ref()
            .and_then(|a| state.instances.get(&a.instance_id))
        {
            let host = instance.host_id.clone();
            inner.state.bump_hosts(&mut changes, [host.as_str()]);
        }
        self.commit(&mut inner, changes)?;
        Ok(modification)
    }

    /// DescribeVolumesModifications: the last modification of each volume (an `optimizing`
    /// one shows `completed` once its instance has started again).
    pub fn describe_volumes_modifications(
        &self,
        ids: &[String],
        filters: &[Filter],
    ) -> Ec2Result<Vec<(String, VolumeModification)>> {
        filter::check_names(filters, MODIFICATION_FILTERS)?;
        let inner = self.lock();
        let state = &inner.state;
        for id in ids {
            volume(state, id)?;
        }
        let mut out: Vec<(String, VolumeModification)> = state
            .volumes
            .values()
            .filter(|v| v.state != VolumeState::Deleted && (ids.is_empty() || ids.contains(&v.id)))
            .filter_map(|v| {
                let mut modification = v.modification.clone()?;
                if modification.state == "optimizing" {
                    let restarted = v
                        .attachment
                        .as_ref()
                        .and_then(|a| state.instances.get(&a.instance_id))
                        .is_none_or(|i| {
                            i.launch_time_ms > modification.start_time_ms || i.state == InstanceState::Stopped
                        });
                    if restarted {
                        modification.state = "completed".to_string();
                        modification.status_message.clear();
                        modification.end_time_ms = Some(modification.start_time_ms);
                    }
                }
                Some((v.id.clone(), modification))
            })
            .collect();
        out.retain(|(id, m)| {
            filter::matches(filters, &Tags::new(), |name| {
                Some(Values::One(match name {
                    "volume-id" => id.clone(),
                    "modification-state" => m.state.clone(),
                    "target-volume-type" => m.target_volume_type.clone(),
                    "target-size" => m.target_size_gib.to_string(),
                    _ => return None,
                }))
            })
        });
        out.sort_by(|a, b| (a.1.start_time_ms, &a.0).cmp(&(b.1.start_time_ms, &b.0)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        for ok in ["/dev/sdf", "/dev/xvdb", "/dev/vdc", "/dev/xvdba"] {
            assert!(valid_device_name(ok), "{ok}");
        }
        for bad in ["sdf", "/dev/sd", "/dev/hda", "/dev/sdF", "/dev/xvdabc", "/dev/sd1"] {
            assert!(!valid_device_name(bad), "{bad}");
        }
    }
}
