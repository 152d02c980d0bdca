//! Test helpers: a fixture tree with every kind of entry and attribute, and a small in-memory
//! ingest/materialize over the `Dir` API so round trips can compare trees by id.

use super::super::model::{ChunkId, Content, Entry, Extent, Meta, Node, Tree, TreeId, encode_tree};
use super::{ApplyOptions, Dir, FileKind, TreeSource, data_regions, meta_from_stat, set_meta_fd};
use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub(super) type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// Trees and chunks in memory.
#[derive(Default)]
pub(super) struct MemSource {
    pub trees: HashMap<TreeId, Tree>,
    pub chunks: HashMap<ChunkId, Vec<u8>>,
}

impl TreeSource for MemSource {
    fn tree(&self, id: &TreeId) -> Result<Tree, BoxErr> {
        self.trees
            .get(id)
            .cloned()
            .ok_or_else(|| format!("no tree {id}").into())
    }
    fn chunk(&self, id: &ChunkId) -> Result<Vec<u8>, BoxErr> {
        self.chunks
            .get(id)
            .cloned()
            .ok_or_else(|| format!("no chunk {id}").into())
    }
}

pub(super) fn p(base: &Path, rel: &[u8]) -> PathBuf {
    base.join(OsStr::from_bytes(rel))
}

/// A file of `len` non-zero bytes (so import never mistakes any block for a hole).
pub(super) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

pub(super) const LONG_NAME: &[u8] = b"a-name-long-enough-that-the-path-needs-a-pax-record-because-ustar-holds-one-hundred-bytes-only-xxxxxxxxxxxxxxxx";
pub(super) const CAPABILITY: [u8; 20] = [
    0, 0, 0, 2, // VFS_CAP_REVISION_2 (little-endian 0x02000000), no effective bit
    0, 4, 0, 0, // permitted: CAP_NET_BIND_SERVICE (bit 10)
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];
/// user::rw- user:1000:r-- group::r-- mask::r-- other::r--
pub(super) const ACL: [u8; 44] = [
    2, 0, 0, 0, // version 2
    1, 0, 6, 0, 255, 255, 255, 255, // USER_OBJ rw-
    2, 0, 4, 0, 232, 3, 0, 0, // USER 1000 r--
    4, 0, 4, 0, 255, 255, 255, 255, // GROUP_OBJ r--
    16, 0, 4, 0, 255, 255, 255, 255, // MASK r--
    32, 0, 4, 0, 255, 255, 255, 255, // OTHER r--
];

