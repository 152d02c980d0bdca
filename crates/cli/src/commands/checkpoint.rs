//! `cairn checkpoint create | list | show | delete` (and `cairn log MACHINE`).

use crate::output::{self, Align, Printer, Table};
use crate::progress::BarProgress;
use cairn_core::{CheckpointInfo, CheckpointOptions, Ref, Repo};

pub fn create(
    repo: &Repo,
    p: &Printer,
    machine: &str,
    opts: &CheckpointOptions,
) -> anyhow::Result<()> {
    let progress = BarProgress::new(p.mode);
    let report = repo.checkpoint(machine, opts, &progress)?;
    progress.clear();
    p.warnings(&report.warnings);
    let c = &report.checkpoint;
    p.result(&report, |out| writeln!(out, "{}", c.id))?;
    let named = c
        .name
        .as_ref()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    if report.unchanged {
        p.note(format!(
            "created {}{named}: nothing changed since {}",
            c.id,
            c.parent.as_deref().unwrap_or("the previous checkpoint")
        ));
    } else {
        p.note(format!(
            "created {}{named}: {}, {}; read {}, stored {} new",
            c.id,
            output::count(c.entries, "entry", "entries"),
            output::size(c.logical_bytes),
            output::size(report.read_bytes),
            output::size(report.added_bytes),
        ));
    }
    if report.phases.iter().any(|ph| ph.name == "freeze") {
        p.note(format!("time: {}", super::mounted::phases(&report.phases)));
    }
    Ok(())
}

pub fn list(repo: &Repo, p: &Printer, machine: &str, limit: Option<u64>) -> anyhow::Result<()> {
    let mut all = repo.checkpoint_list(machine)?;
    if let Some(n) = limit {
        let keep = usize::try_from(n).unwrap_or(usize::MAX);
        all.drain(..all.len().saturating_sub(keep));
    }
    p.result(&all, |out| {
        if all.is_empty() {
            return Ok(());
        }
        table(&all).write(out)
    })?;
    if all.is_empty() {
        p.note(format!(
            "{machine} has no checkpoints yet; `cairn checkpoint create {machine}` makes one"
        ));
    }
    Ok(())
}

fn table(checkpoints: &[CheckpointInfo]) -> Table {
    let mut t = Table::new(&[
        ("ID", Align::Left),
        ("NAME", Align::Left),
        ("TIME", Align::Left),
        ("AUTHOR", Align::Left),
        ("PARENT", Align::Left),
        ("LOGICAL", Align::Right),
        ("STORED", Align::Right),
        ("EXCLUSIVE", Align::Right),
        ("NOTE", Align::Left),
    ]);
    for c in checkpoints {
        t.row(vec![
            if c.auto {
                format!("{} (auto)", c.id)
            } else {
                c.id.clone()
            },
            c.name.clone().unwrap_or_else(|| "-".to_owned()),
            output::time(c.created_at),
            output::cell(&c.author, 24),
            c.parent.clone().unwrap_or_else(|| "-".to_owned()),
            output::size(c.logical_bytes),
            output::opt_size(c.stored_bytes),
            output::opt_size(c.exclusive_bytes),
            output::cell(&c.note, 50),
        ]);
    }
    t
}

pub fn show(repo: &Repo, p: &Printer, r: &Ref) -> anyhow::Result<()> {
    let c = repo.checkpoint_show(r)?;
    p.result(&c, |out| {
        let none = || "-".to_owned();
        output::fields(
            out,
            &[
                (
                    "id",
                    if c.auto {
                        format!("{} (auto)", c.id)
                    } else {
                        c.id.clone()
                    },
                ),
                ("name", c.name.clone().unwrap_or_else(none)),
                ("note", output::cell(&c.note, 2000)),
                ("author", c.author.clone()),
                ("created", output::time(c.created_at)),
                ("parent", c.parent.clone().unwrap_or_else(none)),
                ("entries", c.entries.to_string()),
                ("logical", output::size(c.logical_bytes)),
                ("stored", output::opt_size(c.stored_bytes)),
                ("exclusive", output::opt_size(c.exclusive_bytes)),
                ("root", c.root.to_string()),
            ],
        )
    })
}

pub fn delete(repo: &Repo, p: &Printer, r: &Ref) -> anyhow::Result<()> {
    let c = repo.checkpoint_delete(r)?;
    p.result(&c, |_| Ok(()))?;
    p.note(format!(
        "deleted {}; `cairn gc` frees the space only it used{}",
        c.id,
        c.exclusive_bytes
            .map(|b| format!(" ({})", output::size(b)))
            .unwrap_or_default()
    ));
    Ok(())
}
