//! Tests of argument validation: what each command line turns into, and what it refuses.
use super::*;
use clap::Parser;
use std::collections::HashMap;

#[derive(Default)]
struct FakeEnv {
    vars: HashMap<&'static str, &'static str>,
    passwd: Option<&'static str>,
}

impl Env for FakeEnv {
    fn var(&self, name: &str) -> Option<OsString> {
        self.vars.get(name).map(OsString::from)
    }
    fn uid(&self) -> u32 {
        1234
    }
    fn passwd_name(&self, uid: u32) -> Option<String> {
        assert_eq!(uid, 1234);
        self.passwd.map(str::to_owned)
    }
}

fn env(vars: &[(&'static str, &'static str)]) -> FakeEnv {
    FakeEnv {
        vars: vars.iter().copied().collect(),
        passwd: None,
    }
}

fn config(argv: &[&str]) -> Result<Config> {
    let mut full = vec!["cairn"];
    full.extend_from_slice(argv);
    let cli = Cli::try_parse_from(full).expect("clap accepts it");
    Config::from_cli(cli, &env(&[("HOME", "/home/ann"), ("USER", "ann")]))
}

#[test]
fn author_falls_back_in_order() {
    let e = env(&[("USER", "ann"), ("LOGNAME", "bob")]);
    assert_eq!(resolve_author(Some(" carl "), &e).unwrap(), "carl");
    assert_eq!(resolve_author(None, &e).unwrap(), "ann");
    assert_eq!(
        resolve_author(None, &env(&[("USER", ""), ("LOGNAME", "bob")])).unwrap(),
        "bob"
    );
    let mut e = env(&[]);
    e.passwd = Some("dora");
    assert_eq!(resolve_author(None, &e).unwrap(), "dora");
    assert_eq!(resolve_author(None, &env(&[])).unwrap(), "uid 1234");
    assert!(resolve_author(Some(""), &env(&[])).is_err());
    assert!(resolve_author(Some("a\nb"), &env(&[])).is_err());
}

#[test]
fn passwd_lookup_of_root_works() {
    assert_eq!(passwd_name(0).as_deref(), Some("root"));
}

#[test]
fn home_defaults() {
    let h = default_home(&env(&[("XDG_DATA_HOME", "/x/data"), ("HOME", "/home/ann")])).unwrap();
    assert_eq!(h, PathBuf::from("/x/data/cairn"));
    let h = default_home(&env(&[("XDG_DATA_HOME", "rel"), ("HOME", "/home/ann")])).unwrap();
    assert_eq!(h, PathBuf::from("/home/ann/.local/share/cairn"));
    assert!(default_home(&env(&[])).is_err());
}

#[test]
fn sizes() {
    assert_eq!(parse_size("0").unwrap(), 0);
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert_eq!(parse_size("500M").unwrap(), 500 << 20);
    assert_eq!(parse_size("2G").unwrap(), 2 << 30);
    assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
    assert_eq!(parse_size("1.5k").unwrap(), 1536);
    assert_eq!(parse_size(" 1T ").unwrap(), 1 << 40);
    for bad in ["", "G", "-1G", "2X", "lots", "1e30T", "2 GB extra"] {
        assert!(parse_size(bad).is_err(), "{bad}");
    }
    let Command::Gc(opts) = config(&["gc"]).unwrap().command else {
        panic!("gc parses to gc")
    };
    assert_eq!(opts.images_max, cairn_core::DEFAULT_IMAGES_MAX);
    let e = config(&["gc", "--images-max", "big"]).unwrap_err();
    assert!(e.0.contains("--images-max"), "{}", e.0);
}

#[test]
fn durations() {
    assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
    for bad in ["", "10", "m", "1x", "1.5h", "-1s", "99999999999999999999d"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    assert_eq!(parse_wait("30").unwrap(), Duration::from_secs(30));
    assert_eq!(parse_wait("0.5").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_wait("2m").unwrap(), Duration::from_secs(120));
    assert!(parse_wait("-1").is_err());
    assert!(parse_wait("soon").is_err());
}

#[test]
fn global_options_become_repo_options() {
    let c = config(&["du", "--wait", "5", "--author", "eve", "--home", "/h"]).unwrap();
    assert_eq!(c.repo.home, PathBuf::from("/h"));
    assert_eq!(c.repo.author, "eve");
    assert_eq!(c.repo.lock_wait, Duration::from_secs(5));
    let c = config(&["du"]).unwrap();
    assert_eq!(c.repo.home, PathBuf::from("/home/ann/.local/share/cairn"));
    assert_eq!(c.repo.author, "ann");
    assert_eq!(c.repo.lock_wait, Duration::from_secs(30));
}

#[test]
fn refs_and_names_are_validated_before_work() {
    for argv in [
        &["diff", "web"][..],
        &["checkpoint", "show", "web@v1:/etc"],
        &["checkpoint", "create", "we b"],
        &["checkpoint", "create", "web", "--name", "v3"],
        &["machine", "show", "a/b"],
        &["fork", "web@v1", "bad name", "--dir", "/x"],
        &["cat", "web@v1"],
        &["cat", "web@v1:/"],
        &["cat", "web@v1:/etc", "--json"],
        &["export", "web@v1", "-o", "-", "--json"],
        &["restore", "web@v1:/etc", "--path", "/usr"],
        &["restore", "web@v1", "--path", "/../etc"],
        &["restore", "web@v1", "--path", "etc"],
        &["gc", "--grace", "10"],
        &["gc", "--repack-below", "2"],
        &["log"],
    ] {
        assert!(config(argv).is_err(), "{argv:?}");
    }
}

#[test]
fn restore_path_joins_the_reference() {
    let c = config(&["restore", "web@clean", "--path", "/etc//nginx"]).unwrap();
    let Command::Restore { target, opts } = c.command else {
        panic!("not a restore")
    };
    let want = Some(vec![b"etc".to_vec(), b"nginx".to_vec()]);
    assert_eq!(target.to_string(), "web@clean:/etc/nginx");
    assert_eq!(opts.path, want);
}

#[test]
fn refs_may_hold_paths_that_are_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let r = parse_ref(OsStr::from_bytes(b"web@v1:/tmp/\xff\xfe")).unwrap();
    assert_eq!(r.path, Some(vec![b"tmp".to_vec(), b"\xff\xfe".to_vec()]));
}

#[test]
fn log_is_checkpoint_list_or_audit() {
    let c = config(&["log", "web", "--limit", "2"]).unwrap();
    assert!(matches!(
        c.command,
        Command::CheckpointList { limit: Some(2), .. }
    ));
    let c = config(&["log", "--audit"]).unwrap();
    assert!(matches!(
        c.command,
        Command::AuditLog {
            machine: None,
            limit: None
        }
    ));
}

#[test]
fn gc_options() {
    let c = config(&["gc", "--grace", "0s", "--dry-run"]).unwrap();
    let Command::Gc(g) = c.command else {
        panic!("not gc")
    };
    assert_eq!(g.grace, Duration::ZERO);
    assert!(g.dry_run);
    assert_eq!(g.repack_below, 0.5);
}
