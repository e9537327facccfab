//! The content-addressed image store behind `object_store`.
//!
//! Layout inside the store (a local directory or an S3 bucket and prefix):
//!
//! - `blobs/sha256/<hex>`: one object per distinct file content, named by its sha256;
//! - `manifests/<hex>.json`: one object per imported manifest, named by the sha256 of its bytes
//!   ([`Manifest::canonical_bytes`]); its file entries keep the paths of the imported manifest.
//!
//! [`ImageStore::import`] streams each file into the store while hashing it, in 8 MiB pieces (a multipart
//! upload for files larger than one piece), and makes the blob visible under its digest only once the whole file
//! has been read and its size and sha256 match the manifest: a multipart upload is completed (the local store
//! renames its staging file into place, S3 assembles the parts) after the check, and aborted otherwise. A failed
//! import deletes the blobs it newly wrote and writes no manifest; the manifest object is written last.
//!
//! An import whose future is dropped midway may leave complete, verified blobs without a manifest (never a
//! partial blob under a digest name); [`ImageStore::list_blobs`] lets a caller collect such orphans.
//!
//! Blobs are shared between images; the store does no reference counting. Callers delete a blob only when no
//! manifest they keep names it. Imports of images sharing a blob should not run concurrently with deletes of
//! that blob.
//!
//! [`ImageStore`] is async and runs on any tokio runtime. [`BlockingImageStore`] owns a small runtime of its
//! own and offers the same operations to synchronous code, including code that runs on a thread of another
//! runtime (`spawn_blocking`).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::prefix::PrefixStore;
use object_store::{ClientOptions, MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use sha2::{Digest, Sha256};

use crate::digest::{is_sha256_hex, sha256_hex, to_hex};
use crate::error::{ImageError, Result};
use crate::manifest::{FileRef, Manifest};
use crate::transport::PlainHttpConnector;

/// Files are read, hashed and uploaded in pieces of this size (also the multipart part size).
const CHUNK: usize = 8 << 20;

/// Parts of one multipart upload in flight at once.
const PARTS_IN_FLIGHT: usize = 2;

/// The result of a successful [`ImageStore::import`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    /// The manifest's digest, which names it in the store ([`ImageStore::get_manifest`]).
    pub manifest_digest: String,
    /// The manifest as stored, with every file's sha256 and size.
    pub manifest: Manifest,
    /// The sum of the image's file sizes.
    pub total_bytes: u64,
    /// Bytes of blobs written by this import (0 when every blob was already present).
    pub newly_stored_bytes: u64,
}

/// The image store: a local directory or an S3-compatible bucket, plus a local cache for remote blobs.
///
/// Cheap to clone; clones share the underlying client.
#[derive(Debug, Clone)]
pub struct ImageStore {
    store: Arc<dyn ObjectStore>,
    /// Set for a local directory store: blobs are already local files.
    local: Option<LocalFileSystem>,
    cache_dir: PathBuf,
    location: String,
}

