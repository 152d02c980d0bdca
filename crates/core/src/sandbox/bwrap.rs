//! Running a command inside a machine through bubblewrap.
//!
//! The command gets its own pid, ipc, uts and mount namespaces; `/` is the machine root, `/proc`
//! a procfs of its own pid namespace and `/dev` a small tmpfs with only null, zero, full,
//! random, urandom, tty, pts and shm. `/tmp` is the machine's own. The network is the host's
//! (a machine is a development box that installs packages); an option to unshare it can come
//! later. Nothing else of the host is mounted: the only other host paths inside are the
//! caller's explicit binds.
//!
//! The command runs as root of the host (there is no user namespace, so files it creates get
//! real ownership in the machine) but keeps only the capabilities a root inside a container
//! needs, see `KEPT_CAPS`. bubblewrap also sets no_new_privs, so no exec can gain more.

use super::cgroup::Cgroup;
use super::userns::Namespaces;
use super::{Result, SandboxError};
use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::Mutex;

/// Capabilities the sandboxed root keeps: enough to own, chmod and chown files, switch users
/// and bind low ports, as package managers and services in a machine do. Everything else is
/// dropped, in particular CAP_SYS_ADMIN (mount: could remount /proc/sys writable or mount a
/// cgroup filesystem and leave the machine's cgroup), CAP_DAC_READ_SEARCH (open_by_handle_at
/// opens any host file by handle), CAP_MKNOD (a device node for the host's disk), CAP_SYS_MODULE,
/// CAP_SYS_RAWIO, CAP_SYS_PTRACE, CAP_SYS_BOOT, CAP_NET_ADMIN/CAP_NET_RAW (the network is the
/// host's) and CAP_SETPCAP (bubblewrap leaves the bounding set full, so no_new_privs is then the
/// only bar to regaining the rest on exec; without SETPCAP they cannot even enter the
/// inheritable set).
const KEPT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
];

/// Kernel tunables in the new procfs that root could write: /proc/sys/kernel/core_pattern alone
/// would run a host program of its choosing. bubblewrap covers some of these itself but skips
/// /proc/sys when run as root, so they are bound read-only here (from the host's procfs: the
/// files are the same kernel-wide settings).
const PROC_READ_ONLY: &[&str] = &["/proc/sys", "/proc/sysrq-trigger", "/proc/fs"];

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A host path mounted into the machine at the caller's explicit request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    /// An existing absolute host path.
    pub host: PathBuf,
    /// An absolute path inside the machine; created (in the machine root) if missing.
    pub guest: PathBuf,
    pub read_only: bool,
}

/// How to run one command in a machine.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The machine's root directory as the host sees it (for a mounted machine: the merged
    /// overlay). It becomes `/`.
    pub root: PathBuf,
    /// The command and its arguments; `argv[0]` is looked up in the machine's PATH.
    pub argv: Vec<OsString>,
    /// Working directory inside the machine.
    pub cwd: PathBuf,
    /// Added to (and overriding) the clean environment: PATH, HOME=/root, TERM. Nothing of the
    /// caller's environment passes otherwise.
    pub env: Vec<(OsString, OsString)>,
    pub hostname: String,
    /// Host paths to mount inside; nothing else of the host is visible.
    pub binds: Vec<Bind>,
    /// True: the command shares the caller's terminal session, for shells and job control; a
    /// process inside can then also push input into that terminal (TIOCSTI) on kernels that
    /// still allow it. False: the command runs in a new session without a controlling terminal.
    pub interactive: bool,
    /// The namespaces of a machine run without root (`userns.rs`): the command joins them
    /// before bubblewrap starts, so `root` is looked up in the holder's mount namespace.
    pub namespaces: Option<std::sync::Arc<Namespaces>>,
}

