//! The FUSE operations of a read-only view over one tree.
//!
//! Every answer comes from immutable data, so the kernel is told to cache entries, attributes,
//! directory listings, symlink targets and file pages for as long as it likes. Anything that
//! would change the tree answers `EROFS`; nothing here ever writes to the store.

use super::blobs::Blobs;
use super::data::DataLayer;
use super::escape::{self, Asked, Escape};
use super::inodes::session_generation;
use super::inodes::{Inode, Inodes};
use super::xattrscan::XattrScan;
use super::{MountError, Requests};
use crate::engine::join_path;
use crate::model::{Content, Entry, Extent, Node, Timestamp, Tree};
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the kernel may trust an entry or attribute. The tree never changes, so this is as
/// long as the kernel will keep anything.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// What directories report as their size and `st_blksize` everywhere: one ordinary block.
const BLOCK: u32 = 4096;

pub(super) struct ViewFs {
    blobs: Arc<Blobs>,
    xattrs: Arc<XattrScan>,
    inodes: Inodes,
    /// The machine directory: hardlink targets are paths from it, even when the view shows
    /// only a subtree.
    top: Node,
    requests: Arc<Requests>,
    /// The host ids the tree's owners show as (`MountOptions::ids`).
    ids: Option<crate::sandbox::IdMap>,
    /// The generation of every inode this session hands out. Inode numbers are given in
    /// lookup order, so the same number names other files in another session; overlayfs
    /// records copied-up files' lower file handles (number and generation) and decodes them
    /// on later lookups. A generation of its own per session makes a handle from an earlier
    /// one stale here (the kernel compares generations) instead of naming the wrong file.
    generation: Generation,
    /// Where overlayfs finds whole copies of the larger files (`data.rs`), for the lower
    /// layer of a machine run by root.
    data: Option<DataLayer>,
    /// How the tree's overlay attributes are served to the overlay above (`escape.rs`).
    escape: Option<Escape>,
}

impl ViewFs {
    /// A view whose root is `root`, found at `path` below the machine directory `top`.
    pub(super) fn new(
        blobs: Arc<Blobs>,
        xattrs: Arc<XattrScan>,
        top: Node,
        path: Vec<u8>,
        root: Node,
        requests: Arc<Requests>,
    ) -> ViewFs {
        ViewFs {
            blobs,
            xattrs,
            inodes: Inodes::with_root(path, root),
            top,
            requests,
            ids: None,
            generation: session_generation(),
            data: None,
            escape: None,
        }
    }

    /// Shows the tree's owners as the host ids `ids` maps them to.
    pub(super) fn with_ids(mut self, ids: Option<crate::sandbox::IdMap>) -> ViewFs {
        self.ids = ids;
        self
    }

    /// Names the data layer's copies to overlayfs (see `data.rs`).
    pub(super) fn with_data(mut self, data: Option<DataLayer>) -> ViewFs {
        self.data = data;
        self
    }

    /// Serves the tree's overlay attributes escaped (see `escape.rs`).
    pub(super) fn with_escape(mut self, escape: Option<Escape>) -> ViewFs {
        self.escape = escape;
        self
    }

    fn inode(&self, ino: INodeNo) -> Result<Arc<Inode>, Errno> {
        // The kernel only names numbers it was given, so an unknown one is its bug or ours.
        self.inodes.get(ino.0).ok_or(Errno::ESTALE)
    }

    fn tree_of(&self, inode: &Inode) -> Result<Arc<Tree>, Errno> {
        if let Some(t) = inode.tree.get() {
            return Ok(Arc::clone(t));
        }
        let Content::Dir { tree } = inode.node.content else {
            return Err(Errno::ENOTDIR);
        };
        let t = self.blobs.tree(tree).map_err(|e| eio(&inode.path, &e))?;
        Ok(Arc::clone(inode.tree.get_or_init(|| t)))
    }

    /// The inode of entry `e` of directory `dir`.
    fn child(&self, dir: &Inode, e: &Entry) -> Result<Arc<Inode>, Errno> {
        match &e.node.content {
            Content::Hardlink { target } => {
                if let Some(i) = self.inodes.known(target) {
                    return Ok(i);
                }
                let leader = self.leader(target)?;
                Ok(self.inodes.intern(target.clone(), dir.ino, || leader))
            }
            _ => Ok(self
                .inodes
                .intern(join_path(&dir.path, &e.name), dir.ino, || e.node.clone())),
        }
    }

