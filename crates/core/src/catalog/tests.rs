//! Tests across the whole catalog: reopening, batching, concurrency between processes-like
//! connections, and damaged files.

use super::testutil::{catalog, commit, machine, new_cp};
use super::{BLOB_CHUNK, BlobLoc, Catalog, CatalogError, MachineKind, PackRow};
use crate::model::{BlobId, PackId};
use std::path::Path;

#[test]
fn reopen_keeps_data() {
    let t = catalog();
    let path = t.db_path();
    let m = machine(&t, "web");
    let c = commit(&t, m.id, None);
    let p = PackRow {
        id: PackId::from_bytes([1; 32]),
        size: 9,
        created_at: 1,
        doomed_at: None,
    };
    let b = BlobLoc {
        id: BlobId::from_bytes([2; 32]),
        kind: BLOB_CHUNK,
        pack: p.id,
        offset: 0,
        stored_len: 9,
        raw_len: 12,
    };
    t.insert_pack(&p, &[b]).unwrap();
    let dir = t.dir;
    drop(t.cat);

    let cat = Catalog::open(&path).unwrap();
    let m2 = cat.machine("web").unwrap().unwrap();
    assert_eq!(m2.head, Some(c.id));
    assert_eq!(m2.next_version, 2);
    assert_eq!(cat.checkpoint(c.id).unwrap().unwrap().root, c.root);
    assert_eq!(cat.lookup_blob(&b.id).unwrap(), Some((b, false)));
    assert!(cat.quick_check().unwrap().is_empty());
    drop(dir);
}

#[test]
fn transaction_batches_and_rolls_back_as_one() {
    let mut t = catalog();
    let made = t
        .transaction(|cat| {
            let m = cat.insert_machine("u1", "a", Path::new("/a"), MachineKind::Dir, 1)?;
            let c = cat.commit_checkpoint(&new_cp(m.id, None))?;
            // A failing call inside the batch undoes only itself (a savepoint)...
            assert!(matches!(
                cat.insert_machine("u2", "a", Path::new("/b"), MachineKind::Dir, 1),
                Err(CatalogError::MachineExists { .. })
            ));
            cat.set_head(m.id, Some(c.id))?;
            Ok(m.id)
        })
        .unwrap();
    assert_eq!(t.checkpoints(made).unwrap().len(), 1);

    // ...while an error returned from the closure undoes the whole batch.
    let err = t
        .transaction(|cat| {
            let m = cat.insert_machine("u3", "b", Path::new("/b"), MachineKind::Dir, 1)?;
            cat.commit_checkpoint(&new_cp(m.id, None))?;
            cat.commit_checkpoint(&new_cp(m.id, Some(4040)))
        })
        .unwrap_err();
    assert!(matches!(err, CatalogError::CheckpointNotFound { id: 4040 }));
    assert!(t.machine("b").unwrap().is_none());
    assert_eq!(t.all_checkpoints().unwrap().len(), 1);
    // The connection is usable afterwards, outside any transaction.
    machine(&t, "c");
}

#[test]
fn two_connections_write_concurrently() {
    let t = catalog();
    let path = t.db_path();
    let shared = machine(&t, "shared").id;
    const N: usize = 40;
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || -> Result<Vec<u64>, CatalogError> {
                let cat = Catalog::open(&path)?;
                let own = cat.insert_machine(
                    &format!("uid-t{i}"),
                    &format!("t{i}"),
                    Path::new("/t"),
                    MachineKind::Dir,
                    1,
                )?;
                let mut versions = Vec::new();
                for _ in 0..N {
                    cat.commit_checkpoint(&new_cp(own.id, None))?;
                    // Both threads race for versions of the same machine too.
                    versions.push(cat.commit_checkpoint(&new_cp(shared, None))?.version);
                    cat.begin_session(std::process::id(), 0, "checkpoint")?;
                }
                Ok(versions)
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().expect("writer thread panicked").unwrap());
    }
    all.sort_unstable();
    let expected: Vec<u64> = (1..=(2 * N) as u64).collect();
    assert_eq!(all, expected, "every version handed out exactly once");
    assert_eq!(t.checkpoints(shared).unwrap().len(), 2 * N);
    for name in ["t0", "t1"] {
        let m = t.machine(name).unwrap().unwrap();
        assert_eq!(t.checkpoints(m.id).unwrap().len(), N);
    }
    assert_eq!(t.sessions().unwrap().len(), 2 * N);
    assert!(t.quick_check().unwrap().is_empty());
}