impl RunOptions {
    /// Options to run `argv` in the machine at `root`, in `/`, with the clean environment.
    pub fn new(
        root: impl Into<PathBuf>,
        hostname: impl Into<String>,
        argv: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> RunOptions {
        RunOptions {
            root: root.into(),
            argv: argv.into_iter().map(Into::into).collect(),
            cwd: PathBuf::from("/"),
            env: Vec::new(),
            hostname: hostname.into(),
            binds: Vec::new(),
            interactive: false,
            namespaces: None,
        }
    }
}

/// Runs the command with the caller's stdin, stdout and stderr and returns bubblewrap's exit
/// status: the command's exit code, or 128 + the signal number if a signal killed the command;
/// if bubblewrap itself was killed (Ctrl-C, or `kill_all` from a restore), the status carries
/// that signal instead (`code()` is None). Background processes the command leaves die with
/// its pid namespace when it exits; bubblewrap reports the exit before its reaper (pid 1
/// inside) is gone, so the cgroup may still be populated for a moment after this returns
/// (`kill_all` waits for it to empty).
///
/// Ctrl-C: while it waits, this process ignores SIGINT and SIGQUIT (as `system(3)` does) and
/// survives to report the status; the command starts with default handling of both. An
/// interactive command is in the terminal's foreground process group and gets the SIGINT
/// itself; a job-control shell inside gives the terminal to its foreground job alone, so
/// Ctrl-C stops that job and the shell stays. bubblewrap's own monitor process does not
/// survive a SIGINT that reaches it, and its exit SIGKILLs whatever is left in the sandbox: a
/// non-interactive command (its own session, so the terminal's SIGINT misses it) or one that
/// catches SIGINT to clean up is therefore ended by that SIGKILL.
pub fn run_sandboxed(opts: &RunOptions, cgroup: Option<&Cgroup>) -> Result<ExitStatus> {
    let mut cmd = sandboxed_command(opts, cgroup)?;
    // Before the fork, so that a Ctrl-C right after it cannot kill this process.
    let _ignoring = IgnoreInterrupts::start();
    let mut child = cmd.spawn().map_err(|e| spawn_error(&cmd, cgroup, e))?;
    child.wait().map_err(SandboxError::Wait)
}

/// Starts the command and returns at once. The caller handles signals and waits; the sandbox
/// dies with the thread that spawned it (bubblewrap's `--die-with-parent` is bound to the
/// parent thread), so spawn from a thread that outlives the command.
pub fn spawn_sandboxed(opts: &RunOptions, cgroup: Option<&Cgroup>) -> Result<Child> {
    let mut cmd = sandboxed_command(opts, cgroup)?;
    cmd.spawn().map_err(|e| spawn_error(&cmd, cgroup, e))
}

/// The bubblewrap command, ready to spawn, for callers that redirect stdin/stdout/stderr.
/// Between fork and exec the child joins `cgroup`: from its first instruction of bubblewrap
/// on, the child and everything it forks are in the machine's cgroup, so a freeze or kill can
/// never miss a process that was already running. (Writing the pid from the parent after spawn
/// would leave a window in which the command runs, and forks, outside it.) Spawning into a
/// frozen cgroup therefore blocks until it is thawed: the child stops as it joins.
pub fn sandboxed_command(opts: &RunOptions, cgroup: Option<&Cgroup>) -> Result<Command> {
    validate(opts)?;
    let bwrap = find_bwrap()?;
    let procs = match cgroup {
        Some(cg) => Some(
            CString::new(cg.procs_file().into_os_string().into_vec()).map_err(|_| {
                SandboxError::BadOption(format!(
                    "cgroup path {} contains a NUL byte",
                    cg.path().display()
                ))
            })?,
        ),
        None => None,
    };
    let namespaces = opts.namespaces.clone();
    let mut cmd = Command::new(bwrap);
    cmd.args(bwrap_args(opts))
        .env_clear()
        .envs(environment(opts, std::env::var_os("TERM")))
        .current_dir("/");
    // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe
    // calls are allowed; `enter_cgroup` makes only signal, open, write and close calls on a
    // path allocated before the fork, and `Namespaces::enter` only setns on fds opened before.
    unsafe {
        cmd.pre_exec(move || {
            enter_cgroup(procs.as_deref())?;
            match &namespaces {
                Some(ns) => ns.enter(),
                None => Ok(()),
            }
        });
    }
    Ok(cmd)
}

/// In the child between fork and exec: restore default Ctrl-C handling (`run_sandboxed`
/// ignores it in the parent) and move this process into the cgroup (`0` means the writer).
fn enter_cgroup(procs: Option<&CStr>) -> std::io::Result<()> {
    // SAFETY: signal, open, write and close are async-signal-safe; `procs` is a valid C string
    // and the fd is closed on every path.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGQUIT, libc::SIG_DFL);
        let Some(procs) = procs else {
            return Ok(());
        };
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, b"0".as_ptr().cast(), 1);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n != 1 {
            return Err(err);
        }
    }
    Ok(())
}

