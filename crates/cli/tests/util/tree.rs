//! `TestDir` builds trees with every kind of entry and attribute cairn promises to keep;
//! `snapshot` captures all of them so a restored tree can be compared exactly.
//!
//! This is the test-side twin of the engine's unit-test fixture, which is private to its crate.

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// `security.capability` granting CAP_NET_BIND_SERVICE (VFS_CAP_REVISION_2, not effective).
pub const CAPABILITY: [u8; 20] = [
    0, 0, 0, 2, // revision 2, little-endian
    0, 4, 0, 0, // permitted: bit 10
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];
/// `system.posix_acl_access`: user::rw- user:1000:r-- group::r-- mask::r-- other::r--
pub const ACL: [u8; 44] = [
    2, 0, 0, 0, // version 2
    1, 0, 6, 0, 255, 255, 255, 255, // USER_OBJ rw-
    2, 0, 4, 0, 232, 3, 0, 0, // USER 1000 r--
    4, 0, 4, 0, 255, 255, 255, 255, // GROUP_OBJ r--
    16, 0, 4, 0, 255, 255, 255, 255, // MASK r--
    32, 0, 4, 0, 255, 255, 255, 255, // OTHER r--
];

/// A small, seedable xorshift generator: tests print the seed so a failure can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Deterministic bytes with no zero byte (so no block ever looks like a hole) that zstd cannot
/// shrink much, so packs grow as fast as the data.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&(rng.next() | 0x0101_0101_0101_0101).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A directory tree under construction. Paths are relative byte strings (`b"a/b"`).
pub struct TestDir {
    pub root: PathBuf,
}

impl TestDir {
    /// Uses `root`, creating it if needed.
    pub fn new(root: &Path) -> TestDir {
        std::fs::create_dir_all(root).expect("fixture root");
        TestDir {
            root: root.to_owned(),
        }
    }

