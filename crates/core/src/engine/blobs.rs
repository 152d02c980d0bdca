//! Writing and reading blobs (chunks and trees) for one operation.
//!
//! `BlobWriter` dedups against the catalog and this session's own writes, compresses on the
//! caller's thread (so ingest workers compress in parallel), and fills packs that it uploads and
//! indexes as they fill. `BlobSource` reads blobs back through the catalog's index, keeping
//! decoded trees in memory because trees are immutable.

use super::{EngineError, Result, now_ns};
use crate::catalog::{BlobLoc, Catalog, PackRow};
use crate::model::{BlobId, ChunkId, Tree, TreeId, decode_tree, encode_tree};
use crate::store::{BlobKind, FinishedPack, PackWriter, Store, encode_blob, encode_tree_blob};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Packs are uploaded once their stored bytes reach this size.
pub(crate) const PACK_TARGET: u64 = 16 << 20;

/// What a writer added to the store.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct WriteStats {
    pub blobs: u64,
    pub stored_bytes: u64,
}

impl WriteStats {
    pub(crate) fn add(&mut self, other: WriteStats) {
        self.blobs += other.blobs;
        self.stored_bytes += other.stored_bytes;
    }
}

struct WriterState {
    data: PackWriter,
    trees: PackWriter,
    /// Blobs this session has written or is writing: never written twice, never re-looked-up.
    mine: HashSet<BlobId>,
    stats: WriteStats,
}

