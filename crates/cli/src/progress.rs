//! The engine's [`Progress`] drawn as a bar (or a spinner when the total is unknown) on stderr.
//! Drawn only for a person watching: stderr is a terminal and neither `--json` nor `--quiet`.

use crate::config::OutputMode;
use cairn_core::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

const BYTES_TEMPLATE: &str = "{msg:>12} [{bar:30}] {decimal_bytes}/{decimal_total_bytes} ({decimal_bytes_per_sec}, {eta} left)";
const SPINNER_TEMPLATE: &str = "{spinner} {msg} ({elapsed})";

/// A progress display that is either drawn on stderr or entirely hidden.
pub struct BarProgress {
    bar: ProgressBar,
    bytes: ProgressStyle,
    spinner: ProgressStyle,
}

impl BarProgress {
    pub fn new(mode: OutputMode) -> BarProgress {
        let visible = !mode.json && !mode.quiet && std::io::stderr().is_terminal();
        Self::with_target(if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        })
    }

    fn with_target(target: ProgressDrawTarget) -> BarProgress {
        let bytes = ProgressStyle::with_template(BYTES_TEMPLATE)
            .expect("invariant: the bytes template is valid")
            .progress_chars("=> ");
        let spinner = ProgressStyle::with_template(SPINNER_TEMPLATE)
            .expect("invariant: the spinner template is valid");
        BarProgress {
            bar: ProgressBar::with_draw_target(None, target),
            bytes,
            spinner,
        }
    }

    /// Removes the bar, so what is printed next starts on a clean line.
    pub fn clear(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for BarProgress {
    fn phase(&self, name: &str, total: Option<u64>) {
        self.bar.set_message(name.to_owned());
        match total {
            Some(total) => {
                self.bar.disable_steady_tick();
                self.bar.set_style(self.bytes.clone());
                self.bar.set_length(total);
            }
            None => {
                self.bar.set_style(self.spinner.clone());
                self.bar.unset_length();
                self.bar.enable_steady_tick(Duration::from_millis(100));
            }
        }
        self.bar.reset();
    }

    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }
}

impl Drop for BarProgress {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_switch_between_bar_and_spinner() {
        let p = BarProgress::with_target(ProgressDrawTarget::hidden());
        p.phase("reading", Some(100));
        p.advance(40);
        assert_eq!((p.bar.position(), p.bar.length()), (40, Some(100)));
        p.phase("writing", None);
        p.advance(3);
        assert_eq!((p.bar.position(), p.bar.length()), (3, None));
        assert_eq!(p.bar.message(), "writing");
        p.clear();
    }

    #[test]
    fn is_usable_from_many_threads() {
        fn sync<T: Send + Sync>(_: &T) {}
        let p = BarProgress::with_target(ProgressDrawTarget::hidden());
        sync(&p);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| p.advance(1));
            }
        });
        assert_eq!(p.bar.position(), 4);
    }

    #[test]
    fn hidden_without_a_person_watching() {
        let json = OutputMode {
            json: true,
            quiet: false,
        };
        assert!(BarProgress::new(json).bar.is_hidden());
        let quiet = OutputMode {
            json: false,
            quiet: true,
        };
        assert!(BarProgress::new(quiet).bar.is_hidden());
    }
}
