//! The image store on a local directory (object_store's LocalFileSystem): import, dedup, refusal of bad files
//! with nothing left behind, large files, and the blocking facade.

mod common;

use std::path::Path;

use common::{list_recursive, pseudo_random, write_image, TempDir};
use hearth_image::{BlockingImageStore, ImageError, ImageStore, Manifest};

fn open(store_dir: &Path, cache: &TempDir) -> ImageStore {
    ImageStore::open(store_dir.to_str().unwrap(), cache.path()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_read_back_and_reimport() {
    let tmp = TempDir::new("import");
    let image = write_image(
        &tmp.join("src"),
        "small",
        b"a kernel",
        Some(b"an initrd"),
        &pseudo_random(100_000, 1),
    );
    let store_dir = tmp.join("store");
    let store = open(&store_dir, &tmp);
    assert!(store.is_local());

    let imported = store.import(&image).await.unwrap();
    let manifest = Manifest::load(&image).unwrap();
    assert_eq!(imported.manifest, manifest);
    assert_eq!(imported.manifest_digest, manifest.digest());
    assert_eq!(imported.total_bytes, 8 + 9 + 100_000);
    assert_eq!(imported.newly_stored_bytes, imported.total_bytes);

    // The layout: blobs by digest, the manifest by its digest.
    for (_, file) in manifest.files() {
        let blob = store_dir.join("blobs/sha256").join(&file.sha256);
        assert_eq!(std::fs::metadata(&blob).unwrap().len(), file.size);
        let local = store.local_path(&file.sha256).await.unwrap();
        assert_eq!(local, blob, "a local store hands out the blob itself");
        assert_eq!(
            std::fs::read(&local).unwrap(),
            std::fs::read(image.parent().unwrap().join(&file.path)).unwrap()
        );
        assert!(store.blob_exists(&file.sha256).await.unwrap());
    }
    let stored_manifest = store_dir
        .join("manifests")
        .join(format!("{}.json", imported.manifest_digest));
    assert_eq!(std::fs::read(&stored_manifest).unwrap(), manifest.canonical_bytes());
    assert_eq!(store.get_manifest(&imported.manifest_digest).await.unwrap(), manifest);
    assert_eq!(
        store.list_manifests().await.unwrap(),
        vec![imported.manifest_digest.clone()]
    );
    assert_eq!(store.list_blobs().await.unwrap().len(), 3);

    // Importing again stores nothing new and names the same manifest.
    let before = list_recursive(&store_dir);
    let again = store.import(&image).await.unwrap();
    assert_eq!(again.manifest_digest, imported.manifest_digest);
    assert_eq!(again.newly_stored_bytes, 0);
    assert_eq!(list_recursive(&store_dir), before);

    // A second image sharing the kernel stores only its new files.
    let other = write_image(&tmp.join("other"), "other", b"a kernel", None, b"another root");
    let second = store.import(&other).await.unwrap();
    assert_eq!(second.newly_stored_bytes, 12);
    assert_eq!(store.list_manifests().await.unwrap().len(), 2);

    // Deleting: manifests and blobs go; deleting again is fine; missing things are NotFound.
    store.delete_manifest(&second.manifest_digest).await.unwrap();
    store.delete_manifest(&second.manifest_digest).await.unwrap();
    assert!(matches!(
        store.get_manifest(&second.manifest_digest).await,
        Err(ImageError::NotFound(_))
    ));
    let root = &second.manifest.root.sha256;
    store.delete_blob(root).await.unwrap();
    store.delete_blob(root).await.unwrap();
    assert!(!store.blob_exists(root).await.unwrap());
    assert!(matches!(store.local_path(root).await, Err(ImageError::NotFound(_))));
    assert!(matches!(
        store.local_path("abc").await,
        Err(ImageError::InvalidDigest(_))
    ));
    assert!(matches!(
        store.get_manifest("../../etc/passwd").await,
        Err(ImageError::InvalidDigest(_))
    ));
}

/// The store directory before and after a refused import must be identical: no blob, no manifest, no temp file.
async fn assert_refused(store: &ImageStore, store_dir: &Path, image: &Path, check: impl Fn(&ImageError)) {
    let before = list_recursive(store_dir);
    let err = store.import(image).await.unwrap_err();
    check(&err);
    assert_eq!(
        list_recursive(store_dir),
        before,
        "the refused import left something behind ({err})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_truncated_and_missing_files_are_refused() {
    let tmp = TempDir::new("refuse");
    let store_dir = tmp.join("store");
    let store = open(&store_dir, &tmp);
    // An image already stored, whose kernel the bad images share: that blob must survive their failures.
    let good = write_image(&tmp.join("good"), "good", b"shared kernel", None, b"good root");
    let good_import = store.import(&good).await.unwrap();

    // A new initrd is stored before the root disk, which has one byte flipped (small file: single put).
    let dir = tmp.join("tampered");
    let image = write_image(
        &dir,
        "bad",
        b"shared kernel",
        Some(b"fresh initrd"),
        &pseudo_random(4096, 2),
    );
    let mut root = std::fs::read(dir.join("root.img")).unwrap();
    root[100] ^= 1;
    std::fs::write(dir.join("root.img"), &root).unwrap();
    let expected_sha = Manifest::load(&image).unwrap().root.sha256;
    assert_refused(&store, &store_dir, &image, |err| match err {
        ImageError::ChecksumMismatch { file, expected, actual } => {
            assert!(file.ends_with("tampered/root.img"), "{file}");
            assert_eq!(expected, &expected_sha);
            assert_ne!(actual, &expected_sha);
            assert!(err.to_string().contains("root.img"));
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    })
    .await;

    // Truncated by one byte: a size mismatch, checked before anything is read.
    root[100] ^= 1;
    std::fs::write(dir.join("root.img"), &root[..root.len() - 1]).unwrap();
    assert_refused(&store, &store_dir, &image, |err| match err {
        ImageError::SizeMismatch { file, expected, actual } => {
            assert!(file.ends_with("root.img"), "{file}");
            assert_eq!((*expected, *actual), (4096, 4095));
        }
        other => panic!("expected a size mismatch, got {other:?}"),
    })
    .await;

    // Larger than the manifest says.
    root.push(0);
    std::fs::write(dir.join("root.img"), &root).unwrap();
    assert_refused(&store, &store_dir, &image, |err| {
        assert!(
            matches!(
                err,
                ImageError::SizeMismatch {
                    expected: 4096,
                    actual: 4097,
                    ..
                }
            ),
            "{err:?}"
        )
    })
    .await;

    // Missing.
    std::fs::remove_file(dir.join("root.img")).unwrap();
    assert_refused(&store, &store_dir, &image, |err| {
        assert!(
            matches!(err, ImageError::FileMissing(p) if p.ends_with("root.img")),
            "{err:?}"
        )
    })
    .await;

    // A large root disk (several multipart parts) with its last byte flipped: the upload is aborted, its staging
    // file removed, the initrd blob written before it deleted again.
    let big_dir = tmp.join("big");
    let mut big = pseudo_random(20 << 20, 3);
    let image = write_image(&big_dir, "big", b"shared kernel", Some(b"another fresh initrd"), &big);
    *big.last_mut().unwrap() ^= 0x80;
    std::fs::write(big_dir.join("root.img"), &big).unwrap();
    assert_refused(&store, &store_dir, &image, |err| {
        assert!(
            matches!(err, ImageError::ChecksumMismatch { file, .. } if file.ends_with("big/root.img")),
            "{err:?}"
        )
    })
    .await;

    // The good image is intact.
    assert_eq!(
        store.list_manifests().await.unwrap(),
        vec![good_import.manifest_digest.clone()]
    );
    let kernel = store.local_path(&good_import.manifest.kernel.sha256).await.unwrap();
    assert_eq!(std::fs::read(kernel).unwrap(), b"shared kernel");
    assert_eq!(store.list_blobs().await.unwrap().len(), 2);
}

/// sha256sum's digest of `path` (an independent oracle, as the bash image builder uses).
fn sha256sum(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum (coreutils) runs");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_streams_in() {
    let tmp = TempDir::new("large");
    let dir = tmp.join("src");
    std::fs::create_dir_all(&dir).unwrap();
    // 40 MiB (5 parts of 8 MiB): random head and tail around a sparse middle.
    let root = dir.join("root.img");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(&root).unwrap();
        f.write_all(&pseudo_random(3 << 20, 4)).unwrap();
        f.seek(SeekFrom::Start((40 << 20) - (3 << 20) - 12345)).unwrap();
        f.write_all(&pseudo_random((3 << 20) + 12345, 5)).unwrap();
    }
    assert_eq!(std::fs::metadata(&root).unwrap().len(), 40 << 20);
    std::fs::write(dir.join("vmlinux"), pseudo_random(70_000, 6)).unwrap();
    // The manifest as the bash builder writes it: digests from sha256sum.
    let json = serde_json::json!({
        "format": "hearth-image/1",
        "name": "large",
        "architecture": "x86_64",
        "root_device_name": "/dev/xvda",
        "root_device_type": "ebs",
        "kernel": {"path": "vmlinux", "sha256": sha256sum(&dir.join("vmlinux")), "size": 70_000},
        "root": {"path": "root.img", "sha256": sha256sum(&root), "size": 40 << 20},
    });
    std::fs::write(dir.join("image.json"), json.to_string()).unwrap();
    let manifest = Manifest::load(&dir.join("image.json")).unwrap();

    let store_dir = tmp.join("store");
    let store = open(&store_dir, &tmp);
    let imported = store.import(&dir.join("image.json")).await.unwrap();
    assert_eq!(imported.newly_stored_bytes, (40 << 20) + 70_000);
    let local = store.local_path(&manifest.root.sha256).await.unwrap();
    assert_eq!(sha256sum(&local), manifest.root.sha256);
    assert!(std::fs::read(&local).unwrap() == std::fs::read(&root).unwrap());
    let kernel = store.local_path(&manifest.kernel.sha256).await.unwrap();
    assert_eq!(
        std::fs::read(kernel).unwrap(),
        std::fs::read(dir.join("vmlinux")).unwrap()
    );
    // Nothing but the blobs and the manifest.
    let files: Vec<String> = list_recursive(&store_dir)
        .into_iter()
        .filter(|(_, s)| s.is_some())
        .map(|(p, _)| p)
        .collect();
    assert_eq!(files.len(), 3, "{files:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_blob_of_the_wrong_size_is_replaced() {
    let tmp = TempDir::new("replace");
    let image = write_image(&tmp.join("src"), "img", b"kernel", None, b"root disk");
    let store_dir = tmp.join("store");
    let store = open(&store_dir, &tmp);
    let manifest = Manifest::load(&image).unwrap();
    let blob = store_dir.join("blobs/sha256").join(&manifest.root.sha256);
    std::fs::write(&blob, b"garbage of another size").unwrap();
    let imported = store.import(&image).await.unwrap();
    assert_eq!(imported.newly_stored_bytes, 6 + 9);
    assert_eq!(std::fs::read(&blob).unwrap(), b"root disk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_facade_from_spawn_blocking_and_plain_threads() {
    let tmp = TempDir::new("blocking");
    let image = write_image(&tmp.join("src"), "img", b"kernel", None, &pseudo_random(10 << 20, 7));
    let store_dir = tmp.join("store");
    let cache = tmp.join("cache");

    // From a spawn_blocking thread of this (test) runtime, as hearthd's engine does.
    let (dir, c, img) = (store_dir.clone(), cache.clone(), image.clone());
    let store = tokio::task::spawn_blocking(move || {
        let store = BlockingImageStore::open(dir.to_str().unwrap(), &c).unwrap();
        let imported = store.import(&img).unwrap();
        assert_eq!(imported.newly_stored_bytes, 6 + (10 << 20));
        let path = store.local_path(&imported.manifest.root.sha256).unwrap();
        assert_eq!(std::fs::metadata(path).unwrap().len(), 10 << 20);
        assert_eq!(store.list_manifests().unwrap(), vec![imported.manifest_digest.clone()]);
        assert_eq!(
            store.get_manifest(&imported.manifest_digest).unwrap(),
            imported.manifest
        );
        assert!(store.blob_exists(&imported.manifest.kernel.sha256).unwrap());
        store
    })
    .await
    .unwrap();
    // Its async side works from async code, and dropping it inside a runtime does not panic.
    assert_eq!(store.store().list_manifests().await.unwrap().len(), 1);
    drop(store);

    // From a plain thread, with errors coming through.
    let (dir, c) = (store_dir.clone(), cache.clone());
    std::thread::spawn(move || {
        let store = BlockingImageStore::open(dir.to_str().unwrap(), &c).unwrap();
        assert!(matches!(
            store.import(&dir.join("nope/image.json")),
            Err(ImageError::FileMissing(_))
        ));
        assert!(matches!(
            store.get_manifest(&"0".repeat(64)),
            Err(ImageError::NotFound(_))
        ));
        let digest = store.list_manifests().unwrap().remove(0);
        store.delete_manifest(&digest).unwrap();
        assert!(store.list_manifests().unwrap().is_empty());
    })
    .join()
    .unwrap();
}

#[test]
fn store_locations() {
    let tmp = TempDir::new("locations");
    let url = format!("file://{}", tmp.join("a b").display()).replace(' ', "%20");
    let store = ImageStore::open(&url, tmp.path()).unwrap();
    assert!(store.is_local());
    assert!(tmp.join("a b/blobs/sha256").is_dir());
    assert!(tmp.join("a b/manifests").is_dir());
    for bad in [
        "",
        "ftp://x/y",
        "file://relative/path",
        "s3://",
        "s3://UPPER/x?endpoint=http://127.0.0.1:9",
    ] {
        let err = ImageStore::open(bad, tmp.path()).unwrap_err();
        assert!(matches!(err, ImageError::Store(_)), "{bad}: {err:?}");
    }
    let err = ImageStore::open("s3://bucket/p?endpoint=https://s3.amazonaws.com", tmp.path()).unwrap_err();
    assert!(err.to_string().contains("without TLS"), "{err}");
}
