//! A damaged store or catalog is found, named, and (the catalog) rebuilt.

use crate::util::{Env, assert_same, noise, snapshot};
use serde_json::Value;
use std::path::PathBuf;

/// Machine `web` with v1 (a multi-chunk file and a small one) and v2 (one more file).
fn web() -> Env {
    let env = Env::new();
    let dir = env.path("web");
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("etc/big"), noise(600_000, 1)).unwrap();
    std::fs::write(dir.join("etc/motd"), "hello\n").unwrap();
    env.machine("web", &dir);
    env.checkpoint("web");
    std::fs::write(dir.join("etc/more"), noise(5000, 2)).unwrap();
    env.checkpoint("web");
    env
}

fn packs(env: &Env) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(env.home().join("store/packs")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.metadata().unwrap().len()));
    out
}

#[test]
fn a_flipped_byte_in_a_pack_is_named_with_its_checkpoints() {
    let env = web();
    let biggest = packs(&env).remove(0);
    let mut bytes = std::fs::read(&biggest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&biggest, bytes).unwrap();
    let pack_id = biggest.file_stem().unwrap().to_str().unwrap().to_owned();

    let run = env.cairn(["check", "--read-data", "--json"]).code(1);
    let v = run.json();
    let findings = v["findings"].as_array().unwrap();
    assert!(!findings.is_empty(), "{v}");
    let all = serde_json::to_string(findings).unwrap();
    assert!(all.contains(&pack_id[..12]), "the pack is named: {all}");
    for f in findings {
        assert_eq!(
            f["checkpoints"],
            serde_json::json!(["web@v1", "web@v2"]),
            "{f}"
        );
    }
    assert!(all.contains("/etc/big"), "the damaged path is named: {all}");

    let run = env.cairn(["check", "--read-data"]).code(1);
    assert!(
        run.stdout().contains("checkpoints: web@v1, web@v2"),
        "{}",
        run.stdout()
    );
    assert!(
        run.stderr.contains("cannot be restored exactly"),
        "{}",
        run.stderr
    );
    // Reading the damaged data refuses instead of writing wrong bytes.
    let run = env.cairn(["cat", "web@v1:/etc/big"]).code(1);
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
}

/// Regression: the CLI had no `check --repair`, and `check` on a damaged catalog failed with
/// an error instead of reporting the damage and the checkpoints it hides.
#[test]
fn truncated_catalog_is_reported_by_check_and_rebuilt_by_check_repair() {
    let env = web();
    env.restore("web@v1");
    let want_v1 = snapshot(&env.path("web"));
    env.restore("web@v2");
    // gc folds the WAL into the main file, so every commit is in the file damaged below (a
    // commit still in the WAL would read fine from there).
    env.cairn(["gc"]).ok();
    let wal = env.home().join("catalog.db-wal");
    assert!(
        wal.metadata().map_or(0, |m| m.len()) == 0,
        "gc left the WAL empty"
    );
    let db = env.home().join("catalog.db");
    let len = db.metadata().unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(len / 3)
        .unwrap();

    let v = env.cairn(["check", "--json"]).code(1).json();
    let f = &v["findings"][0];
    assert_eq!(f["object"], "catalog", "{v}");
    assert_eq!(
        f["checkpoints"],
        serde_json::json!(["web@v1", "web@v2"]),
        "{v}"
    );
    let problem = f["problem"].as_str().unwrap();
    assert_eq!(
        problem.matches("--repair").count(),
        1,
        "said once: {problem}"
    );
    let run = env.cairn(["check"]).code(1);
    assert!(
        run.stderr.contains("cairn check --repair"),
        "{}",
        run.stderr
    );
    // Other commands say what to do.
    let msg = env.cairn(["checkpoint", "list", "web"]).json_error(1);
    assert!(msg.contains("cairn check --repair"), "{msg}");

    let v = env.cairn(["check", "--repair", "--json"]).ok().json();
    assert_eq!(v["findings"], serde_json::json!([]), "{v}");
    assert_eq!(v["rebuild"]["checkpoints"], 2, "{v}");
    let aside = PathBuf::from(v["rebuild"]["moved_aside"].as_str().unwrap());
    assert!(aside.exists(), "the damaged catalog is kept");
    env.cairn(["check", "--read-data"]).ok();

    // A second repair has nothing to do.
    let v = env.cairn(["check", "--repair", "--json"]).ok().json();
    assert_eq!(v["rebuild"], Value::Null, "{v}");

    // Everything works again, and versions continue after the rebuilt ones.
    std::fs::write(env.path("web/etc/new"), "x").unwrap();
    let v = env.cairn(["restore", "web@v1"]).json();
    assert_eq!(v["undo"], "web@v3", "{v}");
    assert_same(
        &snapshot(&env.path("web")),
        &want_v1,
        "restore after a rebuild",
    );
    let audit = env.cairn(["log", "--audit"]).json();
    assert!(audit.to_string().contains("catalog-rebuild"), "{audit}");
}

#[test]
fn a_missing_pack_is_named_by_check_without_reading_data() {
    let env = web();
    let victim = packs(&env).remove(0);
    std::fs::remove_file(&victim).unwrap();
    let v = env.cairn(["check", "--json"]).code(1).json();
    let all = v["findings"].to_string();
    assert!(all.contains("web@v1") && all.contains("web@v2"), "{v}");
}

/// Regression: a pack whose bytes changed had every blob in it reported as damaged, so intact
/// files packed beside the damaged one were named as unrestorable too.
#[test]
fn a_flipped_byte_blames_only_the_blob_it_hit() {
    let env = web();
    let flip = |at: fn(usize) -> usize| {
        let pack = packs(&env).remove(0);
        let mut bytes = std::fs::read(&pack).unwrap();
        let i = at(bytes.len());
        bytes[i] ^= 0x40;
        std::fs::write(&pack, bytes).unwrap();
    };
    // In the middle of the pack: inside the data of /etc/big, packed with /etc/motd.
    flip(|len| len / 2);
    let v = env.cairn(["check", "--read-data", "--json"]).code(1).json();
    let paths: Vec<String> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["paths"].as_array().unwrap().clone())
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    assert!(paths.contains(&"/etc/big".to_owned()), "{v}");
    assert!(
        !paths.contains(&"/etc/motd".to_owned()),
        "motd is intact: {v}"
    );
    assert_eq!(
        env.cairn(["cat", "web@v1:/etc/motd"]).ok().stdout,
        b"hello\n"
    );

    // In the salt of the header: no blob is hit, yet the pack is named.
    flip(|len| len / 2);
    flip(|_| 10);
    let v = env.cairn(["check", "--read-data", "--json"]).code(1).json();
    let findings = v["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{v}");
    assert!(
        findings[0]["object"].as_str().unwrap().starts_with("pack "),
        "{v}"
    );
    assert_eq!(findings[0]["checkpoints"], serde_json::json!([]), "{v}");
    env.cairn(["restore", "web@v1"]).json();
}