    pub fn path(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            return self.root.clone();
        }
        self.root.join(OsStr::from_bytes(rel))
    }

    pub fn dir(&self, rel: &[u8], mode: u32) -> &Self {
        std::fs::create_dir_all(self.path(rel)).expect("fixture mkdir");
        self.chmod(rel, mode)
    }

    pub fn file(&self, rel: &[u8], data: &[u8], mode: u32) -> &Self {
        std::fs::write(self.path(rel), data).expect("fixture write");
        self.chmod(rel, mode)
    }

    /// A file of `len` bytes with data only at the given offsets.
    pub fn sparse(&self, rel: &[u8], len: u64, data: &[(u64, &[u8])]) -> &Self {
        let f = std::fs::File::create(self.path(rel)).expect("fixture sparse");
        for (off, d) in data {
            f.write_all_at(d, *off).expect("fixture sparse write");
        }
        f.set_len(len).expect("fixture set_len");
        self
    }

    pub fn chmod(&self, rel: &[u8], mode: u32) -> &Self {
        rustix::fs::chmod(self.path(rel), Mode::from_raw_mode(mode)).expect("fixture chmod");
        self
    }

    pub fn hardlink(&self, existing: &[u8], new: &[u8]) -> &Self {
        std::fs::hard_link(self.path(existing), self.path(new)).expect("fixture link");
        self
    }

    pub fn symlink(&self, rel: &[u8], target: &[u8]) -> &Self {
        std::os::unix::fs::symlink(OsStr::from_bytes(target), self.path(rel))
            .expect("fixture symlink");
        self
    }

    /// A char or block device or a fifo (devices need root, which the tests have).
    pub fn node(&self, rel: &[u8], ft: FileType, dev: u64) -> &Self {
        rustix::fs::mknodat(CWD, self.path(rel), ft, Mode::from_raw_mode(0o640), dev)
            .expect("fixture mknod");
        self
    }

    /// Sets the owner without following symlinks, then restores the mode bits a chown clears.
    pub fn owner(&self, rel: &[u8], uid: u32, gid: u32) -> &Self {
        let p = self.path(rel);
        let before = std::fs::symlink_metadata(&p).expect("fixture lstat");
        rustix::fs::chownat(
            CWD,
            &p,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .expect("fixture chown");
        if !before.file_type().is_symlink() {
            self.chmod(rel, before.mode() & 0o7777);
        }
        self
    }

    pub fn xattr(&self, rel: &[u8], name: &str, value: &[u8]) -> &Self {
        rustix::fs::lsetxattr(self.path(rel), name, value, XattrFlags::empty())
            .unwrap_or_else(|e| panic!("fixture xattr {name}: {e}"));
        self
    }

    /// Gives every entry (and the root) a distinct mtime with nanoseconds, children first.
    pub fn stamp(&self, base: i64) -> &Self {
        let mut n = 0;
        stamp_dir(&self.root, base, &mut n);
        set_mtime(&self.root, base, 999_999_999);
        self
    }

    /// Every kind of entry and attribute: nested dirs, a sparse file, hardlinks across
    /// directories, symlinks (relative, absolute, dangling), char and block devices, a fifo,
    /// setuid/setgid/sticky, foreign owners, user/trusted/security xattrs, a POSIX ACL, names
    /// with a newline and with bytes that are not UTF-8, an empty file and dir, ns mtimes.
    pub fn full(root: &Path) -> TestDir {
        let t = TestDir::new(root);
        t.dir(b"etc", 0o755)
            .file(b"etc/hostname", b"box\n", 0o644)
            .file(b"etc/passwd", &noise(2000, 1), 0o644)
            .dir(b"usr/lib/deep", 0o750)
            .file(b"usr/lib/deep/lib.so", &noise(70_000, 2), 0o755)
            .dir(b"usr/share", 0o755)
            .hardlink(b"etc/passwd", b"usr/share/passwd-link")
            .hardlink(b"etc/passwd", b"zz-passwd")
            .sparse(
                b"disk.img",
                3 << 20,
                &[(0, &noise(4096, 4)), (1 << 20, &noise(5000, 5))],
            )
            .symlink(b"rel-link", b"etc/hostname")
            .symlink(b"abs-link", b"/etc/hostname")
            .symlink(b"dangling", b"nowhere/at/all")
            .dir(b"dev", 0o755)
            .node(
                b"dev/null",
                FileType::CharacterDevice,
                rustix::fs::makedev(1, 3),
            )
            .node(
                b"dev/loop",
                FileType::BlockDevice,
                rustix::fs::makedev(7, 300),
            )
            .node(b"dev/fifo", FileType::Fifo, 0)
            .file(b"suid", &noise(100, 6), 0o755)
            .owner(b"suid", 1234, 5678)
            .chmod(b"suid", 0o4755)
            .dir(b"sgid", 0o755)
            .chmod(b"sgid", 0o2775)
            .dir(b"tmp", 0o755)
            .chmod(b"tmp", 0o1777)
            .owner(b"abs-link", 4321, 8765)
            .owner(b"dev/fifo", 1234, 5678)
            .file(b"cap", &noise(300, 7), 0o755)
            .xattr(b"cap", "user.comment", b"hello\0binary\xff")
            .xattr(b"cap", "trusted.cairn", b"t")
            .xattr(b"cap", "security.capability", &CAPABILITY)
            .file(b"acl", &noise(30, 8), 0o644)
            .xattr(b"acl", "system.posix_acl_access", &ACL)
            .xattr(b"sgid", "user.dir", b"on a directory")
            .file(b"new\nline", &noise(20, 9), 0o644)
            .file(b"bad-utf8-\xff\xfe", &noise(20, 10), 0o644)
            .dir(b"\xc3(dir", 0o755)
            .file(b"\xc3(dir/inner", b"x", 0o600)
            .file(b"empty", b"", 0o644)
            .dir(b"empty-dir", 0o700)
            .stamp(1_600_000_000);
        t
    }
}

pub fn set_mtime(p: &Path, secs: i64, nanos: i64) {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: nanos,
    };
    let ts = Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(CWD, p, &ts, AtFlags::SYMLINK_NOFOLLOW).expect("fixture utimensat");
}

fn stamp_dir(dir: &Path, base: i64, n: &mut i64) {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("fixture read_dir")
        .map(|e| e.expect("fixture entry").file_name())
        .collect();
    names.sort();
    for name in names {
        let p = dir.join(&name);
        if std::fs::symlink_metadata(&p).expect("lstat").is_dir() {
            stamp_dir(&p, base, n);
        }
        *n += 1;
        set_mtime(&p, base + *n * 1000, (*n * 123_456_789 + 1) % 1_000_000_000);
    }
}

/// Every attribute of one entry that a restore must reproduce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snap {
    pub kind: &'static str,
    /// Full `st_mode`: type and permission bits including setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Regular files and symlinks; directories' sizes depend on the file system.
    pub size: u64,
    /// Regular files: the data regions (`SEEK_DATA`/`SEEK_HOLE`), so holes are kept.
    pub data: Vec<(u64, u64)>,
    pub mtime: (i64, i64),
    pub rdev: u64,
    pub target: Vec<u8>,
    /// BLAKE3 of a regular file's content.
    pub hash: String,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub nlink: u64,
    /// Regular files with several links: the smallest path sharing the inode.
    pub group: Vec<u8>,
}

