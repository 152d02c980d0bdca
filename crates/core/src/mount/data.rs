//! The data layer under a root machine's overlay: whole copies of the base tree's files on
//! the local disk, each named by its content, that overlayfs reads directly.
//!
//! A FUSE view reads at page-cache speed once warm, but the kernel caches a FUSE file in
//! small folios, every machine's view caches its own copy, and a restore or fork mounts a new
//! view whose cache starts cold. The overlay of a machine run by root is mounted with this
//! directory as a data-only lower layer (`lowerdir=LOWER::DATA`, which needs `metacopy=on`).
//! For a regular file whose copy is here, the view answers `trusted.overlay.metacopy` and
//! `trusted.overlay.redirect` (the copy's path): overlayfs then takes the file's metadata from
//! the view and its bytes from the copy, a plain file of the local file system. Reads of those
//! files never reach the server, run at the local file system's speed, and share one page
//! cache across every machine, fork and restore holding the same content. The price is disk:
//! one copy of each distinct content (see `eligible`), kept while at least 20% of the file
//! system stays free.
//!
//! The directory is 0700: a copy holds the bytes of a file its machine may keep from others.
//!
//! **Invariants.** A copy's name is the BLAKE3 hash of its extent list, so equal content has
//! one name and a name never changes meaning. A copy is written whole under `tmp/`, synced,
//! made read-only and only then renamed into place without replacing anything: a name that
//! exists holds the complete bytes, also after a crash. The view names a copy only once it
//! exists, and `gc` removes only copies that no checkpoint's tree holds, so a running
//! machine's copies stay. The layer is a cache: deleting it whole while no machine is up loses
//! nothing (its files are served by the view again until they are filled anew).

use super::blobs::Blobs;
use crate::model::{ChunkId, Content, Extent, Node, TreeId};
use std::collections::HashSet;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Weak;

/// The fill stops while less than this share of the file system would stay free after it.
const KEEP_FREE_PERCENT: u64 = 20;

/// The data layer directory of one cairn home.
#[derive(Clone, Debug)]
pub struct DataLayer {
    dir: PathBuf,
}

/// The name of a file's copy: the hash of its extents, as hex.
pub(crate) fn key(extents: &[Extent]) -> String {
    let mut h = blake3::Hasher::new();
    for x in extents {
        match x {
            Extent::Data { id, len } => {
                h.update(b"d");
                h.update(id.as_bytes());
                h.update(&len.to_le_bytes());
            }
            Extent::Hole { len } => {
                h.update(b"h");
                h.update(&len.to_le_bytes());
            }
        }
    }
    h.finalize().to_hex().to_string()
}

/// The extents of a node whose bytes are copied to the data layer: a non-empty regular file
/// without holes. Until overlayfs first opens a copied file, it reports the file's blocks as
/// its size rounded up, not looking at the copy; for a sparse file that would show it dense,
/// so sparse files (disk images, mostly) stay served by the view.
pub(crate) fn eligible(node: &Node) -> Option<&[Extent]> {
    match &node.content {
        Content::File { size, extents, .. }
            if *size > 0 && extents.iter().all(|x| matches!(x, Extent::Data { .. })) =>
        {
            Some(extents)
        }
        _ => None,
    }
}

/// The size above which a fill copies a file in its first pass, and a lower image names the
/// copy instead of holding the file whole (`engine::materialize::Stubs`).
pub(crate) const LARGE_FIRST: u64 = 32 * 1024;

/// Whether an eligible file is over `LARGE_FIRST`: copied in a fill's first pass, and named
/// by a lower image's stub rather than held whole in it.
pub(crate) fn large(extents: &[Extent]) -> bool {
    extents.iter().map(Extent::len).sum::<u64>() > LARGE_FIRST
}

/// What one fill of a tree did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Filled {
    pub files: u64,
    pub bytes: u64,
    pub failed: u64,
    /// Every eligible file of the tree has its copy now.
    pub whole: bool,
}