    /// The `File` node a hardlink names, found from the machine directory.
    fn leader(&self, target: &[u8]) -> Result<Node, Errno> {
        let broken = |reason: &str| {
            let e = MountError::BrokenHardlink {
                target: String::from_utf8_lossy(target).into_owned(),
                reason: reason.to_owned(),
            };
            eio(target, &e)
        };
        let mut node = self.top.clone();
        for c in target.split(|&b| b == b'/') {
            let Content::Dir { tree } = node.content else {
                return Err(broken("a component is not a directory"));
            };
            let t = self.blobs.tree(tree).map_err(|e| eio(target, &e))?;
            node = match t.get(c) {
                Some(e) => e.node.clone(),
                None => return Err(broken("no such path in the tree")),
            };
        }
        match node.content {
            Content::File { .. } => Ok(node),
            _ => Err(broken("it is not a regular file")),
        }
    }

    fn attr(&self, inode: &Inode) -> Result<FileAttr, Errno> {
        let (kind, size, blocks, nlink, rdev) = match &inode.node.content {
            Content::File {
                size,
                nlink,
                extents,
            } => {
                let data: u64 = extents
                    .iter()
                    .filter(|x| matches!(x, Extent::Data { .. }))
                    .map(Extent::len)
                    .sum();
                (FileType::RegularFile, *size, data.div_ceil(512), *nlink, 0)
            }
            Content::Dir { .. } => {
                let t = self.tree_of(inode)?;
                let subdirs = t
                    .entries
                    .iter()
                    .filter(|e| matches!(e.node.content, Content::Dir { .. }))
                    .count();
                let nlink = u32::try_from(subdirs + 2).unwrap_or(u32::MAX);
                (FileType::Directory, u64::from(BLOCK), 8, nlink, 0)
            }
            Content::Symlink { target } => (FileType::Symlink, target.len() as u64, 0, 1, 0),
            Content::CharDev { rdev } => (FileType::CharDevice, 0, 0, 1, kernel_rdev(*rdev)),
            Content::BlockDev { rdev } => (FileType::BlockDevice, 0, 0, 1, kernel_rdev(*rdev)),
            Content::Fifo => (FileType::NamedPipe, 0, 0, 1, 0),
            // `child` replaces every hardlink by its leader before it becomes an inode.
            Content::Hardlink { .. } => return Err(Errno::EIO),
        };
        let m = &inode.node.meta;
        let t = system_time(m.mtime);
        Ok(FileAttr {
            ino: INodeNo(inode.ino),
            size,
            blocks,
            // The tree keeps one time; access and change times show it too.
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm: (m.mode & 0o7777) as u16,
            nlink: nlink.max(1),
            uid: self
                .ids
                .as_ref()
                .and_then(|ids| ids.host_uid(m.uid))
                .unwrap_or(m.uid),
            gid: self
                .ids
                .as_ref()
                .and_then(|ids| ids.host_gid(m.gid))
                .unwrap_or(m.gid),
            rdev,
            blksize: BLOCK,
            flags: 0,
        })
    }

    fn lookup_attr(&self, parent: INodeNo, name: &[u8]) -> Result<Option<FileAttr>, Errno> {
        let dir = self.inode(parent)?;
        let tree = self.tree_of(&dir)?;
        match tree.get(name) {
            Some(e) => Ok(Some(self.attr(&*self.child(&dir, e)?)?)),
            None => Ok(None),
        }
    }

