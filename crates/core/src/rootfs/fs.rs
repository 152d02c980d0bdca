//! The directory handle and the read side: listing, lstat, xattrs, file data regions.

use super::super::model::{Meta, Timestamp, Xattr, validate_name};
use super::xattr::{self, Target};
use super::{RootfsError, show};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, SeekFrom};
use rustix::io::Errno;
use std::path::Path;

/// An open directory inside a machine.
///
/// **Invariant:** every `Dir` other than the root was opened from its parent `Dir` by one
/// name with `O_NOFOLLOW`, so no symlink lies between the machine root and it.
#[derive(Debug)]
pub struct Dir {
    pub(super) fd: OwnedFd,
    /// For messages only; never used to reach a file.
    pub(super) path: Vec<u8>,
}

/// The kind of a directory entry, from its `st_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    CharDev,
    BlockDev,
    Fifo,
    Socket,
}

impl FileKind {
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match FileType::from_raw_mode(mode) {
            FileType::RegularFile => FileKind::File,
            FileType::Directory => FileKind::Dir,
            FileType::Symlink => FileKind::Symlink,
            FileType::CharacterDevice => FileKind::CharDev,
            FileType::BlockDevice => FileKind::BlockDev,
            FileType::Fifo => FileKind::Fifo,
            FileType::Socket => FileKind::Socket,
            FileType::Unknown => return None,
        })
    }

    pub fn describe(self) -> &'static str {
        match self {
            FileKind::File => "regular file",
            FileKind::Dir => "directory",
            FileKind::Symlink => "symlink",
            FileKind::CharDev => "character device",
            FileKind::BlockDev => "block device",
            FileKind::Fifo => "fifo",
            FileKind::Socket => "socket",
        }
    }
}

/// The fields of `lstat` that checkpoints and the stat cache use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    /// The full `st_mode`, type bits included.
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    /// 512-byte blocks allocated; less than `size / 512` means the file has holes.
    pub blocks: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
}

impl Stat {
    pub fn kind(&self) -> Option<FileKind> {
        FileKind::from_mode(self.mode)
    }

    // Field widths differ between architectures; the casts are widenings on all of them.
    #[allow(clippy::unnecessary_cast)]
    pub(super) fn from_raw(st: &rustix::fs::Stat) -> Stat {
        Stat {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            mode: st.st_mode as u32,
            nlink: st.st_nlink as u64,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            rdev: st.st_rdev as u64,
            size: st.st_size.max(0) as u64,
            blocks: st.st_blocks.max(0) as u64,
            mtime: Timestamp {
                secs: st.st_mtime as i64,
                nanos: st.st_mtime_nsec as u32,
            },
            ctime: Timestamp {
                secs: st.st_ctime as i64,
                nanos: st.st_ctime_nsec as u32,
            },
        }
    }
}

/// One entry of a directory listing, with its lstat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanEntry {
    pub name: Vec<u8>,
    pub kind: FileKind,
    pub stat: Stat,
}

