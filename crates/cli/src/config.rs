//! Turns the raw command line into validated engine options. Everything that can be wrong with
//! the arguments is found here, before the repository is opened, and reported as a
//! [`UsageError`] (exit status 2, nothing done).

use crate::args::{CheckpointCmd, Cli, Cmd, Deferred, GlobalArgs, MachineCmd};
use cairn_core::{
    Bind, CheckOptions, CheckpointOptions, CreateMachineOptions, CreateMountedOptions, ForkOptions,
    GcOptions, LowerServer, Ref, RepoOptions, RestoreOptions, RunSpec, validate_checkpoint_name,
    validate_machine_name,
};
use std::ffi::{CStr, OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The command line was wrong; nothing was done.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

type Result<T, E = UsageError> = std::result::Result<T, E>;

fn usage<T>(msg: impl Into<String>) -> Result<T> {
    Err(UsageError(msg.into()))
}

/// How results are shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputMode {
    /// One JSON document on stdout, nothing else there.
    pub json: bool,
    /// No progress, summaries or hints.
    pub quiet: bool,
}

/// A validated command line.
#[derive(Debug)]
pub struct Config {
    pub output: OutputMode,
    pub repo: RepoOptions,
    pub command: Command,
}

/// Where `export` writes its archive.
#[derive(Debug, PartialEq, Eq)]
pub enum ExportTarget {
    Stdout,
    File(PathBuf),
}

/// How `mount` runs its server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Background {
    /// Serve in this process until stopped.
    No,
    /// Start a background server and return once it is live.
    Start,
    /// This process is that background server.
    Serve,
}

/// One validated command, holding the engine options it runs with.
#[derive(Debug)]
pub enum Command {
    MachineCreate(CreateMachineOptions),
    MachineCreateMounted(CreateMountedOptions),
    MachineUp(String),
    MachineDown(String),
    /// The detached server of a mounted machine's lower layer.
    ServeLower(String),
    /// The detached holder of a mounted machine's overlay, without root.
    HoldOverlay(String),
    /// A rootless checkpoint's reader of the upper layer, in a user namespace.
    IngestUpper {
        name: String,
        dry: bool,
    },
    /// A rootless sweep of a machine's state, in a user namespace.
    SweepState {
        uid: String,
        all: bool,
    },
    MachineList,
    MachineShow(String),
    MachineRemove(String),
    CheckpointCreate {
        machine: String,
        opts: CheckpointOptions,
    },
    /// `checkpoint list` and `log MACHINE`; `limit` keeps the newest N.
    CheckpointList {
        machine: String,
        limit: Option<u64>,
    },
    CheckpointShow(Ref),
    CheckpointDelete(Ref),
    Diff {
        from: Ref,
        to: Option<Ref>,
    },
    Restore {
        target: Ref,
        opts: RestoreOptions,
    },
    Fork {
        source: Ref,
        opts: ForkOptions,
    },
    ForkMounted {
        source: Ref,
        names: Vec<String>,
    },
    Run {
        machine: String,
        spec: RunSpec,
    },
    Cat(Ref),
    Export {
        source: Ref,
        output: ExportTarget,
    },
    Mount {
        source: Ref,
        mountpoint: PathBuf,
        background: Background,
    },
    Umount {
        mountpoint: PathBuf,
        lazy: bool,
    },
    Du,
    Gc(GcOptions),
    Check {
        opts: CheckOptions,
        /// Rebuild a damaged catalog first.
        repair: bool,
    },
    AuditLog {
        machine: Option<String>,
        limit: Option<u64>,
    },
}

/// Reads the process environment; tests pass their own.
pub trait Env {
    fn var(&self, name: &str) -> Option<OsString>;
    fn uid(&self) -> u32;
    /// The login name of `uid` from the user database.
    fn passwd_name(&self, uid: u32) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }

    fn uid(&self) -> u32 {
        // SAFETY: getuid has no preconditions and cannot fail.
        unsafe { libc::getuid() }
    }

    fn passwd_name(&self, uid: u32) -> Option<String> {
        passwd_name(uid)
    }
}

