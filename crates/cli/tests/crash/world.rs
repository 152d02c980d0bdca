//! One machine, its history of snapshots, and the trials that kill commands on it.

use crate::util::tree::{Rng, first_difference};
use crate::util::{Env, Run, Snapshot, TestDir, assert_same, noise, snapshot};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MACHINE: &str = "m";
const DIRS: u64 = 16;

/// Relative weights of the kinds of trial.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    pub checkpoint: u64,
    pub restore: u64,
    pub gc: u64,
    pub fork: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Op {
    Checkpoint,
    Restore,
    Gc,
    Fork,
    /// Killed too, but as part of a gc trial (it makes the garbage).
    Delete,
}

/// Trials run and how many of them were killed before the command finished, per kind.
#[derive(Default)]
pub struct Stats {
    pub trials: u64,
    pub killed: u64,
    by_op: BTreeMap<Op, (u64, u64)>,
    interrupted_restores: u64,
    undone: u64,
    unreported_commits: u64,
    /// Checkpoint deletes run before gc trials, and how many of them were killed.
    deletes: (u64, u64),
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} trials, {} killed (", self.trials, self.killed)?;
        for (op, (n, k)) in &self.by_op {
            write!(f, "{op:?} {k}/{n}; ")?;
        }
        write!(
            f,
            "{} restores left a journal, {} of them undone; {} checkpoints committed but not \
             reported; {} of {} deletes killed)",
            self.interrupted_restores,
            self.undone,
            self.unreported_commits,
            self.deletes.1,
            self.deletes.0
        )
    }
}

/// A command that ran until it finished or until the harness killed it.
struct Outcome {
    run: Run,
    killed: bool,
}

pub struct World {
    env: Env,
    rng: Rng,
    mix: Mix,
    dir: PathBuf,
    /// Every checkpoint of the machine that exists → the tree it must restore to.
    known: BTreeMap<String, Snapshot>,
    /// What the machine directory holds now.
    live: Snapshot,
    /// Measured duration of each command, for picking kill instants.
    est: HashMap<Op, Duration>,
    kills_in_a_row: HashMap<Op, u32>,
    stats: Stats,
    serial: u64,
}

