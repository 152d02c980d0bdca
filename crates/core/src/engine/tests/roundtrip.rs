//! Round trips: checkpoint → mutate → restore (and fork) reproduce every attribute exactly,
//! and the costs stay proportional to what changed.

use super::fixture::{Snapshot, TestDir, assert_same, noise, snapshot};
use super::*;
use proptest::prelude::*;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Everything a user might do to a machine between two checkpoints, including planting a
/// symlink where a directory was, pointing outside.
fn mutate_heavily(t: &TestDir, outside: &Path) {
    std::fs::remove_dir_all(t.path(b"usr/lib")).unwrap();
    t.chmod(b"cap", 0o600).owner(b"empty", 42, 43);
    rustix::fs::lremovexattr(t.path(b"cap"), "user.comment").unwrap();
    t.xattr(b"cap", "trusted.cairn", b"changed")
        .xattr(b"acl", "user.added", b"new");
    // A directory becomes a file, a file a symlink, a symlink a directory.
    std::fs::remove_dir_all(t.path(b"sgid")).unwrap();
    t.file(b"sgid", b"now a file", 0o644);
    std::fs::remove_file(t.path(b"suid")).unwrap();
    t.symlink(b"suid", b"/bin/sh");
    std::fs::remove_file(t.path(b"rel-link")).unwrap();
    t.dir(b"rel-link", 0o755);
    std::fs::remove_file(t.path(b"dev/null")).unwrap();
    t.file(b"dev/null", b"not a device", 0o666);
    // Break one hardlink, make new ones.
    std::fs::remove_file(t.path(b"zz-passwd")).unwrap();
    t.file(b"zz-passwd", b"separate now", 0o644)
        .hardlink(b"empty", b"usr/share/empty-link")
        .hardlink(b"usr/share/passwd-link", b"tmp/another-link");
    // Fill a hole, grow a file, add files and dirs.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(t.path(b"disk.img"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"in the hole", 2 << 20).unwrap();
    t.dir(b"added/deep", 0o755)
        .file(b"added/deep/f", &noise(1000, 99), 0o644);
    // The machine's etc becomes a symlink out of it.
    std::fs::remove_dir_all(t.path(b"etc")).unwrap();
    t.symlink(b"etc", outside.as_os_str().as_bytes());
}

fn outside_dir(env: &Env) -> std::path::PathBuf {
    let outside = env.path("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("hostname"), b"outside, keep me").unwrap();
    outside
}

fn assert_outside_untouched(outside: &Path) {
    let names: Vec<_> = std::fs::read_dir(outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [OsStr::new("hostname")], "outside gained entries");
    assert_eq!(
        std::fs::read(outside.join("hostname")).unwrap(),
        b"outside, keep me"
    );
}

#[test]
fn fixture_has_every_kind_of_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let t = TestDir::full(&tmp.path().join("m"));
    let s = snapshot(&t.root);
    let at = |p: &[u8]| &s[p];
    for kind in ["file", "dir", "symlink", "char", "block", "fifo"] {
        assert!(s.values().any(|e| e.kind == kind), "no {kind}");
    }
    assert!(at(b"disk.img").sparse, "disk.img has no holes");
    assert_eq!(at(b"zz-passwd").group, b"etc/passwd");
    assert_eq!(at(b"suid").mode & 0o7777, 0o4755);
    assert_eq!(at(b"suid").uid, 1234);
    assert_eq!(at(b"sgid").mode & 0o7777, 0o2775);
    assert_eq!(at(b"tmp").mode & 0o7777, 0o1777);
    assert_eq!(at(b"cap").xattrs.len(), 3);
    assert!(
        at(b"acl")
            .xattrs
            .contains_key(b"system.posix_acl_access".as_slice())
    );
    assert!(s.contains_key(b"new\nline".as_slice()));
    assert!(s.contains_key(b"bad-utf8-\xff\xfe".as_slice()));
    assert_ne!(at(b"rel-link").mtime.1, 0, "symlink mtime has nanoseconds");
}

#[test]
fn restore_after_heavy_mutation_reproduces_every_attribute() {
    let env = Env::new();
    let outside = outside_dir(&env);
    let t = TestDir::full(&env.path("m"));
    let original = snapshot(&t.root);
    adopt(&env.repo, "web", &t.root);
    let v1 = checkpoint(&env.repo, "web");
    assert!(v1.warnings.is_empty(), "{:?}", v1.warnings);
    assert_same(
        &snapshot(&t.root),
        &original,
        "checkpoint changed the machine",
    );

    mutate_heavily(&t, &outside);
    let mutated = snapshot(&t.root);
    assert_ne!(mutated, original, "the mutation changed nothing");
    let rep = restore(&env.repo, "web@v1");
    assert_outside_untouched(&outside);
    assert!(
        std::fs::symlink_metadata(t.path(b"etc")).unwrap().is_dir(),
        "etc is a real directory again"
    );
    assert_same(&snapshot(&t.root), &original, "restore of v1");
    let live = env.repo.diff(&r("web@v1"), None).unwrap();
    assert!(live.is_empty(), "{live:?}");

    // The undo point holds the mutated state exactly.
    let undo = rep.undo.expect("an undo checkpoint");
    assert_eq!(undo, "web@v2");
    assert!(env.repo.checkpoint_show(&r(&undo)).unwrap().auto);
    restore(&env.repo, &undo);
    assert_same(&snapshot(&t.root), &mutated, "undo of the restore");
    assert_outside_untouched(&outside);

    let f = env.path("f");
    fork(&env.repo, "web@v1", "f", &f);
    assert_same(&snapshot(&f), &original, "fork of v1");
    let f2 = env.path("f2");
    fork(&env.repo, &undo, "f2", &f2);
    assert_same(&snapshot(&f2), &mutated, "fork of the undo point");
}

