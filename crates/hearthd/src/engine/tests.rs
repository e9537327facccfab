//! Engine tests: the EC2 state machine driven by API calls and by agent reports (plain data),
//! on a real SQLite file.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::filter::Filter;
use crate::model::{BlockDeviceMapping, DesiredRun, EbsSpec, InstanceState, VolumeState};
use crate::store::SqliteStore;
use crate::testing::TempDir;
use crate::time::ManualClock;

const START_MS: i64 = 1_700_000_000_000;

struct Fixture {
    dir: TempDir,
    clock: Arc<ManualClock>,
    engine: Arc<Engine>,
    image: String,
}

fn code<T: std::fmt::Debug>(result: Ec2Result<T>) -> &'static str {
    result.expect_err("expected an error").code()
}

fn options(dir: &TempDir, clock: &Arc<ManualClock>) -> EngineOptions {
    let mut options = EngineOptions::new(dir.path());
    options.clock = clock.clone();
    // Exact capacity arithmetic in tests (the default overcommits like OpenStack).
    options.cpu_allocation_ratio = 1.0;
    options.ram_allocation_ratio = 1.0;
    options.console = Arc::new(LocalConsole {
        run_dir: dir.path().join("run"),
    });
    options.volume_files = Arc::new(LocalVolumes {
        dir: dir.path().join("volumes"),
        run_dir: dir.path().join("run"),
        hosts: Vec::new(),
    });
    options
}

fn open(dir: &TempDir, clock: &Arc<ManualClock>) -> Arc<Engine> {
    let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
    Arc::new(Engine::open(Box::new(store), options(dir, clock)).unwrap())
}

impl Fixture {
    fn new() -> Fixture {
        let dir = TempDir::new("engine");
        let clock = Arc::new(ManualClock::new(START_MS));
        let engine = open(&dir, &clock);
        std::fs::create_dir_all(dir.path().join("import")).unwrap();
        std::fs::write(dir.path().join("import/vmlinux"), b"kernel").unwrap();
        std::fs::write(dir.path().join("import/initrd"), b"initrd").unwrap();
        std::fs::write(dir.path().join("import/root.img"), vec![7u8; 4096]).unwrap();
        let mut fixture = Fixture {
            dir,
            clock,
            engine,
            image: String::new(),
        };
        fixture.host("h-a", "homelab-1a", 8, 16384);
        fixture.image = fixture.register("base");
        fixture
    }

    fn register(&self, name: &str) -> String {
        let path = |file: &str| self.dir.path().join("import").join(file).to_string_lossy().into_owned();
        self.engine
            .register_image(RegisterImageRequest {
                name: name.into(),
                kernel_path: path("vmlinux"),
                initrd_path: path("initrd"),
                root_image_path: path("root.img"),
                command_line: "console=ttyS0".into(),
                ..RegisterImageRequest::default()
            })
            .unwrap()
    }

    fn reopen(&mut self) {
        self.engine = open(&self.dir, &self.clock);
    }

    fn host(&self, id: &str, zone: &str, vcpus: u32, memory_mib: u64) -> SyncAnswer {
        self.report(id, zone, vcpus, memory_mib, &[])
    }

    fn report(&self, id: &str, zone: &str, vcpus: u32, memory_mib: u64, actual: &[ActualReport]) -> SyncAnswer {
        let host = HostReport {
            host_id: id.into(),
            availability_zone: zone.into(),
            vcpus,
            memory_mib,
            agent_version: "test".into(),
            ..HostReport::default()
        };
        self.engine.report(&host, actual).unwrap()
    }

    /// A report from host h-a.
    fn agent(&self, actual: &[ActualReport]) -> SyncAnswer {
        self.report("h-a", "homelab-1a", 8, 16384, actual)
    }

    fn run_request(&self) -> RunInstancesRequest {
        RunInstancesRequest {
            image_id: self.image.clone(),
            ..RunInstancesRequest::default()
        }
    }

    fn run(&self, count: i32) -> Vec<String> {
        let request = RunInstancesRequest {
            min_count: count,
            ..self.run_request()
        };
        self.engine
            .run_instances(request)
            .unwrap()
            .instances
            .into_iter()
            .map(|i| i.id.clone())
            .collect()
    }

    fn instance(&self, id: &str) -> Instance {
        let (reservations, _) = self.engine.describe_instances(&[id.to_string()], &[], 0, "").unwrap();
        reservations[0].instances[0].as_ref().clone()
    }

    fn state(&self, id: &str) -> InstanceState {
        self.instance(id).state
    }

    fn running(&self, ids: &[String]) {
        let reports: Vec<ActualReport> = ids
            .iter()
            .map(|id| actual(id, "running", self.instance(id).start_generation, ""))
            .collect();
        self.agent(&reports);
        for id in ids {
            assert_eq!(self.state(id), InstanceState::Running);
        }
    }

    fn all_states(&self) -> Vec<(String, InstanceState)> {
        let (reservations, _) = self.engine.describe_instances(&[], &[], 0, "").unwrap();
        reservations
            .into_iter()
            .flat_map(|r| r.instances)
            .map(|i| (i.id.clone(), i.state))
            .collect()
    }
}

fn actual(id: &str, phase: &str, start_generation: u64, exit_reason: &str) -> ActualReport {
    ActualReport {
        instance_id: id.into(),
        phase: phase.into(),
        start_generation,
        last_exit_reason: exit_reason.into(),
        boot_count: 1,
        ..ActualReport::default()
    }
}

fn ids(list: &[&String]) -> Vec<String> {
    list.iter().map(|id| id.to_string()).collect()
}

