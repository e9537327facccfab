//! The EBS documentation's incremental-snapshot example, at MiB scale: 10 MiB volume, 4 MiB changed,
//! 2 MiB added; snapshots store 10 + 4 + 2 MiB, deleting the first frees exactly its 4 overwritten MiB.

mod common;

use common::*;
use hearth_snapshot::{SnapshotStore, CHUNK_BYTES};

fn run_ebs_example(use_dirty: bool) {
    assert_eq!(CHUNK_BYTES, MIB);
    let dir = TempDir::new(if use_dirty { "ebs-dirty" } else { "ebs-full" });
    let store = SnapshotStore::open_local(dir.join("store")).unwrap();
    let vol = dir.join("vol.img");
    let mut rng = Rng::new(if use_dirty { 1 } else { 2 });

    // Snapshot A: a 10 MiB volume full of random bytes.
    make_volume(&vol, 10 * MIB, &[(0, 10 * MIB)], &mut rng);
    let a = store.create(request("snap-a", &vol, 10 * MIB, None, None, 1)).unwrap();
    println!("[dirty={use_dirty}] snapshot A stored_bytes = {}", a.stored_bytes);
    assert_eq!(a.stored_bytes, 10 * MIB);
    assert_eq!(a.manifest.stored_bytes, 10 * MIB);
    assert_eq!(
        (a.chunks_read, a.chunks_reused, a.chunks_uploaded, a.chunks_zero),
        (10, 0, 10, 0)
    );

    // Snapshot B: 4 whole chunks (2..6) rewritten with new random bytes.
    write_random(&vol, 2 * MIB, 4 * MIB, &mut rng);
    let at_b = dir.join("vol-at-b.img");
    std::fs::copy(&vol, &at_b).unwrap();
    // With a dirty list the source is what the VMM would hand over: a sparse point-in-time copy that holds
    // only the dirty chunks. Everything else must come from the parent, not from this (zero) file.
    let source_b = if use_dirty {
        let sparse = dir.join("vol-b-dirty-only.img");
        make_volume(&sparse, 10 * MIB, &[], &mut rng);
        let mut buf = vec![0u8; (4 * MIB) as usize];
        use std::os::unix::fs::FileExt;
        open_rw(&vol).read_exact_at(&mut buf, 2 * MIB).unwrap();
        open_rw(&sparse).write_all_at(&buf, 2 * MIB).unwrap();
        sparse
    } else {
        vol.clone()
    };
    let dirty_b = use_dirty.then(|| vec![(2, 4)]);
    let b = store
        .create(request("snap-b", &source_b, 10 * MIB, dirty_b, Some(&a.manifest), 2))
        .unwrap();
    println!(
        "[dirty={use_dirty}] snapshot B stored_bytes = {} (chunks read {}, reused from A {})",
        b.stored_bytes, b.chunks_read, b.chunks_reused
    );
    assert_eq!(b.stored_bytes, 4 * MIB);
    assert_eq!(b.chunks_uploaded, 4);
    if use_dirty {
        assert_eq!((b.chunks_read, b.chunks_reused), (4, 6));
    } else {
        assert_eq!((b.chunks_read, b.chunks_reused), (10, 0));
    }
    assert_eq!(b.manifest.parent.as_deref(), Some("snap-a"));
    for i in 0..10 {
        let same = (2..6).all(|d| d != i);
        assert_eq!(a.manifest.chunks[i] == b.manifest.chunks[i], same, "chunk {i}");
    }

    // Snapshot C: the volume grown to 12 MiB, the 2 new MiB written.
    open_rw(&vol).set_len(12 * MIB).unwrap();
    write_random(&vol, 10 * MIB, 2 * MIB, &mut rng);
    let at_c = dir.join("vol-at-c.img");
    std::fs::copy(&vol, &at_c).unwrap();
    let dirty_c = use_dirty.then(|| vec![(10, 2)]);
    let c = store
        .create(request("snap-c", &vol, 12 * MIB, dirty_c, Some(&b.manifest), 3))
        .unwrap();
    println!(
        "[dirty={use_dirty}] snapshot C stored_bytes = {} (chunks read {}, reused from B {})",
        c.stored_bytes, c.chunks_read, c.chunks_reused
    );
    assert_eq!(c.stored_bytes, 2 * MIB);
    if use_dirty {
        assert_eq!((c.chunks_read, c.chunks_reused), (2, 10));
    }

    let total = store.stored_bytes_total().unwrap();
    println!("[dirty={use_dirty}] store total after A, B, C = {total}");
    assert_eq!(total, 16 * MIB);

    // Deleting A frees exactly the 4 chunks B overwrote; the 6 that B (and C) still use stay.
    let gc = store.delete("snap-a").unwrap();
    let total = store.stored_bytes_total().unwrap();
    println!(
        "[dirty={use_dirty}] delete A: {} chunks / {} bytes freed, store total now {total}",
        gc.chunks_deleted, gc.bytes_freed
    );
    assert_eq!((gc.chunks_deleted, gc.bytes_freed, gc.manifests), (4, 4 * MIB, 2));
    assert_eq!(total, 12 * MIB);
    let ids: Vec<String> = store.list().unwrap().into_iter().map(|m| m.snapshot_id).collect();
    assert_eq!(ids, ["snap-b", "snap-c"]);

    // B and C restore byte for byte.
    let rb = store.restore("snap-b", &dir.join("restored-b.img"), None).unwrap();
    assert_same_file(&dir.join("restored-b.img"), &at_b);
    let rc = store.restore("snap-c", &dir.join("restored-c.img"), None).unwrap();
    assert_same_file(&dir.join("restored-c.img"), &at_c);
    println!(
        "[dirty={use_dirty}] restored B ({} bytes, {:.0} MiB/s) and C ({} bytes, {:.0} MiB/s): identical",
        rb.bytes, rb.mib_per_s, rc.bytes, rc.mib_per_s
    );
    assert_eq!((rb.bytes, rc.bytes), (10 * MIB, 12 * MIB));
    assert!(store.verify("snap-b").unwrap().is_ok());
    assert!(store.verify("snap-c").unwrap().is_ok());
}

