//! Mounted machines: an overlay whose lower layer is a read-only view of a base tree and whose
//! upper layer is a local directory that takes every write.
//!
//! State under `machines/<uid>/`: `upper/` and `work/` (the overlay's), `lower/` (where the view
//! of the base is mounted while the machine is up). The catalog row holds the base (root tree
//! and totals); gc keeps it alive whether or not a checkpoint still names it.
//!
//! - A checkpoint ingests only the upper, merged over the base (`upper.rs`).
//! - Restore and fork **rebase**: the base becomes the target tree and the upper starts empty.
//!   Nothing is copied, so both are O(1) apart from remounting.
//!
//! Rebase protocol (restore of a mounted machine):
//! 1. Machine lock; complete an interrupted rebase first.
//! 2. Commit the live state (upper over base) as an automatic checkpoint, the undo point,
//!    unless a checkpoint already has that root.
//! 3. Write the journal (`pending`: op `rebase`, target).
//! 4. Rename `upper/` to `upper.old-<ns>/` and make a fresh `upper/` carrying the target root
//!    directory's metadata (fsync the state directory).
//! 5. One catalog transaction: base, head and journal cleared.
//! 6. Remove `upper.old-*` and reset `work/`.
//!
//! A crash after 3 is completed by the next command on the machine: the undo point is
//! committed, so the old upper can be dropped, and steps 4–6 are idempotent.
//!
//! Restore of one path (`MACHINE@REF:/path`) is not a rebase: it is the directory machine's
//! restore in place (`restore.rs`) applied to the merged view at the mountpoint, so only the
//! differences inside the path are written, into the upper. A machine that is down is brought
//! up for it (the journal says so) and down again after; a crash is completed the same way.

use super::checkpoint::CheckpointOptions;
use super::machine::{clone_err, new_machine_manifest};
use super::manifest::{CheckpointManifest, MachineManifest};
use super::restore::{RestoreReport, ViewRestore, root_entry};
use super::{EngineError, Phase, Progress, Repo, Result, now_ns};
use crate::catalog::{Base, CheckpointRow, MachineKind, MachineRow};
use crate::is_root;
use crate::model::{Content, Ref, Tree, TreeId, validate_machine_name};
use crate::rootfs::{ApplyOptions, Dir};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Inputs of `machine create --mounted`.
#[derive(Clone, Debug)]
pub struct CreateMountedOptions {
    pub name: String,
    /// Where the machine appears while it is up [default: `$CAIRN_HOME/machines/NAME/root`].
    pub at: Option<PathBuf>,
    /// Start from this checkpoint (of any machine); `None` starts empty.
    pub from: Option<Ref>,
    /// Start from this plain tar: it is imported and becomes the base and v1.
    pub from_tar: Option<PathBuf>,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct RebaseJournal {
    pub op: String,
    pub target: i64,
    pub target_ref: String,
}

/// Paths of a mounted machine's state.
pub(crate) struct Layout {
    pub state: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub lower: PathBuf,
}

impl Repo {
    pub(crate) fn layout(&self, m: &MachineRow) -> Layout {
        let state = self.machine_state_dir(&m.uid);
        Layout {
            upper: state.join("upper"),
            work: state.join("work"),
            lower: state.join("lower"),
            state,
        }
    }

    /// Creates a mounted machine over a checkpoint (O(1): its tree becomes the base and the
    /// machine's v1) or over an empty tree.
    pub fn create_mounted_machine(
        &self,
        opts: &CreateMountedOptions,
        progress: &dyn Progress,
    ) -> Result<MountedInfo> {
        let audit = CreateAudit {
            op: "machine-create",
            target: None,
            detail: |i| i.at.display().to_string(),
        };
        self.create_mounted_audited(opts, progress, &audit)
    }

    /// Creates the machine and records the outcome in the audit log: a success in the same
    /// commit as the machine's base (one fsync for both), unless a tar import follows it.
    fn create_mounted_audited(
        &self,
        opts: &CreateMountedOptions,
        progress: &dyn Progress,
        audit: &CreateAudit<'_>,
    ) -> Result<MountedInfo> {
        match self.create_mounted_inner(opts, progress, audit) {
            Ok((info, true)) => Ok(info),
            result => {
                let result = result.map(|(info, _)| info);
                let detail = result.as_ref().map(audit.detail).map_err(clone_err);
                self.audit(audit.op, Some(&opts.name), audit.target, &detail);
                result
            }
        }
    }

