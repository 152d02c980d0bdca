//! Running processes inside a machine, and keeping them still while a checkpoint reads it.
//!
//! Every process started by `run`/`shell` lives in the machine's cgroup (`cairn/<uid>`), so a
//! checkpoint of a mounted machine can freeze them all for the moment it walks the upper, and
//! `machine down` or a restore can stop them. The machine lock is not held while a command
//! runs: a checkpoint must be possible beside a long-running process.

use super::{Repo, Result};
use crate::catalog::{MachineKind, MachineRow};
use crate::sandbox::{Bind, Cgroup, DEFAULT_FREEZE_TIMEOUT, RunOptions};
use std::ffi::OsString;
use std::process::ExitStatus;
use std::time::Duration;

/// Inputs of `run` and `shell`.
#[derive(Clone, Debug, Default)]
pub struct RunSpec {
    pub argv: Vec<OsString>,
    pub binds: Vec<Bind>,
    /// Share the terminal (a shell); otherwise the command gets a session of its own.
    pub interactive: bool,
}

/// What `run` did before the command started.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunStart {
    /// The machine was brought up first.
    pub brought_up: bool,
}

impl Repo {
    /// The cgroup of a machine's processes; none without root, where the machine's processes
    /// are found by their user namespace instead (`rootless.rs`).
    pub(crate) fn machine_cgroup(&self, m: &MachineRow) -> Result<Option<Cgroup>> {
        if crate::sandbox::rootless() {
            return Ok(None);
        }
        match Cgroup::open_or_create(&m.uid) {
            Ok(cg) => Ok(Some(cg)),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs a command inside the machine (bringing a mounted machine up first) and waits for
    /// it. `started` is called once the machine is ready, before the command starts.
    pub fn run(
        &self,
        name: &str,
        spec: &RunSpec,
        started: &mut dyn FnMut(&RunStart),
    ) -> Result<ExitStatus> {
        let (m, brought_up) = {
            let m = self.machine_row(name)?;
            let _lock = self.lock_machine(name, "run")?;
            self.complete_interrupted(&m, &super::NoProgress)?;
            let m = self.machine_row(name)?;
            let mut brought_up = false;
            if m.kind == MachineKind::Mounted && !self.up_locked(&m)?.already_up {
                brought_up = true;
            }
            if let Some(cg) = self.machine_cgroup(&m)?
                && cg.is_frozen()?
            {
                // Left frozen by a checkpoint that died mid-way: we hold the lock, so no
                // checkpoint is running now.
                cg.thaw()?;
            }
            (m, brought_up)
        };
        let cg = self.machine_cgroup(&m)?;
        let mut opts = RunOptions::new(&m.dir, m.name.clone(), spec.argv.clone());
        opts.binds = spec.binds.clone();
        opts.interactive = spec.interactive;
        if m.kind == MachineKind::Mounted && crate::sandbox::rootless() {
            let holder = self.overlay_holder(&m).ok_or_else(|| {
                super::EngineError::Invalid(format!(
                    "machine {} went down before its command could start",
                    m.name
                ))
            })?;
            opts.namespaces = Some(std::sync::Arc::new(holder.namespaces()?));
        }
        started(&RunStart { brought_up });
        Ok(crate::sandbox::run_sandboxed(&opts, cg.as_ref())?)
    }

    /// Freezes a machine's processes, if it has any, for a consistent read of its upper.
    pub(crate) fn freeze_machine(&self, m: &MachineRow) -> Result<Option<Frozen>> {
        if m.kind != MachineKind::Mounted || !self.is_up(m) {
            return Ok(None);
        }
        if crate::sandbox::rootless() {
            let Some(holder) = self.overlay_holder(m) else {
                return Ok(None);
            };
            if holder.members().is_empty() {
                return Ok(None);
            }
            let f = holder.freeze_members(DEFAULT_FREEZE_TIMEOUT)?;
            return Ok(Some(Frozen {
                took: f.took,
                by: FrozenBy::Signals { _stopped: f },
            }));
        }
        let cg = match Cgroup::open_or_create(&m.uid) {
            Ok(cg) => cg,
            // No freezer on this host: nothing runs through `cairn run` either.
            Err(crate::sandbox::SandboxError::NoFreezer) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if cg.is_empty()? {
            return Ok(None);
        }
        let took = cg.freeze(DEFAULT_FREEZE_TIMEOUT)?;
        Ok(Some(Frozen {
            by: FrozenBy::Cgroup(cg),
            took,
        }))
    }

    /// Stops every process of the machine (before unmounting it).
    pub(crate) fn kill_machine_processes(&self, m: &MachineRow) -> Result<usize> {
        if crate::sandbox::rootless() {
            return match self.overlay_holder(m) {
                Some(h) => Ok(h.kill_members(Duration::from_secs(10))?),
                None => Ok(0),
            };
        }
        let cg = match Cgroup::open_or_create(&m.uid) {
            Ok(cg) => cg,
            Err(crate::sandbox::SandboxError::NoFreezer) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        if cg.is_empty()? {
            return Ok(0);
        }
        Ok(cg.kill_all(Duration::from_secs(10))?.killed)
    }
}

/// A machine's processes, frozen until this is dropped.
pub(crate) struct Frozen {
    by: FrozenBy,
    /// How long the freeze took to take hold.
    pub took: Duration,
}

enum FrozenBy {
    Cgroup(Cgroup),
    /// Without root: stopped by SIGSTOP, continued by SIGCONT when dropped.
    Signals {
        _stopped: crate::sandbox::SignalFreeze,
    },
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let FrozenBy::Cgroup(cg) = &self.by
            && let Err(e) = cg.thaw()
        {
            tracing::warn!("could not thaw the machine's processes: {e}");
        }
    }
}
