//! Trees and nodes: what a directory looks like, with full POSIX metadata.
//!
//! A hardlinked inode appears once as a `File` (the *leader*: the first of its paths in
//! depth-first, name-sorted order) with `nlink` set to the number of its paths inside the tree;
//! every other path is a `Hardlink` node whose `target` is the leader's path from the tree root.
//! A `Hardlink` node carries the leader's metadata, since both are one inode.

use super::{ChunkId, ModelError, TreeId};

/// Seconds and nanoseconds since the Unix epoch, as the kernel keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// One extended attribute. Names are bytes because the kernel does not require UTF-8.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// Metadata every node carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    /// Sorted by name, names unique. POSIX ACLs live here as `system.posix_acl_*`.
    pub xattrs: Vec<Xattr>,
}

/// A run of a regular file: stored data, or a hole that reads as zeros and takes no space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Extent {
    Data { id: ChunkId, len: u64 },
    Hole { len: u64 },
}

impl Extent {
    pub fn len(&self) -> u64 {
        match *self {
            Extent::Data { len, .. } | Extent::Hole { len } => len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a node holds, by kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Content {
    /// `extents` cover exactly `size` bytes; adjacent holes are merged and no extent is empty.
    File {
        size: u64,
        nlink: u32,
        extents: Vec<Extent>,
    },
    Dir {
        tree: TreeId,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// Another path of a `File` leader; `target` is the leader's path from the root, without a
    /// leading slash (e.g. `usr/bin/perl`).
    Hardlink {
        target: Vec<u8>,
    },
    CharDev {
        rdev: u64,
    },
    BlockDev {
        rdev: u64,
    },
    Fifo,
}

/// The kind of a node, without its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    Hardlink,
    CharDev,
    BlockDev,
    Fifo,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    pub meta: Meta,
    pub content: Content,
}

impl Node {
    pub fn kind(&self) -> NodeKind {
        match self.content {
            Content::File { .. } => NodeKind::File,
            Content::Dir { .. } => NodeKind::Dir,
            Content::Symlink { .. } => NodeKind::Symlink,
            Content::Hardlink { .. } => NodeKind::Hardlink,
            Content::CharDev { .. } => NodeKind::CharDev,
            Content::BlockDev { .. } => NodeKind::BlockDev,
            Content::Fifo => NodeKind::Fifo,
        }
    }
}

/// A named node inside a tree.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub name: Vec<u8>,
    pub node: Node,
}

/// A directory's entries, sorted by name bytes with no duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tree {
    pub entries: Vec<Entry>,
}

impl Tree {
    /// Looks an entry up by name (binary search; entries are sorted).
    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }
}

/// Checks that `name` can be one path component: non-empty, not `.` or `..`, with no `/` or NUL.
/// Any other byte, including newlines and invalid UTF-8, is allowed, as the kernel allows it.
pub fn validate_name(name: &[u8]) -> Result<(), ModelError> {
    let bad = |reason| {
        Err(ModelError::BadEntryName {
            name: String::from_utf8_lossy(name).into_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name == b"." || name == b".." {
        return bad("`.` and `..` are not entries");
    }
    if name.contains(&b'/') {
        return bad("contains `/`");
    }
    if name.contains(&0) {
        return bad("contains NUL");
    }
    Ok(())
}
