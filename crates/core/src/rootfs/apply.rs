//! The write side: creating entries inside a `Dir` and applying metadata to them.
//!
//! New entries are created under a unique temporary name and renamed over their final name, so
//! a reader never sees a half-written file and whatever was at the name (a file, a symlink, a
//! device) is replaced, never written through. Directories are never replaced implicitly:
//! the caller removes one first, because that may delete a whole subtree.
//!
//! Metadata order, and why:
//! 1. owner — `chown` clears setuid/setgid and `security.capability`, so it goes first;
//! 2. mode — after chown so setuid/setgid survive (symlinks have no mode of their own);
//! 3. xattrs — after chown so `security.capability` survives; made exactly equal to the wanted
//!    set (`system.posix_acl_access` agrees with the mode, as both came from one inode);
//! 4. times — last, since every step above changes ctime and some filesystems touch mtime.

use super::super::model::Meta;
use super::fs::{Dir, FileKind, dir_flags};
use super::xattr::{self, Target};
use super::{RootfsError, show};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use std::sync::atomic::{AtomicU64, Ordering};

/// How metadata is applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Apply owners (uid/gid) and create device nodes. Both need root (or the right
    /// capabilities); without them, files are owned by whoever runs the restore.
    pub owners: bool,
}

/// Prefix of temporary names; anything left with it after a crash is debris to sweep.
pub(super) const TMP_PREFIX: &[u8] = b".cairn-tmp-";

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn tmp_name() -> Vec<u8> {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut name = TMP_PREFIX.to_vec();
    name.extend_from_slice(format!("{}-{n}-{nanos:08x}", std::process::id()).as_bytes());
    name
}