impl World {
    /// A machine with a few hundred small files, some multi-chunk files of a few MB, and every
    /// special kind of entry; v1 is committed, and each command is timed once unkilled.
    pub fn new(seed: u64, mix: Mix) -> World {
        let env = Env::new();
        let dir = env.path("m");
        let mut rng = Rng::new(seed);
        build_tree(&dir, &mut rng, MB);
        env.machine(MACHINE, &dir);
        let mut w = World {
            env,
            rng,
            mix,
            dir,
            known: BTreeMap::new(),
            live: Snapshot::new(),
            est: HashMap::new(),
            kills_in_a_row: HashMap::new(),
            stats: Stats::default(),
            serial: 0,
        };
        w.live = snapshot(&w.dir);
        let v1 = w.env.checkpoint(MACHINE);
        w.known.insert(v1, w.live.clone());
        // Calibration: one normal run of each command, so kills spread over its duration.
        w.mutate();
        let start = Instant::now();
        let v2 = w.env.checkpoint(MACHINE);
        w.est.insert(Op::Checkpoint, start.elapsed());
        w.known.insert(v2, w.live.clone());
        let start = Instant::now();
        w.env.restore(&format!("{MACHINE}@v1"));
        w.est.insert(Op::Restore, start.elapsed());
        w.live = w.known[&format!("{MACHINE}@v1")].clone();
        assert_same(&snapshot(&w.dir), &w.live, "calibration restore of v1");
        let start = Instant::now();
        w.env.cairn(["gc", "--grace", "0s"]).json();
        w.est.insert(Op::Gc, start.elapsed());
        let start = Instant::now();
        let fork_dir = w.env.path("fork-calibration");
        w.env
            .cairn(["fork", "m@v2", "calibration", "--dir"])
            .arg(&fork_dir)
            .json();
        w.est.insert(Op::Fork, start.elapsed());
        w.drop_fork("calibration", &fork_dir);
        let start = Instant::now();
        w.env.cairn(["checkpoint", "delete", "m@v2"]).json();
        w.est.insert(Op::Delete, start.elapsed());
        w.known.remove("m@v2");
        eprintln!("measured durations: {:?}", w.est);
        w
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    /// One trial: kill one command, then verify the store and one random checkpoint.
    pub fn trial(&mut self, t: u64) {
        let m = self.mix;
        let roll = self.rng.below(m.checkpoint + m.restore + m.gc + m.fork);
        let op = if roll < m.checkpoint {
            Op::Checkpoint
        } else if roll < m.checkpoint + m.restore {
            Op::Restore
        } else if roll < m.checkpoint + m.restore + m.gc {
            Op::Gc
        } else {
            Op::Fork
        };
        let killed = match op {
            Op::Checkpoint => self.trial_checkpoint(t),
            Op::Restore => self.trial_restore(t),
            Op::Gc => self.trial_gc(t),
            Op::Fork => self.trial_fork(t),
            Op::Delete => unreachable!("deletes run inside gc trials"),
        };
        let e = self.stats.by_op.entry(op).or_default();
        e.0 += 1;
        e.1 += u64::from(killed);
        self.stats.trials += 1;
        self.stats.killed += u64::from(killed);
        self.verify_random(t);
    }

    /// Runs `cairn ARGS --json`, SIGKILLing it at a uniform random instant in
    /// [0, 1.2 × its measured duration]. A run that finishes must succeed.
    fn run_killed(&mut self, op: Op, args: &[OsString], t: u64) -> Outcome {
        let est = self.est[&op];
        let delay = est.mul_f64(1.2 * self.rng.below(1_000_000) as f64 / 1e6);
        let super::Killed {
            run,
            elapsed,
            killed,
            ..
        } = super::run_and_kill(
            self.env.cairn(args),
            Some(delay),
            None,
            || false,
            &(t, args),
        );
        eprintln!(
            "trial {t}: {op:?} {:?} {} after {elapsed:.2?} (kill planned at {delay:.2?})",
            args,
            if killed { "killed" } else { "finished" }
        );
        if !killed {
            assert_eq!(
                run.code,
                Some(0),
                "trial {t}: {args:?} failed\nstdout:\n{}\nstderr:\n{}",
                run.stdout(),
                run.stderr
            );
            let e = self.est.get_mut(&op).expect("calibrated");
            super::learn(e, elapsed);
            self.kills_in_a_row.insert(op, 0);
        } else {
            // The store grows, so commands slow down: an estimate learnt only from finished
            // runs would stop being corrected once every run is killed, and the end of the
            // command would never be hit. After many kills in a row, widen it.
            let n = self.kills_in_a_row.entry(op).or_default();
            *n += 1;
            if *n >= 8 {
                *n = 0;
                let e = self.est.get_mut(&op).expect("calibrated");
                *e = e.mul_f64(1.25);
            }
        }
        Outcome { run, killed }
    }

    /// `cairn check` passes after every kill.
    fn check(&self, t: u64, read_data: bool) {
        let mut cmd = self.env.cairn(["check"]);
        if read_data {
            cmd.arg("--read-data");
        }
        cmd.arg("--json");
        let run = cmd.run();
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

    /// Matches the machine's checkpoint list against what is known. A checkpoint that appeared
    /// without a report (or with one) gets `made_from`, the tree it was made of; one that is
    /// known may never vanish. Returns the new ids.
    fn reconcile(&mut self, t: u64, made_from: Option<&Snapshot>) -> Vec<String> {
        let list = self.env.cairn(["checkpoint", "list", MACHINE]).json();
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
        }
        new
    }

    fn trial_checkpoint(&mut self, t: u64) -> bool {
        self.mutate();
        let s = self.live.clone();
        let mut args: Vec<OsString> = vec!["checkpoint".into(), "create".into(), MACHINE.into()];
        if self.rng.chance(30) {
            args.push("--name".into());
            args.push(format!("n{}", self.next_serial()).into());
        }
        if self.rng.chance(30) {
            args.push("-m".into());
            args.push(format!("trial {t}").into());
        }
        let out = self.run_killed(Op::Checkpoint, &args, t);
        let reported = reported_id(&out.run.stdout, "\"id\": \"");
        self.check(t, false);
        let new = self.reconcile(t, Some(&s));
        match &reported {
            Some(id) => assert_eq!(new, vec![id.clone()], "trial {t}: reported {id}"),
            None if !new.is_empty() => self.stats.unreported_commits += 1,
            None => {}
        }
        out.killed && reported.is_none()
    }

    fn trial_restore(&mut self, t: u64) -> bool {
        let before = self.live.clone();
        let target = pick_other(&self.known, &self.live, &mut self.rng);
        let target_snap = self.known[&target].clone();
        let args: Vec<OsString> = vec!["restore".into(), target.clone().into()];
        let out = self.run_killed(Op::Restore, &args, t);
        let reported = serde_json::from_slice::<Value>(&out.run.stdout).ok();
        self.check(t, false);
        self.reconcile(t, Some(&before));
        if let Some(v) = &reported {
            assert_eq!(v["target"], target.as_str(), "trial {t}: {v}");
            self.expect_live(&target_snap, t, "a reported restore");
            return false;
        }
        let info = self.env.cairn(["machine", "show", MACHINE]).json();
        let now = snapshot(&self.dir);
        if info["interrupted_restore"].is_null() {
            // Killed before the journal was written (nothing changed) or after it was cleared.
            assert!(
                now == before || now == target_snap,
                "trial {t}: no journal, yet the directory is neither the state before nor the \
                 target: vs before: {:?}; vs target: {:?}",
                first_difference(&now, &before),
                first_difference(&now, &target_snap)
            );
            self.live = now;
            return out.killed;
        }
        self.stats.interrupted_restores += 1;
        let undo = self
            .known
            .iter()
            .rev()
            .find(|(_, s)| **s == before)
            .map(|(id, _)| id.clone());
        let undo = undo.unwrap_or_else(|| {
            panic!("trial {t}: a journal exists but no checkpoint holds the state before it")
        });
        if self.rng.chance(35) {
            // Undo it: the next restore first completes the interrupted one.
            let v = self.env.restore(&undo);
            assert_eq!(
                v["completed_interrupted"],
                target.as_str(),
                "trial {t}: {v}"
            );
            self.stats.undone += 1;
            self.reconcile(t, Some(&target_snap));
            self.expect_live(&before, t, "undoing an interrupted restore");
        } else if self.rng.chance(50) {
            // Any next command on the machine completes it; a checkpoint then records it.
            let id = self.env.checkpoint(MACHINE);
            let new = self.reconcile(t, Some(&target_snap));
            assert_eq!(new, vec![id], "trial {t}: the checkpoint is new");
            self.expect_live(
                &target_snap,
                t,
                "the checkpoint after an interrupted restore",
            );
        } else {
            let v = self.env.restore(&target);
            assert_eq!(
                v["completed_interrupted"],
                target.as_str(),
                "trial {t}: {v}"
            );
            self.reconcile(t, None);
            self.expect_live(&target_snap, t, "repeating an interrupted restore");
        }
        let info = self.env.cairn(["machine", "show", MACHINE]).json();
        assert!(info["interrupted_restore"].is_null(), "trial {t}: {info}");
        true
    }

    fn trial_gc(&mut self, t: u64) -> bool {
        // Garbage to collect: delete checkpoints (most of the old ones once there are many).
        let deletes = if self.known.len() > 14 {
            self.known.len() - 8
        } else if self.known.len() > 3 && self.rng.chance(60) {
            1
        } else {
            0
        };
        for _ in 0..deletes {
            let ids: Vec<String> = self.known.keys().cloned().collect();
            let id = self.rng.pick(&ids).clone();
            let args: Vec<OsString> = vec!["checkpoint".into(), "delete".into(), id.clone().into()];
            let out = self.run_killed(Op::Delete, &args, t);
            self.stats.deletes.0 += 1;
            self.stats.deletes.1 += u64::from(out.killed);
            self.check(t, false);
            // A killed delete may or may not have happened; it never half-happens.
            let listed = self.env.cairn(["checkpoint", "list", MACHINE]).json();
            let gone = !listed.to_string().contains(&format!("\"{id}\""));
            assert!(
                gone || out.killed,
                "trial {t}: {id} was deleted but is listed"
            );
            if gone {
                self.known.remove(&id);
            }
            if gone && self.env.cairn(["checkpoint", "show", &id]).run().code != Some(1) {
                panic!("trial {t}: {id} is not listed but can still be shown");
            }
        }
        let mut args: Vec<OsString> = vec!["gc".into(), "--grace".into(), "0s".into()];
        if self.rng.chance(50) {
            args.push("--repack-below".into());
            args.push("0.9".into());
        }
        let out = self.run_killed(Op::Gc, &args, t);
        self.check(t, false);
        self.reconcile(t, None);
        out.killed
    }

    fn trial_fork(&mut self, t: u64) -> bool {
        let ids: Vec<String> = self.known.keys().cloned().collect();
        let source = self.rng.pick(&ids).clone();
        let name = format!("f{}", self.next_serial());
        let dir = self.env.path(&format!("forks/{name}"));
        std::fs::create_dir_all(dir.parent().expect("parent")).expect("mkdir forks");
        let args: Vec<OsString> = vec![
            "fork".into(),
            source.clone().into(),
            name.clone().into(),
            "--dir".into(),
            dir.clone().into(),
        ];
        let out = self.run_killed(Op::Fork, &args, t);
        let reported = serde_json::from_slice::<Value>(&out.run.stdout).ok();
        self.check(t, false);
        self.reconcile(t, None);
        let exists = self.env.cairn(["machine", "show", &name]).run().code == Some(0);
        if let Some(v) = &reported {
            assert_eq!(v["target"], format!("{name}@v1"), "trial {t}: {v}");
            assert!(exists, "trial {t}: reported fork {name} does not exist");
        }
        if exists {
            // The machine is registered only after its directory is complete.
            assert_same(&snapshot(&dir), &self.known[&source], "a forked directory");
        } else if dir.exists() {
            // Killed between the directory's appearance and the machine's registration: the
            // directory is complete, and adopting it gives the machine.
            assert_same(
                &snapshot(&dir),
                &self.known[&source],
                "an unregistered fork",
            );
            self.env.machine(&name, &dir);
        } else {
            // A killed fork leaves nothing behind: running it again just works.
            self.env
                .cairn(["fork", &source, &name, "--dir"])
                .arg(&dir)
                .json();
            assert_same(&snapshot(&dir), &self.known[&source], "a fork run again");
        }
        self.drop_fork(&name, &dir);
        let leftovers: Vec<_> = std::fs::read_dir(self.env.path("forks"))
            .expect("read forks")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(leftovers.is_empty(), "trial {t}: leftovers {leftovers:?}");
        out.killed && reported.is_none()
    }

    /// Forgets a forked machine and deletes its directory, so trials stay small.
    fn drop_fork(&self, name: &str, dir: &Path) {
        self.env.cairn(["machine", "rm", name]).json();
        std::fs::remove_dir_all(dir).expect("remove fork dir");
    }

    /// After every trial: restore one random checkpoint and compare it exactly.
    fn verify_random(&mut self, t: u64) {
        let ids: Vec<String> = self.known.keys().cloned().collect();
        let id = self.rng.pick(&ids).clone();
        self.restore_and_compare(&id, t);
    }

    fn restore_and_compare(&mut self, id: &str, t: u64) {
        let before = self.live.clone();
        let v = self.env.restore(id);
        assert!(v["completed_interrupted"].is_null(), "trial {t}: {v}");
        self.reconcile(t, Some(&before));
        let want = self.known[id].clone();
        self.expect_live(&want, t, &format!("restore of {id}"));
    }

    fn expect_live(&mut self, want: &Snapshot, t: u64, what: &str) {
        let now = snapshot(&self.dir);
        assert_same(&now, want, &format!("trial {t}: {what}"));
        self.live = now;
    }

    /// At the end: read every byte back, then restore every checkpoint and compare it.
    pub fn finish(&mut self) {
        self.check(u64::MAX, true);
        let ids: Vec<String> = self.known.keys().cloned().collect();
        for id in ids {
            self.restore_and_compare(&id, u64::MAX);
        }
        self.check(u64::MAX, true);
    }

    /// Changes a few small files and one big one, then records the new live tree.
    fn mutate(&mut self) {
        mutate_tree(&self.dir, &mut self.rng, &mut self.serial, MB, Links::ToAny);
        self.live = snapshot(&self.dir);
    }
}

/// The size unit of the harness's multi-chunk files: they hold 1 to 3 units.
pub const MB: usize = 1 << 20;

/// The harness's tree: every special kind of entry (`full/`), a few hundred small files in
/// `DIRS` directories, and three multi-chunk files of 1 to 3 `unit`s.
pub fn build_tree(dir: &Path, rng: &mut Rng, unit: usize) {
    TestDir::full(&dir.join("full"));
    for d in 0..DIRS {
        let sub = dir.join(format!("d{d:02}"));
        std::fs::create_dir_all(&sub).expect("mkdir");
        for f in 0..18 {
            let len = rng.below(12_000) as usize;
            std::fs::write(sub.join(format!("s{f:02}")), noise(len, rng.next())).expect("w");
        }
    }
    std::fs::create_dir_all(dir.join("big")).expect("mkdir");
    for (i, n) in [3, 2, 1].into_iter().enumerate() {
        let data = noise(n * unit + 12345, rng.next());
        std::fs::write(dir.join(format!("big/b{i}")), data).expect("write big");
    }
}

/// How `mutate_tree` may make hardlinks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// To any file with a single link.
    ToAny,
    /// Only to files it has just made. Through an overlay, a change to a lower file copies
    /// that one path up: a new link to a lower file shows a different inode number than the
    /// file's old path (the lower's), and a write to one path of a lower hardlink leaves the
    /// others showing the old data and a stale `nlink`. Neither is cairn's doing.
    ToNew,
}

