//! Upper-layer ingest: an overlayfs upper directory merged over the base tree its lower serves.
//!
//! A mounted machine's writes all land in its upper directory, so a checkpoint walks only that:
//! every entry the upper lacks is taken from the base tree by id, unread. In the upper:
//!
//! - a whiteout (a 0/0 character device) deletes the base entry of its name;
//! - a directory that is opaque (`<prefix>opaque` = `y`) replaces the base one, as does any
//!   directory whose base entry is not a directory; any other upper directory merges over the
//!   base directory of its name, recursively;
//! - every other upper entry replaces the base entry of its name;
//! - the upper directory's own metadata is the merged directory's (overlayfs copies a directory
//!   up, times included, before it changes anything inside it).
//!
//! `<prefix>` is `trusted.overlay.` when the overlay is mounted by root and `user.overlay.` in a
//! user namespace. Overlay-private xattrs are never part of a tree; an escaped one
//! (`<prefix>overlay.X`, how overlayfs stores a user's own `<prefix>X`) is unescaped.
//! - a directory with a `<prefix>redirect` (made by renaming a directory that has a lower one)
//!   merges over the base directory the redirect names instead of the one of its name: an
//!   absolute redirect is a path from the machine root, a relative one a name in the parent's
//!   lower directory. A file's redirect names its lower file the same way;
//! - a file with `<prefix>metacopy` is a metadata-only copy-up (a chmod, chown or xattr change
//!   of a lower file): its metadata is the upper's, its bytes the lower file's, taken by id.
//!
//! Root's overlays make both (`redirect_dir=on,metacopy=on`); an overlay in a user namespace
//! makes neither, but its upper is read by the same rules.
//!
//! Hardlinks: overlayfs (without `index`) breaks a hardlink when one of its paths is copied up,
//! so a base hardlink group can lose members, including its leader. Upper groups are whole in
//! the upper and the walk sees their paths in tree order, so they need nothing special. When a
//! shadowed base entry held a hardlink, the merged tree is walked once more and every base group
//! is re-formed from the members still visible: the first becomes the leader, `nlink` is
//! recounted. That walk reads every tree, so it runs only when a group was touched.

use super::blobs::{BlobSource, BlobWriter};
use super::restore::{lookup_path, root_node};
use super::{EngineError, Result, join_path};
use crate::model::{Content, Entry, Extent, Meta, Node, Tree, TreeId, Xattr};
use crate::rootfs::{FileKind, ScanEntry, Stat, meta_from_stat};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// The xattr prefix overlayfs uses for its private attributes when mounted by root.
pub(crate) const TRUSTED_PREFIX: &[u8] = b"trusted.overlay.";
/// The prefix of an overlay mounted with `userxattr`, as it must be in a user namespace.
pub(crate) const USER_PREFIX: &[u8] = b"user.overlay.";

/// The base an upper layer is merged over.
pub(crate) struct UpperBase<'a> {
    pub src: &'a BlobSource<'a>,
    /// The base checkpoint's root tree (the one holding the `root` entry).
    pub root: TreeId,
    /// The base checkpoint's entry count and logical bytes, adjusted by what the upper shadows.
    pub entries: u64,
    pub logical: u64,
    /// `TRUSTED_PREFIX` or `USER_PREFIX`.
    pub xattr_prefix: &'static [u8],
}

