//! Mounted machines without root (ARCHITECTURE.md, "Mounted machines without root").
//!
//! The view of the base is mounted as for root, through `fusermount3`, at `lower/` in the
//! host's mount table, with the tree's owners shown through the namespace's id map
//! (`MountOptions::ids`). The overlay cannot be mounted there: only a user namespace lets an
//! ordinary user mount one. So `machine up` starts a second detached process, the *holder*
//! (`machine hold-overlay NAME`), which becomes root of a user namespace of the machine's ids
//! (`enter_namespace`), mounts the overlay at the machine's path in its new mount namespace
//! (`userxattr`: overlayfs keeps its own attributes as `user.overlay.*`), records its pid in
//! `overlay.pid` and sleeps.
//!
//! - The machine is up while that pid's mount table has an overlay at the machine's path.
//! - `run` and `shell` join the holder's namespaces before bubblewrap starts.
//! - `machine down` kills the processes in the holder's user namespace, then the holder, and
//!   its mount namespace and overlay end with it. No stale overlay can outlive it in the
//!   host's mount table, because none was ever there.
//! - What the machine's root writes is the user's own on the host (or one of the user's
//!   subordinate ids), with the modes it chose: checkpoints read the upper, and sweeps remove
//!   old ones, in children that are root of a namespace of the same ids
//!   (`machine ingest-upper`, `machine sweep-state`).

use super::blobs::BlobWriter;
use super::ingest::Ingested;
use super::mounted::Layout;
use super::statcache::StatCache;
use super::{EngineError, LowerServer, Repo, Result};
use crate::catalog::MachineRow;
use crate::model::{Tree, TreeId};
use crate::sandbox::{Holder, IdMap};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a starting holder may take to mount the overlay.
const HOLDER_START: Duration = Duration::from_secs(20);

/// How long the machine's processes and the holder get to die.
const HOLDER_STOP: Duration = Duration::from_secs(10);

/// The ids of the user namespace of a machine this process runs without root.
pub(crate) fn namespace_ids() -> Option<IdMap> {
    crate::sandbox::rootless().then(|| {
        IdMap::for_user(
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        )
    })
}

/// The overlay's mount options. As root with a data layer (`data`, a data-only lower layer
/// below the view, see `mount/data.rs`): renaming a directory that has a lower one records a
/// redirect instead of copying the whole subtree up, and a chmod, chown or xattr change of a
/// lower file copies up only its metadata (the upper ingest reads both). Without one, neither
/// (`metacopy=off` also makes overlayfs ignore the view's attributes naming copies). `user`:
/// mounted in a user namespace, where overlayfs keeps its attributes as `user.overlay.*` and
/// allows none of these (`nofollow` is the only redirect mode it accepts there).
pub(crate) fn overlay_options(l: &Layout, user: bool, data: Option<&Path>) -> String {
    overlay_options_over(l, &l.lower, user, data)
}

/// `overlay_options` with `lower` (a lower image, see `image.rs`) in place of the view.
pub(crate) fn overlay_options_over(
    l: &Layout,
    lower: &Path,
    user: bool,
    data: Option<&Path>,
) -> String {
    let (lower, features) = match data {
        _ if user => (
            escape_opt(lower),
            "redirect_dir=nofollow,metacopy=off,userxattr",
        ),
        Some(d) => (
            format!("{}::{}", escape_opt(lower), escape_opt(d)),
            "redirect_dir=on,metacopy=on",
        ),
        None => (escape_opt(lower), "redirect_dir=off,metacopy=off"),
    };
    format!(
        "lowerdir={lower},upperdir={},workdir={},{features},index=off,xino=off",
        escape_opt(&l.upper),
        escape_opt(&l.work),
    )
}

/// Overlay options are comma-separated and `:` separates lower layers; escape both.
fn escape_opt(p: &Path) -> String {
    let s = p.display().to_string();
    s.replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace(':', "\\:")
}

