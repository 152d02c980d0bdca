//! Checkpoints: commit (version assignment), look up, list, delete, rename, pin, expire.

use super::{
    Catalog, CatalogError, CheckpointKey, CheckpointRow, Ctx, MachineKey, NewCheckpoint, id_col,
    to_i64, u64_col,
};
use crate::model::TreeId;
use rusqlite::{OptionalExtension, Row, params};

const CHECKPOINT_COLS: &str = "SELECT c.id, c.machine_id, m.name, c.version, c.name, c.note, \
     c.author, c.created_at, c.parent, c.root, c.logical_bytes, c.stored_bytes, c.added_bytes, \
     c.entries, c.auto, c.pinned, c.expires_at \
     FROM checkpoints c JOIN machines m ON m.id = c.machine_id";

fn checkpoint_from_row(row: &Row<'_>) -> rusqlite::Result<CheckpointRow> {
    Ok(CheckpointRow {
        id: row.get(0)?,
        machine_id: row.get(1)?,
        machine: row.get(2)?,
        version: u64_col(row, 3)?,
        name: row.get(4)?,
        note: row.get(5)?,
        author: row.get(6)?,
        created_at: row.get(7)?,
        parent: row.get(8)?,
        root: id_col(row, 9, TreeId::from_slice)?,
        logical_bytes: u64_col(row, 10)?,
        stored_bytes: u64_col(row, 11)?,
        added_bytes: u64_col(row, 12)?,
        entries: u64_col(row, 13)?,
        auto: row.get(14)?,
        pinned: row.get(15)?,
        expires_at: row.get(16)?,
    })
}

