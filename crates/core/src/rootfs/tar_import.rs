//! Tar import: extracting an archive into a machine directory without ever leaving it.
//!
//! - Entry paths are split into components; an absolute path or a `..` anywhere is refused,
//!   `.` and empty components are dropped (so `./etc//hosts` is `etc/hosts`).
//! - Parents are reached from the destination one component at a time through [`Dir`], so a
//!   symlink on the way (an archive that plants `a -> /` and then writes `a/x`) is an
//!   [`RootfsError::Escape`], never followed.
//! - File data is written with runs of zero 4 KiB blocks left as holes: tar stores holes as
//!   zeros (or as GNU sparse maps, which the reader expands to zeros), and this gives the
//!   sparseness back. Content is identical either way.
//! - Directory metadata is applied at the end, deepest first, so adding entries does not
//!   disturb a directory's mtime and a read-only directory can still be filled.

use super::super::model::{Meta, Timestamp, Xattr};
use super::apply::{ApplyOptions, set_meta_fd};
use super::fs::{Dir, FileKind};
use super::{RootfsError, show};
use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::os::unix::fs::FileExt;
use tar::EntryType;

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Entries extracted (files, directories, links, devices, fifos).
    pub entries: u64,
    /// File data bytes written (logical size, holes included).
    pub bytes: u64,
    /// Entries or attributes not extracted, each with the reason.
    pub skipped: Vec<String>,
}

/// Holes are only recreated for whole blocks of this size, aligned to it: the smallest
/// allocation unit of common filesystems.
const HOLE_BLOCK: usize = 4096;
const COPY_BUF: usize = 1 << 20;

