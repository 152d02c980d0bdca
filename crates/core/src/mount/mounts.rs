//! Mountpoints: checks before mounting, the mount table, and unmounting by path, including
//! mounts whose server is gone (every access to them fails with `ENOTCONN`).

use super::{MountError, Result};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What `unmount` or `detach` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct UnmountReport {
    pub mountpoint: PathBuf,
    /// The mount's source as the mount table shows it, e.g. `cairn:web@v1`.
    pub source: String,
    /// The server had stopped (killed, crashed) and left the mount behind.
    pub stale: bool,
    /// Detached lazily: gone from the tree now, released when its last user leaves.
    pub lazy: bool,
}

/// One line of `/proc/self/mountinfo`, the parts we use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MountError + 'a {
    move |source| MountError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn is_enotconn(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOTCONN)
}

/// `path` made absolute without touching it: a stale mountpoint cannot be resolved itself,
/// so only its parent is canonicalized.
pub(super) fn absolute(path: &Path) -> Result<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Ok(p);
    }
    let abs = std::path::absolute(path).map_err(io_err("resolve", path))?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Ok(parent
            .canonicalize()
            .map_err(io_err("resolve", parent))?
            .join(name)),
        _ => Ok(abs),
    }
}

/// The mount source for the mount table. Mount options are comma-separated, so a name must
/// not carry commas or spaces into them.
pub(crate) fn fsname(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c == ',' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect();
    format!("cairn:{clean}")
}

