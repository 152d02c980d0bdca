//! Safety: nothing is written outside a machine, bad input is refused before anything changes.

use super::fixture::{TestDir, snapshot};
use super::*;
use std::os::unix::ffi::OsStrExt;
use tar::{EntryType, Header};

fn create(repo: &Repo, name: &str, dir: &Path) -> Result<MachineInfo> {
    repo.create_machine(
        &CreateMachineOptions {
            name: name.into(),
            dir: dir.to_owned(),
            from_tar: None,
        },
        &NoProgress,
    )
    .map(|(m, _)| m)
}

#[test]
fn restore_replaces_a_planted_symlink_and_writes_nothing_outside() {
    let env = Env::new();
    let t = TestDir::new(&env.path("m"));
    t.dir(b"etc/sub", 0o755)
        .file(b"etc/hostname", b"box\n", 0o644)
        .file(b"etc/sub/deep", b"deep", 0o600);
    let outside = env.path("outside");
    std::fs::create_dir(&outside).unwrap();
    adopt(&env.repo, "web", &t.root);
    checkpoint(&env.repo, "web");
    let original = snapshot(&t.root);

    std::fs::remove_dir_all(t.path(b"etc")).unwrap();
    t.symlink(b"etc", outside.as_os_str().as_bytes());
    restore(&env.repo, "web@v1");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "restore wrote through the planted symlink"
    );
    assert!(std::fs::symlink_metadata(t.path(b"etc")).unwrap().is_dir());
    assert_eq!(snapshot(&t.root), original);

    // The same through a partial restore of the planted path itself.
    std::fs::remove_dir_all(t.path(b"etc")).unwrap();
    t.symlink(b"etc", outside.as_os_str().as_bytes());
    env.repo
        .restore(&r("web@v1:/etc"), &RestoreOptions::default(), &NoProgress)
        .unwrap();
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert!(std::fs::symlink_metadata(t.path(b"etc")).unwrap().is_dir());
    // A partial restore owns only its subtree; the machine directory's own mtime moved when
    // `etc` was replaced and is not part of `/etc`.
    let mut now = snapshot(&t.root);
    let mut want = original.clone();
    now.remove(b"".as_slice());
    want.remove(b"".as_slice());
    assert_eq!(now, want);

    // A partial restore below a planted symlink refuses rather than following it.
    std::fs::remove_dir_all(t.path(b"etc")).unwrap();
    t.symlink(b"etc", outside.as_os_str().as_bytes());
    let err = env
        .repo
        .restore(
            &r("web@v1:/etc/hostname"),
            &RestoreOptions::default(),
            &NoProgress,
        )
        .unwrap_err();
    assert!(err.to_string().contains("parent"), "{err}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn partial_restore_touches_only_its_subtree() {
    let env = Env::new();
    let t = TestDir::new(&env.path("m"));
    t.dir(b"etc", 0o755)
        .file(b"etc/hostname", b"box\n", 0o644)
        .file(b"etc/hosts", b"127.0.0.1 box\n", 0o644)
        .file(b"data", b"v1 data", 0o644);
    adopt(&env.repo, "web", &t.root);
    checkpoint(&env.repo, "web");
    t.file(b"etc/hostname", b"changed\n", 0o644)
        .file(b"etc/extra", b"extra", 0o644)
        .file(b"data", b"v2 data", 0o644);
    let rep = env
        .repo
        .restore(&r("web@v1:/etc"), &RestoreOptions::default(), &NoProgress)
        .unwrap();
    assert_eq!(std::fs::read(t.path(b"etc/hostname")).unwrap(), b"box\n");
    assert!(!t.path(b"etc/extra").exists(), "extras under /etc go");
    assert_eq!(
        std::fs::read(t.path(b"data")).unwrap(),
        b"v2 data",
        "outside /etc stays as it was"
    );
    assert_eq!(rep.written_files, 1, "{rep:?}");
    assert_eq!(rep.removed, 1, "{rep:?}");
    // The undo point still holds the state before the partial restore.
    let undo = rep.undo.unwrap();
    let mut out = Vec::new();
    env.repo
        .cat(&r(&format!("{undo}:/etc/hostname")), &mut out)
        .unwrap();
    assert_eq!(out, b"changed\n");
    // A path that exists on neither side is refused.
    let err = env
        .repo
        .restore(&r("web@v1:/nope"), &RestoreOptions::default(), &NoProgress)
        .unwrap_err();
    assert!(matches!(err, EngineError::PathNotFound { .. }), "{err}");
}