impl ImageStore {
    /// Opens the store at `location`:
    ///
    /// - a local directory path, or `file:///dir` (created if missing);
    /// - `s3://bucket[/prefix][?endpoint=http://host:port&region=R&access_key_id=..&secret_access_key=..]`,
    ///   configured from the query and the `AWS_*` environment (`AWS_ENDPOINT`, `AWS_REGION`,
    ///   `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...; the query wins). Path-style requests over plain
    ///   HTTP: hearth builds object_store without TLS, so the endpoint must be `http://`.
    ///
    /// `cache_dir` holds verified copies of remote blobs (`cache_dir/sha256/<hex>`, see
    /// [`ImageStore::local_path`]); it is created when first needed and unused for local stores.
    pub fn open(location: &str, cache_dir: &Path) -> Result<ImageStore> {
        let (store, local): (Arc<dyn ObjectStore>, Option<LocalFileSystem>) =
            if let Some(rest) = location.strip_prefix("s3://") {
                (open_s3(location, rest)?, None)
            } else {
                let dir = local_dir(location)?;
                for sub in ["", "blobs/sha256", "manifests"] {
                    let path = dir.join(sub);
                    std::fs::create_dir_all(&path)
                        .map_err(|e| ImageError::io(format!("cannot create {}", path.display()), e))?;
                }
                let fs = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| ImageError::Store(format!("cannot open {}: {e}", dir.display())))?;
                (Arc::new(fs.clone()), Some(fs))
            };
        Ok(ImageStore {
            store,
            local,
            cache_dir: cache_dir.to_path_buf(),
            location: location.to_string(),
        })
    }

    /// The location this store was opened with.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether blobs are local files already (a local directory store).
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// Imports the image described by the manifest at `manifest_path` (file paths relative to its directory).
    ///
    /// Every file is hashed while it is streamed into the store; a file that is missing
    /// ([`ImageError::FileMissing`]), of another size ([`ImageError::SizeMismatch`]) or content
    /// ([`ImageError::ChecksumMismatch`]) fails the import, and the blobs this import newly wrote are deleted
    /// again. Blobs already present with the right size are not rewritten (the file is still hashed); a present
    /// blob of the wrong size is replaced. Importing the same image again stores 0 new bytes and yields the same
    /// digest.
    pub async fn import(&self, manifest_path: &Path) -> Result<ImportedImage> {
        let path = manifest_path.to_path_buf();
        let manifest = blocking(move || Manifest::load(&path)).await?;
        let dir = match manifest_path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        self.import_from(manifest, &Source::Dir(dir)).await
    }

    /// Imports `manifest` from files the caller has already opened (`files`: each manifest
    /// `path` and its open file), as [`ImageStore::import`] does from a directory. Nothing is
    /// opened by path: a caller that opened the files safely (no symlinks, below a directory it
    /// trusts) gets exactly those files' content. Each file is read from its start.
    pub async fn import_opened(
        &self,
        manifest: Manifest,
        files: HashMap<String, std::fs::File>,
    ) -> Result<ImportedImage> {
        manifest.validate()?;
        self.import_from(manifest, &Source::Opened(files)).await
    }

    async fn import_from(&self, manifest: Manifest, source: &Source) -> Result<ImportedImage> {
        let mut newly_written = Vec::new();
        let mut stored = 0;
        let outcome = async {
            let mut done = HashSet::new();
            for (_, file) in manifest.files() {
                stored += self.import_file(source, file, &mut done, &mut newly_written).await?;
            }
            let bytes = manifest.canonical_bytes();
            let digest = sha256_hex(&bytes);
            self.store.put(&manifest_key(&digest), PutPayload::from(bytes)).await?;
            Ok(digest)
        }
        .await;
        match outcome {
            Ok(manifest_digest) => Ok(ImportedImage {
                manifest_digest,
                total_bytes: manifest.total_bytes(),
                manifest,
                newly_stored_bytes: stored,
            }),
            Err(error) => {
                for digest in newly_written {
                    // Best effort: the error that matters is the import's.
                    let _ = self.store.delete(&blob_key(&digest)).await;
                }
                Err(error)
            }
        }
    }

    /// Stores one file unless its blob is present; returns the bytes written. Pushes the digest onto
    /// `newly_written` when this call created the blob.
    async fn import_file(
        &self,
        source: &Source,
        file: &FileRef,
        done: &mut HashSet<String>,
        newly_written: &mut Vec<String>,
    ) -> Result<u64> {
        let mut reader = match source {
            Source::Dir(dir) => HashingReader::open(file.local_path(dir)).await?,
            Source::Opened(files) => {
                let opened = files
                    .get(&file.path)
                    .ok_or_else(|| ImageError::FileMissing(PathBuf::from(&file.path)))?;
                let opened = opened
                    .try_clone()
                    .map_err(|e| ImageError::io(format!("cannot reopen {}", file.path), e))?;
                HashingReader::from_file(opened, PathBuf::from(&file.path)).await?
            }
        };
        if reader.len != file.size {
            return Err(ImageError::SizeMismatch {
                file: reader.name(),
                expected: file.size,
                actual: reader.len,
            });
        }
        let key = blob_key(&file.sha256);
        let existing = if done.contains(&file.sha256) {
            Some(file.size)
        } else {
            match self.store.head(&key).await {
                Ok(meta) => Some(meta.size),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            }
        };
        if existing == Some(file.size) {
            // Present: still prove the local file is what the manifest says.
            while !reader.next_chunk(file).await?.is_empty() {}
            reader.check(file)?;
            done.insert(file.sha256.clone());
            return Ok(0);
        }
        let first = reader.next_chunk(file).await?;
        if first.len() < CHUNK {
            // The whole file fits one piece (and the reader has hit its end): check, then put atomically.
            reader.check(file)?;
            self.store.put(&key, PutPayload::from(first)).await?;
        } else {
            let mut upload = self.store.put_multipart(&key).await?;
            let streamed = stream_parts(upload.as_mut(), &mut reader, file, first).await;
            let completed = match streamed {
                Ok(()) => upload.complete().await.map(drop).map_err(ImageError::from),
                Err(e) => Err(e),
            };
            if let Err(e) = completed {
                let _ = upload.abort().await;
                return Err(e);
            }
        }
        self.seal_blob(&key).await;
        if existing.is_none() {
            newly_written.push(file.sha256.clone());
        }
        done.insert(file.sha256.clone());
        Ok(file.size)
    }

    /// Makes a local blob file read-only, guarding content-addressed data against writes through
    /// [`ImageStore::local_path`]. Best effort.
    async fn seal_blob(&self, key: &Key) {
        use std::os::unix::fs::PermissionsExt;
        if let Some(path) = self.local.as_ref().and_then(|fs| fs.path_to_filesystem(key).ok()) {
            let _ = tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444)).await;
        }
    }

    /// The stored manifest named `digest`; the object's bytes are checked against the digest.
    pub async fn get_manifest(&self, digest: &str) -> Result<Manifest> {
        check_digest(digest)?;
        let bytes = self.store.get(&manifest_key(digest)).await?.bytes().await?;
        let actual = sha256_hex(&bytes);
        if actual != digest {
            return Err(ImageError::Store(format!(
                "manifest {digest} is corrupt in the store (its content hashes to {actual})"
            )));
        }
        let json = std::str::from_utf8(&bytes)
            .map_err(|_| ImageError::Store(format!("manifest {digest} in the store is not UTF-8")))?;
        Manifest::parse(json)
    }

    /// The digests of all stored manifests, sorted.
    pub async fn list_manifests(&self) -> Result<Vec<String>> {
        let objects: Vec<_> = self.store.list(Some(&Key::from("manifests"))).try_collect().await?;
        let mut digests: Vec<String> = objects
            .iter()
            .filter_map(|meta| meta.location.filename()?.strip_suffix(".json").map(str::to_string))
            .filter(|d| is_sha256_hex(d))
            .collect();
        digests.sort();
        Ok(digests)
    }

    /// The digests and sizes of all stored blobs, sorted by digest (for garbage collection by the caller).
    pub async fn list_blobs(&self) -> Result<Vec<(String, u64)>> {
        let objects: Vec<_> = self.store.list(Some(&Key::from("blobs/sha256"))).try_collect().await?;
        let mut blobs: Vec<(String, u64)> = objects
            .iter()
            .filter_map(|meta| Some((meta.location.filename()?.to_string(), meta.size)))
            .filter(|(d, _)| is_sha256_hex(d))
            .collect();
        blobs.sort();
        Ok(blobs)
    }

    /// Deletes the manifest named `digest` (not its blobs). Deleting a missing manifest succeeds.
    pub async fn delete_manifest(&self, digest: &str) -> Result<()> {
        check_digest(digest)?;
        ignore_not_found(self.store.delete(&manifest_key(digest)).await)
    }

    /// Deletes the blob `digest` and its cached copy. Deleting a missing blob succeeds.
    ///
    /// The store keeps no reference counts: the caller deletes a blob only when no manifest it keeps names it.
    pub async fn delete_blob(&self, digest: &str) -> Result<()> {
        check_digest(digest)?;
        ignore_not_found(self.store.delete(&blob_key(digest)).await)?;
        if self.local.is_none() {
            let cached = self.cache_dir.join("sha256").join(digest);
            match tokio::fs::remove_file(&cached).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImageError::io(format!("cannot remove {}", cached.display()), e)),
            }
        }
        Ok(())
    }

    /// Whether the blob `digest` is in the store.
    pub async fn blob_exists(&self, digest: &str) -> Result<bool> {
        check_digest(digest)?;
        match self.store.head(&blob_key(digest)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// A local file with the content of blob `digest`, for the VMM to boot from or to clone.
    ///
    /// For a local directory store this is the blob file itself (read-only; never write to it, copy it). For a
    /// remote store the blob is downloaded once into `cache_dir/sha256/<hex>` through a temporary file that is
    /// renamed into place only after its sha256 matched ([`ImageError::ChecksumMismatch`] otherwise, and the
    /// temporary file is removed). A missing blob is [`ImageError::NotFound`].
    pub async fn local_path(&self, digest: &str) -> Result<PathBuf> {
        check_digest(digest)?;
        let key = blob_key(digest);
        if let Some(fs) = &self.local {
            let path = fs.path_to_filesystem(&key)?;
            return match tokio::fs::metadata(&path).await {
                Ok(meta) if meta.is_file() => Ok(path),
                Ok(_) => Err(ImageError::NotFound(key.to_string())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ImageError::NotFound(key.to_string())),
                Err(e) => Err(ImageError::io(format!("cannot stat {}", path.display()), e)),
            };
        }
        let dir = self.cache_dir.join("sha256");
        let target = dir.join(digest);
        if tokio::fs::metadata(&target).await.is_ok_and(|m| m.is_file()) {
            return Ok(target);
        }
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| ImageError::io(format!("cannot create {}", dir.display()), e))?;
        let temp = dir.join(format!(".{digest}.{}.tmp", unique_suffix()));
        let downloaded = self.download(&key, digest, &temp).await;
        let renamed = match downloaded {
            Ok(()) => tokio::fs::rename(&temp, &target)
                .await
                .map_err(|e| ImageError::io(format!("cannot rename {} into place", temp.display()), e)),
            Err(e) => Err(e),
        };
        if let Err(e) = renamed {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e);
        }
        Ok(target)
    }

    /// Streams blob `key` into the new file `temp`, hashing it; fails unless it hashes to `digest`.
    async fn download(&self, key: &Key, digest: &str, temp: &Path) -> Result<()> {
        let result = self.store.get(key).await?;
        let mut stream = result.into_stream();
        let path = temp.to_path_buf();
        let file = blocking(move || {
            std::fs::File::create_new(&path).map_err(|e| ImageError::io(format!("cannot create {}", path.display()), e))
        })
        .await?;
        let mut sink = HashingWriter {
            file: Some(file),
            hasher: Some(Sha256::new()),
            path: temp.to_path_buf(),
        };
        let mut pending = Vec::with_capacity(CHUNK);
        while let Some(bytes) = stream.next().await {
            pending.extend_from_slice(&bytes?);
            if pending.len() >= CHUNK {
                sink.write(std::mem::replace(&mut pending, Vec::with_capacity(CHUNK)))
                    .await?;
            }
        }
        sink.write(pending).await?;
        let actual = sink.finish().await?;
        if actual != digest {
            return Err(ImageError::ChecksumMismatch {
                file: key.to_string(),
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(())
    }
}

/// Uploads `first` and the rest of `reader` as parts of `upload`, then checks size and digest. Does not complete
/// or abort the upload.
async fn stream_parts(
    upload: &mut dyn MultipartUpload,
    reader: &mut HashingReader,
    file: &FileRef,
    first: Bytes,
) -> Result<()> {
    let mut parts = tokio::task::JoinSet::new();
    let mut chunk = first;
    let result = async {
        while !chunk.is_empty() {
            while parts.len() >= PARTS_IN_FLIGHT {
                if let Some(done) = parts.join_next().await {
                    done.map_err(|e| ImageError::Store(format!("upload task failed: {e}")))??;
                }
            }
            parts.spawn(upload.put_part(PutPayload::from(chunk)));
            chunk = reader.next_chunk(file).await?;
        }
        while let Some(done) = parts.join_next().await {
            done.map_err(|e| ImageError::Store(format!("upload task failed: {e}")))??;
        }
        reader.check(file)
    }
    .await;
    parts.shutdown().await;
    result
}

/// Where an import reads the manifest's files.
enum Source {
    /// Paths relative to the manifest's directory.
    Dir(PathBuf),
    /// Files the caller opened, by manifest path.
    Opened(HashMap<String, std::fs::File>),
}

/// Reads a local file in [`CHUNK`] pieces on the blocking pool, hashing as it goes.
struct HashingReader {
    file: Option<std::fs::File>,
    hasher: Option<Sha256>,
    path: PathBuf,
    /// The size the file had when opened.
    len: u64,
    /// Bytes read so far.
    read: u64,
}

impl HashingReader {
    async fn open(path: PathBuf) -> Result<HashingReader> {
        let file = blocking(move || match std::fs::File::open(&path) {
            Ok(file) => Ok((file, path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ImageError::FileMissing(path)),
            Err(e) => Err(ImageError::io(format!("cannot open {}", path.display()), e)),
        })
        .await?;
        HashingReader::from_file(file.0, file.1).await
    }

    /// Reads `file` (named `path` in errors) from its start.
    async fn from_file(mut file: std::fs::File, path: PathBuf) -> Result<HashingReader> {
        use std::io::Seek;
        blocking(move || {
            file.seek(std::io::SeekFrom::Start(0))
                .map_err(|e| ImageError::io(format!("cannot seek {}", path.display()), e))?;
            let meta = file
                .metadata()
                .map_err(|e| ImageError::io(format!("cannot stat {}", path.display()), e))?;
            if !meta.is_file() {
                return Err(ImageError::ManifestInvalid(format!(
                    "{} is not a regular file",
                    path.display()
                )));
            }
            Ok(HashingReader {
                file: Some(file),
                hasher: Some(Sha256::new()),
                path,
                len: meta.len(),
                read: 0,
            })
        })
        .await
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }

    /// The next piece (empty at the end). Fails as soon as more bytes were read than `file` should have.
    async fn next_chunk(&mut self, file: &FileRef) -> Result<Bytes> {
        let (mut f, mut hasher) = match (self.file.take(), self.hasher.take()) {
            (Some(f), Some(h)) => (f, h),
            _ => return Err(ImageError::Store("internal: reader used after a failed read".into())),
        };
        let (f, hasher, read) = blocking(move || {
            let mut buf = vec![0u8; CHUNK];
            let mut n = 0;
            while n < CHUNK {
                match f.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Ok((f, hasher, Err(e))),
                }
            }
            buf.truncate(n);
            hasher.update(&buf);
            Ok((f, hasher, Ok(buf)))
        })
        .await?;
        self.file = Some(f);
        self.hasher = Some(hasher);
        let buf = read.map_err(|e| ImageError::io(format!("cannot read {}", self.path.display()), e))?;
        self.read += buf.len() as u64;
        if self.read > file.size {
            return Err(ImageError::SizeMismatch {
                file: self.name(),
                expected: file.size,
                actual: self.read.max(self.len),
            });
        }
        Ok(Bytes::from(buf))
    }

    /// After the last piece: the size read and the digest must match `file`.
    fn check(&mut self, file: &FileRef) -> Result<()> {
        if self.read != file.size {
            return Err(ImageError::SizeMismatch {
                file: self.name(),
                expected: file.size,
                actual: self.read,
            });
        }
        let hasher = self.hasher.take().unwrap_or_default();
        let actual = to_hex(&hasher.finalize());
        if actual != file.sha256 {
            return Err(ImageError::ChecksumMismatch {
                file: self.name(),
                expected: file.sha256.clone(),
                actual,
            });
        }
        Ok(())
    }
}

/// Writes a local file in pieces on the blocking pool, hashing as it goes.
struct HashingWriter {
    file: Option<std::fs::File>,
    hasher: Option<Sha256>,
    path: PathBuf,
}

impl HashingWriter {
    async fn write(&mut self, buf: Vec<u8>) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let (mut f, mut hasher) = match (self.file.take(), self.hasher.take()) {
            (Some(f), Some(h)) => (f, h),
            _ => return Err(ImageError::Store("internal: writer used after a failed write".into())),
        };
        let path = self.path.clone();
        let (f, hasher) = blocking(move || {
            hasher.update(&buf);
            f.write_all(&buf)
                .map_err(|e| ImageError::io(format!("cannot write {}", path.display()), e))?;
            Ok((f, hasher))
        })
        .await?;
        self.file = Some(f);
        self.hasher = Some(hasher);
        Ok(())
    }

    /// Flushes to disk and returns the digest of everything written.
    async fn finish(mut self) -> Result<String> {
        let file = self.file.take();
        let path = self.path.clone();
        blocking(move || match file {
            Some(f) => f
                .sync_all()
                .map_err(|e| ImageError::io(format!("cannot sync {}", path.display()), e)),
            None => Ok(()),
        })
        .await?;
        Ok(to_hex(&self.hasher.take().unwrap_or_default().finalize()))
    }
}

/// Runs `f` on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImageError::Store(format!("blocking task failed: {e}")))?
}

