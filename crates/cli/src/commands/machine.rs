//! `cairn machine create | list | show | rm`.

use super::json_name;
use crate::output::{self, Align, Printer, Table};
use crate::progress::BarProgress;
use cairn_core::{CheckpointReport, CreateMachineOptions, MachineInfo, Repo};
use serde::Serialize;

/// The JSON of `machine create`.
#[derive(Serialize)]
struct Created<'a> {
    machine: &'a MachineInfo,
    /// Checkpoint v1, when the machine was imported from a tar archive.
    checkpoint: Option<&'a CheckpointReport>,
}

/// The JSON of `machine rm`.
#[derive(Serialize)]
struct Removed<'a> {
    removed: &'a str,
    /// Left in place, untouched.
    dir: &'a std::path::Path,
}

pub fn create(repo: &Repo, p: &Printer, opts: &CreateMachineOptions) -> anyhow::Result<()> {
    let progress = BarProgress::new(p.mode);
    let (info, checkpoint) = repo.create_machine(opts, &progress)?;
    progress.clear();
    if let Some(c) = &checkpoint {
        p.warnings(&c.warnings);
    }
    let created = Created {
        machine: &info,
        checkpoint: checkpoint.as_ref(),
    };
    p.result(&created, |out| match &checkpoint {
        Some(c) => writeln!(out, "{}", c.checkpoint.id),
        None => Ok(()),
    })?;
    match &checkpoint {
        Some(c) => p.note(format!(
            "created machine {} in {} from {}: checkpoint {} ({}, {})",
            info.name,
            info.dir.display(),
            opts.from_tar
                .as_deref()
                .unwrap_or(std::path::Path::new("the archive"))
                .display(),
            c.checkpoint.id,
            output::count(c.checkpoint.entries, "entry", "entries"),
            output::size(c.checkpoint.logical_bytes),
        )),
        None => p.note(format!(
            "created machine {}: tracking {} in place (nothing was copied)\n\
             next: `cairn checkpoint create {}` saves its current state",
            info.name,
            info.dir.display(),
            info.name
        )),
    }
    Ok(())
}

pub fn list(repo: &Repo, p: &Printer) -> anyhow::Result<()> {
    let machines = repo.machines()?;
    p.result(&machines, |out| {
        if machines.is_empty() {
            return Ok(());
        }
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("KIND", Align::Left),
            ("UP", Align::Left),
            ("CHECKPOINTS", Align::Right),
            ("LATEST", Align::Left),
            ("DIR", Align::Left),
        ]);
        for m in &machines {
            t.row(vec![
                m.name.clone(),
                json_name(&m.kind),
                // Only a mounted machine goes up and down; a directory machine always is.
                match m.up {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "-",
                }
                .to_owned(),
                m.checkpoints.to_string(),
                m.latest.clone().unwrap_or_else(|| "-".to_owned()),
                m.dir.display().to_string(),
            ]);
        }
        t.write(out)
    })?;
    if machines.is_empty() {
        p.note("no machines yet; `cairn machine create NAME --dir DIR` tracks a directory");
    }
    Ok(())
}

pub fn show(repo: &Repo, p: &Printer, name: &str) -> anyhow::Result<()> {
    let m = repo.machine_info(name)?;
    p.result(&m, |out| {
        let none = || "-".to_owned();
        let mut fields = vec![
            ("name", m.name.clone()),
            ("kind", json_name(&m.kind)),
            ("dir", m.dir.display().to_string()),
            ("created", output::time(m.created_at)),
            ("checkpoints", m.checkpoints.to_string()),
            ("latest", m.latest.clone().unwrap_or_else(none)),
            ("based on", m.head.clone().unwrap_or_else(none)),
        ];
        if let Some(up) = m.up {
            fields.push(("up", if up { "yes" } else { "no" }.to_owned()));
        }
        if let Some(reach) = &m.reach {
            fields.push(("reach at", reach.display().to_string()));
        }
        if let Some(base) = m.base {
            fields.push(("base tree", base.short()));
        }
        output::fields(out, &fields)
    })?;
    if let Some(r) = &m.interrupted_restore {
        p.warnings(&[format!(
            "a restore to {r} was interrupted; the next command on {} completes it",
            m.name
        )]);
    }
    Ok(())
}

pub fn remove(repo: &Repo, p: &Printer, name: &str) -> anyhow::Result<()> {
    let info = repo.machine_info(name)?;
    repo.remove_machine(name)?;
    let removed = Removed {
        removed: &info.name,
        dir: &info.dir,
    };
    p.result(&removed, |_| Ok(()))?;
    p.note(format!(
        "removed machine {} and its {}; its directory {} was left alone\n\
         `cairn gc` frees the space its checkpoints used",
        info.name,
        output::count(info.checkpoints, "checkpoint", "checkpoints"),
        info.dir.display()
    ));
    Ok(())
}
