//! Canonical binary encoding of trees.
//!
//! Equal trees give equal bytes, so equal subtrees get equal `TreeId`s on every host. The decoder
//! accepts only canonical input (sorted unique names, minimal varints, merged holes, no trailing
//! bytes), so no two encodings decode to the same tree.
//!
//! Layout (version 1). `uv` is an unsigned LEB128 varint in its shortest form; `sv` is a
//! zigzag-encoded signed varint; `bytes` is `uv` length followed by that many bytes.
//!
//! | field            | encoding                                                  |
//! |------------------|-----------------------------------------------------------|
//! | version          | u8 = 1                                                    |
//! | entry count      | uv                                                        |
//! | entries…         | sorted by name bytes, strictly increasing                 |
//! | · name           | bytes (a valid path component)                            |
//! | · kind           | u8: 1 file, 2 dir, 3 symlink, 4 hardlink, 5 chr, 6 blk, 7 fifo |
//! | · mode           | uv (`st_mode & 0o7777`)                                   |
//! | · uid, gid       | uv, uv                                                    |
//! | · mtime          | sv seconds, uv nanoseconds (< 1e9)                        |
//! | · xattr count    | uv, then per xattr: name bytes, value bytes (sorted by name, unique) |
//! | · content        | by kind, below                                            |
//! | file             | uv size, uv nlink (≥ 1), uv extent count, per extent: u8 tag (0 data, 1 hole), uv len (> 0), 32-byte chunk id if data |
//! | dir              | 32-byte tree id                                           |
//! | symlink/hardlink | bytes target (non-empty)                                  |
//! | chr/blk          | uv rdev                                                   |
//! | fifo             | nothing                                                   |

use super::{
    ChunkId, Content, Entry, Extent, Meta, ModelError, Node, Timestamp, Tree, TreeId, Xattr,
    validate_name,
};

/// The version byte every tree encoding starts with.
pub const TREE_FORMAT_VERSION: u8 = 1;

const KIND_FILE: u8 = 1;
const KIND_DIR: u8 = 2;
const KIND_SYMLINK: u8 = 3;
const KIND_HARDLINK: u8 = 4;
const KIND_CHR: u8 = 5;
const KIND_BLK: u8 = 6;
const KIND_FIFO: u8 = 7;
const EXTENT_DATA: u8 = 0;
const EXTENT_HOLE: u8 = 1;

/// Encodes `tree` canonically and returns the bytes with their id.
///
/// Fails if the tree is not canonical (unsorted or duplicate names, invalid names, unsorted
/// xattrs, non-canonical extents): a caller bug, reported rather than silently repaired.
pub fn encode_tree(tree: &Tree) -> Result<(TreeId, Vec<u8>), ModelError> {
    let mut out = Vec::with_capacity(64 + tree.entries.len() * 96);
    out.push(TREE_FORMAT_VERSION);
    put_uv(&mut out, tree.entries.len() as u64);
    let mut prev: Option<&[u8]> = None;
    for entry in &tree.entries {
        validate_name(&entry.name)?;
        if let Some(p) = prev
            && p >= entry.name.as_slice()
        {
            return Err(corrupt("entries are not sorted and unique"));
        }
        prev = Some(&entry.name);
        put_bytes(&mut out, &entry.name);
        encode_node(&mut out, &entry.node)?;
    }
    Ok((TreeId::of(&out), out))
}

