//! Extended attributes on an open file or on an `O_PATH` handle.
//!
//! The `f*xattr` calls need a real open file. Symlinks, devices and fifos cannot be opened
//! for reading without following the link or waking a driver, so those go through an
//! `O_PATH|O_NOFOLLOW` handle named as `/proc/self/fd/N`: the kernel resolves that magic link
//! straight to the inode the handle holds (the symlink itself, not its target), so the path
//! calls never look a name up again.

use super::super::model::Xattr;
use rustix::fd::{AsRawFd, BorrowedFd};
use rustix::io::Errno;
use std::ffi::CString;
use std::io;

/// What an xattr call acts on.
pub(super) enum Target<'a> {
    /// An fd opened for I/O (a regular file or a directory).
    Fd(BorrowedFd<'a>),
    /// `/proc/self/fd/N` for an `O_PATH|O_NOFOLLOW` handle.
    Proc(CString),
}

impl<'a> Target<'a> {
    pub(super) fn proc(fd: BorrowedFd<'_>) -> Target<'static> {
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        Target::Proc(CString::new(path).expect("invariant: a formatted number has no NUL"))
    }
}

/// Filesystems without xattr support report ENOTSUP; for them the set is empty.
fn unsupported(e: Errno) -> bool {
    e == Errno::NOTSUP || e == Errno::OPNOTSUPP
}

/// Names of all xattrs, unsorted.
pub(super) fn list(t: &Target<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; 1024];
    loop {
        let r = match t {
            Target::Fd(fd) => rustix::fs::flistxattr(fd, &mut buf[..]),
            Target::Proc(p) => rustix::fs::listxattr(p.as_c_str(), &mut buf[..]),
        };
        match r {
            Ok(n) => {
                return Ok(buf[..n]
                    .split(|&b| b == 0)
                    .filter(|n| !n.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect());
            }
            // The list grew between calls or the buffer was small: ask for the size again.
            Err(Errno::RANGE) => {
                let need = match t {
                    Target::Fd(fd) => rustix::fs::flistxattr_query(fd),
                    Target::Proc(p) => rustix::fs::listxattr_query(p.as_c_str()),
                }?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(e) if unsupported(e) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// One value; `None` if the attribute vanished since it was listed.
pub(super) fn get(t: &Target<'_>, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    loop {
        let r = match t {
            Target::Fd(fd) => rustix::fs::fgetxattr(fd, name, &mut buf[..]),
            Target::Proc(p) => rustix::fs::getxattr(p.as_c_str(), name, &mut buf[..]),
        };
        match r {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::RANGE) => {
                let need = match t {
                    Target::Fd(fd) => rustix::fs::fgetxattr_query(fd, name),
                    Target::Proc(p) => rustix::fs::getxattr_query(p.as_c_str(), name),
                }?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(Errno::NODATA) => return Ok(None),
            Err(e) if unsupported(e) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// All xattrs, sorted by name as `Meta` requires.
pub(super) fn read_all(t: &Target<'_>) -> io::Result<Vec<Xattr>> {
    let mut out = Vec::new();
    for name in list(t)? {
        if let Some(value) = get(t, &name)? {
            out.push(Xattr { name, value });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Makes the set of xattrs exactly `want`: removes the others, sets those that differ.
/// On failure returns the attribute name involved with the error.
pub(super) fn set_exact(t: &Target<'_>, want: &[Xattr]) -> Result<(), (Vec<u8>, io::Error)> {
    let have = read_all(t).map_err(|e| (Vec::new(), e))?;
    for old in &have {
        if want.iter().all(|w| w.name != old.name) {
            let r = match t {
                Target::Fd(fd) => rustix::fs::fremovexattr(fd, &old.name[..]),
                Target::Proc(p) => rustix::fs::removexattr(p.as_c_str(), &old.name[..]),
            };
            match r {
                Ok(()) | Err(Errno::NODATA) => {}
                Err(e) => return Err((old.name.clone(), e.into())),
            }
        }
    }
    for w in want {
        if have.iter().any(|h| h.name == w.name && h.value == w.value) {
            continue;
        }
        let flags = rustix::fs::XattrFlags::empty();
        let r = match t {
            Target::Fd(fd) => rustix::fs::fsetxattr(fd, &w.name[..], &w.value, flags),
            Target::Proc(p) => rustix::fs::setxattr(p.as_c_str(), &w.name[..], &w.value, flags),
        };
        r.map_err(|e| (w.name.clone(), e.into()))?;
    }
    Ok(())
}