impl UpperBase<'_> {
    /// The base machine directory's tree.
    pub(crate) fn base_top(&self) -> Result<Arc<Tree>> {
        let top = root_node(self.src, self.root)?;
        match top.content {
            Content::Dir { tree } => self.src.tree(tree),
            _ => Err(EngineError::Corrupt {
                what: format!("checkpoint root {}", self.root.short()),
                reason: "the machine entry is not a directory".to_owned(),
            }),
        }
    }

    /// The tree of a base node if it is a directory.
    pub(crate) fn dir_below(&self, node: &Node) -> Result<Option<Arc<Tree>>> {
        match node.content {
            Content::Dir { tree } => Ok(Some(self.src.tree(tree)?)),
            _ => Ok(None),
        }
    }

    fn private(&self, name: &[u8]) -> Option<Vec<u8>> {
        name.strip_prefix(self.xattr_prefix).map(<[u8]>::to_vec)
    }

    pub(crate) fn is_opaque(&self, xattrs: &[Xattr]) -> bool {
        xattrs
            .iter()
            .any(|x| self.private(&x.name).as_deref() == Some(b"opaque") && x.value == b"y")
    }

    /// The metadata of an upper entry as the machine sees it: overlay-private xattrs dropped
    /// (`strip_xattrs`).
    pub(crate) fn meta(&self, stat: &Stat, xattrs: Vec<Xattr>) -> Meta {
        meta_from_stat(stat, self.strip_xattrs(xattrs))
    }

    /// Drops overlay-private xattrs and unescapes escaped ones; the result stays sorted.
    pub(crate) fn strip_xattrs(&self, xattrs: Vec<Xattr>) -> Vec<Xattr> {
        let mut out: Vec<Xattr> = xattrs
            .into_iter()
            .filter_map(|x| match self.private(&x.name) {
                None => Some(x),
                Some(rest) => rest.strip_prefix(b"overlay.").map(|_| Xattr {
                    name: [self.xattr_prefix, &rest[b"overlay.".len()..]].concat(),
                    value: x.value,
                }),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn private_value<'x>(&self, xattrs: &'x [Xattr], what: &[u8]) -> Option<&'x [u8]> {
        xattrs
            .iter()
            .find(|x| self.private(&x.name).as_deref() == Some(what))
            .map(|x| x.value.as_slice())
    }

    /// True for a metadata-only copy-up: the upper file holds the metadata, its bytes are
    /// still the lower file's.
    pub(crate) fn is_metacopy(&self, xattrs: &[Xattr]) -> bool {
        self.private_value(xattrs, b"metacopy").is_some()
    }

    /// The base path an upper entry's lower layer lies at, when it is redirected: an absolute
    /// `<prefix>redirect` names a path from the machine root, a relative one a name in the
    /// lower directory of the entry's parent (`parent_lower`; without one there is no lower).
    /// `None` without a redirect: the lower is then the base entry of the same name.
    pub(crate) fn redirected(
        &self,
        xattrs: &[Xattr],
        parent_lower: Option<&[u8]>,
    ) -> Option<Option<Vec<u8>>> {
        let r = self.private_value(xattrs, b"redirect")?;
        Some(match r.strip_prefix(b"/") {
            Some(abs) => Some(
                abs.split(|&b| b == b'/')
                    .filter(|c| !c.is_empty())
                    .collect::<Vec<_>>()
                    .join(&b'/'),
            ),
            None => parent_lower.map(|p| join_path(p, r)),
        })
    }

    /// The base node at `path` (from the machine directory), if there is one.
    pub(crate) fn base_at(&self, path: &[u8]) -> Result<Option<Node>> {
        let top = root_node(self.src, self.root)?;
        let comps: Vec<Vec<u8>> = match path.is_empty() {
            true => Vec::new(),
            false => path.split(|&b| b == b'/').map(<[u8]>::to_vec).collect(),
        };
        lookup_path(self.src, &top, &comps)
    }

    /// The bytes a metadata-only copy-up of `size` bytes at `path` keeps from its lower file
    /// `lower` (a hardlink follows to its leader).
    pub(crate) fn lower_data(
        &self,
        lower: Option<&Node>,
        size: u64,
        path: &[u8],
    ) -> Result<Vec<Extent>> {
        let corrupt = |reason: String| EngineError::Corrupt {
            what: format!("the upper layer entry {}", String::from_utf8_lossy(path)),
            reason,
        };
        let node = match lower.map(|n| &n.content) {
            Some(Content::Hardlink { target }) => self.base_at(target)?,
            _ => lower.cloned(),
        };
        match node.map(|n| n.content) {
            Some(Content::File {
                size: s, extents, ..
            }) if s == size => Ok(extents),
            Some(Content::File { size: s, .. }) => Err(corrupt(format!(
                "a metadata-only copy-up of {size} bytes over a lower file of {s}"
            ))),
            _ => Err(corrupt(
                "a metadata-only copy-up whose lower layer holds no file".to_owned(),
            )),
        }
    }
}

