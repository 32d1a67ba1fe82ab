//! Small objects on the embedded cluster with packed shards (the default of every data
//! server): stored whole in one request per data server, appended to pack files, served
//! back exactly, across restarts; corruption inside a pack found by scrub and repaired;
//! orphaned packed shards collected; about their own size on disk; and a data server
//! process killed with SIGKILL in the middle of appends loses no acknowledged shard.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../../metadata/tests/common/fake_es.rs"]
#[allow(dead_code, clippy::all)]
mod fake_es;
#[path = "common/procs.rs"]
mod procs;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use dos_client::{Client, ContentHash};
use dos_server::local::LocalCluster;

async fn start_packed(root: &Path) -> (LocalCluster, Client) {
    start_with(root, |c| c.pack_small = true).await
}

/// Shard indices of `hash` the live data servers say they hold (sorted, with repeats).
async fn held(cluster: &LocalCluster, hash: &ContentHash) -> Vec<u8> {
    let core = cluster.api_core();
    let mut out = Vec::new();
    for server in core.bus.live_servers() {
        let page = core
            .shards
            .list_shards(&server, None, 100_000)
            .await
            .unwrap();
        out.extend(page.iter().filter(|e| e.hash == *hash).map(|e| e.shard));
    }
    out.sort();
    out
}

fn pack_files(cluster: &LocalCluster) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for root in cluster.data_roots() {
        collect_files(&root.join("packs"), &mut out);
    }
    out.retain(|p| p.extension().is_some_and(|e| e == "pack"));
    out
}

/// Where the entry of (`hash`, any shard) is in some pack: (file, entry offset, entry bytes
/// after the 72 bytes of headers). The first one found.
fn find_entry(cluster: &LocalCluster, hash: &ContentHash, skip: usize) -> (PathBuf, usize) {
    let mut found = Vec::new();
    for path in pack_files(cluster) {
        let bytes = std::fs::read(&path).unwrap();
        let mut at = 0;
        while let Some(i) = bytes[at..].windows(8).position(|w| w == b"DOSPACK1") {
            let off = at + i;
            if bytes.len() >= off + 40 && bytes[off + 8..off + 40] == hash.0 {
                found.push((path.clone(), off));
            }
            at = off + 8;
        }
    }
    found
        .into_iter()
        .nth(skip)
        .expect("a packed entry of the object")
}

