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

/// A block read back from pieces some of which were wrong: all six pieces as they must be,
/// and which of the pieces given were not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub pieces: Vec<Vec<u8>>,
    pub wrong: Vec<usize>,
}

impl Codec {
    /// Finds four of the pieces given whose block (its first `len` bytes) `is_right` accepts
    /// (the recorded hash of the block matches), trying every choice of four, and rebuilds the
    /// six pieces from them. `None` when no four pieces give the right block: fewer than four
    /// right pieces are at hand. At most 15 decodings; this runs only after a block was found
    /// wrong.
    pub fn recover_block(
        &self,
        pieces: &[Option<Vec<u8>>],
        len: usize,
        is_right: impl Fn(&[u8]) -> bool,
    ) -> Option<Recovered> {
        let at_hand: Vec<usize> = (0..pieces.len().min(TOTAL_SHARDS))
            .filter(|i| pieces[*i].is_some())
            .collect();
        let n = at_hand.len();
        if n < DATA_SHARDS {
            return None;
        }
        // Every subset of four of the pieces at hand, as a bit mask over `at_hand`.
        for mask in 0u32..(1 << n) {
            if mask.count_ones() as usize != DATA_SHARDS {
                continue;
            }
            let mut trial: Vec<Option<Vec<u8>>> = vec![None; TOTAL_SHARDS];
            for (bit, &i) in at_hand.iter().enumerate() {
                if mask & (1 << bit) != 0 {
                    trial[i] = pieces[i].clone();
                }
            }
            if self.reconstruct(&mut trial).is_err() {
                continue;
            }
            let mut block = Vec::with_capacity(len);
            join_data(&trial, len, &mut block);
            if !is_right(&block) {
                continue;
            }
            let rebuilt: Vec<Vec<u8>> = trial.into_iter().map(Option::unwrap_or_default).collect();
            let wrong = at_hand
                .iter()
                .copied()
                .filter(|&i| pieces[i].as_deref() != Some(&rebuilt[i][..]))
                .collect();
            return Some(Recovered {
                pieces: rebuilt,
                wrong,
            });
        }
        None
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

        /// Up to two wrong pieces among six (same length, any bytes) are found and the block
        /// comes back exact; with one piece missing, one wrong piece still is.
        #[test]
        fn wrong_pieces_are_found(data in proptest::collection::vec(any::<u8>(), 1..3000),
                                  a in 0usize..6, b in 0usize..6, missing in 0usize..7,
                                  junk in any::<u8>()) {
            let pieces = encode(&data);
            let mut given: Vec<Option<Vec<u8>>> = pieces.iter().cloned().map(Some).collect();
            let mut lied = vec![a];
            if missing == 6 && b != a {
                lied.push(b);
            }
            for &i in &lied {
                let p = given[i].as_mut().unwrap();
                p[0] ^= junk | 1;
            }
            if missing < 6 && !lied.contains(&missing) {
                given[missing] = None;
            }
            let right = |block: &[u8]| block == &data[..];
            let found = Codec::new().recover_block(&given, data.len(), right).unwrap();
            prop_assert_eq!(&found.pieces[..], &pieces[..]);
            lied.sort_unstable();
            prop_assert_eq!(found.wrong, lied);
        }
    }

    #[test]
    fn three_wrong_pieces_are_not_hidden() {
        let data = b"three liars cannot make the block right".to_vec();
        let mut given: Vec<Option<Vec<u8>>> = encode(&data).into_iter().map(Some).collect();
        for p in given.iter_mut().take(3).flatten() {
            p[0] ^= 0xff;
        }
        assert_eq!(
            Codec::new().recover_block(&given, data.len(), |b| b == &data[..]),
            None
        );
    }
}
