//! Read-only views of checkpoints: diff, cat and tar export.

use super::blobs::{BlobSource, BlobWriter};
use super::diff::{Change, ChangeKind, diff_nodes, whole};
use super::restore::{display, lookup_path, root_node};
use super::{EngineError, NoProgress, Progress, Repo, Result};
use crate::model::{ChunkId, Content, Extent, Ref, Tree, TreeId};
use crate::rootfs::{TreeSource, export_dir_tar};
use std::io::Write;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl TreeSource for BlobSource<'_> {
    fn tree(&self, id: &TreeId) -> Result<Tree, BoxError> {
        Ok(BlobSource::tree(self, *id).map(|t| (*t).clone())?)
    }
    fn chunk(&self, id: &ChunkId) -> Result<Vec<u8>, BoxError> {
        Ok(BlobSource::chunk(self, *id)?)
    }
}

impl Repo {
    /// Changes from `a` to `b`, or from `a` to the machine's live directory when `b` is None.
    /// A path in `a` (`web@v1:/etc`) limits the diff to that subtree.
    pub fn diff(&self, a: &Ref, b: Option<&Ref>) -> Result<Vec<Change>> {
        let src = BlobSource::new(&self.store, &self.catalog_path())?;
        let (_, ca) = self.resolve(a)?;
        let top_a = root_node(&src, ca.root)?;
        let top_b = match b {
            Some(b) => {
                let (_, cb) = self.resolve(b)?;
                root_node(&src, cb.root)?
            }
            None => {
                let m = self.machine_row(&a.machine)?;
                let _lock = self.lock_machine(&m.name, "diff")?;
                let writer = BlobWriter::new_dry(&self.store, &self.catalog_path())?;
                let (live, _) = self.ingest_live(&m, &writer, &NoProgress)?;
                src.seed(writer.take_trees());
                root_node(&src, live.root)?
            }
        };
        let comps = a
            .path
            .clone()
            .or_else(|| b.and_then(|b| b.path.clone()))
            .unwrap_or_default();
        let na = lookup_path(&src, &top_a, &comps)?;
        let nb = lookup_path(&src, &top_b, &comps)?;
        let lookup = |id: TreeId| src.tree(id);
        let mut out = Vec::new();
        let path = comps.join(&b'/');
        match (na, nb) {
            (Some(x), Some(y)) => diff_nodes(&lookup, &x, &y, &path, &mut out)?,
            (None, None) => {
                return Err(EngineError::PathNotFound {
                    reference: a.to_string(),
                    path: display(&comps),
                });
            }
            // One side lacks the path: everything on the other side is added or deleted.
            (Some(x), None) => whole(&lookup, ChangeKind::Deleted, &x, &path, &mut out)?,
            (None, Some(y)) => whole(&lookup, ChangeKind::Added, &y, &path, &mut out)?,
        }
        Ok(out)
    }

    /// Writes the content of the regular file at `r`'s path to `out`.
    pub fn cat(&self, r: &Ref, out: &mut dyn Write) -> Result<u64> {
        let src = BlobSource::new(&self.store, &self.catalog_path())?;
        let (_, c) = self.resolve(r)?;
        let top = root_node(&src, c.root)?;
        let comps = r.path.clone().unwrap_or_default();
        let node = lookup_path(&src, &top, &comps)?.ok_or_else(|| EngineError::PathNotFound {
            reference: r.to_string(),
            path: display(&comps),
        })?;
        let node = match &node.content {
            Content::Hardlink { target } => {
                let leader: Vec<Vec<u8>> =
                    target.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
                lookup_path(&src, &top, &leader)?.unwrap_or(node)
            }
            _ => node,
        };
        let Content::File { extents, .. } = &node.content else {
            return Err(EngineError::NotAFile {
                reference: r.to_string(),
                path: display(&comps),
                kind: format!("{:?}", node.kind()).to_lowercase(),
            });
        };
        let mut written = 0;
        let zeros = vec![0u8; 64 * 1024];
        let io = |source| EngineError::Io {
            op: "write",
            path: "standard output".into(),
            source,
        };
        for x in extents {
            match x {
                Extent::Data { id, .. } => {
                    let data = src.chunk(*id)?;
                    out.write_all(&data).map_err(io)?;
                }
                Extent::Hole { len } => {
                    let mut left = *len;
                    while left > 0 {
                        let n = left.min(zeros.len() as u64) as usize;
                        out.write_all(&zeros[..n]).map_err(io)?;
                        left -= n as u64;
                    }
                }
            }
            written += x.len();
        }
        Ok(written)
    }

    /// Writes a checkpoint (or the subtree at its path) as a PAX tar.
    pub fn export<W: Write>(&self, r: &Ref, out: W, progress: &dyn Progress) -> Result<W> {
        (|| {
            let src = BlobSource::new(&self.store, &self.catalog_path())?;
            let (_, c) = self.resolve(r)?;
            let top = root_node(&src, c.root)?;
            let comps = r.path.clone().unwrap_or_default();
            let node =
                lookup_path(&src, &top, &comps)?.ok_or_else(|| EngineError::PathNotFound {
                    reference: r.to_string(),
                    path: display(&comps),
                })?;
            if !matches!(node.content, Content::Dir { .. }) {
                return Err(EngineError::Invalid(format!(
                    "{} is not a directory; use `cairn cat` for a file",
                    r
                )));
            }
            progress.phase("exporting", Some(c.logical_bytes));
            let mut adv = |n: u64| progress.advance(n);
            Ok(export_dir_tar(&node, &src, out, &mut adv)?)
        })()
    }
}
