//! One newtype per kind of content-addressed object.
//!
//! All ids are BLAKE3-256 digests. A `ChunkId` is the hash of a chunk's plaintext, a `TreeId`
//! the hash of a tree's canonical encoding, a `PackId` the hash of a whole pack file. A
//! `BlobId` names either a chunk or a tree when the store does not care which.

use super::ModelError;
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        /// Hashes the first 8 bytes only: a digest's bytes are uniform already, so hashing
        /// all 32 (and their length) buys a keyed hasher nothing but time. Equal ids still
        /// hash alike, and the hasher's key still keeps bucket choice out of anyone's hands.
        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                let head: [u8; 8] = self.0[..8].try_into().expect("an id has 32 bytes");
                state.write_u64(u64::from_ne_bytes(head));
            }
        }

        impl $name {
            /// Length of the id in bytes.
            pub const LEN: usize = 32;

            /// The id of `bytes`: their BLAKE3-256 digest.
            pub fn of(bytes: &[u8]) -> Self {
                Self(*blake3::hash(bytes).as_bytes())
            }
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// Parses an id from a 32-byte slice, as read from a catalog row or a pack index.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, ModelError> {
                let arr: [u8; 32] = bytes.try_into().map_err(|_| ModelError::BadId {
                    text: hex::encode(bytes),
                })?;
                Ok(Self(arr))
            }
            pub fn to_hex(self) -> String {
                hex::encode(self.0)
            }
            pub fn from_hex(text: &str) -> Result<Self, ModelError> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(text, &mut out).map_err(|_| ModelError::BadId {
                    text: text.to_owned(),
                })?;
                Ok(Self(out))
            }
            /// The first 12 hex digits, for human output only.
            pub fn short(self) -> String {
                hex::encode(&self.0[..6])
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(d)?;
                Self::from_hex(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// BLAKE3 of a chunk's plaintext.
    ChunkId
);
id_type!(
    /// BLAKE3 of a tree's canonical encoding.
    TreeId
);
id_type!(
    /// BLAKE3 of a whole pack file.
    PackId
);
id_type!(
    /// A chunk or a tree, as the store sees it: content-addressed bytes.
    BlobId
);

impl From<ChunkId> for BlobId {
    fn from(id: ChunkId) -> Self {
        BlobId(id.0)
    }
}

impl From<TreeId> for BlobId {
    fn from(id: TreeId) -> Self {
        BlobId(id.0)
    }
}

impl BlobId {
    /// Reinterprets a blob id as a chunk id, for a blob the caller knows to be a chunk.
    pub fn as_chunk(self) -> ChunkId {
        ChunkId(self.0)
    }
    /// Reinterprets a blob id as a tree id, for a blob the caller knows to be a tree.
    pub fn as_tree(self) -> TreeId {
        TreeId(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_known_digest() {
        let id = ChunkId::of(b"");
        assert_eq!(
            id.to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(ChunkId::from_hex(&id.to_hex()).unwrap(), id);
        assert!(ChunkId::from_hex("zz").is_err());
        assert_eq!(BlobId::from(id).as_chunk(), id);
    }
}
