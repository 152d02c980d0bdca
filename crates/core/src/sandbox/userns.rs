//! Mounted machines without root: the machine's overlay lives in a user namespace in which the
//! calling user is root, with a mount namespace of its own, held open by one process (the
//! *holder*, see `engine/rootless.rs`).
//!
//! - Only the calling user's own uid and gid are mapped, both to 0: the machine's root is the
//!   user on the host, and every file the machine writes is the user's. Files of the base owned
//!   by anyone else show as the overflow id (`nobody`) inside and cannot be changed there.
//! - Processes reach the machine by joining the holder's namespaces (`Namespaces::enter`,
//!   between fork and exec); they are found again by their user namespace (`Holder::members`).
//! - Without a cgroup the user may write, those members are stopped and continued by signals
//!   (`SignalFreeze`), and killed one by one.

use super::{Result, SandboxError};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// True when this process cannot mount in the host's mount namespace, so a mounted machine's
/// overlay must live in a user namespace of its own.
pub fn rootless() -> bool {
    !rustix::process::geteuid().is_root()
}

fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> SandboxError {
    let path = path.into();
    move |source| SandboxError::Io { op, path, source }
}

/// Makes this process root of a new user namespace that maps only its own uid and gid (to 0),
/// with a new mount namespace owned by it. The process must be single-threaded (the kernel
/// refuses otherwise); it keeps every capability inside the namespace and none outside.
pub fn unshare_as_root() -> Result<()> {
    let (uid, gid) = (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    // SAFETY: unshare has no memory preconditions; it fails cleanly if threads exist.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(SandboxError::Io {
            op: "create a user namespace (unprivileged user namespaces may be disabled: \
                 sysctl user.max_user_namespaces, kernel.apparmor_restrict_unprivileged_userns)",
            path: PathBuf::from("/proc/self/ns/user"),
            source: e,
        });
    }
    // gid_map may only be written once setgroups is denied (a user must not drop the groups
    // that deny it access).
    for (file, text) in [
        ("/proc/self/setgroups", "deny".to_owned()),
        ("/proc/self/uid_map", format!("0 {uid} 1")),
        ("/proc/self/gid_map", format!("0 {gid} 1")),
    ] {
        std::fs::write(file, text).map_err(io_err("write", file))?;
    }
    Ok(())
}

/// A process that holds a machine's namespaces.
#[derive(Clone, Debug)]
pub struct Holder {
    pid: i32,
    /// `/proc/PID/ns/user` as a link target, `user:[INODE]`: the namespace's identity.
    userns: PathBuf,
}

