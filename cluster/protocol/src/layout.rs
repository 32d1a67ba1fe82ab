//! How an object is cut into erasure-coded shards. This is part of the on-disk format.
//!
//! The object is cut into blocks of [`BLOCK_SIZE`] bytes (the last one may be shorter). Each
//! block is split into [`DATA_SHARDS`] pieces of `ceil(len / 4)` bytes (zero-padded) and
//! [`PARITY_SHARDS`] parity pieces of the same length. Piece `i` of every block is appended to
//! shard `i`, so every shard holds [`shard_len`] bytes and byte `b` of the object lives in
//! block `b / BLOCK_SIZE`.

pub const DATA_SHARDS: usize = 4;
pub const PARITY_SHARDS: usize = 2;
pub const TOTAL_SHARDS: usize = DATA_SHARDS + PARITY_SHARDS;
/// Bytes of one shard per block; also the unit of checksums and compression on data servers.
pub const PIECE_SIZE: usize = 256 * 1024;
/// Object bytes per erasure-coding block.
pub const BLOCK_SIZE: usize = PIECE_SIZE * DATA_SHARDS;

/// Number of blocks of an object of `size` bytes.
pub fn block_count(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE as u64)
}

/// Length of each piece of block `block` of an object of `size` bytes.
pub fn piece_len(size: u64, block: u64) -> usize {
    let start = block * BLOCK_SIZE as u64;
    let len = size.saturating_sub(start).min(BLOCK_SIZE as u64) as usize;
    len.div_ceil(DATA_SHARDS)
}

/// Bytes in every shard of an object of `size` bytes.
pub fn shard_len(size: u64) -> u64 {
    let full = size / BLOCK_SIZE as u64;
    let rest = (size % BLOCK_SIZE as u64) as usize;
    full * PIECE_SIZE as u64 + rest.div_ceil(DATA_SHARDS) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(shard_len(0), 0);
        assert_eq!(shard_len(1), 1);
        assert_eq!(shard_len(5), 2);
        assert_eq!(shard_len(BLOCK_SIZE as u64), PIECE_SIZE as u64);
        assert_eq!(shard_len(BLOCK_SIZE as u64 + 1), PIECE_SIZE as u64 + 1);
        assert_eq!(block_count(0), 0);
        assert_eq!(block_count(BLOCK_SIZE as u64 + 1), 2);
        assert_eq!(piece_len(BLOCK_SIZE as u64 + 5, 1), 2);
        assert_eq!(piece_len(BLOCK_SIZE as u64 + 5, 0), PIECE_SIZE);
    }
}
