//! Concurrency between `Repo`s on one home, and the audit log.

use super::fixture::{TestDir, noise};
use super::*;
use std::sync::mpsc;
use std::sync::{Barrier, Mutex};

/// Progress that, at its first phase, says so and then waits to be released: it holds an
/// operation inside its machine lock for as long as a test needs.
struct Gate {
    entered: Mutex<Option<mpsc::Sender<()>>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl Progress for Gate {
    fn phase(&self, _: &str, _: Option<u64>) {
        if let Some(tx) = self.entered.lock().unwrap().take() {
            tx.send(()).unwrap();
            let _ = self.release.lock().unwrap().recv();
        }
    }
    fn advance(&self, _: u64) {}
}

fn gate() -> (Gate, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let g = Gate {
        entered: Mutex::new(Some(entered_tx)),
        release: Mutex::new(release_rx),
    };
    (g, entered_rx, release_tx)
}

fn machine(env: &Env, name: &str, seed: u64) -> TestDir {
    let t = TestDir::new(&env.path(name));
    t.dir(b"d", 0o755)
        .file(b"d/f", &noise(300_000, seed), 0o644)
        .file(b"g", &noise(1000, seed + 1), 0o644);
    adopt(&env.repo, name, &t.root);
    t
}

#[test]
fn checkpoints_of_two_machines_run_in_parallel() {
    let env = Env::new();
    machine(&env, "a", 1);
    machine(&env, "b", 2);
    let home = env.home();
    let (g, entered, release) = gate();
    let barrier = &Barrier::new(2);
    let (g, home_b) = (&g, home.clone());
    std::thread::scope(|s| {
        // `a` stops inside its lock until `b` has finished: they cannot be serialized.
        let ta = s.spawn(|| {
            let repo = repo_as(&home, "alice", Duration::ZERO);
            barrier.wait();
            repo.checkpoint("a", &CheckpointOptions::default(), g)
        });
        let tb = s.spawn(move || {
            let repo = repo_as(&home_b, "bob", Duration::ZERO);
            barrier.wait();
            entered.recv().unwrap();
            let rb = repo.checkpoint("b", &CheckpointOptions::default(), &NoProgress);
            release.send(()).unwrap();
            rb
        });
        let rb = tb.join().unwrap().unwrap();
        let ra = ta.join().unwrap().unwrap();
        assert_eq!(ra.checkpoint.id, "a@v1");
        assert_eq!(rb.checkpoint.id, "b@v1");
        assert_eq!(ra.checkpoint.author, "alice");
        assert_eq!(rb.checkpoint.author, "bob");
    });
    let rep = env
        .repo
        .check(&CheckOptions { read_data: true }, &NoProgress)
        .unwrap();
    assert!(rep.ok(), "{:?}", rep.findings);
}

#[test]
fn a_busy_machine_is_locked_without_waiting_and_serialized_with_waiting() {
    let env = Env::new();
    let t = machine(&env, "web", 1);
    checkpoint(&env.repo, "web");
    let home = env.home();
    let (g, entered, release) = gate();
    std::thread::scope(|s| {
        let holder = s.spawn(|| {
            let repo = repo_as(&home, "alice", Duration::ZERO);
            repo.restore(&r("web@v1"), &RestoreOptions::default(), &g)
        });
        entered.recv().unwrap();
        let impatient = repo_as(&home, "bob", Duration::ZERO);
        let err = impatient
            .checkpoint("web", &CheckpointOptions::default(), &NoProgress)
            .unwrap_err();
        match &err {
            EngineError::Locked { machine, holder } => {
                assert_eq!(machine, "web");
                assert!(holder.contains("restore"), "holder not named: {holder}");
                assert!(
                    holder.contains(&std::process::id().to_string()),
                    "holder pid not named: {holder}"
                );
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        assert!(err.to_string().contains("busy"), "{err}");
        // A patient caller waits for the holder and then succeeds.
        let patient = s.spawn(|| {
            let repo = repo_as(&home, "carol", Duration::from_secs(30));
            repo.checkpoint("web", &CheckpointOptions::default(), &NoProgress)
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !patient.is_finished(),
            "the waiter did not wait for the lock"
        );
        release.send(()).unwrap();
        holder.join().unwrap().unwrap();
        let rep = patient.join().unwrap().unwrap();
        assert!(rep.unchanged, "it ran after the restore: {rep:?}");
    });
    // The failed attempt is in the audit log as an error, by its author.
    let log = env.repo.audit_log(Some("web"), None).unwrap();
    assert!(
        log.iter()
            .any(|a| a.author == "bob" && a.op == "create" && a.outcome == "error"),
        "{log:?}"
    );
    drop(t);
}

#[test]
fn audit_log_records_every_operation_with_author_and_outcome() {
    let env = Env::new();
    let t = machine(&env, "web", 1);
    checkpoint(&env.repo, "web");
    t.file(b"g", b"changed", 0o644);
    checkpoint(&env.repo, "web");
    restore(&env.repo, "web@v1");
    fork(&env.repo, "web@v1", "copy", &env.path("copy"));
    env.repo.checkpoint_delete(&r("web@v2")).unwrap();
    env.repo
        .gc(
            &GcOptions {
                images_max: crate::engine::DEFAULT_IMAGES_MAX,
                grace: Duration::ZERO,
                repack_below: 0.0,
                dry_run: false,
            },
            &NoProgress,
        )
        .unwrap();
    assert!(env.repo.checkpoint_delete(&r("web@v99")).is_err());

    let log = env.repo.audit_log(None, None).unwrap();
    let has = |op: &str, machine: Option<&str>, outcome: &str| {
        log.iter().any(|a| {
            a.op == op
                && a.machine.as_deref() == machine
                && a.outcome == outcome
                && a.author == "tester"
        })
    };
    for (op, machine) in [
        ("machine-create", Some("web")),
        ("create", Some("web")),
        ("restore", Some("web")),
        ("fork", Some("copy")),
        ("delete", Some("web")),
        ("gc", None),
    ] {
        assert!(has(op, machine, "ok"), "{op} missing: {log:#?}");
    }
    assert!(has("delete", Some("web"), "error"), "{log:#?}");
    let failed = log.iter().find(|a| a.outcome == "error").unwrap();
    assert!(failed.detail.contains("v99"), "{failed:?}");
    assert!(
        log.windows(2).all(|w| w[0].time <= w[1].time),
        "oldest first"
    );
    // Filtering by machine keeps only that machine's rows.
    let copy = env.repo.audit_log(Some("copy"), None).unwrap();
    assert!(!copy.is_empty() && copy.iter().all(|a| a.machine.as_deref() == Some("copy")));
}
