//! Tar export → import round trips and hostile archives.

use super::testutil::{LONG_NAME, assert_same_tree, build_fixture, ingest, p};
use super::{ApplyOptions, Dir, RootfsError, export_tar, import_tar};
use std::path::Path;
use tar::{EntryType, Header};

const ROOT: ApplyOptions = ApplyOptions { owners: true };

/// One raw entry: name, type, link target, data.
type RawEntry<'a> = (&'a [u8], EntryType, &'a [u8], &'a [u8]);

/// An archive written byte by byte, so it can hold what well-behaved writers refuse to write.
fn raw_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(name, etype, link, data) in entries {
        let mut h = Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(etype);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn listing(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = walk(dir);
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let path = e.expect("entry").path();
        if std::fs::symlink_metadata(&path).expect("lstat").is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// Dest and outside dirs; outside holds a file that must survive every hostile archive.
fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let (dest, outside) = (t.path().join("dest"), t.path().join("outside"));
    std::fs::create_dir(&dest).expect("mkdir");
    std::fs::create_dir(&outside).expect("mkdir");
    std::fs::write(outside.join("passwd"), b"precious").expect("write");
    (t, dest, outside)
}

fn assert_untouched(outside: &Path) {
    assert_eq!(listing(outside), vec![outside.join("passwd")]);
    assert_eq!(
        std::fs::read(outside.join("passwd")).expect("read"),
        b"precious"
    );
}

#[test]
fn export_then_import_reproduces_every_attribute() {
    let t = tempfile::tempdir().expect("tempdir");
    let (src_path, dst_path) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir(&src_path).expect("mkdir");
    std::fs::create_dir(&dst_path).expect("mkdir");
    build_fixture(&src_path);
    let (id_a, store_a) = ingest(&Dir::open(&src_path).expect("open"));

    let mut progressed = 0;
    let archive =
        export_tar(&id_a, &store_a, Vec::new(), &mut |n| progressed += n).expect("export");
    // Every regular file once (hard links carry no data): 3 MiB sparse plus the small ones.
    let expected: u64 = [3 << 20, 10_000, 5000, 100, 10, 300, 30, 20, 20, 20]
        .iter()
        .sum();
    assert_eq!(progressed, expected);

    // Names are relative and never `./`-prefixed; directories precede their contents.
    let mut seen_dirs: Vec<Vec<u8>> = vec![Vec::new()];
    let mut ar = tar::Archive::new(&archive[..]);
    for entry in ar.entries().expect("entries") {
        let entry = entry.expect("entry");
        let path = entry.path_bytes().into_owned();
        assert!(
            !path.starts_with(b"/") && !path.starts_with(b"./"),
            "{path:?}"
        );
        let trimmed = path.strip_suffix(b"/").unwrap_or(&path);
        let parent = match trimmed.iter().rposition(|&b| b == b'/') {
            Some(i) => trimmed[..i].to_vec(),
            None => Vec::new(),
        };
        assert!(seen_dirs.contains(&parent), "{path:?} before its directory");
        if entry.header().entry_type() == EntryType::Directory {
            seen_dirs.push(trimmed.to_vec());
        }
        assert_eq!(entry.header().username_bytes(), Some(&b""[..]));
    }

    let dst = Dir::open(&dst_path).expect("open");
    let report = import_tar(&archive[..], &dst, &ROOT).expect("import");
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_eq!(report.bytes, expected);
    let (id_b, store_b) = ingest(&dst);
    assert_same_tree(&store_a, &id_a, &store_b, &id_b, "");
    let d = std::fs::symlink_metadata(dst_path.join("sparse.img")).expect("lstat");
    let s = std::fs::symlink_metadata(src_path.join("sparse.img")).expect("lstat");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(d.blocks(), s.blocks(), "holes come back on import");
    assert!(std::fs::symlink_metadata(p(&dst_path, &[b"\xc3(dir/", LONG_NAME].concat())).is_ok());
}

#[test]
fn import_refuses_paths_that_leave_the_destination() {
    let (_t, dest, outside) = setup();
    let evil = outside.join("evil");
    let abs = evil.as_os_str().as_encoded_bytes();
    let outside_b = outside.as_os_str().as_encoded_bytes();
    let cases: Vec<Vec<RawEntry<'_>>> = vec![
        vec![(b"../outside/evil", EntryType::Regular, b"", b"x")],
        vec![(b"ok/../../outside/evil", EntryType::Regular, b"", b"x")],
        vec![(abs, EntryType::Regular, b"", b"x")],
        vec![
            (b"a", EntryType::Symlink, outside_b, b""),
            (b"a/evil", EntryType::Regular, b"", b"x"),
        ],
        vec![
            (b"./b", EntryType::Symlink, b"../../..", b""),
            (b"b/c/evil", EntryType::Directory, b"", b""),
        ],
        vec![(b"h", EntryType::Link, b"../outside/passwd", b"")],
    ];
    for entries in cases {
        let dst = Dir::open(&dest).expect("open");
        let err = import_tar(&raw_tar(&entries)[..], &dst, &ROOT).expect_err("must refuse");
        assert!(matches!(err, RootfsError::Escape { .. }), "{err}");
        assert_untouched(&outside);
    }
    // The symlinks the archives made are inside the destination and may stay; nothing else.
    for path in listing(&dest) {
        assert!(
            std::fs::symlink_metadata(&path)
                .expect("lstat")
                .is_symlink(),
            "{path:?}"
        );
    }
}

