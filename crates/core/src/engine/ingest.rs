//! Ingest: a live directory → a tree, reading only files whose stat changed.
//!
//! 1. One thread walks the directory depth-first in name order (`readdir` + `lstat` + xattrs),
//!    building a skeleton of every directory. Files whose stat matches the stat cache reuse the
//!    cached extents; the others go, with their parent's directory fd, onto a bounded queue.
//! 2. Worker threads read queued files (data regions only, so holes stay holes), chunk, hash,
//!    dedup and compress them in parallel.
//! 3. Trees are encoded bottom-up and stored; the result is the id of the checkpoint root.
//!
//! The checkpoint root is a tree with one entry, `ROOT_ENTRY`, whose node is the machine
//! directory itself, so the directory's own mode, owner, times and xattrs are part of it.

use super::blobs::BlobWriter;
use super::statcache::{CacheEntry, RACY_WINDOW_NS, StatCache, StatSig};
use super::upper::{self, Layers, UpperBase};
use super::{EngineError, Progress, Result, join_path};
use crate::chunker::{chunk_slice, chunk_stream};
use crate::model::{BlobId, ChunkId, Content, Entry, Extent, Meta, Node, Tree, TreeId};
use crate::rootfs::{Dir, FileKind, ScanEntry, data_regions, meta_from_stat};

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex, mpsc};

/// Name of the single entry of a checkpoint's root tree: the machine directory itself.
pub(crate) const ROOT_ENTRY: &[u8] = b"root";

/// Files up to this size are read whole and chunked from memory.
const SLURP_LIMIT: u64 = 8 << 20;

pub(crate) struct IngestOptions<'a> {
    pub progress: &'a dyn Progress,
    pub cache: &'a StatCache,
    /// Cached extents may be used without checking that their chunks are still live (the gc
    /// epoch has not moved since the cache was written).
    pub trust_cache: bool,
    pub workers: usize,
    /// Set when the directory is an overlay upper layer: the result is this layer merged over
    /// its base tree (see `upper.rs`), and only the upper layer is walked.
    pub upper: Option<UpperBase<'a>>,
}

pub(crate) struct Ingested {
    pub root: TreeId,
    pub logical_bytes: u64,
    pub entries: u64,
    pub read_bytes: u64,
    pub cache: StatCache,
    pub warnings: Vec<String>,
    /// How long the machine's processes took to freeze, when they were frozen for the walk.
    pub frozen: Option<std::time::Duration>,
    /// What another process stored for this ingest (one in a user namespace, see
    /// `rootless.rs`); the caller's writer stored the rest.
    pub written: super::blobs::WriteStats,
}

enum Slot {
    Ready(Node),
    /// A regular file whose extents come from job `job`.
    File {
        meta: Meta,
        job: usize,
        link: Option<(u64, u64)>,
    },
    /// A regular file whose stat matched the cache.
    Cached {
        meta: Meta,
        extents: Vec<Extent>,
        link: Option<(u64, u64)>,
    },
    Dir(usize),
}

struct PendingDir {
    entries: Vec<(Vec<u8>, Slot)>,
}

struct Job {
    id: usize,
    dir: Arc<Dir>,
    name: Vec<u8>,
    path: Vec<u8>,
    sig: StatSig,
    blocks: u64,
}

struct JobResult {
    extents: Vec<Extent>,
    cache: Option<(Vec<u8>, CacheEntry)>,
    read: u64,
}

struct Walk<'a> {
    opts: &'a IngestOptions<'a>,
    /// What an upper-layer ingest learns about which entries came from which layer.
    layers: Layers,
    writer: &'a BlobWriter<'a>,
    dirs: Vec<PendingDir>,
    dir_meta: Vec<Meta>,
    /// (dev, ino) of hardlinked files → (leader path, links seen).
    links: HashMap<(u64, u64), (Vec<u8>, u32)>,
    jobs: usize,
    queue: mpsc::SyncSender<Job>,
    new_cache: StatCache,
    logical: u64,
    entries: u64,
    warnings: Vec<String>,
}