/// Path (relative bytes; the root is `b""`) → attributes.
pub type Snapshot = BTreeMap<Vec<u8>, Snap>;

/// Captures every entry under `dir`, and `dir` itself.
pub fn snapshot(dir: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    let mut inodes: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut ino_of: Vec<(Vec<u8>, u64)> = Vec::new();
    let mut stack = vec![Vec::<u8>::new()];
    while let Some(rel) = stack.pop() {
        let p = if rel.is_empty() {
            dir.to_owned()
        } else {
            dir.join(OsStr::from_bytes(&rel))
        };
        let m = std::fs::symlink_metadata(&p)
            .unwrap_or_else(|e| panic!("snapshot lstat {}: {e}", p.display()));
        let ft = m.file_type();
        let mut s = Snap {
            kind: kind_name(&m),
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: if ft.is_dir() { 0 } else { m.size() },
            data: Vec::new(),
            mtime: (m.mtime(), m.mtime_nsec()),
            rdev: m.rdev(),
            target: Vec::new(),
            hash: String::new(),
            xattrs: xattrs(&p),
            nlink: if ft.is_dir() { 0 } else { m.nlink() },
            group: Vec::new(),
        };
        if ft.is_file() {
            let f = std::fs::File::open(&p).expect("snapshot open");
            s.data = data_map(&f, m.size());
            s.hash = blake3::hash(&std::fs::read(&p).expect("snapshot read"))
                .to_hex()
                .to_string();
            if m.nlink() > 1 {
                let g = inodes.entry(m.ino()).or_insert_with(|| rel.clone());
                if rel < *g {
                    *g = rel.clone();
                }
                ino_of.push((rel.clone(), m.ino()));
            }
        } else if ft.is_symlink() {
            s.target = std::fs::read_link(&p)
                .expect("snapshot readlink")
                .into_os_string()
                .into_encoded_bytes();
        } else if ft.is_dir() {
            for e in std::fs::read_dir(&p).expect("snapshot read_dir") {
                let name = e.expect("snapshot entry").file_name();
                let mut child = rel.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(name.as_bytes());
                stack.push(child);
            }
        }
        out.insert(rel, s);
    }
    // Group names are only known once every path of an inode was seen.
    for (rel, ino) in ino_of {
        if let Some(s) = out.get_mut(&rel) {
            s.group = inodes[&ino].clone();
        }
    }
    out
}

fn kind_name(m: &std::fs::Metadata) -> &'static str {
    let ft = m.file_type();
    if ft.is_file() {
        "file"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else if ft.is_fifo() {
        "fifo"
    } else {
        "other"
    }
}

fn xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut names = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(p, &mut names).expect("llistxattr");
    let mut out = BTreeMap::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 64 * 1024];
        let len = rustix::fs::lgetxattr(p, OsStr::from_bytes(name), &mut value).expect("lgetxattr");
        value.truncate(len);
        out.insert(name.to_vec(), value);
    }
    out
}

fn data_map(f: &std::fs::File, size: u64) -> Vec<(u64, u64)> {
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = 0i64;
    let end = size as i64;
    while pos < end {
        // SAFETY: lseek on an fd this function borrows; no memory is involved.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { end } else { hole };
        out.push((data as u64, hole as u64));
        pos = hole;
    }
    out
}

/// The first difference between two snapshots, if any, named by path.
pub fn first_difference(a: &Snapshot, b: &Snapshot) -> Option<String> {
    let show = |k: &[u8]| format!("{:?}", String::from_utf8_lossy(k));
    for k in a.keys() {
        if !b.contains_key(k) {
            return Some(format!("{} is only on the left", show(k)));
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            return Some(format!("{} is only on the right", show(k)));
        }
    }
    for (k, sa) in a {
        if sa != &b[k] {
            return Some(format!(
                "{} differs:\n  left:  {sa:?}\n  right: {:?}",
                show(k),
                b[k]
            ));
        }
    }
    None
}

/// Asserts two snapshots are equal, naming the first differing path.
pub fn assert_same(a: &Snapshot, b: &Snapshot, what: &str) {
    if let Some(d) = first_difference(a, b) {
        panic!("{what}: {d}");
    }
}
