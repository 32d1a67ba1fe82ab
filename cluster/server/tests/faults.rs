//! Fault injection with real processes and byte-exact verification of everything the store
//! acknowledged (`dos_client::workload`). Each scenario prints what it ran and what failed
//! how; RELIABILITY.md records a run (`cargo test -p dos-server --test faults -- --nocapture`).
//!
//! - cluster mode (needs `RABBITMQ_SERVER`; skipped otherwise): kill -9 of one, two, then three
//!   data servers under a mixed load; flipped bytes and removed shard files repaired by
//!   `dos-server maintain --scrub`; kill -9 of the API server mid-upload; the broker
//!   restarted under load;
//! - embedded (`dos-server local`): kill -9 mid-upload and restart on the same folder;
//! - a data server whose disk fills up (a small tmpfs; needs root, skipped otherwise).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../../metadata/tests/common/fake_es.rs"]
#[allow(dead_code, clippy::all)]
mod fake_es;
#[path = "common/procs.rs"]
mod procs;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dos_client::workload::{self, Acked, Ledger, Tally, WorkloadConfig};
use dos_client::{Bytes, Client, ContentHash};
use procs::*;
use tokio::task::JoinHandle;

/// A running load: workers and their stop switch.
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Tally>>,
}

fn start_load(client: &Client, ledger: &Arc<Ledger>, workers: u64, first_id: u64) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let config = WorkloadConfig {
        max_size: 2 << 20,
        ..WorkloadConfig::default()
    };
    let workers = (0..workers)
        .map(|i| {
            tokio::spawn(workload::worker(
                client.clone(),
                first_id + i,
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

fn report(what: &str, t: &Tally) {
    eprintln!(
        "[faults] {what}: {} operations ({} PUT, {} resumable, {} GET, {} DELETE), {} errors, \
         {} wrong reads; errors by kind: {:?}",
        t.ops(),
        t.puts,
        t.resumable_puts,
        t.gets,
        t.deletes,
        t.errors,
        t.wrong_bytes,
        t.error_kinds
    );
}

/// Nothing wrong, and every failure one of `allowed`.
fn assert_clean(what: &str, t: &Tally, allowed: &[&str]) {
    report(what, t);
    assert_eq!(t.wrong_bytes, 0, "{what}: wrong bytes read");
    let unexpected = t.unexpected_errors(allowed);
    assert!(unexpected.is_empty(), "{what}: {unexpected:?}");
}

async fn verify(what: &str, client: &Client, ledger: &Ledger) -> Tally {
    let t = workload::verify_all(client, ledger, 4).await;
    report(what, &t);
    assert_eq!(t.wrong_bytes, 0, "{what}: wrong bytes read");
    t
}

fn spawn_data(env: &Env, i: usize) -> Proc {
    let root = env.dir.join(format!("data{i}"));
    env.spawn(
        &format!("data{i}"),
        &["data"],
        &[
            ("LISTEN_ADDRESS", "127.0.0.1:0".into()),
            ("STORAGE_ROOT", root.display().to_string()),
            ("DOS_TEMP_TTL", "3s".into()),
        ],
    )
}

fn kill(p: &mut Option<Proc>) {
    if let Some(mut p) = p.take() {
        p.child.kill().unwrap();
        p.child.wait().unwrap();
        eprintln!("[faults] kill -9 {}", p.name);
    }
}

/// Every file under `dir`.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    common::collect_files(dir, &mut out);
    out
}

/// Bytes of `.part` files (uploads in progress) under the data roots `data1..=n`.
fn temp_bytes(dir: &Path, n: usize) -> u64 {
    (1..=n)
        .flat_map(|i| files_under(&dir.join(format!("data{i}")).join("temp")))
        .filter(|p| p.extension().is_some_and(|e| e == "part"))
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

type BodySender = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;
type PutResult = Result<dos_client::VersionRecord, dos_client::ClientError>;

/// Starts a PUT whose body sends `first` bytes and then stalls (until the sender drops).
fn stalled_put(client: &Client, name: &str, first: usize) -> (BodySender, JoinHandle<PutResult>) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let body = tokio_stream::wrappers::ReceiverStream::new(rx);
    let (client, name) = (client.clone(), name.to_string());
    let hash = ContentHash::of(b"the full body never arrives");
    let task = tokio::spawn(async move {
        client
            .put_stream(&name, hash, None, body, &Default::default())
            .await
    });
    let sender = tx.clone();
    tokio::spawn(async move {
        let _ = sender
            .send(Ok(Bytes::from(workload::pattern(first, 77))))
            .await;
    });
    (tx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_in_cluster_mode() {
    let Some((_es, _dir, env)) = cluster_env().await else {
        return;
    };
    let out = env.setup();
    assert!(out.status.success(), "{out:?}");

    const N: usize = 8;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut datas: Vec<Option<Proc>> = (1..=N).map(|i| Some(spawn_data(&env, i))).collect();
    let mut api = Some(env.api("api", port));
    wait_for("all data servers live", Duration::from_secs(60), || async {
        live(&url).await == N
    })
    .await;
    let client = Client::builder(url.clone())
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let ledger = Arc::new(Ledger::default());

    // 1. kill -9 of one, then a second data server under load: reads stay exact; writes
    //    fail cleanly (503) until the dead servers leave the live set, then go on.
    let load = start_load(&client, &ledger, 3, 0);
    tokio::time::sleep(Duration::from_secs(4)).await;
    kill(&mut datas[0]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    kill(&mut datas[1]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let under = load.stop().await;
    assert_clean(
        "load while killing 2 of 8 data servers",
        &under,
        &["HTTP 503"],
    );
    assert!(under.puts > 0 && under.gets > 0, "the load ran");
    let two = verify(
        "every acknowledged version, 2 servers dead",
        &client,
        &ledger,
    )
    .await;
    assert_eq!(
        two.errors, 0,
        "with two servers dead everything is readable"
    );

    // A third: objects with three shards on dead servers fail cleanly, none reads wrong.
    kill(&mut datas[2]);
    let three = verify(
        "every acknowledged version, 3 servers dead",
        &client,
        &ledger,
    )
    .await;
    assert_clean("reads with 3 of 8 servers dead", &three, &["HTTP 503"]);
    for (i, slot) in datas.iter_mut().enumerate().take(3) {
        *slot = Some(spawn_data(&env, i + 1));
    }
    wait_for(
        "restarted servers live",
        Duration::from_secs(60),
        || async { live(&url).await == N },
    )
    .await;
    let back = verify("every acknowledged version, all back", &client, &ledger).await;
    assert_eq!(back.errors, 0);

    // 2. Flipped bytes and removed shard files: `dos-server maintain --scrub` repairs each.
    // (Objects over 1 MiB: their shards are files; packed small shards have `packs.rs`.)
    let mut damaged = 0;
    let mut fresh = Vec::new();
    for i in 0..10u64 {
        let len = 1_100_000 + i as usize * 50_000;
        let seed = 9_000 + i;
        let name = format!("scrubbed/{i}");
        let rec = client
            .put_bytes(&name, workload::pattern(len, seed), &Default::default())
            .await
            .unwrap();
        let hash = ContentHash::of(&workload::pattern(len, seed));
        let mut files: Vec<_> = (1..=N)
            .flat_map(|d| common::shard_files_in(&env.dir.join(format!("data{d}")), &hash))
            .map(|(_, p)| p)
            .collect();
        files.sort();
        assert_eq!(files.len(), 6);
        let victim = &files[(seed % 6) as usize];
        if i % 4 == 3 {
            std::fs::remove_file(victim).unwrap();
        } else {
            let len = std::fs::metadata(victim).unwrap().len();
            common::corrupt_at(victim, Some((seed * 7919) % len));
        }
        damaged += 1;
        fresh.push(Acked {
            name,
            version: rec.version,
            len,
            seed,
        });
    }
    let out = Command::new(BIN)
        .args(["maintain", "--scrub", "--api", &url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("[faults] dos-server maintain --scrub: {}", stdout.trim());
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("shards rebuilt {damaged},"))
            || stdout.contains(&format!("shards rebuilt {damaged}\n")),
        "scrub rebuilt every damaged shard: {stdout}"
    );
    for a in fresh {
        ledger.push(a);
    }
    let scrubbed = verify("every acknowledged version after scrub", &client, &ledger).await;
    assert_eq!(scrubbed.errors, 0);

    // 3. kill -9 of the API server mid-upload: no version, the temp data expires, nothing
    //    earlier is touched.
    let (tx, put) = stalled_put(&client, "interrupted", 3 << 20);
    let part_seen = common::wait_until(Duration::from_secs(20), || async {
        temp_bytes(&env.dir, N) >= (1 << 20)
    })
    .await;
    assert!(part_seen, "the upload reached the data servers");
    kill(&mut api);
    drop(tx);
    assert!(put.await.unwrap().is_err(), "the interrupted PUT failed");
    api = Some(env.api("api", port));
    wait_for("API server back", Duration::from_secs(60), || async {
        live(&url).await == N
    })
    .await;
    match client.versions("interrupted").await {
        Ok(v) => assert!(v.is_empty(), "no version for an interrupted upload: {v:?}"),
        Err(e) => assert!(e.to_string().contains("404"), "{e}"),
    }
    let expired = common::wait_until(Duration::from_secs(30), || async {
        temp_bytes(&env.dir, N) == 0
    })
    .await;
    assert!(expired, "the interrupted upload's temp data expired");
    eprintln!("[faults] API killed mid-upload: no version, temp data expired");
    let after_api = verify(
        "every acknowledged version after the API kill",
        &client,
        &ledger,
    )
    .await;
    assert_eq!(after_api.errors, 0);

    // 4. RabbitMQ restarted under load.
    let reconnects_before = bus_reconnects(&url).await;
    let load = start_load(&client, &ledger, 3, 100);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _restart = StartAppOnDrop;
    assert!(rabbitmqctl(&["stop_app"]), "rabbitmqctl stop_app");
    eprintln!("[faults] broker stopped");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(restart_broker_app(), "rabbitmqctl start_app");
    eprintln!("[faults] broker started");
    wait_for(
        "servers back after the broker restart",
        Duration::from_secs(90),
        || async { live(&url).await == N },
    )
    .await;
    // The API server's /metrics counts the reconnection (the servers may look live again
    // before it notices the old connection died: they had not expired).
    wait_for(
        "dos_bus_reconnects_total to count the reconnection",
        Duration::from_secs(60),
        || async { bus_reconnects(&url).await > reconnects_before },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let broker = load.stop().await;
    assert_clean("load across a broker restart", &broker, &["HTTP 503"]);
    let after_broker = verify(
        "every acknowledged version after the broker restart",
        &client,
        &ledger,
    )
    .await;
    assert_eq!(after_broker.errors, 0);
    drop(api);
}

/// `dos_bus_reconnects_total` on the API server at `url` (its /metrics, parsed).
async fn bus_reconnects(url: &str) -> f64 {
    common::scrape_metrics(url)
        .await
        .samples
        .iter()
        .filter(|s| s.metric == "dos_bus_reconnects_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_process_killed_mid_upload() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    // `Proc` kills the server when dropped, also when an assertion fails.
    let start = || {
        let log = std::fs::File::create(dir.path().join("local.log")).unwrap();
        let child = Command::new(BIN)
            .args(["local", "--root", &root.display().to_string()])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--temp-ttl", "3s"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc {
            child,
            name: "local".into(),
        }
    };
    let mut server = start();
    dos_client::install_crypto_provider();
    let up = || async { reqwest::get(format!("{url}/health")).await.is_ok() };
    assert!(common::wait_until(Duration::from_secs(30), up).await);
    // It made its bearer token on first start, private to its owner.
    let token_file = root.join("token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap();
    let anonymous = reqwest::get(format!("{url}/versions/")).await.unwrap();
    assert_eq!(anonymous.status(), 401, "a request without the token");
    let client = Client::builder(url.clone())
        .token(token.trim().to_string())
        .build()
        .unwrap();
    let ledger = Ledger::default();
    for i in 0..6u64 {
        let len = [0, 10, 100_000, 1 << 20, 2_500_000, 777][i as usize];
        let name = format!("before/{i}");
        let rec = client
            .put_bytes(&name, workload::pattern(len, i), &Default::default())
            .await
            .unwrap();
        ledger.push(Acked {
            name,
            version: rec.version,
            len,
            seed: i,
        });
    }
    let (tx, put) = stalled_put(&client, "interrupted", 3 << 20);
    assert!(
        common::wait_until(Duration::from_secs(20), || async {
            temp_bytes(&root, 6) >= (1 << 20)
        })
        .await,
        "the upload reached the data servers"
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(tx);
    assert!(put.await.unwrap().is_err());
    let server = start();
    assert!(common::wait_until(Duration::from_secs(30), up).await);
    match client.versions("interrupted").await {
        Ok(v) => assert!(v.is_empty(), "no version for an interrupted upload: {v:?}"),
        Err(e) => assert!(e.to_string().contains("404"), "{e}"),
    }
    assert!(
        common::wait_until(Duration::from_secs(30), || async {
            temp_bytes(&root, 6) == 0
        })
        .await,
        "temp data of the interrupted upload expired"
    );
    let t = verify(
        "embedded: every version after kill -9 and restart",
        &client,
        &ledger,
    )
    .await;
    assert_eq!(t.errors, 0);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_on_a_data_server() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("c");
    let small = root.join("data3");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a small tmpfs (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let (cluster, client) = common::start_at(&root).await;
    let ledger = Ledger::default();
    let mut refused = None;
    for i in 0..40u64 {
        let len = 1 << 20;
        let name = format!("fill/{i}");
        match client
            .put_bytes(&name, workload::pattern(len, i), &Default::default())
            .await
        {
            Ok(rec) => ledger.push(Acked {
                name,
                version: rec.version,
                len,
                seed: i,
            }),
            Err(e) => {
                refused = Some((name, e));
                break;
            }
        }
    }
    let (name, e) = refused.expect("a 3 MiB disk fills up");
    eprintln!("[faults] disk full after {} objects: {e}", ledger.len());
    let msg = e.to_string();
    assert!(msg.contains("503") && msg.contains("disk is full"), "{msg}");
    assert!(
        client.versions(&name).await.unwrap().is_empty(),
        "no version of the refused object"
    );
    let left = files_under(&small.join("temp"));
    assert!(
        left.is_empty(),
        "the refused upload left no temp data on the full disk: {left:?}"
    );
    let t = verify("disk full: every acknowledged version", &client, &ledger).await;
    assert_eq!(t.errors, 0);
    // Space returns: writes work again.
    assert!(
        Command::new("mount")
            .args(["-o", "remount,size=64m"])
            .arg(&small)
            .status()
            .unwrap()
            .success()
    );
    let rec = client
        .put_bytes(&name, workload::pattern(1 << 20, 999), &Default::default())
        .await
        .unwrap();
    assert!(
        client.get(&name, Some(rec.version)).await.unwrap() == workload::pattern(1 << 20, 999)[..]
    );
    cluster.shutdown().await;
}
