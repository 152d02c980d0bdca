//! Consistency checks: the catalog, every pack's presence and size, every tree of every
//! checkpoint, every chunk's index entry, and with `read_data` every blob's hash and every
//! data layer copy's bytes.
//!
//! A finding names the damaged object and, where it can, the checkpoints and paths that can no
//! longer be restored exactly. Leftovers that gc sweeps (unindexed packs, interrupted uploads)
//! are not findings: a crash may leave them, and they harm nothing.

use super::blobs::BlobSource;
use super::diff::display_path;
use super::{Progress, Repo, Result, join_path};
use crate::catalog::CheckpointRow;
use crate::model::{BlobId, Content, Extent, TreeId};
use crate::mount::{data_eligible as eligible, data_key as key};
use std::collections::{BTreeSet, HashMap, HashSet};

/// Inputs of `check`.
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// Read every pack and re-hash every chunk, not just the structure.
    pub read_data: bool,
}

/// One problem `check` found, with what it affects.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Finding {
    /// What is damaged: `catalog`, `pack <id>`, `blob <id>`, `tree <id>`.
    pub object: String,
    pub problem: String,
    /// Checkpoints that can no longer be restored exactly, e.g. `web@v2`.
    pub checkpoints: Vec<String>,
    /// Paths inside those checkpoints that are affected, e.g. `/etc/hosts`.
    pub paths: Vec<String>,
}

/// What `check` found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub checkpoints: u64,
    pub trees: u64,
    pub chunks: u64,
    pub packs: u64,
    /// Data layer copies re-read (`read_data`).
    pub copies: u64,
    pub bytes_read: u64,
    pub findings: Vec<Finding>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

impl Repo {
    pub fn check(&self, opts: &CheckOptions, progress: &dyn Progress) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        for problem in self.catalog.quick_check()? {
            report.findings.push(Finding {
                object: "catalog".to_owned(),
                problem,
                checkpoints: Vec::new(),
                paths: Vec::new(),
            });
        }
        let _session = self.begin_session("check")?;
        let src = BlobSource::new(&self.store, &self.catalog_path())?;
        // Damaged blobs → why; filled by the pack and tree passes, then traced to paths.
        let mut bad: HashMap<BlobId, String> = HashMap::new();

        progress.phase("checking packs", None);
        let listed: HashMap<_, _> = self.store.list_packs()?.into_iter().collect();
        let packs = self.catalog.packs()?;
        report.packs = packs.len() as u64;
        let mut pack_bad: HashMap<crate::model::PackId, String> = HashMap::new();
        let mut pack_findings = Vec::new();
        for p in &packs {
            match listed.get(&p.id) {
                None => {
                    pack_bad.insert(p.id, "the pack object is missing from the store".to_owned());
                }
                Some(&size) if size != p.size => {
                    pack_bad.insert(
                        p.id,
                        format!("the pack is {size} bytes, the catalog says {}", p.size),
                    );
                }
                Some(_) if opts.read_data => match self.store.verify_pack(&p.id) {
                    Ok(v) => {
                        report.bytes_read += p.size;
                        progress.advance(p.size);
                        let blobs_ok = v.blob_failures.is_empty();
                        for (id, why) in v.blob_failures {
                            bad.insert(id, format!("in pack {}: {why}", p.id.short()));
                        }
                        if !v.format_errors.is_empty() {
                            // The index could not be trusted, so no blob of it can be.
                            let mut why = v.format_errors.join("; ");
                            if !v.pack_hash_ok {
                                why = format!("pack hash mismatch; {why}");
                            }
                            pack_bad.insert(p.id, why);
                        } else if !v.pack_hash_ok && blobs_ok {
                            // Every blob was re-hashed above and is intact: the damage lies
                            // outside them, and no checkpoint reads it.
                            pack_findings.push(Finding {
                                object: format!("pack {}", p.id.to_hex()),
                                problem: "its bytes no longer hash to its id, though every \
                                          blob in it is intact, so no checkpoint is affected"
                                    .to_owned(),
                                checkpoints: Vec::new(),
                                paths: Vec::new(),
                            });
                        }
                        // Otherwise the damaged blobs are exactly `blob_failures`: the pack's
                        // other blobs verified and are not reported.
                    }
                    Err(e) => {
                        pack_bad.insert(p.id, e.to_string());
                    }
                },
                Some(_) => {}
            }
        }
        if !pack_bad.is_empty() {
            self.catalog.for_each_blob(&mut |loc| {
                if let Some(why) = pack_bad.get(&loc.pack) {
                    bad.entry(loc.id)
                        .or_insert_with(|| format!("in pack {}: {why}", loc.pack.short()));
                }
            })?;
        }

