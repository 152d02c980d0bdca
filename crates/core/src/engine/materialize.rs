//! Materialize: make a live directory equal to a tree, touching only what differs.
//!
//! The caller supplies the tree the directory is known to hold now (`from`, just ingested) and
//! the tree it must hold (`to`). Entries equal on both sides, and whole subtrees with equal ids,
//! are skipped; extras are removed; everything else is written through `rootfs::Dir`, which
//! never follows a symlink it did not create. Files are written to a temporary name and renamed
//! into place, so a crash never leaves a half-written file under a real name.
//!
//! Hardlink followers are linked after every leader exists. A leader that is rewritten gets a
//! new inode, so its followers are re-linked too even when their own nodes did not change.

use super::blobs::BlobSource;
use super::statcache::{CacheEntry, StatSig};
use super::{EngineError, Progress, Result, join_path};
use crate::model::{Content, Extent, Node, Tree, TreeId};
use crate::rootfs::{ApplyOptions, Dir, FileKind, set_meta_fd};
use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// What a materialization did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub written_files: u64,
    pub written_bytes: u64,
    pub removed: u64,
    pub metadata_only: u64,
    /// Stat-cache entries for files written or re-stamped, by path.
    pub cache: Vec<(Vec<u8>, CacheEntry)>,
    /// Paths removed or replaced: their old cache entries (and descendants') are stale.
    pub invalidated: Vec<Vec<u8>>,
    pub warnings: Vec<String>,
}

pub(crate) struct Materializer<'a> {
    pub src: &'a BlobSource<'a>,
    pub opts: ApplyOptions,
    pub progress: &'a dyn Progress,
    /// The machine directory; hardlink targets are resolved from it.
    pub root: &'a Dir,
    pub applied: Applied,
    links: Vec<(Vec<u8>, Vec<u8>)>,
    rewritten_leaders: HashSet<Vec<u8>>,
}

fn kind_of(content: &Content) -> FileKind {
    match content {
        Content::File { .. } | Content::Hardlink { .. } => FileKind::File,
        Content::Dir { .. } => FileKind::Dir,
        Content::Symlink { .. } => FileKind::Symlink,
        Content::CharDev { .. } => FileKind::CharDev,
        Content::BlockDev { .. } => FileKind::BlockDev,
        Content::Fifo => FileKind::Fifo,
    }
}

impl<'a> Materializer<'a> {
    pub(crate) fn new(
        src: &'a BlobSource<'a>,
        root: &'a Dir,
        opts: ApplyOptions,
        progress: &'a dyn Progress,
    ) -> Self {
        Materializer {
            src,
            opts,
            progress,
            root,
            applied: Applied::default(),
            links: Vec::new(),
            rewritten_leaders: HashSet::new(),
        }
    }

    /// Makes directory `dir` (at `path`) hold `to`, given that it holds `from` now.
    pub(crate) fn apply_dir(
        &mut self,
        dir: &Dir,
        path: &[u8],
        from: Option<TreeId>,
        to: TreeId,
    ) -> Result<()> {
        if from == Some(to) {
            return Ok(());
        }
        let tf = match from {
            Some(id) => self.src.tree(id)?,
            None => Arc::new(Tree::default()),
        };
        let tt = self.src.tree(to)?;
        let (mut i, mut j) = (0, 0);
        while i < tf.entries.len() || j < tt.entries.len() {
            let (ef, et) = (tf.entries.get(i), tt.entries.get(j));
            match (ef, et) {
                (Some(a), Some(b)) if a.name == b.name => {
                    self.apply_entry(dir, path, &a.name, Some(&a.node), Some(&b.node))?;
                    i += 1;
                    j += 1;
                }
                (Some(a), Some(b)) if a.name < b.name => {
                    self.apply_entry(dir, path, &a.name, Some(&a.node), None)?;
                    i += 1;
                }
                (Some(a), None) => {
                    self.apply_entry(dir, path, &a.name, Some(&a.node), None)?;
                    i += 1;
                }
                (_, Some(b)) => {
                    self.apply_entry(dir, path, &b.name, None, Some(&b.node))?;
                    j += 1;
                }
                (None, None) => break,
            }
        }
        Ok(())
    }

