//! A mounted machine run by an ordinary user: every command below runs as the owner of the
//! env's home, `nobody` (who has subordinate ids, see test.sh) or `daemon` (who has none).
//! The view is mounted through `fusermount3`, the overlay in a user namespace held by
//! `machine hold-overlay`, and the machine's processes join it.

use crate::util::{Env, TestCommand};
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const NOBODY: u32 = 65534;
/// A user with no subordinate ids (`daemon`): its machines map root alone.
const LONER: u32 = 1;

/// `cairn ARGS…` as the owner of the env's home.
pub fn as_nobody<const N: usize>(env: &Env, args: [&str; N]) -> TestCommand {
    let owner = std::fs::metadata(env.home()).expect("home").uid();
    let mut t = env.cairn(args);
    t.as_user(owner, owner).env("HOME", env.root());
    t
}

/// `cairn run box -- sh -c SCRIPT` as the owner of the env's home.
pub fn sh_in_box(env: &Env, script: &str) -> TestCommand {
    as_nobody(env, ["run", "box", "--", "sh", "-c", script])
}

/// A machine root of a few host binaries with their libraries, and `/etc/hostname`.
fn mini_root(dir: &Path) {
    for d in ["bin", "etc", "tmp", "proc", "dev", "usr/lib"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("etc/hostname"), "box\n").unwrap();
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    std::fs::write(dir.join("usr/lib/old"), "old\n").unwrap();
    std::fs::write(dir.join("etc/theirs"), "theirs\n").unwrap();
    std::os::unix::fs::chown(dir.join("etc/theirs"), Some(1234), Some(1234)).unwrap();
    for name in [
        "sh", "cat", "id", "rm", "mkdir", "sleep", "stat", "chmod", "chown",
    ] {
        let host = std::fs::canonicalize(Path::new("/bin").join(name)).unwrap();
        std::fs::copy(&host, dir.join("bin").join(name)).unwrap();
        let out = std::process::Command::new("ldd")
            .arg(&host)
            .output()
            .unwrap();
        for lib in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let dest = dir.join(&lib[1..]);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(lib, &dest).unwrap();
        }
    }
}

