//! A [`Backend`] over a local directory.
//!
//! Layout under the root:
//!
//! | path          | holds                                                          |
//! |---------------|----------------------------------------------------------------|
//! | `<key>`       | the committed object named `key` (segments become directories) |
//! | `tmp/*.tmp`   | staging files of `put`s in flight or interrupted by a crash     |
//!
//! `tmp` is reserved: no key may start with the segment `tmp`.
//!
//! Write path of `put`, in order (a crash between any two steps leaves either the old state
//! or the new one visible, plus at most one staging file for `sweep_incomplete`):
//! 1. create `tmp/<random>.tmp` with `O_EXCL`, write all bytes, fsync the file;
//! 2. create each missing parent directory of the final path, fsyncing the directory that
//!    holds it, so the new directory entry itself is durable (beside step 1 when there is one
//!    to create: the two are independent);
//! 3. rename the staging file onto the final path (atomic replace);
//! 4. fsync the final path's directory, making the rename durable.
//!
//! Directories are never removed, not even when empty: removing one could race a concurrent
//! `put` that just created it (step 2) and is about to rename into it (step 3).

use super::backend::{Backend, BackendError, ObjectInfo, validate_key};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The reserved first segment holding staging files.
const TMP_DIR: &str = "tmp";

/// A backend storing each object as a file under `root`.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
    tmp: PathBuf,
}

impl LocalBackend {
    /// Opens (creating if missing) a store directory at `root`, with its `tmp` staging dir.
    pub fn open(root: &Path) -> Result<Self, BackendError> {
        let io_err = |source| BackendError::Io {
            op: "open",
            key: root.display().to_string(),
            source,
        };
        fs::create_dir_all(root).map_err(io_err)?;
        let tmp = root.join(TMP_DIR);
        match fs::create_dir(&tmp) {
            // First open: make `tmp` and the root itself durable.
            Ok(()) => {
                sync_dir(root).map_err(io_err)?;
                if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                    sync_dir(parent).map_err(io_err)?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(e)),
        }
        Ok(Self {
            root: root.to_owned(),
            tmp,
        })
    }

    /// The directory this backend stores objects in.
    #[cfg(test)]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Maps a key to its path. Safe because `validate_key` admits only plain relative
    /// segments (no `..`, no empty segment, no leading `/`).
    fn path_of(&self, key: &str) -> Result<PathBuf, BackendError> {
        validate_key(key)?;
        if key.split('/').next() == Some(TMP_DIR) {
            return Err(BackendError::BadKey {
                key: key.to_owned(),
                reason: "the first segment `tmp` is reserved for staging files",
            });
        }
        Ok(self.root.join(key))
    }

