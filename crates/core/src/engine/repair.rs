//! Rebuilding the catalog from the store, for a catalog that is damaged or lost.
//!
//! The store is the source of truth: every pack carries its own index, and every machine and
//! checkpoint has a manifest object. The damaged catalog is moved aside (never deleted), a new
//! one is filled from the store, and the audit log records the rebuild. What the old catalog
//! alone knew is lost: its audit log, and checkpoints whose manifests were never written.

use super::check::{CheckReport, Finding};
use super::manifest::{CheckpointManifest, MachineManifest};
use super::{EngineError, Repo, RepoOptions, Result, now_ns};
use crate::catalog::{BlobLoc, Catalog, CatalogError, MachineKind, NewCheckpoint, PackRow};
use crate::store::{LocalBackend, Store};
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::Arc;

/// What a rebuild found and restored.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RebuildReport {
    /// Where the damaged catalog was moved, if there was one.
    pub moved_aside: Option<PathBuf>,
    pub packs: u64,
    pub blobs: u64,
    pub machines: u64,
    pub checkpoints: u64,
    /// Objects that could not be read back (damaged packs or manifests).
    pub skipped: Vec<String>,
}

fn open_store(opts: &RepoOptions) -> Result<Store> {
    Ok(Store::new(Arc::new(LocalBackend::open(
        &opts.home.join("store"),
    )?)))
}

fn manifests<T: serde::de::DeserializeOwned>(
    store: &Store,
    prefix: &str,
    skipped: &mut Vec<String>,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for obj in store.list_objects(prefix)? {
        match store
            .get_object(&obj.key)
            .map(|b| serde_json::from_slice::<T>(&b))
        {
            Ok(Ok(m)) => out.push(m),
            Ok(Err(e)) => skipped.push(format!("{}: {e}", obj.key)),
            Err(e) => skipped.push(format!("{}: {e}", obj.key)),
        }
    }
    Ok(out)
}

impl Repo {
    /// True when `e` means the catalog itself is damaged (so `check --repair` can help).
    pub fn is_catalog_damage(e: &EngineError) -> bool {
        matches!(e, EngineError::Catalog(CatalogError::Corrupt { .. }))
    }

    /// What `check` reports when the catalog cannot even be opened: the damage, and every
    /// checkpoint (named from the store's manifests) whose catalog row is unreachable.
    pub fn damaged_catalog_report(opts: &RepoOptions, reason: &str) -> Result<CheckReport> {
        let store = open_store(opts)?;
        let mut skipped = Vec::new();
        let machines: Vec<MachineManifest> = manifests(&store, "machines/", &mut skipped)?;
        let names: HashMap<String, String> =
            machines.into_iter().map(|m| (m.uid, m.name)).collect();
        let mut cps: Vec<CheckpointManifest> = manifests(&store, "checkpoints/", &mut skipped)?;
        cps.sort_by_key(|c| c.created_at);
        let checkpoints: Vec<String> = cps
            .iter()
            .map(|c| {
                format!(
                    "{}@v{}",
                    names.get(&c.machine_uid).map_or("?", String::as_str),
                    c.version
                )
            })
            .collect();
        Ok(CheckReport {
            checkpoints: checkpoints.len() as u64,
            findings: vec![Finding {
                object: "catalog".to_owned(),
                problem: format!(
                    "{reason}; the store still holds every pack and manifest: run `cairn check --repair` to rebuild the catalog from it"
                ),
                checkpoints,
                paths: Vec::new(),
            }],
            ..Default::default()
        })
    }

