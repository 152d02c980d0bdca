//! Bringing a mounted machine up and down: the view of its base at `lower/`, then the overlay
//! at the machine's mountpoint.
//!
//! The view must outlive the command that starts it, so `machine up` runs its server as a
//! detached process (`LowerServer::Process`: the CLI passes its own binary) that serves until
//! the view is unmounted. Tests serve it from threads of the test process instead.
//!
//! Up never trusts what an earlier run left: a view whose server died (every access fails
//! with `ENOTCONN`) and an overlay over it are detached first, and the report says so. The
//! upper layer is a plain directory, so nothing written before a crash is lost.

use super::{EngineError, Phase, Repo, Result};
use crate::catalog::{MachineKind, MachineRow};
use crate::mount::{MountOptions, MountedView, mount_at};
use rustix::mount::UnmountFlags;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How `machine up` serves a machine's lower layer.
#[derive(Clone, Debug, Default)]
pub enum LowerServer {
    /// This command, which runs cairn on the same home (the CLI passes `cairn --home HOME`),
    /// detached with `machine serve-lower NAME` appended; it serves until the view is
    /// unmounted. Without root, `machine hold-overlay NAME` also runs from it
    /// (`rootless.rs`).
    Process(Vec<OsString>),
    /// Serve from threads of this process; the view ends with it.
    #[default]
    InProcess,
}

/// What `machine up` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct UpReport {
    pub name: String,
    pub at: PathBuf,
    /// The machine was up already; nothing was done.
    pub already_up: bool,
    /// What was found and cleaned: stale mounts left by a server that died, and the like.
    pub recovered: Vec<String>,
    pub phases: Vec<Phase>,
    /// Without root the overlay is in a namespace of its own: where the host reaches the
    /// machine's root (below `/proc/PID/root`) while it is up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reach: Option<PathBuf>,
    /// What the overlay's lower layer is: `view` (a FUSE view served by cairn) or `image`
    /// (the base's lower image on the local disk, see `image.rs`); empty when nothing was
    /// mounted.
    pub lower: &'static str,
}

/// What `machine down` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DownReport {
    pub name: String,
    pub was_up: bool,
    pub phases: Vec<Phase>,
}

/// How long a starting server may take to complete its mount.
const SERVER_START: Duration = Duration::from_secs(20);

/// How long a starting server waits for another server of the same machine to end.
const LOWER_LOCK_WAIT: Duration = Duration::from_secs(2);

impl Repo {
    /// Mounts a mounted machine: the view of its base, then the overlay.
    pub fn machine_up(&self, name: &str) -> Result<UpReport> {
        let result = (|| {
            let m = self.mounted_row(name)?;
            let _lock = self.lock_machine(name, "machine up")?;
            self.complete_interrupted(&m, &super::NoProgress)?;
            let m = self.machine_row(name)?;
            self.up_locked(&m)
        })();
        let detail = result
            .as_ref()
            .map(|r| r.at.display().to_string())
            .map_err(super::machine::clone_err);
        self.audit("machine-up", Some(name), None, &detail);
        result
    }

    /// Unmounts a mounted machine: the overlay, then the view.
    pub fn machine_down(&self, name: &str) -> Result<DownReport> {
        let result = (|| {
            let m = self.mounted_row(name)?;
            let _lock = self.lock_machine(name, "machine down")?;
            self.down_locked(&m)
        })();
        let detail = result
            .as_ref()
            .map(|r| format!("was up: {}", r.was_up))
            .map_err(super::machine::clone_err);
        self.audit("machine-down", Some(name), None, &detail);
        result
    }

    fn mounted_row(&self, name: &str) -> Result<MachineRow> {
        let m = self.machine_row(name)?;
        if m.kind != MachineKind::Mounted {
            return Err(EngineError::Invalid(format!(
                "machine {name} is a directory machine: it is always \"up\" at {}; only mounted \
                 machines (`cairn machine create --mounted`) are brought up and down",
                m.dir.display()
            )));
        }
        Ok(m)
    }

