//! Drain and rebalance on the embedded cluster, driven over REST as `dos-server maintain
//! --drain / --rebalance` drives them: a drain under a load of reads and writes leaves no
//! placement naming the drained server and every object on six healthy shards on six
//! distinct servers, so the server can be removed; two servers added and a rebalance leave
//! shard counts within 10 % of each other; a drain stopped by its watcher going away (Ctrl-C)
//! or in process continues when run again; a drain of a server that is down rebuilds its
//! shards elsewhere. `--ignored drain_and_rebalance_throughput` measures MiB/s
//! (RELIABILITY.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use dos_api_server::maintenance::{Job, JobParams};
use dos_client::workload::{self, Ledger, Tally, WorkloadConfig};
use dos_client::{Client, ContentHash};
use dos_metadata::ContentRecord;
use dos_protocol::ServerId;
use dos_server::local::{LocalCluster, ShardPath};
use dos_transport::faults::{Fault, Faults, FaultyTransport, Op};
use futures::TryStreamExt as _;
use tokio::task::JoinHandle;

/// Every content record.
async fn contents(cluster: &LocalCluster) -> Vec<ContentRecord> {
    let core = cluster.api_core();
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = core.meta.list_contents(after.as_ref(), 1000).await.unwrap();
        let Some(last) = page.last() else {
            return out;
        };
        after = Some(last.hash);
        out.extend(page);
    }
}

/// Slots of every record naming `server`.
async fn needed_on(cluster: &LocalCluster, server: &ServerId) -> usize {
    contents(cluster)
        .await
        .iter()
        .map(|c| c.placement.iter().filter(|s| *s == server).count())
        .sum()
}

/// Shards each live data server holds by the records.
async fn counts(cluster: &LocalCluster) -> BTreeMap<ServerId, u64> {
    let mut counts: BTreeMap<ServerId, u64> = cluster
        .api_core()
        .bus
        .live_servers()
        .into_iter()
        .map(|s| (s.id, 0))
        .collect();
    for c in contents(cluster).await {
        for s in &c.placement {
            if let Some(n) = counts.get_mut(s) {
                *n += 1;
            }
        }
    }
    counts
}

/// Every record places its six shards on six distinct servers, none of them `gone`.
async fn assert_six_distinct(cluster: &LocalCluster, gone: &ServerId) {
    for c in contents(cluster).await {
        assert!(!c.placement.contains(gone), "{} still names {gone}", c.hash);
        let distinct: BTreeSet<&ServerId> = c.placement.iter().collect();
        assert_eq!(distinct.len(), 6, "{}: {:?}", c.hash, c.placement);
    }
}

/// Shard files under a data server's `objects/`.
fn shard_file_count(root: &Path) -> usize {
    let mut files = Vec::new();
    collect_files(&root.join("objects"), &mut files);
    files.len()
}

fn assert_no_errors(what: &str, report: &serde_json::Value) {
    assert_eq!(count(report, "errors"), 0, "{what}: {report}");
}

fn drain_job(server: &ServerId) -> String {
    format!("drain:{server}")
}

async fn read_back(client: &Client, objects: &[(String, ContentHash, Vec<u8>)]) {
    for (name, _, bytes) in objects {
        assert!(client.get(name, None).await.unwrap() == bytes[..], "{name}");
    }
}

/// A running mixed load of PUTs, resumable uploads, GETs and DELETEs.
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Tally>>,
}

fn start_load(client: &Client, ledger: &Arc<Ledger>, workers: u64) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let config = WorkloadConfig {
        max_size: 2 << 20,
        names_per_worker: 20,
        ..WorkloadConfig::default()
    };
    let workers = (0..workers)
        .map(|i| {
            tokio::spawn(workload::worker(
                client.clone(),
                100 + i,
                config.clone(),
                ledger.clone(),
                stop.clone(),
            ))
        })
        .collect();
    Load { stop, workers }
}

impl Load {
    async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for w in self.workers {
            total.add(&w.await.unwrap());
        }
        total
    }
}

