//! `--json` prints exactly one document, errors included; exit codes 0/1/2; bad input gets a
//! message that says what was wrong.

use crate::util::Env;

/// A machine `web` with checkpoint v1 (named `clean`), in a fresh env.
fn web() -> Env {
    let env = Env::new();
    std::fs::create_dir_all(env.path("web/etc")).unwrap();
    std::fs::write(env.path("web/etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    std::fs::write(env.path("afile"), "x").unwrap();
    env.machine("web", &env.path("web"));
    env.cairn(["checkpoint", "create", "web", "--name", "clean"])
        .ok();
    env
}

#[test]
fn every_command_prints_one_json_document() {
    let env = web();
    let tar = env.path("web.tar");
    let docs: Vec<(Vec<&str>, &str)> = vec![
        (vec!["machine", "list"], "[0].name"),
        (vec!["machine", "show", "web"], "name"),
        (
            vec!["checkpoint", "create", "web", "-m", "two"],
            "checkpoint.id",
        ),
        (vec!["checkpoint", "list", "web"], "[1].id"),
        (vec!["checkpoint", "show", "web@latest"], "id"),
        (vec!["diff", "web@v1", "web@v2"], ""),
        (vec!["diff", "web@v1"], ""),
        (vec!["restore", "web@v1"], "target"),
        (vec!["restore", "web@v1", "--path", "/etc"], "target"),
        (vec!["fork", "web@v1", "exp", "--dir", "exp"], "target"),
        (
            vec!["export", "web@v1", "-o", tar.to_str().unwrap()],
            "bytes",
        ),
        (
            vec![
                "machine",
                "create",
                "t",
                "--from-tar",
                "web.tar",
                "--dir",
                "t",
            ],
            "checkpoint.checkpoint.id",
        ),
        (vec!["du"], "machines"),
        (vec!["checkpoint", "delete", "web@v2"], "id"),
        (vec!["gc", "--dry-run"], "packs_total"),
        (vec!["gc", "--grace", "0s"], "packs_total"),
        (vec!["check"], "findings"),
        (vec!["check", "--read-data"], "bytes_read"),
        (vec!["log", "web"], "[0].id"),
        (vec!["log", "--audit", "--limit", "3"], "[2].op"),
        (vec!["machine", "rm", "exp"], "removed"),
    ];
    for (args, field) in docs {
        let v = env.cairn(&args).json();
        let mut at = &v;
        for part in field.split('.').filter(|p| !p.is_empty()) {
            at = match part.strip_prefix('[') {
                Some(i) => &at[i.trim_end_matches(']').parse::<usize>().unwrap()],
                None => &at[part],
            };
        }
        assert!(!at.is_null(), "{args:?}: no {field} in {v}");
        if args[0] == "diff" {
            assert!(v.is_array(), "{args:?}: {v}");
        }
    }
}

#[test]
fn errors_are_one_json_document_with_exit_1_or_2() {
    let env = web();
    let home = env.home();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        // Usage errors: nothing was done.
        (vec!["bogus"], 2, "bogus"),
        (vec!["du", "--nope"], 2, "--nope"),
        (vec!["restore", "web"], 2, "invalid reference \"web\""),
        (vec!["restore", "web@"], 2, "nothing after `@`"),
        (vec!["diff", "web@v1:/../etc"], 2, ".."),
        (vec!["restore", "web@v1", "--path", "etc"], 2, "absolute"),
        (
            vec!["machine", "create", "x/y", "--dir", "web"],
            2,
            "invalid machine name",
        ),
        (
            vec!["machine", "create", "bad name", "--dir", "web"],
            2,
            "invalid machine name",
        ),
        (
            vec!["checkpoint", "create", "web", "--name", "v3"],
            2,
            "reserved",
        ),
        (
            vec!["checkpoint", "create", "web", "--name", "a b"],
            2,
            "invalid checkpoint name",
        ),
        (
            vec!["fork", "web@v1", "a/b", "--dir", "x"],
            2,
            "invalid machine name",
        ),
        (vec!["gc", "--grace", "10"], 2, "--grace"),
        (vec!["gc", "--repack-below", "2"], 2, "repack"),
        (vec!["--wait", "soon", "du"], 2, "--wait"),
        (vec!["cat", "web@v1:/etc/hosts"], 2, "--json does not apply"),
        (vec!["log"], 2, "needs a MACHINE"),
        // Operations that failed.
        (vec!["restore", "web@v99"], 1, "no checkpoint v99"),
        (vec!["restore", "web@nope"], 1, "no checkpoint nope"),
        (vec!["diff", "nosuch@v1"], 1, "no machine named \"nosuch\""),
        (vec!["checkpoint", "create", "nosuch"], 1, "nosuch"),
        (
            vec!["checkpoint", "create", "web", "--name", "clean"],
            1,
            "already has a checkpoint named clean",
        ),
        (
            vec!["machine", "create", "web", "--dir", "web"],
            1,
            "machine web already exists",
        ),
        (
            vec!["machine", "create", "x", "--dir", "missing"],
            1,
            "does not exist",
        ),
        (
            vec!["machine", "create", "x", "--dir", "afile"],
            1,
            "not a directory",
        ),
        (
            vec!["machine", "create", "x", "--dir", "web/etc"],
            1,
            "overlaps machine web",
        ),
        (
            vec!["fork", "web@v1", "web", "--dir", "y"],
            1,
            "already exists",
        ),
        (
            vec!["fork", "web@v1", "y", "--dir", "afile"],
            1,
            "not a directory",
        ),
        (vec!["restore", "web@v1:/nowhere"], 1, "does not exist"),
        (vec!["export", "web@v1:/etc/hosts/x", "-o", "x.tar"], 1, "x"),
        (vec!["machine", "rm", "nosuch"], 1, "nosuch"),
    ];
    for (args, code, needle) in cases {
        let msg = env.cairn(&args).json_error(code);
        assert!(
            msg.contains(needle),
            "{args:?}: {msg:?} does not say {needle:?}"
        );
    }
    let msg = env
        .cairn(["machine", "create", "x", "--dir"])
        .arg(home.join("store"))
        .json_error(1);
    assert!(msg.contains("inside the cairn home"), "{msg}");
    // Without --json the message is on stderr and stdout stays empty.
    let run = env.cairn(["restore", "web@v99"]).code(1);
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr
            .starts_with("error: machine web has no checkpoint v99"),
        "{}",
        run.stderr
    );
    let run = env.cairn(["restore", "web"]).code(2);
    assert!(run.stderr.contains("--help"), "{}", run.stderr);
}

