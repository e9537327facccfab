//! The snapshot store: create, restore, copy, delete, garbage collection, verification.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use object_store::client::HttpConnector;
use object_store::path::Path as ObjPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::{Error, Result};
use crate::io::{is_zero, sync_dir, HoleProbe};
use crate::location;
use crate::manifest::{chunk_count, chunk_len, validate_id, ChunkDigest, Manifest, FORMAT, SECTOR_BYTES};
use crate::CHUNK_BYTES;

/// Chunks (of up to [`CHUNK_BYTES`] each) an operation has in flight (read but not yet stored, or
/// fetched but not yet written) at any time, on top of the one being read or written.
const IN_FLIGHT: usize = 6;
/// Manifests fetched concurrently when listing.
const LIST_CONCURRENCY: usize = 8;
const MANIFEST_DIR: &str = "snapshots";
const CHUNK_DIR: &str = "chunks/sha256";

fn manifest_path(id: &str) -> ObjPath {
    ObjPath::from(format!("{MANIFEST_DIR}/{id}.json"))
}

fn chunk_path(digest: &ChunkDigest) -> ObjPath {
    ObjPath::from(format!("{CHUNK_DIR}/{}", digest.to_hex()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What to snapshot. See [`SnapshotStore::create`].
#[derive(Clone, Debug)]
pub struct CreateRequest<'a> {
    /// The new snapshot's id (`[A-Za-z0-9._-]`, 1 to 255 characters, not starting with `.`).
    pub snapshot_id: String,
    /// The volume the data comes from (recorded in the manifest).
    pub volume_id: String,
    /// The file to read: the volume itself (paused) or a point-in-time copy of it, which may be sparse and hold
    /// only the dirty chunks; it must be at least `volume_size` bytes long.
    pub source: &'a Path,
    /// The volume's size in bytes: a multiple of 512, not necessarily of [`CHUNK_BYTES`].
    pub volume_size: u64,
    /// Chunks written since `parent` was taken, as `(first chunk, chunk count)` ranges in [`CHUNK_BYTES`] units.
    /// Only used together with `parent`: then every other chunk that the parent also has (at the same length)
    /// is taken from the parent's manifest without reading `source`. `None`: read and hash everything.
    pub dirty: Option<Vec<(u64, u64)>>,
    /// The previous snapshot of the volume (must still exist in the store when the create starts).
    pub parent: Option<&'a Manifest>,
    /// Recorded in the manifest.
    pub encrypted: bool,
    /// Recorded in the manifest.
    pub key_id: Option<String>,
    /// Recorded in the manifest.
    pub description: String,
    /// Recorded in the manifest (milliseconds since the Unix epoch).
    pub start_time_ms: u64,
}

/// The outcome of [`SnapshotStore::create`].
#[derive(Clone, Debug)]
pub struct CreateReport {
    /// The manifest as written.
    pub manifest: Manifest,
    /// Bytes of chunk objects this call uploaded (content no snapshot in the store held yet; content repeated
    /// inside the volume, or uploaded by a concurrent create of this process, counts once).
    pub stored_bytes: u64,
    /// Chunks whose content was taken from the source (read, or known zero from a hole of a sparse source).
    pub chunks_read: u64,
    /// Chunks taken from the parent's manifest without reading the source (clean per the dirty list).
    pub chunks_reused: u64,
    /// Chunks of the source that are all zero (recorded as `null`, stored nowhere).
    pub chunks_zero: u64,
    /// Chunk objects uploaded.
    pub chunks_uploaded: u64,
    /// Wall time of the call.
    pub elapsed: Duration,
}

/// The outcome of [`SnapshotStore::restore`].
#[derive(Clone, Debug)]
pub struct RestoreReport {
    /// The snapshot restored.
    pub snapshot_id: String,
    /// Size of the restored file.
    pub bytes: u64,
    /// Bytes of non-zero chunks fetched, verified and written (the rest are holes).
    pub data_bytes: u64,
    /// Wall time of the call.
    pub elapsed: Duration,
    /// The snapshot's volume size divided by the wall time, in MiB/s.
    pub mib_per_s: f64,
}

/// The outcome of a garbage collection ([`SnapshotStore::gc`], [`SnapshotStore::delete`]).
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    /// Manifests found (their chunks were all kept).
    pub manifests: u64,
    /// Chunk objects kept (referenced by a manifest or by an operation in progress).
    pub chunks_kept: u64,
    /// Chunk objects deleted.
    pub chunks_deleted: u64,
    /// Sum of the sizes of the deleted chunk objects.
    pub bytes_freed: u64,
    /// Objects under `chunks/sha256/` whose name is not a digest (left alone).
    pub foreign_objects: u64,
    /// Half-written upload files (`<name>#<n>`) of a killed process removed from a local store.
    pub staged_files_removed: u64,
}

/// What is wrong with one chunk, as found by [`SnapshotStore::verify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkProblemKind {
    /// The chunk object is not in the store.
    Missing,
    /// The chunk object's content does not hash to its name, or has the wrong length.
    Corrupt,
}

