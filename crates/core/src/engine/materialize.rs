//! Materialize: make a live directory equal to a tree, touching only what differs.
//!
//! The caller supplies the tree the directory is known to hold now (`from`, just ingested) and
//! the tree it must hold (`to`). Entries equal on both sides, and whole subtrees with equal ids,
//! are skipped; extras are removed; everything else is written through `rootfs::Dir`, which
//! never follows a symlink it did not create. Files are written to a temporary name and renamed
//! into place, so a crash never leaves a half-written file under a real name.
//!
//! Work happens in four phases so that file writes run in parallel:
//! 1. one thread walks both trees, removes extras, creates directories, symlinks and devices,
//!    applies metadata-only changes, and queues every file whose content must be written;
//! 2. worker threads write the queued files (temp name, data, holes, metadata, rename);
//! 3. hardlink followers are linked, now that every leader exists (a rewritten leader has a new
//!    inode, so its followers are re-linked even when their own nodes did not change);
//! 4. directory metadata is applied deepest first, last, because every change inside a
//!    directory moves its mtime.

use super::blobs::BlobSource;
use super::statcache::{CacheEntry, StatSig};
use super::{EngineError, Progress, Result, join_path};
use crate::model::{Content, Extent, Meta, Node, Timestamp, Tree, TreeId, Xattr};
use crate::rootfs::{ApplyOptions, Dir, FileKind, RootfsError, set_meta_fd};
use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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

/// How a lower image is written (`image.rs`): a file whose bytes the data layer holds gets a
/// metadata-only stub naming its copy, and the tree's own overlay attributes are escaped, as
/// a lower view serves them.
///
/// Files of 32 KiB or less (not `mount::data_large`) are written whole instead. Overlayfs
/// pays for a metacopy stub on every open and stat (its data is a second inode to find and stat), a cost
/// that only shows where opens dominate, on small files; measured on a Debian root filesystem,
/// stubs for every file read the whole tree about 5% slower than whole files, and inlining the
/// files up to 32 KiB (nearly nine in ten of them, an eighth of the bytes) closes the gap while
/// the large files, where the bytes are, stay shared with the data layer.
#[derive(Clone, Copy)]
pub(crate) struct Stubs<'a> {
    pub data: &'a crate::mount::DataLayer,
    pub escape: crate::mount::Escape,
}

impl Stubs<'_> {
    /// The metadata an entry of the image carries: the tree's, its overlay attributes escaped,
    /// with the attributes that send overlayfs to a copy when `copy` names one.
    fn meta(&self, meta: &Meta, copy: Option<&str>) -> Meta {
        let mut out = meta.clone();
        for x in &mut out.xattrs {
            x.name = self.escape.served(&x.name).into_owned();
        }
        if let Some(key) = copy {
            let names = crate::mount::DataLayer::copy_xattrs(key);
            out.xattrs
                .extend(names.into_iter().map(|(name, value)| Xattr { name, value }));
        }
        out.xattrs.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The copy a file's stub names: only for a large file (`mount::data_large`) whose copy
    /// the data layer holds. Smaller ones are written whole.
    fn copy(&self, node: &Node) -> Option<String> {
        let extents = crate::mount::data_eligible(node).filter(|x| crate::mount::data_large(x))?;
        let key = crate::mount::data_key(extents);
        self.data.holds(&key).then_some(key)
    }
}

/// A file whose content phase 2 writes.
struct FileJob {
    parent: Vec<u8>,
    name: Vec<u8>,
    path: Vec<u8>,
    node: Node,
}

