//! A damaged store is detected: restore fails without touching its destination, verify names the chunks.

mod common;

use common::*;
use hearth_snapshot::{ChunkProblem, ChunkProblemKind, Error, SnapshotStore};

#[test]
fn corrupt_and_missing_chunks_fail_restore_and_show_in_verify() {
    let dir = TempDir::new("corrupt");
    let store_dir = dir.join("store");
    let store = SnapshotStore::open_local(&store_dir).unwrap();
    let vol = dir.join("vol.img");
    make_volume(&vol, 8 * MIB, &[(0, 8 * MIB)], &mut Rng::new(7));
    let m = store
        .create(request("snap-x", &vol, 8 * MIB, None, None, 1))
        .unwrap()
        .manifest;
    let chunk_file = |i: usize| store_dir.join("chunks/sha256").join(m.chunks[i].unwrap().to_hex());

    // Flip one byte in the middle of chunk 5's object.
    let d5 = m.chunks[5].unwrap();
    let mut bytes = std::fs::read(chunk_file(5)).unwrap();
    bytes[123_456] ^= 0x01;
    std::fs::write(chunk_file(5), &bytes).unwrap();

    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    let dest = out.join("restored.img");
    let err = store.restore("snap-x", &dest, None).unwrap_err();
    println!("restore with a flipped byte: {err}");
    match &err {
        Error::ChunkCorrupt {
            snapshot_id,
            index,
            digest,
        } => {
            assert_eq!(
                (snapshot_id.as_str(), *index, digest.as_str()),
                ("snap-x", 5, d5.to_hex().as_str())
            );
        }
        other => panic!("expected ChunkCorrupt, got {other:?}"),
    }
    assert!(!dest.exists(), "destination created by a failed restore");
    assert_eq!(file_names(&out), Vec::<String>::new(), "temporary file left behind");

    let report = store.verify("snap-x").unwrap();
    println!("verify: {:?}", report.problems);
    assert_eq!(report.chunks_checked, 8);
    assert_eq!(
        report.problems,
        [ChunkProblem {
            index: 5,
            digest: d5,
            kind: ChunkProblemKind::Corrupt
        }]
    );
    assert!(matches!(
        report.into_result(),
        Err(Error::ChunkCorrupt { index: 5, .. })
    ));

    // An existing destination is left exactly as it was.
    std::fs::write(&dest, b"previous contents").unwrap();
    assert!(store.restore("snap-x", &dest, None).is_err());
    assert_eq!(std::fs::read(&dest).unwrap(), b"previous contents");
    assert_eq!(file_names(&out), ["restored.img"]);

    // A deleted chunk object (chunk 2 comes first, so that is the error).
    let d2 = m.chunks[2].unwrap();
    std::fs::remove_file(chunk_file(2)).unwrap();
    std::fs::remove_file(&dest).unwrap();
    let err = store.restore("snap-x", &dest, None).unwrap_err();
    println!("restore with a deleted chunk: {err}");
    match &err {
        Error::ChunkMissing {
            snapshot_id,
            index,
            digest,
        } => {
            assert_eq!(
                (snapshot_id.as_str(), *index, digest.as_str()),
                ("snap-x", 2, d2.to_hex().as_str())
            );
        }
        other => panic!("expected ChunkMissing, got {other:?}"),
    }
    assert!(!dest.exists());
    assert_eq!(file_names(&out), Vec::<String>::new());
    let report = store.verify("snap-x").unwrap();
    assert_eq!(
        report.problems,
        [
            ChunkProblem {
                index: 2,
                digest: d2,
                kind: ChunkProblemKind::Missing
            },
            ChunkProblem {
                index: 5,
                digest: d5,
                kind: ChunkProblemKind::Corrupt
            },
        ]
    );
}

#[test]
fn a_truncated_chunk_is_repaired_by_the_next_create_of_that_content() {
    let dir = TempDir::new("repair");
    let store_dir = dir.join("store");
    let store = SnapshotStore::open_local(&store_dir).unwrap();
    let vol = dir.join("vol.img");
    make_volume(&vol, 2 * MIB, &[(0, 2 * MIB)], &mut Rng::new(8));
    let m = store
        .create(request("snap-1", &vol, 2 * MIB, None, None, 1))
        .unwrap()
        .manifest;
    let f = store_dir.join("chunks/sha256").join(m.chunks[1].unwrap().to_hex());
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..1000]).unwrap();
    assert!(!store.verify("snap-1").unwrap().is_ok());
    let r = store.create(request("snap-2", &vol, 2 * MIB, None, None, 2)).unwrap();
    assert_eq!(r.stored_bytes, MIB, "only the damaged chunk is uploaded again");
    assert!(store.verify("snap-1").unwrap().is_ok());
}
