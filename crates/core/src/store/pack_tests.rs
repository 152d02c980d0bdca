//! Tests of the pack format and the blob codec.

use super::*;
use proptest::prelude::*;

/// Deterministic bytes that zstd cannot shrink.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sample_blobs() -> Vec<(BlobKind, Vec<u8>)> {
    vec![
        (BlobKind::Chunk, Vec::new()),
        (BlobKind::Chunk, b"x".to_vec()),
        (BlobKind::Chunk, noise(70_000, 1)),
        (BlobKind::Tree, b"tree tree tree tree ".repeat(500)),
        (BlobKind::Chunk, vec![0u8; 256 * 1024]),
        (BlobKind::Tree, noise(33, 2)),
    ]
}

fn build(blobs: &[(BlobKind, Vec<u8>)]) -> FinishedPack {
    let mut w = PackWriter::with_salt([0; SALT_LEN]);
    for (kind, raw) in blobs {
        assert!(w.add(BlobId::of(raw), *kind, raw).unwrap());
    }
    w.finish()
}

#[test]
fn round_trip_many_blobs_of_both_kinds() {
    let blobs = sample_blobs();
    let mut w = PackWriter::with_salt([0; SALT_LEN]);
    assert!(w.is_empty());
    for (kind, raw) in &blobs {
        assert!(w.add(BlobId::of(raw), *kind, raw).unwrap());
        // A second add of the same id is a no-op.
        assert!(!w.add(BlobId::of(raw), *kind, raw).unwrap());
    }
    assert_eq!(w.len(), blobs.len());
    assert!(w.contains(&BlobId::of(b"x")));
    assert!(!w.contains(&BlobId::of(b"y")));
    let stored = w.stored_bytes();
    let pack = w.finish();
    assert_eq!(
        pack.bytes.len() as u64,
        HEADER_LEN + stored + ENTRY_LEN * blobs.len() as u64 + TRAILER_LEN
    );
    assert_eq!(pack.id, PackId::of(&pack.bytes));
    check_header(&pack.bytes).unwrap();
    let size = pack.bytes.len() as u64;
    assert_eq!(parse_index(&pack.bytes, size).unwrap(), pack.entries);
    for ((kind, raw), e) in blobs.iter().zip(&pack.entries) {
        assert_eq!(
            (e.kind, e.id, e.raw_len as usize),
            (*kind, BlobId::of(raw), raw.len())
        );
        let s = &pack.bytes[e.offset as usize..][..e.stored_len as usize];
        assert_eq!(&decode_blob(s, e.raw_len).unwrap(), raw);
    }
    // Incompressible data is stored raw; repetitive data is compressed.
    assert_eq!(pack.entries[2].stored_len, 70_001);
    assert!(pack.entries[4].stored_len < 1024);
}

#[test]
fn add_stored_gives_the_same_pack_as_add() {
    let blobs = sample_blobs();
    let mut w = PackWriter::with_salt([0; SALT_LEN]);
    for (kind, raw) in &blobs {
        let stored = encode_blob(raw);
        assert!(
            w.add_stored(BlobId::of(raw), *kind, stored, raw.len() as u32)
                .unwrap()
        );
    }
    assert!(
        w.add_stored(BlobId::of(b"z"), BlobKind::Chunk, vec![], 0)
            .is_err()
    );
    assert!(
        w.add_stored(BlobId::of(b"z"), BlobKind::Chunk, vec![9, 1], 1)
            .is_err()
    );
    assert_eq!(w.finish().bytes, build(&blobs).bytes);
}

#[test]
fn two_writers_of_the_same_blobs_make_distinct_packs() {
    let mut a = PackWriter::new();
    let mut b = PackWriter::new();
    a.add(BlobId::of(b"x"), BlobKind::Chunk, b"x").unwrap();
    b.add(BlobId::of(b"x"), BlobKind::Chunk, b"x").unwrap();
    assert_ne!(
        a.finish().id,
        b.finish().id,
        "gc must never delete a rewritten pack by name"
    );
}