impl Config {
    pub fn from_cli(cli: Cli, env: &dyn Env) -> Result<Config> {
        let output = OutputMode {
            json: cli.global.json,
            quiet: cli.global.quiet,
        };
        let command = command(cli.command, output)?;
        let repo = repo_options(&cli.global, env)?;
        Ok(Config {
            output,
            repo,
            command,
        })
    }
}

fn repo_options(g: &GlobalArgs, env: &dyn Env) -> Result<RepoOptions> {
    let home = match &g.home {
        Some(h) if h.as_os_str().is_empty() => {
            return usage(
                "--home (or CAIRN_HOME) is empty; give the directory that holds cairn's data",
            );
        }
        Some(h) => h.clone(),
        None => default_home(env)?,
    };
    // A mounted machine's lower layer is served by this same binary, detached.
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("cairn"));
    let lower_server = LowerServer::Process(vec![
        exe.into_os_string(),
        "--home".into(),
        home.clone().into_os_string(),
    ]);
    Ok(RepoOptions {
        home,
        author: resolve_author(g.author.as_deref(), env)?,
        lock_wait: parse_wait(&g.wait)?,
        lower_server,
        lower_images: !env
            .var("CAIRN_LOWER_IMAGES")
            .is_some_and(|v| ["0", "off", "false", "no"].iter().any(|n| v == *n)),
    })
}

/// `$XDG_DATA_HOME/cairn`, else `~/.local/share/cairn`.
pub fn default_home(env: &dyn Env) -> Result<PathBuf> {
    if let Some(xdg) = env.var("XDG_DATA_HOME")
        && Path::new(&xdg).is_absolute()
    {
        return Ok(PathBuf::from(xdg).join("cairn"));
    }
    match env.var("HOME") {
        Some(h) if Path::new(&h).is_absolute() => Ok(PathBuf::from(h).join(".local/share/cairn")),
        _ => usage(
            "cannot tell where to keep cairn's data: neither XDG_DATA_HOME nor HOME is set to an \
             absolute path; pass --home DIR or set CAIRN_HOME",
        ),
    }
}

/// `--author`/`CAIRN_AUTHOR`, else `$USER`, `$LOGNAME`, the user database's name for the uid,
/// and finally `uid N`.
pub fn resolve_author(explicit: Option<&str>, env: &dyn Env) -> Result<String> {
    if let Some(a) = explicit {
        let a = a.trim();
        if a.is_empty() {
            return usage(
                "--author (or CAIRN_AUTHOR) is empty; give a name, or leave it unset to use your login name",
            );
        }
        if a.chars().any(char::is_control) {
            return usage(format!(
                "--author {a:?} contains control characters; give a plain name"
            ));
        }
        return Ok(a.to_owned());
    }
    let from_env = ["USER", "LOGNAME"].into_iter().find_map(|v| {
        env.var(v)
            .and_then(|s| s.into_string().ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty() && !s.chars().any(char::is_control))
    });
    let uid = env.uid();
    Ok(from_env
        .or_else(|| env.passwd_name(uid))
        .unwrap_or_else(|| format!("uid {uid}")))
}

/// The user database's login name for `uid`, if it has one.
fn passwd_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: `passwd` is plain old data; all-zero is a valid (empty) value.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call, and `buf.len()` is the buffer's real size.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        return name
            .to_str()
            .ok()
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
    }
}

/// `--wait`: plain seconds (`30`, `0.5`) or a duration (`2m`).
pub fn parse_wait(text: &str) -> Result<Duration> {
    let bad = || {
        usage(format!(
            "--wait {text:?} is not a number of seconds; give e.g. --wait 30 or --wait 2m"
        ))
    };
    if let Ok(secs) = text.trim().parse::<f64>() {
        return match Duration::try_from_secs_f64(secs) {
            Ok(d) => Ok(d),
            Err(_) => bad(),
        };
    }
    parse_duration(text).or_else(|_| bad())
}