fn blob_key(digest: &str) -> Key {
    Key::from(format!("blobs/sha256/{digest}"))
}

fn manifest_key(digest: &str) -> Key {
    Key::from(format!("manifests/{digest}.json"))
}

fn check_digest(digest: &str) -> Result<()> {
    if is_sha256_hex(digest) {
        Ok(())
    } else {
        Err(ImageError::InvalidDigest(digest.to_string()))
    }
}

fn ignore_not_found(result: object_store::Result<()>) -> Result<()> {
    match result {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A name part unique within this host for temporary files.
pub(crate) fn unique_suffix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The directory of a local store location: a path or `file:///path`.
fn local_dir(location: &str) -> Result<PathBuf> {
    let bad = |why: &str| ImageError::Store(format!("bad image store location {location:?}: {why}"));
    if location.is_empty() {
        return Err(bad("empty"));
    }
    if let Some(rest) = location.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(bad("a file URL needs an absolute path: file:///dir"));
        }
        let path = percent_decode(rest).ok_or_else(|| bad("invalid %-escape"))?;
        return Ok(PathBuf::from(path));
    }
    if let Some((scheme, _)) = location.split_once("://") {
        return Err(bad(&format!(
            "unsupported scheme {scheme:?}: use a directory, file:///dir or s3://bucket/prefix?endpoint=http://host:port"
        )));
    }
    Ok(PathBuf::from(location))
}

