//! The inode table of a view: inode numbers handed to the kernel, keyed by path.
//!
//! **Invariant:** a number, once given, names the same node for the life of the mount, and
//! every path of a hardlinked file maps to one number. The key of an entry is its path from the
//! machine directory; a `Hardlink` node is keyed by its `target` (the leader's path), so leader
//! and followers meet on one key. Entries are never dropped (`forget` is ignored): numbers must
//! stay stable even after the kernel evicts an inode, and a node costs little next to its data.

use crate::model::{Content, Node, Tree};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

/// The inode number of the view's root directory, as FUSE fixes it.
pub(super) const ROOT_INO: u64 = 1;

pub(super) struct Inode {
    pub ino: u64,
    /// The directory holding it, for `..`; the root is its own parent.
    pub parent: u64,
    /// Path from the machine directory without a leading slash; empty for the machine itself.
    pub path: Vec<u8>,
    /// For hardlinks, the leader's node (a `File` with `nlink`).
    pub node: Node,
    /// Regular files: the offset where each extent starts, ascending, for binary search.
    pub starts: Vec<u64>,
    /// Directories: the decoded tree, once first needed.
    pub tree: OnceLock<Arc<Tree>>,
}

impl Inode {
    fn new(ino: u64, parent: u64, path: Vec<u8>, node: Node) -> Inode {
        let starts = match &node.content {
            Content::File { extents, .. } => {
                let mut at = 0;
                extents
                    .iter()
                    .map(|x| {
                        let s = at;
                        at += x.len();
                        s
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        Inode {
            ino,
            parent,
            path,
            node,
            starts,
            tree: OnceLock::new(),
        }
    }
}

#[derive(Default)]
struct Table {
    /// `inodes[n - 1]` has number `n`.
    inodes: Vec<Arc<Inode>>,
    by_path: HashMap<Vec<u8>, u64>,
}

#[derive(Default)]
pub(super) struct Inodes {
    table: RwLock<Table>,
}

impl Inodes {
    /// A table holding only the root directory (number 1), at `path` inside the machine.
    pub(super) fn with_root(path: Vec<u8>, node: Node) -> Inodes {
        let inodes = Inodes::default();
        inodes.intern(path, ROOT_INO, || node);
        inodes
    }

    pub(super) fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        let i = usize::try_from(ino.checked_sub(1)?).ok()?;
        t.inodes.get(i).cloned()
    }

    /// The inode for `key`, created from `make` the first time the key is seen.
    pub(super) fn intern(
        &self,
        key: Vec<u8>,
        parent: u64,
        make: impl FnOnce() -> Node,
    ) -> Arc<Inode> {
        if let Some(ino) = self.known(&key) {
            return ino;
        }
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        // Another thread may have added it between the two locks.
        if let Some(&n) = t.by_path.get(&key) {
            return Arc::clone(&t.inodes[(n - 1) as usize]);
        }
        let ino = t.inodes.len() as u64 + 1;
        let inode = Arc::new(Inode::new(ino, parent, key.clone(), make()));
        t.inodes.push(Arc::clone(&inode));
        t.by_path.insert(key, ino);
        inode
    }

    /// The inode already given for `key`, if any.
    pub(super) fn known(&self, key: &[u8]) -> Option<Arc<Inode>> {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        t.by_path
            .get(key)
            .map(|&n| Arc::clone(&t.inodes[(n - 1) as usize]))
    }
}

/// A generation for a new session: different from every other session's in practice.
pub(super) fn session_generation() -> fuser::Generation {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let seed = format!(
        "{now} {} {:?}",
        std::process::id(),
        std::thread::current().id()
    );
    let h = blake3::hash(seed.as_bytes());
    // The kernel keeps 32 bits of it; 0 is what a session without its own would use.
    let g = u32::from_le_bytes(h.as_bytes()[..4].try_into().expect("4 bytes")).max(1);
    fuser::Generation(u64::from(g))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Extent, Meta};

    fn file(extents: Vec<Extent>) -> Node {
        let size = extents.iter().map(Extent::len).sum();
        Node {
            meta: Meta::default(),
            content: Content::File {
                size,
                nlink: 1,
                extents,
            },
        }
    }

    #[test]
    fn numbers_are_stable_per_key_and_start_at_the_root() {
        let t = Inodes::with_root(b"".to_vec(), file(vec![]));
        assert_eq!(t.get(ROOT_INO).map(|i| i.ino), Some(1));
        let a = t.intern(b"etc/passwd".to_vec(), 1, || file(vec![]));
        let b = t.intern(b"etc/passwd".to_vec(), 1, || unreachable!("already known"));
        assert_eq!((a.ino, b.ino), (2, 2));
        assert_eq!(t.intern(b"etc".to_vec(), 1, || file(vec![])).ino, 3);
        assert!(t.get(0).is_none() && t.get(4).is_none());
    }

    #[test]
    fn extent_starts_are_cumulative() {
        let id = crate::model::ChunkId::of(b"x");
        let t = Inodes::with_root(Vec::new(), file(vec![]));
        let f = t.intern(b"f".to_vec(), 1, || {
            file(vec![
                Extent::Data { id, len: 10 },
                Extent::Hole { len: 5 },
                Extent::Data { id, len: 7 },
            ])
        });
        assert_eq!(f.starts, vec![0, 10, 15]);
    }
}