/// Ingests the directory `root` into the store and returns the checkpoint root tree.
pub(crate) fn ingest(
    root: &Dir,
    writer: &BlobWriter<'_>,
    opts: &IngestOptions<'_>,
) -> Result<Ingested> {
    opts.progress.phase("scanning", None);
    let (tx, rx) = mpsc::sync_channel::<Job>(256);
    let rx = Mutex::new(rx);
    let results: Mutex<HashMap<usize, JobResult>> = Mutex::new(HashMap::new());
    let failure: Mutex<Option<EngineError>> = Mutex::new(None);

    let walked = std::thread::scope(|s| {
        for _ in 0..opts.workers.max(1) {
            s.spawn(|| {
                loop {
                    let job = match lock(&rx).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    if lock(&failure).is_some() {
                        continue; // keep draining so the walker is never blocked
                    }
                    match read_file(&job, writer) {
                        Ok(r) => {
                            opts.progress.advance(r.read);
                            lock(&results).insert(job.id, r);
                        }
                        Err(e) => {
                            lock(&failure).get_or_insert(e);
                        }
                    }
                }
            });
        }
        let mut walk = Walk {
            opts,
            layers: Layers::new(opts.upper.as_ref()),
            writer,
            dirs: Vec::new(),
            dir_meta: Vec::new(),
            links: HashMap::new(),
            jobs: 0,
            queue: tx,
            new_cache: StatCache::default(),
            logical: 0,
            entries: 0,
            warnings: Vec::new(),
        };
        let walked = (|| {
            let root = Arc::new(root.try_clone()?);
            let xattrs = root.read_dir_xattrs()?;
            let stat = root.stat_self()?;
            let (root_meta, base) = match &opts.upper {
                Some(up) => (up.meta(&stat, xattrs), Some((up.base_top()?, Vec::new()))),
                None => (meta_from_stat(&stat, xattrs), None),
            };
            walk.walk_dir(root, Vec::new(), root_meta, base)
        })();
        // Closing the queue lets the workers finish it and exit, so the scope can end.
        walk.queue = mpsc::sync_channel(0).0;
        walked.map(|idx| (idx, walk))
    });
    let (root_idx, walk) = walked?;
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    let Walk {
        dirs,
        dir_meta,
        links,
        mut new_cache,
        mut logical,
        mut entries,
        warnings,
        mut layers,
        ..
    } = walk;

    opts.progress.phase("writing trees", None);
    let mut read_bytes = 0;
    let mut tree_ids: Vec<Option<TreeId>> = vec![None; dirs.len()];
    // Children always have higher indices than their parent (pre-order), so reverse order
    // encodes every subtree before the tree that names it.
    for (idx, dir) in dirs.into_iter().enumerate().rev() {
        let mut tree = Tree {
            entries: Vec::with_capacity(dir.entries.len()),
        };
        for (name, slot) in dir.entries {
            let node = match slot {
                Slot::Ready(node) => node,
                Slot::Dir(child) => Node {
                    meta: dir_meta[child].clone(),
                    content: Content::Dir {
                        tree: tree_ids[child].expect("invariant: children are encoded first"),
                    },
                },
                Slot::File {
                    meta, job, link, ..
                } => {
                    let r = results
                        .remove(&job)
                        .expect("invariant: every queued file has a result");
                    read_bytes += r.read;
                    if let Some((path, entry)) = r.cache {
                        new_cache.entries.insert(path, entry);
                    }
                    file_node(
                        meta,
                        r.extents,
                        link.and_then(|k| links.get(&k)).map_or(1, |l| l.1),
                    )
                }
                Slot::Cached {
                    meta,
                    extents,
                    link,
                } => file_node(
                    meta,
                    extents,
                    link.and_then(|k| links.get(&k)).map_or(1, |l| l.1),
                ),
            };
            tree.entries.push(Entry { name, node });
        }
        let id = writer.put_tree(&tree)?;
        layers.keep_tree(id, tree);
        tree_ids[idx] = Some(id);
    }
    let mut top = tree_ids[root_idx].expect("invariant: root is encoded");
    if let Some(up) = &opts.upper {
        let fixed = layers.finish(up, top, writer)?;
        top = fixed.top;
        logical = (logical as i64 + fixed.logical_delta) as u64;
        entries = (entries as i64 + fixed.entries_delta) as u64;
    }
    let root_tree = Tree {
        entries: vec![Entry {
            name: ROOT_ENTRY.to_vec(),
            node: Node {
                meta: dir_meta[root_idx].clone(),
                content: Content::Dir { tree: top },
            },
        }],
    };
    let root = writer.put_tree(&root_tree)?;
    new_cache.epoch = opts.cache.epoch;
    Ok(Ingested {
        root,
        logical_bytes: logical,
        entries,
        read_bytes,
        cache: new_cache,
        warnings,
        frozen: None,
        written: Default::default(),
    })
}