/// What metadata calls act on.
enum Handle<'a> {
    /// An fd open for I/O: the `f*` calls work on it directly.
    Open(BorrowedFd<'a>),
    /// An `O_PATH|O_NOFOLLOW` handle; mode and xattrs go through `/proc/self/fd/N`.
    Path(BorrowedFd<'a>),
}

impl Dir {
    /// Creates a child directory (a real directory already there is fine) and opens it.
    /// Anything else at the name is an error: the caller decides whether to remove it.
    pub fn create_dir(&self, name: &[u8], mode: u32) -> Result<Dir, RootfsError> {
        self.check_name(name)?;
        match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode & 0o7777)) {
            Ok(()) | Err(Errno::EXIST) => self.open_dir(name),
            Err(e) => Err(self.io(name, "create directory", e)),
        }
    }

    /// Writes a regular file: creates a temporary file (mode 0600) in this directory, lets
    /// `fill` write it, then renames it over `name`. `fill` should write data with positioned
    /// writes and finish with `set_len(size)` so holes stay holes. On any error the temporary
    /// file is removed. Returns the file, for [`set_meta_fd`].
    pub fn write_file<F>(&self, name: &[u8], fill: F) -> Result<std::fs::File, RootfsError>
    where
        F: FnOnce(&mut std::fs::File) -> Result<(), RootfsError>,
    {
        self.check_name(name)?;
        let (tmp, fd) = self.create_tmp_file()?;
        let mut file = std::fs::File::from(fd);
        let result = fill(&mut file).and_then(|()| self.rename_tmp(&tmp, name));
        match result {
            Ok(()) => Ok(file),
            Err(e) => {
                let _ = rustix::fs::unlinkat(&self.fd, &tmp[..], AtFlags::empty());
                Err(e)
            }
        }
    }

    pub fn symlink(&self, name: &[u8], target: &[u8]) -> Result<(), RootfsError> {
        self.check_name(name)?;
        self.create_replacing(name, "create symlink", |tmp| {
            rustix::fs::symlinkat(target, &self.fd, tmp)
        })?;
        Ok(())
    }

    /// Creates a character or block device or a fifo. Devices need root; sockets are never
    /// created (they belong to the process that bound them).
    pub fn mknod(
        &self,
        name: &[u8],
        kind: FileKind,
        rdev: u64,
        mode: u32,
    ) -> Result<(), RootfsError> {
        self.check_name(name)?;
        let (ftype, rdev) = match kind {
            FileKind::CharDev => (FileType::CharacterDevice, rdev),
            FileKind::BlockDev => (FileType::BlockDevice, rdev),
            FileKind::Fifo => (FileType::Fifo, 0),
            other => {
                return Err(RootfsError::KindMismatch {
                    path: show(&self.child(name)),
                    expected: "device or fifo",
                    found: other.describe(),
                });
            }
        };
        let perm = Mode::from_raw_mode(mode & 0o7777);
        self.create_replacing(name, "create device node", |tmp| {
            rustix::fs::mknodat(&self.fd, tmp, ftype, perm, rdev)
        })?;
        Ok(())
    }

    /// Links `src/src_name` (which must not be a directory) as `name` here. A symlink at
    /// `src_name` is linked as the symlink itself, never its target.
    pub fn hardlink(&self, src: &Dir, src_name: &[u8], name: &[u8]) -> Result<(), RootfsError> {
        src.check_name(src_name)?;
        self.check_name(name)?;
        let tmp = self.create_replacing(name, "create hard link", |tmp| {
            rustix::fs::linkat(&src.fd, src_name, &self.fd, tmp, AtFlags::empty())
        })?;
        // If `name` already was a link to the same inode, rename succeeds without doing
        // anything and the temporary name is still there.
        match rustix::fs::unlinkat(&self.fd, &tmp[..], AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(self.io(&tmp, "remove temporary link", e)),
        }
    }

    /// Removes an entry; a directory is removed with everything in it. A symlink is removed
    /// itself; what it points to is never touched. A missing entry is not an error.
    pub fn remove(&self, name: &[u8]) -> Result<(), RootfsError> {
        self.check_name(name)?;
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(Errno::ISDIR) => self.remove_tree(name),
            Err(e) => Err(self.io(name, "remove", e)),
        }
    }

    fn remove_tree(&self, name: &[u8]) -> Result<(), RootfsError> {
        let fd = match rustix::fs::openat(&self.fd, name, dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()),
            // Swapped for a symlink or file since the unlink attempt: unlink that instead.
            Err(Errno::LOOP | Errno::NOTDIR) => return self.remove(name),
            Err(e) => return Err(self.io(name, "open directory", e)),
        };
        let child = Dir {
            fd,
            path: self.child(name),
        };
        // Without owner write+search permission the children cannot be unlinked (root is
        // exempt, everyone else is not); the directory is going away, so its mode can change.
        let st = child.stat_self()?;
        if st.mode & 0o700 != 0o700 {
            let _ = rustix::fs::fchmod(&child.fd, Mode::from_raw_mode((st.mode & 0o7777) | 0o700));
        }
        for entry in child.entries()? {
            child.remove(&entry.name)?;
        }
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(self.io(name, "remove directory", e)),
        }
    }

    /// Renames `from` to `to` inside this directory (replacing a non-directory at `to`).
    #[cfg(test)]
    pub fn rename_within(&self, from: &[u8], to: &[u8]) -> Result<(), RootfsError> {
        self.check_name(from)?;
        self.check_name(to)?;
        rustix::fs::renameat(&self.fd, from, &self.fd, to).map_err(|e| self.io(to, "rename to", e))
    }

    /// Applies `meta` to the entry `name`, which must be of `kind` (checked on the handle the
    /// changes go through, so a swapped entry is refused rather than changed).
    pub fn set_meta(
        &self,
        name: &[u8],
        kind: FileKind,
        meta: &Meta,
        opts: &ApplyOptions,
    ) -> Result<(), RootfsError> {
        let fd = self.open_path(name, kind)?;
        let path = show(&self.child(name));
        apply_meta(
            Handle::Path(fd.as_fd()),
            kind == FileKind::Symlink,
            meta,
            opts,
            &path,
        )
    }

    /// Applies `meta` to this directory itself. Call it after the directory's children are
    /// written, since creating them changes its mtime.
    pub fn set_own_meta(&self, meta: &Meta, opts: &ApplyOptions) -> Result<(), RootfsError> {
        apply_meta(
            Handle::Open(self.fd.as_fd()),
            false,
            meta,
            opts,
            &self.display_path(),
        )
    }

    // ---- temporary names ----

    fn create_tmp_file(&self) -> Result<(Vec<u8>, OwnedFd), RootfsError> {
        // O_EXCL never follows a symlink and never reuses an existing file.
        let flags =
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut last = Errno::EXIST;
        for _ in 0..64 {
            let tmp = tmp_name();
            match rustix::fs::openat(&self.fd, &tmp[..], flags, Mode::from_raw_mode(0o600)) {
                Ok(fd) => return Ok((tmp, fd)),
                Err(Errno::EXIST) => last = Errno::EXIST,
                Err(e) => return Err(self.io_self("create a temporary file in", e)),
            }
        }
        Err(self.io_self("find a free temporary name in", last))
    }

    /// Creates something at a fresh temporary name with `create`, then renames it over `name`.
    /// Returns the temporary name used.
    fn create_replacing(
        &self,
        name: &[u8],
        op: &'static str,
        create: impl Fn(&[u8]) -> rustix::io::Result<()>,
    ) -> Result<Vec<u8>, RootfsError> {
        let mut made = None;
        for _ in 0..64 {
            let tmp = tmp_name();
            match create(&tmp) {
                Ok(()) => {
                    made = Some(tmp);
                    break;
                }
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(self.io(name, op, e)),
            }
        }
        let tmp =
            made.ok_or_else(|| self.io_self("find a free temporary name in", Errno::EXIST))?;
        match self.rename_tmp(&tmp, name) {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = rustix::fs::unlinkat(&self.fd, &tmp[..], AtFlags::empty());
                Err(e)
            }
        }
    }

    fn rename_tmp(&self, tmp: &[u8], name: &[u8]) -> Result<(), RootfsError> {
        rustix::fs::renameat(&self.fd, tmp, &self.fd, name).map_err(|e| match e {
            Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST => RootfsError::DirectoryInTheWay {
                path: show(&self.child(name)),
            },
            e => self.io(name, "put in place", e),
        })
    }
}

