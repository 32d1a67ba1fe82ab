//! The local read cache of dosfs: fixed-size blocks of immutable objects, in memory and on disk.
//!
//! A block is addressed by the object's SHA-256 content hash ([`ContentKey`]) and its index;
//! block `i` holds bytes `[i * block_size, (i + 1) * block_size)` of the object (the last one may
//! be shorter). Content never changes under a hash, so a cached block can never be stale and
//! there is nothing to invalidate.
//!
//! [`BlockCache`] has two tiers, each a byte-budgeted LRU (`lru_index`): memory holds payloads
//! (`memory`); disk holds one file per block with a header carrying key, index, length and a
//! crc32c of the payload, all checked on every read (`block_file`, `disk`). `get` looks in
//! memory, then on disk (a disk hit is copied into memory); `put` fills both. A disk block
//! failing validation is deleted and reported as a miss, so wrong bytes are never returned.
//! Disk trouble never surfaces as an error: the block just stays memory-only (and is logged).
//! The disk tier survives restarts: `open` re-indexes the block files by mtime (reads bump
//! it), removes debris and enforces the budget. Below a free-space floor on the cache's
//! filesystem nothing is written to disk and disk blocks are evicted to give space back.
//!
//! Whole objects: blocks put with [`BlockCache::put_shared`] and the object's size go into
//! one content file per object (`objects/`, see `object_file`) instead of one file per block,
//! when the object has at least two blocks and needs at most a quarter of the disk budget. It is
//! one LRU entry sized for the whole object; its blocks are read and checked like block files;
//! once complete, [`BlockCache::object_file`] hands it out whole (every block checked first),
//! which dosfs uses as the backing file of a FUSE passthrough open.
//!
//! Files being written through dosfs are staged apart ([`StagingArea`]), outside the LRU, so
//! they are never counted or evicted.
//!
//! The API is synchronous and thread-safe (std mutexes, held only for index updates, never
//! across a block's read or write); async callers use it from blocking threads.
//!
//! ```
//! use dos_cache::{BlockCache, CacheConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let cache = BlockCache::open(CacheConfig {
//!     block_size: 4,
//!     min_free_disk_bytes: 0,
//!     ..CacheConfig::new(dir.path())
//! })?;
//! let key = [7u8; 32];
//! cache.put(&key, 0, b"abcd")?;
//! cache.put(&key, 1, b"ef")?;
//! assert_eq!(cache.get(&key, 1).as_deref(), Some(&b"ef"[..]));
//! assert!(cache.contains_all(&key, 6));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod block_bytes;
mod block_file;
mod disk;
mod error;
mod lru_index;
mod memory;
mod object_file;
mod staging;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use bytes::Bytes;

pub use crate::block_bytes::BlockBytes;
use crate::block_file::BlockId;
use crate::disk::{DiskTier, ObjectPut};
pub use crate::error::CacheError;
use crate::memory::MemoryTier;
pub use crate::staging::{StagingArea, StagingFile};

/// SHA-256 of an object's content.
pub type ContentKey = [u8; 32];

/// Default block size: 1 MiB.
pub const DEFAULT_BLOCK_SIZE: usize = 1 << 20;
/// Default memory budget: 256 MiB.
pub const DEFAULT_MEMORY_BYTES: u64 = 256 << 20;
/// Default disk budget: 8 GiB.
pub const DEFAULT_DISK_BYTES: u64 = 8 << 30;
/// Default free-space floor: 1 GiB.
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 1 << 30;

/// Where the cache lives and how much it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Cache directory; blocks go to `dir/blocks/`. [`StagingArea::new`] uses `dir/staging/`.
    pub dir: PathBuf,
    /// Budget for block payloads held in memory.
    pub memory_bytes: u64,
    /// Budget for block files on disk, headers included.
    pub disk_bytes: u64,
    /// Size of every block but an object's last. Blocks written with another block size are
    /// discarded when the cache is opened.
    pub block_size: usize,
    /// Nothing is written to disk while the filesystem holding `dir` has less than this free;
    /// cached blocks are evicted instead to give the space back. 0 disables the check.
    pub min_free_disk_bytes: u64,
}

impl CacheConfig {
    /// A configuration for `dir` with the default budgets and block size.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            memory_bytes: DEFAULT_MEMORY_BYTES,
            disk_bytes: DEFAULT_DISK_BYTES,
            block_size: DEFAULT_BLOCK_SIZE,
            min_free_disk_bytes: DEFAULT_MIN_FREE_DISK_BYTES,
        }
    }
}

/// A snapshot of the cache's counters and usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// `get` calls served from memory or disk.
    pub hits: u64,
    /// `get` calls that found nothing (including corrupt blocks).
    pub misses: u64,
    /// Payload bytes in memory.
    pub memory_bytes: u64,
    /// Bytes of block files on disk, headers included.
    pub disk_bytes: u64,
    pub memory_blocks: u64,
    pub disk_blocks: u64,
    /// Blocks dropped from memory or disk to respect a budget or the free-space floor.
    pub evictions: u64,
    /// Disk blocks that failed validation on read and were deleted.
    pub corruptions: u64,
}

/// The block cache. Cheap to clone; clones share the same cache.
#[derive(Clone)]
pub struct BlockCache {
    inner: Arc<Inner>,
}

