//! A block's bytes as one or more pieces.
//!
//! A block streamed from the network arrives in the pieces the socket reads produced (a few
//! hundred KiB each). Keeping those pieces, instead of copying them into one buffer, saves a
//! copy of every byte read: the disk tier writes the pieces one after the other, and a reader
//! slicing a range out of one piece gets it without a copy.

use bytes::{Bytes, BytesMut};

/// The bytes of one block, in order, as shared pieces (cheap to clone).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockBytes {
    parts: Vec<Bytes>,
    len: usize,
}

impl BlockBytes {
    /// An empty block, to be filled with [`Self::push`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a piece (empty pieces are dropped).
    pub fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.len += part.len();
            self.parts.push(part);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces, in order.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// Bytes `[from, to)` (clamped to the block): without a copy when they lie in one piece.
    pub fn slice(&self, from: usize, to: usize) -> Bytes {
        let to = to.min(self.len);
        if from >= to {
            return Bytes::new();
        }
        let mut start = 0;
        let mut out: Option<BytesMut> = None;
        for part in &self.parts {
            let end = start + part.len();
            if end > from && start < to {
                let (a, b) = (from.max(start) - start, to.min(end) - start);
                match &mut out {
                    None if to <= end => return part.slice(a..b),
                    None => {
                        let mut buf = BytesMut::with_capacity(to - from);
                        buf.extend_from_slice(&part[a..b]);
                        out = Some(buf);
                    }
                    Some(buf) => buf.extend_from_slice(&part[a..b]),
                }
            }
            if end >= to {
                break;
            }
            start = end;
        }
        out.map(BytesMut::freeze).unwrap_or_default()
    }

    /// All the bytes in one buffer: the piece itself when there is one, else a copy.
    pub fn to_contiguous(&self) -> Bytes {
        match self.parts.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            _ => self.slice(0, self.len),
        }
    }
}

impl From<Bytes> for BlockBytes {
    fn from(part: Bytes) -> Self {
        let mut block = Self::new();
        block.push(part);
        block
    }
}

impl From<Vec<u8>> for BlockBytes {
    fn from(data: Vec<u8>) -> Self {
        Bytes::from(data).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pieces(data: &[u8], cuts: &[usize]) -> BlockBytes {
        let mut block = BlockBytes::new();
        let mut at = 0;
        for &cut in cuts {
            let cut = cut.min(data.len()).max(at);
            block.push(Bytes::copy_from_slice(&data[at..cut]));
            at = cut;
        }
        block.push(Bytes::copy_from_slice(&data[at..]));
        block
    }

    #[test]
    fn a_slice_inside_one_piece_shares_its_memory() {
        let block = pieces(b"abcdefghij", &[4]);
        let part = &block.parts()[1];
        let slice = block.slice(5, 8);
        assert_eq!(&slice[..], b"fgh");
        assert_eq!(slice.as_ptr(), part[1..].as_ptr());
    }

    proptest! {
        #[test]
        fn slices_match_the_contiguous_bytes(
            data in proptest::collection::vec(any::<u8>(), 0..200),
            mut cuts in proptest::collection::vec(0usize..200, 0..6),
            from in 0usize..220,
            len in 0usize..220,
        ) {
            cuts.sort_unstable();
            let block = pieces(&data, &cuts);
            prop_assert_eq!(block.len(), data.len());
            prop_assert_eq!(&block.to_contiguous()[..], &data[..]);
            let to = (from + len).min(data.len());
            let expected = if from < to { &data[from..to] } else { &[][..] };
            prop_assert_eq!(&block.slice(from, from + len)[..], expected);
        }
    }
}
