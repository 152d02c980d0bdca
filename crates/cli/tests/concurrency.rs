//! Two commands on one machine: the second waits (up to `--wait`) or fails saying who holds the
//! lock; a lock dies with its holder; other machines are not blocked.

use crate::util::{Env, Run, finish, noise};
use std::process::Child;
use std::time::{Duration, Instant};

/// Machine `web` with enough data that a checkpoint of it is still running when it is stopped.
fn web() -> Env {
    let env = Env::new();
    let dir = env.path("web");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..3 {
        std::fs::write(dir.join(format!("big{i}")), noise(10 << 20, i)).unwrap();
    }
    env.machine("web", &dir);
    env
}

/// Starts `cairn ARGS` on machine `web` and freezes it (SIGSTOP) once it holds the machine
/// lock, which it records in its lock file as `pid N, OP`.
fn frozen(env: &Env, args: &[&str], op: &str) -> Frozen {
    let child = env.cairn(args).arg("--json").spawn();
    let pid = child.id();
    let lock = env.home().join("locks/machine-web.lock");
    let want = format!("pid {pid}, {op}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&lock).unwrap_or_default() != want {
        assert!(Instant::now() < deadline, "cairn never took the lock");
        std::thread::sleep(Duration::from_micros(200));
    }
    signal(&child, libc::SIGSTOP);
    Frozen(Some(child))
}

/// A stopped cairn process; killed if a failing test drops it, so none is left behind.
struct Frozen(Option<Child>);

impl Frozen {
    fn id(&self) -> u32 {
        self.0.as_ref().expect("not yet finished").id()
    }

    /// Lets it run to its end.
    fn thaw(mut self) -> Run {
        let child = self.0.take().expect("not yet finished");
        signal(&child, libc::SIGCONT);
        finish(child)
    }

    fn kill(mut self) -> Run {
        let mut child = self.0.take().expect("not yet finished");
        child.kill().expect("SIGKILL");
        finish(child)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A checkpoint frozen while it holds the machine lock.
fn frozen_checkpoint(env: &Env) -> Frozen {
    frozen(env, &["checkpoint", "create", "web"], "checkpoint create")
}

fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on a child this test spawned and has not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {sig}");
}

#[test]
fn a_second_command_on_a_busy_machine_fails_with_wait_0_and_says_who_holds_it() {
    let env = web();
    env.checkpoint("web");
    for i in 0..3 {
        std::fs::write(env.path(&format!("web/big{i}")), noise(10 << 20, 10 + i)).unwrap();
    }
    // A diff against the live directory holds the machine lock while it reads, and (unlike a
    // checkpoint, which may be frozen inside a catalog transaction) writes nothing meanwhile.
    let first = frozen(&env, &["diff", "web@v1"], "diff");
    let holder = format!("pid {}, diff", first.id());

    let msg = env
        .cairn(["checkpoint", "create", "web", "--wait", "0"])
        .json_error(1);
    assert!(msg.contains("web") && msg.contains(&holder), "{msg}");
    let start = Instant::now();
    let run = env
        .cairn(["restore", "web@latest", "--wait", "0.5"])
        .code(1);
    assert!(start.elapsed() >= Duration::from_millis(500), "it waited");
    assert!(run.stderr.contains(&holder), "{}", run.stderr);

    // Another machine is not blocked, nor are reads of the catalog.
    std::fs::create_dir_all(env.path("other")).unwrap();
    env.machine("other", &env.path("other"));
    assert_eq!(
        env.cairn(["checkpoint", "create", "other", "--wait", "0"])
            .ok()
            .stdout(),
        "other@v1\n"
    );
    env.cairn(["machine", "list", "--wait", "0"]).json();

    let run = first.thaw();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.json().as_array().map(Vec::len),
        Some(3),
        "{}",
        run.stdout()
    );
}

#[test]
fn a_second_command_waits_for_the_first_and_both_succeed() {
    let env = web();
    let first = frozen_checkpoint(&env);
    let mut second = env.cairn(["checkpoint", "create", "web", "--json"]).spawn();
    std::thread::sleep(Duration::from_millis(300));
    assert!(second.try_wait().unwrap().is_none(), "the second one waits");
    let (a, b) = (first.thaw(), finish(second));
    assert_eq!(
        (a.code, b.code),
        (Some(0), Some(0)),
        "{} / {}",
        a.stderr,
        b.stderr
    );
    assert_eq!(a.json()["checkpoint"]["id"], "web@v1");
    assert_eq!(b.json()["checkpoint"]["id"], "web@v2");
    assert_eq!(b.json()["unchanged"], true);
}

#[test]
fn a_lock_held_by_a_killed_process_is_no_problem() {
    let env = web();
    let run = frozen_checkpoint(&env).kill();
    assert_eq!(run.code, None, "it was killed");
    let v = env
        .cairn(["checkpoint", "create", "web", "--wait", "0"])
        .json();
    assert_eq!(v["checkpoint"]["id"], "web@v1");
    env.cairn(["check"]).ok();
    let v = env.cairn(["gc", "--grace", "0s", "--wait", "0"]).json();
    assert_eq!(v["dry_run"], false);
    env.cairn(["check", "--read-data"]).ok();
}
