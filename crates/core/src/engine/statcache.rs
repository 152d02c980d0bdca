//! The stat cache: per machine, what each regular file looked like when it was last read, so an
//! incremental checkpoint reads only files whose stat changed.
//!
//! An entry is trusted only if inode, size, mtime, ctime and mode all match; ctime changes on
//! every write, chmod, chown and xattr change, so a match means the content and metadata are as
//! recorded. An entry is stored only if the file's ctime is older than the moment its read began
//! by more than `RACY_WINDOW_NS`: otherwise a write landing in the same timestamp tick as the
//! read could leave the stat unchanged while the content changed.
//!
//! The file is a cache: if it is missing, stale or corrupt, the next checkpoint reads everything.
//!
//! Layout (version 1, integers little-endian):
//!
//! | field        | encoding                                                      |
//! |--------------|---------------------------------------------------------------|
//! | magic        | `CAIRNSC` + version u8 = 1                                    |
//! | gc epoch     | u64: the catalog's gc epoch when written                      |
//! | count        | u64                                                           |
//! | entries…     | path (u32 len + bytes), ino u64, size u64, mtime i64+u32, ctime i64+u32, mode u32, extent count u32, per extent: tag u8 (0 data, 1 hole), len u64, 32-byte id if data |
//! | checksum     | BLAKE3 of everything before it (32 bytes)                     |

use super::{EngineError, Result};
use crate::model::{ChunkId, Extent, Timestamp};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 7] = b"CAIRNSC";
const VERSION: u8 = 1;
/// Files changed this close before their read began are re-read next time. Kernel file
/// timestamps come from a coarse clock (one tick, at most 10 ms); this is several ticks.
pub(crate) const RACY_WINDOW_NS: i64 = 50_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StatSig {
    pub ino: u64,
    pub size: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub mode: u32,
}

#[derive(Clone, Debug)]
pub(crate) struct CacheEntry {
    pub sig: StatSig,
    pub extents: Vec<Extent>,
}

#[derive(Default)]
pub(crate) struct StatCache {
    pub epoch: u64,
    pub entries: HashMap<Vec<u8>, CacheEntry>,
}

impl StatCache {
    /// Loads the cache; a missing or damaged file gives an empty cache (everything is re-read).
    pub(crate) fn load(path: &Path) -> StatCache {
        match std::fs::read(path) {
            Ok(bytes) => decode(&bytes).unwrap_or_else(|| {
                tracing::warn!(
                    "stat cache {} is damaged; all files will be re-read",
                    path.display()
                );
                StatCache::default()
            }),
            Err(_) => StatCache::default(),
        }
    }

    /// Writes the cache atomically (temp file, rename). Losing it only costs a re-read.
    pub(crate) fn save(&self, path: &Path) -> Result<()> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * 120);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.epoch.to_le_bytes());
        // Entries changed within the racy window before now (e.g. files a restore just wrote)
        // are left out: a write in the same timestamp tick could go unnoticed.
        let cutoff = super::now_ns() - RACY_WINDOW_NS;
        let mut paths: Vec<&Vec<u8>> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.sig.ctime.secs.saturating_mul(1_000_000_000) + i64::from(e.sig.ctime.nanos)
                    < cutoff
            })
            .map(|(p, _)| p)
            .collect();
        paths.sort();
        out.extend_from_slice(&(paths.len() as u64).to_le_bytes());
        for p in paths {
            let e = &self.entries[p];
            out.extend_from_slice(&(p.len() as u32).to_le_bytes());
            out.extend_from_slice(p);
            out.extend_from_slice(&e.sig.ino.to_le_bytes());
            out.extend_from_slice(&e.sig.size.to_le_bytes());
            for t in [e.sig.mtime, e.sig.ctime] {
                out.extend_from_slice(&t.secs.to_le_bytes());
                out.extend_from_slice(&t.nanos.to_le_bytes());
            }
            out.extend_from_slice(&e.sig.mode.to_le_bytes());
            out.extend_from_slice(&(e.extents.len() as u32).to_le_bytes());
            for x in &e.extents {
                match x {
                    Extent::Data { id, len } => {
                        out.push(0);
                        out.extend_from_slice(&len.to_le_bytes());
                        out.extend_from_slice(id.as_bytes());
                    }
                    Extent::Hole { len } => {
                        out.push(1);
                        out.extend_from_slice(&len.to_le_bytes());
                    }
                }
            }
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|source| EngineError::Io {
            op: "create directory",
            path: dir.to_owned(),
            source,
        })?;
        let io = |op, source| EngineError::Io {
            op,
            path: path.to_owned(),
            source,
        };
        let mut tmp =
            tempfile::NamedTempFile::new_in(dir).map_err(|e| io("create stat cache", e))?;
        tmp.write_all(&out).map_err(|e| io("write stat cache", e))?;
        // No fsync: after power loss the rename may survive without the data, and the checksum
        // then rejects the file; an older cache that survives is still right wherever it
        // matches a file's stat, and the gc epoch guards the chunks it names.
        tmp.persist(path)
            .map_err(|e| io("rename stat cache", e.error))?;
        Ok(())
    }
}

