"""hearth-vmm benchmarks: prints a table; never asserts on timings."""

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

VMM, PROBE = sys.argv[1], sys.argv[2]


def run_probe(ops, extra=(), memory=64):
    """Runs the probe to its end; returns (exit status, events by name, wall seconds)."""
    start = time.monotonic()
    proc = subprocess.run(
        [VMM, "--kernel", PROBE, "--memory", str(memory), "--console", "off", "--no-rng",
         "--cmdline", f"probe.ops={ops}", *extra],
        capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - start
    events = {}
    for line in proc.stderr.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        events[event.get("event")] = event
    return proc.returncode, events, wall


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


rows = []


def row(name, value, unit, baseline="", ratio="", goal=""):
    rows.append((name, value, unit, baseline, ratio, goal))


# 1. VMM start -> probe boot marker, 20 runs.
boot_ms = []
for _ in range(20):
    status, events, _ = run_probe("timer,poweroff")
    if status != 0 or "boot-timer" not in events:
        sys.exit(f"probe run failed: status {status}, events {events}")
    boot_ms.append(events["boot-timer"]["boot_us"] / 1000)
row("start -> boot marker, median", f"{statistics.median(boot_ms):.2f}", "ms", goal="<= 20 ms")
row("start -> boot marker, p90", f"{pct(boot_ms, 90):.2f}", "ms")

# 2. Memory overhead: RSS minus the guest RAM mapping's RSS, while the probe idles.
with tempfile.TemporaryDirectory() as tmp:
    sock = os.path.join(tmp, "vmm.sock")
    mem_mib = 128
    proc = subprocess.Popen(
        [VMM, "--kernel", PROBE, "--memory", str(mem_mib), "--console", "off",
         "--cmdline", "probe.ops=timer,wait", "--control-socket", sock],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    total_kib = guest_kib = 0
    current = None
    with open(f"/proc/{proc.pid}/smaps") as smaps:
        for line in smaps:
            header = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
            if header:
                current = int(header.group(2), 16) - int(header.group(1), 16)
                continue
            if line.startswith("Rss:"):
                kib = int(line.split()[1])
                total_kib += kib
                if current == mem_mib << 20:
                    guest_kib += kib
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(sock)
    conn.sendall(b"kill\n")
    conn.recv(4096)
    conn.close()
    proc.wait(timeout=10)
row("VMM memory overhead (RSS - guest RAM touched)", f"{(total_kib - guest_kib) / 1024:.2f}", "MiB",
    goal="<= 5 MiB")
row("  guest RAM touched by the probe", f"{guest_kib / 1024:.2f}", "MiB")

# 3. 50 probe VMs started concurrently.
count = 50
start = time.monotonic()
procs = [subprocess.Popen(
    [VMM, "--kernel", PROBE, "--memory", "32", "--console", "off", "--no-rng",
     "--cmdline", "probe.ops=timer,poweroff"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]
failed = sum(1 for p in procs if p.wait(timeout=300) != 0)
elapsed = time.monotonic() - start
row(f"{count} probe VMs started concurrently (boot + power-off)", f"{count / elapsed:.1f}", "VMs/s",
    goal=f"{failed} failed")

# 4. virtio-blk sequential write from the probe vs dd oflag=direct on the same file.
mib = 256
with tempfile.TemporaryDirectory(dir=os.path.expanduser("~")) as tmp:
    disk = os.path.join(tmp, "disk.img")
    with open(disk, "wb") as f:
        f.truncate(mib << 20)
    status, events, _ = run_probe(f"timer,blk-seqwrite={mib},poweroff", ["--disk", f"path={disk}"], memory=128)
    if status != 0:
        sys.exit(f"seqwrite probe failed: {status} {events}")
    guest_s = (events["vm-exit"]["uptime_ms"] - events["boot-timer"]["boot_us"] / 1000) / 1000
    guest_mibs = mib / guest_s
    start = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", f"of={disk}", "bs=1M", f"count={mib}", "oflag=direct",
                    "conv=fsync,notrunc"], check=True, capture_output=True)
    dd_mibs = mib / (time.monotonic() - start)
row(f"virtio-blk sequential write ({mib} MiB, 16 MiB requests, then flush)", f"{guest_mibs:.0f}", "MiB/s",
    f"dd oflag=direct {dd_mibs:.0f} MiB/s", f"{guest_mibs / dd_mibs:.2f}", ">= 0.8")

headers = ("benchmark", "value", "unit", "baseline (same run)", "ratio", "goal / note")
widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
print(line)
print("-" * len(line))
for r in rows:
    print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