fn assert_clean(what: &str, t: &Tally) {
    eprintln!(
        "[drain] {what}: {} operations ({} PUT, {} resumable, {} GET, {} DELETE), {} errors, {} wrong reads {:?}",
        t.ops(),
        t.puts,
        t.resumable_puts,
        t.gets,
        t.deletes,
        t.errors,
        t.wrong_bytes,
        t.error_kinds
    );
    assert_eq!(t.wrong_bytes, 0, "{what}: wrong bytes read");
    assert_eq!(t.errors, 0, "{what}: {:?}", t.error_kinds);
}

fn summary(what: &str, r: &serde_json::Value) {
    eprintln!(
        "[drain] {what}: {} ms, {:.1} MiB/s, {}; counts {}",
        r["elapsed_ms"],
        r["mib_per_sec"].as_f64().unwrap_or(0.0),
        r["verdict"],
        r["counts"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_under_load_then_rebalance_onto_two_added_servers() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let f = faults.clone();
    let (mut cluster, client) = start_with(&dir.path().join("c"), |c| {
        c.data_servers = 7;
        c.transport_layer = Some(Arc::new(move |inner| {
            Arc::new(FaultyTransport::new(inner, f.clone()))
        }));
    })
    .await;
    let sizes = [0, 1, 100_000, 3 << 20, 5 << 20];
    let mut objects = Vec::new();
    for round in 0..4 {
        objects
            .extend(store_objects(&client, &format!("r{round}"), &sizes, 1000 + round * 10).await);
    }
    let drained = cluster.data_servers()[0].clone().unwrap();
    let held = needed_on(&cluster, &drained.id).await;
    assert!(held > 0, "the server to drain holds shards");

    // Drain under a load of reads and writes; every operation succeeds. Each move takes at
    // least 60 ms (removing the old copy is slowed), so the load overlaps the drain.
    faults
        .on(Op::RemoveShard, Fault::Delay(Duration::from_millis(60)))
        .server(&drained.id)
        .apply();
    let ledger = Arc::new(Ledger::default());
    let load = start_load(&client, &ledger, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The load stops with the drain, or after 3 s: it writes a bounded amount however fast
    // the machine is.
    let switch = load.stop.clone();
    let timer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        switch.store(true, Ordering::Relaxed);
    });
    let first = run_job(&client, &drain_job(&drained.id), None, None).await;
    timer.abort();
    summary("drain under load", &first);
    assert!(count(&first, "shards_moved") >= held as u64, "{first}");
    assert_eq!(count(&first, "shards_failed"), 0, "{first}");
    let tally = load.stop().await;
    faults.clear();
    assert!(tally.ops() > 0);
    assert_clean("load during the drain", &tally);
    // Running it again moves whatever writes put there meanwhile (the drained server takes
    // new shards only when six others are not live) and finds it holds nothing needed.
    let second = run_job(&client, &drain_job(&drained.id), None, None).await;
    summary("drain again", &second);
    assert_no_errors("drain again", &second);
    assert_eq!(count(&second, "needed_left"), 0, "{second}");
    assert!(
        second["verdict"]
            .as_str()
            .unwrap()
            .contains("holds nothing anyone needs"),
        "{second}"
    );
    assert_six_distinct(&cluster, &drained.id).await;
    // What is left on its disk, no record names.
    let left = shard_file_count(&cluster.data_roots()[0]);
    assert_eq!(left as u64, count(&second, "files_left"), "{second}");
    eprintln!("[drain] shard files left on the drained server, named by no record: {left}");

    // Remove it: every object still has six healthy shards (scrub rebuilds nothing).
    cluster.stop_data_server(0).await;
    let scrub = run_job(&client, "scrub", None, None).await;
    assert_no_errors("scrub after removal", &scrub);
    assert_eq!(count(&scrub, "shards_rebuilt"), 0, "{scrub}");
    assert_eq!(count(&scrub, "shards_postponed"), 0, "{scrub}");
    read_back(&client, &objects).await;
    let verified = workload::verify_all(&client, &ledger, 4).await;
    assert_clean("read back after the drain", &verified);

    // Two servers join; rebalance spreads the shards over all eight.
    cluster.add_data_server().await.unwrap();
    cluster.add_data_server().await.unwrap();
    let core = cluster.api_core();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            core.bus.live_servers().len() == 8
        })
        .await
    );
    let before = counts(&cluster).await;
    eprintln!("[drain] shards per server before the rebalance: {before:?}");
    let rebalance = run_job(&client, "rebalance", None, None).await;
    summary("rebalance", &rebalance);
    assert_no_errors("rebalance", &rebalance);
    let after = counts(&cluster).await;
    eprintln!("[drain] shards per server after the rebalance: {after:?}");
    let (min, max) = (
        *after.values().min().unwrap(),
        *after.values().max().unwrap(),
    );
    assert!(
        max as f64 <= min as f64 * 1.1,
        "shard counts not within 10 %: {after:?}"
    );
    assert_eq!(
        (
            count(&rebalance, "min_after"),
            count(&rebalance, "max_after")
        ),
        (min, max)
    );
    assert_six_distinct(&cluster, &drained.id).await;
    // Each server holds what the records say (the old copies are gone from the givers).
    for (i, root) in cluster.data_roots().iter().enumerate().skip(1) {
        let id = cluster.data_servers()[i].clone().unwrap().id;
        assert!(
            shard_file_count(root) as u64 >= after[&id],
            "server {i} lacks shards the records place there"
        );
    }
    let again = run_job(&client, "rebalance", None, None).await;
    assert_eq!(
        count(&again, "shards_moved"),
        0,
        "a balanced cluster stays put: {again}"
    );
    read_back(&client, &objects).await;
    let verified = workload::verify_all(&client, &ledger, 4).await;
    assert_clean("read back after the rebalance", &verified);
    let scrub = run_job(&client, "scrub", None, None).await;
    assert_no_errors("scrub after the rebalance", &scrub);
    assert_eq!(count(&scrub, "shards_rebuilt"), 0, "{scrub}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_drain_continues_when_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let f = faults.clone();
    let (cluster, client) = start_with(&dir.path().join("c"), |c| {
        c.data_servers = 7;
        c.transport_layer = Some(Arc::new(move |inner| {
            Arc::new(FaultyTransport::new(inner, f.clone()))
        }));
    })
    .await;
    let sizes: Vec<usize> = (0..60).map(|i| 1 + (i * 37_813) % 600_000).collect();
    let objects = store_objects(&client, "stop", &sizes, 7).await;
    let drained = cluster.data_servers()[0].clone().unwrap();
    let held = needed_on(&cluster, &drained.id).await;
    assert!(held > 20, "{held}");
    // Slow moves: removing a shard from the drained server takes 400 ms.
    faults
        .on(Op::RemoveShard, Fault::Delay(Duration::from_millis(400)))
        .server(&drained.id)
        .apply();
    let maintenance = cluster.maintenance();

    // 1. Its watcher goes away (Ctrl-C of `dos-server maintain`): the run stops.
    let mut reports = client
        .maintenance(&drain_job(&drained.id), None, None)
        .await
        .unwrap();
    loop {
        let r = reports.try_next().await.unwrap().expect("a report");
        assert_ne!(
            r["done"], true,
            "the drain ended before it could be stopped: {r}"
        );
        if count(&r, "shards_moved") > 0 {
            break;
        }
    }
    drop(reports);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            maintenance.running().is_empty()
        })
        .await,
        "the drain goes on without its watcher"
    );
    let after_first = needed_on(&cluster, &drained.id).await;
    eprintln!("[drain] stopped by its watcher leaving: {after_first} of {held} shards still on it");
    assert!(
        after_first < held && after_first > 0,
        "{after_first} of {held}"
    );
    read_back(&client, &objects).await;

    // 2. Stopped in process.
    let params = JobParams {
        keep: 5,
        grace: Duration::from_secs(3600),
    };
    let job = Job::Drain(drained.id.clone());
    let run = maintenance.start(job.clone(), params).unwrap();
    assert!(matches!(
        maintenance.start(job.clone(), params),
        Err(dos_api_server::error::ApiError::Conflict(_))
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(maintenance.stop(&job));
    run.finished.await.unwrap();
    let report = run.progress.snapshot();
    eprintln!("[drain] stopped in process: {:?}", report.counts);
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains("stopped before the end")),
        "{:?}",
        report.errors
    );
    let after_second = needed_on(&cluster, &drained.id).await;
    assert!(
        after_second <= after_first,
        "{after_second} > {after_first}"
    );
    read_back(&client, &objects).await;

    // 3. Run again to the end: it finishes, and moved each shard once.
    faults.clear();
    let last = run_job(&client, &drain_job(&drained.id), None, None).await;
    summary("drain run again", &last);
    assert_no_errors("drain run again", &last);
    assert_eq!(count(&last, "shards_moved"), after_second as u64, "{last}");
    assert_eq!(count(&last, "needed_left"), 0, "{last}");
    assert_eq!(needed_on(&cluster, &drained.id).await, 0);
    assert_eq!(shard_file_count(&cluster.data_roots()[0]), 0);
    assert_six_distinct(&cluster, &drained.id).await;
    read_back(&client, &objects).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn draining_a_server_that_is_down_rebuilds_its_shards_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, client) = start_with(&dir.path().join("c"), |c| c.data_servers = 7).await;
    let objects = store_objects(&client, "down", &[0, 1, 100_000, 3 << 20, 1 << 20], 70).await;
    let drained = cluster.data_servers()[0].clone().unwrap();
    let held = needed_on(&cluster, &drained.id).await as u64;
    cluster.stop_data_server(0).await;
    let report = run_job(&client, &drain_job(&drained.id), None, None).await;
    summary("drain of a server that is down", &report);
    assert_no_errors("drain of a server that is down", &report);
    assert_eq!(count(&report, "shards_moved"), held, "{report}");
    assert_eq!(count(&report, "shards_rebuilt"), held, "{report}");
    assert_eq!(count(&report, "needed_left"), 0, "{report}");
    assert_six_distinct(&cluster, &drained.id).await;
    let scrub = run_job(&client, "scrub", None, None).await;
    assert_no_errors("scrub", &scrub);
    assert_eq!(count(&scrub, "shards_rebuilt"), 0, "{scrub}");
    read_back(&client, &objects).await;
    // A server nobody knows is refused.
    let unknown = run_job(&client, "drain:ds-nobody", None, None).await;
    assert!(
        unknown["errors"][0]
            .as_str()
            .unwrap()
            .contains("no live data server is ds-nobody"),
        "{unknown}"
    );
    cluster.shutdown().await;
}

