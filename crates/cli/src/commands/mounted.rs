//! `cairn machine create --mounted`, `machine up | down`, and `fork` into mounted machines.

use super::Status;
use crate::output::Printer;
use crate::progress::BarProgress;
use cairn_core::{CreateMountedOptions, Phase, Ref, Repo, RunSpec};
use std::os::unix::process::ExitStatusExt;

/// `lower 48.1 ms, overlay 0.6 ms`.
pub fn phases(phases: &[Phase]) -> String {
    phases
        .iter()
        .map(|p| format!("{} {:.1} ms", p.name, p.ms))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn create(repo: &Repo, p: &Printer, opts: &CreateMountedOptions) -> anyhow::Result<()> {
    let progress = BarProgress::new(p.mode);
    let info = repo.create_mounted_machine(opts, &progress)?;
    progress.clear();
    p.result(&info, |out| match &info.head {
        Some(h) => writeln!(out, "{h}"),
        None => Ok(()),
    })?;
    p.note(format!(
        "created mounted machine {} ({}); it appears at {} once up\n\
         next: `cairn machine up {}`",
        info.name,
        info.head
            .as_deref()
            .map_or("empty".to_owned(), |h| format!("from {h}")),
        info.at.display(),
        info.name
    ));
    Ok(())
}

pub fn up(repo: &Repo, p: &Printer, name: &str) -> anyhow::Result<()> {
    let report = repo.machine_up(name)?;
    p.warnings(&report.recovered);
    p.result(&report, |out| writeln!(out, "{}", report.at.display()))?;
    if report.already_up {
        p.note(format!("{name} was already up"));
    } else {
        p.note(format!("{name} is up ({})", phases(&report.phases)));
    }
    if let Some(reach) = &report.reach {
        p.note(format!(
            "without root, {name}'s root is mounted in a user namespace of its own: enter it \
             with `cairn run {name} -- CMD` or `cairn shell {name}`; from the host it is at {}",
            reach.display()
        ));
    }
    Ok(())
}

pub fn down(repo: &Repo, p: &Printer, name: &str) -> anyhow::Result<()> {
    let report = repo.machine_down(name)?;
    p.result(&report, |_| Ok(()))?;
    if report.was_up {
        p.note(format!("{name} is down ({})", phases(&report.phases)));
    } else {
        p.note(format!("{name} was not up"));
    }
    Ok(())
}

pub fn fork(repo: &Repo, p: &Printer, source: &Ref, names: &[String]) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let made = repo.fork_mounted(source, names)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    p.result(&made, |out| {
        for m in &made {
            writeln!(out, "{}", m.head.as_deref().unwrap_or(&m.name))?;
        }
        Ok(())
    })?;
    p.note(format!(
        "forked {source} into {} mounted machine{} in {ms:.1} ms (nothing copied); \
         bring one up with `cairn machine up {}`",
        made.len(),
        if made.len() == 1 { "" } else { "s" },
        names[0]
    ));
    Ok(())
}

/// `run` and `shell`: the command's own exit code, or 128 + the signal that ended it.
pub fn run(repo: &Repo, p: &Printer, machine: &str, spec: &RunSpec) -> anyhow::Result<Status> {
    let status = repo.run(machine, spec, &mut |start| {
        if start.brought_up {
            p.note(format!("{machine} was down; brought it up"));
        }
    })?;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    Ok(Status::Code(u8::try_from(code).unwrap_or(1)))
}
