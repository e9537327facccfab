//! The SQLite store: one file in WAL mode with `synchronous=FULL`, a table per record kind
//! (indexed key columns plus the record as JSON), migrations tracked in `user_version`.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Changes, Snapshot, Store, StoreError};

/// Schema migrations; migration `n` (1-based) brings the schema from version `n-1` to `n`.
const MIGRATIONS: &[&str] = &[
    // 1: the records.
    "CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        reservation_id TEXT NOT NULL,
        launch_time_ms INTEGER NOT NULL,
        state TEXT NOT NULL,
        host_id TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE INDEX instances_by_launch ON instances (launch_time_ms, id);
    CREATE INDEX instances_by_host ON instances (host_id);
    CREATE TABLE volumes (id TEXT PRIMARY KEY, state TEXT NOT NULL, doc TEXT NOT NULL);
    CREATE TABLE images (id TEXT PRIMARY KEY, name TEXT NOT NULL, doc TEXT NOT NULL);
    CREATE TABLE key_pairs (name TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, doc TEXT NOT NULL);
    CREATE TABLE hosts (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
    CREATE TABLE client_tokens (token TEXT PRIMARY KEY, reservation_id TEXT NOT NULL, doc TEXT NOT NULL);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);",
    // 2: lookups by state (purge of terminated instances, deleted volumes) and by reservation.
    "CREATE INDEX instances_by_state ON instances (state);
    CREATE INDEX instances_by_reservation ON instances (reservation_id);
    CREATE INDEX volumes_by_state ON volumes (state);",
    // 3: EBS snapshots.
    "CREATE TABLE snapshots (id TEXT PRIMARY KEY, volume_id TEXT NOT NULL, doc TEXT NOT NULL);",
    // 4: VPCs, subnets, security groups, Elastic IPs.
    "CREATE TABLE net (id TEXT PRIMARY KEY, kind TEXT NOT NULL, doc TEXT NOT NULL);",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// hearthd's state in one SQLite file.
pub struct SqliteStore {
    connection: Connection,
}

fn db(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Database { operation, source }
}

fn encode<T: Serialize>(record: &T) -> Result<String, StoreError> {
    serde_json::to_string(record).map_err(|source| StoreError::Encoding {
        operation: "encode a record",
        source,
    })
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_at_version(path, SCHEMA_VERSION)
    }

    /// Opens and migrates up to `version` only (tests of migrations).
    pub fn open_at_version(path: &Path, version: i64) -> Result<SqliteStore, StoreError> {
        let connection = Connection::open(path).map_err(db("open the database"))?;
        let mode: String = connection
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(db("enable WAL"))?;
        debug_assert!(mode.eq_ignore_ascii_case("wal") || mode.eq_ignore_ascii_case("memory"));
        connection
            .execute_batch("PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;")
            .map_err(db("set pragmas"))?;
        let mut store = SqliteStore { connection };
        store.migrate(version)?;
        Ok(store)
    }

    /// The schema version of the open file.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(db("read user_version"))
    }

    fn migrate(&mut self, target: i64) -> Result<(), StoreError> {
        let found = self.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        for version in found + 1..=target {
            let tx = self.connection.transaction().map_err(db("begin a migration"))?;
            tx.execute_batch(MIGRATIONS[(version - 1) as usize])
                .map_err(db("migrate the schema"))?;
            tx.pragma_update(None, "user_version", version)
                .map_err(db("set user_version"))?;
            tx.commit().map_err(db("commit a migration"))?;
        }
        Ok(())
    }

    fn load_docs<T: DeserializeOwned>(&self, sql: &str) -> Result<Vec<T>, StoreError> {
        let mut statement = self.connection.prepare_cached(sql).map_err(db("prepare a load"))?;
        let mut rows = statement.query([]).map_err(db("load records"))?;
        let mut records = Vec::new();
        while let Some(row) = rows.next().map_err(db("load records"))? {
            let doc: String = row.get(0).map_err(db("load records"))?;
            records.push(serde_json::from_str(&doc).map_err(|source| StoreError::Encoding {
                operation: "decode a record",
                source,
            })?);
        }
        Ok(records)
    }
}

