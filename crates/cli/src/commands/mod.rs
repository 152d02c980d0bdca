//! One function per command: call the engine with validated options, then render its report.
//!
//! **Invariant:** no engine logic lives here. A command opens the repository, makes one engine
//! call (two for `machine rm`, which shows what it forgets), and prints.

mod changes;
mod checkpoint;
mod files;
mod machine;
mod maintenance;
mod mount;
mod mounted;

use crate::config::{Command, Config};
use crate::output::Printer;
use cairn_core::Repo;

/// How a command that ran to the end went.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    Success,
    /// The command worked but found a problem it has already reported (`check`): exit 1.
    Failed,
    /// `run` and `shell` exit with the code of the command they ran.
    Code(u8),
}

pub fn run(config: Config) -> anyhow::Result<Status> {
    let p = Printer {
        mode: config.output,
    };
    // `check` must work when the catalog is too damaged to open; it opens the repo itself.
    if let Command::Check { opts, repair } = &config.command {
        return maintenance::check(&config.repo, &p, opts, *repair);
    }
    // Unmounting needs no repository, and must work even when the home is unusable.
    if let Command::Umount { mountpoint, lazy } = &config.command {
        mount::umount(&p, mountpoint, *lazy)?;
        return Ok(Status::Success);
    }
    let repo = Repo::open(&config.repo)?;
    match config.command {
        Command::MachineCreate(opts) => machine::create(&repo, &p, &opts)?,
        Command::MachineCreateMounted(opts) => mounted::create(&repo, &p, &opts)?,
        Command::MachineUp(name) => mounted::up(&repo, &p, &name)?,
        Command::MachineDown(name) => mounted::down(&repo, &p, &name)?,
        Command::ServeLower(name) => repo.serve_lower(&name)?,
        Command::HoldOverlay(name) => repo.hold_overlay(&name)?,
        Command::IngestUpper { name, dry } => repo.ingest_upper_here(&name, dry)?,
        Command::SweepState { uid, all } => repo.sweep_state_here(&uid, all)?,
        Command::Run { machine, spec } => return mounted::run(&repo, &p, &machine, &spec),
        Command::MachineList => machine::list(&repo, &p)?,
        Command::MachineShow(name) => machine::show(&repo, &p, &name)?,
        Command::MachineRemove(name) => machine::remove(&repo, &p, &name)?,
        Command::CheckpointCreate { machine, opts } => {
            checkpoint::create(&repo, &p, &machine, &opts)?
        }
        Command::CheckpointList { machine, limit } => checkpoint::list(&repo, &p, &machine, limit)?,
        Command::CheckpointShow(r) => checkpoint::show(&repo, &p, &r)?,
        Command::CheckpointDelete(r) => checkpoint::delete(&repo, &p, &r)?,
        Command::Diff { from, to } => changes::diff(&repo, &p, &from, to.as_ref())?,
        Command::Restore { target, opts } => changes::restore(&repo, &p, &target, &opts)?,
        Command::Fork { source, opts } => changes::fork(&repo, &p, &source, &opts)?,
        Command::ForkMounted { source, names } => mounted::fork(&repo, &p, &source, &names)?,
        Command::Cat(r) => files::cat(&repo, &r)?,
        Command::Export { source, output } => files::export(&repo, &p, &source, &output)?,
        Command::Mount {
            source,
            mountpoint,
            background,
        } => mount::mount(&repo, &p, &source, &mountpoint, background)?,
        Command::Umount { .. } => unreachable!("handled before the repository is opened"),
        Command::Du => maintenance::du(&repo, &p)?,
        Command::Gc(opts) => maintenance::gc(&repo, &p, &opts)?,
        Command::Check { .. } => unreachable!("invariant: check returned above"),
        Command::AuditLog { machine, limit } => {
            maintenance::audit_log(&repo, &p, machine.as_deref(), limit)?
        }
    }
    Ok(Status::Success)
}

/// A path inside a machine for messages: `/etc/nginx`. Bytes that are not UTF-8 are replaced.
fn inner_path(components: &[Vec<u8>]) -> String {
    if components.is_empty() {
        return "/".to_owned();
    }
    components
        .iter()
        .map(|c| format!("/{}", String::from_utf8_lossy(c)))
        .collect()
}

/// The name of a unit-like enum as it appears in JSON (`"directory"`), for tables.
fn json_name(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inner_paths_show_like_absolute_paths() {
        assert_eq!(inner_path(&[]), "/");
        assert_eq!(
            inner_path(&[b"etc".to_vec(), b"ng\xffinx".to_vec()]),
            "/etc/ng\u{fffd}inx"
        );
    }
}
