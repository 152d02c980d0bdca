//! Read-only FUSE views of trees: any checkpoint (or a directory in it) served at a mountpoint
//! straight from the store, with every attribute the tree holds.
//!
//! This is the lower layer of a mounted machine as well as `cairn mount`. [`serve`] mounts a
//! tree and serves it from background threads until [`MountedView::unmount`] (or an `umount`
//! from outside); [`unmount`] and [`detach`] act on a mountpoint by path, also when its server
//! is gone.
//!
//! **Invariant:** the view never writes: not to the store, not to the catalog, and every
//! request that would change the tree fails with `EROFS`. Inode numbers are stable for the life
//! of the mount and shared by all paths of a hardlinked file. No catalog read transaction stays
//! open while serving (see `blobs.rs`).

mod blobs;
mod data;
mod escape;
mod fs;
mod inodes;
mod mounts;
mod release;
mod xattrscan;

pub use data::DataLayer;
#[cfg(test)]
pub(crate) use data::LARGE_FIRST as DATA_LARGE_FIRST;
pub(crate) use data::idle_thread as idle_priority;
pub(crate) use data::{eligible as data_eligible, key as data_key, large as data_large};
pub(crate) use escape::Escape;
pub(crate) use mounts::fsname;
pub use mounts::{UnmountReport, detach, detach_all_below, mounts_below, unmount};
pub(crate) use mounts::{mount_at, mount_in};
pub use release::{ReleaseError, Released, release};

use crate::catalog::CatalogError;
use crate::model::Node;
use crate::store::{Store, StoreError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "blob {id} is referenced by the mounted tree but no pack holds it (was its checkpoint \
         deleted and collected?); run `cairn check`"
    )]
    MissingBlob { id: String },
    #[error("chunk {id} is corrupt: {reason}; run `cairn check --read-data`")]
    BadChunk { id: String, reason: String },
    #[error("tree {id} is corrupt: {reason}; run `cairn check`")]
    CorruptTree { id: String, reason: String },
    #[error("hardlink to /{target} is broken: {reason}; run `cairn check`")]
    BrokenHardlink { target: String, reason: String },
    #[error("mountpoint {} does not exist; create an empty directory there first", path.display())]
    MountpointMissing { path: PathBuf },
    #[error("mountpoint {} is not a directory; give an empty directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error(
        "mountpoint {} is not empty; mount on an empty directory so nothing is hidden",
        path.display()
    )]
    NotEmpty { path: PathBuf },
    #[error("{} is already a mount point ({what}); unmount it first or pick another directory", path.display())]
    AlreadyMounted { path: PathBuf, what: String },
    #[error(
        "{} is a stale FUSE mount whose server has stopped; run `cairn umount {}` and try again",
        path.display(), path.display()
    )]
    Stale { path: PathBuf },
    #[error("{} is not a mount point; nothing to unmount", path.display())]
    NotMounted { path: PathBuf },
    #[error(
        "{} is a {fstype} mount of {source_name}, not a cairn view; use umount(8) if you mean it",
        path.display()
    )]
    NotOurs {
        path: PathBuf,
        fstype: String,
        source_name: String,
    },
    #[error(
        "{} is busy: a process is using it (its cwd or an open file is inside); stop it, or \
         pass --lazy to detach now and finish when the last user leaves",
        path.display()
    )]
    Busy { path: PathBuf },
    #[error(
        "/dev/fuse is missing: load the FUSE module (`modprobe fuse`) and install fuse3 \
         (`apt-get install fuse3`)"
    )]
    NoFuseDevice,
    #[error("fusermount3 was not found; install fuse3 (`apt-get install fuse3`), or run as root")]
    NoFusermount,
    #[error(
        "/dev/fuse is not readable and writable by this user; without root a FUSE view needs \
         it to be (Debian's udev rules make it mode 0666: `chmod 0666 /dev/fuse`)"
    )]
    NoFuseAccess,
    #[error("mount a FUSE view at {}: {source}", path.display())]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = MountError> = std::result::Result<T, E>;

