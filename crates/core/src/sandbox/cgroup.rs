//! One cgroup per machine, `cairn/<name>`: freezing its processes while a checkpoint is taken
//! and killing them all before a restore.
//!
//! cgroup v2 is used when its hierarchy has `cgroup.freeze` (kernel 5.2+); otherwise the v1
//! freezer hierarchy. Where the hierarchies are mounted is read from /proc/self/mountinfo: a
//! hybrid host mounts v2 at /sys/fs/cgroup/unified, a pure v2 host at /sys/fs/cgroup.

use super::{Result, SandboxError};
use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long `freeze` callers usually wait: a freeze takes milliseconds unless a process is stuck
/// in the kernel, and then waiting longer rarely helps.
pub const DEFAULT_FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// Thawing only clears a flag; if the kernel has not reported it within this, something is wrong.
const THAW_TIMEOUT: Duration = Duration::from_secs(5);

/// The directory under each hierarchy's root that holds one cgroup per machine.
const PARENT: &str = "cairn";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Flavor {
    /// Unified hierarchy: `cgroup.freeze`, `cgroup.events`, and `cgroup.kill` on 5.14+.
    V2,
    /// The legacy freezer controller: `freezer.state`, no notifications, no `cgroup.kill`.
    V1Freezer,
}

/// A machine's cgroup. Creating the handle does not touch the processes in it; dropping it
/// leaves the cgroup (and any processes) as they are.
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
    flavor: Flavor,
    has_kill: bool,
}

/// What `kill_all` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KillReport {
    /// Processes that were in the cgroup when the kill started.
    pub killed: usize,
    /// From the first signal until the cgroup was empty.
    pub took: Duration,
}

/// Keeps a cgroup frozen while it lives; thaws it when dropped, so an early return or a panic
/// during a checkpoint never leaves a machine stopped.
#[must_use = "the cgroup is thawed as soon as the guard is dropped"]
pub struct FreezeGuard<'a> {
    cgroup: &'a Cgroup,
    took: Duration,
    armed: bool,
}

impl FreezeGuard<'_> {
    /// How long the freeze took.
    pub fn took(&self) -> Duration {
        self.took
    }

    /// Thaws now and reports an error, which dropping the guard can only log.
    pub fn thaw(mut self) -> Result<()> {
        self.armed = false;
        self.cgroup.thaw()
    }
}

impl Drop for FreezeGuard<'_> {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = self.cgroup.thaw()
        {
            tracing::warn!("thawing {}: {e}", self.cgroup.dir.display());
        }
    }
}

/// Where the hierarchies that can freeze are mounted.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct CgroupMounts {
    pub v2: Option<PathBuf>,
    pub v1_freezer: Option<PathBuf>,
}

/// Parses /proc/self/mountinfo: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [TAGS...] - FSTYPE
/// SOURCE SUPEROPTS`. The first mount of each kind wins; later ones are bind mounts of it.
pub(super) fn parse_mountinfo(text: &str) -> CgroupMounts {
    let mut mounts = CgroupMounts::default();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let mut right = right.split(' ');
        let (fstype, superopts) = (right.next(), right.nth(1).unwrap_or(""));
        let slot = match fstype {
            Some("cgroup2") => &mut mounts.v2,
            Some("cgroup") if superopts.split(',').any(|o| o == "freezer") => {
                &mut mounts.v1_freezer
            }
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(PathBuf::from(unescape_mountinfo(mount_point)));
        }
    }
    mounts
}

