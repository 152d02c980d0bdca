//! Restore of one path of a mounted machine, through its overlay. Every change is made to
//! twins: a directory machine `d` and a mounted machine `box` over `d@v1`. A partial restore
//! of `box` must give exactly what the same restore gives `d`, the path must equal the target
//! and everything else must stay as it was (but for what a hardlink crossing the path shares).

use super::fixture::{Snap, Snapshot, TestDir, assert_same, noise, snapshot};
use super::*;
use crate::engine::mounted::{CreateMountedOptions, is_overlay_at};
use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};
use std::path::PathBuf;

struct Twins {
    env: Env,
    /// The directory machine `d`.
    dir: PathBuf,
    /// Where `box` appears while it is up.
    at: PathBuf,
}

impl Twins {
    /// `d` from the full fixture with its v1, and `box` over `d@v1`, up.
    fn new() -> Twins {
        let env = Env::new();
        let dir = env.path("d");
        TestDir::full(&dir);
        adopt(&env.repo, "d", &dir);
        checkpoint(&env.repo, "d");
        let info = env
            .repo
            .create_mounted_machine(
                &CreateMountedOptions {
                    name: "box".into(),
                    at: None,
                    from: Some(r("d@v1")),
                    from_tar: None,
                },
                &NoProgress,
            )
            .unwrap();
        env.repo.machine_up("box").unwrap();
        Twins {
            env,
            dir,
            at: info.at,
        }
    }

    /// Makes the same change to both machines (`box` through its overlay), then gives every
    /// directory it touched the same mtime in both.
    fn each(&self, round: i64, change: impl Fn(&Path)) {
        for root in [&self.dir, &self.at] {
            change(root);
            settle(root, round);
        }
        assert_same(&snapshot(&self.dir), &snapshot(&self.at), "the twins");
    }

    /// Restores `box@REF` and `d@REF` with the same `:/PATH`, asserting the same outcome.
    fn restore(&self, reference: &str) -> RestoreReport {
        let mine = restore(&self.env.repo, &format!("box@{reference}"));
        let theirs = restore(&self.env.repo, &format!("d@{reference}"));
        assert_eq!(
            (mine.written_files, mine.removed, mine.metadata_only),
            (theirs.written_files, theirs.removed, theirs.metadata_only),
            "what the restore of {reference} did: {mine:?} {theirs:?}"
        );
        mine
    }

    fn is_up(&self) -> bool {
        is_overlay_at(&self.at)
    }

    /// The view of `box` (brought up to look at it, if it is down).
    fn view(&self) -> Snapshot {
        if !self.is_up() {
            self.env.repo.machine_up("box").unwrap();
        }
        snapshot(&self.at)
    }
}

/// Gives every directory changed since the fixture was stamped an mtime that depends only on
/// its path and `round`, deepest first; files are left alone.
fn settle(root: &Path, round: i64) {
    let mut dirs = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            }
        }
        dirs.push(d);
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        if std::fs::metadata(&d).unwrap().mtime() > 1_650_000_000 {
            let rel = d.strip_prefix(root).unwrap();
            stamp(&d, round, rel.as_os_str().as_encoded_bytes());
        }
    }
}

