//! Packs, the pack format and storage backends.

mod backend;
mod local;

pub use backend::{Backend, BackendError, ObjectInfo, validate_key};
pub use local::LocalBackend;