/// Changes a few small files and one big one of a `build_tree` tree. It rewrites, removes,
/// chmods and tags only files with a single link (see `Links` for why).
pub fn mutate_tree(dir: &Path, rng: &mut Rng, serial: &mut u64, unit: usize, links: Links) {
    let files = small_files(dir);
    for _ in 0..3 + rng.below(10) {
        *serial += 1;
        let n = *serial;
        let d = dir.join(format!("d{:02}", rng.below(DIRS)));
        match rng.below(8) {
            0 | 1 => {
                let f = rng.pick(&files);
                let len = rng.below(20_000) as usize;
                std::fs::write(f, noise(len, rng.next())).expect("rewrite");
            }
            2 => std::fs::write(d.join(format!("n{n}")), noise(3000, n)).expect("add"),
            3 => {
                let _ = std::fs::remove_file(rng.pick(&files));
            }
            4 => {
                let mode = *rng.pick(&[0o600, 0o644, 0o755, 0o4755, 0o2640]);
                let f = rng.pick(&files);
                if f.exists() {
                    TestDir::new(dir).chmod(rel(dir, f), mode);
                }
            }
            5 => {
                let f = rng.pick(&files);
                if f.exists() {
                    TestDir::new(dir).xattr(rel(dir, f), "user.trial", format!("{n}").as_bytes());
                }
            }
            6 if links == Links::ToAny => {
                let f = rng.pick(&files);
                let _ = std::fs::hard_link(f, d.join(format!("l{n}")));
            }
            6 => {
                let f = d.join(format!("h{n}"));
                std::fs::write(&f, noise(2000, n)).expect("add");
                std::fs::hard_link(&f, d.join(format!("l{n}"))).expect("link");
            }
            _ => {
                let target = format!("../d00/s{:02}", rng.below(20));
                std::os::unix::fs::symlink(target, d.join(format!("y{n}"))).expect("symlink");
            }
        }
    }
    let big = dir.join(format!("big/b{}", rng.below(3)));
    match rng.below(3) {
        0 => {
            // New data in the middle of a multi-chunk file.
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&big)
                .expect("open big");
            let len = f.metadata().expect("stat").len();
            let off = rng.below(len.max(1));
            f.write_all_at(&noise(unit, rng.next()), off)
                .expect("write big");
        }
        1 => {
            let len = unit + rng.below(2 * unit as u64) as usize;
            std::fs::write(&big, noise(len, rng.next())).expect("replace big");
        }
        _ => {}
    }
}

