//! The data server's metric families (the `metrics` facade; the binary installs the
//! Prometheus exporter and `/metrics` renders them). Every family carries `server`, the
//! data server's id (an embedded cluster runs six in one process).

use metrics::Counter;

/// Requests by route, method and status.
pub const REQUESTS: &str = "dos_data_requests_total";
/// Time to the response head by route and method, in seconds.
pub const REQUEST_DURATION: &str = "dos_data_request_duration_seconds";
/// Body bytes received and sent.
pub const RECEIVED_BYTES: &str = "dos_data_received_bytes_total";
pub const SENT_BYTES: &str = "dos_data_sent_bytes_total";
/// Shards committed (a shard file, or an entry in a pack).
pub const SHARDS_WRITTEN: &str = "dos_data_shards_written_total";
/// Committed shards opened for reading.
pub const SHARDS_READ: &str = "dos_data_shards_read_total";
/// Shards read whole and found right by a verify request (scrub).
pub const SHARDS_VERIFIED: &str = "dos_data_shards_verified_total";
/// Shards that failed a check and were moved to `quarantine/`.
pub const SHARDS_QUARANTINED: &str = "dos_data_shards_quarantined_total";
/// Shards held (what locate answers).
pub const SHARDS: &str = "dos_data_shards";
/// The storage folder's file system: bytes used and free (for this process's user).
pub const DISK_USED: &str = "dos_data_disk_used_bytes";
pub const DISK_FREE: &str = "dos_data_disk_free_bytes";

/// The shard counters of one data server.
pub struct ShardCounters {
    pub written: Counter,
    pub read: Counter,
    pub verified: Counter,
    pub quarantined: Counter,
}

impl ShardCounters {
    /// The counters of server `id`, registered (at zero) so a scrape shows them at once.
    pub fn new(id: &str) -> Self {
        let counter = |name: &'static str| {
            let c = metrics::counter!(name, "server" => id.to_owned());
            c.increment(0);
            c
        };
        Self {
            written: counter(SHARDS_WRITTEN),
            read: counter(SHARDS_READ),
            verified: counter(SHARDS_VERIFIED),
            quarantined: counter(SHARDS_QUARANTINED),
        }
    }
}

/// The request families of server `id`'s listener.
pub fn requests(id: &str) -> dos_worker::http::RequestMetrics {
    dos_worker::http::RequestMetrics {
        requests: REQUESTS,
        duration: REQUEST_DURATION,
        received: RECEIVED_BYTES,
        sent: SENT_BYTES,
        labels: vec![("server", id.to_owned())],
    }
}

/// What the store holds and its file system has room for (call on a blocking thread:
/// statvfs); `None` when the file system cannot be asked.
pub fn stats(store: &crate::store::ShardStore) -> Option<dos_protocol::ServerStats> {
    match rustix::fs::statvfs(store.root()) {
        Ok(fs) => {
            let block = fs.f_frsize;
            Some(dos_protocol::ServerStats {
                shards: store.shard_count() as u64,
                disk_used_bytes: fs.f_blocks.saturating_sub(fs.f_bfree) * block,
                disk_free_bytes: fs.f_bavail * block,
            })
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the storage folder's free space");
            None
        }
    }
}

/// Sets the gauges read off the store and its file system (on a blocking thread: statvfs).
pub fn refresh(store: &crate::store::ShardStore, id: &str) {
    let server = id.to_owned();
    metrics::gauge!(SHARDS, "server" => server.clone()).set(store.shard_count() as f64);
    if let Some(s) = stats(store) {
        metrics::gauge!(DISK_USED, "server" => server.clone()).set(s.disk_used_bytes as f64);
        metrics::gauge!(DISK_FREE, "server" => server).set(s.disk_free_bytes as f64);
    }
}
