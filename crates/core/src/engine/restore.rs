//! Restore in place and fork.
//!
//! Restore:
//! 1. Take the machine lock; finish any interrupted restore first.
//! 2. Ingest the live directory. If it differs from every checkpoint, commit it as an automatic
//!    checkpoint (the undo point); either way the live tree is now known exactly.
//! 3. Write a journal (`pending` on the machine row) naming the target.
//! 4. Materialize: diff live tree → target tree and apply only the differences.
//! 5. Clear the journal, move the head to the target, save the stat cache.
//!
//! A crash during step 4 leaves the journal; the next command on the machine re-ingests the
//! (partly restored) directory without committing it and applies the remaining differences.
//! The undo point from step 2 is a normal checkpoint, so the restore can also be undone.
//!
//! One path of a mounted machine is restored by the same steps through its merged view (its
//! mountpoint), so every difference lands in the upper layer as a write through overlayfs
//! would; `mounted.rs` brings the overlay up around them. A whole mounted machine is rebased
//! instead.

use super::blobs::{BlobSource, BlobWriter};
use super::checkpoint::CheckpointOptions;
use super::ingest::ROOT_ENTRY;
use super::machine::clone_err;
use super::materialize::{Applied, Materializer, open_parent};
use super::statcache::StatCache;
use super::{EngineError, Phase, Progress, Repo, Result};
use crate::catalog::{CheckpointRow, MachineKind, MachineRow};
use crate::is_root;
use crate::model::{Content, Node, Ref, Tree, TreeId};
use crate::rootfs::{ApplyOptions, Dir};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Inputs of `restore`.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Restore only this subtree (components of `MACHINE@REF:/path`).
    pub path: Option<Vec<Vec<u8>>>,
}

/// Inputs of `fork`.
#[derive(Clone, Debug)]
pub struct ForkOptions {
    pub name: String,
    pub dir: PathBuf,
}

/// What a restore or fork did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RestoreReport {
    /// The checkpoint now materialized, e.g. `web@v1`.
    pub target: String,
    /// The automatic checkpoint holding the state before the restore (restore it to undo).
    pub undo: Option<String>,
    pub written_files: u64,
    pub written_bytes: u64,
    pub removed: u64,
    pub metadata_only: u64,
    /// An interrupted restore that this command completed first, if any.
    pub completed_interrupted: Option<String>,
    pub warnings: Vec<String>,
    /// Where the time went, for a mounted machine (stop, ingest, commit, remount, start).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<super::Phase>,
}

/// The journal of a restore in place (`machines.pending`). A mounted machine's rebase journal
/// (op `rebase`, no path) reads as one too.
#[derive(serde::Serialize, serde::Deserialize)]
struct Journal {
    op: String,
    target: i64,
    target_ref: String,
    path: Option<Vec<Vec<u8>>>,
    /// A mounted machine that was down and is up only for this restore: whatever completes the
    /// restore brings it down again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    down_after: bool,
}

impl Journal {
    fn restore(target: &CheckpointRow, path: Option<Vec<Vec<u8>>>, down_after: bool) -> Journal {
        Journal {
            op: "restore".to_owned(),
            target: target.id,
            target_ref: format!("{}@v{}", target.machine, target.version),
            path,
            down_after,
        }
    }
}

/// One path of a mounted machine, restored through its merged view.
pub(crate) struct ViewRestore {
    pub path: Vec<Vec<u8>>,
    /// The machine was down and is up only for this restore.
    pub down_after: bool,
}

/// What an interrupted restore was restoring, from its journal: `web@v2` or `web@v2:/etc`.
pub(crate) fn journal_target(pending: &str) -> String {
    match serde_json::from_str::<Journal>(pending) {
        Ok(j) => match &j.path {
            Some(p) if !p.is_empty() => format!("{}:{}", j.target_ref, display(p)),
            _ => j.target_ref,
        },
        Err(_) => "an unknown checkpoint (its journal is unreadable)".to_owned(),
    }
}

impl Repo {
    /// Restores a machine in place to a checkpoint (or one subtree of it).
    pub fn restore(
        &self,
        r: &Ref,
        opts: &RestoreOptions,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        let result = (|| {
            let (m, target) = self.resolve(r)?;
            let _lock = self.lock_machine(&m.name, "restore")?;
            let completed = self.complete_interrupted(&m, progress)?;
            let m = self.machine_row(&m.name)?;
            let path = opts.path.clone().or(r.path.clone());
            if m.kind == crate::catalog::MachineKind::Mounted {
                let mut report = self.restore_mounted(&m, &target, path, progress)?;
                report.completed_interrupted = completed;
                return Ok(report);
            }
            let mut report = self.restore_locked(&m, &target, path, progress)?;
            report.completed_interrupted = completed;
            Ok(report)
        })();
        let detail = result
            .as_ref()
            .map(|rep| serde_json::to_string(rep).unwrap_or_default())
            .map_err(clone_err);
        self.audit("restore", Some(&r.machine), Some(&r.to_string()), &detail);
        result
    }

