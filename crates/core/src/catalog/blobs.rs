//! The blob index: which pack holds each chunk and tree, and the packs themselves, including
//! the doomed state of two-phase gc.

use super::{BlobLoc, Catalog, CatalogError, Ctx, PackRow, id_col, to_i64, u32_col, u64_col};
use crate::model::{BlobId, PackId};
use rusqlite::{OptionalExtension, Row, params};

const PACK_COLS: &str = "SELECT id, size, created_at, doomed_at FROM packs";
const BLOB_COLS: &str = "SELECT id, kind, pack, offset, stored_len, raw_len FROM blobs";

fn pack_from_row(row: &Row<'_>) -> rusqlite::Result<PackRow> {
    Ok(PackRow {
        id: id_col(row, 0, PackId::from_slice)?,
        size: u64_col(row, 1)?,
        created_at: row.get(2)?,
        doomed_at: row.get(3)?,
    })
}

fn blob_from_row(row: &Row<'_>) -> rusqlite::Result<BlobLoc> {
    let kind: i64 = row.get(1)?;
    Ok(BlobLoc {
        id: id_col(row, 0, BlobId::from_slice)?,
        kind: u8::try_from(kind).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(1, kind))?,
        pack: id_col(row, 2, PackId::from_slice)?,
        offset: u64_col(row, 3)?,
        stored_len: u32_col(row, 4)?,
        raw_len: u32_col(row, 5)?,
    })
}

