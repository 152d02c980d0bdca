//! Mounted machines without root.
//!
//! The view of the base is mounted as for root, through `fusermount3`, at `lower/` in the
//! host's mount table, with the tree's root showing as the user (`MountOptions::root_owner`).
//! The overlay cannot be mounted there: only a user namespace lets an ordinary user mount one.
//! So `machine up` starts a second detached process, the *holder*
//! (`machine hold-overlay NAME`), which becomes root of a user namespace of its own
//! (`sandbox::unshare_as_root`), mounts the overlay at the machine's path in its new mount
//! namespace (`userxattr`: overlayfs keeps its own attributes as `user.overlay.*`), records its
//! pid in `overlay.pid` and sleeps.
//!
//! - The machine is up while that pid's mount table has an overlay at the machine's path.
//! - `run` and `shell` join the holder's namespaces before bubblewrap starts.
//! - `machine down` kills the processes in the holder's user namespace, then the holder, and
//!   its mount namespace and overlay end with it. No stale overlay can outlive it in the
//!   host's mount table, because none was ever there.
//! - The upper layer is an ordinary directory of the user's: what the machine's root writes is
//!   the user's own on the host, and a checkpoint records it as root's (`UpperBase::owner`).

use super::mounted::Layout;
use super::{EngineError, LowerServer, Repo, Result};
use crate::catalog::MachineRow;
use crate::sandbox::Holder;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a starting holder may take to mount the overlay.
const HOLDER_START: Duration = Duration::from_secs(20);

/// How long the machine's processes and the holder get to die.
const HOLDER_STOP: Duration = Duration::from_secs(10);

/// The host ids that are root inside a machine this process runs without root.
pub(crate) fn namespace_root() -> Option<(u32, u32)> {
    crate::sandbox::rootless().then(|| {
        (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        )
    })
}

/// The overlay's mount options. `user`: mounted in a user namespace, where overlayfs keeps
/// its attributes (whiteouts, opaque directories) as `user.overlay.*`, and accepts only
/// `nofollow` for redirects (none is ever made either way).
pub(crate) fn overlay_options(l: &Layout, user: bool) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir={},metacopy=off,index=off,xino=off{}",
        escape_opt(&l.lower),
        escape_opt(&l.upper),
        escape_opt(&l.work),
        if user { "nofollow" } else { "off" },
        if user { ",userxattr" } else { "" }
    )
}

/// Overlay options are comma-separated and `:` separates lower layers; escape both.
fn escape_opt(p: &Path) -> String {
    let s = p.display().to_string();
    s.replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace(':', "\\:")
}

/// Mounts an overlay with `opts` at `at`.
pub(crate) fn mount_overlay(at: &Path, opts: &str) -> Result<(), rustix::io::Errno> {
    let opts = std::ffi::CString::new(opts).map_err(|_| rustix::io::Errno::INVAL)?;
    rustix::mount::mount(
        "overlay",
        at,
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(opts.as_c_str()),
    )
}

impl Repo {
    fn pid_file(&self, m: &MachineRow) -> PathBuf {
        self.layout(m).state.join("overlay.pid")
    }

    /// The holder of the machine's overlay, when one is alive with the overlay mounted.
    pub(crate) fn overlay_holder(&self, m: &MachineRow) -> Option<Holder> {
        let pid = std::fs::read_to_string(self.pid_file(m)).ok()?;
        let holder = Holder::of_pid(pid.trim().parse().ok()?)?;
        let at = crate::mount::mount_in(&holder.mountinfo()?, &m.dir)?;
        (at.fstype == "overlay").then_some(holder)
    }

    /// Starts the holder and returns once its overlay is mounted.
    pub(crate) fn start_holder(&self, m: &MachineRow) -> Result<Holder> {
        let LowerServer::Process(argv) = &self.lower_server else {
            return Err(EngineError::Invalid(
                "a mounted machine runs without root only from the cairn command, whose holder \
                 process keeps its overlay mounted"
                    .to_owned(),
            ));
        };
        let pid_file = self.pid_file(m);
        let _ = std::fs::remove_file(&pid_file);
        let log_path = self.layout(m).state.join("overlay.log");
        let mut child = spawn_detached(argv, "hold-overlay", &m.name, &log_path)?;
        let deadline = Instant::now() + HOLDER_START;
        loop {
            if let Some(h) = self.overlay_holder(m)
                && h.pid() as u32 == child.id()
            {
                return Ok(h);
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(EngineError::Invalid(format!(
                    "the process holding {}'s overlay exited ({status}) before the overlay was \
                     mounted: {}; nothing is lost: `cairn machine up {}` starts it again",
                    m.name,
                    log.trim(),
                    m.name
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(EngineError::Invalid(format!(
                    "the overlay of {} was not mounted within {}s; see {}",
                    m.name,
                    HOLDER_START.as_secs(),
                    log_path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Kills the machine's processes and its holder; returns how many processes there were.
    pub(crate) fn stop_holder(&self, m: &MachineRow, holder: &Holder) -> Result<usize> {
        let killed = holder.stop(HOLDER_STOP)?;
        let _ = std::fs::remove_file(self.pid_file(m));
        Ok(killed)
    }

    /// The holder's body (`machine hold-overlay NAME`): a user namespace of its own, the
    /// overlay in it, then sleep until killed. Must run single-threaded.
    pub fn hold_overlay(&self, name: &str) -> Result<()> {
        let m = self.machine_row(name)?;
        let l = self.layout(&m);
        crate::sandbox::unshare_as_root()?;
        let opts = overlay_options(&l, true);
        mount_overlay(&m.dir, &opts).map_err(|e| {
            EngineError::Invalid(format!(
                "could not mount the overlay at {} in a user namespace ({e}); this needs a \
                 kernel of 5.11 or later; options were {opts}",
                m.dir.display()
            ))
        })?;
        let pid_file = self.pid_file(&m);
        let tmp = pid_file.with_extension("pid.tmp");
        std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, &pid_file))
            .map_err(|source| EngineError::Io {
                op: "write",
                path: pid_file.clone(),
                source,
            })?;
        loop {
            // SAFETY: pause has no preconditions; it returns only when a signal is caught.
            unsafe { libc::pause() };
        }
    }
}

/// Starts `argv machine VERB name` in its own process group (a Ctrl-C meant for the command
/// that started it must not take the machine down with it), logging to `log_path`.
pub(crate) fn spawn_detached(
    argv: &[std::ffi::OsString],
    verb: &str,
    name: &str,
    log_path: &Path,
) -> Result<std::process::Child> {
    let io = |op, source| EngineError::Io {
        op,
        path: log_path.to_owned(),
        source,
    };
    let log = std::fs::File::create(log_path).map_err(|e| io("create", e))?;
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| EngineError::Invalid("no cairn command to start".to_owned()))?;
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args)
        .args(["machine", verb, name])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| io("open", e))?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn().map_err(|source| EngineError::Io {
        op: "start",
        path: PathBuf::from(prog),
        source,
    })
}

/// Removes `path` and everything below it, as `remove_dir_all`, and also where the machine's
/// root made a directory unwritable or unsearchable: without root, the user can remove only
/// what the directory modes let them, so directories they own are opened up first. Best
/// effort: what stays is reported by the caller's next sweep, never fatal.
pub(crate) fn remove_tree(path: &Path) {
    if std::fs::remove_dir_all(path).is_ok() || !path.exists() {
        return;
    }
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        if let Ok(rd) = std::fs::read_dir(&dir) {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    if let Err(e) = std::fs::remove_dir_all(path) {
        tracing::warn!("could not remove {}: {e}", path.display());
    }
}
