//! Engine tests of EBS volumes and snapshots: the API state machine and error codes, and
//! real snapshots of volume files in a local snapshot store (no VMM: volumes no instance
//! runs are read from their files).

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::model::{InstanceState, SnapshotState, VolumeState, GIB};
use crate::store::SqliteStore;
use crate::testing::TempDir;
use crate::time::ManualClock;

const MIB: u64 = 1 << 20;
const ZONE: &str = "homelab-1a";

struct Fixture {
    dir: TempDir,
    engine: Arc<Engine>,
    image: String,
}

fn code<T: std::fmt::Debug>(result: Ec2Result<T>) -> &'static str {
    result.expect_err("expected an error").code()
}

fn open(dir: &TempDir) -> Arc<Engine> {
    let mut options = EngineOptions::new(dir.path());
    options.clock = Arc::new(ManualClock::new(1_700_000_000_000));
    options.volume_files = Arc::new(LocalVolumes {
        dir: dir.path().join("volumes"),
        run_dir: dir.path().join("run"),
        hosts: Vec::new(),
    });
    let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
    Arc::new(Engine::open(Box::new(store), options).unwrap())
}

impl Fixture {
    fn new() -> Fixture {
        let dir = TempDir::new("storage");
        let engine = open(&dir);
        std::fs::create_dir_all(dir.path().join("import")).unwrap();
        std::fs::write(dir.path().join("import/vmlinux"), b"kernel").unwrap();
        std::fs::write(dir.path().join("import/root.img"), vec![7u8; 4096]).unwrap();
        for (host, zone) in [("h-a", ZONE), ("h-b", "homelab-1b")] {
            engine
                .report(
                    &HostReport {
                        host_id: host.into(),
                        availability_zone: zone.into(),
                        vcpus: 8,
                        memory_mib: 16384,
                        agent_version: "test".into(),
                        ..HostReport::default()
                    },
                    &[],
                )
                .unwrap();
        }
        let path = |file: &str| dir.path().join("import").join(file).display().to_string();
        let image = engine
            .register_image(RegisterImageRequest {
                name: "base".into(),
                kernel_path: path("vmlinux"),
                root_image_path: path("root.img"),
                ..RegisterImageRequest::default()
            })
            .unwrap();
        Fixture { dir, engine, image }
    }

    fn volume(&self, size_gib: u64) -> String {
        self.engine
            .create_volume(CreateVolumeRequest {
                availability_zone: ZONE.into(),
                size_gib: Some(size_gib),
                ..CreateVolumeRequest::default()
            })
            .unwrap()
            .id
    }

    fn get(&self, id: &str) -> crate::model::Volume {
        self.engine.describe_volumes(&[id.to_string()], &[]).unwrap().remove(0)
    }

    fn file(&self, volume_id: &str) -> std::path::PathBuf {
        self.dir.path().join("volumes").join(format!("{volume_id}.img"))
    }

    /// A stopped instance in zone a (reported running, then stopped).
    fn stopped_instance(&self) -> String {
        let id = self
            .engine
            .run_instances(RunInstancesRequest {
                image_id: self.image.clone(),
                availability_zone: ZONE.into(),
                ..RunInstancesRequest::default()
            })
            .unwrap()
            .instances[0]
            .id
            .clone();
        let report = |phase: &str| ActualReport {
            instance_id: id.clone(),
            phase: phase.into(),
            start_generation: 1,
            boot_count: 1,
            ..ActualReport::default()
        };
        self.agent(&[report("running")]);
        self.engine
            .stop_instances(std::slice::from_ref(&id), false, false, false)
            .unwrap();
        self.agent(&[report("stopped")]);
        assert_eq!(self.instance_state(&id), InstanceState::Stopped);
        id
    }

    fn agent(&self, actual: &[ActualReport]) {
        let host = HostReport {
            host_id: "h-a".into(),
            availability_zone: ZONE.into(),
            vcpus: 8,
            memory_mib: 16384,
            agent_version: "test".into(),
            ..HostReport::default()
        };
        self.engine.report(&host, actual).unwrap();
    }

    fn instance_state(&self, id: &str) -> InstanceState {
        let (reservations, _) = self.engine.describe_instances(&[id.to_string()], &[], 0, "").unwrap();
        reservations[0].instances[0].state
    }

