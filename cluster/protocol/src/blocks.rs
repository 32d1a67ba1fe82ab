//! Block hashes: the BLAKE3 hash of each block of an object's bytes (see
//! [`crate::BLOCK_SIZE`]), computed by the API server while it encodes the object and
//! recorded with its content. Every block a reader decodes is checked against them before a
//! byte of it is served, so a data server that serves wrong bytes (a lying or broken server
//! whose own checksums pass) causes a degraded read, never wrong bytes to a client. Content of
//! one block needs none: its content hash (SHA-256) is the hash of its only block.
//!
//! BLAKE3 rather than SHA-256 for the blocks: it is as hard to forge and about three times
//! cheaper here (several GB/s on one core), and every byte read is hashed once more.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::{BLOCK_SIZE, ContentHash, block_count};

/// The recorded BLAKE3 hash of every block of a content, in block order; empty when the
/// content has one block (its content hash serves) or was written before block hashes were
/// recorded.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct BlockHashes(Vec<ContentHash>);

/// What one block must hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// The content's own SHA-256 (content of one block).
    Sha256(ContentHash),
    /// The recorded BLAKE3 of the block.
    Blake3(ContentHash),
}

impl Expected {
    /// Whether the block given as consecutive segments has this hash.
    pub fn matches<B: AsRef<[u8]>>(&self, segments: &[B]) -> bool {
        match self {
            Expected::Sha256(want) => {
                use sha2::Digest as _;
                let mut h = sha2::Sha256::new();
                for s in segments {
                    h.update(s.as_ref());
                }
                ContentHash(h.finalize().into()) == *want
            }
            Expected::Blake3(want) => {
                let mut h = blake3::Hasher::new();
                for s in segments {
                    h.update(s.as_ref());
                }
                ContentHash(*h.finalize().as_bytes()) == *want
            }
        }
    }
}

/// The BLAKE3 hash of one block, as recorded.
pub fn block_hash(block: &[u8]) -> ContentHash {
    ContentHash(*blake3::hash(block).as_bytes())
}

impl BlockHashes {
    pub fn new(hashes: Vec<ContentHash>) -> Self {
        Self(hashes)
    }

    pub fn push(&mut self, hash: ContentHash) {
        self.0.push(hash);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What is worth recording for content of `size` bytes: nothing when it has one block.
    pub fn for_content(self, size: u64) -> Self {
        if block_count(size) <= 1 {
            Self::default()
        } else {
            self
        }
    }

    /// Whether these hashes can belong to content of `size` bytes (none, or one per block).
    pub fn fits(&self, size: u64) -> bool {
        self.0.is_empty() || self.0.len() as u64 == block_count(size)
    }

    /// The hash block `block` of content `hash` (of `size` bytes) must have, or `None` when
    /// nothing is recorded for it (content stored before block hashes were kept).
    pub fn expected(&self, hash: &ContentHash, size: u64, block: u64) -> Option<Expected> {
        if size <= BLOCK_SIZE as u64 {
            return (block == 0).then_some(Expected::Sha256(*hash));
        }
        usize::try_from(block)
            .ok()
            .and_then(|b| self.0.get(b))
            .copied()
            .map(Expected::Blake3)
    }

    /// The hashes concatenated, 32 bytes each (how the metadata engines store them).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|h| h.0).collect()
    }

    /// The inverse of [`to_bytes`](Self::to_bytes); `None` unless the length is a multiple
    /// of 32.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if !bytes.len().is_multiple_of(32) {
            return None;
        }
        let hashes = bytes
            .chunks_exact(32)
            .map(|c| c.try_into().map(ContentHash))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        Some(Self(hashes))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.to_bytes())
    }

    pub fn from_base64(s: &str) -> Option<Self> {
        Self::from_bytes(&STANDARD.decode(s.trim()).ok()?)
    }
}

impl fmt::Debug for BlockHashes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockHashes({} blocks)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_hashes() {
        let h = ContentHash::of(b"object");
        let none = BlockHashes::default();
        let one = none.expected(&h, 6, 0).unwrap();
        assert_eq!(one, Expected::Sha256(h), "one block: the content hash");
        assert!(one.matches(&[&b"obj"[..], &b"ect"[..]]) && !one.matches(&[b"objecT"]));
        assert_eq!(none.expected(&h, 10, 1), None);
        assert_eq!(
            none.expected(&h, BLOCK_SIZE as u64 + 1, 0),
            None,
            "not recorded"
        );
        let blocks = BlockHashes::new(vec![block_hash(b"0"), block_hash(b"1")]);
        let size = BLOCK_SIZE as u64 + 1;
        assert!(blocks.fits(size) && !blocks.fits(10 * BLOCK_SIZE as u64));
        let second = blocks.expected(&h, size, 1).unwrap();
        assert!(second.matches(&[b"1"]) && !second.matches(&[b"0"]));
        assert_eq!(blocks.expected(&h, size, 2), None);
        assert!(blocks.clone().for_content(10).is_empty());
        assert_eq!(
            BlockHashes::from_bytes(&blocks.to_bytes()),
            Some(blocks.clone())
        );
        assert_eq!(BlockHashes::from_base64(&blocks.to_base64()), Some(blocks));
        assert_eq!(BlockHashes::from_bytes(&[0; 33]), None);
    }
}
