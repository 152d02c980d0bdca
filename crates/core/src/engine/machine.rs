//! Machines: create (adopt a directory, or import a tarball), list, show, remove.

use super::checkpoint::{CheckpointOptions, CheckpointReport};
use super::manifest::{self, MachineManifest};
use super::{EngineError, Progress, Repo, Result, now_ns};
use crate::catalog::{MachineKind, MachineRow};
use crate::model::validate_machine_name;
use crate::rootfs::{ApplyOptions, Dir, import_tar};
use std::path::{Path, PathBuf};

/// Inputs of `machine create`.
#[derive(Clone, Debug)]
pub struct CreateMachineOptions {
    pub name: String,
    /// The machine directory. Adopted as it is, or created and filled from `from_tar`.
    pub dir: PathBuf,
    /// Import this plain tar into a new (or empty) `dir`, then take checkpoint v1 of it.
    pub from_tar: Option<PathBuf>,
}

/// A machine as shown to users.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MachineInfo {
    pub name: String,
    pub dir: PathBuf,
    pub kind: MachineKind,
    pub created_at: i64,
    pub checkpoints: u64,
    /// The checkpoint the live state descends from, e.g. `web@v3`.
    pub head: Option<String>,
    pub latest: Option<String>,
    /// The target of a restore that was interrupted (`web@v2`, or `web@v2:/etc` for one path);
    /// the next command on the machine completes it.
    pub interrupted_restore: Option<String>,
    /// A mounted machine's base: the tree its lower layer serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<crate::model::TreeId>,
    /// Whether a mounted machine is up (its overlay mounted); absent for directory machines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub up: Option<bool>,
    /// Without root, while up: where the host reaches the machine's root (its overlay is in a
    /// namespace of its own, see `rootless.rs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reach: Option<std::path::PathBuf>,
}

impl Repo {
    /// Creates a machine. With `from_tar`, imports it and returns checkpoint v1 as well.
    pub fn create_machine(
        &self,
        opts: &CreateMachineOptions,
        progress: &dyn Progress,
    ) -> Result<(MachineInfo, Option<CheckpointReport>)> {
        let result = self.create_machine_inner(opts, progress);
        let detail = result
            .as_ref()
            .map(|(m, _)| m.dir.display().to_string())
            .map_err(clone_err);
        self.audit("machine-create", Some(&opts.name), None, &detail);
        result
    }

    fn create_machine_inner(
        &self,
        opts: &CreateMachineOptions,
        progress: &dyn Progress,
    ) -> Result<(MachineInfo, Option<CheckpointReport>)> {
        validate_machine_name(&opts.name)?;
        if self.catalog.machine(&opts.name)?.is_some() {
            return Err(EngineError::Invalid(format!(
                "machine {} already exists; pick another name or `cairn machine rm {}` first",
                opts.name, opts.name
            )));
        }
        let _lock = self.lock_machine(&opts.name, "machine create")?;
        let dir = match &opts.from_tar {
            None => self.check_adopt_dir(&opts.dir)?,
            Some(_) => self.prepare_new_dir(&opts.dir)?,
        };
        if let Some(tar) = &opts.from_tar {
            self.import_tar_into(tar, &dir, progress)?;
        }
        let row = self.register_machine(&opts.name, &dir)?;
        let first = match &opts.from_tar {
            None => None,
            Some(tar) => {
                let note = format!("imported from {}", tar.display());
                Some(self.checkpoint_locked(
                    &row,
                    &CheckpointOptions {
                        name: None,
                        note,
                        auto: false,
                    },
                    progress,
                    None,
                )?)
            }
        };
        Ok((
            self.machine_info_row(&self.catalog.machine_by_id(row.id)?.unwrap_or(row))?,
            first,
        ))
    }