    fn restore_locked(
        &self,
        m: &MachineRow,
        target: &CheckpointRow,
        path: Option<Vec<Vec<u8>>>,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        let journal = Journal::restore(target, path, false);
        self.restore_in_place(m, target, journal, progress, &mut Vec::new())
    }

    /// Restores one path of a mounted machine through its merged view, which the caller has
    /// brought up; `phases` gets ingest and apply.
    pub(crate) fn restore_view_path(
        &self,
        m: &MachineRow,
        target: &CheckpointRow,
        v: ViewRestore,
        progress: &dyn Progress,
        phases: &mut Vec<Phase>,
    ) -> Result<RestoreReport> {
        let journal = Journal::restore(target, Some(v.path), v.down_after);
        self.restore_in_place(m, target, journal, progress, phases)
    }

    /// Steps 2–5 of the protocol, writing through `m.dir`.
    fn restore_in_place(
        &self,
        m: &MachineRow,
        target: &CheckpointRow,
        journal: Journal,
        progress: &dyn Progress,
        phases: &mut Vec<Phase>,
    ) -> Result<RestoreReport> {
        let session = self.begin_session("restore")?;
        let t = Instant::now();
        let (undo, live, epoch) = self.undo_point_live(m, target, progress)?;
        phases.push(Phase::since("ingest", t));
        // Step 3: the journal.
        self.catalog.set_pending(
            m.id,
            Some(&serde_json::to_string(&journal).expect("invariant: journal serializes")),
        )?;
        // Step 4.
        let t = Instant::now();
        let mut cache = live.cache;
        cache.epoch = epoch;
        let path = journal.path.as_deref();
        let applied = self.materialize_into(
            m,
            live.root,
            target.root,
            path,
            Default::default(),
            progress,
            &mut cache,
        )?;
        phases.push(Phase::since("apply", t));
        // Step 5.
        if path.is_none() {
            self.catalog.set_head(m.id, Some(target.id))?;
        }
        self.catalog.set_pending(m.id, None)?;
        if let Err(e) = cache.save(&self.machine_state_dir(&m.uid).join("statcache")) {
            tracing::warn!("could not save the stat cache: {e}");
        }
        drop(session);
        Ok(RestoreReport {
            target: journal.target_ref,
            undo: Some(format!("{}@v{}", m.name, undo.version)),
            written_files: applied.written_files,
            written_bytes: applied.written_bytes,
            removed: applied.removed,
            metadata_only: applied.metadata_only,
            completed_interrupted: None,
            warnings: live.warnings.into_iter().chain(applied.warnings).collect(),
            phases: Vec::new(),
        })
    }

    /// Step 2 of restore: commits the live state as an automatic checkpoint unless one has
    /// its root already, and returns that checkpoint with the live ingest.
    fn undo_point_live(
        &self,
        m: &MachineRow,
        target: &CheckpointRow,
        progress: &dyn Progress,
    ) -> Result<(CheckpointRow, super::ingest::Ingested, u64)> {
        // Step 2: the undo point.
        let writer = BlobWriter::new(&self.store, &self.catalog_path())?;
        let (live, epoch) = self.ingest_live(m, &writer, progress)?;
        let mut stats = writer.flush()?;
        stats.add(live.written);
        let existing = self
            .catalog
            .checkpoints(m.id)?
            .into_iter()
            .rev()
            .find(|c| c.root == live.root);
        let undo = match existing {
            Some(c) => c,
            None => {
                let head = match m.head {
                    Some(h) => self.catalog.checkpoint(h)?,
                    None => None,
                };
                let opts = CheckpointOptions {
                    name: None,
                    note: format!(
                        "automatic: state before restore to {}@v{}",
                        target.machine, target.version
                    ),
                    auto: true,
                };
                self.commit(
                    m,
                    &live.root,
                    &opts,
                    head.as_ref(),
                    live.logical_bytes,
                    live.entries,
                    stats.stored_bytes,
                    Some(super::checkpoint::CommitAudit {
                        op: "create",
                        detail: Some("automatic undo point".to_owned()),
                    }),
                    Default::default(),
                )?
            }
        };
        Ok((undo, live, epoch))
    }

