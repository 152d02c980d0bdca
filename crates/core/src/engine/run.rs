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
    /// The cgroup of a machine's processes.
    pub(crate) fn machine_cgroup(&self, m: &MachineRow) -> Result<Cgroup> {
        Ok(Cgroup::open_or_create(&m.uid)?)
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
            let cg = self.machine_cgroup(&m)?;
            if cg.is_frozen()? {
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
        started(&RunStart { brought_up });
        Ok(crate::sandbox::run_sandboxed(&opts, &cg)?)
    }

    /// Freezes a machine's processes, if it has any, for a consistent read of its upper.
    pub(crate) fn freeze_machine(&self, m: &MachineRow) -> Result<Option<Frozen>> {
        if m.kind != MachineKind::Mounted || !self.is_up(m) {
            return Ok(None);
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
        Ok(Some(Frozen { cg, took }))
    }

    /// Stops every process of the machine (before unmounting it).
    pub(crate) fn kill_machine_processes(&self, m: &MachineRow) -> Result<usize> {
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
    cg: Cgroup,
    /// How long the freeze took to take hold.
    pub took: Duration,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(e) = self.cg.thaw() {
            tracing::warn!("could not thaw the machine's processes: {e}");
        }
    }
}