    /// Imports a plain tar into the (new, empty) directory `dir`.
    pub(crate) fn import_tar_into(
        &self,
        tar: &Path,
        dir: &Path,
        progress: &dyn Progress,
    ) -> Result<()> {
        let file = std::fs::File::open(tar).map_err(|source| EngineError::Io {
            op: "open tarball",
            path: tar.to_owned(),
            source,
        })?;
        progress.phase("importing", file.metadata().ok().map(|m| m.len()));
        let root = Dir::open(dir)?;
        let reader = ProgressRead {
            inner: std::io::BufReader::with_capacity(1 << 20, file),
            progress,
        };
        import_tar(
            reader,
            &root,
            &ApplyOptions {
                owners: crate::is_root(),
            },
        )
        .map_err(|e| {
            EngineError::Import(format!(
                "{e}; the partly imported directory {} was left for inspection",
                dir.display()
            ))
        })?;
        Ok(())
    }

    /// Adds the catalog row and manifest of a new directory machine whose directory is ready.
    pub(crate) fn register_machine(&self, name: &str, dir: &Path) -> Result<MachineRow> {
        self.register_machine_kind(name, dir, MachineKind::Dir, None)
    }

    /// Adds the manifest (durable first) and the catalog row of a new machine of `kind`.
    pub(crate) fn register_machine_kind(
        &self,
        name: &str,
        dir: &Path,
        kind: MachineKind,
        base: Option<crate::catalog::Base>,
    ) -> Result<MachineRow> {
        let man = new_machine_manifest(name, dir, kind, base);
        manifest::put_machine(&self.store, &man)?;
        self.insert_machine_row(&man, dir, kind)
    }

    /// Inserts the catalog row of the machine `man` describes. A mounted machine's row has no
    /// base until the commit that completes it, which is synced and makes this one durable
    /// too: so it is committed without an fsync, and a power cut before that completing commit
    /// leaves what a crash there leaves, a machine no catalog row names, or an unfinished one.
    pub(crate) fn insert_machine_row(
        &self,
        man: &MachineManifest,
        dir: &Path,
        kind: MachineKind,
    ) -> Result<MachineRow> {
        let insert = |c: &crate::catalog::Catalog| {
            c.insert_machine(&man.uid, &man.name, dir, kind, man.created_at)
        };
        Ok(if kind == MachineKind::Mounted {
            self.catalog.without_fsync(insert)?
        } else {
            insert(&self.catalog)?
        })
    }

    /// An existing directory to track in place.
    fn check_adopt_dir(&self, dir: &Path) -> Result<PathBuf> {
        let bad = |reason: &str| EngineError::BadDir {
            path: dir.to_owned(),
            reason: reason.to_owned(),
        };
        let meta = std::fs::symlink_metadata(dir).map_err(|_| bad("it does not exist"))?;
        if !meta.is_dir() && !std::fs::metadata(dir).map(|m| m.is_dir()).unwrap_or(false) {
            return Err(bad("it is not a directory"));
        }
        let canon = dir.canonicalize().map_err(|e| bad(&e.to_string()))?;
        self.check_overlaps(&canon, dir)?;
        Ok(canon)
    }

    /// A directory to create, or an existing empty one, for an import or a fork.
    pub(crate) fn prepare_new_dir(&self, dir: &Path) -> Result<PathBuf> {
        let bad = |reason: &str| EngineError::BadDir {
            path: dir.to_owned(),
            reason: reason.to_owned(),
        };
        if !new_or_empty(dir)? {
            let parent = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !parent.is_dir() {
                return Err(bad("its parent directory does not exist"));
            }
            std::fs::create_dir(dir).map_err(|e| bad(&e.to_string()))?;
        }
        let canon = dir.canonicalize().map_err(|e| bad(&e.to_string()))?;
        if let Err(e) = self.check_overlaps(&canon, dir) {
            let _ = std::fs::remove_dir(&canon);
            return Err(e);
        }
        Ok(canon)
    }