impl Catalog {
    /// Records a checkpoint, in one transaction: assigns its version, inserts the row and makes
    /// it the machine's head.
    ///
    /// With `version: None` the checkpoint takes the machine's `next_version`, which is then
    /// bumped; versions are never reused, even after deletes. With `Some(v)` (a rebuild) it takes
    /// `v`, and `next_version` is raised past it if needed. A rebuild that inserts old
    /// checkpoints should set the real head with [`Catalog::set_head`] afterwards.
    ///
    /// Errors: `MachineNotFound`, `CheckpointNotFound` (parent), `CheckpointNameTaken`,
    /// `VersionTaken`.
    pub fn commit_checkpoint(&self, new: &NewCheckpoint) -> Result<CheckpointRow, CatalogError> {
        const OP: &str = "record a checkpoint";
        let logical = to_i64(new.logical_bytes, "logical bytes")?;
        let stored = to_i64(new.stored_bytes, "stored bytes")?;
        let added = to_i64(new.added_bytes, "added bytes")?;
        let entries = to_i64(new.entries, "entry count")?;
        let tx = self.write_tx(OP)?;
        // Read under the write lock, so two processes cannot both take the same version.
        let (machine, next): (String, i64) = self
            .conn
            .query_row(
                "SELECT name, next_version FROM machines WHERE id = ?1",
                [new.machine_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .ctx(OP)?
            .ok_or(CatalogError::MachineNotFound { id: new.machine_id })?;
        if let Some(parent) = new.parent {
            self.require_checkpoint(parent)?;
        }
        if let Some(name) = new.name
            && self.checkpoint_by_name(new.machine_id, name)?.is_some()
        {
            return Err(CatalogError::CheckpointNameTaken {
                machine,
                name: name.to_owned(),
            });
        }
        let version = match new.version {
            None => next,
            Some(v) => {
                // i64::MAX itself is refused too: next_version must stay representable.
                let v_sql = to_i64(v, "checkpoint version")?;
                if v == 0 || v_sql == i64::MAX {
                    return Err(CatalogError::OutOfRange {
                        what: "checkpoint version",
                        value: v,
                        min: 1,
                    });
                }
                if self.checkpoint_by_version(new.machine_id, v)?.is_some() {
                    return Err(CatalogError::VersionTaken {
                        machine,
                        version: v,
                    });
                }
                v_sql
            }
        };
        self.conn
            .execute(
                "INSERT INTO checkpoints (machine_id, version, name, note, author, created_at, \
                 parent, root, logical_bytes, stored_bytes, added_bytes, entries, auto) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    new.machine_id,
                    version,
                    new.name,
                    new.note,
                    new.author,
                    new.created_at,
                    new.parent,
                    new.root.as_bytes(),
                    logical,
                    stored,
                    added,
                    entries,
                    new.auto,
                ],
            )
            .ctx(OP)?;
        let id = self.conn.last_insert_rowid();
        self.conn
            .execute(
                "UPDATE machines SET head = ?2, next_version = max(next_version, ?3 + 1) \
                 WHERE id = ?1",
                params![new.machine_id, id, version],
            )
            .ctx(OP)?;
        let row = self
            .checkpoint(id)?
            .ok_or(CatalogError::CheckpointNotFound { id })?;
        tx.commit(OP)?;
        Ok(row)
    }

    pub fn checkpoint(&self, id: CheckpointKey) -> Result<Option<CheckpointRow>, CatalogError> {
        self.conn
            .prepare_cached(&format!("{CHECKPOINT_COLS} WHERE c.id = ?1"))
            .and_then(|mut s| s.query_row([id], checkpoint_from_row).optional())
            .ctx("look up a checkpoint")
    }

    pub fn checkpoint_by_version(
        &self,
        machine: MachineKey,
        version: u64,
    ) -> Result<Option<CheckpointRow>, CatalogError> {
        // No version above i64::MAX can be stored, so none can match.
        let Ok(version) = i64::try_from(version) else {
            return Ok(None);
        };
        self.conn
            .prepare_cached(&format!(
                "{CHECKPOINT_COLS} WHERE c.machine_id = ?1 AND c.version = ?2"
            ))
            .and_then(|mut s| {
                s.query_row(params![machine, version], checkpoint_from_row)
                    .optional()
            })
            .ctx("look up a checkpoint by version")
    }

    pub fn checkpoint_by_name(
        &self,
        machine: MachineKey,
        name: &str,
    ) -> Result<Option<CheckpointRow>, CatalogError> {
        self.conn
            .prepare_cached(&format!(
                "{CHECKPOINT_COLS} WHERE c.machine_id = ?1 AND c.name = ?2"
            ))
            .and_then(|mut s| {
                s.query_row(params![machine, name], checkpoint_from_row)
                    .optional()
            })
            .ctx("look up a checkpoint by name")
    }

    /// The machine's checkpoint with the highest version, if it has any.
    pub fn latest_checkpoint(
        &self,
        machine: MachineKey,
    ) -> Result<Option<CheckpointRow>, CatalogError> {
        self.conn
            .prepare_cached(&format!(
                "{CHECKPOINT_COLS} WHERE c.machine_id = ?1 ORDER BY c.version DESC LIMIT 1"
            ))
            .and_then(|mut s| s.query_row([machine], checkpoint_from_row).optional())
            .ctx("look up the latest checkpoint")
    }

    /// The machine's checkpoints by version (empty for an unknown machine).
    pub fn checkpoints(&self, machine: MachineKey) -> Result<Vec<CheckpointRow>, CatalogError> {
        self.conn
            .prepare_cached(&format!(
                "{CHECKPOINT_COLS} WHERE c.machine_id = ?1 ORDER BY c.version"
            ))
            .and_then(|mut s| s.query_map([machine], checkpoint_from_row)?.collect())
            .ctx("list checkpoints")
    }

    /// Every checkpoint of every machine, by machine name then version.
    pub fn all_checkpoints(&self) -> Result<Vec<CheckpointRow>, CatalogError> {
        self.conn
            .prepare(&format!("{CHECKPOINT_COLS} ORDER BY m.name, c.version"))
            .and_then(|mut s| s.query_map([], checkpoint_from_row)?.collect())
            .ctx("list all checkpoints")
    }

    /// Deletes one checkpoint. Its children (on any machine) are re-parented to its parent and a
    /// machine head pointing at it moves to its parent, so lineage is kept. Costs O(children),
    /// through the index on `parent`. The version is not reused.
    pub fn delete_checkpoint(&self, id: CheckpointKey) -> Result<(), CatalogError> {
        const OP: &str = "delete a checkpoint";
        let tx = self.write_tx(OP)?;
        let parent: Option<CheckpointKey> = self
            .conn
            .query_row("SELECT parent FROM checkpoints WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .ctx(OP)?
            .ok_or(CatalogError::CheckpointNotFound { id })?;
        self.conn
            .execute(
                "UPDATE checkpoints SET parent = ?2 WHERE parent = ?1",
                params![id, parent],
            )
            .ctx(OP)?;
        self.conn
            .execute(
                "UPDATE machines SET head = ?2 WHERE head = ?1",
                params![id, parent],
            )
            .ctx(OP)?;
        self.conn
            .execute("DELETE FROM checkpoints WHERE id = ?1", [id])
            .ctx(OP)?;
        tx.commit(OP)
    }

    /// Names or (with `None`) unnames a checkpoint. Names are unique per machine.
    #[cfg(test)]
    pub fn set_checkpoint_name(
        &self,
        id: CheckpointKey,
        name: Option<&str>,
    ) -> Result<(), CatalogError> {
        const OP: &str = "name a checkpoint";
        let tx = self.write_tx(OP)?;
        let row = self.require_checkpoint(id)?;
        if let Some(name) = name
            && let Some(other) = self.checkpoint_by_name(row.machine_id, name)?
        {
            if other.id == id {
                return tx.commit(OP);
            }
            return Err(CatalogError::CheckpointNameTaken {
                machine: row.machine,
                name: name.to_owned(),
            });
        }
        self.conn
            .execute(
                "UPDATE checkpoints SET name = ?2 WHERE id = ?1",
                params![id, name],
            )
            .ctx(OP)?;
        tx.commit(OP)
    }

    /// Pins or unpins a checkpoint; expiry and gc policy leave pinned checkpoints alone.
    #[cfg(test)]
    pub fn set_pinned(&self, id: CheckpointKey, pinned: bool) -> Result<(), CatalogError> {
        let n = self
            .conn
            .execute(
                "UPDATE checkpoints SET pinned = ?2 WHERE id = ?1",
                params![id, pinned],
            )
            .ctx("pin a checkpoint")?;
        if n == 0 {
            return Err(CatalogError::CheckpointNotFound { id });
        }
        Ok(())
    }

    /// Sets (or with `None` clears) when a checkpoint expires, in Unix nanoseconds.
    #[cfg(test)]
    pub fn set_expiry(
        &self,
        id: CheckpointKey,
        expires_at: Option<i64>,
    ) -> Result<(), CatalogError> {
        let n = self
            .conn
            .execute(
                "UPDATE checkpoints SET expires_at = ?2 WHERE id = ?1",
                params![id, expires_at],
            )
            .ctx("set a checkpoint's expiry")?;
        if n == 0 {
            return Err(CatalogError::CheckpointNotFound { id });
        }
        Ok(())
    }

    pub(super) fn require_checkpoint(
        &self,
        id: CheckpointKey,
    ) -> Result<CheckpointRow, CatalogError> {
        self.checkpoint(id)?
            .ok_or(CatalogError::CheckpointNotFound { id })
    }
}

#[cfg(test)]
mod tests {
    use crate::catalog::testutil::{catalog, commit, machine, new_cp};
    use crate::catalog::{CatalogError, NewCheckpoint};
    use crate::model::TreeId;

    #[test]
    fn commit_round_trips_every_field_and_moves_head() {
        let cat = catalog();
        let m = machine(&cat, "web");
        let new = NewCheckpoint {
            machine_id: m.id,
            name: Some("before-upgrade"),
            note: "about to upgrade",
            author: "ana",
            created_at: 1_700_000_000_000_000_000,
            parent: None,
            root: TreeId::of(b"tree"),
            logical_bytes: u64::try_from(i64::MAX).unwrap(),
            stored_bytes: 7,
            added_bytes: 5,
            entries: 11,
            auto: true,
            version: None,
        };
        let c = cat.commit_checkpoint(&new).unwrap();
        assert_eq!(c.machine_id, m.id);
        assert_eq!(c.machine, "web");
        assert_eq!(c.version, 1);
        assert_eq!(c.name.as_deref(), Some("before-upgrade"));
        assert_eq!(c.note, "about to upgrade");
        assert_eq!(c.author, "ana");
        assert_eq!(c.created_at, 1_700_000_000_000_000_000);
        assert_eq!(c.parent, None);
        assert_eq!(c.root, TreeId::of(b"tree"));
        assert_eq!(c.logical_bytes, i64::MAX as u64);
        assert_eq!((c.stored_bytes, c.added_bytes, c.entries), (7, 5, 11));
        assert!(c.auto);
        assert!(!c.pinned);
        assert_eq!(c.expires_at, None);
        let m = cat.machine_by_id(m.id).unwrap().unwrap();
        assert_eq!(m.head, Some(c.id));
        assert_eq!(m.next_version, 2);
        assert_eq!(
            cat.checkpoint_by_name(m.id, "before-upgrade")
                .unwrap()
                .unwrap()
                .id,
            c.id
        );
        assert_eq!(
            cat.checkpoint_by_version(m.id, 1).unwrap().unwrap().id,
            c.id
        );
        assert!(cat.checkpoint_by_version(m.id, 2).unwrap().is_none());
        assert!(cat.checkpoint_by_version(m.id, u64::MAX).unwrap().is_none());
    }

    #[test]
    fn versions_grow_and_are_never_reused() {
        let cat = catalog();
        let m = machine(&cat, "web");
        let v1 = commit(&cat, m.id, None);
        let v2 = commit(&cat, m.id, Some(v1.id));
        assert_eq!((v1.version, v2.version), (1, 2));
        cat.delete_checkpoint(v2.id).unwrap();
        let v3 = commit(&cat, m.id, Some(v1.id));
        assert_eq!(v3.version, 3);
        assert_eq!(cat.latest_checkpoint(m.id).unwrap().unwrap().id, v3.id);
        let versions: Vec<_> = cat
            .checkpoints(m.id)
            .unwrap()
            .iter()
            .map(|c| c.version)
            .collect();
        assert_eq!(versions, [1, 3]);
        // Deleting the newest does not hand its version out again either.
        cat.delete_checkpoint(v3.id).unwrap();
        assert_eq!(commit(&cat, m.id, None).version, 4);
    }

    #[test]
    fn given_version_keeps_next_version_above_it() {
        let cat = catalog();
        let m = machine(&cat, "web");
        let mut new = new_cp(m.id, None);
        new.version = Some(7);
        assert_eq!(cat.commit_checkpoint(&new).unwrap().version, 7);
        new.version = Some(3);
        assert_eq!(cat.commit_checkpoint(&new).unwrap().version, 3);
        assert_eq!(cat.machine_by_id(m.id).unwrap().unwrap().next_version, 8);
        let err = cat.commit_checkpoint(&new).unwrap_err();
        assert!(
            matches!(err, CatalogError::VersionTaken { version: 3, .. }),
            "{err:?}"
        );
        new.version = Some(0);
        assert!(matches!(
            cat.commit_checkpoint(&new),
            Err(CatalogError::OutOfRange { value: 0, .. })
        ));
        new.version = Some(u64::MAX);
        assert!(matches!(
            cat.commit_checkpoint(&new),
            Err(CatalogError::OutOfRange { .. })
        ));
        assert_eq!(commit(&cat, m.id, None).version, 8);
    }

    #[test]
    fn commit_errors() {
        let cat = catalog();
        let m = machine(&cat, "web");
        assert!(matches!(
            cat.commit_checkpoint(&new_cp(m.id + 5, None)),
            Err(CatalogError::MachineNotFound { .. })
        ));
        assert!(matches!(
            cat.commit_checkpoint(&new_cp(m.id, Some(404))),
            Err(CatalogError::CheckpointNotFound { id: 404 })
        ));
        let mut named = new_cp(m.id, None);
        named.name = Some("good");
        cat.commit_checkpoint(&named).unwrap();
        let err = cat.commit_checkpoint(&named).unwrap_err();
        assert!(
            matches!(&err, CatalogError::CheckpointNameTaken { machine, name } if machine == "web" && name == "good")
        );
        let mut huge = new_cp(m.id, None);
        huge.stored_bytes = u64::MAX;
        assert!(matches!(
            cat.commit_checkpoint(&huge),
            Err(CatalogError::OutOfRange {
                what: "stored bytes",
                ..
            })
        ));
        // Failed commits leave no trace and burn no version.
        assert_eq!(cat.checkpoints(m.id).unwrap().len(), 1);
        assert_eq!(cat.machine_by_id(m.id).unwrap().unwrap().next_version, 2);
        // The same name on another machine is fine.
        let other = machine(&cat, "db");
        named.machine_id = other.id;
        cat.commit_checkpoint(&named).unwrap();
    }

    #[test]
    fn delete_reparents_children_and_moves_head() {
        let cat = catalog();
        let m = machine(&cat, "web");
        let c1 = commit(&cat, m.id, None);
        let c2 = commit(&cat, m.id, Some(c1.id));
        let c3 = commit(&cat, m.id, Some(c2.id));
        let fork = machine(&cat, "fork");
        let f1 = commit(&cat, fork.id, Some(c2.id));
        let idle = machine(&cat, "idle");
        cat.set_head(idle.id, Some(c2.id)).unwrap();

        cat.delete_checkpoint(c2.id).unwrap();
        assert!(cat.checkpoint(c2.id).unwrap().is_none());
        assert_eq!(cat.checkpoint(c3.id).unwrap().unwrap().parent, Some(c1.id));
        assert_eq!(cat.checkpoint(f1.id).unwrap().unwrap().parent, Some(c1.id));
        assert_eq!(
            cat.machine_by_id(idle.id).unwrap().unwrap().head,
            Some(c1.id)
        );
        assert_eq!(cat.machine_by_id(m.id).unwrap().unwrap().head, Some(c3.id));

        // Deleting the head moves the head to its parent; deleting a root clears links.
        cat.delete_checkpoint(c3.id).unwrap();
        assert_eq!(cat.machine_by_id(m.id).unwrap().unwrap().head, Some(c1.id));
        cat.delete_checkpoint(c1.id).unwrap();
        assert_eq!(cat.machine_by_id(m.id).unwrap().unwrap().head, None);
        assert_eq!(cat.checkpoint(f1.id).unwrap().unwrap().parent, None);
        assert!(matches!(
            cat.delete_checkpoint(c1.id),
            Err(CatalogError::CheckpointNotFound { .. })
        ));
        assert!(cat.quick_check().unwrap().is_empty());
    }

    #[test]
    fn rename_pin_expire() {
        let cat = catalog();
        let m = machine(&cat, "web");
        let a = commit(&cat, m.id, None);
        let b = commit(&cat, m.id, Some(a.id));
        cat.set_checkpoint_name(a.id, Some("stable")).unwrap();
        // Renaming to its own name is a no-op, not a conflict.
        cat.set_checkpoint_name(a.id, Some("stable")).unwrap();
        assert!(matches!(
            cat.set_checkpoint_name(b.id, Some("stable")),
            Err(CatalogError::CheckpointNameTaken { .. })
        ));
        cat.set_checkpoint_name(a.id, None).unwrap();
        cat.set_checkpoint_name(b.id, Some("stable")).unwrap();
        assert_eq!(
            cat.checkpoint_by_name(m.id, "stable").unwrap().unwrap().id,
            b.id
        );
        assert_eq!(cat.checkpoint(a.id).unwrap().unwrap().name, None);

        cat.set_pinned(a.id, true).unwrap();
        cat.set_expiry(a.id, Some(99)).unwrap();
        let a = cat.checkpoint(a.id).unwrap().unwrap();
        assert!(a.pinned);
        assert_eq!(a.expires_at, Some(99));
        for r in [
            cat.set_checkpoint_name(999, None),
            cat.set_pinned(999, true),
            cat.set_expiry(999, None),
        ] {
            assert!(matches!(
                r,
                Err(CatalogError::CheckpointNotFound { id: 999 })
            ));
        }
    }

    #[test]
    fn lists_are_ordered() {
        let cat = catalog();
        let b = machine(&cat, "b");
        let a = machine(&cat, "a");
        commit(&cat, b.id, None);
        commit(&cat, a.id, None);
        commit(&cat, b.id, None);
        let all: Vec<_> = cat
            .all_checkpoints()
            .unwrap()
            .into_iter()
            .map(|c| (c.machine, c.version))
            .collect();
        assert_eq!(all, [("a".into(), 1), ("b".into(), 1), ("b".into(), 2)]);
        assert!(cat.checkpoints(12345).unwrap().is_empty());
        assert!(cat.latest_checkpoint(12345).unwrap().is_none());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Any mix of commits and deletes: each new version is above every version handed out
        /// before, and lineage never points at a deleted checkpoint.
        #[test]
        fn versions_monotonic_under_any_deletes(ops in proptest::collection::vec(0u8..4, 1..40)) {
            let cat = catalog();
            let m = machine(&cat, "web");
            let mut issued = 0u64;
            for op in ops {
                let live = cat.checkpoints(m.id).unwrap();
                if op == 0 && !live.is_empty() {
                    // Delete from the middle, where re-parenting matters most.
                    cat.delete_checkpoint(live[live.len() / 2].id).unwrap();
                } else {
                    let head = cat.machine_by_id(m.id).unwrap().unwrap().head;
                    let c = commit(&cat, m.id, head);
                    proptest::prop_assert!(c.version > issued);
                    issued = c.version;
                }
            }
            let live = cat.checkpoints(m.id).unwrap();
            for c in &live {
                if let Some(p) = c.parent {
                    proptest::prop_assert!(live.iter().any(|x| x.id == p));
                }
            }
            proptest::prop_assert!(cat.quick_check().unwrap().is_empty());
        }
    }
}
