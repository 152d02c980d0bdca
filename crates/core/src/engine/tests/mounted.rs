//! Mounted machines without the overlay up: the upper layer is written directly, as the
//! overlay would write it, and checkpoint, restore, fork and gc must treat it as the machine.

use super::fixture::{TestDir, assert_same, noise, snapshot};
use super::*;
use crate::engine::mounted::CreateMountedOptions;
use crate::engine::run::RunSpec;

fn create_box(env: &Env, from: Option<&str>) -> MountedInfo {
    env.repo
        .create_mounted_machine(
            &CreateMountedOptions {
                name: "box".into(),
                at: None,
                from: from.map(r),
                from_tar: None,
            },
            &NoProgress,
        )
        .unwrap()
}

/// `web` from the full fixture with checkpoint web@v1, and `box` over it; returns web's
/// snapshot.
fn full_web_and_box(env: &Env) -> (super::fixture::Snapshot, MountedInfo) {
    let web = env.path("web");
    TestDir::full(&web);
    let want = snapshot(&web);
    adopt(&env.repo, "web", &web);
    checkpoint(&env.repo, "web");
    (want, create_box(env, Some("web@v1")))
}

fn upper_of(env: &Env, name: &str) -> std::path::PathBuf {
    let m = env.repo.machine_row(name).unwrap();
    env.repo.layout(&m).upper
}

fn changes(env: &Env, a: &str, b: &str) -> Vec<String> {
    env.repo
        .diff(&r(a), Some(&r(b)))
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c.kind.letter(), c.path))
        .collect()
}

