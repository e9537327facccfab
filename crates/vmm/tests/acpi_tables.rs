//! The ACPI tables the VMM writes, judged by Debian's `iasl -d` (acpica-tools).

mod common;

use std::process::Command;

use common::{run_probe, TempDir};

fn iasl_available() -> bool {
    match Command::new("iasl").arg("-v").output() {
        Ok(_) => true,
        Err(e) => {
            assert!(
                !common::in_ci(),
                "iasl missing under CI (scripts/test installs acpica-tools): {e}"
            );
            eprintln!("SKIPPED: iasl not installed ({e}); scripts/test installs acpica-tools");
            false
        }
    }
}

#[test]
fn iasl_disassembles_every_table_without_errors() {
    require_kvm!();
    if !iasl_available() {
        return;
    }
    let dir = TempDir::new("acpi");
    let dump = dir.path("tables");
    let outcome = run_probe(
        "probe.ops=poweroff",
        &[
            "--vcpus",
            "2",
            "--disk",
            "path=/dev/null,ro",
            "--dump-acpi",
            dump.to_str().unwrap(),
        ],
    );
    // /dev/null is not a regular file: the config is refused, so use a real disk instead.
    assert_eq!(outcome.status, 1, "{outcome:?}");

    let disk = dir.path("d.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let spec = format!("path={}", disk.display());
    let outcome = run_probe(
        "probe.ops=poweroff",
        &["--vcpus", "2", "--disk", &spec, "--dump-acpi", dump.to_str().unwrap()],
    );
    assert_eq!(outcome.status, 0, "{outcome:?}");

    for table in ["DSDT", "FACP", "APIC", "XSDT"] {
        let output = Command::new("iasl")
            .current_dir(&dump)
            .args(["-d", &format!("{table}.dat")])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "iasl -d {table}.dat failed:\n{text}");
        assert!(!text.contains("Error"), "iasl reported errors for {table}:\n{text}");
    }
    let dsdt = std::fs::read_to_string(dump.join("DSDT.dsl")).unwrap();
    for needle in [
        "LNRO0005",
        "ACPI0013",
        "PNP0C0C",
        "PNP0501",
        "_S5_",
        "Notify (\\_SB.PWRB, 0x80)",
    ] {
        assert!(dsdt.contains(needle), "DSDT lacks {needle}:\n{dsdt}");
    }
    // Linux's acpi-ged accepts only interrupt resources in the GED's _CRS (any other
    // resource fails its probe, and the power button never reaches the guest).
    let ged = &dsdt[dsdt.find("Device (GED0)").expect("GED0 in the DSDT")..];
    let ged_crs = &ged[ged.find("Name (_CRS").expect("GED0 _CRS")..];
    let ged_crs = &ged_crs[..ged_crs.find("})").expect("end of GED0 _CRS")];
    assert!(ged_crs.contains("Interrupt ("), "{ged_crs}");
    for other in ["Memory32", "IO (", "Memory24", "QWordMemory", "DWordMemory"] {
        assert!(!ged_crs.contains(other), "GED0 _CRS holds {other}:\n{ged_crs}");
    }
    let facp = std::fs::read_to_string(dump.join("FACP.dsl")).unwrap();
    assert!(facp.contains("Hardware Reduced (V5) : 1"), "{facp}");
    // Nothing for the guest to probe ports for: no 8042, no VGA, no CMOS RTC.
    for line in [
        "8042 Present on ports 60/64 (V2) : 0",
        "VGA Not Present (V4) : 1",
        "CMOS RTC Not Present (V5) : 1",
    ] {
        assert!(facp.contains(line), "FACP lacks {line:?}:\n{facp}");
    }
    let apic = std::fs::read_to_string(dump.join("APIC.dsl")).unwrap();
    assert_eq!(
        apic.matches("Subtable Type : 00 [Processor Local APIC]").count(),
        2,
        "{apic}"
    );
}
