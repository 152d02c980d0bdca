//! Packs, the pack format and storage backends.
//!
//! **Invariant:** the store knows nothing of machines or checkpoints. It keeps immutable,
//! content-addressed packs (see [`pack`] for the format) and small metadata objects in one
//! [`Backend`], and it verifies every byte it hands out against the id it was asked for.
//!
//! Object keys used here:
//!
//! | key                                   | holds                                  |
//! |---------------------------------------|----------------------------------------|
//! | `packs/<2 hex>/<64 hex>.pack`         | one pack, named by BLAKE3 of its bytes |
//! | anything else (via `*_object`)        | metadata objects owned by the caller   |

mod backend;
mod local;
mod pack;

pub use backend::{Backend, BackendError, ObjectInfo};
pub use local::LocalBackend;
pub use pack::{
    BlobKind, FinishedPack, MAX_BLOB_LEN, PackEntry, PackWriter, decode_blob, encode_blob,
    encode_tree_blob, pack_key, parse_index, parse_pack_key, parse_trailer,
};

use crate::model::{BlobId, PackId};
use std::sync::Arc;

/// Errors from the store. Corruption variants name the pack and blob so `check` and the
/// user can find what is damaged.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(
        "pack {pack} is corrupt: {reason}; run `cairn check --read-data` to find the affected checkpoints"
    )]
    CorruptPack { pack: PackId, reason: String },
    #[error(
        "blob {id} in pack {pack} is corrupt: {reason}; run `cairn check --read-data` to find the affected checkpoints"
    )]
    CorruptBlob {
        id: BlobId,
        pack: PackId,
        reason: String,
    },
    #[error(
        "blob {id} in pack {pack} does not match its id (the stored data is damaged); run `cairn check --read-data` to find the affected checkpoints"
    )]
    HashMismatch { id: BlobId, pack: PackId },
    /// From the pack codec, which does not know which pack or blob it is looking at. `Store`
    /// turns it into `CorruptPack` or `CorruptBlob` before it reaches a caller of `Store`.
    #[error("malformed pack data: {reason}")]
    Malformed { reason: String },
    #[error("blob {id} is {len} bytes, over the pack format's limit of {MAX_BLOB_LEN} bytes")]
    BlobTooLarge { id: BlobId, len: u64 },
    #[error(
        "pack already holds {blobs} blobs, the format's limit; finish it and start another pack"
    )]
    PackFull { blobs: u64 },
}

impl StoreError {
    /// True when the object asked for does not exist (as opposed to being damaged).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Backend(BackendError::NotFound { .. }))
    }

    fn in_pack(self, pack: &PackId) -> Self {
        match self {
            Self::Malformed { reason } => Self::CorruptPack {
                pack: *pack,
                reason,
            },
            other => other,
        }
    }

    fn in_blob(self, id: &BlobId, pack: &PackId) -> Self {
        match self {
            Self::Malformed { reason } => Self::CorruptBlob {
                id: *id,
                pack: *pack,
                reason,
            },
            other => other,
        }
    }

    /// The bare reason of a codec error, for per-blob findings.
    fn reason(self) -> String {
        match self {
            Self::Malformed { reason } => reason,
            other => other.to_string(),
        }
    }
}

/// Result of [`Store::verify_pack`]: every problem found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackVerify {
    pub pack: PackId,
    pub size: u64,
    /// BLAKE3 of the whole object equals the pack id it is stored under.
    pub pack_hash_ok: bool,
    /// Problems with the header, index or trailer. If the index could not be read, no blob
    /// was checked and `entries` is empty.
    pub format_errors: Vec<String>,
    /// The index as parsed.
    pub entries: Vec<PackEntry>,
    /// Each blob that failed to decode or to match its id, with why.
    pub blob_failures: Vec<(BlobId, String)>,
}

impl PackVerify {
    #[cfg(test)]
    pub fn is_ok(&self) -> bool {
        self.pack_hash_ok && self.format_errors.is_empty() && self.blob_failures.is_empty()
    }
}

