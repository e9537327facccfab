//! Copy, delete, get and list; restore sizes; argument errors; use from inside a tokio runtime.

mod common;

use common::*;
use hearth_snapshot::{Error, SnapshotStore};

#[test]
fn copy_survives_deleting_the_original() {
    let dir = TempDir::new("copy");
    let store = SnapshotStore::open_local(dir.join("store")).unwrap();
    let vol = dir.join("vol.img");
    let size = 5 * MIB + 3 * 512; // the last chunk is short
    make_volume(&vol, size, &[(0, size)], &mut Rng::new(11));
    let orig = store.create(request("snap-orig", &vol, size, None, None, 1)).unwrap();
    assert_eq!(orig.stored_bytes, size);

    let copy = store.copy("snap-orig", "snap-copy", "a copy").unwrap();
    assert_eq!(
        (copy.stored_bytes, copy.parent.as_deref(), copy.description.as_str()),
        (0, None, "a copy")
    );
    assert_eq!(copy.chunks, orig.manifest.chunks);
    assert_eq!(store.get("snap-copy").unwrap(), copy);
    assert_eq!(store.stored_bytes_total().unwrap(), size, "a copy stores no data");
    assert!(matches!(store.copy("snap-orig", "snap-copy", ""), Err(Error::AlreadyExists(id)) if id == "snap-copy"));

    let gc = store.delete("snap-orig").unwrap();
    println!("delete of the copied original: {} chunks freed", gc.chunks_deleted);
    assert_eq!(gc.chunks_deleted, 0);
    assert_eq!(store.stored_bytes_total().unwrap(), size);
    store.restore("snap-copy", &dir.join("restored.img"), None).unwrap();
    assert_same_file(&dir.join("restored.img"), &vol);

    // Deleting the last reference frees everything.
    let gc = store.delete("snap-copy").unwrap();
    assert_eq!((gc.chunks_deleted, gc.bytes_freed), (6, size));
    assert_eq!(store.stored_bytes_total().unwrap(), 0);
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn unknown_ids_and_duplicate_ids() {
    let dir = TempDir::new("ids");
    let store = SnapshotStore::open_local(dir.join("store")).unwrap();
    assert!(matches!(store.delete("snap-nope"), Err(Error::NotFound(id)) if id == "snap-nope"));
    assert!(matches!(store.get("snap-nope"), Err(Error::NotFound(_))));
    assert!(matches!(
        store.copy("snap-nope", "snap-new", ""),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(store.verify("snap-nope"), Err(Error::NotFound(_))));
    assert!(matches!(
        store.restore("snap-nope", &dir.join("x.img"), None),
        Err(Error::NotFound(_))
    ));
    assert!(!dir.join("x.img").exists());
    assert!(matches!(store.get("../etc/passwd"), Err(Error::InvalidArgument(_))));

    let vol = dir.join("vol.img");
    make_volume(&vol, MIB, &[(0, MIB)], &mut Rng::new(12));
    store.create(request("snap-1", &vol, MIB, None, None, 1)).unwrap();
    assert!(matches!(store.create(request("snap-1", &vol, MIB, None, None, 2)),
        Err(Error::AlreadyExists(id)) if id == "snap-1"));
    store.delete("snap-1").unwrap();
    assert!(matches!(store.delete("snap-1"), Err(Error::NotFound(_))));
}

#[test]
fn restore_sizes() {
    let dir = TempDir::new("sizes");
    let store = SnapshotStore::open_local(dir.join("store")).unwrap();
    let vol = dir.join("vol.img");
    make_volume(&vol, 3 * MIB, &[(0, 3 * MIB)], &mut Rng::new(13));
    store.create(request("snap-s", &vol, 3 * MIB, None, None, 1)).unwrap();

    // Bigger: the snapshot's bytes, then zeros.
    let big = dir.join("big.img");
    let r = store.restore("snap-s", &big, Some(8 * MIB)).unwrap();
    assert_eq!((r.bytes, std::fs::metadata(&big).unwrap().len()), (8 * MIB, 8 * MIB));
    let expected = dir.join("expected.img");
    std::fs::copy(&vol, &expected).unwrap();
    open_rw(&expected).set_len(8 * MIB).unwrap();
    assert_same_file(&big, &expected);

    // Smaller: refused, nothing created.
    let small = dir.join("small.img");
    let err = store.restore("snap-s", &small, Some(2 * MIB)).unwrap_err();
    println!("restore smaller: {err}");
    assert!(matches!(err, Error::SizeMismatch { expected, actual, .. } if expected == 3 * MIB && actual == 2 * MIB));
    assert!(!small.exists());
    assert_eq!(file_names(dir.path()), ["big.img", "expected.img", "store", "vol.img"]);
}

#[test]
fn bad_create_arguments() {
    let dir = TempDir::new("badargs");
    let store = SnapshotStore::open_local(dir.join("store")).unwrap();
    let vol = dir.join("vol.img");
    make_volume(&vol, 2 * MIB, &[(0, 2 * MIB)], &mut Rng::new(14));
    // The source is shorter than the volume.
    assert!(matches!(
        store.create(request("snap-a", &vol, 4 * MIB, None, None, 1)),
        Err(Error::SizeMismatch { .. })
    ));
    // Not a multiple of 512.
    assert!(matches!(
        store.create(request("snap-a", &vol, MIB + 1, None, None, 1)),
        Err(Error::InvalidArgument(_))
    ));
    // A parent that no longer exists cannot lend its chunks.
    let p = store
        .create(request("snap-p", &vol, 2 * MIB, None, None, 1))
        .unwrap()
        .manifest;
    store.delete("snap-p").unwrap();
    let r = store.create(request("snap-c", &vol, 2 * MIB, Some(vec![(0, 1)]), Some(&p), 2));
    assert!(matches!(r, Err(Error::NotFound(id)) if id == "snap-p"));
    // Failed creates leave nothing behind.
    assert!(store.list().unwrap().is_empty());
    assert_eq!(store.stored_bytes_total().unwrap(), 0);
}

#[test]
fn usable_from_spawn_blocking_and_droppable_in_async_code() {
    let dir = TempDir::new("tokio");
    let vol = dir.join("vol.img");
    make_volume(&vol, 4 * MIB, &[(0, 4 * MIB)], &mut Rng::new(15));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store_dir = dir.join("store");
    let (v, restored) = (vol.clone(), dir.join("restored.img"));
    rt.block_on(async move {
        let store = std::sync::Arc::new(SnapshotStore::open_local(&store_dir).unwrap());
        let s = std::sync::Arc::clone(&store);
        let r = tokio::task::spawn_blocking(move || {
            let c = s.create(request("snap-t", &v, 4 * MIB, None, None, 1)).unwrap();
            s.restore("snap-t", &restored, None).unwrap();
            c
        })
        .await
        .unwrap();
        assert_eq!(r.stored_bytes, 4 * MIB);
        // The last reference goes away on a runtime worker thread.
        drop(store);
    });
    assert_same_file(&dir.join("restored.img"), &vol);
}

#[test]
fn open_accepts_paths_and_file_urls() {
    let dir = TempDir::new("open");
    let a = SnapshotStore::open(dir.join("a").to_str().unwrap()).unwrap();
    let b = SnapshotStore::open(&format!("file://{}", dir.join("b").display())).unwrap();
    assert!(dir.join("a").is_dir() && dir.join("b").is_dir());
    assert_eq!(a.stored_bytes_total().unwrap(), 0);
    assert!(b.list().unwrap().is_empty());
    let err = SnapshotStore::open("s3://bucket/p?endpoint=https://s3.example.com&access_key_id=a&secret_access_key=b")
        .unwrap_err();
    assert!(err.to_string().contains("without TLS"), "{err}");
}