#[test]
fn full_lifecycle_follows_agent_reports() {
    let f = Fixture::new();
    let id = f.run(1).remove(0);
    let instance = f.instance(&id);
    assert_eq!((instance.state, instance.start_generation), (InstanceState::Pending, 1));
    assert_eq!(instance.vcpus, 2);

    // The desired state for the host: image files from the store, root volume first.
    let desired = f.engine.desired_state("h-a");
    assert!(desired.revision > 0);
    let spec = &desired.instances[0];
    assert_eq!(
        (spec.instance_id.as_str(), spec.run),
        (id.as_str(), DesiredRun::Running)
    );
    assert!(
        std::path::Path::new(&spec.kernel_path).starts_with(f.dir.path().join("images/blobs/sha256")),
        "{}",
        spec.kernel_path
    );
    assert_eq!(std::fs::read(&spec.kernel_path).unwrap(), b"kernel");
    assert_eq!(std::fs::read(&spec.initrd_path).unwrap(), b"initrd");
    assert_eq!(spec.cmdline, "console=ttyS0 root=/dev/vda");
    assert_eq!(spec.volumes.len(), 1);
    assert_eq!(std::fs::read(&spec.volumes[0].source_path).unwrap(), vec![7u8; 4096]);
    assert_eq!(spec.volumes[0].size_bytes, crate::model::GIB);
    assert!(spec.volumes[0].delete_on_termination);
    let root_volume = spec.volumes[0].volume_id.clone();

    let (statuses, _) = f.engine.describe_instance_status(&[], &[], false, 0, "").unwrap();
    assert!(
        statuses.is_empty(),
        "only running instances without IncludeAllInstances"
    );
    f.running(std::slice::from_ref(&id));
    let (statuses, _) = f.engine.describe_instance_status(&[], &[], false, 0, "").unwrap();
    assert_eq!(
        (statuses[0].system_status.as_str(), statuses[0].instance_status.as_str()),
        ("ok", "ok")
    );

    let changes = f
        .engine
        .stop_instances(std::slice::from_ref(&id), false, false, false)
        .unwrap();
    assert_eq!(
        (changes[0].previous, changes[0].current),
        (InstanceState::Running, InstanceState::Stopping)
    );
    let stopping = f.instance(&id);
    assert_eq!(stopping.state_reason.unwrap().code, "Client.UserInitiatedShutdown");
    assert_eq!(f.engine.desired_state("h-a").instances[0].run, DesiredRun::Stopped);
    f.agent(&[actual(&id, "stopping", 1, "")]);
    assert_eq!(f.state(&id), InstanceState::Stopping);
    f.agent(&[actual(&id, "stopped", 1, "killed")]);
    assert_eq!(f.state(&id), InstanceState::Stopped);

    f.engine.start_instances(std::slice::from_ref(&id), false).unwrap();
    assert_eq!(f.instance(&id).start_generation, 2);
    // A report about the previous VMM does not move the new start.
    f.agent(&[actual(&id, "stopped", 1, "killed")]);
    assert_eq!(f.state(&id), InstanceState::Pending);
    f.agent(&[actual(&id, "running", 2, "")]);
    assert_eq!(f.state(&id), InstanceState::Running);

    let before = f.engine.desired_state("h-a").revision;
    f.engine.reboot_instances(std::slice::from_ref(&id), false).unwrap();
    let after = f.engine.desired_state("h-a");
    assert!(after.revision > before);
    assert_eq!(after.instances[0].reboot_generation, 1);
    assert_eq!(f.state(&id), InstanceState::Running);

    let changes = f.engine.terminate_instances(std::slice::from_ref(&id), false).unwrap();
    assert_eq!(changes[0].current, InstanceState::ShuttingDown);
    assert_eq!(f.engine.desired_state("h-a").instances[0].run, DesiredRun::Terminated);
    f.agent(&[ActualReport {
        deleted_volumes: vec![root_volume.clone()],
        ..actual(&id, "terminated", 2, "")
    }]);
    assert_eq!(f.state(&id), InstanceState::Terminated);
    assert!(f.engine.desired_state("h-a").instances.is_empty());
    assert_eq!(f.engine.lock().state.volumes[&root_volume].state, VolumeState::Deleted);

    // Terminated instances stay visible for an hour, then the purge removes them.
    f.clock.advance(59 * 60 * 1000);
    assert_eq!(f.engine.purge().unwrap(), 0);
    assert_eq!(f.state(&id), InstanceState::Terminated);
    f.clock.advance(2 * 60 * 1000);
    assert_eq!(f.engine.purge().unwrap(), 1);
    assert_eq!(
        code(f.engine.describe_instances(std::slice::from_ref(&id), &[], 0, "")),
        "InvalidInstanceID.NotFound"
    );
    assert!(f.engine.lock().state.volumes.is_empty());
}

#[test]
fn illegal_transitions_are_incorrect_instance_state() {
    let f = Fixture::new();
    let id = f.run(1).remove(0);
    let one = std::slice::from_ref(&id);
    // Reboot needs running.
    assert_eq!(code(f.engine.reboot_instances(one, false)), "IncorrectInstanceState");
    f.running(one);
    // Start of a running instance changes nothing.
    let changes = f.engine.start_instances(one, false).unwrap();
    assert_eq!(
        (changes[0].previous, changes[0].current),
        (InstanceState::Running, InstanceState::Running)
    );
    f.engine.stop_instances(one, false, false, false).unwrap();
    assert_eq!(code(f.engine.start_instances(one, false)), "IncorrectInstanceState");
    assert_eq!(code(f.engine.reboot_instances(one, false)), "IncorrectInstanceState");
    // Stopping again is a no-op; force upgrades to a kill.
    f.engine.stop_instances(one, true, false, false).unwrap();
    assert!(f.engine.desired_state("h-a").instances[0].force_stop);
    f.agent(&[actual(&id, "stopped", 1, "killed")]);
    assert_eq!(code(f.engine.reboot_instances(one, false)), "IncorrectInstanceState");
    f.engine.terminate_instances(one, false).unwrap();
    assert_eq!(code(f.engine.start_instances(one, false)), "IncorrectInstanceState");
    assert_eq!(
        code(f.engine.stop_instances(one, false, false, false)),
        "IncorrectInstanceState"
    );
    f.agent(&[actual(&id, "terminated", 1, "")]);
    assert_eq!(code(f.engine.start_instances(one, false)), "IncorrectInstanceState");
    // Terminate is idempotent.
    let changes = f.engine.terminate_instances(one, false).unwrap();
    assert_eq!(
        (changes[0].previous, changes[0].current),
        (InstanceState::Terminated, InstanceState::Terminated)
    );
    assert_eq!(
        code(f.engine.stop_instances(one, false, true, false)),
        "UnsupportedOperation"
    );
}

#[test]
fn batches_are_all_or_nothing() {
    let f = Fixture::new();
    let list = f.run(2);
    f.running(&list);
    let unknown = "i-0123456789abcdef0".to_string();
    let batch = ids(&[&list[0], &unknown, &list[1]]);
    assert_eq!(
        code(f.engine.stop_instances(&batch, false, false, false)),
        "InvalidInstanceID.NotFound"
    );
    assert_eq!(
        code(f.engine.terminate_instances(&batch, false)),
        "InvalidInstanceID.NotFound"
    );
    assert_eq!(
        code(f.engine.reboot_instances(&batch, false)),
        "InvalidInstanceID.NotFound"
    );
    let malformed = ids(&[&list[0], &"i-nothex".to_string()]);
    assert_eq!(
        code(f.engine.stop_instances(&malformed, false, false, false)),
        "InvalidInstanceID.Malformed"
    );
    assert_eq!(
        code(f.engine.start_instances(&[], false)),
        "InvalidParameterCombination"
    );
    assert_eq!(
        code(f.engine.terminate_instances(&[], false)),
        "InvalidParameterCombination"
    );
    assert!(f.all_states().iter().all(|(_, state)| *state == InstanceState::Running));

    // One stopped instance makes a batch reboot fail as a whole.
    f.engine.stop_instances(&list[..1], false, false, false).unwrap();
    let before = f.engine.desired_state("h-a");
    assert_eq!(code(f.engine.reboot_instances(&list, false)), "IncorrectInstanceState");
    assert_eq!(f.engine.desired_state("h-a"), before);
}

#[test]
fn dry_run_validates_and_changes_nothing() {
    let f = Fixture::new();
    let id = f.run(1).remove(0);
    let one = std::slice::from_ref(&id);
    f.running(one);
    let revision = f.engine.desired_state("h-a").revision;
    let dry = RunInstancesRequest {
        dry_run: true,
        ..f.run_request()
    };
    assert_eq!(code(f.engine.run_instances(dry)), "DryRunOperation");
    let bad_dry = RunInstancesRequest {
        dry_run: true,
        instance_type: "t9.huge".into(),
        ..f.run_request()
    };
    assert_eq!(code(f.engine.run_instances(bad_dry)), "InvalidInstanceType");
    assert_eq!(
        code(f.engine.stop_instances(one, false, false, true)),
        "DryRunOperation"
    );
    assert_eq!(code(f.engine.reboot_instances(one, true)), "DryRunOperation");
    assert_eq!(code(f.engine.terminate_instances(one, true)), "DryRunOperation");
    assert_eq!(
        code(f.engine.create_tags(one, &[("a".into(), "b".into())], true)),
        "DryRunOperation"
    );
    let modify = ModifyInstanceRequest {
        instance_id: id.clone(),
        disable_api_termination: Some(true),
        dry_run: true,
        ..ModifyInstanceRequest::default()
    };
    assert_eq!(code(f.engine.modify_instance_attribute(modify)), "DryRunOperation");
    assert_eq!(f.all_states(), vec![(id.clone(), InstanceState::Running)]);
    assert_eq!(f.engine.desired_state("h-a").revision, revision);
    assert!(f.instance(&id).tags.is_empty());
    assert!(!f.instance(&id).disable_api_termination);
}

