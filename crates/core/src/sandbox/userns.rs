//! Mounted machines without root: the machine's overlay lives in a user namespace in which the
//! calling user is root, with a mount namespace of its own, held open by one process (the
//! *holder*, see `engine/rootless.rs`).
//!
//! - The namespace maps the user's own uid and gid to 0 and, when the user has subordinate ids
//!   (`/etc/subuid`, `/etc/subgid`) and `newuidmap`/`newgidmap` are installed, ids 1–65535 to
//!   the first 65535 of them (`IdMap`). With the subordinate ids every owner works inside; with
//!   only the user's own, files of the base owned by anyone else show as the overflow id
//!   (`nobody`) inside and cannot be changed there.
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
    !crate::is_root()
}

fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> SandboxError {
    let path = path.into();
    move |source| SandboxError::Io { op, path, source }
}

/// One run of ids: `count` ids from `inside` in the namespace are `host`… on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub inside: u32,
    pub host: u32,
    pub count: u32,
}

/// The ids a machine's user namespace maps: its root is the user, and with subordinate ids,
/// 1–65535 are those.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdMap {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

/// Ids a namespace maps beside root: 1–65535, the ids of ordinary systems.
const SUBORDINATE: u32 = 65535;

impl IdMap {
    /// The map for `uid`/`gid`: with subordinate ids when both files grant a range of at least
    /// 65535 ids (by name or number) and both helpers are installed, else root alone.
    pub fn for_user(uid: u32, gid: u32) -> IdMap {
        let root = |id| IdRange {
            inside: 0,
            host: id,
            count: 1,
        };
        let mut map = IdMap {
            uids: vec![root(uid)],
            gids: vec![root(gid)],
        };
        let name = user_name(uid);
        let range = |file: &str| {
            let text = std::fs::read_to_string(file).ok()?;
            subordinate_range(&text, uid, name.as_deref())
        };
        if let (Some(su), Some(sg), true) = (
            range("/etc/subuid"),
            range("/etc/subgid"),
            helper("newuidmap").is_some() && helper("newgidmap").is_some(),
        ) {
            let sub = |host| IdRange {
                inside: 1,
                host,
                count: SUBORDINATE,
            };
            map.uids.push(sub(su));
            map.gids.push(sub(sg));
        }
        map
    }

    /// True when ids other than root are mapped, which only `newuidmap` can set up.
    pub fn is_full(&self) -> bool {
        self.uids.len() > 1
    }

    /// The host id of namespace id `id`, if mapped.
    pub fn host_uid(&self, id: u32) -> Option<u32> {
        to_host(&self.uids, id)
    }

    pub fn host_gid(&self, id: u32) -> Option<u32> {
        to_host(&self.gids, id)
    }

    /// The namespace id of host id `id`, if mapped.
    pub fn inside_uid(&self, id: u32) -> Option<u32> {
        to_inside(&self.uids, id)
    }

    pub fn inside_gid(&self, id: u32) -> Option<u32> {
        to_inside(&self.gids, id)
    }

    /// Writes the map of the user namespace of `pid` with `newuidmap` and `newgidmap`.
    pub fn apply_to(&self, pid: i32) -> Result<()> {
        for (helper_name, ranges) in [("newuidmap", &self.uids), ("newgidmap", &self.gids)] {
            let bin = helper(helper_name).ok_or_else(|| SandboxError::Io {
                op: "find",
                path: PathBuf::from(helper_name),
                source: std::io::ErrorKind::NotFound.into(),
            })?;
            let mut cmd = std::process::Command::new(&bin);
            cmd.arg(pid.to_string());
            for r in ranges {
                cmd.args([r.inside, r.host, r.count].map(|n| n.to_string()));
            }
            let out = cmd.output().map_err(io_err("run", &bin))?;
            if !out.status.success() {
                return Err(SandboxError::Io {
                    op: "map the machine's ids with",
                    path: bin,
                    source: std::io::Error::other(
                        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                    ),
                });
            }
        }
        Ok(())
    }
}

fn to_host(ranges: &[IdRange], id: u32) -> Option<u32> {
    ranges
        .iter()
        .find(|r| id >= r.inside && id - r.inside < r.count)
        .map(|r| r.host + (id - r.inside))
}

fn to_inside(ranges: &[IdRange], id: u32) -> Option<u32> {
    ranges
        .iter()
        .find(|r| id >= r.host && id - r.host < r.count)
        .map(|r| r.inside + (id - r.host))
}