/// Extracts a plain (uncompressed) tar archive into `dest`. See the module docs for the
/// safety rules. Ownership is applied and device nodes are created only with `opts.owners`;
/// devices skipped for that reason are listed in the report.
pub fn import_tar<R: Read>(
    reader: R,
    dest: &Dir,
    opts: &ApplyOptions,
) -> Result<ImportReport, RootfsError> {
    let reader = check_not_compressed(reader)?;
    let mut archive = tar::Archive::new(reader);
    let archive_err = |e: std::io::Error| RootfsError::Tar {
        entry: "(archive)".into(),
        reason: format!("cannot read the archive: {e}"),
    };
    let mut report = ImportReport::default();
    let mut dirs: BTreeMap<Vec<Vec<u8>>, Meta> = BTreeMap::new();
    let mut root_meta = None;
    let mut parents = ParentCache::default();
    for entry in archive.entries().map_err(archive_err)? {
        let mut entry = entry.map_err(archive_err)?;
        let raw = entry.path_bytes().into_owned();
        let shown = show(&raw);
        let etype = entry.header().entry_type();
        if etype.is_pax_global_extensions() {
            continue;
        }
        let bad = |reason: String| RootfsError::Tar {
            entry: shown.clone(),
            reason,
        };
        let comps = split_path(&raw).ok_or_else(|| RootfsError::Escape {
            path: format!("tar entry {shown:?}"),
        })?;
        let meta = entry_meta(&mut entry, &shown, &mut report)?;
        let Some((name, parent_comps)) = comps.split_last() else {
            // `./` names the destination itself.
            if etype == EntryType::Directory {
                root_meta = Some(meta);
                continue;
            }
            return Err(bad(
                "names the destination directory itself but is not a directory".into(),
            ));
        };
        let with_entry = |e: RootfsError| match e {
            RootfsError::Escape { path } => RootfsError::Escape {
                path: format!("{path} (tar entry {shown:?})"),
            },
            other => other,
        };
        let parent = parents.get(dest, parent_comps).map_err(with_entry)?;
        // A later entry replaces an earlier one of the same name; a directory in the way is
        // removed with its contents, as the archive says the name is now something else.
        let existing = parent.stat_entry(name)?.map(|e| e.kind);
        if existing == Some(FileKind::Dir) && etype != EntryType::Directory {
            parent.remove(name)?;
            dirs.retain(|k, _| !k.starts_with(&comps));
            parents.clear();
        }
        let parent = parents.get(dest, parent_comps).map_err(with_entry)?;
        match etype {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut written = 0;
                let file = parent.write_file(name, |f| {
                    written = copy_with_holes(&mut entry, f, &shown)?;
                    Ok(())
                })?;
                set_meta_fd(&file, &meta, opts)?;
                report.bytes += written;
            }
            EntryType::Directory => {
                if existing.is_some_and(|k| k != FileKind::Dir) {
                    parent.remove(name)?;
                }
                // Owner-only while extracting so the importer can always fill it; the real
                // mode goes on at the end.
                parent.create_dir(name, 0o700).map_err(with_entry)?;
                dirs.insert(comps.clone(), meta);
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad("symlink without a target".into()))?
                    .into_owned();
                parent.symlink(name, &target)?;
                parent.set_meta(name, FileKind::Symlink, &meta, opts)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad("hard link without a target".into()))?
                    .into_owned();
                link_to(dest, parent, name, &target, &shown)?;
            }
            EntryType::Char | EntryType::Block => {
                if !opts.owners {
                    report.skipped.push(format!(
                        "{shown}: device node not created (needs root; import with owners)"
                    ));
                    continue;
                }
                let header = entry.header();
                let major = header.device_major().ok().flatten();
                let minor = header.device_minor().ok().flatten();
                let (Some(major), Some(minor)) = (major, minor) else {
                    return Err(bad("device entry without valid major/minor numbers".into()));
                };
                let rdev = rustix::fs::makedev(major, minor);
                let kind = if etype == EntryType::Char {
                    FileKind::CharDev
                } else {
                    FileKind::BlockDev
                };
                parent.mknod(name, kind, rdev, meta.mode)?;
                parent.set_meta(name, kind, &meta, opts)?;
            }
            EntryType::Fifo => {
                parent.mknod(name, FileKind::Fifo, 0, meta.mode)?;
                parent.set_meta(name, FileKind::Fifo, &meta, opts)?;
            }
            other => {
                report
                    .skipped
                    .push(format!("{shown}: entry type {other:?} is not supported"));
                continue;
            }
        }
        report.entries += 1;
    }
    parents.clear();
    // Deepest first: a parent made read-only must not stop its children being reached.
    let mut dirs: Vec<_> = dirs.into_iter().collect();
    dirs.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    for (comps, meta) in dirs {
        walk(dest, &comps, false)?.set_own_meta(&meta, opts)?;
    }
    if let Some(meta) = root_meta {
        dest.set_own_meta(&meta, opts)?;
    }
    Ok(report)
}

/// Refuses compressed input with a message that says so, instead of a parse error.
fn check_not_compressed<R: Read>(mut reader: R) -> Result<impl Read, RootfsError> {
    let mut head = [0u8; 6];
    let mut n = 0;
    while n < head.len() {
        match reader.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(RootfsError::Tar {
                    entry: "(archive)".into(),
                    reason: format!("cannot read the archive: {e}"),
                });
            }
        }
    }
    let head = &head[..n];
    let format = if head.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some("xz")
    } else if head.starts_with(b"BZh") {
        Some("bzip2")
    } else {
        None
    };
    if let Some(format) = format {
        return Err(RootfsError::Tar {
            entry: "(archive)".into(),
            reason: format!(
                "the input is {format}-compressed; only plain tar is accepted, decompress it first"
            ),
        });
    }
    Ok(Cursor::new(head.to_vec()).chain(reader))
}

/// Splits an archive path into components. `None` if it is absolute or contains `..`.
fn split_path(raw: &[u8]) -> Option<Vec<Vec<u8>>> {
    if raw.starts_with(b"/") {
        return None;
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return None,
            c => out.push(c.to_vec()),
        }
    }
    Some(out)
}

/// Opens (and with `create`, makes) the directory at `comps` below `root`, one component at a
/// time, never through a symlink.
fn walk(root: &Dir, comps: &[Vec<u8>], create: bool) -> Result<Dir, RootfsError> {
    let mut cur: Option<Dir> = None;
    for c in comps {
        let base = cur.as_ref().unwrap_or(root);
        let next = if create {
            base.create_dir(c, 0o755)?
        } else {
            base.open_dir(c)?
        };
        cur = Some(next);
    }
    match cur {
        Some(d) => Ok(d),
        None => root.try_clone(),
    }
}

