//! Mounted machines through the real binary: create, up (a detached view server), writes
//! through the overlay, checkpoint, restore and fork by re-pointing, down; and recovery when
//! the view's server is killed.

use crate::util::{Env, assert_same, snapshot, web_and_box};
use std::path::PathBuf;

/// Pids of this env's view server of `name`.
fn server_pids(env: &Env, name: &str) -> Vec<i32> {
    crate::util::view_servers(&env.home(), Some(name))
}

#[test]
fn mounted_machine_end_to_end() {
    let env = Env::views_only();
    let (t, at) = web_and_box(&env);
    let want = snapshot(&t.root);
    let up = env.cairn(["machine", "up", "box"]).json();
    assert_eq!(up["already_up"], false, "{up}");
    assert_eq!(
        server_pids(&env, "box").len(),
        1,
        "one detached view server"
    );
    assert_same(&want, &snapshot(&at), "box over web@v1");
    let shown = env.cairn(["machine", "show", "box"]).json();
    assert_eq!(
        (&shown["up"], shown["base"].is_string()),
        (&true.into(), true),
        "{shown}"
    );
    let listed = env.cairn(["machine", "list"]).json();
    assert_eq!(listed[0]["up"], true, "{listed}");
    assert!(
        listed[1].get("up").is_none(),
        "web is a directory machine: {listed}"
    );

    std::fs::write(at.join("etc/hostname"), b"changed\n").unwrap();
    std::fs::remove_dir_all(at.join("usr/lib")).unwrap();
    let changed = snapshot(&at);
    let c = env.cairn(["checkpoint", "create", "box"]).json();
    assert_eq!(c["checkpoint"]["id"], "box@v2", "{c}");

    let r = env.cairn(["restore", "box@v1"]).json();
    assert_eq!(r["undo"], "box@v2", "{r}");
    let phases: Vec<&str> = r["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["ingest", "stop", "commit", "remount"]);
    assert_same(&want, &snapshot(&at), "box restored to v1");
    assert_eq!(server_pids(&env, "box").len(), 1, "the old server is gone");

    let forks = env.cairn(["fork", "box@v2", "a", "b"]).json();
    assert_eq!(forks.as_array().map(Vec::len), Some(2), "{forks}");
    env.cairn(["machine", "up", "a"]).ok();
    let a_at = PathBuf::from(
        env.cairn(["machine", "show", "a"]).json()["dir"]
            .as_str()
            .unwrap(),
    );
    assert_same(&changed, &snapshot(&a_at), "fork a of box@v2");
    env.cairn(["machine", "down", "a"]).ok();

    let e = env.cairn(["machine", "rm", "box"]).json_error(1);
    assert!(e.contains("is up"), "{e}");
    env.cairn(["machine", "down", "box"]).ok();
    assert!(server_pids(&env, "box").is_empty(), "down stops the server");
    assert_eq!(env.cairn(["machine", "show", "box"]).json()["up"], false);
    assert_eq!(std::fs::read_dir(&at).unwrap().count(), 0);
    env.cairn(["machine", "rm", "box"]).ok();
    env.cairn(["check", "--read-data"]).ok();
}

#[test]
fn killed_view_server_is_recovered_and_nothing_written_is_lost() {
    let env = Env::views_only();
    let (_t, at) = web_and_box(&env);
    env.cairn(["machine", "up", "box"]).ok();
    std::fs::write(at.join("kept"), b"written before the crash").unwrap();
    for pid in server_pids(&env, "box") {
        // SAFETY: kill has no memory preconditions.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    // The next command does not hang on the dead mount: a checkpoint reads only the upper.
    let c = env.cairn(["checkpoint", "create", "box"]).json();
    assert_eq!(c["checkpoint"]["id"], "box@v2", "{c}");
    let up = env.cairn(["machine", "up", "box"]).json();
    let recovered = up["recovered"].as_array().expect("recovered");
    assert!(!recovered.is_empty(), "up says what it found: {up}");
    assert_eq!(
        std::fs::read(at.join("kept")).unwrap(),
        b"written before the crash"
    );
    assert!(at.join("etc/hostname").exists(), "the base is served again");
    env.cairn(["machine", "down", "box"]).ok();
}

#[test]
fn mounted_machine_bad_input() {
    let env = Env::new();
    let e = env
        .cairn(["machine", "create", "x", "--mounted", "--from", "nope@v1"])
        .json_error(1);
    assert!(e.contains("nope"), "{e}");
    let e = env
        .cairn(["machine", "create", "x", "--mounted", "--dir", "/tmp"])
        .json_error(2);
    assert!(e.contains("--dir"), "{e}");
    let d = env.path("d");
    std::fs::create_dir(&d).unwrap();
    env.machine("plain", &d);
    let e = env.cairn(["machine", "up", "plain"]).json_error(1);
    assert!(e.contains("directory machine"), "{e}");
    let e = env
        .cairn(["fork", "plain@v1", "a", "b", "--dir"])
        .arg(&d)
        .json_error(2);
    assert!(e.contains("one NEW_NAME") || e.contains("--dir"), "{e}");
}

#[test]
fn restore_of_one_path_of_a_mounted_machine() {
    let env = Env::new();
    let (t, at) = web_and_box(&env);
    let v1 = snapshot(&t.root.join("etc"));
    env.cairn(["machine", "up", "box"]).ok();
    std::fs::write(at.join("etc/hostname"), b"changed\n").unwrap();
    std::fs::write(at.join("etc/added"), b"new in /etc").unwrap();
    std::fs::write(at.join("outside"), b"kept").unwrap();
    let names = |r: &serde_json::Value| -> Vec<String> {
        r["phases"]
            .as_array()
            .expect("phases")
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };

    // Up: written through the overlay, the machine stays up.
    let r = env.cairn(["restore", "box@v1:/etc"]).json();
    assert_eq!(
        (r["target"].as_str(), r["undo"].as_str()),
        (Some("box@v1"), Some("box@v2"))
    );
    assert_eq!(
        (r["written_files"].as_u64(), r["removed"].as_u64()),
        (Some(1), Some(1)),
        "{r}"
    );
    assert_eq!(names(&r), ["ingest", "apply"], "{r}");
    assert_same(
        &v1,
        &snapshot(&at.join("etc")),
        "/etc of box restored to v1",
    );
    assert_eq!(std::fs::read(at.join("outside")).unwrap(), b"kept");
    assert_eq!(server_pids(&env, "box").len(), 1, "still up");

    // Down: brought up for the restore and down again after.
    std::fs::write(at.join("etc/hostname"), b"changed again\n").unwrap();
    env.cairn(["machine", "down", "box"]).ok();
    let out = env.cairn(["restore", "box@v1:/etc"]).ok().stdout();
    assert!(
        out.starts_with("restored /etc of box@v1: 1 file written"),
        "{out}"
    );
    assert!(out.contains("undo with: cairn restore box@v3"), "{out}");
    assert!(
        server_pids(&env, "box").is_empty(),
        "down again: no view server"
    );
    assert_eq!(
        std::fs::read_dir(&at).unwrap().count(),
        0,
        "nothing mounted"
    );
    let r = env.cairn(["restore", "box@v1", "--path", "/etc"]).json();
    assert_eq!(names(&r), ["up", "ingest", "apply", "down"], "{r}");
    assert_eq!(r["written_files"], 0, "already in place: {r}");
    env.cairn(["machine", "up", "box"]).ok();
    assert_same(
        &v1,
        &snapshot(&at.join("etc")),
        "/etc of box restored while down",
    );
    assert_eq!(std::fs::read(at.join("outside")).unwrap(), b"kept");
    env.cairn(["machine", "down", "box"]).ok();
    env.cairn(["check", "--read-data"]).ok();
}

/// The lower view of this env's only mounted machine: its mountpoint and its mount source
/// (`cairn:NAME@base.TREE`), if one is mounted.
fn lower_view(env: &Env) -> Option<(PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let home = env.home();
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        let point = PathBuf::from(f[4]);
        let sep = f.iter().position(|&x| x == "-")?;
        (point.starts_with(&home) && point.ends_with("lower"))
            .then(|| (point, f[sep + 2].to_owned()))
    })
}