    /// Creates the machine; true with it when its success is already in the audit log.
    fn create_mounted_inner(
        &self,
        opts: &CreateMountedOptions,
        progress: &dyn Progress,
        audit: &CreateAudit<'_>,
    ) -> Result<(MountedInfo, bool)> {
        validate_machine_name(&opts.name)?;
        let exists = |name: &str| {
            EngineError::Invalid(format!(
                "machine {name} already exists; pick another name or `cairn machine rm {name}` \
                 first"
            ))
        };
        if self
            .catalog
            .machine(&opts.name)?
            .is_some_and(|m| !unfinished_create(&m))
        {
            return Err(exists(&opts.name));
        }
        if opts.from.is_some() && opts.from_tar.is_some() {
            return Err(EngineError::Invalid(
                "give one of --from and --from-tar, not both".to_owned(),
            ));
        }
        let source = match &opts.from {
            Some(r) => Some(self.resolve(r)?),
            None => None,
        };
        let _lock = self.lock_machine(&opts.name, "machine create")?;
        if let Some(old) = self.catalog.machine(&opts.name)? {
            if !unfinished_create(&old) {
                return Err(exists(&opts.name));
            }
            // A create or fork killed before the machine had its v1 left a row that holds
            // nothing: this create takes its place.
            self.forget_machine(&old)?;
        }
        let at = self.mountpoint_for(&opts.name, opts.at.as_deref())?;
        let base = match &source {
            Some((_, c)) => Self::base_of(c),
            None => self.empty_base()?,
        };
        let man = new_machine_manifest(&opts.name, &at, MachineKind::Mounted, Some(base));
        let v1 = match &source {
            Some((src_m, c)) => {
                let note = format!("created from {}@v{}", src_m.name, c.version);
                let opts = CheckpointOptions {
                    name: None,
                    note,
                    auto: false,
                };
                let totals = (c.logical_bytes, c.entries);
                Some(self.checkpoint_manifest(&man.uid, 1, &c.root, &opts, Some(c), totals)?)
            }
            None => None,
        };
        let m = self.prepare_mounted(&man, &at, v1.as_ref(), &base)?;
        // v1, the base and (unless an import follows) the audit row land in one commit.
        let created = self.catalog.batch(|| {
            let head = match (&source, &v1) {
                (Some((_, c)), Some(v1)) => {
                    Some(self.commit_row(&m, v1, Some(c), 0, None, Default::default())?)
                }
                _ => None,
            };
            self.catalog
                .set_base(m.id, &base, head.as_ref().map(|h| h.id), None)?;
            if opts.from_tar.is_some() {
                return Ok::<_, EngineError>(None);
            }
            // Just made, so nothing is mounted for it yet.
            let info = MountedInfo {
                name: m.name.clone(),
                at: m.dir.clone(),
                head: head.map(|h| format!("{}@v{}", m.name, h.version)),
                base: Some(base.root),
                up: false,
            };
            self.audit(
                audit.op,
                Some(&opts.name),
                audit.target,
                &Ok((audit.detail)(&info)),
            );
            Ok(Some(info))
        })?;
        if let Some(info) = created {
            return Ok((info, true));
        }
        if let Some(tar) = &opts.from_tar {
            // Imported into the empty upper, checkpointed over the empty base, then made the
            // base itself: the machine starts with an empty upper like any other.
            self.import_tar_into(tar, &self.layout(&m).upper, progress)?;
            let m = self.machine_row(&m.name)?;
            let opts = CheckpointOptions {
                name: None,
                note: format!("imported from {}", tar.display()),
                auto: false,
            };
            let v1 = self.checkpoint_locked(&m, &opts, progress, None)?;
            let row = self
                .catalog
                .checkpoint_by_version(m.id, v1.checkpoint.version)?
                .ok_or_else(|| EngineError::Invalid("the imported checkpoint vanished".into()))?;
            self.finish_rebase(&m, &row)?;
        }
        Ok((self.mounted_info(&self.machine_row(&m.name)?)?, false))
    }