fn write_changes(tx: &Transaction<'_>, changes: &Changes) -> Result<(), StoreError> {
    for instance in &changes.instances {
        let doc = encode(instance)?;
        tx.prepare_cached(
            "INSERT OR REPLACE INTO instances (id, reservation_id, launch_time_ms, state, host_id, doc)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut s| {
            s.execute(params![
                instance.id,
                instance.reservation_id,
                instance.launch_time_ms,
                instance.state.name(),
                instance.host_id,
                doc
            ])
        })
        .map_err(db("write an instance"))?;
    }
    for id in &changes.deleted_instances {
        tx.execute("DELETE FROM instances WHERE id = ?1", [id])
            .map_err(db("delete an instance"))?;
    }
    for volume in &changes.volumes {
        let doc = encode(volume)?;
        tx.prepare_cached("INSERT OR REPLACE INTO volumes (id, state, doc) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![volume.id, volume.state.as_str(), doc]))
            .map_err(db("write a volume"))?;
    }
    for id in &changes.deleted_volumes {
        tx.execute("DELETE FROM volumes WHERE id = ?1", [id])
            .map_err(db("delete a volume"))?;
    }
    for image in &changes.images {
        tx.execute(
            "INSERT OR REPLACE INTO images (id, name, doc) VALUES (?1, ?2, ?3)",
            params![image.id, image.name, encode(image)?],
        )
        .map_err(db("write an image"))?;
    }
    for id in &changes.deleted_images {
        tx.execute("DELETE FROM images WHERE id = ?1", [id])
            .map_err(db("delete an image"))?;
    }
    for key_pair in &changes.key_pairs {
        tx.execute(
            "INSERT OR REPLACE INTO key_pairs (name, id, doc) VALUES (?1, ?2, ?3)",
            params![key_pair.name, key_pair.id, encode(key_pair)?],
        )
        .map_err(db("write a key pair"))?;
    }
    for name in &changes.deleted_key_pairs {
        tx.execute("DELETE FROM key_pairs WHERE name = ?1", [name])
            .map_err(db("delete a key pair"))?;
    }
    for host in &changes.hosts {
        tx.execute(
            "INSERT OR REPLACE INTO hosts (id, doc) VALUES (?1, ?2)",
            params![host.id, encode(host)?],
        )
        .map_err(db("write a host"))?;
    }
    for record in &changes.client_tokens {
        tx.execute(
            "INSERT OR REPLACE INTO client_tokens (token, reservation_id, doc) VALUES (?1, ?2, ?3)",
            params![record.token, record.reservation_id, encode(record)?],
        )
        .map_err(db("write a client token"))?;
    }
    for token in &changes.deleted_client_tokens {
        tx.execute("DELETE FROM client_tokens WHERE token = ?1", [token])
            .map_err(db("delete a client token"))?;
    }
    for snapshot in &changes.snapshots {
        tx.execute(
            "INSERT OR REPLACE INTO snapshots (id, volume_id, doc) VALUES (?1, ?2, ?3)",
            params![snapshot.id, snapshot.volume_id, encode(snapshot)?],
        )
        .map_err(db("write a snapshot"))?;
    }
    for id in &changes.deleted_snapshots {
        tx.execute("DELETE FROM snapshots WHERE id = ?1", [id])
            .map_err(db("delete a snapshot"))?;
    }
    for record in &changes.net {
        tx.execute(
            "INSERT OR REPLACE INTO net (id, kind, doc) VALUES (?1, ?2, ?3)",
            params![record.id(), record.kind(), encode(record)?],
        )
        .map_err(db("write a network record"))?;
    }
    for id in &changes.deleted_net {
        tx.execute("DELETE FROM net WHERE id = ?1", [id])
            .map_err(db("delete a network record"))?;
    }
    if let Some(revision) = changes.revision {
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('revision', ?1)",
            [i64::try_from(revision).unwrap_or(i64::MAX)],
        )
        .map_err(db("write the revision"))?;
    }
    Ok(())
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let revision: Option<i64> = self
            .connection
            .query_row("SELECT value FROM meta WHERE key = 'revision'", [], |row| row.get(0))
            .optional()
            .map_err(db("load the revision"))?;
        Ok(Snapshot {
            instances: self.load_docs("SELECT doc FROM instances ORDER BY launch_time_ms, id")?,
            volumes: self.load_docs("SELECT doc FROM volumes ORDER BY id")?,
            images: self.load_docs("SELECT doc FROM images ORDER BY id")?,
            key_pairs: self.load_docs("SELECT doc FROM key_pairs ORDER BY name")?,
            hosts: self.load_docs("SELECT doc FROM hosts ORDER BY id")?,
            client_tokens: self.load_docs("SELECT doc FROM client_tokens ORDER BY token")?,
            snapshots: self.load_docs("SELECT doc FROM snapshots ORDER BY id")?,
            net: self.load_docs("SELECT doc FROM net ORDER BY kind, id")?,
            revision: revision.unwrap_or(0).max(0) as u64,
        })
    }

    fn commit(&mut self, changes: &Changes) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let tx = self.connection.transaction().map_err(db("begin a change"))?;
        write_changes(&tx, changes)?;
        tx.commit().map_err(db("commit a change"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Host, KeyPair, Tags};
    use crate::testing::TempDir;

    fn host(id: &str, revision: u64) -> Host {
        Host {
            id: id.into(),
            availability_zone: "homelab-1a".into(),
            vcpus: 8,
            memory_mib: 16384,
            agent_version: "test".into(),
            revision,
            underlay_ip: String::new(),
            has_uplink: false,
        }
    }

    #[test]
    fn records_survive_reopen() {
        let dir = TempDir::new("store-reopen");
        let path = dir.path().join("state.db");
        {
            let mut store = SqliteStore::open(&path).unwrap();
            let changes = Changes {
                hosts: vec![host("h-a", 3)],
                key_pairs: vec![KeyPair {
                    name: "k".into(),
                    id: "key-0123456789abcdef0".into(),
                    key_type: "ed25519".into(),
                    fingerprint: "fp".into(),
                    public_key: "ssh-ed25519 AAAA".into(),
                    create_time_ms: 5,
                    tags: Tags::new(),
                }],
                revision: Some(3),
                ..Changes::default()
            };
            store.commit(&changes).unwrap();
        }
        let mut store = SqliteStore::open(&path).unwrap();
        let snapshot = store.load().unwrap();
        assert_eq!(snapshot.hosts, vec![host("h-a", 3)]);
        assert_eq!(snapshot.key_pairs[0].name, "k");
        assert_eq!(snapshot.revision, 3);
        store
            .commit(&Changes {
                deleted_key_pairs: vec!["k".into()],
                ..Changes::default()
            })
            .unwrap();
        assert!(store.load().unwrap().key_pairs.is_empty());
        let mode: String = store
            .connection
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = store
            .connection
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
    }

    #[test]
    fn migrates_an_old_schema_and_keeps_its_records() {
        let dir = TempDir::new("store-migrate");
        let path = dir.path().join("state.db");
        {
            let mut store = SqliteStore::open_at_version(&path, 1).unwrap();
            assert_eq!(store.schema_version().unwrap(), 1);
            store
                .commit(&Changes {
                    hosts: vec![host("h-old", 1)],
                    ..Changes::default()
                })
                .unwrap();
        }
        let mut store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(store.load().unwrap().hosts[0].id, "h-old");
        let indexes: i64 = store
            .connection
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'instances_by_state'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 1);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = TempDir::new("store-newer");
        let path = dir.path().join("state.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            store
                .connection
                .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .unwrap();
        }
        assert!(matches!(SqliteStore::open(&path), Err(StoreError::TooNew { .. })));
    }
}
