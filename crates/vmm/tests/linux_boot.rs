//! Real Linux is the judge of the boot protocol and the ACPI tables: boot the project's
//! guest kernel (scripts/build-kernel) and check what its early console says. Full boots
//! to user space (module `lab`: hearth's and Debian's kernels, SMP, power button, reboot,
//! ext4 on virtio-blk, read-only disks, DHCP and ping over virtio-net, virtio-rng) run
//! where the host has hardware virtualization, and on ours in the nested lab
//! (`scripts/lab test`).

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
    // The command line as given: with ACPI on, the devices are announced in the DSDT only.
    assert!(
        console
            .lines()
            .any(|l| l.trim_end_matches('\r').ends_with(&format!("Command line: {cmdline}"))),
        "{console}"
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
    // Without ACPI, the VMM announces the devices on the command line (here: the rng).
    assert_has(
        &console,
        &format!("Command line: {cmdline} virtio_mmio.device=4K@0xd0000000:5"),
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

/// Real Linux to user space. The guests run scripts/lab.d/guest-init from the lab's
/// initramfs, which reports `LAB: ...` lines and does what `lab.do=` asks.
mod lab {
    use super::*;
    use common::{control, lab_files, spawn_vmm, wait_for_path, NetNs, Outcome};

    /// Everything here may run emulated (the nested lab): generous, never a measurement
    /// (a boot takes 5–15 s there).
    const BOOT: Duration = Duration::from_secs(300);
    const BASE: &str = "console=ttyS0 reboot=k panic=1";

    /// hearth-vmm's arguments for `kernel` with the lab's initramfs, guest-init told to do
    /// `ops` and end with `end`; then `extra`.
    fn args(kernel: &Path, vcpus: u8, ops: &str, end: &str, extra: &[String]) -> Vec<String> {
        args_with(kernel, vcpus, &format!("lab.do={ops} lab.end={end}"), extra)
    }

    /// [`args`] with guest-init's command-line parameters given whole (`lab.do=… lab.token=…`).
    fn args_with(kernel: &Path, vcpus: u8, params: &str, extra: &[String]) -> Vec<String> {
        let files = lab_files();
        let mut args: Vec<String> = vec![
            "--kernel".into(),
            kernel.display().to_string(),
            "--initrd".into(),
            files.initramfs.display().to_string(),
            "--vcpus".into(),
            vcpus.to_string(),
            "--memory".into(),
            "256".into(),
            "--cmdline".into(),
            format!("{BASE} {params}"),
        ];
        args.extend(extra.iter().cloned());
        args
    }

    fn boot(args: &[String]) -> Outcome {
        let started = Instant::now();
        let outcome = spawn_vmm(args, None).wait(BOOT);
        eprintln!(
            "guest ran {:.1?}: {}",
            started.elapsed(),
            lab_lines(&outcome.console).join(" | ")
        );
        outcome
    }

    fn lab_lines(console: &str) -> Vec<String> {
        console
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').strip_prefix("LAB: "))
            .map(str::to_string)
            .collect()
    }

    /// The `LAB: ` line starting with `prefix`.
    fn line(outcome: &Outcome, prefix: &str) -> String {
        lab_lines(&outcome.console)
            .into_iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| {
                panic!(
                    "no 'LAB: {prefix}' line; console:\n{}\nstderr:\n{}",
                    outcome.console, outcome.stderr
                )
            })
    }

    fn assert_exit(outcome: &Outcome, status: i32, reason: &str) {
        assert_eq!(
            (outcome.status, outcome.exit_event()["reason"].as_str()),
            (status, Some(reason)),
            "console:\n{}\nstderr:\n{}",
            outcome.console,
            outcome.stderr
        );
    }

    /// What every Linux boot must show: user space with the CPUs configured, no SVM/VMX
    /// leaking into the guest, a power button the ACPI drivers accept, virtio-rng.
    fn assert_sane_guest(outcome: &Outcome, vcpus: u8) {
        assert!(
            line(outcome, "userspace").contains(&format!("cpus={vcpus}")),
            "{}",
            outcome.console
        );
        let online = if vcpus == 1 {
            "0".to_string()
        } else {
            format!("0-{}", vcpus - 1)
        };
        assert_eq!(line(outcome, "cpus"), format!("cpus online={online}"));
        assert!(
            line(outcome, "cpuid").starts_with("cpuid svm=0 vmx=0 hypervisor="),
            "{}",
            outcome.console
        );
        let rng = line(outcome, "rng");
        assert!(rng.starts_with("rng current=virtio_rng"), "{rng}");
        let bytes = rng.rsplit("bytes=").next().unwrap();
        assert!(bytes.len() == 32 && bytes != "0".repeat(32), "{rng}");
        assert!(
            !outcome.console.contains("unable to parse IRQ resource"),
            "{}",
            outcome.console
        );
    }

    #[test]
    fn hearth_kernel_boots_to_init_as_vmlinux_and_bzimage_with_two_cpus() {
        require_linux_guests!();
        let vmlinux = lab_files().hearth_vmlinux;
        for image in [vmlinux.clone(), vmlinux.with_file_name("bzImage")] {
            let outcome = boot(&args(&image, 2, "cpus,cpuid,rng,dmesg", "poweroff", &[]));
            assert!(
                line(&outcome, "userspace").contains("kernel=6.1"),
                "{}",
                outcome.console
            );
            assert_sane_guest(&outcome, 2);
            assert_exit(&outcome, 0, "guest-poweroff");
        }
    }

    #[test]
    fn debian_cloud_kernel_boots_with_two_cpus_and_reboots() {
        require_linux_guests!();
        let files = lab_files();
        let outcome = boot(&args(&files.debian_kernel, 2, "cpus,cpuid,rng,dmesg", "reboot", &[]));
        assert!(
            line(&outcome, "userspace").contains("-cloud-amd64"),
            "{}",
            outcome.console
        );
        assert_sane_guest(&outcome, 2);
        assert_exit(&outcome, 3, "guest-reboot");
    }

    /// `hearth-vmm ctl SOCKET shutdown` presses the ACPI power button; Linux's acpi-ged and
    /// button drivers turn it into KEY_POWER, and the guest powers itself off: exit 0,
    /// never the forced kill.
    #[test]
    fn power_button_makes_linux_power_off() {
        require_linux_guests!();
        let files = lab_files();
        for kernel in [files.debian_kernel.clone(), files.hearth_vmlinux.clone()] {
            let dir = TempDir::new("button");
            let console = dir.path("console.log");
            let socket = dir.path("vm.sock");
            let extra = [
                "--console".to_string(),
                console.display().to_string(),
                "--control-socket".to_string(),
                socket.display().to_string(),
            ];
            let vmm = spawn_vmm(&args(&kernel, 1, "button", "poweroff", &extra), None);
            wait_for_path(&socket, Duration::from_secs(30));
            let deadline = Instant::now() + BOOT;
            loop {
                let text = std::fs::read_to_string(&console).unwrap_or_default();
                if text.contains("LAB: button waiting") {
                    break;
                }
                assert!(
                    !text.contains("LAB: button absent"),
                    "no power button input device:\n{text}"
                );
                assert!(
                    Instant::now() < deadline,
                    "the guest never waited for the button:\n{text}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            let pressed = Instant::now();
            let answer = control(&socket, r#"{"cmd":"shutdown","timeout_ms":120000}"#);
            let mut outcome = vmm.wait(BOOT);
            outcome.console = std::fs::read_to_string(&console).unwrap();
            eprintln!(
                "{}: power button → exit in {:.1?} (answer {answer})",
                kernel.display(),
                pressed.elapsed()
            );
            assert!(line(&outcome, "button pressed").starts_with("button pressed"));
            assert_exit(&outcome, 0, "guest-poweroff");
        }
    }

    #[test]
    fn ext4_on_virtio_blk_survives_a_second_boot_and_read_only_disks_refuse_writes() {
        require_linux_guests!();
        let files = lab_files();
        let dir = TempDir::new("ext4");
        let disk = dir.path("vol.img");
        std::fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
        let spec = |ro: bool| {
            vec![
                "--disk".to_string(),
                format!("path={},id=vol-lab{}", disk.display(), if ro { ",ro" } else { "" }),
            ]
        };
        let kernel = &files.debian_kernel;
        let token = format!("t{}", std::process::id());
        let first = args_with(
            kernel,
            1,
            &format!("lab.do=mkfs lab.end=poweroff lab.token={token}"),
            &spec(false),
        );
        let outcome = boot(&first);
        assert_eq!(line(&outcome, "mkfs"), format!("mkfs written token={token}"));
        assert_exit(&outcome, 0, "guest-poweroff");

        let outcome = boot(&args(kernel, 1, "read", "poweroff", &spec(false)));
        assert_eq!(line(&outcome, "read"), format!("read token={token} data=intact"));
        assert_exit(&outcome, 0, "guest-poweroff");

        let before = std::fs::read(&disk).unwrap();
        let outcome = boot(&args(kernel, 1, "ro,read", "poweroff", &spec(true)));
        assert_eq!(line(&outcome, "ro flag"), "ro flag=1");
        assert_eq!(line(&outcome, "ro write"), "ro write refused");
        assert_eq!(line(&outcome, "read"), format!("read token={token} data=intact"));
        assert_exit(&outcome, 0, "guest-poweroff");
        assert!(std::fs::read(&disk).unwrap() == before, "the read-only disk changed");
    }

    /// A tap in a namespace of the test's own, busybox udhcpd on it with a static lease:
    /// the guest's DHCP client gets that address and pings the namespace's side.
    #[test]
    fn virtio_net_gets_a_dhcp_lease_and_pings_through_a_tap() {
        require_linux_guests!();
        let files = lab_files();
        let ns = NetNs::with_tap("10.213.0.1/24");
        let dir = TempDir::new("dhcp");
        let mac = "06:00:0a:d5:00:32";
        let conf = dir.path("udhcpd.conf");
        std::fs::write(
            &conf,
            format!(
                "start 10.213.0.100\nend 10.213.0.150\ninterface {}\nlease_file {}\n\
                 option subnet 255.255.255.0\noption router 10.213.0.1\nstatic_lease {mac} 10.213.0.50\n",
                ns.tap,
                dir.path("leases").display()
            ),
        )
        .unwrap();
        std::fs::write(dir.path("leases"), b"").unwrap();
        let mut udhcpd = Command::new("ip")
            .args(["netns", "exec", &ns.name, "busybox", "udhcpd", "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("busybox udhcpd");
        let extra = ["--net".to_string(), format!("tap={},mac={mac}", ns.tap)];
        let started = Instant::now();
        let outcome = spawn_vmm(
            &args(&files.debian_kernel, 1, "net", "poweroff", &extra),
            Some(&ns.name),
        )
        .wait(BOOT);
        let _ = udhcpd.kill();
        let _ = udhcpd.wait();
        eprintln!(
            "guest ran {:.1?}: {}",
            started.elapsed(),
            lab_lines(&outcome.console).join(" | ")
        );
        assert_eq!(
            line(&outcome, "net lease"),
            format!("net lease ip=10.213.0.50 router=10.213.0.1 mac={mac}")
        );
        assert_eq!(line(&outcome, "net ping"), "net ping ok");
        assert_exit(&outcome, 0, "guest-poweroff");
    }
}