fn file_node(meta: Meta, extents: Vec<Extent>, nlink: u32) -> Node {
    // The size is what was read, so extents always cover it even if the file changed meanwhile.
    let size = extents.iter().map(Extent::len).sum();
    Node {
        meta,
        content: Content::File {
            size,
            nlink,
            extents,
        },
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Walk<'_> {
    /// Walks one directory, returning its index in `dirs`. `base` is, when this is an
    /// upper-layer ingest and the directory merges over a base directory, that directory's
    /// tree and its path in the base (not the directory's own path when a redirect moved it).
    fn walk_dir(
        &mut self,
        dir: Arc<Dir>,
        path: Vec<u8>,
        meta: Meta,
        base: Option<(Arc<Tree>, Vec<u8>)>,
    ) -> Result<usize> {
        let idx = self.dirs.len();
        self.dirs.push(PendingDir {
            entries: Vec::new(),
        });
        self.dir_meta.push(meta);
        let listing = dir.entries()?;
        let mut slots = Vec::with_capacity(listing.len());
        let opts = self.opts;
        if let Some(up) = &opts.upper {
            if base.is_some() {
                self.layers.merged_dir(&path);
            }
            let (base, lower_path) = base.unzip();
            for item in upper::merge_listing(base.as_deref(), listing) {
                let child_path = join_path(&path, item.name());
                let (entry, base) = match item {
                    upper::Item::Base(entry) => {
                        slots.push((entry.name, Slot::Ready(entry.node)));
                        continue;
                    }
                    upper::Item::Upper { entry, base } => (entry, base),
                };
                let whiteout = upper::is_whiteout(&entry);
                let xattrs = if whiteout {
                    Vec::new()
                } else {
                    dir.read_xattrs(&entry.name, entry.kind)?
                };
                // The entry's lower: the base entry of its name, or where a redirect points.
                let own_lower = lower_path.as_ref().map(|p| join_path(p, &entry.name));
                let (lower, lower_at) = match up.redirected(&xattrs, lower_path.as_deref()) {
                    Some(to) if to != own_lower => match to {
                        Some(p) => (up.base_at(&p)?, Some(p)),
                        None => (None, None),
                    },
                    _ => (base.clone(), own_lower.clone()),
                };
                let moved = lower_at.is_some() && lower_at != own_lower;
                let merge_base = match (&lower, entry.kind) {
                    (Some(b), FileKind::Dir) if !up.is_opaque(&xattrs) => up.dir_below(b)?,
                    _ => None,
                };
                if let Some(b) = &base
                    && (merge_base.is_none() || moved)
                {
                    self.layers.shadowed(up, b, &child_path)?;
                }
                if whiteout {
                    continue;
                }
                let meta = up.meta(&entry.stat, xattrs.clone());
                if let (Some(t), Some(at)) = (merge_base, lower_at) {
                    // The directory merges over a base one, which the base already counted
                    // unless a redirect brought it here from elsewhere.
                    if moved {
                        let node = lower.as_ref().expect("invariant: a merge base has a node");
                        self.layers.moved(up, node, &child_path, at.clone())?;
                    }
                    let child = Arc::new(dir.open_dir(&entry.name)?);
                    let idx = self.walk_dir(child, child_path, meta, Some((t, at)))?;
                    slots.push((entry.name, Slot::Dir(idx)));
                    continue;
                }
                self.layers.taken_from_upper(&child_path);
                let slot = if entry.kind == FileKind::File && up.is_metacopy(&xattrs) {
                    let data = up.lower_data(lower.as_ref(), entry.stat.size, &child_path)?;
                    Some(self.file_slot(&dir, &entry, &child_path, meta, Some(data))?)
                } else {
                    self.entry_slot_meta(&dir, &entry, &child_path, meta)?
                };
                if let Some(slot) = slot {
                    self.entries += 1;
                    slots.push((entry.name, slot));
                }
            }
        } else {
            for entry in listing {
                let child_path = join_path(&path, &entry.name);
                if let Some(slot) = self.entry_slot(&dir, &entry, &child_path)? {
                    self.entries += 1;
                    slots.push((entry.name, slot));
                }
            }
        }
        self.dirs[idx].entries = slots;
        Ok(idx)
    }

    fn entry_slot(&mut self, dir: &Arc<Dir>, e: &ScanEntry, path: &[u8]) -> Result<Option<Slot>> {
        let xattrs = dir.read_xattrs(&e.name, e.kind)?;
        let meta = meta_from_stat(&e.stat, xattrs);
        self.entry_slot_meta(dir, e, path, meta)
    }

    /// The slot of one entry whose metadata is already read; `None` for a skipped socket.
    fn entry_slot_meta(
        &mut self,
        dir: &Arc<Dir>,
        e: &ScanEntry,
        path: &[u8],
        meta: Meta,
    ) -> Result<Option<Slot>> {
        let st = &e.stat;
        let content = match e.kind {
            FileKind::Socket => {
                self.warnings
                    .push(format!("skipped socket {}", String::from_utf8_lossy(path)));
                return Ok(None);
            }
            FileKind::Dir => {
                let child = Arc::new(dir.open_dir(&e.name)?);
                let idx = self.walk_dir(child, path.to_vec(), meta, None)?;
                return Ok(Some(Slot::Dir(idx)));
            }
            FileKind::Symlink => Content::Symlink {
                target: dir.read_link(&e.name)?,
            },
            FileKind::CharDev => Content::CharDev { rdev: st.rdev },
            FileKind::BlockDev => Content::BlockDev { rdev: st.rdev },
            FileKind::Fifo => Content::Fifo,
            FileKind::File => return self.file_slot(dir, e, path, meta, None).map(Some),
        };
        self.logical += match &content {
            Content::Symlink { target } => target.len() as u64,
            _ => 0,
        };
        Ok(Some(Slot::Ready(Node { meta, content })))
    }

    /// The slot of a regular file; `data` is its bytes when they are known without reading
    /// it (a metadata-only copy-up keeps its lower file's).
    fn file_slot(
        &mut self,
        dir: &Arc<Dir>,
        e: &ScanEntry,
        path: &[u8],
        meta: Meta,
        data: Option<Vec<Extent>>,
    ) -> Result<Slot> {
        let st = &e.stat;
        let mut link = None;
        if st.nlink > 1 {
            let key = (st.dev, st.ino);
            if let Some((leader, count)) = self.links.get_mut(&key) {
                *count += 1;
                return Ok(Slot::Ready(Node {
                    meta,
                    content: Content::Hardlink {
                        target: leader.clone(),
                    },
                }));
            }
            self.links.insert(key, (path.to_vec(), 1));
            link = Some(key);
        }
        self.logical += st.size;
        if let Some(extents) = data {
            return Ok(Slot::Cached {
                meta,
                extents,
                link,
            });
        }
        let sig = StatSig {
            ino: st.ino,
            size: st.size,
            mtime: st.mtime,
            ctime: st.ctime,
            mode: st.mode,
        };
        if let Some(hit) = self.opts.cache.entries.get(path)
            && hit.sig == sig
            && (self.opts.trust_cache || self.all_live(&hit.extents)?)
        {
            let extents = hit.extents.clone();
            self.new_cache.entries.insert(path.to_vec(), hit.clone());
            return Ok(Slot::Cached {
                meta,
                extents,
                link,
            });
        }
        let id = self.jobs;
        self.jobs += 1;
        let job = Job {
            id,
            dir: Arc::clone(dir),
            name: e.name.clone(),
            path: path.to_vec(),
            sig,
            blocks: st.blocks,
        };
        self.queue
            .send(job)
            .map_err(|_| EngineError::Invalid("every ingest worker stopped".to_owned()))?;
        Ok(Slot::File {
            meta,
            job: id,
            link,
        })
    }

    fn all_live(&self, extents: &[Extent]) -> Result<bool> {
        for x in extents {
            if let Extent::Data { id, .. } = x
                && !self.writer.is_live(BlobId::from(*id))?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Reads one file's data regions, chunking and storing them. Holes become hole extents.
fn read_file(job: &Job, writer: &BlobWriter<'_>) -> Result<JobResult> {
    let read_start = super::now_ns();
    let mut file = job.dir.open_file(&job.name)?;
    let io = |op, source| EngineError::Io {
        op,
        path: String::from_utf8_lossy(&job.path).into_owned().into(),
        source,
    };
    let size = job.sig.size;
    let regions = data_regions(&file, size, job.blocks)?;
    let mut extents: Vec<Extent> = Vec::new();
    let mut pos = 0u64;
    let mut read = 0u64;
    let mut shrank = false;
    let push_hole = |extents: &mut Vec<Extent>, len: u64| {
        if len == 0 {
            return;
        }
        if let Some(Extent::Hole { len: l }) = extents.last_mut() {
            *l += len;
        } else {
            extents.push(Extent::Hole { len });
        }
    };
    let store = |extents: &mut Vec<Extent>, chunk: &[u8]| -> Result<()> {
        let id = ChunkId::of(chunk);
        writer.put_chunk(id, chunk)?;
        extents.push(Extent::Data {
            id,
            len: chunk.len() as u64,
        });
        Ok(())
    };
    for (off, len) in regions {
        push_hole(&mut extents, off.saturating_sub(pos));
        file.seek(SeekFrom::Start(off)).map_err(|e| io("seek", e))?;
        let mut got = 0u64;
        if len <= SLURP_LIMIT {
            let mut buf = Vec::with_capacity(len as usize);
            (&mut file)
                .take(len)
                .read_to_end(&mut buf)
                .map_err(|e| io("read", e))?;
            for r in chunk_slice(&buf) {
                store(&mut extents, &buf[r])?;
            }
            got = buf.len() as u64;
        } else {
            for chunk in chunk_stream((&mut file).take(len)) {
                let chunk = chunk.map_err(|e| io("read", e))?;
                got += chunk.len() as u64;
                store(&mut extents, &chunk)?;
            }
        }
        read += got;
        pos = off + got;
        if got < len {
            shrank = true; // what was read is what is recorded; the stat check below sees it
            break;
        }
    }
    if !shrank && pos < size {
        push_hole(&mut extents, size - pos); // a trailing hole
    }
    // Cache the result only if the file did not change while it was read and is not racy.
    let after = job.dir.stat_entry(&job.name)?;
    let unchanged = after.as_ref().is_some_and(|a| {
        a.stat.ino == job.sig.ino
            && a.stat.size == job.sig.size
            && a.stat.mtime == job.sig.mtime
            && a.stat.ctime == job.sig.ctime
    });
    let ctime_ns =
        job.sig.ctime.secs.saturating_mul(1_000_000_000) + i64::from(job.sig.ctime.nanos);
    let cache = (unchanged
        && ctime_ns < read_start - RACY_WINDOW_NS
        && extents.iter().map(Extent::len).sum::<u64>() == size)
        .then(|| {
            (
                job.path.clone(),
                CacheEntry {
                    sig: job.sig.clone(),
                    extents: extents.clone(),
                },
            )
        });
    Ok(JobResult {
        extents,
        cache,
        read,
    })
}