#[test]
fn costs_follow_what_changed() {
    let env = Env::new();
    let t = TestDir::new(&env.path("m"));
    for i in 0..5u8 {
        t.file(&[b'f', b'0' + i], &noise(50_000, u64::from(i)), 0o644);
    }
    t.dir(b"sub", 0o755)
        .file(b"sub/g", &noise(40_000, 9), 0o644);
    // The stat cache never trusts a file changed within its racy window of the ingest.
    std::thread::sleep(Duration::from_millis(2100));
    adopt(&env.repo, "web", &t.root);
    let v1 = checkpoint(&env.repo, "web");
    assert_eq!(
        v1.read_bytes, 290_000,
        "the first checkpoint reads everything"
    );
    assert!(!v1.unchanged);

    t.file(b"f2", &noise(1234, 77), 0o644);
    let v2 = checkpoint(&env.repo, "web");
    assert_eq!(v2.read_bytes, 1234, "only the edited file is read");
    assert!(!v2.unchanged);
    let v3 = checkpoint(&env.repo, "web");
    assert!(v3.unchanged, "nothing changed since v2");
    assert_eq!(v3.checkpoint.root, v2.checkpoint.root);

    t.file(b"sub/g", b"edited", 0o644)
        .file(b"extra1", b"x", 0o644)
        .file(b"sub/extra2", b"y", 0o644);
    let rep = restore(&env.repo, "web@v2");
    assert_eq!(rep.written_files, 1, "{rep:?}");
    assert_eq!(rep.written_bytes, 40_000, "{rep:?}");
    assert_eq!(rep.removed, 2, "{rep:?}");
    assert!(env.repo.diff(&r("web@v2"), None).unwrap().is_empty());
}

/// One entry of a generated tree: parent (index among earlier dirs), name, what it is, mode.
#[derive(Clone, Debug)]
enum Gen {
    File { size: usize, seed: u64 },
    Dir,
    Symlink(Vec<u8>),
    Hardlink(usize),
}

fn name_strategy() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        8 => b'a'..=b'e',
        1 => Just(b'\n'),
        1 => Just(0xff),
        1 => Just(0xc3),
        1 => Just(b' '),
        1 => Just(b'.'),
    ];
    proptest::collection::vec(byte, 1..6).prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn gen_strategy() -> impl Strategy<Value = Gen> {
    let size = prop_oneof![
        2 => Just(0usize),
        6 => 1usize..5000,
        1 => (256 * 1024 + 1)..(300 * 1024usize),
    ];
    prop_oneof![
        5 => (size, any::<u64>()).prop_map(|(size, seed)| Gen::File { size, seed }),
        3 => Just(Gen::Dir),
        1 => proptest::collection::vec(1u8..=255, 1..20).prop_map(Gen::Symlink),
        1 => any::<usize>().prop_map(Gen::Hardlink),
    ]
}

/// Builds the generated entries under `t`, skipping names already taken.
fn build(t: &TestDir, spec: &[(usize, Vec<u8>, Gen, u32)]) {
    let mut dirs: Vec<Vec<u8>> = vec![Vec::new()];
    let mut files: Vec<Vec<u8>> = Vec::new();
    for (parent, name, g, mode) in spec {
        let mut path = dirs[parent % dirs.len()].clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        if std::fs::symlink_metadata(t.path(&path)).is_ok() {
            continue;
        }
        match g {
            Gen::File { size, seed } => {
                t.file(&path, &noise(*size, *seed), mode & 0o7777);
                files.push(path);
            }
            Gen::Dir => {
                t.dir(&path, 0o700 | (mode & 0o7777));
                dirs.push(path);
            }
            Gen::Symlink(target) => {
                t.symlink(&path, target);
            }
            Gen::Hardlink(i) if !files.is_empty() => {
                t.hardlink(&files[i % files.len()].clone(), &path);
            }
            Gen::Hardlink(_) => {}
        }
    }
}

fn clobber(t: &TestDir, s: &Snapshot) {
    for (i, path) in s.keys().filter(|k| !k.is_empty()).enumerate() {
        let p = t.path(path);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if i % 3 == 0 && m.is_dir() => std::fs::remove_dir_all(&p).unwrap(),
            Ok(_) if i % 3 == 0 => std::fs::remove_file(&p).unwrap(),
            Ok(m) if i % 3 == 1 && m.is_file() => std::fs::write(&p, b"clobbered").unwrap(),
            _ => {}
        }
    }
    t.file(b"junk\xff", b"junk", 0o644).chmod(b"", 0o711);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 20,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_tree_restores_and_forks_identically(
        spec in proptest::collection::vec(
            (any::<usize>(), name_strategy(), gen_strategy(), 0u32..0o10000),
            0..25,
        )
    ) {
        let env = Env::new();
        let t = TestDir::new(&env.path("m"));
        build(&t, &spec);
        let original = snapshot(&t.root);
        adopt(&env.repo, "p", &t.root);
        checkpoint(&env.repo, "p");
        clobber(&t, &original);
        restore(&env.repo, "p@v1");
        assert_same(&snapshot(&t.root), &original, "restore");
        let f = env.path("f");
        fork(&env.repo, "p@v1", "f", &f);
        assert_same(&snapshot(&f), &original, "fork");
    }
}