    /// Walks directory `ino` from `offset`, calling `add` for each entry until it says the
    /// reply is full. Offsets: 1 is `.`, 2 is `..`, 3 + i is entry i; each names the entry
    /// after it.
    fn list(
        &self,
        ino: INodeNo,
        offset: u64,
        mut add: impl FnMut(Listed<'_>) -> bool,
    ) -> Result<(), Errno> {
        let dir = self.inode(ino)?;
        let tree = self.tree_of(&dir)?;
        for (at, name) in [(1, "."), (2, "..")] {
            if offset >= at {
                continue;
            }
            let inode = match at {
                1 => Arc::clone(&dir),
                _ => self.inode(INodeNo(dir.parent))?,
            };
            let full = add(Listed {
                inode,
                offset: at,
                kind: FileType::Directory,
                name: OsStr::new(name),
            });
            if full {
                return Ok(());
            }
        }
        for (i, e) in tree
            .entries
            .iter()
            .enumerate()
            .skip(offset.saturating_sub(2) as usize)
        {
            let full = add(Listed {
                inode: self.child(&dir, e)?,
                offset: i as u64 + 3,
                kind: file_type(&e.node),
                name: OsStr::from_bytes(&e.name),
            });
            if full {
                break;
            }
        }
        Ok(())
    }

    fn read_range(&self, ino: INodeNo, offset: u64, size: u32, reply: ReplyData) {
        let inode = match self.inode(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        let Content::File {
            size: file_size,
            extents,
            ..
        } = &inode.node.content
        else {
            return reply.error(Errno::EISDIR);
        };
        let end = offset.saturating_add(u64::from(size)).min(*file_size);
        if offset >= end {
            return reply.data(&[]);
        }
        let starts = &inode.starts;
        // The extent holding `offset`: the last one starting at or before it.
        let mut i = starts.partition_point(|&s| s <= offset) - 1;
        let mut out: Vec<u8> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let (x, x_start) = (&extents[i], starts[i]);
            let upto = end.min(x_start + x.len());
            match x {
                Extent::Data { id, len } => {
                    let chunk = match self.blobs.chunk(*id) {
                        Ok(c) if c.len() as u64 == *len => c,
                        Ok(_) => {
                            let e = MountError::BadChunk {
                                id: id.short(),
                                reason: "its length differs from the extent naming it".to_owned(),
                            };
                            return reply.error(eio(&inode.path, &e));
                        }
                        Err(e) => return reply.error(eio(&inode.path, &e)),
                    };
                    let piece = &chunk[(pos - x_start) as usize..(upto - x_start) as usize];
                    if out.is_empty() && upto == end {
                        // The whole request lies in one chunk: no copy of our own.
                        return reply.data(piece);
                    }
                    out.extend_from_slice(piece);
                }
                Extent::Hole { .. } => out.resize(out.len() + (upto - pos) as usize, 0),
            }
            pos = upto;
            i += 1;
        }
        reply.data(&out)
    }

    /// `SEEK_DATA` / `SEEK_HOLE` from the extents, so sparse files look sparse through the view.
    fn seek(&self, ino: INodeNo, offset: i64, whence: i32) -> Result<i64, Errno> {
        let inode = self.inode(ino)?;
        let Content::File { size, extents, .. } = &inode.node.content else {
            return Err(Errno::EINVAL);
        };
        let off = u64::try_from(offset).map_err(|_| Errno::ENXIO)?;
        if off >= *size {
            return Err(Errno::ENXIO);
        }
        let want_data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return Err(Errno::EINVAL),
        };
        let first = inode.starts.partition_point(|&s| s <= off) - 1;
        for (x, &start) in extents[first..].iter().zip(&inode.starts[first..]) {
            if matches!(x, Extent::Data { .. }) == want_data {
                return Ok(start.max(off) as i64);
            }
        }
        // Past the last data there is no data; every file ends in an implicit hole.
        if want_data {
            Err(Errno::ENXIO)
        } else {
            Ok(*size as i64)
        }
    }
}

/// Logs what went wrong behind an `EIO`, since the reader only sees the errno.
fn eio(path: &[u8], e: &MountError) -> Errno {
    tracing::error!("read of /{} failed: {e}", String::from_utf8_lossy(path));
    Errno::EIO
}

fn system_time(t: Timestamp) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(t.nanos));
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(t.secs as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs()) + nanos
    }
}

/// A device number as `stat` gives it, re-encoded the way the FUSE protocol carries it (the
/// kernel's 32-bit `new_encode_dev`: 12-bit major, 20-bit minor).
fn kernel_rdev(rdev: u64) -> u32 {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// One entry of a listing, as `ViewFs::list` hands it out.
struct Listed<'a> {
    inode: Arc<Inode>,
    offset: u64,
    kind: FileType,
    name: &'a OsStr,
}

fn file_type(node: &Node) -> FileType {
    match node.content {
        Content::File { .. } | Content::Hardlink { .. } => FileType::RegularFile,
        Content::Dir { .. } => FileType::Directory,
        Content::Symlink { .. } => FileType::Symlink,
        Content::CharDev { .. } => FileType::CharDevice,
        Content::BlockDev { .. } => FileType::BlockDevice,
        Content::Fifo => FileType::NamedPipe,
    }
}

/// Answers an xattr request: the size when asked for it, `ERANGE` when the buffer is short.
fn xattr_reply(bytes: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(bytes.len() as u32);
    } else if (size as usize) < bytes.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(bytes);
    }
}