#[test]
fn client_token_returns_the_same_reservation() {
    let f = Fixture::new();
    let request = RunInstancesRequest {
        client_token: "abc-1".into(),
        min_count: 2,
        ..f.run_request()
    };
    let first = f.engine.run_instances(request.clone()).unwrap();
    let again = f.engine.run_instances(request.clone()).unwrap();
    assert_eq!(first.reservation_id, again.reservation_id);
    let first_ids: Vec<&str> = first.instances.iter().map(|i| i.id.as_str()).collect();
    let again_ids: Vec<&str> = again.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(first_ids, again_ids);
    assert_eq!(f.all_states().len(), 2);
    let different = RunInstancesRequest {
        instance_type: "t3.small".into(),
        ..request
    };
    assert_eq!(code(f.engine.run_instances(different)), "IdempotentParameterMismatch");
    assert_eq!(f.all_states().len(), 2);
}

#[test]
fn disable_api_termination_blocks_terminate_also_when_stopped() {
    let f = Fixture::new();
    let protected = f
        .engine
        .run_instances(RunInstancesRequest {
            disable_api_termination: true,
            ..f.run_request()
        })
        .unwrap()
        .instances[0]
        .id
        .clone();
    let other = f.run(1).remove(0);
    f.running(&ids(&[&protected, &other]));
    let both = ids(&[&other, &protected]);
    assert_eq!(
        code(f.engine.terminate_instances(&both, false)),
        "OperationNotPermitted"
    );
    assert_eq!(f.state(&other), InstanceState::Running, "nothing changes");

    f.engine
        .stop_instances(std::slice::from_ref(&protected), false, false, false)
        .unwrap();
    f.agent(&[actual(&protected, "stopped", 1, "guest-poweroff")]);
    assert_eq!(f.state(&protected), InstanceState::Stopped);
    assert_eq!(
        code(f.engine.terminate_instances(std::slice::from_ref(&protected), false)),
        "OperationNotPermitted"
    );
    assert_eq!(
        f.engine
            .describe_instance_attribute(&protected, "disableApiTermination", false)
            .unwrap()
            .value,
        "true"
    );

    let clear = ModifyInstanceRequest {
        instance_id: protected.clone(),
        disable_api_termination: Some(false),
        ..ModifyInstanceRequest::default()
    };
    f.engine.modify_instance_attribute(clear).unwrap();
    f.engine.terminate_instances(&both, false).unwrap();
    assert_eq!(f.state(&protected), InstanceState::ShuttingDown);
}

#[test]
fn guest_poweroff_follows_the_shutdown_behavior() {
    let f = Fixture::new();
    let stops = f.run(1).remove(0);
    let terminates = f
        .engine
        .run_instances(RunInstancesRequest {
            instance_initiated_shutdown_behavior: "terminate".into(),
            block_device_mappings: vec![BlockDeviceMapping {
                device_name: "/dev/xvdb".into(),
                ebs: Some(EbsSpec {
                    volume_size_gib: Some(2),
                    delete_on_termination: Some(false),
                    ..EbsSpec::default()
                }),
                ..BlockDeviceMapping::default()
            }],
            ..f.run_request()
        })
        .unwrap()
        .instances[0]
        .clone();
    f.running(&ids(&[&stops, &terminates.id]));
    assert_eq!(terminates.block_devices.len(), 2);
    let data_volume = terminates.block_devices[1].volume_id.clone();
    let spec = f
        .engine
        .desired_state("h-a")
        .instances
        .into_iter()
        .find(|i| i.instance_id == terminates.id)
        .unwrap();
    assert_eq!(spec.volumes[1].source_path, "", "a blank data volume");
    assert_eq!(spec.volumes[1].size_bytes, 2 * crate::model::GIB);
    assert!(!spec.volumes[1].delete_on_termination);

    // A DisableApiTermination flag does not block a guest-initiated shutdown.
    let protect = ModifyInstanceRequest {
        instance_id: terminates.id.clone(),
        disable_api_termination: Some(true),
        ..ModifyInstanceRequest::default()
    };
    f.engine.modify_instance_attribute(protect).unwrap();

    f.agent(&[
        actual(&stops, "stopped", 1, "guest-poweroff"),
        actual(&terminates.id, "stopped", 1, "guest-poweroff"),
    ]);
    let stopped = f.instance(&stops);
    assert_eq!(stopped.state, InstanceState::Stopped);
    assert_eq!(stopped.state_reason.unwrap().code, "Client.InstanceInitiatedShutdown");
    let shutting = f.instance(&terminates.id);
    assert_eq!(shutting.state, InstanceState::ShuttingDown);
    let desired = f.engine.desired_state("h-a");
    let run_of = |id: &str| desired.instances.iter().find(|i| i.instance_id == id).unwrap().run;
    assert_eq!(run_of(&stops), DesiredRun::Stopped);
    assert_eq!(run_of(&terminates.id), DesiredRun::Terminated);

    f.agent(&[actual(&terminates.id, "terminated", 1, "")]);
    assert_eq!(f.state(&terminates.id), InstanceState::Terminated);
    let state = &f.engine.lock().state;
    assert_eq!(
        state.volumes[&terminates.block_devices[0].volume_id].state,
        VolumeState::Deleted
    );
    assert_eq!(state.volumes[&data_volume].state, VolumeState::Available);
    assert!(state.volumes[&data_volume].attachment.is_none());
}

#[test]
fn guest_reboot_keeps_running_and_crash_stops_with_a_reason() {
    let f = Fixture::new();
    let id = f.run(1).remove(0);
    f.running(std::slice::from_ref(&id));
    f.agent(&[actual(&id, "stopped", 1, "guest-reboot")]);
    assert_eq!(f.state(&id), InstanceState::Running);
    f.agent(&[ActualReport {
        last_exit_detail: "triple fault".into(),
        ..actual(&id, "stopped", 1, "guest-crash")
    }]);
    let instance = f.instance(&id);
    assert_eq!(instance.state, InstanceState::Stopped);
    let reason = instance.state_reason.unwrap();
    assert_eq!(reason.code, "Server.InternalError");
    assert!(
        reason.message.contains("guest-crash: triple fault"),
        "{}",
        reason.message
    );
    assert_eq!(f.engine.desired_state("h-a").instances[0].run, DesiredRun::Stopped);
    // A pending instance whose VMM fails at once stops too.
    f.engine.start_instances(std::slice::from_ref(&id), false).unwrap();
    f.agent(&[actual(&id, "stopped", 2, "vmm-error")]);
    assert_eq!(f.state(&id), InstanceState::Stopped);
}