/// How a view is mounted.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Let every user, not only the one who mounted it, enter the view. The tree's own modes,
    /// owners and ACLs still decide what each may read (the kernel checks them).
    pub allow_other: bool,
    /// Honor setuid/setgid bits and open device nodes, as the lower layer of a mounted machine
    /// must. Off for an inspection view: a checkpoint then grants no privileges.
    pub devices_and_setuid: bool,
    /// Threads answering the kernel; reads of different chunks decompress in parallel.
    pub threads: usize,
    /// Bound of the decompressed-chunk cache, in bytes.
    pub chunk_cache_bytes: usize,
    /// Show the tree's owners as the host ids that a machine's user namespace maps them from.
    /// The lower layer of a machine run without root needs it: a file of the tree's root must
    /// be the user's on the host to be root's inside. Ids the map lacks show unchanged.
    pub ids: Option<crate::sandbox::IdMap>,
    /// Fill this data layer with the tree's larger files and name their copies to overlayfs
    /// (`data.rs`): for the lower layer of a machine whose overlay is mounted over it.
    pub data: Option<DataLayer>,
    /// The view is the lower layer of an overlay that reads its own attributes under this
    /// prefix: the tree's attributes of that prefix are served escaped (`escape.rs`).
    pub overlay_prefix: Option<&'static [u8]>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: crate::is_root(),
            devices_and_setuid: false,
            threads: crate::cpus().clamp(2, 8),
            chunk_cache_bytes: 64 << 20,
            ids: None,
            data: None,
            overlay_prefix: None,
        }
    }
}

/// What to serve: a directory node of a checkpoint and where it sits in the machine.
pub(crate) struct ViewSpec {
    pub store: Store,
    pub catalog_path: PathBuf,
    /// The machine directory node (the checkpoint root's `root` entry); hardlink targets are
    /// paths from it.
    pub top: Node,
    /// Components from the machine directory to the view's root; empty for the whole machine.
    pub path: Vec<Vec<u8>>,
    /// The directory node at `path`: the view's root.
    pub root: Node,
    /// Shown as the mount's source in the mount table, e.g. `web@v1`.
    pub name: String,
}

/// A live view. Dropping it unmounts if nothing uses the mount (and otherwise leaves it
/// served by a detached thread until the process exits).
pub struct MountedView {
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
    requests: Arc<Requests>,
    xattrs: Arc<xattrscan::XattrScan>,
    filled: Arc<FillState>,
}

/// What a view's data layer fill did in its pass over the large files, once that pass is over
/// (`None` until then).
#[derive(Default)]
struct FillState {
    done: std::sync::Mutex<Option<data::Filled>>,
    ended: std::sync::Condvar,
}

impl FillState {
    fn set(&self, filled: data::Filled) {
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(filled);
        self.ended.notify_all();
    }
}

/// How many requests of each kind the kernel has sent the view so far. Warm reads of cached
/// files and listings send none: that is what these let a test (or a curious user) see.
#[derive(Debug, Default)]
pub struct Requests {
    pub lookup: AtomicU64,
    pub getattr: AtomicU64,
    pub open: AtomicU64,
    pub opendir: AtomicU64,
    pub read: AtomicU64,
    pub readdir: AtomicU64,
    pub readdirplus: AtomicU64,
    pub getxattr: AtomicU64,
}

impl Requests {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl MountedView {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The requests served so far.
    pub fn requests(&self) -> &Requests {
        &self.requests
    }

    /// Whether the tree holds no xattr at all (`Some(true)`), holds one (`Some(false)`), or
    /// is still being scanned (`None`). See `xattrscan`.
    pub fn xattr_free(&self) -> Option<bool> {
        self.xattrs.result()
    }

    /// Waits until the view's data layer fill has copied every eligible file larger than
    /// `data::LARGE_FIRST` (it copies those first) and returns what that pass did (at once,
    /// with nothing done, for a view without a data layer). A lower image holds the smaller
    /// files whole, so it can be built from here on.
    pub fn wait_large_filled(&self) -> data::Filled {
        let mut done = self.filled.done.lock().unwrap_or_else(|p| p.into_inner());
        while done.is_none() {
            done = self
                .filled
                .ended
                .wait(done)
                .unwrap_or_else(|p| p.into_inner());
        }
        done.unwrap_or_default()
    }

    /// False once the kernel has ended the connection: after an unmount (from here or outside)
    /// or after a detach once the last user left.
    pub fn is_serving(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| !s.guard.is_finished())
    }

    /// Unmounts and waits for the server threads. Fails with `Busy`, leaving the view served,
    /// while a process uses the mount.
    pub fn unmount(&mut self) -> Result<()> {
        if self.is_serving() {
            mounts::unmount_path(&self.mountpoint, false)?;
        }
        self.join()
    }

    /// Detaches the mount from the file system tree now; processes that still use it keep
    /// being served until they leave, then `is_serving` turns false.
    pub fn detach(&mut self) -> Result<()> {
        if self.is_serving() {
            mounts::unmount_path(&self.mountpoint, true)?;
        }
        Ok(())
    }

