//! Machines: insert, look up, list, delete, and the head / pending / next-version fields.

use super::{
    Base, Catalog, CatalogError, CheckpointKey, Ctx, MachineKey, MachineKind, MachineRow, id_col,
    to_i64, u64_col,
};
use crate::model::TreeId;
use rusqlite::{OptionalExtension, Row, params};
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

const MACHINE_COLS: &str = "SELECT id, uid, name, dir, kind, created_at, head, next_version, \
     pending, base, base_entries, base_logical FROM machines";

fn machine_from_row(row: &Row<'_>) -> rusqlite::Result<MachineRow> {
    let dir: Vec<u8> = row.get(3)?;
    Ok(MachineRow {
        id: row.get(0)?,
        uid: row.get(1)?,
        name: row.get(2)?,
        dir: PathBuf::from(OsString::from_vec(dir)),
        kind: row.get::<_, MachineKind>(4)?,
        created_at: row.get(5)?,
        head: row.get(6)?,
        next_version: u64_col(row, 7)?,
        pending: row.get(8)?,
        base: match row.get_ref(9)? {
            rusqlite::types::ValueRef::Null => None,
            _ => Some(Base {
                root: id_col(row, 9, TreeId::from_slice)?,
                entries: u64_col(row, 10)?,
                logical_bytes: u64_col(row, 11)?,
            }),
        },
    })
}

impl Catalog {
    /// Adds a machine with `next_version` 1 and no head.
    ///
    /// Fails with `MachineExists` if the name is taken and `MachineUidExists` if the uid is.
    pub fn insert_machine(
        &self,
        uid: &str,
        name: &str,
        dir: &Path,
        kind: MachineKind,
        created_at: i64,
    ) -> Result<MachineRow, CatalogError> {
        const OP: &str = "insert a machine";
        let tx = self.write_tx(OP)?;
        if self.machine(name)?.is_some() {
            return Err(CatalogError::MachineExists {
                name: name.to_owned(),
            });
        }
        let by_uid: Option<String> = self
            .conn
            .query_row("SELECT name FROM machines WHERE uid = ?1", [uid], |r| {
                r.get(0)
            })
            .optional()
            .ctx(OP)?;
        if let Some(existing) = by_uid {
            return Err(CatalogError::MachineUidExists {
                uid: uid.to_owned(),
                name: existing,
            });
        }
        self.conn
            .execute(
                "INSERT INTO machines (uid, name, dir, kind, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![uid, name, dir.as_os_str().as_bytes(), kind, created_at],
            )
            .ctx(OP)?;
        let id = self.conn.last_insert_rowid();
        let row = self
            .machine_by_id(id)?
            .ok_or(CatalogError::MachineNotFound { id })?;
        tx.commit(OP)?;
        Ok(row)
    }

    pub fn machine(&self, name: &str) -> Result<Option<MachineRow>, CatalogError> {
        self.conn
            .prepare_cached(&format!("{MACHINE_COLS} WHERE name = ?1"))
            .and_then(|mut s| s.query_row([name], machine_from_row).optional())
            .ctx("look up a machine by name")
    }

    pub fn machine_by_id(&self, id: MachineKey) -> Result<Option<MachineRow>, CatalogError> {
        self.conn
            .prepare_cached(&format!("{MACHINE_COLS} WHERE id = ?1"))
            .and_then(|mut s| s.query_row([id], machine_from_row).optional())
            .ctx("look up a machine")
    }

    /// All machines, ordered by name.
    pub fn machines(&self) -> Result<Vec<MachineRow>, CatalogError> {
        self.conn
            .prepare(&format!("{MACHINE_COLS} ORDER BY name"))
            .and_then(|mut s| s.query_map([], machine_from_row)?.collect())
            .ctx("list machines")
    }