/// Durations like `0s`, `90s`, `10m`, `1h30m`, `2d`. A bare `0` is accepted; any other number
/// needs a unit, so that `--grace 10` cannot be misread.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let bad = |why: &str| {
        usage(format!(
            "{text:?} is not a duration ({why}); write a number with a unit s, m, h or d, e.g. 0s, 10m, 1h30m"
        ))
    };
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return bad("it is empty");
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return bad(&format!("unknown unit {c:?}")),
        };
        let Ok(n) = digits.parse::<u64>() else {
            return bad("a unit needs a number before it");
        };
        digits.clear();
        total = match n.checked_mul(unit).and_then(|x| total.checked_add(x)) {
            Some(x) => x,
            None => return bad("it is too long"),
        };
    }
    if !digits.is_empty() {
        return bad("the last number has no unit");
    }
    Ok(Duration::from_secs(total))
}

/// A size in bytes: a number, optionally with K, M, G or T (powers of 1024, `B`/`iB` allowed).
pub fn parse_size(text: &str) -> Result<u64> {
    let bad = || usage(format!("{text:?} is not a size; give e.g. 0, 500M or 2G"));
    let upper = text.trim().to_ascii_uppercase();
    let unit = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (num, shift) = match unit.char_indices().last() {
        None => return bad(),
        Some((i, c)) => match "KMGT".find(c) {
            Some(k) => (&unit[..i], 10 * (k as u32 + 1)),
            None => (unit, 0),
        },
    };
    let Ok(n) = num.trim().parse::<f64>() else {
        return bad();
    };
    if !n.is_finite() || n < 0.0 {
        return bad();
    }
    let bytes = n * (1u64 << shift) as f64;
    if bytes >= u64::MAX as f64 {
        return bad();
    }
    Ok(bytes as u64)
}

fn parse_fraction(text: &str) -> Result<f64> {
    match text.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => usage(format!(
            "--repack-below {text:?} is not a fraction between 0 and 1; e.g. --repack-below 0.5"
        )),
    }
}

/// `HOST:GUEST` or `HOST:GUEST:ro`; both absolute.
fn parse_binds(args: &[OsString]) -> Result<Vec<Bind>> {
    args.iter()
        .map(|a| {
            let bytes = a.as_encoded_bytes();
            let parts: Vec<&[u8]> = bytes.split(|&b| b == b':').collect();
            let (host, guest, read_only) = match parts.as_slice() {
                [h, g] => (h, g, false),
                [h, g, b"ro"] => (h, g, true),
                [h, g, b"rw"] => (h, g, false),
                _ => {
                    return usage(format!(
                        "--bind {:?}: give HOST:GUEST or HOST:GUEST:ro, e.g. --bind /srv/data:/data:ro",
                        a.to_string_lossy()
                    ));
                }
            };
            if !host.starts_with(b"/") || !guest.starts_with(b"/") {
                return usage(format!(
                    "--bind {:?}: both paths must be absolute",
                    a.to_string_lossy()
                ));
            }
            let path = |b: &[u8]| PathBuf::from(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b));
            Ok(Bind {
                host: path(host),
                guest: path(guest),
                read_only,
            })
        })
        .collect()
}

/// Parses a reference from the raw argument bytes, so paths that are not UTF-8 work.
pub fn parse_ref(arg: &OsStr) -> Result<Ref> {
    Ref::parse(arg.as_encoded_bytes()).map_err(|e| {
        UsageError(format!(
            "{e} (e.g. web@v2, web@clean or web@latest:/etc/hosts)"
        ))
    })
}

fn machine_name(name: String) -> Result<String> {
    validate_machine_name(&name).map_err(|e| UsageError(e.to_string()))?;
    Ok(name)
}

/// A reference for commands that act on a whole checkpoint, where `:/PATH` would be ignored.
fn whole_checkpoint(arg: &OsStr, command: &str) -> Result<Ref> {
    let r = parse_ref(arg)?;
    if r.path.is_some() {
        return usage(format!(
            "`cairn {command}` acts on a whole checkpoint; drop the :/PATH from {:?}",
            arg.to_string_lossy()
        ));
    }
    Ok(r)
}