    /// The undo point of a restore, for callers that need only the checkpoint.
    pub(crate) fn undo_point(
        &self,
        m: &MachineRow,
        target: &CheckpointRow,
        progress: &dyn Progress,
    ) -> Result<CheckpointRow> {
        let _session = self.begin_session("restore")?;
        Ok(self.undo_point_live(m, target, progress)?.0)
    }

    /// Applies the differences between `from` (what the directory holds) and `to`, at the root
    /// or at `path`, and folds what was written into `cache`. A mounted machine is written
    /// through its merged view, so it must be up.
    #[allow(clippy::too_many_arguments)]
    fn materialize_into(
        &self,
        m: &MachineRow,
        from: TreeId,
        to: TreeId,
        path: Option<&[Vec<u8>]>,
        seed: std::collections::HashMap<TreeId, Arc<Tree>>,
        progress: &dyn Progress,
        cache: &mut StatCache,
    ) -> Result<Applied> {
        if m.kind == MachineKind::Mounted && !self.is_up(m) {
            // Its mountpoint is then a plain directory, not the machine.
            return Err(EngineError::Invalid(format!(
                "machine {} is not up, so its files cannot be restored; `cairn machine up {}` \
                 and try again",
                m.name, m.name
            )));
        }
        let src = BlobSource::new(&self.store, &self.catalog_path())?;
        src.seed(seed);
        let root = Dir::open(&m.dir)?;
        progress.phase("restoring", None);
        let mut mat = Materializer::new(&src, &root, ApplyOptions { owners: is_root() }, progress);
        let from_top = root_node(&src, from)?;
        let to_top = root_node(&src, to)?;
        let to_top_tree = dir_tree(&to_top)?;
        match path {
            None | Some([]) => {
                mat.apply_dir(&root, &[], Some(dir_tree(&from_top)?), to_top_tree)?;
            }
            Some(comps) => {
                let to_node = lookup_path(&src, &to_top, comps)?;
                let from_node = lookup_path(&src, &from_top, comps)?;
                if to_node.is_none() && from_node.is_none() {
                    return Err(EngineError::PathNotFound {
                        reference: "the checkpoint or the live machine".to_owned(),
                        path: display(comps),
                    });
                }
                let rel = comps.join(&b'/');
                let (parent, name) = open_parent(&root, &rel).map_err(|e| {
                    EngineError::Invalid(format!("cannot restore {}: its parent is missing or not a directory in the live machine ({e}); restore the parent instead", display(comps)))
                })?;
                let parent_path = comps[..comps.len() - 1].join(&b'/');
                mat.apply_entry(
                    &parent,
                    &parent_path,
                    &name,
                    from_node.as_ref(),
                    to_node.as_ref(),
                )?;
            }
        }
        mat.finish(&to_top, path.is_none_or(|p| p.is_empty()))?;
        let applied = std::mem::take(&mut mat.applied);
        match m.kind {
            MachineKind::Mounted => forget_restored(cache, path.unwrap_or_default(), &applied),
            _ => fold_cache(cache, &applied),
        }
        Ok(applied)
    }

    /// Completes a restore that a crash interrupted (step 4 of the protocol above). Returns
    /// the target it completed, if there was one.
    pub(crate) fn complete_interrupted(
        &self,
        m: &MachineRow,
        progress: &dyn Progress,
    ) -> Result<Option<String>> {
        if super::mounted::unfinished_create(m) {
            self.complete_create(m)?;
            return Ok(None);
        }
        let Some(text) = &m.pending else {
            return Ok(None);
        };
        let journal: Journal = serde_json::from_str(text).map_err(|e| EngineError::Corrupt {
            what: format!("the restore journal of machine {}", m.name),
            reason: e.to_string(),
        })?;
        let mounted = m.kind == MachineKind::Mounted;
        if mounted && journal.op != "restore" {
            return self.complete_rebase(m, text);
        }
        let Some(target) = self.catalog.checkpoint(journal.target)? else {
            // The target was deleted since; nothing to complete towards.
            self.catalog.set_pending(m.id, None)?;
            if journal.down_after && self.is_up(m) {
                self.down_locked(m)?;
            }
            return Ok(None);
        };
        tracing::info!(
            "completing the interrupted restore of {} to {}",
            m.name,
            journal_target(text)
        );
        if mounted {
            // Through the merged view, as the restore itself wrote; a machine up only for
            // the restore (or found down) goes down again.
            let down_after = journal.down_after || !self.is_up(m);
            let ((), down) = self.with_view_up(m, down_after, &mut Vec::new(), |_| {
                self.complete_in_place(m, &journal, &target, progress)
            })?;
            if let Some(e) = down {
                tracing::warn!(
                    "completed the interrupted restore of {}, but could not bring it down \
                     again: {e}",
                    m.name
                );
            }
        } else {
            self.complete_in_place(m, &journal, &target, progress)?;
        }
        self.audit(
            "restore",
            Some(&m.name),
            Some(&journal.target_ref),
            &Ok("completed an interrupted restore".to_owned()),
        );
        Ok(Some(journal.target_ref))
    }

