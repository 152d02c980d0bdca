//! Space accounting: logical, stored and exclusive bytes per checkpoint and per machine.

use super::blobs::BlobSource;
use super::{Repo, Result};
use crate::catalog::CheckpointKey;
use crate::model::{BlobId, Content, Extent, TreeId};
use std::collections::{HashMap, HashSet};

/// Sizes of one checkpoint.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckpointUsage {
    pub id: String,
    #[serde(skip)]
    pub key: CheckpointKey,
    pub logical_bytes: u64,
    /// Compressed bytes of every distinct chunk and tree it references.
    pub stored_bytes: u64,
    /// What deleting it (and then gc) would free: bytes no other checkpoint references.
    pub exclusive_bytes: u64,
}

/// Sizes of one machine: the union of its checkpoints.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MachineUsage {
    pub name: String,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    /// Bytes referenced only by this machine's checkpoints.
    pub exclusive_bytes: u64,
    pub checkpoints: Vec<CheckpointUsage>,
}

/// `cairn du`: per machine and checkpoint, plus the store as a whole.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DuReport {
    pub machines: Vec<MachineUsage>,
    /// Bytes of all packs in the store, live or not.
    pub store_bytes: u64,
    /// Compressed bytes referenced by at least one checkpoint.
    pub referenced_bytes: u64,
    /// Bytes gc could reclaim now or after its grace period.
    pub unreferenced_bytes: u64,
}

impl DuReport {
    pub(crate) fn checkpoint(&self, key: CheckpointKey) -> Option<&CheckpointUsage> {
        self.machines
            .iter()
            .flat_map(|m| &m.checkpoints)
            .find(|c| c.key == key)
    }
}

impl Repo {
    /// Space accounting for every machine and checkpoint.
    pub fn usage(&self) -> Result<DuReport> {
        let src = BlobSource::new(&self.store, &self.catalog_path())?;
        // Every blob by a dense index, and its stored size by that index.
        let mut index: HashMap<BlobId, u32> = HashMap::new();
        let mut stored: Vec<u64> = Vec::new();
        self.catalog.for_each_blob(&mut |loc| {
            index.insert(loc.id, stored.len() as u32);
            stored.push(u64::from(loc.stored_len));
        })?;
        let store_bytes: u64 = self.catalog.packs()?.iter().map(|p| p.size).sum();
        let checkpoints = self.catalog.all_checkpoints()?;
        // Per checkpoint, the distinct blobs it reaches (by their dense index).
        let mut reach: Vec<Vec<u32>> = Vec::with_capacity(checkpoints.len());
        let mut refs: Vec<u32> = vec![0; stored.len()];
        // The one machine referencing a blob: -1 while none does, -2 once several do.
        let mut owner: Vec<i64> = vec![-1; stored.len()];
        let mut distinct = Distinct::new(stored.len());
        for c in &checkpoints {
            let mut seen = HashSet::new();
            let mut mine: Vec<u32> = Vec::new();
            distinct.next_set();
            walk_reachable(&src, c.root, &mut seen, &mut |id| {
                if let Some(&i) = index.get(&id) {
                    distinct.add(i, &mut mine);
                }
            })?;
            for &i in &mine {
                refs[i as usize] += 1;
                let o = &mut owner[i as usize];
                *o = if *o == -1 || *o == c.machine_id {
                    c.machine_id
                } else {
                    -2
                };
            }
            reach.push(mine);
        }
        let size_of = |i: u32| stored[i as usize];
        let mut machines: Vec<MachineUsage> = Vec::new();
        for m in self.catalog.machines()? {
            let mut mu = MachineUsage {
                name: m.name.clone(),
                logical_bytes: 0,
                stored_bytes: 0,
                exclusive_bytes: 0,
                checkpoints: Vec::new(),
            };
            // The machine's distinct blobs.
            let mut union: Vec<u32> = Vec::new();
            distinct.next_set();
            for (c, r) in checkpoints
                .iter()
                .zip(&reach)
                .filter(|(c, _)| c.machine_id == m.id)
            {
                mu.checkpoints.push(CheckpointUsage {
                    id: format!("{}@v{}", m.name, c.version),
                    key: c.id,
                    logical_bytes: c.logical_bytes,
                    stored_bytes: r.iter().map(|&i| size_of(i)).sum(),
                    exclusive_bytes: r
                        .iter()
                        .filter(|&&i| refs[i as usize] == 1)
                        .map(|&i| size_of(i))
                        .sum(),
                });
                mu.logical_bytes = mu.logical_bytes.max(c.logical_bytes);
                for &i in r {
                    distinct.add(i, &mut union);
                }
            }
            mu.stored_bytes = union.iter().map(|&i| size_of(i)).sum();
            mu.exclusive_bytes = union
                .iter()
                .filter(|&&i| owner[i as usize] == m.id)
                .map(|&i| size_of(i))
                .sum();
            machines.push(mu);
        }
        let referenced_bytes: u64 = (0..stored.len() as u32)
            .filter(|&i| refs[i as usize] > 0)
            .map(size_of)
            .sum();
        Ok(DuReport {
            machines,
            store_bytes,
            referenced_bytes,
            unreferenced_bytes: store_bytes.saturating_sub(referenced_bytes),
        })
    }
}

/// Collects distinct dense indices into one set after another without a hash set per set:
/// `stamp[i]` is the number of the last set that took index i.
struct Distinct {
    stamp: Vec<u32>,
    set: u32,
}

impl Distinct {
    fn new(len: usize) -> Distinct {
        Distinct {
            stamp: vec![0; len],
            set: 0,
        }
    }

    /// Starts the next set.
    fn next_set(&mut self) {
        self.set += 1;
    }

    /// Pushes `i` to `out` unless the current set has it already.
    fn add(&mut self, i: u32, out: &mut Vec<u32>) {
        let s = &mut self.stamp[i as usize];
        if *s != self.set {
            *s = self.set;
            out.push(i);
        }
    }
}

/// Calls `f` for every blob reachable from checkpoint root `root`: each tree once (trees in
/// `seen` are skipped, so identical subtrees cost nothing), and every chunk of every file.
pub(crate) fn walk_reachable(
    src: &BlobSource<'_>,
    root: TreeId,
    seen: &mut HashSet<TreeId>,
    f: &mut dyn FnMut(BlobId),
) -> Result<()> {
    walk_reachable_files(src, root, seen, f, &mut |_| {})
}

/// `walk_reachable`, also calling `file` with every file node of every tree reached.
pub(crate) fn walk_reachable_files(
    src: &BlobSource<'_>,
    root: TreeId,
    seen: &mut HashSet<TreeId>,
    f: &mut dyn FnMut(BlobId),
    file: &mut dyn FnMut(&crate::model::Node),
) -> Result<()> {
    if !seen.insert(root) {
        return Ok(());
    }
    f(BlobId::from(root));
    let tree = src.tree(root)?;
    for e in &tree.entries {
        match &e.node.content {
            Content::Dir { tree } => walk_reachable_files(src, *tree, seen, f, file)?,
            Content::File { extents, .. } => {
                for x in extents {
                    if let Extent::Data { id, .. } = x {
                        f(BlobId::from(*id));
                    }
                }
                file(&e.node);
            }
            _ => {}
        }
    }
    Ok(())
}