/// Mounts an overlay with `opts` at `at`, named `source` in the mount table.
pub(crate) fn mount_overlay(at: &Path, source: &str, opts: &str) -> Result<(), rustix::io::Errno> {
    let opts = std::ffi::CString::new(opts).map_err(|_| rustix::io::Errno::INVAL)?;
    rustix::mount::mount(
        source,
        at,
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(opts.as_c_str()),
    )
}

impl Repo {
    fn pid_file(&self, m: &MachineRow) -> PathBuf {
        self.layout(m).state.join("overlay.pid")
    }

    /// The holder of the machine's overlay, when one is alive with the overlay mounted.
    pub(crate) fn overlay_holder(&self, m: &MachineRow) -> Option<Holder> {
        let pid = std::fs::read_to_string(self.pid_file(m)).ok()?;
        let holder = Holder::of_pid(pid.trim().parse().ok()?)?;
        let at = crate::mount::mount_in(&holder.mountinfo()?, &m.dir)?;
        (at.fstype == "overlay").then_some(holder)
    }

    /// Starts `cairn machine ARGS…` (this binary on this home) detached, in its own process
    /// group (a Ctrl-C meant for the command that started it must not take the machine down
    /// with it), with `stdout` and `stderr`.
    pub(crate) fn spawn_cairn(
        &self,
        args: &[&str],
        stdin: Stdio,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<Child> {
        let mut cmd = self.cairn_command(args, stdout, stderr)?;
        start(cmd.stdin(stdin))
    }

    /// The command `spawn_cairn` starts, for a caller that has more to set.
    fn cairn_command(&self, args: &[&str], stdout: Stdio, stderr: Stdio) -> Result<Command> {
        let LowerServer::Process(argv) = &self.lower_server else {
            return Err(EngineError::Invalid(
                "a mounted machine's lower layer and, without root, its overlay are served by \
                 processes of the cairn command; this caller serves them in-process"
                    .to_owned(),
            ));
        };
        let (prog, base) = argv
            .split_first()
            .ok_or_else(|| EngineError::Invalid("no cairn command to start".to_owned()))?;
        let mut cmd = Command::new(prog);
        cmd.args(base)
            .arg("machine")
            .args(args)
            .stdout(stdout)
            .stderr(stderr);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        Ok(cmd)
    }

    /// Runs `cairn machine ARGS…` in a user namespace of the machine's ids (see
    /// `spawn_in_namespace`) as a helper of this command, which waits for it: if this command
    /// dies first (a SIGKILL mid-checkpoint), the kernel kills the helper too, so no half-done
    /// ingest or sweep goes on alone beside the next command.
    fn helper_in_namespace(&self, args: &[&str], stdout: Stdio, stderr: Stdio) -> Result<Child> {
        let mut cmd = self.cairn_command(args, stdout, stderr)?;
        let caller = std::process::id();
        // SAFETY: runs in the child between fork and exec, and calls only prctl, getppid and
        // _exit, which are async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The caller may have died before the signal was armed.
                if libc::getppid() as u32 != caller {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        self.start_in_namespace(cmd)
    }

    /// `spawn_cairn` for a command that makes a user namespace of the machine's ids its first
    /// act (`enter_namespace`): once it has, a full map is written for it here (only a helper
    /// outside may), and it is told so on its stdin.
    fn spawn_in_namespace(&self, args: &[&str], stdout: Stdio, stderr: Stdio) -> Result<Child> {
        self.start_in_namespace(self.cairn_command(args, stdout, stderr)?)
    }

    fn start_in_namespace(&self, mut cmd: Command) -> Result<Child> {
        let map = namespace_ids().ok_or_else(|| {
            EngineError::Invalid("only a command run without root makes its namespace".to_owned())
        })?;
        let stdin = if map.is_full() {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let mut child = start(cmd.stdin(stdin))?;
        let Some(mut pipe) = child.stdin.take() else {
            return Ok(child);
        };
        let pid = child.id() as i32;
        let deadline = Instant::now() + HOLDER_START;
        loop {
            if Holder::of_pid(pid).is_some() {
                break;
            }
            if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                // It failed before unsharing (its stderr says why), or never got there.
                let _ = child.kill();
                return Ok(child);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if let Err(e) = map.apply_to(pid) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e.into());
        }
        // A holder that died meanwhile reports its own end through its exit status.
        let _ = pipe.write_all(b"mapped\n");
        Ok(child)
    }

    /// Starts the holder and returns once its overlay is mounted.
    pub(crate) fn start_holder(&self, m: &MachineRow) -> Result<Holder> {
        let _ = std::fs::remove_file(self.pid_file(m));
        let log_path = self.layout(m).state.join("overlay.log");
        let log = log_file(&log_path)?;
        let out = log.try_clone().map_err(io_at("open", &log_path))?;
        let mut child =
            self.spawn_in_namespace(&["hold-overlay", &m.name], out.into(), log.into())?;
        let child_id = child.id();
        wait_started(
            &mut child,
            &m.name,
            "the process holding the overlay",
            "mounted the overlay",
            &log_path,
            HOLDER_START,
            || {
                Ok(self
                    .overlay_holder(m)
                    .filter(|h| h.pid() as u32 == child_id))
            },
        )
    }

    /// Kills the machine's processes and its holder; returns how many processes there were.
    pub(crate) fn stop_holder(&self, m: &MachineRow, holder: &Holder) -> Result<usize> {
        let killed = holder.stop(HOLDER_STOP)?;
        let _ = std::fs::remove_file(self.pid_file(m));
        Ok(killed)
    }

    /// The holder's body (`machine hold-overlay NAME`): a user namespace of its own, the
    /// overlay in it, then sleep until killed. Must run single-threaded.
    pub fn hold_overlay(&self, name: &str) -> Result<()> {
        let m = self.machine_row(name)?;
        let l = self.layout(&m);
        enter_namespace()?;
        let opts = overlay_options(&l, true, None);
        mount_overlay(&m.dir, "overlay", &opts).map_err(|e| {
            EngineError::Invalid(format!(
                "could not mount the overlay at {} in a user namespace ({e}); this needs a \
                 kernel of 5.11 or later; options were {opts}",
                m.dir.display()
            ))
        })?;
        let pid_file = self.pid_file(&m);
        let tmp = pid_file.with_extension("pid.tmp");
        std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, &pid_file))
            .map_err(io_at("write", &pid_file))?;
        loop {
            // SAFETY: pause has no preconditions; it returns only when a signal is caught.
            unsafe { libc::pause() };
        }
    }

