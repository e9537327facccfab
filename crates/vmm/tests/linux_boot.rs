//! Real Linux is the judge of the boot protocol and the ACPI tables: boot the project's
//! guest kernel (scripts/build-kernel) and check what its early console says. A full boot
//! to user space runs only where the host has hardware virtualization.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kernel() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("HEARTH_KERNEL") {
        return Some(PathBuf::from(path));
    }
    let output = Command::new(common::repo_root().join("scripts/build-kernel"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/build-kernel");
    let stdout = String::from_utf8_lossy(&output.stdout);
    match (output.status.success(), stdout.lines().last()) {
        (true, Some(path)) if !path.trim().is_empty() => Some(PathBuf::from(path.trim())),
        _ => {
            assert!(!common::in_ci(), "scripts/build-kernel failed under CI");
            eprintln!("SKIPPED: no guest kernel built (run scripts/build-kernel)");
            None
        }
    }
}

/// Boots `kernel`, reading the console until `done` matches or `timeout`; returns it.
fn early_console(kernel: &std::path::Path, cmdline: &str, vcpus: &str, done: &str, timeout: Duration) -> String {
    let mut child = Command::new(common::vmm_binary())
        .args([
            "--kernel",
            kernel.to_str().unwrap(),
            "--vcpus",
            vcpus,
            "--memory",
            "256",
            "--cmdline",
            cmdline,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut console = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(chunk) => console.extend_from_slice(&chunk),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if String::from_utf8_lossy(&console).contains(done) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    let text = String::from_utf8_lossy(&console).to_string();
    assert!(
        text.contains(done),
        "no {done:?} within {timeout:?}; console:\n{text}\nstderr:\n{stderr}"
    );
    text
}

fn assert_has(console: &str, needle: &str) {
    assert!(console.contains(needle), "early console lacks {needle:?}:\n{console}");
}

#[test]
fn linux_early_console_confirms_boot_protocol_and_acpi() {
    require_kvm!();
    let Some(kernel) = kernel() else { return };
    let cmdline = "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=1 hearth.test=early";
    let console = early_console(
        &kernel,
        cmdline,
        "2",
        "smpboot: Allowing 2 CPUs",
        Duration::from_secs(120),
    );
    assert_has(&console, "Linux version 6.1");
    // The VMM appends one virtio_mmio.device= per device (here: the rng).
    assert_has(
        &console,
        &format!("Command line: {cmdline} virtio_mmio.device=4K@0xd0000000:5"),
    );
    assert_has(
        &console,
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
    );
    assert_has(
        &console,
        "BIOS-e820: [mem 0x000000000009fc00-0x000000000009ffff] reserved",
    );
    assert_has(
        &console,
        "BIOS-e820: [mem 0x00000000000e0000-0x00000000000fffff] reserved",
    );
    assert_has(
        &console,
        "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
    );
    assert_has(&console, "Hypervisor detected: KVM");
    for table in ["RSDP 0x00000000000E0000", "XSDT 0x", "FACP 0x", "DSDT 0x", "APIC 0x"] {
        assert_has(&console, &format!("ACPI: {table}"));
    }
    assert!(!console.contains("A valid RSDP was not found"), "{console}");
    // The CPU count Linux read from our MADT.
    assert_has(&console, "ACPI: Using ACPI (MADT) for SMP configuration information");
    assert_has(&console, "smpboot: Allowing 2 CPUs, 0 hotplug CPUs");
    // 256 MiB as our e820 map describes it, in whole pages: 0x1000–0x9efff (158 pages,
    // page 0 and the partial page below the EBDA are not counted) + 1 MiB–256 MiB
    // (65280 pages) = 65438 pages = 261752 KiB.
    assert_has(&console, "/261752K available (");
}

#[test]
fn linux_boots_to_user_space_with_hardware_virtualization() {
    require_kvm!();
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hardware = cpuinfo.contains(" vmx") || cpuinfo.contains(" svm");
    if pvm || !hardware {
        eprintln!(
            "SKIPPED: full Linux boot needs hardware virtualization (kvm_pvm loaded: {pvm}, vmx/svm flags: {hardware}); \
             here guest kernel code runs in KVM's instruction emulator (docs: kvm-on-dev-machines.md)"
        );
        return;
    }
    let Some(kernel) = kernel() else { return };
    // No root disk: the kernel panics when it cannot mount root, after bringing up
    // drivers and the console; that line proves a full kernel boot.
    let console = early_console(
        &kernel,
        "console=ttyS0 reboot=k panic=-1",
        "2",
        "VFS: Unable to mount root fs",
        Duration::from_secs(60),
    );
    assert_has(&console, "Linux version 6.1");
}
