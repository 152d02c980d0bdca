//! Writer sessions in flight. gc reads them so it never deletes a pack that a running writer
//! may still reference; a session whose process has died is stale and gc may end it.

use super::{Catalog, CatalogError, Ctx, SessionRow};
use rusqlite::params;

impl Catalog {
    /// Registers a writer session and returns its id, for [`Catalog::end_session`].
    /// Session rows are committed without an fsync (`without_fsync`): they mean nothing after
    /// power loss, since a session names a live process and power loss ends them all.
    pub fn begin_session(&self, pid: u32, started_at: i64, op: &str) -> Result<i64, CatalogError> {
        self.without_fsync(|c| {
            c.conn
                .execute(
                    "INSERT INTO sessions (pid, started_at, op) VALUES (?1, ?2, ?3)",
                    params![pid, started_at, op],
                )
                .ctx("register a writer session")
        })?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Ends a session. Ending one that is already gone is a no-op: gc may have cleared it as
    /// stale, and the writer's cleanup must not fail because of that.
    pub fn end_session(&self, id: i64) -> Result<(), CatalogError> {
        self.without_fsync(|c| {
            c.conn
                .execute("DELETE FROM sessions WHERE id = ?1", [id])
                .ctx("end a writer session")
        })?;
        Ok(())
    }

    /// Sessions in flight, oldest first.
    pub fn sessions(&self) -> Result<Vec<SessionRow>, CatalogError> {
        self.conn
            .prepare("SELECT id, pid, started_at, op FROM sessions ORDER BY started_at, id")
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok(SessionRow {
                        id: r.get(0)?,
                        pid: r.get(1)?,
                        started_at: r.get(2)?,
                        op: r.get(3)?,
                    })
                })?
                .collect()
            })
            .ctx("list writer sessions")
    }

    /// The gc epoch: it moves whenever gc dooms a pack.
    pub fn gc_epoch(&self) -> Result<u64, CatalogError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = 'gc_epoch'", [], |r| {
                r.get::<_, i64>(0)
            })
            .ctx("read the gc epoch")
            .map(|v| v as u64)
    }

    /// Moves the gc epoch forward; gc calls it before dooming anything.
    pub fn bump_gc_epoch(&self) -> Result<u64, CatalogError> {
        self.conn
            .execute(
                "UPDATE meta SET value = value + 1 WHERE key = 'gc_epoch'",
                [],
            )
            .ctx("move the gc epoch")?;
        self.gc_epoch()
    }
}

#[cfg(test)]
mod tests {
    use crate::catalog::SessionRow;
    use crate::catalog::testutil::catalog;

    #[test]
    fn begin_list_end() {
        let cat = catalog();
        let a = cat.begin_session(100, 5, "checkpoint").unwrap();
        let b = cat.begin_session(u32::MAX, 3, "fork").unwrap();
        assert_ne!(a, b);
        assert_eq!(
            cat.sessions().unwrap(),
            [
                SessionRow {
                    id: b,
                    pid: u32::MAX,
                    started_at: 3,
                    op: "fork".into()
                },
                SessionRow {
                    id: a,
                    pid: 100,
                    started_at: 5,
                    op: "checkpoint".into()
                },
            ]
        );
        cat.end_session(a).unwrap();
        cat.end_session(a).unwrap();
        cat.end_session(12345).unwrap();
        let left: Vec<_> = cat.sessions().unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(left, [b]);
    }
}