        progress.phase("checking trees", None);
        let checkpoints = self.catalog.all_checkpoints()?;
        report.checkpoints = checkpoints.len() as u64;
        let mut seen_trees: HashSet<TreeId> = HashSet::new();
        let mut seen_chunks: HashSet<BlobId> = HashSet::new();
        // The files a data layer copy may hold, by copy (`read_data` only).
        let mut files = opts.read_data.then(HashMap::new);
        for c in &checkpoints {
            let mut walk = Walk {
                trees: &mut seen_trees,
                chunks: &mut seen_chunks,
                bad: &mut bad,
                files: files.as_mut(),
            };
            self.check_tree(&src, c.root, &mut walk)?;
            progress.advance(1);
        }
        report.trees = seen_trees.len() as u64;
        report.chunks = seen_chunks.len() as u64;
        if let Some(files) = files {
            progress.phase("checking data layer copies", None);
            self.check_copies(files.values(), &mut report, progress);
        }

        if !bad.is_empty() {
            self.trace_damage(&src, &checkpoints, &bad, &mut report)?;
        }
        report.findings.extend(pack_findings);
        Ok(report)
    }

    /// Reads every tree reachable from `id` once and checks that every chunk is indexed.
    fn check_tree(&self, src: &BlobSource<'_>, id: TreeId, walk: &mut Walk<'_>) -> Result<()> {
        if !walk.trees.insert(id) || walk.bad.contains_key(&BlobId::from(id)) {
            return Ok(());
        }
        let tree = match src.tree(id) {
            Ok(t) => t,
            Err(e) => {
                walk.bad
                    .insert(BlobId::from(id), format!("tree unreadable: {e}"));
                return Ok(());
            }
        };
        for e in &tree.entries {
            match &e.node.content {
                Content::Dir { tree } => self.check_tree(src, *tree, walk)?,
                Content::File { extents, .. } => {
                    for x in extents {
                        if let Extent::Data { id, .. } = x {
                            let b = BlobId::from(*id);
                            if walk.chunks.insert(b) && self.catalog.lookup_blob(&b)?.is_none() {
                                walk.bad.insert(b, "no pack holds this chunk".to_owned());
                            }
                        }
                    }
                    if let (Some(files), Some(x)) = (walk.files.as_mut(), eligible(&e.node)) {
                        files.entry(key(x)).or_insert_with(|| x.to_vec());
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Re-reads every data layer copy of a checkpoint's file. A copy that differs from its
    /// file would show machines wrong bytes: it is rewritten from the file's chunks (readers
    /// that opened the wrong one keep it until they close it) and reported.
    fn check_copies<'e>(
        &self,
        files: impl Iterator<Item = &'e Vec<Extent>>,
        report: &mut CheckReport,
        progress: &dyn Progress,
    ) {
        let layer = self.data_layer();
        for extents in files {
            let why = match layer.verify(extents) {
                None => continue,
                Some(Ok(n)) => {
                    report.copies += 1;
                    report.bytes_read += n;
                    progress.advance(n);
                    continue;
                }
                Some(Err(why)) => why,
            };
            report.copies += 1;
            // Rewritten in place from the checkpoint's chunks: lower images name the copy, so
            // it must stay. Removed only when that fails.
            let chunk = |id| {
                let src = BlobSource::new(&self.store, &self.catalog_path())
                    .map_err(|e| e.to_string())?;
                src.chunk(id)
                    .map(std::sync::Arc::new)
                    .map_err(|e| e.to_string())
            };
            let fate = match layer.fill(&chunk, &key(extents), extents, true) {
                Ok(_) => "rewrote it from the file's chunks".to_owned(),
                Err(e) => match layer.discard(extents) {
                    Ok(()) => format!(
                        "could not rewrite it ({e}), so removed it; machines read the file \
                         through their view until it is copied again"
                    ),
                    Err(e2) => format!(
                        "could not rewrite it ({e}) nor remove it ({e2}); remove it by hand"
                    ),
                },
            };
            report.findings.push(Finding {
                object: format!("data layer copy {}", key(extents)),
                problem: format!("{why}; {fate}. No checkpoint is affected"),
                checkpoints: Vec::new(),
                paths: Vec::new(),
            });
        }
    }

    /// Walks every checkpoint again, naming the checkpoints and paths each damaged blob affects.
    fn trace_damage(
        &self,
        src: &BlobSource<'_>,
        checkpoints: &[CheckpointRow],
        bad: &HashMap<BlobId, String>,
        report: &mut CheckReport,
    ) -> Result<()> {
        let mut hits: HashMap<BlobId, (BTreeSet<String>, BTreeSet<String>)> = HashMap::new();
        for c in checkpoints {
            let name = format!("{}@v{}", c.machine, c.version);
            trace(src, c.root, &[], &name, bad, &mut hits);
        }
        let mut ids: Vec<&BlobId> = bad.keys().collect();
        ids.sort();
        for id in ids {
            let (cps, paths) = hits.remove(id).unwrap_or_default();
            if cps.is_empty() {
                continue; // damage no checkpoint references: gc will drop it
            }
            report.findings.push(Finding {
                object: format!("blob {}", id.to_hex()),
                problem: bad[id].clone(),
                checkpoints: cps.into_iter().collect(),
                paths: paths.into_iter().take(100).collect(),
            });
        }
        Ok(())
    }
}

fn trace(
    src: &BlobSource<'_>,
    tree: TreeId,
    path: &[u8],
    checkpoint: &str,
    bad: &HashMap<BlobId, String>,
    hits: &mut HashMap<BlobId, (BTreeSet<String>, BTreeSet<String>)>,
) {
    fn hit(
        hits: &mut HashMap<BlobId, (BTreeSet<String>, BTreeSet<String>)>,
        checkpoint: &str,
        id: BlobId,
        p: &[u8],
    ) {
        let e = hits.entry(id).or_default();
        e.0.insert(checkpoint.to_owned());
        e.1.insert(display_path(strip_root(p)));
    }
    if bad.contains_key(&BlobId::from(tree)) {
        hit(hits, checkpoint, BlobId::from(tree), path);
        return;
    }
    let Ok(t) = src.tree(tree) else { return };
    for e in &t.entries {
        let p = join_path(path, &e.name);
        match &e.node.content {
            Content::Dir { tree } => trace(src, *tree, &p, checkpoint, bad, hits),
            Content::File { extents, .. } => {
                for x in extents {
                    if let Extent::Data { id, .. } = x
                        && bad.contains_key(&BlobId::from(*id))
                    {
                        hit(hits, checkpoint, BlobId::from(*id), &p);
                    }
                }
            }
            _ => {}
        }
    }
}

/// What a walk of the checkpoints' trees has seen.
struct Walk<'a> {
    trees: &'a mut HashSet<TreeId>,
    chunks: &'a mut HashSet<BlobId>,
    /// Damaged blobs → why.
    bad: &'a mut HashMap<BlobId, String>,
    /// Copy key → the extents of a file it holds, when the data layer is checked too.
    files: Option<&'a mut HashMap<String, Vec<Extent>>>,
}

/// Paths inside a checkpoint root start with the root entry's name; users see them from `/`.
fn strip_root(p: &[u8]) -> &[u8] {
    let root = super::ingest::ROOT_ENTRY;
    if p.starts_with(root) && (p.len() == root.len() || p[root.len()] == b'/') {
        &p[(root.len() + 1).min(p.len())..]
    } else {
        p
    }
}