/// The last parent directory used. Archives list a directory's entries together, so this
/// saves re-walking the path for most entries.
#[derive(Default)]
struct ParentCache {
    cached: Option<(Vec<Vec<u8>>, Dir)>,
}

impl ParentCache {
    fn get<'a>(&'a mut self, root: &'a Dir, comps: &[Vec<u8>]) -> Result<&'a Dir, RootfsError> {
        if comps.is_empty() {
            return Ok(root);
        }
        if self
            .cached
            .as_ref()
            .is_none_or(|(k, _)| k.as_slice() != comps)
        {
            let dir = walk(root, comps, true)?;
            self.cached = Some((comps.to_vec(), dir));
        }
        let (_, dir) = self.cached.as_ref().expect("invariant: filled just above");
        Ok(dir)
    }

    fn clear(&mut self) {
        self.cached = None;
    }
}

/// Creates `parent/name` as a hard link to the archive path `target`, which must already be
/// extracted inside the destination.
fn link_to(
    dest: &Dir,
    parent: &Dir,
    name: &[u8],
    target: &[u8],
    shown: &str,
) -> Result<(), RootfsError> {
    let bad = |reason: String| RootfsError::Tar {
        entry: shown.to_owned(),
        reason,
    };
    let comps = split_path(target).ok_or_else(|| RootfsError::Escape {
        path: format!("hard link target {:?} (tar entry {shown:?})", show(target)),
    })?;
    let Some((tname, tparent)) = comps.split_last() else {
        return Err(bad("hard link to the destination directory itself".into()));
    };
    let missing = || {
        bad(format!(
            "hard link target {:?} is not in the archive before this entry; the archive is \
             incomplete or out of order",
            show(target)
        ))
    };
    let tdir = match walk(dest, tparent, false) {
        Ok(d) => d,
        Err(RootfsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(missing());
        }
        Err(RootfsError::Escape { path }) => {
            return Err(RootfsError::Escape {
                path: format!("{path} (hard link target of tar entry {shown:?})"),
            });
        }
        Err(e) => return Err(e),
    };
    match tdir.stat_entry(tname)? {
        None => Err(missing()),
        Some(e) if e.kind == FileKind::Dir => Err(bad(format!(
            "hard link target {:?} is a directory",
            show(target)
        ))),
        Some(_) => parent.hardlink(&tdir, tname, name),
    }
}

/// Owner, mode, mtime (to the nanosecond when a PAX `mtime` is present) and xattrs of an entry.
fn entry_meta<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    shown: &str,
    report: &mut ImportReport,
) -> Result<Meta, RootfsError> {
    let bad = |reason: String| RootfsError::Tar {
        entry: shown.to_owned(),
        reason,
    };
    let header = entry.header();
    let field =
        |r: std::io::Result<u64>, what: &str| r.map_err(|e| bad(format!("unreadable {what}: {e}")));
    let mode = field(header.mode().map(u64::from), "mode")? as u32 & 0o7777;
    let uid = u32::try_from(field(header.uid(), "uid")?)
        .map_err(|_| bad("uid does not fit in 32 bits".into()))?;
    let gid = u32::try_from(field(header.gid(), "gid")?)
        .map_err(|_| bad("gid does not fit in 32 bits".into()))?;
    let header_mtime = field(header.mtime(), "mtime")?;
    let mut mtime = Timestamp {
        secs: i64::try_from(header_mtime).map_err(|_| bad("mtime out of range".into()))?,
        nanos: 0,
    };
    let mut xattrs = Vec::new();
    let pax = entry
        .pax_extensions()
        .map_err(|e| bad(format!("unreadable PAX header: {e}")))?;
    if let Some(pax) = pax {
        for rec in pax {
            let rec = rec.map_err(|e| bad(format!("malformed PAX record: {e}")))?;
            let key = rec.key_bytes();
            if key == b"mtime" {
                mtime = parse_pax_time(rec.value_bytes())
                    .ok_or_else(|| bad("malformed PAX mtime".into()))?;
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                xattrs.push(Xattr {
                    name: name.to_vec(),
                    value: rec.value_bytes().to_vec(),
                });
            } else if key.starts_with(b"SCHILY.acl.") {
                // ACLs in their text form; archives made with xattrs carry the binary
                // `system.posix_acl_*` attributes instead, and those are applied.
                report.skipped.push(format!(
                    "{shown}: text-form ACL ({}) not applied",
                    show(key)
                ));
            }
        }
    }
    xattrs.sort_by(|a, b| a.name.cmp(&b.name));
    xattrs.dedup_by(|a, b| a.name == b.name);
    Ok(Meta {
        mode,
        uid,
        gid,
        mtime,
        xattrs,
    })
}

