//! Running commands: exit codes, output, namespaces, environment and option checks.

use super::*;
use crate::sandbox::bwrap::{bwrap_args, environment, find_bwrap_in};
use crate::sandbox::{Bind, SandboxError, run_sandboxed};

#[test]
fn exit_code_and_stdout_come_through() {
    let root = MiniRoot::new();
    let cg = TestCgroup::new("exit");
    let out = output(&root.sh("echo hello; echo oops >&2; exit 7"), &cg);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(stdout(&out), "hello\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");

    // run_sandboxed inherits stdio and returns the same status.
    let status = run_sandboxed(&root.sh("exit 3"), Some(&*cg)).expect("run");
    assert_eq!(status.code(), Some(3));
    assert!(
        run_sandboxed(&root.sh("true"), Some(&*cg))
            .expect("run")
            .success()
    );
}

#[test]
fn a_signal_death_is_reported_as_128_plus_the_signal() {
    let root = MiniRoot::new();
    let cg = TestCgroup::new("signal");
    let out = output(&root.sh("kill -TERM $$"), &cg);
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM));
}

#[test]
fn the_command_gets_its_own_pid_namespace_and_hostname() {
    let root = MiniRoot::new();
    let cg = TestCgroup::new("ns");
    let mut opts = root.sh("echo $$; readlink /proc/1/exe; cat /proc/sys/kernel/hostname");
    opts.hostname = "box-one".into();
    let out = output(&opts, &cg);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    // bubblewrap's reaper is pid 1 and the command pid 2.
    let pid: u32 = lines[0].parse().expect("a pid");
    assert!(pid <= 2, "pid {pid} inside a new pid namespace");
    assert_eq!(lines[2], "box-one");
}

#[test]
fn the_environment_is_clean_and_the_working_directory_set() {
    let root = MiniRoot::new();
    fs::create_dir(root.path().join("work")).expect("mkdir");
    let cg = TestCgroup::new("env");
    let mut opts = root.sh(
        "echo \"$PATH|$HOME|$GREETING|${CARGO_MANIFEST_DIR-unset}|${HOSTNAME-unset}\"; \
         readlink /proc/self/cwd",
    );
    opts.env.push((os("GREETING"), os("hi")));
    opts.cwd = "/work".into();
    let out = output(&opts, &cg);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|/root|hi|unset|unset\n/work\n"
    );
}

#[test]
fn environment_defaults_are_overridden_by_the_caller() {
    let mut opts = RunOptions::new("/x", "h", ["sh"]);
    opts.env.push((os("PATH"), os("/bin")));
    let env = environment(&opts, None);
    assert_eq!(env.get(&os("PATH")), Some(&os("/bin")));
    assert_eq!(env.get(&os("TERM")), Some(&os("dumb")));
    let env = environment(&opts, Some(os("xterm-256color")));
    assert_eq!(env.get(&os("TERM")), Some(&os("xterm-256color")));
}

#[test]
fn bwrap_gets_no_host_path_but_the_root_the_binds_and_read_only_proc() {
    let mut opts = RunOptions::new("/machines/a", "a", ["sh", "-c", "x"]);
    opts.binds.push(Bind {
        host: "/srv/data".into(),
        guest: "/data".into(),
        read_only: true,
    });
    let args: Vec<String> = bwrap_args(&opts)
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let command_at = args.iter().position(|a| a == "--").expect("--");
    assert_eq!(&args[command_at + 1..], ["sh", "-c", "x"]);
    let mut sources = Vec::new();
    for (i, a) in args[..command_at].iter().enumerate() {
        if matches!(
            a.as_str(),
            "--bind" | "--ro-bind" | "--ro-bind-try" | "--dev-bind"
        ) {
            sources.push((a.as_str(), args[i + 1].as_str(), args[i + 2].as_str()));
        }
    }
    assert_eq!(
        sources,
        [
            ("--bind", "/machines/a", "/"),
            ("--ro-bind-try", "/proc/sys", "/proc/sys"),
            (
                "--ro-bind-try",
                "/proc/sysrq-trigger",
                "/proc/sysrq-trigger"
            ),
            ("--ro-bind-try", "/proc/fs", "/proc/fs"),
            ("--ro-bind", "/srv/data", "/data"),
        ]
    );
    for flag in [
        "--die-with-parent",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
    ] {
        assert!(args.contains(&flag.to_owned()), "{flag}");
    }
    assert!(args.contains(&"--new-session".to_owned()));
    opts.interactive = true;
    assert!(!bwrap_args(&opts).contains(&os("--new-session")));
}

#[test]
fn bad_options_are_refused_before_bwrap_starts() {
    let root = MiniRoot::new();
    let cg = TestCgroup::new("bad");
    let refused =
        |opts: &RunOptions| crate::sandbox::sandboxed_command(opts, Some(&*cg)).unwrap_err();

    let mut o = root.sh("true");
    o.root = "/".into();
    assert!(matches!(refused(&o), SandboxError::BadRoot { .. }));
    o.root = root.path().join("missing");
    assert!(matches!(refused(&o), SandboxError::BadRoot { .. }));

    let mut o = root.sh("true");
    o.argv.clear();
    assert!(matches!(refused(&o), SandboxError::BadOption(_)));

    let mut o = root.sh("true");
    o.cwd = "/tmp/../..".into();
    assert!(matches!(refused(&o), SandboxError::BadOption(_)));

    let mut o = root.sh("true");
    o.hostname = "x".repeat(65);
    assert!(matches!(refused(&o), SandboxError::BadOption(_)));

    let mut o = root.sh("true");
    o.env.push((os("A=B"), os("c")));
    assert!(matches!(refused(&o), SandboxError::BadOption(_)));

    let mut o = root.sh("true");
    o.binds.push(Bind {
        host: "/etc".into(),
        guest: "/".into(),
        read_only: true,
    });
    assert!(matches!(refused(&o), SandboxError::BadBind { .. }));
    o.binds[0] = Bind {
        host: "/no/such/host/path".into(),
        guest: "/x".into(),
        read_only: false,
    };
    assert!(matches!(refused(&o), SandboxError::BadBind { .. }));
}

#[test]
fn a_missing_bwrap_says_how_to_install_it() {
    let empty = tempfile::tempdir().expect("tempdir");
    let err = find_bwrap_in(empty.path().as_os_str()).unwrap_err();
    assert!(matches!(err, SandboxError::BwrapMissing));
    assert!(
        err.to_string().contains("apt-get install bubblewrap"),
        "{err}"
    );
    let found = find_bwrap_in(std::ffi::OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    assert!(
        found.is_ok(),
        "the tests need bubblewrap installed (test.sh installs it)"
    );
}

#[test]
fn the_command_does_not_inherit_the_ignored_ctrl_c() {
    let root = MiniRoot::new();
    let cg = TestCgroup::new("sigint");
    // run_sandboxed ignores SIGINT and SIGQUIT in this process while it waits.
    let status =
        run_sandboxed(&root.sh("cat /proc/self/status > /tmp/status"), Some(&*cg)).expect("run");
    assert!(status.success());
    let text = fs::read_to_string(root.path().join("tmp/status")).expect("status");
    let ignored = text
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
        .expect("SigIgn line");
    for sig in [libc::SIGINT, libc::SIGQUIT] {
        assert_eq!(
            ignored & (1 << (sig - 1)),
            0,
            "signal {sig} ignored: {ignored:x}"
        );
    }
}