    /// True when a view is mounted at `lower` and its server answers. `statfs` always goes to
    /// the server (attributes may be served from the kernel's cache long after it died).
    pub(crate) fn lower_healthy(lower: &Path) -> bool {
        Self::lower_state(lower, None) == LowerState::Serving
    }

    /// What is mounted at `lower`; with `want` (a view's name, see `lower_name`), whether a
    /// live view there serves that tree.
    fn lower_state(lower: &Path, want: Option<&str>) -> LowerState {
        match mount_at(lower) {
            Ok(Some(e)) if e.fstype.starts_with("fuse") => {
                if rustix::fs::statfs(lower).is_err() {
                    LowerState::Dead
                } else if want.is_none_or(|w| e.source == crate::mount::fsname(w)) {
                    LowerState::Serving
                } else {
                    LowerState::OtherBase
                }
            }
            Ok(Some(_)) => LowerState::Dead,
            _ => LowerState::Absent,
        }
    }

    pub(crate) fn up_locked(&self, m: &MachineRow) -> Result<UpReport> {
        let l = self.layout(m);
        let mut report = UpReport {
            name: m.name.clone(),
            at: m.dir.clone(),
            already_up: false,
            recovered: Vec::new(),
            phases: Vec::new(),
            reach: None,
            lower: "",
        };
        let overlay_up = self.is_up(m);
        if overlay_up && self.lower_ok(m) {
            report.already_up = true;
            report.reach = self
                .overlay_holder(m)
                .map(|h| crate::sandbox::path_from_host(&h, &m.dir));
            return Ok(report);
        }
        let t = Instant::now();
        if overlay_up {
            match self.overlay_holder(m) {
                Some(h) => {
                    self.stop_holder(m, &h)?;
                }
                None => detach(&m.dir)?,
            }
            report.recovered.push(format!(
                "the overlay at {} was over a lower layer whose server had stopped; it was \
                 detached (the upper layer, with every write, is kept)",
                m.dir.display()
            ));
        }
        let base = super::mounted::base_of_row(m)?;
        let want = lower_name(m, base.root);
        let mut serving = false;
        match Self::lower_state(&l.lower, Some(&want)) {
            LowerState::Absent => {}
            // A view of the current base whose overlay is gone (an interrupted command
            // started it, or the overlay was unmounted from outside) is as good as a new one.
            // (With the overlay up, a live view returned `already_up` above.)
            LowerState::Serving => {
                serving = true;
                report.recovered.push(format!(
                    "a view of the base was still served at {} without its overlay; it was kept",
                    l.lower.display()
                ));
            }
            state => {
                detach(&l.lower)?;
                report.recovered.push(format!(
                    "a stale view ({}) was mounted at {}; it was detached",
                    match state {
                        LowerState::OtherBase => "of another base",
                        _ => "whose server had stopped",
                    },
                    l.lower.display()
                ));
            }
        }
        if !report.recovered.is_empty() {
            report.phases.push(Phase::since("recover", t));
        }
        // `work/` is the overlay's scratch space, holding nothing of the machine: a command
        // killed while it reset it (after a rebase) leaves none, and the overlay will not
        // mount without one. The upper always exists here: a rebase replaces it by rename,
        // and one cut short is completed before up.
        for d in [&l.work, &l.lower] {
            std::fs::create_dir_all(d).map_err(|source| EngineError::Io {
                op: "create directory",
                path: d.clone(),
                source,
            })?;
        }
        if !l.upper.is_dir() {
            return Err(EngineError::Corrupt {
                what: format!("machine {}", m.name),
                reason: format!(
                    "its upper layer {} is missing, so its writes since the last checkpoint \
                     are gone; make an empty directory there to bring it up as of its base",
                    l.upper.display()
                ),
            });
        }
        let t = Instant::now();
        let image = (self.lower_images && !crate::sandbox::rootless())
            .then(|| self.lower_image(base.root))
            .flatten();
        if let Some(image) = image
            && self.mount_over_image(m, &l, base.root, &image, serving)?
        {
            report.phases.push(Phase::since("overlay", t));
            report.lower = "image";
            return Ok(report);
        }
        report.lower = "view";
        if !serving {
            let t = Instant::now();
            self.start_lower(m, base.root, &l.lower)?;
            report.phases.push(Phase::since("lower", t));
        }
        let t = Instant::now();
        std::fs::create_dir_all(&m.dir).map_err(|source| EngineError::Io {
            op: "create the mountpoint",
            path: m.dir.clone(),
            source,
        })?;
        let mounted = if crate::sandbox::rootless() {
            self.start_holder(m).map(|h| {
                report.reach = Some(crate::sandbox::path_from_host(&h, &m.dir));
            })
        } else {
            let data = self.data_layer();
            data.create().map_err(|source| EngineError::Io {
                op: "create directory",
                path: data.dir().to_owned(),
                source,
            })?;
            let opts = super::rootless::overlay_options(&l, false, Some(data.dir()));
            super::rootless::mount_overlay(&m.dir, "overlay", &opts)
                .or_else(|e| {
                    // Data-only layers need Linux 6.5; without, the view's attributes go unused.
                    let plain = super::rootless::overlay_options(&l, false, None);
                    tracing::info!("overlay with a data layer refused ({e}); mounting without");
                    super::rootless::mount_overlay(&m.dir, "overlay", &plain).map_err(|_| e)
                })
                .map_err(|e| {
                    EngineError::Invalid(format!(
                        "could not mount the overlay at {} ({e}); overlayfs needs root (or a user \
                     namespace) and a kernel with overlay support; options were {opts}",
                        m.dir.display()
                    ))
                })
        };
        if let Err(e) = mounted {
            // The view can die between answering and the overlay's mount (its server was
            // killed): then overlayfs is not what failed, and up again is the cure.
            let lower_died = !Self::lower_healthy(&l.lower);
            let _ = self.stop_lower(m, &l.lower);
            if lower_died {
                return Err(EngineError::Invalid(format!(
                    "the view server of {}'s lower layer stopped before the overlay could be \
                     mounted at {} ({e}); nothing is lost: `cairn machine up {}` starts it \
                     again (its log is {})",
                    m.name,
                    m.dir.display(),
                    m.name,
                    l.state.join("lower.log").display()
                )));
            }
            return Err(e);
        }
        report.phases.push(Phase::since("overlay", t));
        Ok(report)
    }