    /// Everything a new mounted machine needs before the commit that completes it, durable:
    /// its manifest, v1's manifest (a fork's) and its state directory, with the row inserted
    /// unfinished. The three are independent, so their writes and fsyncs run side by side
    /// (a fork costs the slowest of them, not their sum) and all are done before it returns.
    fn prepare_mounted(
        &self,
        man: &MachineManifest,
        at: &Path,
        v1: Option<&CheckpointManifest>,
        base: &Base,
    ) -> Result<MachineRow> {
        let store = &self.store;
        std::thread::scope(|s| {
            let machine = s.spawn(|| super::manifest::put_machine(store, man));
            let v1 = v1.map(|v1| s.spawn(|| super::manifest::put_checkpoint(store, v1)));
            let state = (|| -> Result<MachineRow> {
                let m = self.insert_machine_row(man, at, MachineKind::Mounted)?;
                self.fresh_upper(&m, base)?;
                // A new machine's state directory is itself a new entry of `machines/`.
                self.sync_state(&m)?;
                if let Some(parent) = self.layout(&m).state.parent() {
                    fsync_dir(parent)?;
                }
                Ok(m)
            })();
            let machine = crate::join_scoped(machine);
            let v1 = v1.map(crate::join_scoped).unwrap_or(Ok(()));
            let m = state?;
            machine?;
            v1?;
            Ok(m)
        })
    }

    /// Where a mounted machine appears: `at`, or its default under the home.
    fn mountpoint_for(&self, name: &str, at: Option<&Path>) -> Result<PathBuf> {
        match at {
            Some(p) => self.prepare_new_dir(p),
            None => {
                let p = self.home.join("machines").join(name).join("root");
                std::fs::create_dir_all(&p).map_err(|source| EngineError::Io {
                    op: "create directory",
                    path: p.clone(),
                    source,
                })?;
                Ok(p)
            }
        }
    }

    fn base_of(c: &CheckpointRow) -> Base {
        Base {
            root: c.root,
            entries: c.entries,
            logical_bytes: c.logical_bytes,
        }
    }

    /// Records checkpoint `c` (of any machine) as the next checkpoint of `m`: metadata only.
    #[cfg(test)]
    pub(crate) fn adopt_checkpoint(
        &self,
        m: &MachineRow,
        c: &CheckpointRow,
        note: String,
    ) -> Result<CheckpointRow> {
        let opts = CheckpointOptions {
            name: None,
            note,
            auto: false,
        };
        let m = self.machine_row(&m.name)?;
        self.commit(
            &m,
            &c.root,
            &opts,
            Some(c),
            c.logical_bytes,
            c.entries,
            0,
            None,
            Default::default(),
        )
    }

    /// The base of an empty machine: a root directory owned by the caller, mode 0755.
    fn empty_base(&self) -> Result<Base> {
        let _session = self.begin_session("machine create")?;
        let writer = super::blobs::BlobWriter::new(&self.store, &self.catalog_path())?;
        let top = writer.put_tree(&Tree::default())?;
        let meta = crate::model::Meta {
            mode: 0o755,
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            mtime: crate::model::Timestamp {
                secs: now_ns() / 1_000_000_000,
                nanos: (now_ns() % 1_000_000_000) as u32,
            },
            xattrs: Vec::new(),
        };
        let root = writer.put_tree(&Tree {
            entries: vec![crate::model::Entry {
                name: super::ingest::ROOT_ENTRY.to_vec(),
                node: crate::model::Node {
                    meta,
                    content: Content::Dir { tree: top },
                },
            }],
        })?;
        writer.flush()?;
        Ok(Base {
            root,
            entries: 0,
            logical_bytes: 0,
        })
    }