/// The query parameters of an `s3://` location.
const QUERY_PARAMETERS: &str = "endpoint, region, access_key_id, secret_access_key, token";

/// An S3 store for `s3://` + `rest` (`bucket[/prefix][?query]`).
fn open_s3(location: &str, rest: &str) -> Result<Arc<dyn ObjectStore>> {
    let bad = |why: String| ImageError::Store(format!("bad image store location {location:?}: {why}"));
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, prefix) = main.split_once('/').unwrap_or((main, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if !bucket_ok {
        return Err(bad(format!(
            "{bucket:?} is not an S3 bucket name (3-63 of a-z 0-9 . -)"
        )));
    }
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| bad(format!("query part {pair:?} is not name=value")))?;
        let value = percent_decode(value).ok_or_else(|| bad(format!("invalid %-escape in {pair:?}")))?;
        builder = match name {
            "endpoint" => builder.with_endpoint(value),
            "region" => builder.with_region(value),
            "access_key_id" => builder.with_access_key_id(value),
            "secret_access_key" => builder.with_secret_access_key(value),
            "token" => builder.with_token(value),
            other => {
                return Err(bad(format!(
                    "unknown query parameter {other:?} (known: {QUERY_PARAMETERS})"
                )))
            }
        };
    }
    let endpoint = builder
        .get_config_value(&AmazonS3ConfigKey::S3Endpoint)
        .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::Endpoint))
        .filter(|e| !e.is_empty());
    match endpoint.as_deref() {
        None => {
            return Err(bad(
                "no S3 endpoint: set AWS_ENDPOINT or add ?endpoint=http://host:port (hearth's object_store is built \
                 without TLS, so only plain-HTTP S3-compatible endpoints work)"
                    .into(),
            ))
        }
        Some(e) if e.starts_with("https://") => {
            return Err(bad(format!(
                "endpoint {e} uses https, but hearth's object_store is built without TLS: use an http:// endpoint"
            )))
        }
        Some(e) if !e.starts_with("http://") => return Err(bad(format!("endpoint {e:?} is not an http:// URL"))),
        Some(_) => {}
    }
    if builder
        .get_config_value(&AmazonS3ConfigKey::Region)
        .is_none_or(|r| r.is_empty())
    {
        builder = builder.with_region("us-east-1");
    }
    // Timeouts are the transport's (crate::transport): object_store's apply to its reqwest transport only.
    let options = ClientOptions::new().with_allow_http(true);
    // A few retries with backoff (about 3 s in all) ride out blips without hanging on an unreachable endpoint.
    let retry = RetryConfig {
        max_retries: 5,
        ..RetryConfig::default()
    };
    let s3 = builder
        .with_client_options(options)
        .with_retry(retry)
        .with_http_connector(PlainHttpConnector)
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let prefix = prefix.trim_matches('/');
    Ok(if prefix.is_empty() {
        Arc::new(s3)
    } else {
        Arc::new(PrefixStore::new(s3, prefix))
    })
}