fn command(cmd: Cmd, output: OutputMode) -> Result<Command> {
    Ok(match cmd {
        Cmd::Machine(Deferred(MachineCmd::Create {
            name,
            dir,
            from_tar,
            mounted: true,
            from,
            at,
            ..
        })) => {
            let _ = dir; // clap refuses --dir with --mounted
            Command::MachineCreateMounted(CreateMountedOptions {
                name: machine_name(name)?,
                at,
                from: from
                    .as_deref()
                    .map(|f| whole_checkpoint(f, "machine create --from"))
                    .transpose()?,
                from_tar,
            })
        }
        Cmd::Machine(Deferred(MachineCmd::Create {
            name,
            dir,
            from_tar,
            ..
        })) => Command::MachineCreate(CreateMachineOptions {
            name: machine_name(name)?,
            dir: dir.ok_or_else(|| {
                UsageError("give the machine's directory with --dir, or --mounted".to_owned())
            })?,
            from_tar,
        }),
        Cmd::Machine(Deferred(MachineCmd::Up { name })) => Command::MachineUp(machine_name(name)?),
        Cmd::Machine(Deferred(MachineCmd::Down { name })) => {
            Command::MachineDown(machine_name(name)?)
        }
        Cmd::Machine(Deferred(MachineCmd::ServeLower { name })) => {
            Command::ServeLower(machine_name(name)?)
        }
        Cmd::Machine(Deferred(MachineCmd::HoldOverlay { name })) => {
            Command::HoldOverlay(machine_name(name)?)
        }
        Cmd::Machine(Deferred(MachineCmd::IngestUpper { name, dry })) => Command::IngestUpper {
            name: machine_name(name)?,
            dry,
        },
        Cmd::Machine(Deferred(MachineCmd::SweepState { uid, all })) => {
            Command::SweepState { uid, all }
        }
        Cmd::Machine(Deferred(MachineCmd::List)) => Command::MachineList,
        Cmd::Machine(Deferred(MachineCmd::Show { name })) => {
            Command::MachineShow(machine_name(name)?)
        }
        Cmd::Machine(Deferred(MachineCmd::Rm { name })) => {
            Command::MachineRemove(machine_name(name)?)
        }
        Cmd::Checkpoint(Deferred(CheckpointCmd::Create {
            machine,
            name,
            note,
        })) => {
            if let Some(n) = &name {
                validate_checkpoint_name(n).map_err(|e| UsageError(e.to_string()))?;
            }
            Command::CheckpointCreate {
                machine: machine_name(machine)?,
                opts: CheckpointOptions {
                    name,
                    note: note.unwrap_or_default(),
                    auto: false,
                },
            }
        }
        Cmd::Checkpoint(Deferred(CheckpointCmd::List { machine })) => Command::CheckpointList {
            machine: machine_name(machine)?,
            limit: None,
        },
        Cmd::Checkpoint(Deferred(CheckpointCmd::Show { reference })) => {
            Command::CheckpointShow(whole_checkpoint(&reference, "checkpoint show")?)
        }
        Cmd::Checkpoint(Deferred(CheckpointCmd::Delete { reference })) => {
            Command::CheckpointDelete(whole_checkpoint(&reference, "checkpoint delete")?)
        }
        Cmd::Diff { from, to } => Command::Diff {
            from: parse_ref(&from)?,
            to: to.as_deref().map(parse_ref).transpose()?,
        },
        Cmd::Restore { target, path } => {
            let mut r = parse_ref(&target)?;
            if let Some(p) = path {
                if !p.as_encoded_bytes().starts_with(b"/") {
                    return usage(format!(
                        "--path {:?} must be an absolute path inside the machine, e.g. --path /etc/nginx",
                        p.to_string_lossy()
                    ));
                }
                if r.path.is_some() {
                    return usage(
                        "the path is given twice (after `:` and with --path); give it once",
                    );
                }
                // The engine's reference parser owns the rules for paths inside a machine
                // (absolute, no `..`), so --path goes through it too.
                let mut joined = target.as_encoded_bytes().to_vec();
                joined.push(b':');
                joined.extend_from_slice(p.as_encoded_bytes());
                r.path = Ref::parse(&joined)
                    .map_err(|e| UsageError(format!("--path {:?}: {e}", p.to_string_lossy())))?
                    .path;
            }
            let opts = RestoreOptions {
                path: r.path.clone(),
            };
            Command::Restore { target: r, opts }
        }
        Cmd::Fork {
            source,
            names,
            dir: Some(dir),
        } => {
            let [name] = <[String; 1]>::try_from(names).map_err(|_| {
                UsageError(
                    "--dir forks into one directory machine; give one NEW_NAME, or drop --dir \
                     to fork mounted machines"
                        .to_owned(),
                )
            })?;
            Command::Fork {
                source: whole_checkpoint(&source, "fork")?,
                opts: ForkOptions {
                    name: machine_name(name)?,
                    dir,
                },
            }
        }
        Cmd::Fork {
            source,
            names,
            dir: None,
        } => Command::ForkMounted {
            source: whole_checkpoint(&source, "fork")?,
            names: names
                .into_iter()
                .map(machine_name)
                .collect::<Result<Vec<_>>>()?,
        },
        Cmd::Run {
            machine,
            binds,
            command,
        } => Command::Run {
            machine: machine_name(machine)?,
            spec: RunSpec {
                argv: command,
                binds: parse_binds(&binds)?,
                interactive: false,
            },
        },
        Cmd::Shell { machine, binds } => Command::Run {
            machine: machine_name(machine)?,
            spec: RunSpec {
                // bash when the machine has it, else sh: resolved inside the machine.
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "if [ -x /bin/bash ]; then exec /bin/bash -l; else exec /bin/sh -l; fi".into(),
                ],
                binds: parse_binds(&binds)?,
                interactive: true,
            },
        },
        Cmd::Cat { source } => {
            if output.json {
                return usage(
                    "`cairn cat` writes the file's raw bytes to stdout; --json does not apply to it",
                );
            }
            let r = parse_ref(&source)?;
            match &r.path {
                Some(p) if !p.is_empty() => Command::Cat(r),
                _ => {
                    return usage(format!(
                        "`cairn cat` needs a file: add its path, e.g. {}:/etc/hosts",
                        Ref { path: None, ..r }
                    ));
                }
            }
        }
        Cmd::Export {
            source,
            output: out,
        } => {
            let target = if out == "-" {
                if output.json {
                    return usage(
                        "`--json` and `-o -` both want stdout; write the archive to a file with -o FILE",
                    );
                }
                ExportTarget::Stdout
            } else if out.is_empty() {
                return usage("-o needs a file name, or `-` for stdout");
            } else {
                ExportTarget::File(PathBuf::from(out))
            };
            Command::Export {
                source: parse_ref(&source)?,
                output: target,
            }
        }
        Cmd::Mount {
            source,
            mountpoint,
            background,
            serve_background,
        } => {
            if mountpoint.as_os_str().is_empty() {
                return usage("MOUNTPOINT is empty; give an existing, empty directory");
            }
            Command::Mount {
                source: parse_ref(&source)?,
                mountpoint,
                background: match (background, serve_background) {
                    (_, true) => Background::Serve,
                    (true, false) => Background::Start,
                    (false, false) => Background::No,
                },
            }
        }
        Cmd::Umount { mountpoint, lazy } => {
            if mountpoint.as_os_str().is_empty() {
                return usage("MOUNTPOINT is empty; give the directory a view is mounted on");
            }
            Command::Umount { mountpoint, lazy }
        }
        Cmd::Du => Command::Du,
        Cmd::Gc {
            grace,
            images_max,
            repack_below,
            dry_run,
        } => Command::Gc(GcOptions {
            grace: parse_duration(&grace).map_err(|e| UsageError(format!("--grace: {e}")))?,
            repack_below: parse_fraction(&repack_below)?,
            images_max: parse_size(&images_max)
                .map_err(|e| UsageError(format!("--images-max: {e}")))?,
            dry_run,
        }),
        Cmd::Check { read_data, repair } => Command::Check {
            opts: CheckOptions { read_data },
            repair,
        },
        Cmd::Log {
            audit: true,
            machine,
            limit,
        } => Command::AuditLog {
            machine: machine.map(machine_name).transpose()?,
            limit,
        },
        Cmd::Log {
            audit: false,
            machine: Some(machine),
            limit,
        } => Command::CheckpointList {
            machine: machine_name(machine)?,
            limit,
        },
        Cmd::Log {
            audit: false,
            machine: None,
            ..
        } => {
            return usage(
                "`cairn log` needs a MACHINE (to list its checkpoints) or --audit (for the audit log)",
            );
        }
    })
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
