//! `.dosfs/stats`: a read-only file that describes the daemon as it stands when it is opened
//! (JSON): the operations it served (counters since the mount), its memory by use, the cache,
//! the read budget and its tables. `dosfs stats
//! MOUNTPOINT` prints it.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::{Attr, FsCore, Kind, NodeKey};

pub const STATS_FILE: &str = "stats";

pub fn attr(core: &FsCore) -> Attr {
    // Its length is only known when it is read (opened with direct I/O).
    let ino = core.ino_of(NodeKey::Stats);
    Attr::read_only(ino, Kind::File, 0, 0o444, dos_protocol::now_ns())
}

/// The kinds of operations counted by name; any other kind counts as `other`.
const OP_KINDS: &[&str] = &[
    "lookup",
    "getattr",
    "setattr",
    "readlink",
    "mkdir",
    "mknod",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "open",
    "read",
    "write",
    "flush",
    "release",
    "fsync",
    "opendir",
    "readdir",
    "getxattr",
    "listxattr",
    "create",
    "other",
];

/// Operations the adapter served, by kind, and the bytes read and written through them
/// (`.dosfs/stats` section `operations`; `dosfs stats` turns them into rates).
pub struct OpCounters {
    counts: [AtomicU64; OP_KINDS.len()],
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
}

impl Default for OpCounters {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            read_bytes: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
        }
    }
}

impl OpCounters {
    /// Counts one operation of `kind`.
    pub fn count(&self, kind: &str) {
        let i = OP_KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(OP_KINDS.len() - 1);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(&self, bytes: usize) {
        self.read_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn written(&self, bytes: usize) {
        self.written_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn report(&self) -> serde_json::Value {
        let mut by_kind = serde_json::Map::new();
        let mut total = 0;
        for (kind, n) in OP_KINDS.iter().zip(&self.counts) {
            let n = n.load(Ordering::Relaxed);
            total += n;
            by_kind.insert((*kind).to_string(), n.into());
        }
        serde_json::json!({
            "total": total,
            "by_kind": by_kind,
            "read_bytes": self.read_bytes.load(Ordering::Relaxed),
            "written_bytes": self.written_bytes.load(Ordering::Relaxed),
        })
    }
}

/// A field of `/proc/self/status` in bytes (`VmRSS:  1234 kB`).
fn proc_status(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// The report, as it stands now.
pub fn report(core: &FsCore) -> Bytes {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cache = core.cache.stats();
    let block = core.cache.block_size() as u64;
    let (held, held_max) = core.reads.held();
    let (streams, streams_max) = core.reads.streams();
    // The allocator's own view (jemalloc, dosfs's allocator): bytes the program holds, and
    // pages it has from the kernel (the difference is freed memory not yet given back).
    let _ = tikv_jemalloc_ctl::epoch::advance();
    let allocated = tikv_jemalloc_ctl::stats::allocated::read().ok();
    let resident = tikv_jemalloc_ctl::stats::resident::read().ok();
    let pending = core
        .journal
        .as_ref()
        .map(|j| j.pending())
        .unwrap_or_default();
    let now = dos_protocol::now_ns();
    let writeback = serde_json::json!({
        "enabled": core.journal.is_some(),
        "pending": pending.len(),
        "pending_bytes": pending.iter().map(|r| r.size).sum::<u64>(),
        "files": pending
            .iter()
            .take(1000)
            .map(|r| serde_json::json!({
                "path": r.path,
                "size": r.size,
                "age_secs": (now - r.journaled_ns).max(0) / 1_000_000_000,
            }))
            .collect::<Vec<_>>(),
    });
    let st = &core.stream_stats;
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    let streamed = serde_json::json!({
        "enabled": core.config.stream_after.is_some() && core.journal.is_none(),
        "after_bytes": core.config.stream_after,
        "active": super::STREAMS_AT_ONCE - core.streams.available_permits(),
        "started": st.started.load(relaxed),
        "finished": st.finished.load(relaxed),
        "cancelled": st.cancelled.load(relaxed),
        "bytes": st.bytes.load(relaxed),
    });
    let value = serde_json::json!({
        "operations": core.ops.report(),
        "writeback": writeback,
        "streamed_uploads": streamed,
        "store": {
            "token_file": core.config.token_file.as_ref().map(|p| p.display().to_string()),
            "tls_ca": core.config.tls_ca.as_ref().map(|p| p.display().to_string()),
            "listings": core.listings(),
        },
        "process": {
            "pid": std::process::id(),
            "rss_bytes": proc_status(&status, "VmRSS"),
            "anonymous_bytes": proc_status(&status, "RssAnon"),
            "peak_rss_bytes": proc_status(&status, "VmHWM"),
            "allocated_bytes": allocated,
            "allocator_resident_bytes": resident,
        },
        "cache": {
            "memory_bytes": cache.memory_bytes,
            "memory_budget_bytes": core.cache.memory_budget(),
            "memory_blocks": cache.memory_blocks,
            "disk_bytes": cache.disk_bytes,
            "disk_blocks": cache.disk_blocks,
            "hits": cache.hits,
            "misses": cache.misses,
            "evictions": cache.evictions,
            "corruptions": cache.corruptions,
        },
        "reads": {
            "blocks_held_bytes": held as u64 * block,
            "blocks_held_budget_bytes": held_max as u64 * block,
            "streams": streams,
            "streams_max": streams_max,
        },
        "tables": {
            "inodes": core.inode_count(),
            "inode_cap": crate::fuse::INODE_CAP,
            "cached_entries": core.entry_count(),
            "open_handles": core.handle_count(),
            "staged_files": core.staged_count(),
        },
    });
    let mut out = serde_json::to_vec_pretty(&value).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}