    pub(crate) fn down_locked(&self, m: &MachineRow) -> Result<DownReport> {
        self.take_down(m, |_, m| unmount_overlay(m))
    }

    /// `down_locked` before a rebase, whose undo point already holds the old upper durably:
    /// the overlay is detached and its last reference dropped by a background process once
    /// the restore is done (`let_go_released`), so the flush of the host's file system that
    /// comes with an overlay's end does not hold up the restore. Refused as busy as
    /// `down_locked` is.
    pub(crate) fn down_for_rebase(&self, m: &MachineRow) -> Result<DownReport> {
        self.take_down(m, Repo::release_overlay)
    }

    fn take_down(
        &self,
        m: &MachineRow,
        unmount: fn(&Repo, &MachineRow) -> Result<()>,
    ) -> Result<DownReport> {
        let l = self.layout(m);
        let mut report = DownReport {
            name: m.name.clone(),
            was_up: self.is_up(m),
            phases: Vec::new(),
        };
        let t = Instant::now();
        if report.was_up {
            // A machine going down takes its processes with it, as a host's shutdown does.
            if self.kill_machine_processes(m)? > 0 {
                report.phases.push(Phase::since("stop processes", t));
            }
            let t = Instant::now();
            match self.overlay_holder(m) {
                Some(h) => {
                    self.stop_holder(m, &h)?;
                }
                // Without root the overlay lives in its holder's namespace: a holder that died
                // since `is_up` took the overlay with it, and nothing is left to unmount.
                None if crate::sandbox::rootless() => {}
                None => unmount(self, m)?,
            }
            report.phases.push(Phase::since("overlay", t));
        }
        let t = Instant::now();
        self.stop_lower(m, &l.lower)?;
        report.phases.push(Phase::since("lower", t));
        Ok(report)
    }