impl Holder {
    /// The process `pid` if it lives in a user namespace other than this process's.
    pub fn of_pid(pid: i32) -> Option<Holder> {
        let userns = std::fs::read_link(format!("/proc/{pid}/ns/user")).ok()?;
        let own = std::fs::read_link("/proc/self/ns/user").ok()?;
        (userns != own).then_some(Holder { pid, userns })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The holder's mount table, as `/proc/self/mountinfo` shows this process its own.
    pub fn mountinfo(&self) -> Option<Vec<u8>> {
        std::fs::read(format!("/proc/{}/mountinfo", self.pid)).ok()
    }

    /// Opens the holder's user and mount namespaces, for a child to join before exec.
    pub fn namespaces(&self) -> Result<Namespaces> {
        let open = |ns: &str| {
            let p = format!("/proc/{}/ns/{ns}", self.pid);
            std::fs::File::open(&p)
                .map(OwnedFd::from)
                .map_err(io_err("open", p))
        };
        Ok(Namespaces {
            user: open("user")?,
            mnt: open("mnt")?,
        })
    }

    /// Every process in the holder's user namespace except the holder itself: the machine's
    /// processes, which joined it through `Namespaces::enter`.
    pub fn members(&self) -> Vec<i32> {
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != self.pid)
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/ns/user")).is_ok_and(|l| l == self.userns)
            })
            .filter(|&pid| !matches!(state(pid), None | Some('Z' | 'X')))
            .collect()
    }

    /// SIGKILLs every member until none is left, and returns how many there were.
    pub fn kill_members(&self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut killed = std::collections::BTreeSet::new();
        loop {
            let left = self.members();
            if left.is_empty() {
                return Ok(killed.len());
            }
            for pid in left.iter().copied() {
                signal(pid, rustix::process::Signal::KILL)?;
                killed.insert(pid);
            }
            if Instant::now() >= deadline {
                return Err(SandboxError::KillTimeout {
                    path: self.userns.clone(),
                    timeout,
                    pids: left.iter().map(|&p| p as u32).collect(),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILLs the members, then the holder, and waits until the holder is gone: its mount
    /// namespace, and the overlay in it, end with it.
    pub fn stop(&self, timeout: Duration) -> Result<usize> {
        let killed = self.kill_members(timeout)?;
        signal(self.pid, rustix::process::Signal::KILL)?;
        let deadline = Instant::now() + timeout;
        // Gone once it is a zombie: its namespaces ended when it exited, whenever its new
        // parent gets round to reaping it.
        while Holder::of_pid(self.pid).is_some_and(|h| h.userns == self.userns)
            && !matches!(state(self.pid), None | Some('Z' | 'X'))
        {
            if Instant::now() >= deadline {
                return Err(SandboxError::KillTimeout {
                    path: self.userns.clone(),
                    timeout,
                    pids: vec![self.pid as u32],
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(killed)
    }

    /// Stops every member with SIGSTOP and returns once all are stopped. Stopped processes
    /// cannot fork, so a member list that holds only stopped processes is complete.
    pub fn freeze_members(&self, timeout: Duration) -> Result<SignalFreeze> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut frozen = SignalFreeze {
            pids: Vec::new(),
            took: Duration::ZERO,
        };
        loop {
            let members = self.members();
            let running: Vec<i32> = members.iter().copied().filter(|&p| !stopped(p)).collect();
            if running.is_empty() {
                frozen.pids = members;
                frozen.took = start.elapsed();
                return Ok(frozen);
            }
            for &pid in &running {
                signal(pid, rustix::process::Signal::STOP)?;
            }
            frozen.pids = members;
            if Instant::now() >= deadline {
                let pids = running.len();
                drop(frozen);
                return Err(SandboxError::FreezeTimeout {
                    path: self.userns.clone(),
                    timeout,
                    pids,
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// True when `pid` is stopped (or gone, which is as still).
fn stopped(pid: i32) -> bool {
    matches!(state(pid), None | Some('T' | 't' | 'Z' | 'X'))
}

/// The state letter of `pid` (`R`, `S`, `T`, `Z`…), or None once it is gone.
fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) STATE ...: comm may hold spaces and parentheses, so split after the last ')'.
    let i = stat.rfind(')')?;
    stat[i + 1..].trim_start().chars().next()
}

fn signal(pid: i32, sig: rustix::process::Signal) -> Result<()> {
    let Some(p) = rustix::process::Pid::from_raw(pid) else {
        return Ok(());
    };
    match rustix::process::kill_process(p, sig) {
        // Gone already: it exited between the listing and the signal.
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(SandboxError::Io {
            op: "signal",
            path: PathBuf::from(format!("/proc/{pid}")),
            source: e.into(),
        }),
    }
}

/// Members stopped by `Holder::freeze_members`; continued when dropped.
#[derive(Debug)]
pub struct SignalFreeze {
    pids: Vec<i32>,
    pub took: Duration,
}

impl Drop for SignalFreeze {
    fn drop(&mut self) {
        for &pid in &self.pids {
            let _ = signal(pid, rustix::process::Signal::CONT);
        }
    }
}

/// A holder's user and mount namespaces, opened before a fork.
#[derive(Debug)]
pub struct Namespaces {
    user: OwnedFd,
    mnt: OwnedFd,
}

impl Namespaces {
    /// Joins the user namespace, then the mount namespace (which resets the root and working
    /// directory to the namespace's). For the child between fork and exec: it makes only
    /// async-signal-safe system calls, and the process must be single-threaded.
    pub(super) fn enter(&self) -> std::io::Result<()> {
        for (fd, kind) in [
            (self.user.as_raw_fd(), libc::CLONE_NEWUSER),
            (self.mnt.as_raw_fd(), libc::CLONE_NEWNS),
        ] {
            // SAFETY: setns is async-signal-safe and takes a valid open namespace fd.
            if unsafe { libc::setns(fd, kind) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Where a process outside the namespace reaches `path` as the holder sees it.
pub fn path_from_host(holder: &Holder, path: &Path) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/{}/root", holder.pid));
    p.push(path.strip_prefix("/").unwrap_or(path));
    p
}
