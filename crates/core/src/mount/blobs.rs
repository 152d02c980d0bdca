//! Blob reads for a long-lived view: short catalog lookups, one retry after a repack, decoded
//! trees kept for the life of the mount and a small LRU of decompressed chunks.
//!
//! Unlike the engine's one-operation reader, nothing here holds a catalog read transaction open:
//! a mount lives for days, and an open read snapshot would stop SQLite from checkpointing its
//! WAL for as long. Each lookup is one autocommit statement.

use super::MountError;
use crate::catalog::{BlobLoc, Catalog};
use crate::model::{BlobId, ChunkId, Tree, TreeId, decode_tree};
use crate::store::Store;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

type Result<T, E = MountError> = std::result::Result<T, E>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves its data consistent, so a panic elsewhere does not
    // poison what the other serving threads read.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads the blobs of the mounted tree. Shared by all serving threads.
pub(super) struct Blobs {
    store: Store,
    catalog: Mutex<Catalog>,
    trees: Mutex<HashMap<TreeId, Arc<Tree>>>,
    chunks: Mutex<ChunkCache>,
}

impl Blobs {
    pub(super) fn open(store: Store, catalog_path: &Path, cache_bytes: usize) -> Result<Blobs> {
        Ok(Blobs {
            store,
            catalog: Mutex::new(Catalog::open(catalog_path)?),
            trees: Mutex::new(HashMap::new()),
            chunks: Mutex::new(ChunkCache::new(cache_bytes)),
        })
    }

    fn locate(&self, id: BlobId) -> Result<BlobLoc> {
        match lock(&self.catalog).lookup_blob(&id)? {
            Some((loc, _doomed)) => Ok(loc),
            None => Err(MountError::MissingBlob { id: id.short() }),
        }
    }

    /// Reads one blob. If its pack is gone, gc has repacked it since the lookup: the index
    /// already names the new pack, so one more lookup finds it.
    fn read(&self, id: BlobId) -> Result<Vec<u8>> {
        let loc = self.locate(id)?;
        match self
            .store
            .read_blob(&loc.pack, loc.offset, loc.stored_len, loc.raw_len, &id)
        {
            Ok(raw) => Ok(raw),
            Err(e) if e.is_not_found() => {
                let again = self.locate(id)?;
                if again.pack == loc.pack {
                    return Err(e.into());
                }
                Ok(self.store.read_blob(
                    &again.pack,
                    again.offset,
                    again.stored_len,
                    again.raw_len,
                    &id,
                )?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A decoded tree. Trees are immutable and small next to the data they describe, so every
    /// tree the kernel has asked about stays decoded for the life of the mount.
    pub(super) fn tree(&self, id: TreeId) -> Result<Arc<Tree>> {
        if let Some(t) = lock(&self.trees).get(&id) {
            return Ok(Arc::clone(t));
        }
        let bytes = self.read(BlobId::from(id))?;
        let tree = Arc::new(decode_tree(&bytes).map_err(|e| MountError::CorruptTree {
            id: id.short(),
            reason: e.to_string(),
        })?);
        lock(&self.trees).insert(id, Arc::clone(&tree));
        Ok(tree)
    }

    /// A tree for one look, as a walk of the whole tree needs it: from the cache when there,
    /// and otherwise decoded without being kept (a walk must not pin every tree in memory).
    pub(super) fn tree_passing(&self, id: TreeId) -> Result<Arc<Tree>> {
        if let Some(t) = lock(&self.trees).get(&id) {
            return Ok(Arc::clone(t));
        }
        let bytes = self.read(BlobId::from(id))?;
        Ok(Arc::new(decode_tree(&bytes).map_err(|e| {
            MountError::CorruptTree {
                id: id.short(),
                reason: e.to_string(),
            }
        })?))
    }

    /// A chunk's plaintext, from the cache or read and decompressed once. The lock is not held
    /// while reading, so two threads may both decompress a chunk; both get the same bytes.
    pub(super) fn chunk(&self, id: ChunkId) -> Result<Arc<Vec<u8>>> {
        if let Some(c) = lock(&self.chunks).get(&id) {
            return Ok(c);
        }
        let data = Arc::new(self.read(BlobId::from(id))?);
        lock(&self.chunks).insert(id, Arc::clone(&data));
        Ok(data)
    }
}

/// Recently used decompressed chunks, bounded in bytes. The kernel's page cache holds file data
/// for warm reads; this cache serves the reads that straddle or revisit a chunk (readahead
/// windows are smaller than chunks, so one chunk answers several requests in a row).
struct ChunkCache {
    map: HashMap<ChunkId, (Arc<Vec<u8>>, u64)>,
    /// Use tick → chunk, oldest first.
    order: BTreeMap<u64, ChunkId>,
    tick: u64,
    bytes: usize,
    cap: usize,
}

impl ChunkCache {
    fn new(cap: usize) -> ChunkCache {
        ChunkCache {
            map: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            cap,
        }
    }

    fn get(&mut self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let tick = self.tick;
        let (data, used) = self.map.get_mut(id)?;
        self.order.remove(used);
        *used = tick;
        self.order.insert(tick, *id);
        Some(Arc::clone(data))
    }

    fn insert(&mut self, id: ChunkId, data: Arc<Vec<u8>>) {
        if data.len() > self.cap || self.map.contains_key(&id) {
            return;
        }
        while self.bytes + data.len() > self.cap {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            if let Some((d, _)) = self.map.remove(&old) {
                self.bytes -= d.len();
            }
        }
        self.tick += 1;
        self.bytes += data.len();
        self.order.insert(self.tick, id);
        self.map.insert(id, (data, self.tick));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId::of(&[n])
    }

    #[test]
    fn chunk_cache_evicts_the_least_recently_used_within_its_bound() {
        let mut c = ChunkCache::new(300);
        c.insert(id(1), Arc::new(vec![1; 100]));
        c.insert(id(2), Arc::new(vec![2; 100]));
        c.insert(id(3), Arc::new(vec![3; 100]));
        assert!(c.get(&id(1)).is_some(), "1 becomes the most recent");
        c.insert(id(4), Arc::new(vec![4; 100]));
        assert!(c.get(&id(2)).is_none(), "2 was the least recently used");
        assert!(c.get(&id(1)).is_some() && c.get(&id(3)).is_some());
        assert_eq!(c.bytes, 300);
        c.insert(id(5), Arc::new(vec![5; 301]));
        assert!(
            c.get(&id(5)).is_none(),
            "a chunk larger than the cache is not kept"
        );
        assert_eq!(c.bytes, 300);
    }
}
