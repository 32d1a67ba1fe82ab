//! A cluster of hosts on this machine (issue 15): seven `dos-server data` and one
//! `dos-server api`, each in its own network namespace with its own address
//! (`scripts/netns-cluster.sh`, helpers in `common/netns.rs`), RabbitMQ and the in-test
//! Elasticsearch on the bridge address of this machine.
//!
//! One data server holding shards is made silent in three ways, one after the other, each
//! under a small mixed load (reads of stored objects, new writes) for LOAD_FOR: its link
//! cut (packets vanish, no RST), 500 ms added to every packet to it, and its process
//! SIGSTOPped. Every operation's latency and result is recorded; no read may return wrong
//! bytes, and after the fault is undone every acknowledged object reads back exactly. The
//! slowest read and write and the errors are printed
//! (`cargo test -p dos-server --test multi_host -- --nocapture`), and it is asserted that no
//! operation waits more than MAX_STALL and that writes keep succeeding (reads hedge, writes
//! replace a silent server: issue 15 part 2). DOS_ALLOW_STALL=1 only prints them, to
//! measure a build from before (`DOS_SERVER_BIN=path`).
//!
//! Needs root, `ip`, `tc` and `RABBITMQ_SERVER` (`scripts/test.sh` has them); skipped with a
//! note otherwise. One test, the scenarios in turn on one cluster, so that no two clusters
//! compete for the machine and the latencies measure the fault, not the neighbours.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../metadata/tests/common/fake_es.rs"]
#[allow(dead_code, clippy::all)]
mod fake_es;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/procs.rs"]
mod procs;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dos_client::workload::pattern;
use dos_client::{Client, WriteAttributes};
use futures::StreamExt as _;
use netns::NetCluster;

/// Data servers: one more than a write needs, so that a write can go on without one.
const DATA: usize = 7;
/// How long each fault is under load.
const LOAD_FOR: Duration = Duration::from_secs(10);
/// Load workers (each alternates two reads and a write).
const WORKERS: u64 = 4;
/// The longest any operation may wait while one server is silent (issue 15).
const MAX_STALL: Duration = Duration::from_secs(2);

/// Whether the stall bound is asserted (unless DOS_ALLOW_STALL=1: measuring an old build).
fn stall_asserted() -> bool {
    std::env::var("DOS_ALLOW_STALL").as_deref() != Ok("1")
}
/// An operation that has not ended after this is counted as an error (and the test goes on).
const OP_GUARD: Duration = Duration::from_secs(90);
/// Sizes of the objects written before the faults, and of the writes under load.
const STORED_SIZES: [usize; 5] = [0, 1_000, 100_000, 1 << 20, 5 << 20];
const WRITE_SIZES: [usize; 4] = [0, 100_000, 1 << 20, 5 << 20];

/// An acknowledged object: its bytes are `pattern(len, seed)`.
#[derive(Clone)]
struct Stored {
    name: String,
    len: usize,
    seed: u64,
}

type Ledger = Arc<Mutex<Vec<Stored>>>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

struct Op {
    kind: Kind,
    name: String,
    size: usize,
    /// When it started, from the start of the load.
    at: Duration,
    took: Duration,
    /// `None`: it succeeded (and a read returned the right bytes).
    error: Option<String>,
    /// A read that succeeded with other bytes than were stored.
    wrong: bool,
}

fn attrs() -> WriteAttributes {
    WriteAttributes::default()
}

/// A well-mixed 64-bit number from a few (splitmix64).
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The first line of an error, without the URL's varying parts mattering much.
fn short(e: impl std::fmt::Display) -> String {
    let s = e.to_string();
    let line = s.lines().next().unwrap_or("").to_string();
    if line.len() > 160 {
        format!("{}…", &line[..160])
    } else {
        line
    }
}

async fn read_op(client: &Client, s: &Stored) -> (Option<String>, bool) {
    match client.get(&s.name, None).await {
        Ok(bytes) => {
            let wrong = bytes.len() != s.len || bytes[..] != pattern(s.len, s.seed)[..];
            (wrong.then(|| "wrong bytes".to_string()), wrong)
        }
        Err(e) => (Some(short(e)), false),
    }
}