/// Packs and metadata objects over one backend. Cheap to clone the `Arc` and share across
/// threads; it holds no state of its own.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl Store {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self { backend }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Stores a finished pack under its id. Durable when it returns. Putting a pack that
    /// already exists rewrites identical bytes, so it is idempotent.
    pub fn put_pack(&self, pack: &FinishedPack) -> Result<(), StoreError> {
        self.backend.put(&pack_key(&pack.id), &pack.bytes)?;
        Ok(())
    }

    /// Reads one blob with a single range read, decodes it and checks it hashes to `id`.
    /// The location comes from the catalog or from [`Store::read_pack_index`].
    pub fn read_blob(
        &self,
        pack: &PackId,
        entry_offset: u64,
        stored_len: u32,
        raw_len: u32,
        id: &BlobId,
    ) -> Result<Vec<u8>, StoreError> {
        let corrupt = |reason: String| StoreError::CorruptBlob {
            id: *id,
            pack: *pack,
            reason,
        };
        if entry_offset < pack::HEADER_LEN || stored_len == 0 {
            return Err(corrupt(format!(
                "location {entry_offset}+{stored_len} is not a blob's place in a pack"
            )));
        }
        let stored = self
            .backend
            .get_range(&pack_key(pack), entry_offset, stored_len.into())
            .map_err(|e| match e {
                BackendError::Io { ref source, .. }
                    if source.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    corrupt(format!(
                        "the pack is shorter than its index says ({stored_len} bytes at {entry_offset})"
                    ))
                }
                other => other.into(),
            })?;
        let raw = decode_blob(&stored, raw_len).map_err(|e| e.in_blob(id, pack))?;
        if BlobId::of(&raw) != *id {
            return Err(StoreError::HashMismatch {
                id: *id,
                pack: *pack,
            });
        }
        Ok(raw)
    }

    /// Reads a pack's index without its blob data: the size, then the trailer, then the
    /// index (three small requests). The index is checked against its hash and layout.
    pub fn read_pack_index(&self, pack: &PackId) -> Result<Vec<PackEntry>, StoreError> {
        let key = pack_key(pack);
        let size = self.backend.size(&key)?;
        let too_short = || StoreError::CorruptPack {
            pack: *pack,
            reason: format!("{size} bytes is too short to be a pack"),
        };
        if size < pack::HEADER_LEN + pack::TRAILER_LEN {
            return Err(too_short());
        }
        let trailer = self
            .backend
            .get_range(&key, size - pack::TRAILER_LEN, pack::TRAILER_LEN)?;
        let loc = parse_trailer(&trailer, size).map_err(|e| e.in_pack(pack))?;
        let tail = self.backend.get_range(&key, loc.offset, loc.tail_len())?;
        parse_index(&tail, size).map_err(|e| e.in_pack(pack))
    }

    /// Every pack in the store with its size. Keys under `packs/` that are not pack keys
    /// are not packs and are left out.
    pub fn list_packs(&self) -> Result<Vec<(PackId, u64)>, StoreError> {
        Ok(self
            .backend
            .list("packs/")?
            .into_iter()
            .filter_map(|o| match parse_pack_key(&o.key) {
                Some(id) => Some((id, o.size)),
                None => {
                    tracing::warn!(key = %o.key, "ignoring an object under packs/ that is not a pack");
                    None
                }
            })
            .collect())
    }

    /// Deletes a pack. Deleting a missing pack is a no-op. Durable when it returns.
    pub fn delete_pack(&self, pack: &PackId) -> Result<(), StoreError> {
        self.backend.delete(&pack_key(pack))?;
        Ok(())
    }

    /// Reads a whole pack and checks everything: its hash, header, index and every blob.
    /// Returns `Err` only when the pack cannot be read at all (missing, backend failure);
    /// damage is reported in the result, blob by blob.
    pub fn verify_pack(&self, pack: &PackId) -> Result<PackVerify, StoreError> {
        let bytes = self.backend.get(&pack_key(pack))?;
        let size = bytes.len() as u64;
        let mut v = PackVerify {
            pack: *pack,
            size,
            pack_hash_ok: PackId::of(&bytes) == *pack,
            format_errors: Vec::new(),
            entries: Vec::new(),
            blob_failures: Vec::new(),
        };
        if let Err(e) = pack::check_header(&bytes) {
            v.format_errors.push(e.reason());
        }
        match parse_index(&bytes, size) {
            Ok(entries) => v.entries = entries,
            Err(e) => v.format_errors.push(e.reason()),
        }
        for e in &v.entries {
            // parse_index guarantees every entry lies inside the blob region.
            let start = e.offset as usize;
            let stored = &bytes[start..start + e.stored_len as usize];
            match decode_blob(stored, e.raw_len) {
                Ok(raw) if BlobId::of(&raw) == e.id => {}
                Ok(_) => v
                    .blob_failures
                    .push((e.id, "content does not match its id".to_owned())),
                Err(err) => v.blob_failures.push((e.id, err.reason())),
            }
        }
        Ok(v)
    }

    /// Stores a small metadata object (e.g. a checkpoint manifest). Durable when it
    /// returns; replaces an existing object atomically.
    pub fn put_object(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.backend.put(key, bytes)?;
        Ok(())
    }

    /// Reads a metadata object; a missing one is an error for which `is_not_found` holds.
    pub fn get_object(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        Ok(self.backend.get(key)?)
    }

    /// Metadata objects whose key starts with `prefix`, in no particular order.
    pub fn list_objects(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        Ok(self.backend.list(prefix)?)
    }

    /// Deletes a metadata object; a missing one is a no-op. Durable when it returns.
    pub fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        self.backend.delete(key)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = LocalBackend::open(dir.path()).expect("open");
        (dir, Store::new(Arc::new(backend)))
    }

    fn blobs() -> Vec<Vec<u8>> {
        vec![
            b"first chunk".to_vec(),
            b"compressible ".repeat(300),
            Vec::new(),
            (0..=255u8).cycle().take(5000).collect(),
        ]
    }

    fn put_sample(s: &Store) -> FinishedPack {
        let mut w = PackWriter::new();
        for (i, raw) in blobs().iter().enumerate() {
            let kind = if i % 2 == 0 {
                BlobKind::Chunk
            } else {
                BlobKind::Tree
            };
            w.add(BlobId::of(raw), kind, raw).unwrap();
        }
        let pack = w.finish();
        s.put_pack(&pack).unwrap();
        pack
    }

    /// Overwrites the stored pack with `bytes`, keeping its name.
    fn replace(s: &Store, id: &PackId, bytes: &[u8]) {
        s.backend().put(&pack_key(id), bytes).unwrap();
    }

    #[test]
    fn pack_round_trip_through_the_store() {
        let (_d, s) = store();
        let pack = put_sample(&s);
        assert_eq!(s.read_pack_index(&pack.id).unwrap(), pack.entries);
        for (raw, e) in blobs().iter().zip(&pack.entries) {
            let got = s
                .read_blob(&pack.id, e.offset, e.stored_len, e.raw_len, &e.id)
                .unwrap();
            assert_eq!(&got, raw);
        }
        assert_eq!(
            s.list_packs().unwrap(),
            [(pack.id, pack.bytes.len() as u64)]
        );
        let v = s.verify_pack(&pack.id).unwrap();
        assert!(v.is_ok(), "{v:?}");
        assert_eq!(v.entries, pack.entries);

        s.delete_pack(&pack.id).unwrap();
        s.delete_pack(&pack.id).unwrap();
        assert!(s.list_packs().unwrap().is_empty());
        assert!(s.read_pack_index(&pack.id).unwrap_err().is_not_found());
        assert!(s.verify_pack(&pack.id).unwrap_err().is_not_found());
    }

    #[test]
    fn flipped_blob_byte_is_reported_by_read_blob_and_verify() {
        let (_d, s) = store();
        let pack = put_sample(&s);
        for victim in [0usize, 1, 3] {
            let e = pack.entries[victim];
            let mut bad = pack.bytes.clone();
            // Last byte of the payload: inside the data, past the codec tag.
            bad[(e.offset + u64::from(e.stored_len) - 1) as usize] ^= 0x40;
            replace(&s, &pack.id, &bad);

            let err = s
                .read_blob(&pack.id, e.offset, e.stored_len, e.raw_len, &e.id)
                .unwrap_err();
            assert!(
                matches!(
                    &err,
                    StoreError::HashMismatch { id, pack: p } | StoreError::CorruptBlob { id, pack: p, .. }
                        if *id == e.id && *p == pack.id
                ),
                "blob {victim}: {err:?}"
            );
            assert!(err.to_string().contains("cairn check --read-data"));

            let v = s.verify_pack(&pack.id).unwrap();
            assert!(!v.pack_hash_ok);
            assert!(v.format_errors.is_empty(), "{v:?}");
            let failed: Vec<BlobId> = v.blob_failures.iter().map(|f| f.0).collect();
            assert_eq!(failed, [e.id], "only the damaged blob is named");
            // The undamaged blobs are still readable.
            for other in pack.entries.iter().filter(|o| o.id != e.id) {
                s.read_blob(
                    &pack.id,
                    other.offset,
                    other.stored_len,
                    other.raw_len,
                    &other.id,
                )
                .unwrap();
            }
        }
    }

    #[test]
    fn verify_names_every_damaged_blob() {
        let (_d, s) = store();
        let pack = put_sample(&s);
        let mut bad = pack.bytes.clone();
        for e in [pack.entries[0], pack.entries[3]] {
            bad[(e.offset + 1) as usize] ^= 1;
        }
        replace(&s, &pack.id, &bad);
        let v = s.verify_pack(&pack.id).unwrap();
        let failed: Vec<BlobId> = v.blob_failures.iter().map(|f| f.0).collect();
        assert_eq!(failed, [pack.entries[0].id, pack.entries[3].id]);
    }

    #[test]
    fn truncated_pack_is_corrupt_not_a_panic() {
        let (_d, s) = store();
        let pack = put_sample(&s);
        let n = pack.bytes.len();
        for keep in [0, 1, 8, 51, 52, n / 2, n - 45, n - 44, n - 1] {
            replace(&s, &pack.id, &pack.bytes[..keep]);
            let err = s.read_pack_index(&pack.id).unwrap_err();
            assert!(
                matches!(err, StoreError::CorruptPack { pack: p, .. } if p == pack.id),
                "kept {keep}: {err:?}"
            );
            let v = s.verify_pack(&pack.id).unwrap();
            assert!(!v.is_ok() && !v.format_errors.is_empty(), "kept {keep}");
        }
        // A blob past the end of a truncated pack is named, not a bare I/O error.
        replace(&s, &pack.id, &pack.bytes[..20]);
        let e = pack.entries[3];
        let err = s
            .read_blob(&pack.id, e.offset, e.stored_len, e.raw_len, &e.id)
            .unwrap_err();
        assert!(matches!(err, StoreError::CorruptBlob { .. }), "{err:?}");
    }

    #[test]
    fn read_blob_rejects_impossible_locations() {
        let (_d, s) = store();
        let pack = put_sample(&s);
        let e = pack.entries[1];
        for (off, len) in [(0, e.stored_len), (e.offset, 0)] {
            let err = s
                .read_blob(&pack.id, off, len, e.raw_len, &e.id)
                .unwrap_err();
            assert!(matches!(err, StoreError::CorruptBlob { .. }), "{err:?}");
        }
        // Right place, wrong id: the hash check catches it.
        let err = s
            .read_blob(
                &pack.id,
                e.offset,
                e.stored_len,
                e.raw_len,
                &BlobId::of(b"other"),
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::HashMismatch { .. }), "{err:?}");
    }

    #[test]
    fn metadata_objects() {
        let (_d, s) = store();
        s.put_object("manifests/m1/v1", b"one").unwrap();
        s.put_object("manifests/m1/v2", b"two").unwrap();
        s.put_object("manifests/m2/v1", b"three").unwrap();
        put_sample(&s);
        assert_eq!(s.get_object("manifests/m1/v2").unwrap(), b"two");
        let mut keys: Vec<String> = s
            .list_objects("manifests/m1")
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        assert_eq!(keys, ["manifests/m1/v1", "manifests/m1/v2"]);
        s.delete_object("manifests/m1/v1").unwrap();
        s.delete_object("manifests/m1/v1").unwrap();
        assert!(s.get_object("manifests/m1/v1").unwrap_err().is_not_found());
        assert_eq!(s.list_packs().unwrap().len(), 1, "objects are not packs");
        assert!(matches!(
            s.put_object("../escape", b"x"),
            Err(StoreError::Backend(BackendError::BadKey { .. }))
        ));
    }
}