#[test]
fn nothing_is_written_by_a_failed_command() {
    let env = web();
    let before = env.cairn(["checkpoint", "list", "web"]).json();
    env.cairn(["checkpoint", "create", "web", "--name", "clean"])
        .code(1);
    env.cairn(["checkpoint", "create", "web", "--name", "v9"])
        .code(2);
    env.cairn(["restore", "web@v5"]).code(1);
    assert_eq!(env.cairn(["checkpoint", "list", "web"]).json(), before);
    assert!(!env.path("x").exists() && !env.path("y").exists());
    env.cairn(["fork", "web@v1", "web", "--dir", "y"]).code(1);
    assert!(
        !env.path("y").exists(),
        "a refused fork leaves no directory"
    );
}

#[test]
fn help_and_version_exit_0() {
    let env = Env::new();
    let out = env.cairn(["--help"]).ok().stdout();
    assert!(out.contains("cairn machine create web"), "{out}");
    let out = env.cairn(["--version"]).ok().stdout();
    assert!(out.starts_with("cairn "), "{out}");
    let run = env.cairn(Vec::<&str>::new()).code(2);
    assert!(run.stderr.contains("Usage"), "{}", run.stderr);
    let v = env.cairn(["machine", "list"]).json();
    assert_eq!(v, serde_json::json!([]));
}

#[test]
fn json_usage_errors_name_the_missing_argument() {
    let env = Env::new();
    let msg = env.cairn(["machine", "create", "x"]).json_error(2);
    assert_eq!(
        msg,
        "the following required arguments were not provided: --dir <DIR>"
    );
    let msg = env.cairn(["export", "web@v1"]).json_error(2);
    assert!(msg.ends_with("--output <FILE>"), "{msg}");
}
