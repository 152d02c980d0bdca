//! Operations on machines: ingest a directory into a tree, materialize a tree into a directory,
//! diff trees, and the checkpoint / restore / fork / delete / gc / check verbs built on them.
//!
//! **Invariant:** the engine parses no CLI arguments and prints nothing; it returns reports that
//! the CLI renders. Every blob a committed checkpoint references is in a durable pack and in the
//! catalog before the checkpoint row commits (see ARCHITECTURE.md, "commit protocol").

mod blobs;
mod check;
mod checkpoint;
mod diff;
mod error;
mod gc;
mod image;
mod ingest;
mod lock;
mod machine;
mod manifest;
mod materialize;
mod mount;
mod mounted;
mod repair;
mod restore;
mod rootless;
mod run;
mod statcache;
mod updown;
mod upper;
mod usage;
mod view;

pub use check::{CheckOptions, CheckReport, Finding};
pub use checkpoint::{CheckpointInfo, CheckpointOptions, CheckpointReport};
pub use diff::{Change, ChangeKind};
pub use error::EngineError;
pub use gc::{DEFAULT_IMAGES_MAX, GcOptions, GcReport};
pub use machine::{CreateMachineOptions, MachineInfo};
pub use mounted::{CreateMountedOptions, MountedInfo};
pub use repair::RebuildReport;
pub use restore::{ForkOptions, RestoreOptions, RestoreReport};
pub use run::{RunSpec, RunStart};
pub use updown::{DownReport, LowerServer, UpReport};
pub use usage::{CheckpointUsage, DuReport, MachineUsage};

use crate::catalog::{AuditRecord, Catalog};
use crate::store::{LocalBackend, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Receives progress of long work. The CLI draws bars on a terminal; tests pass `NoProgress`.
pub trait Progress: Send + Sync {
    /// A new phase starts; `total` is in bytes when known.
    fn phase(&self, name: &str, total: Option<u64>);
    /// `n` more bytes (or items) of the current phase are done.
    fn advance(&self, n: u64);
}

/// One timed phase of an operation, as reports show it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub ms: f64,
}

impl Phase {
    pub(crate) fn since(name: &'static str, t: std::time::Instant) -> Phase {
        Phase {
            name,
            ms: t.elapsed().as_secs_f64() * 1e3,
        }
    }
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
}

/// How a `Repo` is opened.
#[derive(Clone, Debug)]
pub struct RepoOptions {
    /// The cairn home: catalog, store, locks and per-machine state live under it.
    pub home: PathBuf,
    /// Who is acting; recorded on checkpoints and in the audit log.
    pub author: String,
    /// How long to wait for another command that holds a machine's lock.
    pub lock_wait: Duration,
    /// How `machine up` serves a mounted machine's lower layer.
    pub lower_server: LowerServer,
    /// Whether a root machine's lower layer is a lower image once its base has one, and view
    /// servers build images (see `image.rs`); off, every lower is a FUSE view.
    pub lower_images: bool,
}

/// An open cairn home: the catalog, the store and the machines they describe.
pub struct Repo {
    home: PathBuf,
    author: String,
    lock_wait: Duration,
    catalog: Catalog,
    store: Store,
    lower_server: LowerServer,
    lower_images: bool,
    /// Lower layers served by this process (`LowerServer::InProcess`).
    views: updown::Views,
    /// Overlays a restore detached, each kept by a background process until the restore is
    /// done (`let_go_released`) or this repo is dropped, then let go, flush and all
    /// (`mount::release`).
    released: std::sync::Mutex<Vec<crate::mount::Released>>,
    /// In-process lower views of those overlays, unmounted but still serving them: each ends
    /// once its overlay has gone, so they are joined after `released` is let go.
    retired: std::sync::Mutex<Vec<crate::mount::MountedView>>,
}

impl Drop for Repo {
    fn drop(&mut self) {
        self.released
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        for mut view in self
            .retired
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            if let Err(e) = view.join() {
                tracing::warn!("a lower view of a released overlay: {e}");
            }
        }
    }
}

impl Repo {
    /// Opens the home, creating it (and an empty store and catalog) on first use.
    pub fn open(opts: &RepoOptions) -> Result<Repo> {
        let home = &opts.home;
        for sub in ["", "store", "locks", "machines"] {
            let p = home.join(sub);
            std::fs::create_dir_all(&p).map_err(|source| EngineError::Io {
                op: "create directory",
                path: p.clone(),
                source,
            })?;
        }
        let catalog = Catalog::open(&home.join("catalog.db"))?;
        let backend = LocalBackend::open(&home.join("store"))?;
        Ok(Repo {
            home: home.canonicalize().unwrap_or_else(|_| home.clone()),
            author: opts.author.clone(),
            lock_wait: opts.lock_wait,
            catalog,
            store: Store::new(Arc::new(backend)),
            lower_server: opts.lower_server.clone(),
            lower_images: opts.lower_images,
            views: Default::default(),
            released: Default::default(),
            retired: Default::default(),
        })
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    fn catalog_path(&self) -> PathBuf {
        self.home.join("catalog.db")
    }

    /// Whole copies of the larger files of mounted machines' bases, read by their overlays
    /// (`mount/data.rs`); a cache, shared by every machine of this home.
    pub(crate) fn data_layer(&self) -> crate::mount::DataLayer {
        crate::mount::DataLayer::new(self.home.join("cache").join("files"))
    }

    fn machine_state_dir(&self, uid: &str) -> PathBuf {
        self.home.join("machines").join(uid)
    }

    /// Records an operation in the audit log. Failure to audit never masks the operation's own
    /// outcome, so errors here are logged and dropped.
    fn audit(
        &self,
        op: &str,
        machine: Option<&str>,
        target: Option<&str>,
        outcome: &Result<String>,
    ) {
        let (outcome, detail) = match outcome {
            Ok(d) => ("ok", d.clone()),
            Err(e) => ("error", e.to_string()),
        };
        let rec = AuditRecord {
            time: now_ns(),
            author: &self.author,
            op,
            machine,
            target,
            outcome,
            detail: &detail,
        };
        if let Err(e) = self.catalog.append_audit(&rec) {
            tracing::warn!("could not write the audit log: {e}");
        }
    }

    /// The audit log, oldest first.
    pub fn audit_log(
        &self,
        machine: Option<&str>,
        limit: Option<u64>,
    ) -> Result<Vec<crate::catalog::AuditRow>> {
        Ok(self.catalog.audit(machine, limit)?)
    }
}

/// Wall-clock time in Unix nanoseconds.
pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Joins relative path components for messages and diff output: `etc/hosts`.
pub(crate) fn join_path(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
        p.extend_from_slice(parent);
        p.push(b'/');
        p.extend_from_slice(name);
        p
    }
}

#[cfg(test)]
mod tests;