#[test]
fn scheduler_spreads_and_runs_out_of_capacity() {
    let f = Fixture::new();
    f.host("h-b", "homelab-1a", 8, 16384);
    f.host("h-c", "homelab-1b", 2, 1024);
    // t3.micro: 2 vCPUs, 1 GiB. Room: h-a 4, h-b 4, h-c 1 → 9 at most.
    let too_many = RunInstancesRequest {
        min_count: 10,
        ..f.run_request()
    };
    assert_eq!(code(f.engine.run_instances(too_many)), "InsufficientInstanceCapacity");
    assert!(f.all_states().is_empty(), "all or nothing for MinCount");
    let zone = RunInstancesRequest {
        min_count: 1,
        max_count: 3,
        availability_zone: "homelab-1b".into(),
        ..f.run_request()
    };
    let placed = f.engine.run_instances(zone).unwrap();
    assert_eq!(placed.instances.len(), 1, "MaxCount is a wish");
    assert_eq!(placed.instances[0].host_id, "h-c");
    assert_eq!(placed.instances[0].availability_zone, "homelab-1b");
    let spread = f
        .engine
        .run_instances(RunInstancesRequest {
            min_count: 2,
            ..f.run_request()
        })
        .unwrap();
    let hosts: std::collections::BTreeSet<&str> = spread.instances.iter().map(|i| i.host_id.as_str()).collect();
    assert_eq!(hosts.len(), 2, "spread over h-a and h-b");
    let unknown = RunInstancesRequest {
        availability_zone: "mars-1a".into(),
        ..f.run_request()
    };
    assert_eq!(code(f.engine.run_instances(unknown)), "InvalidParameterValue");
    // A stopped instance frees its room; its start needs room again on its host.
    let (h_c_instance,) = (placed.instances[0].id.clone(),);
    f.engine
        .stop_instances(std::slice::from_ref(&h_c_instance), false, false, false)
        .unwrap();
    f.report(
        "h-c",
        "homelab-1b",
        2,
        1024,
        &[actual(&h_c_instance, "stopped", 1, "killed")],
    );
    f.engine
        .run_instances(RunInstancesRequest {
            availability_zone: "homelab-1b".into(),
            ..f.run_request()
        })
        .unwrap();
    assert_eq!(
        code(f.engine.start_instances(std::slice::from_ref(&h_c_instance), false)),
        "InsufficientInstanceCapacity"
    );
    // Silent hosts get nothing and their instances look impaired.
    f.clock.advance(11_000);
    assert_eq!(
        code(f.engine.run_instances(f.run_request())),
        "InsufficientInstanceCapacity"
    );
    let (statuses, _) = f.engine.describe_instance_status(&[], &[], true, 0, "").unwrap();
    assert!(statuses
        .iter()
        .filter(|s| s.state == InstanceState::Pending)
        .all(|s| s.system_status == "impaired"));
}

#[test]
fn run_instances_validation_errors() {
    let f = Fixture::new();
    let base = f.run_request();
    let cases: Vec<(RunInstancesRequest, &str)> = vec![
        (
            RunInstancesRequest {
                image_id: String::new(),
                ..base.clone()
            },
            "MissingParameter",
        ),
        (
            RunInstancesRequest {
                image_id: "ami-xyz".into(),
                ..base.clone()
            },
            "InvalidAMIID.Malformed",
        ),
        (
            RunInstancesRequest {
                image_id: "ami-0123456789abcdef0".into(),
                ..base.clone()
            },
            "InvalidAMIID.NotFound",
        ),
        (
            RunInstancesRequest {
                instance_type: "t3.mega".into(),
                ..base.clone()
            },
            "InvalidInstanceType",
        ),
        (
            RunInstancesRequest {
                key_name: "nope".into(),
                ..base.clone()
            },
            "InvalidKeyPair.NotFound",
        ),
        (
            RunInstancesRequest {
                min_count: 3,
                max_count: 2,
                ..base.clone()
            },
            "InvalidParameterValue",
        ),
        (
            RunInstancesRequest {
                min_count: -1,
                ..base.clone()
            },
            "InvalidParameterValue",
        ),
        (
            RunInstancesRequest {
                instance_initiated_shutdown_behavior: "hibernate".into(),
                ..base.clone()
            },
            "InvalidParameterValue",
        ),
        (
            RunInstancesRequest {
                user_data: vec![0; 16 * 1024 + 1],
                ..base.clone()
            },
            "InvalidParameterValue",
        ),
        (
            RunInstancesRequest {
                tag_specifications: vec![TagSpecification {
                    resource_type: "vpc".into(),
                    tags: vec![],
                }],
                ..base.clone()
            },
            "InvalidParameterValue",
        ),
        (
            RunInstancesRequest {
                tag_specifications: vec![TagSpecification {
                    resource_type: "instance".into(),
                    tags: vec![("aws:x".into(), "y".into())],
                }],
                ..base.clone()
            },
            "InvalidParameterValue",
        ),
        (
            RunInstancesRequest {
                block_device_mappings: vec![BlockDeviceMapping {
                    device_name: "/dev/xvdb".into(),
                    ebs: Some(EbsSpec::default()),
                    ..BlockDeviceMapping::default()
                }],
                ..base.clone()
            },
            "InvalidBlockDeviceMapping",
        ),
        (
            RunInstancesRequest {
                block_device_mappings: vec![BlockDeviceMapping {
                    device_name: "/dev/xvdb".into(),
                    ebs: Some(EbsSpec {
                        volume_size_gib: Some(1),
                        volume_type: "floppy".into(),
                        ..EbsSpec::default()
                    }),
                    ..BlockDeviceMapping::default()
                }],
                ..base.clone()
            },
            "InvalidParameterValue",
        ),
    ];
    for (request, expected) in cases {
        assert_eq!(code(f.engine.run_instances(request.clone())), expected, "{request:?}");
    }
    assert!(f.all_states().is_empty());

    // A root volume may grow but not shrink below the image.
    let big_image = {
        std::fs::write(f.dir.path().join("import/big.img"), b"").unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(f.dir.path().join("import/big.img"))
            .unwrap();
        file.set_len(3 * crate::model::GIB + 1).unwrap();
        let path = |file: &str| f.dir.path().join("import").join(file).to_string_lossy().into_owned();
        f.engine
            .register_image(RegisterImageRequest {
                name: "big".into(),
                kernel_path: path("vmlinux"),
                root_image_path: path("big.img"),
                ..RegisterImageRequest::default()
            })
            .unwrap()
    };
    let root = |size: u64| BlockDeviceMapping {
        device_name: "/dev/xvda".into(),
        ebs: Some(EbsSpec {
            volume_size_gib: Some(size),
            ..EbsSpec::default()
        }),
        ..BlockDeviceMapping::default()
    };
    let small = RunInstancesRequest {
        image_id: big_image.clone(),
        block_device_mappings: vec![root(2)],
        ..base.clone()
    };
    assert_eq!(code(f.engine.run_instances(small)), "InvalidBlockDeviceMapping");
    let large = RunInstancesRequest {
        image_id: big_image,
        block_device_mappings: vec![root(8)],
        ..base
    };
    let instance = f.engine.run_instances(large).unwrap().instances.remove(0);
    assert_eq!(
        f.engine.lock().state.volumes[&instance.block_devices[0].volume_id].size_gib,
        8
    );
}

#[test]
fn describe_filters_with_wildcards() {
    let f = Fixture::new();
    let tagged = |name: &str, instance_type: &str| {
        f.engine
            .run_instances(RunInstancesRequest {
                instance_type: instance_type.into(),
                tag_specifications: vec![TagSpecification {
                    resource_type: "instance".into(),
                    tags: vec![("Name".into(), name.into()), ("env".into(), "prod".into())],
                }],
                ..f.run_request()
            })
            .unwrap()
            .instances
            .remove(0)
            .id
            .clone()
    };
    let web1 = tagged("web-1", "t3.micro");
    let web2 = tagged("web-2", "t3.nano");
    let db = tagged("db-1", "t3.micro");
    f.running(std::slice::from_ref(&web1));
    let find = |filters: &[Filter]| -> Vec<String> {
        let (reservations, _) = f.engine.describe_instances(&[], filters, 0, "").unwrap();
        let mut found: Vec<String> = reservations
            .into_iter()
            .flat_map(|r| r.instances)
            .map(|i| i.id.clone())
            .collect();
        found.sort();
        found
    };
    let sorted = |mut list: Vec<String>| {
        list.sort();
        list
    };
    assert_eq!(
        find(&[Filter::new("tag:Name", &["web-*"])]),
        sorted(vec![web1.clone(), web2.clone()])
    );
    assert_eq!(find(&[Filter::new("tag:Name", &["web-?", "db-1"])]).len(), 3);
    assert_eq!(
        find(&[
            Filter::new("tag:Name", &["web-*"]),
            Filter::new("instance-type", &["t3.micro"])
        ]),
        vec![web1.clone()]
    );
    assert_eq!(
        find(&[Filter::new("instance-state-name", &["running"])]),
        vec![web1.clone()]
    );
    assert_eq!(
        find(&[Filter::new("instance-state-code", &["0"])]),
        sorted(vec![web2.clone(), db.clone()])
    );
    assert_eq!(find(&[Filter::new("tag-key", &["env"])]).len(), 3);
    assert_eq!(find(&[Filter::new("tag-value", &["db-*"])]), vec![db.clone()]);
    assert_eq!(find(&[Filter::new("availability-zone", &["homelab-1?"])]).len(), 3);
    assert_eq!(find(&[Filter::new("image-id", &[&f.image])]).len(), 3);
    assert_eq!(find(&[Filter::new("instance-id", &[&db])]), vec![db.clone()]);
    assert!(find(&[Filter::new("tag:Name", &["cache"])]).is_empty());
    let bogus = [Filter::new("color", &["red"])];
    assert_eq!(
        code(f.engine.describe_instances(&[], &bogus, 0, "")),
        "InvalidParameterValue"
    );
    // IDs and filters together: the IDs must exist, the filters narrow.
    let (found, _) = f
        .engine
        .describe_instances(&ids(&[&web1, &db]), &[Filter::new("tag:Name", &["db*"])], 0, "")
        .unwrap();
    assert_eq!(found.len(), 1);
}