/// One bad chunk found by [`SnapshotStore::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkProblem {
    /// Chunk index in the volume.
    pub index: u64,
    /// The digest the manifest names.
    pub digest: ChunkDigest,
    /// What is wrong.
    pub kind: ChunkProblemKind,
}

/// The outcome of [`SnapshotStore::verify`].
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// The snapshot verified.
    pub snapshot_id: String,
    /// Non-zero chunks fetched and re-hashed.
    pub chunks_checked: u64,
    /// Bytes fetched and re-hashed.
    pub bytes_checked: u64,
    /// Every bad chunk, in chunk order (empty when the snapshot is intact).
    pub problems: Vec<ChunkProblem>,
}

impl VerifyReport {
    /// True when every chunk is present and intact.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// `Ok(self)` when intact, else the first problem as [`Error::ChunkMissing`] / [`Error::ChunkCorrupt`].
    pub fn into_result(self) -> Result<Self> {
        match self.problems.first() {
            None => Ok(self),
            Some(p) => Err(problem_error(&self.snapshot_id, p)),
        }
    }
}

fn problem_error(snapshot_id: &str, p: &ChunkProblem) -> Error {
    let (snapshot_id, index, digest) = (snapshot_id.to_string(), p.index, p.digest.to_hex());
    match p.kind {
        ChunkProblemKind::Missing => Error::ChunkMissing {
            snapshot_id,
            index,
            digest,
        },
        ChunkProblemKind::Corrupt => Error::ChunkCorrupt {
            snapshot_id,
            index,
            digest,
        },
    }
}

/// In-process bookkeeping that makes garbage collection safe next to running operations.
#[derive(Default)]
struct State {
    /// Chunks that running operations rely on although no manifest may reference them yet (a create's uploads,
    /// the parent chunks it reuses, the chunks a restore is reading), with a count of holders. GC treats them
    /// as referenced.
    pending: HashMap<ChunkDigest, usize>,
    /// Creates between their start and their end: while any runs, a local store's staged upload files may be
    /// live uploads, so GC leaves them alone.
    creates_running: usize,
    /// One gate per chunk being looked up or uploaded, so that two chunks of the same content (in one create or
    /// in two) are not uploaded (and counted in `stored_bytes`) twice: the second waits and then finds it.
    gates: HashMap<ChunkDigest, Arc<tokio::sync::Mutex<()>>>,
}

impl State {
    fn hold(&mut self, digest: ChunkDigest) {
        *self.pending.entry(digest).or_insert(0) += 1;
    }

    fn release(&mut self, digest: &ChunkDigest) {
        if let Some(n) = self.pending.get_mut(digest) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(digest);
            }
        }
    }
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    local_root: Option<PathBuf>,
    /// Serializes the store's mutations: taken briefly by creates (to check and hold chunks, and to publish
    /// their manifest), and for a whole delete/gc/copy.
    state: tokio::sync::Mutex<State>,
}

