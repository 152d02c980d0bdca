//! Checkpoints: create, resolve, list, show, delete.
//!
//! Commit protocol (ARCHITECTURE.md holds the numbered list): packs are durable and indexed,
//! then the manifest object is durable, then one catalog transaction inserts the row and moves
//! the machine's head. "Created" is reported only after that transaction commits.

use super::blobs::{BlobWriter, PendingIndex};
use super::ingest::{IngestOptions, ingest};
use super::manifest::{self, CheckpointManifest};
use super::statcache::StatCache;
use super::upper::{TRUSTED_PREFIX, UpperBase};
use super::{EngineError, Progress, Repo, Result, now_ns};
use crate::catalog::{CheckpointRow, MachineKind, MachineRow, NewCheckpoint};
use crate::model::{CheckpointSel, Ref, TreeId, validate_checkpoint_name};
use crate::rootfs::Dir;

/// Inputs of `checkpoint create`.
#[derive(Clone, Debug, Default)]
pub struct CheckpointOptions {
    pub name: Option<String>,
    pub note: String,
    /// Made by cairn itself (the undo point a restore records first).
    pub auto: bool,
}

/// A checkpoint as shown to users. Sizes other than `logical_bytes` are filled by the
/// commands that compute them (`list`, `show`, `du`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckpointInfo {
    /// `machine@vN`
    pub id: String,
    pub machine: String,
    pub version: u64,
    pub name: Option<String>,
    pub note: String,
    pub author: String,
    /// Unix nanoseconds.
    pub created_at: i64,
    pub parent: Option<String>,
    pub root: TreeId,
    pub logical_bytes: u64,
    pub entries: u64,
    pub auto: bool,
    pub stored_bytes: Option<u64>,
    pub exclusive_bytes: Option<u64>,
}

/// What `checkpoint create` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckpointReport {
    pub checkpoint: CheckpointInfo,
    /// Bytes read from files whose stat changed (the rest came from the stat cache).
    pub read_bytes: u64,
    /// Compressed bytes of chunks and trees this checkpoint added to the store.
    pub added_bytes: u64,
    pub added_blobs: u64,
    /// True when the tree equals the machine's head: nothing changed.
    pub unchanged: bool,
    pub warnings: Vec<String>,
    /// Where the time went: freeze (a running mounted machine only), ingest, commit.
    pub phases: Vec<super::Phase>,
}

impl Repo {
    /// Takes a checkpoint of a machine's live directory.
    pub fn checkpoint(
        &self,
        machine: &str,
        opts: &CheckpointOptions,
        progress: &dyn Progress,
    ) -> Result<CheckpointReport> {
        let result = (|| {
            if let Some(n) = &opts.name {
                validate_checkpoint_name(n)?;
            }
            let m = self.machine_row(machine)?;
            let _lock = self.lock_machine(machine, "checkpoint create")?;
            self.complete_interrupted(&m, progress)?;
            let m = self.machine_row(machine)?;
            self.checkpoint_locked(&m, opts, progress, Some("create"))
        })();
        // A success was recorded in the checkpoint's own commit.
        if let Err(e) = &result {
            self.audit(
                "create",
                Some(machine),
                None,
                &Err(super::machine::clone_err(e)),
            );
        }
        result
    }

    /// Ingests the live directory and returns its root tree, writing blobs but no checkpoint.
    /// The caller holds the machine lock and a session.
    pub(crate) fn ingest_live(
        &self,
        m: &MachineRow,
        writer: &BlobWriter<'_>,
        progress: &dyn Progress,
    ) -> Result<(super::ingest::Ingested, u64)> {
        let cache_path = self.machine_state_dir(&m.uid).join("statcache");
        let cache = StatCache::load(&cache_path);
        let epoch = self.catalog.gc_epoch()?;
        let workers = ingest_workers();
        if m.kind == MachineKind::Mounted {
            // The machine's processes stand still while its upper is read, so the checkpoint
            // is one instant of it; they run again as soon as the walk ends.
            let frozen = self.freeze_machine(m)?;
            let mut ing = if crate::sandbox::rootless() {
                // Without root, only a user namespace of the machine's ids may read all of
                // the upper (`rootless.rs`).
                self.ingest_upper_in_namespace(m, writer)?
            } else {
                self.ingest_upper(m, writer, progress, &cache, epoch, TRUSTED_PREFIX)?
            };
            ing.frozen = frozen.as_ref().map(|f| f.took);
            drop(frozen);
            return Ok((ing, epoch));
        }
        let root = Dir::open(&m.dir).map_err(|e| EngineError::BadDir {
            path: m.dir.clone(),
            reason: format!(
                "{e}; if it moved, `cairn machine rm {}` and create it again",
                m.name
            ),
        })?;
        let opts = IngestOptions {
            progress,
            cache: &cache,
            trust_cache: cache.epoch == epoch,
            workers,
            upper: None,
        };
        Ok((ingest(&root, writer, &opts)?, epoch))
    }

