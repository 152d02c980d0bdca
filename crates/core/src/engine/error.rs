//! The engine's one error type. Each variant says what was wrong and, where there is one, what
//! to do about it.

use crate::catalog::CatalogError;
use crate::model::ModelError;
use crate::mount::MountError;
use crate::rootfs::RootfsError;
use crate::store::{BackendError, StoreError};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no machine named {name:?}; `cairn machine list` shows the machines")]
    UnknownMachine { name: String },
    #[error(
        "machine {machine} has no checkpoint {sel}; `cairn checkpoint list {machine}` shows them"
    )]
    UnknownCheckpoint { machine: String, sel: String },
    #[error(
        "machine {machine} has no checkpoints yet; `cairn checkpoint create {machine}` makes one"
    )]
    NoCheckpoints { machine: String },
    #[error("{} is not usable as a machine directory: {reason}", path.display())]
    BadDir { path: PathBuf, reason: String },
    #[error("{path:?} does not exist in {reference}")]
    PathNotFound { reference: String, path: String },
    #[error("{path:?} in {reference} is a {kind}, not a regular file")]
    NotAFile {
        reference: String,
        path: String,
        kind: String,
    },
    #[error(
        "machine {machine} is busy: {holder}; wait for it to finish (or pass --wait SECONDS to wait longer)"
    )]
    Locked { machine: String, holder: String },
    #[error("{what} is corrupt: {reason}; run `cairn check` for a full report")]
    Corrupt { what: String, reason: String },
    #[error("the tarball could not be imported: {0}")]
    Import(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<BackendError> for EngineError {
    fn from(e: BackendError) -> Self {
        EngineError::Store(StoreError::from(e))
    }
}
