//! Unmounting a file system without waiting for its flush.
//!
//! When an overlay goes away, the kernel syncs its upper layer's whole file system
//! (`sync_filesystem` of the host's disk, not only the machine's files), and the task that
//! drops the mount's last reference waits for it. With a gigabyte of unrelated dirty data on
//! the host, that is most of a second inside a restore that otherwise takes milliseconds. A
//! restore has no use for that flush: the undo point already holds the old upper, durably in
//! the store, and the upper itself is swept afterwards.
//!
//! So [`release`] checks that nothing uses the mount, takes a reference to it, detaches it
//! from the tree and hands the reference to a background process, which drops it once the
//! caller drops the [`Released`] it got back (at the end of the command, say). The flush then
//! runs in that process, after the caller's own work: started any earlier, it would hold up
//! the caller's next fsync, which on ext4 waits for data the flush is writing.

use rustix::mount::UnmountFlags;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// Why [`release`] left the mount where it was.
#[derive(Debug)]
pub enum ReleaseError {
    /// A process has its working directory, its root or an open file inside.
    Busy,
    Os(rustix::io::Errno),
}

/// A detached mount that a background process keeps until this is dropped, then lets go of.
#[derive(Debug)]
#[must_use = "the mount goes (and its flush starts) when this is dropped"]
pub struct Released {
    _signal: Option<OwnedFd>,
}

/// Unmounts the mount at `dir` if nothing uses it, leaving its final teardown (and the
/// flush that comes with it) to a background process that starts it once the result is
/// dropped.
pub fn release(dir: &Path) -> Result<Released, ReleaseError> {
    // MNT_EXPIRE unmounts nothing the first time: it fails with EBUSY while the mount is in
    // use and with EAGAIN otherwise (marking it expired). It succeeds only on a mount that an
    // earlier call marked and nobody touched since: then it is gone already.
    match rustix::mount::unmount(dir, UnmountFlags::EXPIRE) {
        Err(rustix::io::Errno::AGAIN) => {}
        Ok(()) => return Ok(Released { _signal: None }),
        Err(rustix::io::Errno::BUSY) => return Err(ReleaseError::Busy),
        Err(e) => return Err(ReleaseError::Os(e)),
    }
    let held = rustix::fs::open(
        dir,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(ReleaseError::Os)?;
    rustix::mount::unmount(dir, UnmountFlags::DETACH).map_err(ReleaseError::Os)?;
    Ok(Released {
        _signal: hand_over(held),
    })
}

/// Gives `held` (the last reference to a detached mount) to a background process that drops
/// it once the returned write end of a pipe is closed. Falls back to dropping it here, and
/// waiting, if no process can be made.
fn hand_over(held: OwnedFd) -> Option<OwnedFd> {
    // Close-on-exec: a process this one starts later must not keep the mount alive.
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).ok()?;
    let (held_fd, rd_fd) = (held.as_raw_fd(), rd.as_raw_fd());
    // SAFETY: between fork and _exit the children call only async-signal-safe functions
    // (fork, setsid, dup2, close_range, read, close, _exit) on values computed before the fork,
    // as a child of a multi-threaded process must.
    let child = unsafe { libc::fork() };
    if child == 0 {
        unsafe {
            // The grandchild is reparented at once, so nobody has to reap it.
            if libc::fork() != 0 {
                libc::_exit(0);
            }
            libc::setsid();
            // Keep only the reference and the pipe's read end: every other descriptor (the
            // catalog, lock files) goes, so no lock outlives the command through us.
            if libc::dup2(rd_fd, 0) < 0 || libc::dup2(held_fd, 1) < 0 {
                libc::_exit(1);
            }
            libc::syscall(libc::SYS_close_range, 2u32, u32::MAX, 0u32);
            // Drop the reference once the caller has dropped its own and its `Released`
            // (closing the write end), so that the last drop, and with it the flush, is ours.
            let mut b = 0u8;
            while libc::read(0, (&raw mut b).cast(), 1) > 0 {}
            libc::close(1);
            libc::_exit(0);
        }
    }
    drop(held);
    drop(rd);
    if child < 0 {
        return None;
    }
    // The intermediate child exits at once.
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out-pointer.
    unsafe { libc::waitpid(child, &mut status, 0) };
    Some(wr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounted(dir: &Path) -> bool {
        let want = dir.canonicalize().unwrap();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(want.to_str().unwrap()))
    }

    fn mount_tmpfs(dir: &Path) {
        let flags = rustix::mount::MountFlags::empty();
        rustix::mount::mount("cairn-test", dir, "tmpfs", flags, None).unwrap();
    }

    #[test]
    fn releases_an_unused_mount_and_refuses_a_busy_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        std::fs::create_dir(&dir).unwrap();
        mount_tmpfs(&dir);
        std::fs::write(dir.join("f"), b"x").unwrap();

        // An open file inside: busy, and still mounted.
        let f = std::fs::File::open(dir.join("f")).unwrap();
        assert!(matches!(release(&dir), Err(ReleaseError::Busy)));
        assert!(mounted(&dir));
        drop(f);

        let released = release(&dir).unwrap();
        assert!(!mounted(&dir), "the mount is gone from the tree");
        assert!(!dir.join("f").exists(), "the directory below shows again");
        // This process holds nothing of it: the directory can be mounted on again at once.
        mount_tmpfs(&dir);
        rustix::mount::unmount(&dir, UnmountFlags::empty()).unwrap();
        drop(released);
    }
}