struct Inner {
    config: CacheConfig,
    memory: MemoryTier,
    disk: DiskTier,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl BlockCache {
    /// Opens (creating if needed) the cache in `config.dir`, re-indexing the blocks a previous
    /// run left on disk. Stray or invalid files are removed and logged, never an error; only an
    /// unusable directory or an invalid configuration is.
    pub fn open(config: CacheConfig) -> Result<Self, CacheError> {
        if config.block_size == 0 {
            return Err(CacheError::InvalidConfig("block size must not be zero"));
        }
        let disk = DiskTier::open(
            config.dir.join("blocks"),
            config.dir.join("objects"),
            config.block_size as u64,
            config.disk_bytes,
            config.min_free_disk_bytes,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                memory: MemoryTier::new(config.memory_bytes),
                disk,
                config,
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
            }),
        })
    }

    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    pub fn block_size(&self) -> usize {
        self.inner.config.block_size
    }

    /// The memory tier's budget in bytes.
    pub fn memory_budget(&self) -> u64 {
        self.inner.config.memory_bytes
    }

    /// Returns block `block` of the object `key`, from memory or else from disk, or `None` if it
    /// is not cached (or its disk copy failed validation).
    pub fn get(&self, key: &ContentKey, block: u64) -> Option<Bytes> {
        let inner = &*self.inner;
        let id = BlockId { key: *key, block };
        let found = if let Some(data) = inner.memory.get(&id) {
            inner.disk.promote(&id);
            Some(data)
        } else if let Some(data) = inner.disk.get(&id) {
            inner.memory.insert(id, data.clone());
            Some(data)
        } else {
            None
        };
        let counter = if found.is_some() {
            &inner.hits
        } else {
            &inner.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Caches block `block` of the object `key` in memory and on disk, evicting least recently
    /// used blocks as the budgets require. `data` must be the block's full content: exactly
    /// `block_size` bytes except for an object's last block.
    ///
    /// Fails only if `data` is larger than the block size. Failing to write to disk is logged
    /// and leaves the block in memory only.
    pub fn put(&self, key: &ContentKey, block: u64, data: &[u8]) -> Result<(), CacheError> {
        self.put_shared(key, block, Bytes::copy_from_slice(data).into(), None)
    }

    /// Like [`Self::put`], without copying: the memory tier keeps `data` itself (or, for a
    /// block in several pieces, one copy of it). With `object_size` (the whole object's
    /// size), the disk tier keeps the block in the object's single content file when the
    /// object fits, so that a fully cached object can be read as one file
    /// ([`Self::object_file`]), and then the memory tier does not keep it (the OS page cache
    /// holds what was just written); otherwise as a block file, and in memory.
    pub fn put_shared(
        &self,
        key: &ContentKey,
        block: u64,
        data: BlockBytes,
        object_size: Option<u64>,
    ) -> Result<(), CacheError> {
        let inner = &*self.inner;
        if data.len() > inner.config.block_size {
            return Err(CacheError::BlockTooLarge {
                len: data.len(),
                block_size: inner.config.block_size,
            });
        }
        let id = BlockId { key: *key, block };
        let placed = match object_size {
            Some(size) => inner.disk.put_in_object(id, size, &data),
            None => ObjectPut::Declined,
        };
        // A block just written to an object file sits in the OS page cache already (and a
        // complete file is read by the kernel directly): a second copy in memory would only
        // cost fresh pages for every block streamed through and push out smaller blocks.
        if matches!(placed, ObjectPut::Written) {
            return Ok(());
        }
        let data = data.to_contiguous();
        if matches!(placed, ObjectPut::Declined) {
            inner.disk.put(id, &data);
        }
        if data.len() as u64 <= inner.config.memory_bytes {
            inner.memory.insert(id, data);
        }
        Ok(())
    }

    /// The object `key` of `size` bytes as one read-only file holding exactly its content, if
    /// it is fully cached that way (see [`Self::put_shared`]). Every block of the file is
    /// checked against its checksum first; a file failing that is deleted and `None` returned.
    /// Meant for handing the file to the kernel (FUSE passthrough). Counts as a use.
    pub fn object_file(&self, key: &ContentKey, size: u64) -> Option<std::fs::File> {
        self.inner.disk.object_file(key, size)
    }

    /// Gives back the memory of blocks not used for `max_idle` (they stay on disk, where a
    /// read finds them again); returns the bytes freed. A mount calls it while idle, so a burst
    /// of reads does not keep its memory.
    pub fn trim_memory(&self, max_idle: std::time::Duration) -> u64 {
        self.inner.memory.trim_idle(max_idle)
    }

    /// Whether block `block` of the object `key` is cached, in memory or on disk, without
    /// reading it: a cheap test (a later `get` may still miss, if the block is evicted or fails
    /// its check meanwhile). Does not count as a use.
    pub fn contains(&self, key: &ContentKey, block: u64) -> bool {
        let id = BlockId { key: *key, block };
        self.inner.memory.contains(&id) || self.inner.disk.contains(&id)
    }

    /// Whether every block of the object `key`, `size_bytes` long, is cached on disk with the
    /// right length (true for an empty object). Does not count as a use.
    pub fn contains_all(&self, key: &ContentKey, size_bytes: u64) -> bool {
        self.inner.disk.contains_all(key, size_bytes)
    }

    pub fn stats(&self) -> CacheStats {
        let inner = &*self.inner;
        let (memory_bytes, memory_blocks) = inner.memory.usage();
        let (disk_bytes, disk_blocks) = inner.disk.usage();
        CacheStats {
            hits: inner.hits.load(Ordering::Relaxed),
            misses: inner.misses.load(Ordering::Relaxed),
            memory_bytes,
            disk_bytes,
            memory_blocks,
            disk_blocks,
            evictions: inner.memory.evictions() + inner.disk.evictions(),
            corruptions: inner.disk.corruptions(),
        }
    }
}

impl fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockCache")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish()
    }
}
