//! Walking and applying POSIX metadata inside a machine directory, and tar import/export.
//!
//! - [`Dir`] is an open directory inside a machine. Every `Dir` is reached from the machine
//!   root one component at a time with `O_NOFOLLOW`, so holding a `Dir` proves the path to it
//!   contains no symlink.
//! - Every operation on a `Dir` takes a single validated name (no `/`, no `..`) and uses an
//!   `*at` call with no-follow semantics, or an `O_PATH|O_NOFOLLOW` handle on the entry.
//! - Metadata goes on in one order: owner, mode, xattrs, times (see `apply.rs` for why).
//!
//! **Invariant:** nothing in this module writes outside the directory it was given or follows
//! a symlink it did not create. A symlink on the way to a path is an [`RootfsError::Escape`],
//! never something to resolve.

mod apply;
mod fs;
mod tar_export;
mod tar_import;
mod xattr;

#[cfg(test)]
mod tar_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

pub use apply::{ApplyOptions, set_meta_fd};
pub use fs::{Dir, FileKind, ScanEntry, Stat, data_regions, meta_from_stat};
#[cfg(test)]
pub use tar_export::export_tar;
pub use tar_export::{TreeSource, export_dir_tar};
pub use tar_import::import_tar;

/// Errors from reading or writing a machine directory, or from tar import/export.
/// Each message says what was wrong and, where there is something to do, what to do.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing {path}: it leads outside the machine directory (an absolute path, `..`, or a \
         symlink on the way); nothing was written through it"
    )]
    Escape { path: String },
    #[error("invalid name {name:?} in {dir}: {reason}")]
    BadName {
        dir: String,
        name: String,
        reason: String,
    },
    #[error("{path} is a {found}, expected a {expected}; it changed underneath us, retry")]
    KindMismatch {
        path: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{path} exists and is not a directory; remove it first")]
    NotADirectory { path: String },
    #[error("{path} is a directory; remove it first to put something else there")]
    DirectoryInTheWay { path: String },
    #[error("tar entry {entry:?}: {reason}")]
    Tar { entry: String, reason: String },
    #[error("tree is inconsistent at {path}: {reason}")]
    BadTree { path: String, reason: String },
    #[error("cannot read {what} from the store: {source}")]
    Source {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Renders path bytes for messages; invalid UTF-8 is shown lossily (messages only, never
/// used to reach a file).
fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}