fn encode_node(out: &mut Vec<u8>, node: &Node) -> Result<(), ModelError> {
    let kind = match node.content {
        Content::File { .. } => KIND_FILE,
        Content::Dir { .. } => KIND_DIR,
        Content::Symlink { .. } => KIND_SYMLINK,
        Content::Hardlink { .. } => KIND_HARDLINK,
        Content::CharDev { .. } => KIND_CHR,
        Content::BlockDev { .. } => KIND_BLK,
        Content::Fifo => KIND_FIFO,
    };
    out.push(kind);
    let m = &node.meta;
    if m.mode > 0o7777 {
        return Err(corrupt("mode has bits outside 0o7777"));
    }
    if m.mtime.nanos >= 1_000_000_000 {
        return Err(corrupt("mtime nanoseconds out of range"));
    }
    put_uv(out, u64::from(m.mode));
    put_uv(out, u64::from(m.uid));
    put_uv(out, u64::from(m.gid));
    put_sv(out, m.mtime.secs);
    put_uv(out, u64::from(m.mtime.nanos));
    put_uv(out, m.xattrs.len() as u64);
    for pair in m.xattrs.windows(2) {
        if pair[0].name >= pair[1].name {
            return Err(corrupt("xattrs are not sorted and unique"));
        }
    }
    for x in &m.xattrs {
        if x.name.is_empty() {
            return Err(corrupt("empty xattr name"));
        }
        put_bytes(out, &x.name);
        put_bytes(out, &x.value);
    }
    match &node.content {
        Content::File {
            size,
            nlink,
            extents,
        } => {
            check_extents(*size, extents)?;
            if *nlink == 0 {
                return Err(corrupt("file nlink is 0"));
            }
            put_uv(out, *size);
            put_uv(out, u64::from(*nlink));
            put_uv(out, extents.len() as u64);
            for e in extents {
                match e {
                    Extent::Data { id, len } => {
                        out.push(EXTENT_DATA);
                        put_uv(out, *len);
                        out.extend_from_slice(id.as_bytes());
                    }
                    Extent::Hole { len } => {
                        out.push(EXTENT_HOLE);
                        put_uv(out, *len);
                    }
                }
            }
        }
        Content::Dir { tree } => out.extend_from_slice(tree.as_bytes()),
        Content::Symlink { target } | Content::Hardlink { target } => {
            if target.is_empty() {
                return Err(corrupt("empty link target"));
            }
            put_bytes(out, target);
        }
        Content::CharDev { rdev } | Content::BlockDev { rdev } => put_uv(out, *rdev),
        Content::Fifo => {}
    }
    Ok(())
}

fn check_extents(size: u64, extents: &[Extent]) -> Result<(), ModelError> {
    let mut total: u64 = 0;
    let mut prev_hole = false;
    for e in extents {
        if e.is_empty() {
            return Err(corrupt("empty extent"));
        }
        let hole = matches!(e, Extent::Hole { .. });
        if hole && prev_hole {
            return Err(corrupt("adjacent holes are not merged"));
        }
        prev_hole = hole;
        total = total
            .checked_add(e.len())
            .ok_or_else(|| corrupt("extent lengths overflow"))?;
    }
    if total != size {
        return Err(corrupt("extents do not cover the file size"));
    }
    Ok(())
}

/// Decodes a tree, verifying that the bytes are canonical. The caller verifies the id.
pub fn decode_tree(bytes: &[u8]) -> Result<Tree, ModelError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let version = r.u8()?;
    if version != TREE_FORMAT_VERSION {
        return Err(ModelError::TreeVersion { version });
    }
    let count = r.uv()?;
    // Every entry takes at least 10 bytes, so a count beyond that is corrupt, not an allocation.
    if count > (bytes.len() as u64) / 10 + 1 {
        return Err(corrupt("entry count exceeds the encoding"));
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name = r.bytes()?.to_vec();
        validate_name(&name)?;
        if let Some(prev) = entries.last().map(|e: &Entry| &e.name)
            && *prev >= name
        {
            return Err(corrupt("entries are not sorted and unique"));
        }
        let node = decode_node(&mut r)?;
        entries.push(Entry { name, node });
    }
    if r.pos != bytes.len() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(Tree { entries })
}