    /// Makes an empty upper (and work) directory whose root carries the base root's metadata,
    /// which the overlay shows as the machine directory's own. Not yet durable: the caller
    /// syncs the state directory (`sync_state`) before its catalog commit.
    fn fresh_upper(&self, m: &MachineRow, base: &Base) -> Result<()> {
        let l = self.layout(m);
        // A view left at `lower/` by a server that died fails every access, `lower/` itself
        // then looks like no directory: detach it. A live one (an orphaned server's, of an
        // older base) is `up`'s to replace. A `lower/` that does not exist holds no mount (a
        // new machine's), so the mount table is read only when it fails otherwise.
        if std::fs::metadata(&l.lower).is_err_and(|e| e.kind() != std::io::ErrorKind::NotFound)
            && matches!(crate::mount::mount_at(&l.lower), Ok(Some(_)))
        {
            super::updown::detach(&l.lower)?;
        }
        // The overlay this replaces may still be going away in the background
        // (`down_for_rebase`), its work directory with it: the next one gets its own.
        if l.work.exists() {
            rename(&l.work, &l.state.join(format!("work.old-{}", now_ns())))?;
        }
        for d in [&l.state, &l.lower, &l.work] {
            mkdir_all(d)?;
        }
        let tmp = l.state.join(format!("upper.new-{}", now_ns()));
        mkdir_all(&tmp)?;
        let top = root_entry(
            &super::blobs::read_tree_with(&self.store, &self.catalog, base.root)?,
            base.root,
        )?;
        Dir::open(&tmp)?.set_own_meta(&top.meta, &ApplyOptions { owners: is_root() })?;
        if l.upper.exists() {
            let old = l.state.join(format!("upper.old-{}", now_ns()));
            rename(&l.upper, &old)?;
        }
        rename(&tmp, &l.upper)?;
        Ok(())
    }

    /// Makes what `fresh_upper` did durable.
    fn sync_state(&self, m: &MachineRow) -> Result<()> {
        fsync_dir(&self.layout(m).state)
    }

    /// Rewrites the machine manifest with its new base, so a rebuilt catalog knows it.
    fn put_base_manifest(&self, m: &MachineRow, base: &Base) -> Result<()> {
        super::manifest::put_machine(
            &self.store,
            &super::manifest::MachineManifest {
                format: super::manifest::FORMAT,
                uid: m.uid.clone(),
                name: m.name.clone(),
                dir: m.dir.as_os_str().as_encoded_bytes().to_vec(),
                kind: m.kind.as_str().to_owned(),
                created_at: m.created_at,
                base: Some(*base),
            },
        )
    }

    /// Removes what earlier rebases left: old upper layers and the overlay's work files.
    fn sweep_state(&self, m: &MachineRow) {
        let l = self.layout(m);
        if !sweep_old_uppers(&l.state) {
            // Without root, what the machine's other users own only its namespace may remove.
            self.sweep_in_namespace(&m.uid, false);
        }
        if !self.is_up(m) {
            // Overlayfs leaves `work/work` mode 000 behind.
            super::rootless::remove_tree(&l.work);
            let _ = std::fs::create_dir_all(&l.work);
        }
    }

    /// Restore of a mounted machine: record the undo point, then rebase onto `target`. A
    /// machine that is up is stopped first and started again after.
    pub(crate) fn restore_mounted(
        &self,
        m: &MachineRow,
        target: &CheckpointRow,
        path: Option<Vec<Vec<u8>>>,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        if let Some(path) = path.filter(|p| !p.is_empty()) {
            if crate::sandbox::rootless() {
                // It writes through the machine's root, which without root only its
                // namespace sees, with owners only its root may set.
                return Err(EngineError::Invalid(format!(
                    "a restore of one path of {} needs root: without it the machine's files \
                     live in its own user namespace; restore the whole machine \
                     (`cairn restore {}@v{}`), or take the files from `cairn cat` or \
                     `cairn export` of that checkpoint",
                    m.name, target.machine, target.version
                )));
            }
            return self.restore_mounted_path(m, target, path, progress);
        }
        let mut phases = Vec::new();
        let t = Instant::now();
        let undo = self.undo_point(m, target, progress)?;
        phases.push(Phase::since("ingest", t));
        let was_up = self.is_up(m);
        if was_up {
            let t = Instant::now();
            self.down_for_rebase(m)?;
            phases.push(Phase::since("stop", t));
        }
        let t = Instant::now();
        let journal = RebaseJournal {
            op: "rebase".to_owned(),
            target: target.id,
            target_ref: format!("{}@v{}", target.machine, target.version),
        };
        self.catalog.set_pending(
            m.id,
            Some(&serde_json::to_string(&journal).expect("invariant: journal serializes")),
        )?;
        self.finish_rebase(m, target)?;
        phases.push(Phase::since("commit", t));
        if was_up {
            let t = Instant::now();
            self.up_locked(&self.machine_row(&m.name)?)?;
            phases.push(Phase::since("remount", t));
        }
        // The restore's own work is done: the old overlay may go now, in the background.
        self.let_go_released();
        Ok(RestoreReport {
            target: journal.target_ref,
            undo: Some(format!("{}@v{}", m.name, undo.version)),
            phases,
            ..Default::default()
        })
    }

