//! Manifests: one small JSON object per machine and per checkpoint in the store, beside the
//! packs, so the catalog can always be rebuilt from the store alone and another host can list a
//! machine's checkpoints without this host's catalog.
//!
//! Keys: `machines/<uid>.json` and `checkpoints/<uid>/v<version>.json`. Both carry `format: 1`.

use super::Result;
use crate::model::TreeId;
use crate::store::Store;

pub(crate) const FORMAT: u32 = 1;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct MachineManifest {
    pub format: u32,
    pub uid: String,
    pub name: String,
    /// The directory as raw bytes, so non-UTF-8 paths survive.
    pub dir: Vec<u8>,
    pub kind: String,
    pub created_at: i64,
    /// A mounted machine's base (the tree its lower layer serves); rewritten on every rebase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<crate::catalog::Base>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct CheckpointManifest {
    pub format: u32,
    pub machine_uid: String,
    pub version: u64,
    pub name: Option<String>,
    pub note: String,
    pub author: String,
    pub created_at: i64,
    /// (machine uid, version) of the parent, which may be another machine's (fork).
    pub parent: Option<(String, u64)>,
    pub root: TreeId,
    pub logical_bytes: u64,
    pub entries: u64,
    pub auto: bool,
}

pub(crate) fn machine_key(uid: &str) -> String {
    format!("machines/{uid}.json")
}

pub(crate) fn checkpoint_key(uid: &str, version: u64) -> String {
    format!("checkpoints/{uid}/v{version}.json")
}

pub(crate) fn put_machine(store: &Store, m: &MachineManifest) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(m).expect("invariant: manifests serialize");
    store.put_object(&machine_key(&m.uid), &bytes)?;
    Ok(())
}

pub(crate) fn put_checkpoint(store: &Store, c: &CheckpointManifest) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(c).expect("invariant: manifests serialize");
    store.put_object(&checkpoint_key(&c.machine_uid, c.version), &bytes)?;
    Ok(())
}

/// A fresh random machine uid: 128 bits from the kernel, as hex.
pub(crate) fn new_uid() -> String {
    let mut b = [0u8; 16];
    if rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).is_err() {
        // Fall back to time and pid: uids only need to be unique, not secret.
        let t = super::now_ns().to_le_bytes();
        b[..8].copy_from_slice(&t);
        b[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    hex::encode(b)
}