impl Catalog {
    /// Where blob `id` is stored, and whether its pack is doomed (a writer that finds a doomed
    /// location must write the blob again rather than reference it).
    ///
    /// Hot path: called for every chunk, so the statement is prepared once per connection.
    pub fn lookup_blob(&self, id: &BlobId) -> Result<Option<(BlobLoc, bool)>, CatalogError> {
        const OP: &str = "look up a blob";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT b.kind, b.pack, b.offset, b.stored_len, b.raw_len, \
                 p.doomed_at IS NOT NULL \
                 FROM blobs b JOIN packs p ON p.id = b.pack WHERE b.id = ?1",
            )
            .ctx(OP)?;
        stmt.query_row([id.as_bytes()], |row| {
            let kind: i64 = row.get(0)?;
            let loc = BlobLoc {
                id: *id,
                kind: u8::try_from(kind)
                    .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, kind))?,
                pack: id_col(row, 1, PackId::from_slice)?,
                offset: u64_col(row, 2)?,
                stored_len: u32_col(row, 3)?,
                raw_len: u32_col(row, 4)?,
            };
            Ok((loc, row.get::<_, bool>(5)?))
        })
        .optional()
        .ctx(OP)
    }

    #[cfg(test)]
    pub(crate) fn lookup_blob_reprepares(&self) -> i32 {
        let stmt = self
            .conn
            .prepare_cached(
                "SELECT b.kind, b.pack, b.offset, b.stored_len, b.raw_len, \
                 p.doomed_at IS NOT NULL \
                 FROM blobs b JOIN packs p ON p.id = b.pack WHERE b.id = ?1",
            )
            .unwrap();
        stmt.get_status(rusqlite::StatementStatus::RePrepare)
    }

    /// Indexes a new pack and its blobs, in one transaction.
    ///
    /// Dedup rule: a blob already indexed in a live pack keeps its location (this copy in the
    /// new pack is a harmless duplicate that repack will drop); a blob indexed in a doomed pack
    /// moves to this pack, since the doomed one is about to be deleted. Inserting a pack row
    /// that already exists keeps its size and creation time but takes the new doomed state: a
    /// writer that wrote a pack byte for byte equal to a doomed one (same content, same id)
    /// has just made it live again, and gc must not delete it under the writer.
    pub fn insert_pack(&self, pack: &PackRow, blobs: &[BlobLoc]) -> Result<(), CatalogError> {
        const OP: &str = "index a pack";
        let tx = self.write_tx(OP)?;
        self.put_pack(pack, OP)?;
        {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "INSERT INTO blobs (id, kind, pack, offset, stored_len, raw_len) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, pack = excluded.pack, \
                     offset = excluded.offset, stored_len = excluded.stored_len, \
                     raw_len = excluded.raw_len \
                     WHERE (SELECT doomed_at FROM packs WHERE packs.id = blobs.pack) IS NOT NULL",
                )
                .ctx(OP)?;
            for b in blobs {
                let offset = to_i64(b.offset, "blob offset")?;
                stmt.execute(params![
                    b.id.as_bytes(),
                    b.kind,
                    pack.id.as_bytes(),
                    offset,
                    b.stored_len,
                    b.raw_len
                ])
                .ctx(OP)?;
            }
        }
        tx.commit(OP)
    }

    /// Repack: indexes `new_pack` and points every blob in `blobs` at it (whatever pack it was
    /// in before), in one transaction. The old packs are then left for gc to doom.
    pub fn relocate_blobs(
        &self,
        new_pack: &PackRow,
        blobs: &[BlobLoc],
    ) -> Result<(), CatalogError> {
        const OP: &str = "relocate blobs";
        let tx = self.write_tx(OP)?;
        self.put_pack(new_pack, OP)?;
        {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "INSERT INTO blobs (id, kind, pack, offset, stored_len, raw_len) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, pack = excluded.pack, \
                     offset = excluded.offset, stored_len = excluded.stored_len, \
                     raw_len = excluded.raw_len",
                )
                .ctx(OP)?;
            for b in blobs {
                let offset = to_i64(b.offset, "blob offset")?;
                stmt.execute(params![
                    b.id.as_bytes(),
                    b.kind,
                    new_pack.id.as_bytes(),
                    offset,
                    b.stored_len,
                    b.raw_len
                ])
                .ctx(OP)?;
            }
        }
        tx.commit(OP)
    }

    fn put_pack(&self, pack: &PackRow, op: &'static str) -> Result<(), CatalogError> {
        let size = to_i64(pack.size, "pack size")?;
        self.conn
            .prepare_cached(
                "INSERT INTO packs (id, size, created_at, doomed_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (id) DO UPDATE SET doomed_at = excluded.doomed_at",
            )
            .and_then(|mut s| {
                s.execute(params![
                    pack.id.as_bytes(),
                    size,
                    pack.created_at,
                    pack.doomed_at
                ])
            })
            .ctx(op)?;
        Ok(())
    }

    /// All packs, by id.
    pub fn packs(&self) -> Result<Vec<PackRow>, CatalogError> {
        self.conn
            .prepare(&format!("{PACK_COLS} ORDER BY id"))
            .and_then(|mut s| s.query_map([], pack_from_row)?.collect())
            .ctx("list packs")
    }

    #[cfg(test)]
    pub fn pack(&self, id: &PackId) -> Result<Option<PackRow>, CatalogError> {
        self.conn
            .prepare_cached(&format!("{PACK_COLS} WHERE id = ?1"))
            .and_then(|mut s| s.query_row([id.as_bytes()], pack_from_row).optional())
            .ctx("look up a pack")
    }

    /// The blobs the index places in pack `id`, by offset.
    #[cfg(test)]
    pub fn blobs_in_pack(&self, id: &PackId) -> Result<Vec<BlobLoc>, CatalogError> {
        self.conn
            .prepare_cached(&format!("{BLOB_COLS} WHERE pack = ?1 ORDER BY offset"))
            .and_then(|mut s| s.query_map([id.as_bytes()], blob_from_row)?.collect())
            .ctx("list a pack's blobs")
    }

    /// Calls `f` for every indexed blob, streaming, so the whole index is never in memory.
    pub fn for_each_blob(&self, f: &mut dyn FnMut(&BlobLoc)) -> Result<(), CatalogError> {
        const OP: &str = "scan the blob index";
        let mut stmt = self.conn.prepare(BLOB_COLS).ctx(OP)?;
        let mut rows = stmt.query([]).ctx(OP)?;
        while let Some(row) = rows.next().ctx(OP)? {
            f(&blob_from_row(row).ctx(OP)?);
        }
        Ok(())
    }

    /// Marks a pack unreferenced as of `at`; it may be deleted once the grace period has passed.
    /// Dooming an already doomed pack keeps the earlier time, so repeated gc runs do not keep
    /// pushing the deletion back.
    pub fn doom_pack(&self, id: &PackId, at: i64) -> Result<(), CatalogError> {
        let n = self
            .conn
            .execute(
                "UPDATE packs SET doomed_at = coalesce(doomed_at, ?2) WHERE id = ?1",
                params![id.as_bytes(), at],
            )
            .ctx("doom a pack")?;
        if n == 0 {
            return Err(CatalogError::PackNotFound { id: *id });
        }
        Ok(())
    }

    /// Takes a pack back from doomed to live (a writer referenced it within the grace period).
    pub fn undoom_pack(&self, id: &PackId) -> Result<(), CatalogError> {
        let n = self
            .conn
            .execute(
                "UPDATE packs SET doomed_at = NULL WHERE id = ?1",
                [id.as_bytes()],
            )
            .ctx("undoom a pack")?;
        if n == 0 {
            return Err(CatalogError::PackNotFound { id: *id });
        }
        Ok(())
    }

    /// Removes a pack row and every blob row that points to it, in one transaction.
    pub fn delete_pack(&self, id: &PackId) -> Result<(), CatalogError> {
        const OP: &str = "delete a pack";
        let tx = self.write_tx(OP)?;
        self.conn
            .execute("DELETE FROM blobs WHERE pack = ?1", [id.as_bytes()])
            .ctx(OP)?;
        let n = self
            .conn
            .execute("DELETE FROM packs WHERE id = ?1", [id.as_bytes()])
            .ctx(OP)?;
        if n == 0 {
            return Err(CatalogError::PackNotFound { id: *id });
        }
        tx.commit(OP)
    }
}

