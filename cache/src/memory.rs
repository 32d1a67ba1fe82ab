//! The memory tier: block payloads in a byte-budgeted LRU behind one short-held mutex, each
//! with the time it was last used, so that a tier idle for a while can give its memory back
//! ([`MemoryTier::trim_idle`]; the blocks stay on disk).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::block_file::BlockId;
use crate::lru_index::SizedLru;

pub(crate) struct MemoryTier {
    blocks: Mutex<SizedLru<BlockId, (Bytes, Instant)>>,
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
        let mut blocks = self.lock();
        let (data, used) = blocks.get_mut(id)?;
        *used = Instant::now();
        Some(data.clone())
    }

    /// Drops the blocks not used for `max_idle` (least recently used first); returns how
    /// many bytes went.
    pub(crate) fn trim_idle(&self, max_idle: Duration) -> u64 {
        let mut blocks = self.lock();
        let mut freed = 0;
        while let Some((_, (_, used))) = blocks.peek_lru() {
            if used.elapsed() < max_idle {
                break;
            }
            match blocks.pop_lru() {
                Some((_, _, size)) => freed += size,
                None => break,
            }
        }
        freed
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
        let evicted = blocks.insert(id, (data, Instant::now()), size);
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

    fn lock(&self) -> MutexGuard<'_, SizedLru<BlockId, (Bytes, Instant)>> {
        // The index is consistent after every method of `SizedLru`, so a panic elsewhere while
        // the lock was held leaves nothing to repair.
        self.blocks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
