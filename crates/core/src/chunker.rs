//! Content-defined chunking: FastCDC 2020 with pinned parameters.
//!
//! **Invariant:** the parameters below and the cut-points they give never change for a given
//! input, or dedup against existing stores silently breaks. The golden test pins them.
//! The chunker reads only through `Read` or from a slice; it never opens files.

use fastcdc::v2020::{FastCDC, Normalization, StreamCDC};
use std::io::Read;
use std::ops::Range;

/// Smallest chunk, except a file's last one.
pub const MIN_CHUNK: usize = 16 * 1024;
/// Target average chunk size.
pub const AVG_CHUNK: usize = 64 * 1024;
/// Largest chunk.
pub const MAX_CHUNK: usize = 256 * 1024;
const LEVEL: Normalization = Normalization::Level1;

/// Cut points of an in-memory buffer, as ranges covering it exactly and in order.
pub fn chunk_slice(data: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
    let empty = data.is_empty();
    FastCDC::with_level(data, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK, LEVEL)
        .filter(move |_| !empty)
        .map(|c| c.offset..c.offset + c.length)
}

/// Chunks of a stream, each returned as owned bytes. The cut points equal those of
/// `chunk_slice` over the same bytes.
pub fn chunk_stream<R: Read>(reader: R) -> impl Iterator<Item = std::io::Result<Vec<u8>>> {
    StreamCDC::with_level(reader, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK, LEVEL).map(|r| {
        r.map(|c| c.data).map_err(|e| match e {
            fastcdc::v2020::Error::IoError(io) => io,
            other => std::io::Error::other(other.to_string()),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift64*), so the golden input needs no fixture file.
    fn golden_input(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..len)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn golden_cut_points_never_change() {
        let data = golden_input(1 << 20);
        let lens: Vec<usize> = chunk_slice(&data).map(|r| r.len()).collect();
        assert_eq!(lens, GOLDEN);
    }

    const GOLDEN: [usize; 14] = [
        92783, 30828, 85001, 143402, 32738, 105704, 91723, 62302, 82529, 93835, 65974, 81609,
        70489, 9659,
    ];

    #[test]
    fn stream_matches_slice_and_covers_input() {
        let data = golden_input(700_000);
        let slices: Vec<&[u8]> = chunk_slice(&data).map(|r| &data[r]).collect();
        let streamed: Vec<Vec<u8>> = chunk_stream(&data[..]).collect::<Result<_, _>>().unwrap();
        assert_eq!(slices.len(), streamed.len());
        for (a, b) in slices.iter().zip(&streamed) {
            assert_eq!(*a, b.as_slice());
        }
        assert_eq!(streamed.concat(), data);
        assert!(chunk_slice(&[]).next().is_none());
    }

    #[test]
    fn an_edit_moves_only_nearby_cut_points() {
        let data = golden_input(1 << 20);
        let mut edited = data.clone();
        edited.splice(500_000..500_000, *b"inserted bytes");
        let ids = |d: &[u8]| -> std::collections::HashSet<Vec<u8>> {
            chunk_slice(d).map(|r| d[r].to_vec()).collect()
        };
        let (a, b) = (ids(&data), ids(&edited));
        let shared = a.intersection(&b).count();
        assert!(
            shared + 3 >= a.len(),
            "only chunks near the edit change: {shared}/{}",
            a.len()
        );
    }
}
