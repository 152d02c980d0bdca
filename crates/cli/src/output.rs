//! Rendering for people and for programs: sizes, times, aligned tables, and the rule that with
//! `--json` stdout carries exactly one JSON document.

use crate::config::OutputMode;
use serde::Serialize;
use std::io::{self, Write};

/// Where a command's results and remarks go.
pub struct Printer {
    pub mode: OutputMode,
}

impl Printer {
    /// Prints the result: `value` as JSON with `--json`, else whatever `human` writes.
    pub fn result<T: Serialize + ?Sized>(
        &self,
        value: &T,
        human: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> anyhow::Result<()> {
        let stdout = io::stdout();
        let mut out = io::BufWriter::new(stdout.lock());
        if self.mode.json {
            serde_json::to_writer_pretty(&mut out, value)?;
            out.write_all(b"\n")?;
        } else {
            human(&mut out)?;
        }
        out.flush()?;
        Ok(())
    }

    /// A summary or hint on stderr, for people only: not with `--json` or `--quiet`.
    pub fn note(&self, msg: impl std::fmt::Display) {
        if !self.mode.json && !self.mode.quiet {
            let _ = writeln!(io::stderr().lock(), "{msg}");
        }
    }

    /// Warnings go to stderr unless `--quiet`; with `--json` they are in the report as well.
    pub fn warnings(&self, warnings: &[String]) {
        if self.mode.quiet {
            return;
        }
        let mut err = io::stderr().lock();
        for w in warnings {
            let _ = writeln!(err, "warning: {w}");
        }
    }
}

/// Sizes in decimal units: `512 B`, `201.3 MB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    for unit in UNITS {
        value /= 1000.0;
        // Round first, so 999.96 kB shows as 1.0 MB rather than 1000.0 kB.
        if (value * 10.0).round() < 10_000.0 || unit == "EB" {
            return format!("{value:.1} {unit}");
        }
    }
    unreachable!("the loop returns at EB")
}

/// An optional size, `-` when not computed.
pub fn opt_size(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".to_owned(), size)
}

/// Unix nanoseconds as `2026-11-22 10:15:03 UTC`.
pub fn time(unix_ns: i64) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), exact for all i64 days
/// that fit a year in i64. The era is the 400-year cycle, which has a fixed number of days.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Makes a free-text field (a note, a detail) fit one table cell: control characters become
/// spaces and long text is cut with `…`.
pub fn cell(text: &str, max_chars: usize) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() <= max_chars {
        clean
    } else {
        let mut cut: String = clean.chars().take(max_chars.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table whose columns are padded to their widest cell; the last column is not padded so
/// lines carry no trailing spaces.
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(
            cells.len(),
            self.columns.len(),
            "invariant: one cell per column"
        );
        self.rows.push(cells);
    }

    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| width(h)).collect();
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(c));
            }
        }
        let headers: Vec<String> = self.columns.iter().map(|(h, _)| (*h).to_owned()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            let last = row.len().saturating_sub(1);
            for (i, c) in row.iter().enumerate() {
                let pad = widths[i] - width(c);
                if i > 0 {
                    line.push_str("  ");
                }
                match self.columns[i].1 {
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(c);
                    }
                    Align::Left => {
                        line.push_str(c);
                        if i != last {
                            line.extend(std::iter::repeat_n(' ', pad));
                        }
                    }
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// Lines of `key: value`, with the values aligned.
pub fn fields(out: &mut dyn Write, rows: &[(&str, String)]) -> io::Result<()> {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        writeln!(out, "{:<w$}  {v}", format!("{k}:"), w = w + 1)?;
    }
    Ok(())
}

/// `1 file`, `2 files`.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_decimal_units() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(999), "999 B");
        assert_eq!(size(1000), "1.0 kB");
        assert_eq!(size(1536), "1.5 kB");
        assert_eq!(size(201_300_000), "201.3 MB");
        assert_eq!(size(999_960), "1.0 MB");
        assert_eq!(size(999_940), "999.9 kB");
        assert_eq!(size(5_000_000_000_000), "5.0 TB");
        assert_eq!(size(u64::MAX), "18.4 EB");
        assert_eq!(opt_size(None), "-");
    }

    #[test]
    fn times_are_utc_civil_dates() {
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            time(1_795_342_503 * 1_000_000_000),
            "2026-11-22 10:15:03 UTC"
        );
        assert_eq!(time(951_782_400 * 1_000_000_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(
            time(4_107_542_399 * 1_000_000_000 + 999_999_999),
            "2100-02-28 23:59:59 UTC"
        );
        assert_eq!(time(-1), "1969-12-31 23:59:59 UTC");
        assert_eq!(
            time(-86_400 * 365 * 1_000_000_000),
            "1969-01-01 00:00:00 UTC"
        );
    }

    #[test]
    fn civil_dates_round_trip_every_day_of_four_centuries() {
        // Days from civil, the inverse, checked against the forward algorithm.
        fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
            let y = if m <= 2 { y - 1 } else { y };
            let era = y.div_euclid(400);
            let yoe = y.rem_euclid(400);
            let mp = i64::from((m + 9) % 12);
            let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
            let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
            era * 146_097 + doe - 719_468
        }
        for z in -146_097..146_097 {
            let (y, m, d) = civil_from_days(z);
            assert!((1..=12).contains(&m) && (1..=31).contains(&d));
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&[
            ("ID", Align::Left),
            ("SIZE", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(vec!["web@v1".into(), "1.0 kB".into(), "first".into()]);
        t.row(vec![
            "web@v10 (auto)".into(),
            "12.5 MB".into(),
            String::new(),
        ]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ID                 SIZE  NOTE\n\
             web@v1           1.0 kB  first\n\
             web@v10 (auto)  12.5 MB\n"
        );
    }

    #[test]
    fn cells_are_one_line_and_bounded() {
        assert_eq!(cell("a\nb", 10), "a b");
        assert_eq!(cell("abcdefgh", 5), "abcd…");
        assert_eq!(cell("äöü", 3), "äöü");
    }

    #[test]
    fn fields_align() {
        let mut out = Vec::new();
        fields(
            &mut out,
            &[("id", "web@v1".into()), ("author", "ann".into())],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id:      web@v1\nauthor:  ann\n"
        );
    }
}
