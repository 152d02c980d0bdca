//! The pack format: many compressed blobs in one immutable object, followed by their index.
//!
//! A pack carries its own index, so the catalog's chunk index can always be rebuilt from the
//! packs alone. The index sits at the end, behind a fixed-size trailer, so a reader needs
//! only two range reads (trailer, then index) and never the blob data.
//!
//! Layout, version 1 (all integers little-endian):
//!
//! | offset          | size       | field                                              |
//! |-----------------|------------|----------------------------------------------------|
//! | 0               | 7          | magic `CAIRNPK`                                    |
//! | 7               | 1          | pack version (`1`)                                 |
//! | 8               | 16         | salt: random bytes, unique per written pack        |
//! | 24              | varies     | blobs back to back; each is a *stored blob*:       |
//! |                 |   1        | · codec tag: `0` = raw, `1` = one or more zstd frames |
//! |                 |   n        | · payload                                          |
//! | `index_off`     | 49 × count | index entries, in blob order:                      |
//! |                 |   1        | · kind (`0` = chunk, `1` = tree)                   |
//! |                 |   32       | · blob id (BLAKE3 of the raw bytes)                |
//! |                 |   8        | · offset of the stored blob (its tag byte) in the pack |
//! |                 |   4        | · stored length (tag + payload)                    |
//! |                 |   4        | · raw length                                       |
//! | `size - 44`     | 4          | count of index entries                             |
//! | `size - 40`     | 32         | BLAKE3 of the index entries' bytes                 |
//! | `size - 8`      | 7          | magic `CAIRNIX`                                    |
//! | `size - 1`      | 1          | index version (`1`)                                |
//!
//! Invariants, checked by [`parse_index`]:
//! - `index_off = size - 44 - 49 × count`, and the stored blobs tile `[24, index_off)` exactly,
//!   in index order, with no gaps or overlaps; every stored length is at least 1 (the tag).
//! - No blob id appears twice in one pack.
//! - The pack's id is the BLAKE3 of all its bytes, so one hash check covers everything.
//!
//! The encoder is canonical for a given salt: the same salt and sequence of `add`s give the same
//! bytes and the same pack id. The salt makes every written pack's id unique, even when two
//! writers pack identical blobs: gc may be deleting a doomed pack at the very moment a writer
//! re-creates its content, and the two must never share a name. A blob is stored raw when zstd
//! does not make it strictly smaller.

use super::StoreError;
use crate::model::{BlobId, PackId};
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::io::Read;

pub const PACK_MAGIC: &[u8; 7] = b"CAIRNPK";
pub const INDEX_MAGIC: &[u8; 7] = b"CAIRNIX";
/// Version of the whole layout above; stored in both the header and the trailer.
pub const PACK_VERSION: u8 = 1;
/// Magic, version and salt.
pub const HEADER_LEN: u64 = 24;
pub const SALT_LEN: usize = 16;
pub const ENTRY_LEN: u64 = 1 + 32 + 8 + 4 + 4;
pub const TRAILER_LEN: u64 = 4 + 32 + 8;
/// zstd level for blobs: fast enough for ingest, most of the ratio of higher levels.
pub const ZSTD_LEVEL: i32 = 3;
/// Largest raw blob: the raw-stored form (tag + bytes) must fit the u32 stored length.
pub const MAX_BLOB_LEN: u64 = u32::MAX as u64 - 1;

const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;
/// Decoding preallocates at most this much; beyond it the buffer grows with the data
/// actually decoded, so a corrupt raw length cannot force a huge allocation.
const MAX_PREALLOC: usize = 4 << 20;

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
}

/// What a blob is. The store does not interpret blobs; the kind lets a rebuild of the
/// catalog from packs alone tell chunks from trees.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlobKind {
    Chunk = 0,
    Tree = 1,
}

impl BlobKind {
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Chunk),
            1 => Some(Self::Tree),
            _ => None,
        }
    }
}