impl Inner {
    async fn manifest_exists(&self, id: &str) -> Result<bool> {
        match self.store.head(&manifest_path(id)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Error::store(&format!("looking up snapshot {id}"), e)),
        }
    }

    async fn get_manifest(&self, id: &str) -> Result<Manifest> {
        let ctx = || format!("reading snapshot {id}");
        let bytes = match self.store.get(&manifest_path(id)).await {
            Ok(r) => r.bytes().await.map_err(|e| Error::store(&ctx(), e))?,
            Err(object_store::Error::NotFound { .. }) => return Err(Error::NotFound(id.to_string())),
            Err(e) => return Err(Error::store(&ctx(), e)),
        };
        Manifest::from_json(&bytes, Some(id))
    }

    /// Writes a manifest that must not exist yet, in one atomic put (a reader sees all of it or nothing).
    ///
    /// The existence check, made under the store lock (hearthd is the only writer), is what guards against
    /// overwriting. A local store also writes create-only (a hard link that fails if the name exists); S3-compatible
    /// servers differ in their support of conditional puts, so there a plain put follows the check.
    async fn put_new_manifest(&self, m: &Manifest) -> Result<()> {
        let id = &m.snapshot_id;
        if self.manifest_exists(id).await? {
            return Err(Error::AlreadyExists(id.clone()));
        }
        let payload = PutPayload::from(Bytes::from(m.to_json()));
        let mode = if self.local_root.is_some() {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        let options = PutOptions {
            mode,
            ..Default::default()
        };
        match self.store.put_opts(&manifest_path(id), payload, options).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(Error::AlreadyExists(id.clone())),
            Err(e) => Err(Error::store(&format!("writing manifest of {id}"), e)),
        }
    }

    async fn list_manifests(self: &Arc<Self>) -> Result<Vec<Manifest>> {
        let prefix = ObjPath::from(MANIFEST_DIR);
        let metas: Vec<ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| Error::store("listing snapshots", e))?;
        let ids: Vec<String> = metas
            .iter()
            .filter_map(|m| m.location.filename()?.strip_suffix(".json").map(str::to_string))
            .collect();
        let this = Arc::clone(self);
        stream::iter(ids)
            .map(move |id| {
                let this = Arc::clone(&this);
                async move {
                    match this.get_manifest(&id).await {
                        // Deleted between the listing and the read.
                        Err(Error::NotFound(_)) => Ok(None),
                        other => other.map(Some),
                    }
                }
            })
            .buffered(LIST_CONCURRENCY)
            .try_filter_map(|m| async move { Ok(m) })
            .try_collect()
            .await
    }

    /// Makes sure chunk `digest` (whose content is `data`) is in the store; returns the bytes uploaded.
    async fn ensure_chunk(&self, digest: ChunkDigest, data: Bytes) -> Result<u64> {
        let path = chunk_path(&digest);
        let ctx = || format!("storing chunk {digest}");
        match self.store.head(&path).await {
            Ok(meta) if meta.size == data.len() as u64 => return Ok(0),
            // Present with the wrong size (damaged): rewrite it with the good content.
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::store(&ctx(), e)),
        }
        let len = data.len() as u64;
        // Overwrite is fine: the content is determined by the name.
        self.store
            .put(&path, PutPayload::from(data))
            .await
            .map_err(|e| Error::store(&ctx(), e))?;
        Ok(len)
    }

    /// Fetches chunk `index` of a snapshot and checks it hashes to `digest` and has the expected length.
    async fn fetch_chunk(&self, snapshot_id: &str, index: u64, digest: ChunkDigest, len: u64) -> Result<Bytes> {
        let path = chunk_path(&digest);
        let missing = || Error::ChunkMissing {
            snapshot_id: snapshot_id.to_string(),
            index,
            digest: digest.to_hex(),
        };
        let ctx = || format!("reading chunk {index} ({digest}) of snapshot {snapshot_id}");
        let data = match self.store.get(&path).await {
            Ok(r) => match r.bytes().await {
                Ok(b) => b,
                Err(object_store::Error::NotFound { .. }) => return Err(missing()),
                Err(e) => return Err(Error::store(&ctx(), e)),
            },
            Err(object_store::Error::NotFound { .. }) => return Err(missing()),
            Err(e) => return Err(Error::store(&ctx(), e)),
        };
        let to_hash = data.clone();
        let actual = tokio::task::spawn_blocking(move || ChunkDigest::of(&to_hash))
            .await
            .map_err(|e| Error::Store(format!("hashing chunk {index}: {e}")))?;
        if actual != digest {
            return Err(Error::ChunkCorrupt {
                snapshot_id: snapshot_id.to_string(),
                index,
                digest: digest.to_hex(),
            });
        }
        if data.len() as u64 != len {
            return Err(Error::InvalidManifest(format!(
                "{snapshot_id}: chunk {index} ({digest}) holds {} bytes, but that chunk of the volume is {len} bytes",
                data.len()
            )));
        }
        Ok(data)
    }

    /// Mark and sweep. The caller holds the state lock for the whole call, so no manifest appears or
    /// disappears and no chunk becomes pending meanwhile.
    async fn gc_locked(self: &Arc<Self>, state: &State) -> Result<GcReport> {
        let manifests = self.list_manifests().await?;
        let mut report = GcReport {
            manifests: manifests.len() as u64,
            ..Default::default()
        };
        let mut marked: HashSet<ChunkDigest> = state.pending.keys().copied().collect();
        for m in &manifests {
            marked.extend(m.referenced().copied());
        }
        drop(manifests);
        let prefix = ObjPath::from(CHUNK_DIR);
        let mut doomed = Vec::new();
        let mut listing = self.store.list(Some(&prefix));
        while let Some(meta) = listing
            .try_next()
            .await
            .map_err(|e| Error::store("listing chunks", e))?
        {
            match meta.location.filename().and_then(ChunkDigest::from_hex) {
                Some(d) if marked.contains(&d) => report.chunks_kept += 1,
                Some(_) => {
                    report.bytes_freed += meta.size;
                    doomed.push(Ok(meta.location));
                }
                None => report.foreign_objects += 1,
            }
        }
        report.chunks_deleted = doomed.len() as u64;
        let results: Vec<_> = self.store.delete_stream(stream::iter(doomed).boxed()).collect().await;
        for r in results {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::store("deleting unreferenced chunk", e)),
            }
        }
        if let (Some(root), 0) = (&self.local_root, state.creates_running) {
            let root = root.clone();
            report.staged_files_removed = tokio::task::spawn_blocking(move || remove_staged_files(&root))
                .await
                .map_err(|e| Error::Store(format!("cleaning staged files: {e}")))??;
        }
        Ok(report)
    }
}

/// Removes the `<name>#<digits>` files `object_store`'s local backend stages uploads in (and renames into
/// place when complete): one left behind belongs to a process killed mid-upload. Only called when no create
/// of this process is running (nothing else writes there).
fn remove_staged_files(root: &Path) -> Result<u64> {
    let mut removed = 0;
    for dir in [root.join(CHUNK_DIR), root.join(MANIFEST_DIR)] {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let staged = matches!(name.rsplit_once('#'),
                Some((_, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if staged {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(entry.path(), e)),
                }
            }
        }
    }
    Ok(removed)
}

