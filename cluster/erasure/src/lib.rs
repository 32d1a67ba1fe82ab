//! Reed-Solomon 4+2 over the blocks of an object (the layout is `dos_protocol::layout`; the
//! API server checks at compile time that both crates agree on the shard counts).
//!
//! Pure and synchronous: callers on an async runtime run it on a blocking thread. The codec is
//! `reed-solomon-erasure` with its `simd-accel` feature (Klaus Post's construction over GF(2^8)).

/// Pieces of a block that carry its bytes.
pub const DATA_SHARDS: usize = 4;
/// Pieces computed from the data pieces; any two of the six may be lost.
pub const PARITY_SHARDS: usize = 2;
pub const TOTAL_SHARDS: usize = DATA_SHARDS + PARITY_SHARDS;
use reed_solomon_erasure::galois_8::ReedSolomon;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ErasureError {
    #[error("only {available} of the {DATA_SHARDS} shards needed to decode are available")]
    TooFewShards { available: usize },
    #[error("shard pieces have different lengths")]
    LengthMismatch,
}

/// The 4+2 codec. Cheap to clone; share one per process.
#[derive(Clone, Debug)]
pub struct Codec {
    rs: ReedSolomon,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl Codec {
    pub fn new() -> Self {
        #[allow(clippy::expect_used)]
        let rs = ReedSolomon::new(DATA_SHARDS, PARITY_SHARDS)
            .expect("4+2 is a valid Reed-Solomon configuration");
        Self { rs }
    }

    /// Splits one block (at most `BLOCK_SIZE` bytes, never empty) into six pieces of
    /// `ceil(len / 4)` bytes: four zero-padded data pieces, then two parity pieces. `pieces`
    /// is reused between calls to avoid allocation.
    pub fn encode_block(&self, block: &[u8], pieces: &mut [Vec<u8>; TOTAL_SHARDS]) {
        let piece = block.len().div_ceil(DATA_SHARDS);
        for (i, p) in pieces.iter_mut().enumerate() {
            p.clear();
            if i < DATA_SHARDS {
                let start = (i * piece).min(block.len());
                let end = ((i + 1) * piece).min(block.len());
                p.extend_from_slice(&block[start..end]);
            }
            p.resize(piece, 0);
        }
        if piece > 0 {
            #[allow(clippy::expect_used)]
            self.rs
                .encode(&mut pieces[..])
                .expect("pieces have equal, non-zero length");
        }
    }

    /// Fills in every `None` piece (data and parity) from any four present ones.
    pub fn reconstruct(&self, pieces: &mut [Option<Vec<u8>>]) -> Result<(), ErasureError> {
        self.check(pieces)?;
        self.rs
            .reconstruct(pieces)
            .map_err(|_| ErasureError::LengthMismatch)
    }

    /// Fills in only the missing data pieces (cheaper when parity is not needed).
    pub fn reconstruct_data(&self, pieces: &mut [Option<Vec<u8>>]) -> Result<(), ErasureError> {
        self.check(pieces)?;
        self.rs
            .reconstruct_data(pieces)
            .map_err(|_| ErasureError::LengthMismatch)
    }

    fn check(&self, pieces: &[Option<Vec<u8>>]) -> Result<(), ErasureError> {
        if pieces.len() != TOTAL_SHARDS {
            return Err(ErasureError::LengthMismatch);
        }
        let available = pieces.iter().filter(|p| p.is_some()).count();
        if available < DATA_SHARDS {
            return Err(ErasureError::TooFewShards { available });
        }
        let mut lens = pieces.iter().flatten().map(Vec::len);
        let first = lens.next().unwrap_or(0);
        if lens.any(|l| l != first) {
            return Err(ErasureError::LengthMismatch);
        }
        Ok(())
    }
}

/// Writes the object bytes of a block from its four data pieces, trimmed to `len`.
pub fn join_data(pieces: &[Option<Vec<u8>>], len: usize, out: &mut Vec<u8>) {
    let mut remaining = len;
    for p in pieces.iter().take(DATA_SHARDS).flatten() {
        let take = p.len().min(remaining);
        out.extend_from_slice(&p[..take]);
        remaining -= take;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(data: &[u8]) -> [Vec<u8>; TOTAL_SHARDS] {
        let mut pieces: [Vec<u8>; TOTAL_SHARDS] = Default::default();
        Codec::new().encode_block(data, &mut pieces);
        pieces
    }

    #[test]
    fn three_missing_fails() {
        let pieces = encode(b"hello world");
        let mut opt: Vec<_> = pieces.into_iter().map(Some).collect();
        opt[0] = None;
        opt[2] = None;
        opt[5] = None;
        assert_eq!(
            Codec::new().reconstruct(&mut opt),
            Err(ErasureError::TooFewShards { available: 3 })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any two lost pieces are rebuilt byte-exact, and the data reassembles exactly.
        #[test]
        fn any_two_lost(data in proptest::collection::vec(any::<u8>(), 1..5000),
                        a in 0usize..6, b in 0usize..6) {
            let pieces = encode(&data);
            prop_assert!(pieces.iter().all(|p| p.len() == data.len().div_ceil(4)));
            let mut opt: Vec<_> = pieces.iter().cloned().map(Some).collect();
            opt[a] = None;
            opt[b] = None;
            Codec::new().reconstruct(&mut opt).unwrap();
            for (i, p) in opt.iter().enumerate() {
                prop_assert_eq!(p.as_ref().unwrap(), &pieces[i]);
            }
            let mut out = Vec::new();
            join_data(&opt, data.len(), &mut out);
            prop_assert_eq!(out, data);
        }
    }
}
