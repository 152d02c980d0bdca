//! `cairn`: the command-line interface over `cairn_core`.
//!
//! The binary is thin: `args` is the command line as clap sees it, `config` turns it into
//! validated engine options (every usage error is found there, before any work), `commands`
//! makes the engine calls, and `output`/`progress` render the results.
//!
//! Exit status: 0 success, 1 the operation failed, 2 the command line was wrong. A closed
//! stdout (`cairn diff … | head`) ends quietly with 0. Panics are reported as one line.

mod args;
mod commands;
mod config;
mod output;
mod progress;

use crate::commands::Status;
use crate::config::{Config, ProcessEnv, UsageError};
use clap::Parser;
use std::ffi::OsString;
use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether errors go to stdout as JSON; read by the panic path.
static JSON: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    install_panic_hook();
    let argv: Vec<OsString> = std::env::args_os().collect();
    JSON.store(wants_json(&argv), Ordering::Relaxed);
    let cli = match args::Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => return clap_error(&e),
    };
    init_logging();
    let config = match Config::from_cli(cli, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    JSON.store(config.output.json, Ordering::Relaxed);
    match std::panic::catch_unwind(move || commands::run(config)) {
        Ok(Ok(Status::Success)) => ExitCode::SUCCESS,
        Ok(Ok(Status::Failed)) => ExitCode::FAILURE,
        Ok(Ok(Status::Code(c))) => ExitCode::from(c),
        Ok(Err(e)) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            report_error(&error_text(&e));
            ExitCode::FAILURE
        }
        // The hook has already said what happened on stderr.
        Err(_) => {
            if JSON.load(Ordering::Relaxed) {
                print_json_error("internal error: cairn stopped unexpectedly (details on stderr)");
            }
            ExitCode::FAILURE
        }
    }
}

/// `--json` before any `--`: clap has not run yet when its own errors need reporting.
fn wants_json(argv: &[OsString]) -> bool {
    argv.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--json")
}

fn clap_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let code = e.exit_code();
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        // Help and version go to stdout; a closed pipe there is not an error.
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if JSON.load(Ordering::Relaxed) {
        print_json_error(&clap_message(&e.render().to_string()));
    }
    let _ = e.print();
    ExitCode::from(u8::try_from(code).unwrap_or(2))
}

/// The message of a rendered clap error on one line: its first paragraph, which may go on
/// below the `error:` line (the missing arguments are listed there), without the usage.
fn clap_message(rendered: &str) -> String {
    let text = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    match text.strip_prefix("error: ").unwrap_or(&text) {
        "" => "invalid command line".to_owned(),
        t => t.to_owned(),
    }
}

fn usage_error(e: &UsageError) -> ExitCode {
    report_error(&e.0);
    if !JSON.load(Ordering::Relaxed) {
        let _ = writeln!(io::stderr().lock(), "\nFor more information, try '--help'.");
    }
    ExitCode::from(2)
}

/// `error: …` on stderr, and with `--json` also `{"error": "…"}` on stdout.
fn report_error(message: &str) {
    if JSON.load(Ordering::Relaxed) {
        print_json_error(&message.replace("\n  caused by: ", ": "));
    }
    let _ = writeln!(io::stderr().lock(), "error: {message}");
}

fn print_json_error(message: &str) {
    let doc = serde_json::json!({ "error": message });
    let _ = writeln!(io::stdout().lock(), "{doc}");
}

/// The error and its causes, one per line. A cause whose text the message already contains
/// (engine errors embed their source) is not repeated.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    let mut shown = text.clone();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if shown.contains(&c) {
            continue;
        }
        text.push_str("\n  caused by: ");
        text.push_str(&c);
        shown.push_str(&c);
    }
    text
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// A panic is a bug: say so in one line, without a backtrace.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let _ = writeln!(
            io::stderr().lock(),
            "error: internal error: {msg}{at}\nThis is a bug in cairn; please report it with the command you ran."
        );
    }));
}

/// Diagnostics on stderr: warnings by default, `CAIRN_LOG=debug` (or any filter) for more.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let (filter, bad) = match std::env::var("CAIRN_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new("warn"), Some(format!("{spec:?}: {e}"))),
        },
        _ => (EnvFilter::new("warn"), None),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_target(false)
        .try_init();
    if let Some(bad) = bad {
        tracing::warn!("CAIRN_LOG {bad}; showing warnings only (try CAIRN_LOG=debug)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_seen_before_double_dash_only() {
        let argv = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(wants_json(&argv(&["cairn", "du", "--json"])));
        assert!(!wants_json(&argv(&["cairn", "du"])));
        assert!(!wants_json(&argv(&["cairn", "diff", "--", "--json"])));
        assert!(!wants_json(&argv(&["--json"])));
    }

    #[test]
    fn clap_messages_keep_their_whole_first_paragraph() {
        let rendered = "error: the following required arguments were not provided:\n  --dir <DIR>\n\nUsage: cairn machine create --dir <DIR> <NAME>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            clap_message(rendered),
            "the following required arguments were not provided: --dir <DIR>"
        );
        assert_eq!(
            clap_message("error: unrecognized subcommand 'bogus'\n\nUsage: cairn"),
            "unrecognized subcommand 'bogus'"
        );
        assert_eq!(clap_message(""), "invalid command line");
    }

    #[test]
    fn causes_are_not_repeated() {
        let io = io::Error::new(io::ErrorKind::PermissionDenied, "permission denied");
        let e = anyhow::Error::new(io).context("open /x: permission denied");
        assert_eq!(error_text(&e), "open /x: permission denied");
        let io = io::Error::new(io::ErrorKind::PermissionDenied, "permission denied");
        let e = anyhow::Error::new(io).context("write /x.tar");
        assert_eq!(
            error_text(&e),
            "write /x.tar\n  caused by: permission denied"
        );
    }

    #[test]
    fn broken_pipes_are_found_anywhere_in_the_chain() {
        let e =
            anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("write stdout");
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
