//! cairn's engine: content-addressed chunks in immutable packs, canonical trees, a SQLite
//! catalog, the operations on machines (checkpoint, restore, fork, diff, gc, check), and
//! read-only FUSE views of checkpoints.
//!
//! Modules are private; this file re-exports the deliberate public API.

mod catalog;
mod chunker;
mod engine;
mod model;
mod mount;
mod rootfs;
mod sandbox;
mod store;

pub use catalog::{AuditRow, MachineKind};
pub use engine::{
    Change, ChangeKind, CheckOptions, CheckReport, CheckpointInfo, CheckpointOptions,
    CheckpointReport, CheckpointUsage, CreateMachineOptions, CreateMountedOptions,
    DEFAULT_IMAGES_MAX, DownReport, DuReport, EngineError, Finding, ForkOptions, GcOptions,
    GcReport, LowerServer, MachineInfo, MachineUsage, MountedInfo, NoProgress, Phase, Progress,
    RebuildReport, Repo, RepoOptions, RestoreOptions, RestoreReport, RunSpec, RunStart, UpReport,
};
pub use model::{CheckpointSel, Ref, TreeId, validate_checkpoint_name, validate_machine_name};
pub use mount::{
    MountError, MountOptions, MountedView, UnmountReport, detach, detach_all_below, mounts_below,
    unmount,
};
pub use sandbox::{
    Bind, Cgroup, DEFAULT_FREEZE_TIMEOUT, FreezeGuard, KillReport, RunOptions, SandboxError,
    run_sandboxed, sandboxed_command, spawn_sandboxed,
};

/// True when this process runs as root (effective uid 0): it may mount, chown, and make
/// device nodes; otherwise mounted machines run in a user namespace (`engine/rootless.rs`).
pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The CPUs this process may use (2 if unknown), asked once: the standard library reads the
/// mount table and the cgroup's CPU quota on every call (measured 35-60 µs the first time,
/// 18 µs after), and a checkpoint asked twice.
pub(crate) fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

/// Waits for a scoped thread and returns its result; a panic there goes on in the caller, as
/// if the work had run on the caller's thread.
pub(crate) fn join_scoped<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}