#[test]
fn concurrent_first_open_migrates_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || Catalog::open(&path).map(|_| ()))
        })
        .collect();
    for h in handles {
        h.join().expect("open thread panicked").unwrap();
    }
    assert!(
        Catalog::open(&path)
            .unwrap()
            .quick_check()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn garbage_file_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    std::fs::write(&path, vec![0xA5u8; 8192]).unwrap();
    let err = Catalog::open(&path).unwrap_err();
    assert!(matches!(err, CatalogError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("cairn check --repair"), "{err}");
}

/// Builds a catalog with enough rows to span many pages, closes it, and returns its bytes.
fn populated_catalog(path: &Path) -> Vec<u8> {
    let cat = Catalog::open(path).unwrap();
    for i in 0..20u8 {
        let p = PackRow {
            id: PackId::from_bytes([i; 32]),
            size: 1,
            created_at: 1,
            doomed_at: None,
        };
        let blobs: Vec<_> = (0..200u16)
            .map(|j| {
                let mut id = [i; 32];
                id[..2].copy_from_slice(&j.to_le_bytes());
                BlobLoc {
                    id: BlobId::from_bytes(id),
                    kind: BLOB_CHUNK,
                    pack: p.id,
                    offset: u64::from(j),
                    stored_len: 1,
                    raw_len: 1,
                }
            })
            .collect();
        cat.insert_pack(&p, &blobs).unwrap();
    }
    // Everything into the main file, which is what the callers damage.
    assert!(cat.fold_wal().unwrap());
    drop(cat);
    std::fs::read(path).unwrap()
}

/// A damaged file must surface as `Corrupt` from open or a query, or as quick_check findings;
/// never as a panic or as a silently healthy catalog.
fn assert_damage_is_reported(path: &Path) {
    let cat = match Catalog::open(path) {
        Err(CatalogError::Corrupt { .. }) => return,
        Err(e) => panic!("expected Corrupt, got {e:?}"),
        Ok(cat) => cat,
    };
    let findings = cat.quick_check().unwrap();
    assert!(!findings.is_empty(), "damage went unnoticed");
    // Reads over the damage report Corrupt rather than panicking.
    match cat.packs() {
        Ok(_) | Err(CatalogError::Corrupt { .. }) => {}
        Err(e) => panic!("expected Corrupt, got {e:?}"),
    }
    let mut n = 0;
    match cat.for_each_blob(&mut |_| n += 1) {
        Ok(()) | Err(CatalogError::Corrupt { .. }) => {}
        Err(e) => panic!("expected Corrupt, got {e:?}"),
    }
}

#[test]
fn truncated_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    let bytes = populated_catalog(&path);
    assert!(bytes.len() > 16 * 4096, "test needs a multi-page file");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_damage_is_reported(&path);
}

#[test]
fn garbage_pages_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    let mut bytes = populated_catalog(&path);
    // Keep the header page intact, so open succeeds and only the check can find the damage.
    let len = bytes.len();
    for b in &mut bytes[4096..len] {
        *b = 0x5A;
    }
    std::fs::write(&path, &bytes).unwrap();
    assert_damage_is_reported(&path);
}

#[test]
fn unwritable_location_is_an_open_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("catalog.db");
    let err = Catalog::open(&path).unwrap_err();
    assert!(matches!(err, CatalogError::Open { .. }), "{err:?}");
}

#[test]
fn the_blob_lookup_is_prepared_once_per_connection() {
    let t = catalog();
    let p = PackRow {
        id: PackId::from_bytes([1; 32]),
        size: 9,
        created_at: 1,
        doomed_at: None,
    };
    let blobs: Vec<BlobLoc> = (0..50u8)
        .map(|i| BlobLoc {
            id: BlobId::from_bytes([i; 32]),
            kind: BLOB_CHUNK,
            pack: p.id,
            offset: u64::from(i) * 10,
            stored_len: 9,
            raw_len: 12,
        })
        .collect();
    t.insert_pack(&p, &blobs).unwrap();
    let reader = Catalog::open(&t.db_path()).unwrap();
    for b in &blobs {
        assert_eq!(reader.lookup_blob(&b.id).unwrap(), Some((*b, false)));
    }
    assert_eq!(reader.lookup_blob_reprepares(), 0);
}

/// Every command's first connection reads the whole WAL to rebuild its index, so commits fold
/// it into the main file long before SQLite's default 1000 frames: a run of small commits
/// (a few frames each, as a fork's) never lets it grow past about a mebibyte.
#[test]
fn small_commits_keep_the_wal_short() {
    let t = catalog();
    let wal = t.db_path().with_extension("db-wal");
    let mut largest = 0;
    for i in 0..400u32 {
        let m = machine(&t, &format!("m{i}"));
        commit(&t, m.id, None);
        largest = largest.max(std::fs::metadata(&wal).unwrap().len());
    }
    // 400 machines with a checkpoint each wrote thousands of frames in all.
    assert!(largest > 0);
    assert!(
        largest <= (1 << 20) + 32 * 4120,
        "the WAL reached {largest} bytes"
    );
}