/// Drain and rebalance throughput on large objects (RELIABILITY.md): `DOS_BENCH_MIB` MiB of
/// content (default 1024) in 8 MiB objects on seven servers, with the API server calling its
/// data servers in process, then over HTTP on loopback; drain one, remove it, add two,
/// rebalance. `cargo test -p dos-server --test drain -- --ignored --nocapture` (folder:
/// `DOS_BENCH_DIR`, default /tmp).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement: writes GiBs"]
async fn drain_and_rebalance_throughput() {
    let mib: usize = std::env::var("DOS_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    for path in [ShardPath::InProcess, ShardPath::Http] {
        with_shard_path(path, bench(mib, &format!("{path:?}"))).await;
    }
}

async fn bench(mib: usize, what: &str) {
    let base = std::env::var("DOS_BENCH_DIR").unwrap_or_else(|_| "/tmp".into());
    let dir = tempfile::tempdir_in(base).unwrap();
    let (mut cluster, client) = start_with(&dir.path().join("c"), |c| c.data_servers = 7).await;
    let object = 8 << 20;
    let n = (mib << 20) / object;
    let t = Instant::now();
    for i in 0..n {
        let bytes = data(object, 5000 + i as u64);
        client
            .put_bytes(&format!("bench/{i}"), bytes, &attrs())
            .await
            .unwrap();
    }
    eprintln!(
        "[bench {what}] stored {n} objects of 8 MiB in {:.1} s ({:.1} MiB/s of content)",
        t.elapsed().as_secs_f64(),
        (n * 8) as f64 / t.elapsed().as_secs_f64()
    );
    let drained = cluster.data_servers()[0].clone().unwrap();
    let drain = run_job(&client, &drain_job(&drained.id), None, None).await;
    assert_no_errors("drain", &drain);
    eprintln!(
        "[bench {what}] drain: {} shards, {} MiB in {:.1} s: {:.1} MiB/s",
        count(&drain, "shards_moved"),
        count(&drain, "bytes_moved") >> 20,
        drain["elapsed_ms"].as_f64().unwrap() / 1000.0,
        drain["mib_per_sec"].as_f64().unwrap_or(0.0)
    );
    cluster.stop_data_server(0).await;
    cluster.add_data_server().await.unwrap();
    cluster.add_data_server().await.unwrap();
    let core = cluster.api_core();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            core.bus.live_servers().len() == 8
        })
        .await
    );
    let rebalance = run_job(&client, "rebalance", None, None).await;
    assert_no_errors("rebalance", &rebalance);
    eprintln!(
        "[bench {what}] rebalance: {} shards, {} MiB in {:.1} s: {:.1} MiB/s; {}",
        count(&rebalance, "shards_moved"),
        count(&rebalance, "bytes_moved") >> 20,
        rebalance["elapsed_ms"].as_f64().unwrap() / 1000.0,
        rebalance["mib_per_sec"].as_f64().unwrap_or(0.0),
        rebalance["verdict"]
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn targets_that_refuse_shards_fail_only_their_moves() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let f = faults.clone();
    let (cluster, client) = start_with(&dir.path().join("c"), |c| {
        c.data_servers = 8;
        c.transport_layer = Some(Arc::new(move |inner| {
            Arc::new(FaultyTransport::new(inner, f.clone()))
        }));
    })
    .await;
    let sizes: Vec<usize> = (0..12).map(|i| 1 + (i * 517_001) % 4_000_000).collect();
    let objects = store_objects(&client, "full", &sizes, 40).await;
    let servers: Vec<_> = cluster.data_servers().into_iter().flatten().collect();
    let drained = servers[0].clone();
    let held = needed_on(&cluster, &drained.id).await as u64;
    // Two servers' disks are full: every shard they are sent is refused.
    for full in &servers[1..3] {
        for op in [Op::PutShard, Op::CreateTemp, Op::WriteTemp, Op::Commit] {
            faults
                .on(op, Fault::Fail(dos_transport::ShardError::Full))
                .server(&full.id)
                .apply();
        }
    }
    let report = run_job(&client, &drain_job(&drained.id), None, None).await;
    summary("drain with two full servers", &report);
    assert!(cluster.maintenance().running().is_empty());
    assert_eq!(report["done"], true);
    assert_eq!(
        count(&report, "shards_moved") + count(&report, "needed_left"),
        held,
        "{report}"
    );
    for e in report["errors"].as_array().unwrap() {
        let e = e.as_str().unwrap();
        assert!(
            e.contains("disk is full") || e.contains("still need"),
            "{e}"
        );
    }
    // Space again: a run again finishes, and everything reads back.
    faults.clear();
    let again = run_job(&client, &drain_job(&drained.id), None, None).await;
    assert_no_errors("drain again", &again);
    assert_eq!(count(&again, "needed_left"), 0, "{again}");
    assert_six_distinct(&cluster, &drained.id).await;
    read_back(&client, &objects).await;
    cluster.shutdown().await;
}
