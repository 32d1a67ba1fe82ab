//! dosfs's metric families (the `metrics` facade: nothing is recorded unless the binary
//! installed an exporter, which `dosfs mount --metrics ADDR` does). Names are defined here
//! once; [`refresh`] sets what is read off the core before a scrape.

use crate::core::FsCore;

/// FUSE operations served through the runtime, by `op`, with their time to the reply in
/// seconds (histogram; its `_count` is the number of operations).
pub const OP_DURATION: &str = "dos_fs_operation_duration_seconds";
/// Operations that replied with an error, by `op` (expected ones such as ENOENT too).
pub const OP_ERRORS: &str = "dos_fs_operation_errors_total";
/// Block cache lookups that found the block, that did not, and blocks evicted.
pub const CACHE_HITS: &str = "dos_fs_cache_hits_total";
pub const CACHE_MISSES: &str = "dos_fs_cache_misses_total";
pub const CACHE_EVICTIONS: &str = "dos_fs_cache_evictions_total";
/// Bytes the cache holds, by `tier` (`memory`, `disk`).
pub const CACHE_BYTES: &str = "dos_fs_cache_bytes";
/// Uploads of saved files in progress, and uploads that failed.
pub const UPLOADS_IN_FLIGHT: &str = "dos_fs_uploads_in_flight";
pub const UPLOADS_FAILED: &str = "dos_fs_uploads_failed_total";
/// Files the write-back journal holds that are not uploaded yet, and their bytes.
pub const WRITEBACK_PENDING: &str = "dos_fs_writeback_pending_files";
pub const WRITEBACK_PENDING_BYTES: &str = "dos_fs_writeback_pending_bytes";

/// Registers the families that move only on events, so a scrape shows them at once.
pub fn register() {
    metrics::counter!(UPLOADS_FAILED).increment(0);
    metrics::gauge!(UPLOADS_IN_FLIGHT).set(0.0);
}

/// Sets the families read off the core (the cache's own counters, the journal).
pub fn refresh(core: &FsCore) {
    let cache = core.cache.stats();
    metrics::counter!(CACHE_HITS).absolute(cache.hits);
    metrics::counter!(CACHE_MISSES).absolute(cache.misses);
    metrics::counter!(CACHE_EVICTIONS).absolute(cache.evictions);
    metrics::gauge!(CACHE_BYTES, "tier" => "memory").set(cache.memory_bytes as f64);
    metrics::gauge!(CACHE_BYTES, "tier" => "disk").set(cache.disk_bytes as f64);
    let pending = core
        .journal
        .as_ref()
        .map(|j| j.pending())
        .unwrap_or_default();
    metrics::gauge!(WRITEBACK_PENDING).set(pending.len() as f64);
    let bytes: u64 = pending.iter().map(|r| r.size).sum();
    metrics::gauge!(WRITEBACK_PENDING_BYTES).set(bytes as f64);
}

/// Counts one upload in flight while it lives, and a failure if told so.
pub(crate) struct Uploading;

impl Uploading {
    pub(crate) fn start() -> Self {
        metrics::gauge!(UPLOADS_IN_FLIGHT).increment(1.0);
        Self
    }

    pub(crate) fn finish<T, E>(self, result: Result<T, E>) -> Result<T, E> {
        if result.is_err() {
            metrics::counter!(UPLOADS_FAILED).increment(1);
        }
        result
    }
}

impl Drop for Uploading {
    fn drop(&mut self) {
        metrics::gauge!(UPLOADS_IN_FLIGHT).decrement(1.0);
    }
}