    /// Where a fork into `dir` is built before it is renamed to `dir`: `dir` must be new or an
    /// empty directory; the fork is built in its sibling `.DIRNAME.cairn-fork-MACHINE`. Returns
    /// (the final path, canonical; the staging directory, freshly created). A staging directory
    /// left by a fork of `machine` that died is ours to clear: the caller holds the lock of
    /// `machine`, the only fork that uses this name.
    pub(crate) fn prepare_fork_dir(&self, dir: &Path, machine: &str) -> Result<(PathBuf, PathBuf)> {
        let bad = |reason: &str| EngineError::BadDir {
            path: dir.to_owned(),
            reason: reason.to_owned(),
        };
        new_or_empty(dir)?;
        let name = dir
            .file_name()
            .ok_or_else(|| bad("it does not end in a directory name"))?;
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(bad("its parent directory does not exist"));
        }
        let canon = parent
            .canonicalize()
            .map_err(|e| bad(&e.to_string()))?
            .join(name);
        self.check_overlaps(&canon, dir)?;
        let mut staging_name = std::ffi::OsString::from(".");
        staging_name.push(name);
        staging_name.push(".cairn-fork-");
        staging_name.push(machine);
        let staging = canon.with_file_name(staging_name);
        let io = |op: &'static str| {
            let path = staging.clone();
            move |source| EngineError::Io { op, path, source }
        };
        if std::fs::symlink_metadata(&staging).is_ok() {
            std::fs::remove_dir_all(&staging)
                .map_err(io("remove a dead fork's staging directory"))?;
        }
        std::fs::create_dir(&staging).map_err(io("create the fork's staging directory"))?;
        Ok((canon, staging))
    }

    /// A machine directory may not overlap the cairn home or another machine.
    fn check_overlaps(&self, canon: &Path, shown: &Path) -> Result<()> {
        let bad = |reason: String| EngineError::BadDir {
            path: shown.to_owned(),
            reason,
        };
        if canon.starts_with(&self.home) {
            return Err(bad(format!(
                "it lies inside the cairn home {}",
                self.home.display()
            )));
        }
        if self.home.starts_with(canon) {
            return Err(bad(format!(
                "it contains the cairn home {}",
                self.home.display()
            )));
        }
        for m in self.catalog.machines()? {
            if canon.starts_with(&m.dir) || m.dir.starts_with(canon) {
                return Err(bad(format!(
                    "it overlaps machine {} at {}",
                    m.name,
                    m.dir.display()
                )));
            }
        }
        Ok(())
    }

    pub fn machines(&self) -> Result<Vec<MachineInfo>> {
        self.catalog
            .machines()?
            .into_iter()
            .map(|m| self.machine_info_row(&m))
            .collect()
    }

    pub fn machine_info(&self, name: &str) -> Result<MachineInfo> {
        self.machine_info_row(&self.machine_row(name)?)
    }

    pub(crate) fn machine_row(&self, name: &str) -> Result<MachineRow> {
        self.catalog
            .machine(name)?
            .ok_or_else(|| EngineError::UnknownMachine {
                name: name.to_owned(),
            })
    }

    fn machine_info_row(&self, m: &MachineRow) -> Result<MachineInfo> {
        let cps = self.catalog.checkpoints(m.id)?;
        let head = self.head_ref(m)?;
        Ok(MachineInfo {
            name: m.name.clone(),
            dir: m.dir.clone(),
            kind: m.kind,
            created_at: m.created_at,
            checkpoints: cps.len() as u64,
            head,
            latest: cps.last().map(|c| format!("{}@v{}", m.name, c.version)),
            interrupted_restore: m.pending.as_deref().map(super::restore::journal_target),
            base: m.base.map(|b| b.root),
            up: (m.kind == MachineKind::Mounted).then(|| self.is_up(m)),
            reach: (m.kind == MachineKind::Mounted && crate::sandbox::rootless())
                .then(|| self.overlay_holder(m))
                .flatten()
                .map(|h| crate::sandbox::path_from_host(&h, &m.dir)),
        })
    }

    /// The checkpoint the machine's live state descends from, as `machine@vN`.
    pub(crate) fn head_ref(&self, m: &MachineRow) -> Result<Option<String>> {
        Ok(match m.head {
            Some(h) => self
                .catalog
                .checkpoint(h)?
                .map(|c| format!("{}@v{}", c.machine, c.version)),
            None => None,
        })
    }

    /// Forgets a machine: its checkpoints, manifests and stat cache. Its directory is left
    /// untouched; chunks no other checkpoint uses are reclaimed by the next gc.
    pub fn remove_machine(&self, name: &str) -> Result<()> {
        let result = (|| {
            let m = self.machine_row(name)?;
            let _lock = self.lock_machine(name, "machine rm")?;
            if self.is_up(&m) {
                return Err(EngineError::Invalid(format!(
                    "machine {name} is up; `cairn machine down {name}` first"
                )));
            }
            self.forget_machine(&m)?;
            Ok(m.dir.display().to_string())
        })();
        self.audit("machine-rm", Some(name), None, &result);
        result.map(|_| ())
    }

    /// Deletes a machine's manifests, catalog rows and state; the caller holds its lock.
    pub(crate) fn forget_machine(&self, m: &MachineRow) -> Result<()> {
        for c in self.catalog.checkpoints(m.id)? {
            self.store
                .delete_object(&manifest::checkpoint_key(&m.uid, c.version))?;
        }
        if super::mounted::unfinished_create(m) {
            // A fork writes v1's manifest beside the machine's, before either row names it.
            self.store
                .delete_object(&manifest::checkpoint_key(&m.uid, 1))?;
        }
        self.store.delete_object(&manifest::machine_key(&m.uid))?;
        self.catalog.delete_machine(m.id)?;
        let state = self.machine_state_dir(&m.uid);
        super::rootless::remove_tree(&state);
        if state.exists() {
            self.sweep_in_namespace(&m.uid, true);
        }
        Ok(())
    }
}

