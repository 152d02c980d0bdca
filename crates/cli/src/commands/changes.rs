//! `cairn diff`, `cairn restore`, `cairn fork`.

use super::inner_path;
use crate::output::{self, Printer};
use crate::progress::BarProgress;
use cairn_core::{Change, ForkOptions, Ref, Repo, RestoreOptions, RestoreReport};
use std::io::{self, Write};

pub fn diff(repo: &Repo, p: &Printer, from: &Ref, to: Option<&Ref>) -> anyhow::Result<()> {
    let changes = repo.diff(from, to)?;
    p.result(&changes, |out| write_changes(out, &changes))?;
    if changes.is_empty() {
        let other = to.map_or_else(|| "the live directory".to_owned(), Ref::to_string);
        p.note(format!("no differences between {from} and {other}"));
    }
    Ok(())
}

/// `A /etc/x`, `M /etc/y (mode, mtime)`, `D /usr/z`: one change per line (the engine escapes
/// paths so they cannot span lines).
fn write_changes(out: &mut dyn Write, changes: &[Change]) -> io::Result<()> {
    for c in changes {
        if c.what.is_empty() {
            writeln!(out, "{} {}", c.kind.letter(), c.path)?;
        } else {
            writeln!(
                out,
                "{} {} ({})",
                c.kind.letter(),
                c.path,
                c.what.join(", ")
            )?;
        }
    }
    Ok(())
}

pub fn restore(
    repo: &Repo,
    p: &Printer,
    target: &Ref,
    opts: &RestoreOptions,
) -> anyhow::Result<()> {
    let progress = BarProgress::new(p.mode);
    let report = repo.restore(target, opts, &progress)?;
    progress.clear();
    if let Some(done) = &report.completed_interrupted {
        p.note(format!("first completed an interrupted restore to {done}"));
    }
    p.warnings(&report.warnings);
    p.result(&report, |out| {
        let what = match &opts.path {
            Some(path) => format!("{} of {}", inner_path(path), report.target),
            None => report.target.clone(),
        };
        let partial = opts.path.as_ref().is_some_and(|p| !p.is_empty());
        // Only a mounted machine reports phases: re-pointed whole, or one path written
        // through its overlay.
        let phases = match report.phases.is_empty() {
            true => String::new(),
            false => format!(" ({})", super::mounted::phases(&report.phases)),
        };
        if !partial && !phases.is_empty() {
            writeln!(out, "restored {what}: re-pointed, nothing copied{phases}")?;
        } else if nothing_written(&report) {
            writeln!(out, "{what} is already in place: nothing to change{phases}")?;
        } else {
            writeln!(out, "restored {what}: {}{phases}", effects(&report))?;
        }
        if let Some(undo) = &report.undo {
            writeln!(out, "undo with: cairn restore {undo}")?;
        }
        Ok(())
    })
}

pub fn fork(repo: &Repo, p: &Printer, source: &Ref, opts: &ForkOptions) -> anyhow::Result<()> {
    let progress = BarProgress::new(p.mode);
    let report = repo.fork(source, opts, &progress)?;
    progress.clear();
    p.warnings(&report.warnings);
    p.result(&report, |out| writeln!(out, "{}", report.target))?;
    p.note(format!(
        "forked {source} into machine {} at {}: {}",
        opts.name,
        opts.dir.display(),
        effects(&report)
    ));
    Ok(())
}

fn nothing_written(r: &RestoreReport) -> bool {
    r.written_files == 0 && r.removed == 0 && r.metadata_only == 0
}

/// `12 files written (3.4 MB), 3 removed, 5 with new metadata only`.
fn effects(r: &RestoreReport) -> String {
    let mut parts = vec![format!(
        "{} written ({})",
        output::count(r.written_files, "file", "files"),
        output::size(r.written_bytes)
    )];
    if r.removed > 0 {
        parts.push(format!(
            "{} removed",
            output::count(r.removed, "entry", "entries")
        ));
    }
    if r.metadata_only > 0 {
        parts.push(format!(
            "{} with new metadata only",
            output::count(r.metadata_only, "entry", "entries")
        ));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_read_well() {
        let mut r = RestoreReport {
            written_files: 1,
            written_bytes: 1500,
            ..Default::default()
        };
        assert_eq!(effects(&r), "1 file written (1.5 kB)");
        r.removed = 2;
        r.metadata_only = 1;
        assert_eq!(
            effects(&r),
            "1 file written (1.5 kB), 2 entries removed, 1 entry with new metadata only"
        );
        assert!(!nothing_written(&r));
        assert!(nothing_written(&RestoreReport::default()));
    }
}