#[test]
fn checkpoint_restore_and_fork_move_only_metadata() {
    let env = Env::new();
    let web = env.path("web");
    TestDir::full(&web);
    adopt(&env.repo, "web", &web);
    let w1 = checkpoint(&env.repo, "web");

    let info = create_box(&env, Some("web@v1"));
    assert_eq!(info.head.as_deref(), Some("box@v1"));
    assert_eq!(
        info.base,
        Some(w1.checkpoint.root),
        "the base is the source tree"
    );
    let up = upper_of(&env, "box");
    assert_eq!(
        std::fs::read_dir(&up).unwrap().count(),
        0,
        "a new upper is empty"
    );
    let base_root = std::fs::metadata(web.join("")).unwrap();
    let up_root = std::fs::metadata(&up).unwrap();
    assert_eq!(
        (up_root.mode(), up_root.uid(), up_root.mtime_nsec()),
        (base_root.mode(), base_root.uid(), base_root.mtime_nsec()),
        "the upper root carries the machine directory's metadata"
    );

    // What the overlay would write: a new file, and a whiteout for a deleted one.
    std::fs::write(up.join("newfile"), noise(5000, 1)).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        up.join("empty"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
    let b2 = checkpoint(&env.repo, "box");
    assert_eq!(b2.checkpoint.id, "box@v2");
    assert_eq!(b2.read_bytes, 5000, "only the upper is read");
    assert_eq!(
        changes(&env, "box@v1", "box@v2"),
        vec!["M /", "D /empty", "A /newfile"],
        "the root's mtime moved with the writes inside it"
    );
    assert_eq!(
        b2.checkpoint.entries, w1.checkpoint.entries,
        "one added, one removed"
    );
    assert_eq!(
        b2.checkpoint.logical_bytes,
        w1.checkpoint.logical_bytes + 5000
    );

    // Restore: the undo point is v2 (same root), the upper starts empty, the base is v1.
    let rep = restore(&env.repo, "box@v1");
    assert_eq!(rep.undo.as_deref(), Some("box@v2"));
    assert!(rep.phases.iter().any(|p| p.name == "commit"), "{rep:?}");
    assert_eq!(std::fs::read_dir(&up).unwrap().count(), 0);
    let m = env.repo.machine_row("box").unwrap();
    assert_eq!(m.base.unwrap().root, w1.checkpoint.root);
    // A change after the restore becomes the undo point of the next one.
    std::fs::write(up.join("after"), b"x").unwrap();
    let rep = restore(&env.repo, "box@v2");
    assert_eq!(rep.undo.as_deref(), Some("box@v3"));
    let m = env.repo.machine_row("box").unwrap();
    assert_eq!(m.base.unwrap().root, b2.checkpoint.root);
    let again = checkpoint(&env.repo, "box");
    assert!(again.unchanged, "an empty upper over v2 is v2");
    assert_eq!(again.read_bytes, 0);

    // Fork: each new machine starts at the checkpoint's tree, nothing read or written.
    let forks = env
        .repo
        .fork_mounted(&r("box@v2"), &["a".to_owned(), "b".to_owned()])
        .unwrap();
    for f in &forks {
        assert_eq!(f.base, Some(b2.checkpoint.root));
        assert_eq!(f.head.as_deref(), Some(&*format!("{}@v1", f.name)));
    }
    assert!(changes(&env, "a@v1", "box@v2").is_empty());
}

#[test]
fn gc_keeps_a_base_that_no_checkpoint_names() {
    let env = Env::new();
    let web = env.path("web");
    TestDir::new(&web).file(b"only-here", &noise(300_000, 7), 0o644);
    adopt(&env.repo, "web", &web);
    checkpoint(&env.repo, "web");
    create_box(&env, Some("web@v1"));
    env.repo.checkpoint_delete(&r("box@v1")).unwrap();
    env.repo.remove_machine("web").unwrap();
    for _ in 0..2 {
        env.repo
            .gc(
                &GcOptions {
                    images_max: crate::engine::DEFAULT_IMAGES_MAX,
                    grace: Duration::ZERO,
                    repack_below: 0.0,
                    dry_run: false,
                },
                &NoProgress,
            )
            .unwrap();
    }
    let check = env
        .repo
        .check(&CheckOptions { read_data: true }, &NoProgress)
        .unwrap();
    assert!(check.ok(), "{:?}", check.findings);
    // The base is still whole: a checkpoint of the (empty) upper over it reads its data.
    let c = checkpoint(&env.repo, "box");
    let mut out = Vec::new();
    env.repo
        .cat(&r(&format!("{}:/only-here", c.checkpoint.id)), &mut out)
        .unwrap();
    assert_eq!(out, noise(300_000, 7));
}

#[test]
fn empty_mounted_machine_takes_what_its_upper_holds() {
    let env = Env::new();
    let info = create_box(&env, None);
    assert_eq!(info.head, None);
    let up = upper_of(&env, "box");
    std::fs::create_dir(up.join("etc")).unwrap();
    std::fs::write(up.join("etc/hostname"), b"box\n").unwrap();
    let c = checkpoint(&env.repo, "box");
    assert_eq!(c.checkpoint.id, "box@v1");
    assert_eq!((c.checkpoint.entries, c.checkpoint.logical_bytes), (2, 4));
    let mut out = Vec::new();
    env.repo.cat(&r("box@v1:/etc/hostname"), &mut out).unwrap();
    assert_eq!(out, b"box\n");
}

#[test]
fn mounted_machine_from_a_tar_starts_with_an_empty_upper() {
    let env = Env::new();
    let web = env.path("web");
    TestDir::full(&web);
    adopt(&env.repo, "web", &web);
    let w1 = checkpoint(&env.repo, "web");
    let tar = env.path("web.tar");
    let f = std::fs::File::create(&tar).unwrap();
    env.repo.export(&r("web@v1"), f, &NoProgress).unwrap();
    let info = env
        .repo
        .create_mounted_machine(
            &CreateMountedOptions {
                name: "box".into(),
                at: None,
                from: None,
                from_tar: Some(tar),
            },
            &NoProgress,
        )
        .unwrap();
    assert_eq!(info.head.as_deref(), Some("box@v1"));
    assert_eq!(std::fs::read_dir(upper_of(&env, "box")).unwrap().count(), 0);
    let diff = changes(&env, "web@v1", "box@v1");
    assert!(diff.is_empty(), "the tar round trip is exact: {diff:?}");
    assert_eq!(info.base, Some(w1.checkpoint.root));
}

#[test]
fn up_serves_the_base_exactly_and_restore_while_up_remounts() {
    let env = Env::new();
    let (want, info) = full_web_and_box(&env);
    let up = env.repo.machine_up("box").unwrap();
    assert!(!up.already_up && up.recovered.is_empty(), "{up:?}");
    assert!(up.phases.iter().any(|p| p.name == "overlay"), "{up:?}");
    let at = info.at.clone();
    assert_same(&want, &snapshot(&at), "a new mounted machine over web@v1");
    assert!(env.repo.machine_up("box").unwrap().already_up);

    // Writes through the machine land in the upper; a checkpoint takes exactly the view.
    write(&at.join("etc/hostname"), b"changed\n");
    std::fs::remove_dir_all(at.join("usr/lib")).unwrap();
    // (Writing to one path of a lower hardlink breaks the link, and overlayfs then keeps
    // showing the lower's old nlink on the other paths, so a snapshot of the view would not
    // be the truth there; upper.rs tests that case against path counts.)
    std::fs::write(at.join("cap"), b"copied up and rewritten").unwrap();
    std::fs::create_dir(at.join("srv")).unwrap();
    write(&at.join("srv/data"), &noise(100_000, 5));
    let changed = snapshot(&at);
    let c2 = checkpoint(&env.repo, "box");
    assert_eq!(c2.checkpoint.id, "box@v2");
    assert!(
        c2.read_bytes < 200_000,
        "only the upper is read: {}",
        c2.read_bytes
    );
    let copy = env.path("copy");
    fork(&env.repo, "box@v2", "copy", &copy);
    assert_same(
        &changed,
        &snapshot(&copy),
        "box@v2 restored into a directory",
    );

    // Restore while up: stop, rebase, remount; the view is the target again.
    let rep = restore(&env.repo, "box@v1");
    let names: Vec<&str> = rep.phases.iter().map(|p| p.name).collect();
    assert_eq!(names, ["ingest", "stop", "commit", "remount"], "{rep:?}");
    assert_eq!(rep.undo.as_deref(), Some("box@v2"));
    assert_same(&want, &snapshot(&at), "box restored to v1 while up");
    let rep = restore(&env.repo, "box@v2");
    assert_same(&changed, &snapshot(&at), "box restored to v2 while up");
    assert_eq!(rep.undo.as_deref(), Some("box@v1"));

    let down = env.repo.machine_down("box").unwrap();
    assert!(down.was_up);
    assert_eq!(
        std::fs::read_dir(&at).unwrap().count(),
        0,
        "nothing is left mounted"
    );
    assert!(!env.repo.machine_down("box").unwrap().was_up);
    env.repo.machine_up("box").unwrap();
    assert_same(&changed, &snapshot(&at), "up again after down");
    env.repo.machine_down("box").unwrap();
}

#[test]
fn up_after_a_kill_while_a_rebase_reset_the_work_directory() {
    let env = Env::new();
    let (want, info) = full_web_and_box(&env);
    std::fs::write(
        upper_of(&env, "box").join("kept"),
        b"written before the kill",
    )
    .unwrap();
    // A restore killed after its commit, between removing `work/` and making it again.
    let m = env.repo.machine_row("box").unwrap();
    std::fs::remove_dir_all(env.repo.layout(&m).work).unwrap();
    env.repo.machine_up("box").unwrap();
    assert_eq!(
        std::fs::read(info.at.join("kept")).unwrap(),
        b"written before the kill"
    );
    let mut seen = snapshot(&info.at);
    seen.remove(b"kept".as_slice());
    seen.remove(b"".as_slice()); // the root's mtime: `kept` was made in it
    let mut want = want;
    want.remove(b"".as_slice());
    assert_same(&want, &seen, "the base under the upper after up");
    env.repo.machine_down("box").unwrap();

    // With no upper at all, up refuses and says what is missing.
    std::fs::remove_dir_all(upper_of(&env, "box")).unwrap();
    let err = env.repo.machine_up("box").unwrap_err().to_string();
    assert!(
        err.contains("upper layer") && err.contains("missing"),
        "{err}"
    );
    assert!(!env.repo.is_up(&m), "nothing is left mounted");
}

/// A mounted machine `box` over a machine holding a few host binaries (sh, sleep, cat, …).
fn mini_box(env: &Env) -> (crate::sandbox::tests::MiniRoot, std::path::PathBuf) {
    let mini = crate::sandbox::tests::MiniRoot::new();
    adopt(&env.repo, "mini", mini.path());
    checkpoint(&env.repo, "mini");
    let info = create_box(env, Some("mini@v1"));
    (mini, info.at)
}

fn sh(script: &str) -> RunSpec {
    RunSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

#[test]
fn run_brings_the_machine_up_and_its_writes_land_in_the_upper() {
    let env = Env::new();
    let (_mini, at) = mini_box(&env);
    let mut brought_up = None;
    let status = env
        .repo
        .run("box", &sh("echo hello > /greeting; exit 7"), &mut |s| {
            brought_up = Some(s.brought_up)
        })
        .unwrap();
    assert_eq!(status.code(), Some(7), "the command's exit code comes back");
    assert_eq!(brought_up, Some(true));
    assert_eq!(std::fs::read(at.join("greeting")).unwrap(), b"hello\n");
    assert!(
        upper_of(&env, "box").join("greeting").exists(),
        "written to the upper"
    );
    checkpoint(&env.repo, "box");
    assert_eq!(
        changes(&env, "box@v1", "box@v2"),
        ["M /", "A /greeting"],
        "exactly what the command changed"
    );
    env.repo.machine_down("box").unwrap();
}

#[test]
fn checkpoint_freezes_running_processes_and_down_stops_them() {
    let env = Env::new();
    let (_mini, at) = mini_box(&env);
    env.repo.machine_up("box").unwrap();
    let home = env.home();
    let runner = std::thread::spawn(move || {
        let repo = super::repo(&home);
        repo.run(
            "box",
            // One write per line: a frozen instant holds only whole lines.
            &sh("i=0; while true; do i=$((i+1)); echo $i >> /counter; done"),
            &mut |_| {},
        )
        .unwrap()
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !at.join("counter").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the loop never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let c = checkpoint(&env.repo, "box");
    let names: Vec<&str> = c.phases.iter().map(|p| p.name).collect();
    assert_eq!(names, ["freeze", "ingest", "commit"], "{:?}", c.phases);
    let mut counted = Vec::new();
    env.repo
        .cat(&r(&format!("{}:/counter", c.checkpoint.id)), &mut counted)
        .unwrap();
    // The last value written before the freeze; a frozen instant holds only whole lines.
    let last = |v: &[u8]| -> (u64, bool) {
        let text = String::from_utf8_lossy(v);
        let whole = text.is_empty() || text.ends_with('\n');
        let n = text
            .lines()
            .last()
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        (n, whole)
    };
    let (n, whole) = last(&counted);
    assert!(whole, "the checkpoint caught a line half written");
    assert!(n > 0, "the counter was caught running");
    // The processes run again after the checkpoint.
    let later = |v: &[u8]| last(v).0 > n;
    while !later(&std::fs::read(at.join("counter")).unwrap_or_default()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the loop did not resume"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let down = env.repo.machine_down("box").unwrap();
    assert!(
        down.phases.iter().any(|p| p.name == "stop processes"),
        "{down:?}"
    );
    let status = runner.join().unwrap();
    assert!(!status.success(), "the loop was stopped: {status:?}");
}

#[test]
fn a_file_copied_up_unchanged_costs_no_new_chunks() {
    let env = Env::new();
    let web = env.path("web");
    TestDir::full(&web);
    adopt(&env.repo, "web", &web);
    checkpoint(&env.repo, "web");
    let info = create_box(&env, Some("web@v1"));
    env.repo.machine_up("box").unwrap();
    // A chmod copies up only the metadata: nothing is read at all.
    std::fs::set_permissions(
        info.at.join("usr/lib/big"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let copied = upper_of(&env, "box").join("usr/lib/big");
    assert!(
        rustix::fs::lgetxattr(&copied, "trusted.overlay.metacopy", &mut [0u8; 64]).is_ok(),
        "a metadata-only copy-up"
    );
    let c = checkpoint(&env.repo, "box");
    assert_eq!(c.read_bytes, 0, "the bytes are the base's, by id");
    // Opening it for writing copies the bytes up too; unchanged, they are still the base's.
    drop(
        std::fs::OpenOptions::new()
            .write(true)
            .open(info.at.join("usr/lib/big"))
            .unwrap(),
    );
    assert!(
        rustix::fs::lgetxattr(&copied, "trusted.overlay.metacopy", &mut [0u8; 64]).is_err(),
        "a full copy-up now"
    );
    let c = checkpoint(&env.repo, "box");
    assert_eq!(c.read_bytes, 300_000, "the copy in the upper is read");
    assert!(
        c.added_bytes < 4096,
        "only trees are new, no chunk: {} bytes added",
        c.added_bytes
    );
    let diff = env.repo.diff(&r("box@v1"), Some(&r("box@v2"))).unwrap();
    let got: Vec<(String, Vec<&str>)> = diff
        .iter()
        .map(|c| (c.path.clone(), c.what.clone()))
        .collect();
    assert_eq!(
        got,
        [("/usr/lib/big".to_owned(), vec!["mode"])],
        "a chmod, nothing else"
    );
    env.repo.machine_down("box").unwrap();
}

/// Regression: a mounted fork killed after its v1 was committed but before its base was
/// recorded left a machine that every command called corrupt, and one killed before its v1
/// left a name that no fork could take again.
#[test]
fn a_killed_mounted_fork_is_finished_by_the_next_command_or_replaced_by_the_next_fork() {
    use crate::catalog::MachineKind;
    let env = Env::new();
    let web = env.path("web");
    TestDir::full(&web);
    adopt(&env.repo, "web", &web);
    let w1 = checkpoint(&env.repo, "web");
    let (_, c) = env.repo.resolve(&r("web@v1")).unwrap();

    // Killed after v1: the machine row and its v1, no base and no upper.
    let at = env.path("a-root");
    std::fs::create_dir(&at).unwrap();
    let m = env
        .repo
        .register_machine_kind("a", &at, MachineKind::Mounted, None)
        .unwrap();
    env.repo
        .adopt_checkpoint(&m, &c, "created from web@v1".to_owned())
        .unwrap();
    let a2 = checkpoint(&env.repo, "a");
    assert_eq!(a2.checkpoint.id, "a@v2");
    assert_eq!(
        env.repo.machine_row("a").unwrap().base.map(|b| b.root),
        Some(w1.checkpoint.root),
        "the next command made v1's tree the base"
    );
    assert_eq!(
        changes(&env, "a@v1", "a@v2"),
        Vec::<String>::new(),
        "nothing was written over the base"
    );

    // Killed before v1: only the row, which holds nothing.
    let at = env.path("b-root");
    std::fs::create_dir(&at).unwrap();
    env.repo
        .register_machine_kind("b", &at, MachineKind::Mounted, None)
        .unwrap();
    let e = env
        .repo
        .checkpoint("b", &CheckpointOptions::default(), &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(e.contains("interrupted") && e.contains("cairn fork"), "{e}");
    let forks = env
        .repo
        .fork_mounted(&r("web@v1"), &["b".to_owned()])
        .unwrap();
    assert_eq!(
        forks[0].head.as_deref(),
        Some("b@v1"),
        "the fork took its place"
    );
    assert_eq!(forks[0].base, Some(w1.checkpoint.root));
    assert!(
        env.repo
            .check(&Default::default(), &NoProgress)
            .unwrap()
            .findings
            .is_empty()
    );
}

#[test]
fn partial_restore_while_up_leaves_the_processes_running() {
    let env = Env::new();
    let (_mini, at) = mini_box(&env);
    env.repo.machine_up("box").unwrap();
    std::fs::remove_file(at.join("bin/true")).unwrap();
    write(&at.join("tmp/note"), b"outside the restored path");
    let home = env.home();
    let runner = std::thread::spawn(move || {
        let repo = super::repo(&home);
        let counter = "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; done";
        repo.run("box", &sh(counter), &mut |_| {}).unwrap()
    });
    let count = || {
        let text = std::fs::read_to_string(at.join("tmp/counter")).unwrap_or_default();
        text.trim().parse::<u64>().unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while count() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the loop never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let rep = restore(&env.repo, "box@v1:/bin");
    let names: Vec<&str> = rep.phases.iter().map(|p| p.name).collect();
    assert_eq!(names, ["ingest", "apply"], "no stop, no remount: {rep:?}");
    assert_eq!((rep.written_files, rep.removed), (1, 0), "{rep:?}");
    assert!(at.join("bin/true").exists(), "restored through the overlay");
    assert!(
        upper_of(&env, "box").join("bin/true").exists(),
        "written to the upper"
    );
    assert!(at.join("tmp/note").exists(), "outside /bin nothing changed");
    let n = count();
    while count() <= n {
        assert!(
            std::time::Instant::now() < deadline,
            "the loop stopped with the restore"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    env.repo.machine_down("box").unwrap();
    assert!(!runner.join().unwrap().success(), "stopped by down");
}

#[test]
fn every_operation_on_a_mounted_machine_is_audited_once() {
    let env = Env::new();
    let (_, info) = full_web_and_box(&env);
    std::fs::write(upper_of(&env, "box").join("note"), b"x").unwrap();
    checkpoint(&env.repo, "box");
    std::fs::write(upper_of(&env, "box").join("later"), b"y").unwrap();
    restore(&env.repo, "box@v1");
    let opts = CheckpointOptions {
        name: Some("dup".into()),
        ..Default::default()
    };
    env.repo.checkpoint("box", &opts, &NoProgress).unwrap();
    assert!(env.repo.checkpoint("box", &opts, &NoProgress).is_err());
    env.repo.fork_mounted(&r("box@v2"), &["a".into()]).unwrap();
    assert!(env.repo.fork_mounted(&r("box@v2"), &["a".into()]).is_err());

    let log = env.repo.audit_log(None, None).unwrap();
    let rows = |op: &str, machine: &str| -> Vec<(Option<String>, String, String)> {
        log.iter()
            .filter(|a| a.op == op && a.machine.as_deref() == Some(machine))
            .map(|a| (a.target.clone(), a.outcome.clone(), a.detail.clone()))
            .collect()
    };
    let row = |t: Option<&str>, outcome: &str, detail: &str| {
        (t.map(str::to_owned), outcome.to_owned(), detail.to_owned())
    };
    let at = info.at.display().to_string();
    assert_eq!(
        rows("machine-create", "box"),
        [row(None, "ok", &at)],
        "{log:#?}"
    );
    let created = rows("create", "box");
    assert_eq!(
        created[..3],
        [
            row(Some("box@v2"), "ok", "box@v2"),
            row(Some("box@v3"), "ok", "automatic undo point"),
            row(Some("box@v4"), "ok", "box@v4"),
        ],
        "{log:#?}"
    );
    assert_eq!(created.len(), 4, "{created:#?}");
    assert_eq!(
        (created[3].0.as_deref(), created[3].1.as_str()),
        (None, "error")
    );
    assert!(created[3].2.contains("dup"), "{created:#?}");
    let forks = rows("fork", "a");
    assert_eq!(forks.len(), 2, "{forks:#?}");
    assert_eq!(forks[0], row(Some("box@v2"), "ok", "a@v1"));
    assert_eq!(
        (forks[1].0.as_deref(), forks[1].1.as_str()),
        (Some("box@v2"), "error")
    );
    assert!(forks[1].2.contains("already exists"), "{forks:#?}");
}
