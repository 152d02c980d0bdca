//! Scan → apply round trips and the safety rule, on real directories (tests run as root).

use super::testutil::{
    ACL, CAPABILITY, assert_same_tree, build_fixture, count_kinds, ingest, materialize, p,
};
use super::{ApplyOptions, Dir, FileKind, RootfsError, data_regions};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const ROOT: ApplyOptions = ApplyOptions { owners: true };

fn lstat(path: impl AsRef<Path>) -> std::fs::Metadata {
    std::fs::symlink_metadata(path).expect("lstat")
}

/// Everything under `dir` as (relative path, size, contents) so "untouched" can be asserted.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, u64, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        let m = lstat(e.path());
        let data = if m.is_file() {
            std::fs::read(e.path()).expect("read")
        } else {
            Vec::new()
        };
        out.push((e.path(), m.len(), data));
        if m.is_dir() {
            out.extend(snapshot(&e.path()));
        }
    }
    out.sort();
    out
}

#[test]
fn scan_then_apply_reproduces_every_attribute() {
    let t = tempfile::tempdir().expect("tempdir");
    let (src_path, dst_path) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir(&src_path).expect("mkdir");
    std::fs::create_dir(&dst_path).expect("mkdir");
    build_fixture(&src_path);

    let (id_a, store_a) = ingest(&Dir::open(&src_path).expect("open src"));
    let mut kinds = HashMap::new();
    count_kinds(&store_a, &id_a, &mut kinds);
    for k in [
        "file", "sparse", "dir", "symlink", "hardlink", "char", "block", "fifo",
    ] {
        assert!(
            kinds.get(k).copied().unwrap_or(0) > 0,
            "fixture lacks {k}: {kinds:?}"
        );
    }
    assert_eq!(kinds["hardlink"], 2, "two extra paths of d1/file.txt");

    let dst = Dir::open(&dst_path).expect("open dst");
    materialize(&store_a, &id_a, &dst, &ROOT);
    let (id_b, store_b) = ingest(&dst);
    assert_same_tree(&store_a, &id_a, &store_b, &id_b, "");

    // The comparison above is by value; check the kernel-visible facts it stands for.
    let (s, d) = (
        lstat(src_path.join("sparse.img")),
        lstat(dst_path.join("sparse.img")),
    );
    assert_eq!(d.len(), 3 << 20);
    assert!(
        d.blocks() * 512 < d.len() / 2,
        "holes kept: {} blocks",
        d.blocks()
    );
    assert_eq!(s.blocks(), d.blocks());
    let leader = lstat(dst_path.join("d1/file.txt"));
    assert_eq!(leader.nlink(), 3);
    assert_eq!(lstat(dst_path.join("other/hardlink")).ino(), leader.ino());
    assert_eq!(lstat(dst_path.join("zz-hardlink")).ino(), leader.ino());
    let owned = lstat(dst_path.join("owned"));
    assert_eq!((owned.uid(), owned.gid()), (1234, 5678));
    let link = lstat(dst_path.join("abs-link"));
    assert_eq!((link.uid(), link.gid()), (4321, 8765));
    assert_eq!(lstat(dst_path.join("suid")).mode() & 0o7777, 0o4755);
    assert_eq!(lstat(dst_path.join("sgid-dir")).mode() & 0o7777, 0o2775);
    assert_eq!(lstat(dst_path.join("sticky")).mode() & 0o7777, 0o1777);
    assert_eq!(
        lstat(dst_path.join("dev/block")).rdev(),
        rustix::fs::makedev(7, 300)
    );
    assert_eq!(
        link.mtime_nsec(),
        lstat(src_path.join("abs-link")).mtime_nsec()
    );
    assert_ne!(link.mtime_nsec(), 0);
    let xattr = |path: &Path, name: &str| {
        let mut buf = vec![0u8; 256];
        let n = rustix::fs::lgetxattr(path, name, &mut buf[..]).expect("lgetxattr");
        buf.truncate(n);
        buf
    };
    assert_eq!(
        xattr(&dst_path.join("xattrs"), "security.capability"),
        CAPABILITY
    );
    assert_eq!(xattr(&dst_path.join("acl"), "system.posix_acl_access"), ACL);
    assert_eq!(
        xattr(&dst_path.join("rel-link"), "trusted.on-symlink"),
        b"link's own"
    );
    assert!(std::fs::read_link(dst_path.join("dangling")).is_ok());
    assert!(lstat(p(&dst_path, b"new\nline")).is_file());
    assert!(lstat(p(&dst_path, b"bad-utf8-\xff\xfe")).is_file());
}

