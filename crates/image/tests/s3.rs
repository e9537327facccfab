//! The image store on a real S3-compatible server: moto's server on loopback.
//!
//! moto comes from PyPI: `python3 -m venv ~/.cache/hearth/venv && ~/.cache/hearth/venv/bin/pip install
//! 'moto[server]'`. The test looks for `moto_server` in `$HEARTH_MOTO_SERVER`, that venv, then `PATH`; without
//! it the test says so and passes, unless `CI=true`, where it fails.

mod common;

use common::{list_recursive, pseudo_random, write_image, TempDir};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use hearth_image::testing::Moto;
use hearth_image::{BlockingImageStore, ImageError, ImageStore, Manifest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_import_download_and_refusal() {
    let Some(moto) = Moto::start() else { return };
    moto.put("/hearth-images", b"");
    let location = format!(
        "s3://hearth-images/some/prefix?endpoint={}&region=eu-west-1&access_key_id=test&secret_access_key=test",
        moto.endpoint()
    );
    let tmp = TempDir::new("s3");
    let cache = tmp.join("cache");
    let store = ImageStore::open(&location, &cache).unwrap();
    assert!(!store.is_local());

    // 18 MiB root: a multipart upload of three parts.
    let root = pseudo_random(18 << 20, 11);
    let image = write_image(&tmp.join("src"), "s3-image", b"s3 kernel", Some(b"s3 initrd"), &root);
    let manifest = Manifest::load(&image).unwrap();
    let imported = store.import(&image).await.unwrap();
    assert_eq!(imported.manifest_digest, manifest.digest());
    assert_eq!(imported.newly_stored_bytes, 9 + 9 + (18 << 20));

    // The objects are where the layout says, under the prefix.
    let listing = moto.get("/hearth-images?list-type=2&prefix=some/prefix/");
    for (_, file) in manifest.files() {
        assert!(
            listing.contains(&format!("some/prefix/blobs/sha256/{}", file.sha256)),
            "{listing}"
        );
    }
    assert!(
        listing.contains(&format!("some/prefix/manifests/{}.json", imported.manifest_digest)),
        "{listing}"
    );
    assert_eq!(
        store.list_manifests().await.unwrap(),
        vec![imported.manifest_digest.clone()]
    );
    assert_eq!(store.get_manifest(&imported.manifest_digest).await.unwrap(), manifest);

    // local_path downloads into the cache, verified.
    let local = store.local_path(&manifest.root.sha256).await.unwrap();
    assert_eq!(local, cache.join("sha256").join(&manifest.root.sha256));
    assert!(std::fs::read(&local).unwrap() == root);
    assert_eq!(store.local_path(&manifest.root.sha256).await.unwrap(), local);

    // Importing again uploads nothing.
    assert_eq!(store.import(&image).await.unwrap().newly_stored_bytes, 0);

    // A tampered image: refused, nothing new in the bucket, no multipart upload left open.
    let bad_dir = tmp.join("bad");
    let mut bad_root = pseudo_random(17 << 20, 12);
    let bad = write_image(&bad_dir, "bad", b"another kernel", None, &bad_root);
    bad_root[16 << 20] ^= 1;
    std::fs::write(bad_dir.join("root.img"), &bad_root).unwrap();
    let before = moto.get("/hearth-images?list-type=2");
    match store.import(&bad).await {
        Err(ImageError::ChecksumMismatch { file, .. }) => assert!(file.ends_with("bad/root.img"), "{file}"),
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    assert_eq!(moto.get("/hearth-images?list-type=2"), before);
    let uploads = moto.get("/hearth-images?uploads");
    assert!(
        !uploads.contains("<Upload>"),
        "a multipart upload was left open: {uploads}"
    );

    // A blob whose content is not what its name says (put behind the store's back): the download is refused and
    // leaves no file in the cache.
    std::fs::write(tmp.join("claimed"), b"the content the name claims").unwrap();
    let (claimed, _) = hearth_image::sha256_file(&tmp.join("claimed")).unwrap();
    moto.put(
        &format!("/hearth-images/some/prefix/blobs/sha256/{claimed}"),
        b"other content",
    );
    assert!(store.blob_exists(&claimed).await.unwrap());
    let cache_before = list_recursive(&cache);
    match store.local_path(&claimed).await {
        Err(ImageError::ChecksumMismatch { expected, .. }) => assert_eq!(expected, claimed),
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    assert_eq!(list_recursive(&cache), cache_before);

    // The blocking facade on the same bucket, from a spawn_blocking thread; deletes remove the cached copy.
    let (loc, c, digest) = (location.clone(), cache.clone(), manifest.root.sha256.clone());
    tokio::task::spawn_blocking(move || {
        let store = BlockingImageStore::open(&loc, &c).unwrap();
        assert_eq!(store.list_manifests().unwrap().len(), 1);
        assert!(store.blob_exists(&digest).unwrap());
        store.delete_blob(&digest).unwrap();
        assert!(!store.blob_exists(&digest).unwrap());
        assert!(!c.join("sha256").join(&digest).exists());
        assert!(matches!(store.local_path(&digest), Err(ImageError::NotFound(_))));
    })
    .await
    .unwrap();
}

#[test]
fn s3_unreachable_endpoint_fails_cleanly() {
    // A port nobody listens on: a store error, not a hang or a panic.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let tmp = TempDir::new("s3-down");
    let location = format!("s3://bucket/p?endpoint=http://127.0.0.1:{port}&access_key_id=a&secret_access_key=b");
    let store = BlockingImageStore::open(&location, tmp.path()).unwrap();
    let start = Instant::now();
    let err = store.blob_exists(&"0".repeat(64)).unwrap_err();
    assert!(matches!(err, ImageError::Store(_)), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(120), "took {:?}", start.elapsed());
}