    /// Step 2 of the write path: creates the missing parents of `key`, each made durable by
    /// an fsync of the directory that holds it.
    fn create_parents(&self, key: &str) -> io::Result<()> {
        let mut dir = self.root.clone();
        let mut segs: Vec<&str> = key.split('/').collect();
        segs.pop();
        for seg in segs {
            let parent = dir.clone();
            dir.push(seg);
            match fs::create_dir(&dir) {
                Ok(()) => sync_dir(&parent)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Opens a committed object for reading; a missing file or a directory is `NotFound`.
    fn open_object(&self, op: &'static str, key: &str) -> Result<(File, u64), BackendError> {
        let path = self.path_of(key)?;
        let file = File::open(&path).map_err(io_err(op, key))?;
        let meta = file.metadata().map_err(io_err(op, key))?;
        if !meta.is_file() {
            return Err(not_found(key));
        }
        Ok((file, meta.len()))
    }
}

impl Backend for LocalBackend {
    fn put(&self, key: &str, data: &[u8]) -> Result<(), BackendError> {
        let path = self.path_of(key)?;
        let err = io_err("put", key);
        // `path` is `root/<key>` with at least one segment, so it has a parent.
        let parent = path.parent().unwrap_or(&self.root);
        // Step 1. The staging file deletes itself if we fail before the rename.
        let stage = || -> io::Result<tempfile::NamedTempFile> {
            let mut tmp = tempfile::Builder::new()
                .prefix("put-")
                .suffix(".tmp")
                .tempfile_in(&self.tmp)?;
            tmp.write_all(data)?;
            tmp.as_file().sync_all()?;
            Ok(tmp)
        };
        // Step 2. Both steps end in fsyncs of different files and neither needs the other,
        // so a put that must make a directory (a new machine's first checkpoint manifest)
        // runs them side by side; both are done before step 3.
        let tmp = if parent.is_dir() {
            stage().map_err(&err)?
        } else {
            std::thread::scope(|s| {
                let parents = s.spawn(|| self.create_parents(key));
                let tmp = stage();
                crate::join_scoped(parents).and(tmp)
            })
            .map_err(&err)?
        };
        // Step 3.
        tmp.persist(&path).map_err(|e| err(e.error))?;
        // Step 4.
        sync_dir(parent).map_err(&err)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, BackendError> {
        let (mut file, size) = self.open_object("get", key)?;
        let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.read_to_end(&mut out).map_err(io_err("get", key))?;
        Ok(out)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let (file, size) = self.open_object("get_range", key)?;
        // Checked before allocating, so a bogus length from a corrupt index cannot make us
        // allocate more than the object holds.
        let short = || {
            io_err("get_range", key)(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("object is {size} bytes; wanted {len} bytes at offset {offset}"),
            ))
        };
        match offset.checked_add(len) {
            Some(end) if end <= size => {}
            _ => return Err(short()),
        }
        let len = usize::try_from(len).map_err(|_| short())?;
        let mut out = vec![0u8; len];
        file.read_exact_at(&mut out, offset)
            .map_err(io_err("get_range", key))?;
        Ok(out)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        let bad = |reason| BackendError::BadKey {
            key: prefix.to_owned(),
            reason,
        };
        // Split into the directory part, which must be a valid key (it becomes a path), and a
        // partial last segment, which only filters names and is never joined to a path.
        let (dir_key, partial) = match prefix.rsplit_once('/') {
            Some((dir, partial)) => {
                validate_key(dir).map_err(|_| bad("directory part of the prefix is invalid"))?;
                (Some(dir), partial)
            }
            None => (None, prefix),
        };
        if !partial
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(bad("only [A-Za-z0-9._-] is allowed in a segment"));
        }
        let mut out = Vec::new();
        match dir_key {
            Some(dir) => {
                if dir.split('/').next() == Some(TMP_DIR) {
                    return Ok(out);
                }
                let start = self.root.join(dir);
                walk(&start, &format!("{dir}/"), Some(partial), false, &mut out)
            }
            None => walk(&self.root, "", Some(partial), true, &mut out),
        }
        .map_err(io_err("list", prefix))?;
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), BackendError> {
        let path = self.path_of(key)?;
        let err = io_err("delete", key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            // Missing (or a missing parent): already deleted, which is what was asked.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(err(e)),
        }
        let parent = path.parent().unwrap_or(&self.root);
        sync_dir(parent).map_err(err)
    }

    fn size(&self, key: &str) -> Result<u64, BackendError> {
        let path = self.path_of(key)?;
        let meta = fs::symlink_metadata(&path).map_err(io_err("size", key))?;
        if !meta.is_file() {
            return Err(not_found(key));
        }
        Ok(meta.len())
    }

    fn sweep_incomplete(&self, older_than: Duration) -> Result<u64, BackendError> {
        let err = io_err("sweep_incomplete", TMP_DIR);
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in fs::read_dir(&self.tmp).map_err(&err)? {
            let entry = entry.map_err(&err)?;
            let meta = match entry.metadata() {
                Ok(m) => m,
                // Renamed into place or removed by a concurrent sweep meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(err(e)),
            };
            if !meta.is_file() {
                continue;
            }
            // An mtime in the future (clock step) counts as young: keep it.
            let old = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= older_than);
            if !old {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(removed)
    }
}

/// Collects every file below `dir` as an object keyed `key_prefix + relative path`.
/// `filter` restricts the names taken at this level only (the partial segment of a prefix).
/// Symlinks and names that are not valid key segments are not objects and are skipped.
fn walk(
    dir: &Path,
    key_prefix: &str,
    filter: Option<&str>,
    at_root: bool,
    out: &mut Vec<ObjectInfo>,
) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        // A directory that does not exist holds no objects; one removed by hand while we
        // walk is treated the same, and so is a prefix whose directory part names an object.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if at_root && name == TMP_DIR {
            continue;
        }
        if filter.is_some_and(|f| !name.starts_with(f)) || validate_key(&name).is_err() {
            continue;
        }
        let kind = entry.file_type()?;
        let key = format!("{key_prefix}{name}");
        if kind.is_file() {
            match entry.metadata() {
                Ok(meta) => out.push(ObjectInfo {
                    key,
                    size: meta.len(),
                }),
                // Deleted during the listing: the contract lets us omit it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        } else if kind.is_dir() {
            walk(&entry.path(), &format!("{key}/"), None, false, out)?;
        }
    }
    Ok(())
}

/// Makes a directory's entries (creations, renames, removals) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn not_found(key: &str) -> BackendError {
    BackendError::NotFound {
        key: key.to_owned(),
    }
}