/// Refuses a mountpoint that is missing, not a directory, not empty, already mounted, or a
/// stale mount left by a server that died.
pub(super) fn check_mountpoint(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Err(e) if is_enotconn(&e) => {
            return Err(MountError::Stale {
                path: path.to_owned(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(MountError::MountpointMissing {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(io_err("inspect mountpoint", path)(e)),
        Ok(m) if !m.is_dir() => {
            return Err(MountError::NotADirectory {
                path: path.to_owned(),
            });
        }
        Ok(_) => {}
    }
    if let Some(m) = mount_at(&absolute(path)?)? {
        if is_stale(path) {
            return Err(MountError::Stale {
                path: path.to_owned(),
            });
        }
        return Err(MountError::AlreadyMounted {
            path: path.to_owned(),
            what: format!("{} from {}", m.fstype, m.source),
        });
    }
    let mut entries = std::fs::read_dir(path).map_err(io_err("list mountpoint", path))?;
    if entries.next().is_some() {
        return Err(MountError::NotEmpty {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// True when `path` is a FUSE mount whose server is gone. `stat` cannot tell: the kernel
/// answers it from attributes cached for the view's long TTL. Opening the directory always
/// asks the server, and fails with `ENOTCONN` once the connection is dead.
fn is_stale(path: &Path) -> bool {
    matches!(std::fs::read_dir(path), Err(e) if is_enotconn(&e))
}

use crate::is_root;

/// FUSE needs its device; without root, mounting goes through the setuid `fusermount3`.
pub(super) fn check_fuse_available() -> Result<()> {
    if !Path::new("/dev/fuse").exists() {
        return Err(MountError::NoFuseDevice);
    }
    if !is_root() {
        if find_fusermount().is_none() {
            return Err(MountError::NoFusermount);
        }
        // The FUSE library opens the device itself before it asks `fusermount3` to mount.
        if rustix::fs::access(
            "/dev/fuse",
            rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
        )
        .is_err()
        {
            return Err(MountError::NoFuseAccess);
        }
    }
    Ok(())
}

fn find_fusermount() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("fusermount3"))
        .find(|p| p.is_file())
}

/// Undoes the mount table's octal escapes (`\040` for a space, `\012` for a newline).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && i + 3 < field.len()
            && field[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = field[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

fn parse_mountinfo(text: &[u8]) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        // id parent dev root mountpoint options [optional...] - fstype source superoptions
        let Some(dash) = fields.iter().position(|f| *f == b"-") else {
            continue;
        };
        if fields.len() < 5 || dash + 2 >= fields.len() {
            continue;
        }
        out.push(MountEntry {
            mountpoint: PathBuf::from(OsStr::from_bytes(&unescape(fields[4]))),
            fstype: String::from_utf8_lossy(&unescape(fields[dash + 1])).into_owned(),
            source: String::from_utf8_lossy(&unescape(fields[dash + 2])).into_owned(),
        });
    }
    out
}

/// The topmost mount at exactly `abs`, if any.
pub(crate) fn mount_at(abs: &Path) -> Result<Option<MountEntry>> {
    let info = Path::new("/proc/self/mountinfo");
    let text = std::fs::read(info).map_err(io_err("read", info))?;
    Ok(mount_in(&text, abs))
}

/// The topmost mount at `abs` in the mount table `mountinfo` (another process's).
pub(crate) fn mount_in(mountinfo: &[u8], abs: &Path) -> Option<MountEntry> {
    parse_mountinfo(mountinfo)
        .into_iter()
        .rev()
        .find(|m| m.mountpoint == abs)
}

/// Every mountpoint at or below `dir`, deepest first (each at most once).
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = parse_mountinfo(&text)
        .into_iter()
        .map(|m| m.mountpoint)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort();
    points.dedup();
    points.reverse();
    points
}

/// Detaches every mount at or below `dir`, deepest first and whatever its type; returns the
/// mountpoints it detached. For tests (and tools) that must leave nothing mounted behind a
/// directory they are about to remove, even when they stopped halfway.
pub fn detach_all_below(dir: &Path) -> Vec<PathBuf> {
    mounts_below(dir)
        .into_iter()
        .filter(|p| rustix::mount::unmount(p, rustix::mount::UnmountFlags::DETACH).is_ok())
        .collect()
}

fn is_cairn(m: &MountEntry) -> bool {
    m.fstype.starts_with("fuse") && (m.fstype == "fuse.cairn" || m.source.starts_with("cairn:"))
}

/// Unmounts the cairn view at `mountpoint`. A stale mount (its server died) that is still
/// in use is detached instead, since nothing can be served from it anyway.
pub fn unmount(mountpoint: &Path) -> Result<UnmountReport> {
    by_path(mountpoint, false)
}

/// Detaches the cairn view at `mountpoint` lazily: gone from the tree now, released when the
/// last process using it leaves.
pub fn detach(mountpoint: &Path) -> Result<UnmountReport> {
    by_path(mountpoint, true)
}

fn by_path(mountpoint: &Path, lazy: bool) -> Result<UnmountReport> {
    let abs = absolute(mountpoint)?;
    let Some(entry) = mount_at(&abs)? else {
        return Err(MountError::NotMounted {
            path: mountpoint.to_owned(),
        });
    };
    if !is_cairn(&entry) {
        return Err(MountError::NotOurs {
            path: mountpoint.to_owned(),
            fstype: entry.fstype,
            source_name: entry.source,
        });
    }
    let stale = is_stale(&abs);
    let lazy = match unmount_path(&abs, lazy) {
        Ok(()) => lazy,
        Err(MountError::Busy { .. }) if stale => {
            unmount_path(&abs, true)?;
            true
        }
        Err(e) => return Err(e),
    };
    Ok(UnmountReport {
        mountpoint: abs,
        source: entry.source,
        stale,
        lazy,
    })
}

/// Unmounts whatever is mounted at `abs`: `umount2` as root, `fusermount3 -u` otherwise.
pub(super) fn unmount_path(abs: &Path, lazy: bool) -> Result<()> {
    if is_root() {
        let flags = if lazy { libc::MNT_DETACH } else { 0 };
        let c = std::ffi::CString::new(abs.as_os_str().as_bytes()).map_err(|_| {
            MountError::NotMounted {
                path: abs.to_owned(),
            }
        })?;
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EBUSY) => MountError::Busy {
                path: abs.to_owned(),
            },
            Some(libc::EINVAL) => MountError::NotMounted {
                path: abs.to_owned(),
            },
            _ => io_err("unmount", abs)(e),
        });
    }
    let bin = find_fusermount().ok_or(MountError::NoFusermount)?;
    let mut cmd = Command::new(bin);
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd
        .arg("--")
        .arg(abs)
        .output()
        .map_err(io_err("run fusermount3 -u", abs))?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if msg.contains("busy") {
        return Err(MountError::Busy {
            path: abs.to_owned(),
        });
    }
    Err(io_err("unmount", abs)(std::io::Error::other(msg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_below_a_directory_is_detached_deepest_first() {
        let dir = tempfile::tempdir().unwrap();
        let outer = dir.path().join("a");
        let inner = outer.join("b");
        std::fs::create_dir_all(&outer).unwrap();
        let tmpfs = |at: &Path| {
            rustix::mount::mount(
                "none",
                at,
                "tmpfs",
                rustix::mount::MountFlags::empty(),
                None,
            )
            .unwrap();
        };
        tmpfs(&outer);
        std::fs::create_dir(&inner).unwrap();
        tmpfs(&inner);
        assert_eq!(
            detach_all_below(dir.path()),
            vec![inner.clone(), outer.clone()]
        );
        assert!(mount_at(&outer).unwrap().is_none() && mount_at(&inner).unwrap().is_none());
        assert!(
            detach_all_below(dir.path()).is_empty(),
            "nothing is left to detach"
        );
    }

    #[test]
    fn mountinfo_lines_are_parsed_and_unescaped() {
        let text = b"22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw\n\
            98 22 0:50 / /tmp/a\\040b\\012c rw,nosuid,nodev - fuse cairn:web@v1 ro,user_id=0\n\
            99 22 0:51 / /mnt/x rw - fuse.cairn cairn:db@v2 ro\n\
            garbage line\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mountpoint, PathBuf::from("/tmp/a b\nc"));
        assert_eq!(
            (m[1].fstype.as_str(), m[1].source.as_str()),
            ("fuse", "cairn:web@v1")
        );
        assert!(is_cairn(&m[1]) && is_cairn(&m[2]) && !is_cairn(&m[0]));
    }

    #[test]
    fn fsnames_cannot_break_mount_options() {
        assert_eq!(fsname("web@v1"), "cairn:web@v1");
        assert_eq!(fsname("a,b c"), "cairn:a_b_c");
    }
}