    /// Restore of one path of a mounted machine: the directory machine's restore in place,
    /// through the merged view, so only what differs inside the path is written (into the
    /// upper, by overlayfs). A machine that is up keeps its processes running; one that is down
    /// is brought up for the restore and down again after.
    fn restore_mounted_path(
        &self,
        m: &MachineRow,
        target: &CheckpointRow,
        path: Vec<Vec<u8>>,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        let down_after = !self.is_up(m);
        let mut phases = Vec::new();
        let (mut report, down) = self.with_view_up(m, down_after, &mut phases, |phases| {
            let v = ViewRestore { path, down_after };
            self.restore_view_path(m, target, v, progress, phases)
        })?;
        if let Some(e) = down {
            report.warnings.push(format!(
                "the path was restored, but machine {} could not be brought down again: {e}; \
                 `cairn machine down {}` when it is free",
                m.name, m.name
            ));
        }
        report.phases = phases;
        Ok(report)
    }

    /// Runs `apply` with the machine's overlay up: mounted first unless it is up (a stale
    /// mount is recovered), and unmounted after if `down_after`, also when `apply` fails. A
    /// failure to unmount after a success is returned beside the result, not instead of it.
    pub(crate) fn with_view_up<T>(
        &self,
        m: &MachineRow,
        down_after: bool,
        phases: &mut Vec<Phase>,
        apply: impl FnOnce(&mut Vec<Phase>) -> Result<T>,
    ) -> Result<(T, Option<EngineError>)> {
        let t = Instant::now();
        if !self.up_locked(m)?.already_up {
            phases.push(Phase::since("up", t));
        }
        let result = apply(phases).map_err(|e| {
            // Killing the view server fails every read of the base under way; say so, and
            // what brings the machine back, rather than only what failed to read.
            if self.lower_ok(m) {
                return e;
            }
            EngineError::Invalid(format!(
                "the view server of machine {}'s lower layer stopped while this command worked \
                 through it ({e}); nothing is lost: `cairn machine up {}` starts it again and \
                 completes what was interrupted",
                m.name, m.name
            ))
        });
        let mut down = None;
        if down_after {
            let t = Instant::now();
            match self.down_locked(m) {
                Ok(_) => phases.push(Phase::since("down", t)),
                Err(e) => {
                    tracing::warn!("could not bring machine {} down again: {e}", m.name);
                    down = Some(e);
                }
            }
        }
        result.map(|v| (v, down))
    }

    /// Steps 4–6 of the rebase protocol; idempotent, so also the completion after a crash.
    pub(crate) fn finish_rebase(&self, m: &MachineRow, target: &CheckpointRow) -> Result<()> {
        let base = Self::base_of(target);
        self.fresh_upper(m, &base)?;
        self.put_base_manifest(m, &base)?;
        self.sync_state(m)?;
        self.catalog.set_base(m.id, &base, Some(target.id), None)?;
        let _ = std::fs::remove_file(self.machine_state_dir(&m.uid).join("statcache"));
        self.sweep_state(m);
        Ok(())
    }

    /// Finishes a mounted machine whose create or fork was killed after its v1 was committed
    /// but before its base was recorded: the base is v1's tree, as the create would have made
    /// it. One killed before its v1 holds nothing and can only be created again.
    pub(crate) fn complete_create(&self, m: &MachineRow) -> Result<()> {
        let head = match m.head {
            Some(h) => self.catalog.checkpoint(h)?,
            None => None,
        };
        let Some(head) = head else {
            return Err(EngineError::Invalid(format!(
                "the creation of machine {} was interrupted before it had a checkpoint; run the \
                 same `cairn machine create` or `cairn fork` again (it replaces what is left) or \
                 `cairn machine rm {}`",
                m.name, m.name
            )));
        };
        tracing::info!("completing the interrupted creation of {}", m.name);
        self.finish_rebase(m, &head)?;
        self.audit(
            "machine-create",
            Some(&m.name),
            None,
            &Ok("completed an interrupted create".to_owned()),
        );
        Ok(())
    }