#[test]
fn ebs_example_with_dirty_lists() {
    run_ebs_example(true);
}

#[test]
fn ebs_example_without_dirty_lists_stores_the_same() {
    run_ebs_example(false);
}

/// A parent whose last chunk was short: after the volume grows, that chunk is a full chunk (old data plus
/// zeros) even though nothing wrote to it, so it must be read, not taken from the parent.
#[test]
fn growth_past_a_short_last_chunk_rereads_it() {
    let dir = TempDir::new("grow-short");
    let store = SnapshotStore::open_local(dir.join("store")).unwrap();
    let vol = dir.join("vol.img");
    let mut rng = Rng::new(3);
    let size0 = 2 * MIB + MIB / 2 + 512;
    make_volume(&vol, size0, &[(0, size0)], &mut rng);
    let p = store.create(request("snap-p", &vol, size0, None, None, 1)).unwrap();
    assert_eq!(p.manifest.chunks.len(), 3);
    assert_eq!(p.stored_bytes, size0);

    open_rw(&vol).set_len(4 * MIB).unwrap();
    write_random(&vol, 3 * MIB, MIB, &mut rng);
    let c = store
        .create(request(
            "snap-c",
            &vol,
            4 * MIB,
            Some(vec![(3, 1)]),
            Some(&p.manifest),
            2,
        ))
        .unwrap();
    println!(
        "grown snapshot: read {}, reused {}, stored {}",
        c.chunks_read, c.chunks_reused, c.stored_bytes
    );
    assert_eq!((c.chunks_read, c.chunks_reused), (2, 2));
    assert_eq!(c.stored_bytes, 2 * MIB);
    store.restore("snap-c", &dir.join("restored.img"), None).unwrap();
    assert_same_file(&dir.join("restored.img"), &vol);
}