    /// Moves the catalog aside and rebuilds it from the store's packs and manifests.
    pub fn rebuild_catalog(opts: &RepoOptions) -> Result<RebuildReport> {
        let mut report = RebuildReport::default();
        let db = opts.home.join("catalog.db");
        if db.exists() {
            let aside = opts.home.join(format!("catalog.db.damaged-{}", now_ns()));
            for suffix in ["", "-wal", "-shm"] {
                let mut from = db.clone().into_os_string();
                from.push(suffix);
                let mut to = aside.clone().into_os_string();
                to.push(suffix);
                if std::path::Path::new(&from).exists() {
                    std::fs::rename(&from, &to).map_err(|source| EngineError::Io {
                        op: "move the damaged catalog aside",
                        path: PathBuf::from(from),
                        source,
                    })?;
                }
            }
            report.moved_aside = Some(aside);
        }
        let store = open_store(opts)?;
        let mut catalog = Catalog::open(&db)?;
        let mut skipped = Vec::new();
        let packs = store.list_packs()?;
        let mut machines: Vec<MachineManifest> = manifests(&store, "machines/", &mut skipped)?;
        // Newest first: a create cut short by a crash can leave a manifest whose name a later
        // create took; the later one is the machine.
        machines.sort_by_key(|m| std::cmp::Reverse(m.created_at));
        let mut cps: Vec<CheckpointManifest> = manifests(&store, "checkpoints/", &mut skipped)?;
        // Parents are older than their children, so creation order inserts parents first.
        cps.sort_by_key(|c| (c.created_at, c.version));
        catalog.transaction(|cat| {
            for (id, size) in &packs {
                let entries = match store.read_pack_index(id) {
                    Ok(e) => e,
                    Err(e) => {
                        skipped.push(format!("pack {}: {e}", id.to_hex()));
                        continue;
                    }
                };
                let row = PackRow {
                    id: *id,
                    size: *size,
                    created_at: now_ns(),
                    doomed_at: None,
                };
                let locs: Vec<BlobLoc> = entries
                    .iter()
                    .map(|e| BlobLoc {
                        id: e.id,
                        kind: e.kind as u8,
                        pack: *id,
                        offset: e.offset,
                        stored_len: e.stored_len,
                        raw_len: e.raw_len,
                    })
                    .collect();
                cat.insert_pack(&row, &locs)?;
                report.packs += 1;
                report.blobs += locs.len() as u64;
            }
            let mut keys = HashMap::new();
            for m in &machines {
                let kind = if m.kind == "mounted" {
                    MachineKind::Mounted
                } else {
                    MachineKind::Dir
                };
                let dir = PathBuf::from(OsString::from_vec(m.dir.clone()));
                let row = match cat.insert_machine(&m.uid, &m.name, &dir, kind, m.created_at) {
                    Err(crate::catalog::CatalogError::MachineExists { .. }) => {
                        skipped.push(format!(
                            "machine manifest {}: a newer machine is named {}",
                            m.uid, m.name
                        ));
                        continue;
                    }
                    other => other?,
                };
                if let Some(base) = &m.base {
                    cat.set_base(row.id, base, None, None)?;
                }
                keys.insert(m.uid.clone(), row.id);
                report.machines += 1;
            }
            let mut rows: HashMap<(String, u64), i64> = HashMap::new();
            for c in &cps {
                let Some(&machine_id) = keys.get(&c.machine_uid) else {
                    skipped.push(format!(
                        "checkpoint v{} of unknown machine {}",
                        c.version, c.machine_uid
                    ));
                    continue;
                };
                let parent = c.parent.as_ref().and_then(|p| rows.get(p).copied());
                let row = cat.commit_checkpoint(&NewCheckpoint {
                    machine_id,
                    name: c.name.as_deref(),
                    note: &c.note,
                    author: &c.author,
                    created_at: c.created_at,
                    parent,
                    root: c.root,
                    logical_bytes: c.logical_bytes,
                    stored_bytes: 0,
                    added_bytes: 0,
                    entries: c.entries,
                    auto: c.auto,
                    version: Some(c.version),
                })?;
                rows.insert((c.machine_uid.clone(), c.version), row.id);
                report.checkpoints += 1;
            }
            Ok(())
        })?;
        report.skipped = skipped;
        let repo = Repo::open(opts)?;
        repo.audit(
            "catalog-rebuild",
            None,
            None,
            &Ok(serde_json::to_string(&report).unwrap_or_default()),
        );
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CheckpointOptions, CreateMachineOptions, NoProgress, RestoreOptions};
    use crate::model::Ref;
    use std::time::Duration;

    #[test]
    fn truncated_catalog_is_reported_and_rebuilt_from_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = RepoOptions {
            home: tmp.path().join("home"),
            author: "t".into(),
            lock_wait: Duration::from_secs(5),
            lower_server: Default::default(),
            lower_images: true,
        };
        let dir = tmp.path().join("m");
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/hostname"), b"one\n").unwrap();
        {
            let repo = Repo::open(&opts).unwrap();
            repo.create_machine(
                &CreateMachineOptions {
                    name: "web".into(),
                    dir: dir.clone(),
                    from_tar: None,
                },
                &NoProgress,
            )
            .unwrap();
            repo.checkpoint(
                "web",
                &CheckpointOptions {
                    name: Some("clean".into()),
                    ..Default::default()
                },
                &NoProgress,
            )
            .unwrap();
            std::fs::write(dir.join("etc/hostname"), b"two\n").unwrap();
            repo.checkpoint("web", &CheckpointOptions::default(), &NoProgress)
                .unwrap();
            // Every commit into the main file, which is what gets damaged below.
            assert!(repo.catalog.fold_wal().unwrap());
        }
        let db = opts.home.join("catalog.db");
        let len = std::fs::metadata(&db).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        f.set_len(len / 3).unwrap();
        drop(f);

        let err = Repo::open(&opts)
            .err()
            .expect("a truncated catalog does not open");
        assert!(Repo::is_catalog_damage(&err), "{err}");
        let report = Repo::damaged_catalog_report(&opts, &err.to_string()).unwrap();
        assert!(!report.ok());
        assert_eq!(
            report.findings[0].checkpoints,
            vec!["web@v1".to_owned(), "web@v2".to_owned()]
        );

        // A create cut short before its row was durable left an older manifest of the name.
        let store = open_store(&opts).unwrap();
        crate::engine::manifest::put_machine(
            &store,
            &crate::engine::manifest::MachineManifest {
                format: crate::engine::manifest::FORMAT,
                uid: "0".repeat(32),
                name: "web".into(),
                dir: b"/nowhere".to_vec(),
                kind: "mounted".into(),
                created_at: 1,
                base: None,
            },
        )
        .unwrap();

        let rebuilt = Repo::rebuild_catalog(&opts).unwrap();
        assert_eq!((rebuilt.machines, rebuilt.checkpoints), (1, 2));
        assert_eq!(
            rebuilt.skipped,
            vec![format!(
                "machine manifest {}: a newer machine is named web",
                "0".repeat(32)
            )]
        );
        assert!(rebuilt.moved_aside.is_some());
        let repo = Repo::open(&opts).unwrap();
        assert!(repo.check(&Default::default(), &NoProgress).unwrap().ok());
        repo.restore(
            &Ref::parse(b"web@clean").unwrap(),
            &RestoreOptions::default(),
            &NoProgress,
        )
        .unwrap();
        assert_eq!(std::fs::read(dir.join("etc/hostname")).unwrap(), b"one\n");
        let next = repo
            .checkpoint("web", &CheckpointOptions::default(), &NoProgress)
            .unwrap();
        assert_eq!(
            next.checkpoint.version, 3,
            "versions continue after the rebuilt ones"
        );
    }
}