#[test]
fn pagination_is_stable_and_complete() {
    let f = Fixture::new();
    f.host("h-big", "homelab-1a", 1000, 1_000_000);
    let mut launched = Vec::new();
    for _ in 0..7 {
        launched.extend(f.run(3));
        f.clock.advance(1000);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let (reservations, next) = f.engine.describe_instances(&[], &[], 5, &token).unwrap();
        let page: Vec<String> = reservations
            .into_iter()
            .flat_map(|r| r.instances)
            .map(|i| i.id.clone())
            .collect();
        assert!(page.len() <= 5);
        seen.extend(page);
        pages += 1;
        if next.is_empty() {
            break;
        }
        token = next;
    }
    assert_eq!(pages, 5);
    assert_eq!(seen.len(), 21);
    let unique: std::collections::BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), 21);
    // Launch order: each batch of three comes before the next.
    for (batch, chunk) in launched.chunks(3).enumerate() {
        for id in chunk {
            let position = seen.iter().position(|s| s == id).unwrap();
            assert_eq!(position / 3, batch);
        }
    }
    assert_eq!(
        code(f.engine.describe_instances(&launched[..1], &[], 5, "")),
        "InvalidParameterCombination"
    );
    assert_eq!(
        code(f.engine.describe_instances(&[], &[], 2000, "")),
        "InvalidParameterValue"
    );
}

#[test]
fn state_survives_reopen() {
    let mut f = Fixture::new();
    let list = f.run(2);
    f.running(&list);
    f.engine.stop_instances(&list[..1], false, false, false).unwrap();
    f.engine
        .create_tags(&list[1..], &[("Name".into(), "kept".into())], false)
        .unwrap();
    let desired = f.engine.desired_state("h-a");
    let before = f.all_states();
    f.reopen();
    assert_eq!(f.all_states(), before);
    assert_eq!(f.engine.desired_state("h-a"), desired);
    assert_eq!(f.instance(&list[1]).tags["Name"], "kept");
    assert_eq!(f.engine.describe_images(&[], &[]).unwrap().len(), 1);
    // After a restart, hosts are not live until they sync again.
    assert_eq!(
        code(f.engine.run_instances(f.run_request())),
        "InsufficientInstanceCapacity"
    );
    f.agent(&[actual(&list[0], "stopped", 1, "killed")]);
    assert_eq!(f.state(&list[0]), InstanceState::Stopped);
    f.reopen();
    assert_eq!(f.state(&list[0]), InstanceState::Stopped);
}

#[test]
fn modify_and_describe_attributes() {
    let f = Fixture::new();
    let id = f.run(1).remove(0);
    f.running(std::slice::from_ref(&id));
    let modify = |request: ModifyInstanceRequest| {
        f.engine.modify_instance_attribute(ModifyInstanceRequest {
            instance_id: id.clone(),
            ..request
        })
    };
    let to_small = ModifyInstanceRequest {
        instance_type: Some("t3.small".into()),
        ..Default::default()
    };
    assert_eq!(code(modify(to_small.clone())), "IncorrectInstanceState");
    let user_data = ModifyInstanceRequest {
        user_data: Some(b"#!/bin/sh".to_vec()),
        ..Default::default()
    };
    assert_eq!(code(modify(user_data.clone())), "IncorrectInstanceState");
    assert_eq!(code(modify(ModifyInstanceRequest::default())), "MissingParameter");
    let two = ModifyInstanceRequest {
        disable_api_termination: Some(true),
        instance_type: Some("t3.small".into()),
        ..Default::default()
    };
    assert_eq!(code(modify(two)), "InvalidParameterCombination");
    let behavior = ModifyInstanceRequest {
        instance_initiated_shutdown_behavior: Some("terminate".into()),
        ..Default::default()
    };
    modify(behavior).unwrap();
    let bad = ModifyInstanceRequest {
        instance_initiated_shutdown_behavior: Some("explode".into()),
        ..Default::default()
    };
    assert_eq!(code(modify(bad)), "InvalidParameterValue");

    f.engine
        .stop_instances(std::slice::from_ref(&id), false, false, false)
        .unwrap();
    f.agent(&[actual(&id, "stopped", 1, "killed")]);
    modify(to_small).unwrap();
    modify(user_data).unwrap();
    let mega = ModifyInstanceRequest {
        instance_type: Some("t3.mega".into()),
        ..Default::default()
    };
    assert_eq!(code(modify(mega)), "InvalidInstanceType");
    // Kernel and ramdisk are image IDs (EC2's aki-/ari-): the kernel or initrd of that image,
    // never a host path.
    std::fs::write(f.dir.path().join("import/vmlinux-2"), b"kernel 2").unwrap();
    let other = f
        .engine
        .register_image(RegisterImageRequest {
            name: "other".into(),
            kernel_path: "vmlinux-2".into(),
            root_image_path: "root.img".into(),
            ..RegisterImageRequest::default()
        })
        .unwrap();
    for refused in [
        ModifyInstanceRequest {
            kernel: Some("/etc/passwd".into()),
            ..Default::default()
        },
        ModifyInstanceRequest {
            ramdisk: Some("/etc/passwd".into()),
            ..Default::default()
        },
        ModifyInstanceRequest {
            kernel: Some(f.dir.path().join("import/vmlinux").display().to_string()),
            ..Default::default()
        },
        ModifyInstanceRequest {
            ramdisk: Some("../state.db".into()),
            ..Default::default()
        },
        // Another instance's volume file.
        ModifyInstanceRequest {
            kernel: Some(
                f.dir
                    .path()
                    .join("volumes")
                    .join(format!("{}.img", f.instance(&id).block_devices[0].volume_id))
                    .display()
                    .to_string(),
            ),
            ..Default::default()
        },
    ] {
        assert_eq!(code(modify(refused.clone())), "InvalidAMIID.Malformed", "{refused:?}");
    }
    let missing = ModifyInstanceRequest {
        ramdisk: Some("ami-0123456789abcdef0".into()),
        ..Default::default()
    };
    assert_eq!(code(modify(missing)), "InvalidAMIID.NotFound");
    assert_eq!(f.instance(&id).kernel_override, None, "refusals change nothing");
    assert_eq!(f.instance(&id).ramdisk_override, None);
    modify(ModifyInstanceRequest {
        kernel: Some(other.clone()),
        ..Default::default()
    })
    .unwrap();
    let kernel = f.engine.describe_images(std::slice::from_ref(&other), &[]).unwrap()[0]
        .kernel_path
        .clone();

    let attr = |name: &str| f.engine.describe_instance_attribute(&id, name, false).unwrap().value;
    assert_eq!(attr("instanceType"), "t3.small");
    assert_eq!(attr("userData"), crate::encoding::base64(b"#!/bin/sh"));
    assert_eq!(attr("instanceInitiatedShutdownBehavior"), "terminate");
    assert_eq!(attr("disableApiTermination"), "false");
    assert_eq!(attr("kernel"), other);
    assert_eq!(attr("ramdisk"), f.image);
    assert_eq!(attr("rootDeviceName"), "/dev/xvda");
    assert_eq!(
        f.engine
            .describe_instance_attribute(&id, "blockDeviceMapping", false)
            .unwrap()
            .block_devices
            .len(),
        1
    );
    assert_eq!(
        code(f.engine.describe_instance_attribute(&id, "color", false)),
        "InvalidParameterValue"
    );
    let spec = &f.engine.desired_state("h-a").instances[0];
    assert_eq!((spec.vcpus, spec.memory_mib), (2, 2048));
    assert_eq!(spec.kernel_path, kernel);
    assert_eq!(std::fs::read(&spec.kernel_path).unwrap(), b"kernel 2");
    // The image a kernel comes from stays while an instance uses it.
    f.engine.deregister_image(&other, false).unwrap();
    f.engine.purge().unwrap();
    assert_eq!(f.engine.desired_state("h-a").instances[0].kernel_path, kernel);
    assert!(std::path::Path::new(&kernel).exists());
}