    /// Ingests the partly restored directory without storing anything and applies what is
    /// left, then clears the journal.
    fn complete_in_place(
        &self,
        m: &MachineRow,
        journal: &Journal,
        target: &CheckpointRow,
        progress: &dyn Progress,
    ) -> Result<()> {
        let _session = self.begin_session("restore")?;
        let writer = BlobWriter::new_dry(&self.store, &self.catalog_path())?;
        let (live, epoch) = self.ingest_live(m, &writer, progress)?;
        // The live trees exist only in the dry writer; give them to the materializer's source.
        let mut cache = live.cache;
        cache.epoch = epoch;
        self.materialize_into(
            m,
            live.root,
            target.root,
            journal.path.as_deref(),
            writer.take_trees(),
            progress,
            &mut cache,
        )?;
        if journal.path.is_none() {
            self.catalog.set_head(m.id, Some(target.id))?;
        }
        self.catalog.set_pending(m.id, None)?;
        let _ = cache.save(&self.machine_state_dir(&m.uid).join("statcache"));
        Ok(())
    }

    /// Forks a checkpoint into a new directory machine.
    pub fn fork(
        &self,
        r: &Ref,
        opts: &ForkOptions,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        let result = (|| {
            crate::model::validate_machine_name(&opts.name)?;
            let (src_m, target) = self.resolve(r)?;
            if self.catalog.machine(&opts.name)?.is_some() {
                return Err(EngineError::Invalid(format!(
                    "machine {} already exists; pick another name",
                    opts.name
                )));
            }
            let _lock = self.lock_machine(&opts.name, "fork")?;
            // Built beside its final path and renamed into place when complete, so a fork
            // that dies midway leaves the directory as it was and can simply be run again.
            let (dir, staging) = self.prepare_fork_dir(&opts.dir, &opts.name)?;
            let _session = self.begin_session("fork")?;
            let built = (|| -> Result<Applied> {
                let src = BlobSource::new(&self.store, &self.catalog_path())?;
                let root = Dir::open(&staging)?;
                progress.phase("forking", Some(target.logical_bytes));
                let mut mat =
                    Materializer::new(&src, &root, ApplyOptions { owners: is_root() }, progress);
                let top = root_node(&src, target.root)?;
                let top_tree = dir_tree(&top)?;
                mat.apply_dir(&root, &[], None, top_tree)?;
                mat.finish(&top, true)?;
                let applied = std::mem::take(&mut mat.applied);
                publish_dir(&staging, &dir)?;
                Ok(applied)
            })();
            let applied = built.inspect_err(|_| {
                let _ = std::fs::remove_dir_all(&staging);
            })?;
            let m = self.register_machine(&opts.name, &dir)?;
            let copts = CheckpointOptions {
                name: None,
                note: format!("forked from {}@v{}", src_m.name, target.version),
                auto: false,
            };
            let row = self.commit(
                &m,
                &target.root,
                &copts,
                Some(&target),
                target.logical_bytes,
                target.entries,
                0,
                None,
                Default::default(),
            )?;
            let mut cache = StatCache {
                epoch: self.catalog.gc_epoch()?,
                ..Default::default()
            };
            fold_cache(&mut cache, &applied);
            let _ = cache.save(&self.machine_state_dir(&m.uid).join("statcache"));
            Ok(RestoreReport {
                target: format!("{}@v{}", m.name, row.version),
                undo: None,
                written_files: applied.written_files,
                written_bytes: applied.written_bytes,
                removed: 0,
                metadata_only: 0,
                completed_interrupted: None,
                warnings: applied.warnings,
                phases: Vec::new(),
            })
        })();
        let detail = result
            .as_ref()
            .map(|rep| rep.target.clone())
            .map_err(clone_err);
        self.audit("fork", Some(&opts.name), Some(&r.to_string()), &detail);
        result
    }
}

