//! Crash trials of a mounted machine run without root (see `tests/rootless.rs`): a checkpoint
//! or restore of `box`, run as `nobody`, is SIGKILLed at a random instant, or the overlay's
//! holder or the view server is, or the command and one of them. After each trial:
//!
//! - `machine up` recovers the machine and `cairn check` passes;
//! - the machine shows either the state before the command or the restore's target;
//! - every checkpoint that exists holds the marker it was made with, and none is lost.
//!
//! The machine's state is told apart by a marker file, `/etc/marker`, written through
//! `cairn run` before each checkpoint together with some churn of other files.

use crate::rootless::{as_nobody, nobody_box, sh_in_box};
use crate::util::{Env, tree::Rng};
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

const BOX: &str = "box";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Command,
    Holder,
    Server,
    CommandAndHolder,
}

#[derive(Default, Debug)]
pub struct Stats {
    pub trials: u64,
    pub killed: u64,
    /// Trials in which a kill hit something: the command, or a holder or server that was there.
    pub landed: u64,
    holder_kills: u64,
    server_kills: u64,
    unreported_commits: u64,
    completed_restores: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

pub struct RootlessWorld {
    env: Env,
    rng: Rng,
    /// Every checkpoint of `box` → its marker.
    known: BTreeMap<String, String>,
    /// The marker the machine shows now.
    live: String,
    est: BTreeMap<&'static str, Duration>,
    serial: u64,
    stats: Stats,
}

impl RootlessWorld {
    pub fn new(seed: u64) -> RootlessWorld {
        let (env, _at) = nobody_box();
        let mut w = RootlessWorld {
            env,
            rng: Rng::new(seed),
            known: BTreeMap::new(),
            live: String::new(),
            est: BTreeMap::new(),
            serial: 0,
            stats: Stats::default(),
        };
        as_nobody(&w.env, ["machine", "up", BOX]).ok();
        w.live = w.marker();
        w.known.insert(format!("{BOX}@v1"), w.live.clone());
        // Calibration: each command once, unkilled.
        w.mutate();
        let t = Instant::now();
        let c = as_nobody(&w.env, ["checkpoint", "create", BOX]).json();
        w.est.insert("checkpoint", t.elapsed());
        w.known.insert(id(&c), w.live.clone());
        let t = Instant::now();
        let r = as_nobody(&w.env, ["restore", "box@v1"]).json();
        w.est.insert("restore", t.elapsed());
        w.adopt_new(&[("undo", w.live.clone())], &r.to_string());
        w.live = w.known["box@v1"].clone();
        assert_eq!(w.marker(), w.live, "calibration restore");
        eprintln!("measured durations (rootless): {:?}", w.est);
        w
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// What `/etc/marker` says in the machine now (`none` before the first write).
    fn marker(&self) -> String {
        let run = sh_in_box(&self.env, "cat /etc/marker 2>/dev/null || echo none").ok();
        run.stdout().trim().to_owned()
    }

    /// A new marker and some churn around it.
    fn mutate(&mut self) {
        self.serial += 1;
        let n = self.serial;
        let script = format!(
            "echo m{n} > /etc/marker && mkdir -p /d{n} && echo {n} > /d{n}/f && \
             rm -rf /d{} /etc/hostname",
            n.saturating_sub(2)
        );
        sh_in_box(&self.env, &script).ok();
        self.live = format!("m{n}");
    }

    pub fn trial(&mut self, t: u64) {
        let restore = self.rng.chance(50);
        let victim = *self.rng.pick(&[
            Victim::Command,
            Victim::Holder,
            Victim::Server,
            Victim::CommandAndHolder,
        ]);
        let before = self.live.clone();
        let (op, args, target) = if restore {
            let ids: Vec<String> = self.known.keys().cloned().collect();
            let id = self.rng.pick(&ids).clone();
            let marker = self.known[&id].clone();
            ("restore", vec!["restore".to_owned(), id], Some(marker))
        } else {
            self.mutate();
            (
                "checkpoint",
                vec!["checkpoint".to_owned(), "create".to_owned(), BOX.to_owned()],
                None,
            )
        };
        let (killed, hit) = self.run_killed(op, &args, victim, t);
        self.stats.trials += 1;
        self.stats.killed += u64::from(killed);
        self.stats.landed += u64::from(killed || hit);

        // Recovery: up (it completes an interrupted restore), then a clean check.
        let up = as_nobody(&self.env, ["machine", "up", BOX, "--json"]).run();
        assert_eq!(
            up.code,
            Some(0),
            "trial {t}: machine up after {op} ({victim:?}) failed: {}",
            up.stderr
        );
        as_nobody(&self.env, ["check"]).ok();

        let now = self.marker();
        match &target {
            Some(target) => {
                assert!(
                    now == before || &now == target,
                    "trial {t}: after a restore to {target} ({victim:?}) the machine shows \
                     {now}, neither {before} nor the target"
                );
                if &now == target && now != before {
                    self.stats.completed_restores += u64::from(killed);
                }
                // An undo point holds the state before.
                self.adopt_new(&[("undo", before.clone())], &format!("trial {t}"));
            }
            None => {
                assert_eq!(
                    now, self.live,
                    "trial {t}: a checkpoint ({victim:?}) changed the machine"
                );
                let live = self.live.clone();
                if self.adopt_new(&[("checkpoint", live)], &format!("trial {t}")) > 0 && killed {
                    self.stats.unreported_commits += 1;
                }
            }
        }
        self.live = now;
    }

    /// Adds the checkpoints of `box` not known yet, each of which must hold one of `expect`'s
    /// markers; fails if a known one is gone. Returns how many were new.
    fn adopt_new(&mut self, expect: &[(&str, String)], what: &str) -> usize {
        let list = as_nobody(&self.env, ["checkpoint", "list", BOX]).json();
        let ids: Vec<String> = list
            .as_array()
            .expect("list")
            .iter()
            .map(|c| c["id"].as_str().expect("id").to_owned())
            .collect();
        for k in self.known.keys() {
            assert!(ids.contains(k), "{what}: checkpoint {k} was lost: {ids:?}");
        }
        let mut new = 0;
        for id in ids {
            if self.known.contains_key(&id) {
                continue;
            }
            let cat = as_nobody(&self.env, ["cat", &format!("{id}:/etc/marker")]).run();
            let marker = if cat.code == Some(0) {
                cat.stdout().trim().to_owned()
            } else {
                "none".to_owned()
            };
            assert!(
                expect.iter().any(|(_, m)| *m == marker),
                "{what}: new checkpoint {id} holds {marker}, expected one of {expect:?}"
            );
            self.known.insert(id, marker);
            new += 1;
        }
        new
    }

    /// Runs `args` as nobody and kills the victim at a random instant: whether the command
    /// itself was killed, and whether a holder or server was there to kill while it ran.
    fn run_killed(
        &mut self,
        op: &'static str,
        args: &[String],
        victim: Victim,
        t: u64,
    ) -> (bool, bool) {
        let est = self.est[op];
        let mut instant = || est.mul_f64(1.2 * self.rng.below(1_000_000) as f64 / 1e6);
        let cmd_at =
            matches!(victim, Victim::Command | Victim::CommandAndHolder).then(&mut instant);
        let other_at = (victim != Victim::Command).then(&mut instant);
        let mut cmd = as_nobody(&self.env, []);
        for a in args {
            cmd.arg(a);
        }
        let home = self.env.home();
        let mut hits = (0, 0);
        let super::Killed {
            run,
            elapsed,
            killed,
            other: hit,
        } = super::run_and_kill(
            cmd,
            cmd_at,
            other_at,
            || kill_other(&home, victim, &mut hits),
            &(t, args),
        );
        self.stats.holder_kills += hits.0;
        self.stats.server_kills += hits.1;
        if killed {
            // A helper it ran in the machine's namespace dies with it instead of finishing
            // alone beside the next command.
            let left = crate::util::namespace_helpers_after(&home, Duration::from_millis(500));
            assert!(
                left.is_empty(),
                "trial {t}: {args:?} was killed, its helpers {left:?} still run"
            );
        }
        eprintln!(
            "trial {t}: rootless {op} {args:?} {} after {elapsed:.2?} (victim {victim:?}, \
             command at {cmd_at:.2?}, other at {other_at:.2?})",
            if killed { "killed" } else { "finished" }
        );
        if !killed && run.code != Some(0) {
            // Its holder or server was killed under it: it must say what stopped and how to
            // recover, which the trial then does.
            let e = &run.stderr;
            assert!(
                victim != Victim::Command && e.contains("cairn machine up"),
                "trial {t}: {args:?} failed ({victim:?}) without saying how to recover: {e}"
            );
        } else if !killed {
            let e = self.est.get_mut(op).expect("calibrated");
            super::learn(e, elapsed);
        }
        (killed, hit)
    }

    /// At the end: every checkpoint restores to its marker, and the store reads back whole.
    pub fn finish(&mut self) {
        let ids: Vec<String> = self.known.keys().cloned().collect();
        for id in ids {
            as_nobody(&self.env, ["restore", &id]).ok();
            assert_eq!(self.marker(), self.known[&id], "final restore of {id}");
            let live = self.known[&id].clone();
            self.live = live;
        }
        as_nobody(&self.env, ["machine", "down", BOX]).ok();
        as_nobody(&self.env, ["check", "--read-data"]).ok();
    }
}

fn id(v: &serde_json::Value) -> String {
    crate::util::id_of(v)
}

/// SIGKILLs the holder or the view server of `box` in `home`, counting each kill in `hits`
/// (holders, servers); true if there was one.
fn kill_other(home: &std::path::Path, victim: Victim, hits: &mut (u64, u64)) -> bool {
    if victim == Victim::Server {
        let hit = super::mounted::kill_servers(home);
        hits.1 += u64::from(hit);
        return hit;
    }
    let Some(pid) = crate::rootless::holder_pid_in(home) else {
        return false;
    };
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
    hits.0 += 1;
    true
}
