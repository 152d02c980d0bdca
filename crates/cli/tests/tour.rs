//! The README's two-minute tour, command for command, as a user would type it.

use crate::util::{Env, TestDir, assert_same, snapshot};

#[test]
fn the_readme_tour_works_as_written() {
    let env = Env::new();
    let web = env.path("web");
    std::fs::create_dir_all(web.join("etc")).unwrap();
    std::fs::write(web.join("etc/motd"), "hello\n").unwrap();

    let run = env.cairn(["machine", "create", "web", "--dir", "web"]).ok();
    assert!(run.stderr.contains("tracking"), "{}", run.stderr);
    let run = env
        .cairn(["checkpoint", "create", "web", "--name", "clean", "-m"])
        .arg("fresh install")
        .ok();
    assert_eq!(run.stdout(), "web@v1\n");
    let v1 = snapshot(&web);

    std::fs::write(web.join("etc/motd"), "broken\n").unwrap();
    std::fs::remove_file(web.join("etc/motd")).unwrap();
    let run = env
        .cairn(["checkpoint", "create", "web", "-m", "after the accident"])
        .ok();
    assert_eq!(run.stdout(), "web@v2\n");
    let v2 = snapshot(&web);

    let diff = env.cairn(["diff", "web@v1", "web@v2"]).ok().stdout();
    assert_eq!(diff, "M /etc (mtime)\nD /etc/motd\n");
    assert_eq!(env.cairn(["diff", "web@v1"]).ok().stdout(), diff);

    let out = env.cairn(["restore", "web@clean"]).ok().stdout();
    assert!(out.starts_with("restored web@v1: 1 file written"), "{out}");
    assert!(out.contains("undo with: cairn restore web@v2"), "{out}");
    assert_same(&snapshot(&web), &v1, "restore web@clean");

    let out = env
        .cairn(["restore", "web@v2", "--path", "/etc"])
        .ok()
        .stdout();
    assert!(out.starts_with("restored /etc of web@v2"), "{out}");
    assert!(!web.join("etc/motd").exists(), "the subtree was restored");
    let etc_v2 = &v2[b"etc".as_slice()];
    assert_eq!(snapshot(&web)[b"etc".as_slice()], *etc_v2);

    let out = env
        .cairn(["fork", "web@v1", "web-exp", "--dir", "web-exp"])
        .ok();
    assert_eq!(out.stdout(), "web-exp@v1\n");
    assert_same(&snapshot(&env.path("web-exp")), &v1, "fork of web@v1");

    assert_eq!(
        env.cairn(["cat", "web@v1:/etc/motd"]).ok().stdout,
        b"hello\n"
    );

    let list = env.cairn(["checkpoint", "list", "web"]).ok().stdout();
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(
        lines[0].starts_with("ID ") && lines[0].contains("EXCLUSIVE"),
        "{list}"
    );
    assert!(lines[1].starts_with("web@v1  clean") && lines[1].ends_with("fresh install"));
    assert!(lines[2].starts_with("web@v2 ") && lines[2].ends_with("after the accident"));

    env.cairn(["export", "web@v1", "-o", "web-v1.tar"]).ok();
    assert!(env.path("web-v1.tar").metadata().unwrap().len() > 0);
    let out = env
        .cairn([
            "machine",
            "create",
            "copy",
            "--from-tar",
            "web-v1.tar",
            "--dir",
            "copy",
        ])
        .ok();
    assert_eq!(out.stdout(), "copy@v1\n");
    assert_same(&snapshot(&env.path("copy")), &v1, "import of the export");

    let du = env.cairn(["du"]).ok().stdout();
    for m in ["copy", "web", "web-exp", "  web@v2", "store: "] {
        assert!(du.lines().any(|l| l.starts_with(m)), "{m} in {du}");
    }

    env.cairn(["checkpoint", "delete", "web@v2"]).ok();
    let out = env.cairn(["gc"]).ok().stdout();
    assert!(out.contains("1 marked unreferenced"), "{out}");
    let out = env.cairn(["check", "--read-data"]).ok().stdout();
    assert!(out.ends_with("no problems\n"), "{out}");

    let audit = env.cairn(["log", "--audit"]).ok().stdout();
    let ops: Vec<&str> = audit
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(4).unwrap_or(""))
        .collect();
    assert_eq!(
        ops,
        [
            "machine-create",
            "create",
            "create",
            "restore",
            "restore",
            "fork",
            "machine-create",
            "delete",
            "gc"
        ],
        "{audit}"
    );
    assert!(audit.contains("tester"), "the author is recorded: {audit}");
}