#[test]
fn images_register_describe_deregister_and_create() {
    let f = Fixture::new();
    let images = f.engine.describe_images(&[], &[]).unwrap();
    assert_eq!(images.len(), 1);
    let image = &images[0];
    assert_eq!(image.root_size_bytes, 4096);
    assert_eq!(image.command_line, "console=ttyS0");
    let blobs = f.dir.path().join("images/blobs/sha256");
    assert!(std::path::Path::new(&image.root_path).starts_with(&blobs));
    assert_eq!(std::fs::read(&image.kernel_path).unwrap(), b"kernel");
    assert_eq!(image.blob_digests.len(), 3);
    assert_eq!(image.manifest_digest.len(), 64);
    let blob_count = || std::fs::read_dir(&blobs).unwrap().count();

    let path = |file: &str| f.dir.path().join("import").join(file).to_string_lossy().into_owned();
    let duplicate = RegisterImageRequest {
        name: "base".into(),
        kernel_path: path("vmlinux"),
        root_image_path: path("root.img"),
        ..RegisterImageRequest::default()
    };
    assert_eq!(
        code(f.engine.register_image(duplicate.clone())),
        "InvalidAMIName.Duplicate"
    );
    let missing = RegisterImageRequest {
        name: "other".into(),
        kernel_path: path("nope"),
        ..duplicate.clone()
    };
    assert_eq!(code(f.engine.register_image(missing)), "InvalidParameterValue");
    let no_root = RegisterImageRequest {
        name: "other".into(),
        root_image_path: String::new(),
        ..duplicate.clone()
    };
    assert_eq!(code(f.engine.register_image(no_root)), "MissingParameter");
    let dry = RegisterImageRequest {
        name: "other".into(),
        dry_run: true,
        ..duplicate
    };
    assert_eq!(code(f.engine.register_image(dry)), "DryRunOperation");
    assert_eq!(blob_count(), 3, "no files left behind");
    assert_eq!(
        std::fs::read_dir(f.dir.path().join("images/manifests"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(
        std::fs::read_dir(f.dir.path().join("image-cache")).map_or(0, |d| d.count()),
        0,
        "no staging left behind"
    );

    let by_name = f.engine.describe_images(&[], &[Filter::new("name", &["ba*"])]).unwrap();
    assert_eq!(by_name.len(), 1);
    assert_eq!(
        code(f.engine.describe_images(&["ami-0123456789abcdef0".into()], &[])),
        "InvalidAMIID.NotFound"
    );
    assert_eq!(
        code(f.engine.describe_images(&["ami-1".into()], &[])),
        "InvalidAMIID.Malformed"
    );

    // CreateImage from a stopped instance copies its volume file.
    let id = f.run(1).remove(0);
    assert_eq!(
        code(f.engine.create_image(CreateImageRequest {
            instance_id: id.clone(),
            name: "snap".into(),
            ..Default::default()
        })),
        "IncorrectInstanceState",
        "pending"
    );
    f.running(std::slice::from_ref(&id));
    let root_volume = f.instance(&id).block_devices[0].volume_id.clone();
    std::fs::create_dir_all(f.dir.path().join("volumes")).unwrap();
    std::fs::write(
        f.dir.path().join("volumes").join(format!("{root_volume}.img")),
        b"changed disk",
    )
    .unwrap();
    let created = f
        .engine
        .create_image(CreateImageRequest {
            instance_id: id.clone(),
            name: "snap".into(),
            ..Default::default()
        })
        .unwrap();
    let snap = &f.engine.describe_images(std::slice::from_ref(&created), &[]).unwrap()[0];
    assert_eq!(std::fs::read(&snap.root_path).unwrap(), b"changed disk");
    assert_eq!(snap.source_instance_id.as_deref(), Some(id.as_str()));
    let again = CreateImageRequest {
        instance_id: id.clone(),
        name: "snap".into(),
        ..Default::default()
    };
    assert_eq!(code(f.engine.create_image(again)), "InvalidAMIName.Duplicate");

    // Deregister: gone from Describe and RunInstances; files kept while an instance uses them.
    f.engine.deregister_image(&f.image, false).unwrap();
    assert_eq!(
        code(f.engine.deregister_image(&f.image, false)),
        "InvalidAMIID.NotFound"
    );
    assert_eq!(f.engine.describe_images(&[], &[]).unwrap().len(), 1);
    assert_eq!(code(f.engine.run_instances(f.run_request())), "InvalidAMIID.NotFound");
    let base_root = image.root_path.clone();
    assert!(std::path::Path::new(&base_root).exists());
    assert_eq!(blob_count(), 4, "the created image shares the kernel and initrd");
    f.engine.terminate_instances(std::slice::from_ref(&id), false).unwrap();
    f.agent(&[actual(&id, "terminated", 1, "")]);
    f.engine.purge().unwrap();
    assert!(
        !std::path::Path::new(&base_root).exists(),
        "the base image's own root went"
    );
    assert_eq!(
        std::fs::read(&snap.kernel_path).unwrap(),
        b"kernel",
        "shared blobs stay"
    );
    f.engine.deregister_image(&created, false).unwrap();
    assert_eq!(blob_count(), 0);
    assert_eq!(
        std::fs::read_dir(f.dir.path().join("images/manifests"))
            .unwrap()
            .count(),
        0
    );
}

/// Everything in the image store and the image rows, to show a refusal created nothing.
fn image_footprint(f: &Fixture) -> (Vec<String>, usize, usize) {
    let count = |dir: &str| std::fs::read_dir(f.dir.path().join(dir)).map_or(0, |d| d.count());
    let ids = f
        .engine
        .describe_images(&[], &[])
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    (ids, count("images/blobs/sha256"), count("images/manifests"))
}

#[test]
fn register_image_reads_only_the_import_directory() {
    let f = Fixture::new();
    let import = f.dir.path().join("import");
    // A manifest the caller may use, and its files.
    std::fs::create_dir_all(import.join("good")).unwrap();
    std::fs::write(import.join("good/vmlinux"), b"good kernel").unwrap();
    std::fs::write(import.join("good/root.img"), vec![1u8; 512]).unwrap();
    let options =
        hearth_image::manifest::DescribeOptions::new("good", import.join("good/vmlinux"), import.join("good/root.img"));
    let manifest = hearth_image::Manifest::describe_files(&import.join("good"), &options).unwrap();
    std::fs::write(import.join("good/image.json"), manifest.to_json_pretty()).unwrap();

    // Another instance's root volume file, and hearthd's own database.
    let id = f.run(1).remove(0);
    f.running(std::slice::from_ref(&id));
    let volume = f.instance(&id).block_devices[0].volume_id.clone();
    std::fs::create_dir_all(f.dir.path().join("volumes")).unwrap();
    let volume_file = f.dir.path().join("volumes").join(format!("{volume}.img"));
    std::fs::write(&volume_file, b"someone else's disk").unwrap();
    let state_db = f.dir.path().join("state.db").display().to_string();

    // Symbolic links inside the import directory: to a file outside, to a directory, and a
    // manifest whose file is a link (its checksum even matches the target).
    std::os::unix::fs::symlink("/etc/passwd", import.join("passwd")).unwrap();
    std::os::unix::fs::symlink(&volume_file, import.join("volume.img")).unwrap();
    std::os::unix::fs::symlink(import.join("good"), import.join("linked-dir")).unwrap();
    std::fs::create_dir_all(import.join("evil")).unwrap();
    std::os::unix::fs::symlink(&volume_file, import.join("evil/root.img")).unwrap();
    std::fs::write(import.join("evil/vmlinux"), b"good kernel").unwrap();
    let mut evil = manifest.clone();
    evil.name = "evil".into();
    let (sha256, size) = hearth_image::sha256_file(&volume_file).unwrap();
    evil.root.sha256 = sha256;
    evil.root.size = size;
    std::fs::write(import.join("evil/image.json"), evil.to_json_pretty()).unwrap();
    std::os::unix::fs::symlink(import.join("good/image.json"), import.join("image.json")).unwrap();

    let before = image_footprint(&f);
    let paths = |kernel: &str, root: &str| RegisterImageRequest {
        name: "refused".into(),
        kernel_path: kernel.into(),
        root_image_path: root.into(),
        ..RegisterImageRequest::default()
    };
    let location = |path: &str| RegisterImageRequest {
        image_location: path.into(),
        ..RegisterImageRequest::default()
    };
    let volume_path = volume_file.display().to_string();
    let outside_dotdot = format!("{}/../state.db", import.display());
    let cases = [
        (paths("/etc/passwd", "root.img"), "InvalidParameterValue"),
        (paths("vmlinux", &state_db), "InvalidParameterValue"),
        (paths("vmlinux", &volume_path), "InvalidParameterValue"),
        (paths("../vmlinux", "root.img"), "InvalidParameterValue"),
        (paths("vmlinux", &outside_dotdot), "InvalidParameterValue"),
        (paths("good/../vmlinux", "root.img"), "InvalidParameterValue"),
        (paths("passwd", "root.img"), "InvalidParameterValue"),
        (paths("vmlinux", "volume.img"), "InvalidParameterValue"),
        (paths("linked-dir/vmlinux", "root.img"), "InvalidParameterValue"),
        (paths("good", "root.img"), "InvalidParameterValue"),
        (
            RegisterImageRequest {
                initrd_path: "/etc/passwd".into(),
                ..paths("vmlinux", "root.img")
            },
            "InvalidParameterValue",
        ),
        (location("/etc/passwd"), "InvalidParameterValue"),
        (location(&state_db), "InvalidParameterValue"),
        (location(&volume_path), "InvalidParameterValue"),
        (location("../state.db"), "InvalidParameterValue"),
        (location("image.json"), "InvalidParameterValue"),
        (location("linked-dir/image.json"), "InvalidParameterValue"),
        (location("evil/image.json"), "InvalidManifest"),
        (location("good/vmlinux"), "InvalidManifest"),
        // Kernel and ramdisk IDs are image IDs, never paths.
        (
            RegisterImageRequest {
                kernel_id: "/etc/passwd".into(),
                ..paths("", "root.img")
            },
            "InvalidAMIID.Malformed",
        ),
        (
            RegisterImageRequest {
                ramdisk_id: volume_path.clone(),
                ..paths("vmlinux", "root.img")
            },
            "InvalidAMIID.Malformed",
        ),
        (
            RegisterImageRequest {
                kernel_id: "ami-0123456789abcdef0".into(),
                ..paths("", "root.img")
            },
            "InvalidAMIID.NotFound",
        ),
        (
            RegisterImageRequest {
                kernel_id: f.image.clone(),
                ..paths("vmlinux", "root.img")
            },
            "InvalidParameterCombination",
        ),
    ];
    for (request, expected) in cases {
        assert_eq!(code(f.engine.register_image(request.clone())), expected, "{request:?}");
        assert_eq!(image_footprint(&f), before, "{request:?} created nothing");
    }
    assert_eq!(
        std::fs::read_dir(f.dir.path().join("image-cache")).map_or(0, |d| d.count()),
        0,
        "no staging left behind"
    );

    // What is below the import directory, by relative or absolute path, is imported.
    let good = f.engine.register_image(location("good/image.json")).unwrap();
    let good = &f.engine.describe_images(&[good], &[]).unwrap()[0];
    assert_eq!(good.name, "good");
    assert_eq!(std::fs::read(&good.kernel_path).unwrap(), b"good kernel");
    let absolute = f
        .engine
        .register_image(RegisterImageRequest {
            name: "absolute".into(),
            root_image_path: import.join("good/root.img").display().to_string(),
            ..paths(&import.join("vmlinux").display().to_string(), "")
        })
        .unwrap();
    // A kernel and ramdisk by image ID: that image's files, from the store.
    let by_id = f
        .engine
        .register_image(RegisterImageRequest {
            name: "by-id".into(),
            kernel_id: good.id.clone(),
            ramdisk_id: f.image.clone(),
            ..paths("", "root.img")
        })
        .unwrap();
    let by_id = &f.engine.describe_images(&[by_id], &[]).unwrap()[0];
    assert_eq!(std::fs::read(&by_id.kernel_path).unwrap(), b"good kernel");
    assert_eq!(std::fs::read(by_id.initrd_path.as_ref().unwrap()).unwrap(), b"initrd");
    assert_eq!(
        code(f.engine.register_image(RegisterImageRequest {
            name: "no-ramdisk".into(),
            ramdisk_id: absolute,
            ..paths("vmlinux", "root.img")
        })),
        "InvalidParameterValue",
        "an image without an initrd has no ramdisk"
    );
}

#[test]
fn key_pairs() {
    let f = Fixture::new();
    let created = f.engine.create_key_pair("laptop", "", false).unwrap();
    assert!(created.private_key.contains("PRIVATE KEY"));
    assert_eq!(created.key_pair.key_type, "ed25519");
    assert!(created.key_pair.id.starts_with("key-"));
    assert_eq!(
        code(f.engine.create_key_pair("laptop", "", false)),
        "InvalidKeyPair.Duplicate"
    );
    assert_eq!(code(f.engine.create_key_pair("", "", false)), "MissingParameter");
    assert_eq!(
        code(f.engine.create_key_pair("x", "dsa", false)),
        "InvalidParameterValue"
    );
    assert_eq!(code(f.engine.create_key_pair("x", "", true)), "DryRunOperation");

    let imported = f
        .engine
        .import_key_pair("imported", &created.key_pair.public_key, false)
        .unwrap();
    assert_eq!(imported.fingerprint, created.key_pair.fingerprint);
    assert_eq!(
        code(f.engine.import_key_pair("bad", "ssh-ed25519 notbase64", false)),
        "InvalidKey.Format"
    );
    assert_eq!(
        code(
            f.engine
                .import_key_pair("imported", &created.key_pair.public_key, false)
        ),
        "InvalidKeyPair.Duplicate"
    );

    assert_eq!(f.engine.describe_key_pairs(&[], &[]).unwrap().len(), 2);
    let found = f
        .engine
        .describe_key_pairs(&[], &[Filter::new("key-name", &["lap*"])])
        .unwrap();
    assert_eq!(found[0].name, "laptop");
    assert_eq!(
        code(f.engine.describe_key_pairs(&["nope".into()], &[])),
        "InvalidKeyPair.NotFound"
    );

    let instance = f
        .engine
        .run_instances(RunInstancesRequest {
            key_name: "laptop".into(),
            ..f.run_request()
        })
        .unwrap();
    assert_eq!(instance.instances[0].key_name, "laptop");

    f.engine.delete_key_pair("laptop", false).unwrap();
    f.engine.delete_key_pair("laptop", false).unwrap();
    assert_eq!(f.engine.describe_key_pairs(&[], &[]).unwrap().len(), 1);
}

#[test]
fn tags_on_every_resource() {
    let f = Fixture::new();
    let instance = f.run(1).remove(0);
    let volume = f.instance(&instance).block_devices[0].volume_id.clone();
    let key = f.engine.create_key_pair("k", "", false).unwrap().key_pair.id;
    let resources = vec![instance.clone(), volume.clone(), f.image.clone(), key.clone()];
    let tag = |k: &str, v: &str| (k.to_string(), v.to_string());
    f.engine
        .create_tags(&resources, &[tag("team", "infra"), tag("Name", "x")], false)
        .unwrap();
    let (tags, _) = f.engine.describe_tags(&[], 0, "").unwrap();
    assert_eq!(tags.len(), 8);
    let types: std::collections::BTreeSet<&str> = tags.iter().map(|t| t.resource_type.as_str()).collect();
    assert_eq!(types, ["image", "instance", "key-pair", "volume"].into_iter().collect());
    let (instance_tags, _) = f
        .engine
        .describe_tags(
            &[
                Filter::new("resource-type", &["instance"]),
                Filter::new("key", &["te*"]),
            ],
            0,
            "",
        )
        .unwrap();
    assert_eq!(instance_tags.len(), 1);
    assert_eq!(instance_tags[0].value, "infra");

    // Delete: with a value only when it matches; without one whatever the value.
    f.engine
        .delete_tags(
            std::slice::from_ref(&instance),
            &[("team".into(), Some("other".into()))],
            false,
        )
        .unwrap();
    assert!(f.instance(&instance).tags.contains_key("team"));
    f.engine
        .delete_tags(std::slice::from_ref(&instance), &[("team".into(), None)], false)
        .unwrap();
    assert!(!f.instance(&instance).tags.contains_key("team"));
    f.engine.delete_tags(std::slice::from_ref(&volume), &[], false).unwrap();
    let (volume_tags, _) = f
        .engine
        .describe_tags(&[Filter::new("resource-id", &[&volume])], 0, "")
        .unwrap();
    assert!(volume_tags.is_empty());

    let unknown = vec![instance.clone(), "i-0123456789abcdef0".to_string()];
    assert_eq!(
        code(f.engine.create_tags(&unknown, &[tag("a", "b")], false)),
        "InvalidInstanceID.NotFound"
    );
    assert!(!f.instance(&instance).tags.contains_key("a"), "all or nothing");
    assert_eq!(
        code(f.engine.create_tags(&["igw-12345678".into()], &[tag("a", "b")], false)),
        "InvalidID"
    );
    assert_eq!(
        code(f.engine.create_tags(&["sg-12345678".into()], &[tag("a", "b")], false)),
        "InvalidGroup.NotFound"
    );
    assert_eq!(
        code(
            f.engine
                .create_tags(&["vol-0123456789abcdef0".into()], &[tag("a", "b")], false)
        ),
        "InvalidVolume.NotFound"
    );
    assert_eq!(
        code(
            f.engine
                .create_tags(std::slice::from_ref(&instance), &[tag("aws:x", "b")], false)
        ),
        "InvalidParameterValue"
    );
    assert_eq!(
        code(f.engine.create_tags(std::slice::from_ref(&instance), &[], false)),
        "MissingParameter"
    );
    assert_eq!(
        code(f.engine.create_tags(&[], &[tag("a", "b")], false)),
        "MissingParameter"
    );
    let many: Vec<(String, String)> = (0..51).map(|i| (format!("k{i}"), "v".into())).collect();
    assert_eq!(
        code(f.engine.create_tags(std::slice::from_ref(&instance), &many, false)),
        "TagLimitExceeded"
    );
}

#[test]
fn regions_zones_and_instance_types() {
    let f = Fixture::new();
    assert_eq!(f.engine.describe_regions()[0].name, "homelab-1");
    f.host("h-b", "homelab-1b", 4, 4096);
    let zones = f.engine.describe_availability_zones(&[]).unwrap();
    let names: Vec<&str> = zones.iter().map(|z| z.name.as_str()).collect();
    assert_eq!(names, ["homelab-1a", "homelab-1b"]);
    assert!(zones.iter().all(|z| z.state == "available" && z.hosts == 1));
    assert_eq!(
        code(f.engine.describe_availability_zones(&["homelab-1z".into()])),
        "InvalidParameterValue"
    );
    f.clock.advance(20_000);
    f.host("h-b", "homelab-1b", 4, 4096);
    let zones = f.engine.describe_availability_zones(&[]).unwrap();
    assert_eq!(zones[0].state, "impaired");
    assert_eq!(zones[1].state, "available");

    assert_eq!(f.engine.describe_instance_types(&[], &[]).unwrap().len(), 30);
    let storage = f
        .engine
        .describe_instance_types(&[], &[Filter::new("family", &["storage"])])
        .unwrap();
    assert!(storage
        .iter()
        .all(|t| t.name.starts_with("i3.") && t.instance_store_disks == 1));
    assert_eq!(
        code(f.engine.describe_instance_types(&["z9.large".into()], &[])),
        "InvalidInstanceType"
    );
}

#[test]
fn console_output_comes_from_the_run_dir() {
    let f = Fixture::new();
    let id = f.run(1).remove(0);
    assert!(f.engine.get_console_output(&id, false).unwrap().0.is_empty());
    std::fs::create_dir_all(f.dir.path().join("run").join(&id)).unwrap();
    std::fs::write(
        f.dir.path().join("run").join(&id).join("console.log"),
        b"Linux version 6.1\n",
    )
    .unwrap();
    assert_eq!(
        f.engine.get_console_output(&id, false).unwrap().0,
        b"Linux version 6.1\n"
    );
    assert_eq!(code(f.engine.get_console_output(&id, true)), "DryRunOperation");
    assert_eq!(
        code(f.engine.get_console_output("i-0123456789abcdef0", false)),
        "InvalidInstanceID.NotFound"
    );
}

#[test]
fn reports_about_other_hosts_or_unknown_instances_are_ignored() {
    let f = Fixture::new();
    let id = f.run(1).remove(0);
    f.report("h-other", "homelab-1a", 8, 8192, &[actual(&id, "running", 1, "")]);
    assert_eq!(f.state(&id), InstanceState::Pending);
    f.agent(&[actual("i-0123456789abcdef0", "running", 1, "")]);
    assert_eq!(f.state(&id), InstanceState::Pending);
}

#[tokio::test]
async fn sync_long_polls_until_the_desired_state_moves() {
    let f = Fixture::new();
    let host = HostReport {
        host_id: "h-a".into(),
        availability_zone: "homelab-1a".into(),
        vcpus: 8,
        memory_mib: 16384,
        agent_version: "test".into(),
        ..HostReport::default()
    };
    let first = f
        .engine
        .sync(host.clone(), vec![], 0, Duration::from_secs(5))
        .await
        .unwrap();
    let revision = first.revision;
    // Known and current: held up to wait_ms.
    let started = std::time::Instant::now();
    let held = f
        .engine
        .sync(host.clone(), vec![], revision, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(190));
    assert_eq!(held.revision, revision);
    // A RunInstances during the wait answers the poll at once.
    let engine = f.engine.clone();
    let waiter = tokio::spawn(async move { engine.sync(host, vec![], revision, Duration::from_secs(30)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    let id = f.run(1).remove(0);
    let answer = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(answer.revision > revision);
    assert_eq!(answer.instances[0].instance_id, id);
}