/// Where one blob sits in a pack: `offset`/`stored_len` delimit its stored form
/// (codec tag + payload); `raw_len` is the length after decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub id: BlobId,
    pub kind: BlobKind,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
}

/// Where the index of a pack of known size lies, as read from its trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexLocation {
    /// Offset of the first index entry.
    pub offset: u64,
    pub count: u32,
}

impl IndexLocation {
    /// Bytes from the index start to the end of the pack: what [`parse_index`] needs.
    pub fn tail_len(&self) -> u64 {
        u64::from(self.count) * ENTRY_LEN + TRAILER_LEN
    }
}

fn malformed<T>(reason: impl Into<String>) -> Result<T, StoreError> {
    Err(StoreError::Malformed {
        reason: reason.into(),
    })
}

thread_local! {
    // One compression context per thread: creating one per blob costs about as much as
    // compressing a small chunk. Reuse does not change the output.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

fn zstd_compress(raw: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        slot.as_mut()?.compress(raw).ok()
    })
}

/// Encodes a blob into its stored form: codec tag + payload. Pure and canonical, so the
/// engine may call it on worker threads and hand the result to [`PackWriter::add_stored`].
///
/// zstd is used only when it makes the blob strictly smaller; if compression fails for any
/// reason the blob is stored raw, which is always valid.
pub fn encode_blob(raw: &[u8]) -> Vec<u8> {
    match zstd_compress(raw) {
        Some(z) if z.len() < raw.len() => tagged(CODEC_ZSTD, &z),
        _ => tagged(CODEC_RAW, raw),
    }
}

/// The stored form of a tree: raw. Trees are a small part of a store (1.5% of the stored
/// bytes after the mounted benchmark's runs on its large tree), zstd shrank them only by about
/// a quarter (much of a tree is 32-byte ids), and a checkpoint re-encodes every directory on
/// the path to a change in a fresh process, where even level 1 cost 0.4 ms of a 6 ms
/// checkpoint (its contexts' first use faults in their tables). Readers take either codec.
pub fn encode_tree_blob(raw: &[u8]) -> Vec<u8> {
    tagged(CODEC_RAW, raw)
}

fn tagged(codec: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + payload.len());
    out.push(codec);
    out.extend_from_slice(payload);
    out
}

/// Decodes a stored blob, which must decode to exactly `raw_len` bytes. Never allocates much
/// more than `raw_len`. Does not check the blob's hash; the caller, who knows the id, does.
pub fn decode_blob(stored: &[u8], raw_len: u32) -> Result<Vec<u8>, StoreError> {
    let Some((&tag, payload)) = stored.split_first() else {
        return malformed("stored blob is empty (no codec tag)");
    };
    let want = raw_len as usize;
    match tag {
        CODEC_RAW if payload.len() == want => Ok(payload.to_vec()),
        CODEC_RAW => malformed(format!(
            "raw blob holds {} bytes, index says {want}",
            payload.len()
        )),
        CODEC_ZSTD if want <= MAX_PREALLOC => {
            // One decompression context per thread, reused: making one per blob costs more
            // than decompressing a small chunk. The output is bounded by the capacity, so a
            // blob that decodes to more than the index says fails here.
            let mut out = Vec::with_capacity(want);
            DECOMPRESSOR
                .with(|d| match &mut *d.borrow_mut() {
                    Some(d) => d.decompress_to_buffer(payload, &mut out),
                    None => Err(std::io::Error::other("no decompression context")),
                })
                .map_err(|e| StoreError::Malformed {
                    reason: format!("zstd: {e} (the index says {want} bytes)"),
                })?;
            if out.len() != want {
                return malformed(format!(
                    "blob decompresses to {} bytes, index says {want}",
                    out.len()
                ));
            }
            Ok(out)
        }
        CODEC_ZSTD => {
            let decoder = zstd::stream::read::Decoder::with_buffer(payload).map_err(|e| {
                StoreError::Malformed {
                    reason: format!("zstd: {e}"),
                }
            })?;
            let mut out = Vec::with_capacity(want.min(MAX_PREALLOC));
            // One byte over the limit tells "too long" from "exactly right".
            decoder
                .take(u64::from(raw_len) + 1)
                .read_to_end(&mut out)
                .map_err(|e| StoreError::Malformed {
                    reason: format!("zstd: {e}"),
                })?;
            if out.len() != want {
                return malformed(format!(
                    "blob decompresses to {}{} bytes, index says {want}",
                    out.len(),
                    if out.len() > want { " or more" } else { "" }
                ));
            }
            Ok(out)
        }
        t => malformed(format!("unknown codec tag {t}")),
    }
}

