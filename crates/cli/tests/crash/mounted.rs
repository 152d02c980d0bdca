//! Mounted machines in the crash harness: a machine that is up, written through its overlay,
//! while `cairn checkpoint create`, `cairn restore` (of the whole machine or of one directory)
//! or `cairn fork` runs on it, and SIGKILL for that command, for the view server of its lower
//! layer (`machine serve-lower`), or for both.
//!
//! After every kill: `cairn check` passes; `cairn machine up` brings the machine back (saying
//! what it recovered) and completes an interrupted restore; the view is exactly the state
//! before the command or the command's target, so what was written into the upper survives
//! unless a restore took effect; every checkpoint that exists restores exactly; and once the
//! machine is down again no mount or server is left behind.

use super::world::{Links, build_tree, mutate_tree, pick_other, reported_id};
use crate::util::tree::{Rng, first_difference};
use crate::util::{Env, Run, Snapshot, assert_same, snapshot, view_servers};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const BOX: &str = "box";
/// Multi-chunk files of 128 to 384 KiB: every cold read through a fresh view costs, and the
/// trials are about the protocol, not about volume.
const UNIT: usize = 128 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Op {
    Checkpoint,
    Restore,
    /// `restore box@vN:/DIR`: the directory machine's restore through the overlay.
    PartialRestore,
    Fork,
}

/// What a trial kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Command,
    Server,
    Both,
}

/// Trials run and how many were cut short by a kill (of the command or of the view server).
#[derive(Default)]
pub struct Stats {
    pub trials: u64,
    pub killed: u64,
    by_op: BTreeMap<Op, (u64, u64)>,
    server_kills: u64,
    recoveries: u64,
    interrupted_restores: u64,
    undone: u64,
    unreported_commits: u64,
    half_forks: u64,
    restores_cut: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} trials, {} killed (", self.trials, self.killed)?;
        for (op, (n, k)) in &self.by_op {
            write!(f, "{op:?} {k}/{n}; ")?;
        }
        write!(
            f,
            "{} view servers killed, {} recoveries reported by up; {} restores left a journal, \
             {} of them undone; {} checkpoints committed but not reported; {} forks left a \
             machine behind; {} restores failed, saying so, because their view server was killed)",
            self.server_kills,
            self.recoveries,
            self.interrupted_restores,
            self.undone,
            self.unreported_commits,
            self.half_forks,
            self.restores_cut
        )
    }
}

struct Outcome {
    run: Run,
    /// The command was killed before it finished.
    killed: bool,
    /// A view server was killed during (or right after) the command.
    server_killed: bool,
}

