//! Lower images: a tree's entries on the local disk, the lower layer of a root machine's
//! overlay once they exist.
//!
//! A lower view (FUSE) answers every lookup from memory, but the overlay above must ask it
//! to revalidate each dentry on every path walk: overlayfs revalidates a dentry whenever one of
//! its layers can (`d_revalidate`), and FUSE always can. Over a local file system it never
//! does. That walk is most of what a machine's warm reads of small files cost beyond an
//! overlay over a plain directory. So once the data layer holds a copy of each of a tree's
//! large eligible files (`mount::data`, which copies those first), the tree is written out once as an image under
//! `cache/lowers/<tree id>`: directories, symlinks, devices, fifos, empty and sparse files as
//! they are, small files (not `mount::data_large`) whole, and every larger file with a
//! copy as a stub (its size and metadata, no blocks) whose `trusted.overlay.metacopy` and
//! `trusted.overlay.redirect` name the copy, exactly the answers the view gives. The tree's
//! own overlay attributes are escaped as the view escapes them.
//! A machine whose base has an image is mounted `lowerdir=IMAGE::DATA` and needs no server.
//!
//! **Invariants.** An image is built under `tmp/`, synced (`syncfs`) and only then renamed into
//! place without replacing anything, so a name that exists holds the whole tree, also after a
//! crash; it is never changed after, and is shared by every machine whose base is that tree.
//! Every copy it names existed when it was built and outlives it: gc removes a copy only once
//! no reachable tree holds it, and removes an image as soon as its tree is unreachable;
//! `check --read-data` repairs a wrong copy in place rather than removing it. The directory
//! is 0700, like the data layer: an image holds metadata (and a sparse file's bytes) that a
//! machine may keep from others. Images are a cache: removing one while no machine is mounted
//! over it loses nothing (the next `machine up` serves the tree through a view again).
//!
//! **Size.** Every tree a machine has stood on keeps its image while a checkpoint holds the
//! tree, so a machine restored to many checkpoints gathers many. gc trims the images of trees
//! that are no machine's base to a budget, least recently used first: `machine up` over an
//! image stamps `used/<tree id>` with the time. An image to evict is first renamed into
//! `tmp/`, then the bases are read again: a machine is rebased (its base committed) before it
//! comes up, so either gc sees the new base and puts the image back, or that `up` finds no
//! image and serves a view.

use super::blobs::BlobSource;
use super::materialize::{Materializer, Stubs};
use super::restore::{dir_tree, root_node};
use super::{EngineError, NoProgress, Repo, Result};
use crate::model::TreeId;
use crate::rootfs::{ApplyOptions, Dir};
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// What building one image did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageReport {
    pub tree: String,
    pub path: PathBuf,
    /// False when the image existed already.
    pub built: bool,
    /// Regular files written: stubs and files kept whole.
    pub files: u64,
    /// Bytes written for the files kept whole (small, sparse, or without a copy).
    pub bytes: u64,
    pub ms: u64,
}

fn io<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> EngineError + 'p {
    move |source| EngineError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Where `machine up` stamps the time it last mounted over an image, one empty file per tree.
const USED: &str = "used";

/// What [`Repo::evict_images`] removed (or would remove).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Evicted {
    pub images: u64,
    pub bytes: u64,
}

impl Repo {
    pub(crate) fn images_dir(&self) -> PathBuf {
        self.home.join("cache").join("lowers")
    }