    fn snapshot(&self, volume_id: &str) -> crate::model::SnapshotRecord {
        let record = self.engine.create_snapshot(volume_id, "test", &[], false).unwrap();
        assert_eq!(record.state, SnapshotState::Pending);
        self.wait_snapshot(&record.id)
    }

    fn wait_snapshot(&self, id: &str) -> crate::model::SnapshotRecord {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self
                .engine
                .describe_snapshots(&[id.to_string()], &[], &[])
                .unwrap()
                .remove(0);
            if s.state != SnapshotState::Pending {
                return s;
            }
            assert!(Instant::now() < deadline, "snapshot {id} still pending");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_volume(&self, id: &str) -> crate::model::Volume {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.get(id);
            if v.state != VolumeState::Creating {
                return v;
            }
            assert!(Instant::now() < deadline, "volume {id} still creating");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn restore(&self, snapshot_id: &str) -> String {
        let volume = self
            .engine
            .create_volume(CreateVolumeRequest {
                availability_zone: ZONE.into(),
                snapshot_id: snapshot_id.into(),
                ..CreateVolumeRequest::default()
            })
            .unwrap();
        assert_eq!(volume.state, VolumeState::Creating);
        let done = self.wait_volume(&volume.id);
        assert_eq!(done.state, VolumeState::Available, "{}", done.status_message);
        volume.id
    }
}

/// Writes `len` pseudo-random bytes (seeded) at `offset` of `path`, creating it sparse.
fn write_random(path: &std::path::Path, offset: u64, len: u64, seed: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    let mut state = seed | 1;
    let mut buf = vec![0u8; len as usize];
    for chunk in buf.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    file.write_all(&buf).unwrap();
}

fn read_all(path: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    std::fs::File::open(path).unwrap().read_to_end(&mut bytes).unwrap();
    bytes
}

#[test]
fn volumes_follow_ec2_states_and_errors() {
    let f = Fixture::new();
    let e = &f.engine;
    assert_eq!(
        code(e.create_volume(CreateVolumeRequest {
            availability_zone: ZONE.into(),
            ..CreateVolumeRequest::default()
        })),
        "MissingParameter"
    );
    assert_eq!(
        code(e.create_volume(CreateVolumeRequest {
            availability_zone: "mars-1a".into(),
            size_gib: Some(1),
            ..CreateVolumeRequest::default()
        })),
        "InvalidParameterValue"
    );
    assert_eq!(
        code(e.create_volume(CreateVolumeRequest {
            availability_zone: ZONE.into(),
            size_gib: Some(8),
            volume_type: "io2".into(),
            ..CreateVolumeRequest::default()
        })),
        "MissingParameter"
    );
    let vol = f.volume(2);
    let v = f.get(&vol);
    assert_eq!(
        (v.state, v.size_gib, v.iops, v.throughput_mibps),
        (VolumeState::Available, 2, Some(3000), Some(125))
    );
    assert_eq!(
        code(e.describe_volumes(&["vol-0123456789abcdef0".into()], &[])),
        "InvalidVolume.NotFound"
    );
    assert_eq!(
        code(e.describe_volumes(&["vol-x".into()], &[])),
        "InvalidVolumeID.Malformed"
    );

    let instance = f.stopped_instance();
    // Zone, device name, running-instance and detach errors.
    let other_zone = e
        .create_volume(CreateVolumeRequest {
            availability_zone: "homelab-1b".into(),
            size_gib: Some(1),
            ..CreateVolumeRequest::default()
        })
        .unwrap()
        .id;
    assert_eq!(
        code(e.attach_volume(&other_zone, &instance, "/dev/sdf", false)),
        "InvalidVolume.ZoneMismatch"
    );
    assert_eq!(
        code(e.attach_volume(&vol, &instance, "sdf", false)),
        "InvalidParameterValue"
    );
    assert_eq!(
        code(e.attach_volume(&vol, &instance, "/dev/xvda", false)),
        "InvalidParameterValue"
    );
    assert_eq!(
        code(e.detach_volume(&vol, "", "", false, false)),
        "InvalidAttachment.NotFound"
    );
    assert_eq!(
        code(e.attach_volume(&vol, &instance, "/dev/sdf", true)),
        "DryRunOperation"
    );

    let attached = e.attach_volume(&vol, &instance, "/dev/sdf", false).unwrap();
    assert_eq!(
        (attached.state.as_str(), attached.delete_on_termination),
        ("attaching", false)
    );
    let v = f.get(&vol);
    assert_eq!(v.state, VolumeState::InUse);
    assert_eq!(v.attachment.as_ref().unwrap().instance_id, instance);
    assert_eq!(code(e.attach_volume(&vol, &instance, "/dev/sdg", false)), "VolumeInUse");
    assert_eq!(code(e.delete_volume(&vol, false)), "VolumeInUse");
    let filtered = e
        .describe_volumes(
            &[],
            &[crate::filter::Filter {
                name: "attachment.instance-id".into(),
                values: vec![instance.clone()],
            }],
        )
        .unwrap();
    assert_eq!(filtered.len(), 2, "root + data volume");

    // The agent gets the volume after the root, with its limits.
    let desired = e.desired_state("h-a");
    let spec = desired.instances.iter().find(|i| i.instance_id == instance).unwrap();
    assert_eq!(spec.volumes.len(), 2);
    assert_eq!(spec.volumes[1].volume_id, vol);
    assert_eq!(spec.volumes[1].limits.ops_per_sec, 3000);
    assert_eq!(spec.volumes[1].limits.bytes_per_sec, 125 * MIB);

    // Started: no attach or detach (no virtio-mmio hotplug).
    e.start_instances(std::slice::from_ref(&instance), false).unwrap();
    assert_eq!(
        code(e.detach_volume(&vol, &instance, "", false, false)),
        "IncorrectInstanceState"
    );
    assert_eq!(
        code(e.attach_volume(&other_zone, &instance, "/dev/sdh", false)),
        "InvalidVolume.ZoneMismatch"
    );
    e.stop_instances(std::slice::from_ref(&instance), true, false, false)
        .unwrap();
    f.agent(&[ActualReport {
        instance_id: instance.clone(),
        phase: "stopped".into(),
        start_generation: 2,
        boot_count: 1,
        ..ActualReport::default()
    }]);
    assert_eq!(f.instance_state(&instance), InstanceState::Stopped);
    assert_eq!(
        code(e.detach_volume(&vol, &instance, "/dev/sdz", false, false)),
        "InvalidAttachment.NotFound"
    );
    let detached = e.detach_volume(&vol, &instance, "/dev/sdf", false, false).unwrap();
    assert_eq!(detached.state, "detaching");
    assert_eq!(f.get(&vol).state, VolumeState::Available);

    // Modify: grow (never shrink), type change, limits.
    assert_eq!(
        code(e.modify_volume(ModifyVolumeRequest {
            volume_id: vol.clone(),
            size_gib: Some(1),
            ..ModifyVolumeRequest::default()
        })),
        "InvalidParameterValue"
    );
    write_random(&f.file(&vol), 0, MIB, 1);
    let m = e
        .modify_volume(ModifyVolumeRequest {
            volume_id: vol.clone(),
            size_gib: Some(4),
            volume_type: "io2".into(),
            iops: Some(1000),
            ..ModifyVolumeRequest::default()
        })
        .unwrap();
    assert_eq!(
        (m.state.as_str(), m.original_size_gib, m.target_size_gib),
        ("completed", 2, 4)
    );
    assert_eq!(std::fs::metadata(f.file(&vol)).unwrap().len(), 4 * GIB, "the file grew");
    let v = f.get(&vol);
    assert_eq!((v.volume_type.as_str(), v.iops, v.size_gib), ("io2", Some(1000), 4));
    let mods = e
        .describe_volumes_modifications(std::slice::from_ref(&vol), &[])
        .unwrap();
    assert_eq!(mods.len(), 1);

    e.delete_volume(&vol, false).unwrap();
    assert!(!f.file(&vol).exists(), "the file goes with the volume");
    assert_eq!(code(e.delete_volume(&vol, false)), "InvalidVolume.NotFound");
    assert_eq!(
        code(e.attach_volume(&vol, &instance, "/dev/sdf", false)),
        "InvalidVolume.NotFound"
    );
}

/// The EBS example: 10 MiB → A stores 10 MiB; 4 MiB changed → B stores 4; grown and 2 MiB
/// written → C stores 2; 16 MiB in all. Then A goes, and B and C restore byte for byte.
#[test]
fn snapshots_are_incremental_and_restore_exactly() {
    let f = Fixture::new();
    let e = &f.engine;
    let vol = f.volume(1);
    let path = f.file(&vol);
    write_random(&path, 0, 10 * MIB, 11);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(GIB)
        .unwrap();
    let store = e.snapshot_store().unwrap();
    let before = store.stored_bytes_total().unwrap();

    let a = f.snapshot(&vol);
    assert_eq!(a.state, SnapshotState::Completed, "{}", a.state_message);
    assert_eq!(a.stored_bytes, 10 * MIB);
    assert_eq!(a.full_size_bytes, 10 * MIB);

    write_random(&path, 2 * MIB, 4 * MIB, 22);
    let at_b = read_all(&path);
    let b = f.snapshot(&vol);
    assert_eq!(b.stored_bytes, 4 * MIB);

    e.modify_volume(ModifyVolumeRequest {
        volume_id: vol.clone(),
        size_gib: Some(2),
        ..ModifyVolumeRequest::default()
    })
    .unwrap();
    write_random(&path, GIB + 3 * MIB, 2 * MIB, 33);
    let at_c = read_all(&path);
    let c = f.snapshot(&vol);
    assert_eq!((c.stored_bytes, c.volume_size_gib), (2 * MIB, 2));
    assert_eq!(store.stored_bytes_total().unwrap() - before, 16 * MIB);

    // A cannot go while an image uses it; it can otherwise, and only its own chunks go.
    e.delete_snapshot(&a.id, false).unwrap();
    assert_eq!(store.stored_bytes_total().unwrap() - before, 12 * MIB);
    assert_eq!(
        code(e.describe_snapshots(std::slice::from_ref(&a.id), &[], &[])),
        "InvalidSnapshot.NotFound"
    );

    let from_b = f.restore(&b.id);
    assert!(read_all(&f.file(&from_b)) == at_b, "B restores byte for byte");
    let from_c = f.restore(&c.id);
    assert!(read_all(&f.file(&from_c)) == at_c, "C restores byte for byte");
    assert_eq!(f.get(&from_c).snapshot_id, c.id);

    // Copies share chunks; the source can go and the copy still restores.
    let copy = e
        .copy_snapshot(CopySnapshotRequest {
            source_snapshot_id: b.id.clone(),
            ..CopySnapshotRequest::default()
        })
        .unwrap();
    assert_eq!(store.stored_bytes_total().unwrap() - before, 12 * MIB);
    e.delete_snapshot(&b.id, false).unwrap();
    let from_copy = f.restore(&copy);
    assert!(read_all(&f.file(&from_copy)) == at_b);
    assert_eq!(
        code(e.delete_snapshot("snap-0123456789abcdef0", false)),
        "InvalidSnapshot.NotFound"
    );
    assert_eq!(code(e.delete_snapshot("snap-x", false)), "InvalidSnapshotID.Malformed");
}

#[test]
fn a_corrupted_chunk_fails_the_restore_and_is_never_data() {
    let f = Fixture::new();
    let vol = f.volume(1);
    write_random(&f.file(&vol), 0, 3 * MIB, 5);
    let snap = f.snapshot(&vol);
    assert_eq!(snap.state, SnapshotState::Completed);
    // Flip one byte of every chunk object in the store.
    let chunks = f.dir.path().join("snapshots/chunks");
    let mut flipped = 0;
    for entry in walk(&chunks) {
        let mut bytes = std::fs::read(&entry).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&entry, bytes).unwrap();
        flipped += 1;
    }
    assert_eq!(flipped, 3);
    let volume = f
        .engine
        .create_volume(CreateVolumeRequest {
            availability_zone: ZONE.into(),
            snapshot_id: snap.id.clone(),
            ..CreateVolumeRequest::default()
        })
        .unwrap();
    let failed = f.wait_volume(&volume.id);
    assert_eq!(failed.state, VolumeState::Error);
    assert!(failed.status_message.contains("corrupt"), "{}", failed.status_message);
    assert!(!f.file(&volume.id).exists(), "no file from a corrupted snapshot");
    f.engine.delete_volume(&volume.id, false).unwrap();
}

#[test]
fn encrypted_volumes_get_keys_and_their_snapshots_stay_encrypted() {
    let f = Fixture::new();
    let vol = f
        .engine
        .create_volume(CreateVolumeRequest {
            availability_zone: ZONE.into(),
            size_gib: Some(1),
            encrypted: true,
            ..CreateVolumeRequest::default()
        })
        .unwrap();
    assert!(vol.encrypted && !vol.kms_key_id.is_empty());
    let key = f.engine.options().keys.load(&vol.kms_key_id).unwrap();
    // What the VMM would write: ciphertext of the guest's data.
    let cipher = hearth_devices::crypt::XtsCipher::new(&key).unwrap();
    let mut sector = vec![0x41u8; 4096];
    cipher.encrypt_sectors(&mut sector, 0);
    write_random(&f.file(&vol.id), 0, 0, 1);
    std::fs::write(f.file(&vol.id), &sector).unwrap();
    let snap = f.snapshot(&vol.id);
    assert!(snap.encrypted);
    assert_eq!(snap.kms_key_id, vol.kms_key_id);
    let restored = f.restore(&snap.id);
    let restored = f.get(&restored);
    assert!(restored.encrypted);
    assert_eq!(restored.kms_key_id, vol.kms_key_id, "the restore keeps the key");
    let mut bytes = read_all(&f.file(&restored.id))[..4096].to_vec();
    assert!(!bytes.windows(16).any(|w| w == [0x41u8; 16]), "ciphertext at rest");
    cipher.decrypt_sectors(&mut bytes, 0);
    assert_eq!(bytes, vec![0x41u8; 4096]);
    // The agent gets the key with the volume.
    let instance = f.stopped_instance();
    f.engine.attach_volume(&vol.id, &instance, "/dev/sdf", false).unwrap();
    let desired = f.engine.desired_state("h-a");
    let spec = desired.instances.iter().find(|i| i.instance_id == instance).unwrap();
    assert_eq!(spec.volumes[1].encryption_key, key);
    assert!(spec.volumes[1].encrypted && !spec.volumes[0].encrypted);
    assert!(spec.volumes[0].encryption_key.is_empty());
}

#[test]
fn a_missing_key_fails_attach_start_restore_and_copy_and_changes_nothing() {
    let f = Fixture::new();
    let vol = f
        .engine
        .create_volume(CreateVolumeRequest {
            availability_zone: ZONE.into(),
            size_gib: Some(1),
            encrypted: true,
            ..CreateVolumeRequest::default()
        })
        .unwrap();
    let key = f.engine.options().keys.load(&vol.kms_key_id).unwrap();
    let key_file = f.engine.options().keys.dir().join(format!("{}.key", vol.kms_key_id));
    let hidden = key_file.with_extension("hidden");
    let hide = || std::fs::rename(&key_file, &hidden).unwrap();
    let unhide = || std::fs::rename(&hidden, &key_file).unwrap();
    write_random(&f.file(&vol.id), 0, MIB, 5);
    let snap = f.snapshot(&vol.id);
    // The file's length and its written head (the rest is a hole).
    let contents = || {
        let path = f.file(&vol.id);
        let mut head = vec![0u8; 2 * MIB as usize];
        std::fs::File::open(&path).unwrap().read_exact(&mut head).unwrap();
        (std::fs::metadata(&path).unwrap().len(), head)
    };
    let bytes = contents();
    let instance = f.stopped_instance();
    let counts = || {
        (
            f.engine.describe_volumes(&[], &[]).unwrap().len(),
            f.engine.describe_snapshots(&[], &[], &[]).unwrap().len(),
        )
    };
    let before = counts();
    let kms = |result: Ec2Error| {
        assert_eq!(result.code(), "InvalidKMSKey.InvalidState", "{result:?}");
        result.message()
    };

    hide();
    // AttachVolume (DryRun too): refused, nothing attached.
    for dry in [true, false] {
        let message = kms(f.engine.attach_volume(&vol.id, &instance, "/dev/sdf", dry).unwrap_err());
        assert!(
            message.contains(&vol.id) && message.contains(&vol.kms_key_id),
            "{message}"
        );
    }
    assert_eq!(f.get(&vol.id).state, VolumeState::Available);
    assert!(f.get(&vol.id).attachment.is_none());
    // CreateVolume from its snapshot and CopySnapshot: refused, nothing created.
    let message = kms(f
        .engine
        .create_volume(CreateVolumeRequest {
            availability_zone: ZONE.into(),
            snapshot_id: snap.id.clone(),
            ..CreateVolumeRequest::default()
        })
        .unwrap_err());
    assert!(message.contains(&snap.id), "{message}");
    kms(f
        .engine
        .copy_snapshot(CopySnapshotRequest {
            source_snapshot_id: snap.id.clone(),
            ..CopySnapshotRequest::default()
        })
        .unwrap_err());
    assert_eq!(counts(), before);

    // With the key back: attached; then StartInstances without it is refused.
    unhide();
    f.engine.attach_volume(&vol.id, &instance, "/dev/sdf", false).unwrap();
    hide();
    let ids = [instance.clone()];
    kms(f.engine.start_instances(&ids, false).unwrap_err());
    let described = |id: &str| {
        let (reservations, _) = f.engine.describe_instances(&[id.to_string()], &[], 0, "").unwrap();
        Arc::clone(&reservations[0].instances[0])
    };
    let stopped = described(&instance);
    assert_eq!((stopped.state, stopped.start_generation), (InstanceState::Stopped, 1));
    // A key that is only damaged (wrong length) is refused the same way.
    std::fs::write(&key_file, &key[..32]).unwrap();
    kms(f.engine.start_instances(&ids, false).unwrap_err());
    std::fs::remove_file(&key_file).unwrap();

    // A key lost after StartInstances accepted it: the agent is told the volume is
    // encrypted and gets no key (it refuses the start), never a plain disk.
    unhide();
    f.engine.start_instances(&ids, false).unwrap();
    hide();
    let desired = f.engine.desired_state("h-a");
    let spec = desired.instances.iter().find(|i| i.instance_id == instance).unwrap();
    assert!(spec.volumes[1].encrypted, "{:?}", spec.volumes[1]);
    assert!(spec.volumes[1].encryption_key.is_empty());
    // The agent's refusal stops the instance with EC2's reason.
    f.agent(&[ActualReport {
        instance_id: instance.clone(),
        phase: "stopped".into(),
        start_generation: 2,
        last_exit_reason: hearth_agent::ENCRYPTION_KEY_REASON.into(),
        last_exit_detail: format!("encrypted volume {} has no usable key", vol.id),
        ..ActualReport::default()
    }]);
    let failed = described(&instance);
    assert_eq!(failed.state, InstanceState::Stopped);
    let reason = failed.state_reason.clone().unwrap();
    assert_eq!(reason.code, "Client.InvalidKMSKey.InvalidState");
    assert!(reason.message.contains(&vol.id), "{reason:?}");
    // The volume stays attached and its file as it was.
    assert_eq!(f.get(&vol.id).state, VolumeState::InUse);
    assert!(contents() == bytes, "the volume file changed");
    unhide();
    f.engine.start_instances(&ids, false).unwrap();
}

#[test]
fn snapshots_survive_a_restart_and_stale_pending_ones_are_marked_error() {
    let mut f = Fixture::new();
    let vol = f.volume(1);
    write_random(&f.file(&vol), 0, MIB, 9);
    let snap = f.snapshot(&vol);
    // A pending record as a killed hearthd leaves it.
    let mut inner = f.engine.lock();
    let stale = crate::model::SnapshotRecord {
        id: crate::ids::IdKind::Snapshot.generate(),
        state: SnapshotState::Pending,
        ..snap.clone()
    };
    f.engine
        .commit(
            &mut inner,
            Changes {
                snapshots: vec![stale.clone()],
                ..Changes::default()
            },
        )
        .unwrap();
    drop(inner);
    f.engine = open(&f.dir);
    f.engine.recover_snapshots().unwrap();
    let found = f.engine.describe_snapshots(&[], &[], &[]).unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(
        found.iter().find(|s| s.id == snap.id).unwrap().state,
        SnapshotState::Completed
    );
    assert_eq!(
        found.iter().find(|s| s.id == stale.id).unwrap().state,
        SnapshotState::Error
    );
    let restored = f.restore(&snap.id);
    assert_eq!(
        read_all(&f.file(&restored))[..MIB as usize],
        read_all(&f.file(&vol))[..MIB as usize]
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}