#[test]
fn applying_over_an_existing_tree_replaces_entries_and_xattrs() {
    let t = tempfile::tempdir().expect("tempdir");
    let (src_path, dst_path) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir(&src_path).expect("mkdir");
    std::fs::create_dir(&dst_path).expect("mkdir");
    build_fixture(&src_path);
    // Stale state in the destination: a symlink where a file goes, a file where a symlink
    // goes, and an xattr that must disappear.
    std::os::unix::fs::symlink("/", dst_path.join("suid")).expect("symlink");
    std::fs::write(dst_path.join("rel-link"), b"old").expect("write");
    std::fs::create_dir(dst_path.join("d1")).expect("mkdir");
    rustix::fs::setxattr(
        dst_path.join("d1"),
        "user.stale",
        b"x",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("setxattr");

    let (id_a, store_a) = ingest(&Dir::open(&src_path).expect("open"));
    let dst = Dir::open(&dst_path).expect("open");
    materialize(&store_a, &id_a, &dst, &ROOT);
    let (id_b, store_b) = ingest(&dst);
    assert_same_tree(&store_a, &id_a, &store_b, &id_b, "");
    let leftovers: Vec<_> = std::fs::read_dir(&dst_path)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().starts_with(".cairn-tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary names left: {leftovers:?}");
}

#[test]
fn data_regions_find_holes_and_take_the_fast_path_for_dense_files() {
    let t = tempfile::tempdir().expect("tempdir");
    build_fixture(t.path());
    let dir = Dir::open(t.path()).expect("open");
    let e = dir
        .stat_entry(b"sparse.img")
        .expect("stat")
        .expect("present");
    let f = dir.open_file(b"sparse.img").expect("open");
    let regions = data_regions(&f, e.stat.size, e.stat.blocks).expect("regions");
    assert_eq!(regions.first().map(|r| r.0), Some(0));
    assert!(
        regions
            .iter()
            .any(|&(o, l)| o <= 1 << 20 && o + l >= (1 << 20) + 5000)
    );
    let covered: u64 = regions.iter().map(|r| r.1).sum();
    assert!(covered < 1 << 20, "mostly holes, got {regions:?}");
    let e = dir.stat_entry(b"suid").expect("stat").expect("present");
    let f = dir.open_file(b"suid").expect("open");
    assert_eq!(
        data_regions(&f, 100, e.stat.blocks).expect("regions"),
        vec![(0, 100)]
    );
    assert_eq!(data_regions(&f, 0, 0).expect("regions"), vec![]);
}

/// A machine with `etc -> <outside>` planted in it, and a file outside to protect.
fn planted() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let machine = t.path().join("machine");
    let outside = t.path().join("outside");
    std::fs::create_dir(&machine).expect("mkdir");
    std::fs::create_dir(&outside).expect("mkdir");
    std::fs::write(outside.join("passwd"), b"precious").expect("write");
    std::os::unix::fs::symlink(&outside, machine.join("etc")).expect("symlink");
    (t, machine, outside)
}

#[test]
fn a_planted_symlink_is_never_followed() {
    let (_t, machine, outside) = planted();
    let before = snapshot(&outside);
    let mode_before = lstat(&outside).mode();
    let root = Dir::open(&machine).expect("open");

    assert!(matches!(
        root.open_dir(b"etc"),
        Err(RootfsError::Escape { .. })
    ));
    assert!(matches!(
        root.create_dir(b"etc", 0o755),
        Err(RootfsError::Escape { .. })
    ));
    let meta = crate::model::Meta {
        mode: 0o777,
        ..Default::default()
    };
    assert!(matches!(
        root.set_meta(b"etc", FileKind::Dir, &meta, &ROOT),
        Err(RootfsError::KindMismatch { .. })
    ));
    assert!(matches!(
        root.open_file(b"etc"),
        Err(RootfsError::KindMismatch { .. })
    ));
    assert!(matches!(
        root.open_dir(b".."),
        Err(RootfsError::BadName { .. })
    ));
    assert!(matches!(
        root.write_file(b"etc/passwd", |_| Ok(())),
        Err(RootfsError::BadName { .. })
    ));
    assert_eq!(snapshot(&outside), before);
    assert_eq!(lstat(&outside).mode(), mode_before);

    // Writing at the symlink's name replaces the symlink; the target is untouched.
    let file = root
        .write_file(b"etc", |f| {
            use std::io::Write;
            f.write_all(b"now a file").map_err(|e| RootfsError::Io {
                path: "etc".into(),
                op: "write",
                source: e,
            })
        })
        .expect("write_file");
    drop(file);
    assert!(lstat(machine.join("etc")).is_file());
    assert_eq!(snapshot(&outside), before);

    // Opening the machine through a symlink is refused too.
    let alias = machine.with_file_name("alias");
    std::os::unix::fs::symlink(&machine, &alias).expect("symlink");
    assert!(matches!(Dir::open(&alias), Err(RootfsError::Escape { .. })));
}

