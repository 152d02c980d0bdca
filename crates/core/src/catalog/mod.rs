//! The catalog: a SQLite database (`<home>/catalog.db`) of machines, checkpoints, the blob
//! index (which pack holds which chunk or tree), writer sessions and the audit log.
//!
//! **Invariant:** the catalog is a cache of the store. Every pack carries its own index and every
//! checkpoint has a manifest in the store, so a lost or damaged catalog is rebuilt from the store
//! (by the engine, through the insert methods here). That is why opening a damaged file reports
//! [`CatalogError::Corrupt`] rather than trying to salvage it, and why this module never holds
//! chunk data.
//!
//! Concurrency: many cairn processes share the file. It runs in WAL mode so readers never block
//! the writer, and every write transaction starts with `BEGIN IMMEDIATE`, so two writers queue on
//! the 30 s busy timeout instead of one failing with `SQLITE_BUSY` halfway through.
//!
//! Layout: `schema` holds the numbered migrations; each table has its own file of methods.

mod audit;
mod blobs;
mod checkpoints;
mod machines;
mod schema;
mod sessions;
#[cfg(test)]
mod tests;

use crate::model::{BlobId, ModelError, PackId, TreeId};
use rusqlite::config::DbConfig;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Type, ValueRef};
use rusqlite::{Connection, ErrorCode, Row, ToSql};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Row id of a machine. Local to one catalog: a rebuild may assign different keys, which is why
/// machines also carry a stable `uid`.
pub type MachineKey = i64;
/// Row id of a checkpoint. Local to one catalog, like [`MachineKey`].
pub type CheckpointKey = i64;

/// How long a statement waits for another process's write lock before giving up. Long enough to
/// ride out a large checkpoint commit or a gc batch in another process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Prepared statements kept per connection; comfortably above the number of distinct
/// `prepare_cached` call sites in this module.
const STATEMENT_CACHE: usize = 64;

/// WAL frames after which a commit folds the WAL into the database file (see `open`).
const WAL_FOLD_FRAMES: i64 = 128;

/// What a folded WAL file is truncated to: about twice what `WAL_FOLD_FRAMES` fills.
const WAL_KEEP_BYTES: i64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineKind {
    /// An ordinary directory tracked in place.
    Dir,
    /// An overlay over a read-only view of a checkpoint's tree.
    Mounted,
}

impl MachineKind {
    /// The spelling stored in the `machines.kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineKind::Dir => "dir",
            MachineKind::Mounted => "mounted",
        }
    }
}

impl ToSql for MachineKind {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for MachineKind {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "dir" => Ok(MachineKind::Dir),
            "mounted" => Ok(MachineKind::Mounted),
            other => Err(FromSqlError::Other(
                format!("unknown machine kind {other:?}").into(),
            )),
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct MachineRow {
    pub id: MachineKey,
    /// Random 128-bit hex, stable across catalog rebuilds (it is stored in the manifests).
    pub uid: String,
    pub name: String,
    pub dir: PathBuf,
    pub kind: MachineKind,
    pub created_at: i64,
    /// The checkpoint the live state descends from; may belong to another machine after a fork.
    pub head: Option<CheckpointKey>,
    /// The version the next checkpoint gets. Only ever grows, so versions are never reused.
    pub next_version: u64,
    /// JSON journal of an interrupted restore, for the engine to resume or roll back.
    pub pending: Option<String>,
    /// A mounted machine's base: the tree its lower layer serves.
    pub base: Option<Base>,
}

/// The tree a mounted machine's lower layer serves, with its totals, so an upper-layer ingest
/// can account for what it does not walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Base {
    pub root: TreeId,
    pub entries: u64,
    pub logical_bytes: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckpointRow {
    pub id: CheckpointKey,
    pub machine_id: MachineKey,
    /// Name of the owning machine, joined in for display and references.
    pub machine: String,
    pub version: u64,
    pub name: Option<String>,
    pub note: String,
    pub author: String,
    pub created_at: i64,
    /// May be a checkpoint of another machine (the one this machine was forked from).
    pub parent: Option<CheckpointKey>,
    pub root: TreeId,
    pub logical_bytes: u64,
    /// Compressed bytes of all distinct blobs this checkpoint references.
    pub stored_bytes: u64,
    /// Compressed bytes of blobs first written by this checkpoint.
    pub added_bytes: u64,
    pub entries: u64,
    /// Made automatically, e.g. the undo point recorded before a restore.
    pub auto: bool,
    pub pinned: bool,
    pub expires_at: Option<i64>,
}

pub struct NewCheckpoint<'a> {
    pub machine_id: MachineKey,
    pub name: Option<&'a str>,
    pub note: &'a str,
    pub author: &'a str,
    pub created_at: i64,
    pub parent: Option<CheckpointKey>,
    pub root: TreeId,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    pub added_bytes: u64,
    pub entries: u64,
    pub auto: bool,
    /// `None`: take the machine's `next_version`. `Some`: use this one (catalog rebuild).
    pub version: Option<u64>,
}

/// Where a blob lives: which pack, at which offset, and how long it is stored and raw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLoc {
    pub id: BlobId,
    /// [`BLOB_CHUNK`] or [`BLOB_TREE`].
    pub kind: u8,
    pub pack: PackId,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
}