    /// Ingests a mounted machine's upper layer merged over its base: only the upper is walked,
    /// and the base fills in everything it lacks. `xattr_prefix` is the overlay's:
    /// `TRUSTED_PREFIX` when root mounted it, `USER_PREFIX` in a user namespace
    /// (`rootless.rs`, whose reader, root of a namespace of the machine's ids, sees the
    /// machine's own owners).
    pub(crate) fn ingest_upper(
        &self,
        m: &MachineRow,
        writer: &BlobWriter<'_>,
        progress: &dyn Progress,
        cache: &StatCache,
        epoch: u64,
        xattr_prefix: &'static [u8],
    ) -> Result<super::ingest::Ingested> {
        let base = super::mounted::base_of_row(m)?;
        let upper_dir = self.layout(m).upper;
        let root = Dir::open(&upper_dir).map_err(|e| EngineError::BadDir {
            path: upper_dir.clone(),
            reason: format!("{e}; the machine's upper layer is missing"),
        })?;
        // The writer's snapshot holds the base: no reader of its own to open.
        let src = writer.source();
        let opts = IngestOptions {
            progress,
            cache,
            trust_cache: cache.epoch == epoch,
            workers: ingest_workers(),
            upper: Some(UpperBase {
                src: &src,
                root: base.root,
                entries: base.entries,
                logical: base.logical_bytes,
                xattr_prefix,
            }),
        };
        ingest(&root, writer, &opts)
    }

    /// Checkpoint with the machine lock already held. With `audit`, the new checkpoint is
    /// recorded in the audit log under that op in the same commit.
    pub(crate) fn checkpoint_locked(
        &self,
        m: &MachineRow,
        opts: &CheckpointOptions,
        progress: &dyn Progress,
        audit: Option<&'static str>,
    ) -> Result<CheckpointReport> {
        if let Some(n) = &opts.name
            && self.catalog.checkpoint_by_name(m.id, n)?.is_some()
        {
            return Err(EngineError::Invalid(format!(
                "machine {} already has a checkpoint named {n}; pick another name",
                m.name
            )));
        }
        let _session = self.begin_session("checkpoint")?;
        let writer = BlobWriter::new(&self.store, &self.catalog_path())?;
        let t = std::time::Instant::now();
        let (ing, epoch) = self.ingest_live(m, &writer, progress)?;
        let mut phases = Vec::new();
        if let Some(took) = ing.frozen {
            phases.push(super::Phase {
                name: "freeze",
                ms: took.as_secs_f64() * 1e3,
            });
        }
        phases.push(super::Phase::since("ingest", t));
        let t = std::time::Instant::now();
        progress.phase("committing", None);
        let (mut stats, index) = writer.flush_unindexed()?;
        stats.add(ing.written);
        let head = match m.head {
            Some(h) => self.catalog.checkpoint(h)?,
            None => None,
        };
        let unchanged = head.as_ref().is_some_and(|h| h.root == ing.root);
        let row = self.commit(
            m,
            &ing.root,
            opts,
            head.as_ref(),
            ing.logical_bytes,
            ing.entries,
            stats.stored_bytes,
            audit.map(|op| CommitAudit { op, detail: None }),
            index,
        )?;
        phases.push(super::Phase::since("commit", t));
        let mut cache = ing.cache;
        cache.epoch = epoch;
        if let Err(e) = cache.save(&self.machine_state_dir(&m.uid).join("statcache")) {
            tracing::warn!(
                "could not save the stat cache (the next checkpoint reads every file): {e}"
            );
        }
        Ok(CheckpointReport {
            checkpoint: self.checkpoint_info(&row)?,
            read_bytes: ing.read_bytes,
            added_bytes: stats.stored_bytes,
            added_blobs: stats.blobs,
            unchanged,
            warnings: ing.warnings,
            phases,
        })
    }