/// Accepts a directory that does not exist yet (false) or is empty (true); refuses anything
/// else, saying why.
fn new_or_empty(dir: &Path) -> Result<bool> {
    let bad = |reason: &str| EngineError::BadDir {
        path: dir.to_owned(),
        reason: reason.to_owned(),
    };
    match std::fs::symlink_metadata(dir) {
        Ok(m) if !m.is_dir() => Err(bad("it exists and is not a directory")),
        Ok(_) => {
            let mut it = std::fs::read_dir(dir).map_err(|e| bad(&e.to_string()))?;
            if it.next().is_some() {
                return Err(bad(
                    "it exists and is not empty; choose a new or empty directory",
                ));
            }
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

/// Audit needs the outcome while the caller keeps the error; errors are not Clone, so the
/// audit gets the message.
pub(crate) fn clone_err(e: &EngineError) -> EngineError {
    EngineError::Invalid(e.to_string())
}

struct ProgressRead<'a, R> {
    inner: R,
    progress: &'a dyn Progress,
}

impl<R: std::io::Read> std::io::Read for ProgressRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// The manifest of a new machine, with a fresh uid. A mounted machine's carries its base from
/// the start, so it is written once; the catalog row gets the base only when the machine is
/// complete (see `unfinished_create`).
pub(crate) fn new_machine_manifest(
    name: &str,
    dir: &Path,
    kind: MachineKind,
    base: Option<crate::catalog::Base>,
) -> MachineManifest {
    MachineManifest {
        format: manifest::FORMAT,
        uid: manifest::new_uid(),
        name: name.to_owned(),
        dir: dir.as_os_str().as_encoded_bytes().to_vec(),
        kind: kind.as_str().to_owned(),
        created_at: now_ns(),
        base,
    }
}