    /// Ingests the upper in a child (`machine ingest-upper NAME`) that is root of a user
    /// namespace of the machine's ids, so it may read what the machine's root closed to
    /// others (a directory of `_apt` with mode 0700, a file of mode 000) and sees the
    /// machine's own owners. It stores what it reads and reports the tree; the caller commits
    /// it under its own session and lock. For a dry `writer` it stores nothing and hands its
    /// trees over instead.
    pub(crate) fn ingest_upper_in_namespace(
        &self,
        m: &MachineRow,
        writer: &BlobWriter<'_>,
    ) -> Result<Ingested> {
        let mut args = vec!["ingest-upper", m.name.as_str()];
        if writer.is_dry() {
            args.push("--dry");
        }
        let child = self.helper_in_namespace(&args, Stdio::piped(), Stdio::piped())?;
        let out = child
            .wait_with_output()
            .map_err(io_at("wait for", "ingest-upper"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(EngineError::Invalid(format!(
                "reading the upper layer of {} in its user namespace failed ({}): {}",
                m.name,
                out.status,
                err.trim().trim_start_matches("error: ")
            )));
        }
        let done: UpperIngest = serde_json::from_slice(&out.stdout)
            .map_err(|e| EngineError::Invalid(format!("ingest-upper printed no report ({e})")))?;
        let cache_path = self.child_file(m, "statcache.ns");
        let cache = StatCache::load(&cache_path);
        let _ = std::fs::remove_file(&cache_path);
        if writer.is_dry() {
            let trees_path = self.child_file(m, "trees.ns");
            let bytes = std::fs::read(&trees_path).map_err(io_at("read", &trees_path))?;
            let _ = std::fs::remove_file(&trees_path);
            writer.keep_trees(decode_trees(&bytes)?);
        }
        Ok(Ingested {
            root: done.root,
            logical_bytes: done.logical_bytes,
            entries: done.entries,
            read_bytes: done.read_bytes,
            cache,
            warnings: done.warnings,
            frozen: None,
            written: done.written,
        })
    }

    /// What `machine ingest-upper` hands back beside its report.
    fn child_file(&self, m: &MachineRow, name: &str) -> PathBuf {
        self.layout(m).state.join(name)
    }

    /// The body of `machine ingest-upper NAME`: enter a user namespace of the machine's ids,
    /// ingest its upper, store what it read, save the stat cache for the parent and print the
    /// report. The parent holds the machine lock and a session.
    pub fn ingest_upper_here(&self, name: &str, dry: bool) -> Result<()> {
        enter_namespace()?;
        let m = self.machine_row(name)?;
        let cache = StatCache::load(&self.machine_state_dir(&m.uid).join("statcache"));
        let epoch = self.catalog.gc_epoch()?;
        let writer = if dry {
            BlobWriter::new_dry(&self.store, &self.catalog_path())?
        } else {
            BlobWriter::new(&self.store, &self.catalog_path())?
        };
        let ing = self.ingest_upper(
            &m,
            &writer,
            &super::NoProgress,
            &cache,
            epoch,
            super::upper::USER_PREFIX,
        )?;
        let written = writer.flush()?;
        ing.cache.save(&self.child_file(&m, "statcache.ns"))?;
        if dry {
            let path = self.child_file(&m, "trees.ns");
            std::fs::write(&path, encode_trees(&writer.take_trees())?)
                .map_err(io_at("write", &path))?;
        }
        let report = UpperIngest {
            root: ing.root,
            logical_bytes: ing.logical_bytes,
            entries: ing.entries,
            read_bytes: ing.read_bytes,
            warnings: ing.warnings,
            written,
        };
        let json = serde_json::to_string(&report)
            .map_err(|e| EngineError::Invalid(format!("encode the report: {e}")))?;
        println!("{json}");
        Ok(())
    }
}

impl Repo {
    /// Without root: removes in a user namespace of the machine's ids (`machine sweep-state
    /// UID`) what the user alone may not, the old uppers of machine `uid` or (`all`) its whole
    /// state directory. Best effort: a failure is logged, and the next sweep tries again.
    pub(crate) fn sweep_in_namespace(&self, uid: &str, all: bool) {
        if !crate::sandbox::rootless() {
            return;
        }
        let mut args = vec!["sweep-state", uid];
        if all {
            args.push("--all");
        }
        let done = self
            .helper_in_namespace(&args, Stdio::null(), Stdio::piped())
            .and_then(|c| {
                c.wait_with_output()
                    .map_err(io_at("wait for", "sweep-state"))
            });
        match done {
            Ok(out) if out.status.success() => {}
            Ok(out) => tracing::warn!(
                "could not sweep the state of machine {uid}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => tracing::warn!("could not sweep the state of machine {uid}: {e}"),
        }
    }

    /// The body of `machine sweep-state UID [--all]`.
    pub fn sweep_state_here(&self, uid: &str, all: bool) -> Result<()> {
        if uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(EngineError::Invalid(format!(
                "{uid:?} is not a machine uid"
            )));
        }
        enter_namespace()?;
        let state = self.machine_state_dir(uid);
        if all {
            remove_tree(&state);
        } else {
            super::mounted::sweep_old_uppers(&state);
        }
        Ok(())
    }
}

/// Trees as a dry writer kept them, each as its length (4 bytes, little-endian) and encoding.
fn encode_trees(trees: &HashMap<TreeId, Arc<Tree>>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for tree in trees.values() {
        let (_, bytes) = crate::model::encode_tree(tree)?;
        out.extend((bytes.len() as u32).to_le_bytes());
        out.extend(bytes);
    }
    Ok(out)
}

fn decode_trees(mut bytes: &[u8]) -> Result<HashMap<TreeId, Arc<Tree>>> {
    let mut trees = HashMap::new();
    while !bytes.is_empty() {
        let bad = || EngineError::Invalid("ingest-upper handed back a cut tree list".to_owned());
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = u32::from_le_bytes(*len) as usize;
        let (one, rest) = rest.split_at_checked(len).ok_or_else(bad)?;
        let tree = crate::model::decode_tree(one)?;
        let (id, _) = crate::model::encode_tree(&tree)?;
        trees.insert(id, Arc::new(tree));
        bytes = rest;
    }
    Ok(trees)
}

/// What `machine ingest-upper` reports to the command that started it.
#[derive(serde::Serialize, serde::Deserialize)]
struct UpperIngest {
    root: TreeId,
    logical_bytes: u64,
    entries: u64,
    read_bytes: u64,
    warnings: Vec<String>,
    written: super::blobs::WriteStats,
}

/// In a command started by `spawn_in_namespace`, first thing: become root of a user
/// namespace of the machine's ids, waiting for the starter to write a full map.
fn enter_namespace() -> Result<()> {
    let map = namespace_ids().ok_or_else(|| {
        EngineError::Invalid("this internal command is for running without root".to_owned())
    })?;
    crate::sandbox::unshare_as_root(&map, || {
        // The starter writes the map, then says so (or closes the pipe, having failed).
        let mut said = [0u8; 1];
        match std::io::stdin().read(&mut said) {
            Ok(1) => Ok(()),
            _ => Err(crate::sandbox::SandboxError::Io {
                op: "wait for the id map of",
                path: PathBuf::from("/proc/self/uid_map"),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            }),
        }
    })?;
    Ok(())
}

fn start(cmd: &mut Command) -> Result<Child> {
    cmd.spawn().map_err(|source| EngineError::Io {
        op: "start",
        path: PathBuf::from(cmd.get_program()),
        source,
    })
}

fn io_at(op: &'static str, path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> EngineError {
    let path = path.as_ref().to_owned();
    move |source| EngineError::Io { op, path, source }
}

/// Waits until `ready` returns something: the detached process `child`, started for machine
/// `name`, has done its part. Fails, quoting its log, if it exits first, and kills it if it
/// takes longer than `limit`. `what` and `done` name it and its part in the errors.
pub(crate) fn wait_started<T>(
    child: &mut Child,
    name: &str,
    what: &str,
    done: &str,
    log_path: &Path,
    limit: Duration,
    mut ready: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = ready()? {
            return Ok(t);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            return Err(EngineError::Invalid(format!(
                "{what} of {name} exited ({status}) before it had {done}: {}; nothing is lost: \
                 `cairn machine up {name}` starts it again",
                log.trim()
            )));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(EngineError::Invalid(format!(
                "{what} of {name} had not {done} within {}s; see {}",
                limit.as_secs(),
                log_path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A fresh log file for a detached process's output.
pub(crate) fn log_file(path: &Path) -> Result<std::fs::File> {
    std::fs::File::create(path).map_err(io_at("create", path))
}

/// Removes `path` and everything below it, as `remove_dir_all`, and also where the machine's
/// root made a directory unwritable or unsearchable: without root, the user can remove only
/// what the directory modes let them, so directories they own are opened up first. Best
/// effort: what stays is reported by the caller's next sweep, never fatal.
pub(crate) fn remove_tree(path: &Path) {
    if std::fs::remove_dir_all(path).is_ok() || !path.exists() {
        return;
    }
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        if let Ok(rd) = std::fs::read_dir(&dir) {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    if let Err(e) = std::fs::remove_dir_all(path) {
        tracing::warn!("could not remove {}: {e}", path.display());
    }
}