pub(crate) struct Materializer<'a> {
    pub src: &'a BlobSource<'a>,
    pub opts: ApplyOptions,
    pub progress: &'a dyn Progress,
    /// The machine directory; queued work is found again from it by path.
    pub root: &'a Dir,
    pub applied: Applied,
    links: Vec<(Vec<u8>, Vec<u8>)>,
    rewritten_leaders: HashSet<Vec<u8>>,
    files: Vec<FileJob>,
    /// Directories whose metadata phase 4 applies, by path (empty for the machine root).
    dir_metas: Vec<(Vec<u8>, Meta)>,
    stubs: Option<Stubs<'a>>,
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
            files: Vec::new(),
            dir_metas: Vec::new(),
            stubs: None,
        }
    }

    /// Writes a lower image instead of a machine's files (see `Stubs`).
    pub(crate) fn with_stubs(mut self, stubs: Stubs<'a>) -> Self {
        self.stubs = Some(stubs);
        self
    }

    /// The metadata `create` gives an entry that is not a regular file.
    fn meta_of<'m>(&self, meta: &'m Meta) -> std::borrow::Cow<'m, Meta> {
        match &self.stubs {
            Some(s) => std::borrow::Cow::Owned(s.meta(meta, None)),
            None => std::borrow::Cow::Borrowed(meta),
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
                    let meta = self.meta_of(&b.meta).into_owned();
                    self.dir_metas.push((path, meta));
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
        let meta = &*self.meta_of(&node.meta);
        match &node.content {
            Content::File { nlink, .. } => {
                if *nlink > 1 {
                    self.rewritten_leaders.insert(path.to_vec());
                }
                let parent = path[..path.len() - name.len()]
                    .strip_suffix(b"/")
                    .unwrap_or_default()
                    .to_vec();
                self.files.push(FileJob {
                    parent,
                    name: name.to_vec(),
                    path: path.to_vec(),
                    node: node.clone(),
                });
            }
            Content::Dir { tree } => {
                let sub = dir.create_dir(name, 0o700)?;
                self.apply_dir(&sub, path, None, *tree)?;
                self.dir_metas.push((path.to_vec(), meta.clone()));
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

    /// Re-records a file whose metadata changed in place (its ctime moved).
    fn restamp(&mut self, dir: &Dir, name: &[u8], path: &[u8], extents: &[Extent]) -> Result<()> {
        let file = dir.open_file(name)?;
        self.applied
            .cache
            .push((path.to_vec(), cache_entry(&file, path, extents)?));
        Ok(())
    }

    /// Phases 2–4. `top` is the target's node for the machine directory itself; its metadata
    /// is applied to the machine directory only for a whole-tree materialization.
    pub(crate) fn finish(&mut self, top: &Node, whole: bool) -> Result<()> {
        self.write_files()?;
        self.link(top)?;
        if whole {
            let meta = self.meta_of(&top.meta).into_owned();
            self.dir_metas.push((Vec::new(), meta));
        }
        let mut metas = std::mem::take(&mut self.dir_metas);
        metas.sort_by_key(|(p, _)| std::cmp::Reverse(depth(p)));
        metas.dedup_by(|a, b| a.0 == b.0);
        for (path, meta) in metas {
            open_dir_path(self.root, &path)?.set_own_meta(&meta, &self.opts)?;
        }
        Ok(())
    }

    /// Phase 2: the queued files, written by a few threads.
    fn write_files(&mut self) -> Result<()> {
        let jobs = std::mem::take(&mut self.files);
        if jobs.is_empty() {
            return Ok(());
        }
        let workers = crate::cpus().clamp(1, 8);
        // Runs of files with the same parent (jobs are in walk order): a worker takes a whole
        // run, so each directory is opened once rather than once per file.
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            match runs.last_mut() {
                Some(r) if jobs[r.start].parent == job.parent && r.len() < 256 => r.end = i + 1,
                _ => runs.push(i..i + 1),
            }
        }
        let next = AtomicUsize::new(0);
        let done: Mutex<Vec<(u64, Vec<u8>, CacheEntry)>> =
            Mutex::new(Vec::with_capacity(jobs.len()));
        let failure: Mutex<Option<EngineError>> = Mutex::new(None);
        let (src, root, opts, progress) = (self.src, self.root, &self.opts, self.progress);
        let stubs = self.stubs;
        std::thread::scope(|s| {
            for _ in 0..workers.min(runs.len()) {
                s.spawn(|| {
                    let mut current: Option<(Vec<u8>, Dir)> = None;
                    while let Some(run) = runs.get(next.fetch_add(1, Ordering::Relaxed)) {
                        for job in &jobs[run.clone()] {
                            if lock(&failure).is_some() {
                                return;
                            }
                            let w = write_job(src, root, opts, progress, &mut current, job, stubs);
                            match w {
                                Ok((n, entry)) => lock(&done).push((n, job.path.clone(), entry)),
                                Err(e) => {
                                    lock(&failure).get_or_insert(e);
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        for (n, path, entry) in done.into_inner().unwrap_or_else(|p| p.into_inner()) {
            self.applied.written_files += 1;
            self.applied.written_bytes += n;
            self.applied.cache.push((path, entry));
        }
        Ok(())
    }

    /// Phase 3: links deferred hardlink followers, and re-links followers of rewritten leaders.
    fn link(&mut self, top: &Node) -> Result<()> {
        let Content::Dir { tree: full_root } = top.content else {
            return Ok(());
        };
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
            dir.hardlink(&src_dir, &src_name, &name)?;
            // Linking moved the parent's mtime: make sure phase 4 stamps it.
            let parent = path[..path.len() - name.len()]
                .strip_suffix(b"/")
                .unwrap_or_default()
                .to_vec();
            let comps: Vec<Vec<u8>> = parent
                .split(|&b| b == b'/')
                .filter(|c| !c.is_empty())
                .map(<[u8]>::to_vec)
                .collect();
            if let Some(node) = super::restore::lookup_path(self.src, top, &comps)? {
                let meta = self.meta_of(&node.meta).into_owned();
                self.dir_metas.push((parent, meta));
            }
            self.applied.invalidated.push(path);
        }
        Ok(())
    }
}

fn depth(path: &[u8]) -> usize {
    if path.is_empty() {
        0
    } else {
        1 + path.iter().filter(|&&b| b == b'/').count()
    }
}

/// Writes one queued file: data extents at their offsets, holes left unwritten, then metadata.
fn write_job(
    src: &BlobSource<'_>,
    root: &Dir,
    opts: &ApplyOptions,
    progress: &dyn Progress,
    current: &mut Option<(Vec<u8>, Dir)>,
    job: &FileJob,
    stubs: Option<Stubs<'_>>,
) -> Result<(u64, CacheEntry)> {
    if current.as_ref().is_none_or(|(p, _)| *p != job.parent) {
        *current = Some((job.parent.clone(), open_dir_path(root, &job.parent)?));
    }
    let dir = &current.as_ref().expect("invariant: set above").1;
    let Content::File { size, extents, .. } = &job.node.content else {
        return Err(EngineError::Invalid(
            "a queued file is not a file".to_owned(),
        ));
    };
    let shown = || String::from_utf8_lossy(&job.path).into_owned();
    if let Some(stubs) = stubs {
        let copy = stubs.copy(&job.node);
        if copy.is_some() {
            // A stub: the file's size and metadata, no blocks; overlayfs reads the copy.
            let file = dir.write_file(&job.name, |f| {
                f.set_len(*size).map_err(|source| RootfsError::Io {
                    path: shown(),
                    op: "truncate",
                    source,
                })
            })?;
            set_meta_fd(&file, &stubs.meta(&job.node.meta, copy.as_deref()), opts)?;
            return Ok((0, cache_entry(&file, &job.path, extents)?));
        }
    }
    let mut written = 0u64;
    let file = dir.write_file(&job.name, |f| {
        let mut off = 0u64;
        for x in extents {
            if let Extent::Data { id, .. } = x {
                let data = src.chunk(*id).map_err(|e| RootfsError::Tar {
                    entry: shown(),
                    reason: e.to_string(),
                })?;
                f.write_all_at(&data, off)
                    .map_err(|source| RootfsError::Io {
                        path: shown(),
                        op: "write",
                        source,
                    })?;
                written += data.len() as u64;
                progress.advance(data.len() as u64);
            }
            off += x.len();
        }
        f.set_len(*size).map_err(|source| RootfsError::Io {
            path: shown(),
            op: "truncate",
            source,
        })
    })?;
    match stubs {
        Some(s) => set_meta_fd(&file, &s.meta(&job.node.meta, None), opts)?,
        None => set_meta_fd(&file, &job.node.meta, opts)?,
    }
    Ok((written, cache_entry(&file, &job.path, extents)?))
}

/// The stat-cache entry of a file just written or re-stamped, so the next checkpoint trusts it.
fn cache_entry(file: &std::fs::File, path: &[u8], extents: &[Extent]) -> Result<CacheEntry> {
    let st = rustix::fs::fstat(file).map_err(|e| EngineError::Io {
        op: "stat",
        path: String::from_utf8_lossy(path).into_owned().into(),
        source: e.into(),
    })?;
    let sig = StatSig {
        ino: st.st_ino,
        size: st.st_size as u64,
        mtime: Timestamp {
            secs: st.st_mtime,
            nanos: st.st_mtime_nsec as u32,
        },
        ctime: Timestamp {
            secs: st.st_ctime,
            nanos: st.st_ctime_nsec as u32,
        },
        mode: st.st_mode,
    };
    Ok(CacheEntry {
        sig,
        extents: extents.to_vec(),
    })
}

/// Opens a directory by its path below the machine root, one component at a time, never
/// following a symlink.
fn open_dir_path(root: &Dir, path: &[u8]) -> Result<Dir> {
    let mut dir = root.try_clone()?;
    for c in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        dir = dir.open_dir(c)?;
    }
    Ok(dir)
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