/// Decodes `%XX` escapes; `None` for a malformed escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A tokio runtime that is shut down in the background when dropped, so dropping it is allowed anywhere,
/// including inside another runtime.
#[derive(Debug)]
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The image store for synchronous code: [`ImageStore`]'s operations as blocking calls.
///
/// It owns a small tokio runtime and runs each operation there (`Handle::spawn` and a wait on a std channel),
/// never `block_on`: it may be called from any thread that may block, including `spawn_blocking` threads of
/// another runtime. Do not call it from an async task (that would stall the task's worker thread); use
/// [`BlockingImageStore::store`] there.
#[derive(Debug)]
pub struct BlockingImageStore {
    store: ImageStore,
    runtime: OwnedRuntime,
}

impl BlockingImageStore {
    /// Opens the store at `location` (see [`ImageStore::open`]) with its own runtime.
    pub fn open(location: &str, cache_dir: &Path) -> Result<BlockingImageStore> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(8)
            .thread_name("hearth-image")
            .enable_all()
            .build()
            .map_err(|e| ImageError::io("cannot start the image store's runtime", e))?;
        let runtime = OwnedRuntime(Some(runtime));
        let (location, cache_dir) = (location.to_string(), cache_dir.to_path_buf());
        let store = run_on(&runtime, async move { ImageStore::open(&location, &cache_dir) })?;
        Ok(BlockingImageStore { store, runtime })
    }

    /// The async store, for code already running in a tokio runtime.
    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    fn run<T: Send + 'static>(&self, fut: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
        run_on(&self.runtime, fut)
    }

    /// [`ImageStore::import`], blocking.
    pub fn import(&self, manifest_path: &Path) -> Result<ImportedImage> {
        let (store, path) = (self.store.clone(), manifest_path.to_path_buf());
        self.run(async move { store.import(&path).await })
    }

    /// [`ImageStore::import_opened`], blocking.
    pub fn import_opened(&self, manifest: Manifest, files: HashMap<String, std::fs::File>) -> Result<ImportedImage> {
        let store = self.store.clone();
        self.run(async move { store.import_opened(manifest, files).await })
    }

    /// [`ImageStore::get_manifest`], blocking.
    pub fn get_manifest(&self, digest: &str) -> Result<Manifest> {
        let (store, digest) = (self.store.clone(), digest.to_string());
        self.run(async move { store.get_manifest(&digest).await })
    }

    /// [`ImageStore::list_manifests`], blocking.
    pub fn list_manifests(&self) -> Result<Vec<String>> {
        let store = self.store.clone();
        self.run(async move { store.list_manifests().await })
    }

    /// [`ImageStore::list_blobs`], blocking.
    pub fn list_blobs(&self) -> Result<Vec<(String, u64)>> {
        let store = self.store.clone();
        self.run(async move { store.list_blobs().await })
    }

    /// [`ImageStore::delete_manifest`], blocking.
    pub fn delete_manifest(&self, digest: &str) -> Result<()> {
        let (store, digest) = (self.store.clone(), digest.to_string());
        self.run(async move { store.delete_manifest(&digest).await })
    }

    /// [`ImageStore::delete_blob`], blocking.
    pub fn delete_blob(&self, digest: &str) -> Result<()> {
        let (store, digest) = (self.store.clone(), digest.to_string());
        self.run(async move { store.delete_blob(&digest).await })
    }

    /// [`ImageStore::blob_exists`], blocking.
    pub fn blob_exists(&self, digest: &str) -> Result<bool> {
        let (store, digest) = (self.store.clone(), digest.to_string());
        self.run(async move { store.blob_exists(&digest).await })
    }

    /// [`ImageStore::local_path`], blocking.
    pub fn local_path(&self, digest: &str) -> Result<PathBuf> {
        let (store, digest) = (self.store.clone(), digest.to_string());
        self.run(async move { store.local_path(&digest).await })
    }
}