/// mountinfo writes space, tab, newline and backslash in paths as `\NNN` octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        let byte = octal.and_then(|d| {
            let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            u8::try_from(v).ok()
        });
        if let (b'\\', Some(byte)) = (b[i], byte) {
            out.push(byte);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Machine names are already `[A-Za-z0-9._-]`; this keeps the cgroup path one safe component
/// that cannot collide with the kernel's own `cgroup.*` files.
fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(SandboxError::BadName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 200 {
        return bad("it must be 1 to 200 bytes long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return bad("only letters, digits, `.`, `_` and `-` are allowed");
    }
    if name.starts_with('.') || name.starts_with("cgroup.") {
        return bad("it must not start with `.` or `cgroup.`");
    }
    Ok(())
}

fn mkdir_if_missing(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => {
            Err(SandboxError::cgroup_io("create cgroup", path.to_owned(), e))
        }
        _ => Ok(()),
    }
}

impl Cgroup {
    /// Opens the machine's cgroup, creating it (and `cairn/`) if missing. A cgroup left by an
    /// earlier cairn process is reused as it is, including its freeze state: a caller that holds
    /// the machine lock and finds `is_frozen()` after a crash should `thaw()` before running
    /// anything, because a process that joins a frozen cgroup stops at once.
    pub fn open_or_create(name: &str) -> Result<Cgroup> {
        validate_name(name)?;
        let info = "/proc/self/mountinfo";
        let text = fs::read_to_string(info).map_err(|source| SandboxError::Io {
            op: "read",
            path: info.into(),
            source,
        })?;
        let mounts = parse_mountinfo(&text);
        if let Some(v2) = mounts.v2 {
            let parent = v2.join(PARENT);
            mkdir_if_missing(&parent)?;
            // The root cgroup has no cgroup.freeze, so ask a child: it has one on 5.2+.
            if parent.join("cgroup.freeze").exists() {
                return Self::open_at(Flavor::V2, &parent, name);
            }
        }
        if let Some(v1) = mounts.v1_freezer {
            let parent = v1.join(PARENT);
            mkdir_if_missing(&parent)?;
            return Self::open_at(Flavor::V1Freezer, &parent, name);
        }
        Err(SandboxError::NoFreezer)
    }

    /// Opens or creates `parent/name` as a cgroup of the given flavor.
    pub(super) fn open_at(flavor: Flavor, parent: &Path, name: &str) -> Result<Cgroup> {
        validate_name(name)?;
        let dir = parent.join(name);
        mkdir_if_missing(&dir)?;
        let has_kill = flavor == Flavor::V2 && dir.join("cgroup.kill").exists();
        Ok(Cgroup {
            dir,
            flavor,
            has_kill,
        })
    }

    /// Makes the handle behave as on a kernel without `cgroup.kill` (before 5.14), to test the
    /// signal-by-signal path.
    #[cfg(test)]
    pub(super) fn forget_cgroup_kill(&mut self) {
        self.has_kill = false;
    }

    /// The cgroup's directory in the cgroup filesystem.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file a process writes `0` to in order to join; used before exec (see `bwrap`).
    pub(super) fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// The processes (thread group ids, as host pids) in the cgroup now.
    pub fn pids(&self) -> Result<Vec<u32>> {
        let text = self.read("cgroup.procs")?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// True when no process is left in the cgroup. Exited processes that their parent has not
    /// reaped yet no longer count.
    pub fn is_empty(&self) -> Result<bool> {
        match self.flavor {
            Flavor::V2 => {
                Ok(events_value(self.read("cgroup.events")?.as_bytes(), "populated") == Some(0))
            }
            Flavor::V1Freezer => Ok(self.pids()?.is_empty()),
        }
    }

    /// True when a freeze was requested and not undone, whether or not it has completed.
    pub fn is_frozen(&self) -> Result<bool> {
        match self.flavor {
            Flavor::V2 => Ok(self.read("cgroup.freeze")?.trim() == "1"),
            Flavor::V1Freezer => Ok(self.read("freezer.state")?.trim() != "THAWED"),
        }
    }

    /// Stops every process in the cgroup and returns once the kernel reports all of them
    /// stopped, with how long that took. A stopped process is outside any system call it was
    /// making, so each write it issued has either happened or not started. Processes that join
    /// or are forked while frozen are frozen too. If the freeze does not complete within
    /// `timeout` the cgroup is thawed again and `FreezeTimeout` returned.
    pub fn freeze(&self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let deadline = start + timeout;
        let done = match self.flavor {
            Flavor::V2 => {
                self.write("cgroup.freeze", "1")?;
                self.wait_v2("frozen", 1, deadline)?
            }
            Flavor::V1Freezer => loop {
                // Writing FROZEN again makes the kernel retry tasks it could not freeze yet,
                // such as ones forked after the previous write.
                self.write("freezer.state", "FROZEN")?;
                if self.read("freezer.state")?.trim() == "FROZEN" {
                    break true;
                }
                if Instant::now() >= deadline {
                    break false;
                }
                backoff_sleep(start);
            },
        };
        if !done {
            let pids = self.pids().map(|p| p.len()).unwrap_or(0);
            self.thaw()?;
            return Err(SandboxError::FreezeTimeout {
                path: self.dir.clone(),
                timeout,
                pids,
            });
        }
        Ok(start.elapsed())
    }

    /// `freeze`, returning a guard that thaws when dropped.
    pub fn freeze_guard(&self, timeout: Duration) -> Result<FreezeGuard<'_>> {
        let took = self.freeze(timeout)?;
        Ok(FreezeGuard {
            cgroup: self,
            took,
            armed: true,
        })
    }

    /// Lets the processes run again. Thawing a cgroup that is not frozen does nothing.
    pub fn thaw(&self) -> Result<()> {
        let start = Instant::now();
        let deadline = start + THAW_TIMEOUT;
        let done = match self.flavor {
            Flavor::V2 => {
                self.write("cgroup.freeze", "0")?;
                self.wait_v2("frozen", 0, deadline)?
            }
            Flavor::V1Freezer => {
                self.write("freezer.state", "THAWED")?;
                loop {
                    if self.read("freezer.state")?.trim() == "THAWED" {
                        break true;
                    }
                    if Instant::now() >= deadline {
                        break false;
                    }
                    backoff_sleep(start);
                }
            }
        };
        if !done {
            return Err(SandboxError::ThawTimeout {
                path: self.dir.clone(),
                timeout: THAW_TIMEOUT,
            });
        }
        Ok(())
    }

    /// Kills every process in the cgroup with SIGKILL and waits until it is empty. Works on a
    /// frozen cgroup, and leaves the cgroup thawed: a frozen empty cgroup would stop the next
    /// process that joins.
    pub fn kill_all(&self, timeout: Duration) -> Result<KillReport> {
        let start = Instant::now();
        let deadline = start + timeout;
        let killed = self.pids()?.len();
        if self.has_kill {
            // One write signals every process, including ones forked meanwhile; frozen ones die.
            self.write("cgroup.kill", "1")?;
            if !self.wait_v2("populated", 0, deadline)? {
                return Err(self.kill_timeout(timeout));
            }
        } else {
            loop {
                // Frozen processes can neither fork nor exit, so the pid list read while frozen
                // is complete and no pid in it can have been reused. A freeze that times out (a
                // process stuck in the kernel) must not stop the kill, so its error is dropped.
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = self.freeze(left.min(Duration::from_secs(1)));
                for pid in self.pids()? {
                    kill(pid)?;
                }
                // A v1-frozen process cannot die until it is thawed.
                self.thaw()?;
                let round = Instant::now();
                while !self.is_empty()? && round.elapsed() < Duration::from_millis(100) {
                    backoff_sleep(round);
                }
                if self.is_empty()? {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(self.kill_timeout(timeout));
                }
            }
        }
        if self.is_frozen()? {
            self.thaw()?;
        }
        Ok(KillReport {
            killed,
            took: start.elapsed(),
        })
    }

    /// Deletes the cgroup. It must be empty (`kill_all` first); deleting one that is already
    /// gone succeeds. The shared `cairn/` parent stays.
    pub fn remove(self) -> Result<()> {
        match fs::remove_dir(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                Err(SandboxError::Busy { path: self.dir })
            }
            Err(e) => Err(SandboxError::cgroup_io("remove cgroup", self.dir, e)),
        }
    }

    fn kill_timeout(&self, timeout: Duration) -> SandboxError {
        SandboxError::KillTimeout {
            path: self.dir.clone(),
            timeout,
            pids: self.pids().unwrap_or_default(),
        }
    }

    fn read(&self, file: &str) -> Result<String> {
        let path = self.dir.join(file);
        fs::read_to_string(&path).map_err(|e| SandboxError::cgroup_io("read", path, e))
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.dir.join(file);
        // Not fs::write: cgroup files must not be created or truncated, only written.
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, value.as_bytes()))
            .map_err(|e| SandboxError::cgroup_io("write", path, e))
    }

    /// Waits until `cgroup.events` shows `key want`. The kernel signals every change of that
    /// file as POLLPRI, so this sleeps in poll(2) instead of spinning; each wait is capped at
    /// 10 ms all the same, so a missed notification costs latency, never a hang.
    fn wait_v2(&self, key: &str, want: u64, deadline: Instant) -> Result<bool> {
        let path = self.dir.join("cgroup.events");
        let io = |e| SandboxError::cgroup_io("read", path.clone(), e);
        let file = File::open(&path).map_err(io)?;
        let mut buf = [0u8; 512];
        loop {
            // Reading from offset 0 re-generates the file and re-arms the notification.
            let n = file.read_at(&mut buf, 0).map_err(io)?;
            if events_value(&buf[..n], key) == Some(want) {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let slice = (deadline - now).min(Duration::from_millis(10));
            let mut pfd = libc::pollfd {
                fd: file.as_raw_fd(),
                events: libc::POLLPRI,
                revents: 0,
            };
            let ms = slice.as_millis().clamp(1, 10) as libc::c_int;
            // SAFETY: `pfd` is one valid pollfd whose fd `file` keeps open for the call. A
            // failure (EINTR) only ends this wait early; the loop re-reads and waits again.
            unsafe { libc::poll(&mut pfd, 1, ms) };
        }
    }
}

/// The value of `key` in a `cgroup.events`-style file of `key value` lines.
fn events_value(text: &[u8], key: &str) -> Option<u64> {
    std::str::from_utf8(text).ok()?.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// Polling without notifications (the v1 freezer): short sleeps first, since a freeze usually
/// completes in well under a millisecond, growing to 5 ms.
fn backoff_sleep(since: Instant) {
    let waited = since.elapsed();
    std::thread::sleep((waited / 4).clamp(Duration::from_micros(50), Duration::from_millis(5)));
}

fn kill(pid: u32) -> Result<()> {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return Ok(());
    };
    match rustix::process::kill_process(p, rustix::process::Signal::KILL) {
        // Gone already: it exited between the listing and the signal.
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(SandboxError::Io {
            op: "kill",
            path: PathBuf::from(format!("/proc/{pid}")),
            source: e.into(),
        }),
    }
}