fn base_of(env: &Env, name: &str) -> String {
    let v = env.cairn(["machine", "show", name]).json();
    v["base"].as_str().expect("base").to_owned()
}

pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Regression: a view server left by an interrupted command could mount an older base after
/// the next command had started its own, and `up` detached any view it found, also a good one.
#[test]
fn up_keeps_a_view_of_its_base_and_replaces_one_of_another() {
    let env = Env::views_only();
    let (_t, at) = web_and_box(&env);
    env.cairn(["machine", "up", "box"]).ok();
    let (lower, source) = lower_view(&env).expect("a lower view");
    assert_eq!(source, format!("cairn:box@base.{}", base_of(&env, "box")));
    let first = server_pids(&env, "box");
    std::fs::write(at.join("added"), b"in box@v2").unwrap();
    env.cairn(["checkpoint", "create", "box"]).ok();

    // The overlay goes from outside: up keeps the view of the base it still has.
    rustix::mount::unmount(&at, rustix::mount::UnmountFlags::empty()).unwrap();
    let up = env.cairn(["machine", "up", "box"]).json();
    assert!(up["recovered"].to_string().contains("kept"), "{up}");
    assert_eq!(server_pids(&env, "box"), first, "the same server");
    assert_eq!(std::fs::read(at.join("added")).unwrap(), b"in box@v2");

    // A rebase while the overlay is gone leaves a view of the old base: up replaces it.
    rustix::mount::unmount(&at, rustix::mount::UnmountFlags::empty()).unwrap();
    env.cairn(["restore", "box@v2"]).ok();
    let up = env.cairn(["machine", "up", "box"]).json();
    assert!(up["recovered"].to_string().contains("another base"), "{up}");
    let (_, source) = lower_view(&env).expect("a lower view");
    assert_eq!(source, format!("cairn:box@base.{}", base_of(&env, "box")));
    assert_eq!(
        std::fs::read(at.join("added")).unwrap(),
        b"in box@v2",
        "now served by the view of box@v2"
    );
    wait_until("the old server exits", || {
        server_pids(&env, "box").len() == 1 && server_pids(&env, "box") != first
    });

    // A second server of the same machine waits for the first to end instead of mounting
    // over it; then it serves.
    let mut second = env.cairn(["machine", "serve-lower", "box"]).spawn();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(second.try_wait().unwrap().is_none(), "it waits");
    let stacked = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(lower.to_str().unwrap()))
        .count();
    assert_eq!(stacked, 1, "one view at {}", lower.display());
    env.cairn(["machine", "down", "box"]).ok();
    wait_until("the waiting server mounts", || lower_view(&env).is_some());
    cairn_core::unmount(&lower).unwrap();
    let run = crate::util::finish(second);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

