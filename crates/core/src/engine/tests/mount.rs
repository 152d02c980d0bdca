//! The FUSE view (`Repo::mount`), really mounted: every attribute as in the directory the
//! checkpoint was taken from, stable inode numbers, reads across chunk boundaries, `EROFS`
//! for writes, subtree views, and reads that survive gc moving the blobs elsewhere.

use super::fixture::{TestDir, assert_same, noise, snapshot};
use super::*;
use crate::mount::{MountOptions, MountedView};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

/// Mounts `reference` at a new empty directory `mnt` beside the home.
fn mount(env: &Env, reference: &str) -> (MountedView, std::path::PathBuf) {
    let mnt = env.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let view = env
        .repo
        .mount(&r(reference), &mnt, &MountOptions::default())
        .unwrap();
    (view, mnt)
}

/// Machine `web` over the full fixture, with checkpoint web@v1.
fn full_web(env: &Env) -> TestDir {
    let t = TestDir::full(&env.path("m"));
    adopt(&env.repo, "web", &t.root);
    checkpoint(&env.repo, "web");
    t
}

fn ino(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).unwrap().ino()
}

fn erofs<T: std::fmt::Debug>(what: &str, r: std::io::Result<T>) {
    let e = r.expect_err(what);
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
}

/// A step through offsets that hits chunk boundaries, holes and the end of the file.
fn offsets(len: usize, n: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n).map(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x % len as u64) as usize;
        let want = ((x >> 20) % 400_000) as usize + 1;
        (off, want.min(len - off))
    })
}

#[test]
fn the_view_shows_every_attribute_of_the_checkpointed_tree() {
    let env = Env::new();
    let t = TestDir::full(&env.path("m"));
    // Several megabytes: many chunks, so reads cross chunk boundaries.
    let big = noise((3 << 20) + 12_345, 11);
    t.file(b"usr/lib/multi-chunk", &big, 0o644);
    adopt(&env.repo, "web", &t.root);
    checkpoint(&env.repo, "web");
    let want = snapshot(&t.root);
    let (mut view, mnt) = mount(&env, "web@v1");

    // lstat fields, content, data regions, xattrs (capability and ACL too), symlink targets,
    // device numbers, odd names, and hardlink groups (which compare inode numbers).
    assert_same(&want, &snapshot(&mnt), "the view of web@v1");

    // Directories count their subdirectories, as on the machine's own file system.
    for (rel, s) in want.iter().filter(|(_, s)| s.kind == "dir") {
        let here = mnt.join(OsStr::from_bytes(rel));
        let subdirs = std::fs::read_dir(&here)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
            .count() as u64;
        let m = std::fs::symlink_metadata(&here).unwrap();
        assert_eq!(
            m.nlink(),
            2 + subdirs,
            "{:?} ({s:?})",
            String::from_utf8_lossy(rel)
        );
    }

    // One inode number per file, whichever path and however often it is asked.
    let passwd = ino(&mnt.join("etc/passwd"));
    assert_eq!(passwd, ino(&mnt.join("etc/passwd")));
    assert_eq!(passwd, ino(&mnt.join("usr/share/passwd-link")));
    assert_eq!(passwd, ino(&mnt.join("zz-passwd")));
    assert_ne!(passwd, ino(&mnt.join("etc/hostname")));
    assert_eq!(
        std::fs::symlink_metadata(mnt.join("zz-passwd"))
            .unwrap()
            .nlink(),
        3
    );

    let f = std::fs::File::open(mnt.join("usr/lib/multi-chunk")).unwrap();
    for (off, len) in offsets(big.len(), 300) {
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off as u64).unwrap();
        assert!(buf == big[off..off + len], "{len} bytes at {off}");
    }
    drop(f);
    let mut hole = vec![1u8; 8192];
    std::fs::File::open(mnt.join("disk.img"))
        .unwrap()
        .read_exact_at(&mut hole, 2 << 20)
        .unwrap();
    assert!(hole.iter().all(|&b| b == 0), "holes read as zeros");

    // Read-only, whatever is tried.
    erofs("create", std::fs::File::create(mnt.join("new")));
    erofs(
        "open for writing",
        std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("etc/hostname")),
    );
    erofs("mkdir", std::fs::create_dir(mnt.join("d")));
    erofs("unlink", std::fs::remove_file(mnt.join("etc/hostname")));
    erofs("rename", std::fs::rename(mnt.join("empty"), mnt.join("e2")));
    erofs(
        "chmod",
        std::fs::set_permissions(mnt.join("empty"), std::fs::Permissions::from_mode(0o600)),
    );
    erofs(
        "setxattr",
        rustix::fs::setxattr(
            mnt.join("cap"),
            "user.x",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(std::io::Error::from),
    );

    // An open file keeps the view busy; unmounting refuses and the view keeps serving.
    let held = std::fs::File::open(mnt.join("etc/hostname")).unwrap();
    assert!(matches!(
        view.unmount(),
        Err(crate::mount::MountError::Busy { .. })
    ));
    assert!(view.is_serving());
    drop(held);
    view.unmount().unwrap();
    assert!(!view.is_serving());
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0, "unmounted");
    // The mountpoint is free again for the next view.
    let (mut again, _) = mount(&env, "web@v1");
    again.unmount().unwrap();
}

