"""Image benchmarks: sizes of the built images, and `hearth-image import` into a fresh local
store against `cp` of the same files in the same run. Prints a table; never asserts on timings."""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HEARTH_IMAGE, REPO = sys.argv[1], sys.argv[2]
RUNS = 3
MIB = 1 << 20


def build_image(name, if_cached=False):
    """Path of the image's manifest (built if needed), or None when only cached ones count."""
    args = [os.path.join(REPO, "scripts/build-image")] + (["--if-cached"] if if_cached else []) + [name]
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=None if not if_cached else subprocess.DEVNULL,
                          text=True)
    if proc.returncode != 0:
        if if_cached:
            return None
        sys.exit(f"scripts/build-image {name} failed")
    return proc.stdout.strip().splitlines()[-1]


def image_files(manifest_path):
    with open(manifest_path) as f:
        manifest = json.load(f)
    directory = os.path.dirname(manifest_path)
    files = []
    for key in ("kernel", "initrd", "root"):
        if manifest.get(key):
            files.append((key, os.path.join(directory, manifest[key]["path"])))
    return files


def timed(args):
    start = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed: {proc.stderr}")
    return elapsed, proc.stdout


rows = []


def row(name, value, unit, baseline="", ratio="", note=""):
    rows.append((name, value, unit, baseline, ratio, note))


images = [("probe", build_image("probe")), ("minimal", build_image("minimal"))]
if os.environ.get("HEARTH_SLOW") == "1":
    images.append(("debian-12", build_image("debian-12")))
else:
    cached = build_image("debian-12", if_cached=True)
    if cached:
        images.append(("debian-12", cached))
    else:
        print("(debian-12 is not built: HEARTH_SLOW=1 scripts/bench images builds it)", file=sys.stderr)

# 1. Sizes: apparent (what the manifest counts, what an import stores) and allocated on disk.
for name, manifest in images:
    total_apparent = total_allocated = 0
    for key, path in image_files(manifest):
        st = os.stat(path)
        allocated = st.st_blocks * 512
        total_apparent += st.st_size
        total_allocated += allocated
        row(f"{name}: {key} ({os.path.basename(path)})", f"{st.st_size / MIB:.2f}", "MiB",
            note=f"{allocated / MIB:.2f} MiB allocated" + (" (sparse)" if allocated < st.st_size else ""))
    row(f"{name}: total", f"{total_apparent / MIB:.2f}", "MiB", note=f"{total_allocated / MIB:.2f} MiB allocated")

# 2. Import into a fresh local store vs cp of the same files (median of RUNS, page cache warm).
with tempfile.TemporaryDirectory(dir=os.path.expanduser("~")) as tmp:
    for name, manifest in images:
        files = image_files(manifest)
        total = sum(os.stat(p).st_size for _, p in files)
        import_s, cp_s, dense_s, hashed_s = [], [], [], []
        for run in range(RUNS):
            store = os.path.join(tmp, f"store-{name}-{run}")
            elapsed, out = timed([HEARTH_IMAGE, "import", "--store", store, "--cache",
                                  os.path.join(tmp, "cache"), "--json", manifest])
            answer = json.loads(out.strip().splitlines()[-1])
            if answer["stored_bytes"] != total:
                sys.exit(f"import of {name} stored {answer['stored_bytes']} of {total} bytes")
            import_s.append(elapsed)
            shutil.rmtree(store)
            for sparse, times in (("auto", cp_s), ("never", dense_s)):
                target = os.path.join(tmp, f"cp-{name}-{run}")
                os.mkdir(target)
                elapsed, _ = timed(["cp", f"--sparse={sparse}"] + [p for _, p in files] + [target])
                times.append(elapsed)
                shutil.rmtree(target)
            # The least an import must do: read and hash every byte, write every byte.
            target = os.path.join(tmp, f"hash-{name}-{run}")
            os.mkdir(target)
            start = time.monotonic()
            timed(["sha256sum"] + [p for _, p in files])
            timed(["cp", "--sparse=never"] + [p for _, p in files] + [target])
            hashed_s.append(time.monotonic() - start)
            shutil.rmtree(target)
        imp = total / MIB / statistics.median(import_s)
        cp = total / MIB / statistics.median(cp_s)
        dense = total / MIB / statistics.median(dense_s)
        row(f"{name}: hearth-image import, fresh local store ({total / MIB:.1f} MiB)", f"{imp:.0f}", "MiB/s",
            f"cp {cp:.0f} MiB/s", f"{imp / cp:.2f}", "hashes every byte, writes dense blobs")
        hashed = total / MIB / statistics.median(hashed_s)
        row(f"{name}: the same vs cp --sparse=never", f"{imp:.0f}", "MiB/s",
            f"cp --sparse=never {dense:.0f} MiB/s", f"{imp / dense:.2f}", "")
        row(f"{name}: the same vs sha256sum + cp --sparse=never", f"{imp:.0f}", "MiB/s",
            f"sha256sum + cp {hashed:.0f} MiB/s", f"{imp / hashed:.2f}", "the work an import cannot skip")

headers = ("benchmark", "value", "unit", "baseline (same run)", "ratio", "note")
widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
print(line)
print("-" * len(line))
for r in rows:
    print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
