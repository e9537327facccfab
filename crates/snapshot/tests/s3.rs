//! The snapshot store on a real S3-compatible server (moto on loopback, see
//! `hearth_image::testing`), through hearth-image's plain-HTTP transport: the incremental
//! example, a corrupted chunk object, and garbage collection, all against the bucket.

mod common;

use common::*;
use hearth_image::testing::Moto;
use hearth_image::transport::PlainHttpConnector;
use hearth_snapshot::{Error, SnapshotStore};

#[test]
fn snapshots_on_s3_are_incremental_verified_and_collected() {
    let Some(moto) = Moto::start() else { return };
    moto.put("/hearth-snapshots", b"");
    let location = format!(
        "s3://hearth-snapshots/region-a?endpoint={}&region=eu-west-1&access_key_id=test&secret_access_key=test",
        moto.endpoint()
    );
    let store = SnapshotStore::open_with_http(&location, PlainHttpConnector).unwrap();
    let dir = TempDir::new("s3");
    let vol = dir.join("vol.img");
    let mut rng = Rng::new(7);
    make_volume(&vol, 6 * MIB, &[(0, 6 * MIB)], &mut rng);
    let a = store.create(request("snap-a", &vol, 6 * MIB, None, None, 1)).unwrap();
    assert_eq!(a.stored_bytes, 6 * MIB);
    write_random(&vol, 2 * MIB, MIB, &mut rng);
    let at_b = std::fs::read(&vol).unwrap();
    let b = store
        .create(request(
            "snap-b",
            &vol,
            6 * MIB,
            Some(vec![(2, 1)]),
            Some(&a.manifest),
            2,
        ))
        .unwrap();
    assert_eq!((b.stored_bytes, b.chunks_read, b.chunks_reused), (MIB, 1, 5));
    assert_eq!(store.stored_bytes_total().unwrap(), 7 * MIB);
    let listing = moto.get("/hearth-snapshots?list-type=2&prefix=region-a/");
    assert_eq!(listing.matches("region-a/chunks/sha256/").count(), 7, "{listing}");
    assert_eq!(listing.matches("region-a/snapshots/").count(), 2, "{listing}");

    store.delete("snap-a").unwrap();
    assert_eq!(store.stored_bytes_total().unwrap(), 6 * MIB);
    let restored = dir.join("restored.img");
    store.restore("snap-b", &restored, None).unwrap();
    assert!(
        std::fs::read(&restored).unwrap() == at_b,
        "B restores byte for byte from S3"
    );

    // Replace one chunk object with other bytes: the restore refuses it.
    let key = listing
        .split("<Key>")
        .skip(1)
        .filter_map(|k| k.split("</Key>").next())
        .find(|k| k.contains("/chunks/sha256/") && b.manifest.chunks.iter().flatten().any(|d| k.ends_with(&d.to_hex())))
        .unwrap()
        .to_string();
    overwrite(&moto, &key, vec![0x55u8; MIB as usize]);
    let failed = store.restore("snap-b", &dir.join("bad.img"), None);
    assert!(matches!(failed, Err(Error::ChunkCorrupt { .. })), "{failed:?}");
    assert!(!dir.join("bad.img").exists());
    store.delete("snap-b").unwrap();
    assert_eq!(store.stored_bytes_total().unwrap(), 0);
}

/// Replaces an object's bytes through a signed S3 client (moto refuses unsigned object writes).
fn overwrite(moto: &Moto, key: &str, bytes: Vec<u8>) {
    use hearth_snapshot::object_store::{aws::AmazonS3Builder, path::Path, ObjectStoreExt, PutPayload};
    let s3 = AmazonS3Builder::new()
        .with_bucket_name("hearth-snapshots")
        .with_endpoint(moto.endpoint())
        .with_region("eu-west-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_http_connector(PlainHttpConnector)
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(s3.put(&Path::from(key), PutPayload::from(bytes)))
        .unwrap();
}