    /// Completes a rebase a crash interrupted, given its journal text.
    pub(crate) fn complete_rebase(&self, m: &MachineRow, text: &str) -> Result<Option<String>> {
        let journal: RebaseJournal =
            serde_json::from_str(text).map_err(|e| EngineError::Corrupt {
                what: format!("the restore journal of machine {}", m.name),
                reason: e.to_string(),
            })?;
        let Some(target) = self.catalog.checkpoint(journal.target)? else {
            self.catalog.set_pending(m.id, None)?;
            return Ok(None);
        };
        self.finish_rebase(m, &target)?;
        self.audit(
            "restore",
            Some(&m.name),
            Some(&journal.target_ref),
            &Ok("completed an interrupted restore".to_owned()),
        );
        Ok(Some(journal.target_ref))
    }

    /// Forks a checkpoint into new mounted machines: each gets the checkpoint's tree as its
    /// base and its v1, and an empty upper. O(1) per machine.
    pub fn fork_mounted(&self, r: &Ref, names: &[String]) -> Result<Vec<MountedInfo>> {
        let mut out = Vec::new();
        for name in names {
            let opts = CreateMountedOptions {
                name: name.clone(),
                at: None,
                from: Some(r.clone()),
                from_tar: None,
            };
            let target = r.to_string();
            let audit = CreateAudit {
                op: "fork",
                target: Some(&target),
                detail: |i| i.head.clone().unwrap_or_default(),
            };
            out.push(self.create_mounted_audited(&opts, &super::NoProgress, &audit)?);
        }
        Ok(out)
    }

    pub(crate) fn mounted_info(&self, m: &MachineRow) -> Result<MountedInfo> {
        let head = self.head_ref(m)?;
        Ok(MountedInfo {
            name: m.name.clone(),
            at: m.dir.clone(),
            head,
            base: m.base.map(|b| b.root),
            up: self.is_up(m),
        })
    }

    /// True while the machine's overlay is mounted.
    pub(crate) fn is_up(&self, m: &MachineRow) -> bool {
        m.kind == MachineKind::Mounted
            && if crate::sandbox::rootless() {
                self.overlay_holder(m).is_some()
            } else {
                is_overlay_at(&m.dir)
            }
    }
}

/// The base of a mounted machine; a mounted machine without one is corrupt.
pub(crate) fn base_of_row(m: &MachineRow) -> Result<Base> {
    m.base.ok_or_else(|| EngineError::Corrupt {
        what: format!("mounted machine {}", m.name),
        reason: "it has no base tree".to_owned(),
    })
}

/// How a create (or fork) records itself in the audit log: its op and target, and the detail
/// of a success, drawn from the new machine.
struct CreateAudit<'s> {
    op: &'static str,
    target: Option<&'s str>,
    detail: fn(&MountedInfo) -> String,
}

/// A mounted machine as shown to users.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MountedInfo {
    pub name: String,
    /// Where the machine appears while it is up.
    pub at: PathBuf,
    pub head: Option<String>,
    /// The tree its lower layer serves.
    pub base: Option<TreeId>,
    pub up: bool,
}

/// A mounted machine without a base: what a create or fork killed midway leaves.
pub(crate) fn unfinished_create(m: &MachineRow) -> bool {
    m.kind == MachineKind::Mounted && m.base.is_none()
}

/// True when `path` is the mountpoint of an overlay (read from the mount table).
pub(crate) fn is_overlay_at(path: &Path) -> bool {
    matches!(crate::mount::mount_at(path), Ok(Some(e)) if e.fstype == "overlay")
}

fn mkdir_all(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|source| EngineError::Io {
        op: "create directory",
        path: p.to_owned(),
        source,
    })
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|source| EngineError::Io {
        op: "rename",
        path: from.to_owned(),
        source,
    })
}

fn fsync_dir(p: &Path) -> Result<()> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|source| EngineError::Io {
            op: "fsync",
            path: p.to_owned(),
            source,
        })
}

/// Removes the uppers and overlay work directories earlier rebases left in `state`; true if
/// none is left.
pub(crate) fn sweep_old_uppers(state: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(state) else {
        return true;
    };
    let mut clean = true;
    for e in rd.flatten() {
        let name = e.file_name();
        let n = name.as_encoded_bytes();
        if n.starts_with(b"upper.old-")
            || n.starts_with(b"upper.new-")
            || n.starts_with(b"work.old-")
        {
            super::rootless::remove_tree(&e.path());
            clean &= !e.path().exists();
        }
    }
    clean
}
