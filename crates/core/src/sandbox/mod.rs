//! Running a mounted machine's processes: one cgroup per machine (to freeze them while a
//! checkpoint is taken and to stop them all before a restore) and a bubblewrap runner that puts
//! each command in its own pid, ipc, uts and mount namespaces with the machine's root as `/`.
//!
//! **Invariant:** a sandboxed process is in the machine's cgroup before it executes anything,
//! and the only host paths it can reach are the machine root and the binds its caller passed;
//! it keeps no capability that could undo either (mounting, `open_by_handle_at`, device nodes).
//! This module knows nothing of the engine, the store or the catalog.

mod bwrap;
mod cgroup;
mod error;
#[cfg(test)]
pub(crate) mod tests;
mod userns;

pub use bwrap::{Bind, RunOptions, run_sandboxed, sandboxed_command, spawn_sandboxed};
pub use cgroup::{Cgroup, DEFAULT_FREEZE_TIMEOUT, FreezeGuard, KillReport};
pub use error::SandboxError;
pub use userns::{Holder, IdMap, SignalFreeze, path_from_host, rootless, unshare_as_root};

pub type Result<T, E = SandboxError> = std::result::Result<T, E>;
