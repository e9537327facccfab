//! Malformed configurations: one clear error line, exit status 1, nothing left behind.

mod common;

use std::process::Command;

fn reject(args: &[&str], expected: &str) {
    let dir = common::TempDir::new("cfg");
    let socket = dir.path("vmm.sock");
    let output = Command::new(common::vmm_binary())
        .args(args)
        .args(["--control-socket", socket.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: want one error line, got {stderr}");
    assert!(
        stderr.contains(expected),
        "{args:?}: {stderr:?} should mention {expected:?}"
    );
    assert!(!socket.exists(), "{args:?} left its control socket behind");
    assert_eq!(
        std::fs::read_dir(&dir.0).unwrap().count(),
        0,
        "{args:?} left files behind"
    );
}

#[test]
fn malformed_configs_are_rejected_with_one_line() {
    let kernel = std::env::current_exe().unwrap();
    let kernel = kernel.to_str().unwrap();
    reject(&[], "--kernel or --config is required");
    reject(&["--kernel", "/nonexistent/vmlinux"], "kernel /nonexistent/vmlinux");
    reject(&["--kernel", kernel, "--vcpus", "0"], "vcpus must be 1–32");
    reject(&["--kernel", kernel, "--vcpus", "33"], "vcpus must be 1–32");
    reject(&["--kernel", kernel, "--vcpus", "many"], "--vcpus");
    reject(&["--kernel", kernel, "--memory", "1"], "memory_mib");
    reject(
        &["--kernel", kernel, "--disk", "path=/nonexistent.img"],
        "disks[0].path",
    );
    reject(&["--kernel", kernel, "--disk", "ro"], "--disk needs path=");
    reject(
        &["--kernel", kernel, "--disk", &format!("path={kernel},speed=9")],
        "unknown key",
    );
    reject(
        &["--kernel", kernel, "--net", "tap=t0,mac=zz:00:00:00:00:00"],
        "is not aa:bb:cc:dd:ee:ff",
    );
    reject(
        &["--kernel", kernel, "--net", "tap=t0,mac=01:00:00:00:00:00"],
        "multicast",
    );
    reject(
        &["--kernel", kernel, "--net", "tap=t0", "--net", "tap=t0"],
        "used twice",
    );
    reject(&["--kernel", kernel, "--frobnicate"], "unknown flag --frobnicate");
    reject(&["--config", "/nonexistent.json"], "cannot read config file");
}

#[test]
fn bad_json_config_is_rejected() {
    let dir = common::TempDir::new("json");
    let file = dir.path("vm.json");
    std::fs::write(&file, r#"{"kernel": "/bin/true", "vcpu": 2}"#).unwrap();
    let output = Command::new(common::vmm_binary())
        .args(["--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unknown field `vcpu`"), "{stderr}");
}

#[test]
fn a_file_that_is_no_kernel_is_rejected_before_anything_runs() {
    if !common::kvm_available() {
        return;
    }
    let dir = common::TempDir::new("notkernel");
    let file = dir.path("junk");
    std::fs::write(&file, b"this is not a kernel").unwrap();
    let output = Command::new(common::vmm_binary())
        .args(["--kernel", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot load kernel"), "{stderr}");
}

#[test]
fn missing_tap_is_a_config_error() {
    if !common::kvm_available() {
        return;
    }
    let output = Command::new(common::vmm_binary())
        .args([
            "--kernel",
            common::probe_kernel().to_str().unwrap(),
            "--net",
            "tap=hearth-nope0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("hearth-nope0"), "{stderr}");
}