fn stamp(p: &Path, round: i64, key: &[u8]) {
    let h = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let t = Timespec {
        tv_sec: 1_700_000_000 + round * 100_000 + (h % 10_000) as i64,
        tv_nsec: (h % 1_000_000_000) as i64,
    };
    let ts = Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(CWD, p, &ts, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

/// Writes a file and gives it an mtime that depends only on its path and `round`.
fn put(root: &Path, rel: &str, data: &[u8], round: i64) {
    write(&root.join(rel), data);
    stamp(&root.join(rel), round, rel.as_bytes());
}

/// The entries at and below `path` (`b"etc"`).
fn inside(s: &Snapshot, path: &[u8]) -> Snapshot {
    s.iter()
        .filter(|(k, _)| is_under(k, path))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The entries neither at nor below `path`.
fn outside(s: &Snapshot, path: &[u8]) -> Snapshot {
    s.iter()
        .filter(|(k, _)| !is_under(k, path))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn is_under(k: &[u8], path: &[u8]) -> bool {
    k == path || (k.starts_with(path) && k.get(path.len()) == Some(&b'/'))
}

fn entry<'a>(s: &'a mut Snapshot, path: &[u8]) -> &'a mut Snap {
    s.get_mut(path)
        .unwrap_or_else(|| panic!("{} is missing", String::from_utf8_lossy(path)))
}

/// What `box@v2` holds (and `d@v2`): changes inside and outside /etc, and a hardlink from
/// /etc/shared to /srv-shared that crosses its boundary.
fn towards_the_target(root: &Path) {
    put(root, "etc/hostname", b"target\n", 1);
    put(root, "etc/added", &noise(3000, 20), 1);
    put(root, "etc/conf.d/a", b"a", 1);
    put(root, "etc/conf.d/b", b"b", 1);
    put(root, "etc/shared", &noise(5000, 21), 1);
    std::fs::hard_link(root.join("etc/shared"), root.join("srv-shared")).unwrap();
    put(root, "home/user/notes", b"notes of the target", 1);
}

/// The live state the restores start from: edits, deletions and creations on both sides of
/// /etc, and /etc/shared replaced, which breaks its link to /srv-shared.
fn after_the_target(root: &Path) {
    put(root, "etc/hostname", b"live\n", 2);
    std::fs::remove_file(root.join("etc/added")).unwrap();
    put(root, "etc/extra", b"only live", 2);
    put(root, "etc/shared.new", &noise(4000, 22), 2);
    std::fs::rename(root.join("etc/shared.new"), root.join("etc/shared")).unwrap();
    std::fs::remove_file(root.join("etc/conf.d/a")).unwrap();
    std::fs::set_permissions(
        root.join("etc/conf.d/b"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    put(root, "etc/live-dir/inner", b"x", 2);
    put(root, "home/user/notes", b"live notes", 2);
    put(root, "outside-live", b"created after the target", 2);
    std::fs::remove_file(root.join("usr/lib/deep/er/lib.so")).unwrap();
    put(root, "usr/lib/big", &noise(300_000, 23), 2);
}

fn partial_restore_equals_the_directory_machines(up: bool) {
    let t = Twins::new();
    t.each(1, towards_the_target);
    checkpoint(&t.env.repo, "d");
    assert_eq!(checkpoint(&t.env.repo, "box").checkpoint.id, "box@v2");
    let target = t.view();
    t.each(2, after_the_target);
    let live = t.view();
    if !up {
        t.env.repo.machine_down("box").unwrap();
    }

    // A directory: /etc is the target's again, the rest is untouched.
    let rep = t.restore("v2:/etc");
    let phases: Vec<&str> = rep.phases.iter().map(|p| p.name).collect();
    match up {
        true => assert_eq!(phases, ["ingest", "apply"], "{rep:?}"),
        false => assert_eq!(phases, ["up", "ingest", "apply", "down"], "{rep:?}"),
    }
    assert_eq!(t.is_up(), up, "the machine is left up or down as it was");
    assert_eq!(rep.undo.as_deref(), Some("box@v3"));
    assert!(rep.written_files >= 3 && rep.removed >= 2, "{rep:?}");
    let after_etc = t.view();
    assert_same(
        &snapshot(&t.dir),
        &after_etc,
        "box and d after the restore of /etc",
    );
    assert_same(
        &inside(&after_etc, b"etc"),
        &inside(&target, b"etc"),
        "/etc",
    );
    // The crossing link is made again from the outside path's side, and linking it gave its
    // directory (the root) the target's metadata, as it does in a directory machine.
    let mut want = outside(&live, b"etc");
    let shared = entry(&mut want, b"srv-shared");
    (shared.nlink, shared.group) = (2, b"etc/shared".to_vec());
    entry(&mut want, b"").mtime = target[&b""[..]].mtime;
    assert_same(&outside(&after_etc, b"etc"), &want, "outside /etc");

    // A file, then a path the target does not have: only they change (and the mtime of the
    // directory holding them, as in a directory machine).
    let mut now_stamped = Vec::new();
    for (path, parent) in [("usr/lib/big", "usr/lib"), ("outside-live", "")] {
        let before = t.view();
        if !up {
            t.env.repo.machine_down("box").unwrap();
        }
        t.restore(&format!("v2:/{path}"));
        assert_eq!(t.is_up(), up);
        let after = t.view();
        let (path, parent) = (path.as_bytes(), parent.as_bytes());
        now_stamped.push(parent);
        let mut mine = after.clone();
        let mut theirs = snapshot(&t.dir);
        for p in &now_stamped {
            entry(&mut mine, p).mtime = (0, 0);
            entry(&mut theirs, p).mtime = (0, 0);
        }
        assert_same(&theirs, &mine, "box and d after a restore of one entry");
        assert_same(&inside(&after, path), &inside(&target, path), "the entry");
        let mut want = outside(&before, path);
        entry(&mut want, parent).mtime = after[parent].mtime;
        assert_same(&outside(&after, path), &want, "beside the entry");
    }
    assert!(!t.at.join("outside-live").exists());

    // The undo point of the first restore holds the live state before it, whole.
    t.env.repo.machine_down("box").unwrap();
    restore(&t.env.repo, "box@v3");
    assert_same(&t.view(), &live, "box@v3, the undo point");
    let check = t
        .env
        .repo
        .check(&CheckOptions { read_data: true }, &NoProgress);
    assert!(check.unwrap().ok());
    t.env.repo.machine_down("box").unwrap();
}

#[test]
fn partial_restore_of_a_mounted_machine_that_is_up() {
    partial_restore_equals_the_directory_machines(true);
}

#[test]
fn partial_restore_of_a_mounted_machine_that_is_down_mounts_it_for_the_restore() {
    partial_restore_equals_the_directory_machines(false);
}

/// The stat cache of a mounted machine describes its upper: after a partial restore the next
/// checkpoint must see exactly the view, whatever the cache held for the restored paths.
#[test]
fn a_checkpoint_after_a_partial_restore_is_the_view() {
    let t = Twins::new();
    t.each(1, towards_the_target);
    checkpoint(&t.env.repo, "box");
    t.each(2, after_the_target);
    // The cache now knows the live files of /etc (written long enough before it was read).
    std::thread::sleep(Duration::from_millis(60));
    checkpoint(&t.env.repo, "box");
    restore(&t.env.repo, "box@v2:/etc");
    let c = checkpoint(&t.env.repo, "box");
    let copy = t.env.path("copy");
    fork(&t.env.repo, &c.checkpoint.id, "copy", &copy);
    assert_same(
        &snapshot(&copy),
        &t.view(),
        "the checkpoint after the restore",
    );
    t.env.repo.machine_down("box").unwrap();
}

/// A partial restore killed while applying leaves its journal and half its work; the next
/// command completes it through the view and leaves the machine down, as the restore would.
#[test]
fn an_interrupted_partial_restore_is_completed_by_the_next_command() {
    let t = Twins::new();
    t.each(1, towards_the_target);
    checkpoint(&t.env.repo, "box");
    let target = t.view();
    t.each(2, after_the_target);
    let live = t.view();
    // What a restore of a machine that was down did before it was killed: the undo point,
    // the journal, and some of /etc (the machine still up, as it had brought it up).
    let undo = checkpoint(&t.env.repo, "box");
    let m = t.env.repo.machine_row("box").unwrap();
    let (_, v2) = t.env.repo.resolve(&r("box@v2")).unwrap();
    let journal = serde_json::json!({
        "op": "restore",
        "target": v2.id,
        "target_ref": "box@v2",
        "path": [b"etc".to_vec()],
        "down_after": true,
    });
    t.env
        .repo
        .catalog
        .set_pending(m.id, Some(&journal.to_string()))
        .unwrap();
    write(&t.at.join("etc/hostname"), b"target\n");
    std::fs::remove_file(t.at.join("etc/extra")).unwrap();
    let shown = t.env.repo.machine_info("box").unwrap();
    assert_eq!(shown.interrupted_restore.as_deref(), Some("box@v2:/etc"));

    let c = checkpoint(&t.env.repo, "box");
    assert!(!t.is_up(), "the machine was up only for the restore");
    assert_eq!(t.env.repo.machine_row("box").unwrap().pending, None);
    let view = t.view();
    assert_same(&inside(&view, b"etc"), &inside(&target, b"etc"), "/etc");
    let copy = t.env.path("copy");
    fork(&t.env.repo, &c.checkpoint.id, "copy", &copy);
    assert_same(
        &snapshot(&copy),
        &view,
        "the checkpoint after the completion",
    );
    assert_eq!(
        snapshot(&copy)[&b"home/user/notes"[..]],
        live[&b"home/user/notes"[..]],
        "outside /etc is the live state"
    );

    // The same journal on a machine that is down: the next command mounts it to finish.
    t.env.repo.machine_down("box").unwrap();
    restore(&t.env.repo, &undo.checkpoint.id);
    let mut journal = journal;
    journal["down_after"] = false.into();
    t.env
        .repo
        .catalog
        .set_pending(m.id, Some(&journal.to_string()))
        .unwrap();
    let up = t.env.repo.machine_up("box").unwrap();
    assert!(!up.already_up, "completed with the machine down again");
    assert_eq!(t.env.repo.machine_row("box").unwrap().pending, None);
    assert_same(&inside(&t.view(), b"etc"), &inside(&target, b"etc"), "/etc");
    t.env.repo.machine_down("box").unwrap();
}