    /// Steps 2–3 of the commit protocol: manifest, then the catalog row and head.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn commit(
        &self,
        m: &MachineRow,
        root: &TreeId,
        opts: &CheckpointOptions,
        parent: Option<&CheckpointRow>,
        logical_bytes: u64,
        entries: u64,
        added_bytes: u64,
        audit: Option<CommitAudit>,
        index: PendingIndex,
    ) -> Result<CheckpointRow> {
        // The machine lock is held, so nobody else assigns this machine's next version.
        let man = self.checkpoint_manifest(
            &m.uid,
            m.next_version,
            root,
            opts,
            parent,
            (logical_bytes, entries),
        )?;
        manifest::put_checkpoint(&self.store, &man)?;
        self.commit_row(m, &man, parent, added_bytes, audit, index)
    }

    /// The manifest of checkpoint `version` of the machine `machine_uid`, as `commit` writes it
    /// before the row; `totals` is (logical bytes, entries).
    pub(crate) fn checkpoint_manifest(
        &self,
        machine_uid: &str,
        version: u64,
        root: &TreeId,
        opts: &CheckpointOptions,
        parent: Option<&CheckpointRow>,
        totals: (u64, u64),
    ) -> Result<CheckpointManifest> {
        let parent = match parent {
            Some(p) => Some((
                self.catalog
                    .machine_by_id(p.machine_id)?
                    .map(|pm| pm.uid)
                    .unwrap_or_default(),
                p.version,
            )),
            None => None,
        };
        Ok(CheckpointManifest {
            format: manifest::FORMAT,
            machine_uid: machine_uid.to_owned(),
            version,
            name: opts.name.clone(),
            note: opts.note.clone(),
            author: self.author.clone(),
            created_at: now_ns(),
            parent,
            root: *root,
            logical_bytes: totals.0,
            entries: totals.1,
            auto: opts.auto,
        })
    }

    /// Step 3 of the commit protocol: the row of checkpoint `man`, whose manifest is durable,
    /// and the machine's head, with the rows that index its last packs and the audit row if
    /// one is given (one fsync for all).
    pub(crate) fn commit_row(
        &self,
        m: &MachineRow,
        man: &CheckpointManifest,
        parent: Option<&CheckpointRow>,
        added_bytes: u64,
        audit: Option<CommitAudit>,
        index: PendingIndex,
    ) -> Result<CheckpointRow> {
        let new = NewCheckpoint {
            machine_id: m.id,
            name: man.name.as_deref(),
            note: &man.note,
            author: &man.author,
            created_at: man.created_at,
            parent: parent.map(|p| p.id),
            root: man.root,
            logical_bytes: man.logical_bytes,
            stored_bytes: 0,
            added_bytes,
            entries: man.entries,
            auto: man.auto,
            version: Some(man.version),
        };
        if audit.is_none() && index.is_empty() {
            return Ok(self.catalog.commit_checkpoint(&new)?);
        }
        // The index and audit rows commit with the checkpoint: one fsync, never one without
        // the others.
        self.catalog.batch(|| {
            index.insert(&self.catalog)?;
            let row = self.catalog.commit_checkpoint(&new)?;
            if let Some(audit) = audit {
                let id = format!("{}@v{}", m.name, row.version);
                let detail = audit.detail.unwrap_or_else(|| id.clone());
                self.audit(audit.op, Some(&m.name), Some(&id), &Ok(detail));
            }
            Ok(row)
        })
    }

    /// Resolves `MACHINE@SEL` to its machine and checkpoint rows.
    pub(crate) fn resolve(&self, r: &Ref) -> Result<(MachineRow, CheckpointRow)> {
        let m = self.machine_row(&r.machine)?;
        let row = match &r.sel {
            CheckpointSel::Version(v) => self.catalog.checkpoint_by_version(m.id, *v)?,
            CheckpointSel::Name(n) => self.catalog.checkpoint_by_name(m.id, n)?,
            CheckpointSel::Latest => {
                let latest = self.catalog.latest_checkpoint(m.id)?;
                if latest.is_none() {
                    return Err(EngineError::NoCheckpoints {
                        machine: m.name.clone(),
                    });
                }
                latest
            }
        };
        let sel = match &r.sel {
            CheckpointSel::Version(v) => format!("v{v}"),
            CheckpointSel::Name(n) => n.clone(),
            CheckpointSel::Latest => "latest".to_owned(),
        };
        let row = row.ok_or(EngineError::UnknownCheckpoint {
            machine: m.name.clone(),
            sel,
        })?;
        Ok((m, row))
    }

    pub(crate) fn checkpoint_info(&self, c: &CheckpointRow) -> Result<CheckpointInfo> {
        let parent = match c.parent {
            Some(p) => self
                .catalog
                .checkpoint(p)?
                .map(|p| format!("{}@v{}", p.machine, p.version)),
            None => None,
        };
        Ok(CheckpointInfo {
            id: format!("{}@v{}", c.machine, c.version),
            machine: c.machine.clone(),
            version: c.version,
            name: c.name.clone(),
            note: c.note.clone(),
            author: c.author.clone(),
            created_at: c.created_at,
            parent,
            root: c.root,
            logical_bytes: c.logical_bytes,
            entries: c.entries,
            auto: c.auto,
            stored_bytes: None,
            exclusive_bytes: None,
        })
    }

    /// One checkpoint, with its stored and exclusive sizes.
    pub fn checkpoint_show(&self, r: &Ref) -> Result<CheckpointInfo> {
        let (_, row) = self.resolve(r)?;
        let mut info = self.checkpoint_info(&row)?;
        let usage = self.usage()?;
        if let Some(u) = usage.checkpoint(row.id) {
            info.stored_bytes = Some(u.stored_bytes);
            info.exclusive_bytes = Some(u.exclusive_bytes);
        }
        Ok(info)
    }

    /// A machine's checkpoints, oldest first, with sizes.
    pub fn checkpoint_list(&self, machine: &str) -> Result<Vec<CheckpointInfo>> {
        let m = self.machine_row(machine)?;
        let usage = self.usage()?;
        self.catalog
            .checkpoints(m.id)?
            .iter()
            .map(|c| {
                let mut info = self.checkpoint_info(c)?;
                if let Some(u) = usage.checkpoint(c.id) {
                    info.stored_bytes = Some(u.stored_bytes);
                    info.exclusive_bytes = Some(u.exclusive_bytes);
                }
                Ok(info)
            })
            .collect()
    }

    /// Deletes a checkpoint: its manifest and catalog row. O(1); the space comes back at gc.
    pub fn checkpoint_delete(&self, r: &Ref) -> Result<CheckpointInfo> {
        let result = (|| {
            let (m, row) = self.resolve(r)?;
            let _lock = self.lock_machine(&m.name, "checkpoint delete")?;
            let info = self.checkpoint_info(&row)?;
            // Manifest first: if the catalog row outlives it after a crash, the checkpoint
            // still reads fine and a rebuild simply does not bring it back.
            self.store
                .delete_object(&manifest::checkpoint_key(&m.uid, row.version))?;
            self.catalog.delete_checkpoint(row.id)?;
            Ok(info)
        })();
        let detail = result
            .as_ref()
            .map(|i| i.id.clone())
            .map_err(super::machine::clone_err);
        self.audit("delete", Some(&r.machine), Some(&r.to_string()), &detail);
        result
    }
}

/// An audit row written in a checkpoint's own commit: the op, and the detail (the new
/// checkpoint's id when `None`).
pub(crate) struct CommitAudit {
    pub op: &'static str,
    pub detail: Option<String>,
}

/// Threads that read and chunk files during an ingest.
pub(crate) fn ingest_workers() -> usize {
    crate::cpus().min(8)
}