/// Kills the trial's view servers, so a failing trial leaves no process behind (the `Env`
/// detaches its mounts when it drops).
struct ServerGuard {
    home: PathBuf,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        for pid in view_servers(&self.home, None) {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

pub struct MountedWorld {
    // Declared first so it is dropped before `env` removes the tempdir.
    _guard: ServerGuard,
    env: Env,
    rng: Rng,
    /// Where `box` appears while it is up.
    at: PathBuf,
    /// Every checkpoint of `box` that exists → the tree it must restore to.
    known: BTreeMap<String, Snapshot>,
    /// What the machine shows now.
    live: Snapshot,
    est: HashMap<Op, Duration>,
    kills_in_a_row: HashMap<Op, u32>,
    stats: Stats,
    serial: u64,
}

impl MountedWorld {
    /// `web`, a directory machine holding the harness's tree, with web@v1; `box`, a mounted
    /// machine over it; each command timed once unkilled.
    pub fn new(seed: u64) -> MountedWorld {
        let env = Env::new();
        let guard = ServerGuard { home: env.home() };
        let mut rng = Rng::new(seed);
        let src = env.path("web");
        build_tree(&src, &mut rng, UNIT);
        env.machine("web", &src);
        env.checkpoint("web");
        let v = env
            .cairn(["machine", "create", BOX, "--mounted", "--from", "web@v1"])
            .json();
        let at = PathBuf::from(v["at"].as_str().expect("at"));
        let mut w = MountedWorld {
            _guard: guard,
            env,
            rng,
            at,
            known: BTreeMap::new(),
            live: snapshot(&src),
            est: HashMap::new(),
            kills_in_a_row: HashMap::new(),
            stats: Stats::default(),
            serial: 0,
        };
        w.known.insert(format!("{BOX}@v1"), w.live.clone());
        w.up(BOX, u64::MAX);
        w.expect_view(&w.live.clone(), u64::MAX, "box over web@v1");
        // Calibration, while up, as in the trials.
        w.mutate();
        let start = Instant::now();
        let v2 = w.env.checkpoint(BOX);
        w.est.insert(Op::Checkpoint, start.elapsed());
        w.known.insert(v2.clone(), w.live.clone());
        let start = Instant::now();
        w.env.restore(&format!("{BOX}@v1"));
        w.est.insert(Op::Restore, start.elapsed());
        let v1 = w.known[&format!("{BOX}@v1")].clone();
        w.expect_view(&v1, u64::MAX, "calibration restore of v1");
        let v2_snap = w.known[&v2].clone();
        if let Some(dir) = top_dirs(&v1, &v2_snap).first() {
            let start = Instant::now();
            w.env.restore(&format!("{v2}:/{dir}"));
            w.est.insert(Op::PartialRestore, start.elapsed());
            let now = snapshot(&w.at);
            assert_partial(&now, &v1, &v2_snap, dir, "calibration partial restore");
            w.live = now;
        }
        let start = Instant::now();
        w.env.cairn(["fork", &v2, "calibration"]).json();
        w.est.insert(Op::Fork, start.elapsed());
        w.env.cairn(["machine", "rm", "calibration"]).json();
        w.down_all(u64::MAX);
        eprintln!("measured durations (mounted): {:?}", w.est);
        w
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// One trial: bring `box` up, kill a command on it, verify, bring everything down.
    pub fn trial(&mut self, t: u64) {
        self.up(BOX, t);
        self.expect_view(&self.live.clone(), t, "box brought up for the trial");
        let roll = self.rng.below(100);
        let op = match roll {
            0..45 => Op::Checkpoint,
            45..70 => Op::Restore,
            70..85 if self.est.contains_key(&Op::PartialRestore) => Op::PartialRestore,
            70..85 => Op::Restore,
            _ => Op::Fork,
        };
        let victim = match self.rng.below(10) {
            0..6 => Victim::Command,
            6 | 7 => Victim::Server,
            _ => Victim::Both,
        };
        let killed = match op {
            Op::Checkpoint => self.trial_checkpoint(t, victim),
            Op::Restore => self.trial_restore(t, victim),
            Op::PartialRestore => self.trial_partial_restore(t, victim),
            Op::Fork => self.trial_fork(t, victim),
        };
        let e = self.stats.by_op.entry(op).or_default();
        e.0 += 1;
        e.1 += u64::from(killed);
        self.stats.trials += 1;
        self.stats.killed += u64::from(killed);
        self.verify_random(t);
        self.down_all(t);
    }

    /// Runs `cairn ARGS --json` and kills it, the view server of `box`, or both, each at a
    /// uniform random instant in [0, 1.2 × the command's measured duration]. A server whose
    /// instant comes after the command ended is killed then. A command that finishes must
    /// succeed, whether or not the server died under it.
    fn run_killed(&mut self, op: Op, args: &[OsString], victim: Victim, t: u64) -> Outcome {
        let est = self.est[&op];
        let mut instant = || est.mul_f64(1.2 * self.rng.below(1_000_000) as f64 / 1e6);
        let cmd_at = (victim != Victim::Server).then(&mut instant);
        let server_at = (victim != Victim::Command).then(&mut instant);
        let home = self.env.home();
        let super::Killed {
            run,
            elapsed,
            killed,
            other: server_killed,
        } = super::run_and_kill(
            self.env.cairn(args),
            cmd_at,
            server_at,
            || kill_servers(&home),
            &(t, args),
        );
        eprintln!(
            "trial {t}: mounted {op:?} {args:?} {} after {elapsed:.2?} (kill {cmd_at:.2?}, \
             server kill {server_at:.2?}: {})",
            if killed { "killed" } else { "finished" },
            if server_killed { "done" } else { "no server" }
        );
        self.stats.server_kills += u64::from(server_killed);
        let server_started = server_killed && args[0] == "restore";
        if !killed && run.code != Some(0) && server_started {
            // A restore whose view server was killed, the one it started for its remount or the
            // one a partial restore reads and writes through, fails; the error must say what
            // stopped and what to run. `machine up` then completes it (checked by the trial).
            let e = run.stderr.clone();
            assert!(
                e.contains("server") && e.contains("cairn machine up"),
                "trial {t}: {args:?} failed without saying why: {e}"
            );
            self.stats.restores_cut += 1;
        } else if !killed {
            assert_eq!(
                run.code,
                Some(0),
                "trial {t}: {args:?} failed (view server killed: {server_killed})\nstdout:\n{}\n\
                 stderr:\n{}",
                run.stdout(),
                run.stderr
            );
            let e = self.est.get_mut(&op).expect("calibrated");
            super::learn(e, elapsed);
            self.kills_in_a_row.insert(op, 0);
        } else {
            // As in the directory harness: widen an estimate that only kills keep short.
            let n = self.kills_in_a_row.entry(op).or_default();
            *n += 1;
            if *n >= 8 {
                *n = 0;
                let e = self.est.get_mut(&op).expect("calibrated");
                *e = e.mul_f64(1.25);
            }
        }
        Outcome {
            run,
            killed,
            server_killed,
        }
    }

    fn check(&self, t: u64, read_data: bool) {
        let mut cmd = self.env.cairn(["check"]);
        if read_data {
            cmd.arg("--read-data");
        }
        let run = cmd.arg("--json").run();
        assert_eq!(
            run.code,
            Some(0),
            "trial {t}: cairn check failed\nstdout:\n{}\nstderr:\n{}",
            run.stdout(),
            run.stderr
        );
        let v = run.json();
        assert_eq!(v["findings"], Value::Array(vec![]), "trial {t}: {v}");
    }

    /// `cairn machine up NAME`, which must succeed whatever an earlier kill left; returns what
    /// it recovered.
    fn up(&mut self, name: &str, t: u64) -> Vec<String> {
        let run = self.env.cairn(["machine", "up", name, "--json"]).run();
        assert_eq!(
            run.code,
            Some(0),
            "trial {t}: machine up {name} failed\nstdout:\n{}\nstderr:\n{}",
            run.stdout(),
            run.stderr
        );
        let v = run.json();
        let recovered: Vec<String> = v["recovered"]
            .as_array()
            .unwrap_or_else(|| panic!("trial {t}: no recovered in {v}"))
            .iter()
            .map(|r| r.as_str().expect("a recovery is text").to_owned())
            .collect();
        if !recovered.is_empty() {
            self.stats.recoveries += 1;
            eprintln!("trial {t}: machine up {name} recovered: {recovered:?}");
        }
        recovered
    }

    /// Brings `box` down and proves nothing of it stays mounted or running.
    fn down_all(&mut self, t: u64) {
        self.env.cairn(["machine", "down", BOX]).json();
        let left = cairn_core::mounts_below(self.env.root());
        assert!(left.is_empty(), "trial {t}: mounts left behind: {left:?}");
        // A server exits once its view is unmounted; give it a moment to notice.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = view_servers(&self.env.home(), None);
            if pids.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "trial {t}: view servers still running with every machine down: {pids:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Matches box's checkpoint list against what is known; new ones were made from
    /// `made_from`. Returns the new ids.
    fn reconcile(&mut self, t: u64, made_from: Option<&Snapshot>) -> Vec<String> {
        let list = self.env.cairn(["checkpoint", "list", BOX]).json();
        let ids: Vec<String> = list
            .as_array()
            .expect("checkpoint list is an array")
            .iter()
            .map(|c| c["id"].as_str().expect("id").to_owned())
            .collect();
        for k in self.known.keys() {
            assert!(
                ids.contains(k),
                "trial {t}: checkpoint {k} vanished; the list is {ids:?}"
            );
        }
        let new: Vec<String> = ids
            .into_iter()
            .filter(|id| !self.known.contains_key(id))
            .collect();
        assert!(new.len() <= 1, "trial {t}: several new checkpoints {new:?}");
        for id in &new {
            let snap = made_from
                .unwrap_or_else(|| panic!("trial {t}: checkpoint {id} appeared from nowhere"));
            self.known.insert(id.clone(), snap.clone());
            // Every checkpoint that comes to exist restores exactly, not just a random one.
            self.fork_and_compare(id, t);
        }
        new
    }

    fn trial_checkpoint(&mut self, t: u64, victim: Victim) -> bool {
        self.mutate();
        let s = self.live.clone();
        let mut args: Vec<OsString> = vec!["checkpoint".into(), "create".into(), BOX.into()];
        if self.rng.chance(30) {
            self.serial += 1;
            args.push("--name".into());
            args.push(format!("n{}", self.serial).into());
        }
        let out = self.run_killed(Op::Checkpoint, &args, victim, t);
        let reported = reported_id(&out.run.stdout, "\"id\": \"");
        self.check(t, false);
        let recovered = self.up(BOX, t);
        if out.server_killed {
            // A checkpoint never remounts, so the dead server's mounts are still there.
            assert!(
                !recovered.is_empty(),
                "trial {t}: the view server was killed but up recovered nothing"
            );
        }
        let new = self.reconcile(t, Some(&s));
        match &reported {
            Some(id) => assert_eq!(new, vec![id.clone()], "trial {t}: reported {id}"),
            None if !new.is_empty() => self.stats.unreported_commits += 1,
            None => {}
        }
        self.expect_view(&s, t, "the upper's writes after a killed checkpoint");
        (out.killed && reported.is_none()) || out.server_killed
    }

    fn trial_restore(&mut self, t: u64, victim: Victim) -> bool {
        if self.rng.chance(60) {
            // Unsaved writes, so the restore has an undo point to commit first.
            self.mutate();
        }
        let before = self.live.clone();
        let target = pick_other(&self.known, &self.live, &mut self.rng);
        let target_snap = self.known[&target].clone();
        let (out, reported, journal) = self.run_restore(Op::Restore, &target, victim, &before, t);
        if journal && self.rng.chance(35) {
            // Undo it: the next restore first completes the interrupted one.
            let undo = self
                .known
                .iter()
                .find(|(_, s)| **s == before)
                .map(|(id, _)| id.clone())
                .unwrap_or_else(|| {
                    panic!("trial {t}: a journal exists but no checkpoint holds the state before")
                });
            let v = self.env.restore(&undo);
            assert_eq!(
                v["completed_interrupted"],
                target.as_str(),
                "trial {t}: {v}"
            );
            self.stats.undone += 1;
            self.reconcile(t, Some(&target_snap));
            self.up(BOX, t);
            self.expect_view(&before, t, "undoing an interrupted restore");
        } else {
            // `machine up` completes an interrupted restore before mounting.
            self.up(BOX, t);
            let now = snapshot(&self.at);
            if reported.is_some() || journal {
                assert_same(
                    &now,
                    &target_snap,
                    &format!("trial {t}: restore of {target}"),
                );
            } else {
                assert!(
                    now == before || now == target_snap,
                    "trial {t}: no journal, yet the view is neither the state before nor the \
                     target: vs before: {:?}; vs target: {:?}",
                    first_difference(&now, &before),
                    first_difference(&now, &target_snap)
                );
            }
            self.live = now;
        }
        let info = self.env.cairn(["machine", "show", BOX]).json();
        assert!(info["interrupted_restore"].is_null(), "trial {t}: {info}");
        if let Some(v) = &reported {
            assert_eq!(v["target"], target.as_str(), "trial {t}: {v}");
            return out.server_killed;
        }
        out.killed || out.server_killed
    }

    /// `cairn restore TARGET` under `run_killed`, then the checks every restore trial makes:
    /// `cairn check` passes, any new checkpoint is the undo point of `before`, and a journal
    /// left behind names TARGET. Returns the outcome, the report if one came, and whether a
    /// journal was left.
    fn run_restore(
        &mut self,
        op: Op,
        target: &str,
        victim: Victim,
        before: &Snapshot,
        t: u64,
    ) -> (Outcome, Option<Value>, bool) {
        let args: Vec<OsString> = vec!["restore".into(), target.into()];
        let out = self.run_killed(op, &args, victim, t);
        let reported = (out.run.code == Some(0))
            .then(|| serde_json::from_slice::<Value>(&out.run.stdout).ok())
            .flatten();
        self.check(t, false);
        let info = self.env.cairn(["machine", "show", BOX]).json();
        let journal = !info["interrupted_restore"].is_null();
        self.reconcile(t, Some(before));
        if journal {
            self.stats.interrupted_restores += 1;
            assert_eq!(info["interrupted_restore"], target, "trial {t}");
        }
        (out, reported, journal)
    }

    /// `restore box@vN:/DIR` killed at a random instant. After `machine up` (which completes
    /// an interrupted restore) the view is the state before, or, when the restore was reported
    /// or left a journal, the target inside DIR and the state before outside it.
    fn trial_partial_restore(&mut self, t: u64, victim: Victim) -> bool {
        if self.rng.chance(60) {
            self.mutate();
        }
        let before = self.live.clone();
        let target = pick_other(&self.known, &self.live, &mut self.rng);
        let target_snap = self.known[&target].clone();
        let dirs = top_dirs(&before, &target_snap);
        if dirs.is_empty() {
            return self.trial_restore(t, victim);
        }
        let dir = self.rng.pick(&dirs).clone();
        let arg = format!("{target}:/{dir}");
        let (out, reported, journal) =
            self.run_restore(Op::PartialRestore, &arg, victim, &before, t);
        self.up(BOX, t);
        let now = snapshot(&self.at);
        let what = format!("trial {t}: restore of {arg}");
        if reported.is_some() || journal || now != before {
            assert_partial(&now, &before, &target_snap, &dir, &what);
        }
        self.live = now;
        let info = self.env.cairn(["machine", "show", BOX]).json();
        assert!(info["interrupted_restore"].is_null(), "trial {t}: {info}");
        (out.killed && reported.is_none()) || out.server_killed
    }

    fn trial_fork(&mut self, t: u64, victim: Victim) -> bool {
        let ids: Vec<String> = self.known.keys().cloned().collect();
        let source = self.rng.pick(&ids).clone();
        self.serial += 1;
        let name = format!("x{}", self.serial);
        let args: Vec<OsString> = vec!["fork".into(), source.clone().into(), name.clone().into()];
        let out = self.run_killed(Op::Fork, &args, victim, t);
        let reported = serde_json::from_slice::<Value>(&out.run.stdout).ok();
        self.check(t, false);
        self.up(BOX, t);
        self.reconcile(t, None);
        let show = self.env.cairn(["machine", "show", &name, "--json"]).run();
        let exists = show.code == Some(0);
        if reported.is_some() {
            assert!(exists, "trial {t}: reported fork {name} does not exist");
        } else if exists && !show.json()["head"].is_null() {
            // Killed once its v1 was committed: the next command on it finishes it.
            self.stats.half_forks += 1;
        } else {
            // Killed earlier: what is left holds nothing, and running the fork again works.
            self.env.cairn(["fork", &source, &name]).json();
        }
        // Whatever the kill left, the fork is a working machine over the source's tree.
        self.up(&name, t);
        let info = self.env.cairn(["machine", "show", &name]).json();
        let fork_at = PathBuf::from(info["dir"].as_str().expect("dir"));
        assert_same(
            &snapshot(&fork_at),
            &self.known[&source],
            &format!("trial {t}: mounted fork {name} of {source}"),
        );
        self.env.cairn(["machine", "down", &name]).json();
        self.env.cairn(["machine", "rm", &name]).json();
        self.expect_view(&self.live.clone(), t, "box after a fork of it");
        out.killed && reported.is_none() || out.server_killed
    }

    /// After every trial: one random checkpoint restores exactly, by a restore of `box` (a
    /// rebase, while up) or by a fork into a directory machine.
    fn verify_random(&mut self, t: u64) {
        let ids: Vec<String> = self.known.keys().cloned().collect();
        let id = self.rng.pick(&ids).clone();
        if self.rng.chance(50) {
            self.restore_and_compare(&id, t);
        } else {
            self.fork_and_compare(&id, t);
        }
    }

    fn restore_and_compare(&mut self, id: &str, t: u64) {
        let before = self.live.clone();
        let v = self.env.restore(id);
        assert!(v["completed_interrupted"].is_null(), "trial {t}: {v}");
        self.reconcile(t, Some(&before));
        let want = self.known[id].clone();
        self.expect_view(&want, t, &format!("restore of {id}"));
    }

    /// Forks `id` into a directory machine and compares the directory, then drops it.
    fn fork_and_compare(&mut self, id: &str, t: u64) {
        self.serial += 1;
        let name = format!("d{}", self.serial);
        let dir = self.env.path(&name);
        self.env
            .cairn(["fork", id, &name, "--dir"])
            .arg(&dir)
            .json();
        assert_same(
            &snapshot(&dir),
            &self.known[id],
            &format!("trial {t}: {id} forked into a directory"),
        );
        self.env.cairn(["machine", "rm", &name]).json();
        std::fs::remove_dir_all(&dir).expect("remove fork dir");
    }

    fn expect_view(&mut self, want: &Snapshot, t: u64, what: &str) {
        let now = snapshot(&self.at);
        assert_same(&now, want, &format!("trial {t}: {what}"));
        self.live = now;
    }

    /// At the end: read every byte back, then restore every checkpoint and compare the view.
    pub fn finish(&mut self) {
        self.check(u64::MAX, true);
        self.up(BOX, u64::MAX);
        let ids: Vec<String> = self.known.keys().cloned().collect();
        for id in ids {
            self.restore_and_compare(&id, u64::MAX);
        }
        self.down_all(u64::MAX);
        self.check(u64::MAX, true);
    }

    /// Writes through the mountpoint (see `Links::ToNew`), then records the view.
    fn mutate(&mut self) {
        mutate_tree(
            &self.at,
            &mut self.rng,
            &mut self.serial,
            UNIT,
            Links::ToNew,
        );
        self.live = snapshot(&self.at);
    }
}

/// Top-level directories present in both trees: the paths a partial-restore trial picks from.
fn top_dirs(a: &Snapshot, b: &Snapshot) -> Vec<String> {
    a.iter()
        .filter(|(k, s)| !k.is_empty() && !k.contains(&b'/') && s.kind == "dir")
        .filter(|(k, _)| b.get(*k).is_some_and(|s| s.kind == "dir"))
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect()
}

/// After a partial restore of `dir`: inside it the view is the target, outside it the state
/// before. Link counts and groups, and directory mtimes, are left out: a restored file that
/// was hardlinked across the boundary splits or re-forms its group, and the restore touches
/// the directories it writes in, as on a directory machine. Files outside `dir` that share an
/// inode with one inside are left out for the same reason.
fn assert_partial(now: &Snapshot, before: &Snapshot, target: &Snapshot, dir: &str, what: &str) {
    let inside = |k: &[u8]| k == dir.as_bytes() || k.starts_with(format!("{dir}/").as_bytes());
    let linked = |s: &crate::util::tree::Snap| s.kind == "file" && s.nlink > 1;
    let mut want = Snapshot::new();
    for (k, s) in before.iter().filter(|(k, _)| !inside(k)) {
        want.insert(k.clone(), s.clone());
    }
    for (k, s) in target.iter().filter(|(k, _)| inside(k)) {
        want.insert(k.clone(), s.clone());
    }
    let relax = |snap: &Snapshot| -> Snapshot {
        snap.iter()
            .filter(|(k, s)| inside(k) || !(linked(s) || before.get(*k).is_some_and(linked)))
            .map(|(k, s)| {
                let mut s = s.clone();
                s.nlink = 0;
                s.group.clear();
                if s.kind == "dir" {
                    s.mtime = (0, 0);
                }
                (k.clone(), s)
            })
            .collect()
    };
    assert_same(&relax(now), &relax(&want), what);
}

/// SIGKILLs every view server of `box` in the cairn home `home`; true if there was one.
pub(super) fn kill_servers(home: &std::path::Path) -> bool {
    let pids = view_servers(home, Some(BOX));
    for &pid in &pids {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    !pids.is_empty()
}