fn kinds(diff: &Value) -> Vec<(String, String)> {
    diff.as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] != "M" || c["what"] != serde_json::json!(["mtime"]))
        .map(|c| {
            (
                c["kind"].as_str().unwrap().to_owned(),
                c["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `UID/GID` of `path` in the tar archive `tar`, as `tar -tv` lists it.
fn owner_in(tar: &Path, path: &str) -> String {
    let out = std::process::Command::new("tar")
        .args(["--numeric-owner", "-tvf"])
        .arg(tar)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = listing
        .lines()
        .find(|l| l.trim_end_matches('/').ends_with(path))
        .unwrap_or_else(|| panic!("no {path} in {listing}"));
    line.split_whitespace().nth(1).unwrap().to_owned()
}

fn shows_overlay_at(mountinfo: &str, at: &Path) -> bool {
    let at = at.display().to_string();
    mountinfo.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.len() > 4 && f[4] == at && l.contains(" - overlay ")
    })
}

/// An env whose home is `nobody`'s, holding directory machine `web` (a mini root, web@v1)
/// and mounted machine `box` over web@v1; returns the env and box's path.
pub fn nobody_box() -> (Env, PathBuf) {
    user_box(NOBODY)
}

/// `nobody_box` for the user `uid`.
fn user_box(uid: u32) -> (Env, PathBuf) {
    let fuse = std::fs::metadata("/dev/fuse").expect("/dev/fuse");
    assert_eq!(
        fuse.mode() & 0o666,
        0o666,
        "a FUSE view without root needs /dev/fuse mode 0666, as Debian's udev makes it \
         (test.sh sets it on hosts without udev)"
    );
    let env = Env::new();
    std::fs::set_permissions(
        env.root(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let src = env.path("src");
    mini_root(&src);
    std::fs::create_dir(env.home()).unwrap();
    std::os::unix::fs::chown(env.home(), Some(uid), Some(uid)).unwrap();
    as_nobody(&env, ["machine", "create", "web", "--dir"])
        .arg(&src)
        .ok();
    as_nobody(&env, ["checkpoint", "create", "web"]).ok();
    let made = as_nobody(
        &env,
        ["machine", "create", "box", "--mounted", "--from", "web@v1"],
    )
    .json();
    let at = PathBuf::from(made["at"].as_str().unwrap());
    (env, at)
}

/// The pid in the (only) `overlay.pid` of the env's home, if there is one.
pub fn holder_pid(env: &Env) -> Option<i32> {
    holder_pid_in(&env.home())
}

/// The pid in the (only) `overlay.pid` of the cairn home `home`, if there is one.
pub fn holder_pid_in(home: &Path) -> Option<i32> {
    let pid_file = std::fs::read_dir(home.join("machines"))
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("overlay.pid")))
        .find(|p| p.exists())?;
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// True once `pid` has exited (a zombie has).
fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
}

#[test]
fn a_mounted_machine_without_root() {
    let (env, at) = nobody_box();
    let up = as_nobody(&env, ["machine", "up", "box"]).json();
    let reach = PathBuf::from(up["reach"].as_str().expect("reach"));
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !shows_overlay_at(&host_mounts, &at),
        "the overlay is in the holder's namespace, not the host's"
    );
    assert_eq!(
        std::fs::read_to_string(reach.join("etc/hostname")).unwrap(),
        "box\n",
        "the host reaches the machine's root below /proc/PID/root"
    );
    let shown = as_nobody(&env, ["machine", "show", "box"]).json();
    assert_eq!(
        (&shown["up"], &shown["reach"]),
        (&true.into(), &up["reach"]),
        "{shown}"
    );

    // Inside, the user is root, the base's files keep their owners, and root may give a file
    // to anyone (the user's subordinate ids).
    let run = sh_in_box(
        &env,
        "id -u; stat -c %u /etc/hostname; stat -c %u:%g /etc/theirs; cat /etc/hostname; \
         echo new > /etc/hostname; rm /etc/passwd; rm -r /usr/lib; mkdir -p /usr/lib /srv; \
         echo n > /usr/lib/new; echo s > /srv/s; echo t > /srv/t; chown 100:101 /srv/t; exit 3",
    )
    .code(3);
    assert_eq!(run.stdout(), "0\n0\n1234:1234\nbox\n");
    let upper_file = std::fs::metadata(reach.join("srv/s")).unwrap();
    assert_eq!(
        upper_file.uid(),
        NOBODY,
        "what the machine's root writes is the user's on the host"
    );
    let theirs = std::fs::metadata(reach.join("srv/t")).unwrap();
    assert_eq!(
        (theirs.uid(), theirs.gid()),
        (1_000_099, 1_000_100),
        "uid 100 inside is the user's 100th subordinate id (test.sh: nobody:1000000:65536)"
    );

    // The checkpoint reads the upper: a whiteout, an opaque directory (`user.overlay.opaque`)
    // and new files, all root's.
    let c = as_nobody(&env, ["checkpoint", "create", "box"]).json();
    assert_eq!(c["checkpoint"]["id"], "box@v2", "{c}");
    let diff = as_nobody(&env, ["diff", "box@v1", "box@v2"]).json();
    let mut got = kinds(&diff);
    got.sort();
    let want: Vec<(String, String)> = [
        ("A", "/srv"),
        ("A", "/srv/s"),
        ("A", "/srv/t"),
        ("A", "/usr/lib/new"),
        ("D", "/etc/passwd"),
        ("D", "/usr/lib/old"),
        ("M", "/etc/hostname"),
    ]
    .iter()
    .map(|(k, p)| (k.to_string(), p.to_string()))
    .collect();
    assert_eq!(got, want, "{diff}");
    let hostname = as_nobody(&env, ["cat", "box@v2:/etc/hostname"]).ok();
    assert_eq!(hostname.stdout(), "new\n");
    let exported = env.home().join("v2.tar");
    as_nobody(&env, ["export", "box@v2", "-o"])
        .arg(&exported)
        .ok();
    assert_eq!(owner_in(&exported, "srv/s"), "0/0", "recorded as root's");
    assert_eq!(
        owner_in(&exported, "srv/t"),
        "100/101",
        "recorded as the machine's ids"
    );
    assert_eq!(owner_in(&exported, "etc/theirs"), "1234/1234");

    // A running process is frozen for the checkpoint, and stopped by a restore.
    let mut busy = sh_in_box(&env, "while :; do echo x >> /tmp/log; sleep 0.01; done").spawn();
    crate::mounted::wait_until("the loop writes", || {
        std::fs::metadata(reach.join("tmp/log")).is_ok()
    });
    // Without a cgroup the freeze is by SIGSTOP, and the shell's `vfork` of each `sleep`
    // leaves it waiting where no signal reaches it: several checkpoints in a row meet that.
    for _ in 0..8 {
        let c = as_nobody(&env, ["checkpoint", "create", "box"]).json();
        let phases: Vec<&str> = c["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(phases.contains(&"freeze"), "{c}");
    }
    let r = as_nobody(&env, ["restore", "box@v1"]).json();
    assert!(r["undo"].is_string(), "{r}");
    let busy = busy.wait().unwrap();
    assert!(!busy.success(), "the restore stopped the machine's process");
    let run = as_nobody(
        &env,
        ["run", "box", "--", "cat", "/etc/hostname", "/etc/passwd"],
    )
    .ok();
    assert_eq!(run.stdout(), "box\nroot:x:0:0::/root:/bin/sh\n");

    let holder = holder_pid(&env).expect("the holder's pid file");
    as_nobody(&env, ["machine", "down", "box"]).ok();
    assert_eq!(
        as_nobody(&env, ["machine", "show", "box"]).json()["up"],
        false
    );
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host_mounts.contains(&env.home().display().to_string()),
        "down leaves no view mounted: {host_mounts}"
    );
    assert!(gone(holder), "down ends the holder");
    as_nobody(&env, ["check", "--read-data"]).ok();
}

#[test]
fn a_killed_holder_or_view_server_is_recovered_without_root() {
    let (env, _at) = nobody_box();
    as_nobody(&env, ["machine", "up", "box"]).ok();
    sh_in_box(&env, "echo kept > /etc/motd").ok();

    // The holder dies: the machine is down, and up makes a new one over the same view.
    let holder = holder_pid(&env).expect("the holder's pid file");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(holder).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    crate::mounted::wait_until("the holder dies", || gone(holder));
    assert_eq!(
        as_nobody(&env, ["machine", "show", "box"]).json()["up"],
        false
    );
    let up = as_nobody(&env, ["machine", "up", "box"]).json();
    let recovered = up["recovered"].to_string();
    assert!(recovered.contains("was kept"), "{up}");
    assert_ne!(holder_pid(&env).expect("the holder's pid file"), holder);
    assert_eq!(sh_in_box(&env, "cat /etc/motd").ok().stdout(), "kept\n");

    // The view server dies: up replaces the holder over a dead view, and the view.
    let servers = crate::util::view_servers(&env.home(), Some("box"));
    assert_eq!(servers.len(), 1, "{servers:?}");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(servers[0]).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    crate::mounted::wait_until("the server dies", || gone(servers[0]));
    let holder = holder_pid(&env).expect("the holder's pid file");
    let up = as_nobody(&env, ["machine", "up", "box"]).json();
    let recovered = up["recovered"].to_string();
    assert!(
        recovered.contains("server had stopped") && recovered.contains("stale view"),
        "{up}"
    );
    assert!(gone(holder), "the holder over the dead view was stopped");
    assert_eq!(sh_in_box(&env, "cat /etc/motd").ok().stdout(), "kept\n");
    let c = as_nobody(&env, ["checkpoint", "create", "box"]).json();
    assert_eq!(c["checkpoint"]["id"], "box@v2", "{c}");

    // Another machine's holder, started while box's view was mounted, holds a copy of that
    // mount that no unmount on the host reaches: box's server must end with box all the same.
    as_nobody(&env, ["fork", "box@v2", "twin"]).ok();
    as_nobody(&env, ["machine", "up", "twin"]).ok();
    as_nobody(&env, ["machine", "down", "box"]).ok();
    crate::mounted::wait_until("box's view server ends", || {
        crate::util::view_servers(&env.home(), Some("box")).is_empty()
    });
    let twin = as_nobody(&env, ["run", "twin", "--", "cat", "/etc/motd"]).ok();
    assert_eq!(twin.stdout(), "kept\n");
    as_nobody(&env, ["machine", "down", "twin"]).ok();
    as_nobody(&env, ["check"]).ok();
}

/// What the machine's root closes to others (a directory of another owner with mode 0700, a
/// file of mode 000, a directory without write access) the user cannot read or remove, so a
/// checkpoint reads it, and a restore removes it, in a user namespace of the machine's ids.
#[test]
fn what_the_machine_closes_to_the_user_is_read_and_swept_in_its_namespace() {
    for uid in [NOBODY, LONER] {
        let (env, _at) = user_box(uid);
        let others = if uid == NOBODY {
            "mkdir -p /apt/partial && echo p > /apt/partial/f && chown -R 100:100 /apt && \
             chmod 700 /apt/partial && "
        } else {
            ""
        };
        sh_in_box(
            &env,
            &format!(
                "{others}mkdir -p /ro/sub && echo x > /ro/sub/f && chmod 500 /ro/sub /ro && \
                 echo y > /zero && chmod 000 /zero"
            ),
        )
        .ok();
        // A diff against the live machine reads it in the namespace too, storing nothing.
        let live = as_nobody(&env, ["diff", "box@v1"]).json();
        let live: Vec<(String, String)> = kinds(&live);
        assert!(
            live.contains(&("A".to_owned(), "/zero".to_owned()))
                && (uid != NOBODY || live.contains(&("A".to_owned(), "/apt/partial/f".to_owned()))),
            "uid {uid}: {live:?}"
        );
        let c = as_nobody(&env, ["checkpoint", "create", "box"]).json();
        assert_eq!(c["checkpoint"]["id"], "box@v2", "{c}");
        let exported = env.home().join("v2.tar");
        as_nobody(&env, ["export", "box@v2", "-o"])
            .arg(&exported)
            .ok();
        assert_eq!(owner_in(&exported, "zero"), "0/0");
        let v2 = as_nobody(&env, ["diff", "box@v1", "box@v2"]).json();
        let mut added = kinds(&v2);
        added.retain(|(k, _)| k == "A");
        let mut want = vec!["/ro", "/ro/sub", "/ro/sub/f", "/zero"];
        if uid == NOBODY {
            assert_eq!(owner_in(&exported, "apt/partial/f"), "100/100");
            want.extend(["/apt", "/apt/partial", "/apt/partial/f"]);
        }
        want.sort();
        let added: Vec<&str> = added.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(added, want, "uid {uid}: {v2}");
        let zero = as_nobody(&env, ["cat", "box@v2:/zero"]).ok();
        assert_eq!(zero.stdout(), "y\n");

        // The restore replaces the upper, whose directories the user could not empty.
        as_nobody(&env, ["restore", "box@v1"]).ok();
        as_nobody(&env, ["machine", "down", "box"]).ok();
        let state = std::fs::read_dir(env.home().join("machines"))
            .unwrap()
            .filter_map(|e| Some(e.ok()?.path()))
            .find(|p| p.join("upper").exists())
            .expect("box's state");
        let mut left: Vec<String> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("upper"))
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["upper"],
            "uid {uid}: no old upper is left in {state:?}"
        );
        as_nobody(&env, ["restore", "box@v2"]).ok();
        as_nobody(&env, ["machine", "rm", "box"]).ok();
        assert!(
            !state.exists(),
            "uid {uid}: machine rm removes all of its state"
        );
    }
}