/// The first range of at least `SUBORDINATE` ids granted to `uid` (or `name`) in a
/// `/etc/subuid`-style text of `who:start:count` lines.
fn subordinate_range(text: &str, uid: u32, name: Option<&str>) -> Option<u32> {
    text.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        let ours = who == uid.to_string() || Some(who) == name;
        let (start, count): (u32, u32) = (start.parse().ok()?, count.parse().ok()?);
        (ours && count >= SUBORDINATE && start.checked_add(SUBORDINATE).is_some()).then_some(start)
    })
}

/// The login name of `uid` in /etc/passwd.
fn user_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        (f.next()? == uid.to_string()).then(|| name.to_owned())
    })
}

/// A setuid helper from the `uidmap` package, found in PATH or /usr/bin.
fn helper(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Makes this process root of a new user namespace, with a new mount namespace owned by it.
/// The process must be single-threaded (the kernel refuses otherwise); it keeps every
/// capability inside the namespace and none outside. A map of root alone is written here; a
/// full one only another process can write (`IdMap::apply_to`), so `wait_for_map` is called
/// to wait for it.
pub fn unshare_as_root(map: &IdMap, wait_for_map: impl FnOnce() -> Result<()>) -> Result<()> {
    // SAFETY: unshare has no memory preconditions; it fails cleanly if threads exist.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(SandboxError::Io {
            op: "create a user namespace (unprivileged user namespaces may be disabled \
                 or limited: sysctl user.max_user_namespaces)",
            path: PathBuf::from("/proc/self/ns/user"),
            source: e,
        });
    }
    if map.is_full() {
        wait_for_map()?;
        // Root of the namespace now, but with the groups of the user: drop them, so that
        // files of those groups are not reachable through them inside.
        // SAFETY: setgroups with an empty list reads no memory.
        if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
            return Err(io_err(
                "drop the supplementary groups in",
                "/proc/self/ns/user",
            )(std::io::Error::last_os_error()));
        }
        return Ok(());
    }
    let (uid, gid) = (map.uids[0].host, map.gids[0].host);
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

/// True when `pid` is stopped (or gone, which is as still), or waits in `vfork` for a child
/// to exec or exit: the child is a member too, and while it is stopped the parent cannot
/// leave the system call (nor would SIGSTOP reach it there).
fn stopped(pid: i32) -> bool {
    match state(pid) {
        None | Some('T' | 't' | 'Z' | 'X') => true,
        Some('D') => std::fs::read_to_string(format!("/proc/{pid}/wchan"))
            .is_ok_and(|w| w.contains("vfork") || w.trim() == "kernel_clone"),
        Some(_) => false,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subordinate_range_is_found_by_name_or_number_and_must_be_big_enough() {
        let text = "alice:100000:65536\n1000:300000:65536\nbob:200000:1000\n";
        assert_eq!(subordinate_range(text, 5, Some("alice")), Some(100000));
        assert_eq!(subordinate_range(text, 1000, Some("carol")), Some(300000));
        assert_eq!(subordinate_range(text, 7, Some("bob")), None, "too few ids");
        assert_eq!(subordinate_range(text, 8, None), None);
        assert_eq!(
            subordinate_range("x:4294967295:65536\n", 9, Some("x")),
            None
        );
    }

    #[test]
    fn ids_map_both_ways_and_unmapped_ones_do_not() {
        let map = IdMap {
            uids: vec![
                IdRange {
                    inside: 0,
                    host: 1000,
                    count: 1,
                },
                IdRange {
                    inside: 1,
                    host: 100000,
                    count: SUBORDINATE,
                },
            ],
            gids: vec![IdRange {
                inside: 0,
                host: 1000,
                count: 1,
            }],
        };
        assert!(map.is_full());
        assert_eq!(map.host_uid(0), Some(1000));
        assert_eq!(map.host_uid(1), Some(100000));
        assert_eq!(map.host_uid(65535), Some(165534));
        assert_eq!(map.host_uid(65536), None);
        assert_eq!(map.inside_uid(100041), Some(42));
        assert_eq!(map.inside_uid(1000), Some(0));
        assert_eq!(map.inside_uid(5), None);
        assert_eq!(map.host_gid(1), None);
        assert_eq!(map.inside_gid(1000), Some(0));
    }
}
