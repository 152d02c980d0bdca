//! Whether a mounted tree holds any xattr at all, found by a background walk of its trees.
//!
//! Overlayfs asks its lower layer for `trusted.overlay.*` on every lookup, and the kernel asks
//! for `security.capability` on every exec. FUSE caches none of those answers, so each is a
//! round trip to the server. Most machine trees (container images, debootstrapped roots) hold
//! no xattr anywhere: once the walk has proven that, the view answers GETXATTR with `ENOSYS`,
//! which makes the kernel stop asking for the life of the mount and answer `EOPNOTSUPP`
//! itself. Until then, and for good when any xattr is found, every GETXATTR is answered from
//! the tree as usual.

use super::blobs::Blobs;
use crate::model::{Content, Node, TreeId};
use std::sync::Weak;
use std::sync::atomic::{AtomicU8, Ordering};

const UNKNOWN: u8 = 0;
const NONE: u8 = 1;
const SOME: u8 = 2;

/// What the walk has found so far.
#[derive(Debug, Default)]
pub(super) struct XattrScan(AtomicU8);

impl XattrScan {
    /// True once the whole tree is known to hold no xattr.
    pub(super) fn none(&self) -> bool {
        self.0.load(Ordering::Acquire) == NONE
    }

    /// `Some(true)` when the tree holds no xattr, `Some(false)` when it holds one, `None`
    /// while the walk runs (or after it failed to read a tree).
    pub(super) fn result(&self) -> Option<bool> {
        match self.0.load(Ordering::Acquire) {
            NONE => Some(true),
            SOME => Some(false),
            _ => None,
        }
    }

    /// Walks every tree below `top` (the whole machine directory, which also holds the leaders
    /// of hardlinks a subtree view shows) and records the outcome. Stops at the first xattr,
    /// when a tree cannot be read (the answer then stays unknown, which is always safe), or
    /// when the view has gone (`blobs` can no longer be upgraded).
    pub(super) fn run(&self, blobs: Weak<Blobs>, top: &Node) {
        let mut pending: Vec<TreeId> = Vec::new();
        if !top.meta.xattrs.is_empty() {
            return self.0.store(SOME, Ordering::Release);
        }
        if let Content::Dir { tree } = top.content {
            pending.push(tree);
        }
        while let Some(id) = pending.pop() {
            let Some(b) = blobs.upgrade() else { return };
            let Ok(tree) = b.tree_passing(id) else {
                tracing::debug!("xattr scan stopped: tree {} unreadable", id.short());
                return;
            };
            for e in &tree.entries {
                if !e.node.meta.xattrs.is_empty() {
                    return self.0.store(SOME, Ordering::Release);
                }
                if let Content::Dir { tree } = e.node.content {
                    pending.push(tree);
                }
            }
        }
        debug_assert_eq!(self.0.load(Ordering::Relaxed), UNKNOWN);
        self.0.store(NONE, Ordering::Release);
    }
}