/// Regular files under the `dNN` directories with a single link.
fn small_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in 0..DIRS {
        let sub = dir.join(format!("d{d:02}"));
        for e in std::fs::read_dir(&sub).expect("read_dir") {
            let p = e.expect("entry").path();
            let m = std::fs::symlink_metadata(&p).expect("lstat");
            if m.is_file() && m.nlink() == 1 {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn rel<'a>(root: &Path, p: &'a Path) -> &'a [u8] {
    use std::os::unix::ffi::OsStrExt;
    p.strip_prefix(root)
        .expect("inside the machine")
        .as_os_str()
        .as_bytes()
}

/// The checkpoint id a killed command printed, if it got that far: from the JSON document, or
/// from a partial one (`"id": "m@v3"` up to the kill).
pub fn reported_id(stdout: &[u8], key: &str) -> Option<String> {
    if let Ok(v) = serde_json::from_slice::<Value>(stdout) {
        return v["checkpoint"]["id"].as_str().map(str::to_owned);
    }
    let text = String::from_utf8_lossy(stdout);
    let start = text.find(key)? + key.len();
    let len = text[start..].find('"')?;
    Some(text[start..start + len].to_owned())
}

/// A known checkpoint whose tree differs from the live one, if there is any (else any).
pub fn pick_other(known: &BTreeMap<String, Snapshot>, live: &Snapshot, rng: &mut Rng) -> String {
    let others: Vec<String> = known
        .iter()
        .filter(|(_, s)| *s != live)
        .map(|(id, _)| id.clone())
        .collect();
    let ids = if others.is_empty() {
        known.keys().cloned().collect()
    } else {
        others
    };
    rng.pick(&ids).clone()
}
