//! The sandbox's one error type. Each variant says what was wrong and what to do about it.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "no usable cgroup freezer: /proc/self/mountinfo shows neither a cgroup2 hierarchy with \
         cgroup.freeze nor a cgroup v1 freezer hierarchy; mount one \
         (`mount -t cgroup2 none /sys/fs/cgroup`) or use a kernel of 5.2 or later"
    )]
    NoFreezer,
    #[error("{name:?} cannot name a machine cgroup: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error(
        "{op} {}: permission denied; running a mounted machine's processes needs root",
        path.display()
    )]
    NotPermitted { op: &'static str, path: PathBuf },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the processes in {} did not all stop within {timeout:?} ({pids} still running); one is \
         probably blocked in the kernel, e.g. waiting on a FUSE request or a hung network \
         filesystem. The cgroup was thawed again; retry, or stop the machine's processes",
        path.display()
    )]
    FreezeTimeout {
        path: PathBuf,
        timeout: Duration,
        pids: usize,
    },
    #[error(
        "{} did not thaw within {timeout:?}; its processes may stay stopped: write 0 to its \
         cgroup.freeze (or THAWED to freezer.state) by hand",
        path.display()
    )]
    ThawTimeout { path: PathBuf, timeout: Duration },
    #[error(
        "{} still had processes {timeout:?} after they were sent SIGKILL (pids {pids:?}); they \
         are probably in uninterruptible sleep: look at /proc/PID/stack and retry",
        path.display()
    )]
    KillTimeout {
        path: PathBuf,
        timeout: Duration,
        pids: Vec<u32>,
    },
    #[error(
        "cgroup {} still has processes; stop the machine's processes first and retry",
        path.display()
    )]
    Busy { path: PathBuf },
    #[error(
        "bubblewrap (`bwrap`) was not found on PATH; mounted machines run their processes \
         through it: install it with `apt-get install bubblewrap`"
    )]
    BwrapMissing,
    #[error("{} cannot be a machine root: {reason}", path.display())]
    BadRoot { path: PathBuf, reason: String },
    #[error("bind {} -> {}: {reason}", host.display(), guest.display())]
    BadBind {
        host: PathBuf,
        guest: PathBuf,
        reason: String,
    },
    #[error("invalid run option: {0}")]
    BadOption(String),
    #[error(
        "could not start {} ({where_}): {source}",
        program.display()
    )]
    Spawn {
        program: PathBuf,
        /// The cgroup it was to join, or that it had none.
        where_: String,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for the sandboxed command: {0}")]
    Wait(#[source] std::io::Error),
}

impl SandboxError {
    /// An I/O error on a cgroup file, with EACCES/EPERM turned into the "needs root" message.
    pub(super) fn cgroup_io(op: &'static str, path: PathBuf, source: std::io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::EACCES | libc::EPERM) => SandboxError::NotPermitted { op, path },
            _ => SandboxError::Io { op, path, source },
        }
    }
}
