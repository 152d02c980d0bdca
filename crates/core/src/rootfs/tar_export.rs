//! Tar export: a tree as a PAX archive.
//!
//! - Names are relative (no leading `/` or `./`); directories end in `/` and come before
//!   their contents; entries follow tree order, so a hard link's leader is always earlier.
//! - Owners are numeric only (no user or group names: they mean nothing on another host).
//! - A PAX header carries whatever ustar cannot: `mtime` with nanoseconds, long or non-UTF-8
//!   `path`/`linkpath` (with `hdrcharset=BINARY`), large `uid`/`gid`/`size`, and every xattr as
//!   `SCHILY.xattr.NAME`.
//! - Holes are written as zeros: plain tar has no portable hole format. Import turns aligned
//!   zero blocks back into holes.

use super::super::model::{ChunkId, Content, Meta, Node, Tree, TreeId};
use super::{RootfsError, show};
use std::io::Write;
use tar::{EntryType, Header};

/// Where export reads trees and chunks from; implemented by the engine over its store.
pub trait TreeSource {
    fn tree(&self, id: &TreeId) -> Result<Tree, Box<dyn std::error::Error + Send + Sync>>;
    fn chunk(&self, id: &ChunkId) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>>;
}

const BLOCK: usize = 512;
/// Largest value of an 8-byte octal ustar field (uid, gid).
const USTAR_ID_MAX: u64 = 0o7777777;
/// Largest value of a 12-byte octal ustar field (size, mtime).
const USTAR_BIG_MAX: u64 = 0o77777777777;