/// Applies `meta` to a regular file open for writing (as returned by [`Dir::write_file`]).
pub fn set_meta_fd(
    file: &std::fs::File,
    meta: &Meta,
    opts: &ApplyOptions,
) -> Result<(), RootfsError> {
    apply_meta(
        Handle::Open(file.as_fd()),
        false,
        meta,
        opts,
        "file being written",
    )
}

fn apply_meta(
    handle: Handle<'_>,
    is_symlink: bool,
    meta: &Meta,
    opts: &ApplyOptions,
    path: &str,
) -> Result<(), RootfsError> {
    let io = |op: &'static str, e: std::io::Error| RootfsError::Io {
        path: path.to_owned(),
        op,
        source: e,
    };
    let (fd, xtarget) = match handle {
        Handle::Open(fd) => (fd, Target::Fd(fd)),
        Handle::Path(fd) => (fd, Target::proc(fd)),
    };
    if opts.owners {
        let uid = rustix::fs::Uid::from_raw(meta.uid);
        let gid = rustix::fs::Gid::from_raw(meta.gid);
        rustix::fs::chownat(fd, "", Some(uid), Some(gid), AtFlags::EMPTY_PATH)
            .map_err(|e| io("set owner of", e.into()))?;
    }
    if !is_symlink {
        let mode = Mode::from_raw_mode(meta.mode & 0o7777);
        let r = match &xtarget {
            Target::Fd(fd) => rustix::fs::fchmod(fd, mode),
            Target::Proc(p) => rustix::fs::chmod(p.as_c_str(), mode),
        };
        r.map_err(|e| io("set mode of", e.into()))?;
    }
    xattr::set_exact(&xtarget, &meta.xattrs).map_err(|(name, e)| RootfsError::Io {
        path: format!("{path} (xattr {})", show(&name)),
        op: "set xattrs of",
        source: e,
    })?;
    let t = Timespec {
        tv_sec: meta.mtime.secs,
        tv_nsec: meta.mtime.nanos.into(),
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(fd, "", &times, AtFlags::EMPTY_PATH)
        .map_err(|e| io("set times of", e.into()))?;
    Ok(())
}