/// `BlobLoc::kind` of a file-data chunk.
#[cfg(test)]
pub const BLOB_CHUNK: u8 = 0;
/// `BlobLoc::kind` of a tree object.
#[cfg(test)]
pub const BLOB_TREE: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackRow {
    pub id: PackId,
    pub size: u64,
    pub created_at: i64,
    /// Set when gc found the pack unreferenced; it is deleted once the grace period has passed.
    pub doomed_at: Option<i64>,
}

pub struct AuditRecord<'a> {
    pub time: i64,
    pub author: &'a str,
    /// create | delete | restore | fork | gc | machine-create | machine-rm | ...
    pub op: &'a str,
    pub machine: Option<&'a str>,
    pub target: Option<&'a str>,
    /// "ok" or "error".
    pub outcome: &'a str,
    /// JSON or a message.
    pub detail: &'a str,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditRow {
    pub id: i64,
    pub time: i64,
    pub author: String,
    pub op: String,
    pub machine: Option<String>,
    pub target: Option<String>,
    pub outcome: String,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    pub id: i64,
    pub pid: u32,
    pub started_at: i64,
    pub op: String,
}

/// Everything that can go wrong in the catalog. Each message says what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "cannot open the catalog at {path}: {source}; check that the cairn home exists and is writable"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the catalog is damaged ({reason}); run `cairn check --repair` to rebuild it from the store"
    )]
    Corrupt { reason: String },
    #[error(
        "the catalog has schema version {found} but this cairn reads up to version {supported}; upgrade cairn"
    )]
    TooNew { found: i64, supported: i64 },
    #[error(
        "the catalog stayed locked by another cairn process for over {}s while trying to {op}; retry, or look for a stuck cairn process",
        BUSY_TIMEOUT.as_secs()
    )]
    Busy { op: &'static str },
    #[error("catalog failure while trying to {op}: {source}")]
    Sqlite {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("machine {name} already exists; pick another name or `cairn machine rm {name}`")]
    MachineExists { name: String },
    #[error(
        "a machine with uid {uid} is already in the catalog (as {name}); it was probably imported already"
    )]
    MachineUidExists { uid: String, name: String },
    #[error(
        "no machine with key {id} in the catalog; it may have been removed, list machines again"
    )]
    MachineNotFound { id: MachineKey },
    #[error(
        "no checkpoint with key {id} in the catalog; it may have been deleted, list checkpoints again"
    )]
    CheckpointNotFound { id: CheckpointKey },
    #[error("machine {machine} already has a checkpoint named {name}; pick another name")]
    CheckpointNameTaken { machine: String, name: String },
    #[error(
        "machine {machine} already has a checkpoint v{version}; a version is never reused, so this is a duplicate"
    )]
    VersionTaken { machine: String, version: u64 },
    #[error("pack {id} is not in the catalog; it may have been deleted by gc already")]
    PackNotFound { id: PackId },
    #[error("{what} {value} is out of range (allowed: {min} to {max})", max = i64::MAX)]
    OutOfRange {
        what: &'static str,
        value: u64,
        min: u64,
    },
}

/// Maps a SQLite error to a [`CatalogError`], naming the operation that failed.
///
/// Damage to the file and rows that do not decode both mean the cache no longer matches what we
/// wrote, so both become `Corrupt`, whose message points at the repair.
fn sql_err(op: &'static str, e: rusqlite::Error) -> CatalogError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => CatalogError::Corrupt {
            reason: format!("{op}: {e}"),
        },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => CatalogError::Busy { op },
        _ => match e {
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::Utf8Error(..) => CatalogError::Corrupt {
                reason: format!("{op}: {e}"),
            },
            e => CatalogError::Sqlite { op, source: e },
        },
    }
}