/// Parses a PAX time such as `1700000000.123456789` or `-1.5` (1.5 s before the epoch).
fn parse_pax_time(v: &[u8]) -> Option<Timestamp> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    if !neg {
        return Some(Timestamp { secs, nanos });
    }
    if nanos == 0 {
        Some(Timestamp {
            secs: -secs,
            nanos: 0,
        })
    } else {
        Some(Timestamp {
            secs: -secs - 1,
            nanos: 1_000_000_000 - nanos,
        })
    }
}

/// Copies an entry's data into `file`, leaving aligned all-zero blocks as holes, and sets the
/// length. Returns the number of bytes of the file.
fn copy_with_holes<R: Read>(
    r: &mut R,
    file: &mut std::fs::File,
    shown: &str,
) -> Result<u64, RootfsError> {
    let bad = |e: std::io::Error| RootfsError::Tar {
        entry: shown.to_owned(),
        reason: format!("cannot read file data from the archive: {e}"),
    };
    let werr = |e: std::io::Error| RootfsError::Io {
        path: format!("file for tar entry {shown:?}"),
        op: "write",
        source: e,
    };
    let mut buf = vec![0u8; COPY_BUF];
    let mut off = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(bad(e)),
            }
        }
        if n == 0 {
            break;
        }
        // Write maximal runs of blocks that hold data; skip the all-zero ones.
        let data = &buf[..n];
        let mut start = None;
        for (i, block) in data.chunks(HOLE_BLOCK).enumerate() {
            let zero = block.iter().all(|&b| b == 0);
            match (zero, start) {
                (false, None) => start = Some(i * HOLE_BLOCK),
                (true, Some(s)) => {
                    file.write_all_at(&data[s..i * HOLE_BLOCK], off + s as u64)
                        .map_err(werr)?;
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            file.write_all_at(&data[s..], off + s as u64)
                .map_err(werr)?;
        }
        off += n as u64;
    }
    file.set_len(off).map_err(werr)?;
    Ok(off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_parse_with_nanoseconds_and_before_the_epoch() {
        let t = |s: &str| parse_pax_time(s.as_bytes());
        assert_eq!(
            t("12.5"),
            Some(Timestamp {
                secs: 12,
                nanos: 500_000_000
            })
        );
        assert_eq!(
            t("1700000000.123456789"),
            Some(Timestamp {
                secs: 1_700_000_000,
                nanos: 123_456_789
            })
        );
        assert_eq!(t("7"), Some(Timestamp { secs: 7, nanos: 0 }));
        assert_eq!(
            t("-1.5"),
            Some(Timestamp {
                secs: -2,
                nanos: 500_000_000
            })
        );
        assert_eq!(t("-3"), Some(Timestamp { secs: -3, nanos: 0 }));
        assert_eq!(t("1.x"), None);
        assert_eq!(t(""), None);
    }

    #[test]
    fn archive_paths_split_and_refuse_escapes() {
        let p = |s: &[u8]| split_path(s);
        assert_eq!(p(b"./a//b/"), Some(vec![b"a".to_vec(), b"b".to_vec()]));
        assert_eq!(p(b"./"), Some(vec![]));
        assert_eq!(p(b"/etc/passwd"), None);
        assert_eq!(p(b"a/../../x"), None);
        assert_eq!(p(b".."), None);
    }
}