/// One name of a merged directory listing.
pub(crate) enum Item {
    /// Only the base has it: taken as it is.
    Base(Entry),
    /// The upper has it, shadowing the base node of that name if there is one.
    Upper {
        entry: ScanEntry,
        base: Option<Node>,
    },
}

impl Item {
    pub(crate) fn name(&self) -> &[u8] {
        match self {
            Item::Base(e) => &e.name,
            Item::Upper { entry, .. } => &entry.name,
        }
    }
}

/// Merges a base directory's entries with an upper listing, both sorted by name.
pub(crate) fn merge_listing(base: Option<&Tree>, upper: Vec<ScanEntry>) -> Vec<Item> {
    let base = base.map_or(&[][..], |t| &t.entries[..]);
    let mut out = Vec::with_capacity(base.len().max(upper.len()));
    let mut b = base.iter().peekable();
    for entry in upper {
        while let Some(e) = b.next_if(|e| e.name < entry.name) {
            out.push(Item::Base(e.clone()));
        }
        let base = b.next_if(|e| e.name == entry.name).map(|e| e.node.clone());
        out.push(Item::Upper { entry, base });
    }
    out.extend(b.cloned().map(Item::Base));
    out
}

/// A whiteout: the upper's mark that a lower entry was deleted.
pub(crate) fn is_whiteout(e: &ScanEntry) -> bool {
    e.kind == FileKind::CharDev && e.stat.rdev == 0
}

/// What an upper-layer ingest records while it walks, to account and re-form hardlinks after.
#[derive(Default)]
pub(crate) struct Layers {
    active: bool,
    /// Directories merged over a base directory (their entries are of both layers).
    merged: HashSet<Vec<u8>>,
    /// Entries of merged directories taken from the upper (their subtrees are all upper).
    upper: HashSet<Vec<u8>>,
    /// A shadowed base entry held a hardlink: base groups must be re-formed.
    touched: bool,
    /// Merged directories whose lower is the base directory at another path (redirected).
    moved: HashMap<Vec<u8>, Vec<u8>>,
    /// What the upper hides of the base, less what redirects show at a new path.
    entries_shadowed: i64,
    logical_shadowed: i64,
    /// Trees this ingest wrote, readable before the writer flushes them.
    trees: HashMap<TreeId, Arc<Tree>>,
}

/// The merged tree after hardlinks were re-formed, and the corrections to the walk's totals.
pub(crate) struct Finished {
    pub top: TreeId,
    pub entries_delta: i64,
    pub logical_delta: i64,
}

impl Layers {
    pub(crate) fn new(up: Option<&UpperBase<'_>>) -> Layers {
        Layers {
            active: up.is_some(),
            ..Layers::default()
        }
    }

    pub(crate) fn merged_dir(&mut self, path: &[u8]) {
        self.merged.insert(path.to_vec());
    }

    pub(crate) fn taken_from_upper(&mut self, path: &[u8]) {
        self.upper.insert(path.to_vec());
    }

    pub(crate) fn keep_tree(&mut self, id: TreeId, tree: Tree) {
        if self.active {
            self.trees.insert(id, Arc::new(tree));
        }
    }

    /// A base node at `path` is deleted or replaced by the upper: its subtree leaves the totals.
    pub(crate) fn shadowed(&mut self, up: &UpperBase<'_>, node: &Node, path: &[u8]) -> Result<()> {
        self.tally(up, node, path, 1)
    }

    /// The merged directory at `path` has the base directory `node` at `base_path` as its
    /// lower (a redirect): that subtree joins the totals at its new place.
    pub(crate) fn moved(
        &mut self,
        up: &UpperBase<'_>,
        node: &Node,
        path: &[u8],
        base_path: Vec<u8>,
    ) -> Result<()> {
        self.moved.insert(path.to_vec(), base_path);
        self.tally(up, node, path, -1)
    }