#[test]
fn remove_deletes_links_not_what_they_point_to() {
    let (_t, machine, outside) = planted();
    let before = snapshot(&outside);
    std::fs::create_dir_all(machine.join("d/sub")).expect("mkdir");
    std::os::unix::fs::symlink(&outside, machine.join("d/sub/out")).expect("symlink");
    std::os::unix::fs::symlink(outside.join("passwd"), machine.join("d/file-link"))
        .expect("symlink");
    // A read-only directory inside must not stop the removal.
    std::fs::create_dir(machine.join("d/ro")).expect("mkdir");
    std::fs::write(machine.join("d/ro/f"), b"x").expect("write");
    rustix::fs::chmod(machine.join("d/ro"), rustix::fs::Mode::from_raw_mode(0o500)).expect("chmod");

    let root = Dir::open(&machine).expect("open");
    root.remove(b"d").expect("remove dir");
    root.remove(b"etc").expect("remove link");
    root.remove(b"missing").expect("missing is fine");
    assert!(
        std::fs::read_dir(&machine)
            .expect("read_dir")
            .next()
            .is_none()
    );
    assert_eq!(snapshot(&outside), before);
}

#[test]
fn hardlink_of_a_symlink_links_the_symlink_itself() {
    let (_t, machine, outside) = planted();
    std::os::unix::fs::symlink(outside.join("passwd"), machine.join("pw")).expect("symlink");
    let root = Dir::open(&machine).expect("open");
    root.hardlink(&root, b"pw", b"pw2").expect("hardlink");
    assert_eq!(
        lstat(machine.join("pw2")).ino(),
        lstat(machine.join("pw")).ino()
    );
    assert_eq!(lstat(outside.join("passwd")).nlink(), 1);
    // Linking again over an existing link of the same inode leaves no temporary name.
    root.hardlink(&root, b"pw", b"pw2").expect("hardlink again");
    let names: Vec<_> = root
        .entries()
        .expect("entries")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        vec![b"etc".to_vec(), b"pw".to_vec(), b"pw2".to_vec()]
    );
}

#[test]
fn rename_and_kind_checks_stay_inside_the_directory() {
    let (_t, machine, _outside) = planted();
    let root = Dir::open(&machine).expect("open");
    root.mknod(b"fifo", FileKind::Fifo, 0, 0o600)
        .expect("mkfifo");
    root.rename_within(b"fifo", b"pipe").expect("rename");
    let e = root.stat_entry(b"pipe").expect("stat").expect("present");
    assert_eq!(e.kind, FileKind::Fifo);
    assert!(root.stat_entry(b"fifo").expect("stat").is_none());
    // A fifo where a file is expected is refused without blocking on open.
    assert!(matches!(
        root.open_file(b"pipe"),
        Err(RootfsError::KindMismatch { .. })
    ));
    assert!(matches!(
        root.mknod(b"sock", FileKind::Socket, 0, 0o600),
        Err(RootfsError::KindMismatch { .. })
    ));
    assert!(matches!(
        root.rename_within(b"pipe", b"../x"),
        Err(RootfsError::BadName { .. })
    ));
}

#[test]
fn a_failed_write_leaves_the_old_file_and_no_temporary() {
    let (_t, machine, _outside) = planted();
    std::fs::write(machine.join("f"), b"old").expect("write");
    let root = Dir::open(&machine).expect("open");
    let err = root
        .write_file(b"f", |f| {
            use std::io::Write;
            let _ = f.write_all(b"half");
            Err(RootfsError::BadTree {
                path: "f".into(),
                reason: "chunk missing".into(),
            })
        })
        .expect_err("fill failed");
    assert!(matches!(err, RootfsError::BadTree { .. }));
    assert_eq!(std::fs::read(machine.join("f")).expect("read"), b"old");
    let names: Vec<_> = root
        .entries()
        .expect("entries")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec![b"etc".to_vec(), b"f".to_vec()]);
    // A directory in the way is reported, not replaced.
    std::fs::create_dir(machine.join("d")).expect("mkdir");
    let err = root
        .write_file(b"d", |_| Ok(()))
        .expect_err("dir in the way");
    assert!(
        matches!(err, RootfsError::DirectoryInTheWay { .. }),
        "{err}"
    );
    assert!(lstat(machine.join("d")).is_dir());
}