/// Builds one pack in memory. Holds each blob id at most once.
#[derive(Default)]
pub struct PackWriter {
    /// Header followed by the stored blobs added so far.
    bytes: Vec<u8>,
    entries: Vec<PackEntry>,
    ids: HashSet<BlobId>,
}

impl fmt::Debug for PackWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackWriter")
            .field("blobs", &self.entries.len())
            .field("stored_bytes", &self.stored_bytes())
            .finish()
    }
}

impl PackWriter {
    /// A writer for a new pack with a random salt.
    pub fn new() -> Self {
        let mut salt = [0u8; SALT_LEN];
        if rustix::rand::getrandom(&mut salt, rustix::rand::GetRandomFlags::empty()).is_err() {
            // Uniqueness, not secrecy, is what matters: time and pid will do.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            salt.copy_from_slice(&(t ^ (u128::from(std::process::id()) << 96)).to_le_bytes());
        }
        Self::with_salt(salt)
    }

    /// A writer with a given salt, for reproducible packs (tests, golden files).
    pub fn with_salt(salt: [u8; SALT_LEN]) -> Self {
        let mut bytes = Vec::with_capacity(1 << 20);
        bytes.extend_from_slice(PACK_MAGIC);
        bytes.push(PACK_VERSION);
        bytes.extend_from_slice(&salt);
        Self {
            bytes,
            entries: Vec::new(),
            ids: HashSet::new(),
        }
    }

    /// Compresses and appends `raw` as blob `id`, which must be `BLAKE3(raw)`.
    /// Returns `Ok(false)` without doing anything if the writer already holds `id`.
    pub fn add(&mut self, id: BlobId, kind: BlobKind, raw: &[u8]) -> Result<bool, StoreError> {
        if self.ids.contains(&id) {
            return Ok(false);
        }
        debug_assert_eq!(
            BlobId::of(raw),
            id,
            "blob id must be BLAKE3 of its raw bytes"
        );
        let raw_len = blob_len(id, raw.len())?;
        let stored = encode_blob(raw);
        self.push(id, kind, &stored, raw_len)
    }

    /// Appends a blob already encoded by [`encode_blob`] from `raw_len` raw bytes.
    /// Returns `Ok(false)` without doing anything if the writer already holds `id`.
    pub fn add_stored(
        &mut self,
        id: BlobId,
        kind: BlobKind,
        stored: Vec<u8>,
        raw_len: u32,
    ) -> Result<bool, StoreError> {
        if self.ids.contains(&id) {
            return Ok(false);
        }
        if u64::from(raw_len) > MAX_BLOB_LEN {
            return Err(StoreError::BlobTooLarge {
                id,
                len: raw_len.into(),
            });
        }
        if !matches!(stored.first(), Some(&CODEC_RAW | &CODEC_ZSTD)) {
            return malformed(format!(
                "blob {id} was not produced by encode_blob (missing or unknown codec tag)"
            ));
        }
        self.push(id, kind, &stored, raw_len)
    }

    fn push(
        &mut self,
        id: BlobId,
        kind: BlobKind,
        stored: &[u8],
        raw_len: u32,
    ) -> Result<bool, StoreError> {
        if self.entries.len() >= u32::MAX as usize {
            return Err(StoreError::PackFull {
                blobs: self.entries.len() as u64,
            });
        }
        let stored_len = u32::try_from(stored.len()).map_err(|_| StoreError::BlobTooLarge {
            id,
            len: stored.len() as u64,
        })?;
        self.entries.push(PackEntry {
            id,
            kind,
            offset: self.bytes.len() as u64,
            stored_len,
            raw_len,
        });
        self.bytes.extend_from_slice(stored);
        self.ids.insert(id);
        Ok(true)
    }

