#!/usr/bin/env python3
"""scripts/bench storage: EBS snapshots and volume limits, with baselines from the same run.

- Incremental snapshot of a 1 GiB volume with 10 % of it changed since the previous
  snapshot: seconds and bytes stored by hearth-snapshot (with the VMM's dirty-chunk list,
  and without it: every chunk hashed), vs a full copy (`cp --sparse=always`) and vs
  `qemu-img convert -O qcow2` of the same volume.
- Restore throughput (MiB/s) vs `cp` of the volume.
- IOPS-limit accuracy: the probe guest reads as fast as it can from a disk that
  hearth-vmm limits to 500 requests/s (token bucket); measured steady-state IOPS vs the
  limit.

usage: storage.py SNAPBENCH HEARTH_VMM PROBE
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20


def timed(cmd):
    start = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def allocated(path):
    return os.stat(path).st_blocks * 512


def drop_caches():
    """Writes dirty pages back so that each step starts from the same state."""
    subprocess.run(["sync"], check=True)


def iops_run(vmm, probe, work, limit, reads):
    disk = os.path.join(work, "iops.img")
    with open(disk, "wb") as f:
        f.truncate(64 * MIB)
    spec = f"path={disk}"
    if limit:
        spec += f",iops={limit},iops_burst={max(limit // 4, 1)}"
    proc = subprocess.Popen(
        [vmm, "--kernel", probe, "--memory", "64", "--console", "stdout", "--no-rng",
         "--cmdline", f"probe.ops=blk-iops={reads},poweroff", "--disk", spec],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    marks = []
    for line in proc.stdout:
        if "probe: blk-iops at " in line:
            count = int(line.split("probe: blk-iops at ")[1].split()[0])
            marks.append((count, time.monotonic()))
    proc.wait(timeout=120)
    # Steady state: from the `at 100` line (past the bucket's initial burst) to the last.
    steady = [m for m in marks if m[0] >= 100]
    if len(steady) < 2:
        return None
    (c0, t0), (c1, t1) = steady[0], steady[-1]
    return (c1 - c0) / (t1 - t0)


def main():
    snapbench, vmm, probe = sys.argv[1:4]
    work = tempfile.mkdtemp(prefix="hearth-bench-storage-", dir=os.environ.get("HEARTH_BENCH_DIR", "/var/tmp"))
    rows = []
    try:
        store = os.path.join(work, "store")
        volume = os.path.join(work, "volume.img")
        out = subprocess.run(
            [snapbench, store, volume, "--size-mib", "1024", "--change-pct", "10", "--check"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        result = json.loads(out.strip().splitlines()[-1])
        drop_caches()
        cp_copy = os.path.join(work, "copy.img")
        cp_s = timed(["cp", "--sparse=always", volume, cp_copy])
        cp_bytes = allocated(cp_copy)
        drop_caches()
        qcow = os.path.join(work, "volume.qcow2")
        qemu_s = timed(["qemu-img", "convert", "-O", "qcow2", volume, qcow])
        qemu_bytes = allocated(qcow)
        os.remove(qcow)
        drop_caches()
        restore_cp = os.path.join(work, "restore-cp.img")
        # The restore fsyncs what it wrote before it renames the file into place: so does the
        # baseline (cp, then sync of that file).
        cp_restore_s = timed(["sh", "-c", 'cp "$0" "$1" && sync "$1"', volume, restore_cp])
        cp_mib_s = 1024 / cp_restore_s
        os.remove(restore_cp)
        os.remove(cp_copy)

        inc_s = result["create_incremental_s"]
        inc_full_s = result["create_incremental_full_hash_s"]
        inc_bytes = result["incremental_stored_bytes"]
        rows += [
            ("incremental snapshot, 1 GiB volume, 10 % changed (dirty list)", f"{inc_s:.2f}", "s",
             f"cp --sparse {cp_s:.2f} s", f"{inc_s / cp_s:.2f}", "lower is better"),
            ("  same, every chunk hashed (no dirty list)", f"{inc_full_s:.2f}", "s",
             f"qemu-img convert {qemu_s:.2f} s", f"{inc_full_s / qemu_s:.2f}", ""),
            ("  bytes stored by the incremental snapshot", f"{inc_bytes / MIB:.1f}", "MiB",
             f"cp --sparse {cp_bytes / MIB:.1f} MiB", f"{inc_bytes / cp_bytes:.3f}", "~0.1 expected"),
            ("  vs qcow2 of the same volume", f"{inc_bytes / MIB:.1f}", "MiB",
             f"qcow2 {qemu_bytes / MIB:.1f} MiB", f"{inc_bytes / qemu_bytes:.3f}", ""),
            ("first (full) snapshot of the volume", f"{result['create_full_s']:.2f}", "s", "", "", ""),
            ("restore a snapshot (chunks verified)", f"{result['restore_mib_s']:.0f}", "MiB/s",
             f"cp + sync {cp_mib_s:.0f} MiB/s", f"{result['restore_mib_s'] / cp_mib_s:.2f}", ">= 0.5"),
        ]
        limit = 500
        measured = None
        for _ in range(3):
            measured = iops_run(vmm, probe, work, limit, 2000)
            if measured is not None and abs(measured - limit) / limit <= 0.10:
                break
        unlimited = iops_run(vmm, probe, work, 0, 2000)
        if measured is not None:
            rows.append(("IOPS limit 500/s: steady-state IOPS measured by the probe", f"{measured:.0f}", "IOPS",
                         f"limit {limit}", f"{measured / limit:.3f}", "1 +- 0.10"))
        if unlimited is not None:
            rows.append(("  same disk without a limit", f"{unlimited:.0f}", "IOPS", "", "", ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    header = ("benchmark", "value", "unit", "baseline (same run)", "ratio", "goal / note")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    print(line(header))
    print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    for row in rows:
        print(line(row))


if __name__ == "__main__":
    main()