/// Adds the operation name to a SQLite result; see [`sql_err`].
trait Ctx<T> {
    fn ctx(self, op: &'static str) -> Result<T, CatalogError>;
}

impl<T> Ctx<T> for rusqlite::Result<T> {
    fn ctx(self, op: &'static str) -> Result<T, CatalogError> {
        self.map_err(|e| sql_err(op, e))
    }
}

/// Converts a count or size to SQLite's signed integer, refusing what would wrap.
fn to_i64(value: u64, what: &'static str) -> Result<i64, CatalogError> {
    i64::try_from(value).map_err(|_| CatalogError::OutOfRange {
        what,
        value,
        min: 0,
    })
}

fn bad_column(
    idx: usize,
    ty: Type,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, ty, e.into())
}

/// Reads a column that holds a non-negative integer.
fn u64_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(idx)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v))
}

/// Reads a column that holds a 32-bit length.
fn u32_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<u32> {
    let v: i64 = row.get(idx)?;
    u32::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v))
}

/// Reads a 32-byte id column without copying it first.
fn id_col<T>(
    row: &Row<'_>,
    idx: usize,
    parse: fn(&[u8]) -> Result<T, ModelError>,
) -> rusqlite::Result<T> {
    let bytes = row
        .get_ref(idx)?
        .as_blob()
        .map_err(|e| bad_column(idx, Type::Blob, e))?;
    parse(bytes).map_err(|e| bad_column(idx, Type::Blob, e))
}

/// A handle on the catalog database. One per process (or thread); not shared across threads.
pub struct Catalog {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("path", &self.path).finish()
    }
}

