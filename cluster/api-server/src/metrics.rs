//! The API server's metric families (the `metrics` facade; the binary installs the
//! Prometheus exporter and `/metrics` renders them). Names are defined here once.

use crate::core::Core;

/// Requests by route, method and status.
pub const REQUESTS: &str = "dos_api_requests_total";
/// Time to the response head by route and method, in seconds.
pub const REQUEST_DURATION: &str = "dos_api_request_duration_seconds";
/// Body bytes received from and sent to clients.
pub const RECEIVED_BYTES: &str = "dos_api_received_bytes_total";
pub const SENT_BYTES: &str = "dos_api_sent_bytes_total";
/// Reads that used parity for a data shard (one failed, was corrupt or was outrun).
pub const DEGRADED_READS: &str = "dos_api_degraded_reads_total";
/// Shards rebuilt from the others and stored again (repair, scrub, drain).
pub const SHARDS_REBUILT: &str = "dos_api_shards_rebuilt_total";
/// Repairs done, by result: `rebuilt`, `healthy` (nothing to do), `failed`.
pub const REPAIRS: &str = "dos_api_repairs_total";
/// Hashes queued for repair or being repaired.
pub const REPAIR_QUEUE_DEPTH: &str = "dos_api_repair_queue_depth";
/// Data servers this API server hears heartbeats from.
pub const LIVE_DATA_SERVERS: &str = "dos_api_live_data_servers";
/// Whether a maintenance job runs here now (1) or not (0), by job.
pub const MAINTENANCE_RUNNING: &str = "dos_maintenance_running";
/// What runs of a job have counted (objects checked, shards verified …), by job and count.
pub const MAINTENANCE_ITEMS: &str = "dos_maintenance_items_total";
/// Work units planned and finished by the current or last run (drain, rebalance).
pub const MAINTENANCE_WORK_TOTAL: &str = "dos_maintenance_work_total";
pub const MAINTENANCE_WORK_FINISHED: &str = "dos_maintenance_work_finished";
/// Runs finished, by job and result (`ok`, `errors`, `stopped`).
pub const MAINTENANCE_RUNS: &str = "dos_maintenance_runs_total";
/// Whether the last finished run of a job had no errors (1) or not (0).
pub const MAINTENANCE_LAST_SUCCESS: &str = "dos_maintenance_last_run_success";
/// When the last run of a job finished, in seconds since the Unix epoch.
pub const MAINTENANCE_LAST_FINISHED: &str = "dos_maintenance_last_run_timestamp_seconds";

/// The jobs every API server can run, so their families exist before a first run.
const JOBS: [&str; 5] = ["scrub", "retention", "orphans", "drain", "rebalance"];

/// Registers every family at zero, so a scrape shows them all before anything happened.
pub fn register() {
    metrics::counter!(DEGRADED_READS).increment(0);
    metrics::counter!(dos_bus::RECONNECTS_METRIC).increment(0);
    metrics::counter!(SHARDS_REBUILT).increment(0);
    for result in ["rebuilt", "healthy", "failed"] {
        metrics::counter!(REPAIRS, "result" => result).increment(0);
    }
    metrics::counter!(RECEIVED_BYTES).increment(0);
    metrics::counter!(SENT_BYTES).increment(0);
    for job in JOBS {
        metrics::gauge!(MAINTENANCE_RUNNING, "job" => job).set(0.0);
        metrics::gauge!(MAINTENANCE_WORK_TOTAL, "job" => job).set(0.0);
        metrics::gauge!(MAINTENANCE_WORK_FINISHED, "job" => job).set(0.0);
        metrics::counter!(MAINTENANCE_RUNS, "job" => job, "result" => "ok").increment(0);
        metrics::counter!(MAINTENANCE_ITEMS, "job" => job, "count" => "errors").increment(0);
    }
}

/// Sets the gauges that are read off the server's state (called before each scrape).
pub fn refresh(core: &Core) {
    metrics::gauge!(REPAIR_QUEUE_DEPTH).set(core.repairs.pending() as f64);
    metrics::gauge!(LIVE_DATA_SERVERS).set(core.bus.live_servers().len() as f64);
}

/// The request families of the REST listener.
pub fn requests() -> dos_worker::http::RequestMetrics {
    dos_worker::http::RequestMetrics {
        requests: REQUESTS,
        duration: REQUEST_DURATION,
        received: RECEIVED_BYTES,
        sent: SENT_BYTES,
        labels: Vec::new(),
    }
}