#[test]
fn a_subtree_view_reads_hardlinks_whose_leader_is_outside_it() {
    let env = Env::new();
    let t = full_web(&env);
    let (mut view, mnt) = mount(&env, "web@v1:/usr");
    let link = mnt.join("share/passwd-link");
    assert_eq!(
        std::fs::read(&link).unwrap(),
        std::fs::read(t.path(b"etc/passwd")).unwrap()
    );
    let m = std::fs::symlink_metadata(&link).unwrap();
    assert_eq!((m.nlink(), m.ino()), (3, ino(&link)));
    let root = std::fs::symlink_metadata(&mnt).unwrap();
    let orig = std::fs::symlink_metadata(t.path(b"usr")).unwrap();
    assert_eq!(
        (root.mode(), root.mtime(), root.mtime_nsec()),
        (orig.mode(), orig.mtime(), orig.mtime_nsec()),
        "the view's root is the subtree's directory"
    );
    view.unmount().unwrap();
}

#[test]
fn warm_opens_reads_and_listings_never_reach_the_server() {
    let env = Env::new();
    let t = full_web(&env);
    let (mut view, mnt) = mount(&env, "web@v1");
    let want = snapshot(&t.root);
    let files: Vec<_> = want
        .iter()
        .filter(|(_, s)| s.kind == "file")
        .map(|(rel, _)| mnt.join(OsStr::from_bytes(rel)))
        .collect();
    assert!(files.len() > 5, "the fixture has files to read");
    let pass = || {
        for f in &files {
            std::fs::read(f).unwrap();
        }
        for (rel, _) in want.iter().filter(|(_, s)| s.kind == "dir") {
            std::fs::read_dir(mnt.join(OsStr::from_bytes(rel)))
                .unwrap()
                .count();
        }
    };
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    pass();
    let q = view.requests();
    let listings = || load(&q.readdir) + load(&q.readdirplus);
    let first = [load(&q.read), listings(), load(&q.lookup)];
    assert!(
        first[0] > 0 && first[1] > 0,
        "the first pass is served: {q:?}"
    );
    // The first open of each kind answers that opens need no server; none follows it.
    assert!(load(&q.open) <= 1 && load(&q.opendir) <= 1, "{q:?}");
    pass();
    pass();
    assert_eq!(
        [load(&q.read), listings(), load(&q.lookup)],
        first,
        "a warm pass sent requests: {q:?}"
    );
    assert!(load(&q.open) <= 1 && load(&q.opendir) <= 1, "{q:?}");
    view.unmount().unwrap();
}

#[test]
fn a_cold_walk_of_the_tree_sends_no_lookup_per_entry() {
    let env = Env::new();
    let t = full_web(&env);
    let (mut view, mnt) = mount(&env, "web@v1");
    fn walk(dir: &std::path::Path, seen: &mut usize) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            *seen += 1;
            if meta.is_dir() {
                walk(&p, seen);
            }
        }
    }
    let mut seen = 0;
    walk(&mnt, &mut seen);
    assert_eq!(seen, snapshot(&t.root).len() - 1, "every entry but the top");
    let q = view.requests();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert!(load(&q.readdirplus) > 0, "{q:?}");
    assert_eq!(
        load(&q.lookup),
        0,
        "each listing entered its names and attributes: {q:?}"
    );
    // What it entered is exact, and the tree reads back the same.
    assert_same(&snapshot(&t.root), &snapshot(&mnt), "the view after a walk");
    view.unmount().unwrap();
}