    fn tally(&mut self, up: &UpperBase<'_>, node: &Node, path: &[u8], sign: i64) -> Result<()> {
        let mut stack = vec![node.clone()];
        while let Some(n) = stack.pop() {
            self.entries_shadowed += sign;
            match &n.content {
                Content::File { size, nlink, .. } => {
                    self.logical_shadowed += sign * *size as i64;
                    self.touched |= *nlink > 1;
                }
                Content::Hardlink { .. } => self.touched = true,
                Content::Symlink { target } => {
                    self.logical_shadowed += sign * target.len() as i64;
                }
                Content::Dir { tree } => {
                    let t = up.src.tree(*tree).map_err(|e| in_base(e, path))?;
                    stack.extend(t.entries.iter().map(|e| e.node.clone()));
                }
                Content::CharDev { .. } | Content::BlockDev { .. } | Content::Fifo => {}
            }
        }
        Ok(())
    }

    /// Corrects the totals for what the base contributes and re-forms touched hardlink groups.
    pub(crate) fn finish(
        self,
        up: &UpperBase<'_>,
        top: TreeId,
        writer: &BlobWriter<'_>,
    ) -> Result<Finished> {
        let mut done = Finished {
            top,
            entries_delta: up.entries as i64 - self.entries_shadowed,
            logical_delta: up.logical as i64 - self.logical_shadowed,
        };
        if !self.touched {
            return Ok(done);
        }
        up.src.seed(self.trees.clone());
        let mut groups = Groups::default();
        // A directory made in the upper holds only upper entries, except where a directory
        // moved into it (a redirect) brings a base subtree along: the walk enters an upper
        // directory only on the way to one of those.
        let mut leads_to_moved = HashSet::new();
        for moved in self.moved.keys() {
            let mut p = moved.as_slice();
            while let Some(i) = p.iter().rposition(|&b| b == b'/') {
                p = &p[..i];
                if !leads_to_moved.insert(p.to_vec()) {
                    break;
                }
            }
        }
        let walk = Collect {
            src: up.src,
            leads_to_moved: &leads_to_moved,
        };
        self.collect(&walk, top, &[], Some(&[]), false, &mut groups)?;
        let base_top = root_node(up.src, up.root)?;
        let mut changes: BTreeMap<Vec<u8>, Node> = BTreeMap::new();
        for (key, members) in groups.members {
            let (first_path, first) = &members[0];
            let count = members.len() as u32;
            // The leader may still be visible, at its place or where a redirect moved it, and
            // then its bytes are already counted; otherwise they come back with the new leader.
            let visible = members.iter().find_map(|(_, n)| match &n.content {
                Content::File { size, extents, .. } => Some((*size, extents.clone())),
                _ => None,
            });
            let (size, extents) = match visible {
                Some(x) => x,
                None => {
                    let comps: Vec<Vec<u8>> =
                        key.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
                    match lookup_path(up.src, &base_top, &comps)?.map(|n| n.content) {
                        Some(Content::File { size, extents, .. }) => {
                            done.logical_delta += size as i64;
                            (size, extents)
                        }
                        _ => {
                            return Err(EngineError::Corrupt {
                                what: format!("base tree {}", up.root.short()),
                                reason: format!(
                                    "hardlink leader {} is not a file",
                                    String::from_utf8_lossy(&key)
                                ),
                            });
                        }
                    }
                }
            };
            let leader = Node {
                meta: first.meta.clone(),
                content: Content::File {
                    size,
                    nlink: count,
                    extents,
                },
            };
            for (i, (path, node)) in members.iter().enumerate() {
                let want = if i == 0 {
                    leader.clone()
                } else {
                    Node {
                        meta: node.meta.clone(),
                        content: Content::Hardlink {
                            target: first_path.clone(),
                        },
                    }
                };
                if &want != node {
                    changes.insert(path.clone(), want);
                }
            }
        }
        if !changes.is_empty() {
            done.top = rewrite(up.src, writer, top, &[], &changes)?;
        }
        Ok(done)
    }

