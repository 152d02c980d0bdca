//! Garbage collection.

use std::time::Duration;

/// Inputs of `gc`.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// How long an unreferenced pack stays doomed before it may be deleted.
    pub grace: Duration,
    /// Repack packs whose live fraction is below this (0.0–1.0).
    pub repack_below: f64,
    pub dry_run: bool,
}

/// What `gc` did (or would do, with `dry_run`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GcReport {
    pub packs_total: u64,
    /// Packs found unreferenced and marked; deleted by a later gc after the grace period.
    pub packs_doomed: u64,
    pub packs_deleted: u64,
    /// Doomed packs found referenced again (a checkpoint ran beside gc) and kept.
    pub packs_revived: u64,
    pub packs_repacked: u64,
    pub bytes_freed: u64,
    pub bytes_pending: u64,
    pub dry_run: bool,
}