fn run_on<T: Send + 'static>(
    runtime: &OwnedRuntime,
    fut: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let runtime = runtime
        .0
        .as_ref()
        .ok_or_else(|| ImageError::Store("the image store's runtime is gone".into()))?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.handle().spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| ImageError::Store("an image store task panicked".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(local_dir("/var/lib/x").unwrap(), PathBuf::from("/var/lib/x"));
        assert_eq!(
            local_dir("file:///var/lib/a%20b").unwrap(),
            PathBuf::from("/var/lib/a b")
        );
        assert!(local_dir("file://relative").is_err());
        assert!(local_dir("https://example.com/x").is_err());
        assert!(local_dir("").is_err());
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("a%2"), None);
    }

    #[test]
    fn s3_locations_are_checked() {
        let open = |loc: &str| {
            ImageStore::open(loc, Path::new("/nonexistent"))
                .unwrap_err()
                .to_string()
        };
        assert!(open("s3://Bad_Bucket/x?endpoint=http://127.0.0.1:1").contains("bucket"));
        assert!(open("s3://bucket/x?endpoint=https://s3.example.com").contains("without TLS"));
        assert!(open("s3://bucket/x?endpoint=http://127.0.0.1:1&colour=blue").contains("colour"));
        assert!(open("s3://bucket/x?endpoint").contains("name=value"));
        let store = ImageStore::open("s3://bucket/some/prefix?endpoint=http://127.0.0.1:1", Path::new("/x")).unwrap();
        assert!(!store.is_local());
    }
}