#[cfg(test)]
mod tests {
    use crate::catalog::testutil::catalog;
    use crate::catalog::{BLOB_CHUNK, BLOB_TREE, BlobLoc, CatalogError, PackRow};
    use crate::model::{BlobId, PackId};

    fn pack(n: u8) -> PackRow {
        PackRow {
            id: PackId::from_bytes([n; 32]),
            size: 1000 + u64::from(n),
            created_at: i64::from(n),
            doomed_at: None,
        }
    }

    fn blob(n: u8, pack: &PackRow, offset: u64) -> BlobLoc {
        BlobLoc {
            id: BlobId::from_bytes([n; 32]),
            kind: if n.is_multiple_of(2) {
                BLOB_CHUNK
            } else {
                BLOB_TREE
            },
            pack: pack.id,
            offset,
            stored_len: 10 + u32::from(n),
            raw_len: 20 + u32::from(n),
        }
    }

    #[test]
    fn insert_and_look_up() {
        let cat = catalog();
        let p = pack(1);
        let blobs = [
            blob(1, &p, 0),
            blob(2, &p, 11),
            blob(3, &p, u64::from(u32::MAX) + 5),
        ];
        cat.insert_pack(&p, &blobs).unwrap();
        for b in &blobs {
            assert_eq!(cat.lookup_blob(&b.id).unwrap(), Some((*b, false)));
        }
        assert_eq!(cat.lookup_blob(&BlobId::from_bytes([9; 32])).unwrap(), None);
        assert_eq!(cat.pack(&p.id).unwrap(), Some(p.clone()));
        assert_eq!(cat.packs().unwrap(), std::slice::from_ref(&p));
        assert_eq!(cat.blobs_in_pack(&p.id).unwrap(), blobs);
        assert!(cat.pack(&PackId::from_bytes([7; 32])).unwrap().is_none());
        let mut seen = Vec::new();
        cat.for_each_blob(&mut |b| seen.push(*b)).unwrap();
        seen.sort_by_key(|b| b.id);
        assert_eq!(seen, blobs);
    }