    /// Records that a machine came up over the image of `root` now. Best effort: a missing
    /// stamp only makes the image look as old as its placing when gc trims the images.
    pub(crate) fn note_image_used(&self, root: TreeId) {
        let dir = self.images_dir().join(USED);
        let stamp = dir.join(root.to_hex());
        let touched = std::fs::create_dir_all(&dir).and_then(|()| {
            std::fs::File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&stamp)?
                .set_modified(SystemTime::now())
        });
        if let Err(e) = touched {
            tracing::debug!("could not stamp {}: {e}", stamp.display());
        }
    }

    /// Trims the images of trees that are no machine's base to `max` bytes for the whole
    /// cache (bases' images count but stay), least recently used first (see the module).
    /// `bases` are hex tree ids as gc read them; they are read again before anything goes.
    pub(crate) fn evict_images(
        &self,
        bases: &HashSet<String>,
        max: u64,
        dry_run: bool,
    ) -> Result<Evicted> {
        let dir = self.images_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Evicted::default()),
            Err(e) => return Err(io("read directory", &dir)(e)),
        };
        let mut total = 0u64;
        // (last use, bytes, tree id) of each image gc may remove.
        let mut candidates = Vec::new();
        for e in entries {
            let e = e.map_err(io("read directory", &dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "tmp" || name == USED {
                continue;
            }
            let path = e.path();
            let bytes = disk_usage(&path).map_err(io("measure", &path))?;
            total += bytes;
            if bases.contains(&name) {
                continue;
            }
            let placed = changed_at(&path).unwrap_or(SystemTime::UNIX_EPOCH);
            let used = std::fs::metadata(dir.join(USED).join(&name))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            candidates.push((used.max(placed), bytes, name));
        }
        candidates.sort();
        let mut chosen = Vec::new();
        for (_, bytes, name) in candidates {
            if total <= max {
                break;
            }
            total -= bytes;
            chosen.push((name, bytes));
        }
        let mut out = Evicted::default();
        if dry_run {
            out.images = chosen.len() as u64;
            out.bytes = chosen.iter().map(|c| c.1).sum();
            return Ok(out);
        }
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(io("create directory", &tmp))?;
        let mut hidden = Vec::new();
        for (name, bytes) in chosen {
            let to = tmp.join(format!("{name}.evicted.{}", std::process::id()));
            match std::fs::rename(dir.join(&name), &to) {
                Ok(()) => hidden.push((name, bytes, to)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("rename", &to)(e)),
            }
        }
        // A machine rebased onto one of these since gc read the bases commits that base
        // before it comes up: seen here, its image goes back.
        let now_bases: HashSet<String> = self
            .catalog
            .machines()?
            .into_iter()
            .filter_map(|m| m.base.map(|b| b.root.to_hex()))
            .collect();
        for (name, bytes, hidden_at) in hidden {
            if now_bases.contains(&name) {
                let back = rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &hidden_at,
                    rustix::fs::CWD,
                    dir.join(&name),
                    rustix::fs::RenameFlags::NOREPLACE,
                );
                if back.is_ok() {
                    continue;
                }
            }
            std::fs::remove_dir_all(&hidden_at).map_err(io("remove", &hidden_at))?;
            let _ = std::fs::remove_file(dir.join(USED).join(&name));
            out.images += 1;
            out.bytes += bytes;
        }
        Ok(out)
    }

    /// The complete image of tree `root`, if there is one.
    pub(crate) fn lower_image(&self, root: TreeId) -> Option<PathBuf> {
        let p = self.images_dir().join(root.to_hex());
        p.is_dir().then_some(p)
    }

    /// Builds the lower image of tree `root` unless it exists (see the module). Needs root;
    /// files without a data layer copy are written whole, so it is meant to run once the
    /// copies are filled. Takes O(tree) time and is never on a command's path: the view
    /// server runs it once its fill is over.
    pub fn build_lower_image(&self, root: TreeId) -> Result<ImageReport> {
        let t = Instant::now();
        let dir = self.images_dir();
        let mut report = ImageReport {
            tree: root.to_hex(),
            path: dir.join(root.to_hex()),
            built: false,
            files: 0,
            bytes: 0,
            ms: 0,
        };
        if report.path.is_dir() {
            return Ok(report);
        }
        if crate::sandbox::rootless() {
            return Err(EngineError::Invalid(
                "lower images need root: overlayfs reads the attributes that name copies only \
                 as trusted.overlay.*"
                    .to_owned(),
            ));
        }
        let tmp_dir = dir.join("tmp");
        std::fs::create_dir_all(&tmp_dir).map_err(io("create directory", &tmp_dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("chmod", &dir))?;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let staging = tmp_dir.join(format!("{}.{}.{nanos}", root.to_hex(), std::process::id()));
        std::fs::create_dir(&staging).map_err(io("create directory", &staging))?;
        let built = (|| -> Result<()> {
            let _session = self.begin_session("lower image")?;
            let src = BlobSource::new(&self.store, &self.catalog_path())?;
            let top_dir = Dir::open(&staging)?;
            let data = self.data_layer();
            let stubs = Stubs {
                data: &data,
                escape: crate::mount::Escape::new(super::upper::TRUSTED_PREFIX),
            };
            let mut mat =
                Materializer::new(&src, &top_dir, ApplyOptions { owners: true }, &NoProgress)
                    .with_stubs(stubs);
            let top = root_node(&src, root)?;
            mat.apply_dir(&top_dir, &[], None, dir_tree(&top)?)?;
            mat.finish(&top, true)?;
            report.files = mat.applied.written_files;
            report.bytes = mat.applied.written_bytes;
            rustix::fs::syncfs(&std::fs::File::open(&staging).map_err(io("open", &staging))?)
                .map_err(|e| io("sync", &staging)(e.into()))?;
            Ok(())
        })();
        let placed = built.and_then(|()| {
            match rustix::fs::renameat_with(
                rustix::fs::CWD,
                &staging,
                rustix::fs::CWD,
                &report.path,
                rustix::fs::RenameFlags::NOREPLACE,
            ) {
                Ok(()) => {
                    report.built = true;
                    Ok(())
                }
                // Another server built it first; ours goes.
                Err(rustix::io::Errno::EXIST) => Ok(()),
                Err(e) => Err(io("rename", &staging)(e.into())),
            }
        });
        if !report.built {
            let _ = std::fs::remove_dir_all(&staging);
        }
        placed?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        if report.built {
            self.note_image_used(root);
        }
        report.ms = t.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// Removes every image made before `made_before` whose tree is not in `live` (hex ids),
    /// and builds that did not finish (older than an hour, so no running build loses its
    /// directory). Returns the images removed.
    pub(crate) fn sweep_images(
        &self,
        live: &HashSet<String>,
        made_before: SystemTime,
    ) -> std::io::Result<u64> {
        let dir = self.images_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let old = |p: &Path, before: SystemTime| changed_at(p).is_ok_and(|at| at < before);
        let mut removed = 0;
        for e in entries {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if name == "tmp" {
                let hour_ago = SystemTime::now() - Duration::from_secs(3600);
                for t in std::fs::read_dir(&path)? {
                    let t = t?.path();
                    if old(&t, hour_ago) {
                        std::fs::remove_dir_all(&t)?;
                    }
                }
            } else if name == USED {
                for s in std::fs::read_dir(&path)? {
                    let s = s?;
                    if !dir.join(s.file_name()).exists() && old(&s.path(), made_before) {
                        std::fs::remove_file(s.path())?;
                    }
                }
            } else if !live.contains(&name) && old(&path, made_before) {
                std::fs::remove_dir_all(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// When `p` was placed: its ctime. An image's own mtime is its tree's, but the rename that
/// placed it (or the write of a stamp) moved its ctime.
fn changed_at(p: &Path) -> std::io::Result<SystemTime> {
    let m = std::fs::symlink_metadata(p)?;
    Ok(SystemTime::UNIX_EPOCH + Duration::new(m.ctime().max(0) as u64, m.ctime_nsec() as u32))
}

/// Bytes a directory tree occupies on disk (allocated blocks, directories included), without
/// following symlinks; hardlinked files count once.
pub(crate) fn disk_usage(root: &Path) -> std::io::Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p)?;
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        total += m.blocks() * 512;
        if m.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(total)
}
