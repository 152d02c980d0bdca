//! `cairn mount` and `cairn umount`: a checkpoint as a read-only FUSE view.
//!
//! The engine serves the view from its own threads; this file decides how long the process
//! lives: until Ctrl-C, SIGTERM or SIGHUP, or until the view is unmounted from outside. With
//! `--background` the command starts itself again as a detached server and returns once that
//! server reports the mount live.

use crate::config::Background;
use crate::output::Printer;
use anyhow::Context;
use cairn_core::{MountError, MountOptions, MountedView, Ref, Repo, UnmountReport};
use serde::Serialize;
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The line a background server prints on stdout once its mount is live.
const READY: &str = "cairn-mount-ready";

/// The JSON of `mount`.
#[derive(Serialize)]
struct Mounted<'a> {
    source: String,
    mountpoint: &'a Path,
    /// The process serving the view.
    pid: u32,
    background: bool,
    read_only: bool,
}

pub fn mount(
    repo: &Repo,
    p: &Printer,
    source: &Ref,
    mountpoint: &Path,
    background: Background,
) -> anyhow::Result<()> {
    if background == Background::Start {
        return start_background(p, source, mountpoint);
    }
    if background == Background::Serve {
        // Its own session: the terminal that started it can close without taking it along.
        // SAFETY: setsid has no preconditions; failure (already a leader) is harmless.
        unsafe { libc::setsid() };
    }
    // Blocked before the server threads exist, so they inherit the mask and every stop signal
    // waits for `sigtimedwait` below instead of killing the process mid-request.
    let signals = StopSignals::block()?;
    let mut view = repo.mount(source, mountpoint, &MountOptions::default())?;
    let mp = view.mountpoint().to_owned();
    if background == Background::Serve {
        println!("{READY}");
        io::stdout()
            .flush()
            .context("tell the starting command the mount is live")?;
        detach_stdio();
    } else {
        let report = Mounted {
            source: source.to_string(),
            mountpoint: &mp,
            pid: std::process::id(),
            background: false,
            read_only: true,
        };
        p.result(&report, |out| {
            writeln!(
                out,
                "mounted {source} at {} (read-only); stop with Ctrl-C or `cairn umount {}`",
                mp.display(),
                mp.display()
            )
        })?;
    }
    serve_until_stopped(&mut view, &signals, p)
}

fn serve_until_stopped(
    view: &mut MountedView,
    signals: &StopSignals,
    p: &Printer,
) -> anyhow::Result<()> {
    loop {
        if !view.is_serving() {
            // Unmounted from outside (`cairn umount`, umount(8)).
            return Ok(view.join()?);
        }
        if signals.wait(Duration::from_millis(200)).is_none() {
            continue;
        }
        match view.unmount() {
            Ok(()) => return Ok(()),
            Err(MountError::Busy { .. }) => break,
            Err(e) => return Err(e.into()),
        }
    }
    p.note(format!(
        "{} is in use; detached it, and serving its remaining users until they leave \
         (press Ctrl-C again to stop now)",
        view.mountpoint().display()
    ));
    view.detach()?;
    while view.is_serving() {
        if signals.wait(Duration::from_millis(200)).is_some() {
            // Exiting closes the FUSE device, which fails the remaining users' requests; the
            // mount itself is already gone from the tree.
            std::process::exit(0);
        }
    }
    Ok(view.join()?)
}

/// Starts `cairn mount … --serve-background` and waits for it to report the mount live.
fn start_background(p: &Printer, source: &Ref, mountpoint: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("find the cairn executable to start the server")?;
    let mut child = Command::new(exe)
        .args(server_args(std::env::args_os().skip(1)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start the background server")?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        // EOF (an empty line) means the server stopped before mounting.
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if line.trim_end() != READY {
        let output = child
            .wait_with_output()
            .context("wait for the background server")?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let message = stderr
            .lines()
            .find_map(|l| l.strip_prefix("error: "))
            .unwrap_or("the background server stopped before the mount was live");
        anyhow::bail!("{message}");
    }
    let mp = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.to_owned());
    let report = Mounted {
        source: source.to_string(),
        mountpoint: &mp,
        pid: child.id(),
        background: true,
        read_only: true,
    };
    p.result(&report, |out| {
        writeln!(
            out,
            "mounted {source} at {} (read-only, served by pid {}); stop with `cairn umount {}`",
            mp.display(),
            child.id(),
            mp.display()
        )
    })
}

/// This command line for the server: `--background` becomes `--serve-background`, and
/// `--json` goes (the server reports to this process, not to the user).
fn server_args(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut positional = false;
    for a in args {
        if !positional && (a == "--background" || a == "--json") {
            continue;
        }
        positional |= a == "--";
        out.push(a);
    }
    // Before any `--`, so it stays an option.
    let at = out.iter().position(|a| a == "--").unwrap_or(out.len());
    out.insert(at, "--serve-background".into());
    out
}

/// Points stdout and stderr at /dev/null: the command that started this server has exited and
/// no one reads its pipes any more.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto the standard descriptors of this process; `null` is open.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(null.as_raw_fd(), 2);
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP, blocked and taken synchronously.
struct StopSignals {
    set: libc::sigset_t,
}

impl StopSignals {
    fn block() -> anyhow::Result<StopSignals> {
        // SAFETY: the set is initialized by sigemptyset before use; pthread_sigmask only
        // changes this thread's mask, which threads started later inherit.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, s);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc)).context("block stop signals");
            }
            Ok(StopSignals { set })
        }
    }

    /// The stop signal that arrived within `timeout`, if any.
    fn wait(&self, timeout: Duration) -> Option<i32> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: `set` and `ts` are valid for the call; no siginfo is requested.
        let s = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
        (s > 0).then_some(s)
    }
}

pub fn umount(p: &Printer, mountpoint: &Path, lazy: bool) -> anyhow::Result<()> {
    let report: UnmountReport = if lazy {
        cairn_core::detach(mountpoint)?
    } else {
        cairn_core::unmount(mountpoint)?
    };
    p.result(&report, |out| {
        let how = match (report.stale, report.lazy) {
            (true, _) => " (its server had stopped)",
            (false, true) => " (detached; released when its last user leaves)",
            (false, false) => "",
        };
        writeln!(
            out,
            "unmounted {} from {}{how}",
            report.source,
            report.mountpoint.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn server_args_swap_the_background_flag_and_drop_json() {
        assert_eq!(
            server_args(args(&["--json", "mount", "web@v1", "/mnt/x", "--background"]).into_iter()),
            args(&["mount", "web@v1", "/mnt/x", "--serve-background"])
        );
        assert_eq!(
            server_args(args(&["mount", "--background", "web@v1", "--", "--json"]).into_iter()),
            args(&["mount", "web@v1", "--serve-background", "--", "--json"])
        );
    }
}
