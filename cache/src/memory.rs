//! The memory tier: block payloads in a byte-budgeted LRU behind one short-held mutex.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use crate::block_file::BlockId;
use crate::lru_index::SizedLru;

pub(crate) struct MemoryTier {
    blocks: Mutex<SizedLru<BlockId, Bytes>>,
    evictions: AtomicU64,
}

impl MemoryTier {
    pub(crate) fn new(budget: u64) -> Self {
        Self {
            blocks: Mutex::new(SizedLru::new(budget)),
            evictions: AtomicU64::new(0),
        }
    }

    pub(crate) fn get(&self, id: &BlockId) -> Option<Bytes> {
        self.lock().get(id).cloned()
    }

    /// Whether the block is held, without touching the LRU order.
    pub(crate) fn contains(&self, id: &BlockId) -> bool {
        self.lock().peek_size(id).is_some()
    }

    /// Inserts the block, evicting least recently used ones to stay within the budget. A block
    /// larger than the whole budget is simply not kept.
    pub(crate) fn insert(&self, id: BlockId, data: Bytes) {
        let size = data.len() as u64;
        let mut blocks = self.lock();
        if !blocks.fits(size) {
            return;
        }
        let evicted = blocks.insert(id, data, size);
        drop(blocks);
        self.evictions
            .fetch_add(evicted.len() as u64, Ordering::Relaxed);
    }

    /// (bytes, blocks) held.
    pub(crate) fn usage(&self) -> (u64, u64) {
        let blocks = self.lock();
        (blocks.used(), blocks.len() as u64)
    }

    pub(crate) fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, SizedLru<BlockId, Bytes>> {
        // The index is consistent after every method of `SizedLru`, so a panic elsewhere while
        // the lock was held leaves nothing to repair.
        self.blocks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