fn spawn_error(cmd: &Command, cgroup: Option<&Cgroup>, source: std::io::Error) -> SandboxError {
    SandboxError::Spawn {
        program: PathBuf::from(cmd.get_program()),
        where_: match cgroup {
            Some(cg) => format!("in cgroup {}", cg.path().display()),
            None => "without a cgroup".to_owned(),
        },
        source,
    }
}

/// bubblewrap's arguments for `opts`; the order matters, later mounts go over earlier ones.
pub(super) fn bwrap_args(opts: &RunOptions) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&OsStr]| a.extend(items.iter().map(|s| s.to_os_string()));
    push(&[
        "--die-with-parent".as_ref(),
        "--unshare-pid".as_ref(),
        "--unshare-ipc".as_ref(),
        "--unshare-uts".as_ref(),
    ]);
    if !opts.interactive {
        push(&["--new-session".as_ref()]);
    }
    push(&["--cap-drop".as_ref(), "ALL".as_ref()]);
    for cap in KEPT_CAPS {
        push(&["--cap-add".as_ref(), cap.as_ref()]);
    }
    push(&["--hostname".as_ref(), opts.hostname.as_ref()]);
    // A plain --bind mounts the root nodev and nosuid: a device node inside the machine (a tar
    // import can bring one) cannot open the host's devices, and --dev below is the only source
    // of devices. Setuid bits have no effect inside (the processes are root already).
    push(&["--bind".as_ref(), opts.root.as_ref(), "/".as_ref()]);
    push(&["--proc".as_ref(), "/proc".as_ref()]);
    for p in PROC_READ_ONLY {
        push(&["--ro-bind-try".as_ref(), p.as_ref(), p.as_ref()]);
    }
    push(&["--dev".as_ref(), "/dev".as_ref()]);
    for b in &opts.binds {
        let flag = if b.read_only { "--ro-bind" } else { "--bind" };
        push(&[flag.as_ref(), b.host.as_ref(), b.guest.as_ref()]);
    }
    push(&["--chdir".as_ref(), opts.cwd.as_ref(), "--".as_ref()]);
    a.extend(opts.argv.iter().cloned());
    a
}

/// The command's whole environment: the defaults, then `opts.env` (later entries win).
pub(super) fn environment(
    opts: &RunOptions,
    term: Option<OsString>,
) -> BTreeMap<OsString, OsString> {
    let mut env = BTreeMap::new();
    env.insert("PATH".into(), DEFAULT_PATH.into());
    env.insert("HOME".into(), "/root".into());
    env.insert("TERM".into(), term.unwrap_or_else(|| "dumb".into()));
    for (k, v) in &opts.env {
        env.insert(k.clone(), v.clone());
    }
    env
}