impl DataLayer {
    pub fn new(dir: PathBuf) -> DataLayer {
        DataLayer { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the layer's directory, open to root alone: a copy holds the bytes of a file that
    /// may be closed to others inside its machine, and the copy itself is 0444.
    pub fn create(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
    }

    fn path_of(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(key)
    }

    /// The copy's path inside the layer, as an overlay redirect names it.
    pub(crate) fn redirect(key: &str) -> Vec<u8> {
        format!("/{}/{key}", &key[..2]).into_bytes()
    }

    /// The overlay attributes, names and values, that send overlayfs to the copy `key`.
    pub(crate) fn copy_xattrs(key: &str) -> [(Vec<u8>, Vec<u8>); 2] {
        [
            (b"trusted.overlay.metacopy".to_vec(), Vec::new()),
            (b"trusted.overlay.redirect".to_vec(), Self::redirect(key)),
        ]
    }

    /// The overlay attribute `name` of a file whose copy is complete: `metacopy` (empty) and
    /// `redirect` (the copy's path in the layer) send overlayfs to the copy.
    pub(crate) fn overlay_xattr(&self, node: &Node, name: &[u8]) -> Option<Vec<u8>> {
        let redirect = match name {
            b"trusted.overlay.metacopy" => false,
            b"trusted.overlay.redirect" => true,
            _ => return None,
        };
        let k = key(eligible(node)?);
        if !self.holds(&k) {
            return None;
        }
        Some(if redirect {
            Self::redirect(&k)
        } else {
            Vec::new()
        })
    }

    /// Re-reads the copy of a file with `extents` (see `eligible`), if there is one: `None`
    /// when there is none, the bytes read when it holds exactly the extents' bytes, and why
    /// not otherwise (`cairn check --read-data`).
    pub(crate) fn verify(&self, extents: &[Extent]) -> Option<Result<u64, String>> {
        use std::io::Read;
        let path = self.path_of(&key(extents));
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => return Some(Err(format!("cannot open it: {e}"))),
        };
        let mut buf = Vec::new();
        let mut at = 0u64;
        for x in extents {
            let Extent::Data { id, len } = x else {
                return Some(Err("its file has holes, which are never copied".to_owned()));
            };
            buf.resize(*len as usize, 0);
            if let Err(e) = f.read_exact(&mut buf) {
                return Some(Err(format!("reading bytes {at}..{}: {e}", at + len)));
            }
            if crate::model::ChunkId::of(&buf) != *id {
                return Some(Err(format!(
                    "bytes {at}..{} differ from the file's",
                    at + len
                )));
            }
            at += len;
        }
        let mut rest = [0u8; 1];
        match f.read(&mut rest) {
            Ok(0) => Some(Ok(at)),
            Ok(_) => Some(Err(format!("it is longer than the file's {at} bytes"))),
            Err(e) => Some(Err(format!("reading past byte {at}: {e}"))),
        }
    }

    /// Removes the copy of a file with `extents`; its machines' views serve the file until it
    /// is copied again.
    pub(crate) fn discard(&self, extents: &[Extent]) -> std::io::Result<()> {
        match std::fs::remove_file(self.path_of(&key(extents))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// True once the copy named `key` is complete.
    pub(crate) fn holds(&self, key: &str) -> bool {
        self.path_of(key).is_file()
    }

    /// Writes the copy of a file with `extents`, its chunks read through `chunk`. Returns the
    /// bytes written, 0 when another writer was first. With `replace` the copy takes the place
    /// of one already there (a repair: readers that opened the old one keep it).
    pub(crate) fn fill(
        &self,
        chunk: &dyn Fn(ChunkId) -> Result<std::sync::Arc<Vec<u8>>, String>,
        key: &str,
        extents: &[Extent],
        replace: bool,
    ) -> std::io::Result<u64> {
        let tmp_dir = self.dir.join("tmp");
        std::fs::create_dir_all(&tmp_dir)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let tmp = tmp_dir.join(format!("{key}.{}.{nanos}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let written = (|| {
            let mut size = 0;
            for x in extents {
                match x {
                    Extent::Data { id, len } => {
                        let chunk = chunk(*id).map_err(std::io::Error::other)?;
                        if chunk.len() as u64 != *len {
                            return Err(std::io::Error::other(format!(
                                "chunk {} is {} bytes, its extent says {len}",
                                id.short(),
                                chunk.len()
                            )));
                        }
                        f.write_all(&chunk)?;
                    }
                    // Not eligible today (see `eligible`), but a hole would stay one.
                    Extent::Hole { len } => {
                        f.seek(SeekFrom::Current(*len as i64))?;
                    }
                }
                size += x.len();
            }
            f.set_len(size)?;
            f.sync_all()?;
            f.set_permissions(std::fs::Permissions::from_mode(0o444))?;
            Ok(size)
        })();
        drop(f);
        let done = written.and_then(|size| {
            let at = self.path_of(key);
            std::fs::create_dir_all(at.parent().expect("a copy's path has a parent"))?;
            let flags = if replace {
                rustix::fs::RenameFlags::empty()
            } else {
                rustix::fs::RenameFlags::NOREPLACE
            };
            match rustix::fs::renameat_with(rustix::fs::CWD, &tmp, rustix::fs::CWD, &at, flags) {
                Ok(()) => Ok(size),
                Err(rustix::io::Errno::EXIST) => Ok(0),
                Err(e) => Err(e.into()),
            }
        });
        let _ = std::fs::remove_file(&tmp);
        done
    }

    /// True while filling `more` bytes would leave enough of the file system free.
    fn room_for(&self, more: u64) -> bool {
        match rustix::fs::statvfs(&self.dir) {
            Ok(s) => {
                let free = s.f_bavail.saturating_mul(s.f_frsize);
                let total = s.f_blocks.saturating_mul(s.f_frsize);
                free.saturating_sub(more) >= total / 100 * KEEP_FREE_PERCENT
            }
            Err(_) => false,
        }
    }

    /// Copies every eligible file of the tree below `top` that has no copy yet, one at a
    /// time, read through `blobs`, on an idle thread: idle CPU scheduling and idle I/O
    /// priority, so that a fill never slows the machine or the command that started it.
    /// Files larger than `LARGE_FIRST` go first, in a pass of their own whose outcome
    /// `large_done` receives: a lower image needs copies of only those. Stops when the view
    /// has gone (`alive` can no longer be upgraded) or the disk runs short. Returns what the
    /// whole fill did.
    pub(super) fn fill_tree(
        &self,
        blobs: &Blobs,
        alive: &Weak<Blobs>,
        top: &Node,
        large_done: impl FnOnce(Filled),
    ) -> Filled {
        idle_thread();
        let mut done = Filled::default();
        if let Err(e) = self.create() {
            tracing::warn!("data layer {}: {e}", self.dir.display());
            large_done(done);
            return done;
        }
        let mut seen: HashSet<String> = HashSet::new();
        let complete = self.fill_pass(blobs, alive, top, true, &mut seen, &mut done);
        large_done(Filled {
            whole: complete && done.failed == 0,
            ..done
        });
        if complete && self.fill_pass(blobs, alive, top, false, &mut seen, &mut done) {
            done.whole = done.failed == 0;
        }
        done
    }

    /// One walk of the tree copying the eligible files larger than `LARGE_FIRST` (`large`)
    /// or the others; false if it stopped short.
    fn fill_pass(
        &self,
        blobs: &Blobs,
        alive: &Weak<Blobs>,
        top: &Node,
        large: bool,
        seen: &mut HashSet<String>,
        done: &mut Filled,
    ) -> bool {
        let mut pending: Vec<TreeId> = Vec::new();
        if let Content::Dir { tree } = top.content {
            pending.push(tree);
        }
        let chunk = |id| blobs.chunk(id).map_err(|e| e.to_string());
        while let Some(id) = pending.pop() {
            if alive.strong_count() == 0 {
                return false;
            }
            let Ok(tree) = blobs.tree_passing(id) else {
                tracing::debug!("data layer fill stopped: tree {} unreadable", id.short());
                return false;
            };
            for e in &tree.entries {
                if let Content::Dir { tree } = e.node.content {
                    pending.push(tree);
                }
                let Some(extents) = eligible(&e.node) else {
                    continue;
                };
                if self::large(extents) != large {
                    continue;
                }
                let size: u64 = extents.iter().map(Extent::len).sum();
                let k = key(extents);
                if !seen.insert(k.clone()) || self.holds(&k) {
                    continue;
                }
                if !self.room_for(size) {
                    tracing::info!("data layer fill stopped: the disk is getting full");
                    return false;
                }
                match self.fill(&chunk, &k, extents, false) {
                    Ok(n) => {
                        done.files += u64::from(n > 0);
                        done.bytes += n;
                    }
                    Err(e) => {
                        tracing::warn!("data layer: copy of {k} failed: {e}");
                        done.failed += 1;
                    }
                }
            }
        }
        true
    }

    /// Removes every copy made before `made_before` whose name is not in `live`, and
    /// leftovers of fills that did not finish (older than an hour, so no running fill loses
    /// its file). Returns the files and bytes removed. A copy made later may be of a tree
    /// that `live` was computed without, such as a fork's base committed meanwhile.
    pub fn sweep(
        &self,
        live: &HashSet<String>,
        made_before: std::time::SystemTime,
    ) -> std::io::Result<(u64, u64)> {
        let (mut files, mut bytes) = (0, 0);
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
            Err(e) => return Err(e),
        };
        for shard in entries {
            let shard = shard?;
            let is_tmp = shard.file_name() == "tmp";
            for f in std::fs::read_dir(shard.path())? {
                let f = f?;
                let md = f.metadata()?;
                let name = f.file_name().to_string_lossy().into_owned();
                let stale = if is_tmp {
                    md.modified()
                        .ok()
                        .and_then(|m| m.elapsed().ok())
                        .is_some_and(|age| age.as_secs() > 3600)
                } else {
                    !live.contains(&name) && md.modified().is_ok_and(|m| m < made_before)
                };
                if stale {
                    std::fs::remove_file(f.path())?;
                    files += 1;
                    bytes += md.len();
                }
            }
        }
        Ok((files, bytes))
    }
}

/// Makes the calling thread run only when a CPU is otherwise idle (`SCHED_IDLE`) and do its
/// I/O in the idle class: a fill yields the CPU and the disk to everything else.
pub(crate) fn idle_thread() {
    // SAFETY: a zeroed sched_param is valid (priority 0, the only one SCHED_IDLE takes); pid
    // 0 is the calling thread.
    let r = unsafe {
        let param: libc::sched_param = std::mem::zeroed();
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
    };
    if r != 0 {
        tracing::debug!("sched_setscheduler: {}", std::io::Error::last_os_error());
    }
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    // SAFETY: ioprio_set takes three integers and touches no memory of ours; who = 0 is the
    // calling thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0,
            IOPRIO_CLASS_IDLE << 13,
        )
    };
    if r != 0 {
        tracing::debug!("ioprio_set: {}", std::io::Error::last_os_error());
    }
}
