//! `cairn du`, `cairn gc`, `cairn check`, `cairn log --audit`.

use super::Status;
use crate::output::{self, Align, Printer, Table};
use crate::progress::BarProgress;
use cairn_core::{
    CheckOptions, CheckReport, DuReport, GcOptions, GcReport, RebuildReport, Repo, RepoOptions,
};
use serde::Serialize;
use std::io::{self, Write};

pub fn du(repo: &Repo, p: &Printer) -> anyhow::Result<()> {
    let report = repo.usage()?;
    p.result(&report, |out| write_du(out, &report))
}

fn write_du(out: &mut dyn Write, r: &DuReport) -> io::Result<()> {
    if !r.machines.is_empty() {
        let mut t = Table::new(&[
            ("MACHINE / CHECKPOINT", Align::Left),
            ("LOGICAL", Align::Right),
            ("STORED", Align::Right),
            ("EXCLUSIVE", Align::Right),
        ]);
        for m in &r.machines {
            t.row(vec![
                m.name.clone(),
                output::size(m.logical_bytes),
                output::size(m.stored_bytes),
                output::size(m.exclusive_bytes),
            ]);
            for c in &m.checkpoints {
                t.row(vec![
                    format!("  {}", c.id),
                    output::size(c.logical_bytes),
                    output::size(c.stored_bytes),
                    output::size(c.exclusive_bytes),
                ]);
            }
        }
        t.write(out)?;
        writeln!(out)?;
    }
    writeln!(
        out,
        "store: {} in packs, {} referenced, {} unreferenced{}",
        output::size(r.store_bytes),
        output::size(r.referenced_bytes),
        output::size(r.unreferenced_bytes),
        if r.unreferenced_bytes > 0 {
            " (`cairn gc` frees it)"
        } else {
            ""
        }
    )
}

pub fn gc(repo: &Repo, p: &Printer, opts: &GcOptions) -> anyhow::Result<()> {
    let progress = BarProgress::new(p.mode);
    let report = repo.gc(opts, &progress)?;
    progress.clear();
    p.result(&report, |out| write_gc(out, &report, opts))
}

fn write_gc(out: &mut dyn Write, r: &GcReport, opts: &GcOptions) -> io::Result<()> {
    let (would, marked) = if r.dry_run {
        ("would be ", "would be marked")
    } else {
        ("", "marked")
    };
    writeln!(
        out,
        "{}: {} deleted, {} rewritten, {} {marked} unreferenced, {} kept (in use again)",
        output::count(r.packs_total, "pack", "packs"),
        r.packs_deleted,
        r.packs_repacked,
        r.packs_doomed,
        r.packs_revived,
    )?;
    if r.images_evicted > 0 {
        writeln!(
            out,
            "{} of trees no machine stands on {would}removed to keep lower images within --images-max",
            output::count(r.images_evicted, "lower image", "lower images"),
        )?;
    }
    if r.copies_deleted > 0 {
        writeln!(
            out,
            "{} of unused files {would}removed from the data layer",
            output::count(r.copies_deleted, "copy", "copies"),
        )?;
    }
    writeln!(out, "{} {would}freed", output::size(r.bytes_freed))?;
    if r.bytes_pending > 0 {
        writeln!(
            out,
            "{} pending: freed by a gc after the grace period ({}s)",
            output::size(r.bytes_pending),
            opts.grace.as_secs()
        )?;
    }
    Ok(())
}

/// The JSON of `check --repair`: the check's fields, and what the rebuild did (if one ran).
#[derive(Serialize)]
struct Repaired<'a> {
    rebuild: Option<&'a RebuildReport>,
    #[serde(flatten)]
    check: &'a CheckReport,
}

/// `cairn check [--repair]`. A catalog too damaged to open or query is reported as a finding
/// that names the checkpoints it hides; with `repair` it is rebuilt from the store and checked.
pub fn check(
    repo_opts: &RepoOptions,
    p: &Printer,
    opts: &CheckOptions,
    repair: bool,
) -> anyhow::Result<Status> {
    let progress = BarProgress::new(p.mode);
    let run = || Repo::open(repo_opts).and_then(|repo| repo.check(opts, &progress));
    let mut rebuilt = None;
    let mut damaged_catalog = false;
    let report = match run() {
        Err(e) if Repo::is_catalog_damage(&e) && repair => {
            let r = Repo::rebuild_catalog(repo_opts)?;
            rebuilt = Some(r);
            run()?
        }
        Err(e) if Repo::is_catalog_damage(&e) => {
            // The report adds the advice to repair; keep it from being said twice.
            let text = e.to_string();
            let reason = text
                .split("; run `cairn check --repair`")
                .next()
                .unwrap_or(&text);
            damaged_catalog = true;
            Repo::damaged_catalog_report(repo_opts, reason)?
        }
        other => other?,
    };
    progress.clear();
    if let Some(r) = &rebuilt {
        p.note(rebuild_summary(r));
    }
    if repair {
        let doc = Repaired {
            rebuild: rebuilt.as_ref(),
            check: &report,
        };
        p.result(&doc, |out| write_check(out, &report))?;
    } else {
        p.result(&report, |out| write_check(out, &report))?;
    }
    if report.ok() {
        return Ok(Status::Success);
    }
    if !p.mode.json && damaged_catalog {
        let _ = writeln!(
            io::stderr().lock(),
            "error: the catalog is damaged; `cairn check --repair` rebuilds it from the store"
        );
    } else if !p.mode.json {
        let _ = writeln!(
            io::stderr().lock(),
            "error: check found {}; the checkpoints named above cannot be restored exactly: \
             restore the paths from another checkpoint, or delete the damaged checkpoints",
            output::count(report.findings.len() as u64, "problem", "problems")
        );
    }
    Ok(Status::Failed)
}