    /// True when the overlay at the machine's mountpoint stands on a lower that answers: a
    /// live view, or a lower image that is still there.
    pub(crate) fn lower_ok(&self, m: &MachineRow) -> bool {
        match mount_at(&m.dir) {
            Ok(Some(e)) if e.source.starts_with(IMAGE_SOURCE) => {
                let tree = &e.source[IMAGE_SOURCE.len()..];
                self.images_dir().join(tree).is_dir()
            }
            _ => Self::lower_healthy(&self.layout(m).lower),
        }
    }

    /// Mounts the overlay over the base's lower image (no server needed); a view of the base
    /// still served (`serving`) is stopped first. False when overlayfs refuses the image
    /// (the caller then serves a view).
    fn mount_over_image(
        &self,
        m: &MachineRow,
        l: &super::mounted::Layout,
        root: crate::model::TreeId,
        image: &Path,
        serving: bool,
    ) -> Result<bool> {
        if serving {
            self.stop_lower(m, &l.lower)?;
        }
        std::fs::create_dir_all(&m.dir).map_err(|source| EngineError::Io {
            op: "create the mountpoint",
            path: m.dir.clone(),
            source,
        })?;
        let data = self.data_layer();
        let opts = super::rootless::overlay_options_over(l, image, false, Some(data.dir()));
        let source = format!("{IMAGE_SOURCE}{}", root.to_hex());
        match super::rootless::mount_overlay(&m.dir, &source, &opts) {
            Ok(()) => {
                self.note_image_used(root);
                Ok(true)
            }
            Err(e) => {
                tracing::info!("overlay over the lower image refused ({e}); serving a view");
                Ok(false)
            }
        }
    }

    /// Starts serving `root` at `lower` and returns once the view answers.
    fn start_lower(&self, m: &MachineRow, root: crate::model::TreeId, lower: &Path) -> Result<()> {
        std::fs::create_dir_all(lower).map_err(|source| EngineError::Io {
            op: "create directory",
            path: lower.to_owned(),
            source,
        })?;
        match &self.lower_server {
            LowerServer::InProcess => {
                let view = self.mount_tree(
                    root,
                    &[],
                    &lower_name(m, root),
                    lower,
                    &self.lower_options(),
                )?;
                lock(&self.views).insert(m.uid.clone(), view);
                Ok(())
            }
            LowerServer::Process(_) => {
                let log_path = self.layout(m).state.join("lower.log");
                let log = super::rootless::log_file(&log_path)?;
                let out = log.try_clone().map_err(|source| EngineError::Io {
                    op: "open",
                    path: log_path.clone(),
                    source,
                })?;
                let mut child = self.spawn_cairn(
                    &["serve-lower", &m.name],
                    std::process::Stdio::null(),
                    out.into(),
                    log.into(),
                )?;
                let want = lower_name(m, root);
                super::rootless::wait_started(
                    &mut child,
                    &m.name,
                    "the lower layer server",
                    "mounted its view",
                    &log_path,
                    SERVER_START,
                    || {
                        match Self::lower_state(lower, Some(&want)) {
                            // Ours, or one an interrupted command started for the same base.
                            LowerState::Serving => return Ok(Some(())),
                            // A server an interrupted command started before the last rebase,
                            // mounting late: ours waits for it (`lock_lower_server`), so it
                            // goes.
                            LowerState::OtherBase => {
                                tracing::info!(
                                    "detaching a late view of another base at {}",
                                    lower.display()
                                );
                                detach(lower)?;
                            }
                            LowerState::Absent | LowerState::Dead => {}
                        }
                        Ok(None)
                    },
                )
            }
        }
    }