/// Runs the mixed load for `for_` and returns every operation it made (all of them ended:
/// operations still going at the end are waited for).
async fn load(client: &Client, ledger: &Ledger, tag: &str, for_: Duration) -> Vec<Op> {
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (client, ledger, tag) = (client.clone(), ledger.clone(), tag.to_string());
        workers.push(tokio::spawn(async move {
            let mut ops = Vec::new();
            let mut i = 0u64;
            while start.elapsed() < for_ {
                i += 1;
                let at = start.elapsed();
                let began = Instant::now();
                let r = mix(w, i);
                let op = if i.is_multiple_of(3) {
                    let len = WRITE_SIZES[(r % WRITE_SIZES.len() as u64) as usize];
                    let s = Stored {
                        name: format!("{tag}/w{w}-{i}"),
                        len,
                        seed: mix(r, 7),
                    };
                    let a = attrs();
                    let put = client.put_bytes(&s.name, pattern(len, s.seed), &a);
                    let error = match tokio::time::timeout(OP_GUARD, put).await {
                        Ok(Ok(_)) => {
                            ledger.lock().unwrap().push(s.clone());
                            None
                        }
                        Ok(Err(e)) => Some(short(e)),
                        Err(_) => Some(format!("no answer in {OP_GUARD:?}")),
                    };
                    Op {
                        kind: Kind::Write,
                        name: s.name,
                        size: len,
                        at,
                        took: began.elapsed(),
                        error,
                        wrong: false,
                    }
                } else {
                    let s = {
                        let l = ledger.lock().unwrap();
                        l[(r % l.len() as u64) as usize].clone()
                    };
                    let (error, wrong) =
                        match tokio::time::timeout(OP_GUARD, read_op(&client, &s)).await {
                            Ok(r) => r,
                            Err(_) => (Some(format!("no answer in {OP_GUARD:?}")), false),
                        };
                    Op {
                        kind: Kind::Read,
                        name: s.name,
                        size: s.len,
                        at,
                        took: began.elapsed(),
                        error,
                        wrong,
                    }
                };
                ops.push(op);
            }
            ops
        }));
    }
    let mut ops = Vec::new();
    for w in workers {
        ops.extend(w.await.unwrap());
    }
    ops
}

/// What a fault did to the load, as printed.
struct Summary {
    what: String,
    reads: usize,
    writes: usize,
    read_errors: usize,
    write_errors: usize,
    wrong: usize,
    slowest_read: Duration,
    slowest_write: Duration,
}

fn describe(op: Option<&Op>) -> String {
    op.map_or("none".into(), |o| {
        format!(
            "{:.2?} ({} of {} B, started at {:.1?}: {})",
            o.took,
            o.name,
            o.size,
            o.at,
            o.error.as_deref().unwrap_or("ok")
        )
    })
}