/// `rebuilt the catalog from the store: 2 machines, 5 checkpoints, 9 packs; the damaged one is
/// at …`.
fn rebuild_summary(r: &RebuildReport) -> String {
    let mut s = format!(
        "rebuilt the catalog from the store: {}, {}, {}",
        output::count(r.machines, "machine", "machines"),
        output::count(r.checkpoints, "checkpoint", "checkpoints"),
        output::count(r.packs, "pack", "packs"),
    );
    if let Some(aside) = &r.moved_aside {
        s.push_str(&format!(
            "; the damaged catalog is kept at {}",
            aside.display()
        ));
    }
    for skipped in &r.skipped {
        s.push_str(&format!("\nskipped (unreadable): {skipped}"));
    }
    s
}

fn write_check(out: &mut dyn Write, r: &CheckReport) -> io::Result<()> {
    for f in &r.findings {
        writeln!(out, "problem: {}: {}", f.object, f.problem)?;
        if !f.checkpoints.is_empty() {
            writeln!(out, "  checkpoints: {}", f.checkpoints.join(", "))?;
        }
        if !f.paths.is_empty() {
            writeln!(out, "  paths: {}", f.paths.join(", "))?;
        }
    }
    let copies = if r.copies > 0 {
        format!(
            ", {}",
            output::count(r.copies, "data layer copy", "data layer copies")
        )
    } else {
        String::new()
    };
    writeln!(
        out,
        "checked {}, {}, {}, {}{copies} (read {}): {}",
        output::count(r.checkpoints, "checkpoint", "checkpoints"),
        output::count(r.trees, "tree", "trees"),
        output::count(r.chunks, "chunk", "chunks"),
        output::count(r.packs, "pack", "packs"),
        output::size(r.bytes_read),
        if r.ok() {
            "no problems".to_owned()
        } else {
            output::count(r.findings.len() as u64, "problem", "problems")
        }
    )
}

pub fn audit_log(
    repo: &Repo,
    p: &Printer,
    machine: Option<&str>,
    limit: Option<u64>,
) -> anyhow::Result<()> {
    let rows = repo.audit_log(machine, limit)?;
    p.result(&rows, |out| {
        if rows.is_empty() {
            return Ok(());
        }
        let mut t = Table::new(&[
            ("TIME", Align::Left),
            ("AUTHOR", Align::Left),
            ("OP", Align::Left),
            ("MACHINE", Align::Left),
            ("TARGET", Align::Left),
            ("OUTCOME", Align::Left),
            ("DETAIL", Align::Left),
        ]);
        for r in &rows {
            t.row(vec![
                output::time(r.time),
                output::cell(&r.author, 24),
                r.op.clone(),
                r.machine.clone().unwrap_or_else(|| "-".to_owned()),
                r.target.clone().unwrap_or_else(|| "-".to_owned()),
                r.outcome.clone(),
                output::cell(&r.detail, 80),
            ]);
        }
        t.write(out)
    })?;
    if rows.is_empty() {
        p.note("the audit log is empty");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn text(f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> String {
        let mut out = Vec::new();
        f(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn gc_says_would_on_a_dry_run() {
        let opts = GcOptions {
            grace: Duration::from_secs(600),
            repack_below: 0.5,
            images_max: cairn_core::DEFAULT_IMAGES_MAX,
            dry_run: true,
        };
        let r = GcReport {
            packs_total: 3,
            packs_doomed: 1,
            bytes_pending: 2000,
            dry_run: true,
            ..Default::default()
        };
        let s = text(|o| write_gc(o, &r, &opts));
        assert!(
            s.contains("3 packs: 0 deleted, 0 rewritten, 1 would be marked unreferenced"),
            "{s}"
        );
        assert!(s.contains("0 B would be freed"), "{s}");
        assert!(s.contains("2.0 kB pending"), "{s}");
    }

    #[test]
    fn check_names_what_is_affected() {
        let r = CheckReport {
            checkpoints: 2,
            findings: vec![cairn_core::Finding {
                object: "pack 00ab".into(),
                problem: "missing".into(),
                checkpoints: vec!["web@v2".into()],
                paths: vec!["/etc/hosts".into()],
            }],
            ..Default::default()
        };
        let s = text(|o| write_check(o, &r));
        assert!(
            s.starts_with(
                "problem: pack 00ab: missing\n  checkpoints: web@v2\n  paths: /etc/hosts\n"
            ),
            "{s}"
        );
        assert!(s.ends_with(": 1 problem\n"), "{s}");
    }
}