/// Expands `(first chunk, count)` ranges into one flag per chunk (ranges past the end are clipped).
fn dirty_bitmap(dirty: &[(u64, u64)], chunks: u64) -> Result<Vec<bool>> {
    let mut map = vec![false; chunks as usize];
    for &(start, count) in dirty {
        let end = start
            .checked_add(count)
            .ok_or_else(|| Error::InvalidArgument(format!("dirty range ({start}, {count}) overflows")))?;
        for i in start.min(chunks)..end.min(chunks) {
            map[i as usize] = true;
        }
    }
    Ok(map)
}

/// One chunk's trip through the create pipeline.
struct ChunkOut {
    index: u64,
    /// Set once the digest is held in the pending set (to be released at the end of the create).
    held: Option<ChunkDigest>,
    uploaded: Result<u64>,
}

/// What a create has gathered so far.
struct CreateProgress {
    chunks: Vec<Option<ChunkDigest>>,
    held: Vec<ChunkDigest>,
    stored_bytes: u64,
    chunks_uploaded: u64,
    error: Option<Error>,
}

impl CreateProgress {
    fn absorb(&mut self, out: std::result::Result<ChunkOut, mpsc::RecvError>) {
        let out = match out {
            Ok(out) => out,
            Err(_) => {
                self.error
                    .get_or_insert(Error::Store("a chunk upload task ended without a result".into()));
                return;
            }
        };
        if let Some(d) = out.held {
            self.held.push(d);
        }
        match (out.uploaded, out.held) {
            (Ok(n), Some(d)) => {
                self.chunks[out.index as usize] = Some(d);
                self.stored_bytes += n;
                self.chunks_uploaded += u64::from(n > 0);
            }
            (Ok(_), None) => unreachable!("a stored chunk always has a digest"),
            (Err(e), _) => {
                self.error.get_or_insert(e);
            }
        }
    }
}

/// An EBS-style snapshot store on an [`ObjectStore`], with a blocking API.
///
/// Every method blocks the calling thread; call it from a plain thread or from tokio's `spawn_blocking`, not
/// from an async task. The store owns a small tokio runtime of its own for the object-store I/O (futures are
/// spawned on it and awaited over a channel, never with `block_on`), so it also works from inside another
/// runtime. Share it between threads with an `Arc`.
pub struct SnapshotStore {
    inner: Arc<Inner>,
    handle: tokio::runtime::Handle,
    /// `Some` until drop, which shuts it down without blocking (so dropping inside async code is fine).
    runtime: Option<tokio::runtime::Runtime>,
    display: String,
}

impl fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("location", &self.display)
            .finish()
    }
}

impl Drop for SnapshotStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl SnapshotStore {
    /// Opens a store location:
    /// - a local directory path or `file:///path` (created if missing; every write is fsynced);
    /// - `s3://bucket[/prefix]?endpoint=http://host:port[&region=…][&access_key_id=…&secret_access_key=…]`,
    ///   an S3-compatible server over plain HTTP (hearth has no TLS: `https` endpoints are refused). Keys not
    ///   in the URL come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`);
    ///   the region defaults to `AWS_REGION`, else `us-east-1`.
    ///
    /// The location (bucket prefix) must be dedicated to snapshots: garbage collection deletes every chunk
    /// object under `chunks/sha256/` that no manifest references.
    ///
    /// An `s3://` location needs an HTTP transport for object_store's S3 client (hearth builds object_store
    /// without its reqwest transport): use [`Self::open_with_http`]; here it is an [`Error::InvalidArgument`].
    pub fn open(location: &str) -> Result<Self> {
        Self::from_opened(location::open(location, None)?)
    }

    /// Like [`Self::open`], with `http` as the transport of an `s3://` location (for hearth:
    /// `hearth_image::transport::PlainHttpConnector`, plain HTTP/1.1 on hyper, which refuses `https://`).
    pub fn open_with_http(location: &str, http: impl HttpConnector) -> Result<Self> {
        Self::from_opened(location::open(
            location,
            Some(location::SharedConnector(Arc::new(http))),
        )?)
    }

    /// Opens (creating if needed) a store in a local directory.
    pub fn open_local(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_opened(location::open_local(dir.as_ref())?)
    }

    /// Uses an already configured object store (e.g. `object_store::memory::InMemory` in tests).
    pub fn with_object_store(store: Arc<dyn ObjectStore>) -> Result<Self> {
        let display = store.to_string();
        Self::from_opened(location::Opened {
            store,
            local_root: None,
            display,
        })
    }