fn decode(bytes: &[u8]) -> Option<StatCache> {
    if bytes.len() < 8 + 16 + 32 {
        return None;
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum || &body[..7] != MAGIC || body[7] != VERSION {
        return None;
    }
    let mut r = Cursor { b: body, pos: 8 };
    let epoch = r.u64()?;
    let count = r.u64()?;
    let mut entries = HashMap::with_capacity(count.min(1 << 24) as usize);
    for _ in 0..count {
        let plen = r.u32()? as usize;
        let path = r.take(plen)?.to_vec();
        let ino = r.u64()?;
        let size = r.u64()?;
        let mtime = Timestamp {
            secs: r.u64()? as i64,
            nanos: r.u32()?,
        };
        let ctime = Timestamp {
            secs: r.u64()? as i64,
            nanos: r.u32()?,
        };
        let mode = r.u32()?;
        let n = r.u32()?;
        let mut extents = Vec::with_capacity(n.min(1 << 20) as usize);
        for _ in 0..n {
            let tag = r.take(1)?[0];
            let len = r.u64()?;
            extents.push(match tag {
                0 => Extent::Data {
                    id: ChunkId::from_slice(r.take(32)?).ok()?,
                    len,
                },
                1 => Extent::Hole { len },
                _ => return None,
            });
        }
        entries.insert(
            path,
            CacheEntry {
                sig: StatSig {
                    ino,
                    size,
                    mtime,
                    ctime,
                    mode,
                },
                extents,
            },
        );
    }
    (r.pos == body.len()).then_some(StatCache { epoch, entries })
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(out)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("statcache");
        let mut c = StatCache {
            epoch: 7,
            ..Default::default()
        };
        let sig = StatSig {
            ino: 42,
            size: 10,
            mtime: Timestamp { secs: -5, nanos: 9 },
            ctime: Timestamp { secs: 1, nanos: 2 },
            mode: 0o100644,
        };
        let extents = vec![
            Extent::Data {
                id: ChunkId::of(b"x"),
                len: 4,
            },
            Extent::Hole { len: 6 },
        ];
        c.entries.insert(
            b"etc/a\nb".to_vec(),
            CacheEntry {
                sig: sig.clone(),
                extents: extents.clone(),
            },
        );
        c.save(&path).unwrap();
        let back = StatCache::load(&path);
        assert_eq!(back.epoch, 7);
        let e = &back.entries[&b"etc/a\nb".to_vec()];
        assert_eq!((&e.sig, &e.extents), (&sig, &extents));
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(StatCache::load(&path).entries.is_empty());
        assert!(
            StatCache::load(&dir.path().join("missing"))
                .entries
                .is_empty()
        );
    }
}