/// Renames the complete `staging` directory to `dir` (new, or an empty directory it replaces)
/// and makes the rename durable before the machine is registered.
fn publish_dir(staging: &std::path::Path, dir: &std::path::Path) -> Result<()> {
    let io = |op: &'static str, path: &std::path::Path| {
        let path = path.to_owned();
        move |source| EngineError::Io { op, path, source }
    };
    std::fs::rename(staging, dir).map_err(io("move the forked directory into place", dir))?;
    let parent = dir.parent().unwrap_or(std::path::Path::new("/"));
    std::fs::File::open(parent)
        .and_then(|f| f.sync_all())
        .map_err(io("sync directory", parent))
}

/// The node of the machine directory itself in a checkpoint root.
pub(crate) fn root_node(src: &BlobSource<'_>, root: TreeId) -> Result<Node> {
    root_entry(&*src.tree(root)?, root)
}

/// The machine directory's own entry in the root tree `t` of checkpoint root `root`.
pub(crate) fn root_entry(t: &crate::model::Tree, root: TreeId) -> Result<Node> {
    t.get(ROOT_ENTRY)
        .map(|e| e.node.clone())
        .ok_or_else(|| EngineError::Corrupt {
            what: format!("checkpoint root {}", root.short()),
            reason: "it has no machine directory entry".to_owned(),
        })
}

pub(crate) fn dir_tree(node: &Node) -> Result<TreeId> {
    match node.content {
        Content::Dir { tree } => Ok(tree),
        _ => Err(EngineError::Corrupt {
            what: "a checkpoint root".to_owned(),
            reason: "it is not a directory".to_owned(),
        }),
    }
}

/// The node at `comps` below the machine directory node `top`, if any.
pub(crate) fn lookup_path(
    src: &BlobSource<'_>,
    top: &Node,
    comps: &[Vec<u8>],
) -> Result<Option<Node>> {
    let mut node = top.clone();
    for c in comps {
        let Content::Dir { tree } = node.content else {
            return Ok(None);
        };
        let t = src.tree(tree)?;
        match t.get(c) {
            Some(e) => node = e.node.clone(),
            None => return Ok(None),
        }
    }
    Ok(Some(node))
}

pub(crate) fn display(comps: &[Vec<u8>]) -> String {
    super::diff::display_path(&comps.join(&b'/'))
}

/// Drops cache entries under invalidated paths and adds the entries of files just written.
fn fold_cache(cache: &mut StatCache, applied: &Applied) {
    drop_under(cache, applied.invalidated.iter().map(Vec::as_slice));
    for (path, entry) in &applied.cache {
        cache.entries.insert(path.clone(), entry.clone());
    }
}

/// A mounted machine's cache describes its upper layer, which a restore through the merged
/// view wrote at the same paths. The materializer's own entries were taken through the
/// overlay, so none is kept: everything under the restored path (and whatever the restore
/// replaced beside it, such as re-linked hardlinks) is dropped and read again by the next
/// checkpoint, which costs what was just written and never a wrong tree.
fn forget_restored(cache: &mut StatCache, path: &[Vec<u8>], applied: &Applied) {
    if path.is_empty() {
        cache.entries.clear();
        return;
    }
    let restored = path.join(&b'/');
    drop_under(
        cache,
        applied
            .invalidated
            .iter()
            .map(Vec::as_slice)
            .chain([restored.as_slice()]),
    );
}

/// Drops the cache entries at and below each of `dead`.
fn drop_under<'a>(cache: &mut StatCache, dead: impl Iterator<Item = &'a [u8]>) {
    let dead: std::collections::HashSet<&[u8]> = dead.collect();
    if dead.is_empty() {
        return;
    }
    cache.entries.retain(|path, _| {
        let mut p: &[u8] = path;
        loop {
            if dead.contains(p) {
                return false;
            }
            match p.iter().rposition(|&b| b == b'/') {
                Some(i) => p = &p[..i],
                None => return true,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_restore_is_shown_by_its_target_not_its_journal() {
        let j = |path: Option<Vec<Vec<u8>>>| {
            serde_json::to_string(&Journal {
                op: "restore".into(),
                target: 7,
                target_ref: "web@v2".into(),
                path,
                down_after: false,
            })
            .unwrap()
        };
        assert_eq!(journal_target(&j(None)), "web@v2");
        assert_eq!(journal_target(&j(Some(vec![]))), "web@v2");
        assert_eq!(
            journal_target(&j(Some(vec![b"etc".to_vec(), b"nginx".to_vec()]))),
            "web@v2:/etc/nginx"
        );
        assert!(journal_target("{").contains("unreadable"));
    }
}