pub(crate) struct BlobWriter<'a> {
    store: &'a Store,
    catalog_path: PathBuf,
    /// Indexes the packs this writer uploads; opened with the first one (a dry writer, or one
    /// whose blobs all exist, never opens it). Its commits are not fsynced: a pack is durable
    /// before its rows are inserted, and a row matters only to a checkpoint that references
    /// the blob, whose own synced commit comes later in the same WAL and makes every earlier
    /// frame durable with it. Power loss before that leaves an unindexed pack, which gc
    /// removes, as after any crash before the commit.
    catalog: OnceLock<Mutex<Catalog>>,
    /// Answers "is this blob live?" from one read snapshot taken when the writer started: no
    /// lock round trip per chunk. Blobs indexed after the snapshot are at worst written again
    /// (dedup is lost, never correctness), and a blob gc dooms after the snapshot is protected
    /// by this writer's session, which started before the snapshot (see gc.rs).
    lookups: Mutex<Catalog>,
    state: Mutex<WriterState>,
    /// A dry writer stores nothing: it hashes chunks and keeps trees in memory, to learn the
    /// tree of a live directory without adding to the store (diff against live, recovery).
    dry: Option<Mutex<HashMap<TreeId, Arc<Tree>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic on another thread already fails the operation; the data under the lock is still
    // consistent because every critical section leaves it so.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<'a> BlobWriter<'a> {
    pub(crate) fn new(store: &'a Store, catalog_path: &Path) -> Result<Self> {
        let lookups = Catalog::open(catalog_path)?;
        lookups.hold_read_snapshot()?;
        Ok(BlobWriter {
            store,
            catalog_path: catalog_path.to_owned(),
            catalog: OnceLock::new(),
            lookups: Mutex::new(lookups),
            state: Mutex::new(WriterState {
                data: PackWriter::new(),
                trees: PackWriter::new(),
                mine: HashSet::new(),
                stats: WriteStats::default(),
            }),
            dry: None,
        })
    }

    /// True for a writer that stores nothing.
    pub(crate) fn is_dry(&self) -> bool {
        self.dry.is_some()
    }

    /// A writer that stores nothing; see `dry`.
    pub(crate) fn new_dry(store: &'a Store, catalog_path: &Path) -> Result<Self> {
        let mut w = Self::new(store, catalog_path)?;
        w.dry = Some(Mutex::new(HashMap::new()));
        Ok(w)
    }

    /// The trees a dry writer kept.
    /// Adds trees another dry writer kept (one in a child, see `rootless.rs`).
    pub(crate) fn keep_trees(&self, trees: HashMap<TreeId, Arc<Tree>>) {
        if let Some(m) = &self.dry {
            lock(m).extend(trees);
        }
    }

    pub(crate) fn take_trees(&self) -> HashMap<TreeId, Arc<Tree>> {
        self.dry
            .as_ref()
            .map(|m| std::mem::take(&mut *lock(m)))
            .unwrap_or_default()
    }

    /// True when `id` is safe to reference without writing it: written by this session, or
    /// indexed in a pack that gc has not doomed. A blob in a doomed pack counts as absent, so it
    /// is written again rather than referenced from a pack that may be deleted.
    pub(crate) fn is_live(&self, id: BlobId) -> Result<bool> {
        if lock(&self.state).mine.contains(&id) {
            return Ok(true);
        }
        Ok(matches!(
            lock(&self.lookups).lookup_blob(&id)?,
            Some((_, false))
        ))
    }

    /// Claims `id` for writing. Returns false when it is already live or claimed by another
    /// thread, in which case the caller must not write it.
    fn claim(&self, id: BlobId) -> Result<bool> {
        if self.is_live(id)? {
            return Ok(false);
        }
        Ok(lock(&self.state).mine.insert(id))
    }

    /// Stores a chunk unless it is already live. Returns true when it was new.
    pub(crate) fn put_chunk(&self, id: ChunkId, raw: &[u8]) -> Result<bool> {
        if self.dry.is_some() {
            return Ok(false);
        }
        self.put(BlobId::from(id), BlobKind::Chunk, raw)
    }

    /// Encodes and stores a tree unless it is already live, returning its id.
    pub(crate) fn put_tree(&self, tree: &Tree) -> Result<TreeId> {
        let (id, bytes) = encode_tree(tree)?;
        if let Some(trees) = &self.dry {
            lock(trees).insert(id, Arc::new(tree.clone()));
            return Ok(id);
        }
        self.put(BlobId::from(id), BlobKind::Tree, &bytes)?;
        Ok(id)
    }

    fn put(&self, id: BlobId, kind: BlobKind, raw: &[u8]) -> Result<bool> {
        if !self.claim(id)? {
            return Ok(false);
        }
        let stored = match kind {
            BlobKind::Chunk => encode_blob(raw),
            BlobKind::Tree => encode_tree_blob(raw),
        };
        let raw_len = u32::try_from(raw.len()).map_err(|_| {
            EngineError::Invalid(format!("blob of {} bytes is too large", raw.len()))
        })?;
        let full = {
            let mut st = lock(&self.state);
            st.stats.blobs += 1;
            st.stats.stored_bytes += stored.len() as u64;
            let pack = match kind {
                BlobKind::Chunk => &mut st.data,
                BlobKind::Tree => &mut st.trees,
            };
            pack.add_stored(id, kind, stored, raw_len)?;
            (pack.stored_bytes() >= PACK_TARGET).then(|| std::mem::replace(pack, PackWriter::new()))
        };
        if let Some(pack) = full {
            self.upload(pack)?;
        }
        Ok(true)
    }

    /// Uploads a pack, then indexes it. The pack is durable before any catalog row names it.
    fn upload(&self, pack: PackWriter) -> Result<()> {
        self.upload_all(vec![pack])
    }

    /// Uploads packs side by side (their fsyncs overlap), then indexes them all in one catalog
    /// transaction. Every pack is durable before any catalog row names it.
    fn upload_all(&self, packs: Vec<PackWriter>) -> Result<()> {
        let rows = self.upload_unindexed(packs)?;
        if rows.is_empty() {
            return Ok(());
        }
        lock(self.index_catalog()?).transaction(|c| rows.insert(c))?;
        Ok(())
    }

    /// Uploads packs side by side (their fsyncs overlap) and returns the rows that index them,
    /// for a transaction that must come after: every pack is durable before any row names it.
    fn upload_unindexed(&self, packs: Vec<PackWriter>) -> Result<PendingIndex> {
        let finished: Vec<FinishedPack> = packs
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(PackWriter::finish)
            .collect();
        match finished.as_slice() {
            [] => return Ok(PendingIndex::default()),
            [one] => self.store.put_pack(one)?,
            many => std::thread::scope(|s| {
                let puts: Vec<_> = many
                    .iter()
                    .map(|p| s.spawn(move || self.store.put_pack(p)))
                    .collect();
                puts.into_iter().try_for_each(crate::join_scoped)
            })?,
        }
        Ok(PendingIndex(finished.iter().map(index_rows).collect()))
    }

    /// The connection that indexes uploaded packs (see `catalog`).
    fn index_catalog(&self) -> Result<&Mutex<Catalog>> {
        if let Some(c) = self.catalog.get() {
            return Ok(c);
        }
        let c = Catalog::open(&self.catalog_path)?;
        c.skip_fsync()?;
        // Should two uploads race here, one connection is kept and the other dropped.
        Ok(self.catalog.get_or_init(|| Mutex::new(c)))
    }

    /// A reader over this writer's snapshot, without a connection of its own: for reading
    /// the trees the snapshot already held (a mounted machine's base).
    pub(crate) fn source(&self) -> BlobSource<'_> {
        BlobSource {
            store: self.store,
            catalog: Conn::Shared(&self.lookups),
            trees: Mutex::new(HashMap::new()),
        }
    }

    /// Uploads the partly filled packs. After this returns, every blob put so far is durable
    /// and indexed.
    pub(crate) fn flush(&self) -> Result<WriteStats> {
        let (packs, stats) = self.take_partial();
        self.upload_all(packs)?;
        Ok(stats)
    }

    /// `flush`, leaving the rows of the packs it uploads to the caller, who inserts them in
    /// the transaction that commits the checkpoint referencing their blobs (one commit, and
    /// a writer that filled no pack opens no connection to index). Until then the packs are
    /// durable but unindexed, which gc leaves alone while this writer's session lives.
    pub(crate) fn flush_unindexed(&self) -> Result<(WriteStats, PendingIndex)> {
        let (packs, stats) = self.take_partial();
        Ok((stats, self.upload_unindexed(packs)?))
    }

    /// The partly filled packs, replaced by empty ones, and the totals so far.
    fn take_partial(&self) -> (Vec<PackWriter>, WriteStats) {
        let mut st = lock(&self.state);
        let data = std::mem::replace(&mut st.data, PackWriter::new());
        let trees = std::mem::replace(&mut st.trees, PackWriter::new());
        (vec![data, trees], st.stats)
    }
}

