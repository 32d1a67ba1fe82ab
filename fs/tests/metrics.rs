//! `dosfs mount --metrics ADDR`: the mount's own `/metrics`, parsed with a Prometheus
//! text-format parser: FUSE operations by kind, the cache, uploads, the write-back queue,
//! and the embedded store's API server families; counters follow what the test does.
//!
//! Needs: /dev/fuse, fusermount3 (fuse3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};

use common::*;
use prometheus_parse::{Scrape, Value};

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn scrape(addr: SocketAddr) -> Scrape {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

/// The sum of `family`'s samples whose labels include `with` (a histogram: its count).
fn total(s: &Scrape, family: &str, with: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == family && with.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

const FAMILIES: &[&str] = &[
    "dos_fs_operation_duration_seconds",
    "dos_fs_cache_hits_total",
    "dos_fs_cache_misses_total",
    "dos_fs_cache_evictions_total",
    "dos_fs_cache_bytes",
    "dos_fs_uploads_in_flight",
    "dos_fs_uploads_failed_total",
    "dos_fs_writeback_pending_files",
    "dos_fs_writeback_pending_bytes",
    "dos_api_requests_total",
];

#[test]
fn the_mount_serves_its_metrics() {
    let addr = free_addr();
    let metrics = addr.to_string();
    let m = Mount::new_with(&["--metrics", &metrics]);
    let bytes = pseudo_random(3, 3 << 20);
    std::fs::write(m.path("a.bin"), &bytes).unwrap();
    // Written through REST: the mount reads it from the store, through the cache.
    m.rest().put("b.bin", &bytes);
    assert_eq!(read(&m.path("b.bin")), bytes);
    assert_eq!(read(&m.path("a.bin")), bytes);

    let s = scrape(addr);
    let have: std::collections::HashSet<&str> =
        s.samples.iter().map(|x| x.metric.as_str()).collect();
    let missing: Vec<_> = FAMILIES
        .iter()
        .filter(|f| !have.contains(**f) && !have.contains(format!("{f}_count").as_str()))
        .collect();
    assert!(missing.is_empty(), "missing families: {missing:?}");
    let ops = "dos_fs_operation_duration_seconds_count";
    assert!(total(&s, ops, &[("op", "create")]) >= 1.0);
    assert!(total(&s, ops, &[("op", "write")]) >= 3.0);
    assert!(total(&s, ops, &[("op", "lookup")]) >= 1.0);
    let cache =
        total(&s, "dos_fs_cache_hits_total", &[]) + total(&s, "dos_fs_cache_misses_total", &[]);
    assert!(cache >= 1.0, "the cache was asked");
    assert_eq!(total(&s, "dos_fs_uploads_in_flight", &[]), 0.0);
    assert_eq!(total(&s, "dos_fs_uploads_failed_total", &[]), 0.0);
    // The embedded API server served the REST PUT of b.bin.
    let puts = [("method", "PUT"), ("route", "/objects/*name")];
    assert!(total(&s, "dos_api_requests_total", &puts) >= 1.0);

    // Counters move with the work done between two scrapes.
    let before = total(&s, ops, &[("op", "write")]);
    std::fs::write(m.path("c.bin"), b"more").unwrap();
    let after = scrape(addr);
    assert!(total(&after, ops, &[("op", "write")]) > before);
}