impl Dir {
    /// Opens the machine root. `path` must name a directory; a symlink as its last component
    /// is refused so the root is exactly the directory named.
    pub fn open(path: &Path) -> Result<Dir, RootfsError> {
        let shown = path.to_string_lossy().into_owned();
        let fd = rustix::fs::open(path, dir_flags(), Mode::empty()).map_err(|e| match e {
            Errno::LOOP => RootfsError::Escape {
                path: shown.clone(),
            },
            // O_DIRECTORY|O_NOFOLLOW on a symlink gives ENOTDIR; say which it was.
            Errno::NOTDIR if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink()) => {
                RootfsError::Escape {
                    path: shown.clone(),
                }
            }
            Errno::NOTDIR => RootfsError::NotADirectory {
                path: shown.clone(),
            },
            e => RootfsError::Io {
                path: shown.clone(),
                op: "open directory",
                source: e.into(),
            },
        })?;
        Ok(Dir {
            fd,
            path: shown.into_bytes(),
        })
    }

    /// Opens a child directory. A symlink there is an `Escape`, never followed.
    pub fn open_dir(&self, name: &[u8]) -> Result<Dir, RootfsError> {
        self.check_name(name)?;
        match rustix::fs::openat(&self.fd, name, dir_flags(), Mode::empty()) {
            Ok(fd) => Ok(Dir {
                fd,
                path: self.child(name),
            }),
            Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                // ENOTDIR is also what O_NOFOLLOW|O_DIRECTORY gives for a symlink on some
                // kernels; look again to say which it was.
                match self.stat_entry(name)? {
                    Some(s) if s.kind == FileKind::Symlink => Err(RootfsError::Escape {
                        path: show(&self.child(name)),
                    }),
                    Some(_) => Err(RootfsError::NotADirectory {
                        path: show(&self.child(name)),
                    }),
                    None => Err(self.io(name, "open directory", e)),
                }
            }
            Err(e) => Err(self.io(name, "open directory", e)),
        }
    }

    /// Another handle on the same directory.
    pub fn try_clone(&self) -> Result<Dir, RootfsError> {
        let fd = rustix::io::fcntl_dupfd_cloexec(&self.fd, 0)
            .map_err(|e| self.io_self("duplicate handle of", e))?;
        Ok(Dir {
            fd,
            path: self.path.clone(),
        })
    }

    /// The path this handle was opened as, for messages.
    pub fn display_path(&self) -> String {
        show(&self.path)
    }

    pub fn stat_self(&self) -> Result<Stat, RootfsError> {
        let st = rustix::fs::fstat(&self.fd).map_err(|e| self.io_self("stat", e))?;
        Ok(Stat::from_raw(&st))
    }

    /// All entries except `.` and `..`, each lstat'ed, sorted by name bytes.
    pub fn entries(&self) -> Result<Vec<ScanEntry>, RootfsError> {
        let mut dir =
            rustix::fs::Dir::read_from(&self.fd).map_err(|e| self.io_self("list directory", e))?;
        let mut out = Vec::new();
        while let Some(ent) = dir.read() {
            let ent = ent.map_err(|e| self.io_self("list directory", e))?;
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            // An entry removed between listing and lstat is simply gone: the scan reports the
            // directory as it was at some instant during the walk, as any walk of a live tree must.
            if let Some(e) = self.stat_entry(name)? {
                out.push(e);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// lstat of one entry; `None` if there is none by that name.
    pub fn stat_entry(&self, name: &[u8]) -> Result<Option<ScanEntry>, RootfsError> {
        self.check_name(name)?;
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                let stat = Stat::from_raw(&st);
                let kind = stat.kind().ok_or_else(|| RootfsError::Io {
                    path: show(&self.child(name)),
                    op: "classify",
                    source: std::io::Error::other(format!("unknown file type {:o}", stat.mode)),
                })?;
                Ok(Some(ScanEntry {
                    name: name.to_vec(),
                    kind,
                    stat,
                }))
            }
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.io(name, "stat", e)),
        }
    }

    /// The entry's own xattrs (a symlink's, not its target's), sorted by name.
    pub fn read_xattrs(&self, name: &[u8], kind: FileKind) -> Result<Vec<Xattr>, RootfsError> {
        let fd = self.open_path(name, kind)?;
        xattr::read_all(&Target::proc(fd.as_fd())).map_err(|e| RootfsError::Io {
            path: show(&self.child(name)),
            op: "read xattrs (through /proc/self/fd; /proc must be mounted) of",
            source: e,
        })
    }

    /// This directory's own xattrs, sorted by name.
    pub fn read_dir_xattrs(&self) -> Result<Vec<Xattr>, RootfsError> {
        xattr::read_all(&Target::Fd(self.fd.as_fd())).map_err(|e| RootfsError::Io {
            path: self.display_path(),
            op: "read xattrs of",
            source: e,
        })
    }

    /// Opens a regular file for reading, never through a symlink and never a device or fifo.
    pub fn open_file(&self, name: &[u8]) -> Result<std::fs::File, RootfsError> {
        self.check_name(name)?;
        // O_NONBLOCK: if the name was swapped for a fifo since it was listed, open must not
        // hang waiting for a writer; the type check below then rejects it. O_NOATIME keeps a
        // scan from dirtying every inode, but only the owner or root may ask for it.
        let base = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(&self.fd, name, base | OFlags::NOATIME, Mode::empty()) {
            Err(Errno::PERM) => rustix::fs::openat(&self.fd, name, base, Mode::empty()),
            r => r,
        }
        .map_err(|e| match e {
            Errno::LOOP => RootfsError::KindMismatch {
                path: show(&self.child(name)),
                expected: FileKind::File.describe(),
                found: FileKind::Symlink.describe(),
            },
            e => self.io(name, "open", e),
        })?;
        self.expect_kind(name, &fd, FileKind::File)?;
        Ok(std::fs::File::from(fd))
    }

    pub fn read_link(&self, name: &[u8]) -> Result<Vec<u8>, RootfsError> {
        self.check_name(name)?;
        let target = rustix::fs::readlinkat(&self.fd, name, Vec::new())
            .map_err(|e| self.io(name, "read symlink", e))?;
        Ok(target.into_bytes())
    }

    // ---- helpers shared with the write side ----

    /// An `O_PATH|O_NOFOLLOW` handle on an entry, checked to be of `kind`. Metadata calls go
    /// through this handle so they act on exactly the inode that was checked.
    pub(super) fn open_path(&self, name: &[u8], kind: FileKind) -> Result<OwnedFd, RootfsError> {
        self.check_name(name)?;
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, name, flags, Mode::empty())
            .map_err(|e| self.io(name, "open", e))?;
        self.expect_kind(name, &fd, kind)?;
        Ok(fd)
    }

    pub(super) fn expect_kind(
        &self,
        name: &[u8],
        fd: &OwnedFd,
        kind: FileKind,
    ) -> Result<(), RootfsError> {
        let st = rustix::fs::fstat(fd).map_err(|e| self.io(name, "stat", e))?;
        let found = FileKind::from_mode(st.st_mode);
        if found != Some(kind) {
            return Err(RootfsError::KindMismatch {
                path: show(&self.child(name)),
                expected: kind.describe(),
                found: found.map_or("file of unknown type", FileKind::describe),
            });
        }
        Ok(())
    }

    pub(super) fn check_name(&self, name: &[u8]) -> Result<(), RootfsError> {
        validate_name(name).map_err(|e| RootfsError::BadName {
            dir: self.display_path(),
            name: show(name),
            reason: e.to_string(),
        })
    }

    pub(super) fn child(&self, name: &[u8]) -> Vec<u8> {
        let mut p = self.path.clone();
        if !p.ends_with(b"/") {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        p
    }

    pub(super) fn io(&self, name: &[u8], op: &'static str, e: Errno) -> RootfsError {
        RootfsError::Io {
            path: show(&self.child(name)),
            op,
            source: e.into(),
        }
    }

    pub(super) fn io_self(&self, op: &'static str, e: Errno) -> RootfsError {
        RootfsError::Io {
            path: self.display_path(),
            op,
            source: e.into(),
        }
    }
}