    fn from_opened(opened: location::Opened) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(2 * IN_FLIGHT + 4)
            .thread_name("hearth-snapshot")
            .enable_all()
            .build()
            .map_err(|e| Error::Store(format!("starting the snapshot store runtime: {e}")))?;
        Ok(SnapshotStore {
            inner: Arc::new(Inner {
                store: opened.store,
                local_root: opened.local_root,
                state: tokio::sync::Mutex::new(State::default()),
            }),
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            display: opened.display,
        })
    }

    /// Where the store is (for logs).
    pub fn location(&self) -> &str {
        &self.display
    }

    /// Starts `fut` on the store's runtime; its result arrives on the returned channel.
    fn submit<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> mpsc::Receiver<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx
    }

    /// Runs `fut` on the store's runtime and waits for it on this thread.
    fn run<T: Send + 'static>(&self, fut: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
        self.submit(fut)
            .recv()
            .unwrap_or_else(|_| Err(Error::Store("an internal task ended without a result".into())))
    }

    /// Drops this process's hold on `digests` (and ends a create if `create`).
    fn release(&self, digests: Vec<ChunkDigest>, create: bool) {
        let inner = Arc::clone(&self.inner);
        let _ = self.run(async move {
            let mut st = inner.state.lock().await;
            for d in &digests {
                st.release(d);
            }
            if create {
                st.creates_running -= 1;
            }
            Ok(())
        });
    }

    /// Takes a snapshot of `req.source` (see [`CreateRequest`]).
    ///
    /// Chunks are read, zero-detected and hashed in a bounded pipeline (at most a few chunks in memory);
    /// each non-zero chunk is uploaded as `chunks/sha256/<hex>` unless the store already has it, so only
    /// content that no snapshot holds yet is stored. With a dirty list and a parent, clean chunks are taken
    /// from the parent's manifest without reading them. The manifest is written last, atomically: until it
    /// is, the snapshot does not exist (an interrupted create leaves only orphan chunks for [`Self::gc`]).
    pub fn create(&self, req: CreateRequest<'_>) -> Result<CreateReport> {
        let started = Instant::now();
        validate_id(&req.snapshot_id)?;
        if req.volume_size % SECTOR_BYTES != 0 {
            return Err(Error::InvalidArgument(format!(
                "volume size {} is not a multiple of {SECTOR_BYTES}",
                req.volume_size
            )));
        }
        if let Some(parent) = req.parent {
            parent.validate()?;
        }
        let file = File::open(req.source).map_err(|e| Error::io(req.source, e))?;
        let source_len = file.metadata().map_err(|e| Error::io(req.source, e))?.len();
        if source_len < req.volume_size {
            return Err(Error::SizeMismatch {
                what: format!("source {} is shorter than the volume", req.source.display()),
                expected: req.volume_size,
                actual: source_len,
            });
        }
        let n = chunk_count(req.volume_size, CHUNK_BYTES);
        let base = match (&req.dirty, req.parent) {
            (Some(dirty), Some(parent)) if parent.chunk_bytes == CHUNK_BYTES => Some((dirty_bitmap(dirty, n)?, parent)),
            _ => None,
        };

        // Begin under the lock: the id is free, the parent still exists, and its chunks are held so that a
        // concurrent delete of the parent cannot collect the chunks this snapshot is about to reference.
        let held: Vec<ChunkDigest> = base
            .as_ref()
            .map(|(_, p)| p.referenced().copied().collect())
            .unwrap_or_default();
        {
            let inner = Arc::clone(&self.inner);
            let (id, parent_id, held) = (
                req.snapshot_id.clone(),
                base.as_ref().map(|b| b.1.snapshot_id.clone()),
                held.clone(),
            );
            self.run(async move {
                let mut st = inner.state.lock().await;
                if inner.manifest_exists(&id).await? {
                    return Err(Error::AlreadyExists(id));
                }
                if let Some(pid) = parent_id {
                    if !inner.manifest_exists(&pid).await? {
                        return Err(Error::NotFound(pid));
                    }
                }
                for d in held {
                    st.hold(d);
                }
                st.creates_running += 1;
                Ok(())
            })?;
        }
        let mut progress = CreateProgress {
            chunks: vec![None; n as usize],
            held,
            stored_bytes: 0,
            chunks_uploaded: 0,
            error: None,
        };
        let result = self.create_chunks(&req, &file, base, &mut progress).and_then(|counts| {
            if let Some(e) = progress.error.take() {
                return Err(e);
            }
            let manifest = Manifest {
                format: FORMAT.to_string(),
                snapshot_id: req.snapshot_id.clone(),
                volume_id: req.volume_id.clone(),
                volume_size: req.volume_size,
                chunk_bytes: CHUNK_BYTES,
                chunks: std::mem::take(&mut progress.chunks),
                encrypted: req.encrypted,
                key_id: req.key_id.clone(),
                parent: req.parent.map(|p| p.snapshot_id.clone()),
                description: req.description.clone(),
                start_time_ms: req.start_time_ms,
                stored_bytes: progress.stored_bytes,
            };
            manifest.validate()?;
            let inner = Arc::clone(&self.inner);
            let to_write = manifest.clone();
            self.run(async move {
                let _st = inner.state.lock().await;
                inner.put_new_manifest(&to_write).await
            })?;
            Ok(CreateReport {
                manifest,
                stored_bytes: progress.stored_bytes,
                chunks_read: counts.0,
                chunks_reused: counts.1,
                chunks_zero: counts.2,
                chunks_uploaded: progress.chunks_uploaded,
                elapsed: started.elapsed(),
            })
        });
        self.release(std::mem::take(&mut progress.held), true);
        result
    }

    /// The create pipeline: this thread reads and zero-checks chunks, the runtime hashes and uploads them.
    /// Returns (chunks read, chunks reused, zero chunks); chunk results and the first error land in `progress`.
    fn create_chunks(
        &self,
        req: &CreateRequest<'_>,
        file: &File,
        base: Option<(Vec<bool>, &Manifest)>,
        progress: &mut CreateProgress,
    ) -> Result<(u64, u64, u64)> {
        let n = progress.chunks.len() as u64;
        let (mut read, mut reused, mut zero) = (0, 0, 0);
        let mut holes = HoleProbe::new(file);
        let mut queue: VecDeque<mpsc::Receiver<ChunkOut>> = VecDeque::new();
        let mut failure = None;
        for index in 0..n {
            if progress.error.is_some() {
                break;
            }
            let len = chunk_len(req.volume_size, CHUNK_BYTES, index);
            if let Some((dirty, parent)) = &base {
                if !dirty[index as usize] && index < parent.chunk_count() && parent.chunk_len(index) == len {
                    progress.chunks[index as usize] = parent.chunks[index as usize];
                    reused += 1;
                    continue;
                }
            }
            read += 1;
            let offset = index * CHUNK_BYTES;
            if holes.is_hole(offset, offset + len) {
                zero += 1;
                continue;
            }
            let mut data = vec![0u8; len as usize];
            if let Err(e) = file.read_exact_at(&mut data, offset) {
                failure = Some(Error::io(req.source, e));
                break;
            }
            if is_zero(&data) {
                zero += 1;
                continue;
            }
            while queue.len() >= IN_FLIGHT {
                let rx = queue.pop_front().expect("queue is not empty");
                progress.absorb(rx.recv());
            }
            let inner = Arc::clone(&self.inner);
            queue.push_back(self.submit(async move {
                let hashed = tokio::task::spawn_blocking(move || (ChunkDigest::of(&data), data)).await;
                let (digest, data) = match hashed {
                    Ok(x) => x,
                    Err(e) => {
                        let uploaded = Err(Error::Store(format!("hashing chunk {index}: {e}")));
                        return ChunkOut {
                            index,
                            held: None,
                            uploaded,
                        };
                    }
                };
                // Hold before looking: a GC either ran before (and the upload below restores the chunk if it
                // was swept) or runs after and sees it held.
                let gate = {
                    let mut st = inner.state.lock().await;
                    st.hold(digest);
                    Arc::clone(st.gates.entry(digest).or_default())
                };
                let uploaded = {
                    let _turn = gate.lock().await;
                    inner.ensure_chunk(digest, Bytes::from(data)).await
                };
                let mut st = inner.state.lock().await;
                // Only the map and this task have the gate: nobody is waiting on it.
                if Arc::strong_count(&gate) == 2 {
                    st.gates.remove(&digest);
                }
                drop(st);
                ChunkOut {
                    index,
                    held: Some(digest),
                    uploaded,
                }
            }));
        }
        // Drain even after a failure: every held digest must be known so that it can be released.
        for rx in queue {
            progress.absorb(rx.recv());
        }
        match failure {
            Some(e) => Err(e),
            None => Ok((read, reused, zero)),
        }
    }

    /// Restores snapshot `snapshot_id` into `dest` (created or replaced), `size` bytes long (default: the
    /// snapshot's volume size; larger is allowed, for a volume created bigger than its snapshot; smaller is
    /// [`Error::SizeMismatch`]).
    ///
    /// The data goes to a temporary file next to `dest`: sparse (zero chunks stay holes), each chunk verified
    /// against its SHA-256 as it arrives. Only when every chunk is written and the file is fsynced is it
    /// renamed over `dest`; on any error (a missing or corrupt chunk: [`Error::ChunkMissing`],
    /// [`Error::ChunkCorrupt`]) the temporary file is removed and `dest` is untouched.
    pub fn restore(&self, snapshot_id: &str, dest: &Path, size: Option<u64>) -> Result<RestoreReport> {
        let started = Instant::now();
        let manifest = self.get_and_hold(snapshot_id)?;
        let held: Vec<ChunkDigest> = manifest.referenced().copied().collect();
        let result = self.restore_held(&manifest, dest, size);
        self.release(held, false);
        let (bytes, data_bytes) = result?;
        let elapsed = started.elapsed();
        let mib_per_s = manifest.volume_size as f64 / (1 << 20) as f64 / elapsed.as_secs_f64().max(1e-9);
        Ok(RestoreReport {
            snapshot_id: snapshot_id.to_string(),
            bytes,
            data_bytes,
            elapsed,
            mib_per_s,
        })
    }

    /// Reads a manifest and holds its chunks (so that deleting the snapshot meanwhile does not pull them away).
    fn get_and_hold(&self, snapshot_id: &str) -> Result<Manifest> {
        validate_id(snapshot_id)?;
        let inner = Arc::clone(&self.inner);
        let id = snapshot_id.to_string();
        self.run(async move {
            let mut st = inner.state.lock().await;
            let m = inner.get_manifest(&id).await?;
            for d in m.referenced() {
                st.hold(*d);
            }
            Ok(m)
        })
    }

    fn restore_held(&self, m: &Manifest, dest: &Path, size: Option<u64>) -> Result<(u64, u64)> {
        let size = size.unwrap_or(m.volume_size);
        if size < m.volume_size {
            return Err(Error::SizeMismatch {
                what: format!(
                    "restore size of snapshot {} is smaller than its volume size",
                    m.snapshot_id
                ),
                expected: m.volume_size,
                actual: size,
            });
        }
        if size % SECTOR_BYTES != 0 {
            return Err(Error::InvalidArgument(format!(
                "restore size {size} is not a multiple of {SECTOR_BYTES}"
            )));
        }
        let name = dest.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            Error::InvalidArgument(format!("restore destination {} has no file name", dest.display()))
        })?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = dir.join(format!(
            ".{name}.restore-{}-{}.tmp",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        let written = self.restore_into(m, &file, &tmp, size).and_then(|data_bytes| {
            file.sync_all().map_err(|e| Error::io(&tmp, e))?;
            Ok(data_bytes)
        });
        drop(file);
        let data_bytes =
            match written.and_then(|b| std::fs::rename(&tmp, dest).map(|_| b).map_err(|e| Error::io(dest, e))) {
                Ok(b) => b,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            };
        sync_dir(&dir)?;
        Ok((size, data_bytes))
    }

    fn restore_into(&self, m: &Manifest, file: &File, path: &Path, size: u64) -> Result<u64> {
        file.set_len(size).map_err(|e| Error::io(path, e))?;
        let mut data_bytes = 0;
        let mut queue: VecDeque<(u64, mpsc::Receiver<Result<Bytes>>)> = VecDeque::new();
        let write = |index: u64, rx: mpsc::Receiver<Result<Bytes>>| -> Result<u64> {
            let data = rx
                .recv()
                .unwrap_or_else(|_| Err(Error::Store("a chunk fetch task ended without a result".into())))?;
            file.write_all_at(&data, index * m.chunk_bytes)
                .map_err(|e| Error::io(path, e))?;
            Ok(data.len() as u64)
        };
        for (index, digest) in m.chunks.iter().enumerate() {
            let Some(digest) = *digest else { continue };
            let index = index as u64;
            if queue.len() >= IN_FLIGHT {
                let (i, rx) = queue.pop_front().expect("queue is not empty");
                data_bytes += write(i, rx)?;
            }
            let inner = Arc::clone(&self.inner);
            let (id, len) = (m.snapshot_id.clone(), m.chunk_len(index));
            queue.push_back((
                index,
                self.submit(async move { inner.fetch_chunk(&id, index, digest, len).await }),
            ));
        }
        for (i, rx) in queue {
            data_bytes += write(i, rx)?;
        }
        Ok(data_bytes)
    }

    /// Re-reads and re-hashes every chunk snapshot `snapshot_id` references; problems are listed in the report
    /// (an `Err` is only for a missing snapshot or a store failure).
    pub fn verify(&self, snapshot_id: &str) -> Result<VerifyReport> {
        let m = self.get_and_hold(snapshot_id)?;
        let held: Vec<ChunkDigest> = m.referenced().copied().collect();
        let mut report = VerifyReport {
            snapshot_id: m.snapshot_id.clone(),
            chunks_checked: 0,
            bytes_checked: 0,
            problems: Vec::new(),
        };
        let mut queue: VecDeque<(u64, ChunkDigest, mpsc::Receiver<Result<Bytes>>)> = VecDeque::new();
        let check = |report: &mut VerifyReport,
                     (index, digest, rx): (u64, ChunkDigest, mpsc::Receiver<Result<Bytes>>)| {
            let out = rx
                .recv()
                .unwrap_or_else(|_| Err(Error::Store("a chunk fetch task ended without a result".into())));
            report.chunks_checked += 1;
            let kind = match out {
                Ok(data) => {
                    report.bytes_checked += data.len() as u64;
                    return Ok(());
                }
                Err(Error::ChunkMissing { .. }) => ChunkProblemKind::Missing,
                Err(Error::ChunkCorrupt { .. } | Error::InvalidManifest(_)) => ChunkProblemKind::Corrupt,
                Err(e) => return Err(e),
            };
            report.problems.push(ChunkProblem { index, digest, kind });
            Ok(())
        };
        let mut result = Ok(());
        for (index, digest) in m.chunks.iter().enumerate() {
            let Some(digest) = *digest else { continue };
            let index = index as u64;
            if queue.len() >= IN_FLIGHT {
                result = check(&mut report, queue.pop_front().expect("queue is not empty"));
                if result.is_err() {
                    break;
                }
            }
            let inner = Arc::clone(&self.inner);
            let (id, len) = (m.snapshot_id.clone(), m.chunk_len(index));
            queue.push_back((
                index,
                digest,
                self.submit(async move { inner.fetch_chunk(&id, index, digest, len).await }),
            ));
        }
        for item in queue {
            if result.is_ok() {
                result = check(&mut report, item);
            }
        }
        self.release(held, false);
        result.map(|()| report)
    }

    /// Deletes snapshot `snapshot_id` (its manifest), then garbage-collects the chunks no remaining snapshot
    /// references. Chunks shared with other snapshots stay. If the collection fails (an unreadable manifest, a
    /// store error), the snapshot is deleted all the same and the error is returned; the next gc finishes the job.
    pub fn delete(&self, snapshot_id: &str) -> Result<GcReport> {
        validate_id(snapshot_id)?;
        let inner = Arc::clone(&self.inner);
        let id = snapshot_id.to_string();
        self.run(async move {
            let st = inner.state.lock().await;
            let path = manifest_path(&id);
            match inner.store.head(&path).await {
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => return Err(Error::NotFound(id)),
                Err(e) => return Err(Error::store(&format!("looking up snapshot {id}"), e)),
            }
            match inner.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::store(&format!("deleting snapshot {id}"), e)),
            }
            // The manifest's removal must be durable before any of its chunks go.
            if let Some(root) = &inner.local_root {
                let dir = root.join(MANIFEST_DIR);
                tokio::task::spawn_blocking(move || sync_dir(&dir))
                    .await
                    .map_err(|e| Error::Store(format!("syncing the manifest directory: {e}")))??;
            }
            inner.gc_locked(&st).await
        })
    }

    /// Garbage-collects: deletes every chunk object that no manifest references and no running operation of
    /// this process holds (the orphans of an interrupted create). Call it at startup.
    pub fn gc(&self) -> Result<GcReport> {
        let inner = Arc::clone(&self.inner);
        self.run(async move {
            let st = inner.state.lock().await;
            inner.gc_locked(&st).await
        })
    }

    /// Copies snapshot `source_id` as `new_id`: a new manifest referencing the same chunks (no data is copied;
    /// `stored_bytes` is 0, `parent` is `None`, the start time is now).
    pub fn copy(&self, source_id: &str, new_id: &str, description: &str) -> Result<Manifest> {
        validate_id(source_id)?;
        validate_id(new_id)?;
        let inner = Arc::clone(&self.inner);
        let (source_id, new_id, description) = (source_id.to_string(), new_id.to_string(), description.to_string());
        self.run(async move {
            let _st = inner.state.lock().await;
            let source = inner.get_manifest(&source_id).await?;
            let m = Manifest {
                snapshot_id: new_id,
                description,
                parent: None,
                start_time_ms: now_ms(),
                stored_bytes: 0,
                ..source
            };
            inner.put_new_manifest(&m).await?;
            Ok(m)
        })
    }

    /// The manifest of snapshot `snapshot_id` ([`Error::NotFound`] if there is no complete snapshot of that id).
    pub fn get(&self, snapshot_id: &str) -> Result<Manifest> {
        validate_id(snapshot_id)?;
        let inner = Arc::clone(&self.inner);
        let id = snapshot_id.to_string();
        self.run(async move { inner.get_manifest(&id).await })
    }

    /// Every (complete) snapshot, oldest first.
    pub fn list(&self) -> Result<Vec<Manifest>> {
        let inner = Arc::clone(&self.inner);
        let mut all = self.run(async move { inner.list_manifests().await })?;
        all.sort_by(|a, b| (a.start_time_ms, &a.snapshot_id).cmp(&(b.start_time_ms, &b.snapshot_id)));
        Ok(all)
    }

    /// The sum of the sizes of all chunk objects in the store: what the store actually holds.
    pub fn stored_bytes_total(&self) -> Result<u64> {
        let inner = Arc::clone(&self.inner);
        self.run(async move {
            let prefix = ObjPath::from(CHUNK_DIR);
            inner
                .store
                .list(Some(&prefix))
                .try_fold(0u64, |sum, meta| async move { Ok(sum + meta.size) })
                .await
                .map_err(|e| Error::store("listing chunks", e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_ranges_expand_and_clip() {
        let map = dirty_bitmap(&[(1, 2), (5, 0), (7, 10)], 9).unwrap();
        assert_eq!(map, [false, true, true, false, false, false, false, true, true]);
        assert!(dirty_bitmap(&[(u64::MAX, 2)], 4).is_err());
    }

    #[test]
    fn pending_counts_holders() {
        let mut st = State::default();
        let d = ChunkDigest::of(b"x");
        st.hold(d);
        st.hold(d);
        st.release(&d);
        assert!(st.pending.contains_key(&d));
        st.release(&d);
        assert!(st.pending.is_empty());
    }
}