fn scanned(view: &MountedView) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(free) = view.xattr_free() {
            return free;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the xattr scan never ended"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_tree_without_xattrs_stops_the_kernel_asking_for_them() {
    let env = Env::new();
    let t = TestDir::new(&env.path("m"));
    t.dir(b"etc", 0o755)
        .file(b"etc/a", b"a", 0o644)
        .file(b"etc/b", b"b", 0o600)
        .dir(b"etc/sub", 0o700)
        .file(b"etc/sub/c", b"c", 0o755);
    adopt(&env.repo, "plain", &t.root);
    checkpoint(&env.repo, "plain");
    let (mut view, mnt) = mount(&env, "plain@v1");
    assert!(scanned(&view), "the scan finds no xattr");
    let mut buf = [0u8; 64];
    for rel in ["etc/a", "etc/b", "etc/sub/c", "etc", "etc/sub"] {
        let e = rustix::fs::lgetxattr(mnt.join(rel), "user.anything", &mut buf).unwrap_err();
        assert_eq!(e, rustix::io::Errno::OPNOTSUPP, "{rel}");
    }
    let asked = view
        .requests()
        .getxattr
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(asked, 1, "only the first one reached the server");
    // Listing still answers (empty), so copies and snapshots see exactly no xattr.
    assert_same(
        &snapshot(&t.root),
        &snapshot(&mnt),
        "the view of a plain tree",
    );
    view.unmount().unwrap();

    // A tree with xattrs keeps answering each one, present or not.
    let full = TestDir::full(&env.path("f"));
    adopt(&env.repo, "full", &full.root);
    checkpoint(&env.repo, "full");
    let (mut view, mnt) = mount(&env, "full@v1");
    assert!(!scanned(&view), "the scan finds the fixture's xattrs");
    let n = rustix::fs::lgetxattr(mnt.join("cap"), "user.comment", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello\0binary\xff");
    let e = rustix::fs::lgetxattr(mnt.join("cap"), "user.absent", &mut buf).unwrap_err();
    assert_eq!(e, rustix::io::Errno::NODATA);
    view.unmount().unwrap();
}

#[test]
fn a_view_keeps_reading_after_gc_repacks_its_blobs_and_holds_no_read_snapshot() {
    let env = Env::new();
    let t = TestDir::new(&env.path("m"));
    let small = noise(3_000, 2);
    t.file(b"big", &noise(500_000, 1), 0o644)
        .file(b"small", &small, 0o644);
    adopt(&env.repo, "web", &t.root);
    checkpoint(&env.repo, "web");
    std::fs::remove_file(t.path(b"big")).unwrap();
    checkpoint(&env.repo, "web");
    env.repo.checkpoint_delete(&r("web@v1")).unwrap();
    // Mounted before gc runs; nothing of `small` is read (or cached) yet.
    let (mut view, mnt) = mount(&env, "web@v2");
    let gc = || {
        env.repo
            .gc(
                &GcOptions {
                    images_max: crate::engine::DEFAULT_IMAGES_MAX,
                    grace: Duration::ZERO,
                    repack_below: 0.5,
                    dry_run: false,
                },
                &NoProgress,
            )
            .unwrap()
    };
    assert!(gc().packs_repacked > 0);
    assert!(gc().packs_deleted > 0, "the old pack is gone");
    assert_eq!(std::fs::read(mnt.join("small")).unwrap(), small);
    // The live view holds no read transaction, so the WAL can be checkpointed completely.
    let db = rusqlite::Connection::open(env.home().join("catalog.db")).unwrap();
    let busy: i64 = db
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
        .unwrap();
    assert_eq!(busy, 0, "a reader blocks the WAL checkpoint");
    view.unmount().unwrap();
}

#[test]
fn mountpoints_that_cannot_take_a_view_are_refused_with_a_reason() {
    let env = Env::new();
    let t = TestDir::new(&env.path("m"));
    t.file(b"f", b"x", 0o644);
    adopt(&env.repo, "web", &t.root);
    checkpoint(&env.repo, "web");
    let opts = MountOptions::default();
    let err = |mp: &Path| {
        env.repo
            .mount(&r("web@v1"), mp, &opts)
            .err()
            .expect("refused")
            .to_string()
    };
    assert!(err(&env.path("missing")).contains("does not exist"));
    assert!(err(&t.path(b"f")).contains("not a directory"));
    assert!(err(&t.root).contains("not empty"));
    let (mut view, mnt) = mount(&env, "web@v1");
    assert!(err(&mnt).contains("already a mount point"));
    view.unmount().unwrap();
    let e = env
        .repo
        .mount(&r("web@v1:/f"), &mnt, &opts)
        .err()
        .expect("a file is not a view");
    assert!(e.to_string().contains("not a directory"), "{e}");
}