#[test]
fn empty_pack_is_valid() {
    let pack = PackWriter::with_salt([0; SALT_LEN]).finish();
    assert_eq!(pack.bytes.len() as u64, HEADER_LEN + TRAILER_LEN);
    assert!(
        parse_index(&pack.bytes, HEADER_LEN + TRAILER_LEN)
            .unwrap()
            .is_empty()
    );
}

/// Pins format version 1 byte for byte. If this fails, the on-disk format (or the zstd
/// encoder's output) changed: bump `PACK_VERSION` and keep a reader for the old one.
#[test]
fn golden_pack_bytes_and_id() {
    let tree = b"abcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabc".to_vec();
    let pack = build(&[
        (BlobKind::Chunk, b"cairn".to_vec()),
        (BlobKind::Tree, tree.clone()),
    ]);
    let b = &pack.bytes;
    // Structure, spelled out independently of the encoder.
    assert_eq!(&b[..8], b"CAIRNPK\x01");
    assert_eq!(&b[8..24], &[0u8; SALT_LEN], "the salt");
    assert_eq!(&b[24..30], b"\x00cairn", "short blob stored raw with tag 0");
    assert_eq!(b[30], 1, "repetitive blob compressed with tag 1");
    assert_eq!(&b[b.len() - 8..], b"CAIRNIX\x01");
    assert_eq!(&b[b.len() - 44..b.len() - 40], &2u32.to_le_bytes());
    let e = pack.entries[1];
    assert_eq!((e.offset, e.raw_len), (30, tree.len() as u32));
    let index = &b[b.len() - 44 - 98..b.len() - 44];
    assert_eq!(index[0], 0);
    assert_eq!(&index[1..33], BlobId::of(b"cairn").as_bytes());
    assert_eq!(
        &index[33..49],
        &[24, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 5, 0, 0, 0]
    );
    assert_eq!(index[49], 1);
    assert_eq!(
        &b[b.len() - 40..b.len() - 8],
        blake3::hash(index).as_bytes()
    );
    // The exact bytes and id.
    assert_eq!(hex::encode(b), GOLDEN_HEX);
    assert_eq!(pack.id.to_hex(), GOLDEN_ID);
}

const GOLDEN_HEX: &str = concat!(
    "434149524e504b010000000000000000000000000000000000636169726e0128",
    "b52ffd20304d00001861626301006aba21000a35e41e05f8a79793f4436f3c77",
    "8283f6215c381a24071eb1ae871aba2c797b1800000000000000060000000500",
    "000001fcd0f6acbb70d3bb630bda9f233d6453ed2f1af82cc5f3852bbffd1692",
    "4479e31e00000000000000130000003000000002000000b42436303ee27c9804",
    "5b03b648ed24913dfc1c43e7de08454e148719f43bd172434149524e495801",
);
const GOLDEN_ID: &str = "709fee972d60818ca2bcc81641b6ec31ce51cd8be3788f61c958ffbdddcff0b8";

/// Reads a pack's index the way `Store` does: trailer first, then the tail it names.
fn read_index(bytes: &[u8]) -> Result<Vec<PackEntry>, StoreError> {
    let size = bytes.len() as u64;
    let t = bytes.len().saturating_sub(TRAILER_LEN as usize);
    let loc = parse_trailer(&bytes[t..], size)?;
    parse_index(&bytes[(size - loc.tail_len()) as usize..], size)
}

#[test]
fn every_truncation_and_index_flip_is_rejected() {
    let pack = build(&sample_blobs()[..4]);
    let b = &pack.bytes;
    assert!(read_index(b).is_ok());
    for n in 0..b.len() {
        assert!(read_index(&b[..n]).is_err(), "truncated to {n} bytes");
        // A caller handing parse_index too short a tail of the intact pack.
        let size = b.len() as u64;
        let tail = &b[b.len() - n..];
        if (n as u64) < ENTRY_LEN * 4 + TRAILER_LEN {
            assert!(parse_index(tail, size).is_err(), "tail of {n} bytes");
        }
    }
    let index_start = b.len() - (ENTRY_LEN * 4 + TRAILER_LEN) as usize;
    for i in index_start..b.len() {
        for bit in [0x01, 0x80] {
            let mut bad = b.clone();
            bad[i] ^= bit;
            assert!(read_index(&bad).is_err(), "flip {bit:#x} at {i}");
        }
    }
}

