//! Times snapshots of a volume file for `scripts/bench storage`, printing one JSON object on stdout.
//!
//! ```text
//! snapbench <store-dir> <volume-path> [--size-mib N] [--change-pct P] [--check]
//! ```
//!
//! `<store-dir>` must be empty or absent (it becomes a local snapshot store and is left in place);
//! `<volume-path>` is overwritten with an N MiB (default 1024) volume of pseudo-random bytes. Then:
//! 1. `create_full_s`: a first, full snapshot (read, hash and upload everything);
//! 2. P % (default 10) of the chunks are rewritten;
//! 3. `create_incremental_full_hash_s`: an incremental snapshot without a dirty list (every chunk read and
//!    hashed, only the changed ones uploaded); it is deleted again (`delete_gc_s`), which frees its chunks;
//! 4. `create_incremental_s`: the same incremental snapshot with the dirty list (only changed chunks read);
//! 5. `restore_s` / `restore_mib_s`: a restore of that snapshot next to the volume (removed afterwards;
//!    `--check` compares it with the volume first).
//!
//! The volume file is in the page cache when it is read (it was just written).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use hearth_snapshot::{CreateRequest, Manifest, SnapshotStore, CHUNK_BYTES};

/// xorshift64*: fast non-cryptographic filler bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for piece in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            piece.copy_from_slice(&v[..piece.len()]);
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: snapbench <store-dir> <volume-path> [--size-mib N] [--change-pct P] [--check]");
    std::process::exit(2)
}

fn request<'a>(
    id: &str,
    source: &'a Path,
    size: u64,
    dirty: Option<Vec<(u64, u64)>>,
    parent: Option<&'a Manifest>,
) -> CreateRequest<'a> {
    CreateRequest {
        snapshot_id: id.to_string(),
        volume_id: "vol-bench".to_string(),
        source,
        volume_size: size,
        dirty,
        parent,
        encrypted: false,
        key_id: None,
        description: "snapbench".to_string(),
        start_time_ms: 0,
    }
}

fn same_content(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut positional, mut size_mib, mut change_pct, mut check) = (Vec::new(), 1024u64, 10u64, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size-mib" => size_mib = args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage()),
            "--change-pct" => change_pct = args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage()),
            "--check" => check = true,
            s if s.starts_with('-') => usage(),
            _ => positional.push(PathBuf::from(a)),
        }
    }
    let [store_dir, volume] = positional.as_slice() else {
        usage()
    };
    if size_mib == 0 || change_pct > 100 {
        usage();
    }
    if std::fs::read_dir(store_dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
    {
        return Err(format!("{} is not empty", store_dir.display()).into());
    }
    let size = size_mib * CHUNK_BYTES;
    let chunks = size / CHUNK_BYTES;

    // The volume: pseudo-random bytes throughout.
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(volume)?;
    let mut buf = vec![0u8; CHUNK_BYTES as usize];
    for i in 0..chunks {
        rng.fill(&mut buf);
        f.write_all_at(&buf, i * CHUNK_BYTES)?;
    }
    f.sync_all()?;

    let store = SnapshotStore::open_local(store_dir)?;
    let t = Instant::now();
    let full = store.create(request("snap-full", volume, size, None, None))?;
    let create_full_s = t.elapsed().as_secs_f64();

    // Rewrite change_pct % of the chunks, picked at random.
    let mut order: Vec<u64> = (0..chunks).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let mut changed: Vec<u64> = order[..(chunks * change_pct / 100) as usize].to_vec();
    changed.sort_unstable();
    for &i in &changed {
        rng.fill(&mut buf);
        f.write_all_at(&buf, i * CHUNK_BYTES)?;
    }
    f.sync_all()?;
    let mut dirty: Vec<(u64, u64)> = Vec::new();
    for &i in &changed {
        match dirty.last_mut() {
            Some((start, count)) if *start + *count == i => *count += 1,
            _ => dirty.push((i, 1)),
        }
    }

    let t = Instant::now();
    let hashed = store.create(request("snap-inc-hash", volume, size, None, Some(&full.manifest)))?;
    let create_incremental_full_hash_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let freed = store.delete("snap-inc-hash")?;
    let delete_gc_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let inc = store.create(request("snap-inc", volume, size, Some(dirty), Some(&full.manifest)))?;
    let create_incremental_s = t.elapsed().as_secs_f64();

    let restored = PathBuf::from(format!("{}.restored", volume.display()));
    let r = store.restore("snap-inc", &restored, None)?;
    let identical = if check {
        Some(same_content(&restored, volume)?)
    } else {
        None
    };
    std::fs::remove_file(&restored)?;
    if identical == Some(false) {
        return Err("the restored volume differs from the volume".into());
    }

    let out = serde_json::json!({
        "volume_bytes": size,
        "changed_chunks": changed.len(),
        "create_full_s": create_full_s,
        "full_stored_bytes": full.stored_bytes,
        "create_incremental_s": create_incremental_s,
        "incremental_stored_bytes": inc.stored_bytes,
        "incremental_chunks_read": inc.chunks_read,
        "create_incremental_full_hash_s": create_incremental_full_hash_s,
        "incremental_full_hash_stored_bytes": hashed.stored_bytes,
        "delete_gc_s": delete_gc_s,
        "delete_freed_bytes": freed.bytes_freed,
        "restore_s": r.elapsed.as_secs_f64(),
        "restore_mib_s": r.mib_per_s,
        "restore_checked": identical,
        "store_bytes_total": store.stored_bytes_total()?,
    });
    println!("{out}");
    Ok(())
}
