//! Block hashes: the SHA-256 of each block of an object's bytes (see [`crate::BLOCK_SIZE`]),
//! computed by the API server while it encodes the object and recorded with its content.
//! Every block a reader decodes is checked against them before a byte of it is served, so a
//! data server that serves wrong bytes (a lying or broken server whose own checksums pass)
//! causes a degraded read, never wrong bytes to a client. Content of one block needs none:
//! its content hash is the hash of its only block.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::{BLOCK_SIZE, ContentHash, block_count};

/// The recorded hash of every block of a content, in block order; empty when the content has
/// one block (its content hash serves) or was written before block hashes were recorded.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct BlockHashes(Vec<ContentHash>);

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
    pub fn expected(&self, hash: &ContentHash, size: u64, block: u64) -> Option<ContentHash> {
        if size <= BLOCK_SIZE as u64 {
            return (block == 0).then_some(*hash);
        }
        usize::try_from(block)
            .ok()
            .and_then(|b| self.0.get(b))
            .copied()
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
        assert_eq!(
            none.expected(&h, 10, 0),
            Some(h),
            "one block: the content hash"
        );
        assert_eq!(none.expected(&h, 10, 1), None);
        assert_eq!(
            none.expected(&h, BLOCK_SIZE as u64 + 1, 0),
            None,
            "not recorded"
        );
        let blocks = BlockHashes::new(vec![ContentHash::of(b"0"), ContentHash::of(b"1")]);
        let size = BLOCK_SIZE as u64 + 1;
        assert!(blocks.fits(size) && !blocks.fits(10 * BLOCK_SIZE as u64));
        assert_eq!(blocks.expected(&h, size, 1), Some(ContentHash::of(b"1")));
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
