"""Real Linux on hearth-vmm vs QEMU -M microvm, measured in the same L1 boot of the nested
lab (scripts/bench linux runs this inside it): time from VMM start to the guest's /init
marker and the VMM's resident memory with the same guest. Prints a table; asserts nothing.

argv: hearth-vmm, kernel, initramfs, runs, results file[, another hearth-vmm to compare, e.g.
a build of an earlier commit]. Every boot's result is appended to the results file as it
comes, and boots already there are not run again: when L1 hangs (docs/lab.md), a new L1
goes on where the last one stopped.
"""

import json
import os
import statistics
import subprocess
import sys
import time

VMM, KERNEL, INITRD, RUNS, RESULTS = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
OTHER = sys.argv[6] if len(sys.argv) > 6 else ""
DONE = {}
if os.path.exists(RESULTS):
    with open(RESULTS) as f:
        for line in f:
            r = json.loads(line)
            DONE[(r["label"], r["vmm"], r["run"])] = (r["seconds"], r["rss_kib"], r["guest_kib"])


def measured(label, vmm, run, cmd):
    """A boot's (seconds, RSS KiB, guest RAM KiB): from the results file, or booted now."""
    key = (label, vmm, run)
    if key not in DONE:
        DONE[key] = boot(cmd)
        with open(RESULTS, "a") as f:
            seconds, rss, guest = DONE[key]
            f.write(json.dumps({"label": label, "vmm": vmm, "run": run, "seconds": seconds, "rss_kib": rss,
                                "guest_kib": guest}) + "\n")
            f.flush()
            os.fsync(f.fileno())
    return DONE[key]
MEMORY_MIB = 256
CMDLINE = "console=ttyS0 reboot=k panic=1 lab.end=poweroff"
MARKER = b"LAB: userspace"


def hearth_cmd(cmdline, vmm=VMM):
    return [vmm, "--kernel", KERNEL, "--initrd", INITRD, "--vcpus", "1", "--memory", str(MEMORY_MIB),
            "--cmdline", cmdline]


def qemu_cmd(cmdline):
    # The same guest: kernel, initramfs, 1 vCPU, 256 MiB, a serial console and virtio-rng
    # (hearth-vmm gives every guest one). microvm's defaults: ACPI (the Debian kernel finds
    # virtio-mmio through it), a CMOS RTC, no PIT/PIC.
    return ["qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-cpu", "host", "-smp", "1",
            "-m", str(MEMORY_MIB), "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
            "-device", "virtio-rng-device", "-kernel", KERNEL, "-initrd", INITRD, "-append", cmdline]


def vmm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def guest_ram_rss_kib(pid):
    """RSS of the mapping that is exactly the guest's RAM."""
    total, current = 0, None
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
                lo, hi = parts[0].split("-")
                try:
                    current = int(hi, 16) - int(lo, 16)
                except ValueError:
                    pass
                continue
            if line.startswith("Rss:") and current == MEMORY_MIB << 20:
                total += int(parts[1])
    return total


def boot(cmd):
    """Starts `cmd`, reads its console to the marker: (seconds, VMM RSS KiB, guest RAM KiB)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    seen = b""
    elapsed = None
    while True:
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        seen += chunk
        if MARKER in seen and elapsed is None:
            elapsed = time.monotonic() - start
            rss = vmm_rss_kib(proc.pid)
            guest = guest_ram_rss_kib(proc.pid)
    proc.wait(timeout=600)
    if elapsed is None:
        sys.exit(f"{cmd[0]}: no marker; console:\n{seen.decode(errors='replace')[-3000:]}")
    return elapsed, rss, guest


rows = []


def row(name, value, unit, baseline="", ratio="", goal=""):
    rows.append((name, value, unit, baseline, ratio, goal))


def compare(label, cmdline):
    hearth, qemu, other = [], [], []
    for run in range(RUNS):  # alternated, so drift in L1 hits all alike
        hearth.append(measured(label, "hearth", run, hearth_cmd(cmdline)))
        qemu.append(measured(label, "qemu", run, qemu_cmd(cmdline)))
        if OTHER:
            other.append(measured(label, "other", run, hearth_cmd(cmdline, OTHER)))
    h = statistics.median(t for t, _, _ in hearth)
    q = statistics.median(t for t, _, _ in qemu)
    row(f"start -> /init marker{label}, median of {RUNS}", f"{h:.2f}", "s", f"QEMU microvm {q:.2f} s",
        f"{h / q:.2f}", "<= 0.5")
    if OTHER:
        o = statistics.median(t for t, _, _ in other)
        row(f"  the other hearth-vmm{label}", f"{o:.2f}", "s", f"this one {h:.2f} s", f"{o / h:.2f}",
            "HEARTH_BENCH_OTHER_VMM")
    return hearth, qemu


hearth, qemu = compare("", CMDLINE)
h_rss = statistics.median(r for _, r, _ in hearth) / 1024
q_rss = statistics.median(r for _, r, _ in qemu) / 1024
row("VMM resident memory at the marker (same guest)", f"{h_rss:.1f}", "MiB", f"QEMU microvm {q_rss:.1f} MiB",
    f"{h_rss / q_rss:.2f}", "<= 0.3")
h_own = statistics.median(r - g for _, r, g in hearth) / 1024
q_own = statistics.median(r - g for _, r, g in qemu) / 1024
row("  the VMM's own (RSS - guest RAM touched)", f"{h_own:.1f}", "MiB", f"QEMU microvm {q_own:.1f} MiB",
    f"{h_own / q_own:.2f}" if q_own > 0 else "")
# The same with the guest's CMOS RTC probe disabled for both (hearth-vmm's FADT already
# says there is none; QEMU microvm has one), to split out what the RTC costs.
compare(" (initcall_blacklist=cmos_init)", CMDLINE + " initcall_blacklist=cmos_init")

headers = ("benchmark (in the nested lab, same L1 boot)", "value", "unit", "baseline (same run)", "ratio",
           "goal / note")
widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
print(line)
print("-" * len(line))
for r in rows:
    print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
