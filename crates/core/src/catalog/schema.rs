//! Numbered schema migrations, tracked with `PRAGMA user_version`.
//!
//! `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`. A new version is one more entry
//! at the end; entries already released are never edited, because catalogs in the field have
//! run them.
//!
//! Column conventions: times are Unix nanoseconds (`INTEGER`), ids are 32-byte `BLOB`s, paths are
//! `BLOB`s of raw OS bytes (Linux paths need not be UTF-8), sizes and counts are non-negative
//! `INTEGER`s.

use super::{CatalogError, Ctx, WriteTx};
use rusqlite::Connection;

/// Version 1: machines, checkpoints, packs, blobs, sessions, audit.
///
/// `checkpoints.parent` and `machines.head` are plain foreign keys without an ON DELETE action:
/// deleting a checkpoint re-points them at its own parent (in code), so lineage survives. Setting
/// them to NULL would cut history, and a plain key turns any missed case into an error instead.
const V1: &str = "
CREATE TABLE machines (
    id           INTEGER PRIMARY KEY,
    uid          TEXT    NOT NULL UNIQUE,
    name         TEXT    NOT NULL UNIQUE,
    dir          BLOB    NOT NULL,
    kind         TEXT    NOT NULL CHECK (kind IN ('dir', 'mounted')),
    created_at   INTEGER NOT NULL,
    head         INTEGER REFERENCES checkpoints(id),
    next_version INTEGER NOT NULL DEFAULT 1 CHECK (next_version >= 1),
    pending      TEXT
);
CREATE INDEX machines_head ON machines(head);

CREATE TABLE checkpoints (
    id            INTEGER PRIMARY KEY,
    machine_id    INTEGER NOT NULL REFERENCES machines(id) ON DELETE CASCADE,
    version       INTEGER NOT NULL CHECK (version >= 1),
    name          TEXT,
    note          TEXT    NOT NULL,
    author        TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    parent        INTEGER REFERENCES checkpoints(id),
    root          BLOB    NOT NULL CHECK (length(root) = 32),
    logical_bytes INTEGER NOT NULL CHECK (logical_bytes >= 0),
    stored_bytes  INTEGER NOT NULL CHECK (stored_bytes >= 0),
    added_bytes   INTEGER NOT NULL CHECK (added_bytes >= 0),
    entries       INTEGER NOT NULL CHECK (entries >= 0),
    auto          INTEGER NOT NULL CHECK (auto IN (0, 1)),
    pinned        INTEGER NOT NULL DEFAULT 0 CHECK (pinned IN (0, 1)),
    expires_at    INTEGER,
    UNIQUE (machine_id, version),
    UNIQUE (machine_id, name)
);
-- Deleting a checkpoint re-parents its children: this keeps that O(children).
CREATE INDEX checkpoints_parent ON checkpoints(parent);

CREATE TABLE packs (
    id         BLOB    PRIMARY KEY CHECK (length(id) = 32),
    size       INTEGER NOT NULL CHECK (size >= 0),
    created_at INTEGER NOT NULL,
    doomed_at  INTEGER
) WITHOUT ROWID;

-- WITHOUT ROWID: lookups by id are the hot path, and this stores the row in the key's b-tree.
CREATE TABLE blobs (
    id         BLOB    PRIMARY KEY CHECK (length(id) = 32),
    kind       INTEGER NOT NULL CHECK (kind IN (0, 1)),
    pack       BLOB    NOT NULL REFERENCES packs(id),
    offset     INTEGER NOT NULL CHECK (offset >= 0),
    stored_len INTEGER NOT NULL CHECK (stored_len >= 0),
    raw_len    INTEGER NOT NULL CHECK (raw_len >= 0)
) WITHOUT ROWID;
CREATE INDEX blobs_pack ON blobs(pack);

CREATE TABLE sessions (
    id         INTEGER PRIMARY KEY,
    pid        INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    op         TEXT    NOT NULL
);

-- AUTOINCREMENT: audit ids must keep growing even if the newest rows are ever pruned.
CREATE TABLE audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    time    INTEGER NOT NULL,
    author  TEXT    NOT NULL,
    op      TEXT    NOT NULL,
    machine TEXT,
    target  TEXT,
    outcome TEXT    NOT NULL,
    detail  TEXT    NOT NULL
);
CREATE INDEX audit_machine ON audit(machine, id);
";

/// Version 2: a key/value table for counters; `gc_epoch` moves whenever gc dooms a pack, so
/// stat caches written before it are re-validated instead of trusted.
const V2: &str = "
CREATE TABLE meta (
    key   TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('gc_epoch', 0);
";

/// Mounted machines: the tree their lower layer serves. gc keeps it alive even when no
/// checkpoint names it any more.
const V3: &str = "
ALTER TABLE machines ADD COLUMN base BLOB CHECK (base IS NULL OR length(base) = 32);
ALTER TABLE machines ADD COLUMN base_entries INTEGER NOT NULL DEFAULT 0 CHECK (base_entries >= 0);
ALTER TABLE machines ADD COLUMN base_logical INTEGER NOT NULL DEFAULT 0 CHECK (base_logical >= 0);
";

const MIGRATIONS: &[&str] = &[V1, V2, V3];

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

fn user_version(conn: &Connection) -> Result<i64, CatalogError> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .ctx("read the schema version")
}

/// Brings the schema up to [`SCHEMA_VERSION`]. Safe to run from several processes at once.
pub(super) fn migrate(conn: &Connection) -> Result<(), CatalogError> {
    let found = user_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(CatalogError::TooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = WriteTx::begin(conn, "migrate the schema")?;
    // Read again under the write lock: another process may have migrated since we looked.
    let found = user_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(CatalogError::TooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let start = usize::try_from(found).map_err(|_| CatalogError::Corrupt {
        reason: format!("negative schema version {found}"),
    })?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(start) {
        conn.execute_batch(sql).ctx("migrate the schema")?;
        // user_version lives in the header page, so it commits or rolls back with the tx.
        conn.pragma_update(None, "user_version", (i + 1) as i64)
            .ctx("record the schema version")?;
    }
    tx.commit("commit the schema migration")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    #[test]
    fn migrates_empty_file_to_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let cat = Catalog::open(&path).unwrap();
        assert_eq!(user_version(&cat.conn).unwrap(), SCHEMA_VERSION);
        let tables: Vec<String> = cat
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for t in [
            "audit",
            "blobs",
            "checkpoints",
            "machines",
            "packs",
            "sessions",
        ] {
            assert!(tables.iter().any(|x| x == t), "missing table {t}");
        }
        let mode: String = cat
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = cat
            .conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        // synchronous=FULL is 2.
        let sync: i64 = cat
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2);
        drop(cat);
        // A second open finds the schema current and changes nothing.
        let cat = Catalog::open(&path).unwrap();
        assert_eq!(user_version(&cat.conn).unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        drop(Catalog::open(&path).unwrap());
        let raw = Connection::open(&path).unwrap();
        raw.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(raw);
        let err = Catalog::open(&path).unwrap_err();
        assert!(
            matches!(err, CatalogError::TooNew { found, supported } if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
            "{err:?}"
        );
        assert!(err.to_string().contains("upgrade cairn"));
    }
}
