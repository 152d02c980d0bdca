//! Ids, trees, nodes and references, with their canonical encodings.
//!
//! **Invariant:** this module does no I/O. Everything here is a pure function of its input, so
//! encodings and ids are the same on every host and in every version that reads this format.

mod codec;
mod id;
mod node;
mod refs;

pub use codec::{TREE_FORMAT_VERSION, decode_tree, encode_tree};
pub use id::{BlobId, ChunkId, PackId, TreeId};
pub use node::{
    Content, Entry, Extent, Meta, Node, NodeKind, Timestamp, Tree, Xattr, validate_name,
};
pub use refs::{CheckpointSel, Ref, validate_checkpoint_name, validate_machine_name};

/// Errors from decoding or validating model values. Each names what was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("invalid id {text:?}: expected 64 hex digits")]
    BadId { text: String },
    #[error("tree encoding is corrupt: {reason}")]
    CorruptTree { reason: String },
    #[error(
        "unsupported tree format version {version} (this build reads version {TREE_FORMAT_VERSION})"
    )]
    TreeVersion { version: u8 },
    #[error("invalid entry name {name:?}: {reason}")]
    BadEntryName { name: String, reason: &'static str },
    #[error("invalid machine name {name:?}: {reason}")]
    BadMachineName { name: String, reason: &'static str },
    #[error("invalid checkpoint name {name:?}: {reason}")]
    BadCheckpointName { name: String, reason: &'static str },
    #[error("invalid reference {text:?}: {reason}")]
    BadRef { text: String, reason: &'static str },
}
