//! Locks that die with their holder: `flock(2)` on files under `<home>/locks`.
//!
//! - A machine lock serializes every operation on one machine. The kernel drops it when the
//!   holder exits for any reason, so a dead process never leaves a stale lock behind.
//! - A session marks a process that reads or writes blobs. gc never deletes a pack doomed
//!   before a live session started (see gc.rs), and it tells a live session from a dead one by
//!   trying its lock.

use super::{EngineError, Repo, Result, now_ns};
use rustix::fs::{FlockOperation, flock};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Held while an operation runs on one machine.
pub(crate) struct MachineLock {
    _file: File,
}

/// A registered reader/writer of blobs; ends its catalog row and lock when dropped.
pub(crate) struct Session<'a> {
    repo: &'a Repo,
    id: i64,
    pub(crate) started_at: i64,
    path: PathBuf,
    _file: File,
}

fn open_lock_file(path: &PathBuf) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| EngineError::Io {
            op: "open lock file",
            path: path.clone(),
            source,
        })
}

/// Opens the lock file at `path` and takes its lock, trying every `poll` for up to `wait`;
/// `None` if a holder kept it that long.
fn lock_within(path: &PathBuf, wait: Duration, poll: Duration) -> Result<Option<File>> {
    let file = open_lock_file(path)?;
    let deadline = Instant::now() + wait;
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(Some(file)),
            Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(poll);
            }
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
            Err(e) => {
                return Err(EngineError::Io {
                    op: "lock",
                    path: path.clone(),
                    source: e.into(),
                });
            }
        }
    }
}

/// Who holds a lock, for the message a waiter prints. Best effort: the lock itself is flock.
fn write_holder(file: &mut File, op: &str) {
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "pid {}, {op}", std::process::id());
}

impl Repo {
    /// Takes the lock of machine `name`, waiting up to the repo's `lock_wait` for a holder to
    /// finish. `op` is written into the lock file so a waiter can say who holds it.
    pub(crate) fn lock_machine(&self, name: &str, op: &str) -> Result<MachineLock> {
        let path = self.home.join("locks").join(format!("machine-{name}.lock"));
        let Some(mut file) = lock_within(&path, self.lock_wait, Duration::from_millis(20))? else {
            let mut holder = String::new();
            let _ = open_lock_file(&path).and_then(|mut f| {
                f.read_to_string(&mut holder)
                    .map_err(|source| EngineError::Io {
                        op: "read lock file",
                        path: path.clone(),
                        source,
                    })
            });
            let holder = match holder.trim() {
                "" => "another cairn command holds its lock".to_owned(),
                h => format!("another cairn command is running on it ({h})"),
            };
            return Err(EngineError::Locked {
                machine: name.to_owned(),
                holder,
            });
        };
        write_holder(&mut file, op);
        Ok(MachineLock { _file: file })
    }

    /// Held by a machine's view server for as long as it serves (`machine serve-lower`), so
    /// two servers do not mount at one `lower/`: one started while a server left by an
    /// interrupted command is still starting waits here until that one has mounted and its
    /// mount is gone. A holder that outlives `wait` has long since mounted; its mount was
    /// detached (it serves only processes still inside it), so the new server goes ahead
    /// without the lock (`None`).
    pub(crate) fn lock_lower_server(
        &self,
        uid: &str,
        wait: Duration,
    ) -> Result<Option<MachineLock>> {
        let path = self.home.join("locks").join(format!("lower-{uid}.lock"));
        Ok(
            lock_within(&path, wait, Duration::from_millis(2))?.map(|mut file| {
                write_holder(&mut file, "serving the lower layer");
                MachineLock { _file: file }
            }),
        )
    }

    /// Registers this process as a session that reads or writes blobs.
    pub(crate) fn begin_session(&self, op: &str) -> Result<Session<'_>> {
        let pid = std::process::id();
        let started_at = now_ns();
        let path = session_lock_path(self, pid, started_at);
        let file = open_lock_file(&path)?;
        flock(&file, FlockOperation::NonBlockingLockExclusive).map_err(|e| EngineError::Io {
            op: "lock",
            path: path.clone(),
            source: e.into(),
        })?;
        // The lock exists before the row, so gc never sees a row whose lock is not yet held.
        let id = self.catalog.begin_session(pid, started_at, op)?;
        Ok(Session {
            repo: self,
            id,
            started_at,
            path,
            _file: file,
        })
    }

    /// True when the session's process still holds its lock.
    pub(crate) fn session_alive(&self, pid: u32, started_at: i64) -> bool {
        let path = session_lock_path(self, pid, started_at);
        let Ok(file) = OpenOptions::new().read(true).write(true).open(&path) else {
            return false;
        };
        matches!(
            flock(&file, FlockOperation::NonBlockingLockExclusive),
            Err(rustix::io::Errno::WOULDBLOCK)
        )
    }

    pub(crate) fn remove_session_lock(&self, pid: u32, started_at: i64) {
        let _ = std::fs::remove_file(session_lock_path(self, pid, started_at));
    }
}

fn session_lock_path(repo: &Repo, pid: u32, started_at: i64) -> PathBuf {
    repo.home
        .join("locks")
        .join(format!("session-{pid}-{started_at}.lock"))
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.repo.catalog.end_session(self.id) {
            tracing::warn!("could not end session {}: {e}", self.id);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