    /// Makes entry `name` of `dir` equal `to` (absent when `None`), given it is `from` now.
    pub(crate) fn apply_entry(
        &mut self,
        dir: &Dir,
        parent: &[u8],
        name: &[u8],
        from: Option<&Node>,
        to: Option<&Node>,
    ) -> Result<()> {
        let path = join_path(parent, name);
        match (from, to) {
            (None, None) => Ok(()),
            (Some(a), Some(b)) if a == b => Ok(()),
            (Some(_), None) => {
                dir.remove(name)?;
                self.applied.removed += 1;
                self.applied.invalidated.push(path);
                Ok(())
            }
            (None, Some(b)) => self.create(dir, &path, name, b),
            (Some(a), Some(b)) => match (&a.content, &b.content) {
                (Content::Dir { tree: t1 }, Content::Dir { tree: t2 }) => {
                    let sub = dir.open_dir(name)?;
                    self.apply_dir(&sub, &path, Some(*t1), *t2)?;
                    sub.set_own_meta(&b.meta, &self.opts)?;
                    Ok(())
                }
                (
                    Content::File {
                        size: s1,
                        extents: e1,
                        ..
                    },
                    Content::File {
                        size: s2,
                        extents: e2,
                        ..
                    },
                ) if s1 == s2 && e1 == e2 => {
                    dir.set_meta(name, FileKind::File, &b.meta, &self.opts)?;
                    self.applied.metadata_only += 1;
                    self.restamp(dir, name, &path, e2)?;
                    Ok(())
                }
                (Content::Symlink { target: t1 }, Content::Symlink { target: t2 }) if t1 == t2 => {
                    dir.set_meta(name, FileKind::Symlink, &b.meta, &self.opts)?;
                    self.applied.metadata_only += 1;
                    Ok(())
                }
                (Content::Hardlink { target: t1 }, Content::Hardlink { target: t2 })
                    if t1 == t2 =>
                {
                    // Same inode as its leader: metadata follows the leader.
                    Ok(())
                }
                _ => {
                    // Type or content changed: replace. Files are renamed over the old entry;
                    // anything else is removed first.
                    if !matches!(b.content, Content::File { .. })
                        || matches!(a.content, Content::Dir { .. })
                    {
                        dir.remove(name)?;
                    }
                    self.applied.invalidated.push(path.clone());
                    self.create(dir, &path, name, b)
                }
            },
        }
    }

    fn create(&mut self, dir: &Dir, path: &[u8], name: &[u8], node: &Node) -> Result<()> {
        let meta = &node.meta;
        match &node.content {
            Content::File {
                size,
                extents,
                nlink,
            } => {
                let src = self.src;
                let progress = self.progress;
                let mut written = 0u64;
                let file = dir.write_file(name, |f| {
                    let mut off = 0u64;
                    for x in extents {
                        if let Extent::Data { id, .. } = x {
                            let data =
                                src.chunk(*id)
                                    .map_err(|e| crate::rootfs::RootfsError::Tar {
                                        entry: String::from_utf8_lossy(path).into_owned(),
                                        reason: e.to_string(),
                                    })?;
                            f.write_all_at(&data, off).map_err(|source| {
                                crate::rootfs::RootfsError::Io {
                                    path: String::from_utf8_lossy(path).into_owned(),
                                    op: "write",
                                    source,
                                }
                            })?;
                            written += data.len() as u64;
                            progress.advance(data.len() as u64);
                        }
                        off += x.len();
                    }
                    f.set_len(*size)
                        .map_err(|source| crate::rootfs::RootfsError::Io {
                            path: String::from_utf8_lossy(path).into_owned(),
                            op: "truncate",
                            source,
                        })
                })?;
                set_meta_fd(&file, meta, &self.opts)?;
                self.applied.written_files += 1;
                self.applied.written_bytes += written;
                if *nlink > 1 {
                    self.rewritten_leaders.insert(path.to_vec());
                }
                self.record(&file, path, extents)?;
            }
            Content::Dir { tree } => {
                let sub = dir.create_dir(name, 0o700)?;
                self.apply_dir(&sub, path, None, *tree)?;
                sub.set_own_meta(meta, &self.opts)?;
            }
            Content::Symlink { target } => {
                dir.symlink(name, target)?;
                dir.set_meta(name, FileKind::Symlink, meta, &self.opts)?;
            }
            Content::Hardlink { target } => {
                self.links.push((path.to_vec(), target.clone()));
            }
            Content::CharDev { rdev } | Content::BlockDev { rdev } => {
                if !self.opts.owners {
                    self.applied.warnings.push(format!(
                        "skipped device {} (creating devices needs root)",
                        super::diff::display_path(path)
                    ));
                    return Ok(());
                }
                dir.mknod(name, kind_of(&node.content), *rdev, meta.mode)?;
                dir.set_meta(name, kind_of(&node.content), meta, &self.opts)?;
            }
            Content::Fifo => {
                dir.mknod(name, FileKind::Fifo, 0, meta.mode)?;
                dir.set_meta(name, FileKind::Fifo, meta, &self.opts)?;
            }
        }
        Ok(())
    }

