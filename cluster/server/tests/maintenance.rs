//! The maintenance jobs on the embedded cluster, driven over REST exactly as
//! `dos-server maintain` drives them: scrub repairs flipped bytes, removed shard files and
//! shards no live server holds; retention keeps the newest versions and never the latest's
//! data away; orphan collection removes only what nothing references and nothing used within
//! the grace period.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use dos_client::{Client, ContentHash};
use futures::TryStreamExt as _;

async fn run(
    client: &Client,
    job: &str,
    keep: Option<u64>,
    grace: Option<Duration>,
) -> serde_json::Value {
    run_job(client, job, keep, grace).await
}

fn assert_no_errors(report: &serde_json::Value) {
    assert_eq!(count(report, "errors"), 0, "{report}");
}

/// The last report's planned work is all finished: `total` units of `unit`.
fn assert_work(report: &serde_json::Value, total: u64, unit: &str) {
    let w = &report["work"];
    assert_eq!(
        (
            w["total"].as_u64(),
            w["finished"].as_u64(),
            w["unit"].as_str()
        ),
        (Some(total), Some(total), Some(unit)),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_repairs_flipped_bytes_and_removed_shards() {
    let (cluster, client, _dir) = start().await;
    let sizes = [
        0,
        1,
        1000,
        300_000,
        1 << 20,
        (1 << 20) + 7,
        3 << 20,
        5_000_001,
    ];
    let objects = store_objects(&client, "scrub", &sizes, 100).await;
    // Damage: flip one random byte in one shard file of each non-empty object, and remove
    // another shard file of three of them; nothing reads them before the scrub.
    let mut noise = data(64, 7).into_iter();
    let mut damaged = 0;
    for (i, (_, hash, bytes)) in objects.iter().enumerate() {
        if bytes.is_empty() {
            continue;
        }
        let files = shard_files(&cluster, hash);
        assert_eq!(files.len(), 6);
        let pick = usize::from(noise.next().unwrap()) % 6;
        let path = &files[pick].2;
        let len = std::fs::metadata(path).unwrap().len();
        let at = u64::from(noise.next().unwrap()) * len / 256;
        corrupt_at(path, Some(at));
        damaged += 1;
        if i % 3 == 0 {
            std::fs::remove_file(&files[(pick + 1) % 6].2).unwrap();
            damaged += 1;
        }
    }
    let report = run(&client, "scrub", None, None).await;
    assert_no_errors(&report);
    assert_eq!(count(&report, "objects"), sizes.len() as u64, "{report}");
    assert_work(&report, sizes.len() as u64, "objects");
    assert_eq!(count(&report, "shards_rebuilt"), damaged, "{report}");
    assert_eq!(count(&report, "hash_mismatches"), 0, "{report}");
    // Every object has its six shards again and a second scrub finds nothing to do.
    for (_, hash, _) in &objects {
        assert_eq!(shard_indices(&cluster, hash), vec![0, 1, 2, 3, 4, 5]);
    }
    let again = run(&client, "scrub", None, None).await;
    assert_no_errors(&again);
    assert_eq!(count(&again, "shards_rebuilt"), 0, "{again}");
    assert_eq!(count(&again, "shards_verified"), 6 * sizes.len() as u64);
    for (name, _, bytes) in &objects {
        assert!(client.get(name, None).await.unwrap() == bytes[..], "{name}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_rebuilds_shards_no_live_server_holds_on_a_spare() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, client) = start_with(&dir.path().join("c"), |c| c.data_servers = 7).await;
    let bytes = data(2_500_000, 9);
    let hash = ContentHash::of(&bytes);
    client
        .put_bytes("spare", bytes.clone(), &attrs())
        .await
        .unwrap();
    let holders: BTreeSet<usize> = shard_files(&cluster, &hash)
        .into_iter()
        .map(|(s, _, _)| s)
        .collect();
    assert_eq!(holders.len(), 6);
    let spare = (0..7).find(|s| !holders.contains(s)).unwrap();
    let lost = *holders.iter().next().unwrap();
    cluster.stop_data_server(lost).await;

    let report = run(&client, "scrub", None, None).await;
    assert_no_errors(&report);
    assert_eq!(count(&report, "shards_rebuilt"), 1, "{report}");
    let on_spare = shard_files_in(&cluster.data_roots()[spare], &hash);
    assert_eq!(on_spare.len(), 1, "the spare now holds the lost shard");
    // Readable with the old holder still down, from six live shards.
    assert!(client.get("spare", None).await.unwrap() == bytes[..]);
    cluster.start_data_server(lost).await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_then_orphans_free_only_unreferenced_data() {
    let (cluster, client, _dir) = start().await;
    let versions: Vec<Vec<u8>> = (0..8).map(|i| data(200_000 + i, 500 + i as u64)).collect();
    for v in &versions {
        client.put_bytes("doc", v.clone(), &attrs()).await.unwrap();
    }
    // Another name shares the content of doc's version 2 (dedup): it must survive.
    client
        .put_bytes("other", versions[1].clone(), &attrs())
        .await
        .unwrap();
    let report = run(&client, "retention", Some(3), None).await;
    assert_no_errors(&report);
    assert_eq!(count(&report, "versions_deleted"), 5, "{report}");
    assert_work(&report, 9, "versions");
    let left: Vec<u64> = client
        .versions("doc")
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(left, vec![6, 7, 8]);
    // Retention removed metadata only: every shard is still on disk.
    for v in &versions {
        assert_eq!(shard_indices(&cluster, &ContentHash::of(v)).len(), 6);
    }
    // A generous grace period keeps everything written just now.
    let kept = run(&client, "orphans", None, Some(Duration::from_secs(3600))).await;
    assert_no_errors(&kept);
    assert_eq!(count(&kept, "contents_deleted"), 0, "{kept}");
    let swept = run(&client, "orphans", None, Some(Duration::ZERO)).await;
    assert_no_errors(&swept);
    assert_eq!(count(&swept, "contents_deleted"), 4, "{swept}");
    assert_eq!(count(&swept, "shards_removed"), 24, "{swept}");
    // Steps: the 8 content records, then one scan per data server.
    let servers = cluster.data_servers().len() as u64;
    assert_work(&swept, 8 + servers, "steps");
    for (i, v) in versions.iter().enumerate() {
        let files = shard_indices(&cluster, &ContentHash::of(v)).len();
        let referenced = i == 1 || i >= 5;
        assert_eq!(files, if referenced { 6 } else { 0 }, "version {}", i + 1);
    }
    assert!(client.get("other", None).await.unwrap() == versions[1][..]);
    for (i, v) in versions.iter().enumerate().skip(5) {
        let got = client.get("doc", Some(i as u64 + 1)).await.unwrap();
        assert!(got == v[..]);
    }
    // Retention never removes the latest version, even with keep=1 and a delete marker.
    client.delete("doc").await.unwrap();
    let one = run(&client, "retention", Some(1), None).await;
    assert_no_errors(&one);
    let left = client.versions("doc").await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].version, 9);
    assert!(left[0].hash.is_none(), "the delete marker is the latest");
    // The same content stored again after collection is a fresh, complete object.
    client
        .put_bytes("again", versions[0].clone(), &attrs())
        .await
        .unwrap();
    assert!(client.get("again", None).await.unwrap() == versions[0][..]);
    assert_eq!(
        shard_indices(&cluster, &ContentHash::of(&versions[0])),
        vec![0, 1, 2, 3, 4, 5]
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_collect_stray_shards_after_the_grace_period() {
    let (cluster, client, _dir) = start().await;
    client
        .put_bytes("kept", data(100_000, 1), &attrs())
        .await
        .unwrap();
    // A shard committed with no content record: what an API server that died between
    // committing shards and recording them leaves behind.
    let shards = cluster.api_core().shards.clone();
    let server = cluster.api_core().bus.live_servers()[0].clone();
    let stray = ContentHash::of(b"never recorded");
    let id = shards
        .create_temp(&server, &stray, 2, Some(100))
        .await
        .unwrap();
    let body = futures::stream::iter([dos_client::Bytes::from(vec![7u8; 100])]);
    shards
        .write_temp(&server, &id, 0, Box::pin(body))
        .await
        .unwrap();
    shards.commit(&server, &id, 100, &stray).await.unwrap();
    assert_eq!(shard_indices(&cluster, &stray), vec![2]);

    let kept = run(&client, "orphans", None, Some(Duration::from_secs(3600))).await;
    assert_no_errors(&kept);
    assert_eq!(count(&kept, "stray_shards_removed"), 0, "{kept}");
    assert!(count(&kept, "kept_recent") >= 1, "{kept}");
    assert_eq!(shard_indices(&cluster, &stray), vec![2]);

    let swept = run(&client, "orphans", None, Some(Duration::ZERO)).await;
    assert_no_errors(&swept);
    assert_eq!(count(&swept, "stray_shards_removed"), 1, "{swept}");
    assert!(shard_indices(&cluster, &stray).is_empty());
    assert!(count(&swept, "shards_scanned") >= 7, "{swept}");
    // The referenced object is untouched.
    assert!(client.get("kept", None).await.unwrap() == data(100_000, 1)[..]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_rejects_bad_requests() {
    let (cluster, client, _dir) = start().await;
    for (path, want) in [
        ("/maintenance/defrag", 404),
        ("/maintenance/retention?keep=0", 400),
        ("/maintenance/retention?keep=x", 400),
        ("/maintenance/orphans?grace_secs=-1", 400),
    ] {
        let resp = client
            .request(dos_client::reqwest::Method::POST, path)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), want, "{path}");
    }
    let resp = client
        .request(dos_client::reqwest::Method::GET, "/maintenance/scrub")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stay_exact_over_flipped_bytes_and_background_scrub_repairs() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client) = start_with(&dir.path().join("c"), |c| {
        c.maintenance.scrub_every = Some(Duration::from_secs(2));
    })
    .await;
    let mut objects = Vec::new();
    for i in 0..6u64 {
        let bytes = data(700_000 + i as usize * 333_333, 40 + i);
        let name = format!("bg/{i}");
        client
            .put_bytes(&name, bytes.clone(), &attrs())
            .await
            .unwrap();
        objects.push((name, ContentHash::of(&bytes), bytes));
    }
    // Two flipped bytes per object, in two different shard files.
    for (i, (_, hash, _)) in objects.iter().enumerate() {
        let files = shard_files(&cluster, hash);
        for k in 0..2 {
            let path = &files[(i + 3 * k) % 6].2;
            let len = std::fs::metadata(path).unwrap().len();
            corrupt_at(path, Some(len / 3 + k as u64 * 17));
        }
    }
    // Reads are exact at once (two bad shards of six still leave four).
    for (name, _, bytes) in &objects {
        assert!(client.get(name, None).await.unwrap() == bytes[..], "{name}");
    }
    // Nobody asks: the background scrub (and read-triggered repair) restore every shard.
    let healed = wait_until(Duration::from_secs(60), || async {
        quarantined(&cluster).len() == 12
            && objects
                .iter()
                .all(|(_, hash, _)| shard_indices(&cluster, hash) == vec![0, 1, 2, 3, 4, 5])
    })
    .await;
    assert!(healed, "every damaged shard was rebuilt in the background");
    // Damage nobody reads: only the background scrub can find it.
    for (_, hash, _) in objects.iter().take(3) {
        let files = shard_files(&cluster, hash);
        let path = &files[5].2;
        let len = std::fs::metadata(path).unwrap().len();
        corrupt_at(path, Some(len / 2));
    }
    let scrubbed = wait_until(Duration::from_secs(60), || async {
        quarantined(&cluster).len() == 15
            && objects
                .iter()
                .all(|(_, hash, _)| shard_indices(&cluster, hash) == vec![0, 1, 2, 3, 4, 5])
    })
    .await;
    assert!(
        scrubbed,
        "the background scrub found and rebuilt unread damage"
    );
    // And they verify: an explicit scrub finds nothing left to do.
    let report = loop {
        // The background run may hold the job for a moment: 409 means try again.
        match client.maintenance("scrub", None, None).await {
            Ok(mut reports) => {
                let mut last = None;
                while let Some(r) = reports.try_next().await.unwrap() {
                    last = Some(r);
                }
                break last.unwrap();
            }
            Err(e) if e.to_string().contains("409") => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_no_errors(&report);
    assert_eq!(count(&report, "shards_rebuilt"), 0, "{report}");
    assert_eq!(count(&report, "shards_verified"), 36, "{report}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintain_command_runs_jobs_in_order_and_summarises() {
    let (cluster, client, _dir) = start().await;
    for i in 0..4u64 {
        client
            .put_bytes("cli/doc", data(50_000, 700 + i), &attrs())
            .await
            .unwrap();
    }
    let api = format!("http://{}", cluster.api_addr());
    let bin = env!("CARGO_BIN_EXE_dos-server");
    let out = tokio::process::Command::new(bin)
        .args(["maintain", "--api", &api, "--retention", "2", "--orphans"])
        .args(["--grace", "0s", "--scrub"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "one summary per job: {stdout}");
    assert!(lines[0].starts_with("retention finished") && lines[0].contains("versions deleted 2"));
    assert!(lines[1].starts_with("orphans finished") && lines[1].contains("contents deleted 2"));
    assert!(lines[2].starts_with("scrub finished") && lines[2].contains("objects 2"));
    assert_eq!(client.versions("cli/doc").await.unwrap().len(), 2);
    // Nothing asked, or an unreachable server: one clear line and a failure status.
    let none = tokio::process::Command::new(bin)
        .args(["maintain", "--api", &api])
        .output()
        .await
        .unwrap();
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("nothing to do"));
    let dead = tokio::process::Command::new(bin)
        .args(["maintain", "--api", "http://127.0.0.1:9", "--scrub"])
        .output()
        .await
        .unwrap();
    assert!(!dead.status.success());
    let err = String::from_utf8_lossy(&dead.stderr);
    assert!(
        err.contains("starting scrub on http://127.0.0.1:9"),
        "{err}"
    );
    cluster.shutdown().await;
}

/// Destructive maintenance needs the admin token: the data token runs scrub, not retention or
/// orphan collection; a server with a data token and no admin token refuses those over REST;
/// and a grace below the server's minimum is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destructive_maintenance_needs_the_admin_token_and_a_minimum_grace() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = start_with(&dir.path().join("a"), |c| {
        c.token = Some("data-token-0123456789".into());
        c.admin_token = Some("admin-token-0123456789".into());
        c.maintenance.min_orphans_grace = Duration::from_secs(600);
    })
    .await;
    let api = format!("http://{}", cluster.api_addr());
    let as_ = |token: &str| {
        Client::builder(api.clone())
            .token(token.to_string())
            .build()
            .unwrap()
    };
    let status = |client: Client, path: &'static str| async move {
        client
            .request(dos_client::reqwest::Method::POST, path)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let data = as_("data-token-0123456789");
    let admin = as_("admin-token-0123456789");
    assert_eq!(status(data.clone(), "/maintenance/retention").await, 403);
    assert_eq!(status(data.clone(), "/maintenance/orphans").await, 403);
    assert_eq!(status(as_("wrong"), "/maintenance/scrub").await, 401);
    run(&data, "scrub", None, None).await;
    run(&admin, "retention", Some(3), None).await;
    run(&admin, "orphans", None, Some(Duration::from_secs(3600))).await;
    // The admin token serves ordinary requests too.
    admin
        .put_bytes("by-admin", b"x".to_vec(), &attrs())
        .await
        .unwrap();
    assert_eq!(
        status(admin.clone(), "/maintenance/orphans?grace_secs=0").await,
        400,
        "below the minimum grace"
    );
    cluster.shutdown().await;

    let (cluster, _) = start_with(&dir.path().join("b"), |c| {
        c.token = Some("data-token-0123456789".into());
    })
    .await;
    let data = Client::builder(format!("http://{}", cluster.api_addr()))
        .token("data-token-0123456789".to_string())
        .build()
        .unwrap();
    let resp = data
        .request(dos_client::reqwest::Method::POST, "/maintenance/retention")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let text = resp.text().await.unwrap();
    assert!(text.contains("admin token"), "{text}");
    cluster.shutdown().await;
}