/// Writes the tree `root` as a PAX tar to `out` and returns `out`, without an entry for the
/// directory that holds the tree. `progress` is called with
/// the number of file bytes just written (a delta, not a running total).
#[cfg(test)]
pub fn export_tar<W: Write>(
    root: &TreeId,
    source: &dyn TreeSource,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<W, RootfsError> {
    let mut w = Writer { out };
    export_dir(&mut w, root, b"", source, progress)?;
    finish(w)
}

/// As [`export_tar`] for the directory node `dir`, preceded by a `./` entry that carries the
/// directory's own mode, owner, mtime and xattrs, so an import reproduces the directory too.
pub fn export_dir_tar<W: Write>(
    dir: &Node,
    source: &dyn TreeSource,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<W, RootfsError> {
    let Content::Dir { tree } = &dir.content else {
        return Err(RootfsError::BadTree {
            path: "the root".into(),
            reason: "it is not a directory".into(),
        });
    };
    let mut w = Writer { out };
    write_entry(&mut w, b".", dir, source, progress)?;
    export_dir(&mut w, tree, b"", source, progress)?;
    finish(w)
}

fn finish<W: Write>(mut w: Writer<W>) -> Result<W, RootfsError> {
    // End of archive: two zero blocks.
    w.write(&[0u8; 2 * BLOCK])?;
    w.out.flush().map_err(write_err)?;
    Ok(w.out)
}

struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), RootfsError> {
        self.out.write_all(bytes).map_err(write_err)
    }

    fn pad(&mut self, len: u64) -> Result<(), RootfsError> {
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            self.write(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }
}

fn write_err(e: std::io::Error) -> RootfsError {
    RootfsError::Io {
        path: "tar output".into(),
        op: "write",
        source: e,
    }
}

fn export_dir<W: Write>(
    w: &mut Writer<W>,
    id: &TreeId,
    prefix: &[u8],
    source: &dyn TreeSource,
    progress: &mut dyn FnMut(u64),
) -> Result<(), RootfsError> {
    let tree = source.tree(id).map_err(|e| RootfsError::Source {
        what: format!("tree {id} (for {:?})", show_dir(prefix)),
        source: e,
    })?;
    for entry in &tree.entries {
        let mut path = prefix.to_vec();
        path.extend_from_slice(&entry.name);
        write_entry(w, &path, &entry.node, source, progress)?;
        if let Content::Dir { tree } = &entry.node.content {
            path.push(b'/');
            export_dir(w, tree, &path, source, progress)?;
        }
    }
    Ok(())
}

fn show_dir(prefix: &[u8]) -> String {
    if prefix.is_empty() {
        "the root".into()
    } else {
        show(prefix)
    }
}

fn write_entry<W: Write>(
    w: &mut Writer<W>,
    path: &[u8],
    node: &Node,
    source: &dyn TreeSource,
    progress: &mut dyn FnMut(u64),
) -> Result<(), RootfsError> {
    let meta = &node.meta;
    let mut header = Header::new_ustar();
    let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut binary = false;

    let mut name = path.to_vec();
    let (etype, size) = match &node.content {
        Content::File { size, extents, .. } => {
            let total: u64 = extents.iter().map(|e| e.len()).sum();
            if total != *size {
                return Err(RootfsError::BadTree {
                    path: show(path),
                    reason: format!("extents cover {total} bytes but the size is {size}"),
                });
            }
            (EntryType::Regular, *size)
        }
        Content::Dir { .. } => {
            name.push(b'/');
            (EntryType::Directory, 0)
        }
        Content::Symlink { target } => {
            set_link(&mut header, &mut pax, &mut binary, target);
            (EntryType::Symlink, 0)
        }
        Content::Hardlink { target } => {
            set_link(&mut header, &mut pax, &mut binary, target);
            (EntryType::Link, 0)
        }
        Content::CharDev { rdev } | Content::BlockDev { rdev } => {
            let major = rustix::fs::major(*rdev);
            let minor = rustix::fs::minor(*rdev);
            let dev_err = |e: std::io::Error| RootfsError::BadTree {
                path: show(path),
                reason: format!("device number {major}:{minor} does not fit in tar: {e}"),
            };
            header.set_device_major(major).map_err(dev_err)?;
            header.set_device_minor(minor).map_err(dev_err)?;
            let t = if matches!(node.content, Content::CharDev { .. }) {
                EntryType::Char
            } else {
                EntryType::Block
            };
            (t, 0)
        }
        Content::Fifo => (EntryType::Fifo, 0),
    };

    put_name(
        &mut header.as_old_mut().name,
        &name,
        b"path",
        &mut pax,
        &mut binary,
    );
    header.set_entry_type(etype);
    header.set_mode(meta.mode & 0o7777);
    put_ids(&mut header, meta, &mut pax);
    put_mtime(&mut header, meta, &mut pax);
    header.set_size(size);
    if size > USTAR_BIG_MAX {
        pax.push((b"size".to_vec(), size.to_string().into_bytes()));
    }
    // Xattrs describe the inode; a hard link's leader already carried them.
    if !matches!(node.content, Content::Hardlink { .. }) {
        for x in &meta.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(&x.name);
            pax.push((key, x.value.clone()));
        }
    }
    if binary {
        pax.insert(0, (b"hdrcharset".to_vec(), b"BINARY".to_vec()));
    }
    if !pax.is_empty() {
        write_pax(w, &name, &pax)?;
    }
    header.set_cksum();
    w.write(header.as_bytes())?;

    if let Content::File { extents, .. } = &node.content {
        write_data(w, path, extents, source, progress)?;
        w.pad(size)?;
    }
    Ok(())
}

/// Puts `value` in a fixed ustar field if it fits; otherwise a truncated copy goes there (for
/// readers without PAX) and the full value into the PAX record `key`.
fn put_name(
    field: &mut [u8; 100],
    value: &[u8],
    key: &[u8],
    pax: &mut Vec<(Vec<u8>, Vec<u8>)>,
    binary: &mut bool,
) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
    if value.len() > field.len() {
        pax.push((key.to_vec(), value.to_vec()));
        *binary |= std::str::from_utf8(value).is_err();
    }
}

fn set_link(header: &mut Header, pax: &mut Vec<(Vec<u8>, Vec<u8>)>, binary: &mut bool, t: &[u8]) {
    put_name(
        &mut header.as_old_mut().linkname,
        t,
        b"linkpath",
        pax,
        binary,
    );
}