async fn run(client: &Client, job: &str, grace: Option<Duration>) -> serde_json::Value {
    let last = run_job(client, job, None, grace).await;
    assert_eq!(count(&last, "errors"), 0, "{last}");
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_objects_are_packed_served_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let (cluster, client) = start_packed(&root).await;
    let sizes = [
        0usize,
        1,
        100,
        4096,
        65_537,
        300_000,
        1 << 20,
        (1 << 20) + 1,
    ];
    let objects = store_objects(&client, "small", &sizes, 40).await;
    for (name, hash, bytes) in &objects {
        assert!(client.get(name, None).await.unwrap() == bytes[..], "{name}");
        assert_eq!(held(&cluster, hash).await, vec![0, 1, 2, 3, 4, 5], "{name}");
        let files = shard_files(&cluster, hash).len();
        // Up to 1 MiB the shards are packed; past it each is a file. (An empty body may
        // come without a length, and then takes the streamed path: six empty files.)
        if !bytes.is_empty() {
            assert_eq!(files, if bytes.len() > 1 << 20 { 6 } else { 0 }, "{name}");
        }
    }
    // A range inside a packed object.
    let (_, got) = client
        .get_range("small/5", None, "bytes=1000-2999")
        .await
        .unwrap();
    assert!(got == objects[5].2[1000..3000]);
    cluster.shutdown().await;
    let (cluster, client) = start_packed(&root).await;
    for (name, hash, bytes) in &objects {
        assert!(
            client.get(name, None).await.unwrap() == bytes[..],
            "{name} after restart"
        );
        assert_eq!(held(&cluster, hash).await, vec![0, 1, 2, 3, 4, 5]);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_finds_corruption_inside_a_pack_and_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client) = start_packed(&dir.path().join("root")).await;
    let mut objects = Vec::new();
    for i in 0..5u64 {
        let bytes = data(10_000 + 5_000 * i as usize, 70 + i);
        let name = format!("damaged/{i}");
        client
            .put_bytes(&name, bytes.clone(), &attrs())
            .await
            .unwrap();
        objects.push((name, ContentHash::of(&bytes), bytes));
    }
    // One payload byte flipped in one packed shard of each object.
    for (i, (_, hash, _)) in objects.iter().enumerate() {
        let (path, off) = find_entry(&cluster, hash, i % 3);
        corrupt_at(&path, Some(off as u64 + 56 + 16 + 100));
    }
    let report = run(&client, "scrub", None).await;
    assert_eq!(count(&report, "shards_rebuilt"), 5, "{report}");
    assert_eq!(count(&report, "hash_mismatches"), 0, "{report}");
    let quarantined = quarantined(&cluster);
    assert_eq!(quarantined.len(), 5, "{quarantined:?}");
    assert!(
        quarantined
            .iter()
            .all(|p| p.to_string_lossy().ends_with(".packed"))
    );
    for (name, hash, bytes) in &objects {
        assert_eq!(held(&cluster, hash).await, vec![0, 1, 2, 3, 4, 5]);
        assert!(client.get(name, None).await.unwrap() == bytes[..]);
    }
    let again = run(&client, "scrub", None).await;
    assert_eq!(count(&again, "shards_rebuilt"), 0, "{again}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_packed_shards_are_collected_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client) = start_packed(&dir.path().join("root")).await;
    client
        .put_bytes("kept", data(5_000, 1), &attrs())
        .await
        .unwrap();
    // A whole shard stored with no content record (an API server that died before
    // recording it).
    let core = cluster.api_core();
    let server = core.bus.live_servers()[0].clone();
    let stray = ContentHash::of(b"never recorded, packed");
    core.shards
        .put_shard(&server, &stray, 3, dos_client::Bytes::from(vec![9u8; 700]))
        .await
        .unwrap();
    assert_eq!(held(&cluster, &stray).await, vec![3]);
    let kept = run(&client, "orphans", Some(Duration::from_secs(3600))).await;
    assert_eq!(count(&kept, "stray_shards_removed"), 0, "{kept}");
    assert_eq!(held(&cluster, &stray).await, vec![3]);
    let swept = run(&client, "orphans", Some(Duration::ZERO)).await;
    assert_eq!(count(&swept, "stray_shards_removed"), 1, "{swept}");
    assert!(held(&cluster, &stray).await.is_empty());
    assert!(client.get("kept", None).await.unwrap() == data(5_000, 1)[..]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_objects_take_about_their_size_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client) = start_packed(&dir.path().join("root")).await;
    let n = 2_000u64;
    let puts = futures::stream::iter(0..n).map(|i| {
        let client = client.clone();
        async move {
            client
                .put_bytes(&format!("many/{i}"), data(4096, 1000 + i), &attrs())
                .await
                .unwrap();
        }
    });
    use futures::StreamExt as _;
    puts.buffer_unordered(8).collect::<Vec<_>>().await;
    // Blocks allocated on disk for the shards, across the six data servers.
    let mut allocated = 0u64;
    for root in cluster.data_roots() {
        let mut files = Vec::new();
        collect_files(&root.join("packs"), &mut files);
        collect_files(&root.join("objects"), &mut files);
        for f in files {
            use std::os::unix::fs::MetadataExt as _;
            allocated += std::fs::metadata(&f).unwrap().blocks() * 512;
        }
    }
    let raw = n * 4096;
    assert!(
        allocated <= 2 * raw,
        "{n} objects of 4 KiB ({raw} bytes) take {allocated} bytes of disk (RS 4+2 alone is 1.5x)"
    );
    assert!(client.get("many/17", None).await.unwrap() == data(4096, 1017)[..]);
    cluster.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// kill -9 of a data server process in the middle of appends.

/// The shard written under ledger id `id`: a key of its own, and bytes from 1 B to 60 KB.
fn kill9_shard(id: u64) -> (ContentHash, u8, Vec<u8>) {
    let len = match id % 10 {
        0 => 60_000,
        1 => 1,
        _ => 200 + (id as usize * 37) % 6_000,
    };
    let hash = ContentHash::of(format!("kill -9 shard {id}").as_bytes());
    (hash, (id % 6) as u8, data(len, 1_000_000 + id))
}

/// `dos-server local --shard-path http` on `root` (its six data servers listen on loopback
/// ports), killed with SIGKILL when dropped; and data server 1's identity and address, read
/// from the log.
async fn start_local_process(root: &Path, log: &Path) -> (procs::Proc, dos_protocol::ServerInfo) {
    let log_file = std::fs::File::create(log).unwrap();
    let child = std::process::Command::new(procs::BIN)
        .args(["local", "--root", &root.display().to_string()])
        .args(["--listen", &format!("127.0.0.1:{}", procs::free_port())])
        .args(["--shard-path", "http"])
        // Nothing but the test touches the shards: no scrub or orphan collection.
        .args(["--scrub-every", "off", "--orphans-every", "off"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let proc = procs::Proc {
        child,
        name: "local".into(),
    };
    let data1 = root.join("data1").display().to_string();
    let mut found = None;
    let seen = wait_until(Duration::from_secs(60), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        found = text
            .lines()
            .filter(|l| l.contains("data server started"))
            .find_map(|l| {
                let field = |k: &str| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix(k))
                        .map(str::to_string)
                };
                (field("root=")? == data1).then_some(dos_protocol::ServerInfo {
                    id: dos_protocol::ServerId(field("id=")?),
                    addr: field("addr=")?,
                })
            });
        std::future::ready(found.is_some())
    })
    .await;
    assert!(
        seen,
        "data server 1 did not start: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    (proc, found.unwrap())
}

/// Walks the entries of a pack file by their lengths: (end of the last whole entry, whole
/// entries). Only the lengths are read here; the data server checks the CRCs.
fn walk_pack(bytes: &[u8]) -> (usize, usize) {
    assert!(
        bytes.len() >= 16 && &bytes[..8] == b"DOSPAKF1",
        "pack header"
    );
    let (mut at, mut n) = (16, 0);
    while bytes.len() >= at + 72 && &bytes[at..at + 8] == b"DOSPACK1" {
        let stored = u32::from_le_bytes(bytes[at + 56..at + 60].try_into().unwrap()) as usize;
        if at + 72 + stored > bytes.len() {
            break;
        }
        at += 72 + stored;
        n += 1;
    }
    (at, n)
}

fn packs_of(root: &Path) -> Vec<PathBuf> {
    let mut packs: Vec<PathBuf> = std::fs::read_dir(root.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    packs.sort();
    packs
}

/// The shard's bytes as data server `server` serves them (`Err` when it does not).
async fn read_whole(
    shards: &dos_transport::http::HttpTransport,
    server: &dos_protocol::ServerInfo,
    hash: &ContentHash,
    shard: u8,
    len: usize,
) -> Result<Vec<u8>, dos_transport::ShardError> {
    use dos_transport::ShardTransport as _;
    use futures::TryStreamExt as _;
    let body = shards
        .read_shard(server, hash, shard, 0, len as u64)
        .await?;
    let chunks: Vec<dos_client::Bytes> = body.try_collect().await?;
    Ok(chunks.concat())
}

/// Writes whole shards to data server 1 of a `dos-server local` process from 16 writers at
/// once, kills the process with SIGKILL while writes are in flight, and starts it again on
/// the same folder, twice. Every acknowledged shard must read back byte for byte and verify;
/// a shard whose write was not acknowledged is either whole or absent, never corrupt; the
/// pack that was being appended to ends with its last whole entry after the restart (a torn
/// tail cut off, its bytes reclaimed) and the next process appends after it.
///
/// A process killed between two `write`s leaves whole entries only (the page cache survives
/// it), so before each restart a torn entry is added at the end of the pack, as a kill in the
/// middle of a `write` or a power cut leaves one, unless the kill already left one. For the
/// same reason this test cannot tell whether the `fdatasync` before the answer is there (only
/// a power cut could); it does fail when the answer goes out before the append, when the
/// torn tail is not cut, or when a torn entry is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn packed_shards_survive_kill_9_of_the_data_server_mid_append() {
    use dos_transport::ShardTransport as _;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("secret"), procs::SECRET).unwrap();
    // A secret file must be private to its owner.
    std::fs::set_permissions(
        root.join("secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let secret = hex::decode(procs::SECRET).unwrap();
    let shards =
        dos_transport::http::HttpTransport::new(Duration::from_secs(2), Some(&secret)).unwrap();
    let data1 = root.join("data1");
    let acked: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let attempted: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(0));
    let torn_hash = ContentHash::of(b"a torn entry, never acknowledged");
    let (mut proc, mut server) = start_local_process(&root, &dir.path().join("local-0.log")).await;
    for round in 1..=2 {
        // 16 writers at once, until the process is killed.
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..16)
            .map(|_| {
                let (shards, server, stop) = (shards.clone(), server.clone(), stop.clone());
                let (acked, attempted, next) = (acked.clone(), attempted.clone(), next.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let id = next.fetch_add(1, Ordering::Relaxed);
                        let (hash, shard, bytes) = kill9_shard(id);
                        attempted.lock().unwrap().insert(id);
                        let put = shards.put_shard(&server, &hash, shard, bytes.into()).await;
                        if put.is_ok() {
                            acked.lock().unwrap().insert(id);
                        }
                    }
                })
            })
            .collect();
        let target = acked.lock().unwrap().len() + 400;
        assert!(
            wait_until(Duration::from_secs(120), || std::future::ready(
                acked.lock().unwrap().len() >= target
            ))
            .await,
            "round {round}: {target} acknowledged writes"
        );
        proc.child.kill().unwrap();
        proc.child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        // The pack being appended to: whole entries, then maybe a torn one.
        let newest = packs_of(&data1).pop().unwrap();
        let bytes = std::fs::read(&newest).unwrap();
        let (whole_end, whole) = walk_pack(&bytes);
        let torn_by_kill = bytes.len() - whole_end;
        if torn_by_kill == 0 {
            let entry = dos_data_server::store::pack::encode_entry(
                &torn_hash,
                round as u8,
                &data(5_000, 77),
                0,
            );
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&newest)
                .unwrap();
            std::io::Write::write_all(&mut f, &entry[..72 + 2_000]).unwrap();
        }
        eprintln!(
            "[kill -9] round {round}: {} writes acknowledged of {} attempted; {} has {whole} \
             whole entries and a torn tail of {} bytes{}",
            acked.lock().unwrap().len(),
            attempted.lock().unwrap().len(),
            newest.display(),
            if torn_by_kill > 0 {
                torn_by_kill
            } else {
                2_072
            },
            if torn_by_kill > 0 {
                " (left by the kill)"
            } else {
                " (added)"
            }
        );

        (proc, server) =
            start_local_process(&root, &dir.path().join(format!("local-{round}.log"))).await;
        // The torn tail is cut: the pack ends with its last whole entry.
        assert_eq!(
            std::fs::metadata(&newest).unwrap().len() as usize,
            whole_end,
            "round {round}: the torn tail of {} is cut off at restart",
            newest.display()
        );
        for pack in packs_of(&data1) {
            let bytes = std::fs::read(&pack).unwrap();
            assert_eq!(
                walk_pack(&bytes).0,
                bytes.len(),
                "{} is whole entries",
                pack.display()
            );
        }
        // Every acknowledged shard, byte for byte and verified.
        let acked_now = acked.lock().unwrap().clone();
        for id in &acked_now {
            let (hash, shard, bytes) = kill9_shard(*id);
            let got = read_whole(&shards, &server, &hash, shard, bytes.len()).await;
            assert!(
                got.as_ref().is_ok_and(|g| *g == bytes),
                "round {round}: acknowledged shard {id} ({} bytes) reads back: {:?}",
                bytes.len(),
                got.map(|g| g.len())
            );
            assert_eq!(
                shards.verify_shard(&server, &hash, shard).await.unwrap(),
                bytes.len() as u64
            );
        }
        // The others: whole, or not there.
        let unacked: Vec<u64> = attempted
            .lock()
            .unwrap()
            .difference(&acked_now)
            .copied()
            .collect();
        let mut present = 0;
        for id in &unacked {
            let (hash, shard, bytes) = kill9_shard(*id);
            match read_whole(&shards, &server, &hash, shard, bytes.len()).await {
                Ok(got) => {
                    assert!(got == bytes, "round {round}: unacknowledged shard {id}");
                    present += 1;
                }
                Err(e) => assert!(
                    matches!(e, dos_transport::ShardError::NotFound),
                    "round {round}: unacknowledged shard {id}: {e}"
                ),
            }
        }
        eprintln!(
            "[kill -9] round {round}: every acknowledged shard reads back; of {} \
             unacknowledged, {present} whole and the others absent",
            unacked.len()
        );
        let torn = shards
            .read_shard(&server, &torn_hash, round as u8, 0, 5_000)
            .await;
        assert!(
            matches!(torn, Err(dos_transport::ShardError::NotFound)),
            "the torn entry is not served"
        );
        // The listing names nothing but what was written, and every acknowledged shard.
        let mut listed = BTreeSet::new();
        let mut after = None;
        loop {
            let page = shards.list_shards(&server, after, 1000).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some((last.hash, last.shard));
            listed.extend(page.iter().map(|e| (e.hash, e.shard)));
        }
        let keys = |ids: &BTreeSet<u64>| -> BTreeSet<(ContentHash, u8)> {
            ids.iter()
                .map(|id| {
                    let (h, s, _) = kill9_shard(*id);
                    (h, s)
                })
                .collect()
        };
        assert!(listed.is_superset(&keys(&acked_now)));
        assert!(keys(&attempted.lock().unwrap()).is_superset(&listed));
        assert!(quarantined_in(&data1).is_empty(), "nothing found corrupt");
    }
    // Appends after the cut pack work and survive one more kill.
    let later: Vec<u64> = (1_000_000..1_000_050).collect();
    for id in &later {
        let (hash, shard, bytes) = kill9_shard(*id);
        shards
            .put_shard(&server, &hash, shard, bytes.into())
            .await
            .unwrap();
    }
    proc.child.kill().unwrap();
    proc.child.wait().unwrap();
    let (proc, server) = start_local_process(&root, &dir.path().join("local-3.log")).await;
    let acked = acked.lock().unwrap().clone();
    for id in acked.iter().chain(&later) {
        let (hash, shard, bytes) = kill9_shard(*id);
        let got = read_whole(&shards, &server, &hash, shard, bytes.len()).await;
        assert!(
            got.is_ok_and(|g| g == bytes),
            "shard {id} after the last kill"
        );
    }
    drop(proc);
}

fn quarantined_in(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    collect_files(&root.join("quarantine"), &mut out);
    out
}
