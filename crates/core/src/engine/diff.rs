//! Differences between two trees, skipping every subtree whose id is equal on both sides, so
//! the cost is proportional to what changed, not to the size of the machine.

use super::Result;
use crate::model::{Content, Node, NodeKind, Tree, TreeId};
use std::sync::Arc;

/// What happened to a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ChangeKind {
    #[serde(rename = "A")]
    Added,
    #[serde(rename = "M")]
    Modified,
    #[serde(rename = "D")]
    Deleted,
}

impl ChangeKind {
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Modified => 'M',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One changed path. `what` lists the aspects that changed for `Modified`
/// (`type`, `content`, `mode`, `owner`, `mtime`, `xattrs`, `target`, `rdev`, `links`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// Absolute path inside the machine; bytes that are not UTF-8 are shown escaped.
    pub path: String,
    #[serde(skip)]
    pub raw_path: Vec<u8>,
    pub node: NodeKind,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub what: Vec<&'static str>,
}

/// Shows a path with non-UTF-8 bytes and control characters escaped, so one change is always
/// one line of output.
pub(crate) fn display_path(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len() + 1);
    out.push('/');
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// What differs between two nodes of the same path.
pub(crate) fn node_changes(a: &Node, b: &Node) -> Vec<&'static str> {
    let mut what = Vec::new();
    if a.kind() != b.kind() {
        what.push("type");
        return what;
    }
    match (&a.content, &b.content) {
        (
            Content::File {
                size: s1,
                extents: e1,
                nlink: n1,
            },
            Content::File {
                size: s2,
                extents: e2,
                nlink: n2,
            },
        ) => {
            if s1 != s2 || e1 != e2 {
                what.push("content");
            }
            if n1 != n2 {
                what.push("links");
            }
        }
        (Content::Dir { tree: t1 }, Content::Dir { tree: t2 }) if t1 != t2 => what.push("content"),
        (Content::Symlink { target: t1 }, Content::Symlink { target: t2 })
        | (Content::Hardlink { target: t1 }, Content::Hardlink { target: t2 })
            if t1 != t2 =>
        {
            what.push("target")
        }
        (Content::CharDev { rdev: r1 }, Content::CharDev { rdev: r2 })
        | (Content::BlockDev { rdev: r1 }, Content::BlockDev { rdev: r2 })
            if r1 != r2 =>
        {
            what.push("rdev")
        }
        _ => {}
    }
    let (m1, m2) = (&a.meta, &b.meta);
    if m1.mode != m2.mode {
        what.push("mode");
    }
    if (m1.uid, m1.gid) != (m2.uid, m2.gid) {
        what.push("owner");
    }
    if m1.mtime != m2.mtime {
        what.push("mtime");
    }
    if m1.xattrs != m2.xattrs {
        what.push("xattrs");
    }
    what
}

/// Diffs two trees of the same directory (`path` is its path inside the machine, empty for the
/// top). `lookup` loads a tree by id. Directory modifications that are only their content
/// changing are not reported themselves; their changed children are.
pub(crate) fn diff_trees(
    lookup: &dyn Fn(TreeId) -> Result<Arc<Tree>>,
    a: Option<TreeId>,
    b: Option<TreeId>,
    path: &[u8],
    out: &mut Vec<Change>,
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let empty = Arc::new(Tree::default());
    let ta = match a {
        Some(id) => lookup(id)?,
        None => Arc::clone(&empty),
    };
    let tb = match b {
        Some(id) => lookup(id)?,
        None => empty,
    };
    let (mut i, mut j) = (0, 0);
    while i < ta.entries.len() || j < tb.entries.len() {
        let ea = ta.entries.get(i);
        let eb = tb.entries.get(j);
        let ord = match (ea, eb) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                let e = ea.expect("invariant: Less means a has an entry");
                whole(
                    lookup,
                    ChangeKind::Deleted,
                    &e.node,
                    &super::join_path(path, &e.name),
                    out,
                )?;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let e = eb.expect("invariant: Greater means b has an entry");
                whole(
                    lookup,
                    ChangeKind::Added,
                    &e.node,
                    &super::join_path(path, &e.name),
                    out,
                )?;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (ea.expect("invariant"), eb.expect("invariant"));
                let child = super::join_path(path, &x.name);
                diff_nodes(lookup, &x.node, &y.node, &child, out)?;
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

/// Diffs two nodes at the same path.
pub(crate) fn diff_nodes(
    lookup: &dyn Fn(TreeId) -> Result<Arc<Tree>>,
    a: &Node,
    b: &Node,
    path: &[u8],
    out: &mut Vec<Change>,
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let what = node_changes(a, b);
    if what.contains(&"type") {
        whole(lookup, ChangeKind::Deleted, a, path, out)?;
        return whole(lookup, ChangeKind::Added, b, path, out);
    }
    let meta_or_self: Vec<&'static str> = what
        .iter()
        .copied()
        .filter(|w| *w != "content" || a.kind() != NodeKind::Dir)
        .collect();
    if !meta_or_self.is_empty() {
        out.push(Change {
            kind: ChangeKind::Modified,
            path: display_path(path),
            raw_path: path.to_vec(),
            node: b.kind(),
            what: meta_or_self,
        });
    }
    if let (Content::Dir { tree: t1 }, Content::Dir { tree: t2 }) = (&a.content, &b.content) {
        diff_trees(lookup, Some(*t1), Some(*t2), path, out)?;
    }
    Ok(())
}

/// Reports a node and, for a directory, everything under it, as all added or all deleted.
pub(crate) fn whole(
    lookup: &dyn Fn(TreeId) -> Result<Arc<Tree>>,
    kind: ChangeKind,
    node: &Node,
    path: &[u8],
    out: &mut Vec<Change>,
) -> Result<()> {
    out.push(Change {
        kind,
        path: display_path(path),
        raw_path: path.to_vec(),
        node: node.kind(),
        what: Vec::new(),
    });
    if let Content::Dir { tree } = node.content {
        let t = lookup(tree)?;
        for e in &t.entries {
            whole(lookup, kind, &e.node, &super::join_path(path, &e.name), out)?;
        }
    }
    Ok(())
}
