//! Small objects on the embedded cluster with packed shards (the default of every data
//! server): stored whole in one request per data server, appended to pack files, served
//! back exactly, across restarts; corruption inside a pack found by scrub and repaired;
//! orphaned packed shards collected; and about their own size on disk.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
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