impl Catalog {
    /// Opens the catalog at `path`, creating it if missing, and brings its schema up to date.
    ///
    /// A file that is not a database, or is damaged where opening reads, gives
    /// [`CatalogError::Corrupt`]. Damage elsewhere may only show in [`Catalog::quick_check`].
    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        let conn = Connection::open(path).map_err(|source| match source.sqlite_error_code() {
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => CatalogError::Corrupt {
                reason: format!("open {}: {source}", path.display()),
            },
            _ => CatalogError::Open {
                path: path.to_owned(),
                source,
            },
        })?;
        // Set first, so that the pragmas and the migration below already wait for other
        // processes rather than failing.
        conn.busy_timeout(BUSY_TIMEOUT)
            .ctx("set the busy timeout")?;
        // journal_mode reads the header, so this is where a garbage file is first noticed.
        // Switching a new file to WAL takes an exclusive lock, and SQLite reports BUSY at once,
        // without its busy handler, when another connection's first open holds it: retry that
        // for as long as the busy timeout would have waited.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            let mode = conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
                .ctx("switch to WAL mode");
            match mode {
                Err(CatalogError::Busy { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                other => {
                    other?;
                    break;
                }
            }
        }
        // FULL: a checkpoint reported as created must survive power loss, and WAL with NORMAL
        // may lose the last commits.
        conn.pragma_update(None, "synchronous", "FULL")
            .ctx("set synchronous=FULL")?;
        conn.pragma_update(None, "foreign_keys", true)
            .ctx("enable foreign keys")?;
        // Plans must not depend on bound values: otherwise SQLite (built with STAT4) recompiles
        // a cached statement whenever its parameters change, which made every blob lookup of a
        // long-lived view parse and plan its SQL again.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .ctx("fix query plans")?;
        // The last connection to close would otherwise copy the WAL into the database file,
        // fsync both and truncate the WAL: milliseconds at the end of every command, for
        // nothing the commits need (each is durable in the WAL when it returns). SQLite's
        // automatic checkpoint still folds the WAL in once it passes 1000 pages, and gc folds
        // it in completely. The WAL file is part of the catalog: `catalog.db` alone may lack
        // the latest commits.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .ctx("keep the WAL on close")?;
        // But the first connection of a process that finds no other open rebuilds its WAL
        // index by reading the whole WAL, frame by frame: about 5 µs a frame, so 5 ms at
        // SQLite's default threshold of 1000 frames, paid by every command (a fork measured
        // 2-5 ms slower with a full WAL than an empty one). Folding it in at 128 frames
        // bounds that to under a millisecond; the fold itself (128 pages written to the
        // database file, one fsync) runs inside roughly one commit in ten of a fork's size.
        // The size limit truncates the file after a large import's WAL has been folded.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_FOLD_FRAMES)
            .ctx("set the WAL fold threshold")?;
        conn.pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES)
            .ctx("set the WAL size limit")?;
        // Room for every statement this module caches, so the blob lookup on the hot path is
        // never evicted by a burst of other queries (the default holds 16).
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        schema::migrate(&conn)?;
        Ok(Catalog {
            conn,
            path: path.to_owned(),
        })
    }

    /// Opens a read transaction that lasts as long as this connection: one consistent snapshot
    /// for a whole read-only operation, and no lock round trip per query (a restore looks up
    /// thousands of chunks). Only for connections that never write.
    pub fn hold_read_snapshot(&self) -> Result<(), CatalogError> {
        self.conn
            .execute_batch("BEGIN DEFERRED")
            .ctx("begin a read snapshot")?;
        self.conn
            .query_row("SELECT count(*) FROM packs", [], |_| Ok(()))
            .ctx("begin a read snapshot")
    }

    /// Copies every commit in the WAL into the main database file and empties the WAL, as far
    /// as readers allow (`wal_checkpoint(TRUNCATE)`). Returns false if a reader kept it partial.
    pub fn fold_wal(&self) -> Result<bool, CatalogError> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .ctx("fold the WAL into the catalog")?;
        Ok(busy == 0)
    }

    /// Runs `f` with `synchronous=NORMAL`: its commits are visible to every connection at once
    /// but not fsynced; the next synced commit makes them durable with it (the WAL keeps a
    /// prefix of its commits). Only for rows whose loss in a power cut costs nothing a synced
    /// commit of the same operation does not redo. Outside a batch only.
    pub fn without_fsync<T>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, CatalogError>,
    ) -> Result<T, CatalogError> {
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .ctx("set synchronous=NORMAL")?;
        let result = f(self);
        let restored = self
            .conn
            .pragma_update(None, "synchronous", "FULL")
            .ctx("set synchronous=FULL");
        let value = result?;
        restored?;
        Ok(value)
    }

    /// Checks the file's structure, its foreign keys and the catalog's own invariants.
    /// Returns one line per problem found; empty means healthy.
    ///
    /// Damage that stops the check itself is reported as a finding, not an error, since the
    /// caller's next step (rebuild) is the same.
    pub fn quick_check(&self) -> Result<Vec<String>, CatalogError> {
        let mut findings = Vec::new();
        match self.check_findings(&mut findings) {
            Ok(()) => Ok(findings),
            Err(CatalogError::Corrupt { reason }) => {
                findings.push(reason);
                Ok(findings)
            }
            Err(e) => Err(e),
        }
    }

    fn check_findings(&self, out: &mut Vec<String>) -> Result<(), CatalogError> {
        const OP: &str = "check the catalog";
        let mut stmt = self.conn.prepare("PRAGMA quick_check").ctx(OP)?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).ctx(OP)?;
        for row in rows {
            let line = row.ctx(OP)?;
            if line != "ok" {
                out.push(line);
            }
        }
        let mut stmt = self.conn.prepare("PRAGMA foreign_key_check").ctx(OP)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(format!(
                    "{} row {} points to a missing {} row",
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<i64>>(1)?
                        .map_or_else(|| "?".to_owned(), |v| v.to_string()),
                    r.get::<_, String>(2)?
                ))
            })
            .ctx(OP)?;
        for row in rows {
            out.push(row.ctx(OP)?);
        }
        // A version at or above next_version would be handed out twice.
        let mut stmt = self
            .conn
            .prepare(
                "SELECT m.name, m.next_version, max(c.version) FROM machines m \
                 JOIN checkpoints c ON c.machine_id = m.id \
                 GROUP BY m.id HAVING max(c.version) >= m.next_version",
            )
            .ctx(OP)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(format!(
                    "machine {} has next_version {} but already has v{}",
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?
                ))
            })
            .ctx(OP)?;
        for row in rows {
            out.push(row.ctx(OP)?);
        }
        Ok(())
    }

    /// Runs `f` inside one write transaction, so a batch of inserts (a rebuild) commits once and
    /// atomically. Methods called inside nest as savepoints. An error or a panic in `f` rolls
    /// everything back.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&Catalog) -> Result<T, CatalogError>,
    ) -> Result<T, CatalogError> {
        let cat = &*self;
        cat.batch(|| f(cat))
    }

    /// Runs `f` as one transaction on this connection: every write the catalog's methods make
    /// inside it commits together, or none does. For steps of one operation that must land
    /// at once (and that then cost one fsync, not one each). `f` must not wait on another
    /// connection's write, which this one's open transaction would block.
    pub fn batch<T, E: From<CatalogError>>(
        &self,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let tx = WriteTx::begin(&self.conn, "begin a batch")?;
        let out = f()?;
        tx.commit("commit a batch")?;
        Ok(out)
    }

    /// Commits on this connection from now on are not fsynced (`synchronous=NORMAL`): atomic
    /// and visible to every connection at once, and durable with the next synced commit of
    /// any connection, since the WAL is one file written in order and recovery keeps only a
    /// prefix of its commits. Only for a connection whose rows nothing outside the catalog
    /// relies on before such a commit (see `BlobWriter`).
    pub fn skip_fsync(&self) -> Result<(), CatalogError> {
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .ctx("set synchronous=NORMAL")
    }

    fn write_tx(&self, op: &'static str) -> Result<WriteTx<'_>, CatalogError> {
        WriteTx::begin(&self.conn, op)
    }
}