    /// Unmounts the view at `lower` (its server then exits) and waits for in-process threads.
    fn stop_lower(&self, m: &MachineRow, lower: &Path) -> Result<()> {
        let held = lock(&self.views).remove(&m.uid);
        if mount_at(lower).map_err(EngineError::from)?.is_some() {
            crate::mount::unmount(lower).map_err(EngineError::from)?;
        }
        if let Some(mut view) = held {
            if lock(&self.released).is_empty() {
                view.join()?;
            } else {
                // An overlay released here may still read through it (its private copy of
                // the mount outlives the unmount): it ends with that overlay.
                lock(&self.retired).push(view);
            }
        }
        // A detached server ends after its unmount (at once, or once it sees its view gone
        // from the mount table, `serve_lower`), and holds the lower lock until then: so the
        // machine is down only when nothing serves it.
        if matches!(self.lower_server, LowerServer::Process(_)) {
            let _ = self.lock_lower_server(&m.uid, LOWER_LOCK_WAIT)?;
        }
        Ok(())
    }

    /// Serves a machine's base at its `lower/` until the view is unmounted. This is what the
    /// detached server process started by `machine up` runs.
    ///
    /// It first waits for any other server of the machine to end, then reads the base: a
    /// server left by an interrupted command may have been started before a rebase.
    pub fn serve_lower(&self, name: &str) -> Result<()> {
        let m = self.mounted_row(name)?;
        let _serving = self.lock_lower_server(&m.uid, LOWER_LOCK_WAIT)?;
        let m = self.mounted_row(name)?;
        let base = super::mounted::base_of_row(&m)?;
        let lower = self.layout(&m).lower;
        let mut view = self.mount_tree(
            base.root,
            &[],
            &lower_name(&m, base.root),
            &lower,
            &self.lower_options(),
        )?;
        // A mount can leave the mount table and still not end: a user namespace made while it
        // was mounted (a machine run without root, see `rootless.rs`) holds a copy that no
        // unmount here reaches, and the server would serve that copy forever. So once the
        // view is gone from here, the server exits, and the kernel ends the connection, which
        // turns any copy into one that fails at once.
        let at = view.mountpoint().to_owned();
        let source = crate::mount::fsname(&lower_name(&m, base.root));
        std::thread::spawn(move || {
            watch_mount_table(|| {
                mount_at(&at)
                    .ok()
                    .flatten()
                    .is_some_and(|e| e.source == source)
            });
            tracing::info!("the view left the mount table; exiting");
            std::process::exit(0);
        });
        // Once the data layer holds the base's large files (the fill copies them first), its
        // image can replace this view at the machine's next up (restore, fork, rebase). Built
        // here, at idle priority, while the view serves and the fill goes on with the small
        // files; the exit above cuts it short when the view goes, leaving only a directory
        // under `tmp/` that gc sweeps.
        let filled = view.wait_large_filled();
        if filled.whole && self.lower_images {
            crate::mount::idle_priority();
            match self.build_lower_image(base.root) {
                Ok(r) if r.built => tracing::info!(
                    "lower image of {} built in {} ms ({} files, {} bytes kept whole)",
                    r.tree,
                    r.ms,
                    r.files,
                    r.bytes
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("could not build the lower image: {e}"),
            }
        }
        Ok(view.join()?)
    }
}

/// Returns once `present` is false, checking it whenever this process's mount table changes
/// (the kernel wakes a `poll` of `/proc/self/mountinfo` then) and at least every second.
fn watch_mount_table(present: impl Fn() -> bool) {
    use std::io::{Read, Seek};
    let mut table = std::fs::File::open("/proc/self/mountinfo").ok();
    let mut buf = Vec::new();
    while present() {
        let Some(f) = table.as_mut() else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(f),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, 1000) };
        // Reading the table again re-arms the notification.
        buf.clear();
        let _ = f.rewind().and_then(|()| f.read_to_end(&mut buf));
    }
}

/// How an overlay over a lower image is named in the mount table, before its tree's id.
const IMAGE_SOURCE: &str = "cairn-image:";

