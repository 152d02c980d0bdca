//! Consistency checks.

/// Inputs of `check`.
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// Read every pack and re-hash every chunk, not just the structure.
    pub read_data: bool,
}

/// One problem `check` found, with what it affects.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Finding {
    /// What is damaged: `catalog`, `pack <id>`, `blob <id>`, `tree <id>`, `manifest <key>`.
    pub object: String,
    pub problem: String,
    /// Checkpoints that can no longer be restored exactly, e.g. `web@v2`.
    pub checkpoints: Vec<String>,
    /// Paths inside those checkpoints that are affected, e.g. `/etc/hosts`.
    pub paths: Vec<String>,
}

/// What `check` found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub checkpoints: u64,
    pub trees: u64,
    pub chunks: u64,
    pub packs: u64,
    pub bytes_read: u64,
    pub findings: Vec<Finding>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}
