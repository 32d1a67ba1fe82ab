//! `/metrics` of the API server and of a data server (an embedded cluster over loopback
//! HTTP), parsed with a Prometheus text-format parser: every family is there, and counters
//! move with the work that should move them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::sync::OnceLock;

use common::{attrs, data, run_job, shard_files};
use dos_client::ContentHash;
use dos_server::local::ShardPath;
use dos_worker::http::Metrics;
use prometheus_parse::{Sample, Scrape, Value};

/// The process's exporter (one per test binary).
fn metrics() -> Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| dos_server::metrics::install().expect("exporter installs"))
        .clone()
}

async fn scrape(addr: &str) -> Scrape {
    common::scrape_metrics(&format!("http://{addr}")).await
}

/// The sum of the samples of `family` whose labels include `with`.
fn total(s: &Scrape, family: &str, with: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == family && matches(x, with))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

fn matches(x: &Sample, with: &[(&str, &str)]) -> bool {
    with.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
}

/// The families of `want` that `s` has no sample of (a histogram's are `NAME_count` …).
fn missing_families<'a>(s: &Scrape, want: &[&'a str]) -> Vec<&'a str> {
    let have: HashSet<&str> = s.samples.iter().map(|x| x.metric.as_str()).collect();
    want.iter()
        .copied()
        .filter(|f| !have.contains(f) && !have.contains(format!("{f}_count").as_str()))
        .collect()
}

const API_FAMILIES: &[&str] = &[
    "dos_api_requests_total",
    "dos_api_request_duration_seconds",
    "dos_api_received_bytes_total",
    "dos_api_sent_bytes_total",
    "dos_api_degraded_reads_total",
    "dos_api_shards_rebuilt_total",
    "dos_api_repairs_total",
    "dos_api_repair_queue_depth",
    "dos_api_live_data_servers",
    "dos_maintenance_running",
    "dos_maintenance_items_total",
    "dos_maintenance_work_total",
    "dos_maintenance_work_finished",
    "dos_maintenance_runs_total",
    "dos_bus_reconnects_total",
    "dos_metadata_operation_duration_seconds",
];

const DATA_FAMILIES: &[&str] = &[
    "dos_data_requests_total",
    "dos_data_request_duration_seconds",
    "dos_data_received_bytes_total",
    "dos_data_sent_bytes_total",
    "dos_data_shards_written_total",
    "dos_data_shards_read_total",
    "dos_data_shards_verified_total",
    "dos_data_shards_quarantined_total",
    "dos_data_shards",
    "dos_data_disk_used_bytes",
    "dos_data_disk_free_bytes",
];

#[tokio::test(flavor = "multi_thread")]
async fn every_family_is_scraped_and_counters_follow_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let m = metrics();
    let (cluster, client) = common::with_shard_path(
        ShardPath::Http,
        common::start_with(&dir.path().join("c"), |c| c.metrics = Some(m)),
    )
    .await;
    let api = cluster.api_addr().to_string();
    let servers: Vec<_> = cluster.data_servers().into_iter().flatten().collect();
    let (first, first_id) = (servers[0].addr.clone(), servers[0].id.0.clone());

    // Work: a 3 MiB object written and read back.
    let bytes = data(3 << 20, 7);
    let hash = ContentHash::of(&bytes);
    client
        .put_bytes("m/a", bytes.clone(), &attrs())
        .await
        .unwrap();
    assert_eq!(client.get("m/a", None).await.unwrap(), bytes);

    let a = scrape(&api).await;
    let missing = missing_families(&a, API_FAMILIES);
    assert!(missing.is_empty(), "API families missing: {missing:?}");
    let d = scrape(&first).await;
    let missing = missing_families(&d, DATA_FAMILIES);
    assert!(
        missing.is_empty(),
        "data server families missing: {missing:?}"
    );

    // What the write and the read did shows.
    let put = [
        ("route", "/objects/*name"),
        ("method", "PUT"),
        ("status", "200"),
    ];
    assert_eq!(total(&a, "dos_api_requests_total", &put), 1.0);
    assert!(total(&a, "dos_api_received_bytes_total", &[]) >= bytes.len() as f64);
    assert!(total(&a, "dos_api_sent_bytes_total", &[]) >= bytes.len() as f64);
    assert_eq!(
        total(&a, "dos_api_live_data_servers", &[]),
        servers.len() as f64
    );
    assert!(
        total(
            &a,
            "dos_metadata_operation_duration_seconds_count",
            &[("engine", "sqlite")]
        ) >= 2.0
    );
    let me = [("server", first_id.as_str())];
    assert_eq!(total(&d, "dos_data_shards_written_total", &me), 1.0);
    assert_eq!(total(&d, "dos_data_shards", &me), 1.0);
    assert!(total(&d, "dos_data_disk_free_bytes", &me) > 0.0);
    assert!(total(&d, "dos_data_disk_used_bytes", &me) > 0.0);
    assert!(total(&d, "dos_data_requests_total", &me) >= 1.0);

    // A degraded read: a data shard's file is gone, parity stands in.
    let degraded = total(&a, "dos_api_degraded_reads_total", &[]);
    let (_, _, path) = shard_files(&cluster, &hash)
        .into_iter()
        .find(|(_, shard, _)| *shard == 0)
        .expect("shard 0 on disk");
    std::fs::remove_file(&path).unwrap();
    assert_eq!(client.get("m/a", None).await.unwrap(), bytes);
    let after = scrape(&api).await;
    assert_eq!(
        total(&after, "dos_api_degraded_reads_total", &[]),
        degraded + 1.0
    );

    // A scrub verifies every shard (the missing one is rebuilt, by the read's repair or by
    // the scrub). The data servers of one embedded cluster share the process's registry, so
    // the API server's scrape shows their counters too.
    let verified = total(&after, "dos_data_shards_verified_total", &[]);
    let report = run_job(&client, "scrub", None, None).await;
    let after_scrub = scrape(&api).await;
    let verified_now = total(&after_scrub, "dos_data_shards_verified_total", &[]);
    assert!(
        verified_now >= verified + 5.0,
        "{verified} -> {verified_now}: {report}"
    );
    assert_eq!(
        total(
            &after_scrub,
            "dos_maintenance_runs_total",
            &[("job", "scrub"), ("result", "ok")]
        ),
        1.0
    );
    assert!(total(&after_scrub, "dos_api_shards_rebuilt_total", &[]) >= 1.0);

    // A shard whose bytes changed on disk: the scrub's whole-shard check finds it, the data
    // server quarantines it, and the scrub rebuilds it.
    let quarantined = total(&after_scrub, "dos_data_shards_quarantined_total", &[]);
    let (_, _, path) = shard_files(&cluster, &hash)
        .into_iter()
        .find(|(_, shard, _)| *shard == 2)
        .expect("shard 2 on disk");
    let mut raw = std::fs::read(&path).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 0x5a;
    std::fs::write(&path, &raw).unwrap();
    let report = run_job(&client, "scrub", None, None).await;
    let after_flip = scrape(&api).await;
    assert_eq!(
        total(&after_flip, "dos_data_shards_quarantined_total", &[]),
        quarantined + 1.0,
        "{report}"
    );
    assert_eq!(client.get("m/a", None).await.unwrap(), bytes);
    cluster.shutdown().await;
}