impl Filesystem for ViewFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // POSIX ACLs: the kernel evaluates `system.posix_acl_*` itself (and this turns on
        // `default_permissions` semantics), so permissions through the view are what they were
        // on the machine. Without it the kernel would still pass the xattrs through but ignore
        // them when checking access. The others only save round trips.
        for cap in [
            InitFlags::FUSE_POSIX_ACL,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
        ] {
            if config.add_capabilities(cap).is_err() {
                tracing::debug!("the kernel does not offer {cap:?}");
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        Requests::count(&self.requests.lookup);
        match self.lookup_attr(parent, name.as_bytes()) {
            Ok(Some(attr)) => reply.entry(&TTL, &attr, self.generation),
            // Node id 0 is a negative entry the kernel caches for the TTL: absent stays absent.
            Ok(None) => reply.entry(&TTL, &negative_attr(), self.generation),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        Requests::count(&self.requests.getattr);
        match self.inode(ino).and_then(|i| self.attr(&i)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.inode(ino) {
            Ok(i) => match &i.node.content {
                Content::Symlink { target } => reply.data(target),
                _ => reply.error(Errno::EINVAL),
            },
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        Requests::count(&self.requests.open);
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.inode(ino) {
            // `ENOSYS` tells the kernel that opens need no server: it stops sending OPEN,
            // FLUSH and RELEASE for every file from now on and keeps each file's pages across
            // opens (`FOPEN_KEEP_CACHE` is its default then), which is right for a tree that
            // cannot change. A warm open then never leaves the kernel. Reads name the inode,
            // not a handle, so nothing here needs one; writes are refused by the read-only
            // mount before they could reach us.
            Ok(_) => reply.error(Errno::ENOSYS),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        Requests::count(&self.requests.read);
        self.read_range(ino, offset, size, reply);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.seek(ino, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        Requests::count(&self.requests.opendir);
        match self.inode(ino) {
            // As for files: no OPENDIR or RELEASEDIR from now on, and listings stay cached
            // across opens (the kernel's default is then `FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE`).
            Ok(_) => reply.error(Errno::ENOSYS),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        Requests::count(&self.requests.readdir);
        match self.list(ino, offset, |e| {
            reply.add(INodeNo(e.inode.ino), e.offset, e.kind, e.name)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// A listing with every entry's attributes, so that walking a tree (`find`, `du`, a
    /// backup, `ls -l`) costs no LOOKUP per entry: the kernel enters each name in its cache
    /// from the reply. It asks for this form only while it sees lookups follow listings.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        Requests::count(&self.requests.readdirplus);
        let mut failed = None;
        let listed = self.list(ino, offset, |e| match self.attr(&e.inode) {
            Ok(attr) => reply.add(
                INodeNo(e.inode.ino),
                e.offset,
                e.name,
                &TTL,
                &attr,
                self.generation,
            ),
            Err(err) => {
                failed = Some(err);
                true
            }
        });
        match failed.map_or(listed, Err) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Nothing is free: the view is read-only.
        reply.statfs(0, 0, 0, 0, 0, BLOCK, 255, BLOCK);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        Requests::count(&self.requests.getxattr);
        if self.xattrs.none() && self.data.is_none() {
            // No xattr anywhere in the tree: the kernel stops asking (see `xattrscan`). With a
            // data layer it must keep asking, for the overlay attributes of copied files.
            return reply.error(Errno::ENOSYS);
        }
        let inode = match self.inode(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        if let Some(v) = self
            .data
            .as_ref()
            .and_then(|d| d.overlay_xattr(&inode.node, name.as_bytes()))
        {
            return xattr_reply(&v, size, reply);
        }
        let Asked::Tree(name) = escape::asked(self.escape, name.as_bytes()) else {
            return reply.error(Errno::ENODATA);
        };
        let xattrs = &inode.node.meta.xattrs;
        match xattrs.binary_search_by(|x| x.name.as_slice().cmp(&name)) {
            Ok(i) => xattr_reply(&xattrs[i].value, size, reply),
            Err(_) => reply.error(Errno::ENODATA),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let inode = match self.inode(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        let mut names = Vec::new();
        for x in &inode.node.meta.xattrs {
            names.extend_from_slice(&escape::served(self.escape, &x.name));
            names.push(0);
        }
        xattr_reply(&names, size, reply);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // Only reached without `default_permissions`; the kernel checks the bits otherwise.
        match self.inode(ino) {
            Ok(_) if mask.contains(AccessFlags::W_OK) => reply.error(Errno::EROFS),
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    // Everything below would change the tree. The mount is read-only, so the kernel refuses
    // these itself; the answers stand in case it ever asks.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
}

/// The attributes of a negative entry; only `ino` (0) matters to the kernel.
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLOCK,
        flags: 0,
    }
}

#[cfg(test)]
#[path = "fs_tests.rs"]
mod tests;
