//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Errors of the block cache. Disk trouble while caching is not among them: a block that cannot
/// be written or read is simply not cached (and logged), so only opening the cache, invalid
/// arguments and the caller-owned staging files can fail.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("invalid cache configuration: {0}")]
    InvalidConfig(&'static str),
    #[error("block of {len} bytes is larger than the block size {block_size}")]
    BlockTooLarge { len: usize, block_size: usize },
    #[error("I/O error on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