    /// Records the stat of a file just written or re-stamped, so the next checkpoint trusts it.
    fn record(&mut self, file: &std::fs::File, path: &[u8], extents: &[Extent]) -> Result<()> {
        let st = rustix::fs::fstat(file).map_err(|e| EngineError::Io {
            op: "stat",
            path: String::from_utf8_lossy(path).into_owned().into(),
            source: e.into(),
        })?;
        let sig = StatSig {
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime: crate::model::Timestamp {
                secs: st.st_mtime,
                nanos: st.st_mtime_nsec as u32,
            },
            ctime: crate::model::Timestamp {
                secs: st.st_ctime,
                nanos: st.st_ctime_nsec as u32,
            },
            mode: st.st_mode,
        };
        self.applied.cache.push((
            path.to_vec(),
            CacheEntry {
                sig,
                extents: extents.to_vec(),
            },
        ));
        Ok(())
    }

    fn restamp(&mut self, dir: &Dir, name: &[u8], path: &[u8], extents: &[Extent]) -> Result<()> {
        let file = dir.open_file(name)?;
        self.record(&file, path, extents)
    }

    /// Links deferred hardlink followers, and re-links followers of rewritten leaders found in
    /// `full_root` (the whole target tree's top directory).
    pub(crate) fn finish_links(&mut self, full_root: TreeId) -> Result<()> {
        if !self.rewritten_leaders.is_empty() {
            let mut extra = Vec::new();
            collect_followers(
                self.src,
                full_root,
                &[],
                &self.rewritten_leaders,
                &mut extra,
            )?;
            let known: HashSet<Vec<u8>> = self.links.iter().map(|(p, _)| p.clone()).collect();
            self.links
                .extend(extra.into_iter().filter(|(p, _)| !known.contains(p)));
        }
        for (path, target) in std::mem::take(&mut self.links) {
            let (dir, name) = open_parent(self.root, &path)?;
            let (src_dir, src_name) = open_parent(self.root, &target)?;
            dir.remove(&name)?;
            dir.hardlink(&src_dir, &src_name, &name)?;
            self.applied.invalidated.push(path);
        }
        Ok(())
    }
}

/// Opens the parent directory of a relative path without following symlinks.
pub(crate) fn open_parent(root: &Dir, path: &[u8]) -> Result<(Dir, Vec<u8>)> {
    let comps: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    let Some((last, parents)) = comps.split_last() else {
        return Err(EngineError::Invalid("empty path".to_owned()));
    };
    let mut dir = root.try_clone()?;
    for c in parents {
        dir = dir.open_dir(c)?;
    }
    Ok((dir, last.to_vec()))
}

fn collect_followers(
    src: &BlobSource<'_>,
    tree: TreeId,
    path: &[u8],
    leaders: &HashSet<Vec<u8>>,
    out: &mut Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<()> {
    let t = src.tree(tree)?;
    for e in &t.entries {
        let p = join_path(path, &e.name);
        match &e.node.content {
            Content::Dir { tree } => collect_followers(src, *tree, &p, leaders, out)?,
            Content::Hardlink { target } if leaders.contains(target) => {
                out.push((p, target.clone()))
            }
            _ => {}
        }
    }
    Ok(())
}
