//! Real Linux is the judge of the boot protocol and the ACPI tables: boot the project's
//! guest kernel (scripts/build-kernel) and check what its early console says. A full boot
//! to user space (an init that prints a marker and powers off) runs only where the host has
//! hardware virtualization.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;

/// The vmlinux built by scripts/build-kernel (its bzImage sits beside it).
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

/// Boots `kernel` with `extra` VMM flags, reading the console until `done` appears or
/// `timeout`; returns the console and the VMM's exit status if it ended by itself.
fn boot(kernel: &Path, cmdline: &str, extra: &[&str], done: &str, timeout: Duration) -> (String, Option<i32>) {
    let mut child = Command::new(common::vmm_binary())
        .args([
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "256",
            "--cmdline",
            cmdline,
        ])
        .args(extra)
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
    let ended = child.try_wait().unwrap().and_then(|s| s.code());
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    let text = String::from_utf8_lossy(&console).to_string();
    assert!(
        text.contains(done),
        "no {done:?} within {timeout:?}; console:\n{text}\nstderr:\n{stderr}"
    );
    (text, ended)
}

fn assert_has(console: &str, needle: &str) {
    assert!(console.contains(needle), "early console lacks {needle:?}:\n{console}");
}

const EARLY: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=1";

#[test]
fn linux_early_console_confirms_boot_protocol_and_acpi() {
    require_kvm!();
    let Some(kernel) = kernel() else { return };
    let dir = TempDir::new("initrd");
    let initrd = dir.path("initrd.img");
    std::fs::write(&initrd, vec![0x5au8; 1 << 20]).unwrap();
    let cmdline = format!("{EARLY} hearth.test=early");
    let (console, _) = boot(
        &kernel,
        &cmdline,
        &["--vcpus", "2", "--initrd", initrd.to_str().unwrap()],
        "K available (",
        Duration::from_secs(180),
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
    // The initrd, page-aligned at the top of low RAM.
    assert_has(&console, "RAMDISK: [mem 0x0ff00000-0x0fffffff]");
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
fn linux_finds_the_cpus_in_the_mp_table_without_acpi() {
    require_kvm!();
    let Some(kernel) = kernel() else { return };
    let cmdline = format!("{EARLY} acpi=off");
    let (console, _) = boot(
        &kernel,
        &cmdline,
        &["--vcpus", "3"],
        "smpboot: Allowing",
        Duration::from_secs(120),
    );
    assert_has(&console, "found SMP MP-table at [mem 0x0009fc00-0x0009fc0f]");
    assert_has(&console, "MPTABLE: OEM ID: HEARTH");
    assert_has(&console, "Processor #0 (Bootup-CPU)");
    assert_has(&console, "Processor #2");
    assert_has(
        &console,
        "IOAPIC[0]: apic_id 3, version 17, address 0xfec00000, GSI 0-23",
    );
    let (console, _) = boot(
        &kernel,
        &cmdline,
        &["--vcpus", "3"],
        "hotplug CPUs",
        Duration::from_secs(60),
    );
    assert_has(&console, "smpboot: Allowing 3 CPUs, 0 hotplug CPUs");
}

#[test]
fn bzimage_is_loaded_with_its_setup_header_and_64_bit_entry() {
    let Some(kernel) = kernel() else { return };
    let bzimage = kernel.with_file_name("bzImage");
    let bytes = std::fs::read(&bzimage).unwrap();
    let mem = hearth_vmm::GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 64 << 20)]).unwrap();
    let loaded = hearth_vmm::boot::load_kernel(&mem, &bzimage).unwrap();
    let header = loaded.setup_header.expect("a bzImage has a setup header");
    // The protected-mode kernel follows the real-mode setup sectors and lands at 1 MiB;
    // the 64-bit entry point is 0x200 into it.
    assert_eq!(loaded.entry.0, 0x100200);
    assert_eq!({ header.header }, 0x5372_6448, "HdrS");
    let setup_len = (usize::from(header.setup_sects) + 1) * 512;
    let mut copy = vec![0u8; 4096];
    vm_memory::Bytes::read_slice(&mem, &mut copy, vm_memory::GuestAddress(0x100000)).unwrap();
    assert_eq!(copy, bytes[setup_len..setup_len + 4096]);
    // And the VMM runs it: on these hosts its decompressor runs emulated (minutes), so
    // only check that it does not fault straight away.
    if !common::kvm_available() {
        return;
    }
    let mut child = Command::new(common::vmm_binary())
        .args([
            "--kernel",
            bzimage.to_str().unwrap(),
            "--memory",
            "256",
            "--console",
            "off",
            "--cmdline",
            EARLY,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    assert!(still_running, "bzImage guest ended at once: {stderr}");
}

/// An initramfs (newc cpio) with /dev/console and a static `/init` that prints a marker
/// and powers the machine off.
fn initramfs(dir: &TempDir) -> PathBuf {
    let source = dir.path("init.c");
    std::fs::write(
        &source,
        r#"#include <unistd.h>
#include <sys/reboot.h>
int main(void) {
    static const char marker[] = "HEARTH-INIT-OK\n";
    write(1, marker, sizeof marker - 1);
    sync();
    reboot(RB_POWER_OFF);
    return 1;
}
"#,
    )
    .unwrap();
    let init = dir.path("init");
    let status = Command::new("cc")
        .args(["-static", "-Os", "-o"])
        .arg(&init)
        .arg(&source)
        .status()
        .unwrap();
    assert!(status.success(), "cc -static init.c");
    let mut archive = Vec::new();
    let mut add = |name: &str, mode: u32, rdev: (u32, u32), data: &[u8]| {
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            archive.len() as u32 + 1,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        archive.extend_from_slice(header.as_bytes());
        archive.extend_from_slice(name.as_bytes());
        archive.push(0);
        while archive.len() % 4 != 0 {
            archive.push(0);
        }
        archive.extend_from_slice(data);
        while archive.len() % 4 != 0 {
            archive.push(0);
        }
    };
    add("dev", 0o040755, (0, 0), &[]);
    add("dev/console", 0o020600, (5, 1), &[]);
    add("init", 0o100755, (0, 0), &std::fs::read(&init).unwrap());
    add("TRAILER!!!", 0, (0, 0), &[]);
    let path = dir.path("initramfs.cpio");
    std::fs::write(&path, archive).unwrap();
    path
}

#[test]
fn linux_boots_to_init_and_powers_off_with_hardware_virtualization() {
    require_kvm!();
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hardware = cpuinfo.contains(" vmx") || cpuinfo.contains(" svm");
    if pvm || !hardware {
        eprintln!(
            "SKIPPED: full Linux boot needs hardware virtualization (kvm_pvm loaded: {pvm}, vmx/svm flags: {hardware}); \
             here guest kernel code runs in KVM's instruction emulator (../shared/docs/kvm-on-dev-machines.md)"
        );
        return;
    }
    let Some(kernel) = kernel() else { return };
    let dir = TempDir::new("fullboot");
    let initramfs = initramfs(&dir);
    for image in [kernel.clone(), kernel.with_file_name("bzImage")] {
        let (console, _) = boot(
            &image,
            "console=ttyS0 reboot=k panic=1",
            &["--vcpus", "2", "--initrd", initramfs.to_str().unwrap()],
            "HEARTH-INIT-OK",
            Duration::from_secs(60),
        );
        assert_has(&console, "Linux version 6.1");
        // The init powers off through ACPI S5: the VMM must end with status 0.
        let output = Command::new(common::vmm_binary())
            .args([
                "--kernel",
                image.to_str().unwrap(),
                "--memory",
                "256",
                "--console",
                "off",
            ])
            .args([
                "--initrd",
                initramfs.to_str().unwrap(),
                "--cmdline",
                "console=ttyS0 panic=1",
            ])
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