/// Builds a tree at `root` with nested dirs, a sparse file, hard links across directories,
/// symlinks (relative, dangling, absolute, long), devices, a fifo, setuid/setgid/sticky bits,
/// foreign owners, xattrs in every namespace, POSIX ACLs, odd names, and nanosecond mtimes.
pub(super) fn build_fixture(root: &Path) {
    let mkdir = |rel: &[u8], mode: u32| {
        rustix::fs::mkdir(p(root, rel), Mode::from_raw_mode(0o755)).expect("fixture mkdir");
        rustix::fs::chmod(p(root, rel), Mode::from_raw_mode(mode)).expect("fixture chmod");
    };
    let write = |rel: &[u8], data: &[u8], mode: u32| {
        std::fs::write(p(root, rel), data).expect("fixture write");
        rustix::fs::chmod(p(root, rel), Mode::from_raw_mode(mode)).expect("fixture chmod");
    };
    let xattr = |rel: &[u8], name: &str, value: &[u8]| {
        rustix::fs::lsetxattr(p(root, rel), name, value, rustix::fs::XattrFlags::empty())
            .unwrap_or_else(|e| panic!("fixture xattr {name}: {e}"));
    };
    mkdir(b"d1", 0o755);
    mkdir(b"d1/d2", 0o750);
    mkdir(b"d1/d2/d3", 0o700);
    write(b"d1/d2/d3/deep.txt", &pattern(10_000, 3), 0o640);
    write(b"d1/file.txt", &pattern(5000, 1), 0o644);
    mkdir(b"other", 0o755);
    rustix::fs::link(p(root, b"d1/file.txt"), p(root, b"other/hardlink")).expect("link");
    rustix::fs::link(p(root, b"d1/file.txt"), p(root, b"zz-hardlink")).expect("link");

    // Sparse: data, a 1 MiB hole, data, then a trailing hole up to 3 MiB.
    let sparse = std::fs::File::create(p(root, b"sparse.img")).expect("create sparse");
    sparse.write_all_at(&pattern(4096, 7), 0).expect("write");
    sparse
        .write_all_at(&pattern(5000, 9), 1 << 20)
        .expect("write");
    sparse.set_len(3 << 20).expect("set_len");
    drop(sparse);

    std::os::unix::fs::symlink("d1/file.txt", p(root, b"rel-link")).expect("symlink");
    std::os::unix::fs::symlink("nowhere/at/all", p(root, b"dangling")).expect("symlink");
    std::os::unix::fs::symlink("/etc/passwd", p(root, b"abs-link")).expect("symlink");
    let long_target = "t/".repeat(100);
    std::os::unix::fs::symlink(&long_target, p(root, b"long-link")).expect("symlink");

    mkdir(b"dev", 0o755);
    let node = |rel: &[u8], ft: FileType, dev: u64| {
        rustix::fs::mknodat(CWD, p(root, rel), ft, Mode::from_raw_mode(0o620), dev)
            .expect("fixture mknod");
    };
    node(
        b"dev/char",
        FileType::CharacterDevice,
        rustix::fs::makedev(1, 3),
    );
    node(
        b"dev/block",
        FileType::BlockDevice,
        rustix::fs::makedev(7, 300),
    );
    node(b"dev/fifo", FileType::Fifo, 0);

    write(b"suid", &pattern(100, 2), 0o4755);
    mkdir(b"sgid-dir", 0o2775);
    mkdir(b"sticky", 0o1777);
    write(b"owned", &pattern(10, 4), 0o600);
    rustix::fs::chown(
        p(root, b"owned"),
        Some(rustix::fs::Uid::from_raw(1234)),
        Some(rustix::fs::Gid::from_raw(5678)),
    )
    .expect("chown");
    rustix::fs::chownat(
        CWD,
        p(root, b"abs-link"),
        Some(rustix::fs::Uid::from_raw(4321)),
        Some(rustix::fs::Gid::from_raw(8765)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .expect("lchown");

    write(b"xattrs", &pattern(300, 5), 0o755);
    xattr(b"xattrs", "user.comment", b"hello\0binary\xff");
    xattr(b"xattrs", "trusted.cairn", b"t");
    xattr(b"xattrs", "security.capability", &CAPABILITY);
    write(b"acl", &pattern(30, 6), 0o644);
    xattr(b"acl", "system.posix_acl_access", &ACL);
    xattr(b"sgid-dir", "system.posix_acl_default", &ACL);
    xattr(b"sgid-dir", "user.dir", b"on a directory");
    xattr(b"rel-link", "trusted.on-symlink", b"link's own");

    write(b"new\nline", &pattern(20, 8), 0o644);
    write(b"bad-utf8-\xff\xfe", &pattern(20, 9), 0o644);
    mkdir(b"\xc3(dir", 0o755);
    write(&[b"\xc3(dir/", LONG_NAME].concat(), &pattern(20, 10), 0o644);

    let mut n = 0;
    set_times(root, &mut n);
}

/// Gives every entry below `dir` a distinct mtime with nanoseconds, children before parents.
fn set_times(dir: &Path, n: &mut u32) {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let st = std::fs::symlink_metadata(&path).expect("lstat");
        if st.is_dir() {
            set_times(&path, n);
        }
        *n += 1;
        let t = Timespec {
            tv_sec: 1_600_000_000 + i64::from(*n) * 1000,
            tv_nsec: (i64::from(*n) * 123_456_789 + 1) % 1_000_000_000,
        };
        let ts = Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(CWD, &path, &ts, AtFlags::SYMLINK_NOFOLLOW).expect("utimensat");
    }
}

/// Reads the tree under `root` into memory, as the engine's ingest would.
pub(super) fn ingest(root: &Dir) -> (TreeId, MemSource) {
    let mut src = MemSource::default();
    let mut leaders = HashMap::new();
    let id = ingest_dir(root, b"", &mut src, &mut leaders);
    (id, src)
}

fn ingest_dir(
    dir: &Dir,
    prefix: &[u8],
    src: &mut MemSource,
    leaders: &mut HashMap<(u64, u64), Vec<u8>>,
) -> TreeId {
    let mut tree = Tree::default();
    for e in dir.entries().expect("entries") {
        let path = [prefix, &e.name].concat();
        let name = e.name.as_slice();
        let (content, xattrs) = match e.kind {
            FileKind::Dir => {
                let child = dir.open_dir(name).expect("open_dir");
                let sub = ingest_dir(&child, &[&path[..], b"/"].concat(), src, leaders);
                (
                    Content::Dir { tree: sub },
                    child.read_dir_xattrs().expect("xattrs"),
                )
            }
            FileKind::File => {
                let xattrs = dir.read_xattrs(name, e.kind).expect("xattrs");
                let key = (e.stat.dev, e.stat.ino);
                if let Some(leader) = leaders.get(&key).filter(|_| e.stat.nlink > 1) {
                    (
                        Content::Hardlink {
                            target: leader.clone(),
                        },
                        xattrs,
                    )
                } else {
                    leaders.insert(key, path.clone());
                    let f = dir.open_file(name).expect("open_file");
                    let size = e.stat.size;
                    let regions = data_regions(&f, size, e.stat.blocks).expect("regions");
                    let mut extents = Vec::new();
                    let mut pos = 0;
                    for (off, len) in regions {
                        if off > pos {
                            extents.push(Extent::Hole { len: off - pos });
                        }
                        let mut buf = vec![0; len as usize];
                        f.read_exact_at(&mut buf, off).expect("read");
                        let id = ChunkId::of(&buf);
                        src.chunks.insert(id, buf);
                        extents.push(Extent::Data { id, len });
                        pos = off + len;
                    }
                    if size > pos {
                        extents.push(Extent::Hole { len: size - pos });
                    }
                    let nlink = u32::try_from(e.stat.nlink).expect("nlink");
                    (
                        Content::File {
                            size,
                            nlink,
                            extents,
                        },
                        xattrs,
                    )
                }
            }
            FileKind::Symlink => (
                Content::Symlink {
                    target: dir.read_link(name).expect("readlink"),
                },
                dir.read_xattrs(name, e.kind).expect("xattrs"),
            ),
            FileKind::CharDev => (
                Content::CharDev { rdev: e.stat.rdev },
                dir.read_xattrs(name, e.kind).expect("xattrs"),
            ),
            FileKind::BlockDev => (
                Content::BlockDev { rdev: e.stat.rdev },
                dir.read_xattrs(name, e.kind).expect("xattrs"),
            ),
            FileKind::Fifo => (
                Content::Fifo,
                dir.read_xattrs(name, e.kind).expect("xattrs"),
            ),
            FileKind::Socket => continue,
        };
        let meta = meta_from_stat(&e.stat, xattrs);
        tree.entries.push(Entry {
            name: e.name.clone(),
            node: Node { meta, content },
        });
    }
    let (id, _) = encode_tree(&tree).expect("encode");
    src.trees.insert(id, tree);
    id
}

/// Writes tree `id` into `root`, as the engine's materialize would.
pub(super) fn materialize(src: &MemSource, id: &TreeId, root: &Dir, opts: &ApplyOptions) {
    materialize_dir(src, id, root, root, opts);
}

fn materialize_dir(src: &MemSource, id: &TreeId, dir: &Dir, root: &Dir, opts: &ApplyOptions) {
    let tree = &src.trees[id];
    for e in &tree.entries {
        let name = e.name.as_slice();
        let meta: &Meta = &e.node.meta;
        match &e.node.content {
            Content::File { size, extents, .. } => {
                let file = dir
                    .write_file(name, |f| {
                        let mut off = 0;
                        for x in extents {
                            if let Extent::Data { id, .. } = x {
                                f.write_all_at(&src.chunks[id], off).expect("write");
                            }
                            off += x.len();
                        }
                        f.set_len(*size).expect("set_len");
                        Ok(())
                    })
                    .expect("write_file");
                set_meta_fd(&file, meta, opts).expect("set_meta_fd");
            }
            Content::Dir { tree } => {
                let child = dir.create_dir(name, 0o700).expect("create_dir");
                materialize_dir(src, tree, &child, root, opts);
                child.set_own_meta(meta, opts).expect("set_own_meta");
            }
            Content::Symlink { target } => {
                dir.symlink(name, target).expect("symlink");
                dir.set_meta(name, FileKind::Symlink, meta, opts)
                    .expect("meta");
            }
            Content::Hardlink { target } => {
                let comps: Vec<&[u8]> = target.split(|&b| b == b'/').collect();
                let (leaf, parents) = comps.split_last().expect("non-empty target");
                let mut tdir = root.try_clone().expect("clone");
                for c in parents {
                    tdir = tdir.open_dir(c).expect("open leader dir");
                }
                dir.hardlink(&tdir, leaf, name).expect("hardlink");
            }
            Content::CharDev { rdev } | Content::BlockDev { rdev } => {
                let kind = if matches!(e.node.content, Content::CharDev { .. }) {
                    FileKind::CharDev
                } else {
                    FileKind::BlockDev
                };
                dir.mknod(name, kind, *rdev, meta.mode).expect("mknod");
                dir.set_meta(name, kind, meta, opts).expect("meta");
            }
            Content::Fifo => {
                dir.mknod(name, FileKind::Fifo, 0, meta.mode)
                    .expect("mkfifo");
                dir.set_meta(name, FileKind::Fifo, meta, opts)
                    .expect("meta");
            }
        }
    }
}

/// Asserts two stored trees are equal entry by entry (for a readable failure), then by id.
pub(super) fn assert_same_tree(a: &MemSource, ia: &TreeId, b: &MemSource, ib: &TreeId, at: &str) {
    let (ta, tb) = (&a.trees[ia], &b.trees[ib]);
    let names = |t: &Tree| t.entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(ta), names(tb), "entry names differ in {at:?}");
    for (ea, eb) in ta.entries.iter().zip(&tb.entries) {
        let path = format!("{at}/{}", String::from_utf8_lossy(&ea.name));
        assert_eq!(ea.node.meta, eb.node.meta, "metadata differs at {path:?}");
        match (&ea.node.content, &eb.node.content) {
            (Content::Dir { tree: x }, Content::Dir { tree: y }) => {
                assert_same_tree(a, x, b, y, &path);
            }
            (x, y) => assert_eq!(x, y, "content differs at {path:?}"),
        }
    }
    assert_eq!(ia, ib, "tree ids differ in {at:?}");
}

/// Counts nodes by kind over the whole tree, to prove a fixture really has what it claims.
pub(super) fn count_kinds(src: &MemSource, id: &TreeId, out: &mut HashMap<&'static str, usize>) {
    for e in &src.trees[id].entries {
        let k = match &e.node.content {
            Content::File { extents, .. }
                if extents.iter().any(|x| matches!(x, Extent::Hole { .. })) =>
            {
                "sparse"
            }
            Content::File { .. } => "file",
            Content::Dir { tree } => {
                count_kinds(src, tree, out);
                "dir"
            }
            Content::Symlink { .. } => "symlink",
            Content::Hardlink { .. } => "hardlink",
            Content::CharDev { .. } => "char",
            Content::BlockDev { .. } => "block",
            Content::Fifo => "fifo",
        };
        *out.entry(k).or_default() += 1;
    }
}