fn put_ids(header: &mut Header, meta: &Meta, pax: &mut Vec<(Vec<u8>, Vec<u8>)>) {
    for (value, key, is_uid) in [(meta.uid, "uid", true), (meta.gid, "gid", false)] {
        let v = u64::from(value);
        let fits = if v <= USTAR_ID_MAX { v } else { 0 };
        if is_uid {
            header.set_uid(fits);
        } else {
            header.set_gid(fits);
        }
        if v > USTAR_ID_MAX {
            pax.push((key.as_bytes().to_vec(), v.to_string().into_bytes()));
        }
    }
}

fn put_mtime(header: &mut Header, meta: &Meta, pax: &mut Vec<(Vec<u8>, Vec<u8>)>) {
    let t = meta.mtime;
    let in_range = t.secs >= 0 && (t.secs as u64) <= USTAR_BIG_MAX;
    header.set_mtime(if in_range { t.secs as u64 } else { 0 });
    if t.nanos != 0 || !in_range {
        pax.push((
            b"mtime".to_vec(),
            format_pax_time(t.secs, t.nanos).into_bytes(),
        ));
    }
}

/// `secs.nanos` as PAX writes it; before the epoch the fraction counts the other way
/// (secs -2, nanos 500000000 is `-1.5`).
fn format_pax_time(secs: i64, nanos: u32) -> String {
    if secs >= 0 || nanos == 0 {
        return format!("{secs}.{nanos:09}");
    }
    let whole = (secs + 1).unsigned_abs();
    format!("-{whole}.{:09}", 1_000_000_000 - nanos)
}

/// Writes a PAX extended header (`x`) describing the entry that follows.
fn write_pax<W: Write>(
    w: &mut Writer<W>,
    name: &[u8],
    records: &[(Vec<u8>, Vec<u8>)],
) -> Result<(), RootfsError> {
    let mut body = Vec::new();
    for (k, v) in records {
        // "LEN KEY=VALUE\n" where LEN counts its own digits too.
        let rest = k.len() + v.len() + 3;
        let mut len = rest + 1;
        while len.to_string().len() + rest > len {
            len += 1;
        }
        body.extend_from_slice(len.to_string().as_bytes());
        body.push(b' ');
        body.extend_from_slice(k);
        body.push(b'=');
        body.extend_from_slice(v);
        body.push(b'\n');
    }
    let mut header = Header::new_ustar();
    let mut hname = b"PaxHeaders/".to_vec();
    hname.extend_from_slice(name);
    let n = hname.len().min(100);
    header.as_old_mut().name[..n].copy_from_slice(&hname[..n]);
    header.set_entry_type(EntryType::XHeader);
    header.set_mode(0o644);
    header.set_size(body.len() as u64);
    header.set_cksum();
    w.write(header.as_bytes())?;
    w.write(&body)?;
    w.pad(body.len() as u64)
}

fn write_data<W: Write>(
    w: &mut Writer<W>,
    path: &[u8],
    extents: &[super::super::model::Extent],
    source: &dyn TreeSource,
    progress: &mut dyn FnMut(u64),
) -> Result<(), RootfsError> {
    use super::super::model::Extent;
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    for extent in extents {
        match *extent {
            Extent::Data { id, len } => {
                let data = source.chunk(&id).map_err(|e| RootfsError::Source {
                    what: format!("chunk {id} of {:?}", show(path)),
                    source: e,
                })?;
                if data.len() as u64 != len {
                    return Err(RootfsError::BadTree {
                        path: show(path),
                        reason: format!(
                            "chunk {id} has {} bytes but the extent says {len}",
                            data.len()
                        ),
                    });
                }
                w.write(&data)?;
                progress(len);
            }
            Extent::Hole { len } => {
                let mut left = len;
                while left > 0 {
                    let n = left.min(ZEROS.len() as u64);
                    w.write(&ZEROS[..n as usize])?;
                    progress(n);
                    left -= n;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_time_format_matches_what_import_parses() {
        assert_eq!(format_pax_time(12, 500_000_000), "12.500000000");
        assert_eq!(format_pax_time(-2, 500_000_000), "-1.500000000");
        assert_eq!(format_pax_time(-1, 1), "-0.999999999");
        assert_eq!(format_pax_time(-3, 0), "-3.000000000");
    }
}