fn percentile(ops: &[&Op], p: f64) -> Duration {
    let mut t: Vec<Duration> = ops.iter().map(|o| o.took).collect();
    t.sort();
    t.get(((t.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// Prints the load's figures under `what`; asserts no read returned wrong bytes, no stall
/// and no failed write (the last two not with DOS_ALLOW_STALL=1).
fn report(what: &str, ops: &[Op]) -> Summary {
    let reads: Vec<&Op> = ops.iter().filter(|o| o.kind == Kind::Read).collect();
    let writes: Vec<&Op> = ops.iter().filter(|o| o.kind == Kind::Write).collect();
    fn slowest<'a>(v: &[&'a Op]) -> Option<&'a Op> {
        v.iter().copied().max_by_key(|o| o.took)
    }
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for o in ops {
        if let Some(e) = &o.error {
            let kind = if o.kind == Kind::Read {
                "read"
            } else {
                "write"
            };
            *errors.entry(format!("{kind}: {e}")).or_default() += 1;
        }
    }
    let s = Summary {
        what: what.to_string(),
        reads: reads.len(),
        writes: writes.len(),
        read_errors: reads.iter().filter(|o| o.error.is_some()).count(),
        write_errors: writes.iter().filter(|o| o.error.is_some()).count(),
        wrong: ops.iter().filter(|o| o.wrong).count(),
        slowest_read: slowest(&reads).map_or(Duration::ZERO, |o| o.took),
        slowest_write: slowest(&writes).map_or(Duration::ZERO, |o| o.took),
    };
    eprintln!(
        "[multi_host] {what}: {} reads ({} failed, {} wrong; p50 {:.2?}, p99 {:.2?}), \
         {} writes ({} failed; p50 {:.2?}, p99 {:.2?})",
        s.reads,
        s.read_errors,
        s.wrong,
        percentile(&reads, 0.5),
        percentile(&reads, 0.99),
        s.writes,
        s.write_errors,
        percentile(&writes, 0.5),
        percentile(&writes, 0.99),
    );
    eprintln!(
        "[multi_host]   slowest read:  {}",
        describe(slowest(&reads))
    );
    eprintln!(
        "[multi_host]   slowest write: {}",
        describe(slowest(&writes))
    );
    for (e, n) in &errors {
        eprintln!("[multi_host]   {n} × {e}");
    }
    assert_eq!(s.wrong, 0, "{what}: reads returned wrong bytes");
    assert!(
        reads.iter().any(|o| o.error.is_none()),
        "{what}: not one read succeeded"
    );
    if stall_asserted() {
        let worst = s.slowest_read.max(s.slowest_write);
        assert!(
            worst <= MAX_STALL,
            "{what}: an operation waited {worst:.2?} (at most {MAX_STALL:?} allowed)"
        );
        assert_eq!(
            s.write_errors, 0,
            "{what}: writes failed though six data servers answered"
        );
    }
    s
}

/// Reads every acknowledged object back and asserts its bytes.
async fn verify_all(what: &str, client: &Client, ledger: &Ledger) {
    let all = ledger.lock().unwrap().clone();
    let started = Instant::now();
    let results: Vec<(&Stored, (Option<String>, bool))> = futures::stream::iter(&all)
        .map(|s| async move { (s, read_op(client, s).await) })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut lost = Vec::new();
    for (s, (error, wrong)) in results {
        assert!(!wrong, "{what}: {} read back with wrong bytes", s.name);
        if let Some(e) = error {
            lost.push(format!("{}: {e}", s.name));
        }
    }
    eprintln!(
        "[multi_host] {what}: all {} acknowledged objects read back exactly ({:.1?})",
        all.len(),
        started.elapsed()
    );
    assert!(lost.is_empty(), "{what}: not readable: {lost:?}");
}

/// Size and pacing of the streamed uploads of scenario 4.
const STREAMED: usize = 24 << 20;
const STREAMED_CHUNK: usize = 1 << 20;
const STREAMED_PAUSE: Duration = Duration::from_millis(30);

/// Starts four streamed uploads, cuts `host`'s link while they are mid-stream, and waits for
/// them; each must succeed with six shards none of which is on `host`. Returns how many
/// there were and the longest time one took past its own pacing. The link is restored.
async fn streamed_uploads_across_a_cut(
    net: &NetCluster,
    client: &Client,
    ledger: &Ledger,
    host: &str,
) -> (usize, Duration) {
    let pacing = STREAMED_PAUSE * (STREAMED / STREAMED_CHUNK) as u32;
    let uploads = (0..4u64).map(|i| {
        let s = Stored {
            name: format!("streamed/{i}"),
            len: STREAMED,
            seed: 9000 + i,
        };
        async move {
            let bytes = bytes::Bytes::from(pattern(s.len, s.seed));
            let hash = dos_client::ContentHash::of(&bytes);
            let chunks: Vec<bytes::Bytes> = (0..s.len)
                .step_by(STREAMED_CHUNK)
                .map(|o| bytes.slice(o..(o + STREAMED_CHUNK).min(s.len)))
                .collect();
            let body = futures::stream::iter(chunks).then(|c| async move {
                tokio::time::sleep(STREAMED_PAUSE).await;
                Ok::<_, std::io::Error>(c)
            });
            let started = Instant::now();
            let put = client
                .put_stream(&s.name, hash, Some(s.len as u64), body, &attrs())
                .await;
            (s, put, started.elapsed())
        }
    });
    let all = futures::future::join_all(uploads);
    let cut = async {
        tokio::time::sleep(pacing / 3).await;
        net.cut(host);
        eprintln!("[multi_host] cut the link of {host} under streamed uploads");
    };
    let (results, ()) = futures::future::join(all, cut).await;
    net.restore(host);
    let mut extra = Duration::ZERO;
    let count = results.len();
    for (s, put, took) in results {
        put.unwrap_or_else(|e| panic!("{}: streamed upload across the cut: {e}", s.name));
        extra = extra.max(took.saturating_sub(pacing));
        let located = client.locate(&s.name, None).await.unwrap();
        let mut servers: Vec<usize> = located
            .values()
            .filter_map(|addr| net.data_index(addr))
            .collect();
        assert_eq!(located.len(), 6, "{}: six shards: {located:?}", s.name);
        assert!(
            !servers.iter().any(|&i| net.data[i].name == host),
            "{}: a shard is recorded on the cut server: {located:?}",
            s.name
        );
        servers.sort();
        servers.dedup();
        assert_eq!(
            servers.len(),
            6,
            "{}: six distinct servers: {located:?}",
            s.name
        );
        ledger.lock().unwrap().push(s);
    }
    (count, extra)
}

/// Waits until the API server sees all DATA data servers again.
async fn rejoined(net: &NetCluster, what: &str) {
    match net.wait_live(0, DATA, Duration::from_secs(90)).await {
        Ok(t) => eprintln!("[multi_host] {what}: {DATA} data servers live again after {t:.1?}"),
        Err(n) => panic!("{what}: only {n} of {DATA} data servers live 90 s later"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_data_server_under_load() {
    let started = Instant::now();
    let Some(mut net) = NetCluster::start(DATA, 1).await else {
        return;
    };
    eprintln!(
        "[multi_host] cluster {} up: {DATA} data servers and 1 API server ({}) live after {:.1?}",
        net.number,
        net.api_url(0),
        started.elapsed()
    );
    let client = net.client(0);

    // Objects of a few sizes, read back exactly.
    let ledger: Ledger = Arc::default();
    for (i, len) in STORED_SIZES.into_iter().enumerate() {
        let s = Stored {
            name: format!("stored/{i}"),
            len,
            seed: 1000 + i as u64,
        };
        client
            .put_bytes(&s.name, pattern(len, s.seed), &attrs())
            .await
            .unwrap();
        ledger.lock().unwrap().push(s);
    }
    verify_all("before any fault", &client, &ledger).await;

    // The victims: three servers holding shards of the largest object.
    let big = ledger.lock().unwrap().last().unwrap().name.clone();
    let located = client.locate(&big, None).await.unwrap();
    let mut holders: Vec<usize> = located
        .values()
        .filter_map(|addr| net.data_index(addr))
        .collect();
    holders.sort();
    holders.dedup();
    assert!(
        holders.len() >= 3,
        "shards of {big} on {located:?}: fewer than 3 known servers"
    );
    let hosts: Vec<String> = holders.iter().map(|&i| net.data[i].name.clone()).collect();
    let mut summaries = Vec::new();

    // 1. A link cut: packets to and from the server vanish. It is restored once every
    //    operation that started under the fault has ended.
    let host = &hosts[0];
    net.cut(host);
    eprintln!("[multi_host] cut the link of {host}");
    let ops = load(&client, &ledger, "cut", LOAD_FOR).await;
    net.restore(host);
    summaries.push(report(&format!("link of {host} cut"), &ops));
    rejoined(&net, "after the cut").await;
    verify_all("after the cut", &client, &ledger).await;

    // 2. 500 ms more on every packet to one server.
    let host = &hosts[1];
    match net.delay(host, 500) {
        Ok(()) => {
            eprintln!("[multi_host] 500 ms delay on {host}");
            let ops = load(&client, &ledger, "delay", LOAD_FOR).await;
            net.clear(host);
            summaries.push(report(&format!("500 ms delay on {host}"), &ops));
            rejoined(&net, "after the delay").await;
            verify_all("after the delay", &client, &ledger).await;
        }
        Err(why) => eprintln!("[multi_host] skipped: the 500 ms delay ({why})"),
    }

    // 3. The server's process stopped (SIGSTOP): its kernel still accepts connections and
    //    acknowledges bytes, nothing answers.
    let host = &hosts[2];
    let i = holders[2];
    net.pause(net.data[i].proc.as_ref().unwrap());
    eprintln!("[multi_host] SIGSTOP to the data server on {host}");
    let ops = load(&client, &ledger, "stopped", LOAD_FOR).await;
    net.resume(net.data[i].proc.as_ref().unwrap());
    summaries.push(report(&format!("data server on {host} SIGSTOPped"), &ops));
    rejoined(&net, "after SIGCONT").await;
    verify_all("after SIGCONT", &client, &ledger).await;

    // 4. A link cut in the middle of large streamed uploads (24 MiB each, paced so that the
    //    cut falls mid-stream), on a server no fault touched before (the others are suspect
    //    and placed last, so this one takes a shard of every upload): each upload gives up
    //    that server's stream, commits the other five and rebuilds its shard on the
    //    seventh server, so none fails and none waits more than MAX_STALL past its pacing.
    let fresh = (0..DATA).find(|i| !holders[..3].contains(i)).unwrap();
    let host = net.data[fresh].name.clone();
    let (streamed, extra) = streamed_uploads_across_a_cut(&net, &client, &ledger, &host).await;
    rejoined(&net, "after the cut under streamed uploads").await;
    verify_all("after the cut under streamed uploads", &client, &ledger).await;
    eprintln!(
        "[multi_host] link of {host} cut under {streamed} streamed 24 MiB uploads: all succeeded, \
         the slowest took {extra:.2?} past its pacing"
    );
    if stall_asserted() {
        assert!(
            extra < MAX_STALL,
            "a streamed upload waited {extra:?} past its pacing"
        );
    }

    // And a kill -9 leaves the others serving every object.
    let host = hosts[0].clone();
    net.kill(&host);
    verify_all(&format!("{host} killed"), &client, &ledger).await;

    eprintln!(
        "[multi_host] summary (stall bound {MAX_STALL:?} {}):",
        if stall_asserted() {
            "asserted"
        } else {
            "not asserted: DOS_ALLOW_STALL=1"
        }
    );
    for s in &summaries {
        eprintln!(
            "[multi_host]   {:<36} slowest read {:>8.2?}  slowest write {:>8.2?}  \
             errors {}/{} reads, {}/{} writes, wrong bytes {}",
            s.what,
            s.slowest_read,
            s.slowest_write,
            s.read_errors,
            s.reads,
            s.write_errors,
            s.writes,
            s.wrong
        );
    }
    eprintln!("[multi_host] wall time {:.1?}", started.elapsed());
}