    #[test]
    fn dedup_live_keeps_doomed_moves() {
        let cat = catalog();
        let (p1, p2, p3) = (pack(1), pack(2), pack(3));
        let a1 = blob(10, &p1, 0);
        let b1 = blob(11, &p1, 100);
        cat.insert_pack(&p1, &[a1, b1]).unwrap();
        // A live location wins over the new copy.
        let a2 = blob(10, &p2, 5);
        cat.insert_pack(&p2, &[a2]).unwrap();
        assert_eq!(cat.lookup_blob(&a1.id).unwrap(), Some((a1, false)));

        cat.doom_pack(&p1.id, 50).unwrap();
        assert_eq!(cat.lookup_blob(&b1.id).unwrap(), Some((b1, true)));
        // A doomed location gives way to the new copy.
        let b3 = blob(11, &p3, 7);
        cat.insert_pack(&p3, &[b3]).unwrap();
        assert_eq!(cat.lookup_blob(&b1.id).unwrap(), Some((b3, false)));
        // a stays in doomed p1 since nothing rewrote it.
        assert_eq!(cat.lookup_blob(&a1.id).unwrap(), Some((a1, true)));
        assert_eq!(cat.blobs_in_pack(&p1.id).unwrap(), [a1]);
    }

    #[test]
    fn doom_undoom_delete() {
        let cat = catalog();
        let p = pack(1);
        let b = blob(1, &p, 0);
        cat.insert_pack(&p, &[b]).unwrap();
        cat.doom_pack(&p.id, 100).unwrap();
        // The first doom time holds, so the grace period is not extended.
        cat.doom_pack(&p.id, 200).unwrap();
        assert_eq!(cat.pack(&p.id).unwrap().unwrap().doomed_at, Some(100));
        cat.undoom_pack(&p.id).unwrap();
        assert_eq!(cat.pack(&p.id).unwrap().unwrap().doomed_at, None);
        cat.delete_pack(&p.id).unwrap();
        assert!(cat.pack(&p.id).unwrap().is_none());
        assert!(cat.lookup_blob(&b.id).unwrap().is_none());

        let gone = p.id;
        for r in [
            cat.doom_pack(&gone, 1),
            cat.undoom_pack(&gone),
            cat.delete_pack(&gone),
        ] {
            assert!(matches!(r, Err(CatalogError::PackNotFound { id }) if id == gone));
        }
    }

    #[test]
    fn relocate_points_blobs_at_the_new_pack() {
        let cat = catalog();
        let (p1, p2, p3) = (pack(1), pack(2), pack(3));
        cat.insert_pack(&p1, &[blob(1, &p1, 0), blob(2, &p1, 50)])
            .unwrap();
        cat.insert_pack(&p2, &[blob(3, &p2, 0)]).unwrap();
        let moved = [blob(1, &p3, 0), blob(3, &p3, 11)];
        cat.relocate_blobs(&p3, &moved).unwrap();
        for b in &moved {
            assert_eq!(cat.lookup_blob(&b.id).unwrap(), Some((*b, false)));
        }
        assert_eq!(cat.blobs_in_pack(&p1.id).unwrap(), [blob(2, &p1, 50)]);
        assert!(cat.blobs_in_pack(&p2.id).unwrap().is_empty());
        assert_eq!(cat.blobs_in_pack(&p3.id).unwrap(), moved);
    }

    #[test]
    fn failed_insert_leaves_nothing() {
        let cat = catalog();
        let p = pack(1);
        let mut bad = blob(2, &p, 0);
        bad.kind = 7;
        assert!(cat.insert_pack(&p, &[blob(1, &p, 0), bad]).is_err());
        assert!(cat.pack(&p.id).unwrap().is_none());
        assert!(
            cat.lookup_blob(&BlobId::from_bytes([1; 32]))
                .unwrap()
                .is_none()
        );
        let mut far = blob(3, &p, 0);
        far.offset = u64::MAX;
        assert!(matches!(
            cat.insert_pack(&p, &[far]),
            Err(CatalogError::OutOfRange {
                what: "blob offset",
                ..
            })
        ));
        assert!(cat.packs().unwrap().is_empty());
    }
}
