//! `cairn mount` / `cairn umount` through the real binary, as root: foreground and background
//! servers, stop signals, and a server killed with SIGKILL whose stale mount must not block
//! the next command.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    /// A home with machine `web` (one file) and its checkpoint v1.
    fn new() -> Env {
        let env = Env {
            tmp: tempfile::tempdir().expect("tempdir"),
        };
        std::fs::create_dir_all(env.path("m/etc")).expect("mkdir");
        std::fs::write(env.path("m/etc/motd"), b"hello\n").expect("write");
        std::fs::create_dir_all(env.path("mnt")).expect("mkdir");
        env.ok(&["machine", "create", "web", "--dir", &env.arg("m")]);
        env.ok(&["checkpoint", "create", "web"]);
        env
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn arg(&self, rel: &str) -> String {
        self.path(rel).to_string_lossy().into_owned()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.args(args)
            .env("CAIRN_HOME", self.path("home"))
            .env("CAIRN_AUTHOR", "tester")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run cairn")
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cairn {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `cairn mount web@v1 mnt --background --json`, returning the server's pid.
    fn mount_background(&self) -> i32 {
        let out = self.ok(&[
            "mount",
            "web@v1",
            &self.arg("mnt"),
            "--background",
            "--json",
        ]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON doc");
        assert_eq!(doc["background"], true);
        doc["pid"].as_i64().expect("pid") as i32
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Waits up to 10 s for `cond`.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_mounted(p: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let p = p.to_string_lossy().into_owned();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_str()))
}

#[test]
fn a_killed_server_leaves_a_stale_mount_that_umount_cleans_up() {
    let env = Env::new();
    let mnt = env.path("mnt");
    let pid = env.mount_background();
    assert_eq!(std::fs::read(mnt.join("etc/motd")).unwrap(), b"hello\n");

    // SAFETY: sends a signal to the server this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    eventually(
        "the mount goes stale",
        || matches!(std::fs::read_dir(&mnt), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN)),
    );

    let refused = env.run(&["mount", "web@v1", &env.arg("mnt")]);
    assert_eq!(refused.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(
        msg.contains("stale") && msg.contains("cairn umount"),
        "{msg}"
    );

    let out = env.ok(&["umount", &env.arg("mnt"), "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["stale"], true, "{doc}");
    assert!(!is_mounted(&mnt));

    // The mountpoint works again, and `umount` stops the new server.
    let pid = env.mount_background();
    assert_eq!(std::fs::read(mnt.join("etc/motd")).unwrap(), b"hello\n");
    let out = env.ok(&["umount", &env.arg("mnt")]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("unmounted cairn:web@v1"));
    eventually("the server exits after umount", || !alive(pid));
    assert!(!is_mounted(&mnt));

    // A new view mounted right after an unmount survives the old server's exit.
    let first = env.mount_background();
    env.ok(&["umount", &env.arg("mnt")]);
    let second = env.mount_background();
    eventually("the first server exits", || !alive(first));
    std::thread::sleep(Duration::from_millis(200));
    assert!(is_mounted(&mnt), "the old server unmounted the new view");
    assert_eq!(std::fs::read(mnt.join("etc/motd")).unwrap(), b"hello\n");
    env.ok(&["umount", &env.arg("mnt")]);
    eventually("the second server exits", || !alive(second));

    let again = env.run(&["umount", &env.arg("mnt")]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not a mount point"));
}

#[test]
fn a_foreground_mount_serves_until_sigterm() {
    let env = Env::new();
    let mnt = env.path("mnt");
    let mut child = env
        .cmd(&["mount", "web@v1", &env.arg("mnt")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cairn mount");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mp = mnt.canonicalize().unwrap();
    assert_eq!(
        line.trim_end(),
        format!(
            "mounted web@v1 at {} (read-only); stop with Ctrl-C or `cairn umount {}`",
            mp.display(),
            mp.display()
        )
    );
    assert_eq!(std::fs::read(mnt.join("etc/motd")).unwrap(), b"hello\n");
    // SAFETY: signals the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!is_mounted(&mnt));
}

#[test]
fn mount_errors_say_what_to_do() {
    let env = Env::new();
    let cases: &[(&[&str], &str)] = &[
        (&["mount", "web@v7", "MNT"], "checkpoint list web"),
        (&["mount", "web@v1", "MISSING"], "does not exist"),
        (&["mount", "web@v1:/etc/motd", "MNT"], "not a directory"),
        (&["umount", "/"], "not a cairn view"),
    ];
    for (args, want) in cases {
        let args: Vec<String> = args
            .iter()
            .map(|a| match *a {
                "MNT" => env.arg("mnt"),
                "MISSING" => env.arg("missing"),
                a => a.to_owned(),
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let msg = String::from_utf8_lossy(&out.stderr);
        assert!(msg.contains(want), "{args:?}: {msg}");
    }
    let help = env.ok(&["mount", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("cairn umount"));
}