/// Maps an I/O error on `key` to `NotFound` when the object is missing, else to `Io`.
fn io_err<'a>(op: &'static str, key: &'a str) -> impl Fn(io::Error) -> BackendError + 'a {
    move |source| {
        // Only reads name an object that may legitimately be missing; for writes a missing
        // path means the store itself is damaged, which `Io` reports with its cause.
        if source.kind() == io::ErrorKind::NotFound && matches!(op, "get" | "get_range" | "size") {
            not_found(key)
        } else {
            BackendError::Io {
                op,
                key: key.to_owned(),
                source,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> (tempfile::TempDir, LocalBackend) {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = LocalBackend::open(&dir.path().join("store")).expect("open");
        (dir, b)
    }

    fn keys(b: &LocalBackend, prefix: &str) -> Vec<String> {
        let mut k: Vec<String> = b
            .list(prefix)
            .expect("list")
            .into_iter()
            .map(|o| o.key)
            .collect();
        k.sort();
        k
    }

    #[test]
    fn put_get_range_size_round_trip() {
        let (_d, b) = backend();
        b.put("packs/ab/abc.pack", b"0123456789").unwrap();
        assert_eq!(b.get("packs/ab/abc.pack").unwrap(), b"0123456789");
        assert_eq!(b.get_range("packs/ab/abc.pack", 3, 4).unwrap(), b"3456");
        assert_eq!(b.get_range("packs/ab/abc.pack", 10, 0).unwrap(), b"");
        assert_eq!(b.size("packs/ab/abc.pack").unwrap(), 10);
        b.put("empty", b"").unwrap();
        assert_eq!(b.get("empty").unwrap(), b"");
    }

    #[test]
    fn short_range_is_unexpected_eof_and_missing_is_not_found() {
        let (_d, b) = backend();
        b.put("a/b", b"xyz").unwrap();
        for (off, len) in [(2, 2), (4, 0), (u64::MAX, 2), (0, u64::MAX)] {
            match b.get_range("a/b", off, len) {
                Err(BackendError::Io { source, .. }) => {
                    assert_eq!(source.kind(), io::ErrorKind::UnexpectedEof)
                }
                other => panic!("range {off}+{len}: expected UnexpectedEof, got {other:?}"),
            }
        }
        assert!(matches!(b.get("a/c"), Err(BackendError::NotFound { .. })));
        assert!(matches!(b.get("zz/c"), Err(BackendError::NotFound { .. })));
        assert!(matches!(
            b.get_range("a/c", 0, 1),
            Err(BackendError::NotFound { .. })
        ));
        assert!(matches!(b.size("a/c"), Err(BackendError::NotFound { .. })));
        // A directory is not an object.
        assert!(matches!(b.get("a"), Err(BackendError::NotFound { .. })));
        assert!(matches!(b.size("a"), Err(BackendError::NotFound { .. })));
    }

    #[test]
    fn overwrite_replaces_whole_object() {
        let (_d, b) = backend();
        b.put("k", b"long original contents").unwrap();
        b.put("k", b"short").unwrap();
        assert_eq!(b.get("k").unwrap(), b"short");
        assert_eq!(keys(&b, ""), ["k"]);
    }

    #[test]
    fn list_prefix_may_end_mid_segment() {
        let (_d, b) = backend();
        for k in [
            "packs/aa/aa01.pack",
            "packs/ab/ab02.pack",
            "packs/b0/b003.pack",
            "packsx",
            "manifests/m1/c1",
        ] {
            b.put(k, k.as_bytes()).unwrap();
        }
        assert_eq!(
            keys(&b, "packs/a"),
            ["packs/aa/aa01.pack", "packs/ab/ab02.pack"]
        );
        assert_eq!(keys(&b, "packs/ab/"), ["packs/ab/ab02.pack"]);
        assert_eq!(keys(&b, "packs/ab/ab0"), ["packs/ab/ab02.pack"]);
        assert_eq!(keys(&b, "packs").len(), 4);
        assert_eq!(keys(&b, "packs/").len(), 3);
        assert_eq!(keys(&b, "").len(), 5);
        assert!(keys(&b, "nothing/here").is_empty());
        assert!(keys(&b, "packs/c").is_empty());
        assert!(
            keys(&b, "packsx/").is_empty(),
            "an object is not a directory"
        );
        let sizes = b.list("manifests/").unwrap();
        assert_eq!(
            sizes,
            [ObjectInfo {
                key: "manifests/m1/c1".into(),
                size: 15
            }]
        );
    }

    #[test]
    fn delete_is_idempotent() {
        let (_d, b) = backend();
        b.put("x/y", b"1").unwrap();
        b.delete("x/y").unwrap();
        b.delete("x/y").unwrap();
        b.delete("never/was").unwrap();
        assert!(matches!(b.get("x/y"), Err(BackendError::NotFound { .. })));
        assert!(keys(&b, "").is_empty());
    }

    #[test]
    fn bad_keys_are_rejected() {
        let (_d, b) = backend();
        for k in [
            "../x", "a//b", "/abs", "a/../b", "", "a/", "tmp/x", "tmp", "a b",
        ] {
            assert!(
                matches!(b.put(k, b"x"), Err(BackendError::BadKey { .. })),
                "put {k:?}"
            );
            assert!(
                matches!(b.get(k), Err(BackendError::BadKey { .. })),
                "get {k:?}"
            );
            assert!(
                matches!(b.delete(k), Err(BackendError::BadKey { .. })),
                "delete {k:?}"
            );
        }
        for p in ["../", "/abs", "a//b", "../x/y", "a/b c"] {
            assert!(
                matches!(b.list(p), Err(BackendError::BadKey { .. })),
                "list {p:?}"
            );
        }
        // Nothing escaped the root.
        assert!(!b.root().parent().unwrap().join("x").exists());
    }

    #[test]
    fn interrupted_put_is_invisible_and_swept() {
        let (_d, b) = backend();
        b.put("kept", b"committed").unwrap();
        // A put that crashed after writing its staging file but before the rename.
        let leftover = b.tmp.join("put-crashed.tmp");
        fs::write(&leftover, b"partial").unwrap();
        assert_eq!(keys(&b, ""), ["kept"]);
        assert_eq!(keys(&b, "t"), Vec::<String>::new());

        // Too young to be swept: it could belong to a put still in flight.
        assert_eq!(b.sweep_incomplete(Duration::from_secs(3600)).unwrap(), 0);
        assert!(leftover.exists());

        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        File::options()
            .write(true)
            .open(&leftover)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        assert_eq!(b.sweep_incomplete(Duration::from_secs(3600)).unwrap(), 1);
        assert!(!leftover.exists());
        assert_eq!(b.get("kept").unwrap(), b"committed");
        // A successful put leaves no staging file behind.
        assert_eq!(fs::read_dir(&b.tmp).unwrap().count(), 0);
    }

    #[test]
    fn reopen_sees_existing_objects() {
        let (d, b) = backend();
        b.put("a/b/c", b"data").unwrap();
        let again = LocalBackend::open(&d.path().join("store")).unwrap();
        assert_eq!(again.get("a/b/c").unwrap(), b"data");
    }
}
