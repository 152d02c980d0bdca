//! Shared helpers of the CLI tests: `Env` (a tempdir with an isolated cairn home), `TestCommand`
//! (runs the real `cairn` binary in it) and, in `tree`, `TestDir` and exact tree snapshots.

pub mod tree;

pub use tree::{Snapshot, TestDir, assert_same, noise, snapshot};

use serde_json::Value;
use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The binary under test, built by cargo for this test run.
pub const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

/// A tempdir holding a cairn home (`home/`) and room for machine directories beside it.
pub struct Env {
    tmp: tempfile::TempDir,
    views_only: bool,
}

impl Drop for Env {
    /// A test that failed with a machine up (or a view mounted) would otherwise leave the
    /// mounts behind, pinning the tempdir.
    fn drop(&mut self) {
        // A machine up without root holds its overlay in a process of its own, whose mount
        // namespace also keeps copies of every other view mounted when it started.
        for pid in processes(&self.home(), b"hold-overlay", None) {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
        cairn_core::detach_all_below(self.tmp.path());
    }
}

impl Env {
    pub fn new() -> Env {
        Env {
            tmp: tempfile::tempdir().expect("tempdir"),
            views_only: false,
        }
    }

    /// An env whose machines always stand on a FUSE view (`CAIRN_LOWER_IMAGES=0`): for tests
    /// of the view servers themselves, which a lower image would make unneeded.
    pub fn views_only() -> Env {
        Env {
            tmp: tempfile::tempdir().expect("tempdir"),
            views_only: true,
        }
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// A path inside the tempdir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub fn home(&self) -> PathBuf {
        self.path("home")
    }

    /// `cairn ARGS…` with this env's home, run in the tempdir.
    pub fn cairn<I, S>(&self, args: I) -> TestCommand
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(CAIRN);
        cmd.current_dir(self.root())
            .env("CAIRN_HOME", self.home())
            .env("CAIRN_AUTHOR", "tester")
            .env_remove("CAIRN_LOG")
            .args(args);
        if self.views_only {
            cmd.env("CAIRN_LOWER_IMAGES", "0");
        }
        TestCommand { cmd }
    }

    /// `cairn machine create NAME --dir DIR`, asserting success.
    pub fn machine(&self, name: &str, dir: &Path) {
        self.cairn(["machine", "create", name, "--dir"])
            .arg(dir)
            .ok();
    }

    /// `cairn checkpoint create MACHINE --json`, returning the new id (`web@v3`).
    pub fn checkpoint(&self, machine: &str) -> String {
        let v = self.cairn(["checkpoint", "create", machine]).json();
        id_of(&v)
    }

    /// `cairn restore REF --json`, asserting success.
    pub fn restore(&self, target: &str) -> Value {
        self.cairn(["restore", target]).json()
    }
}

/// The checkpoint id in a `checkpoint create --json` report.
pub fn id_of(v: &Value) -> String {
    v["checkpoint"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no checkpoint id in {v}"))
        .to_owned()
}

/// One run of the real binary, ripgrep-style: build it up, then run it expecting an outcome.
pub struct TestCommand {
    cmd: Command,
}

/// What a finished run printed and how it exited.
#[derive(Debug)]
pub struct Run {
    /// The exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stdout as exactly one JSON document (nothing but whitespace may follow it).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr
            )
        })
    }
}

impl TestCommand {
    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.arg(a);
        self
    }

    pub fn env(&mut self, key: &str, value: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.env(key, value);
        self
    }

    /// Runs it as `uid`:`gid` with no supplementary groups (the tests run as root).
    pub fn as_user(&mut self, uid: u32, gid: u32) -> &mut Self {
        std::os::unix::process::CommandExt::uid(&mut self.cmd, uid);
        std::os::unix::process::CommandExt::gid(&mut self.cmd, gid);
        self
    }

    /// Runs it with stdin closed and returns what happened, whatever it was.
    pub fn run(&mut self) -> Run {
        let out = self
            .cmd
            .stdin(Stdio::null())
            .output()
            .expect("run the cairn binary");
        Run {
            code: out.status.code(),
            signal: out.status.signal(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs it and asserts exit code `code`.
    pub fn code(&mut self, code: i32) -> Run {
        let run = self.run();
        assert_eq!(
            run.code,
            Some(code),
            "{:?} exited {:?}, not {code}\nstdout:\n{}\nstderr:\n{}",
            self.cmd,
            run.code,
            run.stdout(),
            run.stderr
        );
        run
    }

    /// Runs it and asserts success.
    pub fn ok(&mut self) -> Run {
        self.code(0)
    }

    /// Runs it with `--json`, asserts success and returns the one JSON document.
    pub fn json(&mut self) -> Value {
        self.cmd.arg("--json");
        self.ok().json()
    }

    /// Runs it with `--json`, asserts exit `code`, and returns the error message of the one
    /// JSON document `{"error": …}` it printed.
    pub fn json_error(&mut self, code: i32) -> String {
        self.cmd.arg("--json");
        let v = self.code(code).json();
        let obj = v.as_object().expect("an error document is an object");
        assert_eq!(obj.len(), 1, "an error document has only `error`: {v}");
        let msg = v["error"].as_str().expect("error is a string").to_owned();
        assert!(!msg.is_empty(), "empty error message");
        msg
    }

    /// Starts it with stdout and stderr piped, for a test that races or kills it.
    pub fn spawn(&mut self) -> Child {
        self.cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the cairn binary")
    }
}

/// Waits for `child` and collects its output.
pub fn finish(child: Child) -> Run {
    let out = child.wait_with_output().expect("wait for cairn");
    Run {
        code: out.status.code(),
        signal: out.status.signal(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Creates `web` from the full fixture with checkpoint web@v1, and `box` over it.
pub fn web_and_box(env: &Env) -> (TestDir, PathBuf) {
    let t = TestDir::full(&env.path("web"));
    env.machine("web", &t.root);
    env.checkpoint("web");
    let v = env
        .cairn(["machine", "create", "box", "--mounted", "--from", "web@v1"])
        .json();
    let at = PathBuf::from(v["at"].as_str().expect("at"));
    (t, at)
}

/// Pids of the view servers (`cairn machine serve-lower`) of the cairn home `home`: of machine
/// `name`, or of every machine.
pub fn view_servers(home: &Path, name: Option<&str>) -> Vec<i32> {
    processes(home, b"serve-lower", name)
}

/// Pids of the helpers a command runs in a machine's user namespace without root
/// (`cairn machine ingest-upper` and `sweep-state`) of the cairn home `home`.
pub fn namespace_helpers(home: &Path) -> Vec<i32> {
    let mut pids = processes(home, b"ingest-upper", None);
    pids.extend(processes(home, b"sweep-state", None));
    pids
}

/// `namespace_helpers` once none is left or `within` has passed, whichever comes first.
pub fn namespace_helpers_after(home: &Path, within: std::time::Duration) -> Vec<i32> {
    let deadline = std::time::Instant::now() + within;
    let mut left = namespace_helpers(home);
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
        left = namespace_helpers(home);
    }
    left
}

/// Pids of the live `cairn … machine VERB [name]` processes of the cairn home `home`.
fn processes(home: &Path, verb: &[u8], name: Option<&str>) -> Vec<i32> {
    let home = home.display().to_string();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // A zombie has an empty command line, so only live processes match.
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
            args.contains(&verb)
                && name.is_none_or(|n| args.contains(&n.as_bytes()))
                && args.contains(&home.as_bytes())
        })
        .collect()
}