/// Once the data layer holds the base's files, the view server writes the base's lower
/// image, and the machine's next mount stands on it with no server at all.
#[test]
fn a_machine_stands_on_its_bases_lower_image_once_the_server_built_it() {
    let env = Env::new();
    let (t, at) = web_and_box(&env);
    let want = snapshot(&t.root);
    let up = env.cairn(["machine", "up", "box"]).json();
    assert_eq!(up["lower"], "view", "{up}");
    let image = env.home().join("cache/lowers").join(base_of(&env, "box"));
    wait_until("the server builds the base's image", || image.is_dir());

    env.cairn(["restore", "box@v1"]).ok();
    wait_until("the view server exits", || {
        server_pids(&env, "box").is_empty()
    });
    assert_same(&want, &snapshot(&at), "box over its image");
    assert!(lower_view(&env).is_none(), "no view is mounted");
    let again = env.cairn(["machine", "up", "box"]).json();
    assert_eq!(again["already_up"], true, "{again}");
    env.cairn(["machine", "down", "box"]).ok();
    let up = env.cairn(["machine", "up", "box"]).json();
    assert_eq!(up["lower"], "image", "{up}");
    assert!(server_pids(&env, "box").is_empty());
    std::fs::write(at.join("etc/hostname"), b"over the image\n").unwrap();
    env.cairn(["checkpoint", "create", "box"]).ok();
    let cat = env.cairn(["cat", "box@latest:/etc/hostname"]).ok().stdout();
    assert_eq!(cat, "over the image\n");
    env.cairn(["gc"]).ok();
    env.cairn(["check", "--read-data"]).ok();
    env.cairn(["machine", "down", "box"]).ok();
}