    /// Sum of the stored blobs' lengths. The finished pack is
    /// `HEADER_LEN + stored_bytes + ENTRY_LEN × len + TRAILER_LEN` bytes.
    pub fn stored_bytes(&self) -> u64 {
        self.bytes.len() as u64 - HEADER_LEN
    }
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    #[cfg(test)]
    pub fn contains(&self, id: &BlobId) -> bool {
        self.ids.contains(id)
    }

    /// Appends the index and trailer and names the pack by the hash of all its bytes.
    pub fn finish(self) -> FinishedPack {
        let Self {
            mut bytes, entries, ..
        } = self;
        let index_start = bytes.len();
        bytes.reserve(entries.len() * ENTRY_LEN as usize + TRAILER_LEN as usize);
        for e in &entries {
            bytes.push(e.kind as u8);
            bytes.extend_from_slice(e.id.as_bytes());
            bytes.extend_from_slice(&e.offset.to_le_bytes());
            bytes.extend_from_slice(&e.stored_len.to_le_bytes());
            bytes.extend_from_slice(&e.raw_len.to_le_bytes());
        }
        let index_hash = blake3::hash(&bytes[index_start..]);
        // `push` refuses a blob past u32::MAX entries, so the count fits.
        let count = entries.len() as u32;
        bytes.extend_from_slice(&count.to_le_bytes());
        bytes.extend_from_slice(index_hash.as_bytes());
        bytes.extend_from_slice(INDEX_MAGIC);
        bytes.push(PACK_VERSION);
        FinishedPack {
            id: PackId::of(&bytes),
            bytes,
            entries,
        }
    }
}

fn blob_len(id: BlobId, len: usize) -> Result<u32, StoreError> {
    match u32::try_from(len) {
        Ok(n) if u64::from(n) <= MAX_BLOB_LEN => Ok(n),
        _ => Err(StoreError::BlobTooLarge {
            id,
            len: len as u64,
        }),
    }
}

/// A complete pack, ready for [`super::Store::put_pack`].
pub struct FinishedPack {
    /// BLAKE3 of `bytes`.
    pub id: PackId,
    pub bytes: Vec<u8>,
    /// The index, in blob order (the order of `add`s).
    pub entries: Vec<PackEntry>,
}

impl fmt::Debug for FinishedPack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FinishedPack")
            .field("id", &self.id)
            .field("size", &self.bytes.len())
            .field("blobs", &self.entries.len())
            .finish()
    }
}

/// Checks the 8-byte header at the start of `bytes`.
pub fn check_header(bytes: &[u8]) -> Result<(), StoreError> {
    match bytes.get(..HEADER_LEN as usize) {
        Some(h) if &h[..7] == PACK_MAGIC && h[7] == PACK_VERSION => Ok(()),
        Some(h) if &h[..7] == PACK_MAGIC => malformed(format!(
            "pack format version {} is not supported (this build reads version {PACK_VERSION})",
            h[7]
        )),
        _ => malformed("pack header magic is missing"),
    }
}

/// Reads the trailer, the last [`TRAILER_LEN`] bytes of `tail` (any suffix of a pack of
/// `pack_size` bytes), and locates the index.
pub fn parse_trailer(tail: &[u8], pack_size: u64) -> Result<IndexLocation, StoreError> {
    let tl = TRAILER_LEN as usize;
    if tail.len() < tl || (tail.len() as u64) > pack_size {
        return malformed(format!(
            "pack of {pack_size} bytes is too short for its {TRAILER_LEN}-byte trailer"
        ));
    }
    let t = &tail[tail.len() - tl..];
    if &t[36..43] != INDEX_MAGIC {
        return malformed("pack trailer magic is missing (truncated or not a pack)");
    }
    if t[43] != PACK_VERSION {
        return malformed(format!(
            "pack index version {} is not supported (this build reads version {PACK_VERSION})",
            t[43]
        ));
    }
    let count = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
    let needed = HEADER_LEN + u64::from(count) * ENTRY_LEN + TRAILER_LEN;
    if needed > pack_size {
        return malformed(format!(
            "trailer claims {count} index entries, more than a {pack_size}-byte pack can hold"
        ));
    }
    Ok(IndexLocation {
        offset: pack_size - TRAILER_LEN - u64::from(count) * ENTRY_LEN,
        count,
    })
}

