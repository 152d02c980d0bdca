//! The storage backend contract: a flat namespace of immutable objects.
//!
//! The contract assumes no rename, no append and no listing order, so that an object store
//! (S3 and compatible) can implement it as well as a local directory.

use std::fmt;

/// Errors from a backend. `NotFound` is distinct so callers can treat a missing object
/// as a finding (check) rather than a failure.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("object {key} not found")]
    NotFound { key: String },
    #[error("{op} of object {key} failed: {source}")]
    Io {
        op: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid object key {key:?}: {reason}")]
    BadKey { key: String, reason: &'static str },
}

/// An object's key and size, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

/// A flat store of immutable objects named by `/`-separated keys of `[A-Za-z0-9._-]` segments.
///
/// Contract for every implementation:
/// - `put` is atomic: a reader sees the whole object or none of it, never a prefix. It is
///   durable when it returns. A `put` of an existing key replaces it; callers only ever put an
///   existing key with identical bytes (content addressing), so replacement is idempotent.
/// - `get`/`get_range` return exactly the stored bytes or `NotFound`.
/// - `list` returns every object whose key starts with `prefix`, in no particular order.
///   Objects put before the call began are listed; ones put during it may or may not be.
/// - `delete` of a missing key is a no-op, not an error. Durable when it returns.
pub trait Backend: Send + Sync + fmt::Debug {
    fn put(&self, key: &str, data: &[u8]) -> Result<(), BackendError>;
    fn get(&self, key: &str) -> Result<Vec<u8>, BackendError>;
    /// Reads `len` bytes at `offset`. Fails with `Io` (kind `UnexpectedEof`) if the object is shorter.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError>;
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError>;
    fn delete(&self, key: &str) -> Result<(), BackendError>;
    /// Size of the object, or `NotFound`.
    fn size(&self, key: &str) -> Result<u64, BackendError>;
    /// Deletes leftovers of interrupted `put`s (staging files, unfinished uploads) older than
    /// `older_than` and returns how many it removed. The age threshold keeps it from racing a
    /// `put` that is still in flight. Never touches a committed object.
    ///
    /// The default does nothing: a backend whose `put` stages nothing has nothing to sweep.
    fn sweep_incomplete(&self, older_than: std::time::Duration) -> Result<u64, BackendError> {
        let _ = older_than;
        Ok(0)
    }
}

/// Checks a key against the contract's character set, so no key can name a path outside the
/// backend's root on any implementation.
pub fn validate_key(key: &str) -> Result<(), BackendError> {
    let bad = |reason| {
        Err(BackendError::BadKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() || key.len() > 512 {
        return bad("empty or longer than 512 bytes");
    }
    for seg in key.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return bad("empty, `.` or `..` segment");
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return bad("only [A-Za-z0-9._-] is allowed in a segment");
        }
    }
    Ok(())
}
