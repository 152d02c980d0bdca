//! `mount`: serve a checkpoint, or a directory in it, as a read-only FUSE view.

use super::blobs::BlobSource;
use super::restore::{display, lookup_path, root_node};
use super::{EngineError, Repo, Result};
use crate::model::{Content, Ref, TreeId};
use crate::mount::{MountOptions, MountedView, ViewSpec, serve};
use std::path::Path;

impl Repo {
    /// Mounts checkpoint `r` (or the directory at its path) read-only at `mountpoint` and
    /// serves it from background threads until the view is unmounted.
    pub fn mount(&self, r: &Ref, mountpoint: &Path, opts: &MountOptions) -> Result<MountedView> {
        let (_, c) = self.resolve(r)?;
        let comps = r.path.clone().unwrap_or_default();
        self.mount_tree(c.root, &comps, &r.to_string(), mountpoint, opts)
    }

    /// Mounts the directory at `comps` inside the checkpoint root tree `root`; `name` is
    /// what the mount table shows. The lower layer of a mounted machine is this, with empty
    /// `comps`.
    pub(crate) fn mount_tree(
        &self,
        root: TreeId,
        comps: &[Vec<u8>],
        name: &str,
        mountpoint: &Path,
        opts: &MountOptions,
    ) -> Result<MountedView> {
        let (top, node) = {
            // A one-operation reader: its read snapshot ends here, before serving starts.
            let src = BlobSource::new(&self.store, &self.catalog_path())?;
            let top = root_node(&src, root)?;
            let node =
                lookup_path(&src, &top, comps)?.ok_or_else(|| EngineError::PathNotFound {
                    reference: name.to_owned(),
                    path: display(comps),
                })?;
            (top, node)
        };
        if !matches!(node.content, Content::Dir { .. }) {
            return Err(EngineError::Invalid(format!(
                "{name} is a {}, not a directory; mount its directory, or read it with `cairn cat`",
                format!("{:?}", node.kind()).to_lowercase()
            )));
        }
        let spec = ViewSpec {
            store: self.store.clone(),
            catalog_path: self.catalog_path(),
            top,
            path: comps.to_vec(),
            root: node,
            name: name.to_owned(),
        };
        Ok(serve(spec, mountpoint, opts)?)
    }
}