#[test]
fn import_refuses_missing_hardlink_targets_and_compressed_input() {
    let (_t, dest, _outside) = setup();
    let dst = Dir::open(&dest).expect("open");
    let tar = raw_tar(&[(b"h", EntryType::Link, b"not/there", b"")]);
    let err = import_tar(&tar[..], &dst, &ROOT).expect_err("absent target");
    assert!(
        matches!(&err, RootfsError::Tar { entry, .. } if entry == "h"),
        "{err}"
    );

    let gz = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    let err = import_tar(&gz[..], &dst, &ROOT).expect_err("gzip");
    assert!(err.to_string().contains("gzip-compressed"), "{err}");
    let zst = [0x28, 0xb5, 0x2f, 0xfd, 0, 0];
    let err = import_tar(&zst[..], &dst, &ROOT).expect_err("zstd");
    assert!(err.to_string().contains("zstd-compressed"), "{err}");
}

#[test]
fn import_replaces_planted_symlinks_and_follows_archive_order() {
    let (_t, dest, outside) = setup();
    // The machine already has `etc -> outside`; an archive writing `etc/passwd` as a file
    // must not reach it, and one that makes `etc` a directory replaces the link.
    std::os::unix::fs::symlink(&outside, dest.join("etc")).expect("symlink");
    let dst = Dir::open(&dest).expect("open");
    let tar = raw_tar(&[(b"etc/passwd", EntryType::Regular, b"", b"owned")]);
    let err = import_tar(&tar[..], &dst, &ROOT).expect_err("through symlink");
    assert!(matches!(err, RootfsError::Escape { .. }), "{err}");
    assert_untouched(&outside);

    let tar = raw_tar(&[
        (b"./etc/", EntryType::Directory, b"", b""),
        (b"etc/passwd", EntryType::Regular, b"", b"mine"),
        (b"etc/link", EntryType::Link, b"etc/passwd", b""),
        (b"etc/fifo", EntryType::Fifo, b"", b""),
    ]);
    let report = import_tar(&tar[..], &dst, &ROOT).expect("import");
    assert_eq!(report.entries, 4);
    assert_untouched(&outside);
    assert!(
        std::fs::symlink_metadata(dest.join("etc"))
            .expect("lstat")
            .is_dir()
    );
    assert_eq!(std::fs::read(dest.join("etc/link")).expect("read"), b"mine");
}

#[test]
fn import_without_owners_skips_devices_and_reads_gnu_long_names() {
    let (_t, dest, _outside) = setup();
    let mut b = tar::Builder::new(Vec::new());
    let long = format!("dir/{}", "n".repeat(150));
    let mut h = Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(3);
    h.set_mode(0o600);
    b.append_data(&mut h, &long, &b"abc"[..]).expect("append");
    let mut h = Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_mode(0o600);
    h.set_entry_type(EntryType::Char);
    h.set_device_major(1).expect("major");
    h.set_device_minor(3).expect("minor");
    h.set_size(0);
    b.append_data(&mut h, "null", std::io::empty())
        .expect("append");
    let archive = b.into_inner().expect("finish");

    let dst = Dir::open(&dest).expect("open");
    let report = import_tar(&archive[..], &dst, &ApplyOptions { owners: false }).expect("import");
    assert_eq!(std::fs::read(dest.join(&long)).expect("read"), b"abc");
    assert_eq!(report.entries, 1);
    assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
    assert!(
        report.skipped[0].starts_with("null:"),
        "{:?}",
        report.skipped
    );
    assert!(std::fs::symlink_metadata(dest.join("null")).is_err());
}