fn validate(opts: &RunOptions) -> Result<()> {
    let bad = |s: String| Err(SandboxError::BadOption(s));
    if opts.argv.is_empty() {
        return bad("no command to run".into());
    }
    let bad_root = |reason: &str| {
        Err(SandboxError::BadRoot {
            path: opts.root.clone(),
            reason: reason.into(),
        })
    };
    if !opts.root.is_absolute() {
        return bad_root("the path must be absolute");
    }
    match std::fs::canonicalize(&opts.root) {
        Err(e) => return bad_root(&e.to_string()),
        Ok(p) if p == Path::new("/") => {
            return bad_root("it is the host's own root; a machine needs a directory of its own");
        }
        Ok(p) if !p.is_dir() => return bad_root("it is not a directory"),
        Ok(_) => {}
    }
    if !is_clean_absolute(&opts.cwd) {
        return bad(format!(
            "working directory {:?} must be an absolute path without `..`",
            opts.cwd
        ));
    }
    let h = opts.hostname.as_bytes();
    if h.is_empty() || h.len() > 64 || h.contains(&0) {
        return bad(format!(
            "hostname {:?} must be 1 to 64 bytes without NUL",
            opts.hostname
        ));
    }
    for (k, _) in &opts.env {
        let k = k.as_bytes();
        if k.is_empty() || k.contains(&b'=') || k.contains(&0) {
            return bad(format!(
                "environment variable name {:?} must be non-empty, without `=` or NUL",
                OsStr::from_bytes(k)
            ));
        }
    }
    for b in &opts.binds {
        let bad_bind = |reason: &str| {
            Err(SandboxError::BadBind {
                host: b.host.clone(),
                guest: b.guest.clone(),
                reason: reason.into(),
            })
        };
        if !b.host.is_absolute() || !b.host.exists() {
            return bad_bind("the host path must be absolute and exist");
        }
        if !is_clean_absolute(&b.guest) || b.guest == Path::new("/") {
            return bad_bind("the machine path must be absolute, without `..`, and not `/`");
        }
    }
    Ok(())
}

fn is_clean_absolute(p: &Path) -> bool {
    p.is_absolute() && !p.components().any(|c| c == Component::ParentDir)
}

/// The first executable `bwrap` on PATH (the caller's, not the machine's).
fn find_bwrap() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    find_bwrap_in(&path)
}

pub(super) fn find_bwrap_in(path: &OsStr) -> Result<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join("bwrap"))
        .find(|p| {
            p.is_absolute()
                && std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or(SandboxError::BwrapMissing)
}

/// SIGINT and SIGQUIT ignored in this process while at least one `run_sandboxed` waits; the
/// dispositions found before the first are restored after the last. Counted, because signal dispositions
/// belong to the whole process and runs may overlap on several threads.
struct IgnoreInterrupts;

static IGNORING: Mutex<(usize, Option<[libc::sigaction; 2]>)> = Mutex::new((0, None));
const INTERRUPTS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGQUIT];

impl IgnoreInterrupts {
    fn start() -> IgnoreInterrupts {
        let mut state = IGNORING.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 == 0 {
            // SAFETY: sigaction with a zeroed (empty mask, no flags) SIG_IGN action and valid
            // out-pointers for the previous actions.
            let saved = INTERRUPTS.map(|sig| unsafe {
                let mut ignore: libc::sigaction = std::mem::zeroed();
                ignore.sa_sigaction = libc::SIG_IGN;
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(sig, &ignore, &mut old);
                old
            });
            state.1 = Some(saved);
        }
        state.0 += 1;
        IgnoreInterrupts
    }
}

impl Drop for IgnoreInterrupts {
    fn drop(&mut self) {
        let mut state = IGNORING.lock().unwrap_or_else(|e| e.into_inner());
        state.0 -= 1;
        if state.0 == 0
            && let Some(saved) = state.1.take()
        {
            for (sig, old) in INTERRUPTS.iter().zip(saved.iter()) {
                // SAFETY: restores an action previously returned by sigaction.
                unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
            }
        }
    }
}