/// What is at a machine's `lower/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LowerState {
    Absent,
    /// A FUSE mount whose server no longer answers, or something else mounted there.
    Dead,
    /// A live view of the tree asked about (or of any tree, when none was named).
    Serving,
    /// A live view of another tree.
    OtherBase,
}

/// A lower view's name in the mount table: the machine and the whole id of the tree it
/// serves, so `machine up` can tell a view of the current base from an older one.
fn lower_name(m: &MachineRow, root: crate::model::TreeId) -> String {
    format!("{}@base.{}", m.name, root.to_hex())
}

impl Repo {
    /// A lower layer serves a machine: its setuid programs and device nodes must work, and
    /// as root it fills the data layer under the overlay. Without root, only the user's own
    /// processes use it (`fusermount3` would refuse the rest), and its root files are the
    /// user's (see `rootless.rs`).
    fn lower_options(&self) -> MountOptions {
        let ids = super::rootless::namespace_ids();
        // The overlay above reads its own attributes under this prefix (see `upper.rs`).
        let overlay_prefix = if ids.is_none() {
            super::upper::TRUSTED_PREFIX
        } else {
            super::upper::USER_PREFIX
        };
        MountOptions {
            allow_other: ids.is_none(),
            devices_and_setuid: ids.is_none(),
            data: ids.is_none().then(|| self.data_layer()),
            overlay_prefix: Some(overlay_prefix),
            ids,
            ..MountOptions::default()
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Unmounts a root machine's overlay, waiting for everything that comes with it.
fn unmount_overlay(m: &MachineRow) -> Result<()> {
    match rustix::mount::unmount(&m.dir, UnmountFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::BUSY) => Err(busy(m)),
        Err(e) => Err(could_not_unmount(m, e)),
    }
}

impl Repo {
    /// Lets the overlays released so far go: their background processes drop them now, and
    /// pay for the flush. (Dropping the repo does the same for whatever is left.)
    pub(crate) fn let_go_released(&self) {
        lock(&self.released).clear();
    }

    /// Unmounts a root machine's overlay, leaving its teardown to a background process that
    /// starts it once `let_go_released` runs or this repo is dropped.
    fn release_overlay(&self, m: &MachineRow) -> Result<()> {
        match crate::mount::release(&m.dir) {
            Ok(r) => {
                lock(&self.released).push(r);
                Ok(())
            }
            Err(crate::mount::ReleaseError::Busy) => Err(busy(m)),
            Err(crate::mount::ReleaseError::Os(e)) => Err(could_not_unmount(m, e)),
        }
    }
}

fn busy(m: &MachineRow) -> EngineError {
    EngineError::Invalid(format!(
        "machine {} is busy: a process has its working directory or an open file inside {}; \
         stop it and try again",
        m.name,
        m.dir.display()
    ))
}

fn could_not_unmount(m: &MachineRow, e: rustix::io::Errno) -> EngineError {
    EngineError::Invalid(format!("could not unmount {}: {e}", m.dir.display()))
}

pub(crate) fn detach(path: &Path) -> Result<()> {
    if crate::sandbox::rootless() {
        // Only a view can be in the host's mount table then, and only `fusermount3` may
        // unmount it.
        return crate::mount::detach(path)
            .map(|_| ())
            .map_err(EngineError::from);
    }
    rustix::mount::unmount(path, UnmountFlags::DETACH).map_err(|e| {
        EngineError::Invalid(format!(
            "could not detach the stale mount {}: {e}",
            path.display()
        ))
    })
}

/// Keeps in-process views alive for as long as the `Repo`.
pub(crate) type Views = std::sync::Mutex<std::collections::HashMap<String, MountedView>>;

#[cfg(test)]
impl Repo {
    /// READ requests the in-process lower view of machine `name` has served so far.
    pub(crate) fn lower_reads(&self, name: &str) -> u64 {
        let uid = self.machine_row(name).unwrap().uid;
        let views = lock(&self.views);
        views[&uid]
            .requests()
            .read
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}
