//! Packs, the pack format and storage backends.

mod backend;

pub use backend::{Backend, BackendError, ObjectInfo, validate_key};
