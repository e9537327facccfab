//! Zero chunks are stored nowhere, and restore leaves them as holes.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};

use common::*;
use hearth_snapshot::SnapshotStore;

#[test]
fn sparse_volume_stores_only_its_data_and_restores_sparse() {
    let dir = TempDir::new("sparse");
    let store = SnapshotStore::open_local(dir.join("store")).unwrap();
    let vol = dir.join("vol.img");
    let mut rng = Rng::new(4);
    // 64 MiB, 1 MiB of data at 37 MiB, the rest a hole.
    make_volume(&vol, 64 * MIB, &[(37 * MIB, MIB)], &mut rng);
    let r = store
        .create(request("snap-sparse", &vol, 64 * MIB, None, None, 1))
        .unwrap();
    println!(
        "64 MiB sparse volume: stored_bytes = {}, zero chunks {}, uploaded {}",
        r.stored_bytes, r.chunks_zero, r.chunks_uploaded
    );
    assert_eq!(r.stored_bytes, MIB);
    assert_eq!((r.chunks_zero, r.chunks_uploaded, r.chunks_read), (63, 1, 64));
    assert_eq!(r.manifest.chunks.iter().filter(|c| c.is_some()).count(), 1);
    assert!(r.manifest.chunks[37].is_some());
    assert_eq!(store.stored_bytes_total().unwrap(), MIB);

    let dest = dir.join("restored.img");
    let rr = store.restore("snap-sparse", &dest, None).unwrap();
    let meta = std::fs::metadata(&dest).unwrap();
    println!(
        "restored: len {}, allocated {} bytes (st_blocks {}), data written {}",
        meta.len(),
        meta.blocks() * 512,
        meta.blocks(),
        rr.data_bytes
    );
    assert_eq!(meta.len(), 64 * MIB);
    assert_eq!(rr.data_bytes, MIB);
    // 1 MiB of data plus at most a little filesystem slack: not 64 MiB.
    assert!(
        meta.blocks() * 512 <= 2 * MIB,
        "restore is not sparse: {} blocks",
        meta.blocks()
    );
    assert_same_file(&dest, &vol);
}

#[test]
fn written_zeros_are_detected_too() {
    // Zeros that are allocated (written explicitly, not a hole) must be found by reading.
    let dir = TempDir::new("zeros");
    let store = SnapshotStore::open_local(dir.join("store")).unwrap();
    let vol = dir.join("vol.img");
    let mut rng = Rng::new(5);
    make_volume(&vol, 6 * MIB, &[(MIB, MIB)], &mut rng);
    open_rw(&vol)
        .write_all_at(&vec![0u8; (4 * MIB) as usize], 2 * MIB)
        .unwrap();
    assert!(
        std::fs::metadata(&vol).unwrap().blocks() * 512 >= 5 * MIB,
        "zeros were not allocated"
    );
    let r = store
        .create(request("snap-zeros", &vol, 6 * MIB, None, None, 1))
        .unwrap();
    println!(
        "6 MiB volume with 4 MiB of written zeros: stored_bytes = {}",
        r.stored_bytes
    );
    assert_eq!(r.stored_bytes, MIB);
    assert_eq!(r.chunks_zero, 5);
    store.restore("snap-zeros", &dir.join("restored.img"), None).unwrap();
    assert_same_file(&dir.join("restored.img"), &vol);
}

#[test]
fn repeated_content_is_stored_once() {
    // Content addressing: 8 chunks with the same bytes store one chunk.
    let dir = TempDir::new("dedupe");
    let store = SnapshotStore::open_local(dir.join("store")).unwrap();
    let vol = dir.join("vol.img");
    let mut chunk = vec![0u8; MIB as usize];
    Rng::new(6).fill(&mut chunk);
    let f = open_rw(&vol);
    for i in 0..8 {
        f.write_all_at(&chunk, i * MIB).unwrap();
    }
    let r = store.create(request("snap-dup", &vol, 8 * MIB, None, None, 1)).unwrap();
    println!("8 identical chunks: stored_bytes = {}", r.stored_bytes);
    assert_eq!(r.stored_bytes, MIB);
    assert_eq!(store.stored_bytes_total().unwrap(), MIB);
    store.restore("snap-dup", &dir.join("restored.img"), None).unwrap();
    assert_same_file(&dir.join("restored.img"), &vol);
}