/// A user without subordinate ids: the machine's root is the user, and nobody else is mapped.
#[test]
fn a_user_without_subordinate_ids_runs_a_machine_of_root_alone() {
    let (env, _at) = user_box(LONER);
    let run = sh_in_box(
        &env,
        "id -u; stat -c %u /etc/theirs; echo t > /t; chown 100 /t || echo refused",
    )
    .ok();
    assert_eq!(
        run.stdout().lines().collect::<Vec<_>>(),
        ["0", "65534", "refused"]
    );
    as_nobody(&env, ["checkpoint", "create", "box"]).ok();
    let exported = env.home().join("v2.tar");
    as_nobody(&env, ["export", "box@v2", "-o"])
        .arg(&exported)
        .ok();
    assert_eq!(owner_in(&exported, "t"), "0/0");
    assert_eq!(
        owner_in(&exported, "etc/theirs"),
        "1234/1234",
        "the base keeps its owners"
    );
    let e = as_nobody(&env, ["restore", "box@v1:/etc"]).json_error(1);
    assert!(e.contains("a restore of one path of box needs root"), "{e}");
    as_nobody(&env, ["machine", "down", "box"]).ok();
}

/// A checkpoint without root reads the upper in a helper inside the machine's namespace. If
/// the checkpoint is killed, the helper dies with it at once instead of ingesting on alone
/// (writing packs nothing will reference, beside whatever command comes next).
#[test]
fn a_killed_checkpoint_takes_its_namespace_helper_with_it() {
    let (env, _at) = nobody_box();
    as_nobody(&env, ["machine", "up", "box"]).ok();
    // Enough incompressible bytes in the upper that reading them takes the helper a while.
    let src = env.path("bigsrc");
    std::fs::create_dir(&src).unwrap();
    let mut rng = crate::util::tree::Rng::new(7);
    let mut big = vec![0u8; 256 << 20];
    for b in big.chunks_mut(8) {
        b.copy_from_slice(&rng.next().to_le_bytes()[..b.len()]);
    }
    std::fs::write(src.join("big"), &big).unwrap();
    drop(big);
    std::fs::set_permissions(&src, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bind = format!("{}:/src:ro", src.display());
    let mut copy = as_nobody(&env, ["run", "box", "--bind", &bind, "--"]);
    copy.arg("sh").arg("-c").arg("cat /src/big > /big");
    copy.ok();

    let mut checkpoint = as_nobody(&env, ["checkpoint", "create", "box"]).spawn();
    crate::mounted::wait_until("the checkpoint starts its helper", || {
        !crate::util::namespace_helpers(&env.home()).is_empty()
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    checkpoint.kill().unwrap();
    checkpoint.wait().unwrap();
    let left =
        crate::util::namespace_helpers_after(&env.home(), std::time::Duration::from_millis(300));
    assert!(
        left.is_empty(),
        "helpers {left:?} outlived the killed checkpoint"
    );

    // Nothing was committed, and the next checkpoint takes the file.
    let c = as_nobody(&env, ["checkpoint", "create", "box"]).json();
    assert_eq!(c["checkpoint"]["id"], "box@v2", "{c}");
    as_nobody(&env, ["machine", "down", "box"]).ok();
    as_nobody(&env, ["check"]).ok();
}