#[test]
fn every_entry_kind_survives_checkpoint_restore_fork_and_tar() {
    let env = Env::new();
    let dir = env.path("box");
    let t = TestDir::full(&dir);
    let want = snapshot(&dir);
    for (kind, n) in [("char", 1), ("block", 1), ("fifo", 1), ("symlink", 3)] {
        assert_eq!(
            want.values().filter(|s| s.kind == kind).count(),
            n,
            "{kind}"
        );
    }
    assert_eq!(want[b"etc/passwd".as_slice()].nlink, 3, "hardlinks");
    assert!(want[b"disk.img".as_slice()].data.len() == 2, "sparse");
    env.machine("box", &dir);
    assert_eq!(env.checkpoint("box"), "box@v1");

    // Wreck it in every way, then restore.
    std::fs::remove_dir_all(t.path(b"usr")).unwrap();
    std::fs::remove_file(t.path(b"dev/null")).unwrap();
    t.file(b"dev/null", b"not a device", 0o644)
        .chmod(b"suid", 0o755)
        .owner(b"cap", 1, 1)
        .xattr(b"acl", "user.extra", b"x")
        .file(b"new\nline", b"changed", 0o600)
        .symlink(b"new-link", b"\xff")
        .file(b"disk.img", b"no longer sparse", 0o644);
    std::fs::remove_file(t.path(b"zz-passwd")).unwrap();
    env.checkpoint("box");
    let v = env.restore("box@v1");
    assert_eq!(v["undo"], "box@v2");
    assert_same(&snapshot(&dir), &want, "restore of every entry kind");

    env.cairn(["fork", "box@v1", "box2", "--dir", "box2"])
        .json();
    assert_same(
        &snapshot(&env.path("box2")),
        &want,
        "fork of every entry kind",
    );

    env.cairn(["export", "box@v1", "-o", "box.tar"]).ok();
    env.cairn([
        "machine",
        "create",
        "box3",
        "--from-tar",
        "box.tar",
        "--dir",
        "box3",
    ])
    .ok();
    assert_same(&snapshot(&env.path("box3")), &want, "tar round trip");

    // Undo the restore: back to the wrecked state exactly.
    let wrecked_restore = env.restore("box@v2");
    assert_eq!(wrecked_restore["target"], "box@v2");
    assert_eq!(
        std::fs::read(t.path(b"dev/null")).unwrap(),
        b"not a device",
        "the undo point holds the wrecked state"
    );
    let out = env.cairn(["check", "--read-data"]).json();
    assert_eq!(out["findings"], serde_json::json!([]));
}

#[test]
fn export_carries_the_machine_directory_itself() {
    let env = Env::new();
    let dir = env.path("m");
    TestDir::new(&dir)
        .file(b"f", b"data", 0o644)
        .chmod(b"", 0o2750)
        .owner(b"", 1234, 5678)
        .xattr(b"", "user.root", b"the machine dir itself")
        .stamp(1_700_000_000);
    let want = snapshot(&dir);
    env.machine("m", &dir);
    env.checkpoint("m");
    env.cairn(["export", "m@v1", "-o", "m.tar"]).ok();
    env.cairn([
        "machine",
        "create",
        "n",
        "--from-tar",
        "m.tar",
        "--dir",
        "n",
    ])
    .ok();
    assert_same(&snapshot(&env.path("n")), &want, "import of the export");
}