    /// Collects the visible members of base hardlink groups, in tree order. `all_base` is true
    /// inside a subtree taken whole from the base; `base_path` is where the directory at
    /// `path` lies in the base (another path when a redirect moved it), if it has a lower.
    fn collect(
        &self,
        walk: &Collect<'_, '_>,
        tree: TreeId,
        path: &[u8],
        base_path: Option<&[u8]>,
        all_base: bool,
        groups: &mut Groups,
    ) -> Result<()> {
        let t = walk.src.tree(tree)?;
        for e in &t.entries {
            let p = join_path(path, &e.name);
            let from_upper = !all_base && self.upper.contains(&p);
            let base_derived = all_base || !(self.merged.contains(&p) || from_upper);
            if from_upper && !walk.leads_to_moved.contains(&p) {
                continue;
            }
            let bp = match self.moved.get(&p) {
                Some(moved) if !all_base => Some(moved.clone()),
                // An upper entry has no lower; what it holds of the base came by a redirect.
                _ if from_upper => None,
                _ => base_path.map(|b| join_path(b, &e.name)),
            };
            if base_derived {
                match &e.node.content {
                    Content::File { nlink, .. } if *nlink > 1 => {
                        groups.add(bp.clone().unwrap_or_else(|| p.clone()), &p, &e.node)
                    }
                    Content::Hardlink { target } => groups.add(target.clone(), &p, &e.node),
                    _ => {}
                }
            }
            if let Content::Dir { tree } = e.node.content {
                self.collect(walk, tree, &p, bp.as_deref(), base_derived, groups)?;
            }
        }
        Ok(())
    }
}

/// What the walk that collects hardlink groups reads: the trees, and the upper directories on
/// the way to a moved one.
struct Collect<'a, 's> {
    src: &'a BlobSource<'s>,
    leads_to_moved: &'a HashSet<Vec<u8>>,
}

/// Visible members of one group: (path, node) in tree order.
type Members = Vec<(Vec<u8>, Node)>;

/// Base hardlink groups by their leader's path in the base, members in tree order.
#[derive(Default)]
struct Groups {
    members: Vec<(Vec<u8>, Members)>,
    index: HashMap<Vec<u8>, usize>,
}

impl Groups {
    fn add(&mut self, key: Vec<u8>, path: &[u8], node: &Node) {
        let i = *self.index.entry(key.clone()).or_insert_with(|| {
            self.members.push((key, Vec::new()));
            self.members.len() - 1
        });
        self.members[i].1.push((path.to_vec(), node.clone()));
    }
}

/// Rewrites the trees on the paths to `changes` (non-directory nodes by path) bottom-up.
fn rewrite(
    src: &BlobSource<'_>,
    writer: &BlobWriter<'_>,
    tree: TreeId,
    path: &[u8],
    changes: &BTreeMap<Vec<u8>, Node>,
) -> Result<TreeId> {
    let mut t = (*src.tree(tree)?).clone();
    for e in &mut t.entries {
        let p = join_path(path, &e.name);
        if let Some(n) = changes.get(&p) {
            e.node = n.clone();
        } else if let Content::Dir { tree: sub } = e.node.content {
            let mut below = p.clone();
            below.push(b'/');
            if changes
                .range(below.clone()..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(&below))
            {
                e.node.content = Content::Dir {
                    tree: rewrite(src, writer, sub, &p, changes)?,
                };
            }
        }
    }
    let id = writer.put_tree(&t)?;
    src.seed(HashMap::from([(id, Arc::new(t))]));
    Ok(id)
}

fn in_base(e: EngineError, path: &[u8]) -> EngineError {
    EngineError::Corrupt {
        what: format!("the base of {}", String::from_utf8_lossy(path)),
        reason: e.to_string(),
    }
}