fn decode_node(r: &mut Reader<'_>) -> Result<Node, ModelError> {
    let kind = r.u8()?;
    let mode = u32::try_from(r.uv()?).map_err(|_| corrupt("mode overflow"))?;
    if mode > 0o7777 {
        return Err(corrupt("mode has bits outside 0o7777"));
    }
    let uid = u32::try_from(r.uv()?).map_err(|_| corrupt("uid overflow"))?;
    let gid = u32::try_from(r.uv()?).map_err(|_| corrupt("gid overflow"))?;
    let secs = r.sv()?;
    let nanos = u32::try_from(r.uv()?).map_err(|_| corrupt("nanos overflow"))?;
    if nanos >= 1_000_000_000 {
        return Err(corrupt("mtime nanoseconds out of range"));
    }
    let xcount = r.uv()?;
    let mut xattrs: Vec<Xattr> = Vec::new();
    for _ in 0..xcount {
        let name = r.bytes()?.to_vec();
        let value = r.bytes()?.to_vec();
        if name.is_empty() {
            return Err(corrupt("empty xattr name"));
        }
        if let Some(prev) = xattrs.last()
            && prev.name >= name
        {
            return Err(corrupt("xattrs are not sorted and unique"));
        }
        xattrs.push(Xattr { name, value });
    }
    let meta = Meta {
        mode,
        uid,
        gid,
        mtime: Timestamp { secs, nanos },
        xattrs,
    };
    let content = match kind {
        KIND_FILE => {
            let size = r.uv()?;
            let nlink = u32::try_from(r.uv()?).map_err(|_| corrupt("nlink overflow"))?;
            if nlink == 0 {
                return Err(corrupt("file nlink is 0"));
            }
            let n = r.uv()?;
            if n > (r.buf.len() - r.pos) as u64 / 2 + 1 {
                return Err(corrupt("extent count exceeds the encoding"));
            }
            let mut extents = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let tag = r.u8()?;
                let len = r.uv()?;
                extents.push(match tag {
                    EXTENT_DATA => Extent::Data {
                        id: ChunkId::from_bytes(r.id()?),
                        len,
                    },
                    EXTENT_HOLE => Extent::Hole { len },
                    _ => return Err(corrupt("unknown extent tag")),
                });
            }
            check_extents(size, &extents)?;
            Content::File {
                size,
                nlink,
                extents,
            }
        }
        KIND_DIR => Content::Dir {
            tree: TreeId::from_bytes(r.id()?),
        },
        KIND_SYMLINK | KIND_HARDLINK => {
            let target = r.bytes()?.to_vec();
            if target.is_empty() {
                return Err(corrupt("empty link target"));
            }
            if kind == KIND_SYMLINK {
                Content::Symlink { target }
            } else {
                Content::Hardlink { target }
            }
        }
        KIND_CHR => Content::CharDev { rdev: r.uv()? },
        KIND_BLK => Content::BlockDev { rdev: r.uv()? },
        KIND_FIFO => Content::Fifo,
        _ => return Err(corrupt("unknown node kind")),
    };
    Ok(Node { meta, content })
}

fn corrupt(reason: &str) -> ModelError {
    ModelError::CorruptTree {
        reason: reason.to_owned(),
    }
}