    /// Deletes a machine and all its checkpoints, in one transaction.
    ///
    /// Other machines keep their lineage: a checkpoint of another machine whose parent was one of
    /// the deleted checkpoints (a fork) gets the nearest ancestor that survives, and so does a
    /// machine head that pointed into the deleted machine.
    pub fn delete_machine(&self, id: MachineKey) -> Result<(), CatalogError> {
        const OP: &str = "delete a machine";
        let tx = self.write_tx(OP)?;
        if self.machine_by_id(id)?.is_none() {
            return Err(CatalogError::MachineNotFound { id });
        }
        // Parent links of the doomed checkpoints, to walk up past them. One machine's history
        // is small next to the blob index, so holding it in memory is fine.
        let doomed: HashMap<CheckpointKey, Option<CheckpointKey>> = self
            .conn
            .prepare("SELECT id, parent FROM checkpoints WHERE machine_id = ?1")
            .and_then(|mut s| s.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .ctx(OP)?;
        let survivor = |mut cur: Option<CheckpointKey>| {
            // Bounded by the map size, so a (corrupt) parent cycle cannot loop forever.
            for _ in 0..=doomed.len() {
                match cur {
                    Some(c) if doomed.contains_key(&c) => cur = doomed[&c],
                    _ => return cur,
                }
            }
            None
        };
        let children: Vec<(CheckpointKey, CheckpointKey)> = self
            .conn
            .prepare(
                "SELECT c.id, c.parent FROM checkpoints c JOIN checkpoints p ON p.id = c.parent \
                 WHERE p.machine_id = ?1 AND c.machine_id <> ?1",
            )
            .and_then(|mut s| s.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .ctx(OP)?;
        for (child, parent) in children {
            self.conn
                .execute(
                    "UPDATE checkpoints SET parent = ?2 WHERE id = ?1",
                    params![child, survivor(Some(parent))],
                )
                .ctx(OP)?;
        }
        let heads: Vec<(MachineKey, CheckpointKey)> = self
            .conn
            .prepare(
                "SELECT m.id, m.head FROM machines m JOIN checkpoints c ON c.id = m.head \
                 WHERE c.machine_id = ?1 AND m.id <> ?1",
            )
            .and_then(|mut s| s.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .ctx(OP)?;
        for (machine, head) in heads {
            self.conn
                .execute(
                    "UPDATE machines SET head = ?2 WHERE id = ?1",
                    params![machine, survivor(Some(head))],
                )
                .ctx(OP)?;
        }
        // The machine's own head points into its own checkpoints; clear it so the cascade does
        // not trip over the foreign key mid-statement.
        self.conn
            .execute("UPDATE machines SET head = NULL WHERE id = ?1", [id])
            .ctx(OP)?;
        self.conn
            .execute("DELETE FROM machines WHERE id = ?1", [id])
            .ctx(OP)?;
        tx.commit(OP)
    }

    /// Records (or with `None` clears) the journal of a restore in progress.
    pub fn set_pending(&self, id: MachineKey, pending: Option<&str>) -> Result<(), CatalogError> {
        let n = self
            .conn
            .execute(
                "UPDATE machines SET pending = ?2 WHERE id = ?1",
                params![id, pending],
            )
            .ctx("record a pending restore")?;
        if n == 0 {
            return Err(CatalogError::MachineNotFound { id });
        }
        Ok(())
    }

    /// Sets a mounted machine's base, and with it the head and the journal, in one transaction:
    /// a rebase (restore or fork of a mounted machine) is one atomic step.
    pub fn set_base(
        &self,
        id: MachineKey,
        base: &Base,
        head: Option<CheckpointKey>,
        pending: Option<&str>,
    ) -> Result<(), CatalogError> {
        const OP: &str = "set a machine's base";
        let tx = self.write_tx(OP)?;
        if let Some(cp) = head {
            self.require_checkpoint(cp)?;
        }
        let n = self
            .conn
            .execute(
                "UPDATE machines SET base = ?2, base_entries = ?3, base_logical = ?4, head = ?5, \
                 pending = ?6 WHERE id = ?1",
                params![
                    id,
                    base.root.as_bytes(),
                    to_i64(base.entries, "base entries")?,
                    to_i64(base.logical_bytes, "base logical bytes")?,
                    head,
                    pending
                ],
            )
            .ctx(OP)?;
        if n == 0 {
            return Err(CatalogError::MachineNotFound { id });
        }
        tx.commit(OP)
    }

    /// Points the machine's live state at `head` (any machine's checkpoint) or at nothing.
    pub fn set_head(
        &self,
        id: MachineKey,
        head: Option<CheckpointKey>,
    ) -> Result<(), CatalogError> {
        const OP: &str = "set a machine's head";
        let tx = self.write_tx(OP)?;
        if let Some(cp) = head {
            self.require_checkpoint(cp)?;
        }
        let n = self
            .conn
            .execute(
                "UPDATE machines SET head = ?2 WHERE id = ?1",
                params![id, head],
            )
            .ctx(OP)?;
        if n == 0 {
            return Err(CatalogError::MachineNotFound { id });
        }
        tx.commit(OP)
    }

    /// Raises the machine's `next_version` to at least `at_least` (never lowers it). For a
    /// rebuild, where the store remembers versions handed out to checkpoints since deleted.
    #[cfg(test)]
    pub fn raise_next_version(&self, id: MachineKey, at_least: u64) -> Result<(), CatalogError> {
        let v = super::to_i64(at_least, "next version")?;
        let n = self
            .conn
            .execute(
                "UPDATE machines SET next_version = max(next_version, ?2) WHERE id = ?1",
                params![id, v],
            )
            .ctx("raise a machine's next version")?;
        if n == 0 {
            return Err(CatalogError::MachineNotFound { id });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::catalog::testutil::{catalog, commit, machine};
    use crate::catalog::{CatalogError, MachineKind};
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    #[test]
    fn insert_and_look_up() {
        let cat = catalog();
        // A non-UTF-8 directory must round-trip byte for byte.
        let dir = Path::new(OsStr::from_bytes(b"/srv/m\xffx"));
        let m = cat
            .insert_machine("abc123", "web", dir, MachineKind::Mounted, 42)
            .unwrap();
        assert_eq!(m.name, "web");
        assert_eq!(m.uid, "abc123");
        assert_eq!(m.dir, dir);
        assert_eq!(m.kind, MachineKind::Mounted);
        assert_eq!(m.created_at, 42);
        assert_eq!(m.head, None);
        assert_eq!(m.next_version, 1);
        assert_eq!(m.pending, None);
        assert_eq!(cat.machine("web").unwrap().unwrap().id, m.id);
        assert_eq!(cat.machine_by_id(m.id).unwrap().unwrap().name, "web");
        assert!(cat.machine("nope").unwrap().is_none());
        assert!(cat.machine_by_id(m.id + 100).unwrap().is_none());
    }

    #[test]
    fn machines_are_listed_by_name() {
        let cat = catalog();
        for n in ["zeta", "alpha", "mid"] {
            machine(&cat, n);
        }
        let names: Vec<_> = cat
            .machines()
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["alpha", "mid", "zeta"]);
    }

    #[test]
    fn duplicate_name_and_uid_are_refused() {
        let cat = catalog();
        cat.insert_machine("u1", "web", Path::new("/a"), MachineKind::Dir, 1)
            .unwrap();
        let err = cat
            .insert_machine("u2", "web", Path::new("/b"), MachineKind::Dir, 1)
            .unwrap_err();
        assert!(matches!(&err, CatalogError::MachineExists { name } if name == "web"));
        assert_eq!(
            err.to_string(),
            "machine web already exists; pick another name or `cairn machine rm web`"
        );
        let err = cat
            .insert_machine("u1", "db", Path::new("/b"), MachineKind::Dir, 1)
            .unwrap_err();
        assert!(matches!(&err, CatalogError::MachineUidExists { name, .. } if name == "web"));
        assert_eq!(cat.machines().unwrap().len(), 1);
    }

    #[test]
    fn pending_head_and_next_version() {
        let cat = catalog();
        let m = machine(&cat, "web");
        cat.set_pending(m.id, Some(r#"{"step":1}"#)).unwrap();
        assert_eq!(
            cat.machine_by_id(m.id).unwrap().unwrap().pending.as_deref(),
            Some(r#"{"step":1}"#)
        );
        cat.set_pending(m.id, None).unwrap();
        assert_eq!(cat.machine_by_id(m.id).unwrap().unwrap().pending, None);

        let c = commit(&cat, m.id, None);
        cat.set_head(m.id, None).unwrap();
        assert_eq!(cat.machine_by_id(m.id).unwrap().unwrap().head, None);
        cat.set_head(m.id, Some(c.id)).unwrap();
        assert_eq!(cat.machine_by_id(m.id).unwrap().unwrap().head, Some(c.id));

        cat.raise_next_version(m.id, 10).unwrap();
        cat.raise_next_version(m.id, 5).unwrap();
        assert_eq!(cat.machine_by_id(m.id).unwrap().unwrap().next_version, 10);
        assert_eq!(commit(&cat, m.id, Some(c.id)).version, 10);
    }

    #[test]
    fn unknown_ids_are_errors() {
        let cat = catalog();
        let m = machine(&cat, "web");
        let missing = m.id + 7;
        assert!(matches!(
            cat.set_pending(missing, None),
            Err(CatalogError::MachineNotFound { id }) if id == missing
        ));
        assert!(matches!(
            cat.set_head(missing, None),
            Err(CatalogError::MachineNotFound { .. })
        ));
        assert!(matches!(
            cat.set_head(m.id, Some(999)),
            Err(CatalogError::CheckpointNotFound { id: 999 })
        ));
        assert!(matches!(
            cat.delete_machine(missing),
            Err(CatalogError::MachineNotFound { .. })
        ));
        assert!(matches!(
            cat.raise_next_version(missing, 3),
            Err(CatalogError::MachineNotFound { .. })
        ));
    }

    #[test]
    fn delete_machine_takes_its_checkpoints_and_keeps_forks_lineage() {
        let cat = catalog();
        let base = machine(&cat, "base");
        let src = machine(&cat, "src");
        let b1 = commit(&cat, base.id, None);
        // src was forked from base@v1 and checkpointed twice.
        let s1 = commit(&cat, src.id, Some(b1.id));
        let s2 = commit(&cat, src.id, Some(s1.id));
        // fork was forked from src@v2; other's live state sits on src@v2 with no checkpoint yet.
        let fork = machine(&cat, "fork");
        let f1 = commit(&cat, fork.id, Some(s2.id));
        let other = machine(&cat, "other");
        cat.set_head(other.id, Some(s2.id)).unwrap();

        cat.delete_machine(src.id).unwrap();

        assert!(cat.machine("src").unwrap().is_none());
        assert!(cat.checkpoint(s1.id).unwrap().is_none());
        assert!(cat.checkpoint(s2.id).unwrap().is_none());
        // Lineage skips the deleted machine and lands on the nearest survivor.
        assert_eq!(cat.checkpoint(f1.id).unwrap().unwrap().parent, Some(b1.id));
        assert_eq!(
            cat.machine_by_id(other.id).unwrap().unwrap().head,
            Some(b1.id)
        );
        assert_eq!(
            cat.machine_by_id(fork.id).unwrap().unwrap().head,
            Some(f1.id)
        );
        assert!(cat.quick_check().unwrap().is_empty());
    }

    #[test]
    fn delete_machine_without_surviving_ancestor_clears_parent() {
        let cat = catalog();
        let a = machine(&cat, "a");
        let a1 = commit(&cat, a.id, None);
        let b = machine(&cat, "b");
        let b1 = commit(&cat, b.id, Some(a1.id));
        cat.delete_machine(a.id).unwrap();
        assert_eq!(cat.checkpoint(b1.id).unwrap().unwrap().parent, None);
        assert_eq!(cat.all_checkpoints().unwrap().len(), 1);
    }
}