/// The rows that index uploaded packs, not yet inserted.
#[derive(Default)]
#[must_use = "the packs stay unindexed until these rows are inserted"]
pub(crate) struct PendingIndex(Vec<(PackRow, Vec<BlobLoc>)>);

impl PendingIndex {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Inserts the rows, in the caller's transaction.
    pub(crate) fn insert(
        &self,
        c: &Catalog,
    ) -> std::result::Result<(), crate::catalog::CatalogError> {
        self.0
            .iter()
            .try_for_each(|(row, locs)| c.insert_pack(row, locs))
    }
}

/// The catalog rows that index a finished pack.
pub(crate) fn index_rows(finished: &FinishedPack) -> (PackRow, Vec<BlobLoc>) {
    let row = PackRow {
        id: finished.id,
        size: finished.bytes.len() as u64,
        created_at: now_ns(),
        doomed_at: None,
    };
    let locs = finished
        .entries
        .iter()
        .map(|e| BlobLoc {
            id: e.id,
            kind: e.kind as u8,
            pack: finished.id,
            offset: e.offset,
            stored_len: e.stored_len,
            raw_len: e.raw_len,
        })
        .collect();
    (row, locs)
}

/// Reads blobs through the catalog's index. Safe to share between threads.
pub(crate) struct BlobSource<'a> {
    store: &'a Store,
    catalog: Conn<'a>,
    trees: Mutex<HashMap<TreeId, Arc<Tree>>>,
}

/// A read snapshot a source owns, or shares with the writer it came from.
enum Conn<'a> {
    Own(Mutex<Catalog>),
    Shared(&'a Mutex<Catalog>),
}

impl Conn<'_> {
    fn get(&self) -> MutexGuard<'_, Catalog> {
        match self {
            Conn::Own(m) => lock(m),
            Conn::Shared(m) => lock(m),
        }
    }
}

impl<'a> BlobSource<'a> {
    pub(crate) fn new(store: &'a Store, catalog_path: &Path) -> Result<Self> {
        let catalog = Catalog::open(catalog_path)?;
        catalog.hold_read_snapshot()?;
        Ok(BlobSource {
            store,
            catalog: Conn::Own(Mutex::new(catalog)),
            trees: Mutex::new(HashMap::new()),
        })
    }

    /// Adds trees known only in memory (from a dry writer) to what this source can read.
    pub(crate) fn seed(&self, trees: HashMap<TreeId, Arc<Tree>>) {
        lock(&self.trees).extend(trees);
    }

    pub(crate) fn read(&self, id: BlobId) -> Result<Vec<u8>> {
        read_with(self.store, &self.catalog.get(), id)
    }

    pub(crate) fn chunk(&self, id: ChunkId) -> Result<Vec<u8>> {
        self.read(BlobId::from(id))
    }

    pub(crate) fn tree(&self, id: TreeId) -> Result<Arc<Tree>> {
        if let Some(t) = lock(&self.trees).get(&id) {
            return Ok(Arc::clone(t));
        }
        let tree = Arc::new(decode(id, &self.read(BlobId::from(id))?)?);
        lock(&self.trees).insert(id, Arc::clone(&tree));
        Ok(tree)
    }
}

fn locate_with(catalog: &Catalog, id: BlobId) -> Result<BlobLoc> {
    match catalog.lookup_blob(&id)? {
        Some((loc, _)) => Ok(loc),
        None => Err(EngineError::Corrupt {
            what: format!("blob {}", id.short()),
            reason: "it is referenced but no pack holds it".to_owned(),
        }),
    }
}

fn read_with(store: &Store, catalog: &Catalog, id: BlobId) -> Result<Vec<u8>> {
    let loc = locate_with(catalog, id)?;
    Ok(store.read_blob(&loc.pack, loc.offset, loc.stored_len, loc.raw_len, &id)?)
}

fn decode(id: TreeId, bytes: &[u8]) -> Result<Tree> {
    decode_tree(bytes).map_err(|e| EngineError::Corrupt {
        what: format!("tree {}", id.short()),
        reason: e.to_string(),
    })
}

/// Reads one tree through `catalog`, a connection the caller already has: for a command that
/// needs a single tree and no reader (snapshot, cache) of its own.
pub(crate) fn read_tree_with(store: &Store, catalog: &Catalog, id: TreeId) -> Result<Tree> {
    decode(id, &read_with(store, catalog, BlobId::from(id))?)
}