fn put_uv(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_sv(out: &mut Vec<u8>, v: i64) {
    put_uv(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uv(out, b.len() as u64);
    out.extend_from_slice(b);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, ModelError> {
        let b = *self.buf.get(self.pos).ok_or_else(|| corrupt("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    fn uv(&mut self) -> Result<u64, ModelError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(corrupt("varint overflow"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                // A zero final byte after the first means a longer-than-needed encoding.
                if b == 0 && shift > 0 {
                    return Err(corrupt("non-minimal varint"));
                }
                return Ok(v);
            }
        }
        Err(corrupt("varint too long"))
    }

    fn sv(&mut self) -> Result<i64, ModelError> {
        let u = self.uv()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    fn bytes(&mut self) -> Result<&'a [u8], ModelError> {
        let len = usize::try_from(self.uv()?).map_err(|_| corrupt("length overflow"))?;
        let end = self
            .pos
            .checked_add(len)
            .ok_or_else(|| corrupt("length overflow"))?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| corrupt("truncated"))?;
        self.pos = end;
        Ok(out)
    }

    fn id(&mut self) -> Result<[u8; 32], ModelError> {
        let end = self.pos + 32;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| corrupt("truncated"))?;
        self.pos = end;
        Ok(out.try_into().expect("invariant: slice is 32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 1000,
            gid: 100,
            mtime: Timestamp {
                secs: 1_700_000_000,
                nanos: 123_456_789,
            },
            xattrs: vec![Xattr {
                name: b"user.a".to_vec(),
                value: b"1".to_vec(),
            }],
        }
    }

    fn sample() -> Tree {
        let chunk = ChunkId::of(b"hello");
        Tree {
            entries: vec![
                Entry {
                    name: b"bin".to_vec(),
                    node: Node {
                        meta: meta(0o755),
                        content: Content::Dir {
                            tree: TreeId::of(b"x"),
                        },
                    },
                },
                Entry {
                    name: b"dev-null".to_vec(),
                    node: Node {
                        meta: meta(0o666),
                        content: Content::CharDev { rdev: 0x103 },
                    },
                },
                Entry {
                    name: b"file".to_vec(),
                    node: Node {
                        meta: meta(0o4755),
                        content: Content::File {
                            size: 4101,
                            nlink: 2,
                            extents: vec![
                                Extent::Data { id: chunk, len: 5 },
                                Extent::Hole { len: 4096 },
                            ],
                        },
                    },
                },
                Entry {
                    name: b"link".to_vec(),
                    node: Node {
                        meta: meta(0o4755),
                        content: Content::Hardlink {
                            target: b"file".to_vec(),
                        },
                    },
                },
                Entry {
                    name: b"new\nline\xff".to_vec(),
                    node: Node {
                        meta: meta(0o777),
                        content: Content::Symlink {
                            target: b"/etc".to_vec(),
                        },
                    },
                },
                Entry {
                    name: b"pipe".to_vec(),
                    node: Node {
                        meta: meta(0o644),
                        content: Content::Fifo,
                    },
                },
            ],
        }
    }

    #[test]
    fn golden_tree_encoding_is_pinned() {
        // If this id changes, the tree format changed: bump TREE_FORMAT_VERSION instead.
        let (id, bytes) = encode_tree(&sample()).unwrap();
        assert_eq!(bytes[0], 1);
        assert_eq!(
            id.to_hex(),
            "a374b77606c092e95fe61cdb648248732f0813d37133a615154ac9b3b5c9b1dc"
        );
        assert_eq!(decode_tree(&bytes).unwrap(), sample());
    }

    #[test]
    fn rejects_non_canonical_input() {
        let mut t = sample();
        t.entries.swap(0, 1);
        assert!(encode_tree(&t).is_err());
        let (_, mut bytes) = encode_tree(&sample()).unwrap();
        bytes.push(0);
        assert!(decode_tree(&bytes).is_err(), "trailing bytes");
        let (_, mut bytes) = encode_tree(&sample()).unwrap();
        bytes[0] = 9;
        assert_eq!(
            decode_tree(&bytes),
            Err(ModelError::TreeVersion { version: 9 })
        );
        let mut r = Reader {
            buf: &[0x80, 0x00],
            pos: 0,
        };
        assert!(r.uv().is_err(), "non-minimal varint");
        let holes = Tree {
            entries: vec![Entry {
                name: b"f".to_vec(),
                node: Node {
                    meta: Meta::default(),
                    content: Content::File {
                        size: 2,
                        nlink: 1,
                        extents: vec![Extent::Hole { len: 1 }, Extent::Hole { len: 1 }],
                    },
                },
            }],
        };
        assert!(encode_tree(&holes).is_err());
    }

    #[test]
    fn truncations_never_panic() {
        let (_, bytes) = encode_tree(&sample()).unwrap();
        for n in 0..bytes.len() {
            assert!(decode_tree(&bytes[..n]).is_err());
        }
    }

    proptest! {
        #[test]
        fn varints_round_trip(v in any::<u64>(), s in any::<i64>()) {
            let mut out = Vec::new();
            put_uv(&mut out, v);
            put_sv(&mut out, s);
            let mut r = Reader { buf: &out, pos: 0 };
            prop_assert_eq!(r.uv().unwrap(), v);
            prop_assert_eq!(r.sv().unwrap(), s);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_tree(&bytes);
        }
    }
}
