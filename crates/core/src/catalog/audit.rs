//! The audit log: one append-only row per operation, successful or not.

use super::{AuditRecord, AuditRow, Catalog, CatalogError, Ctx, to_i64};
use rusqlite::{Row, params};

fn audit_from_row(r: &Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        id: r.get(0)?,
        time: r.get(1)?,
        author: r.get(2)?,
        op: r.get(3)?,
        machine: r.get(4)?,
        target: r.get(5)?,
        outcome: r.get(6)?,
        detail: r.get(7)?,
    })
}

impl Catalog {
    pub fn append_audit(&self, rec: &AuditRecord) -> Result<(), CatalogError> {
        self.conn
            .prepare_cached(
                "INSERT INTO audit (time, author, op, machine, target, outcome, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    rec.time,
                    rec.author,
                    rec.op,
                    rec.machine,
                    rec.target,
                    rec.outcome,
                    rec.detail
                ])
            })
            .ctx("append to the audit log")?;
        Ok(())
    }

    /// The newest `limit` records (all with `None`), of one machine or of all, newest last.
    ///
    /// Ordered by id, not time: ids follow commit order, while clocks of different processes
    /// (or hosts) may disagree.
    pub fn audit(
        &self,
        machine: Option<&str>,
        limit: Option<u64>,
    ) -> Result<Vec<AuditRow>, CatalogError> {
        // SQLite reads a negative LIMIT as "no limit".
        let limit = match limit {
            Some(n) => to_i64(n, "audit limit")?,
            None => -1,
        };
        let mut rows: Vec<AuditRow> = self
            .conn
            .prepare_cached(
                "SELECT id, time, author, op, machine, target, outcome, detail FROM audit \
                 WHERE ?1 IS NULL OR machine = ?1 ORDER BY id DESC LIMIT ?2",
            )
            .and_then(|mut s| {
                s.query_map(params![machine, limit], audit_from_row)?
                    .collect()
            })
            .ctx("read the audit log")?;
        rows.reverse();
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use crate::catalog::AuditRecord;
    use crate::catalog::testutil::catalog;

    fn rec<'a>(time: i64, op: &'a str, machine: Option<&'a str>) -> AuditRecord<'a> {
        AuditRecord {
            time,
            author: "ana",
            op,
            machine,
            target: Some("web@v1"),
            outcome: "ok",
            detail: r#"{"bytes":1}"#,
        }
    }

    #[test]
    fn append_and_read_newest_last() {
        let cat = catalog();
        cat.append_audit(&rec(1, "machine-create", Some("web")))
            .unwrap();
        cat.append_audit(&rec(2, "create", Some("db"))).unwrap();
        cat.append_audit(&rec(3, "gc", None)).unwrap();
        cat.append_audit(&rec(4, "restore", Some("web"))).unwrap();

        let all = cat.audit(None, None).unwrap();
        let ops: Vec<_> = all.iter().map(|r| r.op.as_str()).collect();
        assert_eq!(ops, ["machine-create", "create", "gc", "restore"]);
        assert_eq!(all[2].machine, None);
        assert_eq!(all[0].target.as_deref(), Some("web@v1"));
        assert_eq!(all[0].author, "ana");
        assert_eq!(all[0].outcome, "ok");
        assert_eq!(all[0].detail, r#"{"bytes":1}"#);

        let last2: Vec<_> = cat
            .audit(None, Some(2))
            .unwrap()
            .into_iter()
            .map(|r| r.time)
            .collect();
        assert_eq!(last2, [3, 4]);
        let web: Vec<_> = cat
            .audit(Some("web"), None)
            .unwrap()
            .into_iter()
            .map(|r| r.time)
            .collect();
        assert_eq!(web, [1, 4]);
        let web1: Vec<_> = cat
            .audit(Some("web"), Some(1))
            .unwrap()
            .into_iter()
            .map(|r| r.time)
            .collect();
        assert_eq!(web1, [4]);
        assert!(cat.audit(Some("nope"), None).unwrap().is_empty());
        assert!(cat.audit(None, Some(0)).unwrap().is_empty());
    }
}