#[test]
fn index_that_does_not_tile_the_blobs_is_rejected() {
    // Rewrite the index with consistent hash but a wrong offset: only the tiling check
    // can catch it.
    let pack = build(&sample_blobs()[..3]);
    let mut b = pack.bytes.clone();
    let start = b.len() - (ENTRY_LEN * 3 + TRAILER_LEN) as usize;
    let off = start + ENTRY_LEN as usize + 33;
    b[off] ^= 1;
    let h = blake3::hash(&b[start..b.len() - TRAILER_LEN as usize]);
    let hpos = b.len() - 40;
    b[hpos..hpos + 32].copy_from_slice(h.as_bytes());
    let err = read_index(&b).unwrap_err().to_string();
    assert!(err.contains("expected to start"), "{err}");
}

#[test]
fn decode_rejects_malformed_blobs() {
    let z = encode_blob(&[7u8; 1000]);
    assert_eq!(z[0], CODEC_ZSTD);
    assert_eq!(decode_blob(&z, 1000).unwrap(), vec![7u8; 1000]);
    assert!(decode_blob(&z, 999).is_err(), "output longer than raw_len");
    assert!(
        decode_blob(&z, 1001).is_err(),
        "output shorter than raw_len"
    );
    assert!(
        decode_blob(&z[..z.len() - 1], 1000).is_err(),
        "truncated frame"
    );
    assert!(decode_blob(&[], 0).is_err(), "no tag");
    assert!(decode_blob(&[2, 1], 1).is_err(), "unknown tag");
    assert!(decode_blob(&[0, 1, 2], 3).is_err(), "raw length mismatch");
    assert_eq!(decode_blob(&[0], 0).unwrap(), b"");
    // Beyond the preallocation bound the streaming decoder answers, with the same checks.
    let big = vec![3u8; MAX_PREALLOC + 1000];
    let z = encode_blob(&big);
    let n = big.len() as u32;
    assert_eq!(decode_blob(&z, n).unwrap(), big);
    assert!(decode_blob(&z, n - 1).is_err(), "longer than raw_len");
    assert!(decode_blob(&z, n + 1).is_err(), "shorter than raw_len");
}

#[test]
fn pack_keys_round_trip_and_reject_others() {
    let id = PackId::of(b"p");
    let key = pack_key(&id);
    assert_eq!(
        key,
        format!("packs/{}/{}.pack", &id.to_hex()[..2], id.to_hex())
    );
    assert_eq!(parse_pack_key(&key), Some(id));
    let hex = id.to_hex();
    for bad in [
        format!("packs/zz/{hex}.pack"),
        format!("packs/{hex}.pack"),
        format!("packs/{}/{}.pack", &hex[..2], hex.to_uppercase()),
        format!("packs/{}/{hex}.pak", &hex[..2]),
        format!("packs/{}/{}.pack", &hex[..2], &hex[..63]),
        format!("other/{}/{hex}.pack", &hex[..2]),
    ] {
        assert_eq!(parse_pack_key(&bad), None, "{bad}");
    }
}

proptest! {
    #[test]
    fn encode_decode_round_trip(
        raw in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..4096),
            (0usize..20_000, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
        ]
    ) {
        let stored = encode_blob(&raw);
        prop_assert!(stored.len() <= raw.len() + 1);
        prop_assert_eq!(decode_blob(&stored, raw.len() as u32).unwrap(), raw);
    }

    #[test]
    fn decode_never_panics(stored in proptest::collection::vec(any::<u8>(), 0..256), raw_len in 0u32..100_000) {
        let _ = decode_blob(&stored, raw_len);
    }

    #[test]
    fn parse_index_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..300), extra in 0u64..1000) {
        let _ = parse_index(&tail, tail.len() as u64 + extra);
    }
}
