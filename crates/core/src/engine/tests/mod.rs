//! Engine tests on small generated trees, run as root (the CLI tests cover the binary end to
//! end). Shared helpers live here; each area has its own module.

mod check;
mod concurrency;
mod datalayer;
mod fixture;
mod gc;
mod mount;
mod mounted;
mod partial;
mod roundtrip;
mod safety;
mod upper;

use super::*;
use crate::model::Ref;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

fn repo(home: &Path) -> Repo {
    repo_as(home, "tester", Duration::from_secs(5))
}

fn repo_as(home: &Path, author: &str, lock_wait: Duration) -> Repo {
    Repo::open(&RepoOptions {
        home: home.to_owned(),
        author: author.into(),
        lock_wait,
        lower_server: LowerServer::InProcess,
        lower_images: true,
    })
    .unwrap()
}

fn r(s: &str) -> Ref {
    Ref::parse(s.as_bytes()).unwrap()
}

/// Adopts `dir` as machine `name`.
fn adopt(repo: &Repo, name: &str, dir: &Path) -> MachineInfo {
    repo.create_machine(
        &CreateMachineOptions {
            name: name.into(),
            dir: dir.to_owned(),
            from_tar: None,
        },
        &NoProgress,
    )
    .unwrap()
    .0
}

fn checkpoint(repo: &Repo, machine: &str) -> CheckpointReport {
    repo.checkpoint(machine, &CheckpointOptions::default(), &NoProgress)
        .unwrap()
}

fn restore(repo: &Repo, reference: &str) -> RestoreReport {
    repo.restore(&r(reference), &RestoreOptions::default(), &NoProgress)
        .unwrap()
}

fn fork(repo: &Repo, reference: &str, name: &str, dir: &Path) -> RestoreReport {
    repo.fork(
        &r(reference),
        &ForkOptions {
            name: name.into(),
            dir: dir.to_owned(),
        },
        &NoProgress,
    )
    .unwrap()
}

/// A tempdir holding a cairn home (`home`) and room for machines beside it.
struct Env {
    tmp: tempfile::TempDir,
    repo: Repo,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo(&tmp.path().join("home"));
        Env { tmp, repo }
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.tmp.path().join(rel)
    }

    fn home(&self) -> std::path::PathBuf {
        self.tmp.path().join("home")
    }
}

impl Drop for Env {
    /// A test that failed with its machine up would otherwise leave the overlay and view
    /// mounted, pinning the tempdir.
    fn drop(&mut self) {
        crate::mount::detach_all_below(self.tmp.path());
    }
}

fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// (path, kind, mode, size, content) of every entry, for comparing trees.
fn snapshot(dir: &Path) -> Vec<(String, u32, u64, Vec<u8>, i64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let content = if m.file_type().is_file() {
                std::fs::read(&p).unwrap()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                Vec::new()
            };
            let mtime = if m.file_type().is_dir() {
                0
            } else {
                m.mtime_nsec() + m.mtime() * 1_000_000_000
            };
            out.push((
                rel,
                m.mode(),
                m.size() * u64::from(!m.is_dir()),
                content,
                mtime,
            ));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn checkpoint_restore_fork_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let dir = tmp.path().join("m");
    write(&dir.join("etc/hostname"), b"box\n");
    write(&dir.join("usr/lib/big"), &vec![7u8; 300_000]);
    write(&dir.join("usr/share/doc/a"), b"doc");
    symlink("/etc/hostname", dir.join("link")).unwrap();
    std::fs::hard_link(dir.join("etc/hostname"), dir.join("usr/hn")).unwrap();
    std::fs::set_permissions(
        dir.join("usr/share/doc/a"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    let repo = repo(&home);
    repo.create_machine(
        &CreateMachineOptions {
            name: "web".into(),
            dir: dir.clone(),
            from_tar: None,
        },
        &NoProgress,
    )
    .unwrap();
    let v1 = repo
        .checkpoint(
            "web",
            &CheckpointOptions {
                name: Some("clean".into()),
                ..Default::default()
            },
            &NoProgress,
        )
        .unwrap();
    assert_eq!(v1.checkpoint.id, "web@v1");
    let before = snapshot(&dir);

    write(&dir.join("etc/hostname"), b"changed\n");
    std::fs::remove_dir_all(dir.join("usr/lib")).unwrap();
    write(&dir.join("new/file"), b"new");
    let v2 = repo
        .checkpoint("web", &CheckpointOptions::default(), &NoProgress)
        .unwrap();
    assert!(
        v2.read_bytes < 100,
        "only changed files are read: {}",
        v2.read_bytes
    );
    let changes = repo.diff(&r("web@v1"), Some(&r("web@v2"))).unwrap();
    let paths: Vec<String> = changes
        .iter()
        .map(|c| format!("{} {}", c.kind.letter(), c.path))
        .collect();
    assert!(paths.contains(&"D /usr/lib/big".to_owned()), "{paths:?}");
    assert!(paths.contains(&"A /new/file".to_owned()), "{paths:?}");
    assert!(paths.contains(&"M /etc/hostname".to_owned()), "{paths:?}");

    let rep = repo
        .restore(&r("web@clean"), &RestoreOptions::default(), &NoProgress)
        .unwrap();
    assert_eq!(rep.undo.as_deref(), Some("web@v2"));
    assert_eq!(snapshot(&dir), before);
    assert_eq!(
        std::fs::metadata(dir.join("etc/hostname")).unwrap().ino(),
        std::fs::metadata(dir.join("usr/hn")).unwrap().ino()
    );
    let live = repo.diff(&r("web@v1"), None).unwrap();
    assert!(live.is_empty(), "{live:?}");

    let fork = tmp.path().join("f");
    repo.fork(
        &r("web@v1"),
        &ForkOptions {
            name: "f".into(),
            dir: fork.clone(),
        },
        &NoProgress,
    )
    .unwrap();
    assert_eq!(snapshot(&fork), before);
    let mut out = Vec::new();
    repo.cat(&r("web@v2:/etc/hostname"), &mut out).unwrap();
    assert_eq!(out, b"changed\n");
}
