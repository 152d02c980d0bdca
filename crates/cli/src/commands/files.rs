//! `cairn cat` and `cairn export`: checkpoint content out as bytes or as a tar archive.

use crate::config::ExportTarget;
use crate::output::{self, Printer};
use crate::progress::BarProgress;
use anyhow::Context;
use cairn_core::{Ref, Repo};
use serde::Serialize;
use std::fs::{self, File};
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

pub fn cat(repo: &Repo, r: &Ref) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(256 * 1024, stdout.lock());
    repo.cat(r, &mut out)?;
    out.flush().context("write standard output")?;
    Ok(())
}

/// The JSON of `export`.
#[derive(Serialize)]
struct Exported<'a> {
    source: String,
    /// The archive's path, or `-` for stdout.
    output: &'a Path,
    bytes: u64,
}

pub fn export(repo: &Repo, p: &Printer, source: &Ref, target: &ExportTarget) -> anyhow::Result<()> {
    let progress = BarProgress::new(p.mode);
    let (bytes, shown) = match target {
        ExportTarget::Stdout => {
            if io::stdout().is_terminal() {
                anyhow::bail!(
                    "refusing to write a tar archive to a terminal; redirect stdout (`-o - > FILE`) or use -o FILE"
                );
            }
            let stdout = io::stdout();
            let out = Counting::new(BufWriter::with_capacity(256 * 1024, stdout.lock()));
            let mut out = repo.export(source, out, &progress)?;
            out.inner.flush().context("write standard output")?;
            (out.count, PathBuf::from("-"))
        }
        ExportTarget::File(path) => (export_to_file(repo, source, path, &progress)?, path.clone()),
    };
    progress.clear();
    let report = Exported {
        source: source.to_string(),
        output: &shown,
        bytes,
    };
    p.result(&report, |_| Ok(()))?;
    if matches!(target, ExportTarget::File(_)) {
        p.note(format!(
            "exported {source} to {} ({})",
            shown.display(),
            output::size(bytes)
        ));
    }
    Ok(())
}

/// Writes the archive beside `path` under a temporary name and renames it into place once it is
/// complete and synced, so a failed export never leaves a truncated archive (or destroys an
/// older one) at `path`.
fn export_to_file(
    repo: &Repo,
    source: &Ref,
    path: &Path,
    progress: &BarProgress,
) -> anyhow::Result<u64> {
    let name = path
        .file_name()
        .with_context(|| format!("-o {}: give a file name, not a directory", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".cairn-partial-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| {
            format!(
                "create {}; check that its directory exists and is writable",
                tmp.display()
            )
        })?;
    let result = (|| {
        let out = Counting::new(BufWriter::with_capacity(256 * 1024, file));
        let out = repo.export(source, out, progress)?;
        let count = out.count;
        let file = out
            .inner
            .into_inner()
            .map_err(io::IntoInnerError::into_error)
            .with_context(|| format!("write {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("sync {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
        Ok(count)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W> Counting<W> {
    fn new(inner: W) -> Self {
        Counting { inner, count: 0 }
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_counts_what_was_accepted() {
        let mut c = Counting::new(Vec::new());
        c.write_all(b"hello").unwrap();
        write!(c, " {}", 42).unwrap();
        assert_eq!((c.count, c.inner.as_slice()), (8, &b"hello 42"[..]));
    }
}