#[test]
fn create_machine_rejects_bad_dirs_names_and_duplicates() {
    let env = Env::new();
    let m1 = env.path("outer/m1");
    std::fs::create_dir_all(m1.join("sub")).unwrap();
    create(&env.repo, "m1", &m1).unwrap();
    let file = env.path("a-file");
    std::fs::write(&file, b"x").unwrap();
    let in_home = env.home().join("inside");
    std::fs::create_dir(&in_home).unwrap();
    let ok_dir = env.path("ok");
    std::fs::create_dir(&ok_dir).unwrap();

    for (what, dir) in [
        ("a nonexistent dir", env.path("missing")),
        ("a file", file),
        ("a dir inside the home", in_home),
        ("the home itself", env.home()),
        ("a dir containing the home", env.path("")),
        ("a dir inside another machine", m1.join("sub")),
        ("a dir containing another machine", env.path("outer")),
        ("another machine's dir", m1.clone()),
    ] {
        let err = create(&env.repo, "m2", &dir).unwrap_err();
        assert!(
            matches!(err, EngineError::BadDir { .. }),
            "{what}: wrong error {err}"
        );
    }
    for name in ["a/b", "new\nline", "", &"x".repeat(65), "..", "a b"] {
        let err = create(&env.repo, name, &ok_dir).unwrap_err();
        assert!(
            matches!(err, EngineError::Model(_)),
            "{name:?}: wrong error {err}"
        );
    }
    create(&env.repo, &"x".repeat(64), &ok_dir).unwrap();
    let other = env.path("other");
    std::fs::create_dir(&other).unwrap();
    let err = create(&env.repo, "m1", &other).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    let names: Vec<String> = env
        .repo
        .machines()
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(
        names.len(),
        2,
        "only the two valid machines exist: {names:?}"
    );
}

#[test]
fn unknown_references_name_what_is_missing() {
    let env = Env::new();
    let t = TestDir::new(&env.path("m"));
    t.file(b"f", b"x", 0o644);
    adopt(&env.repo, "web", &t.root);
    let err = env.repo.checkpoint_show(&r("web@latest")).unwrap_err();
    assert!(matches!(err, EngineError::NoCheckpoints { .. }), "{err}");
    checkpoint(&env.repo, "web");
    for (reference, want_machine) in [("nope@v1", true), ("web@v9", false), ("web@nosuch", false)] {
        let err = env.repo.checkpoint_show(&r(reference)).unwrap_err();
        let ok = if want_machine {
            matches!(err, EngineError::UnknownMachine { .. })
        } else {
            matches!(err, EngineError::UnknownCheckpoint { .. })
        };
        assert!(ok, "{reference}: {err:?}");
        let err = env
            .repo
            .restore(&r(reference), &RestoreOptions::default(), &NoProgress)
            .unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::UnknownMachine { .. } | EngineError::UnknownCheckpoint { .. }
            ),
            "{reference}: {err:?}"
        );
        assert!(env.repo.checkpoint_delete(&r(reference)).is_err());
        assert!(env.repo.diff(&r(reference), None).is_err());
    }
    assert!(matches!(
        env.repo
            .checkpoint("nope", &CheckpointOptions::default(), &NoProgress),
        Err(EngineError::UnknownMachine { .. })
    ));
}

/// One raw entry: name, type, link target, data.
type RawEntry<'a> = (&'a [u8], EntryType, &'a [u8], &'a [u8]);

/// An archive written header by header, so it can hold what well-behaved writers refuse.
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

#[test]
fn hostile_tar_import_is_refused_and_writes_nothing_outside() {
    let env = Env::new();
    let outside = env.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let outside_s = outside.as_os_str().as_bytes();
    let abs_target = [outside_s, b"/abs"].concat();
    let via_link = b"link/pwned".to_vec();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dot-dot",
            raw_tar(&[(b"../outside/x", EntryType::Regular, b"", b"escaped")]),
        ),
        (
            "absolute",
            raw_tar(&[(&abs_target, EntryType::Regular, b"", b"escaped")]),
        ),
        (
            "symlink then write",
            raw_tar(&[
                (b"link", EntryType::Symlink, outside_s, b""),
                (&via_link, EntryType::Regular, b"", b"escaped"),
            ]),
        ),
        (
            "hardlink to outside",
            raw_tar(&[(b"hl", EntryType::Link, b"../outside/target", b"")]),
        ),
    ];
    std::fs::write(outside.join("target"), b"keep").unwrap();
    for (i, (what, bytes)) in cases.into_iter().enumerate() {
        let tar = env.path(&format!("evil{i}.tar"));
        std::fs::write(&tar, bytes).unwrap();
        let err = env
            .repo
            .create_machine(
                &CreateMachineOptions {
                    name: format!("evil{i}"),
                    dir: env.path(&format!("evil{i}")),
                    from_tar: Some(tar),
                },
                &NoProgress,
            )
            .unwrap_err();
        assert!(matches!(err, EngineError::Import(_)), "{what}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains("outside") || msg.contains("..") || msg.contains("absolute"),
            "{what} refused for another reason: {msg}"
        );
        let left: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["target"], "{what} wrote outside");
        assert_eq!(std::fs::read(outside.join("target")).unwrap(), b"keep");
        assert!(
            env.repo.machine_info(&format!("evil{i}")).is_err(),
            "{what}: a failed import registered a machine"
        );
    }
    // A well-formed archive imports and becomes v1.
    let tar = env.path("good.tar");
    std::fs::write(
        &tar,
        raw_tar(&[
            (b"etc/", EntryType::Directory, b"", b""),
            (b"etc/hostname", EntryType::Regular, b"", b"box\n"),
        ]),
    )
    .unwrap();
    let (_, first) = env
        .repo
        .create_machine(
            &CreateMachineOptions {
                name: "good".into(),
                dir: env.path("good"),
                from_tar: Some(tar),
            },
            &NoProgress,
        )
        .unwrap();
    assert_eq!(first.unwrap().checkpoint.id, "good@v1");
    let mut out = Vec::new();
    env.repo.cat(&r("good@v1:/etc/hostname"), &mut out).unwrap();
    assert_eq!(out, b"box\n");
}
