//! Tests that really run bubblewrap and really freeze cgroups (they run as root, here and in
//! CI). Shared helpers: a tiny machine root made of host binaries, and uniquely named cgroups
//! that are killed and removed when a test ends, even by a panic.

mod cgroup;
mod isolation;
mod run;

use super::{Cgroup, RunOptions};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A machine root holding a few host binaries and their shared libraries, found with `ldd`.
pub(crate) struct MiniRoot {
    dir: tempfile::TempDir,
}

impl MiniRoot {
    pub(crate) fn new() -> MiniRoot {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["bin", "tmp", "proc", "dev"] {
            fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        for name in ["sh", "sleep", "cat", "ls", "true", "readlink"] {
            let host = fs::canonicalize(Path::new("/bin").join(name)).expect("host binary");
            fs::copy(&host, dir.path().join("bin").join(name)).expect("copy binary");
            copy_libraries(&host, dir.path());
        }
        MiniRoot { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Options to run `sh -c script` in this root.
    pub(super) fn sh(&self, script: &str) -> RunOptions {
        RunOptions::new(self.path(), "minibox", ["/bin/sh", "-c", script])
    }
}

/// Copies every library `ldd` names for `binary` to the same path under `root`; the loader's
/// built-in search path then finds them without an ld.so.cache.
fn copy_libraries(binary: &Path, root: &Path) {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux….so.2 (…)"
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        let Some(path) = path else { continue };
        let dest = root.join(path.strip_prefix("/").expect("absolute"));
        if !dest.exists() {
            fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir lib dir");
            fs::copy(&path, &dest).expect("copy library");
        }
    }
}

/// A cgroup with a name no other test (or concurrent test run) uses; on drop its processes are
/// killed and it is removed.
pub(super) struct TestCgroup(Option<Cgroup>);

static SERIAL: AtomicUsize = AtomicUsize::new(0);

pub(super) fn unique_name(tag: &str) -> String {
    let n = SERIAL.fetch_add(1, Ordering::Relaxed);
    format!("test-{}-{n}-{tag}", std::process::id())
}

impl TestCgroup {
    pub(super) fn new(tag: &str) -> TestCgroup {
        TestCgroup(Some(
            Cgroup::open_or_create(&unique_name(tag)).expect("create cgroup"),
        ))
    }

    pub(super) fn wrap(cgroup: Cgroup) -> TestCgroup {
        TestCgroup(Some(cgroup))
    }

    pub(super) fn take(mut self) -> Cgroup {
        self.0.take().expect("present")
    }
}

impl std::ops::Deref for TestCgroup {
    type Target = Cgroup;
    fn deref(&self) -> &Cgroup {
        self.0.as_ref().expect("present")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Some(cg) = self.0.take() {
            let _ = cg.kill_all(Duration::from_secs(5));
            let _ = cg.remove();
        }
    }
}

/// Runs `opts` in `cgroup` with captured output.
pub(super) fn output(opts: &RunOptions, cgroup: &Cgroup) -> Output {
    super::sandboxed_command(opts, Some(cgroup))
        .expect("command")
        .output()
        .expect("run bwrap")
}

pub(super) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
pub(super) fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

pub(super) fn os(s: &str) -> OsString {
    s.into()
}