/// A write transaction that rolls back unless committed.
///
/// Outside any transaction it is `BEGIN IMMEDIATE`: the write lock is taken up front, where the
/// busy timeout applies, instead of on the first write, where SQLite in WAL mode fails at once if
/// another writer got in first. Inside [`Catalog::transaction`] it is a savepoint, so each method
/// stays atomic on its own within the batch.
struct WriteTx<'c> {
    conn: &'c Connection,
    nested: bool,
    open: bool,
}

impl<'c> WriteTx<'c> {
    fn begin(conn: &'c Connection, op: &'static str) -> Result<Self, CatalogError> {
        let nested = !conn.is_autocommit();
        let sql = if nested {
            "SAVEPOINT cairn_write"
        } else {
            "BEGIN IMMEDIATE"
        };
        conn.execute_batch(sql).ctx(op)?;
        Ok(WriteTx {
            conn,
            nested,
            open: true,
        })
    }

    fn commit(mut self, op: &'static str) -> Result<(), CatalogError> {
        let sql = if self.nested {
            "RELEASE cairn_write"
        } else {
            "COMMIT"
        };
        // On failure `open` stays true, so Drop rolls back rather than leaving the tx dangling.
        self.conn.execute_batch(sql).ctx(op)?;
        self.open = false;
        Ok(())
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let sql = if self.nested {
            "ROLLBACK TO cairn_write; RELEASE cairn_write"
        } else {
            "ROLLBACK"
        };
        // Errors are ignored: SQLite may already have rolled back on its own (e.g. disk full),
        // and there is nothing more to undo then.
        let _ = self.conn.execute_batch(sql);
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    pub struct TestCatalog {
        pub cat: Catalog,
        pub dir: tempfile::TempDir,
    }

    impl std::ops::Deref for TestCatalog {
        type Target = Catalog;
        fn deref(&self) -> &Catalog {
            &self.cat
        }
    }

    impl std::ops::DerefMut for TestCatalog {
        fn deref_mut(&mut self) -> &mut Catalog {
            &mut self.cat
        }
    }

    impl TestCatalog {
        pub fn db_path(&self) -> PathBuf {
            self.dir.path().join("catalog.db")
        }
    }

    pub fn catalog() -> TestCatalog {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(&dir.path().join("catalog.db")).expect("open catalog");
        TestCatalog { cat, dir }
    }

    pub fn machine(cat: &Catalog, name: &str) -> MachineRow {
        cat.insert_machine(
            &format!("uid-{name}"),
            name,
            Path::new("/srv/machines").join(name).as_path(),
            MachineKind::Dir,
            1,
        )
        .expect("insert machine")
    }

    pub fn new_cp(machine_id: MachineKey, parent: Option<CheckpointKey>) -> NewCheckpoint<'static> {
        NewCheckpoint {
            machine_id,
            name: None,
            note: "",
            author: "tester",
            created_at: 10,
            parent,
            root: TreeId::of(b"root"),
            logical_bytes: 100,
            stored_bytes: 50,
            added_bytes: 20,
            entries: 3,
            auto: false,
            version: None,
        }
    }

    pub fn commit(
        cat: &Catalog,
        machine_id: MachineKey,
        parent: Option<CheckpointKey>,
    ) -> CheckpointRow {
        cat.commit_checkpoint(&new_cp(machine_id, parent))
            .expect("commit checkpoint")
    }
}