pub(super) fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// The `(offset, len)` runs of `file` that hold data, in order; holes are the gaps.
///
/// A file whose allocation covers its size has no holes, so it is one region without asking
/// the filesystem. Filesystems without `SEEK_DATA` are treated as having no holes.
pub fn data_regions(
    file: &std::fs::File,
    size: u64,
    blocks: u64,
) -> Result<Vec<(u64, u64)>, RootfsError> {
    if size == 0 {
        return Ok(Vec::new());
    }
    if blocks.saturating_mul(512) >= size {
        return Ok(vec![(0, size)]);
    }
    let io = |e: Errno| RootfsError::Io {
        path: "file being scanned".into(),
        op: "find data regions (SEEK_DATA/SEEK_HOLE) of",
        source: e.into(),
    };
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(d) => d,
            // ENXIO: no data after `pos`; the rest is a hole.
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL) if out.is_empty() => return Ok(vec![(0, size)]),
            Err(e) => return Err(io(e)),
        };
        if data >= size {
            break;
        }
        let hole = rustix::fs::seek(file, SeekFrom::Hole(data)).map_err(io)?;
        let end = hole.min(size);
        out.push((data, end - data));
        pos = end;
    }
    // Leave the offset where readers expect it; callers use positioned reads anyway.
    rustix::fs::seek(file, SeekFrom::Start(0)).map_err(io)?;
    Ok(out)
}

/// The `Meta` of an entry from its lstat and xattrs (sorted here, so any order is accepted).
pub fn meta_from_stat(stat: &Stat, mut xattrs: Vec<Xattr>) -> Meta {
    xattrs.sort_by(|a, b| a.name.cmp(&b.name));
    Meta {
        mode: stat.mode & 0o7777,
        uid: stat.uid,
        gid: stat.gid,
        mtime: stat.mtime,
        xattrs,
    }
}