/// Parses and checks the index of a pack of `pack_size` bytes. `tail` is any suffix of the
/// pack at least [`IndexLocation::tail_len`] long: the index and trailer, or the whole pack.
/// Checks the index hash and every invariant in the layout table.
pub fn parse_index(tail: &[u8], pack_size: u64) -> Result<Vec<PackEntry>, StoreError> {
    let loc = parse_trailer(tail, pack_size)?;
    let need = loc.tail_len();
    if (tail.len() as u64) < need {
        return malformed(format!(
            "got {} bytes of the pack's end, the index and trailer need {need}",
            tail.len()
        ));
    }
    let start = tail.len() - need as usize;
    let index = &tail[start..tail.len() - TRAILER_LEN as usize];
    let trailer = &tail[tail.len() - TRAILER_LEN as usize..];
    if blake3::hash(index).as_bytes() != &trailer[4..36] {
        return malformed("pack index does not match its hash");
    }
    let mut entries = Vec::with_capacity(loc.count as usize);
    let mut seen = HashSet::with_capacity(loc.count as usize);
    let mut next = HEADER_LEN;
    for (i, e) in index.chunks_exact(ENTRY_LEN as usize).enumerate() {
        let field = |r: std::ops::Range<usize>| &e[r];
        let Some(kind) = BlobKind::from_u8(e[0]) else {
            return malformed(format!("index entry {i} has unknown kind {}", e[0]));
        };
        let id = BlobId::from_slice(field(1..33)).map_err(|err| StoreError::Malformed {
            reason: err.to_string(),
        })?;
        let entry = PackEntry {
            id,
            kind,
            offset: u64::from_le_bytes(le(field(33..41))),
            stored_len: u32::from_le_bytes(le(field(41..45))),
            raw_len: u32::from_le_bytes(le(field(45..49))),
        };
        if entry.offset != next || entry.stored_len == 0 {
            return malformed(format!(
                "index entry {i} ({id}) is at {}+{}, expected to start at {next} with length > 0",
                entry.offset, entry.stored_len
            ));
        }
        if !seen.insert(id) {
            return malformed(format!("index lists blob {id} twice"));
        }
        next += u64::from(entry.stored_len);
        entries.push(entry);
    }
    if next != loc.offset {
        return malformed(format!(
            "blobs end at {next} but the index starts at {}",
            loc.offset
        ));
    }
    Ok(entries)
}

/// Copies a fixed-size field; `chunks_exact` and the ranges above guarantee the length.
fn le<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(b);
    out
}

/// The object key of a pack: `packs/<first two hex digits>/<full hex>.pack`. The fan-out
/// directory keeps local directories small and spreads object-store key prefixes.
pub fn pack_key(id: &PackId) -> String {
    let hex = id.to_hex();
    format!("packs/{}/{hex}.pack", &hex[..2])
}

/// Inverse of [`pack_key`]; `None` for any key `pack_key` would not produce.
pub fn parse_pack_key(key: &str) -> Option<PackId> {
    let rest = key.strip_prefix("packs/")?;
    let (dir, file) = rest.split_once('/')?;
    let hex = file.strip_suffix(".pack")?;
    let id = PackId::from_hex(hex).ok()?;
    // Round-trip check: rejects uppercase hex and a wrong fan-out directory.
    (pack_key(&id) == key && dir.len() == 2).then_some(id)
}

#[cfg(test)]
#[path = "pack_tests.rs"]
mod tests;
