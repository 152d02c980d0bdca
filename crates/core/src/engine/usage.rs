//! Space accounting: logical, stored and exclusive bytes per checkpoint and per machine.

use super::{Repo, Result};
use crate::catalog::CheckpointKey;

/// Sizes of one checkpoint.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckpointUsage {
    pub id: String,
    #[serde(skip)]
    pub key: CheckpointKey,
    pub logical_bytes: u64,
    /// Compressed bytes of every distinct chunk and tree it references.
    pub stored_bytes: u64,
    /// What deleting it (and then gc) would free: bytes no other checkpoint references.
    pub exclusive_bytes: u64,
}

/// Sizes of one machine: the union of its checkpoints.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MachineUsage {
    pub name: String,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    /// Bytes referenced only by this machine's checkpoints.
    pub exclusive_bytes: u64,
    pub checkpoints: Vec<CheckpointUsage>,
}

/// `cairn du`: per machine and checkpoint, plus the store as a whole.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DuReport {
    pub machines: Vec<MachineUsage>,
    /// Bytes of all packs in the store, live or not.
    pub store_bytes: u64,
    /// Compressed bytes referenced by at least one checkpoint.
    pub referenced_bytes: u64,
    /// Bytes gc could reclaim now or after its grace period.
    pub unreferenced_bytes: u64,
}

impl DuReport {
    pub(crate) fn checkpoint(&self, key: CheckpointKey) -> Option<&CheckpointUsage> {
        self.machines.iter().flat_map(|m| &m.checkpoints).find(|c| c.key == key)
    }
}

impl Repo {
    /// Space accounting for every machine and checkpoint.
    pub fn usage(&self) -> Result<DuReport> {
        todo_usage(self)
    }
}