    /// Waits until the server stops: the mount was unmounted (or detached and left).
    pub fn join(&mut self) -> Result<()> {
        let Some(mut session) = self.session.take() else {
            return Ok(());
        };
        // The session's own unmount-on-drop takes a dead connection for a live one and would
        // unmount whatever is mounted at the path by then, such as the next view. The
        // connection is over once we join, so its mount handle is leaked on purpose (one
        // device fd, already disconnected) and only the server thread is joined.
        let guard = std::mem::replace(&mut session.guard, std::thread::spawn(|| Ok(())));
        std::mem::forget(session);
        let io = |source| MountError::Io {
            op: "serve",
            path: self.mountpoint.clone(),
            source,
        };
        match guard.join() {
            Ok(r) => r.map_err(io),
            Err(_) => Err(io(std::io::Error::other("the server thread panicked"))),
        }
    }
}

/// Mounts `spec` read-only at `mountpoint` and serves it from background threads. Returns once
/// the kernel has completed the FUSE handshake, so the view is usable immediately.
pub(crate) fn serve(spec: ViewSpec, mountpoint: &Path, opts: &MountOptions) -> Result<MountedView> {
    mounts::check_mountpoint(mountpoint)?;
    mounts::check_fuse_available()?;
    // The fill reads through its own reader (catalog connection and chunk cache): it runs
    // at idle priority and must never hold a lock the serving threads wait for.
    let fill = match &opts.data {
        Some(layer) => Some((
            layer.clone(),
            blobs::Blobs::open(spec.store.clone(), &spec.catalog_path, 8 << 20)?,
        )),
        None => None,
    };
    let blobs = Arc::new(blobs::Blobs::open(
        spec.store,
        &spec.catalog_path,
        opts.chunk_cache_bytes,
    )?);
    let requests = Arc::new(Requests::default());
    let xattrs = Arc::new(xattrscan::XattrScan::default());
    // With a data layer the kernel must keep asking for xattrs whatever the scan finds (see
    // `fs.rs`), so the walk would be work for nothing beside the fill's.
    if fill.is_none() {
        let (scan, blobs, top) = (
            Arc::clone(&xattrs),
            Arc::downgrade(&blobs),
            spec.top.clone(),
        );
        std::thread::Builder::new()
            .name("xattr-scan".to_owned())
            .spawn(move || scan.run(blobs, &top))
            .map_err(|source| MountError::Io {
                op: "start the xattr scan of",
                path: mountpoint.to_owned(),
                source,
            })?;
    }
    let filled = Arc::new(FillState::default());
    if fill.is_none() {
        filled.set(data::Filled::default());
    }
    if let Some((layer, reader)) = fill {
        let (alive, top) = (Arc::downgrade(&blobs), spec.top.clone());
        let state = Arc::clone(&filled);
        std::thread::Builder::new()
            .name("data-fill".to_owned())
            .spawn(move || {
                let t = std::time::Instant::now();
                let done = layer.fill_tree(&reader, &alive, &top, |large| state.set(large));
                if done.files > 0 {
                    tracing::info!(
                        "data layer: copied {} files, {} bytes, in {:.1?}",
                        done.files,
                        done.bytes,
                        t.elapsed()
                    );
                }
            })
            .map_err(|source| MountError::Io {
                op: "start the data layer fill of",
                path: mountpoint.to_owned(),
                source,
            })?;
    }
    let view = fs::ViewFs::new(
        blobs,
        Arc::clone(&xattrs),
        spec.top,
        spec.path.join(&b'/'),
        spec.root,
        Arc::clone(&requests),
    )
    .with_ids(opts.ids.clone())
    .with_data(opts.data.clone())
    .with_escape(opts.overlay_prefix.map(escape::Escape::new));
    use fuser::MountOption as O;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        O::RO,
        O::FSName(mounts::fsname(&spec.name)),
        O::Subtype("cairn".to_owned()),
        // The kernel checks modes, owners and ACLs against the tree's attributes, as the
        // machine's own file system did; the server never has to.
        O::DefaultPermissions,
        O::NoAtime,
    ];
    if opts.devices_and_setuid {
        config.mount_options.extend([O::Dev, O::Suid]);
    } else {
        config.mount_options.extend([O::NoDev, O::NoSuid]);
    }
    config.acl = if opts.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    // Each thread reads its own clone of the device fd, so requests do not queue behind one.
    config.clone_fd = true;
    let mount_err = |source| MountError::Mount {
        path: mountpoint.to_owned(),
        source,
    };
    let session = fuser::Session::new(view, mountpoint, &config)
        .map_err(mount_err)?
        .spawn()
        .map_err(mount_err)?;
    Ok(MountedView {
        mountpoint: mounts::absolute(mountpoint)?,
        session: Some(session),
        requests,
        xattrs,
        filled,
    })
}
